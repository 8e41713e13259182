/*
 * test_log.c - td_log's guarantee that a log line holds only printable ASCII
 * (docs/operations.md, "Privacy"): td_log_quote escapes every other byte,
 * and td_log escapes what a caller left unquoted; the line stays logfmt.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "td_log.h"

static void expect_quote(const char *in, const char *want) {
    char buf[256];
    const char *got = td_log_quote(buf, sizeof buf, in);
    if (strcmp(got, want) != 0) fail_msg("quote of '%s': got '%s', want '%s'", in, got, want);
}

static void test_quote(void **state) {
    (void)state;
    expect_quote("p-42", "p-42");
    expect_quote("", "\"\"");
    expect_quote("a b", "\"a b\"");
    expect_quote("a=b", "\"a=b\"");
    expect_quote("say \"hi\"\\", "\"say \\\"hi\\\"\\\\\"");
    expect_quote("a\nb\tc\rd", "\"a\\nb\\tc\\rd\"");
    expect_quote("\x1b[31mred", "\"\\x1b[31mred\"");
    expect_quote("del\x7f", "\"del\\x7f\"");
    /* UTF-8 (a name with an accent) is escaped byte by byte, and quoted */
    expect_quote("p-H\xc3\xa9l\xc3\xa8ne", "\"p-H\\xc3\\xa9l\\xc3\\xa8ne\"");
    /* invalid UTF-8 too */
    expect_quote("\xff\xfe", "\"\\xff\\xfe\"");
}

/* Truncation never cuts an escape and always ends the string. */
static void test_quote_truncates_whole_escapes(void **state) {
    (void)state;
    char in[64];
    memset(in, '\xe9', sizeof in - 1);
    in[sizeof in - 1] = '\0';
    for (size_t cap = 1; cap < 20; cap++) {
        char buf[32];
        memset(buf, 'Z', sizeof buf);
        td_log_quote(buf, cap, in);
        size_t n = strlen(buf);
        assert_true(n < cap);
        /* '"', then whole \xe9 escapes, then maybe the closing '"' */
        size_t body = n > 0 ? n - 1 : 0;
        if (n > 1 && buf[n - 1] == '"') body--;
        assert_int_equal(body % 4, 0);
        for (size_t i = 0; i < n; i++)
            assert_true(buf[i] >= 0x20 && buf[i] <= 0x7e);
    }
}

/* Reads what td_log wrote to a pipe. */
static size_t log_line(char *out, size_t cap, void (*emit)(void)) {
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    td_log_set_fd(fds[1]);
    emit();
    td_log_set_fd(2);
    close(fds[1]);
    size_t n = 0;
    ssize_t r;
    while (n + 1 < cap && (r = read(fds[0], out + n, cap - 1 - n)) > 0)
        n += (size_t)r;
    close(fds[0]);
    out[n] = '\0';
    return n;
}

static void emit_unquoted(void) {
    /* a caller that forgot td_log_quote: raw UTF-8, a terminal escape, a
     * newline; and a msg with bytes of its own */
    td_log_warn("msg \xc3\xa9", "prospect=%s event=%s", "H\xc3\xa9l\xc3\xa8ne\n\x1b[2J", "e-1");
}

static void test_line_is_printable_ascii(void **state) {
    (void)state;
    char line[8192];
    size_t n = log_line(line, sizeof line, emit_unquoted);
    assert_true(n > 0);
    assert_int_equal(line[n - 1], '\n');
    for (size_t i = 0; i + 1 < n; i++)
        if ((unsigned char)line[i] < 0x20 || (unsigned char)line[i] > 0x7e)
            fail_msg("byte 0x%02x at %zu in: %s", (unsigned char)line[i], i, line);
    assert_non_null(strstr(line, " level=warn msg=\"msg \\xc3\\xa9\" "));
    assert_non_null(strstr(line, " prospect=H\\xc3\\xa9l\\xc3\\xa8ne\\x0a\\x1b[2J event=e-1\n"));
}

static void emit_long(void) {
    char big[6000];
    memset(big, '\xe9', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    td_log_info("long", "v=%s", big);
}

/* A line of escapes past the 4 KiB cap is cut on a whole escape, with its
 * newline, in one line. */
static void test_long_line(void **state) {
    (void)state;
    char line[16384];
    size_t n = log_line(line, sizeof line, emit_long);
    assert_true(n <= 4096);
    assert_int_equal(line[n - 1], '\n');
    assert_null(memchr(line, '\n', n - 1));
    const char *v = strstr(line, " v=");
    assert_non_null(v);
    assert_int_equal((size_t)(line + n - 1 - (v + 3)) % 4, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quote),
        cmocka_unit_test(test_quote_truncates_whole_escapes),
        cmocka_unit_test(test_line_is_printable_ascii),
        cmocka_unit_test(test_long_line),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
