/* file.h - opening the files the core reads (checkpoints, config.json,
 * vocab.json, merges.txt), with one set of checks for all of them.
 *
 * Contract: mi_file_open opens `path` read-only without blocking and accepts
 * only a regular file. A FIFO, socket or device is refused by name before any
 * read (opening a FIFO for reading would wait forever for a writer); a
 * symlink loop or a dangling symlink is said to be one. Every failure is
 * MI_ERR_IO with errno set (ENOENT, EISDIR, ELOOP, EINVAL for a file that is
 * not regular, ...) and a message "PATH: cannot open: WHY" or "PATH: not a
 * regular file (a FIFO (named pipe))".
 *
 * No Python headers here.
 */
#ifndef MI_IO_FILE_H
#define MI_IO_FILE_H

#include <stddef.h>
#include <sys/stat.h>

#include "common/status.h"

/* Open a regular file for reading: *fd (O_CLOEXEC, blocking again) and its
 * fstat in *sb. The caller closes *fd. */
mi_status mi_file_open(const char *path, int *fd, struct stat *sb);

/* Read exactly `size` bytes of `fd` into buf; a file that ends sooner (it
 * shrank) is MI_ERR_IO naming `path`. */
mi_status mi_file_read_exact(int fd, const char *path, void *buf, size_t size);

/* The whole file in a malloc'd buffer with a NUL after the last byte (*len
 * bytes before it). The caller frees *data. A file that changes size while it
 * is read is an error, not a short buffer. */
mi_status mi_file_read(const char *path, char **data, size_t *len);

#endif
