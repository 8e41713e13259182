/*
 * td_redis_store.c - the state store's writes (td_redis.h), each prospect's
 * a compare-and-set on its version field "v":
 *
 * - td_redis_store_diff, the daemon's (event batches): only what changed
 *   between the stored flat form and the new one. Up to one chunk
 *   (TD_REDIS_DIFF_CHUNK prospects) it is one EVALSHA of the diff script
 *   (one round trip); above, WATCH + HGET v, then MULTI/EXEC of plain
 *   commands per chunk, on one or two connections (rw_diff_watch), with the
 *   diff script for the chunks whose EXEC aborted (contention).
 * - td_redis_store, the timer poller's (td_timers.c): the whole hash, one
 *   EVALSHA of the state script per prospect.
 * Both scripts are loaded once (SCRIPT LOAD) and again on NOSCRIPT; with the
 * timer index on (td_redis_set_timer_shards) every write also maintains the
 * index (td_timers.h) in the same atomic unit.
 *
 * - The version field "v" belongs to this module: a write drops any "v" the
 *   flat form holds and writes expected + 1 itself, so the stored version
 *   can never disagree with the compare-and-set.
 *
 * - The WATCH path does its own socket I/O: send(MSG_NOSIGNAL) of prebuilt
 *   RESP, replies parsed in place (td_resp.h), poll(2) bounded by the call's
 *   deadline. See rw_tx / rw_rx below.
 *
 * File-local functions and types: rw_; the module's shared ones (rd_, rs_,
 * sk_) are in td_redis_internal.h.
 *
 * @locality one thread at a time per td_redis (td_redis.h).
 */
#include "td_redis_internal.h"
#include "td_resp.h"
#include "td_timers.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <sys/socket.h>

/*
 * The compare-and-set script. KEYS[1] = the prospect's hash; ARGV[1] = the
 * expected version (decimal, as td_redis formats it); ARGV[2..] = field/value
 * pairs without "v". Versions are compared as strings (exact for any int64;
 * an absent "v" is "0"); the new version is computed with string.format('%d')
 * (exact below 2^53: a prospect will not see 9e15 writes). HSET is called in
 * chunks of 200 arguments to stay far below Lua's unpack() stack limit.
 * Returns 1 when written, 0 on a version mismatch.
 *
 * With the timer index on (td_redis_set_timer_shards), KEYS[2] = the
 * prospect's timer shard ("<prefix>:t:<shard>"), KEYS[3] = the heads
 * ("<prefix>:t:heads") and the arguments are ARGV[1] = expected version,
 * ARGV[2] = member prefix ("<id>\x1f"), ARGV[3] = the shard number (its
 * member in the heads), ARGV[4] = T, the number of timer.* fields among the
 * pairs, ARGV[5..4+T] = their due times in ms (in the order the timer.*
 * fields appear), then the pairs. Before replacing the hash the script reads
 * the stored timer.* fields (HKEYS + HMGET); after writing, a timer field
 * that is new or whose value ("<due> <armed_by>") changed is ZADDed (member
 * = prefix + the part after "timer."; a re-arm updates the score of the same
 * member), the shard's head is lowered to the earliest due time ZADDed
 * (ZADD LT: never raised, so it stays a lower bound of the shard; see
 * td_timers.h), and a stored timer field that is gone is ZREMed (the head
 * may then be early: harmless). An unchanged timer is not touched (it may be
 * claimed and firing right now: re-adding it would let a second claimer
 * in). One script, one node: state, index and head change together.
 */
static const char td_redis_cas_lua[] =
    "local key = KEYS[1]\n"
    "local cur = redis.call('HGET', key, 'v')\n"
    "if not cur then cur = '0' end\n"
    "if cur ~= ARGV[1] then return 0 end\n"
    "local i = 2\n"
    "local zk, hk, hs, mp, old, sc\n"
    "if #KEYS > 1 then\n"
    "  zk, hk = KEYS[2], KEYS[3]\n"
    "  mp, hs = ARGV[2], ARGV[3]\n"
    "  local nt = tonumber(ARGV[4])\n"
    "  sc = {}\n"
    "  for k = 1, nt do sc[k] = ARGV[4 + k] end\n"
    "  i = 5 + nt\n"
    "  old = {}\n"
    "  local names = {}\n"
    "  for _, f in ipairs(redis.call('HKEYS', key)) do\n"
    "    if string.sub(f, 1, 6) == 'timer.' then names[#names + 1] = f end\n"
    "  end\n"
    "  if #names > 0 then\n"
    "    local vals = redis.call('HMGET', key, unpack(names))\n"
    "    for k, f in ipairs(names) do old[f] = vals[k] end\n"
    "  end\n"
    "end\n"
    "local first = i\n"
    "redis.call('DEL', key)\n"
    "redis.call('HSET', key, 'v', string.format('%d', tonumber(ARGV[1]) + 1))\n"
    "local n = #ARGV\n"
    "while i <= n do\n"
    "  local j = i + 199\n"
    "  if j > n then j = n end\n"
    "  redis.call('HSET', key, unpack(ARGV, i, j))\n"
    "  i = j + 1\n"
    "end\n"
    "if zk then\n"
    "  local t, lo = 0, nil\n"
    "  for k = first, n - 1, 2 do\n"
    "    local f = ARGV[k]\n"
    "    if string.sub(f, 1, 6) == 'timer.' then\n"
    "      t = t + 1\n"
    "      if old[f] ~= ARGV[k + 1] then\n"
    "        redis.call('ZADD', zk, sc[t], mp .. string.sub(f, 7))\n"
    "        if not lo or tonumber(sc[t]) < tonumber(lo) then lo = sc[t] end\n"
    "      end\n"
    "      old[f] = nil\n"
    "    end\n"
    "  end\n"
    "  if lo then redis.call('ZADD', hk, 'LT', lo, hs) end\n"
    "  local rem = {}\n"
    "  for f, _ in pairs(old) do rem[#rem + 1] = mp .. string.sub(f, 7) end\n"
    "  if #rem > 0 then redis.call('ZREM', zk, unpack(rem)) end\n"
    "end\n"
    "return 1\n";

/*
 * The diff script (td_redis_store_diff): one call writes a chunk of up to
 * TD_REDIS_DIFF_CHUNK prospects, each with its own compare-and-set (a chunk
 * runs atomically as a whole, which is more than each write needs). Per-call
 * overhead (command parsing, script lookup, Lua entry) was most of a single
 * write's cost in Redis.
 *
 * ARGV[1] = P, the number of prospects; ARGV[2] = "1" when the timer index
 * is on. KEYS = for each prospect its hash, then (index on) its timer shard;
 * with the index, the last key is the heads ("<prefix>:t:heads").
 * Then per prospect, from ARGV[3] on: the expected version, the member
 * prefix ("<id>\x1f", or ""), the shard number (its heads member, or ""),
 * NS, ND, NZ, NR, then NS field/value pairs to
 * set (the first pair is always "v" = expected + 1), ND fields to delete, NZ
 * (score, member suffix) pairs to ZADD and NR member suffixes to ZREM. With
 * ZADDs the shard's head is lowered to the earliest of their scores (ZADD
 * LT, as in the state script).
 * Returns an array of P integers: 1 written, 0 version mismatch (nothing of
 * that prospect written). Writing only the changed fields is what makes a
 * state write cheap: an event changes a handful of a state's fifty-odd
 * fields.
 */
static const char td_redis_diff_lua[] =
    "local np = tonumber(ARGV[1])\n"
    "local zon = ARGV[2] == '1'\n"
    "local hk = KEYS[#KEYS]\n"
    "local a, k, res = 3, 1, {}\n"
    "for p = 1, np do\n"
    "  local key = KEYS[k]\n"
    "  k = k + 1\n"
    "  local zk\n"
    "  if zon then zk = KEYS[k]; k = k + 1 end\n"
    "  local exp, mp, hs = ARGV[a], ARGV[a + 1], ARGV[a + 2]\n"
    "  local ns, nd = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])\n"
    "  local nz, nr = tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6])\n"
    "  local i = a + 7\n"
    "  local nxt = i + 2 * ns + nd + 2 * nz + nr\n"
    "  local cur = redis.call('HGET', key, 'v')\n"
    "  if not cur then cur = '0' end\n"
    "  if cur ~= exp then\n"
    "    res[p] = 0\n"
    "  else\n"
    "    local e = i + 2 * ns - 1\n"
    "    while i <= e do\n"
    "      local j = i + 199\n"
    "      if j > e then j = e end\n"
    "      redis.call('HSET', key, unpack(ARGV, i, j))\n"
    "      i = j + 1\n"
    "    end\n"
    "    if nd > 0 then redis.call('HDEL', key, unpack(ARGV, i, i + nd - 1)) end\n"
    "    i = i + nd\n"
    "    if zk then\n"
    "      if nz > 0 then\n"
    "        local add, lo = {}, nil\n"
    "        for z = 1, nz do\n"
    "          add[2 * z - 1] = ARGV[i]\n"
    "          add[2 * z] = mp .. ARGV[i + 1]\n"
    "          if not lo or tonumber(ARGV[i]) < tonumber(lo) then lo = ARGV[i] end\n"
    "          i = i + 2\n"
    "        end\n"
    "        redis.call('ZADD', zk, unpack(add))\n"
    "        redis.call('ZADD', hk, 'LT', lo, hs)\n"
    "      end\n"
    "      if nr > 0 then\n"
    "        local rem = {}\n"
    "        for z = 1, nr do rem[z] = mp .. ARGV[i + z - 1] end\n"
    "        redis.call('ZREM', zk, unpack(rem))\n"
    "      end\n"
    "    end\n"
    "    res[p] = 1\n"
    "  end\n"
    "  a = nxt\n"
    "end\n"
    "return res\n";

void td_redis_set_lanes(td_redis *r, unsigned lanes) {
    r->lanes = lanes > 1 ? 2 : 1;
    if (r->lanes == 1) {
        td_redis_free(r->peer);
        r->peer = NULL;
    }
}

uint64_t td_redis_one_lane_writes(const td_redis *r) {
    return r ? __atomic_load_n(&r->one_lane, __ATOMIC_RELAXED) : 0;
}

void td_redis_set_send_limit(td_redis *r, size_t max_bytes) { r->tx_max = max_bytes; }

void td_redis_set_race_hook(td_redis *r, void (*fn)(void *ud), void *ud) {
    r->race_hook = fn;
    r->race_ud = ud;
}

/* RESP straight into a reserved sink: an array header, a bulk string
 * (room: 24 + n bytes). */
static void rw_sk_head(rd_sink *o, size_t n) { o->len += rd_resp_head(o->buf + o->len, '*', n); }
static void rw_sk_bulk(rd_sink *o, const char *p, size_t n) {
    char *w = o->buf + o->len;
    size_t k = rd_resp_head(w, '$', n);
    memcpy(w + k, p, n);
    k += n;
    w[k++] = '\r';
    w[k++] = '\n';
    o->len += k;
}

/*
 * The WATCH path's own socket I/O (rw_diff_watch). A chunk of 64 prospects
 * brings back about 200 replies; read through hiredis each is an allocated
 * object, filled, then freed, and each command is copied once more into
 * hiredis' output buffer: together about a tenth of touchd's instructions.
 * There the commands go from r->out straight to the socket, and the replies
 * are parsed in place from r->in (td_resp). Both are used only while
 * hiredis' own buffers are empty (rw_raw_ready) and are empty again when
 * rw_diff_watch returns TD_OK, so hiredis and this never see each other's
 * bytes. Non-blocking send/recv; poll(2) waits, bounded by the deadline;
 * MSG_NOSIGNAL instead of blocking SIGPIPE.
 */

/* A raw I/O failure: hiredis' fields say what it was, as for its own. */
static int rw_raw_fail(td_redis *r, const char *what, int type, const char *why, bool timed_out) {
    if (r->rc.c && !timed_out) {
        r->rc.c->err = type;
        snprintf(r->rc.c->errstr, sizeof r->rc.c->errstr, "%s", why);
    }
    return rd_io_fail(r, what, timed_out, r->conf.command_timeout_ms);
}

/* Waits until fd is ready for `events` or the deadline. @returns TD_OK, or
 * TD_ERR (failed and dropped). */
static int rw_raw_wait(td_redis *r, short events, int64_t deadline, const char *what) {
    for (;;) {
        int64_t left = deadline - td_mono_ms();
        if (left <= 0) return rw_raw_fail(r, what, REDIS_ERR_IO, "", true);
        struct pollfd pf = {.fd = r->rc.c->fd, .events = events};
        int n = poll(&pf, 1, left > INT_MAX ? INT_MAX : (int)left);
        if (n > 0) return TD_OK; /* ready, or an error the next send/recv reports */
        if (n < 0 && errno != EINTR)
            return rw_raw_fail(r, what, REDIS_ERR_IO, strerror(errno), false);
    }
}

/* hiredis has nothing buffered either way on r's connection. */
static bool rw_raw_ready(const td_redis *r) {
    return sdslen(r->rc.c->obuf) == 0 && r->rc.c->reader->pos == r->rc.c->reader->len;
}

/* Sends out[0..split), the runs, then out[split..len) (with no runs: out
 * whole), then empties out and the runs. */
static int rw_tx(td_redis *r, int64_t deadline, const char *what) {
    struct iovec iov[TD_REDIS_DIFF_CHUNK / 2 + 3];
    size_t n = 0, split = r->nrun ? r->split : r->out.len;
    iov[n++] = (struct iovec){r->out.buf, split};
    for (size_t i = 0; i < r->nrun; i++)
        iov[n++] = r->run[i];
    if (r->out.len > split) iov[n++] = (struct iovec){r->out.buf + split, r->out.len - split};
    r->out.len = 0;
    r->nrun = 0;
    for (size_t i = 0; i < n;) {
        if (iov[i].iov_len == 0) {
            i++;
            continue;
        }
        struct msghdr mh = {.msg_iov = iov + i, .msg_iovlen = n - i};
        struct iovec lim[TD_REDIS_DIFF_CHUNK / 2 + 3];
        if (r->tx_max) { /* tests: at most tx_max bytes per send */
            size_t room = r->tx_max, m = 0;
            for (size_t j = i; j < n && room > 0; j++) {
                lim[m] = iov[j];
                if (lim[m].iov_len > room) lim[m].iov_len = room;
                room -= lim[m++].iov_len;
            }
            mh.msg_iov = lim;
            mh.msg_iovlen = m;
        }
        ssize_t k = sendmsg(r->rc.c->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (k > 0) {
            size_t left = (size_t)k; /* drop what went out */
            while (left > 0 && left >= iov[i].iov_len)
                left -= iov[i++].iov_len;
            if (left > 0) {
                iov[i].iov_base = (char *)iov[i].iov_base + left;
                iov[i].iov_len -= left;
            }
        } else if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (rw_raw_wait(r, POLLOUT, deadline, what) != TD_OK) return TD_ERR;
        } else if (k < 0 && errno != EINTR) {
            return rw_raw_fail(r, what, REDIS_ERR_IO, strerror(errno), false);
        }
    }
    return TD_OK;
}

/* The next reply (an array: its header; the elements are the next replies),
 * a view into r->in valid until the next call. */
static int rw_rx(td_redis *r, int64_t deadline, td_resp *rep, const char *what) {
    rd_sink *in = &r->in;
    for (;;) {
        ssize_t k = td_resp_parse(in->buf + r->rpos, in->len - r->rpos, rep);
        if (k > 0) {
            r->rpos += (size_t)k;
            r->answered = true;
            if (rep->type == TD_RESP_ERROR)
                td_rconn_note_error(&r->rc, rep->s, rep->len);
            else
                td_rconn_note_ok(&r->rc);
            return TD_OK;
        }
        if (k < 0)
            return rw_raw_fail(r, what, REDIS_ERR_PROTOCOL, "Protocol error: not a RESP2 reply",
                               false);
        /* part of a reply: keep it, make room, read more */
        if (r->rpos > 0) {
            memmove(in->buf, in->buf + r->rpos, in->len - r->rpos);
            in->len -= r->rpos;
            r->rpos = 0;
        }
        if (in->len == in->cap && !sk_reserve(in, in->cap ? in->cap : 16384))
            return rw_raw_fail(r, what, REDIS_ERR_OOM, "Out of memory", false);
        ssize_t got = recv(r->rc.c->fd, in->buf + in->len, in->cap - in->len, MSG_DONTWAIT);
        if (got > 0) {
            in->len += (size_t)got;
        } else if (got == 0) {
            return rw_raw_fail(r, what, REDIS_ERR_EOF, "Server closed the connection", false);
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            if (rw_raw_wait(r, POLLIN, deadline, what) != TD_OK) return TD_ERR;
        } else if (errno != EINTR) {
            return rw_raw_fail(r, what, REDIS_ERR_IO, strerror(errno), false);
        }
    }
}

/* ---- store ---- */

typedef struct rw_kv_ctx {
    td_rscratch *s;
    uint32_t timer_fields; /* timer.* fields emitted (checked against ntimers) */
} rw_kv_ctx;

static void rw_kv(void *ud, const char *key, size_t klen, const char *val, size_t vlen) {
    rw_kv_ctx *x = ud;
    if (klen == 1 && key[0] == 'v') return; /* the script writes "v" */
    if (klen > 6 && memcmp(key, "timer.", 6) == 0) x->timer_fields++;
    rs_push(x->s, key, klen);
    rs_push(x->s, val, vlen);
}

/* Loads a script (SCRIPT LOAD) and keeps its SHA1 in sha_out (41 bytes). */
static int rw_load_script(td_redis *r, int64_t deadline, const char *script, size_t len,
                          char *sha_out) {
    rs_reset(&r->s);
    rs_pushs(&r->s, "SCRIPT");
    rs_pushs(&r->s, "LOAD");
    rs_push(&r->s, script, len);
    if (rd_append(r) != TD_OK) {
        td_rconn_drop(&r->rc, false);
        return TD_ERR;
    }
    if (rd_flush(r, deadline, "SCRIPT LOAD", r->conf.command_timeout_ms) != TD_OK) return TD_ERR;
    redisReply *rep = NULL;
    if (rd_read(r, deadline, &rep, "SCRIPT LOAD", r->conf.command_timeout_ms) != TD_OK)
        return TD_ERR;
    int rc = TD_OK;
    if (rep->type == REDIS_REPLY_STRING && rep->len == 40) {
        memcpy(sha_out, rep->str, 40);
        sha_out[40] = '\0';
    } else {
        rd_seterr(r, "redis: SCRIPT LOAD failed: %.*s", rep->str ? (int)rep->len : 0,
                  rep->str ? rep->str : "unexpected reply");
        rc = TD_ERR;
    }
    freeReplyObject(rep);
    return rc;
}

static int rw_script_load(td_redis *r, int64_t deadline) {
    return rw_load_script(r, deadline, td_redis_cas_lua, sizeof td_redis_cas_lua - 1, r->sha);
}

void td_redis_set_timer_shards(td_redis *r, uint32_t shards) { r->timer_shards = shards; }

/* Appends the EVALSHA of prospect i (with its timer shard when the index is
 * on: see td_redis_cas_lua for the argument layout). */
static int rw_append_cas(td_redis *r, const td_state *st, int64_t expected) {
    char ver[24];
    snprintf(ver, sizeof ver, "%" PRId64, expected);
    rs_reset(&r->s);
    rs_pushs(&r->s, "EVALSHA");
    rs_pushs(&r->s, r->sha);
    if (r->timer_shards) {
        rs_pushs(&r->s, "3");
        rd_push_key(r, st->prospect_id);
        char zk[96];
        uint32_t shard = td_timers_shard(st->prospect_id, r->timer_shards);
        size_t zn = td_timers_shard_key(r->conf.key_prefix, shard, zk, sizeof zk);
        rs_push(&r->s, zk, zn < sizeof zk ? zn : sizeof zk - 1);
        zn = td_timers_heads_key(r->conf.key_prefix, zk, sizeof zk);
        rs_push(&r->s, zk, zn < sizeof zk ? zn : sizeof zk - 1);
        rs_pushs(&r->s, ver);
        char mp[TD_ID_MAX + 2];
        size_t pn = strlen(st->prospect_id);
        memcpy(mp, st->prospect_id, pn);
        mp[pn++] = TD_TIMER_SEP;
        rs_push(&r->s, mp, pn);
        char num[24];
        snprintf(num, sizeof num, "%" PRIu32, shard);
        rs_pushs(&r->s, num);
        snprintf(num, sizeof num, "%" PRIu32, st->ntimers);
        rs_pushs(&r->s, num);
        /* td_state_serialize emits timer.* in st->timers order */
        for (uint32_t k = 0; k < st->ntimers; k++) {
            snprintf(num, sizeof num, "%" PRId64, (int64_t)st->timers[k].due_at);
            rs_pushs(&r->s, num);
        }
    } else {
        rs_pushs(&r->s, "1");
        rd_push_key(r, st->prospect_id);
        rs_pushs(&r->s, ver);
    }
    rw_kv_ctx x = {&r->s, 0};
    td_state_serialize(st, rw_kv, &x);
    if (r->timer_shards && x.timer_fields != st->ntimers) {
        /* the script pairs the due times with the timer.* fields by order */
        rd_seterr(r, "redis: %s: %" PRIu32 " timer fields serialized for %" PRIu32 " timers",
                  st->prospect_id, x.timer_fields, st->ntimers);
        return TD_ERR;
    }
    return rd_append(r);
}

/* The outcome of prospect i's compare-and-set. The diff path records only
 * this: its caller owns the states (read-only there, so the main thread may
 * read them meanwhile) and sets their versions. */
static void rw_result_diff(int *result, size_t i, bool stored) {
    result[i] = stored ? TD_REDIS_STORED : TD_REDIS_CONFLICT;
}

/* The outcome, and the new version of a stored state (td_redis_store). */
static void rw_result(td_state *states, const int64_t *expected, int *result, size_t i,
                      bool stored) {
    rw_result_diff(result, i, stored);
    if (stored) states[i].version = expected[i] + 1;
}

/* Appends the command of prospect i to the pipeline. */
typedef int (*rw_append_fn)(td_redis *r, size_t i, void *ud);

/*
 * Sends EVALSHA for the prospects with todo[i] set (append builds each one),
 * reads the replies, fills result and versions, and leaves todo[i] set only
 * for NOSCRIPT replies. Commands are flushed every 64 so the server executes
 * while the rest is being built.
 * @returns TD_OK, or TD_ERR (I/O, or an error reply other than NOSCRIPT).
 */
static int rw_cas_round(td_redis *r, td_state *states, const int64_t *expected, size_t n,
                        int *result, unsigned char *todo, int64_t deadline, size_t *noscript,
                        rw_append_fn append, void *ud) {
    size_t sent = 0;
    for (size_t i = 0; i < n; i++) {
        if (!todo[i]) continue;
        if (append(r, i, ud) != TD_OK) {
            td_rconn_drop(&r->rc, false);
            return TD_ERR;
        }
        if (++sent % 64 == 0 &&
            rd_flush(r, deadline, "EVALSHA", r->conf.command_timeout_ms) != TD_OK)
            return TD_ERR;
    }
    if (sent == 0) return TD_OK;
    if (rd_flush(r, deadline, "EVALSHA", r->conf.command_timeout_ms) != TD_OK) return TD_ERR;
    int rc = TD_OK;
    *noscript = 0;
    for (size_t i = 0; i < n; i++) {
        if (!todo[i]) continue;
        redisReply *rep = NULL;
        if (rd_read(r, deadline, &rep, "EVALSHA", r->conf.command_timeout_ms) != TD_OK)
            return TD_ERR;
        todo[i] = 0;
        if (rep->type == REDIS_REPLY_INTEGER && (rep->integer == 0 || rep->integer == 1)) {
            rw_result(states, expected, result, i, rep->integer == 1);
        } else if (rep->type == REDIS_REPLY_ERROR && rep->len >= 8 &&
                   memcmp(rep->str, "NOSCRIPT", 8) == 0) {
            todo[i] = 1;
            (*noscript)++;
        } else if (rc == TD_OK) {
            char key[TD_ID_MAX + 80];
            td_redis_key(r, states[i].prospect_id, key, sizeof key);
            if (rep->type == REDIS_REPLY_ERROR)
                rd_seterr(r, "redis: EVALSHA %s: %.*s", key, (int)rep->len, rep->str);
            else
                rd_seterr(r, "redis: EVALSHA %s: unexpected reply (type %d)", key, rep->type);
            rc = TD_ERR;
        }
        freeReplyObject(rep);
    }
    return rc;
}

/* Full writes (td_redis_store). */
typedef struct rw_full_ud {
    const td_state *states;
    const int64_t *expected;
} rw_full_ud;

static int rw_append_full(td_redis *r, size_t i, void *ud) {
    const rw_full_ud *u = ud;
    return rw_append_cas(r, &u->states[i], u->expected[i]);
}

/* ---- diff writes ---- */

static int rw_diff_script_load(td_redis *r, int64_t deadline) {
    return rw_load_script(r, deadline, td_redis_diff_lua, sizeof td_redis_diff_lua - 1, r->dsha);
}

/* Collected diff of one state: set pairs and deleted keys, as spans of one
 * buffer each, then copied into the command in the script's order; and the
 * timer index changes: the member suffixes of timer.* fields set (armed or
 * re-armed) and deleted (disarmed or fired). */
typedef struct rw_diffbuf {
    td_rscratch sets, dels, zadd, zrem;
    td_rscratch keys, args; /* the call being built (rw_diff_add) */
    uint32_t nsets, ndels;
} rw_diffbuf;

static bool rw_is_timer_key(const char *k, size_t kl) {
    return kl > 6 && memcmp(k, "timer.", 6) == 0;
}

static void rw_diff_set(void *ud, const char *k, size_t kl, const char *v, size_t vl) {
    rw_diffbuf *d = ud;
    if (kl == 1 && k[0] == 'v') return; /* the script writes "v" */
    rs_push(&d->sets, k, kl);
    rs_push(&d->sets, v, vl);
    d->nsets++;
    if (rw_is_timer_key(k, kl)) rs_push(&d->zadd, k + 6, kl - 6);
}

static void rw_diff_del(void *ud, const char *k, size_t kl) {
    rw_diffbuf *d = ud;
    if (kl == 1 && k[0] == 'v') return;
    rs_push(&d->dels, k, kl);
    d->ndels++;
    if (rw_is_timer_key(k, kl)) rs_push(&d->zrem, k + 6, kl - 6);
}

/* The index member suffix of a timer: its rule id as the flat form writes it
 * in "timer.<rule>" (percent-encoded bytes < 0x20, 0x7f.., and '%'), so that
 * members written by either script name the same timer. */
static size_t rw_member_suffix(const char *rule, char *out) {
    static const char hex[] = "0123456789ABCDEF";
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)rule; *p; p++) {
        if (*p < 0x20 || *p >= 0x7f || *p == '%') {
            out[n++] = '%';
            out[n++] = hex[*p >> 4];
            out[n++] = hex[*p & 15];
        } else
            out[n++] = (char)*p;
    }
    out[n] = '\0';
    return n;
}

/* The due time of the timer of st whose member suffix is sfx[0..n), or
 * TD_MS_MISSING (cannot happen for a suffix taken from st's own flat form). */
static td_ms rw_timer_due(const td_state *st, const char *sfx, size_t n) {
    char enc[3 * (TD_RULE_ID_MAX + 1) + 1];
    for (uint32_t i = 0; i < st->ntimers; i++)
        if (rw_member_suffix(st->timers[i].rule, enc) == n && memcmp(enc, sfx, n) == 0)
            return st->timers[i].due_at;
    return TD_MS_MISSING;
}

/* Pushes onto `a` the due time (decimal ms) of st's timer whose member suffix
 * is sfx[0..sl), and gives it in *due. @returns TD_OK, or TD_ERR (no such
 * timer: message set). */
static int rw_push_due(td_redis *r, const td_state *st, const char *sfx, size_t sl, td_rscratch *a,
                       td_ms *due) {
    *due = rw_timer_due(st, sfx, sl);
    if (*due == TD_MS_MISSING) {
        rd_seterr(r, "redis: %s: timer field without a timer (%.*s)", st->prospect_id,
                  (int)(sl > 64 ? 64 : sl), sfx);
        return TD_ERR;
    }
    char dn[24];
    rs_push(a, dn, td_fmt_i64(*due, dn));
    return TD_OK;
}

/* Collects into d what turns `base` into `now`: pairs to set, keys to
 * delete, and the timer members to add and remove. */
static int rw_diff_collect(td_redis *r, const td_kvs *base, const td_kvs *now, rw_diffbuf *d) {
    rs_reset(&d->sets);
    rs_reset(&d->dels);
    rs_reset(&d->zadd);
    rs_reset(&d->zrem);
    d->nsets = d->ndels = 0;
    if (td_kvs_diff(base, now, rw_diff_set, rw_diff_del, d) != TD_OK || d->sets.oom ||
        d->dels.oom || d->zadd.oom || d->zrem.oom) {
        rd_seterr(r, "redis: out of memory");
        return TD_ERR;
    }
    return TD_OK;
}

/* Adds prospect st's part of a diff-script call: its key(s) to d->keys and
 * its arguments to d->args (see td_redis_diff_lua). */
static int rw_diff_add(td_redis *r, const td_state *st, const td_kvs *base, const td_kvs *now,
                       int64_t expected, rw_diffbuf *d) {
    if (rw_diff_collect(r, base, now, d) != TD_OK) return TD_ERR;
    char key[TD_ID_MAX + 80];
    size_t kn = td_redis_key(r, st->prospect_id, key, sizeof key);
    rs_push(&d->keys, key, kn < sizeof key ? kn : sizeof key - 1);
    uint32_t shard = r->timer_shards ? td_timers_shard(st->prospect_id, r->timer_shards) : 0;
    if (r->timer_shards) {
        char zk[96];
        size_t zn = td_timers_shard_key(r->conf.key_prefix, shard, zk, sizeof zk);
        rs_push(&d->keys, zk, zn < sizeof zk ? zn : sizeof zk - 1);
    }
    char num[24], ver[24];
    td_rscratch *a = &d->args;
    rs_push(a, num, td_fmt_u64((uint64_t)expected, num));
    char mp[TD_ID_MAX + 2];
    size_t pn = strlen(st->prospect_id);
    memcpy(mp, st->prospect_id, pn);
    mp[pn++] = TD_TIMER_SEP;
    rs_push(a, mp, r->timer_shards ? pn : 0);
    rs_push(a, num, r->timer_shards ? td_fmt_u64(shard, num) : 0); /* its heads member */
    /* without the index, timer fields are plain hash fields */
    size_t nz = r->timer_shards ? d->zadd.n : 0, nr = r->timer_shards ? d->zrem.n : 0;
    rs_push(a, num, td_fmt_u64(d->nsets + 1, num)); /* + the version pair */
    rs_push(a, num, td_fmt_u64(d->ndels, num));
    rs_push(a, num, td_fmt_u64(nz, num));
    rs_push(a, num, td_fmt_u64(nr, num));
    rs_push(a, "v", 1); /* the new version: checked against `expected` first */
    rs_push(a, ver, td_fmt_u64((uint64_t)expected + 1, ver));
    for (size_t k = 0; k < d->sets.n; k++)
        rs_push(a, d->sets.buf + d->sets.off[k], d->sets.slen[k]);
    for (size_t k = 0; k < d->dels.n; k++)
        rs_push(a, d->dels.buf + d->dels.off[k], d->dels.slen[k]);
    for (size_t k = 0; k < nz; k++) {
        const char *sfx = d->zadd.buf + d->zadd.off[k];
        size_t sl = d->zadd.slen[k];
        td_ms due;
        if (rw_push_due(r, st, sfx, sl, a, &due) != TD_OK) return TD_ERR;
        rs_push(a, sfx, sl);
    }
    for (size_t k = 0; k < nr; k++)
        rs_push(a, d->zrem.buf + d->zrem.off[k], d->zrem.slen[k]);
    if (d->keys.oom || a->oom) {
        rd_seterr(r, "redis: out of memory");
        return TD_ERR;
    }
    return TD_OK;
}

/* Appends the diff-script call of the `np` prospects collected in d. */
static int rw_diff_send(td_redis *r, rw_diffbuf *d, size_t np) {
    char num[24];
    td_rscratch *s = &r->s;
    rs_reset(s);
    rs_push(s, "EVALSHA", 7);
    rs_push(s, r->dsha, 40);
    rs_push(s, num, td_fmt_u64(d->keys.n + (r->timer_shards ? 1 : 0), num));
    for (size_t k = 0; k < d->keys.n; k++)
        rs_push(s, d->keys.buf + d->keys.off[k], d->keys.slen[k]);
    if (r->timer_shards) { /* the heads, last (td_redis_diff_lua) */
        char hk[96];
        size_t hn = td_timers_heads_key(r->conf.key_prefix, hk, sizeof hk);
        rs_push(s, hk, hn < sizeof hk ? hn : sizeof hk - 1);
    }
    rs_push(s, num, td_fmt_u64(np, num));
    rs_push(s, r->timer_shards ? "1" : "0", 1);
    for (size_t k = 0; k < d->args.n; k++)
        rs_push(s, d->args.buf + d->args.off[k], d->args.slen[k]);
    rs_reset(&d->keys);
    rs_reset(&d->args);
    return rd_append(r);
}

/*
 * One round of diff writes: the prospects with todo[i] set go out in calls
 * of up to TD_REDIS_DIFF_CHUNK, each flushed as soon as it is built (Redis
 * runs one chunk while the next is diffed). Fills result and versions and
 * leaves todo[i] set only for prospects whose call got NOSCRIPT.
 * @returns TD_OK, or TD_ERR (I/O, or an error reply other than NOSCRIPT).
 */
static int rw_diff_round(td_redis *r, const td_state *const *states, const td_kvs *bases,
                         const td_kvs *nows, const int64_t *expected, size_t n, int *result,
                         unsigned char *todo, int64_t deadline, size_t *noscript, rw_diffbuf *d,
                         size_t *order) {
    size_t sent = 0, inchunk = 0;
    rs_reset(&d->keys);
    rs_reset(&d->args);
    for (size_t i = 0; i < n; i++) {
        if (!todo[i]) continue;
        if (rw_diff_add(r, states[i], &bases[i], &nows[i], expected[i], d) != TD_OK) goto fail;
        order[sent++] = i;
        if (++inchunk == TD_REDIS_DIFF_CHUNK) {
            if (rw_diff_send(r, d, inchunk) != TD_OK) goto fail;
            inchunk = 0;
            if (rd_flush(r, deadline, "EVALSHA", r->conf.command_timeout_ms) != TD_OK)
                return TD_ERR;
        }
    }
    if (inchunk > 0 && rw_diff_send(r, d, inchunk) != TD_OK) goto fail;
    if (sent == 0) return TD_OK;
    if (rd_flush(r, deadline, "EVALSHA", r->conf.command_timeout_ms) != TD_OK) return TD_ERR;
    int rc = TD_OK;
    *noscript = 0;
    for (size_t c0 = 0; c0 < sent; c0 += TD_REDIS_DIFF_CHUNK) {
        size_t cn = sent - c0 < TD_REDIS_DIFF_CHUNK ? sent - c0 : TD_REDIS_DIFF_CHUNK;
        redisReply *rep = NULL;
        if (rd_read(r, deadline, &rep, "EVALSHA", r->conf.command_timeout_ms) != TD_OK)
            return TD_ERR;
        bool ok = rep->type == REDIS_REPLY_ARRAY && rep->elements == cn;
        for (size_t k = 0; ok && k < cn; k++)
            ok = rep->element[k]->type == REDIS_REPLY_INTEGER &&
                 (rep->element[k]->integer == 0 || rep->element[k]->integer == 1);
        if (ok) {
            for (size_t k = 0; k < cn; k++) {
                size_t i = order[c0 + k];
                todo[i] = 0;
                rw_result_diff(result, i, rep->element[k]->integer == 1);
            }
        } else if (rep->type == REDIS_REPLY_ERROR && rep->len >= 8 &&
                   memcmp(rep->str, "NOSCRIPT", 8) == 0) {
            *noscript += cn; /* nothing of the chunk ran: todo stays set */
        } else {
            for (size_t k = 0; k < cn; k++)
                todo[order[c0 + k]] = 0;
            if (rc == TD_OK) {
                char key[TD_ID_MAX + 80];
                td_redis_key(r, states[order[c0]]->prospect_id, key, sizeof key);
                if (rep->type == REDIS_REPLY_ERROR)
                    rd_seterr(r, "redis: EVALSHA (%zu prospects from %s): %.*s", cn, key,
                              (int)rep->len, rep->str);
                else
                    rd_seterr(r,
                              "redis: EVALSHA (%zu prospects from %s): unexpected reply "
                              "(type %d)",
                              cn, key, rep->type);
                rc = TD_ERR;
            }
        }
        freeReplyObject(rep);
    }
    return rc;
fail:
    td_rconn_drop(&r->rc, false); /* unsent commands in obuf: start clean */
    return TD_ERR;
}

/* td_kvs_diff's callbacks for rw_diff_queue: a pair to set goes straight
 * into the sink as two RESP bulk strings (room reserved for every pair of
 * the new flat form); keys to delete and timer members are collected. */
typedef struct rw_sinkdiff {
    rd_sink *o;
    rw_diffbuf *d;
    size_t nsets;
} rw_sinkdiff;

static void rw_sink_set(void *ud, const char *k, size_t kl, const char *v, size_t vl) {
    rw_sinkdiff *x = ud;
    if (kl == 1 && k[0] == 'v') return; /* written from the expected version */
    rw_sk_bulk(x->o, k, kl);
    rw_sk_bulk(x->o, v, vl);
    x->nsets++;
    if (rw_is_timer_key(k, kl)) rs_push(&x->d->zadd, k + 6, kl - 6);
}

static void rw_sink_del(void *ud, const char *k, size_t kl) {
    rw_diff_del(((rw_sinkdiff *)ud)->d, k, kl);
}

/* The bytes of "<c><n>\r\n". */
static size_t rw_head_len(size_t n) {
    char tmp[24];
    return 3 + td_fmt_u64(n, tmp);
}

/* Formats prospect st's writes for the MULTI of rw_diff_watch into r->sink
 * (set by rw_diff_prebuild): HSET (the new version first, then the changed
 * fields), HDEL, and with the timer index ZADD / ZREM. The same changes as
 * the script's, as plain commands; *queued counts them. */
static int rw_diff_queue(td_redis *r, const td_state *st, const td_kvs *base, const td_kvs *now,
                         int64_t expected, rw_diffbuf *d, size_t *queued) {
    char key[TD_ID_MAX + 80], ver[24];
    size_t kn = td_redis_key(r, st->prospect_id, key, sizeof key);
    if (kn >= sizeof key) kn = sizeof key - 1;
    /* The HSET is written as RESP straight into the sink while diffing:
     * one copy of each field and value. Its argument count is known only
     * after the diff, so the body starts after room for the largest
     * header (every pair of `now` set) and is moved back onto the real
     * header if that is shorter. HDEL and the rarer timer commands follow
     * (rd_append appends to the same sink). */
    rd_sink *o = r->sink;
    size_t hmax = rw_head_len(4 + 2 * now->n);
    if (!sk_reserve(o, hmax + 4 * 32 + kn + now->len + 32 * now->n)) {
        rd_seterr(r, "redis: out of memory building a command");
        return TD_ERR;
    }
    rs_reset(&d->dels);
    rs_reset(&d->zadd);
    rs_reset(&d->zrem);
    d->ndels = 0;
    size_t h0 = o->len;
    o->len += hmax;
    size_t vn = td_fmt_u64((uint64_t)expected + 1, ver);
    rw_sk_bulk(o, "HSET", 4);
    rw_sk_bulk(o, key, kn);
    rw_sk_bulk(o, "v", 1);
    rw_sk_bulk(o, ver, vn);
    rw_sinkdiff x = {o, d, 0};
    if (td_kvs_diff(base, now, rw_sink_set, rw_sink_del, &x) != TD_OK || d->dels.oom ||
        d->zadd.oom || d->zrem.oom) {
        o->len = h0;
        rd_seterr(r, "redis: out of memory");
        return TD_ERR;
    }
    size_t hl = rd_resp_head(o->buf + h0, '*', 4 + 2 * x.nsets);
    if (hl < hmax) {
        memmove(o->buf + h0 + hl, o->buf + h0 + hmax, o->len - h0 - hmax);
        o->len -= hmax - hl;
    }
    (*queued)++;
    if (d->dels.n > 0) {
        if (!sk_reserve(o, 2 * 16 + kn + d->dels.len + 16 * d->dels.n)) {
            rd_seterr(r, "redis: out of memory building a command");
            return TD_ERR;
        }
        rw_sk_head(o, 2 + d->dels.n);
        rw_sk_bulk(o, "HDEL", 4);
        rw_sk_bulk(o, key, kn);
        for (size_t k = 0; k < d->dels.n; k++)
            rw_sk_bulk(o, d->dels.buf + d->dels.off[k], d->dels.slen[k]);
        (*queued)++;
    }
    td_rscratch *c = &r->s;
    if (!r->timer_shards || (d->zadd.n == 0 && d->zrem.n == 0)) return TD_OK;
    char zk[96];
    uint32_t shard = td_timers_shard(st->prospect_id, r->timer_shards);
    size_t zn = td_timers_shard_key(r->conf.key_prefix, shard, zk, sizeof zk);
    if (zn >= sizeof zk) zn = sizeof zk - 1;
    td_ms lo = TD_MS_MISSING; /* the earliest due time ZADDed: the head's bound */
    char member[TD_ID_MAX + 2 + 3 * (TD_RULE_ID_MAX + 1) + 1];
    size_t pn = strlen(st->prospect_id);
    memcpy(member, st->prospect_id, pn);
    member[pn++] = TD_TIMER_SEP;
    for (int pass = 0; pass < 2; pass++) {
        td_rscratch *set = pass == 0 ? &d->zadd : &d->zrem;
        if (set->n == 0) continue;
        rs_reset(c);
        rs_push(c, pass == 0 ? "ZADD" : "ZREM", 4);
        rs_push(c, zk, zn);
        for (size_t k = 0; k < set->n; k++) {
            const char *sfx = set->buf + set->off[k];
            size_t sl = set->slen[k];
            if (sl > 3 * (TD_RULE_ID_MAX + 1)) sl = 3 * (TD_RULE_ID_MAX + 1);
            if (pass == 0) {
                td_ms due;
                if (rw_push_due(r, st, sfx, sl, c, &due) != TD_OK) return TD_ERR;
                if (lo == TD_MS_MISSING || due < lo) lo = due;
            }
            memcpy(member + pn, sfx, sl);
            rs_push(c, member, pn + sl);
        }
        if (rd_append(r) != TD_OK) return TD_ERR;
        (*queued)++;
    }
    if (lo != TD_MS_MISSING) {
        /* lower the shard's head in the same MULTI (td_timers.h: a head is
         * never later than its shard's earliest member) */
        char hk[96], dn[24], sn[24];
        size_t hn = td_timers_heads_key(r->conf.key_prefix, hk, sizeof hk);
        rs_reset(c);
        rs_push(c, "ZADD", 4);
        rs_push(c, hk, hn < sizeof hk ? hn : sizeof hk - 1);
        rs_push(c, "LT", 2);
        rs_push(c, dn, td_fmt_i64(lo, dn));
        rs_push(c, sn, td_fmt_u64(shard, sn));
        if (rd_append(r) != TD_OK) return TD_ERR;
        (*queued)++;
    }
    return TD_OK;
}

/* Appends "WATCH <keys>" and one "HGET <key> v" per prospect of
 * order[0..m). */
static int rw_watch_append(td_redis *r, const td_state *const *states, const size_t *order,
                           size_t m) {
    char key[TD_ID_MAX + 80];
    td_rscratch *c = &r->s;
    rs_reset(c);
    rs_push(c, "WATCH", 5);
    for (size_t k = 0; k < m; k++) {
        size_t kn = td_redis_key(r, states[order[k]]->prospect_id, key, sizeof key);
        rs_push(c, key, kn < sizeof key ? kn : sizeof key - 1);
    }
    if (rd_append(r) != TD_OK) return TD_ERR;
    for (size_t k = 0; k < m; k++) {
        rs_reset(c);
        rs_push(c, "HGET", 4);
        size_t kn = td_redis_key(r, states[order[k]]->prospect_id, key, sizeof key);
        rs_push(c, key, kn < sizeof key ? kn : sizeof key - 1);
        rs_push(c, "v", 1);
        if (rd_append(r) != TD_OK) return TD_ERR;
    }
    return TD_OK;
}

/* An error reply's text for a message ("" for any other reply). */
#define RW_ERRTXT(rep)                                                                             \
    ((rep)->type == TD_RESP_ERROR ? (int)((rep)->len > 200 ? 200 : (rep)->len) : 0),               \
        ((rep)->type == TD_RESP_ERROR ? (rep)->s : "")

/* Reads the replies of rw_watch_append: match[k] = the stored version of
 * order[k] is the expected one. @returns TD_OK, or TD_ERR (message set). */
static int rw_watch_read(td_redis *r, const td_state *const *states, const int64_t *expected,
                         const size_t *order, size_t m, int64_t deadline, unsigned char *match,
                         size_t *nmatch) {
    int rc = TD_OK;
    char first[sizeof r->err]; /* the round's first error, once there is one */
    first[0] = '\0';
    *nmatch = 0;
    for (size_t k = 0; k <= m; k++) {
        td_resp rep;
        if (rc != TD_OK && first[0] == '\0') memcpy(first, r->err, sizeof first);
        if (rw_rx(r, deadline, &rep, "WATCH") != TD_OK) {
            if (rc != TD_OK) {
                /* the first error says why (a server refusing the
                 * connection answers its first command, then closes) */
                char lost[sizeof r->err];
                memcpy(lost, r->err, sizeof lost);
                rd_seterr(r, "%.250s; then %.250s", first, lost);
            }
            return TD_ERR;
        }
        if (rep.type == TD_RESP_ARRAY) {
            rd_seterr(r, "redis: WATCH: unexpected reply");
            return TD_ERR; /* not one reply per command: out of step */
        }
        if (k == 0) {
            if (!td_resp_is_status(&rep, "OK") && rc == TD_OK) {
                rd_seterr(r, "redis: WATCH: %.*s", RW_ERRTXT(&rep));
                rc = TD_ERR;
            }
        } else {
            size_t i = order[k - 1];
            char num[24];
            size_t nl = td_fmt_u64((uint64_t)expected[i], num);
            bool ok = false;
            if (rep.type == TD_RESP_NIL) {
                ok = expected[i] == 0;
            } else if (rep.type == TD_RESP_BULK) {
                ok = rep.len == nl && memcmp(rep.s, num, nl) == 0;
            } else if (rc == TD_OK) {
                char key[TD_ID_MAX + 80];
                td_redis_key(r, states[i]->prospect_id, key, sizeof key);
                rd_seterr(r, "redis: HGET %s v: %.*s", key, RW_ERRTXT(&rep));
                rc = TD_ERR;
            }
            match[k - 1] = ok;
            *nmatch += ok;
        }
    }
    return rc;
}

/* Reads the replies of a MULTI ... EXEC of `queued` commands.
 * @returns TD_OK (executed), 1 (EXEC aborted: a watched key changed) or
 * TD_ERR (message set). */
static int rw_exec_read(td_redis *r, size_t queued, int64_t deadline) {
    int rc = TD_OK;
    for (size_t q = 0; q <= queued; q++) { /* +OK for MULTI, then +QUEUED per command */
        td_resp rep;
        if (rw_rx(r, deadline, &rep, "EXEC") != TD_OK) return TD_ERR;
        if (!td_resp_is_status(&rep, q == 0 ? "OK" : "QUEUED")) {
            if (rep.type != TD_RESP_ERROR) {
                rd_seterr(r, "redis: MULTI: unexpected reply");
                return TD_ERR; /* out of step: the caller drops the connection */
            }
            if (rc == TD_OK) rd_seterr(r, "redis: MULTI: %.*s", RW_ERRTXT(&rep));
            rc = TD_ERR;
        }
    }
    td_resp rep;
    if (rw_rx(r, deadline, &rep, "EXEC") != TD_OK) return TD_ERR;
    if (rc != TD_OK) return rc;
    if (rep.type == TD_RESP_NIL) return 1; /* nothing ran */
    if (rep.type != TD_RESP_ARRAY || (uint64_t)rep.i != queued) {
        if (rep.type == TD_RESP_ERROR)
            rd_seterr(r, "redis: EXEC: %.*s", RW_ERRTXT(&rep));
        else
            rd_seterr(r, "redis: EXEC: unexpected reply");
        return TD_ERR;
    }
    for (size_t e = 0; e < queued; e++) {
        if (rw_rx(r, deadline, &rep, "EXEC") != TD_OK) return TD_ERR;
        if (rep.type == TD_RESP_ARRAY) {
            rd_seterr(r, "redis: EXEC: unexpected reply");
            return TD_ERR; /* HSET, HDEL, ZADD, ZREM answer with integers */
        }
        if (rep.type == TD_RESP_ERROR && rc == TD_OK) {
            /* e.g. WRONGTYPE: a key that is not a hash */
            rd_seterr(r, "redis: EXEC: %.*s", RW_ERRTXT(&rep));
            rc = TD_ERR;
        }
    }
    return rc;
}

/* Formats the writes of the cn prospects order[0..cn) into pb (rw_diff_queue
 * into a sink instead of the connection): they do not depend on the versions
 * the WATCH reads, so they are built while Redis runs the previous chunk. */
static int rw_diff_prebuild(td_redis *r, const td_state *const *states, const td_kvs *bases,
                            const td_kvs *nows, const int64_t *expected, const size_t *order,
                            size_t cn, rw_diffbuf *d, rd_prebuilt *pb) {
    pb->out.len = 0;
    r->sink = &pb->out;
    int rc = TD_OK;
    for (size_t k = 0; k < 2 && k < cn; k++) {
        td_kvs_prefetch(&bases[order[k]], false);
        td_kvs_prefetch(&nows[order[k]], false);
    }
    for (size_t k = 0; k < cn && rc == TD_OK; k++) {
        size_t i = order[k], q = 0;
        if (k + 2 < cn) { /* the flat forms two prospects ahead */
            td_kvs_prefetch(&bases[order[k + 2]], false);
            td_kvs_prefetch(&nows[order[k + 2]], false);
        }
        pb->off[k] = pb->out.len;
        rc = rw_diff_queue(r, states[i], &bases[i], &nows[i], expected[i], d, &q);
        pb->q[k] = (unsigned char)q;
    }
    pb->off[cn] = pb->out.len;
    r->sink = NULL;
    return rc;
}

/* One connection of rw_diff_watch (a lane). Chunk j of the prospects to
 * write is order[j * TD_REDIS_DIFF_CHUNK ...]; lane l of L runs the chunks
 * l, l + L, l + 2L, ... Per lane at most two chunks are in flight: `w`, whose
 * WATCH + HGET replies are awaited (its writes prebuilt in r->pre), and
 * `x`, whose MULTI/EXEC (or UNWATCH) replies are awaited, sent before w's
 * WATCH on the same connection, so read first. */
typedef struct rw_lane {
    td_redis *r;
    size_t w, x;                              /* chunk numbers; SIZE_MAX: none */
    size_t queued;                            /* commands in x's MULTI; 0: x was an UNWATCH */
    unsigned char match[TD_REDIS_DIFF_CHUNK]; /* of x */
} rw_lane;

/* The chunk j's share of order[0..m): its first index, its length. */
static size_t rw_chunk(size_t j, size_t m, size_t *c0) {
    *c0 = j * TD_REDIS_DIFF_CHUNK;
    return m - *c0 < TD_REDIS_DIFF_CHUNK ? m - *c0 : TD_REDIS_DIFF_CHUNK;
}

/* Sends chunk j's WATCH + HGETs on lane ln (after whatever is appended) and
 * formats its writes while Redis runs them. */
static int rw_lane_watch(rw_lane *ln, size_t j, size_t m, const td_state *const *states,
                         const td_kvs *bases, const td_kvs *nows, const int64_t *expected,
                         const size_t *order, rw_diffbuf *d, int64_t deadline) {
    size_t c0, cn = rw_chunk(j, m, &c0);
    ln->r->sink = &ln->r->out; /* after the previous chunk's MULTI/EXEC, if any */
    int rc = rw_watch_append(ln->r, states, order + c0, cn);
    ln->r->sink = NULL;
    if (rc != TD_OK || rw_tx(ln->r, deadline, "WATCH") != TD_OK) return TD_ERR;
    ln->w = j;
    return rw_diff_prebuild(ln->r, states, bases, nows, expected, order + c0, cn, d, &ln->r->pre);
}

/*
 * Diff writes without Lua for the prospects with todo[i] set, in chunks of
 * TD_REDIS_DIFF_CHUNK (Redis' WATCH is quadratic in the keys a client
 * watches). Per chunk: WATCH its keys and read every version (HGET v); a
 * prospect whose version is not the expected one is a conflict and is not
 * written; the others are written in one MULTI/EXEC, which runs only if no
 * watched key changed since the WATCH: each write is still conditional on
 * the version it was checked against. In Redis this costs much less per
 * prospect than the script (no Lua argument tables, no redis.call
 * conversions).
 *
 * One round trip per chunk and connection: the WATCH of a lane's next chunk
 * travels with the MULTI/EXEC of its current one (EXEC clears the watches
 * first), and the writes of that next chunk are formatted while Redis runs
 * the round trip (rw_diff_prebuild). With two lanes (two connections, the
 * chunks alternating between them), Redis runs one lane's round trip while
 * this thread reads the other's replies and sends its next one, so Redis is
 * not idle while this thread turns a chunk around. The chunks hold distinct
 * prospects, so the lanes never watch each other's keys.
 * Results are filled and todo cleared for every chunk that ran; a chunk
 * whose EXEC aborted (another writer changed one of its keys in between)
 * keeps todo set and *raced counts its prospects.
 * @returns TD_OK or TD_ERR (I/O or error reply: nothing can be assumed;
 * every lane's connection is dropped, the message is in r).
 */
static int rw_diff_watch(td_redis *r, const td_state *const *states, const td_kvs *bases,
                         const td_kvs *nows, const int64_t *expected, size_t n, int *result,
                         unsigned char *todo, int64_t deadline, rw_diffbuf *d, size_t *order,
                         size_t *raced) {
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (todo[i]) order[m++] = i;
    *raced = 0;
    if (m == 0) return TD_OK;
    size_t nchunks = (m + TD_REDIS_DIFF_CHUNK - 1) / TD_REDIS_DIFF_CHUNK;
    rw_lane lanes[2] = {{.r = r, .w = SIZE_MAX, .x = SIZE_MAX},
                        {.r = r->peer, .w = SIZE_MAX, .x = SIZE_MAX}};
    size_t nl = 1;
    if (r->peer) r->peer->err[0] = '\0';
    if (nchunks > 1 && r->peer) {
        r->peer->timer_shards = r->timer_shards;
        r->peer->tx_max = r->tx_max;
        if (rd_ensure(r->peer) == TD_OK) nl = 2; /* else this batch runs on one connection */
    }
    if (nchunks > 1 && r->lanes > 1 && nl == 1)
        __atomic_fetch_add(&r->one_lane, 1, __ATOMIC_RELAXED);
    for (size_t l = 0; l < nl; l++) {
        td_redis *lr = lanes[l].r;
        lr->out.len = lr->in.len = lr->rpos = lr->nrun = 0;
        if (!rw_raw_ready(lr)) { /* not reached: every call reads all its replies */
            rd_seterr(lr, "redis: unread replies on the connection");
            goto fail;
        }
    }
    for (size_t l = 0; l < nl; l++)
        if (rw_lane_watch(&lanes[l], l, m, states, bases, nows, expected, order, d, deadline) !=
            TD_OK)
            goto fail;
    for (size_t busy = nl; busy > 0;) {
        for (size_t l = 0; l < nl; l++) {
            rw_lane *ln = &lanes[l];
            td_redis *lr = ln->r;
            if (!lr) continue; /* done */
            size_t c0, cn;
            if (ln->x != SIZE_MAX) { /* the previous chunk's EXEC or UNWATCH */
                cn = rw_chunk(ln->x, m, &c0);
                int x = TD_OK;
                if (ln->queued) {
                    x = rw_exec_read(lr, ln->queued, deadline);
                } else {
                    td_resp rep;
                    if (rw_rx(lr, deadline, &rep, "UNWATCH") != TD_OK) goto fail;
                    if (!td_resp_is_status(&rep, "OK")) {
                        rd_seterr(lr, "redis: UNWATCH: %.*s", RW_ERRTXT(&rep));
                        goto fail;
                    }
                }
                if (x == TD_ERR) goto fail;
                for (size_t k = 0; k < cn; k++) {
                    size_t i = order[c0 + k];
                    if (x == 1) {
                        (*raced)++; /* nothing of the chunk ran: todo stays set */
                        continue;
                    }
                    todo[i] = 0;
                    rw_result_diff(result, i, ln->match[k]);
                }
                ln->x = SIZE_MAX;
            }
            if (ln->w == SIZE_MAX) {
                ln->r = NULL; /* this lane is done */
                busy--;
                continue;
            }
            cn = rw_chunk(ln->w, m, &c0);
            size_t nmatch;
            if (rw_watch_read(lr, states, expected, order + c0, cn, deadline, ln->match, &nmatch) !=
                TD_OK)
                goto fail;
            if (r->race_hook) r->race_hook(r->race_ud);
            /* this chunk's write (or UNWATCH), then the lane's next WATCH */
            td_rscratch *c = &lr->s;
            const rd_prebuilt *pb = &lr->pre; /* sent from, before its next prebuild */
            size_t queued = 0;
            rs_reset(c);
            rs_push(c, nmatch ? "MULTI" : "UNWATCH", nmatch ? 5 : 7);
            lr->sink = &lr->out;
            int ar = rd_append(lr);
            if (ar == TD_OK && nmatch) {
                /* each run of matching prospects is contiguous in pb: sent
                 * from there (rw_tx sends pb before the lane prebuilds its
                 * next chunk into it), at most one run per two prospects */
                lr->split = lr->out.len;
                for (size_t k = 0; k < cn;) {
                    if (!ln->match[k]) {
                        k++;
                        continue;
                    }
                    size_t k1 = k;
                    while (k1 < cn && ln->match[k1])
                        queued += pb->q[k1++];
                    lr->run[lr->nrun++] =
                        (struct iovec){pb->out.buf + pb->off[k], pb->off[k1] - pb->off[k]};
                    k = k1;
                }
                rs_reset(c);
                rs_push(c, "EXEC", 4);
                if (ar == TD_OK) ar = rd_append(lr);
            }
            lr->sink = NULL;
            if (ar != TD_OK) goto fail;
            ln->x = ln->w;
            ln->queued = queued;
            ln->w = SIZE_MAX;
            size_t next = ln->x + nl;
            if (next < nchunks) {
                if (rw_lane_watch(ln, next, m, states, bases, nows, expected, order, d, deadline) !=
                    TD_OK)
                    goto fail;
            } else if (rw_tx(lr, deadline, "EXEC") != TD_OK) {
                goto fail;
            }
        }
    }
    for (size_t l = 0; l < nl; l++) {
        td_redis *lr = l == 0 ? r : r->peer;
        if (lr->rpos != lr->in.len) { /* more than a reply per command */
            rd_seterr(lr, "redis: unexpected replies after EXEC");
            goto fail;
        }
    }
    return TD_OK;
fail:
    /* The second lane's own failure (an error reply such as Redis at
     * maxclients refusing it, or its I/O) backs it off: the retries run on
     * the first lane alone until its backoff has passed. */
    if (r->peer && r->peer->err[0]) {
        if (!r->err[0])
            snprintf(r->err, sizeof r->err, "second store connection: %.400s", r->peer->err);
        if (r->peer->rc.c) td_rconn_drop(&r->peer->rc, true);
    } else if (r->peer) {
        td_rconn_drop(&r->peer->rc, false); /* unsent commands or unread replies: start clean */
    }
    td_rconn_drop(&r->rc, false);
    return TD_ERR;
}

/* What both writes do before sending a state: check the arguments (states
 * as arr[i], or *ptrs[i] when ptrs), get a usable connection, start the
 * call's deadline and load the write's script (the diff script when diff)
 * if it is not loaded yet. @returns TD_OK/TD_ERR. */
static int rw_begin(td_redis *r, const td_state *arr, const td_state *const *ptrs,
                    const int64_t *expected_version, size_t n, bool diff, int64_t *deadline) {
    for (size_t i = 0; i < n; i++) {
        if (expected_version[i] < 0 || expected_version[i] == INT64_MAX) {
            rd_seterr(r, "redis: state %zu (%s): expected version %" PRId64 " out of range", i,
                      (ptrs ? ptrs[i] : &arr[i])->prospect_id, expected_version[i]);
            return TD_ERR;
        }
    }
    if (rd_check_ids(r, arr, ptrs, n) != TD_OK || rd_ensure(r) != TD_OK) return TD_ERR;
    *deadline = td_mono_ms() + r->conf.command_timeout_ms;
    if (diff) return r->dsha[0] ? TD_OK : rw_diff_script_load(r, *deadline);
    return r->sha[0] ? TD_OK : rw_script_load(r, *deadline);
}

int td_redis_store_diff(td_redis *r, const td_state *const *states, const td_kvs *bases,
                        const td_kvs *nows, const int64_t *expected_version, size_t n,
                        int *result) {
    r->err[0] = '\0';
    if (n == 0) return TD_OK;
    int64_t deadline;
    if (rw_begin(r, NULL, states, expected_version, n, true, &deadline) != TD_OK) return TD_ERR;
    unsigned char *todo = malloc(n);
    size_t *order = malloc(n * sizeof *order);
    if (!todo || !order) {
        free(todo);
        free(order);
        rd_seterr(r, "redis: out of memory");
        return TD_ERR;
    }
    memset(todo, 1, n);
    rw_diffbuf d = {0};
    size_t noscript = 0;
    int rc = TD_OK;
    /* Up to one chunk, the script's single round trip beats WATCH's two
     * (latency at low rates); above, the plain commands' lower cost in Redis
     * wins (throughput). */
    size_t raced = n > TD_REDIS_DIFF_CHUNK ? 0 : n;
    if (n > TD_REDIS_DIFF_CHUNK && r->lanes > 1) (void)rd_peer(r); /* NULL (no memory): one lane */
    if (n > TD_REDIS_DIFF_CHUNK &&
        rw_diff_watch(r, states, bases, nows, expected_version, n, result, todo, deadline, &d,
                      order, &raced) != TD_OK)
        rc = TD_ERR;
    else if (raced > 0)
        /* Contention (another writer on these keys): the script writes each
         * prospect on its own, so one busy key cannot starve the rest. */
        rc = rw_diff_round(r, states, bases, nows, expected_version, n, result, todo, deadline,
                           &noscript, &d, order);
    if (rc == TD_OK && noscript > 0) {
        /* The server lost the script (restart, failover, SCRIPT FLUSH):
         * load it again and retry those prospects once. */
        rc = rw_diff_script_load(r, deadline);
        if (rc == TD_OK)
            rc = rw_diff_round(r, states, bases, nows, expected_version, n, result, todo, deadline,
                               &noscript, &d, order);
        if (rc == TD_OK && noscript > 0) {
            rd_seterr(r, "redis: EVALSHA: NOSCRIPT again after SCRIPT LOAD (%zu prospects)",
                      noscript);
            rc = TD_ERR;
        }
    }
    if (rc == TD_OK && r->conf.verify_writes)
        rc = rd_verify(r, states, nows, expected_version, n, result);
    rs_free(&d.sets);
    rs_free(&d.dels);
    rs_free(&d.zadd);
    rs_free(&d.zrem);
    rs_free(&d.keys);
    rs_free(&d.args);
    free(todo);
    free(order);
    return rc;
}

int td_redis_store(td_redis *r, td_state *states, const int64_t *expected_version, size_t n,
                   int *result) {
    r->err[0] = '\0';
    if (n == 0) return TD_OK;
    int64_t deadline;
    if (rw_begin(r, states, NULL, expected_version, n, false, &deadline) != TD_OK) return TD_ERR;
    unsigned char *todo = malloc(n);
    if (!todo) {
        rd_seterr(r, "redis: out of memory");
        return TD_ERR;
    }
    memset(todo, 1, n);
    size_t noscript = 0;
    rw_full_ud u = {states, expected_version};
    int rc = rw_cas_round(r, states, expected_version, n, result, todo, deadline, &noscript,
                          rw_append_full, &u);
    if (rc == TD_OK && noscript > 0) {
        /* The server lost the script (restart, failover, SCRIPT FLUSH):
         * load it again and retry those prospects once. */
        rc = rw_script_load(r, deadline);
        if (rc == TD_OK)
            rc = rw_cas_round(r, states, expected_version, n, result, todo, deadline, &noscript,
                              rw_append_full, &u);
        if (rc == TD_OK && noscript > 0) {
            rd_seterr(r, "redis: EVALSHA: NOSCRIPT again after SCRIPT LOAD (%zu prospects)",
                      noscript);
            rc = TD_ERR;
        }
    }
    free(todo);
    return rc;
}
