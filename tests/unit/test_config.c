/*
 * test_config.c - the table of config keys (td_config_keys) and what is made
 * from it: docs/config.md documents exactly its keys, the defaults and the
 * "allowed here" lists of unknown keys come from it.
 *
 * How a key is recognised in docs/config.md: under a heading "## `SECTION`",
 * each row of a table whose header row starts "| key |" documents the key
 * SECTION.NAME, NAME being the backticked first cell (| `host` | ...).
 * Other tables (librdkafka properties touchd sets) do not count.
 *
 * The default cell of each row must show the table's default (ints, bools,
 * enums, strings, the topic list, durations written as text;
 * kafka.shadow_topic's is computed at load).
 *
 * Environment: TD_SOURCE_DIR (set by ctest; else the current directory).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "td_config.h"
#include "td_time.h"

#define MAX_DOC_KEYS 256

typedef struct doc_keys {
    char *key[MAX_DOC_KEYS];
    char *def[MAX_DOC_KEYS]; /* the default cell, trimmed */
    int line[MAX_DOC_KEYS];
    size_t n;
} doc_keys;

/* Reads the documented keys of docs/config.md into d (fails the test when
 * the file cannot be read). */
static void doc_read(doc_keys *d) {
    const char *src = getenv("TD_SOURCE_DIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/docs/config.md", src && *src ? src : ".");
    FILE *f = fopen(path, "r");
    if (!f) fail_msg("cannot read %s (set TD_SOURCE_DIR)", path);
    char line[8192], sect[64] = "";
    bool in_keys = false, in_table = false;
    int no = 0;
    d->n = 0;
    while (fgets(line, sizeof line, f)) {
        no++;
        if (strncmp(line, "## ", 3) == 0) {
            sect[0] = '\0';
            /* "## `redis`" names a section; any other heading ends it */
            const char *b = line + 3, *e;
            if (*b == '`' && (e = strchr(b + 1, '`')) && (size_t)(e - b - 1) < sizeof sect) {
                memcpy(sect, b + 1, (size_t)(e - b - 1));
                sect[e - b - 1] = '\0';
            }
            in_table = in_keys = false;
            continue;
        }
        if (line[0] != '|') {
            in_table = in_keys = false;
            continue;
        }
        if (!in_table) { /* a header row */
            in_table = true;
            in_keys = *sect && strncmp(line, "| key |", 7) == 0;
            continue;
        }
        if (!in_keys || strncmp(line, "|---", 4) == 0) continue;
        const char *b = line + 1;
        while (*b == ' ')
            b++;
        const char *e = *b == '`' ? strchr(b + 1, '`') : NULL;
        if (!e) fail_msg("%s:%d: a row of a key table without a `key` first: %s", path, no, line);
        if (d->n == MAX_DOC_KEYS) fail_msg("%s: more than %d keys", path, MAX_DOC_KEYS);
        size_t n = strlen(sect) + 1 + (size_t)(e - b - 1) + 1;
        char *k = malloc(n);
        assert_non_null(k);
        snprintf(k, n, "%s.%.*s", sect, (int)(e - b - 1), b + 1);
        /* the third cell: | `key` | type | default | ... */
        const char *c = strchr(e, '|');
        c = c ? strchr(c + 1, '|') : NULL;
        const char *ce = c ? strchr(c + 1, '|') : NULL;
        if (!ce) fail_msg("%s:%d: a row of a key table without a default cell", path, no);
        c++;
        while (*c == ' ')
            c++;
        while (ce > c && ce[-1] == ' ')
            ce--;
        d->def[d->n] = strndup(c, (size_t)(ce - c));
        assert_non_null(d->def[d->n]);
        d->line[d->n] = no;
        d->key[d->n++] = k;
    }
    fclose(f);
}

static void doc_free(doc_keys *d) {
    for (size_t i = 0; i < d->n; i++) {
        free(d->key[i]);
        free(d->def[i]);
    }
}

static void test_docs_list_exactly_the_keys(void **state) {
    (void)state;
    doc_keys d;
    doc_read(&d);
    size_t n;
    const td_config_key *k = td_config_keys(&n);
    assert_true(n > 40);
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        size_t j = 0;
        while (j < d.n && strcmp(d.key[j], k[i].path) != 0)
            j++;
        if (j == d.n) {
            fprintf(stderr, "docs/config.md does not document config key %s\n", k[i].path);
            bad++;
        }
    }
    for (size_t j = 0; j < d.n; j++) {
        size_t i = 0;
        while (i < n && strcmp(d.key[j], k[i].path) != 0)
            i++;
        if (i == n) {
            fprintf(stderr, "docs/config.md:%d: documents %s, which is not a config key\n",
                    d.line[j], d.key[j]);
            bad++;
        }
        for (size_t m = 0; m < j; m++)
            if (strcmp(d.key[m], d.key[j]) == 0) {
                fprintf(stderr, "docs/config.md:%d: documents %s twice\n", d.line[j], d.key[j]);
                bad++;
            }
    }
    doc_free(&d);
    assert_int_equal(bad, 0);
}

/* Every row is well formed: "section.key", a description, a field. */
/* The default a doc row should show for key k ("" when not checked). */
static void doc_default_of(const td_config_key *k, char *buf, size_t cap) {
    buf[0] = '\0';
    switch (k->type) {
    case TD_CFG_INT:
        snprintf(buf, cap, "`%lld`", k->def_int);
        break;
    case TD_CFG_BOOL:
        snprintf(buf, cap, "`%s`", k->def_int ? "true" : "false");
        break;
    case TD_CFG_ENUM:
        for (const td_config_enum *e = k->names; e->name; e++)
            if (e->value == k->def_int && !e->alias) {
                snprintf(buf, cap, "`\"%s\"`", e->name);
                break;
            }
        break;
    case TD_CFG_STRING:
        /* kafka.shadow_topic's "" becomes "<output_topic>.shadow" at load */
        if (k->after == NULL) snprintf(buf, cap, "`\"%s\"`", k->def_str);
        break;
    case TD_CFG_TOPICS:
        snprintf(buf, cap, "`[ \"%s\" ]`", k->def_str);
        break;
    case TD_CFG_DURATION:
        if (k->def_str) snprintf(buf, cap, "`\"%s\"`", k->def_str);
        break;
    default:
        break;
    }
}

static void test_docs_show_the_defaults(void **state) {
    (void)state;
    doc_keys d;
    doc_read(&d);
    size_t n;
    const td_config_key *k = td_config_keys(&n);
    int bad = 0;
    for (size_t j = 0; j < d.n; j++)
        for (size_t i = 0; i < n; i++) {
            char want[256];
            if (strcmp(d.key[j], k[i].path) != 0) continue;
            doc_default_of(&k[i], want, sizeof want);
            if (*want && strcmp(want, d.def[j]) != 0) {
                fprintf(stderr, "docs/config.md:%d: %s: default %s, the table's is %s\n", d.line[j],
                        d.key[j], d.def[j], want);
                bad++;
            }
        }
    doc_free(&d);
    assert_int_equal(bad, 0);
}

static void test_table_rows(void **state) {
    (void)state;
    size_t n;
    const td_config_key *k = td_config_keys(&n);
    for (size_t i = 0; i < n; i++) {
        const char *dot = strchr(k[i].path, '.');
        assert_non_null(dot);
        assert_true(dot > k[i].path && dot[1] && !strchr(dot + 1, '.'));
        assert_true(k[i].help && *k[i].help);
        if (k[i].type == TD_CFG_INT) {
            assert_true(k[i].lo <= k[i].def_int && k[i].def_int <= k[i].hi);
        }
        if (k[i].type == TD_CFG_ENUM) assert_non_null(k[i].names);
        if (k[i].type == TD_CFG_DURATION && k[i].def_str) {
            /* a default written as text is a positive duration that fits */
            td_ms d;
            assert_int_equal(td_duration_parse(k[i].def_str, strlen(k[i].def_str), &d), TD_OK);
            assert_true(d > 0);
            assert_true(strlen(k[i].def_str) < TD_CFG_DURATION_TEXT);
        }
        if (k[i].check) assert_non_null(k[i].expects);
        for (size_t j = 0; j < i; j++)
            assert_string_not_equal(k[i].path, k[j].path);
    }
}

static td_config *load_text(const char *text, char *err, size_t errcap) {
    char path[] = "/tmp/test_config_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    size_t len = strlen(text);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    close(fd);
    td_config *c = td_config_load(path, err, errcap);
    if (!c) { /* drop the temporary name from the message */
        const char *p = strstr(err, path);
        if (p) memmove(err, p + strlen(path), strlen(p + strlen(path)) + 1);
    }
    unlink(path);
    return c;
}

static void test_unknown_keys_list_the_table(void **state) {
    (void)state;
    char err[1024];
    assert_null(load_text("bogus = 1;\n", err, sizeof err));
    assert_string_equal(
        err,
        ":1: bogus: unknown key (allowed here: kafka, redis, rules, engine, timers, time, gifts, "
        "log, http)");
    assert_null(load_text("log = { formt = \"x\"; };\n", err, sizeof err));
    assert_string_equal(err, ":1: log.formt: unknown key (allowed here: level, format)");
    assert_null(load_text("timers = { overdue_policy = \"later\"; };\n", err, sizeof err));
    assert_string_equal(
        err, ":1: timers.overdue_policy: expected \"fire_late\" or \"drop\", got \"later\"");
    assert_null(load_text("log = { level = \"trace\"; };\n", err, sizeof err));
    assert_string_equal(err,
                        ":1: log.level: expected one of debug, info, warn, error, got \"trace\"");
}

/* http.*: the listen address is checked at load, naming the key; TLS
 * needs both files and a listener. */
static void test_http_keys(void **state) {
    (void)state;
    char err[1024];
    td_config *c = load_text("http = { listen = \"127.0.0.1:9464\"; };\n", err, sizeof err);
    assert_non_null(c);
    assert_string_equal(c->http.listen, "127.0.0.1:9464");
    assert_string_equal(c->http.tls_cert, "");
    td_config_free(c);
    c = load_text("http = { listen = \"[::1]:9464\"; };\n", err, sizeof err);
    assert_non_null(c);
    td_config_free(c);
    static const char *const bad[] = {"9464",  "127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536",
                                      ":9464", "::1:9464",  "[::1]9464",   "host:port"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char text[128];
        snprintf(text, sizeof text, "http = { listen = \"%s\"; };\n", bad[i]);
        assert_null(load_text(text, err, sizeof err));
        char want[256];
        snprintf(want, sizeof want,
                 ":1: http.listen: expected \"\" (off) or HOST:PORT such as \"127.0.0.1:9464\" "
                 "or \"[::1]:9464\", got \"%s\"",
                 bad[i]);
        assert_string_equal(err, want);
    }
    assert_null(load_text("http = { listen = \"127.0.0.1:9464\"; tls_cert = \"/c.pem\"; };\n", err,
                          sizeof err));
    assert_string_equal(err, ":1: http.tls_key: is required with http.tls_cert (TLS needs a "
                             "certificate and its key)");
    assert_null(
        load_text("http = { tls_cert = \"/c.pem\"; tls_key = \"/k.pem\"; };\n", err, sizeof err));
    assert_string_equal(err, ":1: http.tls_cert: needs http.listen (the listener is off)");
}

static void test_defaults(void **state) {
    (void)state;
    td_config *c = td_config_default();
    assert_string_equal(c->kafka.brokers, "embedded");
    assert_true(c->kafka.embedded);
    assert_int_equal(c->kafka.n_input_topics, 1);
    assert_string_equal(c->kafka.input_topics[0], "touchd.events");
    assert_string_equal(c->kafka.shadow_topic, "touchd.recommendations.shadow");
    assert_string_equal(c->redis.host, "127.0.0.1");
    assert_int_equal(c->redis.port, 6379);
    assert_null(c->redis.password);
    assert_int_equal(c->engine.state_cache, 65536);
    assert_true(c->engine.pipeline);
    assert_int_equal(c->timers.shards, 4096);
    assert_int_equal(c->timers.overdue_policy, TD_OVERDUE_FIRE_LATE);
    assert_int_equal(c->gifts.retention_days, 400);
    assert_int_equal(c->log.level, TD_LOG_INFO);
    assert_int_equal(c->time.max_future_skew, 5 * TD_MINUTE);
    assert_int_equal(c->time.max_past_age, 400 * TD_DAY);
    assert_string_equal(c->time.max_future_skew_text, "5m");
    assert_string_equal(c->time.max_past_age_text, "400d");
    td_config_free(c);
}

/* time.*: durations, kept as written for the dead-letter reasons; a bad
 * value (negative, zero, not a duration, not a string) names the key. */
static void test_time_bounds(void **state) {
    (void)state;
    char err[1024];
    td_config *c = load_text("time = { max_future_skew = \"90s\"; max_past_age = \"2w3d\"; };\n",
                             err, sizeof err);
    assert_non_null(c);
    assert_int_equal(c->time.max_future_skew, 90 * TD_SECOND);
    assert_int_equal(c->time.max_past_age, 17 * TD_DAY);
    assert_string_equal(c->time.max_future_skew_text, "90s");
    assert_string_equal(c->time.max_past_age_text, "2w3d");
    td_config_free(c);
    /* one key set, the other keeps its default */
    c = load_text("time = { max_past_age = \"30d\"; };\n", err, sizeof err);
    assert_non_null(c);
    assert_int_equal(c->time.max_future_skew, 5 * TD_MINUTE);
    assert_string_equal(c->time.max_past_age_text, "30d");
    td_config_free(c);
    /* a text too long to keep is kept in the formatter's form */
    c = load_text("time = { max_past_age = \"0000000000000000000000000000016d\"; };\n", err,
                  sizeof err);
    assert_non_null(c);
    assert_int_equal(c->time.max_past_age, 16 * TD_DAY);
    assert_string_equal(c->time.max_past_age_text, "2w2d");
    td_config_free(c);

    static const char *const bad[][2] = {
        {"time = { max_future_skew = \"-5m\"; };\n",
         ":1: time.max_future_skew: expected a positive duration such as \"10m\", \"6h\", "
         "\"2d\", got \"-5m\""},
        {"time = { max_future_skew = \"0s\"; };\n",
         ":1: time.max_future_skew: expected a positive duration such as \"10m\", \"6h\", "
         "\"2d\", got \"0s\""},
        {"time = { max_past_age = \"a year\"; };\n",
         ":1: time.max_past_age: expected a positive duration such as \"10m\", \"6h\", "
         "\"2d\", got \"a year\""},
        {"time = { max_past_age = 400; };\n", ":1: time.max_past_age: expected a string, got 400"},
        {"time = { max_past_age = \"\"; };\n",
         ":1: time.max_past_age: expected a non-empty string, got \"\""},
        {"time = { max_skew = \"5m\"; };\n", ":1: time.max_skew: unknown key (allowed here: "
                                             "max_future_skew, max_past_age, late_policy)"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_null(load_text(bad[i][0], err, sizeof err));
        assert_string_equal(err, bad[i][1]);
    }
}

/* The plan keys: late_policy (and its old name), plan_topic, dedup_window. */
static void test_plan_keys(void **state) {
    (void)state;
    char err[512];
    td_config *c = load_text("", err, sizeof err);
    assert_non_null(c);
    assert_int_equal(c->time.late_policy, TD_LATE_MARK);
    assert_string_equal(c->kafka.plan_topic, "touchd.plans");
    assert_int_equal(c->engine.dedup_window, 7 * TD_DAY);
    td_config_free(c);
    c = load_text("time = { late_policy = \"drop\"; };\nkafka = { plan_topic = \"\"; };\n"
                  "engine = { dedup_window = \"30d\"; };\n",
                  err, sizeof err);
    assert_non_null(c);
    assert_int_equal(c->time.late_policy, TD_LATE_DROP);
    assert_string_equal(c->kafka.plan_topic, "");
    assert_int_equal(c->engine.dedup_window, 30 * TD_DAY);
    td_config_free(c);
    /* the old name maps onto the new one */
    c = load_text("timers = { overdue_policy = \"fire_late\"; };\n", err, sizeof err);
    assert_non_null(c);
    assert_int_equal(c->time.late_policy, TD_LATE_PUBLISH);
    td_config_free(c);
    c = load_text("timers = { overdue_policy = \"drop\"; drop_older_than = \"6h\"; };\n", err,
                  sizeof err);
    assert_non_null(c);
    assert_int_equal(c->time.late_policy, TD_LATE_DROP);
    td_config_free(c);
    static const char *const bad[][2] = {
        {"time = { late_policy = \"later\"; };\n",
         ":1: time.late_policy: expected one of mark, publish, drop, got \"later\""},
        {"time = { late_policy = \"mark\"; };\ntimers = { overdue_policy = \"fire_late\"; };\n",
         "timers.overdue_policy: is the old name of time.late_policy: set only "
         "time.late_policy"},
        {"kafka = { plan_topic = \"touchd.recommendations\"; };\n",
         "kafka.plan_topic: must differ from the input, output, shadow, gift register and "
         "dead-letter topics (got \"touchd.recommendations\")"},
        {"engine = { dedup_window = \"0s\"; };\n",
         ":1: engine.dedup_window: expected a positive duration such as \"10m\", \"6h\", "
         "\"2d\", got \"0s\""},
        {"kafka = { consumer = { enable_partition_eof = false; }; };\n",
         "librdkafka property enable.partition.eof cannot be set here: touchd needs "
         "end-of-partition events (the timers' horizon)"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_null(load_text(bad[i][0], err, sizeof err));
        if (!strstr(err, bad[i][1])) fail_msg("case %zu: got '%s'", i, err);
    }
}

/* --check-config's paths: each missing or wrong one is a line naming the
 * key (as written) and the path; the good ones say nothing. */
static void test_check_paths(void **state) {
    (void)state;
    char dir[] = "/tmp/test_config_paths_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char ca[600], text[4096], err[1024];
    snprintf(ca, sizeof ca, "%s/ca.pem", dir);
    FILE *o = fopen(ca, "w");
    assert_non_null(o);
    fclose(o);
    /* all good: rules dir, a readable CA file, a CA directory, probe */
    snprintf(text, sizeof text,
             "kafka = { bootstrap_file = \"%s/b\";\n"
             "  consumer = { ssl_ca_location = \"%s\"; };\n"
             "  producer = { ssl_ca_location = \"%s\"; sasl_kerberos_keytab = \"%s\"; }; };\n"
             "rules = { dir = \"%s\"; };\n",
             dir, ca, dir, ca, dir);
    td_config *c = load_text(text, err, sizeof err);
    assert_non_null(c);
    char *buf = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&buf, &len);
    assert_int_equal(td_config_check_paths(c, "> ", out), 0);
    fclose(out);
    assert_int_equal(len, 0);
    free(buf);
    td_config_free(c);

    /* every kind of problem, each on its own line */
    snprintf(text, sizeof text,
             "kafka = { bootstrap_file = \"%s/no/b\";\n"
             "  consumer = { ssl_key_location = \"%s/key.pem\"; ssl_ca_location = \"probe\"; };\n"
             "  producer = { ssl_certificate_location = \"%s\"; }; };\n"
             "rules = { dir = \"%s/rules\"; shadow_dir = \"%s\"; shadow_report = \"%s/x/r.json\"; "
             "};\n",
             dir, dir, dir, dir, ca, dir);
    c = load_text(text, err, sizeof err);
    assert_non_null(c);
    out = open_memstream(&buf, &len);
    assert_int_equal(td_config_check_paths(c, "> ", out), 6);
    fclose(out);
    char want[6][800];
    snprintf(want[0], sizeof want[0],
             "> %s: rules.dir: cannot read the directory \"%s/rules\": No such file or directory\n",
             c->path, dir);
    snprintf(want[1], sizeof want[1],
             "> %s: rules.shadow_dir: cannot read the directory \"%s\": not a directory\n", c->path,
             ca);
    snprintf(want[2], sizeof want[2],
             "> %s: rules.shadow_report: cannot write \"%s/x/r.json\": directory \"%s/x\": No such "
             "file or directory\n",
             c->path, dir, dir);
    snprintf(want[3], sizeof want[3],
             "> %s: kafka.bootstrap_file: cannot write \"%s/no/b\": directory \"%s/no\": No such "
             "file or directory\n",
             c->path, dir, dir);
    snprintf(want[4], sizeof want[4],
             "> %s:2: kafka.consumer.ssl_key_location: cannot read the file \"%s/key.pem\" "
             "(librdkafka ssl.key.location): No such file or directory\n",
             c->path, dir);
    snprintf(want[5], sizeof want[5],
             "> %s:3: kafka.producer.ssl_certificate_location: cannot read the file \"%s\" "
             "(librdkafka ssl.certificate.location): a directory, not a file\n",
             c->path, dir);
    for (int i = 0; i < 6; i++)
        if (!strstr(buf, want[i])) fail_msg("missing line %d: %s\nin:\n%s", i, want[i], buf);
    free(buf);
    td_config_free(c);
    unlink(ca);
    rmdir(dir);
}

/* kafka.instance_id: static membership, "" by default, env:NAME accepted
 * (one config for every instance: the id from each one's environment),
 * checked as Kafka checks it; group.instance.id is touchd's to set. */
static void test_instance_id(void **state) {
    (void)state;
    char err[512];
    td_config *c = load_text("", err, sizeof err);
    assert_non_null(c);
    assert_string_equal(c->kafka.instance_id, "");
    td_config_free(c);
    c = load_text("kafka = { instance_id = \"touchd-a.1_x\"; };\n", err, sizeof err);
    assert_non_null(c);
    assert_string_equal(c->kafka.instance_id, "touchd-a.1_x");
    td_config_free(c);
    setenv("TD_TEST_INSTANCE", "pod-7", 1);
    c = load_text("kafka = { instance_id = \"env:TD_TEST_INSTANCE\"; };\n", err, sizeof err);
    assert_non_null(c);
    assert_string_equal(c->kafka.instance_id, "pod-7");
    td_config_free(c);
    unsetenv("TD_TEST_INSTANCE");
    static const char *const bad[][2] = {
        {"kafka = { instance_id = \"env:TD_TEST_INSTANCE\"; };\n",
         ":1: kafka.instance_id: environment variable TD_TEST_INSTANCE is not set"},
        {"kafka = { instance_id = \"touchd a\"; };\n",
         ":1: kafka.instance_id: expected \"\" (dynamic membership) or 1 to 249 of a-z A-Z 0-9 . "
         "_ -, got \"touchd a\""},
        {"kafka = { consumer = { group_instance_id = \"x\"; }; };\n",
         ":1: kafka.consumer.group_instance_id: librdkafka property group.instance.id cannot be "
         "set here: set kafka.instance_id instead (it takes env:NAME)"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_null(load_text(bad[i][0], err, sizeof err));
        if (!strstr(err, bad[i][1])) fail_msg("case %zu: got '%s'", i, err);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_instance_id),
        cmocka_unit_test(test_check_paths),
        cmocka_unit_test(test_plan_keys),
        cmocka_unit_test(test_docs_list_exactly_the_keys),
        cmocka_unit_test(test_docs_show_the_defaults),
        cmocka_unit_test(test_table_rows),
        cmocka_unit_test(test_unknown_keys_list_the_table),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_http_keys),
        cmocka_unit_test(test_time_bounds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
