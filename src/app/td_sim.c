/*
 * td_sim.c - one prospect on a virtual clock (see td_sim.h): the engine
 * driven like the daemon drives it, with timers fired when the clock passes
 * their due time. Used by `touchd test` and `touchd explain`.
 *
 * @locality main thread.
 */
#include "td_sim.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "td_calendar_load.h"

int td_sim_init(td_sim *s, const td_ruleset *rs, td_tzdb *tz, const char *prospect_id,
                const td_state *init, td_ms clock, unsigned flags) {
    memset(s, 0, sizeof *s);
    s->rs = rs;
    s->tz = tz;
    s->clock = clock;
    s->flags = flags;
    s->out = malloc(sizeof *s->out);
    if (!s->out) return TD_ERR;
    if (init) {
        if (td_state_copy(&s->st, init) != TD_OK) {
            td_state_free(&s->st);
            free(s->out);
            s->out = NULL;
            return TD_ERR;
        }
    } else {
        td_state_init(&s->st, prospect_id);
    }
    return TD_OK;
}

void td_sim_free(td_sim *s) {
    if (!s) return;
    td_state_free(&s->st);
    for (size_t i = 0; i < s->nothers; i++) {
        td_state_free(s->others[i]);
        free(s->others[i]);
    }
    free(s->others);
    s->others = NULL;
    s->nothers = s->capothers = 0;
    free(s->out);
    free(s->dout);
    s->out = s->dout = NULL;
}

td_state *td_sim_state(td_sim *s, const char *id, bool create) {
    if (strcmp(s->st.prospect_id, id) == 0) return &s->st;
    for (size_t i = 0; i < s->nothers; i++)
        if (strcmp(s->others[i]->prospect_id, id) == 0) return s->others[i];
    if (!create) return NULL;
    if (s->nothers == s->capothers) {
        size_t cap = s->capothers ? s->capothers * 2 : 4;
        td_state **v = realloc(s->others, cap * sizeof *v);
        if (!v) return NULL;
        s->others = v;
        s->capothers = cap;
    }
    td_state *st = malloc(sizeof *st);
    if (!st) return NULL;
    td_state_init(st, id);
    s->others[s->nothers++] = st;
    return st;
}

/* Steps one trigger on st, tells the callback, then steps the event it
 * derives (if any) on its state. */
static int step(td_sim *s, td_state *st, const td_trigger *trig, unsigned flags, td_step_out *out) {
    if (td_engine_step(s->rs, st, trig, s->clock, s->tz, flags, out) != TD_OK) return TD_ERR;
    s->steps++;
    if (trig->kind == TD_TRIG_EVENT && out->duplicate) s->duplicates++;
    if (out->duplicate || out->stale) return TD_OK;
    if (s->fn) s->fn(s->ud, s, st, trig, out);
    if (!out->has_derived) return TD_OK;
    if (!s->dout && !(s->dout = malloc(sizeof *s->dout))) return TD_ERR;
    td_event d = out->derived; /* dout may be `out` (a derived event deriving) */
    td_state *ost = td_sim_state(s, d.prospect_id, true);
    if (!ost) return TD_ERR;
    s->derived++;
    td_trigger dt = {.kind = TD_TRIG_EVENT, .ev = &d};
    return step(s, ost, &dt, s->flags, s->dout);
}

int td_sim_fire_due(td_sim *s, td_ms t) {
    for (;;) {
        /* the earliest pending timer of any state (each table is sorted by
         * rule id, so the first of equal due times is the smallest rule id) */
        const td_timer *next = NULL;
        td_state *nst = NULL;
        for (size_t k = 0; k <= s->nothers; k++) {
            td_state *st = k == 0 ? &s->st : s->others[k - 1];
            for (uint32_t i = 0; i < st->ntimers; i++) {
                const td_timer *x = &st->timers[i];
                if (x->due_at <= t && (!next || x->due_at < next->due_at)) {
                    next = x;
                    nst = st;
                }
            }
        }
        if (!next) return TD_OK;
        /* the step disarms the timer: copy what the trigger points to */
        char rule[TD_RULE_ID_MAX + 1], armed_by[TD_ID_MAX + 1];
        td_strlcpy(rule, next->rule, sizeof rule);
        td_strlcpy(armed_by, next->armed_by, sizeof armed_by);
        td_ms due = next->due_at;
        if (s->clock == TD_MS_MISSING || due > s->clock) s->clock = due;
        td_trigger trig = {
            .kind = TD_TRIG_TIMER, .rule = rule, .due_at = due, .armed_by = armed_by};
        if (step(s, nst, &trig, s->flags, s->out) != TD_OK) return TD_ERR;
        const td_timer *left = td_state_timer(nst, rule);
        if (left && left->due_at == due) {
            /* a stale trigger leaves the timer in place: drop it so the loop ends */
            td_state_disarm_timer(nst, rule);
        }
        s->timers_fired++;
    }
}

int td_sim_advance(td_sim *s, td_ms t) {
    if (td_sim_fire_due(s, t) != TD_OK) return TD_ERR;
    if (s->clock == TD_MS_MISSING || t > s->clock) s->clock = t;
    return TD_OK;
}

int td_sim_event(td_sim *s, const td_event *ev, unsigned flags) {
    if (td_sim_fire_due(s, ev->occurred_at) != TD_OK) return TD_ERR;
    if (s->clock == TD_MS_MISSING || ev->occurred_at > s->clock) s->clock = ev->occurred_at;
    td_trigger trig = {.kind = TD_TRIG_EVENT, .ev = ev};
    td_state *st = td_sim_state(s, ev->prospect_id, false);
    if (!st) st = &s->st; /* the prospect's own events */
    return step(s, st, &trig, flags ? flags : s->flags, s->out);
}

int td_sim_load_calendar(const char *dir, struct td_calendar **cal, const char **used, char *err,
                         size_t errcap) {
    struct stat sb;
    *cal = NULL;
    *used = NULL;
    if (!dir && stat("config/holidays", &sb) == 0 && S_ISDIR(sb.st_mode)) dir = "config/holidays";
    if (!dir) return TD_OK;
    char cerr[256];
    *cal = td_calendar_load_dir(dir, cerr, sizeof cerr);
    if (!*cal) {
        snprintf(err, errcap, "holidays: %s", cerr);
        return TD_ERR;
    }
    *used = dir;
    return TD_OK;
}
