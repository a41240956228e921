/* softmax_avx512.c - the softmax rows (softmax_simd.h) for AVX-512. */
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq")
#define MI_SIMD_AVX512
#include "kernels/simd.h"
#include "kernels/softmax_simd.h"
