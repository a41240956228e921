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

/* gelu (exact) = x Phi(x) = 0.5 x (1 + erf(a)),  a = x / sqrt 2.
 *   |a| < 0.5:  erf(a) = a P(a^2)       (degree 6, Cephes erff coefficients)
 *   |a| >= 0.5: erfc(|a|) = exp(-a^2) Q(z), z = 1 / (1 + 0.5 |a|), Q ~ erfcx
 *             (degree 9, relative-weighted least-squares fit of scipy's erfcx
 *              on [0.5, 10.5]: 4e-9 in float64, ~2.4e-7 in float32 Horner)
 *             y = x (1 - 0.5 erfc(a)) for x > 0 and 0.5 x erfc(|a|) for x < 0,
 *             so the negative tail keeps its relative accuracy (1 + erf(a)
 *             would cancel) and +inf stays +inf.
 * a^2 = x^2 / 2 is formed exactly as hi + lo with an FMA, and
 * exp(-hi - lo) = exp(-hi) (1 - lo): a float a^2 would cost |a^2| ulps in the tail. */
void mi_gelu_avx512(const float *x, float *y, int64_t n)
{
    static const float PA[7] = {7.847260712878779e-05f, -0.0008008191362023354f,
                                0.005188099108636379f, -0.026853691786527634f,
                                0.1128358244895935f, -0.3761262595653534f, 1.1283791065216064f};
    static const float PB[10] = {-0.07369048148393631f, 0.3482906222343445f,
                                 -0.6057771444320679f, 0.4012507200241089f,
                                 -0.10500194877386093f, 0.23421767354011536f,
                                 0.23511816561222076f, 0.2835982143878937f,
                                 0.28198400139808655f, 3.5650923564389814e-06f};
    const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f);
    const __m512 sqrt1_2 = _mm512_set1_ps(0.70710678118654752f);
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7FFFFFFF));
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 k = tail_mask(n - i);
        __m512 v = _mm512_maskz_loadu_ps(k, x + i);
        __m512 hv = _mm512_mul_ps(half, v);
        /* inner: erf(a) = a P(a^2) */
        __m512 a = _mm512_mul_ps(v, sqrt1_2);
        __m512 s = _mm512_mul_ps(a, a);
        __m512 p = _mm512_set1_ps(PA[0]);
        for (int j = 1; j < 7; j++) p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(PA[j]));
        __m512 y_in = _mm512_fmadd_ps(hv, _mm512_mul_ps(a, p), hv);
        /* tails: |x| clamped to 15 (erfc(10.6) underflows); NaN becomes 15 here
         * but the final product with x brings it back */
        __m512 ax = _mm512_min_ps(_mm512_and_ps(v, absmask), _mm512_set1_ps(15.0f));
        __m512 xx = _mm512_mul_ps(ax, ax);
        __m512 lo = _mm512_mul_ps(half, _mm512_fmsub_ps(ax, ax, xx));
        __m512 hi = _mm512_mul_ps(half, xx);
        __m512 e = _mm512_mul_ps(mi_exp512(_mm512_sub_ps(_mm512_setzero_ps(), hi)),
                                 _mm512_sub_ps(one, lo));
        __m512 z = _mm512_div_ps(one, _mm512_fmadd_ps(half,
                                                      _mm512_mul_ps(ax, sqrt1_2), one));
        __m512 q = _mm512_set1_ps(PB[0]);
        for (int j = 1; j < 10; j++) q = _mm512_fmadd_ps(q, z, _mm512_set1_ps(PB[j]));
        __m512 ec = _mm512_mul_ps(e, q);                                /* erfc(|a|) */
        __mmask16 pos = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_GT_OQ);
        __m512 y_out = _mm512_mask_mul_ps(_mm512_mul_ps(hv, ec), pos, v,
                                          _mm512_fnmadd_ps(half, ec, one));
        __mmask16 inner = _mm512_cmp_ps_mask(_mm512_and_ps(a, absmask), half, _CMP_LT_OQ);
        _mm512_mask_storeu_ps(y + i, k, _mm512_mask_mov_ps(y_out, inner, y_in));
    }
}

/* --- backward: dx += dy * act'(x) (forward lines quoted above each) ------ */

/* 1 - s for s = 1 / (1 + e): e s (no cancellation when s ~ 1), and 1 when e
 * overflowed to inf (s = 0, where e s would be inf * 0). */
static inline __m512 one_minus_sigmoid(__m512 e, __m512 s)
{
    __mmask16 big = _mm512_cmp_ps_mask(e, _mm512_set1_ps(__builtin_inff()), _CMP_EQ_OQ);
    return _mm512_mask_mov_ps(_mm512_mul_ps(e, s), big, _mm512_set1_ps(1.0f));
}

/* forward: y = x s,  s = 1 / (1 + exp(-x));  y' = s (1 + x (1 - s)) */
void mi_silu_backward_avx512(const float *x, const float *dy, float *dx, int64_t n)
{
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 k = tail_mask(n - i);
        __m512 v = _mm512_maskz_loadu_ps(k, x + i);
        __m512 e = mi_exp512(_mm512_sub_ps(_mm512_setzero_ps(), v));       /* exp(-x) */
        __m512 s = _mm512_div_ps(one, _mm512_add_ps(one, e));
        __m512 d = _mm512_mul_ps(s, _mm512_fmadd_ps(v, one_minus_sigmoid(e, s), one));
        __m512 g = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, dy + i), d, _mm512_maskz_loadu_ps(k, dx + i));
        _mm512_mask_storeu_ps(dx + i, k, g);
    }
}

/* forward: y = 0.5 x (1 + tanh(u)) = x S,  S = sigmoid(2u),  u = sqrt(2/pi)(x + 0.044715 x^3)
 * y' = 0.5 (1 + t) + 0.5 x (1 - t^2) u' = S + 2 x S (1 - S) u',  u' = sqrt(2/pi)(1 + 3 * 0.044715 x^2)
 * (the sigmoid form keeps both terms accurate where 1 + t would cancel, and
 * S (1 - S) = e S^2 with e = exp(-2u) where 1 - S would) */
void mi_gelu_tanh_backward_avx512(const float *x, const float *dy, float *dx, int64_t n)
{
    const __m512 one = _mm512_set1_ps(1.0f), two = _mm512_set1_ps(2.0f);
    const __m512 c = _mm512_set1_ps(0.044715f), c3 = _mm512_set1_ps(3.0f * 0.044715f);
    const __m512 k0 = _mm512_set1_ps(0.79788456080286536f);
    const __m512 m2k = _mm512_set1_ps(-2.0f * 0.79788456080286536f);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 k = tail_mask(n - i);
        __m512 v = _mm512_maskz_loadu_ps(k, x + i);
        __m512 v2 = _mm512_mul_ps(v, v);
        __m512 inner = _mm512_fmadd_ps(c, _mm512_mul_ps(v2, v), v);
        __m512 e = mi_exp512(_mm512_mul_ps(m2k, inner));                  /* exp(-2u) */
        __m512 S = _mm512_div_ps(one, _mm512_add_ps(one, e));
        __m512 oms = one_minus_sigmoid(e, S);
        __m512 s1s = _mm512_mul_ps(S, oms);
        __m512 du = _mm512_mul_ps(k0, _mm512_fmadd_ps(c3, v2, one));
        __m512 d = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_mul_ps(two, v), s1s), du, S);
        __m512 g = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, dy + i), d, _mm512_maskz_loadu_ps(k, dx + i));
        _mm512_mask_storeu_ps(dx + i, k, g);
    }
}
