/*
 * td_sim.c - the one offline driver (see td_sim.h): the engine driven like
 * the daemon drives it, over an in-memory store of states, with one virtual
 * clock and one timer heap for all of them. Used by `touchd replay`,
 * `touchd test` and `touchd explain`.
 *
 * File-local functions are prefixed sim_: sim_map_* (the store), sim_heap_*
 * (the timers), sim_step (one engine step and what follows it).
 *
 * @locality main thread.
 */
#include "td_sim.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "td_calendar_load.h"

/* ---- the store: open addressing on td_hash64(prospect_id) ---- */

static size_t sim_slot_of(const char *id, size_t cap) {
    return td_hash64(id, strlen(id), TD_HASH_SEED) & (cap - 1);
}

/* Doubles the table (1024 slots at first), keeping the states. */
static int sim_map_grow(td_sim *s) {
    size_t cap = s->cap ? s->cap * 2 : 1024;
    td_sim_entry *v = calloc(cap, sizeof *v);
    if (!v) return TD_ERR;
    for (size_t i = 0; i < s->cap; i++) {
        if (!s->slots[i].st) continue;
        size_t h = sim_slot_of(s->slots[i].st->prospect_id, cap);
        while (v[h].st)
            h = (h + 1) & (cap - 1);
        v[h] = s->slots[i];
    }
    free(s->slots);
    s->slots = v;
    s->cap = cap;
    return TD_OK;
}

/* The slot of id, or the free slot where it would go (s->cap > 0). */
static td_sim_entry *sim_map_find(const td_sim *s, const char *id) {
    size_t h = sim_slot_of(id, s->cap);
    while (s->slots[h].st) {
        if (strcmp(s->slots[h].st->prospect_id, id) == 0) break;
        h = (h + 1) & (s->cap - 1);
    }
    return &s->slots[h];
}

td_sim_entry *td_sim_entry_get(td_sim *s, const char *id, bool create) {
    /* a lookup that may create keeps the table at most half full */
    if (create && (s->nstates + 1) * 2 > s->cap && sim_map_grow(s) != TD_OK) return NULL;
    if (!s->cap) return NULL;
    td_sim_entry *e = sim_map_find(s, id);
    if (e->st || !create) return e->st ? e : NULL;
    td_state *st = malloc(sizeof *st);
    if (!st) return NULL;
    td_state_init(st, id);
    e->st = st;
    e->mark = 0;
    s->nstates++;
    return e;
}

td_state *td_sim_state(td_sim *s, const char *id, bool create) {
    td_sim_entry *e = td_sim_entry_get(s, id, create);
    return e ? e->st : NULL;
}

td_sim_entry *td_sim_next(const td_sim *s, size_t *it) {
    while (*it < s->cap) {
        td_sim_entry *e = &s->slots[(*it)++];
        if (e->st) return e;
    }
    return NULL;
}

/* ---- the timers: a min-heap in due order (sim_timer_less) ---- */

/* Due order; ties in arming order, or (one-prospect shape, as `test` has
 * always fired them) the main state's first, then by rule id. */
static bool sim_timer_less(const td_sim *s, const td_sim_timer *a, const td_sim_timer *b) {
    if (a->due_at != b->due_at) return a->due_at < b->due_at;
    if (s->main) {
        bool am = a->st == s->main, bm = b->st == s->main;
        if (am != bm) return am;
        int c = strcmp(a->rule, b->rule);
        if (c) return c < 0;
    }
    return a->seq < b->seq;
}

static int sim_heap_push(td_sim *s, td_ms due, td_state *st, const char *rule,
                         const char *armed_by) {
    if (td_grow(&s->heap, &s->capheap, s->nheap, sizeof *s->heap, 256) != TD_OK) return TD_ERR;
    td_sim_timer t = {.due_at = due, .seq = s->seq++, .st = st};
    td_strlcpy(t.rule, rule, sizeof t.rule);
    td_strlcpy(t.armed_by, armed_by, sizeof t.armed_by);
    size_t i = s->nheap++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!sim_timer_less(s, &t, &s->heap[p])) break;
        s->heap[i] = s->heap[p];
        i = p;
    }
    s->heap[i] = t;
    return TD_OK;
}

static void sim_heap_pop(td_sim *s, td_sim_timer *out) {
    td_sim_timer *h = s->heap;
    *out = h[0];
    td_sim_timer last = h[--s->nheap];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const td_sim_timer *best = &last;
        if (l < s->nheap && sim_timer_less(s, &h[l], best)) {
            m = l;
            best = &h[l];
        }
        if (r < s->nheap && sim_timer_less(s, &h[r], best)) m = r;
        if (m == i) break;
        h[i] = h[m];
        i = m;
    }
    if (s->nheap) h[i] = last;
}

/* ---- the driver ---- */

int td_sim_init(td_sim *s, const td_ruleset *rs, td_tzdb *tz, const char *prospect_id,
                const td_state *init, td_ms clock, unsigned flags) {
    memset(s, 0, sizeof *s);
    s->rs = rs;
    s->tz = tz;
    s->clock = clock;
    s->flags = flags;
    s->out = td_step_out_new();
    if (!s->out) return TD_ERR;
    if (!init && !prospect_id) return TD_OK;
    td_sim_entry *e = td_sim_entry_get(s, init ? init->prospect_id : prospect_id, true);
    if (!e) goto oom;
    s->main = e->st;
    if (init) {
        td_state_free(s->main);
        if (td_state_copy(s->main, init) != TD_OK) goto oom;
        /* its pending timers, as armed before anything else (rule id order) */
        for (uint32_t i = 0; i < s->main->ntimers; i++) {
            const td_timer *t = &s->main->timers[i];
            if (sim_heap_push(s, t->due_at, s->main, t->rule, t->armed_by) != TD_OK) goto oom;
        }
    }
    return TD_OK;
oom:
    td_sim_free(s);
    return TD_ERR;
}

void td_sim_free(td_sim *s) {
    if (!s) return;
    for (size_t i = 0; i < s->cap; i++) {
        if (!s->slots[i].st) continue;
        td_state_free(s->slots[i].st);
        free(s->slots[i].st);
    }
    free(s->slots);
    free(s->heap);
    td_step_out_free(s->out);
    td_step_out_free(s->dout);
    s->slots = NULL;
    s->heap = NULL;
    s->out = s->dout = NULL;
    s->main = NULL;
    s->cap = s->nstates = s->nheap = s->capheap = 0;
}

/* Steps one trigger on st at the clock (with the sim's wall clock), tells
 * the callback, puts the timers it arms on the clock, then steps the event
 * it derives (if any) on its state. */
static int sim_step(td_sim *s, td_state *st, const td_trigger *given, unsigned flags,
                    td_step_out *out) {
    td_trigger t = *given;
    t.wall = s->wall;
    const td_trigger *trig = &t;
    if (td_engine_step(s->rs, st, trig, s->clock, s->tz, flags, out) != TD_OK) return TD_ERR;
    s->steps++;
    if (trig->kind == TD_TRIG_EVENT && out->duplicate) s->duplicates++;
    if (out->rejected) s->rejected++; /* the caller reports it (out->reject_*) */
    if (out->duplicate || out->stale || out->rejected) return TD_OK;
    if (s->fn) s->fn(s->ud, s, st, trig, out);
    for (uint32_t i = 0; i < out->narms; i++)
        if (sim_heap_push(s, out->arms[i].due_at, st, out->arms[i].rule_id,
                          out->arms[i].armed_by) != TD_OK)
            return TD_ERR;
    if (!out->has_derived) return TD_OK;
    if (!s->dout && !(s->dout = td_step_out_new())) return TD_ERR;
    td_event d = out->derived; /* dout may be `out` (a derived event deriving) */
    td_state *ost = td_sim_state(s, d.prospect_id, true);
    if (!ost) return TD_ERR;
    s->derived++;
    td_trigger dt = {.kind = TD_TRIG_EVENT, .ev = &d};
    return sim_step(s, ost, &dt, s->flags, s->dout);
}

int td_sim_fire_due(td_sim *s, td_ms t) {
    while (s->nheap && s->heap[0].due_at <= t) {
        td_sim_timer x;
        sim_heap_pop(s, &x);
        if (s->clock == TD_MS_MISSING || x.due_at > s->clock) s->clock = x.due_at;
        td_trigger trig = {
            .kind = TD_TRIG_TIMER, .rule = x.rule, .due_at = x.due_at, .armed_by = x.armed_by};
        if (sim_step(s, x.st, &trig, s->flags, s->out) != TD_OK) return TD_ERR;
        if (s->out->stale)
            s->timers_stale++;
        else
            s->timers_fired++;
    }
    return TD_OK;
}

int td_sim_advance(td_sim *s, td_ms t) {
    if (td_sim_fire_due(s, t) != TD_OK) return TD_ERR;
    if (s->clock == TD_MS_MISSING || t > s->clock) s->clock = t;
    return TD_OK;
}

td_state *td_sim_prepare(td_sim *s, const td_event *ev) {
    if (td_sim_fire_due(s, ev->occurred_at) != TD_OK) return NULL;
    if (s->clock == TD_MS_MISSING || ev->occurred_at > s->clock) s->clock = ev->occurred_at;
    /* one-prospect shape: the main state takes the events of unknown ids */
    td_state *st = td_sim_state(s, ev->prospect_id, !s->main);
    return st ? st : s->main;
}

int td_sim_event(td_sim *s, const td_event *ev, unsigned flags) {
    td_state *st = td_sim_prepare(s, ev);
    if (!st) return TD_ERR;
    td_trigger trig = {.kind = TD_TRIG_EVENT, .ev = ev};
    return sim_step(s, st, &trig, flags ? flags : s->flags, s->out);
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
