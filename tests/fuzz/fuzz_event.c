/*
 * fuzz_event.c - libFuzzer target for the input boundary: td_event_decode on
 * the raw message, plus td_time_parse and td_duration_parse on the same
 * bytes (they also see untrusted text: event times, rules literals).
 *
 * Besides "does not crash" (ASan/UBSan do the judging), it checks the
 * invariants a caller relies on:
 * - a rejection always names a reason, NUL-terminated within its buffer,
 *   and its field and reason are printable ASCII whatever the input held
 *   (they are logged and sent as dead-letter headers: docs/events.md);
 * - an accepted event's strings are NUL-terminated within their arrays and
 *   its type/channel agree;
 * - a parsed time formats and parses back to the same instant, a parsed
 *   duration likewise.
 *
 * @locality libFuzzer's thread.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "td_event.h"
#include "td_time.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_str(const char *s, size_t cap) {
    if (memchr(s, '\0', cap) == NULL) abort();
}

static void check_printable(const char *s) {
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *s = (const char *)data;
    td_event ev;
    td_event_error err;
    if (td_event_decode(s, size, &ev, &err) == TD_OK) {
        if (td_event_type_name(ev.type) == NULL || ev.channel != td_event_type_channel(ev.type))
            abort();
        check_str(ev.id, sizeof ev.id);
        check_str(ev.prospect_id, sizeof ev.prospect_id);
        check_str(ev.owner_id, sizeof ev.owner_id);
        check_str(ev.kind, sizeof ev.kind);
        check_str(ev.timezone, sizeof ev.timezone);
        check_str(ev.language, sizeof ev.language);
        if (ev.id[0] == '\0' || ev.prospect_id[0] == '\0') abort();
        if ((ev.has & TD_HAS_VALUE) && ev.value_eur < 0) abort();
        if ((ev.has & TD_HAS_LTV) && ev.lifetime_value_eur < 0) abort();
    } else {
        check_str(err.field, sizeof err.field);
        check_str(err.reason, sizeof err.reason);
        if (err.reason[0] == '\0') abort();
        check_printable(err.field);
        check_printable(err.reason);
    }

    td_ms t, back;
    if (td_time_parse(s, size, &t) == TD_OK) {
        char buf[TD_TIME_BUF];
        size_t n = td_time_format(t, buf, sizeof buf);
        if (td_time_parse(buf, n, &back) != TD_OK || back != t) abort();
        td_civil c;
        td_civil_from_ms(t, &c);
        if (td_civil_to_ms(c.year, c.month, c.day, c.hour, c.minute, c.second) + c.ms != t) abort();
    }
    td_ms d;
    if (td_duration_parse(s, size, &d) == TD_OK) {
        char buf[64];
        size_t n = td_duration_format(d, buf, sizeof buf);
        if (td_duration_parse(buf, n, &back) != TD_OK || back != d) abort();
    }
    return 0;
}
