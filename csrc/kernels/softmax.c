/* softmax.c - row softmax, forward and backward (see softmax.h).
 *
 * Shapes: x, y, dy, dx [rows, cols]; mask [rows, cols] bytes or NULL.
 */
#include "kernels/softmax.h"

#include <math.h>
#include <stddef.h>

#include "common/threads.h"
#include "kernels/cpu.h"

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

void mi_softmax_rows_ref(const float *x, const unsigned char *mask, float *y,
                         int64_t rows, int64_t cols)
{
    #pragma omp parallel for schedule(static) if (rows * cols > PARALLEL_MIN) num_threads(mi_get_num_threads())
    for (int64_t r = 0; r < rows; r++)
        softmax_row_ref(x + r * cols, mask ? mask + r * cols : NULL, y + r * cols, cols);
}

/* The AVX-512 row (softmax_avx512.c); only called when the CPU has it. */
void mi_softmax_row_avx512(const float *xr, const unsigned char *mr, float *yr, int64_t cols);

void mi_softmax_rows_masked(const float *x, const unsigned char *mask, float *y,
                            int64_t rows, int64_t cols)
{
    if (mi_cpu_isa() < MI_ISA_AVX512) { mi_softmax_rows_ref(x, mask, y, rows, cols); return; }
    #pragma omp parallel for schedule(static) if (rows * cols > PARALLEL_MIN) num_threads(mi_get_num_threads())
    for (int64_t r = 0; r < rows; r++)
        mi_softmax_row_avx512(x + r * cols, mask ? mask + r * cols : NULL, y + r * cols, cols);
}

void mi_softmax_row(const float *x, float *y, int64_t cols)
{
    if (mi_cpu_isa() < MI_ISA_AVX512) softmax_row_ref(x, NULL, y, cols);
    else mi_softmax_row_avx512(x, NULL, y, cols);
}

void mi_softmax_rows(const float *x, float *y, int64_t rows, int64_t cols)
{
    mi_softmax_rows_masked(x, NULL, y, rows, cols);
}

/* forward: y = exp(x - max) / sum exp(x - max)
 * dx_j = y_j (dy_j - sum_k dy_k y_k) */
void mi_softmax_rows_backward(const float *y, const float *dy, float *dx,
                              int64_t rows, int64_t cols)
{
    #pragma omp parallel for schedule(static) if (rows * cols > PARALLEL_MIN) num_threads(mi_get_num_threads())
    for (int64_t r = 0; r < rows; r++) {
        const float *yr = y + r * cols, *dyr = dy + r * cols;
        float *dxr = dx + r * cols;
        double dot = 0.0;
        for (int64_t j = 0; j < cols; j++) dot += (double)dyr[j] * yr[j];
        float fdot = (float)dot;
        for (int64_t j = 0; j < cols; j++) dxr[j] += yr[j] * (dyr[j] - fdot);
    }
}
