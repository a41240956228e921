/* similarity.h - cosine-similarity and correlation matrices.
 *
 * Shapes: X[rows, cols] float32 C-contiguous.
 *   mi_normalize: per row (axis = 1) or per column (axis = 0) of X, subtract
 *     the mean when `center`, then divide by the L2 norm; means and norms in
 *     double. A vector of norm 0 becomes `zero_fill` (0 for cosine similarity,
 *     as sklearn; NaN for correlation, as np.corrcoef).
 *   Products of the normalised matrices go through mi_sgemm:
 *     cosine_similarity(X, Y) = Xn @ Yn^T           [rows_x, rows_y]
 *     column cosine (seed)    = An^T @ An           [cols, cols]
 *     corrcoef(X)             = Xc @ Xc^T, clipped to [-1, 1] as np.corrcoef
 */
#ifndef MI_SIMILARITY_H
#define MI_SIMILARITY_H

#include <stdint.h>

void mi_normalize(const float *x, int64_t rows, int64_t cols, int axis, int center,
                  float zero_fill, float *y);

/* C[M,N] = op(A) op(B) for normalised inputs, then clip to [-1, 1] when clip. */
void mi_similarity_product(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                           const float *A, int64_t lda, const float *B, int64_t ldb,
                           int clip, float *C);

#endif
