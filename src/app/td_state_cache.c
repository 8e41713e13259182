/*
 * td_state_cache.c - see td_state_cache.h.
 *
 * Layout: the tags (hash, last use) of all slots sit in one compact array,
 * apart from the payloads: a lookup reads the two cache lines of its set's
 * tags and touches a state only on a hash match.
 *
 * @locality the daemon's main thread.
 */
#include "td_state_cache.h"

#include <stdlib.h>
#include <string.h>

#define WAYS 8

typedef struct tag {
    uint64_t hash;  /* 0: empty slot (hashes are stored with the low bit set) */
    uint64_t stamp; /* last give: the oldest of a set is replaced */
} tag;

typedef struct slot {
    td_state *st; /* NULL when empty */
    td_kvs kv;    /* kept when the slot empties: its buffers are reused */
} slot;

struct td_state_cache {
    tag *t;
    slot *v;
    size_t mask; /* number of sets - 1; a set is WAYS adjacent slots */
    uint64_t clock;
    td_state_cache_stats stats;
};

td_state_cache *td_state_cache_new(size_t entries) {
    if (entries == 0) return NULL;
    size_t sets = 1;
    while (sets * WAYS < entries)
        sets *= 2;
    td_state_cache *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->t = calloc(sets * WAYS, sizeof *c->t);
    c->v = calloc(sets * WAYS, sizeof *c->v);
    if (!c->t || !c->v) {
        free(c->t);
        free(c->v);
        free(c);
        return NULL;
    }
    c->mask = sets - 1;
    c->stats.entries = sets * WAYS;
    return c;
}

void td_state_cache_free(td_state_cache *c) {
    if (!c) return;
    for (size_t i = 0; i < c->stats.entries; i++) {
        if (c->v[i].st) {
            td_state_free(c->v[i].st);
            free(c->v[i].st);
        }
        td_kvs_free(&c->v[i].kv);
    }
    free(c->t);
    free(c->v);
    free(c);
}

/* Tags hold the hash with the low bit set (0 marks an empty slot). */
static uint64_t key_hash(uint64_t hash) { return hash | 1; }

static size_t set_of(const td_state_cache *c, uint64_t h) { return WAYS * (h >> 1 & c->mask); }

/* The slot index of prospect `id` (hash h), or -1. */
static long find(const td_state_cache *c, const char *id, uint64_t h) {
    size_t i = set_of(c, h);
    for (size_t k = i; k < i + WAYS; k++)
        if (c->t[k].hash == h && strcmp(c->v[k].st->prospect_id, id) == 0) return (long)k;
    return -1;
}

/* Empties slot i: @returns its state (tables freed) for the caller. */
static td_state *empty(td_state_cache *c, size_t i) {
    td_state *st = c->v[i].st;
    td_state_free(st);
    c->v[i].st = NULL;
    c->t[i].hash = 0;
    c->stats.used--;
    return st;
}

td_state *td_state_cache_take(td_state_cache *c, const char *prospect_id, uint64_t hash,
                              td_kvs *kv) {
    if (!c) return NULL;
    long i = find(c, prospect_id, key_hash(hash));
    if (i < 0) {
        c->stats.misses++;
        return NULL;
    }
    td_state *st = c->v[i].st;
    td_kvs_move(kv, &c->v[i].kv);
    c->v[i].st = NULL;
    c->t[i].hash = 0;
    c->stats.used--;
    c->stats.hits++;
    return st;
}

td_state *td_state_cache_give(td_state_cache *c, td_state *st, uint64_t hash, td_kvs *kv) {
    if (!c) {
        td_state_free(st);
        td_kvs_clear(kv);
        return st;
    }
    uint64_t h = key_hash(hash);
    long f = find(c, st->prospect_id, h);
    size_t i;
    if (f >= 0) {
        i = (size_t)f;
    } else {
        /* an empty way, else the least recently given */
        size_t s = set_of(c, h);
        i = s;
        for (size_t k = s; k < s + WAYS; k++) {
            if (!c->t[k].hash) {
                i = k;
                break;
            }
            if (c->t[k].stamp < c->t[i].stamp) i = k;
        }
    }
    td_state *out = c->t[i].hash ? empty(c, i) : NULL;
    c->v[i].st = st;
    /* swap: the slot takes the caller's buffers, the caller gets the slot's
     * old (emptied) ones back for reuse */
    td_kvs old = c->v[i].kv;
    c->v[i].kv = *kv;
    *kv = old;
    td_kvs_clear(kv);
    c->t[i].hash = h;
    c->t[i].stamp = ++c->clock;
    c->stats.used++;
    return out;
}

void td_state_cache_drop(td_state_cache *c, const char *prospect_id, uint64_t hash) {
    if (!c) return;
    long i = find(c, prospect_id, key_hash(hash));
    if (i < 0) return;
    free(empty(c, (size_t)i));
    c->stats.drops++;
}

void td_state_cache_stats_get(const td_state_cache *c, td_state_cache_stats *out) {
    if (!c) {
        memset(out, 0, sizeof *out);
        return;
    }
    *out = c->stats;
}
