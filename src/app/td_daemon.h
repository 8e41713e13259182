/*
 * td_daemon.h - the `touchd run` process: the imperative shell around the
 * pipeline (td_pipeline.h), which does every batch.
 *
 * The daemon owns the process: the configuration, the connections (Redis,
 * Kafka, the timer claimer, the shadow ruleset), signals, rule reloads and
 * the main loop. Each turn of the loop:
 *
 *   reload the rules when asked (SIGHUP) or when the directory changed
 *   log the progress line (every 60 s)
 *   when timers.poll_ms has passed: td_pipeline_timers (a timer batch),
 *     again at once while polls come back full, for at most ~250 ms
 *   td_pipeline_events: consume one batch (<= batch_max_events,
 *     <= batch_max_ms) and run it: decode (invalid -> dead-letter topic),
 *     group by prospect, load, step (now = wall clock), publish and wait for
 *     the acknowledgements, register gifts, store with compare-and-set
 *     (conflicts recomputed; Redis down -> consumption paused, backoff,
 *     retry), store the input offsets
 *
 * With engine.pipeline (the default) the store of event batch N runs on the
 * pipeline's store thread while the main thread consumes and computes batch
 * N+1; N's offsets are stored, and a conflict in N recomputes N+1, before
 * N+1's store starts.
 *
 * Why this gives "applied exactly once, published at least once" is written
 * out in docs/operations.md; the shape of the code in docs/architecture.md.
 *
 * Signals (the handlers only set flags): SIGTERM/SIGINT finish the batch,
 * commit, close and exit 0; SIGHUP reloads the rules. The rules directory is
 * also polled every rules.reload_poll_ms for changes, and a change compiled
 * once it has been quiet for rules.settle_ms (td_rules_watch, td_cli.h), so
 * a file rewritten in place is not compiled half-written. A ruleset that fails to
 * compile is logged diagnostic by diagnostic and the previous one keeps
 * serving.
 *
 * @locality main thread (librdkafka's callbacks are served on it too), and
 * the pipeline's store thread for Redis writes.
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
