/*
 * td_redis.h - prospect state in Redis: batched loads, atomic conditional
 * writes, reconnection.
 *
 * Key layout (inspectable with redis-cli):
 *   touchd:p:{<prospect_id>}   hash, td_state's flat form (td_state_serialize),
 *                              field "v" is the version used for compare-and-set
 * (the braces make the prospect id a Redis Cluster hash tag). The key prefix
 * ("touchd") is configurable so several deployments can share a server.
 *
 * A batch load is one pipeline of HGETALLs. Every write is, per prospect, a
 * compare-and-set: written only when the stored version equals the expected
 * one, with the version bumped; a mismatch is reported per prospect
 * (TD_REDIS_CONFLICT) and the caller reloads and recomputes that prospect.
 * There are two write calls:
 *   - td_redis_store_diff (the daemon's one write path: every batch of the
 *     pipeline, events and timers alike): only the fields that changed. Up to a chunk (64 prospects): one EVALSHA of the
 *     diff script. More: per chunk of 64, WATCH + HGET v, then the writes as
 *     plain commands in MULTI/EXEC, on one connection or two
 *     (td_redis_set_lanes); a chunk whose EXEC aborted (another writer) is
 *     written by the diff script instead.
 *   - td_redis_store (tools and tests; the daemon does not use it): the
 *     whole hash replaced by one EVALSHA of the state script per prospect.
 * The scripts are loaded once and re-loaded on NOSCRIPT; with the timer
 * index on (td_redis_set_timer_shards, td_timers.h) every write keeps the
 * index in the same atomic unit. Connection errors and timeouts fail the
 * whole call (TD_ERR) after closing the connection; the next call
 * reconnects with exponential backoff (see td_redis_conf; the connection is
 * a td_rconn). No call ever blocks longer than the configured timeouts.
 *
 * Code: td_redis_conn.c (client, connection, I/O), td_redis_load.c,
 * td_redis_store.c (both writes), td_redis_verify.c (verify_writes).
 *
 * @locality a td_redis is used by one thread at a time, and each thread
 * that talks to Redis has its own: the daemon's main thread uses one (loads,
 * timer writes, and the event writes when engine.pipeline is off or a batch
 * is retried), its store thread another (the event writes of the pipeline);
 * the second connection of td_redis_set_lanes belongs to its td_redis.
 * td_redis_one_lane_writes and td_redis_verify_mismatches may be read from
 * any thread.
 */
#ifndef TD_REDIS_H
#define TD_REDIS_H

#include "td_base.h"
#include "td_kvs.h"
#include "td_state.h"

typedef struct td_redis_conf {
    const char *host; /* "127.0.0.1", or a unix socket path when unix_socket */
    int port;         /* 6379 */
    bool unix_socket;
    const char *password;   /* NULL: no AUTH */
    const char *username;   /* NULL: AUTH with password only */
    int db;                 /* SELECT db when != 0 */
    int connect_timeout_ms; /* 2000 */
    int command_timeout_ms; /* 5000 */
    int backoff_min_ms;     /* 100: first reconnect delay */
    int backoff_max_ms;     /* 5000: cap of the exponential backoff */
    const char *key_prefix; /* "touchd" */
    bool verify_writes;     /* false: td_redis_store_diff reads back what it wrote */
} td_redis_conf;
void td_redis_conf_default(td_redis_conf *c);
/* dst becomes a copy of src whose strings (host, password, username,
 * key_prefix) are its own. @returns TD_OK, or TD_ERR (out of memory: dst
 * holds nothing to release). */
int td_redis_conf_dup(td_redis_conf *dst, const td_redis_conf *src);
/* Frees the strings of a td_redis_conf_dup copy, wiping the password first;
 * the struct is left zeroed. */
void td_redis_conf_release(td_redis_conf *c);

typedef struct td_redis td_redis;

/* Creates a client (copies the conf strings) and tries to connect once; a
 * failed first connect is not an error (calls reconnect later), but a bad
 * conf is: NULL with a message in err. */
td_redis *td_redis_new(const td_redis_conf *conf, char *err, size_t errcap);
void td_redis_free(td_redis *r);

/* true when connected now. */
bool td_redis_connected(const td_redis *r);
/* Names the client in start checks and authentication logs ("main",
 * "store"; its second connection is "<name>-2"); the default is its
 * server's "redis HOST:PORT". name is copied (at most 31 bytes). */
void td_redis_set_name(td_redis *r, const char *name);
/*
 * Start-up check: connects, and reads one probe key (<prefix>:p:{touchd:
 * start-check}, HGETALL: the store's own read) on the client's connection,
 * and, with two lanes (td_redis_set_lanes), opens the second connection now
 * instead of at the first large write and reads it there too: so a server
 * that refuses commands (a missing or wrong password: NOAUTH, WRONGPASS; an
 * ACL user without HGETALL or the key pattern: NOPERM; maxclients) is found
 * before anything runs. @returns TD_OK, or TD_ERR with the message in
 * td_redis_last_error and *failed (when not NULL) the name of the connection
 * that failed (td_redis_set_name).
 */
int td_redis_check(td_redis *r, const char **failed);

/*
 * Authentication, process-wide: every Redis connection of the process
 * (states, the store thread's, their second connections, the timers', the
 * gift register's) reports each reply it reads. An authentication error
 * (NOAUTH, WRONGPASS, an AUTH refused because the user has no password)
 * counts in td_redis_auth_errors and marks its connection as failing until
 * its next reply that is not one; td_redis_auth_failing is true while any
 * connection is failing: what /readyz is to report as not ready (the HTTP
 * listener does not exist yet). With td_redis_auth_log(true) (the daemon,
 * once its start checks passed) the first failing connection logs
 * msg="redis authentication failed" (its name, the code, what to fix) and
 * the last one to recover msg="redis authentication works again": one line
 * per episode, not one per batch. Any thread.
 */
/* What a Redis error message (td_redis_last_error, td_timers_last_error,
 * td_gifts_last_error) means for whoever runs touchd: *code is "NOAUTH",
 * "WRONGPASS", "AUTH_WITHOUT_PASSWORD", "NOPERM", "MAXCLIENTS", or "-" for
 * none of these (unreachable, a timeout); @returns what to change, naming the
 * configuration keys (static text, never a value). */
const char *td_redis_advice(const char *err, const char **code);
uint64_t td_redis_auth_errors(void);
bool td_redis_auth_failing(void);
void td_redis_auth_log(bool on);
/* Last error text ("" when none). */
const char *td_redis_last_error(const td_redis *r);

/*
 * Loads n prospects in one pipeline. states[i] must be initialised by the
 * caller (td_state_init with ids[i]); fields found in Redis are set into it,
 * an absent key leaves it fresh (version 0).
 * @returns TD_OK, or TD_ERR (connection/timeout/protocol/malformed hash; the
 * message is in td_redis_last_error) with states unspecified.
 */
int td_redis_load(td_redis *r, td_state *states, size_t n);
/* The same for states held by pointer (the daemon's). */
int td_redis_load_ptrs(td_redis *r, td_state *const *states, size_t n);

enum { TD_REDIS_STORED = 0, TD_REDIS_CONFLICT = 1 };
/*
 * The full-hash write (the timer poller's): stores n prospects in one
 * pipeline of EVALSHA calls of the state script, each atomic and
 * conditional, replacing the whole hash: written
 * only when the stored version equals expected_version[i]; on success the
 * state's version becomes expected_version[i] + 1 (set in states[i]) and
 * result[i] = TD_REDIS_STORED, else result[i] = TD_REDIS_CONFLICT.
 * @returns TD_OK (results valid), or TD_ERR (nothing can be assumed about
 * which writes happened: the caller retries the batch, which is safe because
 * a write that did happen bumped the version and the dedup ring/positions
 * make re-applied events no-ops after a reload).
 */
int td_redis_store(td_redis *r, td_state *states, const int64_t *expected_version, size_t n,
                   int *result);

/*
 * The diff write (the daemon's): like td_redis_store, but sends only what
 * changed. Up to a chunk (64 prospects), one EVALSHA of the diff
 * script; more, WATCH + HGET v and then plain commands in MULTI/EXEC per
 * chunk (on two connections with td_redis_set_lanes), and the diff script
 * for the chunks whose EXEC aborted (contention). bases[i] must be the
 * flat form (td_kvs_capture) of the state exactly as stored at
 * expected_version[i] (what td_redis_load gave, or what the last successful
 * store wrote), and nows[i] the flat form of states[i], which the caller
 * keeps as the next base when the write succeeds. Fields that changed are set,
 * fields that disappeared are deleted, and (with the timer index on) only
 * timers that were armed, re-armed or disarmed touch the index. The same
 * compare-and-set on the version makes it safe: a hash that moved on since
 * the base conflicts and is reloaded. Unlike td_redis_store, the states are
 * only read (through pointers, so the caller's other threads may read them
 * meanwhile): on TD_REDIS_STORED the caller sets states[i]'s version to
 * expected_version[i] + 1 itself.
 */
int td_redis_store_diff(td_redis *r, const td_state *const *states, const td_kvs *bases,
                        const td_kvs *nows, const int64_t *expected_version, size_t n, int *result);

/* Connections of td_redis_store_diff's WATCH path: 1 (the default) or 2 (a
 * second connection, opened by the first write of more than one chunk of
 * prospects, runs every other chunk, so Redis runs one chunk while this
 * thread turns the other around). */
void td_redis_set_lanes(td_redis *r, unsigned lanes);
/* Writes of more than one chunk that ran on the first connection alone
 * although two are set: the second could not connect (it was in its
 * backoff, or refused). Any thread may read it. */
uint64_t td_redis_one_lane_writes(const td_redis *r);
/*
 * With conf.verify_writes, each successful td_redis_store_diff reads back
 * (HGETALL, one pipeline) every hash it stored, loads it as a reload would
 * (fields parsed, unknown ones ignored) and compares that state's flat form
 * with nows[i]: the same fields with the same values, and a version of at
 * least expected_version[i] + 1 (a later writer may have moved it on). A
 * difference means the base given for that prospect was not what Redis held:
 * the write succeeded (it was a compare-and-set on the version) but left the
 * hash other than the state. Each differing hash counts once; the text of
 * the last one (key, field, both values) is kept. Costs a round trip and a
 * read of every written hash: for tests and for chasing a suspected bug. A
 * writer other than touchd that changes fields between the write and the
 * read back is reported too. A read back that fails (Redis lost) fails the
 * call like any Redis error: its writes may have happened, and the caller's
 * retry finds them as conflicts and reloads, as after any failed write.
 */
/* Hashes that differed since r was created (any thread may read it). */
uint64_t td_redis_verify_mismatches(const td_redis *r);
/* Copies the last difference's text into buf ("" if none); the thread that
 * writes through r only. */
void td_redis_verify_last(const td_redis *r, char *buf, size_t cap);

/* Tests only: fn(ud) runs in td_redis_store_diff between the version
 * check (WATCH + HGET) and the MULTI/EXEC, so a test can play the concurrent
 * writer that makes EXEC abort. NULL removes it. */
void td_redis_set_race_hook(td_redis *r, void (*fn)(void *ud), void *ud);
/* Tests only: each send of the WATCH path carries at most max_bytes (0, the
 * default: no limit), so that partial sends are exercised. */
void td_redis_set_send_limit(td_redis *r, size_t max_bytes);

/* The key of a prospect into buf ("touchd:p:{p-42}"); returns its length. */
size_t td_redis_key(const td_redis *r, const char *prospect_id, char *buf, size_t cap);

#endif
