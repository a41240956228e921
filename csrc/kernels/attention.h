/* attention.h - multi-head attention as three hookable steps, on one general
 * contract: queries and keys of different lengths, a causal offset, strided
 * q/k/v and grouped-query heads. Self-attention over a fused QKV buffer, a
 * KV-cache decode step and grouped-query attention are all the same call.
 *
 * Shape legend:
 *   B   batch                    Tq  query positions (q_len)
 *   H   query heads (n_heads)    Tk  key/value positions (k_len)
 *   Hkv key/value heads          Dh  d_head
 *   g   = H / Hkv, query heads per kv head: query head h reads kv head h / g
 *   q   [B, Tq, H, Dh]    k, v [B, Tk, Hkv, Dh]   read through strides (below)
 *   scores, pattern   [B, H, Tq, Tk]   contiguous
 *   z, dz             [B, Tq, H, Dh]   contiguous (TransformerLens hook_z)
 *
 * The steps (forward):
 *   raw             = scale * <q[b,i,h,:], k[b,j,h/g,:]>
 *   scores[b,h,i,j] = raw, or softcap * tanh(raw / softcap) when softcap > 0
 *                     (Gemma 2's score soft-capping, before the mask as
 *                     TransformerLens), -inf where masked
 *   pattern         = mi_softmax_rows(scores)          (softmax.h)
 *   z[b,i,h,:]      = sum_j pattern[b,h,i,j] * v[b,j,h/g,:]
 *
 * Positions: query i sits at key position offset + i. Causal masks the keys
 * j > offset + i, so query i sees keys 0 .. min(offset + i, Tk - 1)
 * (mi_attn_visible): a decode step is Tq = 1, offset = Tk - 1; self-attention
 * is Tq = Tk, offset 0. Bidirectional attention ignores offset.
 * Sliding window (window W > 0, causal or not): query i also masks the keys
 * j <= offset + i - W, so it sees at most the W keys ending at its own
 * position, keys [mi_attn_first(L, i), mi_attn_visible(L, causal, i)) (as
 * TransformerLens's local attention and Gemma 2's sliding layers: key j is
 * kept when j > pos - W). window 0: no window.
 * Padding: key_mask [B, Tk] contiguous; key_mask[b,j] == 0 masks key j for every
 * query of batch item b. NULL: no padding mask. A query with no visible key
 * gets a zero pattern row and a zero z row.
 *
 * Strides (elements): element (b, t, h, d) of q is
 *   q[b*L->q.batch + t*L->q.pos + h*L->q.head + d],   d contiguous,
 * and likewise k and v with their own strides, so the fused QKV buffer
 * [B,T,3,H,Dh] (k = q + H*Dh, v = q + 2*H*Dh, pos stride 3*H*Dh) and a KV cache
 * [B, Hkv, capacity, Dh] (pos stride Dh, head stride capacity*Dh) are read in
 * place, without copies.
 *
 * Cost O(Tq Tk Dh) per head. Parallel over (b, h); each head works in blocks
 * of MI_ATTN_ROW_BLOCK query rows (causal scores skip keys past the block's
 * last visible one). Every element is one fixed-order sum on one thread, so
 * results are bitwise identical for any thread count.
 *
 * mi_attn_fused: the three steps in one parallel region when no hook needs
 * scores or pattern in between. Per (b, h, row block) it runs the very same
 * products and row softmax as mi_attn_scores -> mi_softmax_rows ->
 * mi_attn_apply, so z is bitwise the three-step z; the [block, Tk] scores live
 * in a per-thread scratch (cache-sized), or are written to scores_out /
 * pattern_out when those are given (an activation cache wants them).
 *
 * On AVX-512 the products run in attention_avx512.c (no packing, one FMA
 * chain per element, on a per-thread copy of the kv head's K^T); elsewhere
 * through mi_sgemm, the reference they are tested against. A causal fused
 * pass stops the z product at the last key its row block can see: the skipped
 * pattern entries are exactly 0, so z is unchanged for finite v (a non-finite
 * v at a future position no longer turns earlier rows into NaN).
 *
 * Errors: every entry point checks the layout first (mi_attn_check:
 * MI_ERR_VALUE naming the field) and returns MI_ERR_NOMEM if its per-thread
 * scratch cannot be allocated.
 */
#ifndef MI_ATTENTION_H
#define MI_ATTENTION_H

#include <stdint.h>

#include "common/status.h"

/* Element strides of one of q, k, v (the d axis is contiguous). */
typedef struct {
    int64_t batch;   /* between batch items b and b+1 */
    int64_t pos;     /* between positions t and t+1 */
    int64_t head;    /* between heads h and h+1 */
} mi_attn_stride;

typedef struct {
    int64_t batch;       /* B */
    int64_t q_len;       /* Tq */
    int64_t k_len;       /* Tk */
    int64_t offset;      /* key position of query 0 (causal mask), >= 0 */
    int64_t n_heads;     /* H */
    int64_t n_kv_heads;  /* Hkv: 1 <= Hkv, H % Hkv == 0 */
    int64_t d_head;      /* Dh */
    mi_attn_stride q, k, v;
    /* the score rule (0: off; the self layout below leaves both off) */
    int64_t window;      /* sliding window of W keys ending at the query, >= 0 */
    float softcap;       /* scores = softcap * tanh(raw / softcap), >= 0, finite */
} mi_attn_layout;

#define MI_ATTN_ROW_BLOCK 64

/* Self-attention: Tq = Tk = seq, offset 0, Hkv = H, and q, k, v sharing the
 * position and batch strides with heads Dh apart (the fused QKV buffer with
 * row_stride 3*H*Dh, or separate [B,T,H,Dh] arrays with row_stride H*Dh). */
static inline mi_attn_layout mi_attn_self_layout(int64_t batch, int64_t seq, int64_t heads,
                                                 int64_t d_head, int64_t row_stride,
                                                 int64_t batch_stride)
{
    const mi_attn_stride s = {batch_stride, row_stride, d_head};
    const mi_attn_layout L = {batch, seq, seq, 0, heads, heads, d_head, s, s, s, 0, 0.0f};
    return L;
}

/* Keys query i can see: [0, mi_attn_visible(L, causal, i)). */
static inline int64_t mi_attn_visible(const mi_attn_layout *L, int causal, int64_t i)
{
    if (!causal || L->offset + i + 1 >= L->k_len) return L->k_len;
    return L->offset + i + 1;
}

/* The first key query i can see: 0, or with a window W the first key past
 * offset + i - W. */
static inline int64_t mi_attn_first(const mi_attn_layout *L, int64_t i)
{
    const int64_t f = L->offset + i + 1 - L->window;
    return L->window > 0 && f > 0 ? f : 0;
}

/* MI_OK, or MI_ERR_VALUE naming the field: sizes >= 0, offset >= 0,
 * 1 <= n_kv_heads, n_heads % n_kv_heads == 0, k_len >= 1 when q_len >= 1,
 * window >= 0, softcap >= 0 and finite. */
mi_status mi_attn_check(const mi_attn_layout *L);

mi_status mi_attn_scores(const mi_attn_layout *L, const float *q, const float *k, float scale,
                         int causal, const float *key_mask, float *scores);
/* Every key of the pattern row takes part (a hook may have put weight on masked ones). */
mi_status mi_attn_apply(const mi_attn_layout *L, const float *pattern, const float *v, float *z);
mi_status mi_attn_fused(const mi_attn_layout *L, const float *q, const float *k, const float *v,
                        float scale, int causal, const float *key_mask, float *scores_out,
                        float *pattern_out, float *z);

/* Backward through scores -> softmax -> apply (training), per (b, h), kv head h/g:
 *   dv[j]   += sum_i P[i,j] dz[i]
 *   dP[i,j]  = dz[i] . v[j]
 *   dS[i,j]  = P[i,j] (dP[i,j] - sum_j' P[i,j'] dP[i,j'])
 *              times (1 - (scores[i,j] / softcap)^2) with a softcap (the
 *              derivative of softcap * tanh(raw / softcap), from the forward's
 *              capped scores; 0 where P is 0)
 *   dq[i]   += scale sum_j dS[i,j] k[j];   dk[j] += scale sum_i dS[i,j] q[i]
 * dq, dk, dv have the strides of q, k, v (so the fused dQKV buffer
 * [B,T,3,H,Dh] works) and ACCUMULATE; distinct elements must not overlap.
 * pattern [B,H,Tq,Tk] is the forward's, scores [B,H,Tq,Tk] the forward's
 * capped scores (read only with a softcap, may be NULL without: MI_ERR_VALUE
 * if missing); masked entries (P = 0) give no gradient (a window's keys
 * before mi_attn_first have P = 0). causal: P[i, j >= mi_attn_visible(i)] is taken as 0 (skips that
 * work). Parallel over (b, kv head): the dk, dv of a kv head sum its g query
 * heads in increasing h on one thread (bitwise identical for any thread
 * count). O(Tq Tk Dh) per head; scratch of Tq*Tk + Dh*Tk floats per thread. */
mi_status mi_attn_backward(const mi_attn_layout *L, const float *q, const float *k,
                           const float *v, const float *pattern, const float *scores,
                           const float *dz,
                           float scale, int causal, float *dq, float *dk, float *dv);

#endif
