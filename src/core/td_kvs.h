/*
 * td_kvs.h - a state's flat form held in memory: the field/value pairs of
 * td_state_serialize, in its order, in one buffer.
 *
 * The daemon keeps, per prospect, the td_kvs of what Redis holds (as loaded
 * or as last stored). A write then serialises the new state once and sends
 * only the difference (td_kvs_diff), and the new td_kvs becomes the next
 * base: one serialisation per write, no state copy.
 *
 * @locality any; a td_kvs is a plain value owned by its holder.
 */
#ifndef TD_KVS_H
#define TD_KVS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "td_state.h"

typedef struct td_kvs_entry {
    uint32_t k, kl; /* key: buf[k .. k+kl) */
    uint32_t v, vl; /* value: buf[v .. v+vl) */
} td_kvs_entry;

typedef struct td_kvs {
    char *buf;
    size_t len, cap;
    td_kvs_entry *e;
    size_t n, ecap;
    bool oom;
} td_kvs;

/* An empty td_kvs needs no initialisation beyond {0}. */
void td_kvs_free(td_kvs *kv);
/* Frees each of a[0..n) and the array itself (NULL is a no-op). */
void td_kvs_free_array(td_kvs *a, size_t n);
/* Empties kv, keeping its memory for reuse. */
void td_kvs_clear(td_kvs *kv);
/* Moves *from into *to (freeing what *to held); *from becomes empty. */
void td_kvs_move(td_kvs *to, td_kvs *from);

/* Appends one pair (a td_kv_fn: `ud` is the td_kvs). On out-of-memory the
 * td_kvs is marked (oom) and further pairs are ignored. */
void td_kvs_add(void *ud, const char *key, size_t klen, const char *val, size_t vlen);

/* Grows the entries (as td_kvs_add would). @returns TD_OK, or TD_ERR: oom. */
int td_kvs_grow_entries(td_kvs *kv);
/* Entry x describes the pair whose key (kl bytes) then value (vl bytes)
 * start at offset len. @returns the offset after the pair. */
static inline size_t td_kvs_entry_set(td_kvs_entry *x, size_t len, size_t kl, size_t vl) {
    x->k = (uint32_t)len;
    x->kl = (uint32_t)kl;
    x->v = (uint32_t)(len + kl);
    x->vl = (uint32_t)vl;
    return len + kl + vl;
}

/* For a writer that formats pairs in place (td_kvs_capture): appends the
 * pair whose key (kl bytes) then value (vl bytes) it wrote at buf + len,
 * within the buffer (len + kl + vl <= cap, and cap <= UINT32_MAX). */
static inline void td_kvs_commit(td_kvs *kv, size_t kl, size_t vl) {
    if (kv->n == kv->ecap && td_kvs_grow_entries(kv) != TD_OK) return;
    kv->len = td_kvs_entry_set(&kv->e[kv->n++], kv->len, kl, vl);
}

/* Asks the CPU to bring kv's pairs and entries into its caches (`write`:
 * for writing): a batch walks thousands of flat forms last touched a whole
 * cycle of prospects ago, and a diff or capture otherwise waits on each of
 * their cache lines in turn. No effect on the contents. */
static inline void td_kvs_prefetch(const td_kvs *kv, bool write) {
    const char *p = kv->buf, *q = (const char *)kv->e;
    size_t bl = write ? kv->cap : kv->len, el = (write ? kv->ecap : kv->n) * sizeof *kv->e;
    if (bl > 4096) bl = 4096;
    if (el > 4096) el = 4096;
    for (size_t i = 0; i < bl; i += 64)
        write ? __builtin_prefetch(p + i, 1) : __builtin_prefetch(p + i, 0);
    for (size_t i = 0; i < el; i += 64)
        write ? __builtin_prefetch(q + i, 1) : __builtin_prefetch(q + i, 0);
}

/* Appends the flat form of st to kv (td_state_flat.c; td_kvs_capture's writer). */
void td_state_serialize_kvs(const td_state *st, td_kvs *kv);

/* kv becomes the flat form of st (td_state_serialize's pairs, in order).
 * @returns TD_OK or TD_ERR (out of memory; kv is then empty). */
int td_kvs_capture(td_kvs *kv, const td_state *st);

/*
 * What turns hash `before` into hash `now`: set_fn for each pair of `now`
 * that is new or has another value (in the order of `now`), then del_fn for
 * each key of `before` absent from `now` (in the order of `before`). Neither
 * is modified. The keys of each are distinct, as a hash's are (td_kvs_capture's
 * always are). Linear when both come from td_state_serialize (same field
 * order). @returns TD_OK or TD_ERR (out of memory: nothing was reported).
 */
int td_kvs_diff(const td_kvs *before, const td_kvs *now, td_kv_fn set_fn, td_kdel_fn del_fn,
                void *ud);

#endif
