/*
 * td_daemon.c - the `touchd run` loop (see td_daemon.h for the sequence, and
 * docs/operations.md for why the sequence gives the delivery contract).
 *
 * Shape of a batch in memory: msgs[i] (owned rd_kafka messages, consumed
 * order), evs[i] (decoded events), gidx[i] (the prospect group of msg i, or
 * -1 for a dead letter) and next[i] (the next message of the same group), so
 * a group's events are walked in consumed order, which is partition order.
 * Groups own one td_state each, loaded from Redis in one pipeline. Every
 * array is sized once for batch_max_events and reused.
 *
 * Failure handling, in one place: Redis errors hold the batch (consumption
 * paused, backoff, retry); CAS conflicts recompute only the prospects that
 * conflicted; a fatal Kafka error ends the process with exit code 4; a stop
 * request while the batch cannot complete abandons it without storing its
 * offsets (it is consumed again after restart, and the state positions make
 * that harmless).
 *
 * @locality main thread.
 */
#include "td_daemon.h"
#include "td_state_cache.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "td_cli.h"
#include "td_engine.h"
#include "td_event.h"
#include "td_gifts.h"
#include "td_kafka.h"
#include "td_log.h"
#include "td_redis.h"
#include "td_rules.h"
#include "td_state.h"
#include "td_shadow.h"
#include "td_timers.h"

volatile sig_atomic_t td_daemon_stop_requested = 0;
volatile sig_atomic_t td_daemon_reload_requested = 0;

typedef struct td_drec {
    size_t off, len; /* in recbuf */
    int32_t g;       /* group (prospect) */
} td_drec;

struct td_daemon {
    const td_config *cfg;
    td_ruleset *rs;
    uint64_t rules_sig;
    int64_t next_rules_poll;

    td_redis *redis;
    td_kafka *kafka;
    td_tzdb *tz;
    td_step_out *out;

    /* the batch */
    size_t cap;
    rd_kafka_message_t **msgs;
    size_t nmsgs;
    td_event *evs;
    int32_t *gidx, *next;
    /* groups */
    td_state *states;
    int64_t *expected;
    int32_t *first, *last;
    bool *changed;
    size_t ngroups;
    int32_t *table;
    size_t tcap;
    /* recommendations of the current attempt */
    td_buf recbuf;
    td_drec *recs;
    size_t nrecs, caprecs;
    /* store scratch */
    td_state *pack;
    /* base[g]: the flat form of the state exactly as Redis holds it at
     * expected[g] (loaded, or last stored by us): writes send only the
     * difference. The buffers are kept across batches for reuse. */
    td_kvs *base;
    bool *has_base;
    td_state_cache *cache; /* NULL when engine.state_cache = 0 */
    int32_t *miss;
    td_kvs *pack_base; /* shallow copies of base[g] */
    td_kvs *pack_now;  /* the flat forms being written (owned, reused) */
    int64_t *pack_expected;
    int *pack_result;
    int32_t *pack_g, *work, *work2;

    /* counters since start */
    uint64_t batches, events, applied, skipped_pos, duplicates, dead_letters, recs_out,
        conflicts, redis_waits, reloads, reload_failures;
    int64_t next_progress;
    /* time spent in the phases of the last batch (ms), for the debug log */
    int64_t t_load, t_compute, t_deliver, t_store;

    /* events the engine derived for owners ("owner:<owner_id>" states),
     * kept for the whole batch: dq_g[i] is the owner's group. Owner groups
     * have no input messages (first = -1). stamp[g] == attempt marks the
     * groups (re)loaded in the current attempt. */
    td_event *dq;
    int32_t *dq_g;
    size_t ndq, capdq;
    uint32_t *stamp;
    uint32_t attempt_seq;
    uint64_t derived;

    /* durable timers (docs/timers.md) */
    td_timers *timers;
    int64_t next_timer_poll; /* monotonic ms */
    uint64_t timer_poll_failures;

    /* shadow ruleset (td_shadow.h): NULL when none is configured */
    td_shadow *shadow;

    /* gift register (td_gifts.h, docs/gifts.md): the gift.sent events
     * applied in attempt gift_seq, written after delivery, before the store */
    td_gifts *gifts;
    td_gifts_kafka *gifts_kafka; /* NULL: kafka.gift_register_topic = "" */
    td_gift_rec *gift_recs;
    size_t ngifts, capgifts;
    uint32_t gift_seq;
    uint64_t gifts_registered, gifts_again;
};

static int td_daemon_gifts_init(td_daemon *d);  /* gift register, below */
static void td_daemon_gifts_free(td_daemon *d);

static int64_t td_mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static td_ms td_wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (td_ms)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void *td_xcalloc(size_t n, size_t sz) {
    void *p = calloc(n ? n : 1, sz);
    if (!p) {
        td_log_error("out of memory", "bytes=%zu", n * sz);
        abort();
    }
    return p;
}

/* --------------------------------------------------------------- rules */

static void td_log_diags(const td_diags *dg) {
    char q1[600], q2[600];
    for (size_t i = 0; i < dg->n; i++) {
        const td_diag *x = &dg->v[i];
        td_log(x->severity == TD_SEV_ERROR ? TD_LOG_ERROR : TD_LOG_WARN, "rules diagnostic",
               "file=%s line=%d col=%d code=%s text=%s source=%s", x->file ? x->file : "-",
               x->line, x->col, x->code, td_log_quote(q1, sizeof q1, x->msg ? x->msg : ""),
               td_log_quote(q2, sizeof q2, x->source ? x->source : ""));
    }
}

/* Compiles the rules directory. @returns the ruleset or NULL (diagnostics
 * logged). */
static td_ruleset *td_daemon_compile(const td_config *cfg) {
    td_diags dg = {0};
    const char *paths[1] = {cfg->rules.dir};
    td_ruleset *rs = td_load_rules(paths, 1, &dg);
    td_log_diags(&dg);
    if (!rs)
        td_log_error("rules rejected", "dir=%s errors=%zu warnings=%zu", cfg->rules.dir,
                     dg.errors, dg.warnings);
    td_diags_free(&dg);
    return rs;
}

static void td_daemon_reload(td_daemon *d, const char *why) {
    d->rules_sig = td_rules_dir_signature(d->cfg->rules.dir);
    td_log_info("reloading rules", "dir=%s trigger=%s", d->cfg->rules.dir, why);
    td_ruleset *rs = td_daemon_compile(d->cfg);
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
    td_ruleset_free(d->rs);
    d->rs = rs;
    d->reloads++;
}

static void td_daemon_maybe_reload(td_daemon *d) {
    if (td_daemon_reload_requested) {
        td_daemon_reload_requested = 0;
        td_daemon_reload(d, "SIGHUP");
        td_shadow_reload(d->shadow, "SIGHUP");
        return;
    }
    int poll_ms = d->cfg->rules.reload_poll_ms;
    if (poll_ms <= 0)
        return;
    int64_t now = td_mono_ms();
    if (now < d->next_rules_poll)
        return;
    d->next_rules_poll = now + poll_ms;
    if (td_rules_dir_signature(d->cfg->rules.dir) != d->rules_sig)
        td_daemon_reload(d, "change");
}

/* ------------------------------------------------------------ life cycle */

td_daemon *td_daemon_new(const td_config *cfg, int *exit_code) {
    td_daemon *d = td_xcalloc(1, sizeof *d);
    d->cfg = cfg;
    char err[1024];

    d->rules_sig = td_rules_dir_signature(cfg->rules.dir);
    d->rs = td_daemon_compile(cfg);
    if (!d->rs) {
        *exit_code = TD_EXIT_FAIL;
        goto fail;
    }
    td_log_info("ruleset active", "ruleset=%s rules=%zu dir=%s", td_ruleset_hash(d->rs),
                td_ruleset_count(d->rs), cfg->rules.dir);
    d->next_rules_poll = td_mono_ms() + cfg->rules.reload_poll_ms;

    d->redis = td_redis_new(&cfg->redis, err, sizeof err);
    if (!d->redis) {
        td_log_error("redis configuration", "reason=%s", err);
        *exit_code = TD_EXIT_USAGE;
        goto fail;
    }
    if (!td_redis_connected(d->redis)) {
        char q[600];
        td_log_error("cannot reach redis at start", "host=%s port=%d reason=%s", cfg->redis.host,
                     cfg->redis.port, td_log_quote(q, sizeof q, td_redis_last_error(d->redis)));
        *exit_code = TD_EXIT_FATAL;
        goto fail;
    }
    td_log_info("redis connected", "host=%s port=%d db=%d prefix=%s", cfg->redis.host,
                cfg->redis.unix_socket ? 0 : cfg->redis.port, cfg->redis.db,
                cfg->redis.key_prefix);

    /* Timers: every state write maintains the index; a poller fires them. */
    td_redis_set_timer_shards(d->redis, (uint32_t)cfg->timers.shards);
    d->timers = td_timers_new(&cfg->redis, &cfg->timers, err, sizeof err);
    if (!d->timers) {
        td_log_error("timers configuration", "reason=%s", err);
        *exit_code = TD_EXIT_USAGE;
        goto fail;
    }
    {
        char advice[600];
        int a = td_timers_redis_advice(d->timers, advice, sizeof advice);
        td_log(a == 1 ? TD_LOG_WARN : TD_LOG_INFO, "timers ready",
               "poll_ms=%d sweep_ms=%d claim_batch=%d lease_ms=%d overdue_policy=%s "
               "drop_older_than_ms=%lld %s",
               cfg->timers.poll_ms, cfg->timers.sweep_ms, cfg->timers.claim_batch,
               cfg->timers.lease_ms, td_overdue_policy_name(cfg->timers.overdue_policy),
               (long long)cfg->timers.drop_older_than,
               advice[0] ? advice : "index=unknown");
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
    if (td_daemon_gifts_init(d) < 0) {
        *exit_code = TD_EXIT_USAGE;
        goto fail;
    }
    d->out = td_xcalloc(1, sizeof *d->out);
    size_t cap = (size_t)cfg->engine.batch_max_events;
    d->cap = cap;
    d->msgs = td_xcalloc(cap, sizeof *d->msgs);
    d->evs = td_xcalloc(cap, sizeof *d->evs);
    d->gidx = td_xcalloc(cap, sizeof *d->gidx);
    d->next = td_xcalloc(cap, sizeof *d->next);
    /* groups: one per prospect of the batch, plus one per owner an event
     * derives for: at most 2 * cap */
    size_t gcap = 2 * cap;
    d->states = td_xcalloc(gcap, sizeof *d->states);
    d->expected = td_xcalloc(gcap, sizeof *d->expected);
    d->first = td_xcalloc(gcap, sizeof *d->first);
    d->last = td_xcalloc(gcap, sizeof *d->last);
    d->changed = td_xcalloc(gcap, sizeof *d->changed);
    d->stamp = td_xcalloc(gcap, sizeof *d->stamp);
    d->tcap = 16;
    while (d->tcap < gcap * 2)
        d->tcap *= 2;
    d->table = td_xcalloc(d->tcap, sizeof *d->table);
    d->pack = td_xcalloc(gcap, sizeof *d->pack);
    d->base = td_xcalloc(gcap, sizeof *d->base);
    d->has_base = td_xcalloc(gcap, sizeof *d->has_base);
    d->miss = td_xcalloc(gcap, sizeof *d->miss);
    if (cfg->engine.state_cache > 0) {
        d->cache = td_state_cache_new((size_t)cfg->engine.state_cache);
        if (!d->cache)
            goto fail;
    }
    d->pack_base = td_xcalloc(gcap, sizeof *d->pack_base);
    d->pack_now = td_xcalloc(gcap, sizeof *d->pack_now);
    d->pack_expected = td_xcalloc(gcap, sizeof *d->pack_expected);
    d->pack_result = td_xcalloc(gcap, sizeof *d->pack_result);
    d->pack_g = td_xcalloc(gcap, sizeof *d->pack_g);
    d->work = td_xcalloc(gcap, sizeof *d->work);
    d->work2 = td_xcalloc(gcap, sizeof *d->work2);
    d->next_progress = td_mono_ms() + 60000;
    return d;
fail:
    td_daemon_free(d);
    return NULL;
}

void td_daemon_free(td_daemon *d) {
    if (!d)
        return;
    td_shadow_free(d->shadow); /* before the (embedded) broker goes */
    td_daemon_gifts_free(d);
    if (d->kafka)
        td_kafka_free(d->kafka); /* final commit, leave the group */
    td_timers_free(d->timers);
    td_redis_free(d->redis);
    td_ruleset_free(d->rs);
    td_tzdb_free(d->tz);
    free(d->out);
    free(d->msgs);
    free(d->evs);
    free(d->gidx);
    free(d->next);
    free(d->states);
    free(d->expected);
    free(d->first);
    free(d->last);
    free(d->changed);
    free(d->stamp);
    free(d->dq);
    free(d->dq_g);
    free(d->table);
    free(d->pack);
    td_kvs_free_array(d->base, 2 * d->cap);
    free(d->has_base);
    free(d->miss);
    td_state_cache_free(d->cache);
    free(d->pack_base);
    td_kvs_free_array(d->pack_now, 2 * d->cap);
    free(d->pack_expected);
    free(d->pack_result);
    free(d->pack_g);
    free(d->work);
    free(d->work2);
    free(d->recs);
    td_buf_free(&d->recbuf);
    free(d);
}

/* --------------------------------------------------------------- batch */

/* Makes base[g] the flat form of states[g] (what Redis now holds).
 * @returns 0 or -1 (out of memory). */
static int td_base_set(td_daemon *d, int32_t g) {
    d->has_base[g] = td_kvs_capture(&d->base[g], &d->states[g]) == TD_OK;
    return d->has_base[g] ? 0 : -1;
}

/* Ends a batch: states that are what Redis holds (loaded or stored, and not
 * changed since) go back to the cache with their flat form; the others are
 * dropped (the next batch reloads them). */
static void td_batch_release(td_daemon *d) {
    for (size_t g = 0; g < d->ngroups; g++) {
        if (d->has_base[g] && !d->changed[g])
            td_state_cache_give(d->cache, &d->states[g], &d->base[g]);
        td_state_free(&d->states[g]);
        td_kvs_clear(&d->base[g]);
        d->has_base[g] = false;
    }
    d->ngroups = 0;
    for (size_t i = 0; i < d->nmsgs; i++)
        rd_kafka_message_destroy(d->msgs[i]);
    d->nmsgs = 0;
}

/* Consumes up to batch_max_events within batch_max_ms. The batch opens with
 * the first message (waiting up to 100 ms for it, so signals and reloads are
 * served while idle) and closes when full, when batch_max_ms has passed, or
 * as soon as no further message is waiting locally: an idle-ish stream gets
 * small batches and low latency, a busy one large batches. */
static size_t td_batch_collect(td_daemon *d, int wait_ms) {
    rd_kafka_message_t *m = td_kafka_poll(d->kafka, wait_ms);
    if (!m)
        return 0;
    d->msgs[d->nmsgs++] = m;
    int64_t deadline = td_mono_ms() + d->cfg->engine.batch_max_ms;
    while (d->nmsgs < d->cap) {
        m = td_kafka_poll(d->kafka, 0);
        if (!m)
            break;
        d->msgs[d->nmsgs++] = m;
        if ((d->nmsgs & 63) == 0 && td_mono_ms() >= deadline)
            break;
    }
    return d->nmsgs;
}

/* The group of prospect `pid`, created (state initialised, no messages)
 * when absent and `create`; -1 when absent and not created. */
static int32_t td_group_lookup(td_daemon *d, const char *pid, bool create, bool *created) {
    size_t plen = strlen(pid);
    size_t mask = d->tcap - 1;
    size_t h = (size_t)td_hash64(pid, plen, TD_HASH_SEED) & mask;
    if (created)
        *created = false;
    while (d->table[h]) {
        int32_t cand = d->table[h] - 1;
        if (strcmp(d->states[cand].prospect_id, pid) == 0)
            return cand;
        h = (h + 1) & mask;
    }
    if (!create || d->ngroups >= 2 * d->cap)
        return -1;
    int32_t g = (int32_t)d->ngroups++;
    d->table[h] = g + 1;
    td_state_init(&d->states[g], pid);
    d->first[g] = d->last[g] = -1;
    d->expected[g] = 0;
    d->changed[g] = false;
    d->stamp[g] = 0;
    if (created)
        *created = true;
    return g;
}

/* Decodes every message; invalid ones are queued on the dead-letter topic
 * (in the round that is about to start); valid ones are grouped by prospect. */
static int td_batch_decode(td_daemon *d) {
    memset(d->table, 0, d->tcap * sizeof *d->table);
    d->ngroups = 0;
    for (size_t i = 0; i < d->nmsgs; i++) {
        rd_kafka_message_t *m = d->msgs[i];
        td_event_error ee;
        d->gidx[i] = -1;
        d->next[i] = -1;
        if (td_event_decode(m->payload ? m->payload : "", m->payload ? m->len : 0, &d->evs[i],
                            &ee) != TD_OK) {
            d->dead_letters++;
            char q[400];
            /* The reason names the field, never its value: payloads may
             * hold personal data. */
            td_log_warn("event rejected to dead-letter topic",
                        "topic=%s partition=%d offset=%lld field=%s reason=%s",
                        rd_kafka_topic_name(m->rkt), (int)m->partition, (long long)m->offset,
                        ee.field[0] ? ee.field : "-", td_log_quote(q, sizeof q, ee.reason));
            if (td_kafka_send_dlq(d->kafka, m, ee.reason, ee.field) < 0)
                return -1;
            continue;
        }
        bool created;
        int32_t g = td_group_lookup(d, d->evs[i].prospect_id, true, &created);
        if (created) {
            d->first[g] = d->last[g] = (int32_t)i;
        } else {
            d->next[d->last[g]] = (int32_t)i;
            d->last[g] = (int32_t)i;
        }
        d->gidx[i] = g;
    }
    return 0;
}

/* Waits while Redis is unavailable. @returns 0 to retry, -1 when a stop was
 * requested (the batch is abandoned). */
static int td_redis_wait(td_daemon *d, int *attempt, const char *op) {
    if (*attempt == 0) {
        char q[600];
        td_log_warn("redis unavailable, holding the batch", "op=%s reason=%s", op,
                    td_log_quote(q, sizeof q, td_redis_last_error(d->redis)));
        td_kafka_hold(d->kafka);
        d->redis_waits++;
    }
    (*attempt)++;
    if (td_daemon_stop_requested) {
        td_log_warn("stop requested while redis is unavailable: batch abandoned, its offsets "
                    "are not stored",
                    "events=%zu", d->nmsgs);
        return -1;
    }
    int ms = d->cfg->redis.backoff_min_ms;
    for (int k = 1; k < *attempt && ms < d->cfg->redis.backoff_max_ms; k++)
        ms *= 2;
    if (ms > d->cfg->redis.backoff_max_ms)
        ms = d->cfg->redis.backoff_max_ms;
    /* keepalive doubles as the sleep: it serves the consumer meanwhile */
    int64_t until = td_mono_ms() + ms;
    while (td_mono_ms() < until && !td_daemon_stop_requested)
        td_kafka_keepalive(d->kafka, 50);
    if (*attempt % 10 == 0)
        td_log_warn("redis still unavailable", "op=%s attempts=%d", op, *attempt);
    return 0;
}

static void td_redis_back(td_daemon *d, int attempt, const char *op) {
    if (attempt > 0) {
        td_log_info("redis available again, batch resumes", "op=%s attempts=%d", op, attempt);
        td_kafka_release(d->kafka);
    }
}

/* Loads the states of groups work[0..n) (freshly initialised). */
static int td_batch_load(td_daemon *d, const int32_t *work_in, size_t n_in) {
    /* States this instance stored last come from the cache; only the others
     * are read from Redis. A stale cached state is caught by the version
     * check of the write (a conflict drops it and reloads). */
    const int32_t *work = work_in;
    size_t n = n_in;
    if (d->cache) {
        size_t nmiss = 0;
        for (size_t k = 0; k < n_in; k++) {
            int32_t g = work_in[k];
            td_state_free(&d->states[g]);
            if (td_state_cache_take(d->cache, d->states[g].prospect_id, &d->states[g],
                                    &d->base[g])) {
                d->has_base[g] = true;
            } else {
                d->miss[nmiss++] = g;
            }
        }
        work = d->miss;
        n = nmiss;
    }
    int attempt = 0;
    for (;;) {
        if (n == 0)
            break;
        for (size_t k = 0; k < n; k++) {
            td_state *st = &d->states[work[k]];
            char pid[TD_ID_MAX + 1];
            memcpy(pid, st->prospect_id, sizeof pid);
            td_state_free(st);
            td_state_init(st, pid);
        }
        int rc;
        if (n == d->ngroups && work == work_in) {
            rc = td_redis_load(d->redis, d->states, n);
        } else {
            /* A subset: load into the pack, move the results back. */
            for (size_t k = 0; k < n; k++)
                d->pack[k] = d->states[work[k]];
            rc = td_redis_load(d->redis, d->pack, n);
            for (size_t k = 0; k < n; k++)
                d->states[work[k]] = d->pack[k];
        }
        if (rc == TD_OK)
            break;
        if (td_redis_wait(d, &attempt, "load") < 0)
            return -1;
    }
    td_redis_back(d, attempt, "load");
    for (size_t k = 0; k < n; k++)
        if (td_base_set(d, work[k]) < 0)
            return -1;
    for (size_t k = 0; k < n_in; k++) {
        d->expected[work_in[k]] = d->states[work_in[k]].version;
        d->changed[work_in[k]] = false;
    }
    return 0;
}

static int td_dq_push(td_daemon *d, const td_event *ev) {
    if (d->ndq == d->capdq) {
        size_t cap = d->capdq ? d->capdq * 2 : 64;
        td_event *v = realloc(d->dq, cap * sizeof *v);
        if (!v)
            return -1;
        d->dq = v;
        int32_t *gv = realloc(d->dq_g, cap * sizeof *gv);
        if (!gv)
            return -1;
        d->dq_g = gv;
        d->capdq = cap;
    }
    d->dq[d->ndq] = *ev;
    d->dq_g[d->ndq] = -1;
    d->ndq++;
    return 0;
}

static int td_rec_add(td_daemon *d, int32_t g, size_t off) {
    if (d->nrecs == d->caprecs) {
        size_t cap = d->caprecs ? d->caprecs * 2 : 256;
        td_drec *v = realloc(d->recs, cap * sizeof *v);
        if (!v)
            return -1;
        d->recs = v;
        d->caprecs = cap;
    }
    d->recs[d->nrecs++] = (td_drec){off, d->recbuf.len - off, g};
    return 0;
}

/* ----------------------------------------------------------- gift register */

/* Notes applied event i of group g when it is a gift.sent (docs/gifts.md).
 * The list restarts with every attempt. @returns 0, or -1 (out of memory). */
static int td_gift_note(td_daemon *d, int32_t g, int32_t i) {
    if (d->evs[i].type != TD_EV_GIFT_SENT)
        return 0;
    if (d->gift_seq != d->attempt_seq) {
        d->gift_seq = d->attempt_seq;
        d->ngifts = 0;
    }
    if (d->ngifts == d->capgifts) {
        size_t cap = d->capgifts ? d->capgifts * 2 : 64;
        td_gift_rec *v = realloc(d->gift_recs, cap * sizeof *v);
        if (!v)
            return -1;
        d->gift_recs = v;
        d->capgifts = cap;
    }
    td_gift_rec_from_event(&d->gift_recs[d->ngifts++], &d->evs[i], &d->states[g], d->tz,
                           td_ruleset_settings(d->rs));
    return 0;
}

/* Writes this attempt's gifts: the Kafka topic (when configured, waiting for
 * its acknowledgements), then the Redis register (idempotent script),
 * holding the batch while Redis is unavailable. Runs after the
 * recommendations are acknowledged and before the states are stored, so a
 * crash re-runs it and the script drops what was already registered.
 * @returns 0, -1 (fatal Kafka error) or -2 (stop requested: abandoned). */
static int td_daemon_gifts(td_daemon *d) {
    if (d->gift_seq != d->attempt_seq || d->ngifts == 0)
        return 0;
    size_t n = d->ngifts;
    if (d->gifts_kafka) {
        td_gifts_kafka_begin(d->gifts_kafka);
        for (size_t k = 0; k < n; k++)
            if (td_gifts_kafka_send(d->gifts_kafka, &d->gift_recs[k]) < 0)
                return -1;
        int w = td_gifts_kafka_wait(d->gifts_kafka, &td_daemon_stop_requested, 10000);
        if (w < 0)
            return w;
    }
    int attempt = 0;
    size_t added = 0;
    while (td_gifts_write(d->gifts, d->gift_recs, n, &added) != TD_OK) {
        if (attempt++ == 0) {
            char q[600];
            td_log_warn("redis unavailable, holding the batch", "op=gifts reason=%s",
                        td_log_quote(q, sizeof q, td_gifts_last_error(d->gifts)));
            td_kafka_hold(d->kafka);
            d->redis_waits++;
        }
        if (td_daemon_stop_requested) {
            td_log_warn("stop requested while redis is unavailable: batch abandoned, its offsets "
                        "are not stored",
                        "events=%zu", d->nmsgs);
            return -2;
        }
        int64_t until = td_mono_ms() + d->cfg->redis.backoff_min_ms;
        while (td_mono_ms() < until && !td_daemon_stop_requested)
            td_kafka_keepalive(d->kafka, 50);
        if (attempt % 10 == 0)
            td_log_warn("redis still unavailable", "op=gifts attempts=%d", attempt);
    }
    if (attempt > 0) {
        td_log_info("redis available again, batch resumes", "op=gifts attempts=%d", attempt);
        td_kafka_release(d->kafka);
    }
    d->gifts_registered += added;
    d->gifts_again += n - added;
    td_log_debug("gift register written", "gifts=%zu added=%zu", n, added);
    d->ngifts = 0;
    return 0;
}

static int td_daemon_gifts_init(td_daemon *d) {
    char err[600];
    d->gifts = td_gifts_new(&d->cfg->redis, d->cfg->gifts.retention_days, err, sizeof err);
    if (!d->gifts) {
        td_log_error("gift register configuration", "reason=%s", err);
        return -1;
    }
    if (d->cfg->kafka.gift_register_topic[0]) {
        d->gifts_kafka = td_gifts_kafka_new(d->cfg, td_kafka_bootstraps(d->kafka), err, sizeof err);
        if (!d->gifts_kafka) {
            char q[700];
            td_log_error("gift register configuration", "reason=%s",
                         td_log_quote(q, sizeof q, err));
            return -1;
        }
    }
    td_log_info("gift register ready", "retention_days=%d topic=%s",
                d->cfg->gifts.retention_days,
                d->cfg->kafka.gift_register_topic[0] ? d->cfg->kafka.gift_register_topic : "-");
    return 0;
}

static void td_daemon_gifts_free(td_daemon *d) {
    if (d->gifts_registered || d->gifts_again)
        td_log_info("gift register", "registered=%llu already_registered=%llu",
                    (unsigned long long)d->gifts_registered, (unsigned long long)d->gifts_again);
    td_gifts_kafka_free(d->gifts_kafka);
    td_gifts_free(d->gifts);
    free(d->gift_recs);
}

/* Applies the events of group g in order. @returns 0, or -1 (out of memory). */
static int td_batch_compute(td_daemon *d, int32_t g, td_ms now) {
    td_state *st = &d->states[g];
    for (int32_t i = d->first[g]; i >= 0; i = d->next[i]) {
        rd_kafka_message_t *m = d->msgs[i];
        const char *topic = rd_kafka_topic_name(m->rkt);
        if (m->offset <= td_state_pos_get(st, topic, m->partition)) {
            d->skipped_pos++; /* applied before a crash or by another instance */
            continue;
        }
        td_trigger trig = {.kind = TD_TRIG_EVENT, .ev = &d->evs[i]};
        if (d->shadow)
            td_shadow_before(d->shadow, st); /* a copy, stepped after live, never stored */
        if (td_engine_step(d->rs, st, &trig, now, d->tz, 0, d->out) != TD_OK)
            return -1;
        if (d->shadow)
            td_shadow_after(d->shadow, d->rs, &trig, now, d->out);
        if (d->out->duplicate)
            d->duplicates++;
        else
            d->applied++;
        if (!d->out->duplicate && td_gift_note(d, g, i) < 0)
            return -1;
        for (uint32_t r = 0; r < d->out->nrecs; r++) {
            size_t off = d->recbuf.len;
            if (td_rec_json(&d->out->recs[r], st, d->rs, &trig, now, &d->recbuf) != TD_OK ||
                td_rec_add(d, g, off) < 0)
                return -1;
        }
        if (d->out->nerrors)
            td_log_warn("rule evaluation errors", "prospect=%s event=%s errors=%u",
                        st->prospect_id, d->evs[i].id, d->out->nerrors);
        if (d->out->has_derived && td_dq_push(d, &d->out->derived) < 0)
            return -1;
        td_state_pos_set(st, topic, m->partition, m->offset);
        d->changed[g] = true;
    }
    return 0;
}

/* Steps derived event i on its owner's state (the owner's dedup ring makes a
 * repeat a no-op). @returns 0, or -1 (out of memory). */
static int td_derived_step(td_daemon *d, size_t i, td_ms now) {
    int32_t g = d->dq_g[i];
    td_state *st = &d->states[g];
    td_trigger trig = {.kind = TD_TRIG_EVENT, .ev = &d->dq[i]};
    if (td_engine_step(d->rs, st, &trig, now, d->tz, 0, d->out) != TD_OK)
        return -1;
    if (d->out->duplicate)
        return 0;
    d->derived++;
    for (uint32_t r = 0; r < d->out->nrecs; r++) {
        size_t off = d->recbuf.len;
        if (td_rec_json(&d->out->recs[r], st, d->rs, &trig, now, &d->recbuf) != TD_OK ||
            td_rec_add(d, g, off) < 0)
            return -1;
    }
    if (d->out->nerrors)
        td_log_warn("rule evaluation errors", "prospect=%s event=%s errors=%u", st->prospect_id,
                    d->dq[i].id, d->out->nerrors);
    d->changed[g] = true;
    return 0;
}

/*
 * Applies the events derived in this attempt (dq[from..ndq)) and, for owner
 * groups (re)loaded in this attempt, every event derived for them in the
 * batch so far (a reload after a conflict dropped them). New owner groups are
 * created, loaded and appended to work; an owner group stored in an earlier
 * attempt that receives a new event is appended to work again.
 * @returns 0, -1 (out of memory) or -2 (abandoned: stop requested).
 */
static int td_batch_derive(td_daemon *d, size_t *nwork, size_t from, td_ms now) {
    if (d->ndq == 0)
        return 0;
    uint32_t seq = d->attempt_seq;
    size_t n0 = *nwork, ncreated = 0;
    for (size_t i = from; i < d->ndq; i++) {
        bool created;
        int32_t g = td_group_lookup(d, d->dq[i].prospect_id, true, &created);
        if (g < 0)
            return -1; /* cannot happen: at most one derived event per input event */
        d->dq_g[i] = g;
        if (created) {
            d->work[n0 + ncreated++] = g;
            d->stamp[g] = seq;
        }
    }
    if (ncreated > 0) {
        if (td_batch_load(d, d->work + n0, ncreated) < 0)
            return -2;
        *nwork += ncreated;
    }
    /* groups loaded in this attempt: every derived event for them */
    for (size_t i = 0; i < d->ndq; i++) {
        int32_t g = d->dq_g[i];
        if (d->stamp[g] == seq && td_derived_step(d, i, now) < 0)
            return -1;
    }
    /* groups stored earlier in the batch: only the new events */
    for (size_t i = from; i < d->ndq; i++) {
        int32_t g = d->dq_g[i];
        if (d->stamp[g] == seq)
            continue;
        d->expected[g] = d->states[g].version; /* as stored by us */
        d->stamp[g] = seq;
        d->work[(*nwork)++] = g;
        for (size_t k = i; k < d->ndq; k++)
            if (d->dq_g[k] == g && td_derived_step(d, k, now) < 0)
                return -1;
    }
    return 0;
}

/* Stores the changed groups among work[0..n), sending each one's difference
 * from its base; conflicted ones are written to conflicts[] (*nconf).
 * @returns 0, -1 when abandoned (stop requested), -2 on out-of-memory. */
static int td_batch_store(td_daemon *d, const int32_t *work, size_t n, int32_t *conflicts,
                          size_t *nconf) {
    size_t np = 0;
    /* Owner groups (no input messages) first: Redis runs a pipeline in
     * order, so a crash mid-store may lose a prospect's write (its event is
     * consumed again and derives the same "<id>#owner" event, which the
     * owner's dedup ring drops) but never an owner's event whose source
     * prospect was stored. */
    for (int pass = 0; pass < 2; pass++) {
        for (size_t k = 0; k < n; k++) {
            int32_t g = work[k];
            if (!d->changed[g] || (d->first[g] < 0) != (pass == 0))
                continue;
            d->pack[np] = d->states[g]; /* shallow: the store only reads and sets version */
            d->pack_base[np] = d->base[g]; /* shallow, read only */
            if (td_kvs_capture(&d->pack_now[np], &d->states[g]) != TD_OK)
                return -2;
            d->pack_expected[np] = d->expected[g];
            d->pack_g[np] = g;
            np++;
        }
    }
    *nconf = 0;
    if (np == 0)
        return 0;
    int attempt = 0;
    while (td_redis_store_diff(d->redis, d->pack, d->pack_base, d->pack_now, d->pack_expected, np,
                               d->pack_result) != TD_OK) {
        /* Unknown which writes happened: retrying is safe (a write that did
         * happen bumped the version, so it now conflicts, and the reload
         * sees our positions). */
        if (td_redis_wait(d, &attempt, "store") < 0)
            return -1;
    }
    td_redis_back(d, attempt, "store");
    for (size_t k = 0; k < np; k++) {
        int32_t g = d->pack_g[k];
        if (d->pack_result[k] == TD_REDIS_STORED) {
            d->states[g].version = d->pack[k].version;
            d->changed[g] = false;
            /* what was written becomes the base; the old base's buffers are
             * reused for the next write */
            td_kvs old = d->base[g];
            d->base[g] = d->pack_now[k];
            d->pack_now[k] = old;
            d->has_base[g] = true;
        } else {
            td_state_cache_drop(d->cache, d->states[g].prospect_id);
            conflicts[(*nconf)++] = g;
        }
    }
    return 0;
}

typedef enum { TD_BATCH_DONE = 0, TD_BATCH_ABANDONED = 1, TD_BATCH_FATAL = 2 } td_batch_rc;

static td_batch_rc td_batch_process(td_daemon *d) {
    d->t_load = d->t_compute = d->t_deliver = d->t_store = 0;
    td_kafka_round_begin(d->kafka);
    d->ndq = 0;
    if (td_batch_decode(d) < 0)
        return TD_BATCH_FATAL;

    /* The first attempt covers every group; later ones only the conflicted. */
    size_t nwork = d->ngroups;
    for (size_t g = 0; g < nwork; g++)
        d->work[g] = (int32_t)g;
    bool first_round = true;
    for (int attempt = 0;; attempt++) {
        int64_t t0 = td_mono_ms();
        if (nwork > 0 && td_batch_load(d, d->work, nwork) < 0)
            return TD_BATCH_ABANDONED;
        int64_t t1 = td_mono_ms();
        d->t_load += t1 - t0;
        if (!first_round)
            td_kafka_round_begin(d->kafka);
        first_round = false;
        d->nrecs = 0;
        d->recbuf.len = 0;
        td_ms now = td_wall_ms();
        uint32_t seq = ++d->attempt_seq;
        for (size_t k = 0; k < nwork; k++)
            d->stamp[d->work[k]] = seq;
        size_t dq_from = d->ndq;
        for (size_t k = 0; k < nwork; k++) {
            if (td_batch_compute(d, d->work[k], now) < 0) {
                td_log_error("engine step failed (out of memory)", "prospect=%s",
                             d->states[d->work[k]].prospect_id);
                return TD_BATCH_FATAL;
            }
        }
        /* events derived for owners: stepped on the owners' states, stored
         * with them in this attempt */
        int dr = td_batch_derive(d, &nwork, dq_from, now);
        if (dr == -1) {
            td_log_error("engine step failed (out of memory)", "derived=%zu", d->ndq);
            return TD_BATCH_FATAL;
        }
        if (dr == -2)
            return TD_BATCH_ABANDONED;
        for (size_t r = 0; r < d->nrecs; r++) {
            const td_drec *x = &d->recs[r];
            const char *pid = d->states[x->g].prospect_id;
            if (td_kafka_send_rec(d->kafka, pid, strlen(pid), d->recbuf.p + x->off, x->len) < 0)
                return TD_BATCH_FATAL;
        }
        d->recs_out += d->nrecs;
        int64_t t2 = td_mono_ms();
        d->t_compute += t2 - t1;
        /* Durable output first: nothing of this batch is stored in Redis, and
         * no offset, before every recommendation is acknowledged. */
        int w = td_kafka_round_wait(d->kafka, &td_daemon_stop_requested, 10000);
        if (w == -1)
            return TD_BATCH_FATAL;
        if (w == -2)
            return TD_BATCH_ABANDONED;
        int gw = td_daemon_gifts(d); /* the gift register: after delivery, before the store */
        if (gw == -1)
            return TD_BATCH_FATAL;
        if (gw == -2)
            return TD_BATCH_ABANDONED;

        int64_t t3 = td_mono_ms();
        d->t_deliver += t3 - t2;
        size_t nconf = 0;
        int sr = td_batch_store(d, d->work, nwork, d->work2, &nconf);
        if (sr == -2) {
            td_log_error("out of memory after a state write", "prospects=%zu", nwork);
            return TD_BATCH_FATAL;
        }
        if (sr < 0)
            return TD_BATCH_ABANDONED;
        d->t_store += td_mono_ms() - t3;
        if (nconf == 0)
            break;
        d->conflicts += nconf;
        td_log_info("state changed concurrently, recomputing", "prospects=%zu attempt=%d", nconf,
                    attempt + 1);
        memcpy(d->work, d->work2, nconf * sizeof *d->work);
        nwork = nconf;
        if (attempt >= 3) {
            /* Persistent contention: back off a little (another instance is
             * working on the same prospects during a rebalance). */
            td_kafka_keepalive(d->kafka, attempt > 20 ? 200 : 10 * attempt);
        }
        if (td_daemon_stop_requested && attempt > 50)
            return TD_BATCH_ABANDONED;
    }

    /* Everything the batch caused is durable: its offsets may be committed. */
    td_kafka_store(d->kafka, d->msgs, d->nmsgs);
    return TD_BATCH_DONE;
}

/* ---------------------------------------------------------------- timers */

/* The timer path's sink: recommendations go out in their own Kafka round,
 * acknowledged before the states are stored (same rule as batches). */
static int td_timer_send(void *ud, const char *pid, const char *json, size_t len) {
    td_daemon *d = ud;
    if (td_kafka_send_rec(d->kafka, pid, strlen(pid), json, len) < 0)
        return -1;
    d->recs_out++;
    return 0;
}

static int td_timer_wait(void *ud) {
    td_daemon *d = ud;
    int w = td_kafka_round_wait(d->kafka, &td_daemon_stop_requested, 10000);
    td_kafka_round_begin(d->kafka); /* a recompute after a conflict sends anew */
    return w == 0 ? 0 : -1;
}

/* The shadow ruleset judges timer fires too: a copy of the state before the
 * live timer step, stepped after it with the shadow rules, never stored. */
static void td_timer_shadow_before(void *ud, const td_state *st) {
    td_daemon *d = ud;
    td_shadow_before(d->shadow, st);
}

static void td_timer_shadow_after(void *ud, const td_ruleset *rs, const td_trigger *trig,
                                  td_ms now, const td_step_out *out) {
    td_daemon *d = ud;
    td_shadow_after(d->shadow, rs, trig, now, out);
}

/* Polls due timers when it is time: repeatedly while polls come back full
 * (a backlog), for at most ~250 ms so the input keeps flowing. */
static void td_daemon_timers(td_daemon *d) {
    int64_t now = td_mono_ms();
    if (now < d->next_timer_poll)
        return;
    const td_timers_conf *tc = &d->cfg->timers;
    td_timers_sink sink = {d, td_timer_send, td_timer_wait, NULL, NULL};
    if (d->shadow) {
        sink.before_step = td_timer_shadow_before;
        sink.after_step = td_timer_shadow_after;
    }
    int64_t until = now + 250;
    for (;;) {
        size_t claimed = 0;
        td_kafka_round_begin(d->kafka);
        int rc = td_timers_poll(d->timers, d->redis, d->rs, d->tz, td_wall_ms(), &sink, &claimed);
        if (rc != TD_OK) {
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
            return;
        }
    }
    d->next_timer_poll = td_mono_ms() + tc->poll_ms;
}

static void td_daemon_progress(td_daemon *d, bool force) {
    int64_t now = td_mono_ms();
    if (!force && now < d->next_progress)
        return;
    d->next_progress = now + 60000;
    td_kafka_stats ks;
    td_kafka_get_stats(d->kafka, &ks);
    const td_timers_stats *ts = td_timers_get_stats(d->timers);
    td_state_cache_stats cs;
    td_state_cache_stats_get(d->cache, &cs);
    td_log_info("state cache", "hits=%llu misses=%llu drops=%llu used=%zu entries=%zu",
                (unsigned long long)cs.hits, (unsigned long long)cs.misses,
                (unsigned long long)cs.drops, cs.used, cs.entries);
    td_log_info("progress",
                "batches=%llu events=%llu applied=%llu skipped=%llu duplicates=%llu "
                "dead_letters=%llu recs=%llu recs_acked=%llu resent=%llu conflicts=%llu "
                "redis_waits=%llu partitions=%d owner_events=%llu timers_claimed=%llu timers_fired=%llu "
                "timers_recs=%llu timers_stale=%llu timers_dropped=%llu timers_reclaimed=%llu "
                "timers_conflicts=%llu timers_errors=%llu timers_delay_p99_ms=%lld "
                "timers_delay_max_ms=%lld ruleset=%s",
                (unsigned long long)d->batches, (unsigned long long)d->events,
                (unsigned long long)d->applied, (unsigned long long)d->skipped_pos,
                (unsigned long long)d->duplicates, (unsigned long long)d->dead_letters,
                (unsigned long long)d->recs_out, (unsigned long long)ks.recs_acked,
                (unsigned long long)ks.resent, (unsigned long long)d->conflicts,
                (unsigned long long)d->redis_waits, ks.assigned, (unsigned long long)d->derived,
                (unsigned long long)ts->claimed, (unsigned long long)ts->fired,
                (unsigned long long)ts->recs, (unsigned long long)ts->stale,
                (unsigned long long)ts->dropped, (unsigned long long)ts->reclaimed,
                (unsigned long long)ts->conflicts, (unsigned long long)ts->errors,
                (long long)td_timers_delay_quantile(ts, 0.99), (long long)ts->max_delay_ms,
                td_ruleset_hash(d->rs));
}

int td_daemon_run(td_daemon *d) {
    int rc = TD_EXIT_OK;
    td_log_info("touchd running", "batch_max_events=%d batch_max_ms=%d",
                d->cfg->engine.batch_max_events, d->cfg->engine.batch_max_ms);
    while (!td_daemon_stop_requested) {
        const char *fatal = td_kafka_fatal(d->kafka);
        if (fatal) {
            char q[600];
            td_log_error("fatal kafka error, exiting", "reason=%s",
                         td_log_quote(q, sizeof q, fatal));
            rc = TD_EXIT_FATAL;
            break;
        }
        td_daemon_maybe_reload(d);
        td_shadow_tick(d->shadow);
        td_daemon_progress(d, false);
        td_daemon_timers(d);
        if (td_daemon_stop_requested)
            break;
        /* wait for input at most until the next timer poll (and 100 ms) */
        int64_t wait = d->next_timer_poll - td_mono_ms();
        if (td_batch_collect(d, wait < 0 ? 0 : wait > 100 ? 100 : (int)wait) == 0)
            continue;
        int64_t t0 = td_mono_ms();
        size_t n = d->nmsgs, ng = 0;
        td_batch_rc br = td_batch_process(d);
        ng = d->ngroups;
        d->batches++;
        d->events += n;
        td_batch_release(d);
        if (br == TD_BATCH_FATAL) {
            const char *why = td_kafka_fatal(d->kafka);
            char q[600];
            td_log_error("fatal error, exiting", "reason=%s",
                         td_log_quote(q, sizeof q, why ? why : "engine"));
            rc = TD_EXIT_FATAL;
            break;
        }
        if (br == TD_BATCH_ABANDONED)
            break;
        td_log_debug("batch done",
                     "events=%zu prospects=%zu recs=%zu ms=%lld load_ms=%lld compute_ms=%lld "
                     "deliver_ms=%lld store_ms=%lld",
                     n, ng, d->nrecs, (long long)(td_mono_ms() - t0), (long long)d->t_load,
                     (long long)d->t_compute, (long long)d->t_deliver, (long long)d->t_store);
    }
    td_daemon_progress(d, true);
    if (rc == TD_EXIT_OK)
        td_log_info("stopping: committing offsets and leaving the group", NULL);
    td_kafka_close(d->kafka, 10000);
    return rc;
}
