/* convert.h - argument converters for the bindings (PyArg_Parse* "O&").
 *
 * Every binding of both extensions checks its array arguments here and only
 * here, so one argument gets one message wherever it is passed: the argument
 * name first, then what was expected and what came ("x: expected a
 * floating-point array, got dtype int64", "dy: expected shape (3, 4), got
 * (3, 5)").
 *
 * Usage: describe the argument, hand the description to the parser, release
 * it when done (the converters support cleanup, so a parse that fails later
 * releases what they took):
 *
 *     mi_arg x = MI_ARG_FLOAT("x", 1, 32), w = MI_ARG_OPT(MI_ARG_FLOAT("w", 1, 1));
 *     if (!PyArg_ParseTupleAndKeywords(args, kw, "O&|O&", kwlist, mi_conv_array, &x,
 *                                      mi_conv_array, &w)) return NULL;
 *     ...
 *     mi_arg_release(&x); mi_arg_release(&w);
 *
 * An optional argument (MI_ARG_OPTIONAL) that is None or not given leaves
 * arr NULL. What a converter accepts, by kind:
 *   input (default)  any array-like of the dtype's kind (float: 'f'; int64:
 *                    'i'/'u'; bool: 'b'), converted once to a native-order,
 *                    aligned, C-contiguous array of the dtype; arrays that
 *                    already are one are used in place. MI_ARG_CAST widens the
 *                    float kind to bool/int/uint/float (masks).
 *   MI_ARG_EXACT     an ndarray read as it is: already the dtype, native-order,
 *                    aligned and C-contiguous (or, with MI_ARG_STRIDED, any
 *                    whole-element strides up to 4 dims whose last axis is
 *                    contiguous). For large inputs a Python wrapper has
 *                    prepared, or that the core keeps (set_param): a wrong
 *                    one is refused, not copied.
 *   MI_ARG_INPLACE   the same, and writable: an ndarray the C core writes
 *                    into (out=, accumulators, workspaces, optimiser state).
 *                    Never converted: a copy would be written and thrown away.
 */
#ifndef MI_PY_CONVERT_H
#define MI_PY_CONVERT_H

#include "python/bridge.h"

#include "kernels/attention.h"

enum {
    MI_ARG_OPTIONAL = 1 << 0,   /* None (or not given): arr stays NULL */
    MI_ARG_EXACT = 1 << 1,      /* no conversion: must already be the dtype, C-contiguous */
    MI_ARG_INPLACE = 1 << 2,    /* written by the core: writable, never converted */
    MI_ARG_STRIDED = 1 << 3,    /* with EXACT/INPLACE: last axis contiguous, up to 4 dims */
    MI_ARG_CAST = 1 << 4,       /* float input from any bool/int/uint/float array */
};

typedef struct {
    const char *name;    /* as messages print it: "x", "grads[3]" */
    int dtype;           /* NPY_FLOAT32, NPY_FLOAT64, NPY_INT64, NPY_INT32, NPY_BOOL or
                          * NPY_UINT16 (bfloat16 bit patterns: only uint16 accepted) */
    int flags;           /* MI_ARG_* */
    int min_ndim, max_ndim;
    const char *who;     /* EXACT/INPLACE messages in the "who: name must be ..." form, or NULL */
    PyArrayObject *arr;  /* the result: a new reference, or NULL */
} mi_arg;

#define MI_ARG(name_, dtype_, flags_, lo, hi) \
    ((mi_arg){.name = (name_), .dtype = (dtype_), .flags = (flags_), .min_ndim = (lo), .max_ndim = (hi)})
#define MI_ARG_FLOAT(name_, lo, hi) MI_ARG(name_, NPY_FLOAT32, 0, lo, hi)
#define MI_ARG_INT64(name_, lo, hi) MI_ARG(name_, NPY_INT64, 0, lo, hi)
/* a float32 array the core writes into, used in place */
#define MI_ARG_OUT(name_, lo, hi) MI_ARG(name_, NPY_FLOAT32, MI_ARG_INPLACE, lo, hi)
/* the same description, None allowed */
#define MI_ARG_OPT(a) ((mi_arg){.name = (a).name, .dtype = (a).dtype, .flags = (a).flags | MI_ARG_OPTIONAL, \
                                .min_ndim = (a).min_ndim, .max_ndim = (a).max_ndim, .who = (a).who})

/* The "O&" converter for an mi_arg (Py_CLEANUP_SUPPORTED). */
int mi_conv_array(PyObject *obj, void *arg);
/* Convert obj by the description in *a outside a parser: 0, or -1 with the
 * exception set and a->arr NULL. */
int mi_arg_convert(PyObject *obj, mi_arg *a);
/* For MI_ARG_EXACT and MI_ARG_INPLACE descriptions, which never copy: the
 * checked array itself, borrowed (the caller's argument tuple or list holds
 * it for the call; do not release it), or NULL with the exception set. */
PyArrayObject *mi_arg_borrow(PyObject *obj, mi_arg *a);
/* Drop a->arr (NULL: nothing). */
void mi_arg_release(mi_arg *a);

/* The argument's data, or NULL when it was None. */
static inline void *mi_arg_data(const mi_arg *a) { return a->arr ? PyArray_DATA(a->arr) : NULL; }

/* 0 when a->arr has exactly `shape` (a -1 entry: any size there); else -1
 * with "name: expected shape (..), got (..)" (ValueError), `why` (NULL: none)
 * appended after the expected shape as in "(5,) to match x's last dim". */
int mi_arg_shape(const mi_arg *a, int ndim, const npy_intp *shape, const char *why);

/* "(2, 3, 4)" for a shape; buf holds 128 bytes. */
const char *mi_py_dims_str(int ndim, const npy_intp *shape, char *buf);
/* The same for an array's shape. */
const char *mi_py_shape_str(PyArrayObject *a, char *buf);

/* Product of all but the last dimension (rows of a row-wise kernel). */
npy_intp mi_py_rows(PyArrayObject *a);

/* A text argument (an in-memory file): str, UTF-8 encoded, or bytes, as a new
 * bytes object; NULL with TypeError naming `name`. */
PyObject *mi_py_text_arg(PyObject *obj, const char *name);

/* Token ids: any sequence of integers (list, tuple, NumPy array) as a PyMem
 * block of int32 (free with PyMem_Free) and its length; TypeError for a
 * non-integer, IndexError for an id outside int32 (no vocabulary has it),
 * each naming `who` and the position. 0, or -1 with the exception set. */
int mi_py_ids_arg(PyObject *obj, const char *who, int32_t **data, size_t *n);

/* Attention inputs: q, k, v [batch, pos, head, d_head] of one shape, or (k and
 * v None) q the fused qkv [batch, pos, 3, head, d_head] (Hugging Face's c_attn
 * output viewed 5-D), read in place through the layout. Fills qkv (release
 * all three after), *L and data[3] (q, k, v). 0, or -1 with the exception set. */
int mi_py_qkv_args(PyObject *q_obj, PyObject *k_obj, PyObject *v_obj, mi_arg qkv[3],
                   mi_attn_layout *L, const float *data[3]);

/* An attention scale argument: None gives 1/sqrt(d_head). */
int mi_py_scale_arg(PyObject *obj, int64_t d_head, double *scale);

/* Layer indices (None or an iterable of ints in [0, max_layers)) as a bit set
 * of max_layers / 64 words, zeroed first; ValueError naming a bad index,
 * TypeError for a non-integer. 0, or -1 with the exception set. */
int mi_py_local_layers(PyObject *obj, uint64_t *bits, int max_layers);

#endif
