/* activation_simd.h - the activation kernels written once over simd.h.
 *
 * Included by activation_avx2.c and activation_avx512.c after simd.h; each
 * defines this ISA's mi_activation_kernels table (span contract in
 * activation_kernels.h). Shapes: x, y, dy, dx [n] contiguous.
 *
 *   relu       max(x, 0), NaN kept                                bitwise the reference
 *   silu       x / (1 + exp(-x))
 *   gelu_tanh  0.5 x (1 + tanh(u)) = x / (1 + exp(-2u)),  u = sqrt(2/pi)(x + 0.044715 x^3)
 *              (the sigmoid form avoids 1 + tanh(u) cancelling for negative x)
 *   gelu       x Phi(x) = 0.5 x (1 + erf(x / sqrt 2)), erf from the polynomials below
 */
#include "kernels/activation_kernels.h"

#define SQRT1_2 0.70710678118654752f       /* 1/sqrt(2) */
#define SQRT_2_PI 0.79788456080286536f     /* sqrt(2/pi) */
#define INV_SQRT_2PI 0.39894228040143268f  /* 1/sqrt(2 pi) */
#define GELU_C 0.044715f

/* --- forward ------------------------------------------------------------ */

static void relu_span(const float *x, float *y, int64_t n)
{
    const mi_vf zero = vf_zero();
    for (int64_t i = 0; i < n; i += MI_VW) {
        mi_vf v = vf_load_n(x + i, n - i);
        vf_store_n(y + i, vf_sel(vm_or(vf_gt(v, zero), vf_isnan(v)), v, zero), n - i);
    }
}

static void silu_span(const float *x, float *y, int64_t n)
{
    const mi_vf one = vf_set1(1.0f);
    for (int64_t i = 0; i < n; i += MI_VW) {
        mi_vf v = vf_load_n(x + i, n - i);
        mi_vf e = vf_exp(vf_sub(vf_zero(), v));                        /* exp(-x) */
        vf_store_n(y + i, vf_div(v, vf_add(one, e)), n - i);
    }
}

static void gelu_tanh_span(const float *x, float *y, int64_t n)
{
    const mi_vf one = vf_set1(1.0f), c = vf_set1(GELU_C), m2k = vf_set1(-2.0f * SQRT_2_PI);
    for (int64_t i = 0; i < n; i += MI_VW) {
        mi_vf v = vf_load_n(x + i, n - i);
        mi_vf v3 = vf_mul(vf_mul(v, v), v);
        mi_vf inner = vf_fma(c, v3, v);                                /* x + c x^3 */
        mi_vf e = vf_exp(vf_mul(m2k, inner));                          /* exp(-2u) */
        vf_store_n(y + i, vf_div(v, vf_add(one, e)), n - i);
    }
}

/* Phi(x) = 0.5 (1 + erf(a)), a = x / sqrt 2, in the pieces gelu and its
 * derivative need:
 *   |a| < 0.5:  erf(a) = a P(a^2)       (degree 6, Cephes erff coefficients)
 *   |a| >= 0.5: erfc(|a|) = exp(-a^2) Q(z), z = 1 / (1 + 0.5 |a|), Q ~ erfcx
 *             (degree 9, relative-weighted least-squares fit of scipy's erfcx
 *              on [0.5, 10.5]: 4e-9 in float64, ~2.4e-7 in float32 Horner)
 * a^2 = x^2 / 2 is formed exactly as hi + lo with an FMA, and
 * exp(-hi - lo) = exp(-hi) (1 - lo): a float a^2 would cost |a^2| ulps in the
 * tail. |x| is clamped to 15 (erfc(10.6) underflows); NaN becomes 15 there,
 * and the caller's product with x brings it back. */
typedef struct {
    mi_vf erf_in;   /* a P(a^2): erf(a), valid where `inner` */
    mi_vf erfc;     /* erfc(|a|), valid elsewhere */
    mi_vf gauss;    /* exp(-x^2 / 2) (x clamped to +-15) */
    mi_vm inner;    /* |a| < 0.5 */
} erf_parts;

static inline erf_parts gelu_erf(mi_vf v)
{
    static const float PA[7] = {7.847260712878779e-05f, -0.0008008191362023354f,
                                0.005188099108636379f, -0.026853691786527634f,
                                0.1128358244895935f, -0.3761262595653534f, 1.1283791065216064f};
    static const float PB[10] = {-0.07369048148393631f, 0.3482906222343445f,
                                 -0.6057771444320679f, 0.4012507200241089f,
                                 -0.10500194877386093f, 0.23421767354011536f,
                                 0.23511816561222076f, 0.2835982143878937f,
                                 0.28198400139808655f, 3.5650923564389814e-06f};
    const mi_vf half = vf_set1(0.5f), one = vf_set1(1.0f), sqrt1_2 = vf_set1(SQRT1_2);
    erf_parts r;
    mi_vf a = vf_mul(v, sqrt1_2);
    mi_vf s = vf_mul(a, a);
    mi_vf p = vf_set1(PA[0]);
    for (int j = 1; j < 7; j++) p = vf_fma(p, s, vf_set1(PA[j]));
    r.erf_in = vf_mul(a, p);
    mi_vf ax = vf_min(vf_abs(v), vf_set1(15.0f));
    mi_vf xx = vf_mul(ax, ax);
    mi_vf lo = vf_mul(half, vf_fms(ax, ax, xx));
    mi_vf hi = vf_mul(half, xx);
    r.gauss = vf_mul(vf_exp(vf_sub(vf_zero(), hi)), vf_sub(one, lo));
    mi_vf z = vf_div(one, vf_fma(half, vf_mul(ax, sqrt1_2), one));
    mi_vf q = vf_set1(PB[0]);
    for (int j = 1; j < 10; j++) q = vf_fma(q, z, vf_set1(PB[j]));
    r.erfc = vf_mul(r.gauss, q);
    r.inner = vf_lt(vf_abs(a), half);
    return r;
}

/* y = x (1 - 0.5 erfc(a)) for x > 0 and 0.5 x erfc(|a|) for x < 0, so the
 * negative tail keeps its relative accuracy (1 + erf(a) would cancel) and
 * +inf stays +inf; 0.5 x (1 + a P(a^2)) near 0. */
static void gelu_span(const float *x, float *y, int64_t n)
{
    const mi_vf half = vf_set1(0.5f), one = vf_set1(1.0f);
    for (int64_t i = 0; i < n; i += MI_VW) {
        mi_vf v = vf_load_n(x + i, n - i);
        mi_vf hv = vf_mul(half, v);
        erf_parts e = gelu_erf(v);
        mi_vf y_in = vf_fma(hv, e.erf_in, hv);
        mi_vf y_out = vf_sel(vf_gt(v, vf_zero()), vf_mul(v, vf_fnma(half, e.erfc, one)),
                             vf_mul(hv, e.erfc));
        vf_store_n(y + i, vf_sel(e.inner, y_in, y_out), n - i);
    }
}

/* --- backward: dx += dy * act'(x) (forward lines quoted above each) ------ */

/* forward: y = max(x, 0);  y' = [x > 0], NaN x passes NaN on */
static void relu_backward_span(const float *x, const float *dy, float *dx, int64_t n)
{
    const mi_vf zero = vf_zero();
    for (int64_t i = 0; i < n; i += MI_VW) {
        mi_vf v = vf_load_n(x + i, n - i);
        mi_vf g = vf_sel(vf_gt(v, zero), vf_load_n(dy + i, n - i),
                         vf_sel(vf_isnan(v), v, zero));
        vf_store_n(dx + i, vf_add(vf_load_n(dx + i, n - i), g), n - i);
    }
}

/* 1 - s for s = 1 / (1 + e): e s (no cancellation when s ~ 1), and 1 when e
 * overflowed to inf (s = 0, where e s would be inf * 0). */
static inline mi_vf one_minus_sigmoid(mi_vf e, mi_vf s)
{
    return vf_sel(vf_eq(e, vf_set1(__builtin_inff())), vf_set1(1.0f), vf_mul(e, s));
}

/* forward: y = x s,  s = 1 / (1 + exp(-x));  y' = s (1 + x (1 - s)) */
static void silu_backward_span(const float *x, const float *dy, float *dx, int64_t n)
{
    const mi_vf one = vf_set1(1.0f);
    for (int64_t i = 0; i < n; i += MI_VW) {
        mi_vf v = vf_load_n(x + i, n - i);
        mi_vf e = vf_exp(vf_sub(vf_zero(), v));                        /* exp(-x) */
        mi_vf s = vf_div(one, vf_add(one, e));
        mi_vf d = vf_mul(s, vf_fma(v, one_minus_sigmoid(e, s), one));
        vf_store_n(dx + i, vf_fma(vf_load_n(dy + i, n - i), d, vf_load_n(dx + i, n - i)), n - i);
    }
}

/* forward: y = 0.5 x (1 + tanh(u)) = x S,  S = sigmoid(2u),  u = sqrt(2/pi)(x + 0.044715 x^3)
 * y' = 0.5 (1 + t) + 0.5 x (1 - t^2) u' = S + 2 x S (1 - S) u',  u' = sqrt(2/pi)(1 + 3 * 0.044715 x^2)
 * (the sigmoid form keeps both terms accurate where 1 + t would cancel, and
 * S (1 - S) = e S^2 with e = exp(-2u) where 1 - S would) */
static void gelu_tanh_backward_span(const float *x, const float *dy, float *dx, int64_t n)
{
    const mi_vf one = vf_set1(1.0f), two = vf_set1(2.0f);
    const mi_vf c = vf_set1(GELU_C), c3 = vf_set1(3.0f * GELU_C);
    const mi_vf k0 = vf_set1(SQRT_2_PI), m2k = vf_set1(-2.0f * SQRT_2_PI);
    for (int64_t i = 0; i < n; i += MI_VW) {
        mi_vf v = vf_load_n(x + i, n - i);
        mi_vf v2 = vf_mul(v, v);
        mi_vf inner = vf_fma(c, vf_mul(v2, v), v);
        mi_vf e = vf_exp(vf_mul(m2k, inner));                          /* exp(-2u) */
        mi_vf S = vf_div(one, vf_add(one, e));
        mi_vf s1s = vf_mul(S, one_minus_sigmoid(e, S));
        mi_vf du = vf_mul(k0, vf_fma(c3, v2, one));
        mi_vf d = vf_fma(vf_mul(vf_mul(two, v), s1s), du, S);
        vf_store_n(dx + i, vf_fma(vf_load_n(dy + i, n - i), d, vf_load_n(dx + i, n - i)), n - i);
    }
}

/* forward: y = x Phi(x);  y' = Phi(x) + x phi(x),  phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
 * Phi from the same pieces as the forward: 0.5 + 0.5 erf(a) near 0, else
 * 1 - 0.5 erfc(a) for x > 0 and 0.5 erfc(|a|) for x < 0. */
static void gelu_backward_span(const float *x, const float *dy, float *dx, int64_t n)
{
    const mi_vf half = vf_set1(0.5f), one = vf_set1(1.0f), k = vf_set1(INV_SQRT_2PI);
    for (int64_t i = 0; i < n; i += MI_VW) {
        mi_vf v = vf_load_n(x + i, n - i);
        erf_parts e = gelu_erf(v);
        mi_vf cdf_out = vf_sel(vf_gt(v, vf_zero()), vf_fnma(half, e.erfc, one),
                               vf_mul(half, e.erfc));
        mi_vf cdf = vf_sel(e.inner, vf_fma(half, e.erf_in, half), cdf_out);
        mi_vf d = vf_fma(v, vf_mul(k, e.gauss), cdf);
        vf_store_n(dx + i, vf_fma(vf_load_n(dy + i, n - i), d, vf_load_n(dx + i, n - i)), n - i);
    }
}

/* --- softcap --------------------------------------------------------------
 * y = cap tanh(t), t = x / cap (divided, as the reference), tanh as Cephes
 * tanhf: |t| < 0.625: t + t^3 P(t^2) (no cancellation near 0); else
 * sign(t) (1 - 2 / (exp(2|t|) + 1)), exp's overflow to inf giving exactly +-1.
 * NaN stays NaN (the second branch). */
static void softcap_span(float cap, const float *x, float *y, int64_t n)
{
    const mi_vf c = vf_set1(cap), one = vf_set1(1.0f), two = vf_set1(2.0f),
                small = vf_set1(0.625f), zero = vf_zero();
    for (int64_t i = 0; i < n; i += MI_VW) {
        mi_vf t = vf_div(vf_load_n(x + i, n - i), c);
        mi_vf a = vf_abs(t), z = vf_mul(t, t);
        mi_vf p = vf_fma(vf_set1(-5.70498872745e-3f), z, vf_set1(2.06390887954e-2f));
        p = vf_fma(p, z, vf_set1(-5.37397155531e-2f));
        p = vf_fma(p, z, vf_set1(1.33314422036e-1f));
        p = vf_fma(p, z, vf_set1(-3.33332819422e-1f));
        mi_vf near = vf_fma(vf_mul(t, z), p, t);
        mi_vf far = vf_sub(one, vf_div(two, vf_add(vf_exp(vf_mul(two, a)), one)));
        far = vf_sel(vf_lt(t, zero), vf_sub(zero, far), far);
        vf_store_n(y + i, vf_mul(c, vf_sel(vf_lt(a, small), near, far)), n - i);
    }
}

const mi_activation_kernels MI_SIMD_NAME(mi_activation_kernels) = {
    .forward = {
        [MI_ACT_RELU] = relu_span, [MI_ACT_GELU] = gelu_span,
        [MI_ACT_GELU_TANH] = gelu_tanh_span, [MI_ACT_SILU] = silu_span,
    },
    .backward = {
        [MI_ACT_RELU] = relu_backward_span, [MI_ACT_GELU] = gelu_backward_span,
        [MI_ACT_GELU_TANH] = gelu_tanh_backward_span, [MI_ACT_SILU] = silu_backward_span,
    },
    .softcap = softcap_span,
};
