/*
 * td_state.c - per-prospect state: the reducer, the dedup ring, input
 * positions, per-rule tables, the flat (Redis hash) form and the schema that
 * rule expressions read.
 *
 * What it owns: the `fired` and `timers` arrays of a td_state and the pool
 * of the timers' armed_by ids (grown by doubling, freed by td_state_free). Nothing else is allocated here: the
 * reducer (td_state_apply) and every schema getter run on the engine's hot
 * path and never allocate or take locks; td_state_apply does a time-zone
 * lookup only for the events that need a local time (human opens, replies,
 * gifts).
 *
 * Reducer semantics (docs/state.md is the reference for ops):
 *   - outbound touches (email/whatsapp/sms.sent, linkedin.invited/messaged,
 *     call.attempted/voicemail/connected, gift.sent) bump `sent` and
 *     `unanswered` on their channel and enter the touch ring;
 *   - human opens (email.opened with human true or absent, whatsapp/sms.read)
 *     bump `opened` and `opens_since_reply`; machine opens change nothing on
 *     the channel;
 *   - a reply (any *.replied except sentiment out_of_office, and
 *     call.connected) means the prospect answered: `unanswered` and
 *     `opens_since_reply` go back to 0 on EVERY channel;
 *   - out-of-office replies change nothing but the common bookkeeping;
 *   - blocks are permanent except an opt-out, which an explicit opt-in event
 *     lifts; the first permanent reason recorded is kept;
 *   - events may arrive slightly out of order: every last_*_at takes the max,
 *     every first_*_at the min.
 *
 * Flat form: one ASCII key/value per non-default field (see td_flat_top and
 * td_flat_chan for the names). Strings are percent-encoded: bytes below 0x20,
 * 0x7f and above, and '%' itself become %XX; everything else (space included)
 * stays as is, so `redis-cli HGETALL` stays readable and every value is
 * unambiguous. Times are RFC 3339 UTC, or "@<ms>" for instants outside years
 * 1..9999 (which RFC 3339 cannot write). Decimals are "12.5" (up to four
 * fractional digits). Key order in Redis is not preserved, so every field is
 * independent of the others: lists (touches, dedup, hour_hist) are one value
 * each, and tables (pos.*, fired.*, timer.*) are sorted on insertion.
 *
 * @locality any thread; a td_state is used by one thread at a time; the
 * schema table is immutable.
 */
#include "td_state.h"
#include "td_kvs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* ---------------------------------------------------------------- helpers */

#define TD_NELEM(a) (sizeof(a) / sizeof((a)[0]))

/* Counters saturate rather than wrap: a state read back from Redis may hold
 * anything, and signed overflow would be undefined behaviour. */
static inline int64_t td_sat_add(int64_t a, int64_t b) {
    if (b > 0 && a > INT64_MAX - b) return INT64_MAX;
    if (b < 0 && a < INT64_MIN - b) return INT64_MIN;
    return a + b;
}
static inline void td_inc(int64_t *c) {
    if (*c < INT64_MAX) (*c)++;
}
static inline void td_max_ms(td_ms *dst, td_ms t) {
    if (*dst == TD_MS_MISSING || t > *dst) *dst = t;
}
static inline void td_min_ms(td_ms *dst, td_ms t) {
    if (*dst == TD_MS_MISSING || t < *dst) *dst = t;
}

const char *td_block_reason_name(td_block_reason r) {
    switch (r) {
    case TD_BLOCK_UNSUBSCRIBED:
        return "unsubscribed";
    case TD_BLOCK_HARD_BOUNCE:
        return "hard_bounce";
    case TD_BLOCK_OPTED_OUT:
        return "opted_out";
    case TD_BLOCK_NONE:
    default:
        return "";
    }
}

static int td_block_reason_parse(const char *s, size_t n) {
    for (int r = TD_BLOCK_UNSUBSCRIBED; r <= TD_BLOCK_OPTED_OUT; r++) {
        const char *name = td_block_reason_name((td_block_reason)r);
        if (strlen(name) == n && memcmp(name, s, n) == 0) return r;
    }
    return -1;
}

/* td_event.h has no parser for sentiments: match the names it gives. */
static int td_sentiment_parse_(const char *s, size_t n) {
    for (int v = TD_SENT_POSITIVE; v <= TD_SENT_OUT_OF_OFFICE; v++) {
        const char *name = td_sentiment_name((td_sentiment)v);
        if (name && strlen(name) == n && memcmp(name, s, n) == 0) return v;
    }
    return -1;
}

/* ------------------------------------------------------- settings, life */

void td_settings_default(td_settings *s) {
    memset(s, 0, sizeof *s);
    td_strlcpy(s->default_timezone, "UTC", sizeof s->default_timezone);
    s->best_time_min_points = 5;
    s->best_time_default_hour = 10;
    s->business_start_hour = 9;
    s->business_end_hour = 18;
    s->quiet_start_hour = 21;
    s->quiet_end_hour = 8;
    /* France: VAT on client gifts recoverable up to 73 EUR incl. VAT per
     * recipient per year (revalued every five years: a setting) */
    td_strlcpy(s->gift_tax_caps[0].country, "FR", sizeof s->gift_tax_caps[0].country);
    s->gift_tax_caps[0].cap_eur = 73 * TD_DEC_SCALE;
    s->ngift_tax_caps = 1;
    s->calendar = NULL;
}

static void td_chan_init(td_chan_state *c) {
    memset(c, 0, sizeof *c);
    c->last_sent_at = c->last_opened_at = c->last_replied_at = TD_MS_MISSING;
    c->blocked = TD_BLOCK_NONE;
    c->consent = TD_TRI_UNSET;
}

void td_state_init(td_state *st, const char *prospect_id) {
    memset(st, 0, sizeof *st);
    if (prospect_id) td_strlcpy(st->prospect_id, prospect_id, sizeof st->prospect_id);
    for (int c = 0; c < TD_CH__COUNT; c++)
        td_chan_init(&st->ch[c]);
    st->stage = TD_STAGE_NONE;
    st->tier = TD_INT_MISSING;
    st->gift_policy = TD_GP_NONE;
    st->lifetime_value_eur = TD_DEC_MISSING;
    st->first_seen_at = st->last_event_at = st->last_touch_at = TD_MS_MISSING;
    st->last_inbound_at = st->first_touch_at = st->stage_changed_at = TD_MS_MISSING;
    st->next_meeting_at = st->last_gift_at = TD_MS_MISSING;
    st->last_reply_sentiment = TD_SENT_NONE;
    st->last_gift_kind = TD_GK_NONE;
}

void td_state_free(td_state *st) {
    if (!st) return;
    free(st->fired);
    free(st->timers);
    free(st->armed);
    st->fired = NULL;
    st->timers = NULL;
    st->armed = NULL;
    st->nfired = st->capfired = st->ntimers = st->captimers = 0;
    st->narmed = st->caparmed = st->armed_hint = 0;
}

/* Points every timer's armed_by at its pool slot (after the pool moved). */
static void td_armed_repoint(td_state *st) {
    for (uint32_t i = 0; i < st->ntimers; i++)
        st->timers[i].armed_by = st->armed[st->timers[i].armed_slot].id;
}

/* Ownership: dst gets its own copies of the tables (freed by td_state_free
 * on dst). On out-of-memory dst is left a valid state without tables. */
int td_state_copy(td_state *dst, const td_state *src) {
    *dst = *src;
    dst->fired = NULL;
    dst->timers = NULL;
    dst->armed = NULL;
    dst->nfired = dst->capfired = dst->ntimers = dst->captimers = 0;
    dst->narmed = dst->caparmed = dst->armed_hint = 0;
    if (src->nfired) {
        dst->fired = malloc(src->nfired * sizeof *dst->fired);
        if (!dst->fired) return TD_ERR;
        memcpy(dst->fired, src->fired, src->nfired * sizeof *dst->fired);
        dst->nfired = dst->capfired = src->nfired;
    }
    if (src->ntimers) {
        dst->timers = malloc(src->ntimers * sizeof *dst->timers);
        if (!dst->timers) {
            td_state_free(dst);
            return TD_ERR;
        }
        memcpy(dst->timers, src->timers, src->ntimers * sizeof *dst->timers);
        dst->ntimers = dst->captimers = src->ntimers;
        /* the pool as is (slot indices stay valid), re-pointed */
        dst->armed = malloc(src->narmed * sizeof *dst->armed);
        if (!dst->armed) {
            td_state_free(dst);
            return TD_ERR;
        }
        memcpy(dst->armed, src->armed, src->narmed * sizeof *dst->armed);
        dst->narmed = dst->caparmed = src->narmed;
        dst->armed_hint = src->armed_hint < src->narmed ? src->armed_hint : 0;
        td_armed_repoint(dst);
    }
    return TD_OK;
}

static bool td_chan_equal(const td_chan_state *a, const td_chan_state *b) {
    return a->sent == b->sent && a->delivered == b->delivered && a->opened == b->opened &&
           a->clicked == b->clicked && a->replied == b->replied && a->failed == b->failed &&
           a->unanswered == b->unanswered && a->opens_since_reply == b->opens_since_reply &&
           a->last_sent_at == b->last_sent_at && a->last_opened_at == b->last_opened_at &&
           a->last_replied_at == b->last_replied_at && a->blocked == b->blocked &&
           a->consent == b->consent;
}

/* Rings compare by content, oldest first: where the head sits is not state. */
static td_ms td_touch_at(const td_state *st, uint32_t i) { /* i = 0: oldest */
    uint32_t start =
        (st->touch_head % TD_TOUCH_RING + TD_TOUCH_RING - st->touch_count) % TD_TOUCH_RING;
    return st->touch_ring[(start + i) % TD_TOUCH_RING];
}
static uint64_t td_dedup_at(const td_state *st, uint32_t i) {
    uint32_t start =
        (st->dedup_head % TD_DEDUP_RING + TD_DEDUP_RING - st->dedup_count) % TD_DEDUP_RING;
    return st->dedup[(start + i) % TD_DEDUP_RING];
}

bool td_state_equal(const td_state *a, const td_state *b) {
    if (strcmp(a->prospect_id, b->prospect_id) || strcmp(a->owner_id, b->owner_id) ||
        a->version != b->version || a->events != b->events)
        return false;
    for (int c = 0; c < TD_CH__COUNT; c++)
        if (!td_chan_equal(&a->ch[c], &b->ch[c])) return false;
    if (a->stage != b->stage || a->tier != b->tier || strcmp(a->country, b->country) ||
        strcmp(a->sector, b->sector) || strcmp(a->timezone, b->timezone) ||
        a->gift_policy != b->gift_policy || a->lifetime_value_eur != b->lifetime_value_eur ||
        strcmp(a->language, b->language))
        return false;
    if (a->first_seen_at != b->first_seen_at || a->last_event_at != b->last_event_at ||
        a->last_touch_at != b->last_touch_at || a->last_inbound_at != b->last_inbound_at ||
        a->first_touch_at != b->first_touch_at || a->stage_changed_at != b->stage_changed_at ||
        a->replies != b->replies || a->last_reply_sentiment != b->last_reply_sentiment ||
        a->meetings_booked != b->meetings_booked || a->meetings_held != b->meetings_held ||
        a->meetings_cancelled != b->meetings_cancelled ||
        a->meetings_no_show != b->meetings_no_show || a->next_meeting_at != b->next_meeting_at)
        return false;
    if (a->touch_count != b->touch_count) return false;
    for (uint32_t i = 0; i < a->touch_count; i++)
        if (td_touch_at(a, i) != td_touch_at(b, i)) return false;
    if (memcmp(a->hour_hist, b->hour_hist, sizeof a->hour_hist)) return false;
    if (a->gift_year != b->gift_year || a->gifts_year_count != b->gifts_year_count ||
        a->gifts_year_spend_eur != b->gifts_year_spend_eur || a->gifts_total != b->gifts_total ||
        a->last_gift_at != b->last_gift_at || a->last_gift_kind != b->last_gift_kind)
        return false;
    if (a->dedup_count != b->dedup_count) return false;
    for (uint32_t i = 0; i < a->dedup_count; i++)
        if (td_dedup_at(a, i) != td_dedup_at(b, i)) return false;
    if (a->npos != b->npos) return false;
    for (uint32_t i = 0; i < a->npos; i++) /* kept sorted by key */
        if (a->pos[i].key != b->pos[i].key || a->pos[i].offset != b->pos[i].offset) return false;
    if (a->nfired != b->nfired || a->ntimers != b->ntimers) return false;
    for (uint32_t i = 0; i < a->nfired; i++)
        if (strcmp(a->fired[i].rule, b->fired[i].rule) || a->fired[i].at != b->fired[i].at)
            return false;
    for (uint32_t i = 0; i < a->ntimers; i++)
        if (strcmp(a->timers[i].rule, b->timers[i].rule) ||
            a->timers[i].due_at != b->timers[i].due_at ||
            strcmp(a->timers[i].armed_by, b->timers[i].armed_by))
            return false;
    return true;
}

/* ------------------------------------------------------------ dedup ring */

uint64_t td_state_fingerprint(const char *event_id) {
    return td_hash64(event_id, strlen(event_id), TD_HASH_SEED);
}

bool td_state_seen(const td_state *st, const char *event_id) {
    return td_state_seen_fp(st, td_state_fingerprint(event_id));
}

bool td_state_seen_fp(const td_state *st, uint64_t fp) {
    uint32_t cnt = st->dedup_count < TD_DEDUP_RING ? st->dedup_count : TD_DEDUP_RING;
    uint32_t idx = (st->dedup_head % TD_DEDUP_RING + TD_DEDUP_RING - cnt) % TD_DEDUP_RING;
    for (uint32_t i = 0; i < cnt; i++) {
        if (st->dedup[idx] == fp) return true;
        if (++idx == TD_DEDUP_RING) idx = 0;
    }
    return false;
}

void td_state_remember(td_state *st, const char *event_id) {
    td_state_remember_fp(st, td_state_fingerprint(event_id));
}

void td_state_remember_fp(td_state *st, uint64_t fp) {
    st->dedup[st->dedup_head % TD_DEDUP_RING] = fp;
    st->dedup_head = (st->dedup_head + 1) % TD_DEDUP_RING;
    if (st->dedup_count < TD_DEDUP_RING) st->dedup_count++;
}

/* -------------------------------------------------------- input positions */

static inline size_t td_w_u64(char *p, uint64_t v);

/* td_hash64 of "<topic>/<partition>", hashed in two pieces (FNV-1a chains
 * through its seed) so that no topic length needs a buffer. The suffix is
 * written by hand: this runs twice per event (check, then set). */
static uint64_t td_pos_key(const char *topic, int32_t partition) {
    char sfx[16];
    size_t n = 0;
    sfx[n++] = '/';
    uint32_t u = (uint32_t)partition;
    if (partition < 0) {
        sfx[n++] = '-';
        u = 0u - u;
    }
    n += td_w_u64(sfx + n, u);
    uint64_t h = td_hash64(topic, strlen(topic), TD_HASH_SEED);
    return td_hash64(sfx, n, h);
}

int64_t td_state_pos_get(const td_state *st, const char *topic, int32_t partition) {
    uint64_t k = td_pos_key(topic, partition);
    for (uint32_t i = 0; i < st->npos && i < TD_POS_MAX; i++)
        if (st->pos[i].key == k) return st->pos[i].offset;
    return -1;
}

/* Keeps pos[] sorted by key so that the flat form reads back identical
 * whatever order Redis returns the fields in. When all TD_POS_MAX slots are
 * taken (a prospect whose key moved across many topics: not expected), the
 * entry with the lowest offset is dropped. */
static void td_pos_put(td_state *st, uint64_t k, int64_t offset) {
    uint32_t i;
    for (i = 0; i < st->npos; i++)
        if (st->pos[i].key == k) {
            st->pos[i].offset = offset;
            return;
        }
    if (st->npos >= TD_POS_MAX) {
        uint32_t lo = 0;
        for (i = 1; i < st->npos; i++)
            if (st->pos[i].offset < st->pos[lo].offset) lo = i;
        memmove(&st->pos[lo], &st->pos[lo + 1], (st->npos - lo - 1) * sizeof st->pos[0]);
        st->npos--;
    }
    for (i = 0; i < st->npos && st->pos[i].key < k; i++) {
    }
    memmove(&st->pos[i + 1], &st->pos[i], (st->npos - i) * sizeof st->pos[0]);
    st->pos[i].key = k;
    st->pos[i].offset = offset;
    st->npos++;
}

void td_state_pos_set(td_state *st, const char *topic, int32_t partition, int64_t offset) {
    td_pos_put(st, td_pos_key(topic, partition), offset);
}

/* ------------------------------------------------ fired and timer tables */

td_rule_key td_rule_key_make(const char *id) {
    size_t n = strlen(id);
    td_rule_key k = {id, n > UINT32_MAX ? UINT32_MAX : (uint32_t)n, td_hash64(id, n, TD_HASH_SEED)};
    return k;
}

/* Both tables' entries start with the rule id's hash; the id itself is at
 * `rule_off`. A hash match is always confirmed on the bytes. */
_Static_assert(offsetof(td_fired, hash) == 0 && offsetof(td_timer, hash) == 0,
               "td_table_find reads the hash at the start of an entry");
static inline bool td_table_is(const char *e, size_t rule_off, const td_rule_key *k) {
    uint64_t h;
    memcpy(&h, e, sizeof h);
    return h == k->hash && memcmp(e + rule_off, k->id, k->len) == 0 && e[rule_off + k->len] == '\0';
}

static uint32_t td_table_scan(const char *p, uint32_t n, size_t elem, size_t rule_off,
                              const td_rule_key *k, bool pos, bool *found);

/*
 * Finds rule key k in a per-rule table (fired or timers): `n` entries of
 * `elem` bytes. The slot of `slots` the hash selects is tried first (one
 * entry, one cache line); a lookup whose slot is empty misses at once;
 * on another miss it scans the hashes (a prospect has a handful of
 * entries), and an insertion (`pos`) does a binary search
 * by id, which finds the entry too when it is there. @returns the entry's
 * index (*found = true), or, when absent and `pos` is set, the index where it
 * belongs in rule id order (the tables stay sorted: the flat form and
 * td_redis's diff rely on it).
 */
static inline uint32_t td_table_find(const void *base, uint32_t n, size_t elem, size_t rule_off,
                                     const uint8_t *slots, uint32_t nslots, const td_rule_key *k,
                                     bool pos, bool *found) {
    const char *p = base;
    uint32_t s = slots[k->hash % nslots];
    if (s && s - 1 < n && k->len <= TD_RULE_ID_MAX &&
        td_table_is(p + (size_t)(s - 1) * elem, rule_off, k)) {
        *found = true;
        return s - 1;
    }
    /* an empty slot is a miss: every insertion and removal rebuilds the
     * slots from all entries (td_slots_rebuild, up to UINT8_MAX of them),
     * so no entry has this slot's hash */
    if (!s && !pos && n < UINT8_MAX) {
        *found = false;
        return n;
    }
    return td_table_scan(p, n, elem, rule_off, k, pos, found);
}

/* td_table_find without (or after a miss of) the slot. */
static uint32_t td_table_scan(const char *p, uint32_t n, size_t elem, size_t rule_off,
                              const td_rule_key *k, bool pos, bool *found) {
    *found = false;
    if (k->len > TD_RULE_ID_MAX) return n; /* never stored (set/arm refuse it) */
    if (!pos) {                            /* a lookup: compare hashes, the bytes only on a match */
        for (uint32_t i = 0; i < n; i++) {
            if (td_table_is(p + (size_t)i * elem, rule_off, k)) {
                *found = true;
                return i;
            }
        }
        return n;
    }
    /* an insertion point is wanted (set/arm: the key is NUL-terminated):
     * the binary search finds the entry too when it is there */
    uint32_t lo = 0, hi = n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        int c = strcmp(p + (size_t)mid * elem + rule_off, k->id);
        if (c == 0) {
            *found = true;
            return mid;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static uint32_t td_fired_find(const td_state *st, const td_rule_key *k, bool pos, bool *found) {
    return td_table_find(st->fired, st->nfired, sizeof *st->fired, offsetof(td_fired, rule),
                         st->fired_slot, TD_NELEM(st->fired_slot), k, pos, found);
}

static uint32_t td_timer_find(const td_state *st, const td_rule_key *k, bool pos, bool *found) {
    return td_table_find(st->timers, st->ntimers, sizeof *st->timers, offsetof(td_timer, rule),
                         st->timer_slot, TD_NELEM(st->timer_slot), k, pos, found);
}

/* Re-points every slot after entries moved (an insert or a removal). */
static void td_slots_rebuild(uint8_t *slots, uint32_t nslots, const void *base, uint32_t n,
                             size_t elem) {
    memset(slots, 0, nslots);
    for (uint32_t i = 0; i < n && i < UINT8_MAX; i++) {
        uint64_t h;
        memcpy(&h, (const char *)base + (size_t)i * elem, sizeof h);
        slots[h % nslots] = (uint8_t)(i + 1);
    }
}
static void td_fired_slots(td_state *st) {
    td_slots_rebuild(st->fired_slot, TD_NELEM(st->fired_slot), st->fired, st->nfired,
                     sizeof *st->fired);
}
static void td_timer_slots(td_state *st) {
    td_slots_rebuild(st->timer_slot, TD_NELEM(st->timer_slot), st->timers, st->ntimers,
                     sizeof *st->timers);
}

/* Grows a table by doubling (from 4). Ownership stays with the state. */
static int td_grow(void **p, uint32_t *cap, uint32_t need, size_t elem) {
    if (need <= *cap) return TD_OK;
    uint32_t ncap = *cap ? *cap : 4;
    while (ncap < need) {
        if (ncap > UINT32_MAX / 2) return TD_ERR;
        ncap *= 2;
    }
    void *np = realloc(*p, (size_t)ncap * elem);
    if (!np) return TD_ERR;
    *p = np;
    *cap = ncap;
    return TD_OK;
}

td_ms td_state_fired_at_key(const td_state *st, const td_rule_key *rule) {
    bool found;
    uint32_t i = td_fired_find(st, rule, false, &found);
    return found ? st->fired[i].at : TD_MS_MISSING;
}

td_ms td_state_fired_at(const td_state *st, const char *rule) {
    td_rule_key k = td_rule_key_make(rule);
    return td_state_fired_at_key(st, &k);
}

/* @returns TD_OK, or TD_ERR on out-of-memory or a rule id over
 * TD_RULE_ID_MAX bytes (never silently truncated: two rules would merge). */
int td_state_set_fired_key(td_state *st, const td_rule_key *rule, td_ms at) {
    if (rule->len > TD_RULE_ID_MAX) return TD_ERR;
    bool found;
    uint32_t i = td_fired_find(st, rule, true, &found);
    if (!found) {
        void *p = st->fired;
        if (td_grow(&p, &st->capfired, st->nfired + 1, sizeof *st->fired)) return TD_ERR;
        st->fired = p;
        memmove(&st->fired[i + 1], &st->fired[i], (st->nfired - i) * sizeof *st->fired);
        st->nfired++;
        memset(&st->fired[i], 0, sizeof st->fired[i]);
        memcpy(st->fired[i].rule, rule->id, rule->len);
        st->fired[i].rule[rule->len] = '\0';
        st->fired[i].hash = rule->hash;
        td_fired_slots(st);
    } else if (i < UINT8_MAX) {
        st->fired_slot[rule->hash % TD_NELEM(st->fired_slot)] = (uint8_t)(i + 1);
    }
    st->fired[i].at = at;
    return TD_OK;
}

int td_state_set_fired(td_state *st, const char *rule, td_ms at) {
    td_rule_key k = td_rule_key_make(rule);
    return td_state_set_fired_key(st, &k, at);
}

/*
 * A pool slot holding armed_by (al bytes, <= TD_ID_MAX), its reference taken
 * for one timer: the slot of the latest arm when it is the same id (one
 * event arms all its timers in a row), else any slot with that id, else a
 * free one, else a new one (the pool grows; timers are re-pointed).
 * @returns TD_OK, or TD_ERR on out-of-memory (nothing changed then).
 */
static int td_armed_acquire(td_state *st, const char *armed_by, size_t al, uint32_t *slot) {
    if (!armed_by) armed_by = "", al = 0;
    if (al > TD_ID_MAX) return TD_ERR;
    td_armed *a = st->armed;
    uint32_t h = st->armed_hint, free_slot = UINT32_MAX;
    if (h < st->narmed && a[h].len == al && memcmp(a[h].id, armed_by, al) == 0) {
        a[h].refs++;
        *slot = h;
        return TD_OK;
    }
    for (uint32_t k = 0; k < st->narmed; k++) {
        if (a[k].refs == 0) {
            if (free_slot == UINT32_MAX) free_slot = k;
        } else if (a[k].len == al && memcmp(a[k].id, armed_by, al) == 0) {
            a[k].refs++;
            *slot = st->armed_hint = k;
            return TD_OK;
        }
    }
    if (free_slot == UINT32_MAX) {
        void *p = st->armed;
        if (td_grow(&p, &st->caparmed, st->narmed + 1, sizeof *st->armed)) return TD_ERR;
        if (p != st->armed) {
            st->armed = p;
            td_armed_repoint(st);
        }
        free_slot = st->narmed++;
    }
    td_armed *f = &st->armed[free_slot];
    memset(f->id, 0, sizeof f->id); /* all TD_ID_MAX + 1 bytes defined: callers copy them */
    memcpy(f->id, armed_by, al);
    f->len = (uint8_t)al;
    f->refs = 1;
    *slot = st->armed_hint = free_slot;
    return TD_OK;
}

const td_timer *td_state_timer_key(const td_state *st, const td_rule_key *rule) {
    bool found;
    uint32_t i = td_timer_find(st, rule, false, &found);
    return found ? &st->timers[i] : NULL;
}

const td_timer *td_state_timer(const td_state *st, const char *rule) {
    td_rule_key k = td_rule_key_make(rule);
    return td_state_timer_key(st, &k);
}

/* @returns TD_OK, or TD_ERR on out-of-memory or an over-long rule id or
 * armed_by (state unchanged then). */
int td_state_armed_hold(td_state *st, const char *armed_by, size_t al, uint32_t *slot) {
    return td_armed_acquire(st, armed_by, al, slot);
}

void td_state_armed_drop(td_state *st, uint32_t slot) {
    if (slot < st->narmed && st->armed[slot].refs) st->armed[slot].refs--;
}

int td_state_arm_timer_key(td_state *st, const td_rule_key *rule, td_ms due_at,
                           const char *armed_by, size_t al) {
    if (rule->len > TD_RULE_ID_MAX) return TD_ERR;
    uint32_t slot;
    if (td_armed_acquire(st, armed_by, al, &slot) != TD_OK) return TD_ERR;
    int rc = td_state_arm_timer_slot(st, rule, due_at, slot);
    td_state_armed_drop(st, slot);
    return rc;
}

/* @returns TD_OK, or TD_ERR on out-of-memory or an over-long rule id or a
 * slot not held (state unchanged then). */
int td_state_arm_timer_slot(td_state *st, const td_rule_key *rule, td_ms due_at, uint32_t slot) {
    if (rule->len > TD_RULE_ID_MAX || slot >= st->narmed || !st->armed[slot].refs) return TD_ERR;
    st->armed[slot].refs++; /* the timer's reference */
    bool found;
    uint32_t i = td_timer_find(st, rule, true, &found);
    if (!found) {
        void *p = st->timers;
        if (td_grow(&p, &st->captimers, st->ntimers + 1, sizeof *st->timers)) {
            st->armed[slot].refs--;
            return TD_ERR;
        }
        st->timers = p;
        memmove(&st->timers[i + 1], &st->timers[i], (st->ntimers - i) * sizeof *st->timers);
        st->ntimers++;
        memset(&st->timers[i], 0, sizeof st->timers[i]);
        memcpy(st->timers[i].rule, rule->id, rule->len);
        st->timers[i].rule[rule->len] = '\0';
        st->timers[i].hash = rule->hash;
        td_timer_slots(st);
    } else {
        st->armed[st->timers[i].armed_slot].refs--; /* the previous arm's id */
        if (i < UINT8_MAX) st->timer_slot[rule->hash % TD_NELEM(st->timer_slot)] = (uint8_t)(i + 1);
    }
    st->timers[i].due_at = due_at;
    st->timers[i].armed_slot = slot;
    st->timers[i].armed_by = st->armed[slot].id;
    return TD_OK;
}

int td_state_arm_timer(td_state *st, const char *rule, td_ms due_at, const char *armed_by) {
    td_rule_key k = td_rule_key_make(rule);
    return td_state_arm_timer_key(st, &k, due_at, armed_by, armed_by ? strlen(armed_by) : 0);
}

void td_state_disarm_timer_key(td_state *st, const td_rule_key *rule) {
    bool found;
    uint32_t i = td_timer_find(st, rule, false, &found);
    if (!found) return;
    st->armed[st->timers[i].armed_slot].refs--;
    memmove(&st->timers[i], &st->timers[i + 1], (st->ntimers - i - 1) * sizeof *st->timers);
    st->ntimers--;
    td_timer_slots(st);
}

void td_state_disarm_timer(td_state *st, const char *rule) {
    td_rule_key k = td_rule_key_make(rule);
    td_state_disarm_timer_key(st, &k);
}

/* ---------------------------------------------------------------- touches */

static void td_touch_push(td_state *st, td_ms t) {
    st->touch_ring[st->touch_head % TD_TOUCH_RING] = t;
    st->touch_head = (st->touch_head + 1) % TD_TOUCH_RING;
    if (st->touch_count < TD_TOUCH_RING) st->touch_count++;
}

/* Counts ring entries in (now - window, now]. Touches older than the ring
 * (more than TD_TOUCH_RING ago) are not counted: the caps rules express are
 * far below that. */
int64_t td_state_touches_within(const td_state *st, td_ms now, td_ms window) {
    td_ms lo = td_sat_add(now, window == INT64_MIN ? INT64_MAX : -window);
    int64_t n = 0;
    uint32_t cnt = st->touch_count < TD_TOUCH_RING ? st->touch_count : TD_TOUCH_RING;
    /* order does not matter for a count: walk the used slots without a
     * modulo per element (this runs for every touches.* read) */
    uint32_t idx = (st->touch_head % TD_TOUCH_RING + TD_TOUCH_RING - cnt) % TD_TOUCH_RING;
    for (uint32_t i = 0; i < cnt; i++) {
        td_ms t = st->touch_ring[idx];
        n += (t > lo) & (t <= now);
        if (++idx == TD_TOUCH_RING) idx = 0;
    }
    return n;
}

/* ---------------------------------------------------------------- reducer */

/* What an event type does, decided once per type (a table, not string work). */
enum {
    TD_A_TOUCH = 1u << 0, /* outbound touch on the channel */
    TD_A_DELIVERED = 1u << 1,
    TD_A_OPEN = 1u << 2, /* human open (email.opened checks `human`) */
    TD_A_CLICK = 1u << 3,
    TD_A_REPLY = 1u << 4,   /* a reply (email/.. .replied checks sentiment) */
    TD_A_INBOUND = 1u << 5, /* inbound engagement, not a reply */
    TD_A_FAILED = 1u << 6,
    TD_A_BOUNCE = 1u << 7,
    TD_A_UNSUB = 1u << 8,
    TD_A_OPT_IN = 1u << 9,
    TD_A_OPT_OUT = 1u << 10,
    TD_A_MEETING = 1u << 11,
    TD_A_GIFT = 1u << 12,
    TD_A_PROSPECT = 1u << 13,
    TD_A_OWNER = 1u << 14 /* owner.prospect_contacted on an owner's state */
};

typedef struct td_reducer {
    int8_t channel;
    uint16_t acts;
} td_reducer;

static const td_reducer td_reducers[TD_EV__COUNT] = {
    [TD_EV_EMAIL_SENT] = {TD_CH_EMAIL, TD_A_TOUCH},
    [TD_EV_EMAIL_DELIVERED] = {TD_CH_EMAIL, TD_A_DELIVERED},
    [TD_EV_EMAIL_OPENED] = {TD_CH_EMAIL, TD_A_OPEN},
    [TD_EV_EMAIL_CLICKED] = {TD_CH_EMAIL, TD_A_CLICK},
    [TD_EV_EMAIL_REPLIED] = {TD_CH_EMAIL, TD_A_REPLY},
    [TD_EV_EMAIL_BOUNCED] = {TD_CH_EMAIL, TD_A_BOUNCE},
    [TD_EV_EMAIL_UNSUBSCRIBED] = {TD_CH_EMAIL, TD_A_UNSUB},
    [TD_EV_WHATSAPP_SENT] = {TD_CH_WHATSAPP, TD_A_TOUCH},
    [TD_EV_WHATSAPP_DELIVERED] = {TD_CH_WHATSAPP, TD_A_DELIVERED},
    [TD_EV_WHATSAPP_READ] = {TD_CH_WHATSAPP, TD_A_OPEN},
    [TD_EV_WHATSAPP_REPLIED] = {TD_CH_WHATSAPP, TD_A_REPLY},
    [TD_EV_WHATSAPP_FAILED] = {TD_CH_WHATSAPP, TD_A_FAILED},
    [TD_EV_WHATSAPP_OPTED_IN] = {TD_CH_WHATSAPP, TD_A_OPT_IN},
    [TD_EV_WHATSAPP_OPTED_OUT] = {TD_CH_WHATSAPP, TD_A_OPT_OUT},
    [TD_EV_SMS_SENT] = {TD_CH_SMS, TD_A_TOUCH},
    [TD_EV_SMS_DELIVERED] = {TD_CH_SMS, TD_A_DELIVERED},
    [TD_EV_SMS_READ] = {TD_CH_SMS, TD_A_OPEN},
    [TD_EV_SMS_REPLIED] = {TD_CH_SMS, TD_A_REPLY},
    [TD_EV_SMS_FAILED] = {TD_CH_SMS, TD_A_FAILED},
    [TD_EV_SMS_OPTED_IN] = {TD_CH_SMS, TD_A_OPT_IN},
    [TD_EV_SMS_OPTED_OUT] = {TD_CH_SMS, TD_A_OPT_OUT},
    [TD_EV_LINKEDIN_INVITED] = {TD_CH_LINKEDIN, TD_A_TOUCH},
    [TD_EV_LINKEDIN_ACCEPTED] = {TD_CH_LINKEDIN, TD_A_INBOUND},
    [TD_EV_LINKEDIN_MESSAGED] = {TD_CH_LINKEDIN, TD_A_TOUCH},
    [TD_EV_LINKEDIN_REPLIED] = {TD_CH_LINKEDIN, TD_A_REPLY},
    [TD_EV_CALL_ATTEMPTED] = {TD_CH_CALL, TD_A_TOUCH},
    [TD_EV_CALL_CONNECTED] = {TD_CH_CALL, TD_A_TOUCH | TD_A_REPLY},
    [TD_EV_CALL_VOICEMAIL] = {TD_CH_CALL, TD_A_TOUCH},
    [TD_EV_MEETING_BOOKED] = {TD_CH_MEETING, TD_A_MEETING},
    [TD_EV_MEETING_HELD] = {TD_CH_MEETING, TD_A_MEETING},
    [TD_EV_MEETING_CANCELLED] = {TD_CH_MEETING, TD_A_MEETING},
    [TD_EV_MEETING_NO_SHOW] = {TD_CH_MEETING, TD_A_MEETING},
    [TD_EV_GIFT_SENT] = {TD_CH_GIFT, TD_A_TOUCH | TD_A_GIFT},
    [TD_EV_PROSPECT_UPDATED] = {TD_CH_NONE, TD_A_PROSPECT},
    [TD_EV_OWNER_PROSPECT_CONTACTED] = {TD_CH_NONE, TD_A_OWNER},
};

/* Local civil time of t for this prospect: its zone, else the default zone,
 * else UTC. "UTC" (the default) and a NULL tzdb are handled without ICU. */
static void td_state_local(const td_state *st, td_tzdb *tz, const td_settings *set, td_ms t,
                           td_civil *out) {
    const char *zone = st->timezone[0] ? st->timezone : (set ? set->default_timezone : "");
    if (!tz || !zone[0] || strcmp(zone, "UTC") == 0) {
        td_civil_from_ms(t, out);
        return;
    }
    if (td_tz_local(tz, zone, t, out, NULL) == TD_OK) return;
    /* an unknown prospect zone falls back to the default zone */
    if (zone == st->timezone && set && set->default_timezone[0] &&
        strcmp(set->default_timezone, "UTC") != 0 &&
        td_tz_local(tz, set->default_timezone, t, out, NULL) == TD_OK)
        return;
    td_civil_from_ms(t, out);
}

static void td_hist_add(td_state *st, td_tzdb *tz, const td_settings *set, td_ms t) {
    td_civil c;
    td_state_local(st, tz, set, t, &c);
    if (c.hour >= 0 && c.hour < 24 && st->hour_hist[c.hour] < UINT32_MAX) st->hour_hist[c.hour]++;
}

static void td_apply_touch(td_state *st, td_chan_state *c, td_ms t) {
    td_inc(&c->sent);
    td_inc(&c->unanswered);
    td_max_ms(&c->last_sent_at, t);
    td_max_ms(&st->last_touch_at, t);
    td_min_ms(&st->first_touch_at, t);
    td_touch_push(st, t);
}

static void td_apply_reply(td_state *st, td_chan_state *c, const td_event *ev, td_tzdb *tz,
                           const td_settings *set) {
    td_ms t = ev->occurred_at;
    td_inc(&c->replied);
    td_max_ms(&c->last_replied_at, t);
    td_max_ms(&st->last_inbound_at, t);
    /* the prospect answered: silence counters restart on every channel */
    for (int i = 0; i < TD_CH__COUNT; i++) {
        st->ch[i].unanswered = 0;
        st->ch[i].opens_since_reply = 0;
    }
    td_inc(&st->replies);
    st->last_reply_sentiment = (ev->has & TD_HAS_SENTIMENT) ? ev->sentiment : TD_SENT_NONE;
    td_hist_add(st, tz, set, t);
}

static void td_apply_meeting(td_state *st, const td_event *ev) {
    bool has_at = (ev->has & TD_HAS_AT) != 0;
    /* held / cancelled / no_show end the booked meeting they name (or the
     * booked one when they carry no `at`); another booked meeting stays */
    bool ends = !has_at || ev->at == st->next_meeting_at;
    switch (ev->type) {
    case TD_EV_MEETING_BOOKED:
        td_inc(&st->meetings_booked);
        if (has_at) st->next_meeting_at = ev->at;
        break;
    case TD_EV_MEETING_HELD:
        td_inc(&st->meetings_held);
        if (ends) st->next_meeting_at = TD_MS_MISSING;
        break;
    case TD_EV_MEETING_CANCELLED:
        td_inc(&st->meetings_cancelled);
        if (ends) st->next_meeting_at = TD_MS_MISSING;
        break;
    case TD_EV_MEETING_NO_SHOW:
        td_inc(&st->meetings_no_show);
        if (ends) st->next_meeting_at = TD_MS_MISSING;
        break;
    default:
        break;
    }
}

static void td_apply_gift(td_state *st, const td_event *ev, td_tzdb *tz, const td_settings *set) {
    td_ms t = ev->occurred_at;
    td_civil c;
    td_state_local(st, tz, set, t, &c);
    td_dec value = (ev->has & TD_HAS_VALUE) && ev->value_eur != TD_DEC_MISSING ? ev->value_eur : 0;
    if (c.year > st->gift_year) { /* a new local year: the yearly budget restarts */
        st->gift_year = c.year;
        st->gifts_year_count = 0;
        st->gifts_year_spend_eur = 0;
    }
    if (c.year == st->gift_year) {
        td_inc(&st->gifts_year_count);
        st->gifts_year_spend_eur = td_sat_add(st->gifts_year_spend_eur, value);
    } /* else: a late gift of a past year: counted in the total only */
    td_inc(&st->gifts_total);
    if (st->last_gift_at == TD_MS_MISSING || t >= st->last_gift_at) {
        st->last_gift_at = t;
        st->last_gift_kind = (ev->has & TD_HAS_GIFT_KIND) ? ev->gift_kind : TD_GK_NONE;
    }
}

static void td_apply_prospect(td_state *st, const td_event *ev) {
    uint32_t h = ev->has;
    if ((h & TD_HAS_STAGE) && ev->stage != st->stage) {
        st->stage = ev->stage;
        st->stage_changed_at = ev->occurred_at;
    }
    if (h & TD_HAS_TIER) st->tier = ev->tier;
    if (h & TD_HAS_COUNTRY) td_strlcpy(st->country, ev->country, sizeof st->country);
    if (h & TD_HAS_SECTOR) td_strlcpy(st->sector, ev->sector, sizeof st->sector);
    if (h & TD_HAS_TIMEZONE) td_strlcpy(st->timezone, ev->timezone, sizeof st->timezone);
    if (h & TD_HAS_GIFT_POLICY) st->gift_policy = ev->gift_policy;
    if (h & TD_HAS_LTV) st->lifetime_value_eur = ev->lifetime_value_eur;
    if (h & TD_HAS_LANGUAGE) td_strlcpy(st->language, ev->language, sizeof st->language);
    if (h & TD_HAS_CONSENT)
        for (int c = 0; c < TD_CH__COUNT; c++)
            if (ev->consent[c] != TD_TRI_UNSET) st->ch[c].consent = ev->consent[c];
}

int td_state_apply(td_state *st, const td_event *ev, td_tzdb *tz, const td_settings *set) {
    if ((unsigned)ev->type >= TD_EV__COUNT) return TD_ERR;
    const td_reducer r = td_reducers[ev->type];
    td_ms t = ev->occurred_at;

    /* bookkeeping common to every event */
    td_inc(&st->events);
    td_min_ms(&st->first_seen_at, t);
    td_max_ms(&st->last_event_at, t);
    if (ev->has & TD_HAS_OWNER) td_strlcpy(st->owner_id, ev->owner_id, sizeof st->owner_id);
    if (!st->prospect_id[0]) td_strlcpy(st->prospect_id, ev->prospect_id, sizeof st->prospect_id);

    if (r.acts & TD_A_PROSPECT) {
        td_apply_prospect(st, ev);
        return TD_OK;
    }
    if (r.acts & TD_A_OWNER) {
        /* an owner's state counts the prospects it contacted for the first
         * time as its touches: touches.1d is "new prospects in 24 h" */
        td_max_ms(&st->last_touch_at, t);
        td_min_ms(&st->first_touch_at, t);
        td_touch_push(st, t);
        return TD_OK;
    }
    td_chan_state *c = &st->ch[r.channel];

    if (r.acts & TD_A_TOUCH) td_apply_touch(st, c, t);
    if (r.acts & TD_A_DELIVERED) td_inc(&c->delivered);
    if (r.acts & TD_A_OPEN) {
        /* `human` defaults to true (contract); machine opens (privacy
         * proxies prefetching images) are not attention: ignored */
        bool human = !(ev->has & TD_HAS_HUMAN) || ev->human;
        if (human) {
            td_inc(&c->opened);
            td_inc(&c->opens_since_reply);
            td_max_ms(&c->last_opened_at, t);
            td_hist_add(st, tz, set, t);
        }
    }
    if (r.acts & TD_A_CLICK) td_inc(&c->clicked);
    if (r.acts & TD_A_REPLY) {
        /* an auto-reply is not the prospect answering: sequences go on */
        bool ooo = (ev->has & TD_HAS_SENTIMENT) && ev->sentiment == TD_SENT_OUT_OF_OFFICE;
        if (!ooo) td_apply_reply(st, c, ev, tz, set);
    }
    if (r.acts & TD_A_INBOUND) td_max_ms(&st->last_inbound_at, t);
    if (r.acts & TD_A_FAILED) td_inc(&c->failed);
    if (r.acts & TD_A_BOUNCE) {
        if ((ev->has & TD_HAS_HARD) && ev->hard) {
            if (c->blocked == TD_BLOCK_NONE || c->blocked == TD_BLOCK_OPTED_OUT)
                c->blocked = TD_BLOCK_HARD_BOUNCE;
        } else {
            td_inc(&c->failed);
        }
    }
    if (r.acts & TD_A_UNSUB) {
        if (c->blocked == TD_BLOCK_NONE || c->blocked == TD_BLOCK_OPTED_OUT)
            c->blocked = TD_BLOCK_UNSUBSCRIBED;
        c->consent = TD_TRI_NO;
    }
    if (r.acts & TD_A_OPT_OUT) {
        if (c->blocked == TD_BLOCK_NONE) c->blocked = TD_BLOCK_OPTED_OUT;
        c->consent = TD_TRI_NO;
    }
    if (r.acts & TD_A_OPT_IN) {
        c->consent = TD_TRI_YES;
        if (c->blocked == TD_BLOCK_OPTED_OUT) c->blocked = TD_BLOCK_NONE;
    }
    if (r.acts & TD_A_MEETING) td_apply_meeting(st, ev);
    if (r.acts & TD_A_GIFT) td_apply_gift(st, ev, tz, set);
    return TD_OK;
}

/* ======================================================= flat form (Redis) */

enum {
    TD_FK_I64,
    TD_FK_I32,
    TD_FK_TIME,
    TD_FK_DEC,
    TD_FK_STR,
    TD_FK_STAGE,
    TD_FK_GP,
    TD_FK_SENT,
    TD_FK_GK,
    TD_FK_BLOCK,
    TD_FK_TRI
};

/* One scalar field of the flat form: key, kind, where it lives, its default
 * (for I64/I32/DEC; times default to missing, strings to "", enums to 0). */
typedef struct td_flat {
    char key[32]; /* NUL-padded: the writer copies all 32 bytes at once */
    uint8_t klen; /* strlen(key): K_ */
    uint8_t kind;
    size_t off;
    size_t cap; /* strings: array size */
    int64_t def;
} td_flat;

#define S_(f) offsetof(td_state, f)
#define C_(f) offsetof(td_chan_state, f)
#define SZ_(f) sizeof(((td_state *)0)->f)
#define K_(k) k, sizeof(k) - 1

static const td_flat td_flat_top[] = {
    {K_("v"), TD_FK_I64, S_(version), 0, 0},
    {K_("prospect_id"), TD_FK_STR, S_(prospect_id), SZ_(prospect_id), 0},
    {K_("owner_id"), TD_FK_STR, S_(owner_id), SZ_(owner_id), 0},
    {K_("events"), TD_FK_I64, S_(events), 0, 0},
    {K_("stage"), TD_FK_STAGE, S_(stage), 0, 0},
    {K_("stage_changed_at"), TD_FK_TIME, S_(stage_changed_at), 0, 0},
    {K_("tier"), TD_FK_I64, S_(tier), 0, TD_INT_MISSING},
    {K_("country"), TD_FK_STR, S_(country), SZ_(country), 0},
    {K_("sector"), TD_FK_STR, S_(sector), SZ_(sector), 0},
    {K_("timezone"), TD_FK_STR, S_(timezone), SZ_(timezone), 0},
    {K_("gift_policy"), TD_FK_GP, S_(gift_policy), 0, 0},
    {K_("lifetime_value_eur"), TD_FK_DEC, S_(lifetime_value_eur), 0, TD_DEC_MISSING},
    {K_("language"), TD_FK_STR, S_(language), SZ_(language), 0},
    {K_("first_seen_at"), TD_FK_TIME, S_(first_seen_at), 0, 0},
    {K_("last_event_at"), TD_FK_TIME, S_(last_event_at), 0, 0},
    {K_("first_touch_at"), TD_FK_TIME, S_(first_touch_at), 0, 0},
    {K_("last_touch_at"), TD_FK_TIME, S_(last_touch_at), 0, 0},
    {K_("last_inbound_at"), TD_FK_TIME, S_(last_inbound_at), 0, 0},
    {K_("replies"), TD_FK_I64, S_(replies), 0, 0},
    {K_("last_reply_sentiment"), TD_FK_SENT, S_(last_reply_sentiment), 0, 0},
    {K_("meetings.booked"), TD_FK_I64, S_(meetings_booked), 0, 0},
    {K_("meetings.held"), TD_FK_I64, S_(meetings_held), 0, 0},
    {K_("meetings.cancelled"), TD_FK_I64, S_(meetings_cancelled), 0, 0},
    {K_("meetings.no_show"), TD_FK_I64, S_(meetings_no_show), 0, 0},
    {K_("next_meeting_at"), TD_FK_TIME, S_(next_meeting_at), 0, 0},
    {K_("gifts.year"), TD_FK_I32, S_(gift_year), 0, 0},
    {K_("gifts.year_count"), TD_FK_I64, S_(gifts_year_count), 0, 0},
    {K_("gifts.year_spend_eur"), TD_FK_DEC, S_(gifts_year_spend_eur), 0, 0},
    {K_("gifts.total"), TD_FK_I64, S_(gifts_total), 0, 0},
    {K_("last_gift_at"), TD_FK_TIME, S_(last_gift_at), 0, 0},
    {K_("gifts.last_kind"), TD_FK_GK, S_(last_gift_kind), 0, 0},
};

/* Per channel, as "<channel>.<key>". */
static const td_flat td_flat_chan[] = {
    {K_("sent"), TD_FK_I64, C_(sent), 0, 0},
    {K_("delivered"), TD_FK_I64, C_(delivered), 0, 0},
    {K_("opened"), TD_FK_I64, C_(opened), 0, 0},
    {K_("clicked"), TD_FK_I64, C_(clicked), 0, 0},
    {K_("replied"), TD_FK_I64, C_(replied), 0, 0},
    {K_("failed"), TD_FK_I64, C_(failed), 0, 0},
    {K_("unanswered"), TD_FK_I64, C_(unanswered), 0, 0},
    {K_("opens_since_reply"), TD_FK_I64, C_(opens_since_reply), 0, 0},
    {K_("last_sent_at"), TD_FK_TIME, C_(last_sent_at), 0, 0},
    {K_("last_opened_at"), TD_FK_TIME, C_(last_opened_at), 0, 0},
    {K_("last_replied_at"), TD_FK_TIME, C_(last_replied_at), 0, 0},
    {K_("blocked"), TD_FK_BLOCK, C_(blocked), 0, 0},
    {K_("consent"), TD_FK_TRI, C_(consent), 0, 0},
};

/*
 * The writers of the flat form. It is written for every prospect of every
 * batch, so each field is formatted in place, straight into the td_kvs of
 * td_kvs_capture when it has room (td_fw_begin), without snprintf or an
 * intermediate copy; the writers below may store a few bytes past what
 * they return (the room asked for covers it).
 */

#define TD_FW_INLINE static inline __attribute__((always_inline))

/* "00".."99": two digits per table read. */
static const char td_dig2[200] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

static const uint64_t td_pow10[20] = {1ULL,
                                      10ULL,
                                      100ULL,
                                      1000ULL,
                                      10000ULL,
                                      100000ULL,
                                      1000000ULL,
                                      10000000ULL,
                                      100000000ULL,
                                      1000000000ULL,
                                      10000000000ULL,
                                      100000000000ULL,
                                      1000000000000ULL,
                                      10000000000000ULL,
                                      100000000000000ULL,
                                      1000000000000000ULL,
                                      10000000000000000ULL,
                                      100000000000000000ULL,
                                      1000000000000000000ULL,
                                      10000000000000000000ULL};

/* td_w_u64 for v >= 100. */
static __attribute__((noinline)) size_t td_w_u64_long(char *p, uint64_t v) {
    size_t n = 3;
    while (n < 20 && v >= td_pow10[n])
        n++;
    char *e = p + n;
    while (v >= 100) {
        uint64_t q = v / 100;
        e -= 2;
        memcpy(e, td_dig2 + 2 * (v - q * 100), 2);
        v = q;
    }
    if (v >= 10)
        memcpy(e - 2, td_dig2 + 2 * v, 2);
    else
        e[-1] = (char)('0' + v);
    return n;
}

/* v in decimal (td_fmt_u64's digits, no NUL): up to 20 bytes. Counters are
 * small: one or two digits inline. */
static inline size_t td_w_u64(char *p, uint64_t v) {
    if (v < 10) {
        p[0] = (char)('0' + v);
        return 1;
    }
    if (v < 100) {
        memcpy(p, td_dig2 + 2 * v, 2);
        return 2;
    }
    return td_w_u64_long(p, v);
}

/* td_fmt_i64's digits (no NUL): up to 20 bytes. */
static inline size_t td_w_i64(char *p, int64_t v) {
    if (v >= 0) return td_w_u64(p, (uint64_t)v);
    p[0] = '-';
    return 1 + td_w_u64(p + 1, (uint64_t)0 - (uint64_t)v);
}

/* The 8 lower-case hex digits of x, first digit in the lowest byte: each
 * nibble spread to a byte, then '0' + d or 'a' + d - 10 for all at once. */
static inline uint64_t td_hex8(uint32_t x) {
    uint64_t v = x;
    v = (v | v << 16) & 0x0000FFFF0000FFFFULL;
    v = (v | v << 8) & 0x00FF00FF00FF00FFULL;
    v = (v | v << 4) & 0x0F0F0F0F0F0F0F0FULL; /* byte j = nibble j (j = 0: lowest) */
    uint64_t letter = (v + 0x0606060606060606ULL) >> 4 & 0x0101010101010101ULL; /* d >= 10 */
    v += 0x3030303030303030ULL + letter * ('a' - '0' - 10);
    return __builtin_bswap64(v); /* nibble 7 first */
}

/* v as 16 hex digits, zero-padded (no NUL). */
static inline void td_w_hex16(char *p, uint64_t v) {
    uint64_t hi = td_hex8((uint32_t)(v >> 32)), lo = td_hex8((uint32_t)v);
    memcpy(p, &hi, 8);
    memcpy(p + 8, &lo, 8);
}

/* Instants RFC 3339 can write (years 0001..9999); others are "@<ms>". */
#define TD_RFC_MIN ((td_ms)-62135596800000LL)
#define TD_RFC_MAX ((td_ms)253402300799999LL)

/* An instant outside years 1..9999: "@<ms>" (rare: out of line). */
static __attribute__((noinline)) size_t td_w_at(char *p, td_ms t) {
    p[0] = '@';
    return 1 + td_w_i64(p + 1, t);
}

/* A time: RFC 3339 through the date memo, or "@<ms>". Stores up to
 * TD_TIME_BUF bytes; @returns its length (up to 24). */
static inline size_t td_w_time(char *p, td_ms t, td_time_memo *m) {
    if (t >= TD_RFC_MIN && t <= TD_RFC_MAX) return td_time_format_memo(t, p, m);
    return td_w_at(p, t);
}

/* An instant often repeated (rules fired by one step, timers armed by one
 * event): the last one written is kept whole in memo[TD_TIME_BUF] (*mt; its
 * length *mn). Stores TD_TIME_BUF bytes. */
static inline size_t td_w_time_rep(char *p, td_ms t, td_ms *mt, char *memo, size_t *mn,
                                   td_time_memo *m) {
    if (t != *mt || t == TD_MS_MISSING) {
        *mn = td_w_time(memo, t, m);
        *mt = t;
    }
    memcpy(p, memo, TD_TIME_BUF);
    return *mn;
}

/* "12.5", "-0.0001", "7": the integer part, then up to four fractional
 * digits without trailing zeros; up to 26 bytes. */
static __attribute__((noinline)) size_t td_w_dec(char *p, td_dec d) {
    uint64_t m = d < 0 ? (uint64_t)0 - (uint64_t)d : (uint64_t)d;
    uint64_t ip = m / TD_DEC_SCALE;
    unsigned fp = (unsigned)(m % TD_DEC_SCALE);
    size_t n = 0;
    if (d < 0) p[n++] = '-';
    n += td_w_u64(p + n, ip);
    if (fp) {
        p[n++] = '.';
        for (unsigned div = TD_DEC_SCALE / 10; fp; div /= 10) {
            p[n++] = (char)('0' + fp / div);
            fp %= div;
        }
    }
    return n;
}

/* Bytes that stay as they are in the flat form: 0x20..0x7e but '%'. */
#define TD_PCT_PLAIN(c) ((c) >= 0x20 && (c) < 0x7f && (c) != '%')

/* Non-zero when one of the 8 bytes of x is not TD_PCT_PLAIN: per byte b
 * (x7 = b & 0x7f, so no sum carries into the next byte), b >= 0x80 is its
 * top bit, b < 0x20 is x7 + 0x60 < 0x80, b == 0x7f is x7 + 0x01 >= 0x80 and
 * b == '%' is (x7 ^ 0x25) + 0x7f < 0x80. */
static inline uint64_t td_pct_special8(uint64_t x) {
    const uint64_t k01 = 0x0101010101010101ULL, k80 = 0x8080808080808080ULL;
    uint64_t x7 = x & ~k80;
    return (x | ~(x7 + 0x60 * k01) | (x7 + k01) | ~((x7 ^ 0x25 * k01) + 0x7f * k01)) & k80;
}

#ifdef __SSE2__
/* Non-zero when one of the 16 bytes at s is not TD_PCT_PLAIN: below 0x20 or
 * from 0x80 (a signed compare catches both), 0x7f, or '%'. */
static inline int td_pct_special16(const char *s) {
    __m128i x = _mm_loadu_si128((const __m128i *)(const void *)s);
    __m128i bad = _mm_or_si128(_mm_cmplt_epi8(x, _mm_set1_epi8(0x20)),
                               _mm_or_si128(_mm_cmpeq_epi8(x, _mm_set1_epi8(0x7f)),
                                            _mm_cmpeq_epi8(x, _mm_set1_epi8('%'))));
    return _mm_movemask_epi8(bad);
}
#endif

/* Percent-encodes s[0..len) byte by byte from i on (out holds s[0..i) as is). */
static size_t td_w_pct_from(char *out, const char *s, size_t len, size_t i) {
    static const char hex[] = "0123456789ABCDEF";
    size_t n = i;
    for (; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (TD_PCT_PLAIN(c)) {
            out[n++] = (char)c;
        } else {
            out[n++] = '%';
            out[n++] = hex[c >> 4];
            out[n++] = hex[c & 15];
        }
    }
    return n;
}

/* Percent-encodes s[0..len) into out (3 * len bytes; no NUL). Ids, zones
 * and rule ids are plain ASCII almost always: whole blocks of 16 (or 8)
 * plain bytes are copied as they are, the last one overlapping, and only
 * from a block with another byte on is the rest encoded byte by byte.
 * @returns the length written. */
TD_FW_INLINE size_t td_w_pct_inl(char *out, const char *s, size_t len) {
    size_t i = 0;
#ifdef __SSE2__
    if (len >= 16) {
        for (; i + 16 <= len; i += 16) {
            if (td_pct_special16(s + i)) return td_w_pct_from(out, s, len, i);
            memcpy(out + i, s + i, 16);
        }
        if (i < len) {
            if (td_pct_special16(s + len - 16)) return td_w_pct_from(out, s, len, i);
            memcpy(out + len - 16, s + len - 16, 16);
        }
        return len;
    }
#endif
    if (len >= 8) {
        uint64_t x, y;
        memcpy(&y, s + len - 8, 8);
        for (; i + 8 <= len; i += 8) {
            memcpy(&x, s + i, 8);
            if (td_pct_special8(x)) return td_w_pct_from(out, s, len, i);
            memcpy(out + i, &x, 8);
        }
        if (i < len) {
            /* every word so far plain (out == s up to i): the last 8 bytes, overlapping */
            if (td_pct_special8(y)) return td_w_pct_from(out, s, len, i);
            memcpy(out + len - 8, &y, 8);
        }
        return len;
    }
    if (len >= 2) {
        /* two overlapping halves, the rest of the word plain ('a') */
        uint64_t x = 0x6161616161616161ULL;
        if (len >= 4) {
            uint32_t a, b;
            memcpy(&a, s, 4);
            memcpy(&b, s + len - 4, 4);
            x = (uint64_t)a | (uint64_t)b << 32;
            if (td_pct_special8(x)) return td_w_pct_from(out, s, len, 0);
            memcpy(out, &a, 4);
            memcpy(out + len - 4, &b, 4);
        } else {
            uint16_t a, b;
            memcpy(&a, s, 2);
            memcpy(&b, s + len - 2, 2);
            x = (x & ~0xFFFFFFFFULL) | a | (uint32_t)b << 16;
            if (td_pct_special8(x)) return td_w_pct_from(out, s, len, 0);
            memcpy(out, &a, 2);
            memcpy(out + len - 2, &b, 2);
        }
        return len;
    }
    return td_w_pct_from(out, s, len, 0);
}

/* The same, out of line (the unrolled scalar fields: less code). */
static __attribute__((noinline)) size_t td_w_pct(char *out, const char *s, size_t len) {
    return td_w_pct_inl(out, s, len);
}

static int td_hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decodes into dst (cap bytes incl. NUL). @returns TD_OK or TD_ERR (bad
 * escape, a NUL byte, or too long). */
static int td_pct_dec(const char *v, size_t n, char *dst, size_t cap) {
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c == '%') {
            if (i + 2 >= n) return TD_ERR;
            int h = td_hexval(v[i + 1]), l = td_hexval(v[i + 2]);
            if (h < 0 || l < 0) return TD_ERR;
            c = (unsigned char)(h << 4 | l);
            i += 2;
        }
        if (c == 0 || o + 1 >= cap) return TD_ERR;
        dst[o++] = (char)c;
    }
    dst[o] = 0;
    return TD_OK;
}

/* Decimal: -?[0-9]+(\.[0-9]{1,4})? within the td_dec range. */
static int td_parse_dec(const char *v, size_t n, td_dec *out) {
    size_t i = 0;
    bool neg = false;
    if (n && v[0] == '-') {
        neg = true;
        i = 1;
    }
    uint64_t ip = 0, fp = 0, lim = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    size_t start = i;
    for (; i < n && v[i] >= '0' && v[i] <= '9'; i++) {
        unsigned d = (unsigned)(v[i] - '0');
        if (ip > (UINT64_MAX - d) / 10) return TD_ERR;
        ip = ip * 10 + d;
    }
    if (i == start) return TD_ERR;
    if (i < n) {
        if (v[i] != '.') return TD_ERR;
        i++;
        size_t fs = i;
        for (; i < n && v[i] >= '0' && v[i] <= '9'; i++)
            fp = fp * 10 + (unsigned)(v[i] - '0');
        size_t fl = i - fs;
        if (i != n || fl == 0 || fl > 4) return TD_ERR;
        for (; fl < 4; fl++)
            fp *= 10;
    }
    if (ip > lim / TD_DEC_SCALE) return TD_ERR;
    uint64_t m = ip * TD_DEC_SCALE;
    if (fp > lim - m) return TD_ERR;
    m += fp;
    *out = neg ? (m == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)m) : (int64_t)m;
    return TD_OK;
}

static int td_parse_time(const char *v, size_t n, td_ms *out) {
    if (n && v[0] == '@') return td_parse_i64(v + 1, n - 1, out);
    if (n == 0 || n > 64) return TD_ERR;
    return td_time_parse(v, n, out);
}

/*
 * Where the pairs go: into a td_kvs (capture), formatted in place when it
 * has room; otherwise (a full buffer, or td_state_serialize's callback) in
 * `scratch`, then td_kvs_add or the callback. One field never needs more
 * than TD_FW_SCRATCH bytes (the touch list: 64 times of up to 25 bytes).
 * While writing, the td_kvs's fields live here, in registers: the writer
 * is always inlined and its address never escapes.
 */
#define TD_FW_SCRATCH 2048
typedef struct td_fw {
    char *buf;       /* kv->buf */
    size_t len;      /* kv->len */
    size_t lim;      /* kv->cap, or 0 when in-place writing is off (oom, 32-bit) */
    td_kvs_entry *e; /* kv->e */
    size_t n, ecap;  /* kv->n, kv->ecap */
    td_kvs *kv;      /* capture: the flat form goes there */
    td_kv_fn fn;     /* otherwise */
    void *ud;
    char *scratch; /* TD_FW_SCRATCH + 2 bytes */
} td_fw;

TD_FW_INLINE void td_fw_load(td_fw *w) {
    td_kvs *kv = w->kv;
    w->buf = kv->buf;
    w->len = kv->len;
    w->lim = kv->oom || kv->cap > UINT32_MAX ? 0 : kv->cap;
    w->e = kv->e;
    w->n = kv->n;
    w->ecap = kv->ecap;
}

/* Where the next pair (key then value, up to `need` bytes stored) is
 * written. `kvmode` is a constant: each mode has its own copy. */
TD_FW_INLINE char *td_fw_begin(td_fw *w, size_t need, bool kvmode) {
    if (kvmode && w->len + need <= w->lim) return w->buf + w->len;
    return w->scratch;
}

/* The slow ends of a pair in a td_kvs: formatted in scratch (td_kvs_add
 * grows the buffer), or in place when the entries are full. */
static __attribute__((noinline)) void td_fw_kv_slow(td_kvs *kv, size_t len, size_t n,
                                                    const char *scratch, bool in_place, size_t kl,
                                                    size_t vl) {
    kv->len = len;
    kv->n = n;
    if (in_place)
        td_kvs_commit(kv, kl, vl);
    else
        td_kvs_add(kv, scratch, kl, scratch + kl, vl);
}

/* The callback's pair, formatted in scratch: key and value NUL-terminated. */
static void td_fw_call(td_kv_fn fn, void *ud, char *p, size_t kl, size_t vl) {
    memmove(p + kl + 1, p + kl, vl);
    p[kl] = '\0';
    p[kl + 1 + vl] = '\0';
    fn(ud, p, kl, p + kl + 1, vl);
}

/* The pair at p (from td_fw_begin) is complete: kl key bytes, vl value bytes. */
TD_FW_INLINE void td_fw_end(td_fw *w, char *p, size_t kl, size_t vl, bool kvmode) {
    if (!kvmode) {
        td_fw_call(w->fn, w->ud, p, kl, vl);
        return;
    }
    if (p != w->scratch && w->n < w->ecap) {
        w->len = td_kvs_entry_set(&w->e[w->n++], w->len, kl, vl);
        return;
    }
    td_fw_kv_slow(w->kv, w->len, w->n, w->scratch, p != w->scratch, kl, vl);
    td_fw_load(w);
}

/* The end of the writing: the td_kvs takes its fields back. */
TD_FW_INLINE void td_fw_done(td_fw *w, bool kvmode) {
    if (!kvmode) return;
    w->kv->len = w->len;
    w->kv->n = w->n;
}

/* A scalar field at p: the key, prefix[0..pl) (a channel's "<channel>.",
 * or empty) then f->key, 16 and 32 bytes at once; then the value: x, or
 * the string s (sl bytes: percent-encoded, or an enum's name as is).
 * Stores up to pl + 32 + TD_FW_VMAX(sl) bytes. @returns the value's length
 * (*kl the key's). */
#define TD_FW_VMAX(sl) (3 * (sl) > 32 ? 3 * (sl) : 32)
TD_FW_INLINE size_t td_fw_scalar_at(char *p, const td_flat *f, const char *prefix, size_t pl,
                                    int64_t x, const char *s, size_t sl, td_time_memo *tm,
                                    size_t *kl) {
    if (pl) {
        if (pl <= 16)
            memcpy(p, prefix, 16);
        else
            memcpy(p, prefix, pl);
    }
    memcpy(p + pl, f->key, 32);
    *kl = pl + f->klen;
    char *v = p + *kl;
    switch (f->kind) {
    case TD_FK_I64:
    case TD_FK_I32:
        return td_w_i64(v, x);
    case TD_FK_DEC:
        return td_w_dec(v, x);
    case TD_FK_TIME:
        return td_w_time(v, x, tm);
    case TD_FK_STR:
        return td_w_pct(v, s, sl);
    default:
        memcpy(v, s, sl);
        return sl;
    }
}

/* A scalar field without room in the td_kvs (kv), or for the callback
 * (fn, ud): formatted in scratch, then td_kvs_add or the callback. */
static __attribute__((noinline)) void td_fw_scalar_slow(td_kvs *kv, td_kv_fn fn, void *ud,
                                                        const td_flat *f, const char *prefix,
                                                        size_t pl, int64_t x, const char *s,
                                                        size_t sl, td_time_memo *tm) {
    char scratch[64 + 32 + 3 * (TD_ID_MAX + 1) + 2];
    if (pl > 64 || sl > TD_ID_MAX + 1) return; /* not reached: short names, bounded strings */
    size_t kl, vl = td_fw_scalar_at(scratch, f, prefix, pl, x, s, sl, tm, &kl);
    if (kv)
        td_kvs_add(kv, scratch, kl, scratch + kl, vl);
    else
        td_fw_call(fn, ud, scratch, kl, vl);
}

/* One scalar descriptor at base, if it differs from its default. Unrolled
 * (kvmode), f is a constant: only the fast path is inline, formatting in
 * place when the td_kvs has room for the widest value and an entry. */
TD_FW_INLINE void td_fw_scalar(td_fw *w, const td_flat *f, const char *prefix, size_t pl,
                               const void *base, td_time_memo *tm, bool kvmode) {
    const char *src = (const char *)base + f->off;
    int64_t x = 0;
    const char *s = src;
    size_t sl = 0;
    switch (f->kind) {
    case TD_FK_I64:
    case TD_FK_DEC:
        memcpy(&x, src, sizeof x);
        if (x == f->def) return;
        break;
    case TD_FK_I32: {
        int32_t y;
        memcpy(&y, src, sizeof y);
        if (y == f->def) return;
        x = y;
        break;
    }
    case TD_FK_TIME:
        memcpy(&x, src, sizeof x);
        if (x == TD_MS_MISSING) return;
        break;
    case TD_FK_STR:
        if (!src[0]) return;
        sl = strlen(src);
        break;
    default: { /* enums: stored as an enum (int-sized) */
        int e;
        memcpy(&e, src, sizeof e);
        if (e == 0) return;
        switch (f->kind) {
        case TD_FK_STAGE:
            s = td_stage_name((td_stage)e);
            break;
        case TD_FK_GP:
            s = td_gift_policy_name((td_gift_policy)e);
            break;
        case TD_FK_SENT:
            s = td_sentiment_name((td_sentiment)e);
            break;
        case TD_FK_GK:
            s = td_gift_kind_name((td_gift_kind)e);
            break;
        case TD_FK_BLOCK:
            s = td_block_reason_name((td_block_reason)e);
            break;
        case TD_FK_TRI:
            s = e == TD_TRI_YES ? "true" : e == TD_TRI_NO ? "false" : NULL;
            break;
        default:
            s = NULL;
            break;
        }
        if (!s || !s[0]) return; /* out-of-range enum: not a valid state */
        sl = strlen(s);
        break;
    }
    }
    if (!kvmode || w->len + pl + 32 + TD_FW_VMAX(sl) > w->lim || w->n == w->ecap) {
        if (kvmode) {
            w->kv->len = w->len;
            w->kv->n = w->n;
        }
        td_fw_scalar_slow(w->kv, w->fn, w->ud, f, prefix, pl, x, s, sl, tm);
        if (kvmode) td_fw_load(w);
        return;
    }
    size_t kl, vl = td_fw_scalar_at(w->buf + w->len, f, prefix, pl, x, s, sl, tm, &kl);
    w->len = td_kvs_entry_set(&w->e[w->n++], w->len, kl, vl);
}

/* A channel every field of which is at its default (td_chan_init): such a
 * channel has no key in the flat form, and most channels of most states are
 * like this. Fields absent from td_flat_chan only make the memcmp fail, which
 * costs the field-by-field path, never a wrong form. */
static const td_chan_state td_chan_default = {
    .last_sent_at = TD_MS_MISSING,
    .last_opened_at = TD_MS_MISSING,
    .last_replied_at = TD_MS_MISSING,
    .blocked = TD_BLOCK_NONE,
    .consent = TD_TRI_UNSET,
};

/* The longest field through scratch: the touch list (key, 64 times and
 * commas, and the last time's TD_TIME_BUF stored bytes); the others are
 * shorter (a timer: 6 + 3 * 64 key bytes, a time, a space and 3 * 128 id
 * bytes). Scalars have their own (td_fw_scalar_slow). */
_Static_assert(7 + TD_TOUCH_RING * 25 + TD_TIME_BUF <= TD_FW_SCRATCH, "scratch holds the touches");
_Static_assert(6 + 3 * TD_RULE_ID_MAX + TD_TIME_BUF + 1 + 3 * TD_ID_MAX + 16 <= TD_FW_SCRATCH,
               "scratch holds a timer");

/* Serialises the state: one pair per non-default field, in the order of
 * td_flat_top, the channels, hour_hist, touches, dedup, pos.*, fired.*,
 * timer.*. */
TD_FW_INLINE void td_fw_state(const td_state *st, td_fw *w, bool kvmode) {
    td_time_memo tm = TD_TIME_MEMO_INIT; /* dates repeat: a state's times are close */
    /* Unrolled for capture: each descriptor's kind, offset and default
     * become constants (the callback form keeps the loop: less code). */
    if (kvmode) {
#pragma GCC unroll 64
        for (size_t i = 0; i < TD_NELEM(td_flat_top); i++)
            td_fw_scalar(w, &td_flat_top[i], NULL, 0, st, &tm, kvmode);
    } else {
        for (size_t i = 0; i < TD_NELEM(td_flat_top); i++)
            td_fw_scalar(w, &td_flat_top[i], NULL, 0, st, &tm, kvmode);
    }
    for (int c = 0; c < TD_CH__COUNT; c++) {
        if (memcmp(&st->ch[c], &td_chan_default, sizeof td_chan_default) == 0) continue;
        char prefix[64] = {0};
        const char *name = td_channel_name((td_channel)c);
        size_t pl = strlen(name);
        if (pl > sizeof prefix - 2) continue; /* not reached: names are short */
        memcpy(prefix, name, pl);
        prefix[pl++] = '.';
        if (kvmode) {
#pragma GCC unroll 64
            for (size_t i = 0; i < TD_NELEM(td_flat_chan); i++)
                td_fw_scalar(w, &td_flat_chan[i], prefix, pl, &st->ch[c], &tm, kvmode);
        } else {
            for (size_t i = 0; i < TD_NELEM(td_flat_chan); i++)
                td_fw_scalar(w, &td_flat_chan[i], prefix, pl, &st->ch[c], &tm, kvmode);
        }
    }

    uint32_t any = 0;
    for (int h = 0; h < 24; h++)
        any |= st->hour_hist[h];
    if (any) {
        char *p = td_fw_begin(w, 9 + 24 * (2 + 1 + 10 + 1), kvmode);
        memcpy(p, "hour_hist", 9);
        char *v = p + 9;
        size_t n = 0;
        for (int h = 0; h < 24; h++)
            if (st->hour_hist[h]) {
                if (n) v[n++] = ',';
                n += td_w_u64(v + n, (uint64_t)h);
                v[n++] = ':';
                n += td_w_u64(v + n, st->hour_hist[h]);
            }
        td_fw_end(w, p, 9, n, kvmode);
    }

    uint32_t cnt = st->touch_count < TD_TOUCH_RING ? st->touch_count : TD_TOUCH_RING;
    if (cnt) {
        char *p = td_fw_begin(w, 7 + cnt * 25 + TD_TIME_BUF, kvmode);
        memcpy(p, "touches", 7);
        char *v = p + 7;
        size_t n = 0;
        uint32_t at =
            (st->touch_head % TD_TOUCH_RING + TD_TOUCH_RING - st->touch_count) % TD_TOUCH_RING;
        for (uint32_t i = 0; i < cnt; i++) {
            if (i) v[n++] = ',';
            n += td_w_time(v + n, st->touch_ring[at], &tm);
            if (++at == TD_TOUCH_RING) at = 0;
        }
        td_fw_end(w, p, 7, n, kvmode);
    }

    cnt = st->dedup_count < TD_DEDUP_RING ? st->dedup_count : TD_DEDUP_RING;
    if (cnt) {
        char *p = td_fw_begin(w, 5 + cnt * 17, kvmode);
        memcpy(p, "dedup", 5);
        char *v = p + 5;
        uint32_t at =
            (st->dedup_head % TD_DEDUP_RING + TD_DEDUP_RING - st->dedup_count) % TD_DEDUP_RING;
        for (uint32_t i = 0; i < cnt; i++) {
            td_w_hex16(v + 17 * i, st->dedup[at]);
            v[17 * i + 16] = ','; /* the last one is past the value */
            if (++at == TD_DEDUP_RING) at = 0;
        }
        td_fw_end(w, p, 5, 17 * cnt - 1, kvmode);
    }

    for (uint32_t i = 0; i < st->npos && i < TD_POS_MAX; i++) {
        char *p = td_fw_begin(w, 4 + 16 + 20, kvmode);
        memcpy(p, "pos.", 4);
        td_w_hex16(p + 4, st->pos[i].key);
        td_fw_end(w, p, 20, td_w_i64(p + 20, st->pos[i].offset), kvmode);
    }

    /* Rules fired by one step, and timers armed by one event, share their
     * instant: the last one written is kept whole. */
    td_ms memo_t = TD_MS_MISSING;
    char memo[TD_TIME_BUF] = {0};
    size_t memo_n = 0;
    for (uint32_t i = 0; i < st->nfired; i++) {
        const char *rule = st->fired[i].rule;
        size_t rl = strlen(rule);
        char *p = td_fw_begin(w, 6 + 3 * rl + TD_TIME_BUF, kvmode);
        memcpy(p, "fired.", 6);
        size_t kl = 6 + td_w_pct_inl(p + 6, rule, rl);
        size_t vl = td_w_time_rep(p + kl, st->fired[i].at, &memo_t, memo, &memo_n, &tm);
        td_fw_end(w, p, kl, vl, kvmode);
    }
    /* A timer's value, "<due> <armed_by>", is most often the previous
     * timer's (one event arms many): the last one is kept (tv, tvl). */
    const char *prev_by = NULL;
    td_ms prev_due = TD_MS_MISSING;
    char tv[TD_TIME_BUF + 1 + 3 * TD_ID_MAX + 16]; /* bytes past tvl are copied, never read */
    size_t tvl = 0;
    for (uint32_t i = 0; i < st->ntimers; i++) {
        const td_timer *t = &st->timers[i];
        size_t rl = strlen(t->rule);
        bool same = prev_by && t->armed_by == prev_by && t->due_at == prev_due;
        size_t al = same ? 0 : strlen(t->armed_by);
        if (!same && al > TD_ID_MAX) al = TD_ID_MAX; /* not reached: ids are bounded */
        size_t vneed = same ? tvl + 16 : TD_TIME_BUF + 1 + 3 * al;
        char *p = td_fw_begin(w, 6 + 3 * rl + vneed, kvmode);
        memcpy(p, "timer.", 6);
        size_t kl = 6 + td_w_pct_inl(p + 6, t->rule, rl);
        char *v = p + kl;
        size_t vl;
        if (same) {
            for (size_t o = 0; o < tvl; o += 16)
                memcpy(v + o, tv + o, 16);
            vl = tvl;
        } else {
            vl = td_w_time_rep(v, t->due_at, &memo_t, memo, &memo_n, &tm);
            v[vl++] = ' ';
            vl += td_w_pct_inl(v + vl, t->armed_by, al);
            memcpy(tv, v, vl);
            tvl = vl;
            prev_by = t->armed_by;
            prev_due = t->due_at;
        }
        td_fw_end(w, p, kl, vl, kvmode);
    }
}

/* The callback form: each pair formatted in a scratch buffer. Key and value
 * are NUL-terminated, valid during the call only. */
void td_state_serialize(const td_state *st, td_kv_fn fn, void *ud) {
    char scratch[TD_FW_SCRATCH + 2];
    td_fw w = {.fn = fn, .ud = ud, .scratch = scratch};
    td_fw_state(st, &w, false);
}

/* td_kvs_capture's: the pairs formatted in kv's buffer. */
void td_state_serialize_kvs(const td_state *st, td_kvs *kv) {
    char scratch[TD_FW_SCRATCH + 2];
    td_fw w = {.kv = kv, .scratch = scratch};
    td_fw_load(&w);
    td_fw_state(st, &w, true);
    td_fw_done(&w, true);
}

static int td_set_err(char *err, size_t errcap, const char *key, size_t klen, const char *what) {
    if (err && errcap)
        snprintf(err, errcap, "state field '%.*s': %s", (int)(klen > 64 ? 64 : klen), key, what);
    return TD_ERR;
}

static int td_set_flat(const td_flat *f, void *base, const char *key, size_t klen, const char *v,
                       size_t n, char *err, size_t errcap) {
    char *p = (char *)base + f->off;
    switch (f->kind) {
    case TD_FK_I64: {
        int64_t x;
        if (td_parse_i64(v, n, &x)) return td_set_err(err, errcap, key, klen, "not an integer");
        memcpy(p, &x, sizeof x);
        return TD_OK;
    }
    case TD_FK_I32: {
        int64_t x;
        if (td_parse_i64(v, n, &x) || x < INT32_MIN || x > INT32_MAX)
            return td_set_err(err, errcap, key, klen, "not a 32-bit integer");
        int32_t y = (int32_t)x;
        memcpy(p, &y, sizeof y);
        return TD_OK;
    }
    case TD_FK_TIME: {
        td_ms x;
        if (td_parse_time(v, n, &x)) return td_set_err(err, errcap, key, klen, "not a time");
        memcpy(p, &x, sizeof x);
        return TD_OK;
    }
    case TD_FK_DEC: {
        td_dec x;
        if (td_parse_dec(v, n, &x)) return td_set_err(err, errcap, key, klen, "not a decimal");
        memcpy(p, &x, sizeof x);
        return TD_OK;
    }
    case TD_FK_STR: {
        char tmp[TD_ID_MAX + 1];
        if (f->cap > sizeof tmp || td_pct_dec(v, n, tmp, f->cap))
            return td_set_err(err, errcap, key, klen, "bad escape, NUL byte or too long");
        memcpy(p, tmp, strlen(tmp) + 1);
        return TD_OK;
    }
    default: {
        int x = -1;
        switch (f->kind) {
        case TD_FK_STAGE:
            x = td_stage_parse(v, n);
            break;
        case TD_FK_GP:
            x = td_gift_policy_parse(v, n);
            break;
        case TD_FK_SENT:
            x = td_sentiment_parse_(v, n);
            break;
        case TD_FK_GK:
            x = td_gift_kind_parse(v, n);
            break;
        case TD_FK_BLOCK:
            x = td_block_reason_parse(v, n);
            break;
        case TD_FK_TRI:
            x = (n == 4 && !memcmp(v, "true", 4))    ? TD_TRI_YES
                : (n == 5 && !memcmp(v, "false", 5)) ? TD_TRI_NO
                                                     : -1;
            break;
        default:
            break;
        }
        if (x <= 0) return td_set_err(err, errcap, key, klen, "unknown name");
        memcpy(p, &x, sizeof x);
        return TD_OK;
    }
    }
}

static bool td_key_is(const char *k, size_t kn, const char *lit) {
    size_t n = strlen(lit);
    return kn == n && memcmp(k, lit, n) == 0;
}
static bool td_key_prefix(const char *k, size_t kn, const char *lit) {
    size_t n = strlen(lit);
    return kn > n && memcmp(k, lit, n) == 0;
}

/* Splits a comma list: calls back per item. @returns TD_ERR on the first bad item. */
typedef int (*td_item_fn)(void *ctx, const char *s, size_t n);
static int td_each_item(const char *v, size_t n, td_item_fn fn, void *ctx) {
    if (n == 0) return TD_OK;
    size_t i = 0;
    for (;;) {
        size_t j = i;
        while (j < n && v[j] != ',')
            j++;
        if (fn(ctx, v + i, j - i)) return TD_ERR;
        if (j == n) return TD_OK;
        i = j + 1;
    }
}

typedef struct td_list_ctx {
    td_state *st;
    uint32_t n;
} td_list_ctx;

static int td_item_hist(void *vctx, const char *s, size_t n) {
    td_list_ctx *c = vctx;
    const char *colon = memchr(s, ':', n);
    int64_t h, cnt;
    if (!colon || td_parse_i64(s, (size_t)(colon - s), &h) || h < 0 || h > 23 ||
        td_parse_i64(colon + 1, n - (size_t)(colon - s) - 1, &cnt) || cnt < 0 || cnt > UINT32_MAX)
        return TD_ERR;
    c->st->hour_hist[h] = (uint32_t)cnt;
    return TD_OK;
}

static int td_item_touch(void *vctx, const char *s, size_t n) {
    td_list_ctx *c = vctx;
    td_ms t;
    if (c->n >= TD_TOUCH_RING || td_parse_time(s, n, &t)) return TD_ERR;
    c->st->touch_ring[c->n++] = t;
    return TD_OK;
}

static int td_item_dedup(void *vctx, const char *s, size_t n) {
    td_list_ctx *c = vctx;
    if (c->n >= TD_DEDUP_RING || n == 0 || n > 16) return TD_ERR;
    uint64_t x = 0;
    for (size_t i = 0; i < n; i++) {
        int d = td_hexval(s[i]);
        if (d < 0) return TD_ERR;
        x = x << 4 | (uint64_t)d;
    }
    c->st->dedup[c->n++] = x;
    return TD_OK;
}

int td_state_set_field(td_state *st, const char *key, size_t klen, const char *val, size_t vlen,
                       char *err, size_t errcap) {
    for (size_t i = 0; i < TD_NELEM(td_flat_top); i++)
        if (td_key_is(key, klen, td_flat_top[i].key))
            return td_set_flat(&td_flat_top[i], st, key, klen, val, vlen, err, errcap);

    const char *dot = memchr(key, '.', klen);
    if (dot) {
        td_channel ch = td_channel_parse(key, (size_t)(dot - key));
        if (ch != TD_CH_NONE && (int)ch >= 0 && ch < TD_CH__COUNT) {
            const char *sfx = dot + 1;
            size_t sn = klen - (size_t)(sfx - key);
            for (size_t i = 0; i < TD_NELEM(td_flat_chan); i++)
                if (td_key_is(sfx, sn, td_flat_chan[i].key))
                    return td_set_flat(&td_flat_chan[i], &st->ch[ch], key, klen, val, vlen, err,
                                       errcap);
            return 1; /* a per-channel field of a newer touchd */
        }
    }

    if (td_key_is(key, klen, "hour_hist")) {
        uint32_t saved[24]; /* restored when the value is malformed */
        memcpy(saved, st->hour_hist, sizeof saved);
        memset(st->hour_hist, 0, sizeof st->hour_hist);
        td_list_ctx c = {st, 0};
        if (td_each_item(val, vlen, td_item_hist, &c)) {
            memcpy(st->hour_hist, saved, sizeof saved);
            return td_set_err(err, errcap, key, klen, "expected <hour>:<count>,... (hours 0..23)");
        }
        return TD_OK;
    }
    if (td_key_is(key, klen, "touches")) {
        td_ms saved[TD_TOUCH_RING];
        memcpy(saved, st->touch_ring, sizeof saved);
        td_list_ctx c = {st, 0};
        if (td_each_item(val, vlen, td_item_touch, &c)) {
            memcpy(st->touch_ring, saved, sizeof saved);
            return td_set_err(err, errcap, key, klen, "expected up to 64 comma-separated times");
        }
        st->touch_count = c.n;
        st->touch_head = c.n % TD_TOUCH_RING;
        return TD_OK;
    }
    if (td_key_is(key, klen, "dedup")) {
        uint64_t saved[TD_DEDUP_RING];
        memcpy(saved, st->dedup, sizeof saved);
        td_list_ctx c = {st, 0};
        if (td_each_item(val, vlen, td_item_dedup, &c)) {
            memcpy(st->dedup, saved, sizeof saved);
            return td_set_err(err, errcap, key, klen,
                              "expected up to 32 comma-separated hex fingerprints");
        }
        st->dedup_count = c.n;
        st->dedup_head = c.n % TD_DEDUP_RING;
        return TD_OK;
    }
    if (td_key_prefix(key, klen, "pos.")) {
        uint64_t k = 0;
        size_t hn = klen - 4;
        if (hn > 16) return td_set_err(err, errcap, key, klen, "bad position key");
        for (size_t i = 4; i < klen; i++) {
            int d = td_hexval(key[i]);
            if (d < 0) return td_set_err(err, errcap, key, klen, "bad position key");
            k = k << 4 | (uint64_t)d;
        }
        int64_t off;
        if (td_parse_i64(val, vlen, &off))
            return td_set_err(err, errcap, key, klen, "not an offset");
        td_pos_put(st, k, off);
        return TD_OK;
    }
    if (td_key_prefix(key, klen, "fired.") || td_key_prefix(key, klen, "timer.")) {
        bool timer = key[0] == 't';
        char rule[TD_RULE_ID_MAX + 1];
        if (td_pct_dec(key + 6, klen - 6, rule, sizeof rule))
            return td_set_err(err, errcap, key, klen, "bad rule id");
        const char *sp = timer ? memchr(val, ' ', vlen) : NULL;
        size_t tn = sp ? (size_t)(sp - val) : vlen;
        td_ms t;
        if (td_parse_time(val, tn, &t)) return td_set_err(err, errcap, key, klen, "not a time");
        if (!timer) {
            if (td_state_set_fired(st, rule, t))
                return td_set_err(err, errcap, key, klen, "out of memory");
            return TD_OK;
        }
        char armed[TD_ID_MAX + 1] = "";
        if (sp && td_pct_dec(sp + 1, vlen - tn - 1, armed, sizeof armed))
            return td_set_err(err, errcap, key, klen, "bad armed_by id");
        if (td_state_arm_timer(st, rule, t, armed))
            return td_set_err(err, errcap, key, klen, "out of memory");
        return TD_OK;
    }
    return 1;
}

/* ============================================================== the schema */

static inline void td_v_missing(const td_field *f, td_value *out) {
    out->type = f->type;
    out->missing = true;
    out->u.i = 0;
}
static inline void td_v_int(const td_field *f, td_value *out, int64_t i) {
    out->type = f->type;
    out->missing = false;
    out->u.i = i;
}
static inline void td_v_time(const td_field *f, td_value *out, td_ms t) {
    out->type = f->type;
    out->missing = t == TD_MS_MISSING;
    out->u.t = t;
}
static inline void td_v_bool(const td_field *f, td_value *out, bool b) {
    out->type = f->type;
    out->missing = false;
    out->u.b = b;
}
/* A string: missing when NULL or empty (every string field's "never set"). */
static inline void td_v_str(const td_field *f, td_value *out, const char *s) {
    out->type = f->type;
    if (!s || !s[0]) {
        out->missing = true;
        out->u.s.p = "";
        out->u.s.n = 0;
        return;
    }
    out->missing = false;
    out->u.s.p = s;
    out->u.s.n = (uint32_t)strlen(s);
}

/* -- per channel; f->channel < 0 means "the channel of ctx->rec" (target.*) */
static const td_chan_state *td_f_chan(const td_field *f, const td_ctx *ctx) {
    int ch = f->channel;
    if (ch < 0) {
        if (!ctx->rec) return NULL;
        ch = ctx->rec->channel;
    }
    if (ch < 0 || ch >= TD_CH__COUNT) return NULL;
    return &ctx->st->ch[ch];
}
static void td_get_chan_i64(const td_field *f, const td_ctx *ctx, td_value *out) {
    const td_chan_state *c = td_f_chan(f, ctx);
    if (!c) {
        td_v_missing(f, out);
        return;
    }
    int64_t x;
    memcpy(&x, (const char *)c + f->offset, sizeof x);
    td_v_int(f, out, x);
}
static void td_get_chan_time(const td_field *f, const td_ctx *ctx, td_value *out) {
    const td_chan_state *c = td_f_chan(f, ctx);
    if (!c) {
        td_v_missing(f, out);
        return;
    }
    td_ms x;
    memcpy(&x, (const char *)c + f->offset, sizeof x);
    td_v_time(f, out, x);
}
static void td_get_chan_blocked(const td_field *f, const td_ctx *ctx, td_value *out) {
    const td_chan_state *c = td_f_chan(f, ctx);
    if (!c) {
        td_v_missing(f, out);
        return;
    }
    td_v_bool(f, out, c->blocked != TD_BLOCK_NONE);
}
static void td_get_chan_block_reason(const td_field *f, const td_ctx *ctx, td_value *out) {
    const td_chan_state *c = td_f_chan(f, ctx);
    td_v_str(f, out, c ? td_block_reason_name(c->blocked) : NULL);
}
static void td_get_chan_consent(const td_field *f, const td_ctx *ctx, td_value *out) {
    const td_chan_state *c = td_f_chan(f, ctx);
    if (!c || c->consent == TD_TRI_UNSET) {
        td_v_missing(f, out);
        return;
    }
    td_v_bool(f, out, c->consent == TD_TRI_YES);
}

/* -- prospect */
static void td_get_i64(const td_field *f, const td_ctx *ctx, td_value *out) {
    int64_t x;
    memcpy(&x, (const char *)ctx->st + f->offset, sizeof x);
    td_v_int(f, out, x);
}
static void td_get_i64_opt(const td_field *f, const td_ctx *ctx, td_value *out) {
    int64_t x;
    memcpy(&x, (const char *)ctx->st + f->offset, sizeof x);
    if (x == TD_INT_MISSING) {
        td_v_missing(f, out);
        return;
    }
    td_v_int(f, out, x);
}
static void td_get_dec_opt(const td_field *f, const td_ctx *ctx, td_value *out) {
    td_get_i64_opt(f, ctx, out); /* td_dec and TD_DEC_MISSING match int64 */
}
static void td_get_time(const td_field *f, const td_ctx *ctx, td_value *out) {
    td_ms x;
    memcpy(&x, (const char *)ctx->st + f->offset, sizeof x);
    td_v_time(f, out, x);
}
static void td_get_str(const td_field *f, const td_ctx *ctx, td_value *out) {
    td_v_str(f, out, (const char *)ctx->st + f->offset);
}
static void td_get_stage(const td_field *f, const td_ctx *ctx, td_value *out) {
    td_v_str(f, out, ctx->st->stage ? td_stage_name(ctx->st->stage) : NULL);
}
static void td_get_gift_policy(const td_field *f, const td_ctx *ctx, td_value *out) {
    td_v_str(f, out, ctx->st->gift_policy ? td_gift_policy_name(ctx->st->gift_policy) : NULL);
}
static void td_get_sentiment(const td_field *f, const td_ctx *ctx, td_value *out) {
    td_sentiment s = ctx->st->last_reply_sentiment;
    td_v_str(f, out, s ? td_sentiment_name(s) : NULL);
}
static void td_get_gift_kind(const td_field *f, const td_ctx *ctx, td_value *out) {
    td_gift_kind k = ctx->st->last_gift_kind;
    td_v_str(f, out, k ? td_gift_kind_name(k) : NULL);
}
static void td_get_replied(const td_field *f, const td_ctx *ctx, td_value *out) {
    td_v_bool(f, out, ctx->st->replies > 0);
}
static void td_get_is_new(const td_field *f, const td_ctx *ctx, td_value *out) {
    td_v_bool(f, out, ctx->st->first_touch_at == TD_MS_MISSING);
}
static void td_get_touches_1d(const td_field *f, const td_ctx *ctx, td_value *out) {
    td_v_int(f, out, td_state_touches_within(ctx->st, ctx->now, TD_DAY));
}
static void td_get_touches_7d(const td_field *f, const td_ctx *ctx, td_value *out) {
    td_v_int(f, out, td_state_touches_within(ctx->st, ctx->now, TD_WEEK));
}
static void td_get_touches_30d(const td_field *f, const td_ctx *ctx, td_value *out) {
    td_v_int(f, out, td_state_touches_within(ctx->st, ctx->now, 30 * TD_DAY));
}
static void td_get_touches_total(const td_field *f, const td_ctx *ctx, td_value *out) {
    int64_t n = 0;
    for (int c = 0; c < TD_CH__COUNT; c++)
        n = td_sat_add(n, ctx->st->ch[c].sent);
    td_v_int(f, out, n);
}
static void td_get_points(const td_field *f, const td_ctx *ctx, td_value *out) {
    int64_t n = 0;
    for (int h = 0; h < 24; h++)
        n += ctx->st->hour_hist[h];
    td_v_int(f, out, n);
}
static void td_get_gifts_year_count(const td_field *f, const td_ctx *ctx, td_value *out) {
    td_civil c;
    td_state_local(ctx->st, ctx->tz, ctx->settings, ctx->now, &c);
    td_v_int(f, out, c.year == ctx->st->gift_year ? ctx->st->gifts_year_count : 0);
}
static void td_get_gifts_year_spend(const td_field *f, const td_ctx *ctx, td_value *out) {
    td_civil c;
    td_state_local(ctx->st, ctx->tz, ctx->settings, ctx->now, &c);
    td_v_int(f, out, c.year == ctx->st->gift_year ? ctx->st->gifts_year_spend_eur : 0);
}
static void td_get_local_hour(const td_field *f, const td_ctx *ctx, td_value *out) {
    td_civil c;
    td_state_local(ctx->st, ctx->tz, ctx->settings, ctx->now, &c);
    td_v_int(f, out, c.hour);
}
static void td_get_local_weekday(const td_field *f, const td_ctx *ctx, td_value *out) {
    td_civil c;
    td_state_local(ctx->st, ctx->tz, ctx->settings, ctx->now, &c);
    td_v_int(f, out, c.weekday);
}
static void td_get_local_month(const td_field *f, const td_ctx *ctx, td_value *out) {
    td_civil c;
    td_state_local(ctx->st, ctx->tz, ctx->settings, ctx->now, &c);
    td_v_int(f, out, c.month);
}

/* -- event.*: missing on timer triggers and when the event lacks the field */
#define TD_EV_GETTER(name, bit, expr_setter)                                                       \
    static void name(const td_field *f, const td_ctx *ctx, td_value *out) {                        \
        const td_event *ev = ctx->ev;                                                              \
        if (!ev || ((bit) && !(ev->has & (bit)))) {                                                \
            td_v_missing(f, out);                                                                  \
            return;                                                                                \
        }                                                                                          \
        expr_setter;                                                                               \
    }
TD_EV_GETTER(td_get_ev_type, 0, td_v_str(f, out, td_event_type_name(ev->type)))
TD_EV_GETTER(td_get_ev_channel, 0,
             td_v_str(f, out, ev->channel == TD_CH_NONE ? NULL : td_channel_name(ev->channel)))
TD_EV_GETTER(td_get_ev_kind, TD_HAS_KIND, td_v_str(f, out, ev->kind))
TD_EV_GETTER(td_get_ev_sentiment, TD_HAS_SENTIMENT,
             td_v_str(f, out, ev->sentiment ? td_sentiment_name(ev->sentiment) : NULL))
TD_EV_GETTER(td_get_ev_owner, TD_HAS_OWNER, td_v_str(f, out, ev->owner_id))
TD_EV_GETTER(td_get_ev_gift_kind, TD_HAS_GIFT_KIND,
             td_v_str(f, out, ev->gift_kind ? td_gift_kind_name(ev->gift_kind) : NULL))
TD_EV_GETTER(td_get_ev_wrapping, TD_HAS_WRAPPING, td_v_str(f, out, ev->wrapping))
TD_EV_GETTER(td_get_ev_hard, TD_HAS_HARD, td_v_bool(f, out, ev->hard))
TD_EV_GETTER(td_get_ev_occurred, 0, td_v_time(f, out, ev->occurred_at))
TD_EV_GETTER(td_get_ev_at, TD_HAS_AT, td_v_time(f, out, ev->at))
TD_EV_GETTER(td_get_ev_value, TD_HAS_VALUE,
             ev->value_eur == TD_DEC_MISSING ? td_v_missing(f, out)
                                             : td_v_int(f, out, ev->value_eur))
TD_EV_GETTER(td_get_ev_items, TD_HAS_ITEMS, td_v_int(f, out, ev->items))
TD_EV_GETTER(td_get_ev_duration, TD_HAS_DURATION, td_v_int(f, out, ev->duration_s))
TD_EV_GETTER(td_get_ev_tier, TD_HAS_TIER, td_v_int(f, out, ev->tier))
TD_EV_GETTER(td_get_ev_stage, TD_HAS_STAGE,
             td_v_str(f, out, ev->stage ? td_stage_name(ev->stage) : NULL))

/* event.human: the contract's default (true) applies to email.opened without
 * the field; other types do not have it. */
static void td_get_ev_human(const td_field *f, const td_ctx *ctx, td_value *out) {
    const td_event *ev = ctx->ev;
    if (!ev) {
        td_v_missing(f, out);
        return;
    }
    if (ev->has & TD_HAS_HUMAN) {
        td_v_bool(f, out, ev->human);
        return;
    }
    if (ev->type == TD_EV_EMAIL_OPENED) {
        td_v_bool(f, out, true);
        return;
    }
    td_v_missing(f, out);
}

/* -- rec.*: guards only */
static void td_get_rec_channel(const td_field *f, const td_ctx *ctx, td_value *out) {
    const td_rec_view *r = ctx->rec;
    td_v_str(f, out,
             r && r->channel >= 0 && r->channel < TD_CH__COUNT ? td_channel_name(r->channel)
                                                               : NULL);
}
static void td_get_rec_touch(const td_field *f, const td_ctx *ctx, td_value *out) {
    td_v_str(f, out, ctx->rec ? ctx->rec->touch : NULL);
}
static void td_get_rec_rule(const td_field *f, const td_ctx *ctx, td_value *out) {
    td_v_str(f, out, ctx->rec ? ctx->rec->rule : NULL);
}
static void td_get_rec_group(const td_field *f, const td_ctx *ctx, td_value *out) {
    td_v_str(f, out, ctx->rec ? ctx->rec->group : NULL);
}
static void td_get_rec_priority(const td_field *f, const td_ctx *ctx, td_value *out) {
    if (!ctx->rec) {
        td_v_missing(f, out);
        return;
    }
    td_v_int(f, out, ctx->rec->priority);
}
static void td_get_rec_not_before(const td_field *f, const td_ctx *ctx, td_value *out) {
    if (!ctx->rec) {
        td_v_missing(f, out);
        return;
    }
    td_v_time(f, out, ctx->rec->not_before);
}

#define A_ TD_FIELD_ANY
#define E_ TD_FIELD_EVENT
#define G_ TD_FIELD_GUARD

/* The 14 per-channel fields of channel C (a string literal; ID its index, or
 * -1 for target.* which reads the channel of the recommendation judged). */
#define TD_CHAN_FIELDS(C, ID, SCOPE, WHO)                                                          \
    {C ".sent",                                                                                    \
     TD_T_INT,                                                                                     \
     SCOPE,                                                                                        \
     td_get_chan_i64,                                                                              \
     ID,                                                                                           \
     C_(sent),                                                                                     \
     "Outbound touches sent on " WHO "."},                                                         \
        {C ".delivered",                                                                           \
         TD_T_INT,                                                                                 \
         SCOPE,                                                                                    \
         td_get_chan_i64,                                                                          \
         ID,                                                                                       \
         C_(delivered),                                                                            \
         "Delivery receipts on " WHO "."},                                                         \
        {C ".opened",                                                                              \
         TD_T_INT,                                                                                 \
         SCOPE,                                                                                    \
         td_get_chan_i64,                                                                          \
         ID,                                                                                       \
         C_(opened),                                                                               \
         "Human opens/reads on " WHO " (machine opens excluded)."},                                \
        {C ".clicked", TD_T_INT, SCOPE, td_get_chan_i64, ID, C_(clicked), "Clicks on " WHO "."},   \
        {C ".replied",                                                                             \
         TD_T_INT,                                                                                 \
         SCOPE,                                                                                    \
         td_get_chan_i64,                                                                          \
         ID,                                                                                       \
         C_(replied),                                                                              \
         "Replies on " WHO " (out-of-office excluded)."},                                          \
        {C ".failed",                                                                              \
         TD_T_INT,                                                                                 \
         SCOPE,                                                                                    \
         td_get_chan_i64,                                                                          \
         ID,                                                                                       \
         C_(failed),                                                                               \
         "Failed sends and soft bounces on " WHO "."},                                             \
        {C ".unanswered",                                                                          \
         TD_T_INT,                                                                                 \
         SCOPE,                                                                                    \
         td_get_chan_i64,                                                                          \
         ID,                                                                                       \
         C_(unanswered),                                                                           \
         "Touches on " WHO " since the prospect last replied (any channel)."},                     \
        {C ".opens_since_reply",                                                                   \
         TD_T_INT,                                                                                 \
         SCOPE,                                                                                    \
         td_get_chan_i64,                                                                          \
         ID,                                                                                       \
         C_(opens_since_reply),                                                                    \
         "Human opens on " WHO " since the prospect last replied (any channel)."},                 \
        {C ".last_sent_at",                                                                        \
         TD_T_TIME,                                                                                \
         SCOPE,                                                                                    \
         td_get_chan_time,                                                                         \
         ID,                                                                                       \
         C_(last_sent_at),                                                                         \
         "Latest outbound touch on " WHO "; missing when never."},                                 \
        {C ".last_opened_at",                                                                      \
         TD_T_TIME,                                                                                \
         SCOPE,                                                                                    \
         td_get_chan_time,                                                                         \
         ID,                                                                                       \
         C_(last_opened_at),                                                                       \
         "Latest human open on " WHO "; missing when never."},                                     \
        {C ".last_replied_at",                                                                     \
         TD_T_TIME,                                                                                \
         SCOPE,                                                                                    \
         td_get_chan_time,                                                                         \
         ID,                                                                                       \
         C_(last_replied_at),                                                                      \
         "Latest reply on " WHO "; missing when never."},                                          \
        {C ".blocked",                                                                             \
         TD_T_BOOL,                                                                                \
         SCOPE,                                                                                    \
         td_get_chan_blocked,                                                                      \
         ID,                                                                                       \
         0,                                                                                        \
         "True when " WHO " is blocked for good (unsubscribe, hard bounce, opt-out)."},            \
        {C ".block_reason",                                                                        \
         TD_T_STR,                                                                                 \
         SCOPE,                                                                                    \
         td_get_chan_block_reason,                                                                 \
         ID,                                                                                       \
         0,                                                                                        \
         "unsubscribed, hard_bounce or opted_out; missing when not blocked."},                     \
    {                                                                                              \
        C ".consent", TD_T_BOOL, SCOPE, td_get_chan_consent, ID, 0,                                \
            "Consent to be contacted on " WHO "; missing when unknown."                            \
    }

#define TD_P(name, type, get, off, doc)                                                            \
    { name, type, A_, get, -1, off, doc }

static const td_field td_schema[] = {
    TD_CHAN_FIELDS("email", TD_CH_EMAIL, A_, "email"),
    TD_CHAN_FIELDS("whatsapp", TD_CH_WHATSAPP, A_, "WhatsApp"),
    TD_CHAN_FIELDS("sms", TD_CH_SMS, A_, "SMS"),
    TD_CHAN_FIELDS("linkedin", TD_CH_LINKEDIN, A_, "LinkedIn"),
    TD_CHAN_FIELDS("call", TD_CH_CALL, A_, "calls"),
    TD_CHAN_FIELDS("meeting", TD_CH_MEETING, A_, "meetings"),
    TD_CHAN_FIELDS("gift", TD_CH_GIFT, A_, "gifts"),

    TD_P("prospect_id", TD_T_STR, td_get_str, S_(prospect_id), "The prospect's id."),
    TD_P("owner_id", TD_T_STR, td_get_str, S_(owner_id),
         "The seller: owner_id of the latest event that carried one; missing when unknown."),
    TD_P("stage", TD_T_STR, td_get_stage, 0,
         "CRM stage: new, contacted, engaged, proposal, negotiation, won, lost; missing when "
         "unset."),
    TD_P("country", TD_T_STR, td_get_str, S_(country),
         "ISO 3166 alpha-2 country; missing when unset."),
    TD_P("sector", TD_T_STR, td_get_str, S_(sector), "CRM sector; missing when unset."),
    TD_P("timezone", TD_T_STR, td_get_str, S_(timezone),
         "IANA time zone of the prospect; missing when unset (the default zone applies)."),
    TD_P("gift_policy", TD_T_STR, td_get_gift_policy, 0,
         "allowed, restricted or forbidden; missing when unset."),
    TD_P("language", TD_T_STR, td_get_str, S_(language),
         "BCP 47 language tag; missing when unset."),
    TD_P("tier", TD_T_INT, td_get_i64_opt, S_(tier),
         "1 strategic, 2 important, 3 transactional; missing when unset."),
    TD_P("lifetime_value_eur", TD_T_DEC, td_get_dec_opt, S_(lifetime_value_eur),
         "Lifetime value in EUR from the CRM; missing when unset."),
    TD_P("first_seen_at", TD_T_TIME, td_get_time, S_(first_seen_at),
         "Earliest event time applied."),
    TD_P("last_event_at", TD_T_TIME, td_get_time, S_(last_event_at), "Latest event time applied."),
    TD_P("last_touch_at", TD_T_TIME, td_get_time, S_(last_touch_at),
         "Latest outbound touch, any channel; missing when never."),
    TD_P("last_inbound_at", TD_T_TIME, td_get_time, S_(last_inbound_at),
         "Latest reply, connected call or LinkedIn accept; missing when never."),
    TD_P("first_touch_at", TD_T_TIME, td_get_time, S_(first_touch_at),
         "Earliest outbound touch, any channel; missing when never."),
    TD_P("stage_changed_at", TD_T_TIME, td_get_time, S_(stage_changed_at),
         "When the CRM stage last changed; missing when never set."),
    TD_P("next_meeting_at", TD_T_TIME, td_get_time, S_(next_meeting_at),
         "`at` of the booked meeting not yet held/cancelled/no-show; missing when none."),
    TD_P("last_gift_at", TD_T_TIME, td_get_time, S_(last_gift_at),
         "Latest gift sent; missing when never."),
    TD_P("replied", TD_T_BOOL, td_get_replied, 0,
         "True once the prospect has replied on any channel (out-of-office excluded)."),
    TD_P("replies", TD_T_INT, td_get_i64, S_(replies),
         "Replies on any channel, out-of-office excluded (connected calls count)."),
    TD_P("events", TD_T_INT, td_get_i64, S_(events), "Events applied to this prospect."),
    TD_P("last_reply_sentiment", TD_T_STR, td_get_sentiment, 0,
         "positive, neutral or negative of the latest reply; missing when not given."),
    TD_P("meetings.booked", TD_T_INT, td_get_i64, S_(meetings_booked), "meeting.booked events."),
    TD_P("meetings.held", TD_T_INT, td_get_i64, S_(meetings_held), "meeting.held events."),
    TD_P("meetings.cancelled", TD_T_INT, td_get_i64, S_(meetings_cancelled),
         "meeting.cancelled events."),
    TD_P("meetings.no_show", TD_T_INT, td_get_i64, S_(meetings_no_show), "meeting.no_show events."),
    TD_P("touches.1d", TD_T_INT, td_get_touches_1d, 0,
         "Outbound touches, any channel, in the 24 hours up to now."),
    TD_P("touches.7d", TD_T_INT, td_get_touches_7d, 0,
         "Outbound touches, any channel, in the 7 days up to now."),
    TD_P("touches.30d", TD_T_INT, td_get_touches_30d, 0,
         "Outbound touches, any channel, in the 30 days up to now (at most the last 64)."),
    TD_P("touches.total", TD_T_INT, td_get_touches_total, 0,
         "Outbound touches ever, any channel (sum of C.sent)."),
    TD_P("gifts.year_count", TD_T_INT, td_get_gifts_year_count, 0,
         "Gifts sent in the prospect's local calendar year of now."),
    TD_P("gifts.year_spend_eur", TD_T_DEC, td_get_gifts_year_spend, 0,
         "EUR spent on gifts in the prospect's local calendar year of now."),
    TD_P("gifts.total", TD_T_INT, td_get_i64, S_(gifts_total), "Gifts sent ever."),
    TD_P("gifts.last_kind", TD_T_STR, td_get_gift_kind, 0,
         "Kind of the latest gift (object, card, ...); missing when never or not given."),
    TD_P("engagement.points", TD_T_INT, td_get_points, 0,
         "Human opens and replies counted in the local-hour histogram."),
    TD_P("is_new", TD_T_BOOL, td_get_is_new, 0, "True until the first outbound touch."),
    TD_P("local.hour", TD_T_INT, td_get_local_hour, 0,
         "Hour (0..23) of now in the prospect's zone."),
    TD_P("local.weekday", TD_T_INT, td_get_local_weekday, 0,
         "Weekday of now in the prospect's zone: 1 Monday .. 7 Sunday."),
    TD_P("local.month", TD_T_INT, td_get_local_month, 0,
         "Month (1..12) of now in the prospect's zone."),

    {"event.type", TD_T_STR, E_, td_get_ev_type, -1, 0, "Type of the triggering event."},
    {"event.channel", TD_T_STR, E_, td_get_ev_channel, -1, 0,
     "Channel of the triggering event; missing for prospect.updated."},
    {"event.kind", TD_T_STR, E_, td_get_ev_kind, -1, 0,
     "data.kind (value, follow_up, proposal...)."},
    {"event.sentiment", TD_T_STR, E_, td_get_ev_sentiment, -1, 0, "data.sentiment of a reply."},
    {"event.owner_id", TD_T_STR, E_, td_get_ev_owner, -1, 0, "owner_id carried by the event."},
    {"event.gift_kind", TD_T_STR, E_, td_get_ev_gift_kind, -1, 0, "data.kind of gift.sent."},
    {"event.wrapping", TD_T_STR, E_, td_get_ev_wrapping, -1, 0, "data.wrapping of gift.sent."},
    {"event.human", TD_T_BOOL, E_, td_get_ev_human, -1, 0,
     "data.human of an open (true when email.opened omits it)."},
    {"event.hard", TD_T_BOOL, E_, td_get_ev_hard, -1, 0, "data.hard of email.bounced."},
    {"event.occurred_at", TD_T_TIME, E_, td_get_ev_occurred, -1, 0, "occurred_at of the event."},
    {"event.at", TD_T_TIME, E_, td_get_ev_at, -1, 0, "data.at of a meeting event."},
    {"event.value_eur", TD_T_DEC, E_, td_get_ev_value, -1, 0, "data.value_eur of gift.sent."},
    {"event.items", TD_T_INT, E_, td_get_ev_items, -1, 0, "data.items of gift.sent."},
    {"event.duration_s", TD_T_INT, E_, td_get_ev_duration, -1, 0, "data.duration_s of a call."},
    {"event.tier", TD_T_INT, E_, td_get_ev_tier, -1, 0, "data.tier of prospect.updated."},
    {"event.stage", TD_T_STR, E_, td_get_ev_stage, -1, 0, "data.stage of prospect.updated."},

    {"rec.channel", TD_T_STR, G_, td_get_rec_channel, -1, 0,
     "Channel of the recommendation judged."},
    {"rec.touch", TD_T_STR, G_, td_get_rec_touch, -1, 0, "Touch of the recommendation judged."},
    {"rec.rule", TD_T_STR, G_, td_get_rec_rule, -1, 0, "Rule id of the recommendation judged."},
    {"rec.group", TD_T_STR, G_, td_get_rec_group, -1, 0,
     "Group of the recommendation judged; missing when none."},
    {"rec.priority", TD_T_INT, G_, td_get_rec_priority, -1, 0, "Priority of the recommendation."},
    {"rec.not_before", TD_T_TIME, G_, td_get_rec_not_before, -1, 0,
     "not_before of the recommendation judged."},
    TD_CHAN_FIELDS("target", -1, G_, "the recommendation's channel"),
};

/* The strings of the enum fields, exactly as their getters give them. */
static const char *td_en_stage(int c) { return c ? td_stage_name((td_stage)c) : NULL; }
static const char *td_en_gift_policy(int c) {
    return c ? td_gift_policy_name((td_gift_policy)c) : NULL;
}
static const char *td_en_sentiment(int c) { return c ? td_sentiment_name((td_sentiment)c) : NULL; }
static const char *td_en_gift_kind(int c) { return c ? td_gift_kind_name((td_gift_kind)c) : NULL; }

/* The evaluator reads enum codes as int. */
_Static_assert(sizeof(td_stage) == sizeof(int) && sizeof(td_gift_policy) == sizeof(int) &&
                   sizeof(td_sentiment) == sizeof(int) && sizeof(td_gift_kind) == sizeof(int),
               "enum fields must be int-sized");

td_field_access td_field_direct(const td_field *f, size_t *off, td_enum_name_fn *enum_name) {
    /* per-channel fields of a fixed channel live at a fixed place too */
    size_t chan = f->channel >= 0 && f->channel < TD_CH__COUNT
                      ? offsetof(td_state, ch) + (size_t)f->channel * sizeof(td_chan_state)
                      : 0;
    if (f->get == td_get_i64) {
        *off = f->offset;
        return TD_FA_I64;
    }
    if (f->get == td_get_i64_opt || f->get == td_get_dec_opt || f->get == td_get_time) {
        *off = f->offset;
        return TD_FA_I64_OPT;
    }
    if (f->get == td_get_chan_i64 && chan) {
        *off = chan + f->offset;
        return TD_FA_I64;
    }
    if (f->get == td_get_chan_time && chan) {
        *off = chan + f->offset;
        return TD_FA_I64_OPT;
    }
    static const struct {
        td_field_get_fn get;
        size_t off;
        td_enum_name_fn name;
    } enums[] = {
        {td_get_stage, offsetof(td_state, stage), td_en_stage},
        {td_get_gift_policy, offsetof(td_state, gift_policy), td_en_gift_policy},
        {td_get_sentiment, offsetof(td_state, last_reply_sentiment), td_en_sentiment},
        {td_get_gift_kind, offsetof(td_state, last_gift_kind), td_en_gift_kind},
    };
    for (size_t i = 0; i < TD_NELEM(enums); i++)
        if (f->get == enums[i].get) {
            *off = enums[i].off;
            if (enum_name) *enum_name = enums[i].name;
            return TD_FA_ENUM;
        }
    return TD_FA_GETTER;
}

const td_field *td_schema_lookup(const char *name, size_t len) {
    for (size_t i = 0; i < TD_NELEM(td_schema); i++) {
        const char *n = td_schema[i].name;
        if (strncmp(n, name, len) == 0 && n[len] == 0) return &td_schema[i];
    }
    return NULL;
}

const td_field *td_schema_fields(size_t *n) {
    if (n) *n = TD_NELEM(td_schema);
    return td_schema;
}

/* ---- diff of flat forms ---- */

/* The difference of two states' flat forms (td_kvs_diff; the daemon keeps
 * the td_kvs of what Redis holds and calls td_kvs_diff itself). */
int td_state_diff(const td_state *before, const td_state *now, td_kv_fn set_fn, td_kdel_fn del_fn,
                  void *ud) {
    td_kvs a = {0}, b = {0};
    int rc = TD_ERR;
    if (td_kvs_capture(&a, before) == TD_OK && td_kvs_capture(&b, now) == TD_OK)
        rc = td_kvs_diff(&a, &b, set_fn, del_fn, ud);
    td_kvs_free(&a);
    td_kvs_free(&b);
    return rc;
}
