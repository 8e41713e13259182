/*
 * td_cmd_explain.c - `touchd explain`: why each rule did or did not fire for
 * one prospect, at one trigger.
 *
 * Offline mode: the prospect's state comes from an event history (JSON lines,
 * only that prospect's events are applied, through the real engine on a
 * virtual clock, timers included: td_sim, the driver of replay and test) or
 * from a state file (the flat form of docs/state.md). Then one trigger is
 * stepped by the engine's probe (td_engine_probe: the step's own code, with
 * every rule's decision reported), and this file only prints the report:
 *
 *   --at EVENT_ID   that event of the history (default: the last one); the
 *                   history after it is not applied;
 *   --event JSON    a hypothetical event after the history ("what if");
 *   --now TIME      a "now" evaluation: the timers due by TIME fire, then
 *                   every rule is evaluated against the final state as a
 *                   timer trigger would evaluate it (event.* missing, guards
 *                   that judge timer triggers).
 *
 * For each rule: fired / not matched / cooldown (until) / blocked (guard,
 * reason) / lost in its group (winner) / timer armed (due) / error / not
 * triggered, with each top-level condition of `when`, its value and the facts
 * it read; for each guard what it blocked and, for a block, its own
 * conditions. Then the plan: what an event trigger withdrew (and why), and
 * every recommendation still pending after the trigger, with where it came
 * from, when it expires and what would withdraw it (the engine's reasons, in
 * its order: it is pending because no trigger since matched one of them).
 * Human-readable by default, JSON with --json (shape in docs/cli.md). Ids
 * only: no event payload text is printed.
 *
 * Where the state comes from is a table of sources (explain_sources): the
 * daemon-backed source (-c CONFIG: the state in Redis, with the daemon's
 * config, read only; its I/O is in td_explain_redis.c) is one more entry
 * with the same signature.
 *
 * File-local functions are prefixed ex_.
 *
 * @locality main thread.
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "td_calendar.h"
#include "td_cli.h"
#include "td_clock.h"
#include "td_engine.h"
#include "td_explain_redis.h"
#include "td_sim.h"
#include "td_time.h"

/* ---------------------------------------------------------------- options */

typedef enum explain_source_kind {
    EXPLAIN_SRC_EVENTS = 0, /* --events FILE.jsonl */
    EXPLAIN_SRC_STATE_FILE, /* --state FILE */
    EXPLAIN_SRC_REDIS,      /* -c CONFIG: the daemon's state in Redis */
    EXPLAIN_SRC__COUNT
} explain_source_kind;

typedef struct explain_opts {
    const char *rules[64];
    size_t nrules;
    explain_source_kind source;
    const char *events_path;
    const char *state_path;
    const char *prospect;
    const char *at_id;
    const char *event_json;  /* --event */
    const char *holidays;    /* --holidays */
    td_ms now;               /* --now, TD_MS_MISSING when not given */
    const char *config_path; /* -c CONFIG (the Redis source) */
    const char *redis_addr;  /* --redis HOST:PORT override */
    const td_config *cfg;    /* loaded from config_path */
    bool json;
    int marks; /* 0 auto, 1 ascii, 2 unicode */
} explain_opts;

/* What a source hands over: the simulation positioned just before the
 * trigger, and the trigger event when there is one. */
typedef struct explain_input {
    td_sim sim;
    bool sim_ready;
    td_event target;
    bool has_target;
    uint64_t history;     /* events applied before the trigger */
    uint64_t history_all; /* events of the prospect in the source */
    uint64_t rejected;    /* undecodable lines in the source */
    char origin[160];     /* where the state came from, for the header */
} explain_input;

typedef int (*explain_source_fn)(const explain_opts *o, const td_ruleset *rs, td_tzdb *tz,
                                 explain_input *in, char *err, size_t errcap);

/* ---------------------------------------------------------------- sources */

static int ex_read_lines(const char *path,
                         int (*fn)(void *ud, const char *line, size_t len, uint64_t lineno),
                         void *ud, char *err, size_t errcap) {
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (!f) {
        snprintf(err, errcap, "cannot open %s: %s", path, strerror(errno));
        return TD_ERR;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    uint64_t lineno = 0;
    int rc = TD_OK;
    while (rc == TD_OK && (len = getline(&line, &cap, f)) != -1) {
        lineno++;
        size_t l = (size_t)len;
        while (l && (line[l - 1] == '\n' || line[l - 1] == '\r'))
            l--;
        line[l] = '\0';
        rc = fn(ud, line, l, lineno);
    }
    if (rc == TD_OK && ferror(f)) {
        snprintf(err, errcap, "read error on %s: %s", path, strerror(errno));
        rc = TD_ERR;
    }
    free(line);
    if (f != stdin) fclose(f);
    return rc;
}

typedef struct evlist {
    const char *prospect;
    td_event *v;
    size_t n, cap;
    uint64_t rejected;
} evlist;

static int ex_take_event(void *ud, const char *line, size_t len, uint64_t lineno) {
    (void)lineno;
    evlist *l = ud;
    size_t k = 0;
    while (k < len && (line[k] == ' ' || line[k] == '\t'))
        k++;
    if (k == len) return TD_OK;
    td_event ev;
    td_event_error e;
    if (td_event_decode(line, len, &ev, &e) != TD_OK) {
        l->rejected++;
        return TD_OK;
    }
    if (strcmp(ev.prospect_id, l->prospect) != 0) return TD_OK;
    if (td_grow(&l->v, &l->cap, l->n, sizeof *l->v, 64) != TD_OK) return TD_ERR;
    l->v[l->n++] = ev;
    return TD_OK;
}

static int ex_decode_event_arg(const char *json, td_event *ev, char *err, size_t errcap) {
    td_event_error e;
    if (td_event_decode(json, strlen(json), ev, &e) != TD_OK) {
        snprintf(err, errcap, "--event: rejected: %s%s%s", e.field, e.field[0] ? ": " : "",
                 e.reason);
        return TD_ERR;
    }
    return TD_OK;
}

/* --events FILE.jsonl: the prospect's history through the engine. */
static int ex_src_events(const explain_opts *o, const td_ruleset *rs, td_tzdb *tz,
                         explain_input *in, char *err, size_t errcap) {
    evlist l = {.prospect = o->prospect};
    if (ex_read_lines(o->events_path, ex_take_event, &l, err, errcap) != TD_OK) {
        free(l.v);
        return TD_ERR;
    }
    in->rejected = l.rejected;
    in->history_all = l.n;
    if (l.n == 0 && !o->event_json) {
        snprintf(err, errcap, "no event for prospect '%s' in %s", o->prospect, o->events_path);
        free(l.v);
        return TD_ERR;
    }
    size_t upto = l.n; /* events applied before the trigger */
    if (o->at_id) {
        size_t i = 0;
        while (i < l.n && strcmp(l.v[i].id, o->at_id) != 0)
            i++;
        if (i == l.n) {
            snprintf(err, errcap, "no event '%s' for prospect '%s' in %s", o->at_id, o->prospect,
                     o->events_path);
            free(l.v);
            return TD_ERR;
        }
        in->target = l.v[i];
        in->has_target = true;
        upto = i;
    } else if (o->event_json) {
        if (ex_decode_event_arg(o->event_json, &in->target, err, errcap) != TD_OK) {
            free(l.v);
            return TD_ERR;
        }
        in->has_target = true;
    } else if (o->now == TD_MS_MISSING) {
        in->target = l.v[l.n - 1];
        in->has_target = true;
        upto = l.n - 1;
    }
    if (td_sim_init(&in->sim, rs, tz, o->prospect, NULL, TD_MS_MISSING, 0) != TD_OK) {
        free(l.v);
        snprintf(err, errcap, "out of memory");
        return TD_ERR;
    }
    in->sim_ready = true;
    for (size_t i = 0; i < upto; i++)
        if (td_sim_event(&in->sim, &l.v[i], 0) != TD_OK) {
            free(l.v);
            snprintf(err, errcap, "out of memory");
            return TD_ERR;
        }
    in->history = upto;
    snprintf(in->origin, sizeof in->origin,
             "%s (%llu of the prospect's %llu events applied before)", o->events_path,
             (unsigned long long)upto, (unsigned long long)l.n);
    free(l.v);
    return TD_OK;
}

typedef struct stload {
    td_state *st;
    const char *path;
    char *err;
    size_t errcap;
} stload;

static int ex_set_kv(stload *s, const char *k, size_t kl, const char *v, size_t vl,
                     uint64_t lineno) {
    char e[200];
    int rc = td_state_set_field(s->st, k, kl, v, vl, e, sizeof e);
    if (rc == TD_ERR) {
        snprintf(s->err, s->errcap, "%s:%llu: %s", s->path, (unsigned long long)lineno, e);
        return TD_ERR;
    }
    if (rc == 1)
        fprintf(stderr, "touchd explain: %s:%llu: unknown state field '%.*s' ignored\n", s->path,
                (unsigned long long)lineno, (int)kl, k);
    return TD_OK;
}

static int ex_take_kv(void *ud, const char *line, size_t len, uint64_t lineno) {
    stload *s = ud;
    size_t i = 0;
    while (i < len && (line[i] == ' ' || line[i] == '\t'))
        i++;
    if (i == len || line[i] == '#') return TD_OK;
    size_t k0 = i;
    while (i < len && line[i] != ' ' && line[i] != '\t')
        i++;
    size_t k1 = i;
    while (i < len && (line[i] == ' ' || line[i] == '\t'))
        i++;
    return ex_set_kv(s, line + k0, k1 - k0, line + i, len - i, lineno);
}

/* --state FILE: flat `key value` lines (redis-cli HGETALL pairs joined), or
 * a JSON object of the flat form. */
static int ex_src_state_file(const explain_opts *o, const td_ruleset *rs, td_tzdb *tz,
                             explain_input *in, char *err, size_t errcap) {
    td_state st;
    td_state_init(&st, o->prospect ? o->prospect : "");
    stload s = {.st = &st, .path = o->state_path, .err = err, .errcap = errcap};
    json_error_t je;
    json_t *j = json_load_file(o->state_path, JSON_REJECT_DUPLICATES, &je);
    int rc = TD_OK;
    if (j && json_is_object(j)) {
        const char *k;
        json_t *v;
        json_object_foreach(j, k, v) {
            char buf[64];
            const char *vs = buf;
            if (json_is_string(v))
                vs = json_string_value(v);
            else if (json_is_integer(v))
                snprintf(buf, sizeof buf, "%lld", (long long)json_integer_value(v));
            else if (json_is_real(v))
                snprintf(buf, sizeof buf, "%.4f", json_real_value(v));
            else if (json_is_boolean(v))
                snprintf(buf, sizeof buf, "%s", json_is_true(v) ? "true" : "false");
            else {
                snprintf(err, errcap, "%s: field '%s': give a string, number or boolean",
                         o->state_path, k);
                rc = TD_ERR;
                break;
            }
            if ((rc = ex_set_kv(&s, k, strlen(k), vs, strlen(vs), 0)) != TD_OK) break;
        }
    } else {
        rc = ex_read_lines(o->state_path, ex_take_kv, &s, err, errcap);
    }
    json_decref(j);
    if (rc == TD_OK && !st.prospect_id[0]) {
        snprintf(err, errcap, "%s has no prospect_id: give --prospect ID", o->state_path);
        rc = TD_ERR;
    }
    if (rc == TD_OK && o->prospect && strcmp(st.prospect_id, o->prospect) != 0) {
        snprintf(err, errcap, "%s is the state of '%s', not of '%s'", o->state_path, st.prospect_id,
                 o->prospect);
        rc = TD_ERR;
    }
    if (rc == TD_OK && o->event_json) {
        if ((rc = ex_decode_event_arg(o->event_json, &in->target, err, errcap)) == TD_OK)
            in->has_target = true;
    }
    if (rc == TD_OK && !in->has_target && o->now == TD_MS_MISSING &&
        st.last_event_at == TD_MS_MISSING) {
        snprintf(err, errcap, "the state has no last_event_at: give --now TIME or --event JSON");
        rc = TD_ERR;
    }
    if (rc == TD_OK) {
        if (td_sim_init(&in->sim, rs, tz, NULL, &st, st.last_event_at, 0) != TD_OK) {
            snprintf(err, errcap, "out of memory");
            rc = TD_ERR;
        } else {
            in->sim_ready = true;
            snprintf(in->origin, sizeof in->origin, "%s (state file)", o->state_path);
        }
    }
    td_state_free(&st);
    return rc;
}

/* -c CONFIG: the prospect's live state in Redis (read only). The trigger
 * is explained as with --state; without --now or --event it is a "now"
 * evaluation at the wall clock (the daemon's now), or at the state's
 * last_event_at when that is later. */
static int ex_src_redis(const explain_opts *o, const td_ruleset *rs, td_tzdb *tz, explain_input *in,
                        char *err, size_t errcap) {
    td_state st;
    if (td_explain_redis_load(o->cfg, o->prospect, &st, in->origin, sizeof in->origin, err,
                              errcap) != TD_OK)
        return TD_ERR;
    int rc = TD_OK;
    if (o->event_json) {
        if ((rc = ex_decode_event_arg(o->event_json, &in->target, err, errcap)) == TD_OK)
            in->has_target = true;
    }
    td_ms clock = st.last_event_at;
    if (!in->has_target && o->now == TD_MS_MISSING) {
        td_ms wall = td_wall_ms();
        if (clock == TD_MS_MISSING || wall > clock) clock = wall;
    }
    if (rc == TD_OK) {
        if (td_sim_init(&in->sim, rs, tz, NULL, &st, clock, 0) != TD_OK) {
            snprintf(err, errcap, "out of memory");
            rc = TD_ERR;
        } else {
            in->sim_ready = true;
            in->history = (uint64_t)st.events;
            in->history_all = (uint64_t)st.events;
        }
    }
    td_state_free(&st);
    return rc;
}

static const struct {
    const char *name;
    explain_source_fn load;
} explain_sources[EXPLAIN_SRC__COUNT] = {
    [EXPLAIN_SRC_EVENTS] = {"events", ex_src_events},
    [EXPLAIN_SRC_STATE_FILE] = {"state file", ex_src_state_file},
    [EXPLAIN_SRC_REDIS] = {"redis", ex_src_redis},
};

/* ---------------------------------------------------------------- analysis */

/* A timer that came due on the way to the trigger. */
#define EX_TIMER_WDS 4
typedef struct fired_timer {
    const td_rule *rule;
    char rule_id[TD_RULE_ID_MAX + 1];
    td_ms due_at;
    char armed_by[TD_ID_MAX + 1];
    td_outcome outcome;
    bool has_outcome;
    /* what its step withdrew (the first EX_TIMER_WDS; nwds counts all) */
    struct {
        char rule[TD_RULE_ID_MAX + 1];
        char withdraws[TD_REC_ID_LEN + 1];
        td_wd_reason reason;
    } wds[EX_TIMER_WDS];
    uint32_t nwds;
} fired_timer;

typedef struct timer_log {
    fired_timer *v;
    size_t n, cap;
    bool oom;
} timer_log;

static void ex_log_timer(void *ud, const td_sim *sim, const td_state *st, const td_trigger *trig,
                         const td_step_out *out) {
    timer_log *l = ud;
    if (trig->kind != TD_TRIG_TIMER || st != sim->main) return; /* the prospect's own timers */
    if (td_grow(&l->v, &l->cap, l->n, sizeof *l->v, 8) != TD_OK) {
        l->oom = true;
        return;
    }
    fired_timer *t = &l->v[l->n++];
    memset(t, 0, sizeof *t);
    td_strlcpy(t->rule_id, trig->rule, sizeof t->rule_id);
    td_strlcpy(t->armed_by, trig->armed_by, sizeof t->armed_by);
    t->due_at = trig->due_at;
    for (uint32_t i = 0; i < out->ndecisions; i++)
        if (strcmp(out->decisions[i].rule->id, trig->rule) == 0) {
            t->rule = out->decisions[i].rule;
            t->outcome = out->decisions[i].outcome;
            t->has_outcome = true;
        }
    t->nwds = out->nwds;
    for (uint32_t i = 0; i < out->nwds && i < EX_TIMER_WDS; i++) {
        td_strlcpy(t->wds[i].rule, out->wds[i].rule, sizeof t->wds[i].rule);
        td_strlcpy(t->wds[i].withdraws, out->wds[i].withdraws, sizeof t->wds[i].withdraws);
        t->wds[i].reason = out->wds[i].reason;
    }
}

/* ---------------------------------------------------------------- the plan */

/* The reasons a later trigger would withdraw pending e for, in the order
 * the engine tries them: the engine's own list (td_plan_withdrawn_on).
 * @returns how many (v has 7). */
static size_t ex_withdrawn_on(const td_pending *e, td_wd_reason *v) {
    return td_plan_withdrawn_on(e, v);
}

/* Where a pending recommendation came from: its body's trigger. */
typedef struct ex_origin {
    char type[48];                 /* "email.opened", "timer" ("" unknown) */
    char id[TD_ID_MAX + 1];        /* the event id, or the timer's armed_by */
    char rule[TD_RULE_ID_MAX + 1]; /* a timer's rule */
    td_ms at;                      /* the trigger's time, TD_MS_MISSING unknown */
    bool late;
} ex_origin;

static void ex_origin_of(const td_pending *e, ex_origin *o) {
    memset(o, 0, sizeof *o);
    o->at = TD_MS_MISSING;
    json_t *j = json_loadb(e->json, e->len, 0, NULL);
    json_t *t = json_object_get(j, "trigger");
    const char *type = json_string_value(json_object_get(t, "type"));
    const char *id = json_string_value(json_object_get(t, "event_id"));
    const char *ab = json_string_value(json_object_get(t, "armed_by"));
    const char *rule = json_string_value(json_object_get(t, "rule"));
    const char *at = json_string_value(json_object_get(t, "occurred_at"));
    if (type) td_strlcpy(o->type, type, sizeof o->type);
    if (id || ab) td_strlcpy(o->id, id ? id : ab, sizeof o->id);
    if (rule) td_strlcpy(o->rule, rule, sizeof o->rule);
    if (at && td_time_parse(at, strlen(at), &o->at) != TD_OK) o->at = TD_MS_MISSING;
    o->late = json_is_true(json_object_get(j, "late"));
    json_decref(j);
}

/* What a withdrawal reason means, for the human output. */
static const char *ex_wd_words(td_wd_reason r) {
    switch (r) {
    case TD_WDR_REPLIED:
        return "a reply (not out_of_office) ends the sequence";
    case TD_WDR_OPTED_OUT:
        return "its channel was opted out, unsubscribed or lost consent";
    case TD_WDR_BOUNCED:
        return "its channel hard-bounced";
    case TD_WDR_STAGE:
        return "the stage became won or lost";
    case TD_WDR_SUPERSEDED:
        return "a newer recommendation of its group";
    case TD_WDR_RULE:
        return "a rule that fired lists it in its withdraws";
    case TD_WDR_EXPIRED:
        return "its expires_at passed";
    }
    return "?";
}

/* "no reply or won/lost stage, no opt-out or hard bounce on email, nothing
 * newer in group follow-up, no rule's withdraws": what did not happen since
 * e was published, for each reason that would withdraw it but expiry. */
static void ex_pending_because(const td_pending *e, char *buf, size_t cap) {
    td_wd_reason v[8];
    size_t n = ex_withdrawn_on(e, v), k = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        char part[200];
        switch (v[i]) {
        case TD_WDR_REPLIED:
            snprintf(part, sizeof part, "no reply and no won/lost stage");
            break;
        case TD_WDR_OPTED_OUT:
            snprintf(part, sizeof part, "no opt-out, unsubscribe or hard bounce on %s",
                     td_channel_name(e->channel));
            break;
        case TD_WDR_SUPERSEDED:
            if (e->group[0])
                snprintf(part, sizeof part, "nothing newer in group %s", e->group);
            else
                snprintf(part, sizeof part, "%s did not fire again", e->rule);
            break;
        case TD_WDR_RULE:
            snprintf(part, sizeof part, "no rule whose withdraws names it fired");
            break;
        default:
            continue; /* expiry is said apart; bounced and stage go with the above */
        }
        int w = snprintf(buf + k, cap - k, "%s%s", k ? ", " : "", part);
        if (w < 0 || (size_t)w >= cap - k) break;
        k += (size_t)w;
    }
}

static void ex_print_plan(FILE *o, const td_state *st, const td_step_out *out, td_ms now) {
    char tb[TD_TIME_BUF], tb2[TD_TIME_BUF], db[32];
    if (out && !out->duplicate && out->nwds) {
        fprintf(o, "\nwithdrawn by this trigger: %u\n", out->nwds);
        for (uint32_t i = 0; i < out->nwds; i++) {
            const td_wd *w = &out->wds[i];
            fprintf(o, "withdrawn  %s  %s", w->rule, td_wd_reason_name(w->reason));
            if (w->by) fprintf(o, " by %s", w->by->rule->id);
            fprintf(o, ": %s\n    id     %s withdraws %s\n", ex_wd_words(w->reason), w->id,
                    w->withdraws);
        }
    }
    if (!st->nplan) {
        fprintf(o, "\nplan: nothing pending (the plan topic holds a tombstone)\n");
        return;
    }
    fprintf(o, "\nplan: %u pending (plan version %lld), soonest not_before first\n", st->nplan,
            (long long)st->plan_version);
    for (uint32_t i = 0; i < st->nplan; i++) {
        const td_pending *e = &st->plan[i];
        ex_origin og;
        ex_origin_of(e, &og);
        td_time_format(e->not_before, tb, sizeof tb);
        td_time_format(e->expires_at, tb2, sizeof tb2);
        fprintf(o, "pending  %s  %s %s, not before %s, expires %s%s%s%s\n", e->rule,
                td_channel_name(e->channel), e->touch, tb, tb2, e->group[0] ? ", group " : "",
                e->group, e->owner ? ", to the owner" : "");
        fprintf(o, "    id     %s\n", e->id);
        if (og.type[0]) {
            td_time_format(og.at, tb, sizeof tb);
            if (strcmp(og.type, "timer") == 0)
                fprintf(o, "    from   timer %s (armed by %s) at %s%s\n", og.rule, og.id, tb,
                        og.late ? ", published late" : "");
            else
                fprintf(o, "    from   %s %s at %s%s\n", og.type, og.id, tb,
                        og.late ? ", published late" : "");
        }
        if (e->expires_at <= now) {
            td_duration_format(now - e->expires_at, db, sizeof db);
            fprintf(o,
                    "    why    EXPIRED at %s (%s ago) and still in the plan: no trigger of the "
                    "prospect since; the next one withdraws it (expired)\n",
                    tb2, db);
            continue;
        }
        char because[600];
        ex_pending_because(e, because, sizeof because);
        td_duration_format(e->expires_at - now, db, sizeof db);
        fprintf(o,
                "    why    pending: no trigger since its publication withdrew it (%s); not "
                "expired: it expires at %s, in %s\n",
                because, tb2, db);
    }
}

/* A guard's run-time error at the trigger ("" when none). */
static const char *ex_guard_error(const td_probe_rule *v) { return v->decided ? v->d.error : ""; }

/* ---------------------------------------------------------------- output */

typedef struct marks {
    const char *yes, *no, *unknown;
} marks;

static void ex_on_list(const td_rule *r, char *buf, size_t cap) {
    size_t n = 0;
    buf[0] = '\0';
    int cnt = 0;
    for (int t = 0; t < TD_EV__COUNT; t++)
        if (r->on & (1ULL << t)) cnt++;
    if (cnt == TD_EV__COUNT) {
        snprintf(buf, cap, "*");
        return;
    }
    for (int t = 0; t < TD_EV__COUNT; t++) {
        if (!(r->on & (1ULL << t))) continue;
        int w =
            snprintf(buf + n, cap - n, "%s%s", n ? ", " : "", td_event_type_name((td_event_type)t));
        if (w < 0 || (size_t)w >= cap - n) break;
        n += (size_t)w;
    }
    if (r->guard && td_rule_guards_trigger(r, -1) && n < cap)
        snprintf(buf + n, cap - n, "%stimer", n ? ", " : "");
}

static void ex_print_conds(FILE *o, const char *label, const td_because *b, uint32_t n,
                           const marks *mk, int width) {
    for (uint32_t i = 0; i < n; i++) {
        char vb[128];
        td_value_json(&b[i].value, vb, sizeof vb);
        const char *m = b[i].value.type != TD_T_BOOL ? " "
                        : b[i].value.missing         ? mk->unknown
                        : b[i].value.u.b             ? mk->yes
                                                     : mk->no;
        fprintf(o, "    %-6s %s %-*.*s = %-6s", i == 0 ? label : "", m, width, (int)b[i].len,
                b[i].expr, vb);
        for (uint32_t f = 0; f < b[i].facts.n; f++) {
            td_value_json(&b[i].facts.v[f].value, vb, sizeof vb);
            fprintf(o, "%s%s=%s", f ? ", " : "  ", b[i].facts.v[f].field->name, vb);
        }
        fputc('\n', o);
    }
}

static int ex_conds_width(const td_because *b, uint32_t n) {
    int w = 0;
    for (uint32_t i = 0; i < n; i++)
        if ((int)b[i].len > w) w = (int)b[i].len;
    return w > 60 ? 60 : w;
}

static const char *ex_outcome_label(const td_probe_rule *v, bool now_mode) {
    if (!v->decided) return v->triggered ? "NO DECISION" : "NOT TRIGGERED";
    switch (v->d.outcome) {
    case TD_OUT_FIRED:
        return now_mode ? "WOULD FIRE" : "FIRED";
    case TD_OUT_NOT_MATCHED:
        return "NOT MATCHED";
    case TD_OUT_COOLDOWN:
        return "COOLDOWN";
    case TD_OUT_BLOCKED:
        return "BLOCKED";
    case TD_OUT_LOST_GROUP:
        return "LOST IN GROUP";
    case TD_OUT_ARMED:
        return "TIMER ARMED";
    case TD_OUT_ERROR:
        return "ERROR";
    }
    return "?";
}

static void ex_print_human(FILE *o, const explain_opts *opt, const explain_input *in,
                           const td_ruleset *rs, const td_probe *pb, const timer_log *tl, td_ms now,
                           const td_step_out *out, const marks *mk) {
    const td_probe_rule *views = pb->rules;
    size_t nr = pb->nrules;
    (void)opt;
    char tb[TD_TIME_BUF], tb2[TD_TIME_BUF];
    const td_state *st = in->sim.main;
    td_time_format(now, tb, sizeof tb);
    if (in->has_target)
        fprintf(o, "prospect %s, trigger %s %s at %s\n", st->prospect_id,
                td_event_type_name(in->target.type), in->target.id, tb);
    else
        fprintf(o, "prospect %s, \"now\" evaluation at %s (every rule, as a timer trigger)\n",
                st->prospect_id, tb);
    fprintf(o, "state from %s\n", in->origin);
    if (in->rejected)
        fprintf(o, "%llu undecodable lines of the input were skipped\n",
                (unsigned long long)in->rejected);
    fprintf(o, "ruleset %s\n", td_ruleset_hash(rs));
    if (out && out->duplicate)
        fprintf(o,
                "the event %s was already applied (duplicate id): nothing changes, nothing fires\n",
                in->target.id);
    for (size_t i = 0; i < tl->n; i++) {
        td_time_format(tl->v[i].due_at, tb2, sizeof tb2);
        bool plan = strcmp(tl->v[i].rule_id, TD_PLAN_TIMER) == 0;
        fprintf(o, "timer %s (armed by %s) came due at %s before the trigger: %s", tl->v[i].rule_id,
                tl->v[i].armed_by, tb2,
                tl->v[i].has_outcome ? td_outcome_name(tl->v[i].outcome)
                : plan               ? "the plan's own timer (expiries, snoozes)"
                                     : "dropped (rule changed)");
        for (uint32_t k = 0; k < tl->v[i].nwds && k < EX_TIMER_WDS; k++)
            fprintf(o, "%s%s %s", k ? ", " : "; withdrew ", tl->v[i].wds[k].rule,
                    td_wd_reason_name(tl->v[i].wds[k].reason));
        if (tl->v[i].nwds > EX_TIMER_WDS) fprintf(o, " and %u more", tl->v[i].nwds - EX_TIMER_WDS);
        fputc('\n', o);
    }
    int idw = 0;
    for (size_t i = 0; i < nr; i++)
        if ((int)strlen(views[i].rule->id) > idw) idw = (int)strlen(views[i].rule->id);
    fputc('\n', o);
    for (size_t i = 0; i < nr; i++) {
        const td_probe_rule *v = &views[i];
        const td_rule *r = v->rule;
        char onb[512];
        if (r->guard) continue;
        fprintf(o, "rule  %-*s  %s", idw, r->id, ex_outcome_label(v, !in->has_target));
        if (v->decided) {
            switch (v->d.outcome) {
            case TD_OUT_COOLDOWN:
                td_time_format(v->d.until, tb2, sizeof tb2);
                fprintf(o, " until %s", tb2);
                break;
            case TD_OUT_ARMED:
                td_time_format(v->d.until, tb2, sizeof tb2);
                fprintf(o, ", due %s", tb2);
                break;
            case TD_OUT_BLOCKED:
                fprintf(o, " by %s", v->d.by ? v->d.by->id : "?");
                if (v->d.by && v->d.by->reason) fprintf(o, ": %s", v->d.by->reason);
                break;
            case TD_OUT_LOST_GROUP:
                fprintf(o, " %s to %s", r->group ? r->group : "", v->d.by ? v->d.by->id : "?");
                break;
            case TD_OUT_ERROR:
                fprintf(o, ": %s", v->d.error);
                break;
            default:
                break;
            }
        } else if (!v->triggered) {
            ex_on_list(r, onb, sizeof onb);
            fprintf(o, " (on: %s)", onb);
        }
        fputc('\n', o);
        if (v->not_before != TD_MS_MISSING) {
            td_time_format(v->not_before, tb2, sizeof tb2);
            fprintf(o, "    %-6s %s %s, not before %s, priority %lld%s%s\n", "rec",
                    td_channel_name(r->channel), r->touch, tb2, (long long)r->priority,
                    r->group ? ", group " : "", r->group ? r->group : "");
        }
        if (v->decided && v->d.nbecause)
            ex_print_conds(o, "when", v->d.because, v->d.nbecause, mk,
                           ex_conds_width(v->d.because, v->d.nbecause));
        if (v->decided && v->d.outcome == TD_OUT_BLOCKED && v->ngb)
            ex_print_conds(o, "guard", v->gb, v->ngb, mk, ex_conds_width(v->gb, v->ngb));
        const td_timer *t = td_state_timer(st, r->id);
        if (t) {
            td_time_format(t->due_at, tb2, sizeof tb2);
            fprintf(o, "    %-6s pending timer due %s (armed by %s)\n", "timer", tb2, t->armed_by);
        }
    }
    fputc('\n', o);
    for (size_t i = 0; i < nr; i++) {
        const td_probe_rule *v = &views[i];
        if (!v->rule->guard) continue;
        fprintf(o, "guard %-*s  ", idw, v->rule->id);
        if (!v->triggered) {
            char onb[512];
            ex_on_list(v->rule, onb, sizeof onb);
            fprintf(o, "DOES NOT JUDGE this trigger (on: %s)\n", onb);
        } else if (v->nblocked) {
            fprintf(o, "BLOCKED");
            for (uint32_t k = 0; k < v->nblocked; k++)
                fprintf(o, "%s%s", k ? ", " : " ", v->blocked[k]->id);
            if (v->rule->reason) fprintf(o, ": %s", v->rule->reason);
            fputc('\n', o);
        } else if (pb->ncandidates == 0) {
            fprintf(o, "NO CANDIDATE to judge\n");
        } else {
            fprintf(o, "PASSED (blocked nothing)\n");
        }
        if (ex_guard_error(v)[0]) fprintf(o, "    error  %s\n", ex_guard_error(v));
    }
    ex_print_plan(o, st, in->has_target ? out : NULL, now);
}

static json_t *ex_value_json(const td_value *v) {
    char vb[256];
    td_value_json(v, vb, sizeof vb);
    json_t *j = json_loads(vb, JSON_DECODE_ANY, NULL);
    return j ? j : json_null();
}

static json_t *ex_conds_json(const td_because *b, uint32_t n) {
    json_t *a = json_array();
    for (uint32_t i = 0; i < n; i++) {
        json_t *facts = json_object();
        for (uint32_t f = 0; f < b[i].facts.n; f++)
            json_object_set_new(facts, b[i].facts.v[f].field->name,
                                ex_value_json(&b[i].facts.v[f].value));
        json_array_append_new(a, json_pack("{s:s%,s:o,s:o}", "expr", b[i].expr, (size_t)b[i].len,
                                           "value", ex_value_json(&b[i].value), "facts", facts));
    }
    return a;
}

static json_t *ex_time_json(td_ms t) {
    char tb[TD_TIME_BUF];
    td_time_format(t, tb, sizeof tb);
    return json_string(tb);
}

/* The plan after the trigger: each pending recommendation, whether it is
 * still pending at now or expired, where it came from and what would
 * withdraw it. */
static json_t *ex_plan_json(const td_state *st, td_ms now) {
    json_t *a = json_array();
    for (uint32_t i = 0; i < st->nplan; i++) {
        const td_pending *e = &st->plan[i];
        json_t *j = json_object();
        json_object_set_new(j, "id", json_string(e->id));
        json_object_set_new(j, "rule", json_string(e->rule));
        if (e->group[0]) json_object_set_new(j, "group", json_string(e->group));
        if (e->intent[0]) json_object_set_new(j, "intent", json_string(e->intent));
        json_object_set_new(j, "audience", json_string(e->owner ? "owner" : "prospect"));
        json_object_set_new(j, "channel", json_string(td_channel_name(e->channel)));
        json_object_set_new(j, "touch", json_string(e->touch));
        json_object_set_new(j, "not_before", ex_time_json(e->not_before));
        json_object_set_new(j, "expires_at", ex_time_json(e->expires_at));
        json_object_set_new(j, "status", json_string(e->expires_at <= now ? "expired" : "pending"));
        json_t *body = json_loadb(e->json, e->len, 0, NULL);
        json_t *t = json_object_get(body, "trigger");
        if (t) json_object_set(j, "trigger", t);
        if (json_is_true(json_object_get(body, "late")))
            json_object_set_new(j, "late", json_true());
        json_decref(body);
        td_wd_reason v[8];
        size_t n = ex_withdrawn_on(e, v);
        json_t *on = json_array();
        for (size_t k = 0; k < n; k++)
            json_array_append_new(on, json_string(td_wd_reason_name(v[k])));
        json_object_set_new(j, "withdrawn_on", on);
        json_array_append_new(a, j);
    }
    return a;
}

static json_t *ex_build_json(const explain_input *in, const td_ruleset *rs, const td_probe *pb,
                             const timer_log *tl, td_ms now, const td_step_out *out,
                             const td_trigger *trig) {
    const td_probe_rule *views = pb->rules;
    size_t nr = pb->nrules;
    const td_state *st = in->sim.main;
    json_t *root = json_object();
    json_object_set_new(root, "prospect_id", json_string(st->prospect_id));
    json_object_set_new(root, "ruleset", json_string(td_ruleset_hash(rs)));
    json_object_set_new(root, "now", ex_time_json(now));
    json_t *trigger = json_object();
    if (in->has_target) {
        json_object_set_new(trigger, "type", json_string(td_event_type_name(in->target.type)));
        json_object_set_new(trigger, "event_id", json_string(in->target.id));
        json_object_set_new(trigger, "occurred_at", ex_time_json(in->target.occurred_at));
        json_object_set_new(trigger, "duplicate", json_boolean(out && out->duplicate));
    } else {
        json_object_set_new(trigger, "type", json_string("now"));
    }
    json_object_set_new(root, "trigger", trigger);
    json_object_set_new(root, "history_events", json_integer((json_int_t)in->history));
    json_t *timers = json_array();
    for (size_t i = 0; i < tl->n; i++) {
        json_t *t = json_pack("{s:s,s:o,s:s}", "rule", tl->v[i].rule_id, "due_at",
                              ex_time_json(tl->v[i].due_at), "armed_by", tl->v[i].armed_by);
        json_object_set_new(t, "outcome",
                            tl->v[i].has_outcome ? json_string(td_outcome_name(tl->v[i].outcome))
                                                 : json_string("dropped"));
        if (tl->v[i].nwds) {
            json_t *wa = json_array();
            for (uint32_t k = 0; k < tl->v[i].nwds && k < EX_TIMER_WDS; k++)
                json_array_append_new(wa,
                                      json_pack("{s:s,s:s,s:s}", "rule", tl->v[i].wds[k].rule,
                                                "reason", td_wd_reason_name(tl->v[i].wds[k].reason),
                                                "withdraws", tl->v[i].wds[k].withdraws));
            json_object_set_new(t, "withdrawals", wa);
        }
        json_array_append_new(timers, t);
    }
    json_object_set_new(root, "timers_fired", timers);
    json_t *recs = json_array();
    if (out && trig) {
        td_buf b = {0};
        for (uint32_t i = 0; i < out->nrecs; i++) {
            b.len = 0;
            if (td_rec_json(&out->recs[i], st, rs, trig, now, &b) == TD_OK) {
                json_t *r = json_loads(b.p, 0, NULL);
                if (r) json_array_append_new(recs, r);
            }
        }
        td_buf_free(&b);
    }
    json_object_set_new(root, "recommendations", recs);
    if (out && trig) {
        /* what the trigger withdrew, as published */
        json_t *wds = json_array();
        td_buf b = {0};
        for (uint32_t i = 0; !out->duplicate && i < out->nwds; i++) {
            b.len = 0;
            if (td_body_json(out->wds[i].body, out->wds[i].body_len, now, &b) == TD_OK) {
                json_t *w = json_loads(b.p, 0, NULL);
                if (w) json_array_append_new(wds, w);
            }
        }
        td_buf_free(&b);
        json_object_set_new(root, "withdrawals", wds);
    }
    json_object_set_new(root, "plan_version", json_integer((json_int_t)st->plan_version));
    json_object_set_new(root, "plan", ex_plan_json(st, now));
    json_t *rules = json_array();
    for (size_t i = 0; i < nr; i++) {
        const td_probe_rule *v = &views[i];
        const td_rule *r = v->rule;
        json_t *j = json_object();
        json_object_set_new(j, "rule", json_string(r->id));
        json_object_set_new(j, "kind",
                            json_string(r->guard       ? "guard"
                                        : r->after > 0 ? "timer"
                                                       : "rule"));
        json_object_set_new(j, "file", json_string(r->file));
        json_object_set_new(j, "line", json_integer(r->line));
        json_object_set_new(j, "triggered", json_boolean(v->triggered));
        if (r->guard) {
            json_object_set_new(j, "outcome",
                                json_string(!v->triggered          ? "not_judging"
                                            : v->nblocked          ? "blocked"
                                            : pb->ncandidates == 0 ? "no_candidates"
                                                                   : "passed"));
            json_t *bl = json_array();
            for (uint32_t k = 0; k < v->nblocked; k++)
                json_array_append_new(bl, json_string(v->blocked[k]->id));
            json_object_set_new(j, "blocked", bl);
            if (r->reason) json_object_set_new(j, "reason", json_string(r->reason));
            if (ex_guard_error(v)[0])
                json_object_set_new(j, "error", json_string(ex_guard_error(v)));
            json_array_append_new(rules, j);
            continue;
        }
        const char *oc = !v->decided ? (v->triggered ? "no_decision" : "not_triggered")
                                     : td_outcome_name(v->d.outcome);
        if (v->decided && v->d.outcome == TD_OUT_FIRED && !in->has_target) oc = "would_fire";
        json_object_set_new(j, "outcome", json_string(oc));
        if (r->group) json_object_set_new(j, "group", json_string(r->group));
        json_object_set_new(j, "priority", json_integer(r->priority));
        if (v->decided) {
            if (v->d.until != TD_MS_MISSING)
                json_object_set_new(j, "until", ex_time_json(v->d.until));
            if (v->d.by) json_object_set_new(j, "by", json_string(v->d.by->id));
            if (v->d.outcome == TD_OUT_BLOCKED && v->d.by) {
                if (v->d.by->reason) json_object_set_new(j, "reason", json_string(v->d.by->reason));
                json_object_set_new(j, "guard_conditions", ex_conds_json(v->gb, v->ngb));
            }
            if (v->d.outcome == TD_OUT_ERROR)
                json_object_set_new(j, "error", json_string(v->d.error));
            json_object_set_new(j, "conditions", ex_conds_json(v->d.because, v->d.nbecause));
        }
        if (v->not_before != TD_MS_MISSING)
            json_object_set_new(j, "recommendation",
                                json_pack("{s:s,s:s,s:o}", "channel", td_channel_name(r->channel),
                                          "touch", r->touch, "not_before",
                                          ex_time_json(v->not_before)));
        const td_timer *t = td_state_timer(st, r->id);
        if (t)
            json_object_set_new(
                j, "pending_timer",
                json_pack("{s:o,s:s}", "due_at", ex_time_json(t->due_at), "armed_by", t->armed_by));
        json_array_append_new(rules, j);
    }
    json_object_set_new(root, "rules", rules);
    return root;
}

/* ---------------------------------------------------------------- command */

static void ex_usage(FILE *f) {
    fprintf(f,
            "usage: touchd explain --rules DIR (--events FILE.jsonl --prospect ID | --state FILE)\n"
            "                      [--at EVENT_ID | --now TIME | --event JSON] [--json]\n"
            "       touchd explain -c CONFIG --prospect ID [--now TIME | --event JSON] [--json]\n"
            "\n"
            "Why each rule did or did not fire for one prospect at one trigger, what the\n"
            "trigger withdrew, and what is still pending after it (the plan) and why.\n"
            "\n"
            "  -r, --rules PATH     rules file or directory (repeatable; required)\n"
            "  -e, --events FILE    the event history (JSON lines, - for stdin): the prospect's\n"
            "                       events are replayed through the engine, timers included\n"
            "  -s, --state FILE     instead of a history: the state in its flat form (`key value`\n"
            "                       lines, or a JSON object of the same keys; docs/state.md)\n"
            "  -c, --config FILE    instead: the daemon's config; the prospect's live state is\n"
            "                       read from its Redis (read only) and the rules from its\n"
            "                       rules.dir (unless --rules is given). Without --now or\n"
            "                       --event: a \"now\" evaluation at the current time\n"
            "      --redis ADDR     with -c: override redis (HOST:PORT or unix:/path)\n"
            "  -p, --prospect ID    the prospect (required with --events and -c)\n"
            "  -a, --at EVENT_ID    explain that event of the history (default: the last one)\n"
            "  -n, --now TIME       explain a \"now\" evaluation of every rule at TIME (RFC 3339)\n"
            "                       against the final state, after the timers due by then\n"
            "  -E, --event JSON     explain a hypothetical event applied after the history/state\n"
            "  -j, --json           JSON output (shape in docs/cli.md)\n"
            "  -H, --holidays DIR   public holiday files for business days (default\n"
            "                       config/holidays when it exists, else weekends only)\n"
            "      --ascii          ASCII marks (+ - ?) instead of check marks\n"
            "      --unicode        check marks even when stdout is not a terminal\n"
            "  -h, --help           this help\n"
            "\n"
            "Exit status: 0 explained, 1 the rules do not compile or the prospect/event is not\n"
            "found or the input is unreadable, 2 usage error.\n");
}

static bool ex_utf8_locale(void) {
    const char *vars[] = {"LC_ALL", "LC_CTYPE", "LANG"};
    for (size_t i = 0; i < 3; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v)
            return strstr(v, "UTF-8") || strstr(v, "utf8") || strstr(v, "UTF8") ||
                   strstr(v, "utf-8");
    }
    return false;
}

int td_cmd_explain(int argc, char **argv) {
    static const struct option opts[] = {{"rules", required_argument, NULL, 'r'},
                                         {"events", required_argument, NULL, 'e'},
                                         {"state", required_argument, NULL, 's'},
                                         {"prospect", required_argument, NULL, 'p'},
                                         {"at", required_argument, NULL, 'a'},
                                         {"now", required_argument, NULL, 'n'},
                                         {"event", required_argument, NULL, 'E'},
                                         {"json", no_argument, NULL, 'j'},
                                         {"ascii", no_argument, NULL, 'A'},
                                         {"unicode", no_argument, NULL, 'U'},
                                         {"holidays", required_argument, NULL, 'H'},
                                         {"config", required_argument, NULL, 'c'},
                                         {"redis", required_argument, NULL, 'R'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    explain_opts o = {.now = TD_MS_MISSING};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "r:e:s:p:a:n:E:jH:c:h", opts, NULL)) != -1) {
        switch (c) {
        case 'r':
            if (o.nrules == 64) {
                fprintf(stderr, "touchd explain: at most 64 --rules paths\n");
                return TD_EXIT_USAGE;
            }
            o.rules[o.nrules++] = optarg;
            break;
        case 'e':
            o.events_path = optarg;
            break;
        case 's':
            o.state_path = optarg;
            break;
        case 'p':
            o.prospect = optarg;
            break;
        case 'a':
            o.at_id = optarg;
            break;
        case 'n':
            if (td_time_parse(optarg, strlen(optarg), &o.now) != TD_OK) {
                fprintf(
                    stderr,
                    "touchd explain: --now %s: not an RFC 3339 time (e.g. 2026-11-23T09:00:00Z)\n",
                    optarg);
                return TD_EXIT_USAGE;
            }
            break;
        case 'E':
            o.event_json = optarg;
            break;
        case 'j':
            o.json = true;
            break;
        case 'A':
            o.marks = 1;
            break;
        case 'U':
            o.marks = 2;
            break;
        case 'H':
            o.holidays = optarg;
            break;
        case 'c':
            o.config_path = optarg;
            break;
        case 'R':
            o.redis_addr = optarg;
            break;
        case 'h':
            ex_usage(stdout);
            return TD_EXIT_OK;
        default:
            ex_usage(stderr);
            return TD_EXIT_USAGE;
        }
    }
    const char *problem = NULL;
    if (optind != argc)
        problem = "unexpected argument (options only)";
    else if (o.nrules == 0 && !o.config_path)
        problem = "--rules DIR is required (or -c CONFIG)";
    else if (!!o.events_path + !!o.state_path + !!o.config_path != 1)
        problem = "give exactly one of --events FILE, --state FILE and -c CONFIG";
    else if (o.config_path && !o.prospect)
        problem = "-c CONFIG needs --prospect ID";
    else if (o.redis_addr && !o.config_path)
        problem = "--redis goes with -c CONFIG";
    else if (o.at_id && o.config_path)
        problem = "--at names an event of --events; with -c use --now or --event";
    else if (o.events_path && !o.prospect)
        problem = "--events needs --prospect ID";
    else if (!!o.at_id + (o.now != TD_MS_MISSING) + !!o.event_json > 1)
        problem = "give at most one of --at, --now and --event";
    else if (o.at_id && o.state_path)
        problem = "--at names an event of --events; with --state use --now or --event";
    if (problem) {
        fprintf(stderr, "touchd explain: %s\n", problem);
        ex_usage(stderr);
        return TD_EXIT_USAGE;
    }
    o.source = o.events_path  ? EXPLAIN_SRC_EVENTS
               : o.state_path ? EXPLAIN_SRC_STATE_FILE
                              : EXPLAIN_SRC_REDIS;
    td_config *cfg = NULL;
    if (o.config_path) {
        char cerr0[1024];
        if (!(cfg = td_explain_redis_config(o.config_path, o.redis_addr, cerr0, sizeof cerr0))) {
            fprintf(stderr, "touchd explain: %s\n", cerr0);
            return TD_EXIT_USAGE;
        }
        o.cfg = cfg;
        if (o.nrules == 0) o.rules[o.nrules++] = cfg->rules.dir; /* the live ruleset */
    }

    td_diags diags = {0};
    td_ruleset *rs = td_load_rules(o.rules, o.nrules, &diags);
    td_print_diags(&diags, stderr);
    td_diags_free(&diags);
    if (!rs) {
        fprintf(stderr, "touchd explain: the rules do not compile\n");
        td_config_free(cfg);
        return TD_EXIT_FAIL;
    }
    struct td_calendar *cal = NULL;
    const char *cal_dir = NULL;
    char cerr[320];
    if (td_sim_load_calendar(o.holidays, &cal, &cal_dir, cerr, sizeof cerr) != TD_OK) {
        fprintf(stderr, "touchd explain: %s\n", cerr);
        td_ruleset_free(rs);
        td_config_free(cfg);
        return TD_EXIT_USAGE;
    }
    if (cal) td_ruleset_set_calendar(rs, cal);
    int rc = TD_EXIT_OK;
    td_tzdb *tz = td_tzdb_new();
    explain_input *in = calloc(1, sizeof *in);
    size_t nr = td_ruleset_count(rs);
    td_probe probe = {.rules = calloc(nr + 1, sizeof *probe.rules), .nrules = nr};
    timer_log tl = {0};
    char err[512] = "";
    if (!tz || !in || !probe.rules) {
        fprintf(stderr, "touchd explain: out of memory\n");
        rc = TD_EXIT_FATAL;
        goto done;
    }
    if (explain_sources[o.source].load(&o, rs, tz, in, err, sizeof err) != TD_OK) {
        fprintf(stderr, "touchd explain: %s\n", err);
        rc = TD_EXIT_FAIL;
        goto done;
    }

    td_sim *sim = &in->sim;
    sim->fn = ex_log_timer;
    sim->ud = &tl;
    sim->flags = TD_STEP_OUTCOMES; /* the timers that come due: their outcome */
    td_ms now;
    const td_step_out *out = NULL;
    td_trigger trig = {.kind = TD_TRIG_EVENT, .ev = &in->target};
    if (in->has_target) {
        /* the timers due by the event fire, then the probe is its step */
        td_state *tst = td_sim_prepare(sim, &in->target);
        now = sim->clock;
        out = sim->out;
        if (!tst || tl.oom || td_engine_probe(rs, tst, &trig, now, tz, &probe, sim->out) != TD_OK) {
            fprintf(stderr, "touchd explain: out of memory\n");
            rc = TD_EXIT_FATAL;
            goto done;
        }
    } else {
        now = o.now != TD_MS_MISSING ? o.now : sim->clock;
        if (sim->clock != TD_MS_MISSING && now < sim->clock) {
            char tb[TD_TIME_BUF];
            td_time_format(sim->clock, tb, sizeof tb);
            fprintf(stderr, "touchd explain: --now is before the prospect's last event (%s)\n", tb);
            rc = TD_EXIT_USAGE;
            goto done;
        }
        /* the timers due by then fire, then the probe's "now" evaluation */
        if (td_sim_advance(sim, now) != TD_OK || tl.oom ||
            td_engine_probe(rs, sim->main, NULL, now, tz, &probe, sim->out) != TD_OK) {
            fprintf(stderr, "touchd explain: out of memory\n");
            rc = TD_EXIT_FATAL;
            goto done;
        }
    }
    for (size_t i = 0; i < tl.n; i++)
        if (!tl.v[i].rule) tl.v[i].rule = td_ruleset_find(rs, tl.v[i].rule_id);

    if (o.json) {
        json_t *j = ex_build_json(in, rs, &probe, &tl, now, out, in->has_target ? &trig : NULL);
        char *s = j ? json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
        json_decref(j);
        if (!s) {
            fprintf(stderr, "touchd explain: out of memory\n");
            rc = TD_EXIT_FATAL;
            goto done;
        }
        printf("%s\n", s);
        free(s);
    } else {
        bool uni = o.marks == 2 || (o.marks == 0 && isatty(STDOUT_FILENO) && ex_utf8_locale());
        marks mk = uni ? (marks){"\xe2\x9c\x93", "\xe2\x9c\x97", "?"} : (marks){"+", "-", "?"};
        ex_print_human(stdout, &o, in, rs, &probe, &tl, now, out, &mk);
    }
    if (fflush(stdout) != 0) rc = TD_EXIT_FATAL;

done:
    free(tl.v);
    if (in && in->sim_ready) td_sim_free(&in->sim);
    free(in);
    free(probe.rules);
    td_tzdb_free(tz);
    td_ruleset_free(rs);
    td_calendar_free(cal);
    td_config_free(cfg);
    return rc;
}
