/*
 * td_state.c - per-prospect state, the reducer: settings and life cycle, the
 * dedup ring, input positions, per-rule tables (fired, timers), the touch
 * ring and td_state_apply. The flat (Redis hash) form is td_state_flat.c, the
 * schema rule expressions read is td_state_schema.c.
 *
 * What it owns: the `fired` and `timers` arrays of a td_state and the pool
 * of the timers' armed_by ids (grown by doubling, freed by td_state_free).
 * Nothing else is allocated here: the reducer (td_state_apply) runs on the
 * engine's hot path and never allocates or takes locks; td_state_apply does a time-zone
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
 * File-local functions are prefixed st_ (state reducer).
 *
 * @locality any thread; a td_state is used by one thread at a time.
 */
#include "td_state.h"
#include "td_state_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- helpers */

static inline void st_inc(int64_t *c) {
    if (*c < INT64_MAX) (*c)++;
}
static inline void st_max_ms(td_ms *dst, td_ms t) {
    if (*dst == TD_MS_MISSING || t > *dst) *dst = t;
}
static inline void st_min_ms(td_ms *dst, td_ms t) {
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

int td_block_reason_parse(const char *s, size_t n) {
    for (int r = TD_BLOCK_UNSUBSCRIBED; r <= TD_BLOCK_OPTED_OUT; r++) {
        const char *name = td_block_reason_name((td_block_reason)r);
        if (strlen(name) == n && memcmp(name, s, n) == 0) return r;
    }
    return -1;
}

/* td_event.h has no parser for sentiments: match the names it gives. */
int td_state_sentiment_parse(const char *s, size_t n) {
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
    s->expires = 7 * TD_DAY;
    s->late_after = 24 * TD_HOUR;
}

void td_state_chan_init(td_chan_state *c) {
    memset(c, 0, sizeof *c);
    c->last_sent_at = c->last_opened_at = c->last_replied_at = TD_MS_MISSING;
    c->blocked = TD_BLOCK_NONE;
    c->consent = TD_TRI_UNSET;
}

void td_state_init(td_state *st, const char *prospect_id) {
    memset(st, 0, sizeof *st);
    if (prospect_id) td_strlcpy(st->prospect_id, prospect_id, sizeof st->prospect_id);
    for (int c = 0; c < TD_CH__COUNT; c++)
        td_state_chan_init(&st->ch[c]);
    st->stage = TD_STAGE_NONE;
    st->tier = TD_INT_MISSING;
    st->gift_policy = TD_GP_NONE;
    st->lifetime_value_eur = TD_DEC_MISSING;
    st->first_seen_at = st->last_event_at = st->last_touch_at = TD_MS_MISSING;
    st->last_inbound_at = st->first_touch_at = st->stage_changed_at = TD_MS_MISSING;
    st->next_meeting_at = st->last_gift_at = st->clock = st->last_acted_at = TD_MS_MISSING;
    st->last_reply_sentiment = TD_SENT_NONE;
    st->last_gift_kind = TD_GK_NONE;
}

void td_state_free(td_state *st) {
    if (!st) return;
    free(st->fired);
    free(st->timers);
    free(st->armed);
    for (uint32_t i = 0; i < st->nplan; i++)
        free(st->plan[i].json);
    free(st->plan);
    free(st->dold);
    st->dold = NULL;
    st->ndold = 0;
    st->capdold = 0;
    st->fired = NULL;
    st->timers = NULL;
    st->armed = NULL;
    st->plan = NULL;
    st->nfired = st->capfired = st->ntimers = st->captimers = 0;
    st->narmed = st->caparmed = st->armed_hint = 0;
    st->nplan = st->capplan = 0;
}

/* Points every timer's armed_by at its pool slot (after the pool moved). */
static void st_armed_repoint(td_state *st) {
    for (uint32_t i = 0; i < st->ntimers; i++)
        st->timers[i].armed_by = st->armed[st->timers[i].armed_slot].id;
}

/* ---- the plan ---- */

/* Plan order: soonest not_before first, then by id. */
static int st_plan_cmp(const td_pending *a, const td_pending *b) {
    if (a->not_before != b->not_before) return a->not_before < b->not_before ? -1 : 1;
    return strcmp(a->id, b->id);
}

uint64_t td_state_rec_fingerprint(const char *rec_id, bool gift) {
    uint64_t h = td_hash64(rec_id, strlen(rec_id), TD_HASH_SEED) & ~(uint64_t)1;
    if (h == 0) h = 2; /* 0 means absent */
    return h | (gift ? 1u : 0u);
}

void td_state_rec_remember(td_state *st, uint64_t fp) {
    st->recent[st->recent_head % TD_RECENT_RECS] = fp;
    st->recent_head = (st->recent_head + 1) % TD_RECENT_RECS;
    if (st->recent_count < TD_RECENT_RECS) st->recent_count++;
}

uint64_t td_state_rec_seen(const td_state *st, const char *rec_id) {
    uint64_t h = td_state_rec_fingerprint(rec_id, false);
    for (uint32_t i = 0; i < st->recent_count && i < TD_RECENT_RECS; i++)
        if ((st->recent[i] & ~(uint64_t)1) == h) return st->recent[i];
    return 0;
}

uint32_t td_state_plan_visible(const td_state *st) {
    uint32_t n = 0;
    for (uint32_t i = 0; i < st->nplan; i++)
        if (!st->plan[i].snoozed_until || st->plan[i].snoozed_until <= st->clock) n++;
    return n;
}

int td_state_plan_find(const td_state *st, const char *id) {
    for (uint32_t i = 0; i < st->nplan; i++)
        if (strcmp(st->plan[i].id, id) == 0) return (int)i;
    return -1;
}

void td_state_plan_remove(td_state *st, uint32_t i) {
    if (i >= st->nplan) return;
    free(st->plan[i].json);
    memmove(&st->plan[i], &st->plan[i + 1], (st->nplan - i - 1) * sizeof *st->plan);
    st->nplan--;
}

int td_state_plan_add(td_state *st, td_pending *e, td_pending *evicted) {
    int at = td_state_plan_find(st, e->id);
    if (at >= 0) td_state_plan_remove(st, (uint32_t)at); /* the same id again: replaced */
    if (st->nplan >= TD_PLAN_MAX) {
        uint32_t k = 0;
        for (uint32_t i = 1; i < st->nplan; i++)
            if (st->plan[i].expires_at < st->plan[k].expires_at) k = i;
        if (evicted) {
            *evicted = st->plan[k];
            st->plan[k].json = NULL;
        }
        td_state_plan_remove(st, k);
    }
    if (td_grow(&st->plan, &st->capplan, st->nplan, sizeof *st->plan, 4) != TD_OK) {
        free(e->json);
        e->json = NULL;
        return TD_ERR;
    }
    uint32_t i = st->nplan;
    while (i > 0 && st_plan_cmp(&st->plan[i - 1], e) > 0)
        i--;
    memmove(&st->plan[i + 1], &st->plan[i], (st->nplan - i) * sizeof *st->plan);
    st->plan[i] = *e;
    st->nplan++;
    e->json = NULL;
    return TD_OK;
}

/* Ownership: dst gets its own copies of the tables (freed by td_state_free
 * on dst). On out-of-memory dst is left a valid state without tables. */
int td_state_copy(td_state *dst, const td_state *src) {
    *dst = *src;
    dst->fired = NULL;
    dst->timers = NULL;
    dst->armed = NULL;
    dst->plan = NULL;
    dst->dold = NULL;
    dst->nfired = dst->capfired = dst->ntimers = dst->captimers = 0;
    dst->narmed = dst->caparmed = dst->armed_hint = 0;
    dst->nplan = dst->capplan = 0;
    dst->ndold = 0;
    dst->capdold = 0;
    if (src->ndold) {
        dst->dold = malloc(src->ndold * sizeof *dst->dold);
        if (!dst->dold) return TD_ERR;
        memcpy(dst->dold, src->dold, src->ndold * sizeof *dst->dold);
        dst->ndold = src->ndold;
        dst->capdold = src->ndold;
    }
    if (src->nplan) {
        dst->plan = malloc(src->nplan * sizeof *dst->plan);
        if (!dst->plan) return TD_ERR;
        for (uint32_t i = 0; i < src->nplan; i++) {
            dst->plan[i] = src->plan[i];
            dst->plan[i].json = malloc(src->plan[i].len + 1);
            if (!dst->plan[i].json) {
                dst->nplan = dst->capplan = i;
                td_state_free(dst);
                return TD_ERR;
            }
            memcpy(dst->plan[i].json, src->plan[i].json, src->plan[i].len + 1);
        }
        dst->nplan = dst->capplan = src->nplan;
    }
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
        st_armed_repoint(dst);
    }
    return TD_OK;
}

static bool st_chan_equal(const td_chan_state *a, const td_chan_state *b) {
    return a->sent == b->sent && a->delivered == b->delivered && a->opened == b->opened &&
           a->clicked == b->clicked && a->replied == b->replied && a->failed == b->failed &&
           a->unanswered == b->unanswered && a->opens_since_reply == b->opens_since_reply &&
           a->last_sent_at == b->last_sent_at && a->last_opened_at == b->last_opened_at &&
           a->last_replied_at == b->last_replied_at && a->blocked == b->blocked &&
           a->consent == b->consent;
}

/* Rings compare by content, oldest first: where the head sits is not state. */
static td_ms st_touch_at(const td_state *st, uint32_t i) { /* i = 0: oldest */
    uint32_t start =
        (st->touch_head % TD_TOUCH_RING + TD_TOUCH_RING - st->touch_count) % TD_TOUCH_RING;
    return st->touch_ring[(start + i) % TD_TOUCH_RING];
}
static uint64_t st_dedup_at(const td_state *st, uint32_t i) {
    uint32_t start =
        (st->dedup_head % TD_DEDUP_RING + TD_DEDUP_RING - st->dedup_count) % TD_DEDUP_RING;
    return st->dedup[(start + i) % TD_DEDUP_RING];
}

static uint64_t st_recent_at(const td_state *st, uint32_t i) {
    uint32_t start =
        (st->recent_head % TD_RECENT_RECS + TD_RECENT_RECS - st->recent_count) % TD_RECENT_RECS;
    return st->recent[(start + i) % TD_RECENT_RECS];
}

bool td_state_equal(const td_state *a, const td_state *b) {
    if (strcmp(a->prospect_id, b->prospect_id) || strcmp(a->owner_id, b->owner_id) ||
        a->version != b->version || a->events != b->events)
        return false;
    for (int c = 0; c < TD_CH__COUNT; c++)
        if (!st_chan_equal(&a->ch[c], &b->ch[c])) return false;
    if (a->stage != b->stage || a->tier != b->tier || strcmp(a->country, b->country) ||
        strcmp(a->sector, b->sector) || strcmp(a->timezone, b->timezone) ||
        a->gift_policy != b->gift_policy || a->lifetime_value_eur != b->lifetime_value_eur ||
        strcmp(a->language, b->language))
        return false;
    if (a->first_seen_at != b->first_seen_at || a->last_event_at != b->last_event_at ||
        a->last_touch_at != b->last_touch_at || a->last_inbound_at != b->last_inbound_at ||
        a->first_touch_at != b->first_touch_at || a->stage_changed_at != b->stage_changed_at ||
        a->clock != b->clock || a->replies != b->replies ||
        a->last_reply_sentiment != b->last_reply_sentiment ||
        a->meetings_booked != b->meetings_booked || a->meetings_held != b->meetings_held ||
        a->meetings_cancelled != b->meetings_cancelled ||
        a->meetings_no_show != b->meetings_no_show || a->next_meeting_at != b->next_meeting_at)
        return false;
    if (a->touch_count != b->touch_count) return false;
    for (uint32_t i = 0; i < a->touch_count; i++)
        if (st_touch_at(a, i) != st_touch_at(b, i)) return false;
    if (memcmp(a->hour_hist, b->hour_hist, sizeof a->hour_hist)) return false;
    if (a->gift_year != b->gift_year || a->gifts_year_count != b->gifts_year_count ||
        a->gifts_year_spend_eur != b->gifts_year_spend_eur || a->gifts_total != b->gifts_total ||
        a->last_gift_at != b->last_gift_at || a->last_gift_kind != b->last_gift_kind)
        return false;
    if (a->dedup_count != b->dedup_count) return false;
    for (uint32_t i = 0; i < a->dedup_count; i++)
        if (st_dedup_at(a, i) != st_dedup_at(b, i)) return false;
    if (a->ndold != b->ndold) return false;
    for (uint32_t i = 0; i < a->ndold; i++)
        if (a->dold[i].n != b->dold[i].n || a->dold[i].seq != b->dold[i].seq ||
            a->dold[i].newest != b->dold[i].newest ||
            memcmp(a->dold[i].fp, b->dold[i].fp, a->dold[i].n * sizeof(uint64_t)))
            return false;
    if (a->npos != b->npos) return false;
    for (uint32_t i = 0; i < a->npos; i++) /* kept sorted by key */
        if (a->pos[i].key != b->pos[i].key || a->pos[i].offset != b->pos[i].offset) return false;
    if (a->plan_version != b->plan_version || a->nplan != b->nplan ||
        a->recent_count != b->recent_count || a->gift_rec_year != b->gift_rec_year ||
        a->gift_recs_year != b->gift_recs_year || a->fb_acted != b->fb_acted ||
        a->fb_dismissed != b->fb_dismissed || a->fb_snoozed != b->fb_snoozed ||
        a->last_acted_at != b->last_acted_at)
        return false;
    for (uint32_t i = 0; i < a->recent_count; i++)
        if (st_recent_at(a, i) != st_recent_at(b, i)) return false;
    for (uint32_t i = 0; i < a->nplan; i++) {
        const td_pending *x = &a->plan[i], *y = &b->plan[i];
        if (strcmp(x->id, y->id) || x->not_before != y->not_before ||
            x->expires_at != y->expires_at || x->channel != y->channel || x->owner != y->owner ||
            strcmp(x->rule, y->rule) || strcmp(x->group, y->group) || strcmp(x->touch, y->touch) ||
            strcmp(x->intent, y->intent) || x->snoozed_until != y->snoozed_until ||
            x->len != y->len || memcmp(x->json, y->json, x->len))
            return false;
    }
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
    for (uint32_t s = st->ndold; s-- > 0;) { /* newest first: redeliveries are recent */
        const td_dedup_seg *g = &st->dold[s];
        for (uint32_t i = 0; i < g->n; i++)
            if (g->fp[i] == fp) return true;
    }
    return false;
}

void td_state_remember(td_state *st, const char *event_id) {
    td_state_remember_fp(st, td_state_fingerprint(event_id));
}

void td_state_remember_fp(td_state *st, uint64_t fp) {
    (void)td_state_remember_at(st, fp, st->clock == TD_MS_MISSING ? 0 : st->clock, 0);
}

int td_state_dedup_put(td_state *st, const td_dedup_seg *g) {
    uint32_t i = 0;
    while (i < st->ndold && st->dold[i].seq < g->seq)
        i++;
    if (i < st->ndold && st->dold[i].seq == g->seq) {
        st->dold[i] = *g;
        return TD_OK;
    }
    if (td_grow(&st->dold, &st->capdold, st->ndold, sizeof *st->dold, 4) != TD_OK) return TD_ERR;
    memmove(&st->dold[i + 1], &st->dold[i], (st->ndold - i) * sizeof *st->dold);
    st->dold[i] = *g;
    st->ndold++;
    return TD_OK;
}

uint32_t td_state_dedup_size(const td_state *st) {
    uint32_t n = st->dedup_count < TD_DEDUP_RING ? st->dedup_count : TD_DEDUP_RING;
    for (uint32_t i = 0; i < st->ndold; i++)
        n += st->dold[i].n;
    return n;
}

int td_state_remember_at(td_state *st, uint64_t fp, td_ms now, td_ms window) {
    if (window <= 0) window = TD_DEDUP_WINDOW;
    int rc = TD_OK;
    uint32_t slot = st->dedup_head % TD_DEDUP_RING;
    if (st->dedup_count >= TD_DEDUP_RING) { /* the ring evicts its oldest: keep it */
        td_dedup_seg *last = st->ndold ? &st->dold[st->ndold - 1] : NULL;
        if (!last || last->n >= TD_DEDUP_SEG) {
            uint32_t seq = last ? last->seq + 1 : 1;
            if (td_grow(&st->dold, &st->capdold, st->ndold, sizeof *st->dold, 4) != TD_OK) {
                rc = TD_ERR;
                last = NULL;
            } else {
                last = &st->dold[st->ndold++];
                memset(last, 0, sizeof *last);
                last->seq = seq;
            }
        }
        if (last) {
            last->fp[last->n++] = st->dedup[slot];
            last->newest = now;
        }
    }
    st->dedup[slot] = fp;
    st->dedup_head = (st->dedup_head + 1) % TD_DEDUP_RING;
    if (st->dedup_count < TD_DEDUP_RING) st->dedup_count++;
    /* the oldest segment goes when every id in it is out of both bounds */
    while (st->ndold > 1) {
        uint32_t total = td_state_dedup_size(st);
        const td_dedup_seg *o = &st->dold[0];
        bool past_min = total - o->n >= TD_DEDUP_MIN;
        bool past_window = o->newest < now - window;
        if (!(past_min && past_window) && total <= TD_DEDUP_MAX) break;
        memmove(&st->dold[0], &st->dold[1], (st->ndold - 1) * sizeof *st->dold);
        st->ndold--;
    }
    return rc;
}

/* -------------------------------------------------------- input positions */

/* td_hash64 of "<topic>/<partition>", hashed in two pieces (FNV-1a chains
 * through its seed) so that no topic length needs a buffer. The suffix is
 * written by hand: this runs twice per event (check, then set). */
static uint64_t st_pos_key(const char *topic, int32_t partition) {
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
    uint64_t k = st_pos_key(topic, partition);
    for (uint32_t i = 0; i < st->npos && i < TD_POS_MAX; i++)
        if (st->pos[i].key == k) return st->pos[i].offset;
    return -1;
}

/* Keeps pos[] sorted by key so that the flat form reads back identical
 * whatever order Redis returns the fields in. When all TD_POS_MAX slots are
 * taken (a prospect whose key moved across many topics: not expected), the
 * entry with the lowest offset is dropped. */
void td_state_pos_put(td_state *st, uint64_t k, int64_t offset) {
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
    td_state_pos_put(st, st_pos_key(topic, partition), offset);
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
               "st_table_find reads the hash at the start of an entry");
static inline bool st_table_is(const char *e, size_t rule_off, const td_rule_key *k) {
    uint64_t h;
    memcpy(&h, e, sizeof h);
    return h == k->hash && memcmp(e + rule_off, k->id, k->len) == 0 && e[rule_off + k->len] == '\0';
}

static uint32_t st_table_scan(const char *p, uint32_t n, size_t elem, size_t rule_off,
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
static inline uint32_t st_table_find(const void *base, uint32_t n, size_t elem, size_t rule_off,
                                     const uint8_t *slots, uint32_t nslots, const td_rule_key *k,
                                     bool pos, bool *found) {
    const char *p = base;
    uint32_t s = slots[k->hash % nslots];
    if (s && s - 1 < n && k->len <= TD_RULE_ID_MAX &&
        st_table_is(p + (size_t)(s - 1) * elem, rule_off, k)) {
        *found = true;
        return s - 1;
    }
    /* an empty slot is a miss: every insertion and removal rebuilds the
     * slots from all entries (st_slots_rebuild, up to UINT8_MAX of them),
     * so no entry has this slot's hash */
    if (!s && !pos && n < UINT8_MAX) {
        *found = false;
        return n;
    }
    return st_table_scan(p, n, elem, rule_off, k, pos, found);
}

/* st_table_find without (or after a miss of) the slot. */
static uint32_t st_table_scan(const char *p, uint32_t n, size_t elem, size_t rule_off,
                              const td_rule_key *k, bool pos, bool *found) {
    *found = false;
    if (k->len > TD_RULE_ID_MAX) return n; /* never stored (set/arm refuse it) */
    if (!pos) {                            /* a lookup: compare hashes, the bytes only on a match */
        for (uint32_t i = 0; i < n; i++) {
            if (st_table_is(p + (size_t)i * elem, rule_off, k)) {
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

static uint32_t st_fired_find(const td_state *st, const td_rule_key *k, bool pos, bool *found) {
    return st_table_find(st->fired, st->nfired, sizeof *st->fired, offsetof(td_fired, rule),
                         st->fired_slot, TD_NELEM(st->fired_slot), k, pos, found);
}

static uint32_t st_timer_find(const td_state *st, const td_rule_key *k, bool pos, bool *found) {
    return st_table_find(st->timers, st->ntimers, sizeof *st->timers, offsetof(td_timer, rule),
                         st->timer_slot, TD_NELEM(st->timer_slot), k, pos, found);
}

/* Re-points every slot after entries moved (an insert or a removal). */
static void st_slots_rebuild(uint8_t *slots, uint32_t nslots, const void *base, uint32_t n,
                             size_t elem) {
    memset(slots, 0, nslots);
    for (uint32_t i = 0; i < n && i < UINT8_MAX; i++) {
        uint64_t h;
        memcpy(&h, (const char *)base + (size_t)i * elem, sizeof h);
        slots[h % nslots] = (uint8_t)(i + 1);
    }
}
static void st_fired_slots(td_state *st) {
    st_slots_rebuild(st->fired_slot, TD_NELEM(st->fired_slot), st->fired, st->nfired,
                     sizeof *st->fired);
}
static void st_timer_slots(td_state *st) {
    st_slots_rebuild(st->timer_slot, TD_NELEM(st->timer_slot), st->timers, st->ntimers,
                     sizeof *st->timers);
}

/* Grows a table by doubling (from 4). Ownership stays with the state. */
static int st_grow(void **p, uint32_t *cap, uint32_t need, size_t elem) {
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
    uint32_t i = st_fired_find(st, rule, false, &found);
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
    uint32_t i = st_fired_find(st, rule, true, &found);
    if (!found) {
        void *p = st->fired;
        if (st_grow(&p, &st->capfired, st->nfired + 1, sizeof *st->fired)) return TD_ERR;
        st->fired = p;
        memmove(&st->fired[i + 1], &st->fired[i], (st->nfired - i) * sizeof *st->fired);
        st->nfired++;
        memset(&st->fired[i], 0, sizeof st->fired[i]);
        memcpy(st->fired[i].rule, rule->id, rule->len);
        st->fired[i].rule[rule->len] = '\0';
        st->fired[i].hash = rule->hash;
        st_fired_slots(st);
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
static int st_armed_acquire(td_state *st, const char *armed_by, size_t al, uint32_t *slot) {
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
        if (st_grow(&p, &st->caparmed, st->narmed + 1, sizeof *st->armed)) return TD_ERR;
        if (p != st->armed) {
            st->armed = p;
            st_armed_repoint(st);
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
    uint32_t i = st_timer_find(st, rule, false, &found);
    return found ? &st->timers[i] : NULL;
}

const td_timer *td_state_timer(const td_state *st, const char *rule) {
    td_rule_key k = td_rule_key_make(rule);
    return td_state_timer_key(st, &k);
}

/* @returns TD_OK, or TD_ERR on out-of-memory or an over-long rule id or
 * armed_by (state unchanged then). */
int td_state_armed_hold(td_state *st, const char *armed_by, size_t al, uint32_t *slot) {
    return st_armed_acquire(st, armed_by, al, slot);
}

void td_state_armed_drop(td_state *st, uint32_t slot) {
    if (slot < st->narmed && st->armed[slot].refs) st->armed[slot].refs--;
}

int td_state_arm_timer_key(td_state *st, const td_rule_key *rule, td_ms due_at,
                           const char *armed_by, size_t al) {
    if (rule->len > TD_RULE_ID_MAX) return TD_ERR;
    uint32_t slot;
    if (st_armed_acquire(st, armed_by, al, &slot) != TD_OK) return TD_ERR;
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
    uint32_t i = st_timer_find(st, rule, true, &found);
    if (!found) {
        void *p = st->timers;
        if (st_grow(&p, &st->captimers, st->ntimers + 1, sizeof *st->timers)) {
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
        st_timer_slots(st);
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
    uint32_t i = st_timer_find(st, rule, false, &found);
    if (!found) return;
    st->armed[st->timers[i].armed_slot].refs--;
    memmove(&st->timers[i], &st->timers[i + 1], (st->ntimers - i - 1) * sizeof *st->timers);
    st->ntimers--;
    st_timer_slots(st);
}

void td_state_disarm_timer(td_state *st, const char *rule) {
    td_rule_key k = td_rule_key_make(rule);
    td_state_disarm_timer_key(st, &k);
}

/* ---------------------------------------------------------------- touches */

static void st_touch_push(td_state *st, td_ms t) {
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
    TD_A_OWNER = 1u << 14,   /* owner.prospect_contacted on an owner's state */
    TD_A_FEEDBACK = 1u << 15 /* recommendation.*: counters (the plan is the engine's) */
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
    [TD_EV_RECOMMENDATION_ACTED] = {TD_CH_NONE, TD_A_FEEDBACK},
    [TD_EV_RECOMMENDATION_DISMISSED] = {TD_CH_NONE, TD_A_FEEDBACK},
    [TD_EV_RECOMMENDATION_SNOOZED] = {TD_CH_NONE, TD_A_FEEDBACK},
    [TD_EV_OWNER_PROSPECT_CONTACTED] = {TD_CH_NONE, TD_A_OWNER},
};

/* Local civil time of t for this prospect: its zone, else the default zone,
 * else UTC. "UTC" (the default) and a NULL tzdb are handled without ICU. */
void td_state_local(const td_state *st, td_tzdb *tz, const td_settings *set, td_ms t,
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

static void st_hist_add(td_state *st, td_tzdb *tz, const td_settings *set, td_ms t) {
    td_civil c;
    td_state_local(st, tz, set, t, &c);
    if (c.hour >= 0 && c.hour < 24 && st->hour_hist[c.hour] < UINT32_MAX) st->hour_hist[c.hour]++;
}

static void st_apply_touch(td_state *st, td_chan_state *c, td_ms t) {
    st_inc(&c->sent);
    st_inc(&c->unanswered);
    st_max_ms(&c->last_sent_at, t);
    st_max_ms(&st->last_touch_at, t);
    st_min_ms(&st->first_touch_at, t);
    st_touch_push(st, t);
}

static void st_apply_reply(td_state *st, td_chan_state *c, const td_event *ev, td_tzdb *tz,
                           const td_settings *set) {
    td_ms t = ev->occurred_at;
    st_inc(&c->replied);
    st_max_ms(&c->last_replied_at, t);
    st_max_ms(&st->last_inbound_at, t);
    /* the prospect answered: silence counters restart on every channel */
    for (int i = 0; i < TD_CH__COUNT; i++) {
        st->ch[i].unanswered = 0;
        st->ch[i].opens_since_reply = 0;
    }
    st_inc(&st->replies);
    st->last_reply_sentiment = (ev->has & TD_HAS_SENTIMENT) ? ev->sentiment : TD_SENT_NONE;
    st_hist_add(st, tz, set, t);
}

static void st_apply_meeting(td_state *st, const td_event *ev) {
    bool has_at = (ev->has & TD_HAS_AT) != 0;
    /* held / cancelled / no_show end the booked meeting they name (or the
     * booked one when they carry no `at`); another booked meeting stays */
    bool ends = !has_at || ev->at == st->next_meeting_at;
    switch (ev->type) {
    case TD_EV_MEETING_BOOKED:
        st_inc(&st->meetings_booked);
        if (has_at) st->next_meeting_at = ev->at;
        break;
    case TD_EV_MEETING_HELD:
        st_inc(&st->meetings_held);
        if (ends) st->next_meeting_at = TD_MS_MISSING;
        break;
    case TD_EV_MEETING_CANCELLED:
        st_inc(&st->meetings_cancelled);
        if (ends) st->next_meeting_at = TD_MS_MISSING;
        break;
    case TD_EV_MEETING_NO_SHOW:
        st_inc(&st->meetings_no_show);
        if (ends) st->next_meeting_at = TD_MS_MISSING;
        break;
    default:
        break;
    }
}

static void st_apply_gift(td_state *st, const td_event *ev, td_tzdb *tz, const td_settings *set) {
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
        st_inc(&st->gifts_year_count);
        st->gifts_year_spend_eur = td_sat_add(st->gifts_year_spend_eur, value);
    } /* else: a late gift of a past year: counted in the total only */
    st_inc(&st->gifts_total);
    if (st->last_gift_at == TD_MS_MISSING || t >= st->last_gift_at) {
        st->last_gift_at = t;
        st->last_gift_kind = (ev->has & TD_HAS_GIFT_KIND) ? ev->gift_kind : TD_GK_NONE;
    }
}

static void st_apply_prospect(td_state *st, const td_event *ev) {
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
    st_inc(&st->events);
    st_min_ms(&st->first_seen_at, t);
    st_max_ms(&st->last_event_at, t);
    if (ev->has & TD_HAS_OWNER) td_strlcpy(st->owner_id, ev->owner_id, sizeof st->owner_id);
    if (!st->prospect_id[0]) td_strlcpy(st->prospect_id, ev->prospect_id, sizeof st->prospect_id);

    if (r.acts & TD_A_PROSPECT) {
        st_apply_prospect(st, ev);
        return TD_OK;
    }
    if (r.acts & TD_A_FEEDBACK) {
        if (ev->type == TD_EV_RECOMMENDATION_ACTED) {
            st_inc(&st->fb_acted);
            st_max_ms(&st->last_acted_at, t);
        } else if (ev->type == TD_EV_RECOMMENDATION_DISMISSED)
            st_inc(&st->fb_dismissed);
        else
            st_inc(&st->fb_snoozed);
        return TD_OK;
    }
    if (r.acts & TD_A_OWNER) {
        /* an owner's state counts the prospects it contacted for the first
         * time as its touches: touches.1d is "new prospects in 24 h" */
        st_max_ms(&st->last_touch_at, t);
        st_min_ms(&st->first_touch_at, t);
        st_touch_push(st, t);
        return TD_OK;
    }
    td_chan_state *c = &st->ch[r.channel];

    if (r.acts & TD_A_TOUCH) st_apply_touch(st, c, t);
    if (r.acts & TD_A_DELIVERED) st_inc(&c->delivered);
    if (r.acts & TD_A_OPEN) {
        /* `human` defaults to true (contract); machine opens (privacy
         * proxies prefetching images) are not attention: ignored */
        bool human = !(ev->has & TD_HAS_HUMAN) || ev->human;
        if (human) {
            st_inc(&c->opened);
            st_inc(&c->opens_since_reply);
            st_max_ms(&c->last_opened_at, t);
            st_hist_add(st, tz, set, t);
        }
    }
    if (r.acts & TD_A_CLICK) st_inc(&c->clicked);
    if (r.acts & TD_A_REPLY) {
        /* an auto-reply is not the prospect answering: sequences go on */
        bool ooo = (ev->has & TD_HAS_SENTIMENT) && ev->sentiment == TD_SENT_OUT_OF_OFFICE;
        if (!ooo) st_apply_reply(st, c, ev, tz, set);
    }
    if (r.acts & TD_A_INBOUND) st_max_ms(&st->last_inbound_at, t);
    if (r.acts & TD_A_FAILED) st_inc(&c->failed);
    if (r.acts & TD_A_BOUNCE) {
        if ((ev->has & TD_HAS_HARD) && ev->hard) {
            if (c->blocked == TD_BLOCK_NONE || c->blocked == TD_BLOCK_OPTED_OUT)
                c->blocked = TD_BLOCK_HARD_BOUNCE;
        } else {
            st_inc(&c->failed);
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
    if (r.acts & TD_A_MEETING) st_apply_meeting(st, ev);
    if (r.acts & TD_A_GIFT) st_apply_gift(st, ev, tz, set);
    return TD_OK;
}
