/*
 * td_timers.c - the durable timer index: claim/ack scripts on a connection of
 * its own, and the firing counters. It knows nothing of the engine: the
 * pipeline (src/app/td_pipeline.c) steps what is claimed, stores it and
 * calls td_timers_ack and td_timers_record. See td_timers.h and
 * docs/timers.md.
 *
 * Design
 *
 * - A blocking hiredis connection owned by this module (separate from
 *   td_redis's, so a claim never interleaves with a state pipeline). Every
 *   command is bounded by command_timeout_ms (redisSetTimeout); an I/O error
 *   closes the connection and the next call reconnects after a backoff
 *   (backoff_min_ms doubling to backoff_max_ms), like td_redis.
 *
 * - Two Lua scripts, loaded on first use and re-loaded on NOSCRIPT:
 *   claim (KEYS = claimed set, heads, the safety-net window of shards; see
 *   tm_claim_lua) and ack (KEYS[1] = claimed set; ARGV = member, lease
 *   pairs). Both run atomically, so two instances polling the same shards
 *   never receive the same member under the same lease, and a head is never
 *   re-computed while a writer is between its ZADD and its head update.
 *
 * - The heads (<prefix>:t:heads) make a poll cost what is due, not the
 *   number of shards: see td_timers.h for the invariant and docs/timers.md
 *   for the argument. The round-robin window is only a safety net now; it
 *   runs fast for the first full round after td_timers_new (the upgrade
 *   path: shards written by a version without heads), then slowly.
 *
 * @locality one thread.
 */
#include "td_timers.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "td_log.h"
#include "td_rconn.h"

/*
 * Claim. KEYS[1] = the claimed set, KEYS[2] = the heads, KEYS[3..] = the
 * safety-net window of shards; ARGV = now, lease end, budget, the shard key
 * prefix ("<prefix>:t:"), the window's first shard number, the shard count,
 * and the due bound (members due at or before it are taken: the wall clock,
 * or earlier while the input is behind; td_timers_claim_until).
 *
 * 1. Re-leases expired claims (their claimer died or gave up: reported with
 *    due "-1", the state knows when they were due).
 * 2. Safety net: re-computes the head of every window shard from its first
 *    member (members written without a head: an older touchd, a hand edit).
 * 3. Asks the heads for shards with something due (score <= the bound), earliest
 *    first, 32 at a time, and takes due members shard by shard until the
 *    budget is spent (or budget shards were visited); every visited shard's
 *    head is re-computed (exact: the script runs alone, so no write can slip
 *    between the read and the head), which takes it out of the due range
 *    unless the budget ran out inside it: so each page is read from the
 *    start of the range.
 *
 * Heads are only ever set exactly here (from the shard's own first member)
 * or lowered by writers (ZADD LT), so a head is never later than its shard's
 * earliest member. Heads members that are not decimal shard numbers (a hand
 * edit) are removed, so a typo can never turn another key into a "shard".
 * Shard keys of step 3 are derived from the heads (not declared in KEYS):
 * fine on one node; Redis Cluster is unsupported anyway (docs/timers.md).
 * Returns {window shards done, member, due, member, due, ...}. ZADD/ZREM in
 * chunks of 200 members (Lua's unpack limit is ~8000 values). On an idle
 * poll nothing is written (ZADD of an unchanged score and ZREM of an absent
 * member change nothing and are not replicated).
 */
static const char tm_claim_lua[] =
    "local cl, hk = KEYS[1], KEYS[2]\n"
    "local now, lease, budget = ARGV[1], ARGV[2], tonumber(ARGV[3])\n"
    "local pfx, first, nsh = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])\n"
    "local due = ARGV[7]\n"
    "local out = {0}\n"
    "local function move(src, ms)\n"
    "  local k = 1\n"
    "  while k <= #ms do\n"
    "    local e = k + 199\n"
    "    if e > #ms then e = #ms end\n"
    "    local za = {}\n"
    "    for x = k, e do za[#za + 1] = lease; za[#za + 1] = ms[x] end\n"
    "    redis.call('ZADD', cl, unpack(za))\n"
    "    if src then redis.call('ZREM', src, unpack(ms, k, e)) end\n"
    "    k = e + 1\n"
    "  end\n"
    "end\n"
    "local function fix(key, s)\n"
    "  local h = redis.call('ZRANGEBYSCORE', key, '-inf', '+inf', 'WITHSCORES', 'LIMIT', 0, 1)\n"
    "  if #h > 0 then redis.call('ZADD', hk, h[2], s) else redis.call('ZREM', hk, s) end\n"
    "end\n"
    "local exp = redis.call('ZRANGEBYSCORE', cl, '-inf', now, 'LIMIT', 0, budget)\n"
    "if #exp > 0 then\n"
    "  move(nil, exp)\n"
    "  for _, m in ipairs(exp) do out[#out + 1] = m; out[#out + 1] = '-1' end\n"
    "  budget = budget - #exp\n"
    "end\n"
    "for i = 3, #KEYS do\n"
    "  fix(KEYS[i], string.format('%d', (first + i - 3) % nsh))\n"
    "end\n"
    "out[1] = #KEYS - 2\n"
    "local visits = tonumber(ARGV[3])\n"
    "while budget > 0 and visits > 0 do\n"
    "  local hs = redis.call('ZRANGEBYSCORE', hk, '-inf', due, 'LIMIT', 0, 32)\n"
    "  for _, s in ipairs(hs) do\n"
    "    if budget <= 0 then break end\n"
    "    visits = visits - 1\n"
    "    if string.match(s, '^%d+$') then\n"
    "      local key = pfx .. s\n"
    "      local d = redis.call('ZRANGEBYSCORE', key, '-inf', due, 'WITHSCORES', 'LIMIT', 0, "
    "budget)\n"
    "      if #d > 0 then\n"
    "        local ms = {}\n"
    "        for j = 1, #d, 2 do\n"
    "          ms[#ms + 1] = d[j]\n"
    "          out[#out + 1] = d[j]; out[#out + 1] = d[j + 1]\n"
    "        end\n"
    "        move(key, ms)\n"
    "        budget = budget - #ms\n"
    "      end\n"
    "      fix(key, s)\n"
    "    else\n"
    "      redis.call('ZREM', hk, s)\n"
    "    end\n"
    "  end\n"
    "  if #hs < 32 then break end\n"
    "end\n"
    "return out\n";

/* Ack: removes a claimed member only while it still holds the caller's lease. */
static const char tm_ack_lua[] = "local n = 0\n"
                                 "for i = 1, #ARGV, 2 do\n"
                                 "  local s = redis.call('ZSCORE', KEYS[1], ARGV[i])\n"
                                 "  if s and tonumber(s) == tonumber(ARGV[i + 1]) then\n"
                                 "    redis.call('ZREM', KEYS[1], ARGV[i])\n"
                                 "    n = n + 1\n"
                                 "  end\n"
                                 "end\n"
                                 "return n\n";

enum { TM_CLAIM = 0, TM_ACK = 1, TM_NSCRIPTS = 2 };

/* The start-up round visits every shard within this much polling time. */
#define TM_CATCHUP_MS 500
static const char *const tm_scripts[TM_NSCRIPTS] = {tm_claim_lua, tm_ack_lua};

struct td_timers {
    td_redis_conf rconf; /* an owned copy (td_redis_conf_dup) */
    td_timers_conf conf;
    td_rconn rc; /* the connection (td_rconn.h) */
    char sha[TM_NSCRIPTS][41];
    char err[512];
    uint32_t cursor;       /* next shard of the safety-net round robin */
    uint32_t window;       /* safety-net shards per claim call */
    uint32_t fast_window;  /* the same during the start-up round */
    uint32_t catchup_left; /* shards of the start-up round still to visit */
    char claimed_key[96];
    char heads_key[96];
    char shard_prefix[96]; /* "<prefix>:t:" */

    /* argv scratch */
    const char **argv;
    size_t *argvlen, *aoff;
    size_t capargv;
    char *abuf;
    size_t abuflen, abufcap;

    td_timers_stats stats;
};

/* ---- helpers ---- */

static void tm_seterr(td_timers *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tm_seterr(td_timers *t, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->err, sizeof t->err, fmt, ap);
    va_end(ap);
}

const char *td_overdue_policy_name(td_overdue_policy p) {
    return p == TD_OVERDUE_DROP ? "drop" : "fire_late";
}

void td_timers_conf_default(td_timers_conf *c) {
    memset(c, 0, sizeof *c);
    c->shards = 4096;
    c->poll_ms = 100;
    c->claim_batch = 500;
    c->lease_ms = 30000;
    c->sweep_ms = 60000;
    c->overdue_policy = TD_OVERDUE_FIRE_LATE;
    c->drop_older_than = 0;
}

bool td_timers_conf_check(const td_timers_conf *c, char *err, size_t errcap) {
    const char *why = NULL;
    if (c->shards < 1 || c->shards > 65536)
        why = "timers.shards must be 1..65536";
    else if (c->poll_ms < 1 || c->poll_ms > 60000)
        why = "timers.poll_ms must be 1..60000";
    else if (c->claim_batch < 1 || c->claim_batch > 2000)
        why = "timers.claim_batch must be 1..2000";
    else if (c->lease_ms < 1000 || c->lease_ms > 3600000)
        why = "timers.lease_ms must be 1000..3600000";
    else if (c->sweep_ms < c->poll_ms || c->sweep_ms > 600000)
        why = "timers.sweep_ms must be poll_ms..600000";
    else if (c->overdue_policy == TD_OVERDUE_DROP && c->drop_older_than <= 0)
        why = "timers.drop_older_than must be a positive duration with overdue_policy = drop";
    if (why) {
        if (err && errcap) snprintf(err, errcap, "%s", why);
        return false;
    }
    return true;
}

uint32_t td_timers_shard(const char *prospect_id, uint32_t shards) {
    if (shards <= 1) return 0;
    /* FNV-1a 64, written out here so the layout never depends on another
     * module's hash choice. */
    uint64_t h = 0xcbf29ce484222325ULL;
    for (const unsigned char *p = (const unsigned char *)prospect_id; *p; p++) {
        h ^= *p;
        h *= 0x100000001b3ULL;
    }
    return (uint32_t)(h % shards);
}

size_t td_timers_shard_key(const char *prefix, uint32_t shard, char *buf, size_t cap) {
    int n = snprintf(buf, cap, "%s:t:%" PRIu32, prefix, shard);
    return n < 0 ? 0 : (size_t)n;
}

size_t td_timers_claimed_key(const char *prefix, char *buf, size_t cap) {
    int n = snprintf(buf, cap, "%s:t:claimed", prefix);
    return n < 0 ? 0 : (size_t)n;
}

size_t td_timers_heads_key(const char *prefix, char *buf, size_t cap) {
    int n = snprintf(buf, cap, "%s:t:heads", prefix);
    return n < 0 ? 0 : (size_t)n;
}

/* ---- argv scratch ---- */

/* Arguments are copied into one buffer and kept as offsets (the buffer may
 * move while growing); tm_eval turns them into pointers. */
static void tm_args_reset(td_timers *t) { t->abuflen = 0; }

static bool tm_arg(td_timers *t, size_t *n, const char *p, size_t len) {
    if (*n >= t->capargv) {
        size_t cap = t->capargv ? t->capargv * 2 : 256;
        const char **a = realloc(t->argv, cap * sizeof *a);
        if (!a) return false;
        t->argv = a;
        size_t *l = realloc(t->argvlen, cap * sizeof *l);
        if (!l) return false;
        t->argvlen = l;
        size_t *o = realloc(t->aoff, cap * sizeof *o);
        if (!o) return false;
        t->aoff = o;
        t->capargv = cap;
    }
    if (t->abuflen + len > t->abufcap) {
        size_t cap = t->abufcap ? t->abufcap : 4096;
        while (cap < t->abuflen + len)
            cap *= 2;
        char *b = realloc(t->abuf, cap);
        if (!b) return false;
        t->abuf = b;
        t->abufcap = cap;
    }
    if (len) memcpy(t->abuf + t->abuflen, p, len);
    t->aoff[*n] = t->abuflen;
    t->argvlen[*n] = len;
    t->abuflen += len;
    (*n)++;
    return true;
}

static bool tm_args(td_timers *t, size_t *n, const char *s) { return tm_arg(t, n, s, strlen(s)); }

/* ---- connection ---- */

/* The connection policy (timeouts, AUTH, SELECT, backoff) is td_rconn's. */
static void tm_drop(td_timers *t, bool penalize) { td_rconn_drop(&t->rc, penalize); }

static int tm_ensure(td_timers *t) { return td_rconn_ensure(&t->rc); }

static int tm_load_script(td_timers *t, int which) {
    return td_rconn_load_script(&t->rc, tm_scripts[which], strlen(tm_scripts[which]),
                                t->sha[which]);
}

/*
 * EVALSHA of script `which` with argv[2..argc) already in the scratch (slots
 * 0 and 1 are reserved for "EVALSHA" and the sha). Retries once on NOSCRIPT
 * and once on a connection that turned out to be dead (the server closed an
 * idle connection): both scripts are safe to re-run (a claim whose reply was
 * lost only leases members, which come back after the lease).
 * @returns the reply (caller frees) or NULL.
 */
static redisReply *tm_eval(td_timers *t, int which, size_t argc) {
    for (int attempt = 0; attempt < 3; attempt++) {
        if (tm_ensure(t) != TD_OK) return NULL;
        if (!t->sha[which][0] && tm_load_script(t, which) != TD_OK) return NULL;
        for (size_t i = 2; i < argc; i++)
            t->argv[i] = t->abuf + t->aoff[i];
        t->argv[0] = "EVALSHA";
        t->argvlen[0] = 7;
        t->argv[1] = t->sha[which];
        t->argvlen[1] = 40;
        redisReply *rep = redisCommandArgv(t->rc.c, (int)argc, t->argv, t->argvlen);
        if (rep) td_rconn_note(&t->rc, rep);
        if (!rep) {
            bool retry =
                attempt == 0 && (t->rc.c->err == REDIS_ERR_EOF || t->rc.c->err == REDIS_ERR_IO);
            tm_seterr(t, "redis timers: %s; reconnecting in %" PRId64 " ms",
                      t->rc.c->errstr[0] ? t->rc.c->errstr : "connection lost", t->rc.backoff_ms);
            tm_drop(t, !retry);
            if (retry) continue;
            return NULL;
        }
        if (rep->type == REDIS_REPLY_ERROR && rep->len >= 8 &&
            memcmp(rep->str, "NOSCRIPT", 8) == 0) {
            freeReplyObject(rep);
            t->sha[which][0] = '\0';
            continue;
        }
        if (rep->type == REDIS_REPLY_ERROR) {
            tm_seterr(t, "redis timers: EVALSHA: %.*s", (int)rep->len, rep->str);
            freeReplyObject(rep);
            return NULL;
        }
        return rep;
    }
    tm_seterr(t, "redis timers: EVALSHA kept failing (NOSCRIPT or connection)");
    return NULL;
}

/* ---- life cycle ---- */

td_timers *td_timers_new(const td_redis_conf *rconf, const td_timers_conf *tconf, char *err,
                         size_t errcap) {
    if (err && errcap) err[0] = '\0';
    if (!td_timers_conf_check(tconf, err, errcap)) return NULL;
    if (!rconf->host || !rconf->key_prefix || rconf->command_timeout_ms <= 0 ||
        rconf->connect_timeout_ms <= 0 || rconf->backoff_min_ms <= 0) {
        if (err && errcap) snprintf(err, errcap, "redis timers: incomplete redis configuration");
        return NULL;
    }
    td_timers *t = calloc(1, sizeof *t);
    if (!t) goto oom;
    t->conf = *tconf;
    td_hist_init(&t->stats.delay, td_hist_latency_le, td_hist_latency_n);
    if (td_redis_conf_dup(&t->rconf, rconf) != TD_OK) goto oom;
    td_rconn_init(&t->rc, &t->rconf, "redis timers", t->err, sizeof t->err);
    t->rc.role = "timers";
    td_timers_claimed_key(t->rconf.key_prefix, t->claimed_key, sizeof t->claimed_key);
    td_timers_heads_key(t->rconf.key_prefix, t->heads_key, sizeof t->heads_key);
    snprintf(t->shard_prefix, sizeof t->shard_prefix, "%s:t:", t->rconf.key_prefix);
    int64_t w = ((int64_t)tconf->shards * tconf->poll_ms + tconf->sweep_ms - 1) / tconf->sweep_ms;
    t->window = (uint32_t)(w < 1 ? 1 : w > tconf->shards ? tconf->shards : w);
    /* the start-up round: the old full-sweep pace (every shard within 500 ms
     * of polls), so heads missing after an upgrade are rebuilt at once */
    w = ((int64_t)tconf->shards * tconf->poll_ms + TM_CATCHUP_MS - 1) / TM_CATCHUP_MS;
    t->fast_window = (uint32_t)(w < 1 ? 1 : w > tconf->shards ? tconf->shards : w);
    if (t->fast_window < t->window) t->fast_window = t->window;
    t->catchup_left = (uint32_t)tconf->shards;
    (void)tm_ensure(t); /* a failure is retried by the next call */
    return t;
oom:
    td_timers_free(t);
    if (err && errcap) snprintf(err, errcap, "redis timers: out of memory");
    return NULL;
}

int td_timers_check(td_timers *t) { return td_rconn_probe(&t->rc, t->claimed_key); }

void td_timers_free(td_timers *t) {
    if (!t) return;
    td_rconn_fini(&t->rc);
    td_redis_conf_release(&t->rconf);
    free(t->argv);
    free(t->argvlen);
    free(t->aoff);
    free(t->abuf);
    free(t);
}

const char *td_timers_last_error(const td_timers *t) { return t ? t->err : ""; }
const td_timers_conf *td_timers_get_conf(const td_timers *t) { return &t->conf; }
const td_timers_stats *td_timers_get_stats(const td_timers *t) { return &t->stats; }

td_ms td_timers_delay_quantile(const td_timers_stats *s, double p) {
    uint64_t n = 0;
    for (size_t b = 0; b < TD_TIMERS_DELAY_BUCKETS; b++)
        n += s->delay_hist[b];
    if (n == 0) return -1;
    uint64_t want = (uint64_t)(p * (double)n + 0.999999);
    if (want < 1) want = 1;
    uint64_t acc = 0;
    for (size_t b = 0; b < TD_TIMERS_DELAY_BUCKETS; b++) {
        acc += s->delay_hist[b];
        if (acc >= want) return (td_ms)(b + 1) * TD_TIMERS_DELAY_BUCKET_MS;
    }
    return (td_ms)TD_TIMERS_DELAY_BUCKETS * TD_TIMERS_DELAY_BUCKET_MS;
}

/* ---- claim / ack ---- */

static bool tm_parse_i64(const char *s, size_t n, int64_t *out) {
    if (n == 0 || n > 20) return false;
    char buf[24];
    memcpy(buf, s, n);
    buf[n] = '\0';
    char *end;
    errno = 0;
    long long v = strtoll(buf, &end, 10);
    if (errno || *end) {
        /* a score Redis printed as a double ("1.7e+12") */
        double d = strtod(buf, &end);
        if (*end) return false;
        v = (long long)d;
    }
    *out = (int64_t)v;
    return true;
}

/* Claims what the heads say is due, after re-computing the heads of the
 * safety-net window [first, first + count) (count 0: none); *scanned
 * receives how many window shards were done (all of them). */
static int tm_claim(td_timers *t, td_ms now, td_ms due_by, uint32_t first, uint32_t count,
                    td_claim *out, size_t max, uint32_t *scanned) {
    t->err[0] = '\0';
    *scanned = 0;
    uint32_t shards = (uint32_t)t->conf.shards;
    if (count > shards) count = shards;
    if (max == 0) return 0;
    tm_args_reset(t);
    size_t argc = 0;
    char num[32];
    bool ok = tm_arg(t, &argc, "", 0) && tm_arg(t, &argc, "", 0); /* EVALSHA sha */
    snprintf(num, sizeof num, "%" PRIu32, count + 2);
    ok = ok && tm_args(t, &argc, num) && tm_args(t, &argc, t->claimed_key) &&
         tm_args(t, &argc, t->heads_key);
    first %= shards;
    for (uint32_t i = 0; ok && i < count; i++) {
        char key[96];
        size_t n = td_timers_shard_key(t->rconf.key_prefix, (first + i) % shards, key, sizeof key);
        ok = tm_arg(t, &argc, key, n);
    }
    td_ms lease = now + t->conf.lease_ms;
    snprintf(num, sizeof num, "%" PRId64, (int64_t)now);
    ok = ok && tm_args(t, &argc, num);
    snprintf(num, sizeof num, "%" PRId64, (int64_t)lease);
    ok = ok && tm_args(t, &argc, num);
    snprintf(num, sizeof num, "%zu", max);
    ok = ok && tm_args(t, &argc, num) && tm_args(t, &argc, t->shard_prefix);
    snprintf(num, sizeof num, "%" PRIu32, first);
    ok = ok && tm_args(t, &argc, num);
    snprintf(num, sizeof num, "%" PRIu32, shards);
    ok = ok && tm_args(t, &argc, num);
    snprintf(num, sizeof num, "%" PRId64, (int64_t)(due_by < now ? due_by : now));
    ok = ok && tm_args(t, &argc, num);
    if (!ok) {
        tm_seterr(t, "redis timers: out of memory");
        return TD_ERR;
    }
    redisReply *rep = tm_eval(t, TM_CLAIM, argc);
    if (!rep) return TD_ERR;
    t->stats.polls++;
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 1 || rep->elements % 2 != 1 ||
        rep->element[0]->type != REDIS_REPLY_INTEGER) {
        tm_seterr(t, "redis timers: claim: unexpected reply (type %d)", rep->type);
        freeReplyObject(rep);
        return TD_ERR;
    }
    *scanned = (uint32_t)(rep->element[0]->integer < 0 ? 0 : rep->element[0]->integer);
    t->stats.swept += *scanned;
    size_t n = 0;
    for (size_t i = 1; i + 1 < rep->elements && n < max; i += 2) {
        const redisReply *m = rep->element[i], *s = rep->element[i + 1];
        if (m->type != REDIS_REPLY_STRING || s->type != REDIS_REPLY_STRING) continue;
        const char *sep = memchr(m->str, TD_TIMER_SEP, m->len);
        int64_t due;
        size_t plen = sep ? (size_t)(sep - m->str) : 0;
        size_t rlen = sep ? m->len - plen - 1 : 0;
        if (!sep || plen == 0 || plen > TD_ID_MAX || rlen == 0 || rlen > TD_RULE_ID_MAX ||
            !tm_parse_i64(s->str, s->len, &due)) {
            /* not ours: leave it leased (visible in the claimed set) and say so */
            td_log_warn("malformed timer member in the index, ignored", "len=%zu", m->len);
            continue;
        }
        td_claim *c = &out[n++];
        memcpy(c->prospect_id, m->str, plen);
        c->prospect_id[plen] = '\0';
        memcpy(c->rule, sep + 1, rlen);
        c->rule[rlen] = '\0';
        c->due_at = due < 0 ? TD_MS_MISSING : due;
        c->lease_until = lease;
        if (due < 0) t->stats.reclaimed++;
    }
    t->stats.claimed += n;
    freeReplyObject(rep);
    return (int)n;
}

int td_timers_claim_range(td_timers *t, td_ms now, uint32_t first, uint32_t count, td_claim *out,
                          size_t max) {
    uint32_t scanned;
    return tm_claim(t, now, now, first, count, out, max, &scanned);
}

int td_timers_claim(td_timers *t, td_ms now, td_claim *out, size_t max) {
    return td_timers_claim_until(t, now, now, out, max);
}

int td_timers_claim_until(td_timers *t, td_ms now, td_ms due_by, td_claim *out, size_t max) {
    /* The safety-net round robin: the next poll's window starts after this
     * one's; the first full round after start goes at the fast pace. */
    uint32_t w = t->catchup_left > 0 ? t->fast_window : t->window;
    uint32_t scanned = 0;
    int n = tm_claim(t, now, due_by, t->cursor, w, out, max, &scanned);
    if (n >= 0) {
        t->cursor = (uint32_t)(((uint64_t)t->cursor + scanned) % (uint32_t)t->conf.shards);
        t->catchup_left = t->catchup_left > scanned ? t->catchup_left - scanned : 0;
    }
    return n;
}

int td_timers_ack(td_timers *t, const td_claim *c, size_t n) {
    t->err[0] = '\0';
    if (n == 0) return 0;
    int total = 0;
    for (size_t start = 0; start < n; start += 500) {
        size_t end = start + 500 < n ? start + 500 : n;
        tm_args_reset(t);
        size_t argc = 0;
        bool ok = tm_arg(t, &argc, "", 0) && tm_arg(t, &argc, "", 0) && tm_args(t, &argc, "1") &&
                  tm_args(t, &argc, t->claimed_key);
        for (size_t i = start; ok && i < end; i++) {
            char m[TD_ID_MAX + TD_RULE_ID_MAX + 2];
            int k = snprintf(m, sizeof m, "%s%c%s", c[i].prospect_id, TD_TIMER_SEP, c[i].rule);
            char num[24];
            snprintf(num, sizeof num, "%" PRId64, (int64_t)c[i].lease_until);
            ok = tm_arg(t, &argc, m, (size_t)k) && tm_args(t, &argc, num);
        }
        if (!ok) {
            tm_seterr(t, "redis timers: out of memory");
            return TD_ERR;
        }
        redisReply *rep = tm_eval(t, TM_ACK, argc);
        if (!rep) return TD_ERR;
        if (rep->type == REDIS_REPLY_INTEGER) total += (int)rep->integer;
        freeReplyObject(rep);
    }
    t->stats.acked += (uint64_t)total;
    return total;
}

int td_timers_count(td_timers *t, int64_t *pending, int64_t *claimed) {
    t->err[0] = '\0';
    if (tm_ensure(t) != TD_OK) return TD_ERR;
    uint32_t shards = (uint32_t)t->conf.shards;
    for (uint32_t s = 0; s < shards; s++) {
        char key[96];
        td_timers_shard_key(t->rconf.key_prefix, s, key, sizeof key);
        if (redisAppendCommand(t->rc.c, "ZCARD %s", key) != REDIS_OK) {
            tm_drop(t, false);
            tm_seterr(t, "redis timers: out of memory");
            return TD_ERR;
        }
    }
    redisAppendCommand(t->rc.c, "ZCARD %s", t->claimed_key);
    int64_t sum = 0, cl = 0;
    for (uint32_t s = 0; s <= shards; s++) {
        void *r = NULL;
        if (redisGetReply(t->rc.c, &r) != REDIS_OK || !r) {
            tm_seterr(t, "redis timers: ZCARD: %s", t->rc.c->errstr);
            tm_drop(t, true);
            return TD_ERR;
        }
        redisReply *rep = r;
        td_rconn_note(&t->rc, rep);
        if (rep->type == REDIS_REPLY_INTEGER) {
            if (s < shards)
                sum += rep->integer;
            else
                cl = rep->integer;
        }
        freeReplyObject(rep);
    }
    if (pending) *pending = sum;
    if (claimed) *claimed = cl;
    return TD_OK;
}

static long long tm_config_int(td_timers *t, const char *name) {
    redisReply *rep = redisCommand(t->rc.c, "CONFIG GET %s", name);
    if (!rep) {
        tm_drop(t, true);
        return -2;
    }
    td_rconn_note(&t->rc, rep);
    long long v = -1;
    if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
        rep->element[1]->type == REDIS_REPLY_STRING)
        v = atoll(rep->element[1]->str);
    freeReplyObject(rep);
    return v;
}

int td_timers_redis_advice(td_timers *t, char *msg, size_t cap) {
    if (msg && cap) msg[0] = '\0';
    if (tm_ensure(t) != TD_OK) return TD_ERR;
    long long entries = tm_config_int(t, "zset-max-listpack-entries");
    if (entries == -2) return TD_ERR;
    long long value = tm_config_int(t, "zset-max-listpack-value");
    if (value == -2) return TD_ERR;
    if (entries < 0 || value < 0)
        return 0; /* CONFIG not allowed (ACL, managed Redis): nothing to say */
    int64_t pending = 0;
    if (td_timers_count(t, &pending, NULL) != TD_OK) return TD_ERR;
    /* hash-sharded sets vary in fill: count 70 % of the limit per shard */
    long long compact = (long long)t->conf.shards * entries * 7 / 10;
    long long longest = TD_ID_MAX + 1 + TD_RULE_ID_MAX;
    bool warn = pending > compact / 2 || value < longest;
    if (msg && cap)
        snprintf(msg, cap,
                 "shards=%d zset-max-listpack-entries=%lld zset-max-listpack-value=%lld "
                 "pending=%lld compact_up_to=%lld%s",
                 t->conf.shards, entries, value, (long long)pending, compact,
                 value < longest ? " advice=\"raise zset-max-listpack-value to 200: members of "
                                   "long prospect ids would turn a shard into a skiplist\""
                 : pending > compact / 2 ? " advice=\"raise zset-max-listpack-entries or "
                                           "timers.shards (docs/timers.md)\""
                                         : "");
    return warn ? 1 : 0;
}

/* ---- firing counters ---- */

void td_timers_record(td_timers *t, const td_timers_round *r, bool ok) {
    t->stats.conflicts += r->conflicts;
    if (!ok) {
        t->stats.errors++;
        return;
    }
    if (r->delay)
        for (size_t i = 0; i < r->n; i++) {
            if (r->delay[i] < 0) continue;
            td_hist_observe(&t->stats.delay, (double)r->delay[i] / 1000.0);
            td_ms b = r->delay[i] / TD_TIMERS_DELAY_BUCKET_MS;
            t->stats.delay_hist[b >= TD_TIMERS_DELAY_BUCKETS ? TD_TIMERS_DELAY_BUCKETS - 1 : b]++;
        }
    t->stats.fired += r->fired;
    t->stats.stale += r->stale;
    t->stats.dropped += r->dropped;
    t->stats.recs += r->recs;
    if (r->fired) {
        t->stats.last_delay_ms = r->max_delay;
        if (r->max_delay > t->stats.max_delay_ms) t->stats.max_delay_ms = r->max_delay;
    }
}

void td_timers_note_error(td_timers *t) { t->stats.errors++; }
