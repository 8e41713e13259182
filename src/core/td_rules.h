/*
 * td_rules.h - rules files (libconfig) compiled into an immutable ruleset.
 *
 * A ruleset is every `*.rules` file of a directory, loaded together, in file
 * name order, and hashed (sha256 over each file's name and bytes) so that
 * every recommendation names the exact rules that produced it. Compilation
 * takes the files' text, not paths: reading files is the caller's I/O.
 *
 * Diagnostics carry file:line:col, the source line and a caret, a stable code
 * and a hint; every error in the ruleset is reported, not only the first.
 *
 * @locality compile on any thread; a compiled ruleset is immutable and may be
 * shared by threads (evaluation state lives in td_ctx and the step output).
 */
#ifndef TD_RULES_H
#define TD_RULES_H

#include "td_base.h"
#include "td_expr.h"
#include "td_state.h"

typedef enum td_severity { TD_SEV_ERROR = 0, TD_SEV_WARNING = 1 } td_severity;

typedef struct td_diag {
    td_severity severity;
    char code[8];  /* "E101"... "W301"...; docs/diagnostics.md */
    char *file;    /* owned */
    int line, col; /* 1-based; 0 when unknown */
    char *msg;     /* owned */
    char *source;  /* owned: the source line, or NULL */
    int caret_len; /* >= 1 when source != NULL */
} td_diag;

typedef struct td_diags {
    td_diag *v;
    size_t n, cap;
    size_t errors, warnings;
} td_diags;
void td_diags_free(td_diags *d);
/* Formats one diagnostic as
 *   rules/x.rules:12:17: error E201: unknown field 'emial.sent'
 *      12 |   when = "emial.sent > 2";
 *         |           ^~~~~~~~~~
 * (malloc'd, caller frees). */
char *td_diag_format(const td_diag *d);

/* One rules file's text. */
typedef struct td_source {
    const char *name; /* as shown in diagnostics, e.g. "rules/ghosting.rules" */
    const char *text;
    size_t len;
} td_source;

/* One entry of a rule's `withdraws`: pending recommendations of a group,
 * of a rule, or with an intent ("intent:<name>"). A bare name is a group or
 * a rule id (both, when it names both). */
typedef enum td_withdraw_kind { TD_WD_NAME = 0, TD_WD_INTENT = 1 } td_withdraw_kind;
typedef struct td_withdraw {
    td_withdraw_kind kind;
    char *name;    /* owned */
    int line, col; /* of the entry's string (col 0: the `withdraws` line only) */
    int len;       /* bytes of the entry as written, "intent:" included */
} td_withdraw;

typedef struct td_rule {
    char id[TD_RULE_ID_MAX + 1];
    td_rule_key
        key; /* id with its length and hash: the key of the state's fired and timer tables */
    char *doc;
    const char *file; /* points into the ruleset's file names */
    int line;
    size_t index; /* position in the ruleset (file order, then rule order) */
    bool guard;   /* has `block` instead of `recommend` */

    uint64_t on;             /* bit (1 << td_event_type) per triggering type; 0 = all for guards */
    td_ms after;             /* timer rules: delay after the triggering event; 0 = none */
    int after_business_days; /* `after = "2bd"`: business days instead (after = n days) */
    td_expr *when;           /* NULL = always true */
    int64_t priority;        /* default 50 */
    char *group;             /* NULL = its own group */
    td_ms cooldown;          /* 0 = none */

    /* recommend (non-guards) */
    td_channel channel;
    char *touch;
    td_expr *at; /* time; NULL = now */
    char *note;
    bool window_any; /* `window = "any"`: not moved into business hours (quiet hours still apply) */

    /* the plan (non-guards) */
    char *intent;           /* what the touch is for (docs/rules.md), NULL: none */
    td_ms expires;          /* after its not_before; 0: the ruleset's settings.expires */
    td_ms late_after;       /* 0: the ruleset's settings.late_after */
    td_withdraw *withdraws; /* owned: what its recommendation makes obsolete */
    uint32_t nwithdraws;

    /* guards */
    td_expr *block; /* bool over rec.*, target.* and state */
    char *reason;   /* why, in words, for explain and metrics */
    /* guards: bit i set when `block` is false for rule i (td_rule.index)
     * whatever the state, because one of its conjuncts reads only what the
     * rule fixes (rec.channel, rec.touch, rec.rule, rec.group, rec.priority)
     * and is false for it, with no conjunct before it that can fail; NULL
     * when no conjunct qualifies. Owned; read through td_rule_never_blocks. */
    uint64_t *never_blocks;
    /* guards: the truth of the block's fixed operands (td_expr_fix_operands)
     * for each rule, by td_rule.index; NULL when the block has none. Owned;
     * the engine points td_rec_view.fixed at the candidate's word. */
    uint64_t *fixed_truth;
} td_rule;

typedef struct td_ruleset td_ruleset;

/*
 * Compiles the sources into a ruleset. Diagnostics (errors and warnings) are
 * appended to `diags`.
 * @returns the ruleset, or NULL when there was any error.
 */
td_ruleset *td_ruleset_compile(const td_source *srcs, size_t n, td_diags *diags);
void td_ruleset_free(td_ruleset *rs);

/* Attaches the holiday calendar the engine and business_day() use (borrowed:
 * it must outlive the ruleset). Without it, the ruleset's own empty calendar
 * (weekends only) is used. */
struct td_calendar;
void td_ruleset_set_calendar(td_ruleset *rs, const struct td_calendar *cal);

/* "sha256:<64 hex>" */
const char *td_ruleset_hash(const td_ruleset *rs);
const td_settings *td_ruleset_settings(const td_ruleset *rs);
size_t td_ruleset_count(const td_ruleset *rs);
const td_rule *td_ruleset_rule(const td_ruleset *rs, size_t i);
const td_rule *td_ruleset_find(const td_ruleset *rs, const char *id);
/* The same with a precomputed key (td_rule_key_make). */
const td_rule *td_ruleset_find_key(const td_ruleset *rs, const td_rule_key *key);

/* What a reload from `from` to `to` removes: the rules of `from` whose id
 * `to` does not have, and the files `from` was compiled from that `to` is
 * not (by name as given). *nrules and *nfiles count them all; their names
 * go into rules_out and files_out (each cap bytes, always NUL-terminated),
 * comma-separated, rules in ruleset order, files by their last path
 * component, bytes outside printable ASCII as '?'; when a list does not
 * fit, it ends with "+N" (N more not listed). For one bounded log line. */
void td_ruleset_removed(const td_ruleset *from, const td_ruleset *to, size_t *nrules,
                        char *rules_out, size_t rules_cap, size_t *nfiles, char *files_out,
                        size_t files_cap);

/* Rules (non-guards) triggered by an event type, in ruleset order. */
const td_rule *const *td_ruleset_for_event(const td_ruleset *rs, td_event_type t, size_t *n);
/* Guards, in ruleset order. */
const td_rule *const *td_ruleset_guards(const td_ruleset *rs, size_t *n);

/* Whether guard g judges a trigger: an event type, or -1 for a timer trigger.
 * A guard without `on` judges every trigger; `on` may list "timer". */
bool td_rule_guards_trigger(const td_rule *g, int event_type);
/* Rules triggered only by owner.* events work on an owner's state (owner
 * nudges): the owner domain. Guards judge prospect recommendations; an
 * owner-domain candidate is judged only by guards whose `on` names owner.*. */
bool td_rule_owner_domain(const td_rule *r);
/* Whom its recommendations are for: the seller (an owner-domain rule, touch
 * owner_nudge, or intent owner) or the prospect. */
bool td_rule_owner_audience(const td_rule *r);
bool td_rule_guards_candidate(const td_rule *g, const td_rule *r, int event_type);
/* Whether guard g's block is false for every candidate of rule r, so the
 * engine need not evaluate it (its `when`, a precondition, still is). */
static inline bool td_rule_never_blocks(const td_rule *g, const td_rule *r) {
    return g->never_blocks && ((g->never_blocks[r->index / 64] >> (r->index % 64)) & 1);
}

/* The touch vocabulary of DESIGN.md (rules may add their own: a warning). */
bool td_touch_known(const char *touch);
/* The intent vocabulary (docs/rules.md; others are a warning). */
bool td_intent_known(const char *intent);
/* A rule's expiry and lateness bound: its own, or the ruleset's default. */
td_ms td_rule_expires(const td_ruleset *rs, const td_rule *r);
td_ms td_rule_late_after(const td_ruleset *rs, const td_rule *r);

#endif
