/*
 * td_testfile.c - parsing `*.test` files (libconfig) into tf_file (see
 * td_testfile.h and docs/rules-testing.md).
 *
 * The parser walks the libconfig tree once, case by case. A case's virtual
 * clock is tracked while its steps are read (it only moves forward, with
 * events and `advance`), so default occurred_at times and relative times are
 * resolved here and every event is decoded by the real decoder
 * (td_event_decode) before anything runs: a test file with a bad event fails
 * with file:line, not half-way through a run. Every problem is reported (not
 * only the first), each with what to write instead.
 *
 * @locality main thread.
 */
#include "td_testfile.h"

#include <jansson.h>
#include <libconfig.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "td_time.h"

/* Parsing context of one file. */
typedef struct pctx {
    const char *path;
    const td_ruleset *rs;
    td_tzdb *tz;
    FILE *diag;
    size_t errors;
    bool case_ok; /* no problem in the current case so far */
    td_buf *text; /* where the current problems are written */
    /* defaults and state of the current case */
    td_ms start;
    const char *prospect;
    td_ms clock;
    unsigned autoid;
} pctx;

static int line_of(const config_setting_t *s) { return s ? (int)config_setting_source_line(s) : 0; }

static void perr(pctx *p, const config_setting_t *s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void perr(pctx *p, const config_setting_t *s, const char *fmt, ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (p->diag) fprintf(p->diag, "%s:%d: error: %s\n", p->path, line_of(s), msg);
    td_buf_printf(p->text, "%s:%d: error: %s\n", p->path, line_of(s), msg);
    p->errors++;
    p->case_ok = false;
}

static const char *type_word(const config_setting_t *s) {
    switch (config_setting_type(s)) {
    case CONFIG_TYPE_GROUP:
        return "a group { ... }";
    case CONFIG_TYPE_INT:
    case CONFIG_TYPE_INT64:
        return "an integer";
    case CONFIG_TYPE_FLOAT:
        return "a number";
    case CONFIG_TYPE_STRING:
        return "a string";
    case CONFIG_TYPE_BOOL:
        return "a boolean";
    case CONFIG_TYPE_ARRAY:
        return "an array [ ... ]";
    case CONFIG_TYPE_LIST:
        return "a list ( ... )";
    default:
        return "a value";
    }
}

/* Checks that every member of group g is one of `allowed` (NULL-terminated). */
static void check_keys(pctx *p, const config_setting_t *g, const char *what,
                       const char *const *allowed) {
    int n = config_setting_length(g);
    for (int i = 0; i < n; i++) {
        const config_setting_t *m = config_setting_get_elem(g, (unsigned)i);
        const char *name = config_setting_name(m);
        bool ok = false;
        for (const char *const *a = allowed; *a; a++)
            if (name && strcmp(name, *a) == 0) ok = true;
        if (ok) continue;
        char list[512];
        size_t k = 0;
        list[0] = '\0';
        for (const char *const *a = allowed; *a; a++) {
            int w = snprintf(list + k, sizeof list - k, "%s%s", k ? ", " : "", *a);
            if (w < 0 || (size_t)w >= sizeof list - k) break;
            k += (size_t)w;
        }
        perr(p, m, "unknown key '%s' in %s; expected one of: %s", name ? name : "?", what, list);
    }
}

static const char *get_str(pctx *p, const config_setting_t *g, const char *key, bool required,
                           const char *what) {
    const config_setting_t *s = config_setting_get_member(g, key);
    if (!s) {
        if (required) perr(p, g, "%s needs `%s = \"...\";`", what, key);
        return NULL;
    }
    if (config_setting_type(s) != CONFIG_TYPE_STRING) {
        perr(p, s, "`%s` in %s must be a string, not %s", key, what, type_word(s));
        return NULL;
    }
    return config_setting_get_string(s);
}

/* Levenshtein distance, for "did you mean" (short strings only). */
static size_t edit_distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    if (la > 64 || lb > 64) return 99;
    size_t row[65];
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t prev = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t cur = row[j];
            size_t sub = prev + (a[i - 1] != b[j - 1]);
            size_t del = row[j] + 1, ins = row[j - 1] + 1;
            row[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
            prev = cur;
        }
    }
    return row[lb];
}

/* want: 0 any rule, 1 a recommending rule, 2 a guard. */
static const td_rule *find_rule(pctx *p, const config_setting_t *s, const char *id, int want) {
    const td_rule *r = td_ruleset_find(p->rs, id);
    if (r) {
        if (want == 1 && r->guard) {
            perr(p, s, "'%s' is a guard, not a recommending rule (guards go in `by`)", id);
            return NULL;
        }
        if (want == 2 && !r->guard) {
            perr(p, s, "'%s' is not a guard (a guard has `block`); name the guard that blocks", id);
            return NULL;
        }
        return r;
    }
    const td_rule *best = NULL;
    size_t bd = 99;
    for (size_t i = 0; i < td_ruleset_count(p->rs); i++) {
        const td_rule *x = td_ruleset_rule(p->rs, i);
        if ((want == 1 && x->guard) || (want == 2 && !x->guard)) continue;
        size_t d = edit_distance(id, x->id);
        if (d < bd) {
            bd = d;
            best = x;
        }
    }
    if (best && bd <= 3)
        perr(p, s, "unknown %s '%s' in the ruleset; did you mean '%s'?",
             want == 2 ? "guard" : "rule", id, best->id);
    else
        perr(p, s, "unknown %s '%s' in the ruleset (touchd check lists the rules)",
             want == 2 ? "guard" : "rule", id);
    return NULL;
}

/* "+2d" / "-3h" (from the case's start) or an RFC 3339 time. */
static bool is_relative(const char *s) {
    return (s[0] == '+' || s[0] == '-') && s[1] >= '0' && s[1] <= '9';
}

static int parse_rel_time(pctx *p, const char *s, td_ms *out) {
    if (is_relative(s)) {
        td_ms d;
        if (td_duration_parse(s + 1, strlen(s + 1), &d) != TD_OK) return TD_ERR;
        *out = s[0] == '+' ? p->start + d : p->start - d;
        return TD_OK;
    }
    return td_time_parse(s, strlen(s), out);
}

static int get_time(pctx *p, const config_setting_t *g, const char *key, td_ms *out) {
    const char *s = get_str(p, g, key, false, "this group");
    if (!s) return TD_ERR;
    if (parse_rel_time(p, s, out) != TD_OK) {
        perr(p, config_setting_get_member(g, key),
             "`%s = \"%s\"` is not a time: give RFC 3339 (\"2026-11-23T09:00:00Z\") or a delay "
             "from the case's start (\"+2d\", \"+1h30m\", \"-3h\")",
             key, s);
        return TD_ERR;
    }
    return TD_OK;
}

/* ------------------------------------------------------------ the state */

static int scalar_text(const config_setting_t *s, char *buf, size_t cap) {
    switch (config_setting_type(s)) {
    case CONFIG_TYPE_INT:
        snprintf(buf, cap, "%d", config_setting_get_int(s));
        return 0;
    case CONFIG_TYPE_INT64:
        snprintf(buf, cap, "%lld", (long long)config_setting_get_int64(s));
        return 0;
    case CONFIG_TYPE_FLOAT: {
        snprintf(buf, cap, "%.4f", config_setting_get_float(s));
        size_t n = strlen(buf);
        while (n > 1 && buf[n - 1] == '0')
            buf[--n] = '\0';
        if (n && buf[n - 1] == '.') buf[--n] = '\0';
        return 0;
    }
    case CONFIG_TYPE_BOOL:
        snprintf(buf, cap, "%s", config_setting_get_bool(s) ? "true" : "false");
        return 0;
    case CONFIG_TYPE_STRING:
        snprintf(buf, cap, "%s", config_setting_get_string(s));
        return 0;
    default:
        return -1;
    }
}

/* A scalar's flat text, with relative times resolved against the start. */
static int flat_value(pctx *p, const config_setting_t *s, char *buf, size_t cap) {
    if (scalar_text(s, buf, cap) != 0) return -1;
    if (config_setting_type(s) == CONFIG_TYPE_STRING && is_relative(buf)) {
        td_ms t;
        if (parse_rel_time(p, buf, &t) != TD_OK) return -2;
        td_time_format(t, buf, cap);
    }
    return 0;
}

static void set_field(pctx *p, td_state *st, const config_setting_t *s, const char *key,
                      const char *val) {
    char err[160];
    int rc = td_state_set_field(st, key, strlen(key), val, strlen(val), err, sizeof err);
    if (rc == 1)
        perr(p, s,
             "unknown state field '%s' (the flat keys of docs/state.md: e.g. stage, tier, "
             "timezone, email = { sent = 2; }, whatsapp = { consent = true; }, touches)",
             key);
    else if (rc != TD_OK)
        perr(p, s, "%s", err);
}

static void state_table(pctx *p, td_state *st, const config_setting_t *l, bool timers) {
    const char *what = timers ? "timers" : "fired";
    if (config_setting_type(l) != CONFIG_TYPE_LIST) {
        perr(p, l, "`%s` must be a list of groups: %s", what,
             timers ? "timers = ( { rule = \"...\"; due = \"+3d\"; armed_by = \"e-1\"; } );"
                    : "fired = ( { rule = \"...\"; at = \"-1d\"; } );");
        return;
    }
    static const char *const fkeys[] = {"rule", "at", NULL};
    static const char *const tkeys[] = {"rule", "due", "armed_by", NULL};
    for (int i = 0; i < config_setting_length(l); i++) {
        const config_setting_t *g = config_setting_get_elem(l, (unsigned)i);
        if (config_setting_type(g) != CONFIG_TYPE_GROUP) {
            perr(p, g, "each item of `%s` is a group { rule = ...; %s = ...; }", what,
                 timers ? "due" : "at");
            continue;
        }
        check_keys(p, g, what, timers ? tkeys : fkeys);
        const char *rule = get_str(p, g, "rule", true, what);
        td_ms t;
        if (!rule || !find_rule(p, g, rule, 1)) continue;
        if (!config_setting_get_member(g, timers ? "due" : "at")) {
            perr(p, g, "%s item needs `%s = \"...\";` (a time, or a delay like \"-1d\")", what,
                 timers ? "due" : "at");
            continue;
        }
        if (get_time(p, g, timers ? "due" : "at", &t) != TD_OK) continue;
        char key[16 + TD_RULE_ID_MAX], val[TD_TIME_BUF + TD_ID_MAX + 2];
        snprintf(key, sizeof key, "%s.%s", timers ? "timer" : "fired", rule);
        size_t n = td_time_format(t, val, sizeof val);
        if (timers) {
            const char *ab = get_str(p, g, "armed_by", false, what);
            snprintf(val + n, sizeof val - n, " %s", ab ? ab : "setup");
        }
        set_field(p, st, g, key, val);
    }
}

static void state_group(pctx *p, td_state *st, const config_setting_t *g, const char *prefix) {
    for (int i = 0; i < config_setting_length(g); i++) {
        const config_setting_t *m = config_setting_get_elem(g, (unsigned)i);
        const char *name = config_setting_name(m);
        char key[192];
        snprintf(key, sizeof key, "%s%s%s", prefix ? prefix : "", prefix ? "." : "", name);
        if (!prefix && (strcmp(name, "fired") == 0 || strcmp(name, "timers") == 0)) {
            state_table(p, st, m, name[0] == 't');
            continue;
        }
        int type = config_setting_type(m);
        if (type == CONFIG_TYPE_GROUP) {
            state_group(p, st, m, key);
            continue;
        }
        char val[4096];
        if (type == CONFIG_TYPE_ARRAY || type == CONFIG_TYPE_LIST) {
            /* touches = [ "-1h", "-2d" ] and other comma lists */
            size_t n = 0;
            bool bad = false;
            val[0] = '\0';
            for (int k = 0; k < config_setting_length(m) && !bad; k++) {
                char item[128];
                const config_setting_t *e = config_setting_get_elem(m, (unsigned)k);
                if (flat_value(p, e, item, sizeof item) != 0)
                    bad = true;
                else {
                    int w = snprintf(val + n, sizeof val - n, "%s%s", n ? "," : "", item);
                    if (w < 0 || (size_t)w >= sizeof val - n)
                        bad = true;
                    else
                        n += (size_t)w;
                }
            }
            if (bad) {
                perr(p, m, "state field '%s': each item must be a time (or \"-2h\") or a number",
                     key);
                continue;
            }
        } else {
            int rc = flat_value(p, m, val, sizeof val);
            if (rc == -2) {
                perr(p, m, "state field '%s': \"%s\" is not a delay like \"-2h\" or \"+1d\"", key,
                     config_setting_get_string(m));
                continue;
            }
            if (rc != 0) {
                perr(p, m, "state field '%s' cannot be %s", key, type_word(m));
                continue;
            }
        }
        set_field(p, st, m, key, val);
    }
}

/* ------------------------------------------------------------ events */

static json_t *cfg_to_json(const config_setting_t *s) {
    switch (config_setting_type(s)) {
    case CONFIG_TYPE_GROUP: {
        json_t *o = json_object();
        for (int i = 0; o && i < config_setting_length(s); i++) {
            const config_setting_t *m = config_setting_get_elem(s, (unsigned)i);
            json_t *v = cfg_to_json(m);
            if (!v || json_object_set_new(o, config_setting_name(m), v) != 0) {
                json_decref(o);
                return NULL;
            }
        }
        return o;
    }
    case CONFIG_TYPE_ARRAY:
    case CONFIG_TYPE_LIST: {
        json_t *a = json_array();
        for (int i = 0; a && i < config_setting_length(s); i++) {
            json_t *v = cfg_to_json(config_setting_get_elem(s, (unsigned)i));
            if (!v || json_array_append_new(a, v) != 0) {
                json_decref(a);
                return NULL;
            }
        }
        return a;
    }
    case CONFIG_TYPE_INT:
        return json_integer(config_setting_get_int(s));
    case CONFIG_TYPE_INT64:
        return json_integer((json_int_t)config_setting_get_int64(s));
    case CONFIG_TYPE_FLOAT:
        return json_real(config_setting_get_float(s));
    case CONFIG_TYPE_BOOL:
        return json_boolean(config_setting_get_bool(s));
    case CONFIG_TYPE_STRING:
        return json_string(config_setting_get_string(s));
    default:
        return json_null();
    }
}

/* One event (a JSON string or a group) into *ev; advances the case clock. */
static int parse_event(pctx *p, const config_setting_t *s, td_event *ev) {
    json_t *o = NULL;
    int type = config_setting_type(s);
    if (type == CONFIG_TYPE_STRING) {
        json_error_t je;
        const char *txt = config_setting_get_string(s);
        o = json_loads(txt, JSON_REJECT_DUPLICATES, &je);
        if (!o || !json_is_object(o)) {
            perr(p, s,
                 "event is not a JSON object (%s, at column %d of the string); write it "
                 "as a group instead: { type = \"email.opened\"; at = \"+1h\"; }",
                 o ? "not an object" : je.text, je.column);
            json_decref(o);
            return TD_ERR;
        }
        /* a relative occurred_at, as in groups */
        json_t *oa = json_object_get(o, "occurred_at");
        if (json_is_string(oa) && is_relative(json_string_value(oa))) {
            td_ms t;
            if (parse_rel_time(p, json_string_value(oa), &t) != TD_OK) {
                perr(p, s, "occurred_at \"%s\" is not a delay like \"+2d\"", json_string_value(oa));
                json_decref(o);
                return TD_ERR;
            }
            char tb[TD_TIME_BUF];
            td_time_format(t, tb, sizeof tb);
            json_object_set_new(o, "occurred_at", json_string(tb));
        }
    } else if (type == CONFIG_TYPE_GROUP) {
        static const char *const keys[] = {"id",          "type",     "at",   "occurred_at",
                                           "prospect_id", "owner_id", "data", NULL};
        size_t before = p->errors;
        check_keys(p, s, "an event", keys);
        if (!config_setting_get_member(s, "type"))
            perr(p, s, "an event needs `type = \"<channel>.<action>\";` (e.g. \"email.opened\")");
        const config_setting_t *d = config_setting_get_member(s, "data");
        if (d && config_setting_type(d) != CONFIG_TYPE_GROUP)
            perr(p, d, "`data` must be a group: data = { human = true; };");
        if (config_setting_get_member(s, "at") && config_setting_get_member(s, "occurred_at"))
            perr(p, s, "give either `at` or `occurred_at`, not both");
        if (p->errors != before) return TD_ERR;
        o = json_object();
        for (int i = 0; o && i < config_setting_length(s); i++) {
            const config_setting_t *m = config_setting_get_elem(s, (unsigned)i);
            const char *name = config_setting_name(m);
            if (strcmp(name, "at") == 0 || strcmp(name, "occurred_at") == 0) {
                td_ms t;
                if (get_time(p, s, name, &t) != TD_OK) {
                    json_decref(o);
                    return TD_ERR;
                }
                char tb[TD_TIME_BUF];
                td_time_format(t, tb, sizeof tb);
                json_object_set_new(o, "occurred_at", json_string(tb));
                continue;
            }
            json_object_set_new(o, name, cfg_to_json(m));
        }
    } else {
        perr(p, s, "an event is a group { type = \"email.opened\"; ... } or a JSON string, not %s",
             type_word(s));
        return TD_ERR;
    }
    if (!o) {
        perr(p, s, "out of memory");
        return TD_ERR;
    }
    /* data.at (meeting.*) may be a delay from the start too */
    json_t *dat = json_object_get(json_object_get(o, "data"), "at");
    if (json_is_string(dat) && is_relative(json_string_value(dat))) {
        td_ms t;
        if (parse_rel_time(p, json_string_value(dat), &t) != TD_OK) {
            perr(p, s, "data.at \"%s\" is not a delay like \"+7d\"", json_string_value(dat));
            json_decref(o);
            return TD_ERR;
        }
        char tb[TD_TIME_BUF];
        td_time_format(t, tb, sizeof tb);
        json_object_set_new(json_object_get(o, "data"), "at", json_string(tb));
    }
    /* defaults: id, prospect_id, occurred_at = the case's clock */
    p->autoid++;
    if (!json_object_get(o, "id")) {
        char id[32];
        snprintf(id, sizeof id, "e-%u", p->autoid);
        json_object_set_new(o, "id", json_string(id));
    }
    if (!json_object_get(o, "prospect_id"))
        json_object_set_new(o, "prospect_id", json_string(p->prospect));
    if (!json_object_get(o, "occurred_at")) {
        char tb[TD_TIME_BUF];
        td_time_format(p->clock, tb, sizeof tb);
        json_object_set_new(o, "occurred_at", json_string(tb));
    }
    char *txt = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(12));
    json_decref(o);
    if (!txt) {
        perr(p, s, "out of memory");
        return TD_ERR;
    }
    td_event_error err;
    int rc = td_event_decode(txt, strlen(txt), ev, &err);
    free(txt);
    if (rc != TD_OK) {
        perr(p, s, "event rejected by the decoder: %s%s%s", err.field[0] ? err.field : "",
             err.field[0] ? ": " : "", err.reason);
        return TD_ERR;
    }
    if (strcmp(ev->prospect_id, p->prospect) != 0) {
        perr(p, s,
             "event for prospect '%s', but the case's prospect is '%s': a case follows one "
             "prospect",
             ev->prospect_id, p->prospect);
        return TD_ERR;
    }
    if (ev->occurred_at > p->clock) p->clock = ev->occurred_at;
    return TD_OK;
}

/* A single event, or a list of them, appended to (*v, *n). */
static void parse_events(pctx *p, const config_setting_t *s, bool list, td_event **v, size_t *n) {
    int cnt = 1;
    if (list) {
        if (config_setting_type(s) != CONFIG_TYPE_LIST &&
            config_setting_type(s) != CONFIG_TYPE_ARRAY) {
            perr(p, s, "`%s` must be a list of events: ( { type = \"...\"; }, ... )",
                 config_setting_name(s));
            return;
        }
        cnt = config_setting_length(s);
    }
    if (cnt == 0) return;
    td_event *nv = realloc(*v, (*n + (size_t)cnt) * sizeof *nv);
    if (!nv) {
        perr(p, s, "out of memory");
        return;
    }
    *v = nv;
    for (int i = 0; i < cnt; i++) {
        const config_setting_t *e = list ? config_setting_get_elem(s, (unsigned)i) : s;
        if (parse_event(p, e, &nv[*n]) == TD_OK) (*n)++;
    }
}

/* ------------------------------------------------------------ expectations */

static bool grow(void **v, size_t n, size_t size) {
    void *nv = realloc(*v, (n + 1) * size);
    if (!nv) return false;
    *v = nv;
    return true;
}

/* Expected recommendations (`expect`), or the pending ones of a plan
 * (`expect_plan`: expires_at allowed too), appended to (*v, *n). */
static void parse_recs(pctx *p, const config_setting_t *s, bool plan, tf_rec_exp **v, size_t *n) {
    const char *what = plan ? "an expected pending recommendation" : "an expected recommendation";
    int type = config_setting_type(s);
    int cnt =
        (type == CONFIG_TYPE_LIST || type == CONFIG_TYPE_ARRAY) ? config_setting_length(s) : 1;
    for (int i = 0; i < cnt; i++) {
        const config_setting_t *e = (type == CONFIG_TYPE_LIST || type == CONFIG_TYPE_ARRAY)
                                        ? config_setting_get_elem(s, (unsigned)i)
                                        : s;
        tf_rec_exp x = {.channel = TD_CH_NONE,
                        .not_before = TD_MS_MISSING,
                        .expires_at = TD_MS_MISSING,
                        .line = line_of(e)};
        const char *rule = NULL;
        if (config_setting_type(e) == CONFIG_TYPE_STRING) {
            rule = config_setting_get_string(e);
        } else if (config_setting_type(e) == CONFIG_TYPE_GROUP) {
            static const char *const keys[] = {"rule", "channel", "touch", "not_before", NULL};
            static const char *const pkeys[] = {"rule",       "channel",    "touch",
                                                "not_before", "expires_at", NULL};
            check_keys(p, e, what, plan ? pkeys : keys);
            rule = get_str(p, e, "rule", true, what);
            const char *ch = get_str(p, e, "channel", false, what);
            if (ch) {
                x.channel = td_channel_parse(ch, strlen(ch));
                if (x.channel == TD_CH_NONE)
                    perr(p, config_setting_get_member(e, "channel"),
                         "unknown channel '%s' (email, whatsapp, sms, linkedin, call, meeting, "
                         "gift)",
                         ch);
            }
            const char *touch = get_str(p, e, "touch", false, what);
            if (touch) x.touch = strdup(touch);
            if (config_setting_get_member(e, "not_before"))
                get_time(p, e, "not_before", &x.not_before);
            if (plan && config_setting_get_member(e, "expires_at"))
                get_time(p, e, "expires_at", &x.expires_at);
        } else {
            perr(p, e,
                 "%s is a group { rule = \"...\"; channel = \"...\"; } or a rule id string, not %s",
                 what, type_word(e));
            continue;
        }
        if (!rule || !(x.rule = find_rule(p, e, rule, 1)) || !grow((void **)v, *n, sizeof x)) {
            free(x.touch);
            continue;
        }
        (*v)[(*n)++] = x;
    }
}

/* A withdrawal reason by name, or -1. */
static int parse_reason_name(const char *s) {
    for (int r = TD_WDR_REPLIED; r <= TD_WDR_EXPIRED; r++)
        if (strcmp(s, td_wd_reason_name((td_wd_reason)r)) == 0) return r;
    return -1;
}

/* expect_withdrawn: rule id strings or { rule = "..."; reason = "..."; }. */
static void parse_wds(pctx *p, tf_step *st, const config_setting_t *s) {
    int type = config_setting_type(s);
    bool many = type == CONFIG_TYPE_LIST || type == CONFIG_TYPE_ARRAY;
    int cnt = many ? config_setting_length(s) : 1;
    for (int i = 0; i < cnt; i++) {
        const config_setting_t *e = many ? config_setting_get_elem(s, (unsigned)i) : s;
        tf_wd_exp x = {.reason = -1, .line = line_of(e)};
        const char *rule = NULL;
        if (config_setting_type(e) == CONFIG_TYPE_STRING) {
            rule = config_setting_get_string(e);
        } else if (config_setting_type(e) == CONFIG_TYPE_GROUP) {
            static const char *const keys[] = {"rule", "reason", NULL};
            check_keys(p, e, "an expected withdrawal", keys);
            rule = get_str(p, e, "rule", true, "an expected withdrawal");
            const char *r = get_str(p, e, "reason", false, "an expected withdrawal");
            if (r && (x.reason = parse_reason_name(r)) < 0) {
                perr(p, config_setting_get_member(e, "reason"),
                     "unknown withdrawal reason '%s' (replied, opted_out, bounced, superseded, "
                     "stage, rule, expired)",
                     r);
                continue;
            }
        } else {
            perr(p, e,
                 "an expected withdrawal is a group { rule = \"...\"; reason = \"replied\"; } or "
                 "a rule id string, not %s",
                 type_word(e));
            continue;
        }
        if (!rule || !(x.rule = find_rule(p, e, rule, 1)) ||
            !grow((void **)&st->wds, st->nwds, sizeof x))
            continue;
        st->wds[st->nwds++] = x;
    }
}

/*
 * A list expectation of group g and its "nothing" flag (`expect` and
 * `expect_none`, `expect_withdrawn` and `expect_no_withdrawal`, `expect_plan`
 * and `expect_plan_empty`): *check is set when either is given (true), *line
 * to its line. @returns the list's setting, or NULL when it is not given.
 */
static const config_setting_t *parse_exp_pair(pctx *p, const config_setting_t *g, const char *list,
                                              const char *nothing, bool *check, int *line) {
    const config_setting_t *ex = config_setting_get_member(g, list);
    const config_setting_t *none = config_setting_get_member(g, nothing);
    if (ex && none) perr(p, none, "give `%s` or `%s`, not both", list, nothing);
    if (none) {
        if (config_setting_type(none) != CONFIG_TYPE_BOOL || !config_setting_get_bool(none))
            perr(p, none, "write `%s = true;` (or leave it out)", nothing);
        else {
            *check = true;
            if (line) *line = line_of(none);
        }
    }
    if (ex) {
        *check = true;
        if (line) *line = line_of(ex);
    }
    return ex;
}

/* `expect_plan` / `expect_plan_empty` of group g (a step or a case) into *pl. */
static void parse_plan(pctx *p, const config_setting_t *g, tf_plan_exp *pl) {
    const config_setting_t *ex =
        parse_exp_pair(p, g, "expect_plan", "expect_plan_empty", &pl->check, &pl->line);
    if (ex) parse_recs(p, ex, true, &pl->v, &pl->n);
}

static void plan_free(tf_plan_exp *pl) {
    for (size_t i = 0; i < pl->n; i++)
        free(pl->v[i].touch);
    free(pl->v);
}

static int parse_outcome_name(const char *s) {
    for (int o = TD_OUT_FIRED; o <= TD_OUT_ERROR; o++)
        if (strcmp(s, td_outcome_name((td_outcome)o)) == 0) return o;
    return -1;
}

/* expect_blocked (outcome fixed) or expect_outcome (outcome given). */
static void parse_outs(pctx *p, tf_step *st, const config_setting_t *s, bool blocked) {
    int type = config_setting_type(s);
    bool many = type == CONFIG_TYPE_LIST;
    int cnt = many ? config_setting_length(s) : 1;
    const char *what = blocked ? "expect_blocked" : "expect_outcome";
    for (int i = 0; i < cnt; i++) {
        const config_setting_t *e = many ? config_setting_get_elem(s, (unsigned)i) : s;
        if (config_setting_type(e) != CONFIG_TYPE_GROUP) {
            perr(p, e, "%s is a group { rule = \"...\"; %s } (or a list of them), not %s", what,
                 blocked ? "by = \"guard.id\";" : "outcome = \"cooldown\";", type_word(e));
            continue;
        }
        static const char *const bkeys[] = {"rule", "by", NULL};
        static const char *const okeys[] = {"rule", "outcome", "by", "until", NULL};
        check_keys(p, e, what, blocked ? bkeys : okeys);
        tf_out_exp x = {.outcome = TD_OUT_BLOCKED, .until = TD_MS_MISSING, .line = line_of(e)};
        const char *rule = get_str(p, e, "rule", true, what);
        if (!rule || !(x.rule = find_rule(p, e, rule, 1))) continue;
        if (!blocked) {
            const char *o = get_str(p, e, "outcome", true, what);
            if (!o) continue;
            int oc = parse_outcome_name(o);
            if (oc < 0) {
                perr(p, config_setting_get_member(e, "outcome"),
                     "unknown outcome '%s' (fired, not_matched, cooldown, blocked, lost_group, "
                     "armed, error)",
                     o);
                continue;
            }
            x.outcome = (td_outcome)oc;
            if (config_setting_get_member(e, "until") && get_time(p, e, "until", &x.until) != TD_OK)
                continue;
        }
        const char *by = get_str(p, e, "by", false, what);
        if (by) {
            bool guard = blocked || x.outcome == TD_OUT_BLOCKED;
            if (!guard && x.outcome != TD_OUT_LOST_GROUP) {
                perr(p, config_setting_get_member(e, "by"),
                     "`by` applies to the outcomes blocked (a guard) and lost_group (the winner)");
                continue;
            }
            if (!(x.by = find_rule(p, config_setting_get_member(e, "by"), by, guard ? 2 : 1)))
                continue;
        }
        if (!grow((void **)&st->outs, st->nouts, sizeof x)) continue;
        st->outs[st->nouts++] = x;
    }
}

static void parse_nots(pctx *p, tf_step *st, const config_setting_t *s) {
    int type = config_setting_type(s);
    bool many = type == CONFIG_TYPE_ARRAY || type == CONFIG_TYPE_LIST;
    int cnt = many ? config_setting_length(s) : 1;
    for (int i = 0; i < cnt; i++) {
        const config_setting_t *e = many ? config_setting_get_elem(s, (unsigned)i) : s;
        if (config_setting_type(e) != CONFIG_TYPE_STRING) {
            perr(p, e, "expect_not lists rule ids: expect_not = [ \"rule.a\", \"rule.b\" ];");
            continue;
        }
        const td_rule *r = find_rule(p, e, config_setting_get_string(e), 1);
        if (!r || !grow((void **)&st->nots, st->nnots, sizeof *st->nots)) continue;
        st->nots[st->nnots++] = r;
    }
}

/* ------------------------------------------------------------ steps, cases */

static void parse_step(pctx *p, const config_setting_t *s, tf_step *st) {
    memset(st, 0, sizeof *st);
    st->line = line_of(s);
    st->advance_to = TD_MS_MISSING;
    if (config_setting_type(s) != CONFIG_TYPE_GROUP) {
        perr(p, s, "a step is a group { event = { ... }; expect = ( ... ); }, not %s",
             type_word(s));
        return;
    }
    static const char *const keys[] = {"event",
                                       "events",
                                       "advance",
                                       "advance_to",
                                       "expect",
                                       "expect_none",
                                       "expect_blocked",
                                       "expect_outcome",
                                       "expect_not",
                                       "expect_withdrawn",
                                       "expect_no_withdrawal",
                                       "expect_plan",
                                       "expect_plan_empty",
                                       "doc",
                                       NULL};
    check_keys(p, s, "a step", keys);
    const config_setting_t *ev = config_setting_get_member(s, "event");
    const config_setting_t *evs = config_setting_get_member(s, "events");
    const config_setting_t *adv = config_setting_get_member(s, "advance");
    const config_setting_t *advto = config_setting_get_member(s, "advance_to");
    int actions = !!ev + !!evs + !!adv + !!advto;
    if (actions != 1) {
        perr(p, s,
             "a step does exactly one thing: `event`, `events`, `advance` (\"72h\") or "
             "`advance_to` (a time); this one has %d",
             actions);
        return;
    }
    if (ev) parse_events(p, ev, false, &st->events, &st->nevents);
    if (evs) parse_events(p, evs, true, &st->events, &st->nevents);
    if (adv) {
        const char *d = get_str(p, s, "advance", false, "a step");
        td_ms dur;
        if (d && (td_duration_parse(d, strlen(d), &dur) != TD_OK || dur <= 0))
            perr(p, adv, "`advance = \"%s\"` is not a positive duration (\"30m\", \"72h\", \"3d\")",
                 d);
        else if (d) {
            st->advance_to = p->clock + dur;
            p->clock = st->advance_to;
        }
    }
    if (advto) {
        td_ms t;
        if (get_time(p, s, "advance_to", &t) == TD_OK) {
            if (t < p->clock) {
                char tb[TD_TIME_BUF];
                td_time_format(p->clock, tb, sizeof tb);
                perr(p, advto, "advance_to goes back in time: the case's clock is already at %s",
                     tb);
            } else {
                st->advance_to = t;
                p->clock = t;
            }
        }
    }
    const config_setting_t *x;
    if ((x = parse_exp_pair(p, s, "expect", "expect_none", &st->check_recs, NULL)))
        parse_recs(p, x, false, &st->recs, &st->nrecs);
    if ((x = config_setting_get_member(s, "expect_blocked"))) parse_outs(p, st, x, true);
    if ((x = config_setting_get_member(s, "expect_outcome"))) parse_outs(p, st, x, false);
    if ((x = config_setting_get_member(s, "expect_not"))) parse_nots(p, st, x);
    if ((x = parse_exp_pair(p, s, "expect_withdrawn", "expect_no_withdrawal", &st->check_wds,
                            NULL)))
        parse_wds(p, st, x);
    parse_plan(p, s, &st->plan);
}

static void step_free(tf_step *st) {
    for (size_t i = 0; i < st->nrecs; i++)
        free(st->recs[i].touch);
    free(st->recs);
    free(st->outs);
    free(st->nots);
    free(st->wds);
    plan_free(&st->plan);
    free(st->events);
}

static void case_free(tf_case *c) {
    free(c->name);
    td_state_free(&c->init);
    free(c->setup);
    for (size_t i = 0; i < c->nsteps; i++)
        step_free(&c->steps[i]);
    free(c->steps);
    plan_free(&c->plan);
}

static bool valid_prospect(const char *s) {
    size_t n = strlen(s);
    if (n == 0 || n > TD_ID_MAX) return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] == 0x7f) return false;
    return true;
}

/* Parses one case into *c. @returns true when it has no problem. */
static bool parse_case(pctx *p, const config_setting_t *g, tf_case *c, td_ms fstart,
                       const char *fprospect) {
    memset(c, 0, sizeof *c);
    p->case_ok = true;
    c->line = line_of(g);
    static const char *const keys[] = {
        "name",  "doc",   "start",       "prospect",          "state",
        "setup", "steps", "expect_plan", "expect_plan_empty", NULL};
    check_keys(p, g, "a case", keys);
    const char *name = get_str(p, g, "name", true, "a case");
    c->name = strdup(name ? name : "?");
    p->start = fstart;
    if (config_setting_get_member(g, "start")) {
        const char *s = get_str(p, g, "start", false, "a case");
        if (s && td_time_parse(s, strlen(s), &p->start) != TD_OK)
            perr(p, config_setting_get_member(g, "start"),
                 "start = \"%s\" is not an RFC 3339 time (e.g. \"2026-11-23T09:00:00Z\")", s);
    }
    c->start = p->start;
    p->clock = p->start;
    p->autoid = 0;
    p->prospect = fprospect;
    const char *pr = get_str(p, g, "prospect", false, "a case");
    if (pr) {
        if (valid_prospect(pr))
            p->prospect = pr;
        else
            perr(p, config_setting_get_member(g, "prospect"),
                 "prospect must be 1..128 printable bytes");
    }
    td_state_init(&c->init, p->prospect);
    const config_setting_t *st = config_setting_get_member(g, "state");
    if (st) {
        if (config_setting_type(st) != CONFIG_TYPE_GROUP)
            perr(p, st,
                 "`state` is a group: state = { stage = \"proposal\"; email = { sent = 2; }; };");
        else
            state_group(p, &c->init, st, NULL);
        /* a state cannot move the clock backwards: events happen after it */
    }
    const config_setting_t *setup = config_setting_get_member(g, "setup");
    if (setup) parse_events(p, setup, true, &c->setup, &c->nsetup);
    const config_setting_t *steps = config_setting_get_member(g, "steps");
    if (!steps) {
        perr(p, g, "case '%s' has no `steps = ( { event = ...; expect = ...; } );`", c->name);
    } else if (config_setting_type(steps) != CONFIG_TYPE_LIST) {
        perr(p, steps, "`steps` is a list: steps = ( { ... }, { ... } );");
    } else if (config_setting_length(steps) == 0) {
        perr(p, steps, "case '%s' has an empty `steps` list", c->name);
    } else {
        size_t n = (size_t)config_setting_length(steps);
        c->steps = calloc(n, sizeof *c->steps);
        if (!c->steps) {
            perr(p, steps, "out of memory");
        } else {
            for (size_t i = 0; i < n; i++)
                parse_step(p, config_setting_get_elem(steps, (unsigned)i), &c->steps[c->nsteps++]);
            /* the case's own expect_plan: the plan after its last step */
            parse_plan(p, g, &c->plan);
            bool checks = c->plan.check;
            for (size_t i = 0; i < n; i++)
                if (c->steps[i].check_recs || c->steps[i].nouts || c->steps[i].nnots ||
                    c->steps[i].check_wds || c->steps[i].plan.check)
                    checks = true;
            if (!checks && p->case_ok)
                perr(p, steps,
                     "case '%s' expects nothing: add `expect`, `expect_none`, "
                     "`expect_blocked`, `expect_outcome`, `expect_not`, `expect_withdrawn`, "
                     "`expect_no_withdrawal`, `expect_plan` or `expect_plan_empty` to a step",
                     c->name);
        }
    }
    return p->case_ok;
}

static char *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 8192, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        if (n + 1 >= cap) {
            char *nb = cap < (16u << 20) ? realloc(buf, cap * 2) : NULL;
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
        size_t r = fread(buf + n, 1, cap - n - 1, f);
        n += r;
        if (r == 0) break;
    }
    if (buf && ferror(f)) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) {
        buf[n] = '\0';
        *len = n;
    }
    return buf;
}

static int file_fail(tf_file *f, FILE *diag, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int file_fail(tf_file *f, FILE *diag, const char *fmt, ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (diag) fprintf(diag, "%s\n", msg);
    td_buf b = {0};
    td_buf_printf(&b, "%s\n", msg);
    f->file_text = b.p;
    f->errors = f->file_errors = 1;
    return TD_ERR;
}

int tf_file_parse(tf_file *f, const char *path, const td_ruleset *rs, const char *filter,
                  td_tzdb *tz, FILE *diag) {
    memset(f, 0, sizeof *f);
    f->path = strdup(path);
    pctx p = {.path = path,
              .rs = rs,
              .tz = tz,
              .diag = diag,
              .start = TF_DEFAULT_START,
              .prospect = TF_DEFAULT_PROSPECT};
    size_t len = 0;
    char *text = read_all(path, &len);
    if (!text) {
        return file_fail(f, diag, "%s:0: error: cannot read the test file", path);
    }
    if (strlen(text) != len) {
        free(text);
        return file_fail(f, diag, "%s:0: error: the test file contains a NUL byte", path);
    }
    config_t cfg;
    config_init(&cfg);
    if (config_read_string(&cfg, text) != CONFIG_TRUE) {
        file_fail(f, diag,
                  "%s:%d: error: %s (libconfig syntax: `key = value;`, groups { }, lists ( ), "
                  "strings in double quotes)",
                  path, config_error_line(&cfg), config_error_text(&cfg));
        config_destroy(&cfg);
        free(text);
        return TD_ERR;
    }
    free(text);
    const config_setting_t *root = config_root_setting(&cfg);
    size_t case_errors = 0;
    td_buf ftext = {0};
    p.text = &ftext;
    static const char *const keys[] = {"start",       "prospect",         "doc", "cases",
                                       "extra_rules", "extra_rules_file", NULL};
    check_keys(&p, root, "a test file (top level)", keys);
    td_ms fstart = TF_DEFAULT_START;
    const char *s = get_str(&p, root, "start", false, "the file");
    if (s && td_time_parse(s, strlen(s), &fstart) != TD_OK)
        perr(&p, config_setting_get_member(root, "start"),
             "start = \"%s\" is not an RFC 3339 time (e.g. \"2026-11-23T09:00:00Z\")", s);
    const char *fprospect = TF_DEFAULT_PROSPECT;
    const char *pr = get_str(&p, root, "prospect", false, "the file");
    if (pr) {
        if (valid_prospect(pr))
            fprospect = pr;
        else
            perr(&p, config_setting_get_member(root, "prospect"),
                 "prospect must be 1..128 printable bytes");
    }
    const config_setting_t *cases = config_setting_get_member(root, "cases");
    if (!cases || config_setting_type(cases) != CONFIG_TYPE_LIST) {
        perr(&p, cases ? cases : root,
             "a test file needs `cases = ( { name = \"...\"; steps = ( ... ); } );`");
    } else {
        size_t n = (size_t)config_setting_length(cases);
        f->cases = calloc(n ? n : 1, sizeof *f->cases);
        for (size_t i = 0; f->cases && i < n; i++) {
            const config_setting_t *g = config_setting_get_elem(cases, (unsigned)i);
            if (config_setting_type(g) != CONFIG_TYPE_GROUP) {
                perr(&p, g, "each case is a group { name = \"...\"; steps = ( ... ); }");
                continue;
            }
            const char *nm = NULL;
            config_setting_lookup_string(g, "name", &nm);
            size_t before = p.errors;
            td_buf ctext = {0};
            p.text = &ctext;
            if (filter && (!nm || !strstr(nm, filter))) continue;
            tf_case *c = &f->cases[f->ncases];
            bool ok = parse_case(&p, g, c, fstart, fprospect);
            for (size_t k = 0; ok && k < f->ncases; k++)
                if (strcmp(f->cases[k].name, c->name) == 0) {
                    perr(&p, g,
                         "a second case named '%s' (the first is at line %d): names are "
                         "unique in a file",
                         c->name, f->cases[k].line);
                    ok = false;
                }
            if (ok) {
                f->ncases++;
            } else {
                tf_broken *nb = realloc(f->broken, (f->nbroken + 1) * sizeof *nb);
                if (nb) {
                    f->broken = nb;
                    f->broken[f->nbroken].name = c->name;
                    f->broken[f->nbroken++].errors = ctext.p;
                    c->name = NULL;
                    ctext.p = NULL;
                }
                case_free(c);
            }
            td_buf_free(&ctext);
            p.text = &ftext;
            case_errors += p.errors - before;
        }
    }
    config_destroy(&cfg);
    f->errors = p.errors;
    f->file_errors = p.errors - case_errors;
    f->file_text = ftext.p;
    return TD_OK;
}

void tf_file_free(tf_file *f) {
    if (!f) return;
    for (size_t i = 0; i < f->ncases; i++)
        case_free(&f->cases[i]);
    free(f->cases);
    for (size_t i = 0; i < f->nbroken; i++) {
        free(f->broken[i].name);
        free(f->broken[i].errors);
    }
    free(f->file_text);
    free(f->broken);
    free(f->path);
    memset(f, 0, sizeof *f);
}

int tf_file_extra_rules(const char *path, char **text, size_t *len, char **name, char *err,
                        size_t errcap) {
    *text = NULL;
    *name = NULL;
    *len = 0;
    size_t flen = 0;
    char *ftext = read_all(path, &flen);
    if (!ftext) return TD_OK; /* reported by tf_file_parse */
    config_t cfg;
    config_init(&cfg);
    int rc = TD_OK;
    if (config_read_string(&cfg, ftext) == CONFIG_TRUE) {
        const config_setting_t *root = config_root_setting(&cfg);
        const config_setting_t *inl = config_setting_get_member(root, "extra_rules");
        const config_setting_t *fil = config_setting_get_member(root, "extra_rules_file");
        if (inl && fil) {
            snprintf(err, errcap,
                     "%s:%d: error: give `extra_rules` or `extra_rules_file`, not both", path,
                     line_of(fil));
            rc = TD_ERR;
        } else if ((inl && config_setting_type(inl) != CONFIG_TYPE_STRING) ||
                   (fil && config_setting_type(fil) != CONFIG_TYPE_STRING)) {
            snprintf(err, errcap, "%s:%d: error: `%s` is a string", path, line_of(inl ? inl : fil),
                     inl ? "extra_rules" : "extra_rules_file");
            rc = TD_ERR;
        } else if (inl) {
            *text = strdup(config_setting_get_string(inl));
            *len = *text ? strlen(*text) : 0;
            size_t n = strlen(path) + 32;
            *name = malloc(n);
            if (*name) snprintf(*name, n, "%s(extra_rules)", path);
            /* diagnostics count lines from the start of the string */
        } else if (fil) {
            const char *rel = config_setting_get_string(fil);
            const char *slash = strrchr(path, '/');
            size_t dl = slash ? (size_t)(slash - path) + 1 : 0;
            size_t n = dl + strlen(rel) + 1;
            *name = malloc(n);
            if (*name) {
                if (rel[0] == '/')
                    snprintf(*name, n, "%s", rel);
                else
                    snprintf(*name, n, "%.*s%s", (int)dl, path, rel);
                *text = read_all(*name, len);
                if (!*text) {
                    snprintf(err, errcap, "%s:%d: error: cannot read extra_rules_file '%s'", path,
                             line_of(fil), *name);
                    rc = TD_ERR;
                }
            }
        }
    }
    config_destroy(&cfg);
    free(ftext);
    if (rc != TD_OK) {
        free(*text);
        free(*name);
        *text = *name = NULL;
    }
    return rc;
}
