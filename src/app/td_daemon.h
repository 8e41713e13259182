/*
 * td_daemon.h - the `touchd run` loop: the imperative shell around the engine.
 *
 * One iteration handles one batch of input messages:
 *
 *   consume (<= batch_max_events, <= batch_max_ms)
 *   decode each; invalid -> dead-letter topic (with the reason)
 *   group valid events by prospect (consumed order = partition order kept)
 *   load every prospect's state from Redis (one pipeline)
 *   per prospect, per event in order: skip when its offset <= the position
 *     stored in the state for (topic, partition) -- applied before a crash --
 *     else engine step (now = wall clock), render recommendations, set position
 *   produce recommendations (and dead letters); wait for every delivery report
 *   store changed states with compare-and-set on their loaded version;
 *     conflict -> reload that prospect, recompute (positions and the dedup
 *     ring skip what the other writer applied), produce, store again;
 *     Redis down -> pause consumption, back off, retry until it is back
 *   store the input offsets of every message of the batch (auto-committed)
 *
 * With engine.pipeline (the default) the store of batch N runs on a store
 * thread while the main thread consumes and computes batch N+1 (which starts
 * from N's computed states where they share prospects); N's offsets are
 * stored, and a conflict in N recomputes N+1, before N+1's store starts.
 *
 * Why this gives "applied exactly once, published at least once" is written
 * out in docs/operations.md.
 *
 * Signals (the handlers only set flags): SIGTERM/SIGINT finish the batch,
 * commit, close and exit 0; SIGHUP reloads the rules. The rules directory is
 * also polled every rules.reload_poll_ms for changes. A ruleset that fails to
 * compile is logged diagnostic by diagnostic and the previous one keeps
 * serving.
 *
 * @locality main thread (librdkafka's callbacks are served on it too), and
 * the store thread for Redis writes.
 */
#ifndef TD_DAEMON_H
#define TD_DAEMON_H

#include <signal.h>

#include "td_config.h"

typedef struct td_daemon td_daemon;

/* Set by signal handlers (td_cmd_run installs them); read by the loop. */
extern volatile sig_atomic_t td_daemon_stop_requested;
extern volatile sig_atomic_t td_daemon_reload_requested;

/*
 * Loads the rules, connects to Redis and Kafka (starting the embedded broker
 * when configured). Borrows cfg (it must outlive the daemon).
 * @returns the daemon, or NULL with *exit_code set (TD_EXIT_FAIL: rules do not
 * compile; TD_EXIT_USAGE: bad configuration; TD_EXIT_FATAL: Redis or Kafka
 * unreachable) and the reason logged.
 */
td_daemon *td_daemon_new(const td_config *cfg, int *exit_code);

/* Runs until a stop is requested or a fatal error. @returns the exit code
 * (TD_EXIT_OK, or TD_EXIT_FATAL after a fatal Kafka error). */
int td_daemon_run(td_daemon *d);

/* Closes Kafka (final commit) and Redis, frees everything. */
void td_daemon_free(td_daemon *d);

#endif
