/* activation.c - elementwise activations (see activation.h). */
#include "kernels/activation.h"

#include <math.h>

#define PARALLEL_MIN 65536

void mi_gelu(const float *x, float *y, int64_t n)
{
    #pragma omp parallel for schedule(static) if (n > PARALLEL_MIN)
    for (int64_t i = 0; i < n; i++) y[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
}

void mi_gelu_tanh(const float *x, float *y, int64_t n)
{
    const float k = 0.79788456080286536f; /* sqrt(2/pi) */
    #pragma omp parallel for schedule(static) if (n > PARALLEL_MIN)
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        y[i] = 0.5f * v * (1.0f + tanhf(k * (v + 0.044715f * v * v * v)));
    }
}

void mi_relu(const float *x, float *y, int64_t n)
{
    #pragma omp parallel for schedule(static) if (n > PARALLEL_MIN)
    for (int64_t i = 0; i < n; i++) y[i] = x[i] > 0.0f ? x[i] : (x[i] != x[i] ? x[i] : 0.0f);
}

void mi_silu(const float *x, float *y, int64_t n)
{
    #pragma omp parallel for schedule(static) if (n > PARALLEL_MIN)
    for (int64_t i = 0; i < n; i++) y[i] = x[i] / (1.0f + expf(-x[i]));
}

void mi_activate(mi_activation act, const float *x, float *y, int64_t n)
{
    switch (act) {
    case MI_ACT_RELU: mi_relu(x, y, n); break;
    case MI_ACT_GELU: mi_gelu(x, y, n); break;
    case MI_ACT_GELU_TANH: mi_gelu_tanh(x, y, n); break;
    case MI_ACT_SILU: mi_silu(x, y, n); break;
    }
}
