/* accumulators.c - mergeable corpus statistics (contracts in accumulators.h).
 *
 * Parallel loops run over blocks of UNIT_BLOCK units: a thread streams every
 * row of the batch through its block's units, so each unit is reduced by one
 * thread in row order (bitwise identical for any thread count) while reading
 * contiguous memory. */
#include "analysis/accumulators.h"

#include <math.h>
#include <string.h>

#include "common/threads.h"

enum { UNIT_BLOCK = 64 };

static inline int64_t n_unit_blocks(int64_t units) { return (units + UNIT_BLOCK - 1) / UNIT_BLOCK; }

/* ------------------------------------------------------------ mean / variance */

/* Fold (nb, mb, m2b) into (*na, *ma, *m2a): Chan, Golub and LeVeque's rule. */
static inline void chan_combine(int64_t *na, double *ma, double *m2a, int64_t nb, double mb, double m2b)
{
    if (nb == 0) return;
    if (*na == 0) { *na = nb; *ma = mb; *m2a = m2b; return; }
    double n = (double)(*na + nb), d = mb - *ma;
    *ma += d * ((double)nb / n);
    *m2a += m2b + d * d * ((double)*na * (double)nb / n);
    *na += nb;
}

void mi_acc_moments_update(int64_t *count, double *mean, double *m2,
                           const float *x, int64_t rows, int64_t units)
{
    if (rows == 0) return;
    #pragma omp parallel for schedule(static) num_threads(mi_get_num_threads())
    for (int64_t b = 0; b < n_unit_blocks(units); b++) {
        int64_t u0 = b * UNIT_BLOCK, w = units - u0 < UNIT_BLOCK ? units - u0 : UNIT_BLOCK;
        double bm[UNIT_BLOCK] = {0}, bm2[UNIT_BLOCK] = {0};   /* the batch's mean and M2 */
        for (int64_t r = 0; r < rows; r++)
            for (int64_t j = 0; j < w; j++) bm[j] += (double)x[r * units + u0 + j];
        for (int64_t j = 0; j < w; j++) bm[j] /= (double)rows;
        for (int64_t r = 0; r < rows; r++)
            for (int64_t j = 0; j < w; j++) {
                double d = (double)x[r * units + u0 + j] - bm[j];
                bm2[j] += d * d;
            }
        for (int64_t j = 0; j < w; j++)
            chan_combine(&count[u0 + j], &mean[u0 + j], &m2[u0 + j], rows, bm[j], bm2[j]);
    }
}

void mi_acc_moments_merge(int64_t *count, double *mean, double *m2, const int64_t *count_b,
                          const double *mean_b, const double *m2_b, int64_t units)
{
    for (int64_t u = 0; u < units; u++)
        chan_combine(&count[u], &mean[u], &m2[u], count_b[u], mean_b[u], m2_b[u]);
}

/* ------------------------------------------------------------------ histograms */

/* Count v in one unit's histogram: counts[B], outside[3] = below, above, NaN.
 * In range, the bin is the last i with edges[i] <= v (np.searchsorted side
 * 'right', minus one), the right edge itself going to the last bin. */
static inline void count_value(int64_t *counts, int64_t *outside, const double *edges, int64_t nb,
                               double v)
{
    if (v != v) { outside[2]++; return; }
    if (v < edges[0]) { outside[0]++; return; }
    if (v > edges[nb]) { outside[1]++; return; }
    if (v == edges[nb]) { counts[nb - 1]++; return; }
    int64_t lo = 0, hi = nb;   /* edges[lo] <= v < edges[hi] */
    while (hi - lo > 1) {
        int64_t mid = lo + (hi - lo) / 2;
        if (edges[mid] <= v) lo = mid; else hi = mid;
    }
    counts[lo]++;
}

void mi_acc_hist_update(int64_t *counts, int64_t *outside, const double *edges, int64_t n_bins,
                        const float *x, int64_t rows, int64_t units)
{
    #pragma omp parallel for schedule(static) num_threads(mi_get_num_threads())
    for (int64_t b = 0; b < n_unit_blocks(units); b++) {
        int64_t u0 = b * UNIT_BLOCK, u1 = units - u0 < UNIT_BLOCK ? units : u0 + UNIT_BLOCK;
        for (int64_t r = 0; r < rows; r++)
            for (int64_t u = u0; u < u1; u++)
                count_value(counts + u * n_bins, outside + u * 3, edges, n_bins, (double)x[r * units + u]);
    }
}

void mi_acc_entropy_update(int64_t *counts, int64_t *outside, const double *edges, int64_t n_bins,
                           const float *pattern, int64_t n, int64_t heads, int64_t q, int64_t s)
{
    #pragma omp parallel for schedule(static) num_threads(mi_get_num_threads())
    for (int64_t h = 0; h < heads; h++)
        for (int64_t i = 0; i < n; i++)
            for (int64_t t = 0; t < q; t++) {
                const float *p = pattern + ((i * heads + h) * q + t) * s;   /* one softmax row [S] */
                double e = 0.0;
                for (int64_t j = 0; j < s; j++)
                    if (!(p[j] <= 0.0f)) e -= (double)p[j] * log((double)p[j]);   /* NaN stays NaN */
                count_value(counts + h * n_bins, outside + h * 3, edges, n_bins, e);
            }
}

/* ----------------------------------------------------------------------- top-k */

/* The total order of the lists: larger value first, then smaller index. */
static inline int topk_before(float va, int64_t ia, float vb, int64_t ib)
{
    return va > vb || (va == vb && ia < ib);
}

/* Insert (val, idx) into one unit's sorted list v[fill], ix[fill] of capacity k. */
static inline void topk_insert(float *v, int64_t *ix, int64_t *fill, int64_t k, float val, int64_t idx)
{
    int64_t n = *fill;
    if (n == k && !topk_before(val, idx, v[k - 1], ix[k - 1])) return;
    int64_t pos = n < k ? n : k - 1;   /* the free slot (or the dropped last one) */
    for (; pos > 0 && topk_before(val, idx, v[pos - 1], ix[pos - 1]); pos--) {
        v[pos] = v[pos - 1];
        ix[pos] = ix[pos - 1];
    }
    v[pos] = val;
    ix[pos] = idx;
    if (n < k) *fill = n + 1;
}

void mi_acc_topk_update(float *values, int64_t *index, int64_t *fill, int64_t k,
                        const float *x, const int64_t *row_index, int64_t rows, int64_t units)
{
    if (k == 0) return;
    #pragma omp parallel for schedule(static) num_threads(mi_get_num_threads())
    for (int64_t b = 0; b < n_unit_blocks(units); b++) {
        int64_t u0 = b * UNIT_BLOCK, u1 = units - u0 < UNIT_BLOCK ? units : u0 + UNIT_BLOCK;
        for (int64_t r = 0; r < rows; r++)
            for (int64_t u = u0; u < u1; u++) {
                float val = x[r * units + u];
                if (val == val) topk_insert(values + u * k, index + u * k, fill + u, k, val, row_index[r]);
            }
    }
}

void mi_acc_topk_merge(float *values, int64_t *index, int64_t *fill, int64_t k,
                       const float *values_b, const int64_t *index_b, const int64_t *fill_b,
                       int64_t units)
{
    #pragma omp parallel for schedule(static) num_threads(mi_get_num_threads())
    for (int64_t u = 0; u < units; u++) {
        float *va = values + u * k;
        int64_t *ia = index + u * k;
        const float *vb = values_b + u * k;
        const int64_t *ib = index_b + u * k;
        /* how many of each list the merged top m holds, then merge backwards in
         * place: the write position never passes an unread entry of a */
        int64_t na = fill[u], nb = fill_b[u], m = na + nb < k ? na + nb : k, ca = 0, cb = 0;
        while (ca + cb < m) {
            if (cb == nb || (ca < na && topk_before(va[ca], ia[ca], vb[cb], ib[cb]))) ca++;
            else cb++;
        }
        for (int64_t w = m - 1, i = ca - 1, j = cb - 1; w >= 0; w--) {
            if (j < 0 || (i >= 0 && !topk_before(va[i], ia[i], vb[j], ib[j]))) {
                va[w] = va[i]; ia[w] = ia[i]; i--;
            } else {
                va[w] = vb[j]; ia[w] = ib[j]; j--;
            }
        }
        fill[u] = m;
    }
}

/* -------------------------------------------------------------- quantile sketch */

void mi_acc_sketch_update(int64_t *counts, int64_t *nan, const mi_sketch_params *p,
                          const float *x, int64_t rows, int64_t units)
{
    int64_t nb = p->nb, width = 2 * nb + 1;
    #pragma omp parallel for schedule(static) num_threads(mi_get_num_threads())
    for (int64_t b = 0; b < n_unit_blocks(units); b++) {
        int64_t u0 = b * UNIT_BLOCK, u1 = units - u0 < UNIT_BLOCK ? units : u0 + UNIT_BLOCK;
        for (int64_t r = 0; r < rows; r++)
            for (int64_t u = u0; u < u1; u++) {
                double v = (double)x[r * units + u], a = fabs(v);
                if (v != v) { nan[u]++; continue; }
                int64_t bucket = nb;   /* zero bucket */
                if (a >= p->min_abs) {
                    /* clamp in double: log(inf) = inf has no int64 value */
                    double e = ceil(log(a) / p->log_gamma) - (double)p->first;
                    int64_t i = e < 0 ? 0 : e >= (double)nb ? nb - 1 : (int64_t)e;
                    bucket = v > 0 ? nb + 1 + i : nb - 1 - i;
                }
                counts[u * width + bucket]++;
            }
    }
}

/* ------------------------------------------------------------ reservoir samples */

/* splitmix64's finaliser: a bijective 64-bit mix. */
static inline uint64_t mix64(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

uint64_t mi_acc_reservoir_key(uint64_t seed, int64_t row_index)
{
    return mix64(seed ^ mix64((uint64_t)row_index));
}

static inline int res_before(uint64_t ka, int64_t ia, uint64_t kb, int64_t ib)
{
    return ka < kb || (ka == kb && ia < ib);
}

/* The slot holding the largest (key, index) of a full reservoir. */
static int64_t res_worst(const uint64_t *key, const int64_t *index, int64_t k)
{
    int64_t w = 0;
    for (int64_t i = 1; i < k; i++)
        if (res_before(key[w], index[w], key[i], index[i])) w = i;
    return w;
}

/* Offer one row (its key precomputed); slots are unordered, *worst tracks
 * the slot to replace once the reservoir is full. */
static inline void res_offer(float *samples, int64_t *index, uint64_t *key, int64_t *fill, int64_t k,
                             int64_t *worst, const float *row, int64_t idx, uint64_t kv, int64_t units)
{
    int64_t slot;
    if (*fill < k) {
        slot = (*fill)++;
    } else {
        if (!res_before(kv, idx, key[*worst], index[*worst])) return;
        slot = *worst;
    }
    key[slot] = kv;
    index[slot] = idx;
    memcpy(samples + slot * units, row, (size_t)units * sizeof(float));
    if (*fill == k) *worst = res_worst(key, index, k);
}

void mi_acc_reservoir_update(float *samples, int64_t *index, uint64_t *key, int64_t *fill,
                             int64_t k, uint64_t seed, const float *x, const int64_t *row_index,
                             int64_t rows, int64_t units)
{
    if (k == 0) return;
    int64_t worst = *fill == k ? res_worst(key, index, k) : 0;
    for (int64_t r = 0; r < rows; r++)
        res_offer(samples, index, key, fill, k, &worst, x + r * units, row_index[r],
                  mi_acc_reservoir_key(seed, row_index[r]), units);
}

void mi_acc_reservoir_merge(float *samples, int64_t *index, uint64_t *key, int64_t *fill,
                            int64_t k, const float *samples_b, const int64_t *index_b,
                            const uint64_t *key_b, int64_t fill_b, int64_t units)
{
    if (k == 0) return;
    int64_t worst = *fill == k ? res_worst(key, index, k) : 0;
    for (int64_t r = 0; r < fill_b; r++)
        res_offer(samples, index, key, fill, k, &worst, samples_b + r * units, index_b[r], key_b[r], units);
}
