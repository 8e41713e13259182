/*
 * td_cmd_check.c - `touchd check RULES...`: compile a ruleset and report.
 *
 * Exit 0 when the ruleset compiles (warnings allowed, or refused with
 * --strict), 1 with diagnostics, 2 on usage errors.
 *
 * @locality main thread.
 */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "td_cli.h"

static void usage(FILE *f) {
    fprintf(f, "usage: touchd check [--quiet] [--strict] RULES...\n"
               "\n"
               "Compiles the rules files (and every *.rules file of each directory given) as one\n"
               "ruleset and prints every error and warning as file:line:col with the source line.\n"
               "\n"
               "  -q, --quiet   print only diagnostics, not the summary line\n"
               "      --strict  treat warnings as errors (exit 1 when there is any)\n"
               "  -h, --help    this help\n"
               "\n"
               "Exit status: 0 the ruleset is valid, 1 it has errors, 2 usage error.\n");
}

int td_cmd_check(int argc, char **argv) {
    static const struct option opts[] = {{"quiet", no_argument, NULL, 'q'},
                                         {"strict", no_argument, NULL, 's'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    bool quiet = false, strict = false;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "qh", opts, NULL)) != -1) {
        switch (c) {
        case 'q':
            quiet = true;
            break;
        case 's':
            strict = true;
            break;
        case 'h':
            usage(stdout);
            return TD_EXIT_OK;
        default:
            usage(stderr);
            return TD_EXIT_USAGE;
        }
    }
    if (optind >= argc) {
        fprintf(stderr, "touchd check: give at least one rules file or directory\n");
        usage(stderr);
        return TD_EXIT_USAGE;
    }
    td_diags diags = {0};
    td_ruleset *rs =
        td_load_rules((const char *const *)argv + optind, (size_t)(argc - optind), &diags);
    td_print_diags(&diags, stderr);
    int rc = TD_EXIT_OK;
    if (!rs || (strict && diags.warnings)) rc = TD_EXIT_FAIL;
    if (!quiet) {
        if (rs) {
            size_t guards = 0, timers = 0, n = td_ruleset_count(rs);
            for (size_t i = 0; i < n; i++) {
                guards += td_ruleset_rule(rs, i)->guard;
                timers += td_ruleset_rule(rs, i)->after > 0;
            }
            fprintf(stderr, "ok: %zu rules (%zu guards, %zu timer rules), %zu warning%s, %s\n", n,
                    guards, timers, diags.warnings, diags.warnings == 1 ? "" : "s",
                    td_ruleset_hash(rs));
        } else {
            fprintf(stderr, "failed: %zu error%s, %zu warning%s\n", diags.errors,
                    diags.errors == 1 ? "" : "s", diags.warnings, diags.warnings == 1 ? "" : "s");
        }
    }
    td_ruleset_free(rs);
    td_diags_free(&diags);
    return rc;
}
