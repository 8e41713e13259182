/*
 * test_plan.c - the current plan in the engine: what a recommendation adds
 * to the plan (expires_at, group, intent, audience), every withdrawal case
 * (replied, opted_out, bounced, stage, superseded, rule, expired), the
 * catch-up policies for late recommendations, the withdrawal's id and JSON,
 * the plan's JSON, the plan in the flat form, and the rules keys that drive
 * it (intent, expires, late_after, withdraws) with their diagnostics.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/evp.h>
#include <cmocka.h>

#include "td_engine.h"
#include "td_kvs.h"
#include "td_time.h"

static const char *RULES =
    "settings = { expires = \"5d\"; late_after = \"12h\"; };\n"
    "rules = (\n"
    "  { id = \"seq.follow-up\"; on = [ \"email.sent\" ]; group = \"follow-up\";\n"
    "    intent = \"follow_up\"; expires = \"2d\";\n"
    "    recommend = { channel = \"email\"; touch = \"follow_up\"; at = \"now + 1d\"; }; },\n"
    "  { id = \"seq.whatsapp\"; on = [ \"email.opened\" ]; group = \"follow-up\";\n"
    "    intent = \"follow_up\";\n"
    "    recommend = { channel = \"whatsapp\"; touch = \"micro_question\"; at = \"now + 2h\"; "
    "}; },\n"
    "  { id = \"seq.call\"; on = [ \"linkedin.accepted\" ]; intent = \"ask_meeting\";\n"
    "    recommend = { channel = \"call\"; touch = \"call_proposal\"; at = \"now + 1d\"; }; },\n"
    "  { id = \"gift.card\"; on = [ \"prospect.updated\" ]; when = \"(tier ?? 0) == 1\";\n"
    "    intent = \"gift\";\n"
    "    recommend = { channel = \"gift\"; touch = \"handwritten_card\"; at = \"now + 3d\"; }; "
    "},\n"
    "  { id = \"reply.answer\"; on = [ \"email.replied\" ]; group = \"follow-up\";\n"
    "    when = \"event.sentiment == 'positive'\"; intent = \"reply\";\n"
    "    recommend = { channel = \"email\"; touch = \"human_reply\"; }; },\n"
    "  { id = \"reply.stop\"; on = [ \"email.replied\" ]; group = \"follow-up\";\n"
    "    when = \"event.sentiment == 'negative'\"; intent = \"stop\"; priority = 70;\n"
    "    recommend = { channel = \"email\"; touch = \"stop_sequence\"; }; },\n"
    "  { id = \"meeting.held\"; on = [ \"meeting.held\" ]; intent = \"give\";\n"
    "    withdraws = [ \"intent:ask_meeting\", \"follow-up\" ];\n"
    "    recommend = { channel = \"email\"; touch = \"value_insight\"; at = \"now + 1h\"; }; }\n"
    ");\n";

typedef struct fx {
    td_ruleset *rs;
    td_tzdb *tz;
    td_state st;
    td_step_out *out;
    td_event ev[8]; /* triggers outlive their step (bodies are rendered in it) */
    int nev;
} fx;

static td_ruleset *compile(const char *text, td_diags *d) {
    td_source src = {.name = "plan.rules", .text = text, .len = strlen(text)};
    return td_ruleset_compile(&src, 1, d);
}

static int setup(void **state) {
    fx *f = calloc(1, sizeof *f);
    td_diags d = {0};
    f->rs = compile(RULES, &d);
    for (size_t i = 0; i < d.n; i++) {
        char *s = td_diag_format(&d.v[i]);
        print_message("%s\n", s);
        free(s);
    }
    td_diags_free(&d);
    if (!f->rs) return -1;
    f->tz = td_tzdb_new();
    f->out = td_step_out_new();
    td_state_init(&f->st, "p-1");
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fx *f = *state;
    td_state_free(&f->st);
    td_ruleset_free(f->rs);
    td_tzdb_free(f->tz);
    td_step_out_free(f->out);
    free(f);
    return 0;
}

static const td_ms T0 = 1793607600000; /* 2026-11-02T08:20:00Z, a Monday */

static const char *at(td_ms t) {
    static char buf[4][TD_TIME_BUF];
    static int k;
    k = (k + 1) % 4;
    td_time_format(t, buf[k], sizeof buf[k]);
    return buf[k];
}

/* Steps event `type` (id, time, data) with wall clock `wall` (0: none) and
 * `flags`. */
static td_step_out *step(fx *f, const char *id, const char *type, td_ms t, const char *data,
                         td_ms wall, unsigned flags) {
    char json[1024];
    snprintf(json, sizeof json,
             "{\"id\":\"%s\",\"type\":\"%s\",\"prospect_id\":\"p-1\",\"owner_id\":\"rep-1\","
             "\"occurred_at\":\"%s\"%s%s%s}",
             id, type, at(t), data ? ",\"data\":" : "", data ? data : "", "");
    td_event *ev = &f->ev[f->nev++ % 8];
    td_event_error err;
    if (td_event_decode(json, strlen(json), ev, &err) != TD_OK)
        fail_msg("decode %s: %s %s", json, err.field, err.reason);
    td_trigger trig = {.kind = TD_TRIG_EVENT, .ev = ev, .wall = wall};
    assert_int_equal(td_engine_step(f->rs, &f->st, &trig, 0, f->tz, flags, f->out), TD_OK);
    return f->out;
}

static int pending(const fx *f, const char *rule) {
    for (uint32_t i = 0; i < f->st.nplan; i++)
        if (strcmp(f->st.plan[i].rule, rule) == 0) return (int)i;
    return -1;
}

static json_t *body(const char *p, size_t n) {
    json_error_t e;
    json_t *j = json_loadb(p, n, 0, &e);
    if (!j) fail_msg("not JSON: %.*s (%s)", (int)n, p, e.text);
    return j;
}

/* A recommendation joins the plan with its expiry, group, intent and
 * audience; its body is what td_rec_json publishes, but for generated_at. */
static void test_recommendation_joins_plan(void **state) {
    fx *f = *state;
    td_step_out *o = step(f, "s1", "email.sent", T0, NULL, 0, 0);
    assert_int_equal(o->nrecs, 1);
    const td_rec *r = &o->recs[0];
    assert_int_equal(r->not_before, T0 + TD_DAY + 40 * 60 * 1000); /* 09:00 Tuesday */
    assert_int_equal(r->expires_at, r->not_before + 2 * TD_DAY);   /* the rule's expires */
    assert_false(r->late);
    assert_true(o->plan_changed);
    assert_int_equal(o->nwds, 0);
    assert_int_equal(f->st.nplan, 1);
    assert_int_equal(f->st.plan_version, 1);
    assert_string_equal(f->st.plan[0].id, r->id);
    assert_string_equal(f->st.plan[0].group, "follow-up");
    assert_string_equal(f->st.plan[0].intent, "follow_up");
    assert_false(f->st.plan[0].owner);
    assert_int_equal(f->st.plan[0].len, r->body_len);
    assert_memory_equal(f->st.plan[0].json, r->body, r->body_len);

    json_t *j = body(r->body, r->body_len);
    assert_string_equal(json_string_value(json_object_get(j, "kind")), "recommendation");
    assert_string_equal(json_string_value(json_object_get(j, "audience")), "prospect");
    assert_string_equal(json_string_value(json_object_get(j, "group")), "follow-up");
    assert_string_equal(json_string_value(json_object_get(j, "intent")), "follow_up");
    assert_string_equal(json_string_value(json_object_get(j, "expires_at")), at(r->expires_at));
    assert_null(json_object_get(j, "generated_at"));
    assert_null(json_object_get(j, "late"));
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(j, "trigger"), "occurred_at")), at(T0));
    json_decref(j);

    td_buf b = {0};
    td_trigger trig = {.kind = TD_TRIG_EVENT, .ev = &f->ev[0]};
    assert_int_equal(td_rec_json(r, &f->st, f->rs, &trig, T0 + 5, &b), TD_OK);
    assert_int_equal(b.len,
                     r->body_len - 1 + strlen(",\"generated_at\":\"2026-11-02T08:20:00.005Z\"}"));
    assert_memory_equal(b.p, r->body, r->body_len - 1);
    assert_non_null(strstr(b.p, ",\"generated_at\":\"2026-11-02T08:20:00.005Z\"}"));
    td_buf_free(&b);

    /* a gift for a tier-1 partner: another entry, sorted by not_before */
    o = step(f, "u1", "prospect.updated", T0 + 1000, "{\"tier\":1}", 0, 0);
    assert_int_equal(o->nrecs, 1);
    assert_int_equal(f->st.nplan, 2);
    assert_int_equal(f->st.plan_version, 2);
    assert_true(f->st.plan[0].not_before <= f->st.plan[1].not_before);
    assert_string_equal(f->st.plan[1].rule, "gift.card");

    /* the plan's JSON */
    assert_int_equal(td_plan_json(&f->st, f->rs, &b), TD_OK);
    j = body(b.p, b.len);
    assert_string_equal(json_string_value(json_object_get(j, "prospect_id")), "p-1");
    assert_int_equal(json_integer_value(json_object_get(j, "version")), 2);
    assert_string_equal(json_string_value(json_object_get(j, "updated_at")), at(T0 + 1000));
    json_t *pend = json_object_get(j, "pending");
    assert_int_equal(json_array_size(pend), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(pend, 0), "rule")),
                        "seq.follow-up");
    assert_string_equal(json_string_value(json_object_get(json_array_get(pend, 1), "rule")),
                        "gift.card");
    json_decref(j);
    td_buf_free(&b);
}

/* The plan survives the flat form (Redis) byte for byte. */
static void test_plan_flat_round_trip(void **state) {
    fx *f = *state;
    step(f, "s1", "email.sent", T0, NULL, 0, 0);
    step(f, "u1", "prospect.updated", T0 + 1000, "{\"tier\":1,\"sector\":\"a b%c\"}", 0, 0);
    td_kvs kv = {0};
    assert_int_equal(td_kvs_capture(&kv, &f->st), TD_OK);
    td_state back;
    td_state_init(&back, "p-1");
    size_t npending = 0;
    for (size_t i = 0; i < kv.n; i++) {
        const char *k = kv.buf + kv.e[i].k, *v = kv.buf + kv.e[i].v;
        if (kv.e[i].kl > 8 && memcmp(k, "pending.", 8) == 0) npending++;
        char err[128];
        assert_int_equal(td_state_set_field(&back, k, kv.e[i].kl, v, kv.e[i].vl, err, sizeof err),
                         TD_OK);
    }
    assert_int_equal(npending, 2);
    assert_true(td_state_equal(&back, &f->st));
    /* a malformed entry is an error naming the field, and changes nothing */
    char err[128];
    assert_int_equal(td_state_set_field(&back, "pending.r-x", 11, "garbage", 7, err, sizeof err),
                     TD_ERR);
    assert_non_null(strstr(err, "pending.r-x"));
    assert_int_equal(back.nplan, 2);
    td_state_free(&back);
    td_kvs_free(&kv);
}

/* A reply withdraws the sequence (not the gift); out of office does not. */
static void test_reply_withdraws_sequence(void **state) {
    fx *f = *state;
    step(f, "s1", "email.sent", T0, NULL, 0, 0);
    step(f, "u1", "prospect.updated", T0 + 1000, "{\"tier\":1}", 0, 0);
    char fu[40];
    td_strlcpy(fu, f->st.plan[pending(f, "seq.follow-up")].id, sizeof fu);
    td_step_out *o =
        step(f, "r0", "email.replied", T0 + 2000, "{\"sentiment\":\"out_of_office\"}", 0, 0);
    assert_int_equal(o->nwds, 0);
    assert_false(o->plan_changed);
    assert_int_equal(f->st.nplan, 2);
    o = step(f, "r1", "email.replied", T0 + 3000, "{\"sentiment\":\"neutral\"}", 0, 0);
    assert_int_equal(o->nwds, 1);
    assert_true(o->plan_changed);
    assert_int_equal(o->wds[0].reason, TD_WDR_REPLIED);
    assert_string_equal(o->wds[0].withdraws, fu);
    assert_string_equal(o->wds[0].rule, "seq.follow-up");
    assert_int_equal(f->st.nplan, 1);
    assert_int_equal(pending(f, "gift.card"), 0);
    assert_int_equal(f->st.plan_version, 3);

    /* the withdrawal: a deterministic id, and its JSON */
    char in[256], want[40] = "w-";
    int n = snprintf(in, sizeof in, "r1\x1f%s", fu);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    assert_int_equal(EVP_Digest(in, (size_t)n, md, &mdlen, EVP_sha256(), NULL), 1);
    for (int i = 0; i < 16; i++)
        sprintf(want + 2 + 2 * i, "%02x", md[i]);
    assert_string_equal(o->wds[0].id, want);
    json_t *j = body(o->wds[0].body, o->wds[0].body_len);
    assert_string_equal(json_string_value(json_object_get(j, "kind")), "withdrawal");
    assert_string_equal(json_string_value(json_object_get(j, "id")), want);
    assert_string_equal(json_string_value(json_object_get(j, "withdraws")), fu);
    assert_string_equal(json_string_value(json_object_get(j, "reason")), "replied");
    assert_string_equal(json_string_value(json_object_get(j, "audience")), "prospect");
    assert_string_equal(json_string_value(json_object_get(j, "owner_id")), "rep-1");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(j, "trigger"), "event_id")), "r1");
    json_t *bc = json_array_get(json_object_get(j, "because"), 0);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(bc, "facts"), "event.sentiment")),
        "neutral");
    assert_non_null(json_object_get(j, "ruleset"));
    json_decref(j);
}

/* An opt-out or unsubscribe withdraws its channel only; a hard bounce is
 * "bounced"; a consent withdrawn by the CRM is "opted_out". */
static void test_channel_blocks_withdraw(void **state) {
    fx *f = *state;
    step(f, "s1", "email.sent", T0, NULL, 0, 0);               /* email follow-up */
    step(f, "a1", "linkedin.accepted", T0 + 1000, NULL, 0, 0); /* call */
    assert_int_equal(f->st.nplan, 2);
    td_step_out *o = step(f, "b1", "email.bounced", T0 + 2000, "{\"hard\":true}", 0, 0);
    assert_int_equal(o->nwds, 1);
    assert_int_equal(o->wds[0].reason, TD_WDR_BOUNCED);
    assert_string_equal(o->wds[0].rule, "seq.follow-up");
    assert_int_equal(f->st.nplan, 1);
    /* call consent withdrawn */
    o = step(f, "u1", "prospect.updated", T0 + 3000, "{\"consent\":{\"call\":false}}", 0, 0);
    assert_int_equal(o->nwds, 1);
    assert_int_equal(o->wds[0].reason, TD_WDR_OPTED_OUT);
    assert_string_equal(o->wds[0].rule, "seq.call");
    assert_int_equal(f->st.nplan, 0);
    assert_true(o->plan_changed);
}

static void test_whatsapp_opt_out_withdraws(void **state) {
    fx *f = *state;
    step(f, "s1", "email.sent", T0, NULL, 0, 0);
    step(f, "o1", "email.opened", T0 + 1000, NULL, 0, 0); /* whatsapp supersedes the email */
    assert_int_equal(f->st.nplan, 1);
    assert_int_equal(pending(f, "seq.whatsapp"), 0);
    td_step_out *o = step(f, "x1", "whatsapp.opted_out", T0 + 2000, NULL, 0, 0);
    assert_int_equal(o->nwds, 1);
    assert_int_equal(o->wds[0].reason, TD_WDR_OPTED_OUT);
    assert_int_equal(f->st.nplan, 0);
}

/* A newer recommendation of the group supersedes the pending one: another
 * rule of the group, or the same rule again. */
static void test_superseded(void **state) {
    fx *f = *state;
    step(f, "s1", "email.sent", T0, NULL, 0, 0);
    char first[40];
    td_strlcpy(first, f->st.plan[0].id, sizeof first);
    td_step_out *o = step(f, "o1", "email.opened", T0 + 1000, NULL, 0, 0);
    assert_int_equal(o->nrecs, 1);
    assert_int_equal(o->nwds, 1);
    assert_int_equal(o->wds[0].reason, TD_WDR_SUPERSEDED);
    assert_string_equal(o->wds[0].withdraws, first);
    assert_ptr_equal(o->wds[0].by, &o->recs[0]);
    /* its because is the new recommendation's (none: no `when`) */
    json_t *j = body(o->wds[0].body, o->wds[0].body_len);
    assert_int_equal(json_array_size(json_object_get(j, "because")), 0);
    json_decref(j);
    assert_int_equal(f->st.nplan, 1);
    assert_string_equal(f->st.plan[0].id, o->recs[0].id);
    /* the same rule again */
    o = step(f, "s2", "email.sent", T0 + 2000, NULL, 0, 0);
    assert_int_equal(o->nwds, 1);
    assert_string_equal(o->wds[0].rule, "seq.whatsapp");
    assert_int_equal(f->st.nplan, 1);
    assert_string_equal(f->st.plan[0].rule, "seq.follow-up");
}

/* Won or lost ends the sequence, not the gift. */
static void test_stage_withdraws(void **state) {
    fx *f = *state;
    step(f, "s1", "email.sent", T0, NULL, 0, 0);
    step(f, "u1", "prospect.updated", T0 + 1000, "{\"tier\":1,\"stage\":\"proposal\"}", 0, 0);
    assert_int_equal(f->st.nplan, 2);
    td_step_out *o = step(f, "u2", "prospect.updated", T0 + 2000, "{\"stage\":\"won\"}", 0, 0);
    /* gift.card fires again (tier 1) and supersedes itself; follow-up: stage */
    int seen_stage = 0;
    for (uint32_t i = 0; i < o->nwds; i++)
        if (o->wds[i].reason == TD_WDR_STAGE) {
            seen_stage++;
            assert_string_equal(o->wds[i].rule, "seq.follow-up");
        }
    assert_int_equal(seen_stage, 1);
    assert_int_equal(pending(f, "seq.follow-up"), -1);
    assert_true(pending(f, "gift.card") >= 0);
}

/* A rule's withdraws: by intent and by group. */
static void test_rule_withdraws(void **state) {
    fx *f = *state;
    step(f, "s1", "email.sent", T0, NULL, 0, 0);
    step(f, "a1", "linkedin.accepted", T0 + 1000, NULL, 0, 0);
    step(f, "u1", "prospect.updated", T0 + 1500, "{\"tier\":1}", 0, 0);
    assert_int_equal(f->st.nplan, 3);
    td_step_out *o = step(f, "m1", "meeting.held", T0 + 2000, NULL, 0, 0);
    assert_int_equal(o->nrecs, 1);
    assert_int_equal(o->nwds, 2);
    for (uint32_t i = 0; i < o->nwds; i++) {
        assert_int_equal(o->wds[i].reason, TD_WDR_RULE);
        assert_true(strcmp(o->wds[i].rule, "seq.call") == 0 ||
                    strcmp(o->wds[i].rule, "seq.follow-up") == 0);
    }
    assert_int_equal(f->st.nplan, 2); /* the gift and the value insight */
    assert_true(pending(f, "meeting.held") >= 0);
}

/* A trigger past a pending recommendation's expires_at withdraws it. */
static void test_expired(void **state) {
    fx *f = *state;
    step(f, "s1", "email.sent", T0, NULL, 0, 0);
    td_ms exp = f->st.plan[0].expires_at;
    td_step_out *o = step(f, "d1", "email.delivered", exp - 1, NULL, 0, 0);
    assert_int_equal(o->nwds, 0);
    o = step(f, "d2", "email.delivered", exp, NULL, 0, 0);
    assert_int_equal(o->nwds, 1);
    assert_int_equal(o->wds[0].reason, TD_WDR_EXPIRED);
    assert_int_equal(f->st.nplan, 0);
    assert_true(o->plan_changed);
    json_t *j = body(o->wds[0].body, o->wds[0].body_len);
    assert_string_equal(json_string_value(json_object_get(j, "reason")), "expired");
    json_decref(j);
}

/* Late under each policy: mark (the default), publish, drop. */
static void test_late_policies(void **state) {
    fx *f = *state;
    /* not_before is T0 + 1d 40m; late_after 12h (settings) */
    td_ms nb = T0 + TD_DAY + 40 * 60 * 1000;
    td_step_out *o = step(f, "s1", "email.sent", T0, NULL, nb + 12 * TD_HOUR, 0);
    assert_false(o->recs[0].late); /* exactly at the bound: not late */
    assert_int_equal(f->st.nplan, 1);
    o = step(f, "s2", "email.sent", T0 + 1, NULL, nb + 12 * TD_HOUR + 2, 0);
    assert_true(o->recs[0].late);
    assert_false(o->recs[0].dropped);
    assert_int_equal(o->nlate, 1);
    /* bodies are not NUL-ended: copied by length (strndup may read on to a
     * NUL, which ASan's strict_string_checks reports past the buffer) */
    char *late = calloc(1, o->recs[0].body_len + 1);
    assert_non_null(late);
    memcpy(late, o->recs[0].body, o->recs[0].body_len);
    assert_non_null(strstr(late, "\"late\":true"));
    free(late);
    /* marked: not in the plan, but it still supersedes the pending one */
    assert_int_equal(o->nwds, 1);
    assert_int_equal(f->st.nplan, 0);
    o = step(f, "s3", "email.sent", T0 + 2, NULL, nb + TD_DAY, TD_STEP_LATE_PUBLISH);
    assert_true(o->recs[0].late);
    assert_int_equal(f->st.nplan, 1);
    o = step(f, "s4", "email.sent", T0 + 3, NULL, nb + TD_DAY, TD_STEP_LATE_DROP);
    assert_true(o->recs[0].dropped);
    assert_int_equal(f->st.nplan, 0);
    /* past expires_at is late whatever late_after says */
    o = step(f, "s5", "email.sent", T0 + 4, NULL, nb + 2 * TD_DAY + 4, TD_STEP_LATE_PUBLISH);
    assert_true(o->recs[0].late);
}

/* The keys' diagnostics. */
static void test_rules_keys(void **state) {
    (void)state;
    struct {
        const char *text, *code, *msg;
    } bad[] = {
        {"rules = ({ id = \"a\"; on = [\"email.sent\"]; withdraws = [\"nope\"];\n"
         "  recommend = { channel = \"email\"; touch = \"follow_up\"; }; });\n",
         "E114", "neither a group nor a rule id"},
        {"rules = ({ id = \"a\"; on = [\"email.sent\"]; withdraws = [\"intent:zzz\"];\n"
         "  recommend = { channel = \"email\"; touch = \"follow_up\"; }; });\n",
         "E114", "no rule of the ruleset declares intent 'zzz'"},
        {"rules = ({ id = \"g\"; block = \"true\"; intent = \"give\"; });\n", "E114",
         "belongs to a recommending rule"},
        {"rules = ({ id = \"a\"; on = [\"email.sent\"]; intent = \"Give Value\";\n"
         "  recommend = { channel = \"email\"; touch = \"follow_up\"; }; });\n",
         "E114", "lower-case"},
        {"rules = ({ id = \"a\"; on = [\"email.sent\"]; expires = \"soon\";\n"
         "  recommend = { channel = \"email\"; touch = \"follow_up\"; }; });\n",
         "E109", "a.expires"},
        {"settings = { late_after = 3; };\nrules = ({ id = \"a\"; on = [\"email.sent\"];\n"
         "  recommend = { channel = \"email\"; touch = \"follow_up\"; }; });\n",
         "E109", "settings.late_after"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        td_diags d = {0};
        td_ruleset *rs = compile(bad[i].text, &d);
        assert_null(rs);
        bool found = false;
        for (size_t k = 0; k < d.n; k++)
            if (strcmp(d.v[k].code, bad[i].code) == 0 && strstr(d.v[k].msg, bad[i].msg) &&
                d.v[k].line >= 1)
                found = true;
        if (!found) fail_msg("case %zu: no %s '%s'", i, bad[i].code, bad[i].msg);
        td_diags_free(&d);
    }
    /* an intent outside the vocabulary is a warning */
    td_diags d = {0};
    td_ruleset *rs = compile("rules = ({ id = \"a\"; on = [\"email.sent\"]; intent = \"nurture\";\n"
                             "  recommend = { channel = \"email\"; touch = \"follow_up\"; }; });\n",
                             &d);
    assert_non_null(rs);
    assert_int_equal(d.warnings, 1);
    assert_string_equal(d.v[0].code, "W309");
    td_ruleset_free(rs);
    td_diags_free(&d);
}

/* Feedback: acted and dismissed take a recommendation out of the plan; an
 * id that is not this prospect's is rejected with nothing applied. */
static void test_feedback_acted_dismissed_unknown(void **state) {
    fx *f = *state;
    step(f, "s1", "email.sent", T0, NULL, 0, 0);
    step(f, "a1", "linkedin.accepted", T0 + 1000, NULL, 0, 0);
    char fu[40], call[40], data[256];
    td_strlcpy(fu, f->st.plan[pending(f, "seq.follow-up")].id, sizeof fu);
    td_strlcpy(call, f->st.plan[pending(f, "seq.call")].id, sizeof call);
    int64_t v = f->st.plan_version, events = f->st.events;

    /* unknown: rejected, nothing applied, not remembered as seen */
    td_step_out *o = step(f, "f0", "recommendation.acted", T0 + 2000,
                          "{\"recommendation_id\":\"r-00000000000000000000000000000000\"}", 0, 0);
    assert_true(o->rejected);
    assert_string_equal(o->reject_field, "data.recommendation_id");
    assert_null(strstr(o->reject_reason, "r-0000"));
    assert_int_equal(f->st.events, events);
    assert_false(td_state_seen(&f->st, "f0"));
    assert_int_equal(f->st.plan_version, v);

    snprintf(data, sizeof data, "{\"recommendation_id\":\"%s\"}", fu);
    o = step(f, "f1", "recommendation.acted", T0 + 3000, data, 0, 0);
    assert_false(o->rejected);
    assert_true(o->plan_changed);
    assert_int_equal(o->nwds, 0); /* the notifier knows: no withdrawal */
    assert_int_equal(pending(f, "seq.follow-up"), -1);
    assert_int_equal(f->st.fb_acted, 1);
    assert_int_equal(f->st.last_acted_at, T0 + 3000);
    /* acted on again (no longer pending, still known): accepted, no change */
    o = step(f, "f2", "recommendation.acted", T0 + 4000, data, 0, 0);
    assert_false(o->rejected);
    assert_false(o->plan_changed);
    snprintf(data, sizeof data, "{\"recommendation_id\":\"%s\"}", call);
    o = step(f, "f3", "recommendation.dismissed", T0 + 5000, data, 0, 0);
    assert_true(o->plan_changed);
    assert_int_equal(f->st.nplan, 0);
    assert_int_equal(f->st.fb_dismissed, 1);

    /* another prospect's id is foreign here */
    td_state other;
    td_state_init(&other, "p-2");
    td_event ev;
    td_event_error err;
    snprintf(data, sizeof data,
             "{\"id\":\"x1\",\"type\":\"recommendation.acted\",\"prospect_id\":\"p-2\","
             "\"occurred_at\":\"%s\",\"data\":{\"recommendation_id\":\"%s\"}}",
             at(T0 + 6000), call);
    assert_int_equal(td_event_decode(data, strlen(data), &ev, &err), TD_OK);
    td_trigger trig = {.kind = TD_TRIG_EVENT, .ev = &ev};
    assert_int_equal(td_engine_step(f->rs, &other, &trig, 0, f->tz, 0, f->out), TD_OK);
    assert_true(f->out->rejected);
    assert_int_equal(other.events, 0);
    td_state_free(&other);
}

/* Dismissed gift touches leave the cadence's count; acted ones stay. */
static void test_feedback_gift_cadence(void **state) {
    fx *f = *state;
    step(f, "u1", "prospect.updated", T0, "{\"tier\":1}", 0, 0);
    step(f, "u2", "prospect.updated", T0 + TD_DAY, "{\"tier\":1}", 0, 0);
    assert_int_equal(f->st.gift_recs_year, 2);
    assert_int_equal(f->st.gift_rec_year, 2026);
    char g[40], data[128];
    td_strlcpy(g, f->st.plan[pending(f, "gift.card")].id, sizeof g);
    snprintf(data, sizeof data, "{\"recommendation_id\":\"%s\"}", g);
    step(f, "f1", "recommendation.dismissed", T0 + TD_DAY + 1, data, 0, 0);
    assert_int_equal(f->st.gift_recs_year, 1);
    /* the superseded first one is dismissed too: still known, counted out */
    step(f, "f2", "recommendation.acted", T0 + TD_DAY + 2, data, 0, 0);
    assert_int_equal(f->st.gift_recs_year, 1);
    /* the rules read it, per local year of now */
    td_ctx ctx = {
        .st = &f->st, .now = T0 + TD_DAY + 3, .tz = f->tz, .settings = td_ruleset_settings(f->rs)};
    const td_field *fd = td_schema_lookup("gifts.recommended_year", 22);
    assert_non_null(fd);
    td_value val;
    td_field_read(fd, &ctx, &val);
    assert_int_equal(val.u.i, 1);
    ctx.now = T0 + 70 * TD_DAY; /* 2027 */
    td_field_read(fd, &ctx, &val);
    assert_int_equal(val.u.i, 0);
}

/* Snoozed: out of the published plan until `until`, when the plan's own
 * timer brings it back; the plan topic's JSON follows. */
static void test_feedback_snoozed(void **state) {
    fx *f = *state;
    step(f, "s1", "email.sent", T0, NULL, 0, 0);
    char fu[40], data[160];
    td_strlcpy(fu, f->st.plan[0].id, sizeof fu);
    td_ms until = T0 + 12 * TD_HOUR;
    snprintf(data, sizeof data, "{\"recommendation_id\":\"%s\",\"until\":\"%s\"}", fu, at(until));
    td_step_out *o = step(f, "z1", "recommendation.snoozed", T0 + 1000, data, 0, 0);
    assert_true(o->plan_changed);
    assert_int_equal(f->st.nplan, 1);
    assert_int_equal(td_state_plan_visible(&f->st), 0);
    assert_int_equal(f->st.plan[0].snoozed_until, until);
    const td_timer *t = td_state_timer(&f->st, TD_PLAN_TIMER);
    assert_non_null(t);
    assert_int_equal(t->due_at, until);
    assert_int_equal(o->narms, 1);
    assert_string_equal(o->arms[0].rule_id, TD_PLAN_TIMER);
    td_buf b = {0};
    assert_int_equal(td_plan_json(&f->st, f->rs, &b), TD_OK);
    assert_non_null(strstr(b.p, "\"pending\":[]"));
    /* the flat form keeps the snooze and the recent ring */
    td_kvs kv = {0};
    assert_int_equal(td_kvs_capture(&kv, &f->st), TD_OK);
    td_state back;
    td_state_init(&back, "p-1");
    char err[128];
    for (size_t i = 0; i < kv.n; i++)
        assert_int_equal(td_state_set_field(&back, kv.buf + kv.e[i].k, kv.e[i].kl,
                                            kv.buf + kv.e[i].v, kv.e[i].vl, err, sizeof err),
                         TD_OK);
    assert_true(td_state_equal(&back, &f->st));
    td_state_free(&back);
    td_kvs_free(&kv);
    /* the timer fires: it is back */
    char armed[TD_ID_MAX + 1];
    td_strlcpy(armed, t->armed_by, sizeof armed);
    td_trigger due = {
        .kind = TD_TRIG_TIMER, .rule = TD_PLAN_TIMER, .due_at = until, .armed_by = armed};
    assert_int_equal(td_engine_step(f->rs, &f->st, &due, 0, f->tz, 0, f->out), TD_OK);
    assert_false(f->out->stale);
    assert_true(f->out->plan_changed);
    assert_int_equal(f->st.plan[0].snoozed_until, 0);
    assert_int_equal(td_state_plan_visible(&f->st), 1);
    /* the plan's timer now waits for the expiry */
    t = td_state_timer(&f->st, TD_PLAN_TIMER);
    assert_non_null(t);
    assert_int_equal(t->due_at, f->st.plan[0].expires_at);
    b.len = 0;
    assert_int_equal(td_plan_json(&f->st, f->rs, &b), TD_OK);
    assert_non_null(strstr(b.p, fu));
    td_buf_free(&b);
}

/* The plan's own timer: a pending recommendation expires on time, with
 * no other trigger, and the plan follows. */
static void test_plan_timer_expires(void **state) {
    fx *f = *state;
    step(f, "s1", "email.sent", T0, NULL, 0, 0);
    const td_timer *t = td_state_timer(&f->st, TD_PLAN_TIMER);
    assert_non_null(t);
    assert_int_equal(t->due_at, f->st.plan[0].expires_at);
    char armed[TD_ID_MAX + 1], rid[40];
    td_strlcpy(armed, t->armed_by, sizeof armed);
    td_strlcpy(rid, f->st.plan[0].id, sizeof rid);
    td_trigger due = {
        .kind = TD_TRIG_TIMER, .rule = TD_PLAN_TIMER, .due_at = t->due_at, .armed_by = armed};
    assert_int_equal(td_engine_step(f->rs, &f->st, &due, 0, f->tz, 0, f->out), TD_OK);
    assert_false(f->out->stale);
    assert_int_equal(f->out->nwds, 1);
    assert_int_equal(f->out->wds[0].reason, TD_WDR_EXPIRED);
    assert_string_equal(f->out->wds[0].withdraws, rid);
    assert_true(f->out->plan_changed);
    assert_int_equal(f->st.nplan, 0);
    assert_null(td_state_timer(&f->st, TD_PLAN_TIMER));
}

/* Answers and stops are not the sequence: a later reply does not withdraw
 * them, and a stop is only superseded by a newer stop. */
static void test_answers_and_stops_stay(void **state) {
    fx *f = *state;
    step(f, "r1", "email.replied", T0, "{\"sentiment\":\"positive\"}", 0, 0);
    assert_int_equal(pending(f, "reply.answer"), 0);
    td_step_out *o = step(f, "r2", "email.replied", T0 + 1000, "{\"sentiment\":\"neutral\"}", 0, 0);
    assert_int_equal(o->nwds, 0);
    assert_int_equal(pending(f, "reply.answer"), 0);
    /* a "no": the stop supersedes the answer (same group) */
    o = step(f, "r3", "email.replied", T0 + 2000, "{\"sentiment\":\"negative\"}", 0, 0);
    assert_int_equal(o->nwds, 1);
    assert_int_equal(o->wds[0].reason, TD_WDR_SUPERSEDED);
    assert_int_equal(pending(f, "reply.stop"), 0);
    /* a follow-up of the same group does not supersede the stop */
    o = step(f, "s1", "email.sent", T0 + 3000, NULL, 0, 0);
    assert_int_equal(o->nwds, 0);
    assert_true(pending(f, "reply.stop") >= 0);
    assert_true(pending(f, "seq.follow-up") >= 0);
    /* the engine's list for explain agrees */
    td_wd_reason v[7];
    size_t n = td_plan_withdrawn_on(&f->st.plan[pending(f, "reply.stop")], v);
    for (size_t i = 0; i < n; i++)
        assert_true(v[i] != TD_WDR_REPLIED && v[i] != TD_WDR_STAGE);
    n = td_plan_withdrawn_on(&f->st.plan[pending(f, "seq.follow-up")], v);
    assert_int_equal(n, 7);
}

/* A full plan loses the one that expires first, with a withdrawal. */
static void test_full_plan_evicts(void **state) {
    fx *f = *state;
    char id[16];
    /* distinct rules are needed for distinct entries: the same rule
     * supersedes itself, so fill the plan directly */
    for (int i = 0; i < TD_PLAN_MAX; i++) {
        td_pending e;
        memset(&e, 0, sizeof e);
        snprintf(e.id, sizeof e.id, "r-fill-%02d", i);
        e.not_before = T0 + i;
        e.expires_at = T0 + 10 * TD_DAY + i;
        e.channel = TD_CH_CALL;
        snprintf(e.rule, sizeof e.rule, "x.fill-%02d", i);
        td_strlcpy(e.touch, "owner_nudge", sizeof e.touch);
        e.owner = true;
        e.json = strdup("{\"kind\":\"recommendation\"}");
        e.len = (uint32_t)strlen(e.json);
        assert_int_equal(td_state_plan_add(&f->st, &e, NULL), TD_OK);
    }
    assert_int_equal(f->st.nplan, TD_PLAN_MAX);
    snprintf(id, sizeof id, "s1");
    td_step_out *o = step(f, id, "email.sent", T0 + 100, NULL, 0, 0);
    assert_int_equal(o->nrecs, 1);
    assert_int_equal(f->st.nplan, TD_PLAN_MAX);
    assert_int_equal(o->nwds, 1);
    assert_string_equal(o->wds[0].withdraws, "r-fill-00");
    assert_int_equal(o->wds[0].reason, TD_WDR_SUPERSEDED);
    assert_true(pending(f, "seq.follow-up") >= 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_recommendation_joins_plan, setup, teardown),
        cmocka_unit_test_setup_teardown(test_plan_flat_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reply_withdraws_sequence, setup, teardown),
        cmocka_unit_test_setup_teardown(test_channel_blocks_withdraw, setup, teardown),
        cmocka_unit_test_setup_teardown(test_whatsapp_opt_out_withdraws, setup, teardown),
        cmocka_unit_test_setup_teardown(test_superseded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stage_withdraws, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rule_withdraws, setup, teardown),
        cmocka_unit_test_setup_teardown(test_expired, setup, teardown),
        cmocka_unit_test_setup_teardown(test_late_policies, setup, teardown),
        cmocka_unit_test(test_rules_keys),
        cmocka_unit_test_setup_teardown(test_feedback_acted_dismissed_unknown, setup, teardown),
        cmocka_unit_test_setup_teardown(test_feedback_gift_cadence, setup, teardown),
        cmocka_unit_test_setup_teardown(test_feedback_snoozed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_plan_timer_expires, setup, teardown),
        cmocka_unit_test_setup_teardown(test_answers_and_stops_stay, setup, teardown),
        cmocka_unit_test_setup_teardown(test_full_plan_evicts, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
