/* softmax.c - row softmax (see softmax.h). */
#include "kernels/softmax.h"

#include <math.h>

void mi_softmax_rows(const float *x, float *y, int64_t rows, int64_t cols)
{
    #pragma omp parallel for schedule(static) if (rows * cols > 32768)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * cols;
        float *yr = y + r * cols;
        float mx = -INFINITY;
        int has_nan = 0;
        for (int64_t j = 0; j < cols; j++) {
            if (xr[j] != xr[j]) has_nan = 1;
            else if (xr[j] > mx) mx = xr[j];
        }
        if (has_nan) { for (int64_t j = 0; j < cols; j++) yr[j] = NAN; continue; }
        if (mx == -INFINITY) { for (int64_t j = 0; j < cols; j++) yr[j] = 0.0f; continue; }
        double sum = 0.0;
        for (int64_t j = 0; j < cols; j++) { float e = expf(xr[j] - mx); yr[j] = e; sum += e; }
        float inv = (float)(1.0 / sum);
        for (int64_t j = 0; j < cols; j++) yr[j] *= inv;
    }
}
