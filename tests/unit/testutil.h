/* Helpers the unit tests share: a writable argv, and capturing what a piece
 * of code writes to stdout or stderr. Include after <cmocka.h>. */
#ifndef TS_TESTUTIL_H
#define TS_TESTUTIL_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A writable argv built from string constants (argv[0] is "prog"). */
typedef struct {
    int argc;
    char *argv[16];
    char store[16][256];
} args_t;

/* mkargs(&a, "--x=1", "cmd", NULL) */
static inline void mkargs(args_t *a, ...)
{
    va_list ap;
    va_start(ap, a);
    a->argc = 0;
    for (const char *s = "prog"; s; s = va_arg(ap, const char *)) {
        assert_true(a->argc < 15 && strlen(s) < sizeof a->store[0]);
        strcpy(a->store[a->argc], s);
        a->argv[a->argc] = a->store[a->argc];
        a->argc++;
    }
    a->argv[a->argc] = NULL;
    va_end(ap);
}

/* Redirects a descriptor (1 or 2) into an unlinked temporary file. */
typedef struct {
    int target, saved, fd;
} capture_t;

static inline void capture_start(capture_t *c, int target)
{
    char path[] = "/tmp/ts_test_capture_XXXXXX";
    fflush(stdout);
    fflush(stderr);
    c->target = target;
    c->fd = mkstemp(path);
    assert_true(c->fd >= 0);
    unlink(path);
    c->saved = dup(target);
    assert_true(c->saved >= 0);
    assert_true(dup2(c->fd, target) >= 0);
}

/* Restores the descriptor; returns what was written (caller frees). */
static inline char *capture_end(capture_t *c)
{
    fflush(stdout);
    fflush(stderr);
    dup2(c->saved, c->target);
    close(c->saved);
    off_t len = lseek(c->fd, 0, SEEK_END);
    assert_true(len >= 0);
    char *text = calloc(1, (size_t)len + 1);
    assert_non_null(text);
    assert_int_equal(pread(c->fd, text, (size_t)len, 0), len);
    close(c->fd);
    return text;
}

#endif
