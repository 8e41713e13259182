/*
 * test_calendar.c - unit tests for td_calendar (holiday files, business days,
 * next sending slot across zones and DST) and td_calendar_load_dir, including
 * spot checks of the shipped config/holidays files.
 *
 * The shipped files are read from $TD_SOURCE_DIR/config/holidays (ctest sets
 * TD_SOURCE_DIR), else ../config/holidays.
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

#include "td_calendar.h"
#include "td_calendar_load.h"
#include "td_time.h"

/* ---- helpers ---- */

static td_ms at(const char *rfc3339) {
    td_ms t = 0;
    assert_int_equal(td_time_parse(rfc3339, strlen(rfc3339), &t), TD_OK);
    return t;
}

/* Compares instants and prints both in RFC 3339 when they differ. */
#define assert_time(got, want) assert_time_((got), (want), __FILE__, __LINE__)
static void assert_time_(td_ms got, td_ms want, const char *file, int line) {
    if (got != want) {
        char g[TD_TIME_BUF], w[TD_TIME_BUF];
        td_time_format(got, g, sizeof g);
        td_time_format(want, w, sizeof w);
        fail_msg("%s:%d: got %s, want %s", file, line, g, w);
    }
}

static td_calendar *cal_from(const char *region, const char *text) {
    td_calendar *cal = td_calendar_new();
    assert_non_null(cal);
    char err[256];
    int rc = td_calendar_add(cal, region, text, strlen(text), err, sizeof err);
    if (rc != TD_OK) fail_msg("td_calendar_add(%s): %s", region, err);
    return cal;
}

/* Adds `text` expecting an error that contains `want`. */
static void add_fails(const char *text, const char *want) {
    td_calendar *cal = td_calendar_new();
    char err[256];
    assert_int_equal(td_calendar_add(cal, "XX", text, strlen(text), err, sizeof err), TD_ERR);
    if (strstr(err, want) == NULL)
        fail_msg("error for [%s]: got \"%s\", want \"%s\"", text, err, want);
    /* all or nothing: nothing of the bad text was kept */
    assert_int_equal(td_calendar_countries(cal, NULL, 0), 0);
    td_calendar_free(cal);
}

static char g_dir[1024];

static const char *holidays_dir(void) {
    const char *src = getenv("TD_SOURCE_DIR");
    snprintf(g_dir, sizeof g_dir, "%s/config/holidays", src != NULL && *src ? src : "..");
    return g_dir;
}

static td_calendar *shipped(void) {
    char err[512];
    td_calendar *cal = td_calendar_load_dir(holidays_dir(), err, sizeof err);
    if (cal == NULL) fail_msg("loading %s: %s", holidays_dir(), err);
    return cal;
}

/* ---- parsing ---- */

static void test_parse_format(void **state) {
    (void)state;
    const char *text = "# a comment\n"
                       "\n"
                       "  weekend = Fri, saturday   # trailing comment\r\n"
                       "years = 2026-2027\n"
                       "2026-05-01 Labour Day  # note\n"
                       "2026-12-24..2026-12-26 Christmas break\n"
                       "workday 2026-05-02 make-up day\n"
                       "workday 2026-05-09\n"
                       "2027-01-01\tNew Year's Day #1\n"
                       "2027-02-01 No#comment here";
    td_calendar *cal = cal_from("xx", text);
    const char *name = NULL;
    assert_true(td_calendar_is_holiday(cal, "XX", 2026, 5, 1, &name));
    assert_string_equal(name, "Labour Day");
    assert_true(td_calendar_is_holiday(cal, "xx", 2026, 12, 25, &name));
    assert_string_equal(name, "Christmas break");
    assert_true(td_calendar_is_holiday(cal, "XX", 2026, 12, 24, NULL));
    assert_true(td_calendar_is_holiday(cal, "XX", 2026, 12, 26, NULL));
    assert_false(td_calendar_is_holiday(cal, "XX", 2026, 12, 27, &name));
    assert_null(name);
    assert_true(td_calendar_is_holiday(cal, "XX", 2027, 1, 1, &name));
    assert_string_equal(name, "New Year's Day"); /* " #1" is a comment */
    assert_true(td_calendar_is_holiday(cal, "XX", 2027, 2, 1, &name));
    assert_string_equal(name, "No#comment here"); /* '#' inside a word is text */
    /* weekend = Friday and Saturday: Sunday works, a make-up Saturday works */
    assert_true(td_calendar_is_weekend(cal, "XX", 5));
    assert_true(td_calendar_is_weekend(cal, "XX", 6));
    assert_false(td_calendar_is_weekend(cal, "XX", 7));
    assert_true(td_calendar_is_business_day(cal, "XX", 2026, 5, 3));  /* Sunday */
    assert_false(td_calendar_is_business_day(cal, "XX", 2026, 5, 8)); /* Friday */
    assert_true(td_calendar_is_business_day(cal, "XX", 2026, 5, 9));  /* make-up Saturday */
    assert_false(td_calendar_is_business_day(cal, "XX", 2026, 5, 1)); /* holiday */
    assert_true(td_calendar_covers(cal, "XX", 2026));
    assert_true(td_calendar_covers(cal, "XX", 2027));
    assert_false(td_calendar_covers(cal, "XX", 2028));
    const char *names[4];
    assert_int_equal(td_calendar_countries(cal, names, 4), 1);
    assert_string_equal(names[0], "XX");
    /* invalid dates are neither holidays nor business days */
    assert_false(td_calendar_is_holiday(cal, "XX", 2026, 2, 30, NULL));
    assert_false(td_calendar_is_business_day(cal, "XX", 2026, 13, 1));
    td_calendar_free(cal);
}

static void test_parse_errors(void **state) {
    (void)state;
    add_fails("2026-05-01 Labour Day\n2026-02-30 Bad\n", "line 2: bad date '2026-02-30'");
    add_fails("\n\n2026-5-01 Bad\n", "line 3: bad date");
    add_fails("2026-05-01\n", "line 1: holiday 2026-05-01 has no name");
    add_fails("2026-05-01 A\n# c\n2026-05-01 B\n",
              "line 3: 2026-05-01 is already a holiday (line 1)");
    add_fails("2026-02-14 A\nworkday 2026-02-14\n",
              "line 2: 2026-02-14 is both a workday and a holiday (line 1)");
    add_fails("workday 2026-02-14\nworkday 2026-02-14\n",
              "line 2: 2026-02-14 is already a workday");
    add_fails("weekend = sat,sun\nweekend = fri\n",
              "line 2: weekend declared twice (first at line 1)");
    add_fails("weekend = sat,dimanche\n", "line 1: unknown weekday 'dimanche'");
    add_fails("weekend = sat,sat\n", "line 1: weekday 'sat' listed twice");
    add_fails("weekend = mon,tue,wed,thu,fri,sat,sun\n", "every day of the week is a weekend day");
    add_fails("years = 2026-2027\n2028-01-01 A\n",
              "line 2: 2028-01-01 is outside 'years = 2026-2027' (line 1)");
    add_fails("2026-01-01 A\nyears = 2026\n", "line 2: years must come before the first date");
    add_fails("years = 2027-2026\n", "line 1: years: 2027-2026 is an empty range");
    add_fails("years = 26\n", "line 1: years: expected YYYY or YYYY-YYYY");
    add_fails("timezone = Europe/Paris\n", "line 1: unknown setting 'timezone'");
    add_fails("holiday 2026-01-01 A\n", "line 1: expected 'YYYY-MM-DD Name'");
    add_fails("2026-12-26..2026-12-24 Backwards\n", "line 1: bad range");
    add_fails("2026-01-01..2026-03-01 Too long\n", "line 1: bad range");
    add_fails("2026-01-01 Bad\x01name\n", "line 1: control character in the name");
    /* every error is counted, the first one is reported */
    add_fails("2026-13-01 A\nok\n2026-01-01 B\n2026-01-32 C\n",
              "line 1: bad date '2026-13-01' (expected YYYY-MM-DD or YYYY-MM-DD..YYYY-MM-DD) "
              "(and 2 more errors)");

    /* bad region names */
    td_calendar *cal = td_calendar_new();
    char err[128];
    static const char *bad_regions[] = {"",      "F",   "FRA",     "France", "F1",
                                        "DE_BY", "DE-", "DE-BAYE", NULL};
    for (int i = 0; bad_regions[i] != NULL; i++) {
        assert_int_equal(td_calendar_add(cal, bad_regions[i], "", 0, err, sizeof err), TD_ERR);
        assert_non_null(strstr(err, "bad region name"));
    }
    assert_int_equal(td_calendar_add(cal, NULL, "", 0, err, sizeof err), TD_ERR);
    /* a tiny error buffer is truncated, never overflowed; NULL is accepted */
    char tiny[8];
    assert_int_equal(td_calendar_add(cal, "XX", "nonsense\n", 9, tiny, sizeof tiny), TD_ERR);
    assert_int_equal(strlen(tiny), 7);
    assert_int_equal(td_calendar_add(cal, "XX", "nonsense\n", 9, NULL, 0), TD_ERR);
    assert_int_equal(td_calendar_countries(cal, NULL, 0), 0);
    td_calendar_free(cal);
}

static void test_merge_and_subdivisions(void **state) {
    (void)state;
    td_calendar *cal = cal_from("DE", "weekend = sat,sun\n2026-04-03 Good Friday\n");
    char err[256];
    /* a second add to the same region merges; a date declared twice is refused */
    assert_int_equal(td_calendar_add(cal, "de", "2026-10-03 Unity Day\n", 21, err, sizeof err),
                     TD_OK);
    assert_int_equal(td_calendar_add(cal, "DE", "# x\n2026-04-03 Again\n", 21, err, sizeof err),
                     TD_ERR);
    assert_non_null(strstr(err, "line 2: 2026-04-03 is already declared for DE"));
    assert_true(td_calendar_is_holiday(cal, "DE", 2026, 10, 3, NULL));
    /* a subdivision adds its holidays on top of its country's */
    const char *by = "2026-01-06 Epiphany\n2026-06-04 Corpus Christi\n";
    assert_int_equal(td_calendar_add(cal, "DE-BY", by, strlen(by), err, sizeof err), TD_OK);
    const char *name;
    assert_true(td_calendar_is_holiday(cal, "DE-BY", 2026, 1, 6, &name));
    assert_string_equal(name, "Epiphany");
    assert_false(td_calendar_is_holiday(cal, "DE", 2026, 1, 6, NULL));
    assert_false(td_calendar_is_holiday(cal, "DE-BE", 2026, 1, 6, NULL));
    assert_true(td_calendar_is_holiday(cal, "de-by", 2026, 4, 3, &name)); /* inherited */
    assert_string_equal(name, "Good Friday");
    assert_true(
        td_calendar_is_holiday(cal, "DE-BE", 2026, 4, 3, NULL)); /* no file: the country's */
    assert_false(td_calendar_is_business_day(cal, "DE-BY", 2026, 6, 4));
    assert_true(td_calendar_is_business_day(cal, "DE", 2026, 6, 4));
    /* a subdivision's weekend overrides its country's */
    assert_int_equal(td_calendar_add(cal, "DE-XX", "weekend = sun\n", 14, err, sizeof err), TD_OK);
    assert_true(td_calendar_is_business_day(cal, "DE-XX", 2026, 6, 6));  /* Saturday */
    assert_false(td_calendar_is_business_day(cal, "DE-XX", 2026, 4, 3)); /* Good Friday */
    const char *names[8];
    assert_int_equal(td_calendar_countries(cal, names, 8), 3);
    assert_string_equal(names[0], "DE");
    assert_string_equal(names[1], "DE-BY");
    assert_string_equal(names[2], "DE-XX");
    /* unknown, empty or NULL country: weekends only */
    assert_true(td_calendar_is_business_day(cal, "ZZ", 2026, 4, 3));
    assert_true(td_calendar_is_business_day(cal, "", 2026, 4, 3));
    assert_true(td_calendar_is_business_day(cal, NULL, 2026, 4, 3));
    assert_true(td_calendar_is_business_day(cal, "not a code", 2026, 4, 3));
    assert_false(td_calendar_is_business_day(cal, NULL, 2026, 4, 4));
    assert_false(td_calendar_is_business_day(NULL, "DE", 2026, 4, 5));
    assert_true(td_calendar_is_business_day(NULL, "DE", 2026, 4, 3));
    td_calendar_free(cal);
    td_calendar_free(NULL);
}

/* ---- the shipped files ---- */

/* Checks every holiday and workday line of every shipped file against the
 * loaded calendar: each holiday is found, each workday is a weekend day made
 * a business day. */
static void check_file_lines(const td_calendar *cal, const char *dir, const char *fname) {
    char path[1200], line[512], region[16];
    snprintf(path, sizeof path, "%s/%s", dir, fname);
    size_t rl = strcspn(fname, ".");
    assert_true(rl < sizeof region);
    memcpy(region, fname, rl);
    region[rl] = '\0';
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    int holidays = 0;
    while (fgets(line, sizeof line, f) != NULL) {
        int y, m, d;
        if (sscanf(line, "workday %4d-%2d-%2d", &y, &m, &d) == 3) {
            int wd = (int)((td_days_from_civil(y, m, d) + 3) % 7) + 1;
            if (!td_calendar_is_weekend(cal, region, wd))
                fail_msg("%s: workday %04d-%02d-%02d is not a weekend day", fname, y, m, d);
            assert_true(td_calendar_is_business_day(cal, region, y, m, d));
        } else if (sscanf(line, "%4d-%2d-%2d ", &y, &m, &d) == 3) {
            const char *name = NULL;
            if (!td_calendar_is_holiday(cal, region, y, m, d, &name))
                fail_msg("%s: %04d-%02d-%02d is not a holiday", fname, y, m, d);
            assert_true(name[0] != '\0' && name[0] != ' ' && name[strlen(name) - 1] != ' ');
            assert_false(td_calendar_is_business_day(cal, region, y, m, d));
            holidays++;
        }
    }
    fclose(f);
    if (holidays < 4) fail_msg("%s: only %d holidays", fname, holidays);
}

static void test_shipped_files_parse(void **state) {
    (void)state;
    td_calendar *cal = shipped();
    static const char *required[] = {"AE", "BE", "CH", "CN", "DE", "ES", "FR",
                                     "GB", "IT", "JP", "NL", "SE", "US", NULL};
    const char *names[64];
    size_t n = td_calendar_countries(cal, names, 64);
    assert_true(n >= 13 && n <= 64);
    for (int i = 0; required[i] != NULL; i++) {
        bool found = false;
        for (size_t k = 0; k < n; k++)
            found = found || strcmp(names[k], required[i]) == 0;
        if (!found) fail_msg("no %s.holidays in %s", required[i], holidays_dir());
        assert_true(td_calendar_covers(cal, required[i], 2026));
        assert_true(td_calendar_covers(cal, required[i], 2027));
        assert_false(td_calendar_covers(cal, required[i], 2025));
        char fname[32];
        snprintf(fname, sizeof fname, "%s.holidays", required[i]);
        check_file_lines(cal, holidays_dir(), fname);
    }
    td_calendar_free(cal);
}

typedef struct spot {
    const char *cc;
    int y, m, d;
    const char *name_part; /* NULL: must NOT be a holiday */
} spot;

static void test_shipped_dates(void **state) {
    (void)state;
    td_calendar *cal = shipped();
    static const spot spots[] = {
        {"FR", 2026, 5, 14, "Ascension"},
        {"FR", 2026, 5, 25, "Whit Monday"},
        {"FR", 2026, 4, 6, "Easter Monday"},
        {"FR", 2026, 4, 3, NULL}, /* Good Friday: Alsace-Moselle only */
        {"FR", 2027, 5, 6, "Ascension"},
        {"DE", 2026, 4, 3, "Good Friday"},
        {"DE", 2026, 10, 3, "German Unity"},
        {"DE", 2026, 1, 6, NULL}, /* Epiphany: some Lander only */
        {"GB", 2026, 12, 28, "Boxing Day (substitute day)"},
        {"GB", 2026, 4, 6, "Easter Monday"},
        {"GB", 2026, 8, 31, "Summer bank holiday"},
        {"GB", 2027, 12, 27, "Christmas Day (substitute day)"},
        {"GB", 2027, 12, 28, "Boxing Day (substitute day)"},
        {"GB", 2028, 1, 3, "New Year's Day (substitute day)"},
        {"US", 2026, 7, 3, "Independence Day (observed)"},
        {"US", 2026, 11, 26, "Thanksgiving"},
        {"US", 2026, 1, 19, "Martin Luther King"},
        {"US", 2027, 6, 18, "Juneteenth National Independence Day (observed)"},
        {"US", 2027, 12, 31, "New Year's Day (observed)"}, /* for Saturday 2028-01-01 */
        {"ES", 2026, 10, 12, "National Day"},
        {"ES", 2026, 4, 2, NULL}, /* Holy Thursday: not in Catalonia */
        {"IT", 2026, 6, 2, "Republic Day"},
        {"IT", 2027, 10, 4, "St Francis"},
        {"NL", 2026, 4, 27, "King's Day"},
        {"NL", 2026, 4, 3, NULL},
        {"BE", 2026, 7, 21, "National Day"},
        {"CH", 2026, 8, 1, "National Day"},
        {"CH", 2026, 5, 14, "Ascension"},
        {"SE", 2026, 6, 19, "Midsummer Eve"},
        {"SE", 2026, 6, 6, "National Day"},
        {"SE", 2026, 12, 24, "Christmas Eve"},
        {"JP", 2026, 5, 6, "Substitute holiday"},
        {"JP", 2026, 9, 22, "Citizens' Holiday"},
        {"JP", 2026, 3, 20, "Vernal Equinox"},
        {"JP", 2026, 9, 23, "Autumnal Equinox"},
        {"JP", 2027, 3, 22, "Substitute holiday"},
        {"JP", 2026, 1, 12, "Coming of Age"},
        {"CN", 2026, 2, 17, "Spring Festival"},
        {"CN", 2026, 2, 23, "Spring Festival"},
        {"CN", 2026, 10, 7, "National Day"},
        {"CN", 2026, 6, 19, "Dragon Boat"},
        {"CN", 2027, 2, 6, "Spring Festival"},
        {"CN", 2028, 10, 3, "Mid-Autumn"}, /* and National Day, same day */
        {"AE", 2026, 12, 2, "National Day"},
        {"AE", 2026, 3, 20, "Eid al-Fitr"},
        {"AE", 2026, 5, 26, "Arafat"},
    };
    for (size_t i = 0; i < sizeof spots / sizeof spots[0]; i++) {
        const spot *s = &spots[i];
        const char *name = NULL;
        bool h = td_calendar_is_holiday(cal, s->cc, s->y, s->m, s->d, &name);
        if (s->name_part == NULL) {
            if (h)
                fail_msg("%s %04d-%02d-%02d: unexpected holiday %s", s->cc, s->y, s->m, s->d, name);
        } else if (!h || strstr(name, s->name_part) == NULL) {
            fail_msg("%s %04d-%02d-%02d: want \"%s\", got %s", s->cc, s->y, s->m, s->d,
                     s->name_part, h ? name : "no holiday");
        }
    }
    /* the weekend itself: a Saturday is not a business day, the make-up ones are */
    assert_false(td_calendar_is_business_day(cal, "FR", 2026, 11, 21));
    assert_true(td_calendar_is_business_day(cal, "CN", 2026, 2, 14));  /* make-up Saturday */
    assert_true(td_calendar_is_business_day(cal, "CN", 2026, 2, 28));  /* make-up Saturday */
    assert_true(td_calendar_is_business_day(cal, "CN", 2026, 9, 20));  /* make-up Sunday */
    assert_false(td_calendar_is_business_day(cal, "CN", 2026, 2, 21)); /* Saturday in the break */
    assert_false(td_calendar_is_business_day(cal, "CN", 2026, 3, 1));  /* ordinary Sunday */
    assert_true(td_calendar_is_business_day(cal, "CN", 2026, 2, 24));
    /* AE: Saturday-Sunday weekend since 2022, Friday is a working day */
    assert_true(td_calendar_is_weekend(cal, "AE", 6));
    assert_true(td_calendar_is_weekend(cal, "AE", 7));
    assert_false(td_calendar_is_weekend(cal, "AE", 5));
    assert_true(td_calendar_is_business_day(cal, "AE", 2026, 11, 20));  /* Friday */
    assert_false(td_calendar_is_business_day(cal, "AE", 2026, 11, 21)); /* Saturday */
    assert_false(td_calendar_is_business_day(cal, "US", 2026, 7, 3));
    assert_true(td_calendar_is_business_day(cal, "US", 2026, 7, 6));
    td_calendar_free(cal);
}

/* ---- next slot ---- */

typedef struct slot_case {
    const char *zone, *country;
    const char *t, *want;
} slot_case;

static void run_slots(const td_calendar *cal, td_tzdb *tz, const slot_case *c, size_t n) {
    for (size_t i = 0; i < n; i++) {
        td_ms got = td_calendar_next_slot(cal, tz, c[i].zone, c[i].country, 9, 18, at(c[i].t));
        if (got != at(c[i].want)) {
            char g[TD_TIME_BUF];
            td_time_format(got, g, sizeof g);
            fail_msg("case %zu (%s %s, %s): got %s, want %s", i, c[i].zone, c[i].country, c[i].t, g,
                     c[i].want);
        }
    }
}

static void test_next_slot(void **state) {
    (void)state;
    td_calendar *cal = shipped();
    td_tzdb *tz = td_tzdb_new();
    static const slot_case cases[] = {
        /* Friday evening in Paris -> Monday 09:00 Paris */
        {"Europe/Paris", "FR", "2026-11-20T19:00:00+01:00", "2026-11-23T09:00:00+01:00"},
        /* inside the window: t itself */
        {"Europe/Paris", "FR", "2026-11-24T10:30:15.250+01:00", "2026-11-24T10:30:15.250+01:00"},
        {"Europe/Paris", "FR", "2026-11-24T09:00:00+01:00", "2026-11-24T09:00:00+01:00"},
        {"Europe/Paris", "FR", "2026-11-24T17:59:59.999+01:00", "2026-11-24T17:59:59.999+01:00"},
        /* before the window: 09:00 the same day; at 18:00 sharp: the next day */
        {"Europe/Paris", "FR", "2026-11-24T07:00:00+01:00", "2026-11-24T09:00:00+01:00"},
        {"Europe/Paris", "FR", "2026-11-24T18:00:00+01:00", "2026-11-25T09:00:00+01:00"},
        {"Europe/Paris", "FR", "2026-11-24T00:00:00+01:00", "2026-11-24T09:00:00+01:00"},
        /* Whit Monday 2026-05-25 -> Tuesday */
        {"Europe/Paris", "FR", "2026-05-22T19:00:00+02:00", "2026-05-26T09:00:00+02:00"},
        /* Ascension Thursday 2026-05-14 -> Friday */
        {"Europe/Paris", "FR", "2026-05-13T20:00:00+02:00", "2026-05-15T09:00:00+02:00"},
        /* GB: Good Friday and Easter Monday 2026 -> Tuesday 7 April, BST */
        {"Europe/London", "GB", "2026-04-02T18:30:00+01:00", "2026-04-07T09:00:00+01:00"},
        /* GB: Christmas 2026 (Fri), Boxing Day (Sat) substituted Monday 28 */
        {"Europe/London", "GB", "2026-12-24T18:00:00Z", "2026-12-29T09:00:00Z"},
        /* the same instant for a French prospect: Monday 28 works in France */
        {"Europe/Paris", "FR", "2026-12-24T19:00:00+01:00", "2026-12-28T09:00:00+01:00"},
        /* DST: Paris springs forward on Sunday 2026-03-29: Monday is CEST */
        {"Europe/Paris", "FR", "2026-03-27T20:00:00+01:00", "2026-03-30T09:00:00+02:00"},
        /* DST: Paris falls back on Sunday 2026-10-25: Monday is CET */
        {"Europe/Paris", "FR", "2026-10-23T20:00:00+02:00", "2026-10-26T09:00:00+01:00"},
        /* DST: New York springs forward 2026-03-08, falls back 2026-11-01 */
        {"America/New_York", "US", "2026-03-06T18:00:00-05:00", "2026-03-09T09:00:00-04:00"},
        {"America/New_York", "US", "2026-10-30T18:00:00-04:00", "2026-11-02T09:00:00-05:00"},
        {"America/New_York", "US", "2026-03-08T12:00:00-04:00", "2026-03-09T09:00:00-04:00"},
        /* US observed Independence Day: Thursday 2 July evening -> Monday 6 July */
        {"America/New_York", "US", "2026-07-02T18:00:00-04:00", "2026-07-06T09:00:00-04:00"},
        /* across the date line: Friday 22:00 UTC is Saturday 11:00 in Auckland */
        {"Pacific/Auckland", "NZ", "2026-11-20T22:00:00Z", "2026-11-23T09:00:00+13:00"},
        /* Sunday 20:00 UTC is Monday 09:00 in Auckland: inside the window */
        {"Pacific/Auckland", "NZ", "2026-11-22T20:00:00Z", "2026-11-22T20:00:00Z"},
        /* Kiritimati (UTC+14): a Sunday in UTC is Monday there */
        {"Pacific/Kiritimati", "KI", "2026-11-22T19:00:00Z", "2026-11-22T19:00:00Z"},
        {"Pacific/Kiritimati", "KI", "2026-11-22T18:59:00Z", "2026-11-22T19:00:00Z"},
        /* Monday 10:00 UTC is already Tuesday 00:00 there: Tuesday 09:00 local */
        {"Pacific/Kiritimati", "KI", "2026-11-23T10:00:00Z", "2026-11-24T09:00:00+14:00"},
        /* Pago Pago (UTC-11): Monday 08:00 UTC is still Sunday 21:00 there */
        {"Pacific/Pago_Pago", "AS", "2026-11-23T08:00:00Z", "2026-11-23T09:00:00-11:00"},
        /* CN: Friday before Spring Festival -> make-up Saturday 14 February */
        {"Asia/Shanghai", "CN", "2026-02-13T19:00:00+08:00", "2026-02-14T09:00:00+08:00"},
        /* CN: after the make-up Saturday, the nine-day break -> Tuesday 24 */
        {"Asia/Shanghai", "CN", "2026-02-14T19:00:00+08:00", "2026-02-24T09:00:00+08:00"},
        /* CN: National Day week, make-up Saturday 10 October */
        {"Asia/Shanghai", "CN", "2026-09-30T19:00:00+08:00", "2026-10-08T09:00:00+08:00"},
        {"Asia/Shanghai", "CN", "2026-10-09T19:00:00+08:00", "2026-10-10T09:00:00+08:00"},
        /* JP: Golden Week 2026 (2-6 May, with the substitute holiday) */
        {"Asia/Tokyo", "JP", "2026-05-01T19:00:00+09:00", "2026-05-07T09:00:00+09:00"},
        /* JP: Silver Week (21-23 September) */
        {"Asia/Tokyo", "JP", "2026-09-18T19:00:00+09:00", "2026-09-24T09:00:00+09:00"},
        /* AE: Friday works; Commemoration and National Days (1-3 Dec) */
        {"Asia/Dubai", "AE", "2026-11-19T19:00:00+04:00", "2026-11-20T09:00:00+04:00"},
        {"Asia/Dubai", "AE", "2026-11-30T19:00:00+04:00", "2026-12-04T09:00:00+04:00"},
        /* SE: Midsummer Eve, Friday 19 June 2026 */
        {"Europe/Stockholm", "SE", "2026-06-18T19:00:00+02:00", "2026-06-22T09:00:00+02:00"},
        /* unknown zone: UTC; unknown country: weekends only */
        {"Mars/Olympus", "FR", "2026-11-20T19:00:00Z", "2026-11-23T09:00:00Z"},
        {"", "", "2026-11-21T12:00:00Z", "2026-11-23T09:00:00Z"},
        {"Europe/Berlin", "ZZ", "2026-04-02T19:00:00+02:00", "2026-04-03T09:00:00+02:00"},
        {"Europe/Berlin", "DE", "2026-04-02T19:00:00+02:00", "2026-04-07T09:00:00+02:00"},
    };
    run_slots(cal, tz, cases, sizeof cases / sizeof cases[0]);

    /* a NULL calendar: weekends only */
    assert_time(td_calendar_next_slot(NULL, tz, "Europe/Paris", "FR", 9, 18,
                                      at("2026-05-22T19:00:00+02:00")),
                at("2026-05-25T09:00:00+02:00"));
    /* missing time and bad windows */
    assert_time(td_calendar_next_slot(cal, tz, "Europe/Paris", "FR", 9, 18, TD_MS_MISSING),
                TD_MS_MISSING);
    /* start >= end: the whole day; Saturday 03:00 -> Monday 00:00 */
    assert_time(td_calendar_next_slot(cal, tz, "Europe/Paris", "FR", 18, 9,
                                      at("2026-11-21T03:00:00+01:00")),
                at("2026-11-23T00:00:00+01:00"));
    assert_time(td_calendar_next_slot(cal, tz, "Europe/Paris", "FR", 18, 9,
                                      at("2026-11-24T03:00:00+01:00")),
                at("2026-11-24T03:00:00+01:00"));
    /* hours are clamped: -5..30 is 0..24 */
    assert_time(td_calendar_next_slot(cal, tz, "Europe/Paris", "FR", -5, 30,
                                      at("2026-11-24T23:30:00+01:00")),
                at("2026-11-24T23:30:00+01:00"));
    /* an evening window */
    assert_time(td_calendar_next_slot(cal, tz, "Europe/Paris", "FR", 20, 24,
                                      at("2026-11-24T23:30:00+01:00")),
                at("2026-11-24T23:30:00+01:00"));
    assert_time(td_calendar_next_slot(cal, tz, "Europe/Paris", "FR", 20, 24,
                                      at("2026-11-25T00:30:00+01:00")),
                at("2026-11-25T20:00:00+01:00"));
    td_tzdb_free(tz);
    td_calendar_free(cal);
}

static void test_next_slot_dst_edges(void **state) {
    (void)state;
    /* a region working every day, to put window starts on DST Sundays */
    td_calendar *cal = cal_from("XX", "weekend = none\n2026-03-30 Closed\n");
    td_tzdb *tz = td_tzdb_new();
    /* 02:00 does not exist in Paris on 2026-03-29: the start moves to 03:00 CEST */
    assert_time(
        td_calendar_next_slot(cal, tz, "Europe/Paris", "XX", 2, 5, at("2026-03-28T23:00:00+01:00")),
        at("2026-03-29T03:00:00+02:00"));
    /* a window wholly inside the gap does not exist that day: next day */
    /* (30 March is closed) -> 31 March 02:00 */
    assert_time(
        td_calendar_next_slot(cal, tz, "Europe/Paris", "XX", 2, 3, at("2026-03-28T23:00:00+01:00")),
        at("2026-03-31T02:00:00+02:00"));
    /* 01:00 occurs twice in New York on 2026-11-01: the first one (EDT) */
    assert_time(td_calendar_next_slot(cal, tz, "America/New_York", "XX", 1, 5,
                                      at("2026-10-31T23:00:00-04:00")),
                at("2026-11-01T01:00:00-04:00"));
    /* in the repeated hour (01:30 EST, the second 01:30): inside the window */
    assert_time(td_calendar_next_slot(cal, tz, "America/New_York", "XX", 1, 2,
                                      at("2026-11-01T01:30:00-05:00")),
                at("2026-11-01T01:30:00-05:00"));
    /* 23:30 local, window 9-18, every day a business day: tomorrow 09:00 */
    assert_time(td_calendar_next_slot(cal, tz, "Asia/Kolkata", "XX", 9, 18,
                                      at("2026-11-21T23:30:00+05:30")),
                at("2026-11-22T09:00:00+05:30"));
    td_tzdb_free(tz);
    td_calendar_free(cal);

    /* nothing within TD_CAL_SEARCH_DAYS: t unchanged */
    char text[64 * 40];
    size_t k = 0;
    k += (size_t)snprintf(text + k, sizeof text - k, "weekend = sat,sun\n");
    k += (size_t)snprintf(text + k, sizeof text - k, "2026-01-01..2026-02-01 Closed\n");
    k += (size_t)snprintf(text + k, sizeof text - k, "2026-02-02..2026-03-05 Closed\n");
    cal = cal_from("XX", text);
    tz = td_tzdb_new();
    td_ms t = at("2026-01-01T10:00:00Z");
    assert_time(td_calendar_next_slot(cal, tz, "UTC", "XX", 9, 18, t), t);
    assert_time(td_calendar_next_slot(cal, tz, "UTC", "XX", 9, 18, at("2026-01-20T10:00:00Z")),
                at("2026-03-06T09:00:00Z"));
    td_tzdb_free(tz);
    td_calendar_free(cal);
}

/* ---- loader ---- */

static void write_file(const char *dir, const char *name, const char *text) {
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void remove_file(const char *dir, const char *name) {
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    unlink(path);
}

static void test_load_dir(void **state) {
    (void)state;
    char err[512];
    assert_null(td_calendar_load_dir("/nonexistent/holidays", err, sizeof err));
    assert_non_null(strstr(err, "/nonexistent/holidays"));

    char dir[] = "/tmp/td_calendar_XXXXXX";
    assert_non_null(mkdtemp(dir));
    /* empty: an empty calendar */
    td_calendar *cal = td_calendar_load_dir(dir, err, sizeof err);
    assert_non_null(cal);
    assert_int_equal(td_calendar_countries(cal, NULL, 0), 0);
    td_calendar_free(cal);

    write_file(dir, "FR.holidays", "2026-05-01 Labour Day\n");
    write_file(dir, "fr-67.holidays", "2026-12-26 St Stephen's Day\n");
    write_file(dir, "README.md", "not a calendar\n");
    write_file(dir, ".hidden.holidays", "garbage\n");
    cal = td_calendar_load_dir(dir, err, sizeof err);
    if (cal == NULL) fail_msg("%s", err);
    const char *names[4];
    assert_int_equal(td_calendar_countries(cal, names, 4), 2);
    assert_string_equal(names[0], "FR");
    assert_string_equal(names[1], "FR-67");
    assert_true(td_calendar_is_holiday(cal, "FR-67", 2026, 5, 1, NULL));
    assert_true(td_calendar_is_holiday(cal, "FR-67", 2026, 12, 26, NULL));
    assert_false(td_calendar_is_holiday(cal, "FR", 2026, 12, 26, NULL));
    td_calendar_free(cal);

    /* one bad file spoils the lot, and the message names it with the line */
    write_file(dir, "GB.holidays", "2026-01-01 New Year's Day\n2026-02-29 Nope\n");
    assert_null(td_calendar_load_dir(dir, err, sizeof err));
    assert_non_null(strstr(err, "/GB.holidays: line 2: bad date '2026-02-29'"));
    remove_file(dir, "GB.holidays");

    write_file(dir, "France.holidays", "2026-05-01 Labour Day\n");
    assert_null(td_calendar_load_dir(dir, err, sizeof err));
    assert_non_null(strstr(err, "France.holidays"));
    assert_non_null(strstr(err, "bad region name"));
    assert_null(td_calendar_load_dir(dir, NULL, 0)); /* no error buffer: still fails cleanly */
    remove_file(dir, "France.holidays");

    remove_file(dir, "FR.holidays");
    remove_file(dir, "fr-67.holidays");
    remove_file(dir, "README.md");
    remove_file(dir, ".hidden.holidays");
    assert_int_equal(rmdir(dir), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_format),           cmocka_unit_test(test_parse_errors),
        cmocka_unit_test(test_merge_and_subdivisions), cmocka_unit_test(test_shipped_files_parse),
        cmocka_unit_test(test_shipped_dates),          cmocka_unit_test(test_next_slot),
        cmocka_unit_test(test_next_slot_dst_edges),    cmocka_unit_test(test_load_dir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
