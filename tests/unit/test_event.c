/*
 * test_event.c - unit tests for td_event_decode: every event type, every
 * data field, every rejection (field and reason asserted), and the exact
 * decimal conversion. Reject cases are a table: adding one needs one line.
 *
 * The decoder has a fast path and a jansson path (td_event_internal.h): the
 * test_fast_* cases check that the fast path accepts real events of every
 * type with the jansson path's exact td_event, declines what it must, and
 * that every rejection still reads as the jansson path words it.
 */
#include <ctype.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "pii_cases.h"
#include "td_event.h"
#include "td_event_internal.h"
#include "td_time.h"

#define ENV_FMT                                                                                    \
    "{\"id\":\"e-1\",\"type\":\"%s\",\"prospect_id\":\"p-42\","                                    \
    "\"occurred_at\":\"2026-11-22T10:15:00Z\"%s%s}"

static char msg_buf[TD_EVENT_MAX * 2];

/* A message of `type` with `data` (JSON text, or NULL for none). */
static const char *env(const char *type, const char *data) {
    snprintf(msg_buf, sizeof msg_buf, ENV_FMT, type, data ? ",\"data\":" : "", data ? data : "");
    return msg_buf;
}

static td_event decode_ok(const char *json) {
    td_event ev;
    td_event_error err;
    if (td_event_decode(json, strlen(json), &ev, &err) != TD_OK)
        fail_msg("rejected %s: %s: %s", json, err.field, err.reason);
    return ev;
}

/* The fast path must decline `json`, and td_event_decode must answer as
 * the jansson path alone does, to the byte. */
static void expect_same_rejection(const char *json, size_t len) {
    td_event ev;
    td_event_error err, slow_err;
    if (td_event_decode_fast(json, len, &ev) != TD_EVENT_DECLINED)
        fail_msg("fast path accepted: %.200s", json);
    assert_int_equal(td_event_decode_slow(json, len, &ev, &slow_err), TD_ERR);
    assert_int_equal(td_event_decode(json, len, &ev, &err), TD_ERR);
    assert_string_equal(err.field, slow_err.field);
    assert_string_equal(err.reason, slow_err.reason);
}

static void expect_reject(const char *json, size_t len, const char *field, const char *reason) {
    td_event ev;
    td_event_error err;
    if (td_event_decode(json, len, &ev, &err) != TD_ERR) fail_msg("accepted: %.200s", json);
    if (strcmp(err.field, field) != 0 || strstr(err.reason, reason) == NULL)
        fail_msg("%.200s\n  got      field '%s' reason '%s'\n  expected field '%s' reason ~'%s'",
                 json, err.field, err.reason, field, reason);
    expect_same_rejection(json, len);
}

/* The fast path must accept `json` with exactly the jansson path's event:
 * both paths fill the struct from the same zeroed start, so memcmp also
 * compares padding and the bytes after each string's NUL. */
static td_event expect_fast(const char *json) {
    td_event fast, slow;
    td_event_error err;
    memset(&fast, 0xa5, sizeof fast);
    memset(&slow, 0x5a, sizeof slow);
    if (td_event_decode_slow(json, strlen(json), &slow, &err) != TD_OK)
        fail_msg("slow path rejected %s: %s: %s", json, err.field, err.reason);
    if (td_event_decode_fast(json, strlen(json), &fast) != TD_OK)
        fail_msg("fast path declined: %s", json);
    if (memcmp(&fast, &slow, sizeof fast) != 0) fail_msg("fast and slow paths differ on: %s", json);
    return fast;
}

/* A message both paths accept, the fast one declining it. */
static void expect_declined_ok(const char *json, size_t len) {
    td_event ev, slow;
    td_event_error err;
    if (td_event_decode_fast(json, len, &ev) != TD_EVENT_DECLINED)
        fail_msg("fast path accepted: %.200s", json);
    if (td_event_decode_slow(json, len, &slow, &err) != TD_OK)
        fail_msg("slow path rejected %.200s: %s: %s", json, err.field, err.reason);
    assert_int_equal(td_event_decode(json, len, &ev, &err), TD_OK);
    assert_memory_equal(&ev, &slow, sizeof ev);
}

static void test_type_names(void **state) {
    (void)state;
    /* the contract's 34 + 3 feedback types + owner.prospect_contacted */
    assert_int_equal(TD_EV__COUNT, 38);
    for (int i = 0; i < TD_EV__COUNT; i++) {
        const char *n = td_event_type_name((td_event_type)i);
        assert_non_null(n);
        assert_int_equal(td_event_type_parse(n, strlen(n)), i);
        /* The channel is the part before the dot. */
        td_channel ch = td_event_type_channel((td_event_type)i);
        const char *dot = strchr(n, '.');
        if (ch == TD_CH_NONE)
            assert_true(strcmp(n, "prospect.updated") == 0 ||
                        strcmp(n, "owner.prospect_contacted") == 0 ||
                        strncmp(n, "recommendation.", 15) == 0);
        else
            assert_int_equal(td_channel_parse(n, (size_t)(dot - n)), ch);
    }
    assert_null(td_event_type_name(TD_EV__COUNT));
    assert_int_equal(td_event_type_parse("email.open", 10), -1);
    assert_int_equal(td_event_type_parse("email.opened", 11), -1);
    assert_int_equal(td_event_type_parse("EMAIL.OPENED", 12), -1);
    assert_int_equal(td_event_type_parse("", 0), -1);

    assert_string_equal(td_sentiment_name(TD_SENT_NONE), "");
    assert_string_equal(td_sentiment_name(TD_SENT_OUT_OF_OFFICE), "out_of_office");
    assert_string_equal(td_stage_name(TD_STAGE_NEGOTIATION), "negotiation");
    assert_int_equal(td_stage_parse("won", 3), TD_STAGE_WON);
    assert_int_equal(td_stage_parse("Won", 3), -1);
    assert_int_equal(td_stage_parse("", 0), -1);
    assert_string_equal(td_gift_policy_name(TD_GP_RESTRICTED), "restricted");
    assert_int_equal(td_gift_policy_parse("forbidden", 9), TD_GP_FORBIDDEN);
    assert_int_equal(td_gift_policy_parse("none", 4), -1);
    assert_string_equal(td_gift_kind_name(TD_GK_EXPERIENCE), "experience");
    assert_int_equal(td_gift_kind_parse("donation", 8), TD_GK_DONATION);
    assert_int_equal(td_gift_kind_parse("car", 3), -1);
    assert_string_equal(td_gift_kind_name((td_gift_kind)99), "");
}

static void test_envelope(void **state) {
    (void)state;
    td_event ev =
        decode_ok("{\"id\":\"e-20261122-000123\",\"type\":\"email.opened\","
                  "\"prospect_id\":\"p-42\",\"occurred_at\":\"2026-11-22T11:15:00.250+01:00\","
                  "\"owner_id\":\"rep-7\",\"data\":{}}");
    assert_int_equal(ev.type, TD_EV_EMAIL_OPENED);
    assert_int_equal(ev.channel, TD_CH_EMAIL);
    assert_string_equal(ev.id, "e-20261122-000123");
    assert_string_equal(ev.prospect_id, "p-42");
    assert_string_equal(ev.owner_id, "rep-7");
    assert_true(ev.has & TD_HAS_OWNER);
    assert_int_equal(ev.occurred_at, 1795342500250LL);
    assert_true(ev.human); /* default for opened */
    assert_false(ev.has & TD_HAS_HUMAN);

    /* Minimal event; no owner, no data; unknown fields anywhere ignored. */
    ev = decode_ok("  {\"id\":\"x\",\"type\":\"call.attempted\",\"prospect_id\":\"p\","
                   "\"occurred_at\":\"2026-11-22T10:15:00Z\",\"crm\":{\"a\":[1,2,{\"b\":null}]},"
                   "\"schema\":3}\n");
    assert_int_equal(ev.type, TD_EV_CALL_ATTEMPTED);
    assert_int_equal(ev.has, 0);
    assert_string_equal(ev.owner_id, "");
    assert_true(ev.duration_s == TD_INT_MISSING);
    assert_true(ev.at == TD_MS_MISSING);
    assert_true(ev.value_eur == TD_DEC_MISSING);

    /* null means "not given" for optional fields. */
    ev = decode_ok("{\"id\":\"x\",\"type\":\"email.sent\",\"prospect_id\":\"p\","
                   "\"occurred_at\":\"2026-11-22T10:15:00Z\",\"owner_id\":null,\"data\":null}");
    assert_int_equal(ev.has, 0);

    /* ids: UTF-8 allowed, exactly 128 bytes allowed, key order free. */
    char id128[129];
    memset(id128, 'a', 128);
    id128[128] = '\0';
    char json[1024];
    snprintf(json, sizeof json,
             "{\"occurred_at\":\"2026-11-22T10:15:00Z\",\"prospect_id\":\"pr\xc3\xa9-\\u00e9\","
             "\"type\":\"email.sent\",\"id\":\"%s\"}",
             id128);
    ev = decode_ok(json);
    assert_string_equal(ev.id, id128);
    assert_string_equal(ev.prospect_id, "pr\xc3\xa9-\xc3\xa9");
    /* Escaped keys are the same keys. */
    ev = decode_ok("{\"\\u0069d\":\"x\",\"type\":\"email.sent\",\"prospect_id\":\"p\","
                   "\"occurred_at\":\"2026-11-22T10:15:00Z\"}");
    assert_string_equal(ev.id, "x");
}

static void test_email_types(void **state) {
    (void)state;
    td_event ev;
    ev = decode_ok(env("email.sent", "{\"message_id\":\"m-1\",\"kind\":\"follow_up\","
                                     "\"human\":false,\"sentiment\":\"bogus\",\"hard\":7}"));
    assert_int_equal(ev.type, TD_EV_EMAIL_SENT);
    assert_string_equal(ev.message_id, "m-1");
    assert_string_equal(ev.kind, "follow_up");
    /* human/sentiment/hard do not belong to email.sent: not read at all. */
    assert_int_equal(ev.has, TD_HAS_MESSAGE_ID | TD_HAS_KIND);
    assert_false(ev.human);

    ev = decode_ok(env("email.opened", "{\"human\":false}"));
    assert_false(ev.human);
    assert_true(ev.has & TD_HAS_HUMAN);
    ev = decode_ok(env("email.opened", "{\"human\":true}"));
    assert_true(ev.human);
    ev = decode_ok(env("email.opened", NULL));
    assert_true(ev.human);

    ev = decode_ok(env("email.replied", "{\"sentiment\":\"out_of_office\",\"human\":3}"));
    assert_int_equal(ev.sentiment, TD_SENT_OUT_OF_OFFICE);
    assert_int_equal(ev.has, TD_HAS_SENTIMENT);
    ev = decode_ok(env("email.replied", "{}"));
    assert_int_equal(ev.sentiment, TD_SENT_NONE);

    ev = decode_ok(env("email.bounced", "{\"hard\":true,\"message_id\":\"m\"}"));
    assert_true(ev.hard);
    assert_int_equal(ev.has, TD_HAS_HARD | TD_HAS_MESSAGE_ID);
    ev = decode_ok(env("email.bounced", "{\"hard\":false}"));
    assert_false(ev.hard);
    assert_true(ev.has & TD_HAS_HARD);

    static const char *others[] = {"email.delivered", "email.clicked", "email.unsubscribed"};
    for (size_t i = 0; i < 3; i++) {
        ev = decode_ok(env(others[i], "{\"kind\":\"proposal\",\"sentiment\":1,\"hard\":1}"));
        assert_string_equal(ev.kind, "proposal");
        assert_int_equal(ev.has, TD_HAS_KIND);
    }
}

static void test_whatsapp_sms_linkedin(void **state) {
    (void)state;
    static const char *ws[] = {"whatsapp", "sms"};
    static const char *acts[] = {"sent",   "delivered", "read",     "replied",
                                 "failed", "opted_in",  "opted_out"};
    for (size_t c = 0; c < 2; c++)
        for (size_t a = 0; a < 7; a++) {
            char type[32];
            snprintf(type, sizeof type, "%s.%s", ws[c], acts[a]);
            td_event ev =
                decode_ok(env(type, "{\"message_id\":\"wa-1\",\"kind\":\"value\","
                                    "\"sentiment\":\"positive\",\"human\":1,\"hard\":1}"));
            assert_int_equal(ev.type, td_event_type_parse(type, strlen(type)));
            assert_int_equal(ev.channel, c == 0 ? TD_CH_WHATSAPP : TD_CH_SMS);
            assert_string_equal(ev.message_id, "wa-1");
            assert_string_equal(ev.kind, "value");
            uint32_t want = TD_HAS_MESSAGE_ID | TD_HAS_KIND;
            if (a == 3) {
                want |= TD_HAS_SENTIMENT;
                assert_int_equal(ev.sentiment, TD_SENT_POSITIVE);
            }
            assert_int_equal(ev.has, want);
        }
    static const char *li[] = {"linkedin.invited", "linkedin.accepted", "linkedin.messaged",
                               "linkedin.replied"};
    for (size_t i = 0; i < 4; i++) {
        td_event ev = decode_ok(env(li[i], "{\"message_id\":\"x\",\"kind\":\"x\","
                                           "\"sentiment\":\"negative\"}"));
        assert_int_equal(ev.channel, TD_CH_LINKEDIN);
        if (i == 3) {
            assert_int_equal(ev.has, TD_HAS_SENTIMENT);
            assert_int_equal(ev.sentiment, TD_SENT_NEGATIVE);
        } else {
            assert_int_equal(ev.has, 0);
        }
    }
}

static void test_call_meeting(void **state) {
    (void)state;
    static const char *calls[] = {"call.attempted", "call.connected", "call.voicemail"};
    for (size_t i = 0; i < 3; i++) {
        td_event ev = decode_ok(env(calls[i], "{\"duration_s\":312,\"at\":\"bogus\"}"));
        assert_int_equal(ev.channel, TD_CH_CALL);
        assert_int_equal(ev.duration_s, 312);
        assert_int_equal(ev.has, TD_HAS_DURATION);
    }
    td_event ev = decode_ok(env("call.connected", "{\"duration_s\":0}"));
    assert_int_equal(ev.duration_s, 0);

    static const char *meetings[] = {"meeting.booked", "meeting.held", "meeting.cancelled",
                                     "meeting.no_show"};
    for (size_t i = 0; i < 4; i++) {
        ev = decode_ok(
            env(meetings[i], "{\"at\":\"2026-12-01T14:00:00+01:00\",\"duration_s\":\"x\"}"));
        assert_int_equal(ev.channel, TD_CH_MEETING);
        assert_int_equal(ev.at, td_civil_to_ms(2026, 12, 1, 13, 0, 0));
        assert_int_equal(ev.has, TD_HAS_AT);
    }
}

static void test_gift(void **state) {
    (void)state;
    td_event ev =
        decode_ok(env("gift.sent", "{\"kind\":\"book\",\"value_eur\":12.5,\"items\":2,"
                                   "\"wrapping\":\"white\",\"description\":\"A signed copy\"}"));
    assert_int_equal(ev.channel, TD_CH_GIFT);
    assert_int_equal(ev.gift_kind, TD_GK_BOOK);
    assert_int_equal(ev.value_eur, 125000);
    assert_int_equal(ev.items, 2);
    assert_string_equal(ev.wrapping, "white");
    assert_int_equal(ev.has, TD_HAS_GIFT_KIND | TD_HAS_VALUE | TD_HAS_ITEMS | TD_HAS_WRAPPING |
                                 TD_HAS_DESCRIPTION);
    assert_string_equal(ev.kind, ""); /* the gift kind is not the message kind */

    static const char *kinds[] = {"object",     "card",    "basket",  "book",
                                  "experience", "service", "donation"};
    for (size_t i = 0; i < 7; i++) {
        char data[64];
        snprintf(data, sizeof data, "{\"kind\":\"%s\"}", kinds[i]);
        ev = decode_ok(env("gift.sent", data));
        assert_int_equal(ev.gift_kind, (int)i + 1);
    }
    ev = decode_ok(env("gift.sent", NULL));
    assert_int_equal(ev.has, 0);
    assert_int_equal(ev.gift_kind, TD_GK_NONE);
}

static void test_decimal_exact(void **state) {
    (void)state;
    static const struct {
        const char *text; /* as it appears in JSON */
        td_dec want;
    } cases[] = {
        {"0", 0},
        {"0.1", 1000},
        {"0.0001", 1},
        {"12.5", 125000},
        {"12.50", 125000},
        {"12.50000000", 125000},
        {"19.99", 199900},
        {"1234567.8901", 12345678901LL},
        {"100", 1000000},
        {"1e2", 1000000},
        {"1.5E+1", 150000},
        {"25e-4", 25},
        {"0.0", 0},
        {"-0", 0},
        {"-0.0", 0},
        {"0e-999999999999", 0},
        {"922337203685477.5807", INT64_MAX},
        {"922337203685477", 9223372036854770000LL},
        {"\"12.5\"", 125000},
        {"\"0.0001\"", 1},
        {"\"922337203685477.5807\"", INT64_MAX},
        {"\"7\"", 70000},
        {"\"1e3\"", 10000000},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char data[128];
        snprintf(data, sizeof data, "{\"value_eur\":%s}", cases[i].text);
        td_event ev = decode_ok(env("gift.sent", data));
        if (ev.value_eur != cases[i].want)
            fail_msg("%s: got %lld want %lld", cases[i].text, (long long)ev.value_eur,
                     (long long)cases[i].want);
        snprintf(data, sizeof data, "{\"lifetime_value_eur\":%s}", cases[i].text);
        ev = decode_ok(env("prospect.updated", data));
        assert_true(ev.lifetime_value_eur == cases[i].want);
        assert_true(ev.has & TD_HAS_LTV);
    }
    /* The raw-text lookup must find the right key: nested decoys, escaped
     * keys, whitespace, data after other objects. */
    td_event ev =
        decode_ok("{\"x\":{\"data\":{\"value_eur\":1.1}},\"id\":\"e\",\"type\":\"gift.sent\","
                  "\"prospect_id\":\"p\",\"occurred_at\":\"2026-11-22T10:15:00Z\","
                  "\"data\" : { \"a\":\"\\\"value_eur\\\":9.9\", \"n\":{\"value_eur\":3.3},"
                  "\"value\\u005feur\" :\n 2.25 , \"z\":[1.5]}}");
    assert_int_equal(ev.value_eur, 22500);
}

static void test_prospect_updated(void **state) {
    (void)state;
    td_event ev = decode_ok(
        env("prospect.updated",
            "{\"stage\":\"negotiation\",\"tier\":2,\"country\":\"fr\",\"sector\":\"manufacturing\","
            "\"timezone\":\"Europe/Paris\",\"gift_policy\":\"restricted\","
            "\"consent\":{\"email\":true,\"whatsapp\":false,\"sms\":null},"
            "\"lifetime_value_eur\":\"150000.00\",\"language\":\"pt-BR\",\"kind\":\"ignored\"}"));
    assert_int_equal(ev.channel, TD_CH_NONE);
    assert_int_equal(ev.stage, TD_STAGE_NEGOTIATION);
    assert_int_equal(ev.tier, 2);
    assert_string_equal(ev.country, "FR");
    assert_string_equal(ev.sector, "manufacturing");
    assert_string_equal(ev.timezone, "Europe/Paris");
    assert_int_equal(ev.gift_policy, TD_GP_RESTRICTED);
    assert_int_equal(ev.consent[TD_CH_EMAIL], TD_TRI_YES);
    assert_int_equal(ev.consent[TD_CH_WHATSAPP], TD_TRI_NO);
    assert_int_equal(ev.consent[TD_CH_SMS], TD_TRI_UNSET);
    assert_int_equal(ev.consent[TD_CH_GIFT], TD_TRI_UNSET);
    assert_int_equal(ev.lifetime_value_eur, 1500000000LL);
    assert_string_equal(ev.language, "pt-BR");
    assert_int_equal(ev.has, TD_HAS_STAGE | TD_HAS_TIER | TD_HAS_COUNTRY | TD_HAS_SECTOR |
                                 TD_HAS_TIMEZONE | TD_HAS_GIFT_POLICY | TD_HAS_CONSENT |
                                 TD_HAS_LTV | TD_HAS_LANGUAGE);
    assert_false(ev.has & TD_HAS_KIND);

    static const char *stages[] = {"new",         "contacted", "engaged", "proposal",
                                   "negotiation", "won",       "lost"};
    for (size_t i = 0; i < 7; i++) {
        char data[64];
        snprintf(data, sizeof data, "{\"stage\":\"%s\"}", stages[i]);
        ev = decode_ok(env("prospect.updated", data));
        assert_int_equal(ev.stage, (int)i + 1);
        assert_int_equal(ev.has, TD_HAS_STAGE);
    }
    ev = decode_ok(
        env("prospect.updated", "{\"tier\":1,\"gift_policy\":\"allowed\",\"language\":\"fr\"}"));
    assert_int_equal(ev.tier, 1);
    ev = decode_ok(env("prospect.updated", "{\"tier\":3,\"gift_policy\":\"forbidden\","
                                           "\"language\":\"zh-Hant-TW\",\"country\":\"Us\"}"));
    assert_int_equal(ev.tier, 3);
    assert_int_equal(ev.gift_policy, TD_GP_FORBIDDEN);
    assert_string_equal(ev.country, "US");
    ev = decode_ok(env("prospect.updated", "{\"consent\":{}}"));
    assert_int_equal(ev.has, TD_HAS_CONSENT);
    ev = decode_ok(env("prospect.updated", "{\"consent\":{\"email\":false,\"whatsapp\":true,"
                                           "\"sms\":true,\"linkedin\":true,\"call\":false,"
                                           "\"meeting\":true,\"gift\":false}}"));
    assert_int_equal(ev.consent[TD_CH_CALL], TD_TRI_NO);
    assert_int_equal(ev.consent[TD_CH_MEETING], TD_TRI_YES);
    /* Syntax only: the zone database decides later whether the zone exists. */
    ev = decode_ok(env("prospect.updated", "{\"timezone\":\"Mars/Olympus_Mons\"}"));
    assert_string_equal(ev.timezone, "Mars/Olympus_Mons");
    ev = decode_ok(env("prospect.updated", "{\"timezone\":\"Etc/GMT+5\"}"));
    assert_string_equal(ev.timezone, "Etc/GMT+5");
}

static void test_rejects(void **state) {
    (void)state;
    static const struct {
        const char *type;
        const char *data; /* NULL: `type` holds a whole message */
        const char *field;
        const char *reason;
    } cases[] = {
        /* message-level */
        {"", NULL, "", "empty message"},
        {"[1,2]", NULL, "", "not a JSON object"},
        {"\"x\"", NULL, "", "not a JSON object"},
        {"42", NULL, "", "not a JSON object"},
        {"{", NULL, "", "not valid JSON"},
        {"{\"id\":\"x\",}", NULL, "", "not valid JSON"},
        {"{} {}", NULL, "", "not valid JSON"},
        {"{\"id\":\"\xff\"}", NULL, "", "not valid UTF-8 (byte offset 7)"},
        {"{\"id\":\"\xc0\xaf\"}", NULL, "", "not valid UTF-8"},
        {"{\"id\":\"\xed\xa0\x80\"}", NULL, "", "not valid UTF-8"},
        {"{\"id\":\"x\\u0000y\"}", NULL, "", "\\u0000 is not allowed"},
        {"{\"id\":\"a\",\"id\":\"b\"}", NULL, "", "duplicate key"},
        {"{\"id\":\"a\",\"\\u0069d\":\"b\"}", NULL, "", "duplicate key"},
        {"{\"a\":99999999999999999999}", NULL, "", "number out of range"},
        {"{\"a\":1e999}", NULL, "", "number out of range"},
        /* envelope */
        {"{\"type\":\"email.sent\",\"prospect_id\":\"p\",\"occurred_at\":\"2026-11-22T10:15:00Z\"}",
         NULL, "id", "is required"},
        {"{\"id\":null,\"type\":\"email.sent\"}", NULL, "id", "is required"},
        {"{\"id\":7}", NULL, "id", "must be a string"},
        {"{\"id\":\"\"}", NULL, "id", "must be 1..128 bytes long (got 0)"},
        {"{\"id\":\"a\\tb\"}", NULL, "id", "control characters"},
        {"{\"id\":\"a\\u007fb\"}", NULL, "id", "control characters"},
        {"{\"id\":\"x\"}", NULL, "type", "is required"},
        {"{\"id\":\"x\",\"type\":[]}", NULL, "type", "must be a string"},
        {"{\"id\":\"x\",\"type\":\"email.open\"}", NULL, "type", "is not a known event type"},
        {"{\"id\":\"x\",\"type\":\"fax.sent\"}", NULL, "type", "is not a known event type"},
        {"{\"id\":\"x\",\"type\":\"\"}", NULL, "type", "is not a known event type"},
        {"{\"id\":\"x\",\"type\":\"Email.Sent\"}", NULL, "type", "is not a known event type"},
        {"{\"id\":\"x\",\"type\":\"email.sent\"}", NULL, "prospect_id", "is required"},
        {"{\"id\":\"x\",\"type\":\"email.sent\",\"prospect_id\":\"\"}", NULL, "prospect_id",
         "1..128"},
        {"{\"id\":\"x\",\"type\":\"email.sent\",\"prospect_id\":{}}", NULL, "prospect_id",
         "must be a string"},
        {"{\"id\":\"x\",\"type\":\"email.sent\",\"prospect_id\":\"a\\nb\"}", NULL, "prospect_id",
         "control"},
        {"{\"id\":\"x\",\"type\":\"email.sent\",\"prospect_id\":\"p\"}", NULL, "occurred_at",
         "is required"},
        {"{\"id\":\"x\",\"type\":\"email.sent\",\"prospect_id\":\"p\",\"occurred_at\":1795342500}",
         NULL, "occurred_at", "must be a string"},
        {"{\"id\":\"x\",\"type\":\"email.sent\",\"prospect_id\":\"p\",\"occurred_at\":\"2026-11-"
         "22T10:15:00\"}",
         NULL, "occurred_at", "RFC 3339"},
        {"{\"id\":\"x\",\"type\":\"email.sent\",\"prospect_id\":\"p\",\"occurred_at\":\"2026-02-"
         "30T10:15:00Z\"}",
         NULL, "occurred_at", "RFC 3339"},
        {"{\"id\":\"x\",\"type\":\"email.sent\",\"prospect_id\":\"p\",\"occurred_at\":\"2026-11-"
         "22T10:15:00Z\","
         "\"owner_id\":5}",
         NULL, "owner_id", "must be a string"},
        {"{\"id\":\"x\",\"type\":\"email.sent\",\"prospect_id\":\"p\",\"occurred_at\":\"2026-11-"
         "22T10:15:00Z\","
         "\"owner_id\":\"\"}",
         NULL, "owner_id", "1..128"},
        {"email.sent", "[]", "data", "must be an object"},
        {"email.sent", "\"x\"", "data", "must be an object"},
        /* email / whatsapp / sms data */
        {"email.sent", "{\"message_id\":1}", "data.message_id", "must be a string"},
        {"sms.sent", "{\"message_id\":\"\"}", "data.message_id", "1..128"},
        {"whatsapp.read", "{\"message_id\":\"a\\rb\"}", "data.message_id", "control"},
        {"email.sent", "{\"kind\":true}", "data.kind", "must be a string"},
        {"email.sent", "{\"kind\":\"\"}", "data.kind", "1..64 bytes"},
        {"email.sent",
         "{\"kind\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}",
         "data.kind", "1..64 bytes long (got 65)"},
        {"email.opened", "{\"human\":\"yes\"}", "data.human", "must be true or false"},
        {"email.opened", "{\"human\":1}", "data.human", "must be true or false"},
        {"email.bounced", "{\"hard\":0}", "data.hard", "must be true or false"},
        {"email.replied", "{\"sentiment\":\"happy\"}", "data.sentiment",
         "must be one of positive, neutral, negative, out_of_office"},
        {"whatsapp.replied", "{\"sentiment\":1}", "data.sentiment", "must be a string"},
        {"sms.replied", "{\"sentiment\":\"Positive\"}", "data.sentiment", "must be one of"},
        {"linkedin.replied", "{\"sentiment\":\"\"}", "data.sentiment", "must be one of"},
        /* call / meeting */
        {"call.connected", "{\"duration_s\":-1}", "data.duration_s", "must be >= 0"},
        {"call.connected", "{\"duration_s\":12.5}", "data.duration_s", "must be an integer"},
        {"call.voicemail", "{\"duration_s\":\"30\"}", "data.duration_s", "must be an integer"},
        {"meeting.booked", "{\"at\":\"tomorrow\"}", "data.at", "RFC 3339"},
        {"meeting.held", "{\"at\":1795342500000}", "data.at", "must be a string"},
        /* gift */
        {"gift.sent", "{\"kind\":\"car\"}", "data.kind",
         "must be one of object, card, basket, book, experience, service, donation"},
        {"gift.sent", "{\"kind\":\"Book\"}", "data.kind", "must be one of"},
        {"gift.sent", "{\"value_eur\":-1}", "data.value_eur", "must be >= 0"},
        {"gift.sent", "{\"value_eur\":-0.5}", "data.value_eur", "must be >= 0"},
        {"gift.sent", "{\"value_eur\":\"-3\"}", "data.value_eur", "must be >= 0"},
        {"gift.sent", "{\"value_eur\":12.34567}", "data.value_eur", "at most 4 fractional digits"},
        {"gift.sent", "{\"value_eur\":0.1e-4}", "data.value_eur", "at most 4 fractional digits"},
        {"gift.sent", "{\"value_eur\":1e-400}", "data.value_eur", "at most 4 fractional digits"},
        {"gift.sent", "{\"value_eur\":\"0.00001\"}", "data.value_eur",
         "at most 4 fractional digits"},
        {"gift.sent", "{\"value_eur\":922337203685477.5808}", "data.value_eur", "too large"},
        {"gift.sent", "{\"value_eur\":1e300}", "data.value_eur", "too large"},
        {"gift.sent", "{\"value_eur\":922337203685478}", "data.value_eur", "too large"},
        {"gift.sent", "{\"value_eur\":\"1e19\"}", "data.value_eur", "too large"},
        {"gift.sent", "{\"value_eur\":\"12,50\"}", "data.value_eur", "must be a decimal number"},
        {"gift.sent", "{\"value_eur\":\"\"}", "data.value_eur", "must be a decimal number"},
        {"gift.sent", "{\"value_eur\":\" 12\"}", "data.value_eur", "must be a decimal number"},
        {"gift.sent", "{\"value_eur\":\"12.\"}", "data.value_eur", "must be a decimal number"},
        {"gift.sent", "{\"value_eur\":\".5\"}", "data.value_eur", "must be a decimal number"},
        {"gift.sent", "{\"value_eur\":\"012\"}", "data.value_eur", "must be a decimal number"},
        {"gift.sent", "{\"value_eur\":\"+1\"}", "data.value_eur", "must be a decimal number"},
        {"gift.sent", "{\"value_eur\":\"NaN\"}", "data.value_eur", "must be a decimal number"},
        {"gift.sent", "{\"value_eur\":\"1e\"}", "data.value_eur", "must be a decimal number"},
        {"gift.sent", "{\"value_eur\":\"12 EUR\"}", "data.value_eur", "must be a decimal number"},
        {"gift.sent", "{\"value_eur\":true}", "data.value_eur",
         "must be a number or a decimal string"},
        {"gift.sent", "{\"value_eur\":[1]}", "data.value_eur",
         "must be a number or a decimal string"},
        {"gift.sent", "{\"items\":0}", "data.items", "must be >= 1"},
        {"gift.sent", "{\"items\":1.0}", "data.items", "must be an integer"},
        {"gift.sent", "{\"items\":\"2\"}", "data.items", "must be an integer"},
        {"gift.sent", "{\"wrapping\":7}", "data.wrapping", "must be a string"},
        {"gift.sent", "{\"wrapping\":\"\"}", "data.wrapping", "1..64"},
        {"gift.sent", "{\"description\":42}", "data.description", "must be a string"},
        /* prospect.updated */
        {"prospect.updated", "{\"stage\":\"closed\"}", "data.stage",
         "must be one of new, contacted, engaged, proposal, negotiation, won, lost"},
        {"prospect.updated", "{\"tier\":0}", "data.tier", "must be 1..3"},
        {"prospect.updated", "{\"tier\":4}", "data.tier", "must be 1..3"},
        {"prospect.updated", "{\"tier\":\"1\"}", "data.tier", "must be an integer"},
        {"prospect.updated", "{\"tier\":2.0}", "data.tier", "must be an integer"},
        {"prospect.updated", "{\"country\":\"FRA\"}", "data.country", "ISO 3166 alpha-2"},
        {"prospect.updated", "{\"country\":\"F1\"}", "data.country", "ISO 3166 alpha-2"},
        {"prospect.updated", "{\"country\":\"\xc3\xa9\"}", "data.country", "ISO 3166 alpha-2"},
        {"prospect.updated", "{\"country\":\"\"}", "data.country", "ISO 3166 alpha-2"},
        {"prospect.updated", "{\"country\":33}", "data.country", "must be a string"},
        {"prospect.updated", "{\"sector\":[]}", "data.sector", "must be a string"},
        {"prospect.updated", "{\"sector\":\"\"}", "data.sector", "1..64"},
        {"prospect.updated", "{\"timezone\":\"Europe/ Paris\"}", "data.timezone", "IANA zone id"},
        {"prospect.updated", "{\"timezone\":\"Europe/Par\xc3\xa9s\"}", "data.timezone",
         "IANA zone id"},
        {"prospect.updated", "{\"timezone\":\"\"}", "data.timezone", "1..64"},
        {"prospect.updated",
         "{\"timezone\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}",
         "data.timezone", "1..64 bytes long (got 65)"},
        {"prospect.updated", "{\"timezone\":1}", "data.timezone", "must be a string"},
        {"prospect.updated", "{\"gift_policy\":\"maybe\"}", "data.gift_policy",
         "must be one of allowed, restricted, forbidden"},
        {"prospect.updated", "{\"consent\":true}", "data.consent", "must be an object"},
        {"prospect.updated", "{\"consent\":[\"email\"]}", "data.consent", "must be an object"},
        {"prospect.updated", "{\"consent\":{\"fax\":true}}", "data.consent[#1]",
         "is a key that is not a channel"},
        {"prospect.updated", "{\"consent\":{\"email\":true,\"sms\":null,\"fax\":true}}",
         "data.consent[#3]", "is a key that is not a channel"},
        {"prospect.updated", "{\"consent\":{\"fax\":1,\"email\":true}}", "data.consent[#1]",
         "is a key that is not a channel"},
        {"prospect.updated", "{\"consent\":{\"email\":\"yes\"}}", "data.consent.email",
         "must be true or false"},
        {"prospect.updated", "{\"lifetime_value_eur\":-5}", "data.lifetime_value_eur",
         "must be >= 0"},
        {"prospect.updated", "{\"lifetime_value_eur\":0.00005}", "data.lifetime_value_eur",
         "at most 4 fractional digits"},
        {"prospect.updated", "{\"lifetime_value_eur\":{}}", "data.lifetime_value_eur",
         "must be a number or a decimal string"},
        {"prospect.updated", "{\"language\":\"f\"}", "data.language", "BCP 47"},
        {"prospect.updated", "{\"language\":\"fr_FR\"}", "data.language", "BCP 47"},
        {"prospect.updated", "{\"language\":\"fr-\"}", "data.language", "BCP 47"},
        {"prospect.updated", "{\"language\":\"-fr\"}", "data.language", "BCP 47"},
        {"prospect.updated", "{\"language\":\"1r\"}", "data.language", "BCP 47"},
        {"prospect.updated", "{\"language\":\"en-verylongsubtag\"}", "data.language", "BCP 47"},
        {"prospect.updated", "{\"language\":\"abc-defgh-ijklmn\"}", "data.language", "BCP 47"},
        {"prospect.updated", "{\"language\":\"\"}", "data.language", "BCP 47"},
        {"prospect.updated", "{\"language\":5}", "data.language", "must be a string"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *json = cases[i].data ? env(cases[i].type, cases[i].data) : cases[i].type;
        expect_reject(json, strlen(json), cases[i].field, cases[i].reason);
    }
}

/* Whether s holds any 6-byte window of v, case-insensitively: a piece of a
 * planted value, even cut or re-cased. */
static bool holds_piece(const char *s, const char *v) {
    size_t n = strlen(v), m = strlen(s);
    for (size_t i = 0; i + 6 <= n; i++)
        for (size_t j = 0; j + 6 <= m; j++) {
            size_t k = 0;
            while (k < 6 && tolower((unsigned char)s[j + k]) == tolower((unsigned char)v[i + k]))
                k++;
            if (k == 6) return true;
        }
    return false;
}

static bool printable_ascii(const char *s) {
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e) return false;
    return true;
}

/* A rejection names the field and what is wrong with it, never the value:
 * payloads carry personal data (names, emails, phone numbers), and reasons
 * go to the log and to the dead-letter headers (docs/operations.md). Every
 * kind of invalid field, with an email, a phone number or a name planted in
 * it (tests/pii_cases.h): the field and reason expected, no piece of any
 * planted value in either, printable ASCII only, and the fast path agrees. */
static void test_reasons_never_echo_values(void **state) {
    (void)state;
    const char *values[] = TD_PII_VALUES;
    for (size_t i = 0; i < TD_PII_NCASES; i++) {
        const td_pii_case *c = &td_pii_cases[i];
        td_event ev;
        td_event_error err;
        if (td_event_decode(c->msg, c->len, &ev, &err) != TD_ERR) fail_msg("accepted: %s", c->what);
        if (strcmp(err.field, c->field) != 0 || strstr(err.reason, c->reason) == NULL)
            fail_msg("%s\n  got      field '%s' reason '%s'\n  expected field '%s' reason ~'%s'",
                     c->what, err.field, err.reason, c->field, c->reason);
        for (size_t v = 0; v < sizeof values / sizeof values[0]; v++)
            if (holds_piece(err.reason, values[v]) || holds_piece(err.field, values[v]))
                fail_msg("%s echoes the value: field '%s' reason '%s'", c->what, err.field,
                         err.reason);
        if (!printable_ascii(err.reason) || !printable_ascii(err.field))
            fail_msg("%s: not printable ASCII", c->what);
        expect_same_rejection(c->msg, c->len);
    }
}

/* The planted values are found by the check above: it is not blind. */
static void test_piece_check_sees_values(void **state) {
    (void)state;
    assert_true(holds_piece("x DUPONTEL@ y", PII_EMAIL));
    assert_true(holds_piece("call 6 12 34 5", PII_PHONE));
    assert_true(holds_piece("jeanne dup", PII_NAME));
    assert_false(holds_piece("must be one of positive, neutral", PII_NAME));
}

static void test_size_and_bytes(void **state) {
    (void)state;
    /* Exactly 64 KiB is accepted (padding in an ignored field)... */
    char *big = malloc(TD_EVENT_MAX + 2);
    assert_non_null(big);
    const char *head = "{\"id\":\"x\",\"type\":\"email.sent\",\"prospect_id\":\"p\","
                       "\"occurred_at\":\"2026-11-22T10:15:00Z\",\"pad\":\"";
    size_t hl = strlen(head);
    memcpy(big, head, hl);
    memset(big + hl, 'a', TD_EVENT_MAX - hl - 2);
    memcpy(big + TD_EVENT_MAX - 2, "\"}", 2);
    td_event ev;
    td_event_error err;
    assert_int_equal(td_event_decode(big, TD_EVENT_MAX, &ev, &err), TD_OK);
    /* ...one byte more is not, before any parsing. */
    big[TD_EVENT_MAX] = ' ';
    expect_reject(big, TD_EVENT_MAX + 1, "", "oversize: 65537 bytes, the limit is 65536");
    free(big);

    /* A raw NUL byte, anywhere. */
    static const char nul_msg[] = "{\"id\":\"a\0b\"}";
    expect_reject(nul_msg, sizeof nul_msg - 1, "", "contains a NUL byte (byte offset 8)");
    /* The length is authoritative: bytes after it are not read. */
    const char *ok = "{\"id\":\"x\",\"type\":\"email.sent\",\"prospect_id\":\"p\","
                     "\"occurred_at\":\"2026-11-22T10:15:00Z\"}GARBAGE";
    assert_int_equal(td_event_decode(ok, strlen(ok) - 7, &ev, &err), TD_OK);
    expect_reject(ok, strlen(ok), "", "not valid JSON");
    /* NULL buffer and NULL err are survivable. */
    assert_int_equal(td_event_decode(NULL, 0, &ev, &err), TD_ERR);
    assert_int_equal(td_event_decode("{", 1, &ev, NULL), TD_ERR);

    /* Deep nesting in an ignored field is refused by the parser, not a crash. */
    char *deep = malloc(20000);
    assert_non_null(deep);
    memset(deep, '[', 20000);
    expect_reject(deep, 20000, "", "nested too deeply");
    free(deep);
}

/* Unknown fields are ignored but must still be valid JSON values of any
 * shape, and the decode result is independent of key order. */
static void test_ignored_fields(void **state) {
    (void)state;
    td_event a =
        decode_ok(env("gift.sent", "{\"future\":{\"x\":[1,{\"y\":\"z\"}]},\"value_eur\":1.25,"
                                   "\"items\":3,\"extra\":null}"));
    td_event b =
        decode_ok("{\"data\":{\"items\":3,\"value_eur\":1.25},\"occurred_at\":"
                  "\"2026-11-22T10:15:00Z\",\"prospect_id\":\"p-42\",\"type\":\"gift.sent\","
                  "\"id\":\"e-1\",\"v\":2}");
    assert_memory_equal(&a, &b, sizeof a);
}

/* Control bytes anywhere in a long id are refused (the check reads eight
 * bytes at a time, so every position in and around a word is tried), and
 * the bytes next to the refused ranges are accepted. */
static void test_control_bytes(void **state) {
    (void)state;
    static const struct {
        const char *esc; /* as a JSON escape, so the message stays valid JSON */
        bool control;
    } bytes[] = {
        {"\\u0001", true},  {"\\u001f", true},  {"\\u007f", true},  {"\\t", true},
        {"\\u0020", false}, {"\\u007e", false}, {"\\u0080", false}, {"\\u00ff", false},
        {"\\u07ff", false}, {"\\uffff", false},
    };
    for (size_t b = 0; b < sizeof bytes / sizeof bytes[0]; b++)
        for (int pos = 0; pos < 20; pos++) {
            char id[64], json[256];
            snprintf(id, sizeof id, "%.*s%s%.*s", pos, "aaaaaaaaaaaaaaaaaaaa", bytes[b].esc,
                     19 - pos, "bbbbbbbbbbbbbbbbbbbb");
            snprintf(json, sizeof json,
                     "{\"id\":\"%s\",\"type\":\"email.sent\",\"prospect_id\":\"p\","
                     "\"occurred_at\":\"2026-11-22T10:15:00Z\"}",
                     id);
            if (bytes[b].control)
                expect_reject(json, strlen(json), "id", "must not contain control characters");
            else
                expect_fast(json);
        }
}

/* ---- the fast path ---- */

/* A data object that exercises every reader of type t's channel. */
static const char *full_data(td_event_type t) {
    switch (td_event_type_channel(t)) {
    case TD_CH_EMAIL:
    case TD_CH_WHATSAPP:
    case TD_CH_SMS:
        return "{\"message_id\":\"m-p-000042-1\",\"kind\":\"follow_up\",\"human\":false,"
               "\"sentiment\":\"positive\",\"hard\":true,\"crm_score\":7}";
    case TD_CH_LINKEDIN:
        return "{\"message_id\":\"li-1\",\"sentiment\":\"neutral\"}";
    case TD_CH_CALL:
        return "{\"duration_s\":312}";
    case TD_CH_MEETING:
        return "{\"at\":\"2026-12-01T14:00:00+01:00\"}";
    case TD_CH_GIFT:
        return "{\"kind\":\"book\",\"value_eur\":12.5,\"items\":2,\"wrapping\":\"white\","
               "\"description\":\"A signed copy\"}";
    default:
        if (t == TD_EV_OWNER_PROSPECT_CONTACTED) return "{\"first\":true}";
        if (td_event_is_feedback(t))
            return "{\"recommendation_id\":\"r-0123456789abcdef0123456789abcdef\","
                   "\"until\":\"2026-11-25T09:00:00Z\",\"crm_score\":1}";
        return "{\"stage\":\"new\",\"tier\":2,\"country\":\"fr\",\"sector\":\"logistics\","
               "\"timezone\":\"Europe/Paris\",\"gift_policy\":\"allowed\",\"language\":\"fr\","
               "\"lifetime_value_eur\":1234.56,\"consent\":{\"email\":true,\"whatsapp\":false,"
               "\"sms\":null,\"linkedin\":true},\"crm_score\":42}";
    }
}

static void expect_reject_env(const char *json, const char *field, const char *reason) {
    expect_reject(json, strlen(json), field, reason);
}

static void test_fast_every_type(void **state) {
    (void)state;
    char json[1024];
    for (int i = 0; i < TD_EV__COUNT; i++) {
        const char *type = td_event_type_name((td_event_type)i);
        /* The bench generator's shape: owner, an unknown "source", data. */
        snprintf(json, sizeof json,
                 "{\"id\":\"e-p-000042-0001\",\"type\":\"%s\",\"prospect_id\":\"p-000042\","
                 "\"occurred_at\":\"2026-11-22T10:15:00Z\",\"owner_id\":\"rep-7\","
                 "\"source\":\"crm-bench\",\"data\":%s}",
                 type, full_data((td_event_type)i));
        td_event ev = expect_fast(json);
        assert_int_equal(ev.type, i);
        assert_true(ev.has & TD_HAS_OWNER);
        /* data was read, for every type that reads any */
        bool reads = i != TD_EV_OWNER_PROSPECT_CONTACTED &&
                     (ev.channel != TD_CH_LINKEDIN || i == TD_EV_LINKEDIN_REPLIED);
        assert_int_equal((ev.has & ~(uint32_t)TD_HAS_OWNER) != 0, reads);
        if (td_event_is_feedback((td_event_type)i)) {
            /* feedback names its recommendation: without it, rejected */
            assert_string_equal(ev.recommendation_id, "r-0123456789abcdef0123456789abcdef");
            assert_true(ev.has & TD_HAS_RECOMMENDATION);
            if (i == TD_EV_RECOMMENDATION_SNOOZED) {
                assert_true(ev.has & TD_HAS_UNTIL);
                assert_int_equal(ev.until, 1795597200000); /* 2026-11-25T09:00:00Z */
                expect_reject_env(env(type, "{\"recommendation_id\":\"r-1\"}"), "data.until",
                                  "is required");
            } else
                assert_false(ev.has & TD_HAS_UNTIL);
            expect_reject_env(env(type, NULL), "data.recommendation_id", "is required");
            expect_reject_env(env(type, "{}"), "data.recommendation_id", "is required");
            expect_reject_env(env(type, "{\"recommendation_id\":7}"), "data.recommendation_id",
                              "string");
            continue;
        }
        /* No data, null data, empty data: defaults only. */
        expect_fast(env(type, NULL));
        expect_fast(env(type, "null"));
        expect_fast(env(type, "{}"));
    }
    /* Spot checks that the fast path's values are the contract's (the
     * other tests assert every field through td_event_decode). */
    td_event ev = expect_fast(env("prospect.updated", full_data(TD_EV_PROSPECT_UPDATED)));
    assert_int_equal(ev.lifetime_value_eur, 12345600);
    assert_int_equal(ev.consent[TD_CH_WHATSAPP], TD_TRI_NO);
    assert_int_equal(ev.consent[TD_CH_SMS], TD_TRI_UNSET);
    assert_string_equal(ev.country, "FR");
    ev = expect_fast(env("email.opened", NULL));
    assert_true(ev.human);
}

/* Forms the fast path handles itself: whitespace, key order, escapes in
 * values, UTF-8, numbers of every JSON shape, nulls, unknown scalars. */
static void test_fast_forms(void **state) {
    (void)state;
    static const char *const msgs[] = {
        " \r\n\t{ \"id\" : \"e\" ,\n \"type\":\"email.sent\" , \"prospect_id\":\"p\","
        "\"occurred_at\":\"2026-11-22T10:15:00Z\" , \"data\" : { \"kind\" : \"value\" } } \n",
        "{\"data\":{\"human\":true,\"message_id\":\"m\"},\"type\":\"email.opened\","
        "\"occurred_at\":\"2026-11-22T11:15:00.250+01:00\",\"prospect_id\":\"p-1\",\"id\":\"e-1\"}",
        /* escapes in values, decoded as jansson decodes them */
        "{\"id\":\"a\\/"
        "b\\\\c\",\"type\":\"email.sent\",\"prospect_id\":\"pr\xc3\xa9-\\u00e9\\u20AC\","
        "\"occurred_at\":\"2026-11-22T10:15:00Z\",\"owner_id\":\"\\ud83d\\ude00\\\"\","
        "\"note\":\"tab\\there\\b\\f\\n\\r\",\"data\":{\"kind\":\"v\\u0061lue\"}}",
        "{\"id\":\"x\",\"type\":\"gift.sent\",\"prospect_id\":\"p\",\"occurred_at\":\"2026-11-"
        "22T10:15:00Z\","
        "\"data\":{\"description\":\"Line one\\nline \\\"two\\\"\",\"kind\":\"card\"}}",
        /* raw UTF-8 of every length, and 0x7f, in values and unknown keys */
        "{\"id\":\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\",\"type\":\"sms.sent\",\"prospect_id\":"
        "\"p\","
        "\"occurred_at\":\"2026-11-22T10:15:00Z\",\"\xc3\xa9t\xc3\xa9\":\"a\x7f\"}",
        /* nulls are "not given" */
        "{\"id\":\"x\",\"type\":\"email.bounced\",\"prospect_id\":\"p\",\"occurred_at\":"
        "\"2026-11-22T10:15:00Z\",\"owner_id\":null,\"data\":{\"hard\":null,\"kind\":null}}",
        /* unknown scalars of every kind */
        "{\"id\":\"x\",\"type\":\"call.connected\",\"prospect_id\":\"p\",\"occurred_at\":"
        "\"2026-11-22T10:15:00Z\",\"a\":true,\"b\":false,\"c\":null,\"d\":-0,\"e\":-12.5e-3,"
        "\"f\":123456789012345678,\"g\":1E+99,\"h\":\"\",\"\":0,\"data\":{\"duration_s\":0,"
        "\"id\":\"not the envelope's\",\"data\":7}}",
        "{\"id\":\"x\",\"type\":\"meeting.held\",\"prospect_id\":\"p\",\"occurred_at\":"
        "\"2026-11-22 10:15:00.123456z\",\"data\":{\"at\":\"2026-12-01T13:00:00-05:30\"}}",
        /* fields of other types are ignored whatever their values */
        "{\"id\":\"x\",\"type\":\"linkedin.invited\",\"prospect_id\":\"p\",\"occurred_at\":"
        "\"2026-11-22T10:15:00Z\",\"data\":{\"human\":\"no\",\"duration_s\":1.5,\"tier\":99,"
        "\"consent\":{\"email\":true},\"value_eur\":\"x\",\"stage\":7}}",
        "{\"id\":\"x\",\"type\":\"prospect.updated\",\"prospect_id\":\"p\",\"occurred_at\":"
        "\"2026-11-22T10:15:00Z\",\"data\":{\"consent\":{},\"tier\":3,\"gift_policy\":"
        "\"forbidden\","
        "\"language\":\"zh-Hant-TW\",\"timezone\":\"Etc/GMT+5\",\"country\":\"Us\","
        "\"stage\":\"won\",\"sector\":\"retail\"}}",
        "{\"id\":\"x\",\"type\":\"prospect.updated\",\"prospect_id\":\"p\",\"occurred_at\":"
        "\"2026-11-22T10:15:00Z\",\"data\":{\"consent\":{\"email\":false,\"whatsapp\":true,"
        "\"sms\":true,\"linkedin\":true,\"call\":false,\"meeting\":true,\"gift\":null}}}",
    };
    for (size_t i = 0; i < sizeof msgs / sizeof msgs[0]; i++)
        expect_fast(msgs[i]);

    td_event ev = expect_fast(msgs[2]);
    assert_string_equal(ev.id, "a/b\\c");
    assert_string_equal(ev.prospect_id, "pr\xc3\xa9-\xc3\xa9\xe2\x82\xac");
    assert_string_equal(ev.owner_id, "\xf0\x9f\x98\x80\"");
    assert_string_equal(ev.kind, "value");

    /* Decimals as numbers and as strings, through the shared parser. */
    static const char *const decimals[] = {
        "0",
        "0.1",
        "0.0001",
        "12.50000000",
        "19.99",
        "1234567.8901",
        "100",
        "1e2",
        "1.5E+1",
        "25e-4",
        "-0",
        "-0.0",
        "922337203685477.5807",
        "\"12.5\"",
        "\"1e3\"",
        "\"0e-999999999999\"",
    };
    char data[128];
    for (size_t i = 0; i < sizeof decimals / sizeof decimals[0]; i++) {
        snprintf(data, sizeof data, "{\"value_eur\":%s,\"items\":1}", decimals[i]);
        expect_fast(env("gift.sent", data));
        snprintf(data, sizeof data, "{\"lifetime_value_eur\":%s}", decimals[i]);
        expect_fast(env("prospect.updated", data));
    }

    /* Bounds: 128-byte ids and 64-byte short strings are accepted. */
    char big[512];
    snprintf(big, sizeof big,
             "{\"id\":\"%0128d\",\"type\":\"email.sent\",\"prospect_id\":\"p\","
             "\"occurred_at\":\"2026-11-22T10:15:00Z\",\"data\":{\"kind\":\"%064d\"}}",
             0, 0);
    ev = expect_fast(big);
    assert_int_equal(strlen(ev.id), TD_ID_MAX);
    assert_int_equal(strlen(ev.kind), TD_SHORT_MAX);
}

/* Valid messages the fast path leaves to jansson, by design. */
static void test_fast_declines_valid(void **state) {
    (void)state;
    static const char *const head = "{\"id\":\"x\",\"type\":\"email.sent\",\"prospect_id\":\"p\","
                                    "\"occurred_at\":\"2026-11-22T10:15:00Z\"";
    static const char *const tails[] = {
        ",\"\\u006fwner_id\":\"r\"}", /* an escaped key */
        ",\"crm\":{\"a\":1}}",        /* nesting other than data and consent */
        ",\"tags\":[]}",              /* arrays */
        ",\"data\":{\"kind\":\"v\",\"x\":[1]}}",
        ",\"n\":1234567890123456789}", /* 19 digits: jansson's strtoll judges */
        ",\"n\":-0.5e100}",            /* exponents past 99 */
        ",\"n\":1e-400}",
        ",\"n\":12345678901234567890.5}",
        ",\"data\":{\"consent\":{\"fax\":true}}}", /* consent as email.sent ignores it */
        ",\"data\":{\"consent\":{\"email\":1}}}",
        ",\"data\":{\"consent\":[]}}",
        ",\"data\":{\"consent\":{\"\\u0065mail\":true}}}",
    };
    char json[4096];
    for (size_t i = 0; i < sizeof tails / sizeof tails[0]; i++) {
        snprintf(json, sizeof json, "%s%s", head, tails[i]);
        expect_declined_ok(json, strlen(json));
    }
    /* More unknown keys in one object than the duplicate check tracks. */
    int n = snprintf(json, sizeof json, "%s", head);
    for (int k = 0; k < 17; k++)
        n += snprintf(json + n, sizeof json - (size_t)n, ",\"k%d\":%d", k, k);
    snprintf(json + n, sizeof json - (size_t)n, "}");
    expect_declined_ok(json, strlen(json));
    /* Sixteen are fine. */
    n = snprintf(json, sizeof json, "%s", head);
    for (int k = 0; k < 16; k++)
        n += snprintf(json + n, sizeof json - (size_t)n, ",\"k%d\":%d", k, k);
    snprintf(json + n, sizeof json - (size_t)n, "}");
    expect_fast(json);
    /* Escaped text beyond the scanner's buffer for decoded strings. */
    n = snprintf(json, sizeof json, "%s,\"data\":{\"description\":\"", head);
    for (int k = 0; k < 1100; k++)
        n += snprintf(json + n, sizeof json - (size_t)n, "\\n");
    snprintf(json + n, sizeof json - (size_t)n, "\"}}");
    expect_declined_ok(json, strlen(json));
}

/* Messages jansson refuses: the fast path declines, the reason is jansson's.
 * Each case is a valid event but for one flaw, so that flaw alone must make
 * the fast path decline. */
static void test_fast_declines_invalid(void **state) {
    (void)state;
    static const char *const head =
        "{\"id\":\"x\",\"type\":\"prospect.updated\",\"prospect_id\":\"p\","
        "\"occurred_at\":\"2026-11-22T10:15:00Z\"";
    static const char *const tails[] = {
        "}", /* the control case: valid, accepted (checked below) */
        /* duplicates at every level, known or not */
        ",\"id\":\"y\"}",
        ",\"x\":1,\"x\":1}",
        ",\"data\":{\"tier\":1,\"tier\":2}}",
        ",\"data\":{\"y\":1,\"y\":\"1\"}}",
        ",\"data\":{\"consent\":{\"email\":true,\"email\":null}}}",
        ",\"data\":null,\"data\":{}}",
        /* strings */
        ",\"x\":\"a}",
        ",\"x\":\"a\x01\"}",
        ",\"x\":\"a\nb\"}",
        ",\"x\":\"a\xff\"}",
        ",\"x\":\"\xc0\xaf\"}",
        ",\"x\":\"\xed\xa0\x80\"}",
        ",\"x\":\"\xf4\x90\x80\x80\"}",
        ",\"x\":\"\xe2\x82\"}",
        ",\"x\":\"\xe2\x82\xac\x80\"}",
        ",\"\xff\":1}",
        ",\"x\":\"\\u0000\"}",
        ",\"x\":\"\\ud800\"}",
        ",\"x\":\"\\ud800\\u0041\"}",
        ",\"x\":\"\\udc00\\udc00\"}",
        ",\"x\":\"\\x\"}",
        ",\"x\":\"\\u12G4\"}",
        ",\"x\":\"\\u12\"}",
        ",\"x\":\"\\",
        /* numbers */
        ",\"x\":01}",
        ",\"x\":1.}",
        ",\"x\":.5}",
        ",\"x\":-}",
        ",\"x\":1e}",
        ",\"x\":+1}",
        ",\"x\":1.5.3}",
        ",\"x\":-01}",
        ",\"x\":1e+}",
        ",\"x\":0x1}",
        ",\"x\":1E5.0}",
        /* literals and structure */
        ",\"x\":tru}",
        ",\"x\":True}",
        ",\"x\":truex}",
        ",\"x\":nul}",
        ",\"x\":falsey}",
        ",\"x\":1,}",
        ",\"x\" 1}",
        ",\"x\":1 \"y\":2}",
        ",}",
        "}}",
        "} {}",
        "} x",
        ",'x':1}",
        ",x:1}",
        "",
        ",\"x\":}",
        ",\"data\":{,}}",
        ",\"data\":{\"tier\":1,}}",
        ",\"data\":{\"tier\"}}",
        /* valid JSON, invalid events */
        ",\"data\":{\"consent\":{\"fax\":true}}}",
        ",\"data\":{\"consent\":{\"email\":\"yes\"}}}",
        ",\"data\":{\"tier\":4}}",
        ",\"data\":{\"tier\":2.0}}",
        ",\"data\":{\"lifetime_value_eur\":0.00001}}",
        ",\"data\":{\"lifetime_value_eur\":-1}}",
        ",\"data\":{\"stage\":\"Won\"}}",
        ",\"data\":{\"country\":\"\\u00e9\"}}",
        ",\"data\":{\"sector\":\"a\\tb\"}}",
        ",\"data\":{\"sector\":\"a\x7f\"}}",
        ",\"data\":{\"language\":\"fr_FR\"}}",
        ",\"data\":\"x\"}",
        ",\"owner_id\":\"\"}",
        ",\"owner_id\":7}",
    };
    char json[512];
    for (size_t i = 0; i < sizeof tails / sizeof tails[0]; i++) {
        snprintf(json, sizeof json, "%s%s", head, tails[i]);
        if (i == 0)
            expect_fast(json);
        else
            expect_same_rejection(json, strlen(json));
    }
    /* Whole-message flaws. */
    static const char *const msgs[] = {
        "{}",
        " ",
        "[1]",
        "\"x\"",
        "42",
        "null",
        "{",
        "{\"id\":\"x\",\"type\":\"email.sent\",\"prospect_id\":\"p\"}",
        "{\"id\":\"x\",\"type\":\"fax.sent\",\"prospect_id\":\"p\",\"occurred_at\":\"2026-11-22T10:"
        "15:00Z\"}",
        "{\"id\":\"a\\u007fb\",\"type\":\"email.sent\",\"prospect_id\":\"p\","
        "\"occurred_at\":\"2026-11-22T10:15:00Z\"}",
        "{\"id\":\"x\",\"type\":\"email.sent\",\"prospect_id\":\"p\","
        "\"occurred_at\":\"2026-11-22T10:15:00\"}",
    };
    for (size_t i = 0; i < sizeof msgs / sizeof msgs[0]; i++)
        expect_same_rejection(msgs[i], strlen(msgs[i]));
    /* Bytes past len and NUL bytes are never read as JSON. */
    snprintf(json, sizeof json, "%s}", head);
    expect_same_rejection(json, strlen(json) - 1);
    json[8] = '\0'; /* inside the id */
    expect_same_rejection(json, strlen(head) + 1);
    expect_same_rejection(NULL, 0);
    char *big = malloc(TD_EVENT_MAX + 1);
    assert_non_null(big);
    memset(big, ' ', TD_EVENT_MAX + 1);
    snprintf(json, sizeof json, "%s}", head);
    memcpy(big, json, strlen(json));
    expect_same_rejection(big, TD_EVENT_MAX + 1);
    free(big);
}

/* Every line of examples/sample.jsonl: the fast path takes each event the
 * jansson path accepts (real events are its subset), and rejections read
 * the same. */
static void test_fast_sample_file(void **state) {
    (void)state;
    const char *src = getenv("TD_SOURCE_DIR");
    if (src == NULL) skip();
    char path[1024];
    snprintf(path, sizeof path, "%s/examples/sample.jsonl", src);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char line[TD_EVENT_MAX + 2];
    int accepted = 0;
    while (fgets(line, sizeof line, f) != NULL) {
        size_t n = strcspn(line, "\n");
        line[n] = '\0';
        if (n == 0) continue;
        td_event ev;
        td_event_error err;
        if (td_event_decode_slow(line, n, &ev, &err) == TD_OK) {
            expect_fast(line);
            accepted++;
        } else {
            expect_same_rejection(line, n);
        }
    }
    fclose(f);
    assert_true(accepted > 50);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_type_names),
        cmocka_unit_test(test_envelope),
        cmocka_unit_test(test_email_types),
        cmocka_unit_test(test_whatsapp_sms_linkedin),
        cmocka_unit_test(test_call_meeting),
        cmocka_unit_test(test_gift),
        cmocka_unit_test(test_decimal_exact),
        cmocka_unit_test(test_prospect_updated),
        cmocka_unit_test(test_rejects),
        cmocka_unit_test(test_reasons_never_echo_values),
        cmocka_unit_test(test_piece_check_sees_values),
        cmocka_unit_test(test_size_and_bytes),
        cmocka_unit_test(test_ignored_fields),
        cmocka_unit_test(test_fast_every_type),
        cmocka_unit_test(test_fast_forms),
        cmocka_unit_test(test_fast_declines_valid),
        cmocka_unit_test(test_fast_declines_invalid),
        cmocka_unit_test(test_fast_sample_file),
        cmocka_unit_test(test_control_bytes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
