/*
 * test_state.c - unit tests of td_state*.c: every reducer, dedup ring,
 * positions, fired/timer tables, touches_within, the flat form (round trips
 * of a rich state and of thousands of random states, malformed values) and
 * the schema (every field, its type, its getter).
 *
 * Times are written as RFC 3339 strings and parsed with td_time_parse so the
 * tests read like the events they model.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "td_state.h"

/* ------------------------------------------------------------ helpers */

static td_ms T(const char *s) {
    td_ms t = 0;
    assert_int_equal(td_time_parse(s, strlen(s), &t), TD_OK);
    return t;
}

static td_event EV(td_event_type type, const char *at) {
    td_event ev;
    memset(&ev, 0, sizeof ev);
    ev.type = type;
    ev.channel = td_event_type_channel(type);
    ev.occurred_at = T(at);
    snprintf(ev.id, sizeof ev.id, "e-%d-%s", (int)type, at);
    strcpy(ev.prospect_id, "p-42");
    return ev;
}

typedef struct fixture {
    td_tzdb *tz;
    td_settings set;
    td_state st;
} fixture;

static int setup(void **state) {
    fixture *f = calloc(1, sizeof *f);
    f->tz = td_tzdb_new();
    td_settings_default(&f->set);
    td_state_init(&f->st, "p-42");
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture *f = *state;
    td_state_free(&f->st);
    td_tzdb_free(f->tz);
    free(f);
    return 0;
}

static void apply(fixture *f, const td_event *ev) {
    assert_int_equal(td_state_apply(&f->st, ev, f->tz, &f->set), TD_OK);
}

static void apply_simple(fixture *f, td_event_type type, const char *at) {
    td_event ev = EV(type, at);
    apply(f, &ev);
}

static int hist_total(const td_state *st) {
    int n = 0;
    for (int h = 0; h < 24; h++)
        n += (int)st->hour_hist[h];
    return n;
}

/* Reads a schema field by name. */
static td_value FIELD(const td_ctx *ctx, const char *name) {
    const td_field *fd = td_schema_lookup(name, strlen(name));
    if (!fd) fail_msg("no schema field %s", name);
    td_value v;
    memset(&v, 0xab, sizeof v);
    td_field_read(fd, ctx, &v);
    assert_int_equal(v.type, fd->type);
    return v;
}

static td_ctx CTX(fixture *f, const td_event *ev, td_ms now) {
    td_ctx c;
    memset(&c, 0, sizeof c);
    c.st = &f->st;
    c.ev = ev;
    c.now = now;
    c.tz = f->tz;
    c.settings = &f->set;
    return c;
}

/* ---- a key/value collector for the flat form ---- */
typedef struct kv {
    char *k, *v;
    size_t kn, vn;
} kv;
typedef struct kvlist {
    kv *a;
    size_t n, cap;
} kvlist;

static void kv_collect(void *ud, const char *key, size_t klen, const char *val, size_t vlen) {
    kvlist *l = ud;
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 64;
        l->a = realloc(l->a, l->cap * sizeof *l->a);
        assert_non_null(l->a);
    }
    kv *e = &l->a[l->n++];
    e->k = malloc(klen + 1);
    e->v = malloc(vlen + 1);
    memcpy(e->k, key, klen);
    e->k[klen] = 0;
    memcpy(e->v, val, vlen);
    e->v[vlen] = 0;
    e->kn = klen;
    e->vn = vlen;
}

static void kv_free(kvlist *l) {
    for (size_t i = 0; i < l->n; i++) {
        free(l->a[i].k);
        free(l->a[i].v);
    }
    free(l->a);
    memset(l, 0, sizeof *l);
}

static const char *kv_get(const kvlist *l, const char *key) {
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->a[i].k, key) == 0) return l->a[i].v;
    return NULL;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;
static uint64_t rnd(void) { /* xorshift64*: seeded, reproducible */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dULL;
}

/* Serialises st, checks every byte is printable ASCII, reads the fields back
 * into a fresh state in shuffled order (Redis does not keep hash order), and
 * checks equality and identical re-serialisation. */
static void check_round_trip(const td_state *st, bool shuffle) {
    kvlist l = {0}, l2 = {0};
    td_state_serialize(st, kv_collect, &l);
    for (size_t i = 0; i < l.n; i++) {
        for (size_t j = 0; j < l.a[i].kn; j++)
            if (l.a[i].k[j] < 0x20 || l.a[i].k[j] > 0x7e) fail_msg("non-ASCII key %s", l.a[i].k);
        for (size_t j = 0; j < l.a[i].vn; j++)
            if (l.a[i].v[j] < 0x20 || l.a[i].v[j] > 0x7e)
                fail_msg("non-ASCII value for %s: %s", l.a[i].k, l.a[i].v);
        for (size_t j = 0; j < i; j++)
            if (strcmp(l.a[i].k, l.a[j].k) == 0) fail_msg("duplicate key %s", l.a[i].k);
    }
    if (shuffle)
        for (size_t i = l.n; i > 1; i--) {
            size_t j = (size_t)(rnd() % i);
            kv t = l.a[i - 1];
            l.a[i - 1] = l.a[j];
            l.a[j] = t;
        }
    td_state back;
    td_state_init(&back, "");
    char err[256];
    for (size_t i = 0; i < l.n; i++) {
        int rc =
            td_state_set_field(&back, l.a[i].k, l.a[i].kn, l.a[i].v, l.a[i].vn, err, sizeof err);
        if (rc != TD_OK) fail_msg("set_field %s=%s: rc %d %s", l.a[i].k, l.a[i].v, rc, err);
    }
    if (!td_state_equal(st, &back)) {
        for (size_t i = 0; i < l.n; i++)
            fprintf(stderr, "  %s = %s\n", l.a[i].k, l.a[i].v);
        fail_msg("round trip lost information");
    }
    td_state_serialize(&back, kv_collect, &l2);
    assert_int_equal(l.n, l2.n);
    for (size_t i = 0; i < l2.n; i++) {
        const char *v = kv_get(&l, l2.a[i].k);
        assert_non_null(v);
        assert_string_equal(v, l2.a[i].v);
    }
    td_state_free(&back);
    kv_free(&l);
    kv_free(&l2);
}

/* ---------------------------------------------------------- life cycle */

/* td_fmt_u64 / td_fmt_i64 (the flat form's and the RESP lengths' integer
 * writer) agree with printf at every digit-count boundary and on random
 * values. */
static void check_fmt(uint64_t v) {
    char want[32], got[32];
    memset(got, 'x', sizeof got);
    int wn = snprintf(want, sizeof want, "%llu", (unsigned long long)v);
    size_t n = td_fmt_u64(v, got);
    assert_int_equal(n, (size_t)wn);
    assert_string_equal(got, want);
    int64_t sv = (int64_t)v;
    wn = snprintf(want, sizeof want, "%lld", (long long)sv);
    n = td_fmt_i64(sv, got);
    assert_int_equal(n, (size_t)wn);
    assert_string_equal(got, want);
}

static void test_fmt_integers(void **state) {
    (void)state;
    uint64_t p = 1;
    for (int d = 0; d < 20; d++) {
        check_fmt(p - 1);
        check_fmt(p);
        check_fmt(p + 1);
        check_fmt(p * 2 + 7);
        if (d < 19) p *= 10;
    }
    check_fmt(UINT64_MAX);
    check_fmt((uint64_t)INT64_MAX);
    check_fmt((uint64_t)INT64_MIN);
    uint64_t x = 0x9E3779B97F4A7C15ULL;
    for (int i = 0; i < 200000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        check_fmt(x >> (x & 63)); /* every magnitude */
    }
}

static void test_defaults(void **state) {
    (void)state;
    td_settings s;
    td_settings_default(&s);
    assert_string_equal(s.default_timezone, "UTC");
    assert_int_equal(s.best_time_min_points, 5);
    assert_int_equal(s.best_time_default_hour, 10);
    assert_int_equal(s.business_start_hour, 9);
    assert_int_equal(s.business_end_hour, 18);

    td_state st;
    td_state_init(&st, "p-42");
    assert_string_equal(st.prospect_id, "p-42");
    assert_true(st.tier == TD_INT_MISSING);
    assert_true(st.lifetime_value_eur == TD_DEC_MISSING);
    assert_true(st.first_seen_at == TD_MS_MISSING);
    assert_true(st.ch[TD_CH_EMAIL].last_sent_at == TD_MS_MISSING);
    /* a fresh state serialises to its id only */
    kvlist l = {0};
    td_state_serialize(&st, kv_collect, &l);
    assert_int_equal(l.n, 1);
    assert_string_equal(l.a[0].k, "prospect_id");
    assert_string_equal(l.a[0].v, "p-42");
    kv_free(&l);
    td_state_free(&st);
    td_state_free(NULL);
    assert_string_equal(td_block_reason_name(TD_BLOCK_NONE), "");
    assert_string_equal(td_block_reason_name(TD_BLOCK_HARD_BOUNCE), "hard_bounce");
}

static void test_copy_equal(void **state) {
    fixture *f = *state;
    apply_simple(f, TD_EV_EMAIL_SENT, "2026-11-02T10:00:00Z");
    assert_int_equal(td_state_set_fired(&f->st, "a.rule", T("2026-11-02T10:00:00Z")), TD_OK);
    assert_int_equal(td_state_arm_timer(&f->st, "b.rule", T("2026-11-05T10:00:00Z"), "e-1"), TD_OK);
    td_state c;
    assert_int_equal(td_state_copy(&c, &f->st), TD_OK);
    assert_true(td_state_equal(&c, &f->st));
    assert_ptr_not_equal(c.fired, f->st.fired);
    td_state_set_fired(&c, "a.rule", T("2026-11-03T10:00:00Z"));
    assert_false(td_state_equal(&c, &f->st));
    td_state_free(&c);
    td_state_init(&c, "p-42");
    assert_false(td_state_equal(&c, &f->st));
    td_state_free(&c);
}

/* ------------------------------------------------------------- reducers */

static void test_touches_each_channel(void **state) {
    fixture *f = *state;
    static const struct {
        td_event_type t;
        td_channel ch;
    } touches[] = {
        {TD_EV_EMAIL_SENT, TD_CH_EMAIL},
        {TD_EV_WHATSAPP_SENT, TD_CH_WHATSAPP},
        {TD_EV_SMS_SENT, TD_CH_SMS},
        {TD_EV_LINKEDIN_INVITED, TD_CH_LINKEDIN},
        {TD_EV_LINKEDIN_MESSAGED, TD_CH_LINKEDIN},
        {TD_EV_CALL_ATTEMPTED, TD_CH_CALL},
        {TD_EV_CALL_VOICEMAIL, TD_CH_CALL},
        {TD_EV_GIFT_SENT, TD_CH_GIFT},
    };
    td_ms base = T("2026-11-02T08:00:00Z");
    for (size_t i = 0; i < sizeof touches / sizeof touches[0]; i++) {
        td_event ev = EV(touches[i].t, "2026-11-02T08:00:00Z");
        ev.occurred_at = base + (td_ms)i * TD_HOUR;
        int64_t before = f->st.ch[touches[i].ch].sent;
        apply(f, &ev);
        const td_chan_state *c = &f->st.ch[touches[i].ch];
        assert_int_equal(c->sent, before + 1);
        assert_int_equal(c->unanswered, before + 1);
        assert_true(c->last_sent_at == ev.occurred_at);
        assert_true(f->st.last_touch_at == ev.occurred_at);
        assert_true(f->st.first_touch_at == base);
        assert_int_equal(f->st.touch_count, i + 1);
    }
    assert_int_equal(f->st.events, 8);
    assert_int_equal(f->st.gifts_total, 1);
    assert_true(f->st.first_seen_at == base);
    assert_true(f->st.last_event_at == base + 7 * TD_HOUR);
    /* nothing inbound happened */
    assert_int_equal(f->st.replies, 0);
    assert_true(f->st.last_inbound_at == TD_MS_MISSING);
    assert_int_equal(hist_total(&f->st), 0);
    td_ctx ctx = CTX(f, NULL, base + 8 * TD_HOUR);
    assert_int_equal(FIELD(&ctx, "touches.total").u.i, 8);
    assert_int_equal(FIELD(&ctx, "touches.1d").u.i, 8);
    assert_false(FIELD(&ctx, "is_new").u.b);
}

static void test_delivered_clicked_failed(void **state) {
    fixture *f = *state;
    apply_simple(f, TD_EV_EMAIL_DELIVERED, "2026-11-02T08:00:00Z");
    apply_simple(f, TD_EV_WHATSAPP_DELIVERED, "2026-11-02T08:00:00Z");
    apply_simple(f, TD_EV_SMS_DELIVERED, "2026-11-02T08:00:00Z");
    apply_simple(f, TD_EV_EMAIL_CLICKED, "2026-11-02T08:01:00Z");
    apply_simple(f, TD_EV_WHATSAPP_FAILED, "2026-11-02T08:02:00Z");
    apply_simple(f, TD_EV_SMS_FAILED, "2026-11-02T08:02:00Z");
    td_event b = EV(TD_EV_EMAIL_BOUNCED, "2026-11-02T08:03:00Z"); /* soft: no `hard` */
    apply(f, &b);
    b.has |= TD_HAS_HARD; /* hard = false: soft too */
    apply(f, &b);
    assert_int_equal(f->st.ch[TD_CH_EMAIL].delivered, 1);
    assert_int_equal(f->st.ch[TD_CH_WHATSAPP].delivered, 1);
    assert_int_equal(f->st.ch[TD_CH_SMS].delivered, 1);
    assert_int_equal(f->st.ch[TD_CH_EMAIL].clicked, 1);
    assert_int_equal(f->st.ch[TD_CH_WHATSAPP].failed, 1);
    assert_int_equal(f->st.ch[TD_CH_SMS].failed, 1);
    assert_int_equal(f->st.ch[TD_CH_EMAIL].failed, 2);
    assert_int_equal(f->st.ch[TD_CH_EMAIL].blocked, TD_BLOCK_NONE);
    assert_int_equal(f->st.ch[TD_CH_EMAIL].opened, 0); /* a click is not an open */
    assert_int_equal(f->st.ch[TD_CH_EMAIL].sent, 0);
    assert_true(f->st.first_touch_at == TD_MS_MISSING);
    assert_int_equal(f->st.events, 8);
}

static void test_opens_human_vs_machine(void **state) {
    fixture *f = *state;
    apply_simple(f, TD_EV_EMAIL_SENT, "2026-11-02T08:00:00Z");
    td_state before;
    td_event ev = EV(TD_EV_EMAIL_OPENED, "2026-11-02T08:00:05Z");
    ev.has |= TD_HAS_HUMAN;
    ev.human = false; /* Apple Mail Privacy Protection prefetch */
    assert_int_equal(td_state_copy(&before, &f->st), TD_OK);
    apply(f, &ev);
    /* only the common bookkeeping moved */
    assert_int_equal(f->st.events, before.events + 1);
    before.events++;
    before.last_event_at = ev.occurred_at;
    assert_true(td_state_equal(&before, &f->st));
    td_state_free(&before);

    ev.human = true;
    ev.occurred_at = T("2026-11-02T09:30:00Z");
    apply(f, &ev);
    td_event ev2 = EV(TD_EV_EMAIL_OPENED, "2026-11-02T14:10:00Z"); /* no `human`: true */
    apply(f, &ev2);
    assert_int_equal(f->st.ch[TD_CH_EMAIL].opened, 2);
    assert_int_equal(f->st.ch[TD_CH_EMAIL].opens_since_reply, 2);
    assert_true(f->st.ch[TD_CH_EMAIL].last_opened_at == T("2026-11-02T14:10:00Z"));
    assert_int_equal(f->st.hour_hist[9], 1);
    assert_int_equal(f->st.hour_hist[14], 1);

    apply_simple(f, TD_EV_WHATSAPP_READ, "2026-11-02T15:00:00Z");
    apply_simple(f, TD_EV_SMS_READ, "2026-11-02T15:30:00Z");
    assert_int_equal(f->st.ch[TD_CH_WHATSAPP].opened, 1);
    assert_int_equal(f->st.ch[TD_CH_SMS].opens_since_reply, 1);
    assert_int_equal(f->st.hour_hist[15], 2);
    td_ctx ctx = CTX(f, &ev, T("2026-11-02T16:00:00Z"));
    assert_int_equal(FIELD(&ctx, "engagement.points").u.i, 4);
    assert_true(FIELD(&ctx, "event.human").u.b);
    ctx.ev = &ev2;
    assert_true(FIELD(&ctx, "event.human").u.b); /* the contract's default */
}

static void test_reply_vs_out_of_office(void **state) {
    fixture *f = *state;
    apply_simple(f, TD_EV_EMAIL_SENT, "2026-11-02T08:00:00Z");
    apply_simple(f, TD_EV_EMAIL_SENT, "2026-11-05T08:00:00Z");
    apply_simple(f, TD_EV_SMS_SENT, "2026-11-06T08:00:00Z");
    apply_simple(f, TD_EV_EMAIL_OPENED, "2026-11-05T09:00:00Z");

    td_event ooo = EV(TD_EV_EMAIL_REPLIED, "2026-11-05T08:00:02Z");
    ooo.has |= TD_HAS_SENTIMENT;
    ooo.sentiment = TD_SENT_OUT_OF_OFFICE;
    apply(f, &ooo);
    assert_int_equal(f->st.ch[TD_CH_EMAIL].unanswered, 2);
    assert_int_equal(f->st.ch[TD_CH_EMAIL].opens_since_reply, 1);
    assert_int_equal(f->st.ch[TD_CH_EMAIL].replied, 0);
    assert_int_equal(f->st.replies, 0);
    assert_true(f->st.last_inbound_at == TD_MS_MISSING);
    assert_true(f->st.ch[TD_CH_EMAIL].last_replied_at == TD_MS_MISSING);
    assert_int_equal(f->st.last_reply_sentiment, TD_SENT_NONE);
    assert_int_equal(hist_total(&f->st), 1); /* the open only */
    td_ctx ctx = CTX(f, NULL, T("2026-11-07T08:00:00Z"));
    assert_false(FIELD(&ctx, "replied").u.b);

    td_event r = EV(TD_EV_EMAIL_REPLIED, "2026-11-07T11:00:00Z");
    r.has |= TD_HAS_SENTIMENT;
    r.sentiment = TD_SENT_POSITIVE;
    apply(f, &r);
    for (int c = 0; c < TD_CH__COUNT; c++) {
        assert_int_equal(f->st.ch[c].unanswered, 0);
        assert_int_equal(f->st.ch[c].opens_since_reply, 0);
    }
    assert_int_equal(f->st.ch[TD_CH_EMAIL].replied, 1);
    assert_int_equal(f->st.ch[TD_CH_EMAIL].sent, 2); /* history stays */
    assert_int_equal(f->st.replies, 1);
    assert_true(f->st.last_inbound_at == r.occurred_at);
    assert_true(f->st.ch[TD_CH_EMAIL].last_replied_at == r.occurred_at);
    assert_int_equal(f->st.last_reply_sentiment, TD_SENT_POSITIVE);
    assert_int_equal(f->st.hour_hist[11], 1);
    assert_true(FIELD(&ctx, "replied").u.b);
    td_value s = FIELD(&ctx, "last_reply_sentiment");
    assert_false(s.missing);
    assert_memory_equal(s.u.s.p, "positive", 8);

    /* replies without sentiment on the other channels */
    apply_simple(f, TD_EV_WHATSAPP_REPLIED, "2026-11-08T11:00:00Z");
    apply_simple(f, TD_EV_SMS_REPLIED, "2026-11-08T12:00:00Z");
    apply_simple(f, TD_EV_LINKEDIN_REPLIED, "2026-11-08T13:00:00Z");
    assert_int_equal(f->st.replies, 4);
    assert_int_equal(f->st.last_reply_sentiment, TD_SENT_NONE);
    assert_true(FIELD(&ctx, "last_reply_sentiment").missing);
    assert_int_equal(f->st.ch[TD_CH_LINKEDIN].replied, 1);
}

static void test_call_connected_and_linkedin_accepted(void **state) {
    fixture *f = *state;
    apply_simple(f, TD_EV_EMAIL_SENT, "2026-11-02T08:00:00Z");
    apply_simple(f, TD_EV_LINKEDIN_INVITED, "2026-11-02T08:10:00Z");
    apply_simple(f, TD_EV_LINKEDIN_ACCEPTED, "2026-11-03T08:10:00Z");
    assert_true(f->st.last_inbound_at == T("2026-11-03T08:10:00Z"));
    assert_int_equal(f->st.replies, 0);
    assert_int_equal(f->st.ch[TD_CH_LINKEDIN].unanswered, 1); /* not a reply */
    assert_int_equal(f->st.ch[TD_CH_EMAIL].unanswered, 1);

    td_event c = EV(TD_EV_CALL_CONNECTED, "2026-11-04T16:20:00Z");
    c.has |= TD_HAS_DURATION;
    c.duration_s = 300;
    apply(f, &c);
    const td_chan_state *call = &f->st.ch[TD_CH_CALL];
    assert_int_equal(call->sent, 1);
    assert_int_equal(call->replied, 1);
    assert_int_equal(call->unanswered, 0);
    assert_int_equal(f->st.ch[TD_CH_EMAIL].unanswered, 0);
    assert_int_equal(f->st.ch[TD_CH_LINKEDIN].unanswered, 0);
    assert_int_equal(f->st.replies, 1);
    assert_true(f->st.last_inbound_at == c.occurred_at);
    assert_true(f->st.last_touch_at == c.occurred_at);
    assert_int_equal(f->st.hour_hist[16], 1);
    td_ctx ctx = CTX(f, &c, c.occurred_at);
    assert_int_equal(FIELD(&ctx, "event.duration_s").u.i, 300);
    assert_true(FIELD(&ctx, "event.kind").missing);
}

static void test_blocks_and_consent(void **state) {
    fixture *f = *state;
    td_event hb = EV(TD_EV_EMAIL_BOUNCED, "2026-11-02T08:00:00Z");
    hb.has |= TD_HAS_HARD;
    hb.hard = true;
    apply(f, &hb);
    assert_int_equal(f->st.ch[TD_CH_EMAIL].blocked, TD_BLOCK_HARD_BOUNCE);
    assert_int_equal(f->st.ch[TD_CH_EMAIL].failed, 0);
    apply_simple(f, TD_EV_EMAIL_UNSUBSCRIBED, "2026-11-03T08:00:00Z");
    assert_int_equal(f->st.ch[TD_CH_EMAIL].blocked, TD_BLOCK_HARD_BOUNCE); /* first reason kept */
    assert_int_equal(f->st.ch[TD_CH_EMAIL].consent, TD_TRI_NO);

    /* unsubscribe alone, then a CRM consent: the block stays */
    td_state_free(&f->st);
    td_state_init(&f->st, "p-42");
    apply_simple(f, TD_EV_EMAIL_UNSUBSCRIBED, "2026-11-03T08:00:00Z");
    assert_int_equal(f->st.ch[TD_CH_EMAIL].blocked, TD_BLOCK_UNSUBSCRIBED);
    td_event pu = EV(TD_EV_PROSPECT_UPDATED, "2026-11-04T08:00:00Z");
    pu.has |= TD_HAS_CONSENT;
    pu.consent[TD_CH_EMAIL] = TD_TRI_YES;
    pu.consent[TD_CH_WHATSAPP] = TD_TRI_YES;
    apply(f, &pu);
    assert_int_equal(f->st.ch[TD_CH_EMAIL].consent, TD_TRI_YES);
    assert_int_equal(f->st.ch[TD_CH_EMAIL].blocked, TD_BLOCK_UNSUBSCRIBED);
    assert_int_equal(f->st.ch[TD_CH_SMS].consent, TD_TRI_UNSET);

    /* opt-out / opt-in on whatsapp and sms */
    apply_simple(f, TD_EV_WHATSAPP_OPTED_OUT, "2026-11-05T08:00:00Z");
    apply_simple(f, TD_EV_SMS_OPTED_OUT, "2026-11-05T08:00:00Z");
    assert_int_equal(f->st.ch[TD_CH_WHATSAPP].blocked, TD_BLOCK_OPTED_OUT);
    assert_int_equal(f->st.ch[TD_CH_WHATSAPP].consent, TD_TRI_NO);
    assert_int_equal(f->st.ch[TD_CH_SMS].blocked, TD_BLOCK_OPTED_OUT);
    /* a CRM consent does not lift an opt-out; an explicit opt-in does */
    apply(f, &pu);
    assert_int_equal(f->st.ch[TD_CH_WHATSAPP].blocked, TD_BLOCK_OPTED_OUT);
    apply_simple(f, TD_EV_WHATSAPP_OPTED_IN, "2026-11-06T08:00:00Z");
    assert_int_equal(f->st.ch[TD_CH_WHATSAPP].blocked, TD_BLOCK_NONE);
    assert_int_equal(f->st.ch[TD_CH_WHATSAPP].consent, TD_TRI_YES);
    assert_int_equal(f->st.ch[TD_CH_SMS].blocked, TD_BLOCK_OPTED_OUT);
    apply_simple(f, TD_EV_SMS_OPTED_IN, "2026-11-06T08:00:00Z");
    assert_int_equal(f->st.ch[TD_CH_SMS].blocked, TD_BLOCK_NONE);

    td_ctx ctx = CTX(f, NULL, T("2026-11-07T08:00:00Z"));
    assert_true(FIELD(&ctx, "email.blocked").u.b);
    td_value r = FIELD(&ctx, "email.block_reason");
    assert_false(r.missing);
    assert_int_equal(r.u.s.n, strlen("unsubscribed"));
    assert_memory_equal(r.u.s.p, "unsubscribed", r.u.s.n);
    assert_false(FIELD(&ctx, "whatsapp.blocked").u.b);
    assert_true(FIELD(&ctx, "whatsapp.block_reason").missing);
    assert_true(FIELD(&ctx, "whatsapp.consent").u.b);
    assert_true(FIELD(&ctx, "linkedin.consent").missing);
    assert_true(FIELD(&ctx, "email.consent").u.b);
}

static void test_meetings(void **state) {
    fixture *f = *state;
    td_event b = EV(TD_EV_MEETING_BOOKED, "2026-11-02T08:00:00Z");
    b.has |= TD_HAS_AT;
    b.at = T("2026-11-10T14:00:00Z");
    apply(f, &b);
    assert_int_equal(f->st.meetings_booked, 1);
    assert_true(f->st.next_meeting_at == b.at);
    td_event c = EV(TD_EV_MEETING_CANCELLED, "2026-11-03T08:00:00Z");
    c.has |= TD_HAS_AT;
    c.at = T("2026-11-09T14:00:00Z"); /* another meeting: the booked one stays */
    apply(f, &c);
    assert_int_equal(f->st.meetings_cancelled, 1);
    assert_true(f->st.next_meeting_at == b.at);
    apply_simple(f, TD_EV_MEETING_HELD, "2026-11-10T15:00:00Z"); /* no `at`: ends it */
    assert_int_equal(f->st.meetings_held, 1);
    assert_true(f->st.next_meeting_at == TD_MS_MISSING);
    apply(f, &b);
    td_event ns = EV(TD_EV_MEETING_NO_SHOW, "2026-11-10T15:00:00Z");
    ns.has |= TD_HAS_AT;
    ns.at = b.at;
    apply(f, &ns);
    assert_int_equal(f->st.meetings_no_show, 1);
    assert_true(f->st.next_meeting_at == TD_MS_MISSING);
    /* meetings are not outbound touches */
    assert_int_equal(f->st.ch[TD_CH_MEETING].sent, 0);
    assert_int_equal(f->st.touch_count, 0);
    td_ctx ctx = CTX(f, &ns, ns.occurred_at);
    assert_int_equal(FIELD(&ctx, "meetings.booked").u.i, 2);
    assert_int_equal(FIELD(&ctx, "meetings.no_show").u.i, 1);
    assert_true(FIELD(&ctx, "next_meeting_at").missing);
    assert_true(FIELD(&ctx, "event.at").u.t == b.at);
}

static td_event gift(const char *at, td_dec value, td_gift_kind kind) {
    td_event g = EV(TD_EV_GIFT_SENT, at);
    g.has |= TD_HAS_VALUE | TD_HAS_GIFT_KIND | TD_HAS_ITEMS | TD_HAS_WRAPPING;
    g.value_eur = value;
    g.gift_kind = kind;
    g.items = 1;
    strcpy(g.wrapping, "kraft");
    return g;
}

static void test_gift_year_rollover(void **state) {
    fixture *f = *state;
    strcpy(f->st.timezone, "Europe/Paris");
    td_event g1 = gift("2026-06-10T10:00:00Z", 450000, TD_GK_BOOK);
    apply(f, &g1);
    td_event g2 = gift("2026-09-10T10:00:00Z", 125000, TD_GK_OBJECT);
    apply(f, &g2);
    assert_int_equal(f->st.gift_year, 2026);
    assert_int_equal(f->st.gifts_year_count, 2);
    assert_int_equal(f->st.gifts_year_spend_eur, 575000);
    /* 2026-12-31 23:30 UTC is 2027-01-01 00:30 in Paris: a new local year */
    td_event g3 = gift("2026-12-31T23:30:00Z", 200000, TD_GK_CARD);
    apply(f, &g3);
    assert_int_equal(f->st.gift_year, 2027);
    assert_int_equal(f->st.gifts_year_count, 1);
    assert_int_equal(f->st.gifts_year_spend_eur, 200000);
    assert_int_equal(f->st.gifts_total, 3);
    assert_int_equal(f->st.last_gift_kind, TD_GK_CARD);
    assert_true(f->st.last_gift_at == g3.occurred_at);
    assert_int_equal(f->st.ch[TD_CH_GIFT].sent, 3);

    /* a late gift of the previous local year: total only */
    td_event late = gift("2026-12-20T10:00:00Z", 300000, TD_GK_BASKET);
    apply(f, &late);
    assert_int_equal(f->st.gifts_year_count, 1);
    assert_int_equal(f->st.gifts_total, 4);
    assert_int_equal(f->st.last_gift_kind, TD_GK_CARD); /* not the latest */

    /* reading: the local year of now decides */
    td_ctx ctx = CTX(f, &g3, T("2027-03-01T12:00:00Z"));
    assert_int_equal(FIELD(&ctx, "gifts.year_count").u.i, 1);
    td_value sp = FIELD(&ctx, "gifts.year_spend_eur");
    assert_int_equal(sp.u.d, 200000);
    ctx.now = T("2026-12-31T22:30:00Z"); /* 23:30 in Paris: still 2026 */
    assert_int_equal(FIELD(&ctx, "gifts.year_count").u.i, 0);
    assert_int_equal(FIELD(&ctx, "gifts.year_spend_eur").u.d, 0);
    ctx.now = T("2028-01-02T12:00:00Z");
    assert_int_equal(FIELD(&ctx, "gifts.year_count").u.i, 0);
    assert_int_equal(FIELD(&ctx, "gifts.total").u.i, 4);
    td_value k = FIELD(&ctx, "gifts.last_kind");
    assert_memory_equal(k.u.s.p, "card", 4);
    assert_int_equal(FIELD(&ctx, "event.value_eur").u.d, 200000);
    assert_int_equal(FIELD(&ctx, "event.items").u.i, 1);
    td_value w = FIELD(&ctx, "event.wrapping");
    assert_memory_equal(w.u.s.p, "kraft", 5);

    /* the same instant in the default zone (UTC) stays in 2026 */
    td_state utc;
    td_state_init(&utc, "p-43");
    assert_int_equal(td_state_apply(&utc, &g2, f->tz, &f->set), TD_OK);
    assert_int_equal(td_state_apply(&utc, &g3, f->tz, &f->set), TD_OK);
    assert_int_equal(utc.gift_year, 2026);
    assert_int_equal(utc.gifts_year_count, 2);
    td_state_free(&utc);
}

static void test_prospect_updated_and_owner(void **state) {
    fixture *f = *state;
    td_event pu = EV(TD_EV_PROSPECT_UPDATED, "2026-11-02T08:00:00Z");
    pu.has = TD_HAS_STAGE | TD_HAS_TIER | TD_HAS_COUNTRY | TD_HAS_SECTOR | TD_HAS_TIMEZONE |
             TD_HAS_GIFT_POLICY | TD_HAS_LTV | TD_HAS_LANGUAGE | TD_HAS_OWNER;
    pu.stage = TD_STAGE_PROPOSAL;
    pu.tier = 1;
    strcpy(pu.country, "DE");
    strcpy(pu.sector, "banking");
    strcpy(pu.timezone, "Europe/Berlin");
    pu.gift_policy = TD_GP_RESTRICTED;
    pu.lifetime_value_eur = 1200000000; /* 120000 EUR */
    strcpy(pu.language, "de");
    strcpy(pu.owner_id, "rep-7");
    apply(f, &pu);
    assert_int_equal(f->st.stage, TD_STAGE_PROPOSAL);
    assert_true(f->st.stage_changed_at == pu.occurred_at);
    assert_int_equal(f->st.tier, 1);
    assert_string_equal(f->st.country, "DE");
    assert_string_equal(f->st.sector, "banking");
    assert_string_equal(f->st.timezone, "Europe/Berlin");
    assert_int_equal(f->st.gift_policy, TD_GP_RESTRICTED);
    assert_int_equal(f->st.lifetime_value_eur, 1200000000);
    assert_string_equal(f->st.language, "de");
    assert_string_equal(f->st.owner_id, "rep-7");
    assert_int_equal(f->st.touch_count, 0);

    /* same stage again: stage_changed_at does not move; partial update */
    td_event pu2 = EV(TD_EV_PROSPECT_UPDATED, "2026-11-09T08:00:00Z");
    pu2.has = TD_HAS_STAGE | TD_HAS_TIER;
    pu2.stage = TD_STAGE_PROPOSAL;
    pu2.tier = 2;
    apply(f, &pu2);
    assert_true(f->st.stage_changed_at == pu.occurred_at);
    assert_int_equal(f->st.tier, 2);
    assert_string_equal(f->st.sector, "banking");
    pu2.stage = TD_STAGE_NEGOTIATION;
    apply(f, &pu2);
    assert_true(f->st.stage_changed_at == pu2.occurred_at);

    /* owner follows any event that carries one */
    td_event s = EV(TD_EV_EMAIL_SENT, "2026-11-10T08:00:00Z");
    s.has |= TD_HAS_OWNER;
    strcpy(s.owner_id, "rep-9");
    apply(f, &s);
    assert_string_equal(f->st.owner_id, "rep-9");
    apply_simple(f, TD_EV_EMAIL_SENT, "2026-11-11T08:00:00Z");
    assert_string_equal(f->st.owner_id, "rep-9");

    td_ctx ctx = CTX(f, &pu2, T("2026-11-11T09:00:00Z"));
    td_value v = FIELD(&ctx, "stage");
    assert_memory_equal(v.u.s.p, "negotiation", v.u.s.n);
    assert_int_equal(FIELD(&ctx, "tier").u.i, 2);
    assert_int_equal(FIELD(&ctx, "lifetime_value_eur").u.d, 1200000000);
    v = FIELD(&ctx, "gift_policy");
    assert_memory_equal(v.u.s.p, "restricted", v.u.s.n);
    v = FIELD(&ctx, "owner_id");
    assert_memory_equal(v.u.s.p, "rep-9", v.u.s.n);
    v = FIELD(&ctx, "event.stage");
    assert_memory_equal(v.u.s.p, "negotiation", v.u.s.n);
    assert_int_equal(FIELD(&ctx, "event.tier").u.i, 2);
    assert_true(FIELD(&ctx, "event.channel").missing);
    v = FIELD(&ctx, "event.type");
    assert_memory_equal(v.u.s.p, "prospect.updated", v.u.s.n);
    assert_int_equal(FIELD(&ctx, "local.hour").u.i, 10);   /* 09:00Z = 10:00 CET */
    assert_int_equal(FIELD(&ctx, "local.weekday").u.i, 3); /* a Wednesday */
    assert_int_equal(FIELD(&ctx, "local.month").u.i, 11);
}

static void test_histogram_in_zone(void **state) {
    fixture *f = *state;
    /* no prospect zone, default UTC */
    apply_simple(f, TD_EV_EMAIL_OPENED, "2026-07-01T07:15:00Z");
    assert_int_equal(f->st.hour_hist[7], 1);
    /* prospect in Paris (CEST, +2) */
    strcpy(f->st.timezone, "Europe/Paris");
    apply_simple(f, TD_EV_EMAIL_OPENED, "2026-07-01T07:15:00Z");
    assert_int_equal(f->st.hour_hist[9], 1);
    /* winter: CET +1 */
    apply_simple(f, TD_EV_WHATSAPP_READ, "2026-01-15T07:15:00Z");
    assert_int_equal(f->st.hour_hist[8], 1);
    /* New York (EDT, -4): 03:15 */
    strcpy(f->st.timezone, "America/New_York");
    apply_simple(f, TD_EV_SMS_REPLIED, "2026-07-01T07:15:00Z");
    assert_int_equal(f->st.hour_hist[3], 1);
    /* no zone: the settings' default zone (Tokyo, +9): 16:15 */
    f->st.timezone[0] = 0;
    strcpy(f->set.default_timezone, "Asia/Tokyo");
    apply_simple(f, TD_EV_EMAIL_OPENED, "2026-07-01T07:15:00Z");
    assert_int_equal(f->st.hour_hist[16], 1);
    /* an unknown prospect zone falls back to the default zone */
    strcpy(f->st.timezone, "Mars/Olympus");
    apply_simple(f, TD_EV_EMAIL_OPENED, "2026-07-01T07:15:00Z");
    assert_int_equal(f->st.hour_hist[16], 2);
    assert_int_equal(hist_total(&f->st), 6);
    /* without a tzdb: UTC */
    td_state st;
    td_state_init(&st, "p");
    td_event ev = EV(TD_EV_EMAIL_OPENED, "2026-07-01T07:15:00Z");
    assert_int_equal(td_state_apply(&st, &ev, NULL, NULL), TD_OK);
    assert_int_equal(st.hour_hist[7], 1);
    td_state_free(&st);
}

static void test_out_of_order(void **state) {
    fixture *f = *state;
    apply_simple(f, TD_EV_EMAIL_SENT, "2026-11-05T08:00:00Z");
    apply_simple(f, TD_EV_EMAIL_SENT, "2026-11-04T08:00:00Z"); /* late */
    apply_simple(f, TD_EV_EMAIL_OPENED, "2026-11-06T08:00:00Z");
    apply_simple(f, TD_EV_EMAIL_OPENED, "2026-11-05T09:00:00Z");
    assert_true(f->st.ch[TD_CH_EMAIL].last_sent_at == T("2026-11-05T08:00:00Z"));
    assert_true(f->st.last_touch_at == T("2026-11-05T08:00:00Z"));
    assert_true(f->st.first_touch_at == T("2026-11-04T08:00:00Z"));
    assert_true(f->st.first_seen_at == T("2026-11-04T08:00:00Z"));
    assert_true(f->st.last_event_at == T("2026-11-06T08:00:00Z"));
    assert_true(f->st.ch[TD_CH_EMAIL].last_opened_at == T("2026-11-06T08:00:00Z"));
    assert_int_equal(f->st.ch[TD_CH_EMAIL].sent, 2);
}

static void test_bad_event_type(void **state) {
    fixture *f = *state;
    td_event ev = EV(TD_EV_EMAIL_SENT, "2026-11-05T08:00:00Z");
    ev.type = TD_EV__COUNT;
    assert_int_equal(td_state_apply(&f->st, &ev, f->tz, &f->set), TD_ERR);
    assert_int_equal(f->st.events, 0);
}

/* ------------------------------------------------------- rings, tables */

/* The dedup window: a duplicate is caught within 7 days or the last 1,000
 * events, whichever is larger, never more than 4,096 ids. */
static void test_dedup_window(void **state) {
    (void)state;
    char id[32];
    td_ms t0 = 1793606400000; /* 2026-11-02 */
    /* 1,500 events a minute apart (one day): all within the window */
    td_state a;
    td_state_init(&a, "p-a");
    for (int i = 0; i < 1500; i++) {
        snprintf(id, sizeof id, "a-%d", i);
        assert_int_equal(td_state_remember_at(&a, td_state_fingerprint(id), t0 + i * 60000, 0),
                         TD_OK);
    }
    for (int i = 0; i < 1500; i++) {
        snprintf(id, sizeof id, "a-%d", i);
        if (!td_state_seen(&a, id)) fail_msg("a-%d forgotten within the window", i);
    }
    /* 2,000 events an hour apart (83 days): the last 1,000 stay, and what is
     * within 7 days (168 of them); the older ones go, a segment at a time */
    td_state b;
    td_state_init(&b, "p-b");
    for (int i = 0; i < 2000; i++) {
        snprintf(id, sizeof id, "b-%d", i);
        assert_int_equal(td_state_remember_at(&b, td_state_fingerprint(id), t0 + i * TD_HOUR, 0),
                         TD_OK);
    }
    for (int i = 1000; i < 2000; i++) {
        snprintf(id, sizeof id, "b-%d", i);
        if (!td_state_seen(&b, id)) fail_msg("b-%d: one of the last 1,000, forgotten", i);
    }
    uint32_t kept = td_state_dedup_size(&b);
    assert_true(kept >= 1000 && kept < 1000 + TD_DEDUP_SEG + TD_DEDUP_RING);
    snprintf(id, sizeof id, "b-%d", 0);
    assert_false(td_state_seen(&b, id));
    /* a shorter window (engine.dedup_window) keeps the last 1,000 anyway */
    td_state c;
    td_state_init(&c, "p-c");
    for (int i = 0; i < 1200; i++) {
        snprintf(id, sizeof id, "c-%d", i);
        assert_int_equal(
            td_state_remember_at(&c, td_state_fingerprint(id), t0 + i * 60000, TD_HOUR), TD_OK);
    }
    for (int i = 200; i < 1200; i++) {
        snprintf(id, sizeof id, "c-%d", i);
        if (!td_state_seen(&c, id)) fail_msg("c-%d: one of the last 1,000, forgotten", i);
    }
    /* 6,000 in one day: at most 4,096 */
    td_state d;
    td_state_init(&d, "p-d");
    for (int i = 0; i < 6000; i++) {
        snprintf(id, sizeof id, "d-%d", i);
        assert_int_equal(td_state_remember_at(&d, td_state_fingerprint(id), t0 + i * 1000, 0),
                         TD_OK);
    }
    assert_true(td_state_dedup_size(&d) <= TD_DEDUP_MAX);
    assert_true(td_state_dedup_size(&d) > TD_DEDUP_MAX - TD_DEDUP_SEG);
    for (int i = 6000 - (TD_DEDUP_MAX - TD_DEDUP_SEG); i < 6000; i++) {
        snprintf(id, sizeof id, "d-%d", i);
        if (!td_state_seen(&d, id)) fail_msg("d-%d forgotten under the cap", i);
    }
    /* the flat form: "dedup" (the ring) and one "dedup.<seq>" per segment;
     * a round trip is exact, and its size is what docs/state.md says */
    kvlist l = {0};
    td_state_serialize(&a, kv_collect, &l);
    size_t bytes = 0, segs = 0;
    for (size_t i = 0; i < l.n; i++)
        if (strncmp(l.a[i].k, "dedup", 5) == 0) {
            bytes += l.a[i].kn + l.a[i].vn;
            if (l.a[i].k[5] == '.') segs++;
        }
    assert_int_equal(segs, (1500 - TD_DEDUP_RING + TD_DEDUP_SEG - 1) / TD_DEDUP_SEG);
    print_message("dedup of 1,500 ids: %zu fields, %zu bytes in the flat form\n", segs + 1, bytes);
    assert_true(bytes < 1500 * 18 + segs * 40);
    kv_free(&l);
    check_round_trip(&a, true);
    td_state_free(&a);
    td_state_free(&b);
    td_state_free(&c);
    td_state_free(&d);
}

static void test_dedup_ring(void **state) {
    fixture *f = *state;
    char id[32];
    for (int i = 0; i < 40; i++) {
        snprintf(id, sizeof id, "e-%d", i);
        assert_false(td_state_seen(&f->st, id));
        td_state_remember(&f->st, id);
        assert_true(td_state_seen(&f->st, id));
    }
    assert_int_equal(f->st.dedup_count, TD_DEDUP_RING);
    /* the 8 the ring evicted are in the older segments: all 40 are caught */
    for (int i = 0; i < 40; i++) {
        snprintf(id, sizeof id, "e-%d", i);
        assert_true(td_state_seen(&f->st, id));
    }
    assert_int_equal(f->st.ndold, 1);
    assert_int_equal(f->st.dold[0].n, 40 - TD_DEDUP_RING);
    assert_int_equal(td_state_dedup_size(&f->st), 40);
    /* the flat form keeps ring order: oldest first */
    kvlist l = {0};
    td_state_serialize(&f->st, kv_collect, &l);
    const char *d = kv_get(&l, "dedup");
    assert_non_null(d);
    char want[17];
    snprintf(want, sizeof want, "%016llx", (unsigned long long)td_hash64("e-8", 3, TD_HASH_SEED));
    assert_memory_equal(d, want, 16);
    assert_int_equal(strlen(d), 32 * 17 - 1);
    kv_free(&l);
    check_round_trip(&f->st, true);
    /* after a round trip the ring keeps working */
    td_state c;
    td_state_init(&c, "");
    kvlist l2 = {0};
    td_state_serialize(&f->st, kv_collect, &l2);
    for (size_t i = 0; i < l2.n; i++)
        assert_int_equal(
            td_state_set_field(&c, l2.a[i].k, l2.a[i].kn, l2.a[i].v, l2.a[i].vn, NULL, 0), TD_OK);
    assert_non_null(kv_get(&l2, "dedup.1"));
    td_state_remember(&c, "e-40");
    td_state_remember(&f->st, "e-40");
    assert_true(td_state_equal(&c, &f->st));
    assert_true(td_state_seen(&c, "e-0"));
    assert_true(td_state_seen(&c, "e-9"));
    assert_false(td_state_seen(&c, "e-41"));
    kv_free(&l2);
    td_state_free(&c);
}

static void test_positions(void **state) {
    fixture *f = *state;
    assert_int_equal(td_state_pos_get(&f->st, "crm.events", 3), -1);
    td_state_pos_set(&f->st, "crm.events", 3, 100);
    td_state_pos_set(&f->st, "crm.events", 4, 7);
    td_state_pos_set(&f->st, "crm.events", 3, 101);
    assert_int_equal(td_state_pos_get(&f->st, "crm.events", 3), 101);
    assert_int_equal(td_state_pos_get(&f->st, "crm.events", 4), 7);
    assert_int_equal(f->st.npos, 2);
    assert_true(f->st.pos[0].key == td_hash64("crm.events/3", 12, TD_HASH_SEED) ||
                f->st.pos[1].key == td_hash64("crm.events/3", 12, TD_HASH_SEED));
    char topic[16];
    for (int i = 0; i < 10; i++) {
        snprintf(topic, sizeof topic, "t%d", i);
        td_state_pos_set(&f->st, topic, 0, 1000 + i);
    }
    assert_int_equal(f->st.npos, TD_POS_MAX);
    /* the lowest offsets went first */
    assert_int_equal(td_state_pos_get(&f->st, "crm.events", 4), -1);
    assert_int_equal(td_state_pos_get(&f->st, "t9", 0), 1009);
    for (uint32_t i = 1; i < f->st.npos; i++)
        assert_true(f->st.pos[i - 1].key < f->st.pos[i].key);
    check_round_trip(&f->st, true);
}

/* The timers' armed_by ids live once per state in a pool shared by
 * reference count: one event arming many timers takes one slot, re-arming
 * them reuses the freed slot, copies re-point into their own pool. */
static void test_armed_by_pool(void **state) {
    (void)state;
    td_state st;
    td_state_init(&st, "p-pool");
    const td_ms t = 1700000000000;
    char rule[16];
    for (int i = 0; i < 10; i++) {
        snprintf(rule, sizeof rule, "r%02d", i);
        assert_int_equal(td_state_arm_timer(&st, rule, t + i, "e-1"), TD_OK);
    }
    assert_int_equal(st.ntimers, 10);
    assert_int_equal(st.narmed, 1); /* one id, shared */
    assert_int_equal(st.armed[0].refs, 10);
    /* the held form: one lookup, then each timer takes a reference */
    uint32_t slot;
    assert_int_equal(td_state_armed_hold(&st, "e-2", 3, &slot), TD_OK);
    for (int i = 0; i < 10; i++) {
        snprintf(rule, sizeof rule, "r%02d", i);
        td_rule_key k = td_rule_key_make(rule);
        assert_int_equal(td_state_arm_timer_slot(&st, &k, t + TD_DAY + i, slot), TD_OK);
    }
    td_state_armed_drop(&st, slot);
    assert_int_equal(st.narmed, 2);
    assert_int_equal(st.armed[slot].refs, 10);
    assert_int_equal(st.armed[1 - slot].refs, 0); /* e-1 no longer used: free */
    /* a third event reuses the free slot instead of growing the pool */
    assert_int_equal(td_state_arm_timer(&st, "r00", t + 2 * TD_DAY, "e-3"), TD_OK);
    assert_int_equal(st.narmed, 2);
    assert_string_equal(td_state_timer(&st, "r00")->armed_by, "e-3");
    assert_string_equal(td_state_timer(&st, "r01")->armed_by, "e-2");
    /* a slot nobody holds cannot be armed with */
    td_rule_key k = td_rule_key_make("r05");
    assert_int_equal(td_state_arm_timer_slot(&st, &k, t, 7), TD_ERR);
    /* over-long armed_by ids are refused, not truncated */
    char longid[TD_ID_MAX + 2];
    memset(longid, 'x', sizeof longid - 1);
    longid[sizeof longid - 1] = 0;
    assert_int_equal(td_state_arm_timer(&st, "r01", t, longid), TD_ERR);
    assert_string_equal(td_state_timer(&st, "r01")->armed_by, "e-2");
    /* a copy has its own pool: freeing the source leaves its ids intact */
    td_state cp;
    assert_int_equal(td_state_copy(&cp, &st), TD_OK);
    assert_true(td_state_equal(&cp, &st));
    td_state_free(&st);
    assert_string_equal(td_state_timer(&cp, "r00")->armed_by, "e-3");
    assert_string_equal(td_state_timer(&cp, "r09")->armed_by, "e-2");
    assert_ptr_not_equal(td_state_timer(&cp, "r09")->armed_by, NULL);
    /* disarming drops the references */
    for (int i = 0; i < 10; i++) {
        snprintf(rule, sizeof rule, "r%02d", i);
        td_state_disarm_timer(&cp, rule);
    }
    assert_int_equal(cp.ntimers, 0);
    for (uint32_t i = 0; i < cp.narmed; i++)
        assert_int_equal(cp.armed[i].refs, 0);
    td_state_free(&cp);
}

static void test_fired_and_timers(void **state) {
    fixture *f = *state;
    td_ms t = T("2026-11-02T08:00:00Z");
    assert_true(td_state_fired_at(&f->st, "x") == TD_MS_MISSING);
    const char *rules[] = {"m", "c", "z", "a", "k", "b", "y", "d", "q"};
    for (int i = 0; i < 9; i++)
        assert_int_equal(td_state_set_fired(&f->st, rules[i], t + i), TD_OK);
    assert_int_equal(f->st.nfired, 9);
    for (int i = 0; i < 9; i++)
        assert_true(td_state_fired_at(&f->st, rules[i]) == t + i);
    for (uint32_t i = 1; i < f->st.nfired; i++)
        assert_true(strcmp(f->st.fired[i - 1].rule, f->st.fired[i].rule) < 0);
    assert_int_equal(td_state_set_fired(&f->st, "m", t + 100), TD_OK);
    assert_int_equal(f->st.nfired, 9);
    assert_true(td_state_fired_at(&f->st, "m") == t + 100);
    char longid[TD_RULE_ID_MAX + 2];
    memset(longid, 'r', sizeof longid - 1);
    longid[sizeof longid - 1] = 0;
    assert_int_equal(td_state_set_fired(&f->st, longid, t), TD_ERR);
    assert_int_equal(td_state_arm_timer(&f->st, longid, t, "e"), TD_ERR);
    longid[TD_RULE_ID_MAX] = 0; /* exactly the maximum is fine */
    assert_int_equal(td_state_set_fired(&f->st, longid, t), TD_OK);

    assert_null(td_state_timer(&f->st, "silence"));
    assert_int_equal(td_state_arm_timer(&f->st, "silence", t + TD_DAY, "e-1"), TD_OK);
    assert_int_equal(td_state_arm_timer(&f->st, "another", t + TD_HOUR, "e 2 with spaces"), TD_OK);
    assert_int_equal(td_state_arm_timer(&f->st, "silence", t + 3 * TD_DAY, "e-3"), TD_OK);
    const td_timer *tm = td_state_timer(&f->st, "silence");
    assert_non_null(tm);
    assert_true(tm->due_at == t + 3 * TD_DAY);
    assert_string_equal(tm->armed_by, "e-3");
    assert_int_equal(f->st.ntimers, 2);
    assert_string_equal(f->st.timers[0].rule, "another");
    check_round_trip(&f->st, true);
    td_state_disarm_timer(&f->st, "silence");
    td_state_disarm_timer(&f->st, "never-armed");
    assert_null(td_state_timer(&f->st, "silence"));
    assert_int_equal(f->st.ntimers, 1);
    kvlist l = {0};
    td_state_serialize(&f->st, kv_collect, &l);
    const char *v = kv_get(&l, "timer.another");
    assert_non_null(v);
    assert_string_equal(v, "2026-11-02T09:00:00Z e 2 with spaces");
    assert_string_equal(kv_get(&l, "fired.m"), "2026-11-02T08:00:00.100Z");
    kv_free(&l);
}

/* The key API (precomputed hashes, slot cache) finds exactly what the
 * string API finds, keeps the tables sorted, and is never fooled by a hash
 * that matches with different bytes or by a stale slot. */
static void test_rule_keys(void **state) {
    fixture *f = *state;
    td_ms t = T("2026-11-02T08:00:00Z");
    const char *ids[] = {"gifts.physical-quiet",
                         "silence.reengage-email",
                         "gifts.card-only-quiet",
                         "silence.reengage-linkedin",
                         "a",
                         "gifts.physical-cn-quiet"};
    td_rule_key keys[6];
    for (int i = 0; i < 6; i++) {
        keys[i] = td_rule_key_make(ids[i]);
        assert_int_equal(keys[i].len, strlen(ids[i]));
        assert_true(keys[i].hash == td_hash64(ids[i], strlen(ids[i]), TD_HASH_SEED));
        /* odd ones through the key API, even ones through the string API */
        if (i % 2) {
            assert_int_equal(td_state_arm_timer_key(&f->st, &keys[i], t + i, "e-k", 3), TD_OK);
            assert_int_equal(td_state_set_fired_key(&f->st, &keys[i], t - i), TD_OK);
        } else {
            assert_int_equal(td_state_arm_timer(&f->st, ids[i], t + i, "e-s"), TD_OK);
            assert_int_equal(td_state_set_fired(&f->st, ids[i], t - i), TD_OK);
        }
    }
    assert_int_equal(f->st.ntimers, 6);
    for (uint32_t i = 1; i < f->st.ntimers; i++)
        assert_true(strcmp(f->st.timers[i - 1].rule, f->st.timers[i].rule) < 0);
    for (uint32_t i = 1; i < f->st.nfired; i++)
        assert_true(strcmp(f->st.fired[i - 1].rule, f->st.fired[i].rule) < 0);
    for (int i = 0; i < 6; i++) {
        const td_timer *a = td_state_timer(&f->st, ids[i]),
                       *b = td_state_timer_key(&f->st, &keys[i]);
        assert_non_null(a);
        assert_ptr_equal(a, b);
        assert_true(a->due_at == t + i);
        assert_string_equal(a->armed_by, i % 2 ? "e-k" : "e-s");
        assert_true(td_state_fired_at(&f->st, ids[i]) == t - i);
        assert_true(td_state_fired_at_key(&f->st, &keys[i]) == t - i);
    }
    /* the same hash with other bytes is another rule */
    td_rule_key forged = {"gifts.physical-quieT", keys[0].len, keys[0].hash};
    assert_null(td_state_timer_key(&f->st, &forged));
    assert_true(td_state_fired_at_key(&f->st, &forged) == TD_MS_MISSING);
    /* a key of a prefix (shorter len, same bytes) is another rule too */
    td_rule_key prefix = {"gifts.physical-quiet", 5, td_hash64("gifts", 5, TD_HASH_SEED)};
    assert_null(td_state_timer_key(&f->st, &prefix));
    /* stale or wrong slots cost a scan, never a wrong answer */
    memset(f->st.timer_slot, 1, sizeof f->st.timer_slot);
    memset(f->st.fired_slot, 200, sizeof f->st.fired_slot);
    for (int i = 0; i < 6; i++) {
        const td_timer *tm = td_state_timer_key(&f->st, &keys[i]);
        assert_non_null(tm);
        assert_string_equal(tm->rule, ids[i]);
        assert_true(td_state_fired_at_key(&f->st, &keys[i]) == t - i);
    }
    /* removals move entries: lookups still find the others */
    td_state_disarm_timer_key(&f->st, &keys[4]); /* "a", the first entry */
    td_state_disarm_timer(&f->st, ids[1]);
    assert_int_equal(f->st.ntimers, 4);
    assert_null(td_state_timer_key(&f->st, &keys[4]));
    assert_null(td_state_timer(&f->st, ids[1]));
    for (int i = 0; i < 6; i++) {
        if (i == 4 || i == 1) continue;
        const td_timer *tm = td_state_timer_key(&f->st, &keys[i]);
        assert_non_null(tm);
        assert_true(tm->due_at == t + i);
    }
    /* re-arming keeps one entry per rule and a copy is equal */
    assert_int_equal(td_state_arm_timer_key(&f->st, &keys[0], t + 99, "e-9", 3), TD_OK);
    assert_int_equal(f->st.ntimers, 4);
    assert_true(td_state_timer(&f->st, ids[0])->due_at == t + 99);
    td_state cp;
    assert_int_equal(td_state_copy(&cp, &f->st), TD_OK);
    assert_true(td_state_equal(&cp, &f->st));
    assert_non_null(td_state_timer_key(&cp, &keys[5]));
    td_state_free(&cp);
    /* over-long ids are refused through the key API too */
    char longid[TD_RULE_ID_MAX + 2];
    memset(longid, 'r', sizeof longid - 1);
    longid[sizeof longid - 1] = 0;
    td_rule_key lk = td_rule_key_make(longid);
    assert_int_equal(td_state_arm_timer_key(&f->st, &lk, t, "e", 1), TD_ERR);
    char longev[TD_ID_MAX + 2];
    memset(longev, 'e', sizeof longev - 1);
    longev[sizeof longev - 1] = 0;
    assert_int_equal(td_state_arm_timer_key(&f->st, &keys[0], t, longev, strlen(longev)), TD_ERR);
    assert_int_equal(td_state_set_fired_key(&f->st, &lk, t), TD_ERR);
    assert_null(td_state_timer_key(&f->st, &lk));
    check_round_trip(&f->st, true);
}

/* The fingerprint forms of the dedup ring agree with the string forms. */
static void test_dedup_fingerprint(void **state) {
    fixture *f = *state;
    uint64_t fp = td_state_fingerprint("e-1");
    assert_false(td_state_seen_fp(&f->st, fp));
    td_state_remember_fp(&f->st, fp);
    assert_true(td_state_seen(&f->st, "e-1"));
    assert_false(td_state_seen(&f->st, "e-2"));
    td_state_remember(&f->st, "e-2");
    assert_true(td_state_seen_fp(&f->st, td_state_fingerprint("e-2")));
}

static void test_touches_within(void **state) {
    fixture *f = *state;
    td_ms now = T("2026-11-30T12:00:00Z");
    for (int d = 40; d >= 0; d--) { /* one touch a day, 40 days ago .. today */
        td_event ev = EV(TD_EV_EMAIL_SENT, "2026-11-30T12:00:00Z");
        ev.occurred_at = now - d * TD_DAY;
        apply(f, &ev);
    }
    assert_int_equal(td_state_touches_within(&f->st, now, TD_DAY), 1); /* (now-1d, now] */
    assert_int_equal(td_state_touches_within(&f->st, now, TD_DAY + 1), 2);
    assert_int_equal(td_state_touches_within(&f->st, now, TD_WEEK), 7);
    assert_int_equal(td_state_touches_within(&f->st, now, 30 * TD_DAY), 30);
    assert_int_equal(td_state_touches_within(&f->st, now - TD_DAY, TD_DAY), 1); /* future ignored */
    td_ctx ctx = CTX(f, NULL, now);
    assert_int_equal(FIELD(&ctx, "touches.1d").u.i, 1);
    assert_int_equal(FIELD(&ctx, "touches.7d").u.i, 7);
    assert_int_equal(FIELD(&ctx, "touches.30d").u.i, 30);
    assert_int_equal(FIELD(&ctx, "touches.total").u.i, 41);
    /* the ring wraps at TD_TOUCH_RING */
    for (int i = 0; i < 100; i++) {
        td_event ev = EV(TD_EV_SMS_SENT, "2026-11-30T12:00:00Z");
        ev.occurred_at = now + TD_HOUR + i;
        apply(f, &ev);
    }
    assert_int_equal(f->st.touch_count, TD_TOUCH_RING);
    assert_int_equal(td_state_touches_within(&f->st, now + 2 * TD_HOUR, TD_WEEK), TD_TOUCH_RING);
    check_round_trip(&f->st, true);
}

/* ------------------------------------------------------------ flat form */

/* A state with every field set, including awkward strings. */
static void build_rich(fixture *f) {
    td_event pu = EV(TD_EV_PROSPECT_UPDATED, "2026-01-02T08:00:00Z");
    pu.has = TD_HAS_STAGE | TD_HAS_TIER | TD_HAS_COUNTRY | TD_HAS_SECTOR | TD_HAS_TIMEZONE |
             TD_HAS_GIFT_POLICY | TD_HAS_LTV | TD_HAS_LANGUAGE | TD_HAS_OWNER | TD_HAS_CONSENT;
    pu.stage = TD_STAGE_ENGAGED;
    pu.tier = 3;
    strcpy(pu.country, "FR");
    strcpy(pu.sector, "pharma 100% \"bio\", cafe\xcc\x81");
    strcpy(pu.timezone, "Europe/Paris");
    pu.gift_policy = TD_GP_ALLOWED;
    pu.lifetime_value_eur = -12345; /* -1.2345 */
    strcpy(pu.language, "pt-BR");
    strcpy(pu.owner_id, "rep 7 %41\x01");
    pu.consent[TD_CH_LINKEDIN] = TD_TRI_NO;
    pu.consent[TD_CH_CALL] = TD_TRI_YES;
    apply(f, &pu);
    const td_event_type seq[] = {
        TD_EV_EMAIL_SENT,       TD_EV_EMAIL_DELIVERED,   TD_EV_EMAIL_OPENED,  TD_EV_EMAIL_CLICKED,
        TD_EV_WHATSAPP_SENT,    TD_EV_WHATSAPP_READ,     TD_EV_SMS_SENT,      TD_EV_SMS_FAILED,
        TD_EV_LINKEDIN_INVITED, TD_EV_LINKEDIN_ACCEPTED, TD_EV_CALL_ATTEMPTED};
    for (size_t i = 0; i < sizeof seq / sizeof seq[0]; i++) {
        td_event ev = EV(seq[i], "2026-01-05T08:00:00Z");
        ev.occurred_at += (td_ms)i * 3 * TD_HOUR + 250;
        apply(f, &ev);
    }
    td_event r = EV(TD_EV_LINKEDIN_REPLIED, "2026-01-06T17:00:00Z");
    r.has |= TD_HAS_SENTIMENT;
    r.sentiment = TD_SENT_NEUTRAL;
    apply(f, &r);
    apply_simple(f, TD_EV_EMAIL_SENT, "2026-01-08T08:00:00Z");
    apply_simple(f, TD_EV_SMS_OPTED_OUT, "2026-01-09T08:00:00Z");
    td_event hb = EV(TD_EV_EMAIL_BOUNCED, "2026-01-09T09:00:00Z");
    hb.has |= TD_HAS_HARD;
    hb.hard = true;
    apply(f, &hb);
    td_event b = EV(TD_EV_MEETING_BOOKED, "2026-01-10T08:00:00Z");
    b.has |= TD_HAS_AT;
    b.at = T("2026-01-20T14:00:00Z");
    apply(f, &b);
    apply_simple(f, TD_EV_MEETING_CANCELLED, "2026-01-11T08:00:00Z");
    apply(f, &b);
    apply_simple(f, TD_EV_MEETING_NO_SHOW, "2026-01-12T08:00:00Z");
    apply(f, &b);
    apply_simple(f, TD_EV_MEETING_HELD, "2026-01-20T15:00:00Z");
    apply(f, &b);
    td_event g = gift("2026-02-10T10:00:00Z", 730000, TD_GK_EXPERIENCE);
    apply(f, &g);
    for (int i = 0; i < 50; i++) {
        char id[32];
        snprintf(id, sizeof id, "e-%d", i);
        td_state_remember(&f->st, id);
    }
    td_state_pos_set(&f->st, "crm.events", 5, 123456789);
    td_state_set_fired(&f->st, "ghosting.pivot-channel", T("2026-01-06T10:00:00Z"));
    td_state_set_fired(&f->st, "rule with spaces, commas and %", T("2026-01-06T10:00:00.5Z"));
    td_state_set_fired(&f->st, "t\xc3\xa9l\xc3\xa9phone", T("0001-01-01T00:00:00Z"));
    td_state_arm_timer(&f->st, "silence.after-value", T("2026-01-11T08:00:00Z"), "e 1 2%");
    td_state_arm_timer(&f->st, "empty-armed", T("2026-01-12T08:00:00Z"), "");
    td_state_arm_timer(&f->st, "far", (td_ms)INT64_MAX, "e\x7f");
    f->st.version = 17;
}

static void test_round_trip_rich(void **state) {
    fixture *f = *state;
    build_rich(f);
    check_round_trip(&f->st, false);
    check_round_trip(&f->st, true);

    kvlist l = {0};
    td_state_serialize(&f->st, kv_collect, &l);
    /* readable values for ops */
    assert_string_equal(kv_get(&l, "v"), "17");
    assert_string_equal(kv_get(&l, "stage"), "engaged");
    assert_string_equal(kv_get(&l, "email.sent"), "2");
    assert_string_equal(kv_get(&l, "email.blocked"), "hard_bounce");
    assert_string_equal(kv_get(&l, "sms.blocked"), "opted_out");
    assert_string_equal(kv_get(&l, "sms.consent"), "false");
    assert_string_equal(kv_get(&l, "call.consent"), "true");
    assert_string_equal(kv_get(&l, "email.last_sent_at"), "2026-01-08T08:00:00Z");
    assert_string_equal(kv_get(&l, "lifetime_value_eur"), "-1.2345");
    assert_string_equal(kv_get(&l, "gifts.year_spend_eur"), "73");
    assert_string_equal(kv_get(&l, "gifts.year"), "2026");
    assert_string_equal(kv_get(&l, "gifts.last_kind"), "experience");
    assert_string_equal(kv_get(&l, "last_reply_sentiment"), "neutral");
    assert_string_equal(kv_get(&l, "sector"), "pharma 100%25 \"bio\", cafe%CC%81");
    assert_string_equal(kv_get(&l, "owner_id"), "rep 7 %2541%01");
    assert_string_equal(kv_get(&l, "fired.rule with spaces, commas and %25"),
                        "2026-01-06T10:00:00.500Z");
    assert_string_equal(kv_get(&l, "fired.t%C3%A9l%C3%A9phone"), "0001-01-01T00:00:00Z");
    assert_string_equal(kv_get(&l, "timer.far"), "@9223372036854775807 e%7F");
    assert_string_equal(kv_get(&l, "timer.empty-armed"), "2026-01-12T08:00:00Z ");
    assert_string_equal(kv_get(&l, "hour_hist"), "0:1,15:1,18:1");
    assert_non_null(kv_get(&l, "touches"));
    assert_string_equal(kv_get(&l, "tier"), "3");
    assert_null(kv_get(&l, "email.failed")); /* hard bounce: not a failure count */
    assert_string_equal(kv_get(&l, "next_meeting_at"), "2026-01-20T14:00:00Z");
    assert_null(kv_get(&l, "whatsapp.consent"));
    kv_free(&l);
}

static void rnd_str(char *dst, size_t cap) {
    size_t n = (size_t)(rnd() % cap); /* 0 .. cap-1 bytes */
    for (size_t i = 0; i < n; i++)
        dst[i] = (char)(1 + rnd() % 255);
    dst[n] = 0;
}
static int64_t rnd_i64(void) {
    switch (rnd() % 6) {
    case 0:
        return 0;
    case 1:
        return INT64_MIN;
    case 2:
        return INT64_MAX;
    case 3:
        return (int64_t)(rnd() % 1000);
    default:
        return (int64_t)rnd();
    }
}
static td_ms rnd_time(void) {
    switch (rnd() % 5) {
    case 0:
        return TD_MS_MISSING;
    case 1:
        return (td_ms)rnd(); /* anywhere, incl. outside RFC 3339 years */
    default:
        return -62135596800000LL + (td_ms)(rnd() % 315537897600000ULL); /* 1..9999 */
    }
}

static void rnd_state(td_state *st) {
    td_state_init(st, "");
    rnd_str(st->prospect_id, sizeof st->prospect_id);
    rnd_str(st->owner_id, sizeof st->owner_id);
    st->version = rnd_i64();
    st->events = rnd_i64();
    for (int c = 0; c < TD_CH__COUNT; c++) {
        td_chan_state *ch = &st->ch[c];
        if (rnd() % 3 == 0) continue; /* some channels untouched */
        ch->sent = rnd_i64();
        ch->delivered = rnd_i64();
        ch->opened = rnd_i64();
        ch->clicked = rnd_i64();
        ch->replied = rnd_i64();
        ch->failed = rnd_i64();
        ch->unanswered = rnd_i64();
        ch->opens_since_reply = rnd_i64();
        ch->last_sent_at = rnd_time();
        ch->last_opened_at = rnd_time();
        ch->last_replied_at = rnd_time();
        ch->blocked = (td_block_reason)(rnd() % 4);
        ch->consent = (td_tristate)(rnd() % 3);
    }
    st->stage = (td_stage)(rnd() % 8);
    st->tier = rnd() % 2 ? TD_INT_MISSING : rnd_i64();
    rnd_str(st->country, sizeof st->country);
    rnd_str(st->sector, sizeof st->sector);
    rnd_str(st->timezone, sizeof st->timezone);
    st->gift_policy = (td_gift_policy)(rnd() % 4);
    st->lifetime_value_eur = rnd_i64();
    rnd_str(st->language, sizeof st->language);
    st->first_seen_at = rnd_time();
    st->last_event_at = rnd_time();
    st->last_touch_at = rnd_time();
    st->last_inbound_at = rnd_time();
    st->first_touch_at = rnd_time();
    st->stage_changed_at = rnd_time();
    st->replies = rnd_i64();
    st->last_reply_sentiment = (td_sentiment)(rnd() % 5);
    st->meetings_booked = rnd_i64();
    st->meetings_held = rnd_i64();
    st->meetings_cancelled = rnd_i64();
    st->meetings_no_show = rnd_i64();
    st->next_meeting_at = rnd_time();
    st->touch_count = (uint32_t)(rnd() % (TD_TOUCH_RING + 1));
    st->touch_head = (uint32_t)(rnd() % TD_TOUCH_RING);
    for (int i = 0; i < TD_TOUCH_RING; i++)
        st->touch_ring[i] = rnd_time();
    for (int h = 0; h < 24; h++)
        st->hour_hist[h] = rnd() % 2 ? 0 : (uint32_t)rnd();
    st->gift_year = (int32_t)rnd();
    st->gifts_year_count = rnd_i64();
    st->gifts_year_spend_eur = rnd_i64();
    st->gifts_total = rnd_i64();
    st->last_gift_at = rnd_time();
    st->last_gift_kind = (td_gift_kind)(rnd() % 8);
    st->dedup_count = (uint32_t)(rnd() % (TD_DEDUP_RING + 1));
    st->dedup_head = (uint32_t)(rnd() % TD_DEDUP_RING);
    for (int i = 0; i < TD_DEDUP_RING; i++)
        st->dedup[i] = rnd();
    int np = (int)(rnd() % (TD_POS_MAX + 3));
    for (int i = 0; i < np; i++) {
        char topic[24];
        snprintf(topic, sizeof topic, "topic-%d", (int)(rnd() % 5));
        td_state_pos_set(st, topic, (int32_t)(rnd() % 4), rnd_i64());
    }
    int nf = (int)(rnd() % 6), nt = (int)(rnd() % 6);
    for (int i = 0; i < nf; i++) {
        char rule[TD_RULE_ID_MAX + 1];
        rnd_str(rule, sizeof rule);
        if (!rule[0]) strcpy(rule, "r");
        assert_int_equal(td_state_set_fired(st, rule, rnd_time()), TD_OK);
    }
    for (int i = 0; i < nt; i++) {
        char rule[TD_RULE_ID_MAX + 1], armed[TD_ID_MAX + 1];
        rnd_str(rule, sizeof rule);
        rnd_str(armed, sizeof armed);
        if (!rule[0]) strcpy(rule, "t");
        assert_int_equal(td_state_arm_timer(st, rule, rnd_time(), armed), TD_OK);
    }
}

/* td_state_diff: applying its sets and deletes to the "before" hash gives the
 * "after" hash exactly, for random pairs of states and for a state and the
 * same state after one more event (where the diff must be small). */
typedef struct diffapply {
    kvlist *hash;
    size_t sets, dels;
} diffapply;

static void diff_set(void *ud, const char *k, size_t kl, const char *v, size_t vl) {
    diffapply *d = ud;
    d->sets++;
    for (size_t i = 0; i < d->hash->n; i++)
        if (d->hash->a[i].kn == kl && memcmp(d->hash->a[i].k, k, kl) == 0) {
            free(d->hash->a[i].v);
            d->hash->a[i].v = malloc(vl + 1);
            memcpy(d->hash->a[i].v, v, vl);
            d->hash->a[i].v[vl] = 0;
            d->hash->a[i].vn = vl;
            return;
        }
    kv_collect(d->hash, k, kl, v, vl);
}

static void diff_del(void *ud, const char *k, size_t kl) {
    diffapply *d = ud;
    d->dels++;
    for (size_t i = 0; i < d->hash->n; i++)
        if (d->hash->a[i].kn == kl && memcmp(d->hash->a[i].k, k, kl) == 0) {
            free(d->hash->a[i].k);
            free(d->hash->a[i].v);
            d->hash->a[i] = d->hash->a[--d->hash->n];
            return;
        }
    fail_msg("deleted a key that was not there");
}

static void check_diff(const td_state *a, const td_state *b, diffapply *out) {
    kvlist ha = {0};
    td_state_serialize(a, kv_collect, &ha);
    diffapply d = {.hash = &ha};
    assert_int_equal(td_state_diff(a, b, diff_set, diff_del, &d), TD_OK);
    td_state r;
    td_state_init(&r, b->prospect_id);
    for (size_t i = 0; i < ha.n; i++)
        assert_int_equal(
            td_state_set_field(&r, ha.a[i].k, ha.a[i].kn, ha.a[i].v, ha.a[i].vn, NULL, 0) == TD_ERR,
            0);
    r.version = b->version; /* the version is the store's business */
    if (!td_state_equal(&r, b)) fail_msg("diff did not reproduce the state");
    td_state_free(&r);
    kv_free(&ha);
    if (out) *out = d;
}

static void test_diff(void **state) {
    fixture *f = *state;
    rng_state = 0xd1ffd1ffULL;
    for (int it = 0; it < 500; it++) {
        td_state a, b;
        rnd_state(&a);
        rnd_state(&b);
        td_strlcpy(b.prospect_id, a.prospect_id, sizeof b.prospect_id);
        check_diff(&a, &b, NULL);
        check_diff(&a, &a, NULL);
        td_state_free(&a);
        td_state_free(&b);
    }
    /* one event on a rich state changes a few fields only */
    build_rich(f);
    td_state before;
    assert_int_equal(td_state_copy(&before, &f->st), TD_OK);
    apply_simple(f, TD_EV_EMAIL_OPENED, "2026-12-01T10:00:00Z");
    td_state_remember(&f->st, "e-new");
    diffapply d;
    check_diff(&before, &f->st, &d);
    assert_true(d.sets >= 3);  /* email.opened, opens_since_reply, last_opened_at, ... */
    assert_true(d.sets <= 10); /* far fewer than the ~100 fields of the state */
    assert_int_equal(d.dels, 0);
    td_state_free(&before);
}

static void test_round_trip_random(void **state) {
    (void)state;
    rng_state = 0x5eed1234abcdULL;
    for (int it = 0; it < 3000; it++) {
        td_state st;
        rnd_state(&st);
        check_round_trip(&st, true);
        td_state c;
        assert_int_equal(td_state_copy(&c, &st), TD_OK);
        assert_true(td_state_equal(&c, &st));
        td_state_free(&c);
        td_state_free(&st);
    }
}

static void test_malformed_values(void **state) {
    fixture *f = *state;
    build_rich(f);
    static const char *bad[][2] = {
        {"v", ""},
        {"v", "12a"},
        {"v", "-"},
        {"v", "99999999999999999999"},
        {"v", " 1"},
        {"events", "+3"},
        {"email.sent", "1.5"},
        {"tier", "0x10"},
        {"gifts.year", "4294967296"},
        {"email.last_sent_at", "yesterday"},
        {"email.last_sent_at", "2026-13-01T00:00:00Z"},
        {"email.last_sent_at", ""},
        {"email.last_sent_at", "@"},
        {"email.last_sent_at", "@12x"},
        {"lifetime_value_eur", "1.23456"},
        {"lifetime_value_eur", "1."},
        {"lifetime_value_eur", ".5"},
        {"lifetime_value_eur", "922337203685478"},
        {"lifetime_value_eur", "1e3"},
        {"owner_id", "a%"},
        {"owner_id", "a%4"},
        {"owner_id", "a%zz"},
        {"owner_id", "a%00b"},
        {"country", "FRA"},
        {"stage", "maybe"},
        {"stage", ""},
        {"gift_policy", "ALLOWED"},
        {"last_reply_sentiment", "happy"},
        {"gifts.last_kind", "car"},
        {"email.blocked", "yes"},
        {"email.consent", "1"},
        {"hour_hist", "24:1"},
        {"hour_hist", "9"},
        {"hour_hist", "9:-1"},
        {"hour_hist", "9:1,,"},
        {"hour_hist", "9:4294967296"},
        {"touches", "2026-01-01T00:00:00Z,"},
        {"touches", "nope"},
        {"dedup", "xyz"},
        {"dedup", "00112233445566778"},
        {"dedup", "1,"},
        {"pos.zz", "1"},
        {"pos.00112233445566778", "1"},
        {"pos.0011", "x"},
        {"fired.r", "soon"},
        {"fired.r%", "2026-01-01T00:00:00Z"},
        {"timer.r", "2026-01-01T00:00:00Z e%"},
        {"timer.r", "never e-1"},
    };
    td_state before;
    assert_int_equal(td_state_copy(&before, &f->st), TD_OK);
    char err[128];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = 0;
        int rc = td_state_set_field(&f->st, bad[i][0], strlen(bad[i][0]), bad[i][1],
                                    strlen(bad[i][1]), err, sizeof err);
        if (rc != TD_ERR) fail_msg("%s=%s accepted (rc %d)", bad[i][0], bad[i][1], rc);
        assert_true(strlen(err) > 0);
        assert_non_null(strstr(err, "state field"));
        if (!td_state_equal(&before, &f->st))
            fail_msg("%s=%s changed the state", bad[i][0], bad[i][1]);
    }
    /* 65 touches and 33 dedup entries are too many */
    char big[65 * 24];
    size_t n = 0;
    for (int i = 0; i < 65; i++)
        n += (size_t)snprintf(big + n, sizeof big - n, "%s@%d", i ? "," : "", i);
    assert_int_equal(td_state_set_field(&f->st, "touches", 7, big, n, err, sizeof err), TD_ERR);
    n = 0;
    for (int i = 0; i < 33; i++)
        n += (size_t)snprintf(big + n, sizeof big - n, "%s%x", i ? "," : "", i);
    assert_int_equal(td_state_set_field(&f->st, "dedup", 5, big, n, err, sizeof err), TD_ERR);
    /* over-long strings */
    char lng[300];
    memset(lng, 'a', sizeof lng);
    assert_int_equal(td_state_set_field(&f->st, "owner_id", 8, lng, TD_ID_MAX + 1, err, sizeof err),
                     TD_ERR);
    assert_int_equal(
        td_state_set_field(&f->st, "sector", 6, lng, TD_SHORT_MAX + 1, err, sizeof err), TD_ERR);
    assert_int_equal(td_state_set_field(&f->st, "language", 8, lng, 16, err, sizeof err), TD_ERR);
    char key[80] = "fired.";
    memset(key + 6, 'r', TD_RULE_ID_MAX + 1);
    assert_int_equal(
        td_state_set_field(&f->st, key, 6 + TD_RULE_ID_MAX + 1, "@1", 2, err, sizeof err), TD_ERR);
    char tv[200] = "@1 ";
    memset(tv + 3, 'e', TD_ID_MAX + 1);
    assert_int_equal(
        td_state_set_field(&f->st, "timer.r", 7, tv, 3 + TD_ID_MAX + 1, err, sizeof err), TD_ERR);
    /* NUL bytes inside a value (lengths are explicit) */
    assert_int_equal(td_state_set_field(&f->st, "owner_id", 8, "a\0b", 3, err, sizeof err), TD_ERR);
    assert_int_equal(td_state_set_field(&f->st, "v", 1, "1\0", 2, err, sizeof err), TD_ERR);
    assert_true(td_state_equal(&before, &f->st));
    /* a NULL/zero error buffer is fine */
    assert_int_equal(td_state_set_field(&f->st, "v", 1, "x", 1, NULL, 0), TD_ERR);
    /* unknown keys are ignored, newer per-channel fields too */
    assert_int_equal(td_state_set_field(&f->st, "future_field", 12, "1", 1, err, sizeof err), 1);
    assert_int_equal(td_state_set_field(&f->st, "email.future", 12, "1", 1, err, sizeof err), 1);
    assert_int_equal(td_state_set_field(&f->st, "", 0, "", 0, err, sizeof err), 1);
    assert_int_equal(td_state_set_field(&f->st, "pos.", 4, "1", 1, err, sizeof err), 1);
    assert_true(td_state_equal(&before, &f->st));
    /* accepted variants */
    assert_int_equal(
        td_state_set_field(&f->st, "lifetime_value_eur", 18, "-0.5", 4, err, sizeof err), TD_OK);
    assert_int_equal(f->st.lifetime_value_eur, -5000);
    assert_int_equal(td_state_set_field(&f->st, "lifetime_value_eur", 18, "922337203685477.5807",
                                        20, err, sizeof err),
                     TD_OK);
    assert_true(f->st.lifetime_value_eur == INT64_MAX);
    assert_int_equal(
        td_state_set_field(&f->st, "v", 1, "-9223372036854775808", 20, err, sizeof err), TD_OK);
    assert_true(f->st.version == INT64_MIN);
    assert_int_equal(td_state_set_field(&f->st, "email.last_sent_at", 18,
                                        "2026-11-22T11:15:00+01:00", 25, err, sizeof err),
                     TD_OK);
    assert_true(f->st.ch[TD_CH_EMAIL].last_sent_at == T("2026-11-22T10:15:00Z"));
    assert_int_equal(td_state_set_field(&f->st, "timer.r", 7, "@5", 2, err, sizeof err), TD_OK);
    assert_string_equal(td_state_timer(&f->st, "r")->armed_by, "");
    assert_int_equal(td_state_set_field(&f->st, "owner_id", 8, "%4a", 3, err, sizeof err), TD_OK);
    assert_string_equal(f->st.owner_id, "J");
    td_state_free(&before);
}

/* --------------------------------------------------------------- schema */

static void test_schema_types(void **state) {
    (void)state;
    static const char *chans[] = {"email", "whatsapp", "sms",  "linkedin",
                                  "call",  "meeting",  "gift", "target"};
    static const struct {
        const char *sfx;
        td_type t;
    } per[] = {{"sent", TD_T_INT},
               {"delivered", TD_T_INT},
               {"opened", TD_T_INT},
               {"clicked", TD_T_INT},
               {"replied", TD_T_INT},
               {"failed", TD_T_INT},
               {"unanswered", TD_T_INT},
               {"opens_since_reply", TD_T_INT},
               {"last_sent_at", TD_T_TIME},
               {"last_opened_at", TD_T_TIME},
               {"last_replied_at", TD_T_TIME},
               {"blocked", TD_T_BOOL},
               {"block_reason", TD_T_STR},
               {"consent", TD_T_BOOL}};
    size_t expected = 0;
    for (size_t c = 0; c < 8; c++)
        for (size_t i = 0; i < sizeof per / sizeof per[0]; i++) {
            char name[64];
            snprintf(name, sizeof name, "%s.%s", chans[c], per[i].sfx);
            const td_field *fd = td_schema_lookup(name, strlen(name));
            if (!fd) fail_msg("missing %s", name);
            assert_int_equal(fd->type, per[i].t);
            assert_int_equal(fd->scope, c == 7 ? TD_FIELD_GUARD : TD_FIELD_ANY);
            assert_int_equal(fd->channel, c == 7 ? -1 : (int)c);
            expected++;
        }
    static const struct {
        const char *n;
        td_type t;
        int scope;
    } others[] = {
        {"prospect_id", TD_T_STR, 0},
        {"owner_id", TD_T_STR, 0},
        {"stage", TD_T_STR, 0},
        {"country", TD_T_STR, 0},
        {"sector", TD_T_STR, 0},
        {"timezone", TD_T_STR, 0},
        {"gift_policy", TD_T_STR, 0},
        {"language", TD_T_STR, 0},
        {"tier", TD_T_INT, 0},
        {"lifetime_value_eur", TD_T_DEC, 0},
        {"first_seen_at", TD_T_TIME, 0},
        {"last_event_at", TD_T_TIME, 0},
        {"last_touch_at", TD_T_TIME, 0},
        {"last_inbound_at", TD_T_TIME, 0},
        {"first_touch_at", TD_T_TIME, 0},
        {"stage_changed_at", TD_T_TIME, 0},
        {"next_meeting_at", TD_T_TIME, 0},
        {"last_gift_at", TD_T_TIME, 0},
        {"replied", TD_T_BOOL, 0},
        {"replies", TD_T_INT, 0},
        {"events", TD_T_INT, 0},
        {"last_reply_sentiment", TD_T_STR, 0},
        {"meetings.booked", TD_T_INT, 0},
        {"meetings.held", TD_T_INT, 0},
        {"meetings.cancelled", TD_T_INT, 0},
        {"meetings.no_show", TD_T_INT, 0},
        {"touches.1d", TD_T_INT, 0},
        {"touches.7d", TD_T_INT, 0},
        {"touches.30d", TD_T_INT, 0},
        {"touches.total", TD_T_INT, 0},
        {"gifts.year_count", TD_T_INT, 0},
        {"gifts.year_spend_eur", TD_T_DEC, 0},
        {"gifts.total", TD_T_INT, 0},
        {"gifts.recommended_year", TD_T_INT, 0},
        {"feedback.acted", TD_T_INT, 0},
        {"feedback.dismissed", TD_T_INT, 0},
        {"feedback.snoozed", TD_T_INT, 0},
        {"last_acted_at", TD_T_TIME, 0},
        {"gifts.last_kind", TD_T_STR, 0},
        {"engagement.points", TD_T_INT, 0},
        {"is_new", TD_T_BOOL, 0},
        {"local.hour", TD_T_INT, 0},
        {"local.weekday", TD_T_INT, 0},
        {"local.month", TD_T_INT, 0},
        {"event.type", TD_T_STR, 1},
        {"event.channel", TD_T_STR, 1},
        {"event.kind", TD_T_STR, 1},
        {"event.sentiment", TD_T_STR, 1},
        {"event.owner_id", TD_T_STR, 1},
        {"event.gift_kind", TD_T_STR, 1},
        {"event.wrapping", TD_T_STR, 1},
        {"event.human", TD_T_BOOL, 1},
        {"event.hard", TD_T_BOOL, 1},
        {"event.occurred_at", TD_T_TIME, 1},
        {"event.at", TD_T_TIME, 1},
        {"event.value_eur", TD_T_DEC, 1},
        {"event.items", TD_T_INT, 1},
        {"event.duration_s", TD_T_INT, 1},
        {"event.tier", TD_T_INT, 1},
        {"event.stage", TD_T_STR, 1},
        {"rec.channel", TD_T_STR, 2},
        {"rec.touch", TD_T_STR, 2},
        {"rec.rule", TD_T_STR, 2},
        {"rec.group", TD_T_STR, 2},
        {"rec.priority", TD_T_INT, 2},
        {"rec.not_before", TD_T_TIME, 2},
    };
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) {
        const td_field *fd = td_schema_lookup(others[i].n, strlen(others[i].n));
        if (!fd) fail_msg("missing %s", others[i].n);
        assert_int_equal(fd->type, others[i].t);
        assert_int_equal(fd->scope, others[i].scope);
        expected++;
    }
    size_t n = 0;
    const td_field *all = td_schema_fields(&n);
    assert_int_equal(n, expected);
    for (size_t i = 0; i < n; i++) {
        /* unique names, each found by lookup, documented */
        assert_ptr_equal(td_schema_lookup(all[i].name, strlen(all[i].name)), &all[i]);
        assert_non_null(all[i].get);
        assert_true(all[i].doc && strlen(all[i].doc) > 5);
    }
    /* a prefix or a longer name is not a field */
    assert_null(td_schema_lookup("email.sen", 9));
    assert_null(td_schema_lookup("email.sentx", 11));
    assert_null(td_schema_lookup("nope", 4));
    assert_non_null(td_schema_lookup("email.sent+1", 10)); /* length decides */
}

static void test_schema_getters(void **state) {
    fixture *f = *state;
    build_rich(f);
    size_t n = 0;
    const td_field *all = td_schema_fields(&n);
    td_event ev = gift("2026-03-01T10:00:00Z", 10000, TD_GK_BOOK);
    td_rec_view rec = {.channel = TD_CH_WHATSAPP,
                       .touch = "micro_question",
                       .rule = "ghosting.pivot",
                       .group = "",
                       .priority = 80,
                       .not_before = T("2026-03-02T09:00:00Z")};
    td_ctx with = CTX(f, &ev, T("2026-03-01T10:00:00Z"));
    with.rec = &rec;
    td_ctx without = CTX(f, NULL, T("2026-03-01T10:00:00Z"));
    for (size_t i = 0; i < n; i++) {
        td_value v;
        td_field_read(&all[i], &with, &v);
        assert_int_equal(v.type, all[i].type);
        if (v.type == TD_T_STR && !v.missing) assert_non_null(v.u.s.p);
        td_field_read(&all[i], &without, &v);
        assert_int_equal(v.type, all[i].type);
        if (all[i].scope != TD_FIELD_ANY && strcmp(all[i].name, "event.type") &&
            strcmp(all[i].name, "event.occurred_at"))
            assert_true(v.missing);
        if (all[i].scope == TD_FIELD_EVENT) assert_true(v.missing);
    }
    /* target.* reads the recommendation's channel */
    assert_int_equal(FIELD(&with, "target.sent").u.i, f->st.ch[TD_CH_WHATSAPP].sent);
    assert_false(FIELD(&with, "target.blocked").u.b);
    rec.channel = TD_CH_SMS;
    assert_true(FIELD(&with, "target.blocked").u.b);
    assert_false(FIELD(&with, "target.consent").u.b);
    td_value s = FIELD(&with, "target.block_reason");
    assert_memory_equal(s.u.s.p, "opted_out", 9);
    s = FIELD(&with, "rec.channel");
    assert_memory_equal(s.u.s.p, "sms", 3);
    s = FIELD(&with, "rec.touch");
    assert_memory_equal(s.u.s.p, "micro_question", s.u.s.n);
    assert_true(FIELD(&with, "rec.group").missing);
    assert_int_equal(FIELD(&with, "rec.priority").u.i, 80);
    assert_true(FIELD(&with, "rec.not_before").u.t == rec.not_before);
    assert_true(FIELD(&without, "target.sent").missing);
    s = FIELD(&with, "event.channel");
    assert_memory_equal(s.u.s.p, "gift", 4);
    s = FIELD(&with, "event.gift_kind");
    assert_memory_equal(s.u.s.p, "book", 4);
    assert_true(FIELD(&with, "event.occurred_at").u.t == ev.occurred_at);
    assert_true(FIELD(&with, "event.human").missing);
    assert_true(FIELD(&with, "event.hard").missing);
    s = FIELD(&with, "prospect_id");
    assert_memory_equal(s.u.s.p, "p-42", 4);
    s = FIELD(&with, "sector");
    assert_int_equal(s.u.s.n, strlen(f->st.sector));
    assert_ptr_equal(s.u.s.p, f->st.sector); /* borrowed */
    assert_true(FIELD(&with, "email.last_opened_at").u.t == T("2026-01-05T14:00:00.250Z"));
    assert_true(FIELD(&with, "linkedin.last_sent_at").u.t == T("2026-01-06T08:00:00.250Z"));
    assert_true(FIELD(&with, "call.last_replied_at").missing);
    assert_int_equal(FIELD(&with, "email.unanswered").u.i, 1);
    assert_int_equal(FIELD(&with, "engagement.points").u.i, 3);
    assert_int_equal(FIELD(&with, "gifts.year_count").u.i, 1);
    assert_int_equal(FIELD(&with, "gifts.year_spend_eur").u.d, 730000);
    assert_int_equal(FIELD(&with, "local.hour").u.i, 11); /* Paris, CET */

    /* a fresh state: missing everywhere it should be */
    td_state fresh;
    td_state_init(&fresh, "p-1");
    td_ctx c = without;
    c.st = &fresh;
    static const char *missing[] = {"tier",
                                    "stage",
                                    "owner_id",
                                    "lifetime_value_eur",
                                    "first_seen_at",
                                    "last_touch_at",
                                    "email.last_sent_at",
                                    "email.consent",
                                    "email.block_reason",
                                    "gifts.last_kind",
                                    "last_reply_sentiment",
                                    "next_meeting_at",
                                    "timezone"};
    for (size_t i = 0; i < sizeof missing / sizeof missing[0]; i++)
        if (!FIELD(&c, missing[i]).missing) fail_msg("%s should be missing", missing[i]);
    assert_true(FIELD(&c, "is_new").u.b);
    assert_false(FIELD(&c, "replied").u.b);
    assert_false(FIELD(&c, "email.sent").missing);
    assert_int_equal(FIELD(&c, "email.sent").u.i, 0);
    assert_int_equal(FIELD(&c, "local.hour").u.i, 10); /* UTC */
    td_state_free(&fresh);
}

/* Percent-encoding as the flat form defines it, one byte at a time. */
static void ref_pct(const char *s, char *out) {
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        out += *p < 0x20 || *p >= 0x7f || *p == '%' ? sprintf(out, "%%%02X", *p)
                                                    : sprintf(out, "%c", *p);
    *out = 0;
}

/* Strings of every length with one special byte (each of them) at each
 * position, or random bytes: the serialised values and fired.* / timer.*
 * keys match the byte-by-byte encoding (the encoder copies plain words of 8
 * bytes at a time). */
static void test_flat_pct_reference(void **unused) {
    (void)unused;
    char want[3 * (TD_ID_MAX + 1) + 16], key[3 * (TD_RULE_ID_MAX + 1) + 16];
    for (int round = 0; round < 3000; round++) {
        td_state st;
        td_state_init(&st, "p");
        size_t n = 1 + (size_t)(rnd() % TD_ID_MAX);
        for (size_t i = 0; i < n; i++)
            st.owner_id[i] = (char)('a' + rnd() % 26);
        st.owner_id[n] = 0;
        if (round < 2 * 255) { /* each byte at a random position */
            st.owner_id[rnd() % n] = (char)(1 + round % 255);
        } else {
            for (size_t i = 0; i < n; i++)
                if (rnd() % 8 == 0) st.owner_id[i] = (char)(1 + rnd() % 255);
        }
        char rule[TD_RULE_ID_MAX + 1];
        size_t rn = 1 + (size_t)(rnd() % TD_RULE_ID_MAX);
        for (size_t i = 0; i < rn; i++)
            rule[i] = rnd() % 6 ? (char)('a' + rnd() % 26) : (char)(1 + rnd() % 255);
        rule[rn] = 0;
        assert_int_equal(td_state_set_fired(&st, rule, 0), TD_OK);
        assert_int_equal(td_state_arm_timer(&st, rule, 1000, st.owner_id), TD_OK);
        kvlist l = {0};
        td_state_serialize(&st, kv_collect, &l);
        ref_pct(st.owner_id, want);
        assert_string_equal(kv_get(&l, "owner_id"), want);
        strcpy(key, "fired.");
        ref_pct(rule, key + 6);
        assert_string_equal(kv_get(&l, key), "1970-01-01T00:00:00Z");
        memcpy(key, "timer.", 6);
        char tv[sizeof want + 32];
        snprintf(tv, sizeof tv, "1970-01-01T00:00:01Z %s", want);
        assert_string_equal(kv_get(&l, key), tv);
        kv_free(&l);
        td_state_free(&st);
    }
}

/* A channel with all its fields at their defaults has no key (the
 * serialiser skips such channels whole); any one field off its default
 * gives exactly that channel's key. */
static void test_flat_channel_fields(void **unused) {
    (void)unused;
    td_state st;
    td_state_init(&st, "p");
    kvlist base = {0};
    td_state_serialize(&st, kv_collect, &base);
    static const char *const names[] = {"sent",           "delivered",         "opened",
                                        "clicked",        "replied",           "failed",
                                        "unanswered",     "opens_since_reply", "last_sent_at",
                                        "last_opened_at", "last_replied_at",   "blocked",
                                        "consent"};
    for (int c = 0; c < TD_CH__COUNT; c++)
        for (int f = 0; f < 13; f++) {
            td_state_init(&st, "p");
            td_chan_state *ch = &st.ch[c];
            int64_t *cnt[] = {&ch->sent,       &ch->delivered,        &ch->opened,
                              &ch->clicked,    &ch->replied,          &ch->failed,
                              &ch->unanswered, &ch->opens_since_reply};
            td_ms *tm[] = {&ch->last_sent_at, &ch->last_opened_at, &ch->last_replied_at};
            if (f < 8)
                *cnt[f] = 1 + f;
            else if (f < 11)
                *tm[f - 8] = 0;
            else if (f == 11)
                ch->blocked = TD_BLOCK_OPTED_OUT;
            else
                ch->consent = TD_TRI_NO;
            kvlist l = {0};
            td_state_serialize(&st, kv_collect, &l);
            assert_int_equal(l.n, base.n + 1);
            char key[64];
            snprintf(key, sizeof key, "%s.%s", td_channel_name((td_channel)c), names[f]);
            assert_non_null(kv_get(&l, key));
            kv_free(&l);
        }
    kv_free(&base);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fmt_integers),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test_setup_teardown(test_copy_equal, setup, teardown),
        cmocka_unit_test_setup_teardown(test_touches_each_channel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_delivered_clicked_failed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_opens_human_vs_machine, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reply_vs_out_of_office, setup, teardown),
        cmocka_unit_test_setup_teardown(test_call_connected_and_linkedin_accepted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_blocks_and_consent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_meetings, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gift_year_rollover, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prospect_updated_and_owner, setup, teardown),
        cmocka_unit_test_setup_teardown(test_histogram_in_zone, setup, teardown),
        cmocka_unit_test_setup_teardown(test_out_of_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_event_type, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dedup_ring, setup, teardown),
        cmocka_unit_test(test_dedup_window),
        cmocka_unit_test_setup_teardown(test_positions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fired_and_timers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rule_keys, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dedup_fingerprint, setup, teardown),
        cmocka_unit_test_setup_teardown(test_touches_within, setup, teardown),
        cmocka_unit_test_setup_teardown(test_round_trip_rich, setup, teardown),
        cmocka_unit_test(test_round_trip_random),
        cmocka_unit_test_setup_teardown(test_diff, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed_values, setup, teardown),
        cmocka_unit_test(test_schema_types),
        cmocka_unit_test(test_armed_by_pool),
        cmocka_unit_test_setup_teardown(test_schema_getters, setup, teardown),
        cmocka_unit_test(test_flat_pct_reference),
        cmocka_unit_test(test_flat_channel_fields),
    };
    return cmocka_run_group_tests_name("td_state", tests, NULL, NULL);
}
