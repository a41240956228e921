/* gemm.c - SGEMM driver (placeholder: routes to the reference kernel until the
 * packed, register-tiled kernels land). See gemm.h for the contract. */
#include "kernels/gemm.h"

void mi_sgemm(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
              const float *A, int64_t lda, const float *B, int64_t ldb,
              const float *bias, float beta, float *C, int64_t ldc)
{
    mi_sgemm_ref(trans_a, trans_b, M, N, K, A, lda, B, ldb, bias, beta, C, ldc);
}

void mi_sgemm_strided_batched(int trans_a, int trans_b, int64_t batch,
                              int64_t M, int64_t N, int64_t K,
                              const float *A, int64_t lda, int64_t stride_a,
                              const float *B, int64_t ldb, int64_t stride_b,
                              const float *bias, float beta,
                              float *C, int64_t ldc, int64_t stride_c)
{
    #pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < batch; i++)
        mi_sgemm(trans_a, trans_b, M, N, K, A + i * stride_a, lda, B + i * stride_b, ldb,
                 bias, beta, C + i * stride_c, ldc);
}
