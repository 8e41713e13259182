/*
 * test_daemon.c - `touchd run` end to end against real components: the real
 * touchd binary ($TD_TOUCHD) as a child process, a real redis-server
 * (harness.h) and librdkafka's mock cluster living in THIS process
 * (harness_kafka.h), so the broker and the group's committed offsets survive
 * kill -9 of touchd.
 *
 * The rules are a tiny test ruleset written into a temp dir (every
 * email.sent and every email.opened fires exactly one rule), so expectations
 * do not depend on the default playbook: each valid event yields exactly one
 * recommendation, whose deterministic id is taken from `touchd replay` over
 * the same events.
 *
 * Cases: events in -> recommendations out (content, ids, Redis hash);
 * malformed events -> dead-letter topic with headers, later events not
 * blocked; SIGHUP with a broken then a good ruleset; SIGTERM commits offsets
 * (restart consumes nothing twice); kill -9 mid-stream then restart; Redis
 * killed and restarted mid-stream. The last two check the contract: every
 * event applied exactly once (state counters) and every recommendation id
 * present at least once.
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
#define T_OUT "recs"
#define T_DLQ "dlq"
#define T_PLAN "plans"
#define GROUP "touchd-test"

static const char RULES_A[] =
    "settings = { expires = \"3650d\"; };\n" /* nothing expires during a test */
    "rules = (\n"
    "  { id = \"t.sent\"; doc = \"every email sent\"; on = [ \"email.sent\" ];\n"
    "    recommend = { channel = \"email\"; touch = \"follow_up\"; note = \"test\"; }; },\n"
    "  { id = \"t.opened\"; doc = \"every open\"; on = [ \"email.opened\" ];\n"
    "    when = \"email.opened >= 1\";\n"
    "    recommend = { channel = \"whatsapp\"; touch = \"micro_question\"; }; }\n"
    ");\n";

/* Same rules, another note: another ruleset hash, same recommendation ids. */
static const char RULES_B[] =
    "settings = { expires = \"3650d\"; };\n" /* nothing expires during a test */
    "rules = (\n"
    "  { id = \"t.sent\"; doc = \"every email sent\"; on = [ \"email.sent\" ];\n"
    "    recommend = { channel = \"email\"; touch = \"follow_up\"; note = \"v2\"; }; },\n"
    "  { id = \"t.opened\"; doc = \"every open\"; on = [ \"email.opened\" ];\n"
    "    when = \"email.opened >= 1\";\n"
    "    recommend = { channel = \"whatsapp\"; touch = \"micro_question\"; }; }\n"
    ");\n";

/* One recommendation per event, chosen by a field a reply resets:
 * email.unanswered (absent from the stored hash when 0). A stale stored
 * value would pick the other rule for an open. */
static const char RULES_REPLIES[] =
    "settings = { expires = \"3650d\"; };\n" /* nothing expires during a test */
    "rules = (\n"
    "  { id = \"r.sent\"; on = [ \"email.sent\" ]; when = \"email.sent >= 1\";\n"
    "    recommend = { channel = \"email\"; touch = \"follow_up\"; }; },\n"
    "  { id = \"r.open-waiting\"; on = [ \"email.opened\" ]; when = \"email.unanswered >= 1\";\n"
    "    recommend = { channel = \"whatsapp\"; touch = \"micro_question\"; }; },\n"
    "  { id = \"r.open-answered\"; on = [ \"email.opened\" ]; when = \"email.unanswered == 0\";\n"
    "    recommend = { channel = \"linkedin\"; touch = \"micro_question\"; }; },\n"
    "  { id = \"r.replied\"; on = [ \"email.replied\" ]; when = \"email.replied >= 1\";\n"
    "    recommend = { channel = \"email\"; touch = \"follow_up\"; }; }\n"
    ");\n";

/* RULES_A with timers: 90 s after each email.sent (fires before the open
 * of the next row but one, on the event path, or by the claimer at the end
 * of a stream), and an owner's timer 30 s after each first contact of one
 * of their prospects (derived events, owners' timers). */
static const char RULES_TIMERS[] =
    "settings = { expires = \"3650d\"; };\n"
    "rules = (\n"
    "  { id = \"t.sent\"; doc = \"every email sent\"; on = [ \"email.sent\" ];\n"
    "    recommend = { channel = \"email\"; touch = \"follow_up\"; note = \"test\"; }; },\n"
    "  { id = \"t.opened\"; doc = \"every open\"; on = [ \"email.opened\" ];\n"
    "    when = \"email.opened >= 1\";\n"
    "    recommend = { channel = \"whatsapp\"; touch = \"micro_question\"; }; },\n"
    "  { id = \"t.later\"; doc = \"90 s after an email\"; on = [ \"email.sent\" ];\n"
    "    after = \"90s\"; recommend = { channel = \"linkedin\"; touch = \"follow_up\"; }; },\n"
    "  { id = \"t.owner\"; doc = \"30 s after a first contact\";\n"
    "    on = [ \"owner.prospect_contacted\" ]; after = \"30s\";\n"
    "    recommend = { channel = \"email\"; touch = \"owner_nudge\"; }; }\n"
    ");\n";

static const char RULES_BROKEN[] =
    "rules = (\n"
    "  { id = \"t.sent\"; on = [ \"email.sent\" ]; when = \"emial.sent > 1\";\n"
    "    recommend = { channel = \"email\"; touch = \"follow_up\"; }; }\n"
    ");\n";

typedef struct fx {
    char dir[256];
    char rules_dir[300];
    char conf[300];
    char log[300];
    char events_file[300]; /* every valid event sent, JSON lines, for replay */
    td_test_redis redis;
    td_test_kafka kafka;
    td_test_touchd touchd;
    int reload_poll_ms;
    char group[64];  /* consumer group; GROUP unless a test changes it */
    bool serial;     /* engine.pipeline = false */
    bool replies;    /* streams: sent, opened, replied, opened (else sent, opened) */
    size_t want_wds; /* withdrawals among replay's output (replay_ids) */
    bool timers;     /* RULES_TIMERS: replay fires every timer (--advance) */
} fx;

/* ------------------------------------------------------------- helpers */

static void dump_log(const fx *f) {
    char cmd[400];
    snprintf(cmd, sizeof cmd, "tail -n 40 %s >&2", f->log);
    fprintf(stderr, "---- touchd log (%s) ----\n", f->log);
    if (system(cmd) != 0) fprintf(stderr, "(no log)\n");
}

static void write_config(fx *f) {
    char text[2048];
    int n = snprintf(text, sizeof text,
                     "kafka = {\n"
                     "  brokers = \"%s\";\n"
                     "  group_id = \"%s\";\n"
                     "  input_topics = [ \"" T_IN "\" ];\n"
                     "  output_topic = \"" T_OUT "\";\n"
                     "  dead_letter_topic = \"" T_DLQ "\"; plan_topic = \"" T_PLAN "\";\n"
                     "  consumer = { fetch_wait_max_ms = 5; session_timeout_ms = 6000;\n"
                     "               heartbeat_interval_ms = 500; };\n"
                     "  producer = { linger_ms = 0; };\n"
                     "};\n"
                     "redis = { host = \"127.0.0.1\"; port = %d; backoff_min_ms = 20;\n"
                     "          backoff_max_ms = 200; command_timeout_ms = 1000;\n"
                     "          connect_timeout_ms = 500; verify_writes = true; };\n"
                     "rules = { dir = \"%s\"; reload_poll_ms = %d; };\n"
                     "engine = { batch_max_events = 500; batch_max_ms = 20; pipeline = %s; };\n"
                     /* the events have fixed dates (October 2026) */
                     /* the events are weeks old: late ones go in the plan, so
                      * withdrawals and plans are published (and compared with
                      * replay's) */
                     "time = { max_past_age = \"36500d\"; late_policy = \"publish\"; };\n"
                     "log = { level = \"info\"; };\n",
                     f->kafka.bootstraps, f->group[0] ? f->group : GROUP, f->redis.port,
                     f->rules_dir, f->reload_poll_ms, f->serial ? "false" : "true");
    assert_int_equal(
        td_test_write_file(f->dir, "touchd.conf", text, (size_t)n, f->conf, sizeof f->conf), 0);
}

static void write_rules(fx *f, const char *text) {
    /* Write then rename, so the poller never compiles a half-written file. */
    char tmp[400], final[400];
    assert_int_equal(
        td_test_write_file(f->rules_dir, "t.rules.tmp", text, strlen(text), tmp, sizeof tmp), 0);
    snprintf(final, sizeof final, "%s/t.rules", f->rules_dir);
    assert_int_equal(rename(tmp, final), 0);
}

static int setup_fx(void **state, int reload_poll_ms) {
    fx *f = calloc(1, sizeof *f);
    if (td_test_tmpdir(f->dir, sizeof f->dir) != 0) return -1;
    snprintf(f->rules_dir, sizeof f->rules_dir, "%s/rules", f->dir);
    if (mkdir(f->rules_dir, 0755) != 0) return -1;
    snprintf(f->log, sizeof f->log, "%s/touchd.log", f->dir);
    snprintf(f->events_file, sizeof f->events_file, "%s/events.jsonl", f->dir);
    f->reload_poll_ms = reload_poll_ms;
    f->redis.appendonly = true; /* data survives a redis-server kill -9 */
    if (td_test_redis_start(&f->redis) != 0) return -1;
    const char *topics[] = {T_IN, T_OUT, T_DLQ, T_PLAN};
    if (td_test_kafka_start(&f->kafka, topics, 4, PARTS) != 0) return -1;
    *state = f;
    write_rules(f, RULES_A);
    write_config(f);
    return 0;
}

static int setup(void **state) { return setup_fx(state, 500); }
static int setup_fastpoll(void **state) { return setup_fx(state, 50); }
static int setup_nopoll(void **state) { return setup_fx(state, 0); }

static int teardown(void **state) {
    fx *f = *state;
    if (!f) return 0;
    if (f->touchd.pid > 0) {
        dump_log(f);
        td_test_touchd_kill(&f->touchd);
    }
    td_test_kafka_stop(&f->kafka);
    td_test_redis_stop(&f->redis);
    td_test_rmtree(f->dir);
    free(f);
    return 0;
}

static void start_touchd(fx *f) {
    assert_int_equal(td_test_touchd_start(&f->touchd, f->conf, f->log), 0);
}

static void append_events_file(fx *f, const char *line) {
    FILE *o = fopen(f->events_file, "a");
    assert_non_null(o);
    fprintf(o, "%s\n", line);
    fclose(o);
}

/* Event j of prospect p: even j email.sent, odd j email.opened; with
 * `replies`, j % 4 == 2 is an email.replied instead of a sent. */
static int make_event(char *buf, size_t cap, int p, int j, bool replies) {
    int minute = j % 60, hour = (j / 60) % 24, day = 1 + (j / 1440) % 28;
    bool reply = replies && j % 4 == 2;
    bool sent = !reply && j % 2 == 0;
    const char *type = reply ? "email.replied" : sent ? "email.sent" : "email.opened";
    const char *data = reply  ? ",\"data\":{\"sentiment\":\"positive\"}"
                       : sent ? ",\"data\":{\"kind\":\"value\"}"
                              : "";
    return snprintf(buf, cap,
                    "{\"id\":\"e-%d-%d\",\"type\":\"%s\",\"prospect_id\":\"p-%d\","
                    "\"occurred_at\":\"2026-10-%02dT%02d:%02d:00Z\",\"owner_id\":\"rep-%d\"%s}",
                    p, j, type, p, day, hour, minute, p % 3, data);
}

static void send_event(fx *f, int p, int j) {
    char ev[512], key[32];
    int n = make_event(ev, sizeof ev, p, j, f->replies);
    snprintf(key, sizeof key, "p-%d", p);
    assert_int_equal(td_test_kafka_produce(&f->kafka, T_IN, key, ev, (size_t)n), 0);
    append_events_file(f, ev);
}

static long long hget_int(fx *f, int p, const char *field) {
    redisReply *r = td_test_redis_cmd(&f->redis, "HGET touchd:p:{p-%d} %s", p, field);
    long long v = -1;
    if (r && r->type == REDIS_REPLY_STRING)
        v = atoll(r->str);
    else if (r && r->type == REDIS_REPLY_NIL)
        v = 0;
    if (r) freeReplyObject(r);
    return v;
}

/* Waits until prospect p's "events" counter is `want` for every p < np.
 * @returns true in time. */
static bool wait_events(fx *f, int np, const int *want, int timeout_ms) {
    int64_t end = td_test_now_ms() + timeout_ms;
    while (td_test_now_ms() < end) {
        bool all = true;
        for (int p = 0; p < np && all; p++)
            if (hget_int(f, p, "events") != want[p]) all = false;
        if (all) return true;
        td_test_sleep_ms(100);
    }
    for (int p = 0; p < np; p++)
        if (hget_int(f, p, "events") != want[p])
            fprintf(stderr, "prospect p-%d: events=%lld, want %d\n", p, hget_int(f, p, "events"),
                    want[p]);
    return false;
}

/* Expected recommendation ids: `touchd replay` over the events sent. */
typedef struct idset {
    char **v;
    size_t n;
} idset;

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void idset_add(idset *s, const char *id) {
    s->v = realloc(s->v, (s->n + 1) * sizeof *s->v);
    s->v[s->n++] = strdup(id);
}

static void idset_free(idset *s) {
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i]);
    free(s->v);
    s->v = NULL;
    s->n = 0;
}

static bool idset_has(const idset *s, const char *id) {
    return bsearch(&id, s->v, s->n, sizeof *s->v, cmp_str) != NULL;
}

/* An owner's message (prospect_id "owner:..."). With RULES_TIMERS the
 * owners' nudges are left out of the id comparison: the owner's timer is
 * re-armed by each first contact of its prospects, all at the same time on
 * four partitions, so which one armed it last (armed_by, hence the id) is
 * the consumer's order across partitions (docs/operations.md, "Event
 * time"). The owners' counters are still checked exactly. */
static bool owner_message(json_t *j) {
    const char *pid = json_string_value(json_object_get(j, "prospect_id"));
    return pid && strncmp(pid, "owner:", 6) == 0;
}

static void replay_ids(fx *f, idset *out) {
    char cmd[1200];
    /* with timers: the claimer fires the stream's last ones (overdue by
     * the wall clock: the events are dated in October) */
    snprintf(cmd, sizeof cmd, "%s replay --quiet --rules %s %s %s", td_test_touchd_path(),
             f->rules_dir, f->timers ? "--advance 60d" : "", f->events_file);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char line[8192];
    while (fgets(line, sizeof line, p)) {
        json_t *j = json_loads(line, 0, NULL);
        assert_non_null(j);
        if (f->timers && owner_message(j)) {
            json_decref(j);
            continue;
        }
        /* recommendations and withdrawals: both published at least once */
        idset_add(out, json_string_value(json_object_get(j, "id")));
        if (strcmp(json_string_value(json_object_get(j, "kind")), "withdrawal") == 0) f->want_wds++;
        json_decref(j);
    }
    assert_int_equal(pclose(p), 0);
    qsort(out->v, out->n, sizeof *out->v, cmp_str);
}

/* Checks: every expected id was published at least once; nothing else was.
 * @returns the number of duplicates (ids published more than once). */
static size_t check_recs(fx *f, td_test_reader *r, const idset *want) {
    size_t n;
    const td_test_msg *m = td_test_reader_msgs(r, &n);
    idset got = {0};
    for (size_t i = 0; i < n; i++) {
        json_t *j = json_loads(m[i].val, 0, NULL);
        assert_non_null(j);
        const char *id = json_string_value(json_object_get(j, "id"));
        assert_non_null(id);
        if (f->timers && owner_message(j)) {
            json_decref(j);
            continue;
        }
        if (!idset_has(want, id)) {
            fprintf(stderr, "unexpected recommendation %s\n", m[i].val);
            fail();
        }
        /* "<id>\t<content>": the content is everything but generated_at */
        json_object_del(j, "generated_at");
        char *text = json_dumps(j, JSON_SORT_KEYS | JSON_COMPACT);
        char *both = malloc(strlen(id) + strlen(text) + 2);
        assert_non_null(both);
        sprintf(both, "%s\t%s", id, text);
        idset_add(&got, both);
        free(both);
        free(text);
        json_decref(j);
    }
    qsort(got.v, got.n, sizeof *got.v, cmp_str);
    size_t missing = 0, dups = 0, two_contents = 0;
    for (size_t i = 0; i < want->n; i++) {
        size_t il = strlen(want->v[i]);
        size_t lo = 0, hi = got.n; /* the first "<id>\t..." at or after id */
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            if (strcmp(got.v[mid], want->v[i]) < 0)
                lo = mid + 1;
            else
                hi = mid;
        }
        if (lo == got.n || strncmp(got.v[lo], want->v[i], il) != 0 || got.v[lo][il] != '\t')
            missing++;
    }
    /* One content per id (DESIGN.md, delivery guarantees): copies of an id
     * (re-published after a crash or a redo) are byte for byte the same. */
    for (size_t i = 1; i < got.n; i++) {
        size_t il = strcspn(got.v[i], "\t");
        if (strncmp(got.v[i], got.v[i - 1], il + 1) != 0) continue;
        if (strcmp(got.v[i], got.v[i - 1]) == 0) {
            dups++;
        } else {
            if (two_contents++ < 3)
                fprintf(stderr, "one id, two contents:\n  %s\n  %s\n", got.v[i - 1], got.v[i]);
        }
    }
    assert_int_equal(two_contents, 0);
    if (missing)
        fprintf(stderr, "%zu expected recommendation ids missing (of %zu)\n", missing, want->n);
    assert_int_equal(missing, 0);
    idset_free(&got);
    (void)f;
    return dups;
}

/* ---------------------------------------------------------------- cases */

static void test_events_to_recommendations(void **state) {
    fx *f = *state;
    start_touchd(f);
    enum { NP = 5, NE = 6 };
    for (int j = 0; j < NE; j++)
        for (int p = 0; p < NP; p++)
            send_event(f, p, j);
    assert_int_equal(td_test_kafka_flush(&f->kafka, 10000), 0);

    /* Content: rule, channel, touch, key, ruleset hash, deterministic id;
     * and each rule's newer recommendation withdraws its pending one
     * (superseded), as replay does. */
    idset want = {0};
    f->want_wds = 0;
    replay_ids(f, &want);
    assert_int_equal(want.n - f->want_wds, NP * NE);
    assert_int_equal(f->want_wds, NP * (NE - 2)); /* all but each rule's first */
    td_test_reader *r = td_test_reader_new(&f->kafka, T_OUT);
    size_t got = td_test_reader_read(r, want.n, 30000);
    if (got < want.n) dump_log(f);
    assert_int_equal(got, want.n);
    size_t n;
    const td_test_msg *m = td_test_reader_msgs(r, &n);
    const char *hash = NULL;
    json_t *first = NULL;
    for (size_t i = 0; i < n; i++) {
        json_t *j = json_loads(m[i].val, 0, NULL);
        assert_non_null(j);
        const char *kind = td_test_msg_header(&m[i], "touchd-kind");
        assert_non_null(kind);
        assert_string_equal(json_string_value(json_object_get(j, "kind")), kind);
        if (strcmp(kind, "withdrawal") == 0) {
            assert_string_equal(json_string_value(json_object_get(j, "reason")), "superseded");
            assert_string_equal(m[i].key, json_string_value(json_object_get(j, "prospect_id")));
            json_decref(j);
            continue;
        }
        const char *pid = json_string_value(json_object_get(j, "prospect_id"));
        assert_string_equal(m[i].key, pid);
        const char *type =
            json_string_value(json_object_get(json_object_get(j, "trigger"), "type"));
        const char *rule = json_string_value(json_object_get(j, "rule"));
        if (strcmp(type, "email.sent") == 0) {
            assert_string_equal(rule, "t.sent");
            assert_string_equal(json_string_value(json_object_get(j, "channel")), "email");
            assert_string_equal(json_string_value(json_object_get(j, "touch")), "follow_up");
            assert_string_equal(json_string_value(json_object_get(j, "note")), "test");
        } else {
            assert_string_equal(type, "email.opened");
            assert_string_equal(rule, "t.opened");
            assert_string_equal(json_string_value(json_object_get(j, "channel")), "whatsapp");
            assert_string_equal(json_string_value(json_object_get(j, "touch")), "micro_question");
        }
        const char *rs = json_string_value(json_object_get(j, "ruleset"));
        assert_non_null(rs);
        assert_int_equal(strncmp(rs, "sha256:", 7), 0);
        if (!first) {
            first = j;
            hash = rs;
        } else {
            assert_string_equal(rs, hash);
            json_decref(j);
        }
    }
    assert_int_equal(check_recs(f, r, &want), 0); /* no duplicates in a calm run */
    /* The daemon logs the hash it serves. */
    assert_non_null(hash);
    char needle[128];
    snprintf(needle, sizeof needle, "ruleset=%s", hash ? hash : "");
    assert_true(td_test_count_in_file(f->log, needle) >= 1);
    json_decref(first);

    /* The Redis hash holds the state (HGETALL, as ops would read it). The
     * recommendations are delivered before the state is stored: wait for
     * the write of the last event first. */
    int want_ev[NP];
    for (int p = 0; p < NP; p++)
        want_ev[p] = NE;
    assert_true(wait_events(f, NP, want_ev, 20000));
    redisReply *h = td_test_redis_cmd(&f->redis, "HGETALL touchd:p:{p-1}");
    assert_non_null(h);
    assert_int_equal(h->type, REDIS_REPLY_ARRAY);
    bool seen_events = false, seen_sent = false, seen_opened = false, seen_owner = false,
         seen_v = false, seen_id = false;
    for (size_t i = 0; i + 1 < h->elements; i += 2) {
        const char *k = h->element[i]->str, *v = h->element[i + 1]->str;
        if (strcmp(k, "events") == 0)
            seen_events = strcmp(v, "6") == 0;
        else if (strcmp(k, "email.sent") == 0)
            seen_sent = strcmp(v, "3") == 0;
        else if (strcmp(k, "email.opened") == 0)
            seen_opened = strcmp(v, "3") == 0;
        else if (strcmp(k, "owner_id") == 0)
            seen_owner = strcmp(v, "rep-1") == 0;
        else if (strcmp(k, "v") == 0)
            seen_v = atoi(v) >= 1;
        else if (strcmp(k, "prospect_id") == 0)
            seen_id = strcmp(v, "p-1") == 0; /* the first write sends every field */
    }
    freeReplyObject(h);
    assert_true(seen_events && seen_sent && seen_opened && seen_owner && seen_v);
    assert_true(seen_id);

    /* Nothing on the dead-letter topic. */
    td_test_reader *d = td_test_reader_new(&f->kafka, T_DLQ);
    assert_int_equal(td_test_reader_drain(d, 500), 0);
    td_test_reader_free(d);
    td_test_reader_free(r);
    idset_free(&want);
    assert_int_equal(td_test_touchd_stop(&f->touchd, SIGTERM, 20000), 0);
}

static void test_dead_letters(void **state) {
    fx *f = *state;
    start_touchd(f);
    /* All on key p-0: one partition, so the bad ones sit between good ones. */
    static const char *bad[] = {
        "this is not json",
        ("{\"id\":\"e-x1\",\"type\":\"email.teleported\",\"prospect_id\":\"p-0\","
         "\"occurred_at\":\"2026-10-01T00:00:00Z\"}"),
        "{\"type\":\"email.sent\",\"prospect_id\":\"p-0\",\"occurred_at\":\"2026-10-01T00:00:"
        "00Z\"}",
    };
    send_event(f, 0, 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(td_test_kafka_produce(&f->kafka, T_IN, "p-0", bad[i], strlen(bad[i])), 0);
    send_event(f, 0, 1);
    send_event(f, 0, 2);
    assert_int_equal(td_test_kafka_flush(&f->kafka, 10000), 0);

    td_test_reader *d = td_test_reader_new(&f->kafka, T_DLQ);
    size_t got = td_test_reader_read(d, 3, 30000);
    if (got != 3) dump_log(f);
    assert_int_equal(got, 3);
    size_t n;
    const td_test_msg *m = td_test_reader_msgs(d, &n);
    for (size_t i = 0; i < n; i++) {
        /* In order (one partition), original bytes and key, all headers. */
        assert_string_equal(m[i].val, bad[i]);
        assert_string_equal(m[i].key, "p-0");
        const char *reason = td_test_msg_header(&m[i], "touchd-reason");
        assert_non_null(reason);
        assert_true(strlen(reason) > 0);
        assert_non_null(td_test_msg_header(&m[i], "touchd-field"));
        assert_string_equal(td_test_msg_header(&m[i], "touchd-source-topic"), T_IN);
        assert_non_null(td_test_msg_header(&m[i], "touchd-source-partition"));
        assert_string_equal(td_test_msg_header(&m[i], "touchd-source-offset"), i == 0   ? "1"
                                                                               : i == 1 ? "2"
                                                                                        : "3");
    }
    assert_string_equal(td_test_msg_header(&m[1], "touchd-field"), "type");
    assert_string_equal(td_test_msg_header(&m[2], "touchd-field"), "id");

    /* The later valid events were applied: not blocked. */
    int want[1] = {3};
    assert_true(wait_events(f, 1, want, 20000));
    td_test_reader *r = td_test_reader_new(&f->kafka, T_OUT);
    assert_int_equal(td_test_reader_read(r, 3, 20000), 3);
    td_test_reader_free(r);
    td_test_reader_free(d);
    assert_true(td_test_count_in_file(f->log, "event rejected to dead-letter topic") == 3);
    assert_int_equal(td_test_touchd_stop(&f->touchd, SIGTERM, 20000), 0);
}

static const char *rec_hash(const td_test_msg *m, char *buf, size_t cap) {
    json_t *j = json_loads(m->val, 0, NULL);
    assert_non_null(j);
    const char *rs = json_string_value(json_object_get(j, "ruleset"));
    snprintf(buf, cap, "%s", rs ? rs : "(none)");
    json_decref(j);
    return buf;
}

/* Sends prospect 0's event j and reads up to the nth message of r.
 * @returns the nth's ruleset hash, in h. */
static const char *send_rec_hash(fx *f, td_test_reader *r, int j, size_t nth, char *h, size_t cap) {
    send_event(f, 0, j);
    assert_int_equal(td_test_kafka_flush(&f->kafka, 10000), 0);
    assert_int_equal(td_test_reader_read(r, nth, 30000), nth);
    size_t n;
    return rec_hash(&td_test_reader_msgs(r, &n)[nth - 1], h, cap);
}

/* A reload just refused (SIGHUP sent): the previous ruleset, hash ha,
 * serves on: event j's recommendation, the nth message, carries ha. */
static void assert_previous_serves(fx *f, td_test_reader *r, int j, size_t nth, const char *ha) {
    char h[128];
    assert_true(
        td_test_wait_file(f->log, "reload failed, previous ruleset keeps serving", 1, 10000));
    assert_string_equal(send_rec_hash(f, r, j, nth, h, sizeof h), ha);
    assert_true(td_test_touchd_alive(&f->touchd));
}

static void test_sighup_reload(void **state) {
    fx *f = *state; /* reload_poll_ms = 0: only SIGHUP reloads */
    start_touchd(f);
    td_test_reader *r = td_test_reader_new(&f->kafka, T_OUT);
    size_t n;
    char ha[128], h[128];
    send_rec_hash(f, r, 0, 1, ha, sizeof ha);

    /* A broken ruleset: rejected with diagnostics, the old one serves on. */
    write_rules(f, RULES_BROKEN);
    kill(f->touchd.pid, SIGHUP);
    assert_previous_serves(f, r, 1, 2, ha);
    assert_true(td_test_count_in_file(f->log, "msg=\"rules diagnostic\"") >= 1);
    assert_true(td_test_count_in_file(f->log, "emial.sent") >= 1);
    assert_true(td_test_touchd_alive(&f->touchd));

    /* A good new ruleset: switches; new recommendations carry its hash. */
    write_rules(f, RULES_B);
    kill(f->touchd.pid, SIGHUP);
    assert_true(td_test_wait_file(f->log, "changed=true", 1, 10000));
    send_event(f, 0, 2);
    assert_int_equal(td_test_kafka_flush(&f->kafka, 10000), 0);
    /* the second email.sent's t.sent supersedes the first: its withdrawal
     * comes first, then the recommendation */
    assert_int_equal(td_test_reader_read(r, 4, 20000), 4);
    const td_test_msg *m = td_test_reader_msgs(r, &n);
    assert_string_equal(td_test_msg_header(&m[2], "touchd-kind"), "withdrawal");
    assert_non_null(strstr(m[2].val, "\"reason\":\"superseded\""));
    assert_string_equal(td_test_msg_header(&m[3], "touchd-kind"), "recommendation");
    rec_hash(&m[3], h, sizeof h);
    assert_string_not_equal(h, ha);
    char needle[160];
    snprintf(needle, sizeof needle, "ruleset=%s", h);
    assert_true(td_test_count_in_file(f->log, needle) >= 1);
    assert_non_null(strstr(m[3].val, "\"note\":\"v2\""));
    td_test_reader_free(r);
    assert_int_equal(td_test_touchd_stop(&f->touchd, SIGTERM, 20000), 0);
    assert_true(td_test_count_in_file(f->log, " verify_mismatches=0 ") >= 1);
}

/* Input consumed again from the start (a new consumer group: what a lost
 * commit or an offset reset looks like) changes nothing: every event is
 * skipped by the positions stored with the state, no recommendation is
 * published again. */
static void test_reconsumed_input_is_noop(void **state) {
    fx *f = *state;
    enum { NP = 3, NE = 8 };
    start_touchd(f);
    for (int j = 0; j < NE; j++)
        for (int p = 0; p < NP; p++)
            send_event(f, p, j);
    assert_int_equal(td_test_kafka_flush(&f->kafka, 10000), 0);
    int want[NP];
    for (int p = 0; p < NP; p++)
        want[p] = NE;
    assert_true(wait_events(f, NP, want, 30000));
    assert_int_equal(td_test_touchd_stop(&f->touchd, SIGTERM, 20000), 0);

    snprintf(f->group, sizeof f->group, "touchd-test-other");
    write_config(f);
    start_touchd(f);
    char needle[80];
    snprintf(needle, sizeof needle, "events=%d applied=0 skipped=%d", NP * NE, NP * NE);
    /* the progress line is written at stop: wait for the consumption first */
    assert_true(td_test_wait_file(f->log, "partitions assigned", 2, 30000));
    td_test_sleep_ms(1500);
    assert_int_equal(td_test_touchd_stop(&f->touchd, SIGTERM, 20000), 0);
    if (td_test_count_in_file(f->log, needle) != 1) dump_log(f);
    assert_int_equal(td_test_count_in_file(f->log, needle), 1);
    for (int p = 0; p < NP; p++)
        assert_int_equal(hget_int(f, p, "events"), NE);
    /* nothing new: the first run's recommendations and withdrawals only */
    idset ids = {0};
    f->want_wds = 0;
    replay_ids(f, &ids);
    td_test_reader *r = td_test_reader_new(&f->kafka, T_OUT);
    assert_int_equal(td_test_reader_drain(r, 1000), NP * NE + f->want_wds);
    assert_int_equal(ids.n, NP * NE + f->want_wds);
    idset_free(&ids);
    td_test_reader_free(r);
}

static void test_rules_dir_poll(void **state) {
    fx *f = *state; /* reload_poll_ms = 500 */
    start_touchd(f);
    assert_true(td_test_wait_file(f->log, "touchd running", 1, 20000));
    write_rules(f, RULES_B);
    assert_true(td_test_wait_file(f->log, "trigger=change", 1, 10000));
    assert_true(td_test_wait_file(f->log, "changed=true", 1, 10000));
    assert_int_equal(td_test_touchd_stop(&f->touchd, SIGTERM, 20000), 0);
}

/* The hash `touchd check` gives the rules directory as it is now. */
static void check_hash(fx *f, char *out, size_t cap) {
    char cmd[800], line[1024];
    snprintf(cmd, sizeof cmd, "%s check %s 2>&1", td_test_touchd_path(), f->rules_dir);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    out[0] = '\0';
    while (fgets(line, sizeof line, p)) {
        char *h = strstr(line, "sha256:");
        if (h) snprintf(out, cap, "%.71s", h);
    }
    assert_int_equal(pclose(p), 0);
    assert_int_equal(strlen(out), 71);
}

/* `cat new > t.rules` rewrites the file in place: it truncates it, then
 * writes it. Here the write comes 150 ms after the truncation, the poll
 * looks every 50 ms, rules.settle_ms is the default 500: the empty file is
 * never compiled, the whole one is, once. */
static void test_rewrite_in_place_settles(void **state) {
    fx *f = *state; /* reload_poll_ms = 50 */
    start_touchd(f);
    assert_true(td_test_wait_file(f->log, "touchd running", 1, 20000));
    char path[400], want[80], needle[160];
    snprintf(path, sizeof path, "%s/t.rules", f->rules_dir);
    FILE *o = fopen(path, "w"); /* the truncation */
    assert_non_null(o);
    assert_int_equal(fclose(o), 0);
    td_test_sleep_ms(150);
    o = fopen(path, "a");
    assert_non_null(o);
    assert_int_equal(fputs(RULES_B, o) >= 0, 1);
    assert_int_equal(fclose(o), 0);
    assert_true(td_test_wait_file(f->log, "changed=true", 1, 10000));
    check_hash(f, want, sizeof want);
    snprintf(needle, sizeof needle, "msg=\"ruleset active\" ruleset=%s rules=2 ", want);
    assert_int_equal(td_test_count_in_file(f->log, needle), 1);
    assert_true(td_test_count_in_file(f->log, "rules changed, waiting for them to settle") >= 1);
    /* one reload, and nothing refused: the empty state was not compiled */
    assert_int_equal(td_test_count_in_file(f->log, "msg=\"reloading rules\""), 1);
    assert_int_equal(td_test_count_in_file(f->log, "rules rejected"), 0);
    assert_int_equal(td_test_count_in_file(f->log, "E115"), 0);
    assert_int_equal(td_test_touchd_stop(&f->touchd, SIGTERM, 20000), 0);
}

/* A rule in a file of its own, and a guard in another that names it. */
static const char RULES_EXTRA[] =
    "rules = ( { id = \"t.extra\"; on = [ \"email.replied\" ];\n"
    "  recommend = { channel = \"call\"; touch = \"call_proposal\"; }; } );\n";
static const char RULES_GUARD[] =
    "rules = (\n"
    "  { id = \"g.after-extra\"; reason = \"spacing\";\n"
    "    block = \"rec.rule == 't.extra' || since(last_fired('t.extra')) < 1h\"; "
    "});\n";

/* A reload that removes a rule another file still names is refused, with
 * the name's file:line:col, and the previous ruleset serves on; removing
 * the name too goes through, and the log line says what it removed. */
static void test_reload_keeps_referenced_rules(void **state) {
    fx *f = *state; /* reload_poll_ms = 0: only SIGHUP reloads */
    char gpath[400], xpath[400];
    assert_int_equal(td_test_write_file(f->rules_dir, "g.rules", RULES_GUARD, strlen(RULES_GUARD),
                                        gpath, sizeof gpath),
                     0);
    assert_int_equal(td_test_write_file(f->rules_dir, "x.rules", RULES_EXTRA, strlen(RULES_EXTRA),
                                        xpath, sizeof xpath),
                     0);
    start_touchd(f);
    td_test_reader *r = td_test_reader_new(&f->kafka, T_OUT);
    char ha[128], needle[600];
    send_rec_hash(f, r, 0, 1, ha, sizeof ha);
    snprintf(needle, sizeof needle, "ruleset=%s rules=4 ", ha);
    assert_int_equal(td_test_count_in_file(f->log, needle), 1);

    /* x.rules goes, g.rules still names t.extra: refused at the names */
    assert_int_equal(unlink(xpath), 0);
    kill(f->touchd.pid, SIGHUP);
    assert_previous_serves(f, r, 1, 2, ha);
    snprintf(needle, sizeof needle, "file=%s line=3 col=27 code=E116 ", gpath);
    assert_int_equal(td_test_count_in_file(f->log, needle), 1);
    snprintf(needle, sizeof needle, "file=%s line=3 col=57 code=E116 ", gpath);
    assert_int_equal(td_test_count_in_file(f->log, needle), 1);
    assert_int_equal(td_test_count_in_file(f->log, "no rule 't.extra'"), 2);
    assert_int_equal(td_test_count_in_file(f->log, "reload removes rules"), 0);

    /* the guard goes too: accepted; what went is logged, once */
    assert_int_equal(unlink(gpath), 0);
    assert_int_equal(td_test_count_in_file(f->log, "changed=true"), 0);
    kill(f->touchd.pid, SIGHUP);
    assert_true(td_test_wait_file(f->log, "changed=true", 1, 10000));
    assert_true(td_test_wait_file(f->log, "reload removes rules", 1, 5000));
    assert_int_equal(td_test_count_in_file(f->log, "level=warn msg=\"reload removes rules\""), 1);
    assert_int_equal(td_test_count_in_file(f->log, " rules_removed=2 files_removed=2 "
                                                   "rules=g.after-extra,t.extra "
                                                   "files=g.rules,x.rules "),
                     1);
    td_test_reader_free(r);
    assert_int_equal(td_test_touchd_stop(&f->touchd, SIGTERM, 20000), 0);
}

static void test_sigterm_commits(void **state) {
    fx *f = *state;
    enum { NP = 4, NE = 10 };
    start_touchd(f);
    for (int j = 0; j < NE; j++)
        for (int p = 0; p < NP; p++)
            send_event(f, p, j);
    assert_int_equal(td_test_kafka_flush(&f->kafka, 10000), 0);
    int want[NP];
    for (int p = 0; p < NP; p++)
        want[p] = NE;
    if (!wait_events(f, NP, want, 30000)) dump_log(f);
    assert_int_equal(td_test_touchd_stop(&f->touchd, SIGTERM, 20000), 0);
    assert_true(td_test_count_in_file(f->log, "offsets committed") >= 1);

    int64_t committed[PARTS], end[PARTS];
    assert_int_equal(td_test_kafka_committed(&f->kafka, GROUP, T_IN, PARTS, committed), 0);
    assert_int_equal(td_test_kafka_end_offsets(&f->kafka, T_IN, PARTS, end), 0);
    for (int p = 0; p < PARTS; p++)
        assert_int_equal(committed[p], end[p] > 0 ? end[p] : committed[p]);

    /* Restart: only the new events are consumed. */
    start_touchd(f);
    for (int p = 0; p < NP; p++)
        send_event(f, p, NE);
    assert_int_equal(td_test_kafka_flush(&f->kafka, 10000), 0);
    for (int p = 0; p < NP; p++)
        want[p] = NE + 1;
    assert_true(wait_events(f, NP, want, 30000));
    assert_int_equal(td_test_touchd_stop(&f->touchd, SIGTERM, 20000), 0);
    /* The second run's final progress line: NP events consumed, none skipped. */
    char needle[64];
    snprintf(needle, sizeof needle, "events=%d applied=%d skipped=0", NP, NP);
    if (td_test_count_in_file(f->log, needle) != 1) dump_log(f);
    assert_int_equal(td_test_count_in_file(f->log, needle), 1);
    for (int p = 0; p < NP; p++) {
        assert_int_equal(hget_int(f, p, "email.sent"), (NE + 1 + 1) / 2);
        assert_int_equal(hget_int(f, p, "email.opened"), (NE + 1) / 2);
    }
}

/* Streams NP x NE events (NE even). When about a third of the stream is out
 * and touchd is visibly busy with it, `down` is called (kill something); the
 * stream goes on for DOWN_ROWS rows (slowly) while it is down, then `up`
 * brings it back. Then the contract is checked. Narrow streams (few
 * prospects) make small writes (the store script); wide ones make batches
 * of more than 64 prospects (WATCH + MULTI/EXEC writes). */
static void check_exactly_once(fx *f, td_test_reader *r, int NP, int NE);
static long long log_last_value(fx *f, const char *key);

/* Owner states exactly once: each of the NP prospects' first email
 * derives one owner.prospect_contacted for its seller (rep-<p % 3>). */
static void check_owners(fx *f, int NP) {
    for (int o = 0; o < 3; o++) {
        long long want_owner = 0;
        for (int p = 0; p < NP; p++)
            want_owner += p % 3 == o;
        redisReply *x = td_test_redis_cmd(&f->redis, "HGET touchd:p:{owner:rep-%d} events", o);
        assert_non_null(x);
        long long got_owner = x->type == REDIS_REPLY_STRING ? atoll(x->str) : 0;
        freeReplyObject(x);
        if (got_owner != want_owner)
            fprintf(stderr, "owner:rep-%d: events=%lld, want %lld\n", o, got_owner, want_owner);
        assert_int_equal(got_owner, want_owner);
    }
}

static void stream_with_disruption(fx *f, int NP, int NE, int DOWN_ROWS, void (*down)(fx *f),
                                   void (*up)(fx *f)) {
    start_touchd(f);
    /* Stream into a running consumer, not into a backlog. */
    assert_true(td_test_wait_file(f->log, "partitions assigned", 1, 30000));
    td_test_reader *r = td_test_reader_new(&f->kafka, T_OUT);
    int down_at = -1;
    int64_t deadline = td_test_now_ms() + 60000;
    for (int j = 0; j < NE; j++) {
        for (int p = 0; p < NP; p++)
            send_event(f, p, j);
        rd_kafka_poll(f->kafka.producer, 0);
        /* a stream, not a burst: ~4000 events/s, slower while down */
        td_test_sleep_ms(down_at >= 0 && j < down_at + DOWN_ROWS ? 25 : 2);
        if (down_at < 0 && j >= NE / 3) {
            /* Wait until touchd is really in the middle of the stream. */
            while (td_test_reader_read(r, (size_t)(NP * j) / 2, 100) < (size_t)(NP * j) / 2 &&
                   td_test_now_ms() < deadline) {
            }
            down(f);
            down_at = j;
        } else if (down_at >= 0 && j == down_at + DOWN_ROWS) {
            up(f);
        }
    }
    check_exactly_once(f, r, NP, NE);
}

/* The plan topic's last value of each prospect is its plan in Redis: the
 * same pending ids (a tombstone: none pending), the same version. */
static void check_plans(fx *f, int NP) {
    td_test_reader *r = td_test_reader_new(&f->kafka, T_PLAN);
    td_test_reader_read(r, (size_t)NP, 20000);
    td_test_reader_drain(r, 500);
    size_t n;
    const td_test_msg *m = td_test_reader_msgs(r, &n);
    for (int p = 0; p < NP; p++) {
        char key[32];
        snprintf(key, sizeof key, "p-%d", p);
        const td_test_msg *last = NULL;
        for (size_t i = 0; i < n; i++) /* one partition per key: offset order */
            if (m[i].key && strcmp(m[i].key, key) == 0) last = &m[i];
        assert_non_null(last);
        assert_string_equal(td_test_msg_header(last, "touchd-kind"), "plan");
        /* Redis: pending.<id> fields and plan_version */
        idset in_redis = {0};
        redisReply *rep = td_test_redis_cmd(&f->redis, "HGETALL touchd:p:{%s}", key);
        assert_non_null(rep);
        long long version = 0;
        for (size_t i = 0; i + 1 < rep->elements; i += 2) {
            const char *k = rep->element[i]->str;
            if (strncmp(k, "pending.", 8) == 0) idset_add(&in_redis, k + 8);
            if (strcmp(k, "plan_version") == 0) version = atoll(rep->element[i + 1]->str);
        }
        freeReplyObject(rep);
        qsort(in_redis.v, in_redis.n, sizeof *in_redis.v, cmp_str);
        if (last->vlen == 0) { /* a tombstone */
            assert_int_equal(in_redis.n, 0);
        } else {
            json_t *j = json_loads(last->val, 0, NULL);
            assert_non_null(j);
            assert_int_equal(json_integer_value(json_object_get(j, "version")), version);
            json_t *pend = json_object_get(j, "pending");
            assert_int_equal(json_array_size(pend), in_redis.n);
            for (size_t i = 0; i < json_array_size(pend); i++)
                assert_true(idset_has(
                    &in_redis, json_string_value(json_object_get(json_array_get(pend, i), "id"))));
            json_decref(j);
        }
        idset_free(&in_redis);
    }
    fprintf(stderr,
            "[ info ] plans: %zu messages; the last of each of %d prospects is its plan "
            "in Redis\n",
            n, NP);
    td_test_reader_free(r);
}

/* After a stream of NE rows over NP prospects: every counter equals what
 * was sent (exactly once) and every expected recommendation id was
 * published (at least once); then touchd stops cleanly. Frees r. */
static void check_exactly_once(fx *f, td_test_reader *r, int NP, int NE) {
    assert_int_equal(td_test_kafka_flush(&f->kafka, 10000), 0);
    int *want = calloc((size_t)NP, sizeof *want);
    assert_non_null(want);
    for (int p = 0; p < NP; p++)
        want[p] = NE;
    bool ok = wait_events(f, NP, want, 90000);
    free(want);
    if (!ok) dump_log(f);
    assert_true(ok);
    /* redis.verify_writes read back every hash touchd wrote: each held
     * exactly the state touchd computed. A write against a wrong base
     * leaves a difference the moment it lands, whether or not a later
     * write or reload would have exposed it (first, so it names the
     * prospect and field when something below fails for that reason). */
    if (td_test_count_in_file(f->log, "verify_writes: redis holds") != 0) dump_log(f);
    assert_int_equal(td_test_count_in_file(f->log, "verify_writes: redis holds"), 0);
    /* Exactly once: every counter equals what was sent, per prospect. */
    for (int p = 0; p < NP; p++) {
        assert_int_equal(hget_int(f, p, "events"), NE);
        if (f->replies) {
            /* NE % 4 == 0: the last row is an open after a reply */
            assert_int_equal(hget_int(f, p, "email.sent"), NE / 4);
            assert_int_equal(hget_int(f, p, "email.opened"), NE / 2);
            assert_int_equal(hget_int(f, p, "email.replied"), NE / 4);
            /* 0 is not stored: the last reply's write deleted the field */
            assert_int_equal(hget_int(f, p, "email.unanswered"), 0);
        } else {
            assert_int_equal(hget_int(f, p, "email.opened"), NE / 2);
            assert_int_equal(hget_int(f, p, "email.sent"), NE / 2);
        }
    }
    check_owners(f, NP);
    /* At least once: every expected recommendation id was published. */
    idset want_ids = {0};
    f->want_wds = 0;
    replay_ids(f, &want_ids);
    if (f->timers) /* one per event, one per email (NE / 2); owners' apart */
        assert_int_equal(want_ids.n - f->want_wds, (size_t)NP * NE + (size_t)NP * NE / 2);
    else
        assert_int_equal(want_ids.n - f->want_wds, (size_t)NP * NE);
    assert_true(f->want_wds > 0); /* each rule's newer one supersedes the pending one */
    td_test_reader_read(r, want_ids.n, 30000);
    td_test_reader_drain(r, 500);
    size_t dups = check_recs(f, r, &want_ids);
    size_t n;
    td_test_reader_msgs(r, &n);
    fprintf(stderr, "[ info ] %zu events, %zu recommendations published (%zu re-published)\n",
            (size_t)NP * NE, n, dups);
    idset_free(&want_ids);
    td_test_reader_free(r);
    assert_int_equal(td_test_touchd_stop(&f->touchd, SIGTERM, 20000), 0);
    assert_true(td_test_count_in_file(f->log, " verify_mismatches=0 ") >= 1);
    check_plans(f, NP);
}

static void kill_touchd(fx *f) {
    td_test_touchd_kill(&f->touchd); /* kill -9 mid-stream */
    fprintf(stderr, "[ info ] touchd killed with SIGKILL\n");
}

static void restart_touchd(fx *f) {
    start_touchd(f);
    fprintf(stderr, "[ info ] touchd restarted\n");
}

static void test_kill9_restart(void **state) {
    fx *f = *state;
    stream_with_disruption(f, 12, 150, 40, kill_touchd, restart_touchd);
    assert_true(td_test_count_in_file(f->log, "touchd starting") == 2);
}

static void test_kill9_restart_wide(void **state) {
    fx *f = *state;
    stream_with_disruption(f, 300, 20, 5, kill_touchd, restart_touchd);
    assert_true(td_test_count_in_file(f->log, "touchd starting") == 2);
}

/* The same with timers firing before events, by the claimer, and for the
 * owners (whose states are derived): every counter exact, owners' too. */
static void test_kill9_restart_timers(void **state) {
    fx *f = *state;
    f->timers = true;
    write_rules(f, RULES_TIMERS);
    stream_with_disruption(f, 12, 150, 40, kill_touchd, restart_touchd);
    assert_true(td_test_count_in_file(f->log, "touchd starting") == 2);
    long long fired = log_last_value(f, "timers_fired");
    fprintf(stderr, "[ info ] timers_fired=%lld (last run) timers_before_events=%lld\n", fired,
            log_last_value(f, "timers_before_events"));
    assert_true(fired > 0);
}

static void kill_redis(fx *f) {
    td_test_redis_kill(&f->redis);
    fprintf(stderr, "[ info ] redis-server killed with SIGKILL\n");
}

static void restart_redis(fx *f) {
    assert_int_equal(td_test_redis_restart(&f->redis), 0);
    fprintf(stderr, "[ info ] redis-server restarted\n");
}

static void test_redis_restart(void **state) {
    fx *f = *state;
    stream_with_disruption(f, 12, 150, 40, kill_redis, restart_redis);
    assert_true(td_test_count_in_file(f->log, "redis unavailable, holding the batch") >= 1);
    assert_true(td_test_count_in_file(f->log, "redis available again") >= 1);
    assert_true(td_test_count_in_file(f->log, "touchd starting") == 1);
}

static void test_redis_restart_wide(void **state) {
    fx *f = *state;
    stream_with_disruption(f, 300, 20, 5, kill_redis, restart_redis);
    assert_true(td_test_count_in_file(f->log, "redis unavailable, holding the batch") >= 1);
    assert_true(td_test_count_in_file(f->log, "redis available again") >= 1);
    assert_true(td_test_count_in_file(f->log, "touchd starting") == 1);
}

/* The value of `key=` in the last line of the log holding it, or -1. */
static long long log_last_value(fx *f, const char *key) {
    FILE *in = fopen(f->log, "r");
    if (!in) return -1;
    char line[8192];
    long long v = -1;
    size_t kl = strlen(key);
    while (fgets(line, sizeof line, in)) {
        for (char *p = strstr(line, key); p; p = strstr(p + 1, key))
            if ((p == line || p[-1] == ' ') && p[kl] == '=') v = atoll(p + kl + 1);
    }
    fclose(in);
    return v;
}

/*
 * Another writer changes the states while touchd streams through them (as
 * another instance's timer path or a rebalance would): every such write
 * makes touchd's next compare-and-set conflict. The conflicts must be
 * recomputed, and with the pipeline the batch computed on top of a
 * conflicted one must be recomputed too, without applying any event twice.
 */
static void stream_with_writer(fx *f, int NP, int NE, int bumps) {
    start_touchd(f);
    assert_true(td_test_wait_file(f->log, "partitions assigned", 1, 30000));
    td_test_reader *r = td_test_reader_new(&f->kafka, T_OUT);
    int64_t deadline = td_test_now_ms() + 60000;
    bool writing = false;
    for (int j = 0; j < NE; j++) {
        for (int p = 0; p < NP; p++)
            send_event(f, p, j);
        rd_kafka_poll(f->kafka.producer, 0);
        td_test_sleep_ms(3); /* ~4000 events/s: touchd works through the stream */
        if (!writing && j >= NE / 5) {
            /* start writing once touchd is really in the stream */
            while (td_test_reader_read(r, (size_t)(NP * j) / 2, 100) < (size_t)(NP * j) / 2 &&
                   td_test_now_ms() < deadline) {
            }
            writing = true;
        }
        if (writing && j < NE - NE / 5) {
            /* the other writer: a version bump (a write that changes
             * nothing touchd counts) on `bumps` prospects */
            for (int k = 0; k < bumps; k++) {
                redisReply *x = td_test_redis_cmd(&f->redis, "HINCRBY touchd:p:{p-%d} v 1",
                                                  (j * 7 + k * 3) % NP);
                assert_non_null(x);
                assert_int_equal(x->type, REDIS_REPLY_INTEGER);
                freeReplyObject(x);
            }
        }
    }
    check_exactly_once(f, r, NP, NE);
    /* The counters count each event once, however often its group was
     * recomputed (the final progress line, logged at the stop). */
    long long applied = log_last_value(f, "applied");
    fprintf(stderr, "[ info ] applied=%lld skipped=%lld duplicates=%lld\n", applied,
            log_last_value(f, "skipped"), log_last_value(f, "duplicates"));
    assert_int_equal(applied, (long long)NP * NE);
    assert_int_equal(log_last_value(f, "skipped"), 0);
    assert_int_equal(log_last_value(f, "duplicates"), 0);
    if (log_last_value(f, "conflicts") <= 0) {
        char cmd[400];
        snprintf(cmd, sizeof cmd, "grep -v 'level=debug' %s | tail -n 5 >&2", f->log);
        if (system(cmd) != 0) fprintf(stderr, "(no log)\n");
    }
    assert_true(log_last_value(f, "conflicts") > 0);
}

static void test_concurrent_writer(void **state) {
    fx *f = *state;
    stream_with_writer(f, 12, 200, 4);
    long long redone = log_last_value(f, "redone");
    fprintf(stderr, "[ info ] conflicts=%lld redone=%lld\n", log_last_value(f, "conflicts"),
            redone);
    /* the path of a conflict under a batch computed on top of it ran */
    assert_true(redone > 0);
}

/* The same with replies: every fourth row a reply makes email.unanswered
 * 0, which its write must delete from the hash. A state written against
 * the wrong base leaves the old count; read back at a reload (the writer
 * forces many), the next open picks the other rule: an id `touchd replay`
 * does not expect, but only if a reload happens to read it back. The
 * daemon runs with redis.verify_writes, which reads back each write as it
 * lands (check_exactly_once asserts no difference was logged). Planted on
 * purpose (redone groups keeping their stale base instead of adopting the
 * settled batch's), the bug failed this test in 3 runs of 3, once through
 * the read-back alone; without the read-back, the ids caught a similar
 * plant in 1 run of 3. test_concurrent_writer, whose writer only bumps
 * versions, cannot tell: there a stale base still equals Redis' fields. */
static void test_concurrent_writer_replies(void **state) {
    fx *f = *state;
    f->replies = true;
    write_rules(f, RULES_REPLIES);
    stream_with_writer(f, 12, 200, 4);
    fprintf(stderr, "[ info ] conflicts=%lld redone=%lld\n", log_last_value(f, "conflicts"),
            log_last_value(f, "redone"));
    assert_true(log_last_value(f, "redone") > 0);
}

/*
 * New prospects all through the stream, with a writer on the ones being
 * contacted: 240 prospects of 3 sellers start at rows 0, 2, ..., 18 (each
 * with an email, its first contact), and after each row the writer bumps
 * the versions of all of them, so writes conflict, first emails' among
 * them, and are recomputed, deriving the owner's event again. An
 * owner receives 80 derived events, most in batches of dozens: the owner's
 * dedup (engine.dedup_window) must drop every re-derived one, however many
 * other derived events came between.
 */
static void test_concurrent_writer_new_prospects(void **state) {
    fx *f = *state;
    enum { NP = 240, NE = 20, WAVES = NE / 2 };
    start_touchd(f);
    assert_true(td_test_wait_file(f->log, "partitions assigned", 1, 30000));
    td_test_reader *r = td_test_reader_new(&f->kafka, T_OUT);
    int want[NP];
    size_t total = 0;
    for (int p = 0; p < NP; p++) {
        want[p] = NE - 2 * (p % WAVES);
        total += (size_t)want[p];
    }
    for (int j = 0; j < NE; j++) {
        for (int p = 0; p < NP; p++)
            if (j >= 2 * (p % WAVES)) send_event(f, p, j);
        rd_kafka_poll(f->kafka.producer, 0);
        td_test_sleep_ms(25); /* touchd keeps up: the bumps fall between its writes */
        for (int p = 0; p < NP; p++) {
            redisReply *x = td_test_redis_cmd(&f->redis, "HINCRBY touchd:p:{p-%d} v 1", p);
            assert_non_null(x);
            freeReplyObject(x);
        }
    }
    assert_int_equal(td_test_kafka_flush(&f->kafka, 10000), 0);
    bool ok = wait_events(f, NP, want, 90000);
    if (!ok) dump_log(f);
    assert_true(ok);
    for (int p = 0; p < NP; p++) {
        assert_int_equal(hget_int(f, p, "email.sent"), want[p] / 2);
        assert_int_equal(hget_int(f, p, "email.opened"), want[p] / 2);
    }
    check_owners(f, NP);
    idset want_ids = {0};
    f->want_wds = 0;
    replay_ids(f, &want_ids);
    assert_int_equal(want_ids.n - f->want_wds, total);
    td_test_reader_read(r, want_ids.n, 30000);
    td_test_reader_drain(r, 500);
    size_t dups = check_recs(f, r, &want_ids);
    idset_free(&want_ids);
    td_test_reader_free(r);
    assert_int_equal(td_test_touchd_stop(&f->touchd, SIGTERM, 20000), 0);
    long long conflicts = log_last_value(f, "conflicts");
    fprintf(stderr,
            "[ info ] %zu events, %zu re-published, conflicts=%lld redone=%lld "
            "owner_events=%lld owner_duplicates=%lld\n",
            total, dups, conflicts, log_last_value(f, "redone"), log_last_value(f, "owner_events"),
            log_last_value(f, "owner_duplicates"));
    assert_true(conflicts > 0);
    /* owner_duplicates (first contacts recomputed after their owner was
     * stored) depends on timing: 0 to 13 in runs so far, not asserted */
    assert_true(td_test_count_in_file(f->log, " verify_mismatches=0 ") >= 1);
}

static void test_concurrent_writer_serial(void **state) {
    fx *f = *state;
    f->serial = true;
    write_config(f);
    stream_with_writer(f, 12, 200, 4);
    assert_int_equal(log_last_value(f, "redone"), 0);
    assert_true(td_test_count_in_file(f->log, "pipeline=false") == 1);
}

/* redis.verify_writes in the daemon: a writer other than touchd sets a
 * field without bumping the version, so touchd's next write of that
 * prospect (its cached state, the right version) succeeds without that
 * field; the read back finds it, logs key and field, and counts it. */
static void test_verify_writes_reports(void **state) {
    fx *f = *state;
    start_touchd(f);
    assert_true(td_test_wait_file(f->log, "partitions assigned", 1, 30000));
    send_event(f, 0, 0);
    int want = 1;
    assert_true(wait_events(f, 1, &want, 30000));
    redisReply *x = td_test_redis_cmd(&f->redis, "HSET touchd:p:{p-0} whatsapp.sent 5");
    assert_non_null(x);
    freeReplyObject(x);
    send_event(f, 0, 1);
    want = 2;
    assert_true(wait_events(f, 1, &want, 30000));
    assert_true(td_test_wait_file(f->log, "verify_writes: redis holds", 1, 10000));
    assert_true(td_test_count_in_file(f->log,
                                      "touchd:p:{p-0}: field \\\"whatsapp.sent\\\": redis holds "
                                      "\\\"5\\\", touchd has no such field") >= 1);
    assert_int_equal(td_test_touchd_stop(&f->touchd, SIGTERM, 20000), 0);
    /* 1, or 2 if the field landed before the first write's read back */
    long long n = log_last_value(f, "verify_mismatches");
    assert_true(n >= 1 && n <= 2);
}

/* Redis wants a password the configuration does not give: touchd says so
 * and exits 4 at start, instead of logging "redis connected" and holding
 * every batch on NOAUTH. */
static void test_redis_password_missing_fails_at_start(void **state) {
    fx *f = *state;
    redisReply *rep = td_test_redis_cmd(&f->redis, "CONFIG SET requirepass %s", "s3cret-Pa55");
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_STATUS);
    freeReplyObject(rep);
    start_touchd(f);
    bool said = td_test_wait_file(f->log, "msg=\"redis refuses commands at start\"", 1, 20000);
    int rc = td_test_touchd_stop(&f->touchd, SIGTERM, 10000);
    if (!said) dump_log(f);
    assert_true(said);
    assert_int_equal(rc, 4);
    assert_true(td_test_count_in_file(f->log, "NOAUTH") >= 1);
    assert_int_equal(td_test_count_in_file(f->log, "msg=\"touchd running\""), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_events_to_recommendations, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dead_letters, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sighup_reload, setup_nopoll, teardown),
        cmocka_unit_test_setup_teardown(test_rules_dir_poll, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rewrite_in_place_settles, setup_fastpoll, teardown),
        cmocka_unit_test_setup_teardown(test_reload_keeps_referenced_rules, setup_nopoll, teardown),
        cmocka_unit_test_setup_teardown(test_sigterm_commits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reconsumed_input_is_noop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kill9_restart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kill9_restart_timers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redis_restart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kill9_restart_wide, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redis_restart_wide, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_writer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_writer_serial, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_writer_new_prospects, setup, teardown),
        cmocka_unit_test_setup_teardown(test_verify_writes_reports, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redis_password_missing_fails_at_start, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_writer_replies, setup, teardown),
    };
    /* TD_TEST_FILTER=test_kill9* runs a subset (cmocka glob). */
    if (getenv("TD_TEST_FILTER")) cmocka_set_test_filter(getenv("TD_TEST_FILTER"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
