/* similarity.c - normalisation and products for similarity matrices (see similarity.h).
 *
 * Shape legend: X[rows, cols] input; Z[n_vars, k] normalised variables (float32);
 * C[n, n] or C[nx, ny] output. BS is the block edge of the symmetric product. */
#include "analysis/similarity.h"

#include <math.h>
#include <stdlib.h>
#if defined(__SSE2__)
#include <xmmintrin.h>
#endif

#include "common/memory.h"
#include "common/threads.h"
#include "kernels/gemm.h"

/* 192 is a multiple of every micro-kernel tile (12x32, 6x16, 4x8); a 192x192
 * float block (144 KiB) stays in L2 between the product and its mirror copy. */
#define BS 192
#define PAR_MIN 65536          /* below this many elements a pass stays on one thread */

static inline double load(const void *x, int f64, int64_t i)
{
    return f64 ? ((const double *)x)[i] : (double)((const float *)x)[i];
}

/* Variables are rows of x: Z row v = normalised x row v. */
/* 1 when variable v (k values at x[o + i * stride]) holds NaN or inf. */
static int has_nonfinite(const void *x, int f64, int64_t o, int64_t stride, int64_t k)
{
    for (int64_t i = 0; i < k; i++)
        if (!isfinite(load(x, f64, o + i * stride))) return 1;
    return 0;
}

/* Each normaliser returns 1 + the first variable holding NaN/inf, or 0: a
 * non-finite sum of squares flags the variable (finite data overflowing
 * double is rescanned and not flagged). */
static int64_t normalize_rows(const void *x, int f64, int64_t rows, int64_t cols, int center,
                              float zero_fill, float *Z)
{
    int64_t bad = INT64_MAX;   /* min-reduction identity: none found */
    #pragma omp parallel for schedule(static) reduction(min:bad) if (rows * cols > PAR_MIN) num_threads(mi_get_num_threads())
    for (int64_t r = 0; r < rows; r++) {
        const int64_t o = r * cols;
        double mean = 0, ss = 0;
        if (center) {
            for (int64_t c = 0; c < cols; c++) mean += load(x, f64, o + c);
            mean /= (double)cols;
        }
        for (int64_t c = 0; c < cols; c++) { double d = load(x, f64, o + c) - mean; ss += d * d; }
        double nrm = sqrt(ss);
        if (!isfinite(nrm) && has_nonfinite(x, f64, o, 1, cols) && r + 1 < bad)
            bad = r + 1;
        float *zr = Z + r * cols;
        if (nrm > 0 || nrm != nrm) {     /* NaN norm: NaN row, as NumPy */
            for (int64_t c = 0; c < cols; c++) zr[c] = (float)((load(x, f64, o + c) - mean) / nrm);
        } else {
            for (int64_t c = 0; c < cols; c++) zr[c] = zero_fill;
        }
    }
    return bad == INT64_MAX ? 0 : bad;
}

/* Variables are columns of x[rows, cols]: Z[cols, rows] (a transpose). Rows are
 * walked in order (contiguous reads), columns in blocks of JB per thread. */
static int64_t normalize_cols(const void *x, int f64, int64_t rows, int64_t cols, int center,
                              float zero_fill, float *Z)
{
    enum { JB = 64 };
    int64_t nblk = (cols + JB - 1) / JB, bad = INT64_MAX;
    #pragma omp parallel for schedule(static) reduction(min:bad) if (rows * cols > PAR_MIN) num_threads(mi_get_num_threads())
    for (int64_t b = 0; b < nblk; b++) {
        int64_t j0 = b * JB, nj = j0 + JB < cols ? JB : cols - j0;
        double mean[JB], ss[JB];
        for (int64_t j = 0; j < nj; j++) mean[j] = ss[j] = 0;
        if (center) {
            for (int64_t r = 0; r < rows; r++)
                for (int64_t j = 0; j < nj; j++) mean[j] += load(x, f64, r * cols + j0 + j);
            for (int64_t j = 0; j < nj; j++) mean[j] /= (double)rows;
        }
        for (int64_t r = 0; r < rows; r++)
            for (int64_t j = 0; j < nj; j++) {
                double d = load(x, f64, r * cols + j0 + j) - mean[j];
                ss[j] += d * d;
            }
        for (int64_t j = 0; j < nj; j++) {
            ss[j] = sqrt(ss[j]);
            if (!isfinite(ss[j]) && has_nonfinite(x, f64, j0 + j, cols, rows)
                && j0 + j + 1 < bad)
                bad = j0 + j + 1;
        }
        for (int64_t r = 0; r < rows; r++)
            for (int64_t j = 0; j < nj; j++) {
                double nrm = ss[j];
                Z[(j0 + j) * rows + r] = (nrm > 0 || nrm != nrm)
                    ? (float)((load(x, f64, r * cols + j0 + j) - mean[j]) / nrm) : zero_fill;
            }
    }
    return bad == INT64_MAX ? 0 : bad;
}

int64_t mi_normalize_vars(const void *x, int x_f64, int64_t rows, int64_t cols, int axis,
                          int center, float zero_fill, float *Z)
{
    return axis == 1 ? normalize_rows(x, x_f64, rows, cols, center, zero_fill, Z)
                     : normalize_cols(x, x_f64, rows, cols, center, zero_fill, Z);
}

static inline float clip1(float v)
{
    return v > 1.0f ? 1.0f : (v < -1.0f ? -1.0f : v);   /* NaN passes through */
}

#if defined(__SSE2__)
/* clip1 on 4 lanes: max/min return their second operand when one is NaN, so
 * NaN passes through as in clip1 */
static inline __m128 clip4(__m128 v)
{
    return _mm_min_ps(_mm_set1_ps(1.0f), _mm_max_ps(_mm_set1_ps(-1.0f), v));
}
#endif

static void clip_block(float *C, int64_t ldc, int64_t m, int64_t n)
{
    for (int64_t i = 0; i < m; i++) {
        float *c = C + i * ldc;
        int64_t j = 0;
#if defined(__SSE2__)
        for (; j + 4 <= n; j += 4) _mm_storeu_ps(c + j, clip4(_mm_loadu_ps(c + j)));
#endif
        for (; j < n; j++) c[j] = clip1(c[j]);
    }
}

#if defined(__SSE2__)
/* The 4x4 block at (i, j) of src (clipped in place when clip) transposed to
 * (j, i) of dst; stream: non-temporal stores (dst 16-byte aligned, ld % 4 == 0),
 * which skip reading the lines about to be overwritten (the mirror half is
 * written, never re-read here). */
static inline void mirror_4x4(float *src, int64_t ld, int64_t i, int64_t j, int clip, int stream,
                              float *dst)
{
    __m128 r0 = _mm_loadu_ps(src + (i + 0) * ld + j);
    __m128 r1 = _mm_loadu_ps(src + (i + 1) * ld + j);
    __m128 r2 = _mm_loadu_ps(src + (i + 2) * ld + j);
    __m128 r3 = _mm_loadu_ps(src + (i + 3) * ld + j);
    if (clip) {
        r0 = clip4(r0); r1 = clip4(r1); r2 = clip4(r2); r3 = clip4(r3);
        _mm_storeu_ps(src + (i + 0) * ld + j, r0);
        _mm_storeu_ps(src + (i + 1) * ld + j, r1);
        _mm_storeu_ps(src + (i + 2) * ld + j, r2);
        _mm_storeu_ps(src + (i + 3) * ld + j, r3);
    }
    _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
    if (stream) {
        _mm_stream_ps(dst + (j + 0) * ld + i, r0);
        _mm_stream_ps(dst + (j + 1) * ld + i, r1);
        _mm_stream_ps(dst + (j + 2) * ld + i, r2);
        _mm_stream_ps(dst + (j + 3) * ld + i, r3);
    } else {
        _mm_storeu_ps(dst + (j + 0) * ld + i, r0);
        _mm_storeu_ps(dst + (j + 1) * ld + i, r1);
        _mm_storeu_ps(dst + (j + 2) * ld + i, r2);
        _mm_storeu_ps(dst + (j + 3) * ld + i, r3);
    }
}
#endif

/* dst[j * ld + i] = src[i * ld + j] for i < m, j < n: the mirror copy of one
 * block, in 4x4 SSE transposes (baseline x86-64, so no ISA dispatch) over
 * 16x16 tiles that stay in L1; scalar edges. With clip, src is clipped in
 * place on the way (one pass for both). */
static void mirror_block(float *src, int64_t ld, int64_t m, int64_t n, int clip, float *dst)
{
    for (int64_t i0 = 0; i0 < m; i0 += 16)
        for (int64_t j0 = 0; j0 < n; j0 += 16) {
            int64_t ie = i0 + 16 < m ? i0 + 16 : m, je = j0 + 16 < n ? j0 + 16 : n;
            int64_t i4 = i0, j4 = j0;   /* [i0, i4) x [j0, j4): the part done in 4x4 blocks */
#if defined(__SSE2__)
            i4 = i0 + ((ie - i0) & ~(int64_t)3);
            j4 = j0 + ((je - j0) & ~(int64_t)3);
            if (((uintptr_t)dst & 15) == 0 && (ld & 3) == 0) {   /* aligned: streaming stores */
                for (int64_t j = j0; j < j4; j += 4)        /* 4 destination lines at a time */
                    for (int64_t i = i0; i < i4; i += 4) mirror_4x4(src, ld, i, j, clip, 1, dst);
            } else {
                for (int64_t i = i0; i < i4; i += 4)
                    for (int64_t j = j0; j < j4; j += 4) mirror_4x4(src, ld, i, j, clip, 0, dst);
            }
#endif
            for (int64_t i = i0; i < ie; i++)           /* edges: rows past i4 or cols past j4 */
                for (int64_t j = (i < i4 ? j4 : j0); j < je; j++) {
                    if (clip) src[i * ld + j] = clip1(src[i * ld + j]);
                    dst[j * ld + i] = src[i * ld + j];
                }
        }
#if defined(__SSE2__)
    _mm_sfence();   /* order the streaming stores before the block is handed back */
#endif
}

void mi_similarity_gram(const float *Z, int64_t n, int64_t k, int clip, float *C)
{
    int64_t nb = (n + BS - 1) / BS;
    if (nb <= 1) {   /* one block: the threaded GEMM (Z Z^T is symmetric as computed) */
        mi_sgemm(0, 1, n, n, k, Z, k, Z, k, NULL, 0.0f, C, n);
        if (clip) clip_block(C, n, n, n);
        return;
    }
    int64_t ntask = nb * (nb + 1) / 2;
    /* task t -> block (bi, bj), bi <= bj, row by row of the upper triangle */
    #pragma omp parallel for schedule(dynamic, 1) num_threads(mi_get_num_threads())
    for (int64_t t = 0; t < ntask; t++) {
        int64_t bi = 0, rem = t;
        while (rem >= nb - bi) { rem -= nb - bi; bi++; }
        int64_t bj = bi + rem;
        int64_t i0 = bi * BS, j0 = bj * BS;
        int64_t mi = i0 + BS < n ? BS : n - i0, mj = j0 + BS < n ? BS : n - j0;
        float *Cij = C + i0 * n + j0;
        /* inside a parallel region mi_sgemm runs on this thread */
        mi_sgemm(0, 1, mi, mj, k, Z + i0 * k, k, Z + j0 * k, k, NULL, 0.0f, Cij, n);
        if (bi == bj) {
            if (clip) clip_block(Cij, n, mi, mj);
            continue;
        }
        mirror_block(Cij, n, mi, mj, clip, C + j0 * n + i0);
    }
}

void mi_similarity_cross(const float *Zx, int64_t nx, const float *Zy, int64_t ny, int64_t k,
                         int clip, float *C)
{
    mi_sgemm(0, 1, nx, ny, k, Zx, k, Zy, k, NULL, 0.0f, C, ny);
    if (!clip) return;
    #pragma omp parallel for schedule(static) if (nx * ny > PAR_MIN) num_threads(mi_get_num_threads())
    for (int64_t i = 0; i < nx; i++) clip_block(C + i * ny, ny, 1, ny);
}

/* ---- reference: double throughout, no blocking, no threads ---- */

static double *ref_normalize(const void *x, int f64, int64_t rows, int64_t cols, int axis,
                             int center, double zero_fill, int64_t *n_vars, int64_t *k_out)
{
    int64_t nv = axis == 1 ? rows : cols, k = axis == 1 ? cols : rows;
    double *Z = malloc(sizeof(double) * (size_t)(nv * k > 0 ? nv * k : 1));
    if (!Z) return NULL;
    for (int64_t v = 0; v < nv; v++) {
        double mean = 0, ss = 0;
        for (int64_t i = 0; i < k; i++)
            Z[v * k + i] = load(x, f64, axis == 1 ? v * cols + i : i * cols + v);
        if (center) {
            for (int64_t i = 0; i < k; i++) mean += Z[v * k + i];
            mean /= (double)k;
        }
        for (int64_t i = 0; i < k; i++) { Z[v * k + i] -= mean; ss += Z[v * k + i] * Z[v * k + i]; }
        double nrm = sqrt(ss);
        for (int64_t i = 0; i < k; i++)
            Z[v * k + i] = (nrm > 0 || nrm != nrm) ? Z[v * k + i] / nrm : zero_fill;
    }
    *n_vars = nv;
    *k_out = k;
    return Z;
}

mi_status mi_similarity_ref(const void *x, int x_f64, int64_t rows_x, int64_t cols_x,
                            const void *y, int y_f64, int64_t rows_y, int64_t cols_y, int axis,
                            int center, float zero_fill, int clip, float *C)
{
    int64_t nx, ny, k, ky;
    double *Zx = ref_normalize(x, x_f64, rows_x, cols_x, axis, center, zero_fill, &nx, &k);
    double *Zy = y ? ref_normalize(y, y_f64, rows_y, cols_y, axis, center, zero_fill, &ny, &ky) : Zx;
    if (!y) ny = nx;
    if (Zx && Zy && k == 0 && zero_fill != zero_fill)
        for (int64_t i = 0; i < nx * ny; i++) C[i] = zero_fill;
    else if (Zx && Zy)
        for (int64_t i = 0; i < nx; i++)
            for (int64_t j = 0; j < ny; j++) {
                double s = 0;
                for (int64_t p = 0; p < k; p++) s += Zx[i * k + p] * Zy[j * k + p];
                C[i * ny + j] = clip ? clip1((float)s) : (float)s;
            }
    int ok = Zx && Zy;
    if (y) free(Zy);
    free(Zx);
    return ok ? MI_OK : mi_fail(MI_ERR_NOMEM, "similarity (reference): out of memory");
}

mi_status mi_similarity(const void *x, int x_f64, int64_t rows_x, int64_t cols_x,
                        const void *y, int y_f64, int64_t rows_y, int64_t cols_y, int axis,
                        int center, float zero_fill, int clip, int reject_nonfinite, float *C)
{
    int64_t nx = axis == 1 ? rows_x : cols_x, k = axis == 1 ? cols_x : rows_x;
    int64_t ny = y ? (axis == 1 ? rows_y : cols_y) : nx;
    size_t zx = (size_t)(nx * k), zy = y ? (size_t)(ny * k) : 0;
    float *Z = mi_malloc(sizeof(float) * (zx + zy > 0 ? zx + zy : 1));
    if (!Z) return mi_fail(MI_ERR_NOMEM, "similarity: cannot allocate %ld x %ld normalised "
                           "variables", (long)(nx + (y ? ny : 0)), (long)k);
    const char *var = axis == 1 ? "row" : "column";
    int64_t bad = mi_normalize_vars(x, x_f64, rows_x, cols_x, axis, center, zero_fill, Z);
    if (bad && reject_nonfinite) {
        mi_free(Z);
        return mi_fail(MI_ERR_VALUE, "X: contains NaN or infinity (%s %ld)", var, (long)(bad - 1));
    }
    if (k == 0 && zero_fill != zero_fill) {   /* no observations: NaN, as np.corrcoef */
        for (int64_t i = 0; i < nx * ny; i++) C[i] = zero_fill;
        mi_free(Z);
        return MI_OK;
    }
    if (y) {
        bad = mi_normalize_vars(y, y_f64, rows_y, cols_y, axis, center, zero_fill, Z + zx);
        if (bad && reject_nonfinite) {
            mi_free(Z);
            return mi_fail(MI_ERR_VALUE, "Y: contains NaN or infinity (%s %ld)", var, (long)(bad - 1));
        }
        mi_similarity_cross(Z, nx, Z + zx, ny, k, clip, C);
    } else {
        mi_similarity_gram(Z, nx, k, clip, C);
    }
    mi_free(Z);
    return MI_OK;
}
