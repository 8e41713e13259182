/*
 * test_expr.c - unit tests of the rules expression language (td_expr.h):
 * lexer, precedence, every type rule (accepted and rejected, with the code
 * and offset of the diagnostic), error recovery, "did you mean", every
 * function, missing values, ??, in, run-time errors, facts, conjuncts and
 * td_value_json.
 *
 * States are built with td_state_init and fields set directly; the schema is
 * the real one (td_state_schema.c), so these tests also pin the names rules
 * use.
 *
 * @locality test main thread.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "td_expr.h"
#include "td_time.h"

static td_state g_st;
static td_settings g_set;
static td_tzdb *g_tz;
static td_ctx g_ctx;

static td_ms T(const char *s) {
    td_ms t = 0;
    assert_int_equal(td_time_parse(s, strlen(s), &t), TD_OK);
    return t;
}

static int setup(void **state) {
    (void)state;
    td_state_init(&g_st, "p-42");
    td_settings_default(&g_set);
    if (!g_tz) g_tz = td_tzdb_new();
    memset(&g_ctx, 0, sizeof g_ctx);
    g_ctx.st = &g_st;
    g_ctx.now = T("2026-11-23T10:15:00Z"); /* a Monday */
    g_ctx.tz = g_tz;
    g_ctx.settings = &g_set;
    return 0;
}
static int teardown(void **state) {
    (void)state;
    td_state_free(&g_st);
    return 0;
}

static void dump(const char *src, const td_expr_diags *d) {
    for (size_t i = 0; i < d->n; i++)
        print_message("  [%s] %s @%u+%u: %s\n", src, d->v[i].code, d->v[i].offset, d->v[i].length,
                      d->v[i].msg);
}

static td_expr *ok_s(const char *src, int scopes, td_type want) {
    td_expr_diags d = {0};
    td_expr *e = td_expr_compile(src, strlen(src), scopes, want, &d);
    if (!e) {
        print_message("expected '%s' to compile:\n", src);
        dump(src, &d);
    }
    assert_non_null(e);
    assert_int_equal(d.n, 0);
    td_expr_diags_free(&d);
    return e;
}
static td_expr *ok(const char *src) { return ok_s(src, TD_FIELD_EVENT, TD_T_NONE); }

/* Compiles src expecting failure with a diagnostic `code` at `offset` (among
 * possibly others); returns the number of diagnostics. */
static size_t err_s(const char *src, int scopes, td_type want, const char *code, uint32_t offset) {
    td_expr_diags d = {0};
    td_expr *e = td_expr_compile(src, strlen(src), scopes, want, &d);
    assert_null(e);
    bool found = false;
    for (size_t i = 0; i < d.n; i++) {
        assert_true(d.v[i].length >= 1);
        assert_true(d.v[i].offset <= strlen(src));
        assert_true(d.v[i].msg[0] != '\0');
        if (!strcmp(d.v[i].code, code) && d.v[i].offset == offset) found = true;
    }
    if (!found) {
        print_message("expected %s at %u for '%s', got:\n", code, offset, src);
        dump(src, &d);
    }
    assert_true(found);
    size_t n = d.n;
    td_expr_diags_free(&d);
    return n;
}
static size_t err(const char *src, const char *code, uint32_t offset) {
    return err_s(src, TD_FIELD_EVENT, TD_T_NONE, code, offset);
}

/* The message of the first diagnostic with `code`, into buf. */
static void first_msg(const char *src, const char *code, char *buf, size_t cap) {
    td_expr_diags d = {0};
    td_expr *e = td_expr_compile(src, strlen(src), TD_FIELD_EVENT, TD_T_NONE, &d);
    assert_null(e);
    buf[0] = '\0';
    for (size_t i = 0; i < d.n; i++)
        if (!strcmp(d.v[i].code, code)) {
            td_strlcpy(buf, d.v[i].msg, cap);
            break;
        }
    td_expr_diags_free(&d);
    assert_true(buf[0] != '\0');
}

static td_value eval_ok(const char *src) {
    td_expr *e = ok(src);
    td_value v;
    char errbuf[160];
    int rc = td_expr_eval(e, &g_ctx, &v, errbuf, sizeof errbuf);
    if (rc != TD_OK) print_message("eval '%s': %s\n", src, errbuf);
    assert_int_equal(rc, TD_OK);
    assert_int_equal(v.type, td_expr_type(e));
    td_expr_free(e);
    return v;
}
static void is_true(const char *src) {
    td_value v = eval_ok(src);
    assert_int_equal(v.type, TD_T_BOOL);
    if (v.missing || !v.u.b) print_message("expected true: %s\n", src);
    assert_false(v.missing);
    assert_true(v.u.b);
}
static void is_false(const char *src) {
    td_value v = eval_ok(src);
    assert_int_equal(v.type, TD_T_BOOL);
    if (v.u.b) print_message("expected false: %s\n", src);
    assert_false(v.u.b && !v.missing);
}
static int64_t ival(const char *src, td_type t) {
    td_value v = eval_ok(src);
    assert_int_equal(v.type, t);
    assert_false(v.missing);
    return v.u.i;
}
static void is_missing(const char *src) {
    td_value v = eval_ok(src);
    assert_true(v.missing);
}
/* A string value borrows from the expression: check it before freeing. */
static void str_is(const char *src, const char *want) {
    td_expr *e = ok(src);
    td_value v;
    assert_int_equal(td_expr_eval(e, &g_ctx, &v, NULL, 0), TD_OK);
    assert_int_equal(v.type, TD_T_STR);
    assert_int_equal(v.u.s.n, strlen(want));
    assert_memory_equal(v.u.s.p, want, v.u.s.n);
    td_expr_free(e);
}
static void run_err(const char *src, const char *needle) {
    td_expr *e = ok(src);
    td_value v;
    char errbuf[160];
    int rc = td_expr_eval(e, &g_ctx, &v, errbuf, sizeof errbuf);
    if (rc != TD_ERR) print_message("'%s' evaluated without an error\n", src);
    assert_int_equal(rc, TD_ERR);
    if (!strstr(errbuf, needle))
        print_message("'%s': error '%s' lacks '%s'\n", src, errbuf, needle);
    assert_non_null(strstr(errbuf, needle));
    assert_true(v.missing);
    td_expr_free(e);
}

/* ---------------------------------------------------------------- lexer */

static void test_lexer_literals(void **state) {
    (void)state;
    assert_int_equal(ival("42", TD_T_INT), 42);
    assert_int_equal(ival("9223372036854775807", TD_T_INT), INT64_MAX);
    assert_int_equal(ival("12.5", TD_T_DEC), 125000);
    assert_int_equal(ival("0.003", TD_T_DEC), 30);
    assert_int_equal(ival("1.0001", TD_T_DEC), 10001);
    assert_int_equal(ival("-2.25", TD_T_DEC), -22500);
    assert_int_equal(ival("72h", TD_T_DUR), 72 * TD_HOUR);
    assert_int_equal(ival("3d", TD_T_DUR), 3 * TD_DAY);
    assert_int_equal(ival("2w", TD_T_DUR), 2 * TD_WEEK);
    assert_int_equal(ival("30m", TD_T_DUR), 30 * TD_MINUTE);
    assert_int_equal(ival("45s", TD_T_DUR), 45 * TD_SECOND);
    assert_int_equal(ival("500ms", TD_T_DUR), 500);
    assert_int_equal(ival("1h30m", TD_T_DUR), 90 * TD_MINUTE);
    assert_int_equal(ival("-2h", TD_T_DUR), -2 * TD_HOUR);
    assert_int_equal(ival("now", TD_T_TIME), g_ctx.now);
    is_true("true");
    is_false("false");

    str_is("'it\\'s \"x\"'", "it's \"x\"");
    str_is("\"a\\nb\\\\c\\\"\"", "a\nb\\c\"");
    str_is("\"\"", "");
    str_is("'caf\xc3\xa9'", "caf\xc3\xa9");

    /* names: dotted, segments may start with a digit */
    g_st.touch_ring[0] = g_ctx.now - TD_HOUR;
    g_st.touch_count = 1;
    g_st.touch_head = 1;
    assert_int_equal(ival("touches.7d", TD_T_INT), 1);
    assert_int_equal(ival("  touches.1d\t+\n1 ", TD_T_INT), 2);
    /* operators without spaces */
    is_true("1<2&&2>=2&&!(1>2)&&1!=2&&3<=3&&2==2");
}

static void test_lexer_errors(void **state) {
    (void)state;
    err("12.34567", "E208", 0);
    err("tier > 3x", "E208", 7);
    err("1.5h", "E208", 0);
    err("99999999999999999999", "E208", 0);
    err("sector == \"abc", "E208", 10);
    err("sector == 'a\\qb'", "E208", 12);
    err("tier = 1", "E207", 5);
    err("replied & replied", "E207", 8);
    err("replied | replied", "E207", 8);
    err("tier ? 1", "E207", 5);
    err("tier @ 1", "E207", 5);
    err("tier == 1 # x", "E207", 10);
    err("\"\xc3\xa9\" == é", "E207", 8);
    /* offsets are bytes, spans cover the token */
    td_expr_diags d = {0};
    assert_null(td_expr_compile("tier == 1 && bogus.name", 23, 0, TD_T_BOOL, &d));
    assert_int_equal(d.n, 1);
    assert_string_equal(d.v[0].code, "E201");
    assert_int_equal(d.v[0].offset, 13);
    assert_int_equal(d.v[0].length, 10);
    td_expr_diags_free(&d);
}

/* ---------------------------------------------------------------- parser */

static void test_precedence(void **state) {
    (void)state;
    assert_int_equal(ival("1 + 2 * 3", TD_T_INT), 7);
    assert_int_equal(ival("(1 + 2) * 3", TD_T_INT), 9);
    assert_int_equal(ival("10 - 2 - 3", TD_T_INT), 5); /* left associative */
    assert_int_equal(ival("100 / 10 / 5", TD_T_INT), 2);
    assert_int_equal(ival("-2 * 3", TD_T_INT), -6);
    assert_int_equal(ival("- (2 + 3)", TD_T_INT), -5);
    assert_int_equal(ival("--3", TD_T_INT), 3);
    assert_int_equal(ival("- 5", TD_T_INT), -5);
    assert_int_equal(ival("- -9223372036854775807", TD_T_INT), INT64_MAX);
    is_true("tier ?? 0 in [- 1, 0]");
    is_true("true || false && false"); /* && binds tighter than || */
    is_false("(true || false) && false");
    is_false("!false && false"); /* ! binds tighter than && */
    is_true("1 < 2 == true");    /* comparison before equality */
    is_true("2 in [1, 2] && true");
    is_true("1 + 1 in [2]");       /* + before in */
    is_true("tier ?? 2 + 1 == 3"); /* ?? looser than +, tighter than == */
    is_true("tier ?? 1 < 2");
    assert_int_equal(ival("7 / 2", TD_T_INT), 3); /* truncation */
    assert_int_equal(ival("-7 / 2", TD_T_INT), -3);
    is_true("(((1)) == (1))");
}

static void test_syntax_errors(void **state) {
    (void)state;
    err("", "E207", 0);
    err("   ", "E207", 0);
    err("(tier == 1", "E207", 10);
    err("tier == 1)", "E207", 9);
    err("tier in 1", "E207", 8);
    err("tier in [1, 2", "E207", 13);
    err("tier tier", "E207", 5);
    err("since(now", "E207", 9);
    err("tier == ", "E207", 8);
    err("* 2", "E207", 0);
    err("[1]", "E207", 0);
    /* recovery: both holes reported, and the unknown name after them */
    assert_true(err("tier == && replied == || nope", "E207", 8) >= 3);
    err("tier == && replied == || nope", "E207", 22);
    err("tier == && replied == || nope", "E201", 25);
    err("tier == , replied", "E207", 8);
}

static void test_too_complex(void **state) {
    (void)state;
    char buf[4096];
    size_t n = 0;
    for (int i = 0; i < 300; i++)
        buf[n++] = '(';
    buf[n++] = '1';
    for (int i = 0; i < 300; i++)
        buf[n++] = ')';
    buf[n] = '\0';
    err(buf, "E210", 100);
    n = 0;
    for (int i = 0; i < 600; i++)
        buf[n++] = '!';
    memcpy(buf + n, "true", 5);
    err(buf, "E210", 100);
    n = 0;
    for (int i = 0; i < 400; i++) {
        memcpy(buf + n, "1+", 2);
        n += 2;
    }
    memcpy(buf + n, "1", 2);
    assert_true(err(buf, "E210", 0) >= 1);
    /* a long but shallow expression is fine: 150 conjuncts */
    n = 0;
    for (int i = 0; i < 150; i++) {
        memcpy(buf + n, "true&&", 6);
        n += 6;
    }
    memcpy(buf + n, "true", 5);
    td_expr *e = ok(buf);
    assert_int_equal(td_expr_conjuncts(e), 151);
    td_expr_free(e);
    char *big = malloc(20000);
    memset(big, ' ', 20000);
    big[0] = '1';
    td_expr_diags d = {0};
    assert_null(td_expr_compile(big, 20000, 0, TD_T_NONE, &d));
    assert_string_equal(d.v[0].code, "E210");
    td_expr_diags_free(&d);
    free(big);
}

/* ---------------------------------------------------------------- types */

static void test_types_accepted(void **state) {
    (void)state;
    static const struct {
        const char *src;
        td_type t;
    } cases[] = {
        {"now - email.last_sent_at", TD_T_DUR},
        {"now + 2h", TD_T_TIME},
        {"2h + now", TD_T_TIME},
        {"now - 3d", TD_T_TIME},
        {"2h - 30m", TD_T_DUR},
        {"2h + 30m", TD_T_DUR},
        {"2h * 3", TD_T_DUR},
        {"3 * 2h", TD_T_DUR},
        {"2h / 2", TD_T_DUR},
        {"-2h", TD_T_DUR},
        {"-tier", TD_T_INT},
        {"-lifetime_value_eur", TD_T_DEC},
        {"1 + 2.5", TD_T_DEC},
        {"2.5 - 1", TD_T_DEC},
        {"tier * 1.5", TD_T_DEC},
        {"tier / 2.0", TD_T_DEC},
        {"tier * 2", TD_T_INT},
        {"lifetime_value_eur > 1000", TD_T_BOOL},
        {"1000 <= lifetime_value_eur", TD_T_BOOL},
        {"sector < \"m\"", TD_T_BOOL},
        {"sector == 'saas'", TD_T_BOOL},
        {"replied == false", TD_T_BOOL},
        {"replied != email.blocked", TD_T_BOOL},
        {"now > email.last_sent_at", TD_T_BOOL},
        {"since(email.last_sent_at) >= 72h", TD_T_BOOL},
        {"tier ?? 1", TD_T_INT},
        {"tier ?? 1.5", TD_T_DEC},
        {"lifetime_value_eur ?? 0", TD_T_DEC},
        {"email.last_sent_at ?? now", TD_T_TIME},
        {"sector ?? \"none\"", TD_T_STR},
        {"tier in [1, 2]", TD_T_BOOL},
        {"tier in [1, 2.5]", TD_T_BOOL},
        {"lifetime_value_eur in [1, 2.5]", TD_T_BOOL},
        {"since(now) in [0s, 1h]", TD_T_BOOL},
        {"stage in [\"won\", \"lost\"]", TD_T_BOOL},
        {"replied in [true]", TD_T_BOOL},
        {"tier in [-1, 0,]", TD_T_BOOL},
        {"!replied && (email.sent > 0 || sms.sent > 0)", TD_T_BOOL},
        {"event.kind == \"follow_up\"", TD_T_BOOL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        td_expr *e = ok(cases[i].src);
        if (td_expr_type(e) != cases[i].t) print_message("type of %s\n", cases[i].src);
        assert_int_equal(td_expr_type(e), cases[i].t);
        size_t len;
        assert_string_equal(td_expr_source(e, &len), cases[i].src);
        assert_int_equal(len, strlen(cases[i].src));
        td_expr_free(e);
    }
}

static void test_types_rejected(void **state) {
    (void)state;
    static const struct {
        const char *src;
        const char *code;
        uint32_t off;
    } cases[] = {
        {"now + now", "E203", 4},
        {"1 + \"a\"", "E203", 2},
        {"sector + sector", "E203", 7},
        {"now - 3", "E203", 4},
        {"now + 3", "E203", 4},
        {"3d - now", "E203", 3},
        {"2h * 1.5", "E203", 3},
        {"2h * 2h", "E203", 3},
        {"2h / 2h", "E203", 3},
        {"2 / 2h", "E203", 2},
        {"now * 2", "E203", 4},
        {"replied + 1", "E203", 8},
        {"replied < true", "E203", 8},
        {"tier == \"1\"", "E203", 5},
        {"email.last_sent_at > 72h", "E203", 19},
        {"since(now) > 3", "E203", 11},
        {"tier && replied", "E203", 0},
        {"replied || tier", "E203", 11},
        {"!tier", "E203", 0},
        {"-replied", "E203", 0},
        {"-sector", "E203", 0},
        {"-now", "E203", 0},
        {"tier ?? \"x\"", "E203", 5},
        {"now ?? 2h", "E203", 4},
        {"sector < 3", "E203", 7},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        assert_int_equal(err(cases[i].src, cases[i].code, cases[i].off), 1);
}

static void test_result_type(void **state) {
    (void)state;
    err_s("tier", 0, TD_T_BOOL, "E206", 0);
    err_s("email.unanswered + 1", 0, TD_T_BOOL, "E206", 0);
    err_s("72h", 0, TD_T_TIME, "E206", 0);
    err_s("now > 1h + now", 0, TD_T_TIME, "E206", 0);
    char m[200];
    td_expr_diags d = {0};
    assert_null(td_expr_compile("2h", 2, 0, TD_T_TIME, &d));
    td_strlcpy(m, d.v[0].msg, sizeof m);
    td_expr_diags_free(&d);
    assert_non_null(strstr(m, "now + 2h"));
    td_expr *e = ok_s("best_time(now + 1h)", 0, TD_T_TIME);
    td_expr_free(e);
    e = ok_s("tier ?? 2", 0, TD_T_DEC); /* an int is accepted where a decimal is wanted */
    assert_int_equal(td_expr_type(e), TD_T_DEC);
    td_value v;
    assert_int_equal(td_expr_eval(e, &g_ctx, &v, NULL, 0), TD_OK);
    assert_int_equal(v.u.d, 2 * TD_DEC_SCALE);
    td_expr_free(e);
}

static void test_in_lists(void **state) {
    (void)state;
    err("tier in [1, tier]", "E209", 12);
    err("tier in [1, 1 + 1]", "E209", 12);
    err("sector in [1]", "E209", 11);
    err("tier in [\"1\"]", "E209", 9);
    err("tier in []", "E209", 5);
    err("now in [1h]", "E209", 8);
    g_st.tier = 2;
    is_true("tier in [1, 2]");
    is_false("tier in [1, 3]");
    is_true("tier in [1.5, 2.0]");
    is_false("tier in [2.5]");
    g_st.lifetime_value_eur = 25000; /* 2.5 */
    is_true("lifetime_value_eur in [2.5]");
    is_false("lifetime_value_eur in [2]");
    td_strlcpy(g_st.sector, "saas", sizeof g_st.sector);
    is_true("sector in ['retail', \"saas\"]");
    is_false("sector in ['saa', 'saasy']");
    is_true("-2 in [-2]");
    is_true("since(now - 1h) in [1h, 2h]");
    is_true("replied in [false]");
    g_st.tier = TD_INT_MISSING;
    is_false("tier in [1, 2]"); /* missing: false */
}

/* ---------------------------------------------------------------- names */

static void test_unknown_names(void **state) {
    (void)state;
    char m[200];
    first_msg("emial.unanswered > 1", "E201", m, sizeof m);
    assert_non_null(strstr(m, "did you mean 'email.unanswered'"));
    first_msg("email.unanswerd > 1", "E201", m, sizeof m);
    assert_non_null(strstr(m, "'email.unanswered'"));
    first_msg("tierr == 1", "E201", m, sizeof m);
    assert_non_null(strstr(m, "'tier'"));
    first_msg("unanswered > 1", "E201", m, sizeof m);
    assert_non_null(strstr(m, ".unanswered'"));
    first_msg("completely_unrelated_thing > 1", "E201", m, sizeof m);
    assert_non_null(strstr(m, "docs/state.md"));
    first_msg("since > 1h", "E201", m, sizeof m);
    assert_non_null(strstr(m, "function"));
    first_msg("sinse(now) > 1h", "E204", m, sizeof m);
    assert_non_null(strstr(m, "did you mean 'since'"));
    first_msg("tier(1)", "E204", m, sizeof m);
    assert_non_null(strstr(m, "field"));
    err("frobnicate(now)", "E204", 0);
    /* every error, not only the first */
    static const char *multi = "emial.sent > 2 && tier == \"x\" && foo(1) && since(3) && x.y";
    assert_int_equal(err(multi, "E201", 0), 5);
    err(multi, "E203", 23);
    err(multi, "E204", 33);
    err(multi, "E205", 49);
    err(multi, "E201", 55);
    /* unknown names inside a syntax error's neighbourhood are still reported */
    assert_int_equal(err("nope1 = nope2", "E207", 6), 3);
}

static void test_scopes(void **state) {
    (void)state;
    char m[200];
    err_s("rec.channel == \"email\"", TD_FIELD_EVENT, TD_T_BOOL, "E202", 0);
    td_expr_diags d = {0};
    assert_null(td_expr_compile("target.sent > 1", 15, TD_FIELD_EVENT, TD_T_BOOL, &d));
    td_strlcpy(m, d.v[0].msg, sizeof m);
    td_expr_diags_free(&d);
    assert_non_null(strstr(m, "guard's block"));
    td_expr_free(ok_s("rec.channel == \"email\" && target.sent > 1",
                      TD_FIELD_EVENT | TD_FIELD_GUARD, TD_T_BOOL));
    err_s("event.kind == \"x\"", 0, TD_T_BOOL, "E202", 0);
    td_expr_free(ok_s("event.kind == \"x\"", TD_FIELD_EVENT, TD_T_BOOL));
    td_expr_free(ok_s("tier == 1", 0, TD_T_BOOL)); /* TD_FIELD_ANY: always */
}

/* ---------------------------------------------------------------- functions */

static void test_functions(void **state) {
    (void)state;
    g_st.ch[TD_CH_EMAIL].last_sent_at = g_ctx.now - 80 * TD_HOUR;
    assert_int_equal(ival("since(email.last_sent_at)", TD_T_DUR), 80 * TD_HOUR);
    is_true("since(email.last_sent_at) >= 72h");
    is_missing("since(sms.last_sent_at)");
    is_false("since(sms.last_sent_at) >= 72h");

    /* local time: UTC by default, the prospect's zone when set */
    assert_int_equal(ival("local_hour(now)", TD_T_INT), 10);
    assert_int_equal(ival("weekday(now)", TD_T_INT), 1);
    assert_int_equal(ival("weekday(now - 1d)", TD_T_INT), 7);
    assert_int_equal(ival("month(now)", TD_T_INT), 11);
    assert_int_equal(ival("year(now)", TD_T_INT), 2026);
    td_strlcpy(g_st.timezone, "Asia/Tokyo", sizeof g_st.timezone); /* UTC+9 */
    assert_int_equal(ival("local_hour(now)", TD_T_INT), 19);
    assert_int_equal(ival("local_hour(now + 5h)", TD_T_INT), 0);
    assert_int_equal(ival("weekday(now + 5h)", TD_T_INT), 2);
    g_st.timezone[0] = '\0';
    td_strlcpy(g_set.default_timezone, "America/New_York", sizeof g_set.default_timezone);
    assert_int_equal(ival("local_hour(now)", TD_T_INT), 5);
    td_strlcpy(g_set.default_timezone, "Not/AZone", sizeof g_set.default_timezone);
    assert_int_equal(ival("local_hour(now)", TD_T_INT), 10); /* unknown zone: UTC */
    td_strlcpy(g_set.default_timezone, "UTC", sizeof g_set.default_timezone);
    assert_int_equal(ival("year(now - 400d)", TD_T_INT), 2025);
    assert_int_equal(ival("month(now + 40d)", TD_T_INT), 1);
    is_missing("local_hour(email.last_replied_at)");

    /* touches_within */
    g_st.touch_ring[0] = g_ctx.now - 3 * TD_DAY;
    g_st.touch_ring[1] = g_ctx.now - 2 * TD_HOUR;
    g_st.touch_count = 2;
    g_st.touch_head = 2;
    assert_int_equal(ival("touches_within(1d)", TD_T_INT), 1);
    assert_int_equal(ival("touches_within(1w)", TD_T_INT), 2);
    assert_int_equal(ival("touches.7d", TD_T_INT), 2);

    /* has */
    is_false("has(tier)");
    is_true("has(email.last_sent_at)");
    is_true("has(now)");
    is_false("has(tier + 1)");
    g_st.tier = 1;
    is_true("has(tier)");

    /* min / max / abs */
    assert_int_equal(ival("min(3, 5)", TD_T_INT), 3);
    assert_int_equal(ival("max(3, 5)", TD_T_INT), 5);
    assert_int_equal(ival("max(3, 2.5)", TD_T_DEC), 30000);
    assert_int_equal(ival("min(1h, 30m)", TD_T_DUR), 30 * TD_MINUTE);
    assert_int_equal(ival("max(now, now + 1h)", TD_T_TIME), g_ctx.now + TD_HOUR);
    assert_int_equal(ival("min(-1, -1)", TD_T_INT), -1);
    is_missing("min(tier, lifetime_value_eur)");
    assert_int_equal(ival("abs(-3)", TD_T_INT), 3);
    assert_int_equal(ival("abs(-2.5)", TD_T_DEC), 25000);
    assert_int_equal(ival("abs(email.last_sent_at - now)", TD_T_DUR), 80 * TD_HOUR);
    assert_int_equal(ival("abs(4)", TD_T_INT), 4);

    /* wrong arity or argument types: E205, naming the function */
    char m[200];
    first_msg("since(1h) > 1h", "E205", m, sizeof m);
    assert_non_null(strstr(m, "since(time) -> duration"));
    err("since(1h)", "E205", 6);
    err("since()", "E205", 0);
    err("since(now, now)", "E205", 0);
    err("local_hour(3)", "E205", 11);
    err("weekday(\"mon\")", "E205", 8);
    err("month(1h)", "E205", 6);
    err("year(true)", "E205", 5);
    err("best_time(1h)", "E205", 10);
    err("touches_within(now)", "E205", 15);
    err("touches_within(3)", "E205", 15);
    err("has()", "E205", 0);
    err("min(1)", "E205", 0);
    err("max(now, 1h)", "E205", 0);
    err("min(1, \"a\")", "E205", 7);
    err("abs(now)", "E205", 4);
    err("abs(\"x\")", "E205", 4);
    err("has(nope)", "E201", 4);
}

static void test_best_time(void **state) {
    (void)state;
    /* few points: the default hour (10) on a weekday; UTC */
    static const struct {
        const char *t, *want;
    } cases[] = {
        {"2026-11-23T08:00:00Z", "2026-11-23T10:00:00Z"}, /* Monday before 10 */
        {"2026-11-23T10:30:00Z", "2026-11-23T10:30:00Z"}, /* inside the hour: t */
        {"2026-11-23T10:00:00Z", "2026-11-23T10:00:00Z"},
        {"2026-11-23T11:00:00Z", "2026-11-24T10:00:00Z"}, /* passed: next day */
        {"2026-11-27T12:00:00Z", "2026-11-30T10:00:00Z"}, /* Friday -> Monday */
        {"2026-11-28T10:30:00Z", "2026-11-30T10:00:00Z"}, /* Saturday */
        {"2026-11-29T09:00:00Z", "2026-11-30T10:00:00Z"}, /* Sunday */
        {"2026-12-31T23:00:00Z", "2027-01-01T10:00:00Z"}, /* year end, Friday */
    };
    char buf[64];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(buf, sizeof buf, "best_time(now)");
        g_ctx.now = T(cases[i].t);
        int64_t got = ival(buf, TD_T_TIME);
        if (got != T(cases[i].want)) {
            char g[40];
            td_time_format(got, g, sizeof g);
            print_message("best_time(%s) = %s, want %s\n", cases[i].t, g, cases[i].want);
        }
        assert_int_equal(got, T(cases[i].want));
    }
    /* enough points: the most engaged business hour (ties: earliest) */
    g_ctx.now = T("2026-11-23T08:00:00Z");
    g_st.hour_hist[14] = 3;
    g_st.hour_hist[16] = 3;
    g_st.hour_hist[3] = 50; /* outside business hours: ignored */
    assert_int_equal(ival("best_time(now)", TD_T_TIME), T("2026-11-23T14:00:00Z"));
    g_st.hour_hist[16] = 4;
    assert_int_equal(ival("best_time(now)", TD_T_TIME), T("2026-11-23T16:00:00Z"));
    /* no business-hour point at all: default hour */
    memset(g_st.hour_hist, 0, sizeof g_st.hour_hist);
    g_st.hour_hist[3] = 50;
    assert_int_equal(ival("best_time(now)", TD_T_TIME), T("2026-11-23T10:00:00Z"));
    /* below the threshold: default, even with a clear favourite */
    memset(g_st.hour_hist, 0, sizeof g_st.hour_hist);
    g_st.hour_hist[15] = 4;
    assert_int_equal(ival("best_time(now)", TD_T_TIME), T("2026-11-23T10:00:00Z"));
    g_set.best_time_min_points = 4;
    assert_int_equal(ival("best_time(now)", TD_T_TIME), T("2026-11-23T15:00:00Z"));
    g_set.best_time_min_points = 5;
    /* in the prospect's zone: 10:00 Paris is 09:00Z in winter */
    td_strlcpy(g_st.timezone, "Europe/Paris", sizeof g_st.timezone);
    assert_int_equal(ival("best_time(now)", TD_T_TIME), T("2026-11-23T09:00:00Z"));
    g_ctx.now = T("2026-11-23T09:30:00Z"); /* 10:30 Paris: inside */
    assert_int_equal(ival("best_time(now)", TD_T_TIME), g_ctx.now);
    /* Sunday 23:30Z is Monday 00:30 Paris: same Monday 10:00 */
    g_ctx.now = T("2026-11-22T23:30:00Z");
    assert_int_equal(ival("best_time(now)", TD_T_TIME), T("2026-11-23T09:00:00Z"));
    /* DST: Friday 2026-03-27 11:00 Paris -> Monday 30 March 10:00 CEST = 08:00Z */
    g_ctx.now = T("2026-03-27T10:00:00Z");
    assert_int_equal(ival("best_time(now)", TD_T_TIME), T("2026-03-30T08:00:00Z"));
    /* no settings: the defaults */
    g_ctx.settings = NULL;
    g_st.timezone[0] = '\0';
    g_ctx.now = T("2026-11-23T08:00:00Z");
    assert_int_equal(ival("best_time(now + 1h)", TD_T_TIME), T("2026-11-23T10:00:00Z"));
    g_ctx.settings = &g_set;
    is_missing("best_time(email.last_replied_at)");
    /* far out of the calendar: an error, not a crash */
    run_err("best_time(now + 2w * 600000)", "out of range");
    run_err("local_hour(now - 2w * 600000)", "out of range");
}

/* ---------------------------------------------------------------- missing */

static void test_missing(void **state) {
    (void)state;
    /* tier, lifetime_value_eur, sector, timestamps: all missing in a fresh state */
    is_false("tier == 1");
    is_false("tier != 1");
    is_false("tier < 1");
    is_false("1 > tier");
    is_true("!(tier == 1)");
    is_missing("tier + 1");
    is_missing("tier * 2.5");
    is_missing("-tier");
    is_missing("abs(tier)");
    is_missing("email.last_sent_at + 1h");
    is_missing("now - email.last_sent_at");
    is_false("since(email.last_sent_at) > 1h");
    is_false("since(email.last_sent_at) <= 1h");
    is_false("sector == \"\"");
    is_false("sector < \"z\"");
    /* a missing bool is false in && || ! */
    is_missing("email.consent");
    is_true("email.consent || true");
    is_false("email.consent || false");
    is_false("email.consent && true");
    is_true("!email.consent");
    is_false("email.consent == false");
    /* ?? */
    assert_int_equal(ival("tier ?? 7", TD_T_INT), 7);
    assert_int_equal(ival("tier ?? lifetime_value_eur ?? 3", TD_T_DEC), 3 * TD_DEC_SCALE);
    is_missing("tier ?? lifetime_value_eur");
    assert_int_equal(ival("email.last_sent_at ?? now", TD_T_TIME), g_ctx.now);
    is_true("(email.consent ?? true) == true");
    str_is("sector ?? 'none'", "none");
    g_st.tier = 2;
    assert_int_equal(ival("tier ?? 7", TD_T_INT), 2);
    assert_int_equal(ival("tier ?? 7.5", TD_T_DEC), 2 * TD_DEC_SCALE);
    is_true("tier != 1");
    g_st.ch[TD_CH_EMAIL].consent = TD_TRI_YES;
    is_true("email.consent ?? false");
}

/* ---------------------------------------------------------------- run time */

static void test_runtime_errors(void **state) {
    (void)state;
    run_err("1 / 0", "division by zero in '1 / 0'");
    run_err("1 / (2 - 2) > 0", "division by zero");
    run_err("1.5 / 0.0", "division by zero");
    run_err("2h / 0", "division by zero");
    run_err("9223372036854775807 + 1", "overflow");
    run_err("-9223372036854775807 - 2", "overflow");
    run_err("9223372036854775807 * 2", "overflow");
    run_err("(-9223372036854775807 - 1) / -1", "overflow");
    run_err("-(-9223372036854775807 - 1)", "overflow");
    run_err("abs(-9223372036854775807 - 1)", "overflow");
    run_err("2w * 9223372036854775807", "overflow");
    run_err("now + 2w * 1000000000000", "overflow");
    run_err("900000000000000 * 2.0", "overflow");
    run_err("900000000000.0 * 900000000000.0", "overflow");
    run_err("(922337203685477 + 1) * 1.0", "overflow"); /* int -> decimal at run time */
    err("922337203685478 in [1.5]", "E208", 0);         /* int -> decimal at compile time */
    /* errors inside a short-circuited branch never happen */
    is_false("false && 1 / 0 == 1");
    is_true("true || 1 / 0 == 1");
    assert_int_equal(ival("1 ?? 1 / 0", TD_T_INT), 1);
    /* decimal arithmetic is exact, truncated toward zero */
    assert_int_equal(ival("1.5 * 1.5", TD_T_DEC), 22500);
    assert_int_equal(ival("10 / 3.0", TD_T_DEC), 33333);
    assert_int_equal(ival("-10 / 3.0", TD_T_DEC), -33333);
    assert_int_equal(ival("0.0001 * 0.5", TD_T_DEC), 0);
    assert_int_equal(ival("900000000000.0 * 1000", TD_T_DEC), INT64_C(9000000000000000000));
    /* NULL err buffer is fine */
    td_expr *e = ok("1 / 0");
    td_value v;
    assert_int_equal(td_expr_eval(e, &g_ctx, &v, NULL, 0), TD_ERR);
    td_expr_free(e);
}

/* ---------------------------------------------------------------- facts */

static const td_fact *fact(const td_facts *f, const char *name) {
    for (uint32_t i = 0; i < f->n; i++)
        if (!strcmp(f->v[i].field->name, name)) return &f->v[i];
    return NULL;
}

static void test_facts(void **state) {
    (void)state;
    g_st.ch[TD_CH_EMAIL].unanswered = 2;
    g_st.ch[TD_CH_EMAIL].opens_since_reply = 1;
    td_expr *e = ok("email.unanswered >= 2 && email.opens_since_reply >= 1 && !replied");
    td_facts fx = {.n = 0};
    g_ctx.facts = &fx;
    td_value v;
    assert_int_equal(td_expr_eval(e, &g_ctx, &v, NULL, 0), TD_OK);
    assert_true(v.u.b);
    assert_int_equal(fx.n, 3);
    assert_int_equal(fact(&fx, "email.unanswered")->value.u.i, 2);
    assert_int_equal(fact(&fx, "email.opens_since_reply")->value.u.i, 1);
    assert_false(fact(&fx, "replied")->value.u.b);
    td_expr_free(e);

    /* each field once; short-circuited fields not read */
    e = ok("tier == 1 || tier == 2 || sector == 'x'");
    fx.n = 0;
    assert_int_equal(td_expr_eval(e, &g_ctx, &v, NULL, 0), TD_OK);
    assert_int_equal(fx.n, 2);
    assert_true(fact(&fx, "tier")->value.missing);
    td_expr_free(e);
    e = ok("false && tier == 1");
    fx.n = 0;
    assert_int_equal(td_expr_eval(e, &g_ctx, &v, NULL, 0), TD_OK);
    assert_int_equal(fx.n, 0);
    td_expr_free(e);

    /* bounded by TD_FACTS_MAX */
    e = ok("email.sent + email.delivered + email.opened + email.clicked + email.replied + "
           "email.failed + sms.sent + sms.delivered + sms.opened + sms.clicked + sms.replied + "
           "sms.failed + call.sent + call.delivered + call.opened + call.clicked + call.replied + "
           "call.failed > 0");
    fx.n = 0;
    assert_int_equal(td_expr_eval(e, &g_ctx, &v, NULL, 0), TD_OK);
    assert_int_equal(fx.n, TD_FACTS_MAX);
    td_expr_free(e);
    g_ctx.facts = NULL;
}

/* ------------------------------------------------- specialised node forms */

static bool eval_bool(const char *src) {
    td_value v = eval_ok(src);
    assert_int_equal(v.type, TD_T_BOOL);
    return v.u.b && !v.missing;
}

/* `field == 'x'`, `!=`, `in` and `(field ?? 'x') ...` compile to one node
 * (an enum bit test for stage, gift_policy...): each must give what the
 * general form gives. `(f ?? f)` and `((f ?? 'x') ?? 'y')` are not fused. */
static void test_string_compare_forms(void **state) {
    (void)state;
    static const char *const pairs[][2] = {
        {"stage == 'won'", "(stage ?? stage) == 'won'"},
        {"'won' == stage", "'won' == (stage ?? stage)"},
        {"stage != 'won'", "(stage ?? stage) != 'won'"},
        {"stage in ['won', 'lost']", "(stage ?? stage) in ['won', 'lost']"},
        {"!(stage in ['won', 'lost'])", "!((stage ?? stage) in ['won', 'lost'])"},
        {"(stage ?? 'new') == 'new'", "((stage ?? 'new') ?? 'x') == 'new'"},
        {"(stage ?? 'new') in ['new', 'contacted']",
         "((stage ?? 'new') ?? 'x') in ['new', 'contacted']"},
        {"(stage ?? 'new') != 'won'", "((stage ?? 'new') ?? 'x') != 'won'"},
        {"stage == 'nonsense'", "(stage ?? stage) == 'nonsense'"},
        {"gift_policy == 'allowed'", "(gift_policy ?? gift_policy) == 'allowed'"},
        {"last_reply_sentiment == 'positive'",
         "(last_reply_sentiment ?? last_reply_sentiment) == 'positive'"},
        {"gifts.last_kind in ['card', 'book']",
         "(gifts.last_kind ?? gifts.last_kind) in ['card', 'book']"},
        {"country == 'FR'", "(country ?? country) == 'FR'"},
        {"sector in ['saas', 'retail']", "(sector ?? sector) in ['saas', 'retail']"},
        {"(sector ?? '') == ''", "((sector ?? '') ?? 'x') == ''"},
    };
    /* every stage, an unnamed code below 64 and one above (both missing) */
    const int stages[] = {TD_STAGE_NONE, 1, 2, 3, 4, 5, 6, 7, 9, 70};
    for (size_t s = 0; s < sizeof stages / sizeof *stages; s++) {
        g_st.stage = (td_stage)stages[s];
        g_st.gift_policy = (td_gift_policy)(s % 4);
        g_st.last_reply_sentiment = (td_sentiment)(s % 5);
        g_st.last_gift_kind = (td_gift_kind)(s % 8);
        td_strlcpy(g_st.country, s % 2 ? "FR" : "", sizeof g_st.country);
        td_strlcpy(g_st.sector, s % 3 ? "saas" : "", sizeof g_st.sector);
        for (size_t p = 0; p < sizeof pairs / sizeof *pairs; p++) {
            bool fused = eval_bool(pairs[p][0]), general = eval_bool(pairs[p][1]);
            if (fused != general)
                print_message("stage code %d: '%s' is %d, '%s' is %d\n", stages[s], pairs[p][0],
                              fused, pairs[p][1], general);
            assert_true(fused == general);
        }
    }
    g_st.stage = TD_STAGE_WON;
    assert_true(eval_bool("stage == 'won'"));
    assert_false(eval_bool("stage != 'won'"));
    g_st.stage = TD_STAGE_NONE;
    assert_false(eval_bool("stage == 'won'"));
    assert_false(eval_bool("stage != 'won'")); /* missing: every comparison is false */
    assert_true(eval_bool("(stage ?? 'new') == 'new'"));

    /* the fused form records its field as a fact, as the general form does */
    g_st.stage = TD_STAGE_WON;
    td_expr *e = ok("stage == 'won'");
    td_facts fx = {.n = 0};
    g_ctx.facts = &fx;
    td_value v;
    assert_int_equal(td_expr_eval(e, &g_ctx, &v, NULL, 0), TD_OK);
    g_ctx.facts = NULL;
    assert_true(v.u.b);
    assert_int_equal(fx.n, 1);
    assert_string_equal(fx.v[0].field->name, "stage");
    assert_int_equal(fx.v[0].value.u.s.n, 3);
    assert_memory_equal(fx.v[0].value.u.s.p, "won", 3);
    td_expr_free(e);
}

/* Fields read in place (E_FLD_*) give exactly what their getters give,
 * missing or not. */
static void test_direct_fields(void **state) {
    (void)state;
    g_st.tier = 2;
    g_st.ch[TD_CH_SMS].last_sent_at = T("2026-11-20T10:00:00Z");
    g_st.ch[TD_CH_EMAIL].unanswered = 3;
    g_st.lifetime_value_eur = 125000;
    g_st.meetings_held = INT64_MIN; /* a counter read back as anything stays present */
    size_t n, direct = 0;
    const td_field *fs = td_schema_fields(&n);
    for (size_t i = 0; i < n; i++) {
        size_t off;
        td_field_access a = td_field_direct(&fs[i], &off, NULL);
        if (a != TD_FA_I64 && a != TD_FA_I64_OPT) continue;
        direct++;
        td_value want, got = eval_ok(fs[i].name);
        td_field_read(&fs[i], &g_ctx, &want);
        if (got.missing != want.missing || got.u.i != want.u.i)
            print_message("field %s: got %d/%lld, getter %d/%lld\n", fs[i].name, got.missing,
                          (long long)got.u.i, want.missing, (long long)want.u.i);
        assert_int_equal(got.missing, want.missing);
        assert_true(got.u.i == want.u.i);
        assert_int_equal(got.type, fs[i].type);
    }
    assert_true(direct > 50); /* the per-channel counters and times, and more */
    size_t off;
    assert_int_equal(td_field_direct(td_schema_lookup("target.sent", 11), &off, NULL),
                     TD_FA_GETTER); /* the channel is the candidate's */
    assert_int_equal(td_field_direct(td_schema_lookup("touches.7d", 10), &off, NULL), TD_FA_GETTER);
}

/* && and || chains are evaluated in a loop: same results, same order, same
 * short-circuit (errors only from operands actually reached). */
static void test_logic_chains(void **state) {
    (void)state;
    for (int tier = 0; tier <= 4; tier++) {
        g_st.tier = tier ? tier : TD_INT_MISSING;
        bool t1 = tier == 1, t2 = tier == 2, t3 = tier == 3;
        assert_true(eval_bool("tier == 1 || tier == 2 || tier == 3") == (t1 || t2 || t3));
        assert_true(eval_bool("(tier == 1 || tier == 2) || tier == 3") == (t1 || t2 || t3));
        assert_true(eval_bool("tier == 1 || (tier == 2 || tier == 3)") == (t1 || t2 || t3));
        assert_true(eval_bool("tier >= 1 && tier <= 3 && tier != 2 && has(tier)") ==
                    (tier >= 1 && tier <= 3 && tier != 2));
        assert_true(eval_bool("(tier >= 1 && tier <= 3) && (tier != 2 && has(tier))") ==
                    (tier >= 1 && tier <= 3 && tier != 2));
        assert_true(eval_bool("tier == 1 || tier >= 2 && tier <= 3 || tier == 4") ==
                    (t1 || (tier >= 2 && tier <= 3) || tier == 4));
        assert_true(eval_bool("!(tier == 1 || tier == 2) && (tier ?? 0) < 4") ==
                    (!(t1 || t2) && tier < 4));
    }
    g_st.tier = 2;
    /* short-circuit: the failing operand is never reached */
    is_false("tier == 1 && tier / 0 == 1 && true");
    is_true("tier == 2 || tier / 0 == 1 || false");
    is_false("false && true && tier / 0 == 1");
    /* ... and reached, it fails the whole expression */
    run_err("tier == 2 && true && tier / 0 == 1", "division by zero");
    run_err("tier == 1 || false || tier / 0 == 1", "division by zero");
    /* a missing operand counts as false inside a chain */
    g_st.ch[TD_CH_EMAIL].consent = TD_TRI_UNSET;
    is_false("true && email.consent && true");
    is_true("false || email.consent || true");
    td_expr *e = ok("tier == 1 && tier == 2 && tier == 3");
    assert_int_equal(td_expr_conjuncts(e), 3); /* explanations still split the chain */
    td_expr_free(e);
}

/* td_expr_may_hold: false only when a leading enum test fails. */
static void test_may_hold(void **state) {
    (void)state;
    td_expr *a = ok("stage == 'won' && tier == 1");
    td_expr *b = ok("tier == 1 && stage == 'won'");
    td_expr *c = ok("(stage ?? 'new') in ['new', 'contacted']");
    g_st.stage = TD_STAGE_ENGAGED;
    assert_false(td_expr_may_hold(a, &g_st));
    assert_true(td_expr_may_hold(b, &g_st)); /* the enum test is not first */
    assert_false(td_expr_may_hold(c, &g_st));
    g_st.stage = TD_STAGE_WON;
    assert_true(td_expr_may_hold(a, &g_st));
    assert_false(td_expr_may_hold(c, &g_st));
    g_st.stage = TD_STAGE_NONE;
    assert_false(td_expr_may_hold(a, &g_st));
    assert_true(td_expr_may_hold(c, &g_st));
    assert_true(td_expr_may_hold(a, NULL));
    assert_true(td_expr_may_hold(NULL, &g_st));
    /* whenever may_hold says false, the evaluation is false */
    for (int s = 0; s < 8; s++) {
        g_st.stage = (td_stage)s;
        td_value v;
        assert_int_equal(td_expr_eval(a, &g_ctx, &v, NULL, 0), TD_OK);
        if (!td_expr_may_hold(a, &g_st)) assert_false(v.u.b && !v.missing);
        assert_int_equal(td_expr_eval(c, &g_ctx, &v, NULL, 0), TD_OK);
        assert_true(td_expr_may_hold(c, &g_st) == (v.u.b && !v.missing));
    }
    td_expr_free(a);
    td_expr_free(b);
    td_expr_free(c);
}

/* last_fired('constant') (key precomputed) and last_fired(expression). */
static void test_last_fired_forms(void **state) {
    (void)state;
    td_ms t = T("2026-11-20T10:00:00Z");
    assert_int_equal(td_state_set_fired(&g_st, "ghosting.pivot-sms", t), TD_OK);
    td_strlcpy(g_st.sector, "ghosting.pivot-sms", sizeof g_st.sector);
    assert_true(eval_bool("has(last_fired('ghosting.pivot-sms'))"));
    assert_true(eval_bool("last_fired('ghosting.pivot-sms') == last_fired(sector)"));
    assert_true(eval_bool("since(last_fired('ghosting.pivot-sms')) == 3d + 15m"));
    assert_false(eval_bool("has(last_fired('ghosting.pivot'))"));
    assert_false(eval_bool("has(last_fired('ghosting.pivot-sms2'))"));
    is_missing("last_fired('x-never')");
    is_missing(
        "last_fired('a-rule-id-that-is-much-longer-than-sixty-four-characters-is-never-stored')");
}

/* td_expr_fix_operands / td_expr_fixed_truth: a guard's rec.* string tests
 * in && / || chains, decided per rule and read back as bits. */
static void test_fixed_operands(void **state) {
    (void)state;
    const td_field *touch = td_schema_lookup("rec.touch", 9);
    const td_field *rule = td_schema_lookup("rec.rule", 8);
    const td_field *allowed[] = {touch, rule, NULL};
    td_expr *e = ok_s("rec.touch in ['follow_up', 'micro_question'] && tier == 1 && "
                      "((rec.rule != 'a' && tier >= 1) || (rec.rule != 'b' && tier >= 1))",
                      TD_FIELD_EVENT | TD_FIELD_GUARD, TD_T_BOOL);
    /* rec.touch in [...], rec.rule != 'a', rec.rule != 'b'; not tier == 1 */
    assert_int_equal(td_expr_fix_operands(e, allowed), 3);
    g_st.tier = 1;
    td_rec_view va = {.channel = TD_CH_EMAIL, .touch = "follow_up", .rule = "a", .group = ""};
    td_ctx c = g_ctx;
    c.rec = &va;
    uint64_t bits_a = td_expr_fixed_truth(e, &c);
    assert_int_equal(bits_a, 1 | 4); /* touch in, 'a' != 'a' false, 'a' != 'b' true */
    td_rec_view vg = {.channel = TD_CH_GIFT, .touch = "physical_gift", .rule = "b", .group = ""};
    c.rec = &vg;
    assert_int_equal(td_expr_fixed_truth(e, &c), 2);
    /* the engine's use: the same result through the bits */
    td_value v;
    char err[96];
    c.rec = &va;
    assert_int_equal(td_expr_eval(e, &c, &v, err, sizeof err), TD_OK);
    assert_true(v.u.b && !v.missing);
    va.fixed = &bits_a;
    assert_int_equal(td_expr_eval(e, &c, &v, err, sizeof err), TD_OK);
    assert_true(v.u.b && !v.missing);
    /* the bits are what is read: wrong bits give another answer (which is
     * why only the ruleset computes them) */
    uint64_t none = 0;
    va.fixed = &none;
    assert_int_equal(td_expr_eval(e, &c, &v, err, sizeof err), TD_OK);
    assert_false(v.u.b);
    /* ... except when facts are recorded: then every operand is tested */
    td_facts fx = {.n = 0};
    c.facts = &fx;
    assert_int_equal(td_expr_eval(e, &c, &v, err, sizeof err), TD_OK);
    assert_true(v.u.b && !v.missing);
    assert_true(fx.n >= 2);
    c.facts = NULL;
    td_expr_free(e);
    /* nothing to fix: no chain, or no allowed field in one */
    e = ok_s("rec.rule != 'a'", TD_FIELD_EVENT | TD_FIELD_GUARD, TD_T_BOOL);
    assert_int_equal(td_expr_fix_operands(e, allowed), 0);
    td_expr_free(e);
    e = ok_s("rec.channel == 'email' && tier == 1", TD_FIELD_EVENT | TD_FIELD_GUARD, TD_T_BOOL);
    assert_int_equal(td_expr_fix_operands(e, allowed), 0);
    td_expr_free(e);
}

/* td_expr_conjunct_reads_only: what a guard's first conjunct depends on. */
static void test_conjunct_reads_only(void **state) {
    (void)state;
    const td_field *touch = td_schema_lookup("rec.touch", 9);
    const td_field *channel = td_schema_lookup("rec.channel", 11);
    const td_field *both[] = {touch, channel, NULL}, *one[] = {touch, NULL};
    td_expr *e = ok_s("rec.touch in ['a', 'b'] && tier == 1 && since(now) < 1h && "
                      "(rec.channel == 'email' || rec.touch == 'c') && has(last_fired('x'))",
                      TD_FIELD_EVENT | TD_FIELD_GUARD, TD_T_BOOL);
    assert_int_equal(td_expr_conjuncts(e), 5);
    assert_true(td_expr_conjunct_reads_only(e, 0, one));
    assert_false(td_expr_conjunct_reads_only(e, 1, both)); /* tier */
    assert_false(td_expr_conjunct_reads_only(e, 2, both)); /* now */
    assert_true(td_expr_conjunct_reads_only(e, 3, both));
    assert_false(td_expr_conjunct_reads_only(e, 3, one));  /* rec.channel is not allowed */
    assert_false(td_expr_conjunct_reads_only(e, 4, both)); /* the state's fired table */
    assert_false(td_expr_conjunct_reads_only(e, 5, both)); /* no such conjunct */
    assert_false(td_expr_conjunct_may_fail(e, 0));
    assert_false(td_expr_conjunct_may_fail(e, 1));
    assert_true(td_expr_conjunct_may_fail(e, 2)); /* since(): overflow */
    assert_false(td_expr_conjunct_may_fail(e, 4));
    assert_true(td_expr_conjunct_may_fail(e, 5));
    td_expr_free(e);
    e = ok("email.sent / 2 > 1 && -email.sent < 0 && (tier ?? 1) in [1, 2]");
    assert_true(td_expr_conjunct_may_fail(e, 0));
    assert_true(td_expr_conjunct_may_fail(e, 1));
    assert_false(td_expr_conjunct_may_fail(e, 2));
    td_expr_free(e);
}

/* ---------------------------------------------------------------- conjuncts */

static void test_conjuncts(void **state) {
    (void)state;
    g_st.ch[TD_CH_EMAIL].unanswered = 2;
    const char *src = "email.unanswered >= 2 && (replied || tier == 1) && since(now) < 1h";
    td_expr *e = ok(src);
    assert_int_equal(td_expr_conjuncts(e), 3);
    size_t len;
    const char *s = td_expr_conjunct_source(e, 0, &len);
    assert_int_equal(len, strlen("email.unanswered >= 2"));
    assert_memory_equal(s, "email.unanswered >= 2", len);
    s = td_expr_conjunct_source(e, 1, &len);
    assert_int_equal(len, strlen("(replied || tier == 1)"));
    assert_memory_equal(s, "(replied || tier == 1)", len);
    s = td_expr_conjunct_source(e, 2, &len);
    assert_memory_equal(s, "since(now) < 1h", len);
    td_value v;
    assert_int_equal(td_expr_eval_conjunct(e, 0, &g_ctx, &v, NULL, 0), TD_OK);
    assert_true(v.u.b);
    assert_int_equal(td_expr_eval_conjunct(e, 1, &g_ctx, &v, NULL, 0), TD_OK);
    assert_false(v.u.b);
    assert_int_equal(td_expr_eval_conjunct(e, 2, &g_ctx, &v, NULL, 0), TD_OK);
    assert_true(v.u.b);
    char errbuf[64];
    assert_int_equal(td_expr_eval_conjunct(e, 3, &g_ctx, &v, errbuf, sizeof errbuf), TD_ERR);
    s = td_expr_conjunct_source(e, 9, &len);
    assert_int_equal(len, 0);
    td_expr_free(e);

    e = ok("replied || tier == 1");
    assert_int_equal(td_expr_conjuncts(e), 1);
    s = td_expr_conjunct_source(e, 0, &len);
    assert_int_equal(len, strlen("replied || tier == 1"));
    td_expr_free(e);
    e = ok("(tier == 1 && replied)");
    assert_int_equal(td_expr_conjuncts(e), 2);
    td_expr_free(e);
    e = ok("tier + 1");
    assert_int_equal(td_expr_conjuncts(e), 1);
    assert_int_equal(td_expr_eval_conjunct(e, 0, &g_ctx, &v, NULL, 0), TD_OK);
    assert_true(v.missing);
    td_expr_free(e);
}

/* ---------------------------------------------------------------- json */

static void json_is(const td_value *v, const char *want) {
    char buf[128];
    size_t n = td_value_json(v, buf, sizeof buf);
    assert_string_equal(buf, want);
    assert_int_equal(n, strlen(want));
}

static void test_value_json(void **state) {
    (void)state;
    td_value v = {.type = TD_T_BOOL};
    v.u.b = true;
    json_is(&v, "true");
    v.u.b = false;
    json_is(&v, "false");
    v.type = TD_T_INT;
    v.u.i = 12;
    json_is(&v, "12");
    v.u.i = INT64_MIN;
    json_is(&v, "-9223372036854775808");
    v.type = TD_T_DEC;
    v.u.d = 125000;
    json_is(&v, "12.5");
    v.u.d = 30;
    json_is(&v, "0.003");
    v.u.d = -5000;
    json_is(&v, "-0.5");
    v.u.d = 1000000;
    json_is(&v, "100");
    v.u.d = 1;
    json_is(&v, "0.0001");
    v.u.d = INT64_MIN;
    json_is(&v, "-922337203685477.5808");
    v.type = TD_T_STR;
    v.u.s.p = "a\"b\\c\nd\x01\xc3\xa9";
    v.u.s.n = 10;
    json_is(&v, "\"a\\\"b\\\\c\\nd\\u0001\xc3\xa9\"");
    v.u.s.p = NULL;
    v.u.s.n = 0;
    json_is(&v, "\"\"");
    v.type = TD_T_TIME;
    v.u.t = T("2026-11-22T10:15:00Z");
    json_is(&v, "\"2026-11-22T10:15:00Z\"");
    v.type = TD_T_DUR;
    v.u.t = 90 * TD_MINUTE;
    json_is(&v, "\"1h30m\"");
    v.missing = true;
    json_is(&v, "null");
    json_is(NULL, "null");
    /* truncation: always NUL-terminated, returns what was written */
    v.missing = false;
    v.type = TD_T_BOOL;
    v.u.b = true;
    char small[4];
    assert_int_equal(td_value_json(&v, small, sizeof small), 3);
    assert_string_equal(small, "tru");
    assert_int_equal(td_value_json(&v, small, 0), 0);
    /* a value from an evaluation */
    v = eval_ok("2.5 + 10");
    json_is(&v, "12.5");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_lexer_literals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lexer_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_precedence, setup, teardown),
        cmocka_unit_test_setup_teardown(test_string_compare_forms, setup, teardown),
        cmocka_unit_test_setup_teardown(test_direct_fields, setup, teardown),
        cmocka_unit_test_setup_teardown(test_may_hold, setup, teardown),
        cmocka_unit_test_setup_teardown(test_logic_chains, setup, teardown),
        cmocka_unit_test_setup_teardown(test_last_fired_forms, setup, teardown),
        cmocka_unit_test_setup_teardown(test_conjunct_reads_only, setup, teardown),
        cmocka_unit_test_setup_teardown(test_syntax_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_too_complex, setup, teardown),
        cmocka_unit_test_setup_teardown(test_types_accepted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_types_rejected, setup, teardown),
        cmocka_unit_test_setup_teardown(test_result_type, setup, teardown),
        cmocka_unit_test_setup_teardown(test_in_lists, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_names, setup, teardown),
        cmocka_unit_test_setup_teardown(test_scopes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_functions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_best_time, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_runtime_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_facts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_conjuncts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fixed_operands, setup, teardown),
        cmocka_unit_test_setup_teardown(test_value_json, setup, teardown),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    td_tzdb_free(g_tz);
    return rc;
}
