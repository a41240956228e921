/* qk_scores.c - QK^T scores per head pair (see qk_scores.h). */
#include "analysis/qk_scores.h"

#include <math.h>
#include <omp.h>
#include <string.h>

#include "common/memory.h"
#include "common/threads.h"
#include "kernels/gemm.h"
#include "kernels/softmax.h"

mi_status mi_qk_scores(const mi_qk_args *a, int64_t n_pairs, const int32_t *pairs,
                       float *scores, float *pattern,
                       const mi_hist_bins *hs, int64_t *hist_scores,
                       const mi_hist_bins *hp, int64_t *hist_pattern)
{
    mi_hist_bins hs_local, hp_local;
    if (hs) { hs_local = *hs; mi_hist_prepare(&hs_local); hs = &hs_local; }
    if (hp) { hp_local = *hp; mi_hist_prepare(&hp_local); hp = &hp_local; }
    for (int64_t p = 0; p < n_pairs; p++)
        for (int c = 0; c < 2; c++)
            if (pairs[2 * p + c] < 0 || pairs[2 * p + c] >= a->n_heads)
                return mi_fail(MI_ERR_INDEX, "qk_scores: pair %lld names head %d, there are %lld "
                               "heads", (long long)p, pairs[2 * p + c], (long long)a->n_heads);
    int64_t P = a->q_pos, K = a->k_pos, block = P * K;
    int64_t nbs = hs ? hs->n_bins : 0, nbp = hp ? hp->n_bins : 0;
    int nt = mi_get_num_threads();
    int need_pattern = pattern || hist_pattern;
    /* per thread: a score block, a pattern block, its histograms */
    size_t per_thread = mi_align_up(sizeof(float) * (size_t)block) * 2
                        + mi_align_up(sizeof(int64_t) * (size_t)(n_pairs * (nbs + nbp)))
                        + MI_ALIGN;   /* never 0 bytes (empty inputs) */
    char *scratch = mi_calloc(per_thread * (size_t)nt);
    if (!scratch) return mi_fail(MI_ERR_NOMEM, "qk_scores: out of memory for %d blocks of "
                                 "%lld x %lld scores", nt, (long long)P, (long long)K);
    float divisor = sqrtf((float)a->d_head);
    int64_t offset = K - P;   /* causal: query i sees keys j <= i + offset */

    #pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num();
        char *mine = scratch + per_thread * (size_t)t;
        float *s_blk = (float *)mine;
        float *p_blk = (float *)(mine + mi_align_up(sizeof(float) * (size_t)block));
        int64_t *hist = (int64_t *)(mine + 2 * mi_align_up(sizeof(float) * (size_t)block));
        #pragma omp for schedule(dynamic, 1)
        for (int64_t task = 0; task < n_pairs * a->batch; task++) {
            int64_t p = task / a->batch, b = task % a->batch;
            float *S = scores ? scores + task * block : s_blk;
            float *Pm = pattern ? pattern + task * block : p_blk;
            const float *Q = a->q + b * a->q_sb + pairs[2 * p] * a->q_sh;
            const float *Kh = a->k + b * a->k_sb + pairs[2 * p + 1] * a->k_sh;
            /* inside a parallel region mi_sgemm runs on this thread */
            mi_sgemm(0, 1, P, K, a->d_head, Q, a->q_sp, Kh, a->k_sp, NULL, 0.0f, S, K);
            for (int64_t i = 0; i < P; i++)
                for (int64_t j = 0; j < K; j++) {
                    float v = a->divide_sqrt ? S[i * K + j] / divisor : S[i * K + j] * a->scale;
                    int keep = !(a->causal && j > i + offset)
                               && !(a->mask && !a->mask[b * a->m_sb + i * a->m_sq + j * a->m_sk]);
                    S[i * K + j] = keep ? v : -INFINITY;
                    if (keep && hs) {
                        int64_t bin = mi_hist_bin_f32(hs, v);
                        if (bin >= 0) hist[p * nbs + bin]++;
                    }
                }
            if (!need_pattern) continue;
            mi_softmax_rows(S, Pm, P, K);
            if (!hp) continue;
            int64_t *hpp = hist + n_pairs * nbs + p * nbp;
            for (int64_t i = 0; i < P; i++)
                for (int64_t j = 0; j < K; j++) {
                    if (S[i * K + j] == -INFINITY) continue;   /* masked: not counted */
                    int64_t bin = mi_hist_bin_f32(hp, Pm[i * K + j]);
                    if (bin >= 0) hpp[bin]++;
                }
        }
    }
    if (hist_scores) memset(hist_scores, 0, sizeof(int64_t) * (size_t)(n_pairs * nbs));
    if (hist_pattern) memset(hist_pattern, 0, sizeof(int64_t) * (size_t)(n_pairs * nbp));
    for (int t = 0; t < nt; t++) {
        const int64_t *hist = (const int64_t *)(scratch + per_thread * (size_t)t
                                                + 2 * mi_align_up(sizeof(float) * (size_t)block));
        for (int64_t i = 0; hist_scores && i < n_pairs * nbs; i++) hist_scores[i] += hist[i];
        for (int64_t i = 0; hist_pattern && i < n_pairs * nbp; i++)
            hist_pattern[i] += hist[n_pairs * nbs + i];
    }
    mi_free(scratch);
    return MI_OK;
}
