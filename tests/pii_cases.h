/*
 * pii_cases.h - invalid events with personal data planted in the invalid
 * part, one or more for every kind of rejection the decoder makes (issue 18,
 * item 6). Shared by tests/unit/test_event.c, which checks that the field
 * and the reason never hold a piece of the planted data and are printable
 * ASCII, and tests/integration/test_pii.c, which feeds them to the real
 * daemon and greps its log, the dead-letter headers, the output topic and
 * Redis for the planted data.
 *
 * Every case is rejected by td_event_decode with exactly `field` and a
 * reason containing `reason`. The planted values are the three of
 * TD_PII_VALUES; TD_PII_PIECES are the fragments the tests look for (a
 * fragment, so a value cut or re-cased somewhere is still found).
 */
#ifndef TD_TEST_PII_CASES_H
#define TD_TEST_PII_CASES_H

#include <stddef.h>

#define PII_EMAIL "jeanne.dupontel@example.org"
#define PII_PHONE "+33 6 12 34 56 78"
#define PII_NAME "Jeanne Dupontel"
/* 5 x 27 = 135 bytes: beyond every 128-byte id; 3 x 27 beyond 64 */
#define PII_EMAIL_3 PII_EMAIL PII_EMAIL PII_EMAIL
#define PII_EMAIL_5 PII_EMAIL_3 PII_EMAIL PII_EMAIL

#define TD_PII_VALUES                                                                              \
    { PII_EMAIL, PII_PHONE, PII_NAME }
/* Lower-cased fragments: search case-insensitively. */
#define TD_PII_PIECES                                                                              \
    { "jeanne", "dupontel", "example.org", "12 34 56", "+33 6", "33612345678" }

/* An event of type T for prospect p-pii, with `rest` (e.g. ",\"data\":{...}")
 * before the closing brace. Its time is fixed: decoding fails before the
 * daemon's time bounds are looked at. */
#define PII_ENV(T, rest)                                                                           \
    "{\"id\":\"e-pii\",\"type\":\"" T "\",\"prospect_id\":\"p-pii\","                              \
    "\"occurred_at\":\"2026-11-22T10:15:00Z\"" rest "}"
#define PII_DATA(T, data) PII_ENV(T, ",\"data\":" data)
/* msg and its length (sizeof - 1: a case may hold a NUL byte) */
#define PII_MSG(s) s, sizeof(s) - 1

typedef struct td_pii_case {
    const char *what; /* the kind of invalid field */
    const char *msg;
    size_t len;
    const char *field;  /* exactly */
    const char *reason; /* a part of it */
} td_pii_case;

static const td_pii_case td_pii_cases[] = {
    /* unknown type */
    {"unknown type (email)", PII_MSG(PII_ENV(PII_EMAIL, "")), "type", "is not a known event type"},
    {"unknown type (phone)", PII_MSG(PII_ENV(PII_PHONE, "")), "type", "is not a known event type"},
    /* bad enumerated values */
    {"bad enum: sentiment", PII_MSG(PII_DATA("email.replied", "{\"sentiment\":\"" PII_EMAIL "\"}")),
     "data.sentiment", "must be one of positive, neutral, negative, out_of_office"},
    {"bad enum: stage", PII_MSG(PII_DATA("prospect.updated", "{\"stage\":\"" PII_NAME "\"}")),
     "data.stage", "must be one of new, contacted"},
    {"bad enum: gift_policy",
     PII_MSG(PII_DATA("prospect.updated", "{\"gift_policy\":\"" PII_PHONE "\"}")),
     "data.gift_policy", "must be one of allowed, restricted, forbidden"},
    {"bad enum: gift kind", PII_MSG(PII_DATA("gift.sent", "{\"kind\":\"" PII_EMAIL "\"}")),
     "data.kind", "must be one of object, card"},
    /* wrong JSON types */
    {"wrong type: id object",
     PII_MSG("{\"id\":{\"name\":\"" PII_NAME "\"},\"type\":\"email.sent\"}"), "id",
     "must be a string (got an object)"},
    {"wrong type: type array", PII_MSG("{\"id\":\"e-pii\",\"type\":[\"" PII_EMAIL "\"]}"), "type",
     "must be a string (got an array)"},
    {"wrong type: tier", PII_MSG(PII_DATA("prospect.updated", "{\"tier\":\"" PII_PHONE "\"}")),
     "data.tier", "must be an integer (got a string)"},
    {"wrong type: duration_s",
     PII_MSG(PII_DATA("call.connected", "{\"duration_s\":\"" PII_PHONE "\"}")), "data.duration_s",
     "must be an integer (got a string)"},
    {"wrong type: items", PII_MSG(PII_DATA("gift.sent", "{\"items\":[\"" PII_NAME "\"]}")),
     "data.items", "must be an integer (got an array)"},
    {"wrong type: human", PII_MSG(PII_DATA("email.opened", "{\"human\":\"" PII_EMAIL "\"}")),
     "data.human", "must be true or false (got a string)"},
    {"wrong type: hard",
     PII_MSG(PII_DATA("email.bounced", "{\"hard\":{\"by\":\"" PII_EMAIL "\"}}")), "data.hard",
     "must be true or false (got an object)"},
    {"wrong type: data", PII_MSG(PII_DATA("email.sent", "\"" PII_EMAIL "\"")), "data",
     "must be an object (got a string)"},
    {"wrong type: consent",
     PII_MSG(PII_DATA("prospect.updated", "{\"consent\":\"" PII_EMAIL "\"}")), "data.consent",
     "must be an object of channel -> true/false (got a string)"},
    {"wrong type: consent value",
     PII_MSG(PII_DATA("prospect.updated", "{\"consent\":{\"email\":\"" PII_EMAIL "\"}}")),
     "data.consent.email", "must be true or false (got a string)"},
    {"wrong type: value_eur",
     PII_MSG(PII_DATA("gift.sent", "{\"value_eur\":{\"" PII_EMAIL "\":\"" PII_NAME "\"}}")),
     "data.value_eur", "must be a number or a decimal string (got an object)"},
    {"wrong type: description",
     PII_MSG(PII_DATA("gift.sent", "{\"description\":[\"" PII_NAME "\"]}")), "data.description",
     "must be a string (got an array)"},
    /* too long */
    {"too long: id",
     PII_MSG("{\"id\":\"" PII_EMAIL_5 "\",\"type\":\"email.sent\",\"prospect_id\":\"p-pii\"}"),
     "id", "must be 1..128 bytes long (got 135)"},
    {"too long: prospect_id",
     PII_MSG("{\"id\":\"e-pii\",\"type\":\"email.sent\",\"prospect_id\":\"" PII_EMAIL_5 "\"}"),
     "prospect_id", "must be 1..128 bytes long (got 135)"},
    {"too long: owner_id", PII_MSG(PII_ENV("email.sent", ",\"owner_id\":\"" PII_EMAIL_5 "\"")),
     "owner_id", "must be 1..128 bytes long (got 135)"},
    {"too long: message_id",
     PII_MSG(PII_DATA("email.sent", "{\"message_id\":\"" PII_EMAIL_5 "\"}")), "data.message_id",
     "must be 1..128 bytes long (got 135)"},
    {"too long: kind", PII_MSG(PII_DATA("sms.sent", "{\"kind\":\"" PII_EMAIL_3 "\"}")), "data.kind",
     "must be 1..64 bytes long (got 81)"},
    {"too long: sector", PII_MSG(PII_DATA("prospect.updated", "{\"sector\":\"" PII_EMAIL_3 "\"}")),
     "data.sector", "must be 1..64 bytes long (got 81)"},
    {"too long: wrapping", PII_MSG(PII_DATA("gift.sent", "{\"wrapping\":\"" PII_EMAIL_3 "\"}")),
     "data.wrapping", "must be 1..64 bytes long (got 81)"},
    {"too long: timezone",
     PII_MSG(PII_DATA("prospect.updated", "{\"timezone\":\"" PII_EMAIL_3 "\"}")), "data.timezone",
     "must be 1..64 bytes long (got 81)"},
    {"too long: recommendation_id",
     PII_MSG(PII_DATA("recommendation.acted", "{\"recommendation_id\":\"" PII_EMAIL_5 "\"}")),
     "data.recommendation_id", "must be 1..128 bytes long (got 135)"},
    /* malformed values */
    {"bad country", PII_MSG(PII_DATA("prospect.updated", "{\"country\":\"" PII_EMAIL "\"}")),
     "data.country", "must be an ISO 3166 alpha-2 code"},
    {"bad timezone", PII_MSG(PII_DATA("prospect.updated", "{\"timezone\":\"" PII_PHONE "\"}")),
     "data.timezone", "must be an IANA zone id"},
    {"bad language", PII_MSG(PII_DATA("prospect.updated", "{\"language\":\"" PII_NAME "\"}")),
     "data.language", "must be a BCP 47 language tag"},
    {"bad decimal string", PII_MSG(PII_DATA("gift.sent", "{\"value_eur\":\"" PII_PHONE "\"}")),
     "data.value_eur", "must be a decimal number"},
    {"bad decimal string (ltv)",
     PII_MSG(PII_DATA("prospect.updated", "{\"lifetime_value_eur\":\"" PII_EMAIL "\"}")),
     "data.lifetime_value_eur", "must be a decimal number"},
    /* keys the sender chose: named by position */
    {"unknown consent key",
     PII_MSG(PII_DATA("prospect.updated", "{\"consent\":{\"" PII_EMAIL "\":true}}")),
     "data.consent[#1]", "is a key that is not a channel"},
    {"unknown consent key, third",
     PII_MSG(PII_DATA("prospect.updated",
                      "{\"consent\":{\"email\":true,\"sms\":false,\"" PII_NAME "\":true}}")),
     "data.consent[#3]", "is a key that is not a channel"},
    {"unknown data key beside a bad field",
     PII_MSG(PII_DATA("prospect.updated", "{\"" PII_EMAIL "\":\"" PII_NAME "\",\"tier\":9}")),
     "data.tier", "must be 1..3"},
    {"nested unknown key beside a bad field",
     PII_MSG(PII_DATA("prospect.updated", "{\"crm\":{\"contact\":{\"" PII_EMAIL "\":\"" PII_PHONE
                                          "\"}},\"stage\":\"" PII_NAME "\"}")),
     "data.stage", "must be one of"},
    {"top-level unknown key beside a bad time",
     PII_MSG("{\"id\":\"e-pii\",\"type\":\"email.sent\",\"prospect_id\":\"p-pii\",\"" PII_EMAIL
             "\":{\"" PII_NAME "\":\"" PII_PHONE "\"},\"occurred_at\":\"yesterday\"}"),
     "occurred_at", "must be an RFC 3339 date-time"},
    /* bad times */
    {"bad time: occurred_at",
     PII_MSG("{\"id\":\"e-pii\",\"type\":\"email.sent\",\"prospect_id\":"
             "\"p-pii\",\"occurred_at\":\"" PII_PHONE "\"}"),
     "occurred_at", "must be an RFC 3339 date-time"},
    {"bad time: at", PII_MSG(PII_DATA("meeting.booked", "{\"at\":\"" PII_EMAIL "\"}")), "data.at",
     "must be an RFC 3339 date-time"},
    {"bad time: until",
     PII_MSG(PII_DATA("recommendation.snoozed",
                      "{\"recommendation_id\":\"r-1\",\"until\":\"2026-11-23T" PII_NAME "\"}")),
     "data.until", "must be an RFC 3339 date-time"},
    /* bad characters in ids and short strings (escaped: valid JSON) */
    {"control character in id",
     PII_MSG("{\"id\":\"" PII_EMAIL "\\u0007\",\"type\":\"email.sent\"}"), "id",
     "must not contain control characters"},
    {"escape sequence in prospect_id",
     PII_MSG("{\"id\":\"e-pii\",\"type\":\"email.sent\",\"prospect_id\":\"\\u001b[31m" PII_NAME
             "\"}"),
     "prospect_id", "must not contain control characters"},
    {"DEL in owner_id", PII_MSG(PII_ENV("email.sent", ",\"owner_id\":\"" PII_PHONE "\\u007f\"")),
     "owner_id", "must not contain control characters"},
    {"tab in message_id", PII_MSG(PII_DATA("email.sent", "{\"message_id\":\"" PII_EMAIL "\\t\"}")),
     "data.message_id", "must not contain control characters"},
    /* bytes that are not UTF-8 */
    {"not UTF-8 in id", PII_MSG("{\"id\":\"" PII_EMAIL "\xff\",\"type\":\"email.sent\"}"), "",
     "not valid UTF-8 (byte offset 34)"},
    {"not UTF-8 in a key", PII_MSG(PII_DATA("prospect.updated", "{\"" PII_NAME "\xc3\x28\":true}")),
     "", "not valid UTF-8"},
    {"overlong UTF-8 in sector",
     PII_MSG(PII_DATA("prospect.updated", "{\"sector\":\"" PII_NAME "\xc0\xaf\"}")), "",
     "not valid UTF-8"},
    /* raw control characters and NUL bytes */
    {"raw control character", PII_MSG("{\"id\":\"" PII_EMAIL "\x01\",\"type\":\"email.sent\"}"), "",
     "not valid JSON: control character inside a string at line 1"},
    {"raw newline", PII_MSG("{\"id\":\"e-pii\",\"type\":\"" PII_NAME "\n\"}"), "",
     "not valid JSON: newline inside a string"},
    {"raw NUL byte", PII_MSG("{\"id\":\"" PII_EMAIL "\0\"}"), "",
     "contains a NUL byte (byte offset 34)"},
    {"escaped NUL", PII_MSG("{\"id\":\"" PII_EMAIL "\\u0000\"}"), "", "\\u0000 is not allowed"},
    /* not JSON: jansson's own text would quote the input */
    {"not JSON: bare word", PII_MSG("{\"id\":" PII_EMAIL "}"), "", "not valid JSON: invalid token"},
    {"not JSON: short bare word", PII_MSG("{\"id\":jeanne}"), "", "not valid JSON: invalid token"},
    {"not JSON: trailing text", PII_MSG("{\"id\":\"e-pii\"} " PII_NAME), "",
     "not valid JSON: end of input expected"},
    {"not JSON: unpaired surrogate", PII_MSG("{\"id\":\"" PII_NAME "\\ud83d\"}"), "",
     "not valid JSON: invalid \\u escape (an unpaired surrogate)"},
    {"not JSON: bad escape", PII_MSG("{\"id\":\"" PII_NAME "\\q\"}"), "",
     "not valid JSON: invalid escape"},
    {"not JSON: missing colon", PII_MSG("{\"" PII_EMAIL "\" \"" PII_NAME "\"}"), "",
     "not valid JSON: ':' expected"},
    {"not JSON: cut short", PII_MSG("{\"id\":\"" PII_EMAIL), "",
     "not valid JSON: premature end of input"},
    {"duplicate key", PII_MSG("{\"" PII_EMAIL "\":1,\"" PII_EMAIL "\":2}"), "",
     "duplicate key at line 1 column"},
    {"not an object", PII_MSG("[\"" PII_EMAIL "\",\"" PII_PHONE "\"]"), "", "not a JSON object"},
    {"number out of range",
     PII_MSG(PII_DATA("call.connected", "{\"duration_s\":"
                                        "33612345678336123456783361234567}")),
     "", "number out of range"},
};

#define TD_PII_NCASES (sizeof td_pii_cases / sizeof td_pii_cases[0])

#endif
