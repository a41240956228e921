/* similarity.h - cosine-similarity and correlation matrices.
 *
 * Shapes: X[rows, cols] C-contiguous, float32 or float64 (x_f64).
 *   A "variable" is a row of X (axis = 1: sklearn's cosine_similarity,
 *   np.corrcoef rowvar=True) or a column (axis = 0: the notebook's
 *   A / ||A||_col, np.corrcoef rowvar=False); it has k = cols (axis 1) or
 *   k = rows (axis 0) observations.
 *
 *   mi_normalize_vars: Z[n_vars, k] float32, variable v's observations
 *     centred (when `center`) and divided by their L2 norm, mean and norm in
 *     double; a variable of norm 0 becomes `zero_fill` (0 for cosine
 *     similarity, as sklearn; NaN for correlation, as np.corrcoef). NaN/inf
 *     propagate as in NumPy (a NaN variable gives a NaN row of Z).
 *   mi_similarity_gram: C[n, n] = Z Z^T for Z[n, k]: only the blocks on and
 *     above the diagonal are multiplied (mi_sgemm, one block per thread), each
 *     mirrored while it is in cache, so C is exactly symmetric and costs half
 *     a GEMM; clipped to [-1, 1] when `clip` (np.corrcoef does).
 *   mi_similarity_cross: C[nx, ny] = Zx Zy^T (mi_sgemm), clipped when `clip`.
 *   mi_similarity_ref: the plain reference of normalise + product, in double
 *     throughout (the fast path is tested against it).
 *
 * Every output element is one dot product summed in an order that depends
 * only on k and the ISA, so results do not depend on the thread count.
 */
#ifndef MI_SIMILARITY_H
#define MI_SIMILARITY_H

#include <stdint.h>

#include "common/status.h"

/* The whole computation: normalise x (and y, or y = NULL for sim(x, x) through
 * the symmetric path) into scratch, multiply, clip. C is [n_x_vars, n_y_vars].
 * reject_nonfinite: NaN/inf input is an MI_ERR_VALUE naming X or Y and the
 * variable (sklearn raises); otherwise it propagates as in NumPy. With no
 * observations (k = 0) and a NaN zero_fill, C is all NaN (np.corrcoef).
 * MI_ERR_NOMEM when the scratch cannot be allocated. */
mi_status mi_similarity(const void *x, int x_f64, int64_t rows_x, int64_t cols_x,
                        const void *y, int y_f64, int64_t rows_y, int64_t cols_y, int axis,
                        int center, float zero_fill, int clip, int reject_nonfinite, float *C);

/* Returns 0, or 1 + the index of the first variable holding NaN or inf. */
int64_t mi_normalize_vars(const void *x, int x_f64, int64_t rows, int64_t cols, int axis,
                          int center, float zero_fill, float *Z);

void mi_similarity_gram(const float *Z, int64_t n, int64_t k, int clip, float *C);

void mi_similarity_cross(const float *Zx, int64_t nx, const float *Zy, int64_t ny, int64_t k,
                         int clip, float *C);

/* Same arguments and result as mi_similarity (without the NaN/inf check). */
mi_status mi_similarity_ref(const void *x, int x_f64, int64_t rows_x, int64_t cols_x,
                            const void *y, int y_f64, int64_t rows_y, int64_t cols_y, int axis,
                            int center, float zero_fill, int clip, float *C);

#endif
