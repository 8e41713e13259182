/*
 * main.c - `touchd COMMAND ...`: dispatches to one function per command
 * (td_cli.h). Nothing else lives here, so tests link every command.
 *
 * @locality main thread.
 */
#include <stdio.h>
#include <string.h>

#include "td_cli.h"

#ifndef TD_VERSION
#define TD_VERSION "dev"
#endif

static void usage(FILE *f) {
    fprintf(f,
            "usage: touchd COMMAND [options]\n"
            "\n"
            "Commands:\n"
            "  run -c FILE          the daemon: Kafka in, Redis state, recommendations out\n"
            "  check RULES...       validate rules files; exit 0 when clean, 1 with diagnostics\n"
            "  replay --rules DIR FILE.jsonl|-\n"
            "                       events through the rules offline; recommendations on stdout\n"
            "  test RULES...        run the rules' test files (*.test beside the rules)\n"
            "  explain --rules DIR --events FILE.jsonl --prospect ID [--at EVENT_ID | --now TIME]\n"
            "                       why each rule did or did not fire for a prospect\n"
            "  gifts -c FILE | --events FILE.jsonl [--prospect ID] [--year YYYY]\n"
            "                       the gift register: gifts, yearly totals, tax caps\n"
            "\n"
            "`touchd COMMAND --help` describes each command. Documentation: docs/cli.md.\n"
            "Options: -h, --help; -V, --version.\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return TD_EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return TD_EXIT_OK;
    }
    if (strcmp(cmd, "-V") == 0 || strcmp(cmd, "--version") == 0) {
        printf("touchd %s\n", TD_VERSION);
        return TD_EXIT_OK;
    }
    if (strcmp(cmd, "check") == 0) return td_cmd_check(argc - 1, argv + 1);
    if (strcmp(cmd, "replay") == 0) return td_cmd_replay(argc - 1, argv + 1);
    if (strcmp(cmd, "run") == 0) return td_cmd_run(argc - 1, argv + 1);
    if (strcmp(cmd, "test") == 0) return td_cmd_test(argc - 1, argv + 1);
    if (strcmp(cmd, "explain") == 0) return td_cmd_explain(argc - 1, argv + 1);
    if (strcmp(cmd, "gifts") == 0) return td_cmd_gifts(argc - 1, argv + 1);
    fprintf(stderr, "touchd: unknown command '%s'\n\n", cmd);
    usage(stderr);
    return TD_EXIT_USAGE;
}
