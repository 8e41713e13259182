/*
 * test_rec_json.c - the recommendation's bytes: td_rec_json, td_buf_json_str,
 * td_value_json and the recommendation id, against reference writers kept
 * here as they were before the fast paths (the key-by-key td_rec_json,
 * snprintf-based td_value_json, the byte loop escaper, EVP_Digest ids).
 * Ids and JSON are a contract (downstream dedups on ids, goldens compare
 * bytes): every case must give the same bytes, on edge values (INT64_MIN and
 * MAX, negative decimals, every escape, control bytes, UTF-8, strings long
 * enough to be cut at 255 bytes) and on random ones.
 *
 * test_rec_json_portable.c includes td_base.c and td_engine.c built without
 * SSE2, then this file: the same cases against the portable string scanner.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <cmocka.h>

#include "td_engine.h"
#include "td_time.h"

/* ---- the reference writers (the code before the fast paths) ---- */

static int ref_json_str(td_buf *b, const char *s, size_t n) {
    if (td_buf_reserve(b, 6 * n + 2) != TD_OK) return TD_ERR;
    char *o = b->p + b->len;
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"':
            memcpy(o, "\\\"", 2);
            o += 2;
            break;
        case '\\':
            memcpy(o, "\\\\", 2);
            o += 2;
            break;
        case '\n':
            memcpy(o, "\\n", 2);
            o += 2;
            break;
        case '\r':
            memcpy(o, "\\r", 2);
            o += 2;
            break;
        case '\t':
            memcpy(o, "\\t", 2);
            o += 2;
            break;
        default:
            if (c < 0x20 || c == 0x7f) {
                o += sprintf(o, "\\u%04x", c);
            } else {
                *o++ = (char)c;
            }
        }
    }
    *o++ = '"';
    *o = '\0';
    b->len = (size_t)(o - b->p);
    return TD_OK;
}

typedef struct rjw {
    char *buf;
    size_t cap, n;
} rjw;

static void rjw_put(rjw *w, const char *s, size_t len) {
    for (size_t k = 0; k < len; k++) {
        if (w->n + 1 >= w->cap) return;
        w->buf[w->n++] = s[k];
    }
}

static void rjw_quoted(rjw *w, const char *s, size_t len) {
    rjw_put(w, "\"", 1);
    for (size_t k = 0; k < len; k++) {
        unsigned char ch = (unsigned char)s[k];
        char esc[8];
        switch (ch) {
        case '"':
            rjw_put(w, "\\\"", 2);
            break;
        case '\\':
            rjw_put(w, "\\\\", 2);
            break;
        case '\n':
            rjw_put(w, "\\n", 2);
            break;
        case '\r':
            rjw_put(w, "\\r", 2);
            break;
        case '\t':
            rjw_put(w, "\\t", 2);
            break;
        default:
            if (ch < 0x20 || ch == 0x7f) {
                snprintf(esc, sizeof esc, "\\u%04x", ch);
                rjw_put(w, esc, 6);
            } else {
                rjw_put(w, (const char *)&ch, 1);
            }
        }
    }
    rjw_put(w, "\"", 1);
}

static void rjw_dec(rjw *w, td_dec d) {
    char tmp[48];
    uint64_t u = d < 0 ? (uint64_t)0 - (uint64_t)d : (uint64_t)d;
    uint64_t whole = u / TD_DEC_SCALE, frac = u % TD_DEC_SCALE;
    int len;
    if (frac == 0) {
        len = snprintf(tmp, sizeof tmp, "%s%llu", d < 0 ? "-" : "", (unsigned long long)whole);
    } else {
        char f[8];
        snprintf(f, sizeof f, "%04llu", (unsigned long long)frac);
        int fl = 4;
        while (fl > 0 && f[fl - 1] == '0')
            fl--;
        f[fl] = '\0';
        len =
            snprintf(tmp, sizeof tmp, "%s%llu.%s", d < 0 ? "-" : "", (unsigned long long)whole, f);
    }
    if (len > 0) rjw_put(w, tmp, (size_t)len);
}

static size_t ref_value_json(const td_value *v, char *buf, size_t cap) {
    rjw w = {buf, cap, 0};
    if (!buf || cap == 0) return 0;
    char tmp[64];
    if (!v || v->missing) {
        rjw_put(&w, "null", 4);
    } else {
        switch (v->type) {
        case TD_T_BOOL:
            rjw_put(&w, v->u.b ? "true" : "false", v->u.b ? 4 : 5);
            break;
        case TD_T_INT:
            snprintf(tmp, sizeof tmp, "%lld", (long long)v->u.i);
            rjw_put(&w, tmp, strlen(tmp));
            break;
        case TD_T_DEC:
            rjw_dec(&w, v->u.d);
            break;
        case TD_T_STR:
            rjw_quoted(&w, v->u.s.p ? v->u.s.p : "", v->u.s.p ? v->u.s.n : 0);
            break;
        case TD_T_TIME: {
            size_t l = td_time_format(v->u.t, tmp, sizeof tmp);
            rjw_quoted(&w, tmp, l < sizeof tmp ? l : sizeof tmp - 1);
            break;
        }
        case TD_T_DUR: {
            size_t l = td_duration_format(v->u.t, tmp, sizeof tmp);
            rjw_quoted(&w, tmp, l < sizeof tmp ? l : sizeof tmp - 1);
            break;
        }
        default:
            rjw_put(&w, "null", 4);
            break;
        }
    }
    buf[w.n] = '\0';
    return w.n;
}

static int ref_put_key(td_buf *b, const char *k, bool first) {
    if (!first && td_buf_append(b, ",", 1) != TD_OK) return TD_ERR;
    if (ref_json_str(b, k, strlen(k)) != TD_OK) return TD_ERR;
    return td_buf_append(b, ":", 1);
}

static int ref_put_str(td_buf *b, const char *k, const char *v) {
    if (ref_put_key(b, k, false) != TD_OK) return TD_ERR;
    return ref_json_str(b, v, strlen(v));
}

static int ref_put_time(td_buf *b, const char *k, td_ms t) {
    char tb[TD_TIME_BUF];
    td_time_format(t, tb, sizeof tb);
    return ref_put_str(b, k, tb);
}

static int ref_rec_json(const td_rec *r, const td_state *st, const td_ruleset *rs,
                        const td_trigger *trig, td_ms generated_at, td_buf *b) {
    int rc = TD_OK;
    rc |= td_buf_append(b, "{", 1);
    rc |= ref_put_key(b, "kind", true);
    rc |= ref_json_str(b, "recommendation", 14);
    rc |= ref_put_str(b, "id", r->id);
    rc |= ref_put_str(b, "prospect_id", st->prospect_id);
    if (st->owner_id[0]) rc |= ref_put_str(b, "owner_id", st->owner_id);
    rc |= ref_put_str(b, "audience", td_rule_owner_audience(r->rule) ? "owner" : "prospect");
    rc |= ref_put_str(b, "rule", r->rule->id);
    if (r->rule->group) rc |= ref_put_str(b, "group", r->rule->group);
    if (r->rule->intent) rc |= ref_put_str(b, "intent", r->rule->intent);
    rc |= ref_put_str(b, "channel", td_channel_name(r->channel));
    rc |= ref_put_str(b, "touch", r->touch);
    rc |= ref_put_time(b, "not_before", r->not_before);
    td_ms exp = r->expires_at;
    if (!exp) {
        /* saturating, as the engine: not_before may be near INT64_MAX */
        td_ms d = td_rule_expires(rs, r->rule);
        exp = r->not_before > INT64_MAX - d ? INT64_MAX : r->not_before + d;
    }
    rc |= ref_put_time(b, "expires_at", exp);
    rc |= ref_put_key(b, "priority", false);
    char num[32];
    snprintf(num, sizeof num, "%lld", (long long)r->priority);
    rc |= td_buf_append(b, num, strlen(num));
    if (r->note) rc |= ref_put_str(b, "note", r->note);
    if (r->late) rc |= td_buf_append(b, ",\"late\":true", 12);
    rc |= ref_put_key(b, "trigger", false);
    rc |= td_buf_append(b, "{", 1);
    if (trig->kind == TD_TRIG_EVENT) {
        rc |= ref_put_key(b, "type", true);
        const char *tn = td_event_type_name(trig->ev->type);
        rc |= ref_json_str(b, tn, strlen(tn));
        rc |= ref_put_str(b, "event_id", trig->ev->id);
        rc |= ref_put_time(b, "occurred_at", trig->ev->occurred_at);
    } else {
        rc |= ref_put_key(b, "type", true);
        rc |= ref_json_str(b, "timer", 5);
        rc |= ref_put_str(b, "rule", trig->rule);
        rc |= ref_put_str(b, "armed_by", trig->armed_by);
        rc |= ref_put_time(b, "due_at", trig->due_at);
        rc |= ref_put_time(b, "occurred_at", trig->due_at);
    }
    rc |= td_buf_append(b, "}", 1);
    rc |= ref_put_key(b, "because", false);
    rc |= td_buf_append(b, "[", 1);
    for (uint32_t i = 0; i < r->nbecause; i++) {
        const td_because *bc = &r->because[i];
        char vb[256];
        if (i) rc |= td_buf_append(b, ",", 1);
        rc |= td_buf_append(b, "{", 1);
        rc |= ref_put_key(b, "expr", true);
        rc |= ref_json_str(b, bc->expr, bc->len);
        rc |= ref_put_key(b, "value", false);
        size_t vl = ref_value_json(&bc->value, vb, sizeof vb);
        rc |= td_buf_append(b, vb, vl);
        rc |= ref_put_key(b, "facts", false);
        rc |= td_buf_append(b, "{", 1);
        for (uint32_t f = 0; f < bc->facts.n; f++) {
            const td_fact *fa = &bc->facts.v[f];
            rc |= ref_put_key(b, fa->field->name, f == 0);
            vl = ref_value_json(&fa->value, vb, sizeof vb);
            rc |= td_buf_append(b, vb, vl);
        }
        rc |= td_buf_append(b, "}}", 2);
    }
    rc |= td_buf_append(b, "]", 1);
    rc |= ref_put_str(b, "ruleset", td_ruleset_hash(rs));
    rc |= ref_put_time(b, "generated_at", generated_at);
    rc |= td_buf_append(b, "}", 1);
    return rc == TD_OK ? TD_OK : TD_ERR;
}

/* ---- helpers ---- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;
static uint64_t rnd(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dULL;
}

/* The bytes around every class boundary of the escaper, and UTF-8. */
static const unsigned char EDGE_BYTES[] = {
    0x00, 0x01, 0x07, 0x08, 0x09, 0x0a, 0x0c, 0x0d, 0x1e, 0x1f, 0x20, 0x21, 0x22,
    0x23, 0x2f, 0x30, 0x5b, 0x5c, 0x5d, 0x7e, 0x7f, 0x80, 0x9f, 0xa0, 0xc3, 0xa9,
    0xe2, 0x82, 0xac, 0xf0, 0x9f, 0x98, 0x80, 0xfe, 0xff, 'a',  'z'};

static void rand_bytes(char *s, size_t n) {
    int mode = (int)(rnd() % 4);
    for (size_t i = 0; i < n; i++) {
        switch (mode) {
        case 0:
            s[i] = (char)('a' + rnd() % 26);
            break; /* plain */
        case 1:
            s[i] = (char)(rnd() % 256);
            break; /* anything */
        case 2:    /* mostly plain, a few edge bytes */
            s[i] =
                rnd() % 16 ? (char)(' ' + rnd() % 95) : (char)EDGE_BYTES[rnd() % sizeof EDGE_BYTES];
            break;
        default:
            s[i] = (char)EDGE_BYTES[rnd() % sizeof EDGE_BYTES];
            break;
        }
    }
}

/* td_buf_json_str and the reference on s, appended after a prefix of `pre`
 * bytes (the buffer's position moves the writes' alignment). */
static void check_json_str(const char *s, size_t n, size_t pre) {
    td_buf a = {0}, b = {0};
    for (size_t i = 0; i < pre; i++) {
        assert_int_equal(td_buf_append(&a, "x", 1), TD_OK);
        assert_int_equal(td_buf_append(&b, "x", 1), TD_OK);
    }
    assert_int_equal(td_buf_json_str(&a, s, n), TD_OK);
    assert_int_equal(ref_json_str(&b, s, n), TD_OK);
    if (a.len != b.len || memcmp(a.p, b.p, a.len) != 0)
        fail_msg("json_str differs (n=%zu pre=%zu):\n  got  %.*s\n  want %.*s", n, pre, (int)a.len,
                 a.p, (int)b.len, b.p);
    assert_int_equal(a.p[a.len], '\0');
    td_buf_free(&a);
    td_buf_free(&b);
}

/* ---- td_buf_json_str ---- */

static void test_json_str_known(void **state) {
    (void)state;
    td_buf b = {0};
    const char in[] = "a\"b\\c\nd\re\tf\x01g\x1fh\x7fi\x00j \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80/";
    assert_int_equal(td_buf_json_str(&b, in, sizeof in - 1), TD_OK);
    assert_string_equal(b.p, "\"a\\\"b\\\\c\\nd\\re\\tf\\u0001g\\u001fh\\u007fi\\u0000j "
                             "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80/\"");
    b.len = 0;
    assert_int_equal(td_buf_json_str(&b, "", 0), TD_OK);
    assert_string_equal(b.p, "\"\"");
    td_buf_free(&b);
}

/* Every length from 0 to 80, with one special (or boundary) byte at every
 * position, at four alignments: each of the scanner's paths (16-byte blocks,
 * the overlapping tail, 8- and 4-byte pairs, single bytes) and their seams. */
static void test_json_str_positions(void **state) {
    (void)state;
    char s[96];
    for (size_t n = 0; n <= 80; n++) {
        for (size_t i = 0; i < n; i++)
            s[i] = (char)('A' + i % 26);
        for (size_t pre = 0; pre < 4; pre++)
            check_json_str(s, n, pre * 5);
        for (size_t pos = 0; pos < n; pos++) {
            /* every edge byte up to 40 bytes, then a few (valgrind runs this) */
            for (size_t e = 0; e < sizeof EDGE_BYTES; e += n <= 40 ? 1 : 5) {
                for (size_t i = 0; i < n; i++)
                    s[i] = (char)('A' + i % 26);
                s[pos] = (char)EDGE_BYTES[e];
                check_json_str(s, n, pos % 3);
                /* and a second special later on */
                if (pos + 3 < n) {
                    s[n - 1 - (pos % 5)] = '"';
                    check_json_str(s, n, 1);
                }
            }
        }
    }
}

static void test_json_str_random(void **state) {
    (void)state;
    char s[700];
    for (int k = 0; k < 6000; k++) {
        size_t n = (size_t)(rnd() % (k % 10 == 0 ? sizeof s : 48));
        rand_bytes(s, n);
        check_json_str(s, n, (size_t)(rnd() % 17));
    }
}

/* ---- td_value_json ---- */

static void check_value(const td_value *v) {
    static const size_t caps[] = {1,  2,  3,  4,  5,  6,  7,  8,  9,   10,  15,  16,  20,   21,  22,
                                  23, 24, 25, 26, 27, 28, 30, 64, 100, 255, 256, 257, 1024, 4096};
    char got[4200], want[4200];
    for (size_t c = 0; c < sizeof caps / sizeof *caps; c++) {
        size_t fill = caps[c] + 2 < sizeof got ? caps[c] + 2 : sizeof got;
        memset(got, 'Z', fill);
        memset(want, 'Z', fill);
        size_t gl = td_value_json(v, got, caps[c]);
        size_t wl = ref_value_json(v, want, caps[c]);
        if (gl != wl || memcmp(got, want, wl + 1) != 0)
            fail_msg("td_value_json differs (type %d, cap %zu):\n  got  %s\n  want %s",
                     v ? (int)v->type : -1, caps[c], got, want);
        assert_int_equal(got[gl + 1], 'Z'); /* nothing past the NUL */
    }
    assert_int_equal(td_value_json(v, got, 0), 0);
    assert_int_equal(td_value_json(v, NULL, 10), 0);
}

static size_t vjson(const td_value *v, char *buf) { return td_value_json(v, buf, 256); }

static void test_value_json_known(void **state) {
    (void)state;
    char b[256];
    td_value v = {.type = TD_T_INT, .u.i = INT64_MIN};
    vjson(&v, b);
    assert_string_equal(b, "-9223372036854775808");
    v.u.i = INT64_MAX;
    vjson(&v, b);
    assert_string_equal(b, "9223372036854775807");
    v.u.i = 0;
    vjson(&v, b);
    assert_string_equal(b, "0");
    v = (td_value){.type = TD_T_DEC, .u.d = -5};
    vjson(&v, b);
    assert_string_equal(b, "-0.0005");
    v.u.d = -125000;
    vjson(&v, b);
    assert_string_equal(b, "-12.5");
    v.u.d = 1230;
    vjson(&v, b);
    assert_string_equal(b, "0.123");
    v.u.d = -10000;
    vjson(&v, b);
    assert_string_equal(b, "-1");
    v.u.d = INT64_MIN;
    vjson(&v, b);
    assert_string_equal(b, "-922337203685477.5808");
    v.u.d = INT64_MAX;
    vjson(&v, b);
    assert_string_equal(b, "922337203685477.5807");
    v = (td_value){.type = TD_T_BOOL, .u.b = false};
    vjson(&v, b);
    assert_string_equal(b, "false");
    v.missing = true;
    vjson(&v, b);
    assert_string_equal(b, "null");
    assert_int_equal(td_value_json(NULL, b, sizeof b), 4);
    assert_string_equal(b, "null");
    v = (td_value){.type = TD_T_TIME, .u.t = 1795342500000LL + 7}; /* 2026-11-22T10:15:00Z */
    vjson(&v, b);
    assert_string_equal(b, "\"2026-11-22T10:15:00.007Z\"");
    v = (td_value){.type = TD_T_DUR, .u.t = -(3 * TD_DAY + TD_HOUR + 5)};
    vjson(&v, b);
    assert_string_equal(b, "\"-3d1h5ms\"");
    static const char s1[] = "\"\\\n\x01\x7f\xc3\xa9";
    v = (td_value){.type = TD_T_STR, .u.s = {s1, sizeof s1 - 1}};
    vjson(&v, b);
    assert_string_equal(b, "\"\\\"\\\\\\n\\u0001\\u007f\xc3\xa9\"");
    /* cut at cap - 1, inside an escape */
    assert_int_equal(td_value_json(&v, b, 5), 4);
    assert_string_equal(b, "\"\\\"\\");
    v = (td_value){.type = TD_T_STR, .u.s = {NULL, 7}};
    vjson(&v, b);
    assert_string_equal(b, "\"\"");
    v = (td_value){.type = TD_T_NONE};
    vjson(&v, b);
    assert_string_equal(b, "null");
    /* a long string is cut at 255 bytes */
    char longs[300];
    memset(longs, 'q', sizeof longs);
    v = (td_value){.type = TD_T_STR, .u.s = {longs, sizeof longs}};
    assert_int_equal(vjson(&v, b), 255);
    assert_int_equal(b[0], '"');
    assert_int_equal(b[254], 'q');
    assert_int_equal(b[255], '\0');
}

static void test_value_json_edges(void **state) {
    (void)state;
    static const int64_t ints[] = {0,
                                   1,
                                   -1,
                                   9,
                                   10,
                                   -10,
                                   99,
                                   100,
                                   999,
                                   1000,
                                   9999,
                                   10000,
                                   -9999,
                                   -10000,
                                   10001,
                                   -10001,
                                   12345,
                                   -12345,
                                   1230,
                                   -1230,
                                   5000,
                                   -5000,
                                   100000000000LL,
                                   999999999999999999LL,
                                   1000000000000000000LL,
                                   INT64_MAX,
                                   INT64_MIN,
                                   INT64_MIN + 1,
                                   INT64_MAX - 1,
                                   9223372036854770000LL};
    td_value v;
    check_value(NULL);
    for (int t = TD_T_NONE; t <= TD_T__COUNT; t++) {
        for (size_t i = 0; i < sizeof ints / sizeof *ints; i++) {
            for (int miss = 0; miss < 2; miss++) {
                memset(&v, 0, sizeof v);
                v.type = (td_type)t;
                v.missing = miss;
                switch (t) {
                case TD_T_BOOL:
                    v.u.b = ints[i] & 1;
                    break;
                case TD_T_STR:
                    v.u.s.p = "a\"b";
                    v.u.s.n = (uint32_t)(i % 4);
                    break;
                default:
                    v.u.i = ints[i];
                    break; /* i, d and t share the slot */
                }
                check_value(&v);
            }
        }
    }
    /* every string length around the direct-write bound, all plain and all escapes */
    char s[400];
    for (size_t n = 0; n < sizeof s; n += n < 100 ? 1 : 7) {
        for (int kind = 0; kind < 4; kind++) {
            for (size_t i = 0; i < n; i++)
                s[i] = kind == 0   ? 'p'
                       : kind == 1 ? '\x01'
                       : kind == 2 ? '"'
                                   : (char)EDGE_BYTES[i % sizeof EDGE_BYTES];
            v = (td_value){.type = TD_T_STR, .u.s = {s, (uint32_t)n}};
            check_value(&v);
        }
    }
    for (int k = 0; k < 3000; k++) {
        memset(&v, 0, sizeof v);
        v.type = (td_type)(1 + rnd() % (TD_T__COUNT - 1));
        v.missing = rnd() % 10 == 0;
        v.u.i = (int64_t)rnd() >> (rnd() % 64);
        if (rnd() % 2) v.u.i = -v.u.i;
        if (v.type == TD_T_BOOL) v.u.b = rnd() % 2;
        if (v.type == TD_T_STR) {
            size_t n = (size_t)(rnd() % (rnd() % 4 ? 60 : sizeof s));
            rand_bytes(s, n);
            v.u.s.p = s;
            v.u.s.n = (uint32_t)n;
        }
        check_value(&v);
    }
}

/* ---- td_rec_json ---- */

static const char *RULES =
    "rules = (\n"
    "  { id = \"a.rule\"; on = [ \"email.opened\" ];\n"
    "    recommend = { channel = \"email\"; touch = \"micro_question\"; }; }\n"
    ");\n";

static td_ruleset *compile(const char *text) {
    td_source src = {.name = "rec_json.rules", .text = text, .len = strlen(text)};
    td_diags d = {0};
    td_ruleset *rs = td_ruleset_compile(&src, 1, &d);
    for (size_t i = 0; i < d.n; i++) {
        char *m = td_diag_format(&d.v[i]);
        print_message("%s\n", m);
        free(m);
    }
    td_diags_free(&d);
    assert_non_null(rs);
    return rs;
}

static void rand_cstr(char *dst, size_t cap) {
    size_t n = (size_t)(rnd() % cap);
    rand_bytes(dst, n);
    for (size_t i = 0; i < n; i++)
        if (!dst[i]) dst[i] = '\x01'; /* C strings: no NUL inside */
    dst[n] = '\0';
}

static td_ms rand_time(void) {
    static const td_ms edge[] = {0,
                                 -1,
                                 1,
                                 999,
                                 -1000,
                                 TD_MS_MISSING,
                                 INT64_MAX,
                                 -62135596800000LL,
                                 -62135596800001LL,
                                 253402300799999LL,
                                 253402300800000LL,
                                 1795424100000LL};
    if (rnd() % 3 == 0) return edge[rnd() % (sizeof edge / sizeof *edge)];
    return 1735689600000LL + (td_ms)(rnd() % (10ULL * 365 * 86400000));
}

static void rand_value(td_value *v, char *pool, size_t poolcap) {
    memset(v, 0, sizeof *v);
    v->type = (td_type)(1 + rnd() % (TD_T__COUNT - 1));
    v->missing = rnd() % 6 == 0;
    v->u.i = (int64_t)rnd() >> (rnd() % 64);
    if (rnd() % 2) v->u.i = -v->u.i;
    if (rnd() % 10 == 0) v->u.i = rnd() % 2 ? INT64_MIN : INT64_MAX;
    if (v->type == TD_T_BOOL) v->u.b = rnd() % 2;
    if (v->type == TD_T_STR) {
        size_t n = (size_t)(rnd() % (rnd() % 5 ? 40 : poolcap));
        rand_bytes(pool, n);
        v->u.s.p = rnd() % 20 ? pool : NULL;
        v->u.s.n = (uint32_t)n;
    }
}

static void test_rec_json_random(void **state) {
    (void)state;
    td_ruleset *rs = compile(RULES);
    size_t nfields;
    const td_field *fields = td_schema_fields(&nfields);
    assert_true(nfields > 0);
    td_rule rule;
    memset(&rule, 0, sizeof rule);
    static char exprs[TD_BECAUSE_MAX][600], pools[TD_BECAUSE_MAX][TD_FACTS_MAX + 1][400];
    static char touch[300], note[700], armed_by[TD_ID_MAX + 1], trule[TD_RULE_ID_MAX + 1];
    static td_rec rec;
    static td_state st;
    td_state_init(&st, "p");
    static td_event ev;
    td_buf got = {0}, want = {0};
    for (int k = 0; k < 1500; k++) {
        memset(&rec, 0, sizeof rec);
        rand_cstr(rule.id, sizeof rule.id);
        rand_cstr(rec.id, sizeof rec.id);
        rand_cstr(st.prospect_id, sizeof st.prospect_id);
        if (rnd() % 4)
            rand_cstr(st.owner_id, sizeof st.owner_id);
        else
            st.owner_id[0] = '\0';
        rand_cstr(touch, sizeof touch);
        rand_cstr(note, sizeof note);
        rec.rule = &rule;
        rec.channel = (td_channel)(rnd() % TD_CH__COUNT);
        rec.touch = touch;
        rec.note = rnd() % 3 ? note : NULL;
        rec.not_before = rand_time();
        static const int64_t pri[] = {0, 1, -1, 90, INT64_MIN, INT64_MAX};
        rec.priority = rnd() % 2 ? pri[rnd() % 6] : (int64_t)rnd();
        rec.nbecause = (uint32_t)(rnd() % (TD_BECAUSE_MAX + 1));
        for (uint32_t i = 0; i < rec.nbecause; i++) {
            td_because *bc = &rec.because[i];
            size_t n = (size_t)(rnd() % (rnd() % 4 ? 50 : sizeof exprs[i]));
            rand_bytes(exprs[i], n);
            bc->expr = exprs[i];
            bc->len = (uint32_t)n;
            rand_value(&bc->value, pools[i][TD_FACTS_MAX], sizeof pools[i][TD_FACTS_MAX]);
            bc->facts.n = (uint32_t)(rnd() % (TD_FACTS_MAX + 1));
            for (uint32_t f = 0; f < bc->facts.n; f++) {
                bc->facts.v[f].field = &fields[rnd() % nfields];
                rand_value(&bc->facts.v[f].value, pools[i][f], sizeof pools[i][f]);
            }
        }
        td_trigger trig;
        if (rnd() % 2) {
            memset(&ev, 0, sizeof ev);
            ev.type = (td_event_type)(rnd() % TD_EV__COUNT);
            rand_cstr(ev.id, sizeof ev.id);
            trig = (td_trigger){.kind = TD_TRIG_EVENT, .ev = &ev};
        } else {
            rand_cstr(trule, sizeof trule);
            rand_cstr(armed_by, sizeof armed_by);
            trig = (td_trigger){
                .kind = TD_TRIG_TIMER, .rule = trule, .armed_by = armed_by, .due_at = rand_time()};
        }
        td_ms gen = rand_time();
        /* appended after what the buffer holds, as the daemon's batch buffer */
        got.len = want.len = 0;
        size_t pre = (size_t)(rnd() % 40);
        for (size_t i = 0; i < pre; i++) {
            assert_int_equal(td_buf_append(&got, "{", 1), TD_OK);
            assert_int_equal(td_buf_append(&want, "{", 1), TD_OK);
        }
        assert_int_equal(td_rec_json(&rec, &st, rs, &trig, gen, &got), TD_OK);
        assert_int_equal(ref_rec_json(&rec, &st, rs, &trig, gen, &want), TD_OK);
        if (got.len != want.len || memcmp(got.p, want.p, got.len) != 0)
            fail_msg("td_rec_json differs (case %d):\n  got  %.*s\n  want %.*s", k, (int)got.len,
                     got.p, (int)want.len, want.p);
        assert_int_equal(got.p[got.len], '\0');
    }
    td_buf_free(&got);
    td_buf_free(&want);
    td_state_free(&st);
    td_ruleset_free(rs);
}

/* A real step's recommendation, explained, with its JSON. */
static void test_rec_json_step(void **state) {
    (void)state;
    static const char *rules = "rules = (\n"
                               "  { id = \"x.pivot\"; on = [ \"email.opened\" ];\n"
                               "    when = \"email.sent >= 1 && !replied && (tier ?? 3) != 1 && "
                               "(country ?? '') != 'DE'\";\n"
                               "    priority = 7;\n"
                               "    recommend = { channel = \"whatsapp\"; touch = "
                               "\"micro_question\"; note = \"Say \\\"hi\\\"\\\\n\"; }; }\n"
                               ");\n";
    td_ruleset *rs = compile(rules);
    td_tzdb *tz = td_tzdb_new();
    static td_state st;
    static td_step_out out;
    td_state_init(&st, "p-\"1\"");
    const char *evs[] = {
        "{\"id\":\"e1\",\"type\":\"email.sent\",\"prospect_id\":\"p-\\\"1\\\"\","
        "\"owner_id\":\"rep-\\u00e9\",\"occurred_at\":\"2026-11-02T09:00:00Z\"}",
        "{\"id\":\"e2\\\\\",\"type\":\"email.opened\",\"prospect_id\":\"p-\\\"1\\\"\","
        "\"occurred_at\":\"2026-11-02T10:00:00.5Z\"}"};
    static td_event ev[2];
    td_buf got = {0}, want = {0};
    size_t recs = 0;
    for (int i = 0; i < 2; i++) {
        td_event_error err;
        assert_int_equal(td_event_decode(evs[i], strlen(evs[i]), &ev[i], &err), TD_OK);
        td_trigger trig = {.kind = TD_TRIG_EVENT, .ev = &ev[i]};
        assert_int_equal(td_engine_step(rs, &st, &trig, ev[i].occurred_at, tz, 0, &out), TD_OK);
        for (uint32_t r = 0; r < out.nrecs; r++, recs++) {
            got.len = want.len = 0;
            assert_int_equal(td_rec_json(&out.recs[r], &st, rs, &trig, ev[i].occurred_at, &got),
                             TD_OK);
            assert_int_equal(ref_rec_json(&out.recs[r], &st, rs, &trig, ev[i].occurred_at, &want),
                             TD_OK);
            assert_int_equal(got.len, want.len);
            assert_memory_equal(got.p, want.p, got.len);
            assert_non_null(strstr(got.p, "\"prospect_id\":\"p-\\\"1\\\"\""));
            assert_non_null(strstr(got.p, "\"event_id\":\"e2\\\\\""));
            assert_non_null(strstr(got.p, "\"priority\":7,"));
            assert_non_null(strstr(got.p, "\"note\":\"Say \\\"hi\\\"\\\\n\""));
            assert_non_null(strstr(got.p, "\"expr\":\"(country ?? '') != 'DE'\",\"value\":true,"
                                          "\"facts\":{\"country\":null}}"));
        }
    }
    assert_int_equal(recs, 1);
    td_buf_free(&got);
    td_buf_free(&want);
    td_state_free(&st);
    td_tzdb_free(tz);
    td_ruleset_free(rs);
}

/* ---- recommendation ids ---- */

static void ref_rec_id(const char *trigger_id, const char *rule_id, char *out) {
    char in[512];
    int n = snprintf(in, sizeof in, "%s\x1f%s", trigger_id, rule_id);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    assert_int_equal(EVP_Digest(in, (size_t)n, md, &mdlen, EVP_sha256(), NULL), 1);
    assert_int_equal(mdlen, 32);
    out[0] = 'r';
    out[1] = '-';
    for (int i = 0; i < 16; i++)
        sprintf(out + 2 + 2 * i, "%02x", md[i]);
}

/* Decodes event json and steps it on a fresh state of p-1; both rules
 * recommend. */
static void step_fresh(const td_ruleset *rs, td_tzdb *tz, const char *json, td_event *ev,
                       td_state *st, td_step_out *out) {
    td_event_error err;
    assert_int_equal(td_event_decode(json, strlen(json), ev, &err), TD_OK);
    td_state_init(st, "p-1");
    td_trigger trig = {.kind = TD_TRIG_EVENT, .ev = ev};
    assert_int_equal(td_engine_step(rs, st, &trig, ev->occurred_at, tz, 0, out), TD_OK);
    assert_int_equal(out->nrecs, 2);
}

/* Event ids of every length 1..128 with a 1-byte and a 64-byte rule id:
 * digest inputs of 3 to 194 bytes, across every padding boundary (55/56,
 * 63/64, 119/120 bytes). Plus one known id, computed independently. */
static void test_rec_ids(void **state) {
    (void)state;
    char longid[TD_RULE_ID_MAX + 1];
    memset(longid, 'z', TD_RULE_ID_MAX);
    memcpy(longid, "long.", 5);
    longid[TD_RULE_ID_MAX] = '\0';
    char rules[1024];
    snprintf(
        rules, sizeof rules,
        "rules = (\n"
        "  { id = \"r\"; on = [ \"email.opened\" ];\n"
        "    recommend = { channel = \"email\"; touch = \"micro_question\"; window = \"any\"; }; "
        "},\n"
        "  { id = \"%s\"; on = [ \"email.opened\" ];\n"
        "    recommend = { channel = \"sms\"; touch = \"micro_question\"; window = \"any\"; }; }\n"
        ");\n",
        longid);
    td_ruleset *rs = compile(rules);
    td_tzdb *tz = td_tzdb_new();
    static td_state st;
    static td_step_out out;
    static td_event ev;
    size_t checked = 0;
    for (size_t len = 1; len <= TD_ID_MAX; len++) {
        char id[TD_ID_MAX + 1], json[512];
        for (size_t i = 0; i < len; i++)
            id[i] = (char)('a' + (i * 7 + len) % 26);
        id[len] = '\0';
        snprintf(json, sizeof json,
                 "{\"id\":\"%s\",\"type\":\"email.opened\",\"prospect_id\":\"p-1\","
                 "\"occurred_at\":\"2026-11-02T09:00:00Z\"}",
                 id);
        step_fresh(rs, tz, json, &ev, &st, &out);
        for (uint32_t r = 0; r < out.nrecs; r++) {
            char want[TD_REC_ID_LEN + 1];
            ref_rec_id(id, out.recs[r].rule->id, want);
            assert_string_equal(out.recs[r].id, want);
            checked++;
        }
        td_state_free(&st);
    }
    assert_int_equal(checked, 2 * TD_ID_MAX);
    /* a known id: printf 'e-1\x1fr' | sha256sum -> 62f96bbd2e66361f8a7f7260e353c76a... */
    const char *json = "{\"id\":\"e-1\",\"type\":\"email.opened\",\"prospect_id\":\"p-1\","
                       "\"occurred_at\":\"2026-11-02T09:00:00Z\"}";
    step_fresh(rs, tz, json, &ev, &st, &out);
    const td_rec *rr = strcmp(out.recs[0].rule->id, "r") == 0 ? &out.recs[0] : &out.recs[1];
    assert_string_equal(rr->rule->id, "r");
    assert_string_equal(rr->id, "r-62f96bbd2e66361f8a7f7260e353c76a");
    td_state_free(&st);
    td_tzdb_free(tz);
    td_ruleset_free(rs);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_str_known),   cmocka_unit_test(test_json_str_positions),
        cmocka_unit_test(test_json_str_random),  cmocka_unit_test(test_value_json_known),
        cmocka_unit_test(test_value_json_edges), cmocka_unit_test(test_rec_json_random),
        cmocka_unit_test(test_rec_json_step),    cmocka_unit_test(test_rec_ids),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
