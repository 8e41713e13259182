/*
 * td_kvs.c - a state's flat form in memory, and the difference of two.
 */
#include "td_kvs.h"

#include <stdlib.h>
#include <string.h>

void td_kvs_free(td_kvs *kv) {
    free(kv->buf);
    free(kv->e);
    memset(kv, 0, sizeof *kv);
}

void td_kvs_free_array(td_kvs *a, size_t n) {
    if (!a)
        return;
    for (size_t i = 0; i < n; i++)
        td_kvs_free(&a[i]);
    free(a);
}

void td_kvs_clear(td_kvs *kv) {
    kv->len = 0;
    kv->n = 0;
    kv->oom = false;
}

void td_kvs_move(td_kvs *to, td_kvs *from) {
    if (to == from)
        return;
    td_kvs_free(to);
    *to = *from;
    memset(from, 0, sizeof *from);
}

void td_kvs_add(void *ud, const char *k, size_t kl, const char *v, size_t vl) {
    td_kvs *l = ud;
    if (l->oom)
        return;
    if (l->len + kl + vl > UINT32_MAX) {
        l->oom = true; /* offsets are 32-bit; a state is a few KB */
        return;
    }
    if (l->len + kl + vl > l->cap) {
        size_t cap = l->cap ? l->cap : 512;
        while (cap < l->len + kl + vl)
            cap *= 2;
        char *b = realloc(l->buf, cap);
        if (!b) {
            l->oom = true;
            return;
        }
        l->buf = b;
        l->cap = cap;
    }
    if (l->n == l->ecap) {
        size_t cap = l->ecap ? l->ecap * 2 : 32;
        void *e = realloc(l->e, cap * sizeof *l->e);
        if (!e) {
            l->oom = true;
            return;
        }
        l->e = e;
        l->ecap = cap;
    }
    td_kvs_entry *x = &l->e[l->n++];
    x->k = (uint32_t)l->len;
    x->kl = (uint32_t)kl;
    memcpy(l->buf + l->len, k, kl);
    l->len += kl;
    x->v = (uint32_t)l->len;
    x->vl = (uint32_t)vl;
    memcpy(l->buf + l->len, v, vl);
    l->len += vl;
}

int td_kvs_capture(td_kvs *kv, const td_state *st) {
    td_kvs_clear(kv);
    td_state_serialize(st, td_kvs_add, kv);
    if (kv->oom) {
        td_kvs_clear(kv);
        return TD_ERR;
    }
    return TD_OK;
}

int td_kvs_diff(const td_kvs *before, const td_kvs *now, td_kv_fn set_fn, td_kdel_fn del_fn,
                void *ud) {
    if (before->oom || now->oom)
        return TD_ERR;
    /* seen[j]: key j of `before` is also in `now` */
    bool stack_seen[256];
    bool *seen = before->n <= 256 ? stack_seen : calloc(before->n, sizeof *seen);
    if (!seen)
        return TD_ERR;
    if (seen == stack_seen)
        memset(seen, 0, before->n * sizeof *seen);
    /* Both lists come out in the same field order, so the matching key of
     * `before` is almost always at or just after the cursor: a forward scan
     * that wraps around is linear in practice. */
    size_t cur = 0;
    const td_kvs_entry *a = before->e;
    for (size_t i = 0; i < now->n; i++) {
        const char *k = now->buf + now->e[i].k;
        size_t kl = now->e[i].kl;
        size_t found = before->n;
        for (size_t step = 0; step < before->n; step++) {
            size_t j = cur + step < before->n ? cur + step : cur + step - before->n;
            if (a[j].kl == kl && memcmp(before->buf + a[j].k, k, kl) == 0) {
                found = j;
                break;
            }
        }
        const char *v = now->buf + now->e[i].v;
        size_t vl = now->e[i].vl;
        if (found == before->n) {
            set_fn(ud, k, kl, v, vl);
            continue;
        }
        seen[found] = true;
        cur = found + 1 < before->n ? found + 1 : 0;
        if (a[found].vl != vl || memcmp(before->buf + a[found].v, v, vl) != 0)
            set_fn(ud, k, kl, v, vl);
    }
    for (size_t j = 0; j < before->n; j++)
        if (!seen[j])
            del_fn(ud, before->buf + a[j].k, a[j].kl);
    if (seen != stack_seen)
        free(seen);
    return TD_OK;
}
