/* arena.c - plan of the per-call activation arena and the views of hook
 * points inside it (contract in transformer.h, slots in arena.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/arena.h"

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
        -1, B_ATTN_IN, B_Q_IN, B_K_IN, B_V_IN, B_LN1_SCALE, B_LN1_NORM, B_QKV, B_QKV, B_QKV, B_SCORES, B_PATTERN, B_Z, B_RESULT,
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
    size_t rep = head_inputs(s) ? H : 1;   /* ln1 rows per position */
    switch (kind) {
    case B_LN1_SCALE: case B_LN1Q_SCALE: case B_LN1K_SCALE: return BT * rep;
    case B_LN1_NORM: case B_LN1_OUT: case B_LN1Q_NORM: case B_LN1Q_OUT: case B_LN1K_NORM:
    case B_LN1K_OUT: case B_ATTN_IN: case B_Q_IN: case B_K_IN: case B_V_IN: return BT * rep * D;
    case B_LN2_SCALE: case B_MLN_SCALE: return BT;
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
    case B_ATTN_IN: return s->use_attn_in;
    case B_Q_IN: case B_K_IN: case B_V_IN: return s->use_split_qkv_input;
    case B_LN1Q_SCALE: case B_LN1Q_NORM: case B_LN1K_SCALE: case B_LN1K_NORM:
        return norm && head_inputs(s);
    case B_LN1Q_OUT: case B_LN1K_OUT: return has_norm_affine(s->norm) && head_inputs(s);
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
    if (stop_layer == s->n_layers && !s->no_head) {
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
        if (flags[p] && mi_tf_point_present(s, p)) {
            /* 1: a slot of its own; 2: read during the pass only (a transient
             * hook), so it must be written but may share the scratch slot */
            uint8_t need = (flags[p] & (MI_HOOK_CACHE | MI_HOOK_CALLBACK)) ? 1 : 2, *k = &kept[point_buf(s, p)];
            if (!*k || need < *k) *k = need;
        }
    /* a hook on ln1's points sees the runs on the q and k inputs too: keep
     * theirs as well (the cache keeps the last, on the v input) */
    for (int l = first; l < stop_layer && head_inputs(s); l++) {
        int p0 = 2 + l * MI_P_PER_LAYER;
        if (flags[p0 + MI_P_LN1_SCALE] & MI_HOOK_FIRES)
            kept[buf_layer(s, l, B_LN1Q_SCALE)] = kept[buf_layer(s, l, B_LN1K_SCALE)] = 1;
        if (flags[p0 + MI_P_LN1_NORM] & MI_HOOK_FIRES)
            kept[buf_layer(s, l, B_LN1Q_NORM)] = kept[buf_layer(s, l, B_LN1K_NORM)] = 1;
    }
    /* buffers the pass only writes when something reads them: fused
     * attention's scores/pattern, and hook_normalized ahead of affine weights
     * (the norm then writes its output straight away) */
    int solu_affine = s->act == MI_TF_ACT_SOLU_LN && s->norm == MI_NORM_LN;
    for (int l = first; l < stop_layer; l++) {
        int p0 = 2 + l * MI_P_PER_LAYER;
        static const int skippable[] = {B_SCORES, B_PATTERN, B_LN1_NORM, B_LN2_NORM, B_MLN_NORM,
                                        B_LN1Q_NORM, B_LN1K_NORM};
        for (int i = 0; i < 7; i++) {
            int k = skippable[i], b = buf_layer(s, l, k);
            int unread = k == B_SCORES || k == B_PATTERN ? attn_fusable(flags, p0)
                       : k == B_MLN_NORM ? solu_affine : has_norm_affine(s->norm);
            if (unread && !kept[b]) sizes[b] = 0;
        }
    }
    if (stop_layer == s->n_layers && has_norm_affine(s->norm) && !kept[buf_final(s, BF_LNF_NORM)])
        sizes[buf_final(s, BF_LNF_NORM)] = 0;
    /* kept buffers get their own slots; the rest share one scratch slot per
     * kind (resid alternates between two), reused from layer to layer */
    size_t cur = 0;
    for (int b = 0; b < nb; b++) {
        plan->buf_off[b] = ABSENT;
        if (sizes[b] && kept[b] == 1) { plan->buf_off[b] = cur; cur += align_floats(sizes[b]); }
    }
    size_t scratch_resid[2] = {ABSENT, ABSENT}, scratch_kind[NB];
    for (int k = 0; k < NB; k++) scratch_kind[k] = ABSENT;
    for (int b = 0; b < nb; b++) {
        if (!sizes[b] || kept[b] == 1) continue;
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

float *mi_tf_buf_ptr(const mi_tf_plan *plan, float *arena, int b)
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
    float *data = mi_tf_buf_ptr(plan, arena, point_buf(s, p));
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
    int64_t H_in = head_inputs(s) ? H : 0;   /* ln1 and the attn inputs carry a head axis */
    if (k == MI_P_ATTN_IN || k == MI_P_Q_INPUT || k == MI_P_K_INPUT || k == MI_P_V_INPUT
        || (H_in && k == MI_P_LN1_NORM)) {
        shape[0] = B; shape[1] = T; shape[2] = H; shape[3] = D; set_view(v, data, 4, shape);
    } else if (H_in && k == MI_P_LN1_SCALE) {
        shape[0] = B; shape[1] = T; shape[2] = H; shape[3] = 1; set_view(v, data, 4, shape);
    } else if (k == MI_P_LN1_SCALE || k == MI_P_LN2_SCALE || k == MI_P_MLP_LN_SCALE || kf == MI_PF_LNF_SCALE) {
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
    if (plan->stop_layer < m->spec.n_layers || m->spec.no_head) return mi_tf_buf_ptr(plan, arena, buf_resid(plan->stop_layer));
    return mi_tf_buf_ptr(plan, arena, buf_final(&m->spec, BF_LOGITS));
}
