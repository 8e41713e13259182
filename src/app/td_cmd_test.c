/*
 * td_cmd_test.c - `touchd test RULES...`: runs the rules' own test files.
 *
 * Rules as code: beside `rules/ghosting.rules` lives `rules/ghosting.test`,
 * a libconfig file of cases (format: docs/rules-testing.md, parser:
 * td_testfile.c). Each case starts from a fresh in-memory state (optionally
 * pre-filled), runs a timeline of events and clock advances through the real
 * engine on a virtual clock (td_sim, the offline driver replay and explain
 * share: timers fire when the clock passes their due time), and checks what
 * each step produced against its expectations: the recommendations, none, a
 * decision (blocked by a named guard, lost in the group, in cooldown...), the
 * withdrawals (or none), and the prospect's plan after the step (and after
 * the last one: the case's own expect_plan).
 *
 * A test file may declare extra rules (a deliberately naive rule that a
 * guard of the ruleset must block): the ruleset is then compiled again from
 * the same files plus those, for that file only, and what its cases cover is
 * mapped back to the ruleset's rules by id.
 *
 * Output is a test runner's: `PASS file:case` or `FAIL file:case` followed by
 * a readable diff, then the coverage (every rule and guard that no case
 * exercised), then exactly `N passed, M failed` as the last line (CI parses
 * it). `--junit FILE` also writes JUnit XML. Exit 0 when everything passed,
 * 1 otherwise, 2 on usage errors.
 *
 * File-local functions are prefixed tt_.
 *
 * @locality main thread.
 */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "td_calendar.h"
#include "td_cli.h"
#include "td_clock.h"
#include "td_engine.h"
#include "td_sim.h"
#include "td_testfile.h"
#include "td_time.h"

/* ---------------------------------------------------------------- collector */

/* A recommendation produced during a step (ids only). */
typedef struct got_rec {
    const td_rule *rule;
    td_channel channel;
    const char *touch;
    td_ms not_before;
    char trigger[TD_ID_MAX + 8];
} got_rec;

/* A decision made during a step, with a one-line why for failure reports. */
typedef struct got_dec {
    const td_rule *rule;
    td_outcome outcome;
    const td_rule *by;
    td_ms until;
    char why[320];
} got_dec;

/* A withdrawal made during a step. */
typedef struct got_wd {
    char rule[TD_RULE_ID_MAX + 1]; /* the withdrawn recommendation's */
    td_wd_reason reason;
    char withdraws[TD_REC_ID_LEN + 1];
    char trigger[TD_ID_MAX + 8];
} got_wd;

typedef struct collector {
    got_rec *recs;
    size_t nrecs, caprecs;
    got_dec *decs;
    size_t ndecs, capdecs;
    got_wd *wds;
    size_t nwds, capwds;
    bool *covered; /* per rule index */
    bool oom;
} collector;

static void tt_fmt_value(const td_value *v, char *buf, size_t cap) { td_value_json(v, buf, cap); }

/* "email.unanswered >= 2 is false (email.unanswered=1); ..." for the
 * conditions that did not hold. */
static void tt_why_conditions(const td_decision *d, char *buf, size_t cap) {
    size_t n = 0;
    buf[0] = '\0';
    for (uint32_t i = 0; i < d->nbecause && n + 1 < cap; i++) {
        const td_because *b = &d->because[i];
        if (b->value.type == TD_T_BOOL && !b->value.missing && b->value.u.b) continue;
        char vb[64];
        tt_fmt_value(&b->value, vb, sizeof vb);
        int w =
            snprintf(buf + n, cap - n, "%s`%.*s` is %s", n ? "; " : "", (int)b->len, b->expr, vb);
        if (w < 0 || (size_t)w >= cap - n) break;
        n += (size_t)w;
        for (uint32_t f = 0; f < b->facts.n && n + 1 < cap; f++) {
            tt_fmt_value(&b->facts.v[f].value, vb, sizeof vb);
            w = snprintf(buf + n, cap - n, "%s%s=%s%s", f ? ", " : " (", b->facts.v[f].field->name,
                         vb, f + 1 == b->facts.n ? ")" : "");
            if (w < 0 || (size_t)w >= cap - n) break;
            n += (size_t)w;
        }
    }
}

static void tt_describe(const td_decision *d, char *buf, size_t cap) {
    char tb[TD_TIME_BUF];
    switch (d->outcome) {
    case TD_OUT_FIRED:
        snprintf(buf, cap, "fired");
        break;
    case TD_OUT_NOT_MATCHED: {
        char c[280];
        tt_why_conditions(d, c, sizeof c);
        snprintf(buf, cap, "not matched%s%s", c[0] ? ": " : "", c);
        break;
    }
    case TD_OUT_COOLDOWN:
        td_time_format(d->until, tb, sizeof tb);
        snprintf(buf, cap, "in cooldown until %s", tb);
        break;
    case TD_OUT_BLOCKED:
        snprintf(buf, cap, "blocked by %s", d->by ? d->by->id : "?");
        break;
    case TD_OUT_LOST_GROUP:
        snprintf(buf, cap, "lost in its group to %s", d->by ? d->by->id : "?");
        break;
    case TD_OUT_ARMED:
        td_time_format(d->until, tb, sizeof tb);
        snprintf(buf, cap, "timer armed, due %s", tb);
        break;
    case TD_OUT_ERROR:
        snprintf(buf, cap, "error: %s", d->error);
        break;
    }
}

static void tt_trigger_word(const td_trigger *trig, char *buf, size_t cap) {
    snprintf(buf, cap, "%s", trig->kind == TD_TRIG_EVENT ? trig->ev->id : "timer");
}

static void tt_collect(void *ud, const td_sim *sim, const td_state *st, const td_trigger *trig,
                       const td_step_out *out) {
    (void)sim;
    (void)st;
    collector *c = ud;
    for (uint32_t i = 0; i < out->nwds; i++) {
        if (td_grow(&c->wds, &c->capwds, c->nwds, sizeof *c->wds, 8) != TD_OK) {
            c->oom = true;
            return;
        }
        const td_wd *w = &out->wds[i];
        got_wd *g = &c->wds[c->nwds++];
        td_strlcpy(g->rule, w->rule, sizeof g->rule);
        g->reason = w->reason;
        td_strlcpy(g->withdraws, w->withdraws, sizeof g->withdraws);
        tt_trigger_word(trig, g->trigger, sizeof g->trigger);
    }
    for (uint32_t i = 0; i < out->nrecs; i++) {
        if (td_grow(&c->recs, &c->caprecs, c->nrecs, sizeof *c->recs, 16) != TD_OK) {
            c->oom = true;
            return;
        }
        const td_rec *r = &out->recs[i];
        got_rec *g = &c->recs[c->nrecs++];
        g->rule = r->rule;
        g->channel = r->channel;
        g->touch = r->touch;
        g->not_before = r->not_before;
        tt_trigger_word(trig, g->trigger, sizeof g->trigger);
        if (c->covered) c->covered[r->rule->index] = true;
    }
    for (uint32_t i = 0; i < out->ndecisions; i++) {
        const td_decision *d = &out->decisions[i];
        if (td_grow(&c->decs, &c->capdecs, c->ndecs, sizeof *c->decs, 32) != TD_OK) {
            c->oom = true;
            return;
        }
        got_dec *g = &c->decs[c->ndecs++];
        g->rule = d->rule;
        g->outcome = d->outcome;
        g->by = d->by;
        g->until = d->until;
        tt_describe(d, g->why, sizeof g->why);
        if (c->covered && d->outcome == TD_OUT_BLOCKED && d->by) c->covered[d->by->index] = true;
    }
}

/* ---------------------------------------------------------------- checking */

static void tt_rec_line(td_buf *b, const char *mark, const td_rule *rule, td_channel ch,
                        const char *touch, td_ms nb, const char *trigger) {
    char tb[TD_TIME_BUF] = "*";
    if (nb != TD_MS_MISSING) td_time_format(nb, tb, sizeof tb);
    td_buf_printf(b, "        %s %-36s %-9s %-17s %s", mark, rule->id,
                  ch == TD_CH_NONE ? "*" : td_channel_name(ch), touch ? touch : "*", tb);
    if (trigger) td_buf_printf(b, "  (trigger %s)", trigger);
    td_buf_append(b, "\n", 1);
}

/*
 * Pairs expected items with actual ones, each used once, first fit:
 * (*met)[e] and (*used)[g] (calloc'd, the caller frees them) say which found
 * a partner. match(ctx, e, g) compares expected e with actual g.
 * @returns how many of either have none (0: the same multiset), or -1 on
 * out-of-memory.
 */
static long tt_pair(size_t ne, size_t ng, bool (*match)(const void *ctx, size_t e, size_t g),
                    const void *ctx, bool **met, bool **used) {
    *met = calloc(ne + 1, sizeof **met);
    *used = calloc(ng + 1, sizeof **used);
    if (!*met || !*used) return -1;
    long unpaired = 0;
    for (size_t e = 0; e < ne; e++)
        for (size_t g = 0; g < ng && !(*met)[e]; g++)
            if (!(*used)[g] && match(ctx, e, g)) (*used)[g] = (*met)[e] = true;
    for (size_t e = 0; e < ne; e++)
        unpaired += !(*met)[e];
    for (size_t g = 0; g < ng; g++)
        unpaired += !(*used)[g];
    return unpaired;
}

/* A step's expectations and what it produced, for tt_pair. */
typedef struct tt_step_pair {
    const tf_step *st;
    const collector *c;
} tt_step_pair;

static bool tt_rec_matches(const tf_rec_exp *e, const got_rec *g) {
    return e->rule == g->rule && (e->channel == TD_CH_NONE || e->channel == g->channel) &&
           (!e->touch || strcmp(e->touch, g->touch) == 0) &&
           (e->not_before == TD_MS_MISSING || e->not_before == g->not_before);
}

static bool tt_rec_pair(const void *ctx, size_t e, size_t g) {
    const tt_step_pair *sp = ctx;
    return tt_rec_matches(&sp->st->recs[e], &sp->c->recs[g]);
}

/* Why `rule` did not produce what was expected, from the step's decisions. */
static void tt_explain_rule(td_buf *b, const collector *c, const td_rule *rule) {
    bool any = false;
    for (size_t i = 0; i < c->ndecs; i++) {
        if (c->decs[i].rule != rule) continue;
        td_buf_printf(b, "        why %s: %s\n", rule->id, c->decs[i].why);
        any = true;
    }
    if (!any)
        td_buf_printf(b,
                      "        why %s: not evaluated (its `on` does not match this step's "
                      "triggers, or no timer of it came due)\n",
                      rule->id);
}

static const char *tt_step_label(const tf_step *st, char *buf, size_t cap) {
    if (st->nevents == 1)
        snprintf(buf, cap, "%s %s", td_event_type_name(st->events[0].type), st->events[0].id);
    else if (st->nevents > 1)
        snprintf(buf, cap, "%zu events", st->nevents);
    else {
        char tb[TD_TIME_BUF];
        td_time_format(st->advance_to, tb, sizeof tb);
        snprintf(buf, cap, "advance to %s", tb);
    }
    return buf;
}

/* ---- withdrawals and the plan */

static void tt_wd_line(td_buf *b, const char *mark, const char *rule, int reason, const got_wd *g) {
    td_buf_printf(b, "        %s %-36s %s", mark, rule,
                  reason < 0 ? "*" : td_wd_reason_name((td_wd_reason)reason));
    if (g) td_buf_printf(b, "  (withdraws %s, trigger %s)", g->withdraws, g->trigger);
    td_buf_append(b, "\n", 1);
}

static bool tt_wd_matches(const tf_wd_exp *e, const got_wd *g) {
    return strcmp(e->rule->id, g->rule) == 0 && (e->reason < 0 || (int)e->reason == (int)g->reason);
}

/* Why an expected withdrawal of `rule` did not come: is one of its
 * recommendations still pending? */
static void tt_explain_wd(td_buf *b, const td_state *st, const td_rule *rule) {
    for (uint32_t i = 0; st && i < st->nplan; i++)
        if (strcmp(st->plan[i].rule, rule->id) == 0) {
            char tb[TD_TIME_BUF];
            td_time_format(st->plan[i].expires_at, tb, sizeof tb);
            td_buf_printf(b,
                          "        why %s: %s is still pending after the step (no trigger of the "
                          "step withdrew it; it expires at %s)\n",
                          rule->id, st->plan[i].id, tb);
            return;
        }
    td_buf_printf(b,
                  "        why %s: nothing of it is pending after the step (never recommended, "
                  "or it left the plan earlier)\n",
                  rule->id);
}

static bool tt_wd_pair(const void *ctx, size_t e, size_t g) {
    const tt_step_pair *sp = ctx;
    return tt_wd_matches(&sp->st->wds[e], &sp->c->wds[g]);
}

/* The step's withdrawals against expect_withdrawn / expect_no_withdrawal
 * (order does not matter). */
static bool tt_check_wds(const char *where, const tf_step *st, const collector *c,
                         const td_state *main, td_buf *b) {
    bool *used, *met;
    tt_step_pair sp = {st, c};
    long unpaired = tt_pair(st->nwds, c->nwds, tt_wd_pair, &sp, &met, &used);
    if (unpaired < 0) {
        free(used);
        free(met);
        td_buf_printf(b, "    %s: out of memory\n", where);
        return false;
    }
    if (unpaired) {
        td_buf_printf(b, "    %s: withdrawals differ (- expected, + actual)\n", where);
        if (st->nwds == 0) td_buf_printf(b, "        - (none)\n");
        for (size_t e = 0; e < st->nwds; e++)
            tt_wd_line(b, met[e] ? " " : "-", st->wds[e].rule->id, st->wds[e].reason, NULL);
        for (size_t g = 0; g < c->nwds; g++)
            if (!used[g]) tt_wd_line(b, "+", c->wds[g].rule, (int)c->wds[g].reason, &c->wds[g]);
        if (c->nwds == 0) td_buf_printf(b, "        + (none)\n");
        for (size_t e = 0; e < st->nwds; e++)
            if (!met[e]) tt_explain_wd(b, main, st->wds[e].rule);
    }
    free(used);
    free(met);
    return unpaired == 0;
}

static bool tt_plan_matches(const tf_rec_exp *e, const td_pending *p) {
    return strcmp(e->rule->id, p->rule) == 0 &&
           (e->channel == TD_CH_NONE || e->channel == p->channel) &&
           (!e->touch || strcmp(e->touch, p->touch) == 0) &&
           (e->not_before == TD_MS_MISSING || e->not_before == p->not_before) &&
           (e->expires_at == TD_MS_MISSING || e->expires_at == p->expires_at);
}

static void tt_plan_line(td_buf *b, const char *mark, const char *rule, td_channel ch,
                         const char *touch, td_ms nb, td_ms ex, const char *id) {
    char tb[TD_TIME_BUF] = "*", eb[TD_TIME_BUF] = "*";
    if (nb != TD_MS_MISSING) td_time_format(nb, tb, sizeof tb);
    if (ex != TD_MS_MISSING) td_time_format(ex, eb, sizeof eb);
    td_buf_printf(b, "        %s %-36s %-9s %-17s %-20s  expires %s", mark, rule,
                  ch == TD_CH_NONE ? "*" : td_channel_name(ch), touch ? touch : "*", tb, eb);
    if (id) td_buf_printf(b, "  (%s)", id);
    td_buf_append(b, "\n", 1);
}

/*
 * The prospect's plan against an expect_plan (in plan order): the report is
 * the longest common subsequence of the two lists, ` ` for an expected entry
 * that is pending at its place, `-` expected and not there, `+` pending and
 * not expected. @returns true when they are the same, or on out-of-memory
 * (reported).
 */
static bool tt_check_plan(const char *where, const tf_plan_exp *pl, const td_state *st, td_buf *b) {
    size_t n = pl->n, m = st ? st->nplan : 0;
    bool same = n == m;
    for (size_t i = 0; same && i < n; i++)
        same = tt_plan_matches(&pl->v[i], &st->plan[i]);
    if (same) return true;
    uint32_t *lcs = calloc((n + 1) * (m + 1), sizeof *lcs);
    if (!lcs) {
        td_buf_printf(b, "    %s: out of memory\n", where);
        return false;
    }
#define TT_L(i, j) lcs[(i) * (m + 1) + (j)]
    for (size_t i = n; i-- > 0;)
        for (size_t j = m; j-- > 0;)
            TT_L(i, j) = tt_plan_matches(&pl->v[i], &st->plan[j])
                             ? TT_L(i + 1, j + 1) + 1
                             : (TT_L(i + 1, j) > TT_L(i, j + 1) ? TT_L(i + 1, j) : TT_L(i, j + 1));
    td_buf_printf(b, "    %s: plan differs (- expected, + pending; soonest not_before first)\n",
                  where);
    if (n == 0) td_buf_printf(b, "        - (nothing pending)\n");
    size_t i = 0, j = 0;
    while (i < n || j < m) {
        const tf_rec_exp *e = i < n ? &pl->v[i] : NULL;
        const td_pending *p = j < m ? &st->plan[j] : NULL;
        if (e && p && tt_plan_matches(e, p) && TT_L(i, j) == TT_L(i + 1, j + 1) + 1) {
            tt_plan_line(b, " ", p->rule, p->channel, p->touch, p->not_before, p->expires_at,
                         p->id);
            i++;
            j++;
        } else if (e && (!p || TT_L(i + 1, j) >= TT_L(i, j + 1))) {
            tt_plan_line(b, "-", e->rule->id, e->channel, e->touch, e->not_before, e->expires_at,
                         NULL);
            i++;
        } else {
            tt_plan_line(b, "+", p->rule, p->channel, p->touch, p->not_before, p->expires_at,
                         p->id);
            j++;
        }
    }
#undef TT_L
    if (m == 0) td_buf_printf(b, "        + (nothing pending)\n");
    free(lcs);
    return false;
}

/* Checks one step; appends a report to b on failure. main is the
 * prospect's state after the step. @returns true if it passed. */
static bool tt_check_step(const tf_file *f, size_t si, const tf_step *st, const collector *c,
                          const td_state *main, td_buf *b) {
    char label[200];
    tt_step_label(st, label, sizeof label);
    bool ok = true;
    if (st->check_recs) {
        bool *used, *met;
        tt_step_pair sp = {st, c};
        long unpaired = tt_pair(st->nrecs, c->nrecs, tt_rec_pair, &sp, &met, &used);
        if (unpaired < 0) {
            free(used);
            free(met);
            td_buf_printf(b, "    step %zu: out of memory\n", si + 1);
            return false;
        }
        if (unpaired) {
            ok = false;
            td_buf_printf(
                b, "    step %zu (%s:%d, %s): recommendations differ (- expected, + actual)\n",
                si + 1, f->path, st->line, label);
            if (st->nrecs == 0) td_buf_printf(b, "        - (none)\n");
            for (size_t e = 0; e < st->nrecs; e++)
                tt_rec_line(b, met[e] ? " " : "-", st->recs[e].rule, st->recs[e].channel,
                            st->recs[e].touch, st->recs[e].not_before, NULL);
            for (size_t g = 0; g < c->nrecs; g++)
                if (!used[g])
                    tt_rec_line(b, "+", c->recs[g].rule, c->recs[g].channel, c->recs[g].touch,
                                c->recs[g].not_before, c->recs[g].trigger);
            if (c->nrecs == 0) td_buf_printf(b, "        + (none)\n");
            for (size_t e = 0; e < st->nrecs; e++) {
                if (met[e]) continue;
                bool fired = false;
                for (size_t g = 0; g < c->nrecs; g++)
                    fired |= c->recs[g].rule == st->recs[e].rule;
                if (!fired) tt_explain_rule(b, c, st->recs[e].rule);
            }
        }
        free(used);
        free(met);
    }
    for (size_t k = 0; k < st->nouts; k++) {
        const tf_out_exp *x = &st->outs[k];
        bool found = false;
        for (size_t i = 0; i < c->ndecs && !found; i++) {
            const got_dec *d = &c->decs[i];
            found = d->rule == x->rule && d->outcome == x->outcome && (!x->by || d->by == x->by) &&
                    (x->until == TD_MS_MISSING || d->until == x->until);
        }
        if (found) continue;
        ok = false;
        char want[160], tb[TD_TIME_BUF];
        int n = snprintf(want, sizeof want, "%s", td_outcome_name(x->outcome));
        if (x->by && n > 0) n += snprintf(want + n, sizeof want - (size_t)n, " by %s", x->by->id);
        if (x->until != TD_MS_MISSING && n > 0 && (size_t)n < sizeof want) {
            td_time_format(x->until, tb, sizeof tb);
            snprintf(want + n, sizeof want - (size_t)n, " until %s", tb);
        }
        td_buf_printf(b, "    step %zu (%s:%d, %s): expected %s to be %s\n", si + 1, f->path,
                      x->line, label, x->rule->id, want);
        tt_explain_rule(b, c, x->rule);
    }
    for (size_t k = 0; k < st->nnots; k++) {
        for (size_t g = 0; g < c->nrecs; g++) {
            if (c->recs[g].rule != st->nots[k]) continue;
            ok = false;
            td_buf_printf(b, "    step %zu (%s:%d, %s): %s fired, expected it not to\n", si + 1,
                          f->path, st->line, label, st->nots[k]->id);
            tt_rec_line(b, "+", c->recs[g].rule, c->recs[g].channel, c->recs[g].touch,
                        c->recs[g].not_before, c->recs[g].trigger);
            break;
        }
    }
    char where[300];
    snprintf(where, sizeof where, "step %zu (%s:%d, %s)", si + 1, f->path, st->line, label);
    if (st->check_wds && !tt_check_wds(where, st, c, main, b)) ok = false;
    if (st->plan.check) {
        snprintf(where, sizeof where, "after step %zu (%s:%d, %s)", si + 1, f->path, st->plan.line,
                 label);
        if (!tt_check_plan(where, &st->plan, main, b)) ok = false;
    }
    return ok;
}

/* -v: what a step produced, whether or not it was checked, and the plan
 * after it. */
static void tt_trace_step(size_t si, const tf_step *st, const collector *c, const td_state *main,
                          td_buf *b) {
    char label[200];
    td_buf_printf(b, "    step %zu (line %d, %s): %zu recommendation%s, %zu withdrawal%s\n", si + 1,
                  st->line, tt_step_label(st, label, sizeof label), c->nrecs,
                  c->nrecs == 1 ? "" : "s", c->nwds, c->nwds == 1 ? "" : "s");
    for (size_t g = 0; g < c->nrecs; g++)
        tt_rec_line(b, "+", c->recs[g].rule, c->recs[g].channel, c->recs[g].touch,
                    c->recs[g].not_before, c->recs[g].trigger);
    for (size_t g = 0; g < c->nwds; g++)
        tt_wd_line(b, "x", c->wds[g].rule, (int)c->wds[g].reason, &c->wds[g]);
    for (size_t i = 0; i < c->ndecs; i++)
        if (c->decs[i].outcome != TD_OUT_FIRED)
            td_buf_printf(b, "          %s: %s\n", c->decs[i].rule->id, c->decs[i].why);
    if (main && main->nplan)
        td_buf_printf(b, "          plan after the step: %u pending\n", main->nplan);
    else
        td_buf_printf(b, "          plan after the step: nothing pending\n");
    for (uint32_t k = 0; main && k < main->nplan; k++) {
        const td_pending *p = &main->plan[k];
        tt_plan_line(b, "=", p->rule, p->channel, p->touch, p->not_before, p->expires_at, p->id);
    }
}

/* Marks the rules and guards a case names in its expectations. */
static void tt_cover_named(const tf_case *tc, bool *covered) {
    for (size_t s = 0; s < tc->nsteps; s++) {
        const tf_step *st = &tc->steps[s];
        for (size_t i = 0; i < st->nrecs; i++)
            covered[st->recs[i].rule->index] = true;
        for (size_t i = 0; i < st->nouts; i++) {
            covered[st->outs[i].rule->index] = true;
            if (st->outs[i].by) covered[st->outs[i].by->index] = true;
        }
        for (size_t i = 0; i < st->nnots; i++)
            covered[st->nots[i]->index] = true;
        for (size_t i = 0; i < st->nwds; i++)
            covered[st->wds[i].rule->index] = true;
        for (size_t i = 0; i < st->plan.n; i++)
            covered[st->plan.v[i].rule->index] = true;
    }
    for (size_t i = 0; i < tc->plan.n; i++)
        covered[tc->plan.v[i].rule->index] = true;
}

/* Runs one case. @returns 1 passed, 0 failed, -1 out of memory. */
static int tt_run_case(const td_ruleset *rs, td_tzdb *tz, const tf_file *f, const tf_case *tc,
                       bool *covered, bool verbose, td_buf *report, td_buf *trace) {
    td_sim sim;
    /* the clock starts with the first event (or advance), which may come
     * before `start`: a story told from its past runs at its own times.
     * After setup events, it moves to `start` (firing the timers due by
     * then): the steps begin there. */
    if (td_sim_init(&sim, rs, tz, NULL, &tc->init, TD_MS_MISSING, TD_STEP_EXPLAIN) != TD_OK)
        return -1;
    collector col = {.covered = covered};
    sim.fn = tt_collect;
    sim.ud = &col;
    int rc = 1;
    for (size_t i = 0; i < tc->nsetup && rc >= 0; i++)
        if (td_sim_event(&sim, &tc->setup[i], 0) != TD_OK) rc = -1;
    if (rc >= 0 && tc->nsetup && td_sim_advance(&sim, tc->start) != TD_OK) rc = -1;
    for (size_t s = 0; s < tc->nsteps && rc >= 0; s++) {
        const tf_step *st = &tc->steps[s];
        col.nrecs = col.ndecs = col.nwds = 0;
        for (size_t i = 0; i < st->nevents && rc >= 0; i++)
            if (td_sim_event(&sim, &st->events[i], 0) != TD_OK) rc = -1;
        if (rc >= 0 && st->advance_to != TD_MS_MISSING &&
            td_sim_advance(&sim, st->advance_to) != TD_OK)
            rc = -1;
        if (col.oom) rc = -1;
        if (rc < 0) break;
        if (verbose) tt_trace_step(s, st, &col, td_sim_main(&sim), trace);
        if (!tt_check_step(f, s, st, &col, td_sim_main(&sim), report)) rc = 0;
    }
    if (rc >= 0 && tc->plan.check) {
        char where[300];
        snprintf(where, sizeof where, "at the end of the case (%s:%d)", f->path, tc->plan.line);
        if (!tt_check_plan(where, &tc->plan, td_sim_main(&sim), report)) rc = 0;
    }
    tt_cover_named(tc, covered);
    free(col.recs);
    free(col.decs);
    free(col.wds);
    td_sim_free(&sim);
    return rc;
}

/* ---------------------------------------------------------------- JUnit */

typedef struct result {
    const char *file; /* borrowed from the tf_file list */
    char *name;       /* owned; NULL for a file-level failure */
    bool passed;
    double seconds;
    char *report; /* owned; failure text */
} result;

/* XML text: escapes markup, drops bytes XML 1.0 cannot carry, replaces
 * invalid UTF-8 with '?'. */
static void tt_xml_text(FILE *o, const char *s) {
    const unsigned char *p = (const unsigned char *)(s ? s : "");
    while (*p) {
        unsigned char c = *p;
        if (c == '&')
            fputs("&amp;", o);
        else if (c == '<')
            fputs("&lt;", o);
        else if (c == '>')
            fputs("&gt;", o);
        else if (c == '"')
            fputs("&quot;", o);
        else if (c == '\'')
            fputs("&apos;", o);
        else if (c < 0x20 && c != '\n' && c != '\t' && c != '\r')
            fputc('?', o);
        else if (c < 0x80)
            fputc(c, o);
        else {
            size_t n = c >= 0xf0 && c < 0xf5 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 && c < 0xe0 ? 2 : 0;
            size_t k = 1;
            while (n && k < n && (p[k] & 0xc0) == 0x80)
                k++;
            if (n && k == n) {
                fwrite(p, 1, n, o);
                p += n;
                continue;
            }
            fputc('?', o);
        }
        p++;
    }
}

static int tt_write_junit(const char *path, const result *res, size_t nres,
                          const char *const *files, size_t nfiles, const char *coverage_failure) {
    FILE *o = fopen(path, "w");
    if (!o) {
        fprintf(stderr, "touchd test: cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    size_t total = 0, failed = 0;
    for (size_t i = 0; i < nres; i++) {
        total++;
        failed += !res[i].passed;
    }
    if (coverage_failure) {
        total++;
        failed++;
    }
    fprintf(o, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    fprintf(o, "<testsuites name=\"touchd test\" tests=\"%zu\" failures=\"%zu\" errors=\"0\">\n",
            total, failed);
    for (size_t fi = 0; fi < nfiles; fi++) {
        size_t t = 0, fl = 0;
        double secs = 0;
        for (size_t i = 0; i < nres; i++)
            if (res[i].file == files[fi]) {
                t++;
                fl += !res[i].passed;
                secs += res[i].seconds;
            }
        fputs("  <testsuite name=\"", o);
        tt_xml_text(o, files[fi]);
        fprintf(o, "\" tests=\"%zu\" failures=\"%zu\" errors=\"0\" time=\"%.3f\">\n", t, fl, secs);
        for (size_t i = 0; i < nres; i++) {
            if (res[i].file != files[fi]) continue;
            fputs("    <testcase classname=\"", o);
            tt_xml_text(o, files[fi]);
            fputs("\" name=\"", o);
            tt_xml_text(o, res[i].name ? res[i].name : "(file)");
            fprintf(o, "\" time=\"%.3f\"", res[i].seconds);
            if (res[i].passed) {
                fputs("/>\n", o);
                continue;
            }
            fputs(">\n      <failure message=\"", o);
            tt_xml_text(o, res[i].name ? "expectations not met" : "the test file has errors");
            fputs("\" type=\"touchd.test\">", o);
            tt_xml_text(o, res[i].report);
            fputs("</failure>\n    </testcase>\n", o);
        }
        fputs("  </testsuite>\n", o);
    }
    if (coverage_failure) {
        fputs("  <testsuite name=\"coverage\" tests=\"1\" failures=\"1\" errors=\"0\">\n"
              "    <testcase classname=\"coverage\" name=\"require-coverage\">\n"
              "      <failure message=\"rules or guards not exercised\" type=\"touchd.coverage\">",
              o);
        tt_xml_text(o, coverage_failure);
        fputs("</failure>\n    </testcase>\n  </testsuite>\n", o);
    }
    fputs("</testsuites>\n", o);
    if (fclose(o) != 0) {
        fprintf(stderr, "touchd test: write error on %s: %s\n", path, strerror(errno));
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- command */

static void tt_usage(FILE *f) {
    fprintf(f,
            "usage: touchd test [options] RULES...\n"
            "\n"
            "Runs the rules' test files. RULES are directories (their *.rules files are the\n"
            "ruleset, their *.test files the tests), *.rules files and *.test files. With\n"
            "only test files, the rules are the *.rules files of their directories.\n"
            "Format of the test files: docs/rules-testing.md.\n"
            "\n"
            "  --junit FILE          also write the results as JUnit XML to FILE\n"
            "  --require-coverage    fail when a rule or guard is exercised by no case\n"
            "  -k, --filter TEXT     run only the cases whose name contains TEXT\n"
            "  -q, --quiet           print only failures, the coverage and the summary\n"
            "  -H, --holidays DIR    public holiday files (<CC>.holidays) for business days;\n"
            "                        default config/holidays when it exists, else weekends only\n"
            "  -v, --verbose         after each case, what every step produced and why the\n"
            "                        other rules did not fire (to write expectations)\n"
            "  -h, --help            this help\n"
            "\n"
            "Prints PASS/FAIL file:case per case, a diff for each failure, the rules and\n"
            "guards no case exercised, and `N passed, M failed` as the last line.\n"
            "Exit status: 0 all passed, 1 a failure (or the rules do not compile, or a test\n"
            "file has errors, or coverage is required and incomplete), 2 usage error.\n");
}

typedef struct strv {
    char **v;
    size_t n, cap;
} strv;

static int tt_strv_add(strv *s, const char *x) {
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->v[i], x) == 0) return 0;
    if (td_grow(&s->v, &s->cap, s->n, sizeof *s->v, 8) != TD_OK) return -1;
    if (!(s->v[s->n] = strdup(x))) return -1;
    s->n++;
    return 0;
}

static void tt_strv_free(strv *s) {
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i]);
    free(s->v);
}

static bool tt_ends_with(const char *s, const char *sfx) {
    size_t n = strlen(s), k = strlen(sfx);
    return n >= k && strcmp(s + n - k, sfx) == 0;
}

static int tt_cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Adds the *.test files of a directory, sorted. */
static int tt_add_dir_tests(strv *tests, const char *dir) {
    DIR *dp = opendir(dir);
    if (!dp) return -1;
    strv found = {0};
    struct dirent *e;
    while ((e = readdir(dp))) {
        if (e->d_name[0] == '.' || !tt_ends_with(e->d_name, ".test") || strlen(e->d_name) < 6)
            continue;
        char path[4096];
        size_t dl = strlen(dir);
        snprintf(path, sizeof path, "%s%s%s", dir, dl && dir[dl - 1] == '/' ? "" : "/", e->d_name);
        if (tt_strv_add(&found, path) != 0) break;
    }
    closedir(dp);
    if (found.n) qsort(found.v, found.n, sizeof *found.v, tt_cmp_str);
    for (size_t i = 0; i < found.n; i++)
        tt_strv_add(tests, found.v[i]);
    tt_strv_free(&found);
    return 0;
}

/* Appends each line of text, indented by four spaces. */
static void tt_indent(td_buf *b, const char *text) {
    const char *p = text ? text : "";
    while (*p) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        td_buf_printf(b, "    %.*s\n", (int)n, p);
        p += n + (nl ? 1 : 0);
    }
}

static int tt_grow_results(result **res, size_t *cap, size_t need) {
    if (need <= *cap) return 0;
    size_t n = *cap ? *cap : 16;
    while (n < need)
        n *= 2;
    result *v = realloc(*res, n * sizeof *v);
    if (!v) return -1;
    *res = v;
    *cap = n;
    return 0;
}

/* Parses and runs one test file against rs. @returns 0, or -1 on out-of-memory. */
static int tt_run_file(const td_ruleset *rs, td_tzdb *tz, tf_file *f, const char *path,
                       const char *filter, bool *covered, bool verbose, bool quiet, result **res,
                       size_t *nres, size_t *capres, size_t *passed, size_t *failed) {
    tf_file_parse(f, path, rs, filter, tz, NULL);
    if (tt_grow_results(res, capres, *nres + f->ncases + f->nbroken + 1) != 0) return -1;
    if (f->file_errors) {
        td_buf msg = {0};
        tt_indent(&msg, f->file_text);
        td_buf_printf(&msg, "    the file has errors outside its cases: fix them first\n");
        printf("FAIL %s\n%s", f->path, msg.p ? msg.p : "");
        (*res)[(*nres)++] = (result){.file = path, .passed = false, .report = msg.p};
        (*failed)++;
    }
    for (size_t b = 0; b < f->nbroken; b++) {
        td_buf msg = {0};
        tt_indent(&msg, f->broken[b].errors);
        td_buf_printf(&msg, "    the case has errors in the test file; it was not run\n");
        printf("FAIL %s:%s\n%s", f->path, f->broken[b].name, msg.p ? msg.p : "");
        (*res)[(*nres)++] = (result){
            .file = path, .name = strdup(f->broken[b].name), .passed = false, .report = msg.p};
        (*failed)++;
    }
    for (size_t k = 0; k < f->ncases; k++) {
        const tf_case *tc = &f->cases[k];
        td_buf report = {0}, trace = {0};
        double t0 = (double)td_mono_us() / 1e6;
        int r = tt_run_case(rs, tz, f, tc, covered, verbose, &report, &trace);
        double secs = (double)td_mono_us() / 1e6 - t0;
        if (r < 0) {
            td_buf_free(&report);
            td_buf_free(&trace);
            return -1;
        }
        if (r == 1) {
            (*passed)++;
            if (!quiet) printf("PASS %s:%s\n", f->path, tc->name);
        } else {
            (*failed)++;
            printf("FAIL %s:%s\n%s", f->path, tc->name, report.p ? report.p : "");
        }
        if (trace.p) printf("%s", trace.p);
        td_buf_free(&trace);
        (*res)[(*nres)++] = (result){.file = path,
                                     .name = strdup(tc->name),
                                     .passed = r == 1,
                                     .seconds = secs,
                                     .report = report.p};
    }
    return 0;
}

/* The rules files of the paths, as td_load_rules reads them (directories:
 * their *.rules in name order), so that extra rules compile with them. */
typedef struct srcset {
    td_source *v;
    char **bufs, **names;
    size_t n, cap;
} srcset;

static void tt_srcset_free(srcset *s) {
    for (size_t i = 0; i < s->n; i++) {
        free(s->bufs[i]);
        free(s->names[i]);
    }
    free(s->v);
    free(s->bufs);
    free(s->names);
}

static int tt_srcset_add(srcset *s, char *name, char *text, size_t len) {
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 16;
        td_source *v = realloc(s->v, cap * sizeof *v);
        if (v) s->v = v;
        char **b = realloc(s->bufs, cap * sizeof *b);
        if (b) s->bufs = b;
        char **nm = realloc(s->names, cap * sizeof *nm);
        if (nm) s->names = nm;
        if (!v || !b || !nm) {
            free(name);
            free(text);
            return -1;
        }
        s->cap = cap;
    }
    s->bufs[s->n] = text;
    s->names[s->n] = name;
    s->v[s->n] = (td_source){.name = name, .text = text, .len = len};
    s->n++;
    return 0;
}

static char *tt_slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    td_buf b = {0};
    char tmp[8192];
    size_t r;
    while ((r = fread(tmp, 1, sizeof tmp, f)) > 0)
        if (td_buf_append(&b, tmp, r) != TD_OK) break;
    bool bad = ferror(f) != 0;
    fclose(f);
    if (bad) {
        td_buf_free(&b);
        return NULL;
    }
    *len = b.len;
    return b.p ? b.p : strdup("");
}

static int tt_srcset_load(srcset *s, const strv *paths) {
    for (size_t i = 0; i < paths->n; i++) {
        const char *p = paths->v[i];
        struct stat sb;
        if (stat(p, &sb) != 0) return -1;
        strv files = {0};
        if (S_ISDIR(sb.st_mode)) {
            DIR *dp = opendir(p);
            if (!dp) return -1;
            struct dirent *e;
            while ((e = readdir(dp))) {
                size_t l = strlen(e->d_name);
                if (l < 7 || e->d_name[0] == '.' || strcmp(e->d_name + l - 6, ".rules") != 0)
                    continue;
                char path[4096];
                size_t dl = strlen(p);
                snprintf(path, sizeof path, "%s%s%s", p, dl && p[dl - 1] == '/' ? "" : "/",
                         e->d_name);
                tt_strv_add(&files, path);
            }
            closedir(dp);
            if (files.n) qsort(files.v, files.n, sizeof *files.v, tt_cmp_str);
        } else {
            tt_strv_add(&files, p);
        }
        for (size_t k = 0; k < files.n; k++) {
            size_t len = 0;
            char *text = tt_slurp(files.v[k], &len);
            char *name = strdup(files.v[k]);
            if (!text || !name) {
                free(text);
                free(name);
                tt_strv_free(&files);
                return -1;
            }
            if (tt_srcset_add(s, name, text, len) != 0) { /* frees name and text */
                tt_strv_free(&files);
                return -1;
            }
        }
        tt_strv_free(&files);
    }
    return 0;
}

/* The ruleset for a test file with extra rules (*ext, NULL when it has
 * none). @returns TD_OK, or TD_ERR with the problems in msg. */
static int tt_extra_ruleset(const strv *rules, const char *test_path, struct td_calendar *cal,
                            td_ruleset **ext, td_buf *msg) {
    char *text = NULL, *name = NULL;
    size_t len = 0;
    char err[512];
    *ext = NULL;
    if (tf_file_extra_rules(test_path, &text, &len, &name, err, sizeof err) != TD_OK) {
        td_buf_printf(msg, "    %s\n", err);
        return TD_ERR;
    }
    if (!text) {
        free(name);
        return TD_OK;
    }
    srcset s = {0};
    int lrc = tt_srcset_load(&s, rules);
    if (lrc != 0 || !name) {
        free(text);
        free(name);
    }
    if (lrc != 0 || !name || tt_srcset_add(&s, name, text, len) != 0) {
        tt_srcset_free(&s);
        td_buf_printf(msg, "    %s: cannot read the rules again for its extra rules\n", test_path);
        return TD_ERR;
    }
    td_diags d = {0};
    *ext = td_ruleset_compile(s.v, s.n, &d);
    if (!*ext) {
        for (size_t i = 0; i < d.n; i++) {
            if (d.v[i].severity != TD_SEV_ERROR) continue;
            char *line = td_diag_format(&d.v[i]);
            if (line) tt_indent(msg, line);
            free(line);
        }
        td_buf_printf(msg,
                      "    the extra rules of this test file do not compile with the ruleset\n");
    } else if (cal) {
        td_ruleset_set_calendar(*ext, cal);
    }
    td_diags_free(&d);
    tt_srcset_free(&s);
    return *ext ? TD_OK : TD_ERR;
}

int td_cmd_test(int argc, char **argv) {
    static const struct option opts[] = {
        {"junit", required_argument, NULL, 'j'},  {"require-coverage", no_argument, NULL, 'c'},
        {"filter", required_argument, NULL, 'k'}, {"quiet", no_argument, NULL, 'q'},
        {"verbose", no_argument, NULL, 'v'},      {"holidays", required_argument, NULL, 'H'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0}};
    const char *junit = NULL, *filter = NULL, *holidays = NULL;
    bool require_cov = false, quiet = false, verbose = false;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "k:qvH:h", opts, NULL)) != -1) {
        switch (c) {
        case 'j':
            junit = optarg;
            break;
        case 'c':
            require_cov = true;
            break;
        case 'k':
            filter = optarg;
            break;
        case 'q':
            quiet = true;
            break;
        case 'v':
            verbose = true;
            break;
        case 'H':
            holidays = optarg;
            break;
        case 'h':
            tt_usage(stdout);
            return TD_EXIT_OK;
        default:
            tt_usage(stderr);
            return TD_EXIT_USAGE;
        }
    }
    if (optind >= argc) {
        fprintf(stderr, "touchd test: give the rules directory (e.g. touchd test rules/)\n");
        tt_usage(stderr);
        return TD_EXIT_USAGE;
    }

    strv rules = {0}, tests = {0};
    int rc = TD_EXIT_OK;
    for (int i = optind; i < argc; i++) {
        struct stat sb;
        const char *a = argv[i];
        if (stat(a, &sb) != 0) {
            fprintf(stderr, "touchd test: %s: %s\n", a, strerror(errno));
            rc = TD_EXIT_USAGE;
        } else if (S_ISDIR(sb.st_mode)) {
            tt_strv_add(&rules, a);
            if (tt_add_dir_tests(&tests, a) != 0) {
                fprintf(stderr, "touchd test: cannot read directory %s: %s\n", a, strerror(errno));
                rc = TD_EXIT_USAGE;
            }
        } else if (tt_ends_with(a, ".test")) {
            tt_strv_add(&tests, a);
        } else {
            tt_strv_add(&rules, a);
        }
    }
    if (rc == TD_EXIT_OK && rules.n == 0) {
        /* only test files: the rules are the *.rules files beside them */
        for (size_t i = 0; i < tests.n; i++) {
            char *d = strdup(tests.v[i]);
            if (!d) continue;
            char *slash = strrchr(d, '/');
            if (slash) *slash = '\0';
            tt_strv_add(&rules, slash ? (d[0] ? d : "/") : ".");
            free(d);
        }
    }
    if (rc != TD_EXIT_OK) {
        tt_strv_free(&rules);
        tt_strv_free(&tests);
        return rc;
    }

    td_diags diags = {0};
    td_ruleset *rs = td_load_rules((const char *const *)rules.v, rules.n, &diags);
    td_print_diags(&diags, stderr);
    td_diags_free(&diags);
    if (!rs) {
        fprintf(stderr, "touchd test: the rules do not compile (touchd check shows the same "
                        "diagnostics); no case was run\n");
        printf("0 passed, 1 failed\n");
        tt_strv_free(&rules);
        tt_strv_free(&tests);
        return TD_EXIT_FAIL;
    }

    struct td_calendar *cal = NULL;
    const char *cal_dir = NULL;
    char cerr[320];
    if (td_sim_load_calendar(holidays, &cal, &cal_dir, cerr, sizeof cerr) != TD_OK) {
        fprintf(stderr, "touchd test: %s\n", cerr);
        td_ruleset_free(rs);
        tt_strv_free(&rules);
        tt_strv_free(&tests);
        return TD_EXIT_USAGE;
    }
    if (cal) td_ruleset_set_calendar(rs, cal);

    size_t nr = td_ruleset_count(rs);
    bool *covered = calloc(nr + 1, sizeof *covered);
    tf_file *files = calloc(tests.n + 1, sizeof *files);
    td_tzdb *tz = td_tzdb_new();
    result *res = NULL;
    size_t nres = 0, capres = 0, passed = 0, failed = 0;
    char *cov_fail = NULL;
    if (!covered || !files || !tz) {
        fprintf(stderr, "touchd test: out of memory\n");
        rc = TD_EXIT_FATAL;
        goto done;
    }
    if (tests.n == 0)
        fprintf(stderr, "touchd test: no *.test files found (write tests beside the rules: "
                        "docs/rules-testing.md)\n");

    for (size_t fi = 0; fi < tests.n; fi++) {
        tf_file *f = &files[fi];
        size_t need = nres + 2;
        if (need > capres && tt_grow_results(&res, &capres, need) != 0) {
            fprintf(stderr, "touchd test: out of memory\n");
            rc = TD_EXIT_FATAL;
            goto done;
        }
        /* a file may add rules of its own (a naive rule a guard must block) */
        td_ruleset *ext = NULL;
        td_buf xerr = {0};
        if (tt_extra_ruleset(&rules, tests.v[fi], cal, &ext, &xerr) != TD_OK) {
            f->path = strdup(tests.v[fi]);
            printf("FAIL %s\n%s", tests.v[fi], xerr.p ? xerr.p : "");
            res[nres++] = (result){.file = tests.v[fi], .passed = false, .report = xerr.p};
            failed++;
            continue;
        }
        td_buf_free(&xerr);
        const td_ruleset *frs = ext ? ext : rs;
        bool *fcov = ext ? calloc(td_ruleset_count(ext) + 1, sizeof *fcov) : covered;
        if (!fcov) {
            td_ruleset_free(ext);
            fprintf(stderr, "touchd test: out of memory\n");
            rc = TD_EXIT_FATAL;
            goto done;
        }
        int frc = tt_run_file(frs, tz, f, tests.v[fi], filter, fcov, verbose, quiet, &res, &nres,
                              &capres, &passed, &failed);
        if (ext) {
            /* coverage is of the ruleset under test: map by rule id */
            for (size_t i = 0; i < td_ruleset_count(ext); i++) {
                const td_rule *base =
                    fcov[i] ? td_ruleset_find(rs, td_ruleset_rule(ext, i)->id) : NULL;
                if (base) covered[base->index] = true;
            }
            free(fcov);
            td_ruleset_free(ext);
        }
        if (frc != 0) {
            fprintf(stderr, "touchd test: out of memory\n");
            rc = TD_EXIT_FATAL;
            goto done;
        }
    }

    /* coverage */
    {
        size_t rules_n = 0, rules_cov = 0, guards_n = 0, guards_cov = 0;
        for (size_t i = 0; i < nr; i++) {
            const td_rule *r = td_ruleset_rule(rs, i);
            if (r->guard) {
                guards_n++;
                guards_cov += covered[i];
            } else {
                rules_n++;
                rules_cov += covered[i];
            }
        }
        printf("coverage: %zu of %zu rules and %zu of %zu guards exercised\n", rules_cov, rules_n,
               guards_cov, guards_n);
        td_buf missing = {0};
        for (size_t i = 0; i < nr; i++) {
            const td_rule *r = td_ruleset_rule(rs, i);
            if (covered[i]) continue;
            printf("  not exercised: %s %s (%s:%d)\n", r->guard ? "guard" : "rule", r->id, r->file,
                   r->line);
            td_buf_printf(&missing, "%s %s (%s:%d)\n", r->guard ? "guard" : "rule", r->id, r->file,
                          r->line);
        }
        if (require_cov && missing.len) {
            printf(
                "coverage: FAILED (--require-coverage): %zu rules and %zu guards not exercised\n",
                rules_n - rules_cov, guards_n - guards_cov);
            cov_fail = missing.p;
            missing.p = NULL;
        }
        td_buf_free(&missing);
    }
    if (junit &&
        tt_write_junit(junit, res, nres, (const char *const *)tests.v, tests.n, cov_fail) != 0)
        rc = TD_EXIT_FATAL;
    if (rc == TD_EXIT_OK && (failed || cov_fail || tests.n == 0)) rc = TD_EXIT_FAIL;
    printf("%zu passed, %zu failed\n", passed, failed);

done:
    fflush(stdout);
    for (size_t i = 0; i < nres; i++) {
        free(res[i].name);
        free(res[i].report);
    }
    free(res);
    free(cov_fail);
    for (size_t i = 0; files && i < tests.n; i++)
        tf_file_free(&files[i]);
    free(files);
    free(covered);
    td_tzdb_free(tz);
    td_ruleset_free(rs);
    td_calendar_free(cal);
    tt_strv_free(&rules);
    tt_strv_free(&tests);
    return rc;
}
