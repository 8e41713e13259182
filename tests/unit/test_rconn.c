/*
 * test_rconn.c - what td_rconn makes of a refusing Redis, without a server:
 * the replies and messages each refusal comes as (Redis 2.x to 7.x) and what
 * td_redis_advice tells the operator for each, and the process-wide
 * authentication state that replies feed (td_rconn_note_*): failing while
 * any connection's last reply was an authentication error, every such reply
 * counted, a good reply or the end of the connection clearing it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "td_rconn.h"

static td_rrefusal kind(const char *s) { return td_rconn_refusal(s, strlen(s)); }

static void test_refusals(void **state) {
    (void)state;
    static const struct {
        const char *text;
        td_rrefusal want;
    } cases[] = {
        {"NOAUTH Authentication required.", TD_RREFUSE_NOAUTH},
        {"redis: HGETALL touchd:p:{touchd:start-check}: NOAUTH Authentication required.",
         TD_RREFUSE_NOAUTH},
        {"ERR Protocol error: unauthenticated multibulk length", TD_RREFUSE_NOAUTH},
        {"WRONGPASS invalid username-password pair or user is disabled.", TD_RREFUSE_WRONGPASS},
        {"ERR invalid password", TD_RREFUSE_WRONGPASS},
        {"ERR AUTH <password> called without any password configured for the default user. "
         "Are you sure your configuration is correct?",
         TD_RREFUSE_NOPASSWORD},
        {"ERR Client sent AUTH, but no password is set", TD_RREFUSE_NOPASSWORD},
        {"NOPERM this user has no permissions to access one of the keys used as arguments",
         TD_RREFUSE_NOPERM},
        {"ERR max number of clients reached", TD_RREFUSE_MAXCLIENTS},
        {"redis 127.0.0.1:6379: HGETALL: connection lost before any reply on a new connection "
         "(is Redis refusing connections? maxclients: INFO clients)",
         TD_RREFUSE_MAXCLIENTS},
        {"WRONGTYPE Operation against a key holding the wrong kind of value", TD_RREFUSE_NONE},
        {"redis 127.0.0.1:6379: connect failed: Connection refused", TD_RREFUSE_NONE},
        {"", TD_RREFUSE_NONE},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        if (kind(cases[i].text) != cases[i].want)
            fail_msg("case %zu (%s): got %s", i, cases[i].text,
                     td_rconn_refusal_code(kind(cases[i].text)));
    assert_int_equal(td_rconn_refusal(NULL, 0), TD_RREFUSE_NONE);
    /* only the credentials count as authentication errors */
    assert_true(td_rconn_refusal_is_auth(TD_RREFUSE_NOAUTH));
    assert_true(td_rconn_refusal_is_auth(TD_RREFUSE_WRONGPASS));
    assert_true(td_rconn_refusal_is_auth(TD_RREFUSE_NOPASSWORD));
    assert_false(td_rconn_refusal_is_auth(TD_RREFUSE_NOPERM));
    assert_false(td_rconn_refusal_is_auth(TD_RREFUSE_MAXCLIENTS));
}

/* Each code and fix names what to change, by its configuration key. */
static void test_advice(void **state) {
    (void)state;
    static const char *const cases[][3] = {
        {"NOAUTH Authentication required.", "NOAUTH", "set redis.password"},
        {"WRONGPASS invalid username-password pair", "WRONGPASS", "redis.username"},
        {"ERR Client sent AUTH, but no password is set", "AUTH_WITHOUT_PASSWORD",
         "remove redis.password"},
        {"NOPERM this user has no permissions", "NOPERM", "redis.username"},
        {"ERR max number of clients reached", "MAXCLIENTS", "maxclients"},
        {"connect failed: Connection refused", "-", "redis.host"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const char *code = NULL;
        const char *fix = td_redis_advice(cases[i][0], &code);
        assert_string_equal(code, cases[i][1]);
        if (!strstr(fix, cases[i][2])) fail_msg("case %zu: fix '%s'", i, fix);
    }
    const char *code = NULL;
    assert_non_null(td_redis_advice(NULL, &code));
    assert_string_equal(code, "-");
}

static void err_reply(td_rconn *rc, const char *s) { td_rconn_note_error(rc, s, strlen(s)); }

static void test_auth_state(void **state) {
    (void)state;
    td_redis_conf conf;
    td_redis_conf_default(&conf);
    char e1[64], e2[64];
    td_rconn a, b;
    td_rconn_init(&a, &conf, "redis a", e1, sizeof e1);
    td_rconn_init(&b, &conf, "redis b", e2, sizeof e2);
    uint64_t base = td_redis_auth_errors();
    assert_false(td_redis_auth_failing());

    err_reply(&a, "WRONGTYPE Operation against a key holding the wrong kind of value");
    err_reply(&a, "NOPERM this user has no permissions");
    assert_false(td_redis_auth_failing()); /* not the credentials */
    assert_int_equal(td_redis_auth_errors(), base);

    err_reply(&a, "NOAUTH Authentication required.");
    err_reply(&a, "NOAUTH Authentication required."); /* a retry: counted, still one */
    err_reply(&b, "WRONGPASS invalid username-password pair");
    assert_true(td_redis_auth_failing());
    assert_int_equal(td_redis_auth_errors(), base + 3);

    td_rconn_note_ok(&a); /* a good reply on a; b still fails */
    assert_true(td_redis_auth_failing());
    err_reply(&b, "ERR unknown command"); /* an error, but an authenticated one */
    assert_false(td_redis_auth_failing());
    assert_int_equal(td_redis_auth_errors(), base + 3);

    /* a connection given up while failing leaves no trace */
    err_reply(&b, "NOAUTH Authentication required.");
    assert_true(td_redis_auth_failing());
    td_rconn_fini(&b);
    assert_false(td_redis_auth_failing());
    td_rconn_fini(&a);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_advice),
        cmocka_unit_test(test_auth_state),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
