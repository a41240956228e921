/* embedding.c - embedding lookup and scatter-add backward (see embedding.h). */
#include "kernels/embedding.h"

#include <string.h>

#include "common/threads.h"

#define PARALLEL_MIN 32768
#define COL_BLOCK 16   /* one cache line of floats per task: threads never share a line */

static mi_status check_tokens(const char *what, const int64_t *tokens, int64_t n, int64_t vocab)
{
    for (int64_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= vocab)
            return mi_fail(MI_ERR_INDEX, "%s: token id %ld at position %ld is outside [0, %ld)",
                           what, (long)tokens[i], (long)i, (long)vocab);
    return MI_OK;
}

mi_status mi_embedding_forward(const float *W, int64_t vocab, int64_t d,
                               const int64_t *tokens, int64_t n, float *out)
{
    MI_TRY(check_tokens("embedding", tokens, n, vocab));
    #pragma omp parallel for schedule(static) if (n * d > PARALLEL_MIN) num_threads(mi_get_num_threads())
    for (int64_t i = 0; i < n; i++)
        memcpy(out + i * d, W + tokens[i] * d, sizeof(float) * (size_t)d);
    return MI_OK;
}

/* forward: out[i] = W[tokens[i]];  dW[tokens[i]] += dout[i] */
mi_status mi_embedding_backward(const float *dout, const int64_t *tokens, int64_t n,
                                int64_t vocab, int64_t d, float *dW)
{
    MI_TRY(check_tokens("embedding backward", tokens, n, vocab));
    int64_t nblk = (d + COL_BLOCK - 1) / COL_BLOCK;
    #pragma omp parallel for schedule(static) if (n * d > PARALLEL_MIN) num_threads(mi_get_num_threads())
    for (int64_t blk = 0; blk < nblk; blk++) {
        int64_t c0 = blk * COL_BLOCK, c1 = c0 + COL_BLOCK < d ? c0 + COL_BLOCK : d;
        for (int64_t i = 0; i < n; i++) {
            const float *g = dout + i * d;
            float *w = dW + tokens[i] * d;
            for (int64_t c = c0; c < c1; c++) w[c] += g[c];
        }
    }
    return MI_OK;
}
