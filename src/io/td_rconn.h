/*
 * td_rconn.h - touchd's one Redis connection layer: a hiredis context with
 * the project's connection policy: connect and command timeouts, AUTH
 * (password or ACL user), SELECT, and reconnection with exponential backoff
 * where a call inside the backoff window fails fast instead of sleeping.
 *
 * Every Redis connection of touchd is a td_rconn: the timer index
 * (td_timers.c) and the gift register (td_gifts.c) send plain commands
 * through it (td_rconn_command); the state store (td_redis_*.c) embeds one
 * per connection and runs its own pipelined, deadline-bound I/O on rc->c,
 * with its own session (AUTH and SELECT in one round trip) and an idle check
 * by poll (td_rconn_set_policy). The backoff is this file's alone.
 *
 * The configuration and the error buffer belong to the owner and must outlive
 * the connection; messages never contain the password.
 *
 * @locality one thread (the owner's).
 */
#ifndef TD_RCONN_H
#define TD_RCONN_H

#include <hiredis/hiredis.h>

#include "td_redis.h"

typedef struct td_rconn td_rconn;

/* What differs between owners (td_rconn_init sets the plain policy: the
 * timers' and the gifts'). */
typedef struct td_rconn_policy {
    /* The step a failed connect names in its message: "connect" ("redis
     * timers: connect: <why>; reconnecting in N ms"). */
    const char *connect_what;
    /* td_rconn_ensure and td_rconn_usable also poll an idle socket: readable
     * means the server closed it (restart, idle timeout, CLIENT KILL), so the
     * next call reconnects at once instead of failing on a stale socket. */
    bool poll_idle;
    /* Runs on each new socket, before `deadline` (monotonic ms: the connect
     * attempt's start + connect_timeout_ms): TD_OK, or TD_ERR with the
     * message set and the connection dropped (penalized). NULL: the plain
     * session: AUTH, then SELECT, one command at a time under the connect
     * timeout, then the command timeout on the socket. */
    int (*session)(td_rconn *rc, int64_t deadline, void *ud);
    void *ud;
} td_rconn_policy;

struct td_rconn {
    const td_redis_conf *conf; /* borrowed */
    const char *who;           /* message prefix, e.g. "redis timers" */
    char *err;                 /* the owner's error buffer (borrowed) */
    size_t errcap;
    redisContext *c;     /* NULL when disconnected */
    int64_t backoff_ms;  /* delay after the next failure */
    int64_t next_try_ms; /* monotonic: no connect attempt before this */
    td_rconn_policy pol;
};

void td_rconn_init(td_rconn *rc, const td_redis_conf *conf, const char *who, char *err,
                   size_t errcap);
/* Replaces the plain policy (before the first td_rconn_ensure). */
void td_rconn_set_policy(td_rconn *rc, const td_rconn_policy *pol);
/* Connected now (with poll_idle: and not closed by the server meanwhile). */
bool td_rconn_usable(const td_rconn *rc);
/* Closes the connection (the struct stays usable). */
void td_rconn_close(td_rconn *rc);
/* Closes the connection; with penalize, the next attempt waits the backoff,
 * which then doubles up to backoff_max_ms. */
void td_rconn_drop(td_rconn *rc, bool penalize);
/* Connected now, or connects when the backoff allows (a successful session
 * resets the backoff to backoff_min_ms). @returns TD_OK/TD_ERR. */
int td_rconn_ensure(td_rconn *rc);
/* One command; NULL (connection dropped, penalized, error set) on I/O error.
 * The caller frees the reply. */
redisReply *td_rconn_command(td_rconn *rc, int argc, const char **argv, const size_t *lens);
/* SCRIPT LOAD; the SHA1 goes to sha (41 bytes). @returns TD_OK/TD_ERR. */
int td_rconn_load_script(td_rconn *rc, const char *script, size_t len, char *sha);
/* Since start, over every td_rconn of the process (any thread): sessions
 * opened (first connects and reconnects), and failures (every drop with a
 * penalty: an I/O error, a refused connect, a failed AUTH or SELECT). */
void td_rconn_counts(uint64_t *opened, uint64_t *failures);
/* printf into the owner's error buffer. */
void td_rconn_seterr(td_rconn *rc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
