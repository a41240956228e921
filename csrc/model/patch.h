/* patch.h - the activation-patching engine: a grid of patched forward passes
 * (TransformerLens's transformer_lens.patching) computing only what a patch
 * changes.
 *
 * Every cell of a grid is one patched run of the corrupted input: at one hook
 * point, some slice of the corrupted activation is replaced by the same slice
 * of the clean run's activation, and the run continues to the logits. A patch
 * at layer l leaves everything before block l as in the corrupted run, so the
 * cells of layer l start at block l from the corrupted run's residual stream
 * entering it (the forward's start_layer); `per_pass` cells are stacked along
 * the batch axis of one pass (copy j of the batch is cell j); the hook that
 * patches is a C function, so a pass runs without the interpreter.
 *
 * Readout: either every logit of every cell (for an arbitrary metric of the
 * logits), or only some rows (batch b, position t) of each cell and, per row,
 * a few unembedding columns (token ids) and optionally the row's log-sum-exp
 * over the vocabulary: the pass then ends after the last block and the final
 * norm and unembedding run on those rows only (logit differences read two
 * columns of one row per prompt instead of pos x d_vocab logits).
 */
#ifndef MI_MODEL_PATCH_H
#define MI_MODEL_PATCH_H

#include <stdint.h>

#include "model/transformer.h"

/* One patched activation: the hook point and the clean run's activation
 * there, C-contiguous with the point's view shape for a [B, T] call
 * ([B, d1, d2, d3], numel floats in all).
 *
 * Beyond the cells' own patches (path patching): with every_cell the source
 * patches its slice idx (-1: whole axis) into every cell's copy, before the
 * cells' patches of the same point; with per_cell it holds one activation per
 * cell of the call ([n_cells, B, d1, d2, d3]: cell j reads its own); a
 * capture source (clean NULL, capture non-NULL) patches nothing and receives
 * every cell's activation at the point after the patches there
 * ([n_cells, B, d1, d2, d3], numel floats; mi_patch_capture_run only). */
typedef struct {
    int point;
    const float *clean;
    int64_t numel;
    int pos_axis;   /* the view's axis (1..3) of query positions (attention patterns: 2), 0 none */
    int every_cell, per_cell;
    int batch_shared;   /* clean is one [d1, d2, d3] for every batch row (a mean activation) */
    int64_t idx[3];
    float *capture;
} mi_patch_source;

/* Position skipping (causal models): the passes recompute only positions
 * [pos0, T); the keys and values of positions [0, pos0) come from the
 * corrupted run (k[i], v[i]: layer start_layer + i's keys and values as
 * attention reads them: hook_k, or hook_rot_k in rotary models, and hook_v;
 * [B, T, n_kv_heads, Dh] contiguous), read through a key/value cache (kv_cache.h).
 * Valid when every cell patches positions >= pos0 only (a patch at position
 * p cannot change an earlier position of a causal model) and every readout
 * row is at a position >= pos0. pos0 0: every position is computed. */
typedef struct {
    int64_t pos0;
    const float *const *k, *const *v;
} mi_patch_prefix;

/* One cell: which source it patches (-1: none, only the every_cell sources)
 * and the index along the view's axes 1..3 (after batch); -1 takes the whole axis. TransformerLens's patch setters:
 * layer_pos (pos, -1, -1), layer_pos_head_vector (pos, head, -1),
 * layer_head_vector (-1, head, -1), layer_head_pattern (head, -1, -1),
 * layer_head_pos_pattern (head, dest, -1), dest_src (head, dest, src). */
typedef struct {
    int source;
    int64_t idx[3];
} mi_patch_cell;

/* What each cell's pass hands back. n_rows 0: its whole logits. Else rows
 * [n_rows][2] (batch, position) of the [B, T] input, cols [n_rows][n_cols]
 * token ids read on each row, and with lse the row's log-sum-exp last. */
typedef struct {
    int64_t n_rows;
    const int64_t *rows;
    int64_t n_cols;
    const int64_t *cols;
    int lse;
} mi_patch_readout;

/* Run n_cells patched passes of a [B, T] input from block start_layer
 * (resid [B, T, D]: the corrupted residual stream entering it; key_mask [B, T]
 * or NULL as mi_tf_forward's), per_pass cells at a time. Every source point
 * must be a per-layer point of a layer >= start_layer that the spec fires.
 * Writes out_values [n_cells, n_rows, n_cols + lse] (float64) or, with
 * n_rows 0, out_logits [n_cells * B, T, d_vocab_out]. With a prefix
 * (pos0 > 0) cell indices and readout rows stay in [0, T) coordinates; the
 * row readout is then required. The numbers do not
 * depend on per_pass or the thread count (rows of a pass are independent). */
mi_status mi_patch_run(const mi_transformer *m, int start_layer, int64_t B, int64_t T,
                       const float *resid, const float *key_mask,
                       const mi_patch_source *src, int n_src,
                       const mi_patch_cell *cells, int64_t n_cells, int64_t per_pass,
                       const mi_patch_prefix *prefix,
                       const mi_patch_readout *ro, double *out_values, float *out_logits);

/* Patched passes of a [B, T] input over blocks [start_layer, stop_layer)
 * (stop_layer <= n_layers; no readout) whose capture sources receive each
 * cell's activations: the first half of path patching (the receivers' inputs
 * with the sender patched and everything else frozen). Sources, cells and
 * per_pass as mi_patch_run's; no position skipping. */
mi_status mi_patch_capture_run(const mi_transformer *m, int start_layer, int stop_layer, int64_t B,
                               int64_t T, const float *resid, const float *key_mask,
                               const mi_patch_source *src, int n_src,
                               const mi_patch_cell *cells, int64_t n_cells, int64_t per_pass);

/* The arena bytes one pass of per_pass cells takes (for choosing per_pass). */
mi_status mi_patch_pass_bytes(const mi_transformer *m, int start_layer, int64_t B, int64_t T,
                              const mi_patch_source *src, int n_src, int64_t per_pass,
                              int rows_only, size_t *bytes);

#endif
