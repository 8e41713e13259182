/*
 * td_event.c - decoding and validation of input events (DESIGN.md "Events
 * in"; the contract as implemented is docs/events.md).
 *
 * Design:
 * - jansson parses (it validates UTF-8, rejects "\u0000" escapes and, with
 *   JSON_REJECT_DUPLICATES, duplicate keys); this file then reads the known
 *   fields with direct lookups and copies what it keeps into the fixed-size
 *   td_event. The only heap memory is jansson's tree, freed before return.
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
 *   already-validated JSON and parsed digit by digit into a td_dec.
 * - JSON null on an optional field means "not given"; on a required field it
 *   is "missing". Many CRM serialisers write null for unset fields.
 * - Rejection reasons may echo short enumerated values (a type, a stage)
 *   after sanitising them; they never echo ids or free text, which could
 *   carry personal data into the dead-letter topic.
 *
 * @locality any thread; no shared state.
 */
#include "td_event.h"

#include <stdarg.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>
#include <pthread.h>

#include "td_time.h"

/* ---- names ---- */

static const char *const event_type_names[TD_EV__COUNT] = {
    "email.sent",        "email.delivered",  "email.opened",      "email.clicked",
    "email.replied",     "email.bounced",    "email.unsubscribed", "whatsapp.sent",
    "whatsapp.delivered", "whatsapp.read",   "whatsapp.replied",  "whatsapp.failed",
    "whatsapp.opted_in", "whatsapp.opted_out", "sms.sent",        "sms.delivered",
    "sms.read",          "sms.replied",      "sms.failed",        "sms.opted_in",
    "sms.opted_out",     "linkedin.invited", "linkedin.accepted", "linkedin.messaged",
    "linkedin.replied",  "call.attempted",   "call.connected",    "call.voicemail",
    "meeting.booked",    "meeting.held",     "meeting.cancelled", "meeting.no_show",
    "gift.sent",         "prospect.updated", "owner.prospect_contacted",
};

const char *td_event_type_name(td_event_type t)
{
    if ((int)t < 0 || t >= TD_EV__COUNT)
        return NULL;
    return event_type_names[t];
}

int td_event_type_parse(const char *s, size_t len)
{
    if (s == NULL)
        return -1;
    for (int i = 0; i < TD_EV__COUNT; i++) {
        const char *n = event_type_names[i];
        /* Comparing the first byte and the length first rejects almost every
         * entry without a memcmp; 34 entries is too few to need a hash. */
        if (n[0] == s[0] && strlen(n) == len && memcmp(n, s, len) == 0)
            return i;
    }
    return -1;
}

td_channel td_event_type_channel(td_event_type t)
{
    if (t <= TD_EV_EMAIL_UNSUBSCRIBED)
        return TD_CH_EMAIL;
    if (t <= TD_EV_WHATSAPP_OPTED_OUT)
        return TD_CH_WHATSAPP;
    if (t <= TD_EV_SMS_OPTED_OUT)
        return TD_CH_SMS;
    if (t <= TD_EV_LINKEDIN_REPLIED)
        return TD_CH_LINKEDIN;
    if (t <= TD_EV_CALL_VOICEMAIL)
        return TD_CH_CALL;
    if (t <= TD_EV_MEETING_NO_SHOW)
        return TD_CH_MEETING;
    if (t == TD_EV_GIFT_SENT)
        return TD_CH_GIFT;
    return TD_CH_NONE;
}

/* An enumeration's wire names, index 0 being "not given". */
typedef struct name_set {
    const char *const *names;
    int count;
    const char *list; /* for error messages */
} name_set;

static const char *const sentiment_names[] = {"", "positive", "neutral", "negative", "out_of_office"};
static const char *const stage_names[] = {"",         "new",         "contacted", "engaged",
                                          "proposal", "negotiation", "won",       "lost"};
static const char *const gift_policy_names[] = {"", "allowed", "restricted", "forbidden"};
static const char *const gift_kind_names[] = {"",           "object",  "card",    "basket", "book",
                                              "experience", "service", "donation"};

static const name_set sentiments = {sentiment_names, 5,
                                    "positive, neutral, negative, out_of_office"};
static const name_set stages = {stage_names, 8,
                                "new, contacted, engaged, proposal, negotiation, won, lost"};
static const name_set gift_policies = {gift_policy_names, 4, "allowed, restricted, forbidden"};
static const name_set gift_kinds = {gift_kind_names, 8,
                                    "object, card, basket, book, experience, service, donation"};

static const char *set_name(const name_set *set, int v)
{
    return v >= 0 && v < set->count ? set->names[v] : "";
}

/* The index (>= 1) of a name, or -1. Case-sensitive: the wire names are. */
static int set_parse(const name_set *set, const char *s, size_t len)
{
    if (s == NULL)
        return -1;
    for (int i = 1; i < set->count; i++)
        if (strlen(set->names[i]) == len && memcmp(set->names[i], s, len) == 0)
            return i;
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
static int fail(td_event_error *err, const char *field, const char *fmt, ...)
{
    td_strlcpy(err->field, field, sizeof err->field);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->reason, sizeof err->reason, fmt, ap);
    va_end(ap);
    return TD_ERR;
}

/*
 * A printable, bounded copy of untrusted text for an error message: at most
 * 32 bytes, anything but printable ASCII (and quotes) becomes '?'.
 */
static const char *echo(const char *s, size_t n, char buf[40])
{
    size_t k = 0;
    for (size_t i = 0; i < n && k < 32; i++) {
        unsigned char c = (unsigned char)s[i];
        buf[k++] = (c >= 0x20 && c < 0x7f && c != '\'' && c != '"' && c != '\\') ? (char)c : '?';
    }
    if (n > 32) {
        memcpy(buf + k, "...", 3);
        k += 3;
    }
    buf[k] = '\0';
    return buf;
}

/* Byte offset of the first invalid UTF-8 sequence, or -1 when valid. Used on
 * the error path only, to say why jansson refused the message. */
static long utf8_invalid_at(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t need;
        uint32_t cp, min;
        if (c >= 0xc2 && c <= 0xdf) {
            need = 1, cp = c & 0x1f, min = 0x80;
        } else if (c >= 0xe0 && c <= 0xef) {
            need = 2, cp = c & 0x0f, min = 0x800;
        } else if (c >= 0xf0 && c <= 0xf4) {
            need = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return (long)i;
        }
        if (n - i <= need)
            return (long)i;
        for (size_t k = 1; k <= need; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return (long)i;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return (long)i;
        i += need + 1;
    }
    return -1;
}

/* ---- field readers ----
 * Each returns 1 when the field is absent (or null), 0 when read, TD_ERR
 * (with err filled) when it is present but wrong. */

#define ABSENT 1

static int read_str(json_t *obj, const char *key, const char *path, const char **s, size_t *n,
                    td_event_error *err)
{
    /* outputs are always set, so callers (and -O3's flow analysis) never
     * see them uninitialised on the ABSENT and error paths */
    *s = "";
    *n = 0;
    json_t *v = json_object_get(obj, key);
    if (v == NULL || json_is_null(v))
        return ABSENT;
    if (!json_is_string(v))
        return fail(err, path, "must be a string");
    *s = json_string_value(v);
    *n = json_string_length(v);
    return 0;
}

/* Bytes below 0x20 and 0x7f are refused in ids and short strings: they break
 * logs, Redis keys read by people and terminal output. */
static bool has_control(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f)
            return true;
    }
    return false;
}

/* A bounded, control-free string copied into dst (capacity max + 1). */
static int read_text(json_t *obj, const char *key, const char *path, char *dst, size_t max,
                     bool required, td_event_error *err)
{
    const char *s = NULL;
    size_t n = 0;
    int rc = read_str(obj, key, path, &s, &n, err);
    if (rc == ABSENT && required)
        return fail(err, path, "is required");
    if (rc != 0)
        return rc;
    if (n == 0 || n > max)
        return fail(err, path, "must be 1..%zu bytes long (got %zu)", max, n);
    if (has_control(s, n))
        return fail(err, path, "must not contain control characters");
    memcpy(dst, s, n);
    dst[n] = '\0';
    return 0;
}

static int read_enum(json_t *obj, const char *key, const char *path, const name_set *set, int *out,
                     td_event_error *err)
{
    const char *s;
    size_t n;
    int rc = read_str(obj, key, path, &s, &n, err);
    if (rc != 0)
        return rc;
    int v = set_parse(set, s, n);
    if (v < 0) {
        char e[40];
        return fail(err, path, "'%s' is not one of %s", echo(s, n, e), set->list);
    }
    *out = v;
    return 0;
}

static int read_bool(json_t *obj, const char *key, const char *path, bool *out,
                     td_event_error *err)
{
    json_t *v = json_object_get(obj, key);
    if (v == NULL || json_is_null(v))
        return ABSENT;
    if (!json_is_boolean(v))
        return fail(err, path, "must be true or false");
    *out = json_is_true(v);
    return 0;
}

static int read_int(json_t *obj, const char *key, const char *path, int64_t min, int64_t max,
                    int64_t *out, td_event_error *err)
{
    json_t *v = json_object_get(obj, key);
    if (v == NULL || json_is_null(v))
        return ABSENT;
    if (!json_is_integer(v))
        return fail(err, path, "must be an integer");
    int64_t i = (int64_t)json_integer_value(v);
    if (i < min || i > max) {
        if (max == INT64_MAX)
            return fail(err, path, "must be >= %lld", (long long)min);
        return fail(err, path, "must be %lld..%lld", (long long)min, (long long)max);
    }
    *out = i;
    return 0;
}

static int read_time(json_t *obj, const char *key, const char *path, bool required, td_ms *out,
                     td_event_error *err)
{
    const char *s = NULL;
    size_t n = 0;
    int rc = read_str(obj, key, path, &s, &n, err);
    if (rc == ABSENT && required)
        return fail(err, path, "is required");
    if (rc != 0)
        return rc;
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
static const char *parse_decimal(const char *s, size_t n, td_dec *out)
{
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
        if (frac_end == frac_start)
            return syntax;
    }
    int64_t exp = 0;
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        bool eneg = false;
        if (i < n && (s[i] == '+' || s[i] == '-'))
            eneg = s[i++] == '-';
        size_t es = i;
        while (i < n && s[i] >= '0' && s[i] <= '9') {
            /* Saturate: any exponent beyond +-10^6 is decided by the checks
             * below (too large, or too many fractional digits). */
            if (exp < 1000000)
                exp = exp * 10 + (s[i] - '0');
            i++;
        }
        if (i == es)
            return syntax;
        if (eneg)
            exp = -exp;
    }
    if (i != n)
        return syntax;

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
    if (neg)
        return "must be >= 0";
    pow10 += 4; /* scale to 10^-4 units */
    if (pow10 < 0)
        return "must have at most 4 fractional digits";
    if (total - first > 19 || pow10 > 19)
        return "is too large";
    int64_t v = 0;
    for (size_t k = first; k < total; k++)
        if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, DIGIT(k) - '0', &v))
            return "is too large";
    for (int64_t k = 0; k < pow10; k++)
        if (__builtin_mul_overflow(v, 10, &v))
            return "is too large";
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

static void sc_ws(scanner *sc)
{
    while (sc->p < sc->end && (*sc->p == ' ' || *sc->p == '\t' || *sc->p == '\n' || *sc->p == '\r'))
        sc->p++;
}

/* At '"': the raw span between the quotes; sc->p ends after the closing one. */
static bool sc_string(scanner *sc, const char **s, size_t *n)
{
    if (sc->p >= sc->end || *sc->p != '"')
        return false;
    const char *start = ++sc->p;
    while (sc->p < sc->end && *sc->p != '"') {
        if (*sc->p == '\\')
            sc->p++;
        sc->p++;
    }
    if (sc->p >= sc->end)
        return false;
    *s = start;
    *n = (size_t)(sc->p - start);
    sc->p++;
    return true;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Whether a raw (still escaped) key equals the ASCII name `want`. Escapes
 * matter: "value\u005feur" is the key value_eur. */
static bool sc_key_is(const char *k, size_t n, const char *want)
{
    size_t w = 0, i = 0;
    while (i < n) {
        char c = k[i++];
        if (c == '\\') {
            if (i >= n)
                return false;
            char e = k[i++];
            if (e == 'u') {
                if (n - i < 4)
                    return false;
                int cp = 0;
                for (int d = 0; d < 4; d++) {
                    int h = hexval(k[i + d]);
                    if (h < 0)
                        return false;
                    cp = cp * 16 + h;
                }
                i += 4;
                if (cp == 0 || cp >= 0x80)
                    return false; /* not in any of our (ASCII) names */
                c = (char)cp;
            } else if (e == '"' || e == '\\' || e == '/') {
                c = e;
            } else {
                return false; /* \b \f \n \r \t: control characters */
            }
        }
        if (want[w] == '\0' || want[w] != c)
            return false;
        w++;
    }
    return want[w] == '\0';
}

/* Skips one value of any kind. */
static bool sc_skip(scanner *sc)
{
    if (sc->p >= sc->end)
        return false;
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
                if (!sc_string(sc, &s, &n))
                    return false;
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
static bool sc_find_member(scanner *sc, const char *key)
{
    sc_ws(sc);
    if (sc->p >= sc->end || *sc->p != '{')
        return false;
    sc->p++;
    for (;;) {
        sc_ws(sc);
        const char *k;
        size_t kn;
        if (!sc_string(sc, &k, &kn))
            return false; /* '}' of an empty object, or malformed */
        sc_ws(sc);
        if (sc->p >= sc->end || *sc->p != ':')
            return false;
        sc->p++;
        sc_ws(sc);
        if (sc_key_is(k, kn, key))
            return true;
        if (!sc_skip(sc))
            return false;
        sc_ws(sc);
        if (sc->p >= sc->end || *sc->p != ',')
            return false;
        sc->p++;
    }
}

/* The raw text of the number at data.<key> in the message. */
static bool find_data_number(const char *buf, size_t len, const char *key, const char **s,
                             size_t *n)
{
    scanner sc = {buf, buf + len};
    if (!sc_find_member(&sc, "data") || !sc_find_member(&sc, key))
        return false;
    const char *start = sc.p;
    while (sc.p < sc.end && ((*sc.p >= '0' && *sc.p <= '9') || *sc.p == '-' || *sc.p == '+' ||
                             *sc.p == '.' || *sc.p == 'e' || *sc.p == 'E'))
        sc.p++;
    *s = start;
    *n = (size_t)(sc.p - start);
    return *n > 0;
}

static int read_dec(json_t *data, const char *key, const char *path, const char *buf, size_t len,
                    td_dec *out, td_event_error *err)
{
    json_t *v = json_object_get(data, key);
    if (v == NULL || json_is_null(v))
        return ABSENT;
    const char *why;
    if (json_is_integer(v)) {
        /* Exact already: jansson keeps integers as 64-bit integers. */
        int64_t i = (int64_t)json_integer_value(v);
        if (i < 0)
            return fail(err, path, "must be >= 0");
        if (i > INT64_MAX / TD_DEC_SCALE)
            return fail(err, path, "is too large");
        *out = i * TD_DEC_SCALE;
        return 0;
    }
    if (json_is_string(v)) {
        why = parse_decimal(json_string_value(v), json_string_length(v), out);
    } else if (json_is_real(v)) {
        const char *s;
        size_t n;
        if (!find_data_number(buf, len, key, &s, &n))
            return fail(err, path, "could not be read exactly"); /* unreachable for valid JSON */
        why = parse_decimal(s, n, out);
    } else {
        return fail(err, path, "must be a number or a decimal string");
    }
    if (why != NULL)
        return fail(err, path, "%s", why);
    return 0;
}

/* ---- data per type ---- */

/* "xx": two ASCII letters, stored upper case. */
static int read_country(json_t *data, td_event *ev, td_event_error *err)
{
    const char *s;
    size_t n;
    int rc = read_str(data, "country", "data.country", &s, &n, err);
    if (rc != 0)
        return rc;
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
static int read_timezone(json_t *data, td_event *ev, td_event_error *err)
{
    const char *s;
    size_t n;
    int rc = read_str(data, "timezone", "data.timezone", &s, &n, err);
    if (rc != 0)
        return rc;
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
static int read_language(json_t *data, td_event *ev, td_event_error *err)
{
    const char *s;
    size_t n;
    int rc = read_str(data, "language", "data.language", &s, &n, err);
    if (rc != 0)
        return rc;
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
    if (!ok)
        return fail(err, "data.language", "must be a BCP 47 language tag such as fr or pt-BR");
    memcpy(ev->language, s, n);
    ev->language[n] = '\0';
    return 0;
}

static int read_consent(json_t *data, td_event *ev, td_event_error *err)
{
    json_t *c = json_object_get(data, "consent");
    if (c == NULL || json_is_null(c))
        return ABSENT;
    if (!json_is_object(c))
        return fail(err, "data.consent", "must be an object of channel -> true/false");
    const char *key;
    json_t *v;
    json_object_foreach(c, key, v)
    {
        char path[64], e[40];
        td_channel ch = td_channel_parse(key, strlen(key));
        if (ch == TD_CH_NONE) {
            snprintf(path, sizeof path, "data.consent.%s", echo(key, strlen(key), e));
            return fail(err, path,
                        "unknown channel (known: email, whatsapp, sms, linkedin, call, meeting, gift)");
        }
        if (json_is_null(v))
            continue;
        if (!json_is_boolean(v)) {
            snprintf(path, sizeof path, "data.consent.%s", key);
            return fail(err, path, "must be true or false");
        }
        ev->consent[ch] = json_is_true(v) ? TD_TRI_YES : TD_TRI_NO;
    }
    return 0;
}

/* Folds a reader's result into ev->has: TD_ERR stops decoding. */
#define TAKE(call, bit)                                                                            \
    do {                                                                                           \
        int rc_ = (call);                                                                          \
        if (rc_ == TD_ERR)                                                                         \
            return TD_ERR;                                                                         \
        if (rc_ == 0)                                                                              \
            ev->has |= (bit);                                                                      \
    } while (0)

static int decode_prospect(json_t *d, const char *buf, size_t len, td_event *ev,
                           td_event_error *err)
{
    int e;
    e = 0;
    TAKE(read_enum(d, "stage", "data.stage", &stages, &e, err), TD_HAS_STAGE);
    ev->stage = (td_stage)e;
    TAKE(read_int(d, "tier", "data.tier", 1, 3, &ev->tier, err), TD_HAS_TIER);
    TAKE(read_country(d, ev, err), TD_HAS_COUNTRY);
    TAKE(read_text(d, "sector", "data.sector", ev->sector, TD_SHORT_MAX, false, err), TD_HAS_SECTOR);
    TAKE(read_timezone(d, ev, err), TD_HAS_TIMEZONE);
    e = 0;
    TAKE(read_enum(d, "gift_policy", "data.gift_policy", &gift_policies, &e, err),
         TD_HAS_GIFT_POLICY);
    ev->gift_policy = (td_gift_policy)e;
    TAKE(read_consent(d, ev, err), TD_HAS_CONSENT);
    TAKE(read_dec(d, "lifetime_value_eur", "data.lifetime_value_eur", buf, len,
                  &ev->lifetime_value_eur, err),
         TD_HAS_LTV);
    TAKE(read_language(d, ev, err), TD_HAS_LANGUAGE);
    return TD_OK;
}

static int decode_gift(json_t *d, const char *buf, size_t len, td_event *ev, td_event_error *err)
{
    int e = 0;
    TAKE(read_enum(d, "kind", "data.kind", &gift_kinds, &e, err), TD_HAS_GIFT_KIND);
    ev->gift_kind = (td_gift_kind)e;
    TAKE(read_dec(d, "value_eur", "data.value_eur", buf, len, &ev->value_eur, err), TD_HAS_VALUE);
    TAKE(read_int(d, "items", "data.items", 1, INT64_MAX, &ev->items, err), TD_HAS_ITEMS);
    TAKE(read_text(d, "wrapping", "data.wrapping", ev->wrapping, TD_SHORT_MAX, false, err),
         TD_HAS_WRAPPING);
    /* Free text: its type is checked, its content never kept. */
    const char *s;
    size_t n;
    TAKE(read_str(d, "description", "data.description", &s, &n, err), TD_HAS_DESCRIPTION);
    return TD_OK;
}

static int decode_data(json_t *d, const char *buf, size_t len, td_event *ev, td_event_error *err)
{
    td_event_type t = ev->type;
    switch (ev->channel) {
    case TD_CH_EMAIL:
    case TD_CH_WHATSAPP:
    case TD_CH_SMS:
        TAKE(read_text(d, "message_id", "data.message_id", ev->message_id, TD_ID_MAX, false, err),
             TD_HAS_MESSAGE_ID);
        TAKE(read_text(d, "kind", "data.kind", ev->kind, TD_SHORT_MAX, false, err), TD_HAS_KIND);
        if (t == TD_EV_EMAIL_OPENED)
            TAKE(read_bool(d, "human", "data.human", &ev->human, err), TD_HAS_HUMAN);
        if (t == TD_EV_EMAIL_BOUNCED)
            TAKE(read_bool(d, "hard", "data.hard", &ev->hard, err), TD_HAS_HARD);
        break;
    case TD_CH_CALL:
        TAKE(read_int(d, "duration_s", "data.duration_s", 0, INT64_MAX, &ev->duration_s, err),
             TD_HAS_DURATION);
        break;
    case TD_CH_MEETING:
        TAKE(read_time(d, "at", "data.at", false, &ev->at, err), TD_HAS_AT);
        break;
    case TD_CH_GIFT:
        return decode_gift(d, buf, len, ev, err);
    case TD_CH_LINKEDIN:
        break;
    default:
        if (t == TD_EV_OWNER_PROSPECT_CONTACTED)
            return TD_OK; /* no data fields */
        return decode_prospect(d, buf, len, ev, err);
    }
    if (t == TD_EV_EMAIL_REPLIED || t == TD_EV_WHATSAPP_REPLIED || t == TD_EV_SMS_REPLIED ||
        t == TD_EV_LINKEDIN_REPLIED) {
        int e = 0;
        TAKE(read_enum(d, "sentiment", "data.sentiment", &sentiments, &e, err), TD_HAS_SENTIMENT);
        ev->sentiment = (td_sentiment)e;
    }
    return TD_OK;
}

/* ---- the envelope ---- */

static int parse_error(const char *buf, size_t len, const json_error_t *je, td_event_error *err)
{
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
    if (bad >= 0)
        return fail(err, "", "not valid UTF-8 (byte offset %ld)", bad);
    return fail(err, "", "not valid JSON: %s at line %d column %d", je->text, je->line,
                je->column);
}

static int decode_object(json_t *root, const char *buf, size_t len, td_event *ev,
                         td_event_error *err)
{
    const char *s;
    size_t n;
    int rc;

    if (read_text(root, "id", "id", ev->id, TD_ID_MAX, true, err) != 0)
        return TD_ERR;

    rc = read_str(root, "type", "type", &s, &n, err);
    if (rc == ABSENT)
        return fail(err, "type", "is required");
    if (rc != 0)
        return TD_ERR;
    int t = td_event_type_parse(s, n);
    if (t < 0) {
        char e[40];
        return fail(err, "type", "unknown event type '%s'", echo(s, n, e));
    }
    ev->type = (td_event_type)t;
    ev->channel = td_event_type_channel(ev->type);

    if (read_text(root, "prospect_id", "prospect_id", ev->prospect_id, TD_ID_MAX, true, err) != 0)
        return TD_ERR;
    if (read_time(root, "occurred_at", "occurred_at", true, &ev->occurred_at, err) != 0)
        return TD_ERR;
    TAKE(read_text(root, "owner_id", "owner_id", ev->owner_id, TD_ID_MAX, false, err),
         TD_HAS_OWNER);

    /* Defaults before data: a missing or null data object still gets them. */
    ev->human = ev->type == TD_EV_EMAIL_OPENED;

    json_t *data = json_object_get(root, "data");
    if (data == NULL || json_is_null(data))
        return TD_OK;
    if (!json_is_object(data))
        return fail(err, "data", "must be an object");
    return decode_data(data, buf, len, ev, err);
}

/*
 * jansson allocates every value, key and string of a parse with malloc and
 * frees them again in json_decref; on a 200-byte event that is about a
 * quarter of the decode. A decode builds and drops its whole tree inside
 * td_event_decode, so during a decode jansson allocates from a per-thread bump
 * arena (jansson's supported json_set_alloc_funcs hook) that is reset when
 * the decode ends. Outside a decode, and when the arena is full (a large
 * event), allocations go to malloc; td_jfree frees only what is not inside
 * the arena, so other jansson users in the process are unaffected.
 */
#define TD_ARENA_SIZE (256 * 1024)
static _Thread_local struct {
    char *base;
    size_t used;
    bool active;
} td_arena;

static void *td_jmalloc(size_t n)
{
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

static void td_jfree(void *p)
{
    if (p && td_arena.base && (char *)p >= td_arena.base &&
        (char *)p < td_arena.base + TD_ARENA_SIZE)
        return; /* reclaimed when the decode ends */
    free(p);
}

static void td_jansson_setup(void)
{
    json_set_alloc_funcs(td_jmalloc, td_jfree);
}

static pthread_once_t td_jansson_once = PTHREAD_ONCE_INIT;

int td_event_decode(const char *buf, size_t len, td_event *ev, td_event_error *err)
{
    td_event_error scratch;
    if (err == NULL)
        err = &scratch;
    err->field[0] = '\0';
    err->reason[0] = '\0';

    if (len > TD_EVENT_MAX)
        return fail(err, "", "oversize: %zu bytes, the limit is %d", len, TD_EVENT_MAX);
    if (buf == NULL || len == 0)
        return fail(err, "", "empty message");
    /* jansson would refuse a raw NUL too, but as a vague syntax error. */
    const char *nul = memchr(buf, '\0', len);
    if (nul != NULL)
        return fail(err, "", "contains a NUL byte (byte offset %ld)", (long)(nul - buf));

    pthread_once(&td_jansson_once, td_jansson_setup);
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
        memset(ev, 0, sizeof *ev);
        /* Sentinels make a stray read of an unset field obviously "missing". */
        ev->duration_s = TD_INT_MISSING;
        ev->at = TD_MS_MISSING;
        ev->value_eur = TD_DEC_MISSING;
        ev->items = TD_INT_MISSING;
        ev->tier = TD_INT_MISSING;
        ev->lifetime_value_eur = TD_DEC_MISSING;
        rc = decode_object(root, buf, len, ev, err);
    }
    json_decref(root);
    td_arena.active = false;
    td_arena.used = 0;
    return rc;
}
