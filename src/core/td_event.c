/*
 * td_event.c - decoding and validation of input events (DESIGN.md "Events
 * in"; the contract as implemented is docs/events.md).
 *
 * Design:
 * - Two paths, one meaning (td_event_internal.h). The slow path: jansson
 *   parses (it validates UTF-8, rejects "\u0000" escapes and, with
 *   JSON_REJECT_DUPLICATES, duplicate keys); this file then reads the known
 *   fields with direct lookups and copies what it keeps into the fixed-size
 *   td_event. The only heap memory is jansson's tree, freed before return.
 *   The fast path, tried first: td_event_fast.c scans the bytes once, with
 *   no allocation, into a td_event_doc, and declines anything outside the
 *   plain JSON real events use (and any message the contract rejects); the
 *   slow path then runs as if the fast one did not exist, so every
 *   rejection and its words come from it. Both paths fill the td_event
 *   through the same readers, which see an object through a `view`; only
 *   `member` knows which parser is behind it. A scan costs a few thousand
 *   instructions, jansson's tree about ten times that.
 * - Cheap checks come first (size, NUL bytes) so hostile input costs little.
 *   Error paths may be slower (formatting, a UTF-8 scan to say why jansson
 *   failed); the accept path does no formatting and no extra allocation.
 * - Duplicate keys are rejected: with two "type" or two "value_eur" keys,
 *   which one wins is parser trivia, and an event whose meaning is ambiguous
 *   must not be applied. It also lets the decimal scanner below trust that a
 *   key names exactly one value.
 * - Money is exact. A JSON number with a fraction reaches jansson as a
 *   double, which cannot hold 0.1. For those (and only those) the raw text of
 *   the number is found again in the message by a small scanner over the
 *   already-validated JSON and parsed digit by digit into a td_dec. (The
 *   fast path has the text at hand and feeds the same parser.)
 * - JSON null on an optional field means "not given"; on a required field it
 *   is "missing". Many CRM serialisers write null for unset fields.
 * - Rejection reasons never echo the message: not a value, not a key, not a
 *   piece of jansson's text around an error. Payloads carry personal data
 *   (names, emails, phone numbers) and reasons go to the log and to the
 *   dead-letter headers. A reason says what the field must be and what it
 *   was instead in words the decoder chose: its JSON type ("got a string"),
 *   its length ("got 140"), a byte offset or a line and column. A field
 *   path names only fields of the schema; a key the sender chose (the one
 *   object with free keys is data.consent) is named by its position among
 *   its object's keys, "data.consent[#3]" (docs/events.md). So field and
 *   reason are always printable ASCII, whatever the message held.
 *
 * @locality any thread; no shared state.
 */
#include "td_event.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <pthread.h>

#include "td_event_internal.h"
#include "td_time.h"

/* ---- names ---- */

/* Names with their lengths: the parser compares lengths before bytes. */
static const struct {
    const char *name;
    size_t len;
} event_types[TD_EV__COUNT] = {
#define N(s)                                                                                       \
    { s, sizeof s - 1 }
    N("email.sent"),
    N("email.delivered"),
    N("email.opened"),
    N("email.clicked"),
    N("email.replied"),
    N("email.bounced"),
    N("email.unsubscribed"),
    N("whatsapp.sent"),
    N("whatsapp.delivered"),
    N("whatsapp.read"),
    N("whatsapp.replied"),
    N("whatsapp.failed"),
    N("whatsapp.opted_in"),
    N("whatsapp.opted_out"),
    N("sms.sent"),
    N("sms.delivered"),
    N("sms.read"),
    N("sms.replied"),
    N("sms.failed"),
    N("sms.opted_in"),
    N("sms.opted_out"),
    N("linkedin.invited"),
    N("linkedin.accepted"),
    N("linkedin.messaged"),
    N("linkedin.replied"),
    N("call.attempted"),
    N("call.connected"),
    N("call.voicemail"),
    N("meeting.booked"),
    N("meeting.held"),
    N("meeting.cancelled"),
    N("meeting.no_show"),
    N("gift.sent"),
    N("prospect.updated"),
    N("recommendation.acted"),
    N("recommendation.dismissed"),
    N("recommendation.snoozed"),
    N("owner.prospect_contacted"),
#undef N
};

const char *td_event_type_name(td_event_type t) {
    if ((int)t < 0 || t >= TD_EV__COUNT) return NULL;
    return event_types[t].name;
}

int td_event_type_parse(const char *s, size_t len) {
    if (s == NULL || len == 0) return -1;
    for (int i = 0; i < TD_EV__COUNT; i++) {
        /* Length and first byte reject almost every entry without a
         * memcmp; 35 entries is too few to need a hash. */
        if (event_types[i].len == len && event_types[i].name[0] == s[0] &&
            memcmp(event_types[i].name, s, len) == 0)
            return i;
    }
    return -1;
}

td_channel td_event_type_channel(td_event_type t) {
    if (t <= TD_EV_EMAIL_UNSUBSCRIBED) return TD_CH_EMAIL;
    if (t <= TD_EV_WHATSAPP_OPTED_OUT) return TD_CH_WHATSAPP;
    if (t <= TD_EV_SMS_OPTED_OUT) return TD_CH_SMS;
    if (t <= TD_EV_LINKEDIN_REPLIED) return TD_CH_LINKEDIN;
    if (t <= TD_EV_CALL_VOICEMAIL) return TD_CH_CALL;
    if (t <= TD_EV_MEETING_NO_SHOW) return TD_CH_MEETING;
    if (t == TD_EV_GIFT_SENT) return TD_CH_GIFT;
    return TD_CH_NONE;
}

/* An enumeration's wire names, index 0 being "not given". */
typedef struct name_set {
    const char *const *names;
    int count;
    const char *list; /* for error messages */
} name_set;

static const char *const sentiment_names[] = {"", "positive", "neutral", "negative",
                                              "out_of_office"};
static const char *const stage_names[] = {"",         "new",         "contacted", "engaged",
                                          "proposal", "negotiation", "won",       "lost"};
static const char *const gift_policy_names[] = {"", "allowed", "restricted", "forbidden"};
static const char *const gift_kind_names[] = {"",     "object",     "card",    "basket",
                                              "book", "experience", "service", "donation"};

static const name_set sentiments = {sentiment_names, 5,
                                    "positive, neutral, negative, out_of_office"};
static const name_set stages = {stage_names, 8,
                                "new, contacted, engaged, proposal, negotiation, won, lost"};
static const name_set gift_policies = {gift_policy_names, 4, "allowed, restricted, forbidden"};
static const name_set gift_kinds = {gift_kind_names, 8,
                                    "object, card, basket, book, experience, service, donation"};

static const char *set_name(const name_set *set, int v) {
    return v >= 0 && v < set->count ? set->names[v] : "";
}

/* The index (>= 1) of a name, or -1. Case-sensitive: the wire names are. */
static int set_parse(const name_set *set, const char *s, size_t len) {
    if (s == NULL) return -1;
    for (int i = 1; i < set->count; i++)
        if (strlen(set->names[i]) == len && memcmp(set->names[i], s, len) == 0) return i;
    return -1;
}

const char *td_sentiment_name(td_sentiment s) { return set_name(&sentiments, (int)s); }
const char *td_stage_name(td_stage s) { return set_name(&stages, (int)s); }
int td_stage_parse(const char *s, size_t len) { return set_parse(&stages, s, len); }
const char *td_gift_policy_name(td_gift_policy p) { return set_name(&gift_policies, (int)p); }
int td_gift_policy_parse(const char *s, size_t len) { return set_parse(&gift_policies, s, len); }
const char *td_gift_kind_name(td_gift_kind k) { return set_name(&gift_kinds, (int)k); }
int td_gift_kind_parse(const char *s, size_t len) { return set_parse(&gift_kinds, s, len); }

/* ---- errors ---- */

/* Fills err; always returns TD_ERR so call sites can `return fail(...)`. */
static int fail(td_event_error *err, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(td_event_error *err, const char *field, const char *fmt, ...) {
    td_strlcpy(err->field, field, sizeof err->field);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->reason, sizeof err->reason, fmt, ap);
    va_end(ap);
    return TD_ERR;
}

size_t td_utf8_seq_len(const unsigned char *s, size_t n) {
    unsigned char c = s[0];
    if (c < 0x80) return 1;
    size_t need;
    uint32_t cp, min;
    if (c >= 0xc2 && c <= 0xdf) {
        need = 1, cp = c & 0x1f, min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
        need = 2, cp = c & 0x0f, min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        need = 3, cp = c & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (n <= need) return 0;
    for (size_t k = 1; k <= need; k++) {
        if ((s[k] & 0xc0) != 0x80) return 0;
        cp = (cp << 6) | (s[k] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
    return need + 1;
}

/* Byte offset of the first invalid UTF-8 sequence, or -1 when valid. Used on
 * the error path only, to say why jansson refused the message. */
static long utf8_invalid_at(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        size_t k = td_utf8_seq_len(s + i, n - i);
        if (k == 0) return (long)i;
        i += k;
    }
    return -1;
}

/* ---- one object, two parsers ----
 *
 * The readers below see an object through a `view`: jansson's tree (the slow
 * path) or the fast scanner's td_event_doc (td_event_fast.c). Only `member`
 * knows which; which fields are read, required, ranged, defaulted and
 * has-flagged is one code for both paths, so the fast path cannot drift from
 * the slow one. */

const td_event_field_name td_event_fields[TD_EF__COUNT] = {
#define F(key, path)                                                                               \
    { key, path, sizeof key - 1 }
    [TD_EF_ID] = F("id", "id"),
    [TD_EF_TYPE] = F("type", "type"),
    [TD_EF_PROSPECT_ID] = F("prospect_id", "prospect_id"),
    [TD_EF_OCCURRED_AT] = F("occurred_at", "occurred_at"),
    [TD_EF_OWNER_ID] = F("owner_id", "owner_id"),
    [TD_EF_DATA] = F("data", "data"),
    [TD_EF_MESSAGE_ID] = F("message_id", "data.message_id"),
    [TD_EF_KIND] = F("kind", "data.kind"),
    [TD_EF_HUMAN] = F("human", "data.human"),
    [TD_EF_SENTIMENT] = F("sentiment", "data.sentiment"),
    [TD_EF_HARD] = F("hard", "data.hard"),
    [TD_EF_DURATION_S] = F("duration_s", "data.duration_s"),
    [TD_EF_AT] = F("at", "data.at"),
    [TD_EF_VALUE_EUR] = F("value_eur", "data.value_eur"),
    [TD_EF_ITEMS] = F("items", "data.items"),
    [TD_EF_WRAPPING] = F("wrapping", "data.wrapping"),
    [TD_EF_DESCRIPTION] = F("description", "data.description"),
    [TD_EF_STAGE] = F("stage", "data.stage"),
    [TD_EF_TIER] = F("tier", "data.tier"),
    [TD_EF_COUNTRY] = F("country", "data.country"),
    [TD_EF_SECTOR] = F("sector", "data.sector"),
    [TD_EF_TIMEZONE] = F("timezone", "data.timezone"),
    [TD_EF_GIFT_POLICY] = F("gift_policy", "data.gift_policy"),
    [TD_EF_CONSENT] = F("consent", "data.consent"),
    [TD_EF_LIFETIME_VALUE_EUR] = F("lifetime_value_eur", "data.lifetime_value_eur"),
    [TD_EF_LANGUAGE] = F("language", "data.language"),
    [TD_EF_RECOMMENDATION_ID] = F("recommendation_id", "data.recommendation_id"),
    [TD_EF_UNTIL] = F("until", "data.until"),
#undef F
};

/* An object being decoded: exactly one of the two is set. The fast path has
 * one doc for both levels (envelope and data keys are distinct fields). */
typedef struct view {
    json_t *json;
    const td_event_doc *doc;
} view;

/* The kind of a jansson value. */
static td_jv_kind json_kind(const json_t *j) {
    switch (json_typeof(j)) {
    case JSON_OBJECT:
        return TD_JV_OBJECT;
    case JSON_ARRAY:
        return TD_JV_ARRAY;
    case JSON_STRING:
        return TD_JV_STRING;
    case JSON_INTEGER:
        return TD_JV_INTEGER;
    case JSON_REAL:
        return TD_JV_REAL;
    case JSON_TRUE:
        return TD_JV_TRUE;
    case JSON_FALSE:
        return TD_JV_FALSE;
    case JSON_NULL:
        break;
    }
    return TD_JV_NULL;
}

/* What a value is, for a reason's "(got ...)": its JSON type, never its
 * content. */
static const char *kind_name(td_jv_kind k) {
    switch (k) {
    case TD_JV_FALSE:
    case TD_JV_TRUE:
        return "a boolean";
    case TD_JV_INTEGER:
        return "an integer";
    case TD_JV_REAL:
        return "a number with a fraction or exponent";
    case TD_JV_STRING:
        return "a string";
    case TD_JV_OBJECT:
        return "an object";
    case TD_JV_ARRAY:
        return "an array";
    default:
        return "null";
    }
}

/* The value of field f in o; `tmp` holds it when it must be converted. */
static const td_jv *member(const view *o, td_event_field f, td_jv *tmp) {
    static const td_jv absent = {TD_JV_ABSENT, NULL, 0, 0};
    if (o->doc != NULL) return o->doc->seen & (1u << f) ? &o->doc->v[f] : &absent;
    json_t *j = json_object_get(o->json, td_event_fields[f].key);
    if (j == NULL) return &absent;
    *tmp = absent;
    tmp->kind = json_kind(j);
    if (tmp->kind == TD_JV_STRING) {
        tmp->s = json_string_value(j);
        tmp->n = json_string_length(j);
    } else if (tmp->kind == TD_JV_INTEGER) {
        tmp->i = (int64_t)json_integer_value(j);
    } /* REAL: s = NULL, read_dec finds the text */
    return tmp;
}

/* A wrong JSON type: what the field at `path` must be, and the type it got
 * (never its value). */
static int fail_type(td_event_error *err, const char *path, const char *must, td_jv_kind got) {
    return fail(err, path, "must be %s (got %s)", must, kind_name(got));
}

/* The object held by field f of o (which is known to be an object). */
static view sub_object(const view *o, td_event_field f) {
    view v = *o;
    if (o->json != NULL) v.json = json_object_get(o->json, td_event_fields[f].key);
    return v;
}

/* ---- field readers ----
 * Each returns 1 when the field is absent (or null), 0 when read, TD_ERR
 * (with err filled) when it is present but wrong. */

#define ABSENT 1

/* Absent or null: "not given" (on a required field, "missing"). */
static bool nothing(const td_jv *v) { return v->kind <= TD_JV_NULL; }

static int read_str(const view *o, td_event_field f, const char **s, size_t *n,
                    td_event_error *err) {
    /* outputs are always set, so callers (and -O3's flow analysis) never
     * see them uninitialised on the ABSENT and error paths */
    *s = "";
    *n = 0;
    td_jv tmp;
    const td_jv *v = member(o, f, &tmp);
    if (nothing(v)) return ABSENT;
    if (v->kind != TD_JV_STRING)
        return fail_type(err, td_event_fields[f].path, "a string", v->kind);
    *s = v->s;
    *n = v->n;
    return 0;
}

/* Bytes below 0x20 and 0x7f are refused in ids and short strings: they break
 * logs, Redis keys read by people and terminal output. */
static bool has_control(const char *s, size_t n) {
    size_t i = 0;
    /* Eight bytes at a time: a byte below 0x20 makes (x - 0x20..) & ~x set
     * its high bit, a 0x7f byte makes x ^ 0x7f.. zero, found the same way.
     * A borrow flags only bytes above a flagged one, so "any" is exact. */
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    for (; n - i >= 8; i += 8) {
        uint64_t x, d;
        memcpy(&x, s + i, 8);
        d = x ^ (ones * 0x7f);
        if ((((x - ones * 0x20) & ~x) | ((d - ones) & ~d)) & highs) return true;
    }
    for (; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f) return true;
    }
    return false;
}

/* A bounded, control-free string copied into dst (capacity max + 1). */
static int read_text(const view *o, td_event_field f, char *dst, size_t max, bool required,
                     td_event_error *err) {
    const char *path = td_event_fields[f].path;
    const char *s = NULL;
    size_t n = 0;
    int rc = read_str(o, f, &s, &n, err);
    if (rc == ABSENT && required) return fail(err, path, "is required");
    if (rc != 0) return rc;
    if (n == 0 || n > max) return fail(err, path, "must be 1..%zu bytes long (got %zu)", max, n);
    if (has_control(s, n)) return fail(err, path, "must not contain control characters");
    memcpy(dst, s, n);
    dst[n] = '\0';
    return 0;
}

static int read_enum(const view *o, td_event_field f, const name_set *set, int *out,
                     td_event_error *err) {
    const char *s;
    size_t n;
    int rc = read_str(o, f, &s, &n, err);
    if (rc != 0) return rc;
    int v = set_parse(set, s, n);
    if (v < 0) return fail(err, td_event_fields[f].path, "must be one of %s", set->list);
    *out = v;
    return 0;
}

static int read_bool(const view *o, td_event_field f, bool *out, td_event_error *err) {
    td_jv tmp;
    const td_jv *v = member(o, f, &tmp);
    if (nothing(v)) return ABSENT;
    if (v->kind != TD_JV_TRUE && v->kind != TD_JV_FALSE)
        return fail_type(err, td_event_fields[f].path, "true or false", v->kind);
    *out = v->kind == TD_JV_TRUE;
    return 0;
}

static int read_int(const view *o, td_event_field f, int64_t min, int64_t max, int64_t *out,
                    td_event_error *err) {
    const char *path = td_event_fields[f].path;
    td_jv tmp;
    const td_jv *v = member(o, f, &tmp);
    if (nothing(v)) return ABSENT;
    if (v->kind != TD_JV_INTEGER) return fail_type(err, path, "an integer", v->kind);
    int64_t i = v->i;
    if (i < min || i > max) {
        if (max == INT64_MAX) return fail(err, path, "must be >= %lld", (long long)min);
        return fail(err, path, "must be %lld..%lld", (long long)min, (long long)max);
    }
    *out = i;
    return 0;
}

static int read_time(const view *o, td_event_field f, bool required, td_ms *out,
                     td_event_error *err) {
    const char *path = td_event_fields[f].path;
    const char *s = NULL;
    size_t n = 0;
    int rc = read_str(o, f, &s, &n, err);
    if (rc == ABSENT && required) return fail(err, path, "is required");
    if (rc != 0) return rc;
    if (td_time_parse(s, n, out) != TD_OK)
        return fail(err, path,
                    "must be an RFC 3339 date-time with an offset or Z, e.g. 2026-11-22T10:15:00Z");
    return 0;
}

/* ---- exact decimals ---- */

/*
 * Parses a JSON-number-shaped decimal (-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?)
 * exactly into value * 10^4. Trailing zeros do not count as fractional
 * digits ("1.50000" is 1.5), an exponent shifts the point ("1.5e2" is 150).
 * @returns NULL and *out, or the reason it is refused.
 */
static const char *parse_decimal(const char *s, size_t n, td_dec *out) {
    const char *syntax = "must be a decimal number such as 12.5 (as a JSON number or string)";
    size_t i = 0;
    bool neg = false;
    if (i < n && s[i] == '-') {
        neg = true;
        i++;
    }
    size_t int_start = i;
    while (i < n && s[i] >= '0' && s[i] <= '9')
        i++;
    size_t int_end = i;
    if (int_end == int_start || (s[int_start] == '0' && int_end - int_start > 1))
        return syntax; /* no digits, or a leading zero as in "012" */
    size_t frac_start = i, frac_end = i;
    if (i < n && s[i] == '.') {
        frac_start = ++i;
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++;
        frac_end = i;
        if (frac_end == frac_start) return syntax;
    }
    int64_t exp = 0;
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        bool eneg = false;
        if (i < n && (s[i] == '+' || s[i] == '-')) eneg = s[i++] == '-';
        size_t es = i;
        while (i < n && s[i] >= '0' && s[i] <= '9') {
            /* Saturate: any exponent beyond +-10^6 is decided by the checks
             * below (too large, or too many fractional digits). */
            if (exp < 1000000) exp = exp * 10 + (s[i] - '0');
            i++;
        }
        if (i == es) return syntax;
        if (eneg) exp = -exp;
    }
    if (i != n) return syntax;

    /* The significant digits are int digits then frac digits; the value is
     * digits * 10^(exp - nfrac). Drop trailing zeros into the exponent. */
    size_t nint = int_end - int_start, nfrac = frac_end - frac_start;
    size_t total = nint + nfrac;
#define DIGIT(k) ((k) < nint ? s[int_start + (k)] : s[frac_start + (k)-nint])
    int64_t pow10 = exp - (int64_t)nfrac;
    while (total > 0 && DIGIT(total - 1) == '0') {
        total--;
        pow10++;
    }
    size_t first = 0;
    while (first < total && DIGIT(first) == '0')
        first++;
    if (first == total) {
        *out = 0; /* zero, whatever the sign and exponent */
        return NULL;
    }
    if (neg) return "must be >= 0";
    pow10 += 4; /* scale to 10^-4 units */
    if (pow10 < 0) return "must have at most 4 fractional digits";
    if (total - first > 19 || pow10 > 19) return "is too large";
    int64_t v = 0;
    for (size_t k = first; k < total; k++)
        if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, DIGIT(k) - '0', &v))
            return "is too large";
    for (int64_t k = 0; k < pow10; k++)
        if (__builtin_mul_overflow(v, 10, &v)) return "is too large";
#undef DIGIT
    *out = v;
    return NULL;
}

/*
 * A minimal scanner over JSON that jansson has already accepted, used to get
 * back the text of a number. It trusts the structure but still checks every
 * bound, and answers "not found" on anything unexpected.
 */
typedef struct scanner {
    const char *p;
    const char *end;
} scanner;

static void sc_ws(scanner *sc) {
    while (sc->p < sc->end && (*sc->p == ' ' || *sc->p == '\t' || *sc->p == '\n' || *sc->p == '\r'))
        sc->p++;
}

/* At '"': the raw span between the quotes; sc->p ends after the closing one. */
static bool sc_string(scanner *sc, const char **s, size_t *n) {
    if (sc->p >= sc->end || *sc->p != '"') return false;
    const char *start = ++sc->p;
    while (sc->p < sc->end && *sc->p != '"') {
        if (*sc->p == '\\') sc->p++;
        sc->p++;
    }
    if (sc->p >= sc->end) return false;
    *s = start;
    *n = (size_t)(sc->p - start);
    sc->p++;
    return true;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Whether a raw (still escaped) key equals the ASCII name `want`. Escapes
 * matter: "value\u005feur" is the key value_eur. */
static bool sc_key_is(const char *k, size_t n, const char *want) {
    size_t w = 0, i = 0;
    while (i < n) {
        char c = k[i++];
        if (c == '\\') {
            if (i >= n) return false;
            char e = k[i++];
            if (e == 'u') {
                if (n - i < 4) return false;
                int cp = 0;
                for (int d = 0; d < 4; d++) {
                    int h = hexval(k[i + d]);
                    if (h < 0) return false;
                    cp = cp * 16 + h;
                }
                i += 4;
                if (cp == 0 || cp >= 0x80) return false; /* not in any of our (ASCII) names */
                c = (char)cp;
            } else if (e == '"' || e == '\\' || e == '/') {
                c = e;
            } else {
                return false; /* \b \f \n \r \t: control characters */
            }
        }
        if (want[w] == '\0' || want[w] != c) return false;
        w++;
    }
    return want[w] == '\0';
}

/* Skips one value of any kind. */
static bool sc_skip(scanner *sc) {
    if (sc->p >= sc->end) return false;
    char c = *sc->p;
    if (c == '"') {
        const char *s;
        size_t n;
        return sc_string(sc, &s, &n);
    }
    if (c == '{' || c == '[') {
        size_t depth = 0;
        while (sc->p < sc->end) {
            c = *sc->p;
            if (c == '"') {
                const char *s;
                size_t n;
                if (!sc_string(sc, &s, &n)) return false;
                continue;
            }
            if (c == '{' || c == '[')
                depth++;
            else if (c == '}' || c == ']') {
                if (--depth == 0) {
                    sc->p++;
                    return true;
                }
            }
            sc->p++;
        }
        return false;
    }
    /* number, true, false, null */
    while (sc->p < sc->end && *sc->p != ',' && *sc->p != '}' && *sc->p != ']' && *sc->p != ' ' &&
           *sc->p != '\t' && *sc->p != '\n' && *sc->p != '\r')
        sc->p++;
    return true;
}

/*
 * Walks the members of the object at sc->p; stops at the value of `key`
 * (returns true with sc->p on it) or returns false.
 */
static bool sc_find_member(scanner *sc, const char *key) {
    sc_ws(sc);
    if (sc->p >= sc->end || *sc->p != '{') return false;
    sc->p++;
    for (;;) {
        sc_ws(sc);
        const char *k;
        size_t kn;
        if (!sc_string(sc, &k, &kn)) return false; /* '}' of an empty object, or malformed */
        sc_ws(sc);
        if (sc->p >= sc->end || *sc->p != ':') return false;
        sc->p++;
        sc_ws(sc);
        if (sc_key_is(k, kn, key)) return true;
        if (!sc_skip(sc)) return false;
        sc_ws(sc);
        if (sc->p >= sc->end || *sc->p != ',') return false;
        sc->p++;
    }
}

/* The raw text of the number at data.<key> in the message. */
static bool find_data_number(const char *buf, size_t len, const char *key, const char **s,
                             size_t *n) {
    scanner sc = {buf, buf + len};
    if (!sc_find_member(&sc, "data") || !sc_find_member(&sc, key)) return false;
    const char *start = sc.p;
    while (sc.p < sc.end && ((*sc.p >= '0' && *sc.p <= '9') || *sc.p == '-' || *sc.p == '+' ||
                             *sc.p == '.' || *sc.p == 'e' || *sc.p == 'E'))
        sc.p++;
    *s = start;
    *n = (size_t)(sc.p - start);
    return *n > 0;
}

static int read_dec(const view *o, td_event_field f, const char *buf, size_t len, td_dec *out,
                    td_event_error *err) {
    const char *path = td_event_fields[f].path;
    td_jv tmp;
    const td_jv *v = member(o, f, &tmp);
    if (nothing(v)) return ABSENT;
    const char *why;
    if (v->kind == TD_JV_INTEGER) {
        /* Exact already: both parsers keep integers as 64-bit integers. */
        int64_t i = v->i;
        if (i < 0) return fail(err, path, "must be >= 0");
        if (i > INT64_MAX / TD_DEC_SCALE) return fail(err, path, "is too large");
        *out = i * TD_DEC_SCALE;
        return 0;
    }
    if (v->kind == TD_JV_STRING) {
        why = parse_decimal(v->s, v->n, out);
    } else if (v->kind == TD_JV_REAL) {
        const char *s = v->s;
        size_t n = v->n;
        if (s == NULL && !find_data_number(buf, len, td_event_fields[f].key, &s, &n))
            return fail(err, path, "could not be read exactly"); /* unreachable for valid JSON */
        why = parse_decimal(s, n, out);
    } else {
        return fail_type(err, path, "a number or a decimal string", v->kind);
    }
    if (why != NULL) return fail(err, path, "%s", why);
    return 0;
}

/* ---- data per type ---- */

/* "xx": two ASCII letters, stored upper case. */
static int read_country(const view *d, td_event *ev, td_event_error *err) {
    const char *s;
    size_t n;
    int rc = read_str(d, TD_EF_COUNTRY, &s, &n, err);
    if (rc != 0) return rc;
    bool ok = n == 2;
    for (size_t i = 0; ok && i < 2; i++) {
        char c = s[i];
        ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
        ev->country[i] = (char)(c >= 'a' && c <= 'z' ? c - 'a' + 'A' : c);
    }
    if (!ok)
        return fail(err, "data.country", "must be an ISO 3166 alpha-2 code (two letters, e.g. FR)");
    ev->country[2] = '\0';
    return 0;
}

/* IANA zone id syntax only: 1..64 bytes of printable ASCII without spaces.
 * Whether the zone exists is the tz database's call (td_tz_valid). */
static int read_timezone(const view *d, td_event *ev, td_event_error *err) {
    const char *s;
    size_t n;
    int rc = read_str(d, TD_EF_TIMEZONE, &s, &n, err);
    if (rc != 0) return rc;
    if (n == 0 || n > TD_SHORT_MAX)
        return fail(err, "data.timezone", "must be 1..%d bytes long (got %zu)", TD_SHORT_MAX, n);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c >= 0x7f)
            return fail(err, "data.timezone",
                        "must be an IANA zone id such as Europe/Paris (ASCII, no spaces)");
    }
    memcpy(ev->timezone, s, n);
    ev->timezone[n] = '\0';
    return 0;
}

/* BCP 47 syntax, loosely: a 2..8 letter primary subtag, then -subtags of
 * 1..8 letters or digits ("fr", "pt-BR", "zh-Hant-TW"), 15 bytes at most. */
static int read_language(const view *d, td_event *ev, td_event_error *err) {
    const char *s;
    size_t n;
    int rc = read_str(d, TD_EF_LANGUAGE, &s, &n, err);
    if (rc != 0) return rc;
    bool ok = n >= 2 && n < sizeof ev->language;
    size_t sub = 0, subtags = 0;
    for (size_t i = 0; ok && i <= n; i++) {
        char c = i < n ? s[i] : '-';
        bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
        if (c == '-') {
            ok = sub >= 1 && sub <= 8 && (subtags > 0 || sub >= 2);
            subtags++;
            sub = 0;
        } else if (alpha || (subtags > 0 && c >= '0' && c <= '9')) {
            sub++;
        } else {
            ok = false;
        }
    }
    if (!ok) return fail(err, "data.language", "must be a BCP 47 language tag such as fr or pt-BR");
    memcpy(ev->language, s, n);
    ev->language[n] = '\0';
    return 0;
}

static int read_consent(const view *d, td_event *ev, td_event_error *err) {
    td_jv tmp;
    const td_jv *v = member(d, TD_EF_CONSENT, &tmp);
    if (nothing(v)) return ABSENT;
    if (v->kind != TD_JV_OBJECT)
        return fail_type(err, "data.consent", "an object of channel -> true/false", v->kind);
    if (d->doc != NULL) {
        /* The scanner took only known channels with true, false or null. */
        memcpy(ev->consent, d->doc->consent, sizeof ev->consent);
        return 0;
    }
    json_t *c = sub_object(d, TD_EF_CONSENT).json;
    const char *key;
    json_t *cv;
    unsigned pos = 0; /* jansson keeps keys in message order */
    json_object_foreach(c, key, cv) {
        char path[64];
        pos++;
        td_channel ch = td_channel_parse(key, strlen(key));
        if (ch == TD_CH_NONE) { /* the key is the sender's data: its position only */
            snprintf(path, sizeof path, "data.consent[#%u]", pos);
            return fail(err, path,
                        "is a key that is not a channel (known: email, whatsapp, sms, linkedin, "
                        "call, meeting, gift)");
        }
        if (json_is_null(cv)) continue;
        if (!json_is_boolean(cv)) {
            snprintf(path, sizeof path, "data.consent.%s", td_channel_name(ch));
            return fail_type(err, path, "true or false", json_kind(cv));
        }
        ev->consent[ch] = json_is_true(cv) ? TD_TRI_YES : TD_TRI_NO;
    }
    return 0;
}

/* Folds a reader's result into ev->has: TD_ERR stops decoding. */
#define TAKE(call, bit)                                                                            \
    do {                                                                                           \
        int rc_ = (call);                                                                          \
        if (rc_ == TD_ERR) return TD_ERR;                                                          \
        if (rc_ == 0) ev->has |= (bit);                                                            \
    } while (0)

static int decode_prospect(const view *d, const char *buf, size_t len, td_event *ev,
                           td_event_error *err) {
    int e;
    e = 0;
    TAKE(read_enum(d, TD_EF_STAGE, &stages, &e, err), TD_HAS_STAGE);
    ev->stage = (td_stage)e;
    TAKE(read_int(d, TD_EF_TIER, 1, 3, &ev->tier, err), TD_HAS_TIER);
    TAKE(read_country(d, ev, err), TD_HAS_COUNTRY);
    TAKE(read_text(d, TD_EF_SECTOR, ev->sector, TD_SHORT_MAX, false, err), TD_HAS_SECTOR);
    TAKE(read_timezone(d, ev, err), TD_HAS_TIMEZONE);
    e = 0;
    TAKE(read_enum(d, TD_EF_GIFT_POLICY, &gift_policies, &e, err), TD_HAS_GIFT_POLICY);
    ev->gift_policy = (td_gift_policy)e;
    TAKE(read_consent(d, ev, err), TD_HAS_CONSENT);
    TAKE(read_dec(d, TD_EF_LIFETIME_VALUE_EUR, buf, len, &ev->lifetime_value_eur, err), TD_HAS_LTV);
    TAKE(read_language(d, ev, err), TD_HAS_LANGUAGE);
    return TD_OK;
}

static int decode_gift(const view *d, const char *buf, size_t len, td_event *ev,
                       td_event_error *err) {
    int e = 0;
    TAKE(read_enum(d, TD_EF_KIND, &gift_kinds, &e, err), TD_HAS_GIFT_KIND);
    ev->gift_kind = (td_gift_kind)e;
    TAKE(read_dec(d, TD_EF_VALUE_EUR, buf, len, &ev->value_eur, err), TD_HAS_VALUE);
    TAKE(read_int(d, TD_EF_ITEMS, 1, INT64_MAX, &ev->items, err), TD_HAS_ITEMS);
    TAKE(read_text(d, TD_EF_WRAPPING, ev->wrapping, TD_SHORT_MAX, false, err), TD_HAS_WRAPPING);
    /* Free text: its type is checked, its content never kept. */
    const char *s;
    size_t n;
    TAKE(read_str(d, TD_EF_DESCRIPTION, &s, &n, err), TD_HAS_DESCRIPTION);
    return TD_OK;
}

/* recommendation.*: the id of a recommendation touchd published (required),
 * and for snoozed the time it comes back (required). */
static int decode_feedback(const view *d, td_event *ev, td_event_error *err) {
    TAKE(read_text(d, TD_EF_RECOMMENDATION_ID, ev->recommendation_id, TD_ID_MAX, true, err),
         TD_HAS_RECOMMENDATION);
    if (ev->type == TD_EV_RECOMMENDATION_SNOOZED)
        TAKE(read_time(d, TD_EF_UNTIL, true, &ev->until, err), TD_HAS_UNTIL);
    return TD_OK;
}

static int decode_data(const view *d, const char *buf, size_t len, td_event *ev,
                       td_event_error *err) {
    td_event_type t = ev->type;
    switch (ev->channel) {
    case TD_CH_EMAIL:
    case TD_CH_WHATSAPP:
    case TD_CH_SMS:
        TAKE(read_text(d, TD_EF_MESSAGE_ID, ev->message_id, TD_ID_MAX, false, err),
             TD_HAS_MESSAGE_ID);
        TAKE(read_text(d, TD_EF_KIND, ev->kind, TD_SHORT_MAX, false, err), TD_HAS_KIND);
        if (t == TD_EV_EMAIL_OPENED) TAKE(read_bool(d, TD_EF_HUMAN, &ev->human, err), TD_HAS_HUMAN);
        if (t == TD_EV_EMAIL_BOUNCED) TAKE(read_bool(d, TD_EF_HARD, &ev->hard, err), TD_HAS_HARD);
        break;
    case TD_CH_CALL:
        TAKE(read_int(d, TD_EF_DURATION_S, 0, INT64_MAX, &ev->duration_s, err), TD_HAS_DURATION);
        break;
    case TD_CH_MEETING:
        TAKE(read_time(d, TD_EF_AT, false, &ev->at, err), TD_HAS_AT);
        break;
    case TD_CH_GIFT:
        return decode_gift(d, buf, len, ev, err);
    case TD_CH_LINKEDIN:
        break;
    default:
        if (t == TD_EV_OWNER_PROSPECT_CONTACTED) return TD_OK; /* no data fields */
        if (td_event_is_feedback(t)) return decode_feedback(d, ev, err);
        return decode_prospect(d, buf, len, ev, err);
    }
    if (t == TD_EV_EMAIL_REPLIED || t == TD_EV_WHATSAPP_REPLIED || t == TD_EV_SMS_REPLIED ||
        t == TD_EV_LINKEDIN_REPLIED) {
        int e = 0;
        TAKE(read_enum(d, TD_EF_SENTIMENT, &sentiments, &e, err), TD_HAS_SENTIMENT);
        ev->sentiment = (td_sentiment)e;
    }
    return TD_OK;
}

/* ---- the envelope ---- */

/*
 * Words for a jansson syntax error, never jansson's text itself: that text
 * quotes the input ("invalid token near 'jeanne@exa'", "invalid Unicode
 * '\uD83D'", "control character 0x7"). Its known messages (jansson 2.14,
 * load.c) map to fixed words; anything else is just "syntax error".
 */
static const char *json_error_words(const char *text) {
    static const struct {
        const char *jansson; /* the start of jansson's message */
        const char *words;
    } known[] = {
        {"invalid token", "invalid token"},
        {"unexpected token", "unexpected token"},
        {"unexpected newline", "newline inside a string"},
        {"control character", "control character inside a string"},
        {"invalid escape", "invalid escape"},
        {"invalid Unicode", "invalid \\u escape (an unpaired surrogate)"},
        {"premature end of input", "premature end of input"},
        {"string or '}' expected", "string or '}' expected"},
        {"':' expected", "':' expected"},
        {"'}' expected", "'}' expected"},
        {"']' expected", "']' expected"},
        {"'[' or '{' expected", "'[' or '{' expected"},
        {"end of file expected", "end of input expected"},
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (strncmp(text, known[i].jansson, strlen(known[i].jansson)) == 0) return known[i].words;
    return "syntax error";
}

static int parse_error(const char *buf, size_t len, const json_error_t *je, td_event_error *err) {
    switch (json_error_code(je)) {
    case json_error_duplicate_key:
        return fail(err, "", "duplicate key at line %d column %d: each key may appear once",
                    je->line, je->column);
    case json_error_null_character:
        return fail(err, "", "\\u0000 is not allowed in strings (line %d column %d)", je->line,
                    je->column);
    case json_error_numeric_overflow:
        return fail(err, "", "number out of range at line %d column %d", je->line, je->column);
    case json_error_stack_overflow:
        return fail(err, "", "JSON nested too deeply");
    case json_error_out_of_memory:
        return fail(err, "", "out of memory while parsing");
    default:
        break;
    }
    long bad = utf8_invalid_at((const unsigned char *)buf, len);
    if (bad >= 0) return fail(err, "", "not valid UTF-8 (byte offset %ld)", bad);
    return fail(err, "", "not valid JSON: %s at line %d column %d", json_error_words(je->text),
                je->line, je->column);
}

static int decode_object(const view *root, const char *buf, size_t len, td_event *ev,
                         td_event_error *err) {
    const char *s;
    size_t n;
    int rc;

    if (read_text(root, TD_EF_ID, ev->id, TD_ID_MAX, true, err) != 0) return TD_ERR;

    rc = read_str(root, TD_EF_TYPE, &s, &n, err);
    if (rc == ABSENT) return fail(err, "type", "is required");
    if (rc != 0) return TD_ERR;
    int t = td_event_type_parse(s, n);
    if (t < 0) return fail(err, "type", "is not a known event type (docs/events.md lists them)");
    ev->type = (td_event_type)t;
    ev->channel = td_event_type_channel(ev->type);

    if (read_text(root, TD_EF_PROSPECT_ID, ev->prospect_id, TD_ID_MAX, true, err) != 0)
        return TD_ERR;
    if (read_time(root, TD_EF_OCCURRED_AT, true, &ev->occurred_at, err) != 0) return TD_ERR;
    TAKE(read_text(root, TD_EF_OWNER_ID, ev->owner_id, TD_ID_MAX, false, err), TD_HAS_OWNER);

    /* Defaults before data: a missing or null data object still gets them. */
    ev->human = ev->type == TD_EV_EMAIL_OPENED;

    td_jv tmp;
    const td_jv *data = member(root, TD_EF_DATA, &tmp);
    if (nothing(data) && td_event_is_feedback(ev->type))
        return fail(err, "data.recommendation_id", "is required");
    if (nothing(data)) return TD_OK;
    if (data->kind != TD_JV_OBJECT) return fail_type(err, "data", "an object", data->kind);
    view d = sub_object(root, TD_EF_DATA);
    return decode_data(&d, buf, len, ev, err);
}

/* Both paths start from the same bytes: zeros, and sentinels that make a
 * stray read of an unset field obviously "missing". */
static void event_init(td_event *ev) {
    memset(ev, 0, sizeof *ev);
    ev->duration_s = TD_INT_MISSING;
    ev->at = TD_MS_MISSING;
    ev->value_eur = TD_DEC_MISSING;
    ev->items = TD_INT_MISSING;
    ev->tier = TD_INT_MISSING;
    ev->lifetime_value_eur = TD_DEC_MISSING;
}

/*
 * jansson allocates every value, key and string of a parse with malloc and
 * frees them again in json_decref; on a 200-byte event that is about a
 * quarter of the decode. A decode builds and drops its whole tree inside
 * td_event_decode, so during a decode jansson allocates from a per-thread bump
 * arena (jansson's supported json_set_alloc_funcs hook) that is reset when
 * the decode ends. Outside a decode, and when the arena is full (a large
 * event), allocations go to malloc; ev_jfree frees only what is not inside
 * the arena, so other jansson users in the process are unaffected.
 */
#define TD_ARENA_SIZE (256 * 1024)
static _Thread_local struct {
    char *base;
    size_t used;
    bool active;
} td_arena;

static void *ev_jmalloc(size_t n) {
    if (td_arena.active) {
        size_t need = (n + 15) & ~(size_t)15;
        if (need >= n && td_arena.used + need <= TD_ARENA_SIZE) {
            void *p = td_arena.base + td_arena.used;
            td_arena.used += need;
            return p;
        }
    }
    return malloc(n);
}

static void ev_jfree(void *p) {
    if (p && td_arena.base && (char *)p >= td_arena.base &&
        (char *)p < td_arena.base + TD_ARENA_SIZE)
        return; /* reclaimed when the decode ends */
    free(p);
}

static void ev_jansson_setup(void) { json_set_alloc_funcs(ev_jmalloc, ev_jfree); }

static pthread_once_t td_jansson_once = PTHREAD_ONCE_INIT;

int td_event_decode_slow(const char *buf, size_t len, td_event *ev, td_event_error *err) {
    td_event_error scratch;
    if (err == NULL) err = &scratch;
    err->field[0] = '\0';
    err->reason[0] = '\0';

    if (len > TD_EVENT_MAX)
        return fail(err, "", "oversize: %zu bytes, the limit is %d", len, TD_EVENT_MAX);
    if (buf == NULL || len == 0) return fail(err, "", "empty message");
    /* jansson would refuse a raw NUL too, but as a vague syntax error. */
    const char *nul = memchr(buf, '\0', len);
    if (nul != NULL)
        return fail(err, "", "contains a NUL byte (byte offset %ld)", (long)(nul - buf));

    pthread_once(&td_jansson_once, ev_jansson_setup);
    if (!td_arena.base)
        td_arena.base = malloc(TD_ARENA_SIZE); /* NULL: plain malloc, still correct */
    td_arena.used = 0;
    td_arena.active = td_arena.base != NULL;

    json_error_t je;
    json_t *root = json_loadb(buf, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je);
    if (root == NULL) {
        td_arena.active = false;
        return parse_error(buf, len, &je, err);
    }
    int rc;
    if (!json_is_object(root)) {
        rc = fail(err, "", "not a JSON object");
    } else {
        event_init(ev);
        view v = {root, NULL};
        rc = decode_object(&v, buf, len, ev, err);
    }
    json_decref(root);
    td_arena.active = false;
    td_arena.used = 0;
    return rc;
}

int td_event_decode_fast(const char *buf, size_t len, td_event *ev) {
    if (buf == NULL || len == 0 || len > TD_EVENT_MAX)
        return TD_EVENT_DECLINED; /* the slow path says why */
    td_event_doc doc;
    if (td_event_scan(buf, len, &doc) != TD_OK) return TD_EVENT_DECLINED;
    /* A rejection is formatted here only to be dropped: the slow path
     * formats it again, identically, for the caller. */
    td_event_error scratch;
    event_init(ev);
    view v = {NULL, &doc};
    return decode_object(&v, buf, len, ev, &scratch) == TD_OK ? TD_OK : TD_EVENT_DECLINED;
}

int td_event_decode(const char *buf, size_t len, td_event *ev, td_event_error *err) {
    if (td_event_decode_fast(buf, len, ev) == TD_OK) {
        if (err != NULL) {
            err->field[0] = '\0';
            err->reason[0] = '\0';
        }
        return TD_OK;
    }
    return td_event_decode_slow(buf, len, ev, err);
}
