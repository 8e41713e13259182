/*
 * td_explain_redis.c - the Redis state source of `touchd explain`
 * (td_explain_redis.h; docs/cli.md, "touchd explain").
 *
 * The state is read exactly as the daemon reads it (td_redis_load: one
 * HGETALL of touchd:p:{ID}, the flat form of docs/state.md, the CAS version
 * in "v"), so explain sees what the next event or timer of that prospect
 * would see. Read only: explain never writes to Redis.
 *
 * @locality main thread.
 */
#include "td_explain_redis.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "td_redis.h"

td_config *td_explain_redis_config(const char *path, const char *redis, char *err, size_t errcap) {
    td_config *cfg = td_config_load(path, err, errcap);
    if (!cfg) return NULL;
    if (redis && td_config_override(cfg, redis, NULL, NULL, err, errcap) != 0) {
        td_config_free(cfg);
        return NULL;
    }
    return cfg;
}

int td_explain_redis_load(const td_config *cfg, const char *id, td_state *st, char *origin,
                          size_t origincap, char *err, size_t errcap) {
    char e[512];
    td_redis *r = td_redis_new(&cfg->redis, e, sizeof e);
    if (!r) {
        snprintf(err, errcap, "redis configuration: %s", e);
        return TD_ERR;
    }
    char where[300];
    if (cfg->redis.unix_socket)
        snprintf(where, sizeof where, "unix:%s", cfg->redis.host);
    else
        snprintf(where, sizeof where, "%s:%d", cfg->redis.host, cfg->redis.port);
    if (!td_redis_connected(r)) {
        snprintf(err, errcap, "cannot reach redis at %s: %s", where, td_redis_last_error(r));
        td_redis_free(r);
        return TD_ERR;
    }
    td_state_init(st, id);
    int rc = td_redis_load(r, st, 1);
    if (rc != TD_OK) {
        snprintf(err, errcap, "cannot read the state from redis at %s: %s", where,
                 td_redis_last_error(r));
        td_state_free(st);
        td_redis_free(r);
        return TD_ERR;
    }
    char key[400];
    td_redis_key(r, id, key, sizeof key);
    td_redis_free(r);
    if (st->version == 0) { /* every stored state has a version >= 1 */
        snprintf(err, errcap, "no state for prospect '%s' in redis at %s (key %s is absent)", id,
                 where, key);
        td_state_free(st);
        return TD_ERR;
    }
    snprintf(origin, origincap, "redis %s key %s (version %lld)", where, key,
             (long long)st->version);
    return TD_OK;
}
