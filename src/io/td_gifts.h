/*
 * td_gifts.h - the gift register (PLAYBOOK 5: "keep a register of every
 * gift: nature, value, recipient, date"; docs/gifts.md).
 *
 * Every applied gift.sent event becomes one register record, appended to a
 * Redis stream per year and, optionally, produced to a Kafka topic:
 *
 *   <prefix>:gifts:<YYYY>            stream, one entry per gift; YYYY is the
 *                                    prospect's LOCAL calendar year of
 *                                    occurred_at (the year td_state counts
 *                                    gifts.year_count/spend in, and the year
 *                                    a per-recipient tax cap applies to)
 *   <prefix>:gifts:seen:<event_id>   "1" with a TTL of retention_days: the
 *                                    event was registered (idempotence)
 *
 * Entry fields: event_id prospect_id owner_id occurred_at kind value_eur
 * items wrapping (ids only: the event's free-text `description` never
 * reaches the register). Absent optional fields are absent from the entry.
 *
 * Exactly once: one Lua script (SCRIPT LOAD once, EVALSHA, re-loaded on
 * NOSCRIPT) per gift does SET seen NX EX retention and XADDs only when the
 * SET succeeded; all the gifts of a batch go in one pipeline. The daemon
 * writes the register after the batch's recommendations are acknowledged
 * and before its states are stored, so a crash in between re-runs the batch
 * and the script drops what was already appended.
 *
 * The writer has its own Redis connection (like td_timers), so the register
 * never interleaves with a state pipeline. Redis Cluster: the seen key and
 * the stream are in different slots (not cluster-legal, as the timer index).
 *
 * @locality one thread; a td_gifts is not shared.
 */
#ifndef TD_GIFTS_H
#define TD_GIFTS_H

#include <signal.h>

#include "td_base.h"
#include "td_config.h"
#include "td_event.h"
#include "td_redis.h"
#include "td_state.h"

/* One register record. */
typedef struct td_gift_rec {
    char event_id[TD_ID_MAX + 1];
    char prospect_id[TD_ID_MAX + 1];
    char owner_id[TD_ID_MAX + 1]; /* "" when unknown */
    td_ms occurred_at;
    int year;                        /* the prospect's local calendar year of occurred_at */
    td_gift_kind kind;               /* TD_GK_NONE when the event had none */
    td_dec value_eur;                /* TD_DEC_MISSING when the event had none */
    int64_t items;                   /* TD_INT_MISSING when the event had none */
    char wrapping[TD_SHORT_MAX + 1]; /* "" when none */
} td_gift_rec;

/*
 * The record of an applied gift.sent event. `st` is the prospect's state the
 * event was applied to (its timezone gives the local year, falling back to
 * set->default_timezone, then UTC, as td_state does; its owner is used when
 * the event has none); tz and set may be NULL (UTC year).
 */
void td_gift_rec_from_event(td_gift_rec *r, const td_event *ev, const td_state *st, td_tzdb *tz,
                            const td_settings *set);

/* The local calendar year of `t` for a prospect in `zone` ("" or NULL: the
 * default zone of set, then UTC). */
int td_gift_local_year(td_tzdb *tz, const char *zone, const td_settings *set, td_ms t);

/* The record as one JSON object (the Kafka topic's value, `touchd gifts
 * --json`): {"event_id":..,"prospect_id":..,"owner_id":..,"occurred_at":..,
 * "year":..,"kind":..,"value_eur":"24.9","items":1,"wrapping":..}; absent
 * fields are omitted. value_eur is a decimal string (exact). */
int td_gift_rec_json(const td_gift_rec *r, td_buf *out);

/* Formats a td_dec exactly ("24.9", "73", "0.0025"); returns the length. */
size_t td_gift_dec_format(td_dec d, char *buf, size_t cap);
/* Parses what td_gift_dec_format writes (also "24.90"). TD_OK or TD_ERR. */
int td_gift_dec_parse(const char *s, size_t len, td_dec *out);

/* "<prefix>:gifts:<YYYY>" and "<prefix>:gifts:seen:<event_id>" into buf;
 * return the length (like snprintf). */
size_t td_gifts_stream_key(const char *prefix, int year, char *buf, size_t cap);
size_t td_gifts_seen_key(const char *prefix, const char *event_id, char *buf, size_t cap);

/* ---- the Redis register ---- */

#define TD_GIFTS_RETENTION_DAYS_DEFAULT 400

typedef struct td_gifts td_gifts;

/* A writer/reader with its own connection (the conf's host, port, auth, db,
 * timeouts and key prefix are copied). retention_days: TTL of the seen keys
 * (1..36500). NULL with a message on a bad conf; a failed first connect is
 * not an error (the next call reconnects, with backoff). */
td_gifts *td_gifts_new(const td_redis_conf *rconf, int retention_days, char *err, size_t errcap);
void td_gifts_free(td_gifts *g);
/* Start-up check: connects and reads one probe key of the register's key
 * space (EXISTS <prefix>:gifts:seen:touchd:start-check). @returns TD_OK, or
 * TD_ERR (message in td_gifts_last_error). */
int td_gifts_check(td_gifts *g);
const char *td_gifts_last_error(const td_gifts *g);

/*
 * Appends recs[0..n) to the register, each at most once ever (per event id,
 * within retention_days): one pipeline of EVALSHA. *added (may be NULL)
 * receives how many were new. @returns TD_OK, or TD_ERR (connection,
 * timeout, script error: unknown which were appended; calling again with the
 * same records is safe).
 */
int td_gifts_write(td_gifts *g, const td_gift_rec *recs, size_t n, size_t *added);

/*
 * Reads the register of `year` (XRANGE, in pages) into *out (malloc'ed, the
 * caller frees), appending to *n records; only prospect `prospect_id` when
 * not NULL. @returns TD_OK or TD_ERR.
 */
int td_gifts_read(td_gifts *g, int year, const char *prospect_id, td_gift_rec **out, size_t *n,
                  size_t *cap);

/* The years that have a register stream (SCAN), sorted, into years[0..max).
 * @returns how many (>= 0), or TD_ERR. */
int td_gifts_years(td_gifts *g, int *years, size_t max);

/* ---- the optional Kafka topic ---- */

typedef struct td_gifts_kafka td_gifts_kafka;

/*
 * A producer for cfg->kafka.gift_register_topic on `bootstraps` (the
 * daemon's: td_kafka_bootstraps), idempotent with acks=all and the
 * kafka.producer passthrough properties. NULL with a message in err.
 */
td_gifts_kafka *td_gifts_kafka_new(const td_config *cfg, const char *bootstraps, char *err,
                                   size_t errcap);
void td_gifts_kafka_free(td_gifts_kafka *k);
/* Starts a round: forgets the previous round's records. */
void td_gifts_kafka_begin(td_gifts_kafka *k);
/* Enqueues one record (JSON, key = prospect id). @returns 0, or -1 (fatal). */
int td_gifts_kafka_send(td_gifts_kafka *k, const td_gift_rec *r);
/* Waits until every record of the round is acknowledged, re-sending failed
 * ones. Once *stop is set, gives up after stop_grace_ms.
 * @returns 0, -1 (fatal producer error) or -2 (gave up on stop). */
int td_gifts_kafka_wait(td_gifts_kafka *k, const volatile sig_atomic_t *stop, int stop_grace_ms);
/* Records acknowledged since start. */
uint64_t td_gifts_kafka_acked(const td_gifts_kafka *k);

#endif
