/* ops.c - mechinterp_c.ops: Python wrappers of the kernels.
 *
 * Each wrapper takes its arguments through the converters (convert.h: float32
 * C-contiguous input in place, other float input converted once, the argument
 * and its shape named on error), allocates its result as a Buffer-owned array
 * and runs the kernel with the GIL released. */
#include "python/convert.h"

#include <math.h>
#include <string.h>

#include "kernels/activation.h"
#include "kernels/gemm.h"
#include "kernels/mha.h"
#include "kernels/norm.h"
#include "kernels/softmax.h"

#define KW_METHOD(name) \
    {#name, (PyCFunction)(void (*)(void))py_##name, METH_VARARGS | METH_KEYWORDS, name##_doc}

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
    mi_arg a = MI_ARG_FLOAT("a", 1, 32), b = MI_ARG_FLOAT("b", 2, 32);
    mi_arg bias = MI_ARG_OPT(MI_ARG_FLOAT("bias", 1, 1)), out = MI_ARG_OPT(MI_ARG_OUT("out", 1, 32));
    int trans_b = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&O&|O&pO&:matmul", kwlist, mi_conv_array, &a,
                                     mi_conv_array, &b, mi_conv_array, &bias, &trans_b,
                                     mi_conv_array, &out))
        return NULL;
    PyObject *res = NULL;
    char s1[128], s2[128];
    int nda = PyArray_NDIM(a.arr), ndb = PyArray_NDIM(b.arr);
    npy_intp K = PyArray_DIM(a.arr, nda - 1);
    npy_intp bk = trans_b ? PyArray_DIM(b.arr, ndb - 1) : PyArray_DIM(b.arr, ndb - 2);
    npy_intp N = trans_b ? PyArray_DIM(b.arr, ndb - 2) : PyArray_DIM(b.arr, ndb - 1);
    if (bk != K) {
        PyErr_Format(PyExc_ValueError, "matmul: a has shape %s and b%s has shape %s: "
                     "inner dimensions %ld and %ld differ", mi_py_shape_str(a.arr, s1),
                     trans_b ? " (trans_b)" : "", mi_py_shape_str(b.arr, s2), (long)K, (long)bk);
        goto done;
    }
    int64_t batch = 1, M;
    if (ndb == 2) {
        M = mi_py_rows(a.arr);
    } else {
        if (nda != ndb) {
            PyErr_Format(PyExc_ValueError, "matmul: batched b of shape %s needs a with the same "
                         "batch dims, got a of shape %s", mi_py_shape_str(b.arr, s2),
                         mi_py_shape_str(a.arr, s1));
            goto done;
        }
        for (int i = 0; i < nda - 2; i++) {
            if (PyArray_DIM(a.arr, i) != PyArray_DIM(b.arr, i)) {
                PyErr_Format(PyExc_ValueError, "matmul: batch dims differ: a %s, b %s",
                             mi_py_shape_str(a.arr, s1), mi_py_shape_str(b.arr, s2));
                goto done;
            }
            batch *= PyArray_DIM(a.arr, i);
        }
        M = PyArray_DIM(a.arr, nda - 2);
    }
    if (bias.arr && mi_arg_shape(&bias, 1, &N, NULL) < 0) goto done;
    npy_intp shape[32];
    memcpy(shape, PyArray_DIMS(a.arr), sizeof(npy_intp) * nda);
    shape[nda - 1] = N;
    float *c;
    if (out.arr) {
        if (!PyArray_CompareLists(PyArray_DIMS(out.arr), shape, nda) || PyArray_NDIM(out.arr) != nda) {
            PyErr_Format(PyExc_ValueError, "out: has shape %s, the result needs %d dims ending in "
                         "%ld", mi_py_shape_str(out.arr, s1), nda, (long)N);
            goto done;
        }
        c = PyArray_DATA(out.arr);
        res = Py_NewRef((PyObject *)out.arr);
    } else if (!(res = mi_py_empty(m, nda, shape, &c))) {
        goto done;
    }
    const float *A = mi_arg_data(&a), *B = mi_arg_data(&b), *bias_data = mi_arg_data(&bias);
    Py_BEGIN_ALLOW_THREADS
    if (ndb == 2)
        mi_sgemm(0, trans_b, M, N, K, A, K, B, trans_b ? K : N, bias_data, 0.0f, c, N);
    else
        mi_sgemm_strided_batched(0, trans_b, batch, M, N, K, A, K, M * K, B, trans_b ? K : N,
                                 K * N, bias_data, 0.0f, c, N, M * N);
    Py_END_ALLOW_THREADS
done:
    mi_arg_release(&a); mi_arg_release(&b); mi_arg_release(&bias); mi_arg_release(&out);
    return res;
}

/* layer_norm / rms_norm after parsing; b->arr NULL for rms (and for no bias). */
static PyObject *norm_common(PyObject *m, mi_arg *x, mi_arg *w, mi_arg *b, double eps,
                             int return_scale, int rms)
{
    PyObject *y = NULL, *scale = NULL, *res = NULL;
    npy_intp d = PyArray_DIM(x->arr, PyArray_NDIM(x->arr) - 1), rows = mi_py_rows(x->arr);
    static const char *why = "to match x's last dim";
    if (w->arr && mi_arg_shape(w, 1, &d, why) < 0) goto done;
    if (b->arr && mi_arg_shape(b, 1, &d, why) < 0) goto done;
    int nd = PyArray_NDIM(x->arr);
    float *yd, *sd = NULL;
    if (!(y = mi_py_empty(m, nd, PyArray_DIMS(x->arr), &yd))) goto done;
    if (return_scale) {
        npy_intp sshape[32];
        memcpy(sshape, PyArray_DIMS(x->arr), sizeof(npy_intp) * nd);
        sshape[nd - 1] = 1;
        if (!(scale = mi_py_empty(m, nd, sshape, &sd))) goto done;
    }
    const float *xd = mi_arg_data(x), *wd = mi_arg_data(w), *bd = mi_arg_data(b);
    Py_BEGIN_ALLOW_THREADS
    if (rms) mi_rms_norm(xd, wd, (float)eps, rows, d, yd, sd);
    else mi_layer_norm(xd, wd, bd, (float)eps, rows, d, yd, sd);
    Py_END_ALLOW_THREADS
    res = return_scale ? PyTuple_Pack(2, y, scale) : Py_NewRef(y);
done:
    mi_arg_release(x); mi_arg_release(w); mi_arg_release(b);
    Py_XDECREF(y); Py_XDECREF(scale);
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
    mi_arg x = MI_ARG_FLOAT("x", 1, 32), w = MI_ARG_OPT(MI_ARG_FLOAT("w", 1, 1)),
           b = MI_ARG_OPT(MI_ARG_FLOAT("b", 1, 1));
    double eps = 1e-5;
    int return_scale = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&|O&O&dp:layer_norm", kwlist, mi_conv_array, &x,
                                     mi_conv_array, &w, mi_conv_array, &b, &eps, &return_scale))
        return NULL;
    return norm_common(m, &x, &w, &b, eps, return_scale, 0);
}

PyDoc_STRVAR(rms_norm_doc,
"rms_norm(x, w=None, eps=1e-6, return_scale=False)\n--\n\n"
"RMSNorm over the last axis: x / sqrt(mean(x^2) + eps) * w (no weight when w\n"
"is None: RMSPre). return_scale as in layer_norm.");

static PyObject *py_rms_norm(PyObject *m, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"x", "w", "eps", "return_scale", NULL};
    mi_arg x = MI_ARG_FLOAT("x", 1, 32), w = MI_ARG_OPT(MI_ARG_FLOAT("w", 1, 1)), none = {0};
    double eps = 1e-6;
    int return_scale = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&|O&dp:rms_norm", kwlist, mi_conv_array, &x,
                                     mi_conv_array, &w, &eps, &return_scale))
        return NULL;
    return norm_common(m, &x, &w, &none, eps, return_scale, 1);
}

static PyObject *elementwise(PyObject *m, PyObject *x_obj, mi_activation act)
{
    mi_arg x = MI_ARG_FLOAT("x", 0, 32);
    if (mi_arg_convert(x_obj, &x) < 0) return NULL;
    float *yd;
    PyObject *y = mi_py_empty(m, PyArray_NDIM(x.arr), PyArray_DIMS(x.arr), &yd);
    if (y) {
        const float *xd = mi_arg_data(&x);
        npy_intp n = PyArray_SIZE(x.arr);
        Py_BEGIN_ALLOW_THREADS
        mi_activate(act, xd, yd, n);
        Py_END_ALLOW_THREADS
    }
    mi_arg_release(&x);
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

PyDoc_STRVAR(softmax_doc,
"softmax(x, mask=None)\n--\n\n"
"Softmax over the last axis of x in float32. mask, if given, is a boolean\n"
"array of x's shape; False entries are masked (treated as -inf). A row with\n"
"every entry masked (or -inf) gives zeros; a NaN in a row gives a NaN row.\n"
"(mechinterp_c.ops.softmax adds axis= and mask broadcasting.)");

static PyObject *py_softmax(PyObject *m, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"x", "mask", NULL};
    mi_arg x = MI_ARG_FLOAT("x", 1, 32), mask = MI_ARG("mask", NPY_BOOL, MI_ARG_OPTIONAL, 1, 32);
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&|O&:softmax", kwlist, mi_conv_array, &x,
                                     mi_conv_array, &mask))
        return NULL;
    PyObject *y = NULL;
    if (mask.arr && !PyArray_SAMESHAPE(mask.arr, x.arr)) {
        char s1[128], s2[128];
        PyErr_Format(PyExc_ValueError, "mask: has shape %s, expected x's shape %s",
                     mi_py_shape_str(mask.arr, s1), mi_py_shape_str(x.arr, s2));
        goto done;
    }
    float *yd;
    if (!(y = mi_py_empty(m, PyArray_NDIM(x.arr), PyArray_DIMS(x.arr), &yd))) goto done;
    {
        const float *xd = mi_arg_data(&x);
        const unsigned char *md = mi_arg_data(&mask);
        npy_intp cols = PyArray_DIM(x.arr, PyArray_NDIM(x.arr) - 1), rows = mi_py_rows(x.arr);
        Py_BEGIN_ALLOW_THREADS
        mi_softmax_rows_masked(xd, md, yd, rows, cols);
        Py_END_ALLOW_THREADS
    }
done:
    mi_arg_release(&x); mi_arg_release(&mask);
    return y;
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
    PyObject *q_obj, *k_obj = Py_None, *v_obj = Py_None, *scale_obj = Py_None;
    mi_arg pm = MI_ARG("padding_mask", NPY_FLOAT32, MI_ARG_OPTIONAL | MI_ARG_CAST, 0, 32);
    int causal = 1, return_pattern = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|OOpO&pO:attention", kwlist, &q_obj, &k_obj,
                                     &v_obj, &causal, mi_conv_array, &pm, &return_pattern,
                                     &scale_obj))
        return NULL;
    mi_arg qkv[3] = {{0}};
    PyObject *z = NULL, *pattern = NULL, *res = NULL;
    mi_attn_layout L;
    const float *d[3];
    double scale;
    if (mi_py_qkv_args(q_obj, k_obj, v_obj, qkv, &L, d) < 0) goto done;
    if (mi_py_scale_arg(scale_obj, L.d_head, &scale) < 0) goto done;
    if (pm.arr) {
        npy_intp want[2] = {L.batch, L.k_len};
        char why[160], s1[128];
        snprintf(why, sizeof why, "([batch, pos] of q %s)", mi_py_shape_str(qkv[0].arr, s1));
        if (mi_arg_shape(&pm, 2, want, why) < 0) goto done;
    }
    npy_intp pshape[4] = {L.batch, L.n_heads, L.q_len, L.k_len};
    npy_intp zshape[4] = {L.batch, L.q_len, L.n_heads, L.d_head};
    float *zd, *pd;
    if (!(z = mi_py_empty(m, 4, zshape, &zd))) goto done;
    if (!(pattern = mi_py_empty(m, 4, pshape, &pd))) goto done;
    {
        const float *md = mi_arg_data(&pm);
        mi_status st;
        Py_BEGIN_ALLOW_THREADS
        st = mi_mha_forward(&L, d[0], d[1], d[2], (float)scale, causal, md, pd, zd);
        Py_END_ALLOW_THREADS
        if (st != MI_OK) { mi_py_raise(st); goto done; }
    }
    res = return_pattern ? PyTuple_Pack(2, z, pattern) : Py_NewRef(z);
done:
    for (int i = 0; i < 3; i++) mi_arg_release(&qkv[i]);
    mi_arg_release(&pm);
    Py_XDECREF(z); Py_XDECREF(pattern);
    return res;
}

static PyMethodDef ops_methods[] = {
    KW_METHOD(matmul),
    KW_METHOD(layer_norm),
    KW_METHOD(rms_norm),
    KW_METHOD(gelu),
    {"relu", py_relu, METH_O, "relu(x)\n--\n\nmax(x, 0) elementwise; NaN stays NaN."},
    {"silu", py_silu, METH_O, "silu(x)\n--\n\nx * sigmoid(x) elementwise."},
    KW_METHOD(softmax),
    KW_METHOD(attention),
    {NULL, NULL, 0, NULL},
};

int mi_py_ops_exec(PyObject *m) { return PyModule_AddFunctions(m, ops_methods); }
