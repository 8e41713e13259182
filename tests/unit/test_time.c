/*
 * test_time.c - unit tests for td_time (RFC 3339, durations, civil
 * arithmetic, time zones through ICU) and the td_base helpers.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "td_time.h"

static td_ms parse_ok(const char *s) {
    td_ms t = 0;
    assert_int_equal(td_time_parse(s, strlen(s), &t), TD_OK);
    return t;
}

static void test_time_parse_accepts(void **state) {
    (void)state;
    assert_int_equal(parse_ok("1970-01-01T00:00:00Z"), 0);
    assert_int_equal(parse_ok("2026-11-22T10:15:00Z"), 1795342500000LL);
    assert_int_equal(parse_ok("2026-11-22T11:15:00+01:00"), 1795342500000LL);
    assert_int_equal(parse_ok("2026-11-22T05:15:00-05:00"), 1795342500000LL);
    assert_int_equal(parse_ok("2026-11-22t10:15:00z"), 1795342500000LL);
    assert_int_equal(parse_ok("2026-11-22 10:15:00Z"), 1795342500000LL);
    assert_int_equal(parse_ok("2026-11-22T11:15:00.250+01:00"), 1795342500250LL);
    assert_int_equal(parse_ok("2026-11-22T10:15:00.5Z"), 1795342500500LL);
    assert_int_equal(parse_ok("2026-11-22T10:15:00.123456789Z"), 1795342500123LL); /* truncated */
    assert_int_equal(parse_ok("2024-02-29T00:00:00Z"), td_civil_to_ms(2024, 2, 29, 0, 0, 0));
    assert_int_equal(parse_ok("2000-02-29T23:59:59Z"), td_civil_to_ms(2000, 2, 29, 23, 59, 59));
    assert_int_equal(parse_ok("1969-12-31T23:59:59.999Z"), -1);
    assert_int_equal(parse_ok("0001-01-01T00:00:00Z"), -62135596800000LL);
    assert_int_equal(parse_ok("9999-12-31T23:59:59Z"), 253402300799000LL);
    assert_int_equal(parse_ok("2026-01-01T00:00:00+14:00"), td_civil_to_ms(2025, 12, 31, 10, 0, 0));
    assert_int_equal(parse_ok("2026-01-01T00:00:00-00:00"), td_civil_to_ms(2026, 1, 1, 0, 0, 0));
}

static void test_time_parse_rejects(void **state) {
    (void)state;
    static const char *bad[] = {
        "",
        "2026-11-22",
        "2026-11-22T10:15:00",  /* no offset */
        "2026-11-22T10:15Z",    /* no seconds */
        "2026-13-01T00:00:00Z", /* month 13 */
        "2026-00-01T00:00:00Z",
        "2026-02-29T00:00:00Z", /* not a leap year */
        "2100-02-29T00:00:00Z",
        "2026-02-30T00:00:00Z",
        "2026-04-31T00:00:00Z",
        "2026-01-00T00:00:00Z",
        "2026-11-22T24:00:00Z", /* hour 24 */
        "2026-11-22T10:60:00Z",
        "2026-11-22T10:15:60Z", /* leap second */
        "0000-01-01T00:00:00Z",
        "2026-11-22X10:15:00Z",
        "2026-11-22T10:15:00.Z",
        "2026-11-22T10:15:00+0100",
        "2026-11-22T10:15:00+01",
        "2026-11-22T10:15:00+24:00",
        "2026-11-22T10:15:00+01:60",
        "2026-11-22T10:15:00Zjunk",
        "2026-11-22T10:15:00 Z",
        "+2026-11-22T10:15:00Z",
        "2026-1-22T10:15:00Z",
        "2026/11/22T10:15:00Z",
        "2026-11-22T10:15:00.12a4Z",
        "20261122T101500Z",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        td_ms t = 42;
        if (td_time_parse(bad[i], strlen(bad[i]), &t) != TD_ERR) fail_msg("accepted: %s", bad[i]);
        assert_int_equal(t, 42); /* untouched on failure */
    }
    /* The length is authoritative: a valid prefix is not enough. */
    td_ms t;
    assert_int_equal(td_time_parse("2026-11-22T10:15:00Z", 19, &t), TD_ERR);
    assert_int_equal(td_time_parse(NULL, 0, &t), TD_ERR);
}

static void test_time_format(void **state) {
    (void)state;
    char buf[TD_TIME_BUF];
    assert_int_equal(td_time_format(1795342500000LL, buf, sizeof buf), 20);
    assert_string_equal(buf, "2026-11-22T10:15:00Z");
    assert_int_equal(td_time_format(1795342500250LL, buf, sizeof buf), 24);
    assert_string_equal(buf, "2026-11-22T10:15:00.250Z");
    td_time_format(-1, buf, sizeof buf);
    assert_string_equal(buf, "1969-12-31T23:59:59.999Z");
    td_time_format(0, buf, sizeof buf);
    assert_string_equal(buf, "1970-01-01T00:00:00Z");
    /* Truncation is bounded and NUL-terminated. */
    char small[8];
    assert_int_equal(td_time_format(0, small, sizeof small), 7);
    assert_string_equal(small, "1970-01");
    /* Round trip over a spread of instants. */
    for (td_ms t = -62135596800000LL; t < 253402300799000LL; t += 86399999LL * 997) {
        td_ms back;
        size_t n = td_time_format(t, buf, sizeof buf);
        assert_int_equal(td_time_parse(buf, n, &back), TD_OK);
        assert_int_equal(back, t);
    }
}

/* The formatter as it was before its fast path (td_civil_from_ms, then
 * digit by digit, years clamped to 0..9999): the reference it must match. */
static size_t ref_format(td_ms t, char *buf, size_t cap) {
    td_civil c;
    td_civil_from_ms(t, &c);
    int year = c.year < 0 ? 0 : c.year > 9999 ? 9999 : c.year;
    int v[7] = {year, c.month, c.day, c.hour, c.minute, c.second, c.ms};
    static const int width[7] = {4, 2, 2, 2, 2, 2, 3};
    static const char sep[7] = {'-', '-', 'T', ':', ':', '.', 'Z'};
    char tmp[TD_TIME_BUF];
    size_t n = 0;
    for (int f = 0; f < 7; f++) {
        if (f == 6 && c.ms == 0) {
            n--; /* no ".": the "Z" takes its place */
            break;
        }
        for (int i = width[f] - 1; i >= 0; i--) {
            tmp[n + (size_t)i] = (char)('0' + v[f] % 10);
            v[f] /= 10;
        }
        n += (size_t)width[f];
        tmp[n++] = sep[f];
    }
    if (tmp[n - 1] != 'Z') tmp[n++] = 'Z';
    if (cap == 0) return 0;
    if (n >= cap) n = cap - 1;
    memcpy(buf, tmp, n);
    buf[n] = '\0';
    return n;
}

static uint64_t xorshift(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Formats t with td_time_format and ref_format into buffers of `cap` bytes
 * (pre-filled differently) and checks length and bytes (NUL included). */
static void check_format(td_ms t, size_t cap) {
    char a[TD_TIME_BUF + 8], b[TD_TIME_BUF + 8];
    memset(a, 'x', sizeof a);
    memset(b, 'y', sizeof b);
    size_t na = td_time_format(t, a, cap), nb = ref_format(t, b, cap);
    if (na != nb || (cap && memcmp(a, b, na + 1) != 0) || (!cap && a[0] != 'x'))
        fail_msg("td_time_format(%lld, cap %zu): \"%.*s\" (%zu), expected \"%.*s\" (%zu)",
                 (long long)t, cap, (int)na, a, na, (int)nb, b, nb);
}

static void test_time_format_reference(void **state) {
    (void)state;
    /* the reference itself, on known instants */
    char buf[TD_TIME_BUF];
    assert_int_equal(ref_format(1795342500250LL, buf, sizeof buf), 24);
    assert_string_equal(buf, "2026-11-22T10:15:00.250Z");
    assert_int_equal(ref_format(951782400000LL, buf, sizeof buf), 20);
    assert_string_equal(buf, "2000-02-29T00:00:00Z");
    /* every day of 1900..2199 and every 13th day of 0001..9999, at a
     * random instant of the day and at its first and last millisecond */
    uint64_t rs = 0x9e3779b97f4a7c15ULL;
    td_ms lo = -62135596800000LL, hi = 253402300799999LL;
    td_ms d1900 = td_civil_to_ms(1900, 1, 1, 0, 0, 0), d2200 = td_civil_to_ms(2200, 1, 1, 0, 0, 0);
    for (td_ms d = lo; d <= hi; d += (d >= d1900 && d < d2200) ? TD_DAY : 13 * TD_DAY) {
        check_format(d, TD_TIME_BUF);
        check_format(d + TD_DAY - 1, TD_TIME_BUF);
        td_ms r = d + (td_ms)(xorshift(&rs) % (uint64_t)TD_DAY);
        check_format(r, TD_TIME_BUF);
        check_format(r - r % 1000, TD_TIME_BUF); /* whole seconds: no ".mmm" */
    }
    /* leap days, century rules, the edges of the range and just outside */
    static const td_ms edge[] = {0,
                                 -1,
                                 1,
                                 999,
                                 1000,
                                 -62135596800000LL,
                                 -62135596800001LL,
                                 253402300799999LL,
                                 253402300800000LL,
                                 -62198755200000LL, /* year 0: clamped path */
                                 INT64_MAX,
                                 INT64_MIN,
                                 INT64_MIN + 1,
                                 INT64_MAX - TD_DAY};
    for (size_t i = 0; i < sizeof edge / sizeof *edge; i++)
        for (size_t cap = 0; cap <= TD_TIME_BUF; cap++)
            check_format(edge[i], cap);
    static const int leap[][3] = {{2000, 2, 29}, {2024, 2, 29}, {1600, 2, 29}, {4, 2, 29},
                                  {9996, 2, 29}, {2100, 2, 28}, {2100, 3, 1},  {1900, 3, 1},
                                  {2400, 2, 29}, {1, 1, 1},     {9999, 12, 31}};
    for (size_t i = 0; i < sizeof leap / sizeof *leap; i++) {
        td_ms t = td_civil_to_ms(leap[i][0], leap[i][1], leap[i][2], 23, 59, 59) + 999;
        check_format(t, TD_TIME_BUF);
        td_time_format(t, buf, sizeof buf);
        char want[16];
        snprintf(want, sizeof want, "%04d-%02d-%02d", leap[i][0], leap[i][1], leap[i][2]);
        assert_memory_equal(buf, want, 10);
    }
    /* random instants anywhere in int64 (most outside 1..9999), and random
     * ones inside with every buffer size (truncation) */
    for (int i = 0; i < 200000; i++) {
        check_format((td_ms)xorshift(&rs), TD_TIME_BUF);
        td_ms t = lo + (td_ms)(xorshift(&rs) % (uint64_t)(hi - lo + 1));
        check_format(t, (size_t)(xorshift(&rs) % (TD_TIME_BUF + 1)));
        check_format(t - t % 1000, TD_TIME_BUF);
    }
}

static void test_civil(void **state) {
    (void)state;
    assert_int_equal(td_days_from_civil(1970, 1, 1), 0);
    assert_int_equal(td_days_from_civil(2000, 3, 1), 11017);
    assert_int_equal(td_days_from_civil(1969, 12, 31), -1);
    assert_int_equal(td_days_from_civil(2026, 13, 1), td_days_from_civil(2027, 1, 1));
    assert_int_equal(td_days_from_civil(2026, 0, 1), td_days_from_civil(2025, 12, 1));

    td_civil c;
    td_civil_from_ms(1795342500250LL, &c);
    assert_int_equal(c.year, 2026);
    assert_int_equal(c.month, 11);
    assert_int_equal(c.day, 22);
    assert_int_equal(c.hour, 10);
    assert_int_equal(c.minute, 15);
    assert_int_equal(c.second, 0);
    assert_int_equal(c.ms, 250);
    assert_int_equal(c.weekday, 7); /* a Sunday */
    assert_int_equal(c.yday, 326);

    td_civil_from_ms(0, &c);
    assert_int_equal(c.weekday, 4); /* Thursday */
    assert_int_equal(c.yday, 1);
    td_civil_from_ms(-1, &c);
    assert_int_equal(c.year, 1969);
    assert_int_equal(c.second, 59);
    assert_int_equal(c.ms, 999);
    assert_int_equal(c.weekday, 3);
    assert_int_equal(c.yday, 365);
    td_civil_from_ms(td_civil_to_ms(2024, 12, 31, 0, 0, 0), &c);
    assert_int_equal(c.yday, 366);
    assert_int_equal(c.weekday, 2);
    td_civil_from_ms(td_civil_to_ms(1, 1, 1, 0, 0, 0), &c);
    assert_int_equal(c.year, 1);
    assert_int_equal(c.weekday, 1); /* 0001-01-01 was a Monday (proleptic) */

    /* Every day over four centuries round-trips and weekdays advance by one. */
    int prev = 0;
    for (int64_t d = td_days_from_civil(1800, 1, 1); d < td_days_from_civil(2200, 1, 1); d++) {
        td_civil_from_ms(d * TD_DAY + 1, &c);
        assert_int_equal(td_days_from_civil(c.year, c.month, c.day), d);
        if (prev) assert_int_equal(c.weekday, prev % 7 + 1);
        prev = c.weekday;
    }
}

static td_ms dur_ok(const char *s) {
    td_ms d = 0;
    if (td_duration_parse(s, strlen(s), &d) != TD_OK) fail_msg("rejected: %s", s);
    return d;
}

static void test_duration_parse(void **state) {
    (void)state;
    assert_int_equal(dur_ok("72h"), 72 * TD_HOUR);
    assert_int_equal(dur_ok("3d"), 3 * TD_DAY);
    assert_int_equal(dur_ok("2w"), 2 * TD_WEEK);
    assert_int_equal(dur_ok("30m"), 30 * TD_MINUTE);
    assert_int_equal(dur_ok("1h30m"), 90 * TD_MINUTE);
    assert_int_equal(dur_ok("500ms"), 500);
    assert_int_equal(dur_ok("0s"), 0);
    assert_int_equal(dur_ok("45s"), 45 * TD_SECOND);
    assert_int_equal(dur_ok("1w2d3h4m5s6ms"),
                     TD_WEEK + 2 * TD_DAY + 3 * TD_HOUR + 4 * TD_MINUTE + 5 * TD_SECOND + 6);
    assert_int_equal(dur_ok("1m500ms"), TD_MINUTE + 500);
    assert_int_equal(dur_ok("-2h"), -2 * TD_HOUR);
    assert_int_equal(dur_ok("9223372036854775807ms"), INT64_MAX);
    assert_int_equal(dur_ok("0072h"), 72 * TD_HOUR);

    static const char *bad[] = {
        "",
        "h",
        "72",
        "72x",
        "72 h",
        " 72h",
        "72h ",
        "1.5h",
        "30m1h",
        "1h1h",
        "1ms1s",
        "--1h",
        "-",
        "+1h",
        "1H",
        "1hm",
        "9223372036854775808ms",
        "15250284452472w",
        "99999999999999999999s",
        "1d9223372036854775807ms",
        "1h-30m",
        "ms",
        "1mss",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        td_ms d = 42;
        if (td_duration_parse(bad[i], strlen(bad[i]), &d) != TD_ERR)
            fail_msg("accepted: '%s'", bad[i]);
        assert_int_equal(d, 42);
    }
    td_ms d;
    assert_int_equal(td_duration_parse("72h", 2, &d), TD_ERR); /* "72" */
    assert_int_equal(td_duration_parse(NULL, 0, &d), TD_ERR);
}

static void test_duration_format(void **state) {
    (void)state;
    char buf[64];
    static const struct {
        td_ms d;
        const char *s;
    } cases[] = {
        {0, "0s"},
        {3 * TD_DAY, "3d"},
        {90 * TD_MINUTE, "1h30m"},
        {-2 * TD_HOUR, "-2h"},
        {500, "500ms"},
        {2 * TD_WEEK, "2w"},
        {8 * TD_DAY, "1w1d"},
        {72 * TD_HOUR, "3d"},
        {TD_SECOND + 1, "1s1ms"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t n = td_duration_format(cases[i].d, buf, sizeof buf);
        assert_string_equal(buf, cases[i].s);
        assert_int_equal(n, strlen(cases[i].s));
        td_ms back;
        assert_int_equal(td_duration_parse(buf, n, &back), TD_OK);
        assert_int_equal(back, cases[i].d);
    }
    /* Extremes do not overflow. */
    td_duration_format(INT64_MIN, buf, sizeof buf);
    assert_true(buf[0] == '-');
    td_duration_format(INT64_MAX, buf, sizeof buf);
    td_ms back;
    assert_int_equal(td_duration_parse(buf, strlen(buf), &back), TD_OK);
    assert_int_equal(back, INT64_MAX);
}

/* ---- time zones ---- */

static int tz_setup(void **state) {
    *state = td_tzdb_new();
    return *state ? 0 : -1;
}

static int tz_teardown(void **state) {
    td_tzdb_free(*state);
    return 0;
}

static void test_tz_valid(void **state) {
    td_tzdb *db = *state;
    assert_true(td_tz_valid(db, "Europe/Paris"));
    assert_true(td_tz_valid(db, "America/New_York"));
    assert_true(td_tz_valid(db, "Pacific/Kiritimati"));
    assert_true(td_tz_valid(db, "UTC"));
    assert_true(td_tz_valid(db, "Etc/UTC"));
    assert_true(td_tz_valid(db, "Asia/Kolkata"));
    assert_true(td_tz_valid(db, "Europe/Paris")); /* cached */
    assert_false(td_tz_valid(db, "Mars/Olympus_Mons"));
    assert_false(td_tz_valid(db, "Europe/Pariss"));
    assert_false(td_tz_valid(db, "Etc/Unknown"));
    assert_false(td_tz_valid(db, "GMT+05:00")); /* an ICU custom id, not IANA */
    assert_false(td_tz_valid(db, ""));
    assert_false(td_tz_valid(db, NULL));
    assert_false(td_tz_valid(db, "Europe/ Paris"));
    assert_false(td_tz_valid(db, "Europe/Par\xc3\xa9s"));
    assert_false(td_tz_valid(db, "Mars/Olympus_Mons")); /* cached negative */
    char longid[100];
    memset(longid, 'A', sizeof longid - 1);
    longid[99] = '\0';
    assert_false(td_tz_valid(db, longid));
    /* Without a cache it still answers. */
    assert_true(td_tz_valid(NULL, "Europe/Paris"));
    assert_false(td_tz_valid(NULL, "Nowhere/Land"));
}

static void test_tz_cache_bounded(void **state) {
    (void)state;
    /* More distinct ids than the cache holds: it flushes and keeps working. */
    td_tzdb *db = td_tzdb_new();
    char id[32];
    for (int i = 0; i < 700; i++) {
        snprintf(id, sizeof id, "Nowhere/Zone_%d", i);
        assert_false(td_tz_valid(db, id));
        if (i % 50 == 0) assert_true(td_tz_valid(db, "Europe/Paris"));
    }
    assert_true(td_tz_valid(db, "Europe/Paris"));
    td_tzdb_free(db);
    td_tzdb_free(NULL);
}

static void check_local(td_tzdb *db, const char *zone, td_ms t, int y, int mo, int d, int h, int mi,
                        int wd, td_ms off) {
    td_civil c;
    td_ms o = 12345;
    assert_int_equal(td_tz_local(db, zone, t, &c, &o), TD_OK);
    assert_int_equal(c.year, y);
    assert_int_equal(c.month, mo);
    assert_int_equal(c.day, d);
    assert_int_equal(c.hour, h);
    assert_int_equal(c.minute, mi);
    assert_int_equal(c.weekday, wd);
    assert_int_equal(o, off);
}

static void test_tz_local_paris(void **state) {
    td_tzdb *db = *state;
    /* Winter: UTC+1. */
    check_local(db, "Europe/Paris", parse_ok("2026-11-22T10:15:00Z"), 2026, 11, 22, 11, 15, 7,
                TD_HOUR);
    /* Spring forward 2026-03-29 at 01:00Z: 01:59:59 -> 03:00 local. */
    check_local(db, "Europe/Paris", parse_ok("2026-03-29T00:59:00Z"), 2026, 3, 29, 1, 59, 7,
                TD_HOUR);
    check_local(db, "Europe/Paris", parse_ok("2026-03-29T01:00:00Z"), 2026, 3, 29, 3, 0, 7,
                2 * TD_HOUR);
    /* Fall back 2026-10-25 at 01:00Z: 02:59 CEST then 02:00 CET. */
    check_local(db, "Europe/Paris", parse_ok("2026-10-25T00:59:00Z"), 2026, 10, 25, 2, 59, 7,
                2 * TD_HOUR);
    check_local(db, "Europe/Paris", parse_ok("2026-10-25T01:00:00Z"), 2026, 10, 25, 2, 0, 7,
                TD_HOUR);
}

static void test_tz_local_new_york(void **state) {
    td_tzdb *db = *state;
    /* 2026-03-08 07:00Z: 02:00 EST -> 03:00 EDT. */
    check_local(db, "America/New_York", parse_ok("2026-03-08T06:59:00Z"), 2026, 3, 8, 1, 59, 7,
                -5 * TD_HOUR);
    check_local(db, "America/New_York", parse_ok("2026-03-08T07:00:00Z"), 2026, 3, 8, 3, 0, 7,
                -4 * TD_HOUR);
    /* 2026-11-01 06:00Z: 02:00 EDT -> 01:00 EST. */
    check_local(db, "America/New_York", parse_ok("2026-11-01T05:30:00Z"), 2026, 11, 1, 1, 30, 7,
                -4 * TD_HOUR);
    check_local(db, "America/New_York", parse_ok("2026-11-01T06:30:00Z"), 2026, 11, 1, 1, 30, 7,
                -5 * TD_HOUR);
    /* Across midnight and the year: weekday and date are local. */
    check_local(db, "America/New_York", parse_ok("2027-01-01T03:00:00Z"), 2026, 12, 31, 22, 0, 4,
                -5 * TD_HOUR);
}

static void test_tz_local_date_line(void **state) {
    td_tzdb *db = *state;
    /* Kiritimati is UTC+14: local date is a day ahead of most of the world. */
    check_local(db, "Pacific/Kiritimati", parse_ok("2026-11-22T10:15:00Z"), 2026, 11, 23, 0, 15, 1,
                14 * TD_HOUR);
    /* Kiritimati skipped 1994-12-31 (-10 -> +14 at 1994-12-31T10:00Z). */
    check_local(db, "Pacific/Kiritimati", parse_ok("1994-12-31T09:59:00Z"), 1994, 12, 30, 23, 59, 5,
                -10 * TD_HOUR);
    check_local(db, "Pacific/Kiritimati", parse_ok("1994-12-31T10:00:00Z"), 1995, 1, 1, 0, 0, 7,
                14 * TD_HOUR);
    /* Samoa skipped Friday 2011-12-30 (-10 -> +14 at 2011-12-30T10:00Z). */
    check_local(db, "Pacific/Apia", parse_ok("2011-12-30T09:59:00Z"), 2011, 12, 29, 23, 59, 4,
                -10 * TD_HOUR);
    check_local(db, "Pacific/Apia", parse_ok("2011-12-30T10:00:00Z"), 2011, 12, 31, 0, 0, 6,
                14 * TD_HOUR);
    /* Samoa has had no DST since 2021: +13 all year. */
    check_local(db, "Pacific/Apia", parse_ok("2026-07-01T00:00:00Z"), 2026, 7, 1, 13, 0, 3,
                13 * TD_HOUR);
}

static void test_tz_local_unknown(void **state) {
    td_tzdb *db = *state;
    td_civil c;
    td_ms off = 99;
    td_ms t = parse_ok("2026-11-22T10:15:00Z");
    assert_int_equal(td_tz_local(db, "Mars/Olympus_Mons", t, &c, &off), TD_ERR);
    assert_int_equal(off, 0); /* UTC fallback, still filled */
    assert_int_equal(c.hour, 10);
    assert_int_equal(c.weekday, 7);
    assert_int_equal(td_tz_local(db, NULL, t, &c, NULL), TD_ERR);
    assert_int_equal(td_tz_local(db, "", t, &c, NULL), TD_ERR);
    assert_int_equal(td_tz_local(NULL, "Europe/Paris", t, &c, NULL), TD_ERR);
    assert_int_equal(c.hour, 10);
    td_ms u = 0;
    assert_int_equal(td_tz_to_utc(db, "Mars/Olympus_Mons", 2026, 11, 22, 10, 15, &u), TD_ERR);
    assert_int_equal(u, t);
    /* Extreme instants do not reach ICU and fall back. */
    assert_int_equal(td_tz_local(db, "Europe/Paris", INT64_MAX / 2, &c, NULL), TD_ERR);
}

static td_ms to_utc(td_tzdb *db, const char *zone, int y, int mo, int d, int h, int mi) {
    td_ms u = 0;
    assert_int_equal(td_tz_to_utc(db, zone, y, mo, d, h, mi, &u), TD_OK);
    return u;
}

static void test_tz_to_utc(void **state) {
    td_tzdb *db = *state;
    /* Ordinary times. */
    assert_int_equal(to_utc(db, "Europe/Paris", 2026, 11, 22, 11, 15),
                     parse_ok("2026-11-22T10:15:00Z"));
    assert_int_equal(to_utc(db, "Europe/Paris", 2026, 7, 1, 9, 0),
                     parse_ok("2026-07-01T07:00:00Z"));
    assert_int_equal(to_utc(db, "UTC", 2026, 7, 1, 9, 0), parse_ok("2026-07-01T09:00:00Z"));
    /* Paris gap: 02:30 on 2026-03-29 does not exist -> 03:30 CEST. */
    assert_int_equal(to_utc(db, "Europe/Paris", 2026, 3, 29, 2, 30),
                     parse_ok("2026-03-29T01:30:00Z"));
    assert_int_equal(to_utc(db, "Europe/Paris", 2026, 3, 29, 2, 0),
                     parse_ok("2026-03-29T01:00:00Z"));
    assert_int_equal(to_utc(db, "Europe/Paris", 2026, 3, 29, 3, 0),
                     parse_ok("2026-03-29T01:00:00Z"));
    assert_int_equal(to_utc(db, "Europe/Paris", 2026, 3, 29, 1, 59),
                     parse_ok("2026-03-29T00:59:00Z"));
    /* Paris overlap: 02:30 on 2026-10-25 happens twice -> the first (CEST). */
    assert_int_equal(to_utc(db, "Europe/Paris", 2026, 10, 25, 2, 30),
                     parse_ok("2026-10-25T00:30:00Z"));
    assert_int_equal(to_utc(db, "Europe/Paris", 2026, 10, 25, 3, 0),
                     parse_ok("2026-10-25T02:00:00Z"));
    /* New York gap and overlap. */
    assert_int_equal(to_utc(db, "America/New_York", 2026, 3, 8, 2, 30),
                     parse_ok("2026-03-08T07:30:00Z"));
    assert_int_equal(to_utc(db, "America/New_York", 2026, 11, 1, 1, 30),
                     parse_ok("2026-11-01T05:30:00Z"));
    assert_int_equal(to_utc(db, "America/New_York", 2026, 11, 1, 2, 0),
                     parse_ok("2026-11-01T07:00:00Z"));
    /* Whole skipped days across the date line move forward by 24 hours. */
    assert_int_equal(to_utc(db, "Pacific/Kiritimati", 1994, 12, 31, 12, 0),
                     parse_ok("1994-12-31T22:00:00Z"));
    assert_int_equal(to_utc(db, "Pacific/Apia", 2011, 12, 30, 12, 0),
                     parse_ok("2011-12-30T22:00:00Z"));
    assert_int_equal(to_utc(db, "Pacific/Apia", 2011, 12, 29, 23, 0),
                     parse_ok("2011-12-30T09:00:00Z"));
    assert_int_equal(to_utc(db, "Pacific/Apia", 2011, 12, 31, 0, 0),
                     parse_ok("2011-12-30T10:00:00Z"));
    assert_int_equal(to_utc(db, "Pacific/Kiritimati", 2026, 11, 23, 0, 15),
                     parse_ok("2026-11-22T10:15:00Z"));

    /* Round trip: local(to_utc(wall)) == wall for every hour of a DST year,
     * except inside gaps, which move forward. */
    for (td_ms t = parse_ok("2026-01-01T00:00:00Z"); t < parse_ok("2027-01-01T00:00:00Z");
         t += TD_HOUR) {
        td_civil c;
        assert_int_equal(td_tz_local(db, "America/New_York", t, &c, NULL), TD_OK);
        td_ms back = to_utc(db, "America/New_York", c.year, c.month, c.day, c.hour, c.minute);
        /* In an overlap the first occurrence comes back, an hour earlier. */
        assert_true(back == t || back == t - TD_HOUR);
    }
}

/* The per-zone offset cache must agree with a cold lookup, whatever the
 * order of the questions (forwards, backwards, jumping across transitions). */
static void test_tz_cache_consistent(void **state) {
    td_tzdb *db = *state;
    static const char *zones[] = {"Europe/Paris",       "America/New_York",    "Pacific/Apia",
                                  "Pacific/Kiritimati", "Australia/Lord_Howe", "Asia/Kolkata"};
    uint64_t x = 88172645463325252ULL; /* xorshift: reproducible */
    td_ms lo = td_civil_to_ms(1890, 1, 1, 0, 0, 0), hi = td_civil_to_ms(2060, 1, 1, 0, 0, 0);
    for (int i = 0; i < 3000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        const char *zone = zones[x % 6];
        td_ms t = lo + (td_ms)(x % (uint64_t)(hi - lo));
        if (i % 3 == 1)
            t = td_civil_to_ms(2026, 3 + (int)(x % 8), 1 + (int)(x % 28), 0, 0, 0) +
                (td_ms)(x % 97) * TD_HOUR;
        td_civil c1, c2;
        td_ms o1, o2;
        assert_int_equal(td_tz_local(db, zone, t, &c1, &o1), TD_OK);
        td_tzdb *cold = td_tzdb_new();
        assert_int_equal(td_tz_local(cold, zone, t, &c2, &o2), TD_OK);
        td_tzdb_free(cold);
        if (o1 != o2)
            fail_msg("%s at %lld: cached offset %lld, cold %lld", zone, (long long)t, (long long)o1,
                     (long long)o2);
        assert_memory_equal(&c1, &c2, sizeof c1);
    }
}

static void test_base(void **state) {
    (void)state;
    assert_string_equal(td_channel_name(TD_CH_EMAIL), "email");
    assert_string_equal(td_channel_name(TD_CH_GIFT), "gift");
    assert_null(td_channel_name(TD_CH_NONE));
    assert_null(td_channel_name(TD_CH__COUNT));
    for (int i = 0; i < TD_CH__COUNT; i++) {
        const char *n = td_channel_name((td_channel)i);
        assert_int_equal(td_channel_parse(n, strlen(n)), i);
    }
    assert_int_equal(td_channel_parse("emails", 6), TD_CH_NONE);
    assert_int_equal(td_channel_parse("email", 4), TD_CH_NONE);
    assert_int_equal(td_channel_parse("whatsapp", 5), TD_CH_NONE);
    assert_int_equal(td_channel_parse(NULL, 0), TD_CH_NONE);

    char buf[6];
    assert_true(td_strlcpy(buf, "hello", sizeof buf));
    assert_string_equal(buf, "hello");
    assert_false(td_strlcpy(buf, "hello!", sizeof buf));
    assert_string_equal(buf, "hello");
    assert_true(td_strlcpy(buf, NULL, sizeof buf));
    assert_string_equal(buf, "");
    assert_false(td_strlcpy(buf, "x", 0));

    /* FNV-1a 64 reference values. */
    assert_true(td_hash64("", 0, TD_HASH_SEED) == 0xcbf29ce484222325ULL);
    assert_true(td_hash64("a", 1, TD_HASH_SEED) == 0xaf63dc4c8601ec8cULL);
    assert_true(td_hash64("foobar", 6, TD_HASH_SEED) == 0x85944171f73967e8ULL);

    assert_string_equal(td_type_name(TD_T_BOOL), "bool");
    assert_string_equal(td_type_name(TD_T_DEC), "decimal");
    assert_string_equal(td_type_name(TD_T_DUR), "duration");
    assert_string_equal(td_type_name(TD_T_STR), "string");
    assert_string_equal(td_type_name(TD_T_TIME), "time");
    assert_string_equal(td_type_name(TD_T_INT), "int");
    assert_string_equal(td_type_name(TD_T_NONE), "none");
    assert_string_equal(td_type_name(TD_T__COUNT), "unknown");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_time_parse_accepts),
        cmocka_unit_test(test_time_parse_rejects),
        cmocka_unit_test(test_time_format),
        cmocka_unit_test(test_civil),
        cmocka_unit_test(test_duration_parse),
        cmocka_unit_test(test_duration_format),
        cmocka_unit_test_setup_teardown(test_tz_valid, tz_setup, tz_teardown),
        cmocka_unit_test(test_tz_cache_bounded),
        cmocka_unit_test_setup_teardown(test_tz_local_paris, tz_setup, tz_teardown),
        cmocka_unit_test_setup_teardown(test_tz_local_new_york, tz_setup, tz_teardown),
        cmocka_unit_test_setup_teardown(test_tz_local_date_line, tz_setup, tz_teardown),
        cmocka_unit_test_setup_teardown(test_tz_local_unknown, tz_setup, tz_teardown),
        cmocka_unit_test_setup_teardown(test_tz_to_utc, tz_setup, tz_teardown),
        cmocka_unit_test_setup_teardown(test_tz_cache_consistent, tz_setup, tz_teardown),
        cmocka_unit_test(test_base),
        cmocka_unit_test(test_time_format_reference),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
