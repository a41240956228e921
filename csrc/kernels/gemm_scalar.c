/* gemm_scalar.c - portable 4 x 8 SGEMM micro-kernel (any x86-64 or other CPU).
 *
 * Contract: see gemm_kernels.h. Plain C with one accumulator per element;
 * the compiler may vectorise the j loop with the baseline ISA (SSE2), which
 * keeps separate multiply and add roundings (no FMA in the baseline). */
#include "kernels/gemm_kernels.h"

#define MR 4
#define NR 8

static void ukr_scalar_4x8(int64_t kc, const float *restrict Ap, const float *restrict Bp,
                           float *restrict C, int64_t ldc, int load_c, const float *bias)
{
    float acc[MR][NR];
    for (int r = 0; r < MR; r++)
        for (int j = 0; j < NR; j++) acc[r][j] = 0.0f;
    for (int64_t p = 0; p < kc; p++) {
        const float *a = Ap + p * MR, *b = Bp + p * NR;
        for (int r = 0; r < MR; r++)
            for (int j = 0; j < NR; j++) acc[r][j] += a[r] * b[j];
    }
    for (int r = 0; r < MR; r++)
        for (int j = 0; j < NR; j++) {
            float c = load_c ? C[r * ldc + j] + acc[r][j] : acc[r][j];
            C[r * ldc + j] = bias ? c + bias[j] : c;
        }
}

static void axpy_scalar(int64_t n, float a, const float *restrict x, float *restrict y)
{
    for (int64_t j = 0; j < n; j++) y[j] += a * x[j];
}

const mi_gemm_arch mi_gemm_arch_scalar = {
    .name = "scalar", .mr = MR, .nr = NR, .mc = 128, .kc = 256, .nc = 1024,
    .ukr = ukr_scalar_4x8, .axpy = axpy_scalar,
};
