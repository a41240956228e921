/* fma_probe.c - fp32 FMA peak probe (see fma_probe.h).
 *
 * Each thread keeps 12 independent accumulator chains: FMA latency (4-5
 * cycles) times the issue rate (2 per cycle) needs at least 10 in flight.
 * The chains converge (x*0.999999 + 1e-7) so values stay finite; the sum is
 * returned through a volatile sink so the loop cannot be removed.
 *
 * Each chain starts from a DIFFERENT value: with equal starts the compiler
 * proves the 12 chains identical, keeps one, and the probe then reports 12x
 * the real rate (an early version of this probe did exactly that). */
#include "kernels/fma_probe.h"

#include <immintrin.h>
#include <omp.h>

#include "common/threads.h"
#include "kernels/cpu.h"

#define ITERS 4000000L   /* per chain per thread per repeat: 48M FMAs */

__attribute__((target("avx512f,fma")))
static float chains_avx512(long iters)
{
    __m512 x = _mm512_set1_ps(0.999999f), y = _mm512_set1_ps(1e-7f);
    __m512 a0 = _mm512_set1_ps(1.00f), a1 = _mm512_set1_ps(1.01f), a2 = _mm512_set1_ps(1.02f),
           a3 = _mm512_set1_ps(1.03f), a4 = _mm512_set1_ps(1.04f), a5 = _mm512_set1_ps(1.05f),
           a6 = _mm512_set1_ps(1.06f), a7 = _mm512_set1_ps(1.07f), a8 = _mm512_set1_ps(1.08f),
           a9 = _mm512_set1_ps(1.09f), a10 = _mm512_set1_ps(1.10f), a11 = _mm512_set1_ps(1.11f);
    for (long i = 0; i < iters; i++) {
        a0 = _mm512_fmadd_ps(a0, x, y); a1 = _mm512_fmadd_ps(a1, x, y);
        a2 = _mm512_fmadd_ps(a2, x, y); a3 = _mm512_fmadd_ps(a3, x, y);
        a4 = _mm512_fmadd_ps(a4, x, y); a5 = _mm512_fmadd_ps(a5, x, y);
        a6 = _mm512_fmadd_ps(a6, x, y); a7 = _mm512_fmadd_ps(a7, x, y);
        a8 = _mm512_fmadd_ps(a8, x, y); a9 = _mm512_fmadd_ps(a9, x, y);
        a10 = _mm512_fmadd_ps(a10, x, y); a11 = _mm512_fmadd_ps(a11, x, y);
    }
    __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                             _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
    s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));
    return _mm512_reduce_add_ps(s);
}

__attribute__((target("avx2,fma")))
static float chains_avx2(long iters)
{
    __m256 x = _mm256_set1_ps(0.999999f), y = _mm256_set1_ps(1e-7f);
    __m256 a0 = _mm256_set1_ps(1.00f), a1 = _mm256_set1_ps(1.01f), a2 = _mm256_set1_ps(1.02f),
           a3 = _mm256_set1_ps(1.03f), a4 = _mm256_set1_ps(1.04f), a5 = _mm256_set1_ps(1.05f),
           a6 = _mm256_set1_ps(1.06f), a7 = _mm256_set1_ps(1.07f), a8 = _mm256_set1_ps(1.08f),
           a9 = _mm256_set1_ps(1.09f), a10 = _mm256_set1_ps(1.10f), a11 = _mm256_set1_ps(1.11f);
    for (long i = 0; i < iters; i++) {
        a0 = _mm256_fmadd_ps(a0, x, y); a1 = _mm256_fmadd_ps(a1, x, y);
        a2 = _mm256_fmadd_ps(a2, x, y); a3 = _mm256_fmadd_ps(a3, x, y);
        a4 = _mm256_fmadd_ps(a4, x, y); a5 = _mm256_fmadd_ps(a5, x, y);
        a6 = _mm256_fmadd_ps(a6, x, y); a7 = _mm256_fmadd_ps(a7, x, y);
        a8 = _mm256_fmadd_ps(a8, x, y); a9 = _mm256_fmadd_ps(a9, x, y);
        a10 = _mm256_fmadd_ps(a10, x, y); a11 = _mm256_fmadd_ps(a11, x, y);
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                             _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
    s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
    float out[8];
    _mm256_storeu_ps(out, s);
    return out[0] + out[1] + out[2] + out[3] + out[4] + out[5] + out[6] + out[7];
}

static float chains_scalar(long iters)
{
    float a[12];
    for (int c = 0; c < 12; c++) a[c] = 1.0f + 0.01f * (float)c;
    for (long i = 0; i < iters; i++)
        for (int c = 0; c < 12; c++) a[c] = a[c] * 0.999999f + 1e-7f;
    float s = 0.0f;
    for (int c = 0; c < 12; c++) s += a[c];
    return s;
}

double mi_fma_peak_gflops(void)
{
    mi_isa isa = mi_cpu_isa();
    int lanes = isa == MI_ISA_AVX512 ? 16 : isa == MI_ISA_AVX2 ? 8 : 1;
    long iters = isa == MI_ISA_SCALAR ? ITERS / 8 : ITERS;
    volatile float sink = 0.0f;
    double best = 0.0;
    for (int rep = 0; rep < 3; rep++) {
        int nthreads = 1;
        double t0 = omp_get_wtime();
        #pragma omp parallel num_threads(mi_get_num_threads())
        {
            float s = isa == MI_ISA_AVX512 ? chains_avx512(iters)
                    : isa == MI_ISA_AVX2 ? chains_avx2(iters) : chains_scalar(iters);
            #pragma omp critical
            sink += s;
            #pragma omp single
            nthreads = omp_get_num_threads();
        }
        double dt = omp_get_wtime() - t0;
        double gflops = 2.0 * 12.0 * lanes * (double)iters * nthreads / dt * 1e-9;
        if (gflops > best) best = gflops;
    }
    (void)sink;
    return best;
}
