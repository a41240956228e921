/* file.c - open and read regular files only, never blocking (contract in file.h). */
#include "io/file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* What a non-regular file is, for the message. */
static const char *file_kind(mode_t mode)
{
    if (S_ISDIR(mode)) return "a directory";
    if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
    if (S_ISSOCK(mode)) return "a socket";
    if (S_ISCHR(mode)) return "a character device";
    if (S_ISBLK(mode)) return "a block device";
    return "of an unknown type";
}

/* MI_ERR_IO "PATH: cannot open: WHY" with errno = e on return. */
static mi_status open_fail(const char *path, int e, const char *why)
{
    mi_fail(MI_ERR_IO, "%s: cannot open: %s", path, why);
    errno = e;
    return MI_ERR_IO;
}

mi_status mi_file_open(const char *path, int *fd, struct stat *sb)
{
    *fd = -1;
    /* O_NONBLOCK: opening a FIFO for reading returns at once instead of waiting
     * for a writer; the file type is checked before anything is read. */
    int f = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (f < 0) {
        int e = errno;
        struct stat lsb;
        if (e == ELOOP)
            return open_fail(path, e, "symlink loop (too many levels of symbolic links)");
        if (e == ENOENT && lstat(path, &lsb) == 0 && S_ISLNK(lsb.st_mode))
            return open_fail(path, e, "dangling symlink (its target does not exist)");
        return open_fail(path, e, strerror(e));
    }
    if (fstat(f, sb) != 0) {
        int e = errno;
        close(f);
        return open_fail(path, e, strerror(e));
    }
    if (!S_ISREG(sb->st_mode)) {
        close(f);
        mi_fail(MI_ERR_IO, "%s: not a regular file (%s)", path, file_kind(sb->st_mode));
        errno = S_ISDIR(sb->st_mode) ? EISDIR : EINVAL;
        return MI_ERR_IO;
    }
    int flags = fcntl(f, F_GETFL);
    if (flags < 0 || fcntl(f, F_SETFL, flags & ~O_NONBLOCK) < 0) {
        int e = errno;
        close(f);
        return open_fail(path, e, strerror(e));
    }
    *fd = f;
    return MI_OK;
}

mi_status mi_file_read_exact(int fd, const char *path, void *buf, size_t size)
{
    size_t got = 0;
    while (got < size) {
        ssize_t n = read(fd, (char *)buf + got, size - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            int e = n < 0 ? errno : 0;
            mi_fail(MI_ERR_IO, "%s: read %zu of %zu bytes: %s", path, got, size,
                    e ? strerror(e) : "the file shrank while it was read");
            errno = e;
            return MI_ERR_IO;
        }
        got += (size_t)n;
    }
    return MI_OK;
}

mi_status mi_file_read(const char *path, char **data, size_t *len)
{
    *data = NULL;
    *len = 0;
    int fd;
    struct stat sb;
    MI_TRY(mi_file_open(path, &fd, &sb));
    size_t size = (size_t)sb.st_size;
    char *buf = malloc(size + 1);
    if (!buf) {
        close(fd);
        return mi_fail(MI_ERR_NOMEM, "%s: out of memory (%zu bytes)", path, size);
    }
    mi_status s = mi_file_read_exact(fd, path, buf, size);
    /* one more byte readable means the file grew while it was read */
    char extra;
    if (s == MI_OK && read(fd, &extra, 1) > 0)
        s = mi_fail(MI_ERR_IO, "%s: the file grew while it was read (is it being written?)", path);
    int e = errno;
    close(fd);
    if (s != MI_OK) {
        free(buf);
        errno = e;
        return s;
    }
    buf[size] = '\0';
    *data = buf;
    *len = size;
    return MI_OK;
}
