/*
 * td_cmd_run.c - `touchd run -c FILE`: parse the command line, load the
 * configuration, install signal handlers, run the daemon (td_daemon.h).
 *
 * Signal handlers only set flags (td_daemon_stop_requested,
 * td_daemon_reload_requested); the loop acts on them between batches.
 * A second SIGTERM/SIGINT while stopping is ignored on purpose: the batch in
 * flight finishes (bounded by the delivery and Redis waits) so offsets are
 * never committed for work that is not durable. Use SIGKILL to stop at once;
 * that is safe too (see docs/operations.md).
 *
 * @locality main thread.
 */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "td_cli.h"
#include "td_config.h"
#include "td_daemon.h"
#include "td_log.h"

static void cr_usage(FILE *f) {
    fprintf(f, "usage: touchd run -c FILE [--redis HOST:PORT] [--rules DIR] [--log-level LEVEL]\n"
               "\n"
               "The daemon: consumes prospect events from Kafka, keeps per-prospect state in\n"
               "Redis, evaluates the rules and publishes recommendations to Kafka. With\n"
               "kafka.brokers = \"embedded\" it starts an in-process Kafka-protocol broker and\n"
               "logs (and writes to kafka.bootstrap_file) its address.\n"
               "\n"
               "  -c, --config FILE    configuration file (docs/config.md); required\n"
               "      --redis ADDR     override redis: HOST:PORT, HOST, [V6]:PORT or unix:/PATH\n"
               "      --rules DIR      override rules.dir\n"
               "      --log-level L    override log.level: debug, info, warn, error\n"
               "      --check-config   check the configuration and the paths it names (the\n"
               "                       rules directory, CA and key files...), print it, exit\n"
               "  -h, --help           this help\n"
               "\n"
               "Signals: SIGTERM/SIGINT finish the current batch, commit offsets and exit 0;\n"
               "SIGHUP reloads the rules (a ruleset with errors is rejected, the previous one\n"
               "keeps serving). The rules directory is also polled for changes.\n"
               "\n"
               "Logs: logfmt lines on stderr (ts=... level=... msg=\"...\" key=value...).\n"
               "Exit status: 0 clean stop, 1 rules do not compile at start, 2 usage or\n"
               "configuration error, 4 fatal runtime error (Kafka fatal error, Redis\n"
               "unreachable or refusing commands at start: a missing or wrong password, an\n"
               "ACL, maxclients). Documentation: docs/operations.md, docs/config.md.\n");
}

static void cr_on_stop(int sig) {
    (void)sig;
    td_daemon_stop_requested = 1;
}

static void cr_on_hup(int sig) {
    (void)sig;
    td_daemon_reload_requested = 1;
}

static void cr_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = cr_on_stop;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = cr_on_hup;
    sigaction(SIGHUP, &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
}

static void cr_print_config(const td_config *c, FILE *f) {
    fprintf(f, "config %s: ok\n", c->path);
    fprintf(f, "kafka.brokers = %s\nkafka.group_id = %s\nkafka.instance_id = %s\n",
            c->kafka.brokers, c->kafka.group_id,
            c->kafka.instance_id[0] ? c->kafka.instance_id : "(dynamic membership)");
    fprintf(f, "kafka.input_topics =");
    for (size_t i = 0; i < c->kafka.n_input_topics; i++)
        fprintf(f, " %s", c->kafka.input_topics[i]);
    fprintf(f, "\nkafka.output_topic = %s\nkafka.dead_letter_topic = %s\n", c->kafka.output_topic,
            c->kafka.dead_letter_topic);
    for (size_t i = 0; i < c->kafka.n_consumer; i++)
        fprintf(f, "kafka.consumer: %s = (set)\n", c->kafka.consumer[i].key);
    for (size_t i = 0; i < c->kafka.n_producer; i++)
        fprintf(f, "kafka.producer: %s = (set)\n", c->kafka.producer[i].key);
    fprintf(f, "redis = %s%s:%d db %d prefix %s password %s\n", c->redis.unix_socket ? "unix:" : "",
            c->redis.host, c->redis.port, c->redis.db, c->redis.key_prefix,
            c->redis.password ? "(set)" : "(none)");
    fprintf(f, "rules.dir = %s\nrules.reload_poll_ms = %d\nrules.settle_ms = %d\n", c->rules.dir,
            c->rules.reload_poll_ms, c->rules.settle_ms);
    fprintf(
        f,
        "rules.shadow_dir = %s\nrules.shadow_report = %s\nrules.shadow_report_interval_ms = %d\n",
        c->rules.shadow_dir && c->rules.shadow_dir[0] ? c->rules.shadow_dir : "(none)",
        c->rules.shadow_report && c->rules.shadow_report[0] ? c->rules.shadow_report : "(none)",
        c->rules.shadow_report_interval_ms);
    fprintf(f, "kafka.shadow_topic = %s\nkafka.gift_register_topic = %s\n",
            c->kafka.shadow_topic ? c->kafka.shadow_topic : "(none)",
            c->kafka.gift_register_topic && c->kafka.gift_register_topic[0]
                ? c->kafka.gift_register_topic
                : "(off)");
    fprintf(f, "engine.batch_max_events = %d\nengine.batch_max_ms = %d\nengine.state_cache = %d\n",
            c->engine.batch_max_events, c->engine.batch_max_ms, c->engine.state_cache);
    fprintf(f,
            "timers.shards = %d\ntimers.poll_ms = %d\ntimers.claim_batch = %d\n"
            "timers.lease_ms = %d\ntimers.sweep_ms = %d\n",
            c->timers.shards, c->timers.poll_ms, c->timers.claim_batch, c->timers.lease_ms,
            c->timers.sweep_ms);
    if (c->time.overdue_policy_set)
        fprintf(f, "timers.overdue_policy = %s (the old name of time.late_policy)\n",
                c->timers.overdue_policy == TD_OVERDUE_FIRE_LATE ? "fire_late" : "drop");
    fprintf(f, "time.max_future_skew = %s\ntime.max_past_age = %s\ntime.late_policy = %s\n",
            c->time.max_future_skew_text, c->time.max_past_age_text,
            td_late_policy_name(c->time.late_policy));
    fprintf(f, "kafka.plan_topic = %s\nengine.dedup_window = %s\n",
            c->kafka.plan_topic[0] ? c->kafka.plan_topic : "(off)", c->engine.dedup_window_text);
    fprintf(f, "gifts.retention_days = %d\n", c->gifts.retention_days);
    fprintf(f, "log.level = %s\n", td_log_level_name(c->log.level));
}

int td_cmd_run(int argc, char **argv) {
    static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                         {"redis", required_argument, NULL, 'r'},
                                         {"rules", required_argument, NULL, 'R'},
                                         {"log-level", required_argument, NULL, 'l'},
                                         {"check-config", no_argument, NULL, 'C'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *path = NULL, *redis = NULL, *rules = NULL, *level = NULL;
    bool check_only = false;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            path = optarg;
            break;
        case 'r':
            redis = optarg;
            break;
        case 'R':
            rules = optarg;
            break;
        case 'l':
            level = optarg;
            break;
        case 'C':
            check_only = true;
            break;
        case 'h':
            cr_usage(stdout);
            return TD_EXIT_OK;
        default:
            cr_usage(stderr);
            return TD_EXIT_USAGE;
        }
    }
    if (!path || optind < argc) {
        fprintf(stderr, "touchd run: %s\n", !path ? "-c FILE is required" : "unexpected argument");
        cr_usage(stderr);
        return TD_EXIT_USAGE;
    }
    char err[1024];
    td_config *cfg = td_config_load(path, err, sizeof err);
    if (!cfg) {
        fprintf(stderr, "touchd run: %s\n", err);
        return TD_EXIT_USAGE;
    }
    if (td_config_override(cfg, redis, rules, level, err, sizeof err) < 0) {
        fprintf(stderr, "touchd run: %s\n", err);
        td_config_free(cfg);
        return TD_EXIT_USAGE;
    }
    if (check_only) {
        /* the paths it names: what a start would find missing only later */
        int bad = td_config_check_paths(cfg, "touchd run: ", stderr);
        if (bad == 0) cr_print_config(cfg, stdout);
        td_config_free(cfg);
        return bad ? TD_EXIT_USAGE : TD_EXIT_OK;
    }
    td_log_set_level(cfg->log.level);
    cr_signals();
    td_log_info("touchd starting", "config=%s", path);
    int rc = TD_EXIT_OK;
    td_daemon *d = td_daemon_new(cfg, &rc);
    if (d) {
        rc = td_daemon_run(d);
        td_daemon_free(d);
    }
    td_log_info("touchd stopped", "exit=%d", rc);
    td_config_free(cfg);
    return rc;
}
