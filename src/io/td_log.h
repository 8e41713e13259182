/*
 * td_log.h - structured logs for the daemon: one logfmt line per event of
 * note, on stderr.
 *
 *   ts=2026-11-22T10:15:00.123Z level=info msg="ruleset loaded" rules=12 hash=sha256:1c0e...
 *
 * Every line starts with ts (UTC, RFC 3339, milliseconds), level and msg; the
 * rest are key=value pairs chosen by the caller. Values that need it are
 * quoted with td_log_quote. What is NEVER logged (DESIGN.md): personal data
 * (only ids: prospect, event, rule, recommendation), event payloads, the Redis
 * password or any other secret. Callers are responsible for that; this module
 * formats, and guarantees one thing: a line holds only printable ASCII (the
 * kv tail is escaped as td_log_quote escapes, even where a caller did not
 * quote), so bytes of a message (UTF-8 names, terminal escapes) never reach
 * the log raw.
 *
 * A line is written with a single write(2) (lines are capped at 4 KiB, so
 * lines from several threads never interleave: librdkafka logs from its own
 * threads through td_log too).
 *
 * @locality any thread; the level and output fd are set once at start-up,
 * before any other thread exists.
 */
#ifndef TD_LOG_H
#define TD_LOG_H

#include <stdbool.h>
#include <stddef.h>

typedef enum td_log_level {
    TD_LOG_DEBUG = 0,
    TD_LOG_INFO = 1,
    TD_LOG_WARN = 2,
    TD_LOG_ERROR = 3
} td_log_level;

/* "debug" | "info" | "warn" | "error" -> level; -1 when unknown. */
int td_log_level_parse(const char *s);
const char *td_log_level_name(td_log_level l);

/* Lines below `l` are dropped (default: info). */
void td_log_set_level(td_log_level l);
td_log_level td_log_get_level(void);
/* Where lines go (default: 2, stderr). For tests. */
void td_log_set_fd(int fd);
bool td_log_enabled(td_log_level l);

/*
 * Writes one line: ts, level, msg (always quoted), then the printf-formatted
 * `kvfmt` tail (e.g. "topic=%s partition=%d"), which may be NULL. The tail is
 * the caller's: quote values that may hold spaces with td_log_quote.
 */
void td_log(td_log_level l, const char *msg, const char *kvfmt, ...)
    __attribute__((format(printf, 3, 4)));

#define td_log_debug(...) td_log(TD_LOG_DEBUG, __VA_ARGS__)
#define td_log_info(...) td_log(TD_LOG_INFO, __VA_ARGS__)
#define td_log_warn(...) td_log(TD_LOG_WARN, __VA_ARGS__)
#define td_log_error(...) td_log(TD_LOG_ERROR, __VA_ARGS__)

/*
 * A logfmt value for `s`: unchanged when it is non-empty and holds only
 * printable ASCII (0x20..0x7e) other than space, '=', '"' and '\\'; else
 * double-quoted with \" \\ \n \t \r escapes and \xNN for every other byte
 * outside printable ASCII (control bytes, DEL, each byte of a UTF-8
 * sequence: "p-\xc3\xa9"). Quote every value that comes from input (event,
 * prospect and owner ids, topic names): ids may be logged, as printable
 * ASCII only. Written into buf (truncated to cap, never inside an escape,
 * always NUL-terminated); returns buf.
 */
const char *td_log_quote(char *buf, size_t cap, const char *s);

#endif
