/* gemm.h - single-precision matrix products for every product the models need.
 *
 * Contract (all matrices row-major, leading dimensions in elements):
 *
 *   C[M,N] = beta * C + op(A)[M,K] @ op(B)[K,N] + bias[N]
 *
 *   op(A) = A            A stored [M,K], lda >= K   (trans_a = 0)
 *         = A^T          A stored [K,M], lda >= M   (trans_a = 1)
 *   op(B) = B            B stored [K,N], ldb >= N   (trans_b = 0)  y = x @ W (Conv1D)
 *         = B^T          B stored [N,K], ldb >= K   (trans_b = 1)  y = x @ W^T (Linear)
 *   beta is 0 (overwrite; C need not be initialised) or 1 (accumulate).
 *   bias may be NULL. M, N or K may be 0 (K = 0 gives beta*C + bias).
 *
 * Determinism: each C element's K-sum is accumulated in an order that depends
 * only on (M, N, K) and the ISA, never on the thread count, so results are
 * bitwise identical for 1 or many threads.
 *
 * Threads: mi_sgemm parallelises over output tiles with OpenMP. Called from
 * inside a parallel region (omp_in_parallel()) it runs on the calling thread,
 * so batched callers may parallelise over the batch instead.
 */
#ifndef MI_GEMM_H
#define MI_GEMM_H

#include <stdint.h>

void mi_sgemm(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
              const float *A, int64_t lda, const float *B, int64_t ldb,
              const float *bias, float beta, float *C, int64_t ldc);

/* Plain triple loop with the same contract: the reference the fast path is tested against. */
void mi_sgemm_ref(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                  const float *A, int64_t lda, const float *B, int64_t ldb,
                  const float *bias, float beta, float *C, int64_t ldc);

/* `batch` independent products with element strides between consecutive
 * A, B and C matrices (stride 0 broadcasts one operand). Parallel over the
 * batch and the tiles; same determinism guarantee. */
void mi_sgemm_strided_batched(int trans_a, int trans_b, int64_t batch,
                              int64_t M, int64_t N, int64_t K,
                              const float *A, int64_t lda, int64_t stride_a,
                              const float *B, int64_t ldb, int64_t stride_b,
                              const float *bias, float beta,
                              float *C, int64_t ldc, int64_t stride_c);

#endif
