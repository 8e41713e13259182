/*
 * td_load.c - reading rules from disk for the commands: files and
 * directories in, one compiled ruleset out. This is the I/O half of rules
 * loading; compilation (td_rules.c) never touches the file system.
 *
 * A directory contributes its *.rules files (not recursive), sorted by name
 * so that the ruleset, and its hash, do not depend on readdir order. The
 * *.test files beside them are not rules.
 *
 * @locality main thread.
 */
#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "td_cli.h"

typedef struct srclist {
    td_source *v;
    char **bufs;
    char **names;
    size_t n, cap;
} srclist;

static void add_io_error(td_diags *d, const char *path, const char *what) {
    /* reuse the compiler's diagnostic type so every problem prints the same way */
    if (td_grow(&d->v, &d->cap, d->n, sizeof *d->v, 8) != TD_OK) return;
    td_diag *x = &d->v[d->n++];
    memset(x, 0, sizeof *x);
    x->severity = TD_SEV_ERROR;
    td_strlcpy(x->code, "E100", sizeof x->code);
    x->file = strdup(path);
    x->msg = strdup(what);
    x->caret_len = 1;
    d->errors++;
}

static int read_file(const char *path, char **out, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    if (!buf) {
        fclose(f);
        return -1;
    }
    for (;;) {
        if (n == cap) {
            if (cap > (64u << 20)) { /* a 64 MiB rules file is a mistake */
                free(buf);
                fclose(f);
                errno = EFBIG;
                return -1;
            }
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                fclose(f);
                return -1;
            }
            buf = nb;
            cap *= 2;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) break;
    }
    int err = ferror(f);
    fclose(f);
    if (err) {
        free(buf);
        errno = EIO;
        return -1;
    }
    *out = buf;
    *len = n;
    return 0;
}

static int add_file(srclist *l, const char *path, td_diags *d) {
    char *buf;
    size_t len;
    if (read_file(path, &buf, &len) != 0) {
        char msg[256];
        snprintf(msg, sizeof msg, "cannot read rules file: %s", strerror(errno));
        add_io_error(d, path, msg);
        return -1;
    }
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        td_source *v = realloc(l->v, cap * sizeof *v);
        char **b = realloc(l->bufs, cap * sizeof *b);
        char **nm = realloc(l->names, cap * sizeof *nm);
        if (v) l->v = v;
        if (b) l->bufs = b;
        if (nm) l->names = nm;
        if (!v || !b || !nm) {
            free(buf);
            return -1;
        }
        l->cap = cap;
    }
    l->names[l->n] = strdup(path);
    l->bufs[l->n] = buf;
    l->v[l->n] = (td_source){.name = l->names[l->n], .text = buf, .len = len};
    l->n++;
    return 0;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void add_dir(srclist *l, const char *dir, td_diags *d) {
    DIR *dp = opendir(dir);
    if (!dp) {
        char msg[256];
        snprintf(msg, sizeof msg, "cannot open rules directory: %s", strerror(errno));
        add_io_error(d, dir, msg);
        return;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(dp))) {
        size_t len = strlen(e->d_name);
        if (len < 7 || strcmp(e->d_name + len - 6, ".rules") != 0 || e->d_name[0] == '.') continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            char **nn = realloc(names, cap * sizeof *nn);
            if (!nn) break;
            names = nn;
        }
        size_t dl = strlen(dir);
        char *p = malloc(dl + len + 2);
        if (!p) break;
        memcpy(p, dir, dl);
        size_t k = dl;
        if (k && p[k - 1] != '/') p[k++] = '/';
        memcpy(p + k, e->d_name, len + 1);
        names[n++] = p;
    }
    closedir(dp);
    qsort(names, n, sizeof *names, cmp_str);
    for (size_t i = 0; i < n; i++) {
        add_file(l, names[i], d);
        free(names[i]);
    }
    free(names);
    if (n == 0) {
        char msg[256];
        snprintf(msg, sizeof msg, "no *.rules files in this directory");
        add_io_error(d, dir, msg);
    }
}

td_ruleset *td_load_rules(const char *const *paths, size_t n, td_diags *diags) {
    srclist l = {0};
    size_t errors_before = diags->errors;
    for (size_t i = 0; i < n; i++) {
        struct stat sb;
        if (stat(paths[i], &sb) != 0) {
            char msg[256];
            snprintf(msg, sizeof msg, "cannot read: %s", strerror(errno));
            add_io_error(diags, paths[i], msg);
        } else if (S_ISDIR(sb.st_mode))
            add_dir(&l, paths[i], diags);
        else
            add_file(&l, paths[i], diags);
    }
    td_ruleset *rs = NULL;
    if (diags->errors == errors_before) rs = td_ruleset_compile(l.v, l.n, diags);
    for (size_t i = 0; i < l.n; i++) {
        free(l.bufs[i]);
        free(l.names[i]);
    }
    free(l.v);
    free(l.bufs);
    free(l.names);
    return rs;
}

void td_print_diags(const td_diags *d, FILE *f) {
    for (size_t i = 0; i < d->n; i++) {
        char *s = td_diag_format(&d->v[i]);
        if (s) {
            fprintf(f, "%s\n", s);
            free(s);
        }
    }
}

/* Folds one stat into the scan: the signature takes the name, size, mtime
 * and inode (a rename puts a new inode in place even when it keeps size
 * and mtime, as `cp -p` then `mv` does); the latest change takes mtime and
 * ctime (ctime moves on a rename and on every write, and no one can set it
 * back). */
static int64_t ld_stat_ms(const struct timespec *t) {
    return (int64_t)t->tv_sec * 1000 + t->tv_nsec / 1000000;
}

static void ld_scan_times(const struct stat *st, int64_t *latest) {
    int64_t m = ld_stat_ms(&st->st_mtim), c = ld_stat_ms(&st->st_ctim);
    if (m > *latest) *latest = m;
    if (c > *latest) *latest = c;
}

uint64_t td_rules_dir_scan(const char *dir, int64_t *changed_ms) {
    int64_t latest = INT64_MIN;
    struct stat dst;
    /* the directory's own times move when an entry is added, removed or
     * renamed: a removal leaves no file to stat */
    if (stat(dir, &dst) == 0) ld_scan_times(&dst, &latest);
    DIR *d = opendir(dir);
    if (!d) {
        if (changed_ms) *changed_ms = latest;
        return 1; /* "missing": differs from any real signature */
    }
    uint64_t sig = 0, n = 0;
    struct dirent *e;
    char path[4352];
    while ((e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);
        if (len < 7 || strcmp(e->d_name + len - 6, ".rules") != 0) continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(path, &st) != 0) continue;
        ld_scan_times(&st, &latest);
        struct {
            int64_t size, sec, nsec;
            uint64_t ino;
        } meta = {(int64_t)st.st_size, (int64_t)st.st_mtim.tv_sec, (int64_t)st.st_mtim.tv_nsec,
                  (uint64_t)st.st_ino};
        uint64_t h = td_hash64(e->d_name, len, TD_HASH_SEED);
        h = td_hash64(&meta, sizeof meta, h);
        sig += h; /* order-independent */
        n++;
    }
    closedir(d);
    if (changed_ms) *changed_ms = latest;
    return td_hash64(&n, sizeof n, sig) | 2;
}

uint64_t td_rules_dir_signature(const char *dir) { return td_rules_dir_scan(dir, NULL); }

/* ---- the reload poll and its settle time ---- */

void td_rules_watch_init(td_rules_watch *w, const char *dir, int poll_ms, int settle_ms,
                         int64_t mono) {
    memset(w, 0, sizeof *w);
    w->dir = dir;
    w->poll_ms = poll_ms;
    w->settle_ms = settle_ms;
    w->sig = td_rules_dir_signature(dir);
    w->next_poll = mono + poll_ms;
}

void td_rules_watch_compiling(td_rules_watch *w) {
    w->sig = td_rules_dir_signature(w->dir);
    w->pending = 0;
}

int64_t td_rules_watch_decide(td_rules_watch *w, uint64_t sig, int64_t changed_ms, int64_t mono,
                              int64_t wall) {
    if (sig == w->sig) {
        w->pending = 0; /* changed back (an editor's swap dance): nothing to do */
        return -1;
    }
    if (sig != w->pending) {
        w->pending = sig;
        w->pending_since = mono;
    }
    if (w->settle_ms <= 0) return 0;
    /* Quiet for as long as the poller has seen this signature unchanged,
     * or as the file times say, whichever is longer: a file changed before
     * the poll noticed it need not wait again. A time in the future (a
     * clock step, another host's clock) proves nothing. */
    int64_t quiet = mono - w->pending_since;
    if (changed_ms != INT64_MIN && changed_ms <= wall && wall - changed_ms > quiet)
        quiet = wall - changed_ms;
    return quiet >= w->settle_ms ? 0 : w->settle_ms - quiet;
}

td_rules_watch_event td_rules_watch_poll(td_rules_watch *w, int64_t mono, int64_t wall) {
    if (w->poll_ms <= 0 || mono < w->next_poll) return TD_WATCH_IDLE;
    bool settling = w->pending != 0;
    int64_t changed;
    uint64_t sig = td_rules_dir_scan(w->dir, &changed);
    int64_t wait = td_rules_watch_decide(w, sig, changed, mono, wall);
    /* a change not yet quiet is looked at again when it may be, not a
     * whole poll later; nothing here waits: the loop goes on */
    w->next_poll = mono + (wait > 0 && wait < w->poll_ms ? wait : w->poll_ms);
    if (wait < 0) return TD_WATCH_IDLE;
    if (wait == 0) return TD_WATCH_RELOAD;
    return settling ? TD_WATCH_SETTLING : TD_WATCH_SETTLE_BEGIN;
}
