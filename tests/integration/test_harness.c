/*
 * test_harness.c - proves the integration harness itself: a real redis-server
 * starts on a free port, answers, keeps data across a restart with AOF (also
 * after kill -9), stops cleanly, and two servers coexist.
 *
 * If these fail, every other integration test is suspect, so this one runs
 * first in the docs' troubleshooting list (docs/testing.md).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include <dirent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>

#include "harness.h"
#include "harness_kafka.h"

static void assert_status(redisReply *rep, const char *want) {
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_STATUS);
    assert_string_equal(rep->str, want);
    freeReplyObject(rep);
}

static void assert_string_reply(redisReply *rep, const char *want) {
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_STRING);
    assert_string_equal(rep->str, want);
    freeReplyObject(rep);
}

static void assert_integer_reply(redisReply *rep, long long want) {
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_INTEGER);
    assert_int_equal(rep->integer, want);
    freeReplyObject(rep);
}

static void assert_nil(redisReply *rep) {
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_NIL);
    freeReplyObject(rep);
}

static bool dir_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static void test_start_set_get_stop(void **unused) {
    td_test_redis r = {0};
    assert_int_equal(td_test_redis_start(&r), 0);
    assert_string_equal(r.host, "127.0.0.1");
    assert_true(r.port > 0 && r.port < 65536);
    assert_true(r.pid > 0);
    assert_true(dir_exists(r.dir));
    assert_true(td_test_redis_alive(&r));

    assert_status(td_test_redis_cmd(&r, "SET %s %s", "touchd:k", "v1"), "OK");
    assert_string_reply(td_test_redis_cmd(&r, "GET %s", "touchd:k"), "v1");
    /* binary-safe arguments, as the daemon's hashes need */
    assert_integer_reply(
        td_test_redis_cmd(&r, "HSET %s %s %b", "touchd:p:{p-1}", "f", "a\0b", (size_t)3), 1);
    redisReply *rep = td_test_redis_cmd(&r, "HGET %s %s", "touchd:p:{p-1}", "f");
    assert_non_null(rep);
    assert_int_equal(rep->len, 3);
    assert_memory_equal(rep->str, "a\0b", 3);
    freeReplyObject(rep);

    /* no persistence by default */
    redisReply *cfg = td_test_redis_cmd(&r, "CONFIG GET appendonly");
    assert_non_null(cfg);
    assert_int_equal(cfg->type, REDIS_REPLY_ARRAY);
    assert_int_equal(cfg->elements, 2);
    assert_string_equal(cfg->element[1]->str, "no");
    freeReplyObject(cfg);
    cfg = td_test_redis_cmd(&r, "CONFIG GET save");
    assert_non_null(cfg);
    assert_string_equal(cfg->element[1]->str, "");
    freeReplyObject(cfg);

    char dir[256];
    snprintf(dir, sizeof dir, "%s", r.dir);
    int port = r.port;
    td_test_redis_stop(&r);
    assert_int_equal(r.pid, 0);
    assert_false(dir_exists(dir));
    /* nobody answers on the old port any more */
    td_test_redis gone = {0};
    snprintf(gone.host, sizeof gone.host, "127.0.0.1");
    gone.port = port;
    redisContext *c = td_test_redis_connect(&gone);
    assert_null(c);
    /* stopping twice is harmless */
    td_test_redis_stop(&r);
}

static void test_restart_with_aof_keeps_data(void **unused) {
    td_test_redis r = {0};
    r.appendonly = true;
    assert_int_equal(td_test_redis_start(&r), 0);
    int port = r.port;
    pid_t pid = r.pid;
    assert_status(td_test_redis_cmd(&r, "SET %s %s", "touchd:k", "durable"), "OK");
    assert_integer_reply(td_test_redis_cmd(&r, "HSET touchd:p:{p-42} v 7"), 1);

    assert_int_equal(td_test_redis_restart(&r), 0);
    assert_int_equal(r.port, port); /* clients reconnect to the same address */
    assert_true(r.pid != pid);
    assert_string_reply(td_test_redis_cmd(&r, "GET %s", "touchd:k"), "durable");
    assert_string_reply(td_test_redis_cmd(&r, "HGET touchd:p:{p-42} v"), "7");
    td_test_redis_stop(&r);
}

static void test_kill_then_restart(void **unused) {
    td_test_redis r = {0};
    r.appendonly = true;
    assert_int_equal(td_test_redis_start(&r), 0);
    assert_status(td_test_redis_cmd(&r, "SET %s %s", "before-crash", "1"), "OK");

    td_test_redis_kill(&r);
    assert_int_equal(r.pid, 0);
    assert_false(td_test_redis_alive(&r));
    assert_true(dir_exists(r.dir)); /* kept for the restart */
    /* while it is down, commands fail instead of hanging */
    redisReply *rep = td_test_redis_cmd(&r, "PING");
    assert_null(rep);

    /* appendfsync always: an acknowledged write survives kill -9 */
    assert_int_equal(td_test_redis_restart(&r), 0);
    assert_string_reply(td_test_redis_cmd(&r, "GET %s", "before-crash"), "1");
    td_test_redis_stop(&r);
}

static void test_without_aof_restart_is_empty(void **unused) {
    td_test_redis r = {0};
    assert_int_equal(td_test_redis_start(&r), 0);
    assert_status(td_test_redis_cmd(&r, "SET %s %s", "k", "v"), "OK");
    assert_int_equal(td_test_redis_restart(&r), 0);
    assert_nil(td_test_redis_cmd(&r, "GET %s", "k"));
    td_test_redis_stop(&r);
}

static void test_two_servers(void **unused) {
    td_test_redis a = {0}, b = {0};
    assert_int_equal(td_test_redis_start(&a), 0);
    assert_int_equal(td_test_redis_start(&b), 0);
    assert_true(a.port != b.port);
    assert_string_not_equal(a.dir, b.dir);

    assert_status(td_test_redis_cmd(&a, "SET %s %s", "who", "a"), "OK");
    assert_status(td_test_redis_cmd(&b, "SET %s %s", "who", "b"), "OK");
    assert_string_reply(td_test_redis_cmd(&a, "GET %s", "who"), "a");
    assert_string_reply(td_test_redis_cmd(&b, "GET %s", "who"), "b");

    /* one going away leaves the other untouched */
    td_test_redis_kill(&a);
    assert_true(td_test_redis_alive(&b));
    assert_string_reply(td_test_redis_cmd(&b, "GET %s", "who"), "b");
    td_test_redis_stop(&a);
    td_test_redis_stop(&b);
}

static void test_tmpdir_helpers(void **unused) {
    char dir[256], path[512];
    assert_int_equal(td_test_tmpdir(dir, sizeof dir), 0);
    assert_true(dir_exists(dir));
    assert_int_equal(td_test_write_file(dir, "a.rules", "rules = ();\n", 11, path, sizeof path), 0);
    assert_int_equal(access(path, R_OK), 0);
    char sub[300];
    snprintf(sub, sizeof sub, "%s/nested", dir);
    assert_int_equal(mkdir(sub, 0700), 0);
    assert_int_equal(td_test_write_file(sub, "x", "", 0, NULL, 0), 0);
    assert_int_equal(td_test_rmtree(dir), 0);
    assert_false(dir_exists(dir));
    assert_true(td_test_free_port() > 0);
    assert_non_null(td_test_source_dir());
}

/* Connected TCP sockets of this process whose local port is `port`, and
 * how many of them have TCP_NODELAY. */
static void sockets_on_port(uint16_t port, int *total, int *nodelay) {
    *total = *nodelay = 0;
    DIR *dir = opendir("/proc/self/fd");
    assert_non_null(dir);
    struct dirent *de;
    while ((de = readdir(dir)) != NULL) {
        int fd = atoi(de->d_name);
        struct sockaddr_in local, peer;
        socklen_t ll = sizeof local, pl = sizeof peer;
        if (fd <= 2 || fd == dirfd(dir) || getsockname(fd, (struct sockaddr *)&local, &ll) != 0 ||
            getpeername(fd, (struct sockaddr *)&peer, &pl) != 0 || local.sin_family != AF_INET ||
            ntohs(local.sin_port) != port)
            continue;
        int v = 0;
        socklen_t vl = sizeof v;
        (*total)++;
        if (getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &v, &vl) == 0 && v) (*nodelay)++;
    }
    closedir(dir);
}

/* The mock broker's accepted sockets get TCP_NODELAY from the watcher
 * (td_mock_nodelay): without it its small responses wait for delayed ACKs. */
static void test_mock_broker_nodelay(void **unused) {
    (void)unused;
    td_test_kafka k;
    const char *topics[] = {"t.nodelay"};
    assert_int_equal(td_test_kafka_start(&k, topics, 1, 1), 0);
    const char *colon = strrchr(k.bootstraps, ':');
    assert_non_null(colon);
    uint16_t port = (uint16_t)atoi(colon + 1);
    /* a produce makes the producer connect */
    assert_int_equal(rd_kafka_producev(k.producer, RD_KAFKA_V_TOPIC("t.nodelay"),
                                       RD_KAFKA_V_VALUE("x", 1), RD_KAFKA_V_END),
                     RD_KAFKA_RESP_ERR_NO_ERROR);
    assert_int_equal(rd_kafka_flush(k.producer, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);
    int total = 0, nodelay = 0;
    for (int i = 0; i < 100; i++) { /* the watcher scans every 100 ms */
        sockets_on_port(port, &total, &nodelay);
        if (total > 0 && nodelay == total) break;
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
    }
    assert_true(total > 0);
    assert_int_equal(nodelay, total);
    assert_true(td_mock_nodelay_count(k.nodelay) >= total);
    td_test_kafka_stop(&k);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_start_set_get_stop),
        cmocka_unit_test(test_restart_with_aof_keeps_data),
        cmocka_unit_test(test_kill_then_restart),
        cmocka_unit_test(test_without_aof_restart_is_empty),
        cmocka_unit_test(test_two_servers),
        cmocka_unit_test(test_tmpdir_helpers),
        cmocka_unit_test(test_mock_broker_nodelay),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
