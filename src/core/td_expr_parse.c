/*
 * td_expr_parse.c - the rules expression language, front end: diagnostics,
 * the lexer and the parser (td_expr_internal.h lists the other files; the
 * contract is td_expr.h).
 *
 *   lex     the whole source into a token array; literals are decoded here
 *           (strings unescaped into a pool the td_expr owns, numbers parsed
 *           exactly into int64 / td_dec, durations via td_duration_parse);
 *   parse   precedence climbing into a growable array of parse nodes (indices,
 *           not pointers, so the array may grow); a syntax error yields an
 *           ERROR node and parsing continues, so one compile reports many.
 *
 * Owns: the token array and the parse nodes of a compile context (cx), which
 * td_expr_compile (td_expr_check.c) frees; nothing outlives a compile.
 *
 * File-local functions are prefixed xp_ (expression parse).
 *
 * @locality the loading thread (called from td_expr_compile).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "td_expr_internal.h"
#include "td_time.h"

/* ------------------------------------------------------------------------ */
/* diagnostics                                                              */
/* ------------------------------------------------------------------------ */

void td_expr_diags_free(td_expr_diags *d) {
    if (!d) return;
    free(d->v);
    d->v = NULL;
    d->n = d->cap = 0;
}

/* ------------------------------------------------------------------------ */
/* tokens                                                                   */
/* ------------------------------------------------------------------------ */

static const char *xp_tok_text(tok_kind k) {
    switch (k) {
    case T_EOF:
        return "the end of the expression";
    case T_INT:
    case T_DEC:
        return "a number";
    case T_STR:
        return "a string";
    case T_DUR:
        return "a duration";
    case T_TRUE:
        return "'true'";
    case T_FALSE:
        return "'false'";
    case T_BAD:
        return "a bad literal";
    case T_NAME:
        return "a name";
    case T_NOW:
        return "'now'";
    case T_IN:
        return "'in'";
    case T_NOT:
        return "'!'";
    case T_MINUS:
        return "'-'";
    case T_STAR:
        return "'*'";
    case T_SLASH:
        return "'/'";
    case T_PLUS:
        return "'+'";
    case T_LT:
        return "'<'";
    case T_LE:
        return "'<='";
    case T_GT:
        return "'>'";
    case T_GE:
        return "'>='";
    case T_EQ:
        return "'=='";
    case T_NE:
        return "'!='";
    case T_AND:
        return "'&&'";
    case T_OR:
        return "'||'";
    case T_COAL:
        return "'?\?'";
    case T_LBRACK:
        return "'['";
    case T_RBRACK:
        return "']'";
    case T_LPAREN:
        return "'('";
    case T_RPAREN:
        return "')'";
    case T_COMMA:
        return "','";
    }
    return "?";
}

/* ------------------------------------------------------------------------ */
/* compile context                                                          */
/* ------------------------------------------------------------------------ */

void td_expr_report(cx *c, const char *code, uint32_t off, uint32_t len, const char *fmt, ...) {
    c->nerr++;
    if (!c->diags || c->diags->n >= TD_EXPR_MAX_DIAGS) return;
    if (c->diags->n == c->diags->cap) {
        size_t cap = c->diags->cap ? c->diags->cap * 2 : 8;
        td_expr_diag *v = realloc(c->diags->v, cap * sizeof *v);
        if (!v) return; /* the error still counts: compile fails */
        c->diags->v = v;
        c->diags->cap = cap;
    }
    td_expr_diag *d = &c->diags->v[c->diags->n++];
    memset(d, 0, sizeof *d);
    if (off > c->len) off = c->len;
    d->offset = off;
    d->length = len ? len : 1;
    td_strlcpy(d->code, code, sizeof d->code);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->msg, sizeof d->msg, fmt, ap);
    va_end(ap);
}

bool td_expr_grow(void **p, uint32_t *cap, uint32_t need, size_t elem) {
    if (need <= *cap) return true;
    uint32_t n = *cap ? *cap : 16;
    while (n < need)
        n *= 2;
    void *q = realloc(*p, (size_t)n * elem);
    if (!q) return false;
    *p = q;
    *cap = n;
    return true;
}

/* ------------------------------------------------------------------------ */
/* lexer                                                                    */
/* ------------------------------------------------------------------------ */

static bool xp_is_digit(char ch) { return ch >= '0' && ch <= '9'; }
static bool xp_is_alpha(char ch) {
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_';
}
static bool xp_is_alnum(char ch) { return xp_is_alpha(ch) || xp_is_digit(ch); }

static void xp_push_tok(cx *c, tok_kind k, uint32_t off, uint32_t len, const td_value *v) {
    if (!td_expr_grow((void **)&c->toks, &c->captoks, c->ntoks + 1, sizeof(tok))) {
        c->oom = true;
        return;
    }
    tok *t = &c->toks[c->ntoks++];
    memset(t, 0, sizeof *t);
    t->kind = (uint8_t)k;
    t->off = off;
    t->len = len;
    if (v) t->v = *v;
}

/* A number: digits, optional .digits (<= 4), or a duration (digits followed
 * by unit letters, possibly several groups: 1h30m). */
static void xp_lex_number(cx *c, uint32_t *ip) {
    const char *s = c->src;
    uint32_t i = *ip, start = i;
    while (i < c->len && xp_is_digit(s[i]))
        i++;
    td_value v;
    memset(&v, 0, sizeof v);
    if (i < c->len && xp_is_alpha(s[i])) {
        while (i < c->len && xp_is_alnum(s[i]))
            i++;
        td_ms d;
        if (td_duration_parse(s + start, i - start, &d) != TD_OK) {
            td_expr_report(
                c, "E208", start, i - start,
                "bad duration '%.*s': write <integer><unit> groups with units ms s m h d w, "
                "e.g. 72h, 3d, 1h30m",
                (int)(i - start > 40 ? 40 : i - start), s + start);
            xp_push_tok(c, T_BAD, start, i - start, NULL);
        } else {
            v.type = TD_T_DUR;
            v.u.t = d;
            xp_push_tok(c, T_DUR, start, i - start, &v);
        }
        *ip = i;
        return;
    }
    bool bad = false;
    int64_t whole = 0;
    for (uint32_t j = start; j < i; j++) {
        if (__builtin_mul_overflow(whole, 10, &whole) ||
            __builtin_add_overflow(whole, s[j] - '0', &whole))
            bad = true;
    }
    if (i + 1 < c->len && s[i] == '.' && xp_is_digit(s[i + 1])) {
        uint32_t f0 = ++i;
        while (i < c->len && xp_is_digit(s[i]))
            i++;
        if (i < c->len && xp_is_alpha(s[i])) {
            while (i < c->len && xp_is_alnum(s[i]))
                i++;
            td_expr_report(
                c, "E208", start, i - start,
                "bad literal '%.*s': a duration takes whole units (write 1h30m, not 1.5h)",
                (int)(i - start > 40 ? 40 : i - start), s + start);
            xp_push_tok(c, T_BAD, start, i - start, NULL);
            *ip = i;
            return;
        }
        if (i - f0 > 4) {
            td_expr_report(
                c, "E208", start, i - start,
                "decimal '%.*s' has more than 4 digits after the point: decimals are exact "
                "to 0.0001",
                (int)(i - start > 40 ? 40 : i - start), s + start);
            xp_push_tok(c, T_BAD, start, i - start, NULL);
            *ip = i;
            return;
        }
        int64_t frac = 0;
        uint32_t nd = 0;
        for (uint32_t j = f0; j < i; j++, nd++)
            frac = frac * 10 + (s[j] - '0');
        for (; nd < 4; nd++)
            frac *= 10;
        int64_t d;
        if (bad || __builtin_mul_overflow(whole, (int64_t)TD_DEC_SCALE, &d) ||
            __builtin_add_overflow(d, frac, &d)) {
            td_expr_report(c, "E208", start, i - start,
                           "decimal '%.*s' is out of range (max ~9.2e14)",
                           (int)(i - start > 40 ? 40 : i - start), s + start);
            xp_push_tok(c, T_BAD, start, i - start, NULL);
        } else {
            v.type = TD_T_DEC;
            v.u.d = d;
            xp_push_tok(c, T_DEC, start, i - start, &v);
        }
        *ip = i;
        return;
    }
    if (bad) {
        td_expr_report(c, "E208", start, i - start,
                       "integer '%.*s' is out of range (the largest is 9223372036854775807)",
                       (int)(i - start > 40 ? 40 : i - start), s + start);
        xp_push_tok(c, T_BAD, start, i - start, NULL);
    } else {
        v.type = TD_T_INT;
        v.u.i = whole;
        xp_push_tok(c, T_INT, start, i - start, &v);
    }
    *ip = i;
}

static void xp_lex_string(cx *c, uint32_t *ip) {
    const char *s = c->src;
    uint32_t i = *ip, start = i;
    char q = s[i++];
    uint32_t p0 = c->npool;
    bool bad = false;
    for (;;) {
        if (i >= c->len) {
            td_expr_report(c, "E208", start, i - start,
                           "unterminated string: close it with %c (inside, write \\%c for a quote)",
                           q, q);
            xp_push_tok(c, T_BAD, start, i - start, NULL);
            *ip = i;
            return;
        }
        char ch = s[i];
        if (ch == q) {
            i++;
            break;
        }
        if (ch == '\\') {
            if (i + 1 >= c->len) {
                i++;
                continue; /* reported as unterminated above */
            }
            char e = s[i + 1];
            char out;
            switch (e) {
            case '\\':
                out = '\\';
                break;
            case '"':
                out = '"';
                break;
            case '\'':
                out = '\'';
                break;
            case 'n':
                out = '\n';
                break;
            default:
                td_expr_report(c, "E208", i, 2,
                               "unknown escape '\\%c' in a string: use \\\\ \\\" \\' or \\n",
                               (e >= 32 && e < 127) ? e : '?');
                bad = true;
                out = e;
                break;
            }
            c->pool[c->npool++] = out;
            i += 2;
            continue;
        }
        c->pool[c->npool++] = ch;
        i++;
    }
    if (bad) {
        xp_push_tok(c, T_BAD, start, i - start, NULL);
    } else {
        td_value v;
        memset(&v, 0, sizeof v);
        v.type = TD_T_STR;
        v.u.s.p = c->pool + p0;
        v.u.s.n = c->npool - p0;
        xp_push_tok(c, T_STR, start, i - start, &v);
    }
    *ip = i;
}

void td_expr_lex(cx *c) {
    const char *s = c->src;
    uint32_t i = 0, n = c->len;
    while (i < n && !c->oom) {
        char ch = s[i];
        if (ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r') {
            i++;
            continue;
        }
        if (xp_is_digit(ch)) {
            xp_lex_number(c, &i);
            continue;
        }
        if (ch == '"' || ch == '\'') {
            xp_lex_string(c, &i);
            continue;
        }
        if (xp_is_alpha(ch)) {
            uint32_t start = i;
            for (;;) {
                while (i < n && xp_is_alnum(s[i]))
                    i++;
                /* a dot joins segments; a segment may start with a digit
                 * (touches.7d) */
                if (i + 1 < n && s[i] == '.' && xp_is_alnum(s[i + 1])) {
                    i++;
                    continue;
                }
                break;
            }
            uint32_t len = i - start;
            tok_kind k = T_NAME;
            td_value v;
            memset(&v, 0, sizeof v);
            if (len == 3 && !memcmp(s + start, "now", 3))
                k = T_NOW;
            else if (len == 2 && !memcmp(s + start, "in", 2))
                k = T_IN;
            else if (len == 4 && !memcmp(s + start, "true", 4)) {
                k = T_TRUE;
                v.type = TD_T_BOOL;
                v.u.b = true;
            } else if (len == 5 && !memcmp(s + start, "false", 5)) {
                k = T_FALSE;
                v.type = TD_T_BOOL;
            }
            xp_push_tok(c, k, start, len, &v);
            continue;
        }
        char nx = i + 1 < n ? s[i + 1] : 0;
        tok_kind k;
        uint32_t len = 1;
        switch (ch) {
        case '!':
            k = nx == '=' ? (len = 2, T_NE) : T_NOT;
            break;
        case '-':
            k = T_MINUS;
            break;
        case '*':
            k = T_STAR;
            break;
        case '/':
            k = T_SLASH;
            break;
        case '+':
            k = T_PLUS;
            break;
        case '<':
            k = nx == '=' ? (len = 2, T_LE) : T_LT;
            break;
        case '>':
            k = nx == '=' ? (len = 2, T_GE) : T_GT;
            break;
        case '[':
            k = T_LBRACK;
            break;
        case ']':
            k = T_RBRACK;
            break;
        case '(':
            k = T_LPAREN;
            break;
        case ')':
            k = T_RPAREN;
            break;
        case ',':
            k = T_COMMA;
            break;
        case '=':
            k = T_EQ;
            if (nx == '=')
                len = 2;
            else
                td_expr_report(c, "E207", i, 1, "'=' is not an operator: write == to compare");
            break;
        case '&':
            k = T_AND;
            if (nx == '&')
                len = 2;
            else
                td_expr_report(c, "E207", i, 1, "'&' is not an operator: write && for 'and'");
            break;
        case '|':
            k = T_OR;
            if (nx == '|')
                len = 2;
            else
                td_expr_report(c, "E207", i, 1, "'|' is not an operator: write || for 'or'");
            break;
        case '?':
            k = T_COAL;
            if (nx == '?')
                len = 2;
            else
                td_expr_report(
                    c, "E207", i, 1,
                    "'?' is not an operator: write x ?? y for 'x, or y when x is missing'");
            break;
        default: {
            /* skip one whole UTF-8 sequence so the caret covers it */
            uint32_t l = 1;
            while (i + l < n && ((unsigned char)s[i + l] & 0xC0) == 0x80 && l < 4)
                l++;
            if ((unsigned char)ch >= 32 && (unsigned char)ch < 127)
                td_expr_report(c, "E207", i, l, "unexpected character '%c'", ch);
            else
                td_expr_report(c, "E207", i, l, "unexpected character (byte 0x%02x)",
                               (unsigned char)ch);
            i += l;
            continue;
        }
        }
        xp_push_tok(c, k, i, len, NULL);
        i += len;
    }
    xp_push_tok(c, T_EOF, n, 0, NULL);
}

/* ------------------------------------------------------------------------ */
/* parser                                                                   */
/* ------------------------------------------------------------------------ */

static const tok *xp_peek(const cx *c) {
    static const tok eof = {T_EOF, 0, 0, {0}};
    if (c->fatal || c->pos >= c->ntoks) return &eof;
    return &c->toks[c->pos];
}
static void xp_advance(cx *c) {
    if (c->pos + 1 < c->ntoks) c->pos++;
}

uint32_t td_expr_node(cx *c, pkind kind, uint32_t off, uint32_t len) {
    if (!td_expr_grow((void **)&c->nodes, &c->capnodes, c->nnodes + 1, sizeof(pnode))) {
        c->oom = true;
        c->fatal = true;
        return 0; /* node 0 is always the reserved ERROR node */
    }
    pnode *p = &c->nodes[c->nnodes];
    memset(p, 0, sizeof *p);
    p->kind = (uint8_t)kind;
    p->off = off;
    p->len = len;
    p->depth = 1;
    return c->nnodes++;
}

static uint32_t xp_mk_error(cx *c, uint32_t off, uint32_t len) {
    return td_expr_node(c, N_ERROR, off, len);
}

static void xp_set_depth(cx *c, uint32_t i, uint32_t child_depth) {
    if (child_depth + 1 > TD_EXPR_MAX_DEPTH) {
        if (!c->fatal) {
            td_expr_report(c, "E210", c->nodes[i].off, 1,
                           "expression too deeply nested (more than %d levels): split the rule",
                           TD_EXPR_MAX_DEPTH);
            c->fatal = true;
        }
        c->nodes[i].depth = TD_EXPR_MAX_DEPTH;
        return;
    }
    if (child_depth + 1 > c->nodes[i].depth) c->nodes[i].depth = (uint16_t)(child_depth + 1);
}

static void xp_syntax(cx *c, const tok *t, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void xp_syntax(cx *c, const tok *t, const char *fmt, ...) {
    if (c->fatal) return;
    if (c->last_syntax == t->off) return; /* one per spot */
    c->last_syntax = t->off;
    char msg[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    td_expr_report(c, "E207", t->off, t->len, "%s", msg);
}

static bool xp_push_kid(cx *c, uint32_t k) {
    if (!td_expr_grow((void **)&c->kids, &c->capkids, c->nkids + 1, sizeof(uint32_t))) {
        c->oom = true;
        c->fatal = true;
        return false;
    }
    c->kids[c->nkids++] = k;
    return true;
}

static uint32_t xp_parse_bin(cx *c, int minprec);

static int xp_binprec(tok_kind k) {
    switch (k) {
    case T_OR:
        return 1;
    case T_AND:
        return 2;
    case T_EQ:
    case T_NE:
        return 3;
    case T_LT:
    case T_LE:
    case T_GT:
    case T_GE:
    case T_IN:
        return 4;
    case T_COAL:
        return 5;
    case T_PLUS:
    case T_MINUS:
        return 6;
    case T_STAR:
    case T_SLASH:
        return 7;
    default:
        return 0;
    }
}

/* Parses a comma-separated list up to `close`; children go to c->kids (they
 * are collected on a temporary stack first because nested lists interleave). */
static void xp_parse_list(cx *c, tok_kind close, const tok *open, uint32_t node) {
    uint32_t tmp[64], ntmp = 0, *heap = NULL, nheap = 0, capheap = 0;
    if (xp_peek(c)->kind != close) {
        for (;;) {
            uint32_t e = xp_parse_bin(c, 1);
            if (ntmp < 64)
                tmp[ntmp++] = e;
            else if (td_expr_grow((void **)&heap, &capheap, nheap + 1, sizeof(uint32_t)))
                heap[nheap++] = e;
            else
                c->oom = true;
            if (xp_peek(c)->kind == T_COMMA) {
                xp_advance(c);
                if (xp_peek(c)->kind == close) break; /* trailing comma */
                continue;
            }
            break;
        }
    }
    const tok *t = xp_peek(c);
    if (t->kind == close) {
        xp_advance(c);
        c->nodes[node].len = t->off + t->len - c->nodes[node].off;
    } else {
        xp_syntax(c, t, "expected %s to close the %s at offset %u, found %s", xp_tok_text(close),
                  xp_tok_text((tok_kind)open->kind), open->off, xp_tok_text((tok_kind)t->kind));
        c->nodes[node].len = t->off - c->nodes[node].off;
        if (c->nodes[node].len == 0) c->nodes[node].len = 1;
    }
    c->nodes[node].b = c->nkids;
    uint32_t maxd = 0;
    for (uint32_t j = 0; j < ntmp + nheap; j++) {
        uint32_t e = j < ntmp ? tmp[j] : heap[j - ntmp];
        if (!xp_push_kid(c, e)) break;
        if (c->nodes[e].depth > maxd) maxd = c->nodes[e].depth;
    }
    c->nodes[node].n = ntmp + nheap;
    xp_set_depth(c, node, maxd);
    free(heap);
}

static uint32_t xp_parse_unary(cx *c);

static uint32_t xp_parse_primary(cx *c) {
    const tok *t = xp_peek(c);
    switch ((tok_kind)t->kind) {
    case T_INT:
    case T_DEC:
    case T_STR:
    case T_DUR:
    case T_TRUE:
    case T_FALSE: {
        uint32_t n = td_expr_node(c, N_LIT, t->off, t->len);
        c->nodes[n].k = t->v;
        xp_advance(c);
        return n;
    }
    case T_BAD: {
        uint32_t n = xp_mk_error(c, t->off, t->len);
        xp_advance(c);
        return n;
    }
    case T_NOW: {
        uint32_t n = td_expr_node(c, N_NOW, t->off, t->len);
        xp_advance(c);
        return n;
    }
    case T_NAME: {
        tok name = *t;
        xp_advance(c);
        if (xp_peek(c)->kind == T_LPAREN) {
            tok open = *xp_peek(c);
            xp_advance(c);
            uint32_t n = td_expr_node(c, N_CALL, name.off, name.len);
            c->nodes[n].opoff = name.off;
            c->nodes[n].oplen = name.len;
            xp_parse_list(c, T_RPAREN, &open, n);
            return n;
        }
        uint32_t n = td_expr_node(c, N_NAME, name.off, name.len);
        return n;
    }
    case T_LPAREN: {
        tok open = *t;
        xp_advance(c);
        uint32_t inner = xp_parse_bin(c, 1);
        const tok *cl = xp_peek(c);
        if (cl->kind == T_RPAREN) {
            /* the span includes the parentheses: conjunct sources read well */
            c->nodes[inner].off = open.off;
            c->nodes[inner].len = cl->off + 1 - open.off;
            xp_advance(c);
        } else {
            xp_syntax(c, cl, "expected ')' to close the '(' at offset %u, found %s", open.off,
                      xp_tok_text((tok_kind)cl->kind));
        }
        return inner;
    }
    default:
        break;
    }
    xp_syntax(c, t, "expected a value (a field, a literal, a function call or '('), found %s",
              xp_tok_text((tok_kind)t->kind));
    uint32_t n = xp_mk_error(c, t->off, t->len ? t->len : 1);
    /* consume what nobody else can use, so the parse moves on; keep binary
     * operators and closers for the callers that can continue from them */
    if (t->kind != T_EOF && !xp_binprec((tok_kind)t->kind) && t->kind != T_RPAREN &&
        t->kind != T_RBRACK && t->kind != T_COMMA)
        xp_advance(c);
    return n;
}

static uint32_t xp_parse_unary(cx *c) {
    if (++c->nest > TD_EXPR_MAX_DEPTH / 2) {
        const tok *t = xp_peek(c);
        if (!c->fatal) {
            td_expr_report(c, "E210", t->off, t->len ? t->len : 1,
                           "expression too deeply nested (more than %d levels): split the rule",
                           TD_EXPR_MAX_DEPTH / 2);
            c->fatal = true;
        }
        c->nest--;
        return xp_mk_error(c, t->off, 1);
    }
    const tok *t = xp_peek(c);
    uint32_t r;
    if (t->kind == T_NOT || t->kind == T_MINUS) {
        tok op = *t;
        xp_advance(c);
        uint32_t a = xp_parse_unary(c);
        pnode *an = &c->nodes[a];
        if (op.kind == T_MINUS && an->kind == N_LIT &&
            (an->k.type == TD_T_INT || an->k.type == TD_T_DEC || an->k.type == TD_T_DUR)) {
            /* fold "-5" into a literal: lets `in [-1, 0]` hold constants;
             * literals are lexed non-negative, and folding twice (--5) gives
             * a non-negative one back, so the negation never overflows */
            uint32_t end = an->off + an->len;
            an->k.u.i = -an->k.u.i;
            an->off = op.off;
            an->len = end - op.off;
            r = a;
        } else {
            r = td_expr_node(c, N_UNARY, op.off, c->nodes[a].off + c->nodes[a].len - op.off);
            c->nodes[r].op = op.kind;
            c->nodes[r].opoff = op.off;
            c->nodes[r].oplen = op.len;
            c->nodes[r].a = a;
            xp_set_depth(c, r, c->nodes[a].depth);
        }
    } else {
        r = xp_parse_primary(c);
    }
    c->nest--;
    return r;
}

static uint32_t xp_parse_bin(cx *c, int minprec) {
    uint32_t lhs = xp_parse_unary(c);
    for (;;) {
        const tok *t = xp_peek(c);
        int pr = xp_binprec((tok_kind)t->kind);
        if (pr == 0 || pr < minprec) break;
        tok op = *t;
        xp_advance(c);
        uint32_t n;
        if (op.kind == T_IN) {
            n = td_expr_node(c, N_IN, c->nodes[lhs].off, 0);
            c->nodes[n].a = lhs;
            c->nodes[n].opoff = op.off;
            c->nodes[n].oplen = op.len;
            const tok *lb = xp_peek(c);
            if (lb->kind == T_LBRACK) {
                tok open = *lb;
                xp_advance(c);
                xp_parse_list(c, T_RBRACK, &open, n);
                /* xp_parse_list measured from the node start: fine */
            } else {
                xp_syntax(c, lb, "expected '[' after 'in': write x in [\"a\", \"b\"]");
                c->nodes[n].kind = N_ERROR;
                c->nodes[n].len = op.off + op.len - c->nodes[n].off;
            }
            xp_set_depth(c, n, c->nodes[lhs].depth);
        } else {
            uint32_t rhs = xp_parse_bin(c, pr + 1);
            uint32_t off = c->nodes[lhs].off;
            uint32_t end = c->nodes[rhs].off + c->nodes[rhs].len;
            if (end < op.off + op.len) end = op.off + op.len;
            n = td_expr_node(c, N_BINARY, off, end - off);
            c->nodes[n].op = op.kind;
            c->nodes[n].opoff = op.off;
            c->nodes[n].oplen = op.len;
            c->nodes[n].a = lhs;
            c->nodes[n].b = rhs;
            uint32_t d = c->nodes[lhs].depth > c->nodes[rhs].depth ? c->nodes[lhs].depth
                                                                   : c->nodes[rhs].depth;
            xp_set_depth(c, n, d);
        }
        lhs = n;
    }
    return lhs;
}

bool td_expr_parse_more(cx *c, uint32_t *extra) {
    if (c->fatal || xp_peek(c)->kind == T_EOF) return false;
    const tok *t = xp_peek(c);
    xp_syntax(c, t,
              "unexpected %s after a complete expression: a missing operator "
              "(&&, ||, ==...)?",
              xp_tok_text((tok_kind)t->kind));
    xp_advance(c);
    if (xp_peek(c)->kind == T_EOF) return false;
    *extra = xp_parse_bin(c, 1);
    return true;
}

uint32_t td_expr_parse(cx *c) { return xp_parse_bin(c, 1); }
