/*
 * td_config.c - loading and checking the daemon configuration (td_config.h).
 *
 * libconfig parses; this file walks every setting it produced, so that an
 * unknown key is reported rather than silently ignored (a typo in a timeout
 * must not leave the default in force unnoticed). Every key is one row of
 * cf_keys (below): its type, default, bounds or names, where it goes in
 * td_config. Reading, the defaults, freeing, the "allowed here" list of an
 * unknown key and the "FILE:LINE: KEY: expected ..., got ..." of a bad value
 * are all made from that row; cross-key checks are in cf_finish. The
 * first error wins: a config is small and is fixed one line at a time.
 * File-local names start with cf_.
 *
 * librdkafka property names contain dots, which libconfig names cannot: in
 * kafka.consumer / kafka.producer an underscore stands for a dot
 * (fetch_wait_max_ms = 10 sets fetch.wait.max.ms).
 */
#include "td_config.h"

#include "td_gifts.h"
#include "td_http.h"
#include "td_time.h"

#include <errno.h>
#include <libconfig.h>
#include <librdkafka/rdkafka.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---------------------------------------------------------------- helpers */

static char *cf_strdup(const char *s) {
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

static void cf_setstr(char **dst, const char *s) {
    free(*dst);
    *dst = cf_strdup(s);
}

/* The context of one load: where errors go. */
typedef struct cf_ctx {
    const char *path;
    char *err;
    size_t errcap;
    bool failed;
} cf_ctx;

static void cf_fail(cf_ctx *x, const config_setting_t *s, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void cf_fail(cf_ctx *x, const config_setting_t *s, const char *key, const char *fmt, ...) {
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
static const char *cf_describe(const config_setting_t *s, char *buf, size_t cap) {
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
static const char *cf_resolve_env(cf_ctx *x, const config_setting_t *s, const char *key,
                                  const char *v) {
    if (strncmp(v, "env:", 4) != 0) return v;
    const char *name = v + 4;
    if (!*name) {
        cf_fail(x, s, key, "expected env:NAME with a variable name, got \"env:\"");
        return NULL;
    }
    const char *e = getenv(name);
    if (!e) {
        cf_fail(x, s, key, "environment variable %s is not set", name);
        return NULL;
    }
    return e;
}

static bool cf_get_str(cf_ctx *x, const config_setting_t *s, const char *key, char **dst,
                       bool allow_empty, bool allow_env) {
    char got[128];
    if (config_setting_type(s) != CONFIG_TYPE_STRING) {
        cf_fail(x, s, key, "expected a string, got %s", cf_describe(s, got, sizeof got));
        return false;
    }
    const char *v = config_setting_get_string(s);
    if (allow_env) {
        v = cf_resolve_env(x, s, key, v);
        if (!v) return false;
    }
    if (!allow_empty && !*v) {
        cf_fail(x, s, key, "expected a non-empty string, got \"\"");
        return false;
    }
    cf_setstr(dst, v);
    return true;
}

static bool cf_get_int(cf_ctx *x, const config_setting_t *s, const char *key, int lo, int hi,
                       int *dst) {
    char got[128];
    long long v;
    int t = config_setting_type(s);
    if (t == CONFIG_TYPE_INT)
        v = config_setting_get_int(s);
    else if (t == CONFIG_TYPE_INT64)
        v = config_setting_get_int64(s);
    else {
        cf_fail(x, s, key, "expected an integer from %d to %d, got %s", lo, hi,
                cf_describe(s, got, sizeof got));
        return false;
    }
    if (v < lo || v > hi) {
        cf_fail(x, s, key, "expected an integer from %d to %d, got %lld", lo, hi, v);
        return false;
    }
    *dst = (int)v;
    return true;
}

static bool cf_get_bool(cf_ctx *x, const config_setting_t *s, const char *key, bool *dst) {
    char got[128];
    if (config_setting_type(s) != CONFIG_TYPE_BOOL) {
        cf_fail(x, s, key, "expected true or false, got %s", cf_describe(s, got, sizeof got));
        return false;
    }
    *dst = config_setting_get_bool(s) != 0;
    return true;
}

static bool cf_topic_ok(const char *t) {
    size_t n = strlen(t);
    if (n == 0 || n > 249 || strcmp(t, ".") == 0 || strcmp(t, "..") == 0) return false;
    for (const char *p = t; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '.' || *p == '_' || *p == '-'))
            return false;
    return true;
}

#define TD_TOPIC_EXPECTS "a Kafka topic name (1 to 249 of a-z A-Z 0-9 . _ -)"

static bool cf_get_topic(cf_ctx *x, const config_setting_t *s, const char *key, char **dst) {
    if (!cf_get_str(x, s, key, dst, false, false)) return false;
    if (!cf_topic_ok(*dst)) {
        cf_fail(x, s, key, "expected " TD_TOPIC_EXPECTS ", got \"%.80s\"", *dst);
        return false;
    }
    return true;
}

/* ------------------------------------------------------------ the groups */

/* Properties touchd sets itself: overriding them would break the delivery
 * guarantees (docs/operations.md), so they are rejected with the reason. */
typedef struct cf_owned {
    const char *name;
    const char *why;
} cf_owned;

static const cf_owned cf_consumer_owned[] = {
    {"bootstrap.servers", "set kafka.brokers instead"},
    {"metadata.broker.list", "set kafka.brokers instead"},
    {"group.id", "set kafka.group_id instead"},
    {"group.instance.id", "set kafka.instance_id instead (it takes env:NAME)"},
    {"enable.auto.offset.store", "touchd stores offsets itself, only after state and "
                                 "recommendations are durable"},
    {"partition.assignment.strategy", "touchd uses cooperative-sticky (incremental rebalances)"},
    {"enable.partition.eof", "touchd needs end-of-partition events (the timers' horizon)"},
    {NULL, NULL}};
static const cf_owned cf_producer_owned[] = {
    {"bootstrap.servers", "set kafka.brokers instead"},
    {"metadata.broker.list", "set kafka.brokers instead"},
    {"enable.idempotence", "touchd's producer is always idempotent"},
    {"acks", "touchd's producer always uses acks=all"},
    {"request.required.acks", "touchd's producer always uses acks=all"},
    {"transactional.id", "touchd does not use transactions"},
    {NULL, NULL}};

static bool cf_passthrough(cf_ctx *x, const config_setting_t *g, const char *gkey,
                           const cf_owned *owned, td_kv **out, size_t *nout) {
    char got[128], key[256], prop[200];
    if (config_setting_type(g) != CONFIG_TYPE_GROUP) {
        cf_fail(x, g, gkey, "expected a group of librdkafka properties { name = value; }, got %s",
                cf_describe(g, got, sizeof got));
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
        for (const cf_owned *o = owned; o->name; o++)
            if (strcmp(o->name, prop) == 0) {
                cf_fail(x, s, key, "librdkafka property %s cannot be set here: %s", prop, o->why);
                goto fail;
            }
        char val[1024];
        switch (config_setting_type(s)) {
        case CONFIG_TYPE_STRING: {
            const char *v = cf_resolve_env(x, s, key, config_setting_get_string(s));
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
            cf_fail(x, s, key, "expected a string, integer or boolean, got %s",
                    cf_describe(s, got, sizeof got));
            goto fail;
        }
        char errstr[256];
        if (rd_kafka_conf_set(probe, prop, val, errstr, sizeof errstr) != RD_KAFKA_CONF_OK) {
            /* Never echo the value: it may be a secret (sasl.password). */
            cf_fail(x, s, key, "librdkafka rejects %s: %s", prop, errstr);
            goto fail;
        }
        *out = realloc(*out, (*nout + 1) * sizeof **out);
        if (!*out) abort();
        (*out)[*nout].key = cf_strdup(prop);
        (*out)[*nout].val = cf_strdup(val);
        (*out)[*nout].line = (int)config_setting_source_line(s);
        (*nout)++;
    }
    rd_kafka_conf_destroy(probe);
    return true;
fail:
    rd_kafka_conf_destroy(probe);
    return false;
}

/* ------------------------------------------------------------- the table */

/* The extra checks of some string keys; what each expects is in its row. */
static bool cf_prefix_ok(const char *v) { return !strpbrk(v, " {}\t\r\n"); }
static bool cf_topic_or_off_ok(const char *v) { return !*v || cf_topic_ok(v); }
static bool cf_logfmt_ok(const char *v) { return strcmp(v, "logfmt") == 0; }
static void cf_shadow_set(td_config *c) { c->kafka.shadow_topic_default = false; }
static void cf_late_set(td_config *c) { c->time.late_policy_set = true; }
static void cf_overdue_set(td_config *c) { c->time.overdue_policy_set = true; }
static bool cf_listen_ok(const char *v) {
    char host[256], why[200];
    int port;
    return !*v || td_http_listen_parse(v, host, sizeof host, &port, why, sizeof why);
}

static const td_config_enum cf_late_names[] = {{"mark", TD_LATE_MARK, false},
                                               {"publish", TD_LATE_PUBLISH, false},
                                               {"drop", TD_LATE_DROP, false},
                                               {NULL, 0, false}};
_Static_assert(sizeof(td_late_policy) == sizeof(int), "td_late_policy is stored as an int");

const char *td_late_policy_name(td_late_policy p) {
    return p == TD_LATE_PUBLISH ? "publish" : p == TD_LATE_DROP ? "drop" : "mark";
}

static const td_config_enum cf_overdue_names[] = {{"fire_late", TD_OVERDUE_FIRE_LATE, false},
                                                  {"drop", TD_OVERDUE_DROP, false},
                                                  {"drop_older_than", TD_OVERDUE_DROP, true},
                                                  {NULL, 0, false}};
static const td_config_enum cf_level_names[] = {{"debug", TD_LOG_DEBUG, false},
                                                {"info", TD_LOG_INFO, false},
                                                {"warn", TD_LOG_WARN, false},
                                                {"error", TD_LOG_ERROR, false},
                                                {NULL, 0, false}};
_Static_assert(sizeof(td_log_level) == sizeof(int), "td_log_level is stored as an int");
_Static_assert(sizeof(td_overdue_policy) == sizeof(int), "td_overdue_policy is stored as an int");

#define TD_OFF(field) offsetof(td_config, field)
#define TD_STR(p, field, def, fl, h)                                                               \
    {                                                                                              \
        .path = p, .type = TD_CFG_STRING, .def_str = def, .flags = fl, .off = TD_OFF(field),       \
        .help = h                                                                                  \
    }
#define TD_TOPIC(p, field, def, h)                                                                 \
    {                                                                                              \
        .path = p, .type = TD_CFG_STRING, .def_str = def, .off = TD_OFF(field),                    \
        .check = cf_topic_ok, .expects = TD_TOPIC_EXPECTS, .help = h                               \
    }
#define TD_INT(p, field, def, l, u, h)                                                             \
    {                                                                                              \
        .path = p, .type = TD_CFG_INT, .def_int = def, .lo = l, .hi = u, .off = TD_OFF(field),     \
        .help = h                                                                                  \
    }
#define TD_BOOL(p, field, def, h)                                                                  \
    { .path = p, .type = TD_CFG_BOOL, .def_int = def, .off = TD_OFF(field), .help = h }
/* a duration whose text is kept in field##_text (the last name of field,
 * with _text) */
#define TD_DURATION_TEXT(p, field, def, h)                                                         \
    {                                                                                              \
        .path = p, .type = TD_CFG_DURATION, .def_str = def, .off = TD_OFF(field),                  \
        .off_text = TD_OFF(field##_text), .help = h                                                \
    }

/*
 * Every key of the file. The order is that of the "allowed here" lists in
 * unknown-key messages (sections in order of their first key). Every row is
 * documented in docs/config.md (tests/unit/test_config.c checks both ways).
 */
static const td_config_key cf_keys[] = {
    TD_STR("kafka.brokers", kafka.brokers, "embedded", 0, "\"embedded\" or host:port,host:port"),
    TD_STR("kafka.group_id", kafka.group_id, "touchd", 0, "the consumer group"),
    {.path = "kafka.instance_id",
     .type = TD_CFG_STRING,
     .def_str = "",
     .flags = TD_CFG_F_EMPTY | TD_CFG_F_ENV,
     .off = TD_OFF(kafka.instance_id),
     .check = cf_topic_or_off_ok, /* Kafka checks an instance id as a topic name */
     .expects = "\"\" (dynamic membership) or 1 to 249 of a-z A-Z 0-9 . _ -",
     .help = "static group membership (group.instance.id): unique per live instance"},
    {.path = "kafka.input_topics",
     .type = TD_CFG_TOPICS,
     .def_str = "touchd.events",
     .off = TD_OFF(kafka.input_topics),
     .off_n = TD_OFF(kafka.n_input_topics),
     .help = "topics of the events, a non-empty list"},
    TD_TOPIC("kafka.output_topic", kafka.output_topic, "touchd.recommendations",
             "topic of the recommendations"),
    TD_TOPIC("kafka.dead_letter_topic", kafka.dead_letter_topic, "touchd.dead-letter",
             "topic of rejected events"),
    {.path = "kafka.gift_register_topic",
     .type = TD_CFG_STRING,
     .def_str = "",
     .flags = TD_CFG_F_EMPTY,
     .off = TD_OFF(kafka.gift_register_topic),
     .check = cf_topic_or_off_ok,
     .expects = "\"\" (off) or " TD_TOPIC_EXPECTS,
     .help = "topic every registered gift is also produced to; \"\" = off"},
    {.path = "kafka.plan_topic",
     .type = TD_CFG_STRING,
     .def_str = "touchd.plans",
     .flags = TD_CFG_F_EMPTY,
     .off = TD_OFF(kafka.plan_topic),
     .check = cf_topic_or_off_ok,
     .expects = "\"\" (off) or " TD_TOPIC_EXPECTS,
     .help = "topic of the current plans (cleanup.policy=compact); \"\" = off"},
    {.path = "kafka.shadow_topic",
     .type = TD_CFG_STRING,
     .def_str = "", /* cf_finish: "<output_topic>.shadow" */
     .off = TD_OFF(kafka.shadow_topic),
     .check = cf_topic_ok,
     .expects = TD_TOPIC_EXPECTS,
     .after = cf_shadow_set,
     .help = "topic of the shadow ruleset's recommendations"},
    TD_STR("kafka.bootstrap_file", kafka.bootstrap_file, "", TD_CFG_F_EMPTY,
           "embedded broker: file its address is written to; \"\" = none"),
    TD_INT("kafka.embedded_partitions", kafka.embedded_partitions, 4, 1, 256,
           "embedded broker: partitions of each topic"),
    {.path = "kafka.consumer",
     .type = TD_CFG_PASSTHROUGH,
     .off = TD_OFF(kafka.consumer),
     .off_n = TD_OFF(kafka.n_consumer),
     .owned = cf_consumer_owned,
     .help = "librdkafka consumer properties passed through"},
    {.path = "kafka.producer",
     .type = TD_CFG_PASSTHROUGH,
     .off = TD_OFF(kafka.producer),
     .off_n = TD_OFF(kafka.n_producer),
     .owned = cf_producer_owned,
     .help = "librdkafka producer properties passed through"},

    TD_STR("redis.host", redis_host, "127.0.0.1", 0, "host name or address"),
    TD_INT("redis.port", redis.port, 6379, 1, 65535, "TCP port"),
    TD_STR("redis.unix_socket", redis_unix_socket, "", TD_CFG_F_EMPTY,
           "absolute path of a unix socket; replaces host and port"),
    TD_STR("redis.password", redis_password, "", TD_CFG_F_EMPTY | TD_CFG_F_ENV | TD_CFG_F_SECRET,
           "AUTH password; \"\" = no AUTH"),
    TD_STR("redis.username", redis_username, "", TD_CFG_F_EMPTY | TD_CFG_F_ENV,
           "Redis 6 ACL user; \"\" = the password only"),
    TD_INT("redis.db", redis.db, 0, 0, 65535, "SELECTed when not 0"),
    TD_INT("redis.connect_timeout_ms", redis.connect_timeout_ms, 2000, 1, 600000,
           "connect timeout"),
    TD_INT("redis.command_timeout_ms", redis.command_timeout_ms, 5000, 1, 600000,
           "no Redis call blocks longer"),
    TD_INT("redis.backoff_min_ms", redis.backoff_min_ms, 100, 1, 600000,
           "first delay after a failure"),
    TD_INT("redis.backoff_max_ms", redis.backoff_max_ms, 5000, 1, 600000,
           "cap of the doubling backoff"),
    {.path = "redis.key_prefix",
     .type = TD_CFG_STRING,
     .def_str = "touchd",
     .off = TD_OFF(redis_key_prefix),
     .check = cf_prefix_ok,
     .expects = "a prefix without spaces or braces",
     .help = "prefix of every key touchd writes"},
    TD_BOOL("redis.verify_writes", redis.verify_writes, false,
            "read back and compare every hash written"),

    TD_STR("rules.dir", rules.dir, "rules", 0, "directory of the *.rules files"),
    TD_INT("rules.reload_poll_ms", rules.reload_poll_ms, 2000, 0, 3600000,
           "how often the directory is checked; 0 = SIGHUP only"),
    TD_INT("rules.settle_ms", rules.settle_ms, 500, 0, 60000,
           "a changed directory is compiled once its files are quiet this long"),
    TD_STR("rules.shadow_dir", rules.shadow_dir, "", TD_CFG_F_EMPTY,
           "directory of a shadow ruleset; \"\" = none"),
    TD_STR("rules.shadow_report", rules.shadow_report, "", TD_CFG_F_EMPTY,
           "JSON file of the shadow comparison; \"\" = none"),
    TD_INT("rules.shadow_report_interval_ms", rules.shadow_report_interval_ms, 10000, 100, 3600000,
           "how often shadow_report is rewritten"),

    TD_INT("engine.batch_max_events", engine.batch_max_events, 1000, 1, 100000,
           "the most events in one batch"),
    TD_INT("engine.batch_max_ms", engine.batch_max_ms, 20, 1, 60000,
           "the longest a batch is gathered"),
    TD_INT("engine.state_cache", engine.state_cache, 65536, 0, 10000000,
           "prospect states kept between batches; 0 = off"),
    TD_BOOL("engine.pipeline", engine.pipeline, true, "store a batch while the next is computed"),
    TD_INT("engine.store_connections", engine.store_connections, 2, 1, 2,
           "Redis connections of a batch's state write"),
    TD_DURATION_TEXT("engine.dedup_window", engine.dedup_window, "7d",
                     "a duplicate event id is caught at least this long (and within the "
                     "prospect's last 1,000 events)"),

    TD_INT("timers.shards", timers.shards, 4096, 1, 65536, "sorted sets of the timer index"),
    TD_INT("timers.poll_ms", timers.poll_ms, 100, 1, 60000, "pause between idle polls"),
    TD_INT("timers.sweep_ms", timers.sweep_ms, 60000, 1, 600000,
           "every shard's head is re-computed within this"),
    TD_INT("timers.claim_batch", timers.claim_batch, 500, 1, 2000, "timers claimed per poll"),
    TD_INT("timers.lease_ms", timers.lease_ms, 30000, 1000, 3600000,
           "an unacknowledged claim is claimable again after this"),
    {.path = "timers.overdue_policy",
     .type = TD_CFG_ENUM,
     .def_int = TD_OVERDUE_FIRE_LATE,
     .off = TD_OFF(timers.overdue_policy),
     .names = cf_overdue_names,
     .after = cf_overdue_set,
     .help = "alias of time.late_policy: fire_late = publish, drop = drop"},
    {.path = "timers.drop_older_than",
     .type = TD_CFG_DURATION,
     .def_int = 0,
     .off = TD_OFF(timers.drop_older_than),
     .help = "accepted with overdue_policy = \"drop\"; lateness is the rules' late_after"},

    TD_DURATION_TEXT("time.max_future_skew", time.max_future_skew, "5m",
                     "an event further ahead of the wall clock is a dead letter"),
    TD_DURATION_TEXT("time.max_past_age", time.max_past_age, "400d",
                     "an event older than this is a dead letter"),
    {.path = "time.late_policy",
     .type = TD_CFG_ENUM,
     .def_int = TD_LATE_MARK,
     .off = TD_OFF(time.late_policy),
     .names = cf_late_names,
     .after = cf_late_set,
     .help = "a late recommendation: mark, publish or drop"},

    TD_INT("gifts.retention_days", gifts.retention_days, TD_GIFTS_RETENTION_DAYS_DEFAULT, 1, 36500,
           "TTL of the gift register's seen keys"),

    {.path = "log.level",
     .type = TD_CFG_ENUM,
     .def_int = TD_LOG_INFO,
     .off = TD_OFF(log.level),
     .names = cf_level_names,
     .help = "the least level logged"},
    {.path = "log.format",
     .type = TD_CFG_STRING,
     .def_str = "logfmt",
     .off = TD_OFF(log.format),
     .check = cf_logfmt_ok,
     .expects = "\"logfmt\" (the only format)",
     .help = "the log line format"},

    /* http.*: the listener (td_http.h) */
    {.path = "http.listen",
     .type = TD_CFG_STRING,
     .def_str = "",
     .flags = TD_CFG_F_EMPTY,
     .off = TD_OFF(http.listen),
     .check = cf_listen_ok,
     .expects = "\"\" (off) or HOST:PORT such as \"127.0.0.1:9464\" or \"[::1]:9464\"",
     .help = "address of /metrics, /healthz and /readyz; \"\" = off"},
    TD_STR("http.tls_cert", http.tls_cert, "", TD_CFG_F_EMPTY,
           "PEM certificate (chain): the listener speaks HTTPS; \"\" = plain HTTP"),
    TD_STR("http.tls_key", http.tls_key, "", TD_CFG_F_EMPTY,
           "PEM private key of tls_cert; set both or neither"),
};
#define TD_CFG_NKEYS (sizeof cf_keys / sizeof cf_keys[0])

const td_config_key *td_config_keys(size_t *n) {
    *n = TD_CFG_NKEYS;
    return cf_keys;
}

/* The section of a key ("redis" of "redis.host"): its length in path. */
static size_t cf_sect_len(const td_config_key *k) { return strcspn(k->path, "."); }

static bool cf_in_sect(const td_config_key *k, const char *sect) {
    size_t n = cf_sect_len(k);
    return strncmp(k->path, sect, n) == 0 && sect[n] == '\0';
}

static const td_config_key *cf_find(const char *sect, const char *name) {
    for (size_t i = 0; i < TD_CFG_NKEYS; i++)
        if (cf_in_sect(&cf_keys[i], sect) &&
            strcmp(cf_keys[i].path + cf_sect_len(&cf_keys[i]) + 1, name) == 0)
            return &cf_keys[i];
    return NULL;
}

/* true when the table has a key in section `sect`. */
static bool cf_sect_known(const char *sect) {
    for (size_t i = 0; i < TD_CFG_NKEYS; i++)
        if (cf_in_sect(&cf_keys[i], sect)) return true;
    return false;
}

/* Appends ", " (unless first) and the n bytes at s to buf. */
static void cf_list_add(char *buf, size_t cap, const char *s, size_t n) {
    size_t o = strlen(buf);
    snprintf(buf + o, cap - o, "%s%.*s", o ? ", " : "", (int)n, s);
}

/* "kafka, redis, ...": the sections (sect NULL) or the keys of one. */
static const char *cf_allowed(const char *sect, char *buf, size_t cap) {
    buf[0] = '\0';
    for (size_t i = 0; i < TD_CFG_NKEYS; i++) {
        const td_config_key *k = &cf_keys[i];
        size_t n = cf_sect_len(k);
        if (!sect) {
            if (i == 0 ||
                !(strncmp(cf_keys[i - 1].path, k->path, n) == 0 && cf_keys[i - 1].path[n] == '.'))
                cf_list_add(buf, cap, k->path, n);
        } else if (cf_in_sect(k, sect)) {
            cf_list_add(buf, cap, k->path + n + 1, strlen(k->path + n + 1));
        }
    }
    return buf;
}

/* What an enum key expects: "a" or "b"; one of a, b, c. Aliases are left out. */
static const char *cf_enum_expects(const td_config_enum *e, char *buf, size_t cap) {
    size_t n = 0;
    for (const td_config_enum *p = e; p->name; p++)
        n += !p->alias;
    buf[0] = '\0';
    if (n == 2) {
        size_t o = 0;
        for (const td_config_enum *p = e; p->name; p++)
            if (!p->alias) {
                snprintf(buf + o, cap - o, "%s\"%s\"", o ? " or " : "", p->name);
                o = strlen(buf);
            }
        return buf;
    }
    snprintf(buf, cap, "one of ");
    bool first = true;
    for (const td_config_enum *p = e; p->name; p++)
        if (!p->alias) {
            size_t o = strlen(buf);
            snprintf(buf + o, cap - o, "%s%s", first ? "" : ", ", p->name);
            first = false;
        }
    return buf;
}

static bool cf_unknown(cf_ctx *x, const config_setting_t *s, const char *key, const char *allowed) {
    cf_fail(x, s, key, "unknown key (allowed here: %s)", allowed);
    return false;
}

static void cf_get_topics(cf_ctx *x, const config_setting_t *s, const char *key, char ***list,
                          size_t *nlist) {
    char got[128];
    int t = config_setting_type(s);
    int m = config_setting_length(s);
    if ((t != CONFIG_TYPE_ARRAY && t != CONFIG_TYPE_LIST) || m < 1) {
        cf_fail(x, s, key, "expected a non-empty list of topic names [\"a\", \"b\"], got %s",
                t == CONFIG_TYPE_ARRAY || t == CONFIG_TYPE_LIST ? "an empty list"
                                                                : cf_describe(s, got, sizeof got));
        return;
    }
    for (size_t k = 0; k < *nlist; k++)
        free((*list)[k]);
    free(*list);
    *list = calloc((size_t)m, sizeof(char *));
    if (!*list) abort();
    *nlist = 0;
    for (int k = 0; k < m; k++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)k);
        char ekey[160];
        snprintf(ekey, sizeof ekey, "%s[%d]", key, k);
        char *topic = NULL;
        if (!cf_get_topic(x, e, ekey, &topic)) {
            free(topic);
            return;
        }
        (*list)[(*nlist)++] = topic;
    }
}

/* Sets duration key k of c to d ms, and its text (when the row keeps one)
 * to `text`, or to td_duration_format's form when it does not fit. */
static void cf_set_duration(td_config *c, const td_config_key *k, td_ms d, const char *text) {
    *(td_ms *)((char *)c + k->off) = d;
    if (!k->off_text) return;
    char *t = (char *)c + k->off_text;
    if (strlen(text) < TD_CFG_DURATION_TEXT)
        memcpy(t, text, strlen(text) + 1);
    else
        td_duration_format(d, t, TD_CFG_DURATION_TEXT);
}

/* Reads setting s (named key) as row k says, into c. */
static void cf_read(cf_ctx *x, const config_setting_t *s, const char *key, const td_config_key *k,
                    td_config *c) {
    void *dst = (char *)c + k->off;
    switch (k->type) {
    case TD_CFG_STRING: {
        char **v = dst;
        if (cf_get_str(x, s, key, v, k->flags & TD_CFG_F_EMPTY, k->flags & TD_CFG_F_ENV) &&
            k->check && !k->check(*v))
            cf_fail(x, s, key, "expected %s, got \"%.80s\"", k->expects, *v);
        break;
    }
    case TD_CFG_INT:
        cf_get_int(x, s, key, (int)k->lo, (int)k->hi, dst);
        break;
    case TD_CFG_BOOL:
        cf_get_bool(x, s, key, dst);
        break;
    case TD_CFG_ENUM: {
        char *v = NULL;
        if (cf_get_str(x, s, key, &v, false, false)) {
            const td_config_enum *e = k->names;
            while (e->name && strcmp(e->name, v) != 0)
                e++;
            if (e->name) {
                *(int *)dst = e->value;
            } else {
                char want[256];
                cf_fail(x, s, key, "expected %s, got \"%.80s\"",
                        cf_enum_expects(k->names, want, sizeof want), v);
            }
        }
        free(v);
        break;
    }
    case TD_CFG_DURATION: {
        char *v = NULL;
        if (cf_get_str(x, s, key, &v, false, false)) {
            td_ms d;
            if (td_duration_parse(v, strlen(v), &d) != TD_OK || d <= 0)
                cf_fail(x, s, key,
                        "expected a positive duration such as \"10m\", \"6h\", \"2d\", "
                        "got \"%.80s\"",
                        v);
            else
                cf_set_duration(c, k, d, v);
        }
        free(v);
        break;
    }
    case TD_CFG_TOPICS:
        cf_get_topics(x, s, key, dst, (size_t *)((char *)c + k->off_n));
        break;
    case TD_CFG_PASSTHROUGH:
        cf_passthrough(x, s, key, k->owned, dst, (size_t *)((char *)c + k->off_n));
        break;
    }
    if (k->after) k->after(c);
}

/* After the redis section: the unix socket replaces host, and the backoff bounds. */
static void cf_redis_done(cf_ctx *x, const config_setting_t *g, td_config *c) {
    if (*c->redis_unix_socket) {
        if (c->redis_unix_socket[0] != '/') {
            cf_fail(x, config_setting_get_member(g, "unix_socket"), "redis.unix_socket",
                    "expected an absolute path, got \"%.80s\"", c->redis_unix_socket);
            return;
        }
        cf_setstr(&c->redis_host, c->redis_unix_socket);
        c->redis.unix_socket = true;
    }
    if (c->redis.backoff_min_ms > c->redis.backoff_max_ms)
        cf_fail(x, g, "redis.backoff_min_ms", "expected at most redis.backoff_max_ms (%d), got %d",
                c->redis.backoff_max_ms, c->redis.backoff_min_ms);
}

/* After the http section: TLS needs both files, and a listener. */
static void cf_http_done(cf_ctx *x, const config_setting_t *g, td_config *c) {
    bool cert = *c->http.tls_cert, key = *c->http.tls_key;
    if (cert != key)
        cf_fail(x, config_setting_get_member(g, cert ? "tls_cert" : "tls_key"),
                cert ? "http.tls_key" : "http.tls_cert",
                "is required with http.%s (TLS needs a certificate and its key)",
                cert ? "tls_cert" : "tls_key");
    else if (cert && !*c->http.listen)
        cf_fail(x, config_setting_get_member(g, "tls_cert"), "http.tls_cert",
                "needs http.listen (the listener is off)");
}

/* Reads every setting of section group g. */
static void cf_section(cf_ctx *x, const config_setting_t *g, const char *sect, td_config *c) {
    char key[128], allowed[512];
    int n = config_setting_length(g);
    for (int i = 0; i < n && !x->failed; i++) {
        const config_setting_t *s = config_setting_get_elem(g, (unsigned)i);
        const char *name = config_setting_name(s);
        snprintf(key, sizeof key, "%s.%s", sect, name);
        const td_config_key *k = cf_find(sect, name);
        if (k)
            cf_read(x, s, key, k, c);
        else
            cf_unknown(x, s, key, cf_allowed(sect, allowed, sizeof allowed));
    }
    if (!x->failed && strcmp(sect, "redis") == 0) cf_redis_done(x, g, c);
    if (!x->failed && strcmp(sect, "http") == 0) cf_http_done(x, g, c);
}

/* Cross-key checks, after every key is read. */
static void cf_finish(cf_ctx *x, td_config *c) {
    c->kafka.embedded = strcmp(c->kafka.brokers, "embedded") == 0;
    for (size_t i = 0; i < c->kafka.n_input_topics && !x->failed; i++) {
        if (strcmp(c->kafka.input_topics[i], c->kafka.output_topic) == 0)
            cf_fail(x, NULL, "kafka.output_topic",
                    "must differ from every input topic (\"%s\" is both)", c->kafka.output_topic);
        else if (strcmp(c->kafka.input_topics[i], c->kafka.dead_letter_topic) == 0)
            cf_fail(x, NULL, "kafka.dead_letter_topic",
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
            cf_fail(x, NULL, "kafka.shadow_topic",
                    "must differ from every input topic (\"%s\" is both)", c->kafka.shadow_topic);
    if (!x->failed && (strcmp(c->kafka.shadow_topic, c->kafka.output_topic) == 0 ||
                       strcmp(c->kafka.shadow_topic, c->kafka.dead_letter_topic) == 0))
        cf_fail(x, NULL, "kafka.shadow_topic",
                "must differ from the output and dead-letter topics (got \"%s\")",
                c->kafka.shadow_topic);
    if (!x->failed && *c->rules.shadow_dir && strcmp(c->rules.shadow_dir, c->rules.dir) == 0)
        cf_fail(x, NULL, "rules.shadow_dir", "must differ from rules.dir (got \"%s\")",
                c->rules.shadow_dir);
    if (!x->failed && *c->kafka.gift_register_topic) {
        const char *gt = c->kafka.gift_register_topic;
        bool clash = strcmp(gt, c->kafka.output_topic) == 0 ||
                     strcmp(gt, c->kafka.dead_letter_topic) == 0 ||
                     strcmp(gt, c->kafka.shadow_topic) == 0;
        for (size_t i = 0; i < c->kafka.n_input_topics; i++)
            clash = clash || strcmp(gt, c->kafka.input_topics[i]) == 0;
        if (clash)
            cf_fail(x, NULL, "kafka.gift_register_topic",
                    "must differ from the input, output, shadow and dead-letter topics "
                    "(got \"%s\")",
                    gt);
    }
    if (!x->failed && *c->kafka.plan_topic) {
        const char *pt = c->kafka.plan_topic;
        bool clash =
            strcmp(pt, c->kafka.output_topic) == 0 || strcmp(pt, c->kafka.dead_letter_topic) == 0 ||
            strcmp(pt, c->kafka.shadow_topic) == 0 || strcmp(pt, c->kafka.gift_register_topic) == 0;
        for (size_t i = 0; i < c->kafka.n_input_topics; i++)
            clash = clash || strcmp(pt, c->kafka.input_topics[i]) == 0;
        if (clash)
            cf_fail(x, NULL, "kafka.plan_topic",
                    "must differ from the input, output, shadow, gift register and dead-letter "
                    "topics (got \"%s\")",
                    pt);
    }
    /* the old name of the catch-up policy */
    if (!c->time.late_policy_set && c->time.overdue_policy_set)
        c->time.late_policy =
            c->timers.overdue_policy == TD_OVERDUE_DROP ? TD_LATE_DROP : TD_LATE_PUBLISH;
    c->redis.host = c->redis_host;
    c->redis.password = c->redis_password && *c->redis_password ? c->redis_password : NULL;
    c->redis.username = c->redis_username && *c->redis_username ? c->redis_username : NULL;
    c->redis.key_prefix = c->redis_key_prefix;
    if (!x->failed) {
        td_timers_conf *t = &c->timers;
        if (t->overdue_policy == TD_OVERDUE_DROP && t->drop_older_than <= 0)
            cf_fail(x, NULL, "timers.drop_older_than",
                    "is required with overdue_policy = \"drop\" (e.g. \"6h\")");
        else if (t->overdue_policy == TD_OVERDUE_FIRE_LATE && t->drop_older_than > 0)
            cf_fail(x, NULL, "timers.drop_older_than",
                    "only applies with overdue_policy = \"drop\" (the policy is \"fire_late\")");
        else if (c->time.late_policy_set && c->time.overdue_policy_set)
            cf_fail(x, NULL, "timers.overdue_policy",
                    "is the old name of time.late_policy: set only time.late_policy");
        else if (t->sweep_ms < t->poll_ms)
            cf_fail(x, NULL, "timers.sweep_ms", "must be >= timers.poll_ms (%d), got %d",
                    t->poll_ms, t->sweep_ms);
        else {
            char why[200];
            if (!td_timers_conf_check(t, why, sizeof why)) cf_fail(x, NULL, "timers", "%s", why);
        }
    }
}

/* ----------------------------------------------------------------- public */

td_config *td_config_default(void) {
    td_config *c = calloc(1, sizeof *c);
    if (!c) abort();
    c->path = cf_strdup("");
    /* Every field not in the table is zero: redis.host and the other
     * pointers of `redis` are set by cf_finish. */
    for (size_t i = 0; i < TD_CFG_NKEYS; i++) {
        const td_config_key *k = &cf_keys[i];
        void *dst = (char *)c + k->off;
        switch (k->type) {
        case TD_CFG_STRING:
            *(char **)dst = cf_strdup(k->def_str);
            break;
        case TD_CFG_INT:
        case TD_CFG_ENUM:
            *(int *)dst = (int)k->def_int;
            break;
        case TD_CFG_BOOL:
            *(bool *)dst = k->def_int != 0;
            break;
        case TD_CFG_DURATION: {
            td_ms d = (td_ms)k->def_int;
            /* a default written as text is parsed, so the table, the
             * texts of messages and docs/config.md show one value */
            if (k->def_str && td_duration_parse(k->def_str, strlen(k->def_str), &d) != TD_OK)
                abort(); /* a bad row of the table (test_config checks every row) */
            cf_set_duration(c, k, d, k->def_str ? k->def_str : "");
            break;
        }
        case TD_CFG_TOPICS: {
            char **list = calloc(1, sizeof(char *));
            if (!list) abort();
            list[0] = cf_strdup(k->def_str);
            *(char ***)dst = list;
            *(size_t *)((char *)c + k->off_n) = 1;
            break;
        }
        case TD_CFG_PASSTHROUGH:
            break; /* none */
        }
    }
    cf_ctx x = {.path = "", .err = NULL, .errcap = 0};
    cf_finish(&x, c);
    return c;
}

td_config *td_config_load(const char *path, char *err, size_t errcap) {
    cf_ctx x = {.path = path, .err = err, .errcap = errcap, .failed = false};
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
    cf_setstr(&c->path, path);
    const config_setting_t *root = config_root_setting(&cf);
    int n = config_setting_length(root);
    char got[128];
    for (int i = 0; i < n && !x.failed; i++) {
        const config_setting_t *g = config_setting_get_elem(root, (unsigned)i);
        const char *name = config_setting_name(g);
        if (!cf_sect_known(name)) {
            char allowed[128];
            cf_unknown(&x, g, name, cf_allowed(NULL, allowed, sizeof allowed));
            break;
        }
        if (config_setting_type(g) != CONFIG_TYPE_GROUP) {
            cf_fail(&x, g, name, "expected a group %s = { ... }, got %s", name,
                    cf_describe(g, got, sizeof got));
            break;
        }
        cf_section(&x, g, name, c);
    }
    if (!x.failed) cf_finish(&x, c);
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
            cf_setstr(&c->redis_host, redis + 5);
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
            cf_setstr(&c->redis_host, host);
            c->redis.unix_socket = false;
        }
        c->redis.host = c->redis_host;
    }
    if (rules_dir) {
        if (!*rules_dir) {
            snprintf(err, errcap, "--rules: expected a directory, got \"\"");
            return -1;
        }
        cf_setstr(&c->rules.dir, rules_dir);
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

static void cf_wipe(char *s) {
    if (!s) return;
    volatile char *p = s;
    while (*p)
        *p++ = 0;
}

static void cf_kv_free(td_kv *v, size_t n) {
    for (size_t i = 0; i < n; i++) {
        /* Passthrough values may be secrets: wipe before freeing. */
        cf_wipe(v[i].val);
        free(v[i].key);
        free(v[i].val);
    }
    free(v);
}

/* ------------------------------------------------------------- paths */

typedef enum cf_path_kind {
    CF_PATH_DIR,         /* a directory to read */
    CF_PATH_FILE,        /* a file to read */
    CF_PATH_FILE_OR_DIR, /* ssl.ca.location: a CA file or a directory of them */
    CF_PATH_OUTPUT       /* a file touchd writes: its directory must be writable */
} cf_path_kind;

/* Why `path` is not what `kind` wants (a directory or a file, to read;
 * with `dir`, one to write into), or NULL. */
static const char *cf_path_problem(const char *path, bool dir, bool file, int mode) {
    struct stat st;
    if (stat(path, &st) != 0) return strerror(errno);
    if (dir && !file && !S_ISDIR(st.st_mode)) return "not a directory";
    if (file && !dir && S_ISDIR(st.st_mode)) return "a directory, not a file";
    if (access(path, S_ISDIR(st.st_mode) ? mode | X_OK : mode) != 0) return strerror(errno);
    return NULL;
}

/* Checks one path; a problem is one line on out. @returns 1 for a problem. */
static int cf_check_path(FILE *out, const char *prefix, const td_config *c, int line,
                         const char *key, const char *prop, const char *path, cf_path_kind kind) {
    char where[600], via[120] = "", dir[PATH_MAX];
    const char *why;
    if (kind == CF_PATH_OUTPUT) { /* the directory it is written into */
        snprintf(dir, sizeof dir, "%s", path);
        char *slash = strrchr(dir, '/');
        if (!slash)
            snprintf(dir, sizeof dir, ".");
        else
            slash[slash == dir] = '\0'; /* "/b" is in "/" */
        why = cf_path_problem(dir, true, false, W_OK);
    } else {
        why = cf_path_problem(path, kind != CF_PATH_FILE, kind != CF_PATH_DIR, R_OK);
    }
    if (!why) return 0;
    if (line > 0)
        snprintf(where, sizeof where, "%s:%d", c->path, line);
    else
        snprintf(where, sizeof where, "%s", c->path);
    if (prop) snprintf(via, sizeof via, " (librdkafka %s)", prop);
    if (kind == CF_PATH_OUTPUT)
        fprintf(out, "%s%s: %s: cannot write \"%s\": directory \"%s\": %s\n", prefix, where, key,
                path, dir, why);
    else
        fprintf(out, "%s%s: %s: cannot read %s \"%s\"%s: %s\n", prefix, where, key,
                kind == CF_PATH_DIR ? "the directory" : "the file", path, via, why);
    return 1;
}

/* The passthrough properties of one group that name files librdkafka reads. */
static int cf_check_props(FILE *out, const char *prefix, const td_config *c, const char *group,
                          const td_kv *kv, size_t n) {
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        const char *p = kv[i].key;
        size_t len = strlen(p);
        bool location = len > 9 && strcmp(p + len - 9, ".location") == 0;
        if (!location && strcmp(p, "sasl.kerberos.keytab") != 0) continue;
        bool ca = strcmp(p, "ssl.ca.location") == 0;
        if (ca && strcmp(kv[i].val, "probe") == 0) continue; /* the system's CA stores */
        char key[300];
        snprintf(key, sizeof key, "kafka.%s.%s", group, p);
        for (char *q = key + strlen("kafka.") + strlen(group) + 1; *q; q++)
            if (*q == '.') *q = '_'; /* the key as written in the file */
        bad += cf_check_path(out, prefix, c, kv[i].line, key, p, kv[i].val,
                             ca ? CF_PATH_FILE_OR_DIR : CF_PATH_FILE);
    }
    return bad;
}

int td_config_check_paths(const td_config *c, const char *prefix, FILE *out) {
    int bad = cf_check_path(out, prefix, c, 0, "rules.dir", NULL, c->rules.dir, CF_PATH_DIR);
    bool shadow = c->rules.shadow_dir && c->rules.shadow_dir[0];
    if (shadow)
        bad += cf_check_path(out, prefix, c, 0, "rules.shadow_dir", NULL, c->rules.shadow_dir,
                             CF_PATH_DIR);
    if (shadow && c->rules.shadow_report && c->rules.shadow_report[0])
        bad += cf_check_path(out, prefix, c, 0, "rules.shadow_report", NULL, c->rules.shadow_report,
                             CF_PATH_OUTPUT);
    if (c->kafka.embedded && c->kafka.bootstrap_file[0])
        bad += cf_check_path(out, prefix, c, 0, "kafka.bootstrap_file", NULL,
                             c->kafka.bootstrap_file, CF_PATH_OUTPUT);
    bad += cf_check_props(out, prefix, c, "consumer", c->kafka.consumer, c->kafka.n_consumer);
    bad += cf_check_props(out, prefix, c, "producer", c->kafka.producer, c->kafka.n_producer);
    return bad;
}

void td_config_free(td_config *c) {
    if (!c) return;
    free(c->path);
    for (size_t i = 0; i < TD_CFG_NKEYS; i++) {
        const td_config_key *k = &cf_keys[i];
        void *dst = (char *)c + k->off;
        size_t *n = (size_t *)((char *)c + k->off_n);
        switch (k->type) {
        case TD_CFG_STRING:
            if (k->flags & TD_CFG_F_SECRET) cf_wipe(*(char **)dst);
            free(*(char **)dst);
            break;
        case TD_CFG_TOPICS:
            for (size_t j = 0; j < *n; j++)
                free((*(char ***)dst)[j]);
            free(*(char ***)dst);
            break;
        case TD_CFG_PASSTHROUGH:
            cf_kv_free(*(td_kv **)dst, *n);
            break;
        default:
            break;
        }
    }
    free(c);
}
