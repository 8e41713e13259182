/*
 * td_config.h - the daemon's configuration file (libconfig syntax), checked
 * strictly and documented key by key in docs/config.md.
 *
 *   kafka, redis, rules, engine, timers (docs/timers.md), time (docs/events.md),
 *   gifts (docs/gifts.md), log, http (docs/operations.md "Metrics and health")
 *
 * Every key is optional. The keys, their types, defaults and bounds are one
 * table in td_config.c (td_config_keys), which parsing, defaults and the
 * "expected ..." of error messages are made from; docs/config.md documents
 * exactly those keys (tests/unit/test_config.c checks it).
 * An unknown key, a value of the wrong type or out of range is an error that
 * names the place, the key and what is allowed:
 *
 *   config/touchd.conf:12: engine.batch_max_events: expected an integer from 1
 *   to 100000, got "lots"
 *
 * Secrets (redis.password, and any kafka.consumer/producer property) may be
 * given as "env:NAME": the value is read from environment variable NAME at
 * load time (unset is an error naming the variable, never its value).
 *
 * kafka.consumer and kafka.producer pass librdkafka properties through
 * unchanged (names as in librdkafka's CONFIGURATION.md, values string, int
 * or bool); each is checked against librdkafka at load time.
 *
 * @locality main thread; a loaded td_config is read-only afterwards.
 */
#ifndef TD_CONFIG_H
#define TD_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "td_log.h"
#include "td_redis.h"
#include "td_timers.h"

/* Room for a duration as written in the file ("400d"); a longer one is
 * kept in td_duration_format's form. */
#define TD_CFG_DURATION_TEXT 32

/* One passthrough librdkafka property, with its line for error messages. */
typedef struct td_kv {
    char *key;
    char *val;
    int line;
} td_kv;

/* What a late recommendation becomes (time.late_policy). */
typedef enum td_late_policy {
    TD_LATE_MARK = 0,    /* published with "late": true, not in the plan */
    TD_LATE_PUBLISH = 1, /* published as any other */
    TD_LATE_DROP = 2     /* not published, counted */
} td_late_policy;
const char *td_late_policy_name(td_late_policy p); /* "mark", "publish", "drop" */

typedef struct td_config {
    char *path; /* the file loaded, "" for defaults */

    struct {
        char *brokers; /* "embedded" or "host:port,host:port" */
        bool embedded; /* brokers == "embedded" */
        char *group_id;
        char *instance_id; /* librdkafka's group.instance.id; "" = dynamic membership */
        char **input_topics;
        size_t n_input_topics;
        char *output_topic;
        char *dead_letter_topic;
        char *gift_register_topic; /* gift register records; "" = off (docs/gifts.md) */
        char *plan_topic;          /* the current plans (compacted); "" = off */
        char *shadow_topic;        /* shadow recommendations; default "<output_topic>.shadow" */
        bool shadow_topic_default; /* not set in the file: follows output_topic */
        char *bootstrap_file;      /* embedded: where the bootstrap address is written; "" none */
        int embedded_partitions;
        td_kv *consumer;
        size_t n_consumer;
        td_kv *producer;
        size_t n_producer;
    } kafka;

    /* redis: the strings of `redis` point into the owned copies below. */
    td_redis_conf redis;
    char *redis_host, *redis_password, *redis_username, *redis_key_prefix;
    char *redis_unix_socket; /* as written in the file; "" = none (then redis_host) */

    struct {
        char *dir;
        int reload_poll_ms; /* 0 = no polling (SIGHUP only) */
        int settle_ms;      /* a changed directory is compiled once quiet this long */
        /* shadow ruleset (docs/operations.md "Shadow ruleset"): "" = none */
        char *shadow_dir;
        char *shadow_report;           /* JSON report file; "" = none */
        int shadow_report_interval_ms; /* how often the report is rewritten */
    } rules;

    struct {
        int batch_max_events;
        int batch_max_ms;
        int state_cache;       /* prospect states kept in memory between batches; 0 = off */
        bool pipeline;         /* true: a batch is computed while the previous one is stored */
        int store_connections; /* 1 or 2: connections of a batch's state write */
        td_ms dedup_window;    /* a duplicate event id is caught at least this long */
        char dedup_window_text[TD_CFG_DURATION_TEXT];
    } engine;

    td_timers_conf timers; /* durable timers (td_timers.h, docs/timers.md) */

    /* The time bounds of intake (docs/events.md, "Time bounds"): an event
     * whose occurred_at is further ahead of the wall clock than
     * max_future_skew, or older than max_past_age, is a dead letter. The
     * texts are the durations as written (or as the defaults read), for the
     * dead-letter reasons. */
    struct {
        td_ms max_future_skew;
        td_ms max_past_age;
        char max_future_skew_text[TD_CFG_DURATION_TEXT];
        char max_past_age_text[TD_CFG_DURATION_TEXT];
        /* the catch-up policy for late recommendations (docs/recommendations.md);
         * timers.overdue_policy is its alias when late_policy is not set */
        td_late_policy late_policy;
        bool late_policy_set;
        bool overdue_policy_set;
    } time;

    struct {
        int retention_days; /* TTL of the gift register's seen keys (docs/gifts.md) */
    } gifts;

    struct {
        td_log_level level;
        char *format; /* "logfmt" */
    } log;

    /* the HTTP listener (td_http.h): /metrics, /healthz, /readyz */
    struct {
        char *listen;   /* "HOST:PORT"; "" = off */
        char *tls_cert; /* PEM file; "" = plain HTTP */
        char *tls_key;  /* PEM file; set with tls_cert */
    } http;
} td_config;

/* One key of the file, as the table in td_config.c describes it. */
typedef enum td_config_type {
    TD_CFG_STRING,      /* char *; optionally a check and what it expects */
    TD_CFG_INT,         /* int in [lo, hi] */
    TD_CFG_BOOL,        /* bool */
    TD_CFG_ENUM,        /* int: one of names (a string in the file) */
    TD_CFG_DURATION,    /* td_ms: a positive duration string ("6h"); optionally its text */
    TD_CFG_TOPICS,      /* char ** and a size_t count: a non-empty list of topic names */
    TD_CFG_PASSTHROUGH, /* td_kv * and a size_t count: librdkafka properties */
} td_config_type;

typedef struct td_config_enum {
    const char *name;
    int value;
    bool alias; /* accepted, not listed in "expected ..." */
} td_config_enum;

typedef struct td_config_key {
    const char *path; /* "redis.host": section, a dot, the key */
    td_config_type type;
    const char *def_str; /* STRING, TOPICS (one topic), DURATION (NULL: def_int): the default */
    long long def_int;   /* INT, BOOL, ENUM, DURATION (ms): the default */
    long long lo, hi;    /* INT: the bounds */
    unsigned flags;      /* TD_CFG_F_* */
    size_t off;          /* offsetof(td_config, ...) of the value */
    size_t off_n;        /* TOPICS, PASSTHROUGH: offsetof the count */
    size_t off_text;     /* DURATION: offsetof a char[TD_CFG_DURATION_TEXT] that
                          * receives the value as written; 0: none */
    /* STRING: an extra check of the value and what it then "expected"s */
    bool (*check)(const char *v);
    const char *expects;
    const td_config_enum *names; /* ENUM: terminated by a NULL name */
    const void *owned;           /* PASSTHROUGH: properties touchd owns */
    void (*after)(td_config *c); /* run after the key is read */
    const char *help;            /* one line, for readers of the table */
} td_config_key;

enum {
    TD_CFG_F_EMPTY = 1,  /* STRING: "" is allowed */
    TD_CFG_F_ENV = 2,    /* STRING: "env:NAME" is resolved */
    TD_CFG_F_SECRET = 4, /* wiped before it is freed */
};

/* The table of every key, in the order of the "allowed here" lists; *n is
 * set to its length. */
const td_config_key *td_config_keys(size_t *n);

/* A config holding every default (heap strings; free with td_config_free). */
td_config *td_config_default(void);

/*
 * Loads and checks `path`. On error returns NULL and writes one message
 * ("FILE:LINE: KEY: what is wrong") into err.
 */
td_config *td_config_load(const char *path, char *err, size_t errcap);

/* Command-line overrides (each may be NULL). redis is "HOST:PORT",
 * "[V6ADDR]:PORT", "HOST" (port unchanged) or "unix:/path". */
int td_config_override(td_config *c, const char *redis, const char *rules_dir,
                       const char *log_level, char *err, size_t errcap);

/*
 * The paths the configuration names, as `touchd run --check-config` checks
 * them (relative paths from the current directory, as touchd will open
 * them): rules.dir, and rules.shadow_dir when set, are directories touchd
 * can read; every file a kafka.consumer or kafka.producer property names
 * (those ending in ".location", such as ssl.ca.location, ssl.certificate.
 * location, ssl.key.location, ssl.keystore.location, ssl.crl.location, and
 * sasl.kerberos.keytab; ssl.ca.location may be a directory or "probe") is a
 * file touchd can read; the files touchd writes (kafka.bootstrap_file with
 * the embedded broker, rules.shadow_report with a shadow) are in a
 * directory it can write. Each problem is one line on `out`, after
 * `prefix`, naming the key (as written in the file) and the path:
 *
 *   touchd.conf:14: kafka.consumer.ssl_ca_location: cannot read the file
 *   "/etc/touchd/ca.pem" (librdkafka ssl.ca.location): No such file or
 *   directory
 *
 * @returns the number of problems (0: all good).
 */
int td_config_check_paths(const td_config *c, const char *prefix, FILE *out);

void td_config_free(td_config *c);

#endif
