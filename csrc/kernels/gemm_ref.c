/* gemm_ref.c - the plain reference SGEMM (see gemm.h for the contract). */
#include "kernels/gemm.h"

void mi_sgemm_ref(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                  const float *A, int64_t lda, const float *B, int64_t ldb,
                  const float *bias, float beta, float *C, int64_t ldc)
{
    for (int64_t i = 0; i < M; i++) {
        for (int64_t j = 0; j < N; j++) {
            float acc = 0.0f;
            for (int64_t p = 0; p < K; p++) {
                float a = trans_a ? A[p * lda + i] : A[i * lda + p];
                float b = trans_b ? B[j * ldb + p] : B[p * ldb + j];
                acc += a * b;
            }
            float c = beta != 0.0f ? C[i * ldc + j] : 0.0f;
            C[i * ldc + j] = c + acc + (bias ? bias[j] : 0.0f);
        }
    }
}
