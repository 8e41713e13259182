/*
 * td_state_internal.h - what the three files of the prospect state share and
 * nobody else may include:
 *
 *   td_state.c         the reducer: life cycle, dedup ring, input positions,
 *                      fired and timer tables, touches, td_state_apply
 *   td_state_flat.c    the flat (Redis hash) form: serialize, set_field, diff
 *   td_state_schema.c  the schema: the field table rules read, its getters
 *
 * The public contract is td_state.h; this header changes with the code.
 */
#ifndef TD_STATE_INTERNAL_H
#define TD_STATE_INTERNAL_H

#include <string.h>

#include "td_state.h"

#define TD_NELEM(a) (sizeof(a) / sizeof((a)[0]))

#define S_(f) offsetof(td_state, f)
#define C_(f) offsetof(td_chan_state, f)

/* Counters saturate rather than wrap: a state read back from Redis may hold
 * anything, and signed overflow would be undefined behaviour. */
static inline int64_t td_sat_add(int64_t a, int64_t b) {
    if (b > 0 && a > INT64_MAX - b) return INT64_MAX;
    if (b < 0 && a < INT64_MIN - b) return INT64_MIN;
    return a + b;
}

/* The decimal writer the reducer and the flat form share (td_state_flat.c). */
extern const char td_state_dig2[200];
size_t td_state_w_u64_long(char *p, uint64_t v);
/* v in decimal (td_fmt_u64's digits, no NUL): up to 20 bytes. Counters are
 * small: one or two digits inline. */
static inline size_t td_w_u64(char *p, uint64_t v) {
    if (v < 10) {
        p[0] = (char)('0' + v);
        return 1;
    }
    if (v < 100) {
        memcpy(p, td_state_dig2 + 2 * v, 2);
        return 2;
    }
    return td_state_w_u64_long(p, v);
}

/* Defined in td_state.c, used by the flat form and the schema. */
int td_block_reason_parse(const char *s, size_t n);
/* td_event.h has no parser for sentiments: match the names it gives. */
int td_state_sentiment_parse(const char *s, size_t n);
void td_state_chan_init(td_chan_state *c);
/* Sets the input position of key k (td_state_pos_set hashes the topic). */
void td_state_pos_put(td_state *st, uint64_t k, int64_t offset);
/* Local civil time of t for this prospect: its zone, else the default zone,
 * else UTC. */
void td_state_local(const td_state *st, td_tzdb *tz, const td_settings *set, td_ms t,
                    td_civil *out);

#endif
