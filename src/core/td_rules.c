/*
 * td_rules.c - compiles rules files (libconfig text) into an immutable ruleset.
 *
 * libconfig parses the structure; this module checks every key of every rule,
 * compiles the expressions (td_expr), and turns every problem into a td_diag
 * with file:line:col, the source line and a caret. libconfig reports a
 * setting's line but not its column, so expression diagnostics are positioned
 * by re-reading the source: from the setting's line we find its string
 * literal(s) and map each byte of the decoded string back to the raw source
 * (escapes and "a" "b" concatenation included). All errors of all files are
 * collected: compilation never stops at the first one.
 *
 * The ruleset hash is sha256 over (name, length, bytes) of every source in the
 * order given (td_load_rules sorts by name), so the same files always give the
 * same hash, whatever machine loads them.
 *
 * @locality any thread; the result is immutable.
 */
#include "td_rules.h"

#include <ctype.h>
#include <libconfig.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "td_calendar.h"
#include "td_time.h"

/* Bit of td_rule.on for guards that also judge timer triggers. */
#define TD_ON_TIMER (1ULL << 63)

struct td_ruleset {
    td_calendar *own_calendar; /* empty: weekends only, until one is attached */
    td_rule *rules;
    size_t n;
    char **files; /* names, owned */
    size_t nfiles;
    td_settings settings;
    char hash[8 + 64 + 1];
    /* per event type: triggered non-guard rules in ruleset order */
    const td_rule **by_type[TD_EV__COUNT];
    size_t nby_type[TD_EV__COUNT];
    const td_rule **guards;
    size_t nguards;
    /* id -> rule, open addressing on td_hash64 (timer triggers name their
     * rule by id; a linear strcmp over the ruleset was 2% of a step) */
    const td_rule **by_id;
    size_t by_id_cap;
};

/* ---- diagnostics ---- */

static char *xstrndup(const char *s, size_t n) {
    char *p = malloc(n + 1);
    if (!p) return NULL;
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

static char *xstrdup(const char *s) { return xstrndup(s, strlen(s)); }

/* The text of line `line` (1-based) of src, without its newline. */
static char *source_line(const char *src, size_t len, int line) {
    if (!src || line < 1) return NULL;
    size_t i = 0;
    for (int l = 1; l < line && i < len; i++)
        if (src[i] == '\n') l++;
    if (i > len) return NULL;
    size_t j = i;
    while (j < len && src[j] != '\n' && src[j] != '\r')
        j++;
    return xstrndup(src + i, j - i);
}

static void diag_add(td_diags *d, td_severity sev, const char *code, const char *file,
                     const td_source *src, int line, int col, int caret_len, const char *fmt, ...)
    __attribute__((format(printf, 9, 10)));

static void diag_add(td_diags *d, td_severity sev, const char *code, const char *file,
                     const td_source *src, int line, int col, int caret_len, const char *fmt, ...) {
    if (!d) return;
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 16;
        td_diag *v = realloc(d->v, cap * sizeof(*v));
        if (!v) return; /* out of memory: the diagnostic is lost, the error count is not */
        d->v = v;
        d->cap = cap;
    }
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    td_diag *x = &d->v[d->n++];
    memset(x, 0, sizeof *x);
    x->severity = sev;
    td_strlcpy(x->code, code, sizeof x->code);
    x->file = xstrdup(file ? file : "<rules>");
    x->line = line;
    x->col = col;
    x->msg = xstrdup(msg);
    x->source = (src && line > 0) ? source_line(src->text, src->len, line) : NULL;
    x->caret_len = caret_len > 0 ? caret_len : 1;
    if (sev == TD_SEV_ERROR)
        d->errors++;
    else
        d->warnings++;
}

void td_diags_free(td_diags *d) {
    if (!d) return;
    for (size_t i = 0; i < d->n; i++) {
        free(d->v[i].file);
        free(d->v[i].msg);
        free(d->v[i].source);
    }
    free(d->v);
    memset(d, 0, sizeof *d);
}

char *td_diag_format(const td_diag *d) {
    size_t cap = 256 + strlen(d->file) + strlen(d->msg) +
                 (d->source ? 2 * strlen(d->source) + (size_t)d->caret_len + 64 : 0);
    char *out = malloc(cap);
    if (!out) return NULL;
    int n;
    const char *sev = d->severity == TD_SEV_ERROR ? "error" : "warning";
    if (d->line > 0 && d->col > 0)
        n = snprintf(out, cap, "%s:%d:%d: %s %s: %s", d->file, d->line, d->col, sev, d->code,
                     d->msg);
    else if (d->line > 0)
        n = snprintf(out, cap, "%s:%d: %s %s: %s", d->file, d->line, sev, d->code, d->msg);
    else
        n = snprintf(out, cap, "%s: %s %s: %s", d->file, sev, d->code, d->msg);
    if (n < 0) n = 0;
    size_t len = (size_t)n < cap ? (size_t)n : cap - 1;
    if (d->source && d->line > 0) {
        char num[16];
        int w = snprintf(num, sizeof num, "%d", d->line);
        len += (size_t)snprintf(out + len, cap - len, "\n %s | %s\n %*s | ", num, d->source, w, "");
        /* the caret line keeps tabs where the source has them, so it aligns */
        int col = d->col > 0 ? d->col : 1;
        for (int i = 1; i < col && len + 2 < cap; i++) {
            char c = (size_t)(i - 1) < strlen(d->source) ? d->source[i - 1] : ' ';
            out[len++] = c == '\t' ? '\t' : ' ';
        }
        for (int i = 0; i < d->caret_len && len + 2 < cap; i++)
            out[len++] = i == 0 ? '^' : '~';
        out[len] = '\0';
    }
    return out;
}

/* ---- mapping decoded string offsets back to source positions ---- */

typedef struct strmap {
    int *line, *col; /* per decoded byte */
    size_t n;
    int end_line, end_col; /* position just after the last byte */
} strmap;

static void strmap_free(strmap *m) {
    free(m->line);
    free(m->col);
    memset(m, 0, sizeof *m);
}

/* Finds `name` followed by '=' or ':' at or after line `line` and maps the
 * string literal(s) of its value. Returns false when it cannot be found (the
 * caller then points at the setting's line). */
static bool strmap_build(const td_source *src, int line, const char *name, strmap *m) {
    memset(m, 0, sizeof *m);
    if (!src || line < 1) return false;
    const char *s = src->text;
    size_t len = src->len, i = 0;
    int l = 1, c = 1;
    for (; i < len && l < line; i++)
        if (s[i] == '\n') l++;
    size_t nlen = strlen(name);
    /* scan forward (bounded to a few lines) for `name <ws> [=:]` */
    size_t start = (size_t)-1;
    int sl = l, sc = 1;
    for (size_t j = i; j < len && l <= line + 3; j++) {
        if (s[j] == '\n') {
            l++;
            c = 1;
            continue;
        }
        if (j + nlen <= len && memcmp(s + j, name, nlen) == 0 &&
            (j == 0 || !(isalnum((unsigned char)s[j - 1]) || s[j - 1] == '_'))) {
            size_t k = j + nlen;
            while (k < len && (s[k] == ' ' || s[k] == '\t'))
                k++;
            if (k < len && (s[k] == '=' || s[k] == ':')) {
                start = k + 1;
                sl = l;
                sc = c + (int)(start - j);
                break;
            }
        }
        c++;
    }
    if (start == (size_t)-1) return false;
    size_t cap = 64;
    m->line = malloc(cap * sizeof(int));
    m->col = malloc(cap * sizeof(int));
    if (!m->line || !m->col) {
        strmap_free(m);
        return false;
    }
    l = sl;
    c = sc;
    size_t j = start;
    bool any = false;
    for (;;) {
        /* skip white space and comments between literals */
        while (j < len) {
            if (s[j] == '\n') {
                l++;
                c = 1;
                j++;
            } else if (s[j] == ' ' || s[j] == '\t' || s[j] == '\r') {
                c++;
                j++;
            } else if (s[j] == '#' || (s[j] == '/' && j + 1 < len && s[j + 1] == '/')) {
                while (j < len && s[j] != '\n')
                    j++;
            } else if (s[j] == '/' && j + 1 < len && s[j + 1] == '*') {
                j += 2;
                c += 2;
                while (j + 1 < len && !(s[j] == '*' && s[j + 1] == '/')) {
                    if (s[j] == '\n') {
                        l++;
                        c = 1;
                    } else
                        c++;
                    j++;
                }
                j += 2;
                c += 2;
            } else
                break;
        }
        if (j >= len || s[j] != '"') break;
        any = true;
        j++;
        c++;
        while (j < len && s[j] != '"' && s[j] != '\n') {
            int bl = l, bc = c;
            if (s[j] == '\\' && j + 1 < len) {
                if (s[j + 1] == 'x' && j + 3 < len) {
                    j += 4;
                    c += 4;
                } else {
                    j += 2;
                    c += 2;
                }
            } else {
                j++;
                c++;
            }
            if (m->n == cap) {
                cap *= 2;
                int *nl = realloc(m->line, cap * sizeof(int));
                if (!nl) {
                    strmap_free(m);
                    return false;
                }
                m->line = nl;
                int *nc = realloc(m->col, cap * sizeof(int));
                if (!nc) {
                    strmap_free(m);
                    return false;
                }
                m->col = nc;
            }
            m->line[m->n] = bl;
            m->col[m->n] = bc;
            m->n++;
        }
        m->end_line = l;
        m->end_col = c;
        if (j < len && s[j] == '"') {
            j++;
            c++;
        }
    }
    if (!any) {
        strmap_free(m);
        return false;
    }
    return true;
}

/* ---- compilation context ---- */

/* Every rule id seen, kept or not, so duplicates are found even when the
 * first definition had errors. */
typedef struct seen_id {
    char id[TD_RULE_ID_MAX + 1];
    const char *file;
    int line;
} seen_id;

/* A name an expression gives for another rule or a group (last_fired('id'),
 * rec.rule == 'id', rec.group == 'g'), positioned when it is compiled and
 * resolved once every file is (ru_check_refs): a reload that removes what
 * another rule names is refused. */
typedef enum ru_ref_kind { REF_FIRED = 0, REF_RULE, REF_GROUP } ru_ref_kind;
typedef struct ru_ref {
    ru_ref_kind kind;
    char name[TD_RULE_ID_MAX + 1]; /* the name, cut at TD_RULE_ID_MAX */
    bool too_long;                 /* longer than any id or group: names nothing */
    char rid[TD_RULE_ID_MAX + 1];  /* the rule that names it */
    bool guard;
    const td_source *src;
    int line, col, caret;
} ru_ref;

typedef struct cctx {
    const td_source *src;
    td_diags *diags;
    td_ruleset *rs;
    bool settings_seen;
    seen_id *seen;
    size_t nseen, capseen;
    bool guard; /* the rule being compiled is a guard */
    ru_ref *refs;
    size_t nrefs, caprefs;
} cctx;

/* Records id; returns the earlier definition when it was seen already. */
static const seen_id *seen_check(cctx *cx, const char *id, const char *file, int line) {
    for (size_t i = 0; i < cx->nseen; i++)
        if (strcmp(cx->seen[i].id, id) == 0) return &cx->seen[i];
    if (td_grow(&cx->seen, &cx->capseen, cx->nseen, sizeof *cx->seen, 32) != TD_OK) return NULL;
    seen_id *s = &cx->seen[cx->nseen++];
    td_strlcpy(s->id, id, sizeof s->id);
    s->file = file;
    s->line = line;
    return NULL;
}

static int setting_line(const config_setting_t *s) {
    int l = (int)config_setting_source_line(s);
    return l > 0 ? l : 0;
}

/* A diagnostic at setting s: errors point at the setting's name on its line
 * when it can be found there, warnings at the line. */
static void ru_diag_at(cctx *cx, const config_setting_t *s, td_severity sev, const char *code,
                       const char *fmt, va_list ap) {
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    int line = s ? setting_line(s) : 0;
    int col = 0, caret = 1;
    const char *name = s && sev == TD_SEV_ERROR ? config_setting_name(s) : NULL;
    if (name && line > 0) {
        char *text = source_line(cx->src->text, cx->src->len, line);
        if (text) {
            char *p = strstr(text, name);
            if (p) {
                col = (int)(p - text) + 1;
                caret = (int)strlen(name);
            }
            free(text);
        }
    }
    diag_add(cx->diags, sev, code, cx->src->name, cx->src, line, col, caret, "%s", msg);
}

static void err_at(cctx *cx, const config_setting_t *s, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void err_at(cctx *cx, const config_setting_t *s, const char *code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    ru_diag_at(cx, s, TD_SEV_ERROR, code, fmt, ap);
    va_end(ap);
}

static void warn_at(cctx *cx, const config_setting_t *s, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void warn_at(cctx *cx, const config_setting_t *s, const char *code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    ru_diag_at(cx, s, TD_SEV_WARNING, code, fmt, ap);
    va_end(ap);
}

/* Levenshtein distance, for "did you mean" on keys. */
static size_t edit_distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    if (la > 63 || lb > 63) return 99;
    size_t prev[64], cur[64];
    for (size_t j = 0; j <= lb; j++)
        prev[j] = j;
    for (size_t i = 1; i <= la; i++) {
        cur[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t del = prev[j] + 1, ins = cur[j - 1] + 1,
                   sub = prev[j - 1] + (a[i - 1] != b[j - 1]);
            cur[j] = del < ins ? (del < sub ? del : sub) : (ins < sub ? ins : sub);
        }
        memcpy(prev, cur, (lb + 1) * sizeof(size_t));
    }
    return prev[lb];
}

static const char *closest(const char *word, const char *const *cands) {
    const char *best = NULL;
    size_t bd = 3;
    for (size_t i = 0; cands[i]; i++) {
        size_t d = edit_distance(word, cands[i]);
        if (d < bd) {
            bd = d;
            best = cands[i];
        }
    }
    return best;
}

static const char *const rule_keys[] = {
    "id",        "doc",   "on",     "when",   "priority", "group",      "after",     "cooldown",
    "recommend", "block", "reason", "intent", "expires",  "late_after", "withdraws", NULL};
static const char *const rec_keys[] = {"channel", "touch", "at", "note", "window", NULL};
static const char *const settings_keys[] = {"default_timezone",
                                            "best_time_min_points",
                                            "best_time_default_hour",
                                            "business_start_hour",
                                            "business_end_hour",
                                            "quiet_start_hour",
                                            "quiet_end_hour",
                                            "gift_tax_cap_eur",
                                            "expires",
                                            "late_after",
                                            NULL};

static bool key_known(const char *k, const char *const *keys) {
    for (size_t i = 0; keys[i]; i++)
        if (strcmp(k, keys[i]) == 0) return true;
    return false;
}

static void check_keys(cctx *cx, const config_setting_t *group, const char *const *keys,
                       const char *what) {
    int n = config_setting_length(group);
    for (int i = 0; i < n; i++) {
        config_setting_t *m = config_setting_get_elem(group, (unsigned)i);
        const char *k = config_setting_name(m);
        if (!k || key_known(k, keys)) continue;
        const char *sug = closest(k, keys);
        if (sug)
            err_at(cx, m, "E105", "unknown key '%s' in %s; did you mean '%s'?", k, what, sug);
        else
            err_at(cx, m, "E105", "unknown key '%s' in %s (see docs/rules.md for the keys)", k,
                   what);
    }
}

static const char *get_string(cctx *cx, const config_setting_t *parent, const char *key,
                              const char *ctxname) {
    config_setting_t *s = config_setting_get_member(parent, key);
    if (!s) return NULL;
    if (config_setting_type(s) != CONFIG_TYPE_STRING) {
        err_at(cx, s, "E106", "%s.%s must be a string (in double quotes)", ctxname, key);
        return NULL;
    }
    return config_setting_get_string(s);
}

static bool get_duration(cctx *cx, const config_setting_t *parent, const char *key,
                         const char *ctxname, td_ms *out) {
    config_setting_t *s = config_setting_get_member(parent, key);
    if (!s) return false;
    if (config_setting_type(s) != CONFIG_TYPE_STRING) {
        err_at(cx, s, "E109", "%s.%s must be a duration string such as \"72h\", \"3d\", \"30m\"",
               ctxname, key);
        return false;
    }
    const char *v = config_setting_get_string(s);
    td_ms d;
    if (td_duration_parse(v, strlen(v), &d) != TD_OK || d <= 0) {
        err_at(cx, s, "E109",
               "%s.%s: '%s' is not a positive duration; write e.g. \"72h\", \"3d\", \"2w\", "
               "\"30m\", \"1h30m\"",
               ctxname, key, v);
        return false;
    }
    *out = d;
    return true;
}

typedef struct ru_collect {
    cctx *cx;
    const config_setting_t *s;
    const char *key, *rid;
    strmap m;
    int built; /* 0 not yet, 1 mapped byte for byte, -1 cannot be */
    size_t textlen;
} ru_collect;

static void ru_collect_one(void *ud, const td_field *f, const char *name, size_t len,
                           uint32_t off) {
    ru_collect *c = ud;
    cctx *cx = c->cx;
    ru_ref_kind kind;
    if (!f)
        kind = REF_FIRED;
    else if (strcmp(f->name, "rec.rule") == 0)
        kind = REF_RULE;
    else if (strcmp(f->name, "rec.group") == 0)
        kind = REF_GROUP;
    else
        return;
    if (td_grow(&cx->refs, &cx->caprefs, cx->nrefs, sizeof *cx->refs, 16) != TD_OK) return;
    ru_ref *r = &cx->refs[cx->nrefs++];
    memset(r, 0, sizeof *r);
    r->kind = kind;
    size_t l = len < TD_RULE_ID_MAX ? len : TD_RULE_ID_MAX;
    memcpy(r->name, name, l);
    r->too_long = len > TD_RULE_ID_MAX;
    td_strlcpy(r->rid, c->rid, sizeof r->rid);
    r->guard = cx->guard;
    r->src = cx->src;
    r->line = setting_line(c->s);
    r->caret = 1;
    if (c->built == 0) {
        bool ok = strmap_build(cx->src, setting_line(c->s), c->key, &c->m);
        c->built = ok && c->m.n == c->textlen ? 1 : -1;
        if (ok && c->built < 0) strmap_free(&c->m);
    }
    if (c->built > 0 && off < c->m.n) {
        r->line = c->m.line[off];
        r->col = c->m.col[off];
        size_t last = off + (len ? len : 1) - 1;
        r->caret = last < c->m.n && c->m.line[last] == r->line ? (int)(len ? len : 1) : 1;
    }
}

/* Records the names expression e (setting s, key `key` of rule rid) gives
 * for rules and groups, with their positions. */
static void ru_collect_refs(cctx *cx, const config_setting_t *s, const char *key, const td_expr *e,
                            const char *rid) {
    ru_collect c = {.cx = cx, .s = s, .key = key, .rid = rid};
    td_expr_source(e, &c.textlen);
    td_expr_str_refs(e, ru_collect_one, &c);
    if (c.built > 0) strmap_free(&c.m);
}

/* Compiles an expression setting, reporting its diagnostics at their source
 * positions. */
static td_expr *compile_expr(cctx *cx, const config_setting_t *parent, const char *key, int scopes,
                             td_type want, const char *ctxname) {
    config_setting_t *s = config_setting_get_member(parent, key);
    if (!s) return NULL;
    if (config_setting_type(s) != CONFIG_TYPE_STRING) {
        err_at(cx, s, "E106", "%s.%s must be an expression in a string, e.g. %s = \"...\";",
               ctxname, key, key);
        return NULL;
    }
    const char *text = config_setting_get_string(s);
    td_expr_diags ed = {0};
    td_expr *e = td_expr_compile(text, strlen(text), scopes, want, &ed);
    if (ed.n > 0) {
        strmap m;
        bool built = strmap_build(cx->src, setting_line(s), key, &m);
        /* positions are trusted only when the map covers the decoded string
         * byte for byte (an escape we do not model, e.g. \f, makes it differ) */
        bool mapped = built && m.n == strlen(text);
        for (size_t i = 0; i < ed.n; i++) {
            const td_expr_diag *x = &ed.v[i];
            int line = setting_line(s), col = 0, caret = (int)(x->length ? x->length : 1);
            if (mapped) {
                if (x->offset < m.n) {
                    line = m.line[x->offset];
                    col = m.col[x->offset];
                    /* keep the caret on one line */
                    size_t last = x->offset + (x->length ? x->length : 1) - 1;
                    if (last >= m.n || m.line[last] != line) caret = 1;
                } else {
                    line = m.end_line;
                    col = m.end_col;
                    caret = 1;
                }
            }
            diag_add(cx->diags, TD_SEV_ERROR, x->code, cx->src->name, cx->src, line, col, caret,
                     "in %s.%s: %s", ctxname, key, x->msg);
        }
        if (built) strmap_free(&m);
    }
    td_expr_diags_free(&ed);
    if (!e && ed.n == 0)
        err_at(cx, s, "E207", "%s.%s: the expression could not be compiled", ctxname, key);
    if (e) ru_collect_refs(cx, s, key, e, ctxname);
    return e;
}

static bool valid_rule_id(const char *id) {
    size_t n = strlen(id);
    if (n == 0 || n > TD_RULE_ID_MAX) return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)id[i];
        if (!(islower(c) || isdigit(c) || c == '.' || c == '_' || c == '-')) return false;
    }
    return true;
}

/* Parses `on`: event types, "<channel>.*", "*", and for guards "timer". */
static uint64_t parse_on(cctx *cx, const config_setting_t *rule, const char *rid, bool guard,
                         bool *present) {
    config_setting_t *s = config_setting_get_member(rule, "on");
    *present = s != NULL;
    if (!s) return 0;
    int t = config_setting_type(s);
    if (t != CONFIG_TYPE_ARRAY && t != CONFIG_TYPE_LIST) {
        if (t == CONFIG_TYPE_STRING) {
            err_at(cx, s, "E106", "rule '%s': on must be a list, e.g. on = [ \"%s\" ];", rid,
                   config_setting_get_string(s));
        } else
            err_at(cx, s, "E106", "rule '%s': on must be a list of event types", rid);
        return 0;
    }
    uint64_t mask = 0;
    int n = config_setting_length(s);
    if (n == 0) err_at(cx, s, "E108", "rule '%s': on is empty; list at least one event type", rid);
    for (int i = 0; i < n; i++) {
        config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        if (config_setting_type(e) != CONFIG_TYPE_STRING) {
            err_at(cx, s, "E108", "rule '%s': on[%d] must be a string such as \"email.opened\"",
                   rid, i);
            continue;
        }
        const char *v = config_setting_get_string(e);
        size_t vl = strlen(v);
        if (strcmp(v, "*") == 0) {
            /* every prospect event; owner events (owner.*) and feedback
             * (recommendation.*) only when named */
            mask |= ((1ULL << TD_EV__COUNT) - 1) & ~(1ULL << TD_EV_OWNER_PROSPECT_CONTACTED) &
                    ~(1ULL << TD_EV_RECOMMENDATION_ACTED) &
                    ~(1ULL << TD_EV_RECOMMENDATION_DISMISSED) &
                    ~(1ULL << TD_EV_RECOMMENDATION_SNOOZED);
            continue;
        }
        if (guard && strcmp(v, "timer") == 0) {
            mask |= TD_ON_TIMER;
            continue;
        }
        if (vl > 2 && v[vl - 2] == '.' && v[vl - 1] == '*') {
            uint64_t before = mask;
            for (int ty = 0; ty < TD_EV__COUNT; ty++) {
                const char *nm = td_event_type_name((td_event_type)ty);
                if (nm && strncmp(nm, v, vl - 1) == 0) mask |= 1ULL << ty;
            }
            if (mask == before)
                err_at(cx, s, "E108", "rule '%s': '%s' matches no event type", rid, v);
            continue;
        }
        int ty = td_event_type_parse(v, vl);
        if (ty < 0) {
            /* suggest the closest known type */
            const char *names[TD_EV__COUNT + 1];
            for (int k = 0; k < TD_EV__COUNT; k++)
                names[k] = td_event_type_name((td_event_type)k);
            names[TD_EV__COUNT] = NULL;
            const char *sug = closest(v, names);
            if (sug)
                err_at(cx, s, "E108", "rule '%s': unknown event type '%s'; did you mean '%s'?", rid,
                       v, sug);
            else
                err_at(cx, s, "E108",
                       "rule '%s': unknown event type '%s' (docs/events.md lists them)", rid, v);
            continue;
        }
        mask |= 1ULL << ty;
    }
    return mask;
}

static void compile_settings(cctx *cx, const config_setting_t *s) {
    if (cx->settings_seen) {
        err_at(cx, s, "E111",
               "settings are given twice in the ruleset; keep one settings block (the other is "
               "in an earlier file)");
        return;
    }
    cx->settings_seen = true;
    if (config_setting_type(s) != CONFIG_TYPE_GROUP) {
        err_at(cx, s, "E111", "settings must be a group: settings = { ... };");
        return;
    }
    check_keys(cx, s, settings_keys, "settings");
    td_settings *st = &cx->rs->settings;
    const char *tz = get_string(cx, s, "default_timezone", "settings");
    if (tz) {
        td_tzdb *db = td_tzdb_new();
        if (db && !td_tz_valid(db, tz))
            err_at(cx, config_setting_get_member(s, "default_timezone"), "E111",
                   "settings.default_timezone: '%s' is not an IANA time zone (e.g. "
                   "\"Europe/Paris\", \"UTC\")",
                   tz);
        else if (!td_strlcpy(st->default_timezone, tz, sizeof st->default_timezone))
            err_at(cx, config_setting_get_member(s, "default_timezone"), "E111",
                   "settings.default_timezone is too long");
        td_tzdb_free(db);
    }
    struct {
        const char *key;
        int *dst, lo, hi;
    } ints[] = {
        {"best_time_min_points", &st->best_time_min_points, 0, 1000000},
        {"best_time_default_hour", &st->best_time_default_hour, 0, 23},
        {"business_start_hour", &st->business_start_hour, 0, 23},
        {"business_end_hour", &st->business_end_hour, 1, 24},
        {"quiet_start_hour", &st->quiet_start_hour, 0, 23},
        {"quiet_end_hour", &st->quiet_end_hour, 0, 23},
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        config_setting_t *m = config_setting_get_member(s, ints[i].key);
        if (!m) continue;
        if (config_setting_type(m) != CONFIG_TYPE_INT) {
            err_at(cx, m, "E111", "settings.%s must be an integer from %d to %d", ints[i].key,
                   ints[i].lo, ints[i].hi);
            continue;
        }
        int v = config_setting_get_int(m);
        if (v < ints[i].lo || v > ints[i].hi) {
            err_at(cx, m, "E111", "settings.%s must be from %d to %d, not %d", ints[i].key,
                   ints[i].lo, ints[i].hi, v);
            continue;
        }
        *ints[i].dst = v;
    }
    get_duration(cx, s, "expires", "settings", &st->expires);
    get_duration(cx, s, "late_after", "settings", &st->late_after);
    config_setting_t *caps = config_setting_get_member(s, "gift_tax_cap_eur");
    if (caps) {
        if (config_setting_type(caps) != CONFIG_TYPE_GROUP) {
            err_at(cx, caps, "E111",
                   "settings.gift_tax_cap_eur must be a group of country = amount, e.g. "
                   "{ FR = 73.0; }");
        } else {
            st->ngift_tax_caps = 0; /* the ruleset's list replaces the defaults */
            int n = config_setting_length(caps);
            for (int i = 0; i < n; i++) {
                config_setting_t *m = config_setting_get_elem(caps, (unsigned)i);
                const char *cc = config_setting_name(m);
                double v = 0;
                int t = config_setting_type(m);
                if (t == CONFIG_TYPE_INT || t == CONFIG_TYPE_INT64)
                    v = (double)config_setting_get_int64(m);
                else if (t == CONFIG_TYPE_FLOAT)
                    v = config_setting_get_float(m);
                else {
                    err_at(cx, m, "E111", "settings.gift_tax_cap_eur.%s must be an amount in EUR",
                           cc);
                    continue;
                }
                if (strlen(cc) != 2 || !isupper((unsigned char)cc[0]) ||
                    !isupper((unsigned char)cc[1])) {
                    err_at(cx, m, "E111",
                           "settings.gift_tax_cap_eur: '%s' is not an ISO 3166 alpha-2 country "
                           "code in capitals (FR, DE...)",
                           cc);
                    continue;
                }
                if (v < 0 || v > 1e9) {
                    err_at(cx, m, "E111", "settings.gift_tax_cap_eur.%s must be from 0 to 1e9", cc);
                    continue;
                }
                if (st->ngift_tax_caps == sizeof st->gift_tax_caps / sizeof st->gift_tax_caps[0]) {
                    err_at(cx, m, "E111", "settings.gift_tax_cap_eur: at most %zu countries",
                           sizeof st->gift_tax_caps / sizeof st->gift_tax_caps[0]);
                    break;
                }
                td_strlcpy(st->gift_tax_caps[st->ngift_tax_caps].country, cc, 3);
                st->gift_tax_caps[st->ngift_tax_caps].cap_eur =
                    (td_dec)(v * TD_DEC_SCALE + (v >= 0 ? 0.5 : -0.5));
                st->ngift_tax_caps++;
            }
        }
    }
    if (st->business_start_hour >= st->business_end_hour)
        err_at(cx, s, "E111",
               "settings: business_start_hour (%d) must be before business_end_hour (%d)",
               st->business_start_hour, st->business_end_hour);
}

static void rule_free(td_rule *r) {
    free(r->doc);
    td_expr_free(r->when);
    free(r->group);
    free(r->touch);
    td_expr_free(r->at);
    free(r->note);
    td_expr_free(r->block);
    free(r->reason);
    free(r->never_blocks);
    free(r->fixed_truth);
    free(r->intent);
    for (uint32_t i = 0; i < r->nwithdraws; i++)
        free(r->withdraws[i].name);
    free(r->withdraws);
}

/* The position of the string literal "s", written as is, at or after line
 * `line` (a few lines on): *oline and *ocol (its first byte) when found;
 * both untouched otherwise. */
static void ru_quoted_pos(const td_source *src, int line, const char *s, int *oline, int *ocol) {
    if (!src || line < 1) return;
    const char *t = src->text, *end = t + src->len, *p = t;
    size_t len = strlen(s);
    int l = 1;
    for (; p < end && l < line; p++)
        if (*p == '\n') l++;
    const char *bol = p;
    for (; p + len + 2 <= end && l < line + 20; p++) {
        if (*p == '\n') {
            l++;
            bol = p + 1;
        } else if (*p == '"' && p[len + 1] == '"' && memcmp(p + 1, s, len) == 0) {
            *oline = l;
            *ocol = (int)(p + 1 - bol) + 1;
            return;
        }
    }
}

/* The plan keys of a recommending rule: intent, expires, late_after,
 * withdraws (names are resolved once every file is compiled:
 * ru_resolve_withdraws). */
static void compile_plan_keys(cctx *cx, const config_setting_t *rs, td_rule *r, const char *rid) {
    const char *keys[] = {"intent", "expires", "late_after", "withdraws"};
    if (r->guard) {
        for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
            if (config_setting_get_member(rs, keys[i]))
                err_at(cx, config_setting_get_member(rs, keys[i]), "E114",
                       "guard '%s': %s belongs to a recommending rule (a guard publishes "
                       "nothing)",
                       rid, keys[i]);
        return;
    }
    const char *in = get_string(cx, rs, "intent", rid);
    if (in) {
        size_t il = strlen(in);
        bool ok = il > 0 && il <= TD_INTENT_MAX;
        for (size_t i = 0; ok && i < il; i++)
            ok = islower((unsigned char)in[i]) || in[i] == '_';
        if (!ok)
            err_at(cx, config_setting_get_member(rs, "intent"), "E114",
                   "rule '%s': intent must be 1 to %d lower-case letters or '_', e.g. "
                   "\"follow_up\"",
                   rid, TD_INTENT_MAX);
        else {
            r->intent = xstrdup(in);
            if (!td_intent_known(in))
                warn_at(cx, config_setting_get_member(rs, "intent"), "W309",
                        "rule '%s': intent '%s' is not in the vocabulary (docs/rules.md); "
                        "`withdraws` can still name it",
                        rid, in);
        }
    }
    get_duration(cx, rs, "expires", rid, &r->expires);
    get_duration(cx, rs, "late_after", rid, &r->late_after);
    config_setting_t *w = config_setting_get_member(rs, "withdraws");
    if (!w) return;
    int n =
        config_setting_type(w) == CONFIG_TYPE_ARRAY || config_setting_type(w) == CONFIG_TYPE_LIST
            ? config_setting_length(w)
            : -1;
    if (n <= 0) {
        err_at(cx, w, "E114",
               "rule '%s': withdraws must be a non-empty list of groups, rule ids or "
               "\"intent:<name>\", e.g. withdraws = [ \"follow-up\", \"intent:ask_meeting\" ];",
               rid);
        return;
    }
    r->withdraws = calloc((size_t)n, sizeof *r->withdraws);
    if (!r->withdraws) return;
    for (int i = 0; i < n; i++) {
        config_setting_t *e = config_setting_get_elem(w, (unsigned)i);
        const char *v =
            config_setting_type(e) == CONFIG_TYPE_STRING ? config_setting_get_string(e) : NULL;
        if (!v || !*v) {
            err_at(cx, w, "E114", "rule '%s': withdraws[%d] must be a non-empty string", rid, i);
            continue;
        }
        td_withdraw *x = &r->withdraws[r->nwithdraws++];
        x->kind = strncmp(v, "intent:", 7) == 0 ? TD_WD_INTENT : TD_WD_NAME;
        x->name = xstrdup(x->kind == TD_WD_INTENT ? v + 7 : v);
        x->line = setting_line(w);
        x->len = (int)strlen(v);
        ru_quoted_pos(cx->src, x->line, v, &x->line, &x->col);
    }
}

/* Compiles one rule; returns true when it has no error (it is then kept). */
static bool compile_rule(cctx *cx, const config_setting_t *rs, td_rule *r, const char *file) {
    memset(r, 0, sizeof *r);
    r->channel = TD_CH_NONE;
    r->priority = 50;
    r->file = file;
    r->line = setting_line(rs);
    size_t errors_before = cx->diags->errors;

    if (config_setting_type(rs) != CONFIG_TYPE_GROUP) {
        err_at(cx, rs, "E102", "each element of rules must be a group: { id = \"...\"; ... }");
        return false;
    }
    check_keys(cx, rs, rule_keys, "a rule");
    const char *id = get_string(cx, rs, "id", "rule");
    char rid[TD_RULE_ID_MAX + 1] = "?";
    if (!id) {
        if (!config_setting_get_member(rs, "id"))
            err_at(cx, rs, "E103", "a rule has no id; give it one: id = \"topic.what-it-does\";");
    } else if (!valid_rule_id(id)) {
        err_at(cx, config_setting_get_member(rs, "id"), "E103",
               "rule id '%s' must be 1 to %d characters of a-z 0-9 . _ -", id, TD_RULE_ID_MAX);
    } else {
        td_strlcpy(r->id, id, sizeof r->id);
        td_strlcpy(rid, id, sizeof rid);
    }
    const char *doc = get_string(cx, rs, "doc", rid);
    if (doc) r->doc = xstrdup(doc);

    config_setting_t *rec = config_setting_get_member(rs, "recommend");
    config_setting_t *blk = config_setting_get_member(rs, "block");
    if (rec && blk)
        err_at(cx, blk, "E107",
               "rule '%s' has both recommend and block: a rule recommends, a guard blocks; split "
               "it in two",
               rid);
    else if (!rec && !blk)
        err_at(cx, rs, "E107",
               "rule '%s' has neither recommend = { ... } nor block = \"...\" (a guard)", rid);
    r->guard = blk != NULL && rec == NULL;
    cx->guard = r->guard;

    bool has_on;
    r->on = parse_on(cx, rs, rid, r->guard, &has_on);
    if (!r->guard && !has_on && rec)
        err_at(cx, rs, "E113", "rule '%s' has no `on`: list the event types that trigger it", rid);

    config_setting_t *pr = config_setting_get_member(rs, "priority");
    if (pr) {
        if (config_setting_type(pr) != CONFIG_TYPE_INT)
            err_at(cx, pr, "E106", "rule '%s': priority must be an integer from 0 to 1000", rid);
        else {
            int v = config_setting_get_int(pr);
            if (v < 0 || v > 1000)
                err_at(cx, pr, "E106", "rule '%s': priority must be from 0 to 1000, not %d", rid,
                       v);
            r->priority = v;
        }
    }
    const char *grp = get_string(cx, rs, "group", rid);
    if (grp) {
        if (!*grp)
            err_at(cx, config_setting_get_member(rs, "group"), "E106",
                   "rule '%s': group must not be empty (remove it for a group of its own)", rid);
        else if (strlen(grp) > TD_RULE_ID_MAX)
            err_at(cx, config_setting_get_member(rs, "group"), "E106",
                   "rule '%s': group names are at most %d bytes", rid, TD_RULE_ID_MAX);
        else
            r->group = xstrdup(grp);
    }
    get_duration(cx, rs, "cooldown", rid, &r->cooldown);
    config_setting_t *aft = config_setting_get_member(rs, "after");
    if (aft && config_setting_type(aft) == CONFIG_TYPE_STRING) {
        /* "2bd": business days (weekends and the prospect's holidays skipped) */
        const char *v = config_setting_get_string(aft);
        size_t vl = strlen(v);
        if (vl > 2 && strcmp(v + vl - 2, "bd") == 0) {
            int nbd = 0;
            bool digits = vl - 2 <= 3;
            for (size_t k = 0; k + 2 < vl && digits; k++) {
                if (!isdigit((unsigned char)v[k]))
                    digits = false;
                else
                    nbd = nbd * 10 + (v[k] - '0');
            }
            if (!digits || nbd < 1 || nbd > 250)
                err_at(cx, aft, "E109",
                       "%s.after: '%s' is not a number of business days from 1 to 250 (e.g. "
                       "\"1bd\")",
                       rid, v);
            else {
                r->after_business_days = nbd;
                r->after = (td_ms)nbd * TD_DAY;
                if (r->guard)
                    err_at(cx, aft, "E112",
                           "rule '%s': a guard cannot have `after` (only recommending rules are "
                           "timers)",
                           rid);
            }
            aft = NULL; /* handled */
        }
    }
    if (aft && get_duration(cx, rs, "after", rid, &r->after) && r->guard)
        err_at(cx, config_setting_get_member(rs, "after"), "E112",
               "rule '%s': a guard cannot have `after` (only recommending rules are timers)", rid);

    int scopes = TD_FIELD_EVENT;
    if (r->guard) {
        r->block = compile_expr(cx, rs, "block", TD_FIELD_EVENT | TD_FIELD_GUARD, TD_T_BOOL, rid);
        const char *reason = get_string(cx, rs, "reason", rid);
        if (reason) r->reason = xstrdup(reason);
        if (config_setting_get_member(rs, "when")) scopes |= TD_FIELD_GUARD;
        if (config_setting_get_member(rs, "cooldown") || config_setting_get_member(rs, "group") ||
            config_setting_get_member(rs, "priority"))
            warn_at(cx, rs, "W302",
                    "guard '%s': cooldown, group and priority have no effect on a guard", rid);
    }
    r->when = compile_expr(cx, rs, "when", scopes, TD_T_BOOL, rid);
    compile_plan_keys(cx, rs, r, rid);

    if (rec) {
        if (config_setting_type(rec) != CONFIG_TYPE_GROUP) {
            err_at(cx, rec, "E110",
                   "rule '%s': recommend must be a group: recommend = { channel = ...; touch = "
                   "...; };",
                   rid);
        } else {
            check_keys(cx, rec, rec_keys, "recommend");
            const char *ch = get_string(cx, rec, "channel", rid);
            if (!ch)
                err_at(cx, rec, "E110",
                       "rule '%s': recommend needs a channel (email, whatsapp, sms, linkedin, "
                       "call, meeting, gift)",
                       rid);
            else {
                r->channel = td_channel_parse(ch, strlen(ch));
                if (r->channel == TD_CH_NONE)
                    err_at(cx, config_setting_get_member(rec, "channel"), "E110",
                           "rule '%s': unknown channel '%s'; use one of email, whatsapp, sms, "
                           "linkedin, call, meeting, gift",
                           rid, ch);
            }
            const char *touch = get_string(cx, rec, "touch", rid);
            if (!touch || !*touch)
                err_at(cx, rec, "E110",
                       "rule '%s': recommend needs a touch, e.g. touch = "
                       "\"value_insight\";",
                       rid);
            else {
                r->touch = xstrdup(touch);
                if (!td_touch_known(touch))
                    warn_at(cx, config_setting_get_member(rec, "touch"), "W301",
                            "rule '%s': touch '%s' is not in the standard vocabulary "
                            "(docs/recommendations.md); downstream notifiers may not know it",
                            rid, touch);
            }
            r->at = compile_expr(cx, rec, "at", TD_FIELD_EVENT, TD_T_TIME, rid);
            const char *note = get_string(cx, rec, "note", rid);
            if (note) r->note = xstrdup(note);
            const char *win = get_string(cx, rec, "window", rid);
            if (win) {
                if (strcmp(win, "any") == 0)
                    r->window_any = true;
                else if (strcmp(win, "business") != 0)
                    err_at(cx, config_setting_get_member(rec, "window"), "E110",
                           "rule '%s': window must be \"business\" (the default: business hours "
                           "on business days) or \"any\" (only quiet hours are avoided)",
                           rid);
            }
        }
    }
    return cx->diags->errors == errors_before;
}

static const td_rule *find_rule(const td_ruleset *rs, size_t upto, const char *id) {
    for (size_t i = 0; i < upto; i++)
        if (strcmp(rs->rules[i].id, id) == 0) return &rs->rules[i];
    return NULL;
}

/* The byte offset of the first byte that makes buf not UTF-8 text (a NUL,
 * a control byte other than tab, newline and carriage return, DEL, or
 * invalid UTF-8), or -1. */
static long ru_not_text(const char *buf, size_t len) {
    const unsigned char *s = (const unsigned char *)buf;
    for (size_t i = 0; i < len;) {
        unsigned char c = s[i];
        if (c < 0x80) {
            if ((c < 0x20 && c != '\t' && c != '\n' && c != '\r') || c == 0x7f) return (long)i;
            i++;
            continue;
        }
        size_t n = c >= 0xf0 && c <= 0xf4 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 && c < 0xe0 ? 2 : 0;
        if (n == 0 || i + n > len) return (long)i;
        for (size_t k = 1; k < n; k++)
            if ((s[i + k] & 0xc0) != 0x80) return (long)i;
        /* overlongs and surrogates */
        if ((c == 0xe0 && s[i + 1] < 0xa0) || (c == 0xed && s[i + 1] >= 0xa0) ||
            (c == 0xf0 && s[i + 1] < 0x90) || (c == 0xf4 && s[i + 1] >= 0x90))
            return (long)i;
        i += n;
    }
    return -1;
}

static void compile_file(cctx *cx, size_t *cap) {
    config_t cfg;
    config_init(&cfg);
    config_set_auto_convert(&cfg, 0);
    /* libconfig wants a NUL-terminated string */
    char *text = xstrndup(cx->src->text, cx->src->len);
    if (!text) {
        diag_add(cx->diags, TD_SEV_ERROR, "E101", cx->src->name, NULL, 0, 0, 1, "out of memory");
        config_destroy(&cfg);
        return;
    }
    /* a rules file is UTF-8 text: a binary or half-written file is refused
     * before libconfig reads it, and its bytes are never echoed */
    long bad = ru_not_text(cx->src->text, cx->src->len);
    if (bad >= 0) {
        /* its line and column (in bytes), and no source line: the
         * diagnostic names where the bad byte is, never what it is */
        int line = 1, col = 1;
        for (long i = 0; i < bad; i++) {
            col++;
            if (cx->src->text[i] == '\n') {
                line++;
                col = 1;
            }
        }
        diag_add(cx->diags, TD_SEV_ERROR, "E115", cx->src->name, NULL, line, col, 1,
                 "the file is not UTF-8 text: a NUL, a control byte or invalid UTF-8 here (byte "
                 "offset %ld; the bytes are not shown): a binary or truncated file? Write rules "
                 "files by atomic rename (docs/operations.md)",
                 bad);
        free(text);
        config_destroy(&cfg);
        return;
    }
    if (strstr(text, "@include")) {
        /* reading other files is the caller's business: a ruleset is its files */
        const char *p = strstr(text, "@include");
        int line = 1;
        for (const char *q = text; q < p; q++)
            if (*q == '\n') line++;
        diag_add(cx->diags, TD_SEV_ERROR, "E101", cx->src->name, cx->src, line, 1, 8,
                 "@include is not supported in rules files: put the file in the rules directory");
        free(text);
        config_destroy(&cfg);
        return;
    }
    if (config_read_string(&cfg, text) != CONFIG_TRUE) {
        int line = config_error_line(&cfg);
        diag_add(cx->diags, TD_SEV_ERROR, "E101", cx->src->name, cx->src, line, 0, 1,
                 "syntax error: %s (libconfig syntax: key = value; strings in double quotes, "
                 "lists in ( ), arrays in [ ], groups in { })",
                 config_error_text(&cfg));
        free(text);
        config_destroy(&cfg);
        return;
    }
    config_setting_t *root = config_root_setting(&cfg);
    int nroot = config_setting_length(root);
    for (int i = 0; i < nroot; i++) {
        config_setting_t *m = config_setting_get_elem(root, (unsigned)i);
        const char *k = config_setting_name(m);
        if (strcmp(k, "rules") == 0 || strcmp(k, "settings") == 0) continue;
        static const char *const top[] = {"rules", "settings", NULL};
        const char *sug = closest(k, top);
        err_at(cx, m, "E102", "unknown top-level key '%s'%s%s%s", k, sug ? "; did you mean '" : "",
               sug ? sug : " (a rules file has `rules = ( ... );` and optionally `settings`)",
               sug ? "'?" : "");
    }
    config_setting_t *settings = config_setting_get_member(root, "settings");
    if (settings) compile_settings(cx, settings);
    config_setting_t *rules = config_setting_get_member(root, "rules");
    if (!rules) {
        if (!settings)
            diag_add(cx->diags, TD_SEV_ERROR, "E115", cx->src->name, NULL, 0, 0, 1,
                     "the file is empty (no rules = ( ... ); and no settings): a truncated "
                     "write? Write rules files by atomic rename (docs/operations.md), and "
                     "delete a file to remove its rules");
    } else if (config_setting_type(rules) != CONFIG_TYPE_LIST) {
        err_at(cx, rules, "E102", "rules must be a list: rules = ( { ... }, { ... } );");
    } else {
        int n = config_setting_length(rules);
        const char *fname = cx->rs->files[cx->rs->nfiles - 1];
        for (int i = 0; i < n; i++) {
            if (cx->rs->n == *cap) {
                size_t nc = *cap ? *cap * 2 : 32;
                td_rule *v = realloc(cx->rs->rules, nc * sizeof(*v));
                if (!v) {
                    diag_add(cx->diags, TD_SEV_ERROR, "E101", cx->src->name, NULL, 0, 0, 1,
                             "out of memory");
                    break;
                }
                cx->rs->rules = v;
                *cap = nc;
            }
            config_setting_t *rs = config_setting_get_elem(rules, (unsigned)i);
            td_rule *r = &cx->rs->rules[cx->rs->n];
            bool ok = compile_rule(cx, rs, r, fname);
            if (r->id[0]) {
                const seen_id *prev = seen_check(cx, r->id, fname, r->line);
                if (prev) {
                    err_at(cx, config_setting_get_member(rs, "id"), "E104",
                           "duplicate rule id '%s' (first defined at %s:%d); rule ids must be "
                           "unique across the ruleset",
                           r->id, prev->file, prev->line);
                    ok = false;
                }
            }
            if (ok) {
                r->index = cx->rs->n;
                cx->rs->n++;
            } else
                rule_free(r);
        }
    }
    free(text);
    config_destroy(&cfg);
}

static void compute_hash(td_ruleset *rs, const td_source *srcs, size_t n) {
    unsigned char md[32];
    unsigned int mdlen = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1) {
        for (size_t i = 0; i < n; i++) {
            char head[64];
            int hl = snprintf(head, sizeof head, "%zu:", strlen(srcs[i].name));
            EVP_DigestUpdate(ctx, head, (size_t)hl);
            EVP_DigestUpdate(ctx, srcs[i].name, strlen(srcs[i].name));
            hl = snprintf(head, sizeof head, ":%zu:", srcs[i].len);
            EVP_DigestUpdate(ctx, head, (size_t)hl);
            EVP_DigestUpdate(ctx, srcs[i].text, srcs[i].len);
        }
        EVP_DigestFinal_ex(ctx, md, &mdlen);
    }
    EVP_MD_CTX_free(ctx);
    static const char hex[] = "0123456789abcdef";
    memcpy(rs->hash, "sha256:", 7);
    for (unsigned i = 0; i < 32; i++) {
        rs->hash[7 + 2 * i] = hex[i < mdlen ? md[i] >> 4 : 0];
        rs->hash[8 + 2 * i] = hex[i < mdlen ? md[i] & 15 : 0];
    }
    rs->hash[71] = '\0';
}

/* The view of a rule's recommendation that resolve() gives the guards,
 * without not_before (what load-time guard analysis may depend on). */
static td_rec_view ru_rule_view(const td_rule *r) {
    return (td_rec_view){.channel = r->channel,
                         .touch = r->touch,
                         .rule = r->id,
                         .group = r->group ? r->group : "",
                         .priority = r->priority,
                         .not_before = TD_MS_MISSING};
}

/*
 * td_rule.never_blocks of each guard: a conjunct of its block that reads only
 * the candidate's fixed rec.* fields (`rec.touch in ['physical_gift', ...]`)
 * is evaluated here once per rule, with nothing but that rule's view; where
 * it is false the block can never be true for the rule. Only conjuncts
 * reached without a possible failure count: a conjunct before them that can
 * fail (arithmetic, local time) would block at run time (guards fail safe),
 * so the scan stops at the first such conjunct. rec.not_before is not fixed
 * (it depends on the state): a conjunct that reads it is left to run time.
 * Also td_rule.fixed_truth: the truth of each rec.* string test in the
 * block's && / || chains (at any depth), per rule (td_expr_fix_operands).
 * @returns false on out-of-memory.
 */
static bool build_never_blocks(td_ruleset *rs) {
    static const char *const fixed[] = {"rec.channel", "rec.touch", "rec.rule", "rec.group",
                                        "rec.priority"};
    const td_field *allowed[(sizeof fixed / sizeof *fixed) + 1];
    for (size_t k = 0; k < (sizeof fixed / sizeof *fixed); k++) {
        allowed[k] = td_schema_lookup(fixed[k], strlen(fixed[k]));
        if (!allowed[k]) return true; /* a schema without them: nothing to precompute */
    }
    allowed[(sizeof fixed / sizeof *fixed)] = NULL;
    size_t words = (rs->n + 63) / 64;
    for (size_t gi = 0; gi < rs->n; gi++) {
        td_rule *g = &rs->rules[gi];
        if (!g->guard || !g->block) continue;
        size_t nconj = td_expr_conjuncts(g->block);
        for (size_t k = 0; k < nconj; k++) {
            if (k > 0 && td_expr_conjunct_may_fail(g->block, k - 1)) break;
            if (!td_expr_conjunct_reads_only(g->block, k, allowed)) continue;
            if (!g->never_blocks) {
                g->never_blocks = calloc(words ? words : 1, sizeof *g->never_blocks);
                if (!g->never_blocks) return false;
            }
            for (size_t ri = 0; ri < rs->n; ri++) {
                const td_rule *r = &rs->rules[ri];
                if (r->guard) continue;
                td_rec_view view = ru_rule_view(r);
                td_ctx ctx = {.rec = &view, .settings = &rs->settings};
                td_value v;
                char err[96];
                if (td_expr_eval_conjunct(g->block, k, &ctx, &v, err, sizeof err) == TD_OK &&
                    (v.missing || !v.u.b))
                    g->never_blocks[r->index / 64] |= 1ULL << (r->index % 64);
            }
        }
        /* the block's rec.* string tests in && / || chains, per rule */
        if (td_expr_fix_operands(g->block, allowed) == 0) continue;
        g->fixed_truth = calloc(rs->n ? rs->n : 1, sizeof *g->fixed_truth);
        if (!g->fixed_truth) return false;
        for (size_t ri = 0; ri < rs->n; ri++) {
            const td_rule *r = &rs->rules[ri];
            if (r->guard) continue;
            td_rec_view view = ru_rule_view(r);
            td_ctx ctx = {.rec = &view, .settings = &rs->settings};
            g->fixed_truth[r->index] = td_expr_fixed_truth(g->block, &ctx);
        }
    }
    return true;
}

static bool build_index(td_ruleset *rs) {
    /* the rules array no longer moves: keys may point at the ids */
    for (size_t i = 0; i < rs->n; i++)
        rs->rules[i].key = td_rule_key_make(rs->rules[i].id);
    for (int t = 0; t < TD_EV__COUNT; t++) {
        size_t k = 0;
        for (size_t i = 0; i < rs->n; i++)
            if (!rs->rules[i].guard && (rs->rules[i].on & (1ULL << t))) k++;
        if (!k) continue;
        rs->by_type[t] = malloc(k * sizeof(td_rule *));
        if (!rs->by_type[t]) return false;
        for (size_t i = 0; i < rs->n; i++)
            if (!rs->rules[i].guard && (rs->rules[i].on & (1ULL << t)))
                rs->by_type[t][rs->nby_type[t]++] = &rs->rules[i];
    }
    rs->by_id_cap = 16;
    while (rs->by_id_cap < rs->n * 2)
        rs->by_id_cap *= 2;
    rs->by_id = calloc(rs->by_id_cap, sizeof *rs->by_id);
    if (!rs->by_id) return false;
    for (size_t i = 0; i < rs->n; i++) {
        size_t h = rs->rules[i].key.hash & (rs->by_id_cap - 1);
        while (rs->by_id[h])
            h = (h + 1) & (rs->by_id_cap - 1);
        rs->by_id[h] = &rs->rules[i];
    }
    if (!build_never_blocks(rs)) return false;
    size_t g = 0;
    for (size_t i = 0; i < rs->n; i++)
        g += rs->rules[i].guard;
    if (g) {
        rs->guards = malloc(g * sizeof(td_rule *));
        if (!rs->guards) return false;
        for (size_t i = 0; i < rs->n; i++)
            if (rs->rules[i].guard) rs->guards[rs->nguards++] = &rs->rules[i];
    }
    return true;
}

/* ---- warnings that need the whole ruleset (W304..W308) ---- */

static uint64_t types_matching(const char *prefix_or_suffix, bool suffix) {
    uint64_t m = 0;
    size_t pl = strlen(prefix_or_suffix);
    for (int t = 0; t < TD_EV__COUNT; t++) {
        const char *nm = td_event_type_name((td_event_type)t);
        size_t nl = strlen(nm);
        if (suffix ? (nl >= pl && strcmp(nm + nl - pl, prefix_or_suffix) == 0)
                   : strncmp(nm, prefix_or_suffix, pl) == 0)
            m |= 1ULL << t;
    }
    return m;
}

/* Event types that can carry event field `name`; all types for the envelope
 * fields, 0 for names that are not event fields. */
static uint64_t event_field_types(const char *name) {
    static const struct {
        const char *field, *match;
        bool suffix;
    } map[] = {
        {"event.sentiment", ".replied", true},  {"event.human", "email.opened", false},
        {"event.hard", "email.bounced", false}, {"event.value_eur", "gift.", false},
        {"event.items", "gift.", false},        {"event.gift_kind", "gift.", false},
        {"event.wrapping", "gift.", false},     {"event.duration_s", "call.", false},
        {"event.at", "meeting.", false},        {"event.stage", "prospect.", false},
        {"event.tier", "prospect.", false},
    };
    if (strncmp(name, "event.", 6) != 0) return 0;
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (strcmp(name, map[i].field) == 0) return types_matching(map[i].match, map[i].suffix);
    if (strcmp(name, "event.kind") == 0)
        return types_matching("email.", false) | types_matching("whatsapp.", false) |
               types_matching("sms.", false);
    return (1ULL << TD_EV__COUNT) - 1; /* type, channel, owner_id, occurred_at */
}

static void lint_warn(td_diags *d, const td_rule *r, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void lint_warn(td_diags *d, const td_rule *r, const char *code, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    diag_add(d, TD_SEV_WARNING, code, r->file, NULL, r->line, 0, 1, "%s", msg);
}

static bool shares_trigger(const td_rule *a, const td_rule *b) {
    return (a->on & b->on & ((1ULL << TD_EV__COUNT) - 1)) != 0;
}

static void lint(const td_ruleset *rs, td_diags *d) {
    char dur1[32], dur2[32];
    for (size_t i = 0; i < rs->n; i++) {
        const td_rule *r = &rs->rules[i];
        td_value k;
        const td_expr *cond = r->guard ? r->block : r->when;
        if (cond && td_expr_constant(cond, &k) && !k.missing && !k.u.b)
            lint_warn(d, r, "W304", "%s '%s' can never %s: its %s is always false",
                      r->guard ? "guard" : "rule", r->id, r->guard ? "block" : "fire",
                      r->guard ? "block" : "when");
        if (r->guard || !r->when) goto cooldown;
        const td_field *fs[32];
        size_t nf = td_expr_fields(r->when, fs, 32);
        for (size_t j = 0; j < nf && j < 32; j++) {
            const char *name = fs[j]->name;
            if (strncmp(name, "event.", 6) != 0) continue;
            if (r->after > 0) {
                lint_warn(d, r, "W305",
                          "timer rule '%s' reads %s, but event fields are missing when a timer "
                          "fires (the state is all there is): compare it with ?? or move the "
                          "condition to the state",
                          r->id, name);
                continue;
            }
            uint64_t carry = event_field_types(name);
            if ((carry & r->on) == 0)
                lint_warn(d, r, "W304",
                          "rule '%s' reads %s, which none of its `on` event types carries: a "
                          "comparison with it is always false (missing)",
                          r->id, name);
        }
    cooldown:
        if (!r->guard && r->after > 0 && r->cooldown >= r->after) {
            td_duration_format(r->cooldown, dur1, sizeof dur1);
            td_duration_format(r->after, dur2, sizeof dur2);
            lint_warn(d, r, "W308",
                      "timer rule '%s': cooldown %s is not shorter than its timer (after = %s): a "
                      "timer re-armed and due within the cooldown will not fire",
                      r->id, dur1, dur2);
        }
        if (r->guard || !r->group) continue;
        for (size_t j = 0; j < i; j++) {
            const td_rule *o = &rs->rules[j];
            if (o->guard || !o->group || strcmp(o->group, r->group) != 0) continue;
            if (!shares_trigger(o, r) || (o->after > 0) != (r->after > 0)) continue;
            if (o->priority == r->priority)
                lint_warn(d, r, "W306",
                          "rules '%s' and '%s' of group '%s' have the same priority %lld and "
                          "share a trigger: when both match, the one defined first ('%s') "
                          "always wins",
                          o->id, r->id, r->group, (long long)r->priority, o->id);
            /* a higher-priority rule that always matches and is never in
             * cooldown shadows every lower one on the triggers it covers */
            const td_rule *hi = o->priority >= r->priority ? o : r;
            const td_rule *lo = hi == o ? r : o;
            if (hi->priority > lo->priority && !hi->when && !hi->cooldown &&
                (lo->on & ~hi->on & ((1ULL << TD_EV__COUNT) - 1)) == 0)
                lint_warn(d, lo, "W307",
                          "rule '%s' can only win its group '%s' when a guard blocks '%s', which "
                          "has a higher priority, no `when` and no cooldown on every trigger of "
                          "'%s'",
                          lo->id, lo->group, hi->id, lo->id);
        }
    }
}

/* Every `withdraws` name must name something of the ruleset: a group or a
 * rule id, or (intent:) an intent some rule declares. */
static void ru_resolve_withdraws(const td_ruleset *rs, const td_source *srcs, size_t nsrc,
                                 td_diags *d) {
    for (size_t i = 0; i < rs->n; i++) {
        const td_rule *r = &rs->rules[i];
        for (uint32_t k = 0; k < r->nwithdraws; k++) {
            const td_withdraw *w = &r->withdraws[k];
            bool found = false;
            for (size_t j = 0; j < rs->n && !found; j++) {
                const td_rule *o = &rs->rules[j];
                if (o->guard) continue;
                if (w->kind == TD_WD_INTENT)
                    found = o->intent && strcmp(o->intent, w->name) == 0;
                else
                    found =
                        strcmp(o->id, w->name) == 0 || (o->group && strcmp(o->group, w->name) == 0);
            }
            if (found) continue;
            const td_source *src = NULL;
            for (size_t s = 0; s < nsrc; s++)
                if (strcmp(srcs[s].name, r->file) == 0) src = &srcs[s];
            int caret = w->col > 0 ? w->len : 1;
            if (w->kind == TD_WD_INTENT)
                diag_add(d, TD_SEV_ERROR, "E114", r->file, src, w->line, w->col, caret,
                         "rule '%s': withdraws 'intent:%s', but no rule of the ruleset declares "
                         "intent '%s'",
                         r->id, w->name, w->name);
            else
                diag_add(d, TD_SEV_ERROR, "E114", r->file, src, w->line, w->col, caret,
                         "rule '%s': withdraws '%s', which is neither a group nor a rule id of "
                         "the ruleset (for an intent write \"intent:%s\")",
                         r->id, w->name, w->name);
        }
    }
}

/* Every name an expression gives for a rule or a group must name one of
 * the ruleset: last_fired('id') and rec.rule a rule, rec.group the group
 * of a recommending rule. A reload that removes a rule another one names
 * is refused (the previous ruleset serves on), not served with a guard
 * that can no longer match, or always does. */
static bool ru_group_exists(const td_ruleset *rs, const char *g) {
    for (size_t j = 0; j < rs->n; j++)
        if (!rs->rules[j].guard && rs->rules[j].group && strcmp(rs->rules[j].group, g) == 0)
            return true;
    return false;
}

static void ru_check_refs(const td_ruleset *rs, const ru_ref *refs, size_t n, td_diags *d) {
    for (size_t i = 0; i < n; i++) {
        const ru_ref *x = &refs[i];
        bool found = !x->too_long && (x->kind == REF_GROUP ? ru_group_exists(rs, x->name)
                                                           : td_ruleset_find(rs, x->name) != NULL);
        if (found) continue;
        char name[TD_RULE_ID_MAX + 4];
        size_t l = strlen(x->name);
        memcpy(name, x->name, l + 1);
        for (size_t k = 0; k < l; k++) /* never a control byte in a log line */
            if ((unsigned char)name[k] < 0x20 || (unsigned char)name[k] >= 0x7f) name[k] = '?';
        if (x->too_long) memcpy(name + l, "...", 4);
        const char *who = x->guard ? "guard" : "rule";
        if (x->kind == REF_FIRED)
            diag_add(d, TD_SEV_ERROR, "E116", x->src->name, x->src, x->line, x->col, x->caret,
                     "%s '%s' reads last_fired('%s'), but the ruleset has no rule '%s' (removed "
                     "or misspelled?)",
                     who, x->rid, name, name);
        else if (x->kind == REF_RULE)
            diag_add(d, TD_SEV_ERROR, "E116", x->src->name, x->src, x->line, x->col, x->caret,
                     "%s '%s' compares rec.rule with '%s', but the ruleset has no rule '%s' "
                     "(removed or misspelled?)",
                     who, x->rid, name, name);
        else
            diag_add(d, TD_SEV_ERROR, "E116", x->src->name, x->src, x->line, x->col, x->caret,
                     "%s '%s' compares rec.group with '%s', but no rule of the ruleset has "
                     "group '%s' (removed or misspelled?)",
                     who, x->rid, name, name);
    }
}

td_ms td_rule_expires(const td_ruleset *rs, const td_rule *r) {
    return r->expires > 0 ? r->expires : rs->settings.expires;
}
td_ms td_rule_late_after(const td_ruleset *rs, const td_rule *r) {
    return r->late_after > 0 ? r->late_after : rs->settings.late_after;
}

bool td_rule_owner_audience(const td_rule *r) {
    return td_rule_owner_domain(r) || (r->touch && strcmp(r->touch, "owner_nudge") == 0) ||
           (r->intent && strcmp(r->intent, "owner") == 0);
}

bool td_intent_known(const char *intent) {
    static const char *const v[] = {"give", "ask_meeting", "follow_up", "reply", "reengage",
                                    "gift", "stop",        "owner",     NULL};
    for (size_t i = 0; v[i]; i++)
        if (strcmp(v[i], intent) == 0) return true;
    return false;
}

td_ruleset *td_ruleset_compile(const td_source *srcs, size_t n, td_diags *diags) {
    td_diags local = {0};
    if (!diags) diags = &local;
    size_t errors_before = diags->errors;
    td_ruleset *rs = calloc(1, sizeof *rs);
    if (!rs) return NULL;
    td_settings_default(&rs->settings);
    rs->own_calendar = td_calendar_new();
    if (!rs->own_calendar) {
        free(rs);
        return NULL;
    }
    rs->settings.calendar = rs->own_calendar;
    rs->files = calloc(n ? n : 1, sizeof(char *));
    if (!rs->files) {
        td_calendar_free(rs->own_calendar);
        free(rs);
        return NULL;
    }
    cctx cx = {.diags = diags, .rs = rs};
    size_t cap = 0;
    for (size_t i = 0; i < n; i++) {
        rs->files[rs->nfiles++] = xstrdup(srcs[i].name);
        cx.src = &srcs[i];
        compile_file(&cx, &cap);
    }
    if (n == 0)
        diag_add(diags, TD_SEV_ERROR, "E100", "<rules>", NULL, 0, 0, 1,
                 "no rules files: give *.rules files or a directory that contains some");
    compute_hash(rs, srcs, n);
    if (diags->errors == errors_before && !build_index(rs))
        diag_add(diags, TD_SEV_ERROR, "E100", "<rules>", NULL, 0, 0, 1, "out of memory");
    if (diags->errors == errors_before) {
        /* every dangling name at once: a removal usually leaves several */
        ru_resolve_withdraws(rs, srcs, n, diags);
        ru_check_refs(rs, cx.refs, cx.nrefs, diags);
    }
    if (diags->errors == errors_before) lint(rs, diags);
    free(cx.seen);
    free(cx.refs);
    bool failed = diags->errors != errors_before;
    if (diags == &local) td_diags_free(&local);
    if (failed) {
        td_ruleset_free(rs);
        return NULL;
    }
    return rs;
}

void td_ruleset_free(td_ruleset *rs) {
    if (!rs) return;
    for (size_t i = 0; i < rs->n; i++)
        rule_free(&rs->rules[i]);
    free(rs->rules);
    for (size_t i = 0; i < rs->nfiles; i++)
        free(rs->files[i]);
    free(rs->files);
    for (int t = 0; t < TD_EV__COUNT; t++)
        free(rs->by_type[t]);
    free(rs->guards);
    free(rs->by_id);
    td_calendar_free(rs->own_calendar);
    free(rs);
}

void td_ruleset_set_calendar(td_ruleset *rs, const td_calendar *cal) {
    rs->settings.calendar = cal ? cal : rs->own_calendar;
}

const char *td_ruleset_hash(const td_ruleset *rs) { return rs->hash; }
const td_settings *td_ruleset_settings(const td_ruleset *rs) { return &rs->settings; }
size_t td_ruleset_count(const td_ruleset *rs) { return rs->n; }
const td_rule *td_ruleset_rule(const td_ruleset *rs, size_t i) {
    return i < rs->n ? &rs->rules[i] : NULL;
}
const td_rule *td_ruleset_find(const td_ruleset *rs, const char *id) {
    if (!rs->by_id) return find_rule(rs, rs->n, id);
    td_rule_key k = td_rule_key_make(id);
    return td_ruleset_find_key(rs, &k);
}

const td_rule *td_ruleset_find_key(const td_ruleset *rs, const td_rule_key *key) {
    if (!rs->by_id) return find_rule(rs, rs->n, key->id);
    size_t h = key->hash & (rs->by_id_cap - 1);
    for (const td_rule *r; (r = rs->by_id[h]); h = (h + 1) & (rs->by_id_cap - 1))
        if (r->key.hash == key->hash && strcmp(r->id, key->id) == 0) return r;
    return NULL;
}

/* A bounded comma-separated list: names are added while they fit (with
 * room kept for the "+N" of those that do not). */
typedef struct ru_list {
    char *out;
    size_t cap, len, n, unlisted;
} ru_list;

static void ru_list_add(ru_list *l, const char *name) {
    size_t nl = strlen(name), need = (l->len ? 1 : 0) + nl;
    l->n++;
    if (l->unlisted || l->cap < 24 || l->len + need + 22 > l->cap) {
        l->unlisted++;
        return;
    }
    if (l->len) l->out[l->len++] = ',';
    for (size_t i = 0; i < nl; i++) {
        unsigned char c = (unsigned char)name[i];
        l->out[l->len++] = c > 0x20 && c < 0x7f ? (char)c : '?';
    }
    l->out[l->len] = '\0';
}

static void ru_list_end(ru_list *l) {
    if (l->unlisted && l->cap >= 24)
        snprintf(l->out + l->len, l->cap - l->len, "%s+%zu", l->len ? "," : "", l->unlisted);
}

void td_ruleset_removed(const td_ruleset *from, const td_ruleset *to, size_t *nrules,
                        char *rules_out, size_t rules_cap, size_t *nfiles, char *files_out,
                        size_t files_cap) {
    ru_list r = {.out = rules_out, .cap = rules_cap}, f = {.out = files_out, .cap = files_cap};
    if (rules_cap) rules_out[0] = '\0';
    if (files_cap) files_out[0] = '\0';
    for (size_t i = 0; from && to && i < from->n; i++)
        if (!td_ruleset_find(to, from->rules[i].id)) ru_list_add(&r, from->rules[i].id);
    for (size_t i = 0; from && to && i < from->nfiles; i++) {
        bool kept = false;
        for (size_t j = 0; j < to->nfiles && !kept; j++)
            kept = strcmp(from->files[i], to->files[j]) == 0;
        if (kept) continue;
        const char *base = strrchr(from->files[i], '/');
        ru_list_add(&f, base ? base + 1 : from->files[i]);
    }
    ru_list_end(&r);
    ru_list_end(&f);
    *nrules = r.n;
    *nfiles = f.n;
}

const td_rule *const *td_ruleset_for_event(const td_ruleset *rs, td_event_type t, size_t *n) {
    if ((int)t < 0 || t >= TD_EV__COUNT) {
        *n = 0;
        return NULL;
    }
    *n = rs->nby_type[t];
    return (const td_rule *const *)rs->by_type[t];
}

const td_rule *const *td_ruleset_guards(const td_ruleset *rs, size_t *n) {
    *n = rs->nguards;
    return (const td_rule *const *)rs->guards;
}

bool td_rule_owner_domain(const td_rule *r) {
    const uint64_t owner = 1ULL << TD_EV_OWNER_PROSPECT_CONTACTED;
    return (r->on & ((1ULL << TD_EV__COUNT) - 1)) == owner;
}

bool td_rule_guards_candidate(const td_rule *g, const td_rule *r, int event_type) {
    const uint64_t owner = 1ULL << TD_EV_OWNER_PROSPECT_CONTACTED;
    if (td_rule_owner_domain(r)) return (g->on & owner) != 0;
    return td_rule_guards_trigger(g, event_type);
}

bool td_rule_guards_trigger(const td_rule *g, int event_type) {
    if (g->on == 0) return true;
    if (event_type < 0) return (g->on & TD_ON_TIMER) != 0;
    return (g->on & (1ULL << event_type)) != 0;
}

static const char *const touch_vocab[] = {
    "value_insight", "mini_audit",       "introduction",  "follow_up",     "micro_question",
    "call_proposal", "human_reply",      "reengage",      "physical_gift", "handwritten_card",
    "service_gift",  "charity_donation", "stop_sequence", "owner_nudge",   NULL};

bool td_touch_known(const char *touch) { return key_known(touch, touch_vocab); }
