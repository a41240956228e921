/* patch_py.c - the activation-patching engine (model/patch.h) as _core functions.
 *
 *   patch_run(model, start_layer, resid, sources, cells, per_pass, key_mask=None,
 *             rows=None, cols=None, lse=False)
 *       -> float64 [n_cells, n_rows, n_cols + lse], or (rows None) float32
 *          logits [n_cells * B, T, d_vocab_out]
 *   patch_pass_bytes(model, start_layer, batch, seq, points, per_pass, rows_only) -> int
 *
 *   patch_capture(model, start_layer, stop_layer, resid, sources, cells, per_pass,
 *                 key_mask=None) -> None (the capture sources' arrays written)
 *
 * resid float32 [B, T, D]; sources: a sequence of (point id, clean activation
 * [B, ...] float32[, position axis[, mode, i1, i2, i3]]) tuples, mode bits 1
 * every cell (the slice i1..i3 into every copy), 2 per cell (the activation
 * is [n_cells, B, ...]), 4 capture (the array is written), 8 batch-shared
 * (one [...] for every batch row: a mean activation); cells int64
 * [n_cells, 4]: (source or -1 for none, i1, i2, i3), -1 for a whole axis; rows int64 [R, 2] (batch, position); cols int64 [R, K].
 * The passes run with the GIL released. */
#include "python/convert.h"

#include <string.h>

#include "common/memory.h"
#include "model/patch.h"
#include "python/model_py.h"

/* A source tuple's mode bits (mi_patch_source's every_cell, per_cell, capture). */
enum { SRC_EVERY_CELL = 1, SRC_PER_CELL = 2, SRC_CAPTURE = 4, SRC_BATCH_SHARED = 8 };

static int parse_sources(PyObject *obj, mi_patch_source **src, mi_arg **arrs, int *n)
{
    PyObject *seq = PySequence_Fast(obj, "sources: expected a sequence of (point id, array) pairs");
    if (!seq) return -1;
    Py_ssize_t len = PySequence_Fast_GET_SIZE(seq);
    *n = (int)len;
    *src = PyMem_Calloc((size_t)len + 1, sizeof(mi_patch_source));
    *arrs = PyMem_Calloc((size_t)len + 1, sizeof(mi_arg));
    if (!*src || !*arrs) { Py_DECREF(seq); PyErr_NoMemory(); return -1; }
    for (Py_ssize_t i = 0; i < len; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        PyObject *pt, *arr;
        int pos_axis = 0, mode = 0;
        long long i1 = -1, i2 = -1, i3 = -1;
        if (!PyTuple_Check(item) || !PyArg_ParseTuple(item, "OO|iiLLL", &pt, &arr, &pos_axis, &mode,
                                                      &i1, &i2, &i3)) {
            PyErr_Format(PyExc_TypeError, "sources[%zd]: expected a (point id, array[, position "
                         "axis[, mode, i1, i2, i3]]) tuple", i);
            Py_DECREF(seq);
            return -1;
        }
        if (mode & ~(SRC_EVERY_CELL | SRC_PER_CELL | SRC_CAPTURE | SRC_BATCH_SHARED)) {
            PyErr_Format(PyExc_ValueError, "sources[%zd]: unknown mode bits %d", i, mode);
            Py_DECREF(seq);
            return -1;
        }
        long p = PyLong_AsLong(pt);
        if (p == -1 && PyErr_Occurred()) { Py_DECREF(seq); return -1; }
        (*arrs)[i] = (mode & SRC_CAPTURE) ? MI_ARG_OUT("sources (capture output)", 3, 5)
                                          : MI_ARG_FLOAT("sources (clean activation)", 1, 5);
        if (mi_arg_convert(arr, &(*arrs)[i]) < 0) { Py_DECREF(seq); return -1; }
        (*src)[i].point = (int)p;
        if (mode & SRC_CAPTURE)
            (*src)[i].capture = mi_arg_data(&(*arrs)[i]);
        else
            (*src)[i].clean = mi_arg_data(&(*arrs)[i]);
        (*src)[i].numel = (int64_t)PyArray_SIZE((*arrs)[i].arr);
        (*src)[i].pos_axis = pos_axis;
        (*src)[i].every_cell = (mode & SRC_EVERY_CELL) != 0;
        (*src)[i].per_cell = (mode & SRC_PER_CELL) != 0;
        (*src)[i].batch_shared = (mode & SRC_BATCH_SHARED) != 0;
        (*src)[i].idx[0] = i1;
        (*src)[i].idx[1] = i2;
        (*src)[i].idx[2] = i3;
    }
    Py_DECREF(seq);
    return 0;
}

static void release_sources(mi_patch_source *src, mi_arg *arrs, int n)
{
    for (int i = 0; arrs && i < n; i++) mi_arg_release(&arrs[i]);
    PyMem_Free(arrs);
    PyMem_Free(src);
}

/* The corrupted run's keys or values per layer from start_layer on: float32
 * [B, T, H, Dh] each, converted into arrs; data pointers into ptrs. */
static int parse_layers(PyObject *obj, const char *what, int64_t n_expect, mi_arg **arrs,
                        const float ***ptrs, int *n)
{
    PyObject *seq = PySequence_Fast(obj, "past_k / past_v: expected a sequence of arrays");
    if (!seq) return -1;
    Py_ssize_t len = PySequence_Fast_GET_SIZE(seq);
    *n = (int)len;
    if (len != n_expect) {
        PyErr_Format(PyExc_ValueError, "%s: expected one array per layer from start_layer on (%lld), "
                     "got %zd", what, (long long)n_expect, len);
        Py_DECREF(seq);
        return -1;
    }
    *arrs = PyMem_Calloc((size_t)len + 1, sizeof(mi_arg));
    *ptrs = PyMem_Calloc((size_t)len + 1, sizeof(float *));
    if (!*arrs || !*ptrs) { Py_DECREF(seq); PyErr_NoMemory(); return -1; }
    for (Py_ssize_t i = 0; i < len; i++) {
        (*arrs)[i] = MI_ARG_FLOAT(what, 4, 4);
        if (mi_arg_convert(PySequence_Fast_GET_ITEM(seq, i), &(*arrs)[i]) < 0) { Py_DECREF(seq); return -1; }
        (*ptrs)[i] = mi_arg_data(&(*arrs)[i]);
    }
    Py_DECREF(seq);
    return 0;
}

/* The [n_cells, 4] int64 cells (source, then three indices) as mi_patch_cell
 * rows (PyMem; one spare so that zero cells still allocate). */
static mi_patch_cell *parse_cells(const mi_arg *cells, int n_src)
{
    npy_intp n_cells = PyArray_DIM(cells->arr, 0);
    mi_patch_cell *cl = PyMem_Calloc((size_t)n_cells + 1, sizeof *cl);
    if (!cl) { PyErr_NoMemory(); return NULL; }
    const int64_t *cd = mi_arg_data(cells);
    for (npy_intp j = 0; j < n_cells; j++) {
        if (cd[4 * j] < -1 || cd[4 * j] >= n_src) {
            PyErr_Format(PyExc_IndexError, "cells[%zd]: source %lld is outside [-1, %d)", j,
                         (long long)cd[4 * j], n_src);
            PyMem_Free(cl);
            return NULL;
        }
        cl[j].source = (int)cd[4 * j];
        for (int a = 0; a < 3; a++) cl[j].idx[a] = cd[4 * j + 1 + a];
    }
    return cl;
}

/* The model, in use (mi_py_model_release when done), once the residual stream
 * [batch, pos, d] is checked against its d_model. */
static mi_transformer *use_model(PyObject *module, PyObject *model, const mi_arg *resid)
{
    mi_transformer *tf = mi_py_model_use(module, model);
    if (tf && PyArray_DIM(resid->arr, 2) != tf->spec.d_model) {
        PyErr_Format(PyExc_ValueError, "resid: expected [batch, pos, d_model=%ld]", (long)tf->spec.d_model);
        mi_py_model_release(model);
        return NULL;
    }
    return tf;
}

static PyObject *py_patch_run(PyObject *module, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"model", "start_layer", "resid", "sources", "cells", "per_pass",
                             "key_mask", "rows", "cols", "lse", "pos0", "past_k", "past_v", NULL};
    PyObject *model, *sources, *past_k = Py_None, *past_v = Py_None;
    int start, lse = 0;
    long long pos0 = 0;
    long long per_pass;
    mi_arg resid = MI_ARG_FLOAT("resid", 3, 3), cells = MI_ARG_INT64("cells", 2, 2);
    mi_arg mask = MI_ARG("key_mask", NPY_FLOAT32, MI_ARG_OPTIONAL | MI_ARG_CAST, 2, 2);
    mi_arg rows = MI_ARG_OPT(MI_ARG_INT64("rows", 2, 2)), cols = MI_ARG_OPT(MI_ARG_INT64("cols", 2, 2));
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OiO&OO&L|O&O&O&pLOO:patch_run", kwlist, &model,
                                     &start, mi_conv_array, &resid, &sources, mi_conv_array,
                                     &cells, &per_pass, mi_conv_array, &mask, mi_conv_array, &rows,
                                     mi_conv_array, &cols, &lse, &pos0, &past_k, &past_v))
        return NULL;
    mi_patch_source *src = NULL;
    mi_arg *arrs = NULL;
    int n_src = 0;
    PyObject *out = NULL;
    mi_patch_cell *cl = NULL;
    mi_transformer *tf = NULL;
    mi_arg *ka = NULL, *va = NULL;
    const float **kp = NULL, **vp = NULL;
    int nk = 0, nv = 0;
    if (parse_sources(sources, &src, &arrs, &n_src) < 0) goto done;
    npy_intp B = PyArray_DIM(resid.arr, 0), T = PyArray_DIM(resid.arr, 1);
    npy_intp bt[2] = {B, T};
    if (mask.arr && mi_arg_shape(&mask, 2, bt, "like the residual stream's batch and positions") < 0)
        goto done;
    npy_intp c4[2] = {-1, 4};
    if (mi_arg_shape(&cells, 2, c4, NULL) < 0) goto done;
    npy_intp n_cells = PyArray_DIM(cells.arr, 0);
    if ((rows.arr == NULL) != (cols.arr == NULL)) {
        PyErr_SetString(PyExc_ValueError, "patch_run: rows and cols go together");
        goto done;
    }
    npy_intp R = 0, K = 0;
    if (rows.arr) {
        npy_intp r2[2] = {-1, 2};
        if (mi_arg_shape(&rows, 2, r2, NULL) < 0) goto done;
        R = PyArray_DIM(rows.arr, 0);
        npy_intp rk[2] = {R, -1};
        if (mi_arg_shape(&cols, 2, rk, "one row of token ids per readout row") < 0) goto done;
        K = PyArray_DIM(cols.arr, 1);
        if (R == 0) {
            PyErr_SetString(PyExc_ValueError, "patch_run: rows: at least one readout row");
            goto done;
        }
    }
    if (!(cl = parse_cells(&cells, n_src))) goto done;
    if (!(tf = use_model(module, model, &resid))) goto done;
    if (rows.arr) {
        npy_intp dims[3] = {n_cells, R, K + (lse ? 1 : 0)};
        out = PyArray_ZEROS(3, dims, NPY_FLOAT64, 0);
    } else {
        npy_intp dims[3] = {n_cells * B, T, tf->spec.d_vocab_out};
        out = PyArray_EMPTY(3, dims, NPY_FLOAT32, 0);
    }
    if (!out) goto done;
    mi_patch_readout ro = {R, mi_arg_data(&rows), K, mi_arg_data(&cols), lse};
    mi_patch_prefix prefix = {pos0, NULL, NULL};
    if (pos0 > 0) {
        int64_t n_expect = tf->spec.n_layers - start;
        if (past_k == Py_None || past_v == Py_None) {
            PyErr_SetString(PyExc_ValueError, "patch_run: pos0 > 0 needs past_k and past_v");
            goto done;
        }
        if (parse_layers(past_k, "past_k", n_expect, &ka, &kp, &nk) < 0
            || parse_layers(past_v, "past_v", n_expect, &va, &vp, &nv) < 0)
            goto done;
        for (int i = 0; i < nk; i++) {
            npy_intp want[4] = {B, T, mi_tf_kv_heads(&tf->spec), tf->spec.d_head};
            if (mi_arg_shape(&ka[i], 4, want, "[batch, pos, n_key_value_heads, d_head]") < 0
                || mi_arg_shape(&va[i], 4, want, "[batch, pos, n_key_value_heads, d_head]") < 0)
                goto done;
        }
        prefix.k = kp;
        prefix.v = vp;
    }
    const float *rd = mi_arg_data(&resid), *md = mi_arg_data(&mask);
    void *od = PyArray_DATA((PyArrayObject *)out);
    mi_status st;
    Py_BEGIN_ALLOW_THREADS
    st = mi_patch_run(tf, start, B, T, rd, md, src, n_src, cl, n_cells, per_pass, &prefix, &ro,
                      rows.arr ? od : NULL, rows.arr ? NULL : od);
    Py_END_ALLOW_THREADS
    if (st != MI_OK) { Py_CLEAR(out); mi_py_raise(st); }
done:
    if (PyErr_Occurred()) Py_CLEAR(out);   /* a check after the output was made failed */
    if (tf) mi_py_model_release(model);
    release_sources(src, arrs, n_src);
    for (int i = 0; ka && i < nk; i++) mi_arg_release(&ka[i]);
    for (int i = 0; va && i < nv; i++) mi_arg_release(&va[i]);
    PyMem_Free(ka); PyMem_Free(va); PyMem_Free(kp); PyMem_Free(vp);
    PyMem_Free(cl);
    mi_arg_release(&resid); mi_arg_release(&cells); mi_arg_release(&mask);
    mi_arg_release(&rows); mi_arg_release(&cols);
    return out;
}

static PyObject *py_patch_capture(PyObject *module, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"model", "start_layer", "stop_layer", "resid", "sources", "cells",
                             "per_pass", "key_mask", NULL};
    PyObject *model, *sources;
    int start, stop;
    long long per_pass;
    mi_arg resid = MI_ARG_FLOAT("resid", 3, 3), cells = MI_ARG_INT64("cells", 2, 2);
    mi_arg mask = MI_ARG("key_mask", NPY_FLOAT32, MI_ARG_OPTIONAL | MI_ARG_CAST, 2, 2);
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OiiO&OO&L|O&:patch_capture", kwlist, &model, &start,
                                     &stop, mi_conv_array, &resid, &sources, mi_conv_array, &cells,
                                     &per_pass, mi_conv_array, &mask))
        return NULL;
    mi_patch_source *src = NULL;
    mi_arg *arrs = NULL;
    int n_src = 0;
    PyObject *res = NULL;
    mi_patch_cell *cl = NULL;
    mi_transformer *tf = NULL;
    if (parse_sources(sources, &src, &arrs, &n_src) < 0) goto done;
    npy_intp B = PyArray_DIM(resid.arr, 0), T = PyArray_DIM(resid.arr, 1);
    npy_intp bt[2] = {B, T}, c4[2] = {-1, 4};
    if (mask.arr && mi_arg_shape(&mask, 2, bt, "like the residual stream's batch and positions") < 0)
        goto done;
    if (mi_arg_shape(&cells, 2, c4, NULL) < 0) goto done;
    npy_intp n_cells = PyArray_DIM(cells.arr, 0);
    if (!(cl = parse_cells(&cells, n_src))) goto done;
    if (!(tf = use_model(module, model, &resid))) goto done;
    const float *rd = mi_arg_data(&resid), *md = mi_arg_data(&mask);
    mi_status st;
    Py_BEGIN_ALLOW_THREADS
    st = mi_patch_capture_run(tf, start, stop, B, T, rd, md, src, n_src, cl, n_cells, per_pass);
    Py_END_ALLOW_THREADS
    if (st != MI_OK) mi_py_raise(st);
    else res = Py_NewRef(Py_None);
done:
    if (tf) mi_py_model_release(model);
    release_sources(src, arrs, n_src);
    PyMem_Free(cl);
    mi_arg_release(&resid); mi_arg_release(&cells); mi_arg_release(&mask);
    return res;
}

static PyObject *py_patch_pass_bytes(PyObject *module, PyObject *args)
{
    PyObject *model, *points;
    int start, rows_only;
    long long B, T, per_pass;
    if (!PyArg_ParseTuple(args, "OiLLOLp:patch_pass_bytes", &model, &start, &B, &T, &points,
                          &per_pass, &rows_only))
        return NULL;
    PyObject *seq = PySequence_Fast(points, "points: expected a sequence of point ids");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    mi_patch_source *src = PyMem_Calloc((size_t)n + 1, sizeof *src);
    if (!src) { Py_DECREF(seq); return PyErr_NoMemory(); }
    for (Py_ssize_t i = 0; i < n; i++) {
        long p = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        if (p == -1 && PyErr_Occurred()) { Py_DECREF(seq); PyMem_Free(src); return NULL; }
        src[i].point = (int)p;
    }
    Py_DECREF(seq);
    PyObject *res = NULL;
    mi_transformer *tf = mi_py_model_use(module, model);
    if (tf) {
        size_t bytes = 0;
        mi_status st = mi_patch_pass_bytes(tf, start, B, T, src, (int)n, per_pass, rows_only, &bytes);
        mi_py_model_release(model);
        res = st == MI_OK ? PyLong_FromSize_t(bytes) : mi_py_raise(st);
    }
    PyMem_Free(src);
    return res;
}

static PyMethodDef patch_methods[] = {
    {"patch_run", (PyCFunction)(void (*)(void))py_patch_run, METH_VARARGS | METH_KEYWORDS,
     "patch_run(model, start_layer, resid, sources, cells, per_pass, key_mask=None, rows=None,\n"
     "          cols=None, lse=False, pos0=0, past_k=None, past_v=None)\n--\n\n"
     "Patched passes of a [B, T] input from block start_layer (resid [B, T, D]: the corrupted\n"
     "residual stream entering it), per_pass cells stacked along the batch axis. sources: (point\n"
     "id, clean activation [B, ...]) pairs; cells int64 [n, 4]: (source, i1, i2, i3), the index\n"
     "along the activation's axes after batch, -1 for a whole axis. With rows int64 [R, 2]\n"
     "(batch, position) and cols int64 [R, K] (token ids) returns float64 [n, R, K + lse]: those\n"
     "logits of each cell (and each row's log-sum-exp with lse); without, the logits\n"
     "[n * B, T, d_vocab_out] (float32). Causal models, a row readout: pos0 > 0 recomputes only\n"
     "positions >= pos0, the earlier ones' keys and values from past_k / past_v (the corrupted\n"
     "run's hook_k / hook_v [B, T, Hkv, Dh] of each layer from start_layer on); a source's optional\n"
     "third item is its activation's query-position axis (1, or 2 for attention patterns)."},
    {"patch_capture", (PyCFunction)(void (*)(void))py_patch_capture, METH_VARARGS | METH_KEYWORDS,
     "patch_capture(model, start_layer, stop_layer, resid, sources, cells, per_pass, key_mask=None)\n--\n\n"
     "Patched passes over blocks [start_layer, stop_layer) as patch_run's, without a readout: the\n"
     "capture sources (mode 4: (point id, out float32 [n_cells, B, ...], 0, 4)) receive every\n"
     "cell's activation at their point after its patches. Returns None."},
    {"patch_pass_bytes", py_patch_pass_bytes, METH_VARARGS,
     "patch_pass_bytes(model, start_layer, batch, seq, points, per_pass, rows_only)\n--\n\n"
     "Bytes of activations one patch_run pass of per_pass cells takes."},
    {NULL, NULL, 0, NULL},
};

int mi_py_patch_exec(PyObject *m)
{
    return PyModule_AddFunctions(m, patch_methods);
}
