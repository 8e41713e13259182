/*
 * td_base.c - the small helpers every core module shares: channel and type
 * names, a bounded string copy and the FNV-1a hash.
 *
 * Owns nothing: every table here is constant, every function is pure.
 *
 * @locality any thread.
 */
#include "td_base.h"

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
