/*
 * td_testfile.h - the rules' own test files (`*.test`, libconfig), parsed and
 * checked against a compiled ruleset into plain data the runner executes.
 * The format is documented in docs/rules-testing.md.
 *
 * Everything a case needs is resolved at parse time: relative times ("+2d"
 * from the case's start), default event ids, prospect and occurred_at (the
 * case's virtual clock is known statically: it only moves with events and
 * `advance`), events decoded and validated, rule and guard ids looked up,
 * the starting state built. So every mistake in a test file is reported, as
 * file:line, before any case runs, and running a case cannot fail on input.
 *
 * @locality main thread.
 */
#ifndef TD_TESTFILE_H
#define TD_TESTFILE_H

#include <stdio.h>

#include "td_engine.h"

/* An expected recommendation: `rule`, and optionally channel, touch,
 * not_before (and, for a pending one of the plan, expires_at). */
typedef struct tf_rec_exp {
    const td_rule *rule;
    td_channel channel; /* TD_CH_NONE: any */
    char *touch;        /* NULL: any */
    td_ms not_before;   /* TD_MS_MISSING: any */
    td_ms expires_at;   /* TD_MS_MISSING: any (only in expect_plan) */
    int line;
} tf_rec_exp;

/* An expected withdrawal: a pending recommendation of `rule` withdrawn for
 * `reason`. */
typedef struct tf_wd_exp {
    const td_rule *rule;
    int reason; /* a td_wd_reason; -1: any */
    int line;
} tf_wd_exp;

/* An expectation on the prospect's plan (expect_plan, expect_plan_empty):
 * exactly these pending recommendations, in plan order (soonest not_before
 * first). */
typedef struct tf_plan_exp {
    bool check; /* given */
    tf_rec_exp *v;
    size_t n;
    int line;
} tf_plan_exp;

/* An expected decision: `rule` had `outcome` (by `by`, until `until` when set). */
typedef struct tf_out_exp {
    const td_rule *rule;
    td_outcome outcome;
    const td_rule *by; /* NULL: any */
    td_ms until;       /* TD_MS_MISSING: any */
    int line;
} tf_out_exp;

typedef struct tf_step {
    int line;
    td_event *events; /* decoded, in order */
    size_t nevents;
    td_ms advance_to; /* TD_MS_MISSING when the step does not advance the clock */
    bool check_recs;  /* `expect` or `expect_none` given: the recommendations must equal recs */
    tf_rec_exp *recs;
    size_t nrecs;
    tf_out_exp *outs; /* expect_blocked, expect_outcome, expect_not */
    size_t nouts;
    const td_rule **nots; /* expect_not: rules that must not fire */
    size_t nnots;
    bool check_wds; /* `expect_withdrawn` or `expect_no_withdrawal` given: the
                     * withdrawals must equal wds */
    tf_wd_exp *wds;
    size_t nwds;
    tf_plan_exp plan; /* the plan after the step */
} tf_step;

typedef struct tf_case {
    char *name;
    int line;
    td_ms start;
    td_state init;   /* the starting state (owned) */
    td_event *setup; /* applied before the steps; not checked */
    size_t nsetup;
    tf_step *steps;
    size_t nsteps;
    tf_plan_exp plan; /* the case's `expect_plan`: the plan after the last step */
} tf_case;

/* A case that has problems: its name and its "path:line: error: ..." lines. */
typedef struct tf_broken {
    char *name;
    char *errors;
} tf_broken;

typedef struct tf_file {
    char *path;
    tf_case *cases;
    size_t ncases;
    tf_broken *broken; /* the cases left out because of a problem */
    size_t nbroken;
    size_t errors;      /* problems found while parsing */
    size_t file_errors; /* of which outside any case (or the file is unreadable) */
    char *file_text;    /* those, one "path:line: error: ..." line each (or NULL) */
} tf_file;

/*
 * Parses the test file at `path` against `rs`. Every problem is recorded as
 * "path:line: error: what; how to fix" (in f->broken[].errors for a case, in
 * f->file_text outside cases), also printed on `diag` when not NULL, and
 * counted in f->errors; a case with a problem is left out of f->cases, the
 * other cases are kept.
 * `filter`, when not NULL, keeps only cases whose name contains it.
 * @returns TD_OK, or TD_ERR when the file cannot be read or is not valid
 * libconfig (reported too; f->errors >= 1). Free with tf_file_free either way.
 */
int tf_file_parse(tf_file *f, const char *path, const td_ruleset *rs, const char *filter,
                  td_tzdb *tz, FILE *diag);
void tf_file_free(tf_file *f);

/*
 * The extra rules a test file declares (top-level `extra_rules = "..."`,
 * inline rules text, or `extra_rules_file = "path"`, relative to the test
 * file's directory): rules compiled with the ruleset under test for this file
 * only, e.g. a deliberately naive rule that a guard of the ruleset must
 * block. On success *text is malloc'd (or NULL when the file declares none)
 * and *name is the name diagnostics show (malloc'd).
 * @returns TD_OK, or TD_ERR with err set ("path:line: error: ...").
 */
int tf_file_extra_rules(const char *path, char **text, size_t *len, char **name, char *err,
                        size_t errcap);

/* The start time of a case without `start`: 2026-01-05T09:00:00Z, a Monday. */
#define TF_DEFAULT_START ((td_ms)1767603600000LL)
#define TF_DEFAULT_PROSPECT "p-test"

#endif
