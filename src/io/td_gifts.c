/*
 * td_gifts.c - the gift register: a Redis stream per year written exactly
 * once per gift.sent event (Lua: SET seen NX EX, then XADD), read back by
 * `touchd gifts`, and an optional Kafka topic (see td_gifts.h and
 * docs/gifts.md).
 *
 * Redis: one blocking hiredis context owned by the writer. Every blocking
 * read or write is bounded by command_timeout_ms (redisSetTimeout), the
 * connect by connect_timeout_ms; a failure closes the context and the next
 * attempt waits for the backoff (backoff_min_ms doubling to backoff_max_ms),
 * like td_timers. An idle connection the server closed (restart, CLIENT
 * KILL) is detected by the first write/read failing with EOF or I/O error:
 * the call then reconnects at once and runs again (the script is safe to
 * re-run: that is its purpose).
 *
 * @locality one thread.
 */
#include "td_gifts.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <librdkafka/rdkafka.h>

#include "td_clock.h"
#include "td_log.h"
#include "td_rconn.h"

/*
 * KEYS[1] = <prefix>:gifts:seen:<event_id>, KEYS[2] = <prefix>:gifts:<YYYY>;
 * ARGV[1] = retention in seconds; ARGV[2..] = the entry's field/value pairs.
 * Returns the new entry id, or false (nil) when the event was registered
 * before. Atomic: Redis runs one script at a time, so the seen key and the
 * entry appear together or not at all.
 */
static const char tg_lua[] = "if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then\n"
                             "  return redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))\n"
                             "end\n"
                             "return false\n";

struct td_gifts {
    td_redis_conf rconf; /* an owned copy (td_redis_conf_dup) */
    int retention_days;
    td_rconn rc; /* the connection (td_rconn.h) */
    char sha[41];
    char err[512];
};

/* ------------------------------------------------------------- records */

int td_gift_local_year(td_tzdb *tz, const char *zone, const td_settings *set, td_ms t) {
    td_civil c;
    const char *def = set ? set->default_timezone : "";
    if (!zone || !zone[0]) zone = def;
    if (tz && zone[0] && strcmp(zone, "UTC") != 0) {
        if (td_tz_local(tz, zone, t, &c, NULL) == TD_OK) return c.year;
        /* an unknown prospect zone falls back to the default zone (td_state) */
        if (zone != def && def[0] && strcmp(def, "UTC") != 0 &&
            td_tz_local(tz, def, t, &c, NULL) == TD_OK)
            return c.year;
    }
    td_civil_from_ms(t, &c);
    return c.year;
}

void td_gift_rec_from_event(td_gift_rec *r, const td_event *ev, const td_state *st, td_tzdb *tz,
                            const td_settings *set) {
    memset(r, 0, sizeof *r);
    td_strlcpy(r->event_id, ev->id, sizeof r->event_id);
    td_strlcpy(r->prospect_id, ev->prospect_id, sizeof r->prospect_id);
    if (ev->has & TD_HAS_OWNER)
        td_strlcpy(r->owner_id, ev->owner_id, sizeof r->owner_id);
    else if (st)
        td_strlcpy(r->owner_id, st->owner_id, sizeof r->owner_id);
    r->occurred_at = ev->occurred_at;
    r->year = td_gift_local_year(tz, st ? st->timezone : NULL, set, ev->occurred_at);
    r->kind = (ev->has & TD_HAS_GIFT_KIND) ? ev->gift_kind : TD_GK_NONE;
    r->value_eur = (ev->has & TD_HAS_VALUE) ? ev->value_eur : TD_DEC_MISSING;
    r->items = (ev->has & TD_HAS_ITEMS) ? ev->items : TD_INT_MISSING;
    if (ev->has & TD_HAS_WRAPPING) td_strlcpy(r->wrapping, ev->wrapping, sizeof r->wrapping);
}

size_t td_gift_dec_format(td_dec d, char *buf, size_t cap) {
    if (d == TD_DEC_MISSING) return (size_t)snprintf(buf, cap, "%s", "");
    bool neg = d < 0;
    uint64_t u = neg ? (uint64_t)0 - (uint64_t)d : (uint64_t)d;
    uint64_t ip = u / TD_DEC_SCALE, fp = u % TD_DEC_SCALE;
    char frac[8] = "";
    if (fp) {
        snprintf(frac, sizeof frac, ".%04" PRIu64, fp);
        size_t n = strlen(frac);
        while (n > 1 && frac[n - 1] == '0')
            frac[--n] = '\0';
    }
    return (size_t)snprintf(buf, cap, "%s%" PRIu64 "%s", neg ? "-" : "", ip, frac);
}

int td_gift_dec_parse(const char *s, size_t len, td_dec *out) {
    size_t i = 0;
    bool neg = false;
    if (i < len && s[i] == '-') {
        neg = true;
        i++;
    }
    if (i >= len || s[i] < '0' || s[i] > '9') return TD_ERR;
    uint64_t ip = 0;
    while (i < len && s[i] >= '0' && s[i] <= '9') {
        if (ip > (uint64_t)INT64_MAX / TD_DEC_SCALE / 10) return TD_ERR;
        ip = ip * 10 + (uint64_t)(s[i++] - '0');
    }
    uint64_t fp = 0;
    int nd = 0;
    if (i < len && s[i] == '.') {
        i++;
        if (i >= len) return TD_ERR;
        while (i < len && s[i] >= '0' && s[i] <= '9') {
            if (nd < 4) {
                fp = fp * 10 + (uint64_t)(s[i] - '0');
                nd++;
            } else if (s[i] != '0') {
                return TD_ERR;
            }
            i++;
        }
    }
    if (i != len) return TD_ERR;
    while (nd < 4) {
        fp *= 10;
        nd++;
    }
    uint64_t v = ip * TD_DEC_SCALE + fp;
    if (v > (uint64_t)INT64_MAX) return TD_ERR;
    *out = neg ? -(td_dec)v : (td_dec)v;
    return TD_OK;
}

int td_gift_rec_json(const td_gift_rec *r, td_buf *out) {
    char t[TD_TIME_BUF], v[40];
    td_time_format(r->occurred_at, t, sizeof t);
    if (td_buf_append(out, "{\"event_id\":", 12) < 0 ||
        td_buf_json_str(out, r->event_id, strlen(r->event_id)) < 0 ||
        td_buf_append(out, ",\"prospect_id\":", 15) < 0 ||
        td_buf_json_str(out, r->prospect_id, strlen(r->prospect_id)) < 0)
        return TD_ERR;
    if (r->owner_id[0] && (td_buf_append(out, ",\"owner_id\":", 12) < 0 ||
                           td_buf_json_str(out, r->owner_id, strlen(r->owner_id)) < 0))
        return TD_ERR;
    if (td_buf_printf(out, ",\"occurred_at\":\"%s\",\"year\":%d", t, r->year) < 0) return TD_ERR;
    if (r->kind != TD_GK_NONE &&
        td_buf_printf(out, ",\"kind\":\"%s\"", td_gift_kind_name(r->kind)) < 0)
        return TD_ERR;
    if (r->value_eur != TD_DEC_MISSING) {
        td_gift_dec_format(r->value_eur, v, sizeof v);
        if (td_buf_printf(out, ",\"value_eur\":\"%s\"", v) < 0) return TD_ERR;
    }
    if (r->items != TD_INT_MISSING && td_buf_printf(out, ",\"items\":%" PRId64, r->items) < 0)
        return TD_ERR;
    if (r->wrapping[0] && (td_buf_append(out, ",\"wrapping\":", 12) < 0 ||
                           td_buf_json_str(out, r->wrapping, strlen(r->wrapping)) < 0))
        return TD_ERR;
    return td_buf_append(out, "}", 1) < 0 ? TD_ERR : TD_OK;
}

size_t td_gifts_stream_key(const char *prefix, int year, char *buf, size_t cap) {
    return (size_t)snprintf(buf, cap, "%s:gifts:%04d", prefix, year);
}

size_t td_gifts_seen_key(const char *prefix, const char *event_id, char *buf, size_t cap) {
    return (size_t)snprintf(buf, cap, "%s:gifts:seen:%s", prefix, event_id);
}

/* ---------------------------------------------------------- connection */

static void tg_seterr(td_gifts *g, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tg_seterr(td_gifts *g, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g->err, sizeof g->err, fmt, ap);
    va_end(ap);
}

/* The connection policy (timeouts, AUTH, SELECT, backoff) is td_rconn's. */
static void tg_drop(td_gifts *g, bool penalize) { td_rconn_drop(&g->rc, penalize); }

static redisReply *tg_command(td_gifts *g, int argc, const char **argv, const size_t *lens) {
    return td_rconn_command(&g->rc, argc, argv, lens);
}

static int tg_ensure(td_gifts *g) { return td_rconn_ensure(&g->rc); }

static int tg_load_script(td_gifts *g) {
    return td_rconn_load_script(&g->rc, tg_lua, sizeof tg_lua - 1, g->sha);
}

/* ------------------------------------------------------------ life cycle */

td_gifts *td_gifts_new(const td_redis_conf *rconf, int retention_days, char *err, size_t errcap) {
    if (err && errcap) err[0] = '\0';
    if (!rconf->host || !rconf->key_prefix || rconf->command_timeout_ms <= 0 ||
        rconf->connect_timeout_ms <= 0 || rconf->backoff_min_ms <= 0) {
        if (err && errcap) snprintf(err, errcap, "redis gifts: incomplete redis configuration");
        return NULL;
    }
    if (retention_days < 1 || retention_days > 36500) {
        if (err && errcap)
            snprintf(err, errcap, "gifts.retention_days: expected 1..36500, got %d",
                     retention_days);
        return NULL;
    }
    td_gifts *g = calloc(1, sizeof *g);
    if (!g) goto oom;
    g->retention_days = retention_days;
    if (td_redis_conf_dup(&g->rconf, rconf) != TD_OK) goto oom;
    td_rconn_init(&g->rc, &g->rconf, "redis gifts", g->err, sizeof g->err);
    g->rc.role = "gifts";
    (void)tg_ensure(g); /* a failure is retried by the next call */
    return g;
oom:
    td_gifts_free(g);
    if (err && errcap) snprintf(err, errcap, "redis gifts: out of memory");
    return NULL;
}

int td_gifts_check(td_gifts *g) {
    char key[96];
    td_gifts_seen_key(g->rconf.key_prefix, "touchd:start-check", key, sizeof key);
    return td_rconn_probe(&g->rc, key);
}

void td_gifts_free(td_gifts *g) {
    if (!g) return;
    td_rconn_fini(&g->rc);
    td_redis_conf_release(&g->rconf);
    free(g);
}

const char *td_gifts_last_error(const td_gifts *g) { return g->err; }

/* ---------------------------------------------------------------- write */

/* The argv of one EVALSHA (slots 0 and 1: "EVALSHA" and the sha). */
typedef struct tg_cmd {
    const char *argv[24];
    size_t lens[24];
    int argc;
    char seen[TD_ID_MAX + 96], stream[96], ttl[24], at[TD_TIME_BUF], value[40], items[24];
} tg_cmd;

static void tg_arg(tg_cmd *c, const char *s, size_t n) {
    c->argv[c->argc] = s;
    c->lens[c->argc++] = n;
}

static void tg_build(const td_gifts *g, const td_gift_rec *r, tg_cmd *c) {
    c->argc = 0;
    tg_arg(c, "EVALSHA", 7);
    tg_arg(c, g->sha, 40);
    tg_arg(c, "2", 1);
    tg_arg(c, c->seen,
           td_gifts_seen_key(g->rconf.key_prefix, r->event_id, c->seen, sizeof c->seen));
    tg_arg(c, c->stream,
           td_gifts_stream_key(g->rconf.key_prefix, r->year, c->stream, sizeof c->stream));
    tg_arg(c, c->ttl,
           (size_t)snprintf(c->ttl, sizeof c->ttl, "%lld", (long long)g->retention_days * 86400));
    tg_arg(c, "event_id", 8);
    tg_arg(c, r->event_id, strlen(r->event_id));
    tg_arg(c, "prospect_id", 11);
    tg_arg(c, r->prospect_id, strlen(r->prospect_id));
    if (r->owner_id[0]) {
        tg_arg(c, "owner_id", 8);
        tg_arg(c, r->owner_id, strlen(r->owner_id));
    }
    tg_arg(c, "occurred_at", 11);
    tg_arg(c, c->at, td_time_format(r->occurred_at, c->at, sizeof c->at));
    if (r->kind != TD_GK_NONE) {
        const char *k = td_gift_kind_name(r->kind);
        tg_arg(c, "kind", 4);
        tg_arg(c, k, strlen(k));
    }
    if (r->value_eur != TD_DEC_MISSING) {
        tg_arg(c, "value_eur", 9);
        tg_arg(c, c->value, td_gift_dec_format(r->value_eur, c->value, sizeof c->value));
    }
    if (r->items != TD_INT_MISSING) {
        tg_arg(c, "items", 5);
        tg_arg(c, c->items, (size_t)snprintf(c->items, sizeof c->items, "%" PRId64, r->items));
    }
    if (r->wrapping[0]) {
        tg_arg(c, "wrapping", 8);
        tg_arg(c, r->wrapping, strlen(r->wrapping));
    }
}

/* One pipelined pass over todo[0..*ntodo): on return todo holds the indexes
 * that got NOSCRIPT. @returns TD_OK, TD_ERR, or 1 when the connection turned
 * out dead before any reply (worth one immediate retry). */
static int tg_pass(td_gifts *g, const td_gift_rec *recs, size_t *todo, size_t *ntodo,
                   size_t *added) {
    tg_cmd c;
    size_t n = *ntodo;
    for (size_t k = 0; k < n; k++) {
        tg_build(g, &recs[todo[k]], &c);
        if (redisAppendCommandArgv(g->rc.c, c.argc, c.argv, c.lens) != REDIS_OK) {
            tg_seterr(g, "redis gifts: out of memory");
            tg_drop(g, false);
            return TD_ERR;
        }
    }
    size_t again = 0;
    int rc = TD_OK;
    for (size_t k = 0; k < n; k++) {
        void *p = NULL;
        if (redisGetReply(g->rc.c, &p) != REDIS_OK || !p) {
            bool stale = k == 0 && (g->rc.c->err == REDIS_ERR_EOF || g->rc.c->err == REDIS_ERR_IO);
            tg_seterr(g, "redis gifts: %s; reconnecting in %" PRId64 " ms",
                      g->rc.c->errstr[0] ? g->rc.c->errstr : "connection lost", g->rc.backoff_ms);
            tg_drop(g, !stale);
            return stale ? 1 : TD_ERR;
        }
        redisReply *rep = p;
        td_rconn_note(&g->rc, rep);
        if (rep->type == REDIS_REPLY_ERROR && rep->len >= 8 && memcmp(rep->str, "NOSCRIPT", 8) == 0)
            todo[again++] = todo[k];
        else if (rep->type == REDIS_REPLY_ERROR) {
            if (rc == TD_OK) tg_seterr(g, "redis gifts: EVALSHA: %.*s", (int)rep->len, rep->str);
            rc = TD_ERR; /* keep reading: the connection stays in sync */
        } else if (rep->type == REDIS_REPLY_STRING && added) {
            (*added)++;
        }
        freeReplyObject(rep);
    }
    *ntodo = again;
    return rc;
}

int td_gifts_write(td_gifts *g, const td_gift_rec *recs, size_t n, size_t *added) {
    if (added) *added = 0;
    if (n == 0) return TD_OK;
    size_t *todo = malloc(n * sizeof *todo);
    if (!todo) {
        tg_seterr(g, "redis gifts: out of memory");
        return TD_ERR;
    }
    for (size_t i = 0; i < n; i++)
        todo[i] = i;
    size_t ntodo = n;
    int rc = TD_ERR, stale_retries = 0;
    for (int attempt = 0; attempt < 4; attempt++) {
        if (tg_ensure(g) != TD_OK) break;
        if (!g->sha[0] && tg_load_script(g) != TD_OK) break;
        rc = tg_pass(g, recs, todo, &ntodo, added);
        if (rc == 1 && stale_retries++ == 0)
            continue; /* an idle connection the server closed: once more */
        if (rc != TD_OK) break;
        if (ntodo == 0) break;
        g->sha[0] = '\0'; /* NOSCRIPT: load again, retry those */
        rc = TD_ERR;
        tg_seterr(g, "redis gifts: EVALSHA kept failing with NOSCRIPT");
    }
    free(todo);
    return rc == TD_OK ? TD_OK : TD_ERR;
}

/* ----------------------------------------------------------------- read */

static bool tg_eq(const redisReply *f, const char *s) {
    size_t n = strlen(s);
    return f->type == REDIS_REPLY_STRING && f->len == n && memcmp(f->str, s, n) == 0;
}

static void tg_copy(char *dst, size_t cap, const redisReply *v) {
    size_t n = v->len < cap - 1 ? v->len : cap - 1;
    memcpy(dst, v->str, n);
    dst[n] = '\0';
}

/* One stream entry's field list into r. @returns TD_OK, or TD_ERR when a
 * field does not parse. */
static int tg_parse_entry(const redisReply *fl, int year, td_gift_rec *r) {
    memset(r, 0, sizeof *r);
    r->year = year;
    r->occurred_at = TD_MS_MISSING;
    r->value_eur = TD_DEC_MISSING;
    r->items = TD_INT_MISSING;
    r->kind = TD_GK_NONE;
    if (fl->type != REDIS_REPLY_ARRAY) return TD_ERR;
    for (size_t i = 0; i + 1 < fl->elements; i += 2) {
        const redisReply *f = fl->element[i], *v = fl->element[i + 1];
        if (v->type != REDIS_REPLY_STRING) return TD_ERR;
        if (tg_eq(f, "event_id"))
            tg_copy(r->event_id, sizeof r->event_id, v);
        else if (tg_eq(f, "prospect_id"))
            tg_copy(r->prospect_id, sizeof r->prospect_id, v);
        else if (tg_eq(f, "owner_id"))
            tg_copy(r->owner_id, sizeof r->owner_id, v);
        else if (tg_eq(f, "wrapping"))
            tg_copy(r->wrapping, sizeof r->wrapping, v);
        else if (tg_eq(f, "occurred_at")) {
            if (td_time_parse(v->str, v->len, &r->occurred_at) != TD_OK) return TD_ERR;
        } else if (tg_eq(f, "kind")) {
            int k = td_gift_kind_parse(v->str, v->len);
            r->kind = k < 0 ? TD_GK_NONE : (td_gift_kind)k;
        } else if (tg_eq(f, "value_eur")) {
            if (td_gift_dec_parse(v->str, v->len, &r->value_eur) != TD_OK) return TD_ERR;
        } else if (tg_eq(f, "items")) {
            char b[24];
            tg_copy(b, sizeof b, v);
            char *end;
            errno = 0;
            long long x = strtoll(b, &end, 10);
            if (errno || end == b || *end) return TD_ERR;
            r->items = x;
        } /* unknown fields: a newer touchd; ignored */
    }
    return r->event_id[0] && r->prospect_id[0] ? TD_OK : TD_ERR;
}

int td_gifts_read(td_gifts *g, int year, const char *prospect_id, td_gift_rec **out, size_t *n,
                  size_t *cap) {
    char key[96], start[64] = "-";
    td_gifts_stream_key(g->rconf.key_prefix, year, key, sizeof key);
    for (;;) {
        if (tg_ensure(g) != TD_OK) return TD_ERR;
        const char *argv[6] = {"XRANGE", key, start, "+", "COUNT", "1000"};
        size_t lens[6] = {6, strlen(key), strlen(start), 1, 5, 4};
        redisReply *rep = tg_command(g, 6, argv, lens);
        if (!rep) return TD_ERR;
        if (rep->type != REDIS_REPLY_ARRAY) {
            tg_seterr(g, "redis gifts: XRANGE %s: %.*s", key,
                      rep->type == REDIS_REPLY_ERROR ? (int)rep->len : 16,
                      rep->type == REDIS_REPLY_ERROR ? rep->str : "unexpected reply");
            freeReplyObject(rep);
            return TD_ERR;
        }
        size_t got = rep->elements;
        for (size_t i = 0; i < got; i++) {
            const redisReply *e = rep->element[i];
            if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
                e->element[0]->type != REDIS_REPLY_STRING) {
                tg_seterr(g, "redis gifts: %s: malformed entry", key);
                freeReplyObject(rep);
                return TD_ERR;
            }
            snprintf(start, sizeof start, "(%.*s", (int)e->element[0]->len, e->element[0]->str);
            td_gift_rec r;
            if (tg_parse_entry(e->element[1], year, &r) != TD_OK) {
                tg_seterr(g, "redis gifts: %s: entry %s does not parse", key, start + 1);
                freeReplyObject(rep);
                return TD_ERR;
            }
            if (prospect_id && strcmp(prospect_id, r.prospect_id) != 0) continue;
            if (*n == *cap) {
                size_t nc = *cap ? *cap * 2 : 64;
                td_gift_rec *v = realloc(*out, nc * sizeof *v);
                if (!v) {
                    tg_seterr(g, "out of memory");
                    freeReplyObject(rep);
                    return TD_ERR;
                }
                *out = v;
                *cap = nc;
            }
            (*out)[(*n)++] = r;
        }
        freeReplyObject(rep);
        if (got < 1000) return TD_OK;
    }
}

static int tg_int_cmp(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

int td_gifts_years(td_gifts *g, int *years, size_t max) {
    /* MATCH pattern: the prefix with glob characters escaped */
    char pat[200];
    size_t o = 0;
    for (const char *p = g->rconf.key_prefix; *p && o + 2 < sizeof pat - 16; p++) {
        if (*p == '*' || *p == '?' || *p == '[' || *p == ']' || *p == '\\') pat[o++] = '\\';
        pat[o++] = *p;
    }
    snprintf(pat + o, sizeof pat - o, ":gifts:[0-9][0-9][0-9][0-9]");
    size_t plen = strlen(g->rconf.key_prefix) + 7; /* "<prefix>:gifts:" */
    char cursor[32] = "0";
    size_t n = 0;
    do {
        if (tg_ensure(g) != TD_OK) return TD_ERR;
        const char *argv[8] = {"SCAN", cursor, "MATCH", pat, "COUNT", "1000", "TYPE", "stream"};
        size_t lens[8] = {4, strlen(cursor), 5, strlen(pat), 5, 4, 4, 6};
        redisReply *rep = tg_command(g, 8, argv, lens);
        if (!rep) return TD_ERR;
        if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 ||
            rep->element[0]->type != REDIS_REPLY_STRING ||
            rep->element[1]->type != REDIS_REPLY_ARRAY) {
            tg_seterr(g, "redis gifts: SCAN: %.*s",
                      rep->type == REDIS_REPLY_ERROR ? (int)rep->len : 16,
                      rep->type == REDIS_REPLY_ERROR ? rep->str : "unexpected reply");
            freeReplyObject(rep);
            return TD_ERR;
        }
        tg_copy(cursor, sizeof cursor, rep->element[0]);
        const redisReply *ks = rep->element[1];
        for (size_t i = 0; i < ks->elements; i++) {
            const redisReply *k = ks->element[i];
            if (k->type != REDIS_REPLY_STRING || k->len != plen + 4) continue;
            int y = 0;
            for (size_t j = plen; j < k->len; j++)
                y = y * 10 + (k->str[j] - '0');
            bool dup = false;
            for (size_t j = 0; j < n; j++)
                dup = dup || years[j] == y;
            if (!dup && n < max) years[n++] = y;
        }
        freeReplyObject(rep);
    } while (strcmp(cursor, "0") != 0);
    qsort(years, n, sizeof *years, tg_int_cmp);
    return (int)n;
}

/* ---------------------------------------------------------------- kafka */

typedef struct tg_kout {
    size_t off, len;   /* JSON value in the arena */
    size_t koff, klen; /* key */
    int state;         /* 0 in flight, 1 acked, 2 failed */
} tg_kout;

struct td_gifts_kafka {
    rd_kafka_t *rk;
    rd_kafka_topic_t *rkt;
    char *topic;
    uint32_t gen;
    tg_kout *out;
    size_t nout, capout, acked, failed;
    td_buf arena;
    uint64_t total_acked;
    volatile sig_atomic_t fatal;
};

static void tg_kafka_dr(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    (void)rk;
    td_gifts_kafka *k = opaque;
    uintptr_t tag = (uintptr_t)m->_private;
    if ((uint32_t)(tag >> 32) != k->gen) return; /* a report of an earlier round */
    size_t i = (size_t)(tag & 0xffffffffu);
    if (i >= k->nout || k->out[i].state != 0) return;
    if (m->err) {
        k->out[i].state = 2;
        k->failed++;
        td_log_warn("delivery failed, will re-send", "topic=%s partition=%d err=%s", k->topic,
                    (int)m->partition, rd_kafka_err2name(m->err));
    } else {
        k->out[i].state = 1;
        k->acked++;
        k->total_acked++;
    }
}

static void tg_kafka_error(rd_kafka_t *rk, int err, const char *reason, void *opaque) {
    td_gifts_kafka *k = opaque;
    char q[600];
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        char why[512];
        rd_kafka_fatal_error(rk, why, sizeof why);
        k->fatal = 1;
        td_log_error("kafka fatal error", "client=gift-register reason=%s",
                     td_log_quote(q, sizeof q, why));
        return;
    }
    td_log_warn("kafka error", "client=gift-register err=%s reason=%s",
                rd_kafka_err2name((rd_kafka_resp_err_t)err), td_log_quote(q, sizeof q, reason));
}

static int tg_kset(rd_kafka_conf_t *conf, const char *name, const char *val, char *err,
                   size_t errcap) {
    char e[256];
    if (rd_kafka_conf_set(conf, name, val, e, sizeof e) != RD_KAFKA_CONF_OK) {
        snprintf(err, errcap, "gift register producer: %s: %s", name, e);
        return -1;
    }
    return 0;
}

/* Whether the broker knows `topic`; when not and `create`, asks it to create
 * it with `partitions` partitions (the embedded broker). */
static void tg_kafka_ensure_topic(td_gifts_kafka *k, int partitions) {
    const rd_kafka_metadata_t *md = NULL;
    if (rd_kafka_metadata(k->rk, 0, k->rkt, &md, 5000) == RD_KAFKA_RESP_ERR_NO_ERROR && md) {
        bool ok = md->topic_cnt == 1 && md->topics[0].err == RD_KAFKA_RESP_ERR_NO_ERROR &&
                  md->topics[0].partition_cnt > 0;
        rd_kafka_metadata_destroy(md);
        if (ok) return;
    }
    rd_kafka_NewTopic_t *nt = rd_kafka_NewTopic_new(k->topic, partitions, 1, NULL, 0);
    if (!nt) return;
    rd_kafka_queue_t *q = rd_kafka_queue_new(k->rk);
    rd_kafka_CreateTopics(k->rk, &nt, 1, NULL, q);
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, 5000);
    if (ev) rd_kafka_event_destroy(ev);
    rd_kafka_queue_destroy(q);
    rd_kafka_NewTopic_destroy(nt);
}

td_gifts_kafka *td_gifts_kafka_new(const td_config *cfg, const char *bootstraps, char *err,
                                   size_t errcap) {
    td_gifts_kafka *k = calloc(1, sizeof *k);
    if (!k) {
        snprintf(err, errcap, "out of memory");
        return NULL;
    }
    k->gen = 1;
    k->topic = strdup(cfg->kafka.gift_register_topic);
    rd_kafka_conf_t *pc = rd_kafka_conf_new();
    if (!k->topic || tg_kset(pc, "bootstrap.servers", bootstraps, err, errcap) < 0 ||
        tg_kset(pc, "client.id", "touchd-gift-register", err, errcap) < 0 ||
        tg_kset(pc, "enable.idempotence", "true", err, errcap) < 0 ||
        tg_kset(pc, "acks", "all", err, errcap) < 0 ||
        tg_kset(pc, "linger.ms", "1", err, errcap) < 0 ||
        tg_kset(pc, "socket.nagle.disable", "true", err, errcap) < 0) {
        rd_kafka_conf_destroy(pc);
        td_gifts_kafka_free(k);
        return NULL;
    }
    /* the same passthrough producer properties as the recommendations' */
    for (size_t i = 0; i < cfg->kafka.n_producer; i++) {
        if (tg_kset(pc, cfg->kafka.producer[i].key, cfg->kafka.producer[i].val, err, errcap) < 0) {
            rd_kafka_conf_destroy(pc);
            td_gifts_kafka_free(k);
            return NULL;
        }
    }
    rd_kafka_conf_set_opaque(pc, k);
    rd_kafka_conf_set_error_cb(pc, tg_kafka_error);
    rd_kafka_conf_set_dr_msg_cb(pc, tg_kafka_dr);
    char e[512];
    k->rk = rd_kafka_new(RD_KAFKA_PRODUCER, pc, e, sizeof e);
    if (!k->rk) {
        rd_kafka_conf_destroy(pc);
        snprintf(err, errcap, "gift register producer: %s", e);
        td_gifts_kafka_free(k);
        return NULL;
    }
    k->rkt = rd_kafka_topic_new(k->rk, k->topic, NULL);
    if (cfg->kafka.embedded) tg_kafka_ensure_topic(k, cfg->kafka.embedded_partitions);
    return k;
}

void td_gifts_kafka_free(td_gifts_kafka *k) {
    if (!k) return;
    if (k->rk) {
        rd_kafka_flush(k->rk, 2000);
        if (k->rkt) rd_kafka_topic_destroy(k->rkt);
        rd_kafka_destroy(k->rk);
    }
    free(k->topic);
    free(k->out);
    td_buf_free(&k->arena);
    free(k);
}

void td_gifts_kafka_begin(td_gifts_kafka *k) {
    k->gen++;
    k->nout = k->acked = k->failed = 0;
    k->arena.len = 0;
}

static int tg_kafka_enqueue(td_gifts_kafka *k, size_t i) {
    tg_kout *o = &k->out[i];
    void *tag = (void *)(((uintptr_t)k->gen << 32) | (uintptr_t)i);
    o->state = 0;
    for (;;) {
        if (k->fatal) return -1;
        rd_kafka_resp_err_t e = rd_kafka_producev(
            k->rk, RD_KAFKA_V_RKT(k->rkt), RD_KAFKA_V_KEY(k->arena.p + o->koff, o->klen),
            RD_KAFKA_V_VALUE(k->arena.p + o->off, o->len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
            RD_KAFKA_V_OPAQUE(tag), RD_KAFKA_V_END);
        if (!e) return 0;
        if (e == RD_KAFKA_RESP_ERR__FATAL) return -1;
        /* queue full or a transient error: serve reports, retry */
        rd_kafka_poll(k->rk, e == RD_KAFKA_RESP_ERR__QUEUE_FULL ? 10 : 200);
    }
}

int td_gifts_kafka_send(td_gifts_kafka *k, const td_gift_rec *r) {
    if (td_grow(&k->out, &k->capout, k->nout, sizeof *k->out, 64) != TD_OK) return -1;
    tg_kout *o = &k->out[k->nout];
    o->koff = k->arena.len;
    o->klen = strlen(r->prospect_id);
    if (td_buf_append(&k->arena, r->prospect_id, o->klen) < 0) return -1;
    o->off = k->arena.len;
    if (td_gift_rec_json(r, &k->arena) != TD_OK) return -1;
    o->len = k->arena.len - o->off;
    k->nout++;
    return tg_kafka_enqueue(k, k->nout - 1);
}

int td_gifts_kafka_wait(td_gifts_kafka *k, const volatile sig_atomic_t *stop, int stop_grace_ms) {
    int64_t give_up = -1;
    while (k->acked < k->nout) {
        if (k->fatal) return -1;
        if (k->failed) {
            for (size_t i = 0; i < k->nout; i++) {
                if (k->out[i].state != 2) continue;
                k->failed--;
                if (tg_kafka_enqueue(k, i) < 0) return -1;
            }
        }
        rd_kafka_flush(k->rk, 10);
        if (stop && *stop) {
            int64_t now = td_mono_ms();
            if (give_up < 0)
                give_up = now + stop_grace_ms;
            else if (now >= give_up && k->acked < k->nout)
                return -2;
        }
    }
    return 0;
}

uint64_t td_gifts_kafka_acked(const td_gifts_kafka *k) { return k->total_acked; }
