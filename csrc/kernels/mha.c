/* mha.c - multi-head attention with its pattern (mha.h). */
#include "kernels/mha.h"

#include "kernels/softmax.h"

mi_status mi_mha_forward(const mi_attn_layout *L, const float *q, const float *k, const float *v,
                         float scale, int causal, const float *key_mask, float *pattern, float *z)
{
    mi_status st = mi_attn_scores(L, q, k, scale, causal, key_mask, pattern);
    if (st != MI_OK) return st;
    mi_softmax_rows(pattern, pattern, L->batch * L->n_heads * L->q_len, L->k_len);   /* in place */
    return mi_attn_apply(L, pattern, v, z);
}
