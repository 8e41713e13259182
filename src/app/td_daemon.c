/*
 * td_daemon.c - the `touchd run` loop (see td_daemon.h for the sequence, and
 * docs/operations.md for why the sequence gives the delivery contract).
 *
 * Shape of a batch in memory (td_batch): msgs[i] (owned rd_kafka messages,
 * consumed order), evs[i] (decoded events), dead[i] (sent to the dead-letter
 * topic), gidx[i] (the prospect group of msg i, or -1) and next[i] (the next
 * message of the same group), so a group's events are walked in consumed
 * order, which is partition order. Groups own one td_state each. Every array
 * is sized once for batch_max_events and reused.
 *
 * The pipeline (engine.pipeline, on by default): two batches are alive at
 * once. While batch N's states are written to Redis by the store thread (its
 * own connection, nothing else), the main thread consumes, decodes, loads
 * and computes batch N+1 and produces its recommendations. A prospect of
 * N+1 that is also in N starts from a copy of N's computed state; once N's
 * write is known to have landed, that copy takes N's stored version and
 * flat form as its base. If any of N's writes conflicted, N's conflicted
 * prospects are recomputed and stored first (on the main thread), then the
 * groups of N+1 that started from them are recomputed, so nothing is stored
 * from a state that was not stored before it.
 * Order of the durable steps per batch is unchanged: its recommendations are
 * acknowledged, then its states are stored, then its offsets; and N's
 * offsets are stored before N+1's states are written.
 *
 * Failure handling: Redis errors hold the batch (consumption paused,
 * backoff, retry, on the main thread); CAS conflicts recompute only the
 * prospects that conflicted; a fatal Kafka error ends the process with exit
 * code 4; a stop request while a batch cannot complete abandons it without
 * storing its offsets (it is consumed again after restart, and the state
 * positions make that harmless).
 *
 * @locality main thread, except td_store_main (the store thread), which
 * only reads the batch handed to it and writes its pack_* arrays.
 */
#include "td_daemon.h"
#include "td_state_cache.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
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
#include "td_shadow.h"
#include "td_state.h"
#include "td_timers.h"

volatile sig_atomic_t td_daemon_stop_requested = 0;
volatile sig_atomic_t td_daemon_reload_requested = 0;

/* td_batch_store: the batch was not written yet */
#define TD_STORE_UNTRIED 1

/* What one group's computation counted (td_batch.gc). */
typedef struct td_gcount {
    uint32_t applied, skipped_pos, duplicates, derived;
} td_gcount;

typedef struct td_drec {
    size_t off, len; /* in recbuf */
    int32_t g;       /* group (prospect) */
} td_drec;

typedef struct td_batch {
    /* messages */
    rd_kafka_message_t **msgs;
    size_t nmsgs;
    td_event *evs;
    bool *dead;
    int32_t *gidx, *next;
    /* groups: states[g] is owned by the batch (heap-allocated; it moves to
     * and from the cache and the daemon's spares by pointer) */
    td_state **states;
    int64_t *expected;
    int32_t *first, *last;
    bool *changed;
    size_t ngroups;
    int32_t *table;
    /* pipeline: src[g] is the group of the batch in flight whose computed
     * state states[g] was copied from (-1: loaded); superseded[g] marks a
     * group of the batch in flight copied by the next batch (written by the
     * main thread only; the store thread never reads it) */
    int32_t *src;
    bool *superseded;
    bool recomputed; /* some group conflicted and was recomputed */
    bool *restated;  /* restated[g]: group g's state changed after its first
                       * compute (it conflicted and was recomputed, or an
                       * owner group re-stepped then): a copy the next batch
                       * took of it is stale */
    bool redone;     /* groups recomputed after the batch before them conflicted */
    /* recommendations of the current attempt */
    td_buf recbuf;
    td_drec *recs;
    size_t nrecs, caprecs;
    /* base[g]: the flat form of the state exactly as Redis holds it at
     * expected[g] (loaded, or last stored by us): writes send only the
     * difference. The buffers are kept across batches for reuse. */
    td_kvs *base;
    bool *has_base;
    int32_t *miss;
    /* store: filled by td_batch_pack and td_batch_pack_bind (main thread),
     * td_batch_store_send (main or store thread: pack_result and the pack's
     * versions), read by td_batch_store_apply (main thread) */
    td_state **pack_ld;       /* loads: states[g] of the missed groups */
    const td_state **pack_st; /* stores: states[g] of the packed groups */
    td_kvs *pack_base;        /* shallow copies of base[g] */
    td_kvs *pack_now;         /* the flat forms being written (owned, reused) */
    int64_t *pack_expected;
    int *pack_result;
    int32_t *pack_g;
    size_t npack;
    int store_rc; /* TD_OK, TD_ERR (Redis) or -2 (out of memory) */
    int32_t *work, *work2;
    size_t nwork;

    /* events the engine derived for owners ("owner:<owner_id>" states),
     * kept for the whole batch: dq_g[i] is the owner's group. Owner groups
     * have no input messages (first = -1). stamp[g] == attempt_seq marks the
     * groups (re)loaded in the current attempt. */
    td_event *dq;
    int32_t *dq_g;
    size_t ndq, capdq;
    uint32_t *stamp;
    uint32_t attempt_seq;

    /* gift register (td_gifts.h, docs/gifts.md): the gift.sent events
     * applied in attempt gift_seq, written after delivery, before the store */
    td_gift_rec *gift_recs;
    size_t ngifts, capgifts;
    uint32_t gift_seq;

    /* counters, added to the daemon's when the batch is released; gc[g]
     * is group g's share, taken back when the group is computed again from
     * a reloaded or re-copied state (a conflict, a redo), so every event
     * counts once */
    uint64_t applied, skipped_pos, duplicates, derived;
    td_gcount *gc;
    /* ghash[g]: td_hash64 of the prospect id (TD_HASH_SEED), glen[g] its
     * length: measured once per group, for the group table and the cache */
    uint64_t *ghash;
    uint32_t *glen;
    /* milliseconds spent in the phases, for the debug log */
    int64_t t_start, t_load, t_compute, t_deliver, t_store, t_wait;
    int64_t age; /* ms from the oldest message's timestamp to the batch's start */
} td_batch;

struct td_daemon {
    const td_config *cfg;
    td_ruleset *rs;
    uint64_t rules_sig;
    int64_t next_rules_poll;

    td_redis *redis;
    td_kafka *kafka;
    td_tzdb *tz;
    td_step_out *out;
    td_state_cache *cache; /* NULL when engine.state_cache = 0 */
    /* state objects not in a batch nor in the cache, for reuse (main thread) */
    td_state **spare;
    size_t nspare, capspare;

    /* the two batches; `inflight` (one of them, or NULL) is being stored */
    size_t cap, gcap, tcap;
    td_batch bt[2];
    td_batch *inflight;

    /* the store thread (engine.pipeline) and its own Redis connection */
    td_redis *redis_store;
    pthread_t store_th;
    bool store_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    td_batch *job; /* handed to the store thread; NULL when it is done */
    bool quit;

    /* counters since start */
    uint64_t batches, events, applied, skipped_pos, duplicates, dead_letters, recs_out, conflicts,
        redis_waits, reloads, reload_failures, redone;
    uint64_t verify_seen; /* redis.verify_writes differences already logged */
    int64_t next_progress;
    uint64_t derived;

    /* durable timers (docs/timers.md) */
    td_timers *timers;
    int64_t next_timer_poll; /* monotonic ms */
    uint64_t timer_poll_failures;

    /* shadow ruleset (td_shadow.h): NULL when none is configured */
    td_shadow *shadow;

    /* gift register (td_gifts.h, docs/gifts.md) */
    td_gifts *gifts;
    td_gifts_kafka *gifts_kafka; /* NULL: kafka.gift_register_topic = "" */
    uint64_t gifts_registered, gifts_again;
};

static int td_daemon_gifts_init(td_daemon *d); /* gift register, below */
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
               "file=%s line=%d col=%d code=%s text=%s source=%s", x->file ? x->file : "-", x->line,
               x->col, x->code, td_log_quote(q1, sizeof q1, x->msg ? x->msg : ""),
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
        td_log_error("rules rejected", "dir=%s errors=%zu warnings=%zu", cfg->rules.dir, dg.errors,
                     dg.warnings);
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
    if (poll_ms <= 0) return;
    int64_t now = td_mono_ms();
    if (now < d->next_rules_poll) return;
    d->next_rules_poll = now + poll_ms;
    if (td_rules_dir_signature(d->cfg->rules.dir) != d->rules_sig) td_daemon_reload(d, "change");
}

/* ------------------------------------------------------------ life cycle */

/* ------------------------------------------------------------ life cycle */

static void td_batch_alloc(td_batch *b, size_t cap, size_t gcap, size_t tcap) {
    b->msgs = td_xcalloc(cap, sizeof *b->msgs);
    b->evs = td_xcalloc(cap, sizeof *b->evs);
    b->dead = td_xcalloc(cap, sizeof *b->dead);
    b->gidx = td_xcalloc(cap, sizeof *b->gidx);
    b->next = td_xcalloc(cap, sizeof *b->next);
    b->states = td_xcalloc(gcap, sizeof *b->states);
    b->expected = td_xcalloc(gcap, sizeof *b->expected);
    b->first = td_xcalloc(gcap, sizeof *b->first);
    b->last = td_xcalloc(gcap, sizeof *b->last);
    b->changed = td_xcalloc(gcap, sizeof *b->changed);
    b->stamp = td_xcalloc(gcap, sizeof *b->stamp);
    b->gc = td_xcalloc(gcap, sizeof *b->gc);
    b->ghash = td_xcalloc(gcap, sizeof *b->ghash);
    b->glen = td_xcalloc(gcap, sizeof *b->glen);
    b->src = td_xcalloc(gcap, sizeof *b->src);
    b->superseded = td_xcalloc(gcap, sizeof *b->superseded);
    b->restated = td_xcalloc(gcap, sizeof *b->restated);
    b->table = td_xcalloc(tcap, sizeof *b->table);
    b->base = td_xcalloc(gcap, sizeof *b->base);
    b->has_base = td_xcalloc(gcap, sizeof *b->has_base);
    b->miss = td_xcalloc(gcap, sizeof *b->miss);
    b->pack_ld = td_xcalloc(gcap, sizeof *b->pack_ld);
    b->pack_st = td_xcalloc(gcap, sizeof *b->pack_st);
    b->pack_base = td_xcalloc(gcap, sizeof *b->pack_base);
    b->pack_now = td_xcalloc(gcap, sizeof *b->pack_now);
    b->pack_expected = td_xcalloc(gcap, sizeof *b->pack_expected);
    b->pack_result = td_xcalloc(gcap, sizeof *b->pack_result);
    b->pack_g = td_xcalloc(gcap, sizeof *b->pack_g);
    b->work = td_xcalloc(gcap, sizeof *b->work);
    b->work2 = td_xcalloc(gcap, sizeof *b->work2);
}

static void td_batch_free(td_batch *b, size_t gcap) {
    free(b->msgs);
    free(b->evs);
    free(b->dead);
    free(b->gidx);
    free(b->next);
    free(b->states);
    free(b->pack_st);
    free(b->expected);
    free(b->first);
    free(b->last);
    free(b->changed);
    free(b->stamp);
    free(b->gc);
    free(b->ghash);
    free(b->glen);
    free(b->src);
    free(b->superseded);
    free(b->restated);
    free(b->table);
    td_kvs_free_array(b->base, gcap);
    free(b->has_base);
    free(b->miss);
    free(b->pack_ld);
    free(b->pack_base);
    td_kvs_free_array(b->pack_now, gcap);
    free(b->pack_expected);
    free(b->pack_result);
    free(b->pack_g);
    free(b->work);
    free(b->work2);
    free(b->dq);
    free(b->dq_g);
    free(b->gift_recs);
    free(b->recs);
    td_buf_free(&b->recbuf);
}

static int td_batch_store_send(td_redis *r, td_batch *b);
static void *td_store_main(void *arg);

td_daemon *td_daemon_new(const td_config *cfg, int *exit_code) {
    td_daemon *d = td_xcalloc(1, sizeof *d);
    d->cfg = cfg;
    char err[1024];
    pthread_mutex_init(&d->mu, NULL);
    pthread_cond_init(&d->cv, NULL);

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
                cfg->redis.unix_socket ? 0 : cfg->redis.port, cfg->redis.db, cfg->redis.key_prefix);

    /* Timers: every state write maintains the index; a poller fires them. */
    td_redis_set_timer_shards(d->redis, (uint32_t)cfg->timers.shards);
    td_redis_set_lanes(d->redis, (unsigned)cfg->engine.store_connections);
    if (cfg->engine.pipeline) {
        /* the store thread's own connection (hiredis contexts are not
         * shared between threads); it reconnects by itself like the first */
        d->redis_store = td_redis_new(&cfg->redis, err, sizeof err);
        if (!d->redis_store) {
            td_log_error("redis configuration", "reason=%s", err);
            *exit_code = TD_EXIT_USAGE;
            goto fail;
        }
        td_redis_set_timer_shards(d->redis_store, (uint32_t)cfg->timers.shards);
        td_redis_set_lanes(d->redis_store, (unsigned)cfg->engine.store_connections);
    }
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
               (long long)cfg->timers.drop_older_than, advice[0] ? advice : "index=unknown");
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
    /* groups: one per prospect of the batch, plus one per owner an event
     * derives for: at most 2 * cap */
    d->gcap = 2 * cap;
    d->tcap = 16;
    while (d->tcap < d->gcap * 2)
        d->tcap *= 2;
    for (int i = 0; i < 2; i++)
        td_batch_alloc(&d->bt[i], d->cap, d->gcap, d->tcap);
    if (cfg->engine.state_cache > 0) {
        d->cache = td_state_cache_new((size_t)cfg->engine.state_cache);
        if (!d->cache) goto fail;
    }
    if (cfg->engine.pipeline) {
        if (pthread_create(&d->store_th, NULL, td_store_main, d) != 0) {
            td_log_error("cannot start the store thread", "reason=%s", strerror(errno));
            *exit_code = TD_EXIT_FATAL;
            goto fail;
        }
        d->store_started = true;
    }
    d->next_progress = td_mono_ms() + 60000;
    return d;
fail:
    td_daemon_free(d);
    return NULL;
}

void td_daemon_free(td_daemon *d) {
    if (!d) return;
    if (d->store_started) {
        pthread_mutex_lock(&d->mu);
        d->quit = true;
        pthread_cond_broadcast(&d->cv);
        pthread_mutex_unlock(&d->mu);
        pthread_join(d->store_th, NULL);
    }
    td_shadow_free(d->shadow); /* before the (embedded) broker goes */
    td_daemon_gifts_free(d);
    if (d->kafka) td_kafka_free(d->kafka); /* final commit, leave the group */
    td_timers_free(d->timers);
    td_redis_free(d->redis);
    td_redis_free(d->redis_store);
    td_ruleset_free(d->rs);
    td_tzdb_free(d->tz);
    free(d->out);
    for (int i = 0; i < 2; i++) {
        td_batch *b = &d->bt[i];
        if (b->states)
            for (size_t g = 0; g < b->ngroups; g++)
                if (b->states[g]) {
                    td_state_free(b->states[g]);
                    free(b->states[g]);
                }
        if (b->msgs)
            for (size_t m = 0; m < b->nmsgs; m++)
                rd_kafka_message_destroy(b->msgs[m]);
        td_batch_free(b, d->gcap);
    }
    td_state_cache_free(d->cache);
    for (size_t i = 0; i < d->nspare; i++)
        free(d->spare[i]);
    free(d->spare);
    pthread_cond_destroy(&d->cv);
    pthread_mutex_destroy(&d->mu);
    free(d);
}

/* ----------------------------------------------------------- store thread */

static void *td_store_main(void *arg) {
    td_daemon *d = arg;
    pthread_mutex_lock(&d->mu);
    for (;;) {
        while (!d->job && !d->quit)
            pthread_cond_wait(&d->cv, &d->mu);
        if (!d->job) break;
        td_batch *b = d->job;
        pthread_mutex_unlock(&d->mu);
        int64_t t0 = td_mono_ms();
        b->store_rc = td_batch_store_send(d->redis_store, b);
        b->t_store = td_mono_ms() - t0;
        pthread_mutex_lock(&d->mu);
        d->job = NULL;
        pthread_cond_broadcast(&d->cv);
    }
    pthread_mutex_unlock(&d->mu);
    return NULL;
}

/* Hands b's store to the store thread. */
static void td_store_start(td_daemon *d, td_batch *b) {
    pthread_mutex_lock(&d->mu);
    d->job = b;
    pthread_cond_broadcast(&d->cv);
    pthread_mutex_unlock(&d->mu);
}

/* Waits for the store thread to finish its batch. */
static void td_store_join(td_daemon *d) {
    pthread_mutex_lock(&d->mu);
    while (d->job)
        pthread_cond_wait(&d->cv, &d->mu);
    pthread_mutex_unlock(&d->mu);
}

/* --------------------------------------------------------------- batch */

/* Makes base[g] the flat form of states[g] (what Redis now holds).
 * @returns 0 or -1 (out of memory). */
static int td_base_set(td_batch *b, int32_t g) {
    if (b->states[g]->version == 0) {
        /* never stored: Redis holds nothing, so the first write sends every
         * field, prospect_id included (the state's is set from the key) */
        td_kvs_clear(&b->base[g]);
        b->has_base[g] = true;
        return 0;
    }
    b->has_base[g] = td_kvs_capture(&b->base[g], b->states[g]) == TD_OK;
    return b->has_base[g] ? 0 : -1;
}

/* A state object for a new group: a spare one (td_state_put_spare left it
 * without tables), else a new zeroed one. Only its prospect_id is set:
 * td_batch_load defines the rest before anything reads it.
 * @returns NULL when out of memory. */
static td_state *td_state_take_spare(td_daemon *d, const char *pid, size_t plen) {
    td_state *st = d->nspare ? d->spare[--d->nspare] : calloc(1, sizeof *st);
    if (!st) return NULL;
    if (plen > TD_ID_MAX) plen = TD_ID_MAX; /* as td_state_init (ids are validated to fit) */
    memcpy(st->prospect_id, pid, plen);
    st->prospect_id[plen] = '\0';
    return st;
}

/* Keeps st (its tables freed) for reuse; NULL is a no-op. */
static void td_state_put_spare(td_daemon *d, td_state *st) {
    if (!st) return;
    td_state_free(st);
    if (d->nspare == d->capspare) {
        size_t cap = d->capspare ? d->capspare * 2 : 256;
        td_state **v = realloc(d->spare, cap * sizeof *v);
        if (!v) {
            free(st);
            return;
        }
        d->spare = v;
        d->capspare = cap;
    }
    d->spare[d->nspare++] = st;
}

/* Frees the groups' states (keeping their buffers' arrays). */
static void td_batch_drop_groups(td_daemon *d, td_batch *b) {
    for (size_t g = 0; g < b->ngroups; g++) {
        td_state_put_spare(d, b->states[g]);
        b->states[g] = NULL;
        td_kvs_clear(&b->base[g]);
        b->has_base[g] = false;
    }
    b->ngroups = 0;
}

/* Ends a batch: states that are what Redis holds (loaded or stored, and not
 * changed since, and not carried on by the next batch) go back to the cache
 * with their flat form; the others are dropped (the next batch reloads
 * them). Its counters join the daemon's; its timings go to the debug log. */
static void td_batch_release(td_daemon *d, td_batch *b) {
    td_log_debug("batch done",
                 "events=%zu prospects=%zu recs=%zu ms=%lld load_ms=%lld compute_ms=%lld "
                 "deliver_ms=%lld store_ms=%lld store_wait_ms=%lld age_ms=%lld",
                 b->nmsgs, b->ngroups, b->nrecs, (long long)(td_mono_ms() - b->t_start),
                 (long long)b->t_load, (long long)b->t_compute, (long long)b->t_deliver,
                 (long long)b->t_store, (long long)b->t_wait, (long long)b->age);
    for (size_t g = 0; g < b->ngroups; g++) {
        if (b->has_base[g] && !b->changed[g] && !b->superseded[g]) {
            td_state_put_spare(
                d, td_state_cache_give(d->cache, b->states[g], b->ghash[g], &b->base[g]));
            b->states[g] = NULL;
        }
        b->superseded[g] = false;
    }
    td_batch_drop_groups(d, b);
    for (size_t i = 0; i < b->nmsgs; i++)
        rd_kafka_message_destroy(b->msgs[i]);
    d->batches++;
    d->events += b->nmsgs;
    d->applied += b->applied;
    d->skipped_pos += b->skipped_pos;
    d->duplicates += b->duplicates;
    d->derived += b->derived;
    b->applied = b->skipped_pos = b->duplicates = b->derived = 0;
    b->nmsgs = 0;
}

/* Consumes up to batch_max_events within batch_max_ms. The batch opens with
 * the first message (waiting up to wait_ms for it, so signals and reloads
 * are served while idle) and closes when full, when batch_max_ms has passed,
 * or as soon as no further message is waiting locally: an idle-ish stream
 * gets small batches and low latency, a busy one large batches. */
static size_t td_batch_collect(td_daemon *d, td_batch *b, int wait_ms) {
    rd_kafka_message_t *m = td_kafka_poll(d->kafka, wait_ms);
    if (!m) return 0;
    b->msgs[b->nmsgs++] = m;
    int64_t deadline = td_mono_ms() + d->cfg->engine.batch_max_ms;
    while (b->nmsgs < d->cap) {
        m = td_kafka_poll(d->kafka, 0);
        if (!m) break;
        b->msgs[b->nmsgs++] = m;
        if ((b->nmsgs & 63) == 0 && td_mono_ms() >= deadline) break;
    }
    return b->nmsgs;
}

/* The group of prospect `pid` in b, created (no messages, its state to be
 * loaded: td_state_take_spare) when absent and `create`; -1 when absent and
 * not created, -2 when out of memory. */
static int32_t td_group_find(td_daemon *d, td_batch *b, const char *pid, size_t plen, uint64_t hash,
                             bool create, bool *created) {
    size_t mask = d->tcap - 1;
    size_t h = (size_t)hash & mask;
    if (created) *created = false;
    while (b->table[h]) {
        int32_t cand = b->table[h] - 1;
        if (strcmp(b->states[cand]->prospect_id, pid) == 0) return cand;
        h = (h + 1) & mask;
    }
    if (!create || b->ngroups >= d->gcap) return -1;
    td_state *st = td_state_take_spare(d, pid, plen);
    if (!st) return -2;
    int32_t g = (int32_t)b->ngroups++;
    b->table[h] = g + 1;
    b->states[g] = st;
    b->ghash[g] = hash;
    b->glen[g] = (uint32_t)plen;
    b->first[g] = b->last[g] = -1;
    b->expected[g] = 0;
    b->changed[g] = false;
    b->stamp[g] = 0;
    b->gc[g] = (td_gcount){0};
    b->src[g] = -1;
    b->superseded[g] = false;
    b->restated[g] = false;
    if (created) *created = true;
    return g;
}

/* td_group_find of an id not measured yet. */
static int32_t td_group_lookup(td_daemon *d, td_batch *b, const char *pid, bool create,
                               bool *created) {
    size_t plen = strlen(pid);
    return td_group_find(d, b, pid, plen, td_hash64(pid, plen, TD_HASH_SEED), create, created);
}

/* Decodes every message; invalid ones are queued on the dead-letter topic
 * (in the round that is open). */
static int td_batch_decode(td_daemon *d, td_batch *b) {
    for (size_t i = 0; i < b->nmsgs; i++) {
        rd_kafka_message_t *m = b->msgs[i];
        td_event_error ee;
        b->dead[i] = false;
        if (td_event_decode(m->payload ? m->payload : "", m->payload ? m->len : 0, &b->evs[i],
                            &ee) != TD_OK) {
            b->dead[i] = true;
            d->dead_letters++;
            char q[400];
            /* The reason names the field, never its value: payloads may
             * hold personal data. */
            td_log_warn("event rejected to dead-letter topic",
                        "topic=%s partition=%d offset=%lld field=%s reason=%s",
                        rd_kafka_topic_name(m->rkt), (int)m->partition, (long long)m->offset,
                        ee.field[0] ? ee.field : "-", td_log_quote(q, sizeof q, ee.reason));
            if (td_kafka_send_dlq(d->kafka, m, ee.reason, ee.field) < 0) return -1;
        }
    }
    return 0;
}

/* Groups the valid events by prospect (from scratch). @returns 0, or -1
 * (out of memory). */
static int td_batch_group(td_daemon *d, td_batch *b) {
    memset(b->table, 0, d->tcap * sizeof *b->table);
    b->ngroups = 0;
    for (size_t i = 0; i < b->nmsgs; i++) {
        b->gidx[i] = -1;
        b->next[i] = -1;
        if (b->dead[i]) continue;
        bool created;
        int32_t g = td_group_lookup(d, b, b->evs[i].prospect_id, true, &created);
        if (g < 0) return -1; /* out of memory (never full: gcap >= the batch's events) */
        if (created) {
            b->first[g] = b->last[g] = (int32_t)i;
        } else {
            b->next[b->last[g]] = (int32_t)i;
            b->last[g] = (int32_t)i;
        }
        b->gidx[i] = g;
    }
    return 0;
}

/* Waits while Redis is unavailable. @returns 0 to retry, -1 when a stop was
 * requested (the batch is abandoned). */
static int td_redis_wait(td_daemon *d, td_redis *r, int *attempt, const char *op) {
    if (*attempt == 0) {
        char q[600];
        td_log_warn("redis unavailable, holding the batch", "op=%s reason=%s", op,
                    td_log_quote(q, sizeof q, td_redis_last_error(r)));
        td_kafka_hold(d->kafka);
        d->redis_waits++;
    }
    (*attempt)++;
    if (td_daemon_stop_requested) {
        td_log_warn("stop requested while redis is unavailable: batch abandoned, its offsets "
                    "are not stored",
                    NULL);
        return -1;
    }
    int ms = d->cfg->redis.backoff_min_ms;
    for (int k = 1; k < *attempt && ms < d->cfg->redis.backoff_max_ms; k++)
        ms *= 2;
    if (ms > d->cfg->redis.backoff_max_ms) ms = d->cfg->redis.backoff_max_ms;
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

/* Loads the states of b's groups work[0..n) (freshly initialised). A
 * prospect that is also in `from` (the batch in flight, or NULL) starts from
 * a copy of the state computed there: its version and base are settled when
 * that batch's write is known (td_batch_adopt). Other states this instance
 * stored last come from the cache; only the rest are read from Redis. A
 * stale cached state is caught by the version check of the write (a
 * conflict drops it and reloads). */
static int td_batch_load(td_daemon *d, td_batch *b, td_batch *from, const int32_t *work_in,
                         size_t n_in) {
    const int32_t *work = work_in;
    size_t n = n_in;
    size_t nmiss = 0;
    for (size_t k = 0; k < n_in; k++) {
        int32_t g = work_in[k];
        b->src[g] = -1;
        if (from) {
            int32_t sg = td_group_find(d, from, b->states[g]->prospect_id, b->glen[g], b->ghash[g],
                                       false, NULL);
            if (sg >= 0) {
                td_state_free(b->states[g]);
                if (td_state_copy(b->states[g], from->states[sg]) != TD_OK) return -2;
                b->src[g] = sg;
                from->superseded[sg] = true;
                b->has_base[g] = false;
                continue;
            }
        }
        if (d->cache) {
            td_state *hit =
                td_state_cache_take(d->cache, b->states[g]->prospect_id, b->ghash[g], &b->base[g]);
            if (hit) {
                td_state_put_spare(d, b->states[g]);
                b->states[g] = hit;
                b->has_base[g] = true;
                continue;
            }
        }
        b->miss[nmiss++] = g;
    }
    work = b->miss;
    n = nmiss;
    int attempt = 0;
    for (;;) {
        if (n == 0) break;
        for (size_t k = 0; k < n; k++) {
            td_state *st = b->states[work[k]];
            char pid[TD_ID_MAX + 1];
            memcpy(pid, st->prospect_id, sizeof pid);
            td_state_free(st);
            td_state_init(st, pid);
        }
        for (size_t k = 0; k < n; k++)
            b->pack_ld[k] = b->states[work[k]];
        int rc = td_redis_load_ptrs(d->redis, b->pack_ld, n);
        if (rc == TD_OK) break;
        if (td_redis_wait(d, d->redis, &attempt, "load") < 0) return -1;
    }
    td_redis_back(d, attempt, "load");
    for (size_t k = 0; k < n; k++)
        if (td_base_set(b, work[k]) < 0) return -2;
    for (size_t k = 0; k < n_in; k++) {
        b->expected[work_in[k]] = b->states[work_in[k]]->version;
        b->changed[work_in[k]] = false;
    }
    return 0;
}

static int td_dq_push(td_batch *b, const td_event *ev) {
    if (b->ndq == b->capdq) {
        size_t cap = b->capdq ? b->capdq * 2 : 64;
        td_event *v = realloc(b->dq, cap * sizeof *v);
        if (!v) return -1;
        b->dq = v;
        int32_t *gv = realloc(b->dq_g, cap * sizeof *gv);
        if (!gv) return -1;
        b->dq_g = gv;
        b->capdq = cap;
    }
    b->dq[b->ndq] = *ev;
    b->dq_g[b->ndq] = -1;
    b->ndq++;
    return 0;
}

static int td_rec_add(td_batch *b, int32_t g, size_t off) {
    if (b->nrecs == b->caprecs) {
        size_t cap = b->caprecs ? b->caprecs * 2 : 256;
        td_drec *v = realloc(b->recs, cap * sizeof *v);
        if (!v) return -1;
        b->recs = v;
        b->caprecs = cap;
    }
    b->recs[b->nrecs++] = (td_drec){off, b->recbuf.len - off, g};
    return 0;
}

/* ----------------------------------------------------------- gift register */

/* Notes applied event i of group g when it is a gift.sent (docs/gifts.md).
 * The list restarts with every attempt. @returns 0, or -1 (out of memory). */
static int td_gift_note(td_daemon *d, td_batch *b, int32_t g, int32_t i) {
    if (b->evs[i].type != TD_EV_GIFT_SENT) return 0;
    if (b->gift_seq != b->attempt_seq) {
        b->gift_seq = b->attempt_seq;
        b->ngifts = 0;
    }
    if (b->ngifts == b->capgifts) {
        size_t cap = b->capgifts ? b->capgifts * 2 : 64;
        td_gift_rec *v = realloc(b->gift_recs, cap * sizeof *v);
        if (!v) return -1;
        b->gift_recs = v;
        b->capgifts = cap;
    }
    td_gift_rec_from_event(&b->gift_recs[b->ngifts++], &b->evs[i], b->states[g], d->tz,
                           td_ruleset_settings(d->rs));
    return 0;
}

/* Writes this attempt's gifts: the Kafka topic (when configured, waiting for
 * its acknowledgements), then the Redis register (idempotent script),
 * holding the batch while Redis is unavailable. Runs after the
 * recommendations are acknowledged and before the states are stored, so a
 * crash re-runs it and the script drops what was already registered.
 * @returns 0, -1 (fatal Kafka error) or -2 (stop requested: abandoned). */
static int td_daemon_gifts(td_daemon *d, td_batch *b) {
    if (b->gift_seq != b->attempt_seq || b->ngifts == 0) return 0;
    size_t n = b->ngifts;
    if (d->gifts_kafka) {
        td_gifts_kafka_begin(d->gifts_kafka);
        for (size_t k = 0; k < n; k++)
            if (td_gifts_kafka_send(d->gifts_kafka, &b->gift_recs[k]) < 0) return -1;
        int w = td_gifts_kafka_wait(d->gifts_kafka, &td_daemon_stop_requested, 10000);
        if (w < 0) return w;
    }
    int attempt = 0;
    size_t added = 0;
    while (td_gifts_write(d->gifts, b->gift_recs, n, &added) != TD_OK) {
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
                        "events=%zu", b->nmsgs);
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
    b->ngifts = 0;
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
    td_log_info("gift register ready", "retention_days=%d topic=%s", d->cfg->gifts.retention_days,
                d->cfg->kafka.gift_register_topic[0] ? d->cfg->kafka.gift_register_topic : "-");
    return 0;
}

static void td_daemon_gifts_free(td_daemon *d) {
    if (d->gifts_registered || d->gifts_again)
        td_log_info("gift register", "registered=%llu already_registered=%llu",
                    (unsigned long long)d->gifts_registered, (unsigned long long)d->gifts_again);
    td_gifts_kafka_free(d->gifts_kafka);
    td_gifts_free(d->gifts);
}

/* Applies the events of group g in order. @returns 0, or -1 (out of memory). */
static int td_batch_compute(td_daemon *d, td_batch *b, int32_t g, td_ms now) {
    td_state *st = b->states[g];
    for (int32_t i = b->first[g]; i >= 0; i = b->next[i]) {
        rd_kafka_message_t *m = b->msgs[i];
        const char *topic = rd_kafka_topic_name(m->rkt);
        if (m->offset <= td_state_pos_get(st, topic, m->partition)) {
            b->skipped_pos++; /* applied before a crash or by another instance */
            b->gc[g].skipped_pos++;
            continue;
        }
        td_trigger trig = {.kind = TD_TRIG_EVENT, .ev = &b->evs[i]};
        if (d->shadow)
            td_shadow_before(d->shadow, st); /* a copy, stepped after live, never stored */
        if (td_engine_step(d->rs, st, &trig, now, d->tz, 0, d->out) != TD_OK) return -1;
        if (d->shadow) td_shadow_after(d->shadow, d->rs, &trig, now, d->out);
        if (d->out->duplicate) {
            b->duplicates++;
            b->gc[g].duplicates++;
        } else {
            b->applied++;
            b->gc[g].applied++;
        }
        if (!d->out->duplicate && td_gift_note(d, b, g, i) < 0) return -1;
        for (uint32_t r = 0; r < d->out->nrecs; r++) {
            size_t off = b->recbuf.len;
            if (td_rec_json(&d->out->recs[r], st, d->rs, &trig, now, &b->recbuf) != TD_OK ||
                td_rec_add(b, g, off) < 0)
                return -1;
        }
        if (d->out->nerrors)
            td_log_warn("rule evaluation errors", "prospect=%s event=%s errors=%u", st->prospect_id,
                        b->evs[i].id, d->out->nerrors);
        if (d->out->has_derived && td_dq_push(b, &d->out->derived) < 0) return -1;
        td_state_pos_set(st, topic, m->partition, m->offset);
        b->changed[g] = true;
    }
    return 0;
}

/* Steps derived event i on its owner's state (the owner's dedup ring makes a
 * repeat a no-op). @returns 0, or -1 (out of memory). */
static int td_derived_step(td_daemon *d, td_batch *b, size_t i, td_ms now) {
    int32_t g = b->dq_g[i];
    td_state *st = b->states[g];
    td_trigger trig = {.kind = TD_TRIG_EVENT, .ev = &b->dq[i]};
    if (td_engine_step(d->rs, st, &trig, now, d->tz, 0, d->out) != TD_OK) return -1;
    if (d->out->duplicate) return 0;
    b->derived++;
    b->gc[g].derived++;
    for (uint32_t r = 0; r < d->out->nrecs; r++) {
        size_t off = b->recbuf.len;
        if (td_rec_json(&d->out->recs[r], st, d->rs, &trig, now, &b->recbuf) != TD_OK ||
            td_rec_add(b, g, off) < 0)
            return -1;
    }
    if (d->out->nerrors)
        td_log_warn("rule evaluation errors", "prospect=%s event=%s errors=%u", st->prospect_id,
                    b->dq[i].id, d->out->nerrors);
    b->changed[g] = true;
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
static int td_batch_derive(td_daemon *d, td_batch *b, td_batch *from, size_t from_dq, td_ms now) {
    if (b->ndq == 0) return 0;
    uint32_t seq = b->attempt_seq;
    size_t n0 = b->nwork, ncreated = 0;
    for (size_t i = from_dq; i < b->ndq; i++) {
        bool created;
        int32_t g = td_group_lookup(d, b, b->dq[i].prospect_id, true, &created);
        if (g < 0) return -1; /* out of memory (never full: one derived event per input event) */
        b->dq_g[i] = g;
        if (created) {
            b->work[n0 + ncreated++] = g;
            b->stamp[g] = seq;
        }
    }
    if (ncreated > 0) {
        int lr = td_batch_load(d, b, from, b->work + n0, ncreated);
        if (lr < 0) return lr == -2 ? -1 : -2;
        b->nwork += ncreated;
    }
    /* groups loaded in this attempt: every derived event for them */
    for (size_t i = 0; i < b->ndq; i++) {
        int32_t g = b->dq_g[i];
        if (b->stamp[g] == seq && td_derived_step(d, b, i, now) < 0) return -1;
    }
    /* groups stored earlier in the batch: only the new events */
    for (size_t i = from_dq; i < b->ndq; i++) {
        int32_t g = b->dq_g[i];
        if (b->stamp[g] == seq) continue;
        b->expected[g] = b->states[g]->version; /* as stored by us */
        b->stamp[g] = seq;
        b->work[b->nwork++] = g;
        for (size_t k = i; k < b->ndq; k++)
            if (b->dq_g[k] == g && td_derived_step(d, b, k, now) < 0) return -1;
    }
    return 0;
}

/* Captures the flat forms of b's changed groups (every group the batch
 * changed and has not stored yet) into the pack (pack_now, pack_g), owners
 * first. Only the states are read: it
 * may run before the bases and versions of groups copied from the batch in
 * flight are known (td_batch_pack_bind completes the pack).
 * @returns 0 or -2 (out of memory). */
static int td_batch_pack(td_batch *b) {
    size_t np = 0;
    /* Owner groups (no input messages) first: Redis runs a pipeline in
     * order, so a crash mid-store may lose a prospect's write (its event is
     * consumed again and derives the same "<id>#owner" event, which the
     * owner's dedup ring drops) but never an owner's event whose source
     * prospect was stored. */
    for (int pass = 0; pass < 2; pass++) {
        for (size_t k = 0; k < b->ngroups; k++) {
            int32_t g = (int32_t)k;
            if (!b->changed[g] || (b->first[g] < 0) != (pass == 0)) continue;
            /* a state and a buffer two ahead: both were last touched many
             * states ago (td_kvs_prefetch) */
            if (k + 2 < b->ngroups) {
                const char *sp = (const char *)b->states[k + 2];
                for (size_t o = 0; o < sizeof(td_state); o += 64)
                    __builtin_prefetch(sp + o, 0);
            }
            if (np + 2 < b->ngroups) td_kvs_prefetch(&b->pack_now[np + 2], true);
            if (td_kvs_capture(&b->pack_now[np], b->states[g]) != TD_OK) return -2;
            b->pack_g[np] = g;
            np++;
        }
    }
    b->npack = np;
    return 0;
}

/* Completes the pack with each group's state (a pointer: the store only
 * reads it), base (shallow, read only) and expected version. */
static void td_batch_pack_bind(td_batch *b) {
    for (size_t k = 0; k < b->npack; k++) {
        int32_t g = b->pack_g[k];
        b->pack_st[k] = b->states[g];
        b->pack_base[k] = b->base[g];
        b->pack_expected[k] = b->expected[g];
    }
}

/* Writes each packed group's difference from its base through r. Reads b's
 * pack and writes only pack_result and the pack's versions: it runs on the
 * store thread. @returns TD_OK or TD_ERR (Redis: unknown which writes
 * happened). */
static int td_batch_store_send(td_redis *r, td_batch *b) {
    if (b->npack == 0) return TD_OK;
    return td_redis_store_diff(r, b->pack_st, b->pack_base, b->pack_now, b->pack_expected, b->npack,
                               b->pack_result) == TD_OK
               ? TD_OK
               : TD_ERR;
}

/* td_batch_pack + td_batch_pack_bind + td_batch_store_send, on the main
 * thread. @returns as td_batch_store_send, or -2 (out of memory). */
static int td_batch_store_now(td_redis *r, td_batch *b) {
    if (td_batch_pack(b) < 0) return -2;
    td_batch_pack_bind(b);
    return td_batch_store_send(r, b);
}

/* Takes the outcome of a successful td_batch_store_send: stored groups take
 * their new version and what was written becomes their base (the old
 * base's buffers are reused for the next write); conflicted ones are written
 * to work2[] (*nconf) and dropped from the cache. */
static void td_batch_store_apply(td_daemon *d, td_batch *b, size_t *nconf) {
    *nconf = 0;
    for (size_t k = 0; k < b->npack; k++) {
        int32_t g = b->pack_g[k];
        if (b->pack_result[k] == TD_REDIS_STORED) {
            b->states[g]->version = b->pack_expected[k] + 1;
            b->changed[g] = false;
            td_kvs old = b->base[g];
            b->base[g] = b->pack_now[k];
            b->pack_now[k] = old;
            b->has_base[g] = true;
        } else {
            td_state_cache_drop(d->cache, b->states[g]->prospect_id, b->ghash[g]);
            b->work2[(*nconf)++] = g;
        }
    }
}

/* redis.verify_writes: logs the differences the last write through r
 * found (the store thread's connection has handed the batch back). */
static void td_daemon_verify_log(td_daemon *d, td_redis *r) {
    uint64_t all =
        td_redis_verify_mismatches(d->redis) + td_redis_verify_mismatches(d->redis_store);
    if (all == d->verify_seen) return;
    char last[400], q[480];
    td_redis_verify_last(r, last, sizeof last);
    td_log_error("verify_writes: redis holds other than the state written",
                 "new=%llu total=%llu last=%s", (unsigned long long)(all - d->verify_seen),
                 (unsigned long long)all, td_log_quote(q, sizeof q, last));
    d->verify_seen = all;
}

/* Stores b's changed groups on the main thread, holding the batch while
 * Redis is unavailable. `rc` is the outcome of a store already tried (on
 * `tried_on`; TD_ERR: retry it; TD_OK: apply it) or TD_STORE_UNTRIED.
 * @returns 0 (conflicts in work2[0..*nconf)), -1 when abandoned (stop
 * requested), -2 on out-of-memory. */
static int td_batch_store(td_daemon *d, td_batch *b, int rc, td_redis *tried_on, size_t *nconf) {
    int attempt = 0;
    if (rc == TD_STORE_UNTRIED) rc = td_batch_store_now(d->redis, b);
    td_redis *r = tried_on ? tried_on : d->redis;
    while (rc != TD_OK) {
        if (rc == -2) return -2;
        /* Unknown which writes happened: retrying is safe (a write that did
         * happen bumped the version, so it now conflicts, and the reload
         * sees our positions). */
        if (td_redis_wait(d, r, &attempt, "store") < 0) return -1;
        r = d->redis;
        rc = td_batch_store_now(d->redis, b);
    }
    td_redis_back(d, attempt, "store");
    td_batch_store_apply(d, b, nconf);
    if (d->cfg->redis.verify_writes) td_daemon_verify_log(d, r);
    return 0;
}

typedef enum { TD_BATCH_DONE = 0, TD_BATCH_ABANDONED = 1, TD_BATCH_FATAL = 2 } td_batch_rc;

/* After a recomputing attempt: every group it loaded or stepped (the
 * conflicted ones, and owner groups that received events derived again) has
 * a state the next batch may hold a stale copy of. */
static void td_batch_mark_restated(td_batch *b) {
    for (size_t k = 0; k < b->nwork; k++)
        b->restated[b->work[k]] = true;
}

/* One computing attempt over b->work[0..nwork): load (`from`: the batch in
 * flight, or NULL), apply the events, derive, and send the
 * recommendations in the open round. */
static td_batch_rc td_batch_attempt(td_daemon *d, td_batch *b, td_batch *from) {
    int64_t t0 = td_mono_ms();
    /* the groups computed again: what they counted before is taken back */
    for (size_t k = 0; k < b->nwork; k++) {
        td_gcount *c = &b->gc[b->work[k]];
        b->applied -= c->applied;
        b->skipped_pos -= c->skipped_pos;
        b->duplicates -= c->duplicates;
        b->derived -= c->derived;
        *c = (td_gcount){0};
    }
    if (b->nwork > 0) {
        int lr = td_batch_load(d, b, from, b->work, b->nwork);
        if (lr == -2) {
            td_log_error("out of memory while loading states", "prospects=%zu", b->nwork);
            return TD_BATCH_FATAL;
        }
        if (lr < 0) return TD_BATCH_ABANDONED;
    }
    int64_t t1 = td_mono_ms();
    b->t_load += t1 - t0;
    b->nrecs = 0;
    b->recbuf.len = 0;
    td_ms now = td_wall_ms();
    uint32_t seq = ++b->attempt_seq;
    for (size_t k = 0; k < b->nwork; k++)
        b->stamp[b->work[k]] = seq;
    size_t dq_from = b->ndq;
    size_t nw = b->nwork; /* derive appends owner groups, computed there */
    for (size_t k = 0; k < nw; k++) {
        if (td_batch_compute(d, b, b->work[k], now) < 0) {
            td_log_error("engine step failed (out of memory)", "prospect=%s",
                         b->states[b->work[k]]->prospect_id);
            return TD_BATCH_FATAL;
        }
    }
    /* events derived for owners: stepped on the owners' states, stored
     * with them in this attempt */
    int dr = td_batch_derive(d, b, from, dq_from, now);
    if (dr == -1) {
        td_log_error("engine step failed (out of memory)", "derived=%zu", b->ndq);
        return TD_BATCH_FATAL;
    }
    if (dr == -2) return TD_BATCH_ABANDONED;
    for (size_t r = 0; r < b->nrecs; r++) {
        const td_drec *x = &b->recs[r];
        const char *pid = b->states[x->g]->prospect_id;
        if (td_kafka_send_rec(d->kafka, pid, b->glen[x->g], b->recbuf.p + x->off, x->len) < 0)
            return TD_BATCH_FATAL;
    }
    d->recs_out += b->nrecs;
    b->t_compute += td_mono_ms() - t1;
    return TD_BATCH_DONE;
}

/* Durable output first: nothing of b's attempt is stored in Redis, and no
 * offset, before every recommendation (and dead letter) of the open round is
 * acknowledged; then the gift register. */
static td_batch_rc td_batch_deliver(td_daemon *d, td_batch *b) {
    int64_t t0 = td_mono_ms();
    int w = td_kafka_round_wait(d->kafka, &td_daemon_stop_requested, 10000);
    if (w == -1) return TD_BATCH_FATAL;
    if (w == -2) return TD_BATCH_ABANDONED;
    int gw = td_daemon_gifts(d, b); /* the gift register: after delivery, before the store */
    if (gw == -1) return TD_BATCH_FATAL;
    if (gw == -2) return TD_BATCH_ABANDONED;
    b->t_deliver += td_mono_ms() - t0;
    return TD_BATCH_DONE;
}

/* Stores b on the main thread, then recomputes, delivers and stores its
 * conflicted groups until none conflicts. `rc`/`tried_on`: see
 * td_batch_store. */
static td_batch_rc td_batch_settle(td_daemon *d, td_batch *b, int rc, td_redis *tried_on) {
    for (int attempt = 0;; attempt++) {
        int64_t t0 = td_mono_ms();
        size_t nconf = 0;
        int sr = td_batch_store(d, b, rc, tried_on, &nconf);
        if (sr == -2) {
            td_log_error("out of memory after a state write", "prospects=%zu", b->nwork);
            return TD_BATCH_FATAL;
        }
        if (sr < 0) return TD_BATCH_ABANDONED;
        b->t_store += td_mono_ms() - t0;
        if (nconf == 0) return TD_BATCH_DONE;
        d->conflicts += nconf;
        b->recomputed = true;
        td_log_info("state changed concurrently, recomputing", "prospects=%zu attempt=%d", nconf,
                    attempt + 1);
        memcpy(b->work, b->work2, nconf * sizeof *b->work);
        b->nwork = nconf;
        if (attempt >= 3) {
            /* Persistent contention: back off a little (another instance is
             * working on the same prospects during a rebalance). */
            td_kafka_keepalive(d->kafka, attempt > 20 ? 200 : 10 * attempt);
        }
        if (td_daemon_stop_requested && attempt > 50) return TD_BATCH_ABANDONED;
        td_kafka_round_begin(d->kafka);
        td_batch_rc br = td_batch_attempt(d, b, NULL);
        td_batch_mark_restated(b);
        if (br == TD_BATCH_DONE) br = td_batch_deliver(d, b);
        if (br != TD_BATCH_DONE) return br;
        rc = TD_STORE_UNTRIED;
        tried_on = NULL;
    }
}

/* Opens b's round, decodes its messages, groups them and computes every
 * group (loading from `from`, the batch in flight, where it has the
 * prospect). */
static td_batch_rc td_batch_begin(td_daemon *d, td_batch *b, td_batch *from) {
    b->t_start = td_mono_ms();
    b->t_load = b->t_compute = b->t_deliver = b->t_store = b->t_wait = 0;
    int64_t oldest = INT64_MAX;
    for (size_t i = 0; i < b->nmsgs; i++) {
        int64_t ts = rd_kafka_message_timestamp(b->msgs[i], NULL);
        if (ts > 0 && ts < oldest) oldest = ts;
    }
    b->age = oldest == INT64_MAX ? -1 : (int64_t)td_wall_ms() - oldest;
    b->recomputed = false;
    b->ndq = 0;
    td_kafka_round_begin(d->kafka);
    if (td_batch_decode(d, b) < 0) return TD_BATCH_FATAL;
    if (td_batch_group(d, b) < 0) {
        td_log_error("out of memory while grouping events", "events=%zu", b->nmsgs);
        return TD_BATCH_FATAL;
    }
    b->nwork = b->ngroups;
    for (size_t g = 0; g < b->nwork; g++)
        b->work[g] = (int32_t)g;
    return td_batch_attempt(d, b, from);
}

/* Recomputes the groups of b that started from a state `from` changed
 * after b copied it (a conflict there: td_batch_mark_restated): they are
 * copied again from `from` (settled),
 * their events applied again (and the events derived for owners) and their
 * recommendations sent again in a new round. b's previous round was waited
 * for. The other groups keep what they computed: their starting states are
 * what `from` stored, or what Redis or the cache had. */
static td_batch_rc td_batch_redo(td_daemon *d, td_batch *b, td_batch *from) {
    size_t n = 0;
    for (size_t g = 0; g < b->ngroups; g++)
        if (b->src[g] >= 0 && from->restated[b->src[g]]) b->work[n++] = (int32_t)g;
    if (n == 0) return TD_BATCH_DONE;
    b->nwork = n;
    d->redone++;
    b->redone = true;
    td_kafka_round_begin(d->kafka);
    return td_batch_attempt(d, b, from);
}

/* `from` is settled (its writes landed): the states b copied from it take
 * the version it stored and its base (the flat form Redis now holds). */
static void td_batch_adopt(td_batch *b, td_batch *from) {
    for (size_t g = 0; g < b->ngroups; g++) {
        int32_t sg = b->src[g];
        if (sg < 0) continue;
        int64_t v = from->states[sg]->version;
        b->states[g]->version = v;
        b->expected[g] = v;
        if (from->has_base[sg]) {
            td_kvs_move(&b->base[g], &from->base[sg]);
            from->has_base[sg] = false;
            b->has_base[g] = true;
        } else {
            b->has_base[g] = false; /* out of memory earlier: written whole */
        }
        b->src[g] = -1;
    }
}

/* Finishes the batch in flight: waits for its store, settles it (Redis
 * errors, conflicts), stores its offsets and releases it. `next` (or NULL)
 * was computed on top of it and has its round open: if the batch in flight
 * had to be recomputed, next is recomputed too; else it adopts the versions
 * and bases. next must be delivered (its round closed). */
static td_batch_rc td_pipe_finish(td_daemon *d, td_batch *next) {
    td_batch *a = d->inflight;
    int64_t t0 = td_mono_ms();
    td_store_join(d);
    a->t_wait = td_mono_ms() - t0;
    d->inflight = NULL;
    /* the thread's outcome is applied (TD_OK) or its write retried (TD_ERR)
     * by td_batch_settle, which also recomputes conflicts; next's round is
     * closed (delivered before this), so the settling may use rounds */
    td_batch_rc br = td_batch_settle(d, a, a->store_rc, d->redis_store);
    if (br != TD_BATCH_DONE) goto out;
    /* Everything a caused is durable: its offsets may be committed. */
    td_kafka_store(d->kafka, a->msgs, a->nmsgs);
    if (next) {
        if (a->recomputed) br = td_batch_redo(d, next, a);
        if (br == TD_BATCH_DONE) td_batch_adopt(next, a);
    }
out:
    td_batch_release(d, a);
    return br;
}

/* Processes batch b (collected): computes it on top of the batch in flight,
 * finishes that one, delivers b, then stores b (on the store thread with
 * engine.pipeline, leaving b in flight; else at once, and releases it). */
static td_batch_rc td_batch_process(td_daemon *d, td_batch *b) {
    td_batch_rc br = td_batch_begin(d, b, d->inflight);
    /* b's acknowledgements are awaited while the batch in flight is still
     * being written: if that one conflicts, b is recomputed and delivered
     * again (a recommendation from a conflicted state is re-published with
     * its id, as after any conflict) */
    if (br == TD_BATCH_DONE) br = td_batch_deliver(d, b);
    /* b's flat forms are captured while the batch in flight is written */
    if (br == TD_BATCH_DONE && d->store_started && td_batch_pack(b) < 0) {
        td_log_error("out of memory while packing states", "prospects=%zu", b->nwork);
        br = TD_BATCH_FATAL;
    }
    if (d->inflight) {
        b->redone = false;
        td_batch_rc fr = td_pipe_finish(d, br == TD_BATCH_DONE ? b : NULL);
        if (br == TD_BATCH_DONE) br = fr;
        if (br == TD_BATCH_DONE && b->redone) {
            br = td_batch_deliver(d, b);
            if (br == TD_BATCH_DONE && td_batch_pack(b) < 0) {
                td_log_error("out of memory while packing states", "prospects=%zu", b->nwork);
                br = TD_BATCH_FATAL;
            }
        }
    }
    if (br != TD_BATCH_DONE) {
        td_batch_release(d, b);
        return br;
    }
    if (d->store_started) {
        td_batch_pack_bind(b); /* versions and bases of copied groups are known now */
        d->inflight = b;
        td_store_start(d, b);
        return TD_BATCH_DONE;
    }
    br = td_batch_settle(d, b, TD_STORE_UNTRIED, NULL);
    if (br == TD_BATCH_DONE) td_kafka_store(d->kafka, b->msgs, b->nmsgs);
    td_batch_release(d, b);
    return br;
}

static int td_timer_send(void *ud, const char *pid, const char *json, size_t len) {
    td_daemon *d = ud;
    if (td_kafka_send_rec(d->kafka, pid, strlen(pid), json, len) < 0) return -1;
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

static void td_timer_shadow_after(void *ud, const td_ruleset *rs, const td_trigger *trig, td_ms now,
                                  const td_step_out *out) {
    td_daemon *d = ud;
    td_shadow_after(d->shadow, rs, trig, now, out);
}

/* Polls due timers when it is time: repeatedly while polls come back full
 * (a backlog), for at most ~250 ms so the input keeps flowing. */
static void td_daemon_timers(td_daemon *d) {
    int64_t now = td_mono_ms();
    if (now < d->next_timer_poll) return;
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
    if (!force && now < d->next_progress) return;
    d->next_progress = now + 60000;
    td_kafka_stats ks;
    td_kafka_get_stats(d->kafka, &ks);
    const td_timers_stats *ts = td_timers_get_stats(d->timers);
    td_state_cache_stats cs;
    td_state_cache_stats_get(d->cache, &cs);
    td_log_info("state cache", "hits=%llu misses=%llu drops=%llu used=%zu entries=%zu",
                (unsigned long long)cs.hits, (unsigned long long)cs.misses,
                (unsigned long long)cs.drops, cs.used, cs.entries);
    td_log_info(
        "progress",
        "batches=%llu events=%llu applied=%llu skipped=%llu duplicates=%llu "
        "dead_letters=%llu recs=%llu recs_acked=%llu resent=%llu conflicts=%llu redone=%llu "
        "redis_waits=%llu partitions=%d owner_events=%llu timers_claimed=%llu timers_fired=%llu "
        "timers_recs=%llu timers_stale=%llu timers_dropped=%llu timers_reclaimed=%llu "
        "timers_conflicts=%llu timers_errors=%llu timers_delay_p99_ms=%lld "
        "timers_delay_max_ms=%lld store_one_connection=%llu verify_mismatches=%llu "
        "ruleset=%s",
        (unsigned long long)d->batches, (unsigned long long)d->events,
        (unsigned long long)d->applied, (unsigned long long)d->skipped_pos,
        (unsigned long long)d->duplicates, (unsigned long long)d->dead_letters,
        (unsigned long long)d->recs_out, (unsigned long long)ks.recs_acked,
        (unsigned long long)ks.resent, (unsigned long long)d->conflicts,
        (unsigned long long)d->redone, (unsigned long long)d->redis_waits, ks.assigned,
        (unsigned long long)d->derived, (unsigned long long)ts->claimed,
        (unsigned long long)ts->fired, (unsigned long long)ts->recs, (unsigned long long)ts->stale,
        (unsigned long long)ts->dropped, (unsigned long long)ts->reclaimed,
        (unsigned long long)ts->conflicts, (unsigned long long)ts->errors,
        (long long)td_timers_delay_quantile(ts, 0.99), (long long)ts->max_delay_ms,
        (unsigned long long)(td_redis_one_lane_writes(d->redis_store) +
                             td_redis_one_lane_writes(d->redis)),
        (unsigned long long)(td_redis_verify_mismatches(d->redis_store) +
                             td_redis_verify_mismatches(d->redis)),
        td_ruleset_hash(d->rs));
}

/* @returns true when the loop must end (rc set for a fatal error). */
static bool td_daemon_batch_end(td_daemon *d, td_batch_rc br, int *rc) {
    if (br == TD_BATCH_FATAL) {
        const char *why = td_kafka_fatal(d->kafka);
        char q[600];
        td_log_error("fatal error, exiting", "reason=%s",
                     td_log_quote(q, sizeof q, why ? why : "engine"));
        *rc = TD_EXIT_FATAL;
        return true;
    }
    return br == TD_BATCH_ABANDONED;
}

int td_daemon_run(td_daemon *d) {
    int rc = TD_EXIT_OK;
    td_log_info("touchd running", "batch_max_events=%d batch_max_ms=%d pipeline=%s",
                d->cfg->engine.batch_max_events, d->cfg->engine.batch_max_ms,
                d->store_started ? "true" : "false");
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
        if (td_daemon_stop_requested) break;
        /* wait for input at most until the next timer poll (and 100 ms);
         * not at all while a batch is being stored: finish it instead */
        int64_t wait = d->next_timer_poll - td_mono_ms();
        int wait_ms = wait < 0 ? 0 : wait > 100 ? 100 : (int)wait;
        if (d->inflight) wait_ms = 0;
        td_batch *b = d->inflight == &d->bt[0] ? &d->bt[1] : &d->bt[0];
        if (td_batch_collect(d, b, wait_ms) == 0) {
            if (d->inflight && td_daemon_batch_end(d, td_pipe_finish(d, NULL), &rc)) break;
            continue;
        }
        if (td_daemon_batch_end(d, td_batch_process(d, b), &rc)) break;
    }
    if (d->inflight) {
        /* the batch being stored: settle it and store its offsets */
        td_batch_rc br = td_pipe_finish(d, NULL);
        if (br == TD_BATCH_FATAL && rc == TD_EXIT_OK) td_daemon_batch_end(d, br, &rc);
    }
    td_daemon_progress(d, true);
    if (rc == TD_EXIT_OK) td_log_info("stopping: committing offsets and leaving the group", NULL);
    td_kafka_close(d->kafka, 10000);
    return rc;
}
