/*
 * td_cmd_gifts.c - `touchd gifts`: print the gift register (docs/gifts.md)
 * for a prospect or a year, with the yearly totals per prospect and whether
 * the country's tax cap on client gifts is exceeded.
 *
 *   touchd gifts -c CONFIG [--prospect ID] [--year YYYY] [--json] ...
 *       reads the Redis register (XRANGE of <prefix>:gifts:<YYYY>); the
 *       prospects' countries come from their states (HGETALL)
 *   touchd gifts --events FILE.jsonl [--prospect ID] [--year YYYY] ...
 *       builds the same register offline from an event file: each gift.sent
 *       applied once (first occurrence of an event id), the local year from
 *       the prospect's timezone as the events set it (prospect.updated)
 *
 * The tax cap of a prospect: --tax-cap EUR for every prospect, else the
 * ruleset's settings (gift_tax_cap_eur per country) of --rules DIR or of the
 * config's rules.dir, by the prospect's country. Without either, no cap.
 *
 * Output carries ids, kinds and amounts only (the register holds nothing
 * else: never a gift's description).
 *
 * @locality main thread.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "td_cli.h"
#include "td_config.h"
#include "td_engine.h"
#include "td_event.h"
#include "td_gifts.h"
#include "td_redis.h"
#include "td_state.h"

static void usage(FILE *f) {
    fprintf(
        f, "usage: touchd gifts -c CONFIG [--redis ADDR] [options]\n"
           "       touchd gifts --events FILE.jsonl|- [options]\n"
           "\n"
           "Prints the gift register (every gift.sent: date, prospect, owner, kind, value,\n"
           "items, wrapping, event id) and per prospect and year the number of gifts, the\n"
           "spend and whether the country's yearly tax cap on client gifts is exceeded.\n"
           "\n"
           "  -c, --config FILE   read the register from the Redis of this daemon config\n"
           "      --redis ADDR    override redis (HOST:PORT, unix:/path)\n"
           "      --events FILE   build the register offline from events (JSON lines, - = stdin)\n"
           "  -p, --prospect ID   only this prospect\n"
           "  -y, --year YYYY     only this year (the prospect's local calendar year);\n"
           "                      default: every year in the register\n"
           "      --rules DIR     ruleset whose settings give the tax caps per country and the\n"
           "                      default timezone (default with -c: the config's rules.dir)\n"
           "      --tax-cap EUR   one yearly cap for every prospect (overrides the ruleset)\n"
           "      --json          one JSON document: {\"gifts\": [...], \"totals\": [...]}\n"
           "  -h, --help          this help\n"
           "\n"
           "Exit status: 0 printed; 1 the rules do not compile or the events file cannot be\n"
           "read; 2 usage or configuration error; 3 (--events) some lines were rejected\n"
           "(reported with their line numbers, the others used); 4 Redis unreachable or failed.\n");
}

/* ------------------------------------------------------------- helpers */

typedef struct gx_prospect {
    char id[TD_ID_MAX + 1];
    char country[3];
    td_state st; /* --events: the prospect's state as the events built it */
    bool has_state;
} gx_prospect;

typedef struct gx {
    td_gift_rec *recs;
    size_t n, cap;
    gx_prospect *ps;
    size_t np, capp;
} gx;

static int gx_push(gx *x, const td_gift_rec *r) {
    if (td_grow(&x->recs, &x->cap, x->n, sizeof *x->recs, 64) != TD_OK) return -1;
    x->recs[x->n++] = *r;
    return 0;
}

/* Prospects are few per audit: a sorted array with binary search. */
static gx_prospect *gx_find(gx *x, const char *id, bool create) {
    size_t lo = 0, hi = x->np;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(x->ps[mid].id, id);
        if (c == 0) return &x->ps[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (!create) return NULL;
    if (td_grow(&x->ps, &x->capp, x->np, sizeof *x->ps, 64) != TD_OK) return NULL;
    memmove(&x->ps[lo + 1], &x->ps[lo], (x->np - lo) * sizeof *x->ps);
    x->np++;
    gx_prospect *p = &x->ps[lo];
    memset(p, 0, sizeof *p);
    td_strlcpy(p->id, id, sizeof p->id);
    return p;
}

static void gx_free(gx *x) {
    for (size_t i = 0; i < x->np; i++)
        if (x->ps[i].has_state) td_state_free(&x->ps[i].st);
    free(x->ps);
    free(x->recs);
}

static int gx_rec_cmp(const void *a, const void *b) {
    const td_gift_rec *x = a, *y = b;
    if (x->year != y->year) return x->year < y->year ? -1 : 1;
    int c = strcmp(x->prospect_id, y->prospect_id);
    if (c) return c;
    if (x->occurred_at != y->occurred_at) return x->occurred_at < y->occurred_at ? -1 : 1;
    return strcmp(x->event_id, y->event_id);
}

/* A seen-set of event ids (offline mode): open addressing on 64-bit hashes
 * plus the id itself for exactness. */
typedef struct gx_seen {
    char **ids;
    size_t n, cap;
} gx_seen;

/* @returns 1 when id was already there, 0 when added, -1 out of memory. */
static int gx_seen_add(gx_seen *s, const char *id) {
    if (2 * (s->n + 1) > s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 256;
        char **v = calloc(cap, sizeof *v);
        if (!v) return -1;
        for (size_t i = 0; i < s->cap; i++) {
            if (!s->ids[i]) continue;
            size_t h = (size_t)td_hash64(s->ids[i], strlen(s->ids[i]), TD_HASH_SEED) & (cap - 1);
            while (v[h])
                h = (h + 1) & (cap - 1);
            v[h] = s->ids[i];
        }
        free(s->ids);
        s->ids = v;
        s->cap = cap;
    }
    size_t h = (size_t)td_hash64(id, strlen(id), TD_HASH_SEED) & (s->cap - 1);
    while (s->ids[h]) {
        if (strcmp(s->ids[h], id) == 0) return 1;
        h = (h + 1) & (s->cap - 1);
    }
    s->ids[h] = strdup(id);
    if (!s->ids[h]) return -1;
    s->n++;
    return 0;
}

static void gx_seen_free(gx_seen *s) {
    for (size_t i = 0; i < s->cap; i++)
        free(s->ids[i]);
    free(s->ids);
}

/* The yearly cap for a country: --tax-cap, else the settings; missing when
 * neither has one. */
static td_dec gx_cap(const td_settings *set, td_dec cli_cap, const char *country) {
    if (cli_cap != TD_DEC_MISSING) return cli_cap;
    if (!set || !country || !country[0]) return TD_DEC_MISSING;
    for (uint32_t i = 0; i < set->ngift_tax_caps; i++)
        if (strcmp(set->gift_tax_caps[i].country, country) == 0)
            return set->gift_tax_caps[i].cap_eur;
    return TD_DEC_MISSING;
}

/* ------------------------------------------------------------- sources */

/* Offline: every valid line is applied to its prospect's state (so the
 * timezone and country follow the events); each gift.sent whose id was not
 * seen before becomes a record. @returns the number of rejected lines, or
 * -1 when the file cannot be read, -2 out of memory. */
static long gx_from_events(gx *x, const char *path, const td_settings *set, td_tzdb *tz) {
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "r");
    if (!f) {
        fprintf(stderr, "touchd gifts: %s: %s\n", path, strerror(errno));
        return -1;
    }
    gx_seen seen = {0};
    char *line = NULL;
    size_t lcap = 0;
    ssize_t len;
    long lineno = 0, rejected = 0, rc = 0;
    td_event ev;
    while ((len = getline(&line, &lcap, f)) >= 0) {
        lineno++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = '\0';
        size_t k = 0;
        while (k < (size_t)len && (line[k] == ' ' || line[k] == '\t'))
            k++;
        if (k == (size_t)len) continue; /* blank line */
        td_event_error ee;
        if (td_event_decode(line, (size_t)len, &ev, &ee) != TD_OK) {
            /* the reason names the field, never its value */
            fprintf(stderr, "%s:%ld: rejected: %s%s%s\n", path, lineno, ee.field,
                    ee.field[0] ? ": " : "", ee.reason);
            rejected++;
            continue;
        }
        gx_prospect *p = gx_find(x, ev.prospect_id, true);
        if (!p) {
            rc = -2;
            break;
        }
        if (!p->has_state) {
            td_state_init(&p->st, ev.prospect_id);
            p->has_state = true;
        }
        if (td_state_seen(&p->st, ev.id)) continue; /* a duplicate the engine would drop too */
        int dup = 0;
        if (ev.type == TD_EV_GIFT_SENT && (dup = gx_seen_add(&seen, ev.id)) < 0) {
            rc = -2;
            break;
        }
        if (td_state_apply(&p->st, &ev, tz, set) != TD_OK) {
            rc = -2;
            break;
        }
        td_state_remember(&p->st, ev.id);
        if (ev.type == TD_EV_GIFT_SENT && dup == 0) {
            td_gift_rec r;
            td_gift_rec_from_event(&r, &ev, &p->st, tz, set);
            if (gx_push(x, &r) < 0) {
                rc = -2;
                break;
            }
        }
    }
    free(line);
    gx_seen_free(&seen);
    bool rerr = ferror(f);
    if (f != stdin) fclose(f);
    if (rc < 0) return rc;
    if (rerr) {
        fprintf(stderr, "touchd gifts: %s: read error\n", path);
        return -1;
    }
    for (size_t i = 0; i < x->np; i++)
        td_strlcpy(x->ps[i].country, x->ps[i].st.country, sizeof x->ps[i].country);
    return rejected;
}

/* Redis: the register streams of the years asked, then the countries of the
 * prospects found (their states). @returns 0, or -1 (message printed). */
static int gx_from_redis(gx *x, const td_config *cfg, const char *prospect, int year) {
    char err[600];
    td_gifts *g = td_gifts_new(&cfg->redis, cfg->gifts.retention_days, err, sizeof err);
    if (!g) {
        fprintf(stderr, "touchd gifts: %s\n", err);
        return -1;
    }
    int years[512];
    int ny;
    if (year > 0) {
        years[0] = year;
        ny = 1;
    } else {
        ny = td_gifts_years(g, years, sizeof years / sizeof *years);
    }
    int rc = 0;
    if (ny < 0) rc = -1;
    for (int i = 0; i < ny && rc == 0; i++)
        if (td_gifts_read(g, years[i], prospect, &x->recs, &x->n, &x->cap) != TD_OK) rc = -1;
    if (rc < 0) {
        fprintf(stderr, "touchd gifts: %s\n", td_gifts_last_error(g));
        td_gifts_free(g);
        return -1;
    }
    td_gifts_free(g);
    for (size_t i = 0; i < x->n; i++)
        if (!gx_find(x, x->recs[i].prospect_id, true)) return -1;
    if (x->np == 0) return 0;
    /* the countries: one pipelined load of the prospects' states */
    td_redis *r = td_redis_new(&cfg->redis, err, sizeof err);
    if (!r) {
        fprintf(stderr, "touchd gifts: %s\n", err);
        return -1;
    }
    td_state *sts = calloc(x->np, sizeof *sts);
    if (!sts) {
        td_redis_free(r);
        return -1;
    }
    for (size_t i = 0; i < x->np; i++)
        td_state_init(&sts[i], x->ps[i].id);
    if (td_redis_load(r, sts, x->np) != TD_OK) {
        fprintf(stderr, "touchd gifts: %s\n", td_redis_last_error(r));
        rc = -1;
    } else {
        for (size_t i = 0; i < x->np; i++)
            td_strlcpy(x->ps[i].country, sts[i].country, sizeof x->ps[i].country);
    }
    for (size_t i = 0; i < x->np; i++)
        td_state_free(&sts[i]);
    free(sts);
    td_redis_free(r);
    return rc;
}

/* -------------------------------------------------------------- output */

typedef struct gx_total {
    const char *prospect_id;
    const char *country;
    int year;
    int64_t count;
    td_dec spend;
    td_dec cap;
} gx_total;

static size_t gx_totals(gx *x, const td_settings *set, td_dec cli_cap, gx_total *t) {
    size_t nt = 0;
    for (size_t i = 0; i < x->n; i++) {
        const td_gift_rec *r = &x->recs[i];
        if (nt == 0 || t[nt - 1].year != r->year ||
            strcmp(t[nt - 1].prospect_id, r->prospect_id) != 0) {
            gx_prospect *p = gx_find(x, r->prospect_id, false);
            const char *country = p ? p->country : "";
            t[nt++] =
                (gx_total){r->prospect_id, country, r->year, 0, 0, gx_cap(set, cli_cap, country)};
        }
        t[nt - 1].count++;
        if (r->value_eur != TD_DEC_MISSING) t[nt - 1].spend += r->value_eur;
    }
    return nt;
}

static const char *gx_cap_word(const gx_total *t) {
    if (t->cap == TD_DEC_MISSING) return "no cap";
    return t->spend > t->cap ? "EXCEEDED" : "within";
}

static void gx_print_table(gx *x, const gx_total *t, size_t nt) {
    enum { NC = 8 };
    static const char *const head[NC] = {"occurred_at", "prospect", "owner",    "kind",
                                         "value_eur",   "items",    "wrapping", "event_id"};
    size_t w[NC];
    for (int c = 0; c < NC; c++)
        w[c] = strlen(head[c]);
    char cell[NC][TD_ID_MAX + 8];
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1) {
            for (int c = 0; c < NC; c++)
                printf("%-*s%s", c == NC - 1 ? 0 : (int)w[c], head[c], c == NC - 1 ? "\n" : "  ");
        }
        for (size_t i = 0; i < x->n; i++) {
            const td_gift_rec *r = &x->recs[i];
            td_time_format(r->occurred_at, cell[0], sizeof cell[0]);
            snprintf(cell[1], sizeof cell[1], "%s", r->prospect_id);
            snprintf(cell[2], sizeof cell[2], "%s", r->owner_id[0] ? r->owner_id : "-");
            snprintf(cell[3], sizeof cell[3], "%s",
                     r->kind != TD_GK_NONE ? td_gift_kind_name(r->kind) : "-");
            if (r->value_eur != TD_DEC_MISSING)
                td_gift_dec_format(r->value_eur, cell[4], sizeof cell[4]);
            else
                snprintf(cell[4], sizeof cell[4], "-");
            if (r->items != TD_INT_MISSING)
                snprintf(cell[5], sizeof cell[5], "%" PRId64, r->items);
            else
                snprintf(cell[5], sizeof cell[5], "-");
            snprintf(cell[6], sizeof cell[6], "%s", r->wrapping[0] ? r->wrapping : "-");
            snprintf(cell[7], sizeof cell[7], "%s", r->event_id);
            for (int c = 0; c < NC; c++) {
                if (pass == 0) {
                    size_t l = strlen(cell[c]);
                    w[c] = l > w[c] ? l : w[c];
                } else {
                    printf("%-*s%s", c == NC - 1 ? 0 : (int)w[c], cell[c],
                           c == NC - 1 ? "\n" : "  ");
                }
            }
        }
    }
    printf("\n");
    /* totals per prospect and year */
    size_t wp = strlen("prospect");
    for (size_t i = 0; i < nt; i++)
        wp = strlen(t[i].prospect_id) > wp ? strlen(t[i].prospect_id) : wp;
    printf("%-4s  %-*s  %5s  %12s  %-7s  %11s  %s\n", "year", (int)wp, "prospect", "gifts",
           "spend_eur", "country", "tax_cap_eur", "cap");
    for (size_t i = 0; i < nt; i++) {
        char sp[40], cp[40];
        td_gift_dec_format(t[i].spend, sp, sizeof sp);
        if (t[i].cap != TD_DEC_MISSING)
            td_gift_dec_format(t[i].cap, cp, sizeof cp);
        else
            snprintf(cp, sizeof cp, "-");
        printf("%04d  %-*s  %5" PRId64 "  %12s  %-7s  %11s  %s\n", t[i].year, (int)wp,
               t[i].prospect_id, t[i].count, sp, t[i].country[0] ? t[i].country : "-", cp,
               gx_cap_word(&t[i]));
    }
    printf("%zu gift%s, %zu prospect-year%s\n", x->n, x->n == 1 ? "" : "s", nt, nt == 1 ? "" : "s");
}

static int gx_print_json(gx *x, const gx_total *t, size_t nt) {
    td_buf b = {0};
    int rc = td_buf_append(&b, "{\"gifts\":[", 10);
    for (size_t i = 0; i < x->n && rc == 0; i++) {
        if (i) rc = td_buf_append(&b, ",", 1);
        if (rc == 0) rc = td_gift_rec_json(&x->recs[i], &b);
    }
    if (rc == 0) rc = td_buf_append(&b, "],\"totals\":[", 12);
    for (size_t i = 0; i < nt && rc == 0; i++) {
        char sp[40], cp[40];
        td_gift_dec_format(t[i].spend, sp, sizeof sp);
        rc = td_buf_append(&b, i ? ",{\"prospect_id\":" : "{\"prospect_id\":", i ? 16 : 15);
        if (rc == 0) rc = td_buf_json_str(&b, t[i].prospect_id, strlen(t[i].prospect_id));
        if (rc == 0)
            rc = td_buf_printf(&b, ",\"year\":%d,\"count\":%" PRId64 ",\"spend_eur\":\"%s\"",
                               t[i].year, t[i].count, sp);
        if (rc == 0 && t[i].country[0]) rc = td_buf_printf(&b, ",\"country\":\"%s\"", t[i].country);
        if (rc == 0 && t[i].cap != TD_DEC_MISSING) {
            td_gift_dec_format(t[i].cap, cp, sizeof cp);
            rc = td_buf_printf(&b, ",\"tax_cap_eur\":\"%s\",\"cap_exceeded\":%s", cp,
                               t[i].spend > t[i].cap ? "true" : "false");
        }
        if (rc == 0) rc = td_buf_append(&b, "}", 1);
    }
    if (rc == 0) rc = td_buf_append(&b, "]}\n", 3);
    if (rc == 0 && fwrite(b.p, 1, b.len, stdout) != b.len) rc = -1;
    td_buf_free(&b);
    return rc;
}

/* ----------------------------------------------------------------- main */

int td_cmd_gifts(int argc, char **argv) {
    enum { O_REDIS = 1000, O_EVENTS, O_RULES, O_TAXCAP, O_JSON };
    static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                         {"redis", required_argument, NULL, O_REDIS},
                                         {"events", required_argument, NULL, O_EVENTS},
                                         {"prospect", required_argument, NULL, 'p'},
                                         {"year", required_argument, NULL, 'y'},
                                         {"rules", required_argument, NULL, O_RULES},
                                         {"tax-cap", required_argument, NULL, O_TAXCAP},
                                         {"json", no_argument, NULL, O_JSON},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *conf_path = NULL, *redis = NULL, *events = NULL, *prospect = NULL, *rules = NULL;
    int year = 0;
    td_dec cli_cap = TD_DEC_MISSING;
    bool json = false;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:p:y:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            conf_path = optarg;
            break;
        case O_REDIS:
            redis = optarg;
            break;
        case O_EVENTS:
            events = optarg;
            break;
        case 'p':
            prospect = optarg;
            break;
        case 'y': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*optarg == '\0' || *end || v < 1 || v > 9999) {
                fprintf(stderr, "touchd gifts: --year: expected a year such as 2026, got \"%s\"\n",
                        optarg);
                return TD_EXIT_USAGE;
            }
            year = (int)v;
            break;
        }
        case O_RULES:
            rules = optarg;
            break;
        case O_TAXCAP:
            if (td_gift_dec_parse(optarg, strlen(optarg), &cli_cap) != TD_OK || cli_cap < 0) {
                fprintf(stderr,
                        "touchd gifts: --tax-cap: expected an amount in EUR such as 73 or "
                        "73.50, got \"%s\"\n",
                        optarg);
                return TD_EXIT_USAGE;
            }
            break;
        case O_JSON:
            json = true;
            break;
        case 'h':
            usage(stdout);
            return TD_EXIT_OK;
        default:
            usage(stderr);
            return TD_EXIT_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "touchd gifts: unexpected argument \"%s\"\n", argv[optind]);
        usage(stderr);
        return TD_EXIT_USAGE;
    }
    if (!conf_path == !events) {
        fprintf(stderr, "touchd gifts: give either -c CONFIG (the Redis register) or --events "
                        "FILE (offline)\n");
        usage(stderr);
        return TD_EXIT_USAGE;
    }
    if (redis && !conf_path) {
        fprintf(stderr, "touchd gifts: --redis goes with -c CONFIG\n");
        return TD_EXIT_USAGE;
    }
    if (prospect && (!*prospect || strlen(prospect) > TD_ID_MAX)) {
        fprintf(stderr, "touchd gifts: --prospect: expected 1..%d bytes\n", TD_ID_MAX);
        return TD_EXIT_USAGE;
    }

    td_config *cfg = NULL;
    char err[1024];
    if (conf_path) {
        cfg = td_config_load(conf_path, err, sizeof err);
        if (!cfg) {
            fprintf(stderr, "touchd gifts: %s\n", err);
            return TD_EXIT_USAGE;
        }
        if (td_config_override(cfg, redis, NULL, NULL, err, sizeof err) < 0) {
            fprintf(stderr, "touchd gifts: %s\n", err);
            td_config_free(cfg);
            return TD_EXIT_USAGE;
        }
        if (!rules && cli_cap == TD_DEC_MISSING) rules = cfg->rules.dir;
    }

    /* the settings: tax caps, and (offline) the default timezone */
    td_ruleset *rs = NULL;
    td_settings defaults;
    td_settings_default(&defaults);
    const td_settings *set = &defaults;
    if (rules) {
        td_diags dg = {0};
        const char *paths[1] = {rules};
        rs = td_load_rules(paths, 1, &dg);
        if (!rs) {
            td_print_diags(&dg, stderr);
            td_diags_free(&dg);
            td_config_free(cfg);
            return TD_EXIT_FAIL;
        }
        td_diags_free(&dg);
        set = td_ruleset_settings(rs);
    }

    struct sigaction sa = {0};
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL); /* a Redis that closes the socket must not kill us */

    gx x = {0};
    int rc = TD_EXIT_OK;
    td_tzdb *tz = NULL;
    if (events) {
        tz = td_tzdb_new();
        long rej = gx_from_events(&x, events, set, tz);
        if (rej == -1)
            rc = TD_EXIT_FAIL;
        else if (rej == -2)
            rc = TD_EXIT_FATAL;
        else if (rej > 0)
            rc = TD_EXIT_REJECTED;
        /* filters (the Redis path filters while reading) */
        size_t k = 0;
        for (size_t i = 0; i < x.n; i++)
            if ((!prospect || strcmp(prospect, x.recs[i].prospect_id) == 0) &&
                (year == 0 || x.recs[i].year == year))
                x.recs[k++] = x.recs[i];
        x.n = k;
    } else if (gx_from_redis(&x, cfg, prospect, year) < 0) {
        rc = TD_EXIT_FATAL;
    }

    if (rc == TD_EXIT_OK || rc == TD_EXIT_REJECTED) {
        if (x.n > 1) qsort(x.recs, x.n, sizeof *x.recs, gx_rec_cmp);
        gx_total *t = calloc(x.n ? x.n : 1, sizeof *t);
        if (!t) {
            rc = TD_EXIT_FATAL;
        } else {
            size_t nt = gx_totals(&x, set, cli_cap, t);
            if (json) {
                if (gx_print_json(&x, t, nt) < 0) rc = TD_EXIT_FATAL;
            } else {
                gx_print_table(&x, t, nt);
            }
            if (fflush(stdout) != 0) rc = TD_EXIT_FATAL;
            free(t);
        }
    }
    gx_free(&x);
    td_tzdb_free(tz);
    td_ruleset_free(rs);
    td_config_free(cfg);
    return rc;
}
