/*
 * test_daemon_replay.c - the daemon and `touchd replay` give the same
 * recommendations for the same stream (DESIGN.md "Time (contract)": only
 * generated_at differs). The real touchd binary ($TD_TOUCHD) runs the
 * default rules (rules/) against a real redis-server and librdkafka's mock
 * cluster in THIS process; `touchd replay --rules rules` runs the same file.
 *
 * Streams:
 *   - examples/sample.jsonl (the demo's), rebased by whole weeks so that its
 *     last event is in the last week of the wall clock: order, spacing and
 *     weekdays kept (its truncated line is rejected by both);
 *   - a generated stream: ~10 000 events of 860 prospects and 6 sellers
 *     over the past week, in time order (prospect updates, emails, opens,
 *     replies, LinkedIn, calls, WhatsApp, meetings, gifts, stage changes,
 *     a few events delivered twice), with the default rules' timers
 *     (silence, ghosting, hygiene, the owners' daily nudge);
 *   - the same stream dated a month earlier (a backfill), read with the
 *     claimer live: the event-time horizon must hold every overdue timer
 *     until the events before it are applied.
 *
 * How the two are made comparable. Replay fires a timer when a later event
 * passes its due time; the daemon fires it before the first event of its
 * prospect that passes its due time (the event path), or when the wall
 * clock passes it (the claimer). So:
 *   1. the daemon consumes the whole stream with its claimer idle
 *      (timers.poll_ms = 60000: one poll at start, when nothing is stored):
 *      every timer due before a later event of its prospect fires on the
 *      event path; then it stops (SIGTERM). The backfill case runs this
 *      phase with a live claimer (50 ms) instead, held back by the horizon;
 *   2. at wall time T (the cut), it is started again with a 50 ms claimer,
 *      which fires every timer due by then;
 *   3. replay runs with --advance (T - the last event), so it fires every
 *      timer due by T;
 *   4. the daemon's recommendations whose trigger is a timer due after T
 *      (armed during the stream, come due while phase 2 runs) are left out;
 *      the rest must be exactly replay's: the same set of objects, all but
 *      generated_at (id, rule, touch, not_before, trigger, because...).
 * The input topic has one partition, so the daemon consumes the file's
 * order: the owners' states (owner:rep-*) see the events derived from
 * different prospects in that order, as replay does. Replay runs in a
 * directory without config/holidays: the daemon has no holiday calendar
 * (weekends only), replay's default would load the repository's.
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

#include <jansson.h>
#include <cmocka.h>

#include "harness.h"
#include "harness_kafka.h"
#include "td_time.h"
#include "td_timers.h"

#define T_IN "events"
#define T_OUT "recs"
#define T_DLQ "dlq"
#define GROUP "touchd-equivalence"
#define SHARDS 64
#define GEN_PROSPECTS 860 /* about 10,000 generated events */

typedef struct fx {
    td_test_world w; /* first: td_test_world_teardown */
    char events[300], rules[512];
} fx;

static int setup(void **state) {
    fx *f = calloc(1, sizeof *f);
    const char *topics[] = {T_IN, T_OUT, T_DLQ};
    if (!f || td_test_world_start(&f->w, topics, 3, 1) != 0) return -1;
    *state = f;
    snprintf(f->events, sizeof f->events, "%s/events.jsonl", f->w.dir);
    snprintf(f->rules, sizeof f->rules, "%s/rules", td_test_source_dir());
    return 0;
}

/* timers.lease_ms of the daemon: short in the kill case, so that the dead
 * instance's claims come back while the backlog is still being read */
static int g_lease_ms = 30000;

/* The daemon's configuration, with the claimer polling every poll_ms. */
static void write_config(fx *f, int poll_ms) {
    char text[2048];
    int n = snprintf(text, sizeof text,
                     "kafka = {\n"
                     "  brokers = \"%s\"; group_id = \"" GROUP "\";\n"
                     "  input_topics = [ \"" T_IN "\" ]; output_topic = \"" T_OUT "\";\n"
                     "  dead_letter_topic = \"" T_DLQ "\";\n"
                     "  consumer = { fetch_wait_max_ms = 5; session_timeout_ms = 6000;\n"
                     "               heartbeat_interval_ms = 500; };\n"
                     "  producer = { linger_ms = 0; };\n"
                     "};\n"
                     "redis = { host = \"127.0.0.1\"; port = %d; backoff_min_ms = 20;\n"
                     "          backoff_max_ms = 200; verify_writes = true; };\n"
                     "rules = { dir = \"%s\"; reload_poll_ms = 0; };\n"
                     "timers = { shards = %d; poll_ms = %d; sweep_ms = 60000; claim_batch = 2000; "
                     "lease_ms = %d; };\n"
                     /* the streams are days old: late ones go in the plan as in
                      * replay (which judges no lateness), so the withdrawals
                      * agree; only their "late" mark differs (left out) */
                     "time = { late_policy = \"publish\"; };\n"
                     "log = { level = \"info\"; };\n",
                     f->w.kafka.bootstraps, f->w.redis.port, f->rules, SHARDS, poll_ms, g_lease_ms);
    assert_int_equal(td_test_write_file(f->w.dir, "touchd.conf", text, (size_t)n, NULL, 0), 0);
}

/* ------------------------------------------------------------- streams */

typedef struct stream {
    char **line; /* JSON lines, in file order */
    size_t n, cap;
    td_ms last; /* the latest occurred_at */
} stream;

static void stream_add(stream *s, const char *line) {
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 256;
        s->line = realloc(s->line, s->cap * sizeof *s->line);
        assert_non_null(s->line);
    }
    s->line[s->n++] = strdup(line);
}

static void stream_free(stream *s) {
    for (size_t i = 0; i < s->n; i++)
        free(s->line[i]);
    free(s->line);
}

/* Moves the time of every `"key": "<RFC 3339>"` of line by `shift` ms, in
 * place of the text (the line otherwise unchanged: numbers keep their
 * exact text). out has room for 2 * strlen(line) + 64. */
static void shift_times(const char *line, td_ms shift, char *out) {
    static const char *const keys[] = {"\"occurred_at\"", "\"at\"", "\"until\""};
    const char *p = line;
    char *o = out;
    for (;;) {
        const char *best = NULL;
        size_t bl = 0;
        for (size_t k = 0; k < 3; k++) {
            const char *q = strstr(p, keys[k]);
            if (q && (!best || q < best)) {
                best = q;
                bl = strlen(keys[k]);
            }
        }
        const char *v = best ? best + bl : NULL;
        while (v && (*v == ' ' || *v == ':'))
            v++;
        const char *e = v && *v == '"' ? strchr(v + 1, '"') : NULL;
        td_ms t;
        if (!e || td_time_parse(v + 1, (size_t)(e - v - 1), &t) != TD_OK) {
            if (!best) break;
            size_t n = (size_t)(best + bl - p); /* not a time: copied as is */
            memcpy(o, p, n);
            o += n;
            p += n;
            continue;
        }
        memcpy(o, p, (size_t)(v + 1 - p));
        o += v + 1 - p;
        o += td_time_format(t + shift, o, TD_TIME_BUF);
        p = e;
    }
    strcpy(o, p);
}

/* The occurred_at of a line, or TD_MS_MISSING when it has none (the sample's
 * truncated line). */
static td_ms occurred_at(const char *line) {
    json_t *j = json_loads(line, 0, NULL);
    if (!j) return TD_MS_MISSING;
    const char *s = json_string_value(json_object_get(j, "occurred_at"));
    td_ms t = TD_MS_MISSING;
    if (!s || td_time_parse(s, strlen(s), &t) != TD_OK) t = TD_MS_MISSING;
    json_decref(j);
    return t;
}

/* examples/sample.jsonl, shifted by whole weeks: its last event in the last
 * week before `now` less an hour. */
static void sample_stream(stream *s, td_ms now) {
    char path[600];
    snprintf(path, sizeof path, "%s/examples/sample.jsonl", td_test_source_dir());
    FILE *in = fopen(path, "r");
    assert_non_null(in);
    stream raw = {0};
    char line[8192];
    td_ms last = TD_MS_MISSING;
    while (fgets(line, sizeof line, in)) {
        line[strcspn(line, "\n")] = '\0';
        if (!line[0]) continue;
        stream_add(&raw, line);
        td_ms t = occurred_at(line);
        if (t != TD_MS_MISSING && (last == TD_MS_MISSING || t > last)) last = t;
    }
    fclose(in);
    assert_true(raw.n > 100);
    td_ms week = 7 * TD_DAY;
    td_ms shift = (now - TD_HOUR - last) / week * week;
    for (size_t i = 0; i < raw.n; i++) {
        char *o = malloc(2 * strlen(raw.line[i]) + 64);
        shift_times(raw.line[i], shift, o);
        stream_add(s, o);
        free(o);
    }
    s->last = last + shift;
    stream_free(&raw);
}

/* A small deterministic generator (xorshift64*). */
static uint64_t rnd_state = 88172645463325252ULL;
static uint32_t rnd(uint32_t n) {
    rnd_state ^= rnd_state >> 12;
    rnd_state ^= rnd_state << 25;
    rnd_state ^= rnd_state >> 27;
    return (uint32_t)((rnd_state * 2685821657736338717ULL) >> 33) % n;
}

typedef struct gen_ev {
    td_ms at;
    size_t seq; /* creation order: ties keep it */
    char *json;
} gen_ev;

static int gen_cmp(const void *a, const void *b) {
    const gen_ev *x = a, *y = b;
    if (x->at != y->at) return x->at < y->at ? -1 : 1;
    return (x->seq > y->seq) - (x->seq < y->seq);
}

/* One event of prospect g-<p> of owner rep-<o>: type, time, data (or ""). */
static void gen_push(gen_ev **v, size_t *n, size_t *cap, int p, int k, int o, const char *type,
                     td_ms at, const char *data) {
    if (*n == *cap) {
        *cap = *cap ? 2 * *cap : 1024;
        *v = realloc(*v, *cap * sizeof **v);
        assert_non_null(*v);
    }
    char ts[TD_TIME_BUF], buf[1024];
    td_time_format(at, ts, sizeof ts);
    snprintf(buf, sizeof buf,
             "{\"id\":\"g%d-%d\",\"type\":\"%s\",\"prospect_id\":\"g-%03d\",\"occurred_at\":\"%s\","
             "\"owner_id\":\"rep-%d\"%s%s}",
             p, k, type, p, ts, o, *data ? ",\"data\":" : "", data);
    (*v)[*n] = (gen_ev){at, *n, strdup(buf)};
    (*n)++;
}

/* The generated events after a prospect's first email: each type's share
 * (cumulative, out of 100) and its data: fmt (NULL: none) with one %s taken
 * from pick (NULL-terminated), or, for meeting.booked, the meeting's time. */
typedef struct gen_kind {
    uint32_t upto;
    const char *type, *fmt;
    const char *const *pick;
} gen_kind;

static const char *const G_KIND[] = {"value", "follow_up", "proposal", NULL};
static const char *const G_HUMAN[] = {"true", "true", "true", "true", "false", NULL};
static const char *const G_BOOL[] = {"true", "false", NULL};
static const char *const G_SENTIMENT[] = {"positive", "neutral", "negative", "out_of_office", NULL};
static const char *const G_STAGE[] = {"contacted", "engaged", "proposal", "negotiation",
                                      "won",       "lost",    NULL};
static const char *const G_DURATION[] = {"45", "300", "1260", NULL};
static const char *const G_GIFT[] = {"book", "card", NULL};

static const gen_kind GEN[] = {
    {22, "email.sent", "{\"kind\":\"%s\"}", G_KIND},
    {30, "email.delivered", NULL, NULL},
    {50, "email.opened", "{\"human\":%s}", G_HUMAN},
    {54, "email.clicked", NULL, NULL},
    {62, "email.replied", "{\"sentiment\":\"%s\"}", G_SENTIMENT},
    {66, "linkedin.invited", NULL, NULL},
    {69, "linkedin.accepted", NULL, NULL},
    {71, "linkedin.replied", "{\"sentiment\":\"%s\"}", G_SENTIMENT},
    {75, "call.attempted", NULL, NULL},
    {78, "call.connected", "{\"duration_s\":%s}", G_DURATION},
    {81, "whatsapp.sent", NULL, NULL},
    {83, "whatsapp.read", NULL, NULL},
    {85, "whatsapp.replied", "{\"sentiment\":\"%s\"}", G_SENTIMENT},
    {88, "meeting.booked", "{\"at\":\"%s\"}", NULL},
    {90, "meeting.held", NULL, NULL},
    {94, "prospect.updated", "{\"stage\":\"%s\"}", G_STAGE},
    {96, "gift.sent", "{\"kind\":\"%s\",\"value_eur\":\"24.50\",\"items\":1}", G_GIFT},
    {97, "email.bounced", "{\"hard\":%s}", G_BOOL},
    {100, "call.voicemail", NULL, NULL},
};

static const char *gen_pick(const char *const *v) {
    uint32_t n = 0;
    while (v[n])
        n++;
    return v[rnd(n)];
}

/* The generated stream: np prospects over [now - 7d, now - 10 min]. */
static void generated_stream(stream *s, td_ms now, int np) {
    static const char *const zones[][2] = {{"Europe/Paris", "FR"},
                                           {"Europe/Berlin", "DE"},
                                           {"America/New_York", "US"},
                                           {"Asia/Tokyo", "JP"},
                                           {"Europe/London", "GB"}};
    static const td_ms gaps[] = {2 * TD_MINUTE, 10 * TD_MINUTE, 30 * TD_MINUTE, TD_HOUR,
                                 3 * TD_HOUR,   8 * TD_HOUR,    20 * TD_HOUR,   3 * TD_DAY};
    gen_ev *v = NULL;
    size_t n = 0, cap = 0;
    td_ms end = now - 10 * TD_MINUTE;
    for (int p = 0; p < np; p++) {
        int o = 1 + p % 6, k = 0;
        td_ms t = now - 7 * TD_DAY + (td_ms)rnd(3 * 24 * 60) * TD_MINUTE + (td_ms)rnd(60000);
        char data[512];
        if (rnd(4) != 0) { /* most leads come from the CRM first */
            int z = (int)rnd(5);
            snprintf(data, sizeof data,
                     "{\"stage\":\"new\",\"tier\":%u,\"country\":\"%s\",\"timezone\":\"%s\","
                     "\"consent\":{\"email\":true,\"whatsapp\":%s,\"sms\":%s}}",
                     1 + rnd(3), zones[z][1], zones[z][0], gen_pick(G_BOOL), gen_pick(G_BOOL));
            gen_push(&v, &n, &cap, p, k++, o, "prospect.updated", t, data);
            t += (td_ms)(5 + rnd(180)) * TD_MINUTE;
        }
        int len = 14 + (int)rnd(30);
        for (int e = 0; e < len && t < end; e++) {
            uint32_t r = e == 0 ? 0 : rnd(100); /* the first: an email */
            const gen_kind *g = GEN;
            while (r >= g->upto)
                g++;
            char arg[TD_TIME_BUF];
            if (g->pick)
                snprintf(arg, sizeof arg, "%s", gen_pick(g->pick));
            else
                td_time_format(t + 2 * TD_DAY, arg, sizeof arg);
            data[0] = '\0';
            if (g->fmt) snprintf(data, sizeof data, g->fmt, arg);
            gen_push(&v, &n, &cap, p, k, o, g->type, t, data);
            if (rnd(50) == 0) /* delivered twice: same id, same bytes */
                gen_push(&v, &n, &cap, p, k, o, g->type, t, data);
            k++;
            t += gaps[rnd(8)] + (td_ms)rnd(3600) * TD_SECOND;
        }
    }
    qsort(v, n, sizeof *v, gen_cmp);
    for (size_t i = 0; i < n; i++) {
        stream_add(s, v[i].json);
        if (s->last == 0 || v[i].at > s->last) s->last = v[i].at;
        free(v[i].json);
    }
    free(v);
}

/* ------------------------------------------------------ recommendations */

/* The recommendations of one side: canonical text (all but generated_at),
 * one per id. */
typedef struct recset {
    char **id, **text;
    size_t n, cap;
    size_t timers, owners, dup_conflicts;
} recset;

static int recset_find(const recset *s, const char *id) {
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->id[i], id) == 0) return (int)i;
    return -1;
}

/* Adds a recommendation (a JSON object) unless its trigger is a timer due
 * after `cut` (cut TD_MS_MISSING: none left out). A second copy of an id
 * (at least once delivery) must be the same. */
static void recset_add(recset *s, const char *json, td_ms cut) {
    json_t *j = json_loads(json, 0, NULL);
    assert_non_null(j);
    json_t *trig = json_object_get(j, "trigger");
    const char *type = json_string_value(json_object_get(trig, "type"));
    assert_non_null(type);
    bool timer = strcmp(type, "timer") == 0;
    if (timer && cut != TD_MS_MISSING) {
        const char *due = json_string_value(json_object_get(trig, "due_at"));
        td_ms d;
        assert_int_equal(td_time_parse(due, strlen(due), &d), TD_OK);
        if (d > cut) {
            json_decref(j);
            return;
        }
    }
    const char *id = json_string_value(json_object_get(j, "id"));
    assert_non_null(id);
    assert_non_null(json_object_get(j, "generated_at"));
    json_object_del(j, "generated_at");
    json_object_del(j, "late"); /* the daemon's wall clock: the one other difference */
    char *text = json_dumps(j, JSON_SORT_KEYS | JSON_COMPACT);
    int at = recset_find(s, id);
    if (at >= 0) {
        if (strcmp(s->text[at], text) != 0) s->dup_conflicts++;
        free(text);
        json_decref(j);
        return;
    }
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 256;
        s->id = realloc(s->id, s->cap * sizeof *s->id);
        s->text = realloc(s->text, s->cap * sizeof *s->text);
    }
    s->id[s->n] = strdup(id);
    s->text[s->n] = text;
    s->n++;
    s->timers += timer;
    const char *pid = json_string_value(json_object_get(j, "prospect_id"));
    s->owners += pid && strncmp(pid, "owner:", 6) == 0;
    json_decref(j);
}

static void recset_free(recset *s) {
    for (size_t i = 0; i < s->n; i++) {
        free(s->id[i]);
        free(s->text[i]);
    }
    free(s->id);
    free(s->text);
}

/* Prints what one side has that the other has not (at most 12). @returns
 * how many. */
static size_t report_missing(const char *what, const recset *a, const recset *b) {
    size_t n = 0;
    for (size_t i = 0; i < a->n; i++) {
        int k = recset_find(b, a->id[i]);
        if (k >= 0 && strcmp(a->text[i], b->text[k]) == 0) continue;
        if (n++ < 12) fprintf(stderr, "%s %s: %s\n", what, k >= 0 ? "differs" : "only", a->text[i]);
    }
    return n;
}

/* Runs `touchd replay --advance` over the events file, from the test's
 * directory (no config/holidays there), into s. */
static void run_replay(fx *f, td_ms advance, recset *s) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "cd %s && %s replay --quiet --rules %s --advance %lldms %s", f->w.dir,
             td_test_touchd_path(), f->rules, (long long)advance, f->events);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, p) > 0)
        recset_add(s, line, TD_MS_MISSING);
    free(line);
    int st = pclose(p);
    assert_true(WIFEXITED(st));
    /* 3: some line was rejected (the sample's truncated one) */
    assert_true(WEXITSTATUS(st) == 0 || WEXITSTATUS(st) == 3);
}

/* Pending timers in the index due at or before t, plus claimed ones. */
static long long due_in_index(fx *f, td_ms t) {
    long long n = td_test_redis_int(&f->w.redis, "ZCARD touchd:t:claimed");
    for (int s = 0; s < SHARDS; s++) {
        char key[64];
        td_timers_shard_key("touchd", (uint32_t)s, key, sizeof key);
        n += td_test_redis_int(&f->w.redis, "ZCOUNT %s -inf %lld", key, (long long)t);
    }
    return n;
}

/* Collects the daemon's recommendations (the cut applied) into s. */
static void collect(td_test_reader *r, td_ms cut, recset *s) {
    size_t n;
    const td_test_msg *m = td_test_reader_msgs(r, &n);
    for (size_t i = 0; i < n; i++)
        recset_add(s, m[i].val, cut);
}

/* The whole comparison for one stream; stream_poll_ms is the claimer's
 * poll while the daemon reads it (60000: idle, every timer fires on the
 * event path; 50: live, the event-time horizon keeps it behind the input). */
static void check_equivalence(fx *f, const stream *s, int stream_poll_ms, bool kill_once,
                              size_t min_recs, size_t min_timers, size_t min_owners) {
    FILE *o = fopen(f->events, "w");
    assert_non_null(o);
    for (size_t i = 0; i < s->n; i++) {
        fprintf(o, "%s\n", s->line[i]);
        json_t *j = json_loads(s->line[i], 0, NULL);
        const char *key = j ? json_string_value(json_object_get(j, "prospect_id")) : NULL;
        assert_int_equal(
            td_test_kafka_produce(&f->w.kafka, T_IN, key, s->line[i], strlen(s->line[i])), 0);
        json_decref(j);
    }
    fclose(o);
    assert_int_equal(td_test_kafka_flush(&f->w.kafka, 20000), 0);

    /* 1. the stream, claimer idle or live */
    write_config(f, stream_poll_ms);
    int64_t t0 = td_test_now_ms();
    assert_true(td_test_touchd_run(&f->w.touchd, f->w.conf, f->w.log));
    if (kill_once) {
        /* kill -9 while it holds claims, and start again at once: its
         * claims come back after their lease, while the backlog is read */
        long long held = 0;
        for (int64_t until = td_test_now_ms() + 20000; td_test_now_ms() < until && held == 0;)
            held = td_test_redis_int(&f->w.redis, "ZCARD touchd:t:claimed");
        assert_true(held > 0);
        td_test_touchd_kill(&f->w.touchd);
        print_message("killed with %lld claims held\n", held);
        assert_true(td_test_touchd_run(&f->w.touchd, f->w.conf, f->w.log));
    }
    int64_t end_off[1], committed[1] = {-1};
    assert_int_equal(td_test_kafka_end_offsets(&f->w.kafka, T_IN, 1, end_off), 0);
    assert_int_equal(end_off[0], (int64_t)s->n);
    while (td_test_now_ms() - t0 < 60000) {
        assert_int_equal(td_test_kafka_committed(&f->w.kafka, GROUP, T_IN, 1, committed), 0);
        if (committed[0] == end_off[0]) break;
        td_test_sleep_ms(100);
    }
    if (committed[0] != end_off[0]) td_test_dump_log(f->w.log, 40);
    assert_int_equal(committed[0], end_off[0]);
    assert_int_equal(td_test_touchd_stop(&f->w.touchd, SIGTERM, 20000), 0);
    long long before_events = td_test_progress_value(f->w.log, "timers_before_events");
    long long stream_claimed = td_test_progress_value(f->w.log, "timers_claimed");
    long long held = td_test_progress_value(f->w.log, "timers_held_polls");
    if (stream_poll_ms >= 60000) {
        assert_int_equal(stream_claimed, 0);
    } else {
        /* the claimer fired timers while the backlog was read, and the
         * horizon held it back from the wall clock */
        print_message("while reading: %lld timers claimed, %lld polls held by the horizon, "
                      "%lld re-leased claims held\n",
                      stream_claimed, held, td_test_progress_value(f->w.log, "timers_held_claims"));
        assert_true(stream_claimed > 0);
        assert_true(held > 0);
        /* the dead instance's claims came back while the restarted one
         * was behind (or not yet assigned), and waited */
        if (kill_once) assert_true(td_test_progress_value(f->w.log, "timers_held_claims") > 0);
    }
    int64_t t1 = td_test_now_ms();

    /* 2. at the cut, the claimer fires what is due */
    td_ms cut = td_test_wall_ms();
    write_config(f, 50);
    assert_true(td_test_touchd_run(&f->w.touchd, f->w.conf, f->w.log));
    recset want = {0};
    run_replay(f, cut - s->last, &want);
    td_test_reader *r = td_test_reader_new(&f->w.kafka, T_OUT);
    recset got = {0};
    for (int64_t until = td_test_now_ms() + 30000; td_test_now_ms() < until;) {
        td_test_reader_read(r, want.n, 2000);
        td_test_reader_drain(r, 300);
        recset_free(&got);
        got = (recset){0};
        collect(r, cut, &got);
        if (got.n >= want.n && due_in_index(f, cut) == 0) break;
    }
    assert_int_equal(td_test_touchd_stop(&f->w.touchd, SIGTERM, 20000), 0);
    td_test_reader_drain(r, 200);
    recset_free(&got);
    got = (recset){0};
    collect(r, cut, &got);
    long long claimed_fired = td_test_progress_value(f->w.log, "timers_fired");
    print_message(
        "%zu lines: replay %zu recommendations and withdrawals (%zu timer, %zu owner); daemon %zu "
        "(%zu timer, %zu owner), %lld timers fired before events, %lld by the "
        "claimer; stream %lld ms, claimer %lld ms\n",
        s->n, want.n, want.timers, want.owners, got.n, got.timers, got.owners, before_events,
        claimed_fired, (long long)(t1 - t0), (long long)(td_test_now_ms() - t1));

    if (getenv("TD_TEST_KEEP_TMP")) { /* both sides, for a diff by hand */
        const recset *side[2] = {&got, &want};
        for (int k = 0; k < 2; k++) {
            char path[400];
            snprintf(path, sizeof path, "%s/%s.jsonl", f->w.dir, k ? "replay" : "daemon");
            FILE *d = fopen(path, "w");
            assert_non_null(d);
            for (size_t i = 0; i < side[k]->n; i++)
                fprintf(d, "%s\n", side[k]->text[i]);
            fclose(d);
        }
        print_message("kept: %s/daemon.jsonl, %s/replay.jsonl\n", f->w.dir, f->w.dir);
    }
    size_t only_daemon = report_missing("daemon", &got, &want);
    size_t only_replay = report_missing("replay", &want, &got);
    assert_int_equal(got.dup_conflicts, 0);
    assert_int_equal(due_in_index(f, cut), 0);
    assert_int_equal(only_daemon, 0);
    assert_int_equal(only_replay, 0);
    assert_int_equal(got.n, want.n);
    /* not a vacuous comparison */
    assert_true(want.n >= min_recs);
    assert_true(want.timers >= min_timers);
    assert_true(want.owners >= min_owners);
    if (stream_poll_ms >= 60000) assert_true(before_events > 0);
    td_test_reader_free(r);
    recset_free(&got);
    recset_free(&want);
}

/* ---------------------------------------------------------------- cases */

static void test_sample_daemon_equals_replay(void **state) {
    fx *f = *state;
    stream s = {0};
    sample_stream(&s, td_test_wall_ms());
    check_equivalence(f, &s, 60000, false, 40, 5, 5);
    stream_free(&s);
}

/* The generated stream (about 10,000 events) ending `back` before now,
 * read with the claimer at stream_poll_ms. */
static void generated_case(void **state, td_ms back, int stream_poll_ms, bool kill_once) {
    fx *f = *state;
    stream s = {0};
    rnd_state = 88172645463325252ULL; /* the same stream in each case */
    generated_stream(&s, td_test_wall_ms() - back, GEN_PROSPECTS);
    print_message("generated: %zu events, the last %lld days ago\n", s.n,
                  (long long)((td_test_wall_ms() - s.last) / TD_DAY));
    assert_true(s.n >= 10000);
    check_equivalence(f, &s, stream_poll_ms, kill_once, 1000, 100, 3);
    stream_free(&s);
}

/* The past week, the claimer idle while the stream is read. */
static void test_generated_daemon_equals_replay(void **state) {
    generated_case(state, 0, 60000, false);
}

/* A backfill: the same stream dated a month earlier, read with the claimer
 * live (50 ms), as after an outage. Every timer of the month is overdue by
 * the wall clock; the event-time horizon fires each one only once the
 * events before it in time are applied, so the result is replay's, run
 * after run (docs/operations.md, "Event time"). */
static void test_backfill_daemon_equals_replay(void **state) {
    generated_case(state, 30 * TD_DAY, 50, false);
}

/* The backfill again, with a kill -9 while the daemon holds claims and a
 * 1 s lease: the dead instance's claims come back while the restarted one
 * is still behind the input; those due beyond its horizon wait for another
 * lease (timers_held_claims), the rest fire, and the output is still
 * replay's (a re-published id must be the same: recset_add). */
static void test_backfill_killed_equals_replay(void **state) {
    g_lease_ms = 1000;
    generated_case(state, 30 * TD_DAY, 50, true);
    g_lease_ms = 30000;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_sample_daemon_equals_replay, setup,
                                        td_test_world_teardown),
        cmocka_unit_test_setup_teardown(test_generated_daemon_equals_replay, setup,
                                        td_test_world_teardown),
        cmocka_unit_test_setup_teardown(test_backfill_daemon_equals_replay, setup,
                                        td_test_world_teardown),
        cmocka_unit_test_setup_teardown(test_backfill_killed_equals_replay, setup,
                                        td_test_world_teardown),
    };
    if (getenv("TD_TEST_FILTER")) cmocka_set_test_filter(getenv("TD_TEST_FILTER"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
