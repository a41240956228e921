/* activation.h - elementwise activations over n contiguous floats; y may alias x.
 *
 *   gelu       0.5 x (1 + erf(x / sqrt 2))                          (torch GELU, "gelu")
 *   gelu_tanh  0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))      ("gelu_new", HF GPT-2)
 *   relu       max(x, 0)  (NaN stays NaN)
 *   silu       x / (1 + exp(-x))
 *   softcap    cap tanh(x / cap)  (Gemma 2's soft-capping of scores and logits, cap > 0)
 */
#ifndef MI_ACTIVATION_H
#define MI_ACTIVATION_H

#include <stdint.h>

#include "common/status.h"

typedef enum { MI_ACT_RELU, MI_ACT_GELU, MI_ACT_GELU_TANH, MI_ACT_SILU } mi_activation;
#define MI_ACT_COUNT (MI_ACT_SILU + 1)

void mi_gelu(const float *x, float *y, int64_t n);
void mi_gelu_tanh(const float *x, float *y, int64_t n);
void mi_relu(const float *x, float *y, int64_t n);
void mi_silu(const float *x, float *y, int64_t n);
/* Dispatch on the enum. */
void mi_activate(mi_activation act, const float *x, float *y, int64_t n);

/* y = cap * tanh(x / cap), cap > 0; y may alias x. mi_softcap splits n into
 * chunks run in parallel; mi_softcap_span runs on the calling thread (for
 * callers already inside a parallel region). Elementwise: the split changes
 * no bit. */
void mi_softcap(float cap, const float *x, float *y, int64_t n);
void mi_softcap_span(float cap, const float *x, float *y, int64_t n);

/* Backward (training): dx += dy * act'(x) over n elements (ACCUMULATES).
 * x is the activation's input (hook_pre), not its output. dx must not alias
 * x or dy. relu'(0) = 0 as torch. */
void mi_activation_backward(mi_activation act, const float *x, const float *dy, float *dx,
                            int64_t n);

/* The MLP's relu step fused with its bias gradient, over [rows, cols]:
 *   dx[r, c] = dy[r, c] * relu'(x[r, c])      (OVERWRITES; dx may alias dy)
 *   db[c]   += sum_r dx[r, c]                 (db may be NULL)
 * one pass instead of zero + backward + column sum. The column sums are double
 * partials over fixed 64-row chunks combined in chunk order: bitwise identical
 * for any thread count. MI_ERR_NOMEM if the partials cannot be allocated. */
mi_status mi_relu_backward_bias(const float *x, const float *dy, int64_t rows, int64_t cols,
                                float *dx, float *db);

#endif
