/* arena.h - internal to csrc/model/: the buffer slots of the per-call
 * activation arena, shared by the planner (arena.c), the hook point table
 * (hook_points.c) and the forward pass (transformer.c).
 *
 * One allocation per forward call holds every activation at an offset the
 * plan fixes before the pass: buffers whose hook point is cached or hooked get
 * their own slot (so the NumPy views handed out stay valid); the rest share one
 * scratch slot per kind, reused from layer to layer, so a plain forward needs
 * the logits plus about one layer whatever the depth.
 */
#ifndef MI_MODEL_ARENA_H
#define MI_MODEL_ARENA_H

#include <stddef.h>
#include <stdint.h>

#include "model/transformer.h"

#define ABSENT ((size_t)-1)
#define ALIGN_FLOATS 16   /* 64 bytes */

static inline size_t align_floats(size_t n) { return (n + ALIGN_FLOATS - 1) & ~(size_t)(ALIGN_FLOATS - 1); }
static inline int has_norm_affine(mi_norm_type t) { return t == MI_NORM_LN || t == MI_NORM_RMS; }
static inline int has_norm_bias(mi_norm_type t) { return t == MI_NORM_LN; }
/* Attention reads per-head inputs [BT,H,D] (TransformerLens's 4-D attn input). */
static inline int head_inputs(const mi_tf_spec *s) { return s->use_split_qkv_input || s->use_attn_in; }

/* Buffer slots: 0 embed, 1 pos_embed, 2+i resid[i] (i in [0, L]: resid_pre of
 * layer i = resid_post of layer i-1, one tensor as in TransformerLens), then
 * per layer NB kinds, then the final three. q, k, v share the qkv buffer;
 * unembed.hook_in is the final norm's output (or resid[L] with no norm). */
enum { B_LN1_SCALE, B_LN1_NORM, B_LN1_OUT, B_QKV, B_SCORES, B_PATTERN, B_Z, B_RESULT, B_ATTN_OUT,
       B_RESID_MID, B_MLP_IN, B_LN2_SCALE, B_LN2_NORM, B_LN2_OUT, B_PRE, B_PRE_LINEAR, B_MID,
       B_MLN_SCALE, B_MLN_NORM, B_POST, B_MLP_OUT,
       /* per-head attention inputs [BT,H,D] (use_attn_in / use_split_qkv_input)
        * and the ln1 runs on the q and k inputs; B_LN1_* then hold the run
        * on the v input, the last one, which TransformerLens's cache keeps */
       B_ATTN_IN, B_Q_IN, B_K_IN, B_V_IN, B_LN1Q_SCALE, B_LN1Q_NORM, B_LN1Q_OUT,
       B_LN1K_SCALE, B_LN1K_NORM, B_LN1K_OUT, NB };
/* *_NORM is TransformerLens's hook_normalized, x / scale before the affine
 * weights; *_OUT = normalized * w + b is what the next layer reads (only for
 * LN and RMS, which have weights). */
enum { BF_LNF_SCALE, BF_LNF_NORM, BF_LNF_OUT, BF_LOGITS, NBF };

static inline int n_bufs(const mi_tf_spec *s) { return 3 + (int)s->n_layers * (1 + NB) + NBF; }
static inline int buf_resid(int i) { return 2 + i; }
static inline int buf_layer(const mi_tf_spec *s, int l, int kind) { return 3 + (int)s->n_layers + l * NB + kind; }
static inline int buf_final(const mi_tf_spec *s, int kind) { return 3 + (int)s->n_layers * (1 + NB) + kind; }

/* Attention runs fused (mi_attn_fused) in layer with first point p0 unless a
 * hook needs scores or pattern between the steps; then the scores and
 * pattern buffers exist only when cached. */
static inline int attn_fusable(const uint8_t *flags, int p0)
{
    return !(flags[p0 + MI_P_SCORES] & MI_HOOK_FIRES) && !(flags[p0 + MI_P_PATTERN] & MI_HOOK_FIRES);
}

/* Start of buffer b in arena (NULL when this call does not use it). */
float *mi_tf_buf_ptr(const mi_tf_plan *plan, float *arena, int b);

#endif
