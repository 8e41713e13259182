/*
 * td_shadow.c - the shadow ruleset (td_shadow.h; docs/operations.md,
 * "Shadow ruleset").
 *
 * Isolation from the live path, point by point:
 *   - state: the shadow steps a deep copy (td_state_copy) taken before the
 *     live step; the copy is overwritten by the next step and never written;
 *   - output: a producer of its own (own queue, own delivery reports); a full
 *     queue drops the shadow recommendation (counted), a failed delivery is
 *     counted, never retried, and nothing of it enters the live rounds;
 *   - rules: a shadow ruleset that does not compile is logged and not run;
 *     the live ruleset and its reloads are untouched;
 *   - errors: out of memory or a failing engine step in the shadow is counted
 *     and the step skipped (the live step already happened).
 *
 * Withdrawals: the copy holds the live plan (the live ruleset's pending
 * recommendations), so the shadow step withdraws from the same plan the
 * live step does; the two are compared by withdrawn recommendation id
 * (agree: same id, same reason; differ: same id, another reason; live_only,
 * shadow_only), counted under the withdrawn recommendation's rule, and the
 * shadow's go to the shadow topic next to its recommendations. Each shadow
 * message carries the header `touchd-kind` (recommendation, withdrawal), as
 * on the output topic.
 *
 * Counts are per (live ruleset, shadow ruleset) pair: they restart (and
 * `since` moves) when either hash changes, so a report always compares two
 * named rulesets. A live recompute after a compare-and-set conflict steps the
 * recomputed events again, so they count twice (rare; see the docs).
 *
 * @locality the daemon's main thread (the producer's delivery-report
 * callback runs on it too, from rd_kafka_poll).
 */
#include "td_shadow.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "td_cli.h"
#include "td_clock.h"
#include "td_log.h"
#include "td_time.h"

/* Per rule id (of either ruleset). */
typedef struct td_shadow_rc {
    char rule[TD_RULE_ID_MAX + 1];
    uint64_t agree, differ, live_only, shadow_only;
    /* withdrawals of this rule's recommendations, compared the same way */
    uint64_t wd_agree, wd_differ, wd_live_only, wd_shadow_only;
} td_shadow_rc;

struct td_shadow {
    const td_config *cfg;
    td_tzdb *tz; /* borrowed from the daemon */

    td_ruleset *rs;       /* NULL: nothing runs */
    td_rules_watch watch; /* rules.shadow_dir, polled and settled like rules.dir */
    char last_error[200]; /* why the last compile failed ("" when it did not) */

    td_state copy;
    bool have_copy;
    td_step_out *out;
    td_buf buf;

    rd_kafka_t *producer;
    rd_kafka_topic_t *rkt;

    /* the compared pair and since when */
    char live_hash[96];
    char shadow_hash[96];
    td_ms since;

    /* counters of the current pair */
    uint64_t steps, events, timers, duplicates, live_recs, shadow_recs, shadow_errors,
        step_failures;
    uint64_t agree, differ, live_only, shadow_only;
    uint64_t live_wds, shadow_wds, wd_agree, wd_differ, wd_live_only, wd_shadow_only;
    td_shadow_rc *rc; /* sorted by rule id */
    size_t nrc, caprc;
    /* since start */
    uint64_t sent, acked, failed, dropped, reloads, reload_failures;

    int64_t next_report, next_log;
};

/* ----------------------------------------------------------------- rules */

static void sh_reset_counts(td_shadow *sh, const char *live_hash) {
    if (live_hash != sh->live_hash) /* may be sh->live_hash itself: keep it */
        td_strlcpy(sh->live_hash, live_hash ? live_hash : "", sizeof sh->live_hash);
    snprintf(sh->shadow_hash, sizeof sh->shadow_hash, "%s", sh->rs ? td_ruleset_hash(sh->rs) : "");
    sh->since = td_wall_ms();
    sh->steps = sh->events = sh->timers = sh->duplicates = sh->live_recs = sh->shadow_recs = 0;
    sh->shadow_errors = sh->step_failures = 0;
    sh->agree = sh->differ = sh->live_only = sh->shadow_only = 0;
    sh->live_wds = sh->shadow_wds = 0;
    sh->wd_agree = sh->wd_differ = sh->wd_live_only = sh->wd_shadow_only = 0;
    sh->nrc = 0;
}

static void sh_compile(td_shadow *sh, const char *why) {
    const char *dir = sh->cfg->rules.shadow_dir;
    td_rules_watch_compiling(&sh->watch);
    td_diags dg = {0};
    const char *paths[1] = {dir};
    td_ruleset *rs = td_load_rules(paths, 1, &dg);
    char q1[600], q2[600];
    for (size_t i = 0; i < dg.n; i++) {
        const td_diag *x = &dg.v[i];
        td_log(x->severity == TD_SEV_ERROR ? TD_LOG_ERROR : TD_LOG_WARN, "shadow rules diagnostic",
               "file=%s line=%d col=%d code=%s text=%s source=%s", x->file ? x->file : "-", x->line,
               x->col, x->code, td_log_quote(q1, sizeof q1, x->msg ? x->msg : ""),
               td_log_quote(q2, sizeof q2, x->source ? x->source : ""));
    }
    if (!rs) {
        sh->reload_failures++;
        snprintf(sh->last_error, sizeof sh->last_error, "%zu errors, %zu warnings in %s", dg.errors,
                 dg.warnings, dir);
        td_log_error(sh->rs ? "shadow rules rejected, previous shadow keeps running"
                            : "shadow rules rejected, no shadow runs",
                     "dir=%s trigger=%s errors=%zu warnings=%zu shadow_ruleset=%s", dir, why,
                     dg.errors, dg.warnings, sh->rs ? td_ruleset_hash(sh->rs) : "none");
        td_diags_free(&dg);
        return;
    }
    td_diags_free(&dg);
    sh->last_error[0] = '\0';
    const char *old = sh->rs ? td_ruleset_hash(sh->rs) : "none";
    bool changed = strcmp(old, td_ruleset_hash(rs)) != 0;
    td_log_info("shadow ruleset active",
                "shadow_ruleset=%s rules=%zu dir=%s previous=%s changed=%s", td_ruleset_hash(rs),
                td_ruleset_count(rs), dir, old, changed ? "true" : "false");
    td_ruleset_free(sh->rs);
    sh->rs = rs;
    sh->reloads++;
    if (changed) sh_reset_counts(sh, sh->live_hash);
}

void td_shadow_reload(td_shadow *sh, const char *why) {
    if (!sh) return;
    td_log_info("reloading shadow rules", "dir=%s trigger=%s", sh->cfg->rules.shadow_dir, why);
    sh_compile(sh, why);
}

const char *td_shadow_hash(const td_shadow *sh) {
    return sh && sh->rs ? td_ruleset_hash(sh->rs) : NULL;
}

/* -------------------------------------------------------------- producer */

static void sh_dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    (void)rk;
    td_shadow *sh = opaque;
    if (m->err) {
        sh->failed++;
        if (sh->failed == 1 || sh->failed % 1000 == 0)
            td_log_warn("shadow delivery failed", "topic=%s err=%s failed=%llu",
                        sh->cfg->kafka.shadow_topic, rd_kafka_err2name(m->err),
                        (unsigned long long)sh->failed);
    } else {
        sh->acked++;
    }
}

static void sh_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
    (void)rk;
    char q[600];
    td_log(level <= 3   ? TD_LOG_ERROR
           : level <= 4 ? TD_LOG_WARN
                        : TD_LOG_DEBUG,
           "librdkafka", "client=shadow fac=%s detail=%s", fac, td_log_quote(q, sizeof q, buf));
}

static bool sh_set(rd_kafka_conf_t *c, const char *k, const char *v) {
    char e[256];
    if (rd_kafka_conf_set(c, k, v, e, sizeof e) != RD_KAFKA_CONF_OK) {
        td_log_error("shadow producer property rejected", "property=%s reason=%s", k, e);
        return false;
    }
    return true;
}

static bool sh_producer_new(td_shadow *sh, const char *bootstraps) {
    const td_config *cfg = sh->cfg;
    rd_kafka_conf_t *pc = rd_kafka_conf_new();
    bool ok = sh_set(pc, "bootstrap.servers", bootstraps) &&
              sh_set(pc, "client.id", "touchd-shadow") && sh_set(pc, "linger.ms", "5") &&
              sh_set(pc, "socket.nagle.disable", "true");
    /* the live producer's passthrough (security, timeouts...) applies too */
    for (size_t i = 0; ok && i < cfg->kafka.n_producer; i++)
        ok = sh_set(pc, cfg->kafka.producer[i].key, cfg->kafka.producer[i].val);
    if (!ok) {
        rd_kafka_conf_destroy(pc);
        return false;
    }
    rd_kafka_conf_set_opaque(pc, sh);
    rd_kafka_conf_set_dr_msg_cb(pc, sh_dr_cb);
    rd_kafka_conf_set_log_cb(pc, sh_log_cb);
    char e[512];
    sh->producer = rd_kafka_new(RD_KAFKA_PRODUCER, pc, e, sizeof e);
    if (!sh->producer) {
        rd_kafka_conf_destroy(pc);
        char q[600];
        td_log_error("shadow producer failed, shadow recommendations are not published",
                     "reason=%s", td_log_quote(q, sizeof q, e));
        return false;
    }
    sh->rkt = rd_kafka_topic_new(sh->producer, cfg->kafka.shadow_topic, NULL);
    return sh->rkt != NULL;
}

/* One message (kind: "recommendation" or "withdrawal", its touchd-kind
 * header) on the shadow topic, key = prospect id. */
static void sh_send(td_shadow *sh, const char *pid, const char *kind, const char *json,
                    size_t len) {
    if (!sh->rkt) {
        sh->dropped++;
        return;
    }
    rd_kafka_resp_err_t err = rd_kafka_producev(
        sh->producer, RD_KAFKA_V_RKT(sh->rkt), RD_KAFKA_V_PARTITION(RD_KAFKA_PARTITION_UA),
        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_VALUE((void *)json, len),
        RD_KAFKA_V_KEY(pid, strlen(pid)), RD_KAFKA_V_HEADER("touchd-kind", kind, -1),
        RD_KAFKA_V_END);
    if (err) {
        /* queue full or similar: the shadow never waits (live must not) */
        sh->dropped++;
        if (sh->dropped == 1 || sh->dropped % 1000 == 0)
            td_log_warn("shadow recommendation dropped", "kind=%s reason=%s dropped=%llu", kind,
                        rd_kafka_err2name(err), (unsigned long long)sh->dropped);
        return;
    }
    sh->sent++;
}

/* ------------------------------------------------------------ life cycle */

td_shadow *td_shadow_new(const td_config *cfg, const char *bootstraps, td_tzdb *tz) {
    if (!cfg->rules.shadow_dir || !*cfg->rules.shadow_dir) return NULL;
    td_shadow *sh = calloc(1, sizeof *sh);
    td_step_out *out = td_step_out_new();
    if (!sh || !out) {
        free(sh);
        td_step_out_free(out);
        td_log_error("shadow disabled: out of memory", NULL);
        return NULL;
    }
    sh->cfg = cfg;
    sh->tz = tz;
    sh->out = out;
    int64_t now = td_mono_ms();
    td_rules_watch_init(&sh->watch, cfg->rules.shadow_dir, cfg->rules.reload_poll_ms,
                        cfg->rules.settle_ms, now);
    sh_compile(sh, "start");
    sh_reset_counts(sh, "");
    sh_producer_new(sh, bootstraps);
    sh->next_report = now; /* a first report at once: ops see the shadow is on */
    sh->next_log = now + 60000;
    td_log_info("shadow ruleset configured",
                "dir=%s topic=%s report=%s report_interval_ms=%d shadow_ruleset=%s",
                cfg->rules.shadow_dir, cfg->kafka.shadow_topic,
                *cfg->rules.shadow_report ? cfg->rules.shadow_report : "none",
                cfg->rules.shadow_report_interval_ms, sh->rs ? td_ruleset_hash(sh->rs) : "none");
    return sh;
}

static void sh_write_report(td_shadow *sh);
static void sh_log_counts(td_shadow *sh);

void td_shadow_free(td_shadow *sh) {
    if (!sh) return;
    if (sh->producer) {
        rd_kafka_flush(sh->producer, 2000);
        rd_kafka_poll(sh->producer, 0);
    }
    sh_write_report(sh);
    sh_log_counts(sh);
    if (sh->rkt) rd_kafka_topic_destroy(sh->rkt);
    if (sh->producer) rd_kafka_destroy(sh->producer);
    if (sh->have_copy) td_state_free(&sh->copy);
    td_ruleset_free(sh->rs);
    td_buf_free(&sh->buf);
    free(sh->rc);
    td_step_out_free(sh->out);
    free(sh);
}

/* ------------------------------------------------------------------ step */

void td_shadow_before(td_shadow *sh, const td_state *st) {
    if (sh->have_copy) {
        td_state_free(&sh->copy);
        sh->have_copy = false;
    }
    if (!sh->rs) return;
    if (td_state_copy(&sh->copy, st) != TD_OK) {
        td_state_free(&sh->copy);
        sh->step_failures++;
        return;
    }
    sh->have_copy = true;
}

/* The counters of rule id (inserted in order when absent); NULL on OOM. */
static td_shadow_rc *sh_rc(td_shadow *sh, const char *id) {
    size_t lo = 0, hi = sh->nrc;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(sh->rc[mid].rule, id);
        if (c == 0) return &sh->rc[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (td_grow(&sh->rc, &sh->caprc, sh->nrc, sizeof *sh->rc, 64) != TD_OK) return NULL;
    memmove(&sh->rc[lo + 1], &sh->rc[lo], (sh->nrc - lo) * sizeof *sh->rc);
    memset(&sh->rc[lo], 0, sizeof *sh->rc);
    td_strlcpy(sh->rc[lo].rule, id, sizeof sh->rc[lo].rule);
    sh->nrc++;
    return &sh->rc[lo];
}

static bool sh_same_rec(const td_rec *a, const td_rec *b) {
    return a->channel == b->channel && strcmp(a->touch, b->touch) == 0 &&
           a->not_before == b->not_before;
}

static void sh_compare(td_shadow *sh, const td_step_out *live, const td_step_out *shadow) {
    for (uint32_t i = 0; i < live->nrecs; i++) {
        const td_rec *l = &live->recs[i];
        const td_rec *s = NULL;
        for (uint32_t k = 0; k < shadow->nrecs && !s; k++)
            if (strcmp(shadow->recs[k].rule->id, l->rule->id) == 0) s = &shadow->recs[k];
        td_shadow_rc *c = sh_rc(sh, l->rule->id);
        if (!s) {
            sh->live_only++;
            if (c) c->live_only++;
        } else if (sh_same_rec(l, s)) {
            sh->agree++;
            if (c) c->agree++;
        } else {
            sh->differ++;
            if (c) c->differ++;
        }
    }
    for (uint32_t k = 0; k < shadow->nrecs; k++) {
        const td_rec *s = &shadow->recs[k];
        bool in_live = false;
        for (uint32_t i = 0; i < live->nrecs && !in_live; i++)
            in_live = strcmp(live->recs[i].rule->id, s->rule->id) == 0;
        if (in_live) continue;
        sh->shadow_only++;
        td_shadow_rc *c = sh_rc(sh, s->rule->id);
        if (c) c->shadow_only++;
    }
}

/* The withdrawals of the two steps, by withdrawn recommendation id: both
 * steps withdraw from the same (live) plan. */
static void sh_compare_wds(td_shadow *sh, const td_step_out *live, const td_step_out *shadow) {
    for (uint32_t i = 0; i < live->nwds; i++) {
        const td_wd *l = &live->wds[i];
        const td_wd *s = NULL;
        for (uint32_t k = 0; k < shadow->nwds && !s; k++)
            if (strcmp(shadow->wds[k].withdraws, l->withdraws) == 0) s = &shadow->wds[k];
        td_shadow_rc *c = sh_rc(sh, l->rule);
        if (!s) {
            sh->wd_live_only++;
            if (c) c->wd_live_only++;
        } else if (s->reason == l->reason) {
            sh->wd_agree++;
            if (c) c->wd_agree++;
        } else {
            sh->wd_differ++;
            if (c) c->wd_differ++;
        }
    }
    for (uint32_t k = 0; k < shadow->nwds; k++) {
        const td_wd *s = &shadow->wds[k];
        bool in_live = false;
        for (uint32_t i = 0; i < live->nwds && !in_live; i++)
            in_live = strcmp(live->wds[i].withdraws, s->withdraws) == 0;
        if (in_live) continue;
        sh->wd_shadow_only++;
        td_shadow_rc *c = sh_rc(sh, s->rule);
        if (c) c->wd_shadow_only++;
    }
}

void td_shadow_after(td_shadow *sh, const td_ruleset *live_rs, const td_trigger *trig, td_ms now,
                     const td_step_out *live_out) {
    if (!sh->have_copy) return;
    const char *lh = td_ruleset_hash(live_rs);
    if (strcmp(lh, sh->live_hash) != 0) {
        if (sh->live_hash[0])
            td_log_info("shadow comparison restarts: live ruleset changed",
                        "live_ruleset=%s shadow_ruleset=%s", lh, sh->shadow_hash);
        sh_reset_counts(sh, lh);
    }
    td_state *st = &sh->copy;
    /* the live late policy: the shadow judges lateness as live does */
    unsigned flags = sh->cfg->time.late_policy == TD_LATE_PUBLISH ? TD_STEP_LATE_PUBLISH
                     : sh->cfg->time.late_policy == TD_LATE_DROP  ? TD_STEP_LATE_DROP
                                                                  : 0;
    if (td_engine_step(sh->rs, st, trig, now, sh->tz, flags, sh->out) != TD_OK) {
        sh->step_failures++;
        goto done;
    }
    if (sh->out->duplicate || live_out->duplicate) {
        sh->duplicates++;
        goto done;
    }
    sh->steps++;
    if (trig->kind == TD_TRIG_TIMER)
        sh->timers++;
    else
        sh->events++;
    sh->live_recs += live_out->nrecs;
    sh->shadow_recs += sh->out->nrecs;
    sh->live_wds += live_out->nwds;
    sh->shadow_wds += sh->out->nwds;
    sh->shadow_errors += sh->out->nerrors;
    sh_compare(sh, live_out, sh->out);
    sh_compare_wds(sh, live_out, sh->out);
    /* what the shadow would have published: its withdrawals, then its
     * recommendations (but those its late policy drops) */
    for (uint32_t w = 0; w < sh->out->nwds; w++) {
        const td_wd *x = &sh->out->wds[w];
        sh->buf.len = 0;
        if (td_body_json(x->body, x->body_len, now, &sh->buf) != TD_OK) {
            sh->step_failures++;
            continue;
        }
        sh_send(sh, st->prospect_id, "withdrawal", sh->buf.p, sh->buf.len);
    }
    for (uint32_t r = 0; r < sh->out->nrecs; r++) {
        if (sh->out->recs[r].dropped) continue;
        sh->buf.len = 0;
        if (td_rec_json(&sh->out->recs[r], st, sh->rs, trig, now, &sh->buf) != TD_OK) {
            sh->step_failures++;
            continue;
        }
        sh_send(sh, st->prospect_id, "recommendation", sh->buf.p, sh->buf.len);
    }
done:
    td_state_free(&sh->copy);
    sh->have_copy = false;
}

/* ---------------------------------------------------------- report, logs */

static json_t *sh_time_json(td_ms t) {
    char tb[TD_TIME_BUF];
    td_time_format(t, tb, sizeof tb);
    return json_string(tb);
}

static void sh_write_report(td_shadow *sh) {
    const char *path = sh->cfg->rules.shadow_report;
    if (!path || !*path) return;
    json_t *root = json_object();
    json_object_set_new(root, "generated_at", sh_time_json(td_wall_ms()));
    json_object_set_new(root, "since", sh_time_json(sh->since));
    json_object_set_new(root, "live_ruleset",
                        sh->live_hash[0] ? json_string(sh->live_hash) : json_null());
    json_object_set_new(root, "shadow_ruleset",
                        sh->rs ? json_string(td_ruleset_hash(sh->rs)) : json_null());
    json_object_set_new(root, "shadow_dir", json_string(sh->cfg->rules.shadow_dir));
    json_object_set_new(root, "shadow_topic", json_string(sh->cfg->kafka.shadow_topic));
    json_object_set_new(root, "status", json_string(sh->rs ? "running" : "not_running"));
    json_object_set_new(root, "last_reload_error",
                        sh->last_error[0] ? json_string(sh->last_error) : json_null());
    json_object_set_new(root, "steps",
                        json_pack("{s:I,s:I,s:I,s:I,s:I}", "compared", (json_int_t)sh->steps,
                                  "events", (json_int_t)sh->events, "timers",
                                  (json_int_t)sh->timers, "duplicates", (json_int_t)sh->duplicates,
                                  "failed", (json_int_t)sh->step_failures));
    json_object_set_new(
        root, "recommendations",
        json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "live", (json_int_t)sh->live_recs, "shadow",
                  (json_int_t)sh->shadow_recs, "shadow_sent", (json_int_t)sh->sent, "shadow_acked",
                  (json_int_t)sh->acked, "shadow_failed", (json_int_t)sh->failed, "shadow_dropped",
                  (json_int_t)sh->dropped, "shadow_rule_errors", (json_int_t)sh->shadow_errors));
    json_object_set_new(root, "totals",
                        json_pack("{s:I,s:I,s:I,s:I}", "agree", (json_int_t)sh->agree, "differ",
                                  (json_int_t)sh->differ, "live_only", (json_int_t)sh->live_only,
                                  "shadow_only", (json_int_t)sh->shadow_only));
    json_object_set_new(root, "withdrawals",
                        json_pack("{s:I,s:I,s:I,s:I,s:I,s:I}", "live", (json_int_t)sh->live_wds,
                                  "shadow", (json_int_t)sh->shadow_wds, "agree",
                                  (json_int_t)sh->wd_agree, "differ", (json_int_t)sh->wd_differ,
                                  "live_only", (json_int_t)sh->wd_live_only, "shadow_only",
                                  (json_int_t)sh->wd_shadow_only));
    json_t *rules = json_array();
    for (size_t i = 0; i < sh->nrc; i++) {
        const td_shadow_rc *c = &sh->rc[i];
        bool wds = c->wd_agree | c->wd_differ | c->wd_live_only | c->wd_shadow_only;
        if (!(c->agree | c->differ | c->live_only | c->shadow_only) && !wds) continue;
        json_t *r = json_pack("{s:s,s:I,s:I,s:I,s:I}", "rule", c->rule, "agree",
                              (json_int_t)c->agree, "differ", (json_int_t)c->differ, "live_only",
                              (json_int_t)c->live_only, "shadow_only", (json_int_t)c->shadow_only);
        if (wds)
            json_object_set_new(r, "withdrawals",
                                json_pack("{s:I,s:I,s:I,s:I}", "agree", (json_int_t)c->wd_agree,
                                          "differ", (json_int_t)c->wd_differ, "live_only",
                                          (json_int_t)c->wd_live_only, "shadow_only",
                                          (json_int_t)c->wd_shadow_only));
        json_array_append_new(rules, r);
    }
    json_object_set_new(root, "rules", rules);
    size_t n = strlen(path) + 16;
    char *tmp = malloc(n);
    if (tmp) {
        snprintf(tmp, n, "%s.tmp", path);
        /* write then rename: a reader never sees a half-written report */
        if (json_dump_file(root, tmp, JSON_INDENT(2) | JSON_PRESERVE_ORDER) != 0 ||
            rename(tmp, path) != 0) {
            static uint64_t failures;
            if (failures++ % 100 == 0) {
                char q[600];
                td_log_warn("shadow report not written", "file=%s reason=%s", path,
                            td_log_quote(q, sizeof q, strerror(errno)));
            }
            remove(tmp);
        }
        free(tmp);
    }
    json_decref(root);
}

static void sh_log_counts(td_shadow *sh) {
    td_log_info("shadow comparison",
                "live_ruleset=%s shadow_ruleset=%s steps=%llu agree=%llu differ=%llu "
                "live_only=%llu shadow_only=%llu live_recs=%llu shadow_recs=%llu "
                "live_wds=%llu shadow_wds=%llu wd_agree=%llu wd_differ=%llu wd_live_only=%llu "
                "wd_shadow_only=%llu shadow_sent=%llu shadow_acked=%llu shadow_failed=%llu "
                "shadow_dropped=%llu",
                sh->live_hash[0] ? sh->live_hash : "none",
                sh->rs ? td_ruleset_hash(sh->rs) : "none", (unsigned long long)sh->steps,
                (unsigned long long)sh->agree, (unsigned long long)sh->differ,
                (unsigned long long)sh->live_only, (unsigned long long)sh->shadow_only,
                (unsigned long long)sh->live_recs, (unsigned long long)sh->shadow_recs,
                (unsigned long long)sh->live_wds, (unsigned long long)sh->shadow_wds,
                (unsigned long long)sh->wd_agree, (unsigned long long)sh->wd_differ,
                (unsigned long long)sh->wd_live_only, (unsigned long long)sh->wd_shadow_only,
                (unsigned long long)sh->sent, (unsigned long long)sh->acked,
                (unsigned long long)sh->failed, (unsigned long long)sh->dropped);
    /* rules that disagree at info, rules that only agree at debug */
    for (size_t i = 0; i < sh->nrc; i++) {
        const td_shadow_rc *c = &sh->rc[i];
        bool diff = c->differ || c->live_only || c->shadow_only || c->wd_differ ||
                    c->wd_live_only || c->wd_shadow_only;
        if (!diff && !c->agree && !c->wd_agree) continue;
        td_log(diff ? TD_LOG_INFO : TD_LOG_DEBUG, "shadow rule",
               "rule=%s agree=%llu differ=%llu live_only=%llu shadow_only=%llu wd_agree=%llu "
               "wd_differ=%llu wd_live_only=%llu wd_shadow_only=%llu",
               c->rule, (unsigned long long)c->agree, (unsigned long long)c->differ,
               (unsigned long long)c->live_only, (unsigned long long)c->shadow_only,
               (unsigned long long)c->wd_agree, (unsigned long long)c->wd_differ,
               (unsigned long long)c->wd_live_only, (unsigned long long)c->wd_shadow_only);
    }
}

void td_shadow_tick(td_shadow *sh) {
    if (!sh) return;
    if (sh->producer) rd_kafka_poll(sh->producer, 0); /* delivery reports */
    int64_t now = td_mono_ms();
    if (td_rules_watch_poll(&sh->watch, now, td_wall_ms()) == TD_WATCH_RELOAD)
        td_shadow_reload(sh, "change");
    if (now >= sh->next_report) {
        sh->next_report = now + sh->cfg->rules.shadow_report_interval_ms;
        sh_write_report(sh);
    }
    if (now >= sh->next_log) {
        sh->next_log = now + 60000;
        sh_log_counts(sh);
    }
}
