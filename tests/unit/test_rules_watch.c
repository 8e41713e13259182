/*
 * test_rules_watch.c - the rules directory's reload poll and its settle time
 * (td_rules_watch, src/app/td_load.c): a change is compiled only once it
 * has been quiet for settle_ms, by the poller's own observation or by the
 * files' times, never by a time in the future; and the directory scan that
 * feeds it sees writes, renames that keep size and mtime, and removals.
 */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "td_cli.h"

#define SETTLE 500
#define WALL0 1800000000000LL /* a wall clock in ms: 2027 */

static td_rules_watch watch_at(uint64_t sig) {
    td_rules_watch w = {.dir = "unused", .poll_ms = 50, .settle_ms = SETTLE, .sig = sig};
    return w;
}

/* `cat new > trust.rules` in two steps: truncated at 0 ms, written at
 * 300 ms. Neither state is compiled before it has been quiet 500 ms. */
static void test_two_step_write_waits(void **unused) {
    (void)unused;
    td_rules_watch w = watch_at(7);
    /* nothing changed */
    assert_int_equal(td_rules_watch_decide(&w, 7, WALL0 - 60000, 0, WALL0), -1);
    /* the truncation, seen 10 ms after it happened: wait 490 */
    assert_int_equal(td_rules_watch_decide(&w, 8, WALL0, 10, WALL0 + 10), 490);
    assert_int_equal(td_rules_watch_decide(&w, 8, WALL0, 200, WALL0 + 200), 300);
    /* the write, at 300 ms, seen at 310: the wait starts again */
    assert_int_equal(td_rules_watch_decide(&w, 9, WALL0 + 300, 310, WALL0 + 310), 490);
    assert_int_equal(td_rules_watch_decide(&w, 9, WALL0 + 300, 700, WALL0 + 700), 100);
    /* quiet for 500 ms: compile */
    assert_int_equal(td_rules_watch_decide(&w, 9, WALL0 + 300, 800, WALL0 + 800), 0);
}

/* A file renamed into place long after it was written carries a recent
 * ctime, so it waits too; one whose times say it has been quiet long enough
 * (the poll came late) is compiled at once. */
static void test_file_times_count(void **unused) {
    (void)unused;
    td_rules_watch w = watch_at(1);
    assert_int_equal(td_rules_watch_decide(&w, 2, WALL0 - 1500, 0, WALL0), 0);
    w = watch_at(1);
    assert_int_equal(td_rules_watch_decide(&w, 2, WALL0 - 499, 0, WALL0), 1);
}

/* A time in the future (a clock step, an NFS server's clock) proves
 * nothing: only the poller's own observation counts, in monotonic time. */
static void test_future_times_ignored(void **unused) {
    (void)unused;
    td_rules_watch w = watch_at(1);
    assert_int_equal(td_rules_watch_decide(&w, 2, WALL0 + 3600000, 0, WALL0), SETTLE);
    assert_int_equal(td_rules_watch_decide(&w, 2, WALL0 + 3600000, 499, WALL0 + 499), 1);
    assert_int_equal(td_rules_watch_decide(&w, 2, WALL0 + 3600000, 500, WALL0 + 500), 0);
    /* unknown times (nothing could be stat'ed) count as nothing either */
    w = watch_at(1);
    assert_int_equal(td_rules_watch_decide(&w, 2, INT64_MIN, 0, WALL0), SETTLE);
}

/* settle_ms = 0 compiles at first sight; a change undone (an editor's
 * swap dance) is no change, and forgets what was pending. */
static void test_no_settle_and_undone(void **unused) {
    (void)unused;
    td_rules_watch w = watch_at(1);
    w.settle_ms = 0;
    assert_int_equal(td_rules_watch_decide(&w, 2, WALL0, 0, WALL0), 0);
    w = watch_at(1);
    assert_true(td_rules_watch_decide(&w, 2, WALL0, 0, WALL0) > 0);
    assert_int_equal(w.pending, 2);
    assert_int_equal(td_rules_watch_decide(&w, 1, WALL0, 100, WALL0 + 100), -1);
    assert_int_equal(w.pending, 0);
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static int64_t wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The scan, on a real directory: a write changes the signature; so does a
 * rename over a file of the same size and mtime (cp -p then mv: a new
 * inode); a removal moves the latest change time (the directory's). */
static void test_scan_sees_renames_and_removals(void **unused) {
    (void)unused;
    char dir[] = "/tmp/td-watch-XXXXXX", a[64], b[64], tmp[64];
    assert_non_null(mkdtemp(dir));
    snprintf(a, sizeof a, "%s/a.rules", dir);
    snprintf(b, sizeof b, "%s/b.rules", dir);
    snprintf(tmp, sizeof tmp, "%s/.a.tmp", dir);
    write_text(a, "rules = ();\n");
    write_text(b, "rules = ();\n");
    int64_t t0 = wall_ms(), changed = 0;
    uint64_t s1 = td_rules_dir_scan(dir, &changed);
    assert_int_equal(s1, td_rules_dir_signature(dir));
    assert_true(changed > t0 - 5000 && changed <= t0 + 1000);

    /* same bytes, same mtime, a new inode renamed over a.rules */
    struct stat st;
    assert_int_equal(stat(a, &st), 0);
    write_text(tmp, "rules = ();\n");
    struct timespec times[2] = {st.st_atim, st.st_mtim};
    assert_int_equal(utimensat(AT_FDCWD, tmp, times, 0), 0);
    assert_int_equal(rename(tmp, a), 0);
    uint64_t s2 = td_rules_dir_scan(dir, NULL);
    assert_true(s2 != s1);

    /* a non-rules file does not change the signature */
    write_text(tmp, "x");
    assert_true(td_rules_dir_scan(dir, NULL) == s2);
    assert_int_equal(unlink(tmp), 0);

    /* a removal: a new signature, and the latest change is the removal's */
    usleep(20000);
    int64_t before = wall_ms();
    assert_int_equal(unlink(b), 0);
    uint64_t s3 = td_rules_dir_scan(dir, &changed);
    assert_true(s3 != s2);
    assert_true(changed >= before - 10); /* coarse file system clocks */

    assert_int_equal(unlink(a), 0);
    assert_int_equal(rmdir(dir), 0);
    /* a missing directory has a signature no real one has */
    assert_int_equal(td_rules_dir_scan(dir, NULL), 1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_two_step_write_waits),
        cmocka_unit_test(test_file_times_count),
        cmocka_unit_test(test_future_times_ignored),
        cmocka_unit_test(test_no_settle_and_undone),
        cmocka_unit_test(test_scan_sees_renames_and_removals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
