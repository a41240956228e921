/* activation_kernels.h - the per-ISA activation kernels behind activation.h
 * (internal: for activation.c and the files that define the tables).
 *
 * Span contract: one contiguous span of n >= 1 elements, called by
 * activation.c once per chunk (parallel over chunks; every output depends on
 * its own input only, so the split never changes a bit).
 *   forward[act](x, y, n):       y = act(x)              y may alias x
 *   backward[act](x, dy, dx, n): dx += dy * act'(x)      dx aliases neither
 *   softcap(cap, x, y, n):       y = cap tanh(x / cap)   y may alias x
 * Rows are indexed by mi_activation. The scalar table in activation.c is the
 * plain reference; the vector tables (activation_simd.h, compiled by
 * activation_avx2.c and activation_avx512.c) match it to a few float32 ulp,
 * relu bitwise.
 */
#ifndef MI_ACTIVATION_KERNELS_H
#define MI_ACTIVATION_KERNELS_H

#include <stdint.h>

#include "kernels/activation.h"

typedef void (*mi_act_forward_fn)(const float *x, float *y, int64_t n);
typedef void (*mi_act_backward_fn)(const float *x, const float *dy, float *dx, int64_t n);

typedef struct {
    mi_act_forward_fn forward[MI_ACT_COUNT];
    mi_act_backward_fn backward[MI_ACT_COUNT];
    void (*softcap)(float cap, const float *x, float *y, int64_t n);
} mi_activation_kernels;

extern const mi_activation_kernels mi_activation_kernels_avx2;
extern const mi_activation_kernels mi_activation_kernels_avx512;

#endif
