/*
 * td_schedule.c - business days, business hours and quiet hours in the
 * prospect's zone (see td_schedule.h).
 *
 * With a calendar attached, business days and the next slot come from
 * td_calendar (holidays, per-country weekends, make-up working days). Without
 * one (unit tests that use bare settings), Monday to Friday are business days
 * and the walk below finds the next slot: it converts start_hour:00 of each
 * following local date through the zone (td_tz_to_utc moves a time in a DST
 * gap forward), so DST changes never shift a slot by an hour.
 *
 * @locality any thread.
 */
#include "td_schedule.h"

#include "td_calendar.h"

const char *td_sched_zone(const td_state *st, const td_settings *s) {
    if (st && st->timezone[0]) return st->timezone;
    if (s && s->default_timezone[0]) return s->default_timezone;
    return "UTC";
}

static int weekday_of_days(int64_t days) { return (int)(((days % 7) + 7 + 3) % 7) + 1; }

bool td_sched_business_day(const td_settings *s, td_tzdb *tz, const char *zone, const char *country,
                           td_ms t) {
    td_civil c;
    td_tz_local(tz, zone, t, &c, NULL);
    if (s && s->calendar)
        return td_calendar_is_business_day(s->calendar, country ? country : "", c.year, c.month,
                                           c.day);
    return c.weekday <= 5;
}

static bool business_date(const td_settings *s, const char *country, int64_t day) {
    td_civil d;
    td_civil_from_ms(day * TD_DAY, &d);
    if (s && s->calendar)
        return td_calendar_is_business_day(s->calendar, country ? country : "", d.year, d.month,
                                           d.day);
    return weekday_of_days(day) <= 5;
}

td_ms td_sched_next_business(const td_settings *s, td_tzdb *tz, const char *zone,
                             const char *country, td_ms t) {
    int start = s ? s->business_start_hour : 9, end = s ? s->business_end_hour : 18;
    if (start < 0 || start > 23 || end <= start || end > 24) return t;
    if (s && s->calendar)
        return td_calendar_next_slot(s->calendar, tz, zone, country ? country : "", start, end, t);
    td_civil c;
    td_tz_local(tz, zone, t, &c, NULL);
    int64_t day = td_days_from_civil(c.year, c.month, c.day);
    if (business_date(s, country, day) && c.hour >= start && c.hour < end) return t;
    if (c.hour >= start) day++; /* today's window started (or ended): from tomorrow */
    for (int k = 0; k < 60; k++, day++) {
        if (!business_date(s, country, day)) continue;
        td_civil d;
        td_civil_from_ms(day * TD_DAY, &d);
        td_ms u;
        td_tz_to_utc(tz, zone, d.year, d.month, d.day, start, 0, &u);
        if (u >= t) return u;
    }
    return t;
}

td_ms td_sched_after_quiet(const td_settings *s, td_tzdb *tz, const char *zone, td_ms t) {
    if (!s) return t;
    int qs = s->quiet_start_hour, qe = s->quiet_end_hour;
    if (qs == qe || qs < 0 || qs > 23 || qe < 0 || qe > 23) return t; /* no quiet hours */
    td_civil c;
    td_tz_local(tz, zone, t, &c, NULL);
    bool quiet = qs < qe ? (c.hour >= qs && c.hour < qe) : (c.hour >= qs || c.hour < qe);
    if (!quiet) return t;
    int64_t day = td_days_from_civil(c.year, c.month, c.day);
    if (qs > qe && c.hour >= qs) day++; /* late evening: quiet ends tomorrow morning */
    td_civil d;
    td_civil_from_ms(day * TD_DAY, &d);
    td_ms u;
    td_tz_to_utc(tz, zone, d.year, d.month, d.day, qe, 0, &u);
    return u >= t ? u : t;
}

td_ms td_sched_add_business_days(const td_settings *s, td_tzdb *tz, const char *zone,
                                 const char *country, td_ms t, int n) {
    td_civil c;
    td_tz_local(tz, zone, t, &c, NULL);
    int64_t day = td_days_from_civil(c.year, c.month, c.day);
    for (int k = 0, left = n; left > 0 && k < 366; k++) {
        day++;
        if (business_date(s, country, day)) left--;
    }
    td_civil d;
    td_civil_from_ms(day * TD_DAY, &d);
    td_ms u;
    td_tz_to_utc(tz, zone, d.year, d.month, d.day, c.hour, c.minute, &u);
    return u + (td_ms)c.second * TD_SECOND + c.ms;
}

td_ms td_sched_window(const td_settings *s, td_tzdb *tz, const td_state *st, td_ms t,
                      bool any_window) {
    const char *zone = td_sched_zone(st, s);
    if (any_window) return td_sched_after_quiet(s, tz, zone, t);
    return td_sched_next_business(s, tz, zone, st ? st->country : "", t);
}
