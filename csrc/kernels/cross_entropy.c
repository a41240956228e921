/* cross_entropy.c - softmax cross-entropy, forward and backward (see cross_entropy.h).
 *
 * Shapes: logits, dlogits [rows, vocab]; targets, row losses [rows]. The
 * plain scalar row lives here; the vector rows (cross_entropy_simd.h) are
 * picked per ISA (cross_entropy_kernels.h). Parallel over rows.
 */
#include "kernels/cross_entropy.h"

#include <math.h>

#include "common/memory.h"
#include "common/threads.h"
#include "kernels/cpu.h"
#include "kernels/cross_entropy_kernels.h"

#define PARALLEL_MIN 32768

/* One row, plain scalar with every exp in double: the reference. */
static double cross_entropy_row_ref(const float *lr, int64_t vocab, int64_t t, double gscale,
                                    float *dr)
{
    float mx = -INFINITY;
    for (int64_t j = 0; j < vocab; j++) mx = lr[j] > mx || lr[j] != lr[j] ? lr[j] : mx;
    double sum = 0.0;
    for (int64_t j = 0; j < vocab; j++) sum += exp((double)lr[j] - mx);
    double lse = (double)mx + log(sum);
    if (dr) {
        /* forward: loss = lse - x_t;  dx_j = softmax_j - [j == t]. In double:
         * p - 1 for a confident target cancels badly in float. */
        for (int64_t j = 0; j < vocab; j++) {
            double p = exp((double)lr[j] - lse);
            dr[j] += (float)((j == t ? p - 1.0 : p) * gscale);
        }
    }
    return lse - (double)lr[t];
}

static const mi_cross_entropy_kernels cross_entropy_ref = {.row = cross_entropy_row_ref};

/* The kernels of the ISA in use. */
static const mi_cross_entropy_kernels *kernels(void)
{
    static const mi_cross_entropy_kernels *const by_isa[MI_ISA_COUNT] = {
        [MI_ISA_SCALAR] = &cross_entropy_ref, [MI_ISA_AVX2] = &mi_cross_entropy_kernels_avx2,
        [MI_ISA_AVX512] = &mi_cross_entropy_kernels_avx512,
    };
    return by_isa[mi_cpu_isa()];
}

mi_status mi_cross_entropy(const float *logits, const int64_t *targets, int64_t rows,
                           int64_t vocab, int64_t ignore_index,
                           float *mean, float *losses, float *dlogits)
{
    if (vocab <= 0 && rows > 0)
        return mi_fail(MI_ERR_VALUE, "cross_entropy: vocab must be >= 1, got %ld", (long)vocab);
    int64_t count = 0;
    for (int64_t r = 0; r < rows; r++) {
        int64_t t = targets[r];
        if (t == ignore_index) continue;
        if (t < 0 || t >= vocab)
            return mi_fail(MI_ERR_INDEX, "cross_entropy: targets[%ld] = %ld is outside [0, %ld) "
                           "and is not ignore_index (%ld)", (long)r, (long)t, (long)vocab,
                           (long)ignore_index);
        count++;
    }
    double *row_loss = mi_malloc(sizeof(double) * (size_t)(rows > 0 ? rows : 1));
    if (!row_loss) return mi_fail(MI_ERR_NOMEM, "cross_entropy: cannot allocate %ld row losses",
                                  (long)rows);
    /* d mean / d loss_r = 1 / count */
    const double gscale = count > 0 ? 1.0 / (double)count : 0.0;
    const mi_cross_entropy_kernels *k = kernels();
    #pragma omp parallel for schedule(static) if (rows * vocab > PARALLEL_MIN) num_threads(mi_get_num_threads())
    for (int64_t r = 0; r < rows; r++) {
        int64_t t = targets[r];
        if (t == ignore_index) { row_loss[r] = 0.0; continue; }
        const float *lr = logits + r * vocab;
        float *dr = dlogits ? dlogits + r * vocab : NULL;
        row_loss[r] = k->row(lr, vocab, t, gscale, dr);
    }
    double total = 0.0;
    for (int64_t r = 0; r < rows; r++) {
        total += row_loss[r];
        if (losses) losses[r] = (float)row_loss[r];
    }
    if (mean) *mean = count > 0 ? (float)(total / (double)count) : NAN;
    mi_free(row_loss);
    return MI_OK;
}
