/* cross_entropy_avx512.c - one cross-entropy row with AVX-512 (see cross_entropy.h).
 *
 * Same contract as the scalar row in cross_entropy.c, which evaluates every
 * exp in double; here the vocab-wide exps are float (mi_exp512, ~2 ulp)
 * summed in double lanes, so logsumexp agrees to ~1e-7 absolute. The target
 * entry of dlogits, p_t - 1, is formed in double: in float it cancels when
 * the model is confident. Called only after mi_cpu_isa() reported AVX-512.
 */
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq")

#include <math.h>
#include <stdint.h>

#include "kernels/vmath_avx512.h"

static inline __mmask16 tail_mask(int64_t left)
{
    return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
}

/* Returns the row loss lse - x[t]; dr (may be NULL) += (softmax - onehot(t)) * gscale. */
double mi_cross_entropy_row_avx512(const float *lr, int64_t vocab, int64_t t, double gscale,
                                   float *dr)
{
    __m512 vmax = _mm512_set1_ps(-INFINITY);
    __mmask16 any_nan = 0;
    for (int64_t j = 0; j < vocab; j += 16) {
        __m512 v = _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), tail_mask(vocab - j), lr + j);
        any_nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        vmax = _mm512_max_ps(vmax, v);
    }
    float mx = any_nan ? NAN : _mm512_reduce_max_ps(vmax);
    __m512 m = _mm512_set1_ps(mx);
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    for (int64_t j = 0; j < vocab; j += 16) {
        __mmask16 k = tail_mask(vocab - j);
        __m512 e = _mm512_maskz_mov_ps(k, mi_exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, lr + j), m)));
        s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(_mm256_castpd_ps(
                 _mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
    }
    double sum = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
    double lse = (double)mx + log(sum);
    if (dr) {
        __m512 g = _mm512_set1_ps((float)(gscale / sum));   /* softmax_j * gscale */
        for (int64_t j = 0; j < vocab; j += 16) {
            __mmask16 k = tail_mask(vocab - j);
            if (t >= j && t < j + 16) k &= (__mmask16)~(1u << (t - j));   /* target: below */
            __m512 e = mi_exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, lr + j), m));
            __m512 d = _mm512_add_ps(_mm512_maskz_loadu_ps(k, dr + j), _mm512_mul_ps(e, g));
            _mm512_mask_storeu_ps(dr + j, k, d);
        }
        dr[t] += (float)((exp((double)lr[t] - lse) - 1.0) * gscale);
    }
    return lse - (double)lr[t];
}
