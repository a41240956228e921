/* attention.c - attention scores and weighted values (see attention.h). */
#include "kernels/attention.h"

#include <math.h>
#include <stddef.h>

#include "kernels/gemm.h"

void mi_attn_scores(const mi_attn_layout *L, const float *q, const float *k, float scale,
                    int causal, const float *key_mask, float *scores)
{
    const int64_t T = L->seq, H = L->heads, D = L->d_head;
    #pragma omp parallel for schedule(static) collapse(2)
    for (int64_t b = 0; b < L->batch; b++) {
        for (int64_t h = 0; h < H; h++) {
            const float *qb = q + b * L->batch_stride + h * D;
            const float *kb = k + b * L->batch_stride + h * D;
            float *s = scores + (b * H + h) * T * T;
            /* s[i,j] = q[i,:] . k[j,:]  ->  Q @ K^T with row strides */
            mi_sgemm(0, 1, T, T, D, qb, L->row_stride, kb, L->row_stride, NULL, 0.0f, s, T);
            for (int64_t i = 0; i < T; i++) {
                for (int64_t j = 0; j < T; j++) {
                    int masked = (causal && j > i) || (key_mask && key_mask[b * T + j] == 0.0f);
                    s[i * T + j] = masked ? -INFINITY : s[i * T + j] * scale;
                }
            }
        }
    }
}

void mi_attn_apply(const mi_attn_layout *L, const float *pattern, const float *v, float *z)
{
    const int64_t T = L->seq, H = L->heads, D = L->d_head;
    #pragma omp parallel for schedule(static) collapse(2)
    for (int64_t b = 0; b < L->batch; b++) {
        for (int64_t h = 0; h < H; h++) {
            const float *p = pattern + (b * H + h) * T * T;
            const float *vb = v + b * L->batch_stride + h * D;
            float *zb = z + b * T * H * D + h * D;
            mi_sgemm(0, 0, T, D, T, p, T, vb, L->row_stride, NULL, 0.0f, zb, H * D);
        }
    }
}
