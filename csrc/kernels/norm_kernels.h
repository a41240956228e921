/* norm_kernels.h - the per-ISA LayerNorm / RMSNorm rows behind norm.h
 * (internal: for norm.c and the files that define the tables).
 *
 * Row contract (one row of d >= 1 floats; xr and yr may alias, dxr aliases
 * neither xr nor dyr). `centre` selects LayerNorm (subtract the mean) over
 * RMSNorm (mean taken as 0, which changes no bit of x - 0):
 *   row_mean(xr, d)                    mean(x), summed in double
 *   row_scale(xr, d, centre, eps, &m)  m = centre ? row_mean : 0;
 *                                      returns sqrt(mean((x - m)^2) + eps), summed in double
 *   row_scaled(xr, d, m, inv, w, b, yr)   yr = (x - m) * inv [* w] [+ b], separate roundings
 *   row_apply(xr, d, m, s, w, b, yn, yo)  yn = (x - m) / s (a true division);
 *                                      yo = fma(yn, w, b) or yn * w; yn, yo may be NULL
 *   row_affine(yn, d, w, b, yo)        yo = fma(yn, w, b) or yn * w
 *   row_add(xa, xb, d, xs)             xs = xa + xb
 *   row_backward(xr, dyr, w, m, inv, centre, d, dxr, pw, pb)
 *       with xhat = (x - m) * inv, g = dy [* w]:
 *       dxr += (g - mean(g) - xhat mean(g xhat)) * inv   (mean(g) only with centre;
 *                                                        dxr may be NULL)
 *       pw += (double)dy * xhat, pb += dy                (each may be NULL)
 * The same row functions serve the fused and the split entry points, so for
 * one ISA they agree bitwise. The scalar table in norm.c is the plain
 * reference; the vector tables (norm_simd.h) keep the double sums in
 * MI_VW lanes: a few ulp from it (sums in another order), elementwise steps
 * and the pw / pb partials bitwise.
 */
#ifndef MI_NORM_KERNELS_H
#define MI_NORM_KERNELS_H

#include <stdint.h>

typedef struct {
    float (*row_mean)(const float *xr, int64_t d);
    float (*row_scale)(const float *xr, int64_t d, int centre, float eps, float *mean_out);
    void (*row_scaled)(const float *xr, int64_t d, float mean, float inv, const float *w,
                       const float *b, float *yr);
    void (*row_apply)(const float *xr, int64_t d, float mean, float s, const float *w,
                      const float *b, float *yn, float *yo);
    void (*row_affine)(const float *yn, int64_t d, const float *w, const float *b, float *yo);
    void (*row_add)(const float *xa, const float *xb, int64_t d, float *xs);
    void (*row_backward)(const float *xr, const float *dyr, const float *w, float mean, float inv,
                         int centre, int64_t d, float *dxr, double *pw, double *pb);
} mi_norm_kernels;

extern const mi_norm_kernels mi_norm_kernels_avx2;
extern const mi_norm_kernels mi_norm_kernels_avx512;

#endif
