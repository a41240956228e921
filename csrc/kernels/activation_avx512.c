/* activation_avx512.c - AVX-512 forward activations (see activation.h).
 *
 * Contract: same results as the scalar *_ref versions in activation.c to a
 * few float32 ulp; y may alias x; n any (tails masked). Called on one chunk
 * per thread by activation.c only after mi_cpu_isa() reported AVX-512.
 *
 *   silu       x / (1 + exp(-x))
 *   gelu_tanh  0.5 x (1 + tanh(u)) = x / (1 + exp(-2u)),  u = sqrt(2/pi)(x + 0.044715 x^3)
 *              (the sigmoid form avoids 1 + tanh(u) cancelling for negative x)
 */
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq")

#include <stdint.h>

#include "kernels/vmath_avx512.h"

static inline __mmask16 tail_mask(int64_t left)
{
    return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
}

void mi_silu_avx512(const float *x, float *y, int64_t n)
{
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 k = tail_mask(n - i);
        __m512 v = _mm512_maskz_loadu_ps(k, x + i);
        __m512 e = mi_exp512(_mm512_sub_ps(_mm512_setzero_ps(), v));
        _mm512_mask_storeu_ps(y + i, k, _mm512_div_ps(v, _mm512_add_ps(one, e)));
    }
}

void mi_gelu_tanh_avx512(const float *x, float *y, int64_t n)
{
    const __m512 one = _mm512_set1_ps(1.0f), c = _mm512_set1_ps(0.044715f);
    const __m512 m2k = _mm512_set1_ps(-2.0f * 0.79788456080286536f);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 k = tail_mask(n - i);
        __m512 v = _mm512_maskz_loadu_ps(k, x + i);
        __m512 v3 = _mm512_mul_ps(_mm512_mul_ps(v, v), v);
        __m512 inner = _mm512_fmadd_ps(c, v3, v);                 /* x + c x^3 */
        __m512 e = mi_exp512(_mm512_mul_ps(m2k, inner));          /* exp(-2u) */
        _mm512_mask_storeu_ps(y + i, k, _mm512_div_ps(v, _mm512_add_ps(one, e)));
    }
}
