/*
 * test_timers.c - the durable timer index (td_timers + the timer part of
 * td_redis_store's script) against a real redis-server.
 *
 * Covers: arming written with the state by one script (both or neither:
 * a conflicting write changes neither), a re-arm moves the same member and
 * a disarm removes it, claim returns only due members (and moves them to the
 * claimed set), two concurrent claimers never get the same member, an
 * expired lease makes a member claimable again and the old lease can no
 * longer ack it, ack removes, the firing round (publish, store, ack) with
 * both downtime policies, a re-armed timer claimed at its old time is stale,
 * a prospect's claims fire in (due time, rule index) order, each at its due
 * time, and two pollers on one Redis fire every timer exactly once.
 *
 * The heads (<prefix>:t:heads): stores keep every shard's head a lower bound
 * of its earliest member (the invariant is checked after each test that
 * writes); an idle poll looks at a constant number of keys whatever the
 * shard count and writes nothing; a timer written without a head (the layout
 * of the previous version) still fires through the safety-net sweep; two
 * claimers working from the heads alone, while another client keeps
 * storing, claim every due member exactly once; a re-arm to a later time
 * keeps the timer reachable.
 *
 * Times are virtual: every claim takes `now` as a parameter (the scripts use
 * it for due and lease), so nothing here sleeps for timer semantics.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"
#include "td_engine.h"
#include "td_event.h"
#include "td_pipeline.h"
#include "td_redis.h"
#include "td_rules.h"
#include "td_state.h"
#include "td_timers.h"

#define T0 1795000000000LL /* 2026-11-18 */
#define SHARDS 16

static const char RULES[] =
    "rules = (\n"
    "  { id = \"silence.nudge\"; on = [ \"email.sent\" ]; after = \"72h\";\n"
    "    when = \"email.unanswered > 0 && !replied\";\n"
    "    recommend = { channel = \"linkedin\"; touch = \"follow_up\"; }; },\n"
    "  { id = \"silence.short\"; on = [ \"email.sent\" ]; after = \"2s\";\n"
    "    when = \"email.unanswered > 0\";\n"
    "    recommend = { channel = \"email\"; touch = \"follow_up\"; }; }\n"
    ");\n";

typedef struct fx {
    td_test_redis srv;
    td_redis_conf rconf;
    td_redis *r;
    td_ruleset *rs;
    td_tzdb *tz;
    td_step_out *out;
} fx;

static int setup(void **state) {
    fx *f = calloc(1, sizeof *f);
    if (td_test_redis_start(&f->srv) != 0) return -1;
    td_redis_conf_default(&f->rconf);
    f->rconf.host = f->srv.host;
    f->rconf.port = f->srv.port;
    f->rconf.command_timeout_ms = 5000;
    char err[256];
    f->r = td_redis_new(&f->rconf, err, sizeof err);
    if (!f->r) return -1;
    td_redis_set_timer_shards(f->r, SHARDS);
    td_source src = {.name = "timers.rules", .text = RULES, .len = strlen(RULES)};
    td_diags d = {0};
    f->rs = td_ruleset_compile(&src, 1, &d);
    td_diags_free(&d);
    if (!f->rs) return -1;
    f->tz = td_tzdb_new();
    f->out = calloc(1, sizeof *f->out);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fx *f = *state;
    td_redis_free(f->r);
    td_ruleset_free(f->rs);
    td_tzdb_free(f->tz);
    td_step_out_free(f->out);
    td_test_redis_stop(&f->srv);
    free(f);
    return 0;
}

static td_timers *timers_for(fx *f, void (*tweak)(td_timers_conf *)) {
    td_timers_conf tc;
    td_timers_conf_default(&tc);
    tc.shards = SHARDS;
    tc.lease_ms = 5000;
    if (tweak) tweak(&tc);
    char err[256];
    td_timers *t = td_timers_new(&f->rconf, &tc, err, sizeof err);
    if (!t) fail_msg("td_timers_new: %s", err);
    return t;
}

static const char *at(td_ms t) {
    static char buf[4][TD_TIME_BUF];
    static int k;
    k = (k + 1) % 4;
    td_time_format(t, buf[k], sizeof buf[k]);
    return buf[k];
}

/* Loads pid, applies email.sent (id, at) through the engine, stores it. */
static void send_email(fx *f, const char *pid, const char *id, td_ms when) {
    char json[512];
    snprintf(
        json, sizeof json,
        "{\"id\":\"%s\",\"type\":\"email.sent\",\"prospect_id\":\"%s\",\"occurred_at\":\"%s\"}", id,
        pid, at(when));
    td_event ev;
    td_event_error ee;
    assert_int_equal(td_event_decode(json, strlen(json), &ev, &ee), TD_OK);
    for (int attempt = 0; attempt < 5; attempt++) {
        td_state st;
        td_state_init(&st, pid);
        assert_int_equal(td_redis_load(f->r, &st, 1), TD_OK);
        int64_t exp = st.version;
        td_trigger trig = {.kind = TD_TRIG_EVENT, .ev = &ev};
        assert_int_equal(td_engine_step(f->rs, &st, &trig, when, f->tz, 0, f->out), TD_OK);
        int res;
        assert_int_equal(td_redis_store(f->r, &st, &exp, 1, &res), TD_OK);
        td_state_free(&st);
        if (res == TD_REDIS_STORED) return;
    }
    fail_msg("send_email: persistent conflicts");
}

static void shard_key(const char *pid, char *buf, size_t cap) {
    td_timers_shard_key("touchd", td_timers_shard(pid, SHARDS), buf, cap);
}

/* ZSCORE of pid's rule member, or -1 when absent. */
static long long zscore(fx *f, const char *key, const char *pid, const char *rule) {
    char m[300];
    snprintf(m, sizeof m, "%s\x1f%s", pid, rule);
    redisReply *rep = td_test_redis_cmd(&f->srv, "ZSCORE %s %s", key, m);
    assert_non_null(rep);
    long long v = rep->type == REDIS_REPLY_STRING ? atoll(rep->str) : -1;
    freeReplyObject(rep);
    return v;
}

static long long zcard(fx *f, const char *key) {
    redisReply *rep = td_test_redis_cmd(&f->srv, "ZCARD %s", key);
    assert_non_null(rep);
    long long v = rep->integer;
    freeReplyObject(rep);
    return v;
}

static bool hexists(fx *f, const char *pid, const char *field) {
    redisReply *rep = td_test_redis_cmd(&f->srv, "HEXISTS touchd:p:{%s} %s", pid, field);
    assert_non_null(rep);
    bool v = rep->integer == 1;
    freeReplyObject(rep);
    return v;
}

/* Sum of ZCARD over all shards. */
/* Pending rule timers in the index: the plans' own timers (TD_PLAN_TIMER,
 * due when a pending recommendation expires) are left out; plan_total
 * counts them. */
static long long index_count(fx *f, bool plans) {
    long long n = 0;
    for (uint32_t s = 0; s < SHARDS; s++) {
        char k[64];
        td_timers_shard_key("touchd", s, k, sizeof k);
        redisReply *rep = td_test_redis_cmd(&f->srv, "ZRANGE %s 0 -1", k);
        assert_non_null(rep);
        for (size_t i = 0; i < rep->elements; i++)
            if ((strstr(rep->element[i]->str, TD_PLAN_TIMER) != NULL) == plans) n++;
        freeReplyObject(rep);
    }
    return n;
}
static long long pending_total(fx *f) { return index_count(f, false); }
static long long plan_total(fx *f) { return index_count(f, true); }

/* ---- arming ---- */

static void test_arm_with_state_write(void **state) {
    fx *f = *state;
    char key[64];
    shard_key("p-1", key, sizeof key);
    send_email(f, "p-1", "e-1", T0);
    /* both timers of email.sent: in the state and in the index, same due */
    assert_true(hexists(f, "p-1", "timer.silence.nudge"));
    assert_true(hexists(f, "p-1", "timer.silence.short"));
    assert_int_equal(zscore(f, key, "p-1", "silence.nudge"), T0 + 72 * TD_HOUR);
    assert_int_equal(zscore(f, key, "p-1", "silence.short"), T0 + 2000);
    assert_int_equal(pending_total(f), 2);

    /* a conflicting write (stale expected version) changes neither */
    td_state st;
    td_state_init(&st, "p-1");
    assert_int_equal(td_redis_load(f->r, &st, 1), TD_OK);
    td_state_disarm_timer(&st, "silence.nudge");
    int64_t stale = st.version - 1;
    int res;
    assert_int_equal(td_redis_store(f->r, &st, &stale, 1, &res), TD_OK);
    assert_int_equal(res, TD_REDIS_CONFLICT);
    assert_true(hexists(f, "p-1", "timer.silence.nudge"));
    assert_int_equal(zscore(f, key, "p-1", "silence.nudge"), T0 + 72 * TD_HOUR);

    /* an unrelated state change leaves the index alone (one EVALSHA, no
     * ZADD: an unchanged timer may be claimed right now) */
    redisReply *rep = td_test_redis_cmd(&f->srv, "CONFIG RESETSTAT");
    freeReplyObject(rep);
    td_state_free(&st);
    td_state_init(&st, "p-1");
    assert_int_equal(td_redis_load(f->r, &st, 1), TD_OK);
    st.ch[TD_CH_EMAIL].opened++;
    int64_t exp = st.version;
    assert_int_equal(td_redis_store(f->r, &st, &exp, 1, &res), TD_OK);
    assert_int_equal(res, TD_REDIS_STORED);
    rep = td_test_redis_cmd(&f->srv, "INFO commandstats");
    assert_non_null(rep);
    assert_non_null(strstr(rep->str, "cmdstat_evalsha:calls=1,"));
    assert_null(strstr(rep->str, "cmdstat_zadd:"));
    assert_null(strstr(rep->str, "cmdstat_zrem:"));
    freeReplyObject(rep);
    td_state_free(&st);

    /* atomic: a MULTI-free observer never sees one without the other. The
     * script runs alone on the server, so a reader between two stores sees
     * the state and the index of the same version: check after each of a
     * series of re-arms */
    for (int i = 2; i < 12; i++) {
        char id[16];
        snprintf(id, sizeof id, "e-%d", i);
        send_email(f, "p-1", id, T0 + i * TD_MINUTE);
        rep = td_test_redis_cmd(&f->srv, "HGET touchd:p:{p-1} timer.silence.nudge");
        assert_int_equal(rep->type, REDIS_REPLY_STRING);
        char expect[128];
        snprintf(expect, sizeof expect, "%s %s", at(T0 + i * TD_MINUTE + 72 * TD_HOUR), id);
        assert_string_equal(rep->str, expect);
        freeReplyObject(rep);
        assert_int_equal(zscore(f, key, "p-1", "silence.nudge"), T0 + i * TD_MINUTE + 72 * TD_HOUR);
    }
    assert_int_equal(pending_total(f), 2);
}

static void test_rearm_and_disarm(void **state) {
    fx *f = *state;
    char key[64];
    shard_key("p-2", key, sizeof key);
    send_email(f, "p-2", "e-1", T0);
    send_email(f, "p-2", "e-2", T0 + TD_HOUR); /* re-arm: later */
    assert_int_equal(zscore(f, key, "p-2", "silence.nudge"), T0 + TD_HOUR + 72 * TD_HOUR);
    assert_int_equal(zcard(f, key), 2); /* one member per rule: the old one moved */

    /* disarm in the state: the member goes */
    td_state st;
    td_state_init(&st, "p-2");
    assert_int_equal(td_redis_load(f->r, &st, 1), TD_OK);
    td_state_disarm_timer(&st, "silence.short");
    int64_t exp = st.version;
    int res;
    assert_int_equal(td_redis_store(f->r, &st, &exp, 1, &res), TD_OK);
    assert_int_equal(res, TD_REDIS_STORED);
    assert_int_equal(zscore(f, key, "p-2", "silence.short"), -1);
    assert_int_equal(zscore(f, key, "p-2", "silence.nudge"), T0 + TD_HOUR + 72 * TD_HOUR);
    /* both gone */
    td_state_free(&st);
    td_state_init(&st, "p-2");
    assert_int_equal(td_redis_load(f->r, &st, 1), TD_OK);
    td_state_disarm_timer(&st, "silence.nudge");
    exp = st.version;
    assert_int_equal(td_redis_store(f->r, &st, &exp, 1, &res), TD_OK);
    assert_int_equal(zcard(f, key), 0);
    td_state_free(&st);

    /* with the index off (the default), td_redis_store writes only the hash */
    td_redis_set_timer_shards(f->r, 0);
    send_email(f, "p-3", "e-1", T0);
    assert_true(hexists(f, "p-3", "timer.silence.nudge"));
    assert_int_equal(pending_total(f), 0);
    td_redis_set_timer_shards(f->r, SHARDS);
}

/* ---- claim / lease / ack ---- */

static void test_claim_only_due(void **state) {
    fx *f = *state;
    for (int i = 0; i < 20; i++) {
        char pid[32];
        snprintf(pid, sizeof pid, "p-%d", i);
        send_email(f, pid, "e-1", T0 + i * 1000);
    }
    /* 20 short timers due T0+2s+i*1s, 20 long ones due 72h later */
    td_timers *t = timers_for(f, NULL);
    td_claim c[64];
    td_ms now = T0 + 2000 + 4500; /* i = 0..4 are due */
    int n = td_timers_claim_range(t, now, 0, SHARDS, c, 64);
    assert_int_equal(n, 5);
    for (int i = 0; i < n; i++) {
        assert_string_equal(c[i].rule, "silence.short");
        assert_true(c[i].due_at <= now);
        assert_int_equal(c[i].lease_until, now + 5000);
    }
    assert_int_equal(zcard(f, "touchd:t:claimed"), 5);
    assert_int_equal(pending_total(f), 35);
    /* nothing more due at the same time */
    assert_int_equal(td_timers_claim_range(t, now, 0, SHARDS, c, 64), 0);
    assert_int_equal(td_timers_ack(t, c, 5), 5);
    /* the budget is honoured, and the round robin sweeps every shard */
    now = T0 + 2000 + 19000;
    td_claim d[64];
    size_t got = 0;
    for (int poll = 0; poll < 40 && got < 15; poll++) {
        int k = td_timers_claim(t, now, d + got, 3);
        assert_true(k >= 0 && k <= 3);
        got += (size_t)k;
    }
    assert_int_equal(got, 15);
    assert_int_equal(td_timers_ack(t, d, got), 15);
    assert_int_equal(zcard(f, "touchd:t:claimed"), 0);
    int64_t pend, cl;
    assert_int_equal(td_timers_count(t, &pend, &cl), TD_OK);
    assert_int_equal(pend, 20);
    assert_int_equal(cl, 0);
    td_timers_free(t);
}

typedef struct claimer {
    fx *f;
    td_claim *got;
    size_t n;
} claimer;

static void *claim_thread(void *arg) {
    claimer *c = arg;
    td_timers *t = timers_for(c->f, NULL);
    td_claim buf[7];
    int idle = 0;
    while (idle < 3 * SHARDS) {
        int k = td_timers_claim(t, T0 + TD_DAY, buf, 7);
        if (k < 0) break;
        if (k == 0) {
            idle++;
            continue;
        }
        idle = 0;
        memcpy(c->got + c->n, buf, (size_t)k * sizeof *buf);
        c->n += (size_t)k;
    }
    td_timers_free(t);
    return NULL;
}

static int claim_cmp(const void *a, const void *b) {
    const td_claim *x = a, *y = b;
    int c = strcmp(x->prospect_id, y->prospect_id);
    return c ? c : strcmp(x->rule, y->rule);
}

static void test_redis_advice(void **state) {
    fx *f = *state;
    td_timers *t = timers_for(f, NULL);
    char msg[400];
    /* Redis defaults: value 64 is too small for the longest members */
    assert_int_equal(td_timers_redis_advice(t, msg, sizeof msg), 1);
    print_message("%s\n", msg);
    assert_non_null(strstr(msg, "zset-max-listpack-value=64"));
    assert_non_null(strstr(msg, "advice="));
    redisReply *rep = td_test_redis_cmd(&f->srv, "CONFIG SET zset-max-listpack-value 200");
    freeReplyObject(rep);
    assert_int_equal(td_timers_redis_advice(t, msg, sizeof msg), 0);
    assert_null(strstr(msg, "advice="));
    assert_non_null(strstr(msg, "compact_up_to=1433")); /* 16 shards x 128 x 0.7 */
    td_timers_free(t);
}

static void test_concurrent_claimers(void **state) {
    fx *f = *state;
    /* 2000 due members, written straight into the shards (the index format) */
    enum { N = 2000 };
    redisContext *c = td_test_redis_connect(&f->srv);
    assert_non_null(c);
    for (int i = 0; i < N; i++) {
        char pid[32], key[64], m[64];
        snprintf(pid, sizeof pid, "q-%d", i);
        shard_key(pid, key, sizeof key);
        snprintf(m, sizeof m, "%s\x1fsilence.short", pid);
        redisAppendCommand(c, "ZADD %s %lld %s", key, (long long)(T0 + i), m);
    }
    for (int i = 0; i < N; i++) {
        void *rep;
        assert_int_equal(redisGetReply(c, &rep), REDIS_OK);
        freeReplyObject(rep);
    }
    redisFree(c);
    claimer a = {f, calloc(N, sizeof(td_claim)), 0}, b = {f, calloc(N, sizeof(td_claim)), 0};
    pthread_t ta, tb;
    pthread_create(&ta, NULL, claim_thread, &a);
    pthread_create(&tb, NULL, claim_thread, &b);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    print_message("claimer A got %zu, claimer B got %zu\n", a.n, b.n);
    assert_int_equal(a.n + b.n, N);
    assert_true(a.n > 0 && b.n > 0);
    td_claim *all = calloc(N, sizeof *all);
    memcpy(all, a.got, a.n * sizeof *all);
    memcpy(all + a.n, b.got, b.n * sizeof *all);
    qsort(all, N, sizeof *all, claim_cmp);
    for (int i = 1; i < N; i++)
        assert_true(claim_cmp(&all[i - 1], &all[i]) != 0); /* never the same member twice */
    assert_int_equal(pending_total(f), 0);
    assert_int_equal(zcard(f, "touchd:t:claimed"), N);
    free(all);
    free(a.got);
    free(b.got);
}

static void test_lease_expiry(void **state) {
    fx *f = *state;
    send_email(f, "p-9", "e-1", T0);
    td_timers *t = timers_for(f, NULL); /* lease 5000 */
    td_timers *u = timers_for(f, NULL); /* another instance */
    td_claim c[4], d[4];
    td_ms now = T0 + 3000;
    assert_int_equal(td_timers_claim_range(t, now, 0, SHARDS, c, 4), 1);
    assert_int_equal(c[0].due_at, T0 + 2000);
    /* held: nobody else gets it before the lease ends */
    assert_int_equal(td_timers_claim_range(u, now + 4999, 0, SHARDS, d, 4), 0);
    /* t "crashed": after the lease, u gets it, re-leased, due unknown */
    assert_int_equal(td_timers_claim_range(u, now + 5001, 0, SHARDS, d, 4), 1);
    assert_string_equal(d[0].prospect_id, "p-9");
    assert_string_equal(d[0].rule, "silence.short");
    assert_true(d[0].due_at == TD_MS_MISSING);
    assert_int_equal(d[0].lease_until, now + 5001 + 5000);
    assert_int_equal(td_timers_get_stats(u)->reclaimed, 1);
    /* the late original claimer cannot ack it away from under u */
    assert_int_equal(td_timers_ack(t, c, 1), 0);
    assert_int_equal(zcard(f, "touchd:t:claimed"), 1);
    /* u's ack removes it */
    assert_int_equal(td_timers_ack(u, d, 1), 1);
    assert_int_equal(zcard(f, "touchd:t:claimed"), 0);
    assert_int_equal(td_timers_ack(u, d, 1), 0); /* idempotent */
    /* the 72h timer is still pending */
    assert_int_equal(pending_total(f), 1);
    td_timers_free(t);
    td_timers_free(u);
}

/* ---- firing ---- */

typedef struct sink_buf {
    char ids[256][40];
    char rules[256][80];
    char not_before[256][40];
    size_t n;
    int fail; /* nonzero: wait fails */
} sink_buf;

static int sink_send(void *ud, const char *pid, const char *json, size_t len) {
    sink_buf *s = ud;
    (void)pid;
    const char *p = strstr(json, "\"id\":\"");
    assert_non_null(p);
    assert_true(s->n < 256);
    snprintf(s->ids[s->n], sizeof s->ids[s->n], "%.34s", p + 6);
    const char *r = strstr(json, "\"rule\":\"");
    assert_non_null(r);
    r += 8;
    const char *e = strchr(r, '"');
    snprintf(s->rules[s->n], sizeof s->rules[s->n], "%.*s", (int)(e - r), r);
    const char *nb = strstr(json, "\"not_before\":\"");
    assert_non_null(nb);
    nb += 14;
    snprintf(s->not_before[s->n], sizeof s->not_before[s->n], "%.*s", (int)(strchr(nb, '"') - nb),
             nb);
    s->n++;
    (void)len;
    return 0;
}

static int sink_wait(void *ud) {
    sink_buf *s = ud;
    return s->fail ? -1 : 0;
}

static void poll_all(fx *f, td_timers *t, td_ms now, sink_buf *sb) {
    td_timers_sink sink = {sb, sink_send, sink_wait, NULL, NULL, NULL};
    for (int i = 0; i < 4 * SHARDS; i++) {
        size_t claimed;
        assert_int_equal(td_timers_poll(t, f->r, f->rs, f->tz, now, &sink, &claimed), TD_OK);
    }
}

static void test_fire_late(void **state) {
    fx *f = *state;
    send_email(f, "p-1", "e-1", T0);
    send_email(f, "p-2", "e-1", T0);
    td_timers *t = timers_for(f, NULL); /* fire_late, the default */
    sink_buf sb = {0};
    /* touchd was down for 5 days: both timers of both prospects fire, late */
    td_ms now = T0 + 5 * TD_DAY;
    poll_all(f, t, now, &sb);
    assert_int_equal(sb.n, 4);
    const td_timers_stats *s = td_timers_get_stats(t);
    assert_int_equal(s->fired, 4);
    assert_int_equal(s->dropped, 0);
    assert_int_equal(s->acked, 4);
    assert_true(s->max_delay_ms >= 5 * TD_DAY - 72 * TD_HOUR);
    /* disarmed in the state and gone from the index and the claimed set */
    assert_false(hexists(f, "p-1", "timer.silence.nudge"));
    assert_false(hexists(f, "p-2", "timer.silence.short"));
    assert_true(hexists(f, "p-1", "fired.silence.nudge"));
    assert_int_equal(pending_total(f), 0);
    assert_int_equal(plan_total(f), 2); /* fire_late = publish: in the plan, one timer each */
    assert_int_equal(zcard(f, "touchd:t:claimed"), 0);
    /* polling again fires nothing */
    poll_all(f, t, now + TD_DAY, &sb);
    assert_int_equal(sb.n, 4);
    td_timers_free(t);
}

static void drop_10m(td_timers_conf *c) {
    c->overdue_policy = TD_OVERDUE_DROP;
    c->drop_older_than = 10 * TD_MINUTE;
}

static void test_drop_older_than(void **state) {
    fx *f = *state;
    send_email(f, "p-1", "e-1", T0);
    td_timers *t = timers_for(f, drop_10m);
    sink_buf sb = {0};
    /* down for 72h + 5 min: both timers fire; the 2 s one's recommendation
     * is 72h past its not_before, more than late_after (24h): with the old
     * name's "drop" (time.late_policy = drop) it is not published; the 72h
     * one is 5 min late: published */
    td_ms now = T0 + 72 * TD_HOUR + 5 * TD_MINUTE;
    poll_all(f, t, now, &sb);
    assert_int_equal(sb.n, 1);
    assert_string_equal(sb.rules[0], "silence.nudge");
    const td_timers_stats *s = td_timers_get_stats(t);
    assert_int_equal(s->dropped, 0);
    assert_int_equal(s->fired, 2);
    /* the late timer does not linger: disarmed in the state; its rule did
     * run (its cooldown counts), its recommendation is not in the plan */
    assert_false(hexists(f, "p-1", "timer.silence.short"));
    assert_true(hexists(f, "p-1", "fired.silence.short"));
    assert_false(hexists(f, "p-1", "timer.silence.nudge"));
    assert_int_equal(pending_total(f), 0);
    assert_int_equal(zcard(f, "touchd:t:claimed"), 0);

    /* a bad policy configuration is refused */
    td_timers_conf tc;
    td_timers_conf_default(&tc);
    tc.overdue_policy = TD_OVERDUE_DROP;
    char err[200];
    assert_false(td_timers_conf_check(&tc, err, sizeof err));
    assert_non_null(strstr(err, "drop_older_than"));
    td_timers_free(t);
}

static void test_stale_and_sink_failure(void **state) {
    fx *f = *state;
    send_email(f, "p-5", "e-1", T0);
    td_timers *t = timers_for(f, NULL);
    td_claim c[4];
    /* claimed at its due time... */
    td_ms now = T0 + 2500;
    assert_int_equal(td_timers_claim_range(t, now, 0, SHARDS, c, 4), 1);
    /* ...then a newer email re-arms it (the member is back in its shard) */
    send_email(f, "p-5", "e-2", T0 + 2200);
    char key[64];
    shard_key("p-5", key, sizeof key);
    assert_int_equal(zscore(f, key, "p-5", "silence.short"), T0 + 4200);
    /* the re-armed timer fires at its new time (armed by e-2) while the
     * old claim is still leased */
    sink_buf sb = {0};
    poll_all(f, t, T0 + 4300, &sb);
    assert_int_equal(sb.n, 1);
    assert_string_equal(sb.rules[0], "silence.short");
    assert_int_equal(td_timers_get_stats(t)->fired, 1);
    /* claiming the re-armed member took over the old claim (one member per
     * prospect and rule): the fire's ack removed it, the old claimer's lease
     * is void, and nothing comes back after the old lease */
    assert_int_equal(zcard(f, "touchd:t:claimed"), 0);
    assert_int_equal(td_timers_ack(t, c, 1), 0);
    poll_all(f, t, now + 5001, &sb);
    assert_int_equal(sb.n, 1);
    assert_int_equal(td_timers_get_stats(t)->reclaimed, 0);
    assert_int_equal(pending_total(f), 1); /* the 72h one */
    td_timers_free(t);

    /* a sink that cannot get acknowledgements: nothing stored, nothing acked,
     * the claim comes back after the lease and then fires */
    send_email(f, "p-6", "e-1", T0);
    t = timers_for(f, NULL);
    sink_buf bad = {0};
    bad.fail = 1;
    td_timers_sink bsink = {&bad, sink_send, sink_wait, NULL, NULL, NULL};
    int rc = TD_OK;
    size_t claimed;
    for (int i = 0; i < SHARDS && rc == TD_OK; i++)
        rc = td_timers_poll(t, f->r, f->rs, f->tz, T0 + 3000, &bsink, &claimed);
    assert_int_equal(rc, TD_ERR);
    assert_true(hexists(f, "p-6", "timer.silence.short"));
    sink_buf good = {0};
    poll_all(f, t, T0 + 3000 + 5001, &good);
    assert_int_equal(good.n, 1);
    assert_string_equal(good.ids[0], bad.ids[0]); /* the retry publishes the same id */
    assert_false(hexists(f, "p-6", "timer.silence.short"));
    td_timers_free(t);
}

/* Two timers due at the same time and a later one, on one prospect, claimed
 * in one poll: they fire in (due time, rule index) order, as the event path
 * and `touchd replay` fire them (ties by ruleset order, not by rule id),
 * each evaluated at its own due time (not_before = the due time here). By
 * rule id the later o.late would fire before o.zeta and move the
 * prospect's clock past o.zeta's due time. */
static const char RULES_ORDER[] =
    "settings = { quiet_start_hour = 0; quiet_end_hour = 0; };\n"
    "rules = (\n"
    "  { id = \"o.late\"; on = [ \"email.sent\" ]; after = \"2h\";\n"
    "    recommend = { channel = \"email\"; touch = \"follow_up\"; window = \"any\"; }; },\n"
    "  { id = \"o.zeta\"; on = [ \"email.sent\" ]; after = \"1h\";\n"
    "    recommend = { channel = \"linkedin\"; touch = \"follow_up\"; window = \"any\"; }; },\n"
    "  { id = \"o.alpha\"; on = [ \"email.sent\" ]; after = \"1h\";\n"
    "    recommend = { channel = \"call\"; touch = \"call_proposal\"; window = \"any\"; }; }\n"
    ");\n";

static void test_claims_fire_in_due_order(void **state) {
    fx *f = *state;
    td_source src = {.name = "order.rules", .text = RULES_ORDER, .len = strlen(RULES_ORDER)};
    td_diags d = {0};
    td_ruleset *rs = td_ruleset_compile(&src, 1, &d);
    td_diags_free(&d);
    assert_non_null(rs);
    td_ruleset *keep = f->rs;
    f->rs = rs;
    send_email(f, "p-o", "e-1", T0);
    td_timers *t = timers_for(f, NULL);
    sink_buf sb = {0};
    td_timers_sink sink = {&sb, sink_send, sink_wait, NULL, NULL, NULL};
    size_t claimed = 0;
    /* one poll claims all three (one prospect: one shard) */
    assert_int_equal(td_timers_poll(t, f->r, rs, f->tz, T0 + 3 * TD_HOUR, &sink, &claimed), TD_OK);
    assert_int_equal(claimed, 3);
    assert_int_equal(sb.n, 3);
    assert_string_equal(sb.rules[0], "o.zeta");
    assert_string_equal(sb.rules[1], "o.alpha");
    assert_string_equal(sb.rules[2], "o.late");
    assert_string_equal(sb.not_before[0], at(T0 + TD_HOUR));
    assert_string_equal(sb.not_before[1], at(T0 + TD_HOUR));
    assert_string_equal(sb.not_before[2], at(T0 + 2 * TD_HOUR));
    assert_int_equal(td_timers_get_stats(t)->fired, 3);
    assert_int_equal(pending_total(f), 0);
    td_timers_free(t);
    f->rs = keep;
    td_ruleset_free(rs);
}

typedef struct poller {
    fx *f;
    sink_buf sb;
    td_ms now;
} poller;

static void *poll_thread(void *arg) {
    poller *p = arg;
    td_redis_conf rc = p->f->rconf;
    char err[256];
    td_redis *r = td_redis_new(&rc, err, sizeof err);
    td_redis_set_timer_shards(r, SHARDS);
    td_tzdb *tz = td_tzdb_new();
    td_timers *t = timers_for(p->f, NULL);
    td_timers_sink sink = {&p->sb, sink_send, sink_wait, NULL, NULL, NULL};
    for (int i = 0; i < 8 * SHARDS; i++) {
        size_t claimed;
        if (td_timers_poll(t, r, p->f->rs, tz, p->now, &sink, &claimed) != TD_OK) break;
    }
    td_timers_free(t);
    td_tzdb_free(tz);
    td_redis_free(r);
    return NULL;
}

static void test_two_pollers_fire_once(void **state) {
    fx *f = *state;
    enum { P = 100 };
    for (int i = 0; i < P; i++) {
        char pid[32];
        snprintf(pid, sizeof pid, "p-%d", i);
        send_email(f, pid, "e-1", T0 + i);
    }
    poller *a = calloc(1, sizeof *a), *b = calloc(1, sizeof *b);
    a->f = b->f = f;
    a->now = b->now = T0 + 10000; /* every short timer due, no long one */
    pthread_t ta, tb;
    pthread_create(&ta, NULL, poll_thread, a);
    pthread_create(&tb, NULL, poll_thread, b);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    print_message("poller A published %zu, poller B %zu\n", a->sb.n, b->sb.n);
    assert_int_equal(a->sb.n + b->sb.n, P);
    /* distinct ids */
    char(*ids)[40] = calloc(P, 40);
    memcpy(ids, a->sb.ids, a->sb.n * 40);
    memcpy(ids + a->sb.n, b->sb.ids, b->sb.n * 40);
    qsort(ids, P, 40, (int (*)(const void *, const void *))strcmp);
    for (int i = 1; i < P; i++)
        assert_true(strcmp(ids[i - 1], ids[i]) != 0);
    free(ids);
    assert_int_equal(pending_total(f), P); /* the 72h ones */
    assert_int_equal(zcard(f, "touchd:t:claimed"), 0);
    free(a);
    free(b);
}

/* The minimal ACL user of docs/timers.md can arm, claim, fire and ack. */
static void test_acl_user(void **state) {
    fx *f = *state;
    redisReply *rep = td_test_redis_cmd(
        &f->srv,
        "ACL SETUSER touchd on >s3cret ~touchd:* -@all +hgetall +evalsha +script|load "
        "+select +hget +hset +hdel +del +hkeys +hmget +zadd +zrem +zrangebyscore +zscore +zcard "
        "+watch +unwatch +multi +exec");
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_STATUS);
    freeReplyObject(rep);
    td_redis_conf rc = f->rconf;
    rc.username = "touchd";
    rc.password = "s3cret";
    char err[256];
    td_redis *r = td_redis_new(&rc, err, sizeof err);
    assert_non_null(r);
    td_redis_set_timer_shards(r, SHARDS);
    td_redis *saved = f->r;
    f->r = r; /* send_email and the poll use this client */
    send_email(f, "p-acl", "e-1", T0);
    td_timers_conf tc;
    td_timers_conf_default(&tc);
    tc.shards = SHARDS;
    tc.lease_ms = 5000;
    td_timers *t = td_timers_new(&rc, &tc, err, sizeof err);
    assert_non_null(t);
    sink_buf sb = {0};
    poll_all(f, t, T0 + 3000, &sb);
    assert_int_equal(sb.n, 1);
    assert_int_equal(td_timers_get_stats(t)->acked, 1);
    /* CONFIG is not allowed: the advice says nothing, without failing */
    char msg[300];
    assert_int_equal(td_timers_redis_advice(t, msg, sizeof msg), 0);
    td_timers_free(t);
    f->r = saved;
    td_redis_free(r);
}

/* ---- the heads ---- */

/* The head of a shard (ZSCORE <prefix>:t:heads <shard>), or -1. */
static long long head_of(fx *f, uint32_t shard) {
    redisReply *rep = td_test_redis_cmd(&f->srv, "ZSCORE touchd:t:heads %u", shard);
    assert_non_null(rep);
    long long v = rep->type == REDIS_REPLY_STRING ? atoll(rep->str) : -1;
    freeReplyObject(rep);
    return v;
}

/* The earliest score of a shard, or -1 when empty. */
static long long shard_min(fx *f, uint32_t shard) {
    redisReply *rep = td_test_redis_cmd(&f->srv, "ZRANGE touchd:t:%u 0 0 WITHSCORES", shard);
    assert_non_null(rep);
    long long v =
        rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 ? atoll(rep->element[1]->str) : -1;
    freeReplyObject(rep);
    return v;
}

/* The heads invariant: every non-empty shard has a head <= its earliest
 * member. @returns the number of shards breaking it. */
static int heads_violations(fx *f) {
    int bad = 0;
    for (uint32_t s = 0; s < SHARDS; s++) {
        long long m = shard_min(f, s), h = head_of(f, s);
        if (m >= 0 && (h < 0 || h > m)) {
            print_message("shard %u: earliest %lld, head %lld\n", s, m, h);
            bad++;
        }
    }
    return bad;
}

/* calls=N of a command in INFO commandstats (0 when it never ran). */
static long long cmd_calls(fx *f, const char *name) {
    redisReply *rep = td_test_redis_cmd(&f->srv, "INFO commandstats");
    assert_non_null(rep);
    char pat[64];
    snprintf(pat, sizeof pat, "cmdstat_%s:calls=", name);
    const char *p = strstr(rep->str, pat);
    long long v = p ? atoll(p + strlen(pat)) : 0;
    freeReplyObject(rep);
    return v;
}

/* An INFO field as a number (-1 when missing). */
static long long info_num(fx *f, const char *section, const char *field) {
    redisReply *rep = td_test_redis_cmd(&f->srv, "INFO %s", section);
    assert_non_null(rep);
    char pat[80];
    snprintf(pat, sizeof pat, "\r\n%s:", field);
    const char *p = strstr(rep->str, pat);
    long long v = p ? atoll(p + strlen(pat)) : -1;
    freeReplyObject(rep);
    return v;
}

/* A prospect id "<stem>-N" that lands in `shard`. */
static void pid_in_shard(uint32_t shard, const char *stem, char *buf, size_t cap) {
    for (int i = 0; i < 100000; i++) {
        snprintf(buf, cap, "%s-%d", stem, i);
        if (td_timers_shard(buf, SHARDS) == shard) return;
    }
    fail_msg("no id for shard %u", shard);
}

/* Claims from the heads alone (no safety-net window). */
static int claim_heads(td_timers *t, td_ms now, td_claim *out, size_t max) {
    return td_timers_claim_range(t, now, 0, 0, out, max);
}

static void test_heads_maintained_by_stores(void **state) {
    fx *f = *state;
    uint32_t s1 = td_timers_shard("p-1", SHARDS);
    assert_int_equal(head_of(f, s1), -1);
    send_email(f, "p-1", "e-1", T0); /* due T0+2s and T0+72h */
    assert_int_equal(head_of(f, s1), T0 + 2000);
    /* another prospect of the same shard with an earlier timer lowers it */
    char q[32], r2[32];
    pid_in_shard(s1, "q", q, sizeof q);
    send_email(f, q, "e-1", T0 - 1500);
    assert_int_equal(head_of(f, s1), T0 + 500);
    /* a later one does not raise it */
    pid_in_shard(s1, "r", r2, sizeof r2);
    send_email(f, r2, "e-1", T0 + 9000);
    assert_int_equal(head_of(f, s1), T0 + 500);
    /* a disarm leaves it early (a lower bound is all it promises)... */
    td_state st;
    td_state_init(&st, q);
    assert_int_equal(td_redis_load(f->r, &st, 1), TD_OK);
    td_state_disarm_timer(&st, "silence.short");
    int64_t exp = st.version;
    int res;
    assert_int_equal(td_redis_store(f->r, &st, &exp, 1, &res), TD_OK);
    assert_int_equal(res, TD_REDIS_STORED);
    td_state_free(&st);
    assert_int_equal(head_of(f, s1), T0 + 500);
    assert_int_equal(shard_min(f, s1), T0 + 2000);
    /* ...until a claim looks: nothing due at T0+1s, the head is corrected */
    td_timers *t = timers_for(f, NULL);
    td_claim c[8];
    assert_int_equal(claim_heads(t, T0 + 1000, c, 8), 0);
    assert_int_equal(head_of(f, s1), T0 + 2000);
    /* a claim that empties the due part moves the head to what is left */
    assert_int_equal(claim_heads(t, T0 + 2000, c, 8), 1);
    assert_string_equal(c[0].prospect_id, "p-1");
    assert_int_equal(head_of(f, s1), T0 + 11000);
    /* a shard emptied completely loses its head at the next look */
    char e1[32];
    pid_in_shard((s1 + 1) % SHARDS, "e", e1, sizeof e1);
    uint32_t s9 = (s1 + 1) % SHARDS;
    send_email(f, e1, "e-1", T0);
    assert_int_equal(head_of(f, s9), T0 + 2000);
    td_state_init(&st, e1);
    assert_int_equal(td_redis_load(f->r, &st, 1), TD_OK);
    td_state_disarm_timer(&st, "silence.short");
    td_state_disarm_timer(&st, "silence.nudge");
    exp = st.version;
    assert_int_equal(td_redis_store(f->r, &st, &exp, 1, &res), TD_OK);
    assert_int_equal(res, TD_REDIS_STORED);
    td_state_free(&st);
    assert_int_equal(shard_min(f, s9), -1);
    assert_int_equal(head_of(f, s9), T0 + 2000); /* stale, early: harmless */
    assert_int_equal(claim_heads(t, T0 + 3000, c, 8), 0);
    assert_int_equal(head_of(f, s9), -1);
    assert_int_equal(heads_violations(f), 0);
    td_timers_free(t);
}

/* An idle poll: a constant number of keys, whatever the shard count, and
 * no write. */
static void test_idle_poll_constant_keys(void **state) {
    fx *f = *state;
    for (int i = 0; i < 50; i++) {
        char pid[32];
        snprintf(pid, sizeof pid, "p-%d", i);
        send_email(f, pid, "e-1", T0);
    }
    td_timers *t = timers_for(f, NULL); /* sweep_ms 60000: window of 1 shard */
    td_claim c[8];
    /* the start-up round first (every shard, at the fast pace) */
    for (int i = 0; i < 2 * SHARDS && td_timers_get_stats(t)->swept < SHARDS; i++)
        assert_int_equal(td_timers_claim(t, T0 + 1000, c, 8), 0);
    assert_true(td_timers_get_stats(t)->swept >= SHARDS);
    redisReply *rep = td_test_redis_cmd(&f->srv, "CONFIG RESETSTAT");
    freeReplyObject(rep);
    long long dirty = info_num(f, "persistence", "rdb_changes_since_last_save");
    enum { POLLS = 20 };
    for (int i = 0; i < POLLS; i++)
        assert_int_equal(td_timers_claim(t, T0 + 1000, c, 8), 0); /* 100 pending, none due */
    /* per poll: the claimed set, the heads, and one window shard */
    assert_int_equal(cmd_calls(f, "evalsha"), POLLS);
    assert_int_equal(cmd_calls(f, "zrangebyscore"), POLLS * 3);
    assert_int_equal(info_num(f, "persistence", "rdb_changes_since_last_save"), dirty);
    td_timers_free(t);

    /* 4096 shards (the default): still 3 ZRANGEBYSCORE per idle poll at
     * sweep_ms = 600000 (the old layout read 820 shards per poll) */
    td_timers_conf tc;
    td_timers_conf_default(&tc);
    tc.shards = 4096;
    tc.sweep_ms = 600000;
    char err[256];
    t = td_timers_new(&f->rconf, &tc, err, sizeof err);
    assert_non_null(t);
    for (int i = 0; i < 100 && td_timers_get_stats(t)->swept < 4096; i++)
        assert_int_equal(td_timers_claim(t, T0 + 1000, c, 8), 0);
    assert_true(td_timers_get_stats(t)->swept >= 4096);
    rep = td_test_redis_cmd(&f->srv, "CONFIG RESETSTAT");
    freeReplyObject(rep);
    for (int i = 0; i < POLLS; i++)
        assert_int_equal(td_timers_claim(t, T0 + 1000, c, 8), 0);
    assert_int_equal(cmd_calls(f, "zrangebyscore"), POLLS * 3);
    /* the start-up round: 5 polls of 820 shards; then 1 shard per poll */
    assert_int_equal(td_timers_get_stats(t)->swept, 5 * 820 + POLLS);
    td_timers_free(t);
}

/* A timer written without a head (the previous version's layout: shards
 * only) fires through the safety net: at once in the start-up round, and
 * within one sweep later on. */
static void test_old_layout_fires_via_sweep(void **state) {
    fx *f = *state;
    send_email(f, "p-old", "e-1", T0);
    redisReply *rep = td_test_redis_cmd(&f->srv, "DEL touchd:t:heads");
    freeReplyObject(rep);
    td_timers *t = timers_for(f, NULL); /* window 1; start-up round 4 shards per poll */
    td_claim c[8];
    /* the heads alone do not know it */
    assert_int_equal(claim_heads(t, T0 + 3000, c, 8), 0);
    /* the start-up round (16 shards / 4 per poll) finds it, and the poll fires it */
    sink_buf sb = {0};
    td_timers_sink sink = {&sb, sink_send, sink_wait, NULL, NULL, NULL};
    int polls = 0;
    while (sb.n == 0 && polls < 8) {
        size_t claimed;
        assert_int_equal(td_timers_poll(t, f->r, f->rs, f->tz, T0 + 3000, &sink, &claimed), TD_OK);
        polls++;
    }
    print_message("old-layout timer fired after %d polls of the start-up round\n", polls);
    assert_int_equal(sb.n, 1);
    assert_true(polls <= 4);
    assert_false(hexists(f, "p-old", "timer.silence.short"));
    /* the round put the shard with the 72h timer in the heads */
    assert_int_equal(head_of(f, td_timers_shard("p-old", SHARDS)), T0 + 72 * TD_HOUR);
    /* after the start-up round: one shard per poll; a headless timer written
     * now is found within one sweep (SHARDS polls), not necessarily at once */
    for (int i = 0; i < SHARDS; i++)
        assert_int_equal(td_timers_claim(t, T0 + 3000, c, 8), 0);
    send_email(f, "p-old2", "e-1", T0);
    rep = td_test_redis_cmd(&f->srv, "ZREM touchd:t:heads %u", td_timers_shard("p-old2", SHARDS));
    freeReplyObject(rep);
    uint64_t swept0 = td_timers_get_stats(t)->swept;
    int got = 0;
    for (polls = 0; polls < SHARDS && !got; polls++) {
        got = td_timers_claim(t, T0 + 3000, c, 8);
        assert_true(got >= 0);
    }
    print_message("headless timer found after %d polls of the slow sweep\n", polls);
    assert_int_equal(got, 1);
    assert_string_equal(c[0].prospect_id, "p-old2");
    assert_int_equal(td_timers_get_stats(t)->swept - swept0, (uint64_t)polls);
    assert_int_equal(heads_violations(f), 0);
    td_timers_free(t);
}

/* Two claimers working from the heads alone while a third client keeps
 * arming: every due member is claimed exactly once. A head lost or raised
 * too far by an interleaving would strand a member (nothing else would
 * find it: no safety-net window here). */
typedef struct hclaimer {
    fx *f;
    td_claim *got;
    size_t n;
    volatile int *writing;
    int errors;
} hclaimer;

static void *heads_claim_thread(void *arg) {
    hclaimer *c = arg;
    td_timers *t = timers_for(c->f, NULL);
    td_claim buf[5];
    int idle = 0;
    while (*c->writing || idle < 20) {
        int k = claim_heads(t, T0 + TD_DAY, buf, 5);
        if (k < 0) {
            c->errors++;
            break;
        }
        idle = k == 0 ? idle + 1 : 0;
        memcpy(c->got + c->n, buf, (size_t)k * sizeof *buf);
        c->n += (size_t)k;
    }
    td_timers_free(t);
    return NULL;
}

typedef struct hwriter {
    fx *f;
    int n;
    volatile int *writing;
    int errors;
} hwriter;

/* Arms prospects w-0..w-(n-1) (short timers due T0 + 2s + i ms, long ones
 * 72h later) through the state script, each written twice (a re-arm). */
static void *heads_write_thread(void *arg) {
    hwriter *w = arg;
    char err[256];
    td_redis *r = td_redis_new(&w->f->rconf, err, sizeof err);
    td_redis_set_timer_shards(r, SHARDS);
    for (int round = 0; round < 2 && r; round++) {
        for (int i = 0; i < w->n; i++) {
            char pid[32];
            snprintf(pid, sizeof pid, "w-%d", i);
            td_state st;
            td_state_init(&st, pid);
            if (td_redis_load(r, &st, 1) != TD_OK) {
                w->errors++;
                td_state_free(&st);
                continue;
            }
            int64_t exp = st.version;
            td_state_arm_timer(&st, "silence.short", T0 + 2000 + i + round, round ? "e-2" : "e-1");
            td_state_arm_timer(&st, "silence.nudge", T0 + 72 * TD_HOUR + i, "e-1");
            int res;
            if (td_redis_store(r, &st, &exp, 1, &res) != TD_OK || res != TD_REDIS_STORED)
                w->errors++;
            td_state_free(&st);
        }
    }
    td_redis_free(r);
    *w->writing = 0;
    return NULL;
}

static void test_two_claimers_heads_only(void **state) {
    fx *f = *state;
    enum { N = 400 };
    volatile int writing = 1;
    hwriter w = {f, N, &writing, 0};
    hclaimer a = {f, calloc(2 * N, sizeof(td_claim)), 0, &writing, 0};
    hclaimer b = {f, calloc(2 * N, sizeof(td_claim)), 0, &writing, 0};
    pthread_t tw, ta, tb;
    pthread_create(&ta, NULL, heads_claim_thread, &a);
    pthread_create(&tb, NULL, heads_claim_thread, &b);
    pthread_create(&tw, NULL, heads_write_thread, &w);
    pthread_join(tw, NULL);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    print_message("claimer A got %zu, claimer B got %zu\n", a.n, b.n);
    assert_int_equal(w.errors, 0);
    assert_int_equal(a.errors + b.errors, 0);
    /* every short timer is claimed; one claimed before its re-arm comes
     * back (the re-arm puts the member back in its shard: a stale second
     * hand-out that the state resolves) but never to both claimers twice
     * under the same due time */
    size_t n = a.n + b.n;
    td_claim *all = calloc(n ? n : 1, sizeof *all);
    memcpy(all, a.got, a.n * sizeof *all);
    memcpy(all + a.n, b.got, b.n * sizeof *all);
    qsort(all, n, sizeof *all, claim_cmp);
    size_t distinct = 0;
    for (size_t i = 0; i < n; i++) {
        assert_string_equal(all[i].rule, "silence.short");
        if (i == 0 || claim_cmp(&all[i - 1], &all[i]) != 0) {
            distinct++;
        } else {
            /* the same member twice: only across its re-arm */
            assert_true(all[i - 1].due_at != all[i].due_at);
        }
    }
    assert_int_equal(distinct, N);
    assert_true(n <= 2 * N);
    /* nothing due is left behind in any shard: only the 72h timers */
    assert_int_equal(pending_total(f), N);
    for (uint32_t s = 0; s < SHARDS; s++) {
        long long m = shard_min(f, s);
        assert_true(m < 0 || m >= T0 + 72 * TD_HOUR);
    }
    assert_int_equal(heads_violations(f), 0);
    free(all);
    free(a.got);
    free(b.got);
}

/* A re-arm to a later time leaves the head early: the claim at the old
 * time finds nothing and moves the head, and the timer fires at its new
 * time; the same after a re-arm of a claimed timer. */
static void test_rearm_later_keeps_head(void **state) {
    fx *f = *state;
    uint32_t s = td_timers_shard("p-r", SHARDS);
    send_email(f, "p-r", "e-1", T0);            /* short due T0+2s */
    send_email(f, "p-r", "e-2", T0 + 10000);    /* re-armed: due T0+12s */
    assert_int_equal(head_of(f, s), T0 + 2000); /* not raised */
    td_timers *t = timers_for(f, NULL);
    td_claim c[4];
    assert_int_equal(claim_heads(t, T0 + 3000, c, 4), 0);
    assert_int_equal(head_of(f, s), T0 + 12000); /* corrected, not lost */
    assert_int_equal(claim_heads(t, T0 + 11999, c, 4), 0);
    assert_int_equal(claim_heads(t, T0 + 12000, c, 4), 1);
    assert_string_equal(c[0].prospect_id, "p-r");
    assert_int_equal(c[0].due_at, T0 + 12000);
    /* claimed, then re-armed by a new email: back in the shard with a head */
    send_email(f, "p-r", "e-3", T0 + 12500); /* due T0+14.5s */
    assert_true(head_of(f, s) <= T0 + 14500);
    assert_int_equal(claim_heads(t, T0 + 14000, c, 4), 0);
    assert_int_equal(claim_heads(t, T0 + 14500, c, 4), 1);
    assert_int_equal(c[0].due_at, T0 + 14500);
    /* and the full round fires it, from the heads alone */
    assert_int_equal(heads_violations(f), 0);
    td_timers_free(t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_arm_with_state_write, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rearm_and_disarm, setup, teardown),
        cmocka_unit_test_setup_teardown(test_claim_only_due, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redis_advice, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_claimers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lease_expiry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fire_late, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drop_older_than, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stale_and_sink_failure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_claims_fire_in_due_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_two_pollers_fire_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_acl_user, setup, teardown),
        cmocka_unit_test_setup_teardown(test_heads_maintained_by_stores, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idle_poll_constant_keys, setup, teardown),
        cmocka_unit_test_setup_teardown(test_old_layout_fires_via_sweep, setup, teardown),
        cmocka_unit_test_setup_teardown(test_two_claimers_heads_only, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rearm_later_keeps_head, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
