/*
 * td_engine.c - the engine step (see td_engine.h for the algorithm) and the
 * recommendation's JSON form.
 *
 * The step allocates nothing on its hot path: candidates live on the stack
 * (bounded by TD_STEP_RECS_MAX), explanations are written into the caller's
 * td_step_out, and only the state's fired/timer tables may grow. Explanations
 * (`because`) are computed only for the recommendations that are published,
 * or for every rule considered when the caller asks (TD_STEP_EXPLAIN), by
 * evaluating each top-level conjunct of `when` with fact recording on.
 *
 * Recommendation ids are "r-" + the first 128 bits of
 * sha256(trigger id "\x1f" rule id), so a replay of the same input, a retry
 * after a crash, or another instance yields the same id.
 *
 * Shortcuts that change no outcome (docs/rules.md, "Performance"): a `when`
 * whose leading enum test fails is not walked (td_expr_may_hold); a guard is
 * not evaluated for a candidate whose rule it can never block
 * (td_rule_never_blocks, precomputed by the ruleset), and the rec.* string
 * tests of a guard it does evaluate are read from bits precomputed for the
 * candidate's rule (td_rule.fixed_truth); the state's fired and
 * timer tables are searched with the rules' precomputed keys (td_rule.key).
 *
 * The probe (td_engine_probe) runs the same code: eng_run is the step with a
 * td_probe pointer, always inlined, so td_engine_step (which passes NULL)
 * compiles to the step alone and the probe's records (each rule's decision,
 * not_before, the guards' blocked lists and conditions) cost it nothing. Its
 * "now" evaluation considers every rule as a timer trigger considers its
 * one, with room for a candidate per rule (the only allocation, the probe's).
 *
 * File-local functions are prefixed eng_ (eng_rj_ for the recommendation
 * JSON writer; its string escaping is td_json_str_at, in td_base).
 *
 * @locality any thread; no globals.
 */
/* SHA256_Init/Update/Final: deprecated in OpenSSL 3 but present; they reach
 * the same block function as EVP without EVP's per-call context allocation
 * and provider dispatch (see eng_rec_id). An OpenSSL built without them
 * (OPENSSL_NO_DEPRECATED_3_0) gets EVP_Digest instead: the same ids. */
#define OPENSSL_SUPPRESS_DEPRECATED
#include "td_engine.h"

#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "td_schedule.h"
#include "td_state_internal.h"
#include "td_time.h"

const char *td_outcome_name(td_outcome o) {
    switch (o) {
    case TD_OUT_FIRED:
        return "fired";
    case TD_OUT_NOT_MATCHED:
        return "not_matched";
    case TD_OUT_COOLDOWN:
        return "cooldown";
    case TD_OUT_BLOCKED:
        return "blocked";
    case TD_OUT_LOST_GROUP:
        return "lost_group";
    case TD_OUT_ARMED:
        return "armed";
    case TD_OUT_ERROR:
        return "error";
    }
    return "?";
}

/* A rule that matched and waits for guards and group resolution. */
typedef struct cand {
    const td_rule *rule;
    td_ms not_before;
    const td_rule *blocked_by;
    bool lost;
    const td_rule *winner;
} cand;

/* The decision record for rule r: the probe's entry for it when probing,
 * else the next of out->decisions when the flags ask for them, else NULL. */
static td_decision *eng_decision(td_step_out *out, unsigned flags, td_probe *p, const td_rule *r,
                                 td_outcome o) {
    td_decision *d;
    if (p) {
        p->rules[r->index].decided = true;
        d = &p->rules[r->index].d;
    } else {
        if (!(flags & (TD_STEP_EXPLAIN | TD_STEP_OUTCOMES)) ||
            out->ndecisions >= TD_STEP_DECISIONS_MAX)
            return NULL;
        d = &out->decisions[out->ndecisions++];
    }
    d->rule = r;
    d->outcome = o;
    d->by = NULL;
    d->until = TD_MS_MISSING;
    d->error[0] = '\0';
    d->nbecause = 0;
    return d;
}

/* Fills because[] with each top-level conjunct of e (a rule's `when`, a
 * guard's `block`), its value and the facts read. */
static uint32_t eng_explain(const td_expr *e, const td_ctx *base, td_because *because) {
    if (!e) return 0;
    size_t n = td_expr_conjuncts(e);
    if (n > TD_BECAUSE_MAX) n = TD_BECAUSE_MAX;
    for (size_t i = 0; i < n; i++) {
        td_because *b = &because[i];
        size_t len = 0;
        b->expr = td_expr_conjunct_source(e, i, &len);
        b->len = (uint32_t)len;
        b->facts.n = 0;
        td_ctx ctx = *base;
        ctx.facts = &b->facts;
        char err[96];
        if (td_expr_eval_conjunct(e, i, &ctx, &b->value, err, sizeof err) != TD_OK) {
            b->value.type = TD_T_BOOL;
            b->value.missing = true;
        }
    }
    return (uint32_t)n;
}

/*
 * "r-" + the first 128 bits of sha256(trigger_id "\x1f" rule_id), in hex.
 * The low-level SHA-256 calls on a stack context: no allocation, no shared
 * state (any thread), the same block function as EVP_Digest (SHA-NI where
 * the CPU has it) without EVP_Digest's per-call EVP_MD_CTX and provider
 * context (new, init, free: about 1,100 instructions, more than the block
 * itself on a SHA-NI CPU). Same digest, same ids.
 */
static void eng_rec_id(const char *trigger_id, const char *rule_id, char *out) {
    unsigned char md[SHA256_DIGEST_LENGTH];
    char buf[TD_ID_MAX + 96 + TD_RULE_ID_MAX + 2];
    size_t tl = strlen(trigger_id), rl = strlen(rule_id);
    memcpy(buf, trigger_id, tl);
    buf[tl] = '\x1f';
    memcpy(buf + tl + 1, rule_id, rl);
#ifdef OPENSSL_NO_DEPRECATED_3_0
    /* an OpenSSL built without the deprecated calls: EVP, the same digest */
    unsigned mdlen = 0;
    if (!EVP_Digest(buf, tl + 1 + rl, md, &mdlen, EVP_sha256(), NULL))
        memset(md, 0, sizeof md); /* not reached: SHA-256 is always available */
#else
    SHA256_CTX c;
    SHA256_Init(&c);
    SHA256_Update(&c, buf, tl + 1 + rl);
    SHA256_Final(md, &c);
#endif
    static const char hex[] = "0123456789abcdef";
    out[0] = 'r';
    out[1] = '-';
    for (unsigned i = 0; i < 16; i++) {
        out[2 + 2 * i] = hex[md[i] >> 4];
        out[3 + 2 * i] = hex[md[i] & 15];
    }
    out[TD_REC_ID_LEN] = '\0';
}

/* Counts an evaluation error of rule (or guard) r (its index kept for
 * metrics: td_step_out.error_rule). */
static inline void eng_error(td_step_out *out, const td_rule *r) {
    if (out->nerrors < TD_STEP_RECS_MAX) out->error_rule[out->nerrors] = (uint32_t)r->index;
    out->nerrors++;
}

/* Evaluates a rule's `when` and cooldown; on a match computes not_before and
 * appends a candidate. */
static inline __attribute__((always_inline)) void eng_consider(const td_rule *r, const td_ctx *ctx,
                                                               unsigned flags, td_step_out *out,
                                                               td_probe *p, cand *cands,
                                                               uint32_t *ncands, uint32_t capc) {
    td_value v = {.type = TD_T_BOOL, .missing = true};
    char err[120];
    if (r->when) {
        /* may_hold: a failing enum test in front (`stage == 'won' && ...`)
         * is false without the walk */
        bool may = td_expr_may_hold(r->when, ctx->st);
        if (may && td_expr_eval(r->when, ctx, &v, err, sizeof err) != TD_OK) {
            eng_error(out, r);
            td_decision *d = eng_decision(out, flags, p, r, TD_OUT_ERROR);
            if (d) snprintf(d->error, sizeof d->error, "when: %s", err);
            return;
        }
        if (!may || v.missing || !v.u.b) {
            td_decision *d = eng_decision(out, flags, p, r, TD_OUT_NOT_MATCHED);
            if (d)
                d->nbecause = (flags & TD_STEP_EXPLAIN) ? eng_explain(r->when, ctx, d->because) : 0;
            return;
        }
    }
    if (r->cooldown > 0) {
        td_ms last = td_state_fired_at_key(ctx->st, &r->key);
        if (last != TD_MS_MISSING && ctx->now - last < r->cooldown) {
            td_decision *d = eng_decision(out, flags, p, r, TD_OUT_COOLDOWN);
            if (d) {
                d->until = last + r->cooldown;
                d->nbecause = (flags & TD_STEP_EXPLAIN) ? eng_explain(r->when, ctx, d->because) : 0;
            }
            return;
        }
    }
    td_ms nb = ctx->now;
    if (r->at) {
        if (td_expr_eval(r->at, ctx, &v, err, sizeof err) != TD_OK) {
            eng_error(out, r);
            td_decision *d = eng_decision(out, flags, p, r, TD_OUT_ERROR);
            if (d) snprintf(d->error, sizeof d->error, "at: %s", err);
            return;
        }
        if (!v.missing && v.u.t > nb) nb = v.u.t;
    }
    /* business days and hours of the prospect's country and zone, or at
     * least not in quiet hours (`window = "any"`) */
    nb = td_sched_window(ctx->settings, ctx->tz, ctx->st, nb, r->window_any);
    if (*ncands >= capc) {
        eng_error(out, r);
        td_decision *d = eng_decision(out, flags, p, r, TD_OUT_ERROR);
        if (d)
            snprintf(d->error, sizeof d->error, "more than %d rules matched one trigger",
                     TD_STEP_RECS_MAX);
        return;
    }
    if (p) p->rules[r->index].not_before = nb;
    cand *c = &cands[(*ncands)++];
    c->rule = r;
    c->not_before = nb;
    c->blocked_by = NULL;
    c->lost = false;
    c->winner = NULL;
}

static bool eng_same_group(const td_rule *a, const td_rule *b) {
    if (a == b) return true;
    if (!a->group || !b->group) return false;
    return strcmp(a->group, b->group) == 0;
}

/* Guards, groups, recommendations: steps 5 to 7. */
static inline __attribute__((always_inline)) void eng_resolve(const td_ruleset *rs, td_ctx *ctx,
                                                              int trigger_type, unsigned flags,
                                                              td_step_out *out, td_probe *p,
                                                              cand *cands, uint32_t ncands) {
    size_t ng;
    const td_rule *const *guards = td_ruleset_guards(rs, &ng);
    char err[120];
    for (uint32_t i = 0; i < ncands; i++) {
        cand *c = &cands[i];
        td_rec_view view = {.channel = c->rule->channel,
                            .touch = c->rule->touch,
                            .rule = c->rule->id,
                            .group = c->rule->group ? c->rule->group : "",
                            .priority = c->rule->priority,
                            .not_before = c->not_before};
        td_ctx gctx = *ctx;
        gctx.rec = &view;
        for (size_t g = 0; g < ng && !c->blocked_by; g++) {
            const td_rule *gr = guards[g];
            if (!td_rule_guards_candidate(gr, c->rule, trigger_type)) continue;
            td_value v;
            if (gr->when) {
                if (!td_expr_may_hold(gr->when, ctx->st)) continue;
                if (td_expr_eval(gr->when, &gctx, &v, err, sizeof err) != TD_OK) {
                    eng_error(out, gr);
                    td_decision *d = eng_decision(out, flags, p, gr, TD_OUT_ERROR);
                    if (d) snprintf(d->error, sizeof d->error, "when: %s", err);
                    continue;
                }
                if (v.missing || !v.u.b) continue;
            }
            /* false without evaluation: a conjunct of the block that reads
             * only the candidate's rule and is false for it, decided when
             * the ruleset was built (td_rule_never_blocks), or a failing
             * enum test in front of it (td_expr_may_hold) */
            if (td_rule_never_blocks(gr, c->rule) || !td_expr_may_hold(gr->block, ctx->st))
                continue;
            /* its rec.* string tests, decided for this rule at load */
            view.fixed = gr->fixed_truth ? &gr->fixed_truth[c->rule->index] : NULL;
            int brc = td_expr_eval(gr->block, &gctx, &v, err, sizeof err);
            view.fixed = NULL;
            if (brc != TD_OK) {
                /* a guard that cannot decide blocks: failing safe is the point of a guard */
                eng_error(out, gr);
                c->blocked_by = gr;
                td_decision *d = eng_decision(out, flags, p, gr, TD_OUT_ERROR);
                if (d) snprintf(d->error, sizeof d->error, "block: %s (blocked to be safe)", err);
                continue;
            }
            if (!v.missing && v.u.b) c->blocked_by = gr;
        }
        if (c->blocked_by) {
            if (out->nblocked < TD_STEP_RECS_MAX) {
                out->blocked_rule[out->nblocked] = (uint32_t)c->rule->index;
                out->blocked_guard[out->nblocked] = (uint32_t)c->blocked_by->index;
            }
            out->nblocked++;
            if (p) { /* the guard's list, and its own conditions for this candidate */
                td_probe_rule *g = &p->rules[c->blocked_by->index];
                if (g->nblocked < TD_STEP_RECS_MAX) g->blocked[g->nblocked++] = c->rule;
                td_probe_rule *pr = &p->rules[c->rule->index];
                pr->ngb = eng_explain(c->blocked_by->block, &gctx, pr->gb);
            }
        }
    }
    if (p) p->ncandidates = ncands;
    /* group resolution among unblocked candidates */
    for (uint32_t i = 0; i < ncands; i++) {
        cand *c = &cands[i];
        if (c->blocked_by) continue;
        for (uint32_t j = 0; j < ncands; j++) {
            cand *o = &cands[j];
            if (j == i || o->blocked_by || !eng_same_group(c->rule, o->rule)) continue;
            bool o_wins =
                o->rule->priority > c->rule->priority ||
                (o->rule->priority == c->rule->priority && o->rule->index < c->rule->index);
            if (o_wins) {
                c->lost = true;
                if (!c->winner || o->rule->priority > c->winner->priority ||
                    (o->rule->priority == c->winner->priority && o->rule->index < c->winner->index))
                    c->winner = o->rule;
            }
        }
    }
    for (uint32_t i = 0; i < ncands; i++) {
        cand *c = &cands[i];
        if (c->blocked_by) {
            td_decision *d = eng_decision(out, flags, p, c->rule, TD_OUT_BLOCKED);
            if (d) {
                d->by = c->blocked_by;
                d->nbecause =
                    (flags & TD_STEP_EXPLAIN) ? eng_explain(c->rule->when, ctx, d->because) : 0;
            }
            continue;
        }
        if (c->lost) {
            td_decision *d = eng_decision(out, flags, p, c->rule, TD_OUT_LOST_GROUP);
            if (d) {
                d->by = c->winner;
                d->nbecause =
                    (flags & TD_STEP_EXPLAIN) ? eng_explain(c->rule->when, ctx, d->because) : 0;
            }
            continue;
        }
        if (out->nrecs >= TD_STEP_RECS_MAX) { /* only a probe's "now" has more candidates */
            td_decision *d = eng_decision(out, flags, p, c->rule, TD_OUT_FIRED);
            if (d) d->nbecause = eng_explain(c->rule->when, ctx, d->because);
            continue;
        }
        td_rec *r = &out->recs[out->nrecs++];
        eng_rec_id(out->trigger_id, c->rule->id, r->id);
        r->rule = c->rule;
        r->channel = c->rule->channel;
        r->touch = c->rule->touch;
        r->note = c->rule->note;
        r->not_before = c->not_before;
        r->priority = c->rule->priority;
        r->nbecause = eng_explain(c->rule->when, ctx, r->because);
        td_decision *d = eng_decision(out, flags, p, c->rule, TD_OUT_FIRED);
        if (d) {
            d->nbecause = r->nbecause;
            memcpy(d->because, r->because, r->nbecause * sizeof(td_because));
        }
    }
}

/* The owner.prospect_contacted event a first touch derives. Its id is the
 * touch's id + "#owner" (or a hash when that would be too long), so a
 * redelivered touch derives the same id and the owner's dedup ring drops it. */
static void eng_derive_owner_event(const td_state *st, const td_event *ev, td_event *d, bool *has) {
    memset(d, 0, sizeof *d);
    d->type = TD_EV_OWNER_PROSPECT_CONTACTED;
    d->channel = TD_CH_NONE;
    d->occurred_at = ev->occurred_at;
    d->has = TD_HAS_OWNER;
    size_t il = strlen(ev->id);
    if (il + 6 <= TD_ID_MAX) {
        memcpy(d->id, ev->id, il);
        memcpy(d->id + il, "#owner", 7);
    } else
        snprintf(d->id, sizeof d->id, "o-%016llx#owner",
                 (unsigned long long)td_hash64(ev->id, il, TD_HASH_SEED));
    snprintf(d->prospect_id, sizeof d->prospect_id, "owner:%.*s", TD_ID_MAX - 6, st->owner_id);
    td_strlcpy(d->owner_id, st->owner_id, sizeof d->owner_id);
    d->duration_s = TD_INT_MISSING;
    d->at = TD_MS_MISSING;
    d->value_eur = TD_DEC_MISSING;
    d->items = TD_INT_MISSING;
    d->tier = TD_INT_MISSING;
    d->lifetime_value_eur = TD_DEC_MISSING;
    *has = true;
}

/* ---- the plan: expiry, lateness, withdrawals (docs/recommendations.md) ---- */

/* What the event changed that withdraws: taken before it is applied, when
 * something is pending. */
typedef struct eng_snap {
    bool taken;
    td_stage stage;
    td_block_reason blocked[TD_CH__COUNT];
    td_tristate consent[TD_CH__COUNT];
} eng_snap;

static void eng_snap_take(eng_snap *s, const td_state *st) {
    s->taken = true;
    s->stage = st->stage;
    for (int c = 0; c < TD_CH__COUNT; c++) {
        s->blocked[c] = st->ch[c].blocked;
        s->consent[c] = st->ch[c].consent;
    }
}

static int eng_plan(const td_ruleset *rs, td_state *st, const td_trigger *trig, td_ms now,
                    unsigned flags, td_step_out *out, const eng_snap *snap, td_tzdb *tz);

/* The engine's now for a trigger at time t: t, or the prospect's clock when
 * t is older (time never runs backwards for a prospect); the clock moves to
 * it. */
static td_ms eng_clock(td_state *st, td_ms t) {
    if (st->clock != TD_MS_MISSING && t < st->clock) return st->clock;
    st->clock = t;
    return t;
}

/* Which rules and guards a trigger puts before the engine (type: an event
 * type, -1 a timer's or a "now"; rule: the timer's rule, NULL for all). */
static void eng_probe_triggered(td_probe *p, int type, const td_rule *rule) {
    for (size_t i = 0; i < p->nrules; i++) {
        td_probe_rule *pr = &p->rules[i];
        const td_rule *r = pr->rule;
        pr->triggered = r->guard    ? td_rule_guards_trigger(r, type)
                        : type >= 0 ? (r->on & (1ULL << type)) != 0
                                    : !rule || rule == r;
    }
}

/*
 * The step, and the probe: p is NULL for td_engine_step (the calls below
 * fold it away, so the step pays nothing for the probe), else every
 * decision goes to p's entry of its rule. trig is NULL only when probing:
 * the "now" evaluation, every rule considered as a timer trigger considers
 * its one rule, and the state left as it is. cands has room for capc.
 */
static inline __attribute__((always_inline)) int
eng_run(const td_ruleset *rs, td_state *st, const td_trigger *trig, td_ms now, td_tzdb *tz,
        unsigned flags, td_step_out *out, td_probe *p, cand *cands, uint32_t capc) {
    out->duplicate = false;
    out->rejected = false;
    out->stale = false;
    out->has_derived = false;
    out->nrecs = 0;
    out->narms = 0;
    out->ndecisions = 0;
    out->nblocked = 0;
    out->nerrors = 0;
    out->nwds = 0;
    out->nlate = 0;
    out->plan_changed = false;
    out->text.len = 0;
    out->trigger_id[0] = '\0';

    td_ctx ctx = {.st = st,
                  .ev = NULL,
                  .now = now,
                  .rec = NULL,
                  .tz = tz,
                  .settings = td_ruleset_settings(rs),
                  .facts = NULL};
    uint32_t ncands = 0;
    eng_snap snap = {.taken = false};

    if (p && !trig) {
        memcpy(out->trigger_id, "now", 4);
        eng_probe_triggered(p, -1, NULL);
        size_t n = td_ruleset_count(rs);
        for (size_t i = 0; i < n; i++) {
            const td_rule *r = td_ruleset_rule(rs, i);
            if (!r->guard) eng_consider(r, &ctx, flags, out, p, cands, &ncands, capc);
        }
        eng_resolve(rs, &ctx, -1, flags, out, p, cands, ncands);
        return TD_OK;
    }
    if (trig->kind == TD_TRIG_EVENT) {
        const td_event *ev = trig->ev;
        td_strlcpy(out->trigger_id, ev->id, sizeof out->trigger_id);
        uint64_t fp = td_state_fingerprint(ev->id);
        if (td_state_seen_fp(st, fp)) {
            out->duplicate = true;
            return TD_OK;
        }
        if (td_event_is_feedback(ev->type) && td_state_plan_find(st, ev->recommendation_id) < 0 &&
            !td_state_rec_seen(st, ev->recommendation_id)) {
            out->rejected = true;
            snprintf(out->reject_field, sizeof out->reject_field, "%s", "data.recommendation_id");
            snprintf(out->reject_reason, sizeof out->reject_reason, "%s",
                     "is not a recommendation touchd published for this prospect (unknown, of "
                     "another prospect, or older than its last 32)");
            return TD_OK;
        }
        if (!st->prospect_id[0])
            td_strlcpy(st->prospect_id, ev->prospect_id, sizeof st->prospect_id);
        now = ctx.now = eng_clock(st, ev->occurred_at);
        bool untouched = st->first_touch_at == TD_MS_MISSING;
        if (st->nplan) eng_snap_take(&snap, st);
        if (td_state_apply(st, ev, tz, ctx.settings) != TD_OK) return TD_ERR;
        if (td_state_remember_at(st, fp, now, trig->dedup_window) != TD_OK) return TD_ERR;
        if (untouched && st->first_touch_at != TD_MS_MISSING && st->owner_id[0] &&
            ev->type != TD_EV_OWNER_PROSPECT_CONTACTED)
            eng_derive_owner_event(st, ev, &out->derived, &out->has_derived);
        ctx.ev = ev;
        if (p) eng_probe_triggered(p, (int)ev->type, NULL);

        size_t n;
        const td_rule *const *rules = td_ruleset_for_event(rs, ev->type, &n);
        /* the event's id in the state's armed_by pool, held while it arms
         * its timers (looked up once, not per timer) */
        uint32_t held = UINT32_MAX;
        for (size_t i = 0; i < n; i++) {
            const td_rule *r = rules[i];
            if (r->after > 0) {
                td_ms due = r->after_business_days > 0
                                ? td_sched_add_business_days(
                                      ctx.settings, tz, td_sched_zone(st, ctx.settings),
                                      st->country, ev->occurred_at, r->after_business_days)
                                : ev->occurred_at + r->after;
                if (held == UINT32_MAX &&
                    td_state_armed_hold(st, ev->id, strlen(ev->id), &held) != TD_OK)
                    return TD_ERR;
                if (td_state_arm_timer_slot(st, &r->key, due, held) != TD_OK) {
                    td_state_armed_drop(st, held);
                    return TD_ERR;
                }
                if (out->narms < TD_STEP_RECS_MAX) {
                    out->arms[out->narms].rule = r;
                    out->arms[out->narms].rule_id = r->id;
                    out->arms[out->narms].armed_by = ev->id;
                    out->arms[out->narms].due_at = due;
                    out->narms++;
                }
                td_decision *d = eng_decision(out, flags, p, r, TD_OUT_ARMED);
                if (d) d->until = due;
                continue;
            }
            eng_consider(r, &ctx, flags, out, p, cands, &ncands, capc);
        }
        if (held != UINT32_MAX) td_state_armed_drop(st, held);
        eng_resolve(rs, &ctx, (int)ev->type, flags, out, p, cands, ncands);
    } else {
        td_rule_key tk = td_rule_key_make(trig->rule ? trig->rule : "");
        const td_rule *r = trig->rule ? td_ruleset_find_key(rs, &tk) : NULL;
        const td_timer *t = trig->rule ? td_state_timer_key(st, &tk) : NULL;
        /* "timer:<rule>:<armed_by>:<due ms>", built by hand (a hot path) */
        const char *parts[2] = {trig->rule ? trig->rule : "", trig->armed_by ? trig->armed_by : ""};
        size_t n = 6;
        memcpy(out->trigger_id, "timer:", 6);
        for (int k = 0; k < 2; k++) {
            size_t l = strlen(parts[k]);
            if (l > TD_ID_MAX) l = TD_ID_MAX;
            memcpy(out->trigger_id + n, parts[k], l);
            n += l;
            out->trigger_id[n++] = ':';
        }
        char digits[24];
        size_t nd = 0;
        uint64_t v =
            trig->due_at < 0 ? (uint64_t)0 - (uint64_t)trig->due_at : (uint64_t)trig->due_at;
        do {
            digits[nd++] = (char)('0' + v % 10);
            v /= 10;
        } while (v);
        if (trig->due_at < 0) out->trigger_id[n++] = '-';
        while (nd)
            out->trigger_id[n++] = digits[--nd];
        out->trigger_id[n] = '\0';
        if (!t || t->due_at != trig->due_at || !trig->armed_by ||
            strcmp(t->armed_by, trig->armed_by) != 0) {
            out->stale = true;
            return TD_OK;
        }
        td_state_disarm_timer_key(st, &tk);
        now = ctx.now = eng_clock(st, trig->due_at);
        if (strcmp(trig->rule, TD_PLAN_TIMER) == 0) /* expiries, and snoozed ones back */
            return eng_plan(rs, st, trig, now, flags, out, &snap, tz);
        if (!r || r->guard || r->after <= 0) {
            /* the rule was removed or changed since the timer was armed */
            out->stale = true;
            return TD_OK;
        }
        if (p) eng_probe_triggered(p, -1, r);
        eng_consider(r, &ctx, flags, out, p, cands, &ncands, capc);
        eng_resolve(rs, &ctx, -1, flags, out, p, cands, ncands);
    }
    for (uint32_t i = 0; i < out->nrecs; i++)
        if (td_state_set_fired_key(st, &out->recs[i].rule->key, now) != TD_OK) return TD_ERR;
    return eng_plan(rs, st, trig, now, flags, out, &snap, tz);
}

int td_engine_step(const td_ruleset *rs, td_state *st, const td_trigger *trig, td_ms now,
                   td_tzdb *tz, unsigned flags, td_step_out *out) {
    cand cands[TD_STEP_RECS_MAX];
    return eng_run(rs, st, trig, now, tz, flags, out, NULL, cands, TD_STEP_RECS_MAX);
}

int td_engine_probe(const td_ruleset *rs, td_state *st, const td_trigger *trig, td_ms now,
                    td_tzdb *tz, td_probe *p, td_step_out *out) {
    size_t nr = td_ruleset_count(rs);
    if (p->nrules != nr) return TD_ERR;
    for (size_t i = 0; i < nr; i++) {
        td_probe_rule *pr = &p->rules[i];
        memset(pr, 0, sizeof *pr);
        pr->rule = td_ruleset_rule(rs, i);
        pr->not_before = TD_MS_MISSING;
        pr->d.until = TD_MS_MISSING;
    }
    p->ncandidates = 0;
    /* a "now" may have a candidate per rule; a trigger, as many as a step */
    uint32_t capc = trig || nr < TD_STEP_RECS_MAX ? TD_STEP_RECS_MAX : (uint32_t)nr;
    cand *cands = malloc(capc * sizeof *cands);
    if (!cands) return TD_ERR;
    int rc = eng_run(rs, st, trig, now, tz, TD_STEP_EXPLAIN, out, p, cands, capc);
    free(cands);
    return rc;
}

/* ---- recommendation JSON ----
 *
 * Written straight into the buffer: each piece reserves what it can take at
 * most (a string 6 * n + 2 escaped, a value 256, a time 2 + TD_TIME_BUF),
 * keys are literals with their quotes, comma and colon (one copy each), and
 * the NUL is written once at the end. The bytes are those of the plain
 * key-by-key writer this replaced (tests/unit/test_rec_json.c holds it as
 * the reference). */

/* Room for n more bytes and a NUL (td_buf_reserve's contract, inline). */
static inline int eng_rj_room(td_buf *b, size_t n) {
    return b->len + n + 1 <= b->cap ? TD_OK : td_buf_reserve(b, n);
}

/* A literal, e.g. RJ_LIT(b, ",\"key\":"): one copy of a known length. */
#define RJ_LIT(b, lit) eng_rj_raw((b), (lit), sizeof(lit) - 1)
static inline int eng_rj_raw(td_buf *b, const char *s, size_t n) {
    if (eng_rj_room(b, n) != TD_OK) return TD_ERR;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    return TD_OK;
}

/* A literal key (with its punctuation) and a string value of n bytes. */
#define RJ_STR(b, lit, s, n) eng_rj_str((b), (lit), sizeof(lit) - 1, (s), (n))
static inline int eng_rj_str(td_buf *b, const char *lit, size_t ll, const char *s, size_t n) {
    if (n > (SIZE_MAX - 3) / 6 - ll || eng_rj_room(b, ll + 6 * n + 2) != TD_OK) return TD_ERR;
    char *o = b->p + b->len;
    memcpy(o, lit, ll);
    o = td_json_str_at(o + ll, s, n);
    b->len = (size_t)(o - b->p);
    return TD_OK;
}

/* A literal key and a time, quoted: td_time_format writes digits, '-', ':',
 * 'T', '.' and 'Z' only, nothing to escape. */
#define RJ_TIME(b, lit, t) eng_rj_time((b), (lit), sizeof(lit) - 1, (t))
static inline int eng_rj_time(td_buf *b, const char *lit, size_t ll, td_ms t) {
    if (eng_rj_room(b, ll + 2 + TD_TIME_BUF) != TD_OK) return TD_ERR;
    char *o = b->p + b->len;
    memcpy(o, lit, ll);
    o += ll;
    *o++ = '"';
    o += td_time_format(t, o, TD_TIME_BUF);
    *o++ = '"';
    b->len = (size_t)(o - b->p);
    return TD_OK;
}

/* A value, as td_value_json writes it into a 256-byte buffer (long strings
 * are cut at 255 bytes, as they always were). */
static inline int eng_rj_value(td_buf *b, const td_value *v) {
    if (eng_rj_room(b, 256) != TD_OK) return TD_ERR;
    b->len += td_value_json(v, b->p + b->len, 256);
    return TD_OK;
}

/* A fact's key: [","] + the field name quoted + ":". */
static inline int eng_rj_fact_key(td_buf *b, const char *name, bool first) {
    size_t n = strlen(name);
    if (n > (SIZE_MAX - 5) / 6 || eng_rj_room(b, 6 * n + 4) != TD_OK) return TD_ERR;
    char *o = b->p + b->len;
    if (!first) *o++ = ',';
    o = td_json_str_at(o, name, n);
    *o++ = ':';
    b->len = (size_t)(o - b->p);
    return TD_OK;
}

/* ,"trigger":{...}: the event (type, event_id) or the timer (rule,
 * armed_by, due_at), and the trigger's time (occurred_at). */
static int eng_trigger_json(td_buf *b, const td_trigger *trig, td_ms now) {
    (void)now;
    if (trig->kind == TD_TRIG_EVENT) {
        const char *tn = td_event_type_name(trig->ev->type);
        if (RJ_STR(b, ",\"trigger\":{\"type\":", tn, strlen(tn)) != TD_OK ||
            RJ_STR(b, ",\"event_id\":", trig->ev->id, strlen(trig->ev->id)) != TD_OK ||
            RJ_TIME(b, ",\"occurred_at\":", trig->ev->occurred_at) != TD_OK)
            return TD_ERR;
    } else {
        if (RJ_LIT(b, ",\"trigger\":{\"type\":\"timer\"") != TD_OK ||
            RJ_STR(b, ",\"rule\":", trig->rule, strlen(trig->rule)) != TD_OK ||
            RJ_STR(b, ",\"armed_by\":", trig->armed_by, strlen(trig->armed_by)) != TD_OK ||
            RJ_TIME(b, ",\"due_at\":", trig->due_at) != TD_OK ||
            RJ_TIME(b, ",\"occurred_at\":", trig->due_at) != TD_OK)
            return TD_ERR;
    }
    return RJ_LIT(b, "}");
}

/* The conditions of an explanation, comma separated (no brackets). */
static int eng_because_json(td_buf *b, const td_because *because, uint32_t n) {
    for (uint32_t i = 0; i < n; i++) {
        const td_because *bc = &because[i];
        int rc = i ? RJ_STR(b, ",{\"expr\":", bc->expr, bc->len)
                   : RJ_STR(b, "{\"expr\":", bc->expr, bc->len);
        if (rc != TD_OK || RJ_LIT(b, ",\"value\":") != TD_OK ||
            eng_rj_value(b, &bc->value) != TD_OK || RJ_LIT(b, ",\"facts\":{") != TD_OK)
            return TD_ERR;
        for (uint32_t f = 0; f < bc->facts.n; f++) {
            const td_fact *fa = &bc->facts.v[f];
            if (eng_rj_fact_key(b, fa->field->name, f == 0) != TD_OK ||
                eng_rj_value(b, &fa->value) != TD_OK)
                return TD_ERR;
        }
        if (RJ_LIT(b, "}}") != TD_OK) return TD_ERR;
    }
    return TD_OK;
}

/* A recommendation as published, but for generated_at. */
static int eng_rec_body(const td_rec *r, const td_state *st, const td_ruleset *rs,
                        const td_trigger *trig, td_ms now, td_buf *b) {
    if (RJ_LIT(b, "{\"kind\":\"recommendation\"") != TD_OK ||
        RJ_STR(b, ",\"id\":", r->id, strlen(r->id)) != TD_OK ||
        RJ_STR(b, ",\"prospect_id\":", st->prospect_id, strlen(st->prospect_id)) != TD_OK)
        return TD_ERR;
    if (st->owner_id[0] && RJ_STR(b, ",\"owner_id\":", st->owner_id, strlen(st->owner_id)) != TD_OK)
        return TD_ERR;
    const char *ch = td_channel_name(r->channel);
    if ((td_rule_owner_audience(r->rule) ? RJ_LIT(b, ",\"audience\":\"owner\"")
                                         : RJ_LIT(b, ",\"audience\":\"prospect\"")) != TD_OK ||
        RJ_STR(b, ",\"rule\":", r->rule->id, strlen(r->rule->id)) != TD_OK)
        return TD_ERR;
    if (r->rule->group && RJ_STR(b, ",\"group\":", r->rule->group, strlen(r->rule->group)) != TD_OK)
        return TD_ERR;
    if (r->rule->intent &&
        RJ_STR(b, ",\"intent\":", r->rule->intent, strlen(r->rule->intent)) != TD_OK)
        return TD_ERR;
    if (RJ_STR(b, ",\"channel\":", ch, strlen(ch)) != TD_OK ||
        RJ_STR(b, ",\"touch\":", r->touch, strlen(r->touch)) != TD_OK ||
        RJ_TIME(b, ",\"not_before\":", r->not_before) != TD_OK ||
        RJ_TIME(b, ",\"expires_at\":", r->expires_at) != TD_OK ||
        RJ_LIT(b, ",\"priority\":") != TD_OK || eng_rj_room(b, 24) != TD_OK)
        return TD_ERR;
    b->len += td_fmt_i64(r->priority, b->p + b->len);
    if (r->note && RJ_STR(b, ",\"note\":", r->note, strlen(r->note)) != TD_OK) return TD_ERR;
    if (r->late && RJ_LIT(b, ",\"late\":true") != TD_OK) return TD_ERR;
    if (eng_trigger_json(b, trig, now) != TD_OK || RJ_LIT(b, ",\"because\":[") != TD_OK ||
        eng_because_json(b, r->because, r->nbecause) != TD_OK)
        return TD_ERR;
    const char *hash = td_ruleset_hash(rs);
    if (RJ_STR(b, "],\"ruleset\":", hash, strlen(hash)) != TD_OK || RJ_LIT(b, "}") != TD_OK)
        return TD_ERR;
    return TD_OK;
}

static int eng_body_json(const char *body, size_t len, td_ms generated_at, td_buf *b) {
    if (len < 2 || body[len - 1] != '}') return TD_ERR;
    if (eng_rj_raw(b, body, len - 1) != TD_OK ||
        RJ_TIME(b, ",\"generated_at\":", generated_at) != TD_OK || RJ_LIT(b, "}") != TD_OK)
        return TD_ERR;
    return TD_OK;
}

int td_body_json(const char *body, size_t len, td_ms generated_at, td_buf *b) {
    size_t start = b->len;
    int rc = eng_body_json(body, len, generated_at, b);
    if (rc != TD_OK) b->len = start;
    if (b->p) b->p[b->len] = '\0';
    return rc;
}

int td_rec_json(const td_rec *r, const td_state *st, const td_ruleset *rs, const td_trigger *trig,
                td_ms generated_at, td_buf *b) {
    if (r->body) return td_body_json(r->body, r->body_len, generated_at, b);
    size_t start = b->len;
    td_buf body = {0};
    td_rec x = *r;
    if (x.expires_at == 0) x.expires_at = td_sat_add(x.not_before, td_rule_expires(rs, x.rule));
    int rc = eng_rec_body(&x, st, rs, trig, st->clock, &body);
    if (rc == TD_OK) rc = eng_body_json(body.p, body.len, generated_at, b);
    td_buf_free(&body);
    if (rc != TD_OK) b->len = start; /* out of memory: nothing appended */
    if (b->p) b->p[b->len] = '\0';
    return rc;
}

int td_plan_json(const td_state *st, const td_ruleset *rs, td_buf *b) {
    size_t start = b->len;
    const char *hash = td_ruleset_hash(rs);
    int rc = RJ_STR(b, "{\"prospect_id\":", st->prospect_id, strlen(st->prospect_id)) == TD_OK &&
                     RJ_LIT(b, ",\"version\":") == TD_OK && eng_rj_room(b, 24) == TD_OK
                 ? TD_OK
                 : TD_ERR;
    if (rc == TD_OK) {
        b->len += td_fmt_i64(st->plan_version, b->p + b->len);
        rc = RJ_TIME(b, ",\"updated_at\":", st->clock) == TD_OK &&
                     RJ_STR(b, ",\"ruleset\":", hash, strlen(hash)) == TD_OK &&
                     RJ_LIT(b, ",\"pending\":[") == TD_OK
                 ? TD_OK
                 : TD_ERR;
    }
    bool first = true;
    for (uint32_t i = 0; rc == TD_OK && i < st->nplan; i++) {
        const td_pending *e = &st->plan[i];
        if (e->snoozed_until && e->snoozed_until > st->clock) continue; /* not yet back */
        if ((!first && RJ_LIT(b, ",") != TD_OK) || eng_rj_raw(b, e->json, e->len) != TD_OK)
            rc = TD_ERR;
        first = false;
    }
    if (rc == TD_OK) rc = RJ_LIT(b, "]}");
    if (rc != TD_OK) b->len = start;
    if (b->p) b->p[b->len] = '\0';
    return rc;
}

const char *td_wd_reason_name(td_wd_reason r) {
    static const char *const n[] = {"replied", "opted_out", "bounced", "superseded",
                                    "stage",   "rule",      "expired"};
    return (unsigned)r < sizeof n / sizeof n[0] ? n[r] : "?";
}

static bool eng_gift_touch(const char *touch) {
    return strcmp(touch, "physical_gift") == 0 || strcmp(touch, "handwritten_card") == 0 ||
           strcmp(touch, "service_gift") == 0 || strcmp(touch, "charity_donation") == 0;
}

static bool eng_is_gift(td_channel ch, const char *touch, const char *intent) {
    return ch == TD_CH_GIFT || (intent && strcmp(intent, "gift") == 0) || eng_gift_touch(touch);
}

/* An answer to the prospect (intent reply, touch human_reply), and a stop
 * (intent stop, touch stop_sequence): a reply does not end them. */
static bool eng_is_answer(const char *touch, const char *intent) {
    return (intent && strcmp(intent, "reply") == 0) || strcmp(touch, "human_reply") == 0;
}
static bool eng_is_stop(const char *touch, const char *intent) {
    return (intent && strcmp(intent, "stop") == 0) || strcmp(touch, "stop_sequence") == 0;
}

/* A touch of the sequence: what a reply or a won/lost stage ends (every
 * prospect touch but gifts, answers and stops). */
static bool eng_sequence(const td_pending *e) {
    return !e->owner && !eng_is_gift(e->channel, e->touch, e->intent) &&
           !eng_is_answer(e->touch, e->intent) && !eng_is_stop(e->touch, e->intent);
}

size_t td_plan_withdrawn_on(const td_pending *e, td_wd_reason *v) {
    size_t n = 0;
    bool seq = eng_sequence(e);
    v[n++] = TD_WDR_EXPIRED;
    if (seq) v[n++] = TD_WDR_REPLIED;
    if (!e->owner) {
        v[n++] = TD_WDR_OPTED_OUT;
        v[n++] = TD_WDR_BOUNCED;
    }
    if (seq) v[n++] = TD_WDR_STAGE;
    v[n++] = TD_WDR_SUPERSEDED;
    v[n++] = TD_WDR_RULE;
    return n;
}

/* The gift cadence's count: gift touches recommended in the prospect's
 * local year of now and not dismissed. */
static void eng_gift_recommended(const td_ruleset *rs, td_state *st, td_ms now, td_tzdb *tz,
                                 int delta) {
    td_civil c;
    td_state_local(st, tz, td_ruleset_settings(rs), now, &c);
    if (c.year > st->gift_rec_year) {
        st->gift_rec_year = c.year;
        st->gift_recs_year = 0;
    }
    if (c.year != st->gift_rec_year) return;
    if (delta > 0 && st->gift_recs_year < INT64_MAX) st->gift_recs_year++;
    if (delta < 0 && st->gift_recs_year > 0) st->gift_recs_year--;
}

/* Feedback (recommendation.*, already checked known by the step): acted and
 * dismissed take the recommendation out of the plan (dismissed gifts leave
 * the cadence's count), snoozed keeps it out of the published plan until
 * `until`. Then, on any trigger, snoozed ones whose time came are back. */
static int eng_feedback(const td_ruleset *rs, td_state *st, const td_trigger *trig, td_ms now,
                        td_tzdb *tz, bool *changed) {
    const td_event *ev = trig->kind == TD_TRIG_EVENT ? trig->ev : NULL;
    if (ev && td_event_is_feedback(ev->type)) {
        int at = td_state_plan_find(st, ev->recommendation_id);
        uint64_t fp = td_state_rec_seen(st, ev->recommendation_id);
        if (ev->type == TD_EV_RECOMMENDATION_DISMISSED &&
            ((at >= 0 &&
              eng_is_gift(st->plan[at].channel, st->plan[at].touch, st->plan[at].intent)) ||
             (at < 0 && (fp & 1))))
            eng_gift_recommended(rs, st, now, tz, -1);
        if (at >= 0 && ev->type == TD_EV_RECOMMENDATION_SNOOZED && ev->until > now) {
            st->plan[at].snoozed_until = ev->until;
            *changed = true;
        } else if (at >= 0 && ev->type != TD_EV_RECOMMENDATION_SNOOZED) {
            td_state_plan_remove(st, (uint32_t)at);
            *changed = true;
        }
    }
    for (uint32_t i = 0; i < st->nplan; i++)
        if (st->plan[i].snoozed_until && st->plan[i].snoozed_until <= now) {
            st->plan[i].snoozed_until = 0;
            *changed = true;
        }
    return TD_OK;
}

/* The plan's timer: due when the first pending recommendation expires or
 * the first snoozed one comes back, armed by the trigger's event (or the
 * timer's own armed_by); none with an empty plan. */
static int eng_snooze_arm(td_state *st, const td_trigger *trig, td_step_out *out) {
    td_ms due = 0;
    for (uint32_t i = 0; i < st->nplan; i++) {
        const td_pending *e = &st->plan[i];
        if (e->snoozed_until && (!due || e->snoozed_until < due)) due = e->snoozed_until;
        if (!due || e->expires_at < due) due = e->expires_at;
    }
    const td_timer *t = td_state_timer(st, TD_PLAN_TIMER);
    if (!due) {
        if (t) td_state_disarm_timer(st, TD_PLAN_TIMER);
        return TD_OK;
    }
    if (t && t->due_at == due) return TD_OK;
    const char *by = trig->kind == TD_TRIG_EVENT ? trig->ev->id : trig->armed_by;
    if (!by) by = "";
    if (out->narms < TD_STEP_RECS_MAX)
        out->arms[out->narms++] =
            (td_arm){.rule = NULL, .rule_id = TD_PLAN_TIMER, .armed_by = by, .due_at = due};
    return td_state_arm_timer(st, TD_PLAN_TIMER, due, by);
}

static bool eng_is_reply(const td_event *ev) {
    switch (ev->type) {
    case TD_EV_EMAIL_REPLIED:
    case TD_EV_WHATSAPP_REPLIED:
    case TD_EV_SMS_REPLIED:
    case TD_EV_LINKEDIN_REPLIED:
        return ev->sentiment != TD_SENT_OUT_OF_OFFICE;
    default:
        return false;
    }
}

/* Whether pending e is in the group of the rule r fires for (its group, or
 * the rule alone when it has none). */
static bool eng_pending_same_group(const td_pending *e, const td_rule *r) {
    if (r->group) return strcmp(e->group, r->group) == 0;
    return !e->group[0] && strcmp(e->rule, r->id) == 0;
}

static bool eng_pending_withdrawn_by(const td_pending *e, const td_rule *r) {
    for (uint32_t k = 0; k < r->nwithdraws; k++) {
        const td_withdraw *w = &r->withdraws[k];
        if (w->kind == TD_WD_INTENT
                ? strcmp(e->intent, w->name) == 0
                : strcmp(e->rule, w->name) == 0 || (e->group[0] && strcmp(e->group, w->name) == 0))
            return true;
    }
    return false;
}

static int eng_trigger_json(td_buf *b, const td_trigger *trig, td_ms now);
static int eng_because_json(td_buf *b, const td_because *bc, uint32_t n);
static int eng_rec_body(const td_rec *r, const td_state *st, const td_ruleset *rs,
                        const td_trigger *trig, td_ms now, td_buf *b);

/* One built-in reason's explanation: [{"expr": ..., "value": ..., "facts":
 * {k: v}}], the values already JSON. */
static int eng_wd_because(td_buf *b, const char *expr, const char *value, const char *k1,
                          const char *v1, const char *k2, const char *v2) {
    if (RJ_STR(b, "[{\"expr\":", expr, strlen(expr)) != TD_OK ||
        RJ_LIT(b, ",\"value\":") != TD_OK || eng_rj_raw(b, value, strlen(value)) != TD_OK ||
        RJ_LIT(b, ",\"facts\":{") != TD_OK)
        return TD_ERR;
    if (k1 && (eng_rj_fact_key(b, k1, true) != TD_OK || eng_rj_raw(b, v1, strlen(v1)) != TD_OK))
        return TD_ERR;
    if (k2 && (eng_rj_fact_key(b, k2, false) != TD_OK || eng_rj_raw(b, v2, strlen(v2)) != TD_OK))
        return TD_ERR;
    return RJ_LIT(b, "}}]");
}

/* The body of withdrawal w of pending e. */
static int eng_wd_body(const td_wd *w, const td_pending *e, const td_state *st,
                       const td_ruleset *rs, const td_trigger *trig, td_ms now, td_buf *b) {
    const char *reason = td_wd_reason_name(w->reason), *ch = td_channel_name(e->channel);
    if (RJ_LIT(b, "{\"kind\":\"withdrawal\"") != TD_OK ||
        RJ_STR(b, ",\"id\":", w->id, strlen(w->id)) != TD_OK ||
        RJ_STR(b, ",\"withdraws\":", e->id, strlen(e->id)) != TD_OK ||
        RJ_STR(b, ",\"prospect_id\":", st->prospect_id, strlen(st->prospect_id)) != TD_OK)
        return TD_ERR;
    if (st->owner_id[0] && RJ_STR(b, ",\"owner_id\":", st->owner_id, strlen(st->owner_id)) != TD_OK)
        return TD_ERR;
    if ((e->owner ? RJ_LIT(b, ",\"audience\":\"owner\"")
                  : RJ_LIT(b, ",\"audience\":\"prospect\"")) != TD_OK ||
        RJ_STR(b, ",\"rule\":", e->rule, strlen(e->rule)) != TD_OK ||
        RJ_STR(b, ",\"channel\":", ch, strlen(ch)) != TD_OK ||
        RJ_STR(b, ",\"touch\":", e->touch, strlen(e->touch)) != TD_OK ||
        RJ_STR(b, ",\"reason\":", reason, strlen(reason)) != TD_OK ||
        eng_trigger_json(b, trig, now) != TD_OK || RJ_LIT(b, ",\"because\":") != TD_OK)
        return TD_ERR;
    int rc = TD_OK;
    char v1[64], v2[64];
    switch (w->reason) {
    case TD_WDR_SUPERSEDED:
    case TD_WDR_RULE:
        rc =
            RJ_LIT(b, "[") == TD_OK && eng_because_json(b, w->by->because, w->by->nbecause) == TD_OK
                ? RJ_LIT(b, "]")
                : TD_ERR;
        break;
    case TD_WDR_REPLIED: {
        const char *tn = td_event_type_name(trig->ev->type);
        const char *sn = td_sentiment_name(trig->ev->sentiment);
        snprintf(v1, sizeof v1, "\"%s\"", tn);
        snprintf(v2, sizeof v2, "\"%s\"", *sn ? sn : "none");
        rc = eng_wd_because(b, "a reply, not out_of_office", "true", "event.type", v1,
                            "event.sentiment", v2);
        break;
    }
    case TD_WDR_OPTED_OUT:
    case TD_WDR_BOUNCED: {
        char k1[48], k2[48];
        const td_chan_state *cs = &st->ch[e->channel];
        snprintf(k1, sizeof k1, "%s.blocked", ch);
        snprintf(k2, sizeof k2, "%s.consent", ch);
        const char *bn = td_block_reason_name(cs->blocked);
        snprintf(v1, sizeof v1, *bn ? "\"%s\"" : "null", bn);
        snprintf(v2, sizeof v2, "%s",
                 cs->consent == TD_TRI_NO    ? "false"
                 : cs->consent == TD_TRI_YES ? "true"
                                             : "null");
        rc = eng_wd_because(b, "its channel is blocked or without consent", "true", k1, v1, k2, v2);
        break;
    }
    case TD_WDR_STAGE:
        snprintf(v1, sizeof v1, "\"%s\"", td_stage_name(st->stage));
        rc = eng_wd_because(b, "stage in ['won', 'lost']", "true", "stage", v1, NULL, NULL);
        break;
    case TD_WDR_EXPIRED:
        v1[0] = '"';
        td_time_format(e->expires_at, v1 + 1, sizeof v1 - 2);
        strcat(v1, "\"");
        rc = eng_wd_because(b, "now >= expires_at", "true", "expires_at", v1, NULL, NULL);
        break;
    }
    if (rc != TD_OK) return TD_ERR;
    const char *hash = td_ruleset_hash(rs);
    if (RJ_STR(b, ",\"ruleset\":", hash, strlen(hash)) != TD_OK || RJ_LIT(b, "}") != TD_OK)
        return TD_ERR;
    return TD_OK;
}

/* Appends withdrawal of plan entry i for `reason` (by: the causing
 * recommendation, or NULL) to out, with its body. */
static int eng_withdraw_entry(const td_ruleset *rs, const td_state *st, const td_trigger *trig,
                              td_ms now, td_step_out *out, const td_pending *e, td_wd_reason reason,
                              const td_rec *by, uint32_t *offs) {
    td_wd *w = &out->wds[out->nwds];
    eng_rec_id(out->trigger_id, e->id, w->id);
    w->id[0] = 'w';
    memcpy(w->withdraws, e->id, sizeof w->withdraws);
    td_strlcpy(w->rule, e->rule, sizeof w->rule);
    w->reason = reason;
    w->by = by;
    offs[out->nwds] = (uint32_t)out->text.len;
    if (eng_wd_body(w, e, st, rs, trig, now, &out->text) != TD_OK) return TD_ERR;
    w->body_len = (uint32_t)(out->text.len - offs[out->nwds]);
    out->nwds++;
    return TD_OK;
}

static int eng_withdraw(const td_ruleset *rs, const td_state *st, const td_trigger *trig, td_ms now,
                        td_step_out *out, uint32_t i, td_wd_reason reason, const td_rec *by,
                        uint32_t *offs) {
    return eng_withdraw_entry(rs, st, trig, now, out, &st->plan[i], reason, by, offs);
}

/*
 * After a step that was not a duplicate or stale: renders the step's
 * recommendations (expires_at, late), withdraws what the trigger made
 * obsolete, and puts the new recommendations in the plan. A pending
 * recommendation is withdrawn once, for the first reason that applies, in
 * the order: expired, replied, opted_out or bounced (its channel), stage,
 * superseded (a recommendation of this step in its group), rule (a `withdraws`
 * of a rule that fired). Recommendations of this step never withdraw each other.
 */
static int eng_plan(const td_ruleset *rs, td_state *st, const td_trigger *trig, td_ms now,
                    unsigned flags, td_step_out *out, const eng_snap *snap, td_tzdb *tz) {
    if (!trig) return TD_OK;
    bool fb_changed = false;
    if (eng_feedback(rs, st, trig, now, tz, &fb_changed) != TD_OK) return TD_ERR;
    uint32_t roff[TD_STEP_RECS_MAX], woff[TD_PLAN_MAX];
    for (uint32_t i = 0; i < out->nrecs; i++) {
        td_rec *r = &out->recs[i];
        r->expires_at = td_sat_add(r->not_before, td_rule_expires(rs, r->rule));
        r->late = trig->wall > 0 &&
                  (trig->wall > td_sat_add(r->not_before, td_rule_late_after(rs, r->rule)) ||
                   trig->wall >= r->expires_at);
        r->dropped = r->late && (flags & TD_STEP_LATE_DROP);
        if (r->late) out->nlate++;
        roff[i] = (uint32_t)out->text.len;
        if (eng_rec_body(r, st, rs, trig, now, &out->text) != TD_OK) return TD_ERR;
        r->body_len = (uint32_t)(out->text.len - roff[i]);
    }
    /* what the trigger withdraws of what was pending before it */
    const td_event *ev = trig->kind == TD_TRIG_EVENT ? trig->ev : NULL;
    bool reply = ev && eng_is_reply(ev);
    bool ended = snap->taken && st->stage != snap->stage &&
                 (st->stage == TD_STAGE_WON || st->stage == TD_STAGE_LOST);
    uint32_t n0 = st->nplan;
    bool gone[TD_PLAN_MAX] = {false};
    for (uint32_t i = 0; i < n0 && i < TD_PLAN_MAX; i++) {
        const td_pending *e = &st->plan[i];
        int reason = -1;
        const td_rec *by = NULL;
        if (e->expires_at <= now)
            reason = TD_WDR_EXPIRED;
        else if (reply && eng_sequence(e))
            reason = TD_WDR_REPLIED;
        else if (snap->taken && !e->owner && e->channel >= 0 && e->channel < TD_CH__COUNT &&
                 ((st->ch[e->channel].blocked && !snap->blocked[e->channel]) ||
                  (st->ch[e->channel].consent == TD_TRI_NO &&
                   snap->consent[e->channel] != TD_TRI_NO)))
            reason = st->ch[e->channel].blocked == TD_BLOCK_HARD_BOUNCE ? TD_WDR_BOUNCED
                                                                        : TD_WDR_OPTED_OUT;
        else if (ended && eng_sequence(e))
            reason = TD_WDR_STAGE;
        bool stop = eng_is_stop(e->touch, e->intent);
        for (uint32_t k = 0; reason < 0 && k < out->nrecs; k++)
            if (eng_pending_same_group(e, out->recs[k].rule) &&
                (!stop || eng_is_stop(out->recs[k].touch, out->recs[k].rule->intent))) {
                reason = TD_WDR_SUPERSEDED;
                by = &out->recs[k];
            }
        for (uint32_t k = 0; reason < 0 && k < out->nrecs; k++)
            if (eng_pending_withdrawn_by(e, out->recs[k].rule)) {
                reason = TD_WDR_RULE;
                by = &out->recs[k];
            }
        if (reason < 0) continue;
        if (eng_withdraw(rs, st, trig, now, out, i, (td_wd_reason)reason, by, woff) != TD_OK)
            return TD_ERR;
        gone[i] = true;
    }
    for (uint32_t i = n0; i-- > 0;)
        if (i < TD_PLAN_MAX && gone[i]) td_state_plan_remove(st, i);
    bool changed = out->nwds > 0 || fb_changed;
    /* the new ones: all but late ones (unless the policy publishes them) */
    for (uint32_t i = 0; i < out->nrecs; i++) {
        td_rec *r = &out->recs[i];
        if (r->late && !(flags & TD_STEP_LATE_PUBLISH)) continue;
        td_pending e;
        memset(&e, 0, sizeof e);
        memcpy(e.id, r->id, sizeof r->id);
        e.not_before = r->not_before;
        e.expires_at = r->expires_at;
        e.channel = r->channel;
        e.owner = td_rule_owner_audience(r->rule);
        td_strlcpy(e.rule, r->rule->id, sizeof e.rule);
        if (r->rule->group) td_strlcpy(e.group, r->rule->group, sizeof e.group);
        td_strlcpy(e.touch, r->touch, sizeof e.touch);
        if (r->rule->intent) td_strlcpy(e.intent, r->rule->intent, sizeof e.intent);
        if (eng_is_gift(r->channel, r->touch, r->rule->intent))
            eng_gift_recommended(rs, st, now, tz, +1);
        e.json = malloc(r->body_len + 1);
        if (!e.json) return TD_ERR;
        memcpy(e.json, out->text.p + roff[i], r->body_len);
        e.json[r->body_len] = '\0';
        e.len = r->body_len;
        td_pending ev_out;
        ev_out.json = NULL;
        if (td_state_plan_add(st, &e, &ev_out) != TD_OK) return TD_ERR;
        if (ev_out.json) { /* a full plan lost the one that expires first: withdrawn */
            int rc = out->nwds < TD_PLAN_MAX ? eng_withdraw_entry(rs, st, trig, now, out, &ev_out,
                                                                  TD_WDR_SUPERSEDED, r, woff)
                                             : TD_OK;
            free(ev_out.json);
            if (rc != TD_OK) return TD_ERR;
        }
        changed = true;
    }
    /* every published one may get feedback (late and marked ones too) */
    for (uint32_t i = 0; i < out->nrecs; i++)
        if (!out->recs[i].dropped)
            td_state_rec_remember(
                st, td_state_rec_fingerprint(out->recs[i].id,
                                             eng_is_gift(out->recs[i].channel, out->recs[i].touch,
                                                         out->recs[i].rule->intent)));
    if (eng_snooze_arm(st, trig, out) != TD_OK) return TD_ERR;
    if (changed) {
        st->plan_version++;
        out->plan_changed = true;
    }
    /* the text is complete: point the bodies into it */
    for (uint32_t i = 0; i < out->nrecs; i++)
        out->recs[i].body = out->text.p + roff[i];
    for (uint32_t i = 0; i < out->nwds; i++)
        out->wds[i].body = out->text.p + woff[i];
    return TD_OK;
}

td_step_out *td_step_out_new(void) { return calloc(1, sizeof(td_step_out)); }

void td_step_out_free(td_step_out *out) {
    if (!out) return;
    td_buf_free(&out->text);
    free(out);
}
