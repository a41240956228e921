/* norm_simd.h - the LayerNorm / RMSNorm rows written once over simd.h.
 *
 * Included by norm_avx2.c and norm_avx512.c after simd.h; each defines this
 * ISA's mi_norm_kernels table (row contract in norm_kernels.h).
 * Shapes: xr, yr, yn, yo, xa, xb, xs, dyr, dxr [d]; w, b [d]; pw, pb [d] double.
 * Same arithmetic as the scalar rows in norm.c (float x - mean, squares and
 * sums in double), the double sums kept in MI_VW lanes instead of one.
 */
#include <math.h>

#include "kernels/norm_kernels.h"

static float row_mean(const float *xr, int64_t d)
{
    mi_vd acc = vd_zero();
    for (int64_t i = 0; i < d; i += MI_VW) acc = vd_add(acc, vf_load_n(xr + i, d - i));
    return (float)(vd_hsum(acc) / (double)d);
}

static float row_scale(const float *xr, int64_t d, int centre, float eps, float *mean_out)
{
    const float mean = centre ? row_mean(xr, d) : 0.0f;
    const mi_vf m = vf_set1(mean);
    mi_vd acc = vd_zero();
    for (int64_t i = 0; i < d; i += MI_VW) {
        /* lanes past d are 0, not 0 - mean */
        mi_vf c = vf_sel(vm_tail(d - i), vf_sub(vf_load_n(xr + i, d - i), m), vf_zero());
        acc = vd_fma(acc, c, c);
    }
    *mean_out = mean;
    return (float)sqrt(vd_hsum(acc) / (double)d + (double)eps);
}

static void row_scaled(const float *xr, int64_t d, float mean, float inv, const float *w,
                       const float *b, float *yr)
{
    const mi_vf m = vf_set1(mean), vinv = vf_set1(inv);
    for (int64_t i = 0; i < d; i += MI_VW) {
        mi_vf v = vf_mul(vf_sub(vf_load_n(xr + i, d - i), m), vinv);
        if (w) v = vf_mul(v, vf_load_n(w + i, d - i));
        if (b) v = vf_add(v, vf_load_n(b + i, d - i));
        vf_store_n(yr + i, v, d - i);
    }
}

static void row_apply(const float *xr, int64_t d, float mean, float s, const float *w,
                      const float *b, float *yn, float *yo)
{
    const mi_vf m = vf_set1(mean), vs = vf_set1(s);
    for (int64_t i = 0; i < d; i += MI_VW) {
        mi_vf v = vf_div(vf_sub(vf_load_n(xr + i, d - i), m), vs);
        if (yn) vf_store_n(yn + i, v, d - i);
        if (yo) {
            mi_vf vw = vf_load_n(w + i, d - i);
            v = b ? vf_fma(v, vw, vf_load_n(b + i, d - i)) : vf_mul(v, vw);
            vf_store_n(yo + i, v, d - i);
        }
    }
}

static void row_affine(const float *yn, int64_t d, const float *w, const float *b, float *yo)
{
    for (int64_t i = 0; i < d; i += MI_VW) {
        mi_vf v = vf_load_n(yn + i, d - i), vw = vf_load_n(w + i, d - i);
        v = b ? vf_fma(v, vw, vf_load_n(b + i, d - i)) : vf_mul(v, vw);
        vf_store_n(yo + i, v, d - i);
    }
}

static void row_add(const float *xa, const float *xb, int64_t d, float *xs)
{
    for (int64_t i = 0; i < d; i += MI_VW)
        vf_store_n(xs + i, vf_add(vf_load_n(xa + i, d - i), vf_load_n(xb + i, d - i)), d - i);
}

/* forward: xhat = (x - mean) * inv;  y = xhat * w + b
 * with g = dy * w (dy without affine):
 *   dx = (g - mean(g) - xhat * mean(g * xhat)) * inv      (RMSNorm: no mean(g))
 *   dw = sum_rows dy * xhat;  db = sum_rows dy */
static void row_backward(const float *xr, const float *dyr, const float *w, float mean, float inv,
                         int centre, int64_t d, float *dxr, double *pw, double *pb)
{
    const mi_vf m = vf_set1(mean), vinv = vf_set1(inv), one = vf_set1(1.0f);
    if (dxr) {
        /* lanes past d: dy = 0, so g = 0 and they add nothing */
        mi_vd sg = vd_zero(), sgx = vd_zero();
        for (int64_t i = 0; i < d; i += MI_VW) {
            mi_vf xhat = vf_mul(vf_sub(vf_load_n(xr + i, d - i), m), vinv);
            mi_vf g = vf_load_n(dyr + i, d - i);
            if (w) g = vf_mul(g, vf_load_n(w + i, d - i));
            sg = vd_add(sg, g);
            sgx = vd_fma(sgx, g, xhat);
        }
        const mi_vf mg = vf_set1(centre ? (float)(vd_hsum(sg) / (double)d) : 0.0f);
        const mi_vf mgx = vf_set1((float)(vd_hsum(sgx) / (double)d));
        for (int64_t i = 0; i < d; i += MI_VW) {
            mi_vf xhat = vf_mul(vf_sub(vf_load_n(xr + i, d - i), m), vinv);
            mi_vf g = vf_load_n(dyr + i, d - i);
            if (w) g = vf_mul(g, vf_load_n(w + i, d - i));
            mi_vf t = vf_sub(vf_sub(g, mg), vf_mul(xhat, mgx));
            vf_store_n(dxr + i, vf_add(vf_load_n(dxr + i, d - i), vf_mul(t, vinv)), d - i);
        }
    }
    if (pw || pb)
        for (int64_t i = 0; i < d; i += MI_VW) {
            mi_vf dy = vf_load_n(dyr + i, d - i);
            if (pw) vd_fma_store_n(pw + i, dy, vf_mul(vf_sub(vf_load_n(xr + i, d - i), m), vinv), d - i);
            if (pb) vd_fma_store_n(pb + i, dy, one, d - i);
        }
}

const mi_norm_kernels MI_SIMD_NAME(mi_norm_kernels) = {
    .row_mean = row_mean,
    .row_scale = row_scale,
    .row_scaled = row_scaled,
    .row_apply = row_apply,
    .row_affine = row_affine,
    .row_add = row_add,
    .row_backward = row_backward,
};
