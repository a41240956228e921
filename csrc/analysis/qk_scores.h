/* qk_scores.h - QK^T attention scores for pairs of heads, optionally only histogrammed.
 *
 * Shapes (element strides, the last dim contiguous, so strided hook views
 * such as hook_q inside the fused [batch, pos, 3, head, d_head] buffer are
 * read in place):
 *   q[batch, q_pos, n_heads, d_head]   strides q_sb, q_sp, q_sh
 *   k[batch, k_pos, n_heads, d_head]   strides k_sb, k_sp, k_sh
 *   pairs[n_pairs, 2]                  (query head, key head)
 *   scores, pattern: [n_pairs, batch, q_pos, k_pos] or NULL
 *   hist_scores, hist_pattern: [n_pairs, n_bins] int64 or NULL
 *
 * score = (q_h1 . k_h2) / sqrt(d_head) (divide_sqrt, as the notebooks and
 * HF GPT-2 write it) or * scale. Entries where the keep-mask is 0 (or above
 * the diagonal when causal) are -inf; the pattern is softmax over keys
 * (kernels/softmax.h: masked -> 0, a fully masked row -> 0). Histograms
 * count unmasked entries only, with np.histogram's bin rules, and never
 * store a score: each (pair, batch) block lives in a per-thread scratch.
 * Parallel over (pair, batch) blocks; integer counts summed per thread.
 */
#ifndef MI_QK_SCORES_H
#define MI_QK_SCORES_H

#include <stdint.h>

#include "analysis/histogram.h"
#include "common/status.h"

typedef struct {
    const float *q, *k;
    int64_t batch, q_pos, k_pos, n_heads, d_head;
    int64_t q_sb, q_sp, q_sh, k_sb, k_sp, k_sh;
    int divide_sqrt;        /* 1: divide by sqrtf(d_head); 0: multiply by scale */
    float scale;
    const uint8_t *mask;    /* keep-mask, NULL for none; strides below (0 broadcasts) */
    int64_t m_sb, m_sq, m_sk;
    int causal;             /* key j > query i is masked (k_pos - q_pos offset, as TL) */
} mi_qk_args;

mi_status mi_qk_scores(const mi_qk_args *a, int64_t n_pairs, const int32_t *pairs,
                       float *scores, float *pattern,
                       const mi_hist_bins *hs, int64_t *hist_scores,
                       const mi_hist_bins *hp, int64_t *hist_pattern);

#endif
