/*
 * td_shadow.h - the daemon's shadow ruleset: a candidate ruleset run beside
 * the live one on the same input, whose results are published on a separate
 * topic and compared with the live results, never stored.
 *
 * For every engine step of the live path (input events; timer fires too),
 * the daemon calls
 *
 *     td_shadow_before(sh, st);          // before the live step: copies st
 *     ... live td_engine_step(live_rs, st, trig, now, ...) ...
 *     td_shadow_after(sh, live_rs, trig, now, live_out);
 *
 * td_shadow_after steps the copy with the shadow ruleset (same trigger, same
 * now), renders its withdrawals and recommendations as the output contract's
 * JSON (their `ruleset` is the shadow hash) onto kafka.shadow_topic through a
 * producer of its own (best effort: its queue, failures and delivery reports
 * never touch the live rounds), and compares the two outcomes rule by rule:
 *
 *   agree        the rule fired in both, same channel, touch and not_before
 *   differ       the rule fired in both, something of those differs
 *   live_only    the rule fired in live only
 *   shadow_only  the rule fired in the shadow only
 *
 * and the withdrawals (the copy holds the live plan, so both steps withdraw
 * from the same pending recommendations) by withdrawn recommendation id:
 * wd_agree (same reason), wd_differ (another reason), wd_live_only,
 * wd_shadow_only, counted under the withdrawn recommendation's rule.
 *
 * The copy is discarded: nothing of the shadow is ever written to Redis, to
 * the live topic or to the offsets. The shadow ruleset is compiled from
 * rules.shadow_dir at start and reloaded like the live one (SIGHUP,
 * directory change); one that does not compile is logged and simply not run
 * (the previous shadow, if any, keeps running), and never affects live.
 *
 * td_shadow_tick (between batches) polls the shadow directory, serves the
 * producer's delivery reports, rewrites the JSON report (rules.shadow_report,
 * every rules.shadow_report_interval_ms) and logs the counts every 60 s.
 * Format of the report and of the log lines: docs/operations.md.
 *
 * With no shadow configured the daemon holds NULL and pays one branch.
 *
 * @locality the daemon's main thread.
 */
#ifndef TD_SHADOW_H
#define TD_SHADOW_H

#include "td_config.h"
#include "td_engine.h"

typedef struct td_shadow td_shadow;

/*
 * Creates the shadow when cfg->rules.shadow_dir is set (NULL when it is
 * not). `bootstraps` is the broker list the live producer uses (the embedded
 * broker's address included). A shadow ruleset that does not compile, or a
 * producer that cannot be created, is logged and leaves a shadow that runs
 * nothing until a reload succeeds: never an error for the daemon.
 */
td_shadow *td_shadow_new(const td_config *cfg, const char *bootstraps, td_tzdb *tz);

/* Final report and log line, flush of the shadow producer (bounded), free. */
void td_shadow_free(td_shadow *sh);

/* Takes a copy of the state the live step is about to change. */
void td_shadow_before(td_shadow *sh, const td_state *st);

/* Steps the copy taken by td_shadow_before with the shadow ruleset, publishes
 * its withdrawals and recommendations on the shadow topic and counts
 * agreement with live_out (the live step's output for the same trigger). */
void td_shadow_after(td_shadow *sh, const td_ruleset *live_rs, const td_trigger *trig, td_ms now,
                     const td_step_out *live_out);

/* Recompiles the shadow ruleset now (SIGHUP). */
void td_shadow_reload(td_shadow *sh, const char *why);

/* Between batches: directory poll, delivery reports, report file, log. */
void td_shadow_tick(td_shadow *sh);

/* The shadow ruleset's hash, or NULL when none runs (tests, logs). */
const char *td_shadow_hash(const td_shadow *sh);

#endif
