/* norm.c - LayerNorm and RMSNorm, forward and backward (see norm.h).
 *
 * Shapes: x, y, dy, dx [rows, d]; w, b, dw, db [d]; scale [rows].
 * Forward and backward: parallel over rows; the parameter gradients (sums
 * over rows) are partial sums over fixed 64-row chunks, made in the same row
 * pass and combined in chunk order, so no result depends on the thread count. Row sums accumulate in double: a d = 1280 row
 * of float sums would lose ~3 digits on rows with a large mean.
 */
#include "kernels/norm.h"

#include <math.h>

#include "common/memory.h"
#include "common/threads.h"
#include "kernels/cpu.h"

#define PARALLEL_MIN 32768   /* elements below which threads cost more than they save */

/* Mean of one row, computed the same way in the forward and the backward so
 * the backward's xhat is bitwise the forward's. */
static inline float row_mean_ref(const float *xr, int64_t d)
{
    double sum = 0.0;
    for (int64_t i = 0; i < d; i++) sum += xr[i];
    return (float)(sum / (double)d);
}

/* AVX-512 rows (norm_avx512.c): same arithmetic, double sums in 16 lanes. */
float mi_row_mean_avx512(const float *xr, int64_t d);
float mi_layer_norm_row_avx512(const float *xr, const float *w, const float *b, float eps,
                               int64_t d, float *yr);
float mi_rms_norm_row_avx512(const float *xr, const float *w, float eps, int64_t d, float *yr);

/* The mean the forward of the ISA in use computed, for the backward. */
static inline float row_mean(const float *xr, int64_t d, int avx512)
{
    return avx512 ? mi_row_mean_avx512(xr, d) : row_mean_ref(xr, d);
}

void mi_layer_norm_ref(const float *x, const float *w, const float *b, float eps,
                       int64_t rows, int64_t d, float *y, float *scale)
{
    #pragma omp parallel for schedule(static) if (rows * d > PARALLEL_MIN) num_threads(mi_get_num_threads())
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * d;
        float *yr = y + r * d;
        float mean = row_mean_ref(xr, d);
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

void mi_layer_norm(const float *x, const float *w, const float *b, float eps,
                   int64_t rows, int64_t d, float *y, float *scale)
{
    if (mi_cpu_isa() < MI_ISA_AVX512) { mi_layer_norm_ref(x, w, b, eps, rows, d, y, scale); return; }
    #pragma omp parallel for schedule(static) if (rows * d > PARALLEL_MIN) num_threads(mi_get_num_threads())
    for (int64_t r = 0; r < rows; r++) {
        float s = mi_layer_norm_row_avx512(x + r * d, w, b, eps, d, y + r * d);
        if (scale) scale[r] = s;
    }
}

/* ---- TransformerLens forward norm (mi_tl_norm*) ----
 * Rows: stats (mean, scale) then apply (normalized, out). The split and fused
 * entry points call the same row functions, so they agree bitwise. */
float mi_tl_norm_row_scale_avx512(const float *xr, int64_t d, int centre, float eps, float *mean_out);
void mi_tl_norm_row_apply_avx512(const float *xr, int64_t d, float mean, float s, const float *w,
                                 const float *b, float *yn, float *yo);
void mi_tl_norm_row_affine_avx512(const float *yn, int64_t d, const float *w, const float *b, float *yo);
void mi_add_row_avx512(const float *xa, const float *xb, int64_t d, float *xs);

static float tl_row_scale_ref(const float *xr, int64_t d, int centre, float eps, float *mean_out)
{
    float mean = centre ? row_mean_ref(xr, d) : 0.0f;
    double sq = 0.0;
    for (int64_t i = 0; i < d; i++) { double c = (double)(xr[i] - mean); sq += c * c; }
    *mean_out = mean;
    return (float)sqrt(sq / (double)d + (double)eps);
}

static void tl_row_affine_ref(const float *yn, int64_t d, const float *w, const float *b, float *yo)
{
    for (int64_t i = 0; i < d; i++) yo[i] = b ? fmaf(yn[i], w[i], b[i]) : yn[i] * w[i];
}

static void tl_row_apply_ref(const float *xr, int64_t d, float mean, float s, const float *w,
                             const float *b, float *yn, float *yo)
{
    for (int64_t i = 0; i < d; i++) {
        float v = (xr[i] - mean) / s;
        if (yn) yn[i] = v;
        if (yo) yo[i] = b ? fmaf(v, w[i], b[i]) : v * w[i];
    }
}

/* One row of mi_tl_norm: optional add, stats, apply. */
static inline void tl_norm_row(int avx512, int centre, const float *xr, const float *xa, float *xs,
                               const float *w, const float *b, float eps, int64_t d, float *scale,
                               float *yn, float *yo)
{
    if (xa) {
        if (avx512) mi_add_row_avx512(xr, xa, d, xs);
        else for (int64_t i = 0; i < d; i++) xs[i] = xr[i] + xa[i];
        xr = xs;
    }
    float mean, s = avx512 ? mi_tl_norm_row_scale_avx512(xr, d, centre, eps, &mean)
                           : tl_row_scale_ref(xr, d, centre, eps, &mean);
    *scale = s;
    if (avx512) mi_tl_norm_row_apply_avx512(xr, d, mean, s, w, b, yn, yo);
    else tl_row_apply_ref(xr, d, mean, s, w, b, yn, yo);
}

static void tl_norm_rows(int avx512, int centre, const float *x, const float *x_add, float *x_sum,
                         const float *w, const float *b, float eps, int64_t rows, int64_t d,
                         float *scale, float *normalized, float *out)
{
    if (!w) out = NULL;
    #pragma omp parallel for schedule(static) if (rows * d > PARALLEL_MIN) num_threads(mi_get_num_threads())
    for (int64_t r = 0; r < rows; r++)
        tl_norm_row(avx512, centre, x + r * d, x_add ? x_add + r * d : NULL,
                    x_add ? x_sum + r * d : NULL, w, b, eps, d, scale + r,
                    normalized ? normalized + r * d : NULL, out ? out + r * d : NULL);
}

void mi_tl_norm(int centre, const float *x, const float *x_add, float *x_sum, const float *w,
                const float *b, float eps, int64_t rows, int64_t d, float *scale,
                float *normalized, float *out)
{
    tl_norm_rows(mi_cpu_isa() >= MI_ISA_AVX512, centre, x, x_add, x_sum, w, b, eps, rows, d,
                 scale, normalized, out);
}

void mi_tl_norm_ref(int centre, const float *x, const float *x_add, float *x_sum, const float *w,
                    const float *b, float eps, int64_t rows, int64_t d, float *scale,
                    float *normalized, float *out)
{
    tl_norm_rows(0, centre, x, x_add, x_sum, w, b, eps, rows, d, scale, normalized, out);
}

void mi_tl_norm_scale(int centre, const float *x, float eps, int64_t rows, int64_t d, float *scale)
{
    const int avx512 = mi_cpu_isa() >= MI_ISA_AVX512;
    #pragma omp parallel for schedule(static) if (rows * d > PARALLEL_MIN) num_threads(mi_get_num_threads())
    for (int64_t r = 0; r < rows; r++) {
        float mean;
        scale[r] = avx512 ? mi_tl_norm_row_scale_avx512(x + r * d, d, centre, eps, &mean)
                          : tl_row_scale_ref(x + r * d, d, centre, eps, &mean);
    }
}

void mi_tl_norm_apply(int centre, const float *x, const float *scale, const float *w,
                      const float *b, int64_t rows, int64_t d, float *normalized, float *out)
{
    const int avx512 = mi_cpu_isa() >= MI_ISA_AVX512;
    if (!w) out = NULL;
    #pragma omp parallel for schedule(static) if (rows * d > PARALLEL_MIN) num_threads(mi_get_num_threads())
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * d;
        /* the mean exactly as the stats step computed it */
        float mean = centre ? (avx512 ? mi_row_mean_avx512(xr, d) : row_mean_ref(xr, d)) : 0.0f;
        float *yn = normalized ? normalized + r * d : NULL, *yo = out ? out + r * d : NULL;
        if (avx512) mi_tl_norm_row_apply_avx512(xr, d, mean, scale[r], w, b, yn, yo);
        else tl_row_apply_ref(xr, d, mean, scale[r], w, b, yn, yo);
    }
}

void mi_tl_norm_affine(const float *normalized, const float *w, const float *b, int64_t rows,
                       int64_t d, float *out)
{
    const int avx512 = mi_cpu_isa() >= MI_ISA_AVX512;
    #pragma omp parallel for schedule(static) if (rows * d > PARALLEL_MIN) num_threads(mi_get_num_threads())
    for (int64_t r = 0; r < rows; r++) {
        if (avx512) mi_tl_norm_row_affine_avx512(normalized + r * d, d, w, b, out + r * d);
        else tl_row_affine_ref(normalized + r * d, d, w, b, out + r * d);
    }
}

/* forward: xhat = (x - mean) / scale;  y = xhat * w + b
 * with g = dy * w (dy without affine):
 *   dx = (g - mean(g) - xhat * mean(g * xhat)) / scale
 *   dw = sum_rows dy * xhat;  db = sum_rows dy */
/* dw/db partial sums: per fixed chunk of ROW_CHUNK rows (the chunking does not
 * depend on the thread count), combined in chunk order, in double. */
#define ROW_CHUNK 64

/* out[i] += sum over chunks c of part[c * stride + i], in chunk order. */
static void combine_chunks(const double *part, int64_t nchunk, int64_t stride, int64_t d, float *out)
{
    for (int64_t i = 0; i < d; i++) {
        double acc = 0.0;
        for (int64_t c = 0; c < nchunk; c++) acc += part[c * stride + i];
        out[i] += (float)acc;
    }
}

mi_status mi_layer_norm_backward(const float *dy, const float *x, const float *w,
                                 const float *scale, int64_t rows, int64_t d,
                                 float *dx, float *dw, float *db)
{
    if (rows <= 0 || d <= 0) return MI_OK;
    const int64_t nchunk = (rows + ROW_CHUNK - 1) / ROW_CHUNK;
    const int sums = dw || db;
    double *part = sums ? mi_malloc(sizeof(double) * (size_t)(nchunk * 2 * d)) : NULL;
    if (sums && !part) return mi_fail(MI_ERR_NOMEM, "layer_norm_backward: cannot allocate %ld x %ld "
                                      "partial sums", (long)nchunk, (long)(2 * d));
    const int avx512 = mi_cpu_isa() >= MI_ISA_AVX512;
    /* one pass over the rows: dx, and this chunk's dw/db partials */
    #pragma omp parallel for schedule(static) if (rows * d > PARALLEL_MIN) num_threads(mi_get_num_threads())
    for (int64_t c = 0; c < nchunk; c++) {
        double *pw = sums ? part + c * 2 * d : NULL, *pb = sums ? pw + d : NULL;
        if (sums)
            for (int64_t i = 0; i < 2 * d; i++) pw[i] = 0.0;
        int64_t r1 = (c + 1) * ROW_CHUNK < rows ? (c + 1) * ROW_CHUNK : rows;
        for (int64_t r = c * ROW_CHUNK; r < r1; r++) {
            const float *xr = x + r * d, *dyr = dy + r * d;
            float m = row_mean(xr, d, avx512);
            float inv = 1.0f / scale[r];
            if (dx) {
                double sg = 0.0, sgx = 0.0;
                for (int64_t i = 0; i < d; i++) {
                    float xhat = (xr[i] - m) * inv;
                    float g = w ? dyr[i] * w[i] : dyr[i];
                    sg += g;
                    sgx += (double)g * xhat;
                }
                float mg = (float)(sg / (double)d), mgx = (float)(sgx / (double)d);
                float *dxr = dx + r * d;
                for (int64_t i = 0; i < d; i++) {
                    float xhat = (xr[i] - m) * inv;
                    float g = w ? dyr[i] * w[i] : dyr[i];
                    dxr[i] += (g - mg - xhat * mgx) * inv;
                }
            }
            if (sums)
                for (int64_t i = 0; i < d; i++) {
                    pw[i] += (double)dyr[i] * ((xr[i] - m) * inv);
                    pb[i] += dyr[i];
                }
        }
    }
    if (dw) combine_chunks(part, nchunk, 2 * d, d, dw);
    if (db) combine_chunks(part + d, nchunk, 2 * d, d, db);
    mi_free(part);
    return MI_OK;
}

void mi_rms_norm_ref(const float *x, const float *w, float eps,
                     int64_t rows, int64_t d, float *y, float *scale)
{
    #pragma omp parallel for schedule(static) if (rows * d > PARALLEL_MIN) num_threads(mi_get_num_threads())
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

void mi_rms_norm(const float *x, const float *w, float eps,
                 int64_t rows, int64_t d, float *y, float *scale)
{
    if (mi_cpu_isa() < MI_ISA_AVX512) { mi_rms_norm_ref(x, w, eps, rows, d, y, scale); return; }
    #pragma omp parallel for schedule(static) if (rows * d > PARALLEL_MIN) num_threads(mi_get_num_threads())
    for (int64_t r = 0; r < rows; r++) {
        float s = mi_rms_norm_row_avx512(x + r * d, w, eps, d, y + r * d);
        if (scale) scale[r] = s;
    }
}

/* forward: xhat = x / scale;  y = xhat * w,  scale = sqrt(mean(x^2) + eps)
 * with g = dy * w:
 *   dx = (g - xhat * mean(g * xhat)) / scale
 *   dw = sum_rows dy * xhat */
mi_status mi_rms_norm_backward(const float *dy, const float *x, const float *w,
                               const float *scale, int64_t rows, int64_t d,
                               float *dx, float *dw)
{
    if (rows <= 0 || d <= 0) return MI_OK;
    const int64_t nchunk = (rows + ROW_CHUNK - 1) / ROW_CHUNK;
    double *part = dw ? mi_malloc(sizeof(double) * (size_t)(nchunk * d)) : NULL;
    if (dw && !part) return mi_fail(MI_ERR_NOMEM, "rms_norm_backward: cannot allocate %ld x %ld "
                                    "partial sums", (long)nchunk, (long)d);
    /* one pass over the rows: dx, and this chunk's dw partials */
    #pragma omp parallel for schedule(static) if (rows * d > PARALLEL_MIN) num_threads(mi_get_num_threads())
    for (int64_t c = 0; c < nchunk; c++) {
        double *pw = dw ? part + c * d : NULL;
        if (dw)
            for (int64_t i = 0; i < d; i++) pw[i] = 0.0;
        int64_t r1 = (c + 1) * ROW_CHUNK < rows ? (c + 1) * ROW_CHUNK : rows;
        for (int64_t r = c * ROW_CHUNK; r < r1; r++) {
            const float *xr = x + r * d, *dyr = dy + r * d;
            float inv = 1.0f / scale[r];
            if (dx) {
                double sgx = 0.0;
                for (int64_t i = 0; i < d; i++) {
                    float g = w ? dyr[i] * w[i] : dyr[i];
                    sgx += (double)g * (xr[i] * inv);
                }
                float mgx = (float)(sgx / (double)d);
                float *dxr = dx + r * d;
                for (int64_t i = 0; i < d; i++) {
                    float g = w ? dyr[i] * w[i] : dyr[i];
                    dxr[i] += (g - xr[i] * inv * mgx) * inv;
                }
            }
            if (dw)
                for (int64_t i = 0; i < d; i++) pw[i] += (double)dyr[i] * (xr[i] * inv);
        }
    }
    if (dw) combine_chunks(part, nchunk, d, d, dw);
    mi_free(part);
    return MI_OK;
}
