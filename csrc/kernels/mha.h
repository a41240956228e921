/* mha.h - multi-head attention with its pattern, from the attention kernels.
 *
 * Shape legend: B batch, Tq query positions, Tk key positions, H heads,
 * Dh d_head (the general layout of kernels/attention.h).
 *
 * mi_mha_forward: the three steps TransformerLens runs and hooks
 *   pattern [B,H,Tq,Tk] = softmax(scale * q k^T, causal / key_mask masked)
 *   z [B,Tq,H,Dh]       = pattern @ v
 * as mi_attn_scores -> mi_softmax_rows -> mi_attn_apply (kernels/attention.h,
 * kernels/softmax.h) on q, k, v read through layout L. key_mask [B,Tk] (NULL:
 * none; 0 masks a key). A query whose keys are all masked gets a zero pattern
 * row. Errors are the kernels' (MI_ERR_VALUE for a bad layout, MI_ERR_NOMEM
 * for scratch); bitwise identical for any thread count, and bitwise
 * mi_attn_fused's z and pattern.
 */
#ifndef MI_MHA_H
#define MI_MHA_H

#include "common/status.h"
#include "kernels/attention.h"

mi_status mi_mha_forward(const mi_attn_layout *L, const float *q, const float *k, const float *v,
                         float scale, int causal, const float *key_mask, float *pattern, float *z);

#endif
