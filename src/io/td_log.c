/*
 * td_log.c - logfmt lines on stderr (see td_log.h).
 *
 * Formatting happens in a stack buffer and the line leaves in one write(2),
 * so concurrent writers (the main loop, librdkafka's threads via its log
 * callback) never interleave within a line. No allocation, no locks.
 *
 * A line holds printable ASCII only (0x20..0x7e, then its newline): values
 * are quoted with td_log_quote, which escapes every other byte as \xNN, and
 * the caller's formatted tail is passed through the same escape, so a value
 * a caller forgot to quote (an id with a UTF-8 name in it, a terminal escape
 * sequence) still cannot reach the log as raw bytes (docs/operations.md,
 * "Privacy").
 */
#include "td_log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define TD_LOG_LINE_MAX 4096

static volatile int td_log_level_v = TD_LOG_INFO;
static int td_log_fd = 2;

static const char *const td_log_names[] = {"debug", "info", "warn", "error"};

int td_log_level_parse(const char *s) {
    if (!s) return -1;
    for (int i = 0; i < 4; i++)
        if (strcmp(s, td_log_names[i]) == 0) return i;
    return -1;
}

const char *td_log_level_name(td_log_level l) {
    return (l >= TD_LOG_DEBUG && l <= TD_LOG_ERROR) ? td_log_names[l] : "?";
}

void td_log_set_level(td_log_level l) { td_log_level_v = (int)l; }
td_log_level td_log_get_level(void) { return (td_log_level)td_log_level_v; }
void td_log_set_fd(int fd) { td_log_fd = fd; }
bool td_log_enabled(td_log_level l) { return (int)l >= td_log_level_v; }

/* Printable ASCII: the only bytes a log line holds (besides its newline). */
static bool td_log_printable(unsigned char c) { return c >= 0x20 && c <= 0x7e; }

static const char *td_log_quote_ex(char *buf, size_t cap, const char *s, bool force) {
    if (cap == 0) return buf;
    if (!s) s = "";
    bool plain = !force && *s != '\0';
    for (const char *p = s; *p && plain; p++) {
        unsigned char c = (unsigned char)*p;
        if (!td_log_printable(c) || c == ' ' || c == '=' || c == '"' || c == '\\') plain = false;
    }
    if (plain) {
        size_t n = strlen(s);
        if (n >= cap) n = cap - 1;
        memcpy(buf, s, n);
        buf[n] = '\0';
        return buf;
    }
    size_t o = 0;
    /* Reserve room for the closing quote and the NUL. */
    if (o + 2 < cap) buf[o++] = '"';
    for (const char *p = s; *p; p++) {
        unsigned char c = (unsigned char)*p;
        char esc = 0;
        if (c == '"' || c == '\\')
            esc = (char)c;
        else if (c == '\n')
            esc = 'n';
        else if (c == '\t')
            esc = 't';
        else if (c == '\r')
            esc = 'r';
        if (esc) {
            if (o + 3 >= cap) break;
            buf[o++] = '\\';
            buf[o++] = esc;
        } else if (!td_log_printable(c)) {
            /* control bytes, DEL and every byte of a UTF-8 sequence */
            if (o + 5 >= cap) break;
            o += (size_t)snprintf(buf + o, cap - o, "\\x%02x", c);
        } else {
            if (o + 2 >= cap) break;
            buf[o++] = (char)c;
        }
    }
    if (o + 1 < cap) buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}

/* Appends s to line (at *o, capacity cap) with every byte outside printable
 * ASCII as \xNN: what a caller left unquoted cannot carry such bytes into
 * the log either. Stops before an escape that does not fit. */
static void td_log_append_printable(char *line, size_t cap, size_t *o, const char *s) {
    static const char hex[] = "0123456789abcdef";
    for (; *s && *o + 1 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (td_log_printable(c)) {
            line[(*o)++] = (char)c;
        } else {
            if (*o + 5 >= cap) break;
            line[(*o)++] = '\\';
            line[(*o)++] = 'x';
            line[(*o)++] = hex[c >> 4];
            line[(*o)++] = hex[c & 15];
        }
    }
    line[*o] = '\0';
}

const char *td_log_quote(char *buf, size_t cap, const char *s) {
    return td_log_quote_ex(buf, cap, s, false);
}

void td_log(td_log_level l, const char *msg, const char *kvfmt, ...) {
    if (!td_log_enabled(l)) return;
    int saved_errno = errno;
    char line[TD_LOG_LINE_MAX];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    size_t o = (size_t)snprintf(
        line, sizeof line,
        "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s msg=", tm.tm_year + 1900, tm.tm_mon + 1,
        tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000L, td_log_level_name(l));
    /* msg is always quoted, so it reads the same whatever it holds. */
    char q[1024];
    td_log_quote_ex(q, sizeof q, msg, true);
    o += (size_t)snprintf(line + o, sizeof line - o, "%s", q);
    if (o >= sizeof line) o = sizeof line - 1;
    if (kvfmt && *kvfmt && o + 2 < sizeof line) {
        line[o++] = ' ';
        char tail[TD_LOG_LINE_MAX];
        va_list ap;
        va_start(ap, kvfmt);
        vsnprintf(tail, sizeof tail, kvfmt, ap);
        va_end(ap);
        td_log_append_printable(line, sizeof line, &o, tail);
    }
    if (o >= sizeof line - 1) o = sizeof line - 2; /* truncated: keep room for the newline */
    line[o++] = '\n';
    const char *p = line;
    while (o > 0) {
        ssize_t w = write(td_log_fd, p, o);
        if (w < 0) {
            if (errno == EINTR) continue;
            break;
        }
        p += w;
        o -= (size_t)w;
    }
    errno = saved_errno;
}
