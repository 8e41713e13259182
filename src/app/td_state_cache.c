/*
 * td_state_cache.c - see td_state_cache.h.
 *
 * @locality the daemon's main thread.
 */
#include "td_state_cache.h"

#include <stdlib.h>
#include <string.h>

typedef struct slot {
    bool used;
    uint64_t hash;
    uint64_t stamp; /* last use: the older of a set is replaced */
    td_state st;
    td_kvs kv;
} slot;

struct td_state_cache {
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
    c->v = calloc(sets * 2, sizeof *c->v);
    if (!c->v) {
        free(c);
        return NULL;
    }
    c->mask = sets - 1;
    c->stats.entries = sets * 2;
    return c;
}

void td_state_cache_free(td_state_cache *c) {
    if (!c) return;
    for (size_t i = 0; i <= 2 * c->mask + 1; i++)
    {
        if (c->v[i].used) td_state_free(&c->v[i].st);
        td_kvs_free(&c->v[i].kv); /* unused slots may keep buffers */
    }
    free(c->v);
    free(c);
}

static slot *find(td_state_cache *c, const char *id, uint64_t h) {
    slot *s = &c->v[2 * (h & c->mask)];
    for (int k = 0; k < 2; k++)
        if (s[k].used && s[k].hash == h && strcmp(s[k].st.prospect_id, id) == 0) return &s[k];
    return NULL;
}

bool td_state_cache_take(td_state_cache *c, const char *prospect_id, td_state *st, td_kvs *kv) {
    if (!c) return false;
    uint64_t h = td_hash64(prospect_id, strlen(prospect_id), TD_HASH_SEED);
    slot *s = find(c, prospect_id, h);
    if (!s) {
        c->stats.misses++;
        return false;
    }
    *st = s->st;
    td_kvs_move(kv, &s->kv);
    s->used = false;
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
    uint64_t h = td_hash64(pid, strlen(pid), TD_HASH_SEED);
    slot *s = find(c, pid, h);
    if (!s) {
        slot *set = &c->v[2 * (h & c->mask)];
        s = !set[0].used ? &set[0] : !set[1].used ? &set[1]
            : set[0].stamp <= set[1].stamp        ? &set[0]
                                                  : &set[1];
    }
    if (s->used) {
        td_state_free(&s->st);
        s->used = false;
        c->stats.used--;
    }
    s->st = *st;
    /* the slot keeps its kv buffers only if it has none: swap, then the
     * caller's kv is emptied (its buffers, if any, are reused by the caller) */
    td_kvs tmp = s->kv;
    s->kv = *kv;
    *kv = tmp;
    td_kvs_clear(kv);
    s->used = true;
    s->hash = h;
    s->stamp = ++c->clock;
    c->stats.used++;
    td_state_init(st, pid);
}

void td_state_cache_drop(td_state_cache *c, const char *prospect_id) {
    if (!c) return;
    uint64_t h = td_hash64(prospect_id, strlen(prospect_id), TD_HASH_SEED);
    slot *s = find(c, prospect_id, h);
    if (!s) return;
    td_state_free(&s->st);
    s->used = false;
    c->stats.used--;
    c->stats.drops++;
}

void td_state_cache_stats_get(const td_state_cache *c, td_state_cache_stats *out) {
    if (!c) {
        memset(out, 0, sizeof *out);
        return;
    }
    *out = c->stats;
}
