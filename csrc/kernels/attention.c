/* attention.c - attention scores, weighted values and their backward (see attention.h). */
#include "kernels/attention.h"

#include <math.h>
#include <omp.h>
#include <stddef.h>

#include "common/memory.h"
#include "common/threads.h"
#include "kernels/activation.h"
#include "kernels/attention_kernels.h"
#include "kernels/cpu.h"
#include "kernels/gemm.h"
#include "kernels/softmax.h"

mi_status mi_attn_check(const mi_attn_layout *L)
{
    const struct { const char *name; int64_t value; } sizes[] = {
        {"batch", L->batch}, {"q_len", L->q_len}, {"k_len", L->k_len}, {"offset", L->offset},
        {"n_heads", L->n_heads}, {"d_head", L->d_head},
    };
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        if (sizes[i].value < 0)
            return mi_fail(MI_ERR_VALUE, "attention: %s must be >= 0, got %lld", sizes[i].name,
                           (long long)sizes[i].value);
    if (L->n_kv_heads < 1 || L->n_heads % L->n_kv_heads != 0)
        return mi_fail(MI_ERR_VALUE, "attention: n_kv_heads must be >= 1 and divide n_heads "
                       "(%lld), got %lld", (long long)L->n_heads, (long long)L->n_kv_heads);
    if (L->window < 0)
        return mi_fail(MI_ERR_VALUE, "attention: window must be >= 0 (0: no sliding window), "
                       "got %lld", (long long)L->window);
    if (!(L->softcap >= 0.0f) || !isfinite(L->softcap))
        return mi_fail(MI_ERR_VALUE, "attention: softcap must be finite and >= 0 (0: off), got %g",
                       (double)L->softcap);
    if (L->q_len > 0 && L->k_len < 1)
        return mi_fail(MI_ERR_VALUE, "attention: k_len must be >= 1 for %lld queries, got %lld",
                       (long long)L->q_len, (long long)L->k_len);
    return MI_OK;
}

/* Nothing to compute (every output is empty). */
static int empty(const mi_attn_layout *L)
{
    return L->batch == 0 || L->q_len == 0 || L->n_heads == 0 || L->d_head == 0;
}

/* Element (b, 0, h, 0) of a q/k/v array with strides s. */
static inline const float *head_at(const float *x, const mi_attn_stride *s, int64_t b, int64_t h)
{
    return x + b * s->batch + h * s->head;
}

/* The kv head query head h reads. */
static inline int64_t kv_head(const mi_attn_layout *L, int64_t h)
{
    return h / (L->n_heads / L->n_kv_heads);
}

/* kt[d*Tk + j] = k[j*pos + d] for keys j < nk: K^T of one kv head, so that
 * the AVX-512 scores product reads keys as vectors along j. */
static void transpose_keys(const float *kb, int64_t pos, int64_t nk, int64_t Tk, int64_t D,
                           float *kt)
{
    for (int64_t j = 0; j < nk; j++)
        for (int64_t d = 0; d < D; d++) kt[d * Tk + j] = kb[j * pos + d];
}

/* Rows [i0, i1) of head (b, h): s[i, j] = scale * q[i] . k[j], soft-capped
 * (cap * tanh(s / cap)) with a softcap, -inf where masked (padding, the
 * window's keys before mi_attn_first, causal keys past mi_attn_visible); row
 * stride Tk. Causal blocks compute the keys the block's last row
 * sees only. kt: the kv head's K^T (AVX-512 product), or NULL for mi_sgemm. */
static void scores_block(const mi_attn_layout *L, const float *qb, const float *kb,
                         const float *kt, const float *km, float scale, int causal, int64_t i0,
                         int64_t i1, float *s)
{
    const int64_t Tk = L->k_len, ncol = mi_attn_visible(L, causal, i1 - 1);
    if (kt)
        mi_attn_product_avx512(i1 - i0, ncol, L->d_head, qb + i0 * L->q.pos, L->q.pos, kt, Tk,
                               scale, s, Tk);
    else
        mi_sgemm(0, 1, i1 - i0, ncol, L->d_head, qb + i0 * L->q.pos, L->q.pos, kb, L->k.pos, NULL,
                 0.0f, s, Tk);
    for (int64_t i = i0; i < i1; i++) {
        float *si = s + (i - i0) * Tk;
        if (!kt)
            for (int64_t j = 0; j < ncol; j++) si[j] *= scale;
        if (L->softcap > 0.0f) mi_softcap_span(L->softcap, si, si, ncol);
        for (int64_t j = 0, j1 = mi_attn_first(L, i); j < j1 && j < ncol; j++) si[j] = -INFINITY;
        if (km)
            for (int64_t j = 0; j < ncol; j++)
                if (km[j] == 0.0f) si[j] = -INFINITY;
        for (int64_t j = mi_attn_visible(L, causal, i); j < Tk; j++) si[j] = -INFINITY;
    }
}

/* z rows [i0, i1) of head (b, h) = p[i0:i1, :nkeys] @ v[:nkeys]. The
 * three-step path passes every key (a hook may have put weight on masked
 * ones); the fused causal path stops at the block's last visible key, past
 * which the pattern is exactly 0 (with the AVX-512 product's single FMA
 * chain, those terms add nothing). */
static void apply_block(const mi_attn_layout *L, const float *p, const float *vb, int64_t i0,
                        int64_t i1, int64_t nkeys, int avx512, float *zb)
{
    const int64_t HD = L->n_heads * L->d_head;
    if (avx512)
        mi_attn_product_avx512(i1 - i0, L->d_head, nkeys, p, L->k_len, vb, L->v.pos, 1.0f,
                               zb + i0 * HD, HD);
    else
        mi_sgemm(0, 0, i1 - i0, L->d_head, nkeys, p, L->k_len, vb, L->v.pos, NULL, 0.0f,
                 zb + i0 * HD, HD);
}

/* Per-thread scratch of `per_thread` floats for `nthreads` threads, or NULL with the error set. */
static float *head_scratch(size_t per_thread, int nthreads, const char *what,
                           const mi_attn_layout *L)
{
    if (per_thread == 0) return NULL;
    float *p = mi_malloc(sizeof(float) * per_thread * (size_t)nthreads);
    if (!p) mi_fail(MI_ERR_NOMEM, "%s: cannot allocate %d x %zu scratch floats (q_len %lld, "
                    "k_len %lld)", what, nthreads, per_thread, (long long)L->q_len,
                    (long long)L->k_len);
    return p;
}

/* Query rows [i0, i0 + MI_ATTN_ROW_BLOCK) clipped to Tq. */
static inline int64_t block_end(const mi_attn_layout *L, int64_t i0)
{
    return i0 + MI_ATTN_ROW_BLOCK < L->q_len ? i0 + MI_ATTN_ROW_BLOCK : L->q_len;
}

mi_status mi_attn_scores(const mi_attn_layout *L, const float *q, const float *k, float scale,
                         int causal, const float *key_mask, float *scores)
{
    MI_TRY(mi_attn_check(L));
    if (empty(L)) return MI_OK;
    const int64_t Tq = L->q_len, Tk = L->k_len, H = L->n_heads, D = L->d_head;
    const int64_t nk = mi_attn_visible(L, causal, Tq - 1);   /* keys any query sees */
    const int avx512 = mi_cpu_isa() >= MI_ISA_AVX512, nthreads = mi_get_num_threads();
    const size_t per_thread = avx512 ? (size_t)D * (size_t)Tk : 0;
    float *scratch = head_scratch(per_thread, nthreads, "attention scores", L);
    if (per_thread && !scratch) return MI_ERR_NOMEM;
    #pragma omp parallel for schedule(static) collapse(2) num_threads(nthreads)
    for (int64_t b = 0; b < L->batch; b++) {
        for (int64_t h = 0; h < H; h++) {
            const float *qb = head_at(q, &L->q, b, h), *kb = head_at(k, &L->k, b, kv_head(L, h));
            const float *km = key_mask ? key_mask + b * Tk : NULL;
            float *kt = scratch ? scratch + (size_t)omp_get_thread_num() * per_thread : NULL;
            float *s = scores + (b * H + h) * Tq * Tk;
            if (kt) transpose_keys(kb, L->k.pos, nk, Tk, D, kt);
            for (int64_t i0 = 0; i0 < Tq; i0 += MI_ATTN_ROW_BLOCK)
                scores_block(L, qb, kb, kt, km, scale, causal, i0, block_end(L, i0), s + i0 * Tk);
        }
    }
    mi_free(scratch);
    return MI_OK;
}

mi_status mi_attn_apply(const mi_attn_layout *L, const float *pattern, const float *v, float *z)
{
    MI_TRY(mi_attn_check(L));
    if (empty(L)) return MI_OK;
    const int64_t Tq = L->q_len, Tk = L->k_len, H = L->n_heads, D = L->d_head;
    const int avx512 = mi_cpu_isa() >= MI_ISA_AVX512;
    #pragma omp parallel for schedule(static) collapse(2) num_threads(mi_get_num_threads())
    for (int64_t b = 0; b < L->batch; b++) {
        for (int64_t h = 0; h < H; h++) {
            const float *p = pattern + (b * H + h) * Tq * Tk;
            const float *vb = head_at(v, &L->v, b, kv_head(L, h));
            float *zb = z + b * Tq * H * D + h * D;
            for (int64_t i0 = 0; i0 < Tq; i0 += MI_ATTN_ROW_BLOCK)
                apply_block(L, p + i0 * Tk, vb, i0, block_end(L, i0), Tk, avx512, zb);
        }
    }
    return MI_OK;
}

mi_status mi_attn_fused(const mi_attn_layout *L, const float *q, const float *k, const float *v,
                        float scale, int causal, const float *key_mask, float *scores_out,
                        float *pattern_out, float *z)
{
    MI_TRY(mi_attn_check(L));
    if (empty(L)) return MI_OK;
    const int64_t Tq = L->q_len, Tk = L->k_len, H = L->n_heads, D = L->d_head;
    const int64_t nk = mi_attn_visible(L, causal, Tq - 1);
    const int avx512 = mi_cpu_isa() >= MI_ISA_AVX512, nthreads = mi_get_num_threads();
    /* per thread: a [block, Tk] of scores unless both outputs are kept, K^T for AVX-512 */
    const int64_t rows = Tq < MI_ATTN_ROW_BLOCK ? Tq : MI_ATTN_ROW_BLOCK;
    const size_t block = scores_out && pattern_out ? 0 : (size_t)rows * (size_t)Tk;
    const size_t per_thread = block + (avx512 ? (size_t)D * (size_t)Tk : 0);
    float *scratch = head_scratch(per_thread, nthreads, "attention", L);
    if (per_thread && !scratch) return MI_ERR_NOMEM;
    #pragma omp parallel for schedule(static) collapse(2) num_threads(nthreads)
    for (int64_t b = 0; b < L->batch; b++) {
        for (int64_t h = 0; h < H; h++) {
            float *mine = scratch ? scratch + (size_t)omp_get_thread_num() * per_thread : NULL;
            float *kt = avx512 ? mine + block : NULL;
            const int64_t g = kv_head(L, h);
            const float *qb = head_at(q, &L->q, b, h), *kb = head_at(k, &L->k, b, g),
                        *vb = head_at(v, &L->v, b, g);
            const float *km = key_mask ? key_mask + b * Tk : NULL;
            float *zb = z + b * Tq * H * D + h * D;
            size_t head = (size_t)(b * H + h) * (size_t)Tq * (size_t)Tk;
            if (kt) transpose_keys(kb, L->k.pos, nk, Tk, D, kt);
            for (int64_t i0 = 0; i0 < Tq; i0 += MI_ATTN_ROW_BLOCK) {
                const int64_t i1 = block_end(L, i0);
                float *s = scores_out ? scores_out + head + (size_t)(i0 * Tk) : mine;
                /* softmax in place in the scratch unless scores must be kept */
                float *p = pattern_out ? pattern_out + head + (size_t)(i0 * Tk) : mine;
                scores_block(L, qb, kb, kt, km, scale, causal, i0, i1, s);
                for (int64_t i = 0; i < i1 - i0; i++) {
                    /* a causal row's keys past the visible ones are -inf: their softmax is
                     * exactly 0 and adds 0 to the row sum, so only the live ones go through exp */
                    const int64_t live = mi_attn_visible(L, causal, i0 + i);
                    mi_softmax_row(s + i * Tk, p + i * Tk, live);
                    for (int64_t j = live; j < Tk; j++) p[i * Tk + j] = 0.0f;
                }
                apply_block(L, p, vb, i0, i1, avx512 ? mi_attn_visible(L, causal, i1 - 1) : Tk,
                            avx512, zb);
            }
        }
    }
    mi_free(scratch);
    return MI_OK;
}

/* The backward of one query head through four mi_sgemm products (which run on
 * the calling thread inside a parallel region) and a row softmax backward;
 * the reference for mi_attn_backward_head_avx512, same arguments. dS: Tq*Tk floats.
 *   forward:  S = cap(scale Q K^T) (masked -inf);  P = softmax(S);  Z = P V
 *   dV += P^T dZ;   dP = dZ V^T;   dS = scale P (dP - rowsum(P dP)) cap'(S);
 *   dQ += dS K;     dK += dS^T Q */
static void backward_head(const mi_attn_layout *L, int causal, float scale, const float *q,
                          const float *k, const float *v, const float *P, const float *S,
                          const float *dz, float *dq, float *dk, float *dv, float *dS)
{
    const int64_t Tq = L->q_len, Tk = L->k_len, D = L->d_head, zs = L->n_heads * D;
    /* dV[j] += sum_i P[i,j] dZ[i] */
    mi_sgemm(1, 0, Tk, D, Tq, P, Tk, dz, zs, NULL, 1.0f, dv, L->v.pos);
    /* dP[i,j] = dZ[i] . V[j] */
    mi_sgemm(0, 1, Tq, Tk, D, dz, zs, v, L->v.pos, NULL, 0.0f, dS, Tk);
    for (int64_t i = 0; i < Tq; i++) {
        const float *Pi = P + i * Tk;
        float *dSi = dS + i * Tk;
        const int64_t jn = mi_attn_visible(L, causal, i);   /* P[i, j >= jn] = 0 when causal */
        double dot = 0.0;
        for (int64_t j = 0; j < jn; j++) dot += (double)Pi[j] * dSi[j];
        float fdot = (float)dot;
        for (int64_t j = 0; j < jn; j++) dSi[j] = Pi[j] * (dSi[j] - fdot) * scale;
        for (int64_t j = jn; j < Tk; j++) dSi[j] = 0.0f;
        if (S) mi_attn_softcap_grad(L->softcap, S + i * Tk, Pi, jn, dSi);
    }
    /* dQ[i] += sum_j dS[i,j] K[j];  dK[j] += sum_i dS[i,j] Q[i] */
    mi_sgemm(0, 0, Tq, D, Tk, dS, Tk, k, L->k.pos, NULL, 1.0f, dq, L->q.pos);
    mi_sgemm(1, 0, Tk, D, Tq, dS, Tk, q, L->q.pos, NULL, 1.0f, dk, L->k.pos);
}

void mi_attn_softcap_grad(float cap, const float *S, const float *P, int64_t n, float *dS)
{
    for (int64_t j = 0; j < n; j++) {
        const float t = S[j] / cap;
        dS[j] = P[j] == 0.0f ? 0.0f : dS[j] * (1.0f - t * t);
    }
}

mi_status mi_attn_backward(const mi_attn_layout *L, const float *q, const float *k,
                           const float *v, const float *pattern, const float *scores,
                           const float *dz, float scale, int causal, float *dq, float *dk,
                           float *dv)
{
    MI_TRY(mi_attn_check(L));
    if (L->softcap > 0.0f && !scores)
        return mi_fail(MI_ERR_VALUE, "attention backward: a softcap needs the forward's scores");
    if (empty(L)) return MI_OK;
    const int64_t Tq = L->q_len, Tk = L->k_len, H = L->n_heads, D = L->d_head;
    const int64_t G = L->n_kv_heads, group = H / G;
    const int avx512 = mi_cpu_isa() >= MI_ISA_AVX512, nthreads = mi_get_num_threads();
    /* per thread: dS [Tq, Tk], and V^T [D, Tk] for the AVX-512 head */
    const size_t per_thread = (size_t)Tq * (size_t)Tk + (avx512 ? (size_t)D * (size_t)Tk : 0);
    float *scratch = head_scratch(per_thread, nthreads, "attention backward", L);
    if (!scratch) return MI_ERR_NOMEM;
    /* one task per kv head: its dk, dv sum the group's query heads in increasing h */
    #pragma omp parallel for schedule(static) collapse(2) num_threads(nthreads)
    for (int64_t b = 0; b < L->batch; b++) {
        for (int64_t g = 0; g < G; g++) {
            float *work = scratch + (size_t)omp_get_thread_num() * per_thread;
            const int64_t kof = b * L->k.batch + g * L->k.head, vof = b * L->v.batch + g * L->v.head;
            for (int64_t h = g * group; h < (g + 1) * group; h++) {
                const int64_t qof = b * L->q.batch + h * L->q.head;
                const float *P = pattern + (b * H + h) * Tq * Tk, *dzb = dz + (b * Tq * H + h) * D;
                const float *Sc = L->softcap > 0.0f ? scores + (b * H + h) * Tq * Tk : NULL;
                if (avx512)
                    mi_attn_backward_head_avx512(L, causal, scale, q + qof, k + kof, v + vof, P,
                                                 Sc, dzb, dq + qof, dk + kof, dv + vof, work);
                else
                    backward_head(L, causal, scale, q + qof, k + kof, v + vof, P, Sc, dzb,
                                  dq + qof, dk + kof, dv + vof, work);
            }
        }
    }
    mi_free(scratch);
    return MI_OK;
}
