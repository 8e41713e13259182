/*
 * td_kafka.c - consumer group, idempotent producer, dead letters and the
 * embedded broker (see td_kafka.h for the contract).
 *
 * Why rounds: the daemon's durability rule is "input offsets are stored only
 * after everything the batch caused is acknowledged". A round is the set of
 * messages one batch produced; td_kafka_round_wait does not return success
 * until the delivery report of each of them said "persisted" (acks=all),
 * re-sending any that failed. Payloads are kept in the round's arena until
 * then, so a re-send needs nothing from the caller. With enable.idempotence
 * the broker de-duplicates librdkafka's own retries; a re-send after a failed
 * delivery report may duplicate a message, which the contract allows (every
 * recommendation at least once, always with the same id).
 *
 * Why pause rather than stop polling when Redis is down: a consumer that does
 * not call rd_kafka_consumer_poll for max.poll.interval.ms is evicted from
 * the group, which triggers a rebalance for everyone. Pausing stops fetching
 * but keeps the membership alive while we poll.
 */
#include "td_kafka.h"

#include <errno.h>
#include <fcntl.h>
#include <librdkafka/rdkafka_mock.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "td_clock.h"
#include "td_health.h"
#include "td_log.h"
#include "td_mock_nodelay.h"

typedef struct td_kout {
    uint8_t dlq;          /* 0: output (kind), 1: dead letter */
    uint8_t kind;         /* td_kafka_kind */
    uint8_t tombstone;    /* a plan with a null value */
    uint8_t state;        /* TD_KOUT_* */
    size_t key_off, klen; /* klen == SIZE_MAX: no key */
    size_t val_off, vlen;
    /* dead letters: NUL-terminated strings in the arena */
    size_t reason_off, field_off, topic_off;
    int32_t partition;
    int64_t offset;
} td_kout;

enum { TD_KOUT_INFLIGHT = 0, TD_KOUT_ACKED = 1, TD_KOUT_FAILED = 2 };

/* An assigned partition, for the horizon. rkt is learnt from its first
 * message (NULL before), so later lookups compare pointers. */
typedef struct kf_part {
    char topic[256];
    int32_t partition;
    const rd_kafka_topic_t *rkt;
    td_ms max_time;      /* TD_MS_MISSING: no event consumed since assigned */
    int64_t last_offset; /* of the last message handed out; -1: none */
    bool at_end;         /* its end reported (EOF) since that message */
} kf_part;

struct td_kafka {
    const td_config *cfg;
    char *bootstraps;

    rd_kafka_t *mock_rk; /* embedded broker's own handle */
    rd_kafka_mock_cluster_t *mcluster;
    td_mock_nodelay *nodelay; /* TCP_NODELAY on the embedded broker's sockets */

    rd_kafka_t *consumer;
    rd_kafka_t *producer;
    rd_kafka_topic_t *out_rkt, *dlq_rkt, *plan_rkt; /* plan_rkt NULL: no plan topic */
    bool cooperative;
    bool closed;

    /* fatal error: set by the error callback (served on the main thread) */
    volatile sig_atomic_t fatal_set;
    char fatal[512];

    /* the current round */
    uint32_t gen;
    td_kout *out;
    size_t nout, capout;
    size_t acked, failed;
    char *arena;
    size_t alen, acap;

    /* the event-time horizon (td_kafka_horizon): one entry per assigned
     * partition, the latest occurred_at applied from it and whether the
     * consumer has reached its end */
    kf_part *parts;
    size_t nparts, capparts;

    /* hold */
    bool held;
    rd_kafka_message_t **stash; /* fetched while held: returned first later */
    size_t nstash, headstash, capstash;

    td_kafka_stats st;
};

/* ---------------------------------------------------------- callbacks */

static void kf_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
    td_log_level l = level <= 3   ? TD_LOG_ERROR
                     : level == 4 ? TD_LOG_WARN
                     : level <= 6 ? TD_LOG_INFO
                                  : TD_LOG_DEBUG;
    if (!td_log_enabled(l)) return;
    char q[1024];
    td_log(l, "librdkafka", "client=%s fac=%s detail=%s", rd_kafka_name(rk), fac,
           td_log_quote(q, sizeof q, buf));
}

static void kf_error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque) {
    td_kafka *k = opaque;
    char q[600];
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        char why[400];
        rd_kafka_resp_err_t orig = rd_kafka_fatal_error(rk, why, sizeof why);
        if (!k->fatal_set) {
            snprintf(k->fatal, sizeof k->fatal, "%s: %s", rd_kafka_err2name(orig), why);
            k->fatal_set = 1;
        }
        td_log_error("kafka fatal error", "client=%s err=%s reason=%s", rd_kafka_name(rk),
                     rd_kafka_err2name(orig), td_log_quote(q, sizeof q, why));
        return;
    }
    /* Transient: librdkafka recovers by itself (reconnects, retries). */
    td_log_warn("kafka error", "client=%s err=%s reason=%s", rd_kafka_name(rk),
                rd_kafka_err2name((rd_kafka_resp_err_t)err), td_log_quote(q, sizeof q, reason));
}

static void kf_dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    (void)rk;
    td_kafka *k = opaque;
    uintptr_t tag = (uintptr_t)m->_private;
    uint32_t gen = (uint32_t)(tag >> 32);
    size_t idx = (size_t)(tag & 0xffffffffu);
    if (gen != k->gen || idx >= k->nout) return; /* a report of an abandoned round (shutdown) */
    td_kout *o = &k->out[idx];
    if (o->state != TD_KOUT_INFLIGHT) return;
    if (m->err) {
        o->state = TD_KOUT_FAILED;
        k->failed++;
        char q[300];
        td_log_warn("delivery failed, will re-send", "topic=%s partition=%d err=%s reason=%s",
                    rd_kafka_topic_name(m->rkt), (int)m->partition, rd_kafka_err2name(m->err),
                    td_log_quote(q, sizeof q, rd_kafka_err2str(m->err)));
    } else {
        o->state = TD_KOUT_ACKED;
        k->acked++;
        if (o->dlq)
            k->st.dlq_acked++;
        else
            k->st.recs_acked++;
    }
}

static void kf_log_parts(const char *what, const rd_kafka_topic_partition_list_t *parts) {
    if (!td_log_enabled(TD_LOG_INFO)) return;
    char list[1024];
    size_t o = 0;
    list[0] = '\0';
    for (int i = 0; i < parts->cnt && o + 64 < sizeof list; i++)
        o += (size_t)snprintf(list + o, sizeof list - o, "%s%s/%d", i ? "," : "",
                              parts->elems[i].topic, (int)parts->elems[i].partition);
    td_log_info(what, "count=%d partitions=%s", parts->cnt, parts->cnt ? list : "-");
}

static void kf_stash_drop(td_kafka *k, const rd_kafka_topic_partition_list_t *parts) {
    size_t w = k->headstash;
    for (size_t r = k->headstash; r < k->nstash; r++) {
        rd_kafka_message_t *m = k->stash[r];
        if (rd_kafka_topic_partition_list_find(parts, rd_kafka_topic_name(m->rkt), m->partition))
            rd_kafka_message_destroy(m);
        else
            k->stash[w++] = m;
    }
    k->nstash = w;
}

/* ---- the horizon's partitions ---- */

static kf_part *kf_part_find(td_kafka *k, const char *topic, int32_t partition) {
    for (size_t i = 0; i < k->nparts; i++)
        if (k->parts[i].partition == partition && strcmp(k->parts[i].topic, topic) == 0)
            return &k->parts[i];
    return NULL;
}

/* The entry of a consumed message's partition (NULL: not assigned). */
static kf_part *kf_part_of(td_kafka *k, const rd_kafka_message_t *m) {
    for (size_t i = 0; i < k->nparts; i++)
        if (k->parts[i].rkt == m->rkt && k->parts[i].partition == m->partition) return &k->parts[i];
    if (!m->rkt) return NULL;
    kf_part *pt = kf_part_find(k, rd_kafka_topic_name(m->rkt), m->partition);
    if (pt) pt->rkt = m->rkt;
    return pt;
}

/* New partitions start behind and with no time: the horizon holds timers
 * back until each has delivered an event or reported its end. Out of
 * memory: the partition is not tracked (it then never holds timers). */
static void kf_parts_add(td_kafka *k, const rd_kafka_topic_partition_list_t *parts) {
    for (int i = 0; i < parts->cnt; i++) {
        const rd_kafka_topic_partition_t *tp = &parts->elems[i];
        if (kf_part_find(k, tp->topic, tp->partition)) continue;
        if (k->nparts == k->capparts) {
            size_t cap = k->capparts ? k->capparts * 2 : 16;
            kf_part *v = realloc(k->parts, cap * sizeof *v);
            if (!v) return;
            k->parts = v;
            k->capparts = cap;
        }
        kf_part *pt = &k->parts[k->nparts++];
        snprintf(pt->topic, sizeof pt->topic, "%s", tp->topic);
        pt->partition = tp->partition;
        pt->rkt = NULL;
        pt->max_time = TD_MS_MISSING;
        pt->last_offset = -1;
        pt->at_end = false;
    }
}

static void kf_parts_remove(td_kafka *k, const rd_kafka_topic_partition_list_t *parts) {
    for (int i = 0; i < parts->cnt; i++) {
        kf_part *pt = kf_part_find(k, parts->elems[i].topic, parts->elems[i].partition);
        if (pt) *pt = k->parts[--k->nparts];
    }
}

/* A message handed to the pipeline (whether its partition is caught up is
 * asked at the horizon, once per timer poll, not per message). */
static void kf_part_consumed(td_kafka *k, const rd_kafka_message_t *m) {
    kf_part *pt = kf_part_of(k, m);
    if (!pt) return;
    pt->last_offset = m->offset;
    pt->at_end = false;
}

/* Caught up: its end was reported since its last message, or that message
 * is the last one the broker reported (the cached high watermark). */
static bool kf_part_caught_up(const td_kafka *k, const kf_part *pt) {
    if (pt->at_end) return true;
    int64_t lo, hi;
    return pt->last_offset >= 0 &&
           rd_kafka_get_watermark_offsets(k->consumer, pt->topic, pt->partition, &lo, &hi) ==
               RD_KAFKA_RESP_ERR_NO_ERROR &&
           hi >= 0 && pt->last_offset + 1 >= hi;
}

void td_kafka_note_time(td_kafka *k, const rd_kafka_message_t *m, td_ms t) {
    kf_part *pt = kf_part_of(k, m);
    if (pt && (pt->max_time == TD_MS_MISSING || t > pt->max_time)) pt->max_time = t;
}

td_ms td_kafka_horizon(const td_kafka *k, td_ms wall, int *behind) {
    /* messages fetched while held are not applied yet: every partition
     * counts as behind until they are */
    bool stashed = k->headstash < k->nstash;
    /* no partition assigned (yet: before the first assignment, during a
     * rebalance, or while a dead member of the group still holds them):
     * nothing tells how far the input is, so no timer fires; the
     * instances that own the partitions fire them */
    td_ms h = k->nparts == 0 ? TD_MS_MISSING : wall;
    int n = 0;
    for (size_t i = 0; i < k->nparts; i++) {
        const kf_part *pt = &k->parts[i];
        if (!stashed && kf_part_caught_up(k, pt)) continue;
        n++;
        /* strictly before the latest event: an event of the same
         * millisecond may still come, and replay fires a timer due at an
         * event's time before that event */
        td_ms c = pt->max_time == TD_MS_MISSING ? TD_MS_MISSING : pt->max_time - 1;
        if (c < h) h = c;
    }
    if (behind) *behind = n;
    return h;
}

static void kf_rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                            rd_kafka_topic_partition_list_t *parts, void *opaque) {
    td_kafka *k = opaque;
    k->st.rebalances++;
    k->cooperative = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        if (k->cooperative) {
            rd_kafka_error_t *e = rd_kafka_incremental_assign(rk, parts);
            if (e) {
                td_log_error("incremental assign failed", "err=%s", rd_kafka_error_name(e));
                rd_kafka_error_destroy(e);
                return;
            }
        } else {
            rd_kafka_assign(rk, parts);
        }
        k->st.assigned += parts->cnt;
        kf_parts_add(k, parts);
        if (k->held) rd_kafka_pause_partitions(rk, parts);
        kf_log_parts("partitions assigned", parts);
    } else if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS) {
        bool lost = rd_kafka_assignment_lost(rk);
        /* Commit what is stored so the next owner starts where we stopped
         * (it would be correct without: state positions skip re-applied
         * events, but it saves re-publishing recommendations). */
        if (!lost) {
            rd_kafka_resp_err_t ce = rd_kafka_commit(rk, NULL, 0);
            if (ce && ce != RD_KAFKA_RESP_ERR__NO_OFFSET)
                td_log_warn("commit on revoke failed", "err=%s", rd_kafka_err2name(ce));
        }
        kf_stash_drop(k, parts);
        if (k->cooperative)
            kf_parts_remove(k, parts);
        else
            k->nparts = 0;
        if (k->cooperative) {
            rd_kafka_error_t *e = rd_kafka_incremental_unassign(rk, parts);
            if (e) {
                td_log_error("incremental unassign failed", "err=%s", rd_kafka_error_name(e));
                rd_kafka_error_destroy(e);
            }
        } else {
            rd_kafka_assign(rk, NULL);
        }
        k->st.assigned -= parts->cnt;
        if (k->st.assigned < 0 || !k->cooperative) k->st.assigned = 0;
        kf_log_parts(lost ? "partitions lost" : "partitions revoked", parts);
    } else {
        td_log_error("rebalance error", "err=%s", rd_kafka_err2name(err));
        if (!k->cooperative) rd_kafka_assign(rk, NULL);
    }
}

/* ------------------------------------------------------------- set-up */

static int kf_set(rd_kafka_conf_t *conf, const char *name, const char *val, char *err,
                  size_t errcap) {
    char e[256];
    if (rd_kafka_conf_set(conf, name, val, e, sizeof e) != RD_KAFKA_CONF_OK) {
        snprintf(err, errcap, "librdkafka: %s: %s", name, e);
        return -1;
    }
    return 0;
}

static int kf_passthrough(const td_kafka *k, rd_kafka_conf_t *conf, const td_kv *kv, size_t n,
                          const char *group, char *err, size_t errcap) {
    for (size_t i = 0; i < n; i++) {
        char e[256];
        if (rd_kafka_conf_set(conf, kv[i].key, kv[i].val, e, sizeof e) != RD_KAFKA_CONF_OK) {
            snprintf(err, errcap, "%s:%d: kafka.%s: librdkafka rejects %s: %s", k->cfg->path,
                     kv[i].line, group, kv[i].key, e);
            return -1;
        }
    }
    return 0;
}

static int kf_write_bootstrap(const char *file, const char *addr, char *err, size_t errcap) {
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", file, (long)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f) {
        snprintf(err, errcap, "kafka.bootstrap_file: cannot write %s: %s", tmp, strerror(errno));
        return -1;
    }
    fprintf(f, "%s\n", addr);
    if (fclose(f) != 0 || rename(tmp, file) != 0) {
        snprintf(err, errcap, "kafka.bootstrap_file: cannot write %s: %s", file, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return 0;
}

static int kf_start_embedded(td_kafka *k, char *err, size_t errcap) {
    const td_config *c = k->cfg;
    char e[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set_log_cb(conf, kf_log_cb);
    if (kf_set(conf, "client.id", "touchd-embedded", err, errcap) < 0) {
        rd_kafka_conf_destroy(conf);
        return -1;
    }
    k->mock_rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, e, sizeof e);
    if (!k->mock_rk) {
        rd_kafka_conf_destroy(conf);
        snprintf(err, errcap, "embedded broker: %s", e);
        return -1;
    }
    k->mcluster = rd_kafka_mock_cluster_new(k->mock_rk, 1);
    if (!k->mcluster) {
        snprintf(err, errcap, "embedded broker: cannot create the mock cluster");
        return -1;
    }
    int np = c->kafka.embedded_partitions;
    const char *topics[67];
    size_t nt = 0;
    for (size_t i = 0; i < c->kafka.n_input_topics && nt < 64; i++)
        topics[nt++] = c->kafka.input_topics[i];
    topics[nt++] = c->kafka.output_topic;
    topics[nt++] = c->kafka.dead_letter_topic;
    if (*c->kafka.plan_topic) topics[nt++] = c->kafka.plan_topic;
    for (size_t i = 0; i < nt; i++) {
        rd_kafka_resp_err_t r = rd_kafka_mock_topic_create(k->mcluster, topics[i], np, 1);
        if (r) {
            snprintf(err, errcap, "embedded broker: cannot create topic %s: %s", topics[i],
                     rd_kafka_err2str(r));
            return -1;
        }
    }
    k->bootstraps = strdup(rd_kafka_mock_cluster_bootstraps(k->mcluster));
    if (!k->bootstraps) {
        snprintf(err, errcap, "embedded broker: out of memory");
        return -1;
    }
    /* The mock broker leaves Nagle on: its small responses (produce acks,
     * fetches) would wait for the clients' delayed ACKs. */
    k->nodelay = td_mock_nodelay_new(k->bootstraps);
    if (!k->nodelay || td_mock_nodelay_start(k->nodelay, 100) != 0) {
        td_mock_nodelay_free(k->nodelay);
        k->nodelay = NULL;
        snprintf(err, errcap, "embedded broker: cannot start the socket option watcher");
        return -1;
    }
    td_log_info("embedded broker started", "bootstrap=%s partitions=%d topics=%zu", k->bootstraps,
                np, nt);
    if (c->kafka.bootstrap_file[0]) {
        if (kf_write_bootstrap(c->kafka.bootstrap_file, k->bootstraps, err, errcap) < 0) return -1;
        td_log_info("bootstrap address written", "file=%s", c->kafka.bootstrap_file);
    }
    return 0;
}

td_kafka *td_kafka_new(const td_config *cfg, char *err, size_t errcap) {
    td_kafka *k = calloc(1, sizeof *k);
    if (!k) {
        snprintf(err, errcap, "out of memory");
        return NULL;
    }
    k->cfg = cfg;
    k->gen = 1;
    if (cfg->kafka.embedded) {
        if (kf_start_embedded(k, err, errcap) < 0) goto fail;
    } else {
        k->bootstraps = strdup(cfg->kafka.brokers);
    }

    char e[512];
    /* ---- consumer ---- */
    rd_kafka_conf_t *cc = rd_kafka_conf_new();
    if (kf_set(cc, "bootstrap.servers", k->bootstraps, err, errcap) < 0 ||
        kf_set(cc, "group.id", cfg->kafka.group_id, err, errcap) < 0 ||
        kf_set(cc, "client.id", "touchd-consumer", err, errcap) < 0 ||
        kf_set(cc, "partition.assignment.strategy", "cooperative-sticky", err, errcap) < 0 ||
        kf_set(cc, "enable.auto.offset.store", "false", err, errcap) < 0 ||
        kf_set(cc, "enable.auto.commit", "true", err, errcap) < 0 ||
        kf_set(cc, "auto.commit.interval.ms", "1000", err, errcap) < 0 ||
        kf_set(cc, "auto.offset.reset", "earliest", err, errcap) < 0 ||
        kf_set(cc, "socket.nagle.disable", "true", err, errcap) < 0 ||
        (cfg->kafka.instance_id[0] &&
         kf_set(cc, "group.instance.id", cfg->kafka.instance_id, err, errcap) < 0) ||
        kf_passthrough(k, cc, cfg->kafka.consumer, cfg->kafka.n_consumer, "consumer", err, errcap) <
            0 ||
        /* after the pass-through: the horizon needs end-of-partition events */
        kf_set(cc, "enable.partition.eof", "true", err, errcap) < 0) {
        rd_kafka_conf_destroy(cc);
        goto fail;
    }
    rd_kafka_conf_set_opaque(cc, k);
    rd_kafka_conf_set_log_cb(cc, kf_log_cb);
    rd_kafka_conf_set_error_cb(cc, kf_error_cb);
    rd_kafka_conf_set_rebalance_cb(cc, kf_rebalance_cb);
    k->consumer = rd_kafka_new(RD_KAFKA_CONSUMER, cc, e, sizeof e);
    if (!k->consumer) {
        rd_kafka_conf_destroy(cc);
        snprintf(err, errcap, "kafka consumer: %s", e);
        goto fail;
    }
    rd_kafka_poll_set_consumer(k->consumer);

    /* ---- producer ---- */
    rd_kafka_conf_t *pc = rd_kafka_conf_new();
    if (kf_set(pc, "bootstrap.servers", k->bootstraps, err, errcap) < 0 ||
        kf_set(pc, "client.id", "touchd-producer", err, errcap) < 0 ||
        kf_set(pc, "enable.idempotence", "true", err, errcap) < 0 ||
        kf_set(pc, "acks", "all", err, errcap) < 0 ||
        kf_set(pc, "linger.ms", "1", err, errcap) < 0 ||
        kf_set(pc, "socket.nagle.disable", "true", err, errcap) < 0 ||
        kf_passthrough(k, pc, cfg->kafka.producer, cfg->kafka.n_producer, "producer", err, errcap) <
            0) {
        rd_kafka_conf_destroy(pc);
        goto fail;
    }
    rd_kafka_conf_set_opaque(pc, k);
    rd_kafka_conf_set_log_cb(pc, kf_log_cb);
    rd_kafka_conf_set_error_cb(pc, kf_error_cb);
    rd_kafka_conf_set_dr_msg_cb(pc, kf_dr_cb);
    k->producer = rd_kafka_new(RD_KAFKA_PRODUCER, pc, e, sizeof e);
    if (!k->producer) {
        rd_kafka_conf_destroy(pc);
        snprintf(err, errcap, "kafka producer: %s", e);
        goto fail;
    }
    k->out_rkt = rd_kafka_topic_new(k->producer, cfg->kafka.output_topic, NULL);
    k->dlq_rkt = rd_kafka_topic_new(k->producer, cfg->kafka.dead_letter_topic, NULL);
    if (*cfg->kafka.plan_topic)
        k->plan_rkt = rd_kafka_topic_new(k->producer, cfg->kafka.plan_topic, NULL);

    /* ---- subscribe ---- */
    rd_kafka_topic_partition_list_t *sub =
        rd_kafka_topic_partition_list_new((int)cfg->kafka.n_input_topics);
    for (size_t i = 0; i < cfg->kafka.n_input_topics; i++)
        rd_kafka_topic_partition_list_add(sub, cfg->kafka.input_topics[i], RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t se = rd_kafka_subscribe(k->consumer, sub);
    rd_kafka_topic_partition_list_destroy(sub);
    if (se) {
        snprintf(err, errcap, "kafka subscribe: %s", rd_kafka_err2str(se));
        goto fail;
    }
    char topics[512];
    size_t o = 0;
    topics[0] = '\0';
    for (size_t i = 0; i < cfg->kafka.n_input_topics && o + 8 < sizeof topics; i++)
        o += (size_t)snprintf(topics + o, sizeof topics - o, "%s%s", i ? "," : "",
                              cfg->kafka.input_topics[i]);
    td_log_info("kafka connected",
                "bootstrap=%s group=%s instance=%s input=%s output=%s dead_letter=%s",
                k->bootstraps, cfg->kafka.group_id,
                cfg->kafka.instance_id[0] ? cfg->kafka.instance_id : "-", topics,
                cfg->kafka.output_topic, cfg->kafka.dead_letter_topic);
    return k;
fail:
    k->closed = true;
    td_kafka_free(k);
    return NULL;
}

void td_kafka_close(td_kafka *k, int timeout_ms) {
    if (!k || k->closed) return;
    k->closed = true;
    if (k->consumer) {
        rd_kafka_resp_err_t ce = rd_kafka_commit(k->consumer, NULL, 0);
        if (ce && ce != RD_KAFKA_RESP_ERR__NO_OFFSET)
            td_log_warn("final commit failed", "err=%s", rd_kafka_err2name(ce));
        else
            td_log_info("offsets committed", "final=true");
        rd_kafka_resp_err_t xe = rd_kafka_consumer_close(k->consumer);
        if (xe) td_log_warn("consumer close", "err=%s", rd_kafka_err2name(xe));
    }
    if (k->producer) {
        rd_kafka_resp_err_t fe = rd_kafka_flush(k->producer, timeout_ms);
        if (fe)
            td_log_warn("producer flush at close", "err=%s pending=%d", rd_kafka_err2name(fe),
                        rd_kafka_outq_len(k->producer));
    }
}

void td_kafka_free(td_kafka *k) {
    if (!k) return;
    td_kafka_close(k, 5000);
    for (size_t i = k->headstash; i < k->nstash; i++)
        rd_kafka_message_destroy(k->stash[i]);
    free(k->stash);
    free(k->parts);
    if (k->out_rkt) rd_kafka_topic_destroy(k->out_rkt);
    if (k->dlq_rkt) rd_kafka_topic_destroy(k->dlq_rkt);
    if (k->plan_rkt) rd_kafka_topic_destroy(k->plan_rkt);
    if (k->consumer) rd_kafka_destroy(k->consumer);
    if (k->producer) rd_kafka_destroy(k->producer);
    td_mock_nodelay_free(k->nodelay);
    if (k->mcluster) {
        rd_kafka_mock_cluster_destroy(k->mcluster);
        if (k->cfg->kafka.bootstrap_file[0]) unlink(k->cfg->kafka.bootstrap_file);
    }
    if (k->mock_rk) rd_kafka_destroy(k->mock_rk);
    free(k->out);
    free(k->arena);
    free(k->bootstraps);
    free(k);
}

const char *td_kafka_bootstraps(const td_kafka *k) { return k->bootstraps; }

const char *td_kafka_fatal(td_kafka *k) { return k->fatal_set ? k->fatal : NULL; }

/* ------------------------------------------------------------ consume */

static void kf_consumer_error(td_kafka *k, rd_kafka_message_t *m) {
    if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
        kf_part *pt = kf_part_of(k, m);
        if (pt) pt->at_end = true;
        td_log_debug("partition end", "topic=%s partition=%d offset=%lld tracked=%s",
                     m->rkt ? rd_kafka_topic_name(m->rkt) : "-", (int)m->partition,
                     (long long)m->offset, pt ? "true" : "false");
        return;
    }
    if (m->err == RD_KAFKA_RESP_ERR__FATAL) {
        kf_error_cb(k->consumer, m->err, rd_kafka_message_errstr(m), k);
        return;
    }
    char q[300];
    td_log_warn("consumer error", "topic=%s partition=%d err=%s reason=%s",
                m->rkt ? rd_kafka_topic_name(m->rkt) : "-", (int)m->partition,
                rd_kafka_err2name(m->err), td_log_quote(q, sizeof q, rd_kafka_message_errstr(m)));
}

rd_kafka_message_t *td_kafka_poll(td_kafka *k, int timeout_ms) {
    if (k->headstash < k->nstash) {
        rd_kafka_message_t *m = k->stash[k->headstash++];
        if (k->headstash == k->nstash) k->headstash = k->nstash = 0;
        kf_part_consumed(k, m);
        return m;
    }
    for (;;) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(k->consumer, timeout_ms);
        if (!m) return NULL;
        if (!m->err) {
            k->st.consumed++;
            kf_part_consumed(k, m);
            return m;
        }
        bool eof = m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF;
        kf_consumer_error(k, m);
        rd_kafka_message_destroy(m);
        /* an end of partition is news for the horizon, not the end of a
         * batch: look for a message that is already there */
        if (!eof) return NULL;
        timeout_ms = 0;
    }
}

/* -------------------------------------------------------------- rounds */

void td_kafka_round_begin(td_kafka *k) {
    k->gen++;
    k->nout = 0;
    k->acked = k->failed = 0;
    k->alen = 0;
}

size_t td_kafka_round_size(const td_kafka *k) { return k->nout; }

static size_t kf_arena_put(td_kafka *k, const void *p, size_t n, bool nul) {
    size_t need = k->alen + n + (nul ? 1 : 0);
    if (need > k->acap) {
        size_t cap = k->acap ? k->acap : 65536;
        while (cap < need)
            cap *= 2;
        char *a = realloc(k->arena, cap);
        if (!a) abort(); /* out of memory: nothing sensible to do in a daemon */
        k->arena = a;
        k->acap = cap;
    }
    size_t off = k->alen;
    if (n) memcpy(k->arena + off, p, n);
    k->alen += n;
    if (nul) k->arena[k->alen++] = '\0';
    return off;
}

static td_kout *kf_out_new(td_kafka *k) {
    if (k->nout == k->capout) {
        size_t cap = k->capout ? k->capout * 2 : 1024;
        td_kout *v = realloc(k->out, cap * sizeof *v);
        if (!v) abort();
        k->out = v;
        k->capout = cap;
    }
    td_kout *o = &k->out[k->nout++];
    memset(o, 0, sizeof *o);
    return o;
}

/* Enqueues out[idx] with the producer, polling while the local queue is full.
 * @returns 0, or -1 on a fatal error. */
static int kf_enqueue(td_kafka *k, size_t idx) {
    td_kout *o = &k->out[idx];
    void *tag = (void *)(((uintptr_t)k->gen << 32) | (uintptr_t)idx);
    const char *key = o->klen == SIZE_MAX ? NULL : k->arena + o->key_off;
    size_t klen = o->klen == SIZE_MAX ? 0 : o->klen;
    int64_t warned_at = 0;
    o->state = TD_KOUT_INFLIGHT;
    for (;;) {
        if (k->fatal_set) return -1;
        rd_kafka_resp_err_t err;
        if (!o->dlq) {
            static const char *const kinds[] = {"recommendation", "withdrawal", "plan"};
            rd_kafka_headers_t *h = rd_kafka_headers_new(1);
            rd_kafka_header_add(h, "touchd-kind", -1, kinds[o->kind], -1);
            rd_kafka_topic_t *rkt = o->kind == TD_KK_PLAN ? k->plan_rkt : k->out_rkt;
            /* the macro casts without parentheses: a ternary there binds wrong */
            char *val = o->tombstone ? NULL : k->arena + o->val_off;
            err = rd_kafka_producev(k->producer, RD_KAFKA_V_RKT(rkt), RD_KAFKA_V_KEY(key, klen),
                                    RD_KAFKA_V_VALUE(val, o->tombstone ? 0 : o->vlen),
                                    RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(h),
                                    RD_KAFKA_V_OPAQUE(tag), RD_KAFKA_V_END);
            if (err) rd_kafka_headers_destroy(h);
        } else {
            char part[16], off[24];
            snprintf(part, sizeof part, "%d", (int)o->partition);
            snprintf(off, sizeof off, "%lld", (long long)o->offset);
            rd_kafka_headers_t *h = rd_kafka_headers_new(5);
            rd_kafka_header_add(h, "touchd-reason", -1, k->arena + o->reason_off, -1);
            rd_kafka_header_add(h, "touchd-field", -1, k->arena + o->field_off, -1);
            rd_kafka_header_add(h, "touchd-source-topic", -1, k->arena + o->topic_off, -1);
            rd_kafka_header_add(h, "touchd-source-partition", -1, part, -1);
            rd_kafka_header_add(h, "touchd-source-offset", -1, off, -1);
            err = rd_kafka_producev(k->producer, RD_KAFKA_V_RKT(k->dlq_rkt),
                                    RD_KAFKA_V_KEY(key, klen),
                                    RD_KAFKA_V_VALUE(k->arena + o->val_off, o->vlen),
                                    RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(h),
                                    RD_KAFKA_V_OPAQUE(tag), RD_KAFKA_V_END);
            if (err) rd_kafka_headers_destroy(h); /* ownership passes only on success */
        }
        if (!err) return 0;
        if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
            /* Back-pressure: serve delivery reports to make room. */
            k->st.queue_full++;
            rd_kafka_poll(k->producer, 10);
            continue;
        }
        if (err == RD_KAFKA_RESP_ERR__FATAL) return -1;
        /* Anything else (unknown topic, message too large...) cannot be
         * skipped without losing a recommendation: log and retry slowly. */
        int64_t now = td_mono_ms();
        if (now - warned_at > 10000) {
            td_log_error("produce failed, retrying", "topic=%s err=%s",
                         o->dlq ? k->cfg->kafka.dead_letter_topic : k->cfg->kafka.output_topic,
                         rd_kafka_err2name(err));
            warned_at = now;
        }
        rd_kafka_poll(k->producer, 200);
    }
}

int td_kafka_send_out(td_kafka *k, td_kafka_kind kind, const char *key, size_t klen,
                      const char *val, size_t vlen) {
    if (kind == TD_KK_PLAN && !k->plan_rkt) return -1;
    td_kout *o = kf_out_new(k);
    o->kind = (uint8_t)kind;
    o->tombstone = val == NULL;
    o->key_off = kf_arena_put(k, key, klen, false);
    o->klen = klen;
    o->val_off = kf_arena_put(k, val, val ? vlen : 0, false);
    o->vlen = val ? vlen : 0;
    k->st.recs_sent++;
    if (kind == TD_KK_WITHDRAWAL) k->st.wds_sent++;
    if (kind == TD_KK_PLAN) k->st.plans_sent++;
    return kf_enqueue(k, k->nout - 1);
}

int td_kafka_send_rec(td_kafka *k, const char *key, size_t klen, const char *val, size_t vlen) {
    return td_kafka_send_out(k, TD_KK_RECOMMENDATION, key, klen, val, vlen);
}

bool td_kafka_has_plans(const td_kafka *k) { return k->plan_rkt != NULL; }

int td_kafka_send_dlq(td_kafka *k, const rd_kafka_message_t *src, const char *reason,
                      const char *field) {
    td_kout *o = kf_out_new(k);
    o->dlq = 1;
    if (src->key) {
        o->key_off = kf_arena_put(k, src->key, src->key_len, false);
        o->klen = src->key_len;
    } else {
        o->klen = SIZE_MAX;
    }
    o->val_off = kf_arena_put(k, src->payload, src->payload ? src->len : 0, false);
    o->vlen = src->payload ? src->len : 0;
    o->reason_off = kf_arena_put(k, reason ? reason : "", strlen(reason ? reason : ""), true);
    o->field_off = kf_arena_put(k, field ? field : "", strlen(field ? field : ""), true);
    const char *t = rd_kafka_topic_name(src->rkt);
    o->topic_off = kf_arena_put(k, t, strlen(t), true);
    o->partition = src->partition;
    o->offset = src->offset;
    k->st.dlq_sent++;
    return kf_enqueue(k, k->nout - 1);
}

int td_kafka_round_wait(td_kafka *k, const volatile sig_atomic_t *stop, int stop_grace_ms) {
    int64_t start = td_mono_ms();
    int64_t give_up_at = -1;
    bool holding = false;
    int rc = 0;
    while (k->acked < k->nout) {
        if (k->fatal_set) {
            rc = -1;
            break;
        }
        if (k->failed) {
            for (size_t i = 0; i < k->nout; i++) {
                if (k->out[i].state != TD_KOUT_FAILED) continue;
                k->failed--;
                k->st.resent++;
                if (kf_enqueue(k, i) < 0) {
                    rc = -1;
                    goto out;
                }
            }
        }
        /* flush() sends at once (ignores linger) and serves delivery reports. */
        rd_kafka_flush(k->producer, holding ? 100 : 10);
        int64_t now = td_mono_ms();
        if (!holding && now - start > 1000 && k->acked < k->nout) {
            td_log_warn("waiting for delivery reports", "pending=%zu", k->nout - k->acked);
            td_kafka_hold(k);
            holding = true;
        }
        if (holding) td_kafka_keepalive(k, 0);
        if (stop && *stop) {
            if (give_up_at < 0)
                give_up_at = now + stop_grace_ms;
            else if (now >= give_up_at && k->acked < k->nout) {
                td_log_error("shutdown: giving up on undelivered messages; their input offsets "
                             "are not stored and will be consumed again",
                             "pending=%zu", k->nout - k->acked);
                rc = -2;
                break;
            }
        }
    }
out:
    if (holding) td_kafka_release(k);
    return rc;
}

/* ------------------------------------------------------------- offsets */

void td_kafka_store(td_kafka *k, rd_kafka_message_t *const *msgs, size_t n) {
    if (n == 0) return;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(16);
    for (size_t i = 0; i < n; i++) {
        const rd_kafka_message_t *m = msgs[i];
        const char *t = rd_kafka_topic_name(m->rkt);
        rd_kafka_topic_partition_t *p = NULL;
        /* The list is short (partitions of one batch): a linear scan from the
         * end finds the common case (same partition as before) at once. */
        for (int j = l->cnt - 1; j >= 0; j--)
            if (l->elems[j].partition == m->partition && strcmp(l->elems[j].topic, t) == 0) {
                p = &l->elems[j];
                break;
            }
        if (!p) p = rd_kafka_topic_partition_list_add(l, t, m->partition);
        if (m->offset + 1 > p->offset) p->offset = m->offset + 1;
    }
    rd_kafka_resp_err_t err = rd_kafka_offsets_store(k->consumer, l);
    if (err || td_log_enabled(TD_LOG_DEBUG)) {
        for (int j = 0; j < l->cnt; j++) {
            if (l->elems[j].err)
                td_log_debug("offset not stored (partition not assigned any more)",
                             "topic=%s partition=%d offset=%lld err=%s", l->elems[j].topic,
                             (int)l->elems[j].partition, (long long)l->elems[j].offset,
                             rd_kafka_err2name(l->elems[j].err));
        }
    }
    rd_kafka_topic_partition_list_destroy(l);
}

/* ---------------------------------------------------------------- hold */

void td_kafka_hold(td_kafka *k) {
    if (k->held) return;
    k->held = true;
    rd_kafka_topic_partition_list_t *a = NULL;
    if (rd_kafka_assignment(k->consumer, &a) == RD_KAFKA_RESP_ERR_NO_ERROR && a) {
        rd_kafka_pause_partitions(k->consumer, a);
        td_log_info("consumption paused", "partitions=%d", a->cnt);
        rd_kafka_topic_partition_list_destroy(a);
    }
}

void td_kafka_keepalive(td_kafka *k, int timeout_ms) {
    td_health_beat(); /* every hold waits here: alive, waiting by design */
    rd_kafka_message_t *m = rd_kafka_consumer_poll(k->consumer, timeout_ms);
    if (!m) return;
    if (m->err) {
        kf_consumer_error(k, m);
        rd_kafka_message_destroy(m);
        return;
    }
    /* Fetched before the pause took effect: keep it, in order. */
    k->st.consumed++;
    if (k->nstash == k->capstash) {
        size_t cap = k->capstash ? k->capstash * 2 : 256;
        rd_kafka_message_t **v = realloc(k->stash, cap * sizeof *v);
        if (!v) abort();
        k->stash = v;
        k->capstash = cap;
    }
    k->stash[k->nstash++] = m;
}

void td_kafka_release(td_kafka *k) {
    if (!k->held) return;
    k->held = false;
    rd_kafka_topic_partition_list_t *a = NULL;
    if (rd_kafka_assignment(k->consumer, &a) == RD_KAFKA_RESP_ERR_NO_ERROR && a) {
        rd_kafka_resume_partitions(k->consumer, a);
        td_log_info("consumption resumed", "partitions=%d", a->cnt);
        rd_kafka_topic_partition_list_destroy(a);
    }
}

void td_kafka_get_stats(const td_kafka *k, td_kafka_stats *out) { *out = k->st; }

size_t td_kafka_lags(td_kafka *k, td_kafka_lag *out, size_t cap) {
    size_t n = k->nparts < cap ? k->nparts : cap;
    if (n == 0 || k->closed) return 0;
    rd_kafka_topic_partition_list_t *tl = rd_kafka_topic_partition_list_new((int)n);
    if (!tl) return 0;
    for (size_t i = 0; i < n; i++)
        rd_kafka_topic_partition_list_add(tl, k->parts[i].topic, k->parts[i].partition);
    size_t w = 0;
    if (rd_kafka_position(k->consumer, tl) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        for (int i = 0; i < tl->cnt; i++) {
            const rd_kafka_topic_partition_t *tp = &tl->elems[i];
            int64_t lo, hi;
            if (tp->offset < 0 ||
                rd_kafka_get_watermark_offsets(k->consumer, tp->topic, tp->partition, &lo, &hi) !=
                    RD_KAFKA_RESP_ERR_NO_ERROR ||
                hi < 0)
                continue;
            td_kafka_lag *l = &out[w++];
            snprintf(l->topic, sizeof l->topic, "%s", tp->topic);
            l->partition = tp->partition;
            l->lag = hi > tp->offset ? hi - tp->offset : 0;
        }
    }
    rd_kafka_topic_partition_list_destroy(tl);
    return w;
}
