/* arena.h - internal to csrc/model/: the tables of model_tables.h as C data
 * (axes, shapes, buffer kinds, point rows), checked sizes, and the buffer
 * slots of the per-call activation arena; shared by the planner (arena.c), the
 * hook point table (hook_points.c), the parameter layout (param_layout.c) and the
 * forward pass (transformer.c).
 *
 * One allocation per forward call holds every activation at an offset the
 * plan fixes before the pass: buffers whose hook point is cached or hooked get
 * their own slot (so the NumPy views handed out stay valid); the rest share one
 * scratch slot per kind, reused from layer to layer, so a plain forward needs
 * the logits plus about one layer whatever the depth.
 */
#ifndef MI_MODEL_ARENA_H
#define MI_MODEL_ARENA_H

#include <stddef.h>
#include <stdint.h>

#include "model/transformer.h"

#define ABSENT ((size_t)-1)
#define ALIGN_FLOATS 16   /* 64 bytes */
/* The most floats one parameter blob or arena may hold: its byte size and
 * every int64 index into it stay representable. */
#define MAX_FLOATS ((size_t)PTRDIFF_MAX / sizeof(float) - ALIGN_FLOATS)

static inline size_t align_floats(size_t n) { return (n + ALIGN_FLOATS - 1) & ~(size_t)(ALIGN_FLOATS - 1); }
static inline int has_norm_affine(mi_norm_type t) { return t == MI_NORM_LN || t == MI_NORM_RMS; }
static inline int has_norm_bias(mi_norm_type t) { return t == MI_NORM_LN; }
/* Attention reads per-head inputs [BT,H,D] (TransformerLens's 4-D attn input). */
static inline int head_inputs(const mi_tf_spec *s) { return s->use_split_qkv_input || s->use_attn_in; }

/* Axes, shapes and buffer kinds of model_tables.h. */
#define DIM_ROW(id, name) DIM_##id,
enum { MI_DIMS(DIM_ROW) N_DIMS };
#undef DIM_ROW
#define SH_ROW(id, ...) SH_##id,
enum { MI_SHAPES(SH_ROW) N_SHAPES };
#undef SH_ROW
#define BUF_ROW(id, ...) B_##id,
enum { MI_LAYER_BUFFERS(BUF_ROW) NB };
#undef BUF_ROW
#define BUF_ROW(id, ...) BS_##id,
enum { MI_START_BUFFERS(BUF_ROW) NBS };
#undef BUF_ROW
#define BUF_ROW(id, ...) BF_##id,
enum { MI_FINAL_BUFFERS(BUF_ROW) NBF };
#undef BUF_ROW

typedef struct {
    const char *name;     /* what a size error names */
    int shape;            /* SH_* */
    unsigned needed;      /* MI_F_* mask: the spec has the buffer */
    unsigned elided;      /* MI_F_* mask: written only when read (0: always) */
} buf_row;
extern const buf_row mi_start_bufs[NBS], mi_layer_bufs[NB], mi_final_bufs[NBF];

typedef struct {
    const char *name;     /* TransformerLens name (per layer: after "blocks.{l}.") */
    int buf;              /* buffer kind of its scope, or MI_BUF_* */
    int shape;            /* SH_*: the view */
    unsigned fires, listed;
    int rank;             /* TransformerLens module order within the scope */
} point_row;
enum { SCOPE_START, SCOPE_LAYER, SCOPE_FINAL };

/* The table row of point p (in [0, mi_tf_n_points)), its scope and layer (-1
 * outside the layers). */
const point_row *mi_tf_point_row(const mi_tf_spec *s, int p, int *scope, int *layer);

/* The axes (DIM_*) of each shape, DIM_NONE-padded, and the axis names. */
extern const unsigned char mi_shape_axes[N_SHAPES][5];
extern const char *const mi_dim_names[N_DIMS];
/* The extent of each axis of shape `sh` for a [B, T] call over Tk keys (T, or
 * cached + new positions with a KV cache) into dims; returns ndim. */
int mi_tf_shape(const mi_tf_spec *s, int sh, int64_t B, int64_t T, int64_t Tk, int64_t dims[5]);

/* The number of elements of a tensor with these axes (DIM_*, DIM_NONE-ended,
 * at most five; dropped axes skipped) into numel, its extents into dims;
 * fails naming `what` and the axes when the product exceeds MAX_FLOATS. */
mi_status mi_tf_numel(const mi_tf_spec *s, const unsigned char *axes, int64_t B, int64_t T,
                      int64_t Tk, const char *what, int64_t dims[5], int *ndim, size_t *numel);

/* Buffer slots: the start buffers, then resid[i] (i in [0, L]: resid_pre of
 * layer i = resid_post of layer i-1, one tensor as in TransformerLens), then
 * per layer NB kinds, then the final ones. q, k, v share the qkv buffer. */
static inline int n_bufs(const mi_tf_spec *s) { return NBS + 1 + (int)s->n_layers * (1 + NB) + NBF; }
static inline int buf_resid(int i) { return NBS + i; }
static inline int buf_layer(const mi_tf_spec *s, int l, int kind) { return NBS + 1 + (int)s->n_layers + l * NB + kind; }
static inline int buf_final(const mi_tf_spec *s, int kind) { return NBS + 1 + (int)s->n_layers * (1 + NB) + kind; }

/* Attention runs fused (mi_attn_fused) in layer with first point p0 unless a
 * hook needs scores or pattern between the steps; then the scores and
 * pattern buffers exist only when cached. */
static inline int attn_fusable(const uint8_t *flags, int p0)
{
    return !(flags[p0 + MI_P_SCORES] & MI_HOOK_FIRES) && !(flags[p0 + MI_P_PATTERN] & MI_HOOK_FIRES);
}

/* Start of buffer b in arena (NULL when this call does not use it). */
float *mi_tf_buf_ptr(const mi_tf_plan *plan, float *arena, int b);

#endif
