/*
 * td_config.c - loading and checking the daemon configuration (td_config.h).
 *
 * libconfig parses; this file walks every setting it produced, so that an
 * unknown key is reported rather than silently ignored (a typo in a timeout
 * must not leave the default in force unnoticed). Each known key has a
 * checker that converts and range-checks it and reports
 * "FILE:LINE: KEY: expected ..., got ..." on failure. The first error wins:
 * a config is small and is fixed one line at a time.
 *
 * librdkafka property names contain dots, which libconfig names cannot: in
 * kafka.consumer / kafka.producer an underscore stands for a dot
 * (fetch_wait_max_ms = 10 sets fetch.wait.max.ms).
 */
#include "td_config.h"

#include "td_time.h"

#include <errno.h>
#include <libconfig.h>
#include <librdkafka/rdkafka.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- helpers */

static char *td_cfg_strdup(const char *s) {
    if (!s) s = "";
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (!p) {
        fprintf(stderr, "touchd: out of memory\n");
        abort();
    }
    memcpy(p, s, n);
    return p;
}

static void td_cfg_setstr(char **dst, const char *s) {
    free(*dst);
    *dst = td_cfg_strdup(s);
}

/* The context of one load: where errors go. */
typedef struct td_cfg_ctx {
    const char *path;
    char *err;
    size_t errcap;
    bool failed;
} td_cfg_ctx;

static void td_cfg_fail(td_cfg_ctx *x, const config_setting_t *s, const char *key, const char *fmt,
                        ...) __attribute__((format(printf, 4, 5)));
static void td_cfg_fail(td_cfg_ctx *x, const config_setting_t *s, const char *key, const char *fmt,
                        ...) {
    if (x->failed) return;
    x->failed = true;
    const char *file = s ? config_setting_source_file(s) : NULL;
    int line = s ? (int)config_setting_source_line(s) : 0;
    int n;
    if (line > 0)
        n = snprintf(x->err, x->errcap, "%s:%d: %s: ", file ? file : x->path, line, key);
    else
        n = snprintf(x->err, x->errcap, "%s: %s: ", x->path, key);
    if (n < 0 || (size_t)n >= x->errcap) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->err + n, x->errcap - (size_t)n, fmt, ap);
    va_end(ap);
}

/* What a setting holds, for "got ...": "lots" (quoted string), 12, true, a group. */
static const char *td_cfg_describe(const config_setting_t *s, char *buf, size_t cap) {
    switch (config_setting_type(s)) {
    case CONFIG_TYPE_STRING: {
        const char *v = config_setting_get_string(s);
        snprintf(buf, cap, "\"%.80s%s\"", v, strlen(v) > 80 ? "..." : "");
        break;
    }
    case CONFIG_TYPE_INT:
        snprintf(buf, cap, "%d", config_setting_get_int(s));
        break;
    case CONFIG_TYPE_INT64:
        snprintf(buf, cap, "%lld", config_setting_get_int64(s));
        break;
    case CONFIG_TYPE_FLOAT:
        snprintf(buf, cap, "%g", config_setting_get_float(s));
        break;
    case CONFIG_TYPE_BOOL:
        snprintf(buf, cap, "%s", config_setting_get_bool(s) ? "true" : "false");
        break;
    case CONFIG_TYPE_GROUP:
        snprintf(buf, cap, "a group { ... }");
        break;
    case CONFIG_TYPE_ARRAY:
        snprintf(buf, cap, "an array [ ... ]");
        break;
    case CONFIG_TYPE_LIST:
        snprintf(buf, cap, "a list ( ... )");
        break;
    default:
        snprintf(buf, cap, "nothing");
    }
    return buf;
}

/* Resolves "env:NAME" values; other values are returned as they are. */
static const char *td_cfg_resolve_env(td_cfg_ctx *x, const config_setting_t *s, const char *key,
                                      const char *v) {
    if (strncmp(v, "env:", 4) != 0) return v;
    const char *name = v + 4;
    if (!*name) {
        td_cfg_fail(x, s, key, "expected env:NAME with a variable name, got \"env:\"");
        return NULL;
    }
    const char *e = getenv(name);
    if (!e) {
        td_cfg_fail(x, s, key, "environment variable %s is not set", name);
        return NULL;
    }
    return e;
}

static bool td_cfg_get_str(td_cfg_ctx *x, const config_setting_t *s, const char *key, char **dst,
                           bool allow_empty, bool allow_env) {
    char got[128];
    if (config_setting_type(s) != CONFIG_TYPE_STRING) {
        td_cfg_fail(x, s, key, "expected a string, got %s", td_cfg_describe(s, got, sizeof got));
        return false;
    }
    const char *v = config_setting_get_string(s);
    if (allow_env) {
        v = td_cfg_resolve_env(x, s, key, v);
        if (!v) return false;
    }
    if (!allow_empty && !*v) {
        td_cfg_fail(x, s, key, "expected a non-empty string, got \"\"");
        return false;
    }
    td_cfg_setstr(dst, v);
    return true;
}

static bool td_cfg_get_int(td_cfg_ctx *x, const config_setting_t *s, const char *key, int lo,
                           int hi, int *dst) {
    char got[128];
    long long v;
    int t = config_setting_type(s);
    if (t == CONFIG_TYPE_INT)
        v = config_setting_get_int(s);
    else if (t == CONFIG_TYPE_INT64)
        v = config_setting_get_int64(s);
    else {
        td_cfg_fail(x, s, key, "expected an integer from %d to %d, got %s", lo, hi,
                    td_cfg_describe(s, got, sizeof got));
        return false;
    }
    if (v < lo || v > hi) {
        td_cfg_fail(x, s, key, "expected an integer from %d to %d, got %lld", lo, hi, v);
        return false;
    }
    *dst = (int)v;
    return true;
}

static bool td_cfg_get_bool(td_cfg_ctx *x, const config_setting_t *s, const char *key, bool *dst) {
    char got[128];
    if (config_setting_type(s) != CONFIG_TYPE_BOOL) {
        td_cfg_fail(x, s, key, "expected true or false, got %s",
                    td_cfg_describe(s, got, sizeof got));
        return false;
    }
    *dst = config_setting_get_bool(s) != 0;
    return true;
}

static bool td_cfg_topic_ok(const char *t) {
    size_t n = strlen(t);
    if (n == 0 || n > 249 || strcmp(t, ".") == 0 || strcmp(t, "..") == 0) return false;
    for (const char *p = t; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '.' || *p == '_' || *p == '-'))
            return false;
    return true;
}

static bool td_cfg_get_topic(td_cfg_ctx *x, const config_setting_t *s, const char *key,
                             char **dst) {
    if (!td_cfg_get_str(x, s, key, dst, false, false)) return false;
    if (!td_cfg_topic_ok(*dst)) {
        td_cfg_fail(x, s, key,
                    "expected a Kafka topic name (1 to 249 of a-z A-Z 0-9 . _ -), got \"%.80s\"",
                    *dst);
        return false;
    }
    return true;
}

/* ------------------------------------------------------------ the groups */

/* Properties touchd sets itself: overriding them would break the delivery
 * guarantees (docs/operations.md), so they are rejected with the reason. */
typedef struct td_cfg_owned {
    const char *name;
    const char *why;
} td_cfg_owned;

static const td_cfg_owned td_cfg_consumer_owned[] = {
    {"bootstrap.servers", "set kafka.brokers instead"},
    {"metadata.broker.list", "set kafka.brokers instead"},
    {"group.id", "set kafka.group_id instead"},
    {"enable.auto.offset.store", "touchd stores offsets itself, only after state and "
                                 "recommendations are durable"},
    {"partition.assignment.strategy", "touchd uses cooperative-sticky (incremental rebalances)"},
    {NULL, NULL}};
static const td_cfg_owned td_cfg_producer_owned[] = {
    {"bootstrap.servers", "set kafka.brokers instead"},
    {"metadata.broker.list", "set kafka.brokers instead"},
    {"enable.idempotence", "touchd's producer is always idempotent"},
    {"acks", "touchd's producer always uses acks=all"},
    {"request.required.acks", "touchd's producer always uses acks=all"},
    {"transactional.id", "touchd does not use transactions"},
    {NULL, NULL}};

static bool td_cfg_passthrough(td_cfg_ctx *x, const config_setting_t *g, const char *gkey,
                               const td_cfg_owned *owned, td_kv **out, size_t *nout) {
    char got[128], key[256], prop[200];
    if (config_setting_type(g) != CONFIG_TYPE_GROUP) {
        td_cfg_fail(x, g, gkey,
                    "expected a group of librdkafka properties { name = value; }, got %s",
                    td_cfg_describe(g, got, sizeof got));
        return false;
    }
    int n = config_setting_length(g);
    rd_kafka_conf_t *probe = rd_kafka_conf_new();
    for (int i = 0; i < n; i++) {
        const config_setting_t *s = config_setting_get_elem(g, (unsigned)i);
        const char *name = config_setting_name(s);
        snprintf(key, sizeof key, "%s.%s", gkey, name);
        snprintf(prop, sizeof prop, "%s", name);
        for (char *p = prop; *p; p++)
            if (*p == '_') *p = '.';
        for (const td_cfg_owned *o = owned; o->name; o++)
            if (strcmp(o->name, prop) == 0) {
                td_cfg_fail(x, s, key, "librdkafka property %s cannot be set here: %s", prop,
                            o->why);
                goto fail;
            }
        char val[1024];
        switch (config_setting_type(s)) {
        case CONFIG_TYPE_STRING: {
            const char *v = td_cfg_resolve_env(x, s, key, config_setting_get_string(s));
            if (!v) goto fail;
            snprintf(val, sizeof val, "%s", v);
            break;
        }
        case CONFIG_TYPE_INT:
        case CONFIG_TYPE_INT64:
            snprintf(val, sizeof val, "%lld", config_setting_get_int64(s));
            break;
        case CONFIG_TYPE_BOOL:
            snprintf(val, sizeof val, "%s", config_setting_get_bool(s) ? "true" : "false");
            break;
        case CONFIG_TYPE_FLOAT:
            snprintf(val, sizeof val, "%g", config_setting_get_float(s));
            break;
        default:
            td_cfg_fail(x, s, key, "expected a string, integer or boolean, got %s",
                        td_cfg_describe(s, got, sizeof got));
            goto fail;
        }
        char errstr[256];
        if (rd_kafka_conf_set(probe, prop, val, errstr, sizeof errstr) != RD_KAFKA_CONF_OK) {
            /* Never echo the value: it may be a secret (sasl.password). */
            td_cfg_fail(x, s, key, "librdkafka rejects %s: %s", prop, errstr);
            goto fail;
        }
        *out = realloc(*out, (*nout + 1) * sizeof **out);
        if (!*out) abort();
        (*out)[*nout].key = td_cfg_strdup(prop);
        (*out)[*nout].val = td_cfg_strdup(val);
        (*out)[*nout].line = (int)config_setting_source_line(s);
        (*nout)++;
    }
    rd_kafka_conf_destroy(probe);
    return true;
fail:
    rd_kafka_conf_destroy(probe);
    return false;
}

static bool td_cfg_unknown(td_cfg_ctx *x, const config_setting_t *s, const char *key,
                           const char *allowed) {
    td_cfg_fail(x, s, key, "unknown key (allowed here: %s)", allowed);
    return false;
}

static bool td_cfg_kafka(td_cfg_ctx *x, const config_setting_t *g, td_config *c) {
    static const char *allowed =
        "brokers, group_id, input_topics, output_topic, "
        "dead_letter_topic, gift_register_topic, shadow_topic, bootstrap_file, "
        "embedded_partitions, consumer, producer";
    char key[128], got[128];
    int n = config_setting_length(g);
    for (int i = 0; i < n && !x->failed; i++) {
        const config_setting_t *s = config_setting_get_elem(g, (unsigned)i);
        const char *name = config_setting_name(s);
        snprintf(key, sizeof key, "kafka.%s", name);
        if (strcmp(name, "brokers") == 0) {
            td_cfg_get_str(x, s, key, &c->kafka.brokers, false, false);
        } else if (strcmp(name, "group_id") == 0) {
            td_cfg_get_str(x, s, key, &c->kafka.group_id, false, false);
        } else if (strcmp(name, "input_topics") == 0) {
            int t = config_setting_type(s);
            int m = config_setting_length(s);
            if ((t != CONFIG_TYPE_ARRAY && t != CONFIG_TYPE_LIST) || m < 1) {
                td_cfg_fail(x, s, key,
                            "expected a non-empty list of topic names [\"a\", \"b\"], got %s",
                            t == CONFIG_TYPE_ARRAY || t == CONFIG_TYPE_LIST
                                ? "an empty list"
                                : td_cfg_describe(s, got, sizeof got));
                break;
            }
            for (size_t k = 0; k < c->kafka.n_input_topics; k++)
                free(c->kafka.input_topics[k]);
            free(c->kafka.input_topics);
            c->kafka.input_topics = calloc((size_t)m, sizeof(char *));
            c->kafka.n_input_topics = 0;
            for (int k = 0; k < m; k++) {
                const config_setting_t *e = config_setting_get_elem(s, (unsigned)k);
                char ekey[160];
                snprintf(ekey, sizeof ekey, "%s[%d]", key, k);
                char *topic = NULL;
                if (!td_cfg_get_topic(x, e, ekey, &topic)) {
                    free(topic);
                    break;
                }
                c->kafka.input_topics[c->kafka.n_input_topics++] = topic;
            }
        } else if (strcmp(name, "output_topic") == 0) {
            td_cfg_get_topic(x, s, key, &c->kafka.output_topic);
        } else if (strcmp(name, "dead_letter_topic") == 0) {
            td_cfg_get_topic(x, s, key, &c->kafka.dead_letter_topic);
        } else if (strcmp(name, "gift_register_topic") == 0) {
            /* "" = off; otherwise a topic name (docs/gifts.md) */
            if (td_cfg_get_str(x, s, key, &c->kafka.gift_register_topic, true, false) &&
                *c->kafka.gift_register_topic && !td_cfg_topic_ok(c->kafka.gift_register_topic))
                td_cfg_fail(
                    x, s, key,
                    "expected \"\" (off) or a Kafka topic name (1 to 249 of a-z A-Z 0-9 . _ -), "
                    "got \"%.80s\"",
                    c->kafka.gift_register_topic);
        } else if (strcmp(name, "shadow_topic") == 0) {
            td_cfg_get_topic(x, s, key, &c->kafka.shadow_topic);
            c->kafka.shadow_topic_default = false;
        } else if (strcmp(name, "bootstrap_file") == 0) {
            td_cfg_get_str(x, s, key, &c->kafka.bootstrap_file, true, false);
        } else if (strcmp(name, "embedded_partitions") == 0) {
            td_cfg_get_int(x, s, key, 1, 256, &c->kafka.embedded_partitions);
        } else if (strcmp(name, "consumer") == 0) {
            td_cfg_passthrough(x, s, key, td_cfg_consumer_owned, &c->kafka.consumer,
                               &c->kafka.n_consumer);
        } else if (strcmp(name, "producer") == 0) {
            td_cfg_passthrough(x, s, key, td_cfg_producer_owned, &c->kafka.producer,
                               &c->kafka.n_producer);
        } else {
            td_cfg_unknown(x, s, key, allowed);
        }
    }
    return !x->failed;
}

static bool td_cfg_redis(td_cfg_ctx *x, const config_setting_t *g, td_config *c) {
    static const char *allowed = "host, port, unix_socket, password, username, db, "
                                 "connect_timeout_ms, command_timeout_ms, backoff_min_ms, "
                                 "backoff_max_ms, key_prefix, verify_writes";
    char key[128];
    char *unix_socket = NULL;
    const config_setting_t *unix_s = NULL;
    int n = config_setting_length(g);
    for (int i = 0; i < n && !x->failed; i++) {
        const config_setting_t *s = config_setting_get_elem(g, (unsigned)i);
        const char *name = config_setting_name(s);
        snprintf(key, sizeof key, "redis.%s", name);
        if (strcmp(name, "host") == 0) {
            td_cfg_get_str(x, s, key, &c->redis_host, false, false);
        } else if (strcmp(name, "port") == 0) {
            td_cfg_get_int(x, s, key, 1, 65535, &c->redis.port);
        } else if (strcmp(name, "unix_socket") == 0) {
            td_cfg_get_str(x, s, key, &unix_socket, true, false);
            unix_s = s;
        } else if (strcmp(name, "password") == 0) {
            td_cfg_get_str(x, s, key, &c->redis_password, true, true);
        } else if (strcmp(name, "username") == 0) {
            td_cfg_get_str(x, s, key, &c->redis_username, true, true);
        } else if (strcmp(name, "db") == 0) {
            td_cfg_get_int(x, s, key, 0, 65535, &c->redis.db);
        } else if (strcmp(name, "connect_timeout_ms") == 0) {
            td_cfg_get_int(x, s, key, 1, 600000, &c->redis.connect_timeout_ms);
        } else if (strcmp(name, "command_timeout_ms") == 0) {
            td_cfg_get_int(x, s, key, 1, 600000, &c->redis.command_timeout_ms);
        } else if (strcmp(name, "backoff_min_ms") == 0) {
            td_cfg_get_int(x, s, key, 1, 600000, &c->redis.backoff_min_ms);
        } else if (strcmp(name, "backoff_max_ms") == 0) {
            td_cfg_get_int(x, s, key, 1, 600000, &c->redis.backoff_max_ms);
        } else if (strcmp(name, "verify_writes") == 0) {
            td_cfg_get_bool(x, s, key, &c->redis.verify_writes);
        } else if (strcmp(name, "key_prefix") == 0) {
            if (td_cfg_get_str(x, s, key, &c->redis_key_prefix, false, false) &&
                strpbrk(c->redis_key_prefix, " {}\t\r\n"))
                td_cfg_fail(x, s, key, "expected a prefix without spaces or braces, got \"%.80s\"",
                            c->redis_key_prefix);
        } else {
            td_cfg_unknown(x, s, key, allowed);
        }
    }
    if (!x->failed && unix_socket && *unix_socket) {
        if (unix_socket[0] != '/') {
            td_cfg_fail(x, unix_s, "redis.unix_socket", "expected an absolute path, got \"%.80s\"",
                        unix_socket);
        } else {
            td_cfg_setstr(&c->redis_host, unix_socket);
            c->redis.unix_socket = true;
        }
    }
    free(unix_socket);
    if (!x->failed && c->redis.backoff_min_ms > c->redis.backoff_max_ms)
        td_cfg_fail(x, g, "redis.backoff_min_ms",
                    "expected at most redis.backoff_max_ms (%d), got %d", c->redis.backoff_max_ms,
                    c->redis.backoff_min_ms);
    return !x->failed;
}

static bool td_cfg_rules(td_cfg_ctx *x, const config_setting_t *g, td_config *c) {
    char key[128];
    int n = config_setting_length(g);
    for (int i = 0; i < n && !x->failed; i++) {
        const config_setting_t *s = config_setting_get_elem(g, (unsigned)i);
        const char *name = config_setting_name(s);
        snprintf(key, sizeof key, "rules.%s", name);
        if (strcmp(name, "dir") == 0)
            td_cfg_get_str(x, s, key, &c->rules.dir, false, false);
        else if (strcmp(name, "reload_poll_ms") == 0)
            td_cfg_get_int(x, s, key, 0, 3600000, &c->rules.reload_poll_ms);
        else if (strcmp(name, "shadow_dir") == 0)
            td_cfg_get_str(x, s, key, &c->rules.shadow_dir, true, false);
        else if (strcmp(name, "shadow_report") == 0)
            td_cfg_get_str(x, s, key, &c->rules.shadow_report, true, false);
        else if (strcmp(name, "shadow_report_interval_ms") == 0)
            td_cfg_get_int(x, s, key, 100, 3600000, &c->rules.shadow_report_interval_ms);
        else
            td_cfg_unknown(x, s, key,
                           "dir, reload_poll_ms, shadow_dir, shadow_report, "
                           "shadow_report_interval_ms");
    }
    return !x->failed;
}

static bool td_cfg_engine(td_cfg_ctx *x, const config_setting_t *g, td_config *c) {
    char key[128];
    int n = config_setting_length(g);
    for (int i = 0; i < n && !x->failed; i++) {
        const config_setting_t *s = config_setting_get_elem(g, (unsigned)i);
        const char *name = config_setting_name(s);
        snprintf(key, sizeof key, "engine.%s", name);
        if (strcmp(name, "batch_max_events") == 0)
            td_cfg_get_int(x, s, key, 1, 100000, &c->engine.batch_max_events);
        else if (strcmp(name, "batch_max_ms") == 0)
            td_cfg_get_int(x, s, key, 1, 60000, &c->engine.batch_max_ms);
        else if (strcmp(name, "state_cache") == 0)
            td_cfg_get_int(x, s, key, 0, 10000000, &c->engine.state_cache);
        else if (strcmp(name, "pipeline") == 0)
            td_cfg_get_bool(x, s, key, &c->engine.pipeline);
        else if (strcmp(name, "store_connections") == 0)
            td_cfg_get_int(x, s, key, 1, 2, &c->engine.store_connections);
        else
            td_cfg_unknown(x, s, key,
                           "batch_max_events, batch_max_ms, state_cache, pipeline, "
                           "store_connections");
    }
    return !x->failed;
}

static bool td_cfg_timers(td_cfg_ctx *x, const config_setting_t *g, td_config *c) {
    char key[128];
    int n = config_setting_length(g);
    td_timers_conf *t = &c->timers;
    for (int i = 0; i < n && !x->failed; i++) {
        const config_setting_t *s = config_setting_get_elem(g, (unsigned)i);
        const char *name = config_setting_name(s);
        snprintf(key, sizeof key, "timers.%s", name);
        if (strcmp(name, "shards") == 0) {
            td_cfg_get_int(x, s, key, 1, 65536, &t->shards);
        } else if (strcmp(name, "poll_ms") == 0) {
            td_cfg_get_int(x, s, key, 1, 60000, &t->poll_ms);
        } else if (strcmp(name, "sweep_ms") == 0) {
            td_cfg_get_int(x, s, key, 1, 600000, &t->sweep_ms);
        } else if (strcmp(name, "claim_batch") == 0) {
            td_cfg_get_int(x, s, key, 1, 2000, &t->claim_batch);
        } else if (strcmp(name, "lease_ms") == 0) {
            td_cfg_get_int(x, s, key, 1000, 3600000, &t->lease_ms);
        } else if (strcmp(name, "overdue_policy") == 0) {
            char *v = NULL;
            if (td_cfg_get_str(x, s, key, &v, false, false)) {
                if (strcmp(v, "fire_late") == 0)
                    t->overdue_policy = TD_OVERDUE_FIRE_LATE;
                else if (strcmp(v, "drop") == 0 || strcmp(v, "drop_older_than") == 0)
                    t->overdue_policy = TD_OVERDUE_DROP;
                else
                    td_cfg_fail(x, s, key, "expected \"fire_late\" or \"drop\", got \"%.80s\"", v);
            }
            free(v);
        } else if (strcmp(name, "drop_older_than") == 0) {
            char *v = NULL;
            if (td_cfg_get_str(x, s, key, &v, false, false)) {
                td_ms d;
                if (td_duration_parse(v, strlen(v), &d) != TD_OK || d <= 0)
                    td_cfg_fail(x, s, key,
                                "expected a positive duration such as \"10m\", \"6h\", \"2d\", "
                                "got \"%.80s\"",
                                v);
                else
                    t->drop_older_than = d;
            }
            free(v);
        } else {
            td_cfg_unknown(x, s, key,
                           "shards, poll_ms, sweep_ms, claim_batch, lease_ms, overdue_policy, "
                           "drop_older_than");
        }
    }
    return !x->failed;
}

static bool td_cfg_log(td_cfg_ctx *x, const config_setting_t *g, td_config *c) {
    char key[128];
    int n = config_setting_length(g);
    for (int i = 0; i < n && !x->failed; i++) {
        const config_setting_t *s = config_setting_get_elem(g, (unsigned)i);
        const char *name = config_setting_name(s);
        snprintf(key, sizeof key, "log.%s", name);
        if (strcmp(name, "level") == 0) {
            char *v = NULL;
            if (td_cfg_get_str(x, s, key, &v, false, false)) {
                int l = td_log_level_parse(v);
                if (l < 0)
                    td_cfg_fail(x, s, key,
                                "expected one of debug, info, warn, error, got \"%.80s\"", v);
                else
                    c->log.level = (td_log_level)l;
            }
            free(v);
        } else if (strcmp(name, "format") == 0) {
            if (td_cfg_get_str(x, s, key, &c->log.format, false, false) &&
                strcmp(c->log.format, "logfmt") != 0)
                td_cfg_fail(x, s, key, "expected \"logfmt\" (the only format), got \"%.80s\"",
                            c->log.format);
        } else {
            td_cfg_unknown(x, s, key, "level, format");
        }
    }
    return !x->failed;
}

static bool td_cfg_gifts(td_cfg_ctx *x, const config_setting_t *g, td_config *c) {
    char key[128];
    int n = config_setting_length(g);
    for (int i = 0; i < n && !x->failed; i++) {
        const config_setting_t *s = config_setting_get_elem(g, (unsigned)i);
        const char *name = config_setting_name(s);
        snprintf(key, sizeof key, "gifts.%s", name);
        if (strcmp(name, "retention_days") == 0)
            td_cfg_get_int(x, s, key, 1, 36500, &c->gifts.retention_days);
        else
            td_cfg_unknown(x, s, key, "retention_days");
    }
    return !x->failed;
}

/* Cross-key checks, after every key is read. */
static void td_cfg_finish(td_cfg_ctx *x, td_config *c) {
    c->kafka.embedded = strcmp(c->kafka.brokers, "embedded") == 0;
    for (size_t i = 0; i < c->kafka.n_input_topics && !x->failed; i++) {
        if (strcmp(c->kafka.input_topics[i], c->kafka.output_topic) == 0)
            td_cfg_fail(x, NULL, "kafka.output_topic",
                        "must differ from every input topic (\"%s\" is both)",
                        c->kafka.output_topic);
        else if (strcmp(c->kafka.input_topics[i], c->kafka.dead_letter_topic) == 0)
            td_cfg_fail(x, NULL, "kafka.dead_letter_topic",
                        "must differ from every input topic (\"%s\" is both)",
                        c->kafka.dead_letter_topic);
    }
    /* the shadow topic: "<output_topic>.shadow" unless set */
    if (!x->failed && (!*c->kafka.shadow_topic || c->kafka.shadow_topic_default)) {
        size_t n = strlen(c->kafka.output_topic) + sizeof ".shadow";
        char *t = malloc(n);
        if (!t) abort();
        snprintf(t, n, "%s.shadow", c->kafka.output_topic);
        free(c->kafka.shadow_topic);
        c->kafka.shadow_topic = t;
        c->kafka.shadow_topic_default = true;
    }
    for (size_t i = 0; i < c->kafka.n_input_topics && !x->failed; i++)
        if (strcmp(c->kafka.input_topics[i], c->kafka.shadow_topic) == 0)
            td_cfg_fail(x, NULL, "kafka.shadow_topic",
                        "must differ from every input topic (\"%s\" is both)",
                        c->kafka.shadow_topic);
    if (!x->failed && (strcmp(c->kafka.shadow_topic, c->kafka.output_topic) == 0 ||
                       strcmp(c->kafka.shadow_topic, c->kafka.dead_letter_topic) == 0))
        td_cfg_fail(x, NULL, "kafka.shadow_topic",
                    "must differ from the output and dead-letter topics (got \"%s\")",
                    c->kafka.shadow_topic);
    if (!x->failed && *c->rules.shadow_dir && strcmp(c->rules.shadow_dir, c->rules.dir) == 0)
        td_cfg_fail(x, NULL, "rules.shadow_dir", "must differ from rules.dir (got \"%s\")",
                    c->rules.shadow_dir);
    if (!x->failed && *c->kafka.gift_register_topic) {
        const char *gt = c->kafka.gift_register_topic;
        bool clash = strcmp(gt, c->kafka.output_topic) == 0 ||
                     strcmp(gt, c->kafka.dead_letter_topic) == 0 ||
                     strcmp(gt, c->kafka.shadow_topic) == 0;
        for (size_t i = 0; i < c->kafka.n_input_topics; i++)
            clash = clash || strcmp(gt, c->kafka.input_topics[i]) == 0;
        if (clash)
            td_cfg_fail(x, NULL, "kafka.gift_register_topic",
                        "must differ from the input, output, shadow and dead-letter topics "
                        "(got \"%s\")",
                        gt);
    }
    c->redis.host = c->redis_host;
    c->redis.password = c->redis_password && *c->redis_password ? c->redis_password : NULL;
    c->redis.username = c->redis_username && *c->redis_username ? c->redis_username : NULL;
    c->redis.key_prefix = c->redis_key_prefix;
    if (!x->failed) {
        td_timers_conf *t = &c->timers;
        if (t->overdue_policy == TD_OVERDUE_DROP && t->drop_older_than <= 0)
            td_cfg_fail(x, NULL, "timers.drop_older_than",
                        "is required with overdue_policy = \"drop\" (e.g. \"6h\")");
        else if (t->overdue_policy == TD_OVERDUE_FIRE_LATE && t->drop_older_than > 0)
            td_cfg_fail(
                x, NULL, "timers.drop_older_than",
                "only applies with overdue_policy = \"drop\" (the policy is \"fire_late\")");
        else if (t->sweep_ms < t->poll_ms)
            td_cfg_fail(x, NULL, "timers.sweep_ms", "must be >= timers.poll_ms (%d), got %d",
                        t->poll_ms, t->sweep_ms);
        else {
            char why[200];
            if (!td_timers_conf_check(t, why, sizeof why))
                td_cfg_fail(x, NULL, "timers", "%s", why);
        }
    }
}

/* ----------------------------------------------------------------- public */

td_config *td_config_default(void) {
    td_config *c = calloc(1, sizeof *c);
    if (!c) abort();
    c->path = td_cfg_strdup("");
    c->kafka.brokers = td_cfg_strdup("embedded");
    c->kafka.group_id = td_cfg_strdup("touchd");
    c->kafka.input_topics = calloc(1, sizeof(char *));
    c->kafka.input_topics[0] = td_cfg_strdup("touchd.events");
    c->kafka.n_input_topics = 1;
    c->kafka.output_topic = td_cfg_strdup("touchd.recommendations");
    c->kafka.dead_letter_topic = td_cfg_strdup("touchd.dead-letter");
    c->kafka.gift_register_topic = td_cfg_strdup("");
    c->kafka.shadow_topic = td_cfg_strdup("");
    c->kafka.bootstrap_file = td_cfg_strdup("");
    c->kafka.embedded_partitions = 4;
    td_redis_conf_default(&c->redis);
    c->redis.host = NULL;
    c->redis_host = td_cfg_strdup("127.0.0.1");
    c->redis.port = 6379;
    c->redis_password = td_cfg_strdup("");
    c->redis_username = td_cfg_strdup("");
    c->redis_key_prefix = td_cfg_strdup("touchd");
    c->rules.dir = td_cfg_strdup("rules");
    c->rules.reload_poll_ms = 2000;
    c->rules.shadow_dir = td_cfg_strdup("");
    c->rules.shadow_report = td_cfg_strdup("");
    c->rules.shadow_report_interval_ms = 10000;
    c->engine.batch_max_events = 1000;
    c->engine.state_cache = 65536;
    c->engine.pipeline = true;
    c->engine.store_connections = 2;
    c->engine.batch_max_ms = 20;
    td_timers_conf_default(&c->timers);
    c->gifts.retention_days = 400; /* TD_GIFTS_RETENTION_DAYS_DEFAULT */
    c->log.level = TD_LOG_INFO;
    c->log.format = td_cfg_strdup("logfmt");
    td_cfg_ctx x = {.path = "", .err = NULL, .errcap = 0};
    td_cfg_finish(&x, c);
    return c;
}

td_config *td_config_load(const char *path, char *err, size_t errcap) {
    td_cfg_ctx x = {.path = path, .err = err, .errcap = errcap, .failed = false};
    if (errcap) err[0] = '\0';
    config_t cf;
    config_init(&cf);
    /* @include "x.conf" is relative to the including file's directory. */
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash) {
        *slash = '\0';
        config_set_include_dir(&cf, dir);
    }
    if (config_read_file(&cf, path) != CONFIG_TRUE) {
        if (config_error_type(&cf) == CONFIG_ERR_FILE_IO)
            snprintf(err, errcap, "%s: cannot read: %s", path, strerror(errno ? errno : ENOENT));
        else
            snprintf(err, errcap, "%s:%d: syntax error: %s",
                     config_error_file(&cf) ? config_error_file(&cf) : path, config_error_line(&cf),
                     config_error_text(&cf));
        config_destroy(&cf);
        return NULL;
    }
    td_config *c = td_config_default();
    td_cfg_setstr(&c->path, path);
    const config_setting_t *root = config_root_setting(&cf);
    int n = config_setting_length(root);
    char got[128];
    for (int i = 0; i < n && !x.failed; i++) {
        const config_setting_t *g = config_setting_get_elem(root, (unsigned)i);
        const char *name = config_setting_name(g);
        bool known = strcmp(name, "kafka") == 0 || strcmp(name, "redis") == 0 ||
                     strcmp(name, "rules") == 0 || strcmp(name, "engine") == 0 ||
                     strcmp(name, "timers") == 0 || strcmp(name, "log") == 0 ||
                     strcmp(name, "gifts") == 0;
        if (!known) {
            td_cfg_unknown(&x, g, name, "kafka, redis, rules, engine, timers, gifts, log");
            break;
        }
        if (config_setting_type(g) != CONFIG_TYPE_GROUP) {
            td_cfg_fail(&x, g, name, "expected a group %s = { ... }, got %s", name,
                        td_cfg_describe(g, got, sizeof got));
            break;
        }
        if (strcmp(name, "kafka") == 0)
            td_cfg_kafka(&x, g, c);
        else if (strcmp(name, "redis") == 0)
            td_cfg_redis(&x, g, c);
        else if (strcmp(name, "rules") == 0)
            td_cfg_rules(&x, g, c);
        else if (strcmp(name, "engine") == 0)
            td_cfg_engine(&x, g, c);
        else if (strcmp(name, "timers") == 0)
            td_cfg_timers(&x, g, c);
        else if (strcmp(name, "gifts") == 0)
            td_cfg_gifts(&x, g, c);
        else
            td_cfg_log(&x, g, c);
    }
    if (!x.failed) td_cfg_finish(&x, c);
    config_destroy(&cf);
    if (x.failed) {
        td_config_free(c);
        return NULL;
    }
    return c;
}

int td_config_override(td_config *c, const char *redis, const char *rules_dir,
                       const char *log_level, char *err, size_t errcap) {
    if (redis) {
        if (strncmp(redis, "unix:", 5) == 0) {
            if (redis[5] != '/') {
                snprintf(err, errcap, "--redis: expected unix:/absolute/path, got \"%s\"", redis);
                return -1;
            }
            td_cfg_setstr(&c->redis_host, redis + 5);
            c->redis.unix_socket = true;
        } else {
            char host[256];
            const char *colon;
            const char *h = redis;
            size_t hl;
            if (redis[0] == '[') { /* [::1]:6380 */
                const char *rb = strchr(redis, ']');
                if (!rb) {
                    snprintf(err, errcap, "--redis: expected HOST:PORT, got \"%s\"", redis);
                    return -1;
                }
                h = redis + 1;
                hl = (size_t)(rb - h);
                colon = rb[1] == ':' ? rb + 1 : NULL;
                if (rb[1] && !colon) {
                    snprintf(err, errcap, "--redis: expected HOST:PORT, got \"%s\"", redis);
                    return -1;
                }
            } else {
                colon = strrchr(redis, ':');
                hl = colon ? (size_t)(colon - redis) : strlen(redis);
            }
            if (hl == 0 || hl >= sizeof host) {
                snprintf(err, errcap, "--redis: expected HOST:PORT, got \"%s\"", redis);
                return -1;
            }
            memcpy(host, h, hl);
            host[hl] = '\0';
            if (colon) {
                char *end;
                errno = 0;
                long p = strtol(colon + 1, &end, 10);
                if (errno || *end || end == colon + 1 || p < 1 || p > 65535) {
                    snprintf(err, errcap,
                             "--redis: expected a port from 1 to 65535 after ':', got \"%s\"",
                             colon + 1);
                    return -1;
                }
                c->redis.port = (int)p;
            }
            td_cfg_setstr(&c->redis_host, host);
            c->redis.unix_socket = false;
        }
        c->redis.host = c->redis_host;
    }
    if (rules_dir) {
        if (!*rules_dir) {
            snprintf(err, errcap, "--rules: expected a directory, got \"\"");
            return -1;
        }
        td_cfg_setstr(&c->rules.dir, rules_dir);
    }
    if (log_level) {
        int l = td_log_level_parse(log_level);
        if (l < 0) {
            snprintf(err, errcap,
                     "--log-level: expected one of debug, info, warn, error, got \"%s\"",
                     log_level);
            return -1;
        }
        c->log.level = (td_log_level)l;
    }
    return 0;
}

static void td_kv_free(td_kv *v, size_t n) {
    for (size_t i = 0; i < n; i++) {
        /* Passthrough values may be secrets: wipe before freeing. */
        if (v[i].val) {
            volatile char *p = v[i].val;
            while (*p)
                *p++ = 0;
        }
        free(v[i].key);
        free(v[i].val);
    }
    free(v);
}

void td_config_free(td_config *c) {
    if (!c) return;
    free(c->path);
    free(c->kafka.brokers);
    free(c->kafka.group_id);
    for (size_t i = 0; i < c->kafka.n_input_topics; i++)
        free(c->kafka.input_topics[i]);
    free(c->kafka.input_topics);
    free(c->kafka.output_topic);
    free(c->kafka.dead_letter_topic);
    free(c->kafka.gift_register_topic);
    free(c->kafka.shadow_topic);
    free(c->kafka.bootstrap_file);
    td_kv_free(c->kafka.consumer, c->kafka.n_consumer);
    td_kv_free(c->kafka.producer, c->kafka.n_producer);
    free(c->redis_host);
    if (c->redis_password) {
        volatile char *p = c->redis_password;
        while (*p)
            *p++ = 0;
    }
    free(c->redis_password);
    free(c->redis_username);
    free(c->redis_key_prefix);
    free(c->rules.dir);
    free(c->rules.shadow_dir);
    free(c->rules.shadow_report);
    free(c->log.format);
    free(c);
}
