/* attention.c - attention scores and weighted values (see attention.h). */
#include "kernels/attention.h"

#include <math.h>
#include <omp.h>
#include <stddef.h>

#include "common/memory.h"
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

/* forward (per b, h):  S = scale Q K^T (masked -inf);  P = softmax(S);  Z = P V */
mi_status mi_attn_backward(const mi_attn_layout *L, const float *q, const float *k,
                           const float *v, const float *pattern, const float *dz,
                           float scale, int causal, float *dq, float *dk, float *dv)
{
    const int64_t B = L->batch, T = L->seq, H = L->heads, D = L->d_head;
    if (B <= 0 || T <= 0 || H <= 0 || D <= 0) return MI_OK;
    int nthreads = omp_get_max_threads();
    float *scratch = mi_malloc(sizeof(float) * (size_t)T * (size_t)nthreads);
    if (!scratch) return mi_fail(MI_ERR_NOMEM, "attention backward: cannot allocate %ld x %d "
                                 "scratch floats", (long)T, nthreads);
    #pragma omp parallel for schedule(static) collapse(2) num_threads(nthreads)
    for (int64_t b = 0; b < B; b++) {
        for (int64_t h = 0; h < H; h++) {
            float *ds = scratch + (size_t)omp_get_thread_num() * (size_t)T;
            const int64_t off = b * L->batch_stride + h * D, rs = L->row_stride;
            const float *P = pattern + (b * H + h) * T * T;
            for (int64_t i = 0; i < T; i++) {
                const float *Pi = P + i * T;
                const float *dzi = dz + (b * T + i) * H * D + h * D;
                const float *qi = q + off + i * rs;
                float *dqi = dq + off + i * rs;
                int64_t jn = causal ? i + 1 : T;
                /* dP[i,j] and its P-weighted mean (double: T terms) */
                double dot = 0.0;
                for (int64_t j = 0; j < jn; j++) {
                    const float *vj = v + off + j * rs;
                    float dp = 0.0f;
                    for (int64_t d = 0; d < D; d++) dp += dzi[d] * vj[d];
                    ds[j] = dp;
                    dot += (double)Pi[j] * dp;
                }
                float fdot = (float)dot;
                for (int64_t j = 0; j < jn; j++) {
                    float p = Pi[j];
                    if (p == 0.0f) continue;   /* masked or underflowed: no gradient */
                    float dsj = p * (ds[j] - fdot) * scale;
                    const float *kj = k + off + j * rs;
                    float *dkj = dk + off + j * rs, *dvj = dv + off + j * rs;
                    for (int64_t d = 0; d < D; d++) {
                        dqi[d] += dsj * kj[d];
                        dkj[d] += dsj * qi[d];
                        dvj[d] += p * dzi[d];
                    }
                }
            }
        }
    }
    mi_free(scratch);
    return MI_OK;
}
