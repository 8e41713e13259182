/*
 * td_expr.c - the rules expression language: lexer, parser, type checker,
 * compiler and evaluator (the contract is td_expr.h; the reference for ops
 * people is docs/rules-language.md).
 *
 * Pipeline, all inside td_expr_compile:
 *   lex     the whole source into a token array; literals are decoded here
 *           (strings unescaped into a pool the td_expr owns, numbers parsed
 *           exactly into int64 / td_dec, durations via td_duration_parse);
 *   parse   precedence climbing into a growable array of parse nodes (indices,
 *           not pointers, so the array may grow); a syntax error yields an
 *           ERROR node and parsing continues, so one compile reports many;
 *   check   types every node against the schema (td_schema_lookup), picks a
 *           type-specialised operation for it and inserts int->decimal
 *           conversions; ERROR nodes poison their parents silently so one
 *           mistake is reported once;
 *   emit    copies the reachable, checked nodes into a compact preorder array
 *           of td_enode (root at 0, fields resolved, constants pre-parsed).
 *
 * Evaluation (td_expr_eval) walks that array recursively. It never allocates
 * and never re-parses; every operation is chosen at compile time, so the hot
 * path is one switch per node. Depth is bounded at compile time
 * (TD_EXPR_MAX_DEPTH), so the recursion cannot overflow the stack. Integer
 * arithmetic goes through __builtin_*_overflow: overflow and division by
 * zero are TD_ERR with a message naming the sub-expression, never UB.
 *
 * Owns: each td_expr owns its source copy, node array, constant list and
 * string pool; values it returns borrow from it or from the ctx's state.
 *
 * @locality compile: the loading thread; eval: any thread (a td_expr is
 * immutable after compile).
 */
#include "td_expr.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "td_calendar.h"
#include "td_schedule.h"
#include "td_time.h"

/* Limits: rules expressions are one line of a rules file; these only stop a
 * hostile or broken input from costing unbounded memory or stack. */
#define TD_EXPR_MAX_LEN 16384 /* bytes of source */
#define TD_EXPR_MAX_DEPTH 200 /* nesting of the tree (recursion bound) */
#define TD_EXPR_MAX_DIAGS 64  /* diagnostics per expression */
#define TD_EXPR_MAX_NAME 128  /* longest name we try to suggest for */

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

typedef enum tok_kind {
    T_EOF = 0,
    T_INT,
    T_DEC,
    T_STR,
    T_DUR,
    T_TRUE,
    T_FALSE, /* literals */
    T_BAD,   /* a literal already reported */
    T_NAME,
    T_NOW,
    T_IN,
    T_NOT,
    T_MINUS,
    T_STAR,
    T_SLASH,
    T_PLUS,
    T_LT,
    T_LE,
    T_GT,
    T_GE,
    T_EQ,
    T_NE,
    T_AND,
    T_OR,
    T_COAL,
    T_LBRACK,
    T_RBRACK,
    T_LPAREN,
    T_RPAREN,
    T_COMMA
} tok_kind;

typedef struct tok {
    uint8_t kind;
    uint32_t off, len;
    td_value v; /* literals */
} tok;

static const char *tok_text(tok_kind k) {
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
/* parse nodes                                                              */
/* ------------------------------------------------------------------------ */

typedef enum pkind {
    N_ERROR = 0, /* already reported; poisons its parents */
    N_LIT,
    N_NAME,
    N_NOW,
    N_UNARY,  /* op = T_NOT / T_MINUS, a */
    N_BINARY, /* op, a, b */
    N_IN,     /* a = lhs, kids[b .. b + n) = elements */
    N_CALL,   /* fn name span = opoff/oplen, kids[b .. b + n) = args */
    N_CONV    /* int -> decimal, inserted by the checker; a */
} pkind;

/* Evaluation operations, specialised by operand type at compile time. */
typedef enum eop {
    E_CONST = 0,
    E_FIELD,
    E_NOW,
    E_NOT,
    E_NEG,
    E_I2D,
    E_ADD,
    E_SUB,
    E_MUL_I,
    E_MUL_D,
    E_DIV_I,
    E_DIV_D,
    E_CMP_I,
    E_CMP_S,
    E_CMP_B,  /* aux = cmp kind; _I covers int/dec/time/dur */
    E_CMP_IK, /* E_CMP_I against the constant u.k (emit only) */
    E_IN_I,
    E_IN_S,
    E_IN_B, /* consts[b .. b + n) */
    E_AND,
    E_OR,
    E_COAL,
    E_SINCE,
    E_LOCAL /* aux = LOC_* */,
    E_BEST,
    E_TOUCHES,
    E_HAS,
    E_MIN,
    E_MAX,
    E_ABS,
    E_BIZDAY,
    E_NEXTBIZ,
    E_LASTFIRED,
    E_TAXCAP,
    /* emitted in place of the general forms above (see emit) */
    E_FLD_I64,
    E_FLD_OPT,    /* a field read in place: int64 at st + b (td_field_direct) */
    E_SIN,        /* string field ==, != or in constant strings (consts[b .. b + n)) */
    E_LASTFIRED_K /* last_fired('constant'): the rule key is precomputed */
} eop;

/* E_SIN's aux bits. */
enum {
    SIN_NEG = 1,     /* != : the result is negated (a missing value still gives false) */
    SIN_MISSING = 2, /* the result when the field is missing: `(f ?? 'x') == 'y'` folded */
    SIN_ENUM = 4     /* the field is an enum code at st + a: u.fm.mask has a bit per code */
};

enum { CMP_LT, CMP_LE, CMP_GT, CMP_GE, CMP_EQ, CMP_NE };
enum { LOC_HOUR, LOC_WEEKDAY, LOC_MONTH, LOC_YEAR };

typedef struct pnode {
    uint8_t kind; /* pkind */
    uint8_t op;   /* tok_kind of the operator, or function index */
    uint8_t type; /* td_type, set by the checker */
    uint8_t eop;  /* eop, set by the checker */
    uint8_t aux;
    uint16_t depth;
    uint32_t off, len;     /* whole span */
    uint32_t opoff, oplen; /* operator or function-name span */
    uint32_t a, b, n;
    td_value k;        /* N_LIT */
    const td_field *f; /* N_NAME */
} pnode;

/* The compiled node: what td_expr_eval walks. */
typedef struct td_enode {
    uint8_t op;   /* eop */
    uint8_t type; /* td_type of the result */
    uint8_t aux;
    uint8_t fix;       /* 1 + the index of a fixed chain operand (td_expr_fix_operands), or 0 */
    uint32_t a, b, n;  /* children (preorder indices) or const list */
    uint32_t off, len; /* source span, for runtime error messages */
    union {
        td_value k;
        const td_field *f;
        struct {
            const td_field *f;
            uint64_t mask; /* SIN_ENUM: bit c is the result for enum code c */
        } fm;              /* E_SIN */
        td_rule_key key;   /* E_LASTFIRED_K: points into the string pool */
        uint32_t chain;    /* E_AND/E_OR heading a chain of n operands: chain[chain ..] */
    } u;
} td_enode;

struct td_expr {
    char *src;
    size_t len;
    td_type type;
    td_enode *nodes;
    uint32_t nnodes;
    td_value *consts;
    uint32_t nconsts;
    char *pool;     /* unescaped string literals; constants point into it */
    uint32_t *conj; /* root node of each top-level conjunct */
    uint32_t nconj;
    uint32_t *chain; /* operands of the &&/|| chains, left to right (see link_chains) */
    uint32_t nchain;
    /* td_expr_may_hold: the first conjunct is an enum test (E_SIN with
     * SIN_ENUM) at state offset pre_off, true for the codes of pre_mask */
    bool pre;
    uint32_t pre_off;
    uint64_t pre_mask;
};

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
static const struct td_fn_def {
    const char *name;
    unsigned nargs;
    const char *sig;
} td_fns[F__COUNT] = {
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
/* compile context                                                          */
/* ------------------------------------------------------------------------ */

typedef struct cx {
    const char *src;
    uint32_t len;
    td_expr_diags *diags;
    size_t nerr;          /* errors found (even those not stored) */
    uint32_t last_syntax; /* offset of the last E207 (UINT32_MAX: none): one per spot */
    bool oom;

    tok *toks;
    uint32_t ntoks, captoks, pos;

    pnode *nodes;
    uint32_t nnodes, capnodes;
    uint32_t *kids;
    uint32_t nkids, capkids;

    char *pool;
    uint32_t npool;

    int scopes;
    int nest;   /* parser recursion depth */
    bool fatal; /* too deep: stop parsing */
} cx;

static void diag(cx *c, const char *code, uint32_t off, uint32_t len, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static void diag(cx *c, const char *code, uint32_t off, uint32_t len, const char *fmt, ...) {
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

static bool grow(void **p, uint32_t *cap, uint32_t need, size_t elem) {
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

static bool is_digit(char ch) { return ch >= '0' && ch <= '9'; }
static bool is_alpha(char ch) {
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_';
}
static bool is_alnum(char ch) { return is_alpha(ch) || is_digit(ch); }

static void push_tok(cx *c, tok_kind k, uint32_t off, uint32_t len, const td_value *v) {
    if (!grow((void **)&c->toks, &c->captoks, c->ntoks + 1, sizeof(tok))) {
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
static void lex_number(cx *c, uint32_t *ip) {
    const char *s = c->src;
    uint32_t i = *ip, start = i;
    while (i < c->len && is_digit(s[i]))
        i++;
    td_value v;
    memset(&v, 0, sizeof v);
    if (i < c->len && is_alpha(s[i])) {
        while (i < c->len && is_alnum(s[i]))
            i++;
        td_ms d;
        if (td_duration_parse(s + start, i - start, &d) != TD_OK) {
            diag(c, "E208", start, i - start,
                 "bad duration '%.*s': write <integer><unit> groups with units ms s m h d w, "
                 "e.g. 72h, 3d, 1h30m",
                 (int)(i - start > 40 ? 40 : i - start), s + start);
            push_tok(c, T_BAD, start, i - start, NULL);
        } else {
            v.type = TD_T_DUR;
            v.u.t = d;
            push_tok(c, T_DUR, start, i - start, &v);
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
    if (i + 1 < c->len && s[i] == '.' && is_digit(s[i + 1])) {
        uint32_t f0 = ++i;
        while (i < c->len && is_digit(s[i]))
            i++;
        if (i < c->len && is_alpha(s[i])) {
            while (i < c->len && is_alnum(s[i]))
                i++;
            diag(c, "E208", start, i - start,
                 "bad literal '%.*s': a duration takes whole units (write 1h30m, not 1.5h)",
                 (int)(i - start > 40 ? 40 : i - start), s + start);
            push_tok(c, T_BAD, start, i - start, NULL);
            *ip = i;
            return;
        }
        if (i - f0 > 4) {
            diag(c, "E208", start, i - start,
                 "decimal '%.*s' has more than 4 digits after the point: decimals are exact "
                 "to 0.0001",
                 (int)(i - start > 40 ? 40 : i - start), s + start);
            push_tok(c, T_BAD, start, i - start, NULL);
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
            diag(c, "E208", start, i - start, "decimal '%.*s' is out of range (max ~9.2e14)",
                 (int)(i - start > 40 ? 40 : i - start), s + start);
            push_tok(c, T_BAD, start, i - start, NULL);
        } else {
            v.type = TD_T_DEC;
            v.u.d = d;
            push_tok(c, T_DEC, start, i - start, &v);
        }
        *ip = i;
        return;
    }
    if (bad) {
        diag(c, "E208", start, i - start,
             "integer '%.*s' is out of range (the largest is 9223372036854775807)",
             (int)(i - start > 40 ? 40 : i - start), s + start);
        push_tok(c, T_BAD, start, i - start, NULL);
    } else {
        v.type = TD_T_INT;
        v.u.i = whole;
        push_tok(c, T_INT, start, i - start, &v);
    }
    *ip = i;
}

static void lex_string(cx *c, uint32_t *ip) {
    const char *s = c->src;
    uint32_t i = *ip, start = i;
    char q = s[i++];
    uint32_t p0 = c->npool;
    bool bad = false;
    for (;;) {
        if (i >= c->len) {
            diag(c, "E208", start, i - start,
                 "unterminated string: close it with %c (inside, write \\%c for a quote)", q, q);
            push_tok(c, T_BAD, start, i - start, NULL);
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
                diag(c, "E208", i, 2, "unknown escape '\\%c' in a string: use \\\\ \\\" \\' or \\n",
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
        push_tok(c, T_BAD, start, i - start, NULL);
    } else {
        td_value v;
        memset(&v, 0, sizeof v);
        v.type = TD_T_STR;
        v.u.s.p = c->pool + p0;
        v.u.s.n = c->npool - p0;
        push_tok(c, T_STR, start, i - start, &v);
    }
    *ip = i;
}

static void lex(cx *c) {
    const char *s = c->src;
    uint32_t i = 0, n = c->len;
    while (i < n && !c->oom) {
        char ch = s[i];
        if (ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r') {
            i++;
            continue;
        }
        if (is_digit(ch)) {
            lex_number(c, &i);
            continue;
        }
        if (ch == '"' || ch == '\'') {
            lex_string(c, &i);
            continue;
        }
        if (is_alpha(ch)) {
            uint32_t start = i;
            for (;;) {
                while (i < n && is_alnum(s[i]))
                    i++;
                /* a dot joins segments; a segment may start with a digit
                 * (touches.7d) */
                if (i + 1 < n && s[i] == '.' && is_alnum(s[i + 1])) {
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
            push_tok(c, k, start, len, &v);
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
                diag(c, "E207", i, 1, "'=' is not an operator: write == to compare");
            break;
        case '&':
            k = T_AND;
            if (nx == '&')
                len = 2;
            else
                diag(c, "E207", i, 1, "'&' is not an operator: write && for 'and'");
            break;
        case '|':
            k = T_OR;
            if (nx == '|')
                len = 2;
            else
                diag(c, "E207", i, 1, "'|' is not an operator: write || for 'or'");
            break;
        case '?':
            k = T_COAL;
            if (nx == '?')
                len = 2;
            else
                diag(c, "E207", i, 1,
                     "'?' is not an operator: write x ?? y for 'x, or y when x is missing'");
            break;
        default: {
            /* skip one whole UTF-8 sequence so the caret covers it */
            uint32_t l = 1;
            while (i + l < n && ((unsigned char)s[i + l] & 0xC0) == 0x80 && l < 4)
                l++;
            if ((unsigned char)ch >= 32 && (unsigned char)ch < 127)
                diag(c, "E207", i, l, "unexpected character '%c'", ch);
            else
                diag(c, "E207", i, l, "unexpected character (byte 0x%02x)", (unsigned char)ch);
            i += l;
            continue;
        }
        }
        push_tok(c, k, i, len, NULL);
        i += len;
    }
    push_tok(c, T_EOF, n, 0, NULL);
}

/* ------------------------------------------------------------------------ */
/* parser                                                                   */
/* ------------------------------------------------------------------------ */

static const tok *peek(const cx *c) {
    static const tok eof = {T_EOF, 0, 0, {0}};
    if (c->fatal || c->pos >= c->ntoks) return &eof;
    return &c->toks[c->pos];
}
static void advance(cx *c) {
    if (c->pos + 1 < c->ntoks) c->pos++;
}

static uint32_t mk(cx *c, pkind kind, uint32_t off, uint32_t len) {
    if (!grow((void **)&c->nodes, &c->capnodes, c->nnodes + 1, sizeof(pnode))) {
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

static uint32_t mk_error(cx *c, uint32_t off, uint32_t len) { return mk(c, N_ERROR, off, len); }

static void set_depth(cx *c, uint32_t i, uint32_t child_depth) {
    if (child_depth + 1 > TD_EXPR_MAX_DEPTH) {
        if (!c->fatal) {
            diag(c, "E210", c->nodes[i].off, 1,
                 "expression too deeply nested (more than %d levels): split the rule",
                 TD_EXPR_MAX_DEPTH);
            c->fatal = true;
        }
        c->nodes[i].depth = TD_EXPR_MAX_DEPTH;
        return;
    }
    if (child_depth + 1 > c->nodes[i].depth) c->nodes[i].depth = (uint16_t)(child_depth + 1);
}

static void syntax(cx *c, const tok *t, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void syntax(cx *c, const tok *t, const char *fmt, ...) {
    if (c->fatal) return;
    if (c->last_syntax == t->off) return; /* one per spot */
    c->last_syntax = t->off;
    char msg[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    diag(c, "E207", t->off, t->len, "%s", msg);
}

static bool push_kid(cx *c, uint32_t k) {
    if (!grow((void **)&c->kids, &c->capkids, c->nkids + 1, sizeof(uint32_t))) {
        c->oom = true;
        c->fatal = true;
        return false;
    }
    c->kids[c->nkids++] = k;
    return true;
}

static uint32_t parse_bin(cx *c, int minprec);

static int binprec(tok_kind k) {
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
static void parse_list(cx *c, tok_kind close, const tok *open, uint32_t node) {
    uint32_t tmp[64], ntmp = 0, *heap = NULL, nheap = 0, capheap = 0;
    if (peek(c)->kind != close) {
        for (;;) {
            uint32_t e = parse_bin(c, 1);
            if (ntmp < 64)
                tmp[ntmp++] = e;
            else if (grow((void **)&heap, &capheap, nheap + 1, sizeof(uint32_t)))
                heap[nheap++] = e;
            else
                c->oom = true;
            if (peek(c)->kind == T_COMMA) {
                advance(c);
                if (peek(c)->kind == close) break; /* trailing comma */
                continue;
            }
            break;
        }
    }
    const tok *t = peek(c);
    if (t->kind == close) {
        advance(c);
        c->nodes[node].len = t->off + t->len - c->nodes[node].off;
    } else {
        syntax(c, t, "expected %s to close the %s at offset %u, found %s", tok_text(close),
               tok_text((tok_kind)open->kind), open->off, tok_text((tok_kind)t->kind));
        c->nodes[node].len = t->off - c->nodes[node].off;
        if (c->nodes[node].len == 0) c->nodes[node].len = 1;
    }
    c->nodes[node].b = c->nkids;
    uint32_t maxd = 0;
    for (uint32_t j = 0; j < ntmp + nheap; j++) {
        uint32_t e = j < ntmp ? tmp[j] : heap[j - ntmp];
        if (!push_kid(c, e)) break;
        if (c->nodes[e].depth > maxd) maxd = c->nodes[e].depth;
    }
    c->nodes[node].n = ntmp + nheap;
    set_depth(c, node, maxd);
    free(heap);
}

static uint32_t parse_unary(cx *c);

static uint32_t parse_primary(cx *c) {
    const tok *t = peek(c);
    switch ((tok_kind)t->kind) {
    case T_INT:
    case T_DEC:
    case T_STR:
    case T_DUR:
    case T_TRUE:
    case T_FALSE: {
        uint32_t n = mk(c, N_LIT, t->off, t->len);
        c->nodes[n].k = t->v;
        advance(c);
        return n;
    }
    case T_BAD: {
        uint32_t n = mk_error(c, t->off, t->len);
        advance(c);
        return n;
    }
    case T_NOW: {
        uint32_t n = mk(c, N_NOW, t->off, t->len);
        advance(c);
        return n;
    }
    case T_NAME: {
        tok name = *t;
        advance(c);
        if (peek(c)->kind == T_LPAREN) {
            tok open = *peek(c);
            advance(c);
            uint32_t n = mk(c, N_CALL, name.off, name.len);
            c->nodes[n].opoff = name.off;
            c->nodes[n].oplen = name.len;
            parse_list(c, T_RPAREN, &open, n);
            return n;
        }
        uint32_t n = mk(c, N_NAME, name.off, name.len);
        return n;
    }
    case T_LPAREN: {
        tok open = *t;
        advance(c);
        uint32_t inner = parse_bin(c, 1);
        const tok *cl = peek(c);
        if (cl->kind == T_RPAREN) {
            /* the span includes the parentheses: conjunct sources read well */
            c->nodes[inner].off = open.off;
            c->nodes[inner].len = cl->off + 1 - open.off;
            advance(c);
        } else {
            syntax(c, cl, "expected ')' to close the '(' at offset %u, found %s", open.off,
                   tok_text((tok_kind)cl->kind));
        }
        return inner;
    }
    default:
        break;
    }
    syntax(c, t, "expected a value (a field, a literal, a function call or '('), found %s",
           tok_text((tok_kind)t->kind));
    uint32_t n = mk_error(c, t->off, t->len ? t->len : 1);
    /* consume what nobody else can use, so the parse moves on; keep binary
     * operators and closers for the callers that can continue from them */
    if (t->kind != T_EOF && !binprec((tok_kind)t->kind) && t->kind != T_RPAREN &&
        t->kind != T_RBRACK && t->kind != T_COMMA)
        advance(c);
    return n;
}

static uint32_t parse_unary(cx *c) {
    if (++c->nest > TD_EXPR_MAX_DEPTH / 2) {
        const tok *t = peek(c);
        if (!c->fatal) {
            diag(c, "E210", t->off, t->len ? t->len : 1,
                 "expression too deeply nested (more than %d levels): split the rule",
                 TD_EXPR_MAX_DEPTH / 2);
            c->fatal = true;
        }
        c->nest--;
        return mk_error(c, t->off, 1);
    }
    const tok *t = peek(c);
    uint32_t r;
    if (t->kind == T_NOT || t->kind == T_MINUS) {
        tok op = *t;
        advance(c);
        uint32_t a = parse_unary(c);
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
            r = mk(c, N_UNARY, op.off, c->nodes[a].off + c->nodes[a].len - op.off);
            c->nodes[r].op = op.kind;
            c->nodes[r].opoff = op.off;
            c->nodes[r].oplen = op.len;
            c->nodes[r].a = a;
            set_depth(c, r, c->nodes[a].depth);
        }
    } else {
        r = parse_primary(c);
    }
    c->nest--;
    return r;
}

static uint32_t parse_bin(cx *c, int minprec) {
    uint32_t lhs = parse_unary(c);
    for (;;) {
        const tok *t = peek(c);
        int pr = binprec((tok_kind)t->kind);
        if (pr == 0 || pr < minprec) break;
        tok op = *t;
        advance(c);
        uint32_t n;
        if (op.kind == T_IN) {
            n = mk(c, N_IN, c->nodes[lhs].off, 0);
            c->nodes[n].a = lhs;
            c->nodes[n].opoff = op.off;
            c->nodes[n].oplen = op.len;
            const tok *lb = peek(c);
            if (lb->kind == T_LBRACK) {
                tok open = *lb;
                advance(c);
                parse_list(c, T_RBRACK, &open, n);
                /* parse_list measured from the node start: fine */
            } else {
                syntax(c, lb, "expected '[' after 'in': write x in [\"a\", \"b\"]");
                c->nodes[n].kind = N_ERROR;
                c->nodes[n].len = op.off + op.len - c->nodes[n].off;
            }
            set_depth(c, n, c->nodes[lhs].depth);
        } else {
            uint32_t rhs = parse_bin(c, pr + 1);
            uint32_t off = c->nodes[lhs].off;
            uint32_t end = c->nodes[rhs].off + c->nodes[rhs].len;
            if (end < op.off + op.len) end = op.off + op.len;
            n = mk(c, N_BINARY, off, end - off);
            c->nodes[n].op = op.kind;
            c->nodes[n].opoff = op.off;
            c->nodes[n].oplen = op.len;
            c->nodes[n].a = lhs;
            c->nodes[n].b = rhs;
            uint32_t d = c->nodes[lhs].depth > c->nodes[rhs].depth ? c->nodes[lhs].depth
                                                                   : c->nodes[rhs].depth;
            set_depth(c, n, d);
        }
        lhs = n;
    }
    return lhs;
}

/* ------------------------------------------------------------------------ */
/* names: did you mean                                                      */
/* ------------------------------------------------------------------------ */

/* Optimal string alignment distance (Levenshtein plus adjacent swaps, so
 * "emial" is one edit from "email"). Both lengths <= TD_EXPR_MAX_NAME. */
static unsigned osa_distance(const char *a, size_t la, const char *b, size_t lb) {
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
static const char *closest(const char *name, size_t len, const char *const *cands, size_t n,
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
        unsigned d = diff >= bestd ? bestd : osa_distance(name, len, cand, lc);
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

static const char *suggest_field(const char *name, size_t len) {
    size_t n = 0;
    if (len > TD_EXPR_MAX_NAME) return NULL;
    const td_field *f = td_schema_fields(&n);
    if (!f || !n) return NULL;
    return closest(name, len, &f[0].name, n, sizeof *f);
}

static int find_fn(const char *name, size_t len) {
    for (int i = 0; i < F__COUNT; i++)
        if (strlen(td_fns[i].name) == len && !memcmp(td_fns[i].name, name, len)) return i;
    return -1;
}

/* ------------------------------------------------------------------------ */
/* type checker                                                             */
/* ------------------------------------------------------------------------ */

/* "a bool", "an int" */
static const char *aname(td_type t) {
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

static bool is_num(td_type t) { return t == TD_T_INT || t == TD_T_DEC; }

static td_type check(cx *c, uint32_t i);

/* Wraps child slot *slot (an int) in a decimal conversion. A literal is
 * converted in place (no runtime cost). */
static void promote(cx *c, uint32_t *slot) {
    pnode *k = &c->nodes[*slot];
    if (k->type != TD_T_INT) return;
    if (k->kind == N_LIT) {
        int64_t d;
        if (__builtin_mul_overflow(k->k.u.i, (int64_t)TD_DEC_SCALE, &d)) {
            diag(c, "E208", k->off, k->len,
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
    uint32_t n = mk(c, N_CONV, off, len);
    if (c->oom) return;
    c->nodes[n].a = child;
    c->nodes[n].type = TD_T_DEC;
    c->nodes[n].eop = E_I2D;
    c->nodes[n].depth = (uint16_t)(c->nodes[child].depth + 1);
    *slot = n;
}

static void op_error(cx *c, const pnode *p, td_type ta, td_type tb, const char *hint) {
    diag(c, "E203", p->opoff, p->oplen, "cannot apply '%.*s' to %s and %s%s%s", (int)p->oplen,
         c->src + p->opoff, aname(ta), aname(tb), hint ? ": " : "", hint ? hint : "");
}

static td_type check_arith(cx *c, uint32_t i, td_type ta, td_type tb) {
    pnode *p = &c->nodes[i];
    tok_kind op = (tok_kind)p->op;
    if (is_num(ta) && is_num(tb)) {
        bool dec = ta == TD_T_DEC || tb == TD_T_DEC;
        if (dec) {
            uint32_t a = p->a, b = p->b;
            promote(c, &a);
            promote(c, &b);
            p = &c->nodes[i]; /* promote may have moved the array */
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
            op_error(c, p, ta, tb, "two times cannot be added; subtract them for a duration");
        else if (ta == TD_T_STR || tb == TD_T_STR)
            op_error(c, p, ta, tb, "strings cannot be added");
        else if ((ta == TD_T_TIME && is_num(tb)) || (tb == TD_T_TIME && is_num(ta)))
            op_error(c, p, ta, tb, "add a duration with its unit, e.g. now + 2h");
        else
            op_error(c, p, ta, tb, NULL);
        return TD_T_NONE;
    case T_MINUS:
        p->eop = E_SUB;
        if (ta == TD_T_TIME && tb == TD_T_TIME) return TD_T_DUR;
        if (ta == TD_T_TIME && tb == TD_T_DUR) return TD_T_TIME;
        if (ta == TD_T_DUR && tb == TD_T_DUR) return TD_T_DUR;
        if (ta == TD_T_TIME && is_num(tb))
            op_error(c, p, ta, tb, "subtract a duration with its unit, e.g. now - 3d");
        else
            op_error(c, p, ta, tb, NULL);
        return TD_T_NONE;
    case T_STAR:
        p->eop = E_MUL_I;
        if ((ta == TD_T_DUR && tb == TD_T_INT) || (ta == TD_T_INT && tb == TD_T_DUR))
            return TD_T_DUR;
        op_error(c, p, ta, tb,
                 (ta == TD_T_DUR || tb == TD_T_DUR) ? "a duration can only be multiplied by an int"
                                                    : NULL);
        return TD_T_NONE;
    default:
        p->eop = E_DIV_I;
        if (ta == TD_T_DUR && tb == TD_T_INT) return TD_T_DUR;
        op_error(c, p, ta, tb, ta == TD_T_DUR ? "a duration can only be divided by an int" : NULL);
        return TD_T_NONE;
    }
}

static td_type check_compare(cx *c, uint32_t i, td_type ta, td_type tb) {
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
    if (is_num(ta) && is_num(tb)) {
        if (ta != tb) {
            uint32_t a = p->a, b = p->b;
            promote(c, &a);
            promote(c, &b);
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
            op_error(c, p, ta, tb, "bools can only be compared with == and !=");
            return TD_T_NONE;
        default:
            break;
        }
    }
    if ((ta == TD_T_TIME && tb == TD_T_DUR) || (ta == TD_T_DUR && tb == TD_T_TIME))
        op_error(c, p, ta, tb,
                 "since(t) turns a time into the duration since it, e.g. since(email.last_sent_at) "
                 ">= 72h");
    else if ((ta == TD_T_DUR && is_num(tb)) || (tb == TD_T_DUR && is_num(ta)))
        op_error(c, p, ta, tb, "give the number a unit, e.g. 72h");
    else if (ta == TD_T_STR || tb == TD_T_STR)
        op_error(c, p, ta, tb, "compare a string with a string literal, e.g. \"value\"");
    else
        op_error(c, p, ta, tb, "both sides must have the same type");
    return TD_T_NONE;
}

static td_type check_logic(cx *c, uint32_t i, td_type ta, td_type tb) {
    pnode *p = &c->nodes[i];
    bool ok = true;
    const uint32_t kids[2] = {p->a, p->b};
    const td_type ts[2] = {ta, tb};
    for (int k = 0; k < 2; k++) {
        if (ts[k] == TD_T_NONE) {
            ok = false;
        } else if (ts[k] != TD_T_BOOL) {
            const pnode *o = &c->nodes[kids[k]];
            diag(c, "E203", o->off, o->len,
                 "'%.*s' needs bool operands, but this is %s: compare it, e.g. x > 0",
                 (int)p->oplen, c->src + p->opoff, aname(ts[k]));
            ok = false;
        }
    }
    p->eop = p->op == T_AND ? E_AND : E_OR;
    return ok ? TD_T_BOOL : TD_T_NONE;
}

static td_type check_coalesce(cx *c, uint32_t i, td_type ta, td_type tb) {
    pnode *p = &c->nodes[i];
    p->eop = E_COAL;
    if (is_num(ta) && is_num(tb) && ta != tb) {
        uint32_t a = p->a, b = p->b;
        promote(c, &a);
        promote(c, &b);
        p = &c->nodes[i];
        p->a = a;
        p->b = b;
        return TD_T_DEC;
    }
    if (ta == tb) return ta;
    op_error(c, p, ta, tb, "the fallback after ?? must have the type of the left side");
    return TD_T_NONE;
}

/* A constant list element: a literal (negative numbers are folded). */
static td_type check_in(cx *c, uint32_t i) {
    uint32_t lhs = c->nodes[i].a;
    td_type tl = check(c, lhs);
    uint32_t b = c->nodes[i].b, n = c->nodes[i].n;
    bool ok = tl != TD_T_NONE, any_dec = false;
    if (n == 0) {
        const pnode *p = &c->nodes[i];
        diag(c, "E209", p->opoff, p->oplen,
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
            check(c, e); /* still report unknown names inside */
            en = &c->nodes[e];
            diag(c, "E209", en->off, en->len,
                 "'in' list elements must be literals (\"a\", 3, 2.5, 72h, true)");
            ok = false;
            continue;
        }
        td_type te = en->k.type;
        c->nodes[e].type = (uint8_t)te;
        if (te == TD_T_DEC) any_dec = true;
        if (tl == TD_T_NONE) continue;
        if (!(te == tl || (is_num(te) && is_num(tl)))) {
            diag(c, "E209", en->off, en->len,
                 "this list element is %s but the left side of 'in' is %s: list values of its type",
                 aname(te), aname(tl));
            ok = false;
        }
    }
    if (!ok) return TD_T_NONE;
    td_type lt = tl;
    if (tl == TD_T_INT && any_dec) {
        uint32_t a = lhs;
        promote(c, &a);
        c->nodes[i].a = a;
        lt = TD_T_DEC;
    }
    if (lt == TD_T_DEC) {
        for (uint32_t j = 0; j < n; j++) {
            uint32_t e = c->kids[b + j];
            promote(c, &e);
            if (c->nodes[e].kind == N_ERROR) ok = false;
        }
    }
    pnode *p = &c->nodes[i];
    p->eop = lt == TD_T_STR ? E_IN_S : lt == TD_T_BOOL ? E_IN_B : E_IN_I;
    return ok ? TD_T_BOOL : TD_T_NONE;
}

static void arg_error(cx *c, int fn, uint32_t arg, td_type got) {
    const pnode *a = &c->nodes[arg];
    diag(c, "E205", a->off, a->len, "%s() does not take %s here: %s", td_fns[fn].name, aname(got),
         td_fns[fn].sig);
}

static td_type check_call(cx *c, uint32_t i) {
    uint32_t b = c->nodes[i].b, n = c->nodes[i].n;
    td_type ts[2] = {TD_T_NONE, TD_T_NONE};
    bool poisoned = false;
    for (uint32_t j = 0; j < n; j++) {
        td_type t = check(c, c->kids[b + j]);
        if (t == TD_T_NONE) poisoned = true;
        if (j < 2) ts[j] = t;
    }
    const pnode *p = &c->nodes[i];
    const char *name = c->src + p->opoff;
    int fn = find_fn(name, p->oplen);
    if (fn < 0) {
        const char *names[F__COUNT];
        for (int k = 0; k < F__COUNT; k++)
            names[k] = td_fns[k].name;
        const char *s = closest(name, p->oplen, names, F__COUNT, sizeof names[0]);
        if (s)
            diag(c, "E204", p->opoff, p->oplen, "unknown function '%.*s': did you mean '%s'?",
                 (int)p->oplen, name, s);
        else if (td_schema_lookup(name, p->oplen))
            diag(c, "E204", p->opoff, p->oplen,
                 "'%.*s' is a field, not a function: remove the parentheses", (int)p->oplen, name);
        else
            diag(c, "E204", p->opoff, p->oplen,
                 "unknown function '%.*s': the functions are since, local_hour, weekday, month, "
                 "year, best_time, touches_within, has, min, max, abs, business_day, "
                 "next_business_slot, last_fired, gift_tax_cap_eur",
                 (int)(p->oplen > 40 ? 40 : p->oplen), name);
        return TD_T_NONE;
    }
    c->nodes[i].op = (uint8_t)fn;
    if (n != td_fns[fn].nargs) {
        diag(c, "E205", p->opoff, p->len, "%s() takes %u argument%s, got %u: %s", td_fns[fn].name,
             td_fns[fn].nargs, td_fns[fn].nargs == 1 ? "" : "s", n, td_fns[fn].sig);
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
            arg_error(c, fn, a0, ts[0]);
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
            arg_error(c, fn, a0, ts[0]);
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
            arg_error(c, fn, a0, ts[0]);
            return TD_T_NONE;
        }
        q->eop = fn == F_BUSINESS_DAY ? E_BIZDAY : E_NEXTBIZ;
        return fn == F_BUSINESS_DAY ? TD_T_BOOL : TD_T_TIME;
    case F_LAST_FIRED:
        if (ts[0] != TD_T_STR) {
            arg_error(c, fn, a0, ts[0]);
            return TD_T_NONE;
        }
        q->eop = E_LASTFIRED;
        return TD_T_TIME;
    case F_GIFT_TAX_CAP:
        q->eop = E_TAXCAP;
        return TD_T_DEC;
    case F_ABS:
        if (ts[0] != TD_T_INT && ts[0] != TD_T_DEC && ts[0] != TD_T_DUR) {
            arg_error(c, fn, a0, ts[0]);
            return TD_T_NONE;
        }
        q->eop = E_ABS;
        return ts[0];
    default: { /* min, max */
        td_type t0 = ts[0], t1 = ts[1];
        bool ok0 = is_num(t0) || t0 == TD_T_TIME || t0 == TD_T_DUR;
        bool ok1 = is_num(t1) || t1 == TD_T_TIME || t1 == TD_T_DUR;
        if (!ok0) arg_error(c, fn, a0, t0);
        if (!ok1) arg_error(c, fn, a1, t1);
        if (!ok0 || !ok1) return TD_T_NONE;
        if (is_num(t0) && is_num(t1)) {
            q->eop = fn == F_MIN ? E_MIN : E_MAX;
            if (t0 == t1) return t0;
            promote(c, &a0);
            promote(c, &a1);
            c->nodes[i].a = a0;
            c->nodes[i].b = a1;
            return TD_T_DEC;
        }
        if (t0 != t1) {
            diag(c, "E205", p->opoff, c->nodes[i].len,
                 "%s() needs two values of the same type, got %s and %s: %s", td_fns[fn].name,
                 aname(t0), aname(t1), td_fns[fn].sig);
            return TD_T_NONE;
        }
        q->eop = fn == F_MIN ? E_MIN : E_MAX;
        return t0;
    }
    }
}

static td_type check_name(cx *c, uint32_t i) {
    pnode *p = &c->nodes[i];
    const char *name = c->src + p->off;
    const td_field *f = td_schema_lookup(name, p->len);
    if (!f && c->diags && c->diags->n >= TD_EXPR_MAX_DIAGS) {
        c->nerr++; /* not shown anyway: skip the suggestion search */
        return TD_T_NONE;
    }
    if (!f) {
        int len = (int)(p->len > 60 ? 60 : p->len);
        if (find_fn(name, p->len) >= 0) {
            diag(c, "E201", p->off, p->len, "'%.*s' is a function: call it, e.g. %s", len, name,
                 td_fns[find_fn(name, p->len)].sig);
            return TD_T_NONE;
        }
        const char *s = suggest_field(name, p->len);
        if (s)
            diag(c, "E201", p->off, p->len, "unknown field '%.*s': did you mean '%s'?", len, name,
                 s);
        else
            diag(c, "E201", p->off, p->len,
                 "unknown field '%.*s': docs/state.md lists the fields rules can read", len, name);
        return TD_T_NONE;
    }
    if (f->scope != TD_FIELD_ANY && !(f->scope & c->scopes)) {
        if (f->scope & TD_FIELD_GUARD)
            diag(c, "E202", p->off, p->len,
                 "'%s' is not allowed here: rec.* and target.* can only be read in a guard's "
                 "block",
                 f->name);
        else
            diag(c, "E202", p->off, p->len,
                 "'%s' is not allowed here: event.* can only be read "
                 "in a rule's when and at",
                 f->name);
        return TD_T_NONE;
    }
    p->f = f;
    p->eop = E_FIELD;
    return f->type;
}

static td_type check(cx *c, uint32_t i) {
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
        t = check_name(c, i);
        break;
    case N_CONV:
        t = TD_T_DEC;
        break;
    case N_UNARY: {
        td_type ta = check(c, p->a);
        p = &c->nodes[i];
        if (ta == TD_T_NONE) break;
        if (p->op == T_NOT) {
            p->eop = E_NOT;
            if (ta == TD_T_BOOL)
                t = TD_T_BOOL;
            else
                diag(c, "E203", p->opoff, p->oplen,
                     "'!' needs a bool, but this is %s: compare it, e.g. !(x > 0)", aname(ta));
        } else {
            p->eop = E_NEG;
            if (ta == TD_T_INT || ta == TD_T_DEC || ta == TD_T_DUR)
                t = ta;
            else
                diag(c, "E203", p->opoff, p->oplen, "cannot negate %s", aname(ta));
        }
        break;
    }
    case N_BINARY: {
        td_type ta = check(c, p->a);
        td_type tb = check(c, c->nodes[i].b);
        p = &c->nodes[i];
        tok_kind op = (tok_kind)p->op;
        if (op == T_AND || op == T_OR) {
            t = check_logic(c, i, ta, tb);
            break;
        }
        if (ta == TD_T_NONE || tb == TD_T_NONE) break;
        switch (op) {
        case T_PLUS:
        case T_MINUS:
        case T_STAR:
        case T_SLASH:
            t = check_arith(c, i, ta, tb);
            break;
        case T_COAL:
            t = check_coalesce(c, i, ta, tb);
            break;
        default:
            t = check_compare(c, i, ta, tb);
            break;
        }
        break;
    }
    case N_IN:
        t = check_in(c, i);
        break;
    case N_CALL:
        t = check_call(c, i);
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

/* Whether string x is one of the n strings of k. */
static bool str_in(const td_value *x, const td_value *k, uint32_t n) {
    for (uint32_t j = 0; j < n; j++)
        if (k[j].u.s.n == x->u.s.n && memcmp(k[j].u.s.p, x->u.s.p, x->u.s.n) == 0) return true;
    return false;
}

/* `field` or `(field ?? 'literal')` at parse node i: the field, and the
 * fallback literal in *fallback (NULL without one); NULL for anything else. */
static const td_field *str_field_of(const cx *c, uint32_t i, const td_value **fallback) {
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
static bool emit_sin(emitter *m, uint32_t at, uint32_t fi, const uint32_t *lits, uint32_t nlits,
                     bool neg) {
    cx *c = m->c;
    td_expr *e = m->e;
    const td_value *fb;
    const td_field *f = str_field_of(c, fi, &fb);
    if (!f || f->type != TD_T_STR) return false;
    if (!grow((void **)&e->consts, &m->capconst, e->nconsts + nlits, sizeof(td_value))) {
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
    if (fb && str_in(fb, k, nlits) != neg) n->aux |= SIN_MISSING;
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
                hit = str_in(&v, k, nlits) != neg;
            }
            if (hit) mask |= 1ULL << code;
        }
        n->aux |= SIN_ENUM;
        n->a = (uint32_t)off;
        n->u.fm.mask = mask;
    }
    return true;
}

static uint32_t emit(emitter *m, uint32_t i) {
    cx *c = m->c;
    td_expr *e = m->e;
    if (!grow((void **)&e->nodes, &m->cap, e->nnodes + 1, sizeof(td_enode))) {
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
        if (c->nodes[ki].eop == E_CONST && emit_sin(m, at, fi, &ki, 1, p.aux == CMP_NE)) return at;
    }
    if (p.eop == E_IN_S && emit_sin(m, at, p.a, c->kids + p.b, p.n, false)) return at;
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
        uint32_t a = emit(m, p.a);
        uint32_t start = e->nconsts;
        if (!grow((void **)&e->consts, &m->capconst, e->nconsts + p.n, sizeof(td_value))) {
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
        uint32_t a = emit(m, p.a);
        e->nodes[at].a = a;
        break;
    }
    case E_TAXCAP: /* no operand */
        break;
    case E_CMP_I:
        if (c->nodes[p.b].eop == E_CONST) {
            /* `field >= 2`: the constant lives in the node, saving a
             * recursive call on the hottest shape of rule */
            uint32_t a = emit(m, p.a);
            n = &e->nodes[at];
            n->op = E_CMP_IK;
            n->a = a;
            n->u.k = c->nodes[p.b].k;
            break;
        }
        /* fall through */
    default: { /* binary: both children */
        uint32_t a = emit(m, p.a);
        uint32_t b = emit(m, p.b);
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
static bool link_chains(td_expr *e) {
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
static void collect_conjuncts(td_expr *e, uint32_t i, uint32_t *cap, bool *oom) {
    const td_enode *n = &e->nodes[i];
    if (n->op == E_AND) {
        uint32_t a = n->a, b = n->b;
        collect_conjuncts(e, a, cap, oom);
        collect_conjuncts(e, b, cap, oom);
        return;
    }
    if (!grow((void **)&e->conj, cap, e->nconj + 1, sizeof(uint32_t))) {
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
        diag(&c, "E210", 0, 1, "expression too long (%zu bytes, at most %d): split the rule", len,
             TD_EXPR_MAX_LEN);
        return NULL;
    }
    c.len = (uint32_t)len;
    td_expr *e = calloc(1, sizeof *e);
    if (e) e->src = malloc(len + 1);
    if (e) e->pool = malloc(len + 1); /* unescaped strings are never longer */
    if (!e || !e->src || !e->pool) {
        td_expr_free(e);
        diag(&c, "E210", 0, 1, "out of memory compiling the expression");
        return NULL;
    }
    memcpy(e->src, c.src, len);
    e->src[len] = '\0';
    e->len = len;
    c.src = e->src; /* literals and diagnostics refer to our copy */
    c.pool = e->pool;

    mk(&c, N_ERROR, 0, 1); /* node 0: the fallback for out-of-memory */
    lex(&c);
    uint32_t root = 0;
    if (!c.oom) {
        if (c.ntoks == 1) {
            diag(&c, "E207", 0, 1, "empty expression: write a condition such as tier == 1");
        } else {
            root = parse_bin(&c, 1);
            /* trailing garbage: report it, then parse (and check) what follows
             * so its mistakes are reported too */
            while (!c.fatal && peek(&c)->kind != T_EOF) {
                const tok *t = peek(&c);
                syntax(&c, t,
                       "unexpected %s after a complete expression: a missing operator "
                       "(&&, ||, ==...)?",
                       tok_text((tok_kind)t->kind));
                advance(&c);
                if (peek(&c)->kind == T_EOF) break;
                uint32_t extra = parse_bin(&c, 1);
                check(&c, extra);
            }
        }
    }
    td_type t = TD_T_NONE;
    if (!c.oom && c.nerr == 0) {
        t = check(&c, root);
    } else if (!c.oom && root) {
        check(&c, root); /* more errors: unknown names, types */
    }
    if (!c.oom && c.nerr == 0 && want != TD_T_NONE && t != want) {
        if (want == TD_T_DEC && t == TD_T_INT) {
            promote(&c, &root);
            t = TD_T_DEC;
        } else {
            const pnode *r = &c.nodes[root];
            const char *hint = want == TD_T_BOOL ? ": compare it, e.g. x > 0"
                               : want == TD_T_TIME && t == TD_T_DUR
                                   ? ": add it to a time, e.g. now + 2h"
                                   : "";
            diag(&c, "E206", r->off, r->len ? r->len : 1,
                 "this expression is %s, but %s is needed here%s", aname(t), aname(want), hint);
        }
    }
    if (c.oom && c.nerr == 0) diag(&c, "E210", 0, 1, "out of memory compiling the expression");
    if (c.nerr) {
        free(c.toks);
        free(c.nodes);
        free(c.kids);
        td_expr_free(e);
        return NULL;
    }
    emitter m = {&c, e, 0, 0};
    emit(&m, root);
    e->type = t;
    uint32_t capc = 0;
    bool oom = c.oom;
    if (!oom) collect_conjuncts(e, 0, &capc, &oom);
    if (!oom && !link_chains(e)) oom = true;
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
        diag(&c, "E210", 0, 1, "out of memory compiling the expression");
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

static int fail(const run *r, const td_enode *n, const char *what) {
    if (r->err && r->errcap) {
        uint32_t len = n->len > 80 ? 80 : n->len;
        snprintf(r->err, r->errcap, "%s in '%.*s'%s", what, (int)len, r->e->src + n->off,
                 len < n->len ? "..." : "");
    }
    return TD_ERR;
}

static void record_fact(td_facts *fx, const td_field *f, const td_value *v) {
    for (uint32_t k = 0; k < fx->n && k < TD_FACTS_MAX; k++)
        if (fx->v[k].field == f) return;
    if (fx->n >= TD_FACTS_MAX) return;
    fx->v[fx->n].field = f;
    fx->v[fx->n].value = *v;
    fx->n++;
}

static const char *zone_of(const td_ctx *ctx) {
    if (ctx->st && ctx->st->timezone[0]) return ctx->st->timezone;
    if (ctx->settings && ctx->settings->default_timezone[0]) return ctx->settings->default_timezone;
    return NULL;
}

static void local_civil(const td_ctx *ctx, td_ms t, td_civil *out) {
    const char *z = zone_of(ctx);
    if (ctx->tz && z)
        td_tz_local(ctx->tz, z, t, out, NULL); /* unknown zone: UTC, by contract */
    else
        td_civil_from_ms(t, out);
}

static int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

/* The prospect's best local hour: the most engaged hour inside business hours
 * once there are enough points, else the configured default. */
static int best_hour(const td_state *st, const td_settings *s) {
    int def = clampi(s->best_time_default_hour, 0, 23);
    if (!st) return def;
    uint64_t sum = 0;
    for (int h = 0; h < 24; h++)
        sum += st->hour_hist[h];
    if (s->best_time_min_points > 0 && sum < (uint64_t)s->best_time_min_points) return def;
    if (sum == 0) return def;
    int lo = clampi(s->business_start_hour, 0, 24), hi = clampi(s->business_end_hour, 0, 24);
    int best = -1;
    for (int h = lo; h < hi; h++)
        if (st->hour_hist[h] > (best < 0 ? 0u : st->hour_hist[best])) best = h; /* ties: earliest */
    return best < 0 ? def : best;
}

/* ISO weekday (1 = Monday) of a day number (days since 1970-01-01, a Thursday). */
static int weekday_of_days(int64_t days) { return (int)(((days % 7) + 7 + 3) % 7) + 1; }

/*
 * best_time(t): the first instant >= t that is hour H:00 local on a weekday,
 * H = best_hour. Method: take t's local date; if t is on a weekday inside
 * hour H, t itself; otherwise walk calendar dates from t's date (or the next
 * one when hour H has passed) and convert H:00 of the first Monday-Friday
 * date through the zone (td_tz_to_utc: gaps move forward), keeping the first
 * result >= t. Non-business days (weekends, and holidays of the prospect's
 * country when a calendar is attached) are skipped; 20 dates bound the walk.
 */
static int eval_best_time(const run *r, const td_enode *n, td_ms t, td_ms *out) {
    const td_ctx *ctx = r->ctx;
    td_settings defs;
    const td_settings *s = ctx->settings;
    if (!s) {
        td_settings_default(&defs);
        s = &defs;
    }
    if (t < TD_CIVIL_MIN + 21 * TD_DAY || t > TD_CIVIL_MAX - 21 * TD_DAY)
        return fail(r, n, "time out of range (years 1..9999)");
    int hour = best_hour(ctx->st, s);
    const char *z = zone_of(ctx);
    td_civil c;
    local_civil(ctx, t, &c);
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
                        : weekday_of_days(day) > 5)
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

static bool cmp_i(int op, int64_t a, int64_t b) {
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

static int str_cmp(const td_value *a, const td_value *b) {
    uint32_t n = a->u.s.n < b->u.s.n ? a->u.s.n : b->u.s.n;
    int d = n ? memcmp(a->u.s.p, b->u.s.p, n) : 0;
    if (d) return d;
    return a->u.s.n < b->u.s.n ? -1 : a->u.s.n > b->u.s.n;
}

static inline bool truthy(const td_value *v) { return v->u.b && !v->missing; }

static int ev(const run *r, uint32_t i, td_value *out);

/* Evaluates node i: the leaves that are most of every expression (constants
 * and fields read in place) without a call, the rest through ev(). */
static inline int evx(const run *r, uint32_t i, td_value *out) {
    const td_enode *n = &r->e->nodes[i];
    if (n->op == E_FLD_OPT || n->op == E_FLD_I64) {
        int64_t v;
        memcpy(&v, (const char *)r->ctx->st + n->b, sizeof v);
        bool missing = n->op == E_FLD_OPT && v == INT64_MIN;
        out->type = (td_type)n->type;
        out->missing = missing;
        /* what the getters leave in a missing value: times keep the
         * sentinel, numbers are zeroed (td_state.c td_v_time, td_v_missing) */
        out->u.i = missing && n->type != TD_T_TIME ? 0 : v;
        if (r->facts) record_fact(r->facts, n->u.f, out);
        return TD_OK;
    }
    if (n->op == E_CONST) {
        *out = n->u.k;
        return TD_OK;
    }
    return ev(r, i, out);
}

/* Evaluates both children of n; @returns 1 when either is missing (out is
 * then a missing value of n's type), 0 when both are present, TD_ERR. */
static int ev2(const run *r, const td_enode *n, td_value *x, td_value *y, td_value *out) {
    if (evx(r, n->a, x) || evx(r, n->b, y)) return TD_ERR;
    if (x->missing || y->missing) {
        out->missing = true;
        out->u.i = 0;
        return 1;
    }
    return 0;
}

static int ev(const run *r, uint32_t i, td_value *out) {
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
        if (r->facts) record_fact(r->facts, n->u.f, out);
        return TD_OK;
    case E_NOW:
        out->u.t = r->ctx->now;
        return TD_OK;
    case E_AND:
    case E_OR: {
        /* a chain head: every operand in a loop (link_chains); an inner
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
                if (evx(r, ops[j], &x)) return TD_ERR;
                t = truthy(&x);
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
        if (evx(r, n->a, &x)) return TD_ERR;
        out->u.b = !truthy(&x);
        return TD_OK;
    case E_CMP_I:
        if (evx(r, n->a, &x) || evx(r, n->b, &y)) return TD_ERR;
        out->u.b = !x.missing && !y.missing && cmp_i(n->aux, x.u.i, y.u.i);
        return TD_OK;
    case E_CMP_IK:
        if (evx(r, n->a, &x)) return TD_ERR;
        out->u.b = !x.missing && cmp_i(n->aux, x.u.i, n->u.k.u.i);
        return TD_OK;
    case E_CMP_S:
        if (evx(r, n->a, &x) || evx(r, n->b, &y)) return TD_ERR;
        out->u.b = !x.missing && !y.missing && cmp_i(n->aux, str_cmp(&x, &y), 0);
        return TD_OK;
    case E_CMP_B:
        if (evx(r, n->a, &x) || evx(r, n->b, &y)) return TD_ERR;
        out->u.b = !x.missing && !y.missing && cmp_i(n->aux, x.u.b, y.u.b);
        return TD_OK;
    case E_IN_I:
    case E_IN_S:
    case E_IN_B: {
        if (evx(r, n->a, &x)) return TD_ERR;
        out->u.b = false;
        if (x.missing) return TD_OK;
        const td_value *k = r->e->consts + n->b;
        for (uint32_t j = 0; j < n->n; j++) {
            bool eq = n->op == E_IN_I   ? k[j].u.i == x.u.i
                      : n->op == E_IN_S ? str_cmp(&k[j], &x) == 0
                                        : k[j].u.b == x.u.b;
            if (eq) {
                out->u.b = true;
                break;
            }
        }
        return TD_OK;
    }
    case E_COAL:
        if (evx(r, n->a, out)) return TD_ERR;
        if (!out->missing) return TD_OK;
        if (evx(r, n->b, out)) return TD_ERR;
        out->type = (td_type)n->type;
        return TD_OK;
    case E_NEG:
        if (evx(r, n->a, &x)) return TD_ERR;
        out->missing = x.missing;
        out->u.i = 0;
        if (x.missing) return TD_OK;
        if (__builtin_sub_overflow((int64_t)0, x.u.i, &out->u.i)) return fail(r, n, "overflow");
        return TD_OK;
    case E_I2D:
        if (evx(r, n->a, &x)) return TD_ERR;
        out->missing = x.missing;
        out->u.d = 0;
        if (x.missing) return TD_OK;
        if (__builtin_mul_overflow(x.u.i, (int64_t)TD_DEC_SCALE, &out->u.d))
            return fail(r, n, "overflow (decimals hold up to ~9.2e14)");
        return TD_OK;
    case E_ADD:
        if ((rc = ev2(r, n, &x, &y, out))) return rc < 0 ? TD_ERR : TD_OK;
        if (__builtin_add_overflow(x.u.i, y.u.i, &out->u.i)) return fail(r, n, "overflow");
        return TD_OK;
    case E_SUB:
        if ((rc = ev2(r, n, &x, &y, out))) return rc < 0 ? TD_ERR : TD_OK;
        if (__builtin_sub_overflow(x.u.i, y.u.i, &out->u.i)) return fail(r, n, "overflow");
        return TD_OK;
    case E_MUL_I:
        if ((rc = ev2(r, n, &x, &y, out))) return rc < 0 ? TD_ERR : TD_OK;
        if (__builtin_mul_overflow(x.u.i, y.u.i, &out->u.i)) return fail(r, n, "overflow");
        return TD_OK;
    case E_MUL_D: {
        if ((rc = ev2(r, n, &x, &y, out))) return rc < 0 ? TD_ERR : TD_OK;
        /* (a / 10^4) * (b / 10^4) = a * b / 10^4, truncated toward zero */
        __int128 p = (__int128)x.u.d * y.u.d / TD_DEC_SCALE;
        if (p > INT64_MAX || p < INT64_MIN) return fail(r, n, "overflow");
        out->u.d = (int64_t)p;
        return TD_OK;
    }
    case E_DIV_I:
        if ((rc = ev2(r, n, &x, &y, out))) return rc < 0 ? TD_ERR : TD_OK;
        if (y.u.i == 0) return fail(r, n, "division by zero");
        if (x.u.i == INT64_MIN && y.u.i == -1) return fail(r, n, "overflow");
        out->u.i = x.u.i / y.u.i;
        return TD_OK;
    case E_DIV_D: {
        if ((rc = ev2(r, n, &x, &y, out))) return rc < 0 ? TD_ERR : TD_OK;
        if (y.u.d == 0) return fail(r, n, "division by zero");
        __int128 q = (__int128)x.u.d * TD_DEC_SCALE / y.u.d;
        if (q > INT64_MAX || q < INT64_MIN) return fail(r, n, "overflow");
        out->u.d = (int64_t)q;
        return TD_OK;
    }
    case E_MIN:
    case E_MAX:
        if ((rc = ev2(r, n, &x, &y, out))) return rc < 0 ? TD_ERR : TD_OK;
        out->u.i = (n->op == E_MIN) == (x.u.i < y.u.i) ? x.u.i : y.u.i;
        return TD_OK;
    case E_ABS:
        if (evx(r, n->a, &x)) return TD_ERR;
        out->missing = x.missing;
        out->u.i = 0;
        if (x.missing) return TD_OK;
        if (x.u.i == INT64_MIN) return fail(r, n, "overflow");
        out->u.i = x.u.i < 0 ? -x.u.i : x.u.i;
        return TD_OK;
    case E_HAS:
        if (evx(r, n->a, &x)) return TD_ERR;
        out->u.b = !x.missing;
        return TD_OK;
    case E_SINCE:
        if (evx(r, n->a, &x)) return TD_ERR;
        out->missing = x.missing;
        out->u.t = 0;
        if (x.missing) return TD_OK;
        if (__builtin_sub_overflow(r->ctx->now, x.u.t, &out->u.t)) return fail(r, n, "overflow");
        return TD_OK;
    case E_TOUCHES:
        if (evx(r, n->a, &x)) return TD_ERR;
        out->missing = x.missing;
        out->u.i = 0;
        if (x.missing) return TD_OK;
        out->u.i = r->ctx->st ? td_state_touches_within(r->ctx->st, r->ctx->now, x.u.t) : 0;
        return TD_OK;
    case E_LOCAL: {
        if (evx(r, n->a, &x)) return TD_ERR;
        out->missing = x.missing;
        out->u.i = 0;
        if (x.missing) return TD_OK;
        if (x.u.t < TD_CIVIL_MIN || x.u.t > TD_CIVIL_MAX)
            return fail(r, n, "time out of range (years 1..9999)");
        td_civil c;
        local_civil(r->ctx, x.u.t, &c);
        out->u.i = n->aux == LOC_HOUR      ? c.hour
                   : n->aux == LOC_WEEKDAY ? c.weekday
                   : n->aux == LOC_MONTH   ? c.month
                                           : c.year;
        return TD_OK;
    }
    case E_BEST:
        if (evx(r, n->a, &x)) return TD_ERR;
        out->missing = x.missing;
        out->u.t = 0;
        if (x.missing) return TD_OK;
        return eval_best_time(r, n, x.u.t, &out->u.t);
    case E_BIZDAY:
    case E_NEXTBIZ: {
        if (evx(r, n->a, &x)) return TD_ERR;
        out->missing = x.missing;
        out->u.t = 0;
        if (x.missing) return TD_OK;
        if (x.u.t < TD_CIVIL_MIN + 70 * TD_DAY || x.u.t > TD_CIVIL_MAX - 70 * TD_DAY)
            return fail(r, n, "time out of range (years 1..9999)");
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
        if (evx(r, n->a, &x)) return TD_ERR;
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
    case E_FLD_OPT: /* reached only as a root: evx handles them */
        return evx(r, i, out);
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
        if (r->facts) record_fact(r->facts, f, &x);
        if (x.missing)
            out->u.b = (n->aux & SIN_MISSING) != 0;
        else
            out->u.b = str_in(&x, r->e->consts + n->b, n->n) != ((n->aux & SIN_NEG) != 0);
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
    return fail(r, n, "internal error: unknown operation");
}

static int eval_at(const td_expr *e, uint32_t root, const td_ctx *ctx, td_value *out, char *err,
                   size_t errcap) {
    if (err && errcap) err[0] = '\0';
    run r = {e, ctx, (td_facts *)ctx->facts, err, errcap, false, 0};
    if (!r.facts && ctx->rec && ctx->rec->fixed) {
        r.usefix = true;
        r.fixv = *ctx->rec->fixed;
    }
    int rc = ev(&r, root, out);
    if (rc != TD_OK) {
        memset(out, 0, sizeof *out);
        out->type = (td_type)e->nodes[root].type;
        out->missing = true;
    }
    return rc;
}

int td_expr_eval(const td_expr *e, const td_ctx *ctx, td_value *out, char *err, size_t errcap) {
    return eval_at(e, 0, ctx, out, err, errcap);
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
        if (ev(&r, i, &x) == TD_OK && truthy(&x)) bits |= 1ULL << (n->fix - 1);
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
    return eval_at(e, e->conj[i], ctx, out, err, errcap);
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

static void jw_put(jw *w, const char *s, size_t len) {
    for (size_t k = 0; k < len; k++) {
        if (w->n + 1 >= w->cap) return;
        w->buf[w->n++] = s[k];
    }
}

static void jw_quoted(jw *w, const char *s, size_t len) {
    jw_put(w, "\"", 1);
    for (size_t k = 0; k < len; k++) {
        unsigned char ch = (unsigned char)s[k];
        char esc[8];
        switch (ch) {
        case '"':
            jw_put(w, "\\\"", 2);
            break;
        case '\\':
            jw_put(w, "\\\\", 2);
            break;
        case '\n':
            jw_put(w, "\\n", 2);
            break;
        case '\r':
            jw_put(w, "\\r", 2);
            break;
        case '\t':
            jw_put(w, "\\t", 2);
            break;
        default:
            if (ch < 0x20 || ch == 0x7f) {
                snprintf(esc, sizeof esc, "\\u%04x", ch);
                jw_put(w, esc, 6);
            } else {
                jw_put(w, (const char *)&ch, 1);
            }
        }
    }
    jw_put(w, "\"", 1);
}

/* The string quoted and escaped at o, which has room for 6 * len + 2 bytes
 * (the bytes jw_quoted writes); @returns the length. */
static size_t jv_quoted(char *o, const char *s, size_t len) {
    static const char hex[] = "0123456789abcdef";
    char *p = o;
    *p++ = '"';
    for (size_t k = 0; k < len; k++) {
        unsigned char ch = (unsigned char)s[k];
        if (ch >= 0x20 && ch != '"' && ch != '\\' && ch != 0x7f) {
            *p++ = (char)ch;
            continue;
        }
        *p++ = '\\';
        switch (ch) {
        case '"':
            *p++ = '"';
            break;
        case '\\':
            *p++ = '\\';
            break;
        case '\n':
            *p++ = 'n';
            break;
        case '\r':
            *p++ = 'r';
            break;
        case '\t':
            *p++ = 't';
            break;
        default:
            memcpy(p, "u00", 3);
            p[3] = hex[ch >> 4];
            p[4] = hex[ch & 15];
            p += 5;
        }
    }
    *p++ = '"';
    return (size_t)(p - o);
}

/* A decimal, exactly: 12.5, 0.003, -1, 100, at o (room for 22 bytes: at
 * most 21, "-922337203685477.5808", and td_fmt_u64's NUL). @returns the
 * length. */
static size_t jv_dec(char *o, td_dec d) {
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
            n = jv_dec(tmp, v->u.d);
            s = tmp;
            break;
        case TD_T_STR: {
            const char *p = v->u.s.p ? v->u.s.p : "";
            size_t len = v->u.s.p ? v->u.s.n : 0;
            if (cap >= 3 && len <= (cap - 3) / 6) { /* 6 * len + 2 < cap */
                n = jv_quoted(buf, p, len);
                buf[n] = '\0';
                return n;
            }
            jw w = {buf, cap, 0};
            jw_quoted(&w, p, len);
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
