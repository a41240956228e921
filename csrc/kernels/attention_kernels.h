/* attention_kernels.h - internal pieces of attention.c (not a public contract):
 * the AVX-512 routines it calls after mi_cpu_isa() reported AVX-512. Each one
 * has a plain counterpart in attention.c (mi_sgemm products, the per-head
 * reference backward) that the tests compare it with.
 */
#ifndef MI_ATTENTION_KERNELS_H
#define MI_ATTENTION_KERNELS_H

#include <stdint.h>

#include "kernels/attention.h"

/* attention_avx512.c: C[i*ldc + j] = scale * sum_{p < K} A[i*lda + p] * B[p*ldb + j]
 * for i < M, j < N; one FMA chain per element in increasing p. */
void mi_attn_product_avx512(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                            const float *B, int64_t ldb, float scale, float *C, int64_t ldc);

/* attention_backward_avx512.c: the backward of one query head (contract of
 * mi_attn_backward). q, dq point at the head's (b, h) element 0, k, v, dk, dv
 * at its kv head's; P [Tq, Tk] is the head's pattern, S its capped scores
 * (NULL without a softcap), dz its z gradient (row stride H*Dh). work:
 * Tq*Tk + Dh*Tk floats. */
void mi_attn_backward_head_avx512(const mi_attn_layout *L, int causal, float scale,
                                  const float *q, const float *k, const float *v,
                                  const float *P, const float *S, const float *dz, float *dq,
                                  float *dk, float *dv, float *work);

/* attention.c: dS[j] *= 1 - (S[j] / cap)^2 for j < n, the derivative of
 * cap * tanh(x / cap) written through the capped score S; 0 where P[j] is 0
 * (masked keys, whose S is -inf). One plain loop, shared by both backward
 * heads so they apply the very same factor. */
void mi_attn_softcap_grad(float cap, const float *S, const float *P, int64_t n, float *dS);

#endif
