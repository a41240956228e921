/* histogram.c - np.histogram's bin assignment and counting (see histogram.h). */
#include "analysis/histogram.h"

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/memory.h"
#include "common/threads.h"
#include "kernels/cpu.h"

#define NP_BLOCK 65536   /* numpy.histogram's block size (weights add per block) */

/* Correct a computed index against the edges, as NumPy does after its
 * arithmetic guess: one step down if x is left of its edge, one step up if it
 * reached the next edge (never past the closed last bin). */
static inline int64_t correct_index(const mi_hist_bins *b, double x, int64_t i)
{
    if (i >= b->n_bins) i = b->n_bins - 1;   /* x == last edge (or a rounding past it) */
    if (i < 0) i = 0;
    if (x < b->edges[i] && i > 0) i--;
    if (x >= b->edges[i + 1] && i != b->n_bins - 1) i++;
    return i;
}

static inline int64_t bin_uniform_f32(const mi_hist_bins *b, float x)
{
    if (!((double)x >= b->first_edge && (double)x <= b->last_edge)) return -1;
    float diff = x - (float)b->first_edge;       /* NumPy subtracts in the edge dtype */
    int64_t i;
    if (b->div_f64) i = (int64_t)((double)diff / b->denom * (double)b->n_bins);
    else i = (int64_t)(diff / (float)b->denom * (float)b->n_bins);
    return correct_index(b, (double)x, i);
}

static inline int64_t bin_uniform_f64(const mi_hist_bins *b, double x)
{
    if (!(x >= b->first_edge && x <= b->last_edge)) return -1;
    int64_t i = (int64_t)((x - b->first_edge) / b->denom * (double)b->n_bins);
    return correct_index(b, x, i);
}

/* searchsorted semantics: the last i with edges[i] <= x; x == last edge goes
 * to the last bin. A guess from the edges' overall spacing, walked at most a
 * few steps (exact for any increasing edges; linspace edges need 0-1 steps),
 * else binary search. */
static inline int64_t bin_search(const mi_hist_bins *b, double x)
{
    const double *e = b->edges;
    int64_t nb = b->n_bins;
    if (!(x >= e[0] && x <= e[nb])) return -1;
    if (x == e[nb]) return nb - 1;
    double g = (x - e[0]) * b->inv_span;
    int64_t i = g < (double)nb ? (int64_t)g : nb - 1;
    for (int step = 0; step < 4; step++) {
        if (e[i] > x) { i--; continue; }          /* i >= 1 here since e[0] <= x */
        if (e[i + 1] <= x) { i++; continue; }     /* i + 1 < nb here since x < e[nb] */
        return i;
    }
    int64_t lo = 0, hi = nb;          /* invariant: e[lo] <= x < e[hi] */
    while (hi - lo > 1) {
        int64_t mid = lo + (hi - lo) / 2;
        if (e[mid] <= x) lo = mid; else hi = mid;
    }
    return lo;
}

void mi_hist_prepare(mi_hist_bins *b)
{
    double span = b->edges[b->n_bins] - b->edges[0];
    b->inv_span = span > 0 && isfinite(span) ? (double)b->n_bins / span : 0.0;
}

int64_t mi_hist_bin_f32(const mi_hist_bins *b, float x)
{
    return b->uniform ? bin_uniform_f32(b, x) : bin_search(b, (double)x);
}

static inline int64_t bin_of(const mi_hist_bins *b, const void *x, int x_f64, int64_t k)
{
    if (x_f64) {
        double v = ((const double *)x)[k];
        return b->uniform ? bin_uniform_f64(b, v) : bin_search(b, v);
    }
    return mi_hist_bin_f32(b, ((const float *)x)[k]);
}

void mi_hist_index_f32(const mi_hist_bins *b, const float *x, int64_t n, int32_t *idx)
{
    switch (mi_cpu_isa()) {
    case MI_ISA_AVX512: mi_hist_index_f32_avx512(b, x, n, idx); break;
    case MI_ISA_AVX2: mi_hist_index_f32_avx2(b, x, n, idx); break;
    default: mi_hist_index_f32_scalar(b, x, n, idx); break;
    }
}

#define SUB_BINS 1024   /* up to this many bins the counts go through sub-histograms (32 KiB) */

/* Unweighted counts of x[lo:hi] added to h. float32 on the uniform path:
 * vectorised indices per block, then a scalar counting loop. */
static void count_range(const mi_hist_bins *b, const void *x, int x_f64, int64_t lo,
                        int64_t hi, int64_t *h)
{
    if (!x_f64 && b->uniform && b->n_bins <= SUB_BINS) {
        /* Four interleaved sub-histograms, slot 0 of each for "not kept" (-1):
         * consecutive values that land in one bin no longer wait on each
         * other's increment, and there is no branch. Counts are integers, so
         * the sum is exact. */
        int32_t idx[1024];
        int64_t sub[4][SUB_BINS + 1];
        const int64_t nb1 = b->n_bins + 1;
        for (int j = 0; j < 4; j++) memset(sub[j], 0, sizeof(int64_t) * (size_t)nb1);
        for (int64_t s = lo; s < hi; s += 1024) {
            int64_t len = hi - s < 1024 ? hi - s : 1024;
            mi_hist_index_f32(b, (const float *)x + s, len, idx);
            int64_t k = 0;
            for (; k + 4 <= len; k += 4) {
                sub[0][idx[k] + 1]++;
                sub[1][idx[k + 1] + 1]++;
                sub[2][idx[k + 2] + 1]++;
                sub[3][idx[k + 3] + 1]++;
            }
            for (; k < len; k++) sub[0][idx[k] + 1]++;
        }
        for (int64_t i = 0; i < b->n_bins; i++)
            h[i] += sub[0][i + 1] + sub[1][i + 1] + sub[2][i + 1] + sub[3][i + 1];
        return;
    }
    if (!x_f64 && b->uniform && b->n_bins < INT32_MAX) {
        int32_t idx[1024];
        for (int64_t s = lo; s < hi; s += 1024) {
            int64_t len = hi - s < 1024 ? hi - s : 1024;
            mi_hist_index_f32(b, (const float *)x + s, len, idx);
            for (int64_t k = 0; k < len; k++)
                if (idx[k] >= 0) h[idx[k]]++;
        }
        return;
    }
    for (int64_t k = lo; k < hi; k++) {
        int64_t i = bin_of(b, x, x_f64, k);
        if (i >= 0) h[i]++;
    }
}

/* Weighted sums of one row, in NumPy's order and roundings. */
static void weighted_row(const mi_hist_bins *b, const void *x, int x_f64, int64_t n,
                         const double *w, int ntype_f32, double *out, double *block)
{
    int64_t nb = b->n_bins;
    for (int64_t i = 0; i < nb; i++) out[i] = 0.0;
    for (int64_t s = 0; s < n; s += NP_BLOCK) {
        int64_t e = s + NP_BLOCK < n ? s + NP_BLOCK : n;
        for (int64_t i = 0; i < nb; i++) block[i] = 0.0;
        for (int64_t k = s; k < e; k++) {
            int64_t i = bin_of(b, x, x_f64, k);
            if (i >= 0) block[i] += w[k];
        }
        for (int64_t i = 0; i < nb; i++)
            out[i] = ntype_f32 ? (double)((float)out[i] + (float)block[i]) : out[i] + block[i];
    }
}

static mi_status count_all(const mi_hist_bins *b, const void *x, int x_f64, size_t xsz,
                           int64_t rows, int64_t n, int64_t *counts);

mi_status mi_histogram(const void *x, int x_f64, int64_t rows, int64_t n,
                       const mi_hist_bins *bins, const double *weights, int ntype_f32,
                       int64_t *counts, double *wcounts)
{
    mi_hist_bins bb = *bins;
    const mi_hist_bins *b = &bb;
    bb.edges_f32 = NULL;
    mi_hist_prepare(&bb);
    int64_t nb = b->n_bins;
    if (nb < 1) return mi_fail(MI_ERR_VALUE, "histogram: bins must be >= 1, got %lld",
                               (long long)nb);
    for (int64_t i = 0; i < nb; i++)
        if (!(b->edges[i] <= b->edges[i + 1]))
            return mi_fail(MI_ERR_VALUE, "histogram: `bins` must increase monotonically "
                           "(edge %lld = %g, edge %lld = %g)", (long long)i, b->edges[i],
                           (long long)(i + 1), b->edges[i + 1]);
    size_t xsz = x_f64 ? sizeof(double) : sizeof(float);

    if (weights) {
        double *scratch = mi_malloc(sizeof(double) * (size_t)nb * (size_t)(rows ? rows : 1));
        if (!scratch) return mi_fail(MI_ERR_NOMEM, "histogram: out of memory for %lld bins",
                                     (long long)nb);
        #pragma omp parallel for schedule(dynamic, 1) if (rows > 1) num_threads(mi_get_num_threads())
        for (int64_t r = 0; r < rows; r++)
            weighted_row(b, (const char *)x + (size_t)r * n * xsz, x_f64, n, weights + r * n,
                         ntype_f32, wcounts + r * nb, scratch + r * nb);
        mi_free(scratch);
        return MI_OK;
    }

    /* float32 data, float32 division, float-exact edges (np.histogram's bins=int on
     * float32 data): the index kernel compares against float edges */
    float *ef = NULL;
    if (!x_f64 && b->uniform && !b->div_f64 && nb < INT32_MAX && (ef = mi_malloc(sizeof(float) * (size_t)(nb + 1)))) {
        for (int64_t i = 0; i <= nb && ef; i++) {
            ef[i] = (float)b->edges[i];
            if ((double)ef[i] != b->edges[i]) { mi_free(ef); ef = NULL; }
        }
        bb.edges_f32 = ef;
    }
    mi_status st = count_all(b, x, x_f64, xsz, rows, n, counts);
    mi_free(ef);
    return st;
}

/* Unweighted counts of every row (see mi_histogram). */
static mi_status count_all(const mi_hist_bins *b, const void *x, int x_f64, size_t xsz,
                           int64_t rows, int64_t n, int64_t *counts)
{
    int64_t nb = b->n_bins;
    memset(counts, 0, sizeof(int64_t) * (size_t)(rows * nb));
    if (rows > 1) {   /* one row per task */
        #pragma omp parallel for schedule(dynamic, 1) num_threads(mi_get_num_threads())
        for (int64_t r = 0; r < rows; r++)
            count_range(b, (const char *)x + (size_t)r * n * xsz, x_f64, 0, n, counts + r * nb);
        return MI_OK;
    }
    if (rows == 0) return MI_OK;
    /* One row: split the values; integer counts sum exactly in any order. */
    int nt = n > 65536 ? mi_get_num_threads() : 1;
    int64_t *part = mi_calloc(sizeof(int64_t) * (size_t)nb * (size_t)nt);
    if (!part) return mi_fail(MI_ERR_NOMEM, "histogram: out of memory for %lld bins",
                              (long long)nb);
    #pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num(), T = omp_get_num_threads();
        int64_t lo = n * t / T, hi = n * (t + 1) / T;
        count_range(b, x, x_f64, lo, hi, part + (int64_t)t * nb);
    }
    for (int t = 0; t < nt; t++)
        for (int64_t i = 0; i < nb; i++) counts[i] += part[(int64_t)t * nb + i];
    mi_free(part);
    return MI_OK;
}
