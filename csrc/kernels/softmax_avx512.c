/* softmax_avx512.c - one softmax row with AVX-512 (see softmax.h).
 *
 * Same contract and same NaN / all-masked handling as softmax_row_ref in
 * softmax.c; exp through mi_exp512 (~1-2 ulp), the row sum in double as the
 * reference. Only called after mi_cpu_isa() reported AVX-512.
 */
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq")

#include <math.h>
#include <stdint.h>

#include "kernels/vmath_avx512.h"

/* Lanes of this 16-wide chunk that are kept (mask byte != 0) and in range. */
static inline __mmask16 keep_lanes(const unsigned char *mr, int64_t j, int64_t cols)
{
    int64_t left = cols - j;
    __mmask16 tail = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
    if (!mr) return tail;
    __m128i m = _mm_maskz_loadu_epi8(tail, mr + j);
    return _mm_mask_cmpneq_epi8_mask(tail, m, _mm_setzero_si128());
}

void mi_softmax_row_avx512(const float *xr, const unsigned char *mr, float *yr, int64_t cols)
{
    __m512 vmax = _mm512_set1_ps(-INFINITY);
    __mmask16 any_nan = 0;
    for (int64_t j = 0; j < cols; j += 16) {
        __mmask16 k = keep_lanes(mr, j, cols);
        __m512 v = _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), k, xr + j);
        any_nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        vmax = _mm512_max_ps(vmax, v);   /* NaN lanes: handled by any_nan */
    }
    if (any_nan) { for (int64_t j = 0; j < cols; j++) yr[j] = NAN; return; }
    float mx = _mm512_reduce_max_ps(vmax);
    if (mx == -INFINITY) { for (int64_t j = 0; j < cols; j++) yr[j] = 0.0f; return; }
    __m512 m = _mm512_set1_ps(mx);
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    for (int64_t j = 0; j < cols; j += 16) {
        int64_t left = cols - j;
        __mmask16 tail = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
        __mmask16 k = keep_lanes(mr, j, cols);
        __m512 v = _mm512_maskz_loadu_ps(k, xr + j);
        __m512 e = _mm512_maskz_mov_ps(k, mi_exp512(_mm512_sub_ps(v, m)));
        _mm512_mask_storeu_ps(yr + j, tail, e);
        s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(_mm256_castpd_ps(
                 _mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
    }
    double sum = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
    __m512 inv = _mm512_set1_ps((float)(1.0 / sum));
    for (int64_t j = 0; j < cols; j += 16) {
        int64_t left = cols - j;
        __mmask16 tail = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
        _mm512_mask_storeu_ps(yr + j, tail, _mm512_mul_ps(_mm512_maskz_loadu_ps(tail, yr + j), inv));
    }
}
