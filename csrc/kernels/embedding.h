/* embedding.h - embedding lookup (W_E, W_pos) and its backward.
 *
 * Shapes: W, dW [vocab, d]; tokens [n] (int64); out, dout [n, d].
 *
 *   forward:  out[i] = W[tokens[i]]
 *   backward: dW[tokens[i]] += dout[i]     (scatter-add, ACCUMULATES)
 *
 * A token outside [0, vocab) is an MI_ERR_INDEX naming its position, checked
 * before any work. The backward is parallel over column blocks of d, each
 * block adding the rows in token order: no atomics, bitwise identical for
 * any thread count (repeated tokens sum in the same order).
 * For positional embeddings pass tokens = position indices.
 */
#ifndef MI_EMBEDDING_H
#define MI_EMBEDDING_H

#include <stdint.h>

#include "common/status.h"

mi_status mi_embedding_forward(const float *W, int64_t vocab, int64_t d,
                               const int64_t *tokens, int64_t n, float *out);
mi_status mi_embedding_backward(const float *dout, const int64_t *tokens, int64_t n,
                                int64_t vocab, int64_t d, float *dW);

#endif
