/* ops.c - mechinterp_c.ops: Python wrappers of the kernels.
 *
 * Each wrapper checks its arguments (naming argument and shape on error),
 * takes float32 C-contiguous input in place (other float input is converted
 * once), allocates its result as a Buffer-owned array and runs the kernel
 * with the GIL released. */
#include "python/bridge.h"

#include <string.h>

#include "kernels/activation.h"
#include "kernels/fma_probe.h"
#include "kernels/gemm.h"
#include "kernels/norm.h"

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
    {NULL, NULL, 0, NULL},
};

int mi_py_ops_exec(PyObject *m) { return PyModule_AddFunctions(m, ops_methods); }
