/*
 * td_log.c - logfmt lines on stderr (see td_log.h).
 *
 * Formatting happens in a stack buffer and the line leaves in one write(2),
 * so concurrent writers (the main loop, librdkafka's threads via its log
 * callback) never interleave within a line. No allocation, no locks.
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

static const char *td_log_quote_ex(char *buf, size_t cap, const char *s, bool force) {
    if (cap == 0) return buf;
    if (!s) s = "";
    bool plain = !force && *s != '\0';
    for (const char *p = s; *p && plain; p++) {
        unsigned char c = (unsigned char)*p;
        if (c <= ' ' || c == '=' || c == '"' || c == '\\' || c == 0x7f) plain = false;
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
        } else if (c < ' ' || c == 0x7f) {
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
        va_list ap;
        va_start(ap, kvfmt);
        int n = vsnprintf(line + o, sizeof line - o, kvfmt, ap);
        va_end(ap);
        if (n > 0) o += (size_t)n;
        if (o >= sizeof line) o = sizeof line - 1;
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
