/*
 * bench_timers.c - the durable timer index under load, against a real
 * redis-server (started on a free loopback port unless --port is given).
 *
 * Phases (each starts from FLUSHALL):
 *
 *   1. arm: N timers (default 1,000,000) through the state-write script
 *      td_redis_store uses (one EVALSHA per prospect, batches of 500
 *      pipelined; each prospect a minimal state with one pending timer).
 *      Reports timers/s, and the index's memory: the sum of MEMORY USAGE of
 *      the shard keys, and how many shards are listpack-encoded.
 *   2. memory: the same N members written straight into the shards (ZADD,
 *      pipelined, no state hashes) so that INFO used_memory's delta is the
 *      index alone: bytes per pending timer.
 *   3. fire (claim + ack): everything due; claim_batch members per claim
 *      call, each batch acked: timers/s.
 *   4. delay: timers due at --rate per second over --window seconds (armed
 *      through the script with their state), then td_timers_poll (the
 *      daemon's path: claim, load, engine step, publish to a null sink,
 *      store, ack) on the wall clock. Reports the firing delay (claim time -
 *      due time) p50/p90/p99/max, and whether every timer fired once.
 *   5. idle: N timers pending (due in a year), then the cost of one claim
 *      call (td_timers_claim, what every poll runs) when nothing is due, when
 *      a few timers are due (10 per call, armed through the state script),
 *      and when a full claim_batch is due (busy): round trip, Redis time
 *      (INFO commandstats usec of the EVALSHA) and ZRANGEBYSCORE calls per
 *      claim (the keys a claim looks at).
 *
 *   bench_timers [--timers N] [--shards S] [--rate R] [--window SEC]
 *                [--listpack-entries E] [--listpack-value V]
 *                [--claim-batch B] [--poll-ms P] [--phases arm,mem,fire,delay,idle]
 *                [--sweep-ms S] [--background N]   (delay phase: N more timers pending, due later)
 *                [--host H --port P]
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "harness.h"

#include "td_engine.h"
#include "td_pipeline.h"
#include "td_redis.h"
#include "td_rules.h"
#include "td_state.h"
#include "td_timers.h"

static int64_t mono_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static td_ms wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (td_ms)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static redisContext *raw_connect(const char *host, int port) {
    redisContext *c = redisConnectWithTimeout(host, port, (struct timeval){1, 0});
    if (c && c->err) {
        redisFree(c);
        return NULL;
    }
    if (c) redisSetTimeout(c, (struct timeval){60, 0});
    return c;
}

static long long info_field(redisContext *c, const char *section, const char *field) {
    redisReply *rep = redisCommand(c, "INFO %s", section);
    long long v = -1;
    if (rep && rep->type == REDIS_REPLY_STRING) {
        char pat[128];
        snprintf(pat, sizeof pat, "\r\n%s:", field);
        const char *p = strstr(rep->str, pat);
        if (p) v = atoll(p + strlen(pat));
    }
    if (rep) freeReplyObject(rep);
    return v;
}

static void cmd(redisContext *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void cmd(redisContext *c, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    redisReply *rep = redisvCommand(c, fmt, ap);
    va_end(ap);
    if (!rep || rep->type == REDIS_REPLY_ERROR) {
        fprintf(stderr, "bench_timers: %s: %s\n", fmt, rep ? rep->str : c->errstr);
        exit(1);
    }
    freeReplyObject(rep);
}

static const char RULES[] =
    "rules = (\n"
    "  { id = \"bench.silence\"; on = [ \"email.sent\" ]; after = \"72h\";\n"
    "    when = \"email.unanswered >= 0\";\n"
    "    recommend = { channel = \"email\"; touch = \"follow_up\"; }; }\n"
    ");\n";

static void pid_of(size_t i, char *buf, size_t cap) { snprintf(buf, cap, "p-%08zu", i); }

/* Arms timers i in [0, n) due at due_fn(i) through td_redis_store, 500 per
 * pipeline. @returns seconds taken. */
static double arm_script_pfx(td_redis *r, const char *pfx, size_t n, td_ms base, double per_ms,
                             int *fail) {
    enum { B = 500 };
    td_state st[B];
    int64_t exp[B];
    int res[B];
    int64_t t0 = mono_us();
    for (size_t start = 0; start < n; start += B) {
        size_t k = n - start < B ? n - start : B;
        for (size_t j = 0; j < k; j++) {
            char pid[32];
            snprintf(pid, sizeof pid, "%s%08zu", pfx, start + j);
            td_state_init(&st[j], pid);
            td_ms due = base + (td_ms)((double)(start + j) / per_ms);
            td_state_arm_timer(&st[j], "bench.silence", due, "e-1");
            exp[j] = 0;
        }
        if (td_redis_store(r, st, exp, k, res) != TD_OK) {
            fprintf(stderr, "bench_timers: store: %s\n", td_redis_last_error(r));
            *fail = 1;
        }
        for (size_t j = 0; j < k; j++) {
            if (res[j] != TD_REDIS_STORED) *fail = 1;
            td_state_free(&st[j]);
        }
        if (*fail) break;
    }
    return (double)(mono_us() - t0) / 1e6;
}

static double arm_script(td_redis *r, size_t n, td_ms base, double per_ms, int *fail) {
    return arm_script_pfx(r, "p-", n, base, per_ms, fail);
}

/* INFO commandstats: calls and usec of one command since the last
 * CONFIG RESETSTAT (0 when it did not run). */
static void cmdstat(redisContext *c, const char *name, long long *calls, long long *usec) {
    *calls = *usec = 0;
    redisReply *rep = redisCommand(c, "INFO commandstats");
    if (rep && rep->type == REDIS_REPLY_STRING) {
        char pat[64];
        snprintf(pat, sizeof pat, "cmdstat_%s:calls=", name);
        const char *p = strstr(rep->str, pat);
        if (p) {
            *calls = atoll(p + strlen(pat));
            const char *u = strstr(p, "usec=");
            if (u) *usec = atoll(u + 5);
        }
    }
    if (rep) freeReplyObject(rep);
}

/* Writes n members "<pfx>NNNNNNNN\x1fbench.silence" straight into their shards
 * (no state hashes), due at base + i. @returns 0 or -1. */
static int zadd_direct(redisContext *raw, const char *pfx, size_t n, int shards, td_ms base) {
    for (size_t b = 0; b < n; b += 1000) {
        size_t k = n - b < 1000 ? n - b : 1000;
        for (size_t j = 0; j < k; j++) {
            char pid[32], key[96], m[64];
            snprintf(pid, sizeof pid, "%s%08zu", pfx, b + j);
            td_timers_shard_key("tdbench", td_timers_shard(pid, (uint32_t)shards), key, sizeof key);
            snprintf(m, sizeof m, "%s\x1f%s", pid, "bench.silence");
            redisAppendCommand(raw, "ZADD %s %lld %s", key, (long long)(base + (td_ms)(b + j)), m);
        }
        for (size_t j = 0; j < k; j++) {
            redisReply *rep;
            if (redisGetReply(raw, (void **)&rep) != REDIS_OK) return -1;
            freeReplyObject(rep);
        }
    }
    return 0;
}

/* One measured claim call: round trip (us), Redis time of the claim script
 * (us) and its ZRANGEBYSCORE calls. @returns the number claimed, or -1. */
static int timed_claim(redisContext *raw, td_timers *t, td_claim *cl, size_t max, double *rt_us,
                       double *redis_us, double *zr) {
    redisReply *rs = redisCommand(raw, "CONFIG RESETSTAT");
    freeReplyObject(rs);
    int64_t t0 = mono_us();
    int n = td_timers_claim(t, wall_ms(), cl, max);
    *rt_us += (double)(mono_us() - t0);
    long long calls, usec;
    cmdstat(raw, "evalsha", &calls, &usec);
    *redis_us += (double)usec;
    cmdstat(raw, "zrangebyscore", &calls, &usec);
    *zr += (double)calls;
    return n;
}

typedef struct shard_mem {
    long long bytes, listpack, skiplist, members;
} shard_mem;

static shard_mem index_memory(redisContext *c, const char *prefix, int shards) {
    shard_mem m = {0, 0, 0, 0};
    for (int s = 0; s < shards; s++) {
        char key[96];
        td_timers_shard_key(prefix, (uint32_t)s, key, sizeof key);
        redisAppendCommand(c, "MEMORY USAGE %s SAMPLES 0", key);
        redisAppendCommand(c, "OBJECT ENCODING %s", key);
        redisAppendCommand(c, "ZCARD %s", key);
    }
    for (int s = 0; s < shards; s++) {
        redisReply *a, *b, *z;
        redisGetReply(c, (void **)&a);
        redisGetReply(c, (void **)&b);
        redisGetReply(c, (void **)&z);
        if (a && a->type == REDIS_REPLY_INTEGER) m.bytes += a->integer;
        if (b && b->type == REDIS_REPLY_STRING) {
            if (!strcmp(b->str, "listpack"))
                m.listpack++;
            else
                m.skiplist++;
        }
        if (z && z->type == REDIS_REPLY_INTEGER) m.members += z->integer;
        freeReplyObject(a);
        freeReplyObject(b);
        freeReplyObject(z);
    }
    return m;
}

static int null_send(void *ud, const char *pid, const char *json, size_t len) {
    (void)pid;
    (void)json;
    (void)len;
    (*(size_t *)ud)++;
    return 0;
}
static int null_wait(void *ud) {
    (void)ud;
    return 0;
}

static void usage(void) {
    fprintf(stderr, "usage: bench_timers [--timers N] [--shards S] [--rate R] [--window SEC] "
                    "[--listpack-entries E] [--listpack-value V] [--claim-batch B] "
                    "[--poll-ms P] [--sweep-ms S] [--phases arm,mem,fire,delay,idle] "
                    "[--host H --port P]\n");
}

int main(int argc, char **argv) {
    size_t ntimers = 1000000;
    int shards = 4096, rate = 10000, window = 20, lp_entries = 0, lp_value = 0, claim_batch = 500,
        poll_ms = 100;
    const char *phases = "arm,mem,fire,delay,idle";
    int sweep_ms = 0;
    const char *host = "127.0.0.1";
    int port = 0;
    size_t background = 0;
    for (int i = 1; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            usage();
            return 2;
        }
        if (!strcmp(a, "--timers"))
            ntimers = strtoul(v, NULL, 10);
        else if (!strcmp(a, "--shards"))
            shards = atoi(v);
        else if (!strcmp(a, "--rate"))
            rate = atoi(v);
        else if (!strcmp(a, "--window"))
            window = atoi(v);
        else if (!strcmp(a, "--listpack-entries"))
            lp_entries = atoi(v);
        else if (!strcmp(a, "--listpack-value"))
            lp_value = atoi(v);
        else if (!strcmp(a, "--claim-batch"))
            claim_batch = atoi(v);
        else if (!strcmp(a, "--poll-ms"))
            poll_ms = atoi(v);
        else if (!strcmp(a, "--sweep-ms"))
            sweep_ms = atoi(v);
        else if (!strcmp(a, "--background"))
            background = strtoul(v, NULL, 10);
        else if (!strcmp(a, "--phases"))
            phases = v;
        else if (!strcmp(a, "--host"))
            host = v;
        else if (!strcmp(a, "--port"))
            port = atoi(v);
        else {
            usage();
            return 2;
        }
    }
    if (ntimers == 0 || shards < 1 || rate < 1 || window < 1) {
        usage();
        return 2;
    }
    /* without --port: a private redis-server (the integration tests' harness) */
    td_test_redis server = {0};
    if (port == 0) {
        if (td_test_redis_start(&server) != 0) {
            fprintf(stderr, "bench_timers: could not start redis-server\n");
            return 1;
        }
        port = server.port;
    }
    int rc = 0;
    redisContext *raw = raw_connect(host, port);
    if (!raw) {
        fprintf(stderr, "bench_timers: cannot connect\n");
        rc = 1;
        goto out;
    }
    if (lp_entries > 0) cmd(raw, "CONFIG SET zset-max-listpack-entries %d", lp_entries);
    if (lp_value > 0) cmd(raw, "CONFIG SET zset-max-listpack-value %d", lp_value);
    {
        redisReply *e = redisCommand(raw, "CONFIG GET zset-max-listpack-entries");
        redisReply *v = redisCommand(raw, "CONFIG GET zset-max-listpack-value");
        redisReply *i = redisCommand(raw, "INFO server");
        const char *ver = i && i->str ? strstr(i->str, "redis_version:") : NULL;
        printf("redis %.*s, shards %d, zset-max-listpack-entries %s, zset-max-listpack-value %s\n",
               ver ? (int)strcspn(ver + 14, "\r\n") : 1, ver ? ver + 14 : "?", shards,
               e && e->elements == 2 ? e->element[1]->str : "?",
               v && v->elements == 2 ? v->element[1]->str : "?");
        freeReplyObject(e);
        freeReplyObject(v);
        freeReplyObject(i);
    }

    td_redis_conf conf;
    td_redis_conf_default(&conf);
    conf.host = host;
    conf.port = port;
    conf.key_prefix = "tdbench";
    conf.command_timeout_ms = 60000;
    char err[256];
    td_redis *r = td_redis_new(&conf, err, sizeof err);
    if (!r || !td_redis_connected(r)) {
        fprintf(stderr, "bench_timers: %s\n", r ? td_redis_last_error(r) : err);
        td_redis_free(r);
        rc = 1;
        goto out;
    }
    td_redis_set_timer_shards(r, (uint32_t)shards);
    td_timers_conf tc;
    td_timers_conf_default(&tc);
    tc.shards = shards;
    tc.claim_batch = claim_batch;
    tc.poll_ms = poll_ms;
    if (sweep_ms > 0) tc.sweep_ms = sweep_ms;
    if (tc.sweep_ms < poll_ms) tc.sweep_ms = poll_ms;

    /* 1. arming through the state script */
    if (strstr(phases, "arm")) {
        cmd(raw, "FLUSHALL");
        long long m0 = info_field(raw, "memory", "used_memory");
        int fail = 0;
        double s = arm_script(r, ntimers, wall_ms() + 365 * TD_DAY, 1.0, &fail);
        if (fail) {
            rc = 1;
            goto done;
        }
        long long m1 = info_field(raw, "memory", "used_memory");
        shard_mem sm = index_memory(raw, "tdbench", shards);
        printf("arm (script: state hash + ZADD, 1 EVALSHA/prospect, 500/pipeline): %zu timers in "
               "%.1f s = %.0f timers/s\n",
               ntimers, s, (double)ntimers / s);
        printf(
            "  index: %lld members, MEMORY USAGE sum %lld B = %.1f B/timer; shards listpack %lld, "
            "skiplist %lld\n",
            sm.members, sm.bytes, (double)sm.bytes / (double)ntimers, sm.listpack, sm.skiplist);
        printf("  used_memory delta incl. the %zu state hashes: %.1f B/prospect\n", ntimers,
               (double)(m1 - m0) / (double)ntimers);
    }

    /* 2. index memory alone */
    if (strstr(phases, "mem")) {
        cmd(raw, "FLUSHALL");
        long long m0 = info_field(raw, "memory", "used_memory");
        int64_t t0 = mono_us();
        td_ms base = wall_ms() + 365 * TD_DAY;
        for (size_t start = 0; start < ntimers; start += 1000) {
            size_t k = ntimers - start < 1000 ? ntimers - start : 1000;
            for (size_t j = 0; j < k; j++) {
                char pid[32], key[96], m[64];
                pid_of(start + j, pid, sizeof pid);
                td_timers_shard_key("tdbench", td_timers_shard(pid, (uint32_t)shards), key,
                                    sizeof key);
                snprintf(m, sizeof m, "%s\x1f%s", pid, "bench.silence");
                redisAppendCommand(raw, "ZADD %s %lld %s", key,
                                   (long long)(base + (td_ms)(start + j)), m);
            }
            for (size_t j = 0; j < k; j++) {
                redisReply *rep;
                if (redisGetReply(raw, (void **)&rep) != REDIS_OK) {
                    rc = 1;
                    goto done;
                }
                freeReplyObject(rep);
            }
        }
        double s = (double)(mono_us() - t0) / 1e6;
        long long m1 = info_field(raw, "memory", "used_memory");
        shard_mem sm = index_memory(raw, "tdbench", shards);
        printf("memory (ZADD only, member \"p-NNNNNNNN\\x1fbench.silence\" = 24 B): %zu timers "
               "(%.0f ZADD/s)\n",
               ntimers, (double)ntimers / s);
        printf("  used_memory delta %lld B = %.1f B per pending timer (target < 100); MEMORY "
               "USAGE sum %.1f B/timer; shards listpack %lld, skiplist %lld\n",
               m1 - m0, (double)(m1 - m0) / (double)ntimers, (double)sm.bytes / (double)ntimers,
               sm.listpack, sm.skiplist);

        /* 3. firing rate: claim + ack of everything */
        if (strstr(phases, "fire")) {
            td_timers *t = td_timers_new(&conf, &tc, err, sizeof err);
            if (!t) {
                fprintf(stderr, "bench_timers: %s\n", err);
                rc = 1;
                goto done;
            }
            td_claim *cl = calloc((size_t)claim_batch, sizeof *cl);
            size_t total = 0;
            int64_t f0 = mono_us();
            td_ms now = base + (td_ms)ntimers + 1;
            int idle = 0;
            while (total < ntimers && idle < 2 * shards) {
                int n = td_timers_claim(t, now, cl, (size_t)claim_batch);
                if (n < 0) {
                    fprintf(stderr, "bench_timers: claim: %s\n", td_timers_last_error(t));
                    rc = 1;
                    break;
                }
                if (n == 0) {
                    idle++;
                    continue;
                }
                idle = 0;
                if (td_timers_ack(t, cl, (size_t)n) != n) {
                    fprintf(stderr, "bench_timers: ack mismatch\n");
                    rc = 1;
                    break;
                }
                total += (size_t)n;
            }
            double fs = (double)(mono_us() - f0) / 1e6;
            printf("fire (claim %d + ack, index only): %zu timers in %.1f s = %.0f timers/s "
                   "(%llu claim calls)\n",
                   claim_batch, total, fs, (double)total / fs,
                   (unsigned long long)td_timers_get_stats(t)->polls);
            free(cl);
            td_timers_free(t);
        }
    }

    /* 4. firing delay at a fixed rate, the daemon's full path */
    if (strstr(phases, "delay")) {
        cmd(raw, "FLUSHALL");
        td_source src = {.name = "bench.rules", .text = RULES, .len = strlen(RULES)};
        td_diags dg = {0};
        td_ruleset *rs = td_ruleset_compile(&src, 1, &dg);
        td_diags_free(&dg);
        td_tzdb *tz = td_tzdb_new();
        size_t n = (size_t)rate * (size_t)window;
        td_ms start = wall_ms() + 3000 + (td_ms)(n / 20000) * 1000; /* time to arm first */
        int fail = 0;
        double as = arm_script(r, n, start, (double)rate / 1000.0, &fail);
        if (fail || !rs) {
            rc = 1;
            goto done;
        }
        /* background: pending timers due in a year, so the shards are as
         * full as with a large population (ZADD straight into the index) */
        for (size_t b = 0; b < background; b += 1000) {
            size_t k = background - b < 1000 ? background - b : 1000;
            for (size_t j = 0; j < k; j++) {
                char pid[32], key[96], m[64];
                snprintf(pid, sizeof pid, "b-%08zu", b + j);
                td_timers_shard_key("tdbench", td_timers_shard(pid, (uint32_t)shards), key,
                                    sizeof key);
                snprintf(m, sizeof m, "%s\x1f%s", pid, "bench.silence");
                redisAppendCommand(raw, "ZADD %s %lld %s", key,
                                   (long long)(start + 365 * TD_DAY + (td_ms)(b + j)), m);
            }
            for (size_t j = 0; j < k; j++) {
                redisReply *rep;
                if (redisGetReply(raw, (void **)&rep) != REDIS_OK) {
                    rc = 1;
                    goto done;
                }
                freeReplyObject(rep);
            }
        }
        if (background)
            printf("delay: %zu background timers pending (due in a year)\n", background);
        td_ms lead = start - wall_ms();
        printf("delay: %zu timers due at %d/s over %d s, armed in %.1f s; first due in %lld ms\n",
               n, rate, window, as, (long long)lead);
        td_timers *t = td_timers_new(&conf, &tc, err, sizeof err);
        size_t published = 0;
        td_timers_sink sink = {&published, null_send, null_wait, NULL, NULL, NULL};
        td_ms end = start + (td_ms)window * 1000 + 10000;
        int64_t busy_us = 0;
        while (wall_ms() < end && td_timers_get_stats(t)->fired < n) {
            size_t claimed = 0;
            int64_t p0 = mono_us();
            if (td_timers_poll(t, r, rs, tz, wall_ms(), &sink, &claimed) != TD_OK) {
                fprintf(stderr, "bench_timers: poll: %s\n", td_timers_last_error(t));
                rc = 1;
                break;
            }
            busy_us += mono_us() - p0;
            if (claimed < (size_t)claim_batch) sleep_ms(poll_ms < 20 ? poll_ms : 20);
        }
        const td_timers_stats *st = td_timers_get_stats(t);
        printf("  fired %llu of %zu (recs %zu, stale %llu, conflicts %llu), polls %llu, "
               "poller busy %.1f%% of the window\n",
               (unsigned long long)st->fired, n, published, (unsigned long long)st->stale,
               (unsigned long long)st->conflicts, (unsigned long long)st->polls,
               100.0 * (double)busy_us / 1000.0 / ((double)window * 1000.0));
        printf("  firing delay (claim time - due time): p50 <= %lld ms, p90 <= %lld ms, p99 <= "
               "%lld ms, max %lld ms (target p99 < 1000 ms)\n",
               (long long)td_timers_delay_quantile(st, 0.50),
               (long long)td_timers_delay_quantile(st, 0.90),
               (long long)td_timers_delay_quantile(st, 0.99), (long long)st->max_delay_ms);
        if (st->fired != n) rc = 1;
        /* the cost of an idle sweep: claim calls that find nothing */
        long long c0 = info_field(raw, "stats", "total_commands_processed");
        (void)c0;
        redisReply *cs = redisCommand(raw, "CONFIG RESETSTAT");
        freeReplyObject(cs);
        int64_t i0 = mono_us();
        uint64_t p0 = st->polls;
        td_claim idle_c[4];
        for (int k = 0; k < 50; k++)
            (void)td_timers_claim(t, wall_ms(), idle_c, 4);
        double per = (double)(mono_us() - i0) / 50.0;
        cs = redisCommand(raw, "INFO commandstats");
        const char *ev = cs && cs->str ? strstr(cs->str, "cmdstat_evalsha:") : NULL;
        const char *us = ev ? strstr(ev, "usec_per_call=") : NULL;
        printf("  idle claim call (window of %d shards): %.2f ms round trip, %.2f ms in Redis "
               "(%llu calls); at poll_ms %d that is %.1f%% of one Redis core per instance\n",
               (int)(((int64_t)shards * tc.poll_ms + tc.sweep_ms - 1) / tc.sweep_ms), per / 1000.0,
               us ? atof(us + 14) / 1000.0 : -1.0, (unsigned long long)(st->polls - p0), poll_ms,
               us ? atof(us + 14) / 1000.0 / poll_ms * 100.0 : -1.0);
        freeReplyObject(cs);
        td_timers_free(t);
        td_tzdb_free(tz);
        td_ruleset_free(rs);
    }
    /* 5. the cost of one claim call: idle, lightly loaded, busy */
    if (strstr(phases, "idle")) {
        cmd(raw, "FLUSHALL");
        td_ms now0 = wall_ms();
        if (zadd_direct(raw, "i-", ntimers, shards, now0 + 365 * TD_DAY) != 0) {
            rc = 1;
            goto done;
        }
        /* the same population through the state script would take minutes:
         * written straight into the shards, then a warm-up of polls (a full
         * round robin at the configured sweep, or the start-up pass) */
        td_timers *t = td_timers_new(&conf, &tc, err, sizeof err);
        if (!t) {
            fprintf(stderr, "bench_timers: %s\n", err);
            rc = 1;
            goto done;
        }
        td_claim *cl = calloc((size_t)claim_batch, sizeof *cl);
        for (int k = 0; k < 20; k++)
            (void)td_timers_claim(t, wall_ms(), cl, (size_t)claim_batch);
        enum { M = 200 };
        double rt = 0, ru = 0, zr = 0;
        for (int k = 0; k < M; k++)
            if (timed_claim(raw, t, cl, (size_t)claim_batch, &rt, &ru, &zr) != 0) {
                fprintf(stderr, "bench_timers: idle claim claimed something\n");
                rc = 1;
            }
        printf("idle claim (%zu pending, none due, %d shards, sweep_ms %d): %.3f ms round trip, "
               "%.3f ms in Redis, %.1f ZRANGEBYSCORE per claim (mean of %d)\n",
               ntimers, shards, tc.sweep_ms, rt / M / 1000.0, ru / M / 1000.0, zr / M, M);
        /* lightly loaded: 10 timers due per claim, armed with their state */
        rt = ru = zr = 0;
        size_t got = 0;
        for (int k = 0; k < M; k++) {
            char pfx[16];
            snprintf(pfx, sizeof pfx, "l%d-", k);
            int fail = 0;
            arm_script_pfx(r, pfx, 10, wall_ms() - 5, 1e9, &fail); /* all due */
            int n = timed_claim(raw, t, cl, (size_t)claim_batch, &rt, &ru, &zr);
            if (fail || n < 0) {
                rc = 1;
                break;
            }
            got += (size_t)n;
            td_timers_ack(t, cl, (size_t)n);
        }
        printf("light claim (10 due per claim, %zu pending): %.3f ms round trip, %.3f ms in "
               "Redis, %.1f ZRANGEBYSCORE per claim, %zu of %d claimed at once\n",
               ntimers, rt / M / 1000.0, ru / M / 1000.0, zr / M, got, 10 * M);
        /* busy: 100 full batches due, armed with their state */
        size_t nb = (size_t)claim_batch * 100;
        int fail = 0;
        arm_script_pfx(r, "b-", nb, wall_ms() - 60000, 10.0, &fail);
        rt = ru = zr = 0;
        got = 0;
        int calls = 0;
        while (got < nb && calls < 1000 && !fail) {
            int n = timed_claim(raw, t, cl, (size_t)claim_batch, &rt, &ru, &zr);
            if (n < 0) {
                rc = 1;
                break;
            }
            calls++;
            got += (size_t)n;
            td_timers_ack(t, cl, (size_t)n);
        }
        printf("busy claim (%zu due, batch %d): %d claim calls, %.3f ms round trip, %.3f ms in "
               "Redis per call, %.1f ZRANGEBYSCORE per call, %.0f timers/s claimed\n",
               nb, claim_batch, calls, rt / calls / 1000.0, ru / calls / 1000.0, zr / calls,
               (double)got / (rt / 1e6));
        if (got != nb) rc = 1;
        free(cl);
        td_timers_free(t);
    }
done:
    td_redis_free(r);
out:
    if (raw) redisFree(raw);
    td_test_redis_stop(&server); /* no-op when not started */
    return rc;
}
