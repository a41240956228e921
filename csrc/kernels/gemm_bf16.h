/* gemm_bf16.h - matrix products with bfloat16 weights and float32 activations.
 *
 * Contract (row-major, leading dimensions in elements):
 *
 *   C[M,N] = beta * C + bf16(A)[M,K] @ op(B)[K,N] + bias[N]
 *
 *   A     float32 activations [M,K], lda >= K; rounded to bfloat16 (round to
 *         nearest even) as they are packed, never written.
 *   B     bfloat16 weights (uint16 bit patterns):
 *           trans_b = 0: B stored [K,N], ldb >= N   (y = x @ W, the layout of
 *                        the model's weights [in, out])
 *           trans_b = 1: B stored [N,K], ldb >= K   (y = x @ W^T, a Linear or a
 *                        tied unembedding [V, D])
 *   beta  0 (overwrite; C need not be initialised) or 1 (accumulate).
 *   bias  float32 [N] or NULL. M, N or K may be 0.
 *
 * Every product of two bfloat16 values is exact in float32 (8 + 8 significant
 * bits), so the paths differ only in how the float32 sums are ordered:
 *   bf16     AVX512-BF16: vdpbf16ps adds the products of k pairs (2p, 2p+1)
 *            into one float32 accumulator per element; K is cut into equal
 *            blocks, C added after each block. Denormal inputs and results
 *            are flushed to zero by the instruction.
 *   fp32     every other CPU: tiles of B widened to float32 (exact) and A
 *            rounded to bfloat16 values held in float32, multiplied by the
 *            float32 GEMM (mi_sgemm: AVX-512F or AVX2 + FMA, or scalar).
 *   ref      the plain triple loop below, float32 sums in k order.
 * For |a|, |b| of ordinary size every path lies within K * 2^-24 * sum_k |a_k b_k|
 * of the exact sum of the rounded operands (the tests hold them to that).
 *
 * Determinism: the sum order of each element depends only on (M, N, K) and the
 * path, never on the thread count: results are bitwise identical for any
 * number of threads. Threads split output tiles only.
 */
#ifndef MI_GEMM_BF16_H
#define MI_GEMM_BF16_H

#include <stdint.h>

typedef enum { MI_BGEMM_AUTO = 0, MI_BGEMM_BF16, MI_BGEMM_FP32, MI_BGEMM_REF } mi_bgemm_path;

/* The path MI_BGEMM_AUTO takes on this CPU: MI_BGEMM_BF16 where AVX512-BF16
 * exists, else MI_BGEMM_FP32. */
mi_bgemm_path mi_bgemm_best_path(void);
const char *mi_bgemm_path_name(mi_bgemm_path path);

/* The product on `path` (MI_BGEMM_AUTO: the best one). Returns 0, or -1 when
 * `path` is MI_BGEMM_BF16 on a CPU without AVX512-BF16 (nothing is written). */
int mi_bgemm(mi_bgemm_path path, int trans_b, int64_t M, int64_t N, int64_t K,
             const float *A, int64_t lda, const uint16_t *B, int64_t ldb,
             const float *bias, float beta, float *C, int64_t ldc);

/* float32 -> bfloat16, round to nearest even; every NaN becomes the quiet NaN
 * 0x7FC0 (as torch converts). */
void mi_f32_to_bf16_n(const float *x, uint16_t *y, int64_t n);
/* bfloat16 -> float32 (exact). */
void mi_bf16_to_f32_n(const uint16_t *x, float *y, int64_t n);

static inline uint16_t mi_bf16_round(float f)
{
    union { float f; uint32_t u; } v = { f };
    if ((v.u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0;
    return (uint16_t)((v.u + 0x7FFFu + ((v.u >> 16) & 1u)) >> 16);
}

static inline float mi_bf16_widen(uint16_t h)
{
    union { uint32_t u; float f; } v = { (uint32_t)h << 16 };
    return v.f;
}

#endif
