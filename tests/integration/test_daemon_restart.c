/*
 * test_daemon_restart.c - restarts and static group membership
 * (kafka.instance_id, librdkafka's group.instance.id): the real touchd
 * binary ($TD_TOUCHD) as a child process, a real redis-server and
 * librdkafka's mock cluster in THIS process (harness_kafka.h), so the group
 * outlives touchd.
 *
 * What the mock cluster of librdkafka 2.0.2 (Debian's) can show. Its group
 * coordinator reads a JoinGroup's GroupInstanceId and ignores it: every
 * member that joins without a member id is a new member, so a restarted
 * static member does not take its old place (a real broker, >= 2.3, gives
 * it back its member id and its partitions without a rebalance: the fast
 * restart). What the mock does show is the client side of KIP-345, which is
 * what kafka.instance_id changes in touchd:
 *   - a static member does not leave the group when it stops (SIGTERM):
 *     restarted with the same kafka.instance_id, touchd gets its partitions
 *     back only once the old member's session has expired on the mock
 *     (session.timeout.ms), where a dynamic member, which leaves, gets them
 *     back sooner; both times are measured and printed;
 *   - two live members with one instance id: the broker fences the older
 *     one (FENCED_INSTANCE_ID on its heartbeat; the mock does not do it by
 *     itself, so the test injects that error), which librdkafka makes a
 *     fatal error: touchd logs it and exits 4.
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
#define GROUP "touchd-restart"
#define SESSION_MS 6000
#define API_HEARTBEAT 12 /* Kafka protocol ApiKey of Heartbeat */

typedef struct fx {
    td_test_world w; /* first: td_test_world_teardown */
} fx;

/* the world: topics events, recs, dlq; one rule for every email.sent */
static int setup(void **state) { return td_test_world_setup_sent(state, sizeof(fx)); }

/* The config; `instance`: kafka.instance_id (NULL: none). */
static void write_conf(fx *f, const char *instance) {
    char consumer[200], kafka[100] = "plan_topic = \"\";";
    snprintf(consumer, sizeof consumer,
             "fetch_wait_max_ms = 5; session_timeout_ms = %d; heartbeat_interval_ms = 500;",
             SESSION_MS);
    if (instance)
        snprintf(kafka, sizeof kafka, "plan_topic = \"\"; instance_id = \"%s\";", instance);
    assert_int_equal(td_test_world_conf(&f->w, GROUP, T_IN, T_OUT, T_DLQ, consumer, kafka, NULL,
                                        "time = { max_past_age = \"36500d\"; };"),
                     0);
}

/* both partitions at once: what a restarted single instance gets */
static const char ASSIGNED[] = "msg=\"partitions assigned\" count=2 partitions=events/0,events/1";

/* Stops touchd (SIGTERM: a clean stop), starts it again at once and
 * @returns the ms from the new start to its `partitions assigned` of both
 * partitions (-1: none within 30 s). */
static int64_t restart_ms(fx *f) {
    assert_int_equal(td_test_touchd_stop(&f->w.touchd, SIGTERM, 15000), 0);
    int before = td_test_count_in_file(f->w.log, ASSIGNED);
    int64_t t0 = td_test_now_ms();
    assert_int_equal(td_test_touchd_start(&f->w.touchd, f->w.conf, f->w.log), 0);
    if (!td_test_wait_file(f->w.log, ASSIGNED, before + 1, 30000)) return -1;
    return td_test_now_ms() - t0;
}

static void test_restart_static_and_dynamic(void **state) {
    fx *f = *state;
    write_conf(f, NULL); /* dynamic membership: a stop leaves the group */
    assert_true(td_test_touchd_run(&f->w.touchd, f->w.conf, f->w.log));
    assert_true(td_test_wait_file(f->w.log, ASSIGNED, 1, 20000));
    int64_t dyn_ms = restart_ms(f);

    write_conf(f, "touchd-a"); /* the same instance, static from its next start */
    int before = td_test_count_in_file(f->w.log, ASSIGNED);
    assert_int_equal(td_test_touchd_stop(&f->w.touchd, SIGTERM, 15000), 0);
    assert_true(td_test_touchd_run(&f->w.touchd, f->w.conf, f->w.log));
    assert_true(td_test_wait_file(f->w.log, ASSIGNED, before + 1, 30000));
    assert_int_equal(td_test_count_in_file(f->w.log, "instance=touchd-a "), 1);
    int64_t stat_ms = restart_ms(f);
    assert_int_equal(td_test_touchd_stop(&f->w.touchd, SIGTERM, 15000), 0);
    /* its stops did not leave the group */
    assert_int_equal(
        td_test_count_in_file(f->w.log,
                              "msg=\"stopping: committing offsets, keeping the group membership\""),
        2);
    fprintf(stderr,
            "# restart to partitions assigned on the 2.0.2 mock cluster, session.timeout.ms "
            "%d: dynamic member %lld ms, static member (kafka.instance_id) %lld ms\n",
            SESSION_MS, (long long)dyn_ms, (long long)stat_ms);
    assert_true(stat_ms > 0 && dyn_ms > 0);
    /* The dynamic member had left: the mock hands the partitions out when
     * its rebalance timer (session.timeout.ms - 1 s from the leave) fires.
     * The stopped static member kept its place until its session expired
     * (at most one heartbeat interval less than session.timeout.ms after
     * the stop), and only then was the group rebalanced: a real broker
     * would have given the restarted member that place at once. */
    assert_true(dyn_ms < SESSION_MS - 500);
    assert_true(stat_ms >= SESSION_MS - 500);
    assert_true(stat_ms > dyn_ms + 2000);
}

/* Another live member took this instance id: the coordinator fences this
 * one on its next heartbeat. */
static void test_fenced_instance_exits_4(void **state) {
    fx *f = *state;
    write_conf(f, "touchd-a");
    assert_true(td_test_touchd_run(&f->w.touchd, f->w.conf, f->w.log));
    assert_true(td_test_wait_file(f->w.log, ASSIGNED, 1, 20000));
    int64_t t0 = td_test_now_ms();
    rd_kafka_mock_push_request_errors(f->w.kafka.mc, API_HEARTBEAT, 1,
                                      RD_KAFKA_RESP_ERR_FENCED_INSTANCE_ID);
    while (td_test_touchd_alive(&f->w.touchd) && td_test_now_ms() - t0 < 10000)
        td_test_sleep_ms(20);
    int64_t ms = td_test_now_ms() - t0;
    if (f->w.touchd.pid > 0) fail_msg("touchd still runs %lld ms after the fence", (long long)ms);
    int st = f->w.touchd.status;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 4) td_test_dump_log(f->w.log, 20);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 4);
    assert_true(td_test_count_in_file(f->w.log, "FENCED_INSTANCE_ID") >= 1);
    assert_int_equal(td_test_count_in_file(f->w.log, "msg=\"fatal kafka error, exiting\""), 1);
    fprintf(stderr, "# fenced: exit 4 after %lld ms\n", (long long)ms);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_restart_static_and_dynamic, setup,
                                        td_test_world_teardown),
        cmocka_unit_test_setup_teardown(test_fenced_instance_exits_4, setup,
                                        td_test_world_teardown),
    };
    if (getenv("TD_TEST_FILTER")) cmocka_set_test_filter(getenv("TD_TEST_FILTER"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
