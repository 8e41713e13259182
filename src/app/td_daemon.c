/*
 * td_daemon.c - the `touchd run` process: configuration, connections,
 * signals and reloads, the main loop and its progress line. Every trigger
 * (events, due timers, derived owner events) goes through the pipeline
 * (td_pipeline.h); this file only decides when: see td_daemon.h for the
 * sequence, docs/architecture.md for the shape, and docs/operations.md for
 * why the sequence gives the delivery contract.
 *
 * File-local names start with dm_.
 *
 * @locality main thread (the pipeline's store thread is its own).
 */
#include "td_daemon.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "td_cli.h"
#include "td_clock.h"
#include "td_engine.h"
#include "td_gifts.h"
#include "td_health.h"
#include "td_http.h"
#include "td_kafka.h"
#include "td_log.h"
#include "td_obs.h"
#include "td_pipeline.h"
#include "td_redis.h"
#include "td_rules.h"
#include "td_shadow.h"
#include "td_timers.h"

volatile sig_atomic_t td_daemon_stop_requested = 0;
volatile sig_atomic_t td_daemon_reload_requested = 0;

struct td_daemon {
    const td_config *cfg;
    td_ruleset *rs;
    td_rules_watch watch; /* rules.dir: poll and settle time */
    uint64_t reloads, reload_failures;

    td_redis *redis;       /* the main thread's */
    td_redis *redis_store; /* the store thread's (engine.pipeline); NULL without */
    td_gifts *gifts;       /* the gift register's */
    td_kafka *kafka;
    td_tzdb *tz;
    td_timers *timers;
    td_shadow *shadow; /* NULL when none is configured */
    td_pipeline *pl;

    int64_t next_timer_poll; /* monotonic ms */
    uint64_t timer_poll_failures;
    int64_t next_progress;

    /* http.listen: the listener and what it shows (NULL: off) */
    td_obs *obs;
    td_http *http;
    int64_t next_lags, next_timers_count; /* monotonic ms */
    td_kafka_lag *lags;
};

/* --------------------------------------------------------------- rules */

static void dm_log_diags(const td_diags *dg) {
    char q1[600], q2[600];
    for (size_t i = 0; i < dg->n; i++) {
        const td_diag *x = &dg->v[i];
        td_log(x->severity == TD_SEV_ERROR ? TD_LOG_ERROR : TD_LOG_WARN, "rules diagnostic",
               "file=%s line=%d col=%d code=%s text=%s source=%s", x->file ? x->file : "-", x->line,
               x->col, x->code, td_log_quote(q1, sizeof q1, x->msg ? x->msg : ""),
               td_log_quote(q2, sizeof q2, x->source ? x->source : ""));
    }
}

/* Compiles the rules directory. @returns the ruleset or NULL (diagnostics
 * logged). */
static td_ruleset *dm_compile(const td_config *cfg) {
    td_diags dg = {0};
    const char *paths[1] = {cfg->rules.dir};
    td_ruleset *rs = td_load_rules(paths, 1, &dg);
    dm_log_diags(&dg);
    if (!rs)
        td_log_error("rules rejected", "dir=%s errors=%zu warnings=%zu", cfg->rules.dir, dg.errors,
                     dg.warnings);
    td_diags_free(&dg);
    return rs;
}

static void dm_reload(td_daemon *d, const char *why) {
    td_rules_watch_compiling(&d->watch);
    td_log_info("reloading rules", "dir=%s trigger=%s", d->cfg->rules.dir, why);
    td_ruleset *rs = dm_compile(d->cfg);
    if (!rs) {
        d->reload_failures++;
        td_log_error("reload failed, previous ruleset keeps serving", "ruleset=%s",
                     td_ruleset_hash(d->rs));
        return;
    }
    const char *old = td_ruleset_hash(d->rs);
    bool same = strcmp(old, td_ruleset_hash(rs)) == 0;
    td_log_info("ruleset active", "ruleset=%s rules=%zu previous=%s changed=%s",
                td_ruleset_hash(rs), td_ruleset_count(rs), old, same ? "false" : "true");
    /* Removing rules is the change to notice: their pending timers are
     * dropped and nothing recommends in their place. One line, bounded. */
    size_t nrules, nfiles;
    char rules[480], files[240];
    td_ruleset_removed(d->rs, rs, &nrules, rules, sizeof rules, &nfiles, files, sizeof files);
    if (nrules || nfiles)
        td_log_warn("reload removes rules",
                    "dir=%s rules_removed=%zu files_removed=%zu rules=%s files=%s ruleset=%s "
                    "previous=%s",
                    d->cfg->rules.dir, nrules, nfiles, nrules ? rules : "-", nfiles ? files : "-",
                    td_ruleset_hash(rs), old);
    if (d->obs) { /* the old ruleset's rule counters, kept by rule id */
        td_pipeline_rule_stats prev;
        td_pipeline_get_rule_stats(d->pl, &prev);
        td_obs_set_ruleset(d->obs, rs, td_wall_ms(), d->rs, &prev);
    }
    td_pipeline_set_ruleset(d->pl, rs); /* between batches: no step holds the old one */
    td_ruleset_free(d->rs);
    d->rs = rs;
    d->reloads++;
}

static void dm_maybe_reload(td_daemon *d) {
    if (td_daemon_reload_requested) {
        td_daemon_reload_requested = 0;
        dm_reload(d, "SIGHUP");
        td_shadow_reload(d->shadow, "SIGHUP");
        return;
    }
    switch (td_rules_watch_poll(&d->watch, td_mono_ms(), td_wall_ms())) {
    case TD_WATCH_RELOAD:
        dm_reload(d, "change");
        break;
    case TD_WATCH_SETTLE_BEGIN:
        /* once per change: a half-written file is not compiled */
        td_log_info("rules changed, waiting for them to settle", "dir=%s settle_ms=%d",
                    d->cfg->rules.dir, d->cfg->rules.settle_ms);
        break;
    case TD_WATCH_SETTLING:
    case TD_WATCH_IDLE:
        break;
    }
}

/* ------------------------------------------------------------------ http */

#define DM_LAGS_MAX 512
#define DM_LAGS_MS 1000          /* consumer lags: read every second */
#define DM_TIMERS_COUNT_MS 30000 /* timers pending: counted every 30 s (4097 ZCARDs) */

/* Starts the listener (http.listen): /metrics, /healthz, /readyz.
 * @returns 0, or -1 with *exit_code set and the reason logged. */
static int dm_http_start(td_daemon *d, int *exit_code) {
    const td_config *cfg = d->cfg;
    d->obs = td_obs_new();
    d->lags = calloc(DM_LAGS_MAX, sizeof *d->lags);
    if (!d->lags) {
        td_log_error("out of memory", "what=%s", "http");
        *exit_code = TD_EXIT_FATAL;
        return -1;
    }
    td_obs_set_ruleset(d->obs, d->rs, td_wall_ms(), NULL, NULL);
    size_t nr;
    const td_http_route *routes = td_obs_routes(d->obs, &nr);
    td_http_conf hc = {
        .listen = cfg->http.listen, .tls_cert = cfg->http.tls_cert, .tls_key = cfg->http.tls_key};
    char err[1024], q[1100];
    d->http = td_http_new(&hc, routes, nr, err, sizeof err);
    if (!d->http) {
        td_log_error("http listener", "reason=%s", td_log_quote(q, sizeof q, err));
        *exit_code = TD_EXIT_USAGE;
        return -1;
    }
    td_log_info("http listening", "listen=%s tls=%s paths=/metrics,/healthz,/readyz",
                cfg->http.listen, *cfg->http.tls_cert ? "true" : "false");
    return 0;
}

/* Publishes the counters for the listener (every loop turn: a memcpy of a
 * few KB), the consumer lags every second and the timers pending every
 * 30 s. */
static void dm_publish(td_daemon *d) {
    if (!d->obs) return;
    td_kafka_stats ks;
    td_kafka_get_stats(d->kafka, &ks);
    td_obs_input in = {.ps = td_pipeline_get_stats(d->pl),
                       .ks = &ks,
                       .ts = td_timers_get_stats(d->timers),
                       .dm = {d->reloads, d->reload_failures, d->timer_poll_failures,
                              td_pipeline_one_lane_writes(d->pl),
                              td_pipeline_verify_mismatches(d->pl)}};
    td_pipeline_get_rule_stats(d->pl, &in.rules);
    td_pipeline_cache_stats(d->pl, &in.cs);
    td_obs_publish(d->obs, &in);
    int64_t now = td_mono_ms();
    if (now >= d->next_lags) {
        d->next_lags = now + DM_LAGS_MS;
        td_obs_publish_lags(d->obs, d->lags, td_kafka_lags(d->kafka, d->lags, DM_LAGS_MAX));
    }
    if (now >= d->next_timers_count) {
        d->next_timers_count = now + DM_TIMERS_COUNT_MS;
        int64_t pending, claimed;
        if (td_timers_count(d->timers, &pending, &claimed) == TD_OK)
            td_obs_publish_timers(d->obs, pending, claimed);
    }
}

/* ------------------------------------------------------------ life cycle */

/* Every Redis connection touchd will use (the main thread's, the store
 * thread's, each with its second connection when engine.store_connections
 * is 2, the timers', the gift register's) answers a read now: connected is
 * not usable when the server wants a password touchd was not given
 * (NOAUTH), rejects the one it was given (WRONGPASS), has an ACL user
 * without the commands or keys one of them needs (NOPERM) or is full
 * (maxclients), and any of those would otherwise hold every batch forever.
 * @returns the connections checked, or -1 (logged: which one, the reason,
 * what to fix; never the password). */
static int dm_check_redis(td_daemon *d) {
    const td_config *cfg = d->cfg;
    const char *who = NULL, *why = NULL;
    if (td_redis_check(d->redis, &who) != TD_OK)
        why = td_redis_last_error(d->redis);
    else if (d->redis_store && td_redis_check(d->redis_store, &who) != TD_OK)
        why = td_redis_last_error(d->redis_store);
    else if (td_timers_check(d->timers) != TD_OK) {
        who = "timers";
        why = td_timers_last_error(d->timers);
    } else if (td_gifts_check(d->gifts) != TD_OK) {
        who = "gifts";
        why = td_gifts_last_error(d->gifts);
    }
    if (!why) {
        int lanes = cfg->engine.store_connections > 1 ? 2 : 1;
        return lanes * (d->redis_store ? 2 : 1) + 2;
    }
    const char *code;
    const char *fix = td_redis_advice(why, &code);
    char q[600], fq[400];
    td_log_error(strcmp(code, "-") ? "redis refuses commands at start"
                                   : "cannot reach redis at start",
                 "connection=%s host=%s port=%d code=%s reason=%s fix=%s", who, cfg->redis.host,
                 cfg->redis.unix_socket ? 0 : cfg->redis.port, code, td_log_quote(q, sizeof q, why),
                 td_log_quote(fq, sizeof fq, fix));
    return -1;
}

td_daemon *td_daemon_new(const td_config *cfg, int *exit_code) {
    td_daemon *d = calloc(1, sizeof *d);
    if (!d) {
        td_log_error("out of memory", "bytes=%zu", sizeof *d);
        *exit_code = TD_EXIT_FATAL;
        return NULL;
    }
    d->cfg = cfg;
    td_health_init(); /* the heartbeat starts; sd_notify when $NOTIFY_SOCKET is set */
    char err[1024];

    td_rules_watch_init(&d->watch, cfg->rules.dir, cfg->rules.reload_poll_ms, cfg->rules.settle_ms,
                        td_mono_ms());
    d->rs = dm_compile(cfg);
    if (!d->rs) {
        *exit_code = TD_EXIT_FAIL;
        goto fail;
    }
    td_log_info("ruleset active", "ruleset=%s rules=%zu dir=%s", td_ruleset_hash(d->rs),
                td_ruleset_count(d->rs), cfg->rules.dir);

    d->redis = td_redis_new(&cfg->redis, err, sizeof err);
    if (!d->redis) {
        td_log_error("redis configuration", "reason=%s", err);
        *exit_code = TD_EXIT_USAGE;
        goto fail;
    }
    /* Timers: every state write maintains the index; the pipeline fires
     * what the claimer hands it. */
    td_redis_set_name(d->redis, "main");
    td_redis_set_timer_shards(d->redis, (uint32_t)cfg->timers.shards);
    td_redis_set_lanes(d->redis, (unsigned)cfg->engine.store_connections);
    d->timers = td_timers_new(&cfg->redis, &cfg->timers, err, sizeof err);
    if (!d->timers) {
        td_log_error("timers configuration", "reason=%s", err);
        *exit_code = TD_EXIT_USAGE;
        goto fail;
    }
    if (cfg->engine.pipeline) {
        d->redis_store = td_redis_new(&cfg->redis, err, sizeof err);
        if (!d->redis_store) {
            td_log_error("redis configuration", "reason=%s", err);
            *exit_code = TD_EXIT_USAGE;
            goto fail;
        }
        td_redis_set_name(d->redis_store, "store");
        td_redis_set_timer_shards(d->redis_store, (uint32_t)cfg->timers.shards);
        td_redis_set_lanes(d->redis_store, (unsigned)cfg->engine.store_connections);
    }
    d->gifts = td_gifts_new(&cfg->redis, cfg->gifts.retention_days, err, sizeof err);
    if (!d->gifts) {
        td_log_error("gift register configuration", "reason=%s", err);
        *exit_code = TD_EXIT_USAGE;
        goto fail;
    }
    int nconn = dm_check_redis(d);
    if (nconn < 0) {
        *exit_code = TD_EXIT_FATAL;
        goto fail;
    }
    td_redis_auth_log(true); /* from now on an authentication error is news */
    td_log_info("redis connected", "host=%s port=%d db=%d prefix=%s connections=%d",
                cfg->redis.host, cfg->redis.unix_socket ? 0 : cfg->redis.port, cfg->redis.db,
                cfg->redis.key_prefix, nconn);

    {
        char advice[600];
        int a = td_timers_redis_advice(d->timers, advice, sizeof advice);
        td_log(a == 1 ? TD_LOG_WARN : TD_LOG_INFO, "timers ready",
               "poll_ms=%d sweep_ms=%d claim_batch=%d lease_ms=%d late_policy=%s %s",
               cfg->timers.poll_ms, cfg->timers.sweep_ms, cfg->timers.claim_batch,
               cfg->timers.lease_ms, td_late_policy_name(cfg->time.late_policy),
               advice[0] ? advice : "index=unknown");
        if (cfg->time.overdue_policy_set)
            td_log_warn("timers.overdue_policy is the old name of time.late_policy",
                        "late_policy=%s drop_older_than=ignored (lateness is the rules' "
                        "late_after)",
                        td_late_policy_name(cfg->time.late_policy));
    }

    d->kafka = td_kafka_new(cfg, err, sizeof err);
    if (!d->kafka) {
        char q[1100];
        td_log_error("kafka start failed", "reason=%s", td_log_quote(q, sizeof q, err));
        *exit_code = strstr(err, "librdkafka rejects") ? TD_EXIT_USAGE : TD_EXIT_FATAL;
        goto fail;
    }

    d->tz = td_tzdb_new();
    d->shadow = td_shadow_new(cfg, td_kafka_bootstraps(d->kafka), d->tz);
    td_pipeline_conf pc = {.cfg = cfg,
                           .rs = d->rs,
                           .tz = d->tz,
                           .redis = d->redis,
                           .redis_store = d->redis_store,
                           .gifts = d->gifts,
                           .kafka = d->kafka,
                           .timers = d->timers,
                           .shadow = d->shadow,
                           .stop = &td_daemon_stop_requested};
    d->pl = td_pipeline_new(&pc, exit_code);
    if (!d->pl) goto fail;
    d->next_progress = td_mono_ms() + 60000;
    if (*cfg->http.listen && dm_http_start(d, exit_code) < 0) goto fail;
    return d;
fail:
    td_daemon_free(d);
    return NULL;
}

void td_daemon_free(td_daemon *d) {
    if (!d) return;
    td_http_free(d->http); /* its thread first: it reads d->obs */
    td_obs_free(d->obs);
    free(d->lags);
    td_pipeline_free(d->pl);               /* its store thread, its messages, the gift register */
    td_shadow_free(d->shadow);             /* before the (embedded) broker goes */
    if (d->kafka) td_kafka_free(d->kafka); /* final commit, leave the group */
    td_timers_free(d->timers);
    td_gifts_free(d->gifts);
    td_redis_free(d->redis_store);
    td_redis_free(d->redis);
    td_ruleset_free(d->rs);
    td_tzdb_free(d->tz);
    free(d);
}

/* ------------------------------------------------------------ main loop */

/* Polls due timers when it is time: repeatedly while polls come back full
 * (a backlog), for at most ~250 ms so the input keeps flowing. Each poll is
 * one timer batch of the pipeline. @returns the batch outcome to end the
 * loop on (TD_PL_ABANDONED, TD_PL_FATAL), else TD_PL_DONE. */
static td_pl_rc dm_timers(td_daemon *d) {
    int64_t now = td_mono_ms();
    if (now < d->next_timer_poll) return TD_PL_DONE;
    const td_timers_conf *tc = &d->cfg->timers;
    int64_t until = now + 250;
    for (;;) {
        size_t claimed = 0;
        td_pl_rc br = td_pipeline_timers(d->pl, td_wall_ms(), &claimed);
        if (br == TD_PL_ABANDONED || br == TD_PL_FATAL) return br;
        if (br == TD_PL_FAILED) {
            d->timer_poll_failures++;
            if (d->timer_poll_failures == 1 || d->timer_poll_failures % 100 == 0) {
                char q[600];
                td_log_warn("timer poll failed", "failures=%llu reason=%s",
                            (unsigned long long)d->timer_poll_failures,
                            td_log_quote(q, sizeof q, td_timers_last_error(d->timers)));
            }
            break;
        }
        if (d->timer_poll_failures) {
            td_log_info("timer polls work again", "failures=%llu",
                        (unsigned long long)d->timer_poll_failures);
            d->timer_poll_failures = 0;
        }
        if (claimed < (size_t)tc->claim_batch || td_daemon_stop_requested ||
            td_mono_ms() >= until) {
            /* a full poll means more may be due: come back at once */
            d->next_timer_poll =
                td_mono_ms() + (claimed < (size_t)tc->claim_batch ? tc->poll_ms : 0);
            return TD_PL_DONE;
        }
    }
    d->next_timer_poll = td_mono_ms() + tc->poll_ms;
    return TD_PL_DONE;
}

static void dm_progress(td_daemon *d, bool force) {
    int64_t now = td_mono_ms();
    if (!force && now < d->next_progress) return;
    d->next_progress = now + 60000;
    td_kafka_stats ks;
    td_kafka_get_stats(d->kafka, &ks);
    const td_timers_stats *ts = td_timers_get_stats(d->timers);
    const td_pipeline_stats *ps = td_pipeline_get_stats(d->pl);
    td_state_cache_stats cs;
    td_pipeline_cache_stats(d->pl, &cs);
    td_log_info("state cache", "hits=%llu misses=%llu drops=%llu used=%zu entries=%zu",
                (unsigned long long)cs.hits, (unsigned long long)cs.misses,
                (unsigned long long)cs.drops, cs.used, cs.entries);
    td_log_info(
        "progress",
        "batches=%llu events=%llu applied=%llu skipped=%llu duplicates=%llu "
        "dead_letters=%llu recs=%llu withdrawals=%llu plans=%llu late=%llu late_dropped=%llu "
        "recs_acked=%llu resent=%llu conflicts=%llu redone=%llu "
        "redis_waits=%llu redis_auth_errors=%llu partitions=%d owner_events=%llu "
        "owner_duplicates=%llu timers_claimed=%llu timers_fired=%llu "
        "timers_before_events=%llu timers_recs=%llu timers_stale=%llu timers_dropped=%llu "
        "timers_reclaimed=%llu timers_conflicts=%llu timers_errors=%llu timers_delay_p99_ms=%lld "
        "timers_delay_max_ms=%lld timers_horizon_lag_ms=%lld timers_held_polls=%llu "
        "timers_held_claims=%llu "
        "store_one_connection=%llu verify_mismatches=%llu ruleset=%s",
        (unsigned long long)ps->batches, (unsigned long long)ps->events,
        (unsigned long long)ps->applied, (unsigned long long)ps->skipped_pos,
        (unsigned long long)ps->duplicates, (unsigned long long)ps->dead_letters,
        (unsigned long long)ps->recs_out, (unsigned long long)ps->wds_out,
        (unsigned long long)ps->plans_out, (unsigned long long)ps->late,
        (unsigned long long)ps->late_dropped, (unsigned long long)ks.recs_acked,
        (unsigned long long)ks.resent, (unsigned long long)ps->conflicts,
        (unsigned long long)ps->redone, (unsigned long long)ps->redis_waits,
        (unsigned long long)td_redis_auth_errors(), ks.assigned, (unsigned long long)ps->derived,
        (unsigned long long)ps->derived_dups, (unsigned long long)ts->claimed,
        (unsigned long long)ts->fired, (unsigned long long)ps->timers_before_events,
        (unsigned long long)ts->recs, (unsigned long long)ts->stale,
        (unsigned long long)ts->dropped, (unsigned long long)ts->reclaimed,
        (unsigned long long)ts->conflicts, (unsigned long long)ts->errors,
        (long long)td_timers_delay_quantile(ts, 0.99), (long long)ts->max_delay_ms,
        (long long)ps->horizon_lag_ms, (unsigned long long)ps->horizon_held_polls,
        (unsigned long long)ps->horizon_held_claims,
        (unsigned long long)td_pipeline_one_lane_writes(d->pl),
        (unsigned long long)td_pipeline_verify_mismatches(d->pl), td_ruleset_hash(d->rs));
}

/* @returns true when the loop must end (rc set for a fatal error). */
static bool dm_batch_end(td_daemon *d, td_pl_rc br, int *rc) {
    if (br == TD_PL_FATAL) {
        const char *why = td_kafka_fatal(d->kafka);
        char q[600];
        td_log_error("fatal error, exiting", "reason=%s",
                     td_log_quote(q, sizeof q, why ? why : "engine"));
        *rc = TD_EXIT_FATAL;
        return true;
    }
    return br == TD_PL_ABANDONED;
}

int td_daemon_run(td_daemon *d) {
    int rc = TD_EXIT_OK;
    td_log_info("touchd running",
                "batch_max_events=%d batch_max_ms=%d pipeline=%s max_future_skew=%s "
                "max_past_age=%s",
                d->cfg->engine.batch_max_events, d->cfg->engine.batch_max_ms,
                d->cfg->engine.pipeline ? "true" : "false", d->cfg->time.max_future_skew_text,
                d->cfg->time.max_past_age_text);
    td_health_notify_ready("running");
    while (!td_daemon_stop_requested) {
        td_health_beat();
        dm_publish(d);
        const char *fatal = td_kafka_fatal(d->kafka);
        if (fatal) {
            char q[600];
            td_log_error("fatal kafka error, exiting", "reason=%s",
                         td_log_quote(q, sizeof q, fatal));
            rc = TD_EXIT_FATAL;
            break;
        }
        dm_maybe_reload(d);
        td_shadow_tick(d->shadow);
        dm_progress(d, false);
        if (dm_batch_end(d, dm_timers(d), &rc)) break;
        if (td_daemon_stop_requested) break;
        /* wait for input at most until the next timer poll (and 100 ms);
         * not at all while a batch is being stored: finish it instead */
        int64_t wait = d->next_timer_poll - td_mono_ms();
        int wait_ms = wait < 0 ? 0 : wait > 100 ? 100 : (int)wait;
        if (td_pipeline_busy(d->pl)) wait_ms = 0;
        if (dm_batch_end(d, td_pipeline_events(d->pl, wait_ms), &rc)) break;
    }
    td_health_notify_stopping();
    /* the batch being stored: settle it and store its offsets */
    td_pl_rc br = td_pipeline_flush(d->pl);
    if (br == TD_PL_FATAL && rc == TD_EXIT_OK) dm_batch_end(d, br, &rc);
    dm_progress(d, true);
    dm_publish(d); /* a last scrape during the stop sees the final counts */
    if (rc == TD_EXIT_OK && d->cfg->kafka.instance_id[0])
        /* KIP-345: a static member does not leave; its partitions wait for
         * it (or another member) until the group coordinator's session
         * timeout expires */
        td_log_info("stopping: committing offsets, keeping the group membership", "instance=%s",
                    d->cfg->kafka.instance_id);
    else if (rc == TD_EXIT_OK)
        td_log_info("stopping: committing offsets and leaving the group", NULL);
    td_kafka_close(d->kafka, 10000);
    return rc;
}
