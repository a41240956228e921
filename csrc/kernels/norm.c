/* norm.c - LayerNorm and RMSNorm, forward and backward (see norm.h).
 *
 * Shapes: x, y, dy, dx [rows, d]; w, b, dw, db [d]; scale [rows].
 * The plain scalar rows live here; the vector rows (norm_simd.h) are picked
 * per ISA from tables (norm_kernels.h, which states the row contract).
 * Forward and backward: parallel over rows; the parameter gradients (sums
 * over rows) are partial sums over fixed 64-row chunks, made in the same row
 * pass and combined in chunk order, so no result depends on the thread count.
 * Row sums accumulate in double: a d = 1280 row of float sums would lose ~3
 * digits on rows with a large mean.
 */
#include "kernels/norm.h"

#include <math.h>

#include "common/memory.h"
#include "common/threads.h"
#include "kernels/cpu.h"
#include "kernels/norm_kernels.h"

#define PARALLEL_MIN 32768   /* elements below which threads cost more than they save */

/* ---- the plain scalar rows (the reference) ---- */

static float row_mean_ref(const float *xr, int64_t d)
{
    double sum = 0.0;
    for (int64_t i = 0; i < d; i++) sum += xr[i];
    return (float)(sum / (double)d);
}

static float row_scale_ref(const float *xr, int64_t d, int centre, float eps, float *mean_out)
{
    float mean = centre ? row_mean_ref(xr, d) : 0.0f;
    double sq = 0.0;
    for (int64_t i = 0; i < d; i++) { double c = (double)(xr[i] - mean); sq += c * c; }
    *mean_out = mean;
    return (float)sqrt(sq / (double)d + (double)eps);
}

static void row_scaled_ref(const float *xr, int64_t d, float mean, float inv, const float *w,
                           const float *b, float *yr)
{
    for (int64_t i = 0; i < d; i++) {
        float v = (xr[i] - mean) * inv;
        if (w) v *= w[i];
        if (b) v += b[i];
        yr[i] = v;
    }
}

static void row_apply_ref(const float *xr, int64_t d, float mean, float s, const float *w,
                          const float *b, float *yn, float *yo)
{
    for (int64_t i = 0; i < d; i++) {
        float v = (xr[i] - mean) / s;
        if (yn) yn[i] = v;
        if (yo) yo[i] = b ? fmaf(v, w[i], b[i]) : v * w[i];
    }
}

static void row_affine_ref(const float *yn, int64_t d, const float *w, const float *b, float *yo)
{
    for (int64_t i = 0; i < d; i++) yo[i] = b ? fmaf(yn[i], w[i], b[i]) : yn[i] * w[i];
}

static void row_add_ref(const float *xa, const float *xb, int64_t d, float *xs)
{
    for (int64_t i = 0; i < d; i++) xs[i] = xa[i] + xb[i];
}

/* forward: xhat = (x - mean) * inv;  y = xhat * w + b
 * with g = dy * w (dy without affine):
 *   dx = (g - mean(g) - xhat * mean(g * xhat)) * inv      (RMSNorm: no mean(g))
 *   dw = sum_rows dy * xhat;  db = sum_rows dy */
static void row_backward_ref(const float *xr, const float *dyr, const float *w, float mean,
                             float inv, int centre, int64_t d, float *dxr, double *pw, double *pb)
{
    if (dxr) {
        double sg = 0.0, sgx = 0.0;
        for (int64_t i = 0; i < d; i++) {
            float xhat = (xr[i] - mean) * inv;
            float g = w ? dyr[i] * w[i] : dyr[i];
            sg += g;
            sgx += (double)g * xhat;
        }
        float mg = centre ? (float)(sg / (double)d) : 0.0f, mgx = (float)(sgx / (double)d);
        for (int64_t i = 0; i < d; i++) {
            float xhat = (xr[i] - mean) * inv;
            float g = w ? dyr[i] * w[i] : dyr[i];
            dxr[i] += (g - mg - xhat * mgx) * inv;
        }
    }
    for (int64_t i = 0; i < d; i++) {
        if (pw) pw[i] += (double)dyr[i] * ((xr[i] - mean) * inv);
        if (pb) pb[i] += dyr[i];
    }
}

static const mi_norm_kernels norm_ref = {
    .row_mean = row_mean_ref,
    .row_scale = row_scale_ref,
    .row_scaled = row_scaled_ref,
    .row_apply = row_apply_ref,
    .row_affine = row_affine_ref,
    .row_add = row_add_ref,
    .row_backward = row_backward_ref,
};

/* The kernels of the ISA in use. */
static const mi_norm_kernels *kernels(void)
{
    static const mi_norm_kernels *const by_isa[MI_ISA_COUNT] = {
        [MI_ISA_SCALAR] = &norm_ref, [MI_ISA_AVX2] = &mi_norm_kernels_avx2,
        [MI_ISA_AVX512] = &mi_norm_kernels_avx512,
    };
    return by_isa[mi_cpu_isa()];
}

/* ---- forward: y = (x - mean) * (1 / scale) * w + b ---- */

static void norm_rows(const mi_norm_kernels *k, int centre, const float *x, const float *w,
                      const float *b, float eps, int64_t rows, int64_t d, float *y, float *scale)
{
    #pragma omp parallel for schedule(static) if (rows * d > PARALLEL_MIN) num_threads(mi_get_num_threads())
    for (int64_t r = 0; r < rows; r++) {
        float mean, s = k->row_scale(x + r * d, d, centre, eps, &mean);
        if (scale) scale[r] = s;
        k->row_scaled(x + r * d, d, mean, 1.0f / s, w, b, y + r * d);
    }
}

void mi_layer_norm(const float *x, const float *w, const float *b, float eps,
                   int64_t rows, int64_t d, float *y, float *scale)
{
    norm_rows(kernels(), 1, x, w, b, eps, rows, d, y, scale);
}

void mi_layer_norm_ref(const float *x, const float *w, const float *b, float eps,
                       int64_t rows, int64_t d, float *y, float *scale)
{
    norm_rows(&norm_ref, 1, x, w, b, eps, rows, d, y, scale);
}

void mi_rms_norm(const float *x, const float *w, float eps,
                 int64_t rows, int64_t d, float *y, float *scale)
{
    norm_rows(kernels(), 0, x, w, NULL, eps, rows, d, y, scale);
}

void mi_rms_norm_ref(const float *x, const float *w, float eps,
                     int64_t rows, int64_t d, float *y, float *scale)
{
    norm_rows(&norm_ref, 0, x, w, NULL, eps, rows, d, y, scale);
}

/* ---- TransformerLens forward norm (mi_tl_norm*) ----
 * Rows: stats (mean, scale) then apply (normalized, out). The split and fused
 * entry points call the same row functions, so they agree bitwise. */

static void tl_norm_rows(const mi_norm_kernels *k, int centre, const float *x, const float *x_add,
                         float *x_sum, const float *w, const float *b, float eps, int64_t rows,
                         int64_t d, float *scale, float *normalized, float *out)
{
    if (!w) out = NULL;
    #pragma omp parallel for schedule(static) if (rows * d > PARALLEL_MIN) num_threads(mi_get_num_threads())
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * d;
        if (x_add) {
            k->row_add(xr, x_add + r * d, d, x_sum + r * d);
            xr = x_sum + r * d;
        }
        float mean, s = k->row_scale(xr, d, centre, eps, &mean);
        scale[r] = s;
        k->row_apply(xr, d, mean, s, w, b, normalized ? normalized + r * d : NULL,
                     out ? out + r * d : NULL);
    }
}

void mi_tl_norm(int centre, const float *x, const float *x_add, float *x_sum, const float *w,
                const float *b, float eps, int64_t rows, int64_t d, float *scale,
                float *normalized, float *out)
{
    tl_norm_rows(kernels(), centre, x, x_add, x_sum, w, b, eps, rows, d, scale, normalized, out);
}

void mi_tl_norm_ref(int centre, const float *x, const float *x_add, float *x_sum, const float *w,
                    const float *b, float eps, int64_t rows, int64_t d, float *scale,
                    float *normalized, float *out)
{
    tl_norm_rows(&norm_ref, centre, x, x_add, x_sum, w, b, eps, rows, d, scale, normalized, out);
}

void mi_tl_norm_scale(int centre, const float *x, float eps, int64_t rows, int64_t d, float *scale)
{
    const mi_norm_kernels *k = kernels();
    #pragma omp parallel for schedule(static) if (rows * d > PARALLEL_MIN) num_threads(mi_get_num_threads())
    for (int64_t r = 0; r < rows; r++) {
        float mean;
        scale[r] = k->row_scale(x + r * d, d, centre, eps, &mean);
    }
}

void mi_tl_norm_apply(int centre, const float *x, const float *scale, const float *w,
                      const float *b, int64_t rows, int64_t d, float *normalized, float *out)
{
    const mi_norm_kernels *k = kernels();
    if (!w) out = NULL;
    #pragma omp parallel for schedule(static) if (rows * d > PARALLEL_MIN) num_threads(mi_get_num_threads())
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * d;
        /* the mean exactly as the stats step computed it */
        float mean = centre ? k->row_mean(xr, d) : 0.0f;
        k->row_apply(xr, d, mean, scale[r], w, b, normalized ? normalized + r * d : NULL,
                     out ? out + r * d : NULL);
    }
}

void mi_tl_norm_affine(const float *normalized, const float *w, const float *b, int64_t rows,
                       int64_t d, float *out)
{
    const mi_norm_kernels *k = kernels();
    #pragma omp parallel for schedule(static) if (rows * d > PARALLEL_MIN) num_threads(mi_get_num_threads())
    for (int64_t r = 0; r < rows; r++) k->row_affine(normalized + r * d, d, w, b, out + r * d);
}

/* ---- backward ----
 * dw/db partial sums: per fixed chunk of ROW_CHUNK rows (the chunking does not
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

/* One pass over the rows: dx, and each chunk's dw (and db) partials. The mean
 * is recomputed as the forward of the same ISA computed it, so xhat is
 * bitwise the forward's. */
static mi_status norm_backward(const char *what, int centre, const float *dy, const float *x,
                               const float *w, const float *scale, int64_t rows, int64_t d,
                               float *dx, float *dw, float *db)
{
    if (rows <= 0 || d <= 0) return MI_OK;
    const int64_t nchunk = (rows + ROW_CHUNK - 1) / ROW_CHUNK;
    const int64_t stride = db ? 2 * d : d;   /* per chunk: dw partials, then db's */
    const int sums = dw || db;
    double *part = sums ? mi_malloc(sizeof(double) * (size_t)(nchunk * stride)) : NULL;
    if (sums && !part) return mi_fail(MI_ERR_NOMEM, "%s: cannot allocate %ld x %ld partial sums",
                                      what, (long)nchunk, (long)stride);
    const mi_norm_kernels *k = kernels();
    #pragma omp parallel for schedule(static) if (rows * d > PARALLEL_MIN) num_threads(mi_get_num_threads())
    for (int64_t c = 0; c < nchunk; c++) {
        double *pw = dw ? part + c * stride : NULL, *pb = db ? part + c * stride + stride - d : NULL;
        if (sums)
            for (int64_t i = 0; i < stride; i++) part[c * stride + i] = 0.0;
        int64_t r1 = (c + 1) * ROW_CHUNK < rows ? (c + 1) * ROW_CHUNK : rows;
        for (int64_t r = c * ROW_CHUNK; r < r1; r++) {
            const float *xr = x + r * d;
            float mean = centre ? k->row_mean(xr, d) : 0.0f;
            k->row_backward(xr, dy + r * d, w, mean, 1.0f / scale[r], centre, d,
                            dx ? dx + r * d : NULL, pw, pb);
        }
    }
    if (dw) combine_chunks(part, nchunk, stride, d, dw);
    if (db) combine_chunks(part + stride - d, nchunk, stride, d, db);
    mi_free(part);
    return MI_OK;
}

mi_status mi_layer_norm_backward(const float *dy, const float *x, const float *w,
                                 const float *scale, int64_t rows, int64_t d,
                                 float *dx, float *dw, float *db)
{
    return norm_backward("layer_norm_backward", 1, dy, x, w, scale, rows, d, dx, dw, db);
}

mi_status mi_rms_norm_backward(const float *dy, const float *x, const float *w,
                               const float *scale, int64_t rows, int64_t d,
                               float *dx, float *dw)
{
    return norm_backward("rms_norm_backward", 0, dy, x, w, scale, rows, d, dx, dw, NULL);
}
