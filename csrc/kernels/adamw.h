/* adamw.h - the AdamW update (torch.optim.AdamW semantics, one tensor).
 *
 * Shapes: p, g strided views of one shape [n0, n1, n2, n3] (strides in floats,
 * the same for p and g since a gradient blob mirrors the parameter blob;
 * last stride 1); m, v contiguous [n0*n1*n2*n3].
 *
 *   p -= lr * wd * p                       (decoupled weight decay)
 *   m  = b1 * m + (1 - b1) * g
 *   v  = b2 * v + (1 - b2) * g * g
 *   p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)
 * with bc1 = 1 - b1^step, bc2 = 1 - b2^step computed by the caller.
 * Elementwise, parallel over rows: bitwise identical for any thread count.
 */
#ifndef MI_ADAMW_H
#define MI_ADAMW_H

#include <stdint.h>

#include "common/status.h"

typedef struct {
    float lr, beta1, beta2, eps, weight_decay;
    double bias_correction1, bias_correction2;
} mi_adamw_hparams;

void mi_adamw_step(float *p, const float *g, const int64_t shape[4], const int64_t strides[4],
                   float *m, float *v, const mi_adamw_hparams *h);

/* Plain scalar reference on contiguous n floats (the same arithmetic). */
void mi_adamw_step_ref(float *p, const float *g, int64_t n, float *m, float *v,
                       const mi_adamw_hparams *h);

/* clip_grad_norm_ over strided tensors of the same [n0, n1, n2, n3] form
 * (last stride 1): the sum of squares in double, in element order (serial:
 * bitwise reproducible), and g *= coef (elementwise, parallel over rows). */
double mi_grad_sumsq(const float *g, const int64_t shape[4], const int64_t strides[4]);
void mi_grad_scale(float *g, const int64_t shape[4], const int64_t strides[4], float coef);
/* g = 0 (zero_grad; NaN gradients too, which a scale by 0 would keep). */
void mi_grad_zero(float *g, const int64_t shape[4], const int64_t strides[4]);

/* One gradient tensor of up to 4 dims as [n0, n1, n2, n3] with element
 * strides (leading dims padded with size 1, last stride 1). */
typedef struct {
    float *data;
    int64_t shape[4], strides[4];
} mi_grad_view;

/* torch.nn.utils.clip_grad_norm_ over n tensors: *total = the L2 norm of all
 * of them (squares summed in double, tensor by tensor in order: bitwise
 * reproducible), then every tensor scaled by coef = max_norm / ((float)*total
 * + 1e-6) in float32 when coef < 1. With error_if_nonfinite a NaN or infinite
 * norm is MI_ERR_VALUE ("clip_grad_norm_: the total norm of the gradients is
 * nan") and nothing is scaled. */
mi_status mi_clip_grad_norm(const mi_grad_view *g, int64_t n, float max_norm,
                            int error_if_nonfinite, double *total);

#endif
