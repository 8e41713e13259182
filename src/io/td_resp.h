/*
 * td_resp.h - one RESP2 reply at a time, parsed in place from a byte buffer.
 *
 * The store's WATCH path (td_redis_store.c, rw_diff_watch) reads its replies with
 * this instead of hiredis' reader: a chunk of 64 prospects brings back about
 * 200 replies (+OK, a version per prospect, +QUEUED per command, an EXEC
 * array of integers), and hiredis allocates, fills and frees an object for
 * each. Here a reply is a view into the caller's buffer, valid until the
 * buffer changes.
 *
 * Pure: no I/O, no allocation. Only what a RESP2 server sends is accepted
 * (no RESP3 types, no inline replies).
 *
 * @locality any thread; the caller owns the buffer.
 */
#ifndef TD_RESP_H
#define TD_RESP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef enum td_resp_type {
    TD_RESP_NIL = 0,      /* "$-1" or "*-1" */
    TD_RESP_STATUS = '+', /* s[0..len): the status line, e.g. "OK" */
    TD_RESP_ERROR = '-',  /* s[0..len): the error line, e.g. "ERR unknown command" */
    TD_RESP_INT = ':',    /* i */
    TD_RESP_BULK = '$',   /* s[0..len): the bytes */
    TD_RESP_ARRAY = '*'   /* i: the element count; the elements follow as replies */
} td_resp_type;

typedef struct td_resp {
    td_resp_type type;
    const char *s; /* STATUS, ERROR, BULK: points into the parsed buffer */
    size_t len;
    int64_t i; /* INT: the value; ARRAY: the element count (>= 0) */
} td_resp;

/* Longest status or error line, and largest bulk string, accepted (Redis'
 * proto-max-bulk-len default is 512 MB). */
#define TD_RESP_LINE_MAX 65536
#define TD_RESP_BULK_MAX (512LL * 1024 * 1024)

/*
 * Parses the reply (for an array: only its header) at p[0..n).
 * @returns the bytes it takes (> 0), 0 if p holds only part of it (read
 * more and call again with the same start), or -1 if p is not RESP2 (an
 * unknown type byte, a malformed or out-of-range number, a bulk string not
 * followed by CRLF, a line longer than TD_RESP_LINE_MAX). *out is set only
 * when the result is > 0.
 */
ssize_t td_resp_parse(const char *p, size_t n, td_resp *out);

/* The reply is the status `want` (e.g. "OK", "QUEUED"). */
bool td_resp_is_status(const td_resp *r, const char *want);

#endif
