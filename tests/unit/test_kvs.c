/*
 * test_kvs.c - td_kvs: the flat form in memory and the difference of two.
 * (td_state_diff, tested at length in test_state.c, is built on it.) Also
 * the JSON string writer of the recommendation JSON (td_buf_json_str)
 * against a byte-by-byte reference.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "td_engine.h"
#include "td_kvs.h"

/* What a diff reported, as "+key=value" and "-key" lines. */
typedef struct report {
    char text[1 << 17];
    size_t len;
    size_t sets, dels;
} report;

static void on_set(void *ud, const char *k, size_t kl, const char *v, size_t vl) {
    report *r = ud;
    r->len += (size_t)snprintf(r->text + r->len, sizeof r->text - r->len, "+%.*s=%.*s\n", (int)kl,
                               k, (int)vl, v);
    assert_true(r->len < sizeof r->text);
    r->sets++;
}

static void on_del(void *ud, const char *k, size_t kl) {
    report *r = ud;
    r->len += (size_t)snprintf(r->text + r->len, sizeof r->text - r->len, "-%.*s\n", (int)kl, k);
    assert_true(r->len < sizeof r->text);
    r->dels++;
}

static void add(td_kvs *kv, const char *k, const char *v) {
    td_kvs_add(kv, k, strlen(k), v, strlen(v));
}

/* Changed, new, deleted and unchanged pairs, in another order. */
static void test_diff_pairs(void **unused) {
    (void)unused;
    td_kvs a = {0}, b = {0};
    add(&a, "events", "3");
    add(&a, "owner_id", "rep-1");
    add(&a, "email.sent", "2");
    add(&a, "timer.t", "2026-11-20T00:00:00Z e-1");
    add(&b, "events", "4");     /* changed */
    add(&b, "email.sent", "2"); /* unchanged */
    add(&b, "timer.t", "2026-11-20T00:00:00Z e-1");
    add(&b, "email.opened", "1"); /* new */
    report r = {0};               /* owner_id: deleted */
    assert_int_equal(td_kvs_diff(&a, &b, on_set, on_del, &r), TD_OK);
    assert_string_equal(r.text, "+events=4\n+email.opened=1\n-owner_id\n");
    /* nothing changed: nothing reported */
    report same = {0};
    assert_int_equal(td_kvs_diff(&a, &a, on_set, on_del, &same), TD_OK);
    assert_int_equal(same.sets + same.dels, 0);
    /* from empty: every pair is set; to empty: every key deleted */
    td_kvs e = {0};
    report up = {0}, down = {0};
    assert_int_equal(td_kvs_diff(&e, &b, on_set, on_del, &up), TD_OK);
    assert_int_equal(up.sets, 4);
    assert_int_equal(up.dels, 0);
    assert_int_equal(td_kvs_diff(&b, &e, on_set, on_del, &down), TD_OK);
    assert_int_equal(down.sets, 0);
    assert_int_equal(down.dels, 4);
    td_kvs_free(&a);
    td_kvs_free(&b);
}

/* More keys than the diff's on-stack bookkeeping (256): the heap path. */
static void test_diff_many(void **unused) {
    (void)unused;
    td_kvs a = {0}, b = {0};
    char k[32], v[32];
    for (int i = 0; i < 600; i++) {
        snprintf(k, sizeof k, "k%d", i);
        snprintf(v, sizeof v, "%d", i);
        add(&a, k, v);
        if (i % 100 == 7) continue;                       /* 6 deleted */
        if (i % 50 == 3) snprintf(v, sizeof v, "x%d", i); /* 12 changed */
        add(&b, k, v);
    }
    report r = {0};
    assert_int_equal(td_kvs_diff(&a, &b, on_set, on_del, &r), TD_OK);
    assert_int_equal(r.sets, 12);
    assert_int_equal(r.dels, 6);
    assert_non_null(strstr(r.text, "+k53=x53\n"));
    assert_non_null(strstr(r.text, "-k507\n"));
    td_kvs_free(&a);
    td_kvs_free(&b);
}

/* capture is td_state_serialize's pairs; move and clear keep ownership
 * straight (run under ASan/valgrind: no leak, no double free). */
static void test_capture_move(void **unused) {
    (void)unused;
    td_state st;
    td_state_init(&st, "p-1");
    st.events = 5;
    td_kvs kv = {0};
    assert_int_equal(td_kvs_capture(&kv, &st), TD_OK);
    bool found = false;
    for (size_t i = 0; i < kv.n; i++)
        if (kv.e[i].kl == 6 && memcmp(kv.buf + kv.e[i].k, "events", 6) == 0)
            found = kv.e[i].vl == 1 && kv.buf[kv.e[i].v] == '5';
    assert_true(found);
    size_t n = kv.n;
    assert_true(n > 0);
    /* capturing again replaces, never appends */
    assert_int_equal(td_kvs_capture(&kv, &st), TD_OK);
    assert_int_equal(kv.n, n);
    td_kvs other = {0};
    add(&other, "x", "y");
    td_kvs_move(&other, &kv);
    assert_int_equal(other.n, n);
    assert_int_equal(kv.n, 0);
    assert_null(kv.buf);
    td_kvs_clear(&other);
    assert_int_equal(other.n, 0);
    td_kvs_free(&other);
    td_state_free(&st);
}

static uint64_t rng_s = 0x2545f4914f6cdd1dULL;
static uint64_t rnd(void) {
    rng_s ^= rng_s << 13;
    rng_s ^= rng_s >> 7;
    rng_s ^= rng_s << 17;
    return rng_s;
}

/* The difference by definition: each key of `now` searched in all of
 * `before` (quadratic, obviously right), in the order td_kvs_diff reports. */
static void ref_diff(const td_kvs *before, const td_kvs *now, report *r) {
    for (size_t i = 0; i < now->n; i++) {
        const td_kvs_entry *e = &now->e[i];
        size_t j = 0;
        for (; j < before->n; j++)
            if (before->e[j].kl == e->kl &&
                memcmp(before->buf + before->e[j].k, now->buf + e->k, e->kl) == 0)
                break;
        if (j == before->n || before->e[j].vl != e->vl ||
            memcmp(before->buf + before->e[j].v, now->buf + e->v, e->vl) != 0)
            on_set(r, now->buf + e->k, e->kl, now->buf + e->v, e->vl);
    }
    for (size_t j = 0; j < before->n; j++) {
        size_t i = 0;
        for (; i < now->n; i++)
            if (now->e[i].kl == before->e[j].kl &&
                memcmp(now->buf + now->e[i].k, before->buf + before->e[j].k, now->e[i].kl) == 0)
                break;
        if (i == now->n) on_del(r, before->buf + before->e[j].k, before->e[j].kl);
    }
}

/* Key i of a pool: short and long keys, several sharing their first or last
 * 8 bytes (the diff's index hashes those). */
static size_t pool_key(int i, char *k) {
    static const char *const shapes[] = {"%d",           "timer.gifts.%d-quiet",
                                         "k%d",          "fired.reciprocity.first-touch-%d",
                                         "email.sent%d", "x.%d.same-long-suffix-same"};
    return (size_t)snprintf(k, 64, shapes[i % 6], i);
}

static void rand_kvs(td_kvs *kv, int pool, int pct, bool shuffle) {
    int order[700];
    for (int i = 0; i < pool; i++)
        order[i] = i;
    if (shuffle)
        for (int i = pool - 1; i > 0; i--) {
            int j = (int)(rnd() % (uint64_t)(i + 1)), t = order[i];
            order[i] = order[j];
            order[j] = t;
        }
    char k[64], v[200];
    for (int i = 0; i < pool; i++) {
        if ((int)(rnd() % 100) >= pct) continue;
        size_t kl = pool_key(order[i], k);
        size_t vl = (size_t)(rnd() % 4 == 0 ? rnd() % 150 : rnd() % 12);
        for (size_t b = 0; b < vl; b++)
            v[b] = (char)('a' + rnd() % 3); /* values often equal */
        td_kvs_add(kv, k, kl, v, vl);
    }
}

/* td_kvs_diff against the reference on random pairs: same field order (as
 * from td_state_serialize) or shuffled, few or many keys (stack and heap). */
static void test_diff_reference(void **unused) {
    (void)unused;
    static report got, want;
    for (int round = 0; round < 3000; round++) {
        int pool = round % 10 == 0 ? 300 + (int)(rnd() % 300) : 1 + (int)(rnd() % 80);
        bool shuffle = round % 3 == 0;
        td_kvs a = {0}, b = {0};
        rand_kvs(&a, pool, (int)(rnd() % 101), shuffle && round % 2);
        rand_kvs(&b, pool, (int)(rnd() % 101), shuffle);
        memset(&got, 0, sizeof got);
        memset(&want, 0, sizeof want);
        assert_int_equal(td_kvs_diff(&a, &b, on_set, on_del, &got), TD_OK);
        ref_diff(&a, &b, &want);
        assert_int_equal(got.sets, want.sets);
        assert_int_equal(got.dels, want.dels);
        assert_int_equal(got.len, want.len);
        assert_memory_equal(got.text, want.text, want.len);
        td_kvs_free(&a);
        td_kvs_free(&b);
    }
}

/* The JSON string writer as it was: one byte at a time. */
static void ref_json_str(char *out, size_t *on, const char *s, size_t n) {
    out[(*on)++] = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"':
            *on += (size_t)sprintf(out + *on, "\\\"");
            break;
        case '\\':
            *on += (size_t)sprintf(out + *on, "\\\\");
            break;
        case '\n':
            *on += (size_t)sprintf(out + *on, "\\n");
            break;
        case '\r':
            *on += (size_t)sprintf(out + *on, "\\r");
            break;
        case '\t':
            *on += (size_t)sprintf(out + *on, "\\t");
            break;
        default:
            if (c < 0x20 || c == 0x7f)
                *on += (size_t)sprintf(out + *on, "\\u%04x", c);
            else
                out[(*on)++] = (char)c;
        }
    }
    out[(*on)++] = '"';
    out[*on] = '\0';
}

static void check_json_str(td_buf *b, const char *s, size_t n) {
    static char want[6 * 1024 + 64];
    size_t wn = 0;
    memcpy(want, b->p, b->len); /* what the buffer held stays */
    wn = b->len;
    ref_json_str(want, &wn, s, n);
    assert_int_equal(td_buf_json_str(b, s, n), TD_OK);
    assert_int_equal(b->len, wn);
    assert_memory_equal(b->p, want, wn + 1); /* NUL-terminated */
}

static void test_json_str_reference(void **unused) {
    (void)unused;
    td_buf b = {0};
    /* the escapes themselves */
    assert_int_equal(td_buf_json_str(&b, "a\"b\\c\n\x01\x7f\xc3\xa9", 10), TD_OK);
    assert_string_equal(b.p, "\"a\\\"b\\\\c\\n\\u0001\\u007f\xc3\xa9\"");
    b.len = 0;
    /* every byte alone, then between plain runs */
    for (int c = 0; c < 256; c++) {
        char s[3] = {(char)c, 'x', (char)c};
        check_json_str(&b, s, 1);
        check_json_str(&b, s, 3);
        b.len = 0;
    }
    /* random strings of every length up to 1024, mostly plain (long runs)
     * or mostly not, appended to what the buffer already holds */
    char s[1024];
    for (int round = 0; round < 4000; round++) {
        size_t n = (size_t)(rnd() % (round % 50 == 0 ? 1024 : 64));
        int plain = (int)(rnd() % 101);
        for (size_t i = 0; i < n; i++)
            s[i] = (int)(rnd() % 100) < plain ? (char)('a' + rnd() % 26) : (char)(rnd() % 256);
        if (b.len > 4096) b.len = 0;
        check_json_str(&b, s, n);
    }
    td_buf_free(&b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_diff_pairs),         cmocka_unit_test(test_diff_many),
        cmocka_unit_test(test_capture_move),       cmocka_unit_test(test_diff_reference),
        cmocka_unit_test(test_json_str_reference),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
