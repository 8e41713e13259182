/*
 * td_expr_eval.c - the rules expression language, run time: the evaluator,
 * the queries on a compiled expression (fields, conjuncts, fixed operands)
 * and td_value_json (td_expr_internal.h lists the other files; the contract
 * is td_expr.h).
 *
 * Evaluation (td_expr_eval) walks the compiled td_enode array recursively.
 * It never allocates and never re-parses; every operation is chosen at
 * compile time, so the hot path is one switch per node. Depth is bounded at
 * compile time (TD_EXPR_MAX_DEPTH), so the recursion cannot overflow the
 * stack. Integer arithmetic goes through __builtin_*_overflow: overflow and
 * division by zero are TD_ERR with a message naming the sub-expression,
 * never UB.
 *
 * Owns: nothing; values it returns borrow from the td_expr or the ctx's state.
 *
 * File-local functions are prefixed xe_ (expression eval).
 *
 * @locality any thread (a td_expr is immutable after compile), one td_ctx
 * per thread.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "td_calendar.h"
#include "td_expr_internal.h"
#include "td_schedule.h"
#include "td_time.h"

/* ------------------------------------------------------------------------ */
/* evaluation                                                               */
/* ------------------------------------------------------------------------ */

typedef struct run {
    const td_expr *e;
    const td_ctx *ctx;
    td_facts *facts;
    char *err;
    size_t errcap;
    /* the truth of the fixed chain operands (td_expr_fix_operands) for the
     * candidate judged, when ctx->rec->fixed gives it and no facts are
     * recorded (a fact list must show what the operands read) */
    bool usefix;
    uint64_t fixv;
} run;

/* Civil time is defined for years 1..9999 (td_time.h). */
#define TD_CIVIL_MIN ((td_ms)-62135596800000LL) /* 0001-01-01T00:00:00Z */
#define TD_CIVIL_MAX ((td_ms)253402300799999LL) /* 9999-12-31T23:59:59.999Z */

static int xe_fail(const run *r, const td_enode *n, const char *what) {
    if (r->err && r->errcap) {
        uint32_t len = n->len > 80 ? 80 : n->len;
        snprintf(r->err, r->errcap, "%s in '%.*s'%s", what, (int)len, r->e->src + n->off,
                 len < n->len ? "..." : "");
    }
    return TD_ERR;
}

static void xe_record_fact(td_facts *fx, const td_field *f, const td_value *v) {
    for (uint32_t k = 0; k < fx->n && k < TD_FACTS_MAX; k++)
        if (fx->v[k].field == f) return;
    if (fx->n >= TD_FACTS_MAX) return;
    fx->v[fx->n].field = f;
    fx->v[fx->n].value = *v;
    fx->n++;
}

static const char *xe_zone_of(const td_ctx *ctx) {
    if (ctx->st && ctx->st->timezone[0]) return ctx->st->timezone;
    if (ctx->settings && ctx->settings->default_timezone[0]) return ctx->settings->default_timezone;
    return NULL;
}

static void xe_local_civil(const td_ctx *ctx, td_ms t, td_civil *out) {
    const char *z = xe_zone_of(ctx);
    if (ctx->tz && z)
        td_tz_local(ctx->tz, z, t, out, NULL); /* unknown zone: UTC, by contract */
    else
        td_civil_from_ms(t, out);
}

static int xe_clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

/* The prospect's best local hour: the most engaged hour inside business hours
 * once there are enough points, else the configured default. */
static int xe_best_hour(const td_state *st, const td_settings *s) {
    int def = xe_clampi(s->best_time_default_hour, 0, 23);
    if (!st) return def;
    uint64_t sum = 0;
    for (int h = 0; h < 24; h++)
        sum += st->hour_hist[h];
    if (s->best_time_min_points > 0 && sum < (uint64_t)s->best_time_min_points) return def;
    if (sum == 0) return def;
    int lo = xe_clampi(s->business_start_hour, 0, 24), hi = xe_clampi(s->business_end_hour, 0, 24);
    int best = -1;
    for (int h = lo; h < hi; h++)
        if (st->hour_hist[h] > (best < 0 ? 0u : st->hour_hist[best])) best = h; /* ties: earliest */
    return best < 0 ? def : best;
}

/* ISO weekday (1 = Monday) of a day number (days since 1970-01-01, a Thursday). */
static int xe_weekday_of_days(int64_t days) { return (int)(((days % 7) + 7 + 3) % 7) + 1; }

/*
 * best_time(t): the first instant >= t that is hour H:00 local on a weekday,
 * H = best_hour. Method: take t's local date; if t is on a weekday inside
 * hour H, t itself; otherwise walk calendar dates from t's date (or the next
 * one when hour H has passed) and convert H:00 of the first Monday-Friday
 * date through the zone (td_tz_to_utc: gaps move forward), keeping the first
 * result >= t. Non-business days (weekends, and holidays of the prospect's
 * country when a calendar is attached) are skipped; 20 dates bound the walk.
 */
static int xe_eval_best_time(const run *r, const td_enode *n, td_ms t, td_ms *out) {
    const td_ctx *ctx = r->ctx;
    td_settings defs;
    const td_settings *s = ctx->settings;
    if (!s) {
        td_settings_default(&defs);
        s = &defs;
    }
    if (t < TD_CIVIL_MIN + 21 * TD_DAY || t > TD_CIVIL_MAX - 21 * TD_DAY)
        return xe_fail(r, n, "time out of range (years 1..9999)");
    int hour = xe_best_hour(ctx->st, s);
    const char *z = xe_zone_of(ctx);
    td_civil c;
    xe_local_civil(ctx, t, &c);
    const char *cc = ctx->st ? ctx->st->country : "";
    if (c.hour == hour && td_sched_business_day(s, ctx->tz, z ? z : "UTC", cc, t)) {
        *out = t;
        return TD_OK;
    }
    int64_t day = td_days_from_civil(c.year, c.month, c.day);
    if (c.hour >= hour) day++;
    for (int k = 0; k < 20; k++, day++) {
        td_civil d;
        td_civil_from_ms(day * TD_DAY, &d);
        if (s->calendar ? !td_calendar_is_business_day(s->calendar, cc, d.year, d.month, d.day)
                        : xe_weekday_of_days(day) > 5)
            continue;
        td_ms u;
        if (ctx->tz && z)
            td_tz_to_utc(ctx->tz, z, d.year, d.month, d.day, hour, 0, &u);
        else
            u = td_civil_to_ms(d.year, d.month, d.day, hour, 0, 0);
        if (u >= t) {
            *out = u;
            return TD_OK;
        }
    }
    *out = t; /* not reached with a sane zone; stay correct (>= t) anyway */
    return TD_OK;
}

static bool xe_cmp_i(int op, int64_t a, int64_t b) {
    switch (op) {
    case CMP_LT:
        return a < b;
    case CMP_LE:
        return a <= b;
    case CMP_GT:
        return a > b;
    case CMP_GE:
        return a >= b;
    case CMP_EQ:
        return a == b;
    default:
        return a != b;
    }
}

static int xe_str_cmp(const td_value *a, const td_value *b) {
    uint32_t n = a->u.s.n < b->u.s.n ? a->u.s.n : b->u.s.n;
    int d = n ? memcmp(a->u.s.p, b->u.s.p, n) : 0;
    if (d) return d;
    return a->u.s.n < b->u.s.n ? -1 : a->u.s.n > b->u.s.n;
}

static inline bool xe_truthy(const td_value *v) { return v->u.b && !v->missing; }

static int xe_ev(const run *r, uint32_t i, td_value *out);

/* Evaluates node i: the leaves that are most of every expression (constants
 * and fields read in place) without a call, the rest through xe_ev(). */
static inline int xe_evx(const run *r, uint32_t i, td_value *out) {
    const td_enode *n = &r->e->nodes[i];
    if (n->op == E_FLD_OPT || n->op == E_FLD_I64) {
        int64_t v;
        memcpy(&v, (const char *)r->ctx->st + n->b, sizeof v);
        bool missing = n->op == E_FLD_OPT && v == INT64_MIN;
        out->type = (td_type)n->type;
        out->missing = missing;
        /* what the getters leave in a missing value: times keep the
         * sentinel, numbers are zeroed (td_state_schema.c ss_v_time, ss_v_missing) */
        out->u.i = missing && n->type != TD_T_TIME ? 0 : v;
        if (r->facts) xe_record_fact(r->facts, n->u.f, out);
        return TD_OK;
    }
    if (n->op == E_CONST) {
        *out = n->u.k;
        return TD_OK;
    }
    return xe_ev(r, i, out);
}

/* Evaluates both children of n; @returns 1 when either is missing (out is
 * then a missing value of n's type), 0 when both are present, TD_ERR. */
static int xe_ev2(const run *r, const td_enode *n, td_value *x, td_value *y, td_value *out) {
    if (xe_evx(r, n->a, x) || xe_evx(r, n->b, y)) return TD_ERR;
    if (x->missing || y->missing) {
        out->missing = true;
        out->u.i = 0;
        return 1;
    }
    return 0;
}

static int xe_ev(const run *r, uint32_t i, td_value *out) {
    const td_enode *n = &r->e->nodes[i];
    td_value x, y;
    int rc;
    out->type = (td_type)n->type;
    out->missing = false;
    switch ((eop)n->op) {
    case E_CONST:
        *out = n->u.k;
        return TD_OK;
    case E_FIELD:
        n->u.f->get(n->u.f, r->ctx, out);
        out->type = (td_type)n->type;
        if (r->facts) xe_record_fact(r->facts, n->u.f, out);
        return TD_OK;
    case E_NOW:
        out->u.t = r->ctx->now;
        return TD_OK;
    case E_AND:
    case E_OR: {
        /* a chain head: every operand in a loop (xc_link_chains, td_expr_check.c); an inner
         * node (never evaluated on its own) would be a chain of its two */
        bool stop = n->op == E_OR; /* the truth value that ends the chain */
        uint32_t pair[2] = {n->a, n->b};
        const uint32_t *ops = n->n ? r->e->chain + n->u.chain : pair;
        uint32_t nops = n->n ? n->n : 2;
        for (uint32_t j = 0; j < nops; j++) {
            uint8_t fix = r->e->nodes[ops[j]].fix;
            bool t;
            if (fix && r->usefix) {
                t = (r->fixv >> (fix - 1)) & 1;
            } else {
                if (xe_evx(r, ops[j], &x)) return TD_ERR;
                t = xe_truthy(&x);
            }
            if (t == stop) {
                out->u.b = stop;
                return TD_OK;
            }
        }
        out->u.b = !stop;
        return TD_OK;
    }
    case E_NOT:
        if (xe_evx(r, n->a, &x)) return TD_ERR;
        out->u.b = !xe_truthy(&x);
        return TD_OK;
    case E_CMP_I:
        if (xe_evx(r, n->a, &x) || xe_evx(r, n->b, &y)) return TD_ERR;
        out->u.b = !x.missing && !y.missing && xe_cmp_i(n->aux, x.u.i, y.u.i);
        return TD_OK;
    case E_CMP_IK:
        if (xe_evx(r, n->a, &x)) return TD_ERR;
        out->u.b = !x.missing && xe_cmp_i(n->aux, x.u.i, n->u.k.u.i);
        return TD_OK;
    case E_CMP_S:
        if (xe_evx(r, n->a, &x) || xe_evx(r, n->b, &y)) return TD_ERR;
        out->u.b = !x.missing && !y.missing && xe_cmp_i(n->aux, xe_str_cmp(&x, &y), 0);
        return TD_OK;
    case E_CMP_B:
        if (xe_evx(r, n->a, &x) || xe_evx(r, n->b, &y)) return TD_ERR;
        out->u.b = !x.missing && !y.missing && xe_cmp_i(n->aux, x.u.b, y.u.b);
        return TD_OK;
    case E_IN_I:
    case E_IN_S:
    case E_IN_B: {
        if (xe_evx(r, n->a, &x)) return TD_ERR;
        out->u.b = false;
        if (x.missing) return TD_OK;
        const td_value *k = r->e->consts + n->b;
        for (uint32_t j = 0; j < n->n; j++) {
            bool eq = n->op == E_IN_I   ? k[j].u.i == x.u.i
                      : n->op == E_IN_S ? xe_str_cmp(&k[j], &x) == 0
                                        : k[j].u.b == x.u.b;
            if (eq) {
                out->u.b = true;
                break;
            }
        }
        return TD_OK;
    }
    case E_COAL:
        if (xe_evx(r, n->a, out)) return TD_ERR;
        if (!out->missing) return TD_OK;
        if (xe_evx(r, n->b, out)) return TD_ERR;
        out->type = (td_type)n->type;
        return TD_OK;
    case E_NEG:
        if (xe_evx(r, n->a, &x)) return TD_ERR;
        out->missing = x.missing;
        out->u.i = 0;
        if (x.missing) return TD_OK;
        if (__builtin_sub_overflow((int64_t)0, x.u.i, &out->u.i)) return xe_fail(r, n, "overflow");
        return TD_OK;
    case E_I2D:
        if (xe_evx(r, n->a, &x)) return TD_ERR;
        out->missing = x.missing;
        out->u.d = 0;
        if (x.missing) return TD_OK;
        if (__builtin_mul_overflow(x.u.i, (int64_t)TD_DEC_SCALE, &out->u.d))
            return xe_fail(r, n, "overflow (decimals hold up to ~9.2e14)");
        return TD_OK;
    case E_ADD:
        if ((rc = xe_ev2(r, n, &x, &y, out))) return rc < 0 ? TD_ERR : TD_OK;
        if (__builtin_add_overflow(x.u.i, y.u.i, &out->u.i)) return xe_fail(r, n, "overflow");
        return TD_OK;
    case E_SUB:
        if ((rc = xe_ev2(r, n, &x, &y, out))) return rc < 0 ? TD_ERR : TD_OK;
        if (__builtin_sub_overflow(x.u.i, y.u.i, &out->u.i)) return xe_fail(r, n, "overflow");
        return TD_OK;
    case E_MUL_I:
        if ((rc = xe_ev2(r, n, &x, &y, out))) return rc < 0 ? TD_ERR : TD_OK;
        if (__builtin_mul_overflow(x.u.i, y.u.i, &out->u.i)) return xe_fail(r, n, "overflow");
        return TD_OK;
    case E_MUL_D: {
        if ((rc = xe_ev2(r, n, &x, &y, out))) return rc < 0 ? TD_ERR : TD_OK;
        /* (a / 10^4) * (b / 10^4) = a * b / 10^4, truncated toward zero */
        __int128 p = (__int128)x.u.d * y.u.d / TD_DEC_SCALE;
        if (p > INT64_MAX || p < INT64_MIN) return xe_fail(r, n, "overflow");
        out->u.d = (int64_t)p;
        return TD_OK;
    }
    case E_DIV_I:
        if ((rc = xe_ev2(r, n, &x, &y, out))) return rc < 0 ? TD_ERR : TD_OK;
        if (y.u.i == 0) return xe_fail(r, n, "division by zero");
        if (x.u.i == INT64_MIN && y.u.i == -1) return xe_fail(r, n, "overflow");
        out->u.i = x.u.i / y.u.i;
        return TD_OK;
    case E_DIV_D: {
        if ((rc = xe_ev2(r, n, &x, &y, out))) return rc < 0 ? TD_ERR : TD_OK;
        if (y.u.d == 0) return xe_fail(r, n, "division by zero");
        __int128 q = (__int128)x.u.d * TD_DEC_SCALE / y.u.d;
        if (q > INT64_MAX || q < INT64_MIN) return xe_fail(r, n, "overflow");
        out->u.d = (int64_t)q;
        return TD_OK;
    }
    case E_MIN:
    case E_MAX:
        if ((rc = xe_ev2(r, n, &x, &y, out))) return rc < 0 ? TD_ERR : TD_OK;
        out->u.i = (n->op == E_MIN) == (x.u.i < y.u.i) ? x.u.i : y.u.i;
        return TD_OK;
    case E_ABS:
        if (xe_evx(r, n->a, &x)) return TD_ERR;
        out->missing = x.missing;
        out->u.i = 0;
        if (x.missing) return TD_OK;
        if (x.u.i == INT64_MIN) return xe_fail(r, n, "overflow");
        out->u.i = x.u.i < 0 ? -x.u.i : x.u.i;
        return TD_OK;
    case E_HAS:
        if (xe_evx(r, n->a, &x)) return TD_ERR;
        out->u.b = !x.missing;
        return TD_OK;
    case E_SINCE:
        if (xe_evx(r, n->a, &x)) return TD_ERR;
        out->missing = x.missing;
        out->u.t = 0;
        if (x.missing) return TD_OK;
        if (__builtin_sub_overflow(r->ctx->now, x.u.t, &out->u.t)) return xe_fail(r, n, "overflow");
        return TD_OK;
    case E_TOUCHES:
        if (xe_evx(r, n->a, &x)) return TD_ERR;
        out->missing = x.missing;
        out->u.i = 0;
        if (x.missing) return TD_OK;
        out->u.i = r->ctx->st ? td_state_touches_within(r->ctx->st, r->ctx->now, x.u.t) : 0;
        return TD_OK;
    case E_LOCAL: {
        if (xe_evx(r, n->a, &x)) return TD_ERR;
        out->missing = x.missing;
        out->u.i = 0;
        if (x.missing) return TD_OK;
        if (x.u.t < TD_CIVIL_MIN || x.u.t > TD_CIVIL_MAX)
            return xe_fail(r, n, "time out of range (years 1..9999)");
        td_civil c;
        xe_local_civil(r->ctx, x.u.t, &c);
        out->u.i = n->aux == LOC_HOUR      ? c.hour
                   : n->aux == LOC_WEEKDAY ? c.weekday
                   : n->aux == LOC_MONTH   ? c.month
                                           : c.year;
        return TD_OK;
    }
    case E_BEST:
        if (xe_evx(r, n->a, &x)) return TD_ERR;
        out->missing = x.missing;
        out->u.t = 0;
        if (x.missing) return TD_OK;
        return xe_eval_best_time(r, n, x.u.t, &out->u.t);
    case E_BIZDAY:
    case E_NEXTBIZ: {
        if (xe_evx(r, n->a, &x)) return TD_ERR;
        out->missing = x.missing;
        out->u.t = 0;
        if (x.missing) return TD_OK;
        if (x.u.t < TD_CIVIL_MIN + 70 * TD_DAY || x.u.t > TD_CIVIL_MAX - 70 * TD_DAY)
            return xe_fail(r, n, "time out of range (years 1..9999)");
        const td_ctx *ctx = r->ctx;
        const char *zone = td_sched_zone(ctx->st, ctx->settings);
        const char *cc = ctx->st ? ctx->st->country : "";
        if (n->op == E_BIZDAY)
            out->u.b = td_sched_business_day(ctx->settings, ctx->tz, zone, cc, x.u.t);
        else
            out->u.t = td_sched_next_business(ctx->settings, ctx->tz, zone, cc, x.u.t);
        return TD_OK;
    }
    case E_LASTFIRED: {
        if (xe_evx(r, n->a, &x)) return TD_ERR;
        out->missing = true;
        out->u.t = 0;
        if (x.missing || !r->ctx->st || x.u.s.n > TD_RULE_ID_MAX) return TD_OK;
        char id[TD_RULE_ID_MAX + 1];
        memcpy(id, x.u.s.p, x.u.s.n);
        id[x.u.s.n] = '\0';
        td_ms at = td_state_fired_at(r->ctx->st, id);
        if (at != TD_MS_MISSING) {
            out->missing = false;
            out->u.t = at;
        }
        return TD_OK;
    }
    case E_FLD_I64:
    case E_FLD_OPT: /* reached only as a root: xe_evx handles them */
        return xe_evx(r, i, out);
    case E_SIN: {
        const td_field *f = n->u.fm.f;
        if ((n->aux & SIN_ENUM) && !r->facts && r->ctx->st) {
            int code;
            memcpy(&code, (const char *)r->ctx->st + n->a, sizeof code);
            if ((unsigned)code < 64) {
                out->u.b = (n->u.fm.mask >> code) & 1;
                return TD_OK;
            }
        }
        f->get(f, r->ctx, &x);
        x.type = TD_T_STR;
        if (r->facts) xe_record_fact(r->facts, f, &x);
        if (x.missing)
            out->u.b = (n->aux & SIN_MISSING) != 0;
        else
            out->u.b = td_expr_str_in(&x, r->e->consts + n->b, n->n) != ((n->aux & SIN_NEG) != 0);
        return TD_OK;
    }
    case E_LASTFIRED_K: {
        out->missing = true;
        out->u.t = 0;
        if (!r->ctx->st) return TD_OK;
        td_ms at = td_state_fired_at_key(r->ctx->st, &n->u.key);
        if (at != TD_MS_MISSING) {
            out->missing = false;
            out->u.t = at;
        }
        return TD_OK;
    }
    case E_TAXCAP: {
        const td_ctx *ctx = r->ctx;
        out->missing = true;
        out->u.d = 0;
        if (!ctx->st || !ctx->settings || !ctx->st->country[0]) return TD_OK;
        for (uint32_t k = 0; k < ctx->settings->ngift_tax_caps; k++)
            if (strcmp(ctx->settings->gift_tax_caps[k].country, ctx->st->country) == 0) {
                out->missing = false;
                out->u.d = ctx->settings->gift_tax_caps[k].cap_eur;
                break;
            }
        return TD_OK;
    }
    }
    return xe_fail(r, n, "internal error: unknown operation");
}

static int xe_eval_at(const td_expr *e, uint32_t root, const td_ctx *ctx, td_value *out, char *err,
                      size_t errcap) {
    if (err && errcap) err[0] = '\0';
    run r = {e, ctx, (td_facts *)ctx->facts, err, errcap, false, 0};
    if (!r.facts && ctx->rec && ctx->rec->fixed) {
        r.usefix = true;
        r.fixv = *ctx->rec->fixed;
    }
    int rc = xe_ev(&r, root, out);
    if (rc != TD_OK) {
        memset(out, 0, sizeof *out);
        out->type = (td_type)e->nodes[root].type;
        out->missing = true;
    }
    return rc;
}

int td_expr_eval(const td_expr *e, const td_ctx *ctx, td_value *out, char *err, size_t errcap) {
    return xe_eval_at(e, 0, ctx, out, err, errcap);
}

size_t td_expr_fields(const td_expr *e, const td_field **out, size_t cap) {
    size_t n = 0;
    if (!e) return 0;
    for (uint32_t i = 0; i < e->nnodes; i++) {
        uint8_t op = e->nodes[i].op;
        if (op != E_FIELD && op != E_FLD_I64 && op != E_FLD_OPT && op != E_SIN) continue;
        const td_field *f = op == E_SIN ? e->nodes[i].u.fm.f : e->nodes[i].u.f;
        bool seen = false;
        for (size_t j = 0; j < n && j < cap; j++)
            if (out[j] == f) seen = true;
        if (seen) continue;
        if (n < cap) out[n] = f;
        n++;
    }
    return n;
}

/* Where the literal s (len bytes, quoted with ' or ") starts inside the
 * span of node n: the offset of its first byte, or n's own start when it is
 * not written there as is (an escape). */
static uint32_t ev_literal_off(const td_expr *e, const td_enode *n, const char *s, size_t len) {
    size_t end = (size_t)n->off + n->len;
    if (end > e->len) end = e->len;
    for (size_t p = n->off; p + len + 2 <= end; p++) {
        char q = e->src[p];
        if ((q == '\'' || q == '"') && e->src[p + 1 + len] == q &&
            memcmp(e->src + p + 1, s, len) == 0)
            return (uint32_t)(p + 1);
    }
    return n->off;
}

void td_expr_str_refs(const td_expr *e, td_expr_ref_fn fn, void *ud) {
    if (!e) return;
    for (uint32_t i = 0; i < e->nnodes; i++) {
        const td_enode *n = &e->nodes[i];
        if (n->op == E_LASTFIRED_K) {
            fn(ud, NULL, n->u.key.id, n->u.key.len,
               ev_literal_off(e, n, n->u.key.id, n->u.key.len));
        } else if (n->op == E_SIN) {
            for (uint32_t j = 0; j < n->n; j++) {
                const td_value *k = &e->consts[n->b + j];
                fn(ud, n->u.fm.f, k->u.s.p, k->u.s.n, ev_literal_off(e, n, k->u.s.p, k->u.s.n));
            }
        }
    }
}

bool td_expr_constant(const td_expr *e, td_value *out) {
    if (!e || e->nnodes == 0 || e->nodes[0].op != E_CONST) return false;
    *out = e->nodes[0].u.k;
    return true;
}

bool td_expr_may_hold(const td_expr *e, const td_state *st) {
    if (!e || !e->pre || !st) return true;
    int code;
    memcpy(&code, (const char *)st + e->pre_off, sizeof code);
    return (unsigned)code >= 64 || ((e->pre_mask >> code) & 1);
}

bool td_expr_conjunct_reads_only(const td_expr *e, size_t i, const td_field *const *allowed) {
    if (!e || i >= e->nconj) return false;
    /* nodes are in preorder and the conjuncts left to right, so conjunct i
     * is the node range [conj[i], conj[i + 1]) (the last one: to the end) */
    uint32_t end = i + 1 < e->nconj ? e->conj[i + 1] : e->nnodes;
    for (uint32_t k = e->conj[i]; k < end; k++) {
        const td_enode *n = &e->nodes[k];
        const td_field *f = NULL;
        switch ((eop)n->op) {
        case E_FIELD:
        case E_FLD_I64:
        case E_FLD_OPT:
            f = n->u.f;
            break;
        case E_SIN:
            f = n->u.fm.f;
            break;
        case E_CONST:
        case E_NOT:
        case E_NEG:
        case E_I2D:
        case E_ADD:
        case E_SUB:
        case E_MUL_I:
        case E_MUL_D:
        case E_DIV_I:
        case E_DIV_D:
        case E_CMP_I:
        case E_CMP_S:
        case E_CMP_B:
        case E_CMP_IK:
        case E_IN_I:
        case E_IN_S:
        case E_IN_B:
        case E_AND:
        case E_OR:
        case E_COAL:
        case E_HAS:
        case E_MIN:
        case E_MAX:
        case E_ABS:
            continue;
        default:
            return false; /* now, time and state functions */
        }
        bool ok = false;
        for (size_t j = 0; allowed[j]; j++)
            if (allowed[j] == f) ok = true;
        if (!ok) return false;
    }
    return true;
}

size_t td_expr_fix_operands(td_expr *e, const td_field *const *allowed) {
    if (!e) return 0;
    size_t k = 0;
    for (uint32_t c = 0; c < e->nchain && k < 64; c++) {
        td_enode *n = &e->nodes[e->chain[c]];
        if (n->op != E_SIN || n->fix) continue;
        for (size_t j = 0; allowed[j]; j++)
            if (allowed[j] == n->u.fm.f) {
                n->fix = (uint8_t)(++k);
                break;
            }
    }
    return k;
}

uint64_t td_expr_fixed_truth(const td_expr *e, const td_ctx *ctx) {
    uint64_t bits = 0;
    if (!e) return 0;
    run r = {e, ctx, NULL, NULL, 0, false, 0};
    for (uint32_t i = 0; i < e->nnodes; i++) {
        const td_enode *n = &e->nodes[i];
        if (!n->fix) continue;
        td_value x;
        if (xe_ev(&r, i, &x) == TD_OK && xe_truthy(&x)) bits |= 1ULL << (n->fix - 1);
    }
    return bits;
}

bool td_expr_conjunct_may_fail(const td_expr *e, size_t i) {
    if (!e || i >= e->nconj) return true;
    uint32_t end = i + 1 < e->nconj ? e->conj[i + 1] : e->nnodes;
    for (uint32_t k = e->conj[i]; k < end; k++) {
        switch ((eop)e->nodes[k].op) {
        case E_CONST:
        case E_FIELD:
        case E_FLD_I64:
        case E_FLD_OPT:
        case E_NOW:
        case E_NOT:
        case E_CMP_I:
        case E_CMP_S:
        case E_CMP_B:
        case E_CMP_IK:
        case E_IN_I:
        case E_IN_S:
        case E_IN_B:
        case E_SIN:
        case E_AND:
        case E_OR:
        case E_COAL:
        case E_HAS:
        case E_MIN:
        case E_MAX:
        case E_TOUCHES:
        case E_LASTFIRED:
        case E_LASTFIRED_K:
        case E_TAXCAP:
            continue;
        default:
            return true; /* overflow, division by zero, out-of-range times */
        }
    }
    return false;
}

size_t td_expr_conjuncts(const td_expr *e) { return e ? e->nconj : 0; }

const char *td_expr_conjunct_source(const td_expr *e, size_t i, size_t *len) {
    if (!e || i >= e->nconj) {
        if (len) *len = 0;
        return "";
    }
    const td_enode *n = &e->nodes[e->conj[i]];
    if (len) *len = n->len;
    return e->src + n->off;
}

int td_expr_eval_conjunct(const td_expr *e, size_t i, const td_ctx *ctx, td_value *out, char *err,
                          size_t errcap) {
    if (!e || i >= e->nconj) {
        if (err && errcap) snprintf(err, errcap, "no conjunct %zu", i);
        return TD_ERR;
    }
    return xe_eval_at(e, e->conj[i], ctx, out, err, errcap);
}

/* ------------------------------------------------------------------------ */
/* JSON rendering                                                           */
/* ------------------------------------------------------------------------ */

/*
 * td_value_json's output is the full JSON of the value cut to cap - 1 bytes
 * (even inside an escape), then a NUL. The full form is written straight
 * into buf when it fits whatever the bytes (numbers, bools, times, strings
 * of n bytes when 6 * n + 2 < cap); only a string that might not fit goes
 * through jw, which writes byte by byte and stops at cap - 1: the same
 * bytes, the same cut.
 */
typedef struct jw {
    char *buf;
    size_t cap, n;
} jw;

static void xe_jw_put(jw *w, const char *s, size_t len) {
    for (size_t k = 0; k < len; k++) {
        if (w->n + 1 >= w->cap) return;
        w->buf[w->n++] = s[k];
    }
}

/* s quoted and escaped as td_json_str_at escapes it, cut at the cap. */
static void xe_jw_quoted(jw *w, const char *s, size_t len) {
    char tmp[6 * 64 + 2];
    xe_jw_put(w, "\"", 1);
    for (size_t k = 0; k < len && w->n + 1 < w->cap; k += 64) {
        size_t n = len - k < 64 ? len - k : 64;
        char *end = td_json_str_at(tmp, s + k, n); /* "..." */
        xe_jw_put(w, tmp + 1, (size_t)(end - tmp) - 2);
    }
    xe_jw_put(w, "\"", 1);
}

/* A decimal, exactly: 12.5, 0.003, -1, 100, at o (room for 22 bytes: at
 * most 21, "-922337203685477.5808", and td_fmt_u64's NUL). @returns the
 * length. */
static size_t xe_jv_dec(char *o, td_dec d) {
    uint64_t u = d < 0 ? (uint64_t)0 - (uint64_t)d : (uint64_t)d;
    uint64_t whole = u / TD_DEC_SCALE;
    uint32_t frac = (uint32_t)(u % TD_DEC_SCALE);
    size_t n = 0;
    if (d < 0) o[n++] = '-';
    n += td_fmt_u64(whole, o + n);
    if (frac) { /* four digits, trailing zeros dropped */
        o[n++] = '.';
        for (uint32_t div = 1000; frac; div /= 10) {
            o[n++] = (char)('0' + frac / div);
            frac %= div;
        }
    }
    return n;
}

size_t td_value_json(const td_value *v, char *buf, size_t cap) {
    if (!buf || cap == 0) return 0;
    char tmp[64]; /* the longest non-string form: a time, a duration, INT64_MIN */
    const char *s;
    size_t n;
    if (!v || v->missing) {
        s = "null";
        n = 4;
    } else {
        switch (v->type) {
        case TD_T_BOOL:
            s = v->u.b ? "true" : "false";
            n = v->u.b ? 4 : 5;
            break;
        case TD_T_INT:
            n = td_fmt_i64(v->u.i, tmp);
            s = tmp;
            break;
        case TD_T_DEC:
            n = xe_jv_dec(tmp, v->u.d);
            s = tmp;
            break;
        case TD_T_STR: {
            const char *p = v->u.s.p ? v->u.s.p : "";
            size_t len = v->u.s.p ? v->u.s.n : 0;
            if (cap >= 3 && len <= (cap - 3) / 6) { /* 6 * len + 2 < cap */
                n = (size_t)(td_json_str_at(buf, p, len) - buf);
                buf[n] = '\0';
                return n;
            }
            jw w = {buf, cap, 0};
            xe_jw_quoted(&w, p, len);
            buf[w.n] = '\0';
            return w.n;
        }
        case TD_T_TIME:
        case TD_T_DUR: { /* digits, signs, units, 'T', ':', '.', 'Z': nothing to escape */
            size_t l = v->type == TD_T_TIME ? td_time_format(v->u.t, tmp + 1, sizeof tmp - 2)
                                            : td_duration_format(v->u.t, tmp + 1, sizeof tmp - 2);
            tmp[0] = '"';
            tmp[l + 1] = '"';
            n = l + 2;
            s = tmp;
            break;
        }
        default:
            s = "null";
            n = 4;
            break;
        }
    }
    if (n > cap - 1) n = cap - 1;
    memcpy(buf, s, n);
    buf[n] = '\0';
    return n;
}
