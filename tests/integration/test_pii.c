/*
 * test_pii.c - no personal data from bad input (issue 18, item 6), through
 * the real touchd binary ($TD_TOUCHD) as a child process, a real
 * redis-server and librdkafka's mock cluster in THIS process
 * (harness_kafka.h).
 *
 * touchd (log level debug: every line it can write) is fed
 *   - every invalid event of tests/pii_cases.h (an email, a phone number
 *     or a name planted in every kind of invalid field), each with the
 *     email as its Kafka key;
 *   - a feedback event naming an email as its recommendation_id (valid
 *     JSON, rejected by the engine: not a recommendation of the prospect);
 *   - an event dated 9999 (outside the time bounds) with a name in it;
 *   - two valid events with personal data where touchd must ignore it:
 *     unknown keys (top level, data, nested), and a gift's description.
 *
 * Then:
 *   - every invalid one is on the dead-letter topic, once, as it came (its
 *     bytes and key), with the touchd-field and touchd-reason it must have
 *     (printable ASCII, no piece of any planted value) and a log line;
 *   - the valid ones were applied (their states exist, recommendations
 *     were published);
 *   - no piece of any planted value anywhere else: not in the daemon's log
 *     (all of it printable ASCII), not in any dead-letter header, not on
 *     the output topic (keys, values, headers), not in Redis (every key's
 *     name, its DUMP with compression off, and its contents read by type).
 */
#include <ctype.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "harness_kafka.h"
#include "pii_cases.h"
#include "td_time.h"

#define T_IN "events"
#define T_OUT "recs"
#define T_DLQ "dlq"
#define GROUP "touchd-pii"

static const char RULES[] =
    "settings = { quiet_start_hour = 0; quiet_end_hour = 0; };\n"
    "rules = (\n"
    "  { id = \"t.sent\"; on = [ \"email.sent\" ];\n"
    "    recommend = { channel = \"email\"; touch = \"follow_up\"; window = \"any\"; }; },\n"
    "  { id = \"t.gift\"; on = [ \"gift.sent\" ];\n"
    "    recommend = { channel = \"email\"; touch = \"value_insight\"; window = \"any\"; }; }\n"
    ");\n";

typedef struct fx {
    td_test_world w; /* first: td_test_world_teardown */
} fx;

static int setup(void **state) {
    fx *f = calloc(1, sizeof *f);
    const char *topics[] = {T_IN, T_OUT, T_DLQ};
    if (!f || td_test_world_start(&f->w, topics, 3, 2) != 0) return -1;
    *state = f;
    if (td_test_world_rules(&f->w, RULES) != 0) return -1;
    return td_test_world_conf(&f->w, GROUP, T_IN, T_OUT, T_DLQ, NULL, NULL, "verify_writes = true;",
                              "timers = { poll_ms = 60000; sweep_ms = 60000; };\n"
                              "log = { level = \"debug\"; };");
}

/* ---- looking for the planted values ---- */

/* Where the n bytes at s hold a planted piece (TD_PII_PIECES, lower case),
 * case-insensitively: its offset (and *piece), or -1. */
static long pii_at(const char *s, size_t n, const char **piece) {
    static const char *const pieces[] = TD_PII_PIECES;
    for (size_t p = 0; p < sizeof pieces / sizeof pieces[0]; p++) {
        size_t m = strlen(pieces[p]);
        for (size_t i = 0; i + m <= n; i++) {
            size_t k = 0;
            while (k < m && tolower((unsigned char)s[i + k]) == pieces[p][k])
                k++;
            if (k == m) {
                *piece = pieces[p];
                return (long)i;
            }
        }
    }
    return -1;
}

static void assert_no_pii(const char *where, const char *s, size_t n) {
    const char *piece;
    long at = s ? pii_at(s, n, &piece) : -1;
    if (at < 0) return;
    long from = at > 120 ? at - 120 : 0;
    fail_msg("%s holds '%s' at byte %ld: ...%.240s", where, piece, at, s + from);
}

static bool printable(const char *s) {
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e) return false;
    return true;
}

/* Every Redis key: its name, its DUMP (compression off, so strings are
 * verbatim in it), and its contents read by type. @returns the keys. */
static size_t redis_no_pii(td_test_redis *r) {
    redisReply *ok = td_test_redis_cmd(r, "CONFIG SET rdbcompression no");
    assert_non_null(ok);
    assert_int_equal(ok->type, REDIS_REPLY_STATUS);
    freeReplyObject(ok);
    redisReply *keys = td_test_redis_cmd(r, "KEYS *");
    assert_non_null(keys);
    assert_int_equal(keys->type, REDIS_REPLY_ARRAY);
    for (size_t i = 0; i < keys->elements; i++) {
        const redisReply *k = keys->element[i];
        assert_no_pii("a redis key", k->str, k->len);
        redisReply *d = td_test_redis_cmd(r, "DUMP %b", k->str, k->len);
        assert_non_null(d);
        assert_int_equal(d->type, REDIS_REPLY_STRING);
        assert_no_pii("a redis DUMP", d->str, d->len);
        freeReplyObject(d);
        redisReply *t = td_test_redis_cmd(r, "TYPE %b", k->str, k->len);
        assert_non_null(t);
        const char *cmd = strcmp(t->str, "hash") == 0     ? "HGETALL %b"
                          : strcmp(t->str, "zset") == 0   ? "ZRANGE %b 0 -1"
                          : strcmp(t->str, "set") == 0    ? "SMEMBERS %b"
                          : strcmp(t->str, "list") == 0   ? "LRANGE %b 0 -1"
                          : strcmp(t->str, "stream") == 0 ? "XRANGE %b - +"
                                                          : "GET %b";
        freeReplyObject(t);
        redisReply *v = td_test_redis_cmd(r, cmd, k->str, k->len);
        assert_non_null(v);
        if (v->type == REDIS_REPLY_STRING) assert_no_pii("a redis string", v->str, v->len);
        for (size_t e = 0; v->type == REDIS_REPLY_ARRAY && e < v->elements; e++)
            if (v->element[e]->type == REDIS_REPLY_STRING)
                assert_no_pii("a redis value", v->element[e]->str, v->element[e]->len);
        freeReplyObject(v);
    }
    size_t n = keys->elements;
    freeReplyObject(keys);
    return n;
}

static char *read_all(const char *path, size_t *n) {
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    fseek(fp, 0, SEEK_END);
    long sz = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    char *buf = malloc((size_t)sz + 1);
    assert_non_null(buf);
    *n = fread(buf, 1, (size_t)sz, fp);
    buf[*n] = '\0';
    fclose(fp);
    return buf;
}

/* ---------------------------------------------------------------- cases */

/* The dead letters beyond the decoder's (pii_cases.h): rejected by the
 * engine and by the time bounds. Their messages are built at run time. */
#define N_EXTRA 2

static void test_no_personal_data_from_bad_input(void **state) {
    fx *f = *state;
    assert_true(td_test_touchd_run(&f->w.touchd, f->w.conf, f->w.log));
    td_test_kafka *k = &f->w.kafka;
    char now[TD_TIME_BUF], msg[1024];
    td_time_format(td_test_wall_ms(), now, sizeof now);

    /* valid, with personal data in what touchd ignores */
    int n = snprintf(msg, sizeof msg,
                     "{\"id\":\"e-ok-1\",\"type\":\"email.sent\",\"prospect_id\":\"p-ok-1\","
                     "\"occurred_at\":\"%s\",\"contact_email\":\"" PII_EMAIL "\","
                     "\"data\":{\"message_id\":\"m-1\",\"" PII_EMAIL "\":\"" PII_NAME "\","
                     "\"notes\":{\"contact\":{\"" PII_EMAIL "\":\"" PII_PHONE "\"}},"
                     "\"crm\":[\"" PII_NAME "\"]}}",
                     now);
    assert_int_equal(td_test_kafka_produce(k, T_IN, "p-ok-1", msg, (size_t)n), 0);
    n = snprintf(msg, sizeof msg,
                 "{\"id\":\"e-ok-2\",\"type\":\"gift.sent\",\"prospect_id\":\"p-ok-2\","
                 "\"occurred_at\":\"%s\",\"data\":{\"kind\":\"book\",\"value_eur\":20,"
                 "\"description\":\"For " PII_NAME ", " PII_PHONE "\"}}",
                 now);
    assert_int_equal(td_test_kafka_produce(k, T_IN, "p-ok-2", msg, (size_t)n), 0);
    /* invalid: the decoder's cases */
    for (size_t i = 0; i < TD_PII_NCASES; i++)
        assert_int_equal(
            td_test_kafka_produce(k, T_IN, PII_EMAIL, td_pii_cases[i].msg, td_pii_cases[i].len), 0);
    /* invalid: feedback naming an email as the recommendation (after
     * p-ok-1's event: same key, same partition), and a time out of bounds */
    char extra[N_EXTRA][1024];
    size_t extra_len[N_EXTRA];
    const char *extra_field[N_EXTRA] = {"data.recommendation_id", "occurred_at"};
    const char *extra_reason[N_EXTRA] = {"is not a recommendation touchd published",
                                         "more than 5m ahead of the wall clock"};
    extra_len[0] = (size_t)snprintf(
        extra[0], sizeof extra[0],
        "{\"id\":\"e-fb-1\",\"type\":\"recommendation.acted\",\"prospect_id\":\"p-ok-1\","
        "\"occurred_at\":\"%s\",\"data\":{\"recommendation_id\":\"" PII_EMAIL "\"}}",
        now);
    extra_len[1] = (size_t)snprintf(
        extra[1], sizeof extra[1],
        "{\"id\":\"e-far\",\"type\":\"email.sent\",\"prospect_id\":\"p-far\","
        "\"occurred_at\":\"9999-12-31T23:59:59Z\",\"data\":{\"to\":\"" PII_NAME "\"}}");
    assert_int_equal(td_test_kafka_produce(k, T_IN, "p-ok-1", extra[0], extra_len[0]), 0);
    assert_int_equal(td_test_kafka_produce(k, T_IN, "p-far", extra[1], extra_len[1]), 0);
    assert_int_equal(td_test_kafka_flush(k, 10000), 0);

    size_t ndead = TD_PII_NCASES + N_EXTRA;
    td_test_reader *d = td_test_reader_new(k, T_DLQ);
    td_test_reader *o = td_test_reader_new(k, T_OUT);
    size_t nd = td_test_reader_read(d, ndead, 20000);
    size_t no = td_test_reader_read(o, 2, 20000);
    if (nd != ndead || no < 2) td_test_dump_log(f->w.log, 60);
    td_test_reader_drain(d, 300);
    td_test_reader_drain(o, 300);
    assert_int_equal(td_test_touchd_stop(&f->w.touchd, SIGTERM, 15000), 0);

    /* every invalid event on the dead-letter topic, once, as it came, with
     * the field and reason it must have; headers without personal data */
    size_t nm;
    const td_test_msg *m = td_test_reader_msgs(d, &nm);
    assert_int_equal(nm, ndead);
    int seen[TD_PII_NCASES + N_EXTRA] = {0};
    for (size_t j = 0; j < nm; j++) {
        const char *field = td_test_msg_header(&m[j], "touchd-field");
        const char *reason = td_test_msg_header(&m[j], "touchd-reason");
        assert_non_null(field);
        assert_non_null(reason);
        for (size_t h = 0; h < m[j].nheaders; h++) {
            assert_no_pii("a dead-letter header", m[j].hval[h], strlen(m[j].hval[h]));
            assert_true(printable(m[j].hval[h]));
        }
        size_t c = 0;
        for (; c < ndead; c++) {
            const char *cm = c < TD_PII_NCASES ? td_pii_cases[c].msg : extra[c - TD_PII_NCASES];
            size_t cl = c < TD_PII_NCASES ? td_pii_cases[c].len : extra_len[c - TD_PII_NCASES];
            if (m[j].vlen == cl && memcmp(m[j].val, cm, cl) == 0) break;
        }
        if (c == ndead) fail_msg("a dead letter that was not sent: %.200s", m[j].val);
        const char *want_field =
            c < TD_PII_NCASES ? td_pii_cases[c].field : extra_field[c - TD_PII_NCASES];
        const char *want_reason =
            c < TD_PII_NCASES ? td_pii_cases[c].reason : extra_reason[c - TD_PII_NCASES];
        if (strcmp(field, want_field) != 0 || strstr(reason, want_reason) == NULL)
            fail_msg("dead letter %zu: field '%s' reason '%s', want '%s' ~'%s'", c, field, reason,
                     want_field, want_reason);
        assert_non_null(m[j].key);
        assert_string_equal(m[j].key, c < TD_PII_NCASES    ? PII_EMAIL
                                      : c == TD_PII_NCASES ? "p-ok-1"
                                                           : "p-far");
        seen[c]++;
    }
    for (size_t c = 0; c < ndead; c++)
        if (seen[c] != 1)
            fail_msg("case %zu (%s) on the dead-letter topic %d times", c,
                     c < TD_PII_NCASES ? td_pii_cases[c].what : extra_field[c - TD_PII_NCASES],
                     seen[c]);

    /* the valid events were applied and recommended on */
    assert_int_equal(td_test_redis_int(&f->w.redis, "HEXISTS touchd:p:{p-ok-1} events"), 1);
    assert_int_equal(td_test_redis_int(&f->w.redis, "HEXISTS touchd:p:{p-ok-2} events"), 1);
    m = td_test_reader_msgs(o, &nm);
    assert_true(nm >= 2);
    for (size_t j = 0; j < nm; j++) {
        assert_no_pii("an output message", m[j].val, m[j].vlen);
        if (m[j].key) assert_no_pii("an output key", m[j].key, strlen(m[j].key));
        for (size_t h = 0; h < m[j].nheaders; h++)
            assert_no_pii("an output header", m[j].hval[h], strlen(m[j].hval[h]));
    }

    /* Redis: the valid prospects' keys, none of the invalid ones, nothing
     * planted anywhere */
    assert_int_equal(td_test_redis_int(&f->w.redis, "EXISTS touchd:p:{p-pii}"), 0);
    assert_int_equal(td_test_redis_int(&f->w.redis, "EXISTS touchd:p:{p-far}"), 0);
    assert_true(redis_no_pii(&f->w.redis) >= 2);

    /* the log: one line per dead letter, printable ASCII, nothing planted */
    size_t len;
    char *log = read_all(f->w.log, &len);
    assert_int_equal(td_test_count_in_file(f->w.log, "msg=\"event rejected to dead-letter topic\""),
                     (int)ndead);
    assert_non_null(strstr(log, " field=data.consent[#3] "));
    assert_non_null(strstr(log, " field=data.recommendation_id "));
    assert_non_null(strstr(log, "msg=\"batch done\"")); /* debug lines were on */
    for (size_t i = 0; i < len; i++)
        if (log[i] != '\n' && ((unsigned char)log[i] < 0x20 || (unsigned char)log[i] > 0x7e))
            fail_msg("log byte 0x%02x at %zu", (unsigned char)log[i], i);
    assert_no_pii("the log", log, len);
    free(log);
    assert_int_equal(td_test_progress_value(f->w.log, "dead_letters"), (long long)ndead);
    assert_int_equal(td_test_progress_value(f->w.log, "applied"), 2);
    assert_int_equal(td_test_progress_value(f->w.log, "verify_mismatches"), 0);
    td_test_reader_free(d);
    td_test_reader_free(o);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_no_personal_data_from_bad_input, setup,
                                        td_test_world_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
