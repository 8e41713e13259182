/*
 * test_rec_json_portable.c - test_rec_json.c's cases against td_engine.c
 * built without its SSE2 string scanner (TD_JSON_NO_SSE2): the portable
 * 64-bit-word path that non-x86 builds use. This file compiles td_engine.c
 * itself, so the library's td_engine.o is not linked in.
 */
#define TD_JSON_NO_SSE2 1
#include "../../src/core/td_engine.c"

#include "test_rec_json.c"
