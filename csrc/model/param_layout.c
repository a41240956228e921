/* param_layout.c - the spec's checks and the parameter blob's layout, from the
 * parameter tables MI_GLOBAL_PARAMS / MI_LAYER_PARAMS (model_tables.h;
 * contract in transformer.h). */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/activation.h"
#include "model/arena.h"

typedef struct {
    const char *name;
    int at;                  /* global tensors: before (START) or after (FINAL) the layers */
    unsigned needed;         /* MI_F_* mask */
    unsigned char axes[5];   /* DIM_*, DIM_NONE-ended */
} param_row;
enum { START, FINAL };

#define GLOBAL_ROW(id, at, name, needed, a0, a1, a2, a3) \
    {name, at, needed, {DIM_##a0, DIM_##a1, DIM_##a2, DIM_##a3, DIM_NONE}},
#define LAYER_ROW(id, name, needed, a0, a1, a2, a3) \
    {name, START, needed, {DIM_##a0, DIM_##a1, DIM_##a2, DIM_##a3, DIM_NONE}},
static const param_row global_params[MI_G_COUNT] = {MI_GLOBAL_PARAMS(GLOBAL_ROW)};
static const param_row layer_params[MI_W_PER_LAYER] = {MI_LAYER_PARAMS(LAYER_ROW)};
#undef GLOBAL_ROW
#undef LAYER_ROW

/* Which rows a bf16_weights model stores as bfloat16 (MI_BF16_*_PARAMS). */
#define BF16_ROW(id) [MI_W_##id] = 1,
static const unsigned char layer_bf16[MI_W_PER_LAYER] = {MI_BF16_LAYER_PARAMS(BF16_ROW)};
#undef BF16_ROW
#define BF16_ROW(id) [MI_G_##id] = 1,
static const unsigned char global_bf16[MI_G_COUNT] = {MI_BF16_GLOBAL_PARAMS(BF16_ROW)};
#undef BF16_ROW

/* Append tensor `row` (named `name`) to the table at the blob's cursor;
 * *off: its offset in floats. Fails naming the tensor and its axes when its
 * size, or the blob's, is too large. */
static mi_status add_param(mi_transformer *m, int capacity, size_t *cursor, const param_row *row,
                           int bf16, const char *name, size_t *off)
{
    if (m->n_table >= capacity)
        return mi_fail(MI_ERR_INTERNAL, "transformer: parameter table full at %s (%d entries)",
                       name, capacity);
    mi_tf_param *p = &m->table[m->n_table];
    int64_t dims[5];
    size_t n;
    MI_TRY(mi_tf_numel(&m->spec, row->axes, 0, 0, 0, name, dims, &p->ndim, &n));
    p->bf16 = bf16 && m->spec.bf16_weights;
    if (p->bf16) n = n / 2 + n % 2;   /* two bfloat16 per float of the blob */
    if (align_floats(n) > MAX_FLOATS - *cursor)
        return mi_fail(MI_ERR_VALUE, "transformer: n_params too large: the parameter blob passes "
                       "%zu floats at %s", MAX_FLOATS, name);
    snprintf(p->name, sizeof p->name, "%s", name);
    for (int i = 0; i < 4; i++) p->shape[i] = i < p->ndim ? dims[i] : 1;
    p->offset = *off = *cursor;
    *cursor += align_floats(n);
    m->n_table++;
    return MI_OK;
}

/* The global tensors placed `at` START or FINAL. */
static mi_status add_globals(mi_transformer *m, unsigned feat, int at, int capacity, size_t *cursor)
{
    for (int i = 0; i < MI_G_COUNT; i++)
        if (global_params[i].at == at && mi_tf_applies(global_params[i].needed, feat))
            MI_TRY(add_param(m, capacity, cursor, &global_params[i], global_bf16[i],
                             global_params[i].name, &m->global_off[i]));
    return MI_OK;
}

static mi_status check_spec(const mi_tf_spec *s)
{
    if (s->n_layers < 0 || s->d_model <= 0 || s->n_heads <= 0 || s->d_head <= 0
        || s->d_vocab <= 0 || s->d_vocab_out <= 0 || s->n_ctx <= 0
        || (!s->attn_only && s->d_mlp <= 0))
        return mi_fail(MI_ERR_VALUE, "transformer spec: sizes must be positive (n_layers=%ld "
                       "d_model=%ld n_heads=%ld d_head=%ld d_mlp=%ld d_vocab=%ld n_ctx=%ld)",
                       (long)s->n_layers, (long)s->d_model, (long)s->n_heads, (long)s->d_head,
                       (long)s->d_mlp, (long)s->d_vocab, (long)s->n_ctx);
    /* point ids, buffer slots and table entries are ints */
    int64_t per_layer = MI_P_PER_LAYER > NB + 1 ? MI_P_PER_LAYER : NB + 1;
    if (s->n_layers > (INT_MAX - 64) / per_layer)
        return mi_fail(MI_ERR_VALUE, "transformer spec: n_layers=%ld is too large (at most %ld)",
                       (long)s->n_layers, (long)((INT_MAX - 64) / per_layer));
    if (s->norm != MI_NORM_NONE && !(s->eps > 0.0f))
        return mi_fail(MI_ERR_VALUE, "transformer spec: eps must be > 0, got %g", (double)s->eps);
    if (!(s->attn_scale > 0.0f))
        return mi_fail(MI_ERR_VALUE, "transformer spec: attn_scale must be > 0, got %g",
                       (double)s->attn_scale);
    if (s->post_norms && !(s->eps > 0.0f))
        return mi_fail(MI_ERR_VALUE, "transformer spec: post_norms need eps > 0, got %g", (double)s->eps);
    if (!(s->attn_softcap >= 0.0f) || !isfinite(s->attn_softcap) || !(s->logit_softcap >= 0.0f)
        || !isfinite(s->logit_softcap))
        return mi_fail(MI_ERR_VALUE, "transformer spec: attn_softcap and logit_softcap must be finite "
                       "and >= 0 (0: off), got %g and %g", (double)s->attn_softcap,
                       (double)s->logit_softcap);
    int any_local = 0;
    for (int w = 0; w < MI_TF_MAX_LAYERS_LOCAL / 64; w++) any_local |= s->local_layers[w] != 0;
    for (int64_t l = s->n_layers; l < MI_TF_MAX_LAYERS_LOCAL; l++)
        if (mi_tf_layer_local(s, l))
            return mi_fail(MI_ERR_VALUE, "transformer spec: local_layers names layer %ld, past "
                           "n_layers=%ld", (long)l, (long)s->n_layers);
    if (s->window < 0 || (any_local && s->window == 0))
        return mi_fail(MI_ERR_VALUE, "transformer spec: local layers need a window >= 1, got %ld",
                       (long)s->window);
    if (any_local && s->n_layers > MI_TF_MAX_LAYERS_LOCAL)
        return mi_fail(MI_ERR_VALUE, "transformer spec: local attention is described for at most %d "
                       "layers, got n_layers=%ld", MI_TF_MAX_LAYERS_LOCAL, (long)s->n_layers);
    if (s->act == MI_TF_ACT_SOLU_LN && s->gated_mlp)
        return mi_fail(MI_ERR_VALUE, "transformer spec: solu_ln with a gated MLP is not supported");
    int64_t kv = mi_tf_kv_heads(s);
    if (kv < 1 || kv > s->n_heads || s->n_heads % kv)
        return mi_fail(MI_ERR_VALUE, "transformer spec: n_key_value_heads=%ld must divide n_heads=%ld",
                       (long)kv, (long)s->n_heads);
    if (kv != s->n_heads && (s->use_split_qkv_input || s->use_attn_in))
        return mi_fail(MI_ERR_VALUE, "transformer spec: grouped-query attention (n_key_value_heads"
                       "=%ld) with use_split_qkv_input or use_attn_in is not supported", (long)kv);
    if (s->rotary) {
        if (s->pos_embed)
            return mi_fail(MI_ERR_VALUE, "transformer spec: rotary and learned positions together");
        MI_TRY(mi_rotary_check(&s->rope, s->d_head));
    }
    if (s->parallel_attn_mlp && s->attn_only)
        return mi_fail(MI_ERR_VALUE, "transformer spec: parallel_attn_mlp needs an MLP (not attn_only)");
    if ((s->act < MI_ACT_RELU || s->act > MI_ACT_SILU) && s->act != MI_TF_ACT_SOLU_LN)
        return mi_fail(MI_ERR_VALUE, "transformer spec: unknown activation %d", s->act);
    return MI_OK;
}

mi_status mi_tf_init(mi_transformer *m, const mi_tf_spec *s)
{
    memset(m, 0, sizeof *m);
    MI_TRY(check_spec(s));
    m->spec = *s;
    unsigned feat = mi_tf_features(s);
    int L = (int)s->n_layers;
    int capacity = MI_G_COUNT + L * MI_W_PER_LAYER;
    m->table = calloc((size_t)capacity, sizeof(mi_tf_param));
    m->layer_off = malloc(sizeof(size_t) * (size_t)(L ? L : 1) * MI_W_PER_LAYER);
    if (!m->table || !m->layer_off) { mi_tf_free(m); return mi_fail(MI_ERR_NOMEM, "transformer: out of memory"); }
    for (int i = 0; i < MI_G_COUNT; i++) m->global_off[i] = ABSENT;
    for (size_t i = 0; i < (size_t)L * MI_W_PER_LAYER; i++) m->layer_off[i] = ABSENT;
    size_t c = 0;
    char name[48];
    mi_status st = add_globals(m, feat, START, capacity, &c);
    for (int l = 0; l < L && st == MI_OK; l++)
        for (int k = 0; k < MI_W_PER_LAYER && st == MI_OK; k++)
            if (mi_tf_applies(layer_params[k].needed, feat)) {
                snprintf(name, sizeof name, "blocks.%d.%s", l, layer_params[k].name);
                st = add_param(m, capacity, &c, &layer_params[k], layer_bf16[k], name,
                               &m->layer_off[(size_t)l * MI_W_PER_LAYER + k]);
            }
    if (st == MI_OK) st = add_globals(m, feat, FINAL, capacity, &c);
    if (st != MI_OK) { mi_tf_free(m); return st; }
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

/* The table entry at blob offset `off`, or NULL. */
static const mi_tf_param *entry_at(const mi_transformer *m, size_t off)
{
    /* the table is in blob order (add_param only moves forward): bisect */
    int lo = 0, hi = m->n_table - 1;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (m->table[mid].offset < off) lo = mid + 1;
        else hi = mid;
    }
    return m->n_table && m->table[lo].offset == off ? &m->table[lo] : NULL;
}

float *mi_tf_tensor(const mi_transformer *m, size_t off)
{
    if (off == ABSENT) return NULL;
    if (!m->n_external) return m->params + off;
    const mi_tf_param *p = entry_at(m, off);
    return p && p->data ? p->data : m->params + off;
}

mi_tf_weight mi_tf_weight_at(const mi_transformer *m, size_t off)
{
    mi_tf_weight w = {NULL, 0, 0};
    if (off == ABSENT) return w;
    const mi_tf_param *p = m->spec.bf16_weights || m->n_external ? entry_at(m, off) : NULL;
    w.data = p && p->data ? p->data : (const void *)(m->params + off);
    w.bf16 = p && p->bf16;
    if (p && p->data && p->trans) {
        w.trans_ld = 1;   /* the product of every axis but the last */
        for (int k = 0; k + 1 < p->ndim; k++) w.trans_ld *= p->shape[k];
    }
    return w;
}
