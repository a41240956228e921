/* vmath_avx2.h - AVX2+FMA exp for the elementwise, softmax and loss kernels.
 *
 * Include only from a file compiled with
 *   #pragma GCC target("avx2,fma")
 * placed before the include (the functions inherit that target).
 *
 * mi_exp256: mi_exp512 (vmath_avx512.h) on 8 lanes, the same operations in
 * the same order, so both give bitwise the same results. AVX2 has no scalef:
 * 2^n (n in [-150, 128] after the clamp) is applied as two factors 2^n1 2^n2,
 * each a normal float, n1 = floor(n / 2); y 2^n1 is exact and the second
 * product rounds once, exactly as scalef rounds y 2^n (denormals included).
 */
#ifndef MI_VMATH_AVX2_H
#define MI_VMATH_AVX2_H

#include <immintrin.h>

/* 2^k as a float for integer k in [-126, 127] */
static inline __m256 mi_pow2i256(__m256i k)
{
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k, _mm256_set1_epi32(127)), 23));
}

static inline __m256 mi_exp256(__m256 x)
{
    const __m256 hi = _mm256_set1_ps(88.72283935546875f), lo = _mm256_set1_ps(-103.972084f);
    __m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
    __m256 over = _mm256_cmp_ps(x, hi, _CMP_GT_OQ);
    __m256 xc = _mm256_max_ps(_mm256_min_ps(x, hi), lo);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500E-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507E-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073E-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894E-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459E-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201E-1f));
    __m256 r2 = _mm256_mul_ps(r, r);
    __m256 y = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i ni = _mm256_cvtps_epi32(n);
    __m256i n1 = _mm256_srai_epi32(ni, 1);
    y = _mm256_mul_ps(_mm256_mul_ps(y, mi_pow2i256(n1)), mi_pow2i256(_mm256_sub_epi32(ni, n1)));
    y = _mm256_blendv_ps(y, _mm256_set1_ps(__builtin_inff()), over);
    return _mm256_blendv_ps(y, x, nan);
}

#endif
