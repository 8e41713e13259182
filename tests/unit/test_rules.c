/*
 * test_rules.c - the rules compiler: structure checks, diagnostics with
 * file:line:col and caret, every error reported, settings, the ruleset hash,
 * and the per-type index the engine uses.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "td_rules.h"

static td_ruleset *compile1(const char *name, const char *text, td_diags *d) {
    td_source src = {.name = name, .text = text, .len = strlen(text)};
    return td_ruleset_compile(&src, 1, d);
}

/* Finds the first diagnostic with `code`, or NULL. */
static const td_diag *find_code(const td_diags *d, const char *code) {
    for (size_t i = 0; i < d->n; i++)
        if (strcmp(d->v[i].code, code) == 0) return &d->v[i];
    return NULL;
}

static const char *GOOD =
    "settings = { default_timezone = \"Europe/Paris\"; best_time_default_hour = 11; };\n"
    "rules = (\n"
    "  { id = \"ghosting.pivot-channel\";\n"
    "    doc = \"Two opened follow-ups, no reply: ask one short question.\";\n"
    "    on = [ \"email.opened\" ];\n"
    "    when = \"email.unanswered >= 2 && email.opens_since_reply >= 1 && !replied\";\n"
    "    priority = 80; group = \"follow-up\"; cooldown = \"3d\";\n"
    "    recommend = { channel = \"whatsapp\"; touch = \"micro_question\";\n"
    "                  at = \"now + 1h\"; note = \"Two lines.\"; }; },\n"
    "  { id = \"silence.after-value\"; on = [ \"email.sent\" ]; after = \"72h\";\n"
    "    when = \"email.unanswered > 0\";\n"
    "    recommend = { channel = \"linkedin\"; touch = \"follow_up\"; }; },\n"
    "  { id = \"guard.blocked\"; block = \"target.blocked\"; reason = \"blocked channel\"; },\n"
    "  { id = \"any.email\"; on = [ \"email.*\" ];\n"
    "    recommend = { channel = \"email\"; touch = \"follow_up\"; }; }\n"
    ");\n";

static void test_good_ruleset(void **state) {
    (void)state;
    td_diags d = {0};
    td_ruleset *rs = compile1("good.rules", GOOD, &d);
    for (size_t i = 0; i < d.n; i++) {
        char *s = td_diag_format(&d.v[i]);
        print_message("%s\n", s);
        free(s);
    }
    assert_non_null(rs);
    assert_int_equal(d.errors, 0);
    assert_int_equal(td_ruleset_count(rs), 4);
    const td_rule *r = td_ruleset_find(rs, "ghosting.pivot-channel");
    assert_non_null(r);
    assert_int_equal(r->priority, 80);
    assert_string_equal(r->group, "follow-up");
    assert_int_equal(r->cooldown, 3 * TD_DAY);
    assert_int_equal(r->channel, TD_CH_WHATSAPP);
    assert_string_equal(r->touch, "micro_question");
    assert_non_null(r->when);
    assert_non_null(r->at);
    assert_int_equal(r->line, 3);
    const td_rule *t = td_ruleset_find(rs, "silence.after-value");
    assert_int_equal(t->after, 72 * TD_HOUR);
    assert_null(t->group);
    assert_int_equal(t->priority, 50);
    const td_rule *g = td_ruleset_find(rs, "guard.blocked");
    assert_true(g->guard);
    assert_non_null(g->block);
    /* settings */
    const td_settings *s = td_ruleset_settings(rs);
    assert_string_equal(s->default_timezone, "Europe/Paris");
    assert_int_equal(s->best_time_default_hour, 11);
    assert_int_equal(s->best_time_min_points, 5); /* default kept */
    /* per-type index: email.opened triggers the pivot and the wildcard rule */
    size_t n;
    const td_rule *const *v = td_ruleset_for_event(rs, TD_EV_EMAIL_OPENED, &n);
    assert_int_equal(n, 2);
    assert_ptr_equal(v[0], r);
    assert_string_equal(v[1]->id, "any.email");
    v = td_ruleset_for_event(rs, TD_EV_SMS_SENT, &n);
    assert_int_equal(n, 0);
    v = td_ruleset_guards(rs, &n);
    assert_int_equal(n, 1);
    assert_ptr_equal(v[0], g);
    assert_true(td_rule_guards_trigger(g, TD_EV_SMS_SENT));
    assert_true(td_rule_guards_trigger(g, -1));
    /* hash */
    assert_int_equal(strlen(td_ruleset_hash(rs)), 71);
    assert_memory_equal(td_ruleset_hash(rs), "sha256:", 7);
    td_ruleset_free(rs);
    td_diags_free(&d);
}

static void test_hash_depends_on_content(void **state) {
    (void)state;
    td_ruleset *a = compile1("a.rules", GOOD, NULL);
    td_ruleset *b = compile1("a.rules", GOOD, NULL);
    char *changed = strdup(GOOD);
    char *p = strstr(changed, "priority = 80");
    p[12] = '1'; /* 81 */
    td_ruleset *c = compile1("a.rules", changed, NULL);
    td_ruleset *e = compile1("b.rules", GOOD, NULL);
    assert_non_null(a);
    assert_non_null(c);
    assert_string_equal(td_ruleset_hash(a), td_ruleset_hash(b));
    assert_string_not_equal(td_ruleset_hash(a), td_ruleset_hash(c));
    assert_string_not_equal(td_ruleset_hash(a), td_ruleset_hash(e));
    td_ruleset_free(a);
    td_ruleset_free(b);
    td_ruleset_free(c);
    td_ruleset_free(e);
    free(changed);
}

/* An unknown field in `when` is reported at the field's own line and column,
 * with the source line and a caret as long as the name. */
static void test_expression_error_position(void **state) {
    (void)state;
    const char *text = "rules = (\n"
                       "  { id = \"a\"; on = [ \"email.opened\" ];\n"
                       "    when = \"email.unanswered >= 2 && emial.sent > 1\";\n"
                       "    recommend = { channel = \"email\"; touch = \"follow_up\"; }; }\n"
                       ");\n";
    td_diags d = {0};
    td_ruleset *rs = compile1("x.rules", text, &d);
    assert_null(rs);
    assert_true(d.errors >= 1);
    const td_diag *x = find_code(&d, "E201");
    assert_non_null(x);
    assert_string_equal(x->file, "x.rules");
    assert_int_equal(x->line, 3);
    /* col of 'emial' : 4 spaces + `when = "` (8) + offset 25 in the string */
    const char *line3 = "    when = \"email.unanswered >= 2 && emial.sent > 1\";";
    int col = (int)(strstr(line3, "emial") - line3) + 1;
    assert_int_equal(x->col, col);
    assert_int_equal(x->caret_len, (int)strlen("emial.sent"));
    assert_non_null(x->source);
    assert_string_equal(x->source, line3);
    char *s = td_diag_format(x);
    assert_non_null(strstr(s, "x.rules:3:"));
    assert_non_null(strstr(s, "^~~~~~~~~"));
    free(s);
    td_diags_free(&d);
}

/* Concatenated strings over several lines still map to the right line. */
static void test_expression_error_position_multiline(void **state) {
    (void)state;
    const char *text = "rules = (\n"
                       "  { id = \"a\"; on = [ \"email.opened\" ];\n"
                       "    when = \"email.unanswered >= 2 \"\n"
                       "           \"&& nosuch.field\";\n"
                       "    recommend = { channel = \"email\"; touch = \"follow_up\"; }; }\n"
                       ");\n";
    td_diags d = {0};
    assert_null(compile1("m.rules", text, &d));
    const td_diag *x = find_code(&d, "E201");
    assert_non_null(x);
    assert_int_equal(x->line, 4);
    assert_int_equal(x->col, (int)strlen("           \"&& ") + 1);
    td_diags_free(&d);
}

/* Every error of every rule is reported, not just the first. */
static void test_all_errors_reported(void **state) {
    (void)state;
    const char *text =
        "rules = (\n"
        "  { id = \"Bad Id\"; on = [ \"email.opend\" ];\n"                    /* E103 E108 */
        "    recommend = { channel = \"fax\"; touch = \"follow_up\"; }; },\n" /* E110 */
        "  { id = \"b\"; on = [ \"email.opened\" ]; cooldwn = \"3d\";\n"      /* E105 */
        "    recommend = { channel = \"email\"; touch = \"x\"; at = \"1 +\"; }; },\n" /* E207 W301 */
        "  { id = \"c\"; on = [ \"email.opened\" ]; cooldown = \"soon\";\n"           /* E109 */
        "    recommend = { channel = \"email\"; touch = \"follow_up\"; }; },\n"
        "  { id = \"c\"; on = [ \"email.opened\" ];\n" /* E104 */
        "    recommend = { channel = \"email\"; touch = \"follow_up\"; }; },\n"
        "  { id = \"d\"; on = [ \"email.opened\" ]; }\n" /* E107 */
        ");\n";
    td_diags d = {0};
    assert_null(compile1("all.rules", text, &d));
    const char *codes[] = {"E103", "E108", "E110", "E105", "E109", "E104", "E107", "W301"};
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        const td_diag *x = find_code(&d, codes[i]);
        if (!x) print_message("missing %s\n", codes[i]);
        assert_non_null(x);
        assert_true(x->line > 0);
    }
    /* the typo suggestions */
    const td_diag *x = find_code(&d, "E108");
    assert_non_null(strstr(x->msg, "email.opened"));
    x = find_code(&d, "E105");
    assert_non_null(strstr(x->msg, "cooldown"));
    assert_int_equal(x->line, 4);
    /* at least one expression error from rule b's `at` */
    int expr_errors = 0;
    for (size_t i = 0; i < d.n; i++)
        if (d.v[i].code[0] == 'E' && d.v[i].code[1] == '2') expr_errors++;
    assert_true(expr_errors >= 1);
    assert_true(d.errors >= 7);
    td_diags_free(&d);
}

static void test_syntax_error_line(void **state) {
    (void)state;
    /* an array that is never closed */
    const char *text = "rules = (\n  { id = \"a\"; on = [ \"email.opened\" ;\n"
                       "    recommend = { channel = \"email\"; touch = \"x\"; }; }\n);\n";
    td_diags d = {0};
    assert_null(compile1("syn.rules", text, &d));
    const td_diag *x = find_code(&d, "E101");
    assert_non_null(x);
    assert_true(x->line >= 2 && x->line <= 3);
    td_diags_free(&d);
}

static void test_guard_scopes(void **state) {
    (void)state;
    /* rec.* is only readable in guards */
    const char *text = "rules = ( { id = \"a\"; on = [ \"email.opened\" ];\n"
                       "  when = \"rec.channel == 'email'\";\n"
                       "  recommend = { channel = \"email\"; touch = \"follow_up\"; }; } );\n";
    td_diags d = {0};
    assert_null(compile1("s.rules", text, &d));
    assert_non_null(find_code(&d, "E202"));
    td_diags_free(&d);
    /* and a `when` of the wrong type is an error */
    const char *text2 =
        "rules = ( { id = \"a\"; on = [ \"email.opened\" ]; when = \"email.sent\";\n"
        "  recommend = { channel = \"email\"; touch = \"follow_up\"; }; } );\n";
    td_diags d2 = {0};
    assert_null(compile1("t.rules", text2, &d2));
    assert_non_null(find_code(&d2, "E206"));
    td_diags_free(&d2);
}

static void test_settings_errors(void **state) {
    (void)state;
    const char *text = "settings = { default_timezone = \"Mars/Olympus\"; business_start_hour = 30;"
                       " best_time_min_pts = 3; };\n"
                       "rules = ( { id = \"a\"; on = [ \"email.opened\" ];\n"
                       "  recommend = { channel = \"email\"; touch = \"follow_up\"; }; } );\n";
    td_diags d = {0};
    assert_null(compile1("set.rules", text, &d));
    int e111 = 0, e105 = 0;
    for (size_t i = 0; i < d.n; i++) {
        e111 += strcmp(d.v[i].code, "E111") == 0;
        e105 += strcmp(d.v[i].code, "E105") == 0;
    }
    assert_int_equal(e111, 2); /* bad zone, hour out of range */
    assert_int_equal(e105, 1); /* unknown key, with a suggestion */
    td_diags_free(&d);
    /* settings twice across files */
    td_source two[2] = {
        {.name = "a.rules",
         .text = "settings = { best_time_default_hour = 9; };\n",
         .len = strlen("settings = { best_time_default_hour = 9; };\n")},
        {.name = "b.rules",
         .text = "settings = { best_time_default_hour = 9; };\n",
         .len = strlen("settings = { best_time_default_hour = 9; };\n")},
    };
    td_diags d2 = {0};
    assert_null(td_ruleset_compile(two, 2, &d2));
    assert_non_null(find_code(&d2, "E111"));
    td_diags_free(&d2);
}

static void test_no_sources_and_include(void **state) {
    (void)state;
    td_diags d = {0};
    assert_null(td_ruleset_compile(NULL, 0, &d));
    assert_non_null(find_code(&d, "E100"));
    td_diags_free(&d);
    td_diags d2 = {0};
    assert_null(compile1("inc.rules", "@include \"/etc/passwd\"\n", &d2));
    assert_non_null(find_code(&d2, "E101"));
    td_diags_free(&d2);
}

/* A file that cannot be what its author meant is refused, never served:
 * empty (a truncated write), not UTF-8 text (binary, NUL bytes; the bytes
 * are not echoed), and a last_fired('id') naming a rule the ruleset lost. */
static void test_half_written_files_refused(void **state) {
    (void)state;
    static const struct {
        const char *text;
        size_t len;
    } bad[] = {{"", 0},
               {"  # only a comment\n\n", 21},
               {"\0garbage\x01\xff", 11},
               {"rules = ();\x1b[2J", 15},
               {"rules = (); # caf\xc3", 19}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        td_diags d = {0};
        td_source src = {.name = "trust.rules", .text = bad[i].text, .len = bad[i].len};
        assert_null(td_ruleset_compile(&src, 1, &d));
        const td_diag *x = find_code(&d, "E115");
        if (!x) fail_msg("case %zu: no E115", i);
        assert_int_equal(x->severity, TD_SEV_ERROR);
        assert_null(x->source); /* never the file's bytes */
        for (const char *m = x->msg; *m; m++)
            assert_true((unsigned char)*m >= 0x20 && (unsigned char)*m < 0x7f);
        td_diags_free(&d);
    }
    /* valid UTF-8 (a note in French) is text */
    td_diags ok = {0};
    td_ruleset *rs = compile1("fr.rules",
                              "rules = ({ id = \"a\"; on = [\"email.sent\"];\n"
                              "  recommend = { channel = \"email\"; touch = \"follow_up\";\n"
                              "    note = \"Une question pr\xc3\xa9\x63ise.\"; }; });\n",
                              &ok);
    assert_non_null(rs);
    td_ruleset_free(rs);
    td_diags_free(&ok);

    const char *dangling = "rules = (\n"
                           "  { id = \"g\"; reason = \"x\";\n"
                           "    block = \"since(last_fired('gone.rule')) < 1d\"; },\n"
                           "  { id = \"a\"; on = [\"email.sent\"];\n"
                           "    recommend = { channel = \"email\"; touch = \"follow_up\"; }; });\n";
    td_diags d = {0};
    assert_null(compile1("g.rules", dangling, &d));
    const td_diag *x = find_code(&d, "E116");
    assert_non_null(x);
    assert_int_equal(x->line, 3);
    assert_int_equal(x->col, 32); /* the id, inside its quotes */
    assert_non_null(strstr(x->msg, "no rule 'gone.rule'"));
    td_diags_free(&d);
}

/* The bad byte of a file that is not text is named by line and column,
 * never shown. */
static void test_not_text_position(void **state) {
    (void)state;
    static const char text[] = "rules = (\n  { id = \"a\"; doc = \"caf\xc3\x28\"; }\n);\n";
    td_diags d = {0};
    td_source src = {.name = "t.rules", .text = text, .len = sizeof text - 1};
    assert_null(td_ruleset_compile(&src, 1, &d));
    const td_diag *x = find_code(&d, "E115");
    assert_non_null(x);
    assert_int_equal(x->line, 2);
    assert_int_equal(x->col, 25); /* the \xc3 not followed by a continuation byte */
    assert_null(x->source);
    assert_non_null(strstr(x->msg, "byte offset 34"));
    char *f = td_diag_format(x);
    assert_non_null(strstr(f, "t.rules:2:25: error E115"));
    for (const char *m = f; *m; m++)
        assert_true((unsigned char)*m >= 0x20 && (unsigned char)*m < 0x7f);
    free(f);
    td_diags_free(&d);
}

/* A reload is the files as they are now: every name a rule gives for
 * another rule or a group must still be there. Removing the rule `b.old`
 * (and its group `legacy`) from b.rules while a.rules still names it is an
 * error at each name, with its file:line:col; the ruleset is not built. */
static const char REF_A[] =
    "rules = (\n"
    "  { id = \"a.guard\"; reason = \"x\";\n"
    "    block = \"rec.rule in ['b.new', 'b.old'] && since(last_fired('b.old')) < 1d\"; },\n"
    "  { id = \"a.group-guard\"; reason = \"y\";\n"
    "    block = \"rec.group == 'legacy'\"; },\n"
    "  { id = \"a.sent\"; on = [\"email.sent\"];\n"
    "    withdraws = [ \"follow-up\", \"b.old\" ];\n"
    "    recommend = { channel = \"email\"; touch = \"follow_up\"; }; });\n";
static const char REF_B_OLD[] =
    "rules = (\n"
    "  { id = \"b.new\"; on = [\"email.opened\"]; group = \"follow-up\";\n"
    "    recommend = { channel = \"email\"; touch = \"follow_up\"; }; },\n"
    "  { id = \"b.old\"; on = [\"email.opened\"]; group = \"legacy\";\n"
    "    recommend = { channel = \"sms\"; touch = \"follow_up\"; }; });\n";
static const char REF_B_NEW[] =
    "rules = (\n"
    "  { id = \"b.new\"; on = [\"email.opened\"]; group = \"follow-up\";\n"
    "    recommend = { channel = \"email\"; touch = \"follow_up\"; }; });\n";

static const td_diag *find_msg(const td_diags *d, const char *code, const char *needle) {
    for (size_t i = 0; i < d->n; i++)
        if (strcmp(d->v[i].code, code) == 0 && strstr(d->v[i].msg, needle)) return &d->v[i];
    return NULL;
}

static void test_dangling_references(void **state) {
    (void)state;
    td_source before[2] = {{.name = "r/a.rules", .text = REF_A, .len = sizeof REF_A - 1},
                           {.name = "r/b.rules", .text = REF_B_OLD, .len = sizeof REF_B_OLD - 1}};
    td_diags d = {0};
    td_ruleset *rs = td_ruleset_compile(before, 2, &d);
    assert_non_null(rs);
    assert_int_equal(d.errors, 0);
    td_ruleset_free(rs);
    td_diags_free(&d);

    td_source after[2] = {before[0],
                          {.name = "r/b.rules", .text = REF_B_NEW, .len = sizeof REF_B_NEW - 1}};
    assert_null(td_ruleset_compile(after, 2, &d));
    static const struct {
        const char *code, *needle, *name;
        int line, col;
    } want[] = {
        {"E116", "guard 'a.guard' compares rec.rule with 'b.old'", "b.old", 3, 37},
        {"E116", "guard 'a.guard' reads last_fired('b.old')", "b.old", 3, 66},
        {"E116", "compares rec.group with 'legacy', but no rule of the ruleset has group", "legacy",
         5, 28},
        {"E114", "withdraws 'b.old'", "b.old", 7, 33},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const td_diag *x = find_msg(&d, want[i].code, want[i].needle);
        if (!x) fail_msg("no %s '%s'", want[i].code, want[i].needle);
        assert_string_equal(x->file, "r/a.rules");
        assert_int_equal(x->line, want[i].line);
        assert_int_equal(x->col, want[i].col);
        /* the caret is under the name, and as long */
        assert_int_equal(x->caret_len, (int)strlen(want[i].name));
        assert_non_null(x->source);
        assert_memory_equal(x->source + x->col - 1, want[i].name, strlen(want[i].name));
    }
    assert_int_equal(d.errors, 4);
    /* the names that are still there are not reported */
    assert_null(find_msg(&d, "E116", "'b.new'"));
    assert_null(find_msg(&d, "E114", "follow-up"));
    td_diags_free(&d);

    /* a name no id can have (too long, a control byte) is reported cut and
     * with '?' for the byte: never raw bytes in a log line */
    char text[512];
    snprintf(text, sizeof text,
             "rules = ({ id = \"g\"; reason = \"x\"; block = \"rec.rule == 'a\\nb' || "
             "rec.rule == '%070d'\"; },\n"
             "  { id = \"a\"; on = [\"email.sent\"];\n"
             "    recommend = { channel = \"email\"; touch = \"follow_up\"; }; });\n",
             0);
    assert_null(compile1("g.rules", text, &d));
    assert_int_equal(d.errors, 2);
    assert_non_null(find_msg(&d, "E116", "with 'a?b'"));
    const td_diag *x = find_msg(&d, "E116", "0000...'");
    assert_non_null(x);
    assert_int_equal(x->line, 1);
    td_diags_free(&d);
}

/* What a reload removes, for its log line: rule ids and files, counted
 * all, listed while they fit. */
static void test_ruleset_removed(void **state) {
    (void)state;
    td_source before[2] = {{.name = "r/a.rules", .text = REF_A, .len = sizeof REF_A - 1},
                           {.name = "r/b.rules", .text = REF_B_OLD, .len = sizeof REF_B_OLD - 1}};
    td_source after = {.name = "r/b.rules", .text = REF_B_NEW, .len = sizeof REF_B_NEW - 1};
    td_diags d = {0};
    td_ruleset *from = td_ruleset_compile(before, 2, &d);
    td_ruleset *to = td_ruleset_compile(&after, 1, &d);
    assert_non_null(from);
    assert_non_null(to);
    size_t nr = 0, nf = 0;
    char rules[200], files[200];
    td_ruleset_removed(from, to, &nr, rules, sizeof rules, &nf, files, sizeof files);
    assert_int_equal(nr, 4);
    assert_string_equal(rules, "a.guard,a.group-guard,a.sent,b.old");
    assert_int_equal(nf, 1);
    assert_string_equal(files, "a.rules");
    /* nothing removed the other way round */
    td_ruleset_removed(to, from, &nr, rules, sizeof rules, &nf, files, sizeof files);
    assert_int_equal(nr + nf, 0);
    assert_string_equal(rules, "");
    /* bounded: what does not fit is counted */
    td_ruleset_removed(from, to, &nr, rules, 40, &nf, files, sizeof files);
    assert_int_equal(nr, 4);
    assert_string_equal(rules, "a.guard,+3");
    td_ruleset_free(from);
    td_ruleset_free(to);
    td_diags_free(&d);
}

/* Warnings: the ruleset compiles, each problem is named with its rule's line. */
static void test_lint_warnings(void **state) {
    (void)state;
    const char *text =
        "rules = (\n"
        "  { id = \"never\"; on = [ \"email.opened\" ]; when = \"false\";\n" /* 2: W304 */
        "    recommend = { channel = \"email\"; touch = \"follow_up\"; }; },\n"
        "  { id = \"wrong-event\"; on = [ \"email.sent\" ]; when = \"event.sentiment == "
        "'positive'\";\n" /* 4 */
        "    recommend = { channel = \"email\"; touch = \"follow_up\"; }; },\n"
        "  { id = \"timer-event\"; on = [ \"email.sent\" ]; after = \"72h\"; cooldown = "
        "\"7d\";\n" /* 6 */
        "    when = \"event.kind == 'value'\";\n"
        "    recommend = { channel = \"email\"; touch = \"follow_up\"; }; },\n"
        "  { id = \"a\"; on = [ \"email.opened\" ]; group = \"g\"; priority = 60;\n" /* 9 */
        "    recommend = { channel = \"email\"; touch = \"follow_up\"; }; },\n"
        "  { id = \"b\"; on = [ \"email.opened\" ]; group = \"g\"; priority = 40; when = "
        "\"tier == 1\";\n" /* 11 */
        "    recommend = { channel = \"sms\"; touch = \"follow_up\"; }; },\n"
        "  { id = \"c\"; on = [ \"email.opened\" ]; group = \"g\"; priority = 40;\n" /* 13 */
        "    recommend = { channel = \"linkedin\"; touch = \"follow_up\"; }; },\n"
        "  { id = \"ok\"; on = [ \"email.replied\" ]; when = \"event.sentiment == "
        "'positive'\";\n"
        "    recommend = { channel = \"email\"; touch = \"human_reply\"; }; }\n"
        ");\n";
    td_diags d = {0};
    td_ruleset *rs = compile1("lint.rules", text, &d);
    assert_non_null(rs); /* warnings do not reject */
    assert_int_equal(d.errors, 0);
    struct {
        const char *code;
        int line;
        const char *needle;
    } want[] = {
        {"W304", 2, "'never' can never fire"},
        {"W304", 4, "event.sentiment"},
        {"W305", 6, "event.kind"},
        {"W308", 6, "cooldown 1w"},
        {"W306", 13, "same priority 40"},
        {"W307", 11, "'b' can only win"},
        {"W307", 13, "'c' can only win"},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        bool found = false;
        for (size_t j = 0; j < d.n; j++)
            if (strcmp(d.v[j].code, want[i].code) == 0 && d.v[j].line == want[i].line &&
                strstr(d.v[j].msg, want[i].needle))
                found = true;
        if (!found)
            print_message("missing %s at line %d (%s)\n", want[i].code, want[i].line,
                          want[i].needle);
        assert_true(found);
    }
    /* the well-formed reply rule gets no warning */
    for (size_t j = 0; j < d.n; j++)
        assert_null(strstr(d.v[j].msg, "'ok'"));
    assert_int_equal(d.warnings, 7);
    td_ruleset_free(rs);
    td_diags_free(&d);
}

static void test_touch_vocabulary(void **state) {
    (void)state;
    assert_true(td_touch_known("micro_question"));
    assert_true(td_touch_known("owner_nudge"));
    assert_false(td_touch_known("spam_blast"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_ruleset),
        cmocka_unit_test(test_hash_depends_on_content),
        cmocka_unit_test(test_expression_error_position),
        cmocka_unit_test(test_expression_error_position_multiline),
        cmocka_unit_test(test_all_errors_reported),
        cmocka_unit_test(test_syntax_error_line),
        cmocka_unit_test(test_guard_scopes),
        cmocka_unit_test(test_settings_errors),
        cmocka_unit_test(test_no_sources_and_include),
        cmocka_unit_test(test_half_written_files_refused),
        cmocka_unit_test(test_not_text_position),
        cmocka_unit_test(test_dangling_references),
        cmocka_unit_test(test_ruleset_removed),
        cmocka_unit_test(test_lint_warnings),
        cmocka_unit_test(test_touch_vocabulary),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
