/*
 * td_base.c - the small helpers every core module shares: channel and type
 * names, a bounded string copy, the FNV-1a hash, and the growable byte
 * buffer td_buf with its JSON string writer (td_json_str_at).
 *
 * Owns nothing: every table here is constant; every function but td_buf's
 * is pure (td_buf's allocate the buffer their caller owns).
 *
 * @locality any thread.
 */
#include "td_base.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Indexed by td_channel; the names are the wire names of DESIGN.md. */
static const char *const channel_names[TD_CH__COUNT] = {
    [TD_CH_EMAIL] = "email",       [TD_CH_WHATSAPP] = "whatsapp", [TD_CH_SMS] = "sms",
    [TD_CH_LINKEDIN] = "linkedin", [TD_CH_CALL] = "call",         [TD_CH_MEETING] = "meeting",
    [TD_CH_GIFT] = "gift",
};

const char *td_channel_name(td_channel ch) {
    if ((int)ch < 0 || ch >= TD_CH__COUNT) return NULL;
    return channel_names[ch];
}

td_channel td_channel_parse(const char *s, size_t len) {
    if (s == NULL) return TD_CH_NONE;
    for (int i = 0; i < TD_CH__COUNT; i++) {
        const char *n = channel_names[i];
        /* Names are short and few: a length check first makes this a
         * handful of compares, cheaper than hashing. */
        if (strlen(n) == len && memcmp(n, s, len) == 0) return (td_channel)i;
    }
    return TD_CH_NONE;
}

bool td_strlcpy(char *dst, const char *src, size_t cap) {
    if (cap == 0) return false;
    if (src == NULL) {
        dst[0] = '\0';
        return true;
    }
    size_t n = strnlen(src, cap);
    if (n < cap) {
        memcpy(dst, src, n + 1);
        return true;
    }
    memcpy(dst, src, cap - 1);
    dst[cap - 1] = '\0';
    return false;
}

uint64_t td_hash64(const void *data, size_t len, uint64_t seed) {
    const unsigned char *p = data;
    uint64_t h = seed;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL; /* the 64-bit FNV prime */
    }
    return h;
}

static const char *const type_names[TD_T__COUNT] = {
    [TD_T_NONE] = "none",  [TD_T_BOOL] = "bool", [TD_T_INT] = "int",      [TD_T_DEC] = "decimal",
    [TD_T_STR] = "string", [TD_T_TIME] = "time", [TD_T_DUR] = "duration",
};

const char *td_type_name(td_type t) {
    /* Never NULL: callers put it straight into diagnostics. */
    if ((int)t < 0 || t >= TD_T__COUNT) return "unknown";
    return type_names[t];
}

/* "00" "01" ... "99": two digits per step. */
static const char td_digits2[201] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

size_t td_fmt_u64(uint64_t v, char *buf) {
    /* Most numbers written are short (RESP lengths, counters, offsets):
     * count the digits, then fill from the end two at a time. */
    if (v < 10) {
        buf[0] = (char)('0' + v);
        buf[1] = '\0';
        return 1;
    }
    size_t n = 2;
    for (uint64_t t = v / 100; t; t /= 10)
        n++;
    buf[n] = '\0';
    char *w = buf + n;
    while (v >= 100) {
        size_t i = (size_t)(v % 100) * 2;
        v /= 100;
        w -= 2;
        w[0] = td_digits2[i];
        w[1] = td_digits2[i + 1];
    }
    if (v >= 10) {
        w -= 2;
        w[0] = td_digits2[v * 2];
        w[1] = td_digits2[v * 2 + 1];
    } else {
        *--w = (char)('0' + v);
    }
    return n;
}

size_t td_fmt_i64(int64_t v, char *buf) {
    if (v >= 0) return td_fmt_u64((uint64_t)v, buf);
    buf[0] = '-';
    return 1 + td_fmt_u64((uint64_t)0 - (uint64_t)v, buf + 1);
}

int td_parse_i64(const char *v, size_t n, int64_t *out) {
    size_t i = 0;
    bool neg = false;
    if (n && v[0] == '-') {
        neg = true;
        i = 1;
    }
    if (i >= n) return TD_ERR;
    uint64_t m = 0, lim = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    for (; i < n; i++) {
        if (v[i] < '0' || v[i] > '9') return TD_ERR;
        unsigned d = (unsigned)(v[i] - '0');
        if (m > (lim - d) / 10) return TD_ERR;
        m = m * 10 + d;
    }
    *out = neg ? (m == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)m) : (int64_t)m;
    return TD_OK;
}

/* ---- td_buf ---- */

int td_grow(void *arrayp, size_t *cap, size_t n, size_t elem, size_t first) {
    if (n < *cap) return TD_OK;
    size_t c = *cap ? *cap * 2 : first;
    if (c <= n || c > SIZE_MAX / elem) return TD_ERR;
    void *old;
    memcpy(&old, arrayp, sizeof old); /* arrayp is a T **: its bytes are a pointer */
    void *v = realloc(old, c * elem);
    if (!v) return TD_ERR;
    memcpy(arrayp, &v, sizeof v);
    *cap = c;
    return TD_OK;
}

int td_buf_reserve(td_buf *b, size_t extra) {
    if (b->len + extra + 1 <= b->cap) return TD_OK;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) return TD_ERR;
    b->p = p;
    b->cap = cap;
    return TD_OK;
}

int td_buf_append(td_buf *b, const char *s, size_t n) {
    if (td_buf_reserve(b, n) != TD_OK) return TD_ERR;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return TD_OK;
}

int td_buf_printf(td_buf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char tmp[256];
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return TD_ERR;
    if ((size_t)n < sizeof tmp) return td_buf_append(b, tmp, (size_t)n);
    if (td_buf_reserve(b, (size_t)n) != TD_OK) return TD_ERR;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return TD_OK;
}

/* The short JSON escapes, by byte; the other bytes below 0x20 and 0x7f are
 * written \u00XX, and every other byte (UTF-8 included) as it is. */
static const char td_json_esc[128][7] = {
    ['"'] = "\\\"", ['\\'] = "\\\\", ['\n'] = "\\n", ['\r'] = "\\r", ['\t'] = "\\t",
};

static inline bool td_json_plain(unsigned char c) {
    return c >= 0x20 && c != '"' && c != '\\' && c != 0x7f;
}

/*
 * The plain prefix of p[0..r): copied to o, its length returned. o has room
 * for r bytes (the caller reserved 6 * r for them): bytes past the prefix
 * may be written too, and are overwritten by the caller.
 *
 * With SSE2 (every x86-64), 16 bytes per test; the last bytes of a run are
 * tested with one load that ends at p + r and overlaps bytes already known
 * plain, and a run shorter than 16 with two overlapping 8- or 4-byte loads.
 * Otherwise, 8 bytes per test in a 64-bit word (SWAR), then byte by byte.
 * Reads stay inside p[0..r).
 */
#if defined(__SSE2__) && !defined(TD_JSON_NO_SSE2) /* tests build the other path too */
#include <emmintrin.h>

/* Bit k set when byte k of v is not td_json_plain. */
static inline unsigned td_json_special16(__m128i v) {
    __m128i ctl = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v); /* v <= 0x1f */
    __m128i q = _mm_cmpeq_epi8(v, _mm_set1_epi8('"'));
    __m128i bs = _mm_cmpeq_epi8(v, _mm_set1_epi8('\\'));
    __m128i del = _mm_cmpeq_epi8(v, _mm_set1_epi8(0x7f));
    return (unsigned)_mm_movemask_epi8(_mm_or_si128(_mm_or_si128(ctl, q), _mm_or_si128(bs, del)));
}

static inline size_t td_json_plain_run(char *o, const char *p, size_t r) {
    if (r >= 16) {
        size_t k = 0;
        for (; r - k >= 16; k += 16) {
            __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(p + k));
            unsigned m = td_json_special16(v);
            _mm_storeu_si128((__m128i *)(void *)(o + k), v);
            if (m) return k + (size_t)__builtin_ctz(m);
        }
        if (k == r) return r;
        /* p[r - 16 .. k) is plain: its bits are clear */
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(p + r - 16));
        unsigned m = td_json_special16(v);
        _mm_storeu_si128((__m128i *)(void *)(o + r - 16), v);
        return m ? r - 16 + (size_t)__builtin_ctz(m) : r;
    }
    if (r >= 8) { /* p[0..8) and p[r-8..r) */
        __m128i a = _mm_loadl_epi64((const __m128i *)(const void *)p);
        __m128i b = _mm_loadl_epi64((const __m128i *)(const void *)(p + r - 8));
        unsigned m = td_json_special16(_mm_unpacklo_epi64(a, b));
        _mm_storel_epi64((__m128i *)(void *)o, a);
        _mm_storel_epi64((__m128i *)(void *)(o + r - 8), b);
        if (m & 0xff) return (size_t)__builtin_ctz(m);
        return m ? r - 16 + (size_t)__builtin_ctz(m) : r;
    }
    if (r >= 4) { /* p[0..4) and p[r-4..r) */
        uint32_t a, b;
        memcpy(&a, p, 4);
        memcpy(&b, p + r - 4, 4);
        unsigned m =
            td_json_special16(_mm_set_epi32(0x40404040, 0x40404040, (int)b, (int)a)) & 0xff;
        memcpy(o, &a, 4);
        memcpy(o + r - 4, &b, 4);
        if (m & 0xf) return (size_t)__builtin_ctz(m);
        return m ? r - 8 + (size_t)__builtin_ctz(m) : r;
    }
    size_t k = 0;
    while (k < r && td_json_plain((unsigned char)p[k])) {
        o[k] = p[k];
        k++;
    }
    return k;
}
#else
/* Nonzero when some byte of w is not td_json_plain. Each term sets a byte's
 * high bit only if that byte or a lower one matches (a borrow runs upwards
 * from a real match), so "any byte" is exact; bytes >= 0x80 never match. */
#define TD_SWAR_ONES 0x0101010101010101ULL
static inline uint64_t td_json_special8(uint64_t w) {
    uint64_t q = w ^ (TD_SWAR_ONES * '"'), bs = w ^ (TD_SWAR_ONES * '\\'),
             del = w ^ (TD_SWAR_ONES * 0x7f);
    return (((w - TD_SWAR_ONES * 0x20) & ~w) | ((q - TD_SWAR_ONES) & ~q) |
            ((bs - TD_SWAR_ONES) & ~bs) | ((del - TD_SWAR_ONES) & ~del)) &
           (TD_SWAR_ONES * 0x80);
}

static inline size_t td_json_plain_run(char *o, const char *p, size_t r) {
    size_t k = 0;
    for (; r - k >= 8; k += 8) {
        uint64_t w;
        memcpy(&w, p + k, 8);
        if (td_json_special8(w)) break;
        memcpy(o + k, &w, 8);
    }
    while (k < r && td_json_plain((unsigned char)p[k])) {
        o[k] = p[k];
        k++;
    }
    return k;
}
#endif

char *td_json_str_at(char *o, const char *s, size_t n) {
    *o++ = '"';
    size_t i = 0;
    for (;;) {
        size_t k = td_json_plain_run(o, s + i, n - i);
        o += k;
        i += k;
        if (i == n) break;
        unsigned char c = (unsigned char)s[i++]; /* not plain: below 0x80 */
        const char *e = td_json_esc[c];
        if (e[0]) { /* every short escape is two bytes */
            o[0] = e[0];
            o[1] = e[1];
            o += 2;
        } else { /* other controls and DEL: \u00XX */
            static const char hex[] = "0123456789abcdef";
            memcpy(o, "\\u00", 4);
            o[4] = hex[c >> 4];
            o[5] = hex[c & 15];
            o += 6;
        }
    }
    *o++ = '"';
    return o;
}

int td_buf_json_str(td_buf *b, const char *s, size_t n) {
    /* escapes are at most 6 bytes each: one reservation covers the string */
    if (n > (SIZE_MAX - 3) / 6 || td_buf_reserve(b, 6 * n + 2) != TD_OK) return TD_ERR;
    char *o = td_json_str_at(b->p + b->len, s, n);
    *o = '\0';
    b->len = (size_t)(o - b->p);
    return TD_OK;
}

void td_buf_free(td_buf *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}
