/*
 * td_calendar.c - business calendars (see td_calendar.h for the design and
 * docs/calendar.md for the file format).
 *
 * Parsing is two-phase so that td_calendar_add is all or nothing: the lines
 * are parsed into a scratch list (day, kind, name, line), checked (duplicates,
 * a day both holiday and workday, dates outside `years`), and only then
 * merged into the region's sorted arrays.
 *
 * @locality see td_calendar.h.
 */
#include "td_calendar.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct cal_day {
    int32_t day;  /* days since 1970-01-01 */
    int32_t line; /* line of the file it came from (for duplicate errors) */
    char *name;   /* holidays: the name; workdays: NULL */
} cal_day;

typedef struct cal_days {
    cal_day *v;
    size_t n, cap;
} cal_days;

typedef struct cal_region {
    char name[TD_CAL_REGION_MAX + 1];
    uint8_t weekend;      /* bit wd set for ISO weekday wd (1..7) */
    bool has_weekend;     /* declared by a `weekend` line */
    int year_lo, year_hi; /* `years` line, or the span of the dates; 0 when none */
    bool has_years;
    cal_days hol;  /* sorted by day, unique */
    cal_days work; /* sorted by day, unique */
} cal_region;

struct td_calendar {
    cal_region **r; /* sorted by name */
    size_t n, cap;
};

#define WEEKEND_DEFAULT ((uint8_t)((1u << 6) | (1u << 7)))

/* ---- small helpers ---- */

static int upper(int c) { return (c >= 'a' && c <= 'z') ? c - 'a' + 'A' : c; }

static bool is_alpha(int c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

static bool is_digit(int c) { return c >= '0' && c <= '9'; }

static bool is_space(int c) { return c == ' ' || c == '\t' || c == '\r'; }

/*
 * Normalises a region name into out (upper case): "CC" or "CC-X", "CC-XX",
 * "CC-XXX" with X a letter or digit. @returns false when malformed.
 */
static bool region_norm(const char *s, char out[TD_CAL_REGION_MAX + 1]) {
    if (s == NULL) return false;
    size_t n = strlen(s);
    if (n != 2 && (n < 4 || n > TD_CAL_REGION_MAX)) return false;
    if (!is_alpha((unsigned char)s[0]) || !is_alpha((unsigned char)s[1])) return false;
    if (n > 2) {
        if (s[2] != '-') return false;
        for (size_t i = 3; i < n; i++)
            if (!is_alpha((unsigned char)s[i]) && !is_digit((unsigned char)s[i])) return false;
    }
    for (size_t i = 0; i < n; i++)
        out[i] = (char)upper((unsigned char)s[i]);
    out[n] = '\0';
    return true;
}

static int days_in_month(int y, int m) {
    static const int dm[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0)) return 29;
    return dm[m - 1];
}

static bool date_valid(int y, int m, int d) {
    return y >= 1 && y <= 9999 && m >= 1 && m <= 12 && d >= 1 && d <= days_in_month(y, m);
}

/* ISO weekday (1 = Monday) of a day number; 1970-01-01 was a Thursday. */
static int weekday_of(int64_t day) {
    int64_t r = (day + 3) % 7;
    if (r < 0) r += 7;
    return (int)r + 1;
}

/* ---- region lookup ---- */

static size_t region_pos(const td_calendar *cal, const char *norm, bool *found) {
    size_t lo = 0, hi = cal->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(cal->r[mid]->name, norm);
        if (c == 0) {
            *found = true;
            return mid;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = false;
    return lo;
}

static const cal_region *region_get(const td_calendar *cal, const char *norm) {
    bool found;
    size_t i = region_pos(cal, norm, &found);
    return found ? cal->r[i] : NULL;
}

/* The regions a country query consults: the exact one, then its country. */
typedef struct chain {
    const cal_region *r[2];
} chain;

static chain resolve(const td_calendar *cal, const char *country) {
    chain c = {{NULL, NULL}};
    char norm[TD_CAL_REGION_MAX + 1];
    if (cal == NULL || !region_norm(country, norm)) return c;
    c.r[0] = region_get(cal, norm);
    if (norm[2] == '-') {
        norm[2] = '\0';
        c.r[1] = region_get(cal, norm);
    }
    return c;
}

static const cal_day *days_find(const cal_days *a, int32_t day) {
    size_t lo = 0, hi = a->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (a->v[mid].day == day) return &a->v[mid];
        if (a->v[mid].day < day)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

static uint8_t chain_weekend(const chain *c) {
    for (int i = 0; i < 2; i++)
        if (c->r[i] != NULL && c->r[i]->has_weekend) return c->r[i]->weekend;
    return WEEKEND_DEFAULT;
}

static const cal_day *chain_holiday(const chain *c, int32_t day) {
    for (int i = 0; i < 2; i++) {
        if (c->r[i] == NULL) continue;
        const cal_day *h = days_find(&c->r[i]->hol, day);
        if (h != NULL) return h;
    }
    return NULL;
}

static bool chain_business(const chain *c, uint8_t weekend, int64_t day) {
    if (chain_holiday(c, (int32_t)day) != NULL) return false;
    for (int i = 0; i < 2; i++)
        if (c->r[i] != NULL && days_find(&c->r[i]->work, (int32_t)day) != NULL) return true;
    return (weekend & (1u << weekday_of(day))) == 0;
}

/* ---- public queries ---- */

bool td_calendar_is_holiday(const td_calendar *cal, const char *country, int y, int m, int d,
                            const char **name) {
    if (name != NULL) *name = NULL;
    if (!date_valid(y, m, d)) return false;
    chain c = resolve(cal, country);
    const cal_day *h = chain_holiday(&c, (int32_t)td_days_from_civil(y, m, d));
    if (h == NULL) return false;
    if (name != NULL) *name = h->name;
    return true;
}

bool td_calendar_is_business_day(const td_calendar *cal, const char *country, int y, int m, int d) {
    if (!date_valid(y, m, d)) return false;
    chain c = resolve(cal, country);
    return chain_business(&c, chain_weekend(&c), td_days_from_civil(y, m, d));
}

bool td_calendar_is_weekend(const td_calendar *cal, const char *country, int wd) {
    if (wd < 1 || wd > 7) return false;
    chain c = resolve(cal, country);
    return (chain_weekend(&c) & (1u << wd)) != 0;
}

bool td_calendar_covers(const td_calendar *cal, const char *country, int year) {
    chain c = resolve(cal, country);
    for (int i = 0; i < 2; i++)
        if (c.r[i] != NULL && c.r[i]->has_years && year >= c.r[i]->year_lo &&
            year <= c.r[i]->year_hi)
            return true;
    return false;
}

size_t td_calendar_countries(const td_calendar *cal, const char **names, size_t cap) {
    if (cal == NULL) return 0;
    for (size_t i = 0; i < cal->n && i < cap; i++)
        names[i] = cal->r[i]->name;
    return cal->n;
}

td_ms td_calendar_next_slot(const td_calendar *cal, td_tzdb *tz, const char *zone,
                            const char *country, int start_hour, int end_hour, td_ms t) {
    if (t == TD_MS_MISSING) return t;
    if (start_hour < 0) start_hour = 0;
    if (end_hour > 24) end_hour = 24;
    if (start_hour >= end_hour) {
        start_hour = 0;
        end_hour = 24;
    }
    td_civil lt;
    (void)td_tz_local(tz, zone, t, &lt, NULL); /* unknown zone: UTC, filled anyway */
    if (lt.year < 1 || lt.year > 9998) return t;
    chain c = resolve(cal, country);
    uint8_t weekend = chain_weekend(&c);
    int64_t day = td_days_from_civil(lt.year, lt.month, lt.day);
    if (chain_business(&c, weekend, day) && lt.hour >= start_hour && lt.hour < end_hour) return t;
    for (int i = 0; i <= TD_CAL_SEARCH_DAYS; i++, day++) {
        if (!chain_business(&c, weekend, day)) continue;
        td_civil dc;
        td_civil_from_ms(day * TD_DAY, &dc);
        td_ms start;
        (void)td_tz_to_utc(tz, zone, dc.year, dc.month, dc.day, start_hour, 0, &start);
        /*
         * On t's own day the window start may already be past (t after the
         * window); a start moved by a DST gap may land past the window's end.
         * Either way, try the next day.
         */
        if (start < t) continue;
        td_civil sc;
        (void)td_tz_local(tz, zone, start, &sc, NULL);
        if (sc.hour >= end_hour || td_days_from_civil(sc.year, sc.month, sc.day) != day) continue;
        return start;
    }
    return t;
}

/* ---- building ---- */

td_calendar *td_calendar_new(void) { return calloc(1, sizeof(td_calendar)); }

static void days_free(cal_days *a) {
    for (size_t i = 0; i < a->n; i++)
        free(a->v[i].name);
    free(a->v);
    a->v = NULL;
    a->n = a->cap = 0;
}

static void region_free(cal_region *r) {
    if (r == NULL) return;
    days_free(&r->hol);
    days_free(&r->work);
    free(r);
}

void td_calendar_free(td_calendar *cal) {
    if (cal == NULL) return;
    for (size_t i = 0; i < cal->n; i++)
        region_free(cal->r[i]);
    free(cal->r);
    free(cal);
}

static bool days_push(cal_days *a, int32_t day, int32_t line, char *name) {
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 32;
        cal_day *v = realloc(a->v, cap * sizeof *v);
        if (v == NULL) return false;
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = (cal_day){day, line, name};
    return true;
}

static int day_cmp(const void *pa, const void *pb) {
    const cal_day *a = pa, *b = pb;
    if (a->day != b->day) return a->day < b->day ? -1 : 1;
    return (a->line > b->line) - (a->line < b->line);
}

/* Parse state for one td_calendar_add. */
typedef struct parser {
    int line;
    int nerr;
    char *err;
    size_t errcap;
    cal_days hol, work;
    uint8_t weekend;
    int weekend_line;
    int year_lo, year_hi, years_line;
    bool oom;
} parser;

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static void
perr(parser *p, int line, const char *fmt, ...) {
    if (p->nerr++ > 0 || p->err == NULL || p->errcap == 0) return;
    int k = snprintf(p->err, p->errcap, "line %d: ", line);
    if (k < 0 || (size_t)k >= p->errcap) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err + k, p->errcap - (size_t)k, fmt, ap);
    va_end(ap);
}

/* A YYYY-MM-DD at s (exactly 10 bytes available checked by the caller). */
static bool parse_date(const char *s, size_t n, int *y, int *m, int *d) {
    if (n != 10 || s[4] != '-' || s[7] != '-') return false;
    for (size_t i = 0; i < 10; i++)
        if (i != 4 && i != 7 && !is_digit((unsigned char)s[i])) return false;
    *y = (s[0] - '0') * 1000 + (s[1] - '0') * 100 + (s[2] - '0') * 10 + (s[3] - '0');
    *m = (s[5] - '0') * 10 + (s[6] - '0');
    *d = (s[8] - '0') * 10 + (s[9] - '0');
    return date_valid(*y, *m, *d);
}

static bool parse_year(const char *s, size_t n, int *y) {
    if (n != 4) return false;
    *y = 0;
    for (size_t i = 0; i < 4; i++) {
        if (!is_digit((unsigned char)s[i])) return false;
        *y = *y * 10 + (s[i] - '0');
    }
    return *y >= 1 && *y <= 9999;
}

static bool word_eq(const char *s, size_t n, const char *w) {
    size_t k = strlen(w);
    if (n != k) return false;
    for (size_t i = 0; i < n; i++)
        if (upper((unsigned char)s[i]) != upper((unsigned char)w[i])) return false;
    return true;
}

/* `weekend = sat,sun` (value already isolated). */
static void parse_weekend(parser *p, const char *s, size_t n) {
    static const char *const abbr[7] = {"mon", "tue", "wed", "thu", "fri", "sat", "sun"};
    static const char *const full[7] = {"monday", "tuesday",  "wednesday", "thursday",
                                        "friday", "saturday", "sunday"};
    if (p->weekend_line != 0) {
        perr(p, p->line, "weekend declared twice (first at line %d)", p->weekend_line);
        return;
    }
    uint8_t mask = 0;
    if (!word_eq(s, n, "none")) {
        size_t i = 0;
        while (i <= n) {
            size_t j = i;
            while (j < n && s[j] != ',')
                j++;
            const char *w = s + i;
            size_t wn = j - i;
            while (wn > 0 && is_space((unsigned char)w[0]))
                w++, wn--;
            while (wn > 0 && is_space((unsigned char)w[wn - 1]))
                wn--;
            int wd = 0;
            for (int k = 0; k < 7 && wd == 0; k++)
                if (word_eq(w, wn, abbr[k]) || word_eq(w, wn, full[k])) wd = k + 1;
            if (wd == 0) {
                perr(p, p->line, "unknown weekday '%.*s' (expected mon..sun, or none)",
                     (int)(wn > 20 ? 20 : wn), w);
                return;
            }
            if (mask & (1u << wd)) {
                perr(p, p->line, "weekday '%.*s' listed twice", (int)wn, w);
                return;
            }
            mask = (uint8_t)(mask | (1u << wd));
            i = j + 1;
        }
        if (mask == 0xFE) {
            perr(p, p->line, "every day of the week is a weekend day");
            return;
        }
    }
    p->weekend = mask;
    p->weekend_line = p->line;
}

/* `years = 2026-2028` or `years = 2026`. */
static void parse_years(parser *p, const char *s, size_t n) {
    int lo, hi;
    if (p->years_line != 0) {
        perr(p, p->line, "years declared twice (first at line %d)", p->years_line);
        return;
    }
    if (p->hol.n > 0 || p->work.n > 0) {
        perr(p, p->line, "years must come before the first date");
        return;
    }
    if (n == 4 && parse_year(s, n, &lo)) {
        hi = lo;
    } else if (n == 9 && s[4] == '-' && parse_year(s, 4, &lo) && parse_year(s + 5, 4, &hi)) {
        if (hi < lo) {
            perr(p, p->line, "years: %d-%d is an empty range", lo, hi);
            return;
        }
    } else {
        perr(p, p->line, "years: expected YYYY or YYYY-YYYY, got '%.*s'", (int)(n > 20 ? 20 : n),
             s);
        return;
    }
    p->year_lo = lo;
    p->year_hi = hi;
    p->years_line = p->line;
}

static bool year_ok(parser *p, int y, const char *date) {
    if (p->years_line != 0 && (y < p->year_lo || y > p->year_hi)) {
        perr(p, p->line, "%.10s is outside 'years = %d-%d' (line %d)", date, p->year_lo, p->year_hi,
             p->years_line);
        return false;
    }
    return true;
}

static char *dup_name(const char *s, size_t n) {
    char *c = malloc(n + 1);
    if (c != NULL) {
        memcpy(c, s, n);
        c[n] = '\0';
    }
    return c;
}

/* `YYYY-MM-DD[..YYYY-MM-DD] Name` or `workday YYYY-MM-DD [note]`. */
static void parse_date_line(parser *p, const char *s, size_t n, bool workday) {
    size_t i = 0;
    while (i < n && !is_space((unsigned char)s[i]))
        i++;
    const char *ds = s;
    size_t dn = i;
    const char *range_end = NULL;
    if (!workday && dn == 22 && s[10] == '.' && s[11] == '.') {
        range_end = s + 12;
        dn = 10;
    }
    int y, m, d;
    if (!parse_date(ds, dn, &y, &m, &d)) {
        perr(p, p->line, "bad date '%.*s' (expected YYYY-MM-DD%s)", (int)(i > 24 ? 24 : i), s,
             workday ? "" : " or YYYY-MM-DD..YYYY-MM-DD");
        return;
    }
    if (!year_ok(p, y, ds)) return;
    int64_t first = td_days_from_civil(y, m, d), last = first;
    if (range_end != NULL) {
        if (!parse_date(range_end, 10, &y, &m, &d)) {
            perr(p, p->line, "bad date '%.10s' at the end of the range", range_end);
            return;
        }
        if (!year_ok(p, y, range_end)) return;
        last = td_days_from_civil(y, m, d);
        if (last < first || last - first > 31) {
            perr(p, p->line, "bad range '%.22s' (the end must follow the start, 32 days at most)",
                 s);
            return;
        }
    }
    while (i < n && is_space((unsigned char)s[i]))
        i++;
    const char *name = s + i;
    size_t nn = n - i;
    if (!workday && nn == 0) {
        perr(p, p->line, "holiday %.10s has no name", ds);
        return;
    }
    if (nn > TD_CAL_NAME_MAX) {
        perr(p, p->line, "name longer than %d bytes", TD_CAL_NAME_MAX);
        return;
    }
    for (size_t k = 0; k < nn; k++) {
        if ((unsigned char)name[k] < 0x20 && name[k] != '\t') {
            perr(p, p->line, "control character in the name");
            return;
        }
    }
    for (int64_t day = first; day <= last; day++) {
        char *c = NULL;
        if (!workday && (c = dup_name(name, nn)) == NULL) {
            p->oom = true;
            return;
        }
        if (!days_push(workday ? &p->work : &p->hol, (int32_t)day, p->line, c)) {
            free(c);
            p->oom = true;
            return;
        }
    }
}

static void parse_line(parser *p, const char *s, size_t n) {
    /* strip the comment: '#' at the start or after a blank */
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '#' && (i == 0 || is_space((unsigned char)s[i - 1]))) {
            n = i;
            break;
        }
    }
    while (n > 0 && is_space((unsigned char)s[0]))
        s++, n--;
    while (n > 0 && is_space((unsigned char)s[n - 1]))
        n--;
    if (n == 0) return;
    if (memchr(s, '\0', n) != NULL) {
        perr(p, p->line, "NUL byte in the line");
        return;
    }
    if (is_digit((unsigned char)s[0])) {
        parse_date_line(p, s, n, false);
        return;
    }
    size_t k = 0;
    while (k < n && (is_alpha((unsigned char)s[k]) || s[k] == '_'))
        k++;
    if (word_eq(s, k, "workday") && k < n && is_space((unsigned char)s[k])) {
        size_t i = k;
        while (i < n && is_space((unsigned char)s[i]))
            i++;
        parse_date_line(p, s + i, n - i, true);
        return;
    }
    size_t i = k;
    while (i < n && is_space((unsigned char)s[i]))
        i++;
    if (k > 0 && i < n && s[i] == '=') {
        i++;
        while (i < n && is_space((unsigned char)s[i]))
            i++;
        if (word_eq(s, k, "weekend")) {
            parse_weekend(p, s + i, n - i);
            return;
        }
        if (word_eq(s, k, "years")) {
            parse_years(p, s + i, n - i);
            return;
        }
        perr(p, p->line, "unknown setting '%.*s' (expected weekend or years)",
             (int)(k > 20 ? 20 : k), s);
        return;
    }
    perr(p, p->line,
         "expected 'YYYY-MM-DD Name', 'workday YYYY-MM-DD', 'weekend = ...' or "
         "'years = ...', got '%.*s'",
         (int)(n > 24 ? 24 : n), s);
}

static void date_str(int32_t day, char buf[16]) {
    td_civil c;
    td_civil_from_ms((td_ms)day * TD_DAY, &c);
    snprintf(buf, 16, "%04d-%02d-%02d", c.year % 10000, c.month % 100, c.day % 100);
}

/* Checks the sorted scratch lists against each other and the region. */
static void check_dups(parser *p, const cal_region *r) {
    char ds[16];
    for (size_t i = 1; i < p->hol.n; i++) {
        if (p->hol.v[i].day == p->hol.v[i - 1].day && p->hol.v[i].line != p->hol.v[i - 1].line) {
            date_str(p->hol.v[i].day, ds);
            perr(p, p->hol.v[i].line, "%s is already a holiday (line %d)", ds,
                 p->hol.v[i - 1].line);
        }
    }
    for (size_t i = 1; i < p->work.n; i++) {
        if (p->work.v[i].day == p->work.v[i - 1].day) {
            date_str(p->work.v[i].day, ds);
            perr(p, p->work.v[i].line, "%s is already a workday (line %d)", ds,
                 p->work.v[i - 1].line);
        }
    }
    for (size_t i = 0; i < p->work.n; i++) {
        const cal_day *h = days_find(&p->hol, p->work.v[i].day);
        if (h != NULL) {
            date_str(p->work.v[i].day, ds);
            perr(p, p->work.v[i].line, "%s is both a workday and a holiday (line %d)", ds, h->line);
        }
    }
    if (r == NULL) return;
    for (size_t i = 0; i < p->hol.n; i++) {
        if (days_find(&r->hol, p->hol.v[i].day) || days_find(&r->work, p->hol.v[i].day)) {
            date_str(p->hol.v[i].day, ds);
            perr(p, p->hol.v[i].line, "%s is already declared for %s", ds, r->name);
        }
    }
    for (size_t i = 0; i < p->work.n; i++) {
        if (days_find(&r->hol, p->work.v[i].day) || days_find(&r->work, p->work.v[i].day)) {
            date_str(p->work.v[i].day, ds);
            perr(p, p->work.v[i].line, "%s is already declared for %s", ds, r->name);
        }
    }
}

/* Merges two sorted lists into a new array (NULL on out-of-memory). */
static cal_day *merge_alloc(const cal_days *a, const cal_days *b) {
    cal_day *v = malloc((a->n + b->n) * sizeof *v);
    if (v == NULL) return NULL;
    size_t i = 0, j = 0, k = 0;
    while (i < a->n || j < b->n) {
        if (j == b->n || (i < a->n && a->v[i].day < b->v[j].day))
            v[k++] = a->v[i++];
        else
            v[k++] = b->v[j++];
    }
    return v;
}

/* dst takes the merged array and src's names; src is emptied. */
static void merge_commit(cal_days *dst, cal_days *src, cal_day *merged) {
    if (merged == NULL) return; /* src was empty */
    free(dst->v);
    dst->v = merged;
    dst->n = dst->cap = dst->n + src->n;
    free(src->v);
    src->v = NULL;
    src->n = src->cap = 0;
}

static void span_years(cal_region *r) {
    int32_t lo = INT32_MAX, hi = INT32_MIN;
    if (r->hol.n > 0) {
        lo = r->hol.v[0].day;
        hi = r->hol.v[r->hol.n - 1].day;
    }
    if (r->work.n > 0) {
        lo = r->work.v[0].day < lo ? r->work.v[0].day : lo;
        hi = r->work.v[r->work.n - 1].day > hi ? r->work.v[r->work.n - 1].day : hi;
    }
    if (lo > hi) return;
    td_civil a, b;
    td_civil_from_ms((td_ms)lo * TD_DAY, &a);
    td_civil_from_ms((td_ms)hi * TD_DAY, &b);
    if (!r->has_years || a.year < r->year_lo) r->year_lo = a.year;
    if (!r->has_years || b.year > r->year_hi) r->year_hi = b.year;
    r->has_years = true;
}

int td_calendar_add(td_calendar *cal, const char *region, const char *text, size_t len, char *err,
                    size_t errcap) {
    if (err != NULL && errcap > 0) err[0] = '\0';
    char norm[TD_CAL_REGION_MAX + 1];
    if (cal == NULL || !region_norm(region, norm)) {
        if (err != NULL && errcap > 0)
            snprintf(err, errcap, "bad region name '%.16s' (expected CC or CC-SUB, ISO 3166)",
                     region != NULL ? region : "(null)");
        return TD_ERR;
    }
    if (text == NULL) len = 0;
    parser p = {.line = 0, .err = err, .errcap = errcap};
    size_t pos = 0;
    while (pos < len && !p.oom) {
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t end = nl != NULL ? (size_t)(nl - text) : len;
        p.line++;
        parse_line(&p, text + pos, end - pos);
        pos = end + 1;
    }
    bool found;
    size_t at = region_pos(cal, norm, &found);
    cal_region *r = found ? cal->r[at] : NULL;
    if (!p.oom) {
        if (p.hol.n > 1) qsort(p.hol.v, p.hol.n, sizeof *p.hol.v, day_cmp);
        if (p.work.n > 1) qsort(p.work.v, p.work.n, sizeof *p.work.v, day_cmp);
        check_dups(&p, r);
    }
    if (p.oom && err != NULL && errcap > 0) snprintf(err, errcap, "out of memory");
    if (p.oom || p.nerr > 0) {
        if (!p.oom && p.nerr > 1 && err != NULL && errcap > 0) {
            size_t k = strlen(err);
            if (k < errcap)
                snprintf(err + k, errcap - k, " (and %d more error%s)", p.nerr - 1,
                         p.nerr > 2 ? "s" : "");
        }
        days_free(&p.hol);
        days_free(&p.work);
        return TD_ERR;
    }
    /* commit */
    cal_region *fresh = NULL;
    if (r == NULL) {
        if (cal->n == cal->cap) {
            size_t cap = cal->cap ? cal->cap * 2 : 16;
            cal_region **v = realloc(cal->r, cap * sizeof *v);
            if (v == NULL) goto oom;
            cal->r = v;
            cal->cap = cap;
        }
        fresh = calloc(1, sizeof *fresh);
        if (fresh == NULL) goto oom;
        memcpy(fresh->name, norm, sizeof norm);
        fresh->weekend = WEEKEND_DEFAULT;
        r = fresh;
    }
    cal_day *mh = NULL, *mw = NULL;
    if (p.hol.n > 0 && (mh = merge_alloc(&r->hol, &p.hol)) == NULL) goto oom_fresh;
    if (p.work.n > 0 && (mw = merge_alloc(&r->work, &p.work)) == NULL) {
        free(mh);
        goto oom_fresh;
    }
    merge_commit(&r->hol, &p.hol, mh);
    merge_commit(&r->work, &p.work, mw);
    if (p.weekend_line != 0) {
        r->weekend = p.weekend;
        r->has_weekend = true;
    }
    if (p.years_line != 0) {
        if (!r->has_years || p.year_lo < r->year_lo) r->year_lo = p.year_lo;
        if (!r->has_years || p.year_hi > r->year_hi) r->year_hi = p.year_hi;
        r->has_years = true;
    }
    span_years(r);
    if (fresh != NULL) {
        memmove(cal->r + at + 1, cal->r + at, (cal->n - at) * sizeof *cal->r);
        cal->r[at] = fresh;
        cal->n++;
    }
    return TD_OK;
oom_fresh:
    region_free(fresh);
oom:
    days_free(&p.hol);
    days_free(&p.work);
    if (err != NULL && errcap > 0) snprintf(err, errcap, "out of memory");
    return TD_ERR;
}
