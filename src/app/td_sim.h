/*
 * td_sim.h - the one offline driver: the engine step driven the way the
 * daemon drives it, over an in-memory store of states and a virtual clock.
 * `touchd replay` (many prospects), `touchd test` and `touchd explain` (one
 * prospect and its owner's state) all run on it.
 *
 * The daemon fires a rule's timer when its due time comes on the wall clock;
 * offline, the clock is virtual and moves only forward, with the events
 * (now = the latest occurred_at seen) or when asked (td_sim_fire_due,
 * td_sim_advance). Every timer a step arms goes into one heap for all the
 * states; whenever the clock moves, every pending timer that came due on the
 * way fires first, in due order, each one an
 * engine step with a TD_TRIG_TIMER trigger at now = its due time. A timer
 * that was re-armed since, or whose rule no longer matches, is stale: the
 * engine ignores it, exactly as in the daemon (timers_stale counts them).
 *
 * The engine may derive an event for another state (owner.prospect_contacted
 * for the seller's "owner:<owner_id>" state, on a prospect's first outbound
 * touch): it is stepped right after, on that state, created on first use;
 * its timers fire like the prospect's.
 *
 * A callback sees every engine step (the state, the trigger and the output;
 * now is sim->clock), so a caller can collect or print recommendations,
 * withdrawals and decisions without knowing about timers or owner states.
 *
 * Every trigger the driver builds (events, timers, derived events) carries
 * s->wall as its td_trigger.wall, so `replay --wall` judges lateness as the
 * daemon would at that wall clock (with the late policy in s->flags); 0, the
 * default, is "never late".
 *
 * Ties (timers due at the same time) fire as each tool always fired them:
 * in the order they were armed in the many-prospect shape (replay), and in
 * the one-prospect shape the main state's first, then by rule id (test,
 * explain), then in arming order.
 *
 * Two shapes: with a prospect id or an initial state (td_sim_init), that
 * state is the main one (td_sim_main) and receives the events whose
 * prospect it does not know (one-prospect tools: test, explain); without,
 * every event's prospect gets its own state, created on first use (replay).
 * The store is an open-addressing table on td_hash64(prospect id); iterating
 * it (td_sim_next) gives the states in table order.
 *
 * File-local functions are prefixed sim_.
 *
 * @locality main thread; a td_sim is used by one thread at a time.
 */
#ifndef TD_SIM_H
#define TD_SIM_H

#include "td_engine.h"

typedef struct td_sim td_sim;
/* Called after every engine step that was not a duplicate, a rejected event or a stale timer;
 * the step ran at now = sim->clock. */
typedef void (*td_sim_fn)(void *ud, const td_sim *sim, const td_state *st, const td_trigger *trig,
                          const td_step_out *out);

/* One state of the store; `mark` is the caller's (0 when created). */
typedef struct td_sim_entry {
    td_state *st; /* NULL: a free slot */
    unsigned mark;
} td_sim_entry;

/* A pending timer on the virtual clock. */
typedef struct td_sim_timer {
    td_ms due_at;
    uint64_t seq; /* arming order: ties fire in the order they were armed */
    td_state *st;
    char rule[TD_RULE_ID_MAX + 1];
    char armed_by[TD_ID_MAX + 1];
} td_sim_timer;

struct td_sim {
    const td_ruleset *rs; /* borrowed */
    td_tzdb *tz;          /* borrowed */
    td_state *main;       /* the one-prospect shape's state, or NULL; in the store */
    td_sim_entry *slots;  /* the store; owns the states (td_sim_free) */
    size_t cap, nstates;
    td_sim_timer *heap; /* min-heap in due order (ties: see the top) */
    size_t nheap, capheap;
    uint64_t seq;
    td_ms clock;       /* TD_MS_MISSING until the first event or advance */
    td_ms wall;        /* the wall clock every trigger carries (td_trigger.wall):
                        * lateness is judged against it; 0 (td_sim_init):
                        * nothing is late */
    unsigned flags;    /* TD_STEP_* flags of every step (the late policy too) */
    td_step_out *out;  /* owned: output of the last step on a trigger given
                        * (event or timer) */
    td_step_out *dout; /* owned: output of the derived events' steps */
    td_sim_fn fn;      /* optional */
    void *ud;
    uint64_t steps, duplicates, timers_fired, timers_stale, derived;
    uint64_t rejected; /* events the engine refused (td_step_out.rejected) */
};

/*
 * Prepares a simulation. With `prospect_id` or `init`, of one main state:
 * a fresh state for prospect_id, or a copy of `init` (its pending timers go
 * on the clock); with both NULL, of an empty store. `clock` is the starting
 * time (TD_MS_MISSING: the first event sets it).
 * @returns TD_OK, or TD_ERR on out-of-memory (nothing to free then).
 */
int td_sim_init(td_sim *s, const td_ruleset *rs, td_tzdb *tz, const char *prospect_id,
                const td_state *init, td_ms clock, unsigned flags);
void td_sim_free(td_sim *s);

/* The main state (one-prospect shape), or NULL. */
static inline td_state *td_sim_main(const td_sim *s) { return s->main; }

/* The entry of `id`, created with a fresh state when `create`. The entry
 * moves when the store grows (any creation); the state does not.
 * @returns NULL when absent (or out of memory). */
td_sim_entry *td_sim_entry_get(td_sim *s, const char *id, bool create);
/* The state of `id` (td_sim_entry_get's). */
td_state *td_sim_state(td_sim *s, const char *id, bool create);
/* The next state of the store in table order: start with *it = 0.
 * @returns NULL after the last. */
td_sim_entry *td_sim_next(const td_sim *s, size_t *it);

/* Fires every pending timer due at or before t, in due order; the clock ends
 * at max(clock, due of the last one fired). @returns TD_OK or TD_ERR (OOM). */
int td_sim_fire_due(td_sim *s, td_ms t);
/* Fires the timers due up to t, then sets the clock to t (if later). */
int td_sim_advance(td_sim *s, td_ms t);
/*
 * The daemon's handling of one event: timers due at or before its
 * occurred_at fire first, then the event is stepped at now = max(clock,
 * occurred_at) with `flags` (TD_STEP_*; s->flags when 0) on the state of its
 * prospect (the main state when the store does not know it; created in the
 * many-prospect shape).
 * @returns TD_OK (s->out holds the event's step) or TD_ERR (OOM).
 */
int td_sim_event(td_sim *s, const td_event *ev, unsigned flags);
/*
 * The first half of td_sim_event, for a caller that steps the event itself
 * (explain's probe): fires the timers due by the event, moves the clock to
 * it, and returns the state the event goes to (NULL: out of memory).
 */
td_state *td_sim_prepare(td_sim *s, const td_event *ev);

/*
 * The business calendar for the offline commands, as `replay` chooses it:
 * the holiday files of `dir`, or of ./config/holidays when dir is NULL and
 * that directory exists, else none (NULL: weekends only). *used receives the
 * directory read (or NULL).
 * @returns TD_OK (*cal may be NULL) or TD_ERR with err set.
 */
struct td_calendar;
int td_sim_load_calendar(const char *dir, struct td_calendar **cal, const char **used, char *err,
                         size_t errcap);

#endif
