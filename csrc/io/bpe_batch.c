/* bpe_batch.c - batch encoding over the thread pool (bpe_batch.h). */
#include "io/bpe_batch.h"

#include <omp.h>
#include <stdlib.h>

#include "common/threads.h"

void mi_bpe_pool_free(mi_bpe_pool *pool)
{
    for (int i = 0; i < pool->n; i++) mi_bpe_scratch_free(pool->scratch[i]);
    free(pool->scratch);
    pool->scratch = NULL;
    pool->n = 0;
}

/* Grow the pool to `want` scratches; returns how many it has (fewer when
 * memory runs out: the batch then runs on fewer threads). */
static int pool_reserve(mi_bpe_pool *pool, int want)
{
    if (pool->n >= want) return pool->n;
    mi_bpe_scratch **more = realloc(pool->scratch, (size_t)want * sizeof *more);
    if (!more) return pool->n;
    pool->scratch = more;
    while (pool->n < want) {
        mi_bpe_scratch *sc = mi_bpe_scratch_new();
        if (!sc) break;
        more[pool->n++] = sc;
    }
    return pool->n;
}

mi_status mi_bpe_encode_batch(const mi_bpe_tokenizer *tok, mi_bpe_scratch *scratch,
                              mi_bpe_pool *pool, const char *const *texts, const size_t *len,
                              size_t n, int flags, mi_bpe_ids *out)
{
    int nthreads = mi_get_num_threads();
    if ((size_t)nthreads > n) nthreads = (int)n;
    if (nthreads > 1) nthreads = pool_reserve(pool, nthreads - 1) + 1;
    if (nthreads <= 1) {
        for (size_t i = 0; i < n; i++) {
            mi_status st = mi_bpe_encode(tok, scratch, texts[i], len[i], flags, &out[i]);
            if (st != MI_OK) return st;
        }
        return MI_OK;
    }
    mi_status *status = calloc(n, sizeof *status);
    if (!status) return mi_fail(MI_ERR_NOMEM, "encode_batch: out of memory for %zu texts", n);
    /* errors are only flagged here and reproduced serially below: the
     * message of a failure is thread-local */
    #pragma omp parallel num_threads(nthreads)
    {
        int me = omp_get_thread_num();
        mi_bpe_scratch *sc = me == 0 ? scratch : pool->scratch[me - 1];
        #pragma omp for schedule(dynamic, 16)
        for (size_t i = 0; i < n; i++) status[i] = mi_bpe_encode(tok, sc, texts[i], len[i], flags, &out[i]);
    }
    mi_status st = MI_OK;
    for (size_t i = 0; i < n && st == MI_OK; i++) {
        if (status[i] == MI_OK) continue;
        mi_bpe_ids again = {0};
        st = mi_bpe_encode(tok, scratch, texts[i], len[i], flags, &again);
        mi_bpe_ids_free(&again);
        if (st == MI_OK) st = mi_fail(MI_ERR_NOMEM, "encode_batch: out of memory");
    }
    free(status);
    return st;
}
