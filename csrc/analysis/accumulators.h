/* accumulators.h - mergeable corpus statistics: update with a batch, merge two.
 *
 * Every accumulator is plain arrays owned by the caller (so its state is
 * checkpointed by writing the arrays) and every merge is order-independent:
 * exact for counts, histograms, top-k and reservoir samples; mean and M2 by
 * Chan's parallel formula in float64 (rounding-level differences only).
 *
 * Shapes (legend):
 *   R  rows of a batch (token positions)          U  units (features of a row)
 *   B  histogram bins                             K  kept entries (top-k, reservoir)
 *   H  heads, Q query positions, S key positions  Q  log buckets of the sketch
 *   x[R, U]        float32 activations, C-contiguous
 *   row_index[R]   int64 global token position of each row (unique across a corpus)
 *
 * Threads: work is split over units (or heads) only; each unit's rows are
 * reduced by one thread in row order, so results are bitwise identical for
 * any thread count. Arguments are checked by the caller (csrc/python/).
 */
#ifndef MI_ACCUMULATORS_H
#define MI_ACCUMULATORS_H

#include <stdint.h>

/* --- mean / variance ---------------------------------------------------------
 * count[U] int64, mean[U] double, m2[U] double (sum of squared deviations).
 * update: the batch's own mean and M2 (two passes, float64, row order), then
 * combined with the state by Chan et al.'s pairwise rule:
 *   n = na + nb, d = mb - ma, mean = ma + d * nb / n, m2 = m2a + m2b + d^2 na nb / n */
void mi_acc_moments_update(int64_t *count, double *mean, double *m2,
                           const float *x, int64_t rows, int64_t units);
void mi_acc_moments_merge(int64_t *count, double *mean, double *m2, const int64_t *count_b,
                          const double *mean_b, const double *m2_b, int64_t units);

/* --- histogram with fixed edges ----------------------------------------------
 * edges[B + 1] increasing; counts[U, B] int64; outside[U, 3] int64 counts of
 * values below edges[0], above edges[B], and NaN. Bin i holds
 * edges[i] <= x < edges[i + 1], the last bin also x == edges[B] (np.histogram).
 * Merge is integer addition. */
void mi_acc_hist_update(int64_t *counts, int64_t *outside, const double *edges, int64_t n_bins,
                        const float *x, int64_t rows, int64_t units);

/* --- attention entropy per head ------------------------------------------------
 * pattern[N, H, Q, S] float32 (softmax rows); each row's entropy
 * -sum_s p log p (natural log, float64, p <= 0 contributes nothing, a NaN
 * makes the row's entropy NaN) is counted in head h's histogram
 * counts[H, B] / outside[H, 3] (edges as above). */
void mi_acc_entropy_update(int64_t *counts, int64_t *outside, const double *edges, int64_t n_bins,
                           const float *pattern, int64_t n, int64_t heads, int64_t q, int64_t s);

/* --- top-k activating positions ----------------------------------------------
 * values[U, K] float32, index[U, K] int64, fill[U] int64 (entries in use).
 * Each unit's list is sorted by the total order "larger value first, equal
 * values: smaller index first", so the kept set is the K best of everything
 * seen, whatever the order or split of the rows. NaN values are never kept. */
void mi_acc_topk_update(float *values, int64_t *index, int64_t *fill, int64_t k,
                        const float *x, const int64_t *row_index, int64_t rows, int64_t units);
void mi_acc_topk_merge(float *values, int64_t *index, int64_t *fill, int64_t k,
                       const float *values_b, const int64_t *index_b, const int64_t *fill_b,
                       int64_t units);

/* --- quantile sketch (logarithmic buckets) ---------------------------------------
 * gamma = (1 + alpha) / (1 - alpha). A value v with min_abs <= |v| is counted
 * in bucket sign(v) * ceil(log_gamma |v|), clamped to the bucket of max_abs;
 * |v| < min_abs in the zero bucket. counts[U, 2 * nb + 1] int64 in increasing
 * value order: nb negative buckets (largest magnitude first), zero, nb positive
 * buckets; first = ceil(log_gamma min_abs) is the lowest positive bucket's
 * exponent and nb = ceil(log_gamma max_abs) - first + 1. nan[U] counts NaN.
 * Bucket b's representative 2 gamma^i / (gamma + 1) is within alpha relative
 * of every value counted in it (the sketch of DDSketch, without collapsing).
 * Merge is integer addition. */
typedef struct {
    double log_gamma;    /* log(gamma) */
    double min_abs;      /* below: the zero bucket */
    int64_t first;       /* exponent of the lowest positive bucket */
    int64_t nb;          /* buckets per sign */
} mi_sketch_params;

void mi_acc_sketch_update(int64_t *counts, int64_t *nan, const mi_sketch_params *p,
                          const float *x, int64_t rows, int64_t units);

/* --- reservoir sample of rows ------------------------------------------------------
 * samples[K, U] float32, index[K] int64, key[K] uint64, fill (entries in use).
 * Every row gets the priority key = mix(seed, row_index), a fixed 64-bit hash;
 * the sample is the K rows of smallest (key, index). That is a uniform sample
 * without replacement, and merging two samples (keep the K smallest keys of
 * both) is the weighted merge rule (each side enters in proportion to its
 * count) made exact: the result does not depend on order or split. */
uint64_t mi_acc_reservoir_key(uint64_t seed, int64_t row_index);
void mi_acc_reservoir_update(float *samples, int64_t *index, uint64_t *key, int64_t *fill,
                             int64_t k, uint64_t seed, const float *x, const int64_t *row_index,
                             int64_t rows, int64_t units);
void mi_acc_reservoir_merge(float *samples, int64_t *index, uint64_t *key, int64_t *fill,
                            int64_t k, const float *samples_b, const int64_t *index_b,
                            const uint64_t *key_b, int64_t fill_b, int64_t units);

#endif
