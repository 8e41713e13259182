/*
 * td_event.h - the input event contract (DESIGN.md "Events in"): decoding and
 * validation of one Kafka message into a fixed-size td_event.
 *
 * A td_event owns no heap memory: every string is copied into bounded arrays,
 * so decoding allocates only inside jansson and a decoded event can be copied
 * with memcpy. Unknown fields (top level or in data) are ignored; a known field
 * with the wrong type or value is a rejection that names the field.
 *
 * @locality any thread; no shared state.
 */
#ifndef TD_EVENT_H
#define TD_EVENT_H

#include "td_base.h"

/* Every event type of the contract, "<channel>.<action>". Order is ABI for
 * nothing: use td_event_type_name/parse. */
typedef enum td_event_type {
    TD_EV_EMAIL_SENT = 0,
    TD_EV_EMAIL_DELIVERED,
    TD_EV_EMAIL_OPENED,
    TD_EV_EMAIL_CLICKED,
    TD_EV_EMAIL_REPLIED,
    TD_EV_EMAIL_BOUNCED,
    TD_EV_EMAIL_UNSUBSCRIBED,
    TD_EV_WHATSAPP_SENT,
    TD_EV_WHATSAPP_DELIVERED,
    TD_EV_WHATSAPP_READ,
    TD_EV_WHATSAPP_REPLIED,
    TD_EV_WHATSAPP_FAILED,
    TD_EV_WHATSAPP_OPTED_IN,
    TD_EV_WHATSAPP_OPTED_OUT,
    TD_EV_SMS_SENT,
    TD_EV_SMS_DELIVERED,
    TD_EV_SMS_READ,
    TD_EV_SMS_REPLIED,
    TD_EV_SMS_FAILED,
    TD_EV_SMS_OPTED_IN,
    TD_EV_SMS_OPTED_OUT,
    TD_EV_LINKEDIN_INVITED,
    TD_EV_LINKEDIN_ACCEPTED,
    TD_EV_LINKEDIN_MESSAGED,
    TD_EV_LINKEDIN_REPLIED,
    TD_EV_CALL_ATTEMPTED,
    TD_EV_CALL_CONNECTED,
    TD_EV_CALL_VOICEMAIL,
    TD_EV_MEETING_BOOKED,
    TD_EV_MEETING_HELD,
    TD_EV_MEETING_CANCELLED,
    TD_EV_MEETING_NO_SHOW,
    TD_EV_GIFT_SENT,
    TD_EV_PROSPECT_UPDATED,
    /* Feedback from notifiers about a recommendation touchd published for
     * this prospect (data.recommendation_id; snoozed: data.until) */
    TD_EV_RECOMMENDATION_ACTED,
    TD_EV_RECOMMENDATION_DISMISSED,
    TD_EV_RECOMMENDATION_SNOOZED,
    /* Derived by the engine (td_step_out.derived) when a prospect gets its
     * first outbound touch; applied to the owner's own state, whose
     * prospect_id is "owner:<owner_id>". A CRM may send it too. */
    TD_EV_OWNER_PROSPECT_CONTACTED,
    TD_EV__COUNT
} td_event_type;

/* "email.opened" etc.; NULL when out of range. */
const char *td_event_type_name(td_event_type t);
/* Parses a type name of `len` bytes; returns -1 when unknown. */
int td_event_type_parse(const char *s, size_t len);
/* The touch channel of a type (TD_CH_NONE for prospect.updated). */
td_channel td_event_type_channel(td_event_type t);

typedef enum td_sentiment {
    TD_SENT_NONE = 0, /* not given */
    TD_SENT_POSITIVE,
    TD_SENT_NEUTRAL,
    TD_SENT_NEGATIVE,
    TD_SENT_OUT_OF_OFFICE
} td_sentiment;
const char *td_sentiment_name(td_sentiment s); /* "" for NONE */

typedef enum td_stage {
    TD_STAGE_NONE = 0, /* never set */
    TD_STAGE_NEW,
    TD_STAGE_CONTACTED,
    TD_STAGE_ENGAGED,
    TD_STAGE_PROPOSAL,
    TD_STAGE_NEGOTIATION,
    TD_STAGE_WON,
    TD_STAGE_LOST
} td_stage;
const char *td_stage_name(td_stage s);         /* "" for NONE */
int td_stage_parse(const char *s, size_t len); /* -1 when unknown */

typedef enum td_gift_policy {
    TD_GP_NONE = 0,
    TD_GP_ALLOWED,
    TD_GP_RESTRICTED,
    TD_GP_FORBIDDEN
} td_gift_policy;
const char *td_gift_policy_name(td_gift_policy p);
int td_gift_policy_parse(const char *s, size_t len);

typedef enum td_gift_kind {
    TD_GK_NONE = 0,
    TD_GK_OBJECT,
    TD_GK_CARD,
    TD_GK_BASKET,
    TD_GK_BOOK,
    TD_GK_EXPERIENCE,
    TD_GK_SERVICE,
    TD_GK_DONATION
} td_gift_kind;
const char *td_gift_kind_name(td_gift_kind k);
int td_gift_kind_parse(const char *s, size_t len);

/* Bits of td_event.has: which optional fields the event carried. */
enum {
    TD_HAS_OWNER = 1u << 0,
    TD_HAS_MESSAGE_ID = 1u << 1,
    TD_HAS_KIND = 1u << 2,
    TD_HAS_HUMAN = 1u << 3,
    TD_HAS_SENTIMENT = 1u << 4,
    TD_HAS_HARD = 1u << 5,
    TD_HAS_DURATION = 1u << 6,
    TD_HAS_AT = 1u << 7,
    TD_HAS_GIFT_KIND = 1u << 8,
    TD_HAS_VALUE = 1u << 9,
    TD_HAS_ITEMS = 1u << 10,
    TD_HAS_WRAPPING = 1u << 11,
    TD_HAS_STAGE = 1u << 12,
    TD_HAS_TIER = 1u << 13,
    TD_HAS_COUNTRY = 1u << 14,
    TD_HAS_SECTOR = 1u << 15,
    TD_HAS_TIMEZONE = 1u << 16,
    TD_HAS_GIFT_POLICY = 1u << 17,
    TD_HAS_CONSENT = 1u << 18,
    TD_HAS_LTV = 1u << 19,
    TD_HAS_LANGUAGE = 1u << 20,
    TD_HAS_DESCRIPTION = 1u << 21,
    TD_HAS_RECOMMENDATION = 1u << 22,
    TD_HAS_UNTIL = 1u << 23
};

/* Consent per channel in a prospect.updated event. */
typedef enum td_tristate { TD_TRI_UNSET = 0, TD_TRI_NO = 1, TD_TRI_YES = 2 } td_tristate;

typedef struct td_event {
    td_event_type type;
    td_channel channel; /* td_event_type_channel(type) */
    uint32_t has;       /* TD_HAS_* bits */
    td_ms occurred_at;
    char id[TD_ID_MAX + 1];
    char prospect_id[TD_ID_MAX + 1];
    char owner_id[TD_ID_MAX + 1]; /* "" unless TD_HAS_OWNER */

    /* data, per type (see DESIGN.md); meaningful only when its has-bit is set */
    char message_id[TD_ID_MAX + 1];
    char kind[TD_SHORT_MAX + 1];     /* email/whatsapp/sms kind: value, follow_up, proposal... */
    bool human;                      /* opened: default true */
    td_sentiment sentiment;          /* replied */
    bool hard;                       /* bounced */
    int64_t duration_s;              /* call.* */
    td_ms at;                        /* meeting.* */
    td_gift_kind gift_kind;          /* gift.sent */
    td_dec value_eur;                /* gift.sent */
    int64_t items;                   /* gift.sent */
    char wrapping[TD_SHORT_MAX + 1]; /* gift.sent: colour/style, e.g. "white" */
    /* gift.sent `description` is validated as a string but never stored: it
     * is free text that may hold personal data. */

    /* prospect.updated */
    td_stage stage;
    int64_t tier;    /* 1..3 */
    char country[3]; /* ISO 3166 alpha-2, upper case */
    char sector[TD_SHORT_MAX + 1];
    char timezone[TD_SHORT_MAX + 1]; /* IANA id, checked for syntax only here */
    td_gift_policy gift_policy;
    td_tristate consent[TD_CH__COUNT];
    td_dec lifetime_value_eur;
    char language[16]; /* BCP 47 tag, e.g. "fr" or "pt-BR" */

    /* recommendation.* (feedback) */
    char recommendation_id[TD_ID_MAX + 1];
    td_ms until; /* snoozed */
} td_event;

/* Whether t is a feedback event (recommendation.*). */
static inline bool td_event_is_feedback(td_event_type t) {
    return t == TD_EV_RECOMMENDATION_ACTED || t == TD_EV_RECOMMENDATION_DISMISSED ||
           t == TD_EV_RECOMMENDATION_SNOOZED;
}

/* Why an event was rejected: the field (JSON path, e.g. "data.value_eur",
 * "" for the message as a whole; a key the sender chose by its position,
 * "data.consent[#3]") and a sentence. Both are printable ASCII and never
 * hold a piece of the message (docs/events.md, "Reasons never echo the
 * message"): they are logged and sent as dead-letter headers. */
typedef struct td_event_error {
    char field[64];
    char reason[192];
} td_event_error;

/*
 * Decodes and validates one message of `len` bytes (not NUL-terminated).
 * Never crashes on any input. On failure `ev` is unspecified and `err` says why:
 * oversize, not UTF-8, not JSON, not an object, missing/ill-typed envelope
 * field, unknown type, bad RFC 3339 time, bad data field value.
 * @returns TD_OK or TD_ERR.
 */
int td_event_decode(const char *buf, size_t len, td_event *ev, td_event_error *err);

#endif
