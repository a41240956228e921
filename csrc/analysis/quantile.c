/* quantile.c - np.percentile(x, q, method="linear") by quickselect (see quantile.h). */
/* The lerp must round each operation as NumPy's ufuncs do: no fused multiply-add. */
#pragma GCC optimize("fp-contract=off")

#include "analysis/quantile.h"

#include <math.h>
#include <string.h>

#include "common/memory.h"

/* Quickselect, nth_element style: after select(v, lo, hi, k), v[k] holds the
 * value a full sort of v[lo..hi] would put there, v[lo..k) <= v[k] <= v(k..hi].
 * Median-of-3 pivot, Hoare partition (ties split evenly, so constant or
 * heavily tied data stays O(n)); after 64 rounds without converging (a
 * median-of-3 killer sequence) the pivot position becomes pseudo-random,
 * which keeps adversarial inputs linear in expectation. The pivot position
 * is always < hi, so each round shrinks the range. NaN-free input only (the
 * caller screens NaN). */
#define DEFINE_SELECT(NAME, T)                                                   \
static void NAME##_insertion(T *v, int64_t lo, int64_t hi)                       \
{                                                                                \
    for (int64_t i = lo + 1; i <= hi; i++) {                                     \
        T x = v[i];                                                              \
        int64_t j = i - 1;                                                       \
        while (j >= lo && v[j] > x) { v[j + 1] = v[j]; j--; }                    \
        v[j + 1] = x;                                                            \
    }                                                                            \
}                                                                                \
static void NAME(T *v, int64_t lo, int64_t hi, int64_t k)                        \
{                                                                                \
    uint64_t rng = 0x9E3779B97F4A7C15ull ^ (uint64_t)(hi - lo);                  \
    int rounds = 0;                                                              \
    while (hi - lo > 16) {                                                       \
        int64_t mid = lo + (hi - lo) / 2;                                        \
        if (++rounds > 64) {   /* unlucky pivots: random pivot from here on */   \
            rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;                 \
            mid = lo + (int64_t)(rng % (uint64_t)(hi - lo)); /* < hi */                 \
        }                                                                        \
        /* median of v[lo], v[mid], v[hi] to v[mid] */                           \
        T t;                                                                     \
        if (v[mid] < v[lo]) { t = v[mid]; v[mid] = v[lo]; v[lo] = t; }           \
        if (v[hi] < v[lo]) { t = v[hi]; v[hi] = v[lo]; v[lo] = t; }              \
        if (v[hi] < v[mid]) { t = v[hi]; v[hi] = v[mid]; v[mid] = t; }           \
        T p = v[mid];                                                            \
        int64_t i = lo - 1, j = hi + 1;                                          \
        for (;;) {                                                               \
            do i++; while (v[i] < p);                                            \
            do j--; while (v[j] > p);                                            \
            if (i >= j) break;                                                   \
            t = v[i]; v[i] = v[j]; v[j] = t;                                     \
        }                                                                        \
        /* v[lo..j] <= p <= v[j+1..hi] */                                        \
        if (k <= j) hi = j; else lo = j + 1;                                     \
    }                                                                            \
    NAME##_insertion(v, lo, hi);                                                 \
}

DEFINE_SELECT(select_f32, float)
DEFINE_SELECT(select_f64, double)

/* Sorted-order values at positions i (and i + 1 when i + 1 < n) of v[lo..n),
 * everything before lo already <= everything from lo: select i, then the next
 * one is the minimum of the part above i. */
#define DEFINE_PAIR(NAME, SEL, T)                                                \
static void NAME(T *v, int64_t lo, int64_t n, int64_t i, T *a, T *b)             \
{                                                                                \
    SEL(v, lo, n - 1, i);                                                        \
    *a = v[i];                                                                   \
    if (i + 1 < n) {                                                             \
        int64_t m = i + 1;                                                       \
        for (int64_t k = i + 2; k < n; k++) if (v[k] < v[m]) m = k;              \
        T t = v[m]; v[m] = v[i + 1]; v[i + 1] = t;                               \
        *b = v[i + 1];                                                           \
    } else {                                                                     \
        *b = v[i];                                                               \
    }                                                                            \
}

DEFINE_PAIR(pair_f32, select_f32, float)
DEFINE_PAIR(pair_f64, select_f64, double)

/* Sorted-order values at positions i and i + 1 (i + 1 < n, else i twice) of
 * x[0..n) without copying x: Floyd-Rivest style. A systematic sample of S
 * values brackets the target rank in [L, H]; one pass counts the values < L
 * and gathers those in [L, H] into buf (cap values, then SAMPLE values of
 * sample scratch; written branch-free); if the ranks i and i + 1
 * fall among the gathered ones, they are selected there. Returns 0 when the
 * bracket missed or buf overflowed (the caller then selects on a full copy).
 * NaN-free input only. */
#define SAMPLE 8192
#define SPREAD 160
#define DEFINE_SAMPLED(NAME, SEL, PAIR, T)                                         \
static int NAME(const T *x, int64_t n, int64_t i, T *buf, int64_t cap, T *a, T *b) \
{                                                                                  \
    T *smp = buf + cap;   /* SAMPLE scratch values after the gather area */      \
    for (int64_t s = 0; s < SAMPLE; s++)                                           \
        smp[s] = x[(int64_t)(((__int128)(2 * s + 1) * n) / (2 * SAMPLE))];         \
    int64_t ks = (int64_t)(((__int128)i * SAMPLE) / n);                            \
    int64_t kl = ks - SPREAD, kh = ks + SPREAD;                                    \
    T L = -(T)INFINITY, H = (T)INFINITY;                                           \
    if (kl >= 0) { SEL(smp, 0, SAMPLE - 1, kl); L = smp[kl]; }                     \
    if (kh < SAMPLE) { SEL(smp, kl > 0 ? kl : 0, SAMPLE - 1, kh); H = smp[kh]; }   \
    int64_t lt = 0, m = 0;                                                         \
    for (int64_t k0 = 0; k0 < n; k0 += 1024) {   /* branch-free gather */          \
        int64_t k1 = k0 + 1024 < n ? k0 + 1024 : n;                                \
        if (m + (k1 - k0) > cap) return 0;                                         \
        for (int64_t k = k0; k < k1; k++) {                                        \
            T v = x[k];                                                            \
            lt += v < L;                                                           \
            buf[m] = v;                                                            \
            m += (v >= L) & (v <= H);                                              \
        }                                                                          \
    }                                                                              \
    int64_t last = i + 1 < n ? i + 1 : i;                                          \
    if (i < lt || last >= lt + m) return 0;                                        \
    PAIR(buf, 0, m, i - lt, a, b);                                                 \
    if (i + 1 >= n) *b = *a;                                                       \
    return 1;                                                                      \
}

DEFINE_SAMPLED(sampled_f32, select_f32, pair_f32, float)
DEFINE_SAMPLED(sampled_f64, select_f64, pair_f64, double)

mi_status mi_percentile_linear(const void *x, int x_f64, int64_t n,
                               const double *q, int nq, double *out)
{
    if (n < 1)
        return mi_fail(MI_ERR_VALUE, "percentile: x is empty");
    if (nq < 0 || nq > 64)
        return mi_fail(MI_ERR_VALUE, "percentile: expected 0 to 64 quantiles, got %d", nq);
    int order[64];
    for (int j = 0; j < nq; j++) {
        if (!(q[j] >= 0.0 && q[j] <= 1.0))
            return mi_fail(MI_ERR_VALUE, "percentile: quantile %d (%g) is not in [0, 1]", j, q[j]);
        order[j] = j;
    }
    /* ascending quantiles: each selection works above the previous one */
    for (int j = 1; j < nq; j++)
        for (int k = j; k > 0 && q[order[k]] < q[order[k - 1]]; k--) {
            int t = order[k]; order[k] = order[k - 1]; order[k - 1] = t;
        }

    int has_nan = 0;
    if (x_f64) {
        const double *d = x;
        for (int64_t k = 0; k < n; k++) has_nan |= d[k] != d[k];
    } else {
        const float *f = x;
        for (int64_t k = 0; k < n; k++) has_nan |= f[k] != f[k];
    }
    if (has_nan) {
        for (int j = 0; j < nq; j++) out[j] = NAN;
        return MI_OK;
    }

    size_t es = x_f64 ? sizeof(double) : sizeof(float);
    void *v = NULL;      /* full scratch copy, made only when sampling misses */
    void *buf = NULL;    /* gathered bracket values */
    int64_t cap = n / 8 + 1024;
    if (n >= 8 * SAMPLE) {
        buf = mi_malloc(es * (size_t)(cap + SAMPLE));
        if (!buf)
            return mi_fail(MI_ERR_NOMEM, "percentile: no memory for %lld values",
                           (long long)(cap + SAMPLE));
    }
    int64_t done = 0;   /* v[0..done) are in sorted position and <= the rest */
    for (int jj = 0; jj < nq; jj++) {
        int j = order[jj];
        double vi = (double)(n - 1) * q[j];
        int64_t i;
        double t;
        if (vi >= (double)(n - 1)) {       /* NumPy: both indexes -1, gamma from -1 */
            i = n - 1;
            t = vi - (-1.0);
        } else {
            double f = floor(vi);
            i = (int64_t)f;
            t = vi - f;
        }
        double res;
        if (x_f64) {
            double a, b;
            if (!(buf && sampled_f64(x, n, i, buf, cap, &a, &b))) {
                if (!v) {
                    if (!(v = mi_malloc(es * (size_t)n))) goto nomem;
                    memcpy(v, x, es * (size_t)n);
                }
                pair_f64(v, i < done ? i : done, n, i, &a, &b);
                done = i + 2 < n ? i + 2 : n;
            }
            double diff = b - a;
            res = t >= 0.5 ? b - diff * (1.0 - t) : a + diff * t;
        } else {
            float a, b;
            if (!(buf && sampled_f32(x, n, i, buf, cap, &a, &b))) {
                if (!v) {
                    if (!(v = mi_malloc(es * (size_t)n))) goto nomem;
                    memcpy(v, x, es * (size_t)n);
                }
                pair_f32(v, i < done ? i : done, n, i, &a, &b);
                done = i + 2 < n ? i + 2 : n;
            }
            float diff = b - a;   /* float32 subtraction, as NumPy's b - a */
            res = t >= 0.5 ? (double)b - (double)diff * (1.0 - t)
                           : (double)a + (double)diff * t;
        }
        out[j] = res;
    }
    mi_free(buf);
    mi_free(v);
    return MI_OK;
nomem:
    mi_free(buf);
    return mi_fail(MI_ERR_NOMEM, "percentile: no memory for a %lld-value scratch copy",
                   (long long)n);
}
