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
 * Refusals. A server can accept a connection and then refuse every command:
 * the credentials do not fit (NOAUTH, WRONGPASS, an AUTH it has no password
 * for), an ACL user lacks a command or key (NOPERM), or it is full
 * (maxclients). td_rconn_refusal names which, td_rconn_refusal_fix says what
 * to change. Every reply an owner reads goes through td_rconn_note (or
 * td_rconn_note_error / td_rconn_note_ok for replies hiredis did not parse):
 * an authentication error marks the connection as failing authentication
 * until its next good reply, counted process-wide (td_redis_auth_errors,
 * td_redis_auth_failing in td_redis.h) and, once the daemon asked for it,
 * logged on the first failing connection and when the last one recovers.
 *
 * @locality one thread (the owner's); the process-wide counters are atomic.
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
    const char *role;          /* its name in start checks and auth logs ("timers"); borrowed */
    bool auth_failing;         /* its last reply was an authentication error */
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
/* The owner is done with it: closes it and withdraws its authentication
 * failure from the process-wide state. */
void td_rconn_fini(td_rconn *rc);
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
/* Start-up check: connected now (or connects: but a connection whose last
 * attempt failed keeps that attempt's reason rather than "reconnecting in N
 * ms"), then EXISTS key, a harmless read that AUTH, the ACL's commands and
 * its key patterns must all allow. @returns TD_OK, or TD_ERR (message set). */
int td_rconn_probe(td_rconn *rc, const char *key);

/* What a refusing server said, from its error reply or from a message that
 * quotes one. */
typedef enum td_rrefusal {
    TD_RREFUSE_NONE = 0,
    TD_RREFUSE_NOAUTH,     /* NOAUTH: a password is required, none was given */
    TD_RREFUSE_WRONGPASS,  /* WRONGPASS, "invalid password": password or user wrong */
    TD_RREFUSE_NOPASSWORD, /* AUTH given, but the user has no password ("called
                            * without any password configured", "no password is set") */
    TD_RREFUSE_NOPERM,     /* NOPERM: the ACL user lacks a command or a key */
    TD_RREFUSE_MAXCLIENTS  /* "max number of clients reached" */
} td_rrefusal;
td_rrefusal td_rconn_refusal(const char *text, size_t len);
/* The first three: the credentials (what td_redis_auth_errors counts). */
bool td_rconn_refusal_is_auth(td_rrefusal k);
/* "NOAUTH", "WRONGPASS", "AUTH_WITHOUT_PASSWORD", "NOPERM", "MAXCLIENTS", "-". */
const char *td_rconn_refusal_code(td_rrefusal k);
/* What to change, naming the configuration keys; never a value. */
const char *td_rconn_refusal_fix(td_rrefusal k);

/* An error reply read on the connection (s[0..n), not NUL-terminated). */
void td_rconn_note_error(td_rconn *rc, const char *s, size_t n);
/* A good reply after authentication errors (td_rconn_note_ok's slow path). */
void td_rconn_note_recovered(td_rconn *rc);
static inline void td_rconn_note_ok(td_rconn *rc) {
    if (rc->auth_failing) td_rconn_note_recovered(rc);
}
/* Any reply hiredis read on the connection. */
static inline void td_rconn_note(td_rconn *rc, const redisReply *rep) {
    if (rep->type == REDIS_REPLY_ERROR)
        td_rconn_note_error(rc, rep->str, rep->len);
    else
        td_rconn_note_ok(rc);
}

/* Since start, over every td_rconn of the process (any thread): sessions
 * opened (first connects and reconnects), and failures (every drop with a
 * penalty: an I/O error, a refused connect, a failed AUTH or SELECT). */
void td_rconn_counts(uint64_t *opened, uint64_t *failures);
/* printf into the owner's error buffer. */
void td_rconn_seterr(td_rconn *rc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
