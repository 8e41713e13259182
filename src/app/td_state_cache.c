/*
 * td_state_cache.c - see td_state_cache.h.
 *
 * Layout: the tags (hash, last use) of all slots sit in one compact array,
 * apart from the payloads (a td_state is ~2.4 KB): a lookup reads one cache
 * line of tags and touches a payload only on a hash match.
 *
 * @locality the daemon's main thread.
 */
#include "td_state_cache.h"

#include <stdlib.h>
#include <string.h>

typedef struct tag {
    uint64_t hash;  /* 0: empty slot (hashes are stored with the low bit set) */
    uint64_t stamp; /* last use: the older of a set is replaced */
} tag;

typedef struct slot {
    td_state st;
    td_kvs kv; /* kept when the slot empties: its buffers are reused */
} slot;

struct td_state_cache {
    tag *t;
    slot *v;
    size_t mask; /* number of sets - 1; a set is two adjacent slots */
    uint64_t clock;
    td_state_cache_stats stats;
};

td_state_cache *td_state_cache_new(size_t entries) {
    if (entries == 0) return NULL;
    size_t sets = 1;
    while (sets * 2 < entries) sets *= 2;
    td_state_cache *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->t = calloc(sets * 2, sizeof *c->t);
    c->v = calloc(sets * 2, sizeof *c->v);
    if (!c->t || !c->v) {
        free(c->t);
        free(c->v);
        free(c);
        return NULL;
    }
    c->mask = sets - 1;
    c->stats.entries = sets * 2;
    return c;
}

void td_state_cache_free(td_state_cache *c) {
    if (!c) return;
    for (size_t i = 0; i <= 2 * c->mask + 1; i++) {
        if (c->t[i].hash) td_state_free(&c->v[i].st);
        td_kvs_free(&c->v[i].kv);
    }
    free(c->t);
    free(c->v);
    free(c);
}

static uint64_t key_hash(const char *id) { return td_hash64(id, strlen(id), TD_HASH_SEED) | 1; }

/* The slot index of prospect `id` (hash h), or -1. */
static long find(const td_state_cache *c, const char *id, uint64_t h) {
    size_t i = 2 * (h >> 1 & c->mask);
    for (size_t k = i; k < i + 2; k++)
        if (c->t[k].hash == h && strcmp(c->v[k].st.prospect_id, id) == 0) return (long)k;
    return -1;
}

static void empty(td_state_cache *c, size_t i) {
    td_state_free(&c->v[i].st);
    c->t[i].hash = 0;
    c->stats.used--;
}

bool td_state_cache_take(td_state_cache *c, const char *prospect_id, td_state *st, td_kvs *kv) {
    if (!c) return false;
    long i = find(c, prospect_id, key_hash(prospect_id));
    if (i < 0) {
        c->stats.misses++;
        return false;
    }
    *st = c->v[i].st;
    td_kvs_move(kv, &c->v[i].kv);
    c->t[i].hash = 0; /* the state moved out: nothing to free */
    c->stats.used--;
    c->stats.hits++;
    return true;
}

void td_state_cache_give(td_state_cache *c, td_state *st, td_kvs *kv) {
    char pid[TD_ID_MAX + 1];
    memcpy(pid, st->prospect_id, sizeof pid);
    if (!c) {
        td_state_free(st);
        td_state_init(st, pid);
        td_kvs_clear(kv);
        return;
    }
    uint64_t h = key_hash(pid);
    long f = find(c, pid, h);
    size_t i;
    if (f >= 0) {
        i = (size_t)f;
    } else {
        size_t s = 2 * (h >> 1 & c->mask);
        i = !c->t[s].hash ? s : !c->t[s + 1].hash ? s + 1
            : c->t[s].stamp <= c->t[s + 1].stamp ? s
                                                 : s + 1;
    }
    if (c->t[i].hash) empty(c, i);
    c->v[i].st = *st;
    /* swap: the slot takes the caller's buffers, the caller gets the slot's
     * old (emptied) ones back for reuse */
    td_kvs old = c->v[i].kv;
    c->v[i].kv = *kv;
    *kv = old;
    td_kvs_clear(kv);
    c->t[i].hash = h;
    c->t[i].stamp = ++c->clock;
    c->stats.used++;
    td_state_init(st, pid);
}

void td_state_cache_drop(td_state_cache *c, const char *prospect_id) {
    if (!c) return;
    long i = find(c, prospect_id, key_hash(prospect_id));
    if (i < 0) return;
    empty(c, (size_t)i);
    c->stats.drops++;
}

void td_state_cache_stats_get(const td_state_cache *c, td_state_cache_stats *out) {
    if (!c) {
        memset(out, 0, sizeof *out);
        return;
    }
    *out = c->stats;
}
