/* softmax_avx2.c - the softmax rows (softmax_simd.h) for AVX2+FMA. */
#pragma GCC target("avx2,fma")
#define MI_SIMD_AVX2
#include "kernels/simd.h"
#include "kernels/softmax_simd.h"
