/* gemm.c - the packed, cache-blocked SGEMM driver (BLIS style). See gemm.h for
 * the contract and gemm_kernels.h for the micro-kernels.
 *
 * Paths, chosen from the shape only (so the result depends on M, N, K and the
 * ISA, never on threads):
 *   K = 0                   C = beta*C + bias
 *   M*N*K < SMALL_MNK       direct triple loop (packing would dominate)
 *   M <= FEW_ROWS (8)       stream B once for all rows (decode steps: GEMV-like)
 *   otherwise               the blocked product below
 *
 * Loops (one ISA's mr, nr, mc, kc, nc from its mi_gemm_arch):
 *
 *   for jc in N step nc                     B block columns
 *     for each group of K blocks (kc each)  as many as fit in B_GROUP_FLOATS
 *       pack B[group, jc:+nc] -> Bp         shared, threads split the nr panels
 *       for each task (ic block, j range)   threads split the tasks
 *         for pc in the group's K blocks    in order (the sum order)
 *           pack A[ic:+mc, pc:+kc] -> Ap    per thread, stays in L2
 *           for jr in j range step nr       B micro-panel stays in L1
 *             for ir in mc step mr
 *               micro-kernel on C[ic+ir:+mr, jc+jr:+nr]
 *
 * Determinism: every C element is accumulated by the same micro-kernel, over
 * the same K blocks in the same order, whatever thread computes its tile and
 * wherever the tile sits (edge tiles run the same kernel on a padded copy).
 * Threads never share a C element, so results are bitwise identical for any
 * thread count. Inside an active parallel region everything runs on the
 * calling thread.
 *
 * Memory: packing buffers are cached per thread (grown on demand, kept for
 * the next call) so callers that run many small products, such as attention
 * per head, do not pay an allocation each time. If they cannot be allocated
 * the reference kernel runs instead (slow, never wrong).
 */
#include "kernels/gemm.h"

#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#include <xmmintrin.h>
#endif

#include "common/memory.h"
#include "common/threads.h"
#include "kernels/cpu.h"
#include "kernels/few_rows.h"
#include "kernels/gemm_kernels.h"

/* Products below this many multiply-adds skip packing (it would cost more than it saves). */
#define SMALL_MNK 32768.0
/* Multiply-adds per thread below which waking more threads costs more than it saves. */
#define MNK_PER_THREAD 262144.0
/* Packed B kept at once (floats): 16 MB, half the L3 of the machine this was tuned on. */
#define B_GROUP_FLOATS ((size_t)4 << 20)
#define MAX_MR 16
#define MAX_NR 64

static const mi_gemm_arch *arch_for(mi_isa isa)
{
    switch (isa) {
    case MI_ISA_AVX512: return &mi_gemm_arch_avx512;
    case MI_ISA_AVX2: return &mi_gemm_arch_avx2;
    default: return &mi_gemm_arch_scalar;
    }
}

/* ---- per-thread packing buffer ---------------------------------------- */

static _Thread_local float *tl_buf;
static _Thread_local size_t tl_cap;   /* floats */
/* The same pointer under a pthread key, whose destructor frees it when the
 * thread exits (a Python thread that ran one product must not leak it). */
static pthread_key_t tl_key;
static pthread_once_t tl_key_once = PTHREAD_ONCE_INIT;

static void make_tl_key(void) { pthread_key_create(&tl_key, mi_free); }

static float *scratch(size_t n)
{
    if (n > tl_cap) {
        pthread_once(&tl_key_once, make_tl_key);
        mi_free(tl_buf);
        tl_buf = mi_malloc(n * sizeof(float));
        tl_cap = tl_buf ? n : 0;
        pthread_setspecific(tl_key, tl_buf);
    }
    return tl_buf;
}

/* ---- packing ----------------------------------------------------------- */

/* dst[p*width + r] = src[r*ld + p] for r < rows, p < k; rows..width-1 zero.
 * The transposing copy both packers need (A stored [M,K], B stored [N,K]).
 * 4 x 4 blocks go through SSE transposes (baseline x86-64, so no dispatch),
 * PACK_STEPS k steps at a time for every row: the destination lines of those
 * steps then stay in L1 until they are full, instead of being fetched again
 * for every 4 rows (a 768-step panel is larger than L1). */
#define PACK_STEPS 16
static void pack_interleave(const float *src, int64_t ld, int rows, int64_t k, int width,
                            float *restrict dst)
{
    int64_t p0 = 0;
#ifdef __SSE2__
    for (; p0 + PACK_STEPS <= k; p0 += PACK_STEPS) {
        int r = 0;
        for (; r + 4 <= rows; r += 4) {
            const float *s0 = src + r * ld + p0, *s1 = s0 + ld, *s2 = s1 + ld, *s3 = s2 + ld;
            float *d = dst + p0 * width + r;
            for (int p = 0; p < PACK_STEPS; p += 4) {
                __m128 x0 = _mm_loadu_ps(s0 + p), x1 = _mm_loadu_ps(s1 + p);
                __m128 x2 = _mm_loadu_ps(s2 + p), x3 = _mm_loadu_ps(s3 + p);
                _MM_TRANSPOSE4_PS(x0, x1, x2, x3);
                _mm_storeu_ps(d + (p + 0) * width, x0);
                _mm_storeu_ps(d + (p + 1) * width, x1);
                _mm_storeu_ps(d + (p + 2) * width, x2);
                _mm_storeu_ps(d + (p + 3) * width, x3);
            }
        }
        for (; r < rows; r++)
            for (int p = 0; p < PACK_STEPS; p++) dst[(p0 + p) * width + r] = src[r * ld + p0 + p];
    }
#endif
    for (; p0 < k; p0++)
        for (int r = 0; r < rows; r++) dst[p0 * width + r] = src[r * ld + p0];
    if (rows < width)
        for (int64_t p = 0; p < k; p++)
            for (int z = rows; z < width; z++) dst[p * width + z] = 0.0f;
}

/* dst[p*width + c] = src[p*ld + c] for c < cols; cols..width-1 zero (no transpose). */
static void pack_copy(const float *src, int64_t ld, int cols, int64_t k, int width,
                      float *restrict dst)
{
    for (int64_t p = 0; p < k; p++) {
        const float *s0 = src + p * ld;
        float *d = dst + p * width;
        memcpy(d, s0, sizeof(float) * (size_t)cols);
        for (int c = cols; c < width; c++) d[c] = 0.0f;
    }
}

/* One row of B stored [K, N] (ncur values) into every nr-column panel of a
 * packed block: panel jp gets its nr values at dst + jp*nr*kcur. Reading B
 * row by row keeps the loads sequential (the panel-by-panel order would read
 * 128-byte pieces of kcur different rows). Fixed-size copies compile to
 * vector moves instead of memcpy calls. */
static void copy_b_row(const float *src, int64_t ncur, int nr, int64_t kcur, float *restrict dst)
{
    int64_t jp = 0;
    const int64_t full = ncur / nr, stride = (int64_t)nr * kcur;
    switch (nr) {
    case 32: for (; jp < full; jp++) memcpy(dst + jp * stride, src + jp * 32, 32 * sizeof(float));
             break;
    case 16: for (; jp < full; jp++) memcpy(dst + jp * stride, src + jp * 16, 16 * sizeof(float));
             break;
    case 8:  for (; jp < full; jp++) memcpy(dst + jp * stride, src + jp * 8, 8 * sizeof(float));
             break;
    default: for (; jp < full; jp++) memcpy(dst + jp * stride, src + jp * nr, nr * sizeof(float));
    }
    if (jp * nr < ncur) {   /* the last, partial panel: zero its padding */
        int cols = (int)(ncur - jp * nr);
        float *d = dst + jp * stride;
        for (int c = 0; c < cols; c++) d[c] = src[jp * nr + c];
        for (int c = cols; c < nr; c++) d[c] = 0.0f;
    }
}

/* op(A)[i0:i0+mcur, p0:p0+kcur] -> mr-row panels, rows past mcur zero. */
static void pack_a(int trans_a, const float *A, int64_t lda, int64_t i0, int64_t mcur,
                   int64_t p0, int64_t kcur, int mr, float *restrict dst)
{
    for (int64_t ir = 0; ir < mcur; ir += mr, dst += kcur * mr) {
        int rows = mcur - ir < mr ? (int)(mcur - ir) : mr;
        if (trans_a)    /* A stored [K, M]: row p holds the mr values we need */
            pack_copy(A + p0 * lda + i0 + ir, lda, rows, kcur, mr, dst);
        else            /* A stored [M, K]: transpose rows into the panel */
            pack_interleave(A + (i0 + ir) * lda + p0, lda, rows, kcur, mr, dst);
    }
}

/* op(B)[p0:p0+kcur, j0:j0+cols] -> one nr-column panel, cols past `cols` zero. */
static void pack_b_panel(int trans_b, const float *B, int64_t ldb, int64_t p0, int64_t kcur,
                         int64_t j0, int cols, int nr, float *restrict dst)
{
    if (!trans_b)       /* B stored [K, N]: row p holds the nr values we need */
        pack_copy(B + p0 * ldb + j0, ldb, cols, kcur, nr, dst);
    else                /* B stored [N, K]: transpose rows into the panel */
        pack_interleave(B + j0 * ldb + p0, ldb, cols, kcur, nr, dst);
}

/* ---- one tile ---------------------------------------------------------- */

/* Run the micro-kernel on C[0:rows, 0:cols]; partial tiles go through a
 * padded copy so they see exactly the arithmetic of full tiles. */
static void tile(const mi_gemm_arch *ar, int64_t kc, const float *Ap, const float *Bp,
                 float *C, int64_t ldc, int rows, int cols, int load_c, const float *bias)
{
    if (rows == ar->mr && cols == ar->nr) {
        ar->ukr(kc, Ap, Bp, C, ldc, load_c, bias);
        return;
    }
    if (cols == ar->nr && rows <= ar->part_rows) {
        ar->ukr_part(kc, rows, Ap, Bp, C, ldc, load_c, bias);
        return;
    }
    float t[MAX_MR * MAX_NR], tb[MAX_NR];
    int nr = ar->nr;
    if (load_c) {
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < cols; j++) t[r * nr + j] = C[r * ldc + j];
    }
    if (bias) {
        for (int j = 0; j < nr; j++) tb[j] = j < cols ? bias[j] : 0.0f;
    }
    /* Rows/cols outside the tile hold garbage when load_c; they are never copied back. */
    if (load_c) {
        for (int r = 0; r < ar->mr; r++)
            for (int j = (r < rows ? cols : 0); j < nr; j++) t[r * nr + j] = 0.0f;
    }
    ar->ukr(kc, Ap, Bp, t, nr, load_c, bias ? tb : NULL);
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < cols; j++) C[r * ldc + j] = t[r * nr + j];
}

/* ---- paths without packing --------------------------------------------- */

/* K = 0: C = beta*C + bias. */
static void no_k(int64_t M, int64_t N, const float *bias, float beta, float *C, int64_t ldc)
{
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            float c = beta != 0.0f ? C[i * ldc + j] : 0.0f;
            C[i * ldc + j] = bias ? c + bias[j] : c;
        }
}

/* Tiny products: a direct loop, one accumulator per element, k in order. */
static void small(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                  const float *A, int64_t lda, const float *B, int64_t ldb,
                  const float *bias, float beta, float *C, int64_t ldc)
{
    const int64_t sa_i = trans_a ? 1 : lda, sa_p = trans_a ? lda : 1;
    const int64_t sb_p = trans_b ? 1 : ldb, sb_j = trans_b ? ldb : 1;
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            float acc = beta != 0.0f ? C[i * ldc + j] : 0.0f;
            for (int64_t p = 0; p < K; p++) acc += A[i * sa_i + p * sa_p] * B[p * sb_p + j * sb_j];
            C[i * ldc + j] = bias ? acc + bias[j] : acc;
        }
}

/* A few rows of C (M <= FEW_ROWS: one token of each of up to 8 sequences, a
 * decode step): the packed kernel would waste most of its mr-row tile and
 * pack all of B for one use, so stream B once instead, each element of B read
 * from memory once for all M rows (then from cache). Either way row i of C is
 * bitwise the same whatever M is (a batch of one token each gives each
 * sequence what it alone gets), and the thread count never changes a bit.
 *
 * trans_b = 0 (B stored [K, N], read in row order): the K-blocked schedule of
 * few_rows.h; a block accumulates its partial sums in p order (the ISA's axpy,
 * FMA on AVX2/AVX-512, four p steps at a time for all M rows: axpy4).
 * trans_b = 1 (B stored [N, K]: rows of B are contiguous): threads split N;
 * each row of B is dotted with all M rows of A in turn while it is in L1,
 * keeping 8 partial sums (p mod 8) combined in a fixed tree, so the compiler
 * can vectorise the dot product without changing its result. */
#define FEW_ROWS 8
#define FEW_CHUNK 256

/* few_rows_nn's block of rows for mi_few_rows_nn: the axpy steps in p order. */
typedef struct {
    const mi_gemm_arch *ar;
    int64_t M, sa_i, sa_p, ldb;
    const float *A, *B;
} few_rows_ctx;

static void few_rows_block(const void *ctx, int64_t p0, int64_t p1, int64_t j0, int64_t n,
                           float *acc, int64_t ldacc)
{
    const few_rows_ctx *x = ctx;
    const int64_t M = x->M, sa_i = x->sa_i, sa_p = x->sa_p;
    for (int64_t p = p0; p < p1; p += 4) {
        const int q = p1 - p < 4 ? (int)(p1 - p) : 4;
        const float *b = x->B + p * x->ldb + j0;
        if (x->ar->axpy4) {
            x->ar->axpy4(n, (int)M, q, x->A + p * sa_p, sa_i, sa_p, b, x->ldb, acc, ldacc);
            continue;
        }
        for (int s = 0; s < q; s++)
            for (int64_t i = 0; i < M; i++)
                x->ar->axpy(n, x->A[i * sa_i + (p + s) * sa_p], b + s * x->ldb, acc + i * ldacc);
    }
}

static void few_rows_nn(const mi_gemm_arch *ar, int trans_a, int64_t M, int64_t N, int64_t K,
                        const float *A, int64_t lda, const float *B, int64_t ldb,
                        const float *bias, float beta, float *C, int64_t ldc, int nt)
{
    float *part = scratch((size_t)mi_few_rows_part_floats(M, N, K));
    if (!part) {
        mi_sgemm_ref(trans_a, 0, M, N, K, A, lda, B, ldb, bias, beta, C, ldc);
        return;
    }
    const few_rows_ctx ctx = {ar, M, trans_a ? 1 : lda, trans_a ? lda : 1, ldb, A, B};
    mi_few_rows_nn(nt, M, N, K, few_rows_block, &ctx, part, bias, beta, C, ldc);
}

static void few_rows(const mi_gemm_arch *ar, int trans_a, int trans_b,
                     int64_t M, int64_t N, int64_t K,
                     const float *A, int64_t lda, const float *B, int64_t ldb,
                     const float *bias, float beta, float *C, int64_t ldc, int nt)
{
    if (!trans_b) {
        few_rows_nn(ar, trans_a, M, N, K, A, lda, B, ldb, bias, beta, C, ldc, nt);
        return;
    }
    const int64_t sa_i = trans_a ? 1 : lda, sa_p = trans_a ? lda : 1;
    int64_t chunks = (N + FEW_CHUNK - 1) / FEW_CHUNK;
    if (chunks % nt) chunks += nt - chunks % nt;
    int64_t width = (N + chunks - 1) / chunks;
    width = (width + 15) / 16 * 16;
    if (width > FEW_CHUNK) width = FEW_CHUNK;
    #pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t j0 = 0; j0 < N; j0 += width) {
        const int n = N - j0 < width ? (int)(N - j0) : (int)width;
        float acc[FEW_ROWS][FEW_CHUNK];
        for (int j = 0; j < n; j++) {
            const float *b = B + (j0 + j) * ldb;
            if (ar->dots && sa_p == 1) {   /* the same sums, vectorised */
                float out[FEW_ROWS];
                ar->dots(K, (int)M, A, sa_i, b, out);
                for (int64_t i = 0; i < M; i++) acc[i][j] = out[i];
                continue;
            }
            for (int64_t i = 0; i < M; i++) {
                const float *a = A + i * sa_i;
                float part[8] = {0};
                int64_t p = 0;
                for (; p + 8 <= K; p += 8)
                    for (int l = 0; l < 8; l++) part[l] += a[(p + l) * sa_p] * b[p + l];
                for (int l = 0; p < K; p++, l++) part[l] += a[p * sa_p] * b[p];
                acc[i][j] = ((part[0] + part[4]) + (part[1] + part[5]))
                          + ((part[2] + part[6]) + (part[3] + part[7]));
            }
        }
        for (int64_t i = 0; i < M; i++) {
            float *c = C + i * ldc + j0;
            for (int j = 0; j < n; j++) {
                float v = beta != 0.0f ? c[j] + acc[i][j] : acc[i][j];
                c[j] = bias ? v + bias[j0 + j] : v;
            }
        }
    }
}

/* ---- the blocked product ----------------------------------------------- */

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
static int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

static void blocked(const mi_gemm_arch *ar, int nt, int trans_a, int trans_b,
                    int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                    const float *B, int64_t ldb, const float *bias, float beta,
                    float *C, int64_t ldc)
{
    const int mr = ar->mr, nr = ar->nr;
    /* K blocks of equal size (at most the arch's kc, a multiple of 8): the last
     * block is never a short one that pays a full pass over C for little work. */
    const int64_t kc_even = round_up(ceil_div(K, ceil_div(K, ar->kc)), 8);
    const int64_t kc_max = kc_even < K ? kc_even : K;
    const int64_t nc_max = round_up(N < ar->nc ? N : ar->nc, nr);
    /* M blocks: a multiple of the thread count, each a multiple of mr, so
     * threads get equal shares; when M is too short for that, split N too. */
    const int64_t mpanels = ceil_div(M, mr);
    int64_t mblocks = ceil_div(M, ar->mc);
    if (mblocks % nt) mblocks += nt - mblocks % nt;
    if (mblocks > mpanels) mblocks = mpanels;
    /* Block ib holds panels [mpanels*ib/mblocks, mpanels*(ib+1)/mblocks):
     * sizes differ by at most one panel, so no thread waits on a big last block. */
    const int64_t mc = ceil_div(mpanels, mblocks) * mr;
    int64_t nsplit = mblocks >= nt ? 1 : ceil_div(nt, mblocks);

    /* Pack as many K blocks of the B block as fit in B_GROUP_FLOATS at once:
     * threads then meet at a barrier once per group instead of once per K
     * block (a thread the OS descheduled stalls the others at every barrier). */
    const int64_t nkb = ceil_div(K, kc_max);
    size_t a_size = (size_t)mc * kc_max, b_size = (size_t)nc_max * kc_max;
    int64_t group = (int64_t)(B_GROUP_FLOATS / b_size);
    group = group < 1 ? 1 : group > nkb ? nkb : group;
    float *buf = scratch((size_t)group * b_size + (size_t)nt * a_size);
    if (!buf) {
        mi_sgemm_ref(trans_a, trans_b, M, N, K, A, lda, B, ldb, bias, beta, C, ldc);
        return;
    }
    float *Bp = buf;

    #pragma omp parallel num_threads(nt) if (nt > 1)
    {
        float *Ap = buf + (size_t)group * b_size + (size_t)omp_get_thread_num() * a_size;
        for (int64_t jc = 0; jc < N; jc += nc_max) {
            const int64_t ncur = N - jc < nc_max ? N - jc : nc_max;
            const int64_t npanels = ceil_div(ncur, nr);
            for (int64_t kb0 = 0; kb0 < nkb; kb0 += group) {
                const int64_t kb1 = kb0 + group < nkb ? kb0 + group : nkb;
                if (trans_b) {  /* B stored [N, K]: one panel per work item */
                    #pragma omp for schedule(dynamic, 4)
                    for (int64_t x = 0; x < (kb1 - kb0) * npanels; x++) {
                        const int64_t kb = kb0 + x / npanels, jp = x % npanels;
                        const int64_t pc = kb * kc_max;
                        const int64_t kcur = K - pc < kc_max ? K - pc : kc_max;
                        const int cols = ncur - jp * nr < nr ? (int)(ncur - jp * nr) : nr;
                        pack_b_panel(trans_b, B, ldb, pc, kcur, jc + jp * nr, cols, nr,
                                     Bp + (kb - kb0) * b_size + jp * nr * kcur);
                    }
                } else {        /* B stored [K, N]: stream whole rows, scatter to panels */
                    #pragma omp for schedule(dynamic, 16)
                    for (int64_t q = kb0 * kc_max; q < (kb1 * kc_max < K ? kb1 * kc_max : K); q++) {
                        const int64_t kb = q / kc_max, p = q - kb * kc_max, pc = kb * kc_max;
                        const int64_t kcur = K - pc < kc_max ? K - pc : kc_max;
                        copy_b_row(B + q * ldb + jc, ncur, nr, kcur,
                                   Bp + (kb - kb0) * b_size + p * nr);
                    }
                }
                /* implicit barrier: this group of Bp is complete */
                #pragma omp for schedule(dynamic, 1) nowait
                for (int64_t task = 0; task < mblocks * nsplit; task++) {
                    const int64_t ib = task / nsplit, js = task % nsplit;
                    const int64_t ic = mpanels * ib / mblocks * mr;
                    const int64_t iend = mpanels * (ib + 1) / mblocks * mr;
                    const int64_t mcur = (iend < M ? iend : M) - ic;
                    const int64_t p_lo = npanels * js / nsplit, p_hi = npanels * (js + 1) / nsplit;
                    if (p_lo == p_hi) continue;
                    for (int64_t kb = kb0; kb < kb1; kb++) {     /* K blocks in order */
                        const int64_t pc = kb * kc_max, kcur = K - pc < kc_max ? K - pc : kc_max;
                        const int first = pc == 0, last = pc + kcur == K;
                        pack_a(trans_a, A, lda, ic, mcur, pc, kcur, mr, Ap);
                        for (int64_t jp = p_lo; jp < p_hi; jp++) {
                            const int64_t j = jc + jp * nr;
                            const int cols = N - j < nr ? (int)(N - j) : nr;
                            const float *bp = Bp + (kb - kb0) * b_size + jp * nr * kcur;
                            for (int64_t ir = 0; ir < mcur; ir += mr) {
                                const int rows = mcur - ir < mr ? (int)(mcur - ir) : mr;
                                tile(ar, kcur, Ap + ir * kcur, bp, C + (ic + ir) * ldc + j,
                                     ldc, rows, cols, !first || beta != 0.0f,
                                     last && bias ? bias + j : NULL);
                            }
                        }
                    }
                }
                /* Bp may be overwritten once every thread is done with it; after the
                 * last group the end of the parallel region is that barrier (a
                 * sleeping thread's wake-up costs tens of microseconds here) */
                if (kb1 < nkb || jc + nc_max < N) {
                    #pragma omp barrier
                }
            }
        }
    }
}

void mi_sgemm(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
              const float *A, int64_t lda, const float *B, int64_t ldb,
              const float *bias, float beta, float *C, int64_t ldc)
{
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        no_k(M, N, bias, beta, C, ldc);
        return;
    }
    if ((double)M * (double)N * (double)K < SMALL_MNK) {
        small(trans_a, trans_b, M, N, K, A, lda, B, ldb, bias, beta, C, ldc);
        return;
    }
    int nt = omp_in_parallel() ? 1 : mi_get_num_threads();
    double per_thread_work = (double)M * (double)N * (double)K / MNK_PER_THREAD;
    if (nt > per_thread_work) nt = per_thread_work < 1.0 ? 1 : (int)per_thread_work;
    if (M <= FEW_ROWS) {
        few_rows(arch_for(mi_cpu_isa()), trans_a, trans_b, M, N, K, A, lda, B, ldb, bias, beta,
                 C, ldc, nt);
        return;
    }
    blocked(arch_for(mi_cpu_isa()), nt, trans_a, trans_b, M, N, K, A, lda, B, ldb, bias, beta,
            C, ldc);
}

void mi_sgemm_strided_batched(int trans_a, int trans_b, int64_t batch,
                              int64_t M, int64_t N, int64_t K,
                              const float *A, int64_t lda, int64_t stride_a,
                              const float *B, int64_t ldb, int64_t stride_b,
                              const float *bias, float beta,
                              float *C, int64_t ldc, int64_t stride_c)
{
    int nt = omp_in_parallel() ? 1 : mi_get_num_threads();
    if (batch >= nt && nt > 1) {
        /* Enough products to go round: one per thread at a time, each serial. */
        #pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
        for (int64_t i = 0; i < batch; i++)
            mi_sgemm(trans_a, trans_b, M, N, K, A + i * stride_a, lda, B + i * stride_b, ldb,
                     bias, beta, C + i * stride_c, ldc);
    } else {
        /* Fewer products than threads: each one splits its tiles over the threads. */
        for (int64_t i = 0; i < batch; i++)
            mi_sgemm(trans_a, trans_b, M, N, K, A + i * stride_a, lda, B + i * stride_b, ldb,
                     bias, beta, C + i * stride_c, ldc);
    }
}
