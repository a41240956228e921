/* gemm_bf16_kernels.h - internal pieces of the bfloat16 GEMM (gemm_bf16.c).
 *
 * Packed operands hold k PAIRS: one 32-bit word per (pair p, row or column),
 * the even k in the low half and the odd k in the high half, as vdpbf16ps
 * reads them (K odd: the last pair's high half is zero).
 *
 *   Ap  packed A micro-panel: kp pairs of MR words (row r at [p*MR + r])
 *   Bp  packed B micro-panel: kp pairs of NR words (col j at [p*NR + j])
 *
 * Micro-kernel contract (MR x NR tile of C, row stride ldc):
 *   acc = 0
 *   for p in 0..kp: acc[r][j] = vdpbf16ps(acc[r][j], Ap[p*MR + r], Bp[p*NR + j])
 *   if load_c: acc = C + acc
 *   if bias: acc[r][j] += bias[j]
 *   C = acc
 */
#ifndef MI_GEMM_BF16_KERNELS_H
#define MI_GEMM_BF16_KERNELS_H

#include <stdint.h>

#define MI_BGEMM_MR 12
#define MI_BGEMM_NR 32

/* 1 when the CPU and compiler give AVX512-BF16 (gemm_bf16_avx512.c). */
int mi_bgemm_has_avx512bf16(void);

void mi_bgemm_ukr_avx512bf16(int64_t kp, const uint32_t *Ap, const uint32_t *Bp, float *C,
                             int64_t ldc, int load_c, const float *bias);

/* pack_a of gemm_bf16.c with AVX512-BF16: A[i0:i0+mcur, pairs p0:p0+kp] rounded
 * to bfloat16 (vcvtne2ps2bf16: round to nearest even; the instruction also
 * reads denormal inputs as zero, as vdpbf16ps does) into MR-row panels, rows
 * past mcur and k past K zero. */
void mi_bgemm_pack_a_avx512bf16(const float *A, int64_t lda, int64_t K, int64_t i0, int64_t mcur,
                                int64_t p0, int64_t kp, uint32_t *dst);

/* pack_b of gemm_bf16.c with AVX-512: op(B)[pairs p0:p0+kp, j0:j0+cols] as one
 * NR-column panel (columns past cols and k past K zero); the same words as the
 * plain mi_bgemm_pack_b_ref. */
void mi_bgemm_pack_b_avx512bf16(int trans_b, const uint16_t *B, int64_t ldb, int64_t K, int64_t p0,
                                int64_t kp, int64_t j0, int cols, uint32_t *dst);

/* Products with at most MI_BGEMM_SMALL_M rows (decode steps): no packing, B's
 * bfloat16 widened to float32 as it is read and multiplied by Ar (A already
 * rounded to bfloat16 values, row stride lda) with float32 FMAs.
 *   nn (B stored [K, N], from the first row and column wanted): sums[i * lds + j]
 *      += the sum over B's K rows, j < n, one FMA per k in order (one block of
 *      few_rows.h's schedule).
 *   nt (B stored [N, K], Ar [M, K] contiguous): columns j0..j1-1 of C, each a dot
 *      product in four 16-lane accumulators (k mod 64, k in order within each),
 *      then a fixed tree.
 * Both orders depend only on K, so a row of C is the same whatever M or the
 * thread count. */
#define MI_BGEMM_SMALL_M 4
void mi_bgemm_small_m_nn_avx512(int64_t M, int64_t K, int64_t n, const float *Ar, int64_t lda,
                                const uint16_t *B, int64_t ldb, float *sums, int64_t lds);
void mi_bgemm_small_m_nt_avx512(int64_t M, int64_t j0, int64_t j1, int64_t K, const float *Ar,
                                const uint16_t *B, int64_t ldb, const float *bias, float beta,
                                float *C, int64_t ldc);

/* The plain twins of the two packings (gemm_bf16.c). */
void mi_bgemm_pack_a_ref(const float *A, int64_t lda, int64_t K, int64_t i0, int64_t mcur, int64_t p0,
                         int64_t kp, uint32_t *dst);
void mi_bgemm_pack_b_ref(int trans_b, const uint16_t *B, int64_t ldb, int64_t K, int64_t p0,
                         int64_t kp, int64_t j0, int cols, uint32_t *dst);

#endif
