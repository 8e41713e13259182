/*
 * test_state_cache.c - the daemon's state cache: entries move in (give) and
 * out (take) with their flat form, never copied; bounded; drop; stats.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "td_state_cache.h"

static void make(td_state *st, td_kvs *kv, const char *pid, int64_t events) {
    td_state_init(st, pid);
    st->events = events;
    st->version = events + 100;
    assert_int_equal(td_state_arm_timer(st, "r.t", 1000 * events, "e-1"), TD_OK);
    memset(kv, 0, sizeof *kv);
    assert_int_equal(td_kvs_capture(kv, st), TD_OK);
}

static void test_give_take(void **unused) {
    (void)unused;
    td_state_cache *c = td_state_cache_new(16);
    assert_non_null(c);
    td_state st;
    td_kvs kv;
    make(&st, &kv, "p-1", 7);
    size_t npairs = kv.n;
    td_state_cache_give(c, &st, &kv);
    /* the caller keeps an empty state (same id) and an empty kv */
    assert_string_equal(st.prospect_id, "p-1");
    assert_int_equal(st.events, 0);
    assert_int_equal(st.ntimers, 0);
    assert_int_equal(kv.n, 0);

    td_state got;
    td_kvs gkv = {0};
    assert_false(td_state_cache_take(c, "p-2", &got, &gkv));
    assert_true(td_state_cache_take(c, "p-1", &got, &gkv));
    assert_int_equal(got.events, 7);
    assert_int_equal(got.version, 107);
    assert_int_equal(got.ntimers, 1);
    assert_int_equal(gkv.n, npairs);
    /* taken means gone: a second take misses */
    td_state again;
    td_kvs akv = {0};
    assert_false(td_state_cache_take(c, "p-1", &again, &akv));
    td_state_cache_stats s;
    td_state_cache_stats_get(c, &s);
    assert_int_equal(s.hits, 1);
    assert_int_equal(s.misses, 2);
    assert_int_equal(s.used, 0);
    td_state_free(&got);
    td_state_free(&st);
    td_kvs_free(&gkv);
    td_kvs_free(&kv);
    td_kvs_free(&akv);
    td_state_cache_free(c);
}

/* A full cache replaces the least recently given entry of a set; giving the
 * same prospect again replaces its entry; drop forgets. Memory stays bounded
 * (valgrind/ASan check the frees). */
static void test_bounded_replace_drop(void **unused) {
    (void)unused;
    td_state_cache *c = td_state_cache_new(2); /* one set of two slots */
    assert_non_null(c);
    char pid[16];
    for (int i = 0; i < 10; i++) {
        td_state st;
        td_kvs kv;
        snprintf(pid, sizeof pid, "p-%d", i);
        make(&st, &kv, pid, i + 1);
        td_state_cache_give(c, &st, &kv);
        td_state_free(&st);
        td_kvs_free(&kv);
    }
    td_state_cache_stats s;
    td_state_cache_stats_get(c, &s);
    assert_int_equal(s.used, 2);
    td_state got;
    td_kvs gkv = {0};
    assert_false(td_state_cache_take(c, "p-0", &got, &gkv)); /* evicted */
    /* p-9 again with other content replaces it */
    td_state st;
    td_kvs kv;
    make(&st, &kv, "p-9", 42);
    td_state_cache_give(c, &st, &kv);
    td_state_cache_stats_get(c, &s);
    assert_int_equal(s.used, 2);
    td_state_cache_drop(c, "p-8");
    td_state_cache_stats_get(c, &s);
    assert_int_equal(s.used, 1);
    assert_int_equal(s.drops, 1);
    assert_false(td_state_cache_take(c, "p-8", &got, &gkv));
    assert_true(td_state_cache_take(c, "p-9", &got, &gkv));
    assert_int_equal(got.events, 42);
    td_state_free(&got);
    td_state_free(&st);
    td_kvs_free(&gkv);
    td_kvs_free(&kv);
    td_state_cache_free(c);
}

/* No cache (state_cache = 0): give leaves an empty state, take misses. */
static void test_null_cache(void **unused) {
    (void)unused;
    assert_null(td_state_cache_new(0));
    td_state st;
    td_kvs kv;
    make(&st, &kv, "p-1", 3);
    td_state_cache_give(NULL, &st, &kv);
    assert_int_equal(st.ntimers, 0);
    assert_int_equal(kv.n, 0);
    assert_false(td_state_cache_take(NULL, "p-1", &st, &kv));
    td_state_free(&st);
    td_kvs_free(&kv);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_give_take),
        cmocka_unit_test(test_bounded_replace_drop),
        cmocka_unit_test(test_null_cache),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
