/*
 * td_timers.h - durable timers: the Redis timer index, claiming with leases,
 * and firing (see docs/timers.md for the semantics and the argument).
 *
 * The prospect state (st->timers, written by td_redis_store) is the
 * authority on which timers are pending. The index only says *when to look*:
 *
 *   <prefix>:t:<shard>      sorted set, one per shard (shard = hash of the
 *                           prospect id mod `shards`): member
 *                           "<prospect_id>\x1f<rule_id>", score = due ms
 *   <prefix>:t:heads        sorted set of shards: member = the shard number
 *                           (decimal), score = a LOWER BOUND of the earliest
 *                           due time in that shard
 *   <prefix>:t:claimed      sorted set of claimed members, score = lease end ms
 *
 * The heads invariant: every member of a shard has a score >= its shard's
 * head (a shard with members has a head). A head may be too early (harmless:
 * the claim looks, finds nothing and corrects it) but never too late.
 *
 * Arming: every state write (td_redis_store_diff, and td_redis_store, once
 * td_redis_set_timer_shards was called) writes the state and, in the same
 * atomic unit (MULTI/EXEC or one Lua script, on one Redis node), ZADDs the
 * timers that are new or changed, lowers the shard's head (ZADD heads LT)
 * and ZREMs those that were disarmed, by diffing the stored timer.* fields
 * against the new ones.
 *
 * Claiming: td_timers_claim runs one Lua script that re-leases members whose
 * lease expired (their claimer died), re-computes the heads of a small
 * round-robin window of shards (the safety net: members written without a
 * head, by an older touchd or by hand), then asks the heads which shards have
 * something due (score <= now) and moves up to claim_batch due members from
 * those into the claimed set with a lease, re-computing each visited shard's
 * head. An idle poll is two ZRANGEBYSCOREs plus the window (a few shards).
 * td_timers_ack removes claimed members, but only those still holding the
 * lease the caller got (a member re-claimed by someone else is left alone).
 *
 * Firing is not here: this module claims and acks and knows nothing of the
 * engine. The pipeline (src/app/td_pipeline.h) runs the claims as a batch
 * like any other: group by prospect, load, step the engine with
 * TD_TRIG_TIMER triggers built from the state's pending timer, publish and
 * wait for the acknowledgements, store the states with the one write path
 * (td_redis_store_diff, which disarms the fired timers in the state and in
 * the index), then td_timers_ack, and reports through td_timers_record.
 *
 * Redis Cluster is not supported (the state script touches the prospect's
 * hash and a shard key, which are in different slots): see docs/timers.md.
 *
 * @locality one thread (the daemon's main loop); a td_timers is not shared.
 */
#ifndef TD_TIMERS_H
#define TD_TIMERS_H

#include <stdbool.h>

#include "td_base.h"
#include "td_prom.h"
#include "td_redis.h"

typedef enum td_overdue_policy {
    TD_OVERDUE_FIRE_LATE = 0, /* an overdue timer fires, however late */
    TD_OVERDUE_DROP = 1       /* overdue by more than drop_older_than: disarmed, counted */
} td_overdue_policy;
const char *td_overdue_policy_name(td_overdue_policy p); /* "fire_late", "drop" */

typedef struct td_timers_conf {
    int shards;      /* 4096: number of shard keys (1..65536); never shrink it */
    int poll_ms;     /* 100: pause between polls when nothing was due */
    int claim_batch; /* 500: members claimed per poll at most (1..2000) */
    int lease_ms;    /* 30000: a claim not acked by then is claimable again */
    int sweep_ms;    /* 60000: the safety net: every shard's head is re-computed at least
                            once per sweep_ms of polls (due timers are found through the
                            heads at every poll, whatever sweep_ms) */
    td_overdue_policy overdue_policy; /* TD_OVERDUE_FIRE_LATE */
    td_ms drop_older_than;            /* with TD_OVERDUE_DROP: > 0 */
} td_timers_conf;
void td_timers_conf_default(td_timers_conf *c);
/* false with a message in err when a value is out of range. */
bool td_timers_conf_check(const td_timers_conf *c, char *err, size_t errcap);

/* ---- the index layout (shared with td_redis_store.c) ---- */

/* The shard of a prospect (FNV-1a 64 of the id, mod shards). Stable across
 * versions and instances: every instance on one Redis must use the same
 * `shards`. */
uint32_t td_timers_shard(const char *prospect_id, uint32_t shards);
/* "<prefix>:t:<shard>" into buf; returns the length (like snprintf). */
size_t td_timers_shard_key(const char *prefix, uint32_t shard, char *buf, size_t cap);
/* "<prefix>:t:claimed" into buf; returns the length. */
size_t td_timers_claimed_key(const char *prefix, char *buf, size_t cap);
/* "<prefix>:t:heads" into buf; returns the length. */
size_t td_timers_heads_key(const char *prefix, char *buf, size_t cap);
#define TD_TIMER_SEP '\x1f' /* between prospect id and rule id in a member */

/*
 * Makes the state writes (td_redis_store and td_redis_store_diff) maintain
 * the timer index in `shards` shard keys (0: off, the default; nothing but
 * the state hash is written). Implemented in td_redis_store.c.
 */
void td_redis_set_timer_shards(td_redis *r, uint32_t shards);

/* ---- claiming ---- */

typedef struct td_claim {
    char prospect_id[TD_ID_MAX + 1];
    char rule[TD_RULE_ID_MAX + 1];
    td_ms due_at;      /* the score it was claimed at; TD_MS_MISSING when re-leased
                          after an expired lease (the state says when it was due) */
    td_ms lease_until; /* the lease (the ack token) */
} td_claim;

typedef struct td_timers td_timers;

/* A client with its own Redis connection (the conf's host, port, auth, db,
 * timeouts and key prefix are copied). NULL with a message on a bad conf. A
 * failed first connect is not an error. */
td_timers *td_timers_new(const td_redis_conf *rconf, const td_timers_conf *tconf, char *err,
                         size_t errcap);
void td_timers_free(td_timers *t);
/* Start-up check: connects and reads one key of the index (EXISTS of the
 * claimed set). @returns TD_OK, or TD_ERR (message in td_timers_last_error). */
int td_timers_check(td_timers *t);
const char *td_timers_last_error(const td_timers *t);
const td_timers_conf *td_timers_get_conf(const td_timers *t);

/*
 * Claims up to `max` (<= claim_batch) members due at `now` from the shards
 * whose head is due, after re-leasing expired claims and re-computing the
 * heads of the next safety-net window of shards (ceil(shards * poll_ms /
 * sweep_ms) shards, round robin; during the first full round after
 * td_timers_new, ceil(shards * poll_ms / 500) shards, so that members
 * written without heads, by an older version, are found within ~500 ms of
 * polls after an upgrade). The lease ends at now + lease_ms.
 * @returns the number claimed (>= 0) into out[], or TD_ERR (the message in
 * td_timers_last_error; members possibly claimed are re-claimable after
 * their lease).
 */
int td_timers_claim(td_timers *t, td_ms now, td_claim *out, size_t max);
/* Like td_timers_claim, but takes only members due at or before due_by
 * (clamped to now): the event-time horizon while the input is behind (a
 * backlog), so that no timer fires before the events that precede it in
 * time are applied. Leases still run on the wall clock `now`. */
int td_timers_claim_until(td_timers *t, td_ms now, td_ms due_by, td_claim *out, size_t max);
/* Like td_timers_claim with an explicit safety-net window [first, first +
 * count) (count 0: the heads alone). */
int td_timers_claim_range(td_timers *t, td_ms now, uint32_t first, uint32_t count, td_claim *out,
                          size_t max);

/* Removes claimed members still holding the lease they were claimed with.
 * @returns how many were removed (>= 0), or TD_ERR. */
int td_timers_ack(td_timers *t, const td_claim *c, size_t n);

/*
 * Reads Redis' zset-max-listpack-entries/-value (CONFIG GET; silently 0 when
 * CONFIG is not allowed) and the pending count, and writes advice into msg:
 * the number of pending timers the index holds compactly (listpack) with this
 * shard count. @returns 1 when the settings look too small for the current
 * population or for long members (a warning), 0 when fine or unknown, and
 * TD_ERR on a connection error.
 */
int td_timers_redis_advice(td_timers *t, char *msg, size_t cap);

/* Members pending in the index (sum of ZCARD over the shards) and claimed. */
int td_timers_count(td_timers *t, int64_t *pending, int64_t *claimed);

#define TD_TIMERS_DELAY_BUCKETS 1001
#define TD_TIMERS_DELAY_BUCKET_MS 10
typedef struct td_timers_stats {
    uint64_t polls;      /* claim calls */
    uint64_t swept;      /* shards whose head the safety-net window re-computed */
    uint64_t claimed;    /* members claimed (re-leased ones included) */
    uint64_t reclaimed;  /* of which re-leased after an expired lease */
    uint64_t fired;      /* timer steps run (the rule evaluated) */
    uint64_t recs;       /* recommendations published by timer steps */
    uint64_t stale;      /* claimed but no longer pending in the state (ignored) */
    uint64_t dropped;    /* overdue beyond drop_older_than: disarmed, not fired */
    uint64_t conflicts;  /* compare-and-set conflicts (recomputed) */
    uint64_t acked;      /* claims removed after the fire was durable */
    uint64_t errors;     /* polls that failed (Redis or sink) */
    td_ms max_delay_ms;  /* largest (claim time - due time) of a fired timer */
    td_ms last_delay_ms; /* largest delay of the last poll that fired */
    /* firing delays (claim time - due time) of fired timers: 10 ms buckets,
     * the last one counts every delay >= 10 s */
    uint64_t delay_hist[TD_TIMERS_DELAY_BUCKETS];
    /* the same delays in seconds, Prometheus buckets (metrics) */
    td_hist delay;
} td_timers_stats;
const td_timers_stats *td_timers_get_stats(const td_timers *t);
/* The p-quantile (0 < p <= 1) of the firing delays, as the upper bound of
 * its 10 ms bucket (so "p99 <= 40 ms"); -1 when nothing fired; 10000 and
 * more mean ">= 10 s" (see max_delay_ms). */
td_ms td_timers_delay_quantile(const td_timers_stats *s, double p);

/* ---- firing counters ---- */

/* What one firing round (the pipeline's timer batch) came to. */
typedef struct td_timers_round {
    uint64_t fired, stale, dropped, recs; /* of the computation that was stored */
    uint64_t conflicts;                   /* compare-and-set conflicts recomputed */
    td_ms max_delay;                      /* largest delay of a fired claim */
    const td_ms *delay;                   /* per claim: its firing delay, -1: not fired */
    size_t n;
} td_timers_round;

/* Adds a round to the counters: everything when ok (stored; the ack is
 * counted by td_timers_ack), else only its conflicts and one error. */
void td_timers_record(td_timers *t, const td_timers_round *r, bool ok);
/* Counts a failed poll (claim or ack). */
void td_timers_note_error(td_timers *t);

#endif
