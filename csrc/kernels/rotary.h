/* rotary.h - rotary position embeddings (RoPE) as TransformerLens computes
 * them: the angle table and the rotation of queries and keys, forward and
 * backward.
 *
 * Shapes: R = rotary_dim (even, <= Dh), P table positions, rows = B*T.
 *   freq [R]: the period divisor of each rotated column (angle = pos / freq),
 *     in TransformerLens's column order: NeoX ("half") pairs column i with
 *     i + R/2 and column i and i + R/2 share freq[i]; GPT-J ("adjacent",
 *     TransformerLens's rotary_adjacent_pairs) pairs 2i with 2i+1, both
 *     sharing freq of pair i.
 *   cos, sin [P, R]: cos(pos / freq[c]), sin(pos / freq[c]).
 *   x [rows, heads, Dh] read with row stride x_row (elements; heads Dh apart,
 *     d contiguous); y likewise with y_row.
 *
 * Frequencies (float32 arithmetic in TransformerLens's order, so the table
 * matches its rotary_cos / rotary_sin):
 *   plain:  freq[i] = base ** (i / (R/2)), i < R/2
 *   Llama-3 rope_scaling (NTK by parts): inv = 1 / base ** (2i / R);
 *     wavelen = 2 pi / inv; low-frequency columns (wavelen > ctx / low)
 *     get inv / factor; medium ones (between ctx / high and ctx / low) blend
 *     (1 - s) inv / factor + s inv with s = (ctx / wavelen - low) /
 *     (high - low); high-frequency ones keep inv; freq = 1 / inv.
 *
 * Rotation of row r at position p = pos_ids[r] (NULL: r % T), per head:
 *   y[c] = x[c] cos[p, c] + rot(x)[c] sin[p, c]          for c < R
 *   y[c] = x[c]                                          for R <= c < Dh
 * with rot(x) = (-x[R/2:], x[:R/2]) (half) or (-x1, x0, -x3, x2, ...)
 * (adjacent). The backward is the transpose: the same call with `inverse`
 * set (sin negated), dx = R(-angle) dy. y may alias x (each pair is read
 * before it is written). Positions must lie in [0, P): the caller checks.
 *
 * Parallel over rows; each element is one expression on one thread
 * (bitwise identical for any thread count). mi_rotary_apply_ref is the plain
 * loop it is tested against (bitwise equal: same expression per element).
 */
#ifndef MI_ROTARY_H
#define MI_ROTARY_H

#include <stdint.h>

#include "common/status.h"

typedef struct {
    int64_t rotary_dim;      /* R: even, 2 <= R <= d_head */
    int adjacent;            /* GPT-J pairs (2i, 2i+1); 0: NeoX halves */
    float base;              /* rope_theta */
    int ntk_by_parts;        /* Llama-3 rope_scaling */
    float ntk_factor, ntk_low_freq_factor, ntk_high_freq_factor;
    float ntk_original_ctx_len;
} mi_rotary_cfg;

/* MI_OK or MI_ERR_VALUE naming the field (R even and in [2, d_head], base > 0,
 * the NTK factors > 0 with high != low). */
mi_status mi_rotary_check(const mi_rotary_cfg *c, int64_t d_head);

/* freq [R] as above. */
void mi_rotary_freqs(const mi_rotary_cfg *c, float *freq);

/* cos, sin [n_pos, R] for positions 0 .. n_pos - 1. */
void mi_rotary_table(const mi_rotary_cfg *c, int64_t n_pos, float *cos_t, float *sin_t);

void mi_rotary_apply(const mi_rotary_cfg *c, const float *x, int64_t x_row, float *y, int64_t y_row,
                     int64_t rows, int64_t T, int64_t heads, int64_t d_head, const int64_t *pos_ids,
                     const float *cos_t, const float *sin_t, int inverse);
void mi_rotary_apply_ref(const mi_rotary_cfg *c, const float *x, int64_t x_row, float *y,
                         int64_t y_row, int64_t rows, int64_t T, int64_t heads, int64_t d_head,
                         const int64_t *pos_ids, const float *cos_t, const float *sin_t,
                         int inverse);

#endif
