/*
 * td_prom.h - the Prometheus text exposition format (version 0.0.4, what
 * every Prometheus scrapes) and fixed-bucket histograms.
 *
 * A histogram (td_hist) is a plain value: a few bucket bounds, a count per
 * bucket, the sum and the count, with no pointer inside, so the daemon can
 * copy one into a snapshot with an assignment and the HTTP thread can render
 * the copy (docs/operations.md, "Metrics"). Bounds are in base units
 * (seconds), ascending; the +Inf bucket is implicit.
 *
 * The writer appends to a td_buf: one family header (# HELP, # TYPE) per
 * metric, then its samples. Label values are escaped as the format says
 * (backslash, double quote, newline); metric and label names are the
 * caller's constants and must match [a-zA-Z_:][a-zA-Z0-9_:]* (asserted).
 * Floating-point values are written with enough digits to read back
 * exactly ("%.15g", or "%.17g" when needed;
 * "+Inf", "NaN").
 *
 * @locality any thread; a td_hist or td_buf is used by one thread at a time.
 */
#ifndef TD_PROM_H
#define TD_PROM_H

#include <stddef.h>
#include <stdint.h>

#include "td_base.h"

#define TD_HIST_MAX 16 /* bounds of one histogram at most */

typedef struct td_hist {
    uint32_t n;                       /* bounds in le */
    double le[TD_HIST_MAX];           /* upper bounds, ascending (seconds) */
    uint64_t bucket[TD_HIST_MAX + 1]; /* per bucket, not cumulative; [n]: above the last bound */
    uint64_t count;
    double sum;
} td_hist;

/* Buckets for durations of a batch phase: 0.5 ms to 10 s. */
extern const double td_hist_phase_le[];
extern const size_t td_hist_phase_n;
/* Buckets for latencies (end to end, timer firing delays): 5 ms to 5 min. */
extern const double td_hist_latency_le[];
extern const size_t td_hist_latency_n;

/* Empties h and sets its bounds (n <= TD_HIST_MAX, ascending: asserted). */
void td_hist_init(td_hist *h, const double *le, size_t n);
/* Counts one observation v (a value equal to a bound goes in its bucket, as
 * Prometheus' "le" says). */
void td_hist_observe(td_hist *h, double v);
/* Counts `count` observations of the same value (a bucket of another
 * histogram), adding sum to the sum. */
void td_hist_observe_n(td_hist *h, double v, uint64_t count, double sum);

/* One label of a sample: name=value. */
typedef struct td_prom_label {
    const char *name;
    const char *value;
} td_prom_label;

/* The family header: "# HELP name help" and "# TYPE name type" (type:
 * "counter", "gauge", "histogram", "untyped"). @returns TD_OK or TD_ERR
 * (out of memory), as every writer below. */
int td_prom_family(td_buf *b, const char *name, const char *type, const char *help);
/* One sample "name{labels} value" (nl labels, may be 0). */
int td_prom_sample(td_buf *b, const char *name, const td_prom_label *lv, size_t nl, double value);
/* A sample of an integer counter or gauge (exact beyond 2^53). */
int td_prom_sample_u64(td_buf *b, const char *name, const td_prom_label *lv, size_t nl,
                       uint64_t value);
/* Header and one unlabelled sample. */
int td_prom_counter(td_buf *b, const char *name, const char *help, uint64_t value);
int td_prom_gauge(td_buf *b, const char *name, const char *help, double value);
/* The samples of one histogram: name_bucket{labels,le="..."} (cumulative,
 * +Inf last), name_sum, name_count. The family header is the caller's (one
 * per family, before its first labelled histogram). */
int td_prom_hist(td_buf *b, const char *name, const td_prom_label *lv, size_t nl, const td_hist *h);

/* Appends a label value escaped for the exposition format. */
int td_prom_escape(td_buf *b, const char *s);

#endif
