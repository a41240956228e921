/* tile12x32_avx512.h - the 12 x 32 float32 register tile shared by the fp32
 * and bf16 AVX-512 micro-kernels: 24 zmm accumulators c{i}0, c{i}1 (row i,
 * columns 0-15 and 16-31), set to zero before the k loop, and the epilogue
 * that adds them into C.
 *
 * Contract of the epilogue: C[i][0:32] = (load_c ? C[i][0:32] : 0) + tile[i]
 * (+ bias[0:32] when bias != NULL), in that order of additions for both
 * kernels, so a kernel's bits do not depend on which file includes this.
 * Include only from a file compiled for AVX-512F. */
#ifndef MI_TILE12X32_AVX512_H
#define MI_TILE12X32_AVX512_H

#include <immintrin.h>

#define MI_TILE_ROWS12(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)

/* Declares the zeroed accumulators and starts fetching the 12 rows of C,
 * needed only after the k loop. */
#define MI_TILE_DECL(i) __m512 c##i##0 = _mm512_setzero_ps(), c##i##1 = _mm512_setzero_ps();
#define MI_TILE12X32_BEGIN(C, ldc)                                       \
    MI_TILE_ROWS12(MI_TILE_DECL)                                         \
    for (int i_ = 0; i_ < 12; i_++) {                                    \
        _mm_prefetch((const char *)((C) + i_ * (ldc)), _MM_HINT_T0);      \
        _mm_prefetch((const char *)((C) + i_ * (ldc) + 16), _MM_HINT_T0); \
    }

#define MI_TILE_LOAD(i) c##i##0 = _mm512_add_ps(_mm512_loadu_ps(C_ + i * ldc_), c##i##0); \
                        c##i##1 = _mm512_add_ps(_mm512_loadu_ps(C_ + i * ldc_ + 16), c##i##1);
#define MI_TILE_BIAS(i) c##i##0 = _mm512_add_ps(c##i##0, bb0_); c##i##1 = _mm512_add_ps(c##i##1, bb1_);
#define MI_TILE_STORE(i) _mm512_storeu_ps(C_ + i * ldc_, c##i##0); \
                         _mm512_storeu_ps(C_ + i * ldc_ + 16, c##i##1);
#define MI_TILE12X32_END(C, ldc, load_c, bias)                            \
    {                                                                     \
        float *C_ = (C);                                                  \
        const int64_t ldc_ = (ldc);                                       \
        if (load_c) { MI_TILE_ROWS12(MI_TILE_LOAD) }                      \
        if (bias) {                                                       \
            const __m512 bb0_ = _mm512_loadu_ps(bias), bb1_ = _mm512_loadu_ps((bias) + 16); \
            MI_TILE_ROWS12(MI_TILE_BIAS)                                  \
        }                                                                 \
        MI_TILE_ROWS12(MI_TILE_STORE)                                     \
    }

#endif
