/* kde_sum.c - the KDE window sum, per instruction set (see kde.h).
 *
 * sum_i w_i * (exp(-(s_i - t)^2 / 2) * norm) over a window of sorted samples.
 * The scalar version calls libm exp. The AVX2 / AVX-512 versions (compiled
 * with their own target attributes, chosen at run time by kernels/cpu.h)
 * use a vectorisable exp: x = k ln2 + r with |r| <= ln2/2, a degree-13
 * Taylor polynomial for e^r (truncation < 2e-17 relative), 2^k from the
 * exponent bits; arguments below -708 give 0 (those terms are < 1e-307 of
 * the kernel's peak). Each version sums in a fixed order of its own, so a
 * result depends on the ISA (within ~1e-15 relative) but never on threads.
 */
#include "analysis/kde.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels/cpu.h"

/* exp(x) for x <= 0, written so GCC vectorises it. */
#define DEFINE_EXP_NEG(name, attr)                                                     \
    attr static inline double name(double x)                                           \
    {                                                                                  \
        const double ln2_hi = 0.693147180369123816490, ln2_lo = 1.90821492927058770002e-10; \
        const double inv_ln2 = 1.44269504088896338700, shifter = 6755399441055744.0;   \
        int under = x < -708.0;                                                        \
        x = under ? -708.0 : x;                                                        \
        double kshift = x * inv_ln2 + shifter;       /* k = round(x / ln2) in low bits */ \
        double kd = kshift - shifter;                                                  \
        double r = (x - kd * ln2_hi) - kd * ln2_lo;                                    \
        double p = 1.0 / 6227020800.0;                                                 \
        p = p * r + 1.0 / 479001600.0;                                                 \
        p = p * r + 1.0 / 39916800.0;                                                  \
        p = p * r + 1.0 / 3628800.0;                                                   \
        p = p * r + 1.0 / 362880.0;                                                    \
        p = p * r + 1.0 / 40320.0;                                                     \
        p = p * r + 1.0 / 5040.0;                                                      \
        p = p * r + 1.0 / 720.0;                                                       \
        p = p * r + 1.0 / 120.0;                                                       \
        p = p * r + 1.0 / 24.0;                                                        \
        p = p * r + 1.0 / 6.0;                                                         \
        p = p * r + 0.5;                                                               \
        p = p * r + 1.0;                                                               \
        p = p * r + 1.0;                                                               \
        uint64_t bits;                               /* 2^k: (k + 1023) << 52 */       \
        memcpy(&bits, &kshift, sizeof bits);                                           \
        bits = (bits + 1023) << 52;                                                    \
        double scale;                                                                  \
        memcpy(&scale, &bits, sizeof scale);                                           \
        return under ? 0.0 : p * scale;                                                \
    }

#define DEFINE_WINDOW_SUM(name, expfn, attr)                                           \
    attr static double name(const double *s, const double *w, double wu, int64_t lo,   \
                            int64_t hi, double t, double norm)                         \
    {                                                                                  \
        double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                      \
        int64_t i = lo;                                                                \
        for (; i + 8 <= hi; i += 8)                                                    \
            for (int l = 0; l < 8; l++) {                                              \
                double r = s[i + l] - t;                                               \
                acc[l] += (w ? w[i + l] : wu) * (expfn(-(r * r) / 2.0) * norm);        \
            }                                                                          \
        double tot = 0;                                                                \
        for (; i < hi; i++) {                                                          \
            double r = s[i] - t;                                                       \
            tot += (w ? w[i] : wu) * (expfn(-(r * r) / 2.0) * norm);                   \
        }                                                                              \
        for (int l = 0; l < 8; l++) tot += acc[l];                                     \
        return tot;                                                                    \
    }

#define ATTR_AVX512 __attribute__((target("avx512f,avx512dq,avx512vl,avx2,fma")))
#define ATTR_AVX2 __attribute__((target("avx2,fma")))

DEFINE_EXP_NEG(exp_neg_avx512, ATTR_AVX512)
DEFINE_EXP_NEG(exp_neg_avx2, ATTR_AVX2)
DEFINE_WINDOW_SUM(window_sum_avx512, exp_neg_avx512, ATTR_AVX512)
DEFINE_WINDOW_SUM(window_sum_avx2, exp_neg_avx2, ATTR_AVX2)
DEFINE_WINDOW_SUM(window_sum_scalar, exp, )

double mi_kde_window_sum(const double *s, const double *w, double wu, int64_t lo, int64_t hi,
                         double t, double norm)
{
    switch (mi_cpu_isa()) {
    case MI_ISA_AVX512: return window_sum_avx512(s, w, wu, lo, hi, t, norm);
    case MI_ISA_AVX2: return window_sum_avx2(s, w, wu, lo, hi, t, norm);
    default: return window_sum_scalar(s, w, wu, lo, hi, t, norm);
    }
}
