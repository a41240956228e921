/* gemm_bf16.c - the bfloat16-weight GEMM: conversions, the plain reference,
 * the packed AVX512-BF16 driver and the float32 fallback (contract in
 * gemm_bf16.h, micro-kernel in gemm_bf16_avx512.c).
 *
 * Paths, chosen from the shape and the requested path only:
 *   K = 0 or M*N*K < SMALL_MNK   the reference loop (packing would dominate)
 *   bf16, M <= 4                 no packing: B widened as read, float32 FMAs
 *                                (small_m below; decode steps)
 *   bf16                         the blocked product below
 *   fp32                         B widened in column chunks, A rounded once,
 *                                each chunk through mi_sgemm
 *
 * The blocked product (same shape as the float32 driver in gemm.c):
 *
 *   for jc in N step NC                      B block columns
 *     for kb in the K blocks (KP_MAX pairs)  in order: the sum order
 *       pack B[kb, jc:+NC] -> Bp             threads split the NR panels
 *       for each task (ic block, j range)    threads split the tasks
 *         pack A[ic:+mc, kb] -> Ap           per thread, rounded to bfloat16
 *                                            16 pairs x 12 rows at a time
 *                                            (gemm_bf16_avx512.c)
 *         for jr in j range step NR, ir in mc step MR
 *           micro-kernel on C[ic+ir:+MR, jc+jr:+NR], C added after block 0
 *
 * Every element is summed by the same kernel over the same K blocks in the
 * same order whatever thread runs its tile (edge tiles use a padded copy), so
 * results are bitwise identical for any thread count. When a buffer cannot be
 * allocated the reference runs instead: slower, never wrong.
 */
#include "kernels/gemm_bf16.h"

#include <omp.h>
#include <string.h>

#include "common/memory.h"
#include "common/threads.h"
#include "kernels/cpu.h"
#include "kernels/few_rows.h"
#include "kernels/gemm.h"
#include "kernels/gemm_bf16_kernels.h"

#define MR MI_BGEMM_MR
#define NR MI_BGEMM_NR
/* K pairs per block: 384 pairs = 768 k, so GPT-2's K = 768 products write C once. */
#define KP_MAX 384
/* A block rows per task and B block columns (L2 / L3 sized as in gemm_avx512.c). */
#define MC 192
#define NC 4096
/* Products below this many multiply-adds run the reference loop. */
#define SMALL_MNK 32768.0
/* Multiply-adds per thread below which waking more threads costs more than it saves. */
#define MNK_PER_THREAD 262144.0
/* Decode steps with B stored [N, K]: the most columns of C one task computes. */
#define SMALL_STRIP 1024
/* Columns of B widened to float32 at a time on the fp32 path. */
#define FP32_CHUNK 512

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
static int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

/* ---- conversions -------------------------------------------------------- */

void mi_f32_to_bf16_n(const float *x, uint16_t *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++) y[i] = mi_bf16_round(x[i]);
}

void mi_bf16_to_f32_n(const uint16_t *x, float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++) y[i] = mi_bf16_widen(x[i]);
}

/* ---- paths -------------------------------------------------------------- */

mi_bgemm_path mi_bgemm_best_path(void)
{
    /* a lower ISA forced for tests (mi_cpu_force_isa) also turns the bf16 path off */
    return mi_cpu_isa() == MI_ISA_AVX512 && mi_bgemm_has_avx512bf16() ? MI_BGEMM_BF16 : MI_BGEMM_FP32;
}

const char *mi_bgemm_path_name(mi_bgemm_path path)
{
    switch (path) {
    case MI_BGEMM_BF16: return "bf16";
    case MI_BGEMM_FP32: return "fp32";
    case MI_BGEMM_REF: return "ref";
    default: return "auto";
    }
}

/* The reference: one float32 accumulator per element, k in order, C and bias after. */
static void bgemm_ref(int trans_b, int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                      const uint16_t *B, int64_t ldb, const float *bias, float beta, float *C,
                      int64_t ldc)
{
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            float acc = 0.0f;
            for (int64_t p = 0; p < K; p++) {
                float a = mi_bf16_widen(mi_bf16_round(A[i * lda + p]));
                float b = mi_bf16_widen(trans_b ? B[j * ldb + p] : B[p * ldb + j]);
                acc += a * b;
            }
            float c = beta != 0.0f ? C[i * ldc + j] : 0.0f;
            C[i * ldc + j] = c + acc + (bias ? bias[j] : 0.0f);
        }
}

/* ---- packing (k pairs: even k low, odd k high) ------------------------- */

static inline uint32_t pair(uint16_t lo, uint16_t hi) { return (uint32_t)lo | (uint32_t)hi << 16; }

/* A[i0:i0+mcur, pairs p0:p0+kp] -> MR-row panels rounded to bfloat16, rows
 * past mcur zero: the plain twin of mi_bgemm_pack_a_avx512bf16 (the driver's
 * packing; that one also reads denormal inputs as zero), held to the same words
 * by tests/test_gemm_bf16.py (_testing._bgemm_pack_a). */
void mi_bgemm_pack_a_ref(const float *A, int64_t lda, int64_t K, int64_t i0, int64_t mcur, int64_t p0,
                         int64_t kp, uint32_t *restrict dst)
{
    for (int64_t ir = 0; ir < mcur; ir += MR, dst += kp * MR) {
        const int rows = mcur - ir < MR ? (int)(mcur - ir) : MR;
        for (int r = 0; r < rows; r++) {
            const float *a = A + (i0 + ir + r) * lda;
            for (int64_t p = 0; p < kp; p++) {
                const int64_t k = 2 * (p0 + p);
                dst[p * MR + r] = pair(mi_bf16_round(a[k]), k + 1 < K ? mi_bf16_round(a[k + 1]) : 0);
            }
        }
        for (int r = rows; r < MR; r++)
            for (int64_t p = 0; p < kp; p++) dst[p * MR + r] = 0;
    }
}

/* op(B)[pairs p0:p0+kp, j0:j0+cols] -> one NR-column panel, columns past cols
 * zero: the plain twin of mi_bgemm_pack_b_avx512bf16 (the driver's packing),
 * held to the same words by tests/test_gemm_bf16.py (_testing._bgemm_pack_b). */
void mi_bgemm_pack_b_ref(int trans_b, const uint16_t *B, int64_t ldb, int64_t K, int64_t p0, int64_t kp,
                   int64_t j0, int cols, uint32_t *restrict dst)
{
    if (!trans_b) {     /* B stored [K, N]: rows 2p and 2p+1 interleave */
        for (int64_t p = 0; p < kp; p++) {
            const int64_t k = 2 * (p0 + p);
            const uint16_t *b0 = B + k * ldb + j0, *b1 = b0 + ldb;
            uint32_t *d = dst + p * NR;
            if (k + 1 < K)
                for (int j = 0; j < cols; j++) d[j] = pair(b0[j], b1[j]);
            else
                for (int j = 0; j < cols; j++) d[j] = b0[j];
            for (int j = cols; j < NR; j++) d[j] = 0;
        }
    } else {            /* B stored [N, K]: a pair is two neighbours of one row */
        for (int j = 0; j < cols; j++) {
            const uint16_t *b = B + (j0 + j) * ldb;
            for (int64_t p = 0; p < kp; p++) {
                const int64_t k = 2 * (p0 + p);
                dst[p * NR + j] = pair(b[k], k + 1 < K ? b[k + 1] : 0);
            }
        }
        for (int64_t p = 0; p < kp; p++)
            for (int j = cols; j < NR; j++) dst[p * NR + j] = 0;
    }
}

/* The micro-kernel on C[0:rows, 0:cols]; partial tiles go through a padded
 * copy so they see exactly the arithmetic of full tiles. */
static void tile(int64_t kp, const uint32_t *Ap, const uint32_t *Bp, float *C, int64_t ldc,
                 int rows, int cols, int load_c, const float *bias)
{
    if (rows == MR && cols == NR) {
        mi_bgemm_ukr_avx512bf16(kp, Ap, Bp, C, ldc, load_c, bias);
        return;
    }
    float t[MR * NR], tb[NR];
    memset(t, 0, sizeof t);
    if (load_c)
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < cols; j++) t[r * NR + j] = C[r * ldc + j];
    if (bias)
        for (int j = 0; j < NR; j++) tb[j] = j < cols ? bias[j] : 0.0f;
    mi_bgemm_ukr_avx512bf16(kp, Ap, Bp, t, NR, load_c, bias ? tb : NULL);
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < cols; j++) C[r * ldc + j] = t[r * NR + j];
}

static void bgemm_blocked(int nt, int trans_b, int64_t M, int64_t N, int64_t K, const float *A,
                          int64_t lda, const uint16_t *B, int64_t ldb, const float *bias, float beta,
                          float *C, int64_t ldc)
{
    const int64_t KP = ceil_div(K, 2);
    const int64_t nkb = ceil_div(KP, KP_MAX), kp_max = ceil_div(KP, nkb);   /* equal K blocks */
    const int64_t nc_max = round_up(N < NC ? N : NC, NR);
    /* M blocks: a multiple of the thread count, each a multiple of MR; when M
     * is too short for that, threads split N too. */
    const int64_t mpanels = ceil_div(M, MR);
    int64_t mblocks = ceil_div(M, MC);
    if (mblocks % nt) mblocks += nt - mblocks % nt;
    if (mblocks > mpanels) mblocks = mpanels;
    const int64_t mc = ceil_div(mpanels, mblocks) * MR;
    const int64_t nsplit = mblocks >= nt ? 1 : ceil_div(nt, mblocks);
    const size_t a_words = (size_t)mc * kp_max, b_words = (size_t)nc_max * kp_max;
    uint32_t *buf = mi_malloc((b_words + (size_t)nt * a_words) * sizeof(uint32_t));
    if (!buf) {
        bgemm_ref(trans_b, M, N, K, A, lda, B, ldb, bias, beta, C, ldc);
        return;
    }
    uint32_t *Bp = buf;

    #pragma omp parallel num_threads(nt) if (nt > 1)
    {
        uint32_t *Ap = buf + b_words + (size_t)omp_get_thread_num() * a_words;
        for (int64_t jc = 0; jc < N; jc += nc_max) {
            const int64_t ncur = N - jc < nc_max ? N - jc : nc_max;
            const int64_t npanels = ceil_div(ncur, NR);
            for (int64_t kb = 0; kb < nkb; kb++) {
                const int64_t p0 = kb * kp_max, kp = KP - p0 < kp_max ? KP - p0 : kp_max;
                const int first = kb == 0, last = kb == nkb - 1;
                #pragma omp for schedule(dynamic, 4)
                for (int64_t jp = 0; jp < npanels; jp++) {
                    const int cols = ncur - jp * NR < NR ? (int)(ncur - jp * NR) : NR;
                    mi_bgemm_pack_b_avx512bf16(trans_b, B, ldb, K, p0, kp, jc + jp * NR, cols,
                                               Bp + jp * NR * kp);
                }
                /* implicit barrier: Bp is complete */
                #pragma omp for schedule(dynamic, 1)
                for (int64_t task = 0; task < mblocks * nsplit; task++) {
                    const int64_t ib = task / nsplit, js = task % nsplit;
                    const int64_t ic = mpanels * ib / mblocks * MR;
                    const int64_t iend = mpanels * (ib + 1) / mblocks * MR;
                    const int64_t mcur = (iend < M ? iend : M) - ic;
                    const int64_t lo = npanels * js / nsplit, hi = npanels * (js + 1) / nsplit;
                    if (lo == hi) continue;
                    mi_bgemm_pack_a_avx512bf16(A, lda, K, ic, mcur, p0, kp, Ap);
                    for (int64_t jp = lo; jp < hi; jp++) {
                        const int64_t j = jc + jp * NR;
                        const int cols = N - j < NR ? (int)(N - j) : NR;
                        for (int64_t ir = 0; ir < mcur; ir += MR) {
                            const int rows = mcur - ir < MR ? (int)(mcur - ir) : MR;
                            tile(kp, Ap + ir * kp, Bp + jp * NR * kp, C + (ic + ir) * ldc + j, ldc,
                                 rows, cols, !first || beta != 0.0f, last && bias ? bias + j : NULL);
                        }
                    }
                }
                /* implicit barrier: Bp may be overwritten */
            }
        }
    }
    mi_free(buf);
}

/* Every CPU: A rounded to bfloat16 values once, B widened FP32_CHUNK columns
 * at a time, each chunk one float32 GEMM (its own ISA dispatch and threads). */
static void bgemm_fp32(int trans_b, int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                       const uint16_t *B, int64_t ldb, const float *bias, float beta, float *C,
                       int64_t ldc)
{
    float *Ar = mi_malloc((size_t)M * (size_t)K * sizeof(float));
    float *Bw = mi_malloc((size_t)K * FP32_CHUNK * sizeof(float));
    if (!Ar || !Bw) {
        mi_free(Ar);
        mi_free(Bw);
        bgemm_ref(trans_b, M, N, K, A, lda, B, ldb, bias, beta, C, ldc);
        return;
    }
    for (int64_t i = 0; i < M; i++)
        for (int64_t p = 0; p < K; p++) Ar[i * K + p] = mi_bf16_widen(mi_bf16_round(A[i * lda + p]));
    for (int64_t j0 = 0; j0 < N; j0 += FP32_CHUNK) {
        const int64_t w = N - j0 < FP32_CHUNK ? N - j0 : FP32_CHUNK;
        if (!trans_b)       /* [K, w] */
            for (int64_t p = 0; p < K; p++) mi_bf16_to_f32_n(B + p * ldb + j0, Bw + p * w, w);
        else                /* [w, K] */
            for (int64_t j = 0; j < w; j++) mi_bf16_to_f32_n(B + (j0 + j) * ldb, Bw + j * K, K);
        mi_sgemm(0, trans_b, M, w, K, Ar, K, Bw, trans_b ? K : w, bias ? bias + j0 : NULL, beta,
                 C + j0, ldc);
    }
    mi_free(Ar);
    mi_free(Bw);
}

/* ---- decode steps (M <= MI_BGEMM_SMALL_M) ------------------------------- */

/* small_m's block of rows for mi_few_rows_nn (B stored [K, N]). */
typedef struct {
    int64_t M, K, ldb;
    const float *Ar;
    const uint16_t *B;
} small_m_ctx;

static void small_m_block(const void *ctx, int64_t k0, int64_t k1, int64_t j0, int64_t n,
                          float *acc, int64_t ldacc)
{
    const small_m_ctx *x = ctx;
    mi_bgemm_small_m_nn_avx512(x->M, k1 - k0, n, x->Ar + k0, x->K, x->B + k0 * x->ldb + j0, x->ldb,
                               acc, ldacc);
}

/* Packing B would cost as much as the product: B is read as it is, once.
 * trans_b 0 (B stored [K, N]): the K-blocked schedule of few_rows.h, float32's
 * too (a column split instead measured ~15% slower decode steps), four rows of
 * a block per sweep. trans_b 1 (B [N, K]): the threads split the columns into
 * chunks of at most SMALL_STRIP, a contiguous run of B's rows, one dot product
 * each. Either order depends on K only, so neither the thread count nor M
 * changes a bit. Returns 0 when a buffer cannot be allocated (the caller takes
 * another path). */
static int small_m(int nt, int trans_b, int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                   const uint16_t *B, int64_t ldb, const float *bias, float beta, float *C, int64_t ldc)
{
    float *Ar = mi_malloc(sizeof(float) * (size_t)(M * K));
    float *part = trans_b ? NULL : mi_malloc(sizeof(float) * (size_t)mi_few_rows_part_floats(M, N, K));
    if (!Ar || (!trans_b && !part)) {
        mi_free(Ar);
        mi_free(part);
        return 0;
    }
    for (int64_t i = 0; i < M; i++)
        for (int64_t p = 0; p < K; p++) Ar[i * K + p] = mi_bf16_widen(mi_bf16_round(A[i * lda + p]));
    if (trans_b) {
        const int64_t per = nt * ceil_div(N, (int64_t)nt * SMALL_STRIP);
        const int64_t chunk = round_up(ceil_div(N, per), 16), nchunks = ceil_div(N, chunk);
        #pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
        for (int64_t c = 0; c < nchunks; c++) {
            const int64_t j0 = c * chunk, j1 = j0 + chunk < N ? j0 + chunk : N;
            mi_bgemm_small_m_nt_avx512(M, j0, j1, K, Ar, B, ldb, bias, beta, C, ldc);
        }
    } else {
        const small_m_ctx ctx = {M, K, ldb, Ar, B};
        mi_few_rows_nn(nt, M, N, K, small_m_block, &ctx, part, bias, beta, C, ldc);
    }
    mi_free(part);
    mi_free(Ar);
    return 1;
}

int mi_bgemm(mi_bgemm_path path, int trans_b, int64_t M, int64_t N, int64_t K,
             const float *A, int64_t lda, const uint16_t *B, int64_t ldb,
             const float *bias, float beta, float *C, int64_t ldc)
{
    if (path == MI_BGEMM_AUTO) path = mi_bgemm_best_path();
    if (path == MI_BGEMM_BF16 && !mi_bgemm_has_avx512bf16()) return -1;
    if (M <= 0 || N <= 0) return 0;
    if (path == MI_BGEMM_REF || K <= 0 || (double)M * (double)N * (double)K < SMALL_MNK) {
        bgemm_ref(trans_b, M, N, K, A, lda, B, ldb, bias, beta, C, ldc);
        return 0;
    }
    if (path == MI_BGEMM_FP32) {
        bgemm_fp32(trans_b, M, N, K, A, lda, B, ldb, bias, beta, C, ldc);
        return 0;
    }
    int nt = omp_in_parallel() ? 1 : mi_get_num_threads();
    const double per_thread_work = (double)M * (double)N * (double)K / MNK_PER_THREAD;
    if (nt > per_thread_work) nt = per_thread_work < 1.0 ? 1 : (int)per_thread_work;
    if (M <= MI_BGEMM_SMALL_M && small_m(nt, trans_b, M, N, K, A, lda, B, ldb, bias, beta, C, ldc))
        return 0;
    bgemm_blocked(nt, trans_b, M, N, K, A, lda, B, ldb, bias, beta, C, ldc);
    return 0;
}
