/*
 * td_redis_conn.c - the state store's client (td_redis.h): its conf, its
 * creation, its connection and the pipelined I/O that every call (loads,
 * writes, the read back) runs under one deadline.
 *
 * Design
 *
 * - The connection is a td_rconn (td_rconn.h), touchd's one connection
 *   layer: connect, reconnection and backoff are its. This file gives it the
 *   store's policy: its session (keepalive, then AUTH and SELECT in one
 *   round trip, bounded by connect_timeout_ms from the start of the
 *   attempt), an idle check by poll, and its messages ("redis <where>:
 *   ..."). Worst case for one call: connect_timeout + command_timeout.
 *
 * - One blocking hiredis context (0.14 API) per td_redis. Every call runs
 *   under one deadline: command_timeout_ms bounds all the round trips of the
 *   call (the pipeline write, every reply, a SCRIPT LOAD and the NOSCRIPT
 *   retry), not each command. Before each blocking read or write the socket
 *   timeout (SO_RCVTIMEO/SO_SNDTIMEO via redisSetTimeout) is set to the time
 *   left, so no syscall can outlive the deadline.
 *
 * - Connection loss, a timeout or a protocol error closes the context (a
 *   blocking context with unread replies is out of sync and cannot be reused)
 *   and schedules the next attempt after the current backoff, which doubles
 *   per failure from backoff_min_ms up to backoff_max_ms and resets after a
 *   successful session. A call made inside the backoff window fails at once
 *   ("reconnecting in N ms"): the daemon loop decides whether to wait.
 *
 * - No PING on the happy path. Before using an idle connection its socket is
 *   polled with a zero timeout: a readable socket on an idle RESP2 connection
 *   means the server closed it (restart, idle timeout, CLIENT KILL), so the
 *   call reconnects at once instead of failing on a stale socket.
 *
 * - Writes raise SIGPIPE on a connection the peer closed; hiredis 0.14 uses
 *   write(2), not send(MSG_NOSIGNAL). The daemon ignores SIGPIPE anyway, but
 *   a library must not kill its host: SIGPIPE is blocked in this thread while
 *   writing and a SIGPIPE we caused is consumed before unblocking.
 *
 * - The password is copied, never printed (Redis' AUTH error replies do not
 *   echo it either) and wiped on free.
 *
 * File-local functions and types: rn_; the module's shared ones (rd_, rs_,
 * sk_) are in td_redis_internal.h.
 *
 * @locality one thread at a time per td_redis (td_redis.h).
 */
#include "td_redis_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>

/* ---- errors, conf ---- */

void rd_seterr(td_redis *r, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->err, sizeof r->err, fmt, ap);
    va_end(ap);
}

void td_redis_conf_default(td_redis_conf *c) {
    memset(c, 0, sizeof *c);
    c->host = "127.0.0.1";
    c->port = 6379;
    c->unix_socket = false;
    c->password = NULL;
    c->username = NULL;
    c->db = 0;
    c->connect_timeout_ms = 2000;
    c->command_timeout_ms = 5000;
    c->backoff_min_ms = 100;
    c->backoff_max_ms = 5000;
    c->key_prefix = "touchd";
}

int td_redis_conf_dup(td_redis_conf *dst, const td_redis_conf *src) {
    *dst = *src;
    dst->host = src->host ? strdup(src->host) : NULL;
    dst->key_prefix = src->key_prefix ? strdup(src->key_prefix) : NULL;
    dst->password = src->password ? strdup(src->password) : NULL;
    dst->username = src->username ? strdup(src->username) : NULL;
    if ((src->host && !dst->host) || (src->key_prefix && !dst->key_prefix) ||
        (src->password && !dst->password) || (src->username && !dst->username)) {
        td_redis_conf_release(dst);
        return TD_ERR;
    }
    return TD_OK;
}

void td_redis_conf_release(td_redis_conf *c) {
    if (c->password) {
        volatile char *v = (char *)c->password;
        while (*v)
            *v++ = 0;
    }
    free((char *)c->host);
    free((char *)c->key_prefix);
    free((char *)c->password);
    free((char *)c->username);
    memset(c, 0, sizeof *c);
}

static bool rn_valid_conf(const td_redis_conf *c, char *err, size_t errcap) {
    const char *why = NULL;
    if (!c->host || !c->host[0])
        why = "redis: host (or unix socket path) is empty";
    else if (!c->unix_socket && (c->port < 1 || c->port > 65535))
        why = "redis: port must be 1..65535";
    else if (c->db < 0)
        why = "redis: db must be >= 0";
    else if (c->connect_timeout_ms <= 0 || c->command_timeout_ms <= 0)
        why = "redis: connect_timeout_ms and command_timeout_ms must be > 0";
    else if (c->backoff_min_ms <= 0 || c->backoff_max_ms < c->backoff_min_ms)
        why = "redis: backoff must satisfy 0 < backoff_min_ms <= backoff_max_ms";
    else if (c->username && !c->password)
        why = "redis: a username needs a password";
    else if (c->password && !c->password[0])
        why = "redis: password is empty (use NULL for no AUTH)";
    else if (!c->key_prefix || !c->key_prefix[0])
        why = "redis: key_prefix is empty";
    else if (strchr(c->key_prefix, '{') || strchr(c->key_prefix, '}'))
        why =
            "redis: key_prefix must not contain '{' or '}' (they would move the cluster hash tag)";
    else if (strlen(c->key_prefix) > 64)
        why = "redis: key_prefix is longer than 64 bytes";
    if (why) {
        if (err && errcap) snprintf(err, errcap, "%s", why);
        return false;
    }
    return true;
}

/* ---- I/O under the call's deadline ---- */

/* An I/O failure on the live context: message, drop, backoff. `what` says
 * which step failed. Always returns TD_ERR. */
int rd_io_fail(td_redis *r, const char *what, bool timed_out, int timeout_ms) {
    int64_t delay = r->rc.backoff_ms;
    if (timed_out)
        rd_seterr(r, "%s: %s: timeout after %d ms; reconnecting in %" PRId64 " ms", r->who, what,
                  timeout_ms, delay);
    else
        /* A server that refuses a connection (maxclients) writes its error
         * and closes at once; when our first command is already on its way,
         * its close resets the connection and the error text is lost. */
        rd_seterr(r, "%s: %s: %s%s; reconnecting in %" PRId64 " ms", r->who, what,
                  r->rc.c && r->rc.c->errstr[0] ? r->rc.c->errstr : "connection lost",
                  r->rc.c && !r->answered ? " before any reply on a new connection (is Redis "
                                            "refusing connections? maxclients: INFO clients)"
                                          : "",
                  delay);
    td_rconn_drop(&r->rc, true);
    return TD_ERR;
}

static bool rn_timeout(td_redis *r, int64_t deadline) {
    int64_t left = deadline - td_mono_ms();
    if (left <= 0) return false;
    struct timeval tv = {.tv_sec = (time_t)(left / 1000),
                         .tv_usec = (suseconds_t)(left % 1000) * 1000};
    return redisSetTimeout(r->rc.c, tv) == REDIS_OK;
}

/* Writes the whole output buffer before `deadline`, SIGPIPE suppressed. */
int rd_flush(td_redis *r, int64_t deadline, const char *what, int timeout_ms) {
    sigset_t pipe_set, old, pending;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    sigemptyset(&pending);
    sigpending(&pending);
    bool was_pending = sigismember(&pending, SIGPIPE) == 1;
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old);

    int done = 0, rc = REDIS_OK;
    bool timed_out = false;
    while (!done) {
        if (!rn_timeout(r, deadline)) {
            timed_out = true;
            rc = REDIS_ERR;
            break;
        }
        errno = 0;
        rc = redisBufferWrite(r->rc.c, &done);
        if (rc != REDIS_OK) {
            timed_out = errno == EAGAIN || errno == EWOULDBLOCK;
            break;
        }
    }

    if (!was_pending) {
        sigemptyset(&pending);
        sigpending(&pending);
        if (sigismember(&pending, SIGPIPE) == 1) {
            struct timespec zero = {0, 0};
            (void)sigtimedwait(&pipe_set, NULL, &zero);
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != REDIS_OK) return rd_io_fail(r, what, timed_out, timeout_ms);
    return TD_OK;
}

/* Reads one reply before `deadline`. The caller frees it. */
int rd_read(td_redis *r, int64_t deadline, redisReply **out, const char *what, int timeout_ms) {
    void *reply = NULL;
    for (;;) {
        if (redisGetReplyFromReader(r->rc.c, &reply) != REDIS_OK)
            return rd_io_fail(r, what, false, timeout_ms);
        if (reply) {
            *out = reply;
            r->answered = true;
            td_rconn_note(&r->rc, reply);
            return TD_OK;
        }
        if (!rn_timeout(r, deadline)) return rd_io_fail(r, what, true, timeout_ms);
        errno = 0;
        if (redisBufferRead(r->rc.c) != REDIS_OK)
            return rd_io_fail(r, what, errno == EAGAIN || errno == EWOULDBLOCK, timeout_ms);
    }
}

/* ---- commands and keys ---- */

/* Appends one command from the scratch spans, formatted as RESP here (the
 * spans are copied once; hiredis' own argv formatter was a visible share of
 * a batch). */
int rd_append(td_redis *r) {
    td_rscratch *s = &r->s;
    if (s->oom) {
        rd_seterr(r, "redis: out of memory building a command");
        return TD_ERR;
    }
    size_t need = 24 + s->len + s->n * 28; /* "$<len>\r\n" + "\r\n" per argument */
    if (need > r->respcap) {
        size_t cap = r->respcap ? r->respcap : 8192;
        while (cap < need)
            cap *= 2;
        char *b = realloc(r->resp, cap);
        if (!b) {
            rd_seterr(r, "redis: out of memory building a command");
            return TD_ERR;
        }
        r->resp = b;
        r->respcap = cap;
    }
    char *p = r->resp;
    size_t k = rd_resp_head(p, '*', s->n);
    for (size_t i = 0; i < s->n; i++) {
        k += rd_resp_head(p + k, '$', s->slen[i]);
        memcpy(p + k, s->buf + s->off[i], s->slen[i]);
        k += s->slen[i];
        p[k++] = '\r';
        p[k++] = '\n';
    }
    if (r->sink) {
        rd_sink *o = r->sink;
        if (!sk_reserve(o, k)) {
            rd_seterr(r, "redis: out of memory building a command");
            return TD_ERR;
        }
        memcpy(o->buf + o->len, p, k);
        o->len += k;
        return TD_OK;
    }
    if (redisAppendFormattedCommand(r->rc.c, p, k) != REDIS_OK) {
        rd_seterr(r, "redis: out of memory building a command");
        return TD_ERR;
    }
    return TD_OK;
}

void rs_free(td_rscratch *s) {
    free(s->buf);
    free(s->off);
    free(s->slen);
    memset(s, 0, sizeof *s);
}

size_t td_redis_key(const td_redis *r, const char *prospect_id, char *buf, size_t cap) {
    /* snprintf(buf, cap, "%s:p:{%s}", prefix, id) without the format
     * interpreter: this runs for every key of every write. */
    const char *parts[4] = {r->conf.key_prefix, ":p:{", prospect_id, "}"};
    const size_t lens[4] = {r->prefix_len, 4, strlen(prospect_id), 1};
    size_t n = 0;
    for (int i = 0; i < 4; i++) {
        size_t l = lens[i];
        if (n < cap) {
            size_t room = cap - 1 - n, c = l < room ? l : room;
            memcpy(buf + n, parts[i], c);
        }
        n += l;
    }
    if (cap > 0) buf[n < cap ? n : cap - 1] = '\0';
    return n;
}

/* Pushes the key of `id` as one span. */
void rd_push_key(td_redis *r, const char *id) {
    char key[TD_ID_MAX + 80];
    size_t n = td_redis_key(r, id, key, sizeof key);
    if (n >= sizeof key) /* cannot happen: id <= TD_ID_MAX, prefix <= 64 */
        n = sizeof key - 1;
    rs_push(&r->s, key, n);
}

int rd_check_ids(td_redis *r, const td_state *arr, const td_state *const *ptrs, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (!(ptrs ? ptrs[i] : &arr[i])->prospect_id[0]) {
            rd_seterr(r, "redis: state %zu has an empty prospect_id", i);
            return TD_ERR;
        }
    }
    return TD_OK;
}

/* ---- the client and its connection ---- */

/* The store's session on a new socket (td_rconn_policy.session): keepalive,
 * then AUTH and SELECT in one round trip, all before the connect attempt's
 * deadline (start + connect_timeout_ms). */
static int rn_session(td_rconn *conn, int64_t deadline, void *ud) {
    td_redis *r = ud;
    r->answered = false;
    if (!r->conf.unix_socket) (void)redisEnableKeepAlive(conn->c);

    /* AUTH and SELECT in one round trip. */
    int nreq = 0;
    if (r->conf.password) {
        rs_reset(&r->s);
        rs_pushs(&r->s, "AUTH");
        if (r->conf.username) rs_pushs(&r->s, r->conf.username);
        rs_pushs(&r->s, r->conf.password);
        int rc = rd_append(r);
        /* the scratch held the password: wipe it */
        if (r->s.buf) memset(r->s.buf, 0, r->s.len);
        if (rc != TD_OK) {
            td_rconn_drop(&r->rc, true);
            return TD_ERR;
        }
        nreq++;
    }
    if (r->conf.db != 0) {
        char db[24];
        snprintf(db, sizeof db, "%d", r->conf.db);
        rs_reset(&r->s);
        rs_pushs(&r->s, "SELECT");
        rs_pushs(&r->s, db);
        if (rd_append(r) != TD_OK) {
            td_rconn_drop(&r->rc, true);
            return TD_ERR;
        }
        nreq++;
    }
    if (nreq == 0) return TD_OK;
    if (rd_flush(r, deadline, "AUTH/SELECT", r->conf.connect_timeout_ms) != TD_OK) return TD_ERR;
    bool auth = r->conf.password != NULL;
    bool failed = false;
    for (int i = 0; i < nreq; i++) {
        redisReply *rep = NULL;
        if (rd_read(r, deadline, &rep, "AUTH/SELECT", r->conf.connect_timeout_ms) != TD_OK)
            return TD_ERR;
        const char *cmd = (auth && i == 0) ? "AUTH" : "SELECT";
        if (!failed && rep->type == REDIS_REPLY_ERROR) {
            /* Redis' error text never contains the password. */
            rd_seterr(r, "%s: %s failed: %.*s; reconnecting in %" PRId64 " ms", r->who, cmd,
                      (int)rep->len, rep->str, r->rc.backoff_ms);
            failed = true;
        }
        freeReplyObject(rep);
    }
    if (failed) {
        td_rconn_drop(&r->rc, true);
        return TD_ERR;
    }
    return TD_OK;
}

td_redis *td_redis_new(const td_redis_conf *conf, char *err, size_t errcap) {
    if (err && errcap) err[0] = '\0';
    if (!conf || !rn_valid_conf(conf, err, errcap)) return NULL;
    td_redis *r = calloc(1, sizeof *r);
    if (!r) {
        if (err && errcap) snprintf(err, errcap, "redis: out of memory");
        return NULL;
    }
    if (td_redis_conf_dup(&r->conf, conf) != TD_OK) {
        free(r);
        if (err && errcap) snprintf(err, errcap, "redis: out of memory");
        return NULL;
    }
    char where[300];
    if (r->conf.unix_socket)
        snprintf(where, sizeof where, "%s", r->conf.host);
    else
        snprintf(where, sizeof where, "%s:%d", r->conf.host, r->conf.port);
    snprintf(r->who, sizeof r->who, "redis %s", where);
    td_rconn_init(&r->rc, &r->conf, r->who, r->err, sizeof r->err);
    td_rconn_policy pol = {
        .connect_what = "connect failed", .poll_idle = true, .session = rn_session, .ud = r};
    td_rconn_set_policy(&r->rc, &pol);
    r->lanes = 1;
    r->prefix_len = strlen(r->conf.key_prefix);
    /* One attempt now; a failure is remembered in last_error and retried
     * by the next call after the backoff. */
    (void)rd_ensure(r);
    return r;
}

void td_redis_set_name(td_redis *r, const char *name) {
    snprintf(r->name, sizeof r->name, "%.31s", name);
    r->rc.role = r->name;
    if (r->peer) {
        snprintf(r->peer->name, sizeof r->peer->name, "%.31s-2", name);
        r->peer->rc.role = r->peer->name;
    }
}

td_redis *rd_peer(td_redis *r) {
    if (r->peer) return r->peer;
    r->peer = td_redis_new(&r->conf, NULL, 0);
    if (r->peer && r->name[0]) {
        snprintf(r->peer->name, sizeof r->peer->name, "%.31s-2", r->name);
        r->peer->rc.role = r->peer->name;
    }
    return r->peer;
}

void td_redis_free(td_redis *r) {
    if (!r) return;
    td_redis_free(r->peer);
    td_rconn_fini(&r->rc);
    td_redis_conf_release(&r->conf);
    rs_free(&r->s);
    free(r->resp);
    free(r->pre.out.buf);
    free(r->out.buf);
    free(r->in.buf);
    free(r);
}

bool td_redis_connected(const td_redis *r) { return r && td_rconn_usable(&r->rc); }

const char *td_redis_last_error(const td_redis *r) { return r ? r->err : ""; }
