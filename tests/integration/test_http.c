/*
 * test_http.c - the HTTP listener of a real touchd ($TD_TOUCHD, a child
 * process) with a real redis-server and librdkafka's mock cluster in this
 * process (harness_kafka.h), scraped by a real `prometheus` (Debian package
 * prometheus, in scripts/deps: missing, the test fails), and systemd's
 * notification on a real unix datagram socket.
 *
 * One case, in order:
 *   - sd_notify: NOTIFY_SOCKET points at a socket this test binds, with
 *     WATCHDOG_USEC = 0.6 s: touchd sends READY=1, then WATCHDOG=1;
 *   - /healthz 200 with a JSON body, /readyz 200 once the group is joined,
 *     404 and 405 for what is not routed;
 *   - 20 valid events and 1 malformed one: /metrics shows exactly 20 applied
 *     and 1 dead letter of class malformed, and passes promtool check
 *     metrics; a prometheus scraping every second returns
 *     touchd_events_applied_total = 20 through /api/v1/query;
 *   - Redis killed: /readyz turns 503 naming redis, /healthz stays 200 (the
 *     loop is held, alive); Redis back: /readyz 200 again;
 *   - SIGTERM: STOPPING=1, exit 0.
 */
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <jansson.h>
#include <netinet/in.h>

#include <cmocka.h>

#include "harness.h"
#include "harness_kafka.h"

#define T_IN "events"
#define T_OUT "recs"
#define T_DLQ "dlq"
#define NEVENTS 20

static const char RULES[] =
    "settings = { quiet_start_hour = 0; quiet_end_hour = 0; };\n"
    "rules = (\n"
    "  { id = \"h.sent\"; on = [ \"email.sent\" ];\n"
    "    recommend = { channel = \"email\"; touch = \"follow_up\"; window = \"any\"; }; }\n"
    ");\n";

typedef struct fx {
    td_test_world w; /* first: td_test_world_teardown */
    char notify_path[300];
    int notify_fd;
    int http_port;
    pid_t prom;
} fx;

/* ------------------------------------------------------------- helpers */

/* One HTTP/1.0 GET on 127.0.0.1:port: the status (-1: no answer), the body
 * into body (NUL-ended, truncated to cap). */
static int http_get(int port, const char *path, char *body, size_t cap) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    char req[512];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path);
    if (write(fd, req, (size_t)n) != n) {
        close(fd);
        return -1;
    }
    static char buf[1 << 20];
    size_t len = 0;
    ssize_t r;
    while (len < sizeof buf - 1 && (r = read(fd, buf + len, sizeof buf - 1 - len)) > 0)
        len += (size_t)r;
    close(fd);
    buf[len] = '\0';
    int status = -1;
    if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1) return -1;
    const char *b = strstr(buf, "\r\n\r\n");
    snprintf(body, cap, "%s", b ? b + 4 : "");
    return status;
}

/* Polls path until it answers `want` (or timeout_ms). @returns the last status. */
static int http_wait(int port, const char *path, int want, char *body, size_t cap, int timeout_ms) {
    int64_t end = td_test_now_ms() + timeout_ms;
    int st;
    while ((st = http_get(port, path, body, cap)) != want && td_test_now_ms() < end)
        td_test_sleep_ms(100);
    return st;
}

/* The value of the sample line starting with head in a /metrics text. */
static double metric(const char *text, const char *head) {
    char want[300];
    snprintf(want, sizeof want, "\n%s ", head);
    const char *p = strstr(text, want);
    return p ? strtod(p + strlen(want), NULL) : -1;
}

/* The notify socket's reader: a thread drains every datagram (systemd
 * reads them all; a full queue would block the sender's sendmsg) and keeps
 * the text of each. */
typedef struct notify_log {
    pthread_mutex_t mu;
    char text[1 << 16];
    size_t len;
    int fd;
    pthread_t th;
} notify_log;
static notify_log nlog = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void *notify_main(void *arg) {
    (void)arg;
    char buf[512];
    ssize_t n;
    while ((n = recv(nlog.fd, buf, sizeof buf - 1, 0)) > 0) {
        pthread_mutex_lock(&nlog.mu);
        if (nlog.len + (size_t)n + 2 < sizeof nlog.text) {
            memcpy(nlog.text + nlog.len, buf, (size_t)n);
            nlog.len += (size_t)n;
            nlog.text[nlog.len++] = '\n';
            nlog.text[nlog.len] = '\0';
        }
        pthread_mutex_unlock(&nlog.mu);
    }
    return NULL;
}

/* Waits for a datagram containing `what` (since the start). */
static bool notify_wait(const char *what, int timeout_ms) {
    int64_t end = td_test_now_ms() + timeout_ms;
    for (;;) {
        pthread_mutex_lock(&nlog.mu);
        bool found = strstr(nlog.text, what) != NULL;
        pthread_mutex_unlock(&nlog.mu);
        if (found) return true;
        if (td_test_now_ms() >= end) return false;
        td_test_sleep_ms(20);
    }
}

static pid_t start_prometheus(fx *f, int port) {
    char cfg[300], data[300], log[300], listen[64];
    snprintf(cfg, sizeof cfg, "%s/prometheus.yml", f->w.dir);
    snprintf(data, sizeof data, "%s/prom-data", f->w.dir);
    snprintf(log, sizeof log, "%s/prometheus.log", f->w.dir);
    snprintf(listen, sizeof listen, "127.0.0.1:%d", port);
    char text[512];
    int n = snprintf(text, sizeof text,
                     "global: { scrape_interval: 1s, evaluation_interval: 1s }\n"
                     "scrape_configs:\n"
                     "  - job_name: touchd\n"
                     "    static_configs: [ { targets: [ \"127.0.0.1:%d\" ] } ]\n",
                     f->http_port);
    if (td_test_write_file(f->w.dir, "prometheus.yml", text, (size_t)n, NULL, 0) != 0) return -1;
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid != 0) return pid;
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    FILE *o = freopen(log, "a", stderr);
    (void)o;
    char a1[400], a2[400], a3[100];
    snprintf(a1, sizeof a1, "--config.file=%s", cfg);
    snprintf(a2, sizeof a2, "--storage.tsdb.path=%s", data);
    snprintf(a3, sizeof a3, "--web.listen-address=%s", listen);
    execlp("prometheus", "prometheus", a1, a2, a3, (char *)NULL);
    fprintf(stderr, "exec prometheus: not found (scripts/deps installs it)\n");
    _exit(127);
}

/* touchd_events_applied_total as Prometheus has it (-1: no result yet). */
static double prom_applied(int port) {
    static char body[1 << 16];
    if (http_get(port, "/api/v1/query?query=touchd_events_applied_total", body, sizeof body) != 200)
        return -1;
    json_error_t je;
    json_t *root = json_loads(body, 0, &je);
    double v = -1;
    json_t *res = json_object_get(json_object_get(root, "data"), "result");
    if (json_is_array(res) && json_array_size(res) == 1) {
        json_t *val = json_array_get(json_object_get(json_array_get(res, 0), "value"), 1);
        if (json_is_string(val)) v = strtod(json_string_value(val), NULL);
    }
    json_decref(root);
    return v;
}

static int promtool_check(const char *dir, const char *text) {
    char path[400];
    if (td_test_write_file(dir, "metrics.txt", text, strlen(text), path, sizeof path) != 0)
        return -1;
    char cmd[600];
    snprintf(cmd, sizeof cmd, "promtool check metrics < %s", path);
    int st = system(cmd);
    return st == -1 ? -1 : WEXITSTATUS(st);
}

/* ---------------------------------------------------------------- setup */

static int setup(void **state) {
    fx *f = calloc(1, sizeof *f);
    const char *topics[] = {T_IN, T_OUT, T_DLQ};
    if (!f || td_test_world_start(&f->w, topics, 3, 2) != 0) return -1;
    *state = f;
    f->notify_fd = -1;
    if (td_test_world_rules(&f->w, RULES) != 0) return -1;
    /* the notify socket systemd would own */
    snprintf(f->notify_path, sizeof f->notify_path, "%s/notify.sock", f->w.dir);
    f->notify_fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    struct sockaddr_un su = {.sun_family = AF_UNIX};
    if (strlen(f->notify_path) >= sizeof su.sun_path) return -1;
    memcpy(su.sun_path, f->notify_path, strlen(f->notify_path) + 1);
    if (f->notify_fd < 0 || bind(f->notify_fd, (struct sockaddr *)&su, sizeof su) != 0) return -1;
    nlog.fd = f->notify_fd;
    if (pthread_create(&nlog.th, NULL, notify_main, NULL) != 0) return -1;
    f->http_port = td_test_free_port();
    char extra[256];
    snprintf(extra, sizeof extra,
             "timers = { shards = 16; poll_ms = 100; sweep_ms = 1000; };\n"
             "http = { listen = \"127.0.0.1:%d\"; };\n",
             f->http_port);
    return td_test_world_conf(&f->w, "touchd-http", T_IN, T_OUT, T_DLQ, NULL, NULL, NULL, extra);
}

static int teardown(void **state) {
    fx *f = *state;
    if (f && f->prom > 0) {
        kill(f->prom, SIGTERM);
        waitpid(f->prom, NULL, 0);
    }
    if (f && f->notify_fd >= 0) {
        shutdown(f->notify_fd, SHUT_RDWR); /* ends the reader's recv */
        pthread_cancel(nlog.th);
        pthread_join(nlog.th, NULL);
        close(f->notify_fd);
    }
    return td_test_world_teardown(state);
}

/* ---------------------------------------------------------------- case */

static void test_http_metrics_health_notify(void **state) {
    fx *f = *state;
    static char body[1 << 20];
    setenv("NOTIFY_SOCKET", f->notify_path, 1);
    setenv("WATCHDOG_USEC", "1500000", 1); /* WATCHDOG=1 every 0.5 s */
    bool up = td_test_touchd_run(&f->w.touchd, f->w.conf, f->w.log);
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    assert_true(up);
    assert_true(notify_wait("READY=1", 5000));
    assert_true(notify_wait("WATCHDOG=1", 3000));

    assert_int_equal(http_get(f->http_port, "/healthz", body, sizeof body), 200);
    assert_non_null(strstr(body, "\"status\":\"ok\""));
    if (http_wait(f->http_port, "/readyz", 200, body, sizeof body, 20000) != 200) {
        fprintf(stderr, "readyz: %s\n", body);
        fail();
    }
    assert_non_null(strstr(body, "\"status\":\"ready\""));
    assert_int_equal(http_get(f->http_port, "/nope", body, sizeof body), 404);
    int prom_port = td_test_free_port();
    f->prom = start_prometheus(f, prom_port);
    assert_true(f->prom > 0);

    /* events in: 20 valid, 1 malformed */
    char ts[40];
    time_t now = time(NULL);
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    for (int i = 0; i < NEVENTS; i++) {
        char ev[300], pid[32];
        snprintf(pid, sizeof pid, "p-%d", i % 7);
        int n = snprintf(ev, sizeof ev,
                         "{\"id\":\"e-%d\",\"type\":\"email.sent\",\"prospect_id\":\"%s\","
                         "\"occurred_at\":\"%s\"}",
                         i, pid, ts);
        assert_int_equal(td_test_kafka_produce(&f->w.kafka, T_IN, pid, ev, (size_t)n), 0);
    }
    assert_int_equal(td_test_kafka_produce(&f->w.kafka, T_IN, "p-x", "not json", 8), 0);
    assert_int_equal(td_test_kafka_flush(&f->w.kafka, 10000), 0);

    int64_t end = td_test_now_ms() + 20000;
    double applied = -1;
    while (td_test_now_ms() < end) {
        if (http_get(f->http_port, "/metrics", body, sizeof body) == 200 &&
            (applied = metric(body, "touchd_events_applied_total")) == NEVENTS &&
            metric(body, "touchd_events_dead_lettered_total{reason=\"malformed\"}") == 1)
            break;
        td_test_sleep_ms(100);
    }
    assert_true(applied == NEVENTS);
    assert_true(metric(body, "touchd_events_consumed_total") == NEVENTS + 1);
    assert_true(metric(body, "touchd_events_dead_lettered_total{reason=\"malformed\"}") == 1);
    assert_true(metric(body, "touchd_events_dead_lettered_total{reason=\"invalid\"}") == 0);
    assert_true(metric(body, "touchd_recommendations_published_total{rule=\"h.sent\"}") == NEVENTS);
    assert_true(metric(body, "touchd_event_latency_seconds_count") == NEVENTS + 1);
    assert_true(metric(body, "touchd_partitions_assigned") == 2);
    assert_true(metric(body, "touchd_watchdog_notifications_total") >= 1);
    assert_int_equal(promtool_check(f->w.dir, body), 0);

    /* through Prometheus: scraped every second */
    end = td_test_now_ms() + 20000;
    double pv = -1;
    while (td_test_now_ms() < end && (pv = prom_applied(prom_port)) != NEVENTS)
        td_test_sleep_ms(250);
    if (pv != NEVENTS) {
        char plog[400];
        snprintf(plog, sizeof plog, "%s/prometheus.log", f->w.dir);
        td_test_dump_log(plog, 20);
    }
    assert_true(pv == NEVENTS);

    /* Redis down: not ready (held or timer polls failing), still healthy */
    td_test_redis_kill(&f->w.redis);
    assert_int_equal(http_wait(f->http_port, "/readyz", 503, body, sizeof body, 10000), 503);
    assert_non_null(strstr(body, "redis"));
    assert_non_null(strstr(body, "\"status\":\"not ready\""));
    assert_int_equal(http_get(f->http_port, "/healthz", body, sizeof body), 200);
    assert_int_equal(td_test_redis_restart(&f->w.redis), 0);
    if (http_wait(f->http_port, "/readyz", 200, body, sizeof body, 15000) != 200) {
        fprintf(stderr, "readyz: %s\n", body);
        fail();
    }

    assert_int_equal(td_test_touchd_stop(&f->w.touchd, SIGTERM, 15000), 0);
    assert_true(notify_wait("STOPPING=1", 2000));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_http_metrics_health_notify, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
