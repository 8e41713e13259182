/*
 * td_calendar.h - business calendars: weekends, public holidays and make-up
 * working days per country, and the next allowed sending slot in a
 * prospect's local time.
 *
 * Design
 * - A td_calendar holds one entry per region: a country ("FR", ISO 3166-1
 *   alpha-2) or a subdivision ("DE-BY", ISO 3166-2). Each region has a
 *   weekend (a set of ISO weekdays; Saturday and Sunday unless declared),
 *   a sorted array of holidays and a sorted array of make-up working days,
 *   keyed by day number (days since 1970-01-01), so every lookup is a binary
 *   search. Regions are kept sorted by name (binary search too).
 * - The text of one `.holidays` file is parsed by td_calendar_add; the file
 *   format is documented in docs/calendar.md. Reading files is the shell's
 *   job (src/app/td_calendar_load.h): this module does no I/O, reads no
 *   clock and has no globals.
 * - A subdivision inherits from its country: asking about "DE-BY" consults
 *   region "DE-BY" and then "DE" (holidays and workdays of both; the weekend
 *   of "DE-BY" if it declares one, else that of "DE"). Names are matched
 *   case-insensitively. An unknown, NULL or empty country has no holidays
 *   and the default Saturday-Sunday weekend.
 * - A day is a business day when it is not a holiday, and it is either a
 *   make-up working day or not a weekend day. A holiday always wins.
 *
 * Ownership: td_calendar_new returns a calendar the caller frees with
 * td_calendar_free. Names returned (holiday names, region names) point into
 * the calendar and live until it is freed or added to.
 *
 * @locality building (td_calendar_add) needs exclusive access; once built, a
 * calendar is read-only and any number of threads may query it at the same
 * time. td_calendar_next_slot uses a td_tzdb, which is one thread's at a
 * time (see td_time.h).
 */
#ifndef TD_CALENDAR_H
#define TD_CALENDAR_H

#include "td_base.h"
#include "td_time.h"

typedef struct td_calendar td_calendar;

/* Longest region name: "CC" or "CC-" plus 1..3 letters or digits. */
#define TD_CAL_REGION_MAX 6
/* Longest holiday name, in bytes. */
#define TD_CAL_NAME_MAX 200
/* How far td_calendar_next_slot looks ahead, in days. */
#define TD_CAL_SEARCH_DAYS 60

/* An empty calendar (every country: Saturday-Sunday weekend, no holidays).
 * @returns NULL on out-of-memory. */
td_calendar *td_calendar_new(void);

/* Frees the calendar and everything in it; NULL is a no-op. */
void td_calendar_free(td_calendar *cal);

/*
 * Parses the text of one holidays file (`len` bytes, need not be
 * NUL-terminated) into region `region` ("FR", "DE-BY"; case-insensitive,
 * stored upper case). Adding to a region that exists merges into it (a date
 * declared twice is an error; a second `weekend` line replaces the first).
 * All or nothing: on error the calendar is unchanged and err receives the
 * first problem as "line N: message", followed by " (and K more errors)"
 * when there are others.
 * @returns TD_OK, or TD_ERR (syntax, bad region name, out-of-memory).
 */
int td_calendar_add(td_calendar *cal, const char *region, const char *text, size_t len, char *err,
                    size_t errcap);

/*
 * true when y-m-d is a public holiday of `country` (or of its country when
 * `country` is a subdivision); *name (when not NULL) then receives its name,
 * else NULL. An invalid date is no holiday.
 */
bool td_calendar_is_holiday(const td_calendar *cal, const char *country, int y, int m, int d,
                            const char **name);

/*
 * true when y-m-d is a working day of `country`: not a holiday, and either a
 * declared make-up working day or not a weekend day. An unknown or empty
 * country: Monday to Friday. An invalid date is not a business day.
 */
bool td_calendar_is_business_day(const td_calendar *cal, const char *country, int y, int m, int d);

/* true when ISO weekday `wd` (1 = Monday .. 7 = Sunday) is a weekend day of
 * `country` (default Saturday and Sunday). */
bool td_calendar_is_weekend(const td_calendar *cal, const char *country, int wd);

/*
 * true when the calendar has data for `year` in `country` (or its country):
 * the file's `years = A-B` line, or without one, the years of its dates.
 * Lets the daemon warn when a calendar runs out ("CN has no 2029 data").
 */
bool td_calendar_covers(const td_calendar *cal, const char *country, int year);

/*
 * The first instant >= t that falls, in time zone `zone`, on a business day
 * of `country` with a local hour in [start_hour, end_hour):
 *  - t itself when it is already inside such a window;
 *  - otherwise start_hour:00 local of the next business day (or of the same
 *    day when t is before the window), converted with td_tz_to_utc: a start
 *    inside a spring-forward gap moves forward by the gap.
 * Hours are clamped to 0..24; a window with start_hour >= end_hour means the
 * whole day (only weekends and holidays are avoided). An unknown or empty
 * zone is UTC (pick a default zone before calling). `cal` may be NULL (no
 * holidays, Saturday-Sunday weekends). The search stops after
 * TD_CAL_SEARCH_DAYS days; if no window is found (or t is TD_MS_MISSING),
 * t is returned unchanged.
 */
td_ms td_calendar_next_slot(const td_calendar *cal, td_tzdb *tz, const char *zone,
                            const char *country, int start_hour, int end_hour, td_ms t);

/*
 * Region names in the calendar, sorted ("AE", "BE", ..., "US"): writes at
 * most `cap` pointers into names (may be NULL when cap is 0).
 * @returns the total number of regions.
 */
size_t td_calendar_countries(const td_calendar *cal, const char **names, size_t cap);

#endif
