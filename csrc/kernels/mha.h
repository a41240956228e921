/* mha.h - multi-head attention with its pattern, from the attention kernels.
 *
 * Shape legend: B batch, T positions, H heads, Dh d_head.
 *
 * mi_mha_forward: the three steps TransformerLens runs and hooks
 *   pattern [B,H,T,T] = softmax(scale * q k^T, causal / key_mask masked)
 *   z [B,T,H,Dh]      = pattern @ v
 * as mi_attn_scores -> mi_softmax_rows -> mi_attn_apply (kernels/attention.h,
 * kernels/softmax.h) on q, k, v read through layout L. key_mask [B,T] (NULL:
 * none; 0 masks a key). A query whose keys are all masked gets a zero pattern
 * row. Errors are mi_attn_scores's (MI_ERR_NOMEM for its scratch); bitwise
 * identical for any thread count, and bitwise mi_attn_fused's z and pattern.
 */
#ifndef MI_MHA_H
#define MI_MHA_H

#include "common/status.h"
#include "kernels/attention.h"

mi_status mi_mha_forward(const mi_attn_layout *L, const float *q, const float *k, const float *v,
                         float scale, int causal, const float *key_mask, float *pattern, float *z);

#endif
