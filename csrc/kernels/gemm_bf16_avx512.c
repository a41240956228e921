/* gemm_bf16_avx512.c - 12 x 32 bfloat16 micro-kernel and A packing for AVX512-BF16.
 *
 * Contract: see gemm_bf16_kernels.h. 24 zmm accumulators (12 rows x 2 vectors
 * of 16 float32), 2 B vectors and 1 broadcast A pair per k pair: 27 of the 32
 * registers. Each vdpbf16ps does 32 multiply-adds (16 lanes x a pair), twice
 * an fp32 FMA's 16, so the same loop shape as the fp32 kernel reaches twice
 * the multiply-adds per cycle. */
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16,fma")
#include <immintrin.h>

#include "kernels/gemm_bf16_kernels.h"
#include "kernels/tile12x32_avx512.h"

#define MR MI_BGEMM_MR
#define NR MI_BGEMM_NR

int mi_bgemm_has_avx512bf16(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16");
}

void mi_bgemm_ukr_avx512bf16(int64_t kp, const uint32_t *restrict Ap, const uint32_t *restrict Bp,
                             float *restrict C, int64_t ldc, int load_c, const float *bias)
{
    MI_TILE12X32_BEGIN(C, ldc)
#define STEP(i) { __m512bh ai = (__m512bh)_mm512_set1_epi32((int)a[i]); \
                  c##i##0 = _mm512_dpbf16_ps(c##i##0, ai, b0); \
                  c##i##1 = _mm512_dpbf16_ps(c##i##1, ai, b1); }
#define KSTEP(off) { const uint32_t *a = Ap + (off) * MR; \
                     __m512bh b0 = (__m512bh)_mm512_loadu_si512(Bp + (off) * NR); \
                     __m512bh b1 = (__m512bh)_mm512_loadu_si512(Bp + (off) * NR + 16); \
                     STEP(0) STEP(1) STEP(2) STEP(3) STEP(4) STEP(5) \
                     STEP(6) STEP(7) STEP(8) STEP(9) STEP(10) STEP(11) }
    int64_t p = 0;
    for (; p + 4 <= kp; p += 4) {
        _mm_prefetch((const char *)(Bp + 16 * NR), _MM_HINT_T0);
        _mm_prefetch((const char *)(Bp + 16 * NR + 16), _MM_HINT_T0);
        KSTEP(0) KSTEP(1) KSTEP(2) KSTEP(3)
        Ap += 4 * MR;
        Bp += 4 * NR;
    }
    for (; p < kp; p++) {
        KSTEP(0)
        Ap += MR;
        Bp += NR;
    }
#undef KSTEP
#undef STEP
    MI_TILE12X32_END(C, ldc, load_c, bias)
}

/* 16 x 16 transpose of 32-bit words: r[i] word j -> r[j] word i. Three
 * stages (words, word pairs, 128-bit lanes twice), 64 shuffles. */
static inline void transpose16(__m512i r[16])
{
    __m512i t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    /* r[4i+j], lane L: rows 4i..4i+3 at column 4L+j */
    for (int i = 0; i < 4; i++) {
        r[4 * i + 0] = _mm512_unpacklo_epi64(t[4 * i + 0], t[4 * i + 2]);
        r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i + 0], t[4 * i + 2]);
        r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    for (int j = 0; j < 4; j++) {
        t[j] = _mm512_shuffle_i32x4(r[j], r[4 + j], 0x88);
        t[j + 4] = _mm512_shuffle_i32x4(r[j], r[4 + j], 0xdd);
        t[j + 8] = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], 0x88);
        t[j + 12] = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], 0xdd);
    }
    for (int j = 0; j < 4; j++) {
        r[j] = _mm512_shuffle_i32x4(t[j], t[j + 8], 0x88);
        r[j + 8] = _mm512_shuffle_i32x4(t[j], t[j + 8], 0xdd);
        r[j + 4] = _mm512_shuffle_i32x4(t[j + 4], t[j + 12], 0x88);
        r[j + 12] = _mm512_shuffle_i32x4(t[j + 4], t[j + 12], 0xdd);
    }
}

void mi_bgemm_pack_a_avx512bf16(const float *A, int64_t lda, int64_t K, int64_t i0, int64_t mcur,
                                int64_t p0, int64_t kp, uint32_t *restrict dst)
{
    _Static_assert(MR <= 16, "one 16-row transpose covers a panel");
    for (int64_t ir = 0; ir < mcur; ir += MR, dst += kp * MR) {
        const int rows = mcur - ir < MR ? (int)(mcur - ir) : MR;
        for (int64_t pb = 0; pb < kp; pb += 16) {
            const int nq = kp - pb < 16 ? (int)(kp - pb) : 16;
            const int64_t k0 = 2 * (p0 + pb);
            const int64_t left = K - k0 < 2 * nq ? K - k0 : 2 * nq;   /* floats to read */
            const __mmask16 lo = left >= 16 ? 0xFFFF : (__mmask16)((1u << left) - 1);
            const __mmask16 hi = left >= 32 ? 0xFFFF : left > 16 ? (__mmask16)((1u << (left - 16)) - 1) : 0;
            __m512i r[16];
            for (int i = 0; i < rows; i++) {
                const float *a = A + (i0 + ir + i) * lda + k0;
                __m512 x0 = _mm512_maskz_loadu_ps(lo, a), x1 = _mm512_maskz_loadu_ps(hi, a + 16);
                /* 32 bf16 in k order: word q = pair (k0+2q, k0+2q+1), even k low */
                r[i] = (__m512i)_mm512_cvtne2ps_pbh(x1, x0);
            }
            for (int i = rows; i < 16; i++) r[i] = _mm512_setzero_si512();
            transpose16(r);
            for (int q = 0; q < nq; q++)
                _mm512_mask_storeu_epi32(dst + (pb + q) * MR, (__mmask16)((1u << MR) - 1), r[q]);
        }
    }
}

void mi_bgemm_pack_b_avx512bf16(int trans_b, const uint16_t *B, int64_t ldb, int64_t K, int64_t p0,
                                int64_t kp, int64_t j0, int cols, uint32_t *restrict dst)
{
    _Static_assert(NR == 32, "a panel is two 16-column halves");
    if (!trans_b) {     /* B stored [K, N]: rows 2p and 2p+1 interleave */
        const __mmask16 m0 = cols >= 16 ? 0xFFFF : (__mmask16)((1u << cols) - 1);
        const __mmask16 m1 = cols >= 32 ? 0xFFFF : cols > 16 ? (__mmask16)((1u << (cols - 16)) - 1) : 0;
        for (int64_t p = 0; p < kp; p++) {
            const int64_t k = 2 * (p0 + p);
            const uint16_t *b0 = B + k * ldb + j0, *b1 = b0 + ldb;
            const int odd = k + 1 < K;
            __m512i lo0 = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m0, b0));
            __m512i lo1 = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m1, b0 + 16));
            if (odd) {
                lo0 = _mm512_or_si512(lo0, _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m0, b1)), 16));
                lo1 = _mm512_or_si512(lo1, _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m1, b1 + 16)), 16));
            }
            _mm512_storeu_si512(dst + p * NR, lo0);
            _mm512_storeu_si512(dst + p * NR + 16, lo1);
        }
        return;
    }
    /* B stored [N, K]: a pair is two neighbours of one row; 16 rows x 16 pairs
     * are read as words and transposed */
    for (int jb = 0; jb < NR; jb += 16)
        for (int64_t pb = 0; pb < kp; pb += 16) {
            const int nq = kp - pb < 16 ? (int)(kp - pb) : 16;
            const int64_t k0 = 2 * (p0 + pb);
            const int64_t left = K - k0 < 2 * nq ? K - k0 : 2 * nq;   /* bf16 to read */
            const __mmask32 m = left >= 32 ? 0xFFFFFFFFu : (__mmask32)((1u << left) - 1);
            __m512i r[16];
            for (int i = 0; i < 16; i++)
                r[i] = jb + i < cols ? _mm512_maskz_loadu_epi16(m, B + (j0 + jb + i) * ldb + k0)
                                     : _mm512_setzero_si512();
            transpose16(r);
            for (int q = 0; q < nq; q++) _mm512_storeu_si512(dst + (pb + q) * NR + jb, r[q]);
        }
}

static inline __m512 widen16(__mmask16 m, const uint16_t *p)
{
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}

/* Decode steps stream B from memory once; the hardware prefetchers alone leave
 * it ~20% short of the bandwidth float32 weights reach (fewer bytes per
 * instruction: fewer lines in flight), so the kernels ask for B ahead, into L2
 * (asking into L1, or one sweep ahead, measured 10-30% slower): the dot
 * products PREFETCH_AHEAD elements ahead in their run of rows, the [K, N]
 * sweeps the rows PREFETCH_SWEEPS sweeps ahead. */
#define PREFETCH_AHEAD 4096
#define PREFETCH_SWEEPS 4

static inline __mmask16 lanes(int64_t left)
{
    return left >= 16 ? 0xFFFF : left > 0 ? (__mmask16)((1u << left) - 1) : 0;
}

/* sums[i * lds + j] += the sum over the K rows k of b (B stored [K, N], row
 * stride ldb, from the first row and column wanted) of Ar[i * lda + k] * b[k, j]
 * (Ar from the first k wanted), for j < n: one FMA per k in order. Four
 * rows of B per sweep, each read as one contiguous stretch (a register tile
 * walked down the rows would read 128 bytes per row at a stride of ldb: the
 * weights would not stream). M is a constant where this is inlined, so A's
 * values stay in registers. */
static inline __attribute__((always_inline)) void block_nn(const int M, int64_t K, int64_t n,
                                                           const float *Ar, int64_t lda,
                                                           const uint16_t *b, int64_t ldb,
                                                           float *sums, int64_t lds)
{
    int64_t k = 0;
    for (; k + 4 <= K; k += 4, b += 4 * ldb) {
        __m512 av[MI_BGEMM_SMALL_M][4];
        for (int i = 0; i < M; i++)
            for (int s = 0; s < 4; s++) av[i][s] = _mm512_set1_ps(Ar[i * lda + k + s]);
        for (int64_t j = 0; j < n; j += 16) {
            const __mmask16 m = lanes(n - j);
            if (!(j & 31))   /* a cache line of each row PREFETCH_SWEEPS sweeps ahead */
                for (int s = 4 * PREFETCH_SWEEPS; s < 4 * PREFETCH_SWEEPS + 4; s++)
                    _mm_prefetch((const char *)(b + s * ldb + j), _MM_HINT_T1);
            const __m512 b0 = widen16(m, b + j), b1 = widen16(m, b + ldb + j),
                         b2 = widen16(m, b + 2 * ldb + j), b3 = widen16(m, b + 3 * ldb + j);
            for (int i = 0; i < M; i++) {
                float *c = sums + i * lds + j;
                __m512 r = _mm512_maskz_loadu_ps(m, c);
                r = _mm512_fmadd_ps(av[i][0], b0, r);
                r = _mm512_fmadd_ps(av[i][1], b1, r);
                r = _mm512_fmadd_ps(av[i][2], b2, r);
                r = _mm512_fmadd_ps(av[i][3], b3, r);
                _mm512_mask_storeu_ps(c, m, r);
            }
        }
    }
    for (; k < K; k++, b += ldb)
        for (int64_t j = 0; j < n; j += 16) {
            const __mmask16 m = lanes(n - j);
            const __m512 bv = widen16(m, b + j);
            for (int i = 0; i < M; i++) {
                float *c = sums + i * lds + j;
                _mm512_mask_storeu_ps(c, m, _mm512_fmadd_ps(_mm512_set1_ps(Ar[i * lda + k]), bv,
                                                            _mm512_maskz_loadu_ps(m, c)));
            }
        }
}

void mi_bgemm_small_m_nn_avx512(int64_t M, int64_t K, int64_t n, const float *Ar, int64_t lda,
                                const uint16_t *B, int64_t ldb, float *sums, int64_t lds)
{
    switch (M) {   /* one copy per row count: the register arrays need a constant M */
    case 1: block_nn(1, K, n, Ar, lda, B, ldb, sums, lds); break;
    case 2: block_nn(2, K, n, Ar, lda, B, ldb, sums, lds); break;
    case 3: block_nn(3, K, n, Ar, lda, B, ldb, sums, lds); break;
    default: block_nn(4, K, n, Ar, lda, B, ldb, sums, lds); break;
    }
}

/* B stored [N, K], column j: out[i] = sum_k Ar[i, k] B[j, k] in four 16-lane
 * accumulators (k mod 64 in 16-lane quarters, k in order within each), combined
 * as (q0 + q1) + (q2 + q3) and summed across lanes in a fixed tree. Four
 * independent FMA chains per row keep the loads of B streaming. */
static inline __attribute__((always_inline)) void dot_nt(const int M, int64_t K, const float *Ar,
                                                         const uint16_t *b, float *out)
{
    __m512 q[MI_BGEMM_SMALL_M][4];
    for (int i = 0; i < M; i++)
        for (int s = 0; s < 4; s++) q[i][s] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 64 <= K; k += 64) {
        __m512 bv[4];
        _mm_prefetch((const char *)(b + k + PREFETCH_AHEAD), _MM_HINT_T1);
        _mm_prefetch((const char *)(b + k + PREFETCH_AHEAD + 32), _MM_HINT_T1);
        for (int s = 0; s < 4; s++)
            bv[s] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(
                        _mm256_loadu_si256((const __m256i *)(b + k + 16 * s))), 16));
        for (int i = 0; i < M; i++)
            for (int s = 0; s < 4; s++)
                q[i][s] = _mm512_fmadd_ps(_mm512_loadu_ps(Ar + i * K + k + 16 * s), bv[s], q[i][s]);
    }
    if (k < K)     /* the last k, masked, into the same quarters */
        for (int s = 0; s < 4; s++) {
            const __mmask16 m = lanes(K - k - 16 * s);
            const __m512 bv = widen16(m, b + k + 16 * s);
            for (int i = 0; i < M; i++)
                q[i][s] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, Ar + i * K + k + 16 * s), bv, q[i][s]);
        }
    for (int i = 0; i < M; i++)
        out[i] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(q[i][0], q[i][1]),
                                                    _mm512_add_ps(q[i][2], q[i][3])));
}

static inline __attribute__((always_inline)) void columns_nt(const int M, int64_t j0, int64_t j1, int64_t K,
                                                             const float *Ar, const uint16_t *B,
                                                             int64_t ldb, const float *bias, float beta,
                                                             float *C, int64_t ldc)
{
    for (int64_t j = j0; j < j1; j++) {
        float r[MI_BGEMM_SMALL_M];
        dot_nt(M, K, Ar, B + j * ldb, r);
        for (int i = 0; i < M; i++) {
            float *c = C + i * ldc + j;
            const float v = (beta != 0.0f ? *c : 0.0f) + r[i];
            *c = bias ? v + bias[j] : v;
        }
    }
}

void mi_bgemm_small_m_nt_avx512(int64_t M, int64_t j0, int64_t j1, int64_t K, const float *Ar,
                                const uint16_t *B, int64_t ldb, const float *bias, float beta,
                                float *C, int64_t ldc)
{
    switch (M) {
    case 1: columns_nt(1, j0, j1, K, Ar, B, ldb, bias, beta, C, ldc); break;
    case 2: columns_nt(2, j0, j1, K, Ar, B, ldb, bias, beta, C, ldc); break;
    case 3: columns_nt(3, j0, j1, K, Ar, B, ldb, bias, beta, C, ldc); break;
    default: columns_nt(4, j0, j1, K, Ar, B, ldb, bias, beta, C, ldc); break;
    }
}
