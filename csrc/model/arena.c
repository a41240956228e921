/* arena.c - plan of the per-call activation arena and the views of hook
 * points inside it (contract in transformer.h, slots in arena.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/arena.h"

/* Q, K and V are the three parts of the QKV buffer, in that order. */
_Static_assert(SH_K == SH_Q + 1 && SH_V == SH_Q + 2, "MI_SHAPES: Q, K, V must be consecutive");

#define BUF_ROW(id, shape, needed, elided) {"activation buffer " #id, SH_##shape, needed, elided},
const buf_row mi_start_bufs[NBS] = {MI_START_BUFFERS(BUF_ROW)};
const buf_row mi_layer_bufs[NB] = {MI_LAYER_BUFFERS(BUF_ROW)};
const buf_row mi_final_bufs[NBF] = {MI_FINAL_BUFFERS(BUF_ROW)};
#undef BUF_ROW
#define SHAPE_AXES(id, a0, a1, a2, a3, a4) {DIM_##a0, DIM_##a1, DIM_##a2, DIM_##a3, DIM_##a4},
const unsigned char mi_shape_axes[N_SHAPES][5] = {MI_SHAPES(SHAPE_AXES)};
#undef SHAPE_AXES
#define DIM_NAME(id, name) name,
const char *const mi_dim_names[N_DIMS] = {MI_DIMS(DIM_NAME)};
#undef DIM_NAME

/* Extent of axis `dim` for a [B, T] call over Tk keys; -1: the axis is dropped. */
static int64_t extent(const mi_tf_spec *s, int dim, int64_t B, int64_t T, int64_t Tk)
{
    switch (dim) {
    case DIM_ONE: return 1;
    case DIM_THREE: return 3;
    case DIM_BATCH: return B;
    case DIM_POS: return T;
    case DIM_KPOS: return Tk;
    case DIM_D: return s->d_model;
    case DIM_H: return s->n_heads;
    case DIM_KVH: return mi_tf_kv_heads(s);
    case DIM_QKVH: return s->n_heads + 2 * mi_tf_kv_heads(s);
    case DIM_HEAD_IN: return head_inputs(s) ? s->n_heads : -1;
    case DIM_DH: return s->d_head;
    case DIM_M: return s->d_mlp;
    case DIM_V: return s->d_vocab;
    case DIM_VO: return s->d_vocab_out;
    case DIM_CTX: return s->n_ctx;
    default: return -1;
    }
}

mi_status mi_tf_numel(const mi_tf_spec *s, const unsigned char *axes, int64_t B, int64_t T,
                      int64_t Tk, const char *what, int64_t dims[5], int *ndim, size_t *numel)
{
    size_t n = 1;
    int nd = 0, wrapped = 0;
    for (int a = 0; a < 5 && axes[a] != DIM_NONE; a++) {
        int64_t e = extent(s, axes[a], B, T, Tk);
        if (e < 0) continue;
        dims[nd++] = e;
        wrapped |= __builtin_mul_overflow(n, (size_t)e, &n);
    }
    *ndim = nd;
    *numel = n;
    if (!wrapped && n <= MAX_FLOATS) return MI_OK;
    char expr[160], vals[160];
    int ne = 0, nv = 0;
    for (int a = 0, k = 0; a < 5 && axes[a] != DIM_NONE; a++) {
        if (extent(s, axes[a], B, T, Tk) < 0) continue;
        ne += snprintf(expr + ne, sizeof expr - (size_t)ne, "%s%s", k ? " * " : "", mi_dim_names[axes[a]]);
        nv += snprintf(vals + nv, sizeof vals - (size_t)nv, "%s%lld", k ? " * " : "", (long long)dims[k]);
        k++;
    }
    return mi_fail(MI_ERR_VALUE, "%s: %s (%s) overflows: more than %zu floats", what, expr, vals,
                   MAX_FLOATS);
}

int mi_tf_shape(const mi_tf_spec *s, int sh, int64_t B, int64_t T, int64_t Tk, int64_t dims[5])
{
    int nd = 0;
    for (int a = 0; a < 5 && mi_shape_axes[sh][a] != DIM_NONE; a++) {
        int64_t e = extent(s, mi_shape_axes[sh][a], B, T, Tk);
        if (e >= 0) dims[nd++] = e;
    }
    return nd;
}

/* Buffer slot holding `point`. */
static int point_buf(const mi_tf_spec *s, int p)
{
    int scope, l;
    const point_row *r = mi_tf_point_row(s, p, &scope, &l);
    switch (r->buf) {
    case MI_BUF_RESID_IN: return buf_resid(l);
    case MI_BUF_RESID_OUT: return buf_resid(l + 1);
    case MI_BUF_NORM_RESULT:
        if (has_norm_affine(s->norm)) return buf_final(s, BF_LNF_OUT);
        return s->norm != MI_NORM_NONE ? buf_final(s, BF_LNF_NORM) : buf_resid((int)s->n_layers);
    }
    return scope == SCOPE_START ? r->buf : scope == SCOPE_LAYER ? buf_layer(s, l, r->buf)
                                                                : buf_final(s, r->buf);
}

/* Floats of each of the n buffer kinds `rows` for a [B, T] call into out (0:
 * the spec has no such buffer); fails naming the buffer when a size overflows. */
static mi_status kind_floats(const mi_tf_spec *s, unsigned feat, const buf_row *rows, int n,
                             int64_t B, int64_t T, int64_t Tk, size_t *out)
{
    for (int k = 0; k < n; k++) {
        int64_t dims[5];
        int nd;
        out[k] = 0;
        if (mi_tf_applies(rows[k].needed, feat))
            MI_TRY(mi_tf_numel(s, mi_shape_axes[rows[k].shape], B, T, Tk, rows[k].name, dims, &nd, &out[k]));
    }
    return MI_OK;
}

/* *cur += n rounded up to ALIGN_FLOATS; 1 when the total passes MAX_FLOATS
 * (each n is at most MAX_FLOATS, so the sum cannot wrap before the check). */
static int grow(size_t *cur, size_t n)
{
    *cur += align_floats(n);
    return *cur > MAX_FLOATS;
}

mi_status mi_tf_plan_call(const mi_transformer *m, int64_t B, int64_t T, int start_layer, int stop_layer,
                          const uint8_t *flags, mi_tf_plan *plan)
{
    return mi_tf_plan_call_kv(m, B, T, 0, start_layer, stop_layer, flags, plan);
}

mi_status mi_tf_plan_call_kv(const mi_transformer *m, int64_t B, int64_t T, int64_t n_past,
                             int start_layer, int stop_layer, const uint8_t *flags,
                             mi_tf_plan *plan)
{
    const mi_tf_spec *s = &m->spec;
    memset(plan, 0, sizeof *plan);
    if (B <= 0 || T <= 0)
        return mi_fail(MI_ERR_VALUE, "tokens: batch and position counts must be positive, got "
                       "[%ld, %ld]", (long)B, (long)T);
    if (T > s->n_ctx)
        return mi_fail(MI_ERR_VALUE, "tokens: sequence length %ld exceeds n_ctx %ld",
                       (long)T, (long)s->n_ctx);
    if (n_past < 0 || n_past > INT64_MAX - T)
        return mi_fail(MI_ERR_VALUE, "cached positions: %lld is not a valid count", (long long)n_past);
    const int64_t Tk = T + n_past;
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
    plan->past = n_past;
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
    /* which buffers this call uses, and their sizes (the same for every layer) */
    unsigned feat = mi_tf_features(s);
    int full = stop_layer == s->n_layers;
    size_t resid_floats, start_floats[NBS], layer_floats[NB], final_floats[NBF];
    const buf_row resid_row = {"activation buffer resid", SH_RESID, 0, 0};
    mi_status st = kind_floats(s, feat, &resid_row, 1, B, T, Tk, &resid_floats);
    if (st == MI_OK && start_layer < 0) st = kind_floats(s, feat, mi_start_bufs, NBS, B, T, Tk, start_floats);
    if (st == MI_OK && first < stop_layer) st = kind_floats(s, feat, mi_layer_bufs, NB, B, T, Tk, layer_floats);
    if (st == MI_OK && full) st = kind_floats(s, feat, mi_final_bufs, NBF, B, T, Tk, final_floats);
    if (st != MI_OK) {
        free(kept); free(sizes); mi_tf_plan_free(plan);
        return st;
    }
    for (int k = 0; k < NBS && start_layer < 0; k++) sizes[k] = start_floats[k];
    for (int i = first; i <= stop_layer; i++) sizes[buf_resid(i)] = resid_floats;
    for (int l = first; l < stop_layer; l++)
        memcpy(&sizes[buf_layer(s, l, 0)], layer_floats, sizeof layer_floats);
    for (int k = 0; k < NBF && full; k++) sizes[buf_final(s, k)] = final_floats[k];
    /* the output */
    kept[full && (feat & MI_F_HEAD) ? buf_final(s, feat & MI_F_LOGIT_CAP ? BF_LOGITS_CAP : BF_LOGITS)
                                    : buf_resid(stop_layer)] = 1;
    for (int p = 0; p < np; p++) {
        int scope, l;
        if (!flags[p] || !mi_tf_applies(mi_tf_point_row(s, p, &scope, &l)->fires, feat)) continue;
        /* 1: a slot of its own; 2: read during the pass only (a transient
         * hook), so it must be written but may share the scratch slot */
        uint8_t need = (flags[p] & (MI_HOOK_CACHE | MI_HOOK_CALLBACK)) ? 1 : 2, *k = &kept[point_buf(s, p)];
        if (!*k || need < *k) *k = need;
    }
    /* a hook on ln1's points sees the runs on the q and k inputs too: keep
     * theirs as well (the cache keeps the last, on the v input) */
    for (int l = first; l < stop_layer && head_inputs(s); l++) {
        int p0 = mi_tf_layer_point(l, 0);
        if (flags[p0 + MI_P_LN1_SCALE] & MI_HOOK_FIRES)
            kept[buf_layer(s, l, B_LN1Q_SCALE)] = kept[buf_layer(s, l, B_LN1K_SCALE)] = 1;
        if (flags[p0 + MI_P_LN1_NORM] & MI_HOOK_FIRES)
            kept[buf_layer(s, l, B_LN1Q_NORM)] = kept[buf_layer(s, l, B_LN1K_NORM)] = 1;
    }
    /* buffers the pass only writes when something reads them (fused
     * attention's scores/pattern, hook_normalized ahead of affine weights) */
    int elidable[NB], n_elidable = 0;
    for (int k = 0; k < NB; k++)
        if (mi_layer_bufs[k].elided) elidable[n_elidable++] = k;
    for (int l = first; l < stop_layer; l++) {
        unsigned f = feat | (attn_fusable(flags, mi_tf_layer_point(l, 0)) ? MI_F_FUSED : 0u);
        for (int i = 0; i < n_elidable; i++) {
            int k = elidable[i], b = buf_layer(s, l, k);
            if (mi_tf_applies(mi_layer_bufs[k].elided, f) && !kept[b]) sizes[b] = 0;
        }
    }
    for (int k = 0; k < NBF && full; k++) {
        int b = buf_final(s, k);
        if (mi_final_bufs[k].elided && mi_tf_applies(mi_final_bufs[k].elided, feat) && !kept[b]) sizes[b] = 0;
    }
    /* kept buffers get their own slots; the rest share one scratch slot per
     * kind (resid alternates between two), reused from layer to layer */
    size_t cur = 0;
    int too_large = 0;
    for (int b = 0; b < nb; b++) {
        plan->buf_off[b] = ABSENT;
        if (sizes[b] && kept[b] == 1) {
            plan->buf_off[b] = cur;
            too_large |= grow(&cur, sizes[b]);
        }
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
        too_large |= grow(&cur, sizes[b]);
    }
    plan->n_floats = cur ? cur : ALIGN_FLOATS;
    free(kept);
    free(sizes);
    if (too_large) {
        mi_tf_plan_free(plan);
        return mi_fail(MI_ERR_NOMEM, "activation arena of a [%lld, %lld] call: more than %zu floats",
                       (long long)B, (long long)T, MAX_FLOATS);
    }
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

int mi_tf_point_view(const mi_transformer *m, const mi_tf_plan *plan, float *arena, int p,
                     mi_tensor_view *v)
{
    const mi_tf_spec *s = &m->spec;
    if (!mi_tf_point_present(s, p)) return 0;
    int scope, l;
    const point_row *r = mi_tf_point_row(s, p, &scope, &l);
    if (scope == SCOPE_FINAL && plan->stop_layer < s->n_layers) return 0;
    if (scope == SCOPE_START && plan->start_layer >= 0) return 0;
    if (scope == SCOPE_LAYER && (l >= plan->stop_layer || l < plan->start_layer)) return 0;
    float *data = mi_tf_buf_ptr(plan, arena, point_buf(s, p));
    if (!data) return 0;
    int64_t dims[5];
    v->data = data;
    v->ndim = mi_tf_shape(s, r->shape, plan->batch, plan->seq, plan->seq + plan->past, dims);
    int64_t st = 1;
    for (int i = v->ndim - 1; i >= 0; i--) {   /* hook views have at most four axes */
        v->shape[i] = dims[i];
        v->strides[i] = st;
        st *= dims[i];
    }
    if (r->shape == SH_Q || r->shape == SH_K || r->shape == SH_V) {
        /* [B,T,H,Dh] or [B,T,Hkv,Dh] part of the fused [B,T,H+2Hkv,Dh] buffer */
        int64_t H = s->n_heads, Hkv = mi_tf_kv_heads(s), row = (H + 2 * Hkv) * s->d_head;
        v->data = data + (r->shape == SH_Q ? 0 : r->shape == SH_K ? H : H + Hkv) * s->d_head;
        v->strides[1] = row;
        v->strides[0] = plan->seq * row;
    }
    return 1;
}

float *mi_tf_output(const mi_transformer *m, const mi_tf_plan *plan, float *arena)
{
    if (plan->stop_layer < m->spec.n_layers || m->spec.no_head) return mi_tf_buf_ptr(plan, arena, buf_resid(plan->stop_layer));
    return mi_tf_buf_ptr(plan, arena, buf_final(&m->spec, m->spec.logit_softcap > 0.0f ? BF_LOGITS_CAP : BF_LOGITS));
}
