/* safetensors.h - read-only, zero-copy reader of the .safetensors format.
 *
 * File layout (all little-endian):
 *
 *   [0, 8)              u64 header_len
 *   [8, 8 + header_len) JSON header, UTF-8, may be padded with spaces:
 *                         { "__metadata__": {str: str, ...},          (optional)
 *                           NAME: {"dtype": "F32",
 *                                  "shape": [d0, d1, ...],
 *                                  "data_offsets": [begin, end]}, ... }
 *   [8 + header_len, EOF) data area; a tensor's bytes are [begin, end) of it
 *
 * Contract: mi_st_open maps the file copy-on-write (MAP_PRIVATE, writable when the
 * system allows: writes stay in the process, never reach the file; `writable`
 * says which), or with MI_ST_COPY reads it whole into anonymous memory, and
 * mi_st_parse validates every header field against the size of the buffer before any
 * tensor pointer is handed out, so a tensor returned by mi_st_find always lies
 * inside the buffer:
 *   - header_len fits in the file; the header is one JSON object;
 *   - every entry is an object with a known dtype string, a shape array of
 *     non-negative integers and data_offsets [begin, end] of integers;
 *   - numbers are read as doubles (offsets pass 2^31 in large models) and must
 *     be finite, integral, non-negative and exactly representable (< 2^53);
 *   - prod(shape) * itemsize == end - begin, computed without overflow;
 *   - end <= size of the data area; no two tensors overlap; no duplicate name;
 *   - the header is UTF-8 with no NUL in a name or string (the reference
 *     reader's rule, and a C string would be cut at the NUL).
 * Every failure returns MI_ERR_FORMAT (MI_ERR_IO for open/mmap) with a message
 * that names the file, the tensor and what is wrong.
 *
 * A mapping is only as good as the file under it: a file truncated in place
 * makes reads of the lost pages raise SIGBUS, and one rewritten in place
 * changes what unwritten pages read. Replacing the file by rename is safe (the
 * mapping keeps the old inode). mi_st_open therefore keeps the file open and
 * records its size and modification time; mi_st_check (one fstat) says whether
 * the file is still the one mapped, and callers run it before reading weights
 * (a model's forward pass). MI_ST_COPY files do not depend on the file at all.
 *
 * No Python headers here; the Python type is in python/io_py.c.
 */
#ifndef MI_IO_SAFETENSORS_H
#define MI_IO_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

/* The most dimensions a tensor may have (NumPy's own limit is 64). */
#define MI_ST_MAX_NDIM 32

typedef enum {
    MI_DT_F64, MI_DT_F32, MI_DT_F16, MI_DT_BF16,
    MI_DT_I64, MI_DT_I32, MI_DT_I16, MI_DT_I8, MI_DT_U8, MI_DT_BOOL,
    MI_DT_COUNT
} mi_dtype;

/* "F32" etc. (the safetensors spelling) and the size of one element. */
const char *mi_dtype_name(mi_dtype dt);
size_t mi_dtype_size(mi_dtype dt);

typedef struct {
    char *name;
    mi_dtype dtype;
    int ndim;
    int64_t shape[MI_ST_MAX_NDIM];
    uint64_t numel;
    uint64_t begin, end;   /* byte range relative to the start of the data area */
    const void *data;      /* = data area + begin; inside the buffer */
} mi_st_tensor;

typedef struct {
    char *path;              /* file name (or a label for in-memory buffers), for messages */
    const uint8_t *buf;      /* the whole file */
    size_t size;
    const uint8_t *data;     /* the data area: buf + 8 + header_len */
    size_t data_size;
    int n_tensors;
    mi_st_tensor *tensors;   /* sorted by name (strcmp), so lookups bisect */
    int n_meta;
    char **meta_keys;        /* __metadata__, in header order */
    char **meta_values;
    int mapped;              /* buf is an mmap this struct must unmap */
    int writable;            /* the mapping is private and writable (copy-on-write) */
    int fd;                  /* the file behind a MI_ST_MAP mapping, else -1 */
    int64_t mtime_sec, mtime_nsec; /* the file's mtime when mapped (mi_st_check) */
} mi_safetensors;

typedef enum {
    MI_ST_MAP,    /* zero-copy: map the file (it must not change in place afterwards) */
    MI_ST_COPY,   /* read the whole file into private memory once */
} mi_st_mode;

/* Open and map (or copy) `path`, then parse it. *out is owned by the caller:
 * mi_st_close. On MI_ERR_IO, errno tells why (ENOENT, EISDIR, ELOOP, ...); a
 * FIFO or device is refused before any read (io/file.h). */
mi_status mi_st_open(const char *path, mi_st_mode mode, mi_safetensors **out);

/* MI_OK while the mapped file is as it was mapped (always for MI_ST_COPY and
 * parsed buffers); MI_ERR_IO naming the file when it shrank (reading would
 * raise SIGBUS) or was modified in place (size or mtime changed). One fstat. */
mi_status mi_st_check(const mi_safetensors *st);

/* Parse a buffer already in memory (not copied: it must outlive *out).
 * `label` names the buffer in error messages. Used by the fuzz target. */
mi_status mi_st_parse(const void *buf, size_t size, const char *label, mi_safetensors **out);

/* Unmap (if mapped) and free everything. NULL is allowed. */
void mi_st_close(mi_safetensors *st);

/* The tensor called `name`, or NULL. */
const mi_st_tensor *mi_st_find(const mi_safetensors *st, const char *name);

/* Like mi_st_find, but a missing name is MI_ERR_KEY naming file and tensor. */
mi_status mi_st_get(const mi_safetensors *st, const char *name, const mi_st_tensor **out);

/* Convert a tensor of any supported dtype to float32 (dst holds t->numel
 * floats). F16/BF16 are exact; F64 rounds to nearest; integers and bool
 * convert as C casts do. Parallel over elements (no reductions), GIL-free. */
void mi_st_to_float32(const mi_st_tensor *t, float *dst);

/* Plain element converters: the reference for the branch-free loop inside
 * mi_st_to_float32 (compared in the fuzz target and, through NumPy, in tests). */
float mi_f16_to_f32(uint16_t h);
float mi_bf16_to_f32(uint16_t h);

#endif
