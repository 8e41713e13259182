/*
 * td_kvs.c - a state's flat form in memory, and the difference of two.
 */
#include "td_kvs.h"

#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

void td_kvs_free(td_kvs *kv) {
    free(kv->buf);
    free(kv->e);
    memset(kv, 0, sizeof *kv);
}

void td_kvs_free_array(td_kvs *a, size_t n) {
    if (!a) return;
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
    if (to == from) return;
    td_kvs_free(to);
    *to = *from;
    memset(from, 0, sizeof *from);
}

int td_kvs_grow_entries(td_kvs *kv) {
    size_t cap = kv->ecap ? kv->ecap * 2 : 32;
    void *e = realloc(kv->e, cap * sizeof *kv->e);
    if (!e) {
        kv->oom = true;
        return TD_ERR;
    }
    kv->e = e;
    kv->ecap = cap;
    return TD_OK;
}

void td_kvs_add(void *ud, const char *k, size_t kl, const char *v, size_t vl) {
    td_kvs *l = ud;
    if (l->oom) return;
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
    memcpy(l->buf + l->len, k, kl);
    memcpy(l->buf + l->len + kl, v, vl);
    td_kvs_commit(l, kl, vl);
}

int td_kvs_capture(td_kvs *kv, const td_state *st) {
    td_kvs_clear(kv);
    if (!kv->cap && !kv->ecap) {
        /* what the first td_kvs_add would allocate (any state but one
         * without a prospect id has a pair), so that the writer formats
         * in place from the first pair on */
        kv->buf = malloc(512);
        kv->e = malloc(32 * sizeof *kv->e);
        if (kv->buf) kv->cap = 512;
        if (kv->e) kv->ecap = 32;
    }
    td_state_serialize_kvs(st, kv);
    if (kv->oom) {
        td_kvs_clear(kv);
        return TD_ERR;
    }
    return TD_OK;
}

/* Equal bytes? Keys and most values are short: 16 bytes at a time inline
 * (the last block overlapping), overlapping halves below 16, memcmp for
 * long values (touches, dedup) and without SSE2. */
static inline bool td_kvs_eq(const char *p, const char *q, size_t n) {
    if (n >= 16) {
#ifdef __SSE2__
        if (n > 64) return memcmp(p, q, n) == 0;
        __m128i d = _mm_setzero_si128();
        for (size_t i = 0; i + 16 < n; i += 16)
            d = _mm_or_si128(
                d, _mm_xor_si128(_mm_loadu_si128((const __m128i *)(const void *)(p + i)),
                                 _mm_loadu_si128((const __m128i *)(const void *)(q + i))));
        d = _mm_or_si128(
            d, _mm_xor_si128(_mm_loadu_si128((const __m128i *)(const void *)(p + n - 16)),
                             _mm_loadu_si128((const __m128i *)(const void *)(q + n - 16))));
        return _mm_movemask_epi8(_mm_cmpeq_epi8(d, _mm_setzero_si128())) == 0xFFFF;
#else
        if (n > 64) return memcmp(p, q, n) == 0;
        uint64_t x, y, d = 0;
        for (size_t i = 0; i + 8 < n; i += 8) {
            memcpy(&x, p + i, 8);
            memcpy(&y, q + i, 8);
            d |= x ^ y;
        }
        memcpy(&x, p + n - 8, 8);
        memcpy(&y, q + n - 8, 8);
        return (d | (x ^ y)) == 0;
#endif
    }
    if (n >= 8) {
        uint64_t a, b, c, d;
        memcpy(&a, p, 8);
        memcpy(&b, q, 8);
        memcpy(&c, p + n - 8, 8);
        memcpy(&d, q + n - 8, 8);
        return ((a ^ b) | (c ^ d)) == 0;
    }
    if (n >= 4) {
        uint32_t a, b, c, d;
        memcpy(&a, p, 4);
        memcpy(&b, q, 4);
        memcpy(&c, p + n - 4, 4);
        memcpy(&d, q + n - 4, 4);
        return ((a ^ b) | (c ^ d)) == 0;
    }
    if (n >= 2) {
        uint16_t a, b, c, d;
        memcpy(&a, p, 2);
        memcpy(&b, q, 2);
        memcpy(&c, p + n - 2, 2);
        memcpy(&d, q + n - 2, 2);
        return ((a ^ b) | (c ^ d)) == 0;
    }
    return n == 0 || p[0] == q[0];
}

/* A cheap hash of a key: its length, first and last 8 bytes (flat-form keys
 * differ there: "timer.<rule>", "email.sent", "pos.<hex>"); shorter keys
 * are read as two overlapping halves. */
static inline uint32_t td_kvs_khash(const char *k, size_t kl) {
    uint64_t a = 0, b = 0;
    if (kl >= 8) {
        memcpy(&a, k, 8);
        memcpy(&b, k + kl - 8, 8);
    } else if (kl >= 4) {
        uint32_t x, y;
        memcpy(&x, k, 4);
        memcpy(&y, k + kl - 4, 4);
        a = x;
        b = y;
    } else {
        for (size_t i = 0; i < kl; i++)
            a = a << 8 | (unsigned char)k[i];
    }
    uint64_t h = (a * 0x9E3779B97F4A7C15ULL) ^ (b * 0xC2B2AE3D27D4EB4FULL) ^ kl;
    h ^= h >> 29; /* the slot takes low bits: fold the well-mixed high ones in */
    return (uint32_t)(h ^ h >> 32);
}

/* Open addressing over keys of `before` (the ones not matched yet when it is
 * built): slots hold 1 + the index, 0 is empty. */
typedef struct td_kvs_index {
    uint32_t *slot;
    uint32_t mask;
} td_kvs_index;

/* Indexes the keys j of kv with !seen[j] (`unseen` of them) into slot[]
 * (`cap` entries, a power of two >= 16 and >= 2 * kv->n). */
static void kv_index_build(td_kvs_index *x, const td_kvs *kv, const bool *seen, size_t unseen,
                           uint32_t *slot, size_t cap) {
    size_t c = 16;
    while (c < 2 * unseen)
        c *= 2;
    if (c > cap) c = cap; /* not reached: cap >= 2 * kv->n */
    x->slot = slot;
    memset(x->slot, 0, c * sizeof *x->slot);
    x->mask = (uint32_t)(c - 1);
    for (size_t j = 0; j < kv->n; j++) {
        if (seen[j]) continue;
        uint32_t h = td_kvs_khash(kv->buf + kv->e[j].k, kv->e[j].kl) & x->mask;
        while (x->slot[h])
            h = (h + 1) & x->mask;
        x->slot[h] = (uint32_t)j + 1;
    }
}

/* Index of key k in kv among the indexed keys, or kv->n. */
static size_t kv_index_find(const td_kvs_index *x, const td_kvs *kv, const char *k, size_t kl) {
    for (uint32_t h = td_kvs_khash(k, kl) & x->mask; x->slot[h]; h = (h + 1) & x->mask) {
        const td_kvs_entry *e = &kv->e[x->slot[h] - 1];
        if (e->kl == kl && td_kvs_eq(kv->buf + e->k, k, kl)) return x->slot[h] - 1;
    }
    return kv->n;
}

int td_kvs_diff(const td_kvs *before, const td_kvs *now, td_kv_fn set_fn, td_kdel_fn del_fn,
                void *ud) {
    if (before->oom || now->oom) return TD_ERR;
    if (before->n >= UINT32_MAX / 4)
        return TD_ERR; /* not reached: offsets are 32-bit, a state a few KB */
    size_t nb = before->n;
    /* seen[j]: key j of `before` is also in `now` */
    bool stack_seen[256];
    bool *seen = nb <= 256 ? stack_seen : calloc(nb, sizeof *seen);
    if (!seen) return TD_ERR;
    if (seen == stack_seen) memset(seen, 0, nb * sizeof *seen);
    /* The index's slots: on the stack, or allocated before anything is
     * reported (the lazy build below never allocates). */
    uint32_t stack_slot[512];
    size_t ncap = 16;
    while (ncap < 2 * nb)
        ncap *= 2;
    uint32_t *slots =
        ncap <= sizeof stack_slot / sizeof *stack_slot ? stack_slot : malloc(ncap * sizeof *slots);
    if (!slots) {
        if (seen != stack_seen) free(seen);
        return TD_ERR;
    }
    /*
     * Both lists come out in the same field order, so the matching key of
     * `before` is almost always the one at the cursor. Any other key (a new
     * field, or one after a deleted one) is looked up in an index of the
     * keys of `before` not matched yet, built the first time it is needed:
     * linear either way. Keys are distinct, so a key of `before` matched
     * once is never matched again: once all are matched, every further key
     * of `now` is new, and the index leaves the matched ones out.
     */
    td_kvs_index idx = {NULL, 0};
    size_t cur = 0, matched = 0;
    const td_kvs_entry *a = before->e;
    const char *ab = before->buf, *nbuf = now->buf;
    for (size_t i = 0; i < now->n; i++) {
        const td_kvs_entry *e = &now->e[i];
        const char *k = nbuf + e->k, *v = nbuf + e->v;
        size_t kl = e->kl, vl = e->vl;
        size_t found = nb;
        if (cur < nb && a[cur].kl == kl) {
            const td_kvs_entry *b = &a[cur];
            /* the pair as it was (key and value side by side in both, as
             * td_kvs_add writes them): one comparison */
            if (b->vl == vl && b->v == b->k + kl && e->v == e->k + kl) {
                if (td_kvs_eq(ab + b->k, k, kl + vl)) {
                    matched += !seen[cur];
                    seen[cur] = true;
                    cur++;
                    continue;
                }
                if (td_kvs_eq(ab + b->k, k, kl)) { /* same key: the value changed */
                    matched += !seen[cur];
                    seen[cur] = true;
                    cur++;
                    set_fn(ud, k, kl, v, vl);
                    continue;
                }
            } else if (td_kvs_eq(ab + b->k, k, kl)) {
                found = cur;
            }
        }
        if (found == nb && matched < nb) {
            if (!idx.slot) kv_index_build(&idx, before, seen, nb - matched, slots, ncap);
            found = kv_index_find(&idx, before, k, kl);
        }
        if (found == nb) {
            set_fn(ud, k, kl, v, vl);
            continue;
        }
        matched += !seen[found];
        seen[found] = true;
        cur = found + 1;
        if (a[found].vl != vl || !td_kvs_eq(ab + a[found].v, v, vl)) set_fn(ud, k, kl, v, vl);
    }
    if (matched < nb)
        for (size_t j = 0; j < nb; j++)
            if (!seen[j]) del_fn(ud, ab + a[j].k, a[j].kl);
    if (slots != stack_slot) free(slots);
    if (seen != stack_seen) free(seen);
    return TD_OK;
}
