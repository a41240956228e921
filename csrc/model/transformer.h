/* transformer.h - one decoder/encoder transformer spec, its parameter blob and
 * a forward pass with TransformerLens hook points.
 *
 * Shape legend: B batch, T positions, D d_model, H heads, Dh d_head,
 * M d_mlp, V d_vocab, Vo d_vocab_out, L n_layers.
 *
 * Parameters live in ONE blob, each tensor 64-byte aligned, in the layout the
 * forward wants (float32; with bf16_weights the MI_BF16_*_PARAMS tensors are
 * bfloat16 and take half the bytes) (a gradient blob of the same layout can mirror it);
 * the tensors, their shapes and when a spec has them: MI_GLOBAL_PARAMS and
 * MI_LAYER_PARAMS in model_tables.h. Tensors a spec does not use are absent.
 *
 * Hook points: every named activation in TransformerLens order, name and shape
 * (MI_*_POINTS in model_tables.h). Point ids: the start points, then per layer
 * MI_P_* offsets, then the final-norm/unembed points. A spec leaves some ids
 * absent.
 * Per call each point has flags: MI_HOOK_CACHE keeps the activation in its own
 * arena slot (returned as a view); MI_HOOK_CALLBACK calls the hook function
 * (and also keeps the slot, so what a hook sees stays valid). Points with
 * neither share scratch slots across layers, so a plain forward stays lean.
 */
#ifndef MI_TRANSFORMER_H
#define MI_TRANSFORMER_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "kernels/rotary.h"
#include "model/model_tables.h"

typedef enum { MI_NORM_NONE, MI_NORM_LN, MI_NORM_LNPRE, MI_NORM_RMS, MI_NORM_RMSPRE } mi_norm_type;

#define MI_TF_MAX_LAYERS_LOCAL 256   /* local (sliding-window) layers are described below this */

typedef struct {
    int64_t n_layers, d_model, n_heads, d_head, d_mlp, d_vocab, d_vocab_out, n_ctx;
    mi_norm_type norm;
    float eps;
    int act;              /* mi_activation (kernels/activation.h) or MI_TF_ACT_SOLU_LN */
    int gated_mlp;
    int attn_only;
    int causal;           /* 0: bidirectional */
    int use_attn_result;  /* hook_result [B,T,H,D] */
    int use_hook_mlp_in;  /* hook_mlp_in: a copy of resid_mid before ln2 */
    int pos_embed;        /* learned absolute positions ("standard") */
    float attn_scale;     /* scores are q.k / attn_scale */
    /* TransformerLens's per-head attention inputs [B,T,H,D]: hook_attn_in
     * (use_attn_in) and hook_q/k/v_input (use_split_qkv_input). With either,
     * ln1 runs three times (on the q, k and v inputs, each [B,T,H,D], firing
     * its hook points each time) and q/k/v come from per-head products. */
    int use_split_qkv_input;
    int use_attn_in;
    int no_head;          /* no final norm, no unembedding (REVE's encoder): the output of a
                           * full pass is the residual stream after the last block */
    int bf16_weights;     /* the MI_BF16_*_PARAMS tensors stored as bfloat16 (model_tables.h);
                           * activations, accumulation and every other tensor stay float32 */
    /* Model families beyond GPT-2 (zero: off). */
    int64_t n_kv_heads;   /* key/value heads (grouped-query attention); 0 or n_heads: one
                           * per query head. Query head h reads kv head h / (H / Hkv). */
    int rotary;           /* rotary position embeddings on q and k (no learned positions) */
    mi_rotary_cfg rope;   /* rotary_dim, pairing, base, Llama-3 scaling (kernels/rotary.h) */
    int parallel_attn_mlp;/* resid_post = resid_pre + attn_out + mlp(ln2(resid_pre)) */
    /* Gemma 2 (TransformerLens's use_normalization_before_and_after,
     * attn_scores_soft_cap, output_logits_soft_cap, use_local_attn with
     * window_size and attn_types). 0 everywhere: off. */
    int post_norms;       /* RMSNorms with weights (ln1_post, ln2_post, eps as the others) on
                           * the attention and MLP outputs before each residual add:
                           * hook_attn_out / hook_mlp_out are their outputs */
    float attn_softcap;   /* attention scores = cap * tanh(scores / cap) before the mask */
    float logit_softcap;  /* output = cap * tanh(logits / cap); unembed.hook_out stays uncapped */
    int64_t window;       /* sliding window of the local layers (attention.h), > 0 with any */
    uint64_t local_layers[MI_TF_MAX_LAYERS_LOCAL / 64];   /* bit l: layer l is local */
} mi_tf_spec;

/* Key/value heads of the spec (n_heads without grouped-query attention). */
static inline int64_t mi_tf_kv_heads(const mi_tf_spec *s)
{
    return s->n_kv_heads > 0 ? s->n_kv_heads : s->n_heads;
}

/* Layer l attends through the sliding window. */
static inline int mi_tf_layer_local(const mi_tf_spec *s, int64_t l)
{
    return l >= 0 && l < MI_TF_MAX_LAYERS_LOCAL && ((s->local_layers[l / 64] >> (l % 64)) & 1u);
}

/* SoLU then a LayerNorm over d_mlp (TransformerLens "solu_ln"): mid = pre *
 * softmax(pre); post = LN(mid), affine (mlp.ln.w/b) when the model's norm is LN,
 * else LNPre. */
#define MI_TF_ACT_SOLU_LN 100

/* Hook point ids (model_tables.h): MI_PS_* for the start points, then per layer
 * MI_P_* offsets, then MI_PF_* for the final points. */
#define MI_PS_ROW(id, ...) MI_PS_##id,
#define MI_P_ROW(id, ...) MI_P_##id,
#define MI_PF_ROW(id, ...) MI_PF_##id,
enum { MI_START_POINTS(MI_PS_ROW) MI_PS_COUNT };
enum { MI_LAYER_POINTS(MI_P_ROW) MI_P_PER_LAYER };
enum { MI_FINAL_POINTS(MI_PF_ROW) MI_PF_COUNT };
#undef MI_PS_ROW
#undef MI_P_ROW
#undef MI_PF_ROW

/* The id of per-layer point k of layer l, and of final point k. */
static inline int mi_tf_layer_point(int l, int k) { return MI_PS_COUNT + l * MI_P_PER_LAYER + k; }
static inline int mi_tf_final_point(const mi_tf_spec *s, int k)
{
    return MI_PS_COUNT + (int)s->n_layers * MI_P_PER_LAYER + k;
}

/* The spec's MI_F_* features (model_tables.h). */
unsigned mi_tf_features(const mi_tf_spec *s);
static inline int mi_tf_applies(unsigned when, unsigned features) { return (when & ~features) == 0; }

#define MI_HOOK_CACHE 1
#define MI_HOOK_CALLBACK 2
/* a callback whose view is valid only until the same kind of buffer is written
 * again (the next layer): no slot of its own, so hooks that only look (or edit
 * before the layer reads the buffer) cost no arena memory */
#define MI_HOOK_TRANSIENT 4
/* a hook function runs at the point (with or without a slot of its own) */
#define MI_HOOK_FIRES (MI_HOOK_CALLBACK | MI_HOOK_TRANSIENT)

/* Parameter ids (model_tables.h): MI_W_* per layer (layer_off), MI_G_* global
 * (global_off). */
#define MI_W_ROW(id, ...) MI_W_##id,
#define MI_G_ROW(id, ...) MI_G_##id,
enum { MI_LAYER_PARAMS(MI_W_ROW) MI_W_PER_LAYER };
enum { MI_GLOBAL_PARAMS(MI_G_ROW) MI_G_COUNT };
#undef MI_W_ROW
#undef MI_G_ROW

typedef struct {
    char name[48];
    size_t offset;        /* floats (4-byte units) from the blob start */
    int ndim;
    int64_t shape[4];
    int bf16;             /* elements are bfloat16 (uint16 bit patterns), not float32 */
    void *data;           /* where the tensor lives when not in the blob (a loader's
                             mmap of a checkpoint); NULL: params + offset */
    int trans;            /* data holds the transpose: the tensor as a [rest, last axis]
                             matrix stored [last axis, rest] (a Hugging Face Linear
                             weight [out, in] read in place); external bfloat16 only */
} mi_tf_param;

typedef struct {
    mi_tf_spec spec;
    float *params;        /* the blob (not owned here: the binding owns it) */
    size_t n_params;      /* floats in the blob, padding included */
    mi_tf_param *table;   /* every tensor of the blob */
    int n_table;
    /* per-layer and global offsets into params, in floats (SIZE_MAX: absent) */
    size_t *layer_off;    /* [L][MI_W_PER_LAYER] */
    size_t global_off[MI_G_COUNT];
    int n_external;       /* table entries whose data points outside the blob */
    int tied_unembed;     /* logits = x @ W_E^T (HF's tied lm_head); W_U is not read */
} mi_transformer;

/* A weight as the forward's products read it (model/linear.h): its memory and
 * its element type. */
typedef struct {
    const void *data;     /* NULL: the tensor is absent */
    int bf16;             /* uint16 bfloat16 bit patterns; else float32 */
    int64_t trans_ld;     /* 0: the internal layout; else the tensor, a [trans_ld, last
                             axis] matrix, is stored transposed [last axis, trans_ld]
                             (mi_tf_param.trans) */
} mi_tf_weight;
/* Offsets of layer l's fused q/k/v weight [D, H + 2 Hkv, Dh] and bias (the
 * MHA or the grouped-query row of the table, whichever the spec has). */
static inline void mi_tf_qkv_offsets(const mi_transformer *m, int l, size_t *w, size_t *b)
{
    const size_t *o = m->layer_off + (size_t)l * MI_W_PER_LAYER;
    int g = m->spec.n_kv_heads > 0 && m->spec.n_kv_heads != m->spec.n_heads;
    *w = o[g ? MI_W_QKV_G : MI_W_QKV];
    *b = o[g ? MI_W_B_QKV_G : MI_W_B_QKV];
}

/* Check the spec and lay out the blob (sets n_params, table, offsets; params
 * stays NULL for the caller to allocate with mi_calloc(n_params floats)).
 * Every size is checked: a tensor or blob whose float count would pass
 * PTRDIFF_MAX / sizeof(float) fails naming the tensor and its axes, so
 * n_params * sizeof(float) cannot wrap. */
mi_status mi_tf_init(mi_transformer *m, const mi_tf_spec *spec);
void mi_tf_free(mi_transformer *m);

/* Where the tensor at blob offset `off` lives: table[i].data when a loader
 * pointed it elsewhere (zero-copy load), else params + off; NULL for ABSENT.
 * The forward reads every weight through this. The backward reads the blob
 * directly, so the binding (model_py.c: mi_py_model_tf) refuses to train a
 * model with n_external or tied_unembed set. For float32 tensors only: a
 * bfloat16 one is read through mi_tf_weight_at. */
float *mi_tf_tensor(const mi_transformer *m, size_t off);

/* The tensor at blob offset `off` with its element type (any tensor). */
mi_tf_weight mi_tf_weight_at(const mi_transformer *m, size_t off);

/* Hook points. mi_tf_point_present: the spec's pass writes the point (it can
 * be cached and hooked). */
int mi_tf_n_points(const mi_tf_spec *s);
int mi_tf_point_present(const mi_tf_spec *s, int point);
/* The TransformerLens name of `point` into buf (64 bytes); its layer or -1. */
int mi_tf_point_name(const mi_tf_spec *s, int point, char *buf);
/* The ids of the points TransformerLens's module tree has for this spec (its
 * hook_dict; some never fire, e.g. hook_result without use_attn_result), in
 * its module order, into ids (mi_tf_n_points entries at most); returns their
 * count. */
int mi_tf_module_order(const mi_tf_spec *s, int *ids);

/* One row of the hook point table, for introspection: its TransformerLens
 * name (per-layer rows without the "blocks.{l}." prefix), scope ("start",
 * "layer", "final") and view axes (names as TransformerLens's docs; an axis
 * named "n_heads?" exists only with per-head attention inputs). */
typedef struct {
    const char *name, *scope;
    int ndim;
    const char *axes[5];
} mi_tf_point_info;
#define MI_TF_POINT_ROWS (MI_PS_COUNT + MI_P_PER_LAYER + MI_PF_COUNT)
void mi_tf_point_table(mi_tf_point_info rows[MI_TF_POINT_ROWS]);

typedef struct {
    float *data;
    int ndim;
    int64_t shape[4];
    int64_t strides[4];   /* in elements */
} mi_tensor_view;

/* Called at CALLBACK points; a non-MI_OK return aborts the pass with it. */
typedef mi_status (*mi_hook_fn)(void *ctx, int point, const mi_tensor_view *view);

/* The activation arena layout of one call: offsets (floats) per buffer. */
typedef struct {
    int64_t batch, seq;
    int64_t past;         /* positions a KV cache holds before this call's (keys: past + seq) */
    int start_layer;      /* -1: from tokens (embed); else the residual entering this block is given */
    int stop_layer;       /* layers run: [start, stop_layer); == L runs the unembed too */
    size_t n_floats;      /* arena size */
    size_t *buf_off;      /* per buffer slot */
    int n_bufs;
} mi_tf_plan;

/* Plan the arena for a [batch, seq] call (sizes checked as mi_tf_init's, so
 * n_floats * sizeof(float) cannot wrap) with per-point `flags` (n_points
 * bytes); start_layer -1 (tokens) or in [0, stop_layer] (residual input, as
 * TransformerLens's start_at_layer and REVE's front end); stop_layer in [0, L]
 * (L: full pass with logits). */
mi_status mi_tf_plan_call(const mi_transformer *m, int64_t batch, int64_t seq, int start_layer,
                          int stop_layer,
                          const uint8_t *flags, mi_tf_plan *plan);
/* The same for a call that attends over n_past cached positions too
 * (mi_tf_forward_kv): scores and pattern are [B, H, T, n_past + T]. */
mi_status mi_tf_plan_call_kv(const mi_transformer *m, int64_t batch, int64_t seq, int64_t n_past,
                             int start_layer, int stop_layer, const uint8_t *flags,
                             mi_tf_plan *plan);
void mi_tf_plan_free(mi_tf_plan *plan);

/* The view of `point` inside `arena` for this plan (0 if the point is absent
 * or past the stop layer). */
int mi_tf_point_view(const mi_transformer *m, const mi_tf_plan *plan, float *arena, int point,
                     mi_tensor_view *v);

/* The residual stream the pass ends with: resid_pre of stop_layer [B,T,D]
 * (stop_layer < L), or logits [B,T,Vo] (soft-capped with a logit softcap). */
float *mi_tf_output(const mi_transformer *m, const mi_tf_plan *plan, float *arena);

/* Forward pass. tokens [B,T] (ids checked against d_vocab) when the plan starts
 * from tokens, else resid_in [B,T,D] enters block start_layer; pos_ids [B,T] or
 * NULL (t); key_mask [B,T] or NULL (1 keeps a key, 0 masks it as padding and
 * zeroes its positional embedding, as TransformerLens). Before each layer the
 * pass calls mi_cancel_point (common/cancel.h) and stops with its status. */
mi_status mi_tf_forward(const mi_transformer *m, const mi_tf_plan *plan, float *arena,
                        const uint8_t *flags, const int64_t *tokens, const float *resid_in,
                        const int64_t *pos_ids,
                        const float *key_mask, mi_hook_fn hook, void *hook_ctx);

/* mi_tf_forward with a key/value cache (model/kv_cache.h; NULL: as mi_tf_forward):
 * the plan comes from mi_tf_plan_call_kv with n_past from mi_kv_prepare (same
 * batch, layers [max(start_layer, 0), stop_layer)). The [B, T] input holds the
 * positions after the cached ones; key_mask [B, T] is their padding mask (kept
 * in the cache for later calls); pos_ids NULL: positions that skip the
 * padding of the whole cached sequence. On success the cache holds the new
 * positions too (unless frozen). */
struct mi_kv_cache;
mi_status mi_tf_forward_kv(const mi_transformer *m, const mi_tf_plan *plan, float *arena,
                           const uint8_t *flags, const int64_t *tokens, const float *resid_in,
                           const int64_t *pos_ids, const float *key_mask,
                           struct mi_kv_cache *kv, mi_hook_fn hook, void *hook_ctx);

#endif
