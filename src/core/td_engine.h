/*
 * td_engine.h - the engine step, the functional core of touchd:
 *
 *   (ruleset, state, trigger, now) -> (new state, recommendations, timers)
 *
 * Pure and deterministic: no clock reads (now is a parameter), no I/O, no
 * globals. The state is changed in place (the caller keeps a copy when it
 * needs the old one). The same step serves the daemon, replay, test and
 * explain.
 *
 * One step, for an event trigger:
 *   1. an event id already in the prospect's dedup ring is a duplicate:
 *      nothing changes (out->duplicate);
 *   2. the event is applied to the state (td_state_apply) and remembered;
 *   3. timer rules triggered by the type are armed (or re-armed);
 *   4. other triggered rules are evaluated: `when`, then cooldown;
 *   5. guards judge each candidate; a blocked candidate is not published;
 *   6. per group, the unblocked candidate with the highest priority wins
 *      (ties: ruleset order); losers are recorded as such;
 *   7. winners become recommendations with deterministic ids, and their
 *      rule's last-fired time is set (cooldowns).
 * For a timer trigger, step 1-3 are replaced by: the pending timer must match
 * (rule, due_at, armed_by), else the trigger is stale and ignored; it is
 * disarmed and its rule alone is evaluated as in 4-7.
 *
 * The probe (td_engine_probe) is the same step, by the same code, with every
 * rule's decision written where a caller can read it: whether the trigger put
 * the rule before the engine, the value of each condition of its `when`, its
 * cooldown, the guard that blocked it (and that guard's conditions for it),
 * its group's winner, whether it fired. `touchd explain` reads it instead of
 * repeating the engine's logic.
 *
 * @locality any thread; a td_step_out is used by one thread at a time.
 */
#ifndef TD_ENGINE_H
#define TD_ENGINE_H

#include "td_base.h"
#include "td_event.h"
#include "td_expr.h"
#include "td_rules.h"
#include "td_state.h"

typedef enum td_trigger_kind { TD_TRIG_EVENT = 0, TD_TRIG_TIMER = 1 } td_trigger_kind;

typedef struct td_trigger {
    td_trigger_kind kind;
    const td_event *ev; /* TD_TRIG_EVENT */
    /* TD_TRIG_TIMER */
    const char *rule;
    td_ms due_at;
    const char *armed_by;
    /* the wall clock at publication, for the catch-up policy (a
     * recommendation published past its not_before by more than its
     * late_after, or past its expires_at, is late); 0: never late (the
     * offline tools, unless told a wall clock) */
    td_ms wall;
    /* how long a duplicate event id is caught at least (engine.dedup_window;
     * 0: TD_DEDUP_WINDOW, 7 days), besides the prospect's last TD_DEDUP_MIN
     * events */
    td_ms dedup_window;
} td_trigger;

typedef enum td_outcome {
    TD_OUT_FIRED = 0,   /* published */
    TD_OUT_NOT_MATCHED, /* `when` was false */
    TD_OUT_COOLDOWN,    /* matched, but fired less than `cooldown` ago (until) */
    TD_OUT_BLOCKED,     /* matched, blocked by guard `by` */
    TD_OUT_LOST_GROUP,  /* matched, another rule `by` of its group won */
    TD_OUT_ARMED,       /* timer rule: timer (re)armed, due at `until` */
    TD_OUT_ERROR        /* evaluation failed: `error` */
} td_outcome;
const char *td_outcome_name(td_outcome o); /* "fired", "not_matched", ... */

/* One condition of the explanation: a top-level conjunct of `when`. */
#define TD_BECAUSE_MAX 8
typedef struct td_because {
    const char *expr; /* points into the compiled rule */
    uint32_t len;
    td_value value;
    td_facts facts;
} td_because;

typedef struct td_decision {
    const td_rule *rule;
    td_outcome outcome;
    const td_rule *by; /* the guard that blocked, or the group's winner */
    td_ms until;       /* cooldown end, or timer due time */
    char error[160];
    td_because because[TD_BECAUSE_MAX];
    uint32_t nbecause;
} td_decision;

#define TD_REC_ID_LEN 34 /* "r-" + 32 hex; a withdrawal's "w-" + 32 hex */
typedef struct td_rec {
    char id[TD_REC_ID_LEN + 1];
    const td_rule *rule;
    td_channel channel;
    const char *touch; /* from the rule */
    const char *note;  /* from the rule, may be NULL */
    td_ms not_before;
    td_ms expires_at; /* not_before + the rule's expires */
    int64_t priority;
    bool late;    /* published late (trigger's wall clock; see td_trigger.wall) */
    bool dropped; /* late under the "drop" policy: not to be published */
    td_because because[TD_BECAUSE_MAX];
    uint32_t nbecause;
    /* the recommendation's JSON as published but for generated_at (one
     * line, ends with '}'), in the step's output: valid until the next step */
    const char *body;
    uint32_t body_len;
} td_rec;

/* Why a pending recommendation is withdrawn (the contract's reasons). */
typedef enum td_wd_reason {
    TD_WDR_REPLIED = 0, /* a reply, not out_of_office: the sequence ends */
    TD_WDR_OPTED_OUT,   /* its channel opted out, unsubscribed or lost consent */
    TD_WDR_BOUNCED,     /* its channel hard-bounced */
    TD_WDR_SUPERSEDED,  /* a newer recommendation of its group */
    TD_WDR_STAGE,       /* the stage became won or lost */
    TD_WDR_RULE,        /* a rule's `withdraws` */
    TD_WDR_EXPIRED      /* its expires_at passed */
} td_wd_reason;
const char *td_wd_reason_name(td_wd_reason r); /* "replied", "opted_out", ... */

/* A withdrawal the step made: the pending recommendation `withdraws` left
 * the plan for `reason`. */
typedef struct td_wd {
    char id[TD_REC_ID_LEN + 1]; /* "w-" + the first 128 bits of sha256(trigger id, withdrawn id) */
    char withdraws[TD_REC_ID_LEN + 1];
    char rule[TD_RULE_ID_MAX + 1]; /* the withdrawn recommendation's rule */
    td_wd_reason reason;
    const td_rec *by; /* the recommendation of this step that caused it (superseded, rule) */
    const char *body; /* as td_rec.body */
    uint32_t body_len;
} td_wd;

/* A timer to arm (or re-arm) in durable storage; also recorded in the state. */
typedef struct td_arm {
    const td_rule *rule;  /* NULL for the plan's own timer (TD_PLAN_TIMER) */
    const char *rule_id;  /* rule->id, or TD_PLAN_TIMER */
    const char *armed_by; /* the event id it is armed with (valid as the trigger) */
    td_ms due_at;
} td_arm;

/* The timer id the engine arms for a prospect's plan: due when the first
 * pending recommendation expires or a snoozed one comes back, so the plan
 * topic follows without waiting for the prospect's next event. Not a rule:
 * no rule id starts with '~'. */
#define TD_PLAN_TIMER "~plan"

#define TD_STEP_RECS_MAX 32
#define TD_STEP_DECISIONS_MAX 256

/* Step flags. */
enum {
    TD_STEP_EXPLAIN = 1u << 0,  /* fill decisions, with explanations, for every rule considered */
    TD_STEP_OUTCOMES = 1u << 1, /* fill decisions (outcome, by, until) without explanations */
    /* the catch-up policy for a late recommendation (td_trigger.wall); neither: "mark"
     * (published with "late": true, not in the plan) */
    TD_STEP_LATE_PUBLISH = 1u << 2, /* published as any other, in the plan */
    TD_STEP_LATE_DROP = 1u << 3     /* not published (td_rec.dropped), counted */
};

typedef struct td_step_out {
    bool duplicate; /* event already applied: nothing changed */
    /* the event cannot be applied (feedback naming a recommendation that is
     * not this prospect's): nothing changed; the caller dead-letters it with
     * reject_field and reject_reason (which never echo the value) */
    bool rejected;
    char reject_field[32];
    char reject_reason[160];
    bool stale; /* timer trigger no longer pending: nothing changed */
    td_rec recs[TD_STEP_RECS_MAX];
    uint32_t nrecs;
    td_arm arms[TD_STEP_RECS_MAX];
    uint32_t narms;
    td_decision decisions[TD_STEP_DECISIONS_MAX]; /* with TD_STEP_EXPLAIN */
    uint32_t ndecisions;
    /* owner.prospect_contacted for the owner's state ("owner:<owner_id>"),
     * when this event was the prospect's first outbound touch and the owner
     * is known: the caller steps it next, like any event */
    bool has_derived;
    td_event derived;
    /* the plan: withdrawals of pending recommendations, and whether the
     * plan (st->plan) changed, so the caller publishes it */
    td_wd wds[TD_PLAN_MAX];
    uint32_t nwds;
    bool plan_changed;
    uint32_t nlate;    /* recommendations published late (marked, or not: as the policy says) */
    td_buf text;       /* owned (td_step_out_free): the bodies */
    uint32_t nblocked; /* candidates blocked by guards (always counted) */
    uint32_t nerrors;  /* rules whose evaluation failed (always counted) */
    /* for metrics: the first TD_STEP_RECS_MAX blocked candidates (their rule
     * and the guard that blocked them, by td_rule.index), and the rules (or
     * guards) of the first TD_STEP_RECS_MAX evaluation errors */
    uint32_t blocked_rule[TD_STEP_RECS_MAX], blocked_guard[TD_STEP_RECS_MAX];
    uint32_t error_rule[TD_STEP_RECS_MAX];
    char trigger_id[TD_ID_MAX + 96]; /* event id, or "timer:<rule>:<armed_by>:<due ms>" */
} td_step_out;

/* A step output (zeroed), and its release. @returns NULL on out-of-memory. */
td_step_out *td_step_out_new(void);
void td_step_out_free(td_step_out *out);

/*
 * Runs one step. `out` is overwritten. The engine's now is the trigger's
 * time (an event's occurred_at, a timer's due_at), or the prospect's clock
 * (st->clock) when that is later: per prospect, time never runs backwards,
 * so an old event is applied to the counters but evaluated at the clock.
 * `now` is only read by the probe's "now" evaluation (trig NULL). `tz` is a zone cache owned by the
 * calling thread.
 * @returns TD_OK, or TD_ERR on out-of-memory (state may be partly updated:
 * callers discard it and reload).
 */
int td_engine_step(const td_ruleset *rs, td_state *st, const td_trigger *trig, td_ms now,
                   td_tzdb *tz, unsigned flags, td_step_out *out);

/* What the probe reports for one rule or guard. */
typedef struct td_probe_rule {
    const td_rule *rule;
    /* rules: the trigger makes it a candidate for evaluation (its `on`; for a
     * timer, its rule; for a "now", every rule); guards: it judges the
     * trigger */
    bool triggered;
    /* rules: d holds its outcome (fired, not_matched with the value of each
     * condition of `when`, cooldown until, blocked by, lost_group to, armed
     * due, error); guards: d.error holds its last run-time error */
    bool decided;
    td_decision d;
    td_ms not_before; /* a rule past `when` and cooldown (fired, blocked or
                       * lost): its recommendation's time; else TD_MS_MISSING */
    /* guards: the candidates it blocked */
    const td_rule *blocked[TD_STEP_RECS_MAX];
    uint32_t nblocked;
    /* a blocked rule: the conditions of the guard's `block` for it */
    td_because gb[TD_BECAUSE_MAX];
    uint32_t ngb;
} td_probe_rule;

typedef struct td_probe {
    td_probe_rule *rules; /* the caller's: one per rule of the ruleset, by index */
    size_t nrules;        /* td_ruleset_count */
    uint32_t ncandidates; /* rules the guards judged (fired, blocked or lost) */
} td_probe;

/*
 * The step with a report per rule (see the top). With a trigger it is
 * td_engine_step itself (st changes as the step changes it, out is filled
 * but for out->decisions, which go to p). With trig NULL it is a "now"
 * evaluation: every rule is considered at `now` against st as a timer
 * trigger considers its one rule (event.* missing, the guards that judge
 * timers), and st is not changed; recommendations past TD_STEP_RECS_MAX are
 * reported in p only.
 * @returns TD_OK, or TD_ERR on out-of-memory or p->nrules not the ruleset's.
 */
int td_engine_probe(const td_ruleset *rs, td_state *st, const td_trigger *trig, td_ms now,
                    td_tzdb *tz, td_probe *p, td_step_out *out);

/*
 * Appends one recommendation as the contract's JSON object (one line, no
 * trailing newline) to b. generated_at is the caller's clock.
 * @returns TD_OK or TD_ERR (out of memory).
 */
int td_rec_json(const td_rec *r, const td_state *st, const td_ruleset *rs, const td_trigger *trig,
                td_ms generated_at, td_buf *b);
/* A body (td_rec.body, td_wd.body) as published: generated_at added. */
int td_body_json(const char *body, size_t len, td_ms generated_at, td_buf *b);
/*
 * The current plan of st as the plan topic's JSON object (one line):
 * prospect_id, version (st->plan_version), updated_at (the prospect's
 * clock), ruleset, pending (the pending recommendations as published but
 * for generated_at, soonest not_before first; snoozed ones are left out
 * until their time). With nothing to show the plan topic gets a tombstone
 * instead: callers check td_state_plan_visible(st).
 * @returns TD_OK or TD_ERR (out of memory).
 */
int td_plan_json(const td_state *st, const td_ruleset *rs, td_buf *b);

/* What may withdraw pending e (the engine's own tests, for explain): the
 * reasons in the order the engine tries them. Every entry expires and may
 * be named by a rule's withdraws; a prospect's touch is withdrawn by an
 * opt-out or hard bounce of its channel; a touch of the sequence (not a
 * gift, not an answer to a reply, not a stop) by a reply or a won/lost
 * stage; anything by a newer recommendation of its group, but a stop only
 * by a newer stop. @returns how many (v has room for 7). */
size_t td_plan_withdrawn_on(const td_pending *e, td_wd_reason *v);

#endif
