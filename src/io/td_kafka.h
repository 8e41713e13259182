/*
 * td_kafka.h - touchd's Kafka edge: the input consumer group, the idempotent
 * output producer, the dead-letter producer and the embedded broker.
 *
 * Consumer: a group member on kafka.input_topics with cooperative-sticky
 * assignment (incremental rebalances), enable.auto.offset.store=false (the
 * daemon calls td_kafka_store only once a batch's state and recommendations
 * are durable), auto commit of those stored offsets every second, and a final
 * synchronous commit in td_kafka_close.
 *
 * Producer: enable.idempotence=true, acks=all. Output and dead-letter
 * messages are sent in "rounds": td_kafka_send_* enqueue (retrying on a full
 * local queue), td_kafka_round_wait waits for the delivery report of every
 * message of the round and re-sends those whose delivery failed for a
 * transient reason, until all are acknowledged. Nothing of a round is
 * considered delivered until td_kafka_round_wait returned TD_OK.
 *
 * Hold: while the daemon cannot make progress (Redis down), it calls
 * td_kafka_hold to pause fetching on every assigned partition and keeps
 * calling td_kafka_keepalive so the group membership (max.poll.interval.ms)
 * and rebalances are served; td_kafka_release resumes.
 *
 * Embedded broker: with kafka.brokers = "embedded", td_kafka_new first starts
 * librdkafka's mock cluster (rdkafka_mock.h) on a dedicated handle, one
 * broker on 127.0.0.1, creates the input, output and dead-letter topics and
 * writes the bootstrap address to kafka.bootstrap_file.
 *
 * Fatal errors (rd_kafka_fatal_error, e.g. the idempotent producer's) set a
 * flag that every call checks: td_kafka_fatal() then returns the reason and
 * the daemon exits (code 4) as librdkafka documents: the instance cannot be
 * used any more.
 *
 * @locality the daemon's main thread for every function; the callbacks run
 * on the main thread too (served by rd_kafka_poll/consumer_poll/flush),
 * except the log and error callbacks which librdkafka may call from its
 * own threads (they only log and set atomic flags).
 */
#ifndef TD_KAFKA_H
#define TD_KAFKA_H

#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "td_config.h"

typedef struct td_kafka td_kafka;

/*
 * Starts the embedded broker (when configured), the consumer (subscribed to
 * the input topics) and the producer. Borrows cfg for its lifetime.
 * @returns the handle, or NULL with a message in err.
 */
td_kafka *td_kafka_new(const td_config *cfg, char *err, size_t errcap);

/* Commits stored offsets (synchronously), closes the consumer (leaving the
 * group), flushes the producer (up to timeout_ms). Safe to call twice. */
void td_kafka_close(td_kafka *k, int timeout_ms);

/* Destroys every handle, the embedded broker last (and removes the
 * bootstrap file). Calls td_kafka_close first when not done. */
void td_kafka_free(td_kafka *k);

/* The bootstrap address in use ("127.0.0.1:39127" for the embedded broker). */
const char *td_kafka_bootstraps(const td_kafka *k);

/* The fatal error text, or NULL while none happened. */
const char *td_kafka_fatal(td_kafka *k);

/*
 * The next input message, waiting up to timeout_ms; NULL on timeout. Error
 * events are logged and consumed here (never returned). The caller owns the
 * message (rd_kafka_message_destroy) and must keep it until its offset is
 * stored.
 */
rd_kafka_message_t *td_kafka_poll(td_kafka *k, int timeout_ms);

/* ---- output rounds ---- */

/* Starts a new round (the previous one must have been waited for). */
void td_kafka_round_begin(td_kafka *k);
/* What a message of the output is: its topic and its touchd-kind header. */
typedef enum td_kafka_kind {
    TD_KK_RECOMMENDATION = 0, /* output topic, "recommendation" */
    TD_KK_WITHDRAWAL = 1,     /* output topic, "withdrawal" */
    TD_KK_PLAN = 2            /* plan topic (kafka.plan_topic), "plan"; a NULL val is a tombstone */
} td_kafka_kind;
/* Enqueues one message of the output (key = prospect id) with the header
 * touchd-kind; key and payload are copied. @returns 0, or -1 on a fatal
 * error (or a plan with the plan topic off). */
int td_kafka_send_out(td_kafka *k, td_kafka_kind kind, const char *key, size_t klen,
                      const char *val, size_t vlen);
/* td_kafka_send_out of a recommendation. */
int td_kafka_send_rec(td_kafka *k, const char *key, size_t klen, const char *val, size_t vlen);
/* Whether the plan topic is on. */
bool td_kafka_has_plans(const td_kafka *k);
/* Enqueues the original bytes and key of `src` on the dead-letter topic with
 * touchd-reason / -field / -source-topic / -source-partition /
 * -source-offset headers. @returns 0, or -1 on a fatal error. */
int td_kafka_send_dlq(td_kafka *k, const rd_kafka_message_t *src, const char *reason,
                      const char *field);
/*
 * Waits until every message of the round is acknowledged, re-sending those
 * whose delivery failed. While it waits longer than a second the consumer is
 * held and kept alive (td_kafka_hold/keepalive), so a long broker outage does
 * not cost the group membership. Once *stop is nonzero (shutdown requested)
 * the wait gives up after stop_grace_ms more.
 * @returns 0 (all acknowledged), -1 (fatal error) or -2 (gave up on stop:
 * the caller must not store the batch's offsets).
 */
int td_kafka_round_wait(td_kafka *k, const volatile sig_atomic_t *stop, int stop_grace_ms);
/* Messages in the current round (sent). */
size_t td_kafka_round_size(const td_kafka *k);

/* ---- offsets ---- */

/* Stores (for the next commit) offset+1 of the last message of every
 * (topic, partition) among msgs, which must be in consumed order. Partitions
 * no longer assigned are skipped (logged at debug). */
void td_kafka_store(td_kafka *k, rd_kafka_message_t *const *msgs, size_t n);

/* ---- the event-time horizon (docs/timers.md "Backlogs") ---- */

/* Records that an event of time t was read from m's partition (the
 * pipeline calls it for every valid event it decodes). */
void td_kafka_note_time(td_kafka *k, const rd_kafka_message_t *m, td_ms t);
/* How far timers may fire without overtaking the input: `wall` when every
 * assigned partition is caught up (it reported its end, or its last message
 * was the last one the broker knew of), else 1 ms before the latest event
 * time read from the earliest partition that is behind; TD_MS_MISSING
 * (nothing fires) when one is behind and has delivered nothing since it was
 * assigned, or when no partition is assigned. *behind (may be NULL)
 * receives the number of partitions behind. */
td_ms td_kafka_horizon(const td_kafka *k, td_ms wall, int *behind);

/* ---- hold (back-pressure from Redis) ---- */

void td_kafka_hold(td_kafka *k);
/* Serves the consumer (rebalances, heartbeats) for up to timeout_ms while
 * paused; messages fetched before the pause took effect are kept and
 * returned by td_kafka_poll after td_kafka_release. */
void td_kafka_keepalive(td_kafka *k, int timeout_ms);
void td_kafka_release(td_kafka *k);

/* ---- counters (since start) ---- */
typedef struct td_kafka_stats {
    uint64_t consumed;
    uint64_t recs_sent, recs_acked; /* every message of the output topics */
    uint64_t wds_sent, plans_sent;  /* of which withdrawals, plans (and tombstones) */
    uint64_t dlq_sent, dlq_acked;
    uint64_t resent;     /* messages re-sent after a failed delivery */
    uint64_t queue_full; /* times the local producer queue was full */
    uint64_t rebalances;
    int assigned; /* partitions assigned now */
} td_kafka_stats;
void td_kafka_get_stats(const td_kafka *k, td_kafka_stats *out);

/* The consumer lag of an assigned partition: the high watermark librdkafka
 * last learnt from the broker (fetch responses: no request is made) minus
 * the consumer's position (the next offset it fetches). */
typedef struct td_kafka_lag {
    char topic[128];
    int32_t partition;
    int64_t lag;
} td_kafka_lag;
/* Fills out[] (up to cap) for the assigned partitions whose position and
 * watermark are known. @returns how many were written. */
size_t td_kafka_lags(td_kafka *k, td_kafka_lag *out, size_t cap);

#endif
