/*
 * td_mock_nodelay.c - TCP_NODELAY for the librdkafka mock broker's sockets.
 *
 * librdkafka's mock cluster (the embedded broker, and the tests' and
 * benchmarks' broker) accept()s its connections without TCP_NODELAY. A
 * client with several requests in flight then sees the broker's small
 * responses held back by Nagle's algorithm until the client's delayed ACK
 * (up to 40 ms on Linux): produce acknowledgements and fetch responses stall.
 * The mock cluster runs in this process, so its accepted sockets are our own
 * file descriptors: a watcher thread scans /proc/self/fd every period and
 * sets TCP_NODELAY on every connected TCP socket whose local port is one of
 * the broker's listening ports (those are the accepted ones; the clients'
 * sockets have the broker port as their *peer* port). Setting an option on a
 * socket another thread uses is safe (the kernel serialises it); a socket
 * closed between the scan and the setsockopt only makes the call fail.
 */
#include "td_mock_nodelay.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>

#define TD_MOCK_MAX_PORTS 16

struct td_mock_nodelay {
    pthread_t thread;
    atomic_int stop;
    int period_ms;
    uint16_t ports[TD_MOCK_MAX_PORTS];
    size_t nports;
    atomic_long set; /* sockets switched to TCP_NODELAY so far */
};

/* The ports of a bootstrap list "host:port,host:port" (host may be an
 * IPv6 literal in brackets: the port is what follows the last ':'). */
static size_t mn_ports(const char *bootstraps, uint16_t *ports, size_t cap) {
    size_t n = 0;
    const char *p = bootstraps;
    while (p && *p && n < cap) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        const char *colon = NULL;
        for (size_t i = 0; i < len; i++)
            if (p[i] == ':') colon = p + i;
        if (colon) {
            long v = strtol(colon + 1, NULL, 10);
            if (v > 0 && v < 65536) ports[n++] = (uint16_t)v;
        }
        p = end ? end + 1 : NULL;
    }
    return n;
}

static bool mn_port_is(const struct td_mock_nodelay *m, uint16_t port) {
    for (size_t i = 0; i < m->nports; i++)
        if (m->ports[i] == port) return true;
    return false;
}

long td_mock_nodelay_scan(td_mock_nodelay *m) {
    DIR *dir = opendir("/proc/self/fd");
    if (!dir) return -1;
    long n = 0;
    struct dirent *de;
    while ((de = readdir(dir)) != NULL) {
        char *end;
        long fd = strtol(de->d_name, &end, 10);
        if (*end != '\0' || end == de->d_name || fd < 0 || fd == dirfd(dir)) continue;
        struct stat st;
        if (fstat((int)fd, &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
        struct sockaddr_storage local, peer;
        socklen_t ll = sizeof local, pl = sizeof peer;
        if (getsockname((int)fd, (struct sockaddr *)&local, &ll) != 0 ||
            getpeername((int)fd, (struct sockaddr *)&peer, &pl) != 0)
            continue; /* not connected: a listening socket */
        uint16_t port;
        if (local.ss_family == AF_INET)
            port = ntohs(((struct sockaddr_in *)&local)->sin_port);
        else if (local.ss_family == AF_INET6)
            port = ntohs(((struct sockaddr_in6 *)&local)->sin6_port);
        else
            continue;
        if (!mn_port_is(m, port)) continue;
        int one = 1, cur = 0;
        socklen_t cl = sizeof cur;
        if (getsockopt((int)fd, IPPROTO_TCP, TCP_NODELAY, &cur, &cl) == 0 && cur) continue;
        if (setsockopt((int)fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == 0) n++;
    }
    closedir(dir);
    atomic_fetch_add(&m->set, n);
    return n;
}

static void *mn_main(void *arg) {
    td_mock_nodelay *m = arg;
    while (!atomic_load(&m->stop)) {
        td_mock_nodelay_scan(m);
        /* sleep in slices of at most 50 ms so stop is prompt */
        for (int left = m->period_ms; left > 0 && !atomic_load(&m->stop); left -= 50) {
            int ms = left < 50 ? left : 50;
            struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)ms * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
    return NULL;
}

td_mock_nodelay *td_mock_nodelay_new(const char *bootstraps) {
    td_mock_nodelay *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    m->nports = mn_ports(bootstraps, m->ports, TD_MOCK_MAX_PORTS);
    if (m->nports == 0) {
        free(m);
        return NULL;
    }
    return m;
}

int td_mock_nodelay_start(td_mock_nodelay *m, int period_ms) {
    m->period_ms = period_ms > 0 ? period_ms : 100;
    atomic_store(&m->stop, 0);
    return pthread_create(&m->thread, NULL, mn_main, m) == 0 ? 0 : -1;
}

long td_mock_nodelay_count(const td_mock_nodelay *m) { return atomic_load(&m->set); }

void td_mock_nodelay_free(td_mock_nodelay *m) {
    if (!m) return;
    if (m->period_ms > 0) {
        atomic_store(&m->stop, 1);
        pthread_join(m->thread, NULL);
    }
    free(m);
}
