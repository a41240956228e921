/* softmax.h - softmax over the last axis of x[rows, cols]; y may alias x.
 *
 * y = exp(x - max) / sum(exp(x - max)). -inf entries get 0. A row that is
 * entirely -inf (every key masked) gives all zeros, as TransformerLens's
 * pattern after its nan -> 0 step. NaN anywhere in a row gives a NaN row.
 */
#ifndef MI_SOFTMAX_H
#define MI_SOFTMAX_H

#include <stdint.h>

void mi_softmax_rows(const float *x, float *y, int64_t rows, int64_t cols);

#endif
