/* hook_points.c - which TransformerLens hook points a spec fires, their ids
 * and names (contract in transformer.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/arena.h"


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
        if (s->no_head) return 0;
        if (k == MI_PF_LNF_SCALE || k == MI_PF_LNF_NORM) return norm;
        return 1;
    }
    switch ((p - 2) % MI_P_PER_LAYER) {
    case MI_P_ATTN_IN: return s->use_attn_in;
    case MI_P_Q_INPUT: case MI_P_K_INPUT: case MI_P_V_INPUT: return s->use_split_qkv_input;
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
    "hook_resid_pre", "hook_attn_in", "hook_q_input", "hook_k_input", "hook_v_input", "ln1.hook_scale", "ln1.hook_normalized", "attn.hook_q", "attn.hook_k",
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
