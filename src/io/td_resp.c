/*
 * td_resp.c - RESP2 replies parsed in place (td_resp.h).
 */
#include "td_resp.h"

#include "td_base.h"

#include <stdbool.h>
#include <string.h>

/* The line at p[0..n) up to CRLF: its length without the CRLF, or -1 if no
 * CRLF yet (n may grow), or -2 if it cannot be a line (too long, or a CR
 * not followed by LF). */
static ssize_t resp_line(const char *p, size_t n) {
    size_t lim = n < TD_RESP_LINE_MAX + 2 ? n : TD_RESP_LINE_MAX + 2;
    const char *cr = memchr(p, '\r', lim);
    if (!cr) return n >= TD_RESP_LINE_MAX + 2 ? -2 : -1;
    size_t l = (size_t)(cr - p);
    if (l + 1 == n) return -1; /* the LF is still to come */
    return cr[1] == '\n' ? (ssize_t)l : -2;
}

/* A RESP integer: td_parse_i64's, without a leading zero (but "0" itself)
 * or "-0". @returns 0, or -1. */
static int resp_int(const char *s, size_t n, int64_t *out) {
    size_t i = n > 0 && s[0] == '-';
    if (i < n && s[i] == '0' && (n - i > 1 || i == 1)) return -1;
    return td_parse_i64(s, n, out) == TD_OK ? 0 : -1;
}

ssize_t td_resp_parse(const char *p, size_t n, td_resp *out) {
    if (n == 0) return 0;
    ssize_t l = resp_line(p + 1, n - 1);
    if (l == -1) return 0;
    if (l < 0) return -1;
    size_t hl = 1 + (size_t)l + 2; /* type byte, line, CRLF */
    const char *s = p + 1;
    switch (p[0]) {
    case '+':
    case '-':
        if (memchr(s, '\n', (size_t)l)) return -1;
        out->type = (td_resp_type)p[0];
        out->s = s;
        out->len = (size_t)l;
        out->i = 0;
        return (ssize_t)hl;
    case ':': {
        int64_t v;
        if (resp_int(s, (size_t)l, &v)) return -1;
        *out = (td_resp){.type = TD_RESP_INT, .i = v};
        return (ssize_t)hl;
    }
    case '*': {
        int64_t v;
        if (resp_int(s, (size_t)l, &v) || v < -1) return -1;
        if (v == -1)
            *out = (td_resp){.type = TD_RESP_NIL};
        else
            *out = (td_resp){.type = TD_RESP_ARRAY, .i = v};
        return (ssize_t)hl;
    }
    case '$': {
        int64_t v;
        if (resp_int(s, (size_t)l, &v) || v < -1 || v > TD_RESP_BULK_MAX) return -1;
        if (v == -1) {
            *out = (td_resp){.type = TD_RESP_NIL};
            return (ssize_t)hl;
        }
        size_t bl = (size_t)v;
        if (n - hl < bl + 2) return 0;
        if (p[hl + bl] != '\r' || p[hl + bl + 1] != '\n') return -1;
        *out = (td_resp){.type = TD_RESP_BULK, .s = p + hl, .len = bl};
        return (ssize_t)(hl + bl + 2);
    }
    default:
        return -1;
    }
}

bool td_resp_is_status(const td_resp *r, const char *want) {
    size_t n = strlen(want);
    return r->type == TD_RESP_STATUS && r->len == n && memcmp(r->s, want, n) == 0;
}
