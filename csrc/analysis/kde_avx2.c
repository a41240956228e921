/* kde_avx2.c - the KDE window sum, AVX2 + FMA: 4 terms per step (see kde_exp.h).
 * Fixed lane order and a scalar tail (libm exp): the result depends on the
 * ISA (within ~1e-15 relative) but not on threads. */
#pragma GCC target("avx2,fma")

#include <immintrin.h>
#include <math.h>

#include "analysis/kde.h"
#include "analysis/kde_exp.h"

static inline __m256d exp_neg4(__m256d x)
{
    const __m256d lo = _mm256_set1_pd(KDE_EXP_MIN), shifter = _mm256_set1_pd(KDE_SHIFTER);
    __m256d ok = _mm256_cmp_pd(x, lo, _CMP_GE_OQ);
    x = _mm256_max_pd(x, lo);
    __m256d kshift = _mm256_fmadd_pd(x, _mm256_set1_pd(KDE_INV_LN2), shifter);
    __m256d kd = _mm256_sub_pd(kshift, shifter);
    __m256d r = _mm256_fnmadd_pd(kd, _mm256_set1_pd(KDE_LN2_HI), x);
    r = _mm256_fnmadd_pd(kd, _mm256_set1_pd(KDE_LN2_LO), r);
    __m256d p = _mm256_set1_pd(kde_exp_poly[0]);
    for (int c = 1; c < 14; c++) p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(kde_exp_poly[c]));
    __m256i bits = _mm256_slli_epi64(
        _mm256_add_epi64(_mm256_castpd_si256(kshift), _mm256_set1_epi64x(1023)), 52);
    return _mm256_and_pd(ok, _mm256_mul_pd(p, _mm256_castsi256_pd(bits)));
}

double mi_kde_window_sum_avx2(const double *s, const double *w, double wu, int64_t lo,
                              int64_t hi, double t, double norm)
{
    __m256d acc = _mm256_setzero_pd();
    const __m256d tv = _mm256_set1_pd(t), nv = _mm256_set1_pd(norm),
                  half = _mm256_set1_pd(-0.5), wv_u = _mm256_set1_pd(wu);
    int64_t i = lo;
    for (; i + 4 <= hi; i += 4) {
        __m256d r = _mm256_sub_pd(_mm256_loadu_pd(s + i), tv);
        __m256d e = exp_neg4(_mm256_mul_pd(_mm256_mul_pd(r, r), half));
        __m256d wv = w ? _mm256_loadu_pd(w + i) : wv_u;
        acc = _mm256_add_pd(acc, _mm256_mul_pd(wv, _mm256_mul_pd(e, nv)));
    }
    double lanes[4];
    _mm256_storeu_pd(lanes, acc);
    double tot = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
    for (; i < hi; i++) {
        double r = s[i] - t;
        tot += (w ? w[i] : wu) * (exp(-(r * r) / 2.0) * norm);
    }
    return tot;
}
