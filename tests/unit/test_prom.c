/*
 * test_prom.c - the Prometheus exposition writer and histograms (td_prom.h),
 * and the daemon's whole /metrics page (td_obs.h) checked by the real
 * `promtool check metrics` (Debian package prometheus, in scripts/deps: a
 * missing promtool fails the test).
 *
 * Cases: bucket boundaries (a value equal to a bound is in its bucket, le
 * semantics), cumulative buckets with +Inf, _sum and _count; label value
 * escaping; float formatting; the /metrics page of td_obs with published
 * counters passes promtool with no lint problem, shows the values
 * published, keeps a rule's counts across a ruleset replacement by rule id,
 * and a publish costs little (printed: the per-turn cost of the snapshot).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "td_cli.h"
#include "td_clock.h"
#include "td_obs.h"
#include "td_prom.h"
#include "td_rules.h"

static void test_hist_buckets(void **state) {
    (void)state;
    td_hist h;
    const double le[] = {0.1, 1, 10};
    td_hist_init(&h, le, 3);
    td_hist_observe(&h, 0.05);
    td_hist_observe(&h, 0.1); /* on the bound: in le="0.1" */
    td_hist_observe(&h, 0.5);
    td_hist_observe(&h, 10);
    td_hist_observe(&h, 11); /* above every bound: +Inf only */
    assert_int_equal(h.bucket[0], 2);
    assert_int_equal(h.bucket[1], 1);
    assert_int_equal(h.bucket[2], 1);
    assert_int_equal(h.bucket[3], 1);
    assert_int_equal(h.count, 5);
    assert_true(h.sum > 21.64 && h.sum < 21.66);
    td_buf b = {0};
    td_prom_label l = {"phase", "load"};
    assert_int_equal(td_prom_hist(&b, "x_seconds", &l, 1, &h), TD_OK);
    assert_string_equal(b.p, "x_seconds_bucket{phase=\"load\",le=\"0.1\"} 2\n"
                             "x_seconds_bucket{phase=\"load\",le=\"1\"} 3\n"
                             "x_seconds_bucket{phase=\"load\",le=\"10\"} 4\n"
                             "x_seconds_bucket{phase=\"load\",le=\"+Inf\"} 5\n"
                             "x_seconds_sum{phase=\"load\"} 21.65\n"
                             "x_seconds_count{phase=\"load\"} 5\n");
    td_buf_free(&b);
    /* the shipped bucket sets are ascending and fit */
    td_hist_init(&h, td_hist_phase_le, td_hist_phase_n);
    td_hist_init(&h, td_hist_latency_le, td_hist_latency_n);
    assert_true(td_hist_phase_n <= TD_HIST_MAX && td_hist_latency_n <= TD_HIST_MAX);
}

static void test_escape_and_values(void **state) {
    (void)state;
    td_buf b = {0};
    td_prom_label l[2] = {{"rule", "a\"b\\c\nd"}, {"empty", ""}};
    assert_int_equal(td_prom_sample(&b, "m", l, 2, 0.0005), TD_OK);
    assert_int_equal(td_prom_sample_u64(&b, "n_total", NULL, 0, UINT64_MAX), TD_OK);
    assert_int_equal(td_prom_sample(&b, "g", NULL, 0, 1.0 / 3.0), TD_OK);
    assert_string_equal(b.p, "m{rule=\"a\\\"b\\\\c\\nd\",empty=\"\"} 0.0005\n"
                             "n_total 18446744073709551615\n"
                             "g 0.33333333333333331\n");
    td_buf_free(&b);
}

/* promtool check metrics on text: its output into out. @returns its exit
 * status (-1: cannot run). */
static int promtool(const char *text, char *out, size_t cap) {
    char path[] = "/tmp/test_prom_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fputs(text, f);
    fclose(f);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "promtool check metrics < %s 2>&1", path);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = '\0';
    int st = pclose(p);
    remove(path);
    return st == -1 ? -1 : WEXITSTATUS(st);
}

/* The value of the sample line that starts with `head` (name and labels). */
static double sample(const char *text, const char *head) {
    char want[400];
    snprintf(want, sizeof want, "\n%s ", head);
    const char *p = strstr(text, want);
    if (!p) fail_msg("no sample %s", head);
    return strtod(p + strlen(want), NULL);
}

static td_ruleset *load_rules(const char *dir) {
    td_diags dg = {0};
    const char *paths[1] = {dir};
    td_ruleset *rs = td_load_rules(paths, 1, &dg);
    td_diags_free(&dg);
    assert_non_null(rs);
    return rs;
}

static void test_metrics_page(void **state) {
    (void)state;
    const char *src = getenv("TD_SOURCE_DIR");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/rules", src && *src ? src : ".");
    td_ruleset *rs = load_rules(dir);
    size_t n = td_ruleset_count(rs);
    assert_true(n > 2);

    td_obs *o = td_obs_new();
    td_obs_set_ruleset(o, rs, 1700000000000, NULL, NULL);
    td_pipeline_stats ps = {0};
    ps.events = 12;
    ps.applied = 10;
    ps.duplicates = 1;
    ps.dead_letters = 1;
    ps.dead_by_class[TD_DLQ_TIME_BOUNDS] = 1;
    ps.wds_by_reason[TD_WDR_REPLIED] = 3;
    for (int k = 0; k < 2; k++)
        for (int ph = 0; ph < TD_PHASES; ph++)
            td_hist_init(&ps.phase[k][ph], td_hist_phase_le, td_hist_phase_n);
    td_hist_init(&ps.latency, td_hist_latency_le, td_hist_latency_n);
    td_hist_observe(&ps.phase[0][TD_PHASE_LOAD], 0.002);
    td_hist_observe(&ps.latency, 0.2);
    td_timers_stats ts = {0};
    td_hist_init(&ts.delay, td_hist_latency_le, td_hist_latency_n);
    td_kafka_stats ks = {.assigned = 2, .rebalances = 1};
    uint64_t *cnt = calloc(4 * n, sizeof *cnt);
    cnt[0] = 5;         /* rule 0 published 5 */
    cnt[2 * n + 1] = 2; /* rule 1's blocks (a guard or not) */
    td_obs_input in = {.ps = &ps,
                       .ks = &ks,
                       .ts = &ts,
                       .dm = {.reloads = 1},
                       .rules = {n, cnt, cnt + n, cnt + 2 * n, cnt + 3 * n}};
    assert_true(td_obs_publish(o, &in));
    td_kafka_lag lag = {.topic = "in", .partition = 3, .lag = 42};
    td_obs_publish_lags(o, &lag, 1);

    td_buf b = {0};
    assert_int_equal(td_obs_render_metrics(o, &b), TD_OK);
    char out[8192];
    int rc = promtool(b.p, out, sizeof out);
    if (rc != 0) fprintf(stderr, "promtool (%d): %s\n", rc, out);
    assert_int_equal(rc, 0);
    assert_string_equal(out, ""); /* no lint remark either */
    assert_true(sample(b.p, "touchd_events_applied_total") == 10);
    assert_true(sample(b.p, "touchd_events_dead_lettered_total{reason=\"time_bounds\"}") == 1);
    assert_true(sample(b.p, "touchd_withdrawals_published_total{reason=\"replied\"}") == 3);
    assert_true(sample(b.p, "touchd_consumer_lag_messages{topic=\"in\",partition=\"3\"}") == 42);
    assert_true(sample(b.p, "touchd_rules_reloads_total{result=\"success\"}") == 1);
    assert_true(
        sample(
            b.p,
            "touchd_batch_phase_seconds_bucket{source=\"events\",phase=\"load\",le=\"0.0025\"}") ==
        1);
    assert_true(sample(b.p, "touchd_event_latency_seconds_count") == 1);
    assert_true(sample(b.p, "touchd_ruleset_loaded_timestamp_seconds") == 1700000000);
    assert_true(sample(b.p, "touchd_partitions_assigned") == 2);
    char head[300];
    const td_rule *r0 = td_ruleset_rule(rs, 0);
    snprintf(head, sizeof head, "touchd_recommendations_published_total{rule=\"%s\"}", r0->id);
    assert_false(r0->guard);
    assert_true(sample(b.p, head) == 5);
    char info[200];
    snprintf(info, sizeof info, "touchd_ruleset_info{hash=\"%s\"}", td_ruleset_hash(rs));
    assert_true(sample(b.p, info) == 1);
    assert_true(sample(b.p, "process_open_fds") > 0);

    /* the same rules again (a reload): rule 0 keeps its 5, plus the new
     * ruleset's own counts */
    td_ruleset *rs2 = load_rules(dir);
    td_obs_set_ruleset(o, rs2, 1700000001000, rs, &in.rules);
    memset(cnt, 0, 4 * n * sizeof *cnt);
    cnt[0] = 1;
    assert_true(td_obs_publish(o, &in));
    b.len = 0;
    assert_int_equal(td_obs_render_metrics(o, &b), TD_OK);
    assert_true(sample(b.p, head) == 6);
    assert_int_equal(promtool(b.p, out, sizeof out), 0);
    printf("metrics page: %zu bytes, %zu rules\n", b.len, n);

    /* the per-turn cost of a publish (printed, not asserted: a figure) */
    int64_t t0 = td_mono_us();
    for (int i = 0; i < 100000; i++)
        td_obs_publish(o, &in);
    printf("td_obs_publish: %.3f us per call (%zu rules)\n", (double)(td_mono_us() - t0) / 100000.0,
           n);
    td_buf_free(&b);
    free(cnt);
    td_obs_free(o);
    td_ruleset_free(rs);
    td_ruleset_free(rs2);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hist_buckets),
        cmocka_unit_test(test_escape_and_values),
        cmocka_unit_test(test_metrics_page),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
