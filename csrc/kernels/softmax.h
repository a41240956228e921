/* softmax.h - softmax over the last axis of x[rows, cols]; y may alias x.
 *
 * y = exp(x - max) / sum(exp(x - max)). -inf entries get 0. A row that is
 * entirely -inf (every key masked) gives all zeros, as TransformerLens's
 * pattern after its nan -> 0 step. NaN anywhere in a row gives a NaN row.
 * Parallel over rows, each row on one thread (bitwise identical for any
 * thread count). Dispatch: the vector row of the ISA in use (softmax_simd.h)
 * or the scalar reference mi_softmax_rows_ref.
 */
#ifndef MI_SOFTMAX_H
#define MI_SOFTMAX_H

#include <stdint.h>

void mi_softmax_rows(const float *x, float *y, int64_t rows, int64_t cols);

/* One row (the function mi_softmax_rows runs per row; for callers that are
 * already inside a parallel region, like the fused attention). */
void mi_softmax_row(const float *x, float *y, int64_t cols);

/* Same with mask[rows, cols] (0 = masked: treated as -inf); mask NULL = none. */
void mi_softmax_rows_masked(const float *x, const unsigned char *mask, float *y,
                            int64_t rows, int64_t cols);

/* Backward (training). forward: y = softmax(x) per row.
 * dx += y * (dy - sum_j dy_j y_j)  (ACCUMULATES; dx must not alias y or dy).
 * All-masked rows (y = 0) get no gradient. */
void mi_softmax_rows_backward(const float *y, const float *dy, float *dx,
                              int64_t rows, int64_t cols);

/* Plain scalar version of mi_softmax_rows_masked: the reference the
 * vectorised path is tested against. */
void mi_softmax_rows_ref(const float *x, const unsigned char *mask, float *y,
                         int64_t rows, int64_t cols);

#endif
