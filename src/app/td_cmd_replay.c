/*
 * td_cmd_replay.c - `touchd replay --rules DIR FILE.jsonl`: the engine
 * offline. Events in (JSON lines, `-` for stdin), recommendations and
 * withdrawals out as JSON lines on stdout, state in memory, and a clock that
 * follows the events (now = the latest occurred_at seen, so it never goes
 * backwards).
 *
 * The run is td_sim's (the one offline driver, shared with `test` and
 * `explain`): every prospect's state in its in-memory store, and one
 * virtual clock whose timer heap fires each timer an event arms before an
 * event at or after its due time is applied (in due order, the clock set to
 * its due time); at the end `--advance DUR` moves the clock DUR past the last
 * event and fires what is due by then. A timer that was re-armed or whose
 * rule no longer matches is stale and ignored by the engine, exactly as in
 * the daemon. This file keeps the arguments, the input lines and the output
 * (td_sim's per-step callback, rp_on_step, prints what each step publishes:
 * its withdrawals first, then its recommendations, so a reader applying the
 * stream in order never holds a withdrawn recommendation next to the one
 * that superseded it).
 *
 * The plan: the engine keeps each prospect's pending recommendations in its
 * state; `--plans` prints, after everything else, the plan of every state
 * with something pending, sorted by prospect id. Lateness: without `--wall`
 * nothing is late (the offline default); `--wall TIME` stamps every trigger
 * with that wall clock (td_sim.wall) and the engine applies `--late-policy`
 * as the daemon would.
 *
 * A bad line is reported on stderr with its line number and the decoder's
 * reason, and skipped. At the end a per-rule summary goes to stderr: how many
 * times each rule fired, was blocked (and by which guards), lost in its group,
 * was in cooldown, failed, had its recommendations withdrawn; plus the
 * pipeline figure from the playbook (share of prospects that reached proposal
 * and were then lost: above 30% means attention is not maintained between
 * proposal and signature).
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
#include "td_clock.h"
#include "td_engine.h"
#include "td_event.h"
#include "td_sim.h"
#include "td_time.h"

typedef struct rule_stats {
    uint64_t outcome[TD_OUT_ERROR + 1];
    uint64_t withdrawn; /* its recommendations withdrawn (any reason) */
} rule_stats;

#define RP_WD_REASONS (TD_WDR_EXPIRED + 1)

static void rp_usage(FILE *f) {
    fprintf(
        f, "usage: touchd replay --rules DIR [--rules DIR...] [options] FILE.jsonl|-\n"
           "\n"
           "Runs events (one JSON object per line; - reads stdin) through the rules with\n"
           "in-memory state. Recommendations and withdrawals are printed on stdout as JSON\n"
           "lines (the output topic's format: \"kind\" tells them apart), in the order\n"
           "they happen; the clock follows the events' occurred_at.\n"
           "\n"
           "  -r, --rules PATH   rules file or directory (repeatable; required)\n"
           "  -b, --brief        print one tab-separated line per recommendation instead:\n"
           "                     prospect_id rule channel touch not_before trigger [late]\n"
           "                     and per withdrawal:\n"
           "                     withdrawn prospect_id rule reason withdrawn_id trigger\n"
           "  -p, --plans        at the end, print the plan of every prospect with something\n"
           "                     pending, sorted by prospect id: a JSON line {\"kind\": \"plan\",\n"
           "                     ...the plan topic's object} each, or with --brief one line\n"
           "                     per pending recommendation:\n"
           "                     pending prospect_id rule channel touch not_before expires_at id\n"
           "  -a, --advance DUR  after the last event, move the clock DUR further and fire\n"
           "                     the timers due by then (e.g. --advance 30d)\n"
           "  -w, --wall TIME    judge lateness as the daemon would at this wall clock\n"
           "                     (RFC 3339, or now); without it nothing is late\n"
           "  -l, --late-policy P  with --wall: publish, mark (default) or drop a late\n"
           "                     recommendation\n"
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
    uint64_t recs, errors, wds, late, dropped;
    uint64_t wd_reason[RP_WD_REASONS];
    bool oom;
} replay;

/* td_sim_entry.mark: the prospect reached proposal (or negotiation) */
#define RP_REACHED_PROPOSAL 1u

static const char *rp_trigger_word(const td_trigger *trig) {
    return trig->kind == TD_TRIG_EVENT ? trig->ev->id : "timer";
}

static int rp_brief_line(FILE *out, const td_rec *r, const td_state *st, const td_trigger *trig) {
    char nb[TD_TIME_BUF];
    td_time_format(r->not_before, nb, sizeof nb);
    return fprintf(out, "%s\t%s\t%s\t%s\t%s\t%s%s\n", st->prospect_id, r->rule->id,
                   td_channel_name(r->channel), r->touch, nb, rp_trigger_word(trig),
                   r->late ? "\tlate" : "");
}

static int rp_brief_withdrawal(FILE *out, const td_wd *w, const td_state *st,
                               const td_trigger *trig) {
    return fprintf(out, "withdrawn\t%s\t%s\t%s\t%s\t%s\n", st->prospect_id, w->rule,
                   td_wd_reason_name(w->reason), w->withdraws, rp_trigger_word(trig));
}

/* Prints one published body (a recommendation's or a withdrawal's) with
 * generated_at = the replay's clock. */
static void rp_print_body(replay *rp, const char *body, size_t len, td_ms generated_at) {
    rp->buf.len = 0;
    if (td_body_json(body, len, generated_at, &rp->buf) != TD_OK) {
        rp->oom = true;
        return;
    }
    fwrite(rp->buf.p, 1, rp->buf.len, stdout);
    fputc('\n', stdout);
}

/* The td_sim callback: counts the outcomes and prints what the step
 * publishes: its withdrawals, then its recommendations (but those the late
 * policy drops). */
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
    for (uint32_t i = 0; i < out->nwds && !rp->oom; i++) {
        const td_wd *w = &out->wds[i];
        const td_rule *r = td_ruleset_find(rp->rs, w->rule);
        rp->wds++;
        if ((unsigned)w->reason < RP_WD_REASONS) rp->wd_reason[w->reason]++;
        if (r) rp->stats[r->index].withdrawn++;
        if (rp->brief)
            rp_brief_withdrawal(stdout, w, st, trig);
        else
            rp_print_body(rp, w->body, w->body_len, sim->clock);
    }
    for (uint32_t i = 0; i < out->nrecs && !rp->oom; i++) {
        const td_rec *r = &out->recs[i];
        rp->late += r->late;
        if (r->dropped) {
            rp->dropped++;
            continue;
        }
        rp->recs++;
        if (rp->brief)
            rp_brief_line(stdout, r, st, trig);
        else
            rp_print_body(rp, r->body, r->body_len, sim->clock);
    }
}

static int rp_cmp_state(const void *a, const void *b) {
    const td_state *x = *(const td_state *const *)a, *y = *(const td_state *const *)b;
    return strcmp(x->prospect_id, y->prospect_id);
}

/*
 * --plans: the plan of every state with something pending, sorted by
 * prospect id, on stdout; JSON: the plan topic's object with "kind": "plan"
 * in front, brief: one `pending` line per pending recommendation.
 * @returns TD_OK or TD_ERR (out of memory).
 */
static int rp_print_plans(replay *rp, const td_sim *sim) {
    const td_state **v = malloc((sim->nstates ? sim->nstates : 1) * sizeof *v);
    if (!v) return TD_ERR;
    size_t n = 0, it = 0;
    const td_sim_entry *e;
    while ((e = td_sim_next(sim, &it)))
        if (e->st->nplan) v[n++] = e->st;
    qsort(v, n, sizeof *v, rp_cmp_state);
    int rc = TD_OK;
    for (size_t i = 0; i < n && rc == TD_OK; i++) {
        const td_state *st = v[i];
        if (rp->brief) {
            for (uint32_t k = 0; k < st->nplan; k++) {
                const td_pending *p = &st->plan[k];
                char nb[TD_TIME_BUF], ex[TD_TIME_BUF];
                td_time_format(p->not_before, nb, sizeof nb);
                td_time_format(p->expires_at, ex, sizeof ex);
                printf("pending\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", st->prospect_id, p->rule,
                       td_channel_name(p->channel), p->touch, nb, ex, p->id);
            }
            continue;
        }
        rp->buf.len = 0;
        if (td_plan_json(st, rp->rs, &rp->buf) != TD_OK) {
            rc = TD_ERR;
            break;
        }
        /* the kind leads the object, in place of td_plan_json's "{" */
        fputs("{\"kind\":\"plan\",", stdout);
        fwrite(rp->buf.p + 1, 1, rp->buf.len - 1, stdout);
        fputc('\n', stdout);
    }
    free(v);
    return rc;
}

/* The input figures of the summary. */
typedef struct rp_summary {
    uint64_t lines, applied, rejected, duplicates;
    const char *holidays;
    td_ms wall;         /* --wall, 0 when not given */
    const char *policy; /* --late-policy */
} rp_summary;

/* The per-rule summary, the owners' prospecting figures and the pipeline
 * figure (see the top comment). */
static void rp_print_summary(FILE *f, const replay *rp, const td_sim *sim, const rp_summary *sm) {
    const td_ruleset *rs = rp->rs;
    size_t nr = td_ruleset_count(rs);
    fprintf(f,
            "replay: %llu lines, %llu events applied, %llu rejected, %llu duplicates, %zu "
            "prospects, %llu recommendations, %llu withdrawals, %llu rule errors, timers: %llu "
            "run, %llu stale, %zu pending, %llu owner events derived; ruleset %s\n",
            (unsigned long long)sm->lines, (unsigned long long)sm->applied,
            (unsigned long long)sm->rejected, (unsigned long long)sm->duplicates, sim->nstates,
            (unsigned long long)rp->recs, (unsigned long long)rp->wds,
            (unsigned long long)rp->errors, (unsigned long long)sim->timers_fired,
            (unsigned long long)sim->timers_stale, sim->nheap, (unsigned long long)sim->derived,
            td_ruleset_hash(rs));
    fprintf(f, "calendar: %s\n",
            sm->holidays ? sm->holidays : "none (business days are Monday to Friday)");
    /* the plan: why recommendations left it, and what is still pending */
    fprintf(f, "withdrawals:");
    for (int k = 0; k < RP_WD_REASONS; k++)
        fprintf(f, "%s %s %llu", k ? "," : "", td_wd_reason_name((td_wd_reason)k),
                (unsigned long long)rp->wd_reason[k]);
    uint64_t planned = 0, with_plan = 0;
    const td_sim_entry *e;
    size_t it = 0;
    while ((e = td_sim_next(sim, &it))) {
        planned += e->st->nplan;
        with_plan += e->st->nplan > 0;
    }
    fprintf(f, "; plans: %llu recommendations pending for %llu prospects\n",
            (unsigned long long)planned, (unsigned long long)with_plan);
    if (sm->wall) {
        char wb[TD_TIME_BUF];
        td_time_format(sm->wall, wb, sizeof wb);
        fprintf(f, "late: %llu recommendations late at wall clock %s (policy %s: %llu dropped)\n",
                (unsigned long long)rp->late, wb, sm->policy, (unsigned long long)rp->dropped);
    }
    fprintf(f, "%-40s %7s %7s %7s %8s %7s %7s %9s\n", "rule", "fired", "blocked", "lost",
            "cooldown", "armed", "errors", "withdrawn");
    for (size_t i = 0; i < nr; i++) {
        const td_rule *r = td_ruleset_rule(rs, i);
        if (r->guard)
            fprintf(f, "%-40s %7s %7llu %7s %8s %7s %7llu %9s   (guard: blocks)\n", r->id, "-",
                    (unsigned long long)rp->blocked_by[i], "-", "-", "-",
                    (unsigned long long)rp->stats[i].outcome[TD_OUT_ERROR], "-");
        else
            fprintf(f, "%-40s %7llu %7llu %7llu %8llu %7llu %7llu %9llu\n", r->id,
                    (unsigned long long)rp->stats[i].outcome[TD_OUT_FIRED],
                    (unsigned long long)rp->stats[i].outcome[TD_OUT_BLOCKED],
                    (unsigned long long)rp->stats[i].outcome[TD_OUT_LOST_GROUP],
                    (unsigned long long)rp->stats[i].outcome[TD_OUT_COOLDOWN],
                    (unsigned long long)rp->stats[i].outcome[TD_OUT_ARMED],
                    (unsigned long long)rp->stats[i].outcome[TD_OUT_ERROR],
                    (unsigned long long)rp->stats[i].withdrawn);
    }
    /* prospecting hygiene (PLAYBOOK 4): new prospects contacted per owner
     * per business day (Monday to Friday) of the replayed period */
    td_ms first = TD_MS_MISSING, now = sim->clock;
    it = 0;
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
    static const struct option opts[] = {
        {"rules", required_argument, NULL, 'r'},    {"brief", no_argument, NULL, 'b'},
        {"plans", no_argument, NULL, 'p'},          {"advance", required_argument, NULL, 'a'},
        {"wall", required_argument, NULL, 'w'},     {"late-policy", required_argument, NULL, 'l'},
        {"holidays", required_argument, NULL, 'H'}, {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},           {NULL, 0, NULL, 0}};
    const char *rules[64];
    size_t nrules = 0;
    bool brief = false, quiet = false, plans = false;
    td_ms advance = 0, wall = 0;
    const char *holidays = NULL, *policy = NULL;
    unsigned late_flags = 0;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "r:bpa:w:l:H:qh", opts, NULL)) != -1) {
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
        case 'p':
            plans = true;
            break;
        case 'w':
            if (strcmp(optarg, "now") == 0) {
                wall = td_wall_ms();
            } else if (td_time_parse(optarg, strlen(optarg), &wall) != TD_OK || wall <= 0) {
                fprintf(stderr,
                        "touchd replay: --wall takes an RFC 3339 time (e.g. "
                        "2026-11-23T09:00:00Z) or now; got '%s'\n",
                        optarg);
                return TD_EXIT_USAGE;
            }
            break;
        case 'l':
            policy = optarg;
            if (strcmp(optarg, "publish") == 0)
                late_flags = TD_STEP_LATE_PUBLISH;
            else if (strcmp(optarg, "drop") == 0)
                late_flags = TD_STEP_LATE_DROP;
            else if (strcmp(optarg, "mark") == 0)
                late_flags = 0;
            else {
                fprintf(stderr, "touchd replay: --late-policy is publish, mark or drop; got '%s'\n",
                        optarg);
                return TD_EXIT_USAGE;
            }
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
    if (policy && !wall) {
        fprintf(stderr, "touchd replay: --late-policy needs --wall TIME (without a wall clock "
                        "nothing is late)\n");
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
        td_sim_init(&sim, rs, tz, NULL, NULL, TD_MS_MISSING, TD_STEP_OUTCOMES | late_flags) !=
            TD_OK) {
        fprintf(stderr, "touchd replay: out of memory\n");
        rc = TD_EXIT_FATAL;
        goto done;
    }
    sim_ready = true;
    sim.wall = wall;
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
    if (plans && rp_print_plans(&rp, &sim) != TD_OK) {
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
                              .holidays = holidays,
                              .wall = wall,
                              .policy = policy ? policy : "mark"};
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
