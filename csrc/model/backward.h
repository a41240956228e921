/* backward.h - loss, forward and backward of the whole transformer (training).
 *
 * Shape legend: B batch, T positions, D d_model, H heads, Dh d_head, M d_mlp,
 * Vo d_vocab_out, BT = B*T rows.
 *
 * mi_tf_loss_backward runs the forward pass keeping every activation (all hook
 * points cached, no callbacks), the mean cross-entropy of logits [B,T,Vo]
 * against targets [B,T] (MI_IGNORE_INDEX = -100 ignores a position), then the
 * backward pass, llm.c style: each gradient step quotes its forward line.
 *
 * grads is a blob with the parameter blob's layout (m->n_params floats);
 * gradients ACCUMULATE into it (+=), as torch's .backward().
 * Errors (checked before any gradient is touched): token or target ids out
 * of range (MI_ERR_INDEX), every target ignored or a non-finite loss
 * (MI_ERR_VALUE: grads are left unchanged), n_layers == 0, T > n_ctx, and
 * act_fn solu_ln (no backward: MI_ERR_VALUE rather than a silent zero).
 * Between layers (forward and backward) the pass calls mi_cancel_point
 * (common/cancel.h): a cancel in the backward half returns its status with
 * grads partly accumulated (the step is void: zero them before the next).
 * Attention backward is O(T^2 Dh) per head (kernels/attention.h).
 * Deterministic: bitwise identical for any thread count (every kernel is).
 */
#ifndef MI_BACKWARD_H
#define MI_BACKWARD_H

#include <stdint.h>

#include "common/status.h"
#include "model/transformer.h"

/* work: a caller-kept workspace of work_floats floats (64-byte aligned), reused
 * across steps so the activations' pages are not faulted in again every call;
 * NULL (or too small) allocates one for this call. */
/* Profile phases: when prof [2 * MI_BWD_N_PHASES] is non-NULL (bench/train.py),
 * the wall seconds of each phase are ADDED to prof[phase] and the process CPU
 * seconds (all threads) to prof[MI_BWD_N_PHASES + phase], summed over layers. */
enum {
    MI_BWD_FORWARD, MI_BWD_LOSS, MI_BWD_UNEMBED, MI_BWD_NORM, MI_BWD_MLP_GEMM, MI_BWD_ACT,
    MI_BWD_ATTN_GEMM, MI_BWD_ATTN_CORE, MI_BWD_BIAS, MI_BWD_EMBED, MI_BWD_N_PHASES
};

/* The name of each profile phase, indexed by MI_BWD_* ("forward", "loss", ...). */
extern const char *const mi_bwd_phase_names[MI_BWD_N_PHASES];

/* pos_ids [B,T] (NULL: t) and key_mask [B,T] (NULL: none; 0 marks a padding
 * key) as mi_tf_forward takes them (TransformerLens's attention_mask): masked
 * keys get P = 0 and so no gradient through attention, and a masked position's
 * zeroed positional embedding gets no gradient. */
mi_status mi_tf_loss_backward(const mi_transformer *m, int64_t batch, int64_t seq,
                              const int64_t *tokens, const int64_t *targets,
                              const int64_t *pos_ids, const float *key_mask,
                              float *grads, float *loss, float *work, size_t work_floats,
                              double *prof);

/* The same step split in two, for a gradient that enters at the logits from
 * outside (PyTorch autograd): mi_tf_train_forward runs the forward of
 * mi_tf_loss_backward into `work` (required, at least mi_tf_backward_workspace
 * floats, else MI_ERR_VALUE) and points *logits [B,T,Vo] into it;
 * mi_tf_logits_backward then ACCUMULATES into grads the parameter gradients of
 * sum(dlogits * logits), reading the activations that forward left in `work`.
 * The caller guarantees that `work` still holds that forward (same model,
 * weights, tokens, pos_ids and key_mask): nothing here can check it. dlogits
 * [B,T,Vo] is d metric / d (the returned, soft-capped) logits. */
mi_status mi_tf_train_forward(const mi_transformer *m, int64_t batch, int64_t seq,
                              const int64_t *tokens, const int64_t *pos_ids, const float *key_mask,
                              float *work, size_t work_floats, const float **logits);
mi_status mi_tf_logits_backward(const mi_transformer *m, int64_t batch, int64_t seq,
                                const int64_t *tokens, const int64_t *pos_ids, const float *key_mask,
                                const float *dlogits, float *grads, float *work, size_t work_floats);

/* Floats of workspace a [batch, seq] call needs (0 with a message on error). */
size_t mi_tf_backward_workspace(const mi_transformer *m, int64_t batch, int64_t seq);

/* The tensor a norm hands on, which the backward of the product after it reads:
 * normalized * w + b written into scratch [rows, d], or normalized itself when the
 * norm has no weight (w NULL; b may be NULL). Shared by the training backward and the
 * hooked-gradient pass (grad.c). */
const float *mi_tf_norm_out(const float *normalized, const float *w, const float *b,
                            int64_t rows, int64_t d, float *scratch);

/* The gradient through a soft-cap y = cap * tanh(x / cap) (Gemma 2's logits and
 * attention scores), written through the forward's output: draw[i] = dcapped[i] *
 * (1 - (capped[i] / cap)^2), and 0 where capped[i] is -inf (a masked score: no
 * gradient crosses the mask). draw may alias dcapped. Shared by the training
 * backward (logits) and the hooked-gradient pass (logits and scores). */
void mi_tf_softcap_backward(float cap, const float *capped, const float *dcapped, float *draw,
                            int64_t n);

#endif
