/*
 * td_rconn.c - see td_rconn.h: connect, the plain session (AUTH, SELECT),
 * the idle check, and the backoff every Redis connection of touchd uses;
 * what a refusing server means (td_rconn_refusal) and the process-wide
 * authentication state every connection's replies feed (td_redis_auth_*).
 *
 * File-local functions: rc_.
 *
 * @locality one thread (the owner's); rc_auth_* are atomic, any thread.
 */
#include "td_rconn.h"

#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "td_clock.h"
#include "td_log.h"

/* Process-wide authentication state (td_redis_auth_*): connections whose
 * last reply was an authentication error, such errors since start, and
 * whether transitions are logged (the daemon turns it on). */
static int rc_auth_conns;
static uint64_t rc_auth_errors;
static int rc_auth_logging;

void td_rconn_seterr(td_rconn *rc, const char *fmt, ...) {
    if (!rc->err || !rc->errcap) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(rc->err, rc->errcap, fmt, ap);
    va_end(ap);
}

void td_rconn_init(td_rconn *rc, const td_redis_conf *conf, const char *who, char *err,
                   size_t errcap) {
    memset(rc, 0, sizeof *rc);
    rc->conf = conf;
    rc->who = who;
    rc->err = err;
    rc->errcap = errcap;
    rc->role = who;
    rc->backoff_ms = conf->backoff_min_ms;
    rc->pol.connect_what = "connect";
}

void td_rconn_set_policy(td_rconn *rc, const td_rconn_policy *pol) { rc->pol = *pol; }

bool td_rconn_usable(const td_rconn *rc) {
    if (!rc->c || rc->c->err) return false;
    if (!rc->pol.poll_idle) return true;
    /* The socket of an idle connection is readable only if the server closed
     * it (or broke protocol): either way the connection is unusable. */
    struct pollfd p = {.fd = rc->c->fd, .events = POLLIN};
    return poll(&p, 1, 0) == 0; /* readable, hung up, error, or poll itself failed */
}

void td_rconn_close(td_rconn *rc) {
    if (rc->c) {
        redisFree(rc->c);
        rc->c = NULL;
    }
}

void td_rconn_fini(td_rconn *rc) {
    td_rconn_close(rc);
    if (rc->auth_failing) {
        rc->auth_failing = false;
        __atomic_sub_fetch(&rc_auth_conns, 1, __ATOMIC_ACQ_REL);
    }
}

/* Process-wide, every connection of every thread (__atomic): metrics. */
static uint64_t rc_opened, rc_failures;

void td_rconn_counts(uint64_t *opened, uint64_t *failures) {
    *opened = __atomic_load_n(&rc_opened, __ATOMIC_RELAXED);
    *failures = __atomic_load_n(&rc_failures, __ATOMIC_RELAXED);
}

void td_rconn_drop(td_rconn *rc, bool penalize) {
    td_rconn_close(rc);
    if (penalize) {
        __atomic_add_fetch(&rc_failures, 1, __ATOMIC_RELAXED);
        rc->next_try_ms = td_mono_ms() + rc->backoff_ms;
        int64_t b = rc->backoff_ms * 2;
        rc->backoff_ms = b > rc->conf->backoff_max_ms ? rc->conf->backoff_max_ms : b;
    }
}

redisReply *td_rconn_command(td_rconn *rc, int argc, const char **argv, const size_t *lens) {
    redisReply *rep = redisCommandArgv(rc->c, argc, argv, lens);
    if (!rep) {
        td_rconn_seterr(rc, "%s: %s; reconnecting in %" PRId64 " ms", rc->who,
                        rc->c->errstr[0] ? rc->c->errstr : "connection lost", rc->backoff_ms);
        td_rconn_drop(rc, true);
        return NULL;
    }
    td_rconn_note(rc, rep);
    return rep;
}

/* Runs a session command (AUTH, SELECT); an error reply drops the connection. */
static int rc_session(td_rconn *rc, const char *what, int argc, const char **argv,
                      const size_t *lens) {
    redisReply *rep = td_rconn_command(rc, argc, argv, lens);
    if (!rep) return TD_ERR;
    bool bad = rep->type == REDIS_REPLY_ERROR;
    if (bad) td_rconn_seterr(rc, "%s: %s failed: %.*s", rc->who, what, (int)rep->len, rep->str);
    freeReplyObject(rep);
    if (bad) {
        td_rconn_drop(rc, true);
        return TD_ERR;
    }
    return TD_OK;
}

/* The plain session: AUTH, then SELECT, one command at a time under the
 * connect timeout; then the command timeout on the socket. */
static int rc_plain_session(td_rconn *rc) {
    const td_redis_conf *cf = rc->conf;
    struct timeval ctv = {.tv_sec = cf->connect_timeout_ms / 1000,
                          .tv_usec = (cf->connect_timeout_ms % 1000) * 1000};
    (void)redisSetTimeout(rc->c, ctv); /* the session commands run under the connect timeout */
    if (cf->password) {
        const char *argv[3];
        size_t lens[3];
        int argc = 0;
        argv[argc] = "AUTH";
        lens[argc++] = 4;
        if (cf->username) {
            argv[argc] = cf->username;
            lens[argc++] = strlen(cf->username);
        }
        argv[argc] = cf->password;
        lens[argc++] = strlen(cf->password);
        if (rc_session(rc, "AUTH", argc, argv, lens) != TD_OK) return TD_ERR;
    }
    if (cf->db != 0) {
        char db[16];
        snprintf(db, sizeof db, "%d", cf->db);
        const char *argv[2] = {"SELECT", db};
        size_t lens[2] = {6, strlen(db)};
        if (rc_session(rc, "SELECT", 2, argv, lens) != TD_OK) return TD_ERR;
    }
    struct timeval tv = {.tv_sec = cf->command_timeout_ms / 1000,
                         .tv_usec = (cf->command_timeout_ms % 1000) * 1000};
    (void)redisSetTimeout(rc->c, tv);
    return TD_OK;
}

/* Connect (TCP or unix socket, bounded by connect_timeout_ms), then the
 * owner's session. */
static int rc_connect(td_rconn *rc) {
    const td_redis_conf *cf = rc->conf;
    int64_t deadline = td_mono_ms() + cf->connect_timeout_ms;
    struct timeval ctv = {.tv_sec = cf->connect_timeout_ms / 1000,
                          .tv_usec = (cf->connect_timeout_ms % 1000) * 1000};
    redisContext *c = cf->unix_socket ? redisConnectUnixWithTimeout(cf->host, ctv)
                                      : redisConnectWithTimeout(cf->host, cf->port, ctv);
    if (!c || c->err) {
        td_rconn_seterr(rc, "%s: %s: %s; reconnecting in %" PRId64 " ms", rc->who,
                        rc->pol.connect_what, c ? c->errstr : "out of memory", rc->backoff_ms);
        if (c) redisFree(c);
        td_rconn_drop(rc, true);
        return TD_ERR;
    }
    rc->c = c;
    return rc->pol.session ? rc->pol.session(rc, deadline, rc->pol.ud) : rc_plain_session(rc);
}

int td_rconn_ensure(td_rconn *rc) {
    if (td_rconn_usable(rc)) return TD_OK;
    if (rc->c) td_rconn_drop(rc, false); /* broken, or closed by the server while idle: at once */
    int64_t now = td_mono_ms();
    if (now < rc->next_try_ms) {
        td_rconn_seterr(rc, "%s: reconnecting in %" PRId64 " ms", rc->who, rc->next_try_ms - now);
        return TD_ERR;
    }
    if (rc_connect(rc) != TD_OK) return TD_ERR;
    __atomic_add_fetch(&rc_opened, 1, __ATOMIC_RELAXED);
    rc->backoff_ms = rc->conf->backoff_min_ms;
    rc->next_try_ms = 0;
    return TD_OK;
}

int td_rconn_load_script(td_rconn *rc, const char *script, size_t len, char *sha) {
    const char *argv[3] = {"SCRIPT", "LOAD", script};
    size_t lens[3] = {6, 4, len};
    redisReply *rep = td_rconn_command(rc, 3, argv, lens);
    if (!rep) return TD_ERR;
    int rc_ = TD_OK;
    if (rep->type == REDIS_REPLY_STRING && rep->len == 40) {
        memcpy(sha, rep->str, 40);
        sha[40] = '\0';
    } else {
        td_rconn_seterr(rc, "%s: SCRIPT LOAD failed: %.*s", rc->who, rep->str ? (int)rep->len : 0,
                        rep->str ? rep->str : "unexpected reply");
        rc_ = TD_ERR;
    }
    freeReplyObject(rep);
    return rc_;
}

int td_rconn_probe(td_rconn *rc, const char *key) {
    /* inside the backoff after a failed attempt (the owner's first one): a
     * new try would replace its reason with "reconnecting in N ms" */
    if (!td_rconn_usable(rc) && !rc->c && td_mono_ms() < rc->next_try_ms && rc->err && rc->err[0])
        return TD_ERR;
    if (td_rconn_ensure(rc) != TD_OK) return TD_ERR;
    const char *argv[2] = {"EXISTS", key};
    size_t lens[2] = {6, strlen(key)};
    redisReply *rep = td_rconn_command(rc, 2, argv, lens);
    if (!rep) return TD_ERR;
    int rc_ = TD_OK;
    if (rep->type != REDIS_REPLY_INTEGER) {
        bool e = rep->type == REDIS_REPLY_ERROR;
        td_rconn_seterr(rc, "%s: EXISTS %s: %.*s", rc->who, key, e ? (int)rep->len : 16,
                        e ? rep->str : "unexpected reply");
        rc_ = TD_ERR;
    }
    freeReplyObject(rep);
    return rc_;
}

/* ---- refusals and the authentication state ---- */

/* t[0..n) holds needle (memmem is not POSIX). */
static bool rc_has(const char *t, size_t n, const char *needle) {
    size_t k = strlen(needle);
    for (size_t i = 0; i + k <= n; i++)
        if (t[i] == needle[0] && memcmp(t + i, needle, k) == 0) return true;
    return false;
}

td_rrefusal td_rconn_refusal(const char *t, size_t n) {
    if (!t) return TD_RREFUSE_NONE;
    /* Redis' replies, from 2.x to 7.x; a message quoting one names it */
    /* NOAUTH, or what Redis >= 6 answers (and then closes) when a client that
     * has not authenticated sends a long command: "Protocol error:
     * unauthenticated multibulk length" */
    if (rc_has(t, n, "NOAUTH") || rc_has(t, n, "unauthenticated")) return TD_RREFUSE_NOAUTH;
    if (rc_has(t, n, "WRONGPASS") || rc_has(t, n, "invalid password")) return TD_RREFUSE_WRONGPASS;
    if (rc_has(t, n, "without any password configured") || rc_has(t, n, "no password is set"))
        return TD_RREFUSE_NOPASSWORD;
    if (rc_has(t, n, "NOPERM")) return TD_RREFUSE_NOPERM;
    /* the server's reply, or td_redis' guess when its close lost the text */
    if (rc_has(t, n, "max number of clients") || rc_has(t, n, "maxclients"))
        return TD_RREFUSE_MAXCLIENTS;
    return TD_RREFUSE_NONE;
}

bool td_rconn_refusal_is_auth(td_rrefusal k) {
    return k == TD_RREFUSE_NOAUTH || k == TD_RREFUSE_WRONGPASS || k == TD_RREFUSE_NOPASSWORD;
}

const char *td_rconn_refusal_code(td_rrefusal k) {
    switch (k) {
    case TD_RREFUSE_NOAUTH:
        return "NOAUTH";
    case TD_RREFUSE_WRONGPASS:
        return "WRONGPASS";
    case TD_RREFUSE_NOPASSWORD:
        return "AUTH_WITHOUT_PASSWORD";
    case TD_RREFUSE_NOPERM:
        return "NOPERM";
    case TD_RREFUSE_MAXCLIENTS:
        return "MAXCLIENTS";
    case TD_RREFUSE_NONE:
        break;
    }
    return "-";
}

const char *td_rconn_refusal_fix(td_rrefusal k) {
    switch (k) {
    case TD_RREFUSE_NOAUTH:
        return "Redis requires a password: set redis.password (\"env:NAME\" reads it from the "
               "environment), and redis.username for an ACL user";
    case TD_RREFUSE_WRONGPASS:
        return "Redis rejects redis.password (or redis.username): check them against Redis' "
               "requirepass or ACL user, and that the user is on";
    case TD_RREFUSE_NOPASSWORD:
        return "redis.password is set but Redis has no password for this user: remove "
               "redis.password, or give Redis a requirepass or an ACL user";
    case TD_RREFUSE_NOPERM:
        return "the ACL user (redis.username) lacks a command or a key pattern touchd needs: "
               "see docs/redis.md (AUTH, ACL users) and docs/timers.md (ACL)";
    case TD_RREFUSE_MAXCLIENTS:
        return "Redis refuses more connections: raise its maxclients (touchd opens up to 6, "
               "docs/redis.md) or stop idle clients (INFO clients)";
    case TD_RREFUSE_NONE:
        break;
    }
    return "check redis.host and redis.port (or redis.unix_socket), that Redis runs there, "
           "and redis.connect_timeout_ms";
}

void td_rconn_note_error(td_rconn *rc, const char *s, size_t n) {
    td_rrefusal k = td_rconn_refusal(s, n);
    if (!td_rconn_refusal_is_auth(k)) {
        td_rconn_note_ok(rc); /* the server ran the command as an authenticated one */
        return;
    }
    uint64_t errors = __atomic_add_fetch(&rc_auth_errors, 1, __ATOMIC_RELAXED);
    if (rc->auth_failing) return;
    rc->auth_failing = true;
    int now = __atomic_add_fetch(&rc_auth_conns, 1, __ATOMIC_ACQ_REL);
    if (now == 1 && __atomic_load_n(&rc_auth_logging, __ATOMIC_RELAXED)) {
        char q[400];
        td_log_error("redis authentication failed", "connection=%s code=%s errors=%llu fix=%s",
                     rc->role, td_rconn_refusal_code(k), (unsigned long long)errors,
                     td_log_quote(q, sizeof q, td_rconn_refusal_fix(k)));
    }
}

void td_rconn_note_recovered(td_rconn *rc) {
    rc->auth_failing = false;
    int now = __atomic_sub_fetch(&rc_auth_conns, 1, __ATOMIC_ACQ_REL);
    if (now == 0 && __atomic_load_n(&rc_auth_logging, __ATOMIC_RELAXED))
        td_log_info("redis authentication works again", "connection=%s errors=%llu", rc->role,
                    (unsigned long long)__atomic_load_n(&rc_auth_errors, __ATOMIC_RELAXED));
}

const char *td_redis_advice(const char *err, const char **code) {
    td_rrefusal k = td_rconn_refusal(err, err ? strlen(err) : 0);
    if (code) *code = td_rconn_refusal_code(k);
    return td_rconn_refusal_fix(k);
}

uint64_t td_redis_auth_errors(void) { return __atomic_load_n(&rc_auth_errors, __ATOMIC_RELAXED); }

bool td_redis_auth_failing(void) { return __atomic_load_n(&rc_auth_conns, __ATOMIC_ACQUIRE) > 0; }

void td_redis_auth_log(bool on) {
    __atomic_store_n(&rc_auth_logging, on ? 1 : 0, __ATOMIC_RELAXED);
}
