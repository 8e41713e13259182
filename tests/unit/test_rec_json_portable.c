/*
 * test_rec_json_portable.c - test_rec_json.c's cases against the JSON string
 * scanner of td_base.c built without SSE2 (TD_JSON_NO_SSE2): the portable
 * 64-bit-word path that non-x86 builds use. This file compiles td_base.c and
 * td_engine.c (the recommendation writer) itself, so the library's td_base.o
 * and td_engine.o are not linked in.
 */
#define TD_JSON_NO_SSE2 1
#include "../../src/core/td_base.c"
#include "../../src/core/td_engine.c"

#include "test_rec_json.c"
