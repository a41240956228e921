/* memory.c - aligned allocation for tensors. */
#include "common/memory.h"

#include <stdlib.h>
#include <string.h>

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
