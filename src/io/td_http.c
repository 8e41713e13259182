/*
 * td_http.c - the HTTP listener of td_http.h on libmicrohttpd.
 *
 * One MHD daemon with its internal polling thread (MHD_USE_AUTO picks epoll
 * on Linux). Every request goes through ht_access: the first call of a
 * request (before any body) is answered at once when it has no body; a body
 * (no route takes one today) is read and dropped, then answered. Routing is
 * a linear scan of a few routes. Connections are bounded (64) and time out
 * after 10 s idle, so a slow client cannot pin the thread's resources.
 * libmicrohttpd's own messages go to the log (msg="http server").
 *
 * File-local names start with ht_.
 *
 * @locality td_http_new/free on the caller's thread; ht_* callbacks on the
 * listener's thread.
 */
#include "td_http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <microhttpd.h>

#include "td_log.h"

struct td_http_req {
    struct MHD_Connection *conn;
    const char *method, *path;
};

struct td_http {
    struct MHD_Daemon *mhd;
    td_http_route *routes;
    size_t nroutes;
    char *cert, *key; /* PEM contents (MHD reads them at start) */
    int port;
};

const char *td_http_header(const td_http_req *req, const char *name) {
    return MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, name);
}
const char *td_http_method(const td_http_req *req) { return req->method; }
const char *td_http_path(const td_http_req *req) { return req->path; }

bool td_http_listen_parse(const char *v, char *host, size_t hostcap, int *port, char *err,
                          size_t errcap) {
    const char *h = v, *colon;
    size_t hl;
    if (v[0] == '[') {
        const char *rb = strchr(v, ']');
        if (!rb || rb[1] != ':') {
            snprintf(err, errcap, "expected [V6ADDR]:PORT, got \"%.80s\"", v);
            return false;
        }
        h = v + 1;
        hl = (size_t)(rb - h);
        colon = rb + 1;
    } else {
        colon = strrchr(v, ':');
        if (!colon || strchr(v, ':') != colon) {
            snprintf(err, errcap, "expected HOST:PORT such as \"127.0.0.1:9464\", got \"%.80s\"",
                     v);
            return false;
        }
        hl = (size_t)(colon - v);
    }
    if (hl == 0 || hl >= hostcap) {
        snprintf(err, errcap, "expected HOST:PORT with a host, got \"%.80s\"", v);
        return false;
    }
    char *end;
    errno = 0;
    long p = strtol(colon + 1, &end, 10);
    if (errno || *end || end == colon + 1 || p < 1 || p > 65535) {
        snprintf(err, errcap, "expected a port from 1 to 65535 after the host, got \"%.80s\"", v);
        return false;
    }
    memcpy(host, h, hl);
    host[hl] = '\0';
    *port = (int)p;
    return true;
}

/* ------------------------------------------------------------- serving */

static enum MHD_Result ht_send(struct MHD_Connection *conn, int status, const char *ctype,
                               const char *body, size_t len, const char *allow) {
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!r) return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (allow) MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow);
    enum MHD_Result rc = MHD_queue_response(conn, (unsigned)status, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result ht_plain(struct MHD_Connection *conn, int status, const char *text,
                                const char *allow) {
    return ht_send(conn, status, "text/plain; charset=utf-8", text, strlen(text), allow);
}

/* Finds the route; answers 404 or 405 itself. The place for the admin
 * API's authentication: a route without TD_HTTP_PUBLIC is refused here
 * until a token check exists. */
static enum MHD_Result ht_dispatch(td_http *h, struct MHD_Connection *conn, const char *method,
                                   const char *url) {
    bool head = strcmp(method, "HEAD") == 0;
    const td_http_route *hit = NULL;
    char allow[64] = "";
    for (size_t i = 0; i < h->nroutes; i++) {
        const td_http_route *rt = &h->routes[i];
        if (strcmp(rt->path, url) != 0) continue;
        if (strcmp(rt->method, method) == 0 || (head && strcmp(rt->method, "GET") == 0)) {
            hit = rt;
            break;
        }
        size_t l = strlen(allow);
        snprintf(allow + l, sizeof allow - l, "%s%s", l ? ", " : "", rt->method);
    }
    if (!hit) {
        if (allow[0]) return ht_plain(conn, 405, "method not allowed\n", allow);
        return ht_plain(conn, 404, "not found\n", NULL);
    }
    if (!(hit->flags & TD_HTTP_PUBLIC)) return ht_plain(conn, 401, "unauthorized\n", NULL);
    td_http_req req = {.conn = conn, .method = method, .path = url};
    td_http_resp resp = {.status = 200, .content_type = "text/plain; charset=utf-8"};
    hit->fn(hit->ud, &req, &resp);
    enum MHD_Result rc;
    if (resp.body.len == 0 && !resp.body.p)
        rc = ht_send(conn, resp.status, resp.content_type, "", 0, NULL);
    else
        rc = ht_send(conn, resp.status, resp.content_type, resp.body.p, resp.body.len, NULL);
    td_buf_free(&resp.body);
    return rc;
}

static int ht_body_marker;

static enum MHD_Result ht_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version, const char *upload,
                                 size_t *upload_size, void **con_cls) {
    (void)version;
    (void)upload;
    if (*upload_size) { /* a body: read and dropped (no route takes one) */
        *con_cls = &ht_body_marker;
        *upload_size = 0;
        return MHD_YES;
    }
    return ht_dispatch(cls, conn, method, url);
}

static void ht_log(void *cls, const char *fmt, va_list ap) {
    (void)cls;
    char text[400], q[600];
    vsnprintf(text, sizeof text, fmt, ap);
    size_t n = strlen(text);
    while (n && (text[n - 1] == '\n' || text[n - 1] == '\r'))
        text[--n] = '\0';
    td_log_warn("http server", "detail=%s", td_log_quote(q, sizeof q, text));
}

/* --------------------------------------------------------------- start */

/* The whole file (NUL-ended) or NULL with the reason in err. */
static char *ht_slurp(const char *key, const char *path, char *err, size_t errcap) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errcap, "%s: cannot read %s: %s", key, path, strerror(errno));
        return NULL;
    }
    td_buf b = {0};
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        if (td_buf_append(&b, chunk, n) != TD_OK) break;
    bool bad = ferror(f) || b.len == 0;
    fclose(f);
    if (bad) {
        snprintf(err, errcap, "%s: cannot read %s: %s", key, path,
                 b.len == 0 ? "empty file" : "read error");
        td_buf_free(&b);
        return NULL;
    }
    return b.p;
}

static void ht_wipe_free(char *s) {
    if (!s) return;
    volatile char *p = s;
    while (*p)
        *p++ = 0;
    free(s);
}

td_http *td_http_new(const td_http_conf *conf, const td_http_route *routes, size_t n, char *err,
                     size_t errcap) {
    char host[256];
    int port;
    char why[200];
    if (!td_http_listen_parse(conf->listen, host, sizeof host, &port, why, sizeof why)) {
        snprintf(err, errcap, "http.listen: %s", why);
        return NULL;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE},
                    *ai = NULL;
    char ps[8];
    snprintf(ps, sizeof ps, "%d", port);
    int gr = getaddrinfo(host, ps, &hints, &ai);
    if (gr != 0 || !ai) {
        snprintf(err, errcap, "http.listen: cannot resolve \"%s\": %s", host, gai_strerror(gr));
        return NULL;
    }
    td_http *h = calloc(1, sizeof *h);
    if (!h || !(h->routes = calloc(n ? n : 1, sizeof *h->routes))) {
        free(h);
        freeaddrinfo(ai);
        snprintf(err, errcap, "http: out of memory");
        return NULL;
    }
    memcpy(h->routes, routes, n * sizeof *routes);
    h->nroutes = n;
    h->port = port;
    bool tls = conf->tls_cert && *conf->tls_cert;
    unsigned flags = MHD_USE_AUTO | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    if (tls) {
        if (MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES) {
            snprintf(err, errcap,
                     "http.tls_cert: this libmicrohttpd was built without TLS support "
                     "(GnuTLS); unset http.tls_cert and http.tls_key or install a build with it");
            goto fail;
        }
        if (!(h->cert = ht_slurp("http.tls_cert", conf->tls_cert, err, errcap)) ||
            !(h->key = ht_slurp("http.tls_key", conf->tls_key, err, errcap)))
            goto fail;
        flags |= MHD_USE_TLS;
    }
    h->mhd = MHD_start_daemon(
        flags, (uint16_t)port, NULL, NULL, ht_access, h, MHD_OPTION_EXTERNAL_LOGGER, ht_log, NULL,
        MHD_OPTION_SOCK_ADDR, ai->ai_addr, MHD_OPTION_CONNECTION_LIMIT, (unsigned)64,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10, MHD_OPTION_LISTENING_ADDRESS_REUSE,
        (unsigned)1, tls ? MHD_OPTION_HTTPS_MEM_CERT : MHD_OPTION_END, h->cert,
        MHD_OPTION_HTTPS_MEM_KEY, h->key, MHD_OPTION_END);
    if (!h->mhd) {
        snprintf(err, errcap,
                 "http.listen: cannot listen on %s%s (address in use, not local, or the TLS "
                 "files are not a PEM certificate and key: see the log's msg=\"http server\")",
                 conf->listen, tls ? " with TLS" : "");
        goto fail;
    }
    freeaddrinfo(ai);
    return h;
fail:
    freeaddrinfo(ai);
    td_http_free(h);
    return NULL;
}

int td_http_port(const td_http *h) { return h->port; }

void td_http_free(td_http *h) {
    if (!h) return;
    if (h->mhd) MHD_stop_daemon(h->mhd);
    ht_wipe_free(h->cert);
    ht_wipe_free(h->key); /* the private key: wiped */
    free(h->routes);
    free(h);
}
