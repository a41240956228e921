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

#include "common/status.h"

void mi_layer_norm(const float *x, const float *w, const float *b, float eps,
                   int64_t rows, int64_t d, float *y, float *scale);
void mi_rms_norm(const float *x, const float *w, float eps,
                 int64_t rows, int64_t d, float *y, float *scale);

/* Plain scalar versions: the references the vector rows are tested against. */
void mi_layer_norm_ref(const float *x, const float *w, const float *b, float eps,
                       int64_t rows, int64_t d, float *y, float *scale);
void mi_rms_norm_ref(const float *x, const float *w, float eps,
                     int64_t rows, int64_t d, float *y, float *scale);

/* TransformerLens's norm step as its hook points see it (the model forward):
 *   xc = x - mean(x) when `centre` (LN, LNPre), else x (RMS, RMSPre)
 *   scale[r] = sqrt(mean(xc^2) + eps)            (hook_scale)
 *   normalized = xc / scale, a true division     (hook_normalized)
 *   out = normalized * w + b   (one fused multiply-add; w, b may be NULL)
 * mi_tl_norm does it all in one pass per row; with x_add it first writes
 * x_sum = x + x_add (the residual add before ln2) and normalises that.
 * mi_tl_norm_scale computes scale only and mi_tl_norm_apply continues from a
 * given (possibly hooked) scale, so a hook between them that changes nothing
 * changes no bit: for one ISA the split and fused paths give bitwise the same
 * numbers. normalized / out may be NULL when not wanted (out needs w).
 * mi_tl_norm_affine: out = normalized * w + b after a hook edited normalized.
 * Parallel over rows. Dispatch: the vector rows of the ISA in use
 * (norm_simd.h) or the scalar reference rows. */
void mi_tl_norm(int centre, const float *x, const float *x_add, float *x_sum, const float *w,
                const float *b, float eps, int64_t rows, int64_t d, float *scale,
                float *normalized, float *out);
void mi_tl_norm_scale(int centre, const float *x, float eps, int64_t rows, int64_t d,
                      float *scale);
void mi_tl_norm_apply(int centre, const float *x, const float *scale, const float *w,
                      const float *b, int64_t rows, int64_t d, float *normalized, float *out);
void mi_tl_norm_affine(const float *normalized, const float *w, const float *b, int64_t rows,
                       int64_t d, float *out);
/* Scalar reference of mi_tl_norm (same contract). */
void mi_tl_norm_ref(int centre, const float *x, const float *x_add, float *x_sum, const float *w,
                    const float *b, float eps, int64_t rows, int64_t d, float *scale,
                    float *normalized, float *out);

/* Backward passes (training). dy [rows, d] is the gradient of y; `scale` is
 * the forward's per-row scale. Every gradient ACCUMULATES (+=): dx [rows, d],
 * dw [d], db [d]; pass NULL for a gradient that is not wanted (dw, db must be
 * NULL when w, b were NULL in the forward). dx must not alias dy or x.
 * dw/db are sums over rows: double partial sums over fixed 64-row chunks made
 * in the (parallel) row pass, combined in chunk order: bitwise identical for
 * any thread count.
 * MI_ERR_NOMEM if the partial-sum scratch cannot be allocated. */
mi_status mi_layer_norm_backward(const float *dy, const float *x, const float *w,
                                 const float *scale, int64_t rows, int64_t d,
                                 float *dx, float *dw, float *db);
mi_status mi_rms_norm_backward(const float *dy, const float *x, const float *w,
                               const float *scale, int64_t rows, int64_t d,
                               float *dx, float *dw);

#endif
