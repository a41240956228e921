/* convert.c - the argument converters of convert.h: every array argument of
 * every binding is checked here, with the argument's name in the message. */
#include "python/convert.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

const char *mi_py_dims_str(int ndim, const npy_intp *shape, char *buf)
{
    int n = snprintf(buf, 128, "(");
    for (int i = 0; i < ndim && n < 100; i++)
        n += snprintf(buf + n, 128 - (size_t)n, i ? ", %ld" : "%ld", (long)shape[i]);
    snprintf(buf + n, 128 - (size_t)n, ndim == 1 ? ",)" : ")");
    return buf;
}

const char *mi_py_shape_str(PyArrayObject *a, char *buf)
{
    return mi_py_dims_str(PyArray_NDIM(a), PyArray_DIMS(a), buf);
}

npy_intp mi_py_rows(PyArrayObject *a)
{
    npy_intp r = 1;
    for (int i = 0; i < PyArray_NDIM(a) - 1; i++) r *= PyArray_DIM(a, i);
    return r;
}

/* What each input dtype accepts: its kinds and the words messages use. */
static const char *kind_words(const mi_arg *a, const char **kinds)
{
    switch (a->dtype) {
    case NPY_INT64: case NPY_INT32: *kinds = "iu"; return "an integer array";
    case NPY_BOOL: *kinds = "b"; return "a boolean array";
    case NPY_UINT16: *kinds = "u"; return "a uint16 array (bfloat16 bit patterns)";
    default:
        if (a->flags & MI_ARG_CAST) { *kinds = "biuf"; return "a bool, integer or float array"; }
        *kinds = "f";
        return "a floating-point array";
    }
}

static int check_ndim(const mi_arg *a, PyArrayObject *arr)
{
    int nd = PyArray_NDIM(arr);
    if (nd >= a->min_ndim && nd <= a->max_ndim) return 0;
    char buf[128];
    if (a->min_ndim == a->max_ndim)
        PyErr_Format(PyExc_ValueError, "%s: expected %d dimensions, got shape %s", a->name,
                     a->min_ndim, mi_py_shape_str(arr, buf));
    else
        PyErr_Format(PyExc_ValueError, "%s: expected %d to %d dimensions, got shape %s", a->name,
                     a->min_ndim, a->max_ndim, mi_py_shape_str(arr, buf));
    return -1;
}

/* Bytes the kernels read as they are: the dtype in this machine's byte order,
 * aligned, C-contiguous. */
static int ready(PyArrayObject *arr, int dtype)
{
    return PyArray_TYPE(arr) == dtype && PyArray_ISNOTSWAPPED(arr) && PyArray_ISALIGNED(arr)
        && PyArray_IS_C_CONTIGUOUS(arr);
}

static int byte_order(const mi_arg *a, PyArrayObject *arr)
{
    if (PyArray_ISNOTSWAPPED(arr)) return 0;
    PyErr_Format(PyExc_TypeError, "%s: expected an array in native byte order, got dtype %S "
                 "(convert it with .astype(%s))", a->name, (PyObject *)PyArray_DESCR(arr),
                 PyArray_DESCR(arr)->typeobj->tp_name);
    return -1;
}

/* An array used as it is (MI_ARG_EXACT: read; MI_ARG_INPLACE: written):
 * checked, never converted. */
static PyArrayObject *as_is(const mi_arg *a, PyObject *obj)
{
    int strided = a->flags & MI_ARG_STRIDED, write = a->flags & MI_ARG_INPLACE;
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s: expected a numpy.ndarray, got %s", a->name, Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *arr = (PyArrayObject *)obj;
    int kind_ok = PyArray_TYPE(arr) == a->dtype && (!write || PyArray_ISWRITEABLE(arr));
    int layout_ok = PyArray_ISALIGNED(arr) && (strided ? PyArray_NDIM(arr) <= 4 : PyArray_IS_C_CONTIGUOUS(arr));
    if (!kind_ok || !layout_ok) {
        PyArray_Descr *want = PyArray_DescrFromType(a->dtype);
        const char *layout = strided ? "" : " C-contiguous";
        char buf[128];
        if (a->who)          /* one message for every way an element of a list can be wrong */
            PyErr_Format(PyExc_TypeError, "%s: %s must be %s%s %S array of at most 4 dims",
                         a->who, a->name, write ? "a writable" : "an aligned", layout, (PyObject *)want);
        else if (!kind_ok && write)   /* a flat buffer (workspace, gradient blob): "contiguous" */
            PyErr_Format(PyExc_TypeError, "%s: expected a writable%s %S array, got %s%S", a->name,
                         strided ? "" : a->max_ndim <= 1 ? " contiguous" : layout, (PyObject *)want, PyArray_ISWRITEABLE(arr) ? "dtype " : "read-only ",
                         (PyObject *)PyArray_DESCR(arr));
        else if (!kind_ok)
            PyErr_Format(PyExc_TypeError, "%s: expected %S, got dtype %S (a%s %S array is read in "
                         "place)", a->name, (PyObject *)want, (PyObject *)PyArray_DESCR(arr),
                         strided ? "n aligned" : layout, (PyObject *)want);
        else
            PyErr_Format(PyExc_ValueError, "%s: the array must be %s (shape %s)", a->name,
                         strided ? "aligned with at most 4 dims" : "C-contiguous and aligned",
                         mi_py_shape_str(arr, buf));
        Py_XDECREF(want);
        return NULL;
    }
    if (byte_order(a, arr) < 0 || check_ndim(a, arr) < 0) return NULL;
    if (strided && PyArray_SIZE(arr) > 0) {
        int nd = PyArray_NDIM(arr), size = (int)PyArray_ITEMSIZE(arr);
        for (int i = 0; i < nd; i++)
            if (PyArray_STRIDE(arr, i) % size) {
                PyErr_Format(PyExc_ValueError, "%s: %s has strides that are not whole elements",
                             a->who ? a->who : a->name, a->name);
                return NULL;
            }
        if (nd && PyArray_DIM(arr, nd - 1) > 1 && PyArray_STRIDE(arr, nd - 1) != size) {
            PyErr_Format(PyExc_ValueError, "%s: the last axis of %s must be contiguous",
                         a->who ? a->who : a->name, a->name);
            return NULL;
        }
    }
    Py_INCREF(arr);
    return arr;
}

/* An input array: used in place when ready, else converted once. */
static PyArrayObject *input(const mi_arg *a, PyObject *obj)
{
    const char *kinds, *words = kind_words(a, &kinds);
    PyArrayObject *arr;
    if (PyArray_Check(obj)) {
        arr = (PyArrayObject *)obj;
        Py_INCREF(arr);
    } else if (!(arr = (PyArrayObject *)PyArray_FromAny(obj, NULL, 0, 0, 0, NULL))) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: expected %s, got %s",
                     a->name, a->dtype == NPY_FLOAT32 ? "a float array" : words, Py_TYPE(obj)->tp_name);
        return NULL;
    }
    if (!strchr(kinds, PyArray_DESCR(arr)->kind)) {
        PyErr_Format(PyExc_TypeError, "%s: expected %s, got dtype %S", a->name, words,
                     (PyObject *)PyArray_DESCR(arr));
        Py_DECREF(arr);
        return NULL;
    }
    /* bit patterns are never converted from another integer width */
    if (a->dtype == NPY_UINT16 && PyArray_DESCR(arr)->type_num != NPY_UINT16) {
        PyErr_Format(PyExc_TypeError, "%s: expected %s, got dtype %S", a->name, words,
                     (PyObject *)PyArray_DESCR(arr));
        Py_DECREF(arr);
        return NULL;
    }
    if (check_ndim(a, arr) < 0) { Py_DECREF(arr); return NULL; }
    if (ready(arr, a->dtype)) return arr;
    /* a '>f4' array from a big-endian file, a float64, a strided view, an
     * int32 token array: converted once, as numpy.ascontiguousarray(x, dtype)
     * would. Floats round to float32; integers must fit (a uint64 id above
     * int64's range gets NumPy's casting error rather than wrapping). */
    int cast = a->dtype == NPY_FLOAT32 ? NPY_ARRAY_FORCECAST : 0;
    PyArrayObject *conv = (PyArrayObject *)PyArray_FromAny(
        (PyObject *)arr, PyArray_DescrFromType(a->dtype), 0, 0,
        NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED | cast, NULL);
    Py_DECREF(arr);
    return conv;
}

int mi_arg_convert(PyObject *obj, mi_arg *a)
{
    a->arr = NULL;
    if (obj == NULL || obj == Py_None) {
        if (obj && (a->flags & MI_ARG_OPTIONAL)) return 0;
        const char *kinds;
        PyErr_Format(PyExc_TypeError, "%s: expected %s, got None", a->name,
                     a->dtype == NPY_FLOAT32 ? "a float array" : kind_words(a, &kinds));
        return -1;
    }
    a->arr = a->flags & (MI_ARG_EXACT | MI_ARG_INPLACE) ? as_is(a, obj) : input(a, obj);
    return a->arr ? 0 : -1;
}

PyArrayObject *mi_arg_borrow(PyObject *obj, mi_arg *a)
{
    assert(a->flags & (MI_ARG_EXACT | MI_ARG_INPLACE));
    if (mi_arg_convert(obj, a) < 0) return NULL;
    Py_DECREF(a->arr);   /* the same object as obj: never a copy */
    return a->arr;
}

int mi_conv_array(PyObject *obj, void *arg)
{
    mi_arg *a = arg;
    if (!obj) {                       /* cleanup after a later argument failed */
        mi_arg_release(a);
        return 1;
    }
    return mi_arg_convert(obj, a) < 0 ? 0 : Py_CLEANUP_SUPPORTED;
}

void mi_arg_release(mi_arg *a) { Py_CLEAR(a->arr); }

int mi_arg_shape(const mi_arg *a, int ndim, const npy_intp *shape, const char *why)
{
    PyArrayObject *arr = a->arr;
    int same = PyArray_NDIM(arr) == ndim;
    for (int i = 0; same && i < ndim; i++) same = shape[i] < 0 || PyArray_DIM(arr, i) == shape[i];
    if (same) return 0;
    char s1[128], s2[128];
    PyErr_Format(PyExc_ValueError, "%s: expected shape %s%s%s, got %s", a->name,
                 mi_py_dims_str(ndim, shape, s1), why ? " " : "", why ? why : "",
                 mi_py_shape_str(arr, s2));
    return -1;
}

int mi_py_qkv_args(PyObject *q_obj, PyObject *k_obj, PyObject *v_obj, mi_arg qkv[3],
                   mi_attn_layout *L, const float *data[3])
{
    char b1[128];
    int fused = (!k_obj || k_obj == Py_None) && (!v_obj || v_obj == Py_None);
    qkv[0] = MI_ARG_FLOAT("q", 4 + fused, 4 + fused);
    qkv[1] = MI_ARG_FLOAT("k", 4, 4);
    qkv[2] = MI_ARG_FLOAT("v", 4, 4);
    if (fused) {
        if (mi_arg_convert(q_obj, &qkv[0]) < 0) {
            if (PyErr_ExceptionMatches(PyExc_ValueError)) {
                PyErr_Clear();
                PyErr_SetString(PyExc_ValueError, "q: with k and v None, q must be the fused "
                                "qkv [batch, pos, 3, head, d_head]");
            }
            return -1;
        }
        PyArrayObject *q = qkv[0].arr;
        if (PyArray_DIM(q, 2) != 3) {
            PyErr_Format(PyExc_ValueError, "q: fused qkv must be [batch, pos, 3, head, d_head], "
                         "got %s", mi_py_shape_str(q, b1));
            return -1;
        }
        const npy_intp B = PyArray_DIM(q, 0), T = PyArray_DIM(q, 1), H = PyArray_DIM(q, 3),
                       Dh = PyArray_DIM(q, 4);
        *L = mi_attn_self_layout(B, T, H, Dh, 3 * H * Dh, T * 3 * H * Dh);
        data[0] = PyArray_DATA(q);
        data[1] = data[0] + H * Dh;
        data[2] = data[1] + H * Dh;
    } else {
        if (!k_obj || k_obj == Py_None || !v_obj || v_obj == Py_None) {
            PyErr_SetString(PyExc_TypeError, "k, v: give both (with q [batch, pos, head, d_head])"
                            " or neither (q is the fused qkv)");
            return -1;
        }
        PyObject *objs[3] = {q_obj, k_obj, v_obj};
        for (int i = 0; i < 3; i++) {
            if (mi_arg_convert(objs[i], &qkv[i]) < 0) return -1;
            if (i && mi_arg_shape(&qkv[i], 4, PyArray_DIMS(qkv[0].arr), NULL) < 0) return -1;
            data[i] = PyArray_DATA(qkv[i].arr);
        }
        PyArrayObject *q = qkv[0].arr;
        const npy_intp B = PyArray_DIM(q, 0), T = PyArray_DIM(q, 1), H = PyArray_DIM(q, 2),
                       Dh = PyArray_DIM(q, 3);
        *L = mi_attn_self_layout(B, T, H, Dh, H * Dh, T * H * Dh);
    }
    return 0;
}

int mi_py_scale_arg(PyObject *obj, int64_t d_head, double *scale)
{
    if (!obj || obj == Py_None) {
        *scale = 1.0 / sqrt((double)(d_head > 0 ? d_head : 1));
        return 0;
    }
    *scale = PyFloat_AsDouble(obj);
    return *scale == -1.0 && PyErr_Occurred() ? -1 : 0;
}

int mi_py_local_layers(PyObject *obj, uint64_t *bits, int max_layers)
{
    memset(bits, 0, sizeof(uint64_t) * (size_t)(max_layers / 64));
    if (!obj || obj == Py_None) return 0;
    PyObject *seq = PySequence_Fast(obj, "local_layers: expected a sequence of layer indices");
    if (!seq) return -1;
    int rc = 0;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq) && rc == 0; i++) {
        long long l = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(seq, i));
        if (l == -1 && PyErr_Occurred()) rc = -1;
        else if (l < 0 || l >= max_layers) {
            PyErr_Format(PyExc_ValueError, "local_layers: layer %lld is outside [0, %d)", l, max_layers);
            rc = -1;
        } else {
            bits[l / 64] |= (uint64_t)1 << (l % 64);
        }
    }
    Py_DECREF(seq);
    return rc;
}

PyObject *mi_py_text_arg(PyObject *obj, const char *name)
{
    if (PyUnicode_Check(obj)) return PyUnicode_AsUTF8String(obj);
    if (PyBytes_Check(obj)) return Py_NewRef(obj);
    return PyErr_Format(PyExc_TypeError, "%s: expected str or bytes, got %s", name, Py_TYPE(obj)->tp_name);
}

int mi_py_ids_arg(PyObject *obj, const char *who, int32_t **data, size_t *n)
{
    char msg[96];
    snprintf(msg, sizeof msg, "%s: ids must be a sequence of integers", who);
    PyObject *seq = PySequence_Fast(obj, msg);
    if (!seq) return -1;
    Py_ssize_t len = PySequence_Fast_GET_SIZE(seq);
    int32_t *ids = PyMem_Malloc(((size_t)len + 1) * sizeof(int32_t));
    if (!ids) { Py_DECREF(seq); PyErr_NoMemory(); return -1; }
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < len; i++) {
        long long v;
        int overflow = 0;
        if (PyLong_CheckExact(items[i])) {          /* the common case: no Index round trip */
            v = PyLong_AsLongLongAndOverflow(items[i], &overflow);
        } else {
            PyObject *x = PyNumber_Index(items[i]);
            if (!x) {
                PyErr_Format(PyExc_TypeError, "%s: ids[%zd] is not an integer", who, i);
                goto fail;
            }
            v = PyLong_AsLongLongAndOverflow(x, &overflow);
            Py_DECREF(x);
        }
        if (overflow) v = INT64_MIN;
        if (v < INT32_MIN || v > INT32_MAX) {
            PyErr_Format(PyExc_IndexError, "%s: token id %lld (position %zd) is not in the vocabulary",
                         who, v, i);
            goto fail;
        }
        ids[i] = (int32_t)v;
    }
    Py_DECREF(seq);
    *data = ids;
    *n = (size_t)len;
    return 0;
fail:
    Py_DECREF(seq);
    PyMem_Free(ids);
    return -1;
}
