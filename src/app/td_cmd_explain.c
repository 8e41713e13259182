#include "td_cli.h"
int td_cmd_explain(int argc, char **argv) { (void)argc; (void)argv; return 2; }
