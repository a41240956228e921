/* attention.c - attention scores and weighted values (see attention.h). */
#include "kernels/attention.h"

#include <math.h>
#include <omp.h>
#include <stddef.h>

#include "common/memory.h"
#include "common/threads.h"
#include "kernels/cpu.h"
#include "kernels/gemm.h"

#include "kernels/softmax.h"

/* attention_avx512.c: C = scale * A @ B for one head's products, nothing packed */
void mi_attn_product_avx512(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                            const float *B, int64_t ldb, float scale, float *C, int64_t ldc);

/* kt[d*T + j] = k[j*rs + d]: K^T of one head, so that the AVX-512 scores
 * product reads keys as vectors along j. */
static void transpose_keys(const float *kb, int64_t rs, int64_t T, int64_t D, float *kt)
{
    for (int64_t j = 0; j < T; j++)
        for (int64_t d = 0; d < D; d++) kt[d * T + j] = kb[j * rs + d];
}

/* Rows [i0, i1) of head (b, h): s[i, j] = scale * q[i] . k[j], -inf where
 * masked; row stride T. Causal blocks compute keys j < i1 only. kt: the
 * head's K^T (AVX-512 product), or NULL for mi_sgemm. */
static void scores_block(const mi_attn_layout *L, const float *qb, const float *kb,
                         const float *kt, const float *km, float scale, int causal, int64_t i0,
                         int64_t i1, float *s)
{
    const int64_t T = L->seq, ncol = causal ? i1 : T;
    if (kt)
        mi_attn_product_avx512(i1 - i0, ncol, L->d_head, qb + i0 * L->row_stride, L->row_stride,
                               kt, T, scale, s, T);
    else
        mi_sgemm(0, 1, i1 - i0, ncol, L->d_head, qb + i0 * L->row_stride, L->row_stride, kb,
                 L->row_stride, NULL, 0.0f, s, T);
    for (int64_t i = i0; i < i1; i++) {
        float *si = s + (i - i0) * T;
        if (!kt)
            for (int64_t j = 0; j < ncol; j++) si[j] *= scale;
        if (km)
            for (int64_t j = 0; j < ncol; j++)
                if (km[j] == 0.0f) si[j] = -INFINITY;
        /* causal: keys after i (ncol = i1 > i); otherwise none (ncol = T) */
        for (int64_t j = causal ? i + 1 : ncol; j < T; j++) si[j] = -INFINITY;
    }
}

/* z rows [i0, i1) of head (b, h) = p[i0:i1, :nkeys] @ v[:nkeys]. The
 * three-step path passes every key (a hook may have put weight on masked
 * ones); the fused causal path stops at i1, past which the pattern is exactly
 * 0 (with the AVX-512 product's single FMA chain, those terms add nothing). */
static void apply_block(const mi_attn_layout *L, const float *p, const float *vb, int64_t i0,
                        int64_t i1, int64_t nkeys, int avx512, float *zb)
{
    const int64_t HD = L->heads * L->d_head;
    if (avx512)
        mi_attn_product_avx512(i1 - i0, L->d_head, nkeys, p, L->seq, vb, L->row_stride, 1.0f,
                               zb + i0 * HD, HD);
    else
        mi_sgemm(0, 0, i1 - i0, L->d_head, nkeys, p, L->seq, vb, L->row_stride, NULL, 0.0f,
                 zb + i0 * HD, HD);
}

/* Per-thread scratch of `per_thread` floats for `nthreads` threads, or NULL with the error set. */
static float *head_scratch(size_t per_thread, int nthreads, const char *what, int64_t T)
{
    if (per_thread == 0) return NULL;
    float *p = mi_malloc(sizeof(float) * per_thread * (size_t)nthreads);
    if (!p) mi_fail(MI_ERR_NOMEM, "%s: cannot allocate %d x %zu scratch floats (seq %ld)", what,
                    nthreads, per_thread, (long)T);
    return p;
}

mi_status mi_attn_scores(const mi_attn_layout *L, const float *q, const float *k, float scale,
                         int causal, const float *key_mask, float *scores)
{
    const int64_t T = L->seq, H = L->heads, D = L->d_head;
    if (L->batch <= 0 || T <= 0 || H <= 0 || D <= 0) return MI_OK;
    const int avx512 = mi_cpu_isa() >= MI_ISA_AVX512, nthreads = mi_get_num_threads();
    const size_t per_thread = avx512 ? (size_t)D * (size_t)T : 0;
    float *scratch = head_scratch(per_thread, nthreads, "attention scores", T);
    if (per_thread && !scratch) return MI_ERR_NOMEM;
    #pragma omp parallel for schedule(static) collapse(2) num_threads(nthreads)
    for (int64_t b = 0; b < L->batch; b++) {
        for (int64_t h = 0; h < H; h++) {
            const float *qb = q + b * L->batch_stride + h * D;
            const float *kb = k + b * L->batch_stride + h * D;
            const float *km = key_mask ? key_mask + b * T : NULL;
            float *kt = scratch ? scratch + (size_t)omp_get_thread_num() * per_thread : NULL;
            float *s = scores + (b * H + h) * T * T;
            if (kt) transpose_keys(kb, L->row_stride, T, D, kt);
            for (int64_t i0 = 0; i0 < T; i0 += MI_ATTN_ROW_BLOCK) {
                int64_t i1 = i0 + MI_ATTN_ROW_BLOCK < T ? i0 + MI_ATTN_ROW_BLOCK : T;
                scores_block(L, qb, kb, kt, km, scale, causal, i0, i1, s + i0 * T);
            }
        }
    }
    mi_free(scratch);
    return MI_OK;
}

void mi_attn_apply(const mi_attn_layout *L, const float *pattern, const float *v, float *z)
{
    const int64_t T = L->seq, H = L->heads, D = L->d_head;
    const int avx512 = mi_cpu_isa() >= MI_ISA_AVX512;
    #pragma omp parallel for schedule(static) collapse(2) num_threads(mi_get_num_threads())
    for (int64_t b = 0; b < L->batch; b++) {
        for (int64_t h = 0; h < H; h++) {
            const float *p = pattern + (b * H + h) * T * T;
            const float *vb = v + b * L->batch_stride + h * D;
            float *zb = z + b * T * H * D + h * D;
            for (int64_t i0 = 0; i0 < T; i0 += MI_ATTN_ROW_BLOCK) {
                int64_t i1 = i0 + MI_ATTN_ROW_BLOCK < T ? i0 + MI_ATTN_ROW_BLOCK : T;
                apply_block(L, p + i0 * T, vb, i0, i1, T, avx512, zb);
            }
        }
    }
}

mi_status mi_attn_fused(const mi_attn_layout *L, const float *q, const float *k, const float *v,
                        float scale, int causal, const float *key_mask, float *scores_out,
                        float *pattern_out, float *z)
{
    const int64_t B = L->batch, T = L->seq, H = L->heads, D = L->d_head;
    if (B <= 0 || T <= 0 || H <= 0 || D <= 0) return MI_OK;
    const int avx512 = mi_cpu_isa() >= MI_ISA_AVX512, nthreads = mi_get_num_threads();
    /* per thread: a [block, T] of scores unless both outputs are kept, K^T for AVX-512 */
    const size_t block = scores_out && pattern_out ? 0 : (size_t)MI_ATTN_ROW_BLOCK * (size_t)T;
    const size_t per_thread = block + (avx512 ? (size_t)D * (size_t)T : 0);
    float *scratch = head_scratch(per_thread, nthreads, "attention", T);
    if (per_thread && !scratch) return MI_ERR_NOMEM;
    #pragma omp parallel for schedule(static) collapse(2) num_threads(nthreads)
    for (int64_t b = 0; b < B; b++) {
        for (int64_t h = 0; h < H; h++) {
            float *mine = scratch ? scratch + (size_t)omp_get_thread_num() * per_thread : NULL;
            float *kt = avx512 ? mine + block : NULL;
            const float *qb = q + b * L->batch_stride + h * D;
            const float *kb = k + b * L->batch_stride + h * D;
            const float *vb = v + b * L->batch_stride + h * D;
            const float *km = key_mask ? key_mask + b * T : NULL;
            float *zb = z + b * T * H * D + h * D;
            size_t head = (size_t)(b * H + h) * (size_t)T * (size_t)T;
            if (kt) transpose_keys(kb, L->row_stride, T, D, kt);
            for (int64_t i0 = 0; i0 < T; i0 += MI_ATTN_ROW_BLOCK) {
                int64_t i1 = i0 + MI_ATTN_ROW_BLOCK < T ? i0 + MI_ATTN_ROW_BLOCK : T;
                float *s = scores_out ? scores_out + head + (size_t)(i0 * T) : mine;
                /* softmax in place in the scratch unless scores must be kept */
                float *p = pattern_out ? pattern_out + head + (size_t)(i0 * T) : mine;
                scores_block(L, qb, kb, kt, km, scale, causal, i0, i1, s);
                for (int64_t i = 0; i < i1 - i0; i++) {
                    /* a causal row's keys after i0 + i are -inf: their softmax is exactly 0
                     * and adds 0 to the row sum, so only the live ones go through exp */
                    const int64_t live = causal ? i0 + i + 1 : T;
                    mi_softmax_row(s + i * T, p + i * T, live);
                    for (int64_t j = live; j < T; j++) p[i * T + j] = 0.0f;
                }
                apply_block(L, p, vb, i0, i1, avx512 && causal ? i1 : T, avx512, zb);
            }
        }
    }
    mi_free(scratch);
    return MI_OK;
}

/* attention_backward_avx512.c: one head with direct AVX-512 loops */
void mi_attn_backward_head_avx512(int64_t T, int64_t D, const float *q, const float *k,
                                  const float *v, int64_t rs, const float *P, const float *dz,
                                  int64_t zs, float scale, int causal, float *dq, float *dk,
                                  float *dv, float *work);

/* forward (per b, h):  S = scale Q K^T (masked -inf);  P = softmax(S);  Z = P V
 * backward as four products and a row softmax backward, all through mi_sgemm
 * (which runs on the calling thread inside this parallel region):
 *   dV += P^T dZ;   dP = dZ V^T;   dS = scale P (dP - rowsum(P dP));
 *   dQ += dS K;     dK += dS^T Q */
mi_status mi_attn_backward(const mi_attn_layout *L, const float *q, const float *k,
                           const float *v, const float *pattern, const float *dz,
                           float scale, int causal, float *dq, float *dk, float *dv)
{
    const int64_t B = L->batch, T = L->seq, H = L->heads, D = L->d_head;
    if (B <= 0 || T <= 0 || H <= 0 || D <= 0) return MI_OK;
    int nthreads = mi_get_num_threads();
    /* per thread: dS [T, T], and for the AVX-512 head V^T [D, T] and two D rows */
    const size_t per_thread = (size_t)T * (size_t)T + (size_t)D * (size_t)T + 2 * (size_t)D + 16;
    float *scratch = mi_malloc(sizeof(float) * per_thread * (size_t)nthreads);
    if (!scratch) return mi_fail(MI_ERR_NOMEM, "attention backward: cannot allocate %d x "
                                 "[%ld, %ld] scratch floats", nthreads, (long)T, (long)T);
    const int64_t rs = L->row_stride, zs = H * D;
    if (mi_cpu_isa() >= MI_ISA_AVX512) {
        #pragma omp parallel for schedule(static) collapse(2) num_threads(nthreads)
        for (int64_t b = 0; b < B; b++)
            for (int64_t h = 0; h < H; h++) {
                const int64_t off = b * L->batch_stride + h * D;
                mi_attn_backward_head_avx512(T, D, q + off, k + off, v + off, rs,
                                             pattern + (b * H + h) * T * T, dz + b * T * zs + h * D, zs,
                                             scale, causal, dq + off, dk + off, dv + off,
                                             scratch + (size_t)omp_get_thread_num() * per_thread);
            }
        mi_free(scratch);
        return MI_OK;
    }
    #pragma omp parallel for schedule(static) collapse(2) num_threads(nthreads)
    for (int64_t b = 0; b < B; b++) {
        for (int64_t h = 0; h < H; h++) {
            float *dS = scratch + (size_t)omp_get_thread_num() * (size_t)T * (size_t)T;
            const int64_t off = b * L->batch_stride + h * D;
            const float *P = pattern + (b * H + h) * T * T;
            const float *dzb = dz + b * T * zs + h * D;
            /* dV[j] += sum_i P[i,j] dZ[i] */
            mi_sgemm(1, 0, T, D, T, P, T, dzb, zs, NULL, 1.0f, dv + off, rs);
            /* dP[i,j] = dZ[i] . V[j] */
            mi_sgemm(0, 1, T, T, D, dzb, zs, v + off, rs, NULL, 0.0f, dS, T);
            for (int64_t i = 0; i < T; i++) {
                const float *Pi = P + i * T;
                float *dSi = dS + i * T;
                int64_t jn = causal ? i + 1 : T;   /* P[i, j > i] = 0 when causal */
                double dot = 0.0;
                for (int64_t j = 0; j < jn; j++) dot += (double)Pi[j] * dSi[j];
                float fdot = (float)dot;
                for (int64_t j = 0; j < jn; j++) dSi[j] = Pi[j] * (dSi[j] - fdot) * scale;
                for (int64_t j = jn; j < T; j++) dSi[j] = 0.0f;
            }
            /* dQ[i] += sum_j dS[i,j] K[j];  dK[j] += sum_i dS[i,j] Q[i] */
            mi_sgemm(0, 0, T, D, T, dS, T, k + off, rs, NULL, 1.0f, dq + off, rs);
            mi_sgemm(1, 0, T, D, T, dS, T, q + off, rs, NULL, 1.0f, dk + off, rs);
        }
    }
    mi_free(scratch);
    return MI_OK;
}
