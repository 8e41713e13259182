/*
 * bench_engine.c - throughput of the functional core: the engine step alone,
 * and decode + step, over a realistic in-memory event mix.
 *
 * Not a test: it prints figures (docs/testing.md, "Benchmarks", says how to
 * read them). Targets: step alone >= 1,000,000 events/s, decode + step >=
 * 250,000 events/s, single thread.
 *
 * The workload: N prospects (10,000 by default), each with a plausible life:
 * a CRM update (tier, country, zone, consent, gift policy...), one to four
 * emails with deliveries, human and machine opens, clicks, sometimes a reply
 * (positive, neutral, negative or out-of-office), then a pivot to WhatsApp,
 * SMS or LinkedIn, calls, meetings, gifts, stage changes, rare unsubscribes
 * and opt-outs, and ~1% redelivered duplicates (as Kafka does). Prospects
 * start over 90 days, so their events interleave; the stream is sorted by
 * time and the clock follows it, as in `touchd replay`. Pending timers of a
 * prospect that fall due before its next event fire first (timer triggers),
 * so timer rules cost what they cost in the daemon.
 *
 * What is measured (CLOCK_MONOTONIC, after one warm-up pass):
 *   step          td_engine_step on pre-decoded events, in-memory states;
 *   decode+step   td_event_decode of the JSON text, then the step.
 * Each timed pass starts from fresh states (re-initialising them is not
 * timed), so a pass never sees its own events as duplicates. Passes repeat
 * until at least --seconds (2) of measured work.
 *
 * --callgrind: one pass of each kind, no timing, for
 *   valgrind --tool=callgrind --toggle-collect='bench_pass_step*' ...
 * (tests/bench/callgrind.sh runs it on N and 2N events and prints the
 * instructions per event of each pass from the difference.)
 *
 * --flat: what a write costs besides the step. The stream is stepped once
 * (untimed); for --samples writes spread over it (5000 by default) the state
 * before and after the step is copied, with the recommendations of that
 * step. Then, timed as above:
 *   capture       td_kvs_capture of the state after (the new flat form, into
 *                 one reused td_kvs, as the daemon's pack_now);
 *   diff          td_kvs_diff of the flat forms before and after;
 *   rec_json      td_rec_json of each recommendation of the sampled steps.
 * With --callgrind each runs once, in bench_pass_flat_capture,
 * bench_pass_flat_diff and bench_pass_rec_json (valgrind --toggle-collect).
 * --dump (with --flat) prints instead every sampled flat form and
 * recommendation JSON, then the flat forms of --samples synthetic states
 * with random and extreme field values: two builds that print the same
 * bytes serialise identically.
 *
 * @locality single thread.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "td_engine.h"
#include "td_event.h"
#include "td_kvs.h"
#include "td_rules.h"
#include "td_state.h"
#include "td_time.h"

#if defined(__clang__)
#define BENCH_NOINLINE __attribute__((noinline))
#else
#define BENCH_NOINLINE __attribute__((noinline, noclone))
#endif

/* ---- options ---- */

typedef struct opts {
    long prospects; /* used when events == 0 */
    long events;    /* 0: all events of `prospects` */
    double seconds; /* minimum measured time per kind */
    const char *rules;
    bool callgrind;
    bool check; /* exit 1 when a target is missed */
    bool flat;  /* flat-form capture, diff and recommendation JSON */
    bool dump;  /* with flat: print them instead of timing */
    long samples;
    unsigned seed;
} opts;

static void usage(FILE *f) {
    fprintf(
        f,
        "usage: bench_engine [--prospects N] [--events N] [--seconds S] [--rules DIR]\n"
        "                    [--seed N] [--check] [--callgrind] [--flat [--samples N] [--dump]]\n"
        "  --prospects N  prospects to generate (default 10000)\n"
        "  --events N     generate prospects until N events, then stop at N\n"
        "  --seconds S    minimum measured time for each kind (default 2)\n"
        "  --rules DIR    the ruleset (default: $TD_SOURCE_DIR/rules, ./rules, ../rules)\n"
        "  --check        exit 1 when a target is missed (step >= 1e6/s,\n"
        "                 decode+step >= 250e3/s)\n"
        "  --callgrind    one untimed pass of each kind, for valgrind --tool=callgrind\n"
        "                 (see tests/bench/callgrind.sh)\n"
        "  --flat         measure a write's flat form (capture, diff) and the\n"
        "                 recommendation JSON on states sampled from the stream\n"
        "  --samples N    writes sampled for --flat (default 5000)\n"
        "  --dump         with --flat: print the flat forms and JSON, no timing\n");
}

/* ---- a small deterministic PRNG (xorshift64*) ---- */

typedef struct rng {
    uint64_t s;
} rng;

static uint64_t rng_next(rng *r) {
    uint64_t x = r->s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    r->s = x;
    return x * 0x2545F4914F6CDD1DULL;
}
static int rng_below(rng *r, int n) { return (int)(rng_next(r) % (uint64_t)n); }
static bool rng_pct(rng *r, int pct) { return rng_below(r, 100) < pct; }

/* ---- the generated stream ---- */

typedef struct gen_event {
    td_ms at;
    uint32_t prospect; /* index into the states */
    uint32_t seq;      /* generation order: ties keep it */
    char *json;        /* NUL-terminated */
    uint32_t len;
} gen_event;

typedef struct stream {
    gen_event *v;
    size_t n, cap;
    size_t duplicates;
    uint32_t prospects;
} stream;

static void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n);
    if (!q) {
        fprintf(stderr, "bench_engine: out of memory\n");
        exit(1);
    }
    return q;
}

static char *xstrdup(const char *s, size_t n) {
    char *p = xrealloc(NULL, n + 1);
    memcpy(p, s, n + 1);
    return p;
}

static void stream_push(stream *s, td_ms at, uint32_t prospect, const char *json, size_t len) {
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 4096;
        s->v = xrealloc(s->v, s->cap * sizeof *s->v);
    }
    gen_event *e = &s->v[s->n];
    e->at = at;
    e->prospect = prospect;
    e->seq = (uint32_t)s->n;
    e->json = xstrdup(json, len);
    e->len = (uint32_t)len;
    s->n++;
}

/* One prospect's generator: its ids, clock and counters. */
typedef struct pgen {
    stream *s;
    rng r;
    uint32_t idx;
    char pid[32];
    char owner[16];
    td_ms t;
    int seq;
} pgen;

/* Emits one event of `type` at the prospect's clock with `data` (a JSON
 * object body without braces, or NULL). */
static void emit(pgen *g, const char *type, const char *data) {
    char ts[TD_TIME_BUF];
    td_time_format(g->t, ts, sizeof ts);
    char buf[1024];
    int n = snprintf(buf, sizeof buf,
                     "{\"id\":\"e-%s-%04d\",\"type\":\"%s\",\"prospect_id\":\"%s\","
                     "\"occurred_at\":\"%s\",\"owner_id\":\"%s\",\"source\":\"crm-bench\"%s%s%s}",
                     g->pid, g->seq++, type, g->pid, ts, g->owner, data ? ",\"data\":{" : "",
                     data ? data : "", data ? "}" : "");
    if (n < 0 || (size_t)n >= sizeof buf) {
        fprintf(stderr, "bench_engine: event too long\n");
        exit(1);
    }
    stream_push(g->s, g->t, g->idx, buf, (size_t)n);
    /* ~1% of messages are delivered twice (consumer restarts, rebalances) */
    if (rng_pct(&g->r, 1)) {
        stream_push(g->s, g->t + 2 * TD_SECOND, g->idx, buf, (size_t)n);
        g->s->duplicates++;
    }
}

static void advance(pgen *g, td_ms min, td_ms max) {
    g->t += min + (td_ms)(rng_next(&g->r) % (uint64_t)(max - min + 1));
}

static const struct place {
    const char *country, *tz, *lang;
} places[] = {
    {"FR", "Europe/Paris", "fr"},        {"FR", "Europe/Paris", "fr"},
    {"DE", "Europe/Berlin", "de"},       {"ES", "Europe/Madrid", "es"},
    {"GB", "Europe/London", "en"},       {"US", "America/New_York", "en"},
    {"US", "America/Los_Angeles", "en"}, {"BR", "America/Sao_Paulo", "pt-BR"},
    {"JP", "Asia/Tokyo", "ja"},          {"IT", "Europe/Rome", "it"},
};
static const char *sectors[] = {"saas", "manufacturing", "retail", "finance", "public", "health"};
static const char *stages[] = {"engaged", "proposal", "negotiation", "won", "lost"};
static const char *gift_kinds[] = {"object",     "card",    "basket",  "book",
                                   "experience", "service", "donation"};
static const char *sentiments[] = {"positive", "positive",      "neutral",
                                   "negative", "out_of_office", "out_of_office"};

/* Outbound on a messaging channel (whatsapp, sms): sent, delivered, maybe
 * read and replied. Returns true on a reply. */
static bool messaging(pgen *g, const char *ch, int k) {
    char type[32], data[160];
    snprintf(type, sizeof type, "%s.sent", ch);
    snprintf(data, sizeof data, "\"message_id\":\"%s-%s-%d\",\"kind\":\"follow_up\"", ch, g->pid,
             k);
    emit(g, type, data);
    advance(g, 5 * TD_SECOND, 2 * TD_MINUTE);
    if (rng_pct(&g->r, 5)) {
        snprintf(type, sizeof type, "%s.failed", ch);
        emit(g, type, NULL);
        return false;
    }
    snprintf(type, sizeof type, "%s.delivered", ch);
    emit(g, type, NULL);
    if (!rng_pct(&g->r, 70)) return false;
    advance(g, TD_MINUTE, 6 * TD_HOUR);
    snprintf(type, sizeof type, "%s.read", ch);
    emit(g, type, NULL);
    if (rng_pct(&g->r, 3)) {
        advance(g, TD_MINUTE, TD_HOUR);
        snprintf(type, sizeof type, "%s.opted_out", ch);
        emit(g, type, NULL);
        return false;
    }
    if (!rng_pct(&g->r, 35)) return false;
    advance(g, 10 * TD_MINUTE, TD_DAY);
    snprintf(type, sizeof type, "%s.replied", ch);
    snprintf(data, sizeof data, "\"sentiment\":\"%s\"", sentiments[rng_below(&g->r, 4)]);
    emit(g, type, data);
    return true;
}

static void gen_prospect(stream *s, uint32_t idx, unsigned seed) {
    pgen g = {.s = s, .idx = idx};
    g.r.s = 0x9E3779B97F4A7C15ULL ^ ((uint64_t)seed << 32) ^ (idx * 0xD1B54A32D192ED03ULL);
    if (!g.r.s) g.r.s = 1;
    rng_next(&g.r);
    snprintf(g.pid, sizeof g.pid, "p-%06u", idx);
    snprintf(g.owner, sizeof g.owner, "rep-%d", rng_below(&g.r, 40));
    /* start: a working day morning within 90 days of 2026-01-05 */
    g.t = td_civil_to_ms(2026, 1, 5, 7, 0, 0) + (td_ms)rng_below(&g.r, 90) * TD_DAY +
          (td_ms)rng_below(&g.r, 10 * 60) * TD_MINUTE;

    const struct place *pl = &places[rng_below(&g.r, (int)(sizeof places / sizeof *places))];
    bool wa = rng_pct(&g.r, 55), sms = rng_pct(&g.r, 40);
    int gp = rng_below(&g.r, 10);
    char data[640];
    snprintf(data, sizeof data,
             "\"stage\":\"new\",\"tier\":%d,\"country\":\"%s\",\"sector\":\"%s\","
             "\"timezone\":\"%s\",\"gift_policy\":\"%s\",\"language\":\"%s\","
             "\"lifetime_value_eur\":%d.%02d,\"consent\":{\"email\":true,\"whatsapp\":%s,"
             "\"sms\":%s,\"linkedin\":true},\"crm_score\":%d",
             1 + rng_below(&g.r, 3), pl->country,
             sectors[rng_below(&g.r, (int)(sizeof sectors / sizeof *sectors))], pl->tz,
             gp < 7   ? "allowed"
             : gp < 9 ? "restricted"
                      : "forbidden",
             pl->lang, rng_below(&g.r, 200000), rng_below(&g.r, 100), wa ? "true" : "false",
             sms ? "true" : "false", rng_below(&g.r, 100));
    emit(&g, "prospect.updated", data);
    advance(&g, TD_MINUTE, 4 * TD_HOUR);

    /* the email sequence: value first, then follow-ups, maybe a proposal */
    int emails = 1 + rng_below(&g.r, 4);
    bool replied = false, engaged = false;
    for (int k = 0; k < emails && !replied; k++) {
        const char *kind = k == 0                                   ? "value"
                           : (k == emails - 1 && rng_pct(&g.r, 30)) ? "proposal"
                                                                    : "follow_up";
        snprintf(data, sizeof data, "\"message_id\":\"m-%s-%d\",\"kind\":\"%s\"", g.pid, k, kind);
        emit(&g, "email.sent", data);
        advance(&g, 5 * TD_SECOND, 3 * TD_MINUTE);
        if (rng_pct(&g.r, 3)) {
            snprintf(data, sizeof data, "\"message_id\":\"m-%s-%d\",\"hard\":%s", g.pid, k,
                     rng_pct(&g.r, 50) ? "true" : "false");
            emit(&g, "email.bounced", data);
            break;
        }
        snprintf(data, sizeof data, "\"message_id\":\"m-%s-%d\"", g.pid, k);
        emit(&g, "email.delivered", data);
        /* privacy proxies open on delivery: machine opens */
        if (rng_pct(&g.r, 30)) {
            advance(&g, TD_SECOND, TD_MINUTE);
            snprintf(data, sizeof data, "\"message_id\":\"m-%s-%d\",\"human\":false", g.pid, k);
            emit(&g, "email.opened", data);
        }
        int opens = rng_below(&g.r, 3);
        for (int o = 0; o < opens; o++) {
            advance(&g, 10 * TD_MINUTE, 30 * TD_HOUR);
            snprintf(data, sizeof data, "\"message_id\":\"m-%s-%d\",\"human\":true", g.pid, k);
            emit(&g, "email.opened", data);
            engaged = true;
        }
        if (opens && rng_pct(&g.r, 15)) {
            advance(&g, 10 * TD_SECOND, 10 * TD_MINUTE);
            snprintf(data, sizeof data,
                     "\"message_id\":\"m-%s-%d\",\"url\":\"https://x.example/%d\"", g.pid, k, k);
            emit(&g, "email.clicked", data);
        }
        if (rng_pct(&g.r, 2)) {
            advance(&g, TD_MINUTE, TD_DAY);
            emit(&g, "email.unsubscribed", NULL);
            break;
        }
        if (rng_pct(&g.r, opens ? 22 : 6)) {
            advance(&g, 30 * TD_MINUTE, 2 * TD_DAY);
            const char *sent = sentiments[rng_below(&g.r, 6)];
            snprintf(data, sizeof data, "\"message_id\":\"m-%s-%d\",\"sentiment\":\"%s\"", g.pid, k,
                     sent);
            emit(&g, "email.replied", data);
            replied = strcmp(sent, "out_of_office") != 0;
        }
        advance(&g, 2 * TD_DAY, 5 * TD_DAY);
    }

    /* silence after emails: pivot to another channel */
    if (!replied) {
        if (wa)
            replied = messaging(&g, "whatsapp", 0);
        else if (sms)
            replied = messaging(&g, "sms", 0);
        else if (rng_pct(&g.r, 70)) {
            emit(&g, "linkedin.invited", NULL);
            if (rng_pct(&g.r, 50)) {
                advance(&g, TD_HOUR, 3 * TD_DAY);
                emit(&g, "linkedin.accepted", NULL);
                advance(&g, TD_MINUTE, TD_DAY);
                emit(&g, "linkedin.messaged", NULL);
                if (rng_pct(&g.r, 30)) {
                    advance(&g, TD_HOUR, 2 * TD_DAY);
                    emit(&g, "linkedin.replied", NULL);
                    replied = true;
                }
            }
        }
        advance(&g, TD_DAY, 4 * TD_DAY);
    }

    /* calls, mostly for engaged prospects */
    if (engaged || replied || rng_pct(&g.r, 20)) {
        int calls = 1 + rng_below(&g.r, 3);
        for (int c = 0; c < calls; c++) {
            emit(&g, "call.attempted", NULL);
            advance(&g, 20 * TD_SECOND, 2 * TD_MINUTE);
            if (rng_pct(&g.r, 40)) {
                snprintf(data, sizeof data, "\"duration_s\":%d", 60 + rng_below(&g.r, 1800));
                emit(&g, "call.connected", data);
                replied = true;
                break;
            }
            snprintf(data, sizeof data, "\"duration_s\":%d", 15 + rng_below(&g.r, 40));
            emit(&g, "call.voicemail", data);
            advance(&g, TD_DAY, 3 * TD_DAY);
        }
    }

    /* meetings and stage changes for the ones who answered */
    if (replied) {
        advance(&g, TD_HOUR, 2 * TD_DAY);
        char at[TD_TIME_BUF];
        td_time_format(g.t + 3 * TD_DAY, at, sizeof at);
        snprintf(data, sizeof data, "\"at\":\"%s\"", at);
        emit(&g, "meeting.booked", data);
        g.t += 3 * TD_DAY;
        int r = rng_below(&g.r, 10);
        emit(&g, r < 6 ? "meeting.held" : r < 8 ? "meeting.no_show" : "meeting.cancelled", NULL);
        advance(&g, TD_HOUR, TD_DAY);
        snprintf(data, sizeof data, "\"stage\":\"%s\"", stages[rng_below(&g.r, 5)]);
        emit(&g, "prospect.updated", data);
    }

    /* gifts: a few, of every kind */
    if (rng_pct(&g.r, replied ? 25 : 6)) {
        advance(&g, TD_DAY, 10 * TD_DAY);
        snprintf(data, sizeof data,
                 "\"kind\":\"%s\",\"value_eur\":%d.%d,\"items\":%d,\"wrapping\":\"%s\","
                 "\"description\":\"bench gift %d\"",
                 gift_kinds[rng_below(&g.r, 7)], 5 + rng_below(&g.r, 120), rng_below(&g.r, 10),
                 1 + rng_below(&g.r, 3), rng_pct(&g.r, 50) ? "white" : "kraft",
                 rng_below(&g.r, 99));
        emit(&g, "gift.sent", data);
    }
    if (s->prospects < idx + 1) s->prospects = idx + 1;
}

static int cmp_event(const void *a, const void *b) {
    const gen_event *x = a, *y = b;
    if (x->at != y->at) return x->at < y->at ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static void generate(stream *s, const opts *o) {
    if (o->events > 0) {
        for (uint32_t i = 0; s->n < (size_t)o->events; i++)
            gen_prospect(s, i, o->seed);
        while (s->n > (size_t)o->events)
            free(s->v[--s->n].json);
    } else {
        for (uint32_t i = 0; i < (uint32_t)o->prospects; i++)
            gen_prospect(s, i, o->seed);
    }
    qsort(s->v, s->n, sizeof *s->v, cmp_event);
}

/* ---- the ruleset ---- */

static int cmp_name(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static char *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *p = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (cap - n < 4096) {
            cap = cap ? cap * 2 : 8192;
            p = xrealloc(p, cap);
        }
        size_t r = fread(p + n, 1, cap - n - 1, f);
        n += r;
        if (r == 0) break;
    }
    fclose(f);
    p[n] = '\0';
    *len = n;
    return p;
}

static const char *find_rules_dir(const char *want) {
    if (want) return want;
    static char buf[1024];
    const char *src = getenv("TD_SOURCE_DIR");
    if (src && *src) {
        snprintf(buf, sizeof buf, "%s/rules", src);
        return buf;
    }
    static const char *tries[] = {"rules", "../rules", "../../rules"};
    for (size_t i = 0; i < sizeof tries / sizeof *tries; i++) {
        DIR *d = opendir(tries[i]);
        if (d) {
            closedir(d);
            return tries[i];
        }
    }
    return "rules";
}

static td_ruleset *load_rules(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "bench_engine: %s: %s (use --rules DIR)\n", dir, strerror(errno));
        return NULL;
    }
    char **names = NULL;
    size_t n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t l = strlen(de->d_name);
        if (l > 6 && !strcmp(de->d_name + l - 6, ".rules")) {
            names = xrealloc(names, (n + 1) * sizeof *names);
            size_t pl = strlen(dir) + l + 2;
            names[n] = xrealloc(NULL, pl);
            snprintf(names[n], pl, "%s/%s", dir, de->d_name);
            n++;
        }
    }
    closedir(d);
    qsort(names, n, sizeof *names, cmp_name);
    td_source *srcs = xrealloc(NULL, (n ? n : 1) * sizeof *srcs);
    for (size_t i = 0; i < n; i++) {
        srcs[i].name = names[i];
        srcs[i].text = read_all(names[i], &srcs[i].len);
        if (!srcs[i].text) {
            fprintf(stderr, "bench_engine: %s: %s\n", names[i], strerror(errno));
            exit(1);
        }
    }
    td_diags diags = {0};
    td_ruleset *rs = td_ruleset_compile(srcs, n, &diags);
    if (!rs || diags.errors) {
        for (size_t i = 0; i < diags.n; i++) {
            char *msg = td_diag_format(&diags.v[i]);
            if (msg) fprintf(stderr, "%s\n", msg);
            free(msg);
        }
        fprintf(stderr, "bench_engine: the ruleset in %s does not compile\n", dir);
    }
    td_diags_free(&diags);
    for (size_t i = 0; i < n; i++) {
        free((char *)srcs[i].text);
        free(names[i]);
    }
    free(srcs);
    free(names);
    if (!n) fprintf(stderr, "bench_engine: no *.rules in %s\n", dir);
    return rs;
}

/* ---- the passes ---- */

typedef struct bench {
    const td_ruleset *rs;
    stream *s;
    td_event *events; /* pre-decoded, same order as s->v */
    td_state *states; /* one per prospect */
    td_tzdb *tz;
    td_step_out *out;
} bench;

typedef struct tally {
    uint64_t steps, recs, timers, duplicates, blocked, errors, failed;
} tally;

static void states_reset(bench *b, bool first) {
    for (uint32_t i = 0; i < b->s->prospects; i++) {
        if (!first) td_state_free(&b->states[i]);
        char pid[32];
        snprintf(pid, sizeof pid, "p-%06u", i);
        td_state_init(&b->states[i], pid);
    }
}

static void count(tally *t, const td_step_out *out, int rc) {
    t->steps++;
    t->recs += out->nrecs;
    t->duplicates += out->duplicate;
    t->blocked += out->nblocked;
    t->errors += out->nerrors;
    t->failed += rc != TD_OK;
}

/* Fires the prospect's timers that fall due before `now`, oldest first. */
static void fire_due(bench *b, td_state *st, td_ms now, tally *t) {
    for (int guard = 0; guard < 16; guard++) {
        const td_timer *due = NULL;
        for (uint32_t i = 0; i < st->ntimers; i++)
            if (st->timers[i].due_at <= now && (!due || st->timers[i].due_at < due->due_at))
                due = &st->timers[i];
        if (!due) return;
        /* the step disarms the timer: copy what the trigger points to */
        char rule[TD_RULE_ID_MAX + 1], armed_by[TD_ID_MAX + 1];
        memcpy(rule, due->rule, sizeof rule);
        memcpy(armed_by, due->armed_by, sizeof armed_by);
        td_trigger trig = {
            .kind = TD_TRIG_TIMER, .rule = rule, .due_at = due->due_at, .armed_by = armed_by};
        int rc = td_engine_step(b->rs, st, &trig, trig.due_at, b->tz, 0, b->out);
        count(t, b->out, rc);
        t->timers++;
        if (rc != TD_OK || b->out->stale)
            td_state_disarm_timer(st, rule); /* never loop on a timer */
    }
}

BENCH_NOINLINE void bench_pass_step(bench *b, tally *t);
BENCH_NOINLINE void bench_pass_decode_step(bench *b, tally *t);

/* The engine step alone on pre-decoded events. */
BENCH_NOINLINE void bench_pass_step(bench *b, tally *t) {
    for (size_t i = 0; i < b->s->n; i++) {
        const td_event *ev = &b->events[i];
        td_state *st = &b->states[b->s->v[i].prospect];
        if (st->ntimers) fire_due(b, st, ev->occurred_at, t);
        td_trigger trig = {.kind = TD_TRIG_EVENT, .ev = ev};
        count(t, b->out, td_engine_step(b->rs, st, &trig, ev->occurred_at, b->tz, 0, b->out));
    }
}

/* Decode from JSON text, then step. */
BENCH_NOINLINE void bench_pass_decode_step(bench *b, tally *t) {
    static td_event ev;
    td_event_error err;
    for (size_t i = 0; i < b->s->n; i++) {
        const gen_event *g = &b->s->v[i];
        if (td_event_decode(g->json, g->len, &ev, &err) != TD_OK) {
            t->failed++;
            continue;
        }
        td_state *st = &b->states[g->prospect];
        if (st->ntimers) fire_due(b, st, ev.occurred_at, t);
        td_trigger trig = {.kind = TD_TRIG_EVENT, .ev = &ev};
        count(t, b->out, td_engine_step(b->rs, st, &trig, ev.occurred_at, b->tz, 0, b->out));
    }
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

typedef void (*pass_fn)(bench *, tally *);

/* Runs passes of fn until `seconds` of measured time; returns events/s. */
static double measure(bench *b, pass_fn fn, double seconds, tally *first, double *ns_per_event,
                      int *passes, double *elapsed) {
    double total = 0;
    size_t events = 0;
    int n = 0;
    do {
        states_reset(b, false);
        tally t = {0};
        double t0 = now_s();
        fn(b, &t);
        total += now_s() - t0;
        events += b->s->n;
        if (n == 0) *first = t;
        n++;
    } while (total < seconds);
    *passes = n;
    *elapsed = total;
    *ns_per_event = total * 1e9 / (double)events;
    return (double)events / total;
}

static void print_tally(const char *what, const tally *t, size_t events) {
    printf("  %-12s per pass: %zu events, %llu steps (%llu timer triggers), %llu recommendations,"
           " %llu blocked, %llu duplicates, %llu rule errors, %llu failed\n",
           what, events, (unsigned long long)t->steps, (unsigned long long)t->timers,
           (unsigned long long)t->recs, (unsigned long long)t->blocked,
           (unsigned long long)t->duplicates, (unsigned long long)t->errors,
           (unsigned long long)t->failed);
}

/* ---- --flat: a write's flat form and the recommendation JSON ---- */

/* A recommendation of a sampled step, with what td_rec_json needs. */
typedef struct flat_rec {
    td_rec rec;
    size_t sample; /* its step: the state after is the sample's */
    size_t event;  /* its trigger: b->events[event] */
} flat_rec;

typedef struct flat_set {
    td_state *before, *after; /* the prospect's state around a sampled step */
    td_kvs *kb, *ka;          /* their flat forms (for the diff pass) */
    td_ms *now;               /* the step's clock: generated_at of its JSON */
    size_t n;
    flat_rec *recs;
    size_t nrecs, caprecs;
} flat_set;

static void flat_oom(void) {
    fprintf(stderr, "bench_engine: out of memory\n");
    exit(1);
}

/* Steps the whole stream once from fresh states, copying the state before
 * and after `want` steps spread evenly over it (a write each, as the daemon
 * would store), with their recommendations. */
static void flat_collect(bench *b, flat_set *fs, long want) {
    size_t n = b->s->n, stride = n / (size_t)want ? n / (size_t)want : 1;
    size_t cap = (size_t)want < n ? (size_t)want : n;
    fs->before = xrealloc(NULL, cap * sizeof *fs->before);
    fs->after = xrealloc(NULL, cap * sizeof *fs->after);
    fs->kb = calloc(cap, sizeof *fs->kb);
    fs->ka = calloc(cap, sizeof *fs->ka);
    fs->now = xrealloc(NULL, cap * sizeof *fs->now);
    if (!fs->kb || !fs->ka) flat_oom();
    states_reset(b, false);
    tally t = {0};
    for (size_t i = 0; i < n; i++) {
        const td_event *ev = &b->events[i];
        td_state *st = &b->states[b->s->v[i].prospect];
        if (st->ntimers) fire_due(b, st, ev->occurred_at, &t);
        bool take = i % stride == 0 && fs->n < cap;
        if (take && td_state_copy(&fs->before[fs->n], st) != TD_OK) flat_oom();
        td_trigger trig = {.kind = TD_TRIG_EVENT, .ev = ev};
        count(&t, b->out, td_engine_step(b->rs, st, &trig, ev->occurred_at, b->tz, 0, b->out));
        st->version++; /* as the daemon's write does */
        if (!take) continue;
        if (td_state_copy(&fs->after[fs->n], st) != TD_OK) flat_oom();
        fs->now[fs->n] = ev->occurred_at;
        for (uint32_t r = 0; r < b->out->nrecs; r++) {
            if (fs->nrecs == fs->caprecs) {
                fs->caprecs = fs->caprecs ? 2 * fs->caprecs : 1024;
                fs->recs = xrealloc(fs->recs, fs->caprecs * sizeof *fs->recs);
            }
            fs->recs[fs->nrecs++] = (flat_rec){.rec = b->out->recs[r], .sample = fs->n, .event = i};
        }
        fs->n++;
    }
    for (size_t i = 0; i < fs->n; i++)
        if (td_kvs_capture(&fs->kb[i], &fs->before[i]) != TD_OK ||
            td_kvs_capture(&fs->ka[i], &fs->after[i]) != TD_OK)
            flat_oom();
}

static void flat_free(flat_set *fs) {
    for (size_t i = 0; i < fs->n; i++) {
        td_state_free(&fs->before[i]);
        td_state_free(&fs->after[i]);
    }
    td_kvs_free_array(fs->kb, fs->n);
    td_kvs_free_array(fs->ka, fs->n);
    free(fs->before);
    free(fs->after);
    free(fs->now);
    free(fs->recs);
}

typedef struct diff_count {
    size_t sets, dels, bytes;
} diff_count;

static void flat_count_set(void *ud, const char *k, size_t kl, const char *v, size_t vl) {
    diff_count *c = ud;
    (void)k;
    (void)v;
    c->sets++;
    c->bytes += kl + vl;
}

static void flat_count_del(void *ud, const char *k, size_t kl) {
    diff_count *c = ud;
    (void)k;
    c->dels++;
    c->bytes += kl;
}

BENCH_NOINLINE size_t bench_pass_flat_capture(const flat_set *fs, td_kvs *kv);
BENCH_NOINLINE void bench_pass_flat_diff(const flat_set *fs, diff_count *c);
BENCH_NOINLINE size_t bench_pass_rec_json(const bench *b, const flat_set *fs, td_buf *buf);

/* The new flat form of each sampled write, into one reused td_kvs (as the
 * daemon's pack_now). @returns the fields captured. */
BENCH_NOINLINE size_t bench_pass_flat_capture(const flat_set *fs, td_kvs *kv) {
    size_t fields = 0;
    for (size_t i = 0; i < fs->n; i++) {
        if (td_kvs_capture(kv, &fs->after[i]) != TD_OK) {
            fprintf(stderr, "bench_engine: td_kvs_capture failed\n");
            exit(1);
        }
        fields += kv->n;
    }
    return fields;
}

/* What each sampled write sends: the diff of the flat forms. */
BENCH_NOINLINE void bench_pass_flat_diff(const flat_set *fs, diff_count *c) {
    for (size_t i = 0; i < fs->n; i++)
        if (td_kvs_diff(&fs->kb[i], &fs->ka[i], flat_count_set, flat_count_del, c) != TD_OK) {
            fprintf(stderr, "bench_engine: td_kvs_diff failed\n");
            exit(1);
        }
}

/* The JSON of each recommendation of the sampled steps. @returns bytes. */
BENCH_NOINLINE size_t bench_pass_rec_json(const bench *b, const flat_set *fs, td_buf *buf) {
    size_t bytes = 0;
    for (size_t i = 0; i < fs->nrecs; i++) {
        const flat_rec *r = &fs->recs[i];
        td_trigger trig = {.kind = TD_TRIG_EVENT, .ev = &b->events[r->event]};
        buf->len = 0;
        if (td_rec_json(&r->rec, &fs->after[r->sample], b->rs, &trig, fs->now[r->sample], buf) !=
            TD_OK) {
            fprintf(stderr, "bench_engine: td_rec_json failed\n");
            exit(1);
        }
        bytes += buf->len;
    }
    return bytes;
}

/* ---- --flat --dump: synthetic states with random and extreme values ---- */

static td_ms flat_rand_time(rng *r) {
    static const td_ms edge[] = {0,
                                 -1,
                                 1,
                                 999,
                                 -999,
                                 -1000,
                                 TD_DAY - 1,
                                 -TD_DAY,
                                 951782400000LL /* 2000-02-29 */,
                                 4107542400000LL /* 2100-03-01 */,
                                 -62135596800000LL /* 0001-01-01 */,
                                 -62135596800001LL,
                                 253402300799999LL /* 9999-12-31T23:59:59.999 */,
                                 253402300800000LL,
                                 INT64_MAX,
                                 INT64_MIN + 1,
                                 -62198755200000LL /* year 0 */,
                                 1767225599999LL};
    switch (rng_below(r, 6)) {
    case 0:
        return TD_MS_MISSING;
    case 1:
        return edge[rng_below(r, (int)(sizeof edge / sizeof *edge))];
    case 2:
        return (td_ms)rng_next(r); /* anything */
    case 3: /* any RFC 3339 instant, whole seconds half of the time */ {
        td_ms t = -62135596800000LL + (td_ms)(rng_next(r) % 315537897600000ULL);
        return rng_pct(r, 50) ? t - t % 1000 : t;
    }
    default: /* this decade, as real states hold */
        return 1735689600000LL + (td_ms)(rng_next(r) % (10ULL * 365 * 86400000));
    }
}

static int64_t flat_rand_i64(rng *r) {
    switch (rng_below(r, 6)) {
    case 0:
        return 0;
    case 1:
        return INT64_MIN;
    case 2:
        return INT64_MAX;
    case 3:
        return (int64_t)rng_next(r);
    default:
        return rng_below(r, 200) - 20;
    }
}

static void flat_rand_str(rng *r, char *dst, size_t cap) {
    size_t n = rng_pct(r, 30) ? 0 : (size_t)rng_below(r, (int)cap);
    for (size_t i = 0; i < n; i++) {
        int c = rng_pct(r, 70) ? 'a' + rng_below(r, 26) : 1 + rng_below(r, 255);
        dst[i] = (char)c;
    }
    dst[n] = '\0';
}

static void flat_rand_state(rng *r, td_state *st) {
    td_state_init(st, "p");
    flat_rand_str(r, st->prospect_id, sizeof st->prospect_id);
    flat_rand_str(r, st->owner_id, sizeof st->owner_id);
    flat_rand_str(r, st->country, sizeof st->country);
    flat_rand_str(r, st->sector, sizeof st->sector);
    flat_rand_str(r, st->timezone, sizeof st->timezone);
    flat_rand_str(r, st->language, sizeof st->language);
    st->version = flat_rand_i64(r);
    st->events = flat_rand_i64(r);
    st->stage = (td_stage)rng_below(r, 12);
    st->tier = rng_pct(r, 30) ? TD_INT_MISSING : flat_rand_i64(r);
    st->gift_policy = (td_gift_policy)rng_below(r, 6);
    st->lifetime_value_eur = rng_pct(r, 30) ? TD_DEC_MISSING : flat_rand_i64(r);
    st->first_seen_at = flat_rand_time(r);
    st->last_event_at = flat_rand_time(r);
    st->last_touch_at = flat_rand_time(r);
    st->last_inbound_at = flat_rand_time(r);
    st->first_touch_at = flat_rand_time(r);
    st->stage_changed_at = flat_rand_time(r);
    st->replies = flat_rand_i64(r);
    st->last_reply_sentiment = (td_sentiment)rng_below(r, 8);
    st->meetings_booked = flat_rand_i64(r);
    st->meetings_held = flat_rand_i64(r);
    st->meetings_cancelled = flat_rand_i64(r);
    st->meetings_no_show = flat_rand_i64(r);
    st->next_meeting_at = flat_rand_time(r);
    st->gift_year = rng_pct(r, 50) ? 0 : (int32_t)rng_next(r);
    st->gifts_year_count = flat_rand_i64(r);
    st->gifts_year_spend_eur = flat_rand_i64(r);
    st->gifts_total = flat_rand_i64(r);
    st->last_gift_at = flat_rand_time(r);
    st->last_gift_kind = (td_gift_kind)rng_below(r, 10);
    for (int c = 0; c < TD_CH__COUNT; c++) {
        td_chan_state *ch = &st->ch[c];
        if (rng_pct(r, 40)) continue; /* most channels stay all default */
        ch->sent = flat_rand_i64(r);
        ch->delivered = flat_rand_i64(r);
        ch->opened = flat_rand_i64(r);
        ch->clicked = flat_rand_i64(r);
        ch->replied = flat_rand_i64(r);
        ch->failed = flat_rand_i64(r);
        ch->unanswered = flat_rand_i64(r);
        ch->opens_since_reply = flat_rand_i64(r);
        ch->last_sent_at = flat_rand_time(r);
        ch->last_opened_at = flat_rand_time(r);
        ch->last_replied_at = flat_rand_time(r);
        ch->blocked = (td_block_reason)rng_below(r, 6);
        ch->consent = (td_tristate)rng_below(r, 5);
    }
    st->touch_count = (uint32_t)rng_below(r, TD_TOUCH_RING + 20);
    st->touch_head = (uint32_t)rng_next(r);
    for (int i = 0; i < TD_TOUCH_RING; i++) {
        td_ms t = flat_rand_time(r);
        st->touch_ring[i] = t == TD_MS_MISSING ? 0 : t;
    }
    for (int h = 0; h < 24; h++)
        st->hour_hist[h] = rng_pct(r, 50) ? 0 : (uint32_t)rng_next(r) >> rng_below(r, 32);
    st->dedup_count = (uint32_t)rng_below(r, TD_DEDUP_RING + 10);
    st->dedup_head = (uint32_t)rng_next(r);
    for (int i = 0; i < TD_DEDUP_RING; i++)
        st->dedup[i] = rng_next(r);
    st->npos = (uint32_t)rng_below(r, TD_POS_MAX + 1);
    for (uint32_t i = 0; i < st->npos; i++) {
        st->pos[i].key = rng_next(r);
        st->pos[i].offset = flat_rand_i64(r);
    }
    int nf = rng_below(r, 8), nt = rng_below(r, 6);
    for (int i = 0; i < nf + nt; i++) {
        char rule[TD_RULE_ID_MAX + 1], by[TD_ID_MAX + 1];
        flat_rand_str(r, rule, sizeof rule);
        flat_rand_str(r, by, sizeof by);
        if (!rule[0]) continue;
        td_ms t = flat_rand_time(r);
        if (t == TD_MS_MISSING) t = 0;
        if (i < nf)
            td_state_set_fired(st, rule, t);
        else
            td_state_arm_timer(st, rule, t, by);
    }
}

static void flat_print(const td_kvs *kv) {
    for (size_t i = 0; i < kv->n; i++) {
        const td_kvs_entry *e = &kv->e[i];
        printf("%.*s=%.*s\n", (int)e->kl, kv->buf + e->k, (int)e->vl, kv->buf + e->v);
    }
}

static void flat_dump_set(void *ud, const char *k, size_t kl, const char *v, size_t vl) {
    (void)ud;
    printf("set %.*s=%.*s\n", (int)kl, k, (int)vl, v);
}

static void flat_dump_del(void *ud, const char *k, size_t kl) {
    (void)ud;
    printf("del %.*s\n", (int)kl, k);
}

/* Prints every sampled flat form, its diff and recommendation JSON, then
 * the flat forms of `synthetic` random states. @returns 0 or 1. */
static int flat_dump(const bench *b, const flat_set *fs, long synthetic, unsigned seed) {
    for (size_t i = 0; i < fs->n; i++) {
        printf("# sample %zu\n", i);
        flat_print(&fs->ka[i]);
        if (td_kvs_diff(&fs->kb[i], &fs->ka[i], flat_dump_set, flat_dump_del, NULL) != TD_OK)
            return 1;
    }
    td_buf buf = {0};
    for (size_t i = 0; i < fs->nrecs; i++) {
        const flat_rec *r = &fs->recs[i];
        td_trigger trig = {.kind = TD_TRIG_EVENT, .ev = &b->events[r->event]};
        buf.len = 0;
        if (td_rec_json(&r->rec, &fs->after[r->sample], b->rs, &trig, fs->now[r->sample], &buf) !=
            TD_OK)
            return 1;
        printf("%s\n", buf.p);
    }
    td_buf_free(&buf);
    rng r = {.s = 0x853c49e6748fea9bULL ^ seed};
    td_kvs kv = {0}, prev = {0};
    for (long i = 0; i < synthetic; i++) {
        td_state st;
        flat_rand_state(&r, &st);
        if (td_kvs_capture(&kv, &st) != TD_OK) return 1;
        printf("# synthetic %ld\n", i);
        flat_print(&kv);
        if (td_kvs_diff(&prev, &kv, flat_dump_set, flat_dump_del, NULL) != TD_OK) return 1;
        td_kvs_move(&prev, &kv);
        td_state_free(&st);
    }
    td_kvs_free(&kv);
    td_kvs_free(&prev);
    return 0;
}

/* Runs pass `which` (0 capture, 1 diff, 2 rec_json) until `seconds` of
 * measured time; @returns ns per item (sample, or recommendation). */
static double flat_measure(const bench *b, const flat_set *fs, int which, double seconds,
                           int *passes) {
    td_kvs kv = {0};
    td_buf buf = {0};
    diff_count c = {0};
    double total = 0;
    size_t items = 0;
    int n = 0;
    (void)bench_pass_flat_capture(fs, &kv); /* warm-up: the reused buffers grow once */
    do {
        double t0 = now_s();
        if (which == 0) {
            (void)bench_pass_flat_capture(fs, &kv);
            items += fs->n;
        } else if (which == 1) {
            bench_pass_flat_diff(fs, &c);
            items += fs->n;
        } else {
            (void)bench_pass_rec_json(b, fs, &buf);
            items += fs->nrecs;
        }
        total += now_s() - t0;
        n++;
    } while (total < seconds);
    td_kvs_free(&kv);
    td_buf_free(&buf);
    *passes = n;
    return items ? total * 1e9 / (double)items : 0;
}

/* --flat: @returns the exit status. */
static int flat_main(bench *b, const opts *o) {
    flat_set fs = {0};
    flat_collect(b, &fs, o->samples);
    int rc = 0;
    if (o->dump) {
        rc = flat_dump(b, &fs, o->samples, o->seed);
        flat_free(&fs);
        return rc;
    }
    size_t fields = 0, bytes = 0;
    for (size_t i = 0; i < fs.n; i++) {
        fields += fs.ka[i].n;
        bytes += fs.ka[i].len;
    }
    diff_count c = {0};
    for (size_t i = 0; i < fs.n; i++)
        if (td_kvs_diff(&fs.kb[i], &fs.ka[i], flat_count_set, flat_count_del, &c) != TD_OK) rc = 1;
    printf("  flat: %zu sampled writes, %.1f fields and %.0f bytes per flat form, %.1f sets and"
           " %.2f deletes per diff, %zu recommendations\n",
           fs.n, (double)fields / (double)fs.n, (double)bytes / (double)fs.n,
           (double)c.sets / (double)fs.n, (double)c.dels / (double)fs.n, fs.nrecs);
    if (o->callgrind) {
        /* one pass each; callgrind counts bench_pass_flat_* and _rec_json */
        td_kvs kv = {0};
        td_buf buf = {0};
        diff_count c2 = {0};
        size_t f = bench_pass_flat_capture(&fs, &kv);
        bench_pass_flat_diff(&fs, &c2);
        size_t jb = bench_pass_rec_json(b, &fs, &buf);
        printf("  flat passes: %zu fields captured, %zu sets, %zu JSON bytes\n", f, c2.sets, jb);
        td_kvs_free(&kv);
        td_buf_free(&buf);
    } else {
        static const char *const names[] = {"capture", "diff", "rec_json"};
        static const char *const per[] = {"write", "write", "recommendation"};
        for (int w = 0; w < 3; w++) {
            int passes;
            double ns = flat_measure(b, &fs, w, o->seconds, &passes);
            printf("  %-12s %8.1f ns/%s  (%d passes)\n", names[w], ns, per[w], passes);
        }
    }
    flat_free(&fs);
    return rc;
}

int main(int argc, char **argv) {
    opts o = {.prospects = 10000, .seconds = 2.0, .seed = 42, .samples = 5000};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--prospects") && v) {
            o.prospects = strtol(v, NULL, 10);
            i++;
        } else if (!strcmp(a, "--events") && v) {
            o.events = strtol(v, NULL, 10);
            i++;
        } else if (!strcmp(a, "--seconds") && v) {
            o.seconds = strtod(v, NULL);
            i++;
        } else if (!strcmp(a, "--rules") && v) {
            o.rules = v;
            i++;
        } else if (!strcmp(a, "--seed") && v) {
            o.seed = (unsigned)strtoul(v, NULL, 10);
            i++;
        } else if (!strcmp(a, "--samples") && v) {
            o.samples = strtol(v, NULL, 10);
            i++;
        } else if (!strcmp(a, "--flat")) {
            o.flat = true;
        } else if (!strcmp(a, "--dump")) {
            o.dump = true;
        } else if (!strcmp(a, "--check")) {
            o.check = true;
        } else if (!strcmp(a, "--callgrind")) {
            o.callgrind = true;
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (o.prospects <= 0 || o.events < 0 || o.seconds < 0 || o.samples <= 0 ||
        (o.dump && !o.flat)) {
        usage(stderr);
        return 2;
    }

    const char *dir = find_rules_dir(o.rules);
    td_ruleset *rs = load_rules(dir);
    if (!rs) return 1;

    stream s = {0};
    double t0 = now_s();
    generate(&s, &o);
    double tgen = now_s() - t0;
    if (s.n == 0) {
        fprintf(stderr, "bench_engine: no events\n");
        return 1;
    }

    bench b = {.rs = rs, .s = &s};
    b.events = xrealloc(NULL, s.n * sizeof *b.events);
    b.states = xrealloc(NULL, s.prospects * sizeof *b.states);
    b.out = xrealloc(NULL, sizeof *b.out);
    memset(b.out, 0, sizeof *b.out);
    b.tz = td_tzdb_new();
    if (!b.tz) {
        fprintf(stderr, "bench_engine: td_tzdb_new failed\n");
        return 1;
    }
    size_t bytes = 0;
    for (size_t i = 0; i < s.n; i++) {
        td_event_error err;
        bytes += s.v[i].len;
        if (td_event_decode(s.v[i].json, s.v[i].len, &b.events[i], &err) != TD_OK) {
            fprintf(stderr, "bench_engine: generated event rejected: %s: %s\n  %s\n", err.field,
                    err.reason, s.v[i].json);
            return 1;
        }
    }
    states_reset(&b, true);

    if (!o.dump) {
        printf("bench_engine: %u prospects, %zu events (%zu redelivered duplicates, %.0f"
               " bytes/event avg), generated in %.2f s\n",
               s.prospects, s.n, s.duplicates, (double)bytes / (double)s.n, tgen);
        printf("  ruleset %s: %zu rules from %s\n", td_ruleset_hash(rs), td_ruleset_count(rs), dir);
    }

    int rc = 0;
    if (o.flat) {
        rc = flat_main(&b, &o);
    } else if (o.callgrind) {
        /* one pass each, from fresh states; callgrind counts the functions */
        tally t1 = {0}, t2 = {0};
        bench_pass_step(&b, &t1);
        states_reset(&b, false);
        bench_pass_decode_step(&b, &t2);
        print_tally("step", &t1, s.n);
        print_tally("decode+step", &t2, s.n);
        if (t1.failed || t2.failed) rc = 1;
    } else {
        /* warm-up: caches, branch predictors, the zone cache, page faults */
        tally warm = {0};
        bench_pass_step(&b, &warm);

        tally t1, t2;
        double ns1, ns2, el1, el2;
        int p1, p2;
        double r1 = measure(&b, bench_pass_step, o.seconds, &t1, &ns1, &p1, &el1);
        double r2 = measure(&b, bench_pass_decode_step, o.seconds, &t2, &ns2, &p2, &el2);
        print_tally("step", &t1, s.n);
        print_tally("decode+step", &t2, s.n);
        bool ok1 = r1 >= 1e6, ok2 = r2 >= 250e3;
        /* steps include the timer triggers fired between events */
        double spe1 = (double)t1.steps / (double)s.n, spe2 = (double)t2.steps / (double)s.n;
        printf("  %-12s %10.0f events/s %8.1f ns/event %10.0f steps/s  (%d passes, %.2f s)"
               "  target >= 1000000 events/s: %s\n",
               "step", r1, ns1, r1 * spe1, p1, el1, ok1 ? "met" : "MISSED");
        printf("  %-12s %10.0f events/s %8.1f ns/event %10.0f steps/s  (%d passes, %.2f s)"
               "  target >=  250000 events/s: %s\n",
               "decode+step", r2, ns2, r2 * spe2, p2, el2, ok2 ? "met" : "MISSED");
        if (t1.failed || t2.failed) {
            fprintf(stderr, "bench_engine: some steps failed\n");
            rc = 1;
        }
        if (o.check && (!ok1 || !ok2)) rc = 1;
    }

    for (uint32_t i = 0; i < s.prospects; i++)
        td_state_free(&b.states[i]);
    for (size_t i = 0; i < s.n; i++)
        free(s.v[i].json);
    free(s.v);
    free(b.states);
    free(b.events);
    td_step_out_free(b.out);
    td_tzdb_free(b.tz);
    td_ruleset_free(rs);
    return rc;
}
