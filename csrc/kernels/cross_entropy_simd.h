/* cross_entropy_simd.h - the cross-entropy row written once over simd.h.
 *
 * Included by cross_entropy_avx2.c and cross_entropy_avx512.c after simd.h;
 * each defines this ISA's mi_cross_entropy_kernels (row contract in
 * cross_entropy_kernels.h). Shapes: lr, dr [vocab].
 * The vocab-wide exps are float (vf_exp, ~2 ulp) summed in double lanes, so
 * logsumexp agrees with the double reference to ~1e-7 absolute. The target
 * entry of dr, p_t - 1, is formed in double: in float it cancels when the
 * model is confident.
 */
#include <math.h>

#include "kernels/cross_entropy_kernels.h"

static double cross_entropy_row(const float *lr, int64_t vocab, int64_t t, double gscale,
                                float *dr)
{
    const mi_vf ninf = vf_set1(-INFINITY);
    mi_vf vmax = ninf;
    mi_vm any_nan = vm_none();
    for (int64_t j = 0; j < vocab; j += MI_VW) {
        mi_vf v = vf_sel(vm_tail(vocab - j), vf_load_n(lr + j, vocab - j), ninf);
        any_nan = vm_or(any_nan, vf_isnan(v));
        vmax = vf_max(vmax, v);
    }
    float mx = vm_any(any_nan) ? NAN : vf_hmax(vmax);
    const mi_vf m = vf_set1(mx);
    mi_vd sum = vd_zero();
    for (int64_t j = 0; j < vocab; j += MI_VW) {
        mi_vf e = vf_exp(vf_sub(vf_load_n(lr + j, vocab - j), m));
        sum = vd_add(sum, vf_sel(vm_tail(vocab - j), e, vf_zero()));
    }
    const double s = vd_hsum(sum), lse = (double)mx + log(s);
    if (dr) {
        /* forward: loss = lse - x_t;  dx_j = softmax_j - [j == t] */
        const float dt = dr[t];
        const mi_vf g = vf_set1((float)(gscale / s));   /* softmax_j * gscale */
        for (int64_t j = 0; j < vocab; j += MI_VW) {
            mi_vf e = vf_exp(vf_sub(vf_load_n(lr + j, vocab - j), m));
            vf_store_n(dr + j, vf_add(vf_load_n(dr + j, vocab - j), vf_mul(e, g)), vocab - j);
        }
        dr[t] = dt + (float)((exp((double)lr[t] - lse) - 1.0) * gscale);
    }
    return lse - (double)lr[t];
}

const mi_cross_entropy_kernels MI_SIMD_NAME(mi_cross_entropy_kernels) = {
    .row = cross_entropy_row,
};
