/*
 * td_mock_nodelay.h - turn Nagle off on an in-process librdkafka mock
 * broker's accepted sockets (see td_mock_nodelay.c for why and how).
 */
#ifndef TD_MOCK_NODELAY_H
#define TD_MOCK_NODELAY_H

typedef struct td_mock_nodelay td_mock_nodelay;

/* A watcher for the broker listening on `bootstraps` ("host:port,...", as
 * rd_kafka_mock_cluster_bootstraps returns). NULL when no port is found or
 * out of memory. Nothing runs until td_mock_nodelay_start or _scan. */
td_mock_nodelay *td_mock_nodelay_new(const char *bootstraps);

/* One scan of this process's file descriptors: sets TCP_NODELAY on each
 * connected socket whose local port is a broker port and does not have it.
 * @returns how many it set, or -1 when /proc/self/fd cannot be read. */
long td_mock_nodelay_scan(td_mock_nodelay *m);

/* Starts a thread that scans every `period_ms` (connections come and go as
 * clients reconnect). @returns 0 or -1. */
int td_mock_nodelay_start(td_mock_nodelay *m, int period_ms);

/* Sockets switched so far (by the thread and by direct scans). */
long td_mock_nodelay_count(const td_mock_nodelay *m);

/* Stops the thread (if started) and frees. NULL is a no-op. */
void td_mock_nodelay_free(td_mock_nodelay *m);

#endif
