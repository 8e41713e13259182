/*
 * test_shadow.c - the shadow ruleset and `touchd explain -c` end to end:
 * the real touchd binary, a real redis-server and librdkafka's mock cluster
 * in this process (harness*.h), as test_daemon.c.
 *
 * Three daemons consume the SAME input topic at the same time, each with its
 * own consumer group, output topic and Redis key prefix:
 *
 *   a   no shadow (the reference run)
 *   b   a shadow ruleset that differs from live (crafted below)
 *   c   a shadow ruleset that does not compile
 *
 * Checks: b's and c's live recommendations have exactly a's ids (and each
 * is the live ruleset's), their Redis hashes equal a's field by field (the
 * per-rule last-fired times, which are wall-clock, only by presence); b's
 * shadow topic holds the shadow ruleset's recommendations (ids from
 * `touchd replay` with the shadow rules, `ruleset` = the shadow hash from
 * `touchd check`) and its withdrawals, which withdraw from the live plan
 * (every `withdraws` is a live recommendation id), each message with its
 * touchd-kind header; b's report holds the expected per-rule counts of
 * recommendations and of withdrawals; c logs the diagnostics, publishes
 * nothing on its shadow topic, and picks up a good shadow ruleset written
 * later (directory poll).
 *
 * Then `touchd explain -c a.conf --prospect p-1` over the state the daemon
 * wrote: the now evaluation (cooldown end and pending timer from the
 * state), --json that parses, a hypothetical --event, and Redis unchanged.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>
#include <cmocka.h>

#include "harness.h"
#include "harness_kafka.h"

#define PARTS 4
#define T_IN "events"
#define NP 4 /* prospects */
#define NE 6 /* events each: sent, opened, sent, opened, sent, opened */

/* Live: every send and every open recommends; the first open also nudges
 * (then a long cooldown); sends arm a far-away timer (pending in explain). */
static const char RULES_LIVE[] =
    "rules = (\n"
    "  { id = \"t.sent\"; on = [ \"email.sent\" ];\n"
    "    recommend = { channel = \"email\"; touch = \"follow_up\"; note = \"test\"; }; },\n"
    "  { id = \"t.opened\"; on = [ \"email.opened\" ]; when = \"email.opened >= 1\";\n"
    "    recommend = { channel = \"whatsapp\"; touch = \"micro_question\"; }; },\n"
    "  { id = \"t.nudge\"; on = [ \"email.opened\" ]; cooldown = \"3650d\";\n"
    "    recommend = { channel = \"call\"; touch = \"call_proposal\"; }; },\n"
    "  { id = \"t.silence\"; on = [ \"email.sent\" ]; after = \"3650d\";\n"
    "    when = \"email.unanswered > 0\";\n"
    "    recommend = { channel = \"email\"; touch = \"reengage\"; }; }\n"
    ");\n";

/* Shadow: t.opened needs two opens and goes to LinkedIn (first open:
 * live_only; the next two: differ), a new t.new on the third send
 * (shadow_only) that withdraws the pending t.nudge (a withdrawal the shadow
 * alone makes); t.sent and t.nudge unchanged (agree).
 *
 * Withdrawals, per prospect: live, each of the second and third t.sent and
 * t.opened supersedes the previous one (4, all superseded); the shadow,
 * stepping copies of the live state (the live plan), supersedes the same
 * four (its t.opened fires on the second and third opens: agree) and t.new
 * withdraws t.nudge (reason rule: shadow_only). */
static const char RULES_SHADOW[] =
    "rules = (\n"
    "  { id = \"t.sent\"; on = [ \"email.sent\" ];\n"
    "    recommend = { channel = \"email\"; touch = \"follow_up\"; note = \"test\"; }; },\n"
    "  { id = \"t.opened\"; on = [ \"email.opened\" ]; when = \"email.opened >= 2\";\n"
    "    recommend = { channel = \"linkedin\"; touch = \"micro_question\"; }; },\n"
    "  { id = \"t.nudge\"; on = [ \"email.opened\" ]; cooldown = \"3650d\";\n"
    "    recommend = { channel = \"call\"; touch = \"call_proposal\"; }; },\n"
    "  { id = \"t.silence\"; on = [ \"email.sent\" ]; after = \"3650d\";\n"
    "    when = \"email.unanswered > 0\";\n"
    "    recommend = { channel = \"email\"; touch = \"reengage\"; }; },\n"
    "  { id = \"t.new\"; on = [ \"email.sent\" ]; when = \"email.sent >= 3\";\n"
    "    withdraws = [ \"t.nudge\" ];\n"
    "    recommend = { channel = \"call\"; touch = \"call_proposal\"; }; }\n"
    ");\n";

static const char RULES_BROKEN[] =
    "rules = (\n"
    "  { id = \"t.sent\"; on = [ \"email.sent\" ]; when = \"emial.sent > 1\";\n"
    "    recommend = { channel = \"email\"; touch = \"follow_up\"; }; }\n"
    ");\n";

typedef struct run {
    char name[8];
    char conf[400], log[400], report[400];
    char shadow_dir[400]; /* "" = none */
    td_test_touchd touchd;
} run;

typedef struct fx {
    char dir[256];
    char live_dir[300];
    char events_file[300];
    td_test_redis redis;
    td_test_kafka kafka;
    run runs[3];
} fx;

/* ------------------------------------------------------------- helpers */

static void dump_log(const char *path) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "tail -n 40 %s >&2", path);
    fprintf(stderr, "---- %s ----\n", path);
    if (system(cmd) != 0) fprintf(stderr, "(no log)\n");
}

static void write_rules(const char *dir, const char *text) {
    char tmp[600], final[600];
    assert_int_equal(td_test_write_file(dir, "t.rules.tmp", text, strlen(text), tmp, sizeof tmp),
                     0);
    snprintf(final, sizeof final, "%s/t.rules", dir);
    assert_int_equal(rename(tmp, final), 0);
}

static void write_config(fx *f, run *r) {
    char text[4096], shadow[1200] = "";
    if (r->shadow_dir[0])
        snprintf(shadow, sizeof shadow,
                 " shadow_dir = \"%s\"; shadow_report = \"%s\"; shadow_report_interval_ms = 200;",
                 r->shadow_dir, r->report);
    int n = snprintf(text, sizeof text,
                     "kafka = {\n"
                     "  brokers = \"%s\";\n"
                     "  group_id = \"g-%s\";\n"
                     "  input_topics = [ \"" T_IN "\" ];\n"
                     "  output_topic = \"recs-%s\";\n"
                     "  dead_letter_topic = \"dlq\";\n"
                     "  consumer = { fetch_wait_max_ms = 5; session_timeout_ms = 6000;\n"
                     "               heartbeat_interval_ms = 500; };\n"
                     "  producer = { linger_ms = 0; };\n"
                     "};\n"
                     "redis = { host = \"127.0.0.1\"; port = %d; key_prefix = \"%s\";\n"
                     "          backoff_min_ms = 20; backoff_max_ms = 200; };\n"
                     "rules = { dir = \"%s\"; reload_poll_ms = 300;%s };\n"
                     "engine = { batch_max_events = 500; batch_max_ms = 20; };\n"
                     /* the events have fixed dates (October 2026) */
                     "time = { max_past_age = \"36500d\"; late_policy = \"publish\"; };\n"
                     "log = { level = \"info\"; };\n",
                     f->kafka.bootstraps, r->name, r->name, f->redis.port, r->name, f->live_dir,
                     shadow);
    char name[32];
    snprintf(name, sizeof name, "%s.conf", r->name);
    assert_int_equal(td_test_write_file(f->dir, name, text, (size_t)n, r->conf, sizeof r->conf), 0);
}

static int setup(void **state) {
    fx *f = calloc(1, sizeof *f);
    if (td_test_tmpdir(f->dir, sizeof f->dir) != 0) return -1;
    snprintf(f->live_dir, sizeof f->live_dir, "%s/rules", f->dir);
    snprintf(f->events_file, sizeof f->events_file, "%s/events.jsonl", f->dir);
    if (mkdir(f->live_dir, 0755) != 0) return -1;
    if (td_test_redis_start(&f->redis) != 0) return -1;
    const char *topics[] = {T_IN,     "dlq",           "recs-a",       "recs-b",
                            "recs-c", "recs-b.shadow", "recs-c.shadow"};
    if (td_test_kafka_start(&f->kafka, topics, 7, PARTS) != 0) return -1;
    *state = f;
    write_rules(f->live_dir, RULES_LIVE);
    static const char *names[3] = {"a", "b", "c"};
    for (int i = 0; i < 3; i++) {
        run *r = &f->runs[i];
        snprintf(r->name, sizeof r->name, "%s", names[i]);
        snprintf(r->log, sizeof r->log, "%s/%s.log", f->dir, names[i]);
        snprintf(r->report, sizeof r->report, "%s/%s.report.json", f->dir, names[i]);
        if (i > 0) {
            snprintf(r->shadow_dir, sizeof r->shadow_dir, "%s/shadow-%s", f->dir, names[i]);
            if (mkdir(r->shadow_dir, 0755) != 0) return -1;
            write_rules(r->shadow_dir, i == 1 ? RULES_SHADOW : RULES_BROKEN);
        }
        write_config(f, r);
    }
    return 0;
}

static int teardown(void **state) {
    fx *f = *state;
    if (!f) return 0;
    for (int i = 0; i < 3; i++)
        if (f->runs[i].touchd.pid > 0) {
            dump_log(f->runs[i].log);
            td_test_touchd_kill(&f->runs[i].touchd);
        }
    td_test_kafka_stop(&f->kafka);
    td_test_redis_stop(&f->redis);
    td_test_rmtree(f->dir);
    free(f);
    return 0;
}

static void send_events(fx *f) {
    FILE *o = fopen(f->events_file, "w");
    assert_non_null(o);
    for (int j = 0; j < NE; j++)
        for (int p = 0; p < NP; p++) {
            char ev[512], key[32];
            int n =
                snprintf(ev, sizeof ev,
                         "{\"id\":\"e-%d-%d\",\"type\":\"%s\",\"prospect_id\":\"p-%d\","
                         "\"occurred_at\":\"2026-10-01T10:%02d:00Z\",\"owner_id\":\"rep-%d\"%s}",
                         p, j, j % 2 == 0 ? "email.sent" : "email.opened", p, j, p,
                         j % 2 == 0 ? ",\"data\":{\"kind\":\"value\"}" : "");
            snprintf(key, sizeof key, "p-%d", p);
            assert_int_equal(td_test_kafka_produce(&f->kafka, T_IN, key, ev, (size_t)n), 0);
            fprintf(o, "%s\n", ev);
        }
    fclose(o);
    assert_int_equal(td_test_kafka_flush(&f->kafka, 10000), 0);
}

static long long hget_int(fx *f, const char *prefix, int p, const char *field) {
    redisReply *r = td_test_redis_cmd(&f->redis, "HGET %s:p:{p-%d} %s", prefix, p, field);
    long long v = -1;
    if (r && r->type == REDIS_REPLY_STRING)
        v = atoll(r->str);
    else if (r && r->type == REDIS_REPLY_NIL)
        v = 0;
    if (r) freeReplyObject(r);
    return v;
}

static bool wait_applied(fx *f, const char *prefix, int timeout_ms) {
    int64_t end = td_test_now_ms() + timeout_ms;
    while (td_test_now_ms() < end) {
        int done = 0;
        for (int p = 0; p < NP; p++)
            done += hget_int(f, prefix, p, "events") == NE;
        if (done == NP) return true;
        td_test_sleep_ms(100);
    }
    return false;
}

/* The stdout of a command (or stdout+stderr), as a heap string; *status. */
static char *run_cmd(const char *cmd, int *status) {
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    size_t n;
    while ((n = fread(buf + len, 1, cap - len - 1, p)) > 0) {
        len += n;
        if (len + 1 == cap) buf = realloc(buf, cap *= 2);
    }
    buf[len] = '\0';
    int st = pclose(p);
    *status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    return buf;
}

/* The ruleset hash `touchd check DIR` reports. */
static void check_hash(const char *dir, char *out, size_t cap) {
    char cmd[800];
    snprintf(cmd, sizeof cmd, "%s check %s 2>&1", td_test_touchd_path(), dir);
    int st;
    char *s = run_cmd(cmd, &st);
    assert_int_equal(st, 0);
    char *h = strstr(s, "sha256:");
    assert_non_null(h);
    size_t k = strspn(h, "sha256:0123456789abcdef");
    snprintf(out, cap, "%.*s", (int)k, h);
    free(s);
}

/* Sorted ids of the recommendations `touchd replay --rules DIR` prints over
 * the events sent (its withdrawals left out). */
static size_t replay_ids(fx *f, const char *dir, char ***out) {
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "%s replay --quiet --rules %s %s", td_test_touchd_path(), dir,
             f->events_file);
    int st;
    char *s = run_cmd(cmd, &st);
    assert_int_equal(st, 0);
    char **v = NULL;
    size_t n = 0;
    for (char *line = strtok(s, "\n"); line; line = strtok(NULL, "\n")) {
        json_t *j = json_loads(line, 0, NULL);
        assert_non_null(j);
        const char *kind = json_string_value(json_object_get(j, "kind"));
        assert_non_null(kind);
        if (strcmp(kind, "recommendation") == 0) {
            v = realloc(v, (n + 1) * sizeof *v);
            v[n++] = strdup(json_string_value(json_object_get(j, "id")));
        }
        json_decref(j);
    }
    free(s);
    *out = v;
    return n;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* What a topic held besides the recommendations (shadow topics). */
typedef struct topic_wds {
    bool headers;      /* check each message's touchd-kind header against its kind */
    char **withdraws;  /* the withdrawals' `withdraws`, sorted */
    size_t n;          /* withdrawals */
    size_t superseded; /* of which reason superseded */
    size_t rule;       /* of which reason rule */
} topic_wds;

/* Reads `want` messages of topic; checks each one's ruleset is `hash`;
 * returns the sorted ids of its recommendations. With wds, withdrawals are
 * expected too (their count is part of want) and described there; without,
 * every message must be a recommendation. */
static size_t topic_ids(fx *f, const char *topic, size_t want, const char *hash, char ***out,
                        topic_wds *wds) {
    td_test_reader *r = td_test_reader_new(&f->kafka, topic);
    td_test_reader_read(r, want, 30000);
    td_test_reader_drain(r, 500); /* nothing more comes */
    size_t n, nrec = 0;
    const td_test_msg *m = td_test_reader_msgs(r, &n);
    if (n != want) fprintf(stderr, "%s: %zu messages, want %zu\n", topic, n, want);
    assert_int_equal(n, want);
    char **v = calloc(n + 1, sizeof *v);
    if (wds) wds->withdraws = calloc(n + 1, sizeof *wds->withdraws);
    for (size_t i = 0; i < n; i++) {
        json_t *j = json_loads(m[i].val, 0, NULL);
        assert_non_null(j);
        assert_string_equal(json_string_value(json_object_get(j, "ruleset")), hash);
        assert_string_equal(json_string_value(json_object_get(j, "prospect_id")), m[i].key);
        const char *kind = json_string_value(json_object_get(j, "kind"));
        assert_non_null(kind);
        if (wds && wds->headers) {
            const char *hk = NULL;
            for (size_t h = 0; h < m[i].nheaders; h++)
                if (strcmp(m[i].hname[h], "touchd-kind") == 0) hk = m[i].hval[h];
            assert_non_null(hk);
            assert_string_equal(hk, kind);
        }
        if (strcmp(kind, "recommendation") == 0) {
            v[nrec++] = strdup(json_string_value(json_object_get(j, "id")));
        } else {
            assert_non_null(wds);
            assert_string_equal(kind, "withdrawal");
            const char *reason = json_string_value(json_object_get(j, "reason"));
            wds->superseded += strcmp(reason, "superseded") == 0;
            wds->rule += strcmp(reason, "rule") == 0;
            wds->withdraws[wds->n++] = strdup(json_string_value(json_object_get(j, "withdraws")));
        }
        json_decref(j);
    }
    td_test_reader_free(r);
    qsort(v, nrec, sizeof *v, cmp_str);
    if (wds) qsort(wds->withdraws, wds->n, sizeof *wds->withdraws, cmp_str);
    *out = v;
    return nrec;
}

static bool has_id(char **v, size_t n, const char *id) {
    return bsearch(&id, v, n, sizeof *v, cmp_str) != NULL;
}

static void ids_free(char **v, size_t n) {
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

static void assert_same_ids(char **a, size_t na, char **b, size_t nb) {
    assert_int_equal(na, nb);
    for (size_t i = 0; i < na; i++)
        assert_string_equal(a[i], b[i]);
}

/* Prospect p's hash under prefix, as a JSON object (field -> value). */
static json_t *hgetall(fx *f, const char *prefix, int p) {
    redisReply *h = td_test_redis_cmd(&f->redis, "HGETALL %s:p:{p-%d}", prefix, p);
    assert_non_null(h);
    assert_int_equal(h->type, REDIS_REPLY_ARRAY);
    json_t *o = json_object();
    for (size_t i = 0; i + 1 < h->elements; i += 2)
        json_object_set_new(o, h->element[i]->str, json_string(h->element[i + 1]->str));
    freeReplyObject(h);
    return o;
}

/* The hashes of run `x` equal run a's: every field, same value, except the
 * wall-clock last-fired times (presence only). */
static void assert_same_states(fx *f, const char *x) {
    for (int p = 0; p < NP; p++) {
        json_t *a = hgetall(f, "a", p), *b = hgetall(f, x, p);
        assert_true(json_object_size(a) > 10);
        const char *k;
        json_t *v;
        json_object_foreach(a, k, v) {
            json_t *w = json_object_get(b, k);
            if (!w) fprintf(stderr, "p-%d: field %s missing in %s\n", p, k, x);
            assert_non_null(w);
            if (strncmp(k, "fired.", 6) == 0) continue;
            if (strcmp(json_string_value(v), json_string_value(w)) != 0)
                fprintf(stderr, "p-%d: %s: a=%s %s=%s\n", p, k, json_string_value(v), x,
                        json_string_value(w));
            assert_string_equal(json_string_value(v), json_string_value(w));
        }
        assert_int_equal(json_object_size(a), json_object_size(b));
        json_decref(a);
        json_decref(b);
    }
}

static json_t *read_report(const char *path) {
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    if (!j) fprintf(stderr, "%s: %s\n", path, je.text);
    assert_non_null(j);
    return j;
}

static json_int_t rjint(json_t *o, const char *a, const char *b) {
    json_t *x = json_object_get(o, a);
    if (b) x = json_object_get(x, b);
    assert_true(json_is_integer(x));
    return json_integer_value(x);
}

/* The report's counts of rule id (zeros when absent). */
static void rule_counts(json_t *rep, const char *id, json_int_t c[4]) {
    static const char *names[4] = {"agree", "differ", "live_only", "shadow_only"};
    memset(c, 0, 4 * sizeof *c);
    json_t *rules = json_object_get(rep, "rules");
    size_t i;
    json_t *e;
    json_array_foreach(rules, i, e) {
        if (strcmp(json_string_value(json_object_get(e, "rule")), id) != 0) continue;
        for (int k = 0; k < 4; k++)
            c[k] = json_integer_value(json_object_get(e, names[k]));
    }
}

/* The report's withdrawal counts of rule id (zeros when absent). */
static void rule_wd_counts(json_t *rep, const char *id, json_int_t c[4]) {
    static const char *names[4] = {"agree", "differ", "live_only", "shadow_only"};
    memset(c, 0, 4 * sizeof *c);
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(rep, "rules"), i, e) {
        if (strcmp(json_string_value(json_object_get(e, "rule")), id) != 0) continue;
        json_t *w = json_object_get(e, "withdrawals");
        for (int k = 0; k < 4; k++)
            c[k] = json_integer_value(json_object_get(w, names[k]));
    }
}

/* Waits until the report says `compared` steps. */
static json_t *wait_report(const char *path, json_int_t compared, int timeout_ms) {
    int64_t end = td_test_now_ms() + timeout_ms;
    json_t *j = NULL;
    while (td_test_now_ms() < end) {
        j = json_load_file(path, 0, NULL);
        json_t *s = json_object_get(json_object_get(j, "steps"), "compared");
        if (json_is_integer(s) && json_integer_value(s) == compared) return j;
        json_decref(j);
        j = NULL;
        td_test_sleep_ms(100);
    }
    return read_report(path);
}

/* ---------------------------------------------------------------- cases */

static void test_shadow_leaves_live_alone(void **state) {
    fx *f = *state;
    for (int i = 0; i < 3; i++)
        assert_int_equal(td_test_touchd_start(&f->runs[i].touchd, f->runs[i].conf, f->runs[i].log),
                         0);
    for (int i = 0; i < 3; i++)
        assert_true(td_test_wait_file(f->runs[i].log, "touchd running", 1, 20000));
    send_events(f);
    static const char *pre[3] = {"a", "b", "c"};
    for (int i = 0; i < 3; i++) {
        if (!wait_applied(f, pre[i], 30000)) dump_log(f->runs[i].log);
        assert_true(wait_applied(f, pre[i], 1));
    }

    char live_hash[128], shadow_hash[128];
    check_hash(f->live_dir, live_hash, sizeof live_hash);
    check_hash(f->runs[1].shadow_dir, shadow_hash, sizeof shadow_hash);
    assert_string_not_equal(live_hash, shadow_hash);

    /* Live recommendations: the same ids in all three runs, and the
     * replay's; each carries the live hash. */
    enum { LIVE_RECS = NP * 7, SHADOW_RECS = NP * 7, LIVE_WDS = NP * 4, SHADOW_WDS = NP * 5 };
    char **want, **ga, **gb, **gc;
    size_t nwant = replay_ids(f, f->live_dir, &want);
    qsort(want, nwant, sizeof *want, cmp_str);
    assert_int_equal(nwant, LIVE_RECS);
    /* the live topics carry the live withdrawals too (the events are old:
     * late_policy publish keeps them in the plan, as replay does) */
    topic_wds lwd[3] = {{.headers = true}, {.headers = true}, {.headers = true}};
    /* ... and, besides what the events withdrew (LIVE_WDS, as the shadow
     * report counts them), the expiries the plans' own timers publish: the
     * events are weeks old, every pending one has expired (NP * 3) */
    enum { LIVE_EXPIRED = NP * 3 };
    size_t nl = LIVE_RECS + LIVE_WDS + LIVE_EXPIRED;
    size_t na = topic_ids(f, "recs-a", nl, live_hash, &ga, &lwd[0]);
    size_t nb = topic_ids(f, "recs-b", nl, live_hash, &gb, &lwd[1]);
    size_t nc = topic_ids(f, "recs-c", nl, live_hash, &gc, &lwd[2]);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(lwd[i].n, LIVE_WDS + LIVE_EXPIRED);
        assert_int_equal(lwd[i].superseded, LIVE_WDS);
        assert_int_equal(lwd[i].rule, 0);
    }
    assert_same_ids(want, nwant, ga, na);
    assert_same_ids(ga, na, gb, nb);
    assert_same_ids(ga, na, gc, nc);

    /* Live states: identical hashes. */
    assert_same_states(f, "b");
    assert_same_states(f, "c");

    /* b's shadow topic: the shadow ruleset's recommendations, its hash,
     * and its withdrawals of live recommendations (the live plan). */
    char **sw, **sg;
    size_t nsw = replay_ids(f, f->runs[1].shadow_dir, &sw);
    qsort(sw, nsw, sizeof *sw, cmp_str);
    assert_int_equal(nsw, SHADOW_RECS);
    topic_wds swd = {.headers = true};
    /* the shadow observes the plans' timers too: their expiries */
    size_t nsg = topic_ids(f, "recs-b.shadow", SHADOW_RECS + SHADOW_WDS + LIVE_EXPIRED, shadow_hash,
                           &sg, &swd);
    assert_same_ids(sw, nsw, sg, nsg);
    assert_int_equal(swd.n, SHADOW_WDS + LIVE_EXPIRED);
    assert_int_equal(swd.superseded, NP * 4);
    assert_int_equal(swd.rule, NP);
    for (size_t i = 0; i < swd.n; i++) {
        if (!has_id(ga, na, swd.withdraws[i]))
            fprintf(stderr, "shadow withdrawal of %s: not a live recommendation\n",
                    swd.withdraws[i]);
        assert_true(has_id(ga, na, swd.withdraws[i]));
    }

    /* c: the broken shadow is reported and not run; nothing on its topic. */
    char **cg;
    assert_true(td_test_count_in_file(f->runs[2].log, "msg=\"shadow rules diagnostic\"") >= 1);
    assert_true(td_test_count_in_file(f->runs[2].log, "shadow rules rejected, no shadow runs") ==
                1);
    assert_int_equal(td_test_count_in_file(f->runs[2].log, "msg=\"rules diagnostic\""), 0);
    assert_int_equal(topic_ids(f, "recs-c.shadow", 0, "", &cg, NULL), 0);
    ids_free(cg, 0);
    json_t *rc = read_report(f->runs[2].report);
    assert_string_equal(json_string_value(json_object_get(rc, "status")), "not_running");
    assert_true(json_is_null(json_object_get(rc, "shadow_ruleset")));
    assert_true(json_is_string(json_object_get(rc, "last_reload_error")));
    json_decref(rc);

    /* b's report: per rule, the crafted differences. */
    json_t *rep = wait_report(f->runs[1].report, NP * NE + LIVE_EXPIRED, 10000);
    assert_string_equal(json_string_value(json_object_get(rep, "status")), "running");
    assert_string_equal(json_string_value(json_object_get(rep, "live_ruleset")), live_hash);
    assert_string_equal(json_string_value(json_object_get(rep, "shadow_ruleset")), shadow_hash);
    /* the events' steps and the plans' timers (every plan expired) */
    assert_int_equal(rjint(rep, "steps", "compared"), NP * NE + LIVE_EXPIRED);
    assert_int_equal(rjint(rep, "recommendations", "live"), LIVE_RECS);
    assert_int_equal(rjint(rep, "recommendations", "shadow"), SHADOW_RECS);
    assert_int_equal(rjint(rep, "totals", "agree"), NP * 4);
    assert_int_equal(rjint(rep, "totals", "differ"), NP * 2);
    assert_int_equal(rjint(rep, "totals", "live_only"), NP);
    assert_int_equal(rjint(rep, "totals", "shadow_only"), NP);
    assert_int_equal(rjint(rep, "withdrawals", "live"), LIVE_WDS + LIVE_EXPIRED);
    assert_int_equal(rjint(rep, "withdrawals", "shadow"), SHADOW_WDS + LIVE_EXPIRED);
    assert_int_equal(rjint(rep, "withdrawals", "agree"), LIVE_WDS + LIVE_EXPIRED);
    assert_int_equal(rjint(rep, "withdrawals", "differ"), 0);
    assert_int_equal(rjint(rep, "withdrawals", "live_only"), 0);
    assert_int_equal(rjint(rep, "withdrawals", "shadow_only"), NP);
    json_int_t w[4];
    /* agree: the superseded ones and, once each prospect's last t.sent,
     * t.opened and t.nudge expired, those expiries (NP each) */
    rule_wd_counts(rep, "t.sent", w);
    assert_true(w[0] == NP * 3 && w[1] == 0 && w[2] == 0 && w[3] == 0);
    rule_wd_counts(rep, "t.opened", w);
    assert_true(w[0] == NP * 3 && w[1] == 0 && w[2] == 0 && w[3] == 0);
    rule_wd_counts(rep, "t.nudge", w);
    assert_true(w[0] == NP && w[1] == 0 && w[2] == 0 && w[3] == NP);
    json_int_t c[4];
    rule_counts(rep, "t.sent", c);
    assert_true(c[0] == NP * 3 && c[1] == 0 && c[2] == 0 && c[3] == 0);
    rule_counts(rep, "t.opened", c);
    assert_true(c[0] == 0 && c[1] == NP * 2 && c[2] == NP && c[3] == 0);
    rule_counts(rep, "t.nudge", c);
    assert_true(c[0] == NP && c[1] == 0 && c[2] == 0 && c[3] == 0);
    rule_counts(rep, "t.new", c);
    assert_true(c[0] == 0 && c[1] == 0 && c[2] == 0 && c[3] == NP);
    rule_counts(rep, "t.silence", c); /* a timer rule: never in a step's recs */
    assert_true(c[0] == 0 && c[1] == 0 && c[2] == 0 && c[3] == 0);
    json_decref(rep);

    /* c: a good shadow written later is picked up by the poll. */
    write_rules(f->runs[2].shadow_dir, RULES_SHADOW);
    assert_true(td_test_wait_file(f->runs[2].log, "msg=\"shadow ruleset active\"", 1, 10000));
    char needle[200], c_hash[128];
    check_hash(f->runs[2].shadow_dir, c_hash, sizeof c_hash);
    snprintf(needle, sizeof needle, "shadow_ruleset=%s", c_hash);
    assert_true(td_test_count_in_file(f->runs[2].log, needle) >= 1);

    /* Clean stops; the final log lines hold the comparison. */
    for (int i = 0; i < 3; i++)
        assert_int_equal(td_test_touchd_stop(&f->runs[i].touchd, SIGTERM, 20000), 0);
    assert_true(td_test_count_in_file(f->runs[1].log,
                                      "msg=\"shadow rule\" rule=t.opened agree=0 differ=8 "
                                      "live_only=4 shadow_only=0 wd_agree=12 wd_differ=0 "
                                      "wd_live_only=0 wd_shadow_only=0") == 1);
    /* t.nudge agrees on its recommendations, not on its withdrawals: info */
    assert_true(td_test_count_in_file(f->runs[1].log,
                                      "msg=\"shadow rule\" rule=t.nudge agree=4 differ=0 "
                                      "live_only=0 shadow_only=0 wd_agree=4 wd_differ=0 "
                                      "wd_live_only=0 wd_shadow_only=4") == 1);
    assert_true(td_test_count_in_file(f->runs[1].log, "live_wds=28 shadow_wds=32 wd_agree=28 "
                                                      "wd_differ=0 wd_live_only=0 "
                                                      "wd_shadow_only=4") >= 1);
    assert_int_equal(td_test_count_in_file(f->runs[0].log, "shadow"), 0);

    ids_free(want, nwant);
    ids_free(ga, na);
    ids_free(gb, nb);
    ids_free(gc, nc);
    ids_free(sw, nsw);
    ids_free(sg, nsg);
    ids_free(swd.withdraws, swd.n);
    for (int i = 0; i < 3; i++)
        ids_free(lwd[i].withdraws, lwd[i].n);
}

static void test_explain_from_redis(void **state) {
    fx *f = *state;
    run *a = &f->runs[0];
    assert_int_equal(td_test_touchd_start(&a->touchd, a->conf, a->log), 0);
    send_events(f);
    if (!wait_applied(f, "a", 30000)) dump_log(a->log);
    assert_int_equal(td_test_touchd_stop(&a->touchd, SIGTERM, 20000), 0);
    long long version = hget_int(f, "a", 1, "v");
    assert_true(version >= 1);

    char cmd[1500];
    int st;
    /* now evaluation (wall clock): cooldown end and pending timer from the state */
    snprintf(cmd, sizeof cmd, "%s explain --ascii -c %s --prospect p-1 2>&1", td_test_touchd_path(),
             a->conf);
    char *out = run_cmd(cmd, &st);
    if (st != 0) fprintf(stderr, "%s\n", out);
    assert_int_equal(st, 0);
    assert_non_null(strstr(out, "prospect p-1, \"now\" evaluation at"));
    assert_non_null(strstr(out, "state from redis 127.0.0.1:"));
    assert_non_null(strstr(out, "key a:p:{p-1}"));
    assert_non_null(strstr(out, "t.nudge"));
    assert_non_null(strstr(out, "COOLDOWN until"));
    assert_non_null(strstr(out, "pending timer due 2036-09-2")); /* 2026-10-01 + 3650d */
    assert_non_null(strstr(out, "WOULD FIRE"));
    free(out);

    /* --json, --now an explicit time */
    snprintf(cmd, sizeof cmd, "%s explain --json -c %s --prospect p-1 --now 2026-10-02T10:00:00Z",
             td_test_touchd_path(), a->conf);
    out = run_cmd(cmd, &st);
    assert_int_equal(st, 0);
    json_error_t je;
    json_t *j = json_loads(out, 0, &je);
    if (!j) fprintf(stderr, "not JSON (%s): %s\n", je.text, out);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "prospect_id")), "p-1");
    assert_string_equal(json_string_value(json_object_get(j, "now")), "2026-10-02T10:00:00Z");
    assert_string_equal(json_string_value(json_object_get(json_object_get(j, "trigger"), "type")),
                        "now");
    assert_int_equal(json_integer_value(json_object_get(j, "history_events")), NE);
    size_t i;
    json_t *e;
    int seen = 0;
    json_array_foreach(json_object_get(j, "rules"), i, e) {
        const char *id = json_string_value(json_object_get(e, "rule"));
        const char *oc = json_string_value(json_object_get(e, "outcome"));
        if (strcmp(id, "t.nudge") == 0) {
            assert_string_equal(oc, "cooldown");
            assert_true(json_is_string(json_object_get(e, "until")));
            seen++;
        } else if (strcmp(id, "t.opened") == 0 || strcmp(id, "t.sent") == 0) {
            assert_string_equal(oc, "would_fire");
            seen++;
        } else if (strcmp(id, "t.silence") == 0) {
            assert_string_equal(json_string_value(json_object_get(e, "kind")), "timer");
            json_t *pt = json_object_get(e, "pending_timer");
            assert_non_null(pt);
            assert_string_equal(json_string_value(json_object_get(pt, "armed_by")), "e-1-4");
            seen++;
        }
    }
    assert_int_equal(seen, 4);
    json_decref(j);
    free(out);

    /* a hypothetical event: applied to a copy, never stored */
    snprintf(cmd, sizeof cmd,
             "%s explain --json -c %s --prospect p-1 --event "
             "'{\"id\":\"e-hyp\",\"type\":\"email.opened\",\"prospect_id\":\"p-1\","
             "\"occurred_at\":\"2026-10-03T10:00:00Z\"}'",
             td_test_touchd_path(), a->conf);
    out = run_cmd(cmd, &st);
    assert_int_equal(st, 0);
    j = json_loads(out, 0, &je);
    assert_non_null(j);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(j, "trigger"), "event_id")), "e-hyp");
    seen = 0;
    json_array_foreach(json_object_get(j, "rules"), i, e) {
        const char *id = json_string_value(json_object_get(e, "rule"));
        const char *oc = json_string_value(json_object_get(e, "outcome"));
        if (strcmp(id, "t.opened") == 0) {
            assert_string_equal(oc, "fired");
            seen++;
        } else if (strcmp(id, "t.nudge") == 0) {
            assert_string_equal(oc, "cooldown");
            seen++;
        } else if (strcmp(id, "t.sent") == 0) {
            assert_string_equal(oc, "not_triggered");
            seen++;
        }
    }
    assert_int_equal(seen, 3);
    assert_int_equal(json_array_size(json_object_get(j, "recommendations")), 1);
    json_decref(j);
    free(out);
    assert_int_equal(hget_int(f, "a", 1, "v"), version); /* nothing written */
    assert_int_equal(hget_int(f, "a", 1, "events"), NE);

    /* errors: unknown prospect (1), no --prospect (2), Redis down (1) */
    snprintf(cmd, sizeof cmd, "%s explain -c %s --prospect p-404 2>&1", td_test_touchd_path(),
             a->conf);
    out = run_cmd(cmd, &st);
    assert_int_equal(st, 1);
    assert_non_null(strstr(out, "no state for prospect 'p-404'"));
    free(out);
    snprintf(cmd, sizeof cmd, "%s explain -c %s 2>&1", td_test_touchd_path(), a->conf);
    out = run_cmd(cmd, &st);
    assert_int_equal(st, 2);
    free(out);
    int port = td_test_free_port();
    snprintf(cmd, sizeof cmd, "%s explain -c %s --redis 127.0.0.1:%d --prospect p-1 2>&1",
             td_test_touchd_path(), a->conf, port);
    out = run_cmd(cmd, &st);
    assert_int_equal(st, 1);
    assert_non_null(strstr(out, "cannot reach redis"));
    free(out);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_shadow_leaves_live_alone, setup, teardown),
        cmocka_unit_test_setup_teardown(test_explain_from_redis, setup, teardown),
    };
    if (getenv("TD_TEST_FILTER")) cmocka_set_test_filter(getenv("TD_TEST_FILTER"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
