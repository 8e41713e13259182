/*
 * test_timers_daemon.c - durable timers end to end: the real touchd binary
 * ($TD_TOUCHD) as a child process (one or two instances), a real
 * redis-server (appendonly) and librdkafka's mock cluster in THIS process.
 *
 * The ruleset has one timer rule (`after = "2s"` on email.sent) and nothing
 * else, so every recommendation on the output topic is a timer firing.
 * Events carry occurred_at = the wall clock, so a timer is due 2 s after its
 * event.
 *
 * Cases:
 *   - a short timer fires within 1 s of its due time (generated_at - due_at,
 *     both in the recommendation), once;
 *   - two touchd instances on the same Redis and group: N timers, N distinct
 *     recommendation ids, each exactly once;
 *   - touchd killed (SIGKILL) with timers pending, restarted after they are
 *     overdue: every overdue timer fires exactly once (fire_late);
 *   - overdue_policy = "drop": timers overdue beyond drop_older_than after a
 *     restart are not fired, and are disarmed in the state;
 *   - a prospect's first touch derives owner.prospect_contacted for the
 *     seller's state in the same batch, and the owner's timer rule fires;
 *   - timers and events take one path: with the state cache on and one
 *     instance, events that follow fired timers on the same prospects never
 *     conflict (a timer write that bypassed the cache would leave it stale).
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <cmocka.h>

#include "harness.h"
#include "harness_kafka.h"
#include "td_time.h"

#define PARTS 4
#define T_IN "events"
#define T_OUT "recs"
#define T_DLQ "dlq"
#define GROUP "touchd-timers"

static const char RULES[] =
    "rules = (\n"
    "  { id = \"t.silence\"; doc = \"2 s after an email, if unanswered\";\n"
    "    on = [ \"email.sent\" ]; after = \"2s\"; when = \"email.unanswered >= 1\";\n"
    "    recommend = { channel = \"linkedin\"; touch = \"follow_up\"; }; },\n"
    "  { id = \"t.owner\"; doc = \"2 s after a seller's first contact of a prospect\";\n"
    "    on = [ \"owner.prospect_contacted\" ]; after = \"2s\";\n"
    "    recommend = { channel = \"email\"; touch = \"owner_nudge\"; }; }\n"
    ");\n";

/* RULES with t.silence late 1 s past its not_before (late_after), at any
 * hour (no business-hours move of not_before): what an outage of a few
 * seconds makes late. */
static const char RULES_LATE[] =
    "settings = { quiet_start_hour = 0; quiet_end_hour = 0; };\n"
    "rules = (\n"
    "  { id = \"t.silence\"; doc = \"2 s after an email, if unanswered\";\n"
    "    on = [ \"email.sent\" ]; after = \"2s\"; when = \"email.unanswered >= 1\";\n"
    "    late_after = \"1s\";\n"
    "    recommend = { channel = \"linkedin\"; touch = \"follow_up\"; window = \"any\"; }; },\n"
    "  { id = \"t.owner\"; doc = \"2 s after a seller's first contact of a prospect\";\n"
    "    on = [ \"owner.prospect_contacted\" ]; after = \"2s\";\n"
    "    recommend = { channel = \"email\"; touch = \"owner_nudge\"; }; }\n"
    ");\n";

typedef struct fx {
    char dir[256];
    char rules_dir[300];
    char conf[300];
    char log[300], log2[300];
    td_test_redis redis;
    td_test_kafka kafka;
    td_test_touchd touchd, touchd2;
    int claim_batch; /* timers.claim_batch (0: 200) */
} fx;

static void write_config(fx *f, const char *timers_extra) {
    char text[2048];
    int n = snprintf(text, sizeof text,
                     "kafka = {\n"
                     "  brokers = \"%s\";\n"
                     "  group_id = \"" GROUP "\";\n"
                     "  input_topics = [ \"" T_IN "\" ];\n"
                     "  output_topic = \"" T_OUT "\";\n"
                     "  dead_letter_topic = \"" T_DLQ "\";\n"
                     "  consumer = { fetch_wait_max_ms = 5; session_timeout_ms = 6000;\n"
                     "               heartbeat_interval_ms = 500; };\n"
                     "  producer = { linger_ms = 0; };\n"
                     "};\n"
                     "redis = { host = \"127.0.0.1\"; port = %d; backoff_min_ms = 20;\n"
                     "          backoff_max_ms = 200; command_timeout_ms = 2000;\n"
                     "          connect_timeout_ms = 500; };\n"
                     "rules = { dir = \"%s\"; reload_poll_ms = 0; };\n"
                     "engine = { batch_max_events = 500; batch_max_ms = 20; };\n"
                     "timers = { shards = 64; poll_ms = 50; sweep_ms = 200; lease_ms = 3000;\n"
                     "           claim_batch = %d; %s };\n"
                     "log = { level = \"info\"; };\n",
                     f->kafka.bootstraps, f->redis.port, f->rules_dir,
                     f->claim_batch ? f->claim_batch : 200, timers_extra ? timers_extra : "");
    assert_int_equal(
        td_test_write_file(f->dir, "touchd.conf", text, (size_t)n, f->conf, sizeof f->conf), 0);
}

static int setup(void **state) {
    fx *f = calloc(1, sizeof *f);
    if (td_test_tmpdir(f->dir, sizeof f->dir) != 0) return -1;
    snprintf(f->rules_dir, sizeof f->rules_dir, "%s/rules", f->dir);
    if (mkdir(f->rules_dir, 0755) != 0) return -1;
    snprintf(f->log, sizeof f->log, "%s/touchd.log", f->dir);
    snprintf(f->log2, sizeof f->log2, "%s/touchd2.log", f->dir);
    f->redis.appendonly = true;
    if (td_test_redis_start(&f->redis) != 0) return -1;
    const char *topics[] = {T_IN, T_OUT, T_DLQ};
    if (td_test_kafka_start(&f->kafka, topics, 3, PARTS) != 0) return -1;
    if (td_test_write_file(f->rules_dir, "t.rules", RULES, strlen(RULES), NULL, 0) != 0) return -1;
    write_config(f, NULL);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fx *f = *state;
    if (!f) return 0;
    if (f->touchd.pid > 0) {
        td_test_dump_log(f->log, 30);
        td_test_touchd_kill(&f->touchd);
    }
    if (f->touchd2.pid > 0) {
        td_test_dump_log(f->log2, 30);
        td_test_touchd_kill(&f->touchd2);
    }
    td_test_kafka_stop(&f->kafka);
    td_test_redis_stop(&f->redis);
    td_test_rmtree(f->dir);
    free(f);
    return 0;
}

/* email.sent for prospect p, event j, occurred at `at` (ms). */
static void send_sent(fx *f, int p, int j, int64_t at) {
    char ts[40], ev[512], key[32];
    td_time_format(at, ts, sizeof ts);
    int n = snprintf(ev, sizeof ev,
                     "{\"id\":\"e-%d-%d\",\"type\":\"email.sent\",\"prospect_id\":\"p-%d\","
                     "\"occurred_at\":\"%s\"}",
                     p, j, p, ts);
    snprintf(key, sizeof key, "p-%d", p);
    assert_int_equal(td_test_kafka_produce(&f->kafka, T_IN, key, ev, (size_t)n), 0);
}

static void start(fx *f, td_test_touchd *t, const char *log) {
    if (!td_test_touchd_run(t, f->conf, log)) fail_msg("touchd did not start");
}

/* Waits until every prospect 0..np-1 has applied `events` events. */
static void wait_applied(fx *f, int np, int events, int timeout_ms) {
    int64_t end = td_test_now_ms() + timeout_ms;
    for (;;) {
        int done = 0;
        for (int p = 0; p < np; p++) {
            redisReply *r = td_test_redis_cmd(&f->redis, "HGET touchd:p:{p-%d} events", p);
            if (r && r->type == REDIS_REPLY_STRING && atoi(r->str) >= events) done++;
            if (r) freeReplyObject(r);
        }
        if (done == np) return;
        if (td_test_now_ms() > end)
            fail_msg("only %d of %d prospects applied their events", done, np);
        td_test_sleep_ms(50);
    }
}

typedef struct seen {
    char ids[1024][40];
    int count[1024];
    size_t n;
    int64_t max_delay;
    size_t timer_recs;
} seen;

/* Tallies recommendation ids (and timer delays) among the reader's messages. */
static void tally(td_test_reader *r, seen *s) {
    size_t n;
    const td_test_msg *m = td_test_reader_msgs(r, &n);
    memset(s, 0, sizeof *s);
    for (size_t i = 0; i < n; i++) {
        json_t *j = json_loads(m[i].val, 0, NULL);
        assert_non_null(j);
        const char *id = json_string_value(json_object_get(j, "id"));
        json_t *trig = json_object_get(j, "trigger");
        const char *type = json_string_value(json_object_get(trig, "type"));
        if (type && strcmp(type, "timer") == 0) {
            s->timer_recs++;
            const char *due = json_string_value(json_object_get(trig, "due_at"));
            const char *gen = json_string_value(json_object_get(j, "generated_at"));
            td_ms d, g;
            assert_int_equal(td_time_parse(due, strlen(due), &d), TD_OK);
            assert_int_equal(td_time_parse(gen, strlen(gen), &g), TD_OK);
            if (g - d > s->max_delay) s->max_delay = g - d;
        }
        size_t k = 0;
        while (k < s->n && strcmp(s->ids[k], id) != 0)
            k++;
        if (k == s->n && s->n < 1024) snprintf(s->ids[s->n++], sizeof s->ids[0], "%s", id);
        if (k < 1024) s->count[k]++;
        json_decref(j);
    }
}

static int max_count(const seen *s) {
    int m = 0;
    for (size_t i = 0; i < s->n; i++)
        if (s->count[i] > m) m = s->count[i];
    return m;
}

/* timers_fired=N of the last progress line of a log (0 when none). */
static int fired_in_log(const char *path) {
    FILE *in = fopen(path, "r");
    if (!in) return 0;
    char line[4096];
    int v = 0;
    while (fgets(line, sizeof line, in)) {
        const char *p = strstr(line, " timers_fired=");
        if (p) v = atoi(p + 14);
    }
    fclose(in);
    return v;
}

/* ---- cases ---- */

static void test_short_timer_fires_on_time(void **state) {
    fx *f = *state;
    start(f, &f->touchd, f->log);
    /* the timer is armed when the event is applied: wait for the group join
     * so that happens now, not seconds later */
    assert_true(td_test_wait_file(f->log, "msg=\"partitions assigned\"", 1, 20000));
    td_test_reader *r = td_test_reader_new(&f->kafka, T_OUT);
    int64_t at = td_test_wall_ms(); /* due at + 2 s */
    for (int p = 0; p < 5; p++)
        send_sent(f, p, 0, at);
    assert_int_equal(td_test_kafka_flush(&f->kafka, 5000), 0);
    size_t got = td_test_reader_read(r, 5, 15000);
    int64_t arrived = td_test_wall_ms();
    assert_int_equal(got, 5);
    td_test_reader_drain(r, 1500); /* nothing more */
    seen s;
    tally(r, &s);
    print_message("5 timers due at +2 s: max firing delay (generated_at - due_at) %lld ms, "
                  "last arrival on the output topic %lld ms after due\n",
                  (long long)s.max_delay, (long long)(arrived - (at + 2000)));
    assert_int_equal(s.timer_recs, 5);
    assert_int_equal(s.n, 5);
    assert_int_equal(max_count(&s), 1);
    assert_true(s.max_delay >= 0);
    assert_true(s.max_delay < 1000);
    /* disarmed in the state, gone from the index */
    redisReply *rep = td_test_redis_cmd(&f->redis, "HEXISTS touchd:p:{p-0} timer.t.silence");
    assert_int_equal(rep->integer, 0);
    freeReplyObject(rep);
    rep = td_test_redis_cmd(&f->redis, "ZCARD touchd:t:claimed");
    assert_int_equal(rep->integer, 0);
    freeReplyObject(rep);
    td_test_reader_free(r);
    assert_int_equal(td_test_touchd_stop(&f->touchd, SIGTERM, 15000), 0);
    assert_true(td_test_count_in_file(f->log, "timers_fired=5") >= 1);
}

/* Two instances in the group; np prospects each arm a timer due `delay_ms`
 * after the current second: every timer fires exactly once, across both. */
static void two_instances_fire(fx *f, int np, int64_t delay_ms) {
    start(f, &f->touchd, f->log);
    start(f, &f->touchd2, f->log2);
    /* both in the group (so events are applied, and timers armed, at once) */
    assert_true(td_test_wait_file(f->log2, "msg=\"partitions assigned\"", 1, 30000));
    td_test_sleep_ms(500);
    td_test_reader *r = td_test_reader_new(&f->kafka, T_OUT);
    int64_t at = (td_test_wall_ms() / 1000) * 1000 + delay_ms;
    for (int p = 0; p < np; p++)
        send_sent(f, p, 0, at);
    assert_int_equal(td_test_kafka_flush(&f->kafka, 5000), 0);
    size_t got = td_test_reader_read(r, (size_t)np, 30000);
    td_test_reader_drain(r, 2000);
    seen s;
    tally(r, &s);
    print_message("2 instances, %d timers, claim_batch %d: %zu recommendations, %zu distinct "
                  "ids, max count %d, max delay %lld ms\n",
                  np, f->claim_batch ? f->claim_batch : 200, got, s.n, max_count(&s),
                  (long long)s.max_delay);
    assert_int_equal(s.n, np);
    assert_int_equal(max_count(&s), 1);
    td_test_reader_free(r);
    assert_int_equal(td_test_touchd_stop(&f->touchd, SIGTERM, 15000), 0);
    assert_int_equal(td_test_touchd_stop(&f->touchd2, SIGTERM, 15000), 0);
    /* how the two instances shared the work (both poll every shard): the
     * split is timing's (printed, not asserted), the sum is not */
    print_message("fired by instance 1: %d, by instance 2: %d\n", fired_in_log(f->log),
                  fired_in_log(f->log2));
    assert_int_equal(fired_in_log(f->log) + fired_in_log(f->log2), np);
}

static void test_two_instances_fire_once(void **state) { two_instances_fire(*state, 200, 0); }

/* Claims in batches of 3: a poll that claims a full batch is followed at
 * once by the next, so both instances drain the due timers at the same
 * time and race for the same shards (with batches of 200, one poll of one
 * instance takes them all). Due a second later, so both instances have
 * armed them all first. Exactly once still. */
static void test_two_instances_contend(void **state) {
    fx *f = *state;
    f->claim_batch = 3;
    write_config(f, NULL);
    two_instances_fire(f, 300, 1000);
}

static void test_kill_with_pending_then_overdue(void **state) {
    fx *f = *state;
    start(f, &f->touchd, f->log);
    td_test_reader *r = td_test_reader_new(&f->kafka, T_OUT);
    enum { NP = 100 };
    int64_t at = td_test_wall_ms() + 4000; /* due in 6 s: all applied and pending before the kill */
    for (int p = 0; p < NP; p++)
        send_sent(f, p, 0, at);
    assert_int_equal(td_test_kafka_flush(&f->kafka, 5000), 0);
    wait_applied(f, NP, 1, 15000);
    /* every timer armed and pending, none due yet: kill -9 */
    td_test_touchd_kill(&f->touchd);
    redisReply *rep = td_test_redis_cmd(&f->redis, "EVAL %s 0",
                                        "local n = 0 for i = 0, 63 do n = n + "
                                        "redis.call('ZCARD', 'touchd:t:' .. i) end return n");
    assert_non_null(rep);
    print_message("killed with %lld timers pending\n", rep->integer);
    assert_int_equal(rep->integer, NP);
    freeReplyObject(rep);
    assert_int_equal(td_test_reader_drain(r, 500), 0);
    /* down until they are all overdue */
    while (td_test_wall_ms() < at + 2000 + 1500)
        td_test_sleep_ms(100);
    start(f, &f->touchd, f->log);
    size_t got = td_test_reader_read(r, NP, 30000);
    td_test_reader_drain(r, 2000);
    seen s;
    tally(r, &s);
    print_message("after restart: %zu recommendations, %zu distinct, max count %d\n", got, s.n,
                  max_count(&s));
    assert_int_equal(s.n, NP);
    assert_int_equal(max_count(&s), 1);
    td_test_reader_free(r);
    assert_int_equal(td_test_touchd_stop(&f->touchd, SIGTERM, 15000), 0);
}

/* A prospect's first outbound touch derives owner.prospect_contacted for its
 * seller's state ("owner:<owner_id>"), stepped in the same batch; the owner's
 * timer rule then fires through the same durable timers. */
static void test_owner_event_and_owner_timer(void **state) {
    fx *f = *state;
    start(f, &f->touchd, f->log);
    assert_true(td_test_wait_file(f->log, "msg=\"partitions assigned\"", 1, 20000));
    td_test_reader *r = td_test_reader_new(&f->kafka, T_OUT);
    char ts[40], ev[512];
    int64_t at = td_test_wall_ms();
    td_time_format(at, ts, sizeof ts);
    /* two prospects of rep-1 (first touches: 2 derived events), one of rep-2,
     * and a second email to p-0 (not a first touch: nothing derived) */
    const char *pids[] = {"p-0", "p-1", "p-2", "p-0"};
    const char *owners[] = {"rep-1", "rep-1", "rep-2", "rep-1"};
    for (int i = 0; i < 4; i++) {
        int n = snprintf(ev, sizeof ev,
                         "{\"id\":\"o-%d\",\"type\":\"email.sent\",\"prospect_id\":\"%s\","
                         "\"owner_id\":\"%s\",\"occurred_at\":\"%s\"}",
                         i, pids[i], owners[i], ts);
        assert_int_equal(td_test_kafka_produce(&f->kafka, T_IN, pids[i], ev, (size_t)n), 0);
    }
    assert_int_equal(td_test_kafka_flush(&f->kafka, 5000), 0);
    /* 3 prospect timers (p-0 re-armed once) + 2 owner timers */
    size_t got = td_test_reader_read(r, 5, 15000);
    td_test_reader_drain(r, 1500);
    size_t n;
    const td_test_msg *m = td_test_reader_msgs(r, &n);
    int owner_recs = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *j = json_loads(m[i].val, 0, NULL);
        const char *rule = json_string_value(json_object_get(j, "rule"));
        const char *pid = json_string_value(json_object_get(j, "prospect_id"));
        if (strcmp(rule, "t.owner") == 0) {
            owner_recs++;
            assert_true(strcmp(pid, "owner:rep-1") == 0 || strcmp(pid, "owner:rep-2") == 0);
        }
        json_decref(j);
    }
    print_message("%zu recommendations, %d for owners\n", got, owner_recs);
    assert_int_equal(n, 5);
    assert_int_equal(owner_recs, 2);
    /* the owners' states: rep-1 counted 2 first contacts */
    redisReply *rep = td_test_redis_cmd(&f->redis, "HGET touchd:p:{owner:rep-1} events");
    assert_int_equal(rep->type, REDIS_REPLY_STRING);
    assert_string_equal(rep->str, "2");
    freeReplyObject(rep);
    rep = td_test_redis_cmd(&f->redis, "HGET touchd:p:{owner:rep-2} events");
    assert_int_equal(rep->type, REDIS_REPLY_STRING);
    assert_string_equal(rep->str, "1");
    freeReplyObject(rep);
    td_test_reader_free(r);
    assert_int_equal(td_test_touchd_stop(&f->touchd, SIGTERM, 15000), 0);
}

/* After an outage, overdue timers fire; what they recommend is late (past
 * its rule's late_after) and the late policy "drop" publishes none of it:
 * counted, not logged one by one, the timers disarmed. */
static void test_late_drop_after_outage(void **state) {
    fx *f = *state;
    assert_int_equal(
        td_test_write_file(f->rules_dir, "t.rules", RULES_LATE, strlen(RULES_LATE), NULL, 0), 0);
    write_config(f, NULL);
    FILE *c = fopen(f->conf, "a");
    assert_non_null(c);
    fputs("time = { late_policy = \"drop\"; };\n", c);
    fclose(c);
    start(f, &f->touchd, f->log);
    td_test_reader *r = td_test_reader_new(&f->kafka, T_OUT);
    enum { NP = 20 };
    int64_t at = td_test_wall_ms() + 4000; /* due in 6 s */
    for (int p = 0; p < NP; p++)
        send_sent(f, p, 0, at);
    assert_int_equal(td_test_kafka_flush(&f->kafka, 5000), 0);
    wait_applied(f, NP, 1, 15000);
    td_test_touchd_kill(&f->touchd);
    while (td_test_wall_ms() < at + 2000 + 2500) /* 2.5 s overdue > late_after 1 s */
        td_test_sleep_ms(100);
    start(f, &f->touchd, f->log);
    /* every timer fires (disarmed), nothing is published */
    for (int p = 0; p < NP; p++) {
        bool gone = false;
        for (int k = 0; k < 150 && !gone; k++) {
            redisReply *rep =
                td_test_redis_cmd(&f->redis, "HEXISTS touchd:p:{p-%d} timer.t.silence", p);
            gone = rep->integer == 0;
            freeReplyObject(rep);
            if (!gone) td_test_sleep_ms(100);
        }
        assert_true(gone);
    }
    size_t got = td_test_reader_drain(r, 1000);
    size_t n;
    const td_test_msg *m = td_test_reader_msgs(r, &n);
    for (size_t i = 0; i < n; i++) /* the owners' nudges are not late (no late_after) */
        assert_non_null(strstr(m[i].val, "\"rule\":\"t.owner\""));
    (void)got;
    td_test_reader_free(r);
    assert_int_equal(td_test_touchd_stop(&f->touchd, SIGTERM, 15000), 0);
    assert_true(td_test_count_in_file(f->log, "late_dropped=20") >= 1);
    assert_int_equal(td_test_count_in_file(f->log, "overdue timer dropped"), 0);
}

static void test_timers_and_events_one_path(void **state) {
    fx *f = *state;
    enum { NP = 40 };
    start(f, &f->touchd, f->log);
    assert_true(td_test_wait_file(f->log, "msg=\"partitions assigned\"", 1, 20000));
    td_test_reader *r = td_test_reader_new(&f->kafka, T_OUT);
    int64_t at = td_test_wall_ms();
    for (int p = 0; p < NP; p++)
        send_sent(f, p, 0, at);
    assert_int_equal(td_test_kafka_flush(&f->kafka, 5000), 0);
    /* every timer fires (2 s after its event) and is stored */
    assert_int_equal(td_test_reader_read(r, NP, 20000), NP);
    int64_t end = td_test_now_ms() + 10000;
    for (;;) {
        redisReply *rep = td_test_redis_cmd(&f->redis, "ZCARD touchd:t:claimed");
        long long claimed = rep->integer;
        freeReplyObject(rep);
        rep = td_test_redis_cmd(&f->redis, "HEXISTS touchd:p:{p-%d} timer.t.silence", NP - 1);
        long long armed = rep->integer;
        freeReplyObject(rep);
        if (claimed == 0 && armed == 0) break;
        assert_true(td_test_now_ms() < end);
        td_test_sleep_ms(50);
    }
    /* then a second event for each of those prospects, loaded from the
     * cache the timer batch left */
    for (int p = 0; p < NP; p++)
        send_sent(f, p, 1, td_test_wall_ms());
    assert_int_equal(td_test_kafka_flush(&f->kafka, 5000), 0);
    wait_applied(f, NP, 2, 20000);
    assert_int_equal(td_test_touchd_stop(&f->touchd, SIGTERM, 15000), 0);
    long long conflicts = td_test_progress_value(f->log, "conflicts");
    long long fired = td_test_progress_value(f->log, "timers_fired");
    print_message("%d timers fired then %d events on the same prospects: conflicts=%lld "
                  "timers_fired=%lld\n",
                  NP, NP, conflicts, fired);
    assert_int_equal(fired, NP);
    assert_int_equal(conflicts, 0);
    /* the second events re-armed every timer */
    for (int p = 0; p < NP; p++) {
        redisReply *rep =
            td_test_redis_cmd(&f->redis, "HEXISTS touchd:p:{p-%d} timer.t.silence", p);
        assert_int_equal(rep->integer, 1);
        freeReplyObject(rep);
    }
    td_test_reader_free(r);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_short_timer_fires_on_time, setup, teardown),
        cmocka_unit_test_setup_teardown(test_two_instances_fire_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_two_instances_contend, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kill_with_pending_then_overdue, setup, teardown),
        cmocka_unit_test_setup_teardown(test_late_drop_after_outage, setup, teardown),
        cmocka_unit_test_setup_teardown(test_owner_event_and_owner_timer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timers_and_events_one_path, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
