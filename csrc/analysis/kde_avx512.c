/* kde_avx512.c - the KDE window sum, AVX-512: 8 terms per step (see kde_exp.h).
 * One vector of partial sums in a fixed lane order, reduced at the end: the
 * result depends on the ISA (within ~1e-15 relative) but not on threads. */
#pragma GCC target("avx512f,avx512dq,avx512vl,avx2,fma")

#include <immintrin.h>

#include "analysis/kde.h"
#include "analysis/kde_exp.h"

static inline __m512d exp_neg8(__m512d x)
{
    const __m512d lo = _mm512_set1_pd(KDE_EXP_MIN), shifter = _mm512_set1_pd(KDE_SHIFTER);
    __mmask8 ok = _mm512_cmp_pd_mask(x, lo, _CMP_GE_OQ);
    x = _mm512_max_pd(x, lo);
    __m512d kshift = _mm512_fmadd_pd(x, _mm512_set1_pd(KDE_INV_LN2), shifter);
    __m512d kd = _mm512_sub_pd(kshift, shifter);
    __m512d r = _mm512_fnmadd_pd(kd, _mm512_set1_pd(KDE_LN2_HI), x);
    r = _mm512_fnmadd_pd(kd, _mm512_set1_pd(KDE_LN2_LO), r);
    __m512d p = _mm512_set1_pd(kde_exp_poly[0]);
    for (int c = 1; c < 14; c++) p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(kde_exp_poly[c]));
    __m512i bits = _mm512_slli_epi64(
        _mm512_add_epi64(_mm512_castpd_si512(kshift), _mm512_set1_epi64(1023)), 52);
    return _mm512_maskz_mov_pd(ok, _mm512_mul_pd(p, _mm512_castsi512_pd(bits)));
}

double mi_kde_window_sum_avx512(const double *s, const double *w, double wu, int64_t lo,
                                int64_t hi, double t, double norm)
{
    __m512d acc = _mm512_setzero_pd();
    const __m512d tv = _mm512_set1_pd(t), nv = _mm512_set1_pd(norm),
                  half = _mm512_set1_pd(-0.5), wv_u = _mm512_set1_pd(wu);
    for (int64_t i = lo; i < hi; i += 8) {
        int64_t left = hi - i;
        __mmask8 m = left >= 8 ? 0xFF : (__mmask8)((1u << left) - 1);
        __m512d r = _mm512_sub_pd(_mm512_maskz_loadu_pd(m, s + i), tv);
        __m512d e = exp_neg8(_mm512_mul_pd(_mm512_mul_pd(r, r), half));   /* -(r*r)/2 exactly */
        __m512d wv = w ? _mm512_maskz_loadu_pd(m, w + i) : wv_u;
        acc = _mm512_mask_add_pd(acc, m, acc, _mm512_mul_pd(wv, _mm512_mul_pd(e, nv)));
    }
    return _mm512_reduce_add_pd(acc);
}
