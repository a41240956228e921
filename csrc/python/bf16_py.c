/* bf16_py.c - bfloat16 conversions and the bfloat16-weight GEMM as NumPy functions.
 *
 * NumPy has no bfloat16: bfloat16 tensors are uint16 arrays of bit patterns.
 *   to_bfloat16(x) -> uint16        from_bfloat16(h) -> float32
 *   _gemm_bf16(a, b, trans_b=False, bias=None, out=None, path="auto") -> float32
 * (_gemm_bf16 drives each path explicitly, for tests and benchmarks). Arguments
 * are checked by the converters of convert.h. */
#include "python/convert.h"

#include <string.h>

#include "kernels/gemm_bf16.h"

static PyObject *py_to_bfloat16(PyObject *m, PyObject *x_obj)
{
    mi_arg x = MI_ARG_FLOAT("x", 0, 32);
    if (mi_arg_convert(x_obj, &x) < 0) return NULL;
    PyObject *y = PyArray_SimpleNew(PyArray_NDIM(x.arr), PyArray_DIMS(x.arr), NPY_UINT16);
    if (y) {
        Py_BEGIN_ALLOW_THREADS
        mi_f32_to_bf16_n(mi_arg_data(&x), PyArray_DATA((PyArrayObject *)y), PyArray_SIZE(x.arr));
        Py_END_ALLOW_THREADS
    }
    mi_arg_release(&x);
    return y;
}

static PyObject *py_from_bfloat16(PyObject *m, PyObject *h_obj)
{
    mi_arg h = MI_ARG("h", NPY_UINT16, 0, 0, 32);
    if (mi_arg_convert(h_obj, &h) < 0) return NULL;
    PyObject *y = PyArray_SimpleNew(PyArray_NDIM(h.arr), PyArray_DIMS(h.arr), NPY_FLOAT32);
    if (y) {
        Py_BEGIN_ALLOW_THREADS
        mi_bf16_to_f32_n(mi_arg_data(&h), PyArray_DATA((PyArrayObject *)y), PyArray_SIZE(h.arr));
        Py_END_ALLOW_THREADS
    }
    mi_arg_release(&h);
    return y;
}

static PyObject *py_gemm_bf16(PyObject *m, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"a", "b", "trans_b", "bias", "out", "path", NULL};
    mi_arg a = MI_ARG_FLOAT("a", 2, 2), b = MI_ARG("b", NPY_UINT16, 0, 2, 2),
           bias = MI_ARG_OPT(MI_ARG_FLOAT("bias", 1, 1)), out = MI_ARG_OPT(MI_ARG_OUT("out", 2, 2));
    int trans_b = 0;
    const char *path_name = "auto";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&O&|pO&O&s:_gemm_bf16", kwlist, mi_conv_array, &a,
                                     mi_conv_array, &b, &trans_b, mi_conv_array, &bias,
                                     mi_conv_array, &out, &path_name))
        return NULL;
    PyObject *result = NULL;
    mi_bgemm_path path;
    if (!strcmp(path_name, "auto")) path = MI_BGEMM_AUTO;
    else if (!strcmp(path_name, "bf16")) path = MI_BGEMM_BF16;
    else if (!strcmp(path_name, "fp32")) path = MI_BGEMM_FP32;
    else if (!strcmp(path_name, "ref")) path = MI_BGEMM_REF;
    else {
        PyErr_Format(PyExc_ValueError, "path: must be 'auto', 'bf16', 'fp32' or 'ref', got '%s'",
                     path_name);
        goto done;
    }
    const npy_intp M = PyArray_DIM(a.arr, 0), K = PyArray_DIM(a.arr, 1);
    const npy_intp Kb = PyArray_DIM(b.arr, trans_b ? 1 : 0), N = PyArray_DIM(b.arr, trans_b ? 0 : 1);
    if (Kb != K) {
        PyErr_Format(PyExc_ValueError, "b: a is [%zd, %zd] but b%s is [%zd, %zd]: inner "
                     "dimensions differ", M, K, trans_b ? "^T" : "", Kb, N);
        goto done;
    }
    const npy_intp bias_shape[1] = {N}, out_shape[2] = {M, N};
    if (bias.arr && mi_arg_shape(&bias, 1, bias_shape, "to match b's output columns") < 0) goto done;
    float beta = 0.0f;
    if (out.arr) {   /* accumulated into */
        if (mi_arg_shape(&out, 2, out_shape, NULL) < 0) goto done;
        beta = 1.0f;
        result = Py_NewRef((PyObject *)out.arr);
    } else if (!(result = PyArray_SimpleNew(2, out_shape, NPY_FLOAT32))) {
        goto done;
    }
    int rc;
    float *c = PyArray_DATA((PyArrayObject *)result);
    Py_BEGIN_ALLOW_THREADS
    rc = mi_bgemm(path, trans_b, M, N, K, mi_arg_data(&a), K, mi_arg_data(&b), trans_b ? K : N,
                  mi_arg_data(&bias), beta, c, N);
    Py_END_ALLOW_THREADS
    if (rc) {
        PyErr_SetString(PyExc_RuntimeError, "_gemm_bf16: path 'bf16' needs AVX512-BF16, which this "
                        "CPU does not have (use 'auto' or 'fp32')");
        Py_CLEAR(result);
    }
done:
    mi_arg_release(&a);
    mi_arg_release(&b);
    mi_arg_release(&bias);
    mi_arg_release(&out);
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
