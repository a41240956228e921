/* norm.h - LayerNorm and RMSNorm over the last axis, as TransformerLens
 * computes them.
 *
 * Shapes: x, y [rows, d]; w, b [d]; scale [rows].
 *   layer_norm: xc = x - mean(x); scale = sqrt(mean(xc^2) + eps);
 *               y = xc / scale * w + b      (w, b NULL: LNPre, no affine)
 *   rms_norm:   scale = sqrt(mean(x^2) + eps); y = x / scale * w   (w NULL: RMSPre)
 * `scale` is TransformerLens's hook_scale and is what the backward pass needs;
 * pass NULL when it is not wanted. y may alias x. Row sums accumulate in double.
 */
#ifndef MI_NORM_H
#define MI_NORM_H

#include <stdint.h>

void mi_layer_norm(const float *x, const float *w, const float *b, float eps,
                   int64_t rows, int64_t d, float *y, float *scale);
void mi_rms_norm(const float *x, const float *w, float eps,
                 int64_t rows, int64_t d, float *y, float *scale);

#endif
