/* norm_avx512.c - one LayerNorm / RMSNorm row with AVX-512 (see norm.h).
 *
 * Same arithmetic as the scalar rows in norm.c (float x - mean, squares and
 * sums in double, y = (x - mean) * inv * w + b as separate roundings), with
 * the double sums kept in 16 lanes instead of one: results agree with the
 * reference to a few ulp (sums in another order), not bitwise. Called by
 * norm.c only after mi_cpu_isa() reported AVX-512; xr and yr may alias.
 */
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq")

#include <immintrin.h>
#include <math.h>
#include <stdint.h>

static inline __mmask16 tail_mask(int64_t left)
{
    return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
}

/* acc += v (16 floats) as two 8-double halves */
static inline void add_pd(__m512d *a0, __m512d *a1, __m512 v)
{
    *a0 = _mm512_add_pd(*a0, _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
    *a1 = _mm512_add_pd(*a1, _mm512_cvtps_pd(_mm256_castpd_ps(
              _mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
}

/* acc += v * v in double */
static inline void add_sq_pd(__m512d *a0, __m512d *a1, __m512 v)
{
    __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
    __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    *a0 = _mm512_fmadd_pd(lo, lo, *a0);
    *a1 = _mm512_fmadd_pd(hi, hi, *a1);
}

float mi_row_mean_avx512(const float *xr, int64_t d)
{
    __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
    for (int64_t i = 0; i < d; i += 16) add_pd(&a0, &a1, _mm512_maskz_loadu_ps(tail_mask(d - i), xr + i));
    return (float)(_mm512_reduce_add_pd(_mm512_add_pd(a0, a1)) / (double)d);
}

/* y = (x - mean) / scale * w + b (w, b may be NULL); returns scale */
float mi_layer_norm_row_avx512(const float *xr, const float *w, const float *b, float eps,
                               int64_t d, float *yr)
{
    float mean = mi_row_mean_avx512(xr, d);
    __m512 m = _mm512_set1_ps(mean);
    __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
    for (int64_t i = 0; i < d; i += 16) {
        __mmask16 k = tail_mask(d - i);
        add_sq_pd(&a0, &a1, _mm512_maskz_sub_ps(k, _mm512_maskz_loadu_ps(k, xr + i), m));
    }
    double sq = _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
    float s = (float)sqrt(sq / (double)d + (double)eps);
    __m512 inv = _mm512_set1_ps(1.0f / s);
    for (int64_t i = 0; i < d; i += 16) {
        __mmask16 k = tail_mask(d - i);
        __m512 v = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, xr + i), m), inv);
        if (w) v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(k, w + i));
        if (b) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(k, b + i));
        _mm512_mask_storeu_ps(yr + i, k, v);
    }
    return s;
}

/* y = x / scale * w (w may be NULL); returns scale */
float mi_rms_norm_row_avx512(const float *xr, const float *w, float eps, int64_t d, float *yr)
{
    __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
    for (int64_t i = 0; i < d; i += 16)
        add_sq_pd(&a0, &a1, _mm512_maskz_loadu_ps(tail_mask(d - i), xr + i));
    double sq = _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
    float s = (float)sqrt(sq / (double)d + (double)eps);
    __m512 inv = _mm512_set1_ps(1.0f / s);
    for (int64_t i = 0; i < d; i += 16) {
        __mmask16 k = tail_mask(d - i);
        __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, xr + i), inv);
        if (w) v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(k, w + i));
        _mm512_mask_storeu_ps(yr + i, k, v);
    }
    return s;
}

/* ---- TransformerLens forward norm rows (mi_tl_norm*, norm.h) ---- */

/* scale of one row; *mean_out = the mean subtracted (0 without centre) */
float mi_tl_norm_row_scale_avx512(const float *xr, int64_t d, int centre, float eps, float *mean_out)
{
    float mean = centre ? mi_row_mean_avx512(xr, d) : 0.0f;
    __m512 m = _mm512_set1_ps(mean);
    __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
    for (int64_t i = 0; i < d; i += 16) {
        __mmask16 k = tail_mask(d - i);
        add_sq_pd(&a0, &a1, _mm512_maskz_sub_ps(k, _mm512_maskz_loadu_ps(k, xr + i), m));
    }
    double sq = _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
    *mean_out = mean;
    return (float)sqrt(sq / (double)d + (double)eps);
}

/* normalized = (x - mean) / s; out = fma(normalized, w, b) */
void mi_tl_norm_row_apply_avx512(const float *xr, int64_t d, float mean, float s, const float *w,
                                 const float *b, float *yn, float *yo)
{
    __m512 m = _mm512_set1_ps(mean), vs = _mm512_set1_ps(s);
    for (int64_t i = 0; i < d; i += 16) {
        __mmask16 k = tail_mask(d - i);
        __m512 v = _mm512_div_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, xr + i), m), vs);
        if (yn) _mm512_mask_storeu_ps(yn + i, k, v);
        if (yo) {
            __m512 vw = _mm512_maskz_loadu_ps(k, w + i);
            v = b ? _mm512_fmadd_ps(v, vw, _mm512_maskz_loadu_ps(k, b + i)) : _mm512_mul_ps(v, vw);
            _mm512_mask_storeu_ps(yo + i, k, v);
        }
    }
}

/* out = fma(normalized, w, b) */
void mi_tl_norm_row_affine_avx512(const float *yn, int64_t d, const float *w, const float *b, float *yo)
{
    for (int64_t i = 0; i < d; i += 16) {
        __mmask16 k = tail_mask(d - i);
        __m512 v = _mm512_maskz_loadu_ps(k, yn + i), vw = _mm512_maskz_loadu_ps(k, w + i);
        v = b ? _mm512_fmadd_ps(v, vw, _mm512_maskz_loadu_ps(k, b + i)) : _mm512_mul_ps(v, vw);
        _mm512_mask_storeu_ps(yo + i, k, v);
    }
}

/* xs = xa + xb (the residual add fused before a norm) */
void mi_add_row_avx512(const float *xa, const float *xb, int64_t d, float *xs)
{
    for (int64_t i = 0; i < d; i += 16) {
        __mmask16 k = tail_mask(d - i);
        _mm512_mask_storeu_ps(xs + i, k, _mm512_add_ps(_mm512_maskz_loadu_ps(k, xa + i),
                                                       _mm512_maskz_loadu_ps(k, xb + i)));
    }
}
