/*
 * td_pipeline.c - the batch path of td_pipeline.h: group, load, step,
 * publish, store, acknowledge, for event batches and timer batches alike.
 *
 * Shape of a batch in memory (pl_batch): an event batch holds msgs[i]
 * (owned rd_kafka messages, consumed order), evs[i] (decoded events),
 * dead[i] (sent to the dead-letter topic: undecodable, or outside the time
 * bounds); a timer batch holds claims[i] (sorted by prospect, rule, due
 * time) and delay[i] (the firing delay of claim i, -1 when it did not
 * fire). Either way gidx[i] is the prospect group of input i (or -1) and
 * next[i] the next input of the same group, so a group's inputs are walked
 * in order. Groups own one td_state each. Every
 * array is sized once and reused.
 *
 * The pipeline (engine.pipeline, on by default): two event batches are alive
 * at once. While batch N's states are written to Redis by the store thread
 * (its own connection, nothing else), the main thread consumes, decodes,
 * loads and computes batch N+1 and produces its recommendations. A prospect
 * of N+1 that is also in N starts from a copy of N's computed state; once
 * N's write is known to have landed, that copy takes N's stored version and
 * flat form as its base. If any of N's writes conflicted, N's conflicted
 * prospects are recomputed and stored first (on the main thread), then the
 * groups of N+1 that started from them are recomputed, so nothing is stored
 * from a state that was not stored before it. A timer batch finishes the
 * batch in flight first and is stored on the main thread.
 * Time (docs/operations.md, "Event time"): every trigger is evaluated at
 * its own time (the engine's), and a prospect's timers due by an event's
 * occurred_at fire before that event, in (due time, rule index) order, as
 * the offline driver (td_sim.c) fires them: pl_fire_due, on the path of a
 * claimed timer (pl_fire_timer). A timer batch fires a prospect's claims in
 * the same order. The events derived for owners are stepped in the order of
 * the inputs that derived them (consumed order), as offline.
 * Order of the durable steps per batch: its recommendations are
 * acknowledged, then its gifts registered, then its states stored, then its
 * source acknowledged (offsets, claims); and N's offsets are stored before
 * N+1's states are written.
 *
 * Failure handling: with Kafka, Redis errors hold the batch (consumption
 * paused, backoff, retry, on the main thread); without (td_timers_poll) they
 * abandon it. CAS conflicts recompute only the prospects that conflicted; a
 * fatal Kafka error is TD_PL_FATAL; a stop request while a batch cannot
 * complete abandons it without acknowledging its source (it is delivered
 * again, and the state positions, the dedup ring and the state's timers
 * make that harmless).
 *
 * File-local names start with pl_.
 *
 * @locality main thread, except pl_store_main (the store thread), which
 * only reads the batch handed to it and writes its pack_* arrays.
 */
#include "td_pipeline.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "td_cli.h"
#include "td_clock.h"
#include "td_event.h"
#include "td_gifts.h"
#include "td_health.h"
#include "td_log.h"
#include "td_shadow.h"
#include "td_state.h"
#include "td_state_cache.h"

/* pl_batch_store: the batch was not written yet */
#define PL_STORE_UNTRIED 1

/* What one group's computation counted (pl_batch.gc). */
typedef struct pl_gcount {
    uint32_t applied, skipped_pos, duplicates, derived;
    /* timers fired, stale, dropped, and their recommendations: a timer
     * batch's claims, or (event batches) the timers due before events */
    uint32_t fired, stale, dropped, trecs;
    td_ms max_delay; /* timer batches: the largest firing delay */
} pl_gcount;

/* A timer to fire, in firing order (pl_due_cmp): due time, then the rule's
 * index in the ruleset (SIZE_MAX: a rule no longer in it). */
typedef struct pl_due {
    td_ms due_at;
    size_t index;
    int32_t src; /* the claim (timer batches), -1 (due before an event) */
    char rule[TD_RULE_ID_MAX + 1];
} pl_due;

/* Where a batch's triggers come from. */
typedef enum pl_kind { PL_EVENTS = 0, PL_TIMERS = 1 } pl_kind;

typedef struct pl_drec {
    size_t off, len; /* in recbuf */
    int32_t g;       /* group (prospect) */
    td_kafka_kind
        kind;     /* recommendation, withdrawal, plan (len 0 with off SIZE_MAX: a tombstone) */
    int32_t rule; /* recommendations: td_rule.index; withdrawals: td_wd_reason; plans: -1 */
} pl_drec;

typedef struct pl_batch {
    pl_kind kind;
    /* event batches: messages */
    rd_kafka_message_t **msgs;
    size_t nmsgs;
    td_event *evs;
    bool *dead;
    /* timer batches: claims (sorted), their firing delays, the wall time */
    td_claim *claims;
    td_ms *delay;
    size_t nclaims;
    td_ms now;
    td_ms due_by; /* the horizon the claims were taken at (<= now) */
    /* either: input i's group, the next input of the same group */
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
    /* recommendations, withdrawals and plans of the current attempt */
    td_buf recbuf;
    pl_drec *recs;
    size_t nrecs, caprecs;
    /* groups whose plan changed in this attempt (pmark[g] == attempt_seq) */
    int32_t *pdirty;
    uint32_t *pmark;
    size_t npdirty;
    /* base[g]: the flat form of the state exactly as Redis holds it at
     * expected[g] (loaded, or last stored by us): writes send only the
     * difference. The buffers are kept across batches for reuse. */
    td_kvs *base;
    bool *has_base;
    int32_t *miss;
    /* store: filled by pl_batch_pack and pl_batch_pack_bind (main thread),
     * pl_batch_store_send (main or store thread: pack_result and the pack's
     * versions), read by pl_batch_store_apply (main thread) */
    td_state **pack_ld;       /* loads: states[g] of the missed groups */
    const td_state **pack_st; /* stores: states[g] of the packed groups */
    td_kvs *pack_base;        /* shallow copies of base[g] */
    td_kvs *pack_now;         /* the flat forms being written (owned, reused) */
    int64_t *pack_expected;
    int *pack_result;
    int32_t *pack_g;
    size_t npack;
    size_t npack_owners; /* pack[0..npack_owners): owner groups, stored first */
    int store_rc;        /* TD_OK, TD_ERR (Redis) or -2 (out of memory) */
    int32_t *work, *work2;
    size_t nwork;

    /* events the engine derived for owners ("owner:<owner_id>" states),
     * kept for the whole batch: dq_g[i] is the owner's group, dq_src[i] the
     * input whose step derived it (each attempt's share is put in input
     * order: pl_dq_order). Owner groups have no input messages (first =
     * -1). stamp[g] == attempt_seq marks the groups (re)loaded in the
     * current attempt. */
    td_event *dq;
    int32_t *dq_g, *dq_src;
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
    pl_gcount *gc;
    /* ghash[g]: td_hash64 of the prospect id (TD_HASH_SEED), glen[g] its
     * length: measured once per group, for the group table and the cache */
    uint64_t *ghash;
    uint32_t *glen;
    /* microseconds spent in the phases, for the debug log (in ms) and the
     * phase histograms (td_pipeline_stats.phase) */
    int64_t t_start, t_load, t_compute, t_deliver, t_store, t_wait;
    int64_t age; /* ms from the oldest message's timestamp to the batch's start */
} pl_batch;

struct td_pipeline {
    const td_config *cfg;
    const td_ruleset *rs;
    td_tzdb *tz;
    td_redis *redis;
    td_kafka *kafka;             /* NULL: timers only, output through sink */
    const td_timers_sink *sink;  /* without Kafka */
    td_timers *timers;           /* NULL: no timer batches */
    td_shadow *shadow;           /* NULL: none */
    volatile sig_atomic_t *stop; /* never NULL (points at never_stop) */
    bool hold;                   /* Redis errors are waited out (with Kafka) */
    td_step_out *out;
    td_state_cache *cache; /* NULL when engine.state_cache = 0 */
    /* state objects not in a batch nor in the cache, for reuse */
    td_state **spare;
    size_t nspare, capspare;

    /* the two batches; `inflight` (one of them, or NULL) is being stored */
    size_t cap, gcap, tcap, ccap; /* ccap: claims per timer batch */
    pl_batch bt[2];
    pl_batch *inflight;

    /* the store thread (engine.pipeline) and its own Redis connection */
    td_redis *redis_store;
    pthread_t store_th;
    bool store_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pl_batch *job; /* handed to the store thread; NULL when it is done */
    bool quit;

    td_pipeline_stats st;
    uint64_t verify_seen; /* redis.verify_writes differences already logged */

    /* gift register (td_gifts.h, docs/gifts.md); NULL without Kafka */
    td_gifts *gifts;
    td_gifts_kafka *gifts_kafka; /* NULL: kafka.gift_register_topic = "" */

    /* the timers of one group being fired, in firing order (reused) */
    pl_due *due;
    size_t capdue;

    /* per rule of the live ruleset (td_pipeline_rule_stats), nrules each */
    uint64_t *r_published, *r_blocked, *r_blocks, *r_errors;
    size_t nrules;
};

static volatile sig_atomic_t never_stop = 0;

static int pl_gifts_init(td_pipeline *p, td_gifts *gifts); /* gift register, below */
static void pl_gifts_free(td_pipeline *p);

static void *pl_xcalloc(size_t n, size_t sz) {
    void *p = calloc(n ? n : 1, sz);
    if (!p) {
        td_log_error("out of memory", "bytes=%zu", n * sz);
        abort();
    }
    return p;
}

/* cap: inputs (events or claims), gcap: groups, tcap: group table slots,
 * ccap: claims (0: an event batch only). */
static void pl_batch_alloc(pl_batch *b, size_t cap, size_t gcap, size_t tcap, size_t ccap) {
    b->msgs = pl_xcalloc(cap, sizeof *b->msgs);
    if (ccap) {
        b->claims = pl_xcalloc(ccap, sizeof *b->claims);
        b->delay = pl_xcalloc(ccap, sizeof *b->delay);
    }
    b->evs = pl_xcalloc(cap, sizeof *b->evs);
    b->dead = pl_xcalloc(cap, sizeof *b->dead);
    b->gidx = pl_xcalloc(cap, sizeof *b->gidx);
    b->next = pl_xcalloc(cap, sizeof *b->next);
    b->states = pl_xcalloc(gcap, sizeof *b->states);
    b->expected = pl_xcalloc(gcap, sizeof *b->expected);
    b->first = pl_xcalloc(gcap, sizeof *b->first);
    b->last = pl_xcalloc(gcap, sizeof *b->last);
    b->changed = pl_xcalloc(gcap, sizeof *b->changed);
    b->pdirty = pl_xcalloc(gcap, sizeof *b->pdirty);
    b->pmark = pl_xcalloc(gcap, sizeof *b->pmark);
    b->stamp = pl_xcalloc(gcap, sizeof *b->stamp);
    b->gc = pl_xcalloc(gcap, sizeof *b->gc);
    b->ghash = pl_xcalloc(gcap, sizeof *b->ghash);
    b->glen = pl_xcalloc(gcap, sizeof *b->glen);
    b->src = pl_xcalloc(gcap, sizeof *b->src);
    b->superseded = pl_xcalloc(gcap, sizeof *b->superseded);
    b->restated = pl_xcalloc(gcap, sizeof *b->restated);
    b->table = pl_xcalloc(tcap, sizeof *b->table);
    b->base = pl_xcalloc(gcap, sizeof *b->base);
    b->has_base = pl_xcalloc(gcap, sizeof *b->has_base);
    b->miss = pl_xcalloc(gcap, sizeof *b->miss);
    b->pack_ld = pl_xcalloc(gcap, sizeof *b->pack_ld);
    b->pack_st = pl_xcalloc(gcap, sizeof *b->pack_st);
    b->pack_base = pl_xcalloc(gcap, sizeof *b->pack_base);
    b->pack_now = pl_xcalloc(gcap, sizeof *b->pack_now);
    b->pack_expected = pl_xcalloc(gcap, sizeof *b->pack_expected);
    b->pack_result = pl_xcalloc(gcap, sizeof *b->pack_result);
    b->pack_g = pl_xcalloc(gcap, sizeof *b->pack_g);
    b->work = pl_xcalloc(gcap, sizeof *b->work);
    b->work2 = pl_xcalloc(gcap, sizeof *b->work2);
}

static void pl_batch_free(pl_batch *b, size_t gcap) {
    free(b->msgs);
    free(b->claims);
    free(b->delay);
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
    free(b->pdirty);
    free(b->pmark);
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
    free(b->dq_src);
    free(b->gift_recs);
    free(b->recs);
    td_buf_free(&b->recbuf);
}

static int pl_batch_store_send(td_redis *r, pl_batch *b);
static void *pl_store_main(void *arg);

/* ----------------------------------------------------------- store thread */

static void *pl_store_main(void *arg) {
    td_pipeline *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->job && !p->quit)
            pthread_cond_wait(&p->cv, &p->mu);
        if (!p->job) break;
        pl_batch *b = p->job;
        pthread_mutex_unlock(&p->mu);
        int64_t t0 = td_mono_us();
        b->store_rc = pl_batch_store_send(p->redis_store, b);
        b->t_store = td_mono_us() - t0;
        pthread_mutex_lock(&p->mu);
        p->job = NULL;
        pthread_cond_broadcast(&p->cv);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* Hands b's store to the store thread. */
static void pl_store_start(td_pipeline *p, pl_batch *b) {
    pthread_mutex_lock(&p->mu);
    p->job = b;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

/* Waits for the store thread to finish its batch. */
static void pl_store_join(td_pipeline *p) {
    pthread_mutex_lock(&p->mu);
    while (p->job)
        pthread_cond_wait(&p->cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

/* --------------------------------------------------------------- batch */

/* Makes base[g] the flat form of states[g] (what Redis now holds).
 * @returns 0 or -1 (out of memory). */
static int pl_base_set(pl_batch *b, int32_t g) {
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

/* A state object for a new group: a spare one (pl_put_spare left it
 * without tables), else a new zeroed one. Only its prospect_id is set:
 * pl_batch_load defines the rest before anything reads it.
 * @returns NULL when out of memory. */
static td_state *pl_take_spare(td_pipeline *p, const char *pid, size_t plen) {
    td_state *st = p->nspare ? p->spare[--p->nspare] : calloc(1, sizeof *st);
    if (!st) return NULL;
    if (plen > TD_ID_MAX) plen = TD_ID_MAX; /* as td_state_init (ids are validated to fit) */
    memcpy(st->prospect_id, pid, plen);
    st->prospect_id[plen] = '\0';
    return st;
}

/* Keeps st (its tables freed) for reuse; NULL is a no-op. */
static void pl_put_spare(td_pipeline *p, td_state *st) {
    if (!st) return;
    td_state_free(st);
    if (td_grow(&p->spare, &p->capspare, p->nspare, sizeof *p->spare, 256) != TD_OK) {
        free(st);
        return;
    }
    p->spare[p->nspare++] = st;
}

/* Frees the groups' states (keeping their buffers' arrays). */
static void pl_batch_drop_groups(td_pipeline *p, pl_batch *b) {
    for (size_t g = 0; g < b->ngroups; g++) {
        pl_put_spare(p, b->states[g]);
        b->states[g] = NULL;
        td_kvs_clear(&b->base[g]);
        b->has_base[g] = false;
    }
    b->ngroups = 0;
}

/* Adds the timer counts of b's groups (each that of its last computation,
 * the one stored) to r. */
static void pl_round_sum(const pl_batch *b, td_timers_round *r) {
    for (size_t g = 0; g < b->ngroups; g++) {
        const pl_gcount *c = &b->gc[g];
        r->fired += c->fired;
        r->stale += c->stale;
        r->dropped += c->dropped;
        r->recs += c->trecs;
        if (c->max_delay > r->max_delay) r->max_delay = c->max_delay;
    }
}

/* An event batch's timers fired before events (pl_fire_due): each group's
 * counts are those of its last computation. They join the timers' counters
 * as fired timers (td_timers_record), without firing delays: the delay
 * figures are the claimer's, and a timer fired by a backlog's event can be
 * days overdue on the wall clock by design. */
static void pl_batch_count_timers(td_pipeline *p, pl_batch *b) {
    td_timers_round round = {0};
    pl_round_sum(b, &round);
    p->st.timers_before_events += round.fired;
    if (!p->timers || (round.fired | round.stale | round.dropped) == 0) return;
    /* keeps the last poll's delay figure as it is */
    round.max_delay = td_timers_get_stats(p->timers)->last_delay_ms;
    td_timers_record(p->timers, &round, true);
}

/* Ends a batch: states that are what Redis holds (loaded or stored, and not
 * changed since, and not carried on by the next batch) go back to the cache
 * with their flat form; the others are dropped (the next batch reloads
 * them). Its counters join the daemon's; its timings go to the debug log. */
static void pl_batch_release(td_pipeline *p, pl_batch *b) {
    if (b->kind == PL_EVENTS) pl_batch_count_timers(p, b);
    int64_t total = td_mono_us() - b->t_start;
    td_log_debug("batch done",
                 "source=%s events=%zu claims=%zu prospects=%zu recs=%zu ms=%lld load_ms=%lld "
                 "compute_ms=%lld deliver_ms=%lld store_ms=%lld store_wait_ms=%lld age_ms=%lld",
                 b->kind == PL_TIMERS ? "timers" : "events", b->nmsgs, b->nclaims, b->ngroups,
                 b->nrecs, (long long)(total / 1000), (long long)(b->t_load / 1000),
                 (long long)(b->t_compute / 1000), (long long)(b->t_deliver / 1000),
                 (long long)(b->t_store / 1000), (long long)(b->t_wait / 1000), (long long)b->age);
    if (b->nmsgs || b->nclaims) {
        td_hist *h = p->st.phase[b->kind == PL_TIMERS ? 1 : 0];
        const int64_t us[TD_PHASES] = {b->t_load,  b->t_compute, b->t_deliver,
                                       b->t_store, b->t_wait,    total};
        for (int k = 0; k < TD_PHASES; k++)
            td_hist_observe(&h[k], (double)us[k] / 1e6);
    }
    for (size_t g = 0; g < b->ngroups; g++) {
        if (b->has_base[g] && !b->changed[g] && !b->superseded[g]) {
            pl_put_spare(p, td_state_cache_give(p->cache, b->states[g], b->ghash[g], &b->base[g]));
            b->states[g] = NULL;
        }
        b->superseded[g] = false;
    }
    pl_batch_drop_groups(p, b);
    for (size_t i = 0; i < b->nmsgs; i++)
        rd_kafka_message_destroy(b->msgs[i]);
    if (b->kind == PL_EVENTS) p->st.batches++;
    p->st.events += b->nmsgs;
    p->st.applied += b->applied;
    p->st.skipped_pos += b->skipped_pos;
    p->st.duplicates += b->duplicates;
    p->st.derived += b->derived;
    b->applied = b->skipped_pos = b->duplicates = b->derived = 0;
    b->nmsgs = 0;
    b->nclaims = 0;
    b->kind = PL_EVENTS;
}

/* Consumes up to batch_max_events within batch_max_ms. The batch opens with
 * the first message (waiting up to wait_ms for it, so signals and reloads
 * are served while idle) and closes when full, when batch_max_ms has passed,
 * or as soon as no further message is waiting locally: an idle-ish stream
 * gets small batches and low latency, a busy one large batches. */
static size_t pl_batch_collect(td_pipeline *p, pl_batch *b, int wait_ms) {
    rd_kafka_message_t *m = td_kafka_poll(p->kafka, wait_ms);
    if (!m) return 0;
    b->msgs[b->nmsgs++] = m;
    int64_t deadline = td_mono_ms() + p->cfg->engine.batch_max_ms;
    while (b->nmsgs < p->cap) {
        m = td_kafka_poll(p->kafka, 0);
        if (!m) break;
        b->msgs[b->nmsgs++] = m;
        if ((b->nmsgs & 63) == 0 && td_mono_ms() >= deadline) break;
    }
    return b->nmsgs;
}

/* The group of prospect `pid` in b, created (no messages, its state to be
 * loaded: pl_take_spare) when absent and `create`; -1 when absent and
 * not created, -2 when out of memory. */
static int32_t pl_group_find(td_pipeline *p, pl_batch *b, const char *pid, size_t plen,
                             uint64_t hash, bool create, bool *created) {
    size_t mask = p->tcap - 1;
    size_t h = (size_t)hash & mask;
    if (created) *created = false;
    while (b->table[h]) {
        int32_t cand = b->table[h] - 1;
        if (strcmp(b->states[cand]->prospect_id, pid) == 0) return cand;
        h = (h + 1) & mask;
    }
    if (!create || b->ngroups >= p->gcap) return -1;
    td_state *st = pl_take_spare(p, pid, plen);
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
    b->gc[g] = (pl_gcount){0};
    b->src[g] = -1;
    b->superseded[g] = false;
    b->restated[g] = false;
    if (created) *created = true;
    return g;
}

/* pl_group_find of an id not measured yet. */
static int32_t pl_group_lookup(td_pipeline *p, pl_batch *b, const char *pid, bool create,
                               bool *created) {
    size_t plen = strlen(pid);
    return pl_group_find(p, b, pid, plen, td_hash64(pid, plen, TD_HASH_SEED), create, created);
}

/* The time bounds of intake (time.max_future_skew, time.max_past_age;
 * docs/events.md): an event whose occurred_at is further ahead of the wall
 * clock `wall`, or older, is rejected. The reason names the field and the
 * bound, never the value. @returns true (ee filled) when ev is out of them. */
static bool pl_out_of_time(const td_pipeline *p, const td_event *ev, td_ms wall,
                           td_event_error *ee) {
    const td_config *c = p->cfg;
    /* both differences fit: decoded times are years 1 to 9999 */
    if (ev->occurred_at - wall > c->time.max_future_skew)
        snprintf(ee->reason, sizeof ee->reason,
                 "field occurred_at: more than %s ahead of the wall clock "
                 "(time.max_future_skew)",
                 c->time.max_future_skew_text);
    else if (wall - ev->occurred_at > c->time.max_past_age)
        snprintf(ee->reason, sizeof ee->reason,
                 "field occurred_at: older than time.max_past_age (%s)", c->time.max_past_age_text);
    else
        return false;
    snprintf(ee->field, sizeof ee->field, "occurred_at");
    return true;
}

/* Logs the dead letter m and queues it on the dead-letter topic (in the
 * round that is open). field and reason name the field and what is wrong
 * with it, never its value (docs/events.md): payloads may hold personal
 * data. The topic is quoted as any input-derived id is.
 * @returns 0, or -1 (the producer refused it). */
static int pl_dead_letter(td_pipeline *p, const rd_kafka_message_t *m, const char *field,
                          const char *reason) {
    p->st.dead_letters++;
    char qt[300], qf[160], qr[400];
    td_log_warn("event rejected to dead-letter topic",
                "topic=%s partition=%d offset=%lld field=%s reason=%s",
                td_log_quote(qt, sizeof qt, rd_kafka_topic_name(m->rkt)), (int)m->partition,
                (long long)m->offset, td_log_quote(qf, sizeof qf, field[0] ? field : "-"),
                td_log_quote(qr, sizeof qr, reason));
    return p->kafka ? td_kafka_send_dlq(p->kafka, m, reason, field) : 0;
}

/* A rule failed at run time on the event `event_id` of st's prospect: its
 * ids, quoted (they are the CRM's: printable ASCII only in the log). */
static void pl_log_rule_errors(const td_state *st, const char *event_id, unsigned nerrors) {
    char qp[300], qe[300];
    td_log_warn("rule evaluation errors", "prospect=%s event=%s errors=%u",
                td_log_quote(qp, sizeof qp, st->prospect_id), td_log_quote(qe, sizeof qe, event_id),
                nerrors);
}

/* Decodes every message; invalid ones (undecodable, or outside the time
 * bounds at the batch's wall time) are queued on the dead-letter topic (in
 * the round that is open). */
static int pl_batch_decode(td_pipeline *p, pl_batch *b) {
    td_ms wall = td_wall_ms();
    for (size_t i = 0; i < b->nmsgs; i++) {
        rd_kafka_message_t *m = b->msgs[i];
        td_event_error ee;
        b->dead[i] = false;
        bool decoded = td_event_decode(m->payload ? m->payload : "", m->payload ? m->len : 0,
                                       &b->evs[i], &ee) == TD_OK;
        bool out_of_time = decoded && pl_out_of_time(p, &b->evs[i], wall, &ee);
        if (decoded && !out_of_time) {
            if (p->kafka) td_kafka_note_time(p->kafka, m, b->evs[i].occurred_at);
            continue;
        }
        b->dead[i] = true;
        /* a class of the reason, never the reason: a bounded metrics label */
        p->st.dead_by_class[out_of_time   ? TD_DLQ_TIME_BOUNDS
                            : ee.field[0] ? TD_DLQ_INVALID
                                          : TD_DLQ_MALFORMED]++;
        if (pl_dead_letter(p, m, ee.field, ee.reason) < 0) return -1;
    }
    return 0;
}

/* Appends input i to group g's chain (its first input when created). */
static void pl_chain(pl_batch *b, int32_t g, int32_t i, bool created) {
    if (created) {
        b->first[g] = b->last[g] = i;
    } else {
        b->next[b->last[g]] = i;
        b->last[g] = i;
    }
    b->gidx[i] = g;
}

/* Groups the valid events by prospect (from scratch). @returns 0, or -1
 * (out of memory). */
static int pl_batch_group(td_pipeline *p, pl_batch *b) {
    memset(b->table, 0, p->tcap * sizeof *b->table);
    b->ngroups = 0;
    for (size_t i = 0; i < b->nmsgs; i++) {
        b->gidx[i] = -1;
        b->next[i] = -1;
        if (b->dead[i]) continue;
        bool created;
        int32_t g = pl_group_lookup(p, b, b->evs[i].prospect_id, true, &created);
        if (g < 0) return -1; /* out of memory (never full: gcap >= the batch's events) */
        pl_chain(b, g, (int32_t)i, created);
    }
    return 0;
}

/* Waits while Redis is unavailable (with Kafka: hold). @returns 0 to retry,
 * -1 when a stop was requested or the pipeline does not hold (the batch is
 * abandoned). */
static int pl_redis_wait(td_pipeline *p, td_redis *r, int *attempt, const char *op) {
    if (!p->hold) {
        char q[600];
        td_log_warn("redis unavailable, batch abandoned", "op=%s reason=%s", op,
                    td_log_quote(q, sizeof q, td_redis_last_error(r)));
        return -1;
    }
    if (*attempt == 0) {
        char q[600];
        td_log_warn("redis unavailable, holding the batch", "op=%s reason=%s", op,
                    td_log_quote(q, sizeof q, td_redis_last_error(r)));
        td_kafka_hold(p->kafka);
        p->st.redis_waits++;
        td_health_set_redis_held(true);
    }
    (*attempt)++;
    if (*p->stop) {
        td_log_warn("stop requested while redis is unavailable: batch abandoned, its offsets "
                    "are not stored",
                    NULL);
        return -1;
    }
    int ms = p->cfg->redis.backoff_min_ms;
    for (int k = 1; k < *attempt && ms < p->cfg->redis.backoff_max_ms; k++)
        ms *= 2;
    if (ms > p->cfg->redis.backoff_max_ms) ms = p->cfg->redis.backoff_max_ms;
    /* keepalive doubles as the sleep: it serves the consumer meanwhile */
    int64_t until = td_mono_ms() + ms;
    while (td_mono_ms() < until && !*p->stop)
        td_kafka_keepalive(p->kafka, 50); /* beats the heart too (td_health.h) */
    if (*attempt % 10 == 0)
        td_log_warn("redis still unavailable", "op=%s attempts=%d", op, *attempt);
    return 0;
}

static void pl_redis_back(td_pipeline *p, int attempt, const char *op) {
    if (attempt > 0 && p->hold) {
        td_log_info("redis available again, batch resumes", "op=%s attempts=%d", op, attempt);
        td_kafka_release(p->kafka);
        td_health_set_redis_held(false);
    }
}

/* Loads the states of b's groups work[0..n) (freshly initialised). A
 * prospect that is also in `from` (the batch in flight, or NULL) starts from
 * a copy of the state computed there: its version and base are settled when
 * that batch's write is known (pl_batch_adopt). Other states this instance
 * stored last come from the cache; only the rest are read from Redis. A
 * stale cached state is caught by the version check of the write (a
 * conflict drops it and reloads). */
static int pl_batch_load(td_pipeline *p, pl_batch *b, pl_batch *from, const int32_t *work_in,
                         size_t n_in) {
    const int32_t *work = work_in;
    size_t n = n_in;
    size_t nmiss = 0;
    for (size_t k = 0; k < n_in; k++) {
        int32_t g = work_in[k];
        b->src[g] = -1;
        if (from) {
            int32_t sg = pl_group_find(p, from, b->states[g]->prospect_id, b->glen[g], b->ghash[g],
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
        if (p->cache) {
            td_state *hit =
                td_state_cache_take(p->cache, b->states[g]->prospect_id, b->ghash[g], &b->base[g]);
            if (hit) {
                pl_put_spare(p, b->states[g]);
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
        int rc = td_redis_load_ptrs(p->redis, b->pack_ld, n);
        if (rc == TD_OK) break;
        if (pl_redis_wait(p, p->redis, &attempt, "load") < 0) return -1;
    }
    pl_redis_back(p, attempt, "load");
    for (size_t k = 0; k < n; k++)
        if (pl_base_set(b, work[k]) < 0) return -2;
    for (size_t k = 0; k < n_in; k++) {
        b->expected[work_in[k]] = b->states[work_in[k]]->version;
        b->changed[work_in[k]] = false;
    }
    return 0;
}

/* Queues ev, derived by the step of input src, for its owner's group. */
static int pl_dq_push(pl_batch *b, const td_event *ev, int32_t src) {
    if (b->ndq == b->capdq) {
        size_t cap = b->capdq ? b->capdq * 2 : 64;
        td_event *v = realloc(b->dq, cap * sizeof *v);
        if (!v) return -1;
        b->dq = v;
        int32_t *gv = realloc(b->dq_g, cap * sizeof *gv);
        if (!gv) return -1;
        b->dq_g = gv;
        int32_t *sv = realloc(b->dq_src, cap * sizeof *sv);
        if (!sv) return -1;
        b->dq_src = sv;
        b->capdq = cap;
    }
    b->dq[b->ndq] = *ev;
    b->dq_g[b->ndq] = -1;
    b->dq_src[b->ndq] = src;
    b->ndq++;
    return 0;
}

static int pl_i64_cmp(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Puts dq[from..ndq) in the order of the inputs that derived them. The
 * groups are computed one prospect after another, so an attempt queues its
 * derived events by prospect; an owner's state must see them in consumed
 * order, as the offline driver steps them (its clock and the timers its
 * events arm depend on it). Usually in order already (a prospect's first
 * touch is mostly its first event). @returns 0, or -1 (out of memory). */
static int pl_dq_order(pl_batch *b, size_t from) {
    size_t n = b->ndq - from;
    bool sorted = true;
    for (size_t i = from + 1; i < b->ndq && sorted; i++)
        sorted = b->dq_src[i - 1] <= b->dq_src[i];
    if (sorted) return 0;
    int64_t *key = malloc(n * sizeof *key);
    td_event *ev = malloc(n * sizeof *ev);
    int32_t *src = malloc(n * sizeof *src);
    if (!key || !ev || !src) {
        free(key);
        free(ev);
        free(src);
        return -1;
    }
    /* (source input, position): stable */
    for (size_t k = 0; k < n; k++)
        key[k] = ((int64_t)b->dq_src[from + k] << 32) | (int64_t)k;
    qsort(key, n, sizeof *key, pl_i64_cmp);
    for (size_t k = 0; k < n; k++) {
        size_t at = from + (size_t)(key[k] & 0xffffffff);
        ev[k] = b->dq[at];
        src[k] = b->dq_src[at];
    }
    memcpy(b->dq + from, ev, n * sizeof *ev);
    memcpy(b->dq_src + from, src, n * sizeof *src);
    free(key);
    free(ev);
    free(src);
    return 0;
}

static int pl_rec_add(pl_batch *b, int32_t g, size_t off, td_kafka_kind kind) {
    if (td_grow(&b->recs, &b->caprecs, b->nrecs, sizeof *b->recs, 256) != TD_OK) return -1;
    b->recs[b->nrecs++] = (pl_drec){off, b->recbuf.len - off, g, kind, -1};
    return 0;
}

/* ----------------------------------------------------------- gift register */

/* Notes applied event i of group g when it is a gift.sent (docs/gifts.md).
 * The list restarts with every attempt. @returns 0, or -1 (out of memory). */
static int pl_gift_note(td_pipeline *p, pl_batch *b, int32_t g, int32_t i) {
    if (!p->gifts || b->evs[i].type != TD_EV_GIFT_SENT) return 0;
    if (b->gift_seq != b->attempt_seq) {
        b->gift_seq = b->attempt_seq;
        b->ngifts = 0;
    }
    if (td_grow(&b->gift_recs, &b->capgifts, b->ngifts, sizeof *b->gift_recs, 64) != TD_OK)
        return -1;
    td_gift_rec_from_event(&b->gift_recs[b->ngifts++], &b->evs[i], b->states[g], p->tz,
                           td_ruleset_settings(p->rs));
    return 0;
}

/* Writes this attempt's gifts: the Kafka topic (when configured, waiting for
 * its acknowledgements), then the Redis register (idempotent script),
 * holding the batch while Redis is unavailable. Runs after the
 * recommendations are acknowledged and before the states are stored, so a
 * crash re-runs it and the script drops what was already registered.
 * @returns 0, -1 (fatal Kafka error) or -2 (stop requested: abandoned). */
static int pl_gifts_write(td_pipeline *p, pl_batch *b) {
    if (b->gift_seq != b->attempt_seq || b->ngifts == 0) return 0;
    size_t n = b->ngifts;
    if (p->gifts_kafka) {
        td_gifts_kafka_begin(p->gifts_kafka);
        for (size_t k = 0; k < n; k++)
            if (td_gifts_kafka_send(p->gifts_kafka, &b->gift_recs[k]) < 0) return -1;
        int w = td_gifts_kafka_wait(p->gifts_kafka, p->stop, 10000);
        if (w < 0) return w;
    }
    int attempt = 0;
    size_t added = 0;
    while (td_gifts_write(p->gifts, b->gift_recs, n, &added) != TD_OK) {
        if (attempt++ == 0) {
            char q[600];
            td_log_warn("redis unavailable, holding the batch", "op=gifts reason=%s",
                        td_log_quote(q, sizeof q, td_gifts_last_error(p->gifts)));
            td_kafka_hold(p->kafka);
            p->st.redis_waits++;
            td_health_set_redis_held(true);
        }
        if (*p->stop) {
            td_log_warn("stop requested while redis is unavailable: batch abandoned, its offsets "
                        "are not stored",
                        "events=%zu", b->nmsgs);
            return -2;
        }
        int64_t until = td_mono_ms() + p->cfg->redis.backoff_min_ms;
        while (td_mono_ms() < until && !*p->stop)
            td_kafka_keepalive(p->kafka, 50);
        if (attempt % 10 == 0)
            td_log_warn("redis still unavailable", "op=gifts attempts=%d", attempt);
    }
    if (attempt > 0) {
        td_log_info("redis available again, batch resumes", "op=gifts attempts=%d", attempt);
        td_kafka_release(p->kafka);
        td_health_set_redis_held(false);
    }
    p->st.gifts_registered += added;
    p->st.gifts_again += n - added;
    td_log_debug("gift register written", "gifts=%zu added=%zu", n, added);
    b->ngifts = 0;
    return 0;
}

static int pl_gifts_init(td_pipeline *p, td_gifts *gifts) {
    char err[600];
    p->gifts = gifts; /* the daemon's: opened and checked before Kafka */
    if (!p->gifts) {
        td_log_error("gift register configuration", "reason=%s", "no gift register connection");
        return -1;
    }
    if (p->cfg->kafka.gift_register_topic[0]) {
        p->gifts_kafka = td_gifts_kafka_new(p->cfg, td_kafka_bootstraps(p->kafka), err, sizeof err);
        if (!p->gifts_kafka) {
            char q[700];
            td_log_error("gift register configuration", "reason=%s",
                         td_log_quote(q, sizeof q, err));
            return -1;
        }
    }
    td_log_info("gift register ready", "retention_days=%d topic=%s", p->cfg->gifts.retention_days,
                p->cfg->kafka.gift_register_topic[0] ? p->cfg->kafka.gift_register_topic : "-");
    return 0;
}

static void pl_gifts_free(td_pipeline *p) {
    if (p->st.gifts_registered || p->st.gifts_again)
        td_log_info("gift register", "registered=%llu already_registered=%llu",
                    (unsigned long long)p->st.gifts_registered,
                    (unsigned long long)p->st.gifts_again);
    td_gifts_kafka_free(p->gifts_kafka); /* p->gifts is the daemon's */
}

/* The observers of every step of a source trigger (the shadow ruleset, a
 * sink's hooks): a copy of the state before, the outcome after; they never
 * change the live state. */
static void pl_before(td_pipeline *p, const td_state *st) {
    if (p->shadow) td_shadow_before(p->shadow, st); /* a copy, stepped after live, never stored */
    if (p->sink && p->sink->before_step) p->sink->before_step(p->sink->ud, st);
}

static void pl_after(td_pipeline *p, const td_trigger *trig, td_ms now) {
    if (p->shadow) td_shadow_after(p->shadow, p->rs, trig, now, p->out);
    if (p->sink && p->sink->after_step) p->sink->after_step(p->sink->ud, p->rs, trig, now, p->out);
}

/* Renders the recommendations of the last step for group g. @returns 0, or
 * -1 (out of memory). */
static int pl_render(td_pipeline *p, pl_batch *b, int32_t g, const td_trigger *trig, td_ms now) {
    const td_step_out *o = p->out;
    /* a trigger's withdrawals first: a reader applying the topic in order
     * never holds a withdrawn one beside its replacement */
    for (uint32_t w = 0; w < o->nwds; w++) {
        size_t off = b->recbuf.len;
        if (td_body_json(o->wds[w].body, o->wds[w].body_len, now, &b->recbuf) != TD_OK ||
            pl_rec_add(b, g, off, TD_KK_WITHDRAWAL) < 0)
            return -1;
        b->recs[b->nrecs - 1].rule = (int32_t)o->wds[w].reason;
    }
    for (uint32_t r = 0; r < o->nrecs; r++) {
        if (o->recs[r].late) p->st.late++;
        if (o->recs[r].dropped) { /* late, under the "drop" policy */
            p->st.late_dropped++;
            continue;
        }
        size_t off = b->recbuf.len;
        if (td_rec_json(&o->recs[r], b->states[g], p->rs, trig, now, &b->recbuf) != TD_OK ||
            pl_rec_add(b, g, off, TD_KK_RECOMMENDATION) < 0)
            return -1;
        b->recs[b->nrecs - 1].rule = (int32_t)o->recs[r].rule->index;
    }
    if (o->plan_changed && b->pmark[g] != b->attempt_seq) {
        b->pmark[g] = b->attempt_seq;
        b->pdirty[b->npdirty++] = g;
    }
    return 0;
}

/* Counts a step's blocked candidates and evaluation errors by rule
 * (td_pipeline_rule_stats). */
static void pl_count_rules(td_pipeline *p, const td_step_out *o) {
    uint32_t nb = o->nblocked < TD_STEP_RECS_MAX ? o->nblocked : TD_STEP_RECS_MAX;
    for (uint32_t k = 0; k < nb; k++) {
        if (o->blocked_rule[k] < p->nrules) p->r_blocked[o->blocked_rule[k]]++;
        if (o->blocked_guard[k] < p->nrules) p->r_blocks[o->blocked_guard[k]]++;
    }
    uint32_t ne = o->nerrors < TD_STEP_RECS_MAX ? o->nerrors : TD_STEP_RECS_MAX;
    for (uint32_t k = 0; k < ne; k++)
        if (o->error_rule[k] < p->nrules) p->r_errors[o->error_rule[k]]++;
}

/* The engine step of every trigger of the daemon: the trigger carries the
 * wall clock (lateness) and the dedup window, the flags the late policy. */
static int pl_step(td_pipeline *p, td_state *st, td_trigger *trig, td_ms wall) {
    trig->wall = wall;
    trig->dedup_window = p->cfg->engine.dedup_window;
    unsigned flags = p->cfg->time.late_policy == TD_LATE_PUBLISH ? TD_STEP_LATE_PUBLISH
                     : p->cfg->time.late_policy == TD_LATE_DROP  ? TD_STEP_LATE_DROP
                                                                 : 0;
    if (td_engine_step(p->rs, st, trig, wall, p->tz, flags, p->out) != TD_OK) return TD_ERR;
    pl_count_rules(p, p->out);
    return TD_OK;
}

/* ------------------------------------------------------------ timers */

static int pl_due_cmp(const void *a, const void *b) {
    const pl_due *x = a, *y = b;
    if (x->due_at != y->due_at) return x->due_at < y->due_at ? -1 : 1;
    if (x->index != y->index) return x->index < y->index ? -1 : 1;
    return strcmp(x->rule, y->rule);
}

/* What pl_fire_timer did with a timer. */
enum { PL_FIRE_FIRED = 0, PL_FIRE_STALE = 1, PL_FIRE_DROPPED = 2 };

/*
 * Fires group g's pending timer of `rule` as a timer trigger: the one path
 * of a timer, claimed (pl_compute_timers) or due before an event
 * (pl_fire_due). Under overdue_policy = "drop", a timer overdue by more than
 * drop_older_than at wall time `wall` is disarmed instead (logged). Else the
 * engine steps it (at its due time: the engine's now), observed like every
 * source trigger; its recommendations are rendered (generated_at = wall)
 * and what it derives is queued. Counted in gc[g]; *late receives wall
 * minus its due time.
 * @returns PL_FIRE_*, or -1 (out of memory).
 */
static int pl_fire_timer(td_pipeline *p, pl_batch *b, int32_t g, const char *rule, td_ms wall,
                         int32_t src, td_ms *late) {
    td_state *st = b->states[g];
    pl_gcount *cnt = &b->gc[g];
    const td_timer *tm = td_state_timer(st, rule);
    if (!tm) {
        cnt->stale++;
        return PL_FIRE_STALE;
    }
    *late = wall - tm->due_at; /* how late it is: the late policy judges its recommendations */
    /* the step disarms the timer: what the trigger names is copied first */
    char armed_by[TD_ID_MAX + 1], rid[TD_RULE_ID_MAX + 1];
    memcpy(armed_by, tm->armed_by, sizeof armed_by);
    memcpy(rid, tm->rule, sizeof rid);
    td_trigger trig = {
        .kind = TD_TRIG_TIMER, .rule = rid, .due_at = tm->due_at, .armed_by = armed_by};
    uint32_t before = st->ntimers;
    pl_before(p, st);
    if (pl_step(p, st, &trig, wall) != TD_OK) return -1;
    pl_after(p, &trig, wall);
    if (st->ntimers != before) b->changed[g] = true; /* disarmed (its rule was removed) */
    if (p->out->stale) {
        cnt->stale++;
        return PL_FIRE_STALE;
    }
    /* fired: disarmed, its clock and cooldown moved, maybe the plan and its
     * timer (the count of timers may be the same: one out, ~plan in) */
    b->changed[g] = true;
    cnt->fired++;
    if (p->out->nerrors)
        td_log_warn("rule evaluation errors", "prospect=%s timer=%s errors=%u", st->prospect_id,
                    rid, p->out->nerrors);
    if (pl_render(p, b, g, &trig, wall) < 0) return -1;
    cnt->trecs += p->out->nrecs;
    if (p->out->has_derived && pl_dq_push(b, &p->out->derived, src) < 0) return -1;
    return PL_FIRE_FIRED;
}

/*
 * Fires group g's timers due at or before t, one at a time in (due time,
 * rule index) order, each through pl_fire_timer at wall time `wall` (src:
 * the input or claim, for what they derive). The state is scanned again
 * after each firing: a firing can arm or re-arm a timer due by t (the plan's
 * timer, re-armed at the next expiry after a withdrawal), which then fires
 * in its turn, as offline (td_sim's heap takes what each trigger arms). A
 * timer the engine leaves armed after a stale step is not tried twice.
 * Before an event at t (pl_compute_events), and for claims up to the latest
 * claimed due time (pl_compute_timers): so a prospect's triggers reach the
 * engine in time order whatever the wall clock says. The state's write
 * moves the index entries of what fired, claimed or not; a claim of one in
 * flight elsewhere finds it stale. Counted in gc[g] (pl_batch_count_timers).
 * @returns the number fired (>= 0), or -1 (out of memory).
 */
static int pl_fire_due(td_pipeline *p, pl_batch *b, int32_t g, td_ms t, td_ms wall, int32_t src) {
    td_state *st = b->states[g];
    size_t ntried = 0; /* p->due[0..ntried): stepped and left armed */
    int fired = 0;
    for (;;) {
        pl_due best = {.due_at = TD_MS_MISSING};
        bool found = false;
        for (uint32_t k = 0; k < st->ntimers; k++) {
            const td_timer *tm = &st->timers[k];
            if (tm->due_at > t) continue;
            const td_rule *r = td_ruleset_find(p->rs, tm->rule);
            pl_due c = {.due_at = tm->due_at, .index = r ? r->index : SIZE_MAX, .src = src};
            memcpy(c.rule, tm->rule, sizeof c.rule);
            bool tried = false;
            for (size_t x = 0; x < ntried && !tried; x++)
                tried = p->due[x].due_at == c.due_at && strcmp(p->due[x].rule, c.rule) == 0;
            if (tried || (found && pl_due_cmp(&c, &best) >= 0)) continue;
            best = c;
            found = true;
        }
        if (!found) return fired;
        td_ms late;
        int r = pl_fire_timer(p, b, g, best.rule, wall, src, &late);
        if (r < 0) return -1;
        if (r == PL_FIRE_FIRED) fired++;
        const td_timer *left = td_state_timer(st, best.rule);
        if (left && left->due_at == best.due_at) {
            if (td_grow(&p->due, &p->capdue, ntried, sizeof *p->due, 16) != TD_OK) return -1;
            p->due[ntried++] = best;
        }
    }
}

/* Applies the events of group g in order, each after the timers due by its
 * time (pl_fire_due); `now` is the wall clock. @returns 0, or -1 (out of
 * memory). */
static int pl_compute_events(td_pipeline *p, pl_batch *b, int32_t g, td_ms now) {
    td_state *st = b->states[g];
    for (int32_t i = b->first[g]; i >= 0; i = b->next[i]) {
        rd_kafka_message_t *m = b->msgs[i];
        const char *topic = rd_kafka_topic_name(m->rkt);
        if (m->offset <= td_state_pos_get(st, topic, m->partition)) {
            b->skipped_pos++; /* applied before a crash or by another instance */
            b->gc[g].skipped_pos++;
            continue;
        }
        if (st->ntimers && pl_fire_due(p, b, g, b->evs[i].occurred_at, now, i) < 0) return -1;
        td_trigger trig = {.kind = TD_TRIG_EVENT, .ev = &b->evs[i]};
        pl_before(p, st);
        if (pl_step(p, st, &trig, now) != TD_OK) return -1;
        pl_after(p, &trig, now);
        if (p->out->rejected) { /* feedback naming a recommendation not this prospect's */
            p->st.dead_by_class[TD_DLQ_FEEDBACK]++;
            if (pl_dead_letter(p, m, p->out->reject_field, p->out->reject_reason) < 0) return -1;
            td_state_pos_set(st, topic, m->partition, m->offset);
            b->changed[g] = true;
            continue;
        }
        if (p->out->duplicate) {
            b->duplicates++;
            b->gc[g].duplicates++;
        } else {
            b->applied++;
            b->gc[g].applied++;
        }
        if (!p->out->duplicate && pl_gift_note(p, b, g, i) < 0) return -1;
        if (pl_render(p, b, g, &trig, now) < 0) return -1;
        if (p->out->nerrors) pl_log_rule_errors(st, b->evs[i].id, p->out->nerrors);
        if (p->out->has_derived && pl_dq_push(b, &p->out->derived, i) < 0) return -1;
        td_state_pos_set(st, topic, m->partition, m->offset);
        b->changed[g] = true;
    }
    return 0;
}

/* Steps the claims of group g against its state, at the batch's wall time:
 * every timer of the state due by the latest claimed due time fires, in
 * (due time, rule index) order (pl_fire_due), claimed or not, so that what a
 * firing arms before the next claimed one fires between them, as offline.
 * The state is the authority: a claim is a hint to look.
 * @returns 0, or -1 (out of memory). */
static int pl_compute_timers(td_pipeline *p, pl_batch *b, int32_t g) {
    const td_state *st = b->states[g];
    td_ms now = b->now, bound = TD_MS_MISSING;
    pl_gcount *cnt = &b->gc[g];
    int32_t src = -1;
    for (int32_t i = b->first[g]; i >= 0; i = b->next[i]) {
        const td_claim *c = &b->claims[i];
        const td_timer *tm = td_state_timer(st, c->rule);
        b->delay[i] = -1;
        if (!tm || (c->due_at != TD_MS_MISSING && tm->due_at != c->due_at) || tm->due_at > now) {
            /* disarmed, fired already, or re-armed (its new due time is in
             * the index as the same member: ZADD moved it) */
            cnt->stale++;
            continue;
        }
        if (tm->due_at > b->due_by) {
            /* re-leased after its claimer died, and due beyond the horizon:
             * not acknowledged (lease_until 0 matches no lease), so it comes
             * back after its lease, when the input may have caught up */
            b->claims[i].lease_until = 0;
            p->st.horizon_held_claims++;
            continue;
        }
        td_ms late = now - tm->due_at;
        b->delay[i] = late < 0 ? 0 : late;
        if (late > cnt->max_delay) cnt->max_delay = late;
        if (tm->due_at > bound) bound = tm->due_at;
        if (src < 0) src = i;
    }
    if (src < 0) return 0;
    return pl_fire_due(p, b, g, bound, now, src) < 0 ? -1 : 0;
}

static int pl_batch_compute(td_pipeline *p, pl_batch *b, int32_t g, td_ms now) {
    if (b->first[g] < 0) return 0; /* an owner group: its derived events come later */
    return b->kind == PL_TIMERS ? pl_compute_timers(p, b, g) : pl_compute_events(p, b, g, now);
}

/* Steps derived event i on its owner's state, after the owner's timers due
 * by its time (the owner's dedup ring makes a repeat a no-op). @returns 0,
 * or -1 (out of memory). */
static int pl_derived_step(td_pipeline *p, pl_batch *b, size_t i, td_ms now) {
    int32_t g = b->dq_g[i];
    td_state *st = b->states[g];
    if (st->ntimers && pl_fire_due(p, b, g, b->dq[i].occurred_at, now, b->dq_src[i]) < 0) return -1;
    td_trigger trig = {.kind = TD_TRIG_EVENT, .ev = &b->dq[i]};
    if (pl_step(p, st, &trig, now) != TD_OK) return -1;
    if (p->out->duplicate) {
        p->st.derived_dups++;
        return 0;
    }
    b->derived++;
    b->gc[g].derived++;
    if (pl_render(p, b, g, &trig, now) < 0) return -1;
    if (p->out->nerrors) pl_log_rule_errors(st, b->dq[i].id, p->out->nerrors);
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
static int pl_batch_derive(td_pipeline *p, pl_batch *b, pl_batch *from, size_t from_dq, td_ms now) {
    if (b->ndq == 0) return 0;
    if (pl_dq_order(b, from_dq) < 0) return -1;
    uint32_t seq = b->attempt_seq;
    size_t n0 = b->nwork, ncreated = 0;
    for (size_t i = from_dq; i < b->ndq; i++) {
        bool created;
        int32_t g = pl_group_lookup(p, b, b->dq[i].prospect_id, true, &created);
        if (g < 0) return -1; /* out of memory (never full: one derived event per input event) */
        b->dq_g[i] = g;
        if (created) {
            b->work[n0 + ncreated++] = g;
            b->stamp[g] = seq;
        }
    }
    if (ncreated > 0) {
        int lr = pl_batch_load(p, b, from, b->work + n0, ncreated);
        if (lr < 0) return lr == -2 ? -1 : -2;
        b->nwork += ncreated;
    }
    /* groups loaded in this attempt: every derived event for them */
    for (size_t i = 0; i < b->ndq; i++) {
        int32_t g = b->dq_g[i];
        if (b->stamp[g] == seq && pl_derived_step(p, b, i, now) < 0) return -1;
    }
    /* groups stored earlier in the batch: only the new events */
    for (size_t i = from_dq; i < b->ndq; i++) {
        int32_t g = b->dq_g[i];
        if (b->stamp[g] == seq) continue;
        b->expected[g] = b->states[g]->version; /* as stored by us */
        b->stamp[g] = seq;
        b->work[b->nwork++] = g;
        for (size_t k = i; k < b->ndq; k++)
            if (b->dq_g[k] == g && pl_derived_step(p, b, k, now) < 0) return -1;
    }
    return 0;
}

/* Captures the flat forms of b's changed groups (every group the batch
 * changed and has not stored yet) into the pack (pack_now, pack_g), owners
 * first. Only the states are read: it
 * may run before the bases and versions of groups copied from the batch in
 * flight are known (pl_batch_pack_bind completes the pack).
 * @returns 0 or -2 (out of memory). */
static int pl_batch_pack(pl_batch *b) {
    size_t np = 0;
    /* Owner groups (no input messages) first, stored before the others
     * (pl_batch_store_send): a crash mid-store may lose a prospect's write
     * (its event is consumed again and derives the same "<id>#owner"
     * event, which the owner's dedup window drops) but never an owner's
     * event whose source prospect was stored. */
    b->npack_owners = 0;
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1) b->npack_owners = np;
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
static void pl_batch_pack_bind(pl_batch *b) {
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
static int pl_batch_store_send(td_redis *r, pl_batch *b) {
    if (b->npack == 0) return TD_OK;
    size_t no = b->npack_owners;
    if (no == 0 || no == b->npack)
        return td_redis_store_diff(r, b->pack_st, b->pack_base, b->pack_now, b->pack_expected,
                                   b->npack, b->pack_result) == TD_OK
                   ? TD_OK
                   : TD_ERR;
    /* Owners, then the prospects whose first contacts derived their events,
     * in two calls: one call may run its writes on two connections (the
     * lanes), in no order between them, so a crash could land a prospect's
     * first contact and lose its owner's event (the prospect, read again,
     * is skipped by position and derives nothing). If an owner's write
     * conflicted, the prospects are not written either: all of them are
     * recomputed with the owners, so no prospect is stored before the
     * events it derived. */
    if (td_redis_store_diff(r, b->pack_st, b->pack_base, b->pack_now, b->pack_expected, no,
                            b->pack_result) != TD_OK)
        return TD_ERR;
    bool stored = true;
    for (size_t k = 0; k < no; k++)
        stored = stored && b->pack_result[k] == TD_REDIS_STORED;
    if (!stored) {
        for (size_t k = no; k < b->npack; k++)
            b->pack_result[k] = TD_REDIS_CONFLICT;
        return TD_OK;
    }
    return td_redis_store_diff(r, b->pack_st + no, b->pack_base + no, b->pack_now + no,
                               b->pack_expected + no, b->npack - no, b->pack_result + no) == TD_OK
               ? TD_OK
               : TD_ERR;
}

/* pl_batch_pack + pl_batch_pack_bind + pl_batch_store_send, on the main
 * thread. @returns as pl_batch_store_send, or -2 (out of memory). */
static int pl_batch_store_now(td_redis *r, pl_batch *b) {
    if (pl_batch_pack(b) < 0) return -2;
    pl_batch_pack_bind(b);
    return pl_batch_store_send(r, b);
}

/* Takes the outcome of a successful pl_batch_store_send: stored groups take
 * their new version and what was written becomes their base (the old
 * base's buffers are reused for the next write); conflicted ones are written
 * to work2[] (*nconf) and dropped from the cache. */
static void pl_batch_store_apply(td_pipeline *p, pl_batch *b, size_t *nconf) {
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
            td_state_cache_drop(p->cache, b->states[g]->prospect_id, b->ghash[g]);
            b->work2[(*nconf)++] = g;
        }
    }
}

/* redis.verify_writes: logs the differences the last write through r
 * found (the store thread's connection has handed the batch back). */
static void pl_verify_log(td_pipeline *p, td_redis *r) {
    uint64_t all =
        td_redis_verify_mismatches(p->redis) + td_redis_verify_mismatches(p->redis_store);
    if (all == p->verify_seen) return;
    char last[400], q[480];
    td_redis_verify_last(r, last, sizeof last);
    td_log_error("verify_writes: redis holds other than the state written",
                 "new=%llu total=%llu last=%s", (unsigned long long)(all - p->verify_seen),
                 (unsigned long long)all, td_log_quote(q, sizeof q, last));
    p->verify_seen = all;
}

/* Stores b's changed groups on the main thread, holding the batch while
 * Redis is unavailable. `rc` is the outcome of a store already tried (on
 * `tried_on`; TD_ERR: retry it; TD_OK: apply it) or PL_STORE_UNTRIED.
 * @returns 0 (conflicts in work2[0..*nconf)), -1 when abandoned (stop
 * requested), -2 on out-of-memory. */
static int pl_batch_store(td_pipeline *p, pl_batch *b, int rc, td_redis *tried_on, size_t *nconf) {
    int attempt = 0;
    if (rc == PL_STORE_UNTRIED) rc = pl_batch_store_now(p->redis, b);
    td_redis *r = tried_on ? tried_on : p->redis;
    while (rc != TD_OK) {
        if (rc == -2) return -2;
        /* Unknown which writes happened: retrying is safe (a write that did
         * happen bumped the version, so it now conflicts, and the reload
         * sees our positions). */
        if (pl_redis_wait(p, r, &attempt, "store") < 0) return -1;
        r = p->redis;
        rc = pl_batch_store_now(p->redis, b);
    }
    pl_redis_back(p, attempt, "store");
    pl_batch_store_apply(p, b, nconf);
    if (p->cfg->redis.verify_writes) pl_verify_log(p, r);
    return 0;
}

/* After a recomputing attempt: every group it loaded or stepped (the
 * conflicted ones, and owner groups that received events derived again) has
 * a state the next batch may hold a stale copy of. */
static void pl_batch_mark_restated(pl_batch *b) {
    for (size_t k = 0; k < b->nwork; k++)
        b->restated[b->work[k]] = true;
}

/* ------------------------------------------------------------- output */

/* Opens a round of output: what is sent from now on is waited for by the
 * next pl_round_wait. */
static void pl_round_begin(td_pipeline *p) {
    if (p->kafka) td_kafka_round_begin(p->kafka);
}

/* Queues one recommendation. @returns 0, or -1 (fatal). */
static int pl_send(td_pipeline *p, td_kafka_kind kind, const char *pid, size_t plen,
                   const char *json, size_t len) {
    if (p->kafka) return td_kafka_send_out(p->kafka, kind, pid, plen, json, len) < 0 ? -1 : 0;
    if (kind == TD_KK_PLAN)
        return !p->sink->send_plan || p->sink->send_plan(p->sink->ud, pid, json, len) == 0 ? 0 : -1;
    return p->sink->send(p->sink->ud, pid, json, len) != 0 ? -1 : 0;
}

/* The plan of every group whose plan changed in this attempt, in the order
 * they changed: the plan object, or a tombstone (nothing to show). Nothing
 * when there is no plan topic. @returns 0, or -1 (out of memory). */
static int pl_plans_render(td_pipeline *p, pl_batch *b) {
    bool on = p->kafka ? td_kafka_has_plans(p->kafka) : p->sink && p->sink->send_plan;
    for (size_t k = 0; on && k < b->npdirty; k++) {
        int32_t g = b->pdirty[k];
        const td_state *st = b->states[g];
        if (td_state_plan_visible(st) == 0) {
            if (td_grow(&b->recs, &b->caprecs, b->nrecs, sizeof *b->recs, 256) != TD_OK) return -1;
            b->recs[b->nrecs++] = (pl_drec){SIZE_MAX, 0, g, TD_KK_PLAN, -1};
            continue;
        }
        size_t off = b->recbuf.len;
        if (td_plan_json(st, p->rs, &b->recbuf) != TD_OK || pl_rec_add(b, g, off, TD_KK_PLAN) < 0)
            return -1;
    }
    return 0;
}

/* Waits for every acknowledgement of the open round. @returns 0, -1 (fatal
 * Kafka error) or -2 (a stop request, or the sink failed: abandoned). */
static int pl_round_wait(td_pipeline *p) {
    if (p->kafka) return td_kafka_round_wait(p->kafka, p->stop, 10000);
    if (p->sink->wait(p->sink->ud) != 0) {
        td_log_warn("output acknowledgements failed, batch abandoned", NULL);
        return -2;
    }
    return 0;
}

/* Sleeps ms, serving the consumer meanwhile when there is one. */
static void pl_pause(td_pipeline *p, int ms) {
    if (p->kafka) {
        td_kafka_keepalive(p->kafka, ms);
        return;
    }
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* One computing attempt over b->work[0..nwork): load (`from`: the batch in
 * flight, or NULL), apply the events, derive, and send the
 * recommendations in the open round. */
static td_pl_rc pl_batch_attempt(td_pipeline *p, pl_batch *b, pl_batch *from) {
    int64_t t0 = td_mono_us();
    /* the groups computed again: what they counted before is taken back */
    for (size_t k = 0; k < b->nwork; k++) {
        pl_gcount *c = &b->gc[b->work[k]];
        b->applied -= c->applied;
        b->skipped_pos -= c->skipped_pos;
        b->duplicates -= c->duplicates;
        b->derived -= c->derived;
        *c = (pl_gcount){0};
    }
    if (b->nwork > 0) {
        int lr = pl_batch_load(p, b, from, b->work, b->nwork);
        if (lr == -2) {
            td_log_error("out of memory while loading states", "prospects=%zu", b->nwork);
            return TD_PL_FATAL;
        }
        if (lr < 0) return TD_PL_ABANDONED;
    }
    int64_t t1 = td_mono_us();
    b->t_load += t1 - t0;
    b->nrecs = 0;
    b->recbuf.len = 0;
    b->npdirty = 0;
    /* events: the wall clock of the attempt; timers: the time they were
     * claimed at */
    td_ms now = b->kind == PL_TIMERS ? b->now : td_wall_ms();
    uint32_t seq = ++b->attempt_seq;
    for (size_t k = 0; k < b->nwork; k++)
        b->stamp[b->work[k]] = seq;
    size_t dq_from = b->ndq;
    size_t nw = b->nwork; /* derive appends owner groups, computed there */
    for (size_t k = 0; k < nw; k++) {
        if (pl_batch_compute(p, b, b->work[k], now) < 0) {
            char q[300];
            td_log_error("engine step failed (out of memory)", "prospect=%s",
                         td_log_quote(q, sizeof q, b->states[b->work[k]]->prospect_id));
            return TD_PL_FATAL;
        }
    }
    /* events derived for owners: stepped on the owners' states, stored
     * with them in this attempt */
    int dr = pl_batch_derive(p, b, from, dq_from, now);
    if (dr == -1) {
        td_log_error("engine step failed (out of memory)", "derived=%zu", b->ndq);
        return TD_PL_FATAL;
    }
    if (dr == -2) return TD_PL_ABANDONED;
    /* the plans last: each changed one once, as it stands after the batch */
    if (pl_plans_render(p, b) < 0) {
        td_log_error("plan rendering failed (out of memory)", "plans=%zu", b->npdirty);
        return TD_PL_FATAL;
    }
    for (size_t r = 0; r < b->nrecs; r++) {
        const pl_drec *x = &b->recs[r];
        const char *pid = b->states[x->g]->prospect_id;
        const char *val = x->off == SIZE_MAX ? NULL : b->recbuf.p + x->off;
        if (pl_send(p, x->kind, pid, b->glen[x->g], val, x->len) < 0)
            return p->kafka ? TD_PL_FATAL : TD_PL_ABANDONED;
        if (x->kind == TD_KK_RECOMMENDATION) {
            p->st.recs_out++;
            if ((size_t)x->rule < p->nrules) p->r_published[x->rule]++;
        }
        if (x->kind == TD_KK_WITHDRAWAL) {
            p->st.wds_out++;
            if (x->rule >= 0 && x->rule < TD_WDR_REASONS) p->st.wds_by_reason[x->rule]++;
        }
        if (x->kind == TD_KK_PLAN) p->st.plans_out++;
    }
    b->t_compute += td_mono_us() - t1;
    return TD_PL_DONE;
}

/* Durable output first: nothing of b's attempt is stored in Redis, and no
 * offset, before every recommendation (and dead letter) of the open round is
 * acknowledged; then the gift register. */
static td_pl_rc pl_batch_deliver(td_pipeline *p, pl_batch *b) {
    int64_t t0 = td_mono_us();
    int w = pl_round_wait(p);
    if (w == -1) return TD_PL_FATAL;
    if (w == -2) return TD_PL_ABANDONED;
    int gw = pl_gifts_write(p, b); /* the gift register: after delivery, before the store */
    if (gw == -1) return TD_PL_FATAL;
    if (gw == -2) return TD_PL_ABANDONED;
    b->t_deliver += td_mono_us() - t0;
    return TD_PL_DONE;
}

/* Stores b on the main thread, then recomputes, delivers and stores its
 * conflicted groups until none conflicts. `rc`/`tried_on`: see
 * pl_batch_store. */
static td_pl_rc pl_batch_settle(td_pipeline *p, pl_batch *b, int rc, td_redis *tried_on) {
    for (int attempt = 0;; attempt++) {
        int64_t t0 = td_mono_us();
        size_t nconf = 0;
        int sr = pl_batch_store(p, b, rc, tried_on, &nconf);
        if (sr == -2) {
            td_log_error("out of memory after a state write", "prospects=%zu", b->nwork);
            return TD_PL_FATAL;
        }
        if (sr < 0) return TD_PL_ABANDONED;
        b->t_store += td_mono_us() - t0;
        if (nconf == 0) return TD_PL_DONE;
        p->st.conflicts += nconf;
        b->recomputed = true;
        td_log_info("state changed concurrently, recomputing", "prospects=%zu attempt=%d", nconf,
                    attempt + 1);
        memcpy(b->work, b->work2, nconf * sizeof *b->work);
        b->nwork = nconf;
        if (attempt >= 3) {
            /* Persistent contention: back off a little (another instance is
             * working on the same prospects during a rebalance). */
            pl_pause(p, attempt > 20 ? 200 : 10 * attempt);
        }
        if (*p->stop && attempt > 50) return TD_PL_ABANDONED;
        if (!p->hold && attempt >= 20) {
            td_log_warn("persistent compare-and-set conflicts, batch abandoned", "prospects=%zu",
                        nconf);
            return TD_PL_ABANDONED;
        }
        pl_round_begin(p);
        td_pl_rc br = pl_batch_attempt(p, b, NULL);
        pl_batch_mark_restated(b);
        if (br == TD_PL_DONE) br = pl_batch_deliver(p, b);
        if (br != TD_PL_DONE) return br;
        rc = PL_STORE_UNTRIED;
        tried_on = NULL;
    }
}

/* Opens b's round, decodes its messages, groups them and computes every
 * group (loading from `from`, the batch in flight, where it has the
 * prospect). */
/* Opens a batch: its timings, its derived events and its output round. */
static void pl_batch_open(td_pipeline *p, pl_batch *b) {
    b->t_start = td_mono_us();
    b->t_load = b->t_compute = b->t_deliver = b->t_store = b->t_wait = 0;
    b->recomputed = false;
    b->ndq = 0;
    pl_round_begin(p);
}

/* Every group of b is to be computed. */
static void pl_work_all(pl_batch *b) {
    b->nwork = b->ngroups;
    for (size_t g = 0; g < b->nwork; g++)
        b->work[g] = (int32_t)g;
}

static td_pl_rc pl_batch_begin(td_pipeline *p, pl_batch *b, pl_batch *from) {
    pl_batch_open(p, b);
    int64_t oldest = INT64_MAX;
    for (size_t i = 0; i < b->nmsgs; i++) {
        int64_t ts = rd_kafka_message_timestamp(b->msgs[i], NULL);
        if (ts > 0 && ts < oldest) oldest = ts;
    }
    b->age = oldest == INT64_MAX ? -1 : (int64_t)td_wall_ms() - oldest;
    if (pl_batch_decode(p, b) < 0) return TD_PL_FATAL;
    if (pl_batch_group(p, b) < 0) {
        td_log_error("out of memory while grouping events", "events=%zu", b->nmsgs);
        return TD_PL_FATAL;
    }
    pl_work_all(b);
    return pl_batch_attempt(p, b, from);
}

/* Recomputes the groups of b that started from a state `from` changed
 * after b copied it (a conflict there: pl_batch_mark_restated): they are
 * copied again from `from` (settled),
 * their events applied again (and the events derived for owners) and their
 * recommendations sent again in a new round. b's previous round was waited
 * for. The other groups keep what they computed: their starting states are
 * what `from` stored, or what Redis or the cache had. */
static td_pl_rc pl_batch_redo(td_pipeline *p, pl_batch *b, pl_batch *from) {
    size_t n = 0;
    for (size_t g = 0; g < b->ngroups; g++)
        if (b->src[g] >= 0 && from->restated[b->src[g]]) b->work[n++] = (int32_t)g;
    if (n == 0) return TD_PL_DONE;
    b->nwork = n;
    p->st.redone++;
    b->redone = true;
    pl_round_begin(p);
    return pl_batch_attempt(p, b, from);
}

/* `from` is settled (its writes landed): the states b copied from it take
 * the version it stored and its base (the flat form Redis now holds). */
static void pl_batch_adopt(pl_batch *b, pl_batch *from) {
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

/* The end-to-end latency of b's events (their batch is done): from each
 * message's Kafka timestamp (the producer's, or the broker's with
 * LogAppendTime) to now, wall clock. Messages without one are left out. */
static void pl_latency(td_pipeline *p, const pl_batch *b) {
    int64_t now = td_wall_ms();
    for (size_t i = 0; i < b->nmsgs; i++) {
        int64_t ts = rd_kafka_message_timestamp(b->msgs[i], NULL);
        if (ts > 0) td_hist_observe(&p->st.latency, (double)(now > ts ? now - ts : 0) / 1000.0);
    }
}

/* Finishes the batch in flight: waits for its store, settles it (Redis
 * errors, conflicts), stores its offsets and releases it. `next` (or NULL)
 * was computed on top of it and has its round open: if the batch in flight
 * had to be recomputed, next is recomputed too; else it adopts the versions
 * and bases. next must be delivered (its round closed). */
static td_pl_rc pl_finish(td_pipeline *p, pl_batch *next) {
    pl_batch *a = p->inflight;
    int64_t t0 = td_mono_us();
    pl_store_join(p);
    a->t_wait = td_mono_us() - t0;
    p->inflight = NULL;
    /* the thread's outcome is applied (TD_OK) or its write retried (TD_ERR)
     * by pl_batch_settle, which also recomputes conflicts; next's round is
     * closed (delivered before this), so the settling may use rounds */
    td_pl_rc br = pl_batch_settle(p, a, a->store_rc, p->redis_store);
    if (br != TD_PL_DONE) goto out;
    /* Everything a caused is durable: its offsets may be committed. */
    td_kafka_store(p->kafka, a->msgs, a->nmsgs);
    pl_latency(p, a);
    if (next) {
        if (a->recomputed) br = pl_batch_redo(p, next, a);
        if (br == TD_PL_DONE) pl_batch_adopt(next, a);
    }
out:
    pl_batch_release(p, a);
    return br;
}

/* Processes batch b (collected): computes it on top of the batch in flight,
 * finishes that one, delivers b, then stores b (on the store thread with
 * engine.pipeline, leaving b in flight; else at once, and releases it). */
static td_pl_rc pl_batch_process(td_pipeline *p, pl_batch *b) {
    td_pl_rc br = pl_batch_begin(p, b, p->inflight);
    /* b's acknowledgements are awaited while the batch in flight is still
     * being written: if that one conflicts, b is recomputed and delivered
     * again (a recommendation from a conflicted state is re-published with
     * its id, as after any conflict) */
    if (br == TD_PL_DONE) br = pl_batch_deliver(p, b);
    /* b's flat forms are captured while the batch in flight is written */
    if (br == TD_PL_DONE && p->store_started && pl_batch_pack(b) < 0) {
        td_log_error("out of memory while packing states", "prospects=%zu", b->nwork);
        br = TD_PL_FATAL;
    }
    if (p->inflight) {
        b->redone = false;
        td_pl_rc fr = pl_finish(p, br == TD_PL_DONE ? b : NULL);
        if (br == TD_PL_DONE) br = fr;
        if (br == TD_PL_DONE && b->redone) {
            br = pl_batch_deliver(p, b);
            if (br == TD_PL_DONE && pl_batch_pack(b) < 0) {
                td_log_error("out of memory while packing states", "prospects=%zu", b->nwork);
                br = TD_PL_FATAL;
            }
        }
    }
    if (br != TD_PL_DONE) {
        pl_batch_release(p, b);
        return br;
    }
    if (p->store_started) {
        pl_batch_pack_bind(b); /* versions and bases of copied groups are known now */
        p->inflight = b;
        pl_store_start(p, b);
        return TD_PL_DONE;
    }
    br = pl_batch_settle(p, b, PL_STORE_UNTRIED, NULL);
    if (br == TD_PL_DONE) {
        td_kafka_store(p->kafka, b->msgs, b->nmsgs);
        pl_latency(p, b);
    }
    pl_batch_release(p, b);
    return br;
}
/* ------------------------------------------------------------ timer batch */

static int pl_claim_cmp(const void *a, const void *b) {
    const td_claim *x = a, *y = b;
    int c = strcmp(x->prospect_id, y->prospect_id);
    if (c) return c;
    c = strcmp(x->rule, y->rule);
    if (c) return c;
    return (x->due_at > y->due_at) - (x->due_at < y->due_at);
}

/* Groups b's claims by prospect (a prospect's claims stay in sorted order).
 * @returns 0, or -1 (out of memory). */
static int pl_group_claims(td_pipeline *p, pl_batch *b) {
    memset(b->table, 0, p->tcap * sizeof *b->table);
    b->ngroups = 0;
    for (size_t i = 0; i < b->nclaims; i++) {
        bool created;
        b->next[i] = -1;
        int32_t g = pl_group_lookup(p, b, b->claims[i].prospect_id, true, &created);
        if (g < 0) return -1;
        pl_chain(b, g, (int32_t)i, created);
    }
    return 0;
}

/* Runs b's claims (sorted) at wall time `now`: group, load, step, deliver,
 * store (on this thread), recompute conflicts. */
static td_pl_rc pl_timers_run(td_pipeline *p, pl_batch *b, td_ms now, td_ms due_by) {
    b->kind = PL_TIMERS;
    b->now = now;
    b->due_by = due_by;
    b->age = -1;
    pl_batch_open(p, b);
    if (pl_group_claims(p, b) < 0) {
        td_log_error("out of memory while grouping timers", "claims=%zu", b->nclaims);
        return TD_PL_FATAL;
    }
    pl_work_all(b);
    td_pl_rc br = pl_batch_attempt(p, b, NULL);
    if (br == TD_PL_DONE) br = pl_batch_deliver(p, b);
    if (br == TD_PL_DONE) br = pl_batch_settle(p, b, PL_STORE_UNTRIED, NULL);
    return br;
}

td_pl_rc td_pipeline_timers(td_pipeline *p, td_ms now, size_t *claimed) {
    if (claimed) *claimed = 0;
    if (!p->timers) return TD_PL_DONE;
    pl_batch *b = p->inflight == &p->bt[0] ? &p->bt[1] : &p->bt[0];
    td_ms due_by = now;
    if (p->kafka) {
        due_by = td_kafka_horizon(p->kafka, now, NULL);
        p->st.horizon_lag_ms = due_by == TD_MS_MISSING ? -1 : now - due_by;
        if (due_by < now) p->st.horizon_held_polls++;
    }
    int n = td_timers_claim_until(p->timers, now, due_by, b->claims, p->ccap);
    if (n < 0) {
        td_timers_note_error(p->timers);
        return TD_PL_FAILED;
    }
    if (claimed) *claimed = (size_t)n;
    if (n == 0) return TD_PL_DONE;
    b->nclaims = (size_t)n;
    qsort(b->claims, b->nclaims, sizeof *b->claims, pl_claim_cmp);
    td_pl_rc br = TD_PL_DONE;
    /* the event batch in flight is settled first: the timers' prospects
     * are then loaded as it stored them */
    if (p->inflight) br = pl_finish(p, NULL);
    uint64_t conflicts0 = p->st.conflicts;
    if (br == TD_PL_DONE) br = pl_timers_run(p, b, now, due_by);
    td_timers_round round = {
        .conflicts = p->st.conflicts - conflicts0, .delay = b->delay, .n = b->nclaims};
    if (br == TD_PL_DONE) {
        pl_round_sum(b, &round);
        td_timers_record(p->timers, &round, true);
        if (td_timers_ack(p->timers, b->claims, b->nclaims) < 0) {
            /* fired and stored: an unacked claim comes back after its
             * lease and is then stale (the state no longer holds it) */
            td_timers_note_error(p->timers);
            char q[600];
            td_log_warn("timer ack failed (harmless: re-claimed as stale after the lease)",
                        "claimed=%zu reason=%s", b->nclaims,
                        td_log_quote(q, sizeof q, td_timers_last_error(p->timers)));
            br = TD_PL_FAILED;
        } else {
            td_log_debug("timers polled",
                         "claimed=%zu fired=%llu stale=%llu dropped=%llu recs=%llu", b->nclaims,
                         (unsigned long long)round.fired, (unsigned long long)round.stale,
                         (unsigned long long)round.dropped, (unsigned long long)round.recs);
        }
    } else {
        /* nothing acked: the claims come back after their lease */
        round.delay = NULL;
        td_timers_record(p->timers, &round, false);
        td_log_warn("timer poll failed, claims are retried after their lease",
                    "claimed=%zu lease_ms=%d reason=%s", b->nclaims,
                    td_timers_get_conf(p->timers)->lease_ms,
                    br == TD_PL_FATAL ? "fatal"
                    : *p->stop        ? "stop"
                                      : "redis_or_output");
        if (br == TD_PL_ABANDONED && !*p->stop) br = TD_PL_FAILED;
    }
    pl_batch_release(p, b);
    return br;
}

/* ------------------------------------------------------------ event batch */

td_pl_rc td_pipeline_events(td_pipeline *p, int wait_ms) {
    if (!p->kafka) return TD_PL_DONE;
    pl_batch *b = p->inflight == &p->bt[0] ? &p->bt[1] : &p->bt[0];
    if (pl_batch_collect(p, b, wait_ms) == 0) return p->inflight ? pl_finish(p, NULL) : TD_PL_DONE;
    b->kind = PL_EVENTS;
    return pl_batch_process(p, b);
}

bool td_pipeline_busy(const td_pipeline *p) { return p->inflight != NULL; }

td_pl_rc td_pipeline_flush(td_pipeline *p) { return p->inflight ? pl_finish(p, NULL) : TD_PL_DONE; }

/* Sizes the per-rule counters for rs, at zero. */
static void pl_rules_reset(td_pipeline *p, const td_ruleset *rs) {
    free(p->r_published);
    p->nrules = rs ? td_ruleset_count(rs) : 0;
    /* one allocation, four arrays */
    p->r_published = pl_xcalloc(4 * p->nrules, sizeof *p->r_published);
    p->r_blocked = p->r_published + p->nrules;
    p->r_blocks = p->r_blocked + p->nrules;
    p->r_errors = p->r_blocks + p->nrules;
}

void td_pipeline_set_ruleset(td_pipeline *p, const td_ruleset *rs) {
    p->rs = rs;
    pl_rules_reset(p, rs);
}

void td_pipeline_get_rule_stats(const td_pipeline *p, td_pipeline_rule_stats *out) {
    *out = (td_pipeline_rule_stats){.n = p->nrules,
                                    .published = p->r_published,
                                    .blocked = p->r_blocked,
                                    .blocks = p->r_blocks,
                                    .errors = p->r_errors};
}

const char *td_dlq_class_name(td_dlq_class c) {
    static const char *const names[TD_DLQ_CLASSES] = {"malformed", "invalid", "time_bounds",
                                                      "feedback"};
    return (unsigned)c < TD_DLQ_CLASSES ? names[c] : "?";
}

const char *td_phase_name(int phase) {
    static const char *const names[TD_PHASES] = {"load",  "compute",    "deliver",
                                                 "store", "store_wait", "total"};
    return phase >= 0 && phase < TD_PHASES ? names[phase] : "?";
}

const td_pipeline_stats *td_pipeline_get_stats(const td_pipeline *p) { return &p->st; }

void td_pipeline_cache_stats(const td_pipeline *p, td_state_cache_stats *out) {
    td_state_cache_stats_get(p->cache, out);
}

uint64_t td_pipeline_one_lane_writes(const td_pipeline *p) {
    return td_redis_one_lane_writes(p->redis_store) + td_redis_one_lane_writes(p->redis);
}

uint64_t td_pipeline_verify_mismatches(const td_pipeline *p) {
    return td_redis_verify_mismatches(p->redis_store) + td_redis_verify_mismatches(p->redis);
}

/* ------------------------------------------------------------ life cycle */

td_pipeline *td_pipeline_new(const td_pipeline_conf *pc, int *exit_code) {
    td_pipeline *p = pl_xcalloc(1, sizeof *p);
    const td_config *cfg = pc->cfg;
    p->cfg = cfg;
    p->rs = pc->rs;
    p->tz = pc->tz;
    p->redis = pc->redis;
    p->kafka = pc->kafka;
    p->sink = pc->sink;
    p->timers = pc->timers;
    p->shadow = pc->shadow;
    p->stop = pc->stop ? pc->stop : &never_stop;
    p->hold = pc->kafka != NULL;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    pl_rules_reset(p, p->rs);
    for (int k = 0; k < 2; k++)
        for (int ph = 0; ph < TD_PHASES; ph++)
            td_hist_init(&p->st.phase[k][ph], td_hist_phase_le, td_hist_phase_n);
    td_hist_init(&p->st.latency, td_hist_latency_le, td_hist_latency_n);
    if (!p->kafka && (!p->sink || !p->sink->send || !p->sink->wait)) {
        td_log_error("pipeline configuration", "reason=%s", "no output: neither Kafka nor a sink");
        *exit_code = TD_EXIT_USAGE;
        goto fail;
    }
    if (p->kafka && pl_gifts_init(p, pc->gifts) < 0) {
        *exit_code = TD_EXIT_USAGE;
        goto fail;
    }
    p->out = pl_xcalloc(1, sizeof *p->out);
    p->ccap = p->timers ? (size_t)td_timers_get_conf(p->timers)->claim_batch : 0;
    size_t cap = (size_t)cfg->engine.batch_max_events;
    if (cap < p->ccap) cap = p->ccap;
    p->cap = cap;
    /* groups: one per prospect of the batch, plus one per owner an event
     * derives for: at most 2 * cap */
    p->gcap = 2 * cap;
    p->tcap = 16;
    while (p->tcap < p->gcap * 2)
        p->tcap *= 2;
    for (int i = 0; i < 2; i++)
        pl_batch_alloc(&p->bt[i], p->cap, p->gcap, p->tcap, p->ccap);
    if (cfg->engine.state_cache > 0) {
        p->cache = td_state_cache_new((size_t)cfg->engine.state_cache);
        if (!p->cache) {
            td_log_error("out of memory", "what=%s", "state cache");
            *exit_code = TD_EXIT_FATAL;
            goto fail;
        }
    }
    if (cfg->engine.pipeline && p->kafka) {
        /* the store thread's own connection (hiredis contexts are not
         * shared between threads), the daemon's: opened and checked before
         * Kafka; it reconnects by itself like the first */
        p->redis_store = pc->redis_store;
        if (!p->redis_store) {
            td_log_error("pipeline configuration", "reason=%s", "no store thread connection");
            *exit_code = TD_EXIT_USAGE;
            goto fail;
        }
        if (pthread_create(&p->store_th, NULL, pl_store_main, p) != 0) {
            td_log_error("cannot start the store thread", "reason=%s", strerror(errno));
            *exit_code = TD_EXIT_FATAL;
            goto fail;
        }
        p->store_started = true;
    }
    return p;
fail:
    td_pipeline_free(p);
    return NULL;
}

void td_pipeline_free(td_pipeline *p) {
    if (!p) return;
    if (p->store_started) {
        pthread_mutex_lock(&p->mu);
        p->quit = true;
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
        pthread_join(p->store_th, NULL);
    }
    pl_gifts_free(p); /* p->redis_store and p->gifts are the caller's */
    td_step_out_free(p->out);
    for (int i = 0; i < 2; i++) {
        pl_batch *b = &p->bt[i];
        if (b->states)
            for (size_t g = 0; g < b->ngroups; g++)
                if (b->states[g]) {
                    td_state_free(b->states[g]);
                    free(b->states[g]);
                }
        if (b->msgs)
            for (size_t m = 0; m < b->nmsgs; m++)
                rd_kafka_message_destroy(b->msgs[m]);
        pl_batch_free(b, p->gcap);
    }
    td_state_cache_free(p->cache);
    free(p->due);
    free(p->r_published);
    for (size_t i = 0; i < p->nspare; i++)
        free(p->spare[i]);
    free(p->spare);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

/* ------------------------------------------------------ without a broker */

int td_timers_poll(td_timers *t, td_redis *r, const td_ruleset *rs, td_tzdb *tz, td_ms now,
                   const td_timers_sink *sink, size_t *claimed_out) {
    if (claimed_out) *claimed_out = 0;
    td_config *cfg = td_config_default();
    if (!cfg) return TD_ERR;
    cfg->engine.pipeline = false;
    cfg->engine.state_cache = 0;
    cfg->engine.batch_max_events = td_timers_get_conf(t)->claim_batch;
    /* the timers' overdue policy is the late policy's old name */
    cfg->time.late_policy =
        td_timers_get_conf(t)->overdue_policy == TD_OVERDUE_DROP ? TD_LATE_DROP : TD_LATE_PUBLISH;
    td_pipeline_conf pc = {.cfg = cfg, .rs = rs, .tz = tz, .redis = r, .sink = sink, .timers = t};
    int exit_code = 0;
    td_pipeline *p = td_pipeline_new(&pc, &exit_code);
    td_pl_rc br = p ? td_pipeline_timers(p, now, claimed_out) : TD_PL_FATAL;
    td_pipeline_free(p);
    td_config_free(cfg);
    return br == TD_PL_DONE ? TD_OK : TD_ERR;
}
