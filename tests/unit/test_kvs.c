/*
 * test_kvs.c - td_kvs: the flat form in memory and the difference of two.
 * (td_state_diff, tested at length in test_state.c, is built on it.)
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "td_kvs.h"

/* What a diff reported, as "+key=value" and "-key" lines. */
typedef struct report {
    char text[8192];
    size_t len;
    size_t sets, dels;
} report;

static void on_set(void *ud, const char *k, size_t kl, const char *v, size_t vl) {
    report *r = ud;
    r->len += (size_t)snprintf(r->text + r->len, sizeof r->text - r->len, "+%.*s=%.*s\n",
                               (int)kl, k, (int)vl, v);
    r->sets++;
}

static void on_del(void *ud, const char *k, size_t kl) {
    report *r = ud;
    r->len += (size_t)snprintf(r->text + r->len, sizeof r->text - r->len, "-%.*s\n", (int)kl, k);
    r->dels++;
}

static void add(td_kvs *kv, const char *k, const char *v) { td_kvs_add(kv, k, strlen(k), v, strlen(v)); }

/* Changed, new, deleted and unchanged pairs, in another order. */
static void test_diff_pairs(void **unused) {
    (void)unused;
    td_kvs a = {0}, b = {0};
    add(&a, "events", "3");
    add(&a, "owner_id", "rep-1");
    add(&a, "email.sent", "2");
    add(&a, "timer.t", "2026-11-20T00:00:00Z e-1");
    add(&b, "events", "4");         /* changed */
    add(&b, "email.sent", "2");     /* unchanged */
    add(&b, "timer.t", "2026-11-20T00:00:00Z e-1");
    add(&b, "email.opened", "1");   /* new */
    report r = {0};                 /* owner_id: deleted */
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
        if (i % 100 == 7)
            continue; /* 6 deleted */
        if (i % 50 == 3)
            snprintf(v, sizeof v, "x%d", i); /* 12 changed */
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

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_diff_pairs),
        cmocka_unit_test(test_diff_many),
        cmocka_unit_test(test_capture_move),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
