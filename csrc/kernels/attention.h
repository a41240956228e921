/* attention.h - multi-head attention as three hookable steps.
 *
 * The forward pass exposes attn_scores, pattern and z to hooks in between, so
 * attention is three kernels rather than one fused one:
 *
 *   scores[b,h,i,j] = scale * <q[b,i,h,:], k[b,j,h,:]>,  -inf where masked
 *   pattern         = mi_softmax_rows(scores)          (softmax.h)
 *   z[b,i,h,:]      = sum_j pattern[b,h,i,j] * v[b,j,h,:]
 *
 * q, k, v are read through a layout so the fused QKV buffer [B,T,3,H,Dh]
 * (Hugging Face's c_attn output) serves without copies: element (b,t,h,d) of
 * q is q[b*batch_stride + t*row_stride + h*d_head + d], and k = q + H*Dh,
 * v = q + 2*H*Dh with row_stride = 3*H*Dh.
 *
 * Masking: causal masks j > i. key_mask[b,j] == 0 masks key j for every query
 * of batch item b (padding); NULL means no padding mask.
 *
 * Shapes: scores, pattern [B,H,T,T]; z [B,T,H,Dh] contiguous.
 * Cost O(T^2 Dh) per head. Parallel over (b, h). Each head works in blocks of
 * MI_ATTN_ROW_BLOCK query rows (causal scores skip keys past the block).
 *
 * mi_attn_fused: the three steps in one parallel region when no hook needs
 * scores or pattern in between. Per (b, h, row block) it runs the very same
 * products and row softmax as mi_attn_scores -> mi_softmax_rows ->
 * mi_attn_apply, so z is bitwise the three-step z; the [block, T] scores live
 * in a per-thread scratch (cache-sized), or are written to scores_out /
 * pattern_out [B,H,T,T] when those are given (an activation cache wants
 * them). MI_ERR_NOMEM if the scratch cannot be allocated (mi_attn_scores too:
 * on AVX-512 both keep a per-thread copy of the head's K^T).
 *
 * On AVX-512 the products run in attention_avx512.c (no packing, one FMA
 * chain per element); elsewhere through mi_sgemm. A causal fused pass stops
 * the z product at the last key its row block can see: the skipped pattern
 * entries are exactly 0, so z is unchanged for finite v (a non-finite v at a
 * future position no longer turns earlier rows into NaN).
 */
#ifndef MI_ATTENTION_H
#define MI_ATTENTION_H

#include <stdint.h>

#include "common/status.h"

typedef struct {
    int64_t batch, seq, heads, d_head;
    int64_t row_stride;    /* elements between positions t and t+1 */
    int64_t batch_stride;  /* elements between batch items b and b+1 */
} mi_attn_layout;

mi_status mi_attn_scores(const mi_attn_layout *L, const float *q, const float *k, float scale,
                         int causal, const float *key_mask, float *scores);
void mi_attn_apply(const mi_attn_layout *L, const float *pattern, const float *v, float *z);
mi_status mi_attn_fused(const mi_attn_layout *L, const float *q, const float *k, const float *v,
                        float scale, int causal, const float *key_mask, float *scores_out,
                        float *pattern_out, float *z);

#define MI_ATTN_ROW_BLOCK 64

/* Backward through scores -> softmax -> apply (training), per (b, h):
 *   dv[j]   += sum_i P[i,j] dz[i]
 *   dP[i,j]  = dz[i] . v[j]
 *   dS[i,j]  = P[i,j] (dP[i,j] - sum_j' P[i,j'] dP[i,j'])
 *   dq[i]   += scale sum_j dS[i,j] k[j];   dk[j] += scale sum_i dS[i,j] q[i]
 * dq, dk, dv use the layout L like q, k, v (so the fused dQKV buffer
 * [B,T,3,H,Dh] works) and ACCUMULATE. pattern [B,H,T,T] is the forward's;
 * masked entries (P = 0) give no gradient. dz [B,T,H,Dh] contiguous.
 * causal: P[i, j > i] is taken as 0 (skips that work). Parallel over (b, h);
 * each head's products run on one thread through mi_sgemm (bitwise identical
 * for any count). O(T^2 Dh) per head; scratch of T*T floats per thread
 * (MI_ERR_NOMEM if it cannot be allocated). */
mi_status mi_attn_backward(const mi_attn_layout *L, const float *q, const float *k,
                           const float *v, const float *pattern, const float *dz,
                           float scale, int causal, float *dq, float *dk, float *dv);

#endif
