/* softmax_kernels.h - the per-ISA softmax rows behind softmax.h (internal:
 * for softmax.c and the files that define the tables).
 *
 * Row contract (one row of cols >= 1 entries, called by softmax.c per row):
 *   row(xr, mr, yr, cols):           yr = softmax(xr) with keep-mask mr (NULL =
 *                                    none), NaN / all-masked rows as softmax.h;
 *                                    yr may alias xr
 *   backward_row(yr, dyr, dxr, cols): dxr += yr * (dyr - sum(dyr * yr)), the
 *                                    sum in double
 * The scalar table in softmax.c is the plain reference; the vector tables
 * (softmax_simd.h, compiled by softmax_avx2.c and softmax_avx512.c) use
 * float exps of ~1-2 ulp and sum in double in another order.
 */
#ifndef MI_SOFTMAX_KERNELS_H
#define MI_SOFTMAX_KERNELS_H

#include <stdint.h>

typedef struct {
    void (*row)(const float *xr, const unsigned char *mr, float *yr, int64_t cols);
    void (*backward_row)(const float *yr, const float *dyr, float *dxr, int64_t cols);
} mi_softmax_kernels;

extern const mi_softmax_kernels mi_softmax_kernels_avx2;
extern const mi_softmax_kernels mi_softmax_kernels_avx512;

#endif
