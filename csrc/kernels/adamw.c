/* adamw.c - AdamW update (contract in adamw.h). The arithmetic follows
 * torch's single-tensor AdamW in float32: decay first, then the moments
 * (m.lerp_(g, 1-b1) == m + (1-b1)(g-m)), then the step with the bias
 * corrections folded into step_size and denom as torch does. */
#include "kernels/adamw.h"

#include <math.h>
#include <string.h>

#include "common/threads.h"

static inline void adamw_elem(float *p, float g, float *m, float *v, float decay, float b1c,
                              float b2, float b2c, float step_size, float bc2_sqrt, float eps)
{
    float pv = *p * decay;
    float mv = *m + b1c * (g - *m);
    float vv = *v * b2 + b2c * g * g;
    *m = mv;
    *v = vv;
    float denom = sqrtf(vv) / bc2_sqrt + eps;
    *p = pv - step_size * (mv / denom);
}

#define HOIST(h) \
    float decay = 1.0f - (h)->lr * (h)->weight_decay; \
    float b1c = 1.0f - (h)->beta1, b2 = (h)->beta2, b2c = 1.0f - (h)->beta2; \
    float step_size = (float)((double)(h)->lr / (h)->bias_correction1); \
    float bc2_sqrt = (float)sqrt((h)->bias_correction2); \
    float eps = (h)->eps

void mi_adamw_step_ref(float *p, const float *g, int64_t n, float *m, float *v,
                       const mi_adamw_hparams *h)
{
    HOIST(h);
    for (int64_t i = 0; i < n; i++)
        adamw_elem(p + i, g[i], m + i, v + i, decay, b1c, b2, b2c, step_size, bc2_sqrt, eps);
}

void mi_adamw_step(float *p, const float *g, const int64_t shape[4], const int64_t strides[4],
                   float *m, float *v, const mi_adamw_hparams *h)
{
    HOIST(h);
    int64_t rows = shape[0] * shape[1] * shape[2], n3 = shape[3];
    #pragma omp parallel for schedule(static) if (rows * n3 > 32768) num_threads(mi_get_num_threads())
    for (int64_t r = 0; r < rows; r++) {
        int64_t i2 = r % shape[2], i1 = (r / shape[2]) % shape[1], i0 = r / (shape[2] * shape[1]);
        int64_t off = i0 * strides[0] + i1 * strides[1] + i2 * strides[2];
        float *pr = p + off, *mr = m + r * n3, *vr = v + r * n3;
        const float *gr = g + off;
        for (int64_t j = 0; j < n3; j++)
            adamw_elem(pr + j, gr[j], mr + j, vr + j, decay, b1c, b2, b2c, step_size, bc2_sqrt, eps);
    }
}

double mi_grad_sumsq(const float *g, const int64_t shape[4], const int64_t strides[4])
{
    double acc = 0.0;
    for (int64_t i0 = 0; i0 < shape[0]; i0++)
        for (int64_t i1 = 0; i1 < shape[1]; i1++)
            for (int64_t i2 = 0; i2 < shape[2]; i2++) {
                const float *r = g + i0 * strides[0] + i1 * strides[1] + i2 * strides[2];
                for (int64_t j = 0; j < shape[3]; j++) acc += (double)r[j] * r[j];
            }
    return acc;
}

void mi_grad_scale(float *g, const int64_t shape[4], const int64_t strides[4], float coef)
{
    int64_t rows = shape[0] * shape[1] * shape[2], n3 = shape[3];
    #pragma omp parallel for schedule(static) if (rows * n3 > 65536) num_threads(mi_get_num_threads())
    for (int64_t r = 0; r < rows; r++) {
        int64_t i2 = r % shape[2], i1 = (r / shape[2]) % shape[1], i0 = r / (shape[2] * shape[1]);
        float *gr = g + i0 * strides[0] + i1 * strides[1] + i2 * strides[2];
        for (int64_t j = 0; j < n3; j++) gr[j] *= coef;
    }
}

void mi_grad_zero(float *g, const int64_t shape[4], const int64_t strides[4])
{
    for (int64_t i0 = 0; i0 < shape[0]; i0++)
        for (int64_t i1 = 0; i1 < shape[1]; i1++)
            for (int64_t i2 = 0; i2 < shape[2]; i2++)
                memset(g + i0 * strides[0] + i1 * strides[1] + i2 * strides[2], 0,
                       sizeof(float) * (size_t)shape[3]);
}

mi_status mi_clip_grad_norm(const mi_grad_view *g, int64_t n, float max_norm,
                            int error_if_nonfinite, double *total)
{
    double sumsq = 0.0;
    for (int64_t i = 0; i < n; i++) sumsq += mi_grad_sumsq(g[i].data, g[i].shape, g[i].strides);
    *total = sqrt(sumsq);
    if (error_if_nonfinite && !isfinite(*total))
        return mi_fail(MI_ERR_VALUE, "clip_grad_norm_: the total norm of the gradients is %g", *total);
    float coef = max_norm / ((float)*total + 1e-6f);
    if (coef < 1.0f)
        for (int64_t i = 0; i < n; i++) mi_grad_scale(g[i].data, g[i].shape, g[i].strides, coef);
    return MI_OK;
}
