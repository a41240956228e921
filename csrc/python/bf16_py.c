/* bf16_py.c - bfloat16 conversions and the bfloat16-weight GEMM as NumPy functions.
 *
 * NumPy has no bfloat16: bfloat16 tensors are uint16 arrays of bit patterns.
 *   to_bfloat16(x) -> uint16        from_bfloat16(h) -> float32
 *   _gemm_bf16(a, b, trans_b=False, bias=None, out=None, path="auto") -> float32
 * (_gemm_bf16 drives each path explicitly, for tests and benchmarks). */
#include "python/bridge.h"

#include <string.h>

#include "kernels/gemm_bf16.h"

/* x as a C-contiguous, aligned, native-order array of `type` (a new reference):
 * float inputs of any width or byte order are converted; callers check that a
 * uint16 argument is uint16 before (bfloat16 bit patterns are never cast). */
static PyArrayObject *as_array(PyObject *x, int type)
{
    return (PyArrayObject *)PyArray_FromAny(x, PyArray_DescrFromType(type), 0, 0,
                                            NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED
                                            | NPY_ARRAY_FORCECAST, NULL);
}

static PyObject *py_to_bfloat16(PyObject *m, PyObject *x_obj)
{
    PyArrayObject *x = as_array(x_obj, NPY_FLOAT32);
    if (!x) return NULL;
    PyObject *y = PyArray_SimpleNew(PyArray_NDIM(x), PyArray_DIMS(x), NPY_UINT16);
    if (y) {
        Py_BEGIN_ALLOW_THREADS
        mi_f32_to_bf16_n(PyArray_DATA(x), PyArray_DATA((PyArrayObject *)y), PyArray_SIZE(x));
        Py_END_ALLOW_THREADS
    }
    Py_DECREF(x);
    return y;
}

static PyObject *py_from_bfloat16(PyObject *m, PyObject *h_obj)
{
    if (!PyArray_Check(h_obj) || PyArray_TYPE((PyArrayObject *)h_obj) != NPY_UINT16)
        return PyErr_Format(PyExc_TypeError, "from_bfloat16: h must be uint16 (bfloat16 bit "
                            "patterns), got %R", PyArray_Check(h_obj) ? (PyObject *)PyArray_DESCR((PyArrayObject *)h_obj) : (PyObject *)Py_TYPE(h_obj));
    PyArrayObject *h = as_array(h_obj, NPY_UINT16);
    if (!h) return NULL;
    PyObject *y = PyArray_SimpleNew(PyArray_NDIM(h), PyArray_DIMS(h), NPY_FLOAT32);
    if (y) {
        Py_BEGIN_ALLOW_THREADS
        mi_bf16_to_f32_n(PyArray_DATA(h), PyArray_DATA((PyArrayObject *)y), PyArray_SIZE(h));
        Py_END_ALLOW_THREADS
    }
    Py_DECREF(h);
    return y;
}

static PyObject *py_gemm_bf16(PyObject *m, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"a", "b", "trans_b", "bias", "out", "path", NULL};
    PyObject *a_obj, *b_obj, *bias_obj = Py_None, *out_obj = Py_None;
    int trans_b = 0;
    const char *path_name = "auto";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|pOOs:_gemm_bf16", kwlist, &a_obj, &b_obj, &trans_b,
                                     &bias_obj, &out_obj, &path_name))
        return NULL;
    mi_bgemm_path path;
    if (!strcmp(path_name, "auto")) path = MI_BGEMM_AUTO;
    else if (!strcmp(path_name, "bf16")) path = MI_BGEMM_BF16;
    else if (!strcmp(path_name, "fp32")) path = MI_BGEMM_FP32;
    else if (!strcmp(path_name, "ref")) path = MI_BGEMM_REF;
    else return PyErr_Format(PyExc_ValueError, "_gemm_bf16: path must be 'auto', 'bf16', 'fp32' or "
                             "'ref', got '%s'", path_name);
    if (!PyArray_Check(b_obj) || PyArray_TYPE((PyArrayObject *)b_obj) != NPY_UINT16)
        return PyErr_Format(PyExc_TypeError, "_gemm_bf16: b must be a uint16 array (bfloat16 bit "
                            "patterns; see mechinterp_c.ops.to_bfloat16), got %R",
                            PyArray_Check(b_obj) ? (PyObject *)PyArray_DESCR((PyArrayObject *)b_obj)
                                                 : (PyObject *)Py_TYPE(b_obj));
    PyArrayObject *a = NULL, *b = NULL, *bias = NULL, *out = NULL;
    PyObject *result = NULL;
    if (!(a = as_array(a_obj, NPY_FLOAT32))) goto done;
    if (!(b = as_array(b_obj, NPY_UINT16))) goto done;
    if (PyArray_NDIM(a) != 2 || PyArray_NDIM(b) != 2) {
        PyErr_Format(PyExc_ValueError, "_gemm_bf16: a and b must be 2-D, got %d-D and %d-D",
                     PyArray_NDIM(a), PyArray_NDIM(b));
        goto done;
    }
    const npy_intp M = PyArray_DIM(a, 0), K = PyArray_DIM(a, 1);
    const npy_intp Kb = PyArray_DIM(b, trans_b ? 1 : 0), N = PyArray_DIM(b, trans_b ? 0 : 1);
    if (Kb != K) {
        PyErr_Format(PyExc_ValueError, "_gemm_bf16: a is [%zd, %zd] but b%s is [%zd, %zd]: inner "
                     "dimensions differ", M, K, trans_b ? "^T" : "", Kb, N);
        goto done;
    }
    if (bias_obj != Py_None) {
        if (!(bias = as_array(bias_obj, NPY_FLOAT32))) goto done;
        if (PyArray_NDIM(bias) != 1 || PyArray_DIM(bias, 0) != N) {
            PyErr_Format(PyExc_ValueError, "_gemm_bf16: bias must be [%zd]", N);
            goto done;
        }
    }
    float beta = 0.0f;
    if (out_obj != Py_None) {
        out = (PyArrayObject *)out_obj;
        if (!PyArray_Check(out_obj) || PyArray_TYPE(out) != NPY_FLOAT32 || !PyArray_ISCARRAY(out)
            || !PyArray_ISNOTSWAPPED(out) || PyArray_NDIM(out) != 2 || PyArray_DIM(out, 0) != M
            || PyArray_DIM(out, 1) != N) {
            PyErr_Format(PyExc_ValueError, "_gemm_bf16: out must be a writable C-contiguous native "
                         "float32 array [%zd, %zd] (it is accumulated into)", M, N);
            out = NULL;
            goto done;
        }
        Py_INCREF(out);
        beta = 1.0f;
    } else {
        npy_intp shape[2] = {M, N};
        if (!(out = (PyArrayObject *)PyArray_SimpleNew(2, shape, NPY_FLOAT32))) goto done;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = mi_bgemm(path, trans_b, M, N, K, PyArray_DATA(a), K, PyArray_DATA(b), trans_b ? K : N,
                  bias ? PyArray_DATA(bias) : NULL, beta, PyArray_DATA(out), N);
    Py_END_ALLOW_THREADS
    if (rc) {
        PyErr_SetString(PyExc_RuntimeError, "_gemm_bf16: path 'bf16' needs AVX512-BF16, which this "
                        "CPU does not have (use 'auto' or 'fp32')");
        goto done;
    }
    result = (PyObject *)out;
    out = NULL;
done:
    Py_XDECREF(a);
    Py_XDECREF(b);
    Py_XDECREF(bias);
    Py_XDECREF(out);
    return result;
}

static PyObject *py_bgemm_best_path(PyObject *m, PyObject *unused)
{
    return PyUnicode_FromString(mi_bgemm_path_name(mi_bgemm_best_path()));
}

static PyMethodDef bf16_methods[] = {
    {"to_bfloat16", py_to_bfloat16, METH_O,
     "to_bfloat16(x)\n--\n\nfloat32 -> bfloat16 bit patterns (uint16), round to nearest even; "
     "NaN becomes 0x7FC0 (as torch)."},
    {"from_bfloat16", py_from_bfloat16, METH_O,
     "from_bfloat16(h)\n--\n\nbfloat16 bit patterns (uint16) -> float32 (exact)."},
    {"_gemm_bf16", (PyCFunction)(void (*)(void))py_gemm_bf16, METH_VARARGS | METH_KEYWORDS,
     "_gemm_bf16(a, b, trans_b=False, bias=None, out=None, path='auto')\n--\n\n"
     "bf16(a) @ op(b) (+ bias) with float32 a [M, K] and bfloat16 b (uint16 [K, N], or [N, K] with "
     "trans_b); out given: accumulated into. path: 'auto', 'bf16' (AVX512-BF16), 'fp32' "
     "(widened tiles through the float32 GEMM) or 'ref' (plain loop)."},
    {"_bgemm_best_path", py_bgemm_best_path, METH_NOARGS,
     "_bgemm_best_path()\n--\n\nThe path 'auto' takes on this CPU: 'bf16' or 'fp32'."},
    {NULL, NULL, 0, NULL},
};

int mi_py_bf16_exec(PyObject *m) { return PyModule_AddFunctions(m, bf16_methods); }
