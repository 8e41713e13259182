/*
 * test_resp.c - td_resp_parse, the RESP2 reply parser of the store's WATCH
 * path: every reply type, replies cut at every byte (a read may end
 * anywhere), and what is not RESP2. A stream of the replies a chunk brings
 * back is checked against hiredis' own reader, which touchd used before.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>
#include <cmocka.h>

#include "td_resp.h"

/* Parses all of s as one reply; checks that every proper prefix is
 * "incomplete" and that the whole takes all of it. */
static td_resp parse_whole(const char *s, size_t n) {
    td_resp r;
    for (size_t cut = 0; cut < n; cut++) {
        memset(&r, 0x5a, sizeof r);
        assert_int_equal(td_resp_parse(s, cut, &r), 0);
    }
    memset(&r, 0, sizeof r);
    assert_int_equal(td_resp_parse(s, n, &r), (ssize_t)n);
    return r;
}
#define WHOLE(lit) parse_whole(lit, sizeof(lit) - 1)

static void test_types(void **unused) {
    (void)unused;
    td_resp r = WHOLE("+OK\r\n");
    assert_int_equal(r.type, TD_RESP_STATUS);
    assert_true(td_resp_is_status(&r, "OK"));
    assert_false(td_resp_is_status(&r, "QUEUED"));
    assert_false(td_resp_is_status(&r, "O"));

    r = WHOLE("+QUEUED\r\n");
    assert_true(td_resp_is_status(&r, "QUEUED"));

    r = WHOLE("-WRONGTYPE Operation against a key holding the wrong kind of value\r\n");
    assert_int_equal(r.type, TD_RESP_ERROR);
    assert_int_equal(r.len,
                     strlen("WRONGTYPE Operation against a key holding the wrong kind of value"));
    assert_memory_equal(r.s, "WRONGTYPE Operation", 19);
    assert_false(td_resp_is_status(&r, "WRONGTYPE Operation against a key holding the wrong "
                                       "kind of value")); /* an error is not a status */

    r = WHOLE(":0\r\n");
    assert_int_equal(r.type, TD_RESP_INT);
    assert_int_equal(r.i, 0);
    r = WHOLE(":-42\r\n");
    assert_int_equal(r.i, -42);
    r = WHOLE(":9223372036854775807\r\n");
    assert_int_equal(r.i, INT64_MAX);
    r = WHOLE(":-9223372036854775808\r\n");
    assert_true(r.i == INT64_MIN);

    r = WHOLE("$3\r\n123\r\n");
    assert_int_equal(r.type, TD_RESP_BULK);
    assert_int_equal(r.len, 3);
    assert_memory_equal(r.s, "123", 3);
    r = WHOLE("$0\r\n\r\n");
    assert_int_equal(r.type, TD_RESP_BULK);
    assert_int_equal(r.len, 0);
    /* a bulk string holds any bytes, CR and LF included */
    r = WHOLE("$6\r\na\r\nb\r\n\r\n");
    assert_int_equal(r.len, 6);
    assert_memory_equal(r.s, "a\r\nb\r\n", 6);

    r = WHOLE("$-1\r\n");
    assert_int_equal(r.type, TD_RESP_NIL);
    r = WHOLE("*-1\r\n");
    assert_int_equal(r.type, TD_RESP_NIL);
    r = WHOLE("*0\r\n");
    assert_int_equal(r.type, TD_RESP_ARRAY);
    assert_int_equal(r.i, 0);

    /* an array is its header; the elements are the next replies */
    const char arr[] = "*2\r\n:1\r\n$1\r\nx\r\n";
    assert_int_equal(td_resp_parse(arr, sizeof arr - 1, &r), 4);
    assert_int_equal(r.type, TD_RESP_ARRAY);
    assert_int_equal(r.i, 2);
    assert_int_equal(td_resp_parse(arr + 4, sizeof arr - 5, &r), 4);
    assert_int_equal(r.i, 1);
    assert_int_equal(td_resp_parse(arr + 8, sizeof arr - 9, &r), 7);
    assert_memory_equal(r.s, "x", 1);

    assert_int_equal(td_resp_parse("", 0, &r), 0);
}

static void expect_bad(const char *s, size_t n) {
    td_resp r;
    ssize_t k = td_resp_parse(s, n, &r);
    if (k != -1) fail_msg("accepted %zu bytes as RESP2 (%zd): \"%.*s\"", n, k, (int)n, s);
}
#define BAD(lit) expect_bad(lit, sizeof(lit) - 1)

static void test_not_resp(void **unused) {
    (void)unused;
    BAD("OK\r\n"); /* no type byte */
    BAD("_\r\n");  /* RESP3 null */
    BAD("%1\r\n"); /* RESP3 map */
    BAD("+OK\rx"); /* CR without LF */
    BAD(":\r\n");  /* no digits */
    BAD(":12a\r\n");
    BAD(":+1\r\n");
    BAD(":01\r\n"); /* leading zero */
    BAD(":-0\r\n");
    BAD(":9223372036854775808\r\n"); /* out of range */
    BAD(":-9223372036854775809\r\n");
    BAD(":99999999999999999999\r\n");
    BAD("$-2\r\n");
    BAD("*-2\r\n");
    BAD("$3\r\nabcd\r\n"); /* the bulk string is longer than said */
    BAD("$536870913\r\n"); /* over 512 MB */
    BAD("+O\nK\r\n");      /* LF inside a status line */
    /* a line that never ends is refused once it is longer than the limit */
    size_t n = TD_RESP_LINE_MAX + 16;
    char *big = malloc(n);
    assert_non_null(big);
    memset(big, 'e', n);
    big[0] = '-';
    td_resp r;
    assert_int_equal(td_resp_parse(big, TD_RESP_LINE_MAX, &r), 0); /* may still end */
    assert_int_equal(td_resp_parse(big, n, &r), -1);
    free(big);
}

/* The replies of one WATCH-path round trip (WATCH, HGETs, MULTI, QUEUED,
 * EXEC with integers, a nil EXEC, errors), parsed as one stream cut into
 * pieces of every size, against hiredis' reader. */
static void test_stream_against_hiredis(void **unused) {
    (void)unused;
    char s[8192];
    size_t n = 0;
    n += (size_t)snprintf(s + n, sizeof s - n, "+OK\r\n");
    for (int i = 0; i < 64; i++)
        n += (size_t)(i % 7 == 0
                          ? snprintf(s + n, sizeof s - n, "$-1\r\n")
                          : snprintf(s + n, sizeof s - n, "$%d\r\n%d\r\n", i < 10 ? 1 : 2, i));
    n += (size_t)snprintf(s + n, sizeof s - n, "+OK\r\n");
    for (int i = 0; i < 70; i++)
        n += (size_t)snprintf(s + n, sizeof s - n, "+QUEUED\r\n");
    n += (size_t)snprintf(s + n, sizeof s - n, "*70\r\n");
    for (int i = 0; i < 70; i++)
        n += (size_t)snprintf(s + n, sizeof s - n, ":%d\r\n", i * 1000 - 3);
    n += (size_t)snprintf(s + n, sizeof s - n,
                          "*-1\r\n-EXECABORT Transaction discarded because of previous "
                          "errors.\r\n$11\r\n123\r\n456789\r\n");
    assert_true(n < sizeof s);

    for (size_t piece = 1; piece <= n; piece = piece < 16 ? piece + 1 : piece * 3) {
        redisReader *hr = redisReaderCreate();
        assert_non_null(hr);
        char buf[8192];
        size_t have = 0, at = 0, fed = 0, replies = 0;
        /* hiredis flattens arrays into one object: compare element by element */
        redisReply *hrep = NULL;
        size_t hel = 0;
        for (;;) {
            td_resp r;
            ssize_t k = td_resp_parse(buf + at, have - at, &r);
            assert_int_not_equal(k, -1);
            if (k == 0) {
                if (fed == n) break;
                size_t m = n - fed < piece ? n - fed : piece;
                memcpy(buf + have, s + fed, m);
                have += m;
                fed += m;
                continue;
            }
            at += (size_t)k;
            replies++;
            const redisReply *want;
            if (hrep && hel < hrep->elements) {
                want = hrep->element[hel++];
            } else {
                if (hrep) freeReplyObject(hrep);
                hrep = NULL;
                hel = 0;
                void *got = NULL;
                if (redisReaderGetReply(hr, &got) == REDIS_OK && !got) {
                    assert_int_equal(redisReaderFeed(hr, s, n), REDIS_OK);
                    assert_int_equal(redisReaderGetReply(hr, &got), REDIS_OK);
                }
                /* feed hiredis everything once, then walk its replies */
                assert_non_null(got);
                hrep = got;
                want = hrep;
            }
            switch (want->type) {
            case REDIS_REPLY_STATUS:
            case REDIS_REPLY_ERROR:
            case REDIS_REPLY_STRING:
                assert_int_equal(r.type, want->type == REDIS_REPLY_STATUS  ? TD_RESP_STATUS
                                         : want->type == REDIS_REPLY_ERROR ? TD_RESP_ERROR
                                                                           : TD_RESP_BULK);
                assert_int_equal(r.len, want->len);
                assert_memory_equal(r.s, want->str, r.len);
                break;
            case REDIS_REPLY_INTEGER:
                assert_int_equal(r.type, TD_RESP_INT);
                assert_true(r.i == want->integer);
                break;
            case REDIS_REPLY_NIL:
                assert_int_equal(r.type, TD_RESP_NIL);
                break;
            case REDIS_REPLY_ARRAY:
                assert_int_equal(r.type, TD_RESP_ARRAY);
                assert_int_equal((size_t)r.i, want->elements);
                break;
            default:
                fail_msg("hiredis reply type %d", want->type);
            }
        }
        if (hrep) freeReplyObject(hrep);
        void *rest = NULL;
        assert_int_equal(redisReaderGetReply(hr, &rest), REDIS_OK);
        assert_null(rest); /* both saw the same number of replies */
        assert_int_equal(at, n);
        /* 1 + 64 + 1 + 70 + (1 + 70) + 3 */
        assert_int_equal(replies, 210);
        redisReaderFree(hr);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_types),
        cmocka_unit_test(test_not_resp),
        cmocka_unit_test(test_stream_against_hiredis),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
