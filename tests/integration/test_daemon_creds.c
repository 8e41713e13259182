/*
 * test_daemon_creds.c - `touchd run` and wrong Redis credentials: the real
 * touchd binary ($TD_TOUCHD) as a child process, a real redis-server
 * (harness.h) and librdkafka's mock cluster in THIS process
 * (harness_kafka.h).
 *
 * Cases:
 *   - at start, every connection touchd will use is checked before Kafka is
 *     joined, and a refusal exits 4 within seconds with a line that names
 *     the connection, Redis' code and the key to fix, and never a password:
 *     a server with requirepass and no redis.password (NOAUTH), a wrong
 *     password given as env:NAME (WRONGPASS), a password for a server that
 *     has none, an ACL user without the timer index's keys (only the timers'
 *     connection can see it) or the gift register's (only the gifts'), and
 *     a server whose maxclients leaves no room for the store thread's second
 *     connection, which is opened at start now rather than at the first
 *     large write;
 *   - at run time, the server starts wanting a password (requirepass set,
 *     touchd's connections killed): one `redis authentication failed` line
 *     while batches are held, however many retries fail, the errors counted
 *     in `redis_auth_errors`; once the password is dropped again, `redis
 *     authentication works again` and every event's recommendation comes.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "harness_kafka.h"

#define T_IN "events"
#define T_OUT "recs"
#define T_DLQ "dlq"
#define GROUP "touchd-creds"
#define PASSWORD "Zq9-test-Secret-71"
#define WRONG "Wr0ng-test-Guess-38"

typedef struct fx {
    td_test_world w; /* first: td_test_world_teardown */
} fx;

/* the world: topics events, recs, dlq; one rule for every email.sent */
static int setup(void **state) { return td_test_world_setup_sent(state, sizeof(fx)); }

/* The config, with `redis_extra` inside the redis group. */
static void write_conf(fx *f, const char *redis_extra) {
    assert_int_equal(td_test_world_conf(&f->w, GROUP, T_IN, T_OUT, T_DLQ, NULL,
                                        "plan_topic = \"\";", redis_extra,
                                        "timers = { shards = 64; };\n"
                                        "time = { max_past_age = \"36500d\"; };"),
                     0);
}

static void redis_ok(fx *f, const char *fmt, const char *arg) {
    redisReply *rep = td_test_redis_cmd(&f->w.redis, fmt, arg);
    assert_non_null(rep);
    if (rep->type == REDIS_REPLY_ERROR) fail_msg("%s: %s", fmt, rep->str);
    freeReplyObject(rep);
}

/* Starts touchd and waits up to 10 s for it to exit. @returns its exit
 * code; *ms: how long it ran. */
static int run_to_exit(fx *f, int64_t *ms) {
    int64_t t0 = td_test_now_ms();
    assert_int_equal(td_test_touchd_start(&f->w.touchd, f->w.conf, f->w.log), 0);
    while (td_test_touchd_alive(&f->w.touchd) && td_test_now_ms() - t0 < 10000)
        td_test_sleep_ms(20);
    *ms = td_test_now_ms() - t0;
    if (f->w.touchd.pid > 0) {
        td_test_dump_log(f->w.log, 40);
        fail_msg("touchd still runs after %lld ms", (long long)*ms);
    }
    int st = f->w.touchd.status;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* touchd refused at start: exit 4 within 5 s, one line naming `connection`
 * with `code` and `key` (in its fix), nothing of Kafka, no password. */
static void expect_refused(fx *f, const char *connection, const char *code, const char *key) {
    char want[200];
    snprintf(want, sizeof want, "msg=\"redis refuses commands at start\" connection=%s ",
             connection);
    int before = td_test_count_in_file(f->w.log, want);
    int64_t ms = 0;
    int rc = run_to_exit(f, &ms);
    bool said = td_test_count_in_file(f->w.log, want) == before + 1;
    snprintf(want, sizeof want, "code=%s ", code);
    bool coded = td_test_count_in_file(f->w.log, want) >= 1;
    if (rc != 4 || !said || !coded) td_test_dump_log(f->w.log, 20);
    assert_int_equal(rc, 4);
    assert_true(said);
    assert_true(coded);
    assert_true(td_test_count_in_file(f->w.log, key) >= 1);
    assert_true(ms < 5000);
    fprintf(stderr, "# %s refused (%s): exit 4 after %lld ms\n", connection, code, (long long)ms);
    assert_int_equal(td_test_count_in_file(f->w.log, "msg=\"kafka connected\""), 0);
    assert_int_equal(td_test_count_in_file(f->w.log, "msg=\"touchd running\""), 0);
    assert_int_equal(td_test_count_in_file(f->w.log, PASSWORD), 0);
    assert_int_equal(td_test_count_in_file(f->w.log, WRONG), 0);
}

/* One start that Redis refuses: first `cmd` (with `arg`) on the test's
 * connection, then touchd with `conf` in its redis group and
 * TD_TEST_REDIS_PASSWORD = `env` (NULL: unset). */
typedef struct refusal {
    const char *cmd, *arg, *env, *conf;
    const char *connection, *code, *key; /* what the line must say */
} refusal;

#define ENV_PW "password = \"env:TD_TEST_REDIS_PASSWORD\";"

static const refusal REFUSALS[] = {
    /* requirepass, no redis.password */
    {"CONFIG SET requirepass %s", PASSWORD, NULL, NULL, "main", "NOAUTH", "set redis.password"},
    /* a wrong one, from the environment */
    {NULL, NULL, WRONG, ENV_PW, "main", "WRONGPASS", "Redis rejects redis.password"},
    /* a password for a server that has none */
    {"CONFIG SET requirepass %s", "", WRONG, ENV_PW, "main", "AUTH_WITHOUT_PASSWORD",
     "remove redis.password"},
    /* an ACL user whose key patterns leave out the timer index, then the
     * gift register: the main and store connections' reads pass, the one
     * connection that needs those keys is named */
    {"ACL SETUSER touchd on >%s ~touchd:p:* ~touchd:gifts:* +@all", PASSWORD, PASSWORD,
     "username = \"touchd\"; " ENV_PW, "timers", "NOPERM", "redis.username"},
    {"ACL SETUSER touchd resetkeys ~touchd:p:* ~touchd:t:*%s", "", PASSWORD,
     "username = \"touchd\"; " ENV_PW, "gifts", "NOPERM", "redis.username"},
    /* room for five of touchd's six connections (the test's own is one):
     * the last opened, the store thread's second, is refused at start, not
     * at the first write of more than 64 prospects */
    {"CONFIG SET maxclients %s", "6", NULL, NULL, "store-2", "MAXCLIENTS", "raise its maxclients"},
};

static void test_start_refusals(void **state) {
    fx *f = *state;
    for (size_t i = 0; i < sizeof REFUSALS / sizeof *REFUSALS; i++) {
        const refusal *c = &REFUSALS[i];
        if (c->cmd) redis_ok(f, c->cmd, c->arg);
        if (c->env)
            setenv("TD_TEST_REDIS_PASSWORD", c->env, 1);
        else
            unsetenv("TD_TEST_REDIS_PASSWORD");
        write_conf(f, c->conf);
        expect_refused(f, c->connection, c->code, c->key);
    }
    /* the right password: it runs, with every connection checked */
    redis_ok(f, "CONFIG SET maxclients %s", "10000");
    redis_ok(f, "CONFIG SET requirepass %s", PASSWORD);
    setenv("TD_TEST_REDIS_PASSWORD", PASSWORD, 1);
    write_conf(f, ENV_PW);
    assert_true(td_test_touchd_run(&f->w.touchd, f->w.conf, f->w.log));
    unsetenv("TD_TEST_REDIS_PASSWORD");
    assert_true(td_test_count_in_file(f->w.log, "msg=\"redis connected\"") == 1);
    assert_true(td_test_count_in_file(f->w.log, "connections=6") == 1);
    assert_int_equal(td_test_touchd_stop(&f->w.touchd, SIGTERM, 15000), 0);
    assert_int_equal(td_test_count_in_file(f->w.log, PASSWORD), 0);
}

static void produce(fx *f, int i) {
    char ev[300], pid[32];
    snprintf(pid, sizeof pid, "p-%d", i % 7);
    int n = snprintf(ev, sizeof ev,
                     "{\"id\":\"e-%d\",\"type\":\"email.sent\",\"prospect_id\":\"%s\","
                     "\"occurred_at\":\"2026-10-01T10:%02d:00Z\"}",
                     i, pid, i % 60);
    assert_int_equal(td_test_kafka_produce(&f->w.kafka, T_IN, pid, ev, (size_t)n), 0);
}

/* Redis starts wanting a password while touchd runs. */
static void test_runtime_auth_errors(void **state) {
    fx *f = *state;
    write_conf(f, NULL);
    assert_true(td_test_touchd_run(&f->w.touchd, f->w.conf, f->w.log));
    td_test_reader *r = td_test_reader_new(&f->w.kafka, T_OUT);
    for (int i = 0; i < 5; i++)
        produce(f, i);
    assert_int_equal(td_test_kafka_flush(&f->w.kafka, 5000), 0);
    assert_int_equal(td_test_reader_read(r, 5, 15000), 5);

    /* touchd's connections stay authenticated; new ones are not */
    redis_ok(f, "CONFIG SET requirepass %s", PASSWORD);
    redis_ok(f, "CLIENT KILL TYPE normal SKIPME %s", "yes");
    for (int i = 5; i < 10; i++)
        produce(f, i);
    assert_int_equal(td_test_kafka_flush(&f->w.kafka, 5000), 0);
    bool said = td_test_wait_file(f->w.log, "msg=\"redis authentication failed\"", 1, 10000);
    if (!said) td_test_dump_log(f->w.log, 30);
    assert_true(said);
    td_test_sleep_ms(1500); /* retries: the held batch every 20..200 ms, timer polls */
    assert_int_equal(td_test_count_in_file(f->w.log, "msg=\"redis authentication failed\""), 1);
    assert_true(td_test_count_in_file(f->w.log, "code=NOAUTH") >= 1);

    redis_ok(f, "CONFIG SET requirepass %s", "");
    assert_true(td_test_wait_file(f->w.log, "msg=\"redis authentication works again\"", 1, 10000));
    /* every event recommended at least once (a held batch may publish again) */
    for (int i = 0; i < 10; i++) {
        char id[40];
        snprintf(id, sizeof id, "\"event_id\":\"e-%d\"", i);
        bool seen = false;
        for (int64_t end = td_test_now_ms() + 15000; !seen && td_test_now_ms() < end;) {
            size_t n = 0;
            const td_test_msg *m = td_test_reader_msgs(r, &n);
            for (size_t k = 0; k < n && !seen; k++)
                seen = strstr(m[k].val, id) != NULL;
            if (!seen) td_test_reader_read(r, n + 1, 200);
        }
        if (!seen) fail_msg("no recommendation for e-%d", i);
    }
    td_test_reader_free(r);
    assert_int_equal(td_test_touchd_stop(&f->w.touchd, SIGTERM, 15000), 0);
    assert_int_equal(td_test_count_in_file(f->w.log, "msg=\"redis authentication failed\""), 1);
    long long errors = td_test_progress_value(f->w.log, "redis_auth_errors");
    fprintf(stderr, "# redis_auth_errors=%lld, one log line\n", errors);
    assert_true(errors >= 3);
    assert_int_equal(td_test_count_in_file(f->w.log, PASSWORD), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_start_refusals, setup, td_test_world_teardown),
        cmocka_unit_test_setup_teardown(test_runtime_auth_errors, setup, td_test_world_teardown),
    };
    if (getenv("TD_TEST_FILTER")) cmocka_set_test_filter(getenv("TD_TEST_FILTER"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
