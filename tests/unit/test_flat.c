/*
 * test_flat.c - the writers of the flat form (td_kvs_capture and
 * td_state_serialize), td_time_format_memo, the position keys and
 * td_kvs_diff, each against a straightforward reference written here from
 * the documented format (snprintf, byte-by-byte loops, quadratic searches):
 * times before 1970 and after 9999, leap days, milliseconds or not, INT64
 * extremes, empty and full rings, bytes that need percent-encoding, and
 * td_kvs buffers that run out of room in the middle of a state.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "td_kvs.h"
#include "td_state.h"

static uint64_t rng_s = 0x9e3779b97f4a7c15ULL;
static uint64_t rnd(void) {
    rng_s ^= rng_s << 13;
    rng_s ^= rng_s >> 7;
    rng_s ^= rng_s << 17;
    return rng_s;
}

/* ------------------------------------------------------------ references */

#define RFC_MIN ((td_ms)-62135596800000LL) /* 0001-01-01T00:00:00.000Z */
#define RFC_MAX ((td_ms)253402300799999LL) /* 9999-12-31T23:59:59.999Z */

static int64_t days_before_year(int64_t y) { /* days from 0001-01-01 to y-01-01 */
    int64_t p = y - 1;
    return 365 * p + p / 4 - p / 100 + p / 400;
}
static bool leap(int64_t y) { return y % 4 == 0 && (y % 100 != 0 || y % 400 == 0); }

/* The civil date of day d (days since 0001-01-01): the year by estimate
 * and correction, then the month by walking the month lengths. */
static void ref_civil(int64_t d, int *y, int *m, int *dd) {
    int64_t yy = d * 400 / 146097 + 1;
    while (days_before_year(yy) > d)
        yy--;
    while (days_before_year(yy + 1) <= d)
        yy++;
    int64_t doy = d - days_before_year(yy);
    static const int len[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int mm = 0;
    for (;;) {
        int l = len[mm] + (mm == 1 && leap(yy));
        if (doy < l) break;
        doy -= l;
        mm++;
    }
    *y = (int)yy;
    *m = mm + 1;
    *dd = (int)doy + 1;
}

/* A time of the flat form: RFC 3339 UTC for years 1..9999, else "@<ms>". */
static int ref_time(char *out, size_t cap, td_ms t) {
    if (t < RFC_MIN || t > RFC_MAX) return snprintf(out, cap, "@%" PRId64, t);
    int64_t u = t - RFC_MIN, day = u / TD_DAY, rem = u % TD_DAY;
    int y, m, d;
    ref_civil(day, &y, &m, &d);
    int ms = (int)(rem % 1000), s = (int)(rem / 1000);
    int n =
        snprintf(out, cap, "%04d-%02d-%02dT%02d:%02d:%02d", y, m, d, s / 3600, s / 60 % 60, s % 60);
    if (ms) n += snprintf(out + n, cap - (size_t)n, ".%03d", ms);
    n += snprintf(out + n, cap - (size_t)n, "Z");
    return n;
}

/* Percent-encoding: bytes below 0x20, 0x7f and above, and '%' as %XX. */
static int ref_pct(char *out, size_t cap, const char *s) {
    int n = 0;
    out[0] = '\0';
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p < 0x20 || *p >= 0x7f || *p == '%')
            n += snprintf(out + n, cap - (size_t)n, "%%%02X", *p);
        else
            n += snprintf(out + n, cap - (size_t)n, "%c", *p);
    }
    return n;
}

static int ref_dec(char *out, size_t cap, td_dec d) {
    uint64_t m = d < 0 ? (uint64_t)0 - (uint64_t)d : (uint64_t)d;
    int n = snprintf(out, cap, "%s%" PRIu64, d < 0 ? "-" : "", m / TD_DEC_SCALE);
    unsigned fp = (unsigned)(m % TD_DEC_SCALE);
    if (fp) {
        char f[8];
        snprintf(f, sizeof f, "%04u", fp);
        size_t fl = strlen(f);
        while (fl > 1 && f[fl - 1] == '0') /* fp != 0: a digit is not 0 */
            f[--fl] = 0;
        n += snprintf(out + n, cap - (size_t)n, ".%s", f);
    }
    return n;
}

/* The flat form as "key=value\n" lines. */
typedef struct text {
    char *p;
    size_t len, cap;
} text;

static void text_add(text *t, const char *k, size_t kl, const char *v, size_t vl) {
    if (t->len + kl + vl + 2 > t->cap) {
        t->cap = (t->len + kl + vl + 2) * 2 + 4096;
        t->p = realloc(t->p, t->cap);
        assert_non_null(t->p);
    }
    memcpy(t->p + t->len, k, kl);
    t->len += kl;
    t->p[t->len++] = '=';
    memcpy(t->p + t->len, v, vl);
    t->len += vl;
    t->p[t->len++] = '\n';
}

static void ref_kv(text *t, const char *k, const char *v) {
    text_add(t, k, strlen(k), v, strlen(v));
}

#define VBUF 8192

static void ref_i64(text *t, const char *k, int64_t x) {
    char v[32];
    snprintf(v, sizeof v, "%" PRId64, x);
    ref_kv(t, k, v);
}
static void ref_timef(text *t, const char *k, td_ms x) {
    if (x == TD_MS_MISSING) return;
    char v[64];
    ref_time(v, sizeof v, x);
    ref_kv(t, k, v);
}
static void ref_str(text *t, const char *k, const char *s) {
    if (!s[0]) return;
    char v[VBUF];
    ref_pct(v, sizeof v, s);
    ref_kv(t, k, v);
}
static void ref_name(text *t, const char *k, int x, const char *name) {
    if (x == 0 || !name || !name[0]) return;
    ref_kv(t, k, name);
}

static const char *tri_name(int x) {
    return x == TD_TRI_YES ? "true" : x == TD_TRI_NO ? "false" : NULL;
}

/* td_state_serialize by its documentation: every non-default field, in the
 * order of the scalar table, the channels, hour_hist, touches (oldest
 * first), dedup (oldest first), pos.*, fired.*, timer.*. */
static void ref_flat(const td_state *st, text *t) {
    char v[VBUF], k[512];
    if (st->version) ref_i64(t, "v", st->version);
    ref_str(t, "prospect_id", st->prospect_id);
    ref_str(t, "owner_id", st->owner_id);
    if (st->events) ref_i64(t, "events", st->events);
    ref_name(t, "stage", (int)st->stage, td_stage_name(st->stage));
    ref_timef(t, "stage_changed_at", st->stage_changed_at);
    if (st->tier != TD_INT_MISSING) ref_i64(t, "tier", st->tier);
    ref_str(t, "country", st->country);
    ref_str(t, "sector", st->sector);
    ref_str(t, "timezone", st->timezone);
    ref_name(t, "gift_policy", (int)st->gift_policy, td_gift_policy_name(st->gift_policy));
    if (st->lifetime_value_eur != TD_DEC_MISSING) {
        ref_dec(v, sizeof v, st->lifetime_value_eur);
        ref_kv(t, "lifetime_value_eur", v);
    }
    ref_str(t, "language", st->language);
    ref_timef(t, "first_seen_at", st->first_seen_at);
    ref_timef(t, "last_event_at", st->last_event_at);
    ref_timef(t, "first_touch_at", st->first_touch_at);
    ref_timef(t, "last_touch_at", st->last_touch_at);
    ref_timef(t, "last_inbound_at", st->last_inbound_at);
    if (st->replies) ref_i64(t, "replies", st->replies);
    ref_name(t, "last_reply_sentiment", (int)st->last_reply_sentiment,
             td_sentiment_name(st->last_reply_sentiment));
    if (st->meetings_booked) ref_i64(t, "meetings.booked", st->meetings_booked);
    if (st->meetings_held) ref_i64(t, "meetings.held", st->meetings_held);
    if (st->meetings_cancelled) ref_i64(t, "meetings.cancelled", st->meetings_cancelled);
    if (st->meetings_no_show) ref_i64(t, "meetings.no_show", st->meetings_no_show);
    ref_timef(t, "next_meeting_at", st->next_meeting_at);
    if (st->gift_year) ref_i64(t, "gifts.year", st->gift_year);
    if (st->gifts_year_count) ref_i64(t, "gifts.year_count", st->gifts_year_count);
    if (st->gifts_year_spend_eur) {
        ref_dec(v, sizeof v, st->gifts_year_spend_eur);
        ref_kv(t, "gifts.year_spend_eur", v);
    }
    if (st->gifts_total) ref_i64(t, "gifts.total", st->gifts_total);
    ref_timef(t, "last_gift_at", st->last_gift_at);
    ref_name(t, "gifts.last_kind", (int)st->last_gift_kind, td_gift_kind_name(st->last_gift_kind));

    for (int c = 0; c < TD_CH__COUNT; c++) {
        const td_chan_state *ch = &st->ch[c];
        const char *cn = td_channel_name((td_channel)c);
        const struct {
            const char *name;
            int64_t x;
        } ints[] = {{"sent", ch->sent},
                    {"delivered", ch->delivered},
                    {"opened", ch->opened},
                    {"clicked", ch->clicked},
                    {"replied", ch->replied},
                    {"failed", ch->failed},
                    {"unanswered", ch->unanswered},
                    {"opens_since_reply", ch->opens_since_reply}};
        for (size_t i = 0; i < sizeof ints / sizeof *ints; i++)
            if (ints[i].x) {
                snprintf(k, sizeof k, "%s.%s", cn, ints[i].name);
                ref_i64(t, k, ints[i].x);
            }
        snprintf(k, sizeof k, "%s.last_sent_at", cn);
        ref_timef(t, k, ch->last_sent_at);
        snprintf(k, sizeof k, "%s.last_opened_at", cn);
        ref_timef(t, k, ch->last_opened_at);
        snprintf(k, sizeof k, "%s.last_replied_at", cn);
        ref_timef(t, k, ch->last_replied_at);
        snprintf(k, sizeof k, "%s.blocked", cn);
        ref_name(t, k, (int)ch->blocked, td_block_reason_name(ch->blocked));
        snprintf(k, sizeof k, "%s.consent", cn);
        ref_name(t, k, (int)ch->consent, tri_name((int)ch->consent));
    }

    int n = 0;
    for (int h = 0; h < 24; h++)
        if (st->hour_hist[h])
            n += snprintf(v + n, sizeof v - (size_t)n, "%s%d:%" PRIu32, n ? "," : "", h,
                          st->hour_hist[h]);
    if (n) ref_kv(t, "hour_hist", v);

    /* rings, oldest first: the entry `count` before the head */
    uint32_t cnt = st->touch_count < TD_TOUCH_RING ? st->touch_count : TD_TOUCH_RING;
    n = 0;
    for (uint32_t i = 0; i < cnt; i++) {
        uint32_t at =
            (st->touch_head % TD_TOUCH_RING + TD_TOUCH_RING - st->touch_count + i) % TD_TOUCH_RING;
        if (i) v[n++] = ',';
        n += ref_time(v + n, sizeof v - (size_t)n, st->touch_ring[at]);
    }
    if (cnt) ref_kv(t, "touches", v);
    cnt = st->dedup_count < TD_DEDUP_RING ? st->dedup_count : TD_DEDUP_RING;
    n = 0;
    for (uint32_t i = 0; i < cnt; i++) {
        uint32_t at =
            (st->dedup_head % TD_DEDUP_RING + TD_DEDUP_RING - st->dedup_count + i) % TD_DEDUP_RING;
        n += snprintf(v + n, sizeof v - (size_t)n, "%s%016" PRIx64, i ? "," : "", st->dedup[at]);
    }
    if (cnt) ref_kv(t, "dedup", v);
    for (uint32_t i = 0; i < st->npos && i < TD_POS_MAX; i++) {
        snprintf(k, sizeof k, "pos.%016" PRIx64, st->pos[i].key);
        ref_i64(t, k, st->pos[i].offset);
    }
    for (uint32_t i = 0; i < st->nfired; i++) {
        memcpy(k, "fired.", 6);
        ref_pct(k + 6, sizeof k - 6, st->fired[i].rule);
        ref_time(v, sizeof v, st->fired[i].at);
        ref_kv(t, k, v);
    }
    for (uint32_t i = 0; i < st->ntimers; i++) {
        memcpy(k, "timer.", 6);
        ref_pct(k + 6, sizeof k - 6, st->timers[i].rule);
        n = ref_time(v, sizeof v, st->timers[i].due_at);
        v[n++] = ' ';
        ref_pct(v + n, sizeof v - (size_t)n, st->timers[i].armed_by);
        ref_kv(t, k, v);
    }
}

/* ------------------------------------------------------------ the writers */

static void kvs_text(const td_kvs *kv, text *t) {
    for (size_t i = 0; i < kv->n; i++) {
        const td_kvs_entry *e = &kv->e[i];
        assert_true(e->k + e->kl <= kv->len && e->v + e->vl <= kv->len);
        text_add(t, kv->buf + e->k, e->kl, kv->buf + e->v, e->vl);
    }
}

/* td_state_serialize's callback: key and value NUL-terminated, as always. */
static void cb_text(void *ud, const char *k, size_t kl, const char *v, size_t vl) {
    assert_int_equal(k[kl], '\0');
    assert_int_equal(v[vl], '\0');
    assert_int_equal(strlen(k), kl);
    text_add(ud, k, kl, v, vl);
}

static void text_eq(const text *got, const text *want, const char *what) {
    if (got->len == want->len && (want->len == 0 || memcmp(got->p, want->p, want->len) == 0))
        return;
    size_t i = 0;
    while (i < got->len && i < want->len && got->p[i] == want->p[i])
        i++;
    size_t from = i > 80 ? i - 80 : 0;
    fail_msg("%s differs at byte %zu:\n got: ...%.*s\nwant: ...%.*s", what, i,
             (int)(got->len - from < 200 ? got->len - from : 200), got->p + from,
             (int)(want->len - from < 200 ? want->len - from : 200), want->p + from);
}

/* Both writers against the reference; the capture into `kv` as it is (a
 * reused buffer), then into fresh ones whose buffer and entries are cut
 * short at every size up to the whole form (in-place, then td_kvs_add). */
static void check_state(const td_state *st, td_kvs *kv, bool all_sizes) {
    text want = {0}, got = {0};
    ref_flat(st, &want);
    td_state_serialize(st, cb_text, &got);
    text_eq(&got, &want, "td_state_serialize");
    got.len = 0;
    assert_int_equal(td_kvs_capture(kv, st), TD_OK);
    kvs_text(kv, &got);
    text_eq(&got, &want, "td_kvs_capture");
    size_t total = kv->len, nent = kv->n;
    for (size_t cap = 1; all_sizes && cap <= total + 64; cap += cap < 64 ? 1 : 11) {
        td_kvs k2 = {0};
        k2.buf = malloc(cap);
        k2.cap = cap;
        size_t ecap = 1 + cap % (nent + 1);
        k2.e = malloc(ecap * sizeof *k2.e);
        k2.ecap = ecap;
        assert_non_null(k2.buf);
        assert_non_null(k2.e);
        assert_int_equal(td_kvs_capture(&k2, st), TD_OK);
        got.len = 0;
        kvs_text(&k2, &got);
        text_eq(&got, &want, "td_kvs_capture (short buffer)");
        assert_int_equal(k2.len, total);
        td_kvs_free(&k2);
    }
    free(want.p);
    free(got.p);
}

/* ------------------------------------------------------------ states */

static td_ms rand_time(void) {
    static const td_ms edge[] = {0,
                                 -1,
                                 1,
                                 999,
                                 1000,
                                 -999,
                                 -1000,
                                 -1001,
                                 TD_DAY - 1,
                                 -TD_DAY,
                                 951782400000LL,   /* 2000-02-29 */
                                 951868799999LL,   /* 2000-02-29T23:59:59.999 */
                                 4107542400000LL,  /* 2100-03-01 */
                                 4107455999000LL,  /* 2100-02-28T23:59:59 */
                                 -2203891200000LL, /* 1900-03-01 */
                                 RFC_MIN,
                                 RFC_MIN - 1,
                                 RFC_MIN + 999,
                                 RFC_MAX,
                                 RFC_MAX - 999,
                                 RFC_MAX + 1,
                                 INT64_MAX,
                                 INT64_MIN + 1,
                                 -62198755200000LL, /* year 0 */
                                 1767225599999LL};
    switch (rnd() % 7) {
    case 0:
        return TD_MS_MISSING;
    case 1:
        return edge[rnd() % (sizeof edge / sizeof *edge)];
    case 2:
        return (td_ms)rnd();
    case 3: {
        td_ms t = RFC_MIN + (td_ms)(rnd() % (uint64_t)(RFC_MAX - RFC_MIN + 1));
        return rnd() % 2 ? t - (t % 1000 + 1000) % 1000 : t;
    }
    case 4: /* before 1970 */
        return -(td_ms)(rnd() % 2000000000000ULL);
    default: /* this decade, a few days: dates repeat */
        return 1767225600000LL + (td_ms)(rnd() % 6) * TD_DAY + (td_ms)(rnd() % 86400) * 1000 +
               (rnd() % 2 ? (td_ms)(rnd() % 1000) : 0);
    }
}

static int64_t rand_i64(void) {
    switch (rnd() % 8) {
    case 0:
        return 0;
    case 1:
        return INT64_MIN;
    case 2:
        return INT64_MAX;
    case 3:
        return (int64_t)rnd();
    case 4:
        return (int64_t)(rnd() % 20) - 10;
    case 5: { /* around a power of ten */
        int64_t p = 1;
        for (uint64_t e = rnd() % 19; e; e--)
            p *= 10;
        return (rnd() % 2 ? p : -p) + (int64_t)(rnd() % 3) - 1;
    }
    default:
        return (int64_t)(rnd() % 200);
    }
}

static void rand_str(char *dst, size_t cap) {
    size_t n = rnd() % 4 == 0 ? 0 : (size_t)(rnd() % cap);
    int plain = (int)(rnd() % 101);
    for (size_t i = 0; i < n; i++) {
        int c = (int)(rnd() % 100) < plain
                    ? "abcdefghijklmnopqrstuvwxyz.-_ /:0123456789"[rnd() % 42]
                    : (int)(1 + rnd() % 255);
        dst[i] = (char)c;
    }
    dst[n] = '\0';
}

static void rand_state(td_state *st) {
    td_state_init(st, "p");
    rand_str(st->prospect_id, sizeof st->prospect_id);
    rand_str(st->owner_id, sizeof st->owner_id);
    rand_str(st->country, sizeof st->country);
    rand_str(st->sector, sizeof st->sector);
    rand_str(st->timezone, sizeof st->timezone);
    rand_str(st->language, sizeof st->language);
    st->version = rand_i64();
    st->events = rand_i64();
    st->stage = (td_stage)(rnd() % 12);
    st->tier = rnd() % 3 ? rand_i64() : TD_INT_MISSING;
    st->gift_policy = (td_gift_policy)(rnd() % 6);
    st->lifetime_value_eur = rnd() % 3 ? rand_i64() : TD_DEC_MISSING;
    st->first_seen_at = rand_time();
    st->last_event_at = rand_time();
    st->last_touch_at = rand_time();
    st->last_inbound_at = rand_time();
    st->first_touch_at = rand_time();
    st->stage_changed_at = rand_time();
    st->replies = rand_i64();
    st->last_reply_sentiment = (td_sentiment)(rnd() % 8);
    st->meetings_booked = rand_i64();
    st->meetings_held = rand_i64();
    st->meetings_cancelled = rand_i64();
    st->meetings_no_show = rand_i64();
    st->next_meeting_at = rand_time();
    st->gift_year = rnd() % 2 ? 0 : (int32_t)rnd();
    st->gifts_year_count = rand_i64();
    st->gifts_year_spend_eur = rand_i64();
    st->gifts_total = rand_i64();
    st->last_gift_at = rand_time();
    st->last_gift_kind = (td_gift_kind)(rnd() % 10);
    for (int c = 0; c < TD_CH__COUNT; c++) {
        td_chan_state *ch = &st->ch[c];
        if (rnd() % 3 == 0) continue;
        int64_t *ints[] = {&ch->sent,    &ch->delivered, &ch->opened,     &ch->clicked,
                           &ch->replied, &ch->failed,    &ch->unanswered, &ch->opens_since_reply};
        for (size_t i = 0; i < sizeof ints / sizeof *ints; i++)
            if (rnd() % 2) *ints[i] = rand_i64();
        ch->last_sent_at = rand_time();
        ch->last_opened_at = rand_time();
        ch->last_replied_at = rand_time();
        ch->blocked = (td_block_reason)(rnd() % 6);
        ch->consent = (td_tristate)(rnd() % 5);
    }
    /* rings: empty, partial, full, over-full counts, any head */
    static const uint32_t counts[] = {0, 1, 2, TD_TOUCH_RING - 1, TD_TOUCH_RING, TD_TOUCH_RING + 7};
    st->touch_count = rnd() % 2 ? counts[rnd() % 6] : (uint32_t)(rnd() % (TD_TOUCH_RING + 20));
    st->touch_head = (uint32_t)rnd();
    for (int i = 0; i < TD_TOUCH_RING; i++)
        st->touch_ring[i] = rand_time();
    for (int h = 0; h < 24; h++)
        st->hour_hist[h] = rnd() % 2 ? 0 : (uint32_t)rnd() >> (rnd() % 32);
    st->dedup_count = rnd() % 2 ? (uint32_t)(rnd() % 3) * TD_DEDUP_RING / 2
                                : (uint32_t)(rnd() % (TD_DEDUP_RING + 10));
    st->dedup_head = (uint32_t)rnd();
    for (int i = 0; i < TD_DEDUP_RING; i++)
        st->dedup[i] = rnd() % 8 == 0 ? (rnd() % 2 ? 0 : UINT64_MAX) : rnd() >> (rnd() % 64);
    st->npos = (uint32_t)(rnd() % (TD_POS_MAX + 1));
    for (uint32_t i = 0; i < st->npos; i++) { /* distinct keys (a hash's), in order */
        st->pos[i].key =
            i == 0 && rnd() % 8 == 0 ? 0 : (uint64_t)i * (UINT64_MAX / TD_POS_MAX) + (rnd() >> 4);
        st->pos[i].offset = rand_i64();
    }
    /* fired and timers: instants and armed_by ids shared or not */
    td_ms shared = rand_time();
    if (shared == TD_MS_MISSING) shared = 0;
    char by[TD_ID_MAX + 1], by2[TD_ID_MAX + 1];
    rand_str(by, sizeof by);
    rand_str(by2, sizeof by2);
    int nf = (int)(rnd() % 10), nt = (int)(rnd() % 20);
    for (int i = 0; i < nf + nt; i++) {
        char rule[TD_RULE_ID_MAX + 1];
        rand_str(rule, sizeof rule);
        if (!rule[0]) continue;
        td_ms t = rnd() % 3 ? shared : rand_time();
        if (t == TD_MS_MISSING) t = 0;
        if (i < nf)
            assert_int_equal(td_state_set_fired(st, rule, t), TD_OK);
        else
            assert_int_equal(td_state_arm_timer(st, rule, t, rnd() % 4 ? by : by2), TD_OK);
    }
}

static void test_flat_random(void **unused) {
    (void)unused;
    td_kvs kv = {0}; /* reused, as the daemon does */
    for (int round = 0; round < 2000; round++) {
        td_state st;
        rand_state(&st);
        check_state(&st, &kv, round % 100 == 0);
        td_state_free(&st);
    }
    td_kvs_free(&kv);
}

/* Hand-made states: the fresh one, full rings with wrapped heads, every
 * enum value, the widest values of each kind, long ids needing escapes. */
static void test_flat_edges(void **unused) {
    (void)unused;
    td_kvs kv = {0};
    td_state st;
    td_state_init(&st, "p-1");
    check_state(&st, &kv, true); /* only prospect_id */
    assert_int_equal(kv.n, 1);

    /* full rings, head anywhere; values at their extremes */
    st.version = INT64_MIN;
    st.events = INT64_MAX;
    st.tier = -1;
    st.lifetime_value_eur = INT64_MIN;
    st.gifts_year_spend_eur = INT64_MAX;
    st.gift_year = INT32_MIN;
    st.replies = -9;
    st.meetings_booked = 10;
    st.meetings_held = 99;
    st.meetings_cancelled = 100;
    st.meetings_no_show = 1000000000000000000LL;
    st.touch_count = TD_TOUCH_RING;
    st.dedup_count = TD_DEDUP_RING;
    st.npos = TD_POS_MAX;
    for (int i = 0; i < TD_POS_MAX; i++) {
        st.pos[i].key = (uint64_t)i * 0x1111111111111111ULL;
        st.pos[i].offset = i % 2 ? INT64_MAX - i : INT64_MIN + i;
    }
    for (int h = 0; h < 24; h++)
        st.hour_hist[h] = h % 3 ? UINT32_MAX - (uint32_t)h : (uint32_t)h;
    for (uint32_t head = 0; head < 2 * TD_TOUCH_RING; head += 5) {
        st.touch_head = head;
        st.dedup_head = head;
        for (int i = 0; i < TD_TOUCH_RING; i++)
            st.touch_ring[i] = i % 4 == 0   ? (td_ms)INT64_MIN + i
                               : i % 4 == 1 ? RFC_MAX - i
                               : i % 4 == 2 ? RFC_MIN + i * 1000
                                            : 951782400000LL + (td_ms)head * TD_DAY / 3 + i;
        for (int i = 0; i < TD_DEDUP_RING; i++)
            st.dedup[i] = i % 3 == 0   ? 0
                          : i % 3 == 1 ? UINT64_MAX
                                       : 0xa0b1c2d3e4f50617ULL << (i % 8);
        check_state(&st, &kv, head == 0);
    }
    /* every enum value, in range or not */
    for (int e = 0; e < 16; e++) {
        st.stage = (td_stage)e;
        st.gift_policy = (td_gift_policy)e;
        st.last_reply_sentiment = (td_sentiment)e;
        st.last_gift_kind = (td_gift_kind)e;
        for (int c = 0; c < TD_CH__COUNT; c++) {
            st.ch[c].blocked = (td_block_reason)((e + c) % 6);
            st.ch[c].consent = (td_tristate)((e + c) % 4);
        }
        check_state(&st, &kv, false);
    }
    /* the longest strings, plain and all escapes; many timers of one event */
    memset(st.prospect_id, 'x', TD_ID_MAX);
    st.prospect_id[TD_ID_MAX] = 0;
    memset(st.owner_id, 0xff, TD_ID_MAX);
    st.owner_id[TD_ID_MAX] = 0;
    memset(st.timezone, '%', sizeof st.timezone - 1);
    st.timezone[sizeof st.timezone - 1] = 0;
    strcpy(st.country, "\x7f\x01");
    strcpy(st.language, "0123456789abcde");
    char rule[TD_RULE_ID_MAX + 1], by[TD_ID_MAX + 1];
    memset(by, 0x80, TD_ID_MAX);
    by[TD_ID_MAX] = 0;
    for (int i = 0; i < 40; i++) {
        size_t rl = 1 + (size_t)(i * 7) % TD_RULE_ID_MAX;
        for (size_t j = 0; j < rl; j++)
            rule[j] =
                (char)(i % 5 == 0 ? 1 + (j * 37 + (size_t)i) % 255 : 'a' + (j + (size_t)i) % 26);
        rule[rl] = 0;
        assert_int_equal(
            td_state_arm_timer(&st, rule, i % 7 ? RFC_MAX : INT64_MIN + 1, i % 2 ? by : ""), TD_OK);
        assert_int_equal(td_state_set_fired(&st, rule, i % 3 ? 0 : -1), TD_OK);
    }
    check_state(&st, &kv, true);
    td_state_free(&st);

    /* strings of every length up to 40 with one byte to escape at each
     * position (or none), in fields of every size */
    static const char special[] = {'%', 0x7f, 0x01, 0x1f, (char)0x80, (char)0xff};
    for (size_t len = 0; len <= 40; len++)
        for (size_t at = 0; at <= len; at++) {
            td_state_init(&st, "p");
            char s[64];
            for (size_t i = 0; i < len; i++)
                s[i] = (char)(' ' + (i * 7 + len) % 95);
            for (size_t i = 0; i < len; i++)
                if (s[i] == '%' || s[i] == 0x7f) s[i] = 'q';
            if (at < len) s[at] = special[(len + at) % sizeof special];
            s[len] = 0;
            td_strlcpy(st.owner_id, s, sizeof st.owner_id);
            td_strlcpy(st.language, s, sizeof st.language);
            td_strlcpy(st.sector, s, sizeof st.sector);
            td_strlcpy(st.country, s, sizeof st.country);
            if (len && len <= TD_RULE_ID_MAX) {
                assert_int_equal(td_state_set_fired(&st, s, 5), TD_OK);
                assert_int_equal(td_state_arm_timer(&st, s, 5, s), TD_OK);
            }
            check_state(&st, &kv, false);
            td_state_free(&st);
        }

    /* fired and timers at the missing instant (INT64_MIN: "@-9223...") first */
    td_state_init(&st, "p");
    assert_int_equal(td_state_set_fired(&st, "a", TD_MS_MISSING), TD_OK);
    assert_int_equal(td_state_set_fired(&st, "b", TD_MS_MISSING), TD_OK);
    assert_int_equal(td_state_set_fired(&st, "c", 0), TD_OK);
    assert_int_equal(td_state_arm_timer(&st, "a", TD_MS_MISSING, "e"), TD_OK);
    assert_int_equal(td_state_arm_timer(&st, "b", TD_MS_MISSING, "e"), TD_OK);
    check_state(&st, &kv, true);
    td_state_free(&st);
    td_kvs_free(&kv);
}

/* ------------------------------------------------------------ times */

static void check_memo(td_ms t, td_time_memo *m) {
    char got[TD_TIME_BUF], plain[TD_TIME_BUF], want[64];
    memset(got, 'x', sizeof got);
    size_t n = td_time_format_memo(t, got, m);
    size_t pn = td_time_format(t, plain, sizeof plain);
    int wn = t >= RFC_MIN && t <= RFC_MAX ? ref_time(want, sizeof want, t) : (int)pn;
    if (t < RFC_MIN || t > RFC_MAX) memcpy(want, plain, pn + 1); /* outside: as td_time_format */
    if (n != (size_t)wn || memcmp(got, want, n) || got[n] != '\0')
        fail_msg("td_time_format_memo(%" PRId64 "): \"%.*s\" (%zu), expected \"%s\"", t, (int)n,
                 got, n, want);
    assert_int_equal(pn, n);
    assert_memory_equal(plain, got, n + 1);
}

/* Every day of 0001..9999 through the memo (a new date each time, on some
 * days the same date again), its date part against the reference's digits;
 * whole instants with snprintf on a sample of them. */
static void test_time_memo_days(void **unused) {
    (void)unused;
    td_time_memo m = TD_TIME_MEMO_INIT;
    int y = 1, mo = 1, d = 1;
    static const int len[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    char buf[TD_TIME_BUF], want[16];
    for (int64_t day = 0; RFC_MIN + day * TD_DAY <= RFC_MAX; day++) {
        td_ms t0 = RFC_MIN + day * TD_DAY;
        /* the same date twice in a row (from the memo) on some days */
        for (int k = day % 5 == 0 ? 0 : 1; k < 2; k++) {
            td_ms t = t0 + (k ? (td_ms)(rnd() % (uint64_t)TD_DAY) : TD_DAY - 1);
            size_t n = td_time_format_memo(t, buf, &m);
            assert_true(n == 20 || n == 24);
            want[0] = (char)('0' + y / 1000);
            want[1] = (char)('0' + y / 100 % 10);
            want[2] = (char)('0' + y / 10 % 10);
            want[3] = (char)('0' + y % 10);
            want[4] = '-';
            want[5] = (char)('0' + mo / 10);
            want[6] = (char)('0' + mo % 10);
            want[7] = '-';
            want[8] = (char)('0' + d / 10);
            want[9] = (char)('0' + d % 10);
            want[10] = 'T';
            if (memcmp(buf, want, 11))
                fail_msg("day %" PRId64 ": %.11s, expected %.11s", day, buf, want);
            if (day % 97 == 0 || (y >= 1969 && y <= 2031)) check_memo(t, &m);
        }
        if (++d > len[mo - 1] + (mo == 2 && leap(y))) {
            d = 1;
            if (++mo > 12) {
                mo = 1;
                y++;
            }
        }
    }
    assert_int_equal(y, 10000);
}

/* Instants anywhere, with the dates the memo holds changing under it: the
 * same day again, days 8 apart (one memo slot), whole seconds and not,
 * out of range (td_time_format's clamped output), INT64 extremes. */
static void test_time_memo_mixed(void **unused) {
    (void)unused;
    static const td_ms edge[] = {0,
                                 -1,
                                 1,
                                 999,
                                 1000,
                                 -1000,
                                 -1001,
                                 951782400000LL,
                                 951868799999LL,
                                 RFC_MIN,
                                 RFC_MIN - 1,
                                 RFC_MAX,
                                 RFC_MAX + 1,
                                 INT64_MAX,
                                 INT64_MIN,
                                 INT64_MIN + 1,
                                 INT64_MAX - TD_DAY,
                                 -62198755200000LL};
    td_time_memo m = TD_TIME_MEMO_INIT;
    for (size_t i = 0; i < sizeof edge / sizeof *edge; i++) {
        check_memo(edge[i], &m);
        check_memo(edge[i], &m); /* again: from the memo */
    }
    td_ms base = 1767225600000LL;
    for (int i = 0; i < 150000; i++) {
        td_ms t;
        switch (rnd() % 6) {
        case 0:
            t = (td_ms)rnd();
            break;
        case 1:
            t = RFC_MIN + (td_ms)(rnd() % (uint64_t)(RFC_MAX - RFC_MIN + 1));
            break;
        case 2:
            t = base + (td_ms)(rnd() % 4) * 8 * TD_DAY + (td_ms)(rnd() % (uint64_t)TD_DAY);
            break;
        case 3:
            t = base + (td_ms)(rnd() % 40) * TD_DAY + (td_ms)(rnd() % 86400) * 1000;
            break;
        case 4:
            t = -(td_ms)(rnd() % 4000000000000ULL);
            break;
        default: /* next to an edge, wrapping at the INT64 ends */
            t = (td_ms)((uint64_t)edge[rnd() % (sizeof edge / sizeof *edge)] + rnd() % 3 - 1);
            break;
        }
        if (i % 1000 == 0) {
            td_time_memo fresh = TD_TIME_MEMO_INIT;
            m = fresh;
        }
        check_memo(t, &m);
    }
}

/* ------------------------------------------------------------ positions */

/* The key of (topic, partition) is td_hash64 of "<topic>/<partition>". */
static void test_pos_keys(void **unused) {
    (void)unused;
    static const int32_t parts[] = {0,
                                    1,
                                    9,
                                    10,
                                    11,
                                    99,
                                    100,
                                    101,
                                    999,
                                    1000,
                                    12345,
                                    99999,
                                    100000,
                                    2147483647,
                                    -1,
                                    -9,
                                    -10,
                                    -100,
                                    -2147483647 - 1};
    static const char *const topics[] = {"", "t", "touchd.events", "a/b", "x%y\x01"};
    for (size_t ti = 0; ti < sizeof topics / sizeof *topics; ti++)
        for (size_t i = 0; i < sizeof parts / sizeof *parts; i++) {
            td_state st;
            td_state_init(&st, "p");
            td_state_pos_set(&st, topics[ti], parts[i], 42);
            char s[128];
            int n = snprintf(s, sizeof s, "%s/%" PRId32, topics[ti], parts[i]);
            assert_int_equal(st.npos, 1);
            assert_true(st.pos[0].key == td_hash64(s, (size_t)n, TD_HASH_SEED));
            assert_int_equal(td_state_pos_get(&st, topics[ti], parts[i]), 42);
            if (parts[i] != 0)
                assert_int_equal(td_state_pos_get(&st, topics[ti], -parts[i] - 1), -1);
            td_state_free(&st);
        }
}

/* ------------------------------------------------------------ diff */

typedef struct report {
    text t;
    size_t sets, dels;
} report;

/* What a diff reported: "set=<key>" and "val=<value>" lines, "del=<key>". */
static void on_set(void *ud, const char *k, size_t kl, const char *v, size_t vl) {
    report *r = ud;
    text_add(&r->t, "set", 3, k, kl);
    text_add(&r->t, "val", 3, v, vl);
    r->sets++;
}
static void on_del(void *ud, const char *k, size_t kl) {
    report *r = ud;
    text_add(&r->t, "del", 3, k, kl);
    r->dels++;
}

/* By definition: each key of `now` looked for in all of `before`. */
static void ref_diff(const td_kvs *b, const td_kvs *a, report *r) {
    for (size_t i = 0; i < a->n; i++) {
        size_t j = 0;
        for (; j < b->n; j++)
            if (b->e[j].kl == a->e[i].kl &&
                !memcmp(b->buf + b->e[j].k, a->buf + a->e[i].k, a->e[i].kl))
                break;
        if (j == b->n || b->e[j].vl != a->e[i].vl ||
            memcmp(b->buf + b->e[j].v, a->buf + a->e[i].v, a->e[i].vl))
            on_set(r, a->buf + a->e[i].k, a->e[i].kl, a->buf + a->e[i].v, a->e[i].vl);
    }
    for (size_t j = 0; j < b->n; j++) {
        size_t i = 0;
        for (; i < a->n; i++)
            if (b->e[j].kl == a->e[i].kl &&
                !memcmp(b->buf + b->e[j].k, a->buf + a->e[i].k, a->e[i].kl))
                break;
        if (i == a->n) on_del(r, b->buf + b->e[j].k, b->e[j].kl);
    }
}

static void check_diff(const td_kvs *b, const td_kvs *a) {
    report got = {0}, want = {0};
    assert_int_equal(td_kvs_diff(b, a, on_set, on_del, &got), TD_OK);
    ref_diff(b, a, &want);
    text_eq(&got.t, &want.t, "td_kvs_diff");
    assert_int_equal(got.sets, want.sets);
    assert_int_equal(got.dels, want.dels);
    free(got.t.p);
    free(want.t.p);
}

/* A td_kvs whose values are not right after their keys (entries in
 * another order than the bytes): the diff may not compare a pair at once. */
static void scatter(const td_kvs *in, td_kvs *out) {
    for (size_t i = in->n; i-- > 0;) { /* values first, backwards */
        char tmp[8192];
        memcpy(tmp, in->buf + in->e[i].v, in->e[i].vl);
        td_kvs_add(out, "", 0, tmp, in->e[i].vl);
    }
    for (size_t i = 0; i < in->n; i++) {
        td_kvs_add(out, in->buf + in->e[i].k, in->e[i].kl, "", 0);
    }
    /* entry i: key from the second half, value from the first */
    size_t n = in->n;
    for (size_t i = 0; i < n; i++) {
        out->e[i].k = out->e[n + i].k;
        out->e[i].kl = out->e[n + i].kl;
        out->e[i].v = out->e[n - 1 - i].v;
        out->e[i].vl = out->e[n - 1 - i].vl;
    }
    out->n = n;
}

/* Successive states of one prospect (timers armed and fired, fields set
 * and cleared) and unrelated random states, captured and diffed both
 * ways, as is and with scattered values, shuffled or not. */
static void test_diff_states(void **unused) {
    (void)unused;
    td_state prev, cur;
    rand_state(&prev);
    td_kvs kb = {0}, ka = {0};
    for (int round = 0; round < 1500; round++) {
        if (round % 3 == 0) {
            rand_state(&cur);
        } else { /* a step: some fields change, a timer comes or goes */
            assert_int_equal(td_state_copy(&cur, &prev), TD_OK);
            if (cur.version < INT64_MAX) cur.version++;
            if (cur.events < INT64_MAX) cur.events += (int64_t)(rnd() % 2);
            cur.ch[rnd() % TD_CH__COUNT].sent = rnd() % 3 ? (int64_t)(rnd() % 5) : 0;
            cur.last_event_at = rand_time();
            char rule[16];
            snprintf(rule, sizeof rule, "r.%02d", (int)(rnd() % 30));
            if (rnd() % 2)
                assert_int_equal(td_state_arm_timer(&cur, rule, rand_time() & 0xffffffffff, "e-1"),
                                 TD_OK);
            else
                td_state_disarm_timer(&cur, rule);
            if (rnd() % 4 == 0) td_state_remember(&cur, rule);
        }
        assert_int_equal(td_kvs_capture(&kb, &prev), TD_OK);
        assert_int_equal(td_kvs_capture(&ka, &cur), TD_OK);
        check_diff(&kb, &ka);
        check_diff(&ka, &kb);
        check_diff(&ka, &ka);
        if (round % 10 == 0) {
            td_kvs sb = {0}, sa = {0};
            scatter(&kb, &sb);
            scatter(&ka, &sa);
            check_diff(&sb, &sa);
            check_diff(&kb, &sa);
            check_diff(&sb, &ka);
            td_kvs_free(&sb);
            td_kvs_free(&sa);
        }
        td_state_free(&prev);
        prev = cur;
    }
    td_state_free(&prev);
    td_kvs_free(&kb);
    td_kvs_free(&ka);
}

/* Keys added after every key of `before` matched, inserted and deleted in
 * the middle, lists in reverse order, empty ones, keys of every length up
 * to past the 16-byte comparisons. */
static void test_diff_shapes(void **unused) {
    (void)unused;
    for (int round = 0; round < 4000; round++) {
        td_kvs a = {0}, b = {0};
        int n = (int)(rnd() % (round % 20 == 0 ? 400 : 40));
        int order = (int)(rnd() % 3); /* 0: same order, 1: b reversed, 2: b rotated */
        int rot = n ? (int)(rnd() % (uint64_t)n) : 0;
        char k[200], v[200];
        for (int pass = 0; pass < 2; pass++)
            for (int j = 0; j < n; j++) {
                int i = pass == 0 || order == 0 ? j : order == 1 ? n - 1 - j : (j + rot) % n;
                /* key i: lengths 1..90, sharing prefixes and suffixes */
                size_t kl = 1 + (size_t)(i * 13) % 90;
                for (size_t c = 0; c < kl; c++)
                    k[c] = (char)('a' + (c == kl / 2 ? (size_t)(i % 26) : c % 3));
                k[kl - 1] = (char)('A' + i % 26);
                if (kl > 2) k[0] = (char)('0' + i / 26 % 10);
                if (kl > 3) k[1] = (char)('0' + i / 260 % 10);
                int p = (int)(rnd() % 100);
                bool in = pass == 0 ? p < 80 : p < 85;
                if (!in) continue;
                size_t vl = (size_t)(rnd() % 4 == 0 ? rnd() % 150 : rnd() % 20);
                for (size_t c = 0; c < vl; c++)
                    v[c] = (char)('x' + rnd() % (pass + 1));
                td_kvs_add(pass == 0 ? &a : &b, k, kl, v, vl);
            }
        check_diff(&a, &b);
        check_diff(&b, &a);
        td_kvs_free(&a);
        td_kvs_free(&b);
    }
    /* every key of `before` first, then new ones (nothing left to match) */
    td_kvs a = {0}, b = {0};
    td_kvs_add(&a, "v", 1, "1", 1);
    td_kvs_add(&a, "events", 6, "1", 1);
    td_kvs_add(&b, "v", 1, "2", 1);
    td_kvs_add(&b, "events", 6, "1", 1);
    td_kvs_add(&b, "timer.x", 7, "2026-01-01T00:00:00Z e-1", 24);
    td_kvs_add(&b, "timer.y", 7, "2026-01-01T00:00:00Z e-1", 24);
    check_diff(&a, &b);
    check_diff(&b, &a);
    td_kvs e = {0};
    check_diff(&e, &b);
    check_diff(&b, &e);
    check_diff(&e, &e);
    td_kvs_free(&a);
    td_kvs_free(&b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_flat_edges),      cmocka_unit_test(test_flat_random),
        cmocka_unit_test(test_time_memo_mixed), cmocka_unit_test(test_time_memo_days),
        cmocka_unit_test(test_pos_keys),        cmocka_unit_test(test_diff_states),
        cmocka_unit_test(test_diff_shapes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
