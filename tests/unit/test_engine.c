/*
 * test_engine.c - the engine step: triggers, `when`, guards, groups and
 * priorities, cooldowns, dedup, timers (arm, re-arm, fire, stale), runtime
 * errors isolated per rule, deterministic ids, explanations, the JSON form,
 * and the probe (the same step, reported per rule).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <cmocka.h>

#include "td_engine.h"
#include "td_time.h"

static const char *RULES =
    "rules = (\n"
    "  { id = \"pivot.whatsapp\"; on = [ \"email.opened\" ];\n"
    "    when = \"email.unanswered >= 2 && email.opens_since_reply >= 1 && !replied\";\n"
    "    priority = 80; group = \"follow-up\"; cooldown = \"3d\";\n"
    "    recommend = { channel = \"whatsapp\"; touch = \"micro_question\"; at = \"now + 1h\"; }; "
    "},\n"
    "  { id = \"pivot.linkedin\"; on = [ \"email.opened\" ];\n"
    "    when = \"email.unanswered >= 2 && !replied\";\n"
    "    priority = 60; group = \"follow-up\";\n"
    "    recommend = { channel = \"linkedin\"; touch = \"micro_question\"; }; },\n"
    "  { id = \"reply.human\"; on = [ \"email.replied\" ];\n"
    "    when = \"event.sentiment == 'positive'\"; priority = 90;\n"
    "    recommend = { channel = \"email\"; touch = \"human_reply\"; note = \"Answer fast.\"; }; "
    "},\n"
    "  { id = \"broken.div\"; on = [ \"email.replied\" ];\n"
    "    when = \"email.sent / (email.replied - 1) > 0\";\n"
    "    recommend = { channel = \"call\"; touch = \"call_proposal\"; }; },\n"
    "  { id = \"silence.nudge\"; on = [ \"email.sent\" ]; after = \"72h\";\n"
    "    when = \"email.unanswered > 0 && !replied\";\n"
    "    recommend = { channel = \"linkedin\"; touch = \"follow_up\"; }; },\n"
    "  { id = \"guard.consent\"; block = \"rec.channel == 'whatsapp' && !(target.consent ?? "
    "false)\";\n"
    "    reason = \"no consent\"; }\n"
    ");\n";

typedef struct fx {
    td_ruleset *rs;
    td_tzdb *tz;
    td_state st;
    td_step_out *out;
} fx;

static int setup(void **state) {
    fx *f = calloc(1, sizeof *f);
    td_source src = {.name = "engine.rules", .text = RULES, .len = strlen(RULES)};
    td_diags d = {0};
    f->rs = td_ruleset_compile(&src, 1, &d);
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

static td_ms T0; /* 2026-11-02T09:00:00Z, a Monday */

/* Decodes and steps one event given as JSON. */
static td_step_out *step_json(fx *f, unsigned flags, const char *fmt, ...) {
    char json[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(json, sizeof json, fmt, ap);
    va_end(ap);
    static td_event ev; /* the trigger must outlive the step for JSON rendering */
    td_event_error err;
    if (td_event_decode(json, strlen(json), &ev, &err) != TD_OK)
        fail_msg("decode %s: %s %s", json, err.field, err.reason);
    td_trigger trig = {.kind = TD_TRIG_EVENT, .ev = &ev};
    assert_int_equal(td_engine_step(f->rs, &f->st, &trig, ev.occurred_at, f->tz, flags, f->out),
                     TD_OK);
    return f->out;
}

static const char *at(td_ms t) {
    static char buf[4][TD_TIME_BUF];
    static int k;
    k = (k + 1) % 4;
    td_time_format(t, buf[k], sizeof buf[k]);
    return buf[k];
}

static const td_decision *find_decision(const td_step_out *o, const char *rule) {
    for (uint32_t i = 0; i < o->ndecisions; i++)
        if (strcmp(o->decisions[i].rule->id, rule) == 0) return &o->decisions[i];
    return NULL;
}

/* Two sent, one opened: the pivot fires. Consent decides which channel. */
static void send_two_and_open(fx *f, const char *suffix) {
    step_json(
        f, 0,
        "{\"id\":\"s1%s\",\"type\":\"email.sent\",\"prospect_id\":\"p-1\",\"occurred_at\":\"%s\"}",
        suffix, at(T0));
    step_json(
        f, 0,
        "{\"id\":\"s2%s\",\"type\":\"email.sent\",\"prospect_id\":\"p-1\",\"occurred_at\":\"%s\"}",
        suffix, at(T0 + TD_DAY));
}

static void test_group_guard_fallback(void **state) {
    fx *f = *state;
    send_two_and_open(f, "");
    /* no whatsapp consent: the whatsapp pivot is blocked, linkedin wins the group */
    td_step_out *o = step_json(
        f, TD_STEP_EXPLAIN,
        "{\"id\":\"o1\",\"type\":\"email.opened\",\"prospect_id\":\"p-1\",\"occurred_at\":\"%s\"}",
        at(T0 + 2 * TD_DAY));
    assert_false(o->duplicate);
    assert_int_equal(o->nrecs, 1);
    assert_string_equal(o->recs[0].rule->id, "pivot.linkedin");
    assert_int_equal(o->recs[0].channel, TD_CH_LINKEDIN);
    assert_int_equal(o->nblocked, 1);
    const td_decision *d = find_decision(o, "pivot.whatsapp");
    assert_non_null(d);
    assert_int_equal(d->outcome, TD_OUT_BLOCKED);
    assert_string_equal(d->by->id, "guard.consent");
    /* explanation of the blocked rule: three conjuncts, all true */
    assert_int_equal(d->nbecause, 3);
    assert_true(d->because[0].value.u.b);
    assert_int_equal(d->because[0].facts.n, 1);
    assert_string_equal(d->because[0].facts.v[0].field->name, "email.unanswered");
    assert_int_equal(d->because[0].facts.v[0].value.u.i, 2);
}

/* The shortcuts of the step: a rule whose leading enum test fails is not
 * matched (and still explained), and a guard whose first conjunct reads only
 * the candidate's rule is skipped where it cannot block, with the same
 * outcomes as a full evaluation. */
static const char *SHORTCUT_RULES =
    "rules = (\n"
    "  { id = \"won.gift\"; on = [ \"email.opened\" ];\n"
    "    when = \"stage == 'won' && email.opened >= 1\";\n"
    "    recommend = { channel = \"gift\"; touch = \"physical_gift\"; window = \"any\"; }; },\n"
    "  { id = \"any.question\"; on = [ \"email.opened\" ];\n"
    "    recommend = { channel = \"linkedin\"; touch = \"micro_question\"; window = \"any\"; }; "
    "},\n"
    "  { id = \"guard.gift-tier\"; block = \"rec.touch in ['physical_gift'] && tier == 1\"; },\n"
    "  { id = \"guard.state-first\"; block = \"tier == 3 && rec.touch == 'micro_question'\"; },\n"
    "  { id = \"guard.may-fail\";\n"
    "    block = \"email.sent / (email.failed + 1) > 100 && rec.touch == 'nothing'\"; }\n"
    ");\n";

static void test_step_shortcuts(void **state) {
    fx *f = *state;
    td_source src = {
        .name = "shortcuts.rules", .text = SHORTCUT_RULES, .len = strlen(SHORTCUT_RULES)};
    td_diags d = {0};
    td_ruleset *rs = td_ruleset_compile(&src, 1, &d);
    td_diags_free(&d);
    assert_non_null(rs);
    const td_rule *gift = td_ruleset_find(rs, "won.gift"), *q = td_ruleset_find(rs, "any.question");
    const td_rule *g1 = td_ruleset_find(rs, "guard.gift-tier");
    const td_rule *g2 = td_ruleset_find(rs, "guard.state-first");
    const td_rule *g3 = td_ruleset_find(rs, "guard.may-fail");
    assert_true(gift && q && g1 && g2 && g3);
    assert_true(td_ruleset_find_key(rs, &gift->key) == gift);
    assert_false(td_rule_never_blocks(g1, gift)); /* physical_gift: the rest decides */
    assert_true(td_rule_never_blocks(g1, q));     /* micro_question: never */
    /* a later conjunct counts when the ones before it cannot fail */
    assert_true(td_rule_never_blocks(g2, gift));
    assert_false(td_rule_never_blocks(g2, q));
    /* ... and not after one that can (a failing guard blocks: fail safe) */
    assert_null(g3->never_blocks);
    assert_false(td_rule_never_blocks(g3, q));

    td_ruleset *saved = f->rs;
    f->rs = rs;
    /* not won: won.gift is not matched without evaluation, yet explained */
    step_json(f, 0,
              "{\"id\":\"u1\",\"type\":\"prospect.updated\",\"prospect_id\":\"p-1\","
              "\"occurred_at\":\"%s\",\"data\":{\"stage\":\"engaged\",\"tier\":3}}",
              at(T0));
    td_step_out *o = step_json(
        f, TD_STEP_EXPLAIN,
        "{\"id\":\"o1\",\"type\":\"email.opened\",\"prospect_id\":\"p-1\",\"occurred_at\":\"%s\"}",
        at(T0 + TD_HOUR));
    const td_decision *dg = find_decision(o, "won.gift");
    assert_non_null(dg);
    assert_int_equal(dg->outcome, TD_OUT_NOT_MATCHED);
    assert_int_equal(dg->nbecause, 2);
    assert_false(dg->because[0].value.u.b);
    assert_string_equal(dg->because[0].facts.v[0].field->name, "stage");
    /* tier 3: the state-first guard blocks the question */
    const td_decision *dq = find_decision(o, "any.question");
    assert_non_null(dq);
    assert_int_equal(dq->outcome, TD_OUT_BLOCKED);
    assert_string_equal(dq->by->id, "guard.state-first");
    assert_int_equal(o->nrecs, 0);

    /* won, tier 1: the gift matches and guard.gift-tier blocks it; the
     * question is published (guard.gift-tier skipped for it) */
    step_json(f, 0,
              "{\"id\":\"u2\",\"type\":\"prospect.updated\",\"prospect_id\":\"p-1\","
              "\"occurred_at\":\"%s\",\"data\":{\"stage\":\"won\",\"tier\":1}}",
              at(T0 + 2 * TD_HOUR));
    o = step_json(
        f, TD_STEP_OUTCOMES,
        "{\"id\":\"o2\",\"type\":\"email.opened\",\"prospect_id\":\"p-1\",\"occurred_at\":\"%s\"}",
        at(T0 + 3 * TD_HOUR));
    dg = find_decision(o, "won.gift");
    assert_non_null(dg);
    assert_int_equal(dg->outcome, TD_OUT_BLOCKED);
    assert_string_equal(dg->by->id, "guard.gift-tier");
    assert_int_equal(o->nrecs, 1);
    assert_string_equal(o->recs[0].rule->id, "any.question");
    assert_true(td_state_fired_at_key(&f->st, &q->key) == T0 + 3 * TD_HOUR);

    /* tier 2: nothing blocks, both are published */
    step_json(f, 0,
              "{\"id\":\"u3\",\"type\":\"prospect.updated\",\"prospect_id\":\"p-1\","
              "\"occurred_at\":\"%s\",\"data\":{\"tier\":2}}",
              at(T0 + 4 * TD_HOUR));
    o = step_json(
        f, 0,
        "{\"id\":\"o3\",\"type\":\"email.opened\",\"prospect_id\":\"p-1\",\"occurred_at\":\"%s\"}",
        at(T0 + 5 * TD_HOUR));
    assert_int_equal(o->nrecs, 2);
    assert_int_equal(o->nblocked, 0);
    f->rs = saved;
    td_ruleset_free(rs);
}

static const char *NUDGE_RULES =
    "rules = (\n"
    "  { id = \"t.one\"; on = [ \"email.sent\" ]; after = \"1d\";\n"
    "    recommend = { channel = \"email\"; touch = \"follow_up\"; }; },\n"
    "  { id = \"t.two\"; on = [ \"email.sent\" ]; after = \"2d\";\n"
    "    recommend = { channel = \"email\"; touch = \"follow_up\"; }; },\n"
    "  { id = \"n.a\"; on = [ \"email.opened\" ]; recommend = { channel = \"email\"; touch = "
    "\"follow_up\"; }; },\n"
    "  { id = \"n.b\"; on = [ \"email.opened\" ]; recommend = { channel = \"linkedin\"; touch = "
    "\"follow_up\"; }; },\n"
    "  { id = \"guard.one-nudge\";\n"
    "    block = \"rec.touch in ['follow_up'] && ((rec.rule != 'n.a' && has(last_fired('n.a'))) ||"
    " (rec.rule != 'n.b' && has(last_fired('n.b'))))\"; reason = \"one\"; }\n"
    ");\n";

/* An event arming several timers stores its id once (the state's armed_by
 * pool), and a guard's rec.* tests are read from bits decided per rule. */
static void test_shared_armed_by_and_fixed_guard(void **state) {
    fx *f = *state;
    td_source src = {.name = "nudge.rules", .text = NUDGE_RULES, .len = strlen(NUDGE_RULES)};
    td_diags d = {0};
    td_ruleset *rs = td_ruleset_compile(&src, 1, &d);
    td_diags_free(&d);
    assert_non_null(rs);
    const td_rule *g = td_ruleset_find(rs, "guard.one-nudge");
    const td_rule *na = td_ruleset_find(rs, "n.a"), *nb = td_ruleset_find(rs, "n.b");
    assert_true(g && na && nb);
    assert_non_null(g->fixed_truth);
    /* marked in chain order: rec.touch in [...], rec.rule != 'n.a', rec.rule != 'n.b' */
    assert_int_equal(g->fixed_truth[na->index], 1 | 4);
    assert_int_equal(g->fixed_truth[nb->index], 1 | 2);

    td_ruleset *saved = f->rs;
    f->rs = rs;
    td_step_out *o = step_json(
        f, 0,
        "{\"id\":\"s1\",\"type\":\"email.sent\",\"prospect_id\":\"p-1\",\"occurred_at\":\"%s\"}",
        at(T0));
    assert_int_equal(o->narms, 2);
    assert_int_equal(f->st.ntimers, 2);
    assert_int_equal(f->st.narmed, 1); /* one id for both timers */
    assert_int_equal(f->st.armed[0].refs, 2);
    assert_string_equal(td_state_timer(&f->st, "t.one")->armed_by, "s1");
    assert_string_equal(td_state_timer(&f->st, "t.two")->armed_by, "s1");
    step_json(
        f, 0,
        "{\"id\":\"s2\",\"type\":\"email.sent\",\"prospect_id\":\"p-1\",\"occurred_at\":\"%s\"}",
        at(T0 + TD_HOUR));
    assert_int_equal(f->st.narmed, 2);
    assert_string_equal(td_state_timer(&f->st, "t.two")->armed_by, "s2");
    uint32_t live = 0;
    for (uint32_t i = 0; i < f->st.narmed; i++)
        live += f->st.armed[i].refs != 0;
    assert_int_equal(live, 1); /* s1's slot is free again */

    /* both nudges match; neither fired before: the guard blocks neither,
     * and the fired ones then block each other (not themselves) */
    o = step_json(
        f, TD_STEP_OUTCOMES,
        "{\"id\":\"o1\",\"type\":\"email.opened\",\"prospect_id\":\"p-1\",\"occurred_at\":\"%s\"}",
        at(T0 + 2 * TD_HOUR));
    assert_int_equal(o->nrecs, 2);
    assert_int_equal(o->nblocked, 0);
    o = step_json(
        f, TD_STEP_OUTCOMES,
        "{\"id\":\"o2\",\"type\":\"email.opened\",\"prospect_id\":\"p-1\",\"occurred_at\":\"%s\"}",
        at(T0 + 3 * TD_HOUR));
    assert_int_equal(o->nrecs, 0);
    assert_int_equal(o->nblocked, 2);
    assert_string_equal(find_decision(o, "n.a")->by->id, "guard.one-nudge");
    f->rs = saved;
    td_ruleset_free(rs);
}

static void test_group_priority_and_cooldown(void **state) {
    fx *f = *state;
    step_json(f, 0,
              "{\"id\":\"u1\",\"type\":\"prospect.updated\",\"prospect_id\":\"p-1\","
              "\"occurred_at\":\"%s\",\"data\":{\"consent\":{\"whatsapp\":true}}}",
              at(T0 - TD_HOUR));
    send_two_and_open(f, "");
    td_step_out *o = step_json(
        f, TD_STEP_OUTCOMES,
        "{\"id\":\"o1\",\"type\":\"email.opened\",\"prospect_id\":\"p-1\",\"occurred_at\":\"%s\"}",
        at(T0 + 2 * TD_DAY));
    assert_int_equal(o->nrecs, 1);
    assert_string_equal(o->recs[0].rule->id, "pivot.whatsapp");
    assert_int_equal(o->recs[0].not_before, T0 + 2 * TD_DAY + TD_HOUR); /* at = now + 1h */
    const td_decision *d = find_decision(o, "pivot.linkedin");
    assert_non_null(d);
    assert_int_equal(d->outcome, TD_OUT_LOST_GROUP);
    assert_string_equal(d->by->id, "pivot.whatsapp");
    assert_int_equal(td_state_fired_at(&f->st, "pivot.whatsapp"), T0 + 2 * TD_DAY);
    /* a day later: whatsapp is in cooldown (3d), so linkedin wins */
    o = step_json(
        f, TD_STEP_OUTCOMES,
        "{\"id\":\"o2\",\"type\":\"email.opened\",\"prospect_id\":\"p-1\",\"occurred_at\":\"%s\"}",
        at(T0 + 3 * TD_DAY));
    assert_int_equal(o->nrecs, 1);
    assert_string_equal(o->recs[0].rule->id, "pivot.linkedin");
    d = find_decision(o, "pivot.whatsapp");
    assert_int_equal(d->outcome, TD_OUT_COOLDOWN);
    assert_int_equal(d->until, T0 + 5 * TD_DAY);
    /* after the cooldown it fires again */
    o = step_json(
        f, 0,
        "{\"id\":\"o3\",\"type\":\"email.opened\",\"prospect_id\":\"p-1\",\"occurred_at\":\"%s\"}",
        at(T0 + 6 * TD_DAY));
    assert_int_equal(o->nrecs, 1);
    assert_string_equal(o->recs[0].rule->id, "pivot.whatsapp");
}

static void test_duplicate_event(void **state) {
    fx *f = *state;
    send_two_and_open(f, "");
    int64_t events = f->st.events, sent = f->st.ch[TD_CH_EMAIL].sent;
    td_step_out *o = step_json(
        f, 0,
        "{\"id\":\"s2\",\"type\":\"email.sent\",\"prospect_id\":\"p-1\",\"occurred_at\":\"%s\"}",
        at(T0 + TD_DAY));
    assert_true(o->duplicate);
    assert_int_equal(o->nrecs, 0);
    assert_int_equal(f->st.events, events);
    assert_int_equal(f->st.ch[TD_CH_EMAIL].sent, sent);
}

static void test_deterministic_ids_and_json(void **state) {
    fx *f = *state;
    td_step_out *o = step_json(
        f, 0,
        "{\"id\":\"r1\",\"type\":\"email.replied\",\"prospect_id\":\"p-1\",\"owner_id\":\"rep-7\","
        "\"occurred_at\":\"%s\",\"data\":{\"sentiment\":\"positive\"}}",
        at(T0));
    /* reply.human fires; broken.div divides by zero (replied - 1 == 0): an error, isolated */
    assert_int_equal(o->nrecs, 1);
    assert_int_equal(o->nerrors, 1);
    char id1[TD_REC_ID_LEN + 1];
    strcpy(id1, o->recs[0].id);
    assert_memory_equal(id1, "r-", 2);
    assert_int_equal(strlen(id1), TD_REC_ID_LEN);

    /* JSON form */
    static td_event ev;
    td_event_error err;
    const char *js =
        "{\"id\":\"r1\",\"type\":\"email.replied\",\"prospect_id\":\"p-1\","
        "\"occurred_at\":\"2026-11-02T09:00:00Z\",\"data\":{\"sentiment\":\"positive\"}}";
    assert_int_equal(td_event_decode(js, strlen(js), &ev, &err), TD_OK);
    td_trigger trig = {.kind = TD_TRIG_EVENT, .ev = &ev};
    td_buf b = {0};
    assert_int_equal(td_rec_json(&o->recs[0], &f->st, f->rs, &trig, T0 + 5, &b), TD_OK);
    json_error_t je;
    json_t *j = json_loadb(b.p, b.len, 0, &je);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "id")), id1);
    assert_string_equal(json_string_value(json_object_get(j, "prospect_id")), "p-1");
    assert_string_equal(json_string_value(json_object_get(j, "owner_id")), "rep-7");
    assert_string_equal(json_string_value(json_object_get(j, "rule")), "reply.human");
    assert_string_equal(json_string_value(json_object_get(j, "channel")), "email");
    assert_string_equal(json_string_value(json_object_get(j, "touch")), "human_reply");
    assert_string_equal(json_string_value(json_object_get(j, "note")), "Answer fast.");
    assert_string_equal(json_string_value(json_object_get(j, "not_before")),
                        "2026-11-02T09:00:00Z");
    assert_int_equal(json_integer_value(json_object_get(j, "priority")), 90);
    json_t *tr = json_object_get(j, "trigger");
    assert_string_equal(json_string_value(json_object_get(tr, "type")), "email.replied");
    assert_string_equal(json_string_value(json_object_get(tr, "event_id")), "r1");
    json_t *bc = json_object_get(j, "because");
    assert_int_equal(json_array_size(bc), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(bc, 0), "expr")),
                        "event.sentiment == 'positive'");
    assert_true(json_is_true(json_object_get(json_array_get(bc, 0), "value")));
    assert_string_equal(json_string_value(json_object_get(j, "ruleset")), td_ruleset_hash(f->rs));
    json_decref(j);
    td_buf_free(&b);

    /* the same trigger on a fresh state gives the same id */
    td_state_free(&f->st);
    td_state_init(&f->st, "p-1");
    o = step_json(
        f, 0,
        "{\"id\":\"r1\",\"type\":\"email.replied\",\"prospect_id\":\"p-1\",\"occurred_at\":\"%s\","
        "\"data\":{\"sentiment\":\"positive\"}}",
        at(T0 + TD_DAY));
    assert_string_equal(o->recs[0].id, id1);
    /* another trigger id gives another id */
    o = step_json(
        f, 0,
        "{\"id\":\"r2\",\"type\":\"email.replied\",\"prospect_id\":\"p-1\",\"occurred_at\":\"%s\","
        "\"data\":{\"sentiment\":\"positive\"}}",
        at(T0 + TD_DAY));
    assert_string_not_equal(o->recs[0].id, id1);
}

static void test_out_of_office_is_not_a_reply(void **state) {
    fx *f = *state;
    send_two_and_open(f, "");
    step_json(f, 0,
              "{\"id\":\"ooo\",\"type\":\"email.replied\",\"prospect_id\":\"p-1\","
              "\"occurred_at\":\"%s\",\"data\":{\"sentiment\":\"out_of_office\"}}",
              at(T0 + TD_DAY + TD_HOUR));
    td_step_out *o = step_json(
        f, 0,
        "{\"id\":\"o1\",\"type\":\"email.opened\",\"prospect_id\":\"p-1\",\"occurred_at\":\"%s\"}",
        at(T0 + 2 * TD_DAY));
    /* still two unanswered: the pivot (linkedin, no consent) fires */
    assert_int_equal(o->nrecs, 1);
    assert_string_equal(o->recs[0].rule->id, "pivot.linkedin");
}

static void test_timers(void **state) {
    fx *f = *state;
    td_step_out *o = step_json(
        f, TD_STEP_OUTCOMES,
        "{\"id\":\"s1\",\"type\":\"email.sent\",\"prospect_id\":\"p-1\",\"occurred_at\":\"%s\"}",
        at(T0));
    assert_int_equal(o->narms, 1);
    assert_string_equal(o->arms[0].rule->id, "silence.nudge");
    assert_int_equal(o->arms[0].due_at, T0 + 72 * TD_HOUR);
    assert_int_equal(find_decision(o, "silence.nudge")->outcome, TD_OUT_ARMED);
    /* a newer send re-arms: one pending timer per rule, due 72h after it */
    o = step_json(
        f, 0,
        "{\"id\":\"s2\",\"type\":\"email.sent\",\"prospect_id\":\"p-1\",\"occurred_at\":\"%s\"}",
        at(T0 + TD_DAY));
    const td_timer *t = td_state_timer(&f->st, "silence.nudge");
    assert_non_null(t);
    assert_int_equal(t->due_at, T0 + TD_DAY + 72 * TD_HOUR);
    assert_string_equal(t->armed_by, "s2");
    /* the first timer is stale now */
    td_trigger stale = {.kind = TD_TRIG_TIMER,
                        .rule = "silence.nudge",
                        .due_at = T0 + 72 * TD_HOUR,
                        .armed_by = "s1"};
    assert_int_equal(td_engine_step(f->rs, &f->st, &stale, T0 + 72 * TD_HOUR, f->tz, 0, f->out),
                     TD_OK);
    assert_true(f->out->stale);
    assert_int_equal(f->out->nrecs, 0);
    assert_non_null(td_state_timer(&f->st, "silence.nudge"));
    /* the current one fires, with a timer trigger id, and is disarmed */
    td_trigger due = {.kind = TD_TRIG_TIMER,
                      .rule = "silence.nudge",
                      .due_at = T0 + TD_DAY + 72 * TD_HOUR,
                      .armed_by = "s2"};
    assert_int_equal(td_engine_step(f->rs, &f->st, &due, due.due_at, f->tz, 0, f->out), TD_OK);
    assert_false(f->out->stale);
    assert_int_equal(f->out->nrecs, 1);
    assert_string_equal(f->out->recs[0].rule->id, "silence.nudge");
    assert_non_null(strstr(f->out->trigger_id, "timer:silence.nudge:s2:"));
    assert_null(td_state_timer(&f->st, "silence.nudge"));
    td_buf b = {0};
    assert_int_equal(td_rec_json(&f->out->recs[0], &f->st, f->rs, &due, due.due_at, &b), TD_OK);
    assert_non_null(strstr(b.p, "\"trigger\":{\"type\":\"timer\""));
    assert_non_null(strstr(b.p, "\"armed_by\":\"s2\""));
    td_buf_free(&b);
    /* firing twice is impossible: the timer is gone */
    assert_int_equal(td_engine_step(f->rs, &f->st, &due, due.due_at, f->tz, 0, f->out), TD_OK);
    assert_true(f->out->stale);
}

static void test_timer_no_fire_after_reply(void **state) {
    fx *f = *state;
    step_json(
        f, 0,
        "{\"id\":\"s1\",\"type\":\"email.sent\",\"prospect_id\":\"p-1\",\"occurred_at\":\"%s\"}",
        at(T0));
    step_json(f, 0,
              "{\"id\":\"r1\",\"type\":\"email.replied\",\"prospect_id\":\"p-1\","
              "\"occurred_at\":\"%s\",\"data\":{\"sentiment\":\"neutral\"}}",
              at(T0 + TD_HOUR));
    td_trigger due = {.kind = TD_TRIG_TIMER,
                      .rule = "silence.nudge",
                      .due_at = T0 + 72 * TD_HOUR,
                      .armed_by = "s1"};
    assert_int_equal(
        td_engine_step(f->rs, &f->st, &due, due.due_at, f->tz, TD_STEP_OUTCOMES, f->out), TD_OK);
    assert_false(f->out->stale);
    assert_int_equal(f->out->nrecs, 0);
    assert_int_equal(find_decision(f->out, "silence.nudge")->outcome, TD_OUT_NOT_MATCHED);
}

/* The engine's now is the trigger's time, per prospect never backwards: a
 * late event is applied to the counters but evaluated at the prospect's
 * clock; the wall-clock argument is not read for a trigger. */
static void test_event_time_clock(void **state) {
    fx *f = *state;
    send_two_and_open(f, "");
    assert_int_equal(f->st.clock, T0 + TD_DAY);
    /* an open dated before the last send: counted, evaluated at the clock */
    static td_event ev;
    td_event_error err;
    char json[256];
    snprintf(json, sizeof json,
             "{\"id\":\"o-late\",\"type\":\"email.opened\",\"prospect_id\":\"p-1\","
             "\"occurred_at\":\"%s\"}",
             at(T0 + TD_HOUR));
    assert_int_equal(td_event_decode(json, strlen(json), &ev, &err), TD_OK);
    td_trigger trig = {.kind = TD_TRIG_EVENT, .ev = &ev};
    /* a "now" far in the future is ignored for a trigger */
    assert_int_equal(td_engine_step(f->rs, &f->st, &trig, T0 + 400 * TD_DAY, f->tz, 0, f->out),
                     TD_OK);
    assert_int_equal(f->st.ch[TD_CH_EMAIL].opened, 1);
    assert_int_equal(f->st.clock, T0 + TD_DAY);
    assert_int_equal(f->out->nrecs, 1); /* pivot.linkedin (no whatsapp consent) */
    /* "at = now" of pivot.linkedin: the clock, in business hours (09:00 Tuesday) */
    assert_int_equal(f->out->recs[0].not_before, T0 + TD_DAY);
    assert_int_equal(td_state_fired_at(&f->st, f->out->recs[0].rule->id), T0 + TD_DAY);
    /* a timer due later moves the clock to its due time */
    const td_timer *t = td_state_timer(&f->st, "silence.nudge");
    assert_non_null(t);
    td_trigger due = {
        .kind = TD_TRIG_TIMER, .rule = "silence.nudge", .due_at = t->due_at, .armed_by = "s2"};
    assert_int_equal(td_engine_step(f->rs, &f->st, &due, 0, f->tz, 0, f->out), TD_OK);
    assert_false(f->out->stale);
    assert_int_equal(f->st.clock, T0 + TD_DAY + 72 * TD_HOUR);
    /* the clock survives the flat form */
    td_state back;
    td_state_init(&back, "p-1");
    char e[64];
    assert_int_equal(td_state_set_field(&back, "clock", 5, "2026-11-06T09:00:00Z", 20, e, sizeof e),
                     TD_OK);
    assert_int_equal(back.clock, f->st.clock);
    td_state_free(&back);
}

/* A prospect's first outbound touch derives owner.prospect_contacted for its
 * owner; later touches derive nothing; the derived id is stable. */
static void test_owner_event_derived(void **state) {
    fx *f = *state;
    td_step_out *o = step_json(f, 0,
                               "{\"id\":\"u1\",\"type\":\"prospect.updated\",\"prospect_id\":\"p-"
                               "1\",\"owner_id\":\"rep-7\","
                               "\"occurred_at\":\"%s\"}",
                               at(T0 - TD_HOUR));
    assert_false(o->has_derived); /* not a touch */
    o = step_json(
        f, 0,
        "{\"id\":\"s1\",\"type\":\"email.sent\",\"prospect_id\":\"p-1\",\"occurred_at\":\"%s\"}",
        at(T0));
    assert_true(o->has_derived);
    assert_int_equal(o->derived.type, TD_EV_OWNER_PROSPECT_CONTACTED);
    assert_string_equal(o->derived.prospect_id, "owner:rep-7");
    assert_string_equal(o->derived.owner_id, "rep-7");
    assert_string_equal(o->derived.id, "s1#owner");
    assert_int_equal(o->derived.occurred_at, T0);
    o = step_json(
        f, 0,
        "{\"id\":\"s2\",\"type\":\"email.sent\",\"prospect_id\":\"p-1\",\"occurred_at\":\"%s\"}",
        at(T0 + TD_DAY));
    assert_false(o->has_derived);
    /* applied to an owner state, it counts a contact (touches.1d) */
    td_state owner;
    td_state_init(&owner, "owner:rep-7");
    td_event d;
    memset(&d, 0, sizeof d);
    td_event_error err;
    const char *js = "{\"id\":\"s1#owner\",\"type\":\"owner.prospect_contacted\","
                     "\"prospect_id\":\"owner:rep-7\",\"owner_id\":\"rep-7\","
                     "\"occurred_at\":\"2026-11-02T09:00:00Z\"}";
    assert_int_equal(td_event_decode(js, strlen(js), &d, &err), TD_OK);
    td_trigger trig = {.kind = TD_TRIG_EVENT, .ev = &d};
    assert_int_equal(td_engine_step(f->rs, &owner, &trig, T0, f->tz, 0, f->out), TD_OK);
    assert_false(f->out->has_derived); /* owner events derive nothing */
    assert_int_equal(td_state_touches_within(&owner, T0, TD_DAY), 1);
    assert_int_equal(owner.first_touch_at, T0);
    td_state_free(&owner);
}

/* The probe is the step: on a copy of the state it leaves the same state
 * and recommendations, and reports each rule's decision; its "now" changes
 * nothing and considers every rule as a timer trigger would. */
static void test_probe(void **state) {
    fx *f = *state;
    send_two_and_open(f, "");
    const char *js = "{\"id\":\"o1\",\"type\":\"email.opened\",\"prospect_id\":\"p-1\","
                     "\"occurred_at\":\"2026-11-04T09:00:00Z\"}";
    td_event ev;
    td_event_error err;
    assert_int_equal(td_event_decode(js, strlen(js), &ev, &err), TD_OK);
    td_trigger trig = {.kind = TD_TRIG_EVENT, .ev = &ev};
    td_state copy;
    assert_int_equal(td_state_copy(&copy, &f->st), TD_OK);
    size_t nr = td_ruleset_count(f->rs);
    td_probe p = {.rules = calloc(nr, sizeof *p.rules), .nrules = nr};
    td_step_out *po = td_step_out_new();
    assert_int_equal(td_engine_probe(f->rs, &copy, &trig, ev.occurred_at, f->tz, &p, po), TD_OK);
    td_step_out *o = step_json(f, TD_STEP_OUTCOMES, "%s", js);
    assert_true(td_state_equal(&copy, &f->st));
    assert_int_equal(po->nrecs, o->nrecs);
    for (uint32_t i = 0; i < o->nrecs; i++) {
        assert_string_equal(po->recs[i].id, o->recs[i].id);
        assert_int_equal(po->recs[i].not_before, o->recs[i].not_before);
    }
    for (uint32_t i = 0; i < o->ndecisions; i++) {
        const td_decision *d = &o->decisions[i];
        const td_probe_rule *pr = &p.rules[d->rule->index];
        assert_true(pr->decided);
        assert_int_equal(pr->d.outcome, d->outcome);
        assert_ptr_equal(pr->d.by, d->by);
    }
    const td_rule *wa = td_ruleset_find(f->rs, "pivot.whatsapp");
    const td_rule *reply = td_ruleset_find(f->rs, "reply.human");
    const td_rule *guard = td_ruleset_find(f->rs, "guard.consent");
    assert_true(p.rules[wa->index].triggered);
    assert_int_equal(p.rules[wa->index].d.outcome, TD_OUT_BLOCKED);
    assert_int_equal(p.rules[wa->index].ngb, 2); /* the guard's conditions for it */
    assert_true(p.rules[wa->index].not_before != TD_MS_MISSING);
    assert_int_equal(p.rules[wa->index].d.nbecause, 3);
    assert_false(p.rules[reply->index].triggered);
    assert_false(p.rules[reply->index].decided);
    assert_int_equal(p.rules[guard->index].nblocked, 1);
    assert_ptr_equal(p.rules[guard->index].blocked[0], wa);
    assert_int_equal(p.ncandidates, 2);
    /* "now": nothing changes; every rule is evaluated (event.* missing) */
    td_state before;
    assert_int_equal(td_state_copy(&before, &copy), TD_OK);
    assert_int_equal(td_engine_probe(f->rs, &copy, NULL, ev.occurred_at + TD_DAY, f->tz, &p, po),
                     TD_OK);
    assert_true(td_state_equal(&before, &copy));
    assert_true(p.rules[reply->index].triggered);
    assert_int_equal(p.rules[reply->index].d.outcome, TD_OUT_NOT_MATCHED);
    assert_int_equal(p.rules[wa->index].d.outcome, TD_OUT_BLOCKED);
    const td_rule *li = td_ruleset_find(f->rs, "pivot.linkedin");
    assert_int_equal(p.rules[li->index].d.outcome, TD_OUT_FIRED);
    p.nrules = nr - 1; /* not the ruleset's */
    assert_int_equal(td_engine_probe(f->rs, &copy, NULL, ev.occurred_at, f->tz, &p, po), TD_ERR);
    td_state_free(&before);
    td_state_free(&copy);
    free(p.rules);
    td_step_out_free(po);
}

int main(void) {
    T0 = td_civil_to_ms(2026, 11, 2, 9, 0, 0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_group_guard_fallback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_step_shortcuts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shared_armed_by_and_fixed_guard, setup, teardown),
        cmocka_unit_test_setup_teardown(test_group_priority_and_cooldown, setup, teardown),
        cmocka_unit_test_setup_teardown(test_duplicate_event, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deterministic_ids_and_json, setup, teardown),
        cmocka_unit_test_setup_teardown(test_out_of_office_is_not_a_reply, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timer_no_fire_after_reply, setup, teardown),
        cmocka_unit_test_setup_teardown(test_event_time_clock, setup, teardown),
        cmocka_unit_test_setup_teardown(test_owner_event_derived, setup, teardown),
        cmocka_unit_test_setup_teardown(test_probe, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
