/*
 * td_calendar_load.c - loads config/holidays/ (see td_calendar_load.h).
 *
 * Files are read in sorted name order so that error messages and merges do
 * not depend on readdir order. A file must be a regular file (symlinks to
 * one are fine) of at most TD_CAL_FILE_MAX bytes.
 *
 * @locality any thread.
 */
#include "td_calendar_load.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define EXT ".holidays"

static int name_cmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void free_names(char **v, size_t n) {
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

/* Reads a whole file; NULL with err set on failure. */
static char *read_file(const char *path, size_t *len, char *err, size_t errcap) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        snprintf(err, errcap, "%s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errcap, "%s: not a regular file", path);
        fclose(f);
        return NULL;
    }
    if (st.st_size > TD_CAL_FILE_MAX) {
        snprintf(err, errcap, "%s: larger than %d bytes", path, TD_CAL_FILE_MAX);
        fclose(f);
        return NULL;
    }
    char *buf = malloc((size_t)st.st_size + 1);
    if (buf == NULL) {
        snprintf(err, errcap, "%s: out of memory", path);
        fclose(f);
        return NULL;
    }
    size_t n = fread(buf, 1, (size_t)st.st_size, f);
    if (ferror(f)) {
        snprintf(err, errcap, "%s: read error", path);
        free(buf);
        fclose(f);
        return NULL;
    }
    fclose(f);
    buf[n] = '\0';
    *len = n;
    return buf;
}

td_calendar *td_calendar_load_dir(const char *dir, char *err, size_t errcap) {
    char scratch[8];
    if (err == NULL || errcap == 0) {
        err = scratch;
        errcap = sizeof scratch;
    }
    err[0] = '\0';
    DIR *d = opendir(dir);
    if (d == NULL) {
        snprintf(err, errcap, "%s: %s", dir, strerror(errno));
        return NULL;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    const size_t ext = strlen(EXT);
    while ((de = readdir(d)) != NULL) {
        size_t len = strlen(de->d_name);
        if (de->d_name[0] == '.' || len <= ext || strcmp(de->d_name + len - ext, EXT) != 0)
            continue;
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 32;
            char **v = realloc(names, nc * sizeof *v);
            if (v == NULL) goto oom;
            names = v;
            cap = nc;
        }
        if ((names[n] = strdup(de->d_name)) == NULL) goto oom;
        n++;
    }
    closedir(d);
    d = NULL;
    if (n > 0) qsort(names, n, sizeof *names, name_cmp);

    td_calendar *cal = td_calendar_new();
    if (cal == NULL) goto oom;
    for (size_t i = 0; i < n; i++) {
        char path[4096];
        if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, names[i]) >= sizeof path) {
            snprintf(err, errcap, "%s/%s: path too long", dir, names[i]);
            goto fail;
        }
        char region[TD_CAL_REGION_MAX + 2];
        size_t rl = strlen(names[i]) - ext;
        if (rl > TD_CAL_REGION_MAX) {
            snprintf(err, errcap, "%s: bad region name (expected CC" EXT " or CC-SUB" EXT ")",
                     path);
            goto fail;
        }
        memcpy(region, names[i], rl);
        region[rl] = '\0';
        size_t len = 0;
        char *text = read_file(path, &len, err, errcap);
        if (text == NULL) goto fail;
        char msg[512];
        int rc = td_calendar_add(cal, region, text, len, msg, sizeof msg);
        free(text);
        if (rc != TD_OK) {
            snprintf(err, errcap, "%s: %s", path, msg);
            goto fail;
        }
    }
    free_names(names, n);
    return cal;
fail:
    td_calendar_free(cal);
    free_names(names, n);
    return NULL;
oom:
    if (d != NULL) closedir(d);
    free_names(names, n);
    snprintf(err, errcap, "%s: out of memory", dir);
    return NULL;
}
