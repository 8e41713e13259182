/*
 * bench_redis.c - throughput of the state store: batches of prospects loaded
 * (one HGETALL pipeline) and stored back (one EVALSHA compare-and-set
 * pipeline), as the daemon loop does per Kafka batch.
 *
 * By default it starts its own redis-server (Debian binary on PATH, or
 * $TD_REDIS_SERVER) on a free 127.0.0.1 port with no persistence, and stops
 * it at the end; --port (and --host) use a running server instead (its data
 * under the key prefix "tdbench" is overwritten).
 *
 *   bench_redis [--batch 500] [--prospects 10000] [--seconds 5]
 *               [--host 127.0.0.1 --port 6379] [--rich]
 *
 * Prints: batches (load+store round trips) per second, prospects per second,
 * per-batch latency percentiles of load and store, and the memory per
 * prospect (MEMORY USAGE of one key, and used_memory / keys).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "harness.h"

#include "td_redis.h"
#include "td_state.h"

static int64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static redisContext *raw_connect(const char *host, int port) {
    redisContext *c = redisConnectWithTimeout(host, port, (struct timeval){1, 0});
    if (c && c->err) {
        redisFree(c);
        return NULL;
    }
    return c;
}

/* A typical prospect a few weeks into a sequence: email and LinkedIn
 * activity, CRM attributes, a dozen applied events, two rules fired, one
 * timer pending. --rich: every channel active (the integration test's). */
static void fill(td_state *st, int i, bool rich) {
    const td_ms t0 = 1795000000000LL + (td_ms)i * 1000;
    td_strlcpy(st->owner_id, "rep-7", sizeof st->owner_id);
    st->events += 1;
    int nch = rich ? TD_CH__COUNT : 2;
    for (int c = 0; c < nch; c++) {
        td_chan_state *ch = &st->ch[c == 1 && !rich ? TD_CH_LINKEDIN : c];
        ch->sent = 3;
        ch->delivered = 3;
        ch->opened = 2;
        ch->unanswered = 2;
        ch->opens_since_reply = 2;
        ch->last_sent_at = t0 - TD_DAY;
        ch->last_opened_at = t0 - TD_HOUR;
        ch->consent = TD_TRI_YES;
    }
    st->stage = TD_STAGE_CONTACTED;
    st->tier = 2;
    td_strlcpy(st->country, "FR", sizeof st->country);
    td_strlcpy(st->sector, "manufacturing", sizeof st->sector);
    td_strlcpy(st->timezone, "Europe/Paris", sizeof st->timezone);
    td_strlcpy(st->language, "fr", sizeof st->language);
    st->first_seen_at = t0 - 20 * TD_DAY;
    st->last_event_at = t0;
    st->first_touch_at = t0 - 20 * TD_DAY;
    st->last_touch_at = t0 - TD_DAY;
    for (uint32_t k = 0; k < (rich ? 20u : 4u); k++)
        st->touch_ring[k] = t0 - (td_ms)(20 - k) * TD_DAY;
    st->touch_count = rich ? 20 : 4;
    st->touch_head = st->touch_count;
    st->hour_hist[9] = 2;
    st->hour_hist[15] = 1;
    char eid[48];
    for (int k = 0; k < (rich ? 32 : 12); k++) {
        snprintf(eid, sizeof eid, "e-%d-%d", i, k);
        td_state_remember(st, eid);
    }
    td_state_pos_set(st, "crm.events", i % 12, 100000 + i);
    td_state_set_fired(st, "value.first-touch", t0 - 20 * TD_DAY);
    td_state_set_fired(st, "ghosting.pivot-channel", t0 - TD_DAY);
    td_state_arm_timer(st, "silence.after-value", t0 + 3 * TD_DAY, "e-armer");
}

static int64_t cpu_us(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (int64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000 + ru.ru_utime.tv_usec +
           ru.ru_stime.tv_usec;
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static double pct(int64_t *v, size_t n, double p) {
    if (n == 0) return 0;
    size_t i = (size_t)(p * (double)(n - 1));
    return (double)v[i] / 1000.0;
}

static long long info_field(redisContext *c, const char *section, const char *field) {
    redisReply *rep = redisCommand(c, "INFO %s", section);
    long long v = -1;
    if (rep && rep->type == REDIS_REPLY_STRING) {
        const char *p = strstr(rep->str, field);
        if (p) v = atoll(p + strlen(field) + 1);
    }
    if (rep) freeReplyObject(rep);
    return v;
}

static void usage(void) {
    fprintf(stderr, "usage: bench_redis [--batch N] [--prospects N] [--seconds S] "
                    "[--host H] [--port P] [--rich]\n");
}

int main(int argc, char **argv) {
    size_t batch = 500, prospects = 10000;
    double seconds = 5;
    const char *host = "127.0.0.1";
    int port = 0;
    bool rich = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--rich")) {
            rich = true;
        } else if (!strcmp(a, "--batch") && v) {
            batch = (size_t)strtoul(v, NULL, 10);
            i++;
        } else if (!strcmp(a, "--prospects") && v) {
            prospects = (size_t)strtoul(v, NULL, 10);
            i++;
        } else if (!strcmp(a, "--seconds") && v) {
            seconds = atof(v);
            i++;
        } else if (!strcmp(a, "--host") && v) {
            host = v;
            i++;
        } else if (!strcmp(a, "--port") && v) {
            port = atoi(v);
            i++;
        } else {
            usage();
            return 2;
        }
    }
    if (batch == 0 || prospects < batch || seconds <= 0) {
        usage();
        return 2;
    }

    /* without --port: a private redis-server (the integration tests' harness) */
    td_test_redis server = {0};
    if (port == 0) {
        if (td_test_redis_start(&server) != 0) {
            fprintf(stderr, "bench_redis: could not start redis-server\n");
            return 1;
        }
        port = server.port;
    }

    td_redis_conf conf;
    td_redis_conf_default(&conf);
    conf.host = host;
    conf.port = port;
    conf.key_prefix = "tdbench";
    char err[256];
    td_redis *r = td_redis_new(&conf, err, sizeof err);
    if (!r || !td_redis_connected(r)) {
        fprintf(stderr, "bench_redis: %s\n", r ? td_redis_last_error(r) : err);
        td_redis_free(r);
        td_test_redis_stop(&server); /* no-op when not started */
        return 1;
    }
    redisContext *raw = raw_connect(host, port);
    long long mem0 = raw ? info_field(raw, "memory", "used_memory") : -1;

    td_state *st = calloc(batch, sizeof *st);
    int64_t *exp = calloc(batch, sizeof *exp);
    int *res = calloc(batch, sizeof *res);
    size_t maxb = 1 << 20;
    int64_t *lat_load = calloc(maxb, sizeof *lat_load),
            *lat_store = calloc(maxb, sizeof *lat_store);
    if (!st || !exp || !res || !lat_load || !lat_store) {
        fprintf(stderr, "bench_redis: out of memory\n");
        return 1;
    }

    /* Warm-up (not measured): every prospect exists before the clock starts,
     * so every load returns a full hash, as in steady state. */
    char id[32];
    size_t errors = 0;
    for (size_t base = 0; base < prospects; base += batch) {
        size_t n = prospects - base < batch ? prospects - base : batch;
        for (size_t i = 0; i < n; i++) {
            snprintf(id, sizeof id, "p-%zu", base + i);
            td_state_init(&st[i], id);
        }
        if (td_redis_load(r, st, n) != TD_OK) {
            fprintf(stderr, "warm-up load: %s\n", td_redis_last_error(r));
            errors++;
        }
        for (size_t i = 0; i < n; i++) {
            exp[i] = st[i].version;
            fill(&st[i], (int)(base + i), rich);
        }
        if (td_redis_store(r, st, exp, n, res) != TD_OK) {
            fprintf(stderr, "warm-up store: %s\n", td_redis_last_error(r));
            errors++;
        }
        for (size_t i = 0; i < n; i++)
            td_state_free(&st[i]);
    }

    size_t nb = 0, conflicts = 0, next = 0;
    int64_t t_load = 0, t_store = 0;
    int64_t start = now_us(), deadline = start + (int64_t)(seconds * 1e6);
    int64_t cpu0 = cpu_us();
    while (now_us() < deadline && nb < maxb) {
        for (size_t i = 0; i < batch; i++) {
            snprintf(id, sizeof id, "p-%zu", (next + i) % prospects);
            td_state_init(&st[i], id);
        }
        int64_t a = now_us();
        if (td_redis_load(r, st, batch) != TD_OK) {
            fprintf(stderr, "load: %s\n", td_redis_last_error(r));
            errors++;
        }
        int64_t b = now_us();
        for (size_t i = 0; i < batch; i++) {
            exp[i] = st[i].version;
            fill(&st[i], (int)((next + i) % prospects), rich);
        }
        int64_t c = now_us();
        if (td_redis_store(r, st, exp, batch, res) != TD_OK) {
            fprintf(stderr, "store: %s\n", td_redis_last_error(r));
            errors++;
        } else {
            for (size_t i = 0; i < batch; i++)
                conflicts += res[i] == TD_REDIS_CONFLICT;
        }
        int64_t d = now_us();
        lat_load[nb] = b - a;
        lat_store[nb] = d - c;
        t_load += b - a;
        t_store += d - c;
        nb++;
        for (size_t i = 0; i < batch; i++)
            td_state_free(&st[i]);
        next = (next + batch) % prospects;
    }
    double wall = (double)(now_us() - start) / 1e6;
    double cpu = (double)(cpu_us() - cpu0);
    double io = (double)(t_load + t_store) / 1e6;

    qsort(lat_load, nb, sizeof *lat_load, cmp_i64);
    qsort(lat_store, nb, sizeof *lat_store, cmp_i64);
    printf("bench_redis: redis %s:%d, batch %zu, %zu distinct prospects, %s state, %.1f s\n", host,
           port, batch, prospects, rich ? "rich" : "typical", wall);
    printf("  batches (load+store round trips): %zu  -> %.1f batches/s wall, %.1f batches/s in "
           "redis calls\n",
           nb, (double)nb / wall, (double)nb / io);
    printf(
        "  prospects: %.0f prospects/s wall (load+store each), %.0f prospects/s in redis calls\n",
        (double)(nb * batch) / wall, (double)(nb * batch) / io);
    printf("  load  per batch: mean %.2f ms  p50 %.2f  p99 %.2f  max %.2f\n",
           (double)t_load / 1000.0 / (double)nb, pct(lat_load, nb, 0.5), pct(lat_load, nb, 0.99),
           pct(lat_load, nb, 1.0));
    printf("  store per batch: mean %.2f ms  p50 %.2f  p99 %.2f  max %.2f\n",
           (double)t_store / 1000.0 / (double)nb, pct(lat_store, nb, 0.5), pct(lat_store, nb, 0.99),
           pct(lat_store, nb, 1.0));
    printf("  client CPU (touchd side: serialise, parse, hiredis): %.2f us per prospect "
           "(load+store)\n",
           cpu / (double)(nb * batch));
    printf("  conflicts %zu, errors %zu\n", conflicts, errors);

    if (raw) {
        redisReply *rep = redisCommand(raw, "MEMORY USAGE %s SAMPLES 0", "tdbench:p:{p-1}");
        long long one = rep && rep->type == REDIS_REPLY_INTEGER ? rep->integer : -1;
        if (rep) freeReplyObject(rep);
        rep = redisCommand(raw, "OBJECT ENCODING %s", "tdbench:p:{p-1}");
        char enc[32] = "?";
        if (rep && rep->type == REDIS_REPLY_STRING) snprintf(enc, sizeof enc, "%s", rep->str);
        if (rep) freeReplyObject(rep);
        rep = redisCommand(raw, "HLEN %s", "tdbench:p:{p-1}");
        long long hlen = rep && rep->type == REDIS_REPLY_INTEGER ? rep->integer : -1;
        if (rep) freeReplyObject(rep);
        rep = redisCommand(raw, "INFO commandstats");
        if (rep && rep->type == REDIS_REPLY_STRING) {
            const char *cmds[] = {"cmdstat_hgetall:", "cmdstat_evalsha:"};
            for (int k = 0; k < 2; k++) {
                const char *q = strstr(rep->str, cmds[k]);
                const char *u = q ? strstr(q, "usec_per_call=") : NULL;
                if (u) printf("  server CPU: %s %.2f us per call\n", cmds[k] + 8, atof(u + 14));
            }
        }
        if (rep) freeReplyObject(rep);
        long long mem1 = info_field(raw, "memory", "used_memory");
        size_t keys = prospects;
        printf("  memory: MEMORY USAGE of one prospect %lld bytes (%lld fields, encoding %s); "
               "used_memory grew %.0f bytes/prospect over %zu prospects\n",
               one, hlen, enc, keys ? (double)(mem1 - mem0) / (double)keys : 0.0, keys);
        redisFree(raw);
    }

    free(st);
    free(exp);
    free(res);
    free(lat_load);
    free(lat_store);
    td_redis_free(r);
    td_test_redis_stop(&server); /* no-op when not started */
    return errors ? 1 : 0;
}
