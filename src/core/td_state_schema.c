/*
 * td_state_schema.c - the schema: the table of fields rule expressions read
 * (td_schema_lookup, td_schema_fields), their getters, and the direct access
 * the compiler uses for the hot ones (td_field_direct). The reducer is
 * td_state.c, the flat form td_state_flat.c.
 *
 * Owns: nothing; the table is immutable. Every getter runs on the engine's
 * hot path and never allocates or takes locks.
 *
 * File-local functions are prefixed ss_ (state schema).
 *
 * @locality any thread; the schema table is immutable.
 */
#include <string.h>

#include "td_state_internal.h"

static inline void ss_v_missing(const td_field *f, td_value *out) {
    out->type = f->type;
    out->missing = true;
    out->u.i = 0;
}
static inline void ss_v_int(const td_field *f, td_value *out, int64_t i) {
    out->type = f->type;
    out->missing = false;
    out->u.i = i;
}
static inline void ss_v_time(const td_field *f, td_value *out, td_ms t) {
    out->type = f->type;
    out->missing = t == TD_MS_MISSING;
    out->u.t = t;
}
static inline void ss_v_bool(const td_field *f, td_value *out, bool b) {
    out->type = f->type;
    out->missing = false;
    out->u.b = b;
}
/* A string: missing when NULL or empty (every string field's "never set"). */
static inline void ss_v_str(const td_field *f, td_value *out, const char *s) {
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
static const td_chan_state *ss_f_chan(const td_field *f, const td_ctx *ctx) {
    int ch = f->channel;
    if (ch < 0) {
        if (!ctx->rec) return NULL;
        ch = ctx->rec->channel;
    }
    if (ch < 0 || ch >= TD_CH__COUNT) return NULL;
    return &ctx->st->ch[ch];
}
static void ss_get_chan_i64(const td_field *f, const td_ctx *ctx, td_value *out) {
    const td_chan_state *c = ss_f_chan(f, ctx);
    if (!c) {
        ss_v_missing(f, out);
        return;
    }
    int64_t x;
    memcpy(&x, (const char *)c + f->offset, sizeof x);
    ss_v_int(f, out, x);
}
static void ss_get_chan_time(const td_field *f, const td_ctx *ctx, td_value *out) {
    const td_chan_state *c = ss_f_chan(f, ctx);
    if (!c) {
        ss_v_missing(f, out);
        return;
    }
    td_ms x;
    memcpy(&x, (const char *)c + f->offset, sizeof x);
    ss_v_time(f, out, x);
}
static void ss_get_chan_blocked(const td_field *f, const td_ctx *ctx, td_value *out) {
    const td_chan_state *c = ss_f_chan(f, ctx);
    if (!c) {
        ss_v_missing(f, out);
        return;
    }
    ss_v_bool(f, out, c->blocked != TD_BLOCK_NONE);
}
static void ss_get_chan_block_reason(const td_field *f, const td_ctx *ctx, td_value *out) {
    const td_chan_state *c = ss_f_chan(f, ctx);
    ss_v_str(f, out, c ? td_block_reason_name(c->blocked) : NULL);
}
static void ss_get_chan_consent(const td_field *f, const td_ctx *ctx, td_value *out) {
    const td_chan_state *c = ss_f_chan(f, ctx);
    if (!c || c->consent == TD_TRI_UNSET) {
        ss_v_missing(f, out);
        return;
    }
    ss_v_bool(f, out, c->consent == TD_TRI_YES);
}

/* -- prospect */
static void ss_get_i64(const td_field *f, const td_ctx *ctx, td_value *out) {
    int64_t x;
    memcpy(&x, (const char *)ctx->st + f->offset, sizeof x);
    ss_v_int(f, out, x);
}
static void ss_get_i64_opt(const td_field *f, const td_ctx *ctx, td_value *out) {
    int64_t x;
    memcpy(&x, (const char *)ctx->st + f->offset, sizeof x);
    if (x == TD_INT_MISSING) {
        ss_v_missing(f, out);
        return;
    }
    ss_v_int(f, out, x);
}
static void ss_get_dec_opt(const td_field *f, const td_ctx *ctx, td_value *out) {
    ss_get_i64_opt(f, ctx, out); /* td_dec and TD_DEC_MISSING match int64 */
}
static void ss_get_time(const td_field *f, const td_ctx *ctx, td_value *out) {
    td_ms x;
    memcpy(&x, (const char *)ctx->st + f->offset, sizeof x);
    ss_v_time(f, out, x);
}
static void ss_get_str(const td_field *f, const td_ctx *ctx, td_value *out) {
    ss_v_str(f, out, (const char *)ctx->st + f->offset);
}
static void ss_get_stage(const td_field *f, const td_ctx *ctx, td_value *out) {
    ss_v_str(f, out, ctx->st->stage ? td_stage_name(ctx->st->stage) : NULL);
}
static void ss_get_gift_policy(const td_field *f, const td_ctx *ctx, td_value *out) {
    ss_v_str(f, out, ctx->st->gift_policy ? td_gift_policy_name(ctx->st->gift_policy) : NULL);
}
static void ss_get_sentiment(const td_field *f, const td_ctx *ctx, td_value *out) {
    td_sentiment s = ctx->st->last_reply_sentiment;
    ss_v_str(f, out, s ? td_sentiment_name(s) : NULL);
}
static void ss_get_gift_kind(const td_field *f, const td_ctx *ctx, td_value *out) {
    td_gift_kind k = ctx->st->last_gift_kind;
    ss_v_str(f, out, k ? td_gift_kind_name(k) : NULL);
}
static void ss_get_replied(const td_field *f, const td_ctx *ctx, td_value *out) {
    ss_v_bool(f, out, ctx->st->replies > 0);
}
static void ss_get_is_new(const td_field *f, const td_ctx *ctx, td_value *out) {
    ss_v_bool(f, out, ctx->st->first_touch_at == TD_MS_MISSING);
}
static void ss_get_touches_1d(const td_field *f, const td_ctx *ctx, td_value *out) {
    ss_v_int(f, out, td_state_touches_within(ctx->st, ctx->now, TD_DAY));
}
static void ss_get_touches_7d(const td_field *f, const td_ctx *ctx, td_value *out) {
    ss_v_int(f, out, td_state_touches_within(ctx->st, ctx->now, TD_WEEK));
}
static void ss_get_touches_30d(const td_field *f, const td_ctx *ctx, td_value *out) {
    ss_v_int(f, out, td_state_touches_within(ctx->st, ctx->now, 30 * TD_DAY));
}
static void ss_get_touches_total(const td_field *f, const td_ctx *ctx, td_value *out) {
    int64_t n = 0;
    for (int c = 0; c < TD_CH__COUNT; c++)
        n = td_sat_add(n, ctx->st->ch[c].sent);
    ss_v_int(f, out, n);
}
static void ss_get_points(const td_field *f, const td_ctx *ctx, td_value *out) {
    int64_t n = 0;
    for (int h = 0; h < 24; h++)
        n += ctx->st->hour_hist[h];
    ss_v_int(f, out, n);
}
static void ss_get_gifts_year_count(const td_field *f, const td_ctx *ctx, td_value *out) {
    td_civil c;
    td_state_local(ctx->st, ctx->tz, ctx->settings, ctx->now, &c);
    ss_v_int(f, out, c.year == ctx->st->gift_year ? ctx->st->gifts_year_count : 0);
}
static void ss_get_gifts_recommended(const td_field *f, const td_ctx *ctx, td_value *out) {
    td_civil c;
    td_state_local(ctx->st, ctx->tz, ctx->settings, ctx->now, &c);
    ss_v_int(f, out, c.year == ctx->st->gift_rec_year ? ctx->st->gift_recs_year : 0);
}
static void ss_get_gifts_year_spend(const td_field *f, const td_ctx *ctx, td_value *out) {
    td_civil c;
    td_state_local(ctx->st, ctx->tz, ctx->settings, ctx->now, &c);
    ss_v_int(f, out, c.year == ctx->st->gift_year ? ctx->st->gifts_year_spend_eur : 0);
}
static void ss_get_local_hour(const td_field *f, const td_ctx *ctx, td_value *out) {
    td_civil c;
    td_state_local(ctx->st, ctx->tz, ctx->settings, ctx->now, &c);
    ss_v_int(f, out, c.hour);
}
static void ss_get_local_weekday(const td_field *f, const td_ctx *ctx, td_value *out) {
    td_civil c;
    td_state_local(ctx->st, ctx->tz, ctx->settings, ctx->now, &c);
    ss_v_int(f, out, c.weekday);
}
static void ss_get_local_month(const td_field *f, const td_ctx *ctx, td_value *out) {
    td_civil c;
    td_state_local(ctx->st, ctx->tz, ctx->settings, ctx->now, &c);
    ss_v_int(f, out, c.month);
}

/* -- event.*: missing on timer triggers and when the event lacks the field */
#define TD_EV_GETTER(name, bit, expr_setter)                                                       \
    static void name(const td_field *f, const td_ctx *ctx, td_value *out) {                        \
        const td_event *ev = ctx->ev;                                                              \
        if (!ev || ((bit) && !(ev->has & (bit)))) {                                                \
            ss_v_missing(f, out);                                                                  \
            return;                                                                                \
        }                                                                                          \
        expr_setter;                                                                               \
    }
TD_EV_GETTER(ss_get_ev_type, 0, ss_v_str(f, out, td_event_type_name(ev->type)))
TD_EV_GETTER(ss_get_ev_channel, 0,
             ss_v_str(f, out, ev->channel == TD_CH_NONE ? NULL : td_channel_name(ev->channel)))
TD_EV_GETTER(ss_get_ev_kind, TD_HAS_KIND, ss_v_str(f, out, ev->kind))
TD_EV_GETTER(ss_get_ev_sentiment, TD_HAS_SENTIMENT,
             ss_v_str(f, out, ev->sentiment ? td_sentiment_name(ev->sentiment) : NULL))
TD_EV_GETTER(ss_get_ev_owner, TD_HAS_OWNER, ss_v_str(f, out, ev->owner_id))
TD_EV_GETTER(ss_get_ev_gift_kind, TD_HAS_GIFT_KIND,
             ss_v_str(f, out, ev->gift_kind ? td_gift_kind_name(ev->gift_kind) : NULL))
TD_EV_GETTER(ss_get_ev_wrapping, TD_HAS_WRAPPING, ss_v_str(f, out, ev->wrapping))
TD_EV_GETTER(ss_get_ev_hard, TD_HAS_HARD, ss_v_bool(f, out, ev->hard))
TD_EV_GETTER(ss_get_ev_occurred, 0, ss_v_time(f, out, ev->occurred_at))
TD_EV_GETTER(ss_get_ev_at, TD_HAS_AT, ss_v_time(f, out, ev->at))
TD_EV_GETTER(ss_get_ev_value, TD_HAS_VALUE,
             ev->value_eur == TD_DEC_MISSING ? ss_v_missing(f, out)
                                             : ss_v_int(f, out, ev->value_eur))
TD_EV_GETTER(ss_get_ev_items, TD_HAS_ITEMS, ss_v_int(f, out, ev->items))
TD_EV_GETTER(ss_get_ev_duration, TD_HAS_DURATION, ss_v_int(f, out, ev->duration_s))
TD_EV_GETTER(ss_get_ev_tier, TD_HAS_TIER, ss_v_int(f, out, ev->tier))
TD_EV_GETTER(ss_get_ev_stage, TD_HAS_STAGE,
             ss_v_str(f, out, ev->stage ? td_stage_name(ev->stage) : NULL))

/* event.human: the contract's default (true) applies to email.opened without
 * the field; other types do not have it. */
static void ss_get_ev_human(const td_field *f, const td_ctx *ctx, td_value *out) {
    const td_event *ev = ctx->ev;
    if (!ev) {
        ss_v_missing(f, out);
        return;
    }
    if (ev->has & TD_HAS_HUMAN) {
        ss_v_bool(f, out, ev->human);
        return;
    }
    if (ev->type == TD_EV_EMAIL_OPENED) {
        ss_v_bool(f, out, true);
        return;
    }
    ss_v_missing(f, out);
}

/* -- rec.*: guards only */
static void ss_get_rec_channel(const td_field *f, const td_ctx *ctx, td_value *out) {
    const td_rec_view *r = ctx->rec;
    ss_v_str(f, out,
             r && r->channel >= 0 && r->channel < TD_CH__COUNT ? td_channel_name(r->channel)
                                                               : NULL);
}
static void ss_get_rec_touch(const td_field *f, const td_ctx *ctx, td_value *out) {
    ss_v_str(f, out, ctx->rec ? ctx->rec->touch : NULL);
}
static void ss_get_rec_rule(const td_field *f, const td_ctx *ctx, td_value *out) {
    ss_v_str(f, out, ctx->rec ? ctx->rec->rule : NULL);
}
static void ss_get_rec_group(const td_field *f, const td_ctx *ctx, td_value *out) {
    ss_v_str(f, out, ctx->rec ? ctx->rec->group : NULL);
}
static void ss_get_rec_priority(const td_field *f, const td_ctx *ctx, td_value *out) {
    if (!ctx->rec) {
        ss_v_missing(f, out);
        return;
    }
    ss_v_int(f, out, ctx->rec->priority);
}
static void ss_get_rec_not_before(const td_field *f, const td_ctx *ctx, td_value *out) {
    if (!ctx->rec) {
        ss_v_missing(f, out);
        return;
    }
    ss_v_time(f, out, ctx->rec->not_before);
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
     ss_get_chan_i64,                                                                              \
     ID,                                                                                           \
     C_(sent),                                                                                     \
     "Outbound touches sent on " WHO "."},                                                         \
        {C ".delivered",                                                                           \
         TD_T_INT,                                                                                 \
         SCOPE,                                                                                    \
         ss_get_chan_i64,                                                                          \
         ID,                                                                                       \
         C_(delivered),                                                                            \
         "Delivery receipts on " WHO "."},                                                         \
        {C ".opened",                                                                              \
         TD_T_INT,                                                                                 \
         SCOPE,                                                                                    \
         ss_get_chan_i64,                                                                          \
         ID,                                                                                       \
         C_(opened),                                                                               \
         "Human opens/reads on " WHO " (machine opens excluded)."},                                \
        {C ".clicked", TD_T_INT, SCOPE, ss_get_chan_i64, ID, C_(clicked), "Clicks on " WHO "."},   \
        {C ".replied",                                                                             \
         TD_T_INT,                                                                                 \
         SCOPE,                                                                                    \
         ss_get_chan_i64,                                                                          \
         ID,                                                                                       \
         C_(replied),                                                                              \
         "Replies on " WHO " (out-of-office excluded)."},                                          \
        {C ".failed",                                                                              \
         TD_T_INT,                                                                                 \
         SCOPE,                                                                                    \
         ss_get_chan_i64,                                                                          \
         ID,                                                                                       \
         C_(failed),                                                                               \
         "Failed sends and soft bounces on " WHO "."},                                             \
        {C ".unanswered",                                                                          \
         TD_T_INT,                                                                                 \
         SCOPE,                                                                                    \
         ss_get_chan_i64,                                                                          \
         ID,                                                                                       \
         C_(unanswered),                                                                           \
         "Touches on " WHO " since the prospect last replied (any channel)."},                     \
        {C ".opens_since_reply",                                                                   \
         TD_T_INT,                                                                                 \
         SCOPE,                                                                                    \
         ss_get_chan_i64,                                                                          \
         ID,                                                                                       \
         C_(opens_since_reply),                                                                    \
         "Human opens on " WHO " since the prospect last replied (any channel)."},                 \
        {C ".last_sent_at",                                                                        \
         TD_T_TIME,                                                                                \
         SCOPE,                                                                                    \
         ss_get_chan_time,                                                                         \
         ID,                                                                                       \
         C_(last_sent_at),                                                                         \
         "Latest outbound touch on " WHO "; missing when never."},                                 \
        {C ".last_opened_at",                                                                      \
         TD_T_TIME,                                                                                \
         SCOPE,                                                                                    \
         ss_get_chan_time,                                                                         \
         ID,                                                                                       \
         C_(last_opened_at),                                                                       \
         "Latest human open on " WHO "; missing when never."},                                     \
        {C ".last_replied_at",                                                                     \
         TD_T_TIME,                                                                                \
         SCOPE,                                                                                    \
         ss_get_chan_time,                                                                         \
         ID,                                                                                       \
         C_(last_replied_at),                                                                      \
         "Latest reply on " WHO "; missing when never."},                                          \
        {C ".blocked",                                                                             \
         TD_T_BOOL,                                                                                \
         SCOPE,                                                                                    \
         ss_get_chan_blocked,                                                                      \
         ID,                                                                                       \
         0,                                                                                        \
         "True when " WHO " is blocked for good (unsubscribe, hard bounce, opt-out)."},            \
        {C ".block_reason",                                                                        \
         TD_T_STR,                                                                                 \
         SCOPE,                                                                                    \
         ss_get_chan_block_reason,                                                                 \
         ID,                                                                                       \
         0,                                                                                        \
         "unsubscribed, hard_bounce or opted_out; missing when not blocked."},                     \
    {                                                                                              \
        C ".consent", TD_T_BOOL, SCOPE, ss_get_chan_consent, ID, 0,                                \
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

    TD_P("prospect_id", TD_T_STR, ss_get_str, S_(prospect_id), "The prospect's id."),
    TD_P("owner_id", TD_T_STR, ss_get_str, S_(owner_id),
         "The seller: owner_id of the latest event that carried one; missing when unknown."),
    TD_P("stage", TD_T_STR, ss_get_stage, 0,
         "CRM stage: new, contacted, engaged, proposal, negotiation, won, lost; missing when "
         "unset."),
    TD_P("country", TD_T_STR, ss_get_str, S_(country),
         "ISO 3166 alpha-2 country; missing when unset."),
    TD_P("sector", TD_T_STR, ss_get_str, S_(sector), "CRM sector; missing when unset."),
    TD_P("timezone", TD_T_STR, ss_get_str, S_(timezone),
         "IANA time zone of the prospect; missing when unset (the default zone applies)."),
    TD_P("gift_policy", TD_T_STR, ss_get_gift_policy, 0,
         "allowed, restricted or forbidden; missing when unset."),
    TD_P("language", TD_T_STR, ss_get_str, S_(language),
         "BCP 47 language tag; missing when unset."),
    TD_P("tier", TD_T_INT, ss_get_i64_opt, S_(tier),
         "1 strategic, 2 important, 3 transactional; missing when unset."),
    TD_P("lifetime_value_eur", TD_T_DEC, ss_get_dec_opt, S_(lifetime_value_eur),
         "Lifetime value in EUR from the CRM; missing when unset."),
    TD_P("first_seen_at", TD_T_TIME, ss_get_time, S_(first_seen_at),
         "Earliest event time applied."),
    TD_P("last_event_at", TD_T_TIME, ss_get_time, S_(last_event_at), "Latest event time applied."),
    TD_P("last_touch_at", TD_T_TIME, ss_get_time, S_(last_touch_at),
         "Latest outbound touch, any channel; missing when never."),
    TD_P("last_inbound_at", TD_T_TIME, ss_get_time, S_(last_inbound_at),
         "Latest reply, connected call or LinkedIn accept; missing when never."),
    TD_P("first_touch_at", TD_T_TIME, ss_get_time, S_(first_touch_at),
         "Earliest outbound touch, any channel; missing when never."),
    TD_P("stage_changed_at", TD_T_TIME, ss_get_time, S_(stage_changed_at),
         "When the CRM stage last changed; missing when never set."),
    TD_P("next_meeting_at", TD_T_TIME, ss_get_time, S_(next_meeting_at),
         "`at` of the booked meeting not yet held/cancelled/no-show; missing when none."),
    TD_P("last_gift_at", TD_T_TIME, ss_get_time, S_(last_gift_at),
         "Latest gift sent; missing when never."),
    TD_P("replied", TD_T_BOOL, ss_get_replied, 0,
         "True once the prospect has replied on any channel (out-of-office excluded)."),
    TD_P("replies", TD_T_INT, ss_get_i64, S_(replies),
         "Replies on any channel, out-of-office excluded (connected calls count)."),
    TD_P("events", TD_T_INT, ss_get_i64, S_(events), "Events applied to this prospect."),
    TD_P("last_reply_sentiment", TD_T_STR, ss_get_sentiment, 0,
         "positive, neutral or negative of the latest reply; missing when not given."),
    TD_P("meetings.booked", TD_T_INT, ss_get_i64, S_(meetings_booked), "meeting.booked events."),
    TD_P("meetings.held", TD_T_INT, ss_get_i64, S_(meetings_held), "meeting.held events."),
    TD_P("meetings.cancelled", TD_T_INT, ss_get_i64, S_(meetings_cancelled),
         "meeting.cancelled events."),
    TD_P("meetings.no_show", TD_T_INT, ss_get_i64, S_(meetings_no_show), "meeting.no_show events."),
    TD_P("touches.1d", TD_T_INT, ss_get_touches_1d, 0,
         "Outbound touches, any channel, in the 24 hours up to now."),
    TD_P("touches.7d", TD_T_INT, ss_get_touches_7d, 0,
         "Outbound touches, any channel, in the 7 days up to now."),
    TD_P("touches.30d", TD_T_INT, ss_get_touches_30d, 0,
         "Outbound touches, any channel, in the 30 days up to now (at most the last 64)."),
    TD_P("touches.total", TD_T_INT, ss_get_touches_total, 0,
         "Outbound touches ever, any channel (sum of C.sent)."),
    TD_P("gifts.year_count", TD_T_INT, ss_get_gifts_year_count, 0,
         "Gifts sent in the prospect's local calendar year of now."),
    TD_P("gifts.year_spend_eur", TD_T_DEC, ss_get_gifts_year_spend, 0,
         "EUR spent on gifts in the prospect's local calendar year of now."),
    TD_P("gifts.total", TD_T_INT, ss_get_i64, S_(gifts_total), "Gifts sent ever."),
    TD_P("gifts.recommended_year", TD_T_INT, ss_get_gifts_recommended, 0,
         "Gift touches touchd recommended in the prospect's local calendar year of now and "
         "that were not dismissed (whatever the CRM reports as sent)."),
    TD_P("feedback.acted", TD_T_INT, ss_get_i64, S_(fb_acted),
         "Recommendations the notifiers acted on (recommendation.acted)."),
    TD_P("feedback.dismissed", TD_T_INT, ss_get_i64, S_(fb_dismissed),
         "Recommendations the notifiers dismissed (recommendation.dismissed)."),
    TD_P("feedback.snoozed", TD_T_INT, ss_get_i64, S_(fb_snoozed),
         "Recommendations the notifiers snoozed (recommendation.snoozed)."),
    TD_P("last_acted_at", TD_T_TIME, ss_get_time, S_(last_acted_at),
         "When a notifier last acted on a recommendation (missing if never)."),
    TD_P("gifts.last_kind", TD_T_STR, ss_get_gift_kind, 0,
         "Kind of the latest gift (object, card, ...); missing when never or not given."),
    TD_P("engagement.points", TD_T_INT, ss_get_points, 0,
         "Human opens and replies counted in the local-hour histogram."),
    TD_P("is_new", TD_T_BOOL, ss_get_is_new, 0, "True until the first outbound touch."),
    TD_P("local.hour", TD_T_INT, ss_get_local_hour, 0,
         "Hour (0..23) of now in the prospect's zone."),
    TD_P("local.weekday", TD_T_INT, ss_get_local_weekday, 0,
         "Weekday of now in the prospect's zone: 1 Monday .. 7 Sunday."),
    TD_P("local.month", TD_T_INT, ss_get_local_month, 0,
         "Month (1..12) of now in the prospect's zone."),

    {"event.type", TD_T_STR, E_, ss_get_ev_type, -1, 0, "Type of the triggering event."},
    {"event.channel", TD_T_STR, E_, ss_get_ev_channel, -1, 0,
     "Channel of the triggering event; missing for prospect.updated."},
    {"event.kind", TD_T_STR, E_, ss_get_ev_kind, -1, 0,
     "data.kind (value, follow_up, proposal...)."},
    {"event.sentiment", TD_T_STR, E_, ss_get_ev_sentiment, -1, 0, "data.sentiment of a reply."},
    {"event.owner_id", TD_T_STR, E_, ss_get_ev_owner, -1, 0, "owner_id carried by the event."},
    {"event.gift_kind", TD_T_STR, E_, ss_get_ev_gift_kind, -1, 0, "data.kind of gift.sent."},
    {"event.wrapping", TD_T_STR, E_, ss_get_ev_wrapping, -1, 0, "data.wrapping of gift.sent."},
    {"event.human", TD_T_BOOL, E_, ss_get_ev_human, -1, 0,
     "data.human of an open (true when email.opened omits it)."},
    {"event.hard", TD_T_BOOL, E_, ss_get_ev_hard, -1, 0, "data.hard of email.bounced."},
    {"event.occurred_at", TD_T_TIME, E_, ss_get_ev_occurred, -1, 0, "occurred_at of the event."},
    {"event.at", TD_T_TIME, E_, ss_get_ev_at, -1, 0, "data.at of a meeting event."},
    {"event.value_eur", TD_T_DEC, E_, ss_get_ev_value, -1, 0, "data.value_eur of gift.sent."},
    {"event.items", TD_T_INT, E_, ss_get_ev_items, -1, 0, "data.items of gift.sent."},
    {"event.duration_s", TD_T_INT, E_, ss_get_ev_duration, -1, 0, "data.duration_s of a call."},
    {"event.tier", TD_T_INT, E_, ss_get_ev_tier, -1, 0, "data.tier of prospect.updated."},
    {"event.stage", TD_T_STR, E_, ss_get_ev_stage, -1, 0, "data.stage of prospect.updated."},

    {"rec.channel", TD_T_STR, G_, ss_get_rec_channel, -1, 0,
     "Channel of the recommendation judged."},
    {"rec.touch", TD_T_STR, G_, ss_get_rec_touch, -1, 0, "Touch of the recommendation judged."},
    {"rec.rule", TD_T_STR, G_, ss_get_rec_rule, -1, 0, "Rule id of the recommendation judged."},
    {"rec.group", TD_T_STR, G_, ss_get_rec_group, -1, 0,
     "Group of the recommendation judged; missing when none."},
    {"rec.priority", TD_T_INT, G_, ss_get_rec_priority, -1, 0, "Priority of the recommendation."},
    {"rec.not_before", TD_T_TIME, G_, ss_get_rec_not_before, -1, 0,
     "not_before of the recommendation judged."},
    TD_CHAN_FIELDS("target", -1, G_, "the recommendation's channel"),
};

/* The strings of the enum fields, exactly as their getters give them. */
static const char *ss_en_stage(int c) { return c ? td_stage_name((td_stage)c) : NULL; }
static const char *ss_en_gift_policy(int c) {
    return c ? td_gift_policy_name((td_gift_policy)c) : NULL;
}
static const char *ss_en_sentiment(int c) { return c ? td_sentiment_name((td_sentiment)c) : NULL; }
static const char *ss_en_gift_kind(int c) { return c ? td_gift_kind_name((td_gift_kind)c) : NULL; }

/* The evaluator reads enum codes as int. */
_Static_assert(sizeof(td_stage) == sizeof(int) && sizeof(td_gift_policy) == sizeof(int) &&
                   sizeof(td_sentiment) == sizeof(int) && sizeof(td_gift_kind) == sizeof(int),
               "enum fields must be int-sized");

td_field_access td_field_direct(const td_field *f, size_t *off, td_enum_name_fn *enum_name) {
    /* per-channel fields of a fixed channel live at a fixed place too */
    size_t chan = f->channel >= 0 && f->channel < TD_CH__COUNT
                      ? offsetof(td_state, ch) + (size_t)f->channel * sizeof(td_chan_state)
                      : 0;
    if (f->get == ss_get_i64) {
        *off = f->offset;
        return TD_FA_I64;
    }
    if (f->get == ss_get_i64_opt || f->get == ss_get_dec_opt || f->get == ss_get_time) {
        *off = f->offset;
        return TD_FA_I64_OPT;
    }
    if (f->get == ss_get_chan_i64 && chan) {
        *off = chan + f->offset;
        return TD_FA_I64;
    }
    if (f->get == ss_get_chan_time && chan) {
        *off = chan + f->offset;
        return TD_FA_I64_OPT;
    }
    static const struct {
        td_field_get_fn get;
        size_t off;
        td_enum_name_fn name;
    } enums[] = {
        {ss_get_stage, offsetof(td_state, stage), ss_en_stage},
        {ss_get_gift_policy, offsetof(td_state, gift_policy), ss_en_gift_policy},
        {ss_get_sentiment, offsetof(td_state, last_reply_sentiment), ss_en_sentiment},
        {ss_get_gift_kind, offsetof(td_state, last_gift_kind), ss_en_gift_kind},
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
