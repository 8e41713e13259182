/*
 * td_rconn.h - one plain (non-pipelined) Redis connection with the project's
 * connection policy: connect and command timeouts, AUTH (password or ACL
 * user), SELECT, and reconnection with exponential backoff where a call
 * inside the backoff window fails fast instead of sleeping.
 *
 * The timer index (td_timers.c) and the gift register (td_gifts.c) use it;
 * td_redis.c keeps its own pipelined engine (deadlines across a whole batch)
 * on top of the same td_redis_conf.
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

typedef struct td_rconn {
    const td_redis_conf *conf; /* borrowed */
    const char *who;           /* message prefix, e.g. "redis timers" */
    char *err;                 /* the owner's error buffer (borrowed) */
    size_t errcap;
    redisContext *c;     /* NULL when disconnected */
    int64_t backoff_ms;  /* delay after the next failure */
    int64_t next_try_ms; /* monotonic: no connect attempt before this */
} td_rconn;

void td_rconn_init(td_rconn *rc, const td_redis_conf *conf, const char *who, char *err,
                   size_t errcap);
/* Closes the connection (the struct stays usable). */
void td_rconn_close(td_rconn *rc);
/* Closes the connection; with penalize, the next attempt waits the backoff,
 * which then doubles up to backoff_max_ms. */
void td_rconn_drop(td_rconn *rc, bool penalize);
/* Connected now, or connects when the backoff allows. @returns TD_OK/TD_ERR. */
int td_rconn_ensure(td_rconn *rc);
/* One command; NULL (connection dropped, penalized, error set) on I/O error.
 * The caller frees the reply. */
redisReply *td_rconn_command(td_rconn *rc, int argc, const char **argv, const size_t *lens);
/* SCRIPT LOAD; the SHA1 goes to sha (41 bytes). @returns TD_OK/TD_ERR. */
int td_rconn_load_script(td_rconn *rc, const char *script, size_t len, char *sha);
/* printf into the owner's error buffer. */
void td_rconn_seterr(td_rconn *rc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
