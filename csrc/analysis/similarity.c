/* similarity.c - normalisation and products for similarity matrices (see similarity.h). */
#include "analysis/similarity.h"

#include <math.h>
#include <stdlib.h>

#include "kernels/gemm.h"

static void normalize_rows(const float *x, int64_t rows, int64_t cols, int center,
                           float zero_fill, float *y)
{
    #pragma omp parallel for schedule(static) if (rows * cols > 65536)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * cols;
        float *yr = y + r * cols;
        double mean = 0, ss = 0;
        if (center) {
            for (int64_t c = 0; c < cols; c++) mean += xr[c];
            mean /= (double)cols;
        }
        for (int64_t c = 0; c < cols; c++) { double d = xr[c] - mean; ss += d * d; }
        double nrm = sqrt(ss);
        for (int64_t c = 0; c < cols; c++)
            yr[c] = nrm > 0 ? (float)((xr[c] - mean) / nrm) : zero_fill;
    }
}

/* Columns: walk rows in order (cache friendly), columns in blocks per thread. */
static void normalize_cols(const float *x, int64_t rows, int64_t cols, int center,
                           float zero_fill, float *y)
{
    const int64_t JB = 256;
    int64_t nblk = (cols + JB - 1) / JB;
    #pragma omp parallel for schedule(static) if (rows * cols > 65536)
    for (int64_t b = 0; b < nblk; b++) {
        int64_t j0 = b * JB, j1 = j0 + JB < cols ? j0 + JB : cols;
        double mean[256], ss[256];
        for (int64_t j = j0; j < j1; j++) mean[j - j0] = ss[j - j0] = 0;
        if (center) {
            for (int64_t r = 0; r < rows; r++)
                for (int64_t j = j0; j < j1; j++) mean[j - j0] += x[r * cols + j];
            for (int64_t j = j0; j < j1; j++) mean[j - j0] /= (double)rows;
        }
        for (int64_t r = 0; r < rows; r++)
            for (int64_t j = j0; j < j1; j++) {
                double d = x[r * cols + j] - mean[j - j0];
                ss[j - j0] += d * d;
            }
        for (int64_t j = j0; j < j1; j++) ss[j - j0] = sqrt(ss[j - j0]);
        for (int64_t r = 0; r < rows; r++)
            for (int64_t j = j0; j < j1; j++)
                y[r * cols + j] = ss[j - j0] > 0
                    ? (float)((x[r * cols + j] - mean[j - j0]) / ss[j - j0]) : zero_fill;
    }
}

void mi_normalize(const float *x, int64_t rows, int64_t cols, int axis, int center,
                  float zero_fill, float *y)
{
    if (axis == 1) normalize_rows(x, rows, cols, center, zero_fill, y);
    else normalize_cols(x, rows, cols, center, zero_fill, y);
}

void mi_similarity_product(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                           const float *A, int64_t lda, const float *B, int64_t ldb,
                           int clip, float *C)
{
    mi_sgemm(trans_a, trans_b, M, N, K, A, lda, B, ldb, NULL, 0.0f, C, N);
    if (!clip) return;
    #pragma omp parallel for schedule(static) if (M * N > 65536)
    for (int64_t i = 0; i < M * N; i++) {
        if (C[i] > 1.0f) C[i] = 1.0f;
        else if (C[i] < -1.0f) C[i] = -1.0f;
    }
}
