/* transformer.c - parameter layout, hook points, arena plan and the forward
 * pass of the one transformer spec (contract in transformer.h).
 *
 * The pass is a straight line of kernel calls; between them it "fires" the
 * hook point of the activation just written: one flag test when nothing is
 * registered. Every activation lives in the per-call arena at an offset the
 * plan fixed before the pass, so cached activations are views, not copies.
 */
#include "model/transformer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/memory.h"
#include "kernels/activation.h"
#include "kernels/attention.h"
#include "kernels/gemm.h"
#include "kernels/norm.h"
#include "kernels/softmax.h"

#define ABSENT ((size_t)-1)
#define ALIGN_FLOATS 16   /* 64 bytes */

static size_t align_floats(size_t n) { return (n + ALIGN_FLOATS - 1) & ~(size_t)(ALIGN_FLOATS - 1); }

/* ---------------------------------------------------------------- layout */

static int has_norm_affine(mi_norm_type t) { return t == MI_NORM_LN || t == MI_NORM_RMS; }
static int has_norm_bias(mi_norm_type t) { return t == MI_NORM_LN; }

static size_t add_param(mi_transformer *m, size_t *cursor, const char *name, int ndim,
                        int64_t d0, int64_t d1, int64_t d2, int64_t d3)
{
    mi_tf_param *p = &m->table[m->n_table++];
    snprintf(p->name, sizeof p->name, "%s", name);
    p->ndim = ndim;
    int64_t dims[4] = {d0, d1, d2, d3};
    size_t n = 1;
    for (int i = 0; i < 4; i++) {
        p->shape[i] = i < ndim ? dims[i] : 1;
        if (i < ndim) n *= (size_t)dims[i];
    }
    p->offset = *cursor;
    *cursor += align_floats(n);
    return p->offset;
}

mi_status mi_tf_init(mi_transformer *m, const mi_tf_spec *s)
{
    memset(m, 0, sizeof *m);
    if (s->n_layers < 0 || s->d_model <= 0 || s->n_heads <= 0 || s->d_head <= 0
        || s->d_vocab <= 0 || s->d_vocab_out <= 0 || s->n_ctx <= 0
        || (!s->attn_only && s->d_mlp <= 0))
        return mi_fail(MI_ERR_VALUE, "transformer spec: sizes must be positive (n_layers=%ld "
                       "d_model=%ld n_heads=%ld d_head=%ld d_mlp=%ld d_vocab=%ld n_ctx=%ld)",
                       (long)s->n_layers, (long)s->d_model, (long)s->n_heads, (long)s->d_head,
                       (long)s->d_mlp, (long)s->d_vocab, (long)s->n_ctx);
    if (s->norm != MI_NORM_NONE && !(s->eps > 0.0f))
        return mi_fail(MI_ERR_VALUE, "transformer spec: eps must be > 0, got %g", (double)s->eps);
    if (!(s->attn_scale > 0.0f))
        return mi_fail(MI_ERR_VALUE, "transformer spec: attn_scale must be > 0, got %g",
                       (double)s->attn_scale);
    if (s->act == MI_TF_ACT_SOLU_LN && s->gated_mlp)
        return mi_fail(MI_ERR_VALUE, "transformer spec: solu_ln with a gated MLP is not supported");
    if ((s->act < MI_ACT_RELU || s->act > MI_ACT_SILU) && s->act != MI_TF_ACT_SOLU_LN)
        return mi_fail(MI_ERR_VALUE, "transformer spec: unknown activation %d", s->act);
    m->spec = *s;
    int64_t L = s->n_layers, D = s->d_model, H = s->n_heads, Dh = s->d_head, M = s->d_mlp;
    m->table = calloc((size_t)(8 + 16 * L), sizeof(mi_tf_param));
    m->layer_off = malloc(sizeof(size_t) * (size_t)(L ? L : 1) * MI_W_PER_LAYER);
    if (!m->table || !m->layer_off) { mi_tf_free(m); return mi_fail(MI_ERR_NOMEM, "transformer: out of memory"); }
    for (int i = 0; i < 6; i++) m->global_off[i] = ABSENT;
    for (int64_t i = 0; i < L * MI_W_PER_LAYER; i++) m->layer_off[i] = ABSENT;
    size_t c = 0;
    char name[48];
    m->global_off[MI_G_W_E] = add_param(m, &c, "embed.W_E", 2, s->d_vocab, D, 0, 0);
    if (s->pos_embed) m->global_off[MI_G_W_POS] = add_param(m, &c, "pos_embed.W_pos", 2, s->n_ctx, D, 0, 0);
    for (int64_t l = 0; l < L; l++) {
        size_t *o = m->layer_off + l * MI_W_PER_LAYER;
#define P(slot, nm, nd, a, b, cc, d) do { snprintf(name, sizeof name, "blocks.%ld." nm, (long)l); \
            o[slot] = add_param(m, &c, name, nd, a, b, cc, d); } while (0)
        if (has_norm_affine(s->norm)) P(MI_W_LN1_W, "ln1.w", 1, D, 0, 0, 0);
        if (has_norm_bias(s->norm)) P(MI_W_LN1_B, "ln1.b", 1, D, 0, 0, 0);
        P(MI_W_QKV, "attn.W_qkv", 4, D, 3, H, Dh);
        P(MI_W_B_QKV, "attn.b_qkv", 3, 3, H, Dh, 0);
        P(MI_W_O, "attn.W_O", 3, H, Dh, D, 0);
        P(MI_W_B_O, "attn.b_O", 1, D, 0, 0, 0);
        if (!s->attn_only) {
            if (has_norm_affine(s->norm)) P(MI_W_LN2_W, "ln2.w", 1, D, 0, 0, 0);
            if (has_norm_bias(s->norm)) P(MI_W_LN2_B, "ln2.b", 1, D, 0, 0, 0);
            P(MI_W_IN, "mlp.W_in", 2, D, M, 0, 0);
            P(MI_W_B_IN, "mlp.b_in", 1, M, 0, 0, 0);
            if (s->gated_mlp) P(MI_W_GATE, "mlp.W_gate", 2, D, M, 0, 0);
            if (s->act == MI_TF_ACT_SOLU_LN && s->norm == MI_NORM_LN) {
                P(MI_W_MLN_W, "mlp.ln.w", 1, M, 0, 0, 0);
                P(MI_W_MLN_B, "mlp.ln.b", 1, M, 0, 0, 0);
            }
            P(MI_W_OUT, "mlp.W_out", 2, M, D, 0, 0);
            P(MI_W_B_OUT, "mlp.b_out", 1, D, 0, 0, 0);
        }
#undef P
    }
    if (has_norm_affine(s->norm)) m->global_off[MI_G_LNF_W] = add_param(m, &c, "ln_final.w", 1, D, 0, 0, 0);
    if (has_norm_bias(s->norm)) m->global_off[MI_G_LNF_B] = add_param(m, &c, "ln_final.b", 1, D, 0, 0, 0);
    m->global_off[MI_G_W_U] = add_param(m, &c, "unembed.W_U", 2, D, s->d_vocab_out, 0, 0);
    m->global_off[MI_G_B_U] = add_param(m, &c, "unembed.b_U", 1, s->d_vocab_out, 0, 0, 0);
    m->n_params = c;
    return MI_OK;
}

void mi_tf_free(mi_transformer *m)
{
    free(m->table);
    free(m->layer_off);
    m->table = NULL;
    m->layer_off = NULL;
}

/* ----------------------------------------------------------- hook points */

int mi_tf_n_points(const mi_tf_spec *s) { return 2 + (int)s->n_layers * MI_P_PER_LAYER + MI_PF_COUNT; }

int mi_tf_point_present(const mi_tf_spec *s, int p)
{
    int n = mi_tf_n_points(s);
    if (p < 0 || p >= n) return 0;
    if (p == 0) return 1;
    if (p == 1) return s->pos_embed;
    int norm = s->norm != MI_NORM_NONE;
    int first_final = 2 + (int)s->n_layers * MI_P_PER_LAYER;
    if (p >= first_final) {
        int k = p - first_final;
        if (k == MI_PF_LNF_SCALE || k == MI_PF_LNF_NORM) return norm;
        return 1;
    }
    switch ((p - 2) % MI_P_PER_LAYER) {
    case MI_P_LN1_SCALE: case MI_P_LN1_NORM: return norm;
    case MI_P_RESULT: return s->use_attn_result;
    case MI_P_RESID_MID: case MI_P_MLP_PRE: case MI_P_MLP_POST: case MI_P_MLP_OUT: return !s->attn_only;
    case MI_P_LN2_SCALE: case MI_P_LN2_NORM: return norm && !s->attn_only;
    case MI_P_MLP_IN: return s->use_hook_mlp_in && !s->attn_only;
    case MI_P_MLP_PRE_LINEAR: return s->gated_mlp && !s->attn_only;
    case MI_P_MLP_MID: case MI_P_MLP_LN_SCALE: case MI_P_MLP_LN_NORM:
        return s->act == MI_TF_ACT_SOLU_LN && !s->attn_only;
    default: return 1;
    }
}

static const char *layer_point_names[MI_P_PER_LAYER] = {
    "hook_resid_pre", "ln1.hook_scale", "ln1.hook_normalized", "attn.hook_q", "attn.hook_k",
    "attn.hook_v", "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z",
    "attn.hook_result", "hook_attn_out", "hook_resid_mid", "hook_mlp_in", "ln2.hook_scale",
    "ln2.hook_normalized", "mlp.hook_pre", "mlp.hook_pre_linear", "mlp.hook_mid",
    "mlp.ln.hook_scale", "mlp.ln.hook_normalized", "mlp.hook_post",
    "hook_mlp_out", "hook_resid_post",
};
static const char *final_point_names[MI_PF_COUNT] = {
    "ln_final.hook_scale", "ln_final.hook_normalized", "unembed.hook_in", "unembed.hook_out",
};

int mi_tf_point_name(const mi_tf_spec *s, int p, char *buf)
{
    int first_final = 2 + (int)s->n_layers * MI_P_PER_LAYER;
    if (p == 0) { snprintf(buf, 64, "hook_embed"); return -1; }
    if (p == 1) { snprintf(buf, 64, "hook_pos_embed"); return -1; }
    if (p >= first_final) { snprintf(buf, 64, "%s", final_point_names[p - first_final]); return -1; }
    int layer = (p - 2) / MI_P_PER_LAYER;
    snprintf(buf, 64, "blocks.%d.%s", layer, layer_point_names[(p - 2) % MI_P_PER_LAYER]);
    return layer;
}

/* ---------------------------------------------------------- arena buffers
 * Buffer slots: 0 embed, 1 pos_embed, 2+i resid[i] (i in [0, L]: resid_pre of
 * layer i = resid_post of layer i-1, one tensor as in TransformerLens), then
 * per layer NB kinds, then the final three. q, k, v share the qkv buffer;
 * unembed.hook_in is ln_final.hook_normalized (or resid[L] with no norm). */
enum { B_LN1_SCALE, B_LN1_NORM, B_LN1_OUT, B_QKV, B_SCORES, B_PATTERN, B_Z, B_RESULT, B_ATTN_OUT,
       B_RESID_MID, B_MLP_IN, B_LN2_SCALE, B_LN2_NORM, B_LN2_OUT, B_PRE, B_PRE_LINEAR, B_MID,
       B_MLN_SCALE, B_MLN_NORM, B_POST, B_MLP_OUT, NB };
/* *_NORM is TransformerLens's hook_normalized, x / scale before the affine
 * weights; *_OUT = normalized * w + b is what the next layer reads (only for
 * LN and RMS, which have weights). */
enum { BF_LNF_SCALE, BF_LNF_NORM, BF_LNF_OUT, BF_LOGITS, NBF };

static int n_bufs(const mi_tf_spec *s) { return 3 + (int)s->n_layers * (1 + NB) + NBF; }
static int buf_resid(int i) { return 2 + i; }
static int buf_layer(const mi_tf_spec *s, int l, int kind) { return 3 + (int)s->n_layers + l * NB + kind; }
static int buf_final(const mi_tf_spec *s, int kind) { return 3 + (int)s->n_layers * (1 + NB) + kind; }

/* Buffer holding `point`. */
static int point_buf(const mi_tf_spec *s, int p)
{
    int first_final = 2 + (int)s->n_layers * MI_P_PER_LAYER;
    if (p < 2) return p;
    if (p >= first_final) {
        switch (p - first_final) {
        case MI_PF_LNF_SCALE: return buf_final(s, BF_LNF_SCALE);
        case MI_PF_LNF_NORM: return buf_final(s, BF_LNF_NORM);
        case MI_PF_UNEMBED_IN:
            if (has_norm_affine(s->norm)) return buf_final(s, BF_LNF_OUT);
            return s->norm != MI_NORM_NONE ? buf_final(s, BF_LNF_NORM) : buf_resid((int)s->n_layers);
        default: return buf_final(s, BF_LOGITS);
        }
    }
    int l = (p - 2) / MI_P_PER_LAYER;
    static const int kind_of[MI_P_PER_LAYER] = {
        -1, B_LN1_SCALE, B_LN1_NORM, B_QKV, B_QKV, B_QKV, B_SCORES, B_PATTERN, B_Z, B_RESULT,
        B_ATTN_OUT, B_RESID_MID, B_MLP_IN, B_LN2_SCALE, B_LN2_NORM, B_PRE, B_PRE_LINEAR, B_MID,
        B_MLN_SCALE, B_MLN_NORM, B_POST, B_MLP_OUT, -2,
    };
    int k = kind_of[(p - 2) % MI_P_PER_LAYER];
    if (k == -1) return buf_resid(l);
    if (k == -2) return buf_resid(l + 1);
    return buf_layer(s, l, k);
}

static size_t layer_buf_floats(const mi_tf_spec *s, int kind, size_t BT, int64_t T)
{
    size_t D = s->d_model, H = s->n_heads, Dh = s->d_head, M = s->d_mlp;
    switch (kind) {
    case B_LN1_SCALE: case B_LN2_SCALE: case B_MLN_SCALE: return BT;
    case B_QKV: return BT * 3 * H * Dh;
    case B_SCORES: case B_PATTERN: return BT * H * (size_t)T;
    case B_Z: return BT * H * Dh;
    case B_RESULT: return BT * H * D;
    case B_PRE: case B_PRE_LINEAR: case B_POST: case B_MID: case B_MLN_NORM: return BT * M;
    default: return BT * D;
    }
}

static int layer_buf_needed(const mi_tf_spec *s, int kind)
{
    int norm = s->norm != MI_NORM_NONE, mlp = !s->attn_only;
    switch (kind) {
    case B_LN1_SCALE: case B_LN1_NORM: return norm;
    case B_LN1_OUT: return has_norm_affine(s->norm);
    case B_LN2_OUT: return mlp && has_norm_affine(s->norm);
    case B_RESULT: return s->use_attn_result;
    case B_RESID_MID: case B_PRE: case B_POST: case B_MLP_OUT: return mlp;
    case B_MLP_IN: return mlp && s->use_hook_mlp_in;
    case B_LN2_SCALE: case B_LN2_NORM: return mlp && norm;
    case B_PRE_LINEAR: return mlp && s->gated_mlp;
    case B_MID: case B_MLN_SCALE: case B_MLN_NORM: return mlp && s->act == MI_TF_ACT_SOLU_LN;
    default: return 1;
    }
}

mi_status mi_tf_plan_call(const mi_transformer *m, int64_t B, int64_t T, int start_layer, int stop_layer,
                          const uint8_t *flags, mi_tf_plan *plan)
{
    const mi_tf_spec *s = &m->spec;
    memset(plan, 0, sizeof *plan);
    if (B <= 0 || T <= 0)
        return mi_fail(MI_ERR_VALUE, "tokens: batch and position counts must be positive, got "
                       "[%ld, %ld]", (long)B, (long)T);
    if (T > s->n_ctx)
        return mi_fail(MI_ERR_VALUE, "tokens: sequence length %ld exceeds n_ctx %ld",
                       (long)T, (long)s->n_ctx);
    if (stop_layer < 0 || stop_layer > s->n_layers)
        return mi_fail(MI_ERR_VALUE, "stop_at_layer: %d is outside [0, n_layers=%ld]",
                       stop_layer, (long)s->n_layers);
    if (start_layer < -1 || start_layer > stop_layer)
        return mi_fail(MI_ERR_VALUE, "start_at_layer: %d is outside [0, stop layer %d]",
                       start_layer, stop_layer);
    int first = start_layer < 0 ? 0 : start_layer;
    int nb = n_bufs(s), np = mi_tf_n_points(s);
    plan->batch = B;
    plan->seq = T;
    plan->start_layer = start_layer;
    plan->stop_layer = stop_layer;
    plan->n_bufs = nb;
    plan->buf_off = malloc(sizeof(size_t) * (size_t)nb);
    uint8_t *kept = calloc((size_t)nb, 1);
    size_t *sizes = calloc((size_t)nb, sizeof(size_t));
    if (!plan->buf_off || !kept || !sizes) {
        free(kept); free(sizes); mi_tf_plan_free(plan);
        return mi_fail(MI_ERR_NOMEM, "transformer: out of memory planning the arena");
    }
    size_t BT = (size_t)(B * T), D = (size_t)s->d_model;
    /* which buffers this call uses, and their sizes */
    sizes[0] = start_layer < 0 ? BT * D : 0;
    sizes[1] = start_layer < 0 && s->pos_embed ? BT * D : 0;
    for (int i = first; i <= stop_layer; i++) sizes[buf_resid(i)] = BT * D;
    for (int l = first; l < stop_layer; l++)
        for (int k = 0; k < NB; k++)
            if (layer_buf_needed(s, k)) sizes[buf_layer(s, l, k)] = layer_buf_floats(s, k, BT, T);
    if (stop_layer == s->n_layers) {
        if (s->norm != MI_NORM_NONE) {
            sizes[buf_final(s, BF_LNF_SCALE)] = BT;
            sizes[buf_final(s, BF_LNF_NORM)] = BT * D;
            if (has_norm_affine(s->norm)) sizes[buf_final(s, BF_LNF_OUT)] = BT * D;
        }
        sizes[buf_final(s, BF_LOGITS)] = BT * (size_t)s->d_vocab_out;
        kept[buf_final(s, BF_LOGITS)] = 1;   /* the output */
    } else {
        kept[buf_resid(stop_layer)] = 1;     /* the output */
    }
    for (int p = 0; p < np; p++)
        if (flags[p] && mi_tf_point_present(s, p)) kept[point_buf(s, p)] = 1;
    /* kept buffers get their own slots; the rest share one scratch slot per
     * kind (resid alternates between two), reused from layer to layer */
    size_t cur = 0;
    for (int b = 0; b < nb; b++) {
        plan->buf_off[b] = ABSENT;
        if (sizes[b] && kept[b]) { plan->buf_off[b] = cur; cur += align_floats(sizes[b]); }
    }
    size_t scratch_resid[2] = {ABSENT, ABSENT}, scratch_kind[NB];
    for (int k = 0; k < NB; k++) scratch_kind[k] = ABSENT;
    for (int b = 0; b < nb; b++) {
        if (!sizes[b] || kept[b]) continue;
        size_t *slot;
        int first_layer_buf = buf_layer(s, 0, 0);
        if (b >= buf_resid(0) && b < first_layer_buf) slot = &scratch_resid[(b - buf_resid(0)) & 1];
        else if (b >= first_layer_buf && b < buf_final(s, 0)) slot = &scratch_kind[(b - first_layer_buf) % NB];
        else slot = NULL;   /* embed, pos_embed, final: used once */
        if (slot && *slot != ABSENT) { plan->buf_off[b] = *slot; continue; }
        plan->buf_off[b] = cur;
        if (slot) *slot = cur;
        cur += align_floats(sizes[b]);
    }
    plan->n_floats = cur ? cur : ALIGN_FLOATS;
    free(kept);
    free(sizes);
    return MI_OK;
}

void mi_tf_plan_free(mi_tf_plan *plan)
{
    free(plan->buf_off);
    plan->buf_off = NULL;
}

static float *buf_ptr(const mi_tf_plan *plan, float *arena, int b)
{
    return plan->buf_off[b] == ABSENT ? NULL : arena + plan->buf_off[b];
}

static void set_view(mi_tensor_view *v, float *data, int ndim, const int64_t *shape)
{
    v->data = data;
    v->ndim = ndim;
    int64_t st = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        v->shape[i] = shape[i];
        v->strides[i] = st;
        st *= shape[i];
    }
}

int mi_tf_point_view(const mi_transformer *m, const mi_tf_plan *plan, float *arena, int p,
                     mi_tensor_view *v)
{
    const mi_tf_spec *s = &m->spec;
    if (!mi_tf_point_present(s, p)) return 0;
    int first_final = 2 + (int)s->n_layers * MI_P_PER_LAYER;
    if (p >= first_final && plan->stop_layer < s->n_layers) return 0;
    if (p < 2 && plan->start_layer >= 0) return 0;
    if (p >= 2 && p < first_final) {
        int l = (p - 2) / MI_P_PER_LAYER;
        if (l >= plan->stop_layer || l < plan->start_layer) return 0;
    }
    float *data = buf_ptr(plan, arena, point_buf(s, p));
    if (!data) return 0;
    int64_t B = plan->batch, T = plan->seq, D = s->d_model, H = s->n_heads, Dh = s->d_head;
    int k = (p >= 2 && p < first_final) ? (p - 2) % MI_P_PER_LAYER : -1;
    int kf = p >= first_final ? p - first_final : -1;
    if (k == MI_P_Q || k == MI_P_K || k == MI_P_V) {
        int which = k - MI_P_Q;
        v->data = data + which * H * Dh;
        v->ndim = 4;
        v->shape[0] = B; v->shape[1] = T; v->shape[2] = H; v->shape[3] = Dh;
        v->strides[0] = T * 3 * H * Dh; v->strides[1] = 3 * H * Dh; v->strides[2] = Dh; v->strides[3] = 1;
        return 1;
    }
    int64_t shape[4];
    if (k == MI_P_LN1_SCALE || k == MI_P_LN2_SCALE || k == MI_P_MLP_LN_SCALE || kf == MI_PF_LNF_SCALE) {
        shape[0] = B; shape[1] = T; shape[2] = 1; set_view(v, data, 3, shape);
    } else if (k == MI_P_SCORES || k == MI_P_PATTERN) {
        shape[0] = B; shape[1] = H; shape[2] = T; shape[3] = T; set_view(v, data, 4, shape);
    } else if (k == MI_P_Z) {
        shape[0] = B; shape[1] = T; shape[2] = H; shape[3] = Dh; set_view(v, data, 4, shape);
    } else if (k == MI_P_RESULT) {
        shape[0] = B; shape[1] = T; shape[2] = H; shape[3] = D; set_view(v, data, 4, shape);
    } else if (k == MI_P_MLP_PRE || k == MI_P_MLP_PRE_LINEAR || k == MI_P_MLP_POST || k == MI_P_MLP_MID
               || k == MI_P_MLP_LN_NORM) {
        shape[0] = B; shape[1] = T; shape[2] = s->d_mlp; set_view(v, data, 3, shape);
    } else if (kf == MI_PF_UNEMBED_OUT) {
        shape[0] = B; shape[1] = T; shape[2] = s->d_vocab_out; set_view(v, data, 3, shape);
    } else {
        shape[0] = B; shape[1] = T; shape[2] = D; set_view(v, data, 3, shape);
    }
    return 1;
}

float *mi_tf_output(const mi_transformer *m, const mi_tf_plan *plan, float *arena)
{
    if (plan->stop_layer < m->spec.n_layers) return buf_ptr(plan, arena, buf_resid(plan->stop_layer));
    return buf_ptr(plan, arena, buf_final(&m->spec, BF_LOGITS));
}

/* ---------------------------------------------------------------- forward */
typedef struct run_state run_state;
static mi_status run_layers(run_state *rs, int first, const float *key_mask);

struct run_state {
    const mi_transformer *m;
    const mi_tf_plan *plan;
    float *arena;
    const uint8_t *flags;
    mi_hook_fn hook;
    void *ctx;
};

static mi_status fire(run_state *r, int p)
{
    if (!(r->flags[p] & MI_HOOK_CALLBACK) || !r->hook) return MI_OK;
    mi_tensor_view v;
    if (!mi_tf_point_view(r->m, r->plan, r->arena, p, &v)) return MI_OK;
    return r->hook(r->ctx, p, &v);
}

static const float *param(const mi_transformer *m, size_t off)
{
    return off == ABSENT ? NULL : m->params + off;
}

/* y = x / scale (x centred first for LayerNorm) with the given, possibly
 * hooked, scale: TransformerLens divides by the tensor hook_scale returned. */
static void renorm_with_scale(mi_norm_type type, const float *x, const float *scale,
                              int64_t rows, int64_t d, float *y)
{
    int centre = type == MI_NORM_LN || type == MI_NORM_LNPRE;
    #pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * d;
        float *yr = y + r * d;
        double mean = 0.0;
        if (centre) {
            for (int64_t i = 0; i < d; i++) mean += xr[i];
            mean /= (double)d;
        }
        for (int64_t i = 0; i < d; i++) yr[i] = (xr[i] - (float)mean) / scale[r];
    }
}

/* Norm of x [rows, D]: y = x / scale (hook_normalized, TransformerLens fires it
 * before the affine weights), then out = y * w + b when the norm has weights.
 * Returns the tensor the next layer reads. */
static mi_status norm_step(run_state *r, mi_norm_type type, int64_t d, const float *x,
                           const float *w, const float *b, float *y, float *scale, float *out,
                           int p_scale, int p_norm, const float **result)
{
    const mi_tf_spec *s = &r->m->spec;
    int64_t rows = r->plan->batch * r->plan->seq;
    if (type == MI_NORM_RMS || type == MI_NORM_RMSPRE) mi_rms_norm(x, NULL, s->eps, rows, d, y, scale);
    else mi_layer_norm(x, NULL, NULL, s->eps, rows, d, y, scale);
    /* y is always recomputed from the (possibly hooked) scale, so registering
     * a hook on hook_scale, even one that changes nothing, never changes a bit
     * of the result; the kernel provides the scale. */
    MI_TRY(fire(r, p_scale));
    renorm_with_scale(type, x, scale, rows, d, y);
    MI_TRY(fire(r, p_norm));
    *result = y;
    if (w) {
        #pragma omp parallel for schedule(static)
        for (int64_t row = 0; row < rows; row++)
            for (int64_t i = 0; i < d; i++)
                out[row * d + i] = y[row * d + i] * w[i] + (b ? b[i] : 0.0f);
        *result = out;
    }
    return MI_OK;
}

static void add_into(const float *a, const float *b, float *y, int64_t n)
{
    #pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) y[i] = a[i] + b[i];
}

static mi_status layer_forward(run_state *r, int l, const float *key_mask)
{
    const mi_transformer *m = r->m;
    const mi_tf_spec *s = &m->spec;
    const mi_tf_plan *pl = r->plan;
    float *A = r->arena;
    int64_t B = pl->batch, T = pl->seq, BT = B * T, D = s->d_model, H = s->n_heads,
            Dh = s->d_head, HD = H * Dh, Mlp = s->d_mlp;
    const size_t *o = m->layer_off + (size_t)l * MI_W_PER_LAYER;
    int p0 = 2 + l * MI_P_PER_LAYER;
#define BUF(kind) buf_ptr(pl, A, buf_layer(s, l, kind))
    float *resid = buf_ptr(pl, A, buf_resid(l)), *resid_next = buf_ptr(pl, A, buf_resid(l + 1));
    MI_TRY(fire(r, p0 + MI_P_RESID_PRE));

    const float *x = resid;
    if (s->norm != MI_NORM_NONE) {
        MI_TRY(norm_step(r, s->norm, D, resid, param(m, o[MI_W_LN1_W]), param(m, o[MI_W_LN1_B]), BUF(B_LN1_NORM),
                         BUF(B_LN1_SCALE), BUF(B_LN1_OUT), p0 + MI_P_LN1_SCALE, p0 + MI_P_LN1_NORM, &x));
    }
    /* attention: qkv [BT, 3, H, Dh] = x @ W_qkv + b_qkv */
    float *qkv = BUF(B_QKV), *scores = BUF(B_SCORES), *pattern = BUF(B_PATTERN), *z = BUF(B_Z);
    float *attn_out = BUF(B_ATTN_OUT);
    mi_sgemm(0, 0, BT, 3 * HD, D, x, D, param(m, o[MI_W_QKV]), 3 * HD, param(m, o[MI_W_B_QKV]),
             0.0f, qkv, 3 * HD);
    MI_TRY(fire(r, p0 + MI_P_Q));
    MI_TRY(fire(r, p0 + MI_P_K));
    MI_TRY(fire(r, p0 + MI_P_V));
    mi_attn_layout lay = {B, T, H, Dh, 3 * HD, T * 3 * HD};
    mi_attn_scores(&lay, qkv, qkv + HD, 1.0f / s->attn_scale, s->causal, key_mask, scores);
    MI_TRY(fire(r, p0 + MI_P_SCORES));
    mi_softmax_rows(scores, pattern, B * H * T, T);
    MI_TRY(fire(r, p0 + MI_P_PATTERN));
    mi_attn_apply(&lay, pattern, qkv + 2 * HD, z);
    MI_TRY(fire(r, p0 + MI_P_Z));
    const float *W_O = param(m, o[MI_W_O]), *b_O = param(m, o[MI_W_B_O]);
    if (s->use_attn_result) {
        /* result[b,t,h,:] = z[b,t,h,:] @ W_O[h]; attn_out = sum_h result + b_O */
        float *result = BUF(B_RESULT);
        for (int64_t h = 0; h < H; h++)
            mi_sgemm(0, 0, BT, D, Dh, z + h * Dh, HD, W_O + h * Dh * D, D, NULL, 0.0f,
                     result + h * D, H * D);
        MI_TRY(fire(r, p0 + MI_P_RESULT));
        #pragma omp parallel for schedule(static)
        for (int64_t row = 0; row < BT; row++) {
            float *out = attn_out + row * D;
            const float *res = result + row * H * D;
            for (int64_t i = 0; i < D; i++) {
                float acc = 0.0f;
                for (int64_t h = 0; h < H; h++) acc += res[h * D + i];
                out[i] = acc + b_O[i];
            }
        }
    } else {
        mi_sgemm(0, 0, BT, D, HD, z, HD, W_O, D, b_O, 0.0f, attn_out, D);
    }
    MI_TRY(fire(r, p0 + MI_P_ATTN_OUT));

    if (s->attn_only) {
        add_into(resid, attn_out, resid_next, BT * D);
        return fire(r, p0 + MI_P_RESID_POST);
    }
    float *resid_mid = BUF(B_RESID_MID);
    add_into(resid, attn_out, resid_mid, BT * D);
    MI_TRY(fire(r, p0 + MI_P_RESID_MID));
    x = resid_mid;
    if (s->use_hook_mlp_in) {
        memcpy(BUF(B_MLP_IN), resid_mid, sizeof(float) * (size_t)(BT * D));
        MI_TRY(fire(r, p0 + MI_P_MLP_IN));
        x = BUF(B_MLP_IN);
    }
    if (s->norm != MI_NORM_NONE) {
        MI_TRY(norm_step(r, s->norm, D, x, param(m, o[MI_W_LN2_W]), param(m, o[MI_W_LN2_B]), BUF(B_LN2_NORM),
                         BUF(B_LN2_SCALE), BUF(B_LN2_OUT), p0 + MI_P_LN2_SCALE, p0 + MI_P_LN2_NORM, &x));
    }
    float *pre = BUF(B_PRE), *post = BUF(B_POST), *mlp_out = BUF(B_MLP_OUT);
    const float *b_in = param(m, o[MI_W_B_IN]);
    if (s->gated_mlp) {
        /* TransformerLens GatedMLP: post = act(x @ W_gate) * (x @ W_in) + b_in */
        float *pre_linear = BUF(B_PRE_LINEAR);
        mi_sgemm(0, 0, BT, Mlp, D, x, D, param(m, o[MI_W_GATE]), Mlp, NULL, 0.0f, pre, Mlp);
        MI_TRY(fire(r, p0 + MI_P_MLP_PRE));
        mi_sgemm(0, 0, BT, Mlp, D, x, D, param(m, o[MI_W_IN]), Mlp, NULL, 0.0f, pre_linear, Mlp);
        MI_TRY(fire(r, p0 + MI_P_MLP_PRE_LINEAR));
        mi_activate((mi_activation)s->act, pre, post, BT * Mlp);
        #pragma omp parallel for schedule(static)
        for (int64_t row = 0; row < BT; row++)
            for (int64_t i = 0; i < Mlp; i++)
                post[row * Mlp + i] = post[row * Mlp + i] * pre_linear[row * Mlp + i] + b_in[i];
    } else if (s->act == MI_TF_ACT_SOLU_LN) {
        /* mid = pre * softmax(pre) over d_mlp; post = LN(mid) (LNPre unless the model is LN) */
        mi_sgemm(0, 0, BT, Mlp, D, x, D, param(m, o[MI_W_IN]), Mlp, b_in, 0.0f, pre, Mlp);
        MI_TRY(fire(r, p0 + MI_P_MLP_PRE));
        float *mid = BUF(B_MID);
        mi_softmax_rows(pre, mid, BT, Mlp);
        #pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < BT * Mlp; i++) mid[i] *= pre[i];
        MI_TRY(fire(r, p0 + MI_P_MLP_MID));
        const float *ln_out;
        const float *lw = param(m, o[MI_W_MLN_W]);
        MI_TRY(norm_step(r, lw ? MI_NORM_LN : MI_NORM_LNPRE, Mlp, mid, lw, param(m, o[MI_W_MLN_B]),
                         BUF(B_MLN_NORM), BUF(B_MLN_SCALE), post, p0 + MI_P_MLP_LN_SCALE,
                         p0 + MI_P_MLP_LN_NORM, &ln_out));
        if (ln_out != post) memcpy(post, ln_out, sizeof(float) * (size_t)(BT * Mlp));
    } else {
        mi_sgemm(0, 0, BT, Mlp, D, x, D, param(m, o[MI_W_IN]), Mlp, b_in, 0.0f, pre, Mlp);
        MI_TRY(fire(r, p0 + MI_P_MLP_PRE));
        mi_activate((mi_activation)s->act, pre, post, BT * Mlp);
    }
    MI_TRY(fire(r, p0 + MI_P_MLP_POST));
    mi_sgemm(0, 0, BT, D, Mlp, post, Mlp, param(m, o[MI_W_OUT]), D, param(m, o[MI_W_B_OUT]), 0.0f,
             mlp_out, D);
    MI_TRY(fire(r, p0 + MI_P_MLP_OUT));
    add_into(resid_mid, mlp_out, resid_next, BT * D);
    return fire(r, p0 + MI_P_RESID_POST);
#undef BUF
}

mi_status mi_tf_forward(const mi_transformer *m, const mi_tf_plan *plan, float *arena,
                        const uint8_t *flags, const int64_t *tokens, const float *resid_in,
                        const int64_t *pos_ids, const float *key_mask, mi_hook_fn hook,
                        void *hook_ctx)
{
    const mi_tf_spec *s = &m->spec;
    int64_t B = plan->batch, T = plan->seq, BT = B * T, D = s->d_model;
    run_state r = {m, plan, arena, flags, hook, hook_ctx};
    if (plan->start_layer >= 0) {
        if (!resid_in) return mi_fail(MI_ERR_VALUE, "start_at_layer needs a residual stream input");
        memcpy(buf_ptr(plan, arena, buf_resid(plan->start_layer)), resid_in, sizeof(float) * (size_t)(BT * D));
        return run_layers(&r, plan->start_layer, key_mask);
    }
    if (!tokens) return mi_fail(MI_ERR_VALUE, "forward: tokens are required without start_at_layer");
    /* validate every input before any parallel work */
    for (int64_t i = 0; i < BT; i++)
        if (tokens[i] < 0 || tokens[i] >= s->d_vocab)
            return mi_fail(MI_ERR_INDEX, "tokens: id %ld at [%ld, %ld] is outside [0, d_vocab=%ld)",
                           (long)tokens[i], (long)(i / T), (long)(i % T), (long)s->d_vocab);
    if (pos_ids)
        for (int64_t i = 0; i < BT; i++)
            if (pos_ids[i] < 0 || pos_ids[i] >= s->n_ctx)
                return mi_fail(MI_ERR_INDEX, "position id %ld at [%ld, %ld] is outside [0, n_ctx=%ld)",
                               (long)pos_ids[i], (long)(i / T), (long)(i % T), (long)s->n_ctx);
    float *embed = buf_ptr(plan, arena, 0), *pos = buf_ptr(plan, arena, 1);
    float *resid0 = buf_ptr(plan, arena, buf_resid(0));
    const float *W_E = param(m, m->global_off[MI_G_W_E]), *W_pos = param(m, m->global_off[MI_G_W_POS]);
    #pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < BT; i++) memcpy(embed + i * D, W_E + tokens[i] * D, sizeof(float) * (size_t)D);
    MI_TRY(fire(&r, 0));
    if (s->pos_embed) {
        #pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < BT; i++) {
            if (key_mask && key_mask[i] == 0.0f) memset(pos + i * D, 0, sizeof(float) * (size_t)D);
            else memcpy(pos + i * D, W_pos + (pos_ids ? pos_ids[i] : i % T) * D, sizeof(float) * (size_t)D);
        }
        MI_TRY(fire(&r, 1));
        add_into(embed, pos, resid0, BT * D);
    } else {
        memcpy(resid0, embed, sizeof(float) * (size_t)(BT * D));
    }
    return run_layers(&r, 0, key_mask);
}

/* Blocks [first, stop_layer), then (full pass) the final norm and unembedding. */
static mi_status run_layers(run_state *rs, int first, const float *key_mask)
{
    run_state r = *rs;
    const mi_transformer *m = r.m;
    const mi_tf_plan *plan = r.plan;
    const mi_tf_spec *s = &m->spec;
    float *arena = r.arena;
    int64_t BT = plan->batch * plan->seq, D = s->d_model;
    for (int l = first; l < plan->stop_layer; l++) MI_TRY(layer_forward(&r, l, key_mask));
    if (plan->stop_layer < s->n_layers) return MI_OK;

    int pf = 2 + (int)s->n_layers * MI_P_PER_LAYER;
    const float *x = buf_ptr(plan, arena, buf_resid((int)s->n_layers));
    if (s->norm != MI_NORM_NONE) {
        MI_TRY(norm_step(&r, s->norm, D, x, param(m, m->global_off[MI_G_LNF_W]), param(m, m->global_off[MI_G_LNF_B]),
                         buf_ptr(plan, arena, buf_final(s, BF_LNF_NORM)),
                         buf_ptr(plan, arena, buf_final(s, BF_LNF_SCALE)),
                         buf_ptr(plan, arena, buf_final(s, BF_LNF_OUT)),
                         pf + MI_PF_LNF_SCALE, pf + MI_PF_LNF_NORM, &x));
    }
    MI_TRY(fire(&r, pf + MI_PF_UNEMBED_IN));
    float *logits = buf_ptr(plan, arena, buf_final(s, BF_LOGITS));
    mi_sgemm(0, 0, BT, s->d_vocab_out, D, x, D, param(m, m->global_off[MI_G_W_U]), s->d_vocab_out,
             param(m, m->global_off[MI_G_B_U]), 0.0f, logits, s->d_vocab_out);
    return fire(&r, pf + MI_PF_UNEMBED_OUT);
}
