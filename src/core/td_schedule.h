/*
 * td_schedule.h - when a touch may happen: business days (weekends and
 * public holidays of the prospect's country, td_calendar.h), business hours
 * and quiet hours, all in the prospect's own time zone.
 *
 * The engine moves every recommendation's not_before with
 * td_sched_window(); the rules language exposes business_day(t) and
 * next_business_slot(t) through the same functions, so a rule and the engine
 * never disagree about what a business day is.
 *
 * @locality any thread (a td_tzdb is per thread).
 */
#ifndef TD_SCHEDULE_H
#define TD_SCHEDULE_H

#include "td_base.h"
#include "td_state.h"
#include "td_time.h"

/* The zone of a prospect: its own when valid-looking, else the default. */
const char *td_sched_zone(const td_state *st, const td_settings *s);

/* Whether t's local date (in zone) is a business day of country ("" = any:
 * weekends only). Uses s->calendar when set, else Monday to Friday. */
bool td_sched_business_day(const td_settings *s, td_tzdb *tz, const char *zone, const char *country,
                           td_ms t);

/* The first instant >= t on a business day, inside business hours
 * [business_start_hour, business_end_hour) local. */
td_ms td_sched_next_business(const td_settings *s, td_tzdb *tz, const char *zone,
                             const char *country, td_ms t);

/* t, or the end of the quiet hours when t falls inside them (local time). */
td_ms td_sched_after_quiet(const td_settings *s, td_tzdb *tz, const char *zone, td_ms t);

/* The same local time of day n business days after t (n >= 1): weekends and
 * holidays of country are skipped, in zone. A time that does not exist on
 * the target day (DST gap) moves forward. */
td_ms td_sched_add_business_days(const td_settings *s, td_tzdb *tz, const char *zone,
                                 const char *country, td_ms t, int n);

/* not_before for a recommendation: business window (any_window = false) or
 * only out of quiet hours (any_window = true). */
td_ms td_sched_window(const td_settings *s, td_tzdb *tz, const td_state *st, td_ms t,
                      bool any_window);

#endif
