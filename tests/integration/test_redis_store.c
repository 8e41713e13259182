/*
 * test_redis_store.c - td_redis against a real redis-server (the shared
 * harness starts one per test on a free loopback port; never a fake).
 *
 * Covers: fresh states for absent keys, a lossless round trip of a richly
 * populated state, the version compare-and-set with two writers, a batch of
 * 1000 prospects, NOSCRIPT recovery, AUTH (requirepass and ACL users),
 * SELECT db, a server killed mid-stream and brought back (reconnect after
 * backoff), the command timeout (CLIENT PAUSE), malformed hashes, and what a
 * plain client sees with HGETALL. Also prints MEMORY USAGE of a typical
 * prospect (quoted in docs/redis.md).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "td_kvs.h"
#include "td_redis.h"
#include "td_state.h"
#include "td_timers.h"

/* ---- helpers ---- */

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static void conf_for(td_redis_conf *c, const td_test_redis *srv) {
    td_redis_conf_default(c);
    c->host = srv->host;
    c->port = srv->port;
    c->connect_timeout_ms = 1000;
    c->command_timeout_ms = 2000;
    c->backoff_min_ms = 50;
    c->backoff_max_ms = 400;
}

/* A connected client of srv whose calls time out after `timeout_ms`. */
static td_redis *client_tmo(const td_test_redis *srv, int timeout_ms) {
    td_redis_conf c;
    conf_for(&c, srv);
    c.command_timeout_ms = timeout_ms;
    char err[256];
    td_redis *r = td_redis_new(&c, err, sizeof err);
    assert_non_null(r);
    assert_true(td_redis_connected(r));
    return r;
}

static td_redis *client_for(const td_test_redis *srv) { return client_tmo(srv, 2000); }

/* A state with something in every part of the flat form. */
static void populate(td_state *st, const char *id, int salt) {
    td_state_init(st, id);
    td_strlcpy(st->owner_id, "rep-7", sizeof st->owner_id);
    st->events = 40 + salt;
    const td_ms t0 = 1795000000000LL + salt * 1000LL; /* 2026-11 */
    for (int c = 0; c < TD_CH__COUNT; c++) {
        td_chan_state *ch = &st->ch[c];
        ch->sent = 3 + c + salt;
        ch->delivered = 2 + c;
        ch->opened = 1 + c;
        ch->clicked = c;
        ch->replied = c % 2;
        ch->failed = c % 3;
        ch->unanswered = 2;
        ch->opens_since_reply = 1;
        ch->last_sent_at = t0 - c * TD_HOUR;
        ch->last_opened_at = t0 - c * TD_HOUR + 250; /* milliseconds survive */
        if (c % 2) ch->last_replied_at = t0 - TD_DAY;
        ch->consent = c == TD_CH_SMS ? TD_TRI_NO : TD_TRI_YES;
    }
    st->ch[TD_CH_EMAIL].blocked = TD_BLOCK_NONE;
    st->ch[TD_CH_WHATSAPP].blocked = TD_BLOCK_OPTED_OUT;
    st->stage = TD_STAGE_ENGAGED;
    st->tier = 2;
    td_strlcpy(st->country, "FR", sizeof st->country);
    td_strlcpy(st->sector, "industrial automation", sizeof st->sector);
    td_strlcpy(st->timezone, "Europe/Paris", sizeof st->timezone);
    st->gift_policy = TD_GP_RESTRICTED;
    st->lifetime_value_eur = 1250000; /* 125.0000 */
    td_strlcpy(st->language, "fr", sizeof st->language);
    st->first_seen_at = t0 - 30 * TD_DAY;
    st->last_event_at = t0;
    st->last_touch_at = t0 - TD_HOUR;
    st->last_inbound_at = t0 - TD_DAY;
    st->first_touch_at = t0 - 29 * TD_DAY;
    st->stage_changed_at = t0 - 3 * TD_DAY;
    st->replies = 3;
    st->last_reply_sentiment = TD_SENT_POSITIVE;
    st->meetings_booked = 2;
    st->meetings_held = 1;
    st->next_meeting_at = t0 + 2 * TD_DAY;
    for (uint32_t i = 0; i < 10; i++) {
        st->touch_ring[i] = t0 - (10 - i) * TD_DAY;
    }
    st->touch_count = 10;
    st->touch_head = 10;
    st->hour_hist[9] = 4;
    st->hour_hist[14] = 2;
    st->gift_year = 2026;
    st->gifts_year_count = 1;
    st->gifts_year_spend_eur = 450000;
    st->gifts_total = 2;
    st->last_gift_at = t0 - 40 * TD_DAY;
    st->last_gift_kind = TD_GK_BOOK;
    char eid[64];
    for (int i = 0; i < 12; i++) {
        snprintf(eid, sizeof eid, "e-%s-%d", id, i);
        td_state_remember(st, eid);
    }
    td_state_pos_set(st, "crm.events", 3, 1234567 + salt);
    td_state_pos_set(st, "crm.events", 7, 42);
    assert_int_equal(td_state_set_fired(st, "ghosting.pivot-channel", t0 - TD_DAY), TD_OK);
    assert_int_equal(td_state_set_fired(st, "silence.after-value", t0 - 2 * TD_DAY), TD_OK);
    assert_int_equal(td_state_arm_timer(st, "silence.after-value", t0 + 3 * TD_DAY, "e-armer-1"),
                     TD_OK);
}

static long long raw_int(redisContext *c, const char *cmd, const char *arg) {
    redisReply *rep = redisCommand(c, cmd, arg);
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_INTEGER);
    long long v = rep->integer;
    freeReplyObject(rep);
    return v;
}

/* HGET key field as a malloc'd string, NULL when absent. */
static char *raw_hget(redisContext *c, const char *key, const char *field) {
    redisReply *rep = redisCommand(c, "HGET %s %s", key, field);
    assert_non_null(rep);
    char *s = NULL;
    if (rep->type == REDIS_REPLY_STRING)
        s = strdup(rep->str);
    else
        assert_int_equal(rep->type, REDIS_REPLY_NIL);
    freeReplyObject(rep);
    return s;
}

static void raw_ok(redisContext *c, redisReply *rep) {
    (void)c;
    assert_non_null(rep);
    if (rep->type == REDIS_REPLY_ERROR) fail_msg("redis error: %s", rep->str);
    freeReplyObject(rep);
}

/* ---- fixtures: one server per test ---- */

static int setup(void **st) {
    td_test_redis *srv = calloc(1, sizeof *srv);
    if (!srv || td_test_redis_start(srv) != 0) {
        free(srv);
        return -1;
    }
    *st = srv;
    return 0;
}

static int teardown(void **st) {
    td_test_redis *srv = *st;
    td_test_redis_stop(srv);
    free(srv);
    return 0;
}

/* ---- a private server on a unix socket (the shared harness is TCP only) ---- */

static pid_t unix_server_start(const char *dir, char *sock, size_t cap) {
    snprintf(sock, cap, "%s/redis.sock", dir);
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0) {
            dup2(devnull, 1);
            dup2(devnull, 2);
        }
        const char *bin = getenv("TD_REDIS_SERVER");
        if (!bin || !bin[0]) bin = "redis-server";
        /* port 0: no TCP listener at all */
        execlp(bin, bin, "--port", "0", "--bind", "127.0.0.1", "--unixsocket", sock,
               "--unixsocketperm", "700", "--dir", dir, "--save", "", "--appendonly", "no",
               "--daemonize", "no", (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 500 && pid > 0; i++) {
        redisContext *c = redisConnectUnix(sock);
        bool ok = c && !c->err;
        if (c) redisFree(c);
        if (ok) return pid;
        sleep_ms(10);
    }
    if (pid > 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
    return -1;
}

static void unix_server_stop(pid_t pid) {
    if (pid <= 0) return;
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
}

/* ---- tests ---- */

static void test_key_and_conf(void **unused) {
    (void)unused;
    td_redis_conf c;
    td_redis_conf_default(&c);
    assert_string_equal(c.key_prefix, "touchd");
    c.port = 1; /* nothing listens there: not an error at creation */
    c.key_prefix = "acme";
    c.connect_timeout_ms = 200;
    char err[256];
    td_redis *r = td_redis_new(&c, err, sizeof err);
    assert_non_null(r);
    assert_false(td_redis_connected(r));
    assert_non_null(strstr(td_redis_last_error(r), "connect"));
    char key[64];
    assert_int_equal(td_redis_key(r, "p-42", key, sizeof key), strlen("acme:p:{p-42}"));
    assert_string_equal(key, "acme:p:{p-42}");
    /* a call inside the backoff window fails at once */
    td_state s;
    td_state_init(&s, "p-1");
    int64_t t = now_ms();
    assert_int_equal(td_redis_load(r, &s, 1), TD_ERR);
    assert_true(now_ms() - t < 100);
    assert_non_null(strstr(td_redis_last_error(r), "reconnecting in"));
    td_state_free(&s);
    td_redis_free(r);

    /* the backoff doubles per failed attempt, up to backoff_max_ms */
    c.backoff_min_ms = 40;
    c.backoff_max_ms = 100;
    r = td_redis_new(&c, err, sizeof err);
    assert_non_null(r);
    assert_non_null(strstr(td_redis_last_error(r), "reconnecting in 40 ms"));
    const char *want[] = {"reconnecting in 80 ms", "reconnecting in 100 ms",
                          "reconnecting in 100 ms"};
    td_state_init(&s, "p-1");
    for (int i = 0; i < 3; i++) {
        sleep_ms(i == 0 ? 60 : 120);
        assert_int_equal(td_redis_load(r, &s, 1), TD_ERR);
        assert_non_null(strstr(td_redis_last_error(r), "connect failed"));
        assert_non_null(strstr(td_redis_last_error(r), want[i]));
    }
    td_state_free(&s);
    td_redis_free(r);

    td_redis_conf_default(&c);
    c.port = 0;
    assert_null(td_redis_new(&c, err, sizeof err));
    assert_non_null(strstr(err, "port"));
    td_redis_conf_default(&c);
    c.key_prefix = "a{b}";
    assert_null(td_redis_new(&c, err, sizeof err));
    assert_non_null(strstr(err, "key_prefix"));
    td_redis_conf_default(&c);
    c.username = "u";
    assert_null(td_redis_new(&c, err, sizeof err));
    assert_non_null(strstr(err, "password"));
    td_redis_conf_default(&c);
    c.backoff_min_ms = 500;
    c.backoff_max_ms = 100;
    assert_null(td_redis_new(&c, err, sizeof err));
    assert_non_null(strstr(err, "backoff"));
}

static void test_load_absent(void **state) {
    td_test_redis *srv = *state;
    td_redis *r = client_for(srv);
    td_state s[3], fresh;
    const char *ids[] = {"p-1", "p-2", "p-\xc3\xa9t\xc3\xa9"};
    for (int i = 0; i < 3; i++) {
        td_state_init(&s[i], ids[i]);
        s[i].events = 99; /* must stay as the caller set it: absent key = no field set */
    }
    assert_int_equal(td_redis_load(r, s, 3), TD_OK);
    assert_string_equal(td_redis_last_error(r), "");
    for (int i = 0; i < 3; i++) {
        td_state_init(&fresh, ids[i]);
        fresh.events = 99;
        assert_true(td_state_equal(&s[i], &fresh));
        assert_int_equal(s[i].version, 0);
        td_state_free(&fresh);
        td_state_free(&s[i]);
    }
    td_redis_free(r);
}

static void test_roundtrip_and_plain_client(void **state) {
    td_test_redis *srv = *state;
    td_redis *r = client_for(srv);
    td_state a, b;
    populate(&a, "p-42", 0);
    int64_t exp = 0;
    int res = -1;
    assert_int_equal(td_redis_store(r, &a, &exp, 1, &res), TD_OK);
    assert_int_equal(res, TD_REDIS_STORED);
    assert_int_equal(a.version, 1);

    td_state_init(&b, "p-42");
    assert_int_equal(td_redis_load(r, &b, 1), TD_OK);
    assert_int_equal(b.version, 1);
    assert_true(td_state_equal(&a, &b));

    /* what ops see with redis-cli */
    redisContext *c = td_test_redis_connect(srv);
    assert_non_null(c);
    char *v = raw_hget(c, "touchd:p:{p-42}", "v");
    assert_non_null(v);
    assert_string_equal(v, "1");
    free(v);
    v = raw_hget(c, "touchd:p:{p-42}", "email.sent");
    assert_non_null(v);
    assert_string_equal(v, "3");
    free(v);
    redisReply *rep = redisCommand(c, "HGETALL %s", "touchd:p:{p-42}");
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
    assert_true(rep->elements > 40);
    int nv = 0;
    for (size_t i = 0; i < rep->elements; i += 2)
        if (!strcmp(rep->element[i]->str, "v")) nv++;
    assert_int_equal(nv, 1); /* exactly one version field */
    size_t nfields = rep->elements / 2;
    freeReplyObject(rep);
    rep = redisCommand(c, "MEMORY USAGE %s SAMPLES 0", "touchd:p:{p-42}");
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_INTEGER);
    printf("[ INFO     ] typical prospect: %zu hash fields, MEMORY USAGE %lld bytes\n", nfields,
           rep->integer);
    freeReplyObject(rep);
    redisFree(c);

    /* a second write from the loaded state replaces (not merges) the hash */
    td_state_free(&b);
    td_state_init(&b, "p-42");
    b.events = 1;
    exp = 1;
    assert_int_equal(td_redis_store(r, &b, &exp, 1, &res), TD_OK);
    assert_int_equal(res, TD_REDIS_STORED);
    assert_int_equal(b.version, 2);
    td_state c2;
    td_state_init(&c2, "p-42");
    assert_int_equal(td_redis_load(r, &c2, 1), TD_OK);
    assert_true(td_state_equal(&b, &c2));
    assert_int_equal(c2.ch[TD_CH_EMAIL].sent, 0); /* old fields gone */

    td_state_free(&a);
    td_state_free(&b);
    td_state_free(&c2);
    td_redis_free(r);
}

static void test_version_cas(void **state) {
    td_test_redis *srv = *state;
    td_redis *w1 = client_for(srv), *w2 = client_for(srv);
    td_state s1, s2, got;
    td_state_init(&s1, "p-cas");
    td_state_init(&s2, "p-cas");
    assert_int_equal(td_redis_load(w1, &s1, 1), TD_OK);
    assert_int_equal(td_redis_load(w2, &s2, 1), TD_OK);
    int64_t e1 = s1.version, e2 = s2.version;
    assert_int_equal(e1, 0);
    s1.events = 111;
    td_strlcpy(s1.owner_id, "rep-1", sizeof s1.owner_id);
    s2.events = 222;
    td_strlcpy(s2.owner_id, "rep-2", sizeof s2.owner_id);
    int r1 = -1, r2 = -1;
    assert_int_equal(td_redis_store(w1, &s1, &e1, 1, &r1), TD_OK);
    assert_int_equal(td_redis_store(w2, &s2, &e2, 1, &r2), TD_OK);
    assert_int_equal(r1, TD_REDIS_STORED);
    assert_int_equal(r2, TD_REDIS_CONFLICT);
    assert_int_equal(s1.version, 1);
    assert_int_equal(s2.version, 0); /* unchanged on conflict */

    td_state_init(&got, "p-cas");
    assert_int_equal(td_redis_load(w2, &got, 1), TD_OK);
    assert_int_equal(got.events, 111);
    assert_string_equal(got.owner_id, "rep-1");
    assert_true(td_state_equal(&got, &s1));

    /* the loser reloads and retries: now it wins */
    got.events = 333;
    int64_t eg = got.version;
    assert_int_equal(td_redis_store(w2, &got, &eg, 1, &r2), TD_OK);
    assert_int_equal(r2, TD_REDIS_STORED);
    assert_int_equal(got.version, 2);
    /* and the first writer's stale version now conflicts */
    e1 = 1;
    assert_int_equal(td_redis_store(w1, &s1, &e1, 1, &r1), TD_OK);
    assert_int_equal(r1, TD_REDIS_CONFLICT);

    /* a version ahead of the stored one conflicts too (no blind writes) */
    td_state fresh;
    td_state_init(&fresh, "p-new");
    int64_t ahead = 5;
    assert_int_equal(td_redis_store(w1, &fresh, &ahead, 1, &r1), TD_OK);
    assert_int_equal(r1, TD_REDIS_CONFLICT);
    redisContext *c = td_test_redis_connect(srv);
    assert_int_equal(raw_int(c, "EXISTS %s", "touchd:p:{p-new}"), 0);
    redisFree(c);

    td_state_free(&fresh);
    td_state_free(&s1);
    td_state_free(&s2);
    td_state_free(&got);
    td_redis_free(w1);
    td_redis_free(w2);
}

/* td_redis_store_diff of st[0..n) (pointers to them), as the daemon calls
 * it: the states are only read (checked: their versions are unchanged), and
 * the caller then sets the version of each stored one. */
static int store_diff_n(td_redis *r, td_state *st, const td_kvs *kb, const td_kvs *kn,
                        const int64_t *e, size_t n, int *res) {
    const td_state *p[128];
    int64_t before[128];
    assert_true(n <= 128);
    for (size_t i = 0; i < n; i++) {
        p[i] = &st[i];
        before[i] = st[i].version;
    }
    int rc = td_redis_store_diff(r, p, kb, kn, e, n, res);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(st[i].version, before[i]);
        if (rc == TD_OK && res[i] == TD_REDIS_STORED) st[i].version = e[i] + 1;
    }
    return rc;
}

/* td_redis_store_diff of one state against a base state (both captured). */
static int store_diff1(td_redis *r, td_state *st, const td_state *base, int64_t e, int *res) {
    td_kvs kb = {0}, kn = {0};
    assert_int_equal(td_kvs_capture(&kb, base), TD_OK);
    assert_int_equal(td_kvs_capture(&kn, st), TD_OK);
    int rc = store_diff_n(r, st, &kb, &kn, &e, 1, res);
    td_kvs_free(&kb);
    td_kvs_free(&kn);
    return rc;
}

/* Diff writes (td_redis_store_diff): only changed fields are sent, a
 * removed field disappears from the hash, a stale base conflicts and leaves
 * the stored hash alone, and a plain load reads back exactly the new state. */
static void test_store_diff(void **state) {
    td_test_redis *srv = *state;
    td_redis *r = client_for(srv);
    td_state base, st, got;
    populate(&st, "p-diff", 7);
    td_state_init(&base, "p-diff"); /* nothing stored yet: the base is empty */
    int res = -1;
    assert_int_equal(store_diff1(r, &st, &base, 0, &res), TD_OK);
    assert_int_equal(res, TD_REDIS_STORED);
    assert_int_equal(st.version, 1);
    td_state_init(&got, "p-diff");
    assert_int_equal(td_redis_load(r, &got, 1), TD_OK);
    assert_true(td_state_equal(&got, &st));
    td_state_free(&got);

    /* next write: one counter changes, one field is removed (owner cleared) */
    td_state_free(&base);
    assert_int_equal(td_state_copy(&base, &st), TD_OK);
    st.events += 5;
    st.owner_id[0] = '\0';
    assert_int_equal(store_diff1(r, &st, &base, 1, &res), TD_OK);
    assert_int_equal(res, TD_REDIS_STORED);
    redisContext *c = td_test_redis_connect(srv);
    char *owner = raw_hget(c, "touchd:p:{p-diff}", "owner_id");
    assert_null(owner); /* removed from the hash */
    char *v = raw_hget(c, "touchd:p:{p-diff}", "v");
    assert_string_equal(v, "2");
    free(v);
    td_state_init(&got, "p-diff");
    assert_int_equal(td_redis_load(r, &got, 1), TD_OK);
    assert_true(td_state_equal(&got, &st));
    td_state_free(&got);

    /* another writer moves the hash on: our stale base/version conflicts and
     * the other writer's data stays */
    raw_ok(c, redisCommand(c, "HSET touchd:p:{p-diff} events 999 v 3"));
    td_state_free(&base);
    assert_int_equal(td_state_copy(&base, &st), TD_OK);
    st.events += 1;
    assert_int_equal(store_diff1(r, &st, &base, 2, &res), TD_OK);
    assert_int_equal(res, TD_REDIS_CONFLICT);
    char *ev = raw_hget(c, "touchd:p:{p-diff}", "events");
    assert_string_equal(ev, "999");
    free(ev);
    redisFree(c);
    td_state_free(&base);
    td_state_free(&st);
    td_redis_free(r);
}

/* redis.verify_writes: a write against a base that is not what Redis holds
 * succeeds (same version) but leaves the hash other than the state; the read
 * back names the key and the field. Right bases, on the script path and on
 * the WATCH path (more than one chunk), find nothing. */
static void test_store_diff_verify(void **state) {
    td_test_redis *srv = *state;
    td_redis_conf conf;
    conf_for(&conf, srv);
    conf.verify_writes = true;
    char err[256];
    td_redis *r = td_redis_new(&conf, err, sizeof err);
    assert_non_null(r);
    td_redis *plain = client_for(srv);
    char last[400];

    td_state base, st;
    populate(&st, "p-ver", 3);
    td_state_init(&base, "p-ver");
    int res = -1;
    assert_int_equal(store_diff1(r, &st, &base, 0, &res), TD_OK);
    assert_int_equal(res, TD_REDIS_STORED);
    td_state_free(&base); /* right base: nothing to report */
    assert_int_equal(td_state_copy(&base, &st), TD_OK);
    st.events += 1;
    assert_int_equal(store_diff1(r, &st, &base, 1, &res), TD_OK);
    assert_int_equal(res, TD_REDIS_STORED);
    assert_int_equal(td_redis_verify_mismatches(r), 0);
    td_redis_verify_last(r, last, sizeof last);
    assert_string_equal(last, "");

    /* 128 prospects (the WATCH path, two chunks), right bases */
    enum { N = 128 };
    static td_state many[N];
    td_kvs kb[N], kn[N];
    int64_t e[N];
    int mres[N];
    for (int i = 0; i < N; i++) {
        char pid[32];
        snprintf(pid, sizeof pid, "p-vm-%d", i);
        populate(&many[i], pid, i);
        kb[i] = (td_kvs){0};
        kn[i] = (td_kvs){0};
        assert_int_equal(td_kvs_capture(&kn[i], &many[i]), TD_OK);
        e[i] = 0;
    }
    assert_int_equal(store_diff_n(r, many, kb, kn, e, N, mres), TD_OK);
    for (int i = 0; i < N; i++)
        assert_int_equal(mres[i], TD_REDIS_STORED);
    assert_int_equal(td_redis_verify_mismatches(r), 0);

    /* a wrong base: it says Redis holds owner "rep-9", Redis holds "rep-7";
     * the state has "rep-9", so the diff sends nothing for it */
    td_state_free(&base);
    assert_int_equal(td_state_copy(&base, &st), TD_OK);
    td_strlcpy(base.owner_id, "rep-9", sizeof base.owner_id);
    td_strlcpy(st.owner_id, "rep-9", sizeof st.owner_id);
    st.events += 1;
    assert_int_equal(store_diff1(plain, &st, &base, 2, &res), TD_OK); /* verify off */
    assert_int_equal(res, TD_REDIS_STORED);
    assert_int_equal(td_redis_verify_mismatches(plain), 0);
    td_state_free(&base);
    assert_int_equal(td_state_copy(&base, &st), TD_OK);
    st.events += 1;
    assert_int_equal(store_diff1(r, &st, &base, 3, &res), TD_OK); /* still rep-7 in Redis */
    assert_int_equal(res, TD_REDIS_STORED);
    assert_int_equal(td_redis_verify_mismatches(r), 1);
    td_redis_verify_last(r, last, sizeof last);
    assert_non_null(strstr(last, "touchd:p:{p-ver}"));
    assert_non_null(
        strstr(last, "field \"owner_id\": redis holds \"rep-7\", touchd wrote \"rep-9\""));

    /* another writer, no version bump: a field touchd's state does not
     * have (an email reply count where touchd has none); a field unknown to
     * touchd is ignored, as a reload ignores it */
    redisContext *c = td_test_redis_connect(srv);
    raw_ok(c, redisCommand(c, "HSET touchd:p:{p-ver} owner_id rep-9 zz.future x"));
    td_state_free(&base);
    assert_int_equal(td_state_copy(&base, &st), TD_OK);
    st.events += 1;
    assert_int_equal(store_diff1(r, &st, &base, 4, &res), TD_OK);
    assert_int_equal(td_redis_verify_mismatches(r), 1); /* agrees again */
    assert_int_equal(st.ch[TD_CH_SMS].replied, 0);
    raw_ok(c, redisCommand(c, "HSET touchd:p:{p-ver} sms.replied 5"));
    td_state_free(&base);
    assert_int_equal(td_state_copy(&base, &st), TD_OK);
    st.events += 1;
    assert_int_equal(store_diff1(r, &st, &base, 5, &res), TD_OK);
    assert_int_equal(td_redis_verify_mismatches(r), 2);
    td_redis_verify_last(r, last, sizeof last);
    assert_non_null(
        strstr(last, "field \"sms.replied\": redis holds \"5\", touchd has no such field"));

    /* a field touchd wrote that is gone */
    raw_ok(c, redisCommand(c, "HDEL touchd:p:{p-ver} sms.replied"));
    td_state_free(&base);
    assert_int_equal(td_state_copy(&base, &st), TD_OK);
    st.events += 1;
    assert_int_equal(store_diff1(r, &st, &base, 6, &res), TD_OK);
    assert_int_equal(td_redis_verify_mismatches(r), 2); /* agrees again */
    raw_ok(c, redisCommand(c, "HDEL touchd:p:{p-ver} owner_id"));
    td_state_free(&base);
    assert_int_equal(td_state_copy(&base, &st), TD_OK);
    st.events += 1;
    assert_int_equal(store_diff1(r, &st, &base, 7, &res), TD_OK);
    assert_int_equal(td_redis_verify_mismatches(r), 3);
    td_redis_verify_last(r, last, sizeof last);
    assert_non_null(
        strstr(last, "field \"owner_id\": touchd wrote \"rep-9\", redis has no such field"));

    redisFree(c);
    for (int i = 0; i < N; i++) {
        td_state_free(&many[i]);
        td_kvs_free(&kb[i]);
        td_kvs_free(&kn[i]);
    }
    td_state_free(&base);
    td_state_free(&st);
    td_redis_free(plain);
    td_redis_free(r);
}

static long long timer_score(redisContext *c, const char *pid, const char *rule, uint32_t shards);

/* The head of a timer shard (ZSCORE <prefix>:t:heads <shard>), or -1. */
static long long head_score(redisContext *c, uint32_t shard) {
    redisReply *rep = redisCommand(c, "ZSCORE touchd:t:heads %u", shard);
    assert_non_null(rep);
    long long v = rep->type == REDIS_REPLY_STRING ? atoll(rep->str) : -1;
    freeReplyObject(rep);
    return v;
}

/* The same timer-index changes through the WATCH/MULTI path (more than one
 * chunk of prospects), which writes plain ZADD/ZREM instead of the script. */
static void store_diff_timers_multi(td_test_redis *srv, unsigned lanes) {
    td_redis *r = client_for(srv);
    td_redis_set_lanes(r, lanes);
    td_redis_set_timer_shards(r, 4);
    redisContext *c = td_test_redis_connect(srv);
    enum { N = 70 };
    static td_state st[N];
    static td_kvs kb[N], kn[N];
    int64_t e[N];
    int res[N];
    char pid[32];
    for (int i = 0; i < N; i++) {
        snprintf(pid, sizeof pid, "p-tm-%d", i);
        td_state_init(&st[i], pid);
        memset(&kb[i], 0, sizeof kb[i]);
        memset(&kn[i], 0, sizeof kn[i]);
        assert_int_equal(td_kvs_capture(&kb[i], &st[i]), TD_OK); /* empty base */
        assert_int_equal(td_state_arm_timer(&st[i], "t.one", 1000000 + i, "e-1"), TD_OK);
        assert_int_equal(td_state_arm_timer(&st[i], "t.two", 2000000 + i, "e-1"), TD_OK);
        assert_int_equal(td_kvs_capture(&kn[i], &st[i]), TD_OK);
        e[i] = 0;
    }
    assert_int_equal(store_diff_n(r, st, kb, kn, e, N, res), TD_OK);
    long long lo[4] = {-1, -1, -1, -1}; /* the earliest t.one per shard */
    for (int i = 0; i < N; i++) {
        assert_int_equal(res[i], TD_REDIS_STORED);
        snprintf(pid, sizeof pid, "p-tm-%d", i);
        assert_int_equal(timer_score(c, pid, "t.one", 4), 1000000 + i);
        assert_int_equal(timer_score(c, pid, "t.two", 4), 2000000 + i);
        uint32_t sh = td_timers_shard(pid, 4);
        if (lo[sh] < 0) lo[sh] = 1000000 + i;
    }
    /* the MULTI set every shard's head (ZADD LT) to its earliest timer */
    for (uint32_t sh = 0; sh < 4; sh++)
        assert_int_equal(head_score(c, sh), lo[sh]);
    for (int i = 0; i < N; i++) {
        td_kvs_move(&kb[i], &kn[i]);
        assert_int_equal(td_state_arm_timer(&st[i], "t.one", 1500000 + i, "e-2"), TD_OK);
        td_state_disarm_timer(&st[i], "t.two");
        assert_int_equal(td_kvs_capture(&kn[i], &st[i]), TD_OK);
        e[i] = 1;
    }
    assert_int_equal(store_diff_n(r, st, kb, kn, e, N, res), TD_OK);
    for (int i = 0; i < N; i++) {
        assert_int_equal(res[i], TD_REDIS_STORED);
        snprintf(pid, sizeof pid, "p-tm-%d", i);
        assert_int_equal(timer_score(c, pid, "t.one", 4), 1500000 + i);
        assert_int_equal(timer_score(c, pid, "t.two", 4), -1);
    }
    /* re-armed later: the heads stay (early, never late) */
    for (uint32_t sh = 0; sh < 4; sh++)
        assert_int_equal(head_score(c, sh), lo[sh]);
    td_state got;
    td_state_init(&got, "p-tm-69");
    assert_int_equal(td_redis_load(r, &got, 1), TD_OK);
    assert_true(td_state_equal(&got, &st[69]));
    td_state_free(&got);
    for (int i = 0; i < N; i++) {
        td_state_free(&st[i]);
        td_kvs_free(&kb[i]);
        td_kvs_free(&kn[i]);
    }
    redisFree(c);
    td_redis_free(r);
}

static void test_store_diff_timers_multi(void **state) { store_diff_timers_multi(*state, 1); }
static void test_store_diff_timers_multi2(void **state) { store_diff_timers_multi(*state, 2); }

/* A concurrent writer between the version check and the write: EXEC
 * aborts, nothing of the round is written, and the per-prospect script then
 * stores the untouched prospects and reports the changed one as a conflict
 * (its other writer's data intact). */
typedef struct racer {
    td_test_redis *srv;
    int calls;
} racer;

static void race(void *ud) {
    racer *rc = ud;
    rc->calls++;
    redisContext *c = td_test_redis_connect(rc->srv);
    raw_ok(c, redisCommand(c, "HSET touchd:p:{p-race-1} events 777 v 9"));
    redisFree(c);
}

static void store_diff_race(td_test_redis *srv, unsigned lanes) {
    td_redis *r = client_for(srv);
    td_redis_set_lanes(r, lanes);
    /* more than one chunk (64): smaller writes go straight to the script */
    enum { N = 70 };
    static td_state st[N], base[N];
    static td_kvs kb[N], kn[N];
    int64_t e[N];
    int res[N];
    for (int i = 0; i < N; i++) {
        char pid[32];
        snprintf(pid, sizeof pid, "p-race-%d", i);
        populate(&st[i], pid, 3 + i);
        td_state_init(&base[i], pid);
        memset(&kb[i], 0, sizeof kb[i]);
        memset(&kn[i], 0, sizeof kn[i]);
        assert_int_equal(td_kvs_capture(&kb[i], &base[i]), TD_OK);
        assert_int_equal(td_kvs_capture(&kn[i], &st[i]), TD_OK);
        e[i] = 0;
        res[i] = -1;
    }
    racer rc = {srv, 0};
    td_redis_set_race_hook(r, race, &rc);
    assert_int_equal(store_diff_n(r, st, kb, kn, e, N, res), TD_OK);
    assert_int_equal(rc.calls, 2); /* once per chunk; the fallback has no WATCH */
    for (int i = 0; i < N; i++)
        assert_int_equal(res[i], i == 1 ? TD_REDIS_CONFLICT : TD_REDIS_STORED);
    redisContext *c = td_test_redis_connect(srv);
    char *ev = raw_hget(c, "touchd:p:{p-race-1}", "events");
    assert_string_equal(ev, "777");
    free(ev);
    char *v = raw_hget(c, "touchd:p:{p-race-69}", "v");
    assert_string_equal(v, "1");
    free(v);
    redisFree(c);
    td_state got;
    td_state_init(&got, "p-race-2");
    assert_int_equal(td_redis_load(r, &got, 1), TD_OK);
    assert_true(td_state_equal(&got, &st[2]));
    td_state_free(&got);
    /* without contention the watch rounds alone store: a version conflict
     * found by the check is reported, the rest written */
    td_redis_set_race_hook(r, NULL, NULL);
    for (int i = 0; i < N; i++) {
        td_kvs_move(&kb[i], &kn[i]);
        st[i].events += 1;
        assert_int_equal(td_kvs_capture(&kn[i], &st[i]), TD_OK);
        e[i] = i == 1 ? 0 : 1; /* p-race-1 is at 9: a stale expectation */
    }
    assert_int_equal(store_diff_n(r, st, kb, kn, e, N, res), TD_OK);
    for (int i = 0; i < N; i++)
        assert_int_equal(res[i], i == 1 ? TD_REDIS_CONFLICT : TD_REDIS_STORED);
    c = td_test_redis_connect(srv);
    v = raw_hget(c, "touchd:p:{p-race-0}", "v");
    assert_string_equal(v, "2");
    free(v);
    v = raw_hget(c, "touchd:p:{p-race-68}", "v");
    assert_string_equal(v, "2");
    free(v);
    v = raw_hget(c, "touchd:p:{p-race-1}", "v"); /* the conflict: untouched */
    assert_string_equal(v, "9");
    free(v);
    redisFree(c);
    td_state_init(&got, "p-race-68");
    assert_int_equal(td_redis_load(r, &got, 1), TD_OK);
    assert_true(td_state_equal(&got, &st[68]));
    td_state_free(&got);
    for (int i = 0; i < N; i++) {
        td_state_free(&st[i]);
        td_state_free(&base[i]);
        td_kvs_free(&kb[i]);
        td_kvs_free(&kn[i]);
    }
    td_redis_free(r);
}

static void test_store_diff_race(void **state) { store_diff_race(*state, 1); }
static void test_store_diff_race2(void **state) { store_diff_race(*state, 2); }

/* The score of member "<pid>\x1f<rule>" in the prospect's timer shard, or
 * -1 when absent. */
static long long timer_score(redisContext *c, const char *pid, const char *rule, uint32_t shards) {
    char zk[96], member[256];
    td_timers_shard_key("touchd", td_timers_shard(pid, shards), zk, sizeof zk);
    int n = snprintf(member, sizeof member, "%s%c%s", pid, TD_TIMER_SEP, rule);
    redisReply *rep = redisCommand(c, "ZSCORE %s %b", zk, member, (size_t)n);
    assert_non_null(rep);
    long long v = rep->type == REDIS_REPLY_STRING ? atoll(rep->str) : -1;
    freeReplyObject(rep);
    return v;
}

/* Diff writes keep the timer index in step: an armed timer is ZADDed with
 * its due time, a re-armed one gets the new score, a disarmed one is ZREMed,
 * and an unchanged one is not touched (it may be being claimed). */
static void test_store_diff_timers(void **state) {
    td_test_redis *srv = *state;
    td_redis *r = client_for(srv);
    td_redis_set_timer_shards(r, 4);
    redisContext *c = td_test_redis_connect(srv);
    td_state base, st;
    td_state_init(&base, "p-dt");
    td_state_init(&st, "p-dt");
    assert_int_equal(td_state_arm_timer(&st, "t.one", 1000000, "e-1"), TD_OK);
    assert_int_equal(td_state_arm_timer(&st, "t.two", 2000000, "e-1"), TD_OK);
    assert_int_equal(td_state_arm_timer(&st, "t.keep", 5000000, "e-1"), TD_OK);
    int res = -1;
    assert_int_equal(store_diff1(r, &st, &base, 0, &res), TD_OK);
    assert_int_equal(res, TD_REDIS_STORED);
    assert_int_equal(timer_score(c, "p-dt", "t.one", 4), 1000000);
    assert_int_equal(timer_score(c, "p-dt", "t.two", 4), 2000000);
    assert_int_equal(timer_score(c, "p-dt", "t.keep", 4), 5000000);
    /* the diff script lowered the shard's head to the earliest timer */
    uint32_t dsh = td_timers_shard("p-dt", 4);
    assert_int_equal(head_score(c, dsh), 1000000);

    /* a marker score on t.keep: an unchanged timer must keep it */
    char zk[96], member[64];
    td_timers_shard_key("touchd", td_timers_shard("p-dt", 4), zk, sizeof zk);
    int mn = snprintf(member, sizeof member, "p-dt%ct.keep", TD_TIMER_SEP);
    raw_ok(c, redisCommand(c, "ZADD %s 42 %b", zk, member, (size_t)mn));

    td_state_free(&base);
    assert_int_equal(td_state_copy(&base, &st), TD_OK);
    assert_int_equal(td_state_arm_timer(&st, "t.one", 1500000, "e-2"), TD_OK);
    td_state_disarm_timer(&st, "t.two");
    assert_int_equal(td_state_arm_timer(&st, "t.four", 4000000, "e-2"), TD_OK);
    assert_int_equal(store_diff1(r, &st, &base, 1, &res), TD_OK);
    assert_int_equal(res, TD_REDIS_STORED);
    assert_int_equal(timer_score(c, "p-dt", "t.one", 4), 1500000);  /* re-armed */
    assert_int_equal(timer_score(c, "p-dt", "t.two", 4), -1);       /* disarmed */
    assert_int_equal(timer_score(c, "p-dt", "t.four", 4), 4000000); /* armed */
    assert_int_equal(timer_score(c, "p-dt", "t.keep", 4), 42);      /* untouched */
    assert_int_equal(head_score(c, dsh), 1000000); /* ZADD LT 1500000: not raised */
    /* an earlier arm lowers it */
    td_state_free(&base);
    assert_int_equal(td_state_copy(&base, &st), TD_OK);
    assert_int_equal(td_state_arm_timer(&st, "t.five", 900000, "e-3"), TD_OK);
    assert_int_equal(store_diff1(r, &st, &base, 2, &res), TD_OK);
    assert_int_equal(res, TD_REDIS_STORED);
    assert_int_equal(head_score(c, dsh), 900000);
    td_state got;
    td_state_init(&got, "p-dt");
    assert_int_equal(td_redis_load(r, &got, 1), TD_OK);
    assert_true(td_state_equal(&got, &st));
    td_state_free(&got);
    redisFree(c);
    td_state_free(&base);
    td_state_free(&st);
    td_redis_free(r);
}

#define BATCH 1000

static void test_batch_1000(void **state) {
    td_test_redis *srv = *state;
    td_redis *r = client_for(srv);
    td_state *s = calloc(BATCH, sizeof *s), *l = calloc(BATCH, sizeof *l);
    int64_t *exp = calloc(BATCH, sizeof *exp);
    int *res = calloc(BATCH, sizeof *res);
    assert_non_null(s);
    assert_non_null(l);
    assert_non_null(exp);
    assert_non_null(res);
    char id[32];
    for (int i = 0; i < BATCH; i++) {
        snprintf(id, sizeof id, "p-%d", i);
        populate(&s[i], id, i);
        res[i] = -1;
    }
    /* pre-store prospect 500 so exactly one conflicts */
    int one = -1;
    td_state tmp;
    td_state_init(&tmp, "p-500");
    int64_t zero = 0;
    assert_int_equal(td_redis_store(r, &tmp, &zero, 1, &one), TD_OK);
    assert_int_equal(one, TD_REDIS_STORED);
    td_state_free(&tmp);

    redisContext *c = td_test_redis_connect(srv);
    raw_ok(c, redisCommand(c, "CONFIG RESETSTAT"));
    assert_int_equal(td_redis_store(r, s, exp, BATCH, res), TD_OK);
    for (int i = 0; i < BATCH; i++) {
        if (i == 500) {
            assert_int_equal(res[i], TD_REDIS_CONFLICT);
            assert_int_equal(s[i].version, 0);
        } else {
            assert_int_equal(res[i], TD_REDIS_STORED);
            assert_int_equal(s[i].version, 1);
        }
    }
    /* one EVALSHA per prospect, no extra round trips (no PING, no EVAL) */
    redisReply *rep = redisCommand(c, "INFO commandstats");
    assert_non_null(rep);
    assert_non_null(strstr(rep->str, "cmdstat_evalsha:calls=1000,"));
    assert_null(strstr(rep->str, "cmdstat_ping:"));
    freeReplyObject(rep);
    assert_int_equal(raw_int(c, "DBSIZE%s", ""), BATCH);

    for (int i = 0; i < BATCH; i++) {
        snprintf(id, sizeof id, "p-%d", i);
        td_state_init(&l[i], id);
    }
    assert_int_equal(td_redis_load(r, l, BATCH), TD_OK);
    for (int i = 0; i < BATCH; i++) {
        if (i == 500)
            assert_int_equal(l[i].version, 1); /* the other writer's fresh state */
        else
            assert_true(td_state_equal(&s[i], &l[i]));
    }
    rep = redisCommand(c, "INFO commandstats");
    assert_non_null(strstr(rep->str, "cmdstat_hgetall:calls=1000,"));
    freeReplyObject(rep);
    redisFree(c);
    for (int i = 0; i < BATCH; i++) {
        td_state_free(&s[i]);
        td_state_free(&l[i]);
    }
    free(s);
    free(l);
    free(exp);
    free(res);
    td_redis_free(r);
}

static void test_noscript_recovery(void **state) {
    td_test_redis *srv = *state;
    td_redis *r = client_for(srv);
    redisContext *c = td_test_redis_connect(srv);
    td_state s[2];
    td_state_init(&s[0], "p-a");
    td_state_init(&s[1], "p-b");
    int64_t exp[2] = {0, 0};
    int res[2];
    assert_int_equal(td_redis_store(r, s, exp, 2, res), TD_OK);
    assert_int_equal(res[0], TD_REDIS_STORED);
    assert_int_equal(res[1], TD_REDIS_STORED);

    raw_ok(c, redisCommand(c, "SCRIPT FLUSH"));
    raw_ok(c, redisCommand(c, "CONFIG RESETSTAT"));
    s[0].events = 5;
    s[1].events = 6;
    exp[0] = 1;
    exp[1] = 1;
    assert_int_equal(td_redis_store(r, s, exp, 2, res), TD_OK);
    assert_int_equal(res[0], TD_REDIS_STORED);
    assert_int_equal(res[1], TD_REDIS_STORED);
    assert_int_equal(s[0].version, 2);
    char *v = raw_hget(c, "touchd:p:{p-b}", "events");
    assert_non_null(v);
    assert_string_equal(v, "6");
    free(v);
    redisReply *rep = redisCommand(c, "INFO commandstats");
    assert_non_null(rep);
    /* 2 NOSCRIPT failures + 2 retries, and exactly one SCRIPT LOAD */
    assert_non_null(strstr(rep->str, "cmdstat_evalsha:calls=4,"));
    assert_non_null(strstr(rep->str, "cmdstat_script|load:calls=1,"));
    freeReplyObject(rep);

    redisFree(c);
    td_state_free(&s[0]);
    td_state_free(&s[1]);
    td_redis_free(r);
}

static void test_auth(void **state) {
    td_test_redis *srv = *state;
    static const char pw[] = "s3cret-Pa55";
    static const char wrong[] = "not-the-Pa55";
    redisContext *admin = td_test_redis_connect(srv);
    assert_non_null(admin);
    raw_ok(admin,
           redisCommand(
               admin,
               "ACL SETUSER touch on >%s ~touchd:* -@all +hgetall +evalsha +script|load +select "
               "+hget +hset +hdel +del +zadd +zrem +watch +unwatch +multi +exec",
               "acl-Pw-9"));
    raw_ok(admin, redisCommand(admin, "CONFIG SET requirepass %s", pw));

    td_redis_conf conf;
    conf_for(&conf, srv);
    char err[256];
    td_state s;
    td_state_init(&s, "p-auth");

    /* no password: NOAUTH, clearly */
    td_redis *r = td_redis_new(&conf, err, sizeof err);
    assert_non_null(r);
    assert_int_equal(td_redis_load(r, &s, 1), TD_ERR);
    assert_non_null(strstr(td_redis_last_error(r), "NOAUTH"));
    td_redis_free(r);

    /* wrong password: AUTH failed, and the password is never in the text */
    conf.password = wrong;
    r = td_redis_new(&conf, err, sizeof err);
    assert_non_null(r);
    assert_false(td_redis_connected(r));
    assert_non_null(strstr(td_redis_last_error(r), "AUTH failed"));
    assert_null(strstr(td_redis_last_error(r), wrong));
    assert_int_equal(td_redis_load(r, &s, 1), TD_ERR);
    assert_null(strstr(td_redis_last_error(r), wrong));
    td_redis_free(r);

    /* the right one works */
    conf.password = pw;
    r = td_redis_new(&conf, err, sizeof err);
    assert_non_null(r);
    assert_true(td_redis_connected(r));
    int64_t e = 0;
    int res = -1;
    assert_int_equal(td_redis_store(r, &s, &e, 1, &res), TD_OK);
    assert_int_equal(res, TD_REDIS_STORED);
    td_redis_free(r);

    /* ACL user: username + password */
    conf.username = "touch";
    conf.password = "acl-Pw-9";
    r = td_redis_new(&conf, err, sizeof err);
    assert_non_null(r);
    assert_true(td_redis_connected(r));
    e = 1;
    assert_int_equal(td_redis_store(r, &s, &e, 1, &res), TD_OK);
    assert_int_equal(res, TD_REDIS_STORED);
    td_state_free(&s);
    td_state_init(&s, "p-auth");
    assert_int_equal(td_redis_load(r, &s, 1), TD_OK);
    assert_int_equal(s.version, 2);
    /* the documented ACL covers the daemon's diff writes (HDEL included) */
    td_state before;
    assert_int_equal(td_state_copy(&before, &s), TD_OK);
    s.events += 3;
    assert_int_equal(store_diff1(r, &s, &before, 2, &res), TD_OK);
    assert_int_equal(res, TD_REDIS_STORED);
    td_state_free(&before);
    assert_int_equal(td_state_copy(&before, &s), TD_OK);
    s.events = 0; /* back to the default: the field is deleted */
    assert_int_equal(store_diff1(r, &s, &before, 3, &res), TD_OK);
    assert_int_equal(res, TD_REDIS_STORED);
    td_state_free(&before);
    td_state_free(&s);
    td_state_init(&s, "p-auth");
    assert_int_equal(td_redis_load(r, &s, 1), TD_OK);
    assert_int_equal(s.version, 4);
    assert_int_equal(s.events, 0);
    td_redis_free(r);
    /* ACL user with the wrong password */
    conf.password = wrong;
    r = td_redis_new(&conf, err, sizeof err);
    assert_non_null(r);
    assert_false(td_redis_connected(r));
    assert_non_null(strstr(td_redis_last_error(r), "WRONGPASS"));
    assert_null(strstr(td_redis_last_error(r), wrong));
    td_redis_free(r);

    raw_ok(admin, redisCommand(admin, "CONFIG SET requirepass %s", ""));
    redisFree(admin);
    td_state_free(&s);
}

static void test_select_db(void **state) {
    td_test_redis *srv = *state;
    td_redis_conf conf;
    conf_for(&conf, srv);
    conf.db = 3;
    conf.key_prefix = "acme";
    char err[256];
    td_redis *r = td_redis_new(&conf, err, sizeof err);
    assert_non_null(r);
    td_state s;
    td_state_init(&s, "p-db");
    s.events = 7;
    int64_t e = 0;
    int res = -1;
    assert_int_equal(td_redis_store(r, &s, &e, 1, &res), TD_OK);
    assert_int_equal(res, TD_REDIS_STORED);

    redisContext *c = td_test_redis_connect(srv);
    assert_int_equal(raw_int(c, "EXISTS %s", "acme:p:{p-db}"), 0); /* not in db 0 */
    raw_ok(c, redisCommand(c, "SELECT 3"));
    char *v = raw_hget(c, "acme:p:{p-db}", "events");
    assert_non_null(v);
    assert_string_equal(v, "7");
    free(v);
    redisFree(c);

    /* an out-of-range db is a clear connect error */
    conf.db = 99999;
    td_redis *bad = td_redis_new(&conf, err, sizeof err);
    assert_non_null(bad);
    assert_false(td_redis_connected(bad));
    assert_non_null(strstr(td_redis_last_error(bad), "SELECT failed"));
    td_redis_free(bad);
    td_state_free(&s);
    td_redis_free(r);
}

typedef struct killer {
    pid_t pid;
    int after_ms;
} killer;

static void *killer_main(void *arg) {
    killer *k = arg;
    sleep_ms(k->after_ms);
    kill(k->pid, SIGKILL);
    return NULL;
}

static void test_kill_and_reconnect(void **state) {
    td_test_redis *srv = *state;
    td_redis *r = client_for(srv);
    enum { N = 500 };
    td_state *s = calloc(N, sizeof *s);
    int64_t *exp = calloc(N, sizeof *exp);
    int *res = calloc(N, sizeof *res);
    assert_non_null(s);
    char id[32];
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof id, "p-%d", i);
        populate(&s[i], id, i);
    }
    /* it works before the kill */
    for (int i = 0; i < N; i++)
        exp[i] = s[i].version;
    assert_int_equal(td_redis_store(r, s, exp, N, res), TD_OK);
    assert_int_equal(res[N - 1], TD_REDIS_STORED);
    /* store batches until the server dies under us (20 ms: mid-batch) */
    killer k = {srv->pid, 20};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, killer_main, &k), 0);
    int rc = TD_OK;
    int rounds = 0;
    int64_t t0 = now_ms();
    while (rc == TD_OK && now_ms() - t0 < 10000) {
        for (int i = 0; i < N; i++)
            exp[i] = s[i].version;
        rc = td_redis_store(r, s, exp, N, res);
        rounds++;
    }
    pthread_join(th, NULL);
    assert_int_equal(rc, TD_ERR);
    assert_false(td_redis_connected(r));
    printf("[ INFO     ] after %d batches: %s\n", rounds, td_redis_last_error(r));
    td_test_redis_kill(srv); /* reap */

    /* while down: fails, fast (connection refused or inside the backoff) */
    int64_t t = now_ms();
    assert_int_equal(td_redis_load(r, s, 1), TD_ERR);
    assert_true(now_ms() - t < 1000);
    assert_int_equal(td_redis_load(r, s, 1), TD_ERR);
    assert_non_null(strstr(td_redis_last_error(r), "reconnecting in"));

    assert_int_equal(td_test_redis_restart(srv), 0);
    /* the next calls reconnect after the backoff (<= backoff_max 400 ms) */
    int fails = 0;
    t = now_ms();
    td_state fresh;
    td_state_init(&fresh, "p-0");
    while ((rc = td_redis_load(r, &fresh, 1)) != TD_OK && now_ms() - t < 5000) {
        fails++;
        sleep_ms(20);
    }
    assert_int_equal(rc, TD_OK);
    assert_true(td_redis_connected(r));
    assert_true(now_ms() - t < 2000);
    printf("[ INFO     ] reconnected after %d fast failures, %lld ms\n", fails,
           (long long)(now_ms() - t));
    /* the restarted server has no data (no persistence): a fresh state, and
     * the script is re-loaded transparently */
    assert_int_equal(fresh.version, 0);
    int64_t e = 0;
    int one = -1;
    assert_int_equal(td_redis_store(r, &fresh, &e, 1, &one), TD_OK);
    assert_int_equal(one, TD_REDIS_STORED);

    td_state_free(&fresh);
    for (int i = 0; i < N; i++)
        td_state_free(&s[i]);
    free(s);
    free(exp);
    free(res);
    td_redis_free(r);
}

/* Clients of srv whose last command was `cmd` (CLIENT LIST). */
static int clients_last(redisContext *c, const char *cmd) {
    redisReply *rep = redisCommand(c, "CLIENT LIST");
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_STRING);
    char want[64];
    snprintf(want, sizeof want, " cmd=%s ", cmd);
    int n = 0;
    for (const char *p = rep->str; (p = strstr(p, want)) != NULL; p++)
        n++;
    freeReplyObject(rep);
    return n;
}

/* A many-chunk diff write of n prospects "p-ln-<i>" of st through r; each
 * base becomes the state written. */
static int lanes_write(td_redis *r, td_state *st, td_kvs *kb, td_kvs *kn, int64_t *e, int *res,
                       size_t n) {
    const td_state **p = calloc(n, sizeof *p);
    assert_non_null(p);
    for (size_t i = 0; i < n; i++) {
        p[i] = &st[i];
        assert_int_equal(td_kvs_capture(&kn[i], &st[i]), TD_OK);
        res[i] = -1;
    }
    int rc = td_redis_store_diff(r, p, kb, kn, e, n, res);
    for (size_t i = 0; rc == TD_OK && i < n; i++)
        if (res[i] == TD_REDIS_STORED) {
            st[i].version = e[i] + 1;
            td_kvs_move(&kb[i], &kn[i]);
        }
    free(p);
    return rc;
}

/* The prospects of the two-lane tests: n states "<prefix><i>", each with an
 * empty base (a first write), and the arrays lanes_write takes. */
typedef struct lanes_fx {
    td_state *st;
    td_kvs *kb, *kn;
    int64_t *e;
    int *res;
    size_t n;
} lanes_fx;

static void lanes_fx_new(lanes_fx *f, const char *prefix, size_t n) {
    f->n = n;
    f->st = calloc(n, sizeof *f->st);
    f->kb = calloc(n, sizeof *f->kb);
    f->kn = calloc(n, sizeof *f->kn);
    f->e = calloc(n, sizeof *f->e);
    f->res = calloc(n, sizeof *f->res);
    assert_true(f->st && f->kb && f->kn && f->e && f->res);
    char pid[64];
    td_state empty;
    for (size_t i = 0; i < n; i++) {
        snprintf(pid, sizeof pid, "%s%zu", prefix, i);
        populate(&f->st[i], pid, (int)i);
        td_state_init(&empty, pid);
        assert_int_equal(td_kvs_capture(&f->kb[i], &empty), TD_OK);
        td_state_free(&empty);
    }
}

static void lanes_fx_free(lanes_fx *f) {
    for (size_t i = 0; i < f->n; i++) {
        td_state_free(&f->st[i]);
        td_kvs_free(&f->kb[i]);
        td_kvs_free(&f->kn[i]);
    }
    free(f->st);
    free(f->kb);
    free(f->kn);
    free(f->e);
    free(f->res);
}

/* After a failed first write of f (versions expected 0) and a successful
 * retry: every prospect is stored, or conflicts because the failed try
 * wrote it before failing, and then holds exactly the state sent (version
 * 1; it becomes the base). @returns how many conflicted. */
static int lanes_written_before(td_redis *r, lanes_fx *f) {
    int conflicts = 0;
    for (size_t i = 0; i < f->n; i++) {
        if (f->res[i] == TD_REDIS_STORED) continue;
        assert_int_equal(f->res[i], TD_REDIS_CONFLICT);
        conflicts++;
        td_state got;
        td_state_init(&got, f->st[i].prospect_id);
        assert_int_equal(td_redis_load(r, &got, 1), TD_OK);
        f->st[i].version = 1;
        assert_true(td_state_equal(&got, &f->st[i]));
        td_state_free(&got);
        td_kvs_move(&f->kb[i], &f->kn[i]);
    }
    return conflicts;
}

/* Sends of the WATCH path cut anywhere (at most 777 bytes per send, so a
 * chunk of about 150 KB goes out in about 200 pieces, cut inside commands
 * and between the runs of prebuilt writes): every prospect is written
 * whole, on both connections, and reads back equal. */
static void test_store_diff_partial_sends(void **state) {
    td_test_redis *srv = *state;
    td_redis *r = client_for(srv);
    td_redis_set_lanes(r, 2);
    td_redis_set_send_limit(r, 777);
    enum { N = 300 };
    lanes_fx f;
    lanes_fx_new(&f, "p-ps-", N);
    redisContext *c = td_test_redis_connect(srv);
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < N; i++) {
            f.st[i].events += round;
            f.e[i] = round;
        }
        /* a stale version in a chunk of each lane: that prospect is left
         * out of the MULTI, which splits the chunk's writes in two runs */
        if (round == 1) {
            f.e[10] = 5;
            f.e[100] = 5;
        }
        assert_int_equal(lanes_write(r, f.st, f.kb, f.kn, f.e, f.res, N), TD_OK);
        assert_int_equal(clients_last(c, "exec"), 2); /* both connections wrote */
        for (int i = 0; i < N; i++)
            assert_int_equal(f.res[i], round == 1 && (i == 10 || i == 100) ? TD_REDIS_CONFLICT
                                                                           : TD_REDIS_STORED);
        for (int i = 0; i < N; i += 37) {
            td_state got;
            td_state_init(&got, f.st[i].prospect_id);
            assert_int_equal(td_redis_load(r, &got, 1), TD_OK);
            assert_true(td_state_equal(&got, &f.st[i]));
            td_state_free(&got);
        }
    }
    char *v = raw_hget(c, "touchd:p:{p-ps-100}", "v");
    assert_string_equal(v, "1"); /* the stale one: not written again */
    free(v);
    v = raw_hget(c, "touchd:p:{p-ps-299}", "v");
    assert_string_equal(v, "2");
    free(v);
    redisFree(c);
    lanes_fx_free(&f);
    td_redis_free(r);
}

/* The WATCH path's failures, on two lanes:
 * - an error reply (a key that is not a hash) in the first chunk: TD_ERR
 *   with Redis' error and the key, nothing written, and once the key is
 *   fixed every prospect is stored;
 * - the same in the second chunk (the second connection): the message
 *   names that connection; the retry stores every prospect (or finds it
 *   written, as sent, by the failed try);
 * - Redis paused past command_timeout_ms: TD_ERR within the deadline, no
 *   hang; writes resume after the pause. */
static void test_store_diff_watch_errors(void **state) {
    td_test_redis *srv = *state;
    td_redis *r = client_tmo(srv, 500);
    td_redis_set_lanes(r, 2);
    redisContext *c = td_test_redis_connect(srv);
    enum { N = 130 }; /* chunks 0 and 2 on the first lane, 1 on the second */
    lanes_fx f;
    lanes_fx_new(&f, "p-we-", N);

    raw_ok(c, redisCommand(c, "SET touchd:p:{p-we-3} hello"));
    assert_int_equal(lanes_write(r, f.st, f.kb, f.kn, f.e, f.res, N), TD_ERR);
    const char *m = td_redis_last_error(r);
    printf("[ INFO     ] first chunk: %s\n", m);
    assert_non_null(strstr(m, "HGET touchd:p:{p-we-3} v: WRONGTYPE"));
    assert_null(strstr(m, "second store connection"));
    redisReply *rep = redisCommand(c, "DBSIZE");
    assert_non_null(rep);
    assert_int_equal(rep->integer, 1); /* only the bad key: nothing written */
    freeReplyObject(rep);
    raw_ok(c, redisCommand(c, "DEL touchd:p:{p-we-3}"));
    assert_int_equal(lanes_write(r, f.st, f.kb, f.kn, f.e, f.res, N), TD_OK);
    for (int i = 0; i < N; i++)
        assert_int_equal(f.res[i], TD_REDIS_STORED);
    assert_int_equal(clients_last(c, "exec"), 2);

    /* the second lane's chunk: prospects 64..127 */
    lanes_fx g;
    lanes_fx_new(&g, "p-wf-", N);
    raw_ok(c, redisCommand(c, "SET touchd:p:{p-wf-100} hello"));
    assert_int_equal(lanes_write(r, g.st, g.kb, g.kn, g.e, g.res, N), TD_ERR);
    m = td_redis_last_error(r);
    printf("[ INFO     ] second chunk: %s\n", m);
    assert_non_null(strstr(m, "second store connection: redis: HGET touchd:p:{p-wf-100} v: "
                              "WRONGTYPE"));
    raw_ok(c, redisCommand(c, "DEL touchd:p:{p-wf-100}"));
    assert_int_equal(lanes_write(r, g.st, g.kb, g.kn, g.e, g.res, N), TD_OK);
    printf("[ INFO     ] %d prospects written by the failed try\n", lanes_written_before(r, &g));
    char *v = raw_hget(c, "touchd:p:{p-wf-100}", "v");
    assert_string_equal(v, "1");
    free(v);

    /* paused: a timeout, bounded */
    for (int i = 0; i < N; i++) {
        f.st[i].events += 1;
        f.e[i] = 1;
    }
    raw_ok(c, redisCommand(c, "CLIENT PAUSE 1500 ALL"));
    int64_t t = now_ms();
    assert_int_equal(lanes_write(r, f.st, f.kb, f.kn, f.e, f.res, N), TD_ERR);
    int64_t took = now_ms() - t;
    printf("[ INFO     ] paused: TD_ERR after %lld ms (timeout 500): %s\n", (long long)took,
           td_redis_last_error(r));
    assert_true(took >= 400 && took < 1000);
    assert_non_null(strstr(td_redis_last_error(r), "timeout after 500 ms"));
    sleep_ms(1600); /* the pause is over, and the backoffs */
    int rc;
    int64_t t0 = now_ms();
    while ((rc = lanes_write(r, f.st, f.kb, f.kn, f.e, f.res, N)) != TD_OK && now_ms() - t0 < 3000)
        sleep_ms(50);
    assert_int_equal(rc, TD_OK);
    for (int i = 0; i < N; i++)
        assert_int_equal(f.res[i], TD_REDIS_STORED); /* the paused try wrote nothing */
    td_state got;
    td_state_init(&got, "p-we-129");
    assert_int_equal(td_redis_load(r, &got, 1), TD_OK);
    assert_int_equal(got.version, 2);
    assert_true(td_state_equal(&got, &f.st[129]));
    td_state_free(&got);

    redisFree(c);
    lanes_fx_free(&f);
    lanes_fx_free(&g);
    td_redis_free(r);
}

/* Two connections (td_redis_set_lanes 2): a write of 1,000 prospects (16
 * chunks) runs its chunks on both, every prospect written once with its
 * version checked (stale expectations in chunks of both lanes conflict and
 * leave the hash alone); Redis killed under a two-lane write: TD_ERR, and
 * writes after the restart succeed and bring both lanes back. */
static void test_store_diff_lanes(void **state) {
    td_test_redis *srv = *state;
    td_redis *r = client_for(srv);
    td_redis_set_lanes(r, 2);
    enum { N = 1000 };
    lanes_fx f;
    lanes_fx_new(&f, "p-ln-", N);
    td_state *st = f.st;
    td_kvs *kb = f.kb, *kn = f.kn;
    int64_t *e = f.e;
    int *res = f.res;
    assert_int_equal(lanes_write(r, st, kb, kn, e, res, N), TD_OK);
    for (int i = 0; i < N; i++)
        assert_int_equal(res[i], TD_REDIS_STORED);
    redisContext *c = td_test_redis_connect(srv);
    assert_int_equal(clients_last(c, "exec"), 2); /* both lanes wrote */
    assert_int_equal(td_redis_one_lane_writes(r), 0);
    char *v = raw_hget(c, "touchd:p:{p-ln-999}", "v");
    assert_string_equal(v, "1");
    free(v);

    /* stale expectations in chunk 0 (lane 1) and chunk 1 (lane 2) */
    for (int i = 0; i < N; i++) {
        st[i].events += 1;
        e[i] = (i == 5 || i == 70) ? 0 : 1;
    }
    assert_int_equal(lanes_write(r, st, kb, kn, e, res, N), TD_OK);
    for (int i = 0; i < N; i++)
        assert_int_equal(res[i], (i == 5 || i == 70) ? TD_REDIS_CONFLICT : TD_REDIS_STORED);
    v = raw_hget(c, "touchd:p:{p-ln-70}", "v");
    assert_string_equal(v, "1"); /* untouched */
    free(v);
    v = raw_hget(c, "touchd:p:{p-ln-71}", "v");
    assert_string_equal(v, "2");
    free(v);
    td_state got;
    td_state_init(&got, "p-ln-500");
    assert_int_equal(td_redis_load(r, &got, 1), TD_OK);
    assert_true(td_state_equal(&got, &st[500]));
    td_state_free(&got);
    redisFree(c);

    /* killed mid-write: an error, never a hang or a crash */
    killer k = {srv->pid, 20};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, killer_main, &k), 0);
    int rc = TD_OK, rounds = 0;
    int64_t t0 = now_ms();
    while (rc == TD_OK && now_ms() - t0 < 10000) {
        for (int i = 0; i < N; i++) {
            st[i].events += 1;
            e[i] = st[i].version;
        }
        rc = lanes_write(r, st, kb, kn, e, res, N);
        rounds++;
    }
    pthread_join(th, NULL);
    assert_int_equal(rc, TD_ERR);
    printf("[ INFO     ] after %d two-lane writes: %s\n", rounds, td_redis_last_error(r));
    td_test_redis_kill(srv);
    assert_int_equal(td_test_redis_restart(srv), 0);
    /* the restarted server is empty (no persistence): version 0 again */
    td_state empty;
    for (int i = 0; i < N; i++) {
        td_state_init(&empty, st[i].prospect_id);
        td_kvs_free(&kb[i]);
        memset(&kb[i], 0, sizeof kb[i]);
        assert_int_equal(td_kvs_capture(&kb[i], &empty), TD_OK);
        td_state_free(&empty);
        e[i] = 0;
    }
    t0 = now_ms();
    while ((rc = lanes_write(r, st, kb, kn, e, res, N)) != TD_OK && now_ms() - t0 < 5000)
        sleep_ms(20);
    assert_int_equal(rc, TD_OK);
    for (int i = 0; i < N; i++)
        assert_int_equal(res[i], TD_REDIS_STORED);
    /* the second lane may still be in its own reconnect backoff (then the
     * write ran on one lane): past the longest backoff, both run again */
    sleep_ms(450);
    for (int i = 0; i < N; i++) {
        st[i].events += 1;
        e[i] = st[i].version;
    }
    assert_int_equal(lanes_write(r, st, kb, kn, e, res, N), TD_OK);
    for (int i = 0; i < N; i++)
        assert_int_equal(res[i], TD_REDIS_STORED);
    c = td_test_redis_connect(srv);
    assert_int_equal(clients_last(c, "exec"), 2);
    v = raw_hget(c, "touchd:p:{p-ln-0}", "v");
    assert_string_equal(v, "2");
    free(v);
    redisFree(c);

    lanes_fx_free(&f);
    td_redis_free(r);
}

/* Redis refusing the second connection (maxclients): a write fails once,
 * then the retries run on the first connection alone (the second backs
 * off) and store everything; once Redis accepts it again, both lanes run. */
static void test_store_diff_lanes_refused(void **state) {
    td_test_redis *srv = *state;
    td_redis *r = client_for(srv);
    td_redis_set_lanes(r, 2);
    redisContext *c = td_test_redis_connect(srv); /* 2 clients: r's and c */
    raw_ok(c, redisCommand(c, "CONFIG SET maxclients 2"));
    enum { N = 300 };
    lanes_fx f;
    lanes_fx_new(&f, "p-rf-", N);
    td_state *st = f.st;
    td_kvs *kb = f.kb, *kn = f.kn;
    int64_t *e = f.e;
    int *res = f.res;
    int fails = 0, rc;
    while ((rc = lanes_write(r, st, kb, kn, e, res, N)) != TD_OK && fails < 5) {
        fails++;
        printf("[ INFO     ] refused: %s\n", td_redis_last_error(r));
        assert_non_null(strstr(td_redis_last_error(r), "second store connection: "));
        /* Redis' refusal is named: its text when it arrived before the
         * close, a hint when the close reset the connection first */
        assert_true(strstr(td_redis_last_error(r), "max number of clients") ||
                    strstr(td_redis_last_error(r), "maxclients: INFO clients"));
    }
    assert_int_equal(rc, TD_OK);
    assert_true(fails <= 1);                      /* the first try at most; then one lane */
    assert_int_equal(clients_last(c, "exec"), 1); /* the retry ran on one lane */
    uint64_t one = td_redis_one_lane_writes(r);   /* and is counted */
    assert_int_equal(one, 1);
    /* chunks the failed try wrote before the refusal conflict now (as the
     * daemon sees them: reload); each holds exactly the state sent */
    int conflicts = lanes_written_before(r, &f);
    assert_true(conflicts == 0 || fails == 1);
    printf("[ INFO     ] %d failed tries, %d prospects written by the failed one\n", fails,
           conflicts);
    char *v = raw_hget(c, "touchd:p:{p-rf-299}", "v");
    assert_string_equal(v, "1");
    free(v);

    raw_ok(c, redisCommand(c, "CONFIG SET maxclients 10000"));
    sleep_ms(450); /* past the longest backoff (400 ms) */
    for (int i = 0; i < N; i++) {
        st[i].events += 1;
        e[i] = 1;
    }
    assert_int_equal(lanes_write(r, st, kb, kn, e, res, N), TD_OK);
    for (int i = 0; i < N; i++)
        assert_int_equal(res[i], TD_REDIS_STORED);
    assert_int_equal(clients_last(c, "exec"), 2);
    assert_int_equal(td_redis_one_lane_writes(r), one); /* two lanes: not counted */
    td_state got;
    td_state_init(&got, "p-rf-150");
    assert_int_equal(td_redis_load(r, &got, 1), TD_OK);
    assert_true(td_state_equal(&got, &st[150]));
    td_state_free(&got);
    redisFree(c);
    lanes_fx_free(&f);
    td_redis_free(r);
}

static void test_idle_disconnect_is_healed(void **state) {
    /* the server closes an idle connection (restart, CLIENT KILL): the next
     * call notices before sending and reconnects at once, no error */
    td_test_redis *srv = *state;
    td_redis *r = client_for(srv);
    redisContext *c = td_test_redis_connect(srv);
    raw_ok(c, redisCommand(c, "CLIENT KILL TYPE normal SKIPME yes"));
    sleep_ms(50);
    td_state s;
    td_state_init(&s, "p-idle");
    assert_int_equal(td_redis_load(r, &s, 1), TD_OK);
    assert_true(td_redis_connected(r));
    td_state_free(&s);
    redisFree(c);
    td_redis_free(r);
}

static void test_command_timeout(void **state) {
    td_test_redis *srv = *state;
    td_redis *r = client_tmo(srv, 500);
    td_state s;
    td_state_init(&s, "p-slow");

    redisContext *c = td_test_redis_connect(srv);
    raw_ok(c, redisCommand(c, "CLIENT PAUSE 3000 ALL"));
    int64_t t = now_ms();
    assert_int_equal(td_redis_load(r, &s, 1), TD_ERR);
    int64_t took = now_ms() - t;
    printf("[ INFO     ] load under CLIENT PAUSE: TD_ERR after %lld ms (timeout 500): %s\n",
           (long long)took, td_redis_last_error(r));
    assert_true(took >= 400);
    assert_true(took < 2 * 500 + 300);
    assert_non_null(strstr(td_redis_last_error(r), "timeout"));
    assert_false(td_redis_connected(r));

    int64_t e = 0;
    int res = -1;
    t = now_ms();
    assert_int_equal(td_redis_store(r, &s, &e, 1, &res), TD_ERR); /* in the backoff: fast */
    assert_true(now_ms() - t < 100);

    raw_ok(c, redisCommand(c, "CLIENT UNPAUSE"));
    sleep_ms(100); /* > backoff_min */
    assert_int_equal(td_redis_store(r, &s, &e, 1, &res), TD_OK);
    assert_int_equal(res, TD_REDIS_STORED);
    redisFree(c);
    td_state_free(&s);
    td_redis_free(r);
}

static void test_malformed_hash(void **state) {
    td_test_redis *srv = *state;
    td_redis *r = client_for(srv);
    redisContext *c = td_test_redis_connect(srv);
    raw_ok(c, redisCommand(c, "HSET touchd:p:{p-bad} v 3 email.sent notanumber"));
    raw_ok(c, redisCommand(c, "HSET touchd:p:{p-ok} v 2 email.sent 4 zz.future.field x"));
    raw_ok(c, redisCommand(c, "HSET touchd:p:{p-badv} v 1x"));
    raw_ok(c, redisCommand(c, "HSET touchd:p:{p-negv} v -4"));
    raw_ok(c, redisCommand(c, "SET touchd:p:{p-str} hello"));

    td_state s[2];
    td_state_init(&s[0], "p-bad");
    td_state_init(&s[1], "p-ok");
    assert_int_equal(td_redis_load(r, s, 2), TD_ERR);
    const char *m = td_redis_last_error(r);
    assert_non_null(strstr(m, "touchd:p:{p-bad}"));
    assert_non_null(strstr(m, "email.sent"));
    td_state_free(&s[0]);
    td_state_free(&s[1]);

    /* the connection stayed in sync: the good one loads, unknown fields ignored */
    td_state_init(&s[1], "p-ok");
    assert_int_equal(td_redis_load(r, &s[1], 1), TD_OK);
    assert_int_equal(s[1].version, 2);
    assert_int_equal(s[1].ch[TD_CH_EMAIL].sent, 4);
    assert_true(td_redis_connected(r));
    td_state_free(&s[1]);

    td_state_init(&s[0], "p-badv");
    assert_int_equal(td_redis_load(r, &s[0], 1), TD_ERR);
    assert_non_null(strstr(td_redis_last_error(r), "\"v\""));
    td_state_free(&s[0]);
    /* a version is never negative: the store only ever increments it */
    td_state_init(&s[0], "p-negv");
    assert_int_equal(td_redis_load(r, &s[0], 1), TD_ERR);
    assert_non_null(strstr(td_redis_last_error(r), "malformed version \"-4\""));
    td_state_free(&s[0]);

    td_state_init(&s[0], "p-str");
    assert_int_equal(td_redis_load(r, &s[0], 1), TD_ERR);
    assert_non_null(strstr(td_redis_last_error(r), "WRONGTYPE"));
    assert_non_null(strstr(td_redis_last_error(r), "touchd:p:{p-str}"));
    /* storing over a non-hash is an error too, not a crash */
    int64_t e = 0;
    int res = -1;
    assert_int_equal(td_redis_store(r, &s[0], &e, 1, &res), TD_ERR);
    assert_non_null(strstr(td_redis_last_error(r), "touchd:p:{p-str}"));
    td_state_free(&s[0]);
    redisFree(c);
    td_redis_free(r);
}

static void test_unix_socket(void **unused) {
    (void)unused;
    char dir[256], sock[300];
    assert_int_equal(td_test_tmpdir(dir, sizeof dir), 0);
    pid_t pid = unix_server_start(dir, sock, sizeof sock);
    assert_true(pid > 0);
    td_redis_conf conf;
    td_redis_conf_default(&conf);
    conf.host = sock;
    conf.unix_socket = true;
    char err[256];
    td_redis *r = td_redis_new(&conf, err, sizeof err);
    assert_non_null(r);
    assert_true(td_redis_connected(r));
    td_state a, b;
    populate(&a, "p-unix", 1);
    int64_t e = 0;
    int res = -1;
    assert_int_equal(td_redis_store(r, &a, &e, 1, &res), TD_OK);
    assert_int_equal(res, TD_REDIS_STORED);
    td_state_init(&b, "p-unix");
    assert_int_equal(td_redis_load(r, &b, 1), TD_OK);
    assert_true(td_state_equal(&a, &b));
    td_state_free(&a);
    td_state_free(&b);
    td_redis_free(r);
    unix_server_stop(pid);
    td_test_rmtree(dir);
}

static void test_connect_timeout(void **unused) {
    /* A listener whose accept queue is full: the kernel drops further SYNs,
     * so connect() hangs until our connect timeout. */
    (void)unused;
    int l = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(l >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    assert_int_equal(bind(l, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(l, 0), 0);
    assert_int_equal(getsockname(l, (struct sockaddr *)&a, &alen), 0);
    int fill[4];
    for (int i = 0; i < 4; i++) {
        fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        (void)connect(fill[i], (struct sockaddr *)&a, sizeof a);
    }
    sleep_ms(50);
    td_redis_conf conf;
    td_redis_conf_default(&conf);
    conf.port = ntohs(a.sin_port);
    conf.connect_timeout_ms = 300;
    char err[256];
    int64_t t = now_ms();
    td_redis *r = td_redis_new(&conf, err, sizeof err);
    int64_t took = now_ms() - t;
    assert_non_null(r);
    assert_false(td_redis_connected(r));
    printf("[ INFO     ] connect to a full backlog: %lld ms (timeout 300): %s\n", (long long)took,
           td_redis_last_error(r));
    assert_true(took < 2 * 300 + 300);
    assert_non_null(strstr(td_redis_last_error(r), "connect failed"));
    td_redis_free(r);
    for (int i = 0; i < 4; i++)
        close(fill[i]);
    close(l);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_and_conf),
        cmocka_unit_test(test_unix_socket),
        cmocka_unit_test(test_connect_timeout),
        cmocka_unit_test_setup_teardown(test_load_absent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_roundtrip_and_plain_client, setup, teardown),
        cmocka_unit_test_setup_teardown(test_version_cas, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_diff_timers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_diff_race, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_diff_race2, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_diff_timers_multi, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_diff_timers_multi2, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_diff_lanes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_diff_lanes_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_diff_watch_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_diff_partial_sends, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_diff_verify, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_diff, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batch_1000, setup, teardown),
        cmocka_unit_test_setup_teardown(test_noscript_recovery, setup, teardown),
        cmocka_unit_test_setup_teardown(test_auth, setup, teardown),
        cmocka_unit_test_setup_teardown(test_select_db, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kill_and_reconnect, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idle_disconnect_is_healed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_command_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed_hash, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
