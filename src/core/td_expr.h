/*
 * td_expr.h - the rules expression language: lexer, parser, type checker,
 * compiler and evaluator. The code is in td_expr_parse.c (lexer, parser),
 * td_expr_check.c (type checker, emitter, td_expr_compile) and
 * td_expr_eval.c (evaluator, queries, td_value_json).
 *
 * An expression is compiled once, when the ruleset loads, into an immutable
 * td_expr (fields resolved to schema entries, literals parsed, types fixed);
 * evaluation walks that compiled form and never re-parses. Type errors are
 * load-time errors; at run time the only failures are arithmetic ones
 * (division by zero, overflow), reported as a TD_ERR with a message, never a
 * crash.
 *
 * Language (docs/rules-language.md is the reference):
 *   literals   true false 42 12.5 "text" 'text' 72h 3d 2w 30m 45s 500ms 1h30m
 *   names      schema fields (td_state.h) such as email.unanswered, tier,
 *              touches.7d, event.kind, rec.channel, target.consent; and `now`
 *   operators  ! unary-  * /  + -  < <= > >=  == !=  in [..]  &&  ||  ??
 *              (from tightest to loosest; ?? binds tighter than comparison)
 *   calls      since(t) local_hour(t) weekday(t) month(t) year(t) best_time(t)
 *              touches_within(d) has(x) min(a,b) max(a,b) abs(x)
 *   types      bool int decimal string time duration; int mixes with decimal
 *              (promoted); time - time = duration; time +- duration = time;
 *              duration * int, duration / int = duration
 *   missing    a field never set is missing; arithmetic on missing is missing;
 *              a comparison or `in` with a missing operand is false; in && || !
 *              a missing bool counts as false; `x ?? y` is y when x is missing.
 *
 * @locality compile: the loading thread; eval: any thread (td_expr is
 * immutable), one td_ctx per thread.
 */
#ifndef TD_EXPR_H
#define TD_EXPR_H

#include "td_base.h"
#include "td_state.h"

/* A compile diagnostic, positioned by byte offset in the expression source. */
typedef struct td_expr_diag {
    uint32_t offset; /* byte offset of the first offending byte */
    uint32_t length; /* bytes to underline (>= 1) */
    char code[8];    /* stable code, e.g. "E201"; see docs/diagnostics.md */
    char msg[200];   /* what is wrong and, when useful, what to do */
} td_expr_diag;

typedef struct td_expr_diags {
    td_expr_diag *v;
    size_t n, cap;
} td_expr_diags;
void td_expr_diags_free(td_expr_diags *d); /* frees v; the struct is the caller's */

typedef struct td_expr td_expr;

/*
 * Compiles `src` (len bytes). `scopes` is a mask of the TD_FIELD_* scopes the
 * expression may read (TD_FIELD_ANY is always allowed; pass TD_FIELD_EVENT,
 * and TD_FIELD_GUARD for guards). `want` is the required result type, or
 * TD_T_NONE for any. Every error found is appended to `diags` (not only the
 * first).
 * @returns the compiled expression (caller frees with td_expr_free), or NULL
 * when there was at least one error.
 */
td_expr *td_expr_compile(const char *src, size_t len, int scopes, td_type want,
                         td_expr_diags *diags);
void td_expr_free(td_expr *e);

td_type td_expr_type(const td_expr *e);
/* The source the expression was compiled from (owned by e). */
const char *td_expr_source(const td_expr *e, size_t *len);

/* The distinct schema fields e reads, for lint checks: up to cap of them go
 * into out; @returns how many there are. */
size_t td_expr_fields(const td_expr *e, const td_field **out, size_t cap);
/* The names e holds as constants that may refer to other rules, for the
 * ruleset's cross-reference checks: the id of last_fired('id') (f = NULL),
 * and each literal a string field is compared with (`rec.rule == 'x'`,
 * `rec.group in ['a', 'b']`: f is the field). fn is called once per
 * literal with its bytes (not NUL-terminated) and the offset in e's source
 * of its first byte (of the comparison when it is written with escapes). */
typedef void (*td_expr_ref_fn)(void *ud, const td_field *f, const char *s, size_t len,
                               uint32_t off);
void td_expr_str_refs(const td_expr *e, td_expr_ref_fn fn, void *ud);
/* true, with *out, when the whole expression is a constant. */
bool td_expr_constant(const td_expr *e, td_value *out);

/* Facts read during an evaluation: each schema field once, with its value. */
#define TD_FACTS_MAX 16
typedef struct td_fact {
    const td_field *field;
    td_value value;
} td_fact;
typedef struct td_facts {
    td_fact v[TD_FACTS_MAX];
    uint32_t n;
} td_facts;
/* Set ctx->facts to a td_facts (n = 0) to have the evaluator record into it. */

/*
 * Evaluates e. @returns TD_OK with *out, or TD_ERR with a message in err
 * (division by zero, overflow, unknown zone is NOT an error: UTC is used).
 */
int td_expr_eval(const td_expr *e, const td_ctx *ctx, td_value *out, char *err, size_t errcap);

/*
 * A cheap test before td_expr_eval: false when the expression is certainly
 * false for state st, because its first top-level conjunct compares an enum
 * field of the state with constants (`stage == 'won'`, `gift_policy in
 * [...]`) and that comparison fails; true when the expression must be
 * evaluated. Evaluating it would give the same false, without an error (the
 * conjunct cannot fail and `&&` stops there): this only saves the walk.
 */
bool td_expr_may_hold(const td_expr *e, const td_state *st);

/* Whether top-level conjunct i reads nothing but constants and the fields of
 * `allowed` (NULL-terminated): no other field, no `now`, no function of the
 * state or the clock. Its value then depends on those fields alone. */
bool td_expr_conjunct_reads_only(const td_expr *e, size_t i, const td_field *const *allowed);
/* Whether evaluating top-level conjunct i can fail (arithmetic, local time):
 * false when it only reads, compares and combines values. */
bool td_expr_conjunct_may_fail(const td_expr *e, size_t i);

/* Top-level conjuncts ("a && b && c" has three; anything else has one), for
 * explanations: each one's source span and its own evaluation. */
/*
 * Guards specialised per candidate rule: marks the operands of e's && and ||
 * chains that are a string test (==, !=, in literals) of one of the
 * `allowed` fields (NULL-terminated: the rec.* fields a rule fixes), up to
 * 64, and @returns how many. td_expr_fixed_truth gives their truth for one
 * context (bit i: marked operand i), computed once per (guard, rule) when
 * the ruleset loads; an evaluation whose ctx->rec->fixed points at those
 * bits reads them instead of testing (`rec.rule != 'x' && ...` costs a bit
 * test). Evaluations that record facts, or without ctx->rec->fixed, test as
 * before. A string test cannot fail, so the result is the same.
 */
size_t td_expr_fix_operands(td_expr *e, const td_field *const *allowed);
uint64_t td_expr_fixed_truth(const td_expr *e, const td_ctx *ctx);

size_t td_expr_conjuncts(const td_expr *e);
const char *td_expr_conjunct_source(const td_expr *e, size_t i, size_t *len);
int td_expr_eval_conjunct(const td_expr *e, size_t i, const td_ctx *ctx, td_value *out, char *err,
                          size_t errcap);

/* Formats a value as the JSON the recommendation's `because` uses:
 * true/false, 12, 12.5, "text", "2026-11-22T10:15:00Z", "72h"; missing is null.
 * @returns length written (output truncated to cap - 1, always NUL-terminated). */
size_t td_value_json(const td_value *v, char *buf, size_t cap);

#endif
