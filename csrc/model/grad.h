/* grad.h - gradients of a scalar metric of the logits at every hook point
 * (TransformerLens's run_with_cache(incl_bwd=True) and backward hooks).
 *
 * Shape legend: B batch, T positions, Vo d_vocab_out.
 *
 * mi_tf_grad runs, in order:
 *   1. the forward pass (mi_tf_forward with `flags` and the forward hook),
 *      into `arena`, which `plan` must give every present point a slot of its
 *      own (plan it with MI_HOOK_CACHE on every point: the backward reads the
 *      activations through the hook-point views);
 *   2. the metric: `metric_fn(metric_ctx, logits, dlogits, &value)` writes
 *      d value / d logits [B,T,Vo] into the gradient arena's logits slot;
 *   3. the backward pass from the logits to the embeddings into `garena`
 *      (planned as `gplan`): the gradient of point p is the view
 *      mi_tf_point_view(m, gplan, garena, p) (the same shape and strides as
 *      the activation; hook_resid_post of layer l and hook_resid_pre of layer
 *      l+1 share one tensor, as their activations do). Each point's gradient
 *      is complete before `bwd_hook` runs on it (points with MI_HOOK_FIRES in
 *      bwd_flags), in reverse firing order; what the hook leaves in the view
 *      (edited in place or overwritten) is what flows upstream.
 * The per-point steps follow TransformerLens's graph: norms as hook_scale ->
 * hook_normalized -> affine (the gradient of hook_scale flows upstream),
 * attention as hook_attn_scores -> hook_pattern -> hook_z, hook_q/k/v as the
 * parts of the fused qkv gradient, hook_result (use_attn_result) per head.
 * Masked attention entries (causal, padding) have P = 0 and pass no gradient
 * to the scores; their hook_pattern gradient is dz . v as in autograd.
 *
 * grads: NULL skips every parameter gradient (no weight-gradient products);
 * else a blob of the parameter layout to which they ACCUMULATE.
 * Rotary embeddings (hook_rot_q/k: their gradients rotate back into q, k),
 * grouped-query attention (hook_k/v [B,T,Hkv,Dh]) and parallel_attn_mlp blocks
 * are differentiated, and every Gemma 2 / Mistral feature: post norms
 * (attn_out = ln1_post(z @ W_O + b_O), mlp_out = ln2_post(...), with their
 * hook_scale / hook_normalized gradients), attention-score soft-capping (the
 * gradient of hook_attn_scores, which holds the capped scores, goes through the
 * cap's derivative into q and k), logit soft-capping (the metric reads the capped
 * output; unembed.hook_out's gradient is the uncapped logits'), and sliding
 * windows (window-masked entries, like causal and padding ones, pass nothing).
 * Not supported (MI_ERR_VALUE before any work, naming the feature):
 * no_head, use_split_qkv_input
 * / use_attn_in, act_fn solu_ln, n_layers 0, a plan that does not start from
 * tokens or stop after the head; parameter gradients of a model with a tied
 * unembedding or weights outside the blob.
 * Deterministic: bitwise identical for any thread count.
 */
#ifndef MI_GRAD_H
#define MI_GRAD_H

#include <stdint.h>

#include "common/status.h"
#include "model/transformer.h"

/* Writes dlogits (zeroed before the call) and the metric's value; a non-MI_OK
 * return ends the pass with it. */
typedef mi_status (*mi_metric_fn)(void *ctx, const mi_tensor_view *logits, float *dlogits,
                                  double *value);

/* Plan a [B, T] call for mi_tf_grad: `plan` for the activations (`flags`, the
 * forward's hooks and cache, with every present point given a slot of its
 * own: the backward reads them all) and `gplan` for the gradients: a slot of
 * its own for each point with MI_HOOK_CACHE or MI_HOOK_CALLBACK in
 * `bwd_flags`, the rest sharing one scratch slot per kind from layer to
 * layer (their gradients are only needed inside their layer's step). */
mi_status mi_tf_grad_plan(const mi_transformer *m, int64_t B, int64_t T, const uint8_t *flags,
                          const uint8_t *bwd_flags, mi_tf_plan *plan, mi_tf_plan *gplan);

/* Floats of scratch mi_tf_grad needs for a [B, T] call. */
size_t mi_tf_grad_scratch(const mi_transformer *m, int64_t B, int64_t T);

mi_status mi_tf_grad(const mi_transformer *m, const mi_tf_plan *plan, const mi_tf_plan *gplan,
                     float *arena, float *garena,
                     float *scratch, const uint8_t *flags, const uint8_t *bwd_flags,
                     const int64_t *tokens, const int64_t *pos_ids, const float *key_mask,
                     mi_hook_fn fwd_hook, void *fwd_ctx, mi_metric_fn metric_fn, void *metric_ctx,
                     double *value, mi_hook_fn bwd_hook, void *bwd_ctx, float *grads);

#endif
