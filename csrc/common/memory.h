/* memory.h - aligned allocation for tensors.
 *
 * All tensor memory is 64-byte aligned (one cache line, one AVX-512 vector)
 * so kernels may use aligned loads on row starts of contiguous buffers.
 */
#ifndef MI_MEMORY_H
#define MI_MEMORY_H

#include <stddef.h>

#define MI_ALIGN 64

/* Round n bytes up to a multiple of MI_ALIGN. */
static inline size_t mi_align_up(size_t n) { return (n + MI_ALIGN - 1) & ~(size_t)(MI_ALIGN - 1); }

/* 64-byte aligned allocation of `bytes` (uninitialised); NULL on failure.
 * Free with mi_free. */
void *mi_malloc(size_t bytes);
/* Same, zero-filled. */
void *mi_calloc(size_t bytes);
void mi_free(void *p);

#endif
