/*
 * td_obs.h - what the daemon shows over HTTP: /metrics (Prometheus text),
 * /healthz and /readyz (JSON), from a snapshot the main loop publishes.
 *
 * The pipeline's counters belong to the main thread and are never read by
 * another. Once per loop turn the daemon copies them into the snapshot
 * (td_obs_publish: a few KB of memcpy under a mutex taken with trylock, so
 * the loop never waits for a scrape: a turn that finds the HTTP thread
 * copying skips its publish and the next turn publishes). The HTTP thread
 * copies the snapshot out under the same mutex, then renders the copy
 * without holding anything. What a loop stuck in a wait cannot publish is
 * read from atomics instead (td_health.h: the heartbeat, a Redis hold), so
 * /healthz and /readyz tell the truth while the loop is held.
 *
 * Rule counters are kept by rule id across reloads: when a ruleset replaces
 * another (td_obs_set_ruleset), the counts of a rule that keeps its id carry
 * on, so the counters never go down; rules no longer in the ruleset are no
 * longer exported.
 *
 * Routes (td_obs_routes) for td_http: GET /metrics, /healthz, /readyz, all
 * public. Metric names and meanings: docs/operations.md, "Metrics".
 *
 * @locality td_obs_new/free/set_ruleset/publish*: the main thread; the
 * route handlers: the HTTP thread.
 */
#ifndef TD_OBS_H
#define TD_OBS_H

#include <stddef.h>
#include <stdint.h>

#include "td_http.h"
#include "td_kafka.h"
#include "td_pipeline.h"
#include "td_rules.h"
#include "td_state_cache.h"
#include "td_timers.h"

typedef struct td_obs td_obs;

/* The daemon's own counters. */
typedef struct td_obs_daemon {
    uint64_t reloads, reload_failures;
    uint64_t timer_poll_failures; /* consecutive failed timer polls (0: the last worked) */
    uint64_t one_lane_writes, verify_mismatches;
} td_obs_daemon;

/* What the loop publishes (borrowed during the call). */
typedef struct td_obs_input {
    const td_pipeline_stats *ps;
    td_pipeline_rule_stats rules; /* by td_rule.index of the active ruleset */
    const td_kafka_stats *ks;
    const td_timers_stats *ts;
    td_state_cache_stats cs;
    td_obs_daemon dm;
} td_obs_input;

td_obs *td_obs_new(void);
void td_obs_free(td_obs *o);

/* A ruleset goes live (at start: prev NULL), loaded at wall ms `loaded_at`.
 * prev_counts are the pipeline's counts for prev, read before it is
 * replaced: they are kept under their rule ids. Borrows nothing. */
void td_obs_set_ruleset(td_obs *o, const td_ruleset *rs, int64_t loaded_at, const td_ruleset *prev,
                        const td_pipeline_rule_stats *prev_counts);
/* Copies the counters into the snapshot, unless the HTTP thread holds it
 * (then nothing: the next call publishes). @returns true when published. */
bool td_obs_publish(td_obs *o, const td_obs_input *in);
/* The consumer lag per partition (td_kafka_lags), and the timers pending in
 * the index and in flight (td_timers_count), when the loop measured them. */
void td_obs_publish_lags(td_obs *o, const td_kafka_lag *lags, size_t n);
void td_obs_publish_timers(td_obs *o, int64_t pending, int64_t in_flight);

/* The routes to serve (valid while o lives). */
const td_http_route *td_obs_routes(td_obs *o, size_t *n);

/* /metrics into b (the HTTP thread's handler; exposed for tests). */
int td_obs_render_metrics(td_obs *o, td_buf *b);

#endif
