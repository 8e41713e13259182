/*
 * fuzz_rules.c - libFuzzer target for the rules compiler: any bytes as a
 * rules file must compile or be rejected with diagnostics, never crash, leak
 * or hang; every diagnostic must format.
 */
#include <stdint.h>
#include <stdlib.h>

#include "td_rules.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > 64 * 1024) return 0;
    td_source src = {.name = "fuzz.rules", .text = (const char *)data, .len = size};
    td_diags d = {0};
    td_ruleset *rs = td_ruleset_compile(&src, 1, &d);
    for (size_t i = 0; i < d.n; i++)
        free(td_diag_format(&d.v[i]));
    td_ruleset_free(rs);
    td_diags_free(&d);
    return 0;
}
