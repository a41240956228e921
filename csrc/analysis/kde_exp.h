/* kde_exp.h - constants of the vector exp used by kde_avx2.c / kde_avx512.c.
 *
 * exp(x), x <= 0: x = k ln2 + r, |r| <= ln2/2 (k = round(x / ln2) by the
 * 1.5 * 2^52 shifter trick, so k sits in the low mantissa bits of kshift),
 * e^r by a degree-13 Taylor polynomial (truncation < 2e-17 relative), 2^k by
 * writing (k + 1023) << 52 as the exponent bits. x < -708 gives 0: those
 * terms are below 1e-307 of the kernel's peak and scipy's sum does not see
 * them either within double precision.
 */
#ifndef MI_KDE_EXP_H
#define MI_KDE_EXP_H

#define KDE_EXP_MIN (-708.0)
#define KDE_LN2_HI 0.693147180369123816490
#define KDE_LN2_LO 1.90821492927058770002e-10
#define KDE_INV_LN2 1.44269504088896338700
#define KDE_SHIFTER 6755399441055744.0

/* Taylor coefficients 1/13! .. 1/0!, highest first (Horner order). */
static const double kde_exp_poly[14] = {
    1.0 / 6227020800.0, 1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0,
    1.0 / 362880.0, 1.0 / 40320.0, 1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0,
    1.0 / 6.0, 0.5, 1.0, 1.0};

#endif
