/* gemm_avx512.c - 12 x 32 SGEMM micro-kernel for AVX-512F + FMA, with 4- and
 * 8-row variants for the partial last row panel.
 *
 * Contract: see gemm_kernels.h. 24 zmm accumulators (12 rows x 2 vectors of
 * 16), 2 B vectors and 1 broadcast of A per k step: 27 of the 32 zmm
 * registers. Per k step: 2 vector loads + 12 broadcasts feed 24 FMAs, so the
 * FMA pipes, not the load ports, bound the loop. */
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma")
#include <immintrin.h>

#include "kernels/gemm_kernels.h"
#include "kernels/tile12x32_avx512.h"

#define MR 12
#define NR 32

static void ukr_avx512_12x32(int64_t kc, const float *restrict Ap, const float *restrict Bp,
                             float *restrict C, int64_t ldc, int load_c, const float *bias)
{
    MI_TILE12X32_BEGIN(C, ldc)
#define STEP(i) { __m512 ai = _mm512_set1_ps(a[i]); \
                  c##i##0 = _mm512_fmadd_ps(ai, b0, c##i##0); \
                  c##i##1 = _mm512_fmadd_ps(ai, b1, c##i##1); }
#define KSTEP(off) { const float *a = Ap + (off) * MR; \
                     __m512 b0 = _mm512_loadu_ps(Bp + (off) * NR); \
                     __m512 b1 = _mm512_loadu_ps(Bp + (off) * NR + 16); \
                     STEP(0) STEP(1) STEP(2) STEP(3) STEP(4) STEP(5) \
                     STEP(6) STEP(7) STEP(8) STEP(9) STEP(10) STEP(11) }
    int64_t p = 0;
    for (; p + 4 <= kc; p += 4) {
        _mm_prefetch((const char *)(Bp + 16 * NR), _MM_HINT_T0);
        _mm_prefetch((const char *)(Bp + 16 * NR + 16), _MM_HINT_T0);
        KSTEP(0) KSTEP(1) KSTEP(2) KSTEP(3)
        Ap += 4 * MR;
        Bp += 4 * NR;
    }
    for (; p < kc; p++) {
        KSTEP(0)
        Ap += MR;
        Bp += NR;
    }
#undef KSTEP
#undef STEP
    MI_TILE12X32_END(C, ldc, load_c, bias)
}

/* The last, partial panel of M (rows < 12 of a 12-row packed panel, rows
 * past M zero): 4 or 8 rows of the same per-element arithmetic as the 12-row
 * kernel (so the same bits), storing only `rows` rows straight into C. GPT-2's
 * M = 1024 tokens leaves 4 rows: without this they cost a whole 12-row tile
 * plus a copy through a padded buffer. */
#define ROWS4(X) X(0) X(1) X(2) X(3)
#define ROWS8(X) ROWS4(X) X(4) X(5) X(6) X(7)
#define PART_KERNEL(name, ROWS)                                                              \
static void name(int64_t kc, int rows, const float *restrict Ap, const float *restrict Bp,   \
                 float *restrict C, int64_t ldc, int load_c, const float *bias)              \
{                                                                                            \
    ROWS(MI_TILE_DECL)                                                                       \
    for (int64_t p = 0; p < kc; p++, Ap += MR, Bp += NR) {                                   \
        const float *a = Ap;                                                                 \
        __m512 b0 = _mm512_loadu_ps(Bp), b1 = _mm512_loadu_ps(Bp + 16);                      \
        ROWS(STEP)                                                                           \
    }                                                                                        \
    __m512 bb0 = bias ? _mm512_loadu_ps(bias) : _mm512_setzero_ps();                         \
    __m512 bb1 = bias ? _mm512_loadu_ps(bias + 16) : _mm512_setzero_ps();                    \
    ROWS(FINISH)                                                                             \
}
#define STEP(i) { __m512 ai = _mm512_set1_ps(a[i]); \
                  c##i##0 = _mm512_fmadd_ps(ai, b0, c##i##0); \
                  c##i##1 = _mm512_fmadd_ps(ai, b1, c##i##1); }
/* as the 12-row kernel: C added after the k sum, then the bias */
#define FINISH(i) if (i < rows) { \
        if (load_c) { c##i##0 = _mm512_add_ps(_mm512_loadu_ps(C + i * ldc), c##i##0); \
                      c##i##1 = _mm512_add_ps(_mm512_loadu_ps(C + i * ldc + 16), c##i##1); } \
        if (bias) { c##i##0 = _mm512_add_ps(c##i##0, bb0); c##i##1 = _mm512_add_ps(c##i##1, bb1); } \
        _mm512_storeu_ps(C + i * ldc, c##i##0); _mm512_storeu_ps(C + i * ldc + 16, c##i##1); }
PART_KERNEL(ukr_avx512_4x32, ROWS4)
PART_KERNEL(ukr_avx512_8x32, ROWS8)
#undef FINISH
#undef STEP

static void ukr_avx512_part(int64_t kc, int rows, const float *Ap, const float *Bp, float *C,
                            int64_t ldc, int load_c, const float *bias)
{
    if (rows <= 4) ukr_avx512_4x32(kc, rows, Ap, Bp, C, ldc, load_c, bias);
    else ukr_avx512_8x32(kc, rows, Ap, Bp, C, ldc, load_c, bias);
}

static void axpy_avx512(int64_t n, float a, const float *x, float *y)
{
    __m512 va = _mm512_set1_ps(a);
    int64_t j = 0;
    for (; j + 16 <= n; j += 16)
        _mm512_storeu_ps(y + j, _mm512_fmadd_ps(va, _mm512_loadu_ps(x + j),
                                                _mm512_loadu_ps(y + j)));
    if (j < n) {    /* masked tail: the same FMA, so every element rounds alike */
        __mmask16 m = (__mmask16)((1u << (n - j)) - 1);
        __m512 r = _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(m, x + j),
                                   _mm512_maskz_loadu_ps(m, y + j));
        _mm512_mask_storeu_ps(y + j, m, r);
    }
}

/* Four axpy steps on up to 8 rows at once (gemm_kernels.h: mi_gemm_axpy4):
 * each 16-column vector of B's q rows is loaded once and each row's
 * accumulator is loaded and stored once per q steps, with the q FMAs in step
 * order, so every element rounds exactly as q axpy calls would. One function
 * per row count (4 steps, broadcasts in registers); q < 4 (the last steps of
 * a K block) takes the generic loop. The rows AXPY4_PREFETCH_SWEEPS calls
 * ahead (B's rows follow each other in a decode step's K block) are asked into
 * L2: the hardware prefetchers alone streamed GPT-2's decode products 5-28%
 * slower. */
#define AXPY4_PREFETCH_SWEEPS 4
#define AXPY4_ROWS(MM)                                                                       \
    static void axpy4_##MM(int64_t n, const float *a, int64_t sa_i, int64_t sa_p,          \
                           const float *x, int64_t ldx, float *y, int64_t ldy)             \
    {                                                                                      \
        float va[MM][4]; /* read as embedded broadcasts: no registers held */             \
        for (int r = 0; r < MM; r++)                                                       \
            for (int s = 0; s < 4; s++) va[r][s] = a[r * sa_i + s * sa_p];                 \
        int64_t j = 0;                                                                     \
        for (; j + 16 <= n; j += 16) {                                                     \
            for (int s = 4 * AXPY4_PREFETCH_SWEEPS; s < 4 * AXPY4_PREFETCH_SWEEPS + 4; s++)   \
                _mm_prefetch((const char *)(x + s * ldx + j), _MM_HINT_T1);                  \
            const __m512 x0 = _mm512_loadu_ps(x + j), x1 = _mm512_loadu_ps(x + ldx + j);   \
            const __m512 x2 = _mm512_loadu_ps(x + 2 * ldx + j);                            \
            const __m512 x3 = _mm512_loadu_ps(x + 3 * ldx + j);                            \
            for (int r = 0; r < MM; r++) {                                                 \
                __m512 acc = _mm512_loadu_ps(y + r * ldy + j);                             \
                acc = _mm512_fmadd_ps(_mm512_set1_ps(va[r][0]), x0, acc); \
                acc = _mm512_fmadd_ps(_mm512_set1_ps(va[r][1]), x1, acc); \
                acc = _mm512_fmadd_ps(_mm512_set1_ps(va[r][2]), x2, acc); \
                acc = _mm512_fmadd_ps(_mm512_set1_ps(va[r][3]), x3, acc); \
                _mm512_storeu_ps(y + r * ldy + j, acc);                                    \
            }                                                                              \
        }                                                                                  \
        if (j < n) axpy4_any(n - j, MM, 4, a, sa_i, sa_p, x + j, ldx, y + j, ldy);         \
    }

static void axpy4_any(int64_t n, int m, int q, const float *a, int64_t sa_i, int64_t sa_p,
                      const float *x, int64_t ldx, float *y, int64_t ldy)
{
    for (int64_t j = 0; j < n; j += 16) {
        __mmask16 k = n - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - j)) - 1);
        __m512 xv[4];
        for (int s = 0; s < q; s++) xv[s] = _mm512_maskz_loadu_ps(k, x + s * ldx + j);
        for (int r = 0; r < m; r++) {
            __m512 acc = _mm512_maskz_loadu_ps(k, y + r * ldy + j);
            for (int s = 0; s < q; s++)
                acc = _mm512_fmadd_ps(_mm512_set1_ps(a[r * sa_i + s * sa_p]), xv[s], acc);
            _mm512_mask_storeu_ps(y + r * ldy + j, k, acc);
        }
    }
}

AXPY4_ROWS(1)
AXPY4_ROWS(2)
AXPY4_ROWS(3)
AXPY4_ROWS(4)
AXPY4_ROWS(5)
AXPY4_ROWS(6)
AXPY4_ROWS(7)
AXPY4_ROWS(8)
#undef AXPY4_ROWS

static void axpy4_avx512(int64_t n, int m, int q, const float *a, int64_t sa_i, int64_t sa_p,
                         const float *x, int64_t ldx, float *y, int64_t ldy)
{
    typedef void (*rows_fn)(int64_t, const float *, int64_t, int64_t, const float *, int64_t,
                            float *, int64_t);
    static const rows_fn by_rows[9] = {NULL, axpy4_1, axpy4_2, axpy4_3, axpy4_4,
                                       axpy4_5, axpy4_6, axpy4_7, axpy4_8};
    if (q == 4 && m >= 1 && m <= 8) by_rows[m](n, a, sa_i, sa_p, x, ldx, y, ldy);
    else axpy4_any(n, m, q, a, sa_i, sa_p, x, ldx, y, ldy);
}

/* gemm_kernels.h: mi_gemm_dots, 8 lanes of partial sums in a ymm register per row.
 * fp-contract off: the multiply and the add must round separately, as in the plain
 * loop. One copy per row count (m a constant where inlined: the sums stay in
 * registers). */
static inline __attribute__((always_inline, optimize("fp-contract=off")))
void dots_rows(const int m, int64_t K, const float *a, int64_t sa_i, const float *b, float *out)
{
    __m256 part[8];
    for (int r = 0; r < m; r++) part[r] = _mm256_setzero_ps();
    int64_t p = 0;
    for (; p + 8 <= K; p += 8) {
        const __m256 bv = _mm256_loadu_ps(b + p);
        for (int r = 0; r < m; r++)
            part[r] = _mm256_add_ps(part[r], _mm256_mul_ps(_mm256_loadu_ps(a + r * sa_i + p), bv));
    }
    for (int r = 0; r < m; r++) {
        float t[8];
        _mm256_storeu_ps(t, part[r]);
        for (int l = 0; p + l < K; l++) t[l] += a[r * sa_i + p + l] * b[p + l];
        out[r] = ((t[0] + t[4]) + (t[1] + t[5])) + ((t[2] + t[6]) + (t[3] + t[7]));
    }
}

__attribute__((optimize("fp-contract=off")))
static void dots_avx512(int64_t K, int m, const float *a, int64_t sa_i, const float *b, float *out)
{
    switch (m) {
    case 1: dots_rows(1, K, a, sa_i, b, out); break;
    case 2: dots_rows(2, K, a, sa_i, b, out); break;
    case 3: dots_rows(3, K, a, sa_i, b, out); break;
    case 4: dots_rows(4, K, a, sa_i, b, out); break;
    case 5: dots_rows(5, K, a, sa_i, b, out); break;
    case 6: dots_rows(6, K, a, sa_i, b, out); break;
    case 7: dots_rows(7, K, a, sa_i, b, out); break;
    default: dots_rows(8, K, a, sa_i, b, out); break;
    }
}

/* kc 768: GPT-2's K = 768 products (qkv, W_O, W_in, the unembedding) run in
 * one K block, so C is written once instead of read and written three times;
 * A block 192 x 768 (576 KiB) and a B micro-panel (96 KiB) still fit the 1 MiB
 * L2 of Zen 4. Measured on GPT-2-small's forward: about 5% faster than kc 256. */
const mi_gemm_arch mi_gemm_arch_avx512 = {
    .name = "avx512", .mr = MR, .nr = NR, .mc = 192, .kc = 768, .nc = 4096,
    .ukr = ukr_avx512_12x32, .ukr_part = ukr_avx512_part, .part_rows = 8, .axpy = axpy_avx512,
    .axpy4 = axpy4_avx512, .dots = dots_avx512,
};
