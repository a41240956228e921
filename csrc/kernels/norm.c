/* norm.c - LayerNorm and RMSNorm (see norm.h). Parallel over rows. */
#include "kernels/norm.h"

#include <math.h>

void mi_layer_norm(const float *x, const float *w, const float *b, float eps,
                   int64_t rows, int64_t d, float *y, float *scale)
{
    #pragma omp parallel for schedule(static) if (rows * d > 32768)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * d;
        float *yr = y + r * d;
        double sum = 0.0;
        for (int64_t i = 0; i < d; i++) sum += xr[i];
        float mean = (float)(sum / (double)d);
        double sq = 0.0;
        for (int64_t i = 0; i < d; i++) { double c = (double)(xr[i] - mean); sq += c * c; }
        float s = (float)sqrt(sq / (double)d + (double)eps);
        if (scale) scale[r] = s;
        float inv = 1.0f / s;
        for (int64_t i = 0; i < d; i++) {
            float v = (xr[i] - mean) * inv;
            if (w) v *= w[i];
            if (b) v += b[i];
            yr[i] = v;
        }
    }
}

void mi_rms_norm(const float *x, const float *w, float eps,
                 int64_t rows, int64_t d, float *y, float *scale)
{
    #pragma omp parallel for schedule(static) if (rows * d > 32768)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * d;
        float *yr = y + r * d;
        double sq = 0.0;
        for (int64_t i = 0; i < d; i++) sq += (double)xr[i] * (double)xr[i];
        float s = (float)sqrt(sq / (double)d + (double)eps);
        if (scale) scale[r] = s;
        float inv = 1.0f / s;
        for (int64_t i = 0; i < d; i++) yr[i] = w ? xr[i] * inv * w[i] : xr[i] * inv;
    }
}
