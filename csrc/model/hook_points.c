/* hook_points.c - the hook point table (MI_*_POINTS in model_tables.h) as
 * data: which points a spec fires and lists, their ids, names and
 * TransformerLens module order (contract in transformer.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/arena.h"

#define POINT_ROW(id, name, buf, shape, fires, listed, rank) {name, buf, SH_##shape, fires, listed, rank},
static const point_row start_points[MI_PS_COUNT] = {MI_START_POINTS(POINT_ROW)};
static const point_row layer_points[MI_P_PER_LAYER] = {MI_LAYER_POINTS(POINT_ROW)};
static const point_row final_points[MI_PF_COUNT] = {MI_FINAL_POINTS(POINT_ROW)};
#undef POINT_ROW

/* The ranks of each scope are a permutation of its rows: n distinct bits below n. */
#define RANK_BIT(id, name, buf, shape, fires, listed, rank) | (1ull << (rank))
_Static_assert((0 MI_START_POINTS(RANK_BIT)) == (1ull << MI_PS_COUNT) - 1,
               "MI_START_POINTS: ranks must be 0 .. MI_PS_COUNT-1, each once");
_Static_assert((0 MI_LAYER_POINTS(RANK_BIT)) == (1ull << MI_P_PER_LAYER) - 1,
               "MI_LAYER_POINTS: ranks must be 0 .. MI_P_PER_LAYER-1, each once");
_Static_assert((0 MI_FINAL_POINTS(RANK_BIT)) == (1ull << MI_PF_COUNT) - 1,
               "MI_FINAL_POINTS: ranks must be 0 .. MI_PF_COUNT-1, each once");
#undef RANK_BIT

unsigned mi_tf_features(const mi_tf_spec *s)
{
    int mlp = !s->attn_only;
    return (s->norm != MI_NORM_NONE ? MI_F_NORM : 0u)
         | (has_norm_affine(s->norm) ? MI_F_NORM_W : 0u)
         | (has_norm_bias(s->norm) ? MI_F_NORM_B : 0u)
         | (mlp ? MI_F_MLP : 0u)
         | (s->gated_mlp ? MI_F_GATED : 0u)
         | (s->act == MI_TF_ACT_SOLU_LN ? MI_F_SOLU_LN : 0u)
         | (s->pos_embed ? MI_F_POS : 0u)
         | (s->use_attn_result ? MI_F_RESULT : 0u)
         | (s->use_hook_mlp_in ? MI_F_MLP_IN : 0u)
         | (s->use_attn_in ? MI_F_ATTN_IN : 0u)
         | (s->use_split_qkv_input ? MI_F_SPLIT_QKV : 0u)
         | (head_inputs(s) ? MI_F_HEAD_IN : 0u)
         | (!s->no_head ? MI_F_HEAD : 0u)
         | (s->rotary ? MI_F_ROTARY : 0u)
         | (!s->parallel_attn_mlp ? MI_F_SERIAL : 0u)
         | (!s->rotary ? MI_F_POS_MODULE : 0u)
         | (mi_tf_kv_heads(s) == s->n_heads ? MI_F_MHA : MI_F_GQA)
         | (s->post_norms ? MI_F_POST_NORM : 0u)
         | (s->logit_softcap > 0.0f ? MI_F_LOGIT_CAP : 0u);
}

int mi_tf_n_points(const mi_tf_spec *s) { return mi_tf_final_point(s, MI_PF_COUNT); }

const point_row *mi_tf_point_row(const mi_tf_spec *s, int p, int *scope, int *layer)
{
    int first_final = mi_tf_final_point(s, 0);
    *layer = -1;
    if (p < MI_PS_COUNT) { *scope = SCOPE_START; return &start_points[p]; }
    if (p >= first_final) { *scope = SCOPE_FINAL; return &final_points[p - first_final]; }
    *scope = SCOPE_LAYER;
    *layer = (p - MI_PS_COUNT) / MI_P_PER_LAYER;
    return &layer_points[(p - MI_PS_COUNT) % MI_P_PER_LAYER];
}

int mi_tf_point_present(const mi_tf_spec *s, int p)
{
    int scope, layer;
    if (p < 0 || p >= mi_tf_n_points(s)) return 0;
    return mi_tf_applies(mi_tf_point_row(s, p, &scope, &layer)->fires, mi_tf_features(s));
}

int mi_tf_point_name(const mi_tf_spec *s, int p, char *buf)
{
    int scope, layer;
    const point_row *r = mi_tf_point_row(s, p, &scope, &layer);
    if (layer < 0) snprintf(buf, 64, "%s", r->name);
    else snprintf(buf, 64, "blocks.%d.%s", layer, r->name);
    return layer;
}

/* Append the listed points of one scope (first id `p0`, n rows) in rank order. */
static int scope_in_order(const mi_tf_spec *s, const point_row *rows, int n, int p0, int *ids)
{
    unsigned f = mi_tf_features(s);
    int k = 0;
    for (int rank = 0; rank < n; rank++)
        for (int i = 0; i < n; i++)
            if (rows[i].rank == rank && mi_tf_applies(rows[i].listed, f)) ids[k++] = p0 + i;
    return k;
}

int mi_tf_module_order(const mi_tf_spec *s, int *ids)
{
    int k = scope_in_order(s, start_points, MI_PS_COUNT, 0, ids);
    for (int l = 0; l < s->n_layers; l++)
        k += scope_in_order(s, layer_points, MI_P_PER_LAYER, mi_tf_layer_point(l, 0), ids + k);
    return k + scope_in_order(s, final_points, MI_PF_COUNT, mi_tf_final_point(s, 0), ids + k);
}

void mi_tf_point_table(mi_tf_point_info rows[MI_TF_POINT_ROWS])
{
    static const char *scope_names[3] = {"start", "layer", "final"};
    const point_row *tables[3] = {start_points, layer_points, final_points};
    const int counts[3] = {MI_PS_COUNT, MI_P_PER_LAYER, MI_PF_COUNT};
    int k = 0;
    for (int sc = 0; sc < 3; sc++)
        for (int i = 0; i < counts[sc]; i++, k++) {
            const point_row *r = &tables[sc][i];
            mi_tf_point_info *o = &rows[k];
            memset(o, 0, sizeof *o);
            o->name = r->name;
            o->scope = scope_names[sc];
            for (int a = 0; a < 5 && mi_shape_axes[r->shape][a] != DIM_NONE; a++)
                o->axes[o->ndim++] = mi_dim_names[mi_shape_axes[r->shape][a]];
        }
}
