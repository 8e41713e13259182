/*
 * td_state_flat.c - the flat form of a td_state: the Redis hash fields it is
 * stored as (td_state_serialize, td_state_serialize_kvs), the parser of one
 * field back into a state (td_state_set_field) and the diff of two flat forms
 * (td_state_diff). The reducer is td_state.c, the schema td_state_schema.c.
 *
 * Flat form: one ASCII key/value per non-default field (see td_flat_top and
 * td_flat_chan for the names). Strings are percent-encoded: bytes below 0x20,
 * 0x7f and above, and '%' itself become %XX; everything else (space included)
 * stays as is, so `redis-cli HGETALL` stays readable and every value is
 * unambiguous. Times are RFC 3339 UTC, or "@<ms>" for instants outside years
 * 1..9999 (which RFC 3339 cannot write). Decimals are "12.5" (up to four
 * fractional digits). Key order in Redis is not preserved, so every field is
 * independent of the others: lists (touches, dedup, hour_hist) are one value
 * each, and tables (pos.*, fired.*, timer.*) are sorted on insertion.
 *
 * Owns: nothing; it writes into the caller's td_kvs or callback and reads
 * into the caller's td_state.
 *
 * File-local functions are prefixed sf_ (state flat).
 *
 * @locality any thread; a td_state is used by one thread at a time.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "td_kvs.h"
#include "td_state_internal.h"

enum {
    TD_FK_I64,
    TD_FK_I32,
    TD_FK_TIME,
    TD_FK_DEC,
    TD_FK_STR,
    TD_FK_STAGE,
    TD_FK_GP,
    TD_FK_SENT,
    TD_FK_GK,
    TD_FK_BLOCK,
    TD_FK_TRI
};

/* One scalar field of the flat form: key, kind, where it lives, its default
 * (for I64/I32/DEC; times default to missing, strings to "", enums to 0). */
typedef struct td_flat {
    char key[32]; /* NUL-padded: the writer copies all 32 bytes at once */
    uint8_t klen; /* strlen(key): K_ */
    uint8_t kind;
    size_t off;
    size_t cap; /* strings: array size */
    int64_t def;
} td_flat;

#define SZ_(f) sizeof(((td_state *)0)->f)
#define K_(k) k, sizeof(k) - 1

static const td_flat td_flat_top[] = {
    {K_("v"), TD_FK_I64, S_(version), 0, 0},
    {K_("prospect_id"), TD_FK_STR, S_(prospect_id), SZ_(prospect_id), 0},
    {K_("owner_id"), TD_FK_STR, S_(owner_id), SZ_(owner_id), 0},
    {K_("events"), TD_FK_I64, S_(events), 0, 0},
    {K_("stage"), TD_FK_STAGE, S_(stage), 0, 0},
    {K_("stage_changed_at"), TD_FK_TIME, S_(stage_changed_at), 0, 0},
    {K_("tier"), TD_FK_I64, S_(tier), 0, TD_INT_MISSING},
    {K_("country"), TD_FK_STR, S_(country), SZ_(country), 0},
    {K_("sector"), TD_FK_STR, S_(sector), SZ_(sector), 0},
    {K_("timezone"), TD_FK_STR, S_(timezone), SZ_(timezone), 0},
    {K_("gift_policy"), TD_FK_GP, S_(gift_policy), 0, 0},
    {K_("lifetime_value_eur"), TD_FK_DEC, S_(lifetime_value_eur), 0, TD_DEC_MISSING},
    {K_("language"), TD_FK_STR, S_(language), SZ_(language), 0},
    {K_("first_seen_at"), TD_FK_TIME, S_(first_seen_at), 0, 0},
    {K_("last_event_at"), TD_FK_TIME, S_(last_event_at), 0, 0},
    {K_("clock"), TD_FK_TIME, S_(clock), 0, 0},
    {K_("plan_version"), TD_FK_I64, S_(plan_version), 0, 0},
    {K_("first_touch_at"), TD_FK_TIME, S_(first_touch_at), 0, 0},
    {K_("last_touch_at"), TD_FK_TIME, S_(last_touch_at), 0, 0},
    {K_("last_inbound_at"), TD_FK_TIME, S_(last_inbound_at), 0, 0},
    {K_("replies"), TD_FK_I64, S_(replies), 0, 0},
    {K_("last_reply_sentiment"), TD_FK_SENT, S_(last_reply_sentiment), 0, 0},
    {K_("meetings.booked"), TD_FK_I64, S_(meetings_booked), 0, 0},
    {K_("meetings.held"), TD_FK_I64, S_(meetings_held), 0, 0},
    {K_("meetings.cancelled"), TD_FK_I64, S_(meetings_cancelled), 0, 0},
    {K_("meetings.no_show"), TD_FK_I64, S_(meetings_no_show), 0, 0},
    {K_("next_meeting_at"), TD_FK_TIME, S_(next_meeting_at), 0, 0},
    {K_("gifts.year"), TD_FK_I32, S_(gift_year), 0, 0},
    {K_("gifts.year_count"), TD_FK_I64, S_(gifts_year_count), 0, 0},
    {K_("gifts.year_spend_eur"), TD_FK_DEC, S_(gifts_year_spend_eur), 0, 0},
    {K_("gifts.total"), TD_FK_I64, S_(gifts_total), 0, 0},
    {K_("last_gift_at"), TD_FK_TIME, S_(last_gift_at), 0, 0},
    {K_("gifts.last_kind"), TD_FK_GK, S_(last_gift_kind), 0, 0},
    {K_("gifts.rec_year"), TD_FK_I32, S_(gift_rec_year), 0, 0},
    {K_("gifts.recommended"), TD_FK_I64, S_(gift_recs_year), 0, 0},
    {K_("feedback.acted"), TD_FK_I64, S_(fb_acted), 0, 0},
    {K_("feedback.dismissed"), TD_FK_I64, S_(fb_dismissed), 0, 0},
    {K_("feedback.snoozed"), TD_FK_I64, S_(fb_snoozed), 0, 0},
    {K_("last_acted_at"), TD_FK_TIME, S_(last_acted_at), 0, 0},
};

/* Per channel, as "<channel>.<key>". */
static const td_flat td_flat_chan[] = {
    {K_("sent"), TD_FK_I64, C_(sent), 0, 0},
    {K_("delivered"), TD_FK_I64, C_(delivered), 0, 0},
    {K_("opened"), TD_FK_I64, C_(opened), 0, 0},
    {K_("clicked"), TD_FK_I64, C_(clicked), 0, 0},
    {K_("replied"), TD_FK_I64, C_(replied), 0, 0},
    {K_("failed"), TD_FK_I64, C_(failed), 0, 0},
    {K_("unanswered"), TD_FK_I64, C_(unanswered), 0, 0},
    {K_("opens_since_reply"), TD_FK_I64, C_(opens_since_reply), 0, 0},
    {K_("last_sent_at"), TD_FK_TIME, C_(last_sent_at), 0, 0},
    {K_("last_opened_at"), TD_FK_TIME, C_(last_opened_at), 0, 0},
    {K_("last_replied_at"), TD_FK_TIME, C_(last_replied_at), 0, 0},
    {K_("blocked"), TD_FK_BLOCK, C_(blocked), 0, 0},
    {K_("consent"), TD_FK_TRI, C_(consent), 0, 0},
};

/*
 * The writers of the flat form. It is written for every prospect of every
 * batch, so each field is formatted in place, straight into the td_kvs of
 * td_kvs_capture when it has room (sf_fw_begin), without snprintf or an
 * intermediate copy; the writers below may store a few bytes past what
 * they return (the room asked for covers it).
 */

#define TD_FW_INLINE static inline __attribute__((always_inline))

/* "00".."99": two digits per table read. */
const char td_state_dig2[200] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

static const uint64_t td_pow10[20] = {1ULL,
                                      10ULL,
                                      100ULL,
                                      1000ULL,
                                      10000ULL,
                                      100000ULL,
                                      1000000ULL,
                                      10000000ULL,
                                      100000000ULL,
                                      1000000000ULL,
                                      10000000000ULL,
                                      100000000000ULL,
                                      1000000000000ULL,
                                      10000000000000ULL,
                                      100000000000000ULL,
                                      1000000000000000ULL,
                                      10000000000000000ULL,
                                      100000000000000000ULL,
                                      1000000000000000000ULL,
                                      10000000000000000000ULL};

/* td_w_u64 for v >= 100. */
__attribute__((noinline)) size_t td_state_w_u64_long(char *p, uint64_t v) {
    size_t n = 3;
    while (n < 20 && v >= td_pow10[n])
        n++;
    char *e = p + n;
    while (v >= 100) {
        uint64_t q = v / 100;
        e -= 2;
        memcpy(e, td_state_dig2 + 2 * (v - q * 100), 2);
        v = q;
    }
    if (v >= 10)
        memcpy(e - 2, td_state_dig2 + 2 * v, 2);
    else
        e[-1] = (char)('0' + v);
    return n;
}

/* td_fmt_i64's digits (no NUL): up to 20 bytes. */
static inline size_t sf_w_i64(char *p, int64_t v) {
    if (v >= 0) return td_w_u64(p, (uint64_t)v);
    p[0] = '-';
    return 1 + td_w_u64(p + 1, (uint64_t)0 - (uint64_t)v);
}

/* The 8 lower-case hex digits of x, first digit in the lowest byte: each
 * nibble spread to a byte, then '0' + d or 'a' + d - 10 for all at once. */
static inline uint64_t sf_hex8(uint32_t x) {
    uint64_t v = x;
    v = (v | v << 16) & 0x0000FFFF0000FFFFULL;
    v = (v | v << 8) & 0x00FF00FF00FF00FFULL;
    v = (v | v << 4) & 0x0F0F0F0F0F0F0F0FULL; /* byte j = nibble j (j = 0: lowest) */
    uint64_t letter = (v + 0x0606060606060606ULL) >> 4 & 0x0101010101010101ULL; /* d >= 10 */
    v += 0x3030303030303030ULL + letter * ('a' - '0' - 10);
    return __builtin_bswap64(v); /* nibble 7 first */
}

/* v as 16 hex digits, zero-padded (no NUL). */
static inline void sf_w_hex16(char *p, uint64_t v) {
    uint64_t hi = sf_hex8((uint32_t)(v >> 32)), lo = sf_hex8((uint32_t)v);
    memcpy(p, &hi, 8);
    memcpy(p + 8, &lo, 8);
}

/* Instants RFC 3339 can write (years 0001..9999); others are "@<ms>". */
#define TD_RFC_MIN ((td_ms)-62135596800000LL)
#define TD_RFC_MAX ((td_ms)253402300799999LL)

/* An instant outside years 1..9999: "@<ms>" (rare: out of line). */
static __attribute__((noinline)) size_t sf_w_at(char *p, td_ms t) {
    p[0] = '@';
    return 1 + sf_w_i64(p + 1, t);
}

/* A time: RFC 3339 through the date memo, or "@<ms>". Stores up to
 * TD_TIME_BUF bytes; @returns its length (up to 24). */
static inline size_t sf_w_time(char *p, td_ms t, td_time_memo *m) {
    if (t >= TD_RFC_MIN && t <= TD_RFC_MAX) return td_time_format_memo(t, p, m);
    return sf_w_at(p, t);
}

/* An instant often repeated (rules fired by one step, timers armed by one
 * event): the last one written is kept whole in memo[TD_TIME_BUF] (*mt; its
 * length *mn). Stores TD_TIME_BUF bytes. */
static inline size_t sf_w_time_rep(char *p, td_ms t, td_ms *mt, char *memo, size_t *mn,
                                   td_time_memo *m) {
    if (t != *mt || t == TD_MS_MISSING) {
        *mn = sf_w_time(memo, t, m);
        *mt = t;
    }
    memcpy(p, memo, TD_TIME_BUF);
    return *mn;
}

/* "12.5", "-0.0001", "7": the integer part, then up to four fractional
 * digits without trailing zeros; up to 26 bytes. */
static __attribute__((noinline)) size_t sf_w_dec(char *p, td_dec d) {
    uint64_t m = d < 0 ? (uint64_t)0 - (uint64_t)d : (uint64_t)d;
    uint64_t ip = m / TD_DEC_SCALE;
    unsigned fp = (unsigned)(m % TD_DEC_SCALE);
    size_t n = 0;
    if (d < 0) p[n++] = '-';
    n += td_w_u64(p + n, ip);
    if (fp) {
        p[n++] = '.';
        for (unsigned div = TD_DEC_SCALE / 10; fp; div /= 10) {
            p[n++] = (char)('0' + fp / div);
            fp %= div;
        }
    }
    return n;
}

/* Bytes that stay as they are in the flat form: 0x20..0x7e but '%'. */
#define TD_PCT_PLAIN(c) ((c) >= 0x20 && (c) < 0x7f && (c) != '%')

/* Non-zero when one of the 8 bytes of x is not TD_PCT_PLAIN: per byte b
 * (x7 = b & 0x7f, so no sum carries into the next byte), b >= 0x80 is its
 * top bit, b < 0x20 is x7 + 0x60 < 0x80, b == 0x7f is x7 + 0x01 >= 0x80 and
 * b == '%' is (x7 ^ 0x25) + 0x7f < 0x80. */
static inline uint64_t sf_pct_special8(uint64_t x) {
    const uint64_t k01 = 0x0101010101010101ULL, k80 = 0x8080808080808080ULL;
    uint64_t x7 = x & ~k80;
    return (x | ~(x7 + 0x60 * k01) | (x7 + k01) | ~((x7 ^ 0x25 * k01) + 0x7f * k01)) & k80;
}

#ifdef __SSE2__
/* Non-zero when one of the 16 bytes at s is not TD_PCT_PLAIN: below 0x20 or
 * from 0x80 (a signed compare catches both), 0x7f, or '%'. */
static inline int sf_pct_special16(const char *s) {
    __m128i x = _mm_loadu_si128((const __m128i *)(const void *)s);
    __m128i bad = _mm_or_si128(_mm_cmplt_epi8(x, _mm_set1_epi8(0x20)),
                               _mm_or_si128(_mm_cmpeq_epi8(x, _mm_set1_epi8(0x7f)),
                                            _mm_cmpeq_epi8(x, _mm_set1_epi8('%'))));
    return _mm_movemask_epi8(bad);
}
#endif

/* Percent-encodes s[0..len) byte by byte from i on (out holds s[0..i) as is). */
static size_t sf_w_pct_from(char *out, const char *s, size_t len, size_t i) {
    static const char hex[] = "0123456789ABCDEF";
    size_t n = i;
    for (; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (TD_PCT_PLAIN(c)) {
            out[n++] = (char)c;
        } else {
            out[n++] = '%';
            out[n++] = hex[c >> 4];
            out[n++] = hex[c & 15];
        }
    }
    return n;
}

/* Percent-encodes s[0..len) into out (3 * len bytes; no NUL). Ids, zones
 * and rule ids are plain ASCII almost always: whole blocks of 16 (or 8)
 * plain bytes are copied as they are, the last one overlapping, and only
 * from a block with another byte on is the rest encoded byte by byte.
 * @returns the length written. */
TD_FW_INLINE size_t sf_w_pct_inl(char *out, const char *s, size_t len) {
    size_t i = 0;
#ifdef __SSE2__
    if (len >= 16) {
        for (; i + 16 <= len; i += 16) {
            if (sf_pct_special16(s + i)) return sf_w_pct_from(out, s, len, i);
            memcpy(out + i, s + i, 16);
        }
        if (i < len) {
            if (sf_pct_special16(s + len - 16)) return sf_w_pct_from(out, s, len, i);
            memcpy(out + len - 16, s + len - 16, 16);
        }
        return len;
    }
#endif
    if (len >= 8) {
        uint64_t x, y;
        memcpy(&y, s + len - 8, 8);
        for (; i + 8 <= len; i += 8) {
            memcpy(&x, s + i, 8);
            if (sf_pct_special8(x)) return sf_w_pct_from(out, s, len, i);
            memcpy(out + i, &x, 8);
        }
        if (i < len) {
            /* every word so far plain (out == s up to i): the last 8 bytes, overlapping */
            if (sf_pct_special8(y)) return sf_w_pct_from(out, s, len, i);
            memcpy(out + len - 8, &y, 8);
        }
        return len;
    }
    if (len >= 2) {
        /* two overlapping halves, the rest of the word plain ('a') */
        uint64_t x = 0x6161616161616161ULL;
        if (len >= 4) {
            uint32_t a, b;
            memcpy(&a, s, 4);
            memcpy(&b, s + len - 4, 4);
            x = (uint64_t)a | (uint64_t)b << 32;
            if (sf_pct_special8(x)) return sf_w_pct_from(out, s, len, 0);
            memcpy(out, &a, 4);
            memcpy(out + len - 4, &b, 4);
        } else {
            uint16_t a, b;
            memcpy(&a, s, 2);
            memcpy(&b, s + len - 2, 2);
            x = (x & ~0xFFFFFFFFULL) | a | (uint32_t)b << 16;
            if (sf_pct_special8(x)) return sf_w_pct_from(out, s, len, 0);
            memcpy(out, &a, 2);
            memcpy(out + len - 2, &b, 2);
        }
        return len;
    }
    return sf_w_pct_from(out, s, len, 0);
}

/* The same, out of line (the unrolled scalar fields: less code). */
static __attribute__((noinline)) size_t sf_w_pct(char *out, const char *s, size_t len) {
    return sf_w_pct_inl(out, s, len);
}

static int sf_hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decodes into dst (cap bytes incl. NUL). @returns TD_OK or TD_ERR (bad
 * escape, a NUL byte, or too long). */
static int sf_pct_dec(const char *v, size_t n, char *dst, size_t cap) {
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c == '%') {
            if (i + 2 >= n) return TD_ERR;
            int h = sf_hexval(v[i + 1]), l = sf_hexval(v[i + 2]);
            if (h < 0 || l < 0) return TD_ERR;
            c = (unsigned char)(h << 4 | l);
            i += 2;
        }
        if (c == 0 || o + 1 >= cap) return TD_ERR;
        dst[o++] = (char)c;
    }
    dst[o] = 0;
    return TD_OK;
}

/* Decimal: -?[0-9]+(\.[0-9]{1,4})? within the td_dec range. */
static int sf_parse_dec(const char *v, size_t n, td_dec *out) {
    size_t i = 0;
    bool neg = false;
    if (n && v[0] == '-') {
        neg = true;
        i = 1;
    }
    uint64_t ip = 0, fp = 0, lim = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    size_t start = i;
    for (; i < n && v[i] >= '0' && v[i] <= '9'; i++) {
        unsigned d = (unsigned)(v[i] - '0');
        if (ip > (UINT64_MAX - d) / 10) return TD_ERR;
        ip = ip * 10 + d;
    }
    if (i == start) return TD_ERR;
    if (i < n) {
        if (v[i] != '.') return TD_ERR;
        i++;
        size_t fs = i;
        for (; i < n && v[i] >= '0' && v[i] <= '9'; i++)
            fp = fp * 10 + (unsigned)(v[i] - '0');
        size_t fl = i - fs;
        if (i != n || fl == 0 || fl > 4) return TD_ERR;
        for (; fl < 4; fl++)
            fp *= 10;
    }
    if (ip > lim / TD_DEC_SCALE) return TD_ERR;
    uint64_t m = ip * TD_DEC_SCALE;
    if (fp > lim - m) return TD_ERR;
    m += fp;
    *out = neg ? (m == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)m) : (int64_t)m;
    return TD_OK;
}

static int sf_parse_time(const char *v, size_t n, td_ms *out) {
    if (n && v[0] == '@') return td_parse_i64(v + 1, n - 1, out);
    if (n == 0 || n > 64) return TD_ERR;
    return td_time_parse(v, n, out);
}

/*
 * Where the pairs go: into a td_kvs (capture), formatted in place when it
 * has room; otherwise (a full buffer, or td_state_serialize's callback) in
 * `scratch`, then td_kvs_add or the callback. One field never needs more
 * than TD_FW_SCRATCH bytes (the touch list: 64 times of up to 25 bytes).
 * While writing, the td_kvs's fields live here, in registers: the writer
 * is always inlined and its address never escapes.
 */
#define TD_FW_SCRATCH 2048
typedef struct td_fw {
    char *buf;       /* kv->buf */
    size_t len;      /* kv->len */
    size_t lim;      /* kv->cap, or 0 when in-place writing is off (oom, 32-bit) */
    td_kvs_entry *e; /* kv->e */
    size_t n, ecap;  /* kv->n, kv->ecap */
    td_kvs *kv;      /* capture: the flat form goes there */
    td_kv_fn fn;     /* otherwise */
    void *ud;
    char *scratch; /* TD_FW_SCRATCH + 2 bytes */
} td_fw;

TD_FW_INLINE void sf_fw_load(td_fw *w) {
    td_kvs *kv = w->kv;
    w->buf = kv->buf;
    w->len = kv->len;
    w->lim = kv->oom || kv->cap > UINT32_MAX ? 0 : kv->cap;
    w->e = kv->e;
    w->n = kv->n;
    w->ecap = kv->ecap;
}

/* Where the next pair (key then value, up to `need` bytes stored) is
 * written. `kvmode` is a constant: each mode has its own copy. */
TD_FW_INLINE char *sf_fw_begin(td_fw *w, size_t need, bool kvmode) {
    if (kvmode && w->len + need <= w->lim) return w->buf + w->len;
    return w->scratch;
}

/* The slow ends of a pair in a td_kvs: formatted in scratch (td_kvs_add
 * grows the buffer), or in place when the entries are full. */
static __attribute__((noinline)) void sf_fw_kv_slow(td_kvs *kv, size_t len, size_t n,
                                                    const char *scratch, bool in_place, size_t kl,
                                                    size_t vl) {
    kv->len = len;
    kv->n = n;
    if (in_place)
        td_kvs_commit(kv, kl, vl);
    else
        td_kvs_add(kv, scratch, kl, scratch + kl, vl);
}

/* The callback's pair, formatted in scratch: key and value NUL-terminated. */
static void sf_fw_call(td_kv_fn fn, void *ud, char *p, size_t kl, size_t vl) {
    memmove(p + kl + 1, p + kl, vl);
    p[kl] = '\0';
    p[kl + 1 + vl] = '\0';
    fn(ud, p, kl, p + kl + 1, vl);
}

/* The pair at p (from sf_fw_begin) is complete: kl key bytes, vl value bytes. */
TD_FW_INLINE void sf_fw_end(td_fw *w, char *p, size_t kl, size_t vl, bool kvmode) {
    if (!kvmode) {
        sf_fw_call(w->fn, w->ud, p, kl, vl);
        return;
    }
    if (p != w->scratch && w->n < w->ecap) {
        w->len = td_kvs_entry_set(&w->e[w->n++], w->len, kl, vl);
        return;
    }
    sf_fw_kv_slow(w->kv, w->len, w->n, w->scratch, p != w->scratch, kl, vl);
    sf_fw_load(w);
}

/* The end of the writing: the td_kvs takes its fields back. */
TD_FW_INLINE void sf_fw_done(td_fw *w, bool kvmode) {
    if (!kvmode) return;
    w->kv->len = w->len;
    w->kv->n = w->n;
}

/* A scalar field at p: the key, prefix[0..pl) (a channel's "<channel>.",
 * or empty) then f->key, 16 and 32 bytes at once; then the value: x, or
 * the string s (sl bytes: percent-encoded, or an enum's name as is).
 * Stores up to pl + 32 + TD_FW_VMAX(sl) bytes. @returns the value's length
 * (*kl the key's). */
#define TD_FW_VMAX(sl) (3 * (sl) > 32 ? 3 * (sl) : 32)
TD_FW_INLINE size_t sf_fw_scalar_at(char *p, const td_flat *f, const char *prefix, size_t pl,
                                    int64_t x, const char *s, size_t sl, td_time_memo *tm,
                                    size_t *kl) {
    if (pl) {
        if (pl <= 16)
            memcpy(p, prefix, 16);
        else
            memcpy(p, prefix, pl);
    }
    memcpy(p + pl, f->key, 32);
    *kl = pl + f->klen;
    char *v = p + *kl;
    switch (f->kind) {
    case TD_FK_I64:
    case TD_FK_I32:
        return sf_w_i64(v, x);
    case TD_FK_DEC:
        return sf_w_dec(v, x);
    case TD_FK_TIME:
        return sf_w_time(v, x, tm);
    case TD_FK_STR:
        return sf_w_pct(v, s, sl);
    default:
        memcpy(v, s, sl);
        return sl;
    }
}

/* A scalar field without room in the td_kvs (kv), or for the callback
 * (fn, ud): formatted in scratch, then td_kvs_add or the callback. */
static __attribute__((noinline)) void sf_fw_scalar_slow(td_kvs *kv, td_kv_fn fn, void *ud,
                                                        const td_flat *f, const char *prefix,
                                                        size_t pl, int64_t x, const char *s,
                                                        size_t sl, td_time_memo *tm) {
    char scratch[64 + 32 + 3 * (TD_ID_MAX + 1) + 2];
    if (pl > 64 || sl > TD_ID_MAX + 1) return; /* not reached: short names, bounded strings */
    size_t kl, vl = sf_fw_scalar_at(scratch, f, prefix, pl, x, s, sl, tm, &kl);
    if (kv)
        td_kvs_add(kv, scratch, kl, scratch + kl, vl);
    else
        sf_fw_call(fn, ud, scratch, kl, vl);
}

/* One scalar descriptor at base, if it differs from its default. Unrolled
 * (kvmode), f is a constant: only the fast path is inline, formatting in
 * place when the td_kvs has room for the widest value and an entry. */
TD_FW_INLINE void sf_fw_scalar(td_fw *w, const td_flat *f, const char *prefix, size_t pl,
                               const void *base, td_time_memo *tm, bool kvmode) {
    const char *src = (const char *)base + f->off;
    int64_t x = 0;
    const char *s = src;
    size_t sl = 0;
    switch (f->kind) {
    case TD_FK_I64:
    case TD_FK_DEC:
        memcpy(&x, src, sizeof x);
        if (x == f->def) return;
        break;
    case TD_FK_I32: {
        int32_t y;
        memcpy(&y, src, sizeof y);
        if (y == f->def) return;
        x = y;
        break;
    }
    case TD_FK_TIME:
        memcpy(&x, src, sizeof x);
        if (x == TD_MS_MISSING) return;
        break;
    case TD_FK_STR:
        if (!src[0]) return;
        sl = strlen(src);
        break;
    default: { /* enums: stored as an enum (int-sized) */
        int e;
        memcpy(&e, src, sizeof e);
        if (e == 0) return;
        switch (f->kind) {
        case TD_FK_STAGE:
            s = td_stage_name((td_stage)e);
            break;
        case TD_FK_GP:
            s = td_gift_policy_name((td_gift_policy)e);
            break;
        case TD_FK_SENT:
            s = td_sentiment_name((td_sentiment)e);
            break;
        case TD_FK_GK:
            s = td_gift_kind_name((td_gift_kind)e);
            break;
        case TD_FK_BLOCK:
            s = td_block_reason_name((td_block_reason)e);
            break;
        case TD_FK_TRI:
            s = e == TD_TRI_YES ? "true" : e == TD_TRI_NO ? "false" : NULL;
            break;
        default:
            s = NULL;
            break;
        }
        if (!s || !s[0]) return; /* out-of-range enum: not a valid state */
        sl = strlen(s);
        break;
    }
    }
    if (!kvmode || w->len + pl + 32 + TD_FW_VMAX(sl) > w->lim || w->n == w->ecap) {
        if (kvmode) {
            w->kv->len = w->len;
            w->kv->n = w->n;
        }
        sf_fw_scalar_slow(w->kv, w->fn, w->ud, f, prefix, pl, x, s, sl, tm);
        if (kvmode) sf_fw_load(w);
        return;
    }
    size_t kl, vl = sf_fw_scalar_at(w->buf + w->len, f, prefix, pl, x, s, sl, tm, &kl);
    w->len = td_kvs_entry_set(&w->e[w->n++], w->len, kl, vl);
}

/* A channel every field of which is at its default (td_state_chan_init): such a
 * channel has no key in the flat form, and most channels of most states are
 * like this. Fields absent from td_flat_chan only make the memcmp fail, which
 * costs the field-by-field path, never a wrong form. */
static const td_chan_state td_chan_default = {
    .last_sent_at = TD_MS_MISSING,
    .last_opened_at = TD_MS_MISSING,
    .last_replied_at = TD_MS_MISSING,
    .blocked = TD_BLOCK_NONE,
    .consent = TD_TRI_UNSET,
};

/* The longest field through scratch: the touch list (key, 64 times and
 * commas, and the last time's TD_TIME_BUF stored bytes); the others are
 * shorter (a timer: 6 + 3 * 64 key bytes, a time, a space and 3 * 128 id
 * bytes). Scalars have their own (sf_fw_scalar_slow). */
_Static_assert(7 + TD_TOUCH_RING * 25 + TD_TIME_BUF <= TD_FW_SCRATCH, "scratch holds the touches");
_Static_assert(6 + 3 * TD_RULE_ID_MAX + TD_TIME_BUF + 1 + 3 * TD_ID_MAX + 16 <= TD_FW_SCRATCH,
               "scratch holds a timer");

/* Serialises the state: one pair per non-default field, in the order of
 * td_flat_top, the channels, hour_hist, touches, dedup, pos.*, fired.*,
 * timer.*. */
TD_FW_INLINE void sf_fw_state(const td_state *st, td_fw *w, bool kvmode) {
    td_time_memo tm = TD_TIME_MEMO_INIT; /* dates repeat: a state's times are close */
    /* Unrolled for capture: each descriptor's kind, offset and default
     * become constants (the callback form keeps the loop: less code). */
    if (kvmode) {
#pragma GCC unroll 64
        for (size_t i = 0; i < TD_NELEM(td_flat_top); i++)
            sf_fw_scalar(w, &td_flat_top[i], NULL, 0, st, &tm, kvmode);
    } else {
        for (size_t i = 0; i < TD_NELEM(td_flat_top); i++)
            sf_fw_scalar(w, &td_flat_top[i], NULL, 0, st, &tm, kvmode);
    }
    for (int c = 0; c < TD_CH__COUNT; c++) {
        if (memcmp(&st->ch[c], &td_chan_default, sizeof td_chan_default) == 0) continue;
        char prefix[64] = {0};
        const char *name = td_channel_name((td_channel)c);
        size_t pl = strlen(name);
        if (pl > sizeof prefix - 2) continue; /* not reached: names are short */
        memcpy(prefix, name, pl);
        prefix[pl++] = '.';
        if (kvmode) {
#pragma GCC unroll 64
            for (size_t i = 0; i < TD_NELEM(td_flat_chan); i++)
                sf_fw_scalar(w, &td_flat_chan[i], prefix, pl, &st->ch[c], &tm, kvmode);
        } else {
            for (size_t i = 0; i < TD_NELEM(td_flat_chan); i++)
                sf_fw_scalar(w, &td_flat_chan[i], prefix, pl, &st->ch[c], &tm, kvmode);
        }
    }

    uint32_t any = 0;
    for (int h = 0; h < 24; h++)
        any |= st->hour_hist[h];
    if (any) {
        char *p = sf_fw_begin(w, 9 + 24 * (2 + 1 + 10 + 1), kvmode);
        memcpy(p, "hour_hist", 9);
        char *v = p + 9;
        size_t n = 0;
        for (int h = 0; h < 24; h++)
            if (st->hour_hist[h]) {
                if (n) v[n++] = ',';
                n += td_w_u64(v + n, (uint64_t)h);
                v[n++] = ':';
                n += td_w_u64(v + n, st->hour_hist[h]);
            }
        sf_fw_end(w, p, 9, n, kvmode);
    }

    uint32_t cnt = st->touch_count < TD_TOUCH_RING ? st->touch_count : TD_TOUCH_RING;
    if (cnt) {
        char *p = sf_fw_begin(w, 7 + cnt * 25 + TD_TIME_BUF, kvmode);
        memcpy(p, "touches", 7);
        char *v = p + 7;
        size_t n = 0;
        uint32_t at =
            (st->touch_head % TD_TOUCH_RING + TD_TOUCH_RING - st->touch_count) % TD_TOUCH_RING;
        for (uint32_t i = 0; i < cnt; i++) {
            if (i) v[n++] = ',';
            n += sf_w_time(v + n, st->touch_ring[at], &tm);
            if (++at == TD_TOUCH_RING) at = 0;
        }
        sf_fw_end(w, p, 7, n, kvmode);
    }

    cnt = st->dedup_count < TD_DEDUP_RING ? st->dedup_count : TD_DEDUP_RING;
    if (cnt) {
        char *p = sf_fw_begin(w, 5 + cnt * 17, kvmode);
        memcpy(p, "dedup", 5);
        char *v = p + 5;
        uint32_t at =
            (st->dedup_head % TD_DEDUP_RING + TD_DEDUP_RING - st->dedup_count) % TD_DEDUP_RING;
        for (uint32_t i = 0; i < cnt; i++) {
            sf_w_hex16(v + 17 * i, st->dedup[at]);
            v[17 * i + 16] = ','; /* the last one is past the value */
            if (++at == TD_DEDUP_RING) at = 0;
        }
        sf_fw_end(w, p, 5, 17 * cnt - 1, kvmode);
    }

    for (uint32_t i = 0; i < st->npos && i < TD_POS_MAX; i++) {
        char *p = sf_fw_begin(w, 4 + 16 + 20, kvmode);
        memcpy(p, "pos.", 4);
        sf_w_hex16(p + 4, st->pos[i].key);
        sf_fw_end(w, p, 20, sf_w_i64(p + 20, st->pos[i].offset), kvmode);
    }

    /* Rules fired by one step, and timers armed by one event, share their
     * instant: the last one written is kept whole. */
    td_ms memo_t = TD_MS_MISSING;
    char memo[TD_TIME_BUF] = {0};
    size_t memo_n = 0;
    for (uint32_t i = 0; i < st->nfired; i++) {
        const char *rule = st->fired[i].rule;
        size_t rl = strlen(rule);
        char *p = sf_fw_begin(w, 6 + 3 * rl + TD_TIME_BUF, kvmode);
        memcpy(p, "fired.", 6);
        size_t kl = 6 + sf_w_pct_inl(p + 6, rule, rl);
        size_t vl = sf_w_time_rep(p + kl, st->fired[i].at, &memo_t, memo, &memo_n, &tm);
        sf_fw_end(w, p, kl, vl, kvmode);
    }
    /* A timer's value, "<due> <armed_by>", is most often the previous
     * timer's (one event arms many): the last one is kept (tv, tvl). */
    const char *prev_by = NULL;
    td_ms prev_due = TD_MS_MISSING;
    char tv[TD_TIME_BUF + 1 + 3 * TD_ID_MAX + 16]; /* bytes past tvl are copied, never read */
    size_t tvl = 0;
    for (uint32_t i = 0; i < st->ntimers; i++) {
        const td_timer *t = &st->timers[i];
        size_t rl = strlen(t->rule);
        bool same = prev_by && t->armed_by == prev_by && t->due_at == prev_due;
        size_t al = same ? 0 : strlen(t->armed_by);
        if (!same && al > TD_ID_MAX) al = TD_ID_MAX; /* not reached: ids are bounded */
        size_t vneed = same ? tvl + 16 : TD_TIME_BUF + 1 + 3 * al;
        char *p = sf_fw_begin(w, 6 + 3 * rl + vneed, kvmode);
        memcpy(p, "timer.", 6);
        size_t kl = 6 + sf_w_pct_inl(p + 6, t->rule, rl);
        char *v = p + kl;
        size_t vl;
        if (same) {
            for (size_t o = 0; o < tvl; o += 16)
                memcpy(v + o, tv + o, 16);
            vl = tvl;
        } else {
            vl = sf_w_time_rep(v, t->due_at, &memo_t, memo, &memo_n, &tm);
            v[vl++] = ' ';
            vl += sf_w_pct_inl(v + vl, t->armed_by, al);
            memcpy(tv, v, vl);
            tvl = vl;
            prev_by = t->armed_by;
            prev_due = t->due_at;
        }
        sf_fw_end(w, p, kl, vl, kvmode);
    }
}

/* The plan, after everything else: "pending.<id>" = "<not_before>
 * <expires_at> <snoozed_until|-> <channel> <p|o> <rule> <group> <touch>
 * <intent> <json>",
 * the four names percent-encoded (group and intent empty when none), the
 * json as is (the rest of the value). Pairs go through fn (a td_kv_fn:
 * td_kvs_add for a td_kvs), formatted in a heap buffer (a plan is rare and
 * its entries are large). */
static void sf_plan(const td_state *st, td_kv_fn fn, void *ud) {
    td_time_memo tm = TD_TIME_MEMO_INIT;
    /* the older dedup segments: "dedup.<seq>" = "<newest> fp,fp,..." */
    for (uint32_t s = 0; s < st->ndold; s++) {
        const td_dedup_seg *g = &st->dold[s];
        char k[24], v[TD_TIME_BUF + 1 + TD_DEDUP_SEG * 17 + 1];
        memcpy(k, "dedup.", 6);
        size_t kl = 6 + td_w_u64(k + 6, g->seq);
        k[kl] = '\0';
        size_t vl = sf_w_time(v, g->newest, &tm);
        v[vl++] = ' ';
        for (uint32_t i = 0; i < g->n; i++) {
            sf_w_hex16(v + vl, g->fp[i]);
            vl += 16;
            v[vl++] = ',';
        }
        if (g->n) vl--; /* the last comma */
        v[vl] = '\0';
        fn(ud, k, kl, v, vl);
    }
    uint32_t cnt = st->recent_count < TD_RECENT_RECS ? st->recent_count : TD_RECENT_RECS;
    if (cnt) {
        char v[TD_RECENT_RECS * 17];
        uint32_t at =
            (st->recent_head % TD_RECENT_RECS + TD_RECENT_RECS - st->recent_count) % TD_RECENT_RECS;
        for (uint32_t i = 0; i < cnt; i++) {
            sf_w_hex16(v + 17 * i, st->recent[at]);
            v[17 * i + 16] = ',';
            if (++at == TD_RECENT_RECS) at = 0;
        }
        v[17 * cnt - 1] = '\0';
        fn(ud, "recent_recs", 11, v, 17 * cnt - 1);
    }
    for (uint32_t i = 0; i < st->nplan; i++) {
        const td_pending *e = &st->plan[i];
        size_t idl = strlen(e->id);
        size_t need =
            8 + idl + 1 + 2 * TD_TIME_BUF + 24 +
            3 * (strlen(e->rule) + strlen(e->group) + strlen(e->touch) + strlen(e->intent)) + 8 +
            e->len + 2;
        char *p = malloc(need);
        if (!p) {
            if (fn == td_kvs_add) ((td_kvs *)ud)->oom = true;
            return;
        }
        memcpy(p, "pending.", 8);
        memcpy(p + 8, e->id, idl);
        size_t kl = 8 + idl;
        p[kl] = '\0';
        char *v = p + kl + 1, *o = v;
        o += sf_w_time(o, e->not_before, &tm);
        *o++ = ' ';
        o += sf_w_time(o, e->expires_at, &tm);
        *o++ = ' ';
        if (e->snoozed_until)
            o += sf_w_time(o, e->snoozed_until, &tm);
        else
            *o++ = '-';
        *o++ = ' ';
        const char *ch = td_channel_name(e->channel);
        size_t chl = strlen(ch);
        memcpy(o, ch, chl);
        o += chl;
        *o++ = ' ';
        *o++ = e->owner ? 'o' : 'p';
        const char *names[4] = {e->rule, e->group, e->touch, e->intent};
        for (int k = 0; k < 4; k++) {
            *o++ = ' ';
            o += sf_w_pct(o, names[k], strlen(names[k]));
        }
        *o++ = ' ';
        memcpy(o, e->json, e->len);
        o += e->len;
        *o = '\0';
        fn(ud, p, kl, v, (size_t)(o - v));
        free(p);
    }
}

/* The callback form: each pair formatted in a scratch buffer. Key and value
 * are NUL-terminated, valid during the call only. */
void td_state_serialize(const td_state *st, td_kv_fn fn, void *ud) {
    char scratch[TD_FW_SCRATCH + 2];
    td_fw w = {.fn = fn, .ud = ud, .scratch = scratch};
    sf_fw_state(st, &w, false);
    sf_plan(st, fn, ud);
}

/* td_kvs_capture's: the pairs formatted in kv's buffer. */
void td_state_serialize_kvs(const td_state *st, td_kvs *kv) {
    char scratch[TD_FW_SCRATCH + 2];
    td_fw w = {.kv = kv, .scratch = scratch};
    sf_fw_load(&w);
    sf_fw_state(st, &w, true);
    sf_fw_done(&w, true);
    if (st->nplan || st->recent_count || st->ndold) sf_plan(st, td_kvs_add, kv);
}

static int sf_set_err(char *err, size_t errcap, const char *key, size_t klen, const char *what);

/* One "pending.<id>" pair back into the plan. */
static int sf_set_pending(td_state *st, const char *key, size_t klen, const char *val, size_t vlen,
                          char *err, size_t errcap) {
    td_pending e;
    memset(&e, 0, sizeof e);
    if (klen - 8 >= sizeof e.id) return sf_set_err(err, errcap, key, klen, "bad id");
    memcpy(e.id, key + 8, klen - 8);
    const char *f[9];
    size_t fl[9];
    const char *q = val, *end = val + vlen;
    for (int k = 0; k < 9; k++) {
        const char *sp = memchr(q, ' ', (size_t)(end - q));
        if (!sp) return sf_set_err(err, errcap, key, klen, "not a pending recommendation");
        f[k] = q;
        fl[k] = (size_t)(sp - q);
        q = sp + 1;
    }
    if (sf_parse_time(f[0], fl[0], &e.not_before) || sf_parse_time(f[1], fl[1], &e.expires_at))
        return sf_set_err(err, errcap, key, klen, "not a time");
    if (!(fl[2] == 1 && f[2][0] == '-') && sf_parse_time(f[2], fl[2], &e.snoozed_until))
        return sf_set_err(err, errcap, key, klen, "not a time");
    e.channel = td_channel_parse(f[3], fl[3]);
    if (e.channel == TD_CH_NONE || fl[4] != 1 || (f[4][0] != 'o' && f[4][0] != 'p'))
        return sf_set_err(err, errcap, key, klen, "not a pending recommendation");
    e.owner = f[4][0] == 'o';
    if (sf_pct_dec(f[5], fl[5], e.rule, sizeof e.rule) ||
        sf_pct_dec(f[6], fl[6], e.group, sizeof e.group) ||
        sf_pct_dec(f[7], fl[7], e.touch, sizeof e.touch) ||
        sf_pct_dec(f[8], fl[8], e.intent, sizeof e.intent))
        return sf_set_err(err, errcap, key, klen, "bad name");
    size_t jl = (size_t)(end - q);
    if (jl < 2 || q[0] != '{' || jl > UINT32_MAX)
        return sf_set_err(err, errcap, key, klen, "not a pending recommendation");
    e.json = malloc(jl + 1);
    if (!e.json) return sf_set_err(err, errcap, key, klen, "out of memory");
    memcpy(e.json, q, jl);
    e.json[jl] = '\0';
    e.len = (uint32_t)jl;
    if (td_state_plan_add(st, &e, NULL) != TD_OK)
        return sf_set_err(err, errcap, key, klen, "out of memory");
    return TD_OK;
}

static int sf_set_err(char *err, size_t errcap, const char *key, size_t klen, const char *what) {
    if (err && errcap)
        snprintf(err, errcap, "state field '%.*s': %s", (int)(klen > 64 ? 64 : klen), key, what);
    return TD_ERR;
}

static int sf_set_flat(const td_flat *f, void *base, const char *key, size_t klen, const char *v,
                       size_t n, char *err, size_t errcap) {
    char *p = (char *)base + f->off;
    switch (f->kind) {
    case TD_FK_I64: {
        int64_t x;
        if (td_parse_i64(v, n, &x)) return sf_set_err(err, errcap, key, klen, "not an integer");
        memcpy(p, &x, sizeof x);
        return TD_OK;
    }
    case TD_FK_I32: {
        int64_t x;
        if (td_parse_i64(v, n, &x) || x < INT32_MIN || x > INT32_MAX)
            return sf_set_err(err, errcap, key, klen, "not a 32-bit integer");
        int32_t y = (int32_t)x;
        memcpy(p, &y, sizeof y);
        return TD_OK;
    }
    case TD_FK_TIME: {
        td_ms x;
        if (sf_parse_time(v, n, &x)) return sf_set_err(err, errcap, key, klen, "not a time");
        memcpy(p, &x, sizeof x);
        return TD_OK;
    }
    case TD_FK_DEC: {
        td_dec x;
        if (sf_parse_dec(v, n, &x)) return sf_set_err(err, errcap, key, klen, "not a decimal");
        memcpy(p, &x, sizeof x);
        return TD_OK;
    }
    case TD_FK_STR: {
        char tmp[TD_ID_MAX + 1];
        if (f->cap > sizeof tmp || sf_pct_dec(v, n, tmp, f->cap))
            return sf_set_err(err, errcap, key, klen, "bad escape, NUL byte or too long");
        memcpy(p, tmp, strlen(tmp) + 1);
        return TD_OK;
    }
    default: {
        int x = -1;
        switch (f->kind) {
        case TD_FK_STAGE:
            x = td_stage_parse(v, n);
            break;
        case TD_FK_GP:
            x = td_gift_policy_parse(v, n);
            break;
        case TD_FK_SENT:
            x = td_state_sentiment_parse(v, n);
            break;
        case TD_FK_GK:
            x = td_gift_kind_parse(v, n);
            break;
        case TD_FK_BLOCK:
            x = td_block_reason_parse(v, n);
            break;
        case TD_FK_TRI:
            x = (n == 4 && !memcmp(v, "true", 4))    ? TD_TRI_YES
                : (n == 5 && !memcmp(v, "false", 5)) ? TD_TRI_NO
                                                     : -1;
            break;
        default:
            break;
        }
        if (x <= 0) return sf_set_err(err, errcap, key, klen, "unknown name");
        memcpy(p, &x, sizeof x);
        return TD_OK;
    }
    }
}

static bool sf_key_is(const char *k, size_t kn, const char *lit) {
    size_t n = strlen(lit);
    return kn == n && memcmp(k, lit, n) == 0;
}
static bool sf_key_prefix(const char *k, size_t kn, const char *lit) {
    size_t n = strlen(lit);
    return kn > n && memcmp(k, lit, n) == 0;
}

/* Splits a comma list: calls back per item. @returns TD_ERR on the first bad item. */
typedef int (*td_item_fn)(void *ctx, const char *s, size_t n);
static int sf_each_item(const char *v, size_t n, td_item_fn fn, void *ctx) {
    if (n == 0) return TD_OK;
    size_t i = 0;
    for (;;) {
        size_t j = i;
        while (j < n && v[j] != ',')
            j++;
        if (fn(ctx, v + i, j - i)) return TD_ERR;
        if (j == n) return TD_OK;
        i = j + 1;
    }
}

typedef struct td_list_ctx {
    td_state *st;
    uint32_t n;
} td_list_ctx;

static int sf_item_hist(void *vctx, const char *s, size_t n) {
    td_list_ctx *c = vctx;
    const char *colon = memchr(s, ':', n);
    int64_t h, cnt;
    if (!colon || td_parse_i64(s, (size_t)(colon - s), &h) || h < 0 || h > 23 ||
        td_parse_i64(colon + 1, n - (size_t)(colon - s) - 1, &cnt) || cnt < 0 || cnt > UINT32_MAX)
        return TD_ERR;
    c->st->hour_hist[h] = (uint32_t)cnt;
    return TD_OK;
}

static int sf_item_touch(void *vctx, const char *s, size_t n) {
    td_list_ctx *c = vctx;
    td_ms t;
    if (c->n >= TD_TOUCH_RING || sf_parse_time(s, n, &t)) return TD_ERR;
    c->st->touch_ring[c->n++] = t;
    return TD_OK;
}

static int sf_item_dedup(void *vctx, const char *s, size_t n) {
    td_list_ctx *c = vctx;
    if (c->n >= TD_DEDUP_RING || n == 0 || n > 16) return TD_ERR;
    uint64_t x = 0;
    for (size_t i = 0; i < n; i++) {
        int d = sf_hexval(s[i]);
        if (d < 0) return TD_ERR;
        x = x << 4 | (uint64_t)d;
    }
    c->st->dedup[c->n++] = x;
    return TD_OK;
}

int td_state_set_field(td_state *st, const char *key, size_t klen, const char *val, size_t vlen,
                       char *err, size_t errcap) {
    for (size_t i = 0; i < TD_NELEM(td_flat_top); i++)
        if (sf_key_is(key, klen, td_flat_top[i].key))
            return sf_set_flat(&td_flat_top[i], st, key, klen, val, vlen, err, errcap);

    const char *dot = memchr(key, '.', klen);
    if (dot) {
        td_channel ch = td_channel_parse(key, (size_t)(dot - key));
        if (ch != TD_CH_NONE && (int)ch >= 0 && ch < TD_CH__COUNT) {
            const char *sfx = dot + 1;
            size_t sn = klen - (size_t)(sfx - key);
            for (size_t i = 0; i < TD_NELEM(td_flat_chan); i++)
                if (sf_key_is(sfx, sn, td_flat_chan[i].key))
                    return sf_set_flat(&td_flat_chan[i], &st->ch[ch], key, klen, val, vlen, err,
                                       errcap);
            return 1; /* a per-channel field of a newer touchd */
        }
    }

    if (sf_key_is(key, klen, "hour_hist")) {
        uint32_t saved[24]; /* restored when the value is malformed */
        memcpy(saved, st->hour_hist, sizeof saved);
        memset(st->hour_hist, 0, sizeof st->hour_hist);
        td_list_ctx c = {st, 0};
        if (sf_each_item(val, vlen, sf_item_hist, &c)) {
            memcpy(st->hour_hist, saved, sizeof saved);
            return sf_set_err(err, errcap, key, klen, "expected <hour>:<count>,... (hours 0..23)");
        }
        return TD_OK;
    }
    if (sf_key_is(key, klen, "touches")) {
        td_ms saved[TD_TOUCH_RING];
        memcpy(saved, st->touch_ring, sizeof saved);
        td_list_ctx c = {st, 0};
        if (sf_each_item(val, vlen, sf_item_touch, &c)) {
            memcpy(st->touch_ring, saved, sizeof saved);
            return sf_set_err(err, errcap, key, klen, "expected up to 64 comma-separated times");
        }
        st->touch_count = c.n;
        st->touch_head = c.n % TD_TOUCH_RING;
        return TD_OK;
    }
    if (sf_key_is(key, klen, "dedup")) {
        uint64_t saved[TD_DEDUP_RING];
        memcpy(saved, st->dedup, sizeof saved);
        td_list_ctx c = {st, 0};
        if (sf_each_item(val, vlen, sf_item_dedup, &c)) {
            memcpy(st->dedup, saved, sizeof saved);
            return sf_set_err(err, errcap, key, klen,
                              "expected up to 32 comma-separated hex fingerprints");
        }
        st->dedup_count = c.n;
        st->dedup_head = c.n % TD_DEDUP_RING;
        return TD_OK;
    }
    if (sf_key_prefix(key, klen, "dedup.")) {
        td_dedup_seg g;
        memset(&g, 0, sizeof g);
        uint64_t seq = 0;
        bool ok = klen > 6 && klen - 6 <= 9;
        for (size_t i = 6; ok && i < klen; i++) {
            ok = key[i] >= '0' && key[i] <= '9';
            seq = seq * 10 + (uint64_t)(key[i] - '0');
        }
        const char *sp = memchr(val, ' ', vlen);
        if (!ok || seq == 0 || !sp || sf_parse_time(val, (size_t)(sp - val), &g.newest))
            return sf_set_err(err, errcap, key, klen, "not a dedup segment");
        g.seq = (uint32_t)seq;
        const char *q = sp + 1, *end = val + vlen;
        while (q < end) {
            const char *c = memchr(q, ',', (size_t)(end - q));
            size_t l = c ? (size_t)(c - q) : (size_t)(end - q);
            uint64_t x = 0;
            ok = g.n < TD_DEDUP_SEG && l > 0 && l <= 16;
            for (size_t i = 0; ok && i < l; i++) {
                int d = sf_hexval(q[i]);
                ok = d >= 0;
                x = x << 4 | (uint64_t)(d < 0 ? 0 : d);
            }
            if (!ok) return sf_set_err(err, errcap, key, klen, "not a dedup segment");
            g.fp[g.n++] = x;
            q = c ? c + 1 : end;
        }
        if (td_state_dedup_put(st, &g) != TD_OK)
            return sf_set_err(err, errcap, key, klen, "out of memory");
        return TD_OK;
    }
    if (sf_key_is(key, klen, "recent_recs")) {
        uint32_t n = 0;
        uint64_t v[TD_RECENT_RECS];
        const char *q = val, *end = val + vlen;
        while (q < end) {
            const char *c = memchr(q, ',', (size_t)(end - q));
            size_t l = c ? (size_t)(c - q) : (size_t)(end - q);
            uint64_t x = 0;
            bool ok = n < TD_RECENT_RECS && l > 0 && l <= 16;
            for (size_t i = 0; ok && i < l; i++) {
                int d = sf_hexval(q[i]);
                ok = d >= 0;
                x = x << 4 | (uint64_t)(d < 0 ? 0 : d);
            }
            if (!ok)
                return sf_set_err(err, errcap, key, klen,
                                  "expected up to 32 comma-separated hex fingerprints");
            v[n++] = x;
            q = c ? c + 1 : end;
        }
        memcpy(st->recent, v, n * sizeof *v);
        st->recent_count = n;
        st->recent_head = n % TD_RECENT_RECS;
        return TD_OK;
    }
    if (sf_key_prefix(key, klen, "pending."))
        return sf_set_pending(st, key, klen, val, vlen, err, errcap);
    if (sf_key_prefix(key, klen, "pos.")) {
        uint64_t k = 0;
        size_t hn = klen - 4;
        if (hn > 16) return sf_set_err(err, errcap, key, klen, "bad position key");
        for (size_t i = 4; i < klen; i++) {
            int d = sf_hexval(key[i]);
            if (d < 0) return sf_set_err(err, errcap, key, klen, "bad position key");
            k = k << 4 | (uint64_t)d;
        }
        int64_t off;
        if (td_parse_i64(val, vlen, &off))
            return sf_set_err(err, errcap, key, klen, "not an offset");
        td_state_pos_put(st, k, off);
        return TD_OK;
    }
    if (sf_key_prefix(key, klen, "fired.") || sf_key_prefix(key, klen, "timer.")) {
        bool timer = key[0] == 't';
        char rule[TD_RULE_ID_MAX + 1];
        if (sf_pct_dec(key + 6, klen - 6, rule, sizeof rule))
            return sf_set_err(err, errcap, key, klen, "bad rule id");
        const char *sp = timer ? memchr(val, ' ', vlen) : NULL;
        size_t tn = sp ? (size_t)(sp - val) : vlen;
        td_ms t;
        if (sf_parse_time(val, tn, &t)) return sf_set_err(err, errcap, key, klen, "not a time");
        if (!timer) {
            if (td_state_set_fired(st, rule, t))
                return sf_set_err(err, errcap, key, klen, "out of memory");
            return TD_OK;
        }
        char armed[TD_ID_MAX + 1] = "";
        if (sp && sf_pct_dec(sp + 1, vlen - tn - 1, armed, sizeof armed))
            return sf_set_err(err, errcap, key, klen, "bad armed_by id");
        if (td_state_arm_timer(st, rule, t, armed))
            return sf_set_err(err, errcap, key, klen, "out of memory");
        return TD_OK;
    }
    return 1;
}

/* ---- diff of flat forms ---- */

/* The difference of two states' flat forms (td_kvs_diff; the daemon keeps
 * the td_kvs of what Redis holds and calls td_kvs_diff itself). */
int td_state_diff(const td_state *before, const td_state *now, td_kv_fn set_fn, td_kdel_fn del_fn,
                  void *ud) {
    td_kvs a = {0}, b = {0};
    int rc = TD_ERR;
    if (td_kvs_capture(&a, before) == TD_OK && td_kvs_capture(&b, now) == TD_OK)
        rc = td_kvs_diff(&a, &b, set_fn, del_fn, ud);
    td_kvs_free(&a);
    td_kvs_free(&b);
    return rc;
}
