/* activation_avx2.c - the activation kernels (activation_simd.h) for AVX2+FMA. */
#pragma GCC target("avx2,fma")
#define MI_SIMD_AVX2
#include "kernels/simd.h"
#include "kernels/activation_simd.h"
