/* cross_entropy.h - softmax cross-entropy over logits rows, forward + backward.
 *
 * Shapes: logits, dlogits [rows, vocab]; targets [rows] (int64); losses [rows].
 *
 *   loss_r = logsumexp(logits[r]) - logits[r, targets[r]]
 *   mean   = sum of loss_r over rows with targets[r] != ignore_index, divided
 *            by their count (torch F.cross_entropy, reduction='mean'; NaN
 *            when every row is ignored, as torch)
 *   dlogits[r] += (softmax(logits[r]) - onehot(targets[r])) / count
 *                 (the gradient of mean; 0 for ignored rows)  ACCUMULATES
 *
 * losses (per row, 0 for ignored rows) and dlogits may be NULL; mean may be
 * NULL. A target outside [0, vocab) that is not ignore_index is an
 * MI_ERR_INDEX naming the row, checked before any work. Parallel over rows;
 * the mean sums the per-row losses in row order (bitwise identical for any
 * thread count). The scalar reference evaluates logsumexp in double; the
 * vector rows (AVX2, AVX-512) use float exps summed in double (~1e-7 absolute
 * in the loss).
 */
#ifndef MI_CROSS_ENTROPY_H
#define MI_CROSS_ENTROPY_H

#include <stdint.h>

#include "common/status.h"

#define MI_IGNORE_INDEX (-100)

mi_status mi_cross_entropy(const float *logits, const int64_t *targets, int64_t rows,
                           int64_t vocab, int64_t ignore_index,
                           float *mean, float *losses, float *dlogits);

#endif
