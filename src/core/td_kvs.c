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

/* Equal bytes? Keys and most values are short: 8 bytes at a time inline
 * (the last word overlapping), memcmp for long values (touches, dedup). */
static inline bool td_kvs_eq(const char *p, const char *q, size_t n) {
    if (n > 64) return memcmp(p, q, n) == 0;
    if (n < 8) {
        for (size_t i = 0; i < n; i++)
            if (p[i] != q[i]) return false;
        return true;
    }
    uint64_t x, y, d = 0;
    for (size_t i = 0; i + 8 < n; i += 8) {
        memcpy(&x, p + i, 8);
        memcpy(&y, q + i, 8);
        d |= x ^ y;
    }
    memcpy(&x, p + n - 8, 8);
    memcpy(&y, q + n - 8, 8);
    return (d | (x ^ y)) == 0;
}

/* A cheap hash of a key: its length, first and last 8 bytes (flat-form keys
 * differ there: "timer.<rule>", "email.sent", "pos.<hex>"). */
static inline uint32_t td_kvs_khash(const char *k, size_t kl) {
    uint64_t a = 0, b = 0;
    if (kl >= 8) {
        memcpy(&a, k, 8);
        memcpy(&b, k + kl - 8, 8);
    } else {
        for (size_t i = 0; i < kl; i++)
            a = a << 8 | (unsigned char)k[i];
    }
    uint64_t h = (a * 0x9E3779B97F4A7C15ULL) ^ (b * 0xC2B2AE3D27D4EB4FULL) ^ kl;
    return (uint32_t)(h >> 32);
}

/* Open addressing over the keys of `before`, built on the first key that is
 * not where the cursor says: slots hold 1 + the index, 0 is empty. */
typedef struct td_kvs_index {
    uint32_t *slot;
    uint32_t mask;
} td_kvs_index;

static int td_kvs_index_build(td_kvs_index *x, const td_kvs *kv, uint32_t *stack, size_t nstack) {
    size_t cap = 16;
    while (cap < 2 * kv->n) cap *= 2;
    x->slot = cap <= nstack ? stack : malloc(cap * sizeof *x->slot);
    if (!x->slot) return TD_ERR;
    memset(x->slot, 0, cap * sizeof *x->slot);
    x->mask = (uint32_t)(cap - 1);
    for (size_t j = 0; j < kv->n; j++) {
        uint32_t h = td_kvs_khash(kv->buf + kv->e[j].k, kv->e[j].kl) & x->mask;
        while (x->slot[h]) h = (h + 1) & x->mask;
        x->slot[h] = (uint32_t)j + 1;
    }
    return TD_OK;
}

/* Index of key k in kv (first of equal keys in insertion order), or kv->n. */
static size_t td_kvs_index_find(const td_kvs_index *x, const td_kvs *kv, const char *k,
                                size_t kl) {
    for (uint32_t h = td_kvs_khash(k, kl) & x->mask; x->slot[h]; h = (h + 1) & x->mask) {
        const td_kvs_entry *e = &kv->e[x->slot[h] - 1];
        if (e->kl == kl && td_kvs_eq(kv->buf + e->k, k, kl)) return x->slot[h] - 1;
    }
    return kv->n;
}

int td_kvs_diff(const td_kvs *before, const td_kvs *now, td_kv_fn set_fn, td_kdel_fn del_fn,
                void *ud) {
    if (before->oom || now->oom)
        return TD_ERR;
    if (before->n >= UINT32_MAX / 4)
        return TD_ERR; /* not reached: offsets are 32-bit, a state a few KB */
    /* seen[j]: key j of `before` is also in `now` */
    bool stack_seen[256];
    bool *seen = before->n <= 256 ? stack_seen : calloc(before->n, sizeof *seen);
    if (!seen)
        return TD_ERR;
    if (seen == stack_seen)
        memset(seen, 0, before->n * sizeof *seen);
    /* Both lists come out in the same field order, so the matching key of
     * `before` is almost always the one at the cursor. Any other key (a new
     * field, or one after a deleted one) is looked up in an index of
     * `before` built the first time it is needed: linear either way. */
    uint32_t stack_slot[512];
    const size_t nstack = sizeof stack_slot / sizeof *stack_slot;
    td_kvs_index idx = {NULL, 0};
    size_t cur = 0, nb = before->n;
    const td_kvs_entry *a = before->e;
    /* An index too large for the stack is allocated before anything is
     * reported (the lazy build below then never allocates). */
    if (nb > nstack / 2 && td_kvs_index_build(&idx, before, stack_slot, nstack) != TD_OK) {
        if (seen != stack_seen)
            free(seen);
        return TD_ERR;
    }
    for (size_t i = 0; i < now->n; i++) {
        const char *k = now->buf + now->e[i].k;
        size_t kl = now->e[i].kl;
        size_t found = nb;
        if (cur < nb && a[cur].kl == kl && td_kvs_eq(before->buf + a[cur].k, k, kl)) {
            found = cur;
        } else if (nb) {
            if (!idx.slot)
                (void)td_kvs_index_build(&idx, before, stack_slot, nstack); /* fits: no malloc */
            found = td_kvs_index_find(&idx, before, k, kl);
        }
        const char *v = now->buf + now->e[i].v;
        size_t vl = now->e[i].vl;
        if (found == nb) {
            set_fn(ud, k, kl, v, vl);
            continue;
        }
        seen[found] = true;
        cur = found + 1;
        if (a[found].vl != vl || !td_kvs_eq(before->buf + a[found].v, v, vl))
            set_fn(ud, k, kl, v, vl);
    }
    for (size_t j = 0; j < nb; j++)
        if (!seen[j])
            del_fn(ud, before->buf + a[j].k, a[j].kl);
    if (idx.slot != stack_slot)
        free(idx.slot);
    if (seen != stack_seen)
        free(seen);
    return TD_OK;
}
