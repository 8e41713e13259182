/*
 * td_explain_redis.h - `touchd explain -c CONFIG --prospect ID`: the state
 * source that reads the live state from Redis with the daemon's config
 * (td_config + td_redis, read only: nothing is ever written).
 *
 * @locality main thread.
 */
#ifndef TD_EXPLAIN_REDIS_H
#define TD_EXPLAIN_REDIS_H

#include <stddef.h>

#include "td_config.h"
#include "td_state.h"

/*
 * Loads the daemon config `path` and applies `redis` (HOST:PORT, unix:/path;
 * NULL: none), as `touchd run -c` does.
 * @returns the config, or NULL with the message in err.
 */
td_config *td_explain_redis_config(const char *path, const char *redis, char *err, size_t errcap);

/*
 * Reads prospect `id`'s state from Redis (its hash under the config's key
 * prefix) into *st (initialised here; free with td_state_free on TD_OK).
 * origin receives "redis HOST:PORT key K (version V)" for the header.
 * @returns TD_OK, or TD_ERR with err set (Redis unreachable, no state for
 * this prospect, malformed hash).
 */
int td_explain_redis_load(const td_config *cfg, const char *id, td_state *st, char *origin,
                          size_t origincap, char *err, size_t errcap);

#endif
