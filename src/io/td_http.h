/*
 * td_http.h - touchd's one HTTP listener (libmicrohttpd), off unless
 * http.listen is set: /metrics, /healthz, /readyz (docs/operations.md).
 *
 * The listener knows nothing of the daemon: it serves a routing table, each
 * route a method, an exact path, a handler and flags. A handler runs on
 * libmicrohttpd's own thread (MHD_USE_INTERNAL_POLLING_THREAD: one thread
 * polls every connection), so it must only read what the daemon publishes
 * for it (a snapshot under a mutex, atomics: td_obs.h), never the
 * pipeline's own structures, and must not block. A path no route has is a
 * 404; a path with routes but none for the method is a 405 with `Allow`.
 *
 * The flags are where an authenticated admin API plugs in: a route without
 * TD_HTTP_PUBLIC will need a valid bearer token (the check goes in one place,
 * before the handler, td_http.c's ht_dispatch); today every route is public.
 *
 * TLS: with http.tls_cert and http.tls_key (PEM files, read at start: an
 * unreadable file is a start-up error naming the key), the listener speaks
 * HTTPS only (MHD_USE_TLS), which needs a libmicrohttpd built with GnuTLS
 * (Debian's is): checked at start (MHD_FEATURE_TLS), with a clear error if
 * not.
 *
 * @locality td_http_new and td_http_free on the main thread; handlers on the
 * listener's thread.
 */
#ifndef TD_HTTP_H
#define TD_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#include "td_base.h"

typedef struct td_http td_http;
typedef struct td_http_req td_http_req; /* opaque: the request being served */

/* What a handler answers: status (200 unless set), content type (a
 * constant; "text/plain; charset=utf-8" unless set) and body (owned by the
 * listener, freed after sending). */
typedef struct td_http_resp {
    int status;
    const char *content_type;
    td_buf body;
} td_http_resp;

/* A request header's value (case-insensitive name), or NULL. Valid during
 * the handler. */
const char *td_http_header(const td_http_req *req, const char *name);
/* The request's method ("GET") and path ("/metrics", no query string). */
const char *td_http_method(const td_http_req *req);
const char *td_http_path(const td_http_req *req);

typedef void (*td_http_handler)(void *ud, const td_http_req *req, td_http_resp *resp);

enum {
    TD_HTTP_PUBLIC = 1u << 0, /* served without authentication (all routes today) */
};

typedef struct td_http_route {
    const char *method; /* "GET"; HEAD is answered for GET routes */
    const char *path;   /* exact */
    td_http_handler fn;
    void *ud;
    unsigned flags; /* TD_HTTP_* */
} td_http_route;

typedef struct td_http_conf {
    const char *listen;   /* "HOST:PORT" or "[V6ADDR]:PORT" */
    const char *tls_cert; /* PEM file, or NULL/"" (plain HTTP) */
    const char *tls_key;  /* PEM file, or NULL/""; with tls_cert */
} td_http_conf;

/*
 * Checks the syntax of a listen address ("127.0.0.1:9464", "[::1]:9464",
 * "localhost:9464"; the port 1..65535) and splits it into host (NUL-ended,
 * without brackets) and port. @returns true, or false with what is wrong in
 * err.
 */
bool td_http_listen_parse(const char *v, char *host, size_t hostcap, int *port, char *err,
                          size_t errcap);

/*
 * Resolves conf->listen, reads the TLS files, binds and starts the
 * listener's thread, serving `routes` (copied: n entries; the strings and
 * ud must outlive the listener). @returns the listener, or NULL with a
 * message naming the config key in err.
 */
td_http *td_http_new(const td_http_conf *conf, const td_http_route *routes, size_t n, char *err,
                     size_t errcap);
/* The port bound (the configured one). */
int td_http_port(const td_http *h);
/* Stops the thread (waiting for a handler running), closes the socket. */
void td_http_free(td_http *h);

#endif
