/*
 * harness.c - real redis-server processes and temp dirs for integration tests.
 *
 * Why a process per test rather than a shared server: tests must not see each
 * other's keys, must be able to kill -9 and restart "their" Redis to exercise
 * the daemon's recovery paths, and must run in parallel under ctest -j. A
 * private redis-server costs ~5 ms to start, so isolation is cheap.
 *
 * Port choice: bind(127.0.0.1:0), read the port, close, and give it to
 * redis-server. Another process can grab that port in between; redis-server
 * then exits at once ("Address already in use"), which we notice with
 * waitpid(WNOHANG) while waiting for PING, and we try again on a new port.
 *
 * @locality the test's thread.
 */
#include "harness.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define START_ATTEMPTS 8

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

int td_test_free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    socklen_t alen = sizeof a;
    int port = -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &alen) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

int td_test_tmpdir(char *buf, size_t cap) {
    const char *base = getenv("TMPDIR");
    if (!base || !*base) base = "/tmp";
    int n = snprintf(buf, cap, "%s/touchd-test-XXXXXX", base);
    if (n < 0 || (size_t)n >= cap) return -1;
    if (!mkdtemp(buf)) {
        fprintf(stderr, "harness: mkdtemp %s: %s\n", buf, strerror(errno));
        return -1;
    }
    return 0;
}

static int rmtree_at(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0) return errno == ENOENT ? 0 : -1;
    if (!S_ISDIR(st.st_mode)) return unlink(path);
    DIR *d = opendir(path);
    if (!d) return -1;
    int rc = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        char child[4096];
        int n = snprintf(child, sizeof child, "%s/%s", path, de->d_name);
        if (n < 0 || (size_t)n >= sizeof child || rmtree_at(child) != 0) rc = -1;
    }
    closedir(d);
    if (rmdir(path) != 0) rc = -1;
    return rc;
}

int td_test_rmtree(const char *path) {
    const char *keep = getenv("TD_TEST_KEEP_TMP");
    if (keep && *keep && strcmp(keep, "0") != 0) {
        fprintf(stderr, "harness: keeping %s (TD_TEST_KEEP_TMP)\n", path);
        return 0;
    }
    if (!path || !*path || !strcmp(path, "/")) return -1;
    return rmtree_at(path);
}

int td_test_write_file(const char *dir, const char *name, const void *data, size_t len, char *path,
                       size_t pathcap) {
    char p[4096];
    int n = snprintf(p, sizeof p, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= sizeof p) return -1;
    FILE *f = fopen(p, "wb");
    if (!f) return -1;
    int rc = (len == 0 || fwrite(data, 1, len, f) == len) ? 0 : -1;
    if (fclose(f) != 0) rc = -1;
    if (rc == 0 && path) {
        int m = snprintf(path, pathcap, "%s", p);
        if (m < 0 || (size_t)m >= pathcap) rc = -1;
    }
    return rc;
}

const char *td_test_source_dir(void) {
    const char *s = getenv("TD_SOURCE_DIR");
    return (s && *s) ? s : ".";
}

/* ---- redis-server ---- */

static void print_log_tail(const td_test_redis *r) {
    FILE *f = fopen(r->log, "r");
    if (!f) return;
    fprintf(stderr, "harness: --- %s (tail) ---\n", r->log);
    /* the last ~2 KiB is enough to show why redis-server refused to start */
    if (fseek(f, 0, SEEK_END) == 0) {
        long sz = ftell(f);
        if (sz > 2048)
            fseek(f, sz - 2048, SEEK_SET);
        else
            rewind(f);
    }
    char line[512];
    while (fgets(line, sizeof line, f))
        fputs(line, stderr);
    fclose(f);
    fprintf(stderr, "harness: --- end of log ---\n");
}

static pid_t spawn_server(const td_test_redis *r) {
    const char *bin = getenv("TD_REDIS_SERVER");
    if (!bin || !*bin) bin = "redis-server";
    char port[16];
    snprintf(port, sizeof port, "%d", r->port);
    /* clang-format off */
    const char *argv[] = {
        bin,
        "--port", port,
        "--bind", "127.0.0.1",
        "--dir", r->dir,
        "--logfile", r->log,
        "--daemonize", "no",
        "--save", "",                      /* no RDB snapshots */
        "--appendonly", r->appendonly ? "yes" : "no",
        "--appendfsync", "always",         /* an acknowledged write survives kill -9 */
        "--protected-mode", "no",          /* loopback only anyway */
        NULL, NULL, NULL, NULL, NULL};
    /* clang-format on */
    if (r->unixsocket) {
        size_t n = 0;
        while (argv[n])
            n++;
        argv[n++] = "--unixsocket";
        argv[n++] = r->sock;
        argv[n++] = "--unixsocketperm";
        argv[n++] = "700";
    }
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "harness: fork: %s\n", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        /* die with the test process, whatever happens to it */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() == 1) _exit(127);
        int devnull = open("/dev/null", O_RDWR);
        if (devnull >= 0) {
            dup2(devnull, STDIN_FILENO);
            dup2(devnull, STDOUT_FILENO); /* the log file gets everything */
            if (devnull > STDERR_FILENO) close(devnull);
        }
        execvp(bin, (char *const *)argv);
        fprintf(stderr, "harness: cannot exec %s: %s (is redis-server installed?)\n", bin,
                strerror(errno));
        _exit(127);
    }
    return pid;
}

redisContext *td_test_redis_connect(const td_test_redis *r) {
    struct timeval tv = {1, 0};
    redisContext *c = redisConnectWithTimeout(r->host, r->port, tv);
    if (!c) return NULL;
    if (c->err) {
        redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, (struct timeval){10, 0});
    return c;
}

static bool ping_ok(const td_test_redis *r) {
    redisContext *c = td_test_redis_connect(r);
    if (!c) return false;
    redisReply *rep = redisCommand(c, "PING");
    /* while loading the AOF, Redis answers -LOADING: not ready yet */
    bool ok = rep && rep->type == REDIS_REPLY_STATUS && !strcmp(rep->str, "PONG");
    if (rep) freeReplyObject(rep);
    redisFree(c);
    return ok;
}

static void drop_ctx(td_test_redis *r) {
    if (r->ctx) {
        redisFree(r->ctx);
        r->ctx = NULL;
    }
}

/* Reaps the child, waiting up to timeout_ms; SIGKILL after that. */
static void reap(td_test_redis *r, int timeout_ms) {
    if (r->pid <= 0) return;
    long long deadline = now_ms() + timeout_ms;
    for (;;) {
        int status;
        pid_t w = waitpid(r->pid, &status, WNOHANG);
        if (w == r->pid || (w < 0 && errno == ECHILD)) break;
        if (now_ms() >= deadline) {
            kill(r->pid, SIGKILL);
            waitpid(r->pid, &status, 0);
            break;
        }
        sleep_ms(5);
    }
    r->pid = 0;
}

/* Starts on r->port in r->dir and waits for PING.
 * @returns 0, 1 when the server exited early (port taken?), -1 on timeout. */
static int launch(td_test_redis *r) {
    int timeout = r->start_timeout_ms > 0 ? r->start_timeout_ms : 10000;
    r->pid = spawn_server(r);
    if (r->pid < 0) {
        r->pid = 0;
        return -1;
    }
    long long deadline = now_ms() + timeout;
    int delay = 2;
    while (now_ms() < deadline) {
        int status;
        pid_t w = waitpid(r->pid, &status, WNOHANG);
        if (w == r->pid) {
            r->pid = 0;
            return 1;
        }
        if (ping_ok(r)) return 0;
        sleep_ms(delay);
        if (delay < 50) delay *= 2;
    }
    fprintf(stderr, "harness: redis-server on port %d did not answer PING within %d ms\n", r->port,
            timeout);
    kill(r->pid, SIGKILL);
    reap(r, 1000);
    return -1;
}

int td_test_redis_start(td_test_redis *r) {
    if (r->pid > 0) {
        fprintf(stderr, "harness: td_test_redis_start: already running\n");
        return -1;
    }
    r->ctx = NULL;
    snprintf(r->host, sizeof r->host, "127.0.0.1");
    if (td_test_tmpdir(r->dir, sizeof r->dir) != 0) return -1;
    snprintf(r->log, sizeof r->log, "%s/redis.log", r->dir);
    snprintf(r->sock, sizeof r->sock, "%s/redis.sock", r->dir);
    for (int attempt = 1; attempt <= START_ATTEMPTS; attempt++) {
        r->port = td_test_free_port();
        if (r->port <= 0) {
            fprintf(stderr, "harness: no free port: %s\n", strerror(errno));
            break;
        }
        int rc = launch(r);
        if (rc == 0) return 0;
        if (rc < 0) break;
        /* exited early: most likely someone took the port; try another */
        fprintf(stderr, "harness: redis-server exited at start on port %d (attempt %d)\n", r->port,
                attempt);
    }
    print_log_tail(r);
    td_test_rmtree(r->dir);
    r->dir[0] = '\0';
    r->port = 0;
    return -1;
}

void td_test_redis_stop(td_test_redis *r) {
    drop_ctx(r);
    if (r->pid > 0) {
        kill(r->pid, SIGTERM);
        reap(r, 5000);
    }
    if (r->dir[0]) {
        td_test_rmtree(r->dir);
        r->dir[0] = '\0';
    }
    r->port = 0;
}

void td_test_redis_kill(td_test_redis *r) {
    drop_ctx(r);
    if (r->pid > 0) {
        kill(r->pid, SIGKILL);
        reap(r, 5000);
    }
}

int td_test_redis_restart(td_test_redis *r) {
    if (!r->dir[0] || r->port <= 0) {
        fprintf(stderr, "harness: td_test_redis_restart: never started\n");
        return -1;
    }
    drop_ctx(r);
    if (r->pid > 0) {
        kill(r->pid, SIGTERM);
        reap(r, 5000);
    }
    /* Same port: the old listener is gone (redis sets SO_REUSEADDR, so
     * TIME_WAIT does not matter) but someone else may have taken it in the
     * meantime; retry briefly rather than moving to another port, because
     * tests restart precisely to see clients reconnect to the same address. */
    for (int attempt = 1; attempt <= START_ATTEMPTS; attempt++) {
        int rc = launch(r);
        if (rc == 0) return 0;
        if (rc < 0) break;
        sleep_ms(100 * attempt);
    }
    print_log_tail(r);
    return -1;
}

bool td_test_redis_alive(td_test_redis *r) {
    if (r->pid <= 0) return false;
    int status;
    if (waitpid(r->pid, &status, WNOHANG) == r->pid) {
        r->pid = 0;
        return false;
    }
    return ping_ok(r);
}

redisReply *td_test_redis_cmd(td_test_redis *r, const char *fmt, ...) {
    for (int attempt = 0; attempt < 2; attempt++) {
        if (!r->ctx) r->ctx = td_test_redis_connect(r);
        if (!r->ctx) continue;
        va_list ap;
        va_start(ap, fmt);
        redisReply *rep = redisvCommand(r->ctx, fmt, ap);
        va_end(ap);
        if (rep) return rep;
        drop_ctx(r); /* broken connection: reconnect once */
    }
    fprintf(stderr, "harness: cannot run command on redis %s:%d\n", r->host, r->port);
    return NULL;
}

long long td_test_redis_int(td_test_redis *r, const char *fmt, ...) {
    if (!r->ctx) r->ctx = td_test_redis_connect(r);
    if (!r->ctx) return -1;
    va_list ap;
    va_start(ap, fmt);
    redisReply *rep = redisvCommand(r->ctx, fmt, ap);
    va_end(ap);
    if (!rep) {
        drop_ctx(r);
        return -1;
    }
    long long v = rep->type == REDIS_REPLY_INTEGER ? rep->integer : -1;
    freeReplyObject(rep);
    return v;
}
