/* linear.h - the one way to read a weight: products and rows.
 *
 * Every matrix product with a weight (the forward's, and the gradient pass's
 * products with a weight's transpose) goes through mi_tf_linear, which picks
 * the GEMM by the weight's element type: float32 weights the float32 GEMM
 * (kernels/gemm.h), bfloat16 weights the bfloat16-weight GEMM
 * (kernels/gemm_bf16.h: activations rounded to bfloat16 as its A operand,
 * float32 accumulation, the fastest path this CPU has). Rows of a weight (the
 * token embedding) come out as float32 through mi_tf_weight_rows. Both keep
 * the kernels' guarantee: the same bits for any thread count.
 */
#ifndef MI_LINEAR_H
#define MI_LINEAR_H

#include <stdint.h>

#include "model/transformer.h"

/* y[rows, n] (row stride ldy) = x[rows, k] (row stride ldx) @ op(W) + bias
 * (bias [n] or NULL), overwriting y. W is weight `w` from element `w_off` on:
 * trans_w 0: stored [k, n] with row stride ldw (y = x @ W); trans_w 1: stored
 * [n, k] with row stride ldw (y = x @ W^T, a tied unembedding). A weight stored
 * transposed (w.trans_ld, a Hugging Face Linear read in place) is addressed as if
 * it were not: ldw is then its last axis, and the product reads the transpose. */
void mi_tf_linear(mi_tf_weight w, int64_t w_off, int trans_w, int64_t rows, int64_t n, int64_t k,
                  const float *x, int64_t ldx, int64_t ldw, const float *bias, float *y, int64_t ldy);

/* As mi_tf_linear without a bias, adding to y: y += x @ op(W). */
void mi_tf_linear_add(mi_tf_weight w, int64_t w_off, int trans_w, int64_t rows, int64_t n, int64_t k,
                      const float *x, int64_t ldx, int64_t ldw, float *y, int64_t ldy);

/* dst[i, 0:d] = row ids[i] of the [*, d] weight `w`, as float32, for i < n. */
void mi_tf_weight_rows(mi_tf_weight w, const int64_t *ids, int64_t n, int64_t d, float *dst);

#endif
