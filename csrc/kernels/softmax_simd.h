/* softmax_simd.h - the softmax rows written once over simd.h.
 *
 * Included by softmax_avx2.c and softmax_avx512.c after simd.h; each defines
 * this ISA's mi_softmax_kernels table (row contract in softmax_kernels.h).
 * Shapes: xr, yr, dyr, dxr [cols]; mr [cols] bytes (0 = masked) or NULL.
 */
#include <math.h>

#include "kernels/softmax_kernels.h"

/* Lanes of the chunk at j that are kept (mask byte != 0) and inside the row. */
static inline mi_vm keep_lanes(const unsigned char *mr, int64_t j, int64_t cols)
{
    return mr ? vm_bytes(mr + j, cols - j) : vm_tail(cols - j);
}

/* y = exp(x - max) / sum exp(x - max); masked entries 0 */
static void softmax_row(const float *xr, const unsigned char *mr, float *yr, int64_t cols)
{
    const mi_vf ninf = vf_set1(-INFINITY);
    mi_vf vmax = ninf;
    mi_vm any_nan = vm_none();
    for (int64_t j = 0; j < cols; j += MI_VW) {
        mi_vf v = vf_sel(keep_lanes(mr, j, cols), vf_load_n(xr + j, cols - j), ninf);
        any_nan = vm_or(any_nan, vf_isnan(v));
        vmax = vf_max(vmax, v);   /* NaN lanes: handled by any_nan */
    }
    if (vm_any(any_nan)) { for (int64_t j = 0; j < cols; j++) yr[j] = NAN; return; }
    float mx = vf_hmax(vmax);
    if (mx == -INFINITY) { for (int64_t j = 0; j < cols; j++) yr[j] = 0.0f; return; }
    const mi_vf m = vf_set1(mx);
    mi_vd sum = vd_zero();
    for (int64_t j = 0; j < cols; j += MI_VW) {
        mi_vf v = vf_load_n(xr + j, cols - j);
        mi_vf e = vf_sel(keep_lanes(mr, j, cols), vf_exp(vf_sub(v, m)), vf_zero());
        vf_store_n(yr + j, e, cols - j);
        sum = vd_add(sum, e);
    }
    const mi_vf inv = vf_set1((float)(1.0 / vd_hsum(sum)));
    for (int64_t j = 0; j < cols; j += MI_VW)
        vf_store_n(yr + j, vf_mul(vf_load_n(yr + j, cols - j), inv), cols - j);
}

/* forward: y = softmax(x);  dx_j += y_j (dy_j - sum_k dy_k y_k) */
static void softmax_backward_row(const float *yr, const float *dyr, float *dxr, int64_t cols)
{
    mi_vd dot = vd_zero();
    for (int64_t j = 0; j < cols; j += MI_VW)
        dot = vd_fma(dot, vf_load_n(dyr + j, cols - j), vf_load_n(yr + j, cols - j));
    const mi_vf fdot = vf_set1((float)vd_hsum(dot));
    for (int64_t j = 0; j < cols; j += MI_VW) {
        mi_vf y = vf_load_n(yr + j, cols - j), dy = vf_load_n(dyr + j, cols - j);
        vf_store_n(dxr + j, vf_add(vf_load_n(dxr + j, cols - j), vf_mul(y, vf_sub(dy, fdot))),
                   cols - j);
    }
}

const mi_softmax_kernels MI_SIMD_NAME(mi_softmax_kernels) = {
    .row = softmax_row,
    .backward_row = softmax_backward_row,
};
