/* cross_entropy_avx2.c - the cross-entropy row (cross_entropy_simd.h) for AVX2+FMA. */
#pragma GCC target("avx2,fma")
#define MI_SIMD_AVX2
#include "kernels/simd.h"
#include "kernels/cross_entropy_simd.h"
