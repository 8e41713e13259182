/*
 * test_gift_register.c - the gift register (docs/gifts.md) against real
 * components: a real redis-server (harness.h), the real touchd binary and
 * librdkafka's mock cluster in this process (harness_kafka.h).
 *
 * Cases:
 *  - writer: td_gifts_write appends each record once (a second write of the
 *    same records, as a re-run batch does, adds nothing), the entry's fields,
 *    the seen key's TTL, NOSCRIPT after SCRIPT FLUSH, td_gifts_read/years;
 *  - daemon: gift.sent events in -> register entries (one per event id, a
 *    duplicate id at another offset is not registered), no description
 *    anywhere in Redis, the Kafka register topic carries the records (key =
 *    prospect id); then kill -9 and a re-run of every event as if no state
 *    had been stored (states deleted, a new consumer group): the register
 *    still holds each gift once; `touchd gifts -c` prints the rows and the
 *    totals with the FR tax cap exceeded.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "harness_kafka.h"
#include "td_gifts.h"

#define PARTS 2
#define T_IN "events"
#define T_OUT "recs"
#define T_DLQ "dlq"
#define T_GIFTS "gift-register"

/* Every gift.sent fires one rule; settings give the tax caps and zone. */
static const char RULES[] =
    "settings = { default_timezone = \"Europe/Paris\"; gift_tax_cap_eur = { FR = 73.0; }; };\n"
    "rules = (\n"
    "  { id = \"t.gift\"; doc = \"every gift\"; on = [ \"gift.sent\" ];\n"
    "    recommend = { channel = \"email\"; touch = \"follow_up\"; note = \"thanks\"; }; }\n"
    ");\n";

/* The events: p-fr (FR, Paris) gets 3 gifts, one of them sent twice with the
 * same id; its last gift is on 2026-12-31T23:30Z = 2027 in Paris. p-us gets 1. */
static const char *const EVENTS[][2] = {
    {"p-fr", "{\"id\":\"u-1\",\"type\":\"prospect.updated\",\"prospect_id\":\"p-fr\","
             "\"occurred_at\":\"2026-01-05T10:00:00Z\",\"data\":{\"country\":\"fr\","
             "\"timezone\":\"Europe/Paris\"}}"},
    {"p-fr", "{\"id\":\"g-1\",\"type\":\"gift.sent\",\"prospect_id\":\"p-fr\",\"owner_id\":"
             "\"rep-7\",\"occurred_at\":\"2026-02-10T10:00:00Z\",\"data\":{\"kind\":\"book\","
             "\"value_eur\":24.90,\"items\":1,\"wrapping\":\"blue\","
             "\"description\":\"SECRET-DESCRIPTION\"}}"},
    {"p-fr", "{\"id\":\"g-2\",\"type\":\"gift.sent\",\"prospect_id\":\"p-fr\",\"owner_id\":"
             "\"rep-7\",\"occurred_at\":\"2026-09-10T10:00:00Z\",\"data\":{\"kind\":\"basket\","
             "\"value_eur\":\"55.00\",\"items\":3}}"},
    {"p-fr", "{\"id\":\"g-2\",\"type\":\"gift.sent\",\"prospect_id\":\"p-fr\",\"owner_id\":"
             "\"rep-7\",\"occurred_at\":\"2026-09-10T10:00:00Z\",\"data\":{\"kind\":\"basket\","
             "\"value_eur\":\"55.00\",\"items\":3}}"},
    {"p-fr", "{\"id\":\"g-3\",\"type\":\"gift.sent\",\"prospect_id\":\"p-fr\","
             "\"occurred_at\":\"2026-12-31T23:30:00Z\",\"data\":{\"kind\":\"card\","
             "\"value_eur\":3}}"},
    {"p-us", "{\"id\":\"g-4\",\"type\":\"gift.sent\",\"prospect_id\":\"p-us\",\"owner_id\":"
             "\"rep-1\",\"occurred_at\":\"2026-05-01T12:00:00Z\",\"data\":{\"kind\":\"object\","
             "\"value_eur\":120}}"},
};
#define NEVENTS (sizeof EVENTS / sizeof *EVENTS)

typedef struct fx {
    char dir[256], rules_dir[300], conf[300], log[300];
    td_test_redis redis;
    td_test_kafka kafka;
    td_test_touchd touchd;
} fx;

static int setup(void **state) {
    fx *f = calloc(1, sizeof *f);
    if (!f || td_test_tmpdir(f->dir, sizeof f->dir) != 0) return -1;
    snprintf(f->rules_dir, sizeof f->rules_dir, "%s/rules", f->dir);
    snprintf(f->log, sizeof f->log, "%s/touchd.log", f->dir);
    if (mkdir(f->rules_dir, 0755) != 0) return -1;
    if (td_test_write_file(f->rules_dir, "t.rules", RULES, strlen(RULES), NULL, 0) != 0) return -1;
    if (td_test_redis_start(&f->redis) != 0) return -1;
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fx *f = *state;
    if (!f) return 0;
    if (f->touchd.pid > 0) {
        char cmd[400];
        snprintf(cmd, sizeof cmd, "tail -n 30 %s >&2", f->log);
        if (system(cmd) != 0) fprintf(stderr, "(no log)\n");
        td_test_touchd_kill(&f->touchd);
    }
    if (f->kafka.mc) td_test_kafka_stop(&f->kafka);
    td_test_redis_stop(&f->redis);
    td_test_rmtree(f->dir);
    free(f);
    return 0;
}

static long long redis_int(fx *f, const char *fmt, const char *arg) {
    redisReply *r = td_test_redis_cmd(&f->redis, fmt, arg);
    long long v = -1;
    if (r && r->type == REDIS_REPLY_INTEGER) v = r->integer;
    if (r) freeReplyObject(r);
    return v;
}

/* The value of `field` in entry e of an XRANGE reply, or NULL. */
static const char *entry_field(const redisReply *e, const char *field) {
    const redisReply *fl = e->element[1];
    for (size_t i = 0; i + 1 < fl->elements; i += 2)
        if (strcmp(fl->element[i]->str, field) == 0) return fl->element[i + 1]->str;
    return NULL;
}

/* ------------------------------------------------------------- writer */

static void rec(td_gift_rec *r, const char *id, const char *pid, int year, td_dec v) {
    memset(r, 0, sizeof *r);
    snprintf(r->event_id, sizeof r->event_id, "%s", id);
    snprintf(r->prospect_id, sizeof r->prospect_id, "%s", pid);
    snprintf(r->owner_id, sizeof r->owner_id, "rep-1");
    assert_int_equal(td_time_parse("2026-03-01T09:00:00Z", 20, &r->occurred_at), TD_OK);
    r->year = year;
    r->kind = TD_GK_BOOK;
    r->value_eur = v;
    r->items = 2;
    snprintf(r->wrapping, sizeof r->wrapping, "red");
}

static void test_writer_exactly_once(void **state) {
    fx *f = *state;
    td_redis_conf rc;
    td_redis_conf_default(&rc);
    rc.host = f->redis.host;
    rc.port = f->redis.port;
    char err[300];
    td_gifts *g = td_gifts_new(&rc, 30, err, sizeof err);
    assert_non_null(g);
    td_gift_rec recs[3];
    rec(&recs[0], "w-1", "p-a", 2026, 249000);
    rec(&recs[1], "w-2", "p-b", 2026, 730000);
    rec(&recs[2], "w-3", "p-a", 2025, 10000);
    size_t added = 99;
    assert_int_equal(td_gifts_write(g, recs, 3, &added), TD_OK);
    assert_int_equal(added, 3);
    /* a re-run batch writes the same records again: nothing is added */
    assert_int_equal(td_gifts_write(g, recs, 3, &added), TD_OK);
    assert_int_equal(added, 0);
    assert_int_equal(redis_int(f, "XLEN %s", "touchd:gifts:2026"), 2);
    assert_int_equal(redis_int(f, "XLEN %s", "touchd:gifts:2025"), 1);
    long long ttl = redis_int(f, "TTL %s", "touchd:gifts:seen:w-1");
    assert_true(ttl > 29 * 86400 && ttl <= 30 * 86400);

    redisReply *r = td_test_redis_cmd(&f->redis, "XRANGE touchd:gifts:2026 - +");
    assert_non_null(r);
    assert_int_equal(r->elements, 2);
    const redisReply *e = r->element[0];
    assert_string_equal(entry_field(e, "event_id"), "w-1");
    assert_string_equal(entry_field(e, "prospect_id"), "p-a");
    assert_string_equal(entry_field(e, "owner_id"), "rep-1");
    assert_string_equal(entry_field(e, "occurred_at"), "2026-03-01T09:00:00Z");
    assert_string_equal(entry_field(e, "kind"), "book");
    assert_string_equal(entry_field(e, "value_eur"), "24.9");
    assert_string_equal(entry_field(e, "items"), "2");
    assert_string_equal(entry_field(e, "wrapping"), "red");
    assert_null(entry_field(e, "description"));
    assert_int_equal(e->element[1]->elements, 16); /* exactly the 8 fields */
    freeReplyObject(r);

    /* the server forgot the script: NOSCRIPT, re-load, the write goes on */
    r = td_test_redis_cmd(&f->redis, "SCRIPT FLUSH");
    freeReplyObject(r);
    td_gift_rec more[2];
    rec(&more[0], "w-1", "p-a", 2026, 249000); /* registered before */
    rec(&more[1], "w-4", "p-c", 2026, 5000);
    assert_int_equal(td_gifts_write(g, more, 2, &added), TD_OK);
    assert_int_equal(added, 1);
    assert_int_equal(redis_int(f, "XLEN %s", "touchd:gifts:2026"), 3);

    /* the connection was killed: the next write reconnects at once */
    r = td_test_redis_cmd(&f->redis, "CLIENT KILL TYPE normal SKIPME yes");
    freeReplyObject(r);
    rec(&more[0], "w-5", "p-c", 2026, 5000);
    assert_int_equal(td_gifts_write(g, more, 1, &added), TD_OK);
    assert_int_equal(added, 1);

    /* read back */
    int years[8];
    assert_int_equal(td_gifts_years(g, years, 8), 2);
    assert_int_equal(years[0], 2025);
    assert_int_equal(years[1], 2026);
    td_gift_rec *out = NULL;
    size_t n = 0, cap = 0;
    assert_int_equal(td_gifts_read(g, 2026, "p-a", &out, &n, &cap), TD_OK);
    assert_int_equal(n, 1);
    assert_string_equal(out[0].event_id, "w-1");
    assert_int_equal(out[0].value_eur, 249000);
    assert_int_equal(out[0].items, 2);
    assert_int_equal(out[0].kind, TD_GK_BOOK);
    assert_int_equal(out[0].year, 2026);
    assert_int_equal(td_gifts_read(g, 2026, NULL, &out, &n, &cap), TD_OK);
    assert_int_equal(n, 1 + 4);
    free(out);
    td_gifts_free(g);
}

static void test_dec_format(void **state) {
    (void)state;
    char b[40];
    td_gift_dec_format(249000, b, sizeof b);
    assert_string_equal(b, "24.9");
    td_gift_dec_format(730000, b, sizeof b);
    assert_string_equal(b, "73");
    td_gift_dec_format(25, b, sizeof b);
    assert_string_equal(b, "0.0025");
    td_dec d;
    assert_int_equal(td_gift_dec_parse("24.90", 5, &d), TD_OK);
    assert_int_equal(d, 249000);
    assert_int_equal(td_gift_dec_parse("7,3", 3, &d), TD_ERR);
    assert_int_equal(td_gift_dec_parse("1.23456", 7, &d), TD_ERR);
}

/* ------------------------------------------------------------- daemon */

static void write_config(fx *f, const char *group) {
    char text[2048];
    int n = snprintf(text, sizeof text,
                     "kafka = {\n"
                     "  brokers = \"%s\";\n"
                     "  group_id = \"%s\";\n"
                     "  input_topics = [ \"" T_IN "\" ];\n"
                     "  output_topic = \"" T_OUT "\";\n"
                     "  dead_letter_topic = \"" T_DLQ "\";\n"
                     "  gift_register_topic = \"" T_GIFTS "\";\n"
                     "  consumer = { fetch_wait_max_ms = 5; session_timeout_ms = 6000;\n"
                     "               heartbeat_interval_ms = 500; };\n"
                     "  producer = { linger_ms = 0; };\n"
                     "};\n"
                     "redis = { host = \"127.0.0.1\"; port = %d; backoff_min_ms = 20;\n"
                     "          backoff_max_ms = 200; command_timeout_ms = 1000;\n"
                     "          connect_timeout_ms = 500; };\n"
                     "rules = { dir = \"%s\"; reload_poll_ms = 0; };\n"
                     "gifts = { retention_days = 30; };\n"
                     /* the events have fixed dates around the year 2026, one
                      * of them ahead of today: the time bounds are wide */
                     "time = { max_future_skew = \"36500d\"; max_past_age = \"36500d\"; };\n"
                     "log = { level = \"debug\"; };\n",
                     f->kafka.bootstraps, group, f->redis.port, f->rules_dir);
    assert_int_equal(
        td_test_write_file(f->dir, "touchd.conf", text, (size_t)n, f->conf, sizeof f->conf), 0);
}

static bool wait_xlen(fx *f, const char *key, long long want, int timeout_ms) {
    int64_t end = td_test_now_ms() + timeout_ms;
    long long v = -1;
    while (td_test_now_ms() < end) {
        v = redis_int(f, "XLEN %s", key);
        if (v == want) return true;
        td_test_sleep_ms(100);
    }
    fprintf(stderr, "%s: XLEN %lld, want %lld\n", key, v, want);
    return false;
}

static void produce_all(fx *f) {
    for (size_t i = 0; i < NEVENTS; i++)
        assert_int_equal(td_test_kafka_produce(&f->kafka, T_IN, EVENTS[i][0], EVENTS[i][1],
                                               strlen(EVENTS[i][1])),
                         0);
    assert_int_equal(td_test_kafka_flush(&f->kafka, 5000), 0);
}

/* Runs `touchd gifts ARGS` and returns its stdout (malloc'ed). */
static char *run_gifts(const char *args, int *status) {
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "%s gifts %s 2>&1", td_test_touchd_path(), args);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t cap = 65536, n = 0;
    char *out = calloc(1, cap);
    size_t k;
    while ((k = fread(out + n, 1, cap - 1 - n, p)) > 0)
        n += k;
    *status = pclose(p);
    return out;
}

static void assert_register(fx *f) {
    assert_true(wait_xlen(f, "touchd:gifts:2026", 3, 20000));
    assert_true(wait_xlen(f, "touchd:gifts:2027", 1, 5000));
    redisReply *r = td_test_redis_cmd(&f->redis, "XRANGE touchd:gifts:2026 - +");
    assert_non_null(r);
    assert_int_equal(r->elements, 3);
    int seen = 0;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        const char *id = entry_field(e, "event_id");
        assert_null(entry_field(e, "description"));
        if (strcmp(id, "g-1") == 0) {
            seen |= 1;
            assert_string_equal(entry_field(e, "prospect_id"), "p-fr");
            assert_string_equal(entry_field(e, "owner_id"), "rep-7");
            assert_string_equal(entry_field(e, "occurred_at"), "2026-02-10T10:00:00Z");
            assert_string_equal(entry_field(e, "kind"), "book");
            assert_string_equal(entry_field(e, "value_eur"), "24.9");
            assert_string_equal(entry_field(e, "items"), "1");
            assert_string_equal(entry_field(e, "wrapping"), "blue");
        } else if (strcmp(id, "g-2") == 0) {
            seen |= 2;
            assert_string_equal(entry_field(e, "value_eur"), "55");
        } else if (strcmp(id, "g-4") == 0) {
            seen |= 4;
            assert_string_equal(entry_field(e, "prospect_id"), "p-us");
        }
    }
    assert_int_equal(seen, 7);
    freeReplyObject(r);
    /* the late-December gift is in the prospect's local year (Paris: 2027) */
    r = td_test_redis_cmd(&f->redis, "XRANGE touchd:gifts:2027 - +");
    assert_string_equal(entry_field(r->element[0], "event_id"), "g-3");
    assert_string_equal(entry_field(r->element[0], "owner_id"), "rep-7"); /* from the state */
    freeReplyObject(r);
}

static bool has_bytes(const char *p, size_t n, const char *needle) {
    size_t k = strlen(needle);
    for (size_t i = 0; i + k <= n; i++)
        if (memcmp(p + i, needle, k) == 0) return true;
    return false;
}

static void assert_no_description_in_redis(fx *f) {
    redisReply *keys = td_test_redis_cmd(&f->redis, "KEYS *");
    assert_non_null(keys);
    for (size_t i = 0; i < keys->elements; i++) {
        redisReply *d = td_test_redis_cmd(&f->redis, "DUMP %s", keys->element[i]->str);
        assert_non_null(d);
        if (d->type == REDIS_REPLY_STRING) assert_false(has_bytes(d->str, d->len, "SECRET"));
        freeReplyObject(d);
    }
    freeReplyObject(keys);
}

static void test_daemon_register(void **state) {
    fx *f = *state;
    const char *topics[] = {T_IN, T_OUT, T_DLQ, T_GIFTS};
    assert_int_equal(td_test_kafka_start(&f->kafka, topics, 4, PARTS), 0);
    write_config(f, "g1");
    produce_all(f);
    assert_int_equal(td_test_touchd_start(&f->touchd, f->conf, f->log), 0);
    assert_register(f);
    assert_no_description_in_redis(f);

    /* the Kafka register topic: one record per registered gift, key = prospect */
    td_test_reader *rd = td_test_reader_new(&f->kafka, T_GIFTS);
    assert_true(td_test_reader_read(rd, 4, 10000) >= 4);
    td_test_reader_drain(rd, 500);
    size_t n;
    const td_test_msg *m = td_test_reader_msgs(rd, &n);
    assert_int_equal(n, 4); /* g-2's duplicate (same id, another offset) not registered */
    int g2 = 0;
    for (size_t i = 0; i < n; i++) {
        assert_null(strstr(m[i].val, "SECRET"));
        assert_non_null(strstr(m[i].val, "\"prospect_id\":\""));
        char want[64];
        snprintf(want, sizeof want, "\"prospect_id\":\"%s\"", m[i].key);
        assert_non_null(strstr(m[i].val, want));
        if (strstr(m[i].val, "\"event_id\":\"g-1\""))
            assert_non_null(strstr(m[i].val, "\"kind\":\"book\",\"value_eur\":\"24.9\","
                                             "\"items\":1,\"wrapping\":\"blue\""));
        g2 += strstr(m[i].val, "\"event_id\":\"g-2\"") != NULL;
    }
    assert_int_equal(g2, 1);
    td_test_reader_free(rd);

    /* kill -9, then re-run every event as if no state had been stored (the
     * crash window between the register write and the state store): states
     * deleted, a new consumer group re-consumes from the beginning. */
    td_test_touchd_kill(&f->touchd);
    redisReply *r = td_test_redis_cmd(&f->redis, "DEL touchd:p:{p-fr} touchd:p:{p-us}");
    assert_int_equal(r->integer, 2);
    freeReplyObject(r);
    write_config(f, "g2");
    assert_int_equal(td_test_touchd_start(&f->touchd, f->conf, f->log), 0);
    /* wait until the events were applied again (the states are back) */
    int64_t end = td_test_now_ms() + 20000;
    long long ex = 0;
    while (td_test_now_ms() < end && (ex = redis_int(f, "EXISTS %s", "touchd:p:{p-us}")) != 1)
        td_test_sleep_ms(100);
    assert_int_equal(ex, 1);
    td_test_sleep_ms(500);
    assert_register(f); /* still 3 + 1: nothing registered twice */
    assert_true(td_test_wait_file(f->log, "gift register written", 2, 5000));
    assert_int_equal(td_test_touchd_stop(&f->touchd, SIGTERM, 15000), 0);
    assert_true(td_test_wait_file(f->log, "already_registered=4", 1, 1000));

    /* `touchd gifts` on this Redis */
    char args[600];
    int st;
    snprintf(args, sizeof args, "-c %s --year 2026", f->conf);
    char *out = run_gifts(args, &st);
    fprintf(stderr, "%s", out);
    assert_int_equal(st, 0);
    assert_non_null(strstr(out, "2026-02-10T10:00:00Z  p-fr      rep-7  book    24.9       1      "
                                "blue      g-1\n"));
    assert_non_null(strstr(out, "2026  p-fr          2          79.9  FR                73  "
                                "EXCEEDED\n"));
    assert_non_null(strstr(out, "2026  p-us          1           120  -                  -  "
                                "no cap\n"));
    assert_non_null(strstr(out, "3 gifts, 2 prospect-years\n"));
    assert_null(strstr(out, "SECRET"));
    free(out);
    snprintf(args, sizeof args, "-c %s --prospect p-fr --json", f->conf);
    out = run_gifts(args, &st);
    assert_int_equal(st, 0);
    assert_non_null(strstr(out, "{\"prospect_id\":\"p-fr\",\"year\":2027,\"count\":1,"
                                "\"spend_eur\":\"3\",\"country\":\"FR\",\"tax_cap_eur\":\"73\","
                                "\"cap_exceeded\":false}"));
    assert_null(strstr(out, "p-us"));
    free(out);
    /* Redis gone: exit 4 */
    snprintf(args, sizeof args, "-c %s --redis 127.0.0.1:1", f->conf);
    out = run_gifts(args, &st);
    assert_int_equal(WEXITSTATUS(st), 4);
    free(out);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dec_format),
        cmocka_unit_test_setup_teardown(test_writer_exactly_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_daemon_register, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
