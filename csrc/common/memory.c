/* memory.c - aligned allocation for tensors. */
#include "common/memory.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

void *mi_malloc(size_t bytes)
{
    void *p = NULL;
    if (posix_memalign(&p, MI_ALIGN, mi_align_up(bytes ? bytes : 1)) != 0) return NULL;
    return p;
}

void *mi_calloc(size_t bytes)
{
    void *p = mi_malloc(bytes);
    if (p) memset(p, 0, bytes);
    return p;
}

void mi_free(void *p) { free(p); }

void mi_release_lazily(void *p, size_t bytes)
{
#if defined(MADV_FREE)
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t lo = ((uintptr_t)p + page - 1) & ~(page - 1), hi = ((uintptr_t)p + bytes) & ~(page - 1);
    if (hi > lo) (void)madvise((void *)lo, hi - lo, MADV_FREE);
#else
    (void)p;
    (void)bytes;
#endif
}
