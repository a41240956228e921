/* moments.c - mean, L1 mean, variance, min, max along an axis (see moments.h). */
#include "analysis/moments.h"

#include <math.h>
#include <stdlib.h>

#include "common/memory.h"
#include "common/threads.h"

#define CHUNK 16384   /* fixed partial-sum length: order independent of threads */

static inline double load(const void *x, int f64, int64_t k)
{
    return f64 ? ((const double *)x)[k] : (double)((const float *)x)[k];
}

/* Sums of one contiguous chunk. */
static void chunk_sums(const void *x, int f64, int64_t lo, int64_t hi, double *s, double *sa,
                       double *mn, double *mx, int *nan)
{
    double a = 0, b = 0, lo_v = INFINITY, hi_v = -INFINITY;
    int has_nan = 0;
    for (int64_t k = lo; k < hi; k++) {
        double v = load(x, f64, k);
        a += v;
        b += fabs(v);
        if (v < lo_v) lo_v = v;
        if (v > hi_v) hi_v = v;
        has_nan |= v != v;
    }
    *s = a; *sa = b; *mn = lo_v; *mx = hi_v; *nan = has_nan;
}

/* axis = None (or a last-axis reduction of one long row): chunked. */
static void moments_flat(const void *x, int f64, int64_t n, double ddof, double *res)
{
    int64_t nc = (n + CHUNK - 1) / CHUNK;
    double *part = malloc(sizeof(double) * 5 * (size_t)(nc ? nc : 1));
    int *nan = malloc(sizeof(int) * (size_t)(nc ? nc : 1));
    if (!part || !nan) {   /* no memory: report NaN rather than crash */
        for (int i = 0; i < 5; i++) res[i] = NAN;
        free(part); free(nan);
        return;
    }
    #pragma omp parallel for schedule(static) if (nc > 4) num_threads(mi_get_num_threads())
    for (int64_t c = 0; c < nc; c++) {
        int64_t lo = c * CHUNK, hi = lo + CHUNK < n ? lo + CHUNK : n;
        chunk_sums(x, f64, lo, hi, &part[5 * c], &part[5 * c + 1], &part[5 * c + 2],
                   &part[5 * c + 3], &nan[c]);
    }
    double s = 0, sa = 0, mn = INFINITY, mx = -INFINITY;
    int any_nan = 0;
    for (int64_t c = 0; c < nc; c++) {
        s += part[5 * c]; sa += part[5 * c + 1];
        if (part[5 * c + 2] < mn) mn = part[5 * c + 2];
        if (part[5 * c + 3] > mx) mx = part[5 * c + 3];
        any_nan |= nan[c];
    }
    double mean = s / (double)n;
    #pragma omp parallel for schedule(static) if (nc > 4) num_threads(mi_get_num_threads())
    for (int64_t c = 0; c < nc; c++) {
        int64_t lo = c * CHUNK, hi = lo + CHUNK < n ? lo + CHUNK : n;
        double q = 0;
        for (int64_t k = lo; k < hi; k++) { double d = load(x, f64, k) - mean; q += d * d; }
        part[5 * c + 4] = q;
    }
    double q = 0;
    for (int64_t c = 0; c < nc; c++) q += part[5 * c + 4];
    res[0] = mean;
    res[1] = sa / (double)n;
    res[2] = q / ((double)n - ddof);
    res[3] = any_nan || n == 0 ? NAN : mn;
    res[4] = any_nan || n == 0 ? NAN : mx;
    free(part);
    free(nan);
}

void mi_moments(const void *x, int f64, int64_t outer, int64_t n, int64_t inner, double ddof,
                const mi_moments_out *out)
{
    size_t xsz = f64 ? sizeof(double) : sizeof(float);
    if (inner == 1) {
        /* each row contiguous: chunked sums per row, rows in parallel when many */
        #pragma omp parallel for schedule(dynamic, 1) if (outer > 1) num_threads(mi_get_num_threads())
        for (int64_t o = 0; o < outer; o++) {
            double r[5];
            moments_flat((const char *)x + (size_t)(o * n) * xsz, f64, n, ddof, r);
            out->mean[o] = r[0]; out->abs_mean[o] = r[1]; out->var[o] = r[2];
            out->std[o] = sqrt(r[2]); out->min[o] = r[3]; out->max[o] = r[4];
        }
        return;
    }
    /* reduce a middle axis: walk the n rows in order, columns in blocks */
    const int64_t JB = 256;
    int64_t nblk = (inner + JB - 1) / JB;
    #pragma omp parallel for schedule(dynamic, 1) num_threads(mi_get_num_threads())
    for (int64_t t = 0; t < outer * nblk; t++) {
        int64_t o = t / nblk, j0 = (t % nblk) * JB, j1 = j0 + JB < inner ? j0 + JB : inner;
        double s[256], sa[256], mn[256], mx[256], q[256];
        int nan[256];
        for (int64_t j = j0; j < j1; j++) {
            s[j - j0] = sa[j - j0] = q[j - j0] = 0;
            mn[j - j0] = INFINITY; mx[j - j0] = -INFINITY; nan[j - j0] = 0;
        }
        const char *base = (const char *)x + (size_t)(o * n * inner) * xsz;
        for (int64_t k = 0; k < n; k++)
            for (int64_t j = j0; j < j1; j++) {
                double v = load(base, f64, k * inner + j);
                s[j - j0] += v; sa[j - j0] += fabs(v);
                if (v < mn[j - j0]) mn[j - j0] = v;
                if (v > mx[j - j0]) mx[j - j0] = v;
                nan[j - j0] |= v != v;
            }
        for (int64_t k = 0; k < n; k++)
            for (int64_t j = j0; j < j1; j++) {
                double d = load(base, f64, k * inner + j) - s[j - j0] / (double)n;
                q[j - j0] += d * d;
            }
        for (int64_t j = j0; j < j1; j++) {
            int64_t i = o * inner + j;
            out->mean[i] = s[j - j0] / (double)n;
            out->abs_mean[i] = sa[j - j0] / (double)n;
            out->var[i] = q[j - j0] / ((double)n - ddof);
            out->std[i] = sqrt(out->var[i]);
            out->min[i] = nan[j - j0] || n == 0 ? NAN : mn[j - j0];
            out->max[i] = nan[j - j0] || n == 0 ? NAN : mx[j - j0];
        }
    }
}

void mi_minmax(const void *x, int f64, int64_t n, double *mn_out, double *mx_out)
{
    int64_t nc = (n + CHUNK - 1) / CHUNK;
    double mn = INFINITY, mx = -INFINITY;
    int any_nan = 0;
    #pragma omp parallel for schedule(static) reduction(min : mn) reduction(max : mx) \
        reduction(| : any_nan) if (nc > 4) num_threads(mi_get_num_threads())
    for (int64_t c = 0; c < nc; c++) {
        int64_t lo = c * CHUNK, hi = lo + CHUNK < n ? lo + CHUNK : n;
        double a = INFINITY, b = -INFINITY;
        int bad = 0;
        if (f64) {
            const double *p = x;
            for (int64_t k = lo; k < hi; k++) {
                double v = p[k];
                a = v < a ? v : a; b = v > b ? v : b; bad |= v != v;
            }
        } else {
            const float *p = x;
            float af = INFINITY, bf = -INFINITY;
            for (int64_t k = lo; k < hi; k++) {
                float v = p[k];
                af = v < af ? v : af; bf = v > bf ? v : bf; bad |= v != v;
            }
            a = af; b = bf;
        }
        mn = a < mn ? a : mn;
        mx = b > mx ? b : mx;
        any_nan |= bad;
    }
    *mn_out = any_nan ? NAN : mn;
    *mx_out = any_nan ? NAN : mx;
}
