/*
 * td_redis_internal.h - what the files of the state store (td_redis.h)
 * share, and nothing else includes:
 *
 *   td_redis_conn.c    the client: conf, create/free, its connection (a
 *                      td_rconn with the store's session and idle check),
 *                      the deadline-bound pipelined I/O every call uses,
 *                      command formatting, keys
 *   td_redis_load.c    td_redis_load, td_redis_load_ptrs (HGETALL pipelines)
 *   td_redis_store.c   the writes: td_redis_store_diff (diff script,
 *                      WATCH/MULTI/EXEC on one or two connections) and
 *                      td_redis_store (the full-hash EVALSHA script)
 *   td_redis_verify.c  verify_writes: the read back after a diff write
 *
 * Naming: public functions are td_redis_; the module's internal ones,
 * shared through this header, rd_ (scratch spans: rs_, RESP sinks: sk_);
 * each file's own (static) functions and types have the file's prefix:
 * rn_ (td_redis_conn.c), rl_ (td_redis_load.c), rw_ (td_redis_store.c), rv_
 * (td_redis_verify.c).
 *
 * @locality as td_redis.h: a td_redis is used by one thread at a time.
 */
#ifndef TD_REDIS_INTERNAL_H
#define TD_REDIS_INTERNAL_H

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>

#include "td_clock.h"
#include "td_kvs.h"
#include "td_rconn.h"
#include "td_redis.h"

/* Prospects per diff-script call: big enough to amortise the call, small
 * enough that Redis is never blocked long (~0.2 ms) and Lua's unpack()
 * limits are far. */
#define TD_REDIS_DIFF_CHUNK 64

/* Commands formatted ahead of sending (RESP bytes). */
typedef struct rd_sink {
    char *buf;
    size_t len, cap;
} rd_sink;

/* One chunk of diff writes formatted ahead of its MULTI (rw_diff_watch):
 * prospect k's commands are out.buf[off[k] .. off[k + 1]), q[k] of them. */
typedef struct rd_prebuilt {
    rd_sink out;
    size_t off[TD_REDIS_DIFF_CHUNK + 1];
    unsigned char q[TD_REDIS_DIFF_CHUNK];
} rd_prebuilt;

/* Scratch for building one command: byte spans in one growing buffer. */
typedef struct td_rscratch {
    char *buf;
    size_t len, cap;
    size_t *off, *slen; /* spans */
    size_t n, capn;
    bool oom;
} td_rscratch;

struct td_redis {
    td_redis_conf conf;    /* an owned copy (td_redis_conf_dup) */
    size_t prefix_len;     /* strlen(conf.key_prefix) */
    td_rconn rc;           /* the connection and its backoff (td_rconn.h) */
    char who[320];         /* "redis <host>:<port>" or "redis <socket>": messages */
    char name[40];         /* td_redis_set_name ("" = who): start checks, auth logs */
    char sha[41];          /* SHA1 of the script once loaded ("" before) */
    char dsha[41];         /* SHA1 of the diff script once loaded ("" before) */
    uint32_t timer_shards; /* 0: no timer index (td_redis_set_timer_shards) */
    char err[512];
    td_rscratch s;
    char *resp; /* a command formatted as RESP (rd_append) */
    size_t respcap;
    struct rd_sink *sink; /* non-NULL: rd_append formats into it, not hiredis */
    rd_prebuilt pre;      /* rw_diff_watch: this connection's next chunk */
    rd_sink out;          /* rw_diff_watch: commands to send (rw_tx) */
    rd_sink in;           /* rw_diff_watch: replies received, in[rpos..len) unread */
    size_t rpos;
    /* rw_diff_watch: runs of prebuilt writes (in pre) sent by rw_tx between
     * out[0..split) and out[split..len), without copying them into out */
    struct iovec run[TD_REDIS_DIFF_CHUNK / 2 + 1];
    size_t nrun, split;
    size_t tx_max;         /* tests: td_redis_set_send_limit */
    struct td_redis *peer; /* rw_diff_watch's second lane (td_redis_set_lanes) */
    unsigned lanes;        /* 1 or 2 */
    uint64_t one_lane;     /* td_redis_one_lane_writes (__atomic: read by other threads) */
    bool answered;         /* a reply was read since this connection opened */
    uint64_t verify_bad;   /* td_redis_verify_mismatches (__atomic) */
    char verify_msg[TD_ID_MAX + 80 + 300 + 2]; /* td_redis_verify_last: key, why */
    void (*race_hook)(void *);                 /* tests: runs between WATCH and MULTI */
    void *race_ud;
};

/* Opens r's second connection (td_redis_set_lanes) if it has none, named
 * after r. @returns it, or NULL (out of memory: one lane). */
struct td_redis *rd_peer(td_redis *r);

/* printf into r->err (td_redis_last_error). */
void rd_seterr(td_redis *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- scratch spans (td_rscratch) ---- */

static inline void rs_reset(td_rscratch *s) {
    s->len = 0;
    s->n = 0;
    s->oom = false;
}

static inline void rs_push(td_rscratch *s, const char *p, size_t n) {
    if (s->oom) return;
    if (s->len + n > s->cap) {
        size_t cap = s->cap ? s->cap : 4096;
        while (cap < s->len + n)
            cap *= 2;
        char *b = realloc(s->buf, cap);
        if (!b) {
            s->oom = true;
            return;
        }
        s->buf = b;
        s->cap = cap;
    }
    if (s->n == s->capn) {
        size_t capn = s->capn ? s->capn * 2 : 64;
        size_t *o = realloc(s->off, capn * sizeof *o);
        if (!o) {
            s->oom = true;
            return;
        }
        s->off = o;
        size_t *l = realloc(s->slen, capn * sizeof *l);
        if (!l) {
            s->oom = true;
            return;
        }
        s->slen = l;
        s->capn = capn;
    }
    if (n) memcpy(s->buf + s->len, p, n);
    s->off[s->n] = s->len;
    s->slen[s->n] = n;
    s->n++;
    s->len += n;
}

static inline void rs_pushs(td_rscratch *s, const char *p) { rs_push(s, p, strlen(p)); }

void rs_free(td_rscratch *s);

/* ---- RESP ---- */

/* "<c><n>\r\n" at p; @returns its length. */
static inline size_t rd_resp_head(char *p, char c, size_t n) {
    p[0] = c;
    size_t k = 1 + td_fmt_u64(n, p + 1);
    p[k++] = '\r';
    p[k++] = '\n';
    return k;
}

/* Room for `more` bytes in a sink. @returns false (out of memory). */
static inline bool sk_reserve(rd_sink *o, size_t more) {
    if (o->len + more <= o->cap) return true;
    size_t cap = o->cap ? o->cap : 16384;
    while (cap < o->len + more)
        cap *= 2;
    char *b = realloc(o->buf, cap);
    if (!b) return false;
    o->buf = b;
    o->cap = cap;
    return true;
}

/* ---- the connection and its I/O (td_redis_conn.c) ---- */

/* A usable connection, or TD_ERR (fast while in the backoff window). */
static inline int rd_ensure(td_redis *r) { return td_rconn_ensure(&r->rc); }

/* An I/O failure on the live connection: message, drop, backoff.
 * @returns TD_ERR. */
int rd_io_fail(td_redis *r, const char *what, bool timed_out, int timeout_ms);
/* Sends what rd_append queued in hiredis' buffer, before `deadline`. */
int rd_flush(td_redis *r, int64_t deadline, const char *what, int timeout_ms);
/* Reads one reply before `deadline`; the caller frees it. */
int rd_read(td_redis *r, int64_t deadline, redisReply **out, const char *what, int timeout_ms);
/* Appends the command in r->s (to r->sink when set, else to hiredis). */
int rd_append(td_redis *r);
/* Pushes the key of prospect `id` onto r->s as one span. */
void rd_push_key(td_redis *r, const char *id);
/* Every state (arr[i], or *ptrs[i] when ptrs) has a prospect id. */
int rd_check_ids(td_redis *r, const td_state *arr, const td_state *const *ptrs, size_t n);

/* ---- td_redis_load.c ---- */

/* Applies one HGETALL reply to st (as a load does). */
int rd_apply_hash(td_redis *r, td_state *st, const redisReply *rep);

/* ---- td_redis_verify.c ---- */

/* Reads back what td_redis_store_diff stored (conf.verify_writes). */
int rd_verify(td_redis *r, const td_state *const *states, const td_kvs *nows,
              const int64_t *expected_version, size_t n, const int *result);

#endif
