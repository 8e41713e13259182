/*
 * test_event_time.c - event time in the daemon: the real touchd binary
 * ($TD_TOUCHD) as a child process, a real redis-server and librdkafka's mock
 * cluster in THIS process (harness_kafka.h).
 *
 * Cases:
 *   - time bounds at intake: events dated 9999-12-31, 0001-01-01, 401 days
 *     ago and 6 minutes ahead go to the dead-letter topic with a reason that
 *     names the field and the bound (never the value), are counted as dead
 *     letters, their offsets committed, and nothing of them is applied (no
 *     state in Redis); events 399 days ago and 4 minutes ahead are applied;
 *   - a prospect's timers due before its next event fire before that event,
 *     as `touchd replay` fires them: an email sent two days ago arms two
 *     timer rules (after = 24h; the first in the ruleset has the later rule
 *     id), then a reply dated now. Both timers fire, in ruleset order, before
 *     the reply, with trigger type timer, due_at = sent + 24h and not_before
 *     from the due time (the reply would make their `when` false), are
 *     published before the reply's recommendation, are counted as fired
 *     timers (timers_before_events), and are gone from the state and the
 *     timer index; the recommendations are those of `touchd replay`.
 *
 * The timer claimer polls once at start (nothing is due then) and not again
 * for a minute (timers.poll_ms), so only the daemon's event path can fire
 * the timers here.
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
#include <unistd.h>

#include <jansson.h>
#include <cmocka.h>

#include "harness.h"
#include "harness_kafka.h"
#include "td_time.h"
#include "td_timers.h"

#define T_IN "events"
#define T_OUT "recs"
#define T_DLQ "dlq"
#define GROUP "touchd-event-time"
#define SHARDS 64

/* One recommendation for every email.sent; two timer rules, due 24 h after
 * an email, whose `when` a reply makes false; one for every reply. No quiet
 * hours and window "any": not_before is exactly what `at` says. */
static const char RULES[] =
    "settings = { quiet_start_hour = 0; quiet_end_hour = 0; };\n"
    "rules = (\n"
    "  { id = \"t.sent\"; on = [ \"email.sent\" ];\n"
    "    recommend = { channel = \"email\"; touch = \"follow_up\"; window = \"any\"; }; },\n"
    "  { id = \"t.zeta\"; doc = \"first in the ruleset, last by id\"; on = [ \"email.sent\" ];\n"
    "    after = \"24h\"; when = \"email.unanswered >= 1 && !replied\";\n"
    "    recommend = { channel = \"linkedin\"; touch = \"follow_up\"; at = \"now + 1h\";\n"
    "                  window = \"any\"; }; },\n"
    "  { id = \"t.alpha\"; doc = \"same due time, later in the ruleset\"; on = [ \"email.sent\" "
    "];\n"
    "    after = \"24h\"; when = \"email.unanswered >= 1 && !replied\";\n"
    "    recommend = { channel = \"call\"; touch = \"call_proposal\"; at = \"now + 2h\";\n"
    "                  window = \"any\"; }; },\n"
    "  { id = \"t.replied\"; on = [ \"email.replied\" ];\n"
    "    recommend = { channel = \"email\"; touch = \"human_reply\"; window = \"any\"; }; }\n"
    ");\n";

typedef struct fx {
    td_test_world w; /* first: td_test_world_teardown */
    char events[300];
} fx;

static int setup(void **state) {
    fx *f = calloc(1, sizeof *f);
    const char *topics[] = {T_IN, T_OUT, T_DLQ};
    if (!f || td_test_world_start(&f->w, topics, 3, 2) != 0) return -1;
    *state = f;
    snprintf(f->events, sizeof f->events, "%s/events.jsonl", f->w.dir);
    if (td_test_world_rules(&f->w, RULES) != 0) return -1;
    char extra[256];
    snprintf(extra, sizeof extra,
             "timers = { shards = %d; poll_ms = 60000; sweep_ms = 60000; };\n"
             "log = { level = \"info\"; };\n",
             SHARDS);
    return td_test_world_conf(&f->w, GROUP, T_IN, T_OUT, T_DLQ, NULL, NULL, NULL, extra);
}

/* Produces one event of type `type` for prospect pid, dated `at` (an RFC
 * 3339 string), and appends it to the events file (for replay). */
static void produce(fx *f, const char *id, const char *type, const char *pid, const char *at,
                    const char *data) {
    char ev[512];
    int n = snprintf(ev, sizeof ev,
                     "{\"id\":\"%s\",\"type\":\"%s\",\"prospect_id\":\"%s\",\"occurred_at\":"
                     "\"%s\"%s%s}",
                     id, type, pid, at, data ? ",\"data\":" : "", data ? data : "");
    assert_int_equal(td_test_kafka_produce(&f->w.kafka, T_IN, pid, ev, (size_t)n), 0);
    FILE *o = fopen(f->events, "a");
    assert_non_null(o);
    fprintf(o, "%s\n", ev);
    fclose(o);
}

static const char *fmt_time(td_ms t, char *buf) {
    td_time_format(t, buf, TD_TIME_BUF);
    return buf;
}

static long long hget_int(fx *f, const char *pid, const char *field) {
    redisReply *r = td_test_redis_cmd(&f->w.redis, "HGET touchd:p:{%s} %s", pid, field);
    assert_non_null(r);
    long long v = r->type == REDIS_REPLY_STRING ? atoll(r->str) : -1;
    freeReplyObject(r);
    return v;
}

/* ---------------------------------------------------------------- cases */

static void test_time_bounds_dead_letters(void **state) {
    fx *f = *state;
    assert_true(td_test_touchd_run(&f->w.touchd, f->w.conf, f->w.log));
    char ts[TD_TIME_BUF];
    td_ms now = td_test_wall_ms();
    /* rejected: far future, year 1, 401 days old, 6 minutes ahead */
    static const struct {
        const char *pid;
        const char *reason;
    } bad[] = {
        {"p-future", "field occurred_at: more than 5m ahead of the wall clock "
                     "(time.max_future_skew)"},
        {"p-ancient", "field occurred_at: older than time.max_past_age (400d)"},
        {"p-old", "field occurred_at: older than time.max_past_age (400d)"},
        {"p-ahead", "field occurred_at: more than 5m ahead of the wall clock "
                    "(time.max_future_skew)"},
    };
    const char *bad_at[] = {"9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z",
                            fmt_time(now - 401 * TD_DAY, (char[TD_TIME_BUF]){0}),
                            fmt_time(now + 6 * TD_MINUTE, (char[TD_TIME_BUF]){0})};
    for (size_t i = 0; i < 4; i++) {
        char id[32];
        snprintf(id, sizeof id, "e-bad-%zu", i);
        produce(f, id, "email.sent", bad[i].pid, bad_at[i], NULL);
    }
    /* accepted: just inside either bound */
    produce(f, "e-ok-old", "email.sent", "p-ok-old", fmt_time(now - 399 * TD_DAY, ts), NULL);
    produce(f, "e-ok-ahead", "email.sent", "p-ok-ahead", fmt_time(now + 4 * TD_MINUTE, ts), NULL);
    assert_int_equal(td_test_kafka_flush(&f->w.kafka, 10000), 0);

    td_test_reader *d = td_test_reader_new(&f->w.kafka, T_DLQ);
    td_test_reader *r = td_test_reader_new(&f->w.kafka, T_OUT);
    size_t nd = td_test_reader_read(d, 4, 20000);
    size_t nr = td_test_reader_read(r, 2, 20000);
    if (nd != 4 || nr != 2) td_test_dump_log(f->w.log, 40);
    td_test_reader_drain(d, 300);
    td_test_reader_drain(r, 300);
    size_t n;
    const td_test_msg *m = td_test_reader_msgs(d, &n);
    assert_int_equal(n, 4);
    int found[4] = {0};
    for (size_t k = 0; k < n; k++) {
        const char *reason = td_test_msg_header(&m[k], "touchd-reason");
        const char *field = td_test_msg_header(&m[k], "touchd-field");
        assert_non_null(reason);
        assert_non_null(field);
        assert_string_equal(field, "occurred_at");
        for (size_t i = 0; i < 4; i++)
            if (strcmp(m[k].key, bad[i].pid) == 0) {
                assert_string_equal(reason, bad[i].reason);
                /* the original bytes, the value never in the reason */
                assert_non_null(strstr(m[k].val, bad_at[i]));
                assert_null(strstr(reason, bad_at[i]));
                found[i]++;
            }
    }
    for (size_t i = 0; i < 4; i++)
        assert_int_equal(found[i], 1);
    /* nothing of them applied: no state at all */
    for (size_t i = 0; i < 4; i++)
        assert_int_equal(td_test_redis_int(&f->w.redis, "HLEN touchd:p:{%s}", bad[i].pid), 0);
    /* the two inside the bounds are applied and recommended */
    assert_int_equal(hget_int(f, "p-ok-old", "events"), 1);
    assert_int_equal(hget_int(f, "p-ok-ahead", "events"), 1);
    m = td_test_reader_msgs(r, &n);
    assert_int_equal(n, 2);
    for (size_t k = 0; k < n; k++)
        assert_true(strcmp(m[k].key, "p-ok-old") == 0 || strcmp(m[k].key, "p-ok-ahead") == 0);
    td_test_reader_free(d);
    td_test_reader_free(r);

    assert_int_equal(td_test_touchd_stop(&f->w.touchd, SIGTERM, 20000), 0);
    /* counted as dead letters; every offset committed (none is consumed again) */
    assert_int_equal(td_test_progress_value(f->w.log, "dead_letters"), 4);
    assert_int_equal(td_test_progress_value(f->w.log, "applied"), 2);
    int64_t committed[2], end[2];
    assert_int_equal(td_test_kafka_committed(&f->w.kafka, GROUP, T_IN, 2, committed), 0);
    assert_int_equal(td_test_kafka_end_offsets(&f->w.kafka, T_IN, 2, end), 0);
    for (int k = 0; k < 2; k++)
        if (end[k] > 0) assert_int_equal(committed[k], end[k]);
    assert_int_equal(end[0] + end[1], 6);
    assert_int_equal(td_test_count_in_file(f->w.log, "field=occurred_at reason="), 4);
}

/* The recommendations of `touchd replay` over the events file, one JSON
 * object per line, into out[] (at most cap). @returns how many. */
static size_t replay(fx *f, json_t **out, size_t cap) {
    char cmd[1200];
    /* --wall now: lateness judged as the daemon judged it (an event two
     * days old gives late recommendations, kept out of the plan) */
    snprintf(cmd, sizeof cmd, "%s replay --quiet --wall now --rules %s %s", td_test_touchd_path(),
             f->w.rules_dir, f->events);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char line[8192];
    size_t n = 0;
    while (fgets(line, sizeof line, p)) {
        json_t *j = json_loads(line, 0, NULL);
        assert_non_null(j);
        assert_true(n < cap);
        out[n++] = j;
    }
    assert_int_equal(pclose(p), 0);
    return n;
}

/* j without generated_at, as canonical text (caller frees). */
static char *canon(json_t *j) {
    json_t *c = json_deep_copy(j);
    json_object_del(c, "generated_at");
    char *s = json_dumps(c, JSON_SORT_KEYS | JSON_COMPACT);
    json_decref(c);
    return s;
}

static void test_timers_due_before_an_event_fire_first(void **state) {
    fx *f = *state;
    char sent_at[TD_TIME_BUF], reply_at[TD_TIME_BUF];
    td_ms now = td_test_wall_ms() / 1000 * 1000;
    td_ms t_sent = now - 2 * TD_DAY, t_reply = now - TD_MINUTE;
    fmt_time(t_sent, sent_at);
    fmt_time(t_reply, reply_at);
    /* both produced before touchd starts: consumed as a backlog */
    produce(f, "e-1", "email.sent", "p-b", sent_at, NULL);
    produce(f, "e-2", "email.replied", "p-b", reply_at, "{\"sentiment\":\"positive\"}");
    assert_int_equal(td_test_kafka_flush(&f->w.kafka, 10000), 0);
    assert_true(td_test_touchd_run(&f->w.touchd, f->w.conf, f->w.log));

    td_test_reader *r = td_test_reader_new(&f->w.kafka, T_OUT);
    size_t got = td_test_reader_read(r, 4, 20000);
    td_test_reader_drain(r, 500);
    if (got < 4) td_test_dump_log(f->w.log, 40);
    size_t nall;
    const td_test_msg *all = td_test_reader_msgs(r, &nall);
    /* the recommendations, in order; the withdrawals the reply made (of the
     * pending sequence) come right before the reply's recommendation */
    td_test_msg m[8];
    size_t n = 0, nwd = 0;
    for (size_t k = 0; k < nall; k++) {
        const char *kind = td_test_msg_header(&all[k], "touchd-kind");
        assert_non_null(kind);
        if (strcmp(kind, "withdrawal") == 0) {
            json_t *w = json_loads(all[k].val, 0, NULL);
            assert_non_null(w);
            print_message("withdrawal of %s: %s\n", json_string_value(json_object_get(w, "rule")),
                          json_string_value(json_object_get(w, "reason")));
            assert_string_equal(
                json_string_value(json_object_get(json_object_get(w, "trigger"), "event_id")),
                "e-2");
            json_decref(w);
            nwd++;
            continue;
        }
        assert_string_equal(kind, "recommendation");
        if (n < 8) m[n] = all[k];
        n++;
    }
    assert_true(nwd >= 1);
    assert_int_equal(n, 4); /* t.sent, t.zeta, t.alpha, t.replied */

    /* one prospect: one output partition, in publication order */
    const char *order[4] = {"t.sent", "t.zeta", "t.alpha", "t.replied"};
    json_t *j[4];
    for (size_t k = 0; k < n; k++) {
        assert_int_equal(m[k].partition, m[0].partition);
        j[k] = json_loads(m[k].val, 0, NULL);
        assert_non_null(j[k]);
    }
    /* the reader returns a partition's messages in offset order */
    for (size_t k = 1; k < n; k++)
        assert_true(m[k].offset > m[k - 1].offset);
    for (size_t k = 0; k < n; k++)
        assert_string_equal(json_string_value(json_object_get(j[k], "rule")), order[k]);

    td_ms due = t_sent + TD_DAY;
    for (size_t k = 1; k <= 2; k++) {
        json_t *trig = json_object_get(j[k], "trigger");
        assert_string_equal(json_string_value(json_object_get(trig, "type")), "timer");
        assert_string_equal(json_string_value(json_object_get(trig, "armed_by")), "e-1");
        const char *due_s = json_string_value(json_object_get(trig, "due_at"));
        const char *nb_s = json_string_value(json_object_get(j[k], "not_before"));
        td_ms d, nb;
        assert_int_equal(td_time_parse(due_s, strlen(due_s), &d), TD_OK);
        assert_int_equal(td_time_parse(nb_s, strlen(nb_s), &nb), TD_OK);
        assert_int_equal(d, due);
        /* `at = now + 1h` / `now + 2h`, now being the due time, a day ago */
        assert_int_equal(nb, due + (td_ms)k * TD_HOUR);
    }
    const char *rnb = json_string_value(json_object_get(j[3], "not_before"));
    td_ms rnbv;
    assert_int_equal(td_time_parse(rnb, strlen(rnb), &rnbv), TD_OK);
    assert_int_equal(rnbv, t_reply); /* the reply's own time, not the wall clock */

    /* the same output as `touchd replay`, recommendations and withdrawals,
     * in the same order (all but generated_at) */
    json_t *want[12];
    size_t nw = replay(f, want, 12);
    assert_int_equal(nw, nall);
    for (size_t k = 0; k < nw; k++) {
        json_t *d = json_loads(all[k].val, 0, NULL);
        char *a = canon(d), *b = canon(want[k]);
        assert_string_equal(a, b);
        free(a);
        free(b);
        json_decref(d);
        json_decref(want[k]);
    }
    for (size_t k = 0; k < 4; k++)
        json_decref(j[k]);
    td_test_reader_free(r);

    /* fired: gone from the state and from the timer index */
    assert_int_equal(td_test_redis_int(&f->w.redis, "HEXISTS touchd:p:{p-b} timer.t.zeta"), 0);
    assert_int_equal(td_test_redis_int(&f->w.redis, "HEXISTS touchd:p:{p-b} timer.t.alpha"), 0);
    char shard[64];
    td_timers_shard_key("touchd", td_timers_shard("p-b", SHARDS), shard, sizeof shard);
    /* the shard holds only the plan's own timer (the reply's answer is
     * pending: it expires at its expires_at) */
    assert_int_equal(td_test_redis_int(&f->w.redis, "ZCARD %s", shard), 1);
    assert_int_equal(td_test_redis_int(&f->w.redis, "HEXISTS touchd:p:{p-b} timer.~plan"), 1);
    assert_int_equal(td_test_redis_int(&f->w.redis, "ZCARD touchd:t:claimed"), 0);
    assert_int_equal(hget_int(f, "p-b", "events"), 2);

    assert_int_equal(td_test_touchd_stop(&f->w.touchd, SIGTERM, 20000), 0);
    assert_int_equal(td_test_progress_value(f->w.log, "timers_fired"), 2);
    assert_int_equal(td_test_progress_value(f->w.log, "timers_before_events"), 2);
    assert_int_equal(td_test_progress_value(f->w.log, "timers_recs"), 2);
    assert_int_equal(td_test_progress_value(f->w.log, "timers_claimed"), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_time_bounds_dead_letters, setup,
                                        td_test_world_teardown),
        cmocka_unit_test_setup_teardown(test_timers_due_before_an_event_fire_first, setup,
                                        td_test_world_teardown),
    };
    if (getenv("TD_TEST_FILTER")) cmocka_set_test_filter(getenv("TD_TEST_FILTER"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
