/* histogram.h - np.histogram's counting, bin for bin identical.
 *
 * Shapes: x[rows, n] (float32 or float64, C-contiguous), edges[n_bins + 1]
 * (as double: the exact values of NumPy's edge array, whatever its dtype),
 * counts[rows, n_bins] int64 or wcounts[rows, n_bins] double (weighted).
 *
 * Two bin modes, the two code paths of numpy.histogram:
 *  - uniform (int bins or a string rule): NumPy computes
 *        i = (int)((x - first_edge) / denom * n_bins)
 *    in the dtypes it promotes to, then corrects i by one against the edges.
 *    mi_hist_bins records those dtypes (x_f64: the edge dtype, div_f64: the
 *    division dtype) so the same roundings happen here, and the result is the
 *    same bin for every value, including values exactly on an edge.
 *    Kept: first_edge <= x <= last_edge; NaN is never kept.
 *  - explicit edges: bin i holds edges[i] <= x < edges[i+1], the last bin
 *    also x == edges[n_bins] (np.searchsorted semantics): a guess from the mean spacing, corrected
 *    step by step against the edges (binary search if it is far off).
 *
 * Weighted sums follow np.bincount: double accumulation in data order, per
 * block of 65536 values, each block's sums rounded to the count dtype
 * (float32 when ntype_f32) and added to the running total, as NumPy does.
 * Unweighted counts are exact integers, so they are split across threads
 * (per-thread integer histograms, summed): bitwise identical for any count.
 */
#ifndef MI_HISTOGRAM_H
#define MI_HISTOGRAM_H

#include <stdint.h>

#include "common/status.h"

typedef struct {
    int64_t n_bins;
    const double *edges;   /* n_bins + 1 edges, increasing */
    int uniform;           /* 1: NumPy's equal-width path; 0: explicit edges */
    double first_edge;     /* uniform: exactly representable in the x dtype */
    double last_edge;
    double denom;          /* uniform: last_edge - first_edge as NumPy rounds it */
    int div_f64;           /* uniform, float32 x: divide in float64 (1) or float32 (0) */
    double inv_span;       /* explicit edges: n_bins / (last - first), set by mi_hist_prepare */
    const float *edges_f32;   /* uniform, float32 division: the edges as floats when every
                                 one is exactly a float (NULL otherwise); set by mi_histogram */
} mi_hist_bins;

/* Fill the derived fields (inv_span); mi_histogram does it itself, other
 * users of mi_hist_bin_f32 call it once before. */
void mi_hist_prepare(mi_hist_bins *b);

/* Histogram of each row of x. weights (double[rows, n]) may be NULL: then
 * counts receives int64 counts; else wcounts receives the weighted sums. */
mi_status mi_histogram(const void *x, int x_f64, int64_t rows, int64_t n,
                       const mi_hist_bins *bins, const double *weights, int ntype_f32,
                       int64_t *counts, double *wcounts);

/* The bin of one value (-1: outside / NaN). Exposed for the score kernels,
 * which histogram float32 values they never store. */
int64_t mi_hist_bin_f32(const mi_hist_bins *bins, float x);

/* Bin index of each float32 value of x[0:n] on the uniform path (-1: not
 * kept), per ISA; mi_hist_index_f32 dispatches on kernels/cpu.h. */
void mi_hist_index_f32(const mi_hist_bins *b, const float *x, int64_t n, int32_t *idx);
void mi_hist_index_f32_scalar(const mi_hist_bins *b, const float *x, int64_t n, int32_t *idx);
void mi_hist_index_f32_avx2(const mi_hist_bins *b, const float *x, int64_t n, int32_t *idx);
void mi_hist_index_f32_avx512(const mi_hist_bins *b, const float *x, int64_t n, int32_t *idx);

#endif
