/* params.h - where the transformer reads each parameter from.
 *
 * A parameter lives in the model's blob (params + offset) unless a loader
 * pointed it at external memory (a mapped checkpoint: zero-copy load); the
 * unembedding may be tied (logits = x @ W_E^T, W_U not read). These functions
 * keep table[i].data, n_external and tied_unembed consistent; the owner of the
 * external memory (the binding) keeps it alive while it is pointed at, and
 * calls none of them while a pass runs.
 */
#ifndef MI_PARAMS_H
#define MI_PARAMS_H

#include <stdint.h>

#include "common/status.h"
#include "model/transformer.h"

/* The table index of parameter `name` (TransformerLens name), or -1. */
int mi_tf_param_index(const mi_transformer *m, const char *name);

/* Elements of table entry i. */
int64_t mi_tf_param_numel(const mi_transformer *m, int i);

/* Is table entry i the unembedding W_U while it is tied to W_E (not read)? */
int mi_tf_param_is_tied(const mi_transformer *m, int i);

/* Bytes of entry i's data (float32 or bfloat16 elements). */
size_t mi_tf_param_bytes(const mi_transformer *m, int i);

/* Read entry i from `data` (mi_tf_param_numel elements of its type, the
 * internal layout; with `trans` the transpose: the tensor as a [rest, last
 * axis] matrix stored [last axis, rest], as a Hugging Face Linear's [out, in]
 * weight) instead of the blob; NULL: back to the blob. MI_ERR_VALUE for the
 * tied W_U (untie first), and for `trans` on a tensor other than the bfloat16
 * W_O, W_in, W_gate, W_out, W_U (the ones the forward reads through one
 * product with their last axis as columns; the backward never reads them, a
 * bf16 model does not train). */
mi_status mi_tf_param_set_external(mi_transformer *m, int i, void *data, int trans);

/* Copy entry i's external data into the blob (transposed back when it was
 * read transposed) and read it there again;
 * returns 1 when it was external, 0 when it already lived in the blob. */
int mi_tf_param_materialize(mi_transformer *m, int i);

/* tied_unembed = 1: logits read W_E^T in place (HF's tied lm_head). Needs
 * d_vocab_out == d_vocab (MI_ERR_VALUE naming both). An external W_U is
 * dropped (no longer read): *dropped is its index, else -1. */
mi_status mi_tf_tie(mi_transformer *m, int *dropped);

/* tied_unembed = 0: W_U [D, V] in the blob becomes a copy of W_E^T. */
void mi_tf_untie(mi_transformer *m);

/* Same parameter names, offsets and shapes in the same order (blob layout). */
int mi_tf_same_layout(const mi_transformer *a, const mi_transformer *b);

/* Read every parameter where `src` reads it from: its blob (params), its
 * external data and its tied_unembed. Needs mi_tf_same_layout(m, src); the
 * caller keeps src's memory alive while m points at it. */
void mi_tf_share_params(mi_transformer *m, const mi_transformer *src);

#endif
