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
    free(s->out);
    s->out = NULL;
}

static void notify(td_sim *s, const td_trigger *trig) {
    s->steps++;
    if (s->fn && !s->out->duplicate && !s->out->stale) s->fn(s->ud, s, trig, s->out);
}

int td_sim_fire_due(td_sim *s, td_ms t) {
    for (;;) {
        /* the earliest pending timer (the table is sorted by rule id, so the
         * first of equal due times is the smallest rule id) */
        const td_timer *next = NULL;
        for (uint32_t i = 0; i < s->st.ntimers; i++) {
            const td_timer *x = &s->st.timers[i];
            if (x->due_at <= t && (!next || x->due_at < next->due_at)) next = x;
        }
        if (!next) return TD_OK;
        /* the step disarms the timer: copy what the trigger points to */
        char rule[TD_RULE_ID_MAX + 1], armed_by[TD_ID_MAX + 1];
        td_strlcpy(rule, next->rule, sizeof rule);
        td_strlcpy(armed_by, next->armed_by, sizeof armed_by);
        td_ms due = next->due_at;
        if (s->clock == TD_MS_MISSING || due > s->clock) s->clock = due;
        td_trigger trig = {.kind = TD_TRIG_TIMER, .rule = rule, .due_at = due,
                           .armed_by = armed_by};
        if (td_engine_step(s->rs, &s->st, &trig, s->clock, s->tz, s->flags, s->out) != TD_OK)
            return TD_ERR;
        if (td_state_timer(&s->st, rule) && td_state_timer(&s->st, rule)->due_at == due) {
            /* a stale trigger leaves the timer in place: drop it so the loop ends */
            td_state_disarm_timer(&s->st, rule);
        }
        s->timers_fired++;
        notify(s, &trig);
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
    if (td_engine_step(s->rs, &s->st, &trig, s->clock, s->tz, flags ? flags : s->flags, s->out) !=
        TD_OK)
        return TD_ERR;
    if (s->out->duplicate) s->duplicates++;
    notify(s, &trig);
    return TD_OK;
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
