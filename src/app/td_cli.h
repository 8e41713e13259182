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
/* A signature of a rules directory: every *.rules file's name, size, mtime
 * and inode, order-independent. It changes when a file is added, removed,
 * renamed or written (the daemon's reload poll; the shadow's too). With
 * changed_ms (may be NULL): the wall-clock time of the directory's latest
 * change, the newest mtime or ctime of the directory and of its *.rules
 * files (INT64_MIN when nothing could be read). */
uint64_t td_rules_dir_scan(const char *dir, int64_t *changed_ms);
uint64_t td_rules_dir_signature(const char *dir);

/*
 * The reload poll of a rules directory, with its settle time
 * (rules.settle_ms; docs/operations.md, "Rules reload"). Every poll_ms the
 * directory is scanned; a change is compiled only once the directory has
 * been quiet for settle_ms: unchanged since the poller first saw it, or
 * last changed (file times) that long ago. So `cat new > trust.rules`,
 * which leaves an empty file for a moment, is compiled once, whole. While
 * a change settles, the next look is due when it may be quiet; the caller
 * never waits.
 */
typedef struct td_rules_watch {
    const char *dir;       /* borrowed */
    int poll_ms;           /* 0: no polling (SIGHUP only) */
    int settle_ms;         /* 0: compile as soon as a change is seen */
    uint64_t sig;          /* the directory as last compiled */
    uint64_t pending;      /* a signature seen since and not compiled; 0: none */
    int64_t pending_since; /* monotonic ms it was first seen */
    int64_t next_poll;     /* monotonic ms */
} td_rules_watch;

typedef enum td_rules_watch_event {
    TD_WATCH_IDLE = 0,     /* not due, or nothing changed */
    TD_WATCH_SETTLE_BEGIN, /* a change, not yet quiet: the first poll that sees it so */
    TD_WATCH_SETTLING,     /* still not quiet */
    TD_WATCH_RELOAD        /* changed and quiet: compile now (td_rules_watch_compiling) */
} td_rules_watch_event;

/* Starts watching dir (borrowed: it must outlive w) as it is now. */
void td_rules_watch_init(td_rules_watch *w, const char *dir, int poll_ms, int settle_ms,
                         int64_t mono);
/* Call just before compiling the directory (a reload for any reason): the
 * signature of what is about to be read becomes the one in force. */
void td_rules_watch_compiling(td_rules_watch *w);
/* One look, when due, at monotonic time mono and wall time wall (ms). */
td_rules_watch_event td_rules_watch_poll(td_rules_watch *w, int64_t mono, int64_t wall);
/* The decision alone, for a scan that gave sig and changed_ms: -1 nothing
 * changed, 0 compile now, > 0 the ms the change still has to stay quiet.
 * No I/O, no clock. */
int64_t td_rules_watch_decide(td_rules_watch *w, uint64_t sig, int64_t changed_ms, int64_t mono,
                              int64_t wall);

/* Prints every diagnostic (td_diag_format) and a summary line to f. */
void td_print_diags(const td_diags *d, FILE *f);

int td_cmd_check(int argc, char **argv);
int td_cmd_replay(int argc, char **argv);
int td_cmd_run(int argc, char **argv);     /* src/app/td_cmd_run.c */
int td_cmd_test(int argc, char **argv);    /* src/app/td_cmd_test.c */
int td_cmd_explain(int argc, char **argv); /* src/app/td_cmd_explain.c */
int td_cmd_gifts(int argc, char **argv);   /* src/app/td_cmd_gifts.c */

#endif
