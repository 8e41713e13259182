/*
 * td_state_cache.h - the daemon's cache of prospect states as it last stored
 * them, so a prospect seen again in a later batch is not read back from
 * Redis (HGETALL and parsing were a quarter of a batch).
 *
 * Safety does not depend on the cache being fresh: every write is a
 * compare-and-set on the version, so a cached state that another writer
 * (another instance after a rebalance, the timer path, a Redis restart) has
 * moved past conflicts, is dropped, and is reloaded. The cache is 8-way
 * set associative over td_hash64 of the prospect id (least recently given
 * entry of a set replaced), with a fixed number of entries: memory is
 * bounded (about entries x (sizeof(td_state) + the flat form, ~2 KB)). With
 * two ways, 10,000 prospects in 65,536 entries still missed on 3-4% of
 * lookups (sets of three or more ids thrashing); with eight, none do.
 *
 * Entries move in and out by pointer, never copied: a prospect taken for a
 * batch is out of the cache until the batch gives it back (it is in no other
 * batch meanwhile: the daemon runs one batch at a time). Each entry holds a
 * heap-allocated state (malloc(sizeof(td_state))) and its flat form
 * (td_kvs), the base of the next diff write.
 *
 * @locality the daemon's main thread.
 */
#ifndef TD_STATE_CACHE_H
#define TD_STATE_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "td_kvs.h"
#include "td_state.h"

typedef struct td_state_cache td_state_cache;

/* A cache of about `entries` states (rounded up to a power of two, at least
 * 8); 0 gives NULL, which every function accepts as "no cache". */
td_state_cache *td_state_cache_new(size_t entries);
/* Frees the cache and every state in it. */
void td_state_cache_free(td_state_cache *c);

/* `hash` (below) is td_hash64(prospect_id, strlen(prospect_id), TD_HASH_SEED):
 * the daemon measures each id once per batch.
 *
 * On a hit, the entry moves out: the cached state is returned (owned by the
 * caller, heap-allocated) and *kv (freed first) becomes its flat form. NULL
 * on a miss. */
td_state *td_state_cache_take(td_state_cache *c, const char *prospect_id, uint64_t hash,
                              td_kvs *kv);
/* Moves st (heap-allocated, owned by the cache from now on) and kv in,
 * replacing an entry of the same prospect, else the least recently given
 * entry of its set; *kv is left empty (holding the replaced entry's buffers
 * for reuse). Both must describe what Redis holds. @returns a state object
 * the caller now owns, emptied (td_state_free) for reuse: the replaced
 * entry's, or st itself when c is NULL; NULL when nothing was replaced. */
td_state *td_state_cache_give(td_state_cache *c, td_state *st, uint64_t hash, td_kvs *kv);
/* Forgets a prospect (after a conflict). */
void td_state_cache_drop(td_state_cache *c, const char *prospect_id, uint64_t hash);

typedef struct td_state_cache_stats {
    uint64_t hits, misses, drops;
    size_t entries, used;
} td_state_cache_stats;
void td_state_cache_stats_get(const td_state_cache *c, td_state_cache_stats *out);

#endif
