/*
 * td_event_internal.h - the two decoders behind td_event_decode, for
 * td_event.c, td_event_fast.c and the tests. Not part of the core's API.
 *
 * td_event_decode() tries the fast path first and falls back to the slow
 * path when the fast path declines:
 *
 * - td_event_decode_slow() is the reference: jansson parses the message
 *   (JSON_REJECT_DUPLICATES) and every rejection and its reason come from it.
 * - td_event_decode_fast() is a single pass over the bytes, without
 *   allocation (td_event_scan, td_event_fast.c), over the subset of JSON that
 *   real events use. It declines anything else: escapes in keys, nesting
 *   other than `data` and `data.consent`, arrays, duplicate keys, numbers
 *   jansson might refuse, and any message the event contract rejects. When
 *   it accepts, the slow path would have accepted with a byte-identical
 *   td_event: both fill the event through the same readers (td_event.c),
 *   which see one object either as jansson's tree or as a td_event_doc.
 *
 * tests/fuzz/fuzz_event_diff.c checks that promise on every input.
 *
 * @locality any thread; no shared state.
 */
#ifndef TD_EVENT_INTERNAL_H
#define TD_EVENT_INTERNAL_H

#include "td_event.h"

/* td_event_decode_fast: the message is not in the fast path's subset. */
#define TD_EVENT_DECLINED 1

/*
 * Decodes a message the fast way, or declines (`ev` is then unspecified).
 * Reports no reason: the slow path does, for the same bytes.
 * @returns TD_OK or TD_EVENT_DECLINED.
 */
int td_event_decode_fast(const char *buf, size_t len, td_event *ev);

/* Decodes a message with jansson; exactly td_event_decode's contract. */
int td_event_decode_slow(const char *buf, size_t len, td_event *ev, td_event_error *err);

/* Every key the decoder reads: the envelope's (top level), then data's. */
typedef enum td_event_field {
    TD_EF_ID = 0,
    TD_EF_TYPE,
    TD_EF_PROSPECT_ID,
    TD_EF_OCCURRED_AT,
    TD_EF_OWNER_ID,
    TD_EF_DATA,
    TD_EF_MESSAGE_ID, /* first key of data */
    TD_EF_KIND,
    TD_EF_HUMAN,
    TD_EF_SENTIMENT,
    TD_EF_HARD,
    TD_EF_DURATION_S,
    TD_EF_AT,
    TD_EF_VALUE_EUR,
    TD_EF_ITEMS,
    TD_EF_WRAPPING,
    TD_EF_DESCRIPTION,
    TD_EF_STAGE,
    TD_EF_TIER,
    TD_EF_COUNTRY,
    TD_EF_SECTOR,
    TD_EF_TIMEZONE,
    TD_EF_GIFT_POLICY,
    TD_EF_CONSENT,
    TD_EF_LIFETIME_VALUE_EUR,
    TD_EF_LANGUAGE,
    TD_EF_RECOMMENDATION_ID,
    TD_EF_UNTIL,
    TD_EF__COUNT
} td_event_field;
#define TD_EF_DATA_FIRST TD_EF_MESSAGE_ID

/* A field's key, its JSON path for error messages ("data.kind"), and the
 * key's length. Defined in td_event.c. */
typedef struct td_event_field_name {
    const char *key;
    const char *path;
    size_t len;
} td_event_field_name;
extern const td_event_field_name td_event_fields[TD_EF__COUNT];

/* One JSON value as the readers see it, whichever parser produced it. */
typedef enum td_jv_kind {
    TD_JV_ABSENT = 0, /* no such key */
    TD_JV_NULL,
    TD_JV_FALSE,
    TD_JV_TRUE,
    TD_JV_INTEGER,
    TD_JV_REAL,
    TD_JV_STRING,
    TD_JV_OBJECT,
    TD_JV_ARRAY
} td_jv_kind;

typedef struct td_jv {
    td_jv_kind kind;
    /* STRING: the decoded bytes (escapes resolved; not NUL-terminated).
     * REAL: the number's text as written, when known (NULL in the slow path,
     * where it is found again in the message). */
    const char *s;
    size_t n;
    int64_t i; /* INTEGER */
} td_jv;

/* What the scanner read of a message: the fields present, at their level
 * (TD_EF_DATA_FIRST and after inside `data` only), and data.consent. */
typedef struct td_event_doc {
    uint32_t seen; /* bit f: v[f] is set */
    td_jv v[TD_EF__COUNT];
    td_tristate consent[TD_CH__COUNT]; /* when v[TD_EF_CONSENT] is an object */
    size_t text_used;
    char text[2048]; /* the decoded strings that had escapes */
} td_event_doc;

/*
 * Scans a whole message as JSON into `doc` (td_event_fast.c). Accepts only
 * what jansson's json_loadb(JSON_REJECT_DUPLICATES) accepts, and yields the
 * same values; declines the rest (see the top of this file).
 * @returns TD_OK or TD_EVENT_DECLINED.
 */
int td_event_scan(const char *buf, size_t len, td_event_doc *doc);

/* The length (1..4) of the valid UTF-8 sequence at s (n >= 1 bytes
 * readable), or 0: invalid, overlong, surrogate or beyond U+10FFFF. The
 * rules are jansson's. */
size_t td_utf8_seq_len(const unsigned char *s, size_t n);

#endif
