/* attention_avx512.c - the two products inside one attention head, AVX-512F.
 *
 * Contract (mi_attn_product_avx512, declared in attention_kernels.h):
 *
 *   C[i*ldc + j] = scale * sum_{p < K} A[i*lda + p] * B[p*ldb + j]    i < M, j < N
 *
 * Every sum runs in increasing p with one FMA accumulator per element that
 * starts at 0, so an element depends only on its row of A and its column of
 * B: not on the tile it falls in, nor on the thread.
 *
 * Why not mi_sgemm: a head's products are small (64 query rows x 128 keys x 64
 * dims for GPT-2), and packing both operands for each of them cost as much as
 * the arithmetic. Here nothing is packed: A elements are broadcast straight
 * from their rows and B rows are loaded as vectors, which is the shape
 * attention's operands already have (q rows times K^T rows for the scores,
 * pattern rows times v rows for z).
 *
 * Register tile: 6 rows x 64 columns = 24 zmm accumulators, 4 B vectors and
 * one broadcast. Column tails use masked loads and stores (masked-off lanes
 * load 0 and are never stored); a row tail re-reads row 0 of the tile and
 * drops those results. Only called after mi_cpu_isa() reported AVX-512.
 */
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma")

#include <immintrin.h>
#include <stdint.h>

#include "kernels/attention_kernels.h"

#define TILE_ROWS 6
#define TILE_COLS 64

/* Lanes [0, 16) of a 16-wide chunk starting at column x that lie below n. */
static inline __mmask16 lanes(int64_t x, int64_t n)
{
    int64_t left = n - x;
    return left >= 16 ? (__mmask16)0xFFFF : left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1u);
}

/* C[0:rows, 0:cols] of the contract, rows <= 6 (cols may exceed 64: only 64 are done). */
static void tile_6x64(int rows, int64_t cols, int64_t K, const float *A, int64_t lda,
                      const float *B, int64_t ldb, float scale, float *C, int64_t ldc)
{
    const __mmask16 m0 = lanes(0, cols), m1 = lanes(16, cols), m2 = lanes(32, cols),
                    m3 = lanes(48, cols);
    const float *a0 = A, *a1 = A + (rows > 1 ? lda : 0), *a2 = A + (rows > 2 ? 2 * lda : 0),
                *a3 = A + (rows > 3 ? 3 * lda : 0), *a4 = A + (rows > 4 ? 4 * lda : 0),
                *a5 = A + (rows > 5 ? 5 * lda : 0);
#define DECL(r) __m512 c##r##0 = _mm512_setzero_ps(), c##r##1 = _mm512_setzero_ps(), \
                       c##r##2 = _mm512_setzero_ps(), c##r##3 = _mm512_setzero_ps();
    DECL(0) DECL(1) DECL(2) DECL(3) DECL(4) DECL(5)
#undef DECL
    for (int64_t p = 0; p < K; p++) {
        const float *b = B + p * ldb;
        const __m512 b0 = _mm512_maskz_loadu_ps(m0, b), b1 = _mm512_maskz_loadu_ps(m1, b + 16),
                     b2 = _mm512_maskz_loadu_ps(m2, b + 32), b3 = _mm512_maskz_loadu_ps(m3, b + 48);
#define ROW(r) { const __m512 x = _mm512_set1_ps(a##r[p]); \
                 c##r##0 = _mm512_fmadd_ps(x, b0, c##r##0); c##r##1 = _mm512_fmadd_ps(x, b1, c##r##1); \
                 c##r##2 = _mm512_fmadd_ps(x, b2, c##r##2); c##r##3 = _mm512_fmadd_ps(x, b3, c##r##3); }
        ROW(0) ROW(1) ROW(2) ROW(3) ROW(4) ROW(5)
#undef ROW
    }
    const __m512 s = _mm512_set1_ps(scale);
#define STORE(r) if (rows > r) { float *c = C + r * ldc; \
        _mm512_mask_storeu_ps(c, m0, _mm512_mul_ps(c##r##0, s)); \
        _mm512_mask_storeu_ps(c + 16, m1, _mm512_mul_ps(c##r##1, s)); \
        _mm512_mask_storeu_ps(c + 32, m2, _mm512_mul_ps(c##r##2, s)); \
        _mm512_mask_storeu_ps(c + 48, m3, _mm512_mul_ps(c##r##3, s)); }
    STORE(0) STORE(1) STORE(2) STORE(3) STORE(4) STORE(5)
#undef STORE
}

void mi_attn_product_avx512(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                            const float *B, int64_t ldb, float scale, float *C, int64_t ldc)
{
    /* column slabs outer: the K x 64 slab of B stays in L1/L2 across the row tiles */
    for (int64_t j0 = 0; j0 < N; j0 += TILE_COLS)
        for (int64_t i0 = 0; i0 < M; i0 += TILE_ROWS)
            tile_6x64(M - i0 < TILE_ROWS ? (int)(M - i0) : TILE_ROWS, N - j0, K, A + i0 * lda, lda,
                      B + j0, ldb, scale, C + i0 * ldc + j0, ldc);
}
