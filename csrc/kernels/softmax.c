/* softmax.c - row softmax, forward and backward (see softmax.h).
 *
 * Shapes: x, y, dy, dx [rows, cols]; mask [rows, cols] bytes or NULL.
 * The plain scalar rows live here; the vector rows (softmax_simd.h) are
 * picked per ISA from tables (softmax_kernels.h). Parallel over rows.
 */
#include "kernels/softmax.h"

#include <math.h>
#include <stddef.h>

#include "common/threads.h"
#include "kernels/cpu.h"
#include "kernels/softmax_kernels.h"

#define PARALLEL_MIN 32768

/* One row, plain scalar. The sum accumulates in double: with 1024 keys and
 * one dominant entry a float sum is fine, but flat rows lose ~1e-5. */
static void softmax_row_ref(const float *xr, const unsigned char *mr, float *yr, int64_t cols)
{
    float mx = -INFINITY;
    int has_nan = 0;
    for (int64_t j = 0; j < cols; j++) {
        if (mr && !mr[j]) continue;
        if (xr[j] != xr[j]) has_nan = 1;
        else if (xr[j] > mx) mx = xr[j];
    }
    if (has_nan) { for (int64_t j = 0; j < cols; j++) yr[j] = NAN; return; }
    if (mx == -INFINITY) { for (int64_t j = 0; j < cols; j++) yr[j] = 0.0f; return; }
    double sum = 0.0;
    for (int64_t j = 0; j < cols; j++) {
        float e = (mr && !mr[j]) ? 0.0f : expf(xr[j] - mx);
        yr[j] = e;
        sum += e;
    }
    float inv = (float)(1.0 / sum);
    for (int64_t j = 0; j < cols; j++) yr[j] *= inv;
}

/* forward: y = exp(x - max) / sum exp(x - max)
 * dx_j = y_j (dy_j - sum_k dy_k y_k) */
static void softmax_backward_row_ref(const float *yr, const float *dyr, float *dxr, int64_t cols)
{
    double dot = 0.0;
    for (int64_t j = 0; j < cols; j++) dot += (double)dyr[j] * yr[j];
    float fdot = (float)dot;
    for (int64_t j = 0; j < cols; j++) dxr[j] += yr[j] * (dyr[j] - fdot);
}

static const mi_softmax_kernels softmax_ref = {
    .row = softmax_row_ref,
    .backward_row = softmax_backward_row_ref,
};

/* The kernels of the ISA in use. */
static const mi_softmax_kernels *kernels(void)
{
    static const mi_softmax_kernels *const by_isa[MI_ISA_COUNT] = {
        [MI_ISA_SCALAR] = &softmax_ref, [MI_ISA_AVX2] = &mi_softmax_kernels_avx2,
        [MI_ISA_AVX512] = &mi_softmax_kernels_avx512,
    };
    return by_isa[mi_cpu_isa()];
}

static void softmax_rows(const mi_softmax_kernels *k, const float *x, const unsigned char *mask,
                         float *y, int64_t rows, int64_t cols)
{
    #pragma omp parallel for schedule(static) if (rows * cols > PARALLEL_MIN) num_threads(mi_get_num_threads())
    for (int64_t r = 0; r < rows; r++)
        k->row(x + r * cols, mask ? mask + r * cols : NULL, y + r * cols, cols);
}

void mi_softmax_rows_ref(const float *x, const unsigned char *mask, float *y,
                         int64_t rows, int64_t cols)
{
    softmax_rows(&softmax_ref, x, mask, y, rows, cols);
}

void mi_softmax_rows_masked(const float *x, const unsigned char *mask, float *y,
                            int64_t rows, int64_t cols)
{
    softmax_rows(kernels(), x, mask, y, rows, cols);
}

void mi_softmax_row(const float *x, float *y, int64_t cols)
{
    kernels()->row(x, NULL, y, cols);
}

void mi_softmax_rows(const float *x, float *y, int64_t rows, int64_t cols)
{
    mi_softmax_rows_masked(x, NULL, y, rows, cols);
}

void mi_softmax_rows_backward(const float *y, const float *dy, float *dx,
                              int64_t rows, int64_t cols)
{
    const mi_softmax_kernels *k = kernels();
    #pragma omp parallel for schedule(static) if (rows * cols > PARALLEL_MIN) num_threads(mi_get_num_threads())
    for (int64_t r = 0; r < rows; r++)
        k->backward_row(y + r * cols, dy + r * cols, dx + r * cols, cols);
}
