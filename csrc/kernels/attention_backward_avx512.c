/* attention_backward_avx512.c - the backward of one query head, direct loops
 * compiled for AVX-512 (contract of mi_attn_backward in attention.h; the
 * reference is backward_head in attention.c).
 *
 * Shape legend (one (b, h) head, kv head h/g): Tq queries, Tk keys, D d_head;
 * q, dq rows of D floats L->q.pos apart, k, dk rows L->k.pos apart, v, dv
 * rows L->v.pos apart (views into the fused [B,T,3,H,Dh] buffer or a KV
 * cache); dz rows zs = H*D apart; P, dS [Tq, Tk].
 *
 *   forward:  S = scale Q K^T (masked);  P = softmax(S);  Z = P V
 *   dP[i,j] = dZ[i] . V[j]                 (as outer products over d with V^T,
 *                                           so the j lanes vectorise without
 *                                           horizontal sums)
 *   dS[i,j] = scale P[i,j] (dP[i,j] - sum_j' P[i,j'] dP[i,j'])   (row sum in double)
 *             times 1 - (S[i,j] / softcap)^2 with a softcap
 *   dQ[i]  += sum_j dS[i,j] K[j]
 *   dK[j]  += sum_i dS[i,j] Q[i];   dV[j] += sum_i P[i,j] dZ[i]
 * Causal heads visit the keys j < mi_attn_visible(i) only (P is 0 past them).
 * At these sizes (T ~ 50, D ~ 64) four mi_sgemm calls per head cost more in
 * packing than in arithmetic; these loops read each operand once from L1.
 * Every sum runs in a fixed order on the calling thread: deterministic.
 * Only called after mi_cpu_isa() reported AVX-512.
 */
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma")

#include <immintrin.h>
#include <stdint.h>

#include "kernels/attention_kernels.h"

/* Lanes [0, 16) of a 16-wide chunk starting at x that lie below n. */
static inline __mmask16 lanes(int64_t x, int64_t n)
{
    int64_t left = n - x;
    return left >= 16 ? (__mmask16)0xFFFF : left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1u);
}

/* out[d0 .. d0+64) (masked to < D) += sum_{r in [r0, r1)} coef[r * cs] * rows[r * rstride + d]:
 * four independent accumulators so the FMA chain is not latency-bound. */
static inline void axpy_rows(const float *coef, int64_t cs, const float *rows, int64_t rstride,
                             int64_t r0, int64_t r1, int64_t d0, int64_t D, float *out)
{
    __mmask16 m0 = lanes(d0, D), m1 = lanes(d0 + 16, D), m2 = lanes(d0 + 32, D), m3 = lanes(d0 + 48, D);
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t r = r0; r < r1; r++) {
        __m512 c = _mm512_set1_ps(coef[r * cs]);
        const float *x = rows + r * rstride + d0;
        a0 = _mm512_fmadd_ps(c, _mm512_maskz_loadu_ps(m0, x), a0);
        a1 = _mm512_fmadd_ps(c, _mm512_maskz_loadu_ps(m1, x + 16), a1);
        a2 = _mm512_fmadd_ps(c, _mm512_maskz_loadu_ps(m2, x + 32), a2);
        a3 = _mm512_fmadd_ps(c, _mm512_maskz_loadu_ps(m3, x + 48), a3);
    }
    float *o = out + d0;
    _mm512_mask_storeu_ps(o, m0, _mm512_add_ps(_mm512_maskz_loadu_ps(m0, o), a0));
    _mm512_mask_storeu_ps(o + 16, m1, _mm512_add_ps(_mm512_maskz_loadu_ps(m1, o + 16), a1));
    _mm512_mask_storeu_ps(o + 32, m2, _mm512_add_ps(_mm512_maskz_loadu_ps(m2, o + 32), a2));
    _mm512_mask_storeu_ps(o + 48, m3, _mm512_add_ps(_mm512_maskz_loadu_ps(m3, o + 48), a3));
}

void mi_attn_backward_head_avx512(const mi_attn_layout *L, int causal, float scale,
                                  const float *q, const float *k, const float *v,
                                  const float *P, const float *S, const float *dz, float *dq,
                                  float *dk, float *dv, float *work)
{
    const int64_t Tq = L->q_len, Tk = L->k_len, D = L->d_head, zs = L->n_heads * D;
    const int64_t qs = L->q.pos, ks = L->k.pos, vs = L->v.pos;
    const int64_t nk = mi_attn_visible(L, causal, Tq - 1);   /* keys any query sees */
    float *dS = work, *vt = work + Tq * Tk;
    /* vt[d, j] = v[j, d] */
    for (int64_t j = 0; j < nk; j++)
        for (int64_t d = 0; d < D; d++) vt[d * Tk + j] = v[j * vs + d];

    for (int64_t i = 0; i < Tq; i++) {
        const int64_t jn = mi_attn_visible(L, causal, i);
        float *row = dS + i * Tk;
        const float *Pi = P + i * Tk, *dzi = dz + i * zs;
        /* row[j] = dP[i, j] = sum_d dz[i, d] vt[d, j], 64 columns j at a time */
        for (int64_t j0 = 0; j0 < jn; j0 += 64) {
            __mmask16 m0 = lanes(j0, jn), m1 = lanes(j0 + 16, jn), m2 = lanes(j0 + 32, jn),
                      m3 = lanes(j0 + 48, jn);
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (int64_t d = 0; d < D; d++) {
                __m512 c = _mm512_set1_ps(dzi[d]);
                const float *x = vt + d * Tk + j0;
                a0 = _mm512_fmadd_ps(c, _mm512_maskz_loadu_ps(m0, x), a0);
                a1 = _mm512_fmadd_ps(c, _mm512_maskz_loadu_ps(m1, x + 16), a1);
                a2 = _mm512_fmadd_ps(c, _mm512_maskz_loadu_ps(m2, x + 32), a2);
                a3 = _mm512_fmadd_ps(c, _mm512_maskz_loadu_ps(m3, x + 48), a3);
            }
            _mm512_mask_storeu_ps(row + j0, m0, a0);
            _mm512_mask_storeu_ps(row + j0 + 16, m1, a1);
            _mm512_mask_storeu_ps(row + j0 + 32, m2, a2);
            _mm512_mask_storeu_ps(row + j0 + 48, m3, a3);
        }
        /* dS = scale P (dP - sum_j P dP), the row sum in double as the reference */
        double dot = 0.0;
        for (int64_t j = 0; j < jn; j++) dot += (double)Pi[j] * row[j];
        __m512 vdot = _mm512_set1_ps((float)dot), vscale = _mm512_set1_ps(scale);
        for (int64_t j = 0; j < jn; j += 16) {
            __mmask16 m = lanes(j, jn);
            __m512 dp = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, row + j), vdot);
            _mm512_mask_storeu_ps(row + j, m,
                                  _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, Pi + j), dp), vscale));
        }
        if (S) mi_attn_softcap_grad(L->softcap, S + i * Tk, Pi, jn, row);
        /* dq[i] += sum_j dS[i, j] k[j] */
        for (int64_t d0 = 0; d0 < D; d0 += 64) axpy_rows(row, 1, k, ks, 0, jn, d0, D, dq + i * qs);
    }
    /* dk[j] += sum_i dS[i, j] q[i];  dv[j] += sum_i P[i, j] dz[i], over the queries that
     * see key j (i >= j - offset when causal); keys no query sees get nothing */
    for (int64_t j = 0; j < nk; j++) {
        const int64_t i0 = causal && j > L->offset ? j - L->offset : 0;
        for (int64_t d0 = 0; d0 < D; d0 += 64) {
            axpy_rows(dS + j, Tk, q, qs, i0, Tq, d0, D, dk + j * ks);
            axpy_rows(P + j, Tk, dz, zs, i0, Tq, d0, D, dv + j * vs);
        }
    }
}
