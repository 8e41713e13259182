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
 * @locality any thread; no globals.
 */
/* SHA256_Init/Update/Final: deprecated in OpenSSL 3 but present; they reach
 * the same block function as EVP without EVP's per-call context allocation
 * and provider dispatch (see rec_id). An OpenSSL built without them
 * (OPENSSL_NO_DEPRECATED_3_0) gets EVP_Digest instead: the same ids. */
#define OPENSSL_SUPPRESS_DEPRECATED
#include "td_engine.h"

#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "td_schedule.h"
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

static td_decision *decision(td_step_out *out, unsigned flags, const td_rule *r, td_outcome o) {
    if (!(flags & (TD_STEP_EXPLAIN | TD_STEP_OUTCOMES)) || out->ndecisions >= TD_STEP_DECISIONS_MAX)
        return NULL;
    td_decision *d = &out->decisions[out->ndecisions++];
    d->rule = r;
    d->outcome = o;
    d->by = NULL;
    d->until = TD_MS_MISSING;
    d->error[0] = '\0';
    d->nbecause = 0;
    return d;
}

/* Fills because[] with each conjunct of `when`, its value and the facts read. */
static uint32_t explain(const td_rule *r, const td_ctx *base, td_because *because) {
    if (!r->when) return 0;
    size_t n = td_expr_conjuncts(r->when);
    if (n > TD_BECAUSE_MAX) n = TD_BECAUSE_MAX;
    for (size_t i = 0; i < n; i++) {
        td_because *b = &because[i];
        size_t len = 0;
        b->expr = td_expr_conjunct_source(r->when, i, &len);
        b->len = (uint32_t)len;
        b->facts.n = 0;
        td_ctx ctx = *base;
        ctx.facts = &b->facts;
        char err[96];
        if (td_expr_eval_conjunct(r->when, i, &ctx, &b->value, err, sizeof err) != TD_OK) {
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
static void rec_id(const char *trigger_id, const char *rule_id, char *out) {
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

/* Evaluates a rule's `when` and cooldown; on a match computes not_before and
 * appends a candidate. */
static void consider(const td_rule *r, const td_ctx *ctx, unsigned flags, td_step_out *out,
                     cand *cands, uint32_t *ncands) {
    td_value v = {.type = TD_T_BOOL, .missing = true};
    char err[120];
    if (r->when) {
        /* may_hold: a failing enum test in front (`stage == 'won' && ...`)
         * is false without the walk */
        bool may = td_expr_may_hold(r->when, ctx->st);
        if (may && td_expr_eval(r->when, ctx, &v, err, sizeof err) != TD_OK) {
            out->nerrors++;
            td_decision *d = decision(out, flags, r, TD_OUT_ERROR);
            if (d) snprintf(d->error, sizeof d->error, "when: %s", err);
            return;
        }
        if (!may || v.missing || !v.u.b) {
            td_decision *d = decision(out, flags, r, TD_OUT_NOT_MATCHED);
            if (d) d->nbecause = (flags & TD_STEP_EXPLAIN) ? explain(r, ctx, d->because) : 0;
            return;
        }
    }
    if (r->cooldown > 0) {
        td_ms last = td_state_fired_at_key(ctx->st, &r->key);
        if (last != TD_MS_MISSING && ctx->now - last < r->cooldown) {
            td_decision *d = decision(out, flags, r, TD_OUT_COOLDOWN);
            if (d) {
                d->until = last + r->cooldown;
                d->nbecause = (flags & TD_STEP_EXPLAIN) ? explain(r, ctx, d->because) : 0;
            }
            return;
        }
    }
    td_ms nb = ctx->now;
    if (r->at) {
        if (td_expr_eval(r->at, ctx, &v, err, sizeof err) != TD_OK) {
            out->nerrors++;
            td_decision *d = decision(out, flags, r, TD_OUT_ERROR);
            if (d) snprintf(d->error, sizeof d->error, "at: %s", err);
            return;
        }
        if (!v.missing && v.u.t > nb) nb = v.u.t;
    }
    /* business days and hours of the prospect's country and zone, or at
     * least not in quiet hours (`window = "any"`) */
    nb = td_sched_window(ctx->settings, ctx->tz, ctx->st, nb, r->window_any);
    if (*ncands >= TD_STEP_RECS_MAX) {
        out->nerrors++;
        td_decision *d = decision(out, flags, r, TD_OUT_ERROR);
        if (d)
            snprintf(d->error, sizeof d->error, "more than %d rules matched one trigger",
                     TD_STEP_RECS_MAX);
        return;
    }
    cand *c = &cands[(*ncands)++];
    c->rule = r;
    c->not_before = nb;
    c->blocked_by = NULL;
    c->lost = false;
    c->winner = NULL;
}

static bool same_group(const td_rule *a, const td_rule *b) {
    if (a == b) return true;
    if (!a->group || !b->group) return false;
    return strcmp(a->group, b->group) == 0;
}

/* Guards, groups, recommendations: steps 5 to 7. */
static void resolve(const td_ruleset *rs, td_ctx *ctx, int trigger_type, unsigned flags,
                    td_step_out *out, cand *cands, uint32_t ncands) {
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
                    out->nerrors++;
                    td_decision *d = decision(out, flags, gr, TD_OUT_ERROR);
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
                out->nerrors++;
                c->blocked_by = gr;
                td_decision *d = decision(out, flags, gr, TD_OUT_ERROR);
                if (d) snprintf(d->error, sizeof d->error, "block: %s (blocked to be safe)", err);
                continue;
            }
            if (!v.missing && v.u.b) c->blocked_by = gr;
        }
        if (c->blocked_by) out->nblocked++;
    }
    /* group resolution among unblocked candidates */
    for (uint32_t i = 0; i < ncands; i++) {
        cand *c = &cands[i];
        if (c->blocked_by) continue;
        for (uint32_t j = 0; j < ncands; j++) {
            cand *o = &cands[j];
            if (j == i || o->blocked_by || !same_group(c->rule, o->rule)) continue;
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
            td_decision *d = decision(out, flags, c->rule, TD_OUT_BLOCKED);
            if (d) {
                d->by = c->blocked_by;
                d->nbecause = (flags & TD_STEP_EXPLAIN) ? explain(c->rule, ctx, d->because) : 0;
            }
            continue;
        }
        if (c->lost) {
            td_decision *d = decision(out, flags, c->rule, TD_OUT_LOST_GROUP);
            if (d) {
                d->by = c->winner;
                d->nbecause = (flags & TD_STEP_EXPLAIN) ? explain(c->rule, ctx, d->because) : 0;
            }
            continue;
        }
        td_rec *r = &out->recs[out->nrecs++];
        rec_id(out->trigger_id, c->rule->id, r->id);
        r->rule = c->rule;
        r->channel = c->rule->channel;
        r->touch = c->rule->touch;
        r->note = c->rule->note;
        r->not_before = c->not_before;
        r->priority = c->rule->priority;
        r->nbecause = explain(c->rule, ctx, r->because);
        td_decision *d = decision(out, flags, c->rule, TD_OUT_FIRED);
        if (d) {
            d->nbecause = r->nbecause;
            memcpy(d->because, r->because, r->nbecause * sizeof(td_because));
        }
    }
}

/* The owner.prospect_contacted event a first touch derives. Its id is the
 * touch's id + "#owner" (or a hash when that would be too long), so a
 * redelivered touch derives the same id and the owner's dedup ring drops it. */
static void derive_owner_event(const td_state *st, const td_event *ev, td_event *d, bool *has) {
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

int td_engine_step(const td_ruleset *rs, td_state *st, const td_trigger *trig, td_ms now,
                   td_tzdb *tz, unsigned flags, td_step_out *out) {
    out->duplicate = false;
    out->stale = false;
    out->has_derived = false;
    out->nrecs = 0;
    out->narms = 0;
    out->ndecisions = 0;
    out->nblocked = 0;
    out->nerrors = 0;
    out->trigger_id[0] = '\0';

    td_ctx ctx = {.st = st,
                  .ev = NULL,
                  .now = now,
                  .rec = NULL,
                  .tz = tz,
                  .settings = td_ruleset_settings(rs),
                  .facts = NULL};
    cand cands[TD_STEP_RECS_MAX];
    uint32_t ncands = 0;

    if (trig->kind == TD_TRIG_EVENT) {
        const td_event *ev = trig->ev;
        td_strlcpy(out->trigger_id, ev->id, sizeof out->trigger_id);
        uint64_t fp = td_state_fingerprint(ev->id);
        if (td_state_seen_fp(st, fp)) {
            out->duplicate = true;
            return TD_OK;
        }
        if (!st->prospect_id[0])
            td_strlcpy(st->prospect_id, ev->prospect_id, sizeof st->prospect_id);
        bool untouched = st->first_touch_at == TD_MS_MISSING;
        if (td_state_apply(st, ev, tz, ctx.settings) != TD_OK) return TD_ERR;
        td_state_remember_fp(st, fp);
        if (untouched && st->first_touch_at != TD_MS_MISSING && st->owner_id[0] &&
            ev->type != TD_EV_OWNER_PROSPECT_CONTACTED)
            derive_owner_event(st, ev, &out->derived, &out->has_derived);
        ctx.ev = ev;

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
                    out->arms[out->narms].due_at = due;
                    out->narms++;
                }
                td_decision *d = decision(out, flags, r, TD_OUT_ARMED);
                if (d) d->until = due;
                continue;
            }
            consider(r, &ctx, flags, out, cands, &ncands);
        }
        if (held != UINT32_MAX) td_state_armed_drop(st, held);
        resolve(rs, &ctx, (int)ev->type, flags, out, cands, ncands);
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
        if (!r || r->guard || r->after <= 0) {
            /* the rule was removed or changed since the timer was armed */
            out->stale = true;
            return TD_OK;
        }
        consider(r, &ctx, flags, out, cands, &ncands);
        resolve(rs, &ctx, -1, flags, out, cands, ncands);
    }
    for (uint32_t i = 0; i < out->nrecs; i++)
        if (td_state_set_fired_key(st, &out->recs[i].rule->key, now) != TD_OK) return TD_ERR;
    return TD_OK;
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
static inline int rj_room(td_buf *b, size_t n) {
    return b->len + n + 1 <= b->cap ? TD_OK : td_buf_reserve(b, n);
}

/* A literal, e.g. RJ_LIT(b, ",\"key\":"): one copy of a known length. */
#define RJ_LIT(b, lit) rj_raw((b), (lit), sizeof(lit) - 1)
static inline int rj_raw(td_buf *b, const char *s, size_t n) {
    if (rj_room(b, n) != TD_OK) return TD_ERR;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    return TD_OK;
}

/* A literal key (with its punctuation) and a string value of n bytes. */
#define RJ_STR(b, lit, s, n) rj_str((b), (lit), sizeof(lit) - 1, (s), (n))
static inline int rj_str(td_buf *b, const char *lit, size_t ll, const char *s, size_t n) {
    if (n > (SIZE_MAX - 3) / 6 - ll || rj_room(b, ll + 6 * n + 2) != TD_OK) return TD_ERR;
    char *o = b->p + b->len;
    memcpy(o, lit, ll);
    o = td_json_str_at(o + ll, s, n);
    b->len = (size_t)(o - b->p);
    return TD_OK;
}

/* A literal key and a time, quoted: td_time_format writes digits, '-', ':',
 * 'T', '.' and 'Z' only, nothing to escape. */
#define RJ_TIME(b, lit, t) rj_time((b), (lit), sizeof(lit) - 1, (t))
static inline int rj_time(td_buf *b, const char *lit, size_t ll, td_ms t) {
    if (rj_room(b, ll + 2 + TD_TIME_BUF) != TD_OK) return TD_ERR;
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
static inline int rj_value(td_buf *b, const td_value *v) {
    if (rj_room(b, 256) != TD_OK) return TD_ERR;
    b->len += td_value_json(v, b->p + b->len, 256);
    return TD_OK;
}

/* A fact's key: [","] + the field name quoted + ":". */
static inline int rj_fact_key(td_buf *b, const char *name, bool first) {
    size_t n = strlen(name);
    if (n > (SIZE_MAX - 5) / 6 || rj_room(b, 6 * n + 4) != TD_OK) return TD_ERR;
    char *o = b->p + b->len;
    if (!first) *o++ = ',';
    o = td_json_str_at(o, name, n);
    *o++ = ':';
    b->len = (size_t)(o - b->p);
    return TD_OK;
}

static int rec_json(const td_rec *r, const td_state *st, const td_ruleset *rs,
                    const td_trigger *trig, td_ms generated_at, td_buf *b) {
    if (RJ_STR(b, "{\"id\":", r->id, strlen(r->id)) != TD_OK ||
        RJ_STR(b, ",\"prospect_id\":", st->prospect_id, strlen(st->prospect_id)) != TD_OK)
        return TD_ERR;
    if (st->owner_id[0] && RJ_STR(b, ",\"owner_id\":", st->owner_id, strlen(st->owner_id)) != TD_OK)
        return TD_ERR;
    const char *ch = td_channel_name(r->channel);
    if (RJ_STR(b, ",\"rule\":", r->rule->id, strlen(r->rule->id)) != TD_OK ||
        RJ_STR(b, ",\"channel\":", ch, strlen(ch)) != TD_OK ||
        RJ_STR(b, ",\"touch\":", r->touch, strlen(r->touch)) != TD_OK ||
        RJ_TIME(b, ",\"not_before\":", r->not_before) != TD_OK ||
        RJ_LIT(b, ",\"priority\":") != TD_OK || rj_room(b, 24) != TD_OK)
        return TD_ERR;
    b->len += td_fmt_i64(r->priority, b->p + b->len);
    if (r->note && RJ_STR(b, ",\"note\":", r->note, strlen(r->note)) != TD_OK) return TD_ERR;
    if (trig->kind == TD_TRIG_EVENT) {
        const char *tn = td_event_type_name(trig->ev->type);
        if (RJ_STR(b, ",\"trigger\":{\"type\":", tn, strlen(tn)) != TD_OK ||
            RJ_STR(b, ",\"event_id\":", trig->ev->id, strlen(trig->ev->id)) != TD_OK)
            return TD_ERR;
    } else {
        if (RJ_LIT(b, ",\"trigger\":{\"type\":\"timer\"") != TD_OK ||
            RJ_STR(b, ",\"rule\":", trig->rule, strlen(trig->rule)) != TD_OK ||
            RJ_STR(b, ",\"armed_by\":", trig->armed_by, strlen(trig->armed_by)) != TD_OK ||
            RJ_TIME(b, ",\"due_at\":", trig->due_at) != TD_OK)
            return TD_ERR;
    }
    if (RJ_LIT(b, "},\"because\":[") != TD_OK) return TD_ERR;
    for (uint32_t i = 0; i < r->nbecause; i++) {
        const td_because *bc = &r->because[i];
        int rc = i ? RJ_STR(b, ",{\"expr\":", bc->expr, bc->len)
                   : RJ_STR(b, "{\"expr\":", bc->expr, bc->len);
        if (rc != TD_OK || RJ_LIT(b, ",\"value\":") != TD_OK || rj_value(b, &bc->value) != TD_OK ||
            RJ_LIT(b, ",\"facts\":{") != TD_OK)
            return TD_ERR;
        for (uint32_t f = 0; f < bc->facts.n; f++) {
            const td_fact *fa = &bc->facts.v[f];
            if (rj_fact_key(b, fa->field->name, f == 0) != TD_OK ||
                rj_value(b, &fa->value) != TD_OK)
                return TD_ERR;
        }
        if (RJ_LIT(b, "}}") != TD_OK) return TD_ERR;
    }
    const char *hash = td_ruleset_hash(rs);
    if (RJ_STR(b, "],\"ruleset\":", hash, strlen(hash)) != TD_OK ||
        RJ_TIME(b, ",\"generated_at\":", generated_at) != TD_OK || RJ_LIT(b, "}") != TD_OK)
        return TD_ERR;
    return TD_OK;
}

int td_rec_json(const td_rec *r, const td_state *st, const td_ruleset *rs, const td_trigger *trig,
                td_ms generated_at, td_buf *b) {
    size_t start = b->len;
    int rc = rec_json(r, st, rs, trig, generated_at, b);
    if (rc != TD_OK) b->len = start; /* out of memory: nothing appended */
    if (b->p) b->p[b->len] = '\0';
    return rc;
}
