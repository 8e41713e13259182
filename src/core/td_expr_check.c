/*
 * td_expr_check.c - the rules expression language, middle and back end: the
 * type checker, the emitter, and td_expr_compile, which drives the whole
 * compile (td_expr_internal.h lists the other files; the contract is
 * td_expr.h; the reference for ops people is docs/rules-language.md).
 *
 * td_expr_compile: lex and parse (td_expr_parse.c), then
 *   check   types every node against the schema (td_schema_lookup), picks a
 *           type-specialised operation for it and inserts int->decimal
 *           conversions; ERROR nodes poison their parents silently so one
 *           mistake is reported once; unknown names get a "did you mean";
 *   emit    copies the reachable, checked nodes into a compact preorder array
 *           of td_enode (root at 0, fields resolved, constants pre-parsed),
 *           which td_expr_eval.c walks.
 *
 * Owns: each td_expr owns its source copy, node array, constant list and
 * string pool (td_expr_free releases them); values it returns borrow from it
 * or from the ctx's state.
 *
 * File-local functions are prefixed xc_ (expression check).
 *
 * @locality compile: the loading thread; a td_expr is immutable after
 * compile (but for td_expr_fix_operands, at load time).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "td_expr_internal.h"

/* Functions: name, arity, signature shown in diagnostics. */
enum {
    F_SINCE,
    F_LOCAL_HOUR,
    F_WEEKDAY,
    F_MONTH,
    F_YEAR,
    F_BEST_TIME,
    F_TOUCHES_WITHIN,
    F_HAS,
    F_MIN,
    F_MAX,
    F_ABS,
    F_BUSINESS_DAY,
    F_NEXT_BUSINESS_SLOT,
    F_LAST_FIRED,
    F_GIFT_TAX_CAP,
    F__COUNT
};
static const struct xc_fn_def {
    const char *name;
    unsigned nargs;
    const char *sig;
} xc_fns[F__COUNT] = {
    [F_SINCE] = {"since", 1, "since(time) -> duration"},
    [F_LOCAL_HOUR] = {"local_hour", 1, "local_hour(time) -> int"},
    [F_WEEKDAY] = {"weekday", 1, "weekday(time) -> int (1 = Monday .. 7 = Sunday)"},
    [F_MONTH] = {"month", 1, "month(time) -> int (1..12)"},
    [F_YEAR] = {"year", 1, "year(time) -> int"},
    [F_BEST_TIME] = {"best_time", 1, "best_time(time) -> time"},
    [F_TOUCHES_WITHIN] = {"touches_within", 1, "touches_within(duration) -> int"},
    [F_HAS] = {"has", 1, "has(any) -> bool"},
    [F_MIN] = {"min", 2, "min(a, b): two ints/decimals, two times or two durations"},
    [F_MAX] = {"max", 2, "max(a, b): two ints/decimals, two times or two durations"},
    [F_ABS] = {"abs", 1, "abs(int | decimal | duration)"},
    [F_BUSINESS_DAY] = {"business_day", 1, "business_day(time) -> bool"},
    [F_NEXT_BUSINESS_SLOT] = {"next_business_slot", 1, "next_business_slot(time) -> time"},
    [F_LAST_FIRED] = {"last_fired", 1, "last_fired(string rule id) -> time"},
    [F_GIFT_TAX_CAP] = {"gift_tax_cap_eur", 0, "gift_tax_cap_eur() -> decimal"},
};

/* ------------------------------------------------------------------------ */
/* names: did you mean                                                      */
/* ------------------------------------------------------------------------ */

/* Optimal string alignment distance (Levenshtein plus adjacent swaps, so
 * "emial" is one edit from "email"). Both lengths <= TD_EXPR_MAX_NAME. */
static unsigned xc_osa_distance(const char *a, size_t la, const char *b, size_t lb) {
    unsigned rows[3][TD_EXPR_MAX_NAME + 1];
    unsigned *pp = rows[0], *p = rows[1], *cur = rows[2];
    for (size_t j = 0; j <= lb; j++)
        p[j] = (unsigned)j;
    for (size_t i = 1; i <= la; i++) {
        cur[0] = (unsigned)i;
        for (size_t j = 1; j <= lb; j++) {
            unsigned cost = a[i - 1] != b[j - 1];
            unsigned v = p[j] + 1;
            if (cur[j - 1] + 1 < v) v = cur[j - 1] + 1;
            if (p[j - 1] + cost < v) v = p[j - 1] + cost;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && pp[j - 2] + 1 < v)
                v = pp[j - 2] + 1;
            cur[j] = v;
        }
        unsigned *t = pp;
        pp = p;
        p = cur;
        cur = t;
    }
    return p[lb];
}

/* The closest candidate to name, or NULL when none is close enough. */
static const char *xc_closest(const char *name, size_t len, const char *const *cands, size_t n,
                              size_t stride) {
    if (len == 0 || len > TD_EXPR_MAX_NAME) return NULL;
    unsigned limit = len <= 3 ? 1 : len <= 6 ? 2 : 3;
    const char *best = NULL, *suffix = NULL;
    unsigned bestd = limit + 1;
    size_t nsuffix = 0;
    for (size_t i = 0; i < n; i++) {
        const char *cand = *(const char *const *)((const char *)cands + i * stride);
        if (!cand) continue;
        size_t lc = strlen(cand);
        if (lc > TD_EXPR_MAX_NAME) continue;
        /* the distance is at least the length difference: skip hopeless ones */
        size_t diff = lc > len ? lc - len : len - lc;
        unsigned d = diff >= bestd ? bestd : xc_osa_distance(name, len, cand, lc);
        if (d < bestd) {
            bestd = d;
            best = cand;
        }
        /* "unanswered" -> "email.unanswered": the channel was left out */
        if (lc > len + 1 && cand[lc - len - 1] == '.' && !memcmp(cand + lc - len, name, len)) {
            if (!suffix) suffix = cand;
            nsuffix++;
        }
    }
    if (best) return best;
    return suffix;
}

static const char *xc_suggest_field(const char *name, size_t len) {
    size_t n = 0;
    if (len > TD_EXPR_MAX_NAME) return NULL;
    const td_field *f = td_schema_fields(&n);
    if (!f || !n) return NULL;
    return xc_closest(name, len, &f[0].name, n, sizeof *f);
}

static int xc_find_fn(const char *name, size_t len) {
    for (int i = 0; i < F__COUNT; i++)
        if (strlen(xc_fns[i].name) == len && !memcmp(xc_fns[i].name, name, len)) return i;
    return -1;
}

/* ------------------------------------------------------------------------ */
/* type checker                                                             */
/* ------------------------------------------------------------------------ */

/* "a bool", "an int" */
static const char *xc_aname(td_type t) {
    switch (t) {
    case TD_T_BOOL:
        return "a bool";
    case TD_T_INT:
        return "an int";
    case TD_T_DEC:
        return "a decimal";
    case TD_T_STR:
        return "a string";
    case TD_T_TIME:
        return "a time";
    case TD_T_DUR:
        return "a duration";
    default:
        return "nothing";
    }
}

static bool xc_is_num(td_type t) { return t == TD_T_INT || t == TD_T_DEC; }

static td_type xc_check(cx *c, uint32_t i);

/* Wraps child slot *slot (an int) in a decimal conversion. A literal is
 * converted in place (no runtime cost). */
static void xc_promote(cx *c, uint32_t *slot) {
    pnode *k = &c->nodes[*slot];
    if (k->type != TD_T_INT) return;
    if (k->kind == N_LIT) {
        int64_t d;
        if (__builtin_mul_overflow(k->k.u.i, (int64_t)TD_DEC_SCALE, &d)) {
            td_expr_report(c, "E208", k->off, k->len,
                           "integer used as a decimal is out of range (max ~9.2e14)");
            k->type = TD_T_NONE;
            k->kind = N_ERROR;
            return;
        }
        k->k.type = TD_T_DEC;
        k->k.u.d = d;
        k->type = TD_T_DEC;
        k->eop = E_CONST;
        return;
    }
    uint32_t child = *slot;
    uint32_t off = k->off, len = k->len;
    uint32_t n = td_expr_node(c, N_CONV, off, len);
    if (c->oom) return;
    c->nodes[n].a = child;
    c->nodes[n].type = TD_T_DEC;
    c->nodes[n].eop = E_I2D;
    c->nodes[n].depth = (uint16_t)(c->nodes[child].depth + 1);
    *slot = n;
}

static void xc_op_error(cx *c, const pnode *p, td_type ta, td_type tb, const char *hint) {
    td_expr_report(c, "E203", p->opoff, p->oplen, "cannot apply '%.*s' to %s and %s%s%s",
                   (int)p->oplen, c->src + p->opoff, xc_aname(ta), xc_aname(tb), hint ? ": " : "",
                   hint ? hint : "");
}

static td_type xc_check_arith(cx *c, uint32_t i, td_type ta, td_type tb) {
    pnode *p = &c->nodes[i];
    tok_kind op = (tok_kind)p->op;
    if (xc_is_num(ta) && xc_is_num(tb)) {
        bool dec = ta == TD_T_DEC || tb == TD_T_DEC;
        if (dec) {
            uint32_t a = p->a, b = p->b;
            xc_promote(c, &a);
            xc_promote(c, &b);
            p = &c->nodes[i]; /* xc_promote may have moved the array */
            p->a = a;
            p->b = b;
        }
        switch (op) {
        case T_PLUS:
            p->eop = E_ADD;
            break;
        case T_MINUS:
            p->eop = E_SUB;
            break;
        case T_STAR:
            p->eop = dec ? E_MUL_D : E_MUL_I;
            break;
        default:
            p->eop = dec ? E_DIV_D : E_DIV_I;
            break;
        }
        return dec ? TD_T_DEC : TD_T_INT;
    }
    switch (op) {
    case T_PLUS:
        p->eop = E_ADD;
        if (ta == TD_T_TIME && tb == TD_T_DUR) return TD_T_TIME;
        if (ta == TD_T_DUR && tb == TD_T_TIME) return TD_T_TIME;
        if (ta == TD_T_DUR && tb == TD_T_DUR) return TD_T_DUR;
        if (ta == TD_T_TIME && tb == TD_T_TIME)
            xc_op_error(c, p, ta, tb, "two times cannot be added; subtract them for a duration");
        else if (ta == TD_T_STR || tb == TD_T_STR)
            xc_op_error(c, p, ta, tb, "strings cannot be added");
        else if ((ta == TD_T_TIME && xc_is_num(tb)) || (tb == TD_T_TIME && xc_is_num(ta)))
            xc_op_error(c, p, ta, tb, "add a duration with its unit, e.g. now + 2h");
        else
            xc_op_error(c, p, ta, tb, NULL);
        return TD_T_NONE;
    case T_MINUS:
        p->eop = E_SUB;
        if (ta == TD_T_TIME && tb == TD_T_TIME) return TD_T_DUR;
        if (ta == TD_T_TIME && tb == TD_T_DUR) return TD_T_TIME;
        if (ta == TD_T_DUR && tb == TD_T_DUR) return TD_T_DUR;
        if (ta == TD_T_TIME && xc_is_num(tb))
            xc_op_error(c, p, ta, tb, "subtract a duration with its unit, e.g. now - 3d");
        else
            xc_op_error(c, p, ta, tb, NULL);
        return TD_T_NONE;
    case T_STAR:
        p->eop = E_MUL_I;
        if ((ta == TD_T_DUR && tb == TD_T_INT) || (ta == TD_T_INT && tb == TD_T_DUR))
            return TD_T_DUR;
        xc_op_error(c, p, ta, tb,
                    (ta == TD_T_DUR || tb == TD_T_DUR)
                        ? "a duration can only be multiplied by an int"
                        : NULL);
        return TD_T_NONE;
    default:
        p->eop = E_DIV_I;
        if (ta == TD_T_DUR && tb == TD_T_INT) return TD_T_DUR;
        xc_op_error(c, p, ta, tb,
                    ta == TD_T_DUR ? "a duration can only be divided by an int" : NULL);
        return TD_T_NONE;
    }
}

static td_type xc_check_compare(cx *c, uint32_t i, td_type ta, td_type tb) {
    pnode *p = &c->nodes[i];
    tok_kind op = (tok_kind)p->op;
    bool eq = op == T_EQ || op == T_NE;
    switch (op) {
    case T_LT:
        p->aux = CMP_LT;
        break;
    case T_LE:
        p->aux = CMP_LE;
        break;
    case T_GT:
        p->aux = CMP_GT;
        break;
    case T_GE:
        p->aux = CMP_GE;
        break;
    case T_EQ:
        p->aux = CMP_EQ;
        break;
    default:
        p->aux = CMP_NE;
        break;
    }
    if (xc_is_num(ta) && xc_is_num(tb)) {
        if (ta != tb) {
            uint32_t a = p->a, b = p->b;
            xc_promote(c, &a);
            xc_promote(c, &b);
            p = &c->nodes[i];
            p->a = a;
            p->b = b;
        }
        p->eop = E_CMP_I;
        return TD_T_BOOL;
    }
    if (ta == tb) {
        switch (ta) {
        case TD_T_STR:
            p->eop = E_CMP_S;
            return TD_T_BOOL;
        case TD_T_TIME:
        case TD_T_DUR:
            p->eop = E_CMP_I;
            return TD_T_BOOL;
        case TD_T_BOOL:
            if (eq) {
                p->eop = E_CMP_B;
                return TD_T_BOOL;
            }
            xc_op_error(c, p, ta, tb, "bools can only be compared with == and !=");
            return TD_T_NONE;
        default:
            break;
        }
    }
    if ((ta == TD_T_TIME && tb == TD_T_DUR) || (ta == TD_T_DUR && tb == TD_T_TIME))
        xc_op_error(
            c, p, ta, tb,
            "since(t) turns a time into the duration since it, e.g. since(email.last_sent_at) "
            ">= 72h");
    else if ((ta == TD_T_DUR && xc_is_num(tb)) || (tb == TD_T_DUR && xc_is_num(ta)))
        xc_op_error(c, p, ta, tb, "give the number a unit, e.g. 72h");
    else if (ta == TD_T_STR || tb == TD_T_STR)
        xc_op_error(c, p, ta, tb, "compare a string with a string literal, e.g. \"value\"");
    else
        xc_op_error(c, p, ta, tb, "both sides must have the same type");
    return TD_T_NONE;
}

static td_type xc_check_logic(cx *c, uint32_t i, td_type ta, td_type tb) {
    pnode *p = &c->nodes[i];
    bool ok = true;
    const uint32_t kids[2] = {p->a, p->b};
    const td_type ts[2] = {ta, tb};
    for (int k = 0; k < 2; k++) {
        if (ts[k] == TD_T_NONE) {
            ok = false;
        } else if (ts[k] != TD_T_BOOL) {
            const pnode *o = &c->nodes[kids[k]];
            td_expr_report(c, "E203", o->off, o->len,
                           "'%.*s' needs bool operands, but this is %s: compare it, e.g. x > 0",
                           (int)p->oplen, c->src + p->opoff, xc_aname(ts[k]));
            ok = false;
        }
    }
    p->eop = p->op == T_AND ? E_AND : E_OR;
    return ok ? TD_T_BOOL : TD_T_NONE;
}

static td_type xc_check_coalesce(cx *c, uint32_t i, td_type ta, td_type tb) {
    pnode *p = &c->nodes[i];
    p->eop = E_COAL;
    if (xc_is_num(ta) && xc_is_num(tb) && ta != tb) {
        uint32_t a = p->a, b = p->b;
        xc_promote(c, &a);
        xc_promote(c, &b);
        p = &c->nodes[i];
        p->a = a;
        p->b = b;
        return TD_T_DEC;
    }
    if (ta == tb) return ta;
    xc_op_error(c, p, ta, tb, "the fallback after ?? must have the type of the left side");
    return TD_T_NONE;
}

/* A constant list element: a literal (negative numbers are folded). */
static td_type xc_check_in(cx *c, uint32_t i) {
    uint32_t lhs = c->nodes[i].a;
    td_type tl = xc_check(c, lhs);
    uint32_t b = c->nodes[i].b, n = c->nodes[i].n;
    bool ok = tl != TD_T_NONE, any_dec = false;
    if (n == 0) {
        const pnode *p = &c->nodes[i];
        td_expr_report(c, "E209", p->opoff, p->oplen,
                       "'in' needs at least one element: an empty list is never matched");
        ok = false;
    }
    for (uint32_t j = 0; j < n; j++) {
        uint32_t e = c->kids[b + j];
        const pnode *en = &c->nodes[e];
        if (en->kind == N_ERROR) {
            ok = false;
            continue;
        }
        if (en->kind != N_LIT) {
            xc_check(c, e); /* still report unknown names inside */
            en = &c->nodes[e];
            td_expr_report(c, "E209", en->off, en->len,
                           "'in' list elements must be literals (\"a\", 3, 2.5, 72h, true)");
            ok = false;
            continue;
        }
        td_type te = en->k.type;
        c->nodes[e].type = (uint8_t)te;
        if (te == TD_T_DEC) any_dec = true;
        if (tl == TD_T_NONE) continue;
        if (!(te == tl || (xc_is_num(te) && xc_is_num(tl)))) {
            td_expr_report(
                c, "E209", en->off, en->len,
                "this list element is %s but the left side of 'in' is %s: list values of its type",
                xc_aname(te), xc_aname(tl));
            ok = false;
        }
    }
    if (!ok) return TD_T_NONE;
    td_type lt = tl;
    if (tl == TD_T_INT && any_dec) {
        uint32_t a = lhs;
        xc_promote(c, &a);
        c->nodes[i].a = a;
        lt = TD_T_DEC;
    }
    if (lt == TD_T_DEC) {
        for (uint32_t j = 0; j < n; j++) {
            uint32_t e = c->kids[b + j];
            xc_promote(c, &e);
            if (c->nodes[e].kind == N_ERROR) ok = false;
        }
    }
    pnode *p = &c->nodes[i];
    p->eop = lt == TD_T_STR ? E_IN_S : lt == TD_T_BOOL ? E_IN_B : E_IN_I;
    return ok ? TD_T_BOOL : TD_T_NONE;
}

static void xc_arg_error(cx *c, int fn, uint32_t arg, td_type got) {
    const pnode *a = &c->nodes[arg];
    td_expr_report(c, "E205", a->off, a->len, "%s() does not take %s here: %s", xc_fns[fn].name,
                   xc_aname(got), xc_fns[fn].sig);
}

static td_type xc_check_call(cx *c, uint32_t i) {
    uint32_t b = c->nodes[i].b, n = c->nodes[i].n;
    td_type ts[2] = {TD_T_NONE, TD_T_NONE};
    bool poisoned = false;
    for (uint32_t j = 0; j < n; j++) {
        td_type t = xc_check(c, c->kids[b + j]);
        if (t == TD_T_NONE) poisoned = true;
        if (j < 2) ts[j] = t;
    }
    const pnode *p = &c->nodes[i];
    const char *name = c->src + p->opoff;
    int fn = xc_find_fn(name, p->oplen);
    if (fn < 0) {
        const char *names[F__COUNT];
        for (int k = 0; k < F__COUNT; k++)
            names[k] = xc_fns[k].name;
        const char *s = xc_closest(name, p->oplen, names, F__COUNT, sizeof names[0]);
        if (s)
            td_expr_report(c, "E204", p->opoff, p->oplen,
                           "unknown function '%.*s': did you mean '%s'?", (int)p->oplen, name, s);
        else if (td_schema_lookup(name, p->oplen))
            td_expr_report(c, "E204", p->opoff, p->oplen,
                           "'%.*s' is a field, not a function: remove the parentheses",
                           (int)p->oplen, name);
        else
            td_expr_report(
                c, "E204", p->opoff, p->oplen,
                "unknown function '%.*s': the functions are since, local_hour, weekday, month, "
                "year, best_time, touches_within, has, min, max, abs, business_day, "
                "next_business_slot, last_fired, gift_tax_cap_eur",
                (int)(p->oplen > 40 ? 40 : p->oplen), name);
        return TD_T_NONE;
    }
    c->nodes[i].op = (uint8_t)fn;
    if (n != xc_fns[fn].nargs) {
        td_expr_report(c, "E205", p->opoff, p->len, "%s() takes %u argument%s, got %u: %s",
                       xc_fns[fn].name, xc_fns[fn].nargs, xc_fns[fn].nargs == 1 ? "" : "s", n,
                       xc_fns[fn].sig);
        return TD_T_NONE;
    }
    if (poisoned) return TD_T_NONE;
    uint32_t a0 = n > 0 ? c->kids[b] : 0, a1 = n > 1 ? c->kids[b + 1] : 0;
    pnode *q = &c->nodes[i];
    q->a = a0;
    q->b = a1;
    switch (fn) {
    case F_SINCE:
    case F_LOCAL_HOUR:
    case F_WEEKDAY:
    case F_MONTH:
    case F_YEAR:
    case F_BEST_TIME:
        if (ts[0] != TD_T_TIME) {
            xc_arg_error(c, fn, a0, ts[0]);
            return TD_T_NONE;
        }
        if (fn == F_SINCE) {
            q->eop = E_SINCE;
            return TD_T_DUR;
        }
        if (fn == F_BEST_TIME) {
            q->eop = E_BEST;
            return TD_T_TIME;
        }
        q->eop = E_LOCAL;
        q->aux = fn == F_LOCAL_HOUR ? LOC_HOUR
                 : fn == F_WEEKDAY  ? LOC_WEEKDAY
                 : fn == F_MONTH    ? LOC_MONTH
                                    : LOC_YEAR;
        return TD_T_INT;
    case F_TOUCHES_WITHIN:
        if (ts[0] != TD_T_DUR) {
            xc_arg_error(c, fn, a0, ts[0]);
            return TD_T_NONE;
        }
        q->eop = E_TOUCHES;
        return TD_T_INT;
    case F_HAS:
        q->eop = E_HAS;
        return TD_T_BOOL;
    case F_BUSINESS_DAY:
    case F_NEXT_BUSINESS_SLOT:
        if (ts[0] != TD_T_TIME) {
            xc_arg_error(c, fn, a0, ts[0]);
            return TD_T_NONE;
        }
        q->eop = fn == F_BUSINESS_DAY ? E_BIZDAY : E_NEXTBIZ;
        return fn == F_BUSINESS_DAY ? TD_T_BOOL : TD_T_TIME;
    case F_LAST_FIRED:
        if (ts[0] != TD_T_STR) {
            xc_arg_error(c, fn, a0, ts[0]);
            return TD_T_NONE;
        }
        q->eop = E_LASTFIRED;
        return TD_T_TIME;
    case F_GIFT_TAX_CAP:
        q->eop = E_TAXCAP;
        return TD_T_DEC;
    case F_ABS:
        if (ts[0] != TD_T_INT && ts[0] != TD_T_DEC && ts[0] != TD_T_DUR) {
            xc_arg_error(c, fn, a0, ts[0]);
            return TD_T_NONE;
        }
        q->eop = E_ABS;
        return ts[0];
    default: { /* min, max */
        td_type t0 = ts[0], t1 = ts[1];
        bool ok0 = xc_is_num(t0) || t0 == TD_T_TIME || t0 == TD_T_DUR;
        bool ok1 = xc_is_num(t1) || t1 == TD_T_TIME || t1 == TD_T_DUR;
        if (!ok0) xc_arg_error(c, fn, a0, t0);
        if (!ok1) xc_arg_error(c, fn, a1, t1);
        if (!ok0 || !ok1) return TD_T_NONE;
        if (xc_is_num(t0) && xc_is_num(t1)) {
            q->eop = fn == F_MIN ? E_MIN : E_MAX;
            if (t0 == t1) return t0;
            xc_promote(c, &a0);
            xc_promote(c, &a1);
            c->nodes[i].a = a0;
            c->nodes[i].b = a1;
            return TD_T_DEC;
        }
        if (t0 != t1) {
            td_expr_report(c, "E205", p->opoff, c->nodes[i].len,
                           "%s() needs two values of the same type, got %s and %s: %s",
                           xc_fns[fn].name, xc_aname(t0), xc_aname(t1), xc_fns[fn].sig);
            return TD_T_NONE;
        }
        q->eop = fn == F_MIN ? E_MIN : E_MAX;
        return t0;
    }
    }
}

static td_type xc_check_name(cx *c, uint32_t i) {
    pnode *p = &c->nodes[i];
    const char *name = c->src + p->off;
    const td_field *f = td_schema_lookup(name, p->len);
    if (!f && c->diags && c->diags->n >= TD_EXPR_MAX_DIAGS) {
        c->nerr++; /* not shown anyway: skip the suggestion search */
        return TD_T_NONE;
    }
    if (!f) {
        int len = (int)(p->len > 60 ? 60 : p->len);
        if (xc_find_fn(name, p->len) >= 0) {
            td_expr_report(c, "E201", p->off, p->len, "'%.*s' is a function: call it, e.g. %s", len,
                           name, xc_fns[xc_find_fn(name, p->len)].sig);
            return TD_T_NONE;
        }
        const char *s = xc_suggest_field(name, p->len);
        if (s)
            td_expr_report(c, "E201", p->off, p->len, "unknown field '%.*s': did you mean '%s'?",
                           len, name, s);
        else
            td_expr_report(c, "E201", p->off, p->len,
                           "unknown field '%.*s': docs/state.md lists the fields rules can read",
                           len, name);
        return TD_T_NONE;
    }
    if (f->scope != TD_FIELD_ANY && !(f->scope & c->scopes)) {
        if (f->scope & TD_FIELD_GUARD)
            td_expr_report(
                c, "E202", p->off, p->len,
                "'%s' is not allowed here: rec.* and target.* can only be read in a guard's "
                "block",
                f->name);
        else
            td_expr_report(c, "E202", p->off, p->len,
                           "'%s' is not allowed here: event.* can only be read "
                           "in a rule's when and at",
                           f->name);
        return TD_T_NONE;
    }
    p->f = f;
    p->eop = E_FIELD;
    return f->type;
}

static td_type xc_check(cx *c, uint32_t i) {
    pnode *p = &c->nodes[i];
    td_type t = TD_T_NONE;
    switch ((pkind)p->kind) {
    case N_ERROR:
        t = TD_T_NONE;
        break;
    case N_LIT:
        p->eop = E_CONST;
        t = p->k.type;
        break;
    case N_NOW:
        p->eop = E_NOW;
        t = TD_T_TIME;
        break;
    case N_NAME:
        t = xc_check_name(c, i);
        break;
    case N_CONV:
        t = TD_T_DEC;
        break;
    case N_UNARY: {
        td_type ta = xc_check(c, p->a);
        p = &c->nodes[i];
        if (ta == TD_T_NONE) break;
        if (p->op == T_NOT) {
            p->eop = E_NOT;
            if (ta == TD_T_BOOL)
                t = TD_T_BOOL;
            else
                td_expr_report(c, "E203", p->opoff, p->oplen,
                               "'!' needs a bool, but this is %s: compare it, e.g. !(x > 0)",
                               xc_aname(ta));
        } else {
            p->eop = E_NEG;
            if (ta == TD_T_INT || ta == TD_T_DEC || ta == TD_T_DUR)
                t = ta;
            else
                td_expr_report(c, "E203", p->opoff, p->oplen, "cannot negate %s", xc_aname(ta));
        }
        break;
    }
    case N_BINARY: {
        td_type ta = xc_check(c, p->a);
        td_type tb = xc_check(c, c->nodes[i].b);
        p = &c->nodes[i];
        tok_kind op = (tok_kind)p->op;
        if (op == T_AND || op == T_OR) {
            t = xc_check_logic(c, i, ta, tb);
            break;
        }
        if (ta == TD_T_NONE || tb == TD_T_NONE) break;
        switch (op) {
        case T_PLUS:
        case T_MINUS:
        case T_STAR:
        case T_SLASH:
            t = xc_check_arith(c, i, ta, tb);
            break;
        case T_COAL:
            t = xc_check_coalesce(c, i, ta, tb);
            break;
        default:
            t = xc_check_compare(c, i, ta, tb);
            break;
        }
        break;
    }
    case N_IN:
        t = xc_check_in(c, i);
        break;
    case N_CALL:
        t = xc_check_call(c, i);
        break;
    }
    c->nodes[i].type = (uint8_t)t;
    return t;
}

/* ------------------------------------------------------------------------ */
/* emit: parse nodes -> compact preorder td_enode array                     */
/* ------------------------------------------------------------------------ */

typedef struct emitter {
    cx *c;
    td_expr *e;
    uint32_t cap, capconst;
} emitter;

/* `field` or `(field ?? 'literal')` at parse node i: the field, and the
 * fallback literal in *fallback (NULL without one); NULL for anything else. */
static const td_field *xc_str_field_of(const cx *c, uint32_t i, const td_value **fallback) {
    const pnode *p = &c->nodes[i];
    *fallback = NULL;
    if (p->eop == E_FIELD) return p->f;
    if (p->eop == E_COAL && c->nodes[p->a].eop == E_FIELD && c->nodes[p->b].eop == E_CONST) {
        *fallback = &c->nodes[p->b].k;
        return c->nodes[p->a].f;
    }
    return NULL;
}

/*
 * Emits node `at` as E_SIN when parse node fi is a string field (or
 * `field ?? 'literal'`) compared with the literals of parse nodes lits[]
 * (`==`: one literal, `in`: the list; neg for `!=`). One node instead of
 * three or more, no string work for enum fields (stage, gift_policy...):
 * the result of every code is decided here, once. @returns false when the
 * shape does not fit (the caller emits the general form).
 */
static bool xc_emit_sin(emitter *m, uint32_t at, uint32_t fi, const uint32_t *lits, uint32_t nlits,
                        bool neg) {
    cx *c = m->c;
    td_expr *e = m->e;
    const td_value *fb;
    const td_field *f = xc_str_field_of(c, fi, &fb);
    if (!f || f->type != TD_T_STR) return false;
    if (!td_expr_grow((void **)&e->consts, &m->capconst, e->nconsts + nlits, sizeof(td_value))) {
        c->oom = true;
        return true;
    }
    uint32_t start = e->nconsts;
    for (uint32_t j = 0; j < nlits; j++)
        e->consts[e->nconsts++] = c->nodes[lits[j]].k;
    const td_value *k = e->consts + start;
    td_enode *n = &e->nodes[at];
    n->op = E_SIN;
    n->u.fm.f = f;
    n->u.fm.mask = 0;
    n->b = start;
    n->n = nlits;
    n->aux = neg ? SIN_NEG : 0;
    if (fb && td_expr_str_in(fb, k, nlits) != neg) n->aux |= SIN_MISSING;
    size_t off = 0;
    td_enum_name_fn name = NULL;
    if (td_field_direct(f, &off, &name) == TD_FA_ENUM && name && off <= UINT32_MAX) {
        uint64_t mask = 0;
        for (int code = 0; code < 64; code++) {
            const char *s = name(code);
            bool hit;
            if (!s || !*s) {
                hit = (n->aux & SIN_MISSING) != 0; /* the getter gives a missing value */
            } else {
                td_value v = {.type = TD_T_STR};
                v.u.s.p = s;
                v.u.s.n = (uint32_t)strlen(s);
                hit = td_expr_str_in(&v, k, nlits) != neg;
            }
            if (hit) mask |= 1ULL << code;
        }
        n->aux |= SIN_ENUM;
        n->a = (uint32_t)off;
        n->u.fm.mask = mask;
    }
    return true;
}

static uint32_t xc_emit(emitter *m, uint32_t i) {
    cx *c = m->c;
    td_expr *e = m->e;
    if (!td_expr_grow((void **)&e->nodes, &m->cap, e->nnodes + 1, sizeof(td_enode))) {
        c->oom = true;
        return 0;
    }
    uint32_t at = e->nnodes++;
    const pnode p = c->nodes[i];
    td_enode *n = &e->nodes[at];
    memset(n, 0, sizeof *n);
    n->op = p.eop;
    n->type = p.type;
    n->aux = p.aux;
    n->off = p.off;
    n->len = p.len;
    if (p.eop == E_CMP_S && (p.aux == CMP_EQ || p.aux == CMP_NE)) {
        uint32_t fi = p.a, ki = p.b; /* `field == 'x'`, or `'x' == field` */
        if (c->nodes[ki].eop != E_CONST) {
            fi = p.b;
            ki = p.a;
        }
        if (c->nodes[ki].eop == E_CONST && xc_emit_sin(m, at, fi, &ki, 1, p.aux == CMP_NE))
            return at;
    }
    if (p.eop == E_IN_S && xc_emit_sin(m, at, p.a, c->kids + p.b, p.n, false)) return at;
    switch ((eop)p.eop) {
    case E_CONST:
        n->u.k = p.k;
        break;
    case E_FIELD: {
        n->u.f = p.f;
        size_t off = 0;
        td_field_access a = td_field_direct(p.f, &off, NULL);
        if ((a == TD_FA_I64 || a == TD_FA_I64_OPT) && off <= UINT32_MAX) {
            n->op = a == TD_FA_I64 ? E_FLD_I64 : E_FLD_OPT;
            n->b = (uint32_t)off;
        }
        break;
    }
    case E_NOW:
        break;
    case E_IN_I:
    case E_IN_S:
    case E_IN_B: {
        uint32_t a = xc_emit(m, p.a);
        uint32_t start = e->nconsts;
        if (!td_expr_grow((void **)&e->consts, &m->capconst, e->nconsts + p.n, sizeof(td_value))) {
            c->oom = true;
            return at;
        }
        for (uint32_t j = 0; j < p.n; j++)
            e->consts[e->nconsts++] = c->nodes[c->kids[p.b + j]].k;
        n = &e->nodes[at];
        n->a = a;
        n->b = start;
        n->n = p.n;
        break;
    }
    case E_LASTFIRED:
        if (c->nodes[p.a].eop == E_CONST) {
            /* last_fired('rule.id'): hash the id once, here */
            const td_value *k = &c->nodes[p.a].k;
            n->op = E_LASTFIRED_K;
            n->u.key.id = k->u.s.p;
            n->u.key.len = k->u.s.n;
            n->u.key.hash = td_hash64(k->u.s.p, k->u.s.n, TD_HASH_SEED);
            break;
        }
        /* fall through */
    case E_NOT:
    case E_NEG:
    case E_I2D:
    case E_SINCE:
    case E_LOCAL:
    case E_BEST:
    case E_TOUCHES:
    case E_HAS:
    case E_ABS:
    case E_BIZDAY:
    case E_NEXTBIZ: {
        uint32_t a = xc_emit(m, p.a);
        e->nodes[at].a = a;
        break;
    }
    case E_TAXCAP: /* no operand */
        break;
    case E_CMP_I:
        if (c->nodes[p.b].eop == E_CONST) {
            /* `field >= 2`: the constant lives in the node, saving a
             * recursive call on the hottest shape of rule */
            uint32_t a = xc_emit(m, p.a);
            n = &e->nodes[at];
            n->op = E_CMP_IK;
            n->a = a;
            n->u.k = c->nodes[p.b].k;
            break;
        }
        /* fall through */
    default: { /* binary: both children */
        uint32_t a = xc_emit(m, p.a);
        uint32_t b = xc_emit(m, p.b);
        e->nodes[at].a = a;
        e->nodes[at].b = b;
        break;
    }
    }
    return at;
}

/*
 * `a && b && c` parses as ((a && b) && c): evaluated as a tree, each && is
 * a call. The node heading such a chain (an && that is not the left operand
 * of another &&; the same for ||) gets the list of its operands, left to
 * right, so the evaluator walks them in a loop. Same order, same
 * short-circuit, same result: an inner && only ever fed the outer one's
 * truth test. The inner nodes stay (explanations split the tree).
 * @returns false on out-of-memory.
 */
static bool xc_link_chains(td_expr *e) {
    uint32_t total = 0;
    for (uint32_t i = 0; i < e->nnodes; i++) {
        const td_enode *n = &e->nodes[i];
        if (n->op != E_AND && n->op != E_OR) continue;
        total += 2; /* an upper bound: each node adds at most its right operand + 1 */
    }
    if (!total) return true;
    e->chain = malloc(total * sizeof *e->chain);
    if (!e->chain) return false;
    /* left operands of a same-operator parent are not heads */
    bool *inner = calloc(e->nnodes, sizeof *inner);
    if (!inner) return false;
    for (uint32_t i = 0; i < e->nnodes; i++) {
        const td_enode *n = &e->nodes[i];
        if ((n->op == E_AND || n->op == E_OR) && e->nodes[n->a].op == n->op) inner[n->a] = true;
    }
    for (uint32_t i = 0; i < e->nnodes; i++) {
        td_enode *h = &e->nodes[i];
        if ((h->op != E_AND && h->op != E_OR) || inner[i]) continue;
        uint32_t depth = 0, m = i;
        while (e->nodes[m].op == h->op) { /* down the left spine */
            depth++;
            m = e->nodes[m].a;
        }
        uint32_t start = e->nchain;
        e->chain[e->nchain++] = m;           /* the leftmost operand */
        for (uint32_t k = depth; k-- > 0;) { /* then the right operands, bottom up */
            uint32_t s = i;
            for (uint32_t j = 0; j < k; j++)
                s = e->nodes[s].a;
            e->chain[e->nchain++] = e->nodes[s].b;
        }
        h->n = depth + 1;
        h->u.chain = start;
    }
    free(inner);
    return true;
}

/* Splits the top-level && chain (at any parenthesisation) into conjuncts. */
static void xc_collect_conjuncts(td_expr *e, uint32_t i, uint32_t *cap, bool *oom) {
    const td_enode *n = &e->nodes[i];
    if (n->op == E_AND) {
        uint32_t a = n->a, b = n->b;
        xc_collect_conjuncts(e, a, cap, oom);
        xc_collect_conjuncts(e, b, cap, oom);
        return;
    }
    if (!td_expr_grow((void **)&e->conj, cap, e->nconj + 1, sizeof(uint32_t))) {
        *oom = true;
        return;
    }
    e->conj[e->nconj++] = i;
}

void td_expr_free(td_expr *e) {
    if (!e) return;
    free(e->src);
    free(e->nodes);
    free(e->consts);
    free(e->pool);
    free(e->conj);
    free(e->chain);
    free(e);
}

td_expr *td_expr_compile(const char *src, size_t len, int scopes, td_type want,
                         td_expr_diags *diags) {
    cx c;
    memset(&c, 0, sizeof c);
    c.diags = diags;
    c.scopes = scopes;
    c.last_syntax = UINT32_MAX;
    c.src = src ? src : "";
    if (!src) len = 0;
    if (len > TD_EXPR_MAX_LEN) {
        c.len = 0;
        td_expr_report(&c, "E210", 0, 1,
                       "expression too long (%zu bytes, at most %d): split the rule", len,
                       TD_EXPR_MAX_LEN);
        return NULL;
    }
    c.len = (uint32_t)len;
    td_expr *e = calloc(1, sizeof *e);
    if (e) e->src = malloc(len + 1);
    if (e) e->pool = malloc(len + 1); /* unescaped strings are never longer */
    if (!e || !e->src || !e->pool) {
        td_expr_free(e);
        td_expr_report(&c, "E210", 0, 1, "out of memory compiling the expression");
        return NULL;
    }
    memcpy(e->src, c.src, len);
    e->src[len] = '\0';
    e->len = len;
    c.src = e->src; /* literals and diagnostics refer to our copy */
    c.pool = e->pool;

    td_expr_node(&c, N_ERROR, 0, 1); /* node 0: the fallback for out-of-memory */
    td_expr_lex(&c);
    uint32_t root = 0;
    if (!c.oom) {
        if (c.ntoks == 1) {
            td_expr_report(&c, "E207", 0, 1,
                           "empty expression: write a condition such as tier == 1");
        } else {
            root = td_expr_parse(&c);
            /* trailing garbage: report it, then parse (and check) what follows
             * so its mistakes are reported too */
            uint32_t extra;
            while (td_expr_parse_more(&c, &extra))
                xc_check(&c, extra);
        }
    }
    td_type t = TD_T_NONE;
    if (!c.oom && c.nerr == 0) {
        t = xc_check(&c, root);
    } else if (!c.oom && root) {
        xc_check(&c, root); /* more errors: unknown names, types */
    }
    if (!c.oom && c.nerr == 0 && want != TD_T_NONE && t != want) {
        if (want == TD_T_DEC && t == TD_T_INT) {
            xc_promote(&c, &root);
            t = TD_T_DEC;
        } else {
            const pnode *r = &c.nodes[root];
            const char *hint = want == TD_T_BOOL ? ": compare it, e.g. x > 0"
                               : want == TD_T_TIME && t == TD_T_DUR
                                   ? ": add it to a time, e.g. now + 2h"
                                   : "";
            td_expr_report(&c, "E206", r->off, r->len ? r->len : 1,
                           "this expression is %s, but %s is needed here%s", xc_aname(t),
                           xc_aname(want), hint);
        }
    }
    if (c.oom && c.nerr == 0)
        td_expr_report(&c, "E210", 0, 1, "out of memory compiling the expression");
    if (c.nerr) {
        free(c.toks);
        free(c.nodes);
        free(c.kids);
        td_expr_free(e);
        return NULL;
    }
    emitter m = {&c, e, 0, 0};
    xc_emit(&m, root);
    e->type = t;
    uint32_t capc = 0;
    bool oom = c.oom;
    if (!oom) xc_collect_conjuncts(e, 0, &capc, &oom);
    if (!oom && !xc_link_chains(e)) oom = true;
    if (!oom && e->nconj && t == TD_T_BOOL) {
        const td_enode *c0 = &e->nodes[e->conj[0]];
        if (c0->op == E_SIN && (c0->aux & SIN_ENUM)) {
            e->pre = true;
            e->pre_off = c0->a;
            e->pre_mask = c0->u.fm.mask;
        }
    }
    free(c.toks);
    free(c.nodes);
    free(c.kids);
    if (oom) {
        c.diags = diags;
        td_expr_report(&c, "E210", 0, 1, "out of memory compiling the expression");
        td_expr_free(e);
        return NULL;
    }
    return e;
}

td_type td_expr_type(const td_expr *e) { return e ? e->type : TD_T_NONE; }

const char *td_expr_source(const td_expr *e, size_t *len) {
    if (len) *len = e ? e->len : 0;
    return e ? e->src : "";
}
