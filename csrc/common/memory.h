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

/* Give the whole pages inside [p, p + bytes) back to the kernel lazily
 * (MADV_FREE): they stay mapped and, until memory runs short, keep their
 * frames, so writing them again costs no page fault and no zeroing; under
 * memory pressure the kernel takes them without swapping, and a reclaimed page
 * reads as zeros when touched again. For memory kept for reuse whose contents
 * no longer matter. Advice only: where it is refused nothing changes. */
void mi_release_lazily(void *p, size_t bytes);

#endif
