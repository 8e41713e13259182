/*
 * fuzz_expr.c - libFuzzer target for the rules expression language.
 *
 * Compiles the input as an expression with every scope allowed and any
 * result type; when it compiles, evaluates it (and each of its conjuncts)
 * against a populated state, with facts recording on, and renders the result
 * as JSON. Properties checked: no crash, no sanitizer report, no leak; a
 * failed compile has at least one diagnostic, each inside the source; an
 * evaluation error leaves a message.
 *
 * Seeds: tests/fuzz/corpus/fuzz_expr/. Run: see docs/testing.md.
 *
 * @locality libFuzzer's thread.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "td_expr.h"
#include "td_time.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static td_state g_st;
static td_settings g_set;
static td_tzdb *g_tz;
static td_event g_ev;
static td_rec_view g_rec;

static void populate(void) {
    td_state_init(&g_st, "p-fuzz");
    td_settings_default(&g_set);
    g_tz = td_tzdb_new();
    td_ms now = 1795342500000; /* 2026-11-22T10:15:00Z */
    td_chan_state *em = &g_st.ch[TD_CH_EMAIL];
    em->sent = 3;
    em->opened = 2;
    em->unanswered = 2;
    em->opens_since_reply = 1;
    em->last_sent_at = now - 80 * TD_HOUR;
    em->last_opened_at = now - 2 * TD_HOUR;
    em->consent = TD_TRI_YES;
    g_st.ch[TD_CH_SMS].blocked = TD_BLOCK_OPTED_OUT;
    g_st.tier = 2;
    g_st.lifetime_value_eur = 125000;
    strcpy(g_st.sector, "saas");
    strcpy(g_st.country, "FR");
    strcpy(g_st.timezone, "Europe/Paris");
    g_st.stage = TD_STAGE_ENGAGED;
    g_st.first_seen_at = now - 30 * TD_DAY;
    g_st.last_touch_at = now - 80 * TD_HOUR;
    for (int i = 0; i < 5; i++)
        g_st.touch_ring[i] = now - (i + 1) * 20 * TD_HOUR;
    g_st.touch_count = 5;
    g_st.touch_head = 5;
    g_st.hour_hist[10] = 4;
    g_st.hour_hist[14] = 6;
    g_st.hour_hist[2] = 1;
    memset(&g_ev, 0, sizeof g_ev);
    g_ev.type = TD_EV_EMAIL_OPENED;
    g_ev.channel = TD_CH_EMAIL;
    g_ev.occurred_at = now;
    g_ev.has = TD_HAS_KIND | TD_HAS_HUMAN;
    strcpy(g_ev.id, "e-1");
    strcpy(g_ev.prospect_id, "p-fuzz");
    strcpy(g_ev.kind, "follow_up");
    g_ev.human = true;
    g_rec.channel = TD_CH_WHATSAPP;
    g_rec.touch = "micro_question";
    g_rec.rule = "ghosting.pivot-channel";
    g_rec.group = "follow-up";
    g_rec.priority = 80;
    g_rec.not_before = now + TD_HOUR;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!g_tz) populate();
    td_expr_diags d = {0};
    td_expr *e =
        td_expr_compile((const char *)data, size, TD_FIELD_EVENT | TD_FIELD_GUARD, TD_T_NONE, &d);
    if (!e) {
        if (d.n == 0) abort(); /* a failed compile must say why */
        for (size_t i = 0; i < d.n; i++)
            if (d.v[i].offset > size || d.v[i].length == 0 || !d.v[i].code[0]) abort();
        td_expr_diags_free(&d);
        return 0;
    }
    if (d.n) abort(); /* a success has no diagnostics */
    td_facts fx = {.n = 0};
    td_ctx ctx = {.st = &g_st,
                  .ev = &g_ev,
                  .now = g_ev.occurred_at,
                  .rec = &g_rec,
                  .tz = g_tz,
                  .settings = &g_set,
                  .facts = &fx};
    td_value v;
    char err[160], json[256];
    if (td_expr_eval(e, &ctx, &v, err, sizeof err) == TD_OK) {
        if (v.type != td_expr_type(e)) abort();
        td_value_json(&v, json, sizeof json);
    } else if (!err[0]) {
        abort();
    }
    if (fx.n > TD_FACTS_MAX) abort();
    /* a timer trigger: no event, no rec; facts off */
    ctx.ev = NULL;
    ctx.rec = NULL;
    ctx.facts = NULL;
    td_expr_eval(e, &ctx, &v, err, sizeof err);
    for (size_t i = 0; i < td_expr_conjuncts(e); i++) {
        size_t len;
        const char *s = td_expr_conjunct_source(e, i, &len);
        size_t srclen;
        const char *src = td_expr_source(e, &srclen);
        if (s < src || s + len > src + srclen) abort();
        if (td_expr_eval_conjunct(e, i, &ctx, &v, err, sizeof err) == TD_OK)
            td_value_json(&v, json, sizeof json);
    }
    td_expr_free(e);
    return 0;
}
