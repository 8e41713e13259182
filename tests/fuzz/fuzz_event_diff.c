/*
 * fuzz_event_diff.c - differential libFuzzer target for the event decoder's
 * two paths (src/core/td_event_internal.h).
 *
 * For every input:
 * - when the fast path accepts, the slow (jansson) path must accept too and
 *   produce a byte-identical td_event (both start from the same zeroed and
 *   sentinel-filled struct, so memcmp compares padding and the bytes after
 *   each string's NUL as well);
 * - td_event_decode (fast, then slow) must answer exactly as the slow path
 *   alone: same result, same event when accepted, the same field and reason
 *   byte for byte when rejected.
 * Any difference aborts. The seeds (tests/fuzz/corpus/fuzz_event_diff) are
 * valid events of every type, so mutations start inside the fast path's
 * subset and explore its edges: escapes, numbers, duplicates, nesting.
 *
 * @locality libFuzzer's thread.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "td_event.h"
#include "td_event_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *s = (const char *)data;
    /* Different fill bytes: a field one path forgets to set shows. */
    td_event fast, slow, both;
    memset(&fast, 0xa5, sizeof fast);
    memset(&slow, 0x5a, sizeof slow);
    memset(&both, 0x3c, sizeof both);
    td_event_error slow_err, both_err;
    memset(&slow_err, 0x11, sizeof slow_err);
    memset(&both_err, 0x22, sizeof both_err);

    int rf = td_event_decode_fast(s, size, &fast);
    int rs = td_event_decode_slow(s, size, &slow, &slow_err);
    int rb = td_event_decode(s, size, &both, &both_err);

    if (rf != TD_OK && rf != TD_EVENT_DECLINED) abort();
    if (rf == TD_OK && (rs != TD_OK || memcmp(&fast, &slow, sizeof fast) != 0))
        abort(); /* the fast path accepted what jansson does not, or differently */
    if (rb != rs) abort();
    if (rs == TD_OK) {
        if (memcmp(&both, &slow, sizeof both) != 0) abort();
        if (both_err.field[0] != '\0' || both_err.reason[0] != '\0') abort();
    } else if (strcmp(both_err.field, slow_err.field) != 0 ||
               strcmp(both_err.reason, slow_err.reason) != 0) {
        abort();
    }
    return 0;
}
