/*
 * td_cli.h - the command line: one function per `touchd` command, and the
 * shared helpers they use (loading a ruleset from files and directories).
 *
 * Exit codes are common to every command (docs/cli.md):
 *   0 success, 1 rules or input problems reported on stderr, 2 usage or
 *   configuration error, 3 (replay) some input lines were rejected, 4 (run)
 *   fatal runtime error (e.g. broker fatal error, cannot reach Redis at start).
 *
 * @locality main thread.
 */
#ifndef TD_CLI_H
#define TD_CLI_H

#include <stdint.h>
#include <stdio.h>

#include "td_rules.h"

enum {
    TD_EXIT_OK = 0,
    TD_EXIT_FAIL = 1,
    TD_EXIT_USAGE = 2,
    TD_EXIT_REJECTED = 3,
    TD_EXIT_FATAL = 4
};

/*
 * Reads rules from `paths` (files, or directories whose *.rules files are all
 * read, sorted by name; a directory's non-.rules files are ignored) and
 * compiles them as one ruleset. I/O errors become diagnostics too.
 * @returns the ruleset (caller frees with td_ruleset_free) or NULL; diags are
 * appended either way (caller frees).
 */
td_ruleset *td_load_rules(const char *const *paths, size_t n, td_diags *diags);
/* A signature of a rules directory: every *.rules file's name, size and
 * mtime, order-independent. It changes when a file is added, removed,
 * renamed or written (the daemon's reload poll; the shadow's too). */
uint64_t td_rules_dir_signature(const char *dir);

/* Prints every diagnostic (td_diag_format) and a summary line to f. */
void td_print_diags(const td_diags *d, FILE *f);

int td_cmd_check(int argc, char **argv);
int td_cmd_replay(int argc, char **argv);
int td_cmd_run(int argc, char **argv);     /* src/app/td_cmd_run.c */
int td_cmd_test(int argc, char **argv);    /* src/app/td_cmd_test.c */
int td_cmd_explain(int argc, char **argv); /* src/app/td_cmd_explain.c */
int td_cmd_gifts(int argc, char **argv);   /* src/app/td_cmd_gifts.c */

#endif
