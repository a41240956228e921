/* norm_avx2.c - the LayerNorm / RMSNorm rows (norm_simd.h) for AVX2+FMA. */
#pragma GCC target("avx2,fma")
#define MI_SIMD_AVX2
#include "kernels/simd.h"
#include "kernels/norm_simd.h"
