/*
 * td_cmd_replay.c - `touchd replay --rules DIR FILE.jsonl`: the engine
 * offline. Events in (JSON lines, `-` for stdin), recommendations out as JSON
 * lines on stdout, state in memory, and a clock that follows the events
 * (now = the latest occurred_at seen, so it never goes backwards).
 *
 * The run is td_sim's (the one offline driver, shared with `test` and
 * `explain`): every prospect's state in its in-memory store, and one
 * virtual clock whose timer heap fires each timer an event arms before an
 * event at or after its due time is applied (in due order, the clock set to
 * its due time); at the end `--advance DUR` moves the clock DUR past the last
 * event and fires what is due by then. A timer that was re-armed or whose
 * rule no longer matches is stale and ignored by the engine, exactly as in
 * the daemon. This file keeps the arguments, the input lines and the output
 * (td_sim's per-step callback, rp_on_step, prints the recommendations).
 *
 * A bad line is reported on stderr with its line number and the decoder's
 * reason, and skipped. At the end a per-rule summary goes to stderr: how many
 * times each rule fired, was blocked (and by which guards), lost in its group,
 * was in cooldown, failed; plus the pipeline figure from the playbook (share
 * of prospects that reached proposal and were then lost: above 30% means
 * attention is not maintained between proposal and signature).
 *
 * File-local functions are prefixed rp_.
 *
 * @locality main thread.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "td_calendar.h"
#include "td_cli.h"
#include "td_engine.h"
#include "td_event.h"
#include "td_sim.h"
#include "td_time.h"

typedef struct rule_stats {
    uint64_t outcome[TD_OUT_ERROR + 1];
} rule_stats;

static void rp_usage(FILE *f) {
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

/* What the output and the summary need, filled by rp_on_step. */
typedef struct replay {
    const td_ruleset *rs;
    td_buf buf;
    bool brief;
    const char *label;
    uint64_t lineno; /* the event being applied (its derived event's too) */
    rule_stats *stats;
    uint64_t *blocked_by;
    uint64_t recs, errors;
    bool oom;
} replay;

/* td_sim_entry.mark: the prospect reached proposal (or negotiation) */
#define RP_REACHED_PROPOSAL 1u

static int rp_brief_line(FILE *out, const td_rec *r, const td_state *st, const td_trigger *trig) {
    char nb[TD_TIME_BUF];
    td_time_format(r->not_before, nb, sizeof nb);
    return fprintf(out, "%s\t%s\t%s\t%s\t%s\t%s\n", st->prospect_id, r->rule->id,
                   td_channel_name(r->channel), r->touch, nb,
                   trig->kind == TD_TRIG_EVENT ? trig->ev->id : "timer");
}

/* The td_sim callback: counts the outcomes and prints what the step
 * recommends. */
static void rp_on_step(void *ud, const td_sim *sim, const td_state *st, const td_trigger *trig,
                       const td_step_out *out) {
    replay *rp = ud;
    rp->errors += out->nerrors;
    for (uint32_t i = 0; i < out->ndecisions; i++) {
        const td_decision *d = &out->decisions[i];
        rp->stats[d->rule->index].outcome[d->outcome]++;
        if (d->outcome == TD_OUT_BLOCKED && d->by) rp->blocked_by[d->by->index]++;
        if (d->outcome == TD_OUT_ERROR) {
            if (trig->kind == TD_TRIG_EVENT)
                fprintf(stderr, "%s:%llu: rule %s: %s\n", rp->label, (unsigned long long)rp->lineno,
                        d->rule->id, d->error);
            else
                fprintf(stderr, "%s: timer %s of %s: rule %s: %s\n", rp->label, trig->rule,
                        st->prospect_id, d->rule->id, d->error);
        }
    }
    for (uint32_t i = 0; i < out->nrecs; i++) {
        rp->recs++;
        if (rp->brief) {
            rp_brief_line(stdout, &out->recs[i], st, trig);
        } else {
            rp->buf.len = 0;
            if (td_rec_json(&out->recs[i], st, rp->rs, trig, sim->clock, &rp->buf) != TD_OK) {
                rp->oom = true;
                return;
            }
            fwrite(rp->buf.p, 1, rp->buf.len, stdout);
            fputc('\n', stdout);
        }
    }
}

/* The input figures of the summary. */
typedef struct rp_summary {
    uint64_t lines, applied, rejected, duplicates;
    const char *holidays;
} rp_summary;

/* The per-rule summary, the owners' prospecting figures and the pipeline
 * figure (see the top comment). */
static void rp_print_summary(FILE *f, const replay *rp, const td_sim *sim, const rp_summary *sm) {
    const td_ruleset *rs = rp->rs;
    size_t nr = td_ruleset_count(rs);
    fprintf(f,
            "replay: %llu lines, %llu events applied, %llu rejected, %llu duplicates, %zu "
            "prospects, %llu recommendations, %llu rule errors, timers: %llu run, %llu "
            "stale, %zu pending, %llu owner events derived; ruleset %s\n",
            (unsigned long long)sm->lines, (unsigned long long)sm->applied,
            (unsigned long long)sm->rejected, (unsigned long long)sm->duplicates, sim->nstates,
            (unsigned long long)rp->recs, (unsigned long long)rp->errors,
            (unsigned long long)sim->timers_fired, (unsigned long long)sim->timers_stale,
            sim->nheap, (unsigned long long)sim->derived, td_ruleset_hash(rs));
    fprintf(f, "calendar: %s\n",
            sm->holidays ? sm->holidays : "none (business days are Monday to Friday)");
    fprintf(f, "%-40s %7s %7s %7s %8s %7s %7s\n", "rule", "fired", "blocked", "lost", "cooldown",
            "armed", "errors");
    for (size_t i = 0; i < nr; i++) {
        const td_rule *r = td_ruleset_rule(rs, i);
        if (r->guard)
            fprintf(f, "%-40s %7s %7llu %7s %8s %7s %7llu   (guard: blocks)\n", r->id, "-",
                    (unsigned long long)rp->blocked_by[i], "-", "-", "-",
                    (unsigned long long)rp->stats[i].outcome[TD_OUT_ERROR]);
        else
            fprintf(f, "%-40s %7llu %7llu %7llu %8llu %7llu %7llu\n", r->id,
                    (unsigned long long)rp->stats[i].outcome[TD_OUT_FIRED],
                    (unsigned long long)rp->stats[i].outcome[TD_OUT_BLOCKED],
                    (unsigned long long)rp->stats[i].outcome[TD_OUT_LOST_GROUP],
                    (unsigned long long)rp->stats[i].outcome[TD_OUT_COOLDOWN],
                    (unsigned long long)rp->stats[i].outcome[TD_OUT_ARMED],
                    (unsigned long long)rp->stats[i].outcome[TD_OUT_ERROR]);
    }
    /* prospecting hygiene (PLAYBOOK 4): new prospects contacted per owner
     * per business day (Monday to Friday) of the replayed period */
    td_ms first = TD_MS_MISSING, now = sim->clock;
    const td_sim_entry *e;
    size_t it = 0;
    while ((e = td_sim_next(sim, &it)))
        if (e->st->first_seen_at != TD_MS_MISSING &&
            (first == TD_MS_MISSING || e->st->first_seen_at < first))
            first = e->st->first_seen_at;
    int64_t bdays = 0;
    if (first != TD_MS_MISSING && now != TD_MS_MISSING)
        for (int64_t d = first / TD_DAY; d <= now / TD_DAY; d++)
            bdays += (((d % 7) + 7 + 3) % 7) < 5; /* 1970-01-01 was a Thursday */
    it = 0;
    while ((e = td_sim_next(sim, &it))) {
        const td_state *o = e->st;
        if (strncmp(o->prospect_id, "owner:", 6) != 0) continue;
        fprintf(f, "owner %s: %lld new prospects contacted over %lld business days (%.1f a day)\n",
                o->prospect_id + 6, (long long)o->events, (long long)bdays,
                bdays ? (double)o->events / (double)bdays : 0.0);
    }
    uint64_t reached = 0, won = 0, lost = 0;
    it = 0;
    while ((e = td_sim_next(sim, &it))) {
        if (!(e->mark & RP_REACHED_PROPOSAL)) continue;
        reached++;
        won += e->st->stage == TD_STAGE_WON;
        lost += e->st->stage == TD_STAGE_LOST;
    }
    if (reached)
        fprintf(f,
                "pipeline: %llu prospects reached proposal: %llu won, %llu lost (%.0f%% lost; "
                "above 30%% means attention is not maintained between proposal and "
                "signature)\n",
                (unsigned long long)reached, (unsigned long long)won, (unsigned long long)lost,
                100.0 * (double)lost / (double)reached);
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
            rp_usage(stdout);
            return TD_EXIT_OK;
        default:
            rp_usage(stderr);
            return TD_EXIT_USAGE;
        }
    }
    if (nrules == 0) {
        fprintf(stderr, "touchd replay: --rules DIR is required (e.g. --rules rules/)\n");
        return TD_EXIT_USAGE;
    }
    if (optind != argc - 1) {
        fprintf(stderr, "touchd replay: give exactly one input file (or - for stdin)\n");
        rp_usage(stderr);
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
    char cerr[320];
    if (td_sim_load_calendar(holidays, &cal, &holidays, cerr, sizeof cerr) != TD_OK) {
        fprintf(stderr, "touchd replay: %s\n", cerr);
        td_ruleset_free(rs);
        if (in != stdin) fclose(in);
        return TD_EXIT_USAGE;
    }
    if (cal) td_ruleset_set_calendar(rs, cal);

    size_t nr = td_ruleset_count(rs);
    replay rp = {.rs = rs, .brief = brief, .label = label};
    rp.stats = calloc(nr ? nr : 1, sizeof *rp.stats);
    rp.blocked_by = calloc(nr ? nr : 1, sizeof *rp.blocked_by);
    td_tzdb *tz = td_tzdb_new();
    td_sim sim;
    bool sim_ready = false;
    char *line = NULL;
    size_t lcap = 0;
    ssize_t len;
    uint64_t lineno = 0, applied = 0, rejected = 0, duplicates = 0;
    int rc = TD_EXIT_OK;
    if (!rp.stats || !rp.blocked_by || !tz ||
        td_sim_init(&sim, rs, tz, NULL, NULL, TD_MS_MISSING, TD_STEP_OUTCOMES) != TD_OK) {
        fprintf(stderr, "touchd replay: out of memory\n");
        rc = TD_EXIT_FATAL;
        goto done;
    }
    sim_ready = true;
    sim.fn = rp_on_step;
    sim.ud = &rp;

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
        /* the prospect's entry, created here as td_sim_event would (the
         * entry may move when the step adds a state: marked before) */
        td_sim_entry *e = td_sim_entry_get(&sim, ev.prospect_id, true);
        if (e && ev.type == TD_EV_PROSPECT_UPDATED && (ev.has & TD_HAS_STAGE) &&
            (ev.stage == TD_STAGE_PROPOSAL || ev.stage == TD_STAGE_NEGOTIATION))
            e->mark |= RP_REACHED_PROPOSAL;
        rp.lineno = lineno;
        if (!e || td_sim_event(&sim, &ev, 0) != TD_OK || rp.oom) {
            fprintf(stderr, "touchd replay: out of memory\n");
            rc = TD_EXIT_FATAL;
            goto done;
        }
        if (sim.out->duplicate)
            duplicates++;
        else
            applied++;
    }
    if (ferror(in)) {
        fprintf(stderr, "touchd replay: read error on %s: %s\n", label, strerror(errno));
        rc = TD_EXIT_FATAL;
        goto done;
    }
    /* the clock ends at the last timer fired, not at the end of the span */
    if (advance > 0 && sim.clock != TD_MS_MISSING &&
        (td_sim_fire_due(&sim, sim.clock + advance) != TD_OK || rp.oom)) {
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
        rp_summary summary = {.lines = lineno,
                              .applied = applied,
                              .rejected = rejected,
                              .duplicates = duplicates,
                              .holidays = holidays};
        rp_print_summary(stderr, &rp, &sim, &summary);
    }

done:
    free(line);
    td_buf_free(&rp.buf);
    if (sim_ready) td_sim_free(&sim);
    td_tzdb_free(tz);
    free(rp.stats);
    free(rp.blocked_by);
    td_ruleset_free(rs);
    td_calendar_free(cal);
    if (in != stdin) fclose(in);
    return rc;
}
