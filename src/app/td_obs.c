/*
 * td_obs.c - the snapshot, /metrics, /healthz and /readyz of td_obs.h.
 *
 * Memory: the snapshot (ob_snap: plain values) and its rule arrays live in
 * the td_obs, written by the main thread under `mu`; the HTTP thread's copy
 * (`rd`, and its rule arrays) is written only by the HTTP thread (one
 * thread: libmicrohttpd's internal polling thread), under `mu` while it
 * copies. Rule ids are copied at td_obs_set_ruleset, not per turn.
 *
 * File-local names start with ob_.
 *
 * @locality see td_obs.h.
 */
#include "td_obs.h"

#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "td_clock.h"
#include "td_health.h"
#include "td_prom.h"
#include "td_rconn.h"

#define OB_LAGS_MAX 512 /* partitions shown at most */

/* The timers' counters the metrics show (td_timers_stats without its 10 ms
 * histogram). */
typedef struct ob_timers {
    uint64_t polls, claimed, reclaimed, fired, recs, stale, conflicts, acked, errors;
    td_hist delay;
} ob_timers;

typedef struct ob_snap {
    bool valid; /* published at least once */
    td_pipeline_stats ps;
    td_kafka_stats ks;
    ob_timers ts;
    td_state_cache_stats cs;
    td_obs_daemon dm;
    uint64_t redis_opened, redis_failures;
    int64_t timers_pending, timers_in_flight; /* -1: not measured yet */
    /* the active ruleset */
    char hash[80];
    size_t nrules;
    int64_t loaded_at; /* wall ms */
    uint64_t watchdogs;
} ob_snap;

/* Rule counters: 4 arrays of n (published, blocked, blocks, errors). */
enum { OB_PUB = 0, OB_BLOCKED = 1, OB_BLOCKS = 2, OB_ERRORS = 3, OB_NRC = 4 };

struct td_obs {
    pthread_mutex_t mu;
    ob_snap s;
    /* rules of the active ruleset: ids, guard flags, counts carried from
     * earlier rulesets (base), and the live ones (cur), OB_NRC * n each */
    char (*ids)[TD_RULE_ID_MAX + 1];
    bool *guard;
    uint64_t *base, *cur;
    size_t n;
    td_kafka_lag *lags;
    size_t nlags;

    /* the HTTP thread's copy */
    ob_snap rd;
    char (*rd_ids)[TD_RULE_ID_MAX + 1];
    bool *rd_guard;
    uint64_t *rd_cnt; /* base + cur */
    size_t rd_n, rd_cap;
    td_kafka_lag *rd_lags;
    size_t rd_nlags;

    td_http_route routes[3];
};

static void *ob_xcalloc(size_t n, size_t sz) {
    void *p = calloc(n ? n : 1, sz);
    if (!p) abort(); /* a few KB at start or reload */
    return p;
}

static void ob_metrics(void *ud, const td_http_req *req, td_http_resp *resp);
static void ob_healthz(void *ud, const td_http_req *req, td_http_resp *resp);
static void ob_readyz(void *ud, const td_http_req *req, td_http_resp *resp);

td_obs *td_obs_new(void) {
    td_obs *o = ob_xcalloc(1, sizeof *o);
    pthread_mutex_init(&o->mu, NULL);
    o->s.timers_pending = o->s.timers_in_flight = -1;
    o->lags = ob_xcalloc(OB_LAGS_MAX, sizeof *o->lags);
    o->rd_lags = ob_xcalloc(OB_LAGS_MAX, sizeof *o->rd_lags);
    o->routes[0] = (td_http_route){"GET", "/metrics", ob_metrics, o, TD_HTTP_PUBLIC};
    o->routes[1] = (td_http_route){"GET", "/healthz", ob_healthz, o, TD_HTTP_PUBLIC};
    o->routes[2] = (td_http_route){"GET", "/readyz", ob_readyz, o, TD_HTTP_PUBLIC};
    return o;
}

void td_obs_free(td_obs *o) {
    if (!o) return;
    pthread_mutex_destroy(&o->mu);
    free(o->ids);
    free(o->guard);
    free(o->base);
    free(o->cur);
    free(o->lags);
    free(o->rd_ids);
    free(o->rd_guard);
    free(o->rd_cnt);
    free(o->rd_lags);
    free(o);
}

const td_http_route *td_obs_routes(td_obs *o, size_t *n) {
    *n = sizeof o->routes / sizeof o->routes[0];
    return o->routes;
}

/* ------------------------------------------------------------ main thread */

void td_obs_set_ruleset(td_obs *o, const td_ruleset *rs, int64_t loaded_at, const td_ruleset *prev,
                        const td_pipeline_rule_stats *prev_counts) {
    size_t n = td_ruleset_count(rs);
    char(*ids)[TD_RULE_ID_MAX + 1] = ob_xcalloc(n, sizeof *ids);
    bool *guard = ob_xcalloc(n, sizeof *guard);
    uint64_t *base = ob_xcalloc(OB_NRC * n, sizeof *base);
    uint64_t *cur = ob_xcalloc(OB_NRC * n, sizeof *cur);
    for (size_t i = 0; i < n; i++) {
        const td_rule *r = td_ruleset_rule(rs, i);
        memcpy(ids[i], r->id, sizeof ids[i]);
        guard[i] = r->guard;
        /* a rule that keeps its id keeps its counts (a reload is rare:
         * the lookup is the ruleset's own) */
        const td_rule *old = prev ? td_ruleset_find(prev, r->id) : NULL;
        if (!old || old->index >= o->n) continue;
        size_t j = old->index;
        const uint64_t *pc[OB_NRC] = {NULL, NULL, NULL, NULL};
        if (prev_counts && prev_counts->n == o->n) {
            pc[OB_PUB] = prev_counts->published;
            pc[OB_BLOCKED] = prev_counts->blocked;
            pc[OB_BLOCKS] = prev_counts->blocks;
            pc[OB_ERRORS] = prev_counts->errors;
        }
        for (int k = 0; k < OB_NRC; k++)
            base[k * n + i] = o->base[k * o->n + j] + (pc[k] ? pc[k][j] : 0);
    }
    pthread_mutex_lock(&o->mu);
    free(o->ids);
    free(o->guard);
    free(o->base);
    free(o->cur);
    o->ids = ids;
    o->guard = guard;
    o->base = base;
    o->cur = cur;
    o->n = n;
    snprintf(o->s.hash, sizeof o->s.hash, "%s", td_ruleset_hash(rs));
    o->s.nrules = n;
    o->s.loaded_at = loaded_at;
    pthread_mutex_unlock(&o->mu);
}

bool td_obs_publish(td_obs *o, const td_obs_input *in) {
    if (pthread_mutex_trylock(&o->mu) != 0) return false;
    ob_snap *s = &o->s;
    s->valid = true;
    s->ps = *in->ps;
    s->ks = *in->ks;
    const td_timers_stats *t = in->ts;
    s->ts = (ob_timers){.polls = t->polls,
                        .claimed = t->claimed,
                        .reclaimed = t->reclaimed,
                        .fired = t->fired,
                        .recs = t->recs,
                        .stale = t->stale,
                        .conflicts = t->conflicts,
                        .acked = t->acked,
                        .errors = t->errors,
                        .delay = t->delay};
    s->cs = in->cs;
    s->dm = in->dm;
    td_rconn_counts(&s->redis_opened, &s->redis_failures);
    s->watchdogs = td_health_watchdogs_sent();
    if (in->rules.n == o->n && o->n) {
        memcpy(o->cur + OB_PUB * o->n, in->rules.published, o->n * sizeof *o->cur);
        memcpy(o->cur + OB_BLOCKED * o->n, in->rules.blocked, o->n * sizeof *o->cur);
        memcpy(o->cur + OB_BLOCKS * o->n, in->rules.blocks, o->n * sizeof *o->cur);
        memcpy(o->cur + OB_ERRORS * o->n, in->rules.errors, o->n * sizeof *o->cur);
    }
    pthread_mutex_unlock(&o->mu);
    return true;
}

void td_obs_publish_lags(td_obs *o, const td_kafka_lag *lags, size_t n) {
    if (n > OB_LAGS_MAX) n = OB_LAGS_MAX;
    pthread_mutex_lock(&o->mu);
    memcpy(o->lags, lags, n * sizeof *lags);
    o->nlags = n;
    pthread_mutex_unlock(&o->mu);
}

void td_obs_publish_timers(td_obs *o, int64_t pending, int64_t in_flight) {
    pthread_mutex_lock(&o->mu);
    o->s.timers_pending = pending;
    o->s.timers_in_flight = in_flight;
    pthread_mutex_unlock(&o->mu);
}

/* ------------------------------------------------------------ HTTP thread */

/* Copies the snapshot into the reader's copy. */
static void ob_read(td_obs *o) {
    pthread_mutex_lock(&o->mu);
    o->rd = o->s;
    if (o->n > o->rd_cap) {
        free(o->rd_ids);
        free(o->rd_guard);
        free(o->rd_cnt);
        o->rd_ids = ob_xcalloc(o->n, sizeof *o->rd_ids);
        o->rd_guard = ob_xcalloc(o->n, sizeof *o->rd_guard);
        o->rd_cnt = ob_xcalloc(OB_NRC * o->n, sizeof *o->rd_cnt);
        o->rd_cap = o->n;
    }
    o->rd_n = o->n;
    if (o->n) {
        memcpy(o->rd_ids, o->ids, o->n * sizeof *o->ids);
        memcpy(o->rd_guard, o->guard, o->n * sizeof *o->guard);
        for (size_t i = 0; i < OB_NRC * o->n; i++)
            o->rd_cnt[i] = o->base[i] + o->cur[i];
    }
    memcpy(o->rd_lags, o->lags, o->nlags * sizeof *o->lags);
    o->rd_nlags = o->nlags;
    pthread_mutex_unlock(&o->mu);
}

/* Process metrics from /proc (Linux). */
typedef struct ob_proc {
    double cpu_s, start_s;
    double rss, vsize;
    long fds, max_fds;
    bool ok;
} ob_proc;

static void ob_proc_read(ob_proc *p) {
    memset(p, 0, sizeof *p);
    FILE *f = fopen("/proc/self/stat", "r");
    if (!f) return;
    char line[2048];
    bool got = fgets(line, sizeof line, f) != NULL;
    fclose(f);
    /* after the command name in parentheses (which may hold spaces) */
    char *rp = got ? strrchr(line, ')') : NULL;
    if (!rp) return;
    unsigned long long utime, stime, start, vsize;
    long long rss;
    /* fields 3.. : state ppid pgrp session tty tpgid flags minflt cminflt
     * majflt cmajflt utime(14) stime cutime cstime priority nice threads
     * itrealvalue starttime(22) vsize rss */
    if (sscanf(rp + 2,
               "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d %*d %*d %*d "
               "%llu %llu %lld",
               &utime, &stime, &start, &vsize, &rss) != 5)
        return;
    double tck = (double)sysconf(_SC_CLK_TCK);
    long page = sysconf(_SC_PAGESIZE);
    p->cpu_s = (double)(utime + stime) / tck;
    p->vsize = (double)vsize;
    p->rss = (double)rss * (double)page;
    /* the start: boot time (btime) + starttime ticks */
    f = fopen("/proc/stat", "r");
    if (f) {
        unsigned long long btime = 0;
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "btime %llu", &btime) == 1) break;
        fclose(f);
        p->start_s = (double)btime + (double)start / tck;
    }
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)))
            if (e->d_name[0] != '.') p->fds++;
        closedir(d);
        p->fds--; /* the directory's own descriptor */
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        p->max_fds = rl.rlim_cur == RLIM_INFINITY ? -1 : (long)rl.rlim_cur;
    p->ok = true;
}

/* A counter family with one sample per label value: values[i] under
 * label=names[i]. */
static int ob_counter_by(td_buf *b, const char *name, const char *help, const char *label,
                         const char *const *names, const uint64_t *values, size_t n) {
    if (td_prom_family(b, name, "counter", help) != TD_OK) return TD_ERR;
    for (size_t i = 0; i < n; i++) {
        td_prom_label l = {label, names[i]};
        if (td_prom_sample_u64(b, name, &l, 1, values[i]) != TD_OK) return TD_ERR;
    }
    return TD_OK;
}

/* A per-rule counter family (guards or not, as `guards` says). */
static int ob_rule_counter(td_buf *b, const td_obs *o, int which, bool guards, const char *name,
                           const char *label, const char *help) {
    if (td_prom_family(b, name, "counter", help) != TD_OK) return TD_ERR;
    for (size_t i = 0; i < o->rd_n; i++) {
        if (o->rd_guard[i] != guards) continue;
        td_prom_label l = {label, o->rd_ids[i]};
        if (td_prom_sample_u64(b, name, &l, 1, o->rd_cnt[which * o->rd_n + i]) != TD_OK)
            return TD_ERR;
    }
    return TD_OK;
}

typedef struct ob_c {
    const char *name, *help;
    uint64_t v;
} ob_c;

int td_obs_render_metrics(td_obs *o, td_buf *b) {
    ob_read(o);
    const ob_snap *s = &o->rd;
    const td_pipeline_stats *ps = &s->ps;
    int rc = TD_OK;
#define OB_TRY(x)                                                                                  \
    do {                                                                                           \
        if ((x) != TD_OK) return TD_ERR;                                                           \
    } while (0)
    const ob_c counters[] = {
        {"touchd_events_consumed_total", "Input events consumed (each once).", ps->events},
        {"touchd_events_applied_total", "Input events applied to their prospect's state.",
         ps->applied},
        {"touchd_events_duplicate_total",
         "Input events whose id was seen before (the dedup window): not applied again.",
         ps->duplicates},
        {"touchd_events_skipped_total",
         "Input events already applied before (by their position): not applied again.",
         ps->skipped_pos},
        {"touchd_owner_events_total", "Events derived for owners (owner.prospect_contacted).",
         ps->derived},
        {"touchd_owner_events_duplicate_total",
         "Events derived for an owner again (source recomputed or re-consumed), dropped.",
         ps->derived_dups},
        {"touchd_timer_polls_held_total",
         "Timer polls bounded by the event-time horizon (the input was behind).",
         ps->horizon_held_polls},
        {"touchd_timers_held_total",
         "Re-leased timer claims due beyond the horizon, left for another lease.",
         ps->horizon_held_claims},
        {"touchd_redis_auth_errors_total",
         "Redis replies that were authentication errors (NOAUTH, WRONGPASS), every connection.",
         td_redis_auth_errors()},
        {"touchd_batches_total", "Event batches processed.", ps->batches},
        {"touchd_plans_published_total", "Plan messages (plans and tombstones) sent.",
         ps->plans_out},
        {"touchd_recommendations_late_total", "Recommendations published late (catch-up).",
         ps->late},
        {"touchd_recommendations_late_dropped_total",
         "Late recommendations not published (time.late_policy = drop).", ps->late_dropped},
        {"touchd_output_acked_total",
         "Messages of the output and plan topics acknowledged by the broker.", s->ks.recs_acked},
        {"touchd_output_resent_total", "Messages re-sent after a failed delivery.", s->ks.resent},
        {"touchd_store_conflicts_total",
         "Prospects whose state write met a compare-and-set conflict (recomputed).", ps->conflicts},
        {"touchd_batches_redone_total",
         "Event batches with groups recomputed after a conflict of the batch before.", ps->redone},
        {"touchd_redis_holds_total", "Times a batch was held because Redis failed.",
         ps->redis_waits},
        {"touchd_redis_connections_total",
         "Redis sessions opened (first connects and reconnects, every connection).",
         s->redis_opened},
        {"touchd_redis_errors_total",
         "Redis connection failures (I/O errors, refused connects, failed AUTH or SELECT).",
         s->redis_failures},
        {"touchd_redis_one_lane_writes_total",
         "Batch writes that ran on one connection although store_connections is 2.",
         s->dm.one_lane_writes},
        {"touchd_redis_verify_mismatches_total",
         "redis.verify_writes: written hashes Redis did not hold as computed.",
         s->dm.verify_mismatches},
        {"touchd_state_cache_hits_total", "Prospect states found in the state cache.", s->cs.hits},
        {"touchd_state_cache_misses_total", "Prospect states not in the state cache.",
         s->cs.misses},
        {"touchd_state_cache_drops_total", "State cache entries dropped (stale after a conflict).",
         s->cs.drops},
        {"touchd_gifts_registered_total", "Gifts added to the gift register.",
         ps->gifts_registered},
        {"touchd_timer_polls_total", "Timer claim polls.", s->ts.polls},
        {"touchd_timers_claimed_total", "Timers claimed (re-leased ones included).", s->ts.claimed},
        {"touchd_timers_reclaimed_total", "Timers claimed again after an expired lease.",
         s->ts.reclaimed},
        {"touchd_timers_fired_total", "Timer rules evaluated (by the claimer or before an event).",
         s->ts.fired},
        {"touchd_timers_fired_before_events_total",
         "Timers fired before an event of their prospect (event time).", ps->timers_before_events},
        {"touchd_timers_stale_total", "Timers claimed but no longer pending (ignored).",
         s->ts.stale},
        {"touchd_timers_conflicts_total", "Compare-and-set conflicts of timer batches.",
         s->ts.conflicts},
        {"touchd_timer_poll_errors_total", "Timer polls that failed (Redis or the broker).",
         s->ts.errors},
        {"touchd_kafka_rebalances_total", "Consumer group rebalances seen.", s->ks.rebalances},
        {"touchd_watchdog_notifications_total", "WATCHDOG=1 messages sent to systemd.",
         s->watchdogs},
    };
    for (size_t i = 0; i < sizeof counters / sizeof counters[0]; i++)
        OB_TRY(td_prom_counter(b, counters[i].name, counters[i].help, counters[i].v));

    const char *dlq[TD_DLQ_CLASSES];
    for (int c = 0; c < TD_DLQ_CLASSES; c++)
        dlq[c] = td_dlq_class_name((td_dlq_class)c);
    OB_TRY(ob_counter_by(b, "touchd_events_dead_lettered_total",
                         "Input events sent to the dead-letter topic, by reason class.", "reason",
                         dlq, ps->dead_by_class, TD_DLQ_CLASSES));
    const char *wdr[TD_WDR_REASONS];
    for (int r = 0; r < TD_WDR_REASONS; r++)
        wdr[r] = td_wd_reason_name((td_wd_reason)r);
    OB_TRY(ob_counter_by(b, "touchd_withdrawals_published_total",
                         "Withdrawals sent (re-sent ones included), by reason.", "reason", wdr,
                         ps->wds_by_reason, TD_WDR_REASONS));
    const char *results[2] = {"success", "failure"};
    const uint64_t reloads[2] = {s->dm.reloads, s->dm.reload_failures};
    OB_TRY(ob_counter_by(b, "touchd_rules_reloads_total",
                         "Rules reloads, by result (a failure keeps the previous ruleset).",
                         "result", results, reloads, 2));

    OB_TRY(ob_rule_counter(b, o, OB_PUB, false, "touchd_recommendations_published_total", "rule",
                           "Recommendations sent (re-sent ones included), by rule."));
    OB_TRY(ob_rule_counter(b, o, OB_BLOCKED, false, "touchd_recommendations_blocked_total", "rule",
                           "Candidates blocked by a guard, by the rule blocked."));
    OB_TRY(ob_rule_counter(b, o, OB_BLOCKS, true, "touchd_guard_blocks_total", "guard",
                           "Candidates blocked, by the guard that blocked them."));
    OB_TRY(td_prom_family(b, "touchd_rule_errors_total", "counter",
                          "Rule evaluation errors at run time, by rule or guard."));
    for (size_t i = 0; i < o->rd_n; i++) {
        td_prom_label l = {"rule", o->rd_ids[i]};
        OB_TRY(td_prom_sample_u64(b, "touchd_rule_errors_total", &l, 1,
                                  o->rd_cnt[OB_ERRORS * o->rd_n + i]));
    }

    /* histograms */
    OB_TRY(td_prom_family(b, "touchd_batch_phase_seconds", "histogram",
                          "Time spent per batch in each phase, by source (events, timers)."));
    for (int k = 0; k < 2; k++)
        for (int ph = 0; ph < TD_PHASES; ph++) {
            td_prom_label l[2] = {{"source", k ? "timers" : "events"},
                                  {"phase", td_phase_name(ph)}};
            OB_TRY(td_prom_hist(b, "touchd_batch_phase_seconds", l, 2, &ps->phase[k][ph]));
        }
    OB_TRY(td_prom_family(b, "touchd_event_latency_seconds", "histogram",
                          "From an input message's Kafka timestamp to its batch done (state "
                          "stored, offsets stored)."));
    OB_TRY(td_prom_hist(b, "touchd_event_latency_seconds", NULL, 0, &ps->latency));
    OB_TRY(td_prom_family(b, "touchd_timer_firing_delay_seconds", "histogram",
                          "Claimed timers: claim time minus due time."));
    OB_TRY(td_prom_hist(b, "touchd_timer_firing_delay_seconds", NULL, 0, &s->ts.delay));

    /* gauges */
    OB_TRY(td_prom_gauge(b, "touchd_partitions_assigned", "Input partitions assigned now.",
                         s->ks.assigned));
    OB_TRY(td_prom_family(b, "touchd_consumer_lag_messages", "gauge",
                          "High watermark minus the consumer's position, per partition."));
    for (size_t i = 0; i < o->rd_nlags; i++) {
        char part[16];
        snprintf(part, sizeof part, "%d", (int)o->rd_lags[i].partition);
        td_prom_label l[2] = {{"topic", o->rd_lags[i].topic}, {"partition", part}};
        OB_TRY(td_prom_sample(b, "touchd_consumer_lag_messages", l, 2, (double)o->rd_lags[i].lag));
    }
    if (s->timers_pending >= 0) {
        OB_TRY(td_prom_gauge(b, "touchd_timers_pending",
                             "Timers in the timer index (every instance's; measured every 30 s).",
                             (double)s->timers_pending));
        OB_TRY(td_prom_gauge(b, "touchd_timers_in_flight",
                             "Timers claimed and not yet acknowledged (measured every 30 s).",
                             (double)s->timers_in_flight));
    }
    OB_TRY(td_prom_gauge(b, "touchd_state_cache_entries", "Prospect states in the state cache.",
                         (double)s->cs.used));
    OB_TRY(td_prom_gauge(b, "touchd_timer_horizon_lag_seconds",
                         "Wall clock minus the timers' event-time horizon at the last poll (0: "
                         "caught up; -1: a partition behind has delivered nothing).",
                         ps->horizon_lag_ms < 0 ? -1.0 : (double)ps->horizon_lag_ms / 1000.0));
    OB_TRY(td_prom_gauge(b, "touchd_redis_held",
                         "1 while a batch is held because Redis fails, else 0.",
                         td_health_redis_held() ? 1 : 0));
    OB_TRY(td_prom_family(b, "touchd_ruleset_info", "gauge", "The active ruleset (its hash)."));
    td_prom_label hl = {"hash", s->hash};
    OB_TRY(td_prom_sample(b, "touchd_ruleset_info", &hl, 1, 1));
    OB_TRY(td_prom_gauge(b, "touchd_ruleset_rules", "Rules and guards of the active ruleset.",
                         (double)s->nrules));
    OB_TRY(td_prom_gauge(b, "touchd_ruleset_loaded_timestamp_seconds",
                         "When the active ruleset went live (Unix time).",
                         (double)s->loaded_at / 1000.0));
    int64_t beat = td_health_last_beat_ms();
    OB_TRY(td_prom_gauge(b, "touchd_main_loop_last_turn_age_seconds",
                         "Seconds since the main loop last turned (or waited, alive).",
                         beat ? (double)(td_mono_ms() - beat) / 1000.0 : -1));

    ob_proc pr;
    ob_proc_read(&pr);
    if (pr.ok) {
        OB_TRY(td_prom_family(b, "process_cpu_seconds_total", "counter",
                              "User and system CPU time spent, in seconds."));
        OB_TRY(td_prom_sample(b, "process_cpu_seconds_total", NULL, 0, pr.cpu_s));
        OB_TRY(td_prom_gauge(b, "process_resident_memory_bytes", "Resident memory size.", pr.rss));
        OB_TRY(td_prom_gauge(b, "process_virtual_memory_bytes", "Virtual memory size.", pr.vsize));
        OB_TRY(td_prom_gauge(b, "process_open_fds", "Open file descriptors.", (double)pr.fds));
        if (pr.max_fds >= 0)
            OB_TRY(td_prom_gauge(b, "process_max_fds", "The open file descriptor limit.",
                                 (double)pr.max_fds));
        OB_TRY(td_prom_gauge(b, "process_start_time_seconds",
                             "Start time of the process since the Unix epoch, in seconds.",
                             pr.start_s));
    }
#undef OB_TRY
    return rc;
}

static void ob_metrics(void *ud, const td_http_req *req, td_http_resp *resp) {
    (void)req;
    resp->content_type = "text/plain; version=0.0.4; charset=utf-8";
    if (td_obs_render_metrics(ud, &resp->body) != TD_OK) {
        resp->status = 500;
        resp->body.len = 0;
        td_buf_printf(&resp->body, "out of memory\n");
    }
}

static void ob_healthz(void *ud, const td_http_req *req, td_http_resp *resp) {
    (void)ud;
    (void)req;
    int64_t beat = td_health_last_beat_ms();
    int64_t age = beat ? td_mono_ms() - beat : -1;
    bool ok = beat && age < TD_HEALTH_STALL_MS;
    resp->status = ok ? 200 : 503;
    resp->content_type = "application/json";
    if (ok)
        td_buf_printf(&resp->body, "{\"status\":\"ok\",\"last_turn_ms_ago\":%lld}\n",
                      (long long)age);
    else
        td_buf_printf(&resp->body,
                      "{\"status\":\"unhealthy\",\"last_turn_ms_ago\":%lld,\"problems\":[\"the "
                      "main loop has not turned for %lld ms (limit %d ms)\"]}\n",
                      (long long)age, (long long)age, TD_HEALTH_STALL_MS);
}

static void ob_readyz(void *ud, const td_http_req *req, td_http_resp *resp) {
    (void)req;
    td_obs *o = ud;
    ob_read(o);
    const ob_snap *s = &o->rd;
    bool held = td_health_redis_held();
    bool joined = s->valid && s->ks.rebalances > 0;
    bool redis_ok = s->valid && !held && s->dm.timer_poll_failures == 0;
    bool rules_ok = s->hash[0] != '\0';
    bool ok = s->valid && joined && redis_ok && rules_ok;
    td_buf *b = &resp->body;
    resp->status = ok ? 200 : 503;
    resp->content_type = "application/json";
    td_buf_printf(b,
                  "{\"status\":\"%s\",\"checks\":{\"kafka\":{\"ok\":%s,\"joined\":%s,"
                  "\"partitions\":%d},\"redis\":{\"ok\":%s,\"held\":%s,\"timer_poll_failures\":"
                  "%llu},\"ruleset\":{\"ok\":%s,\"hash\":\"%s\",\"rules\":%zu}},\"problems\":[",
                  ok ? "ready" : "not ready", joined ? "true" : "false", joined ? "true" : "false",
                  s->ks.assigned, redis_ok ? "true" : "false", held ? "true" : "false",
                  (unsigned long long)s->dm.timer_poll_failures, rules_ok ? "true" : "false",
                  s->hash, s->nrules);
    const char *sep = "";
    if (!s->valid) {
        td_buf_printf(b, "\"starting: the main loop has not published yet\"");
        sep = ",";
    }
    if (s->valid && !joined) {
        td_buf_printf(b, "%s\"kafka: not in the consumer group yet (no assignment received)\"",
                      sep);
        sep = ",";
    }
    if (held) {
        td_buf_printf(b, "%s\"redis: unavailable, a batch is held and retried\"", sep);
        sep = ",";
    }
    if (s->valid && s->dm.timer_poll_failures)
        td_buf_printf(b, "%s\"redis: the last %llu timer polls failed\"", sep,
                      (unsigned long long)s->dm.timer_poll_failures);
    td_buf_printf(b, "]}\n");
}
