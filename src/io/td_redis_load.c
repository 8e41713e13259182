/*
 * td_redis_load.c - state loads (td_redis_load, td_redis_load_ptrs): one
 * pipeline of HGETALLs per call, under one deadline, each reply applied to
 * its td_state as a reload sees it; and the start-up check
 * (td_redis_check), which is one such load of a probe key per connection.
 *
 * The version field "v" belongs to the store: a load parses it into
 * td_state.version itself (strict decimal, >= 0); every other field goes to
 * td_state_set_field, which ignores the unknown ones.
 *
 * File-local functions and types: rl_; the module's shared ones (rd_, rs_,
 * sk_) are in td_redis_internal.h.
 *
 * @locality one thread at a time per td_redis (td_redis.h).
 */
#include "td_redis_internal.h"

/* Calls take their states as an array (`arr`) or as pointers (`ptrs`, when
 * non-NULL): state i. */
static td_state *rl_st(td_state *arr, td_state *const *ptrs, size_t i) {
    return ptrs ? ptrs[i] : &arr[i];
}

/* Applies one HGETALL reply to st; error text names the key and field. */
int rd_apply_hash(td_redis *r, td_state *st, const redisReply *rep) {
    char key[TD_ID_MAX + 80];
    td_redis_key(r, st->prospect_id, key, sizeof key);
    if (rep->type == REDIS_REPLY_ERROR) {
        rd_seterr(r, "redis: HGETALL %s: %.*s", key, (int)rep->len, rep->str);
        return TD_ERR;
    }
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements % 2 != 0) {
        rd_seterr(r, "redis: HGETALL %s: unexpected reply (type %d)", key, rep->type);
        return TD_ERR;
    }
    for (size_t j = 0; j + 1 < rep->elements; j += 2) {
        const redisReply *k = rep->element[j], *v = rep->element[j + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING) {
            rd_seterr(r, "redis: HGETALL %s: unexpected element type", key);
            return TD_ERR;
        }
        if (k->len == 1 && k->str[0] == 'v') {
            int64_t ver;
            if (td_parse_i64(v->str, v->len, &ver) != TD_OK || ver < 0) {
                rd_seterr(r, "redis: %s: field \"v\": malformed version \"%.*s\"", key,
                          (int)(v->len > 32 ? 32 : v->len), v->str);
                return TD_ERR;
            }
            st->version = ver;
            continue;
        }
        char why[200];
        why[0] = '\0';
        if (td_state_set_field(st, k->str, k->len, v->str, v->len, why, sizeof why) == TD_ERR) {
            rd_seterr(r, "redis: %s: field \"%.*s\": %s", key, (int)(k->len > 80 ? 80 : k->len),
                      k->str, why[0] ? why : "malformed value");
            return TD_ERR;
        }
    }
    return TD_OK;
}

static int rl_load(td_redis *r, td_state *arr, td_state *const *ptrs, size_t n) {
    r->err[0] = '\0';
    if (n == 0) return TD_OK;
    if (rd_check_ids(r, arr, (const td_state *const *)ptrs, n) != TD_OK || rd_ensure(r) != TD_OK)
        return TD_ERR;
    int64_t deadline = td_mono_ms() + r->conf.command_timeout_ms;
    for (size_t i = 0; i < n; i++) {
        rs_reset(&r->s);
        rs_pushs(&r->s, "HGETALL");
        rd_push_key(r, rl_st(arr, ptrs, i)->prospect_id);
        if (rd_append(r) != TD_OK) {
            td_rconn_drop(&r->rc, false); /* unsent commands in obuf: start clean */
            return TD_ERR;
        }
    }
    if (rd_flush(r, deadline, "HGETALL", r->conf.command_timeout_ms) != TD_OK) return TD_ERR;
    int rc = TD_OK;
    for (size_t i = 0; i < n; i++) {
        redisReply *rep = NULL;
        if (rd_read(r, deadline, &rep, "HGETALL", r->conf.command_timeout_ms) != TD_OK)
            return TD_ERR;
        /* after the first bad hash, keep draining to stay in sync */
        if (rc == TD_OK && rd_apply_hash(r, rl_st(arr, ptrs, i), rep) != TD_OK) rc = TD_ERR;
        freeReplyObject(rep);
    }
    return rc;
}

int td_redis_load(td_redis *r, td_state *states, size_t n) { return rl_load(r, states, NULL, n); }

int td_redis_load_ptrs(td_redis *r, td_state *const *states, size_t n) {
    return rl_load(r, NULL, states, n);
}

/* One probe read on r's own connection. */
static int rl_probe(td_redis *r) {
    /* the first attempt (td_redis_new's) failed and its backoff runs: a new
     * try now would replace its reason with "reconnecting in N ms" */
    if (!r->rc.c && td_mono_ms() < r->rc.next_try_ms && r->err[0]) return TD_ERR;
    td_state probe;
    td_state_init(&probe, "touchd:start-check");
    int rc = td_redis_load(r, &probe, 1);
    td_state_free(&probe);
    return rc;
}

int td_redis_check(td_redis *r, const char **failed) {
    const char *who = r->name[0] ? r->name : r->who;
    if (rl_probe(r) != TD_OK) {
        if (failed) *failed = who;
        return TD_ERR;
    }
    if (r->lanes < 2) return TD_OK;
    td_redis *p = rd_peer(r);
    if (!p) {
        rd_seterr(r, "redis: out of memory");
        if (failed) *failed = who;
        return TD_ERR;
    }
    if (rl_probe(p) != TD_OK) {
        rd_seterr(r, "%s", p->err);
        if (failed) *failed = p->name[0] ? p->name : p->who;
        return TD_ERR;
    }
    return TD_OK;
}
