/* few_rows.c - the decode-step schedule for B stored [K, N] (contract in few_rows.h). */
#include "kernels/few_rows.h"

#include <string.h>

/* Columns of C one thread sums the blocks' partials for at a time. */
#define SUM_CHUNK 256

int64_t mi_few_rows_part_floats(int64_t M, int64_t N, int64_t K)
{
    return (K + MI_FEW_ROWS_KB - 1) / MI_FEW_ROWS_KB * M * N;
}

void mi_few_rows_nn(int nt, int64_t M, int64_t N, int64_t K, mi_few_rows_block block,
                    const void *ctx, float *part, const float *bias, float beta, float *C,
                    int64_t ldc)
{
    const int64_t nkb = (K + MI_FEW_ROWS_KB - 1) / MI_FEW_ROWS_KB;
    int64_t strip = MI_FEW_ROWS_STRIP / M / 16 * 16;
    if (strip > N) strip = N;
    int64_t ncol = (N + strip - 1) / strip;
    if (nkb * ncol < nt) {   /* too few tasks for the threads: narrower strips */
        ncol = (nt + nkb - 1) / nkb;
        strip = ((N + ncol - 1) / ncol + 15) / 16 * 16;
        ncol = (N + strip - 1) / strip;
    }
    #pragma omp parallel num_threads(nt) if (nt > 1)
    {
        #pragma omp for schedule(static)
        for (int64_t task = 0; task < nkb * ncol; task++) {
            const int64_t kb = task / ncol, j0 = task % ncol * strip;
            const int64_t n = N - j0 < strip ? N - j0 : strip;
            const int64_t k0 = kb * MI_FEW_ROWS_KB, k1 = k0 + MI_FEW_ROWS_KB < K ? k0 + MI_FEW_ROWS_KB : K;
            float *acc = part + kb * M * N + j0;   /* row i at acc + i * N */
            for (int64_t i = 0; i < M; i++) memset(acc + i * N, 0, sizeof(float) * (size_t)n);
            block(ctx, k0, k1, j0, n, acc, N);
        }
        /* implicit barrier: every partial is written */
        #pragma omp for schedule(static)
        for (int64_t j0 = 0; j0 < N; j0 += SUM_CHUNK) {
            const int64_t n = N - j0 < SUM_CHUNK ? N - j0 : SUM_CHUNK;
            for (int64_t i = 0; i < M; i++) {
                float *c = C + i * ldc + j0;
                for (int64_t j = 0; j < n; j++) {
                    float v = part[i * N + j0 + j];
                    for (int64_t kb = 1; kb < nkb; kb++) v += part[(kb * M + i) * N + j0 + j];
                    v = beta != 0.0f ? c[j] + v : v;
                    c[j] = bias ? v + bias[j0 + j] : v;
                }
            }
        }
    }
}
