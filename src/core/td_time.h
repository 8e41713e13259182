/*
 * td_time.h - RFC 3339 timestamps, durations, civil calendar arithmetic (UTC)
 * and local time in IANA zones.
 *
 * Civil conversions are done with integer arithmetic (days-from-civil), never
 * with the C library's TZ-dependent functions. Local time uses a real time
 * zone implementation (ICU's calendar over the IANA database) behind td_tzdb:
 * the process-wide TZ variable is never read or changed.
 *
 * @locality any thread for the td_time_* functions; a td_tzdb is used by one
 * thread at a time (it caches per-zone calendars).
 */
#ifndef TD_TIME_H
#define TD_TIME_H

#include "td_base.h"

/*
 * Parses an RFC 3339 date-time of exactly `len` bytes ("2026-11-22T10:15:00Z",
 * "2026-11-22T11:15:00.250+01:00"; 't'/'z' lower case and a space separator
 * are accepted as RFC 3339 allows). Fractions below a millisecond are
 * truncated. Rejects out-of-range fields (month 13, Feb 30, hour 24...).
 * @returns TD_OK and *out, or TD_ERR.
 */
int td_time_parse(const char *s, size_t len, td_ms *out);

/*
 * Formats `t` as UTC RFC 3339 ("2026-11-22T10:15:00Z", or with ".250" when the
 * milliseconds are not zero) into buf (cap >= 32 always suffices).
 * @returns the length written (excluding NUL).
 */
size_t td_time_format(td_ms t, char *buf, size_t cap);
#define TD_TIME_BUF 32

/*
 * td_time_format for many instants in a row (a state's flat form: its
 * timestamps, the touch list), which often share their date: the date parts
 * last formatted are kept in the memo (8 of them, by day) and copied when
 * the next instant falls on one of those UTC days. Byte for byte what
 * td_time_format writes, NUL included; buf needs TD_TIME_BUF bytes
 * (whatever the length). A memo starts as TD_TIME_MEMO_INIT and belongs to
 * one caller at a time. @returns the length written (excluding NUL).
 */
#define TD_TIME_MEMO_SLOTS 8
typedef struct td_time_memo {
    uint32_t day[TD_TIME_MEMO_SLOTS];  /* days since 0001-01-01 of date[i], or UINT32_MAX */
    char date[TD_TIME_MEMO_SLOTS][16]; /* "YYYY-MM-DDT" (11 bytes used) */
} td_time_memo;
#define TD_TIME_MEMO_INIT                                                                          \
    {                                                                                              \
        {UINT32_MAX, UINT32_MAX, UINT32_MAX, UINT32_MAX,                                           \
         UINT32_MAX, UINT32_MAX, UINT32_MAX, UINT32_MAX},                                          \
        {                                                                                          \
            { 0 }                                                                                  \
        }                                                                                          \
    }
size_t td_time_format_memo(td_ms t, char *buf, td_time_memo *m);

/*
 * Parses a duration literal: one or more <integer><unit> groups with units
 * ms, s, m, h, d, w ("72h", "3d", "2w", "30m", "1h30m", "500ms").
 * @returns TD_OK and *out (milliseconds), or TD_ERR.
 */
int td_duration_parse(const char *s, size_t len, td_ms *out);

/* Formats a duration in the largest exact units ("3d", "1h30m", "0s", "-2h"). */
size_t td_duration_format(td_ms d, char *buf, size_t cap);

/* Broken-down civil time. */
typedef struct td_civil {
    int year;    /* e.g. 2026 */
    int month;   /* 1..12 */
    int day;     /* 1..31 */
    int hour;    /* 0..23 */
    int minute;  /* 0..59 */
    int second;  /* 0..59 */
    int ms;      /* 0..999 */
    int weekday; /* 1 = Monday .. 7 = Sunday (ISO 8601) */
    int yday;    /* 1..366 */
} td_civil;

/* UTC <-> civil, for any year 1..9999. */
void td_civil_from_ms(td_ms t, td_civil *out);
td_ms td_civil_to_ms(int year, int month, int day, int hour, int minute, int second);
/* Days since 1970-01-01 of a civil date (proleptic Gregorian). */
int64_t td_days_from_civil(int year, int month, int day);

/* ---- time zones ---- */

typedef struct td_tzdb td_tzdb;

/* Creates an empty zone cache. @returns NULL on out-of-memory. */
td_tzdb *td_tzdb_new(void);
/* Frees the cache and every calendar in it; NULL is a no-op. */
void td_tzdb_free(td_tzdb *db);

/* true when `zone` (NUL-terminated) is a known IANA zone id ("Europe/Paris"). */
bool td_tz_valid(td_tzdb *db, const char *zone);

/*
 * Local civil time of UTC instant `t` in `zone`. An unknown zone or NULL/empty
 * zone falls back to UTC and returns TD_ERR (out is still filled).
 * `offset_ms`, when not NULL, receives the UTC offset in force at t.
 */
int td_tz_local(td_tzdb *db, const char *zone, td_ms t, td_civil *out, td_ms *offset_ms);

/*
 * UTC instant of a local wall-clock time in `zone`. A time that does not exist
 * (spring-forward gap) moves forward by the gap; an ambiguous one (fall-back)
 * takes the first occurrence. Unknown zone: treated as UTC, returns TD_ERR.
 */
int td_tz_to_utc(td_tzdb *db, const char *zone, int year, int month, int day, int hour, int minute,
                 td_ms *out);

#endif
