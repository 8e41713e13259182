/*
 * td_event_fast.c - the fast path's JSON scanner: one pass over a message,
 * no allocation, into a td_event_doc that td_event.c's readers then decode
 * exactly as they decode jansson's tree (td_event_internal.h).
 *
 * The one promise: when td_event_scan accepts, jansson's json_loadb with
 * JSON_REJECT_DUPLICATES accepts the same bytes as an object, and every field
 * the decoder reads has the same kind and value in both. So the scanner is
 * jansson's grammar (load.c) restricted to what events use, and declines
 * (returns TD_EVENT_DECLINED, never an error) everything else:
 *
 * - whitespace is jansson's four bytes; after the object only whitespace;
 * - strings: raw UTF-8 by jansson's rules (td_utf8_seq_len), no byte below
 *   0x20, escapes checked as jansson checks them (\u0000 and unpaired
 *   surrogates declined). Escapes are resolved into doc->text for the values
 *   of known keys; in keys they are declined, so a key compares by its bytes
 *   (jansson's duplicate check compares decoded keys);
 * - numbers: JSON's grammar. Integers of at most 18 digits (jansson's strtoll
 *   cannot overflow on them); reals with at most 18 integer digits and an
 *   exponent of at most 99, so strtod cannot overflow to infinity (the only
 *   real jansson refuses). Other numbers are declined, not judged;
 * - objects: the top level, `data` and `data.consent` only (consent with
 *   channel keys and true/false/null values); arrays and any other nesting
 *   are declined. Every key may appear once: known keys are tracked in
 *   doc->seen, others (up to MAX_OTHER per object) compared byte for byte.
 *
 * Unknown keys are skipped, as the decoder ignores them, but their values
 * are still checked: an invalid value anywhere makes jansson refuse the
 * whole message.
 *
 * @locality any thread; no shared state.
 */
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "td_event_internal.h"

_Static_assert(TD_EF__COUNT <= 32, "td_event_doc.seen is 32 bits");

/* Unknown keys per object that the duplicate check tracks; one more is
 * declined. CRMs add a few fields, not dozens. */
#define MAX_OTHER 16

typedef struct scanner {
    const unsigned char *p;
    const unsigned char *end;
    td_event_doc *doc;
} scanner;

/* Which object the scanner is in: which keys it knows. */
typedef enum level { LV_TOP, LV_DATA, LV_CONSENT } level;

/* Bytes a string scan can pass without a second look: printable ASCII but
 * '"' and '\\' (0x7f is allowed by JSON and jansson). */
static const unsigned char plain[256] = {
#define R16(v) v, v, v, v, v, v, v, v, v, v, v, v, v, v, v, v
    R16(0), R16(0), /* 0x00..0x1f: control characters */
    1,      1,      0,      1,      1,      1,      1,      1,      1,      1,      1,
    1,      1,      1,      1,      1, /* 0x20..0x2f: '"' is 0x22 */
    R16(1), R16(1), 1,      1,      1,      1,      1,      1,      1,      1,      1,
    1,      1,      1,      0,      1,      1,      1, /* 0x50..0x5f: '\\' is 0x5c */
    R16(1), R16(1), R16(0), R16(0), R16(0), R16(0), R16(0), R16(0), R16(0), R16(0), /* 0x80..: UTF-8 */
#undef R16
};

/*
 * The first byte at or after p that is not plain (or end). Strings are most
 * of a message, so this is the scanner's inner loop: 16 bytes at a time with
 * SSE2 (every x86-64 has it), where a signed compare below 0x20 finds both
 * control characters and UTF-8 bytes (0x80 and up are negative).
 */
static const unsigned char *skip_plain(const unsigned char *p, const unsigned char *end) {
#ifdef __SSE2__
    const __m128i quote = _mm_set1_epi8('"'), bslash = _mm_set1_epi8('\\');
    const __m128i space = _mm_set1_epi8(0x20);
    while (end - p >= 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)(const void *)p);
        __m128i m = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(x, quote), _mm_cmpeq_epi8(x, bslash)),
                                 _mm_cmplt_epi8(x, space));
        unsigned bits = (unsigned)_mm_movemask_epi8(m);
        if (bits != 0) return p + __builtin_ctz(bits);
        p += 16;
    }
#endif
    while (p < end && plain[*p])
        p++;
    return p;
}

static void skip_ws_loop(scanner *sc) {
    while (sc->p < sc->end && (*sc->p == ' ' || *sc->p == '\n' || *sc->p == '\r' || *sc->p == '\t'))
        sc->p++;
}

/* Messages rarely have whitespace: one compare settles most calls inline. */
static inline void skip_ws(scanner *sc) {
    if (sc->p < sc->end && *sc->p <= ' ') skip_ws_loop(sc);
}

static bool at(const scanner *sc, unsigned char c) { return sc->p < sc->end && *sc->p == c; }

static bool is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

/* The code unit of "\uXXXX" at p (p[0] == '\\'), or -1. */
static long hex4(const unsigned char *p, const unsigned char *end) {
    if (end - p < 6 || p[0] != '\\' || p[1] != 'u') return -1;
    long v = 0;
    for (int k = 2; k < 6; k++) {
        unsigned char c = p[k];
        int h = is_digit(c)              ? c - '0'
                : (c >= 'a' && c <= 'f') ? c - 'a' + 10
                : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                                         : -1;
        if (h < 0) return -1;
        v = v * 16 + h;
    }
    return v;
}

/*
 * The escape at p (p[0] == '\\'): its length in the message (2, 6 or 12 for a
 * surrogate pair) and the code point it stands for, or 0 to decline: not an
 * escape jansson accepts, or \u0000 (which jansson refuses in strings).
 */
static size_t escape(const unsigned char *p, const unsigned char *end, long *cp) {
    if (end - p < 2) return 0;
    switch (p[1]) {
    case '"':
        *cp = '"';
        return 2;
    case '\\':
        *cp = '\\';
        return 2;
    case '/':
        *cp = '/';
        return 2;
    case 'b':
        *cp = '\b';
        return 2;
    case 'f':
        *cp = '\f';
        return 2;
    case 'n':
        *cp = '\n';
        return 2;
    case 'r':
        *cp = '\r';
        return 2;
    case 't':
        *cp = '\t';
        return 2;
    case 'u':
        break;
    default:
        return 0;
    }
    long hi = hex4(p, end);
    if (hi <= 0 || (hi >= 0xdc00 && hi <= 0xdfff)) return 0;
    if (hi < 0xd800 || hi > 0xdbff) {
        *cp = hi;
        return 6;
    }
    long lo = hex4(p + 6, end);
    if (lo < 0xdc00 || lo > 0xdfff) return 0;
    *cp = ((hi - 0xd800) << 10) + (lo - 0xdc00) + 0x10000;
    return 12;
}

/* UTF-8 of a code point (< 0x110000, not a surrogate) into out; its length. */
static size_t utf8_put(long cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/*
 * At '"': checks the string and leaves sc->p after its closing quote.
 * raw, rawn: the bytes between the quotes; escaped: whether any is an
 * escape.
 */
static bool scan_string(scanner *sc, const unsigned char **raw, size_t *rawn, bool *escaped) {
    const unsigned char *p = sc->p + 1, *end = sc->end;
    *raw = p;
    *escaped = false;
    for (;;) {
        p = skip_plain(p, end);
        if (p >= end) return false; /* unterminated */
        unsigned char c = *p;
        if (c == '"') break;
        size_t k;
        if (c == '\\') {
            long cp;
            k = escape(p, end, &cp);
            *escaped = true;
        } else if (c >= 0x80) {
            k = td_utf8_seq_len(p, (size_t)(end - p));
        } else {
            k = 0; /* a control character */
        }
        if (k == 0) return false;
        p += k;
    }
    *rawn = (size_t)(p - *raw);
    sc->p = p + 1;
    return true;
}

/* The value of a string with escapes, as jansson decodes it, into doc->text.
 * The text is at most as long as the raw bytes. */
static bool unescape(td_event_doc *doc, const unsigned char *raw, size_t n, td_jv *v) {
    if (n > sizeof doc->text - doc->text_used)
        return false; /* out of room: let the slow path have it */
    char *out = doc->text + doc->text_used, *o = out;
    const unsigned char *p = raw, *end = raw + n;
    while (p < end) {
        if (*p != '\\') {
            *o++ = (char)*p++;
            continue;
        }
        long cp = 0;
        p += escape(p, end, &cp); /* checked by scan_string: never 0 */
        o += utf8_put(cp, o);
    }
    v->s = out;
    v->n = (size_t)(o - out);
    doc->text_used += v->n;
    return true;
}

/* At '-' or a digit: a number jansson parses to the same value (see top). */
static bool scan_number(scanner *sc, td_jv *v) {
    const unsigned char *p = sc->p, *end = sc->end, *start = p;
    bool neg = p < end && *p == '-';
    if (neg) p++;
    const unsigned char *digits = p;
    if (p < end && *p == '0') {
        p++;
        if (p < end && is_digit(*p)) return false; /* a leading zero: invalid JSON */
    } else {
        while (p < end && is_digit(*p))
            p++;
    }
    size_t ndigits = (size_t)(p - digits);
    if (ndigits == 0 || ndigits > 18) return false;
    bool real = false;
    if (p < end && *p == '.') {
        p++;
        if (p >= end || !is_digit(*p)) return false;
        while (p < end && is_digit(*p))
            p++;
        real = true;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        if (p >= end || !is_digit(*p)) return false;
        int exp = 0;
        while (p < end && is_digit(*p)) {
            exp = exp * 10 + (*p++ - '0');
            if (exp > 99) return false;
        }
        real = true;
    }
    if (real) {
        v->kind = TD_JV_REAL;
        v->s = (const char *)start;
        v->n = (size_t)(p - start);
    } else {
        int64_t i = 0;
        for (const unsigned char *d = digits; d < p; d++)
            i = i * 10 + (*d - '0');
        v->kind = TD_JV_INTEGER;
        v->i = neg ? -i : i;
    }
    sc->p = p;
    return true;
}

/* Whether the bytes at sc->p are `word`; consumes them if so. What follows
 * is the caller's business (only ',', '}' or whitespace will do). */
static bool literal(scanner *sc, const char *word, size_t n) {
    if ((size_t)(sc->end - sc->p) < n || memcmp(sc->p, word, n) != 0) return false;
    sc->p += n;
    return true;
}

/* A string, number, true, false or null into v. `keep`: resolve a string's
 * escapes (a known field's value; an unknown one is only checked). */
static bool scan_scalar(scanner *sc, td_jv *v, bool keep) {
    if (sc->p >= sc->end) return false;
    switch (*sc->p) {
    case '"': {
        const unsigned char *raw;
        size_t n;
        bool escaped;
        if (!scan_string(sc, &raw, &n, &escaped)) return false;
        v->kind = TD_JV_STRING;
        if (escaped && keep) return unescape(sc->doc, raw, n, v);
        v->s = (const char *)raw;
        v->n = n;
        return true;
    }
    case 't':
        v->kind = TD_JV_TRUE;
        return literal(sc, "true", 4);
    case 'f':
        v->kind = TD_JV_FALSE;
        return literal(sc, "false", 5);
    case 'n':
        v->kind = TD_JV_NULL;
        return literal(sc, "null", 4);
    default:
        return (*sc->p == '-' || is_digit(*sc->p)) && scan_number(sc, v);
    }
}

/* The field a key names at this level, or -1. */
static int field_of(level lv, const unsigned char *k, size_t n) {
    int lo = lv == LV_TOP ? 0 : TD_EF_DATA_FIRST;
    int hi = lv == LV_TOP ? TD_EF_DATA_FIRST : TD_EF__COUNT;
    for (int f = lo; f < hi; f++) {
        const td_event_field_name *fn = &td_event_fields[f];
        /* Length and first byte set every known key apart but one pair;
         * keys are short, so the rest is compared inline, not by memcmp. */
        if (fn->len != n || fn->key[0] != (char)k[0]) continue;
        size_t i = 1;
        while (i < n && fn->key[i] == (char)k[i])
            i++;
        if (i == n) return f;
    }
    return -1;
}

/* One member of data.consent: a channel, once, with true, false or null. */
static bool consent_member(scanner *sc, const unsigned char *k, size_t kn, unsigned *seen) {
    td_channel ch = td_channel_parse((const char *)k, kn);
    if (ch == TD_CH_NONE || (*seen & (1u << ch))) return false;
    *seen |= 1u << ch;
    td_jv v;
    if (!scan_scalar(sc, &v, false)) return false;
    if (v.kind == TD_JV_TRUE || v.kind == TD_JV_FALSE)
        sc->doc->consent[ch] = v.kind == TD_JV_TRUE ? TD_TRI_YES : TD_TRI_NO;
    else if (v.kind != TD_JV_NULL)
        return false;
    return true;
}

/* At '{': the members of an object of level lv, up to its '}'. */
static bool scan_object(scanner *sc, level lv) {
    td_event_doc *doc = sc->doc;
    const unsigned char *other[MAX_OTHER];
    size_t other_n[MAX_OTHER];
    size_t others = 0;
    unsigned consent_seen = 0;
    if (lv == LV_CONSENT) memset(doc->consent, 0, sizeof doc->consent);

    sc->p++;
    skip_ws(sc);
    if (at(sc, '}')) {
        sc->p++;
        return true;
    }
    for (;;) {
        const unsigned char *k;
        size_t kn;
        bool escaped;
        if (!at(sc, '"') || !scan_string(sc, &k, &kn, &escaped) || escaped) return false;
        skip_ws(sc);
        if (!at(sc, ':')) return false;
        sc->p++;
        skip_ws(sc);

        if (lv == LV_CONSENT) {
            if (!consent_member(sc, k, kn, &consent_seen)) return false;
        } else {
            int f = field_of(lv, k, kn);
            if (f >= 0) {
                if (doc->seen & (1u << f)) return false; /* duplicate */
                doc->seen |= 1u << f;
                td_jv *v = &doc->v[f];
                if (at(sc, '{') && (f == TD_EF_DATA || f == TD_EF_CONSENT)) {
                    v->kind = TD_JV_OBJECT;
                    if (!scan_object(sc, f == TD_EF_DATA ? LV_DATA : LV_CONSENT)) return false;
                } else if (!scan_scalar(sc, v, true)) {
                    return false;
                }
            } else {
                for (size_t i = 0; i < others; i++)
                    if (other_n[i] == kn && memcmp(other[i], k, kn) == 0)
                        return false; /* duplicate */
                if (others == MAX_OTHER) return false;
                other[others] = k;
                other_n[others++] = kn;
                td_jv ignored;
                if (!scan_scalar(sc, &ignored, false)) return false;
            }
        }

        skip_ws(sc);
        if (at(sc, '}')) {
            sc->p++;
            return true;
        }
        if (!at(sc, ',')) return false;
        sc->p++;
        skip_ws(sc);
    }
}

int td_event_scan(const char *buf, size_t len, td_event_doc *doc) {
    scanner sc = {(const unsigned char *)buf, (const unsigned char *)buf + len, doc};
    doc->seen = 0;
    doc->text_used = 0;
    skip_ws(&sc);
    if (!at(&sc, '{') || !scan_object(&sc, LV_TOP)) return TD_EVENT_DECLINED;
    skip_ws(&sc);
    return sc.p == sc.end ? TD_OK : TD_EVENT_DECLINED;
}
