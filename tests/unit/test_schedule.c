/*
 * test_schedule.c - when touches may happen: not_before moved into the
 * prospect's business window (weekends, public holidays of its country, its
 * zone, DST), quiet hours for `window = "any"`, and the rules-language
 * functions business_day, next_business_slot, last_fired, gift_tax_cap_eur.
 * Uses the repository's holiday files (config/holidays).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "td_calendar_load.h"
#include "td_engine.h"
#include "td_schedule.h"

static td_calendar *load_calendar(void) {
    const char *src = getenv("TD_SOURCE_DIR");
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/config/holidays", src ? src : "..");
    char err[256];
    td_calendar *cal = td_calendar_load_dir(dir, err, sizeof err);
    if (!cal) fail_msg("cannot load %s: %s", dir, err);
    return cal;
}

static td_ms paris(int y, int mo, int d, int h, int mi, td_tzdb *tz) {
    td_ms t;
    assert_int_equal(td_tz_to_utc(tz, "Europe/Paris", y, mo, d, h, mi, &t), TD_OK);
    return t;
}

static void test_weekend_without_calendar(void **state) {
    (void)state;
    td_tzdb *tz = td_tzdb_new();
    td_settings s;
    td_settings_default(&s); /* no calendar: Monday to Friday */
    td_state st;
    td_state_init(&st, "p");
    td_strlcpy(st.timezone, "Europe/Paris", sizeof st.timezone);
    /* Friday 2026-11-06 19:00 Paris -> Monday 09:00 Paris (08:00Z) */
    td_ms t = paris(2026, 11, 6, 19, 0, tz);
    assert_int_equal(td_sched_window(&s, tz, &st, t, false), td_civil_to_ms(2026, 11, 9, 8, 0, 0));
    /* inside the window: unchanged */
    t = paris(2026, 11, 6, 10, 30, tz);
    assert_int_equal(td_sched_window(&s, tz, &st, t, false), t);
    /* before opening on a weekday: same day 09:00 */
    t = paris(2026, 11, 4, 6, 0, tz);
    assert_int_equal(td_sched_window(&s, tz, &st, t, false), paris(2026, 11, 4, 9, 0, tz));
    td_state_free(&st);
    td_tzdb_free(tz);
}

static void test_holidays(void **state) {
    (void)state;
    td_tzdb *tz = td_tzdb_new();
    td_calendar *cal = load_calendar();
    td_settings s;
    td_settings_default(&s);
    s.calendar = cal;
    td_state st;
    td_state_init(&st, "p");
    td_strlcpy(st.timezone, "Europe/Paris", sizeof st.timezone);
    td_strlcpy(st.country, "FR", sizeof st.country);
    /* Thursday 24 Dec 2026 19:00: Friday 25 is Christmas -> Monday 28, 09:00 */
    td_ms t = paris(2026, 12, 24, 19, 0, tz);
    assert_int_equal(td_sched_window(&s, tz, &st, t, false), paris(2026, 12, 28, 9, 0, tz));
    /* a holiday on a Monday: Whit Monday 25 May 2026 -> Tuesday 26, 09:00 (summer time) */
    t = paris(2026, 5, 22, 18, 30, tz);
    assert_int_equal(td_sched_window(&s, tz, &st, t, false), paris(2026, 5, 26, 9, 0, tz));
    assert_int_equal(paris(2026, 5, 26, 9, 0, tz), td_civil_to_ms(2026, 5, 26, 7, 0, 0));
    /* the same dates for a US prospect are business days */
    td_strlcpy(st.country, "US", sizeof st.country);
    td_strlcpy(st.timezone, "America/New_York", sizeof st.timezone);
    td_ms ny;
    assert_int_equal(td_tz_to_utc(tz, "America/New_York", 2026, 5, 26, 11, 0, &ny), TD_OK);
    assert_int_equal(td_sched_window(&s, tz, &st, ny, false), ny);
    /* but not Independence Day observed (Friday 3 July 2026) */
    assert_int_equal(td_tz_to_utc(tz, "America/New_York", 2026, 7, 3, 11, 0, &ny), TD_OK);
    td_ms mon;
    assert_int_equal(td_tz_to_utc(tz, "America/New_York", 2026, 7, 6, 9, 0, &mon), TD_OK);
    assert_int_equal(td_sched_window(&s, tz, &st, ny, false), mon);
    /* business_day through the schedule module */
    assert_false(td_sched_business_day(&s, tz, "America/New_York", "US", ny));
    assert_true(td_sched_business_day(&s, tz, "America/New_York", "US", mon));
    td_state_free(&st);
    td_calendar_free(cal);
    td_tzdb_free(tz);
}

static void test_quiet_hours(void **state) {
    (void)state;
    td_tzdb *tz = td_tzdb_new();
    td_settings s;
    td_settings_default(&s); /* quiet 21:00 -> 08:00 */
    td_state st;
    td_state_init(&st, "p");
    td_strlcpy(st.timezone, "Europe/Paris", sizeof st.timezone);
    td_ms t = paris(2026, 11, 7, 22, 30, tz); /* Saturday night */
    assert_int_equal(td_sched_window(&s, tz, &st, t, true), paris(2026, 11, 8, 8, 0, tz));
    t = paris(2026, 11, 8, 7, 0, tz);
    assert_int_equal(td_sched_window(&s, tz, &st, t, true), paris(2026, 11, 8, 8, 0, tz));
    t = paris(2026, 11, 8, 12, 0, tz); /* Sunday noon: "any" allows weekends */
    assert_int_equal(td_sched_window(&s, tz, &st, t, true), t);
    s.quiet_start_hour = s.quiet_end_hour = 0; /* no quiet hours */
    t = paris(2026, 11, 7, 23, 0, tz);
    assert_int_equal(td_sched_window(&s, tz, &st, t, true), t);
    td_state_free(&st);
    td_tzdb_free(tz);
}

/* DST: the Sunday of the spring change, a slot on Monday stays at 09:00 local. */
static void test_dst(void **state) {
    (void)state;
    td_tzdb *tz = td_tzdb_new();
    td_settings s;
    td_settings_default(&s);
    td_state st;
    td_state_init(&st, "p");
    td_strlcpy(st.timezone, "Europe/Paris", sizeof st.timezone);
    td_ms t = paris(2026, 3, 28, 12, 0, tz);   /* Saturday, UTC+1 */
    td_ms want = paris(2026, 3, 30, 9, 0, tz); /* Monday, UTC+2 */
    assert_int_equal(want, td_civil_to_ms(2026, 3, 30, 7, 0, 0));
    assert_int_equal(td_sched_window(&s, tz, &st, t, false), want);
    /* across the date line: 18:30 Monday in Auckland is still Monday morning UTC */
    td_strlcpy(st.timezone, "Pacific/Auckland", sizeof st.timezone);
    td_ms akl;
    assert_int_equal(td_tz_to_utc(tz, "Pacific/Auckland", 2026, 11, 9, 18, 30, &akl), TD_OK);
    td_ms next;
    assert_int_equal(td_tz_to_utc(tz, "Pacific/Auckland", 2026, 11, 10, 9, 0, &next), TD_OK);
    assert_int_equal(td_sched_window(&s, tz, &st, akl, false), next);
    td_state_free(&st);
    td_tzdb_free(tz);
}

/* n business days later, same local time: weekends and holidays skipped. */
static void test_add_business_days(void **state) {
    (void)state;
    td_tzdb *tz = td_tzdb_new();
    td_calendar *cal = load_calendar();
    td_settings s;
    td_settings_default(&s);
    s.calendar = cal;
    /* Friday 6 Nov 2026 10:15 Paris + 1 business day = Monday 9 Nov 10:15 */
    td_ms t = paris(2026, 11, 6, 10, 15, tz);
    assert_int_equal(td_sched_add_business_days(&s, tz, "Europe/Paris", "FR", t, 1),
                     paris(2026, 11, 9, 10, 15, tz));
    /* Tuesday + 1 = Wednesday */
    t = paris(2026, 11, 3, 16, 0, tz);
    assert_int_equal(td_sched_add_business_days(&s, tz, "Europe/Paris", "FR", t, 1),
                     paris(2026, 11, 4, 16, 0, tz));
    /* Tuesday 10 Nov + 1 skips Armistice Day (Wed 11 Nov, FR): Thursday 12 */
    t = paris(2026, 11, 10, 9, 30, tz);
    assert_int_equal(td_sched_add_business_days(&s, tz, "Europe/Paris", "FR", t, 1),
                     paris(2026, 11, 12, 9, 30, tz));
    /* ...but not for a German prospect (11 Nov is Veterans Day in the US: skipped there too) */
    assert_int_equal(td_sched_add_business_days(&s, tz, "Europe/Paris", "DE", t, 1),
                     paris(2026, 11, 11, 9, 30, tz));
    /* across the spring DST change: Friday 27 Mar 09:00 (UTC+1) + 1 = Monday 30 Mar 09:00 (UTC+2) */
    t = paris(2026, 3, 27, 9, 0, tz);
    td_ms m = td_sched_add_business_days(&s, tz, "Europe/Paris", "FR", t, 1);
    assert_int_equal(m, paris(2026, 3, 30, 9, 0, tz));
    assert_int_equal(m - t, 3 * TD_DAY - TD_HOUR);
    /* 5 business days = a week */
    t = paris(2026, 11, 2, 9, 0, tz);
    assert_int_equal(td_sched_add_business_days(&s, tz, "Europe/Paris", "FR", t, 5),
                     paris(2026, 11, 9, 9, 0, tz));
    /* the rules key: after = "2bd"; bad counts are E109 */
    const char *good = "rules = ( { id = \"t\"; on = [ \"email.sent\" ]; after = \"2bd\";\n"
                       "  recommend = { channel = \"email\"; touch = \"follow_up\"; }; } );\n";
    td_source src = {.name = "bd.rules", .text = good, .len = strlen(good)};
    td_diags d = {0};
    td_ruleset *rs = td_ruleset_compile(&src, 1, &d);
    assert_non_null(rs);
    assert_int_equal(td_ruleset_find(rs, "t")->after_business_days, 2);
    td_ruleset_free(rs);
    td_diags_free(&d);
    const char *bad = "rules = ( { id = \"t\"; on = [ \"email.sent\" ]; after = \"0bd\";\n"
                      "  recommend = { channel = \"email\"; touch = \"follow_up\"; }; } );\n";
    td_source src2 = {.name = "bd.rules", .text = bad, .len = strlen(bad)};
    td_diags d2 = {0};
    assert_null(td_ruleset_compile(&src2, 1, &d2));
    assert_string_equal(d2.v[0].code, "E109");
    td_diags_free(&d2);
    td_calendar_free(cal);
    td_tzdb_free(tz);
}

static const char *RULES =
    "settings = { default_timezone = \"Europe/Paris\"; gift_tax_cap_eur = { FR = 73.0; DE = 35; }; "
    "};\n"
    "rules = (\n"
    "  { id = \"biz\"; on = [ \"email.opened\" ];\n"
    "    recommend = { channel = \"email\"; touch = \"follow_up\"; }; },\n"
    "  { id = \"any\"; on = [ \"email.replied\" ];\n"
    "    recommend = { channel = \"email\"; touch = \"human_reply\"; window = \"any\"; }; },\n"
    "  { id = \"fn\"; on = [ \"email.clicked\" ];\n"
    "    when = \"!business_day(now) && next_business_slot(now) > now && !has(last_fired('biz'))"
    " && gift_tax_cap_eur() == 73.0\";\n"
    "    recommend = { channel = \"email\"; touch = \"follow_up\"; window = \"any\"; }; },\n"
    "  { id = \"fired\"; on = [ \"email.delivered\" ];\n"
    "    when = \"since(last_fired('biz')) < 1d && !has(gift_tax_cap_eur())\";\n"
    "    recommend = { channel = \"email\"; touch = \"follow_up\"; window = \"any\"; }; }\n"
    ");\n";

static td_step_out *step(td_ruleset *rs, td_state *st, td_tzdb *tz, const char *json) {
    static td_event ev;
    static td_step_out out;
    td_event_error err;
    if (td_event_decode(json, strlen(json), &ev, &err) != TD_OK) fail_msg("%s", err.reason);
    td_trigger trig = {.kind = TD_TRIG_EVENT, .ev = &ev};
    assert_int_equal(td_engine_step(rs, st, &trig, ev.occurred_at, tz, 0, &out), TD_OK);
    return &out;
}

static void test_engine_windows_and_functions(void **state) {
    (void)state;
    td_tzdb *tz = td_tzdb_new();
    td_calendar *cal = load_calendar();
    td_source src = {.name = "s.rules", .text = RULES, .len = strlen(RULES)};
    td_diags d = {0};
    td_ruleset *rs = td_ruleset_compile(&src, 1, &d);
    for (size_t i = 0; i < d.n; i++) {
        char *m = td_diag_format(&d.v[i]);
        print_message("%s\n", m);
        free(m);
    }
    assert_non_null(rs);
    td_diags_free(&d);
    td_ruleset_set_calendar(rs, cal);
    td_state st;
    td_state_init(&st, "p-1");
    step(rs, &st, tz,
         "{\"id\":\"u\",\"type\":\"prospect.updated\",\"prospect_id\":\"p-1\","
         "\"occurred_at\":\"2026-12-20T10:00:00Z\",\"data\":{\"country\":\"FR\"}}");
    /* Christmas Day 2026 (Friday), 15:00 Paris: the business rule waits for Monday 28 */
    td_step_out *o = step(rs, &st, tz,
                          "{\"id\":\"c\",\"type\":\"email.clicked\",\"prospect_id\":\"p-1\","
                          "\"occurred_at\":\"2026-12-25T14:00:00Z\"}");
    assert_int_equal(o->nrecs, 1); /* fn: not a business day, biz never fired, FR cap 73 */
    assert_string_equal(o->recs[0].rule->id, "fn");
    o = step(rs, &st, tz,
             "{\"id\":\"o\",\"type\":\"email.opened\",\"prospect_id\":\"p-1\",\"occurred_at\":"
             "\"2026-12-25T14:00:00Z\"}");
    assert_int_equal(o->nrecs, 1);
    assert_int_equal(o->recs[0].not_before, td_civil_to_ms(2026, 12, 28, 8, 0, 0));
    o = step(rs, &st, tz,
             "{\"id\":\"r\",\"type\":\"email.replied\",\"prospect_id\":\"p-1\",\"occurred_at\":"
             "\"2026-12-25T14:00:00Z\"}");
    assert_int_equal(o->nrecs, 1);
    assert_int_equal(o->recs[0].not_before, td_civil_to_ms(2026, 12, 25, 14, 0, 0)); /* any */
    /* last_fired('biz') is now set; US has no cap configured here */
    step(rs, &st, tz,
         "{\"id\":\"u2\",\"type\":\"prospect.updated\",\"prospect_id\":\"p-1\","
         "\"occurred_at\":\"2026-12-25T15:00:00Z\",\"data\":{\"country\":\"US\"}}");
    o = step(rs, &st, tz,
             "{\"id\":\"dl\",\"type\":\"email.delivered\",\"prospect_id\":\"p-1\",\"occurred_at\":"
             "\"2026-12-25T16:00:00Z\"}");
    assert_int_equal(o->nrecs, 1);
    assert_string_equal(o->recs[0].rule->id, "fired");
    td_state_free(&st);
    td_ruleset_free(rs);
    td_calendar_free(cal);
    td_tzdb_free(tz);
}

static void test_window_key_errors(void **state) {
    (void)state;
    const char *bad = "rules = ( { id = \"a\"; on = [ \"email.opened\" ];\n"
                      "  recommend = { channel = \"email\"; touch = \"follow_up\"; window = "
                      "\"always\"; }; } );\n";
    td_source src = {.name = "w.rules", .text = bad, .len = strlen(bad)};
    td_diags d = {0};
    assert_null(td_ruleset_compile(&src, 1, &d));
    assert_true(d.errors >= 1);
    assert_string_equal(d.v[0].code, "E110");
    assert_int_equal(d.v[0].line, 2);
    td_diags_free(&d);
    const char *bad2 = "settings = { gift_tax_cap_eur = { fr = 73.0; }; };\n";
    td_source src2 = {.name = "c.rules", .text = bad2, .len = strlen(bad2)};
    td_diags d2 = {0};
    assert_null(td_ruleset_compile(&src2, 1, &d2));
    assert_string_equal(d2.v[0].code, "E111");
    td_diags_free(&d2);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_weekend_without_calendar),
        cmocka_unit_test(test_holidays),
        cmocka_unit_test(test_quiet_hours),
        cmocka_unit_test(test_dst),
        cmocka_unit_test(test_engine_windows_and_functions),
        cmocka_unit_test(test_window_key_errors),
        cmocka_unit_test(test_add_business_days),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
