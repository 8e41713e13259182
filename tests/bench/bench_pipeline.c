/*
 * bench_pipeline.c - the whole touchd pipeline on this machine: the
 * librdkafka mock broker (in this process), a real redis-server, and the real
 * touchd binary as a child process.
 *
 *   (a) sustained throughput: events produced as fast as touchd keeps up
 *       (at most WINDOW events in flight: the mock broker keeps only a few MB
 *       per partition, so we consume while producing, never backlog);
 *   (b) latency at a fixed rate (10,000 events/s by default): from the
 *       produce call to the recommendation's arrival in this process (the
 *       produce time travels in the event id: "b-<seq>-<us>").
 *
 * The ruleset makes every event cause exactly one recommendation (the
 * heaviest output: one produced message per consumed one), so counting
 * recommendations counts processed events. THIS IS NOT THE DEFAULT RULESET
 * (two rules; docs/testing.md). Each recommendation also supersedes its
 * rule's pending one (a withdrawal on the output topic, counted apart) and
 * changes its prospect's plan (a message on the plan topic, BENCH_PLANS=1,
 * the default; 0 turns the plan topic off to measure what it costs).
 *
 *   (c) the floor of (b): the same rate and duration, but produced straight
 *       to the output topic (recommendation-shaped messages, touchd idle):
 *       one hop through the mock broker, producer to reader. (b) crosses
 *       the broker twice (events in, recommendations out).
 *
 * Usage: bench_pipeline [seconds_a [seconds_b [rate_b [seconds_c]]]]
 * (seconds_c defaults to seconds_b; 0 skips a phase).
 * Env: TD_TOUCHD (default: touchd next to this binary), BENCH_PROSPECTS
 * (default 10000), BENCH_PARTITIONS (4), BENCH_BATCH (touchd's
 * engine.batch_max_events, 2000), BENCH_LOG (keep touchd's log there),
 * BENCH_LOG_LEVEL (touchd's log.level; "debug" logs each batch's load,
 * compute, deliver and store milliseconds), BENCH_LINGER_MS (touchd's
 * kafka.producer linger_ms, 0 by default), BENCH_PRODUCER_EXTRA (more
 * settings in touchd's kafka.producer group, e.g. "max_in_flight = 1;"),
 * BENCH_CONFIG_EXTRA (more top-level config, e.g. "timers = { shards = 64; };"),
 * BENCH_ENGINE_EXTRA (more settings in touchd's engine group, e.g.
 * "pipeline = false;"),
 * TD_TEST_INFLIGHT (max.in.flight of this process' event producer, 1 by
 * default: see harness_kafka.c), BENCH_TICK_US ((b) and (c) produce what is
 * due every tick, 200 us by default), BENCH_REDIS_UNIX (1: touchd reaches
 * Redis by a Unix socket instead of loopback TCP).
 *
 * The harness (redis-server, mock cluster, child process) is the
 * integration tests' own, compiled in here.
 *
 * Which librdkafka: the mock broker and this process' clients use the
 * librdkafka this binary loaded; `scripts/bench-broker run` points it (with
 * LD_LIBRARY_PATH) at a build whose mock broker has two defects fixed
 * (tests/bench/mock_broker/, docs/testing.md). touchd, the system under
 * test, must run the stock library: LD_LIBRARY_PATH and LD_PRELOAD are
 * removed from the environment it inherits, and one line names the library
 * file of each (the broker's by dladdr, touchd's from /proc/<pid>/maps).
 */
#define _GNU_SOURCE /* dladdr */
#include <dlfcn.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "harness_kafka.h"
#include "td_base.h"
#include "td_time.h"

#define T_IN "touchd.events"
#define T_OUT "touchd.recommendations"
#define T_PLAN "touchd.plans"
#define T_DLQ "touchd.dead-letter"

static const char RULES[] =
    "rules = (\n"
    "  { id = \"b.sent\"; doc = \"every email sent\"; on = [ \"email.sent\" ];\n"
    "    when = \"email.sent >= 1 && !email.blocked\";\n"
    "    recommend = { channel = \"email\"; touch = \"follow_up\"; note = \"bench\"; }; },\n"
    "  { id = \"b.opened\"; doc = \"every open\"; on = [ \"email.opened\" ];\n"
    "    when = \"email.opened >= 1 && email.unanswered >= 0\";\n"
    "    recommend = { channel = \"whatsapp\"; touch = \"micro_question\"; }; }\n"
    ");\n";

/* Wall clock, microseconds: event ids carry it, and it compares with the
 * recommendations' Kafka timestamps (touchd's produce time, ms). */
static int64_t wall_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* The wall clock as RFC 3339 (UTC, ms): events are dated as they are
 * produced, like live traffic, so recommendations are neither late nor
 * expired and no plan timer comes due during the run. The seconds part is
 * formatted once a second. */
static char *put_time(char *w) {
    static int64_t sec = -1;
    static char head[TD_TIME_BUF];
    static size_t hlen;
    int64_t ms = wall_us() / 1000;
    if (ms / 1000 != sec) {
        sec = ms / 1000;
        hlen = td_time_format(sec * 1000, head, sizeof head); /* "...:SSZ" */
        hlen = hlen > 0 ? hlen - 1 : 0;                       /* without the Z */
    }
    memcpy(w, head, hlen);
    w += hlen;
    *w++ = '.';
    *w++ = (char)('0' + (ms % 1000) / 100);
    *w++ = (char)('0' + (ms % 100) / 10);
    *w++ = (char)('0' + ms % 10);
    *w++ = 'Z';
    return w;
}

static int64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* ---------------------------------------------------------- the reader */

static const char *find(const char *h, size_t hn, const char *n, size_t nn) {
    for (size_t i = 0; i + nn <= hn; i++)
        if (h[i] == n[0] && memcmp(h + i, n, nn) == 0) return h + i;
    return NULL;
}

typedef struct reader {
    rd_kafka_t *c;
    atomic_long recs; /* recommendations received */
    atomic_long wds;  /* withdrawals received (not counted in recs) */
    atomic_int stop;
    atomic_int record; /* 1: record latencies */
    int64_t *lat;      /* microseconds, end to end */
    int64_t *lat_in;   /* to touchd's produce of the recommendation (ms precision) */
    size_t nlat, caplat;
    pthread_mutex_t mu;
} reader;

static void *reader_main(void *arg) {
    reader *r = arg;
    while (!atomic_load(&r->stop)) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(r->c, 20);
        if (!m) continue;
        /* withdrawals (each rule's newer recommendation supersedes the
         * pending one) are counted apart: recommendations count events */
        static const char wd[] = "{\"kind\":\"withdrawal\"";
        if (!m->err && m->len >= sizeof wd - 1 && memcmp(m->payload, wd, sizeof wd - 1) == 0) {
            atomic_fetch_add(&r->wds, 1);
            rd_kafka_message_destroy(m);
            continue;
        }
        if (!m->err) {
            int64_t t = wall_us();
            atomic_fetch_add(&r->recs, 1);
            if (atomic_load(&r->record) && m->payload) {
                /* "event_id":"b-<seq>-<us>" */
                const char *p = find(m->payload, m->len, "\"event_id\":\"b-", 14);
                if (p) {
                    p = strchr(p + 14, '-');
                    if (p) {
                        int64_t sent = strtoll(p + 1, NULL, 10);
                        pthread_mutex_lock(&r->mu);
                        if (r->nlat == r->caplat) {
                            r->caplat = r->caplat ? r->caplat * 2 : 65536;
                            r->lat = realloc(r->lat, r->caplat * sizeof *r->lat);
                            r->lat_in = realloc(r->lat_in, r->caplat * sizeof *r->lat_in);
                        }
                        /* CreateTime: when touchd produced it (ms) */
                        int64_t made = rd_kafka_message_timestamp(m, NULL);
                        r->lat_in[r->nlat] = made > 0 ? made * 1000 + 500 - sent : -1;
                        r->lat[r->nlat++] = t - sent;
                        pthread_mutex_unlock(&r->mu);
                    }
                }
            }
        }
        rd_kafka_message_destroy(m);
    }
    return NULL;
}

/* CPU time (user + system) of process `pid` so far, in microseconds, or -1
 * (from /proc/<pid>/stat: fields 14 and 15, in clock ticks). */
static int64_t cpu_us(pid_t pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')'); /* the command name may hold spaces */
    if (!p) return -1;
    unsigned long long ut = 0, st = 0;
    /* after ")": state(3) ... utime(14) stime(15) */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    return (int64_t)((ut + st) * 1000000ULL / (unsigned long long)sysconf(_SC_CLK_TCK));
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* ------------------------------------------------------------ producing */

static long g_seq;
static int g_prospects = 10000;

static long g_tick_us = 200; /* BENCH_TICK_US: (b) produces what is due every tick */
static int g_loopback;       /* 2: phase (c), messages straight to the output topic */

/* The load generator's formatting (produce_one). */
static char *put_s(char *w, const char *s) {
    size_t n = strlen(s);
    memcpy(w, s, n);
    return w + n;
}

/* The input topic's handle, made once (a topic name per produce call is a
 * lookup in librdkafka each time). */
static rd_kafka_topic_t *g_in_rkt;
static rd_kafka_topic_t *in_topic(td_test_kafka *k) {
    if (!g_in_rkt) g_in_rkt = rd_kafka_topic_new(k->producer, T_IN, NULL);
    return g_in_rkt;
}

static int produce_one(td_test_kafka *k) {
    char ev[400], key[32];
    long seq = g_seq++;
    int p = (int)(seq % g_prospects);
    long j = seq / g_prospects;
    key[0] = 'p';
    key[1] = '-';
    int kn = 2 + (int)td_fmt_u64((uint64_t)p, key + 2);
    if (g_loopback == 2) {
        /* a recommendation-shaped message straight to the output topic */
        int n = snprintf(ev, sizeof ev, "{\"event_id\":\"b-%ld-%" PRId64 "\"}", seq, wall_us());
        rd_kafka_resp_err_t e =
            rd_kafka_producev(k->producer, RD_KAFKA_V_TOPIC(T_OUT),
                              RD_KAFKA_V_KEY(key, strlen(key)), RD_KAFKA_V_VALUE(ev, (size_t)n),
                              RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
        return e ? -1 : 0;
    }
    /* formatted by hand, not snprintf: the load generator shares the two
     * cores with what it measures, so it should cost as little as it can */
    char *w = ev;
    w = put_s(w, "{\"id\":\"b-");
    w += td_fmt_u64((uint64_t)seq, w);
    *w++ = '-';
    w += td_fmt_u64((uint64_t)wall_us(), w);
    w = put_s(w, j % 2 == 0 ? "\",\"type\":\"email.sent\",\"prospect_id\":\""
                            : "\",\"type\":\"email.opened\",\"prospect_id\":\"");
    w = put_s(w, key);
    w = put_s(w, "\",\"occurred_at\":\"");
    w = put_time(w);
    w = put_s(w, "\",\"owner_id\":\"rep-");
    w += td_fmt_u64((uint64_t)(p % 50), w);
    w = put_s(w, "\",\"data\":{\"kind\":\"value\"}}");
    int n = (int)(w - ev);
    for (;;) {
        rd_kafka_resp_err_t e =
            rd_kafka_producev(k->producer, RD_KAFKA_V_RKT(in_topic(k)),
                              RD_KAFKA_V_KEY(key, (size_t)kn), RD_KAFKA_V_VALUE(ev, (size_t)n),
                              RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
        if (!e) return 0;
        if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
            fprintf(stderr, "produce: %s\n", rd_kafka_err2str(e));
            return -1;
        }
        rd_kafka_poll(k->producer, 1);
    }
}

/* Produces `rate` events/s for `secs` seconds (what is due every tick) and
 * prints the latency percentiles of their recommendations (with
 * g_loopback == 2: of messages produced straight to the output topic). The
 * reader's samples are reset first. @returns 0, or -1 (produce failed). */
static int fixed_rate(td_test_kafka *k, reader *rd, int secs, int rate, const char *label) {
    if (secs <= 0) return 0;
    if (g_loopback == 2) {
        /* warm-up: the first produce to a topic fetches its metadata */
        for (int i = 0; i < 1000; i++)
            if (produce_one(k) < 0) return -1;
        int64_t until = now_us() + 10000000;
        while (atomic_load(&rd->recs) < g_seq && now_us() < until)
            rd_kafka_poll(k->producer, 10);
    }
    pthread_mutex_lock(&rd->mu);
    rd->nlat = 0;
    pthread_mutex_unlock(&rd->mu);
    atomic_store(&rd->record, 1);
    int64_t start = now_us(), end = start + (int64_t)secs * 1000000;
    long sent = 0;
    while (now_us() < end) {
        /* produce what the schedule says is due by now, then sleep a tick */
        long due = (long)((double)(now_us() - start) * rate / 1e6);
        while (sent < due) {
            if (produce_one(k) < 0) return -1;
            sent++;
        }
        rd_kafka_poll(k->producer, 0);
        struct timespec ts = {0, g_tick_us * 1000L};
        nanosleep(&ts, NULL);
    }
    int64_t until = now_us() + 30000000;
    while (atomic_load(&rd->recs) < g_seq && now_us() < until)
        rd_kafka_poll(k->producer, 10);
    atomic_store(&rd->record, 0);
    pthread_mutex_lock(&rd->mu);
    /* the part up to touchd's produce of the recommendation: the hop in,
     * the wait, the batch (ms precision, from the Kafka timestamp) */
    size_t n = rd->nlat, nin = 0;
    for (size_t i = 0; i < n; i++)
        if (rd->lat_in[i] >= 0) rd->lat_in[nin++] = rd->lat_in[i];
    qsort(rd->lat_in, nin, sizeof *rd->lat_in, cmp_i64);
    qsort(rd->lat, n, sizeof *rd->lat, cmp_i64);
    if (n) {
#define PCT(a, n, q) ((a)[(size_t)((double)((n)-1) * (q))] / 1000.0)
        printf("%s latency at %d events/s for %d s (%zu of %ld measured): "
               "p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.2f ms\n",
               label, rate, secs, n, sent, PCT(rd->lat, n, 0.50), PCT(rd->lat, n, 0.90),
               PCT(rd->lat, n, 0.99), rd->lat[n - 1] / 1000.0);
        if (nin && g_loopback != 2)
            printf("    of which up to touchd's produce of the recommendation (+-0.5 ms): "
                   "p50 %.1f ms, p90 %.1f ms, p99 %.1f ms, max %.1f ms\n",
                   PCT(rd->lat_in, nin, 0.50), PCT(rd->lat_in, nin, 0.90),
                   PCT(rd->lat_in, nin, 0.99), rd->lat_in[nin - 1] / 1000.0);
    } else {
        printf("%s nothing measured\n", label);
    }
    pthread_mutex_unlock(&rd->mu);
    fflush(stdout);
    return 0;
}

/* The librdkafka file mapped by process `pid` (from /proc/<pid>/maps), in
 * `out`; "?" if none is found. */
static void mapped_rdkafka(pid_t pid, char *out, size_t cap) {
    char path[64], line[1024];
    snprintf(out, cap, "?");
    snprintf(path, sizeof path, "/proc/%d/maps", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return;
    while (fgets(line, sizeof line, f)) {
        char *p = strchr(line, '/');
        if (p && strstr(p, "/librdkafka.so")) {
            p[strcspn(p, "\n")] = '\0';
            snprintf(out, cap, "%s", p);
            break;
        }
    }
    fclose(f);
}

/* Prints which librdkafka the mock broker (this process) and touchd run.
 * scripts/bench-broker installs its patched build with a marker file,
 * mock-broker-patch.txt, beside the library: with it, the broker's library
 * is "PATCHED"; without it, "stock". */
static void print_libraries(pid_t touchd_pid) {
    char broker[PATH_MAX] = "?", marker[PATH_MAX + 32], desc[256] = "";
    Dl_info info;
    if (dladdr((void *)rd_kafka_mock_cluster_new, &info) && info.dli_fname &&
        !realpath(info.dli_fname, broker)) /* /lib is /usr/lib: compare real paths */
        snprintf(broker, sizeof broker, "%s", info.dli_fname);
    char *slash = strrchr(broker, '/');
    snprintf(marker, sizeof marker, "%.*s/mock-broker-patch.txt", slash ? (int)(slash - broker) : 0,
             broker);
    FILE *f = slash ? fopen(marker, "r") : NULL;
    int patched = f != NULL;
    if (f) {
        if (!fgets(desc, sizeof desc, f)) desc[0] = '\0';
        desc[strcspn(desc, "\n")] = '\0';
        fclose(f);
    }
    char td[PATH_MAX], td_real[PATH_MAX];
    mapped_rdkafka(touchd_pid, td, sizeof td);
    if (realpath(td, td_real)) snprintf(td, sizeof td, "%s", td_real);
    printf("bench_pipeline: mock broker and bench clients: librdkafka %s %s (%s); "
           "touchd: %s\n",
           rd_kafka_version_str(), patched ? "PATCHED mock broker" : "stock", broker, td);
    if (patched) printf("    patch: %s\n", desc);
    if (patched && strcmp(td, broker) == 0)
        printf("    WARNING: touchd runs the patched library too\n");
}

static void print_touchd_progress(const char *log) {
    char cmd[700];
    snprintf(cmd, sizeof cmd,
             "grep -h 'msg=\"progress\"' %s | tail -n 1 | sed 's/ ruleset=.*//' >&2", log);
    if (system(cmd) != 0) fprintf(stderr, "(no progress line)\n");
}

int main(int argc, char **argv) {
    /* touchd (and redis-server) get the stock libraries: whatever
     * LD_LIBRARY_PATH gave this process (e.g. scripts/bench-broker's patched
     * mock broker) is loaded already and must not reach them. */
    unsetenv("LD_LIBRARY_PATH");
    unsetenv("LD_PRELOAD");
    int secs_a = argc > 1 ? atoi(argv[1]) : 15;
    int secs_b = argc > 2 ? atoi(argv[2]) : 15;
    int rate_b = argc > 3 ? atoi(argv[3]) : 10000;
    int secs_c = argc > 4 ? atoi(argv[4]) : secs_b;
    if (getenv("BENCH_TICK_US")) g_tick_us = atol(getenv("BENCH_TICK_US"));
    if (getenv("BENCH_PROSPECTS")) g_prospects = atoi(getenv("BENCH_PROSPECTS"));
    int parts = getenv("BENCH_PARTITIONS") ? atoi(getenv("BENCH_PARTITIONS")) : 4;
    int batch = getenv("BENCH_BATCH") ? atoi(getenv("BENCH_BATCH")) : 2000;
    const long window = 20000; /* events in flight at most (mock broker memory) */

    static char touchd[PATH_MAX];
    if (getenv("TD_TOUCHD")) {
        snprintf(touchd, sizeof touchd, "%s", getenv("TD_TOUCHD"));
    } else {
        ssize_t n = readlink("/proc/self/exe", touchd, sizeof touchd - 16);
        if (n < 0) return 2;
        touchd[n] = '\0';
        char *slash = strrchr(touchd, '/');
        strcpy(slash + 1, "touchd");
        setenv("TD_TOUCHD", touchd, 1);
    }

    char dir[256], rules_dir[300], conf[300], log[300];
    if (td_test_tmpdir(dir, sizeof dir) != 0) return 2;
    snprintf(rules_dir, sizeof rules_dir, "%s/rules", dir);
    mkdir(rules_dir, 0755);
    td_test_write_file(rules_dir, "bench.rules", RULES, strlen(RULES), NULL, 0);
    if (getenv("BENCH_LOG"))
        snprintf(log, sizeof log, "%s", getenv("BENCH_LOG"));
    else
        snprintf(log, sizeof log, "%s/touchd.log", dir);

    td_test_redis redis = {0};
    /* BENCH_REDIS_UNIX=1: touchd reaches Redis by its Unix socket (a
     * co-located Redis) instead of loopback TCP */
    redis.unixsocket = getenv("BENCH_REDIS_UNIX") && atoi(getenv("BENCH_REDIS_UNIX"));
    if (td_test_redis_start(&redis) != 0) return 2;
    td_test_kafka k;
    /* BENCH_PLANS (default 1): the plan topic on (kafka.plan_topic) or off
     * (0). The events are dated at the wall clock, so every event changes
     * its prospect's plan and withdraws the pending recommendation of its
     * rule (superseded): the plan's heaviest case, with no plan timer due. */
    bool plans = !getenv("BENCH_PLANS") || atoi(getenv("BENCH_PLANS")) != 0;
    const char *topics[] = {T_IN, T_OUT, T_DLQ, T_PLAN};
    if (td_test_kafka_start(&k, topics, 4, parts) != 0) return 2;

    char redis_at[400];
    if (redis.unixsocket)
        snprintf(redis_at, sizeof redis_at, "unix_socket = \"%s\";", redis.sock);
    else
        snprintf(redis_at, sizeof redis_at, "host = \"127.0.0.1\"; port = %d;", redis.port);
    char text[2048];
    int n =
        snprintf(text, sizeof text,
                 "kafka = { brokers = \"%s\"; group_id = \"touchd-bench\";\n"
                 "  input_topics = [ \"" T_IN "\" ]; output_topic = \"" T_OUT "\";\n"
                 "  dead_letter_topic = \"" T_DLQ "\"; plan_topic = \"%s\";\n"
                 "  consumer = { fetch_wait_max_ms = 1; };\n"
                 "  producer = { linger_ms = %s; %s }; };\n"
                 "redis = { %s };\n"
                 "rules = { dir = \"%s\"; reload_poll_ms = 0; };\n"
                 "engine = { batch_max_events = %d; batch_max_ms = 10; %s };\n"
                 "time = { late_policy = \"publish\"; };\n"
                 "log = { level = \"%s\"; };\n%s\n",
                 k.bootstraps, plans ? T_PLAN : "",
                 getenv("BENCH_LINGER_MS") ? getenv("BENCH_LINGER_MS") : "0",
                 getenv("BENCH_PRODUCER_EXTRA") ? getenv("BENCH_PRODUCER_EXTRA") : "", redis_at,
                 rules_dir, batch, getenv("BENCH_ENGINE_EXTRA") ? getenv("BENCH_ENGINE_EXTRA") : "",
                 getenv("BENCH_LOG_LEVEL") ? getenv("BENCH_LOG_LEVEL") : "info",
                 getenv("BENCH_CONFIG_EXTRA") ? getenv("BENCH_CONFIG_EXTRA") : "");
    td_test_write_file(dir, "touchd.conf", text, (size_t)n, conf, sizeof conf);

    /* The reader: every partition of the output topic. */
    char err[512];
    rd_kafka_conf_t *rc = rd_kafka_conf_new();
    rd_kafka_conf_set(rc, "bootstrap.servers", k.bootstraps, err, sizeof err);
    rd_kafka_conf_set(rc, "group.id", "bench-reader", err, sizeof err);
    rd_kafka_conf_set(rc, "enable.auto.commit", "false", err, sizeof err);
    rd_kafka_conf_set(rc, "fetch.wait.max.ms", "1", err, sizeof err);
    rd_kafka_conf_set(rc, "socket.nagle.disable", "true", err, sizeof err);
    reader rd = {0};
    pthread_mutex_init(&rd.mu, NULL);
    rd.c = rd_kafka_new(RD_KAFKA_CONSUMER, rc, err, sizeof err);
    rd_kafka_poll_set_consumer(rd.c);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(parts);
    for (int p = 0; p < parts; p++)
        rd_kafka_topic_partition_list_add(l, T_OUT, p)->offset = RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_assign(rd.c, l);
    rd_kafka_topic_partition_list_destroy(l);
    pthread_t th;
    pthread_create(&th, NULL, reader_main, &rd);

    td_test_touchd t = {0};
    if (td_test_touchd_start(&t, conf, log) != 0 ||
        !td_test_wait_file(log, "partitions assigned", 1, 30000)) {
        fprintf(stderr, "touchd did not start; log: %s\n", log);
        return 2;
    }
    printf("bench_pipeline: plan topic %s (BENCH_PLANS), late_policy publish\n",
           plans ? "on" : "off");
    printf("bench_pipeline: touchd %s, %d partitions, %d prospects, batch_max_events %d, "
           "%ld cores, redis by %s\n",
           touchd, parts, g_prospects, batch, sysconf(_SC_NPROCESSORS_ONLN),
           redis.unixsocket ? "Unix socket" : "loopback TCP");
    print_libraries(t.pid);

    /* ---- (a) sustained throughput ---- */
    int64_t t0 = now_us(), warm = t0 + 2000000, end = warm + (int64_t)secs_a * 1000000;
    long recs_at_warm = -1;
    int64_t warm_t = 0;
    int64_t cpu0[3] = {-1, -1, -1}; /* touchd, redis-server, this process */
    /* "Sustained" is checked window by window: the rate of each 10 s (1 s
     * for runs under 30 s) slice of the measured time, so a run that starts
     * fast and slows down (states growing, Redis memory, the machine) shows
     * its slowest slice, not only its mean. */
    int64_t slice = secs_a >= 30 ? 10000000 : 1000000, next_slice = 0, slice_t = 0;
    int nslice = 0, cap_slice = (int)(((int64_t)secs_a * 1000000) / slice) + 1;
    double *slice_eps = calloc((size_t)cap_slice, sizeof *slice_eps);
    long slice_recs = 0;
    if (!slice_eps) return 2;
    while (now_us() < end) {
        long inflight = g_seq - atomic_load(&rd.recs);
        if (inflight < window) {
            for (int i = 0; i < 256; i++)
                if (produce_one(&k) < 0) return 2;
            rd_kafka_poll(k.producer, 0);
        } else {
            rd_kafka_poll(k.producer, 1);
        }
        if (recs_at_warm < 0 && now_us() >= warm) {
            recs_at_warm = atomic_load(&rd.recs);
            warm_t = now_us();
            cpu0[0] = cpu_us(t.pid);
            cpu0[1] = cpu_us(redis.pid);
            cpu0[2] = cpu_us(getpid());
            slice_recs = recs_at_warm;
            slice_t = warm_t;
            next_slice = warm_t + slice;
        }
        if (recs_at_warm >= 0 && now_us() >= next_slice && nslice < cap_slice) {
            long r = atomic_load(&rd.recs);
            int64_t now = now_us();
            slice_eps[nslice++] = (double)(r - slice_recs) / ((double)(now - slice_t) / 1e6);
            slice_recs = r;
            slice_t = now;
            next_slice += slice;
        }
    }
    long recs_end = atomic_load(&rd.recs);
    int64_t end_t = now_us();
    /* the last slice usually ends with the loop, a few us short of its mark */
    if (recs_at_warm >= 0 && nslice < cap_slice && end_t - slice_t >= slice * 9 / 10)
        slice_eps[nslice++] = (double)(recs_end - slice_recs) / ((double)(end_t - slice_t) / 1e6);
    int64_t cpu1[3] = {cpu_us(t.pid), cpu_us(redis.pid), cpu_us(getpid())};
    double eps = (double)(recs_end - recs_at_warm) / ((double)(end_t - warm_t) / 1e6);
    printf("(a) sustained: %.0f events/s end to end (%ld events in %.1f s after a 2 s warm-up; "
           "1 recommendation per event)\n",
           eps, recs_end - recs_at_warm, (double)(end_t - warm_t) / 1e6);
    if (recs_end > recs_at_warm && cpu0[0] >= 0 && cpu0[1] >= 0 && cpu0[2] >= 0 && cpu1[0] >= 0 &&
        cpu1[1] >= 0 && cpu1[2] >= 0) {
        /* CPU per event over the measured window (clock-tick resolution);
         * "broker+load" is this process: the mock broker, the event
         * producer and the recommendation reader */
        double ev = (double)(recs_end - recs_at_warm), wall = (double)(end_t - warm_t);
        const char *name[3] = {"touchd", "redis-server", "broker+load"};
        printf("    CPU per event:");
        double tot = 0;
        for (int i = 0; i < 3; i++) {
            double us = (double)(cpu1[i] - cpu0[i]);
            tot += us;
            printf(" %s %.1f us (%.2f cores)%s", name[i], us / ev, us / wall, i < 2 ? "," : "");
        }
        printf("; total %.1f us, %.2f of %ld cores\n", tot / ev, tot / wall,
               sysconf(_SC_NPROCESSORS_ONLN));
    }
    if (nslice > 0) {
        double lo = slice_eps[0], hi = slice_eps[0];
        for (int i = 1; i < nslice; i++) {
            lo = slice_eps[i] < lo ? slice_eps[i] : lo;
            hi = slice_eps[i] > hi ? slice_eps[i] : hi;
        }
        printf("    per %d s slice (%d slices): slowest %.0f, fastest %.0f events/s;",
               (int)(slice / 1000000), nslice, lo, hi);
        for (int i = 0; i < nslice && i < 60; i++)
            printf(" %.0f", slice_eps[i]);
        printf("%s\n", nslice > 60 ? " ..." : "");
    }
    free(slice_eps);
    fflush(stdout);
    /* Let the backlog drain. */
    int64_t drain_end = now_us() + 30000000;
    while (atomic_load(&rd.recs) < g_seq && now_us() < drain_end) {
        rd_kafka_poll(k.producer, 10);
    }

    /* ---- (b) latency at a fixed rate, through touchd ---- */
    if (fixed_rate(&k, &rd, secs_b, rate_b, "(b)") < 0) return 2;
    /* ---- (c) the same through the broker alone: one hop, touchd idle ---- */
    g_loopback = 2;
    if (fixed_rate(&k, &rd, secs_c, rate_b, "(c) broker alone, one hop:") < 0) return 2;
    atomic_store(&rd.stop, 1);
    pthread_join(th, NULL);
    int code = td_test_touchd_stop(&t, SIGTERM, 30000);
    print_touchd_progress(log);
    printf("touchd exit code %d; total events %ld, recommendations received %ld\n", code, g_seq,
           atomic_load(&rd.recs));
    rd_kafka_consumer_close(rd.c);
    rd_kafka_destroy(rd.c);
    free(rd.lat);
    free(rd.lat_in);
    if (g_in_rkt) rd_kafka_topic_destroy(g_in_rkt);
    td_test_kafka_stop(&k);
    td_test_redis_stop(&redis);
    if (!getenv("BENCH_LOG")) td_test_rmtree(dir);
    return code == 0 ? 0 : 1;
}
