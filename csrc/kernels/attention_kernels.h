/* attention_kernels.h - the AVX-512 pieces of attention.c (internal: for
 * attention.c and the files that define them). Called only after
 * mi_cpu_isa() reported AVX-512.
 */
#ifndef MI_ATTENTION_KERNELS_H
#define MI_ATTENTION_KERNELS_H

#include <stdint.h>

/* attention_avx512.c: C = scale * A @ B for one head's products, nothing packed */
void mi_attn_product_avx512(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                            const float *B, int64_t ldb, float scale, float *C, int64_t ldc);

/* attention_backward_avx512.c: one head with direct AVX-512 loops */
void mi_attn_backward_head_avx512(int64_t T, int64_t D, const float *q, const float *k,
                                  const float *v, int64_t rs, const float *P, const float *dz,
                                  int64_t zs, float scale, int causal, float *dq, float *dk,
                                  float *dv, float *work);

#endif
