/*
 * fuzz_resp.c - libFuzzer target for td_resp_parse, the RESP2 reply parser
 * of the store's WATCH path (the bytes come from the Redis server).
 *
 * The input is parsed as a stream of replies. Properties checked: no crash,
 * no sanitizer report; a reply never takes more bytes than given and its
 * string lies inside them; every proper prefix of a reply is "incomplete"
 * (a read may end anywhere) and a refused input stays refused when more
 * bytes follow; numbers are in range.
 *
 * Seeds: tests/fuzz/corpus/fuzz_resp/. Run: see docs/testing.md.
 *
 * @locality libFuzzer's thread.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "td_resp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *p = (const char *)data;
    size_t at = 0;
    while (at < size) {
        td_resp r;
        ssize_t k = td_resp_parse(p + at, size - at, &r);
        if (k == 0) break; /* the rest is part of a reply */
        if (k < 0) {
            /* refused: with fewer bytes it is refused or incomplete, never a reply */
            for (size_t cut = 0; cut < size - at && cut < 64; cut++) {
                td_resp x;
                if (td_resp_parse(p + at, cut, &x) > 0) abort();
            }
            break;
        }
        if ((size_t)k > size - at) abort();
        switch (r.type) {
        case TD_RESP_STATUS:
        case TD_RESP_ERROR:
        case TD_RESP_BULK:
            if (r.s < p + at || r.s + r.len > p + at + (size_t)k) abort();
            break;
        case TD_RESP_ARRAY:
            if (r.i < 0) abort();
            break;
        case TD_RESP_INT:
        case TD_RESP_NIL:
            break;
        default:
            abort();
        }
        /* each proper prefix is incomplete */
        for (size_t cut = 0; cut < (size_t)k; cut++) {
            td_resp x;
            if (td_resp_parse(p + at, cut, &x) != 0) abort();
        }
        at += (size_t)k;
    }
    return 0;
}
