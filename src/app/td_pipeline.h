/*
 * td_pipeline.h - the one path from a trigger to a write: every trigger the
 * daemon handles (a Kafka event, a due timer, an event the engine derives
 * for an owner) goes through the same batch:
 *
 *   source      a batch of Kafka messages (td_pipeline_events), or a batch
 *               of timer claims (td_pipeline_timers; the claimer, td_timers,
 *               knows nothing of the engine)
 *   group       by prospect (a group per prospect; events in consumed order,
 *               a prospect's claims fired in (due time, rule index) order)
 *   load        the state cache, the batch in flight, else Redis (one
 *               pipelined read)
 *   step        td_engine_step per trigger, at the trigger's own time (the
 *               engine's now: an event's occurred_at, a timer's due time);
 *               before each event, the prospect's timers due by its
 *               occurred_at fire first, in (due time, rule index) order, as
 *               `touchd replay` fires them; events the engine derives for an
 *               owner ("owner:<owner_id>") are stepped on the owner's group,
 *               in consumed order, after the owner's timers due by then;
 *               the shadow ruleset observes every step of a source trigger
 *   publish     recommendations (and dead letters) on the output, then wait
 *               for every acknowledgement; then the gift register
 *   store       td_redis_store_diff (WATCH/MULTI, compare-and-set on the
 *               version, the timer index in the same transaction): the only
 *               write path; conflicts are reloaded and recomputed
 *   acknowledge the source: the Kafka offsets, or the timer claims
 *
 * With engine.pipeline, an event batch's store runs on the pipeline's store
 * thread (its own Redis connection) while the next event batch is computed;
 * a timer batch first finishes the batch in flight, then runs on the main
 * thread. Why this gives "applied exactly once, published at least once":
 * docs/operations.md; the shape of the code: docs/architecture.md.
 *
 * The output is Kafka (td_kafka) in the daemon; a td_timers_sink (callbacks)
 * where there is no broker (td_timers_poll: tests, benchmarks).
 *
 * @locality the thread that created it (the daemon's main thread), plus the
 * store thread it owns, which only writes the batch handed to it.
 */
#ifndef TD_PIPELINE_H
#define TD_PIPELINE_H

#include <signal.h>

#include "td_config.h"
#include "td_engine.h"
#include "td_gifts.h"
#include "td_kafka.h"
#include "td_prom.h"
#include "td_redis.h"
#include "td_rules.h"
#include "td_state_cache.h"
#include "td_timers.h"

struct td_shadow;

/* Where recommendations go when there is no Kafka producer. send queues one
 * (key = prospect id); wait returns 0 once every one sent since the last
 * wait is acknowledged. Both return -1 on failure (nothing of the batch is
 * stored or acknowledged: timer claims come back after their lease). */
typedef struct td_timers_sink {
    void *ud;
    int (*send)(void *ud, const char *prospect_id, const char *json, size_t len);
    int (*wait)(void *ud);
    /* optional (NULL: none): called around each step of a source trigger,
     * e.g. to run a shadow ruleset on a copy of the state; they must not
     * change it */
    void (*before_step)(void *ud, const td_state *st);
    void (*after_step)(void *ud, const td_ruleset *rs, const td_trigger *trig, td_ms now,
                       const td_step_out *out);
    /* optional (NULL: plans are not sent): one prospect's plan, json NULL
     * for a tombstone */
    int (*send_plan)(void *ud, const char *prospect_id, const char *json, size_t len);
} td_timers_sink;

typedef struct td_pipeline td_pipeline;

typedef struct td_pipeline_conf {
    const td_config *cfg;        /* engine.*, redis.* (backoff, verify_writes), gifts.* */
    const td_ruleset *rs;        /* the live ruleset (td_pipeline_set_ruleset on reload) */
    td_tzdb *tz;                 /* borrowed */
    td_redis *redis;             /* loads, and writes without a store thread; borrowed */
    td_redis *redis_store;       /* the store thread's (engine.pipeline, with kafka); borrowed */
    td_gifts *gifts;             /* the gift register's (with kafka); borrowed */
    td_kafka *kafka;             /* input and output; NULL: timers only, through sink */
    const td_timers_sink *sink;  /* the output when kafka is NULL */
    td_timers *timers;           /* the timer claimer; NULL: no timer batches */
    struct td_shadow *shadow;    /* NULL: no shadow ruleset */
    volatile sig_atomic_t *stop; /* a stop request (NULL: never) */
} td_pipeline_conf;

/* What a batch came to. */
typedef enum td_pl_rc {
    TD_PL_DONE = 0,      /* stored and acknowledged (or nothing to do) */
    TD_PL_ABANDONED = 1, /* a stop request, or (without Kafka) a Redis or
                          * output failure: nothing acknowledged, the source
                          * delivers it again */
    TD_PL_FATAL = 2,     /* a fatal Kafka error, or out of memory */
    TD_PL_FAILED = 3     /* a timer claim or ack failed, or (with Kafka) a timer
                          * batch could not complete: logged, the claims come
                          * back after their lease; the next poll retries */
} td_pl_rc;

/* Counters since start. Each consumed event counts once in events,
 * applied, skipped_pos and duplicates, also when its prospect was
 * recomputed after a conflict or a redo. dead_letters counts undecodable
 * events and those outside the time bounds (time.*). timers_before_events:
 * timers an event batch fired before an event of their prospect whose
 * occurred_at had passed their due time (also counted as fired in the
 * timers' counters, td_timers_get_stats). */
/* Classes of dead letters (td_pipeline_stats.dead_by_class): bounded, for
 * a metrics label; the reason itself is on the dead-letter message. */
typedef enum td_dlq_class {
    TD_DLQ_MALFORMED = 0,   /* not a JSON object, empty, oversize, a NUL byte */
    TD_DLQ_INVALID = 1,     /* a field missing or wrong (td_event_error.field) */
    TD_DLQ_TIME_BOUNDS = 2, /* occurred_at outside time.max_future_skew / max_past_age */
    TD_DLQ_FEEDBACK = 3,    /* feedback naming a recommendation not the prospect's */
    TD_DLQ_CLASSES = 4
} td_dlq_class;
const char *td_dlq_class_name(td_dlq_class c); /* "malformed", "invalid", ... */

/* The phases of a batch (td_pipeline_stats.phase): load, compute (steps and
 * sends), deliver (acknowledgements, gift register), store (the Redis
 * write), store_wait (the main thread waiting for the store thread), and
 * the whole batch. */
enum {
    TD_PHASE_LOAD,
    TD_PHASE_COMPUTE,
    TD_PHASE_DELIVER,
    TD_PHASE_STORE,
    TD_PHASE_STORE_WAIT,
    TD_PHASE_TOTAL,
    TD_PHASES
};
const char *td_phase_name(int phase); /* "load", ... "total" */
#define TD_WDR_REASONS 7              /* td_wd_reason values */

typedef struct td_pipeline_stats {
    uint64_t batches, events, applied, skipped_pos, duplicates, dead_letters, recs_out, conflicts,
        redis_waits, redone, derived, timers_before_events;
    /* events derived for owners again (a recomputed or redelivered source)
     * and dropped by the owner's dedup window */
    uint64_t derived_dups;
    /* the plan: withdrawals and plans (and tombstones) sent, recommendations
     * published late (late), of which dropped under the "drop" policy */
    uint64_t wds_out, plans_out, late, late_dropped;
    uint64_t gifts_registered, gifts_again;
    /* the timer horizon at the last poll (docs/timers.md "Backlogs"): how
     * far behind the wall clock it was (0: the input is caught up; -1: a
     * partition behind has delivered nothing yet), and polls it bounded */
    int64_t horizon_lag_ms;
    uint64_t horizon_held_polls;
    /* re-leased claims (their claimer died) due beyond the horizon, left
     * to come back after their lease */
    uint64_t horizon_held_claims;
    /* for metrics: dead letters by class, withdrawals by td_wd_reason; phase
     * durations in seconds of event batches ([0]) and timer batches ([1]);
     * end-to-end latency of events: from the message's Kafka timestamp to
     * its batch done (stored, its offsets stored) */
    uint64_t dead_by_class[TD_DLQ_CLASSES];
    uint64_t wds_by_reason[TD_WDR_REASONS];
    td_hist phase[2][TD_PHASES];
    td_hist latency;
} td_pipeline_stats;

/* Per rule of the live ruleset, by td_rule.index (n = td_ruleset_count):
 * recommendations published (sent in a round; re-sent ones after a
 * conflict again), candidates blocked (by the rule blocked) and blocks (by
 * the guard that blocked), and evaluation errors. Counted by step: a
 * prospect recomputed after a store conflict counts its blocks and errors
 * again. td_pipeline_set_ruleset starts them at zero for the new ruleset.
 * The arrays are the pipeline's, valid until the next batch or reload. */
typedef struct td_pipeline_rule_stats {
    size_t n;
    const uint64_t *published, *blocked, *blocks, *errors;
} td_pipeline_rule_stats;
void td_pipeline_get_rule_stats(const td_pipeline *p, td_pipeline_rule_stats *out);

/*
 * Sizes the batches (engine.batch_max_events, timers.claim_batch), opens the
 * gift register (with Kafka), the state cache (engine.state_cache) and, with
 * engine.pipeline and Kafka, the store thread and its Redis connection.
 * @returns the pipeline, or NULL with *exit_code set (TD_EXIT_USAGE: bad
 * configuration; TD_EXIT_FATAL: the store thread) and the reason logged.
 */
td_pipeline *td_pipeline_new(const td_pipeline_conf *pc, int *exit_code);
/* Finishes nothing (call td_pipeline_flush first); stops the store thread. */
void td_pipeline_free(td_pipeline *p);

void td_pipeline_set_ruleset(td_pipeline *p, const td_ruleset *rs);

/* Consumes one batch of events (waiting up to wait_ms for the first) and
 * runs it; with engine.pipeline its store is left in flight. @returns
 * TD_PL_DONE (also when nothing came), or as td_pl_rc. */
td_pl_rc td_pipeline_events(td_pipeline *p, int wait_ms);

/* Claims due timers (up to timers.claim_batch) at wall time `now` and runs
 * them as one batch, then acknowledges the claims. With Kafka, only timers
 * due before the event-time horizon (td_kafka_horizon) are claimed: while
 * the input is behind, a timer waits for the events that precede it. *claimed (may be NULL)
 * receives how many members were claimed. The timers' counters
 * (td_timers_get_stats) are kept through td_timers_record. @returns
 * TD_PL_DONE, or as td_pl_rc. */
td_pl_rc td_pipeline_timers(td_pipeline *p, td_ms now, size_t *claimed);

/* true while an event batch's store is in flight. */
bool td_pipeline_busy(const td_pipeline *p);
/* Settles the batch in flight (if any) and stores its offsets. */
td_pl_rc td_pipeline_flush(td_pipeline *p);

const td_pipeline_stats *td_pipeline_get_stats(const td_pipeline *p);
/* The state cache's counters (zeros without a cache). */
void td_pipeline_cache_stats(const td_pipeline *p, td_state_cache_stats *out);
/* Writes through either connection that ran on one lane, and verify_writes
 * differences (docs/redis.md), summed over the pipeline's connections. */
uint64_t td_pipeline_one_lane_writes(const td_pipeline *p);
uint64_t td_pipeline_verify_mismatches(const td_pipeline *p);

/*
 * One timer round through the pipeline, without Kafka: claim, load, step,
 * publish through `sink` and wait, store, ack. `now` is the wall clock in
 * ms; *claimed_out (may be NULL) receives how many members were claimed.
 * Redis or sink failures are not waited out: nothing is acknowledged and
 * TD_ERR is returned (the claims come back after their lease).
 * @returns TD_OK or TD_ERR.
 */
int td_timers_poll(td_timers *t, td_redis *r, const td_ruleset *rs, td_tzdb *tz, td_ms now,
                   const td_timers_sink *sink, size_t *claimed_out);

#endif
