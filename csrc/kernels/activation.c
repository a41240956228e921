/* activation.c - elementwise activations, forward and backward (see activation.h).
 *
 * Shapes: x, y, dy, dx [n] contiguous. The plain scalar reference kernels
 * live here; the vector ones (activation_simd.h) are picked per ISA from
 * tables (activation_kernels.h). Parallel over fixed chunks (each output
 * depends on one input only, so any split is bitwise deterministic).
 */
#include "kernels/activation.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "common/memory.h"
#include "common/threads.h"
#include "kernels/activation_kernels.h"
#include "kernels/cpu.h"

#define PARALLEL_MIN 65536
#define CHUNK 8192   /* elements per task */
#define SQRT1_2 0.70710678118654752f       /* 1/sqrt(2) */
#define SQRT_2_PI 0.79788456080286536f     /* sqrt(2/pi) */
#define INV_SQRT_2PI 0.39894228040143268f  /* 1/sqrt(2 pi) */
#define GELU_C 0.044715f

/* --- the plain scalar reference (span contract in activation_kernels.h) --- */

static void gelu_ref(const float *x, float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++) y[i] = 0.5f * x[i] * (1.0f + erff(x[i] * SQRT1_2));
}

static void gelu_tanh_ref(const float *x, float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        y[i] = 0.5f * v * (1.0f + tanhf(SQRT_2_PI * (v + GELU_C * v * v * v)));
    }
}

static void relu_ref(const float *x, float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++) y[i] = x[i] > 0.0f ? x[i] : (x[i] != x[i] ? x[i] : 0.0f);
}

static void silu_ref(const float *x, float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++) y[i] = x[i] / (1.0f + expf(-x[i]));
}

/* forward: y = 0.5 x (1 + erf(x / sqrt 2)) = x Phi(x)
 * y' = Phi(x) + x phi(x) */
static void gelu_backward_ref(const float *x, const float *dy, float *dx, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        float cdf = 0.5f * (1.0f + erff(v * SQRT1_2));
        float pdf = INV_SQRT_2PI * expf(-0.5f * v * v);
        dx[i] += dy[i] * (cdf + v * pdf);
    }
}

/* forward: y = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
 * y' = 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2) */
static void gelu_tanh_backward_ref(const float *x, const float *dy, float *dx, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        float t = tanhf(SQRT_2_PI * (v + GELU_C * v * v * v));
        float du = SQRT_2_PI * (1.0f + 3.0f * GELU_C * v * v);
        dx[i] += dy[i] * (0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * du);
    }
}

/* relu' as a bit select: dy where x > 0, x itself where x is NaN, else 0.
 * Branch-free so the loops vectorise: the signs of x are random, and a branch
 * per element mispredicts half the time. */
static inline float relu_grad(float v, float d)
{
    uint32_t vb, db, gb;
    float g;
    memcpy(&vb, &v, 4);
    memcpy(&db, &d, 4);
    uint32_t keep = 0u - (uint32_t)(v > 0.0f), nan = 0u - (uint32_t)(v != v);
    gb = (db & keep) | (vb & nan);
    memcpy(&g, &gb, 4);
    return g;
}

/* forward: y = max(x, 0);  y' = [x > 0] (NaN x passes NaN on) */
static void relu_backward_ref(const float *x, const float *dy, float *dx, int64_t n)
{
    for (int64_t i = 0; i < n; i++) dx[i] += relu_grad(x[i], dy[i]);
}

/* forward: y = x s,  s = 1 / (1 + exp(-x));  y' = s (1 + x (1 - s)) */
static void silu_backward_ref(const float *x, const float *dy, float *dx, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        float s = 1.0f / (1.0f + expf(-v));
        dx[i] += dy[i] * (s * (1.0f + v * (1.0f - s)));
    }
}

static void softcap_ref(float cap, const float *x, float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++) y[i] = cap * tanhf(x[i] / cap);
}

static const mi_activation_kernels activation_ref = {
    .forward = {
        [MI_ACT_RELU] = relu_ref, [MI_ACT_GELU] = gelu_ref,
        [MI_ACT_GELU_TANH] = gelu_tanh_ref, [MI_ACT_SILU] = silu_ref,
    },
    .backward = {
        [MI_ACT_RELU] = relu_backward_ref, [MI_ACT_GELU] = gelu_backward_ref,
        [MI_ACT_GELU_TANH] = gelu_tanh_backward_ref, [MI_ACT_SILU] = silu_backward_ref,
    },
    .softcap = softcap_ref,
};

/* The kernels of the ISA in use. */
static const mi_activation_kernels *kernels(void)
{
    static const mi_activation_kernels *const by_isa[MI_ISA_COUNT] = {
        [MI_ISA_SCALAR] = &activation_ref, [MI_ISA_AVX2] = &mi_activation_kernels_avx2,
        [MI_ISA_AVX512] = &mi_activation_kernels_avx512,
    };
    return by_isa[mi_cpu_isa()];
}

/* --- dispatch: CHUNK spans, parallel over spans -------------------------- */

void mi_activate(mi_activation act, const float *x, float *y, int64_t n)
{
    const mi_act_forward_fn fn = kernels()->forward[act];
    const int64_t nchunk = (n + CHUNK - 1) / CHUNK;
    #pragma omp parallel for schedule(static) if (n > PARALLEL_MIN) num_threads(mi_get_num_threads())
    for (int64_t c = 0; c < nchunk; c++) {
        int64_t i0 = c * CHUNK, len = n - i0 < CHUNK ? n - i0 : CHUNK;
        fn(x + i0, y + i0, len);
    }
}

void mi_softcap(float cap, const float *x, float *y, int64_t n)
{
    const int64_t nchunk = (n + CHUNK - 1) / CHUNK;
    #pragma omp parallel for schedule(static) if (n > PARALLEL_MIN) num_threads(mi_get_num_threads())
    for (int64_t c = 0; c < nchunk; c++) {
        int64_t i0 = c * CHUNK, len = n - i0 < CHUNK ? n - i0 : CHUNK;
        mi_softcap_span(cap, x + i0, y + i0, len);
    }
}

void mi_softcap_span(float cap, const float *x, float *y, int64_t n)
{
    if (n > 0) kernels()->softcap(cap, x, y, n);
}

void mi_gelu(const float *x, float *y, int64_t n) { mi_activate(MI_ACT_GELU, x, y, n); }
void mi_gelu_tanh(const float *x, float *y, int64_t n) { mi_activate(MI_ACT_GELU_TANH, x, y, n); }
void mi_relu(const float *x, float *y, int64_t n) { mi_activate(MI_ACT_RELU, x, y, n); }
void mi_silu(const float *x, float *y, int64_t n) { mi_activate(MI_ACT_SILU, x, y, n); }

void mi_activation_backward(mi_activation act, const float *x, const float *dy, float *dx,
                            int64_t n)
{
    const mi_act_backward_fn fn = kernels()->backward[act];
    const int64_t nchunk = (n + CHUNK - 1) / CHUNK;
    #pragma omp parallel for schedule(static) if (n > PARALLEL_MIN) num_threads(mi_get_num_threads())
    for (int64_t c = 0; c < nchunk; c++) {
        int64_t i0 = c * CHUNK, len = n - i0 < CHUNK ? n - i0 : CHUNK;
        fn(x + i0, dy + i0, dx + i0, len);
    }
}

#define BIAS_ROW_CHUNK 64

mi_status mi_relu_backward_bias(const float *x, const float *dy, int64_t rows, int64_t cols,
                                float *dx, float *db)
{
    if (rows <= 0 || cols <= 0) return MI_OK;
    const int64_t nchunk = (rows + BIAS_ROW_CHUNK - 1) / BIAS_ROW_CHUNK;
    double *part = db ? mi_malloc(sizeof(double) * (size_t)(nchunk * cols)) : NULL;
    if (db && !part) return mi_fail(MI_ERR_NOMEM, "relu_backward_bias: cannot allocate %ld x %ld "
                                    "partial sums", (long)nchunk, (long)cols);
    #pragma omp parallel for schedule(static) if (rows * cols > PARALLEL_MIN) num_threads(mi_get_num_threads())
    for (int64_t c = 0; c < nchunk; c++) {
        double *pc = db ? part + c * cols : NULL;
        if (pc)
            for (int64_t j = 0; j < cols; j++) pc[j] = 0.0;
        int64_t r1 = (c + 1) * BIAS_ROW_CHUNK < rows ? (c + 1) * BIAS_ROW_CHUNK : rows;
        for (int64_t r = c * BIAS_ROW_CHUNK; r < r1; r++) {
            const float *xr = x + r * cols, *dyr = dy + r * cols;
            float *dxr = dx + r * cols;
            for (int64_t j = 0; j < cols; j++) dxr[j] = relu_grad(xr[j], dyr[j]);
            if (pc)
                for (int64_t j = 0; j < cols; j++) pc[j] += dxr[j];
        }
    }
    if (db) {
        for (int64_t j = 0; j < cols; j++) {
            double acc = 0.0;
            for (int64_t c = 0; c < nchunk; c++) acc += part[c * cols + j];
            db[j] += (float)acc;
        }
        mi_free(part);
    }
    return MI_OK;
}
