/* gemm_avx2.c - 6 x 16 SGEMM micro-kernel for AVX2 + FMA.
 *
 * Contract: see gemm_kernels.h. 12 ymm accumulators (6 rows x 2 vectors of 8),
 * 2 B vectors and 1 broadcast of A per k step: 15 of the 16 ymm registers. */
#pragma GCC target("avx2,fma")
#include <immintrin.h>
#include <math.h>

#include "kernels/gemm_kernels.h"

#define MR 6
#define NR 16

static void ukr_avx2_6x16(int64_t kc, const float *restrict Ap, const float *restrict Bp,
                          float *restrict C, int64_t ldc, int load_c, const float *bias)
{
#define DECL(i) __m256 c##i##0 = _mm256_setzero_ps(), c##i##1 = _mm256_setzero_ps();
    DECL(0) DECL(1) DECL(2) DECL(3) DECL(4) DECL(5)
#undef DECL
    /* C is needed only after the k loop: start fetching it now. */
    for (int i = 0; i < MR; i++) _mm_prefetch((const char *)(C + i * ldc), _MM_HINT_T0);
    for (int64_t p = 0; p < kc; p++) {
        __m256 b0 = _mm256_loadu_ps(Bp + p * NR), b1 = _mm256_loadu_ps(Bp + p * NR + 8);
        const float *a = Ap + p * MR;
#define STEP(i) { __m256 ai = _mm256_broadcast_ss(a + i); \
                  c##i##0 = _mm256_fmadd_ps(ai, b0, c##i##0); \
                  c##i##1 = _mm256_fmadd_ps(ai, b1, c##i##1); }
        STEP(0) STEP(1) STEP(2) STEP(3) STEP(4) STEP(5)
#undef STEP
    }
    if (load_c) {
#define LOAD(i) c##i##0 = _mm256_add_ps(_mm256_loadu_ps(C + i * ldc), c##i##0); \
                c##i##1 = _mm256_add_ps(_mm256_loadu_ps(C + i * ldc + 8), c##i##1);
        LOAD(0) LOAD(1) LOAD(2) LOAD(3) LOAD(4) LOAD(5)
#undef LOAD
    }
    if (bias) {
        __m256 bb0 = _mm256_loadu_ps(bias), bb1 = _mm256_loadu_ps(bias + 8);
#define BIAS(i) c##i##0 = _mm256_add_ps(c##i##0, bb0); c##i##1 = _mm256_add_ps(c##i##1, bb1);
        BIAS(0) BIAS(1) BIAS(2) BIAS(3) BIAS(4) BIAS(5)
#undef BIAS
    }
#define STORE(i) _mm256_storeu_ps(C + i * ldc, c##i##0); _mm256_storeu_ps(C + i * ldc + 8, c##i##1);
    STORE(0) STORE(1) STORE(2) STORE(3) STORE(4) STORE(5)
#undef STORE
}

static void axpy_avx2(int64_t n, float a, const float *x, float *y)
{
    __m256 va = _mm256_set1_ps(a);
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        _mm256_storeu_ps(y + j, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + j),
                                                _mm256_loadu_ps(y + j)));
    for (; j < n; j++) y[j] = fmaf(a, x[j], y[j]);   /* same single rounding as the vectors */
}

const mi_gemm_arch mi_gemm_arch_avx2 = {
    .name = "avx2", .mr = MR, .nr = NR, .mc = 144, .kc = 256, .nc = 2048,
    .ukr = ukr_avx2_6x16, .axpy = axpy_avx2,
};
