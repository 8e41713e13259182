/*
 * td_redis_verify.c - verify_writes (td_redis_conf.verify_writes): after a
 * successful td_redis_store_diff, every hash it stored is read back in one
 * HGETALL pipeline, loaded as a reload would load it, and compared with the
 * flat form the caller meant to write (td_redis.h says what counts as a
 * difference). Differences are counted, not errors; a failed read back is.
 *
 * File-local functions and types: rv_; the module's shared ones (rd_, rs_,
 * sk_) are in td_redis_internal.h.
 *
 * @locality one thread at a time per td_redis (td_redis.h); the counter is
 * read by any thread.
 */
#include "td_redis_internal.h"

#include <inttypes.h>
#include <stdio.h>

uint64_t td_redis_verify_mismatches(const td_redis *r) {
    return r ? __atomic_load_n(&r->verify_bad, __ATOMIC_RELAXED) : 0;
}

void td_redis_verify_last(const td_redis *r, char *buf, size_t cap) {
    if (cap > 0) snprintf(buf, cap, "%s", r ? r->verify_msg : "");
}

/* td_kvs_diff callbacks of rv_verify_one: the first difference between
 * the flat form Redis' hash loads as (`got`) and the one written (`now`). */
typedef struct rv_vdiff {
    const td_kvs *got;
    char *why;
    size_t cap;
} rv_vdiff;

static const td_kvs_entry *rv_kvs_find(const td_kvs *kv, const char *key, size_t klen) {
    for (size_t j = 0; j < kv->n; j++)
        if (kv->e[j].kl == klen && memcmp(kv->buf + kv->e[j].k, key, klen) == 0) return &kv->e[j];
    return NULL;
}

static void rv_vdiff_set(void *ud, const char *key, size_t klen, const char *val, size_t vlen) {
    rv_vdiff *x = ud;
    if (x->why[0] || (klen == 1 && key[0] == 'v')) return;
    const td_kvs_entry *g = rv_kvs_find(x->got, key, klen);
    if (g)
        snprintf(x->why, x->cap, "field \"%.*s\": redis holds \"%.*s\", touchd wrote \"%.*s\"",
                 (int)(klen > 60 ? 60 : klen), key, (int)(g->vl > 60 ? 60 : g->vl),
                 x->got->buf + g->v, (int)(vlen > 60 ? 60 : vlen), val);
    else
        snprintf(x->why, x->cap, "field \"%.*s\": touchd wrote \"%.*s\", redis has no such field",
                 (int)(klen > 60 ? 60 : klen), key, (int)(vlen > 60 ? 60 : vlen), val);
}

static void rv_vdiff_del(void *ud, const char *key, size_t klen) {
    rv_vdiff *x = ud;
    if (x->why[0] || (klen == 1 && key[0] == 'v')) return;
    const td_kvs_entry *g = rv_kvs_find(x->got, key, klen);
    snprintf(x->why, x->cap, "field \"%.*s\": redis holds \"%.*s\", touchd has no such field",
             (int)(klen > 60 ? 60 : klen), key, g ? (int)(g->vl > 60 ? 60 : g->vl) : 0,
             g ? x->got->buf + g->v : "");
}

/* The first difference, into why ("" when none), between the state one
 * HGETALL reply loads as (what a reload would see: fields parsed, unknown
 * ones ignored) and the flat form `now` written at a version >= min_v. */
static void rv_verify_one(td_redis *r, const td_state *st, const redisReply *rep, const td_kvs *now,
                          int64_t min_v, char *why, size_t cap) {
    why[0] = '\0';
    td_state got;
    td_state_init(&got, st->prospect_id);
    char err[sizeof r->err];
    memcpy(err, r->err, sizeof err);
    if (rd_apply_hash(r, &got, rep) != TD_OK) {
        snprintf(why, cap, "does not load: %.200s", r->err);
        memcpy(r->err, err, sizeof err);
    } else if (got.version < min_v) {
        snprintf(why, cap, "field \"v\": redis holds %" PRId64 ", expected at least %" PRId64,
                 got.version, min_v);
    } else {
        td_kvs kv = {0};
        rv_vdiff x = {&kv, why, cap};
        if (td_kvs_capture(&kv, &got) != TD_OK ||
            td_kvs_diff(&kv, now, rv_vdiff_set, rv_vdiff_del, &x) != TD_OK)
            snprintf(why, cap, "out of memory comparing");
        td_kvs_free(&kv);
    }
    td_state_free(&got);
}

/* Reads back the hashes td_redis_store_diff stored (conf.verify_writes).
 * @returns TD_OK (differences are counted, not errors) or TD_ERR (Redis). */
int rd_verify(td_redis *r, const td_state *const *states, const td_kvs *nows,
              const int64_t *expected_version, size_t n, const int *result) {
    int64_t deadline = td_mono_ms() + r->conf.command_timeout_ms;
    size_t sent = 0;
    for (size_t i = 0; i < n; i++) {
        if (result[i] != TD_REDIS_STORED) continue;
        rs_reset(&r->s);
        rs_pushs(&r->s, "HGETALL");
        rd_push_key(r, states[i]->prospect_id);
        if (rd_append(r) != TD_OK) {
            td_rconn_drop(&r->rc, false);
            return TD_ERR;
        }
        sent++;
    }
    if (sent == 0) return TD_OK;
    if (rd_flush(r, deadline, "HGETALL (verify_writes)", r->conf.command_timeout_ms) != TD_OK)
        return TD_ERR;
    for (size_t i = 0; i < n; i++) {
        if (result[i] != TD_REDIS_STORED) continue;
        redisReply *rep = NULL;
        if (rd_read(r, deadline, &rep, "HGETALL (verify_writes)", r->conf.command_timeout_ms) !=
            TD_OK)
            return TD_ERR;
        char why[300];
        rv_verify_one(r, states[i], rep, &nows[i], expected_version[i] + 1, why, sizeof why);
        freeReplyObject(rep);
        if (why[0]) {
            char key[TD_ID_MAX + 80];
            td_redis_key(r, states[i]->prospect_id, key, sizeof key);
            snprintf(r->verify_msg, sizeof r->verify_msg, "%s: %s", key, why);
            __atomic_add_fetch(&r->verify_bad, 1, __ATOMIC_RELAXED);
        }
    }
    return TD_OK;
}
