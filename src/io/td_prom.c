/*
 * td_prom.c - the Prometheus text exposition writer and td_hist (td_prom.h).
 *
 * The format (https://prometheus.io/docs/instrumenting/exposition_formats/):
 * one line per sample, `name{label="value",...} value`, after the family's
 * `# HELP` and `# TYPE` lines; a histogram's buckets are cumulative and end
 * with le="+Inf", followed by _sum and _count. promtool check metrics reads
 * what this writes (tests/unit/test_prom.c).
 *
 * File-local names start with pr_.
 *
 * @locality any thread (no state).
 */
#include "td_prom.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const double td_hist_phase_le[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                   0.1,    0.25,  0.5,    1,     2.5,  5,     10};
const size_t td_hist_phase_n = sizeof td_hist_phase_le / sizeof td_hist_phase_le[0];
const double td_hist_latency_le[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                     2.5,   5,    10,    30,   60,  120,  300};
const size_t td_hist_latency_n = sizeof td_hist_latency_le / sizeof td_hist_latency_le[0];

void td_hist_init(td_hist *h, const double *le, size_t n) {
    assert(n <= TD_HIST_MAX);
    memset(h, 0, sizeof *h);
    h->n = (uint32_t)n;
    for (size_t i = 0; i < n; i++) {
        assert(i == 0 || le[i] > le[i - 1]);
        h->le[i] = le[i];
    }
}

void td_hist_observe_n(td_hist *h, double v, uint64_t count, double sum) {
    uint32_t i = 0;
    while (i < h->n && v > h->le[i])
        i++;
    h->bucket[i] += count;
    h->count += count;
    h->sum += sum;
}

void td_hist_observe(td_hist *h, double v) { td_hist_observe_n(h, v, 1, v); }

#ifndef NDEBUG
static int pr_name_ok(const char *s) {
    if (!s || !*s) return 0;
    for (const char *p = s; *p; p++) {
        char c = *p;
        int alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
        if (!alpha && !(p > s && c >= '0' && c <= '9')) return 0;
    }
    return 1;
}
#endif

int td_prom_escape(td_buf *b, const char *s) {
    size_t run = 0;
    const char *start = s;
    for (const char *p = s; *p; p++) {
        const char *rep = *p == '\\' ? "\\\\" : *p == '"' ? "\\\"" : *p == '\n' ? "\\n" : NULL;
        if (!rep) {
            run++;
            continue;
        }
        if (td_buf_append(b, start, run) != TD_OK || td_buf_append(b, rep, 2) != TD_OK)
            return TD_ERR;
        start = p + 1;
        run = 0;
    }
    return td_buf_append(b, start, run);
}

int td_prom_family(td_buf *b, const char *name, const char *type, const char *help) {
    assert(pr_name_ok(name));
    /* HELP text escapes backslash and newline; ours are constants without */
    return td_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* name{l1="v1",...,extra="xv"} (extra may be NULL) */
static int pr_head(td_buf *b, const char *name, const char *suffix, const td_prom_label *lv,
                   size_t nl, const char *extra, const char *xv) {
    if (td_buf_printf(b, "%s%s", name, suffix) != TD_OK) return TD_ERR;
    if (nl == 0 && !extra) return TD_OK;
    if (td_buf_append(b, "{", 1) != TD_OK) return TD_ERR;
    for (size_t i = 0; i < nl; i++) {
        assert(pr_name_ok(lv[i].name));
        if (td_buf_printf(b, "%s%s=\"", i ? "," : "", lv[i].name) != TD_OK ||
            td_prom_escape(b, lv[i].value ? lv[i].value : "") != TD_OK ||
            td_buf_append(b, "\"", 1) != TD_OK)
            return TD_ERR;
    }
    if (extra && td_buf_printf(b, "%s%s=\"%s\"", nl ? "," : "", extra, xv) != TD_OK) return TD_ERR;
    return td_buf_append(b, "}", 1);
}

/* a float as the format reads it */
static const char *pr_float(double v, char *buf, size_t cap) {
    if (isnan(v)) return "NaN";
    if (isinf(v)) return v > 0 ? "+Inf" : "-Inf";
    /* the shortest of 15 or 17 digits that reads back as v */
    snprintf(buf, cap, "%.15g", v);
    if (strtod(buf, NULL) != v) snprintf(buf, cap, "%.17g", v);
    return buf;
}

int td_prom_sample(td_buf *b, const char *name, const td_prom_label *lv, size_t nl, double value) {
    char f[40];
    if (pr_head(b, name, "", lv, nl, NULL, NULL) != TD_OK) return TD_ERR;
    return td_buf_printf(b, " %s\n", pr_float(value, f, sizeof f));
}

int td_prom_sample_u64(td_buf *b, const char *name, const td_prom_label *lv, size_t nl,
                       uint64_t value) {
    if (pr_head(b, name, "", lv, nl, NULL, NULL) != TD_OK) return TD_ERR;
    return td_buf_printf(b, " %llu\n", (unsigned long long)value);
}

int td_prom_counter(td_buf *b, const char *name, const char *help, uint64_t value) {
    if (td_prom_family(b, name, "counter", help) != TD_OK) return TD_ERR;
    return td_prom_sample_u64(b, name, NULL, 0, value);
}

int td_prom_gauge(td_buf *b, const char *name, const char *help, double value) {
    if (td_prom_family(b, name, "gauge", help) != TD_OK) return TD_ERR;
    return td_prom_sample(b, name, NULL, 0, value);
}

int td_prom_hist(td_buf *b, const char *name, const td_prom_label *lv, size_t nl,
                 const td_hist *h) {
    uint64_t cum = 0;
    char f[40];
    for (uint32_t i = 0; i <= h->n; i++) {
        cum += h->bucket[i];
        const char *le = i < h->n ? pr_float(h->le[i], f, sizeof f) : "+Inf";
        if (pr_head(b, name, "_bucket", lv, nl, "le", le) != TD_OK ||
            td_buf_printf(b, " %llu\n", (unsigned long long)cum) != TD_OK)
            return TD_ERR;
    }
    if (pr_head(b, name, "_sum", lv, nl, NULL, NULL) != TD_OK ||
        td_buf_printf(b, " %s\n", pr_float(h->sum, f, sizeof f)) != TD_OK ||
        pr_head(b, name, "_count", lv, nl, NULL, NULL) != TD_OK ||
        td_buf_printf(b, " %llu\n", (unsigned long long)h->count) != TD_OK)
        return TD_ERR;
    return TD_OK;
}
