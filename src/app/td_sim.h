/*
 * td_sim.h - one prospect on a virtual clock: the engine step driven the way
 * the daemon drives it, for the offline commands (`test`, `explain`).
 *
 * The daemon fires a rule's timer when its due time comes on the wall clock;
 * offline, the clock is virtual and moves only forward, with the events
 * (now = the latest occurred_at seen, as in `replay`) or when asked
 * (td_sim_advance). Whenever it moves, every pending timer that came due on
 * the way is fired first, in due order (ties: rule id), each one an engine
 * step with a TD_TRIG_TIMER trigger at now = its due time.
 *
 * The engine may derive an event for another state (owner.prospect_contacted
 * for the seller's "owner:<owner_id>" state, on a prospect's first outbound
 * touch): it is stepped right after, on that state, created on first use;
 * its timers fire like the prospect's.
 *
 * A callback sees every engine step (the state, the trigger and the output),
 * so a caller can collect recommendations and decisions without knowing
 * about timers or owner states.
 *
 * @locality main thread; a td_sim is used by one thread at a time.
 */
#ifndef TD_SIM_H
#define TD_SIM_H

#include "td_engine.h"

typedef struct td_sim td_sim;
/* Called after every engine step that was not a duplicate or a stale timer. */
typedef void (*td_sim_fn)(void *ud, const td_sim *sim, const td_state *st, const td_trigger *trig,
                          const td_step_out *out);

struct td_sim {
    const td_ruleset *rs; /* borrowed */
    td_tzdb *tz;          /* borrowed */
    td_state st;          /* the prospect's state; owned (td_sim_free) */
    td_state **others;    /* derived states ("owner:<id>"); owned */
    size_t nothers, capothers;
    td_ms clock;       /* TD_MS_MISSING until the first event or advance */
    unsigned flags;    /* TD_STEP_* flags of every step */
    td_step_out *out;  /* owned: output of the last step on a trigger given
                           * (event or timer), kept when it derives an event */
    td_step_out *dout; /* owned: output of the derived events' steps */
    td_sim_fn fn;      /* optional */
    void *ud;
    uint64_t steps, duplicates, timers_fired, derived;
};

/*
 * Prepares a simulation of a fresh state for `prospect_id`, or of a copy of
 * `init` when not NULL. `clock` is the starting time (TD_MS_MISSING: the
 * first event sets it).
 * @returns TD_OK, or TD_ERR on out-of-memory (nothing to free then).
 */
int td_sim_init(td_sim *s, const td_ruleset *rs, td_tzdb *tz, const char *prospect_id,
                const td_state *init, td_ms clock, unsigned flags);
void td_sim_free(td_sim *s);

/* The state of `id`: the prospect's, or a derived one (created when `create`).
 * @returns NULL when absent (or out of memory). */
td_state *td_sim_state(td_sim *s, const char *id, bool create);

/* Fires every pending timer due at or before t, in due order; the clock ends
 * at max(clock, due of the last one fired). @returns TD_OK or TD_ERR (OOM). */
int td_sim_fire_due(td_sim *s, td_ms t);
/* Fires the timers due up to t, then sets the clock to t (if later). */
int td_sim_advance(td_sim *s, td_ms t);
/*
 * The daemon's handling of one event: timers due at or before its
 * occurred_at fire first, then the event is stepped at now = max(clock,
 * occurred_at) with `flags` (TD_STEP_*; s->flags when 0).
 * @returns TD_OK (s->out holds the event's step) or TD_ERR (OOM).
 */
int td_sim_event(td_sim *s, const td_event *ev, unsigned flags);

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
