/* cross_entropy_kernels.h - the per-ISA cross-entropy row behind
 * cross_entropy.h (internal: for cross_entropy.c and the files that define
 * the tables).
 *
 * Row contract (row): lr [vocab] logits of one row (vocab >= 1), t in [0, vocab);
 * returns loss = logsumexp(lr) - lr[t] and, when dr is not NULL,
 * dr += (softmax(lr) - onehot(t)) * gscale. A NaN logit gives a NaN loss and
 * NaN gradients. The scalar row in cross_entropy.c is the reference (every
 * exp in double); the vector rows (cross_entropy_simd.h) use float exps
 * summed in double, ~1e-7 absolute in the loss.
 */
#ifndef MI_CROSS_ENTROPY_KERNELS_H
#define MI_CROSS_ENTROPY_KERNELS_H

#include <stdint.h>

typedef struct {
    double (*row)(const float *lr, int64_t vocab, int64_t t, double gscale, float *dr);
} mi_cross_entropy_kernels;

extern const mi_cross_entropy_kernels mi_cross_entropy_kernels_avx2;
extern const mi_cross_entropy_kernels mi_cross_entropy_kernels_avx512;

#endif
