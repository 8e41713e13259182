/*
 * harness.h - integration-test helpers: a real redis-server per test, temp dirs.
 *
 * Integration tests talk to the real thing, as Redis' own suite does: each
 * td_test_redis is a `redis-server` process (the Debian binary found on PATH,
 * or $TD_REDIS_SERVER) started on a free loopback port, with its own temporary
 * working directory, so tests never depend on a system Redis service and can
 * run in parallel (ctest -j) without sharing data. There is no fake Redis.
 *
 * Usage:
 *
 *     td_test_redis r = {0};          // zero = defaults: no persistence
 *     r.appendonly = true;            // optional: AOF with fsync always,
 *                                     // so data survives kill -9 + restart
 *     assert_int_equal(td_test_redis_start(&r), 0);
 *     ... connect touchd code to r.host : r.port ...
 *     redisReply *rep = td_test_redis_cmd(&r, "GET %s", "k");
 *     freeReplyObject(rep);
 *     td_test_redis_kill(&r);         // SIGKILL: a crash
 *     td_test_redis_restart(&r);      // same port, same dir
 *     td_test_redis_stop(&r);         // SIGTERM, wait, remove the dir
 *
 * The server child gets PR_SET_PDEATHSIG, so a crashing test does not leave
 * a redis-server behind. Set TD_TEST_KEEP_TMP=1 to keep temp dirs (and the
 * server's log, redis.log) for a post-mortem.
 *
 * @locality one thread per td_test_redis (tests are single-threaded).
 */
#ifndef TD_TEST_HARNESS_H
#define TD_TEST_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include <hiredis/hiredis.h>

typedef struct td_test_redis {
    /* options: set before td_test_redis_start; zero means the default */
    bool appendonly;      /* AOF persistence (appendfsync always); default off */
    int start_timeout_ms; /* wait for PING; default 10000 */
    bool unixsocket;      /* also listen on a Unix socket (sock, below) */

    /* filled by td_test_redis_start */
    char host[32]; /* "127.0.0.1" */
    int port;
    pid_t pid;      /* 0 when not running */
    char dir[256];  /* working directory (AOF files, redis.log) */
    char log[300];  /* dir + "/redis.log" */
    char sock[300]; /* dir + "/redis.sock" when unixsocket */

    redisContext *ctx; /* cached connection of td_test_redis_cmd; NULL when none */
} td_test_redis;

/*
 * Starts a redis-server on a free port of 127.0.0.1 (the port is found by
 * binding a socket to port 0; if another process takes it first the start is
 * retried on a new port) in a new temporary dir, and waits until it answers
 * PING. On failure, prints the reason and the server's log to stderr.
 * @returns 0, or -1.
 */
int td_test_redis_start(td_test_redis *r);

/* SIGTERM, wait (SIGKILL after 5 s), close the connection, remove the temp
 * dir. Safe on a server that is not running or was never started. */
void td_test_redis_stop(td_test_redis *r);

/* SIGKILL (a crash) and reap; keeps port and dir, so td_test_redis_restart
 * can bring it back. */
void td_test_redis_kill(td_test_redis *r);

/* Stops the server if running (SIGTERM: a clean shutdown), then starts it
 * again on the same port with the same dir and options, and waits for PING.
 * With appendonly the data survives. @returns 0, or -1. */
int td_test_redis_restart(td_test_redis *r);

/* true when the server process is alive and answers PING. */
bool td_test_redis_alive(td_test_redis *r);

/*
 * Runs one command (hiredis format) on a cached connection, reconnecting once
 * if the connection broke. @returns the reply (caller frees with
 * freeReplyObject), or NULL on connection failure (message on stderr).
 */
redisReply *td_test_redis_cmd(td_test_redis *r, const char *fmt, ...);

/* td_test_redis_cmd for a command with an integer reply (ZCARD, HLEN,
 * HEXISTS...): the integer, or -1 on any other reply or failure. */
long long td_test_redis_int(td_test_redis *r, const char *fmt, ...);

/* A new connection to the server (caller frees with redisFree), or NULL. */
redisContext *td_test_redis_connect(const td_test_redis *r);

/* ---- temp dirs and files ---- */

/* A free TCP port on 127.0.0.1 right now (may be taken by the time it is
 * used: callers retry). @returns the port, or -1. */
int td_test_free_port(void);

/* Creates a new directory $TMPDIR/touchd-test-XXXXXX (TMPDIR defaults to
 * /tmp) and writes its path into buf. @returns 0, or -1. */
int td_test_tmpdir(char *buf, size_t cap);

/* Removes a directory tree (like rm -rf; symlinks are not followed).
 * Does nothing when TD_TEST_KEEP_TMP is set. @returns 0, or -1. */
int td_test_rmtree(const char *path);

/* Writes len bytes to dir/name (creating or truncating it); path, when not
 * NULL, receives the full path. @returns 0, or -1. */
int td_test_write_file(const char *dir, const char *name, const void *data, size_t len, char *path,
                       size_t pathcap);

/* The directory of the source tree ($TD_SOURCE_DIR, set by CTest; "." if
 * unset), for tests that read rules/ or examples/. */
const char *td_test_source_dir(void);

#endif
