/*
 * harness_kafka.c - mock Kafka cluster, producer, topic reader and the touchd
 * child process for integration tests (see harness_kafka.h).
 *
 * The reader assigns every partition of its topic explicitly from offset 0
 * (no consumer group), so it sees everything ever written, duplicates
 * included: tests count ids, they do not trust a group's position.
 *
 * @locality the test's thread.
 */
#include "harness_kafka.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

void td_test_sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

int64_t td_test_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t td_test_wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void quiet_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
    (void)rk;
    if (level <= 3) fprintf(stderr, "test librdkafka %s: %s\n", fac, buf);
}

/* ------------------------------------------------------------- cluster */

int td_test_kafka_start(td_test_kafka *k, const char *const *topics, size_t ntopics,
                        int partitions) {
    char err[512];
    memset(k, 0, sizeof *k);
    k->partitions = partitions;
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set_log_cb(conf, quiet_log);
    rd_kafka_conf_set(conf, "log_level", "3", err, sizeof err);
    k->mock_rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    if (!k->mock_rk) {
        fprintf(stderr, "mock handle: %s\n", err);
        return -1;
    }
    k->mc = rd_kafka_mock_cluster_new(k->mock_rk, 1);
    if (!k->mc) {
        fprintf(stderr, "mock cluster failed\n");
        return -1;
    }
    for (size_t i = 0; i < ntopics; i++)
        if (rd_kafka_mock_topic_create(k->mc, topics[i], partitions, 1)) {
            fprintf(stderr, "mock topic %s failed\n", topics[i]);
            return -1;
        }
    snprintf(k->bootstraps, sizeof k->bootstraps, "%s", rd_kafka_mock_cluster_bootstraps(k->mc));
    k->nodelay = td_mock_nodelay_new(k->bootstraps);
    if (!k->nodelay || td_mock_nodelay_start(k->nodelay, 100) != 0) {
        fprintf(stderr, "mock broker nodelay watcher failed\n");
        return -1;
    }

    conf = rd_kafka_conf_new();
    rd_kafka_conf_set_log_cb(conf, quiet_log);
    if (rd_kafka_conf_set(conf, "bootstrap.servers", k->bootstraps, err, sizeof err) ||
        rd_kafka_conf_set(conf, "linger.ms", "0", err, sizeof err) ||
        rd_kafka_conf_set(conf, "socket.nagle.disable", "true", err, sizeof err) ||
        /* One produce request at a time: against the mock broker, this
         * producer's events reached touchd 5x later at p50 with five in
         * flight (bench_pipeline at 10k events/s: p50 27-32 ms vs 5.5 ms),
         * even with TCP_NODELAY on the broker's side. */
        rd_kafka_conf_set(conf, "max.in.flight",
                          getenv("TD_TEST_INFLIGHT") ? getenv("TD_TEST_INFLIGHT") : "1", err,
                          sizeof err) ||
        rd_kafka_conf_set(conf, "enable.idempotence", "true", err, sizeof err)) {
        fprintf(stderr, "producer conf: %s\n", err);
        rd_kafka_conf_destroy(conf);
        return -1;
    }
    k->producer = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    if (!k->producer) {
        fprintf(stderr, "producer: %s\n", err);
        return -1;
    }
    return 0;
}

void td_test_kafka_stop(td_test_kafka *k) {
    if (k->producer) {
        rd_kafka_flush(k->producer, 5000);
        rd_kafka_destroy(k->producer);
        k->producer = NULL;
    }
    td_mock_nodelay_free(k->nodelay);
    k->nodelay = NULL;
    if (k->mc) {
        rd_kafka_mock_cluster_destroy(k->mc);
        k->mc = NULL;
    }
    if (k->mock_rk) {
        rd_kafka_destroy(k->mock_rk);
        k->mock_rk = NULL;
    }
}

int td_test_kafka_produce(td_test_kafka *k, const char *topic, const char *key, const char *val,
                          size_t vlen) {
    for (int tries = 0; tries < 1000; tries++) {
        rd_kafka_resp_err_t e = rd_kafka_producev(
            k->producer, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, key ? strlen(key) : 0),
            RD_KAFKA_V_VALUE((void *)val, vlen), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
            RD_KAFKA_V_END);
        if (!e) return 0;
        if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
            fprintf(stderr, "produce: %s\n", rd_kafka_err2str(e));
            return -1;
        }
        rd_kafka_poll(k->producer, 10);
    }
    return -1;
}

int td_test_kafka_flush(td_test_kafka *k, int timeout_ms) {
    return rd_kafka_flush(k->producer, timeout_ms) ? -1 : 0;
}

static rd_kafka_t *offsets_client(td_test_kafka *k, const char *group) {
    char err[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set_log_cb(conf, quiet_log);
    rd_kafka_conf_set(conf, "bootstrap.servers", k->bootstraps, err, sizeof err);
    rd_kafka_conf_set(conf, "group.id", group, err, sizeof err);
    rd_kafka_conf_set(conf, "enable.auto.commit", "false", err, sizeof err);
    rd_kafka_t *c = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
    if (!c) fprintf(stderr, "offsets client: %s\n", err);
    return c;
}

int td_test_kafka_committed(td_test_kafka *k, const char *group, const char *topic, int n,
                            int64_t *out) {
    rd_kafka_t *c = offsets_client(k, group);
    if (!c) return -1;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(n);
    for (int p = 0; p < n; p++)
        rd_kafka_topic_partition_list_add(l, topic, p);
    rd_kafka_resp_err_t e = rd_kafka_committed(c, l, 10000);
    for (int p = 0; p < n && !e; p++)
        out[p] = l->elems[p].offset;
    rd_kafka_topic_partition_list_destroy(l);
    rd_kafka_destroy(c);
    return e ? -1 : 0;
}

int td_test_kafka_end_offsets(td_test_kafka *k, const char *topic, int n, int64_t *out) {
    for (int p = 0; p < n; p++) {
        int64_t lo, hi;
        if (rd_kafka_query_watermark_offsets(k->producer, topic, p, &lo, &hi, 10000)) return -1;
        out[p] = hi;
    }
    return 0;
}

/* -------------------------------------------------------------- reader */

struct td_test_reader {
    rd_kafka_t *c;
    td_test_msg *v;
    size_t n, cap;
};

td_test_reader *td_test_reader_new(td_test_kafka *k, const char *topic) {
    char err[512];
    td_test_reader *r = calloc(1, sizeof *r);
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set_log_cb(conf, quiet_log);
    rd_kafka_conf_set(conf, "bootstrap.servers", k->bootstraps, err, sizeof err);
    rd_kafka_conf_set(conf, "group.id", "touchd-test-reader", err, sizeof err);
    rd_kafka_conf_set(conf, "enable.auto.commit", "false", err, sizeof err);
    rd_kafka_conf_set(conf, "fetch.wait.max.ms", "5", err, sizeof err);
    rd_kafka_conf_set(conf, "socket.nagle.disable", "true", err, sizeof err);
    r->c = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
    if (!r->c) {
        fprintf(stderr, "reader: %s\n", err);
        free(r);
        return NULL;
    }
    rd_kafka_poll_set_consumer(r->c);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(k->partitions);
    for (int p = 0; p < k->partitions; p++)
        rd_kafka_topic_partition_list_add(l, topic, p)->offset = RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_assign(r->c, l);
    rd_kafka_topic_partition_list_destroy(l);
    return r;
}

static char *dupn(const void *p, size_t n) {
    char *s = malloc(n + 1);
    if (n) memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

static void reader_take(td_test_reader *r, rd_kafka_message_t *m) {
    if (r->n == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 256;
        r->v = realloc(r->v, r->cap * sizeof *r->v);
    }
    td_test_msg *x = &r->v[r->n++];
    memset(x, 0, sizeof *x);
    x->key = m->key ? dupn(m->key, m->key_len) : NULL;
    x->val = dupn(m->payload, m->payload ? m->len : 0);
    x->vlen = m->payload ? m->len : 0;
    x->partition = m->partition;
    x->offset = m->offset;
    rd_kafka_headers_t *h = NULL;
    if (rd_kafka_message_headers(m, &h) == RD_KAFKA_RESP_ERR_NO_ERROR && h) {
        const char *name;
        const void *val;
        size_t sz;
        for (size_t i = 0;
             i < TD_TEST_MAX_HEADERS && rd_kafka_header_get_all(h, i, &name, &val, &sz) == 0; i++) {
            x->hname[i] = dupn(name, strlen(name));
            x->hval[i] = dupn(val, val ? sz : 0);
            x->nheaders = i + 1;
        }
    }
}

size_t td_test_reader_read(td_test_reader *r, size_t want, int timeout_ms) {
    int64_t end = td_test_now_ms() + timeout_ms;
    while (r->n < want && td_test_now_ms() < end) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(r->c, 50);
        if (!m) continue;
        if (!m->err) reader_take(r, m);
        rd_kafka_message_destroy(m);
    }
    return r->n;
}

size_t td_test_reader_drain(td_test_reader *r, int ms) {
    int64_t end = td_test_now_ms() + ms;
    while (td_test_now_ms() < end) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(r->c, 50);
        if (!m) continue;
        if (!m->err) reader_take(r, m);
        rd_kafka_message_destroy(m);
    }
    return r->n;
}

const td_test_msg *td_test_reader_msgs(const td_test_reader *r, size_t *n) {
    *n = r->n;
    return r->v;
}

const char *td_test_msg_header(const td_test_msg *m, const char *name) {
    for (size_t i = 0; i < m->nheaders; i++)
        if (strcmp(m->hname[i], name) == 0) return m->hval[i];
    return NULL;
}

void td_test_reader_free(td_test_reader *r) {
    if (!r) return;
    rd_kafka_consumer_close(r->c);
    rd_kafka_destroy(r->c);
    for (size_t i = 0; i < r->n; i++) {
        free(r->v[i].key);
        free(r->v[i].val);
        for (size_t h = 0; h < r->v[i].nheaders; h++) {
            free(r->v[i].hname[h]);
            free(r->v[i].hval[h]);
        }
    }
    free(r->v);
    free(r);
}

/* -------------------------------------------------------------- touchd */

const char *td_test_touchd_path(void) {
    const char *p = getenv("TD_TOUCHD");
    return p && *p ? p : "touchd";
}

int td_test_touchd_start(td_test_touchd *t, const char *conf, const char *log_path) {
    snprintf(t->conf, sizeof t->conf, "%s", conf);
    snprintf(t->log, sizeof t->log, "%s", log_path);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(127);
        int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 2);
            dup2(fd, 1);
            close(fd);
        }
        const char *bin = td_test_touchd_path();
        execlp(bin, bin, "run", "-c", conf, (char *)NULL);
        fprintf(stderr, "exec %s: %s\n", bin, strerror(errno));
        _exit(127);
    }
    t->pid = pid;
    return 0;
}

bool td_test_touchd_alive(td_test_touchd *t) {
    if (t->pid <= 0) return false;
    int st;
    pid_t r = waitpid(t->pid, &st, WNOHANG);
    if (r == t->pid) {
        t->status = st;
        t->pid = 0;
        return false;
    }
    return true;
}

int td_test_touchd_stop(td_test_touchd *t, int sig, int timeout_ms) {
    if (t->pid <= 0) return -1;
    kill(t->pid, sig);
    int64_t end = td_test_now_ms() + timeout_ms;
    int st = 0;
    for (;;) {
        pid_t r = waitpid(t->pid, &st, WNOHANG);
        if (r == t->pid) break;
        if (td_test_now_ms() >= end) {
            fprintf(stderr, "touchd did not exit within %d ms: SIGKILL\n", timeout_ms);
            kill(t->pid, SIGKILL);
            waitpid(t->pid, &st, 0);
            t->pid = 0;
            t->status = st;
            return -1;
        }
        td_test_sleep_ms(20);
    }
    t->pid = 0;
    t->status = st;
    if (WIFEXITED(st)) return WEXITSTATUS(st);
    if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
    return -1;
}

void td_test_touchd_kill(td_test_touchd *t) {
    if (t->pid <= 0) return;
    kill(t->pid, SIGKILL);
    int st;
    waitpid(t->pid, &st, 0);
    t->status = st;
    t->pid = 0;
}

static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 65536, n = 0;
    char *b = malloc(cap);
    size_t got;
    while ((got = fread(b + n, 1, cap - n - 1, f)) > 0) {
        n += got;
        if (n + 1 == cap) b = realloc(b, cap *= 2);
    }
    fclose(f);
    b[n] = '\0';
    return b;
}

int td_test_count_in_file(const char *path, const char *needle) {
    char *b = slurp(path);
    if (!b) return 0;
    int c = 0;
    for (const char *p = b; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        c++;
    free(b);
    return c;
}

bool td_test_wait_file(const char *path, const char *needle, int count, int timeout_ms) {
    int64_t end = td_test_now_ms() + timeout_ms;
    do {
        if (td_test_count_in_file(path, needle) >= count) return true;
        td_test_sleep_ms(50);
    } while (td_test_now_ms() < end);
    return false;
}

void td_test_dump_log(const char *path, int lines) {
    char cmd[700];
    snprintf(cmd, sizeof cmd, "tail -n %d '%s' >&2", lines, path);
    fprintf(stderr, "---- touchd log (%s) ----\n", path);
    if (system(cmd) != 0) fprintf(stderr, "(no log)\n");
}

bool td_test_touchd_run(td_test_touchd *t, const char *conf, const char *log_path) {
    static const char running[] = "msg=\"touchd running\"";
    int before = td_test_count_in_file(log_path, running); /* appended across restarts */
    if (td_test_touchd_start(t, conf, log_path) != 0) return false;
    if (td_test_wait_file(log_path, running, before + 1, 30000)) return true;
    td_test_dump_log(log_path, 40);
    return false;
}

int td_test_world_start(td_test_world *w, const char *const *topics, size_t ntopics,
                        int partitions) {
    if (td_test_tmpdir(w->dir, sizeof w->dir) != 0) return -1;
    snprintf(w->conf, sizeof w->conf, "%s/touchd.conf", w->dir);
    snprintf(w->log, sizeof w->log, "%s/touchd.log", w->dir);
    if (td_test_redis_start(&w->redis) != 0) return -1;
    return td_test_kafka_start(&w->kafka, topics, ntopics, partitions);
}

int td_test_world_rules(td_test_world *w, const char *rules) {
    snprintf(w->rules_dir, sizeof w->rules_dir, "%s/rules", w->dir);
    if (mkdir(w->rules_dir, 0755) != 0 && errno != EEXIST) return -1;
    return td_test_write_file(w->rules_dir, "t.rules", rules, strlen(rules), NULL, 0);
}

int td_test_world_setup_sent(void **state, size_t size) {
    static const char rules[] =
        "settings = { expires = \"3650d\"; };\n"
        "rules = (\n"
        "  { id = \"t.sent\"; on = [ \"email.sent\" ];\n"
        "    recommend = { channel = \"email\"; touch = \"follow_up\"; }; }\n"
        ");\n";
    const char *topics[] = {"events", "recs", "dlq"};
    td_test_world *w = calloc(1, size < sizeof *w ? sizeof *w : size);
    if (!w) return -1;
    *state = w;
    if (td_test_world_start(w, topics, 3, 2) != 0) return -1;
    return td_test_world_rules(w, rules);
}

int td_test_world_conf(td_test_world *w, const char *group, const char *in, const char *out,
                       const char *dlq, const char *consumer, const char *kafka, const char *redis,
                       const char *rest) {
    char text[4096];
    int n = snprintf(
        text, sizeof text,
        "kafka = {\n"
        "  brokers = \"%s\"; group_id = \"%s\";\n"
        "  input_topics = [ \"%s\" ]; output_topic = \"%s\"; dead_letter_topic = \"%s\";\n"
        "  consumer = { %s };\n"
        "  producer = { linger_ms = 0; };\n"
        "  %s\n"
        "};\n"
        "redis = { host = \"127.0.0.1\"; port = %d; backoff_min_ms = 20; backoff_max_ms = "
        "200;\n"
        "          command_timeout_ms = 1000; connect_timeout_ms = 500; %s };\n"
        "rules = { dir = \"%s\"; reload_poll_ms = 0; };\n"
        "%s\n",
        w->kafka.bootstraps, group, in, out, dlq,
        consumer ? consumer
                 : "fetch_wait_max_ms = 5; session_timeout_ms = 6000; heartbeat_interval_ms = 500;",
        kafka ? kafka : "", w->redis.port, redis ? redis : "", w->rules_dir, rest ? rest : "");
    if (n < 0 || (size_t)n >= sizeof text) return -1;
    return td_test_write_file(w->dir, "touchd.conf", text, (size_t)n, NULL, 0);
}

void td_test_world_stop(td_test_world *w) {
    if (w->touchd.pid > 0) {
        td_test_dump_log(w->log, 40);
        td_test_touchd_kill(&w->touchd);
    }
    td_test_kafka_stop(&w->kafka);
    td_test_redis_stop(&w->redis);
    if (w->dir[0]) td_test_rmtree(w->dir);
}

int td_test_world_teardown(void **state) {
    td_test_world *w = *state; /* the fixture's first member */
    if (!w) return 0;
    td_test_world_stop(w);
    free(w);
    return 0;
}

long long td_test_progress_value(const char *path, const char *name) {
    FILE *in = fopen(path, "r");
    if (!in) return -1;
    char line[8192], key[80];
    snprintf(key, sizeof key, " %s=", name);
    long long v = -1;
    while (fgets(line, sizeof line, in)) {
        if (!strstr(line, "msg=\"progress\"")) continue;
        const char *p = strstr(line, key);
        if (p) v = atoll(p + strlen(key));
    }
    fclose(in);
    return v;
}
