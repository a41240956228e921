/* ops.c - mechinterp_c.ops: Python wrappers of the kernels.
 *
 * Each wrapper checks its arguments (naming argument and shape on error),
 * takes float32 C-contiguous input in place (other float input is converted
 * once), allocates its result as a Buffer-owned array and runs the kernel
 * with the GIL released. */
#include "python/bridge.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "kernels/activation.h"
#include "kernels/fma_probe.h"
#include "kernels/attention.h"
#include "kernels/cross_entropy.h"
#include "kernels/embedding.h"
#include "kernels/gemm.h"
#include "kernels/norm.h"
#include "kernels/softmax.h"

/* Output array for `shape`: `out` if given (checked: float32, C-contiguous,
 * that shape; a new reference), else a new Buffer-backed array. */
static PyObject *output_array(PyObject *m, PyObject *out, int ndim, const npy_intp *shape,
                              float **data)
{
    if (!out || out == Py_None) return mi_py_empty(m, ndim, shape, data);
    if (!PyArray_Check(out) || PyArray_TYPE((PyArrayObject *)out) != NPY_FLOAT32
        || !PyArray_IS_C_CONTIGUOUS((PyArrayObject *)out)
        || !PyArray_ISWRITEABLE((PyArrayObject *)out))
        return PyErr_Format(PyExc_TypeError, "out: expected a writable C-contiguous float32 array");
    PyArrayObject *o = (PyArrayObject *)out;
    if (mi_py_native_order(o, "out") < 0) return NULL;
    int same = PyArray_NDIM(o) == ndim;
    for (int i = 0; same && i < ndim; i++) same = PyArray_DIM(o, i) == shape[i];
    if (!same) {
        char buf[128];
        return PyErr_Format(PyExc_ValueError, "out: has shape %s, the result needs %d dims "
                            "ending in %ld", mi_py_shape_str(o, buf), ndim, (long)shape[ndim - 1]);
    }
    *data = (float *)PyArray_DATA(o);
    Py_INCREF(out);
    return out;
}

static npy_intp rows_of(PyArrayObject *a)   /* product of all but the last dim */
{
    npy_intp r = 1;
    for (int i = 0; i < PyArray_NDIM(a) - 1; i++) r *= PyArray_DIM(a, i);
    return r;
}

PyDoc_STRVAR(matmul_doc,
"matmul(a, b, bias=None, trans_b=False, out=None)\n--\n\n"
"a @ b (+ bias) in float32.\n\n"
"a is [..., M, K]. b is [K, N] (or [N, K] with trans_b=True, as a Linear weight),\n"
"applied to every row of a; or b has a's leading batch dims, [..., K, N],\n"
"for a batched product. bias is [N]. out, if given, receives the result.\n"
"Matches numpy.matmul up to float32 rounding; bitwise identical for any\n"
"thread count.");

static PyObject *py_matmul(PyObject *m, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"a", "b", "bias", "trans_b", "out", NULL};
    PyObject *a_obj, *b_obj, *bias_obj = Py_None, *out_obj = Py_None;
    int trans_b = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|OpO:matmul", kwlist, &a_obj, &b_obj,
                                     &bias_obj, &trans_b, &out_obj))
        return NULL;
    PyArrayObject *a = NULL, *b = NULL, *bias = NULL;
    PyObject *res = NULL;
    char s1[128], s2[128];
    if (!(a = mi_py_float_arg(a_obj, "a", 1, 32))) goto done;
    if (!(b = mi_py_float_arg(b_obj, "b", 2, 32))) goto done;
    int nda = PyArray_NDIM(a), ndb = PyArray_NDIM(b);
    npy_intp K = PyArray_DIM(a, nda - 1);
    npy_intp bk = trans_b ? PyArray_DIM(b, ndb - 1) : PyArray_DIM(b, ndb - 2);
    npy_intp N = trans_b ? PyArray_DIM(b, ndb - 2) : PyArray_DIM(b, ndb - 1);
    if (bk != K) {
        PyErr_Format(PyExc_ValueError, "matmul: a has shape %s and b%s has shape %s: "
                     "inner dimensions %ld and %ld differ", mi_py_shape_str(a, s1),
                     trans_b ? " (trans_b)" : "", mi_py_shape_str(b, s2), (long)K, (long)bk);
        goto done;
    }
    int64_t batch = 1, M;
    if (ndb == 2) {
        M = rows_of(a);
    } else {
        if (nda != ndb) {
            PyErr_Format(PyExc_ValueError, "matmul: batched b of shape %s needs a with the same "
                         "batch dims, got a of shape %s", mi_py_shape_str(b, s2),
                         mi_py_shape_str(a, s1));
            goto done;
        }
        for (int i = 0; i < nda - 2; i++) {
            if (PyArray_DIM(a, i) != PyArray_DIM(b, i)) {
                PyErr_Format(PyExc_ValueError, "matmul: batch dims differ: a %s, b %s",
                             mi_py_shape_str(a, s1), mi_py_shape_str(b, s2));
                goto done;
            }
            batch *= PyArray_DIM(a, i);
        }
        M = PyArray_DIM(a, nda - 2);
    }
    const float *bias_data = NULL;
    if (bias_obj != Py_None) {
        if (!(bias = mi_py_float_arg(bias_obj, "bias", 1, 1))) goto done;
        if (PyArray_DIM(bias, 0) != N) {
            PyErr_Format(PyExc_ValueError, "bias: expected shape (%ld,), got %s", (long)N,
                         mi_py_shape_str(bias, s1));
            goto done;
        }
        bias_data = PyArray_DATA(bias);
    }
    npy_intp shape[32];
    memcpy(shape, PyArray_DIMS(a), sizeof(npy_intp) * nda);
    shape[nda - 1] = N;
    float *c;
    if (!(res = output_array(m, out_obj, nda, shape, &c))) goto done;
    const float *A = PyArray_DATA(a), *B = PyArray_DATA(b);
    Py_BEGIN_ALLOW_THREADS
    if (ndb == 2)
        mi_sgemm(0, trans_b, M, N, K, A, K, B, trans_b ? K : N, bias_data, 0.0f, c, N);
    else
        mi_sgemm_strided_batched(0, trans_b, batch, M, N, K, A, K, M * K, B, trans_b ? K : N,
                                 K * N, bias_data, 0.0f, c, N, M * N);
    Py_END_ALLOW_THREADS
done:
    Py_XDECREF(a);
    Py_XDECREF(b);
    Py_XDECREF(bias);
    return res;
}

/* Optional [d] parameter of a norm; NULL data when None. */
static int norm_param(PyObject *obj, const char *name, npy_intp d, PyArrayObject **arr)
{
    *arr = NULL;
    if (obj == Py_None) return 0;
    if (!(*arr = mi_py_float_arg(obj, name, 1, 1))) return -1;
    if (PyArray_DIM(*arr, 0) != d) {
        char buf[128];
        PyErr_Format(PyExc_ValueError, "%s: expected shape (%ld,) to match x's last dim, got %s",
                     name, (long)d, mi_py_shape_str(*arr, buf));
        Py_CLEAR(*arr);
        return -1;
    }
    return 0;
}

/* layer_norm / rms_norm share argument handling; b_obj NULL for rms. */
static PyObject *norm_common(PyObject *m, PyObject *x_obj, PyObject *w_obj, PyObject *b_obj,
                             double eps, int return_scale, int rms)
{
    PyArrayObject *x = NULL, *w = NULL, *b = NULL;
    PyObject *y = NULL, *scale = NULL, *res = NULL;
    if (!(x = mi_py_float_arg(x_obj, "x", 1, 32))) goto done;
    npy_intp d = PyArray_DIM(x, PyArray_NDIM(x) - 1), rows = rows_of(x);
    if (norm_param(w_obj, "w", d, &w) < 0) goto done;
    if (b_obj && norm_param(b_obj, "b", d, &b) < 0) goto done;
    float *yd, *sd = NULL;
    if (!(y = mi_py_empty(m, PyArray_NDIM(x), PyArray_DIMS(x), &yd))) goto done;
    if (return_scale) {
        npy_intp sshape[32];
        memcpy(sshape, PyArray_DIMS(x), sizeof(npy_intp) * PyArray_NDIM(x));
        sshape[PyArray_NDIM(x) - 1] = 1;
        if (!(scale = mi_py_empty(m, PyArray_NDIM(x), sshape, &sd))) goto done;
    }
    const float *xd = PyArray_DATA(x);
    const float *wd = w ? PyArray_DATA(w) : NULL, *bd = b ? PyArray_DATA(b) : NULL;
    Py_BEGIN_ALLOW_THREADS
    if (rms) mi_rms_norm(xd, wd, (float)eps, rows, d, yd, sd);
    else mi_layer_norm(xd, wd, bd, (float)eps, rows, d, yd, sd);
    Py_END_ALLOW_THREADS
    if (return_scale) res = PyTuple_Pack(2, y, scale);
    else { res = y; Py_INCREF(y); }
done:
    Py_XDECREF(x); Py_XDECREF(w); Py_XDECREF(b); Py_XDECREF(y); Py_XDECREF(scale);
    return res;
}

PyDoc_STRVAR(layer_norm_doc,
"layer_norm(x, w=None, b=None, eps=1e-5, return_scale=False)\n--\n\n"
"LayerNorm over the last axis, as TransformerLens computes it:\n"
"(x - mean) / sqrt(var + eps) * w + b (no affine when w and b are None: LNPre).\n"
"With return_scale=True returns (y, scale) where scale = sqrt(var + eps) has\n"
"x's shape with last dim 1 (TransformerLens's hook_scale).");

static PyObject *py_layer_norm(PyObject *m, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"x", "w", "b", "eps", "return_scale", NULL};
    PyObject *x, *w = Py_None, *b = Py_None;
    double eps = 1e-5;
    int return_scale = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|OOdp:layer_norm", kwlist, &x, &w, &b, &eps,
                                     &return_scale))
        return NULL;
    return norm_common(m, x, w, b, eps, return_scale, 0);
}

PyDoc_STRVAR(rms_norm_doc,
"rms_norm(x, w=None, eps=1e-6, return_scale=False)\n--\n\n"
"RMSNorm over the last axis: x / sqrt(mean(x^2) + eps) * w (no weight when w\n"
"is None: RMSPre). return_scale as in layer_norm.");

static PyObject *py_rms_norm(PyObject *m, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"x", "w", "eps", "return_scale", NULL};
    PyObject *x, *w = Py_None;
    double eps = 1e-6;
    int return_scale = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|Odp:rms_norm", kwlist, &x, &w, &eps,
                                     &return_scale))
        return NULL;
    return norm_common(m, x, w, NULL, eps, return_scale, 1);
}

static PyObject *elementwise(PyObject *m, PyObject *x_obj, mi_activation act)
{
    PyArrayObject *x = mi_py_float_arg(x_obj, "x", 0, 32);
    if (!x) return NULL;
    float *yd;
    PyObject *y = mi_py_empty(m, PyArray_NDIM(x), PyArray_DIMS(x), &yd);
    if (y) {
        const float *xd = PyArray_DATA(x);
        npy_intp n = PyArray_SIZE(x);
        Py_BEGIN_ALLOW_THREADS
        mi_activate(act, xd, yd, n);
        Py_END_ALLOW_THREADS
    }
    Py_DECREF(x);
    return y;
}

PyDoc_STRVAR(gelu_doc,
"gelu(x, approximate='none')\n--\n\n"
"GELU as torch.nn.functional.gelu: exact erf form, or the tanh form with\n"
"approximate='tanh' (TransformerLens/Hugging Face 'gelu_new').");

static PyObject *py_gelu(PyObject *m, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"x", "approximate", NULL};
    PyObject *x;
    const char *approx = "none";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|s:gelu", kwlist, &x, &approx)) return NULL;
    if (strcmp(approx, "none") && strcmp(approx, "tanh"))
        return PyErr_Format(PyExc_ValueError,
                            "gelu: approximate must be 'none' or 'tanh', got '%s'", approx);
    return elementwise(m, x, strcmp(approx, "tanh") ? MI_ACT_GELU : MI_ACT_GELU_TANH);
}

static PyObject *py_relu(PyObject *m, PyObject *x) { return elementwise(m, x, MI_ACT_RELU); }
static PyObject *py_silu(PyObject *m, PyObject *x) { return elementwise(m, x, MI_ACT_SILU); }

/* ---- test-only entry points (underscore names; not part of the API) ---- */

/* Elements a row-major [rows, cols] matrix with leading dimension ld spans. */
static int64_t span(int64_t rows, int64_t cols, int64_t ld)
{
    return rows == 0 || cols == 0 ? 0 : (rows - 1) * ld + cols;
}

/* Check that flat array `arr` (name) holds `batch` matrices of rows x cols with
 * leading dim ld >= cols and element stride `stride` between them. */
static int check_operand(PyArrayObject *arr, const char *name, int64_t batch, int64_t rows,
                         int64_t cols, int64_t ld, int64_t stride)
{
    if (ld < cols || ld < 1)
        return PyErr_Format(PyExc_ValueError, "%s: leading dimension %lld is smaller than the "
                            "row width %lld", name, (long long)ld, (long long)cols), -1;
    if (stride < 0)
        return PyErr_Format(PyExc_ValueError, "%s: negative batch stride %lld", name,
                            (long long)stride), -1;
    int64_t one = span(rows, cols, ld);
    int64_t need = one == 0 ? 0 : (batch - 1) * stride + one;
    if (need > (int64_t)PyArray_SIZE(arr))
        return PyErr_Format(PyExc_ValueError, "%s: needs %lld elements for %lld x [%lld, %lld] "
                            "(ld %lld, stride %lld), has %lld", name, (long long)need,
                            (long long)batch, (long long)rows, (long long)cols, (long long)ld,
                            (long long)stride, (long long)PyArray_SIZE(arr)), -1;
    return 0;
}

PyDoc_STRVAR(sgemm_doc,
"_sgemm(a, b, c, M, N, K, lda, ldb, ldc, trans_a=False, trans_b=False, bias=None,\n"
"       beta=0.0, batch=1, stride_a=0, stride_b=0, stride_c=0, ref=False)\n--\n\n"
"Test entry: the raw mi_sgemm contract on flat float32 buffers. c (writable,\n"
"C-contiguous float32) is updated in place: C = beta*C + op(A) @ op(B) + bias.\n"
"batch > 1 runs mi_sgemm_strided_batched; ref=True runs mi_sgemm_ref.\n"
"Buffer sizes are checked against the shapes, leading dims and strides.");

static PyObject *py_sgemm(PyObject *m, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"a", "b", "c", "M", "N", "K", "lda", "ldb", "ldc", "trans_a",
                             "trans_b", "bias", "beta", "batch", "stride_a", "stride_b",
                             "stride_c", "ref", NULL};
    PyObject *a_obj, *b_obj, *c_obj, *bias_obj = Py_None;
    long long M, N, K, lda, ldb, ldc, batch = 1, sa = 0, sb = 0, sc = 0;
    int trans_a = 0, trans_b = 0, ref = 0;
    double beta = 0.0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOLLLLLL|ppOdLLLLp:_sgemm", kwlist, &a_obj,
                                     &b_obj, &c_obj, &M, &N, &K, &lda, &ldb, &ldc, &trans_a,
                                     &trans_b, &bias_obj, &beta, &batch, &sa, &sb, &sc, &ref))
        return NULL;
    if (M < 0 || N < 0 || K < 0 || batch < 1)
        return PyErr_Format(PyExc_ValueError, "_sgemm: M, N, K must be >= 0 and batch >= 1");
    if (beta != 0.0 && beta != 1.0)
        return PyErr_Format(PyExc_ValueError, "_sgemm: beta must be 0 or 1, got %g", beta);
    if (!PyArray_Check(c_obj) || PyArray_TYPE((PyArrayObject *)c_obj) != NPY_FLOAT32
        || !PyArray_IS_C_CONTIGUOUS((PyArrayObject *)c_obj)
        || !PyArray_ISWRITEABLE((PyArrayObject *)c_obj))
        return PyErr_Format(PyExc_TypeError, "c: expected a writable C-contiguous float32 array");
    if (mi_py_native_order((PyArrayObject *)c_obj, "c") < 0) return NULL;
    PyArrayObject *a = NULL, *b = NULL, *bias = NULL, *c = (PyArrayObject *)c_obj;
    PyObject *res = NULL;
    if (!(a = mi_py_float_arg(a_obj, "a", 0, 32))) goto done;
    if (!(b = mi_py_float_arg(b_obj, "b", 0, 32))) goto done;
    if (check_operand(a, "a", batch, trans_a ? K : M, trans_a ? M : K, lda, sa) < 0) goto done;
    if (check_operand(b, "b", batch, trans_b ? N : K, trans_b ? K : N, ldb, sb) < 0) goto done;
    if (check_operand(c, "c", batch, M, N, ldc, sc) < 0) goto done;
    const float *bias_data = NULL;
    if (bias_obj != Py_None) {
        if (!(bias = mi_py_float_arg(bias_obj, "bias", 1, 1))) goto done;
        if (PyArray_DIM(bias, 0) < N) {
            PyErr_Format(PyExc_ValueError, "bias: needs %lld elements, has %ld", N,
                         (long)PyArray_DIM(bias, 0));
            goto done;
        }
        bias_data = PyArray_DATA(bias);
    }
    const float *A = PyArray_DATA(a), *B = PyArray_DATA(b);
    float *C = PyArray_DATA(c);
    Py_BEGIN_ALLOW_THREADS
    if (ref) {
        for (long long i = 0; i < batch; i++)
            mi_sgemm_ref(trans_a, trans_b, M, N, K, A + i * sa, lda, B + i * sb, ldb, bias_data,
                         (float)beta, C + i * sc, ldc);
    } else if (batch > 1) {
        mi_sgemm_strided_batched(trans_a, trans_b, batch, M, N, K, A, lda, sa, B, ldb, sb,
                                 bias_data, (float)beta, C, ldc, sc);
    } else {
        mi_sgemm(trans_a, trans_b, M, N, K, A, lda, B, ldb, bias_data, (float)beta, C, ldc);
    }
    Py_END_ALLOW_THREADS
    res = Py_None;
    Py_INCREF(res);
done:
    Py_XDECREF(a);
    Py_XDECREF(b);
    Py_XDECREF(bias);
    return res;
}

static PyObject *py_fma_peak(PyObject *m, PyObject *unused)
{
    double g;
    Py_BEGIN_ALLOW_THREADS
    g = mi_fma_peak_gflops();
    Py_END_ALLOW_THREADS
    return PyFloat_FromDouble(g);
}

/* ---- softmax, attention and the training kernels (kernels helper) ---------------- */

#define KW_METHOD(name) \
    {#name, (PyCFunction)(void (*)(void))py_##name, METH_VARARGS | METH_KEYWORDS, name##_doc}

/* Does `a` have exactly `shape`? */
static int has_shape(PyArrayObject *a, int ndim, const npy_intp *shape)
{
    if (PyArray_NDIM(a) != ndim) return 0;
    for (int i = 0; i < ndim; i++)
        if (PyArray_DIM(a, i) != shape[i]) return 0;
    return 1;
}

/* "(2, 3)" for a shape not (yet) held by an array; buf holds 128 bytes. */
static const char *dims_str(int ndim, const npy_intp *shape, char *buf)
{
    int n = snprintf(buf, 128, "(");
    for (int i = 0; i < ndim && n < 100; i++)
        n += snprintf(buf + n, 128 - n, i ? ", %ld" : "%ld", (long)shape[i]);
    snprintf(buf + n, 128 - n, ndim == 1 ? ",)" : ")");
    return buf;
}

/* A float argument that must have exactly `shape`. */
static PyArrayObject *float_arg_shaped(PyObject *obj, const char *name, int ndim,
                                       const npy_intp *shape)
{
    PyArrayObject *a = mi_py_float_arg(obj, name, ndim, ndim);
    if (a && !has_shape(a, ndim, shape)) {
        char s1[128], s2[128];
        PyErr_Format(PyExc_ValueError, "%s: expected shape %s, got %s", name,
                     dims_str(ndim, shape, s1), mi_py_shape_str(a, s2));
        Py_CLEAR(a);
    }
    return a;
}

/* A gradient buffer to accumulate into: None -> a new zero-filled array of
 * `shape`; else a writable C-contiguous float32 array of exactly that shape,
 * used in place (a new reference). */
static PyObject *grad_arg(PyObject *m, PyObject *obj, const char *name, int ndim,
                          const npy_intp *shape, float **data)
{
    char s1[128], s2[128];
    if (!obj || obj == Py_None) {
        PyObject *a = mi_py_empty(m, ndim, shape, data);
        if (a) memset(*data, 0, PyArray_NBYTES((PyArrayObject *)a));
        return a;
    }
    if (!PyArray_Check(obj) || PyArray_TYPE((PyArrayObject *)obj) != NPY_FLOAT32
        || !PyArray_IS_C_CONTIGUOUS((PyArrayObject *)obj)
        || !PyArray_ISWRITEABLE((PyArrayObject *)obj))
        return PyErr_Format(PyExc_TypeError, "%s: expected a writable C-contiguous float32 "
                            "array to accumulate into", name);
    if (mi_py_native_order((PyArrayObject *)obj, name) < 0) return NULL;
    if (!has_shape((PyArrayObject *)obj, ndim, shape))
        return PyErr_Format(PyExc_ValueError, "%s: expected shape %s, got %s", name,
                            dims_str(ndim, shape, s1), mi_py_shape_str((PyArrayObject *)obj, s2));
    *data = PyArray_DATA((PyArrayObject *)obj);
    Py_INCREF(obj);
    return obj;
}

/* An integer array argument as C-contiguous int64 (converted once). */
static PyArrayObject *int64_arg(PyObject *obj, const char *name)
{
    PyArrayObject *a = (PyArrayObject *)PyArray_FromAny(obj, NULL, 0, 0, 0, NULL);
    if (!a) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: expected an integer array, got %s", name,
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    char kind = PyArray_DESCR(a)->kind;
    if (kind != 'i' && kind != 'u') {
        PyErr_Format(PyExc_TypeError, "%s: expected an integer array, got dtype %S", name,
                     (PyObject *)PyArray_DESCR(a));
        Py_DECREF(a);
        return NULL;
    }
    PyArrayObject *c = (PyArrayObject *)PyArray_FROM_OTF((PyObject *)a, NPY_INT64,
                                                         NPY_ARRAY_IN_ARRAY);
    Py_DECREF(a);
    return c;   /* NULL on overflow (uint64 > int64 max) with numpy's error set */
}

/* The number of elements of `a` as a per-row scale: [..., 1] or [rows]. */
static PyArrayObject *scale_arg(PyObject *obj, npy_intp rows)
{
    PyArrayObject *s = mi_py_float_arg(obj, "scale", 1, 32);
    if (s && PyArray_SIZE(s) != rows) {
        char b[128];
        PyErr_Format(PyExc_ValueError, "scale: expected %ld elements (one per row of x), got "
                     "shape %s", (long)rows, mi_py_shape_str(s, b));
        Py_CLEAR(s);
    }
    return s;
}

PyDoc_STRVAR(softmax_doc,
"softmax(x, mask=None)\n--\n\n"
"Softmax over the last axis of x in float32. mask, if given, is a boolean\n"
"array of x's shape; False entries are masked (treated as -inf). A row with\n"
"every entry masked (or -inf) gives zeros; a NaN in a row gives a NaN row.\n"
"(mechinterp_c.ops.softmax adds axis= and mask broadcasting.)");

static PyObject *py_softmax(PyObject *m, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"x", "mask", NULL};
    PyObject *x_obj, *mask_obj = Py_None, *y = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|O:softmax", kwlist, &x_obj, &mask_obj))
        return NULL;
    PyArrayObject *x = NULL, *mask = NULL;
    char s1[128], s2[128];
    if (!(x = mi_py_float_arg(x_obj, "x", 1, 32))) goto done;
    if (mask_obj != Py_None) {
        if (!PyArray_Check(mask_obj) || PyArray_TYPE((PyArrayObject *)mask_obj) != NPY_BOOL) {
            PyErr_Format(PyExc_TypeError, "mask: expected a boolean array, got %s",
                         PyArray_Check(mask_obj) ? "another dtype" : Py_TYPE(mask_obj)->tp_name);
            goto done;
        }
        if (!has_shape((PyArrayObject *)mask_obj, PyArray_NDIM(x), PyArray_DIMS(x))) {
            PyErr_Format(PyExc_ValueError, "mask: has shape %s, expected x's shape %s",
                         mi_py_shape_str((PyArrayObject *)mask_obj, s1), mi_py_shape_str(x, s2));
            goto done;
        }
        mask = (PyArrayObject *)PyArray_FROM_OTF(mask_obj, NPY_BOOL, NPY_ARRAY_IN_ARRAY);
        if (!mask) goto done;
    }
    float *yd;
    if (!(y = mi_py_empty(m, PyArray_NDIM(x), PyArray_DIMS(x), &yd))) goto done;
    {
        const float *xd = PyArray_DATA(x);
        const unsigned char *md = mask ? PyArray_DATA(mask) : NULL;
        npy_intp cols = PyArray_DIM(x, PyArray_NDIM(x) - 1), rows = rows_of(x);
        Py_BEGIN_ALLOW_THREADS
        mi_softmax_rows_masked(xd, md, yd, rows, cols);
        Py_END_ALLOW_THREADS
    }
done:
    Py_XDECREF(x);
    Py_XDECREF(mask);
    return y;
}

/* q, k, v [B,T,H,Dh] (all the same shape) as float32 arrays, or (k and v
 * None) q the fused qkv [B,T,3,H,Dh] (Hugging Face's c_attn output viewed
 * 5-D), read in place through the layout. Fills *L and the data pointers. */
static int qkv_args(PyObject *q_obj, PyObject *k_obj, PyObject *v_obj, PyArrayObject **q,
                    PyArrayObject **k, PyArrayObject **v, mi_attn_layout *L,
                    const float **qd, const float **kd, const float **vd)
{
    char b1[128];
    int fused = (!k_obj || k_obj == Py_None) && (!v_obj || v_obj == Py_None);
    if (fused) {
        if (!(*q = mi_py_float_arg(q_obj, "q", 5, 5))) {
            if (PyErr_ExceptionMatches(PyExc_ValueError)) {
                PyErr_Clear();
                PyErr_SetString(PyExc_ValueError, "q: with k and v None, q must be the fused "
                                "qkv [batch, pos, 3, head, d_head]");
            }
            return -1;
        }
        if (PyArray_DIM(*q, 2) != 3) {
            PyErr_Format(PyExc_ValueError, "q: fused qkv must be [batch, pos, 3, head, d_head], "
                         "got %s", mi_py_shape_str(*q, b1));
            return -1;
        }
        npy_intp B = PyArray_DIM(*q, 0), T = PyArray_DIM(*q, 1), H = PyArray_DIM(*q, 3),
                 Dh = PyArray_DIM(*q, 4);
        *L = mi_attn_self_layout(B, T, H, Dh, 3 * H * Dh, T * 3 * H * Dh);
        *qd = PyArray_DATA(*q);
        *kd = *qd + H * Dh;
        *vd = *kd + H * Dh;
    } else {
        if (!k_obj || k_obj == Py_None || !v_obj || v_obj == Py_None) {
            PyErr_SetString(PyExc_TypeError, "k, v: give both (with q [batch, pos, head, d_head])"
                            " or neither (q is the fused qkv)");
            return -1;
        }
        if (!(*q = mi_py_float_arg(q_obj, "q", 4, 4))) return -1;
        if (!(*k = float_arg_shaped(k_obj, "k", 4, PyArray_DIMS(*q)))) return -1;
        if (!(*v = float_arg_shaped(v_obj, "v", 4, PyArray_DIMS(*q)))) return -1;
        npy_intp B = PyArray_DIM(*q, 0), T = PyArray_DIM(*q, 1), H = PyArray_DIM(*q, 2),
                 Dh = PyArray_DIM(*q, 3);
        *L = mi_attn_self_layout(B, T, H, Dh, H * Dh, T * H * Dh);
        *qd = PyArray_DATA(*q);
        *kd = PyArray_DATA(*k);
        *vd = PyArray_DATA(*v);
    }
    return 0;
}

PyDoc_STRVAR(attention_doc,
"attention(q, k=None, v=None, causal=True, padding_mask=None, return_pattern=False, scale=None)\n"
"--\n\n"
"Multi-head attention: softmax(scale * q k^T, masked) v per head.\n\n"
"q, k, v are [batch, pos, head, d_head] (TransformerLens hook_q/k/v); or k and\n"
"v are None and q is the fused qkv [batch, pos, 3, head, d_head] (Hugging\n"
"Face's c_attn output reshaped), read in place without copies. causal\n"
"masks keys after the query; padding_mask [batch, pos] (1 keep, 0 pad) masks\n"
"padded keys. scale defaults to 1/sqrt(d_head). Returns z [batch, pos, head,\n"
"d_head], or (z, pattern) with pattern [batch, head, query, key] when\n"
"return_pattern=True. Queries whose keys are all masked get a zero pattern row.");

static PyObject *py_attention(PyObject *m, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"q", "k", "v", "causal", "padding_mask", "return_pattern", "scale",
                             NULL};
    PyObject *q_obj, *k_obj = Py_None, *v_obj = Py_None, *pm_obj = Py_None, *scale_obj = Py_None;
    int causal = 1, return_pattern = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|OOpOpO:attention", kwlist, &q_obj, &k_obj,
                                     &v_obj, &causal, &pm_obj, &return_pattern, &scale_obj))
        return NULL;
    PyArrayObject *q = NULL, *k = NULL, *v = NULL, *pm = NULL;
    PyObject *z = NULL, *pattern = NULL, *res = NULL;
    mi_attn_layout L;
    char s1[128], s2[128], s3[128];
    const float *qd, *kd, *vd;
    if (qkv_args(q_obj, k_obj, v_obj, &q, &k, &v, &L, &qd, &kd, &vd) < 0) goto done;
    double scale = 1.0 / sqrt((double)(L.d_head > 0 ? L.d_head : 1));
    if (scale_obj != Py_None) {
        scale = PyFloat_AsDouble(scale_obj);
        if (scale == -1.0 && PyErr_Occurred()) goto done;
    }
    if (pm_obj != Py_None) {
        pm = (PyArrayObject *)PyArray_FromAny(pm_obj, NULL, 0, 0, 0, NULL);
        if (!pm) goto done;
        char kind = PyArray_DESCR(pm)->kind;
        if (kind != 'b' && kind != 'i' && kind != 'u' && kind != 'f') {
            PyErr_Format(PyExc_TypeError, "padding_mask: expected a bool, integer or float "
                         "array, got dtype %S", (PyObject *)PyArray_DESCR(pm));
            goto done;
        }
        npy_intp want[2] = {L.batch, L.k_len};
        if (!has_shape(pm, 2, want)) {
            PyErr_Format(PyExc_ValueError, "padding_mask: expected shape %s ([batch, pos] of q "
                         "%s), got %s", dims_str(2, want, s1), mi_py_shape_str(q, s2),
                         mi_py_shape_str(pm, s3));
            goto done;
        }
        PyArrayObject *f = (PyArrayObject *)PyArray_FROM_OTF((PyObject *)pm, NPY_FLOAT32,
                                                             NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
        Py_DECREF(pm);
        if (!(pm = f)) goto done;
    }
    npy_intp pshape[4] = {L.batch, L.n_heads, L.q_len, L.k_len};
    npy_intp zshape[4] = {L.batch, L.q_len, L.n_heads, L.d_head};
    float *zd, *pd;
    if (!(z = mi_py_empty(m, 4, zshape, &zd))) goto done;
    if (!(pattern = mi_py_empty(m, 4, pshape, &pd))) goto done;
    {
        const float *md = pm ? PyArray_DATA(pm) : NULL;
        int64_t rows = L.batch * L.n_heads * L.q_len;
        mi_status st;
        Py_BEGIN_ALLOW_THREADS
        st = mi_attn_scores(&L, qd, kd, (float)scale, causal, md, pd);
        if (st == MI_OK) {
            mi_softmax_rows(pd, pd, rows, L.k_len);
            st = mi_attn_apply(&L, pd, vd, zd);
        }
        Py_END_ALLOW_THREADS
        if (st != MI_OK) { mi_py_raise(st); goto done; }
    }
    if (return_pattern) res = PyTuple_Pack(2, z, pattern);
    else { res = z; Py_INCREF(z); }
done:
    Py_XDECREF(q); Py_XDECREF(k); Py_XDECREF(v); Py_XDECREF(pm);
    Py_XDECREF(z); Py_XDECREF(pattern);
    return res;
}

PyDoc_STRVAR(_layer_norm_backward_doc,
"_layer_norm_backward(dy, x, scale, w=None, bias=False, dx=None, dw=None, db=None)\n--\n\n"
"Test binding: LayerNorm backward. scale is the forward's per-row scale. The\n"
"gradients accumulate into dx/dw/db when given (else fresh zeros). Returns\n"
"(dx, dw, db) with dw None when w is None and db None unless bias.");

static PyObject *py__layer_norm_backward(PyObject *m, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"dy", "x", "scale", "w", "bias", "dx", "dw", "db", NULL};
    PyObject *dy_o, *x_o, *s_o, *w_o = Py_None, *dx_o = Py_None, *dw_o = Py_None, *db_o = Py_None;
    int bias = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|OpOOO:_layer_norm_backward", kwlist, &dy_o,
                                     &x_o, &s_o, &w_o, &bias, &dx_o, &dw_o, &db_o))
        return NULL;
    PyArrayObject *x = NULL, *dy = NULL, *s = NULL, *w = NULL;
    PyObject *dx = NULL, *dw = NULL, *db = NULL, *res = NULL;
    if (!(x = mi_py_float_arg(x_o, "x", 1, 32))) goto done;
    npy_intp d = PyArray_DIM(x, PyArray_NDIM(x) - 1), rows = rows_of(x);
    if (!(dy = float_arg_shaped(dy_o, "dy", PyArray_NDIM(x), PyArray_DIMS(x)))) goto done;
    if (!(s = scale_arg(s_o, rows))) goto done;
    if (norm_param(w_o, "w", d, &w) < 0) goto done;
    float *dxd, *dwd = NULL, *dbd = NULL;
    if (!(dx = grad_arg(m, dx_o, "dx", PyArray_NDIM(x), PyArray_DIMS(x), &dxd))) goto done;
    if (w && !(dw = grad_arg(m, dw_o, "dw", 1, &d, &dwd))) goto done;
    if (bias && !(db = grad_arg(m, db_o, "db", 1, &d, &dbd))) goto done;
    mi_status st;
    {
        const float *dyd = PyArray_DATA(dy), *xd = PyArray_DATA(x), *sd = PyArray_DATA(s);
        const float *wd = w ? PyArray_DATA(w) : NULL;
        Py_BEGIN_ALLOW_THREADS
        st = mi_layer_norm_backward(dyd, xd, wd, sd, rows, d, dxd, dwd, dbd);
        Py_END_ALLOW_THREADS
    }
    if (st != MI_OK) { mi_py_raise(st); goto done; }
    res = PyTuple_Pack(3, dx, dw ? dw : Py_None, db ? db : Py_None);
done:
    Py_XDECREF(x); Py_XDECREF(dy); Py_XDECREF(s); Py_XDECREF(w);
    Py_XDECREF(dx); Py_XDECREF(dw); Py_XDECREF(db);
    return res;
}

PyDoc_STRVAR(_rms_norm_backward_doc,
"_rms_norm_backward(dy, x, scale, w=None, dx=None, dw=None)\n--\n\n"
"Test binding: RMSNorm backward; accumulates like _layer_norm_backward.\n"
"Returns (dx, dw) with dw None when w is None.");

static PyObject *py__rms_norm_backward(PyObject *m, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"dy", "x", "scale", "w", "dx", "dw", NULL};
    PyObject *dy_o, *x_o, *s_o, *w_o = Py_None, *dx_o = Py_None, *dw_o = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|OOO:_rms_norm_backward", kwlist, &dy_o,
                                     &x_o, &s_o, &w_o, &dx_o, &dw_o))
        return NULL;
    PyArrayObject *x = NULL, *dy = NULL, *s = NULL, *w = NULL;
    PyObject *dx = NULL, *dw = NULL, *res = NULL;
    if (!(x = mi_py_float_arg(x_o, "x", 1, 32))) goto done;
    npy_intp d = PyArray_DIM(x, PyArray_NDIM(x) - 1), rows = rows_of(x);
    if (!(dy = float_arg_shaped(dy_o, "dy", PyArray_NDIM(x), PyArray_DIMS(x)))) goto done;
    if (!(s = scale_arg(s_o, rows))) goto done;
    if (norm_param(w_o, "w", d, &w) < 0) goto done;
    float *dxd, *dwd = NULL;
    if (!(dx = grad_arg(m, dx_o, "dx", PyArray_NDIM(x), PyArray_DIMS(x), &dxd))) goto done;
    if (w && !(dw = grad_arg(m, dw_o, "dw", 1, &d, &dwd))) goto done;
    mi_status st;
    {
        const float *dyd = PyArray_DATA(dy), *xd = PyArray_DATA(x), *sd = PyArray_DATA(s);
        const float *wd = w ? PyArray_DATA(w) : NULL;
        Py_BEGIN_ALLOW_THREADS
        st = mi_rms_norm_backward(dyd, xd, wd, sd, rows, d, dxd, dwd);
        Py_END_ALLOW_THREADS
    }
    if (st != MI_OK) { mi_py_raise(st); goto done; }
    res = PyTuple_Pack(2, dx, dw ? dw : Py_None);
done:
    Py_XDECREF(x); Py_XDECREF(dy); Py_XDECREF(s); Py_XDECREF(w);
    Py_XDECREF(dx); Py_XDECREF(dw);
    return res;
}

PyDoc_STRVAR(_activation_backward_doc,
"_activation_backward(name, x, dy, dx=None)\n--\n\n"
"Test binding: dx += dy * act'(x) for name in 'relu', 'gelu', 'gelu_tanh',\n"
"'silu' (x is the activation's input). Returns dx.");

static PyObject *py__activation_backward(PyObject *m, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"name", "x", "dy", "dx", NULL};
    const char *name;
    PyObject *x_o, *dy_o, *dx_o = Py_None, *dx = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "sOO|O:_activation_backward", kwlist, &name, &x_o,
                                     &dy_o, &dx_o))
        return NULL;
    mi_activation act;
    if (!strcmp(name, "relu")) act = MI_ACT_RELU;
    else if (!strcmp(name, "gelu")) act = MI_ACT_GELU;
    else if (!strcmp(name, "gelu_tanh") || !strcmp(name, "gelu_new")) act = MI_ACT_GELU_TANH;
    else if (!strcmp(name, "silu")) act = MI_ACT_SILU;
    else return PyErr_Format(PyExc_ValueError, "name: expected 'relu', 'gelu', 'gelu_tanh' or "
                             "'silu', got '%s'", name);
    PyArrayObject *x = NULL, *dy = NULL;
    if (!(x = mi_py_float_arg(x_o, "x", 0, 32))) goto done;
    if (!(dy = float_arg_shaped(dy_o, "dy", PyArray_NDIM(x), PyArray_DIMS(x)))) goto done;
    float *dxd;
    if (!(dx = grad_arg(m, dx_o, "dx", PyArray_NDIM(x), PyArray_DIMS(x), &dxd))) goto done;
    {
        const float *xd = PyArray_DATA(x), *dyd = PyArray_DATA(dy);
        npy_intp n = PyArray_SIZE(x);
        Py_BEGIN_ALLOW_THREADS
        mi_activation_backward(act, xd, dyd, dxd, n);
        Py_END_ALLOW_THREADS
    }
done:
    Py_XDECREF(x); Py_XDECREF(dy);
    return dx;
}

PyDoc_STRVAR(_softmax_backward_doc,
"_softmax_backward(y, dy, dx=None)\n--\n\n"
"Test binding: softmax backward over the last axis from the forward output y;\n"
"dx += y * (dy - sum(dy * y)). Returns dx.");

static PyObject *py__softmax_backward(PyObject *m, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"y", "dy", "dx", NULL};
    PyObject *y_o, *dy_o, *dx_o = Py_None, *dx = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|O:_softmax_backward", kwlist, &y_o, &dy_o,
                                     &dx_o))
        return NULL;
    PyArrayObject *y = NULL, *dy = NULL;
    if (!(y = mi_py_float_arg(y_o, "y", 1, 32))) goto done;
    if (!(dy = float_arg_shaped(dy_o, "dy", PyArray_NDIM(y), PyArray_DIMS(y)))) goto done;
    float *dxd;
    if (!(dx = grad_arg(m, dx_o, "dx", PyArray_NDIM(y), PyArray_DIMS(y), &dxd))) goto done;
    {
        const float *yd = PyArray_DATA(y), *dyd = PyArray_DATA(dy);
        npy_intp cols = PyArray_DIM(y, PyArray_NDIM(y) - 1), rows = rows_of(y);
        Py_BEGIN_ALLOW_THREADS
        mi_softmax_rows_backward(yd, dyd, dxd, rows, cols);
        Py_END_ALLOW_THREADS
    }
done:
    Py_XDECREF(y); Py_XDECREF(dy);
    return dx;
}

PyDoc_STRVAR(_attention_backward_doc,
"_attention_backward(q, k, v, pattern, dz, causal=True, scale=None, dq=None, dk=None, dv=None)\n"
"--\n\n"
"Test binding: attention backward. q, k, v, dz [batch, pos, head, d_head];\n"
"pattern [batch, head, q, k] from the forward. Or the fused layout: q is\n"
"qkv [batch, pos, 3, head, d_head] with k and v None; then dq is the fused\n"
"gradient and the result is (dqkv,). Gradients accumulate into dq/dk/dv when\n"
"given. Returns (dq, dk, dv).");

static PyObject *py__attention_backward(PyObject *m, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"q", "k", "v", "pattern", "dz", "causal", "scale", "dq", "dk", "dv",
                             NULL};
    PyObject *q_o, *k_o, *v_o, *p_o, *dz_o, *s_o = Py_None;
    PyObject *dq_o = Py_None, *dk_o = Py_None, *dv_o = Py_None;
    int causal = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOO|pOOOO:_attention_backward", kwlist, &q_o,
                                     &k_o, &v_o, &p_o, &dz_o, &causal, &s_o, &dq_o, &dk_o, &dv_o))
        return NULL;
    PyArrayObject *q = NULL, *k = NULL, *v = NULL, *p = NULL, *dz = NULL;
    PyObject *dq = NULL, *dk = NULL, *dv = NULL, *res = NULL;
    mi_attn_layout L;
    int fused = k_o == Py_None && v_o == Py_None;
    const float *qd, *kd, *vd;
    float *dqd, *dkd, *dvd;
    if (qkv_args(q_o, k_o, v_o, &q, &k, &v, &L, &qd, &kd, &vd) < 0) goto done;
    if (fused) {
        if (!(dq = grad_arg(m, dq_o, "dq", 5, PyArray_DIMS(q), &dqd))) goto done;
        dkd = dqd + L.n_heads * L.d_head;
        dvd = dkd + L.n_heads * L.d_head;
    } else {
        if (!(dq = grad_arg(m, dq_o, "dq", 4, PyArray_DIMS(q), &dqd))) goto done;
        if (!(dk = grad_arg(m, dk_o, "dk", 4, PyArray_DIMS(q), &dkd))) goto done;
        if (!(dv = grad_arg(m, dv_o, "dv", 4, PyArray_DIMS(q), &dvd))) goto done;
    }
    npy_intp pshape[4] = {L.batch, L.n_heads, L.q_len, L.k_len};
    npy_intp zshape[4] = {L.batch, L.q_len, L.n_heads, L.d_head};
    if (!(p = float_arg_shaped(p_o, "pattern", 4, pshape))) goto done;
    if (!(dz = float_arg_shaped(dz_o, "dz", 4, zshape))) goto done;
    double scale = 1.0 / sqrt((double)(L.d_head > 0 ? L.d_head : 1));
    if (s_o != Py_None) {
        scale = PyFloat_AsDouble(s_o);
        if (scale == -1.0 && PyErr_Occurred()) goto done;
    }
    mi_status st;
    {
        const float *pd = PyArray_DATA(p), *dzd = PyArray_DATA(dz);
        Py_BEGIN_ALLOW_THREADS
        st = mi_attn_backward(&L, qd, kd, vd, pd, dzd, (float)scale, causal, dqd, dkd, dvd);
        Py_END_ALLOW_THREADS
    }
    if (st != MI_OK) { mi_py_raise(st); goto done; }
    res = fused ? PyTuple_Pack(1, dq) : PyTuple_Pack(3, dq, dk, dv);
done:
    Py_XDECREF(q); Py_XDECREF(k); Py_XDECREF(v); Py_XDECREF(p); Py_XDECREF(dz);
    Py_XDECREF(dq); Py_XDECREF(dk); Py_XDECREF(dv);
    return res;
}

PyDoc_STRVAR(_cross_entropy_doc,
"_cross_entropy(logits, targets, ignore_index=-100, dlogits=None)\n--\n\n"
"Test binding: softmax cross-entropy of logits [rows, vocab] against integer\n"
"targets [rows]. Returns (mean_loss, per_row_losses, dlogits) where dlogits\n"
"(accumulated into the given array, else fresh) is the gradient of the mean.");

static PyObject *py__cross_entropy(PyObject *m, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"logits", "targets", "ignore_index", "dlogits", NULL};
    PyObject *l_o, *t_o, *dl_o = Py_None;
    long long ignore = MI_IGNORE_INDEX;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|LO:_cross_entropy", kwlist, &l_o, &t_o,
                                     &ignore, &dl_o))
        return NULL;
    PyArrayObject *l = NULL, *t = NULL;
    PyObject *losses = NULL, *dl = NULL, *res = NULL;
    char s1[128], s2[128];
    if (!(l = mi_py_float_arg(l_o, "logits", 2, 2))) goto done;
    if (!(t = int64_arg(t_o, "targets"))) goto done;
    npy_intp rows = PyArray_DIM(l, 0), vocab = PyArray_DIM(l, 1);
    if (PyArray_NDIM(t) != 1 || PyArray_DIM(t, 0) != rows) {
        PyErr_Format(PyExc_ValueError, "targets: expected shape (%ld,) to match logits %s, got %s",
                     (long)rows, mi_py_shape_str(l, s1), mi_py_shape_str(t, s2));
        goto done;
    }
    float *lossd, *dld, mean;
    if (!(losses = mi_py_empty(m, 1, &rows, &lossd))) goto done;
    if (!(dl = grad_arg(m, dl_o, "dlogits", 2, PyArray_DIMS(l), &dld))) goto done;
    mi_status st;
    {
        const float *ld = PyArray_DATA(l);
        const int64_t *td = PyArray_DATA(t);
        Py_BEGIN_ALLOW_THREADS
        st = mi_cross_entropy(ld, td, rows, vocab, ignore, &mean, lossd, dld);
        Py_END_ALLOW_THREADS
    }
    if (st != MI_OK) { mi_py_raise(st); goto done; }
    res = Py_BuildValue("(dOO)", (double)mean, losses, dl);
done:
    Py_XDECREF(l); Py_XDECREF(t); Py_XDECREF(losses); Py_XDECREF(dl);
    return res;
}

PyDoc_STRVAR(_embedding_doc,
"_embedding(W, tokens)\n--\n\n"
"Test binding: embedding lookup W[tokens] for W [vocab, d] and integer tokens\n"
"of any shape; result tokens.shape + (d,).");

static PyObject *py__embedding(PyObject *m, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"W", "tokens", NULL};
    PyObject *w_o, *t_o, *out = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO:_embedding", kwlist, &w_o, &t_o)) return NULL;
    PyArrayObject *w = NULL, *t = NULL;
    if (!(w = mi_py_float_arg(w_o, "W", 2, 2))) goto done;
    if (!(t = int64_arg(t_o, "tokens"))) goto done;
    if (PyArray_NDIM(t) > 31) { PyErr_SetString(PyExc_ValueError, "tokens: too many dims"); goto done; }
    npy_intp shape[32];
    memcpy(shape, PyArray_DIMS(t), sizeof(npy_intp) * PyArray_NDIM(t));
    shape[PyArray_NDIM(t)] = PyArray_DIM(w, 1);
    float *od;
    if (!(out = mi_py_empty(m, PyArray_NDIM(t) + 1, shape, &od))) goto done;
    mi_status st;
    {
        const float *wd = PyArray_DATA(w);
        const int64_t *td = PyArray_DATA(t);
        npy_intp vocab = PyArray_DIM(w, 0), d = PyArray_DIM(w, 1), n = PyArray_SIZE(t);
        Py_BEGIN_ALLOW_THREADS
        st = mi_embedding_forward(wd, vocab, d, td, n, od);
        Py_END_ALLOW_THREADS
    }
    if (st != MI_OK) { mi_py_raise(st); Py_CLEAR(out); }
done:
    Py_XDECREF(w); Py_XDECREF(t);
    return out;
}

PyDoc_STRVAR(_embedding_backward_doc,
"_embedding_backward(dout, tokens, vocab, dW=None)\n--\n\n"
"Test binding: dW[tokens[i]] += dout[i] (scatter-add) for dout of shape\n"
"tokens.shape + (d,). Returns dW [vocab, d].");

static PyObject *py__embedding_backward(PyObject *m, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"dout", "tokens", "vocab", "dW", NULL};
    PyObject *g_o, *t_o, *dw_o = Py_None, *dw = NULL;
    Py_ssize_t vocab;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOn|O:_embedding_backward", kwlist, &g_o, &t_o,
                                     &vocab, &dw_o))
        return NULL;
    PyArrayObject *g = NULL, *t = NULL;
    char s1[128], s2[128];
    if (vocab < 0) { PyErr_Format(PyExc_ValueError, "vocab: must be >= 0, got %zd", vocab); goto done; }
    if (!(g = mi_py_float_arg(g_o, "dout", 1, 32))) goto done;
    if (!(t = int64_arg(t_o, "tokens"))) goto done;
    int ok = PyArray_NDIM(g) == PyArray_NDIM(t) + 1;
    for (int i = 0; ok && i < PyArray_NDIM(t); i++) ok = PyArray_DIM(g, i) == PyArray_DIM(t, i);
    if (!ok) {
        PyErr_Format(PyExc_ValueError, "dout: expected shape tokens.shape + (d,) with tokens %s, "
                     "got %s", mi_py_shape_str(t, s1), mi_py_shape_str(g, s2));
        goto done;
    }
    npy_intp d = PyArray_DIM(g, PyArray_NDIM(g) - 1), wshape[2] = {vocab, d};
    float *dwd;
    if (!(dw = grad_arg(m, dw_o, "dW", 2, wshape, &dwd))) goto done;
    mi_status st;
    {
        const float *gd = PyArray_DATA(g);
        const int64_t *td = PyArray_DATA(t);
        npy_intp n = PyArray_SIZE(t);
        Py_BEGIN_ALLOW_THREADS
        st = mi_embedding_backward(gd, td, n, vocab, d, dwd);
        Py_END_ALLOW_THREADS
    }
    if (st != MI_OK) { mi_py_raise(st); Py_CLEAR(dw); }
done:
    Py_XDECREF(g); Py_XDECREF(t);
    return dw;
}

/* ---- test bindings of the general attention contract (kernels/attention.h) ----
 * q, k, v (and dq, dk, dv) are passed as they are, strided views included (into
 * a fused QKV buffer, or a [batch, kv_head, capacity, d_head] KV cache seen as
 * [batch, pos, kv_head, d_head]), so the kernels read them through their strides. */

/* A float32 [batch, pos, head, d_head] array read in place: its data and element
 * strides. The d axis must be contiguous and every stride a whole number of floats. */
static int attn_strided_arg(PyObject *o, const char *name, int writable, PyArrayObject **a,
                            mi_attn_stride *s)
{
    char b1[128];
    if (!PyArray_Check(o) || PyArray_TYPE((PyArrayObject *)o) != NPY_FLOAT32 ||
        PyArray_NDIM((PyArrayObject *)o) != 4) {
        PyErr_Format(PyExc_TypeError, "%s: expected a 4-d float32 ndarray [batch, pos, head, "
                     "d_head]", name);
        return -1;
    }
    PyArrayObject *x = (PyArrayObject *)o;
    const npy_intp *st = PyArray_STRIDES(x), f = (npy_intp)sizeof(float);
    if (!PyArray_ISALIGNED(x) || !PyArray_ISNOTSWAPPED(x) ||
        (PyArray_DIM(x, 3) > 1 && st[3] != f) || st[0] % f || st[1] % f || st[2] % f) {
        PyErr_Format(PyExc_ValueError, "%s: the d_head axis must be contiguous and the other "
                     "strides whole floats (shape %s)", name, mi_py_shape_str(x, b1));
        return -1;
    }
    if (writable && !PyArray_ISWRITEABLE(x)) {
        PyErr_Format(PyExc_ValueError, "%s: must be writeable", name);
        return -1;
    }
    *a = x;
    *s = (mi_attn_stride){st[0] / f, st[1] / f, st[2] / f};
    return 0;
}

/* The layout of q [B,Tq,H,Dh], k and v [B,Tk,Hkv,Dh]; the head counts are checked by the core. */
static int attn_general_layout(PyObject *qo, PyObject *ko, PyObject *vo, long long offset,
                               PyArrayObject **a, mi_attn_layout *L)
{
    char b1[128], b2[128], b3[128];
    if (attn_strided_arg(qo, "q", 0, &a[0], &L->q) < 0 ||
        attn_strided_arg(ko, "k", 0, &a[1], &L->k) < 0 ||
        attn_strided_arg(vo, "v", 0, &a[2], &L->v) < 0)
        return -1;
    if (!PyArray_SAMESHAPE(a[1], a[2]) || PyArray_DIM(a[1], 0) != PyArray_DIM(a[0], 0) ||
        PyArray_DIM(a[1], 3) != PyArray_DIM(a[0], 3)) {
        PyErr_Format(PyExc_ValueError, "k, v: expected [batch, k_len, n_kv_heads, d_head] with "
                     "q's batch and d_head (q %s), got k %s and v %s", mi_py_shape_str(a[0], b1),
                     mi_py_shape_str(a[1], b2), mi_py_shape_str(a[2], b3));
        return -1;
    }
    L->batch = PyArray_DIM(a[0], 0);
    L->q_len = PyArray_DIM(a[0], 1);
    L->n_heads = PyArray_DIM(a[0], 2);
    L->d_head = PyArray_DIM(a[0], 3);
    L->k_len = PyArray_DIM(a[1], 1);
    L->n_kv_heads = PyArray_DIM(a[1], 2);
    L->offset = offset;
    mi_status st = mi_attn_check(L);
    if (st != MI_OK) { mi_py_raise(st); return -1; }
    return 0;
}

/* scale: a float, or None for 1/sqrt(d_head). */
static int attn_scale_arg(PyObject *so, int64_t d_head, double *scale)
{
    *scale = so == Py_None ? 1.0 / sqrt((double)(d_head > 0 ? d_head : 1)) : PyFloat_AsDouble(so);
    return PyErr_Occurred() ? -1 : 0;
}

PyDoc_STRVAR(_attention_general_doc,
"_attention_general(q, k, v, causal=True, offset=0, padding_mask=None, scale=None, mode='fused')\n"
"--\n\n"
"Test binding: the general attention kernels. q [batch, q_len, n_heads, d_head],\n"
"k, v [batch, k_len, n_kv_heads, d_head] float32, read in place through their\n"
"strides; query i sits at key position offset + i; padding_mask [batch, k_len]\n"
"float32 (0 masks a key). mode 'steps' runs mi_attn_scores, mi_softmax_rows and\n"
"mi_attn_apply; 'fused' mi_attn_fused keeping scores and pattern; 'fused_z'\n"
"mi_attn_fused keeping neither. Returns (z, scores, pattern), scores and pattern\n"
"[batch, n_heads, q_len, k_len] or None.");

static PyObject *py__attention_general(PyObject *m, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"q", "k", "v", "causal", "offset", "padding_mask", "scale", "mode",
                             NULL};
    PyObject *qo, *ko, *vo, *mo = Py_None, *so = Py_None;
    int causal = 1;
    long long offset = 0;
    const char *mode = "fused";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|pLOOs:_attention_general", kwlist, &qo, &ko,
                                     &vo, &causal, &offset, &mo, &so, &mode))
        return NULL;
    const int steps = !strcmp(mode, "steps"), keep = steps || !strcmp(mode, "fused");
    if (!keep && strcmp(mode, "fused_z"))
        return PyErr_Format(PyExc_ValueError, "mode: expected 'steps', 'fused' or 'fused_z', "
                            "got '%s'", mode);
    PyArrayObject *a[3] = {NULL, NULL, NULL}, *mask = NULL;
    PyObject *z = NULL, *sc = NULL, *pat = NULL, *res = NULL;
    mi_attn_layout L;
    if (attn_general_layout(qo, ko, vo, offset, a, &L) < 0) return NULL;
    if (mo != Py_None) {
        if (!(mask = mi_py_float_arg(mo, "padding_mask", 2, 2))) return NULL;
        if (PyArray_DIM(mask, 0) != L.batch || PyArray_DIM(mask, 1) != L.k_len) {
            PyErr_SetString(PyExc_ValueError, "padding_mask: expected [batch, k_len] like k");
            goto done;
        }
    }
    double scale;
    if (attn_scale_arg(so, L.d_head, &scale) < 0) goto done;
    npy_intp zshape[4] = {L.batch, L.q_len, L.n_heads, L.d_head},
             pshape[4] = {L.batch, L.n_heads, L.q_len, L.k_len};
    float *zd, *sd = NULL, *pd = NULL;
    if (!(z = mi_py_empty(m, 4, zshape, &zd))) goto done;
    if (keep && (!(sc = mi_py_empty(m, 4, pshape, &sd)) || !(pat = mi_py_empty(m, 4, pshape, &pd))))
        goto done;
    {
        const float *qd = PyArray_DATA(a[0]), *kd = PyArray_DATA(a[1]), *vd = PyArray_DATA(a[2]);
        const float *md = mask ? PyArray_DATA(mask) : NULL;
        mi_status st;
        Py_BEGIN_ALLOW_THREADS
        if (steps) {
            st = mi_attn_scores(&L, qd, kd, (float)scale, causal, md, sd);
            if (st == MI_OK) {
                mi_softmax_rows(sd, pd, L.batch * L.n_heads * L.q_len, L.k_len);
                st = mi_attn_apply(&L, pd, vd, zd);
            }
        } else {
            st = mi_attn_fused(&L, qd, kd, vd, (float)scale, causal, md, sd, pd, zd);
        }
        Py_END_ALLOW_THREADS
        if (st != MI_OK) { mi_py_raise(st); goto done; }
    }
    res = PyTuple_Pack(3, z, sc ? sc : Py_None, pat ? pat : Py_None);
done:
    Py_XDECREF(mask); Py_XDECREF(z); Py_XDECREF(sc); Py_XDECREF(pat);
    return res;
}

PyDoc_STRVAR(_attention_general_backward_doc,
"_attention_general_backward(q, k, v, pattern, dz, dq, dk, dv, causal=True, offset=0, scale=None)\n"
"--\n\n"
"Test binding: mi_attn_backward on the general layout of _attention_general.\n"
"pattern [batch, n_heads, q_len, k_len] and dz [batch, q_len, n_heads, d_head]\n"
"float32; dq, dk, dv float32 arrays of q's, k's and v's shape and strides,\n"
"into which the gradients accumulate. Returns None.");

static PyObject *py__attention_general_backward(PyObject *m, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"q", "k", "v", "pattern", "dz", "dq", "dk", "dv", "causal", "offset",
                             "scale", NULL};
    PyObject *qo, *ko, *vo, *po, *dzo, *go[3], *so = Py_None;
    int causal = 1;
    long long offset = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOOOO|pLO:_attention_general_backward", kwlist,
                                     &qo, &ko, &vo, &po, &dzo, &go[0], &go[1], &go[2], &causal,
                                     &offset, &so))
        return NULL;
    static const char *gname[3] = {"dq", "dk", "dv"};
    PyArrayObject *a[3] = {NULL, NULL, NULL}, *g[3], *p = NULL, *dz = NULL;
    PyObject *res = NULL;
    mi_attn_layout L;
    if (attn_general_layout(qo, ko, vo, offset, a, &L) < 0) return NULL;
    for (int i = 0; i < 3; i++) {
        mi_attn_stride s;
        const mi_attn_stride *want = i == 0 ? &L.q : i == 1 ? &L.k : &L.v;
        if (attn_strided_arg(go[i], gname[i], 1, &g[i], &s) < 0) return NULL;
        if (!PyArray_SAMESHAPE(g[i], a[i]) || s.batch != want->batch || s.pos != want->pos ||
            s.head != want->head)
            return PyErr_Format(PyExc_ValueError, "%s: expected the shape and strides of %s",
                                gname[i], gname[i] + 1);
    }
    npy_intp zshape[4] = {L.batch, L.q_len, L.n_heads, L.d_head},
             pshape[4] = {L.batch, L.n_heads, L.q_len, L.k_len};
    if (!(p = float_arg_shaped(po, "pattern", 4, pshape))) goto done;
    if (!(dz = float_arg_shaped(dzo, "dz", 4, zshape))) goto done;
    double scale;
    if (attn_scale_arg(so, L.d_head, &scale) < 0) goto done;
    {
        const float *qd = PyArray_DATA(a[0]), *kd = PyArray_DATA(a[1]), *vd = PyArray_DATA(a[2]);
        const float *pd = PyArray_DATA(p), *dzd = PyArray_DATA(dz);
        float *dqd = PyArray_DATA(g[0]), *dkd = PyArray_DATA(g[1]), *dvd = PyArray_DATA(g[2]);
        mi_status st;
        Py_BEGIN_ALLOW_THREADS
        st = mi_attn_backward(&L, qd, kd, vd, pd, dzd, (float)scale, causal, dqd, dkd, dvd);
        Py_END_ALLOW_THREADS
        if (st != MI_OK) { mi_py_raise(st); goto done; }
    }
    res = Py_None;
    Py_INCREF(res);
done:
    Py_XDECREF(p); Py_XDECREF(dz);
    return res;
}

static PyMethodDef ops_methods[] = {
    {"matmul", (PyCFunction)(void (*)(void))py_matmul, METH_VARARGS | METH_KEYWORDS, matmul_doc},
    {"layer_norm", (PyCFunction)(void (*)(void))py_layer_norm, METH_VARARGS | METH_KEYWORDS,
     layer_norm_doc},
    {"rms_norm", (PyCFunction)(void (*)(void))py_rms_norm, METH_VARARGS | METH_KEYWORDS,
     rms_norm_doc},
    {"gelu", (PyCFunction)(void (*)(void))py_gelu, METH_VARARGS | METH_KEYWORDS, gelu_doc},
    {"relu", py_relu, METH_O, "relu(x)\n--\n\nmax(x, 0) elementwise; NaN stays NaN."},
    {"silu", py_silu, METH_O, "silu(x)\n--\n\nx * sigmoid(x) elementwise."},
    {"_sgemm", (PyCFunction)(void (*)(void))py_sgemm, METH_VARARGS | METH_KEYWORDS, sgemm_doc},
    {"_fma_peak", py_fma_peak, METH_NOARGS,
     "_fma_peak()\n--\n\nMeasured fp32 FMA peak in GFLOP/s on all threads (for benchmarks)."},
    KW_METHOD(softmax),
    KW_METHOD(attention),
    KW_METHOD(_layer_norm_backward),
    KW_METHOD(_rms_norm_backward),
    KW_METHOD(_activation_backward),
    KW_METHOD(_softmax_backward),
    KW_METHOD(_attention_backward),
    KW_METHOD(_attention_general),
    KW_METHOD(_attention_general_backward),
    KW_METHOD(_cross_entropy),
    KW_METHOD(_embedding),
    KW_METHOD(_embedding_backward),
    {NULL, NULL, 0, NULL},
};

int mi_py_ops_exec(PyObject *m) { return PyModule_AddFunctions(m, ops_methods); }
