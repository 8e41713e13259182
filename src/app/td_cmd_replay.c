/*
 * td_cmd_replay.c - `touchd replay --rules DIR FILE.jsonl`: the engine
 * offline. Events in (JSON lines, `-` for stdin), recommendations out as JSON
 * lines on stdout, state in memory, and a clock that follows the events
 * (now = the latest occurred_at seen, so it never goes backwards).
 *
 * Timer rules fire on the virtual clock: every timer an event arms is kept in
 * a min-heap; before an event at time T is applied, every timer due at or
 * before T fires (in due order, the clock set to its due time), and at the
 * end `--advance DUR` moves the clock DUR past the last event and fires what
 * is due by then. A timer that was re-armed or whose rule no longer matches
 * is stale and ignored by the engine, exactly as in the daemon.
 *
 * A bad line is reported on stderr with its line number and the decoder's
 * reason, and skipped. At the end a per-rule summary goes to stderr: how many
 * times each rule fired, was blocked (and by which guards), lost in its group,
 * was in cooldown, failed; plus the pipeline figure from the playbook (share
 * of prospects that reached proposal and were then lost: above 30% means
 * attention is not maintained between proposal and signature).
 *
 * @locality main thread.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sys/stat.h>

#include "td_calendar_load.h"
#include "td_cli.h"
#include "td_engine.h"
#include "td_event.h"
#include "td_time.h"

/* One prospect of the replay: its state and what the summary needs. */
typedef struct pslot {
    td_state *st;
    bool reached_proposal;
} pslot;

/* Open addressing on td_hash64(prospect_id). */
typedef struct pmap {
    pslot *v;
    size_t cap, n;
} pmap;

static pslot *pmap_get(pmap *m, const char *id) {
    if ((m->n + 1) * 2 > m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 1024;
        pslot *v = calloc(cap, sizeof *v);
        if (!v) return NULL;
        for (size_t i = 0; i < m->cap; i++) {
            if (!m->v[i].st) continue;
            size_t h =
                td_hash64(m->v[i].st->prospect_id, strlen(m->v[i].st->prospect_id), TD_HASH_SEED) &
                (cap - 1);
            while (v[h].st)
                h = (h + 1) & (cap - 1);
            v[h] = m->v[i];
        }
        free(m->v);
        m->v = v;
        m->cap = cap;
    }
    size_t h = td_hash64(id, strlen(id), TD_HASH_SEED) & (m->cap - 1);
    while (m->v[h].st) {
        if (strcmp(m->v[h].st->prospect_id, id) == 0) return &m->v[h];
        h = (h + 1) & (m->cap - 1);
    }
    td_state *st = malloc(sizeof *st);
    if (!st) return NULL;
    td_state_init(st, id);
    m->v[h].st = st;
    m->v[h].reached_proposal = false;
    m->n++;
    return &m->v[h];
}

static void pmap_free(pmap *m) {
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->v[i].st) continue;
        td_state_free(m->v[i].st);
        free(m->v[i].st);
    }
    free(m->v);
}

/* A pending timer on the virtual clock. */
typedef struct vtimer {
    td_ms due_at;
    uint64_t seq; /* arming order: ties fire in the order they were armed */
    td_state *st;
    char rule[TD_RULE_ID_MAX + 1];
    char armed_by[TD_ID_MAX + 1];
} vtimer;

typedef struct vheap {
    vtimer *v;
    size_t n, cap;
    uint64_t seq;
} vheap;

static bool vt_less(const vtimer *a, const vtimer *b) {
    return a->due_at < b->due_at || (a->due_at == b->due_at && a->seq < b->seq);
}

static int vheap_push(vheap *h, td_ms due, td_state *st, const char *rule, const char *armed_by) {
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 256;
        vtimer *v = realloc(h->v, cap * sizeof *v);
        if (!v) return TD_ERR;
        h->v = v;
        h->cap = cap;
    }
    vtimer t = {.due_at = due, .seq = h->seq++, .st = st};
    td_strlcpy(t.rule, rule, sizeof t.rule);
    td_strlcpy(t.armed_by, armed_by, sizeof t.armed_by);
    size_t i = h->n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!vt_less(&t, &h->v[p])) break;
        h->v[i] = h->v[p];
        i = p;
    }
    h->v[i] = t;
    return TD_OK;
}

static void vheap_pop(vheap *h, vtimer *out) {
    *out = h->v[0];
    vtimer last = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const vtimer *best = &last;
        if (l < h->n && vt_less(&h->v[l], best)) {
            m = l;
            best = &h->v[l];
        }
        if (r < h->n && vt_less(&h->v[r], best)) m = r;
        if (m == i) break;
        h->v[i] = h->v[m];
        i = m;
    }
    if (h->n) h->v[i] = last;
}

typedef struct rule_stats {
    uint64_t outcome[TD_OUT_ERROR + 1];
} rule_stats;

static void usage(FILE *f) {
    fprintf(f, "usage: touchd replay --rules DIR [--rules DIR...] [options] FILE.jsonl|-\n"
               "\n"
               "Runs events (one JSON object per line; - reads stdin) through the rules with\n"
               "in-memory state. Recommendations are printed on stdout as JSON lines (the\n"
               "output topic's format); the clock follows the events' occurred_at.\n"
               "\n"
               "  -r, --rules PATH   rules file or directory (repeatable; required)\n"
               "  -b, --brief        print one tab-separated line per recommendation instead:\n"
               "                     prospect_id rule channel touch not_before trigger\n"
               "  -a, --advance DUR  after the last event, move the clock DUR further and fire\n"
               "                     the timers due by then (e.g. --advance 30d)\n"
               "  -H, --holidays DIR public holiday files (<CC>.holidays) for business days;\n"
               "                     default config/holidays when it exists, else weekends only\n"
               "  -q, --quiet        no summary on stderr\n"
               "  -h, --help         this help\n"
               "\n"
               "Exit status: 0 all lines applied, 1 the rules do not compile, 2 usage error,\n"
               "3 some lines were rejected (reported on stderr, the rest was applied).\n");
}

/* Everything one replay run needs, so the event and timer paths share it. */
typedef struct replay {
    const td_ruleset *rs;
    td_tzdb *tz;
    td_step_out *out;
    td_buf buf;
    bool brief;
    const char *label;
    rule_stats *stats;
    uint64_t *blocked_by;
    vheap timers;
    pmap *states;
    uint64_t recs, errors, timers_fired, timers_stale, derived;
} replay;

static int brief_line(FILE *out, const td_rec *r, const td_state *st, const td_trigger *trig) {
    char nb[TD_TIME_BUF];
    td_time_format(r->not_before, nb, sizeof nb);
    return fprintf(out, "%s\t%s\t%s\t%s\t%s\t%s\n", st->prospect_id, r->rule->id,
                   td_channel_name(r->channel), r->touch, nb,
                   trig->kind == TD_TRIG_EVENT ? trig->ev->id : "timer");
}

/* Steps one trigger and prints what it recommends; then the event it derives
 * for the prospect's owner, if any. lineno is 0 for timers.
 * @returns TD_OK, or TD_ERR on out-of-memory. */
static int run_step(replay *rp, td_state *st, const td_trigger *trig, td_ms now, uint64_t lineno) {
    td_step_out *out = rp->out;
    if (td_engine_step(rp->rs, st, trig, now, rp->tz, TD_STEP_OUTCOMES, out) != TD_OK)
        return TD_ERR;
    if (out->duplicate || out->stale) return TD_OK;
    rp->errors += out->nerrors;
    for (uint32_t i = 0; i < out->ndecisions; i++) {
        const td_decision *d = &out->decisions[i];
        rp->stats[d->rule->index].outcome[d->outcome]++;
        if (d->outcome == TD_OUT_BLOCKED && d->by) rp->blocked_by[d->by->index]++;
        if (d->outcome == TD_OUT_ERROR) {
            if (lineno)
                fprintf(stderr, "%s:%llu: rule %s: %s\n", rp->label, (unsigned long long)lineno,
                        d->rule->id, d->error);
            else
                fprintf(stderr, "%s: timer %s of %s: rule %s: %s\n", rp->label, trig->rule,
                        st->prospect_id, d->rule->id, d->error);
        }
    }
    for (uint32_t i = 0; i < out->narms; i++)
        if (vheap_push(&rp->timers, out->arms[i].due_at, st, out->arms[i].rule->id, trig->ev->id) !=
            TD_OK)
            return TD_ERR;
    for (uint32_t i = 0; i < out->nrecs; i++) {
        rp->recs++;
        if (rp->brief) {
            brief_line(stdout, &out->recs[i], st, trig);
        } else {
            rp->buf.len = 0;
            if (td_rec_json(&out->recs[i], st, rp->rs, trig, now, &rp->buf) != TD_OK) return TD_ERR;
            fwrite(rp->buf.p, 1, rp->buf.len, stdout);
            fputc('\n', stdout);
        }
    }
    if (out->has_derived) {
        /* `out` is reused by the next step: the derived event moves out first */
        td_event d = out->derived;
        pslot *owner = pmap_get(rp->states, d.prospect_id);
        if (!owner) return TD_ERR;
        rp->derived++;
        td_trigger dt = {.kind = TD_TRIG_EVENT, .ev = &d};
        return run_step(rp, owner->st, &dt, now, lineno);
    }
    return TD_OK;
}

/* Fires every timer due at or before `until`, each at its own due time. */
static int fire_timers(replay *rp, td_ms until, td_ms *now) {
    while (rp->timers.n && rp->timers.v[0].due_at <= until) {
        vtimer t;
        vheap_pop(&rp->timers, &t);
        if (*now == TD_MS_MISSING || t.due_at > *now) *now = t.due_at;
        td_trigger trig = {
            .kind = TD_TRIG_TIMER, .rule = t.rule, .due_at = t.due_at, .armed_by = t.armed_by};
        if (run_step(rp, t.st, &trig, *now, 0) != TD_OK) return TD_ERR;
        if (rp->out->stale)
            rp->timers_stale++;
        else
            rp->timers_fired++;
    }
    return TD_OK;
}

int td_cmd_replay(int argc, char **argv) {
    static const struct option opts[] = {{"rules", required_argument, NULL, 'r'},
                                         {"brief", no_argument, NULL, 'b'},
                                         {"advance", required_argument, NULL, 'a'},
                                         {"holidays", required_argument, NULL, 'H'},
                                         {"quiet", no_argument, NULL, 'q'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *rules[64];
    size_t nrules = 0;
    bool brief = false, quiet = false;
    td_ms advance = 0;
    const char *holidays = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "r:ba:H:qh", opts, NULL)) != -1) {
        switch (c) {
        case 'r':
            if (nrules == 64) {
                fprintf(stderr, "touchd replay: at most 64 --rules paths\n");
                return TD_EXIT_USAGE;
            }
            rules[nrules++] = optarg;
            break;
        case 'b':
            brief = true;
            break;
        case 'a':
            if (td_duration_parse(optarg, strlen(optarg), &advance) != TD_OK || advance < 0) {
                fprintf(stderr,
                        "touchd replay: --advance takes a duration such as 72h, 30d, 2w; got "
                        "'%s'\n",
                        optarg);
                return TD_EXIT_USAGE;
            }
            break;
        case 'H':
            holidays = optarg;
            break;
        case 'q':
            quiet = true;
            break;
        case 'h':
            usage(stdout);
            return TD_EXIT_OK;
        default:
            usage(stderr);
            return TD_EXIT_USAGE;
        }
    }
    if (nrules == 0) {
        fprintf(stderr, "touchd replay: --rules DIR is required (e.g. --rules rules/)\n");
        return TD_EXIT_USAGE;
    }
    if (optind != argc - 1) {
        fprintf(stderr, "touchd replay: give exactly one input file (or - for stdin)\n");
        usage(stderr);
        return TD_EXIT_USAGE;
    }
    const char *path = argv[optind];
    FILE *in = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (!in) {
        fprintf(stderr, "touchd replay: cannot open %s: %s\n", path, strerror(errno));
        return TD_EXIT_USAGE;
    }
    const char *label = in == stdin ? "<stdin>" : path;

    td_diags diags = {0};
    td_ruleset *rs = td_load_rules(rules, nrules, &diags);
    td_print_diags(&diags, stderr);
    td_diags_free(&diags);
    if (!rs) {
        if (in != stdin) fclose(in);
        fprintf(stderr, "touchd replay: the rules do not compile; nothing replayed\n");
        return TD_EXIT_FAIL;
    }

    /* business days: the holiday files given, or the repository's default */
    td_calendar *cal = NULL;
    struct stat sb;
    if (!holidays && stat("config/holidays", &sb) == 0 && S_ISDIR(sb.st_mode))
        holidays = "config/holidays";
    if (holidays) {
        char cerr[256];
        cal = td_calendar_load_dir(holidays, cerr, sizeof cerr);
        if (!cal) {
            fprintf(stderr, "touchd replay: holidays: %s\n", cerr);
            td_ruleset_free(rs);
            if (in != stdin) fclose(in);
            return TD_EXIT_USAGE;
        }
        td_ruleset_set_calendar(rs, cal);
    }

    size_t nr = td_ruleset_count(rs);
    pmap states = {0};
    replay rp = {.rs = rs, .brief = brief, .label = label, .states = &states};
    rp.stats = calloc(nr ? nr : 1, sizeof *rp.stats);
    rp.blocked_by = calloc(nr ? nr : 1, sizeof *rp.blocked_by);
    rp.out = malloc(sizeof *rp.out);
    rp.tz = td_tzdb_new();
    char *line = NULL;
    size_t lcap = 0;
    ssize_t len;
    uint64_t lineno = 0, applied = 0, rejected = 0, duplicates = 0;
    td_ms now = TD_MS_MISSING;
    int rc = TD_EXIT_OK;
    if (!rp.stats || !rp.blocked_by || !rp.out || !rp.tz) {
        fprintf(stderr, "touchd replay: out of memory\n");
        rc = TD_EXIT_FATAL;
        goto done;
    }

    while ((len = getline(&line, &lcap, in)) != -1) {
        lineno++;
        size_t l = (size_t)len;
        while (l && (line[l - 1] == '\n' || line[l - 1] == '\r'))
            l--;
        size_t k = 0;
        while (k < l && (line[k] == ' ' || line[k] == '\t'))
            k++;
        if (k == l) continue; /* blank line */
        td_event ev;
        td_event_error err;
        if (td_event_decode(line, l, &ev, &err) != TD_OK) {
            rejected++;
            fprintf(stderr, "%s:%llu: rejected: %s%s%s\n", label, (unsigned long long)lineno,
                    err.field[0] ? err.field : "", err.field[0] ? ": " : "", err.reason);
            continue;
        }
        /* timers due before this event fire first, each at its due time */
        if (fire_timers(&rp, ev.occurred_at, &now) != TD_OK) {
            fprintf(stderr, "touchd replay: out of memory\n");
            rc = TD_EXIT_FATAL;
            goto done;
        }
        if (now == TD_MS_MISSING || ev.occurred_at > now) now = ev.occurred_at;
        pslot *slot = pmap_get(&states, ev.prospect_id);
        if (!slot) {
            fprintf(stderr, "touchd replay: out of memory\n");
            rc = TD_EXIT_FATAL;
            goto done;
        }
        if (ev.type == TD_EV_PROSPECT_UPDATED && (ev.has & TD_HAS_STAGE) &&
            (ev.stage == TD_STAGE_PROPOSAL || ev.stage == TD_STAGE_NEGOTIATION))
            slot->reached_proposal = true;
        td_trigger trig = {.kind = TD_TRIG_EVENT, .ev = &ev};
        if (run_step(&rp, slot->st, &trig, now, lineno) != TD_OK) {
            fprintf(stderr, "touchd replay: out of memory\n");
            rc = TD_EXIT_FATAL;
            goto done;
        }
        if (rp.out->duplicate)
            duplicates++;
        else
            applied++;
    }
    if (ferror(in)) {
        fprintf(stderr, "touchd replay: read error on %s: %s\n", label, strerror(errno));
        rc = TD_EXIT_FATAL;
        goto done;
    }
    if (advance > 0 && now != TD_MS_MISSING && fire_timers(&rp, now + advance, &now) != TD_OK) {
        fprintf(stderr, "touchd replay: out of memory\n");
        rc = TD_EXIT_FATAL;
        goto done;
    }
    if (fflush(stdout) != 0) {
        fprintf(stderr, "touchd replay: write error: %s\n", strerror(errno));
        rc = TD_EXIT_FATAL;
        goto done;
    }
    if (rejected) rc = TD_EXIT_REJECTED;

    if (!quiet) {
        fprintf(stderr,
                "replay: %llu lines, %llu events applied, %llu rejected, %llu duplicates, %zu "
                "prospects, %llu recommendations, %llu rule errors, timers: %llu run, %llu "
                "stale, %zu pending, %llu owner events derived; ruleset %s\n",
                (unsigned long long)lineno, (unsigned long long)applied,
                (unsigned long long)rejected, (unsigned long long)duplicates, states.n,
                (unsigned long long)rp.recs, (unsigned long long)rp.errors,
                (unsigned long long)rp.timers_fired, (unsigned long long)rp.timers_stale,
                rp.timers.n, (unsigned long long)rp.derived, td_ruleset_hash(rs));
        fprintf(stderr, "calendar: %s\n",
                holidays ? holidays : "none (business days are Monday to Friday)");
        fprintf(stderr, "%-40s %7s %7s %7s %8s %7s %7s\n", "rule", "fired", "blocked", "lost",
                "cooldown", "armed", "errors");
        for (size_t i = 0; i < nr; i++) {
            const td_rule *r = td_ruleset_rule(rs, i);
            if (r->guard)
                fprintf(stderr, "%-40s %7s %7llu %7s %8s %7s %7llu   (guard: blocks)\n", r->id, "-",
                        (unsigned long long)rp.blocked_by[i], "-", "-", "-",
                        (unsigned long long)rp.stats[i].outcome[TD_OUT_ERROR]);
            else
                fprintf(stderr, "%-40s %7llu %7llu %7llu %8llu %7llu %7llu\n", r->id,
                        (unsigned long long)rp.stats[i].outcome[TD_OUT_FIRED],
                        (unsigned long long)rp.stats[i].outcome[TD_OUT_BLOCKED],
                        (unsigned long long)rp.stats[i].outcome[TD_OUT_LOST_GROUP],
                        (unsigned long long)rp.stats[i].outcome[TD_OUT_COOLDOWN],
                        (unsigned long long)rp.stats[i].outcome[TD_OUT_ARMED],
                        (unsigned long long)rp.stats[i].outcome[TD_OUT_ERROR]);
        }
        /* prospecting hygiene (PLAYBOOK 4): new prospects contacted per owner
         * per business day (Monday to Friday) of the replayed period */
        td_ms first = TD_MS_MISSING;
        for (size_t i = 0; i < states.cap; i++)
            if (states.v[i].st && states.v[i].st->first_seen_at != TD_MS_MISSING &&
                (first == TD_MS_MISSING || states.v[i].st->first_seen_at < first))
                first = states.v[i].st->first_seen_at;
        int64_t bdays = 0;
        if (first != TD_MS_MISSING && now != TD_MS_MISSING)
            for (int64_t d = first / TD_DAY; d <= now / TD_DAY; d++)
                bdays += (((d % 7) + 7 + 3) % 7) < 5; /* 1970-01-01 was a Thursday */
        for (size_t i = 0; i < states.cap; i++) {
            const td_state *o = states.v[i].st;
            if (!o || strncmp(o->prospect_id, "owner:", 6) != 0) continue;
            fprintf(stderr,
                    "owner %s: %lld new prospects contacted over %lld business days (%.1f a "
                    "day)\n",
                    o->prospect_id + 6, (long long)o->events, (long long)bdays,
                    bdays ? (double)o->events / (double)bdays : 0.0);
        }
        uint64_t reached = 0, won = 0, lost = 0;
        for (size_t i = 0; i < states.cap; i++) {
            if (!states.v[i].st || !states.v[i].reached_proposal) continue;
            reached++;
            won += states.v[i].st->stage == TD_STAGE_WON;
            lost += states.v[i].st->stage == TD_STAGE_LOST;
        }
        if (reached)
            fprintf(stderr,
                    "pipeline: %llu prospects reached proposal: %llu won, %llu lost (%.0f%% lost; "
                    "above 30%% means attention is not maintained between proposal and "
                    "signature)\n",
                    (unsigned long long)reached, (unsigned long long)won, (unsigned long long)lost,
                    100.0 * (double)lost / (double)reached);
    }

done:
    free(line);
    td_buf_free(&rp.buf);
    free(rp.timers.v);
    pmap_free(&states);
    td_tzdb_free(rp.tz);
    free(rp.out);
    free(rp.stats);
    free(rp.blocked_by);
    td_ruleset_free(rs);
    td_calendar_free(cal);
    if (in != stdin) fclose(in);
    return rc;
}
