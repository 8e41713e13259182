/*
 * td_time.c - RFC 3339 timestamps, duration literals, UTC civil arithmetic
 * and local time in IANA zones.
 *
 * Design:
 * - UTC <-> civil conversion is pure integer arithmetic (Howard Hinnant's
 *   days_from_civil / civil_from_days over the proleptic Gregorian calendar),
 *   so it never depends on the C library, the process TZ or the locale.
 * - Local time goes through ICU's C calendar API (ucal.h) over ICU's copy of
 *   the IANA database. ICU is asked for one thing only: the UTC offset in
 *   force at a UTC instant. Civil fields are then computed by our own
 *   arithmetic from (t + offset), which keeps every calendar computation in
 *   one place and avoids ICU's Julian/Gregorian switch.
 * - Wall clock -> UTC (td_tz_to_utc) is solved from offsets alone, the way
 *   java.time does it: probe the offsets before and after the wall time, keep
 *   the candidates that map back to the wall time; two candidates is an
 *   overlap (take the earlier), none is a gap (shift forward by the gap).
 * - A td_tzdb owns one UCalendar per zone id (opening one costs tens of
 *   microseconds, using one costs well under one). The cache is an
 *   open-addressing table of TZDB_SLOTS slots holding at most TZDB_MAX zones;
 *   unknown ids are cached too (with no calendar) so a flood of events with a
 *   bad zone does not hit ICU every time. When full, the whole cache is
 *   flushed: simple, bounded, and real deployments use far fewer zones.
 *
 * @locality td_time_*, td_duration_*, td_civil_* and td_days_from_civil: any
 * thread. A td_tzdb: one thread at a time.
 */
#include "td_time.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <unicode/ucal.h>
#include <unicode/ustring.h>

/* ---- civil arithmetic ---- */

/* Floor division and modulo for possibly negative numerators. */
static int64_t floor_div(int64_t a, int64_t b) {
    int64_t q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0))) q--;
    return q;
}

static int64_t floor_mod(int64_t a, int64_t b) { return a - floor_div(a, b) * b; }

int64_t td_days_from_civil(int year, int month, int day) {
    /* Months outside 1..12 are folded into the year so callers may do
     * "month + 1" arithmetic without normalising first. */
    int64_t y = year;
    int64_t m = month;
    if (m < 1 || m > 12) {
        y += floor_div(m - 1, 12);
        m = floor_mod(m - 1, 12) + 1;
    }
    y -= m <= 2;
    int64_t era = floor_div(y, 400);
    int64_t yoe = y - era * 400;                                     /* [0, 399] */
    int64_t doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + day - 1; /* [0, 365] */
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;             /* [0, 146096] */
    return era * 146097 + doe - 719468;
}

static void civil_from_days(int64_t z, int *year, int *month, int *day) {
    z += 719468;
    int64_t era = floor_div(z, 146097);
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t y = yoe + era * 400;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    int64_t d = doy - (153 * mp + 2) / 5 + 1;
    int64_t m = mp < 10 ? mp + 3 : mp - 9;
    *year = (int)(y + (m <= 2));
    *month = (int)m;
    *day = (int)d;
}

void td_civil_from_ms(td_ms t, td_civil *out) {
    int64_t days = floor_div(t, TD_DAY);
    /* floor_mod(t, TD_DAY) without the product days * TD_DAY, which
     * overflows for t within a day of INT64_MIN */
    int64_t rem = t % TD_DAY;
    if (rem < 0) rem += TD_DAY;
    civil_from_days(days, &out->year, &out->month, &out->day);
    out->hour = (int)(rem / TD_HOUR);
    out->minute = (int)(rem % TD_HOUR / TD_MINUTE);
    out->second = (int)(rem % TD_MINUTE / TD_SECOND);
    out->ms = (int)(rem % TD_SECOND);
    /* 1970-01-01 was a Thursday (ISO weekday 4). */
    out->weekday = (int)(floor_mod(days + 3, 7) + 1);
    out->yday = (int)(days - td_days_from_civil(out->year, 1, 1) + 1);
}

td_ms td_civil_to_ms(int year, int month, int day, int hour, int minute, int second) {
    /* Hours, minutes and seconds outside their ranges add linearly. */
    return td_days_from_civil(year, month, day) * TD_DAY + (td_ms)hour * TD_HOUR +
           (td_ms)minute * TD_MINUTE + (td_ms)second * TD_SECOND;
}

static int days_in_month(int year, int month) {
    static const unsigned char dim[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (month == 2 && (year % 4 == 0 && (year % 100 != 0 || year % 400 == 0))) return 29;
    return dim[month - 1];
}

/* ---- RFC 3339 ---- */

/* Reads exactly n digits at s; -1 when one is not a digit. */
static int digits(const char *s, int n) {
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

int td_time_parse(const char *s, size_t len, td_ms *out) {
    /* date-time = YYYY-MM-DD ("T" / "t" / " ") HH:MM:SS [.frac] ("Z" / "z" / +HH:MM / -HH:MM) */
    if (s == NULL || len < 20) return TD_ERR;
    if (s[4] != '-' || s[7] != '-' || s[13] != ':' || s[16] != ':') return TD_ERR;
    if (s[10] != 'T' && s[10] != 't' && s[10] != ' ') return TD_ERR;
    int year = digits(s, 4), month = digits(s + 5, 2), day = digits(s + 8, 2);
    int hour = digits(s + 11, 2), minute = digits(s + 14, 2), second = digits(s + 17, 2);
    if (year < 1 || month < 1 || month > 12 || day < 1 || hour < 0 || hour > 23 || minute < 0 ||
        minute > 59 || second < 0 || second > 59)
        return TD_ERR; /* leap seconds (":60") are rejected: nothing upstream emits them */
    if (day > days_in_month(year, month)) return TD_ERR;

    size_t i = 19;
    int ms = 0;
    if (s[i] == '.') {
        i++;
        size_t start = i;
        while (i < len && s[i] >= '0' && s[i] <= '9') {
            if (i - start < 3) ms = ms * 10 + (s[i] - '0');
            i++;
        }
        if (i == start) return TD_ERR; /* "." needs at least one digit */
        for (size_t k = i - start; k < 3; k++)
            ms *= 10;
    }
    if (i >= len) return TD_ERR; /* the offset is required */
    td_ms offset = 0;
    if (s[i] == 'Z' || s[i] == 'z') {
        i++;
    } else if (s[i] == '+' || s[i] == '-') {
        if (len - i < 6 || s[i + 3] != ':') return TD_ERR;
        int oh = digits(s + i + 1, 2), om = digits(s + i + 4, 2);
        if (oh < 0 || oh > 23 || om < 0 || om > 59) return TD_ERR;
        offset = (td_ms)oh * TD_HOUR + (td_ms)om * TD_MINUTE;
        if (s[i] == '-') offset = -offset;
        i += 6;
    } else {
        return TD_ERR;
    }
    if (i != len) return TD_ERR;
    *out = td_civil_to_ms(year, month, day, hour, minute, second) + ms - offset;
    return TD_OK;
}

static void put_digits(char *p, int v, int width) {
    for (int i = width - 1; i >= 0; i--) {
        p[i] = (char)('0' + v % 10);
        v /= 10;
    }
}

/* "00".."99": two digits per table read. */
static const char digits2[200] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

static inline void put2(char *p, uint32_t v) { memcpy(p, digits2 + 2 * v, 2); }

/* Instants of years 1..9999 (RFC 3339's range): the fast path below. */
#define FMT_MIN ((td_ms)-62135596800000LL) /* 0001-01-01T00:00:00Z */
#define FMT_MAX ((td_ms)253402300799999LL) /* 9999-12-31T23:59:59.999Z */

/* The general formatter: any t (years outside 1..9999 are clamped, as they
 * always were), through td_civil_from_ms. */
static size_t time_format_slow(td_ms t, char *tmp) {
    td_civil c;
    td_civil_from_ms(t, &c);
    int year = c.year < 0 ? 0 : c.year > 9999 ? 9999 : c.year;
    put_digits(tmp, year, 4);
    tmp[4] = '-';
    put_digits(tmp + 5, c.month, 2);
    tmp[7] = '-';
    put_digits(tmp + 8, c.day, 2);
    tmp[10] = 'T';
    put_digits(tmp + 11, c.hour, 2);
    tmp[13] = ':';
    put_digits(tmp + 14, c.minute, 2);
    tmp[16] = ':';
    put_digits(tmp + 17, c.second, 2);
    size_t n = 19;
    if (c.ms != 0) {
        tmp[n++] = '.';
        put_digits(tmp + n, c.ms, 3);
        n += 3;
    }
    tmp[n++] = 'Z';
    return n;
}

/*
 * Years 1..9999: the same days-to-civil arithmetic as civil_from_days, but
 * counted from 0000-03-01 so that every quantity is a small unsigned 32-bit
 * number (divisions by constants become multiplications), without the
 * weekday and day of year td_civil_from_ms also computes, and two digits per
 * table read. Several times cheaper than the slow path, byte for byte the
 * same (tests/unit/test_time.c checks every day of the range against it).
 * put_date writes "YYYY-MM-DDT" of day `day` (days since 0001-01-01).
 */
static inline void put_date(char *p, uint32_t day) {
    /* Neri and Schneider, "Euclidean affine functions and their application
     * to calendar algorithms" (2022): the same civil date as civil_from_days
     * with fewer operations (tests/unit/test_flat.c compares every day). */
    uint32_t n1 = 4 * (day + 306) + 3; /* from 0000-03-01 */
    uint32_t c = n1 / 146097;          /* centuries */
    uint32_t n2 = (n1 % 146097) | 3;   /* 4 * (day of the century) + 3 */
    uint64_t p2 = (uint64_t)2939745 * n2;
    uint32_t z = (uint32_t)(p2 >> 32);        /* year of the century */
    uint32_t ny = (uint32_t)p2 / 2939745 / 4; /* day of the year, from March 1 */
    uint32_t y = 100 * c + z;
    uint32_t n3 = 2141 * ny + 197913;
    uint32_t m = n3 >> 16;
    uint32_t d = (n3 & 0xFFFF) / 2141 + 1;
    if (ny >= 306) { /* January, February: the next civil year */
        y++;
        m -= 12;
    }
    put2(p, y / 100);
    put2(p + 2, y % 100);
    p[4] = '-';
    put2(p + 5, m);
    p[7] = '-';
    put2(p + 8, d);
    p[10] = 'T';
}

/* "HH:MM:SS" of the second `sec` of a day (< 86400) into p. */
static inline void put_hms(char *p, uint32_t sec) {
    uint32_t h = sec / 3600, r = sec - h * 3600, mi = r / 60;
    put2(p, h);
    p[2] = ':';
    put2(p + 3, mi);
    p[5] = ':';
    put2(p + 6, r - mi * 60);
}

/* The time of day (ms `rem` < TD_DAY) at p + 11 (after the date), then 'Z'.
 * @returns the whole length: 20, or 24 with milliseconds. */
static inline size_t put_time(char *p, uint32_t rem) {
    uint32_t sec = rem / 1000, ms = rem - sec * 1000;
    put_hms(p + 11, sec);
    if (ms == 0) {
        p[19] = 'Z';
        return 20;
    }
    p[19] = '.';
    p[20] = (char)('0' + ms / 100);
    put2(p + 21, ms % 100);
    p[23] = 'Z';
    return 24;
}

static size_t time_format_fast(td_ms t, char *p) {
    uint64_t u = (uint64_t)(t - FMT_MIN); /* ms since 0001-01-01T00:00:00Z */
    uint32_t day = (uint32_t)(u / (uint64_t)TD_DAY);
    uint32_t rem = (uint32_t)(u - (uint64_t)day * (uint64_t)TD_DAY);
    put_date(p, day);
    return put_time(p, rem);
}

size_t td_time_format(td_ms t, char *buf, size_t cap) {
    /* Written by hand, not snprintf: every state write (up to 64 touch
     * times each) and recommendation formats several times. */
    if (t >= FMT_MIN && t <= FMT_MAX && cap >= 25) {
        size_t n = time_format_fast(t, buf);
        buf[n] = '\0';
        return n;
    }
    char tmp[TD_TIME_BUF];
    size_t n = t >= FMT_MIN && t <= FMT_MAX ? time_format_fast(t, tmp) : time_format_slow(t, tmp);
    if (cap == 0) return 0;
    if (n >= cap) n = cap - 1;
    memcpy(buf, tmp, n);
    buf[n] = '\0';
    return n;
}

/* time_format_fast with the date part kept in the memo (see td_time.h). */
size_t td_time_format_memo(td_ms t, char *buf, td_time_memo *m) {
    if (t < FMT_MIN || t > FMT_MAX) return td_time_format(t, buf, TD_TIME_BUF);
    uint64_t u = (uint64_t)(t - FMT_MIN); /* ms since 0001-01-01T00:00:00Z */
    uint32_t day = (uint32_t)(u / (uint64_t)TD_DAY);
    uint32_t rem = (uint32_t)(u - (uint64_t)day * (uint64_t)TD_DAY);
    uint32_t slot = day % TD_TIME_MEMO_SLOTS;
    if (day != m->day[slot]) {
        put_date(m->date[slot], day);
        m->day[slot] = day;
    }
    memcpy(buf, m->date[slot], 16); /* 11 bytes used; the rest is overwritten */
    size_t n = put_time(buf, rem);
    buf[n] = '\0';
    return n;
}

/* ---- durations ---- */

/* Units, largest first: a literal must use them in this order, each once
 * ("1h30m", not "30m1h" or "1h1h"), which catches most typos. */
static const struct {
    const char *name;
    size_t len;
    td_ms ms;
} units[] = {
    {"w", 1, TD_WEEK},   {"d", 1, TD_DAY},    {"h", 1, TD_HOUR},
    {"m", 1, TD_MINUTE}, {"s", 1, TD_SECOND}, {"ms", 2, 1},
};
#define N_UNITS (sizeof units / sizeof units[0])

int td_duration_parse(const char *s, size_t len, td_ms *out) {
    if (s == NULL || len == 0) return TD_ERR;
    size_t i = 0;
    bool neg = false;
    if (s[0] == '-') {
        neg = true;
        i = 1;
    }
    if (i == len) return TD_ERR;
    td_ms total = 0;
    size_t next_unit = 0; /* the smallest index a following group may use */
    while (i < len) {
        if (s[i] < '0' || s[i] > '9') return TD_ERR;
        int64_t n = 0;
        while (i < len && s[i] >= '0' && s[i] <= '9') {
            if (__builtin_mul_overflow(n, 10, &n) || __builtin_add_overflow(n, s[i] - '0', &n))
                return TD_ERR;
            i++;
        }
        /* Longest unit name first, so "ms" is not read as "m" then "s". */
        size_t u = N_UNITS;
        if (len - i >= 2 && s[i] == 'm' && s[i + 1] == 's')
            u = N_UNITS - 1;
        else if (i < len) {
            for (size_t k = 0; k < N_UNITS - 1; k++)
                if (s[i] == units[k].name[0]) {
                    u = k;
                    break;
                }
        }
        if (u == N_UNITS || u < next_unit)
            return TD_ERR; /* no unit, unknown unit, or out of order */
        i += units[u].len;
        next_unit = u + 1;
        int64_t part;
        if (__builtin_mul_overflow(n, units[u].ms, &part) ||
            __builtin_add_overflow(total, part, &total))
            return TD_ERR;
    }
    *out = neg ? -total : total; /* total >= 0, so negating cannot overflow */
    return TD_OK;
}

size_t td_duration_format(td_ms d, char *buf, size_t cap) {
    char tmp[64];
    size_t n = 0;
    uint64_t v;
    if (d < 0) {
        tmp[n++] = '-';
        v = (uint64_t)0 - (uint64_t)d; /* safe for INT64_MIN */
    } else {
        v = (uint64_t)d;
    }
    if (v == 0) {
        memcpy(tmp + n, "0s", 2);
        n += 2;
    }
    for (size_t k = 0; k < N_UNITS && v != 0; k++) {
        uint64_t q = v / (uint64_t)units[k].ms;
        if (q == 0) continue;
        v -= q * (uint64_t)units[k].ms;
        int w = snprintf(tmp + n, sizeof tmp - n, "%llu%s", (unsigned long long)q, units[k].name);
        if (w > 0) n += (size_t)w;
    }
    tmp[n] = '\0';
    if (cap == 0) return 0;
    td_strlcpy(buf, tmp, cap);
    return n < cap ? n : cap - 1;
}

/* ---- time zones ---- */

#define TZDB_MAX 256
#define TZDB_SLOTS 512 /* a power of two, twice TZDB_MAX: short probe chains */
#define TZ_ID_MAX 64

typedef struct tz_entry {
    uint64_t hash;
    UCalendar *cal; /* owned; NULL for an unknown zone */
    /* The offset off[k] holds for every instant in [lo[k], hi[k]): spans
     * between two transitions, learnt from ICU on the last two misses (a
     * step often looks at both sides of a DST change: the event and a time
     * weeks later), the newer in slot `recent`. */
    td_ms lo[2], hi[2], off[2];
    int recent;
    bool used;
    char id[TZ_ID_MAX + 1];
} tz_entry;

struct td_tzdb {
    size_t count;
    tz_entry *last; /* the entry of the previous lookup: most lookups repeat it */
    tz_entry slots[TZDB_SLOTS];
};

td_tzdb *td_tzdb_new(void) { return calloc(1, sizeof(td_tzdb)); }

static void tzdb_flush(td_tzdb *db) {
    for (size_t i = 0; i < TZDB_SLOTS; i++)
        if (db->slots[i].used && db->slots[i].cal != NULL) ucal_close(db->slots[i].cal);
    memset(db->slots, 0, sizeof db->slots);
    db->count = 0;
    db->last = NULL;
}

void td_tzdb_free(td_tzdb *db) {
    if (db == NULL) return;
    tzdb_flush(db);
    free(db);
}

/*
 * Opens a calendar for `zone` when ICU knows it as a system zone id.
 * ICU does not fail on unknown ids (it silently uses "Etc/Unknown", i.e.
 * GMT), so the id is checked with ucal_getCanonicalTimeZoneID first, which
 * also rejects custom ids such as "GMT+05:00".
 * @returns a calendar the caller owns (ucal_close), or NULL.
 */
static UCalendar *tz_open(const char *zone, size_t len) {
    UChar uid[TZ_ID_MAX + 1];
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)zone[i];
        if (c <= 0x20 || c >= 0x7f) return NULL; /* zone ids are printable ASCII */
        uid[i] = (UChar)c;
    }
    UChar canon[128];
    UBool is_system = 0;
    UErrorCode st = U_ZERO_ERROR;
    ucal_getCanonicalTimeZoneID(uid, (int32_t)len, canon, (int32_t)(sizeof canon / sizeof canon[0]),
                                &is_system, &st);
    if (U_FAILURE(st) || !is_system) return NULL;
    st = U_ZERO_ERROR;
    UCalendar *cal = ucal_open(uid, (int32_t)len, "en_US_POSIX", UCAL_GREGORIAN, &st);
    if (U_FAILURE(st)) {
        if (cal != NULL) ucal_close(cal);
        return NULL;
    }
    return cal;
}

/*
 * The cache entry for `zone` (borrowed from db), creating it when needed.
 * @returns NULL when the id is syntactically impossible (empty, too long).
 */
static tz_entry *tz_lookup(td_tzdb *db, const char *zone) {
    if (zone == NULL) return NULL;
    if (db->last != NULL && strcmp(db->last->id, zone) == 0) return db->last;
    size_t len = strnlen(zone, TZ_ID_MAX + 1);
    if (len == 0 || len > TZ_ID_MAX) return NULL;
    uint64_t h = td_hash64(zone, len, TD_HASH_SEED);
    size_t i = (size_t)h & (TZDB_SLOTS - 1);
    for (;;) {
        tz_entry *e = &db->slots[i];
        if (!e->used) break;
        if (e->hash == h && strcmp(e->id, zone) == 0) return db->last = e;
        i = (i + 1) & (TZDB_SLOTS - 1);
    }
    if (db->count >= TZDB_MAX) {
        tzdb_flush(db);
        i = (size_t)h & (TZDB_SLOTS - 1);
    }
    tz_entry *e = &db->slots[i];
    e->used = true;
    e->hash = h;
    memcpy(e->id, zone, len + 1);
    e->cal = tz_open(zone, len);
    for (int k = 0; k < 2; k++) {
        e->lo[k] = 1; /* empty spans: the first question asks ICU */
        e->hi[k] = 0;
    }
    db->count++;
    return db->last = e;
}

bool td_tz_valid(td_tzdb *db, const char *zone) {
    if (db == NULL) {
        /* No cache: answer anyway, at ICU's price. */
        size_t len = zone ? strnlen(zone, TZ_ID_MAX + 1) : 0;
        if (len == 0 || len > TZ_ID_MAX) return false;
        UCalendar *cal = tz_open(zone, len);
        if (cal == NULL) return false;
        ucal_close(cal);
        return true;
    }
    tz_entry *e = tz_lookup(db, zone);
    return e != NULL && e->cal != NULL;
}

/*
 * The UTC offset of e's zone at instant t; false on an ICU error.
 * Asking ICU costs about a microsecond (ucal_get computes every calendar
 * field), while consecutive questions for one zone almost always fall
 * between the same two transitions: remember that span and its offset.
 */
static bool tz_offset(tz_entry *e, td_ms t, td_ms *off) {
    for (int k = 0; k < 2; k++) {
        int j = k ? !e->recent : e->recent;
        if (t >= e->lo[j] && t < e->hi[j]) {
            *off = e->off[j];
            return true;
        }
    }
    UErrorCode st = U_ZERO_ERROR;
    ucal_setMillis(e->cal, (UDate)t, &st);
    int32_t raw = ucal_get(e->cal, UCAL_ZONE_OFFSET, &st);
    int32_t dst = ucal_get(e->cal, UCAL_DST_OFFSET, &st);
    if (U_FAILURE(st)) return false;
    *off = (td_ms)raw + (td_ms)dst;
    /* A transition at T applies from T on: the span is [previous, next). */
    UDate prev = 0, next = 0;
    UErrorCode st2 = U_ZERO_ERROR;
    bool has_prev =
        ucal_getTimeZoneTransitionDate(e->cal, UCAL_TZ_TRANSITION_PREVIOUS_INCLUSIVE, &prev, &st2);
    bool has_next = ucal_getTimeZoneTransitionDate(e->cal, UCAL_TZ_TRANSITION_NEXT, &next, &st2);
    if (U_SUCCESS(st2) && (!has_prev || (td_ms)prev <= t) && (!has_next || (td_ms)next > t)) {
        int j = !e->recent; /* replaces the older span */
        e->lo[j] = has_prev ? (td_ms)prev : INT64_MIN;
        e->hi[j] = has_next ? (td_ms)next : INT64_MAX;
        e->off[j] = *off;
        e->recent = j;
    }
    return true;
}

/* ICU represents instants as double ms; keep inputs where that is exact and
 * where ICU's own range checks pass (about +-285,000 years). */
#define TZ_T_LIMIT ((td_ms)1 << 52)

/* The cache entry of a known zone, or NULL. */
static tz_entry *tz_known(td_tzdb *db, const char *zone) {
    if (db == NULL) return NULL;
    tz_entry *e = tz_lookup(db, zone);
    return e != NULL && e->cal != NULL ? e : NULL;
}

int td_tz_local(td_tzdb *db, const char *zone, td_ms t, td_civil *out, td_ms *offset_ms) {
    td_ms off = 0;
    int rc = TD_ERR;
    tz_entry *e = tz_known(db, zone);
    if (e != NULL && t > -TZ_T_LIMIT && t < TZ_T_LIMIT && tz_offset(e, t, &off))
        rc = TD_OK;
    else
        off = 0;
    td_civil_from_ms(t + off, out);
    if (offset_ms != NULL) *offset_ms = off;
    return rc;
}

int td_tz_to_utc(td_tzdb *db, const char *zone, int year, int month, int day, int hour, int minute,
                 td_ms *out) {
    td_ms local = td_civil_to_ms(year, month, day, hour, minute, 0);
    tz_entry *e = tz_known(db, zone);
    if (e == NULL || local <= -TZ_T_LIMIT || local >= TZ_T_LIMIT) {
        *out = local;
        return TD_ERR;
    }
    /*
     * Offsets in force well before and well after the wall time. 36 hours is
     * more than the largest offset (14h) plus the largest gap ever used (a
     * whole day, Pacific/Apia 2011): both probes land on their side of a
     * transition near `local`.
     */
    td_ms before, after, o1, o2;
    if (!tz_offset(e, local - 36 * TD_HOUR, &before) ||
        !tz_offset(e, local + 36 * TD_HOUR, &after)) {
        *out = local;
        return TD_ERR;
    }
    td_ms u1 = local - before, u2 = local - after;
    bool ok1 = tz_offset(e, u1, &o1) && u1 + o1 == local;
    bool ok2 = tz_offset(e, u2, &o2) && u2 + o2 == local;
    if (ok1 && ok2)
        *out = u1 < u2 ? u1 : u2; /* overlap: the first occurrence */
    else if (ok1)
        *out = u1;
    else if (ok2)
        *out = u2;
    else
        *out = u1; /* gap: the old offset moves the wall time forward by the gap */
    return TD_OK;
}
