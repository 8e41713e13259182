/*
 * td_base.h - types shared by every module of the touchd core.
 *
 * The core (src/core) is pure C11 with no I/O, no clock reads and no globals
 * that change after start-up. Times are integers (milliseconds since the Unix
 * epoch, UTC); money is a fixed-point decimal with four fractional digits.
 * Keeping both as int64_t makes the engine deterministic (no float rounding in
 * rule results) and makes state serialisation exact.
 *
 * @locality any thread; nothing here holds state.
 */
#ifndef TD_BASE_H
#define TD_BASE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A point in time (ms since 1970-01-01T00:00:00Z) or a duration in ms. */
typedef int64_t td_ms;
/* The value of a time that was never set: "missing" in the rules language. */
#define TD_MS_MISSING INT64_MIN

#define TD_SECOND ((td_ms)1000)
#define TD_MINUTE (60 * TD_SECOND)
#define TD_HOUR (60 * TD_MINUTE)
#define TD_DAY (24 * TD_HOUR)
#define TD_WEEK (7 * TD_DAY)

/* A decimal: value * 10^4 (so 12.5 EUR is 125000). */
typedef int64_t td_dec;
#define TD_DEC_SCALE 10000
#define TD_DEC_MISSING INT64_MIN

/* An integer field that was never set. */
#define TD_INT_MISSING INT64_MIN

/* Bounds from the event contract (DESIGN.md, "Events in"). */
#define TD_ID_MAX 128            /* ids: 1..128 bytes */
#define TD_EVENT_MAX (64 * 1024) /* one event message: at most 64 KiB */
#define TD_SHORT_MAX 64          /* sector, timezone, kind, wrapping...: bytes */
#define TD_RULE_ID_MAX 64        /* rule ids: bytes */

/* Touch channels: where a recommendation can send a seller. */
typedef enum td_channel {
    TD_CH_EMAIL = 0,
    TD_CH_WHATSAPP,
    TD_CH_SMS,
    TD_CH_LINKEDIN,
    TD_CH_CALL,
    TD_CH_MEETING,
    TD_CH_GIFT,
    TD_CH__COUNT,
    TD_CH_NONE = -1 /* e.g. prospect.updated */
} td_channel;

/* "email" ... "gift"; NULL for an out-of-range value. */
const char *td_channel_name(td_channel ch);
/* Parses a channel name of `len` bytes; TD_CH_NONE when unknown. */
td_channel td_channel_parse(const char *s, size_t len);

/* Result codes: 0 is success everywhere, negative is failure. */
#define TD_OK 0
#define TD_ERR (-1)

/* A bounded, always NUL-terminated copy; returns false when truncated. */
bool td_strlcpy(char *dst, const char *src, size_t cap);

/* 64-bit FNV-1a, for in-memory tables and dedup fingerprints (not security). */
uint64_t td_hash64(const void *data, size_t len, uint64_t seed);

/* Decimal digits of v into buf, NUL-terminated (buf: at least 21 bytes for
 * td_fmt_u64, 22 for td_fmt_i64); @returns the length. snprintf was half of
 * the cost of writing a state's flat form (callgrind). */
size_t td_fmt_u64(uint64_t v, char *buf);
size_t td_fmt_i64(int64_t v, char *buf);
/* Strict decimal integer v[0..n): -?[0-9]+ within int64 (leading zeros
 * allowed). @returns TD_OK (*out set) or TD_ERR. */
int td_parse_i64(const char *v, size_t n, int64_t *out);
#define TD_HASH_SEED 0xcbf29ce484222325ULL

/* A growable byte buffer (JSON output: recommendations, gift records). The
 * text is kept NUL-terminated; the owner frees it with td_buf_free. */
typedef struct td_buf {
    char *p;
    size_t len, cap;
} td_buf;
int td_buf_reserve(td_buf *b, size_t extra);
int td_buf_append(td_buf *b, const char *s, size_t n);
int td_buf_printf(td_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int td_buf_json_str(td_buf *b, const char *s, size_t n); /* quoted, escaped */
void td_buf_free(td_buf *b);
/*
 * Room for one more element in a growable array: when n == *cap, the array
 * at *(T **)arrayp is reallocated to twice *cap elements of elem bytes (to
 * `first` when empty) and *cap updated. Call as
 * td_grow(&a->v, &a->cap, a->n, sizeof *a->v, 64).
 * @returns TD_OK, or TD_ERR (out of memory: the array is unchanged).
 */
int td_grow(void *arrayp, size_t *cap, size_t n, size_t elem, size_t first);

/* Writes s (n bytes) as a JSON string, quoted and escaped, at o, which has
 * room for 6 * n + 2 bytes (no NUL is written); @returns the end. What
 * td_buf_json_str and the recommendation writer (td_engine.c) write. */
char *td_json_str_at(char *o, const char *s, size_t n);

/* ---- typed values: what rule expressions compute and state fields hold ---- */

typedef enum td_type {
    TD_T_NONE = 0, /* no type (errors) */
    TD_T_BOOL,
    TD_T_INT,
    TD_T_DEC,
    TD_T_STR,
    TD_T_TIME,
    TD_T_DUR,
    TD_T__COUNT
} td_type;
/* "bool", "int", "decimal", "string", "time", "duration". */
const char *td_type_name(td_type t);

/*
 * One value. `missing` marks a field never set (or computed from one); the
 * rules language defines what each operator does with it. Strings are
 * borrowed: they point into the state, the event or the compiled ruleset and
 * live as long as those.
 */
typedef struct td_value {
    td_type type;
    bool missing;
    union {
        bool b;
        int64_t i; /* TD_T_INT */
        td_dec d;  /* TD_T_DEC */
        td_ms t;   /* TD_T_TIME and TD_T_DUR */
        struct {
            const char *p;
            uint32_t n;
        } s; /* TD_T_STR: not necessarily NUL-terminated */
    } u;
} td_value;

#endif
