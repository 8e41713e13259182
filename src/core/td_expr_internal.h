/*
 * td_expr_internal.h - what the three files of the expression language share
 * and nobody else may include: the limits, the tokens, the parse nodes, the
 * compile context, and the compiled form (td_enode, struct td_expr).
 *
 *   td_expr_parse.c  lexer and parser: source -> tokens -> parse nodes
 *   td_expr_check.c  type checker, emitter and td_expr_compile: parse nodes
 *                    -> typed nodes -> the compiled td_enode array
 *   td_expr_eval.c   evaluator, queries on the compiled form, td_value_json
 *
 * The public contract is td_expr.h; this header changes with the code.
 */
#ifndef TD_EXPR_INTERNAL_H
#define TD_EXPR_INTERNAL_H

#include <string.h>

#include "td_expr.h"

/* Limits: rules expressions are one line of a rules file; these only stop a
 * hostile or broken input from costing unbounded memory or stack. */
#define TD_EXPR_MAX_LEN 16384 /* bytes of source */
#define TD_EXPR_MAX_DEPTH 200 /* nesting of the tree (recursion bound) */
#define TD_EXPR_MAX_DIAGS 64  /* diagnostics per expression */
#define TD_EXPR_MAX_NAME 128  /* longest name we try to suggest for */

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
    E_CMP_IK, /* E_CMP_I against the constant u.k (xc_emit only) */
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
    /* emitted in place of the general forms above (see xc_emit, td_expr_check.c) */
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
    uint32_t *chain; /* operands of the &&/|| chains, left to right (see xc_link_chains) */
    uint32_t nchain;
    /* td_expr_may_hold: the first conjunct is an enum test (E_SIN with
     * SIN_ENUM) at state offset pre_off, true for the codes of pre_mask */
    bool pre;
    uint32_t pre_off;
    uint64_t pre_mask;
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

/* ------------------------------------------------------------------------ */
/* shared between the files (td_expr_parse.c defines the first six)         */
/* ------------------------------------------------------------------------ */

/* Records a diagnostic (counted even when not stored: compile then fails). */
void td_expr_report(cx *c, const char *code, uint32_t off, uint32_t len, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* Grows *p (an array of elem-sized items, *cap of them) to hold need. */
bool td_expr_grow(void **p, uint32_t *cap, uint32_t need, size_t elem);
/* Appends a parse node; @returns its index (0, the ERROR node, on out-of-memory). */
uint32_t td_expr_node(cx *c, pkind kind, uint32_t off, uint32_t len);
/* Lexes the whole source into c->toks (the last token is T_EOF). */
void td_expr_lex(cx *c);
/* Parses one expression from the current token; @returns its root node. */
uint32_t td_expr_parse(cx *c);
/* After a complete expression: when tokens are left, reports the first as
 * unexpected, skips it and parses what follows into *extra (@returns true,
 * so the caller can check it and call again); @returns false at the end. */
bool td_expr_parse_more(cx *c, uint32_t *extra);

/* Whether string x is one of the n strings of k. */
static inline bool td_expr_str_in(const td_value *x, const td_value *k, uint32_t n) {
    for (uint32_t j = 0; j < n; j++)
        if (k[j].u.s.n == x->u.s.n && memcmp(k[j].u.s.p, x->u.s.p, x->u.s.n) == 0) return true;
    return false;
}

#endif
