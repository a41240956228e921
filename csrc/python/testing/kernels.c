/* kernels.c - mechinterp_c._testing: the raw kernel contracts, for the tests
 * that compare each kernel (and its plain reference) with torch or NumPy.
 *
 * Not part of the product's API: these take the kernels' own arguments (flat
 * buffers with leading dimensions, accumulating gradients, reference paths)
 * and check them only so far that a wrong call raises instead of crashing. */
#include "python/testing/testing.h"

#include <math.h>
#include <string.h>

#define KW_METHOD(name) \
    {#name, (PyCFunction)(void (*)(void))py_##name, METH_VARARGS | METH_KEYWORDS, name##_doc}

/* A new Buffer-owned float32 array, from _core (its Buffer type and memory). */
static PyObject *empty(PyObject *m, int ndim, const npy_intp *shape, float **data)
{
    mi_testing_state *st = mi_testing_state_of(m);
    return st->api->mi_py_empty(st->core, ndim, shape, data);
}

/* A gradient to accumulate into: the given array (exactly `shape`, used in
 * place) or, when None, a new zero-filled one. A new reference. */
static PyObject *grad_out(PyObject *m, mi_arg *g, int ndim, const npy_intp *shape, float **data)
{
    if (!g->arr) {
        PyObject *a = empty(m, ndim, shape, data);
        if (a) memset(*data, 0, PyArray_NBYTES((PyArrayObject *)a));
        return a;
    }
    if (mi_arg_shape(g, ndim, shape, NULL) < 0) return NULL;
    *data = PyArray_DATA(g->arr);
    return Py_NewRef((PyObject *)g->arr);
}

/* 0 when the per-row scale of a norm has one element per row of x. */
static int scale_rows(const mi_arg *s, npy_intp rows)
{
    if (PyArray_SIZE(s->arr) == rows) return 0;
    char b[128];
    PyErr_Format(PyExc_ValueError, "scale: expected %ld elements (one per row of x), got shape %s",
                 (long)rows, mi_py_shape_str(s->arr, b));
    return -1;
}

#define FLOAT_OPT(name, lo, hi) MI_ARG(name, NPY_FLOAT32, MI_ARG_OPTIONAL, lo, hi)
#define GRAD_OPT(name, lo, hi) MI_ARG(name, NPY_FLOAT32, MI_ARG_OPTIONAL | MI_ARG_INPLACE, lo, hi)

/* ---- gemm ---- */

/* Elements a row-major [rows, cols] matrix with leading dimension ld spans. */
static int64_t span(int64_t rows, int64_t cols, int64_t ld)
{
    return rows == 0 || cols == 0 ? 0 : (rows - 1) * ld + cols;
}

/* Check that flat array `a` holds `batch` matrices of rows x cols with
 * leading dim ld >= cols and element stride `stride` between them. */
static int check_operand(const mi_arg *a, int64_t batch, int64_t rows, int64_t cols, int64_t ld,
                         int64_t stride)
{
    if (ld < cols || ld < 1)
        return PyErr_Format(PyExc_ValueError, "%s: leading dimension %lld is smaller than the "
                            "row width %lld", a->name, (long long)ld, (long long)cols), -1;
    if (stride < 0)
        return PyErr_Format(PyExc_ValueError, "%s: negative batch stride %lld", a->name,
                            (long long)stride), -1;
    int64_t one = span(rows, cols, ld);
    int64_t need = one == 0 ? 0 : (batch - 1) * stride + one;
    if (need > (int64_t)PyArray_SIZE(a->arr))
        return PyErr_Format(PyExc_ValueError, "%s: needs %lld elements for %lld x [%lld, %lld] "
                            "(ld %lld, stride %lld), has %lld", a->name, (long long)need,
                            (long long)batch, (long long)rows, (long long)cols, (long long)ld,
                            (long long)stride, (long long)PyArray_SIZE(a->arr)), -1;
    return 0;
}

PyDoc_STRVAR(_sgemm_doc,
"_sgemm(a, b, c, M, N, K, lda, ldb, ldc, trans_a=False, trans_b=False, bias=None,\n"
"       beta=0.0, batch=1, stride_a=0, stride_b=0, stride_c=0, ref=False)\n--\n\n"
"The raw mi_sgemm contract on flat float32 buffers. c (writable,\n"
"C-contiguous float32) is updated in place: C = beta*C + op(A) @ op(B) + bias.\n"
"batch > 1 runs mi_sgemm_strided_batched; ref=True runs mi_sgemm_ref.\n"
"Buffer sizes are checked against the shapes, leading dims and strides.");

static PyObject *py__sgemm(PyObject *m, PyObject *args, PyObject *kw)
{
    const mi_core_api *core = api_of(m);
    static char *kwlist[] = {"a", "b", "c", "M", "N", "K", "lda", "ldb", "ldc", "trans_a",
                             "trans_b", "bias", "beta", "batch", "stride_a", "stride_b",
                             "stride_c", "ref", NULL};
    mi_arg a = MI_ARG_FLOAT("a", 0, 32), b = MI_ARG_FLOAT("b", 0, 32), c = MI_ARG_OUT("c", 0, 32);
    mi_arg bias = FLOAT_OPT("bias", 1, 1);
    long long M, N, K, lda, ldb, ldc, batch = 1, sa = 0, sb = 0, sc = 0;
    int trans_a = 0, trans_b = 0, ref = 0;
    double beta = 0.0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&O&O&LLLLLL|ppO&dLLLLp:_sgemm", kwlist,
                                     mi_conv_array, &a, mi_conv_array, &b, mi_conv_array, &c,
                                     &M, &N, &K, &lda, &ldb, &ldc, &trans_a, &trans_b,
                                     mi_conv_array, &bias, &beta, &batch, &sa, &sb, &sc, &ref))
        return NULL;
    PyObject *res = NULL;
    if (M < 0 || N < 0 || K < 0 || batch < 1) {
        PyErr_Format(PyExc_ValueError, "_sgemm: M, N, K must be >= 0 and batch >= 1");
        goto done;
    }
    if (beta != 0.0 && beta != 1.0) {
        PyErr_Format(PyExc_ValueError, "_sgemm: beta must be 0 or 1, got %g", beta);
        goto done;
    }
    if (check_operand(&a, batch, trans_a ? K : M, trans_a ? M : K, lda, sa) < 0
        || check_operand(&b, batch, trans_b ? N : K, trans_b ? K : N, ldb, sb) < 0
        || check_operand(&c, batch, M, N, ldc, sc) < 0)
        goto done;
    if (bias.arr && PyArray_DIM(bias.arr, 0) < N) {
        PyErr_Format(PyExc_ValueError, "bias: needs %lld elements, has %ld", N,
                     (long)PyArray_DIM(bias.arr, 0));
        goto done;
    }
    const float *A = mi_arg_data(&a), *B = mi_arg_data(&b), *bias_data = mi_arg_data(&bias);
    float *C = mi_arg_data(&c);
    Py_BEGIN_ALLOW_THREADS
    if (ref) {
        for (long long i = 0; i < batch; i++)
            core->mi_sgemm_ref(trans_a, trans_b, M, N, K, A + i * sa, lda, B + i * sb, ldb, bias_data,
                         (float)beta, C + i * sc, ldc);
    } else if (batch > 1) {
        core->mi_sgemm_strided_batched(trans_a, trans_b, batch, M, N, K, A, lda, sa, B, ldb, sb,
                                 bias_data, (float)beta, C, ldc, sc);
    } else {
        core->mi_sgemm(trans_a, trans_b, M, N, K, A, lda, B, ldb, bias_data, (float)beta, C, ldc);
    }
    Py_END_ALLOW_THREADS
    res = Py_NewRef(Py_None);
done:
    mi_arg_release(&a); mi_arg_release(&b); mi_arg_release(&c); mi_arg_release(&bias);
    return res;
}

PyDoc_STRVAR(_fma_peak_doc, "_fma_peak()\n--\n\nMeasured fp32 FMA peak in GFLOP/s on all "
             "threads (for benchmarks).");

static PyObject *py__fma_peak(PyObject *m, PyObject *unused)
{
    const mi_core_api *core = api_of(m);
    double g;
    Py_BEGIN_ALLOW_THREADS
    g = core->mi_fma_peak_gflops();
    Py_END_ALLOW_THREADS
    return PyFloat_FromDouble(g);
}

/* ---- bf16 GEMM packing ---- */

PyDoc_STRVAR(_bgemm_pack_a_doc,
"_bgemm_pack_a(a, i0, mcur, p0, kp, fast)\n--\n\n"
"The bf16 GEMM's A packing of a[i0:i0+mcur, k pairs p0:p0+kp] (float32 [M, K]) as\n"
"uint32 words, 12-row panels: the AVX512-BF16 packer (fast) or its plain twin.");

static PyObject *py__bgemm_pack_a(PyObject *m, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"a", "i0", "mcur", "p0", "kp", "fast", NULL};
    const mi_core_api *core = api_of(m);
    mi_arg a = MI_ARG_FLOAT("a", 2, 2);
    long long i0, mcur, p0, kp;
    int fast;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&LLLLp:_bgemm_pack_a", kwlist, mi_conv_array, &a,
                                     &i0, &mcur, &p0, &kp, &fast))
        return NULL;
    PyObject *res = NULL;
    const int64_t M = PyArray_DIM(a.arr, 0), K = PyArray_DIM(a.arr, 1);
    if (i0 < 0 || mcur < 0 || i0 + mcur > M || p0 < 0 || kp < 0 || 2 * (p0 + kp) > K + 1) {
        PyErr_SetString(PyExc_ValueError, "_bgemm_pack_a: block outside a");
        goto done;
    }
    if (fast && !core->mi_bgemm_has_avx512bf16()) {
        PyErr_SetString(PyExc_RuntimeError, "_bgemm_pack_a: this CPU has no AVX512-BF16");
        goto done;
    }
    npy_intp n = (npy_intp)((mcur + MI_BGEMM_MR - 1) / MI_BGEMM_MR * MI_BGEMM_MR * kp);
    if (!(res = PyArray_ZEROS(1, &n, NPY_UINT32, 0))) goto done;
    (fast ? core->mi_bgemm_pack_a_avx512bf16 : core->mi_bgemm_pack_a_ref)(
        mi_arg_data(&a), K, K, i0, mcur, p0, kp, PyArray_DATA((PyArrayObject *)res));
done:
    mi_arg_release(&a);
    return res;
}

PyDoc_STRVAR(_bgemm_pack_b_doc,
"_bgemm_pack_b(b, trans_b, p0, kp, j0, cols, fast)\n--\n\n"
"The bf16 GEMM's B packing of op(b)[k pairs p0:p0+kp, j0:j0+cols] (uint16 [K, N], or\n"
"[N, K] with trans_b) as one 32-column panel of uint32 words: the AVX-512 packer\n"
"(fast) or its plain twin.");

static PyObject *py__bgemm_pack_b(PyObject *m, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"b", "trans_b", "p0", "kp", "j0", "cols", "fast", NULL};
    const mi_core_api *core = api_of(m);
    mi_arg b = MI_ARG("b", NPY_UINT16, 0, 2, 2);
    long long p0, kp, j0;
    int trans_b, cols, fast;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&pLLLip:_bgemm_pack_b", kwlist, mi_conv_array, &b,
                                     &trans_b, &p0, &kp, &j0, &cols, &fast))
        return NULL;
    PyObject *res = NULL;
    const int64_t K = PyArray_DIM(b.arr, trans_b ? 1 : 0), N = PyArray_DIM(b.arr, trans_b ? 0 : 1);
    const int64_t ldb = PyArray_DIM(b.arr, 1);
    if (p0 < 0 || kp < 0 || 2 * (p0 + kp) > K + 1 || j0 < 0 || cols < 0 || cols > MI_BGEMM_NR
        || j0 + cols > N) {
        PyErr_SetString(PyExc_ValueError, "_bgemm_pack_b: block outside b");
        goto done;
    }
    if (fast && !core->mi_bgemm_has_avx512bf16()) {
        PyErr_SetString(PyExc_RuntimeError, "_bgemm_pack_b: this CPU has no AVX512-BF16");
        goto done;
    }
    npy_intp n = (npy_intp)(MI_BGEMM_NR * kp);
    if (!(res = PyArray_ZEROS(1, &n, NPY_UINT32, 0))) goto done;
    (fast ? core->mi_bgemm_pack_b_avx512bf16 : core->mi_bgemm_pack_b_ref)(
        trans_b, mi_arg_data(&b), ldb, K, p0, kp, j0, cols, PyArray_DATA((PyArrayObject *)res));
done:
    mi_arg_release(&b);
    return res;
}

/* ---- norms ---- */

PyDoc_STRVAR(_layer_norm_backward_doc,
"_layer_norm_backward(dy, x, scale, w=None, bias=False, dx=None, dw=None, db=None)\n--\n\n"
"LayerNorm backward. scale is the forward's per-row scale. The gradients\n"
"accumulate into dx/dw/db when given (else fresh zeros). Returns (dx, dw, db)\n"
"with dw None when w is None and db None unless bias.");

static PyObject *py__layer_norm_backward(PyObject *m, PyObject *args, PyObject *kw)
{
    const mi_core_api *core = api_of(m);
    static char *kwlist[] = {"dy", "x", "scale", "w", "bias", "dx", "dw", "db", NULL};
    mi_arg dy = MI_ARG_FLOAT("dy", 1, 32), x = MI_ARG_FLOAT("x", 1, 32),
           s = MI_ARG_FLOAT("scale", 1, 32), w = FLOAT_OPT("w", 1, 1),
           dx_a = GRAD_OPT("dx", 1, 32), dw_a = GRAD_OPT("dw", 1, 1), db_a = GRAD_OPT("db", 1, 1);
    int bias = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&O&O&|O&pO&O&O&:_layer_norm_backward", kwlist,
                                     mi_conv_array, &dy, mi_conv_array, &x, mi_conv_array, &s,
                                     mi_conv_array, &w, &bias, mi_conv_array, &dx_a,
                                     mi_conv_array, &dw_a, mi_conv_array, &db_a))
        return NULL;
    PyObject *dx = NULL, *dw = NULL, *db = NULL, *res = NULL;
    int nd = PyArray_NDIM(x.arr);
    npy_intp d = PyArray_DIM(x.arr, nd - 1), rows = mi_py_rows(x.arr);
    if (mi_arg_shape(&dy, nd, PyArray_DIMS(x.arr), NULL) < 0 || scale_rows(&s, rows) < 0) goto done;
    if (w.arr && mi_arg_shape(&w, 1, &d, "to match x's last dim") < 0) goto done;
    float *dxd, *dwd = NULL, *dbd = NULL;
    if (!(dx = grad_out(m, &dx_a, nd, PyArray_DIMS(x.arr), &dxd))) goto done;
    if (w.arr && !(dw = grad_out(m, &dw_a, 1, &d, &dwd))) goto done;
    if (bias && !(db = grad_out(m, &db_a, 1, &d, &dbd))) goto done;
    mi_status st;
    {
        const float *dyd = mi_arg_data(&dy), *xd = mi_arg_data(&x), *sd = mi_arg_data(&s);
        const float *wd = mi_arg_data(&w);
        Py_BEGIN_ALLOW_THREADS
        st = core->mi_layer_norm_backward(dyd, xd, wd, sd, rows, d, dxd, dwd, dbd);
        Py_END_ALLOW_THREADS
    }
    if (st != MI_OK) { core->mi_py_raise(st); goto done; }
    res = PyTuple_Pack(3, dx, dw ? dw : Py_None, db ? db : Py_None);
done:
    mi_arg_release(&dy); mi_arg_release(&x); mi_arg_release(&s); mi_arg_release(&w);
    mi_arg_release(&dx_a); mi_arg_release(&dw_a); mi_arg_release(&db_a);
    Py_XDECREF(dx); Py_XDECREF(dw); Py_XDECREF(db);
    return res;
}

PyDoc_STRVAR(_rms_norm_backward_doc,
"_rms_norm_backward(dy, x, scale, w=None, dx=None, dw=None)\n--\n\n"
"RMSNorm backward; accumulates like _layer_norm_backward.\n"
"Returns (dx, dw) with dw None when w is None.");

static PyObject *py__rms_norm_backward(PyObject *m, PyObject *args, PyObject *kw)
{
    const mi_core_api *core = api_of(m);
    static char *kwlist[] = {"dy", "x", "scale", "w", "dx", "dw", NULL};
    mi_arg dy = MI_ARG_FLOAT("dy", 1, 32), x = MI_ARG_FLOAT("x", 1, 32),
           s = MI_ARG_FLOAT("scale", 1, 32), w = FLOAT_OPT("w", 1, 1),
           dx_a = GRAD_OPT("dx", 1, 32), dw_a = GRAD_OPT("dw", 1, 1);
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&O&O&|O&O&O&:_rms_norm_backward", kwlist,
                                     mi_conv_array, &dy, mi_conv_array, &x, mi_conv_array, &s,
                                     mi_conv_array, &w, mi_conv_array, &dx_a, mi_conv_array, &dw_a))
        return NULL;
    PyObject *dx = NULL, *dw = NULL, *res = NULL;
    int nd = PyArray_NDIM(x.arr);
    npy_intp d = PyArray_DIM(x.arr, nd - 1), rows = mi_py_rows(x.arr);
    if (mi_arg_shape(&dy, nd, PyArray_DIMS(x.arr), NULL) < 0 || scale_rows(&s, rows) < 0) goto done;
    if (w.arr && mi_arg_shape(&w, 1, &d, "to match x's last dim") < 0) goto done;
    float *dxd, *dwd = NULL;
    if (!(dx = grad_out(m, &dx_a, nd, PyArray_DIMS(x.arr), &dxd))) goto done;
    if (w.arr && !(dw = grad_out(m, &dw_a, 1, &d, &dwd))) goto done;
    mi_status st;
    {
        const float *dyd = mi_arg_data(&dy), *xd = mi_arg_data(&x), *sd = mi_arg_data(&s);
        const float *wd = mi_arg_data(&w);
        Py_BEGIN_ALLOW_THREADS
        st = core->mi_rms_norm_backward(dyd, xd, wd, sd, rows, d, dxd, dwd);
        Py_END_ALLOW_THREADS
    }
    if (st != MI_OK) { core->mi_py_raise(st); goto done; }
    res = PyTuple_Pack(2, dx, dw ? dw : Py_None);
done:
    mi_arg_release(&dy); mi_arg_release(&x); mi_arg_release(&s); mi_arg_release(&w);
    mi_arg_release(&dx_a); mi_arg_release(&dw_a);
    Py_XDECREF(dx); Py_XDECREF(dw);
    return res;
}

PyDoc_STRVAR(_tl_norm_doc,
"_tl_norm(x, w=None, b=None, centre=True, eps=1e-5, x_add=None, mode='fused')\n--\n\n"
"TransformerLens's forward norm (kernels/norm.h) of x [rows, d].\n"
"mode 'fused' (mi_tl_norm; x_add adds a residual first), 'split' (mi_tl_norm_scale,\n"
"mi_tl_norm_apply without weights, mi_tl_norm_affine: the hooked path) or 'ref'\n"
"(mi_tl_norm_ref, scalar). Returns (out or None, normalized, scale, x_sum or None).");

static PyObject *py__tl_norm(PyObject *m, PyObject *args, PyObject *kw)
{
    const mi_core_api *core = api_of(m);
    static char *kwlist[] = {"x", "w", "b", "centre", "eps", "x_add", "mode", NULL};
    mi_arg x = MI_ARG_FLOAT("x", 2, 2), w = FLOAT_OPT("w", 1, 1), b = FLOAT_OPT("b", 1, 1),
           xa = FLOAT_OPT("x_add", 2, 2);
    int centre = 1;
    double eps = 1e-5;
    const char *mode = "fused";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&|O&O&pdO&s:_tl_norm", kwlist, mi_conv_array, &x,
                                     mi_conv_array, &w, mi_conv_array, &b, &centre, &eps,
                                     mi_conv_array, &xa, &mode))
        return NULL;
    PyObject *out = Py_NewRef(Py_None), *yn = NULL, *sc = NULL, *xs = Py_NewRef(Py_None), *res = NULL;
    int fused = !strcmp(mode, "fused"), split = !strcmp(mode, "split"), ref = !strcmp(mode, "ref");
    if (!fused && !split && !ref) {
        PyErr_Format(PyExc_ValueError, "mode: expected 'fused', 'split' or 'ref', got '%s'", mode);
        goto done;
    }
    npy_intp rows = PyArray_DIM(x.arr, 0), d = PyArray_DIM(x.arr, 1);
    if ((w.arr && mi_arg_shape(&w, 1, &d, NULL) < 0) || (b.arr && mi_arg_shape(&b, 1, &d, NULL) < 0))
        goto done;
    if (b.arr && !w.arr) { PyErr_SetString(PyExc_ValueError, "b: needs w"); goto done; }
    if (xa.arr) {
        if (split) { PyErr_SetString(PyExc_ValueError, "x_add: only with mode 'fused' or 'ref'"); goto done; }
        if (mi_arg_shape(&xa, 2, PyArray_DIMS(x.arr), "(the shape of x)") < 0) goto done;
    }
    npy_intp shape[2] = {rows, d};
    float *od = NULL, *nd, *sd, *xsd = NULL;
    if (w.arr) { Py_SETREF(out, empty(m, 2, shape, &od)); if (!out) goto done; }
    if (xa.arr) { Py_SETREF(xs, empty(m, 2, shape, &xsd)); if (!xs) goto done; }
    if (!(yn = empty(m, 2, shape, &nd)) || !(sc = empty(m, 1, shape, &sd))) goto done;
    {
        const float *xd = mi_arg_data(&x), *ad = mi_arg_data(&xa);
        const float *wd = mi_arg_data(&w), *bd = mi_arg_data(&b);
        Py_BEGIN_ALLOW_THREADS
        if (fused) core->mi_tl_norm(centre, xd, ad, xsd, wd, bd, (float)eps, rows, d, sd, nd, od);
        else if (ref) core->mi_tl_norm_ref(centre, xd, ad, xsd, wd, bd, (float)eps, rows, d, sd, nd, od);
        else {
            core->mi_tl_norm_scale(centre, xd, (float)eps, rows, d, sd);
            core->mi_tl_norm_apply(centre, xd, sd, NULL, NULL, rows, d, nd, NULL);
            if (wd) core->mi_tl_norm_affine(nd, wd, bd, rows, d, od);
        }
        Py_END_ALLOW_THREADS
    }
    res = PyTuple_Pack(4, out, yn, sc, xs);
done:
    mi_arg_release(&x); mi_arg_release(&w); mi_arg_release(&b); mi_arg_release(&xa);
    Py_XDECREF(out); Py_XDECREF(yn); Py_XDECREF(sc); Py_XDECREF(xs);
    return res;
}

/* ---- activations and softmax ---- */

PyDoc_STRVAR(_activation_backward_doc,
"_activation_backward(name, x, dy, dx=None)\n--\n\n"
"dx += dy * act'(x) for name in 'relu', 'gelu', 'gelu_tanh', 'silu' (x is the\n"
"activation's input). Returns dx.");

static PyObject *py__activation_backward(PyObject *m, PyObject *args, PyObject *kw)
{
    const mi_core_api *core = api_of(m);
    static char *kwlist[] = {"name", "x", "dy", "dx", NULL};
    const char *name;
    mi_arg x = MI_ARG_FLOAT("x", 0, 32), dy = MI_ARG_FLOAT("dy", 0, 32), dx_a = GRAD_OPT("dx", 0, 32);
    if (!PyArg_ParseTupleAndKeywords(args, kw, "sO&O&|O&:_activation_backward", kwlist, &name,
                                     mi_conv_array, &x, mi_conv_array, &dy, mi_conv_array, &dx_a))
        return NULL;
    PyObject *dx = NULL;
    mi_activation act;
    if (!strcmp(name, "relu")) act = MI_ACT_RELU;
    else if (!strcmp(name, "gelu")) act = MI_ACT_GELU;
    else if (!strcmp(name, "gelu_tanh") || !strcmp(name, "gelu_new")) act = MI_ACT_GELU_TANH;
    else if (!strcmp(name, "silu")) act = MI_ACT_SILU;
    else {
        PyErr_Format(PyExc_ValueError, "name: expected 'relu', 'gelu', 'gelu_tanh' or 'silu', "
                     "got '%s'", name);
        goto done;
    }
    int nd = PyArray_NDIM(x.arr);
    if (mi_arg_shape(&dy, nd, PyArray_DIMS(x.arr), NULL) < 0) goto done;
    float *dxd;
    if (!(dx = grad_out(m, &dx_a, nd, PyArray_DIMS(x.arr), &dxd))) goto done;
    {
        const float *xd = mi_arg_data(&x), *dyd = mi_arg_data(&dy);
        npy_intp n = PyArray_SIZE(x.arr);
        Py_BEGIN_ALLOW_THREADS
        core->mi_activation_backward(act, xd, dyd, dxd, n);
        Py_END_ALLOW_THREADS
    }
done:
    mi_arg_release(&x); mi_arg_release(&dy); mi_arg_release(&dx_a);
    return dx;
}

PyDoc_STRVAR(_softcap_doc,
"_softcap(x, cap)\n--\n\n"
"mi_softcap: cap * tanh(x / cap) of a float32 array (any shape, C-contiguous) under\n"
"the instruction set in use (force_isa). Returns a new array.");

static PyObject *py__softcap(PyObject *m, PyObject *args, PyObject *kw)
{
    const mi_core_api *core = api_of(m);
    static char *kwlist[] = {"x", "cap", NULL};
    mi_arg x = MI_ARG_FLOAT("x", 0, 32);
    double cap;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&d:_softcap", kwlist, mi_conv_array, &x, &cap))
        return NULL;
    PyObject *y = NULL;
    float *yd;
    if (!(cap > 0.0) || !isfinite(cap)) {
        PyErr_Format(PyExc_ValueError, "cap: expected a finite number > 0, got %g", cap);
        goto done;
    }
    if (!(y = empty(m, PyArray_NDIM(x.arr), PyArray_DIMS(x.arr), &yd))) goto done;
    {
        const float *xd = mi_arg_data(&x);
        npy_intp n = PyArray_SIZE(x.arr);
        Py_BEGIN_ALLOW_THREADS
        core->mi_softcap((float)cap, xd, yd, n);
        Py_END_ALLOW_THREADS
    }
done:
    mi_arg_release(&x);
    return y;
}

PyDoc_STRVAR(_relu_backward_bias_doc,
"_relu_backward_bias(x, dy, db)\n--\n\n"
"The MLP's fused relu step: dy [rows, cols] is overwritten IN PLACE with\n"
"dy * relu'(x) (x [rows, cols]) and db [cols] += its column sums. float32, C-contiguous.");

static PyObject *py__relu_backward_bias(PyObject *m, PyObject *args, PyObject *kw)
{
    const mi_core_api *core = api_of(m);
    static char *kwlist[] = {"x", "dy", "db", NULL};
    mi_arg x = MI_ARG_FLOAT("x", 2, 2), dy = MI_ARG_OUT("dy", 2, 2), db = MI_ARG_OUT("db", 1, 1);
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&O&O&:_relu_backward_bias", kwlist,
                                     mi_conv_array, &x, mi_conv_array, &dy, mi_conv_array, &db))
        return NULL;
    PyObject *res = NULL;
    npy_intp cols = PyArray_DIM(x.arr, 1);
    if (mi_arg_shape(&dy, 2, PyArray_DIMS(x.arr), NULL) == 0 && mi_arg_shape(&db, 1, &cols, NULL) == 0) {
        mi_status st;
        const float *xd = mi_arg_data(&x);
        float *dyd = mi_arg_data(&dy), *dbd = mi_arg_data(&db);
        npy_intp rows = PyArray_DIM(x.arr, 0);
        Py_BEGIN_ALLOW_THREADS
        st = core->mi_relu_backward_bias(xd, dyd, rows, cols, dyd, dbd);
        Py_END_ALLOW_THREADS
        res = st == MI_OK ? Py_NewRef(Py_None) : core->mi_py_raise(st);
    }
    mi_arg_release(&x); mi_arg_release(&dy); mi_arg_release(&db);
    return res;
}

PyDoc_STRVAR(_softmax_backward_doc,
"_softmax_backward(y, dy, dx=None)\n--\n\n"
"Softmax backward over the last axis from the forward output y;\n"
"dx += y * (dy - sum(dy * y)). Returns dx.");

static PyObject *py__softmax_backward(PyObject *m, PyObject *args, PyObject *kw)
{
    const mi_core_api *core = api_of(m);
    static char *kwlist[] = {"y", "dy", "dx", NULL};
    mi_arg y = MI_ARG_FLOAT("y", 1, 32), dy = MI_ARG_FLOAT("dy", 1, 32), dx_a = GRAD_OPT("dx", 1, 32);
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&O&|O&:_softmax_backward", kwlist, mi_conv_array,
                                     &y, mi_conv_array, &dy, mi_conv_array, &dx_a))
        return NULL;
    PyObject *dx = NULL;
    int nd = PyArray_NDIM(y.arr);
    float *dxd;
    if (mi_arg_shape(&dy, nd, PyArray_DIMS(y.arr), NULL) < 0) goto done;
    if (!(dx = grad_out(m, &dx_a, nd, PyArray_DIMS(y.arr), &dxd))) goto done;
    {
        const float *yd = mi_arg_data(&y), *dyd = mi_arg_data(&dy);
        npy_intp cols = PyArray_DIM(y.arr, nd - 1), rows = mi_py_rows(y.arr);
        Py_BEGIN_ALLOW_THREADS
        core->mi_softmax_rows_backward(yd, dyd, dxd, rows, cols);
        Py_END_ALLOW_THREADS
    }
done:
    mi_arg_release(&y); mi_arg_release(&dy); mi_arg_release(&dx_a);
    return dx;
}

/* ---- attention ---- */

PyDoc_STRVAR(_attn_fused_doc,
"_attn_fused(q, k, v, causal=True, padding_mask=None, scale=None, keep=False)\n--\n\n"
"mi_attn_fused (kernels/attention.h) on q, k, v [batch, pos, head, d_head]\n"
"float32; padding_mask [batch, pos] float32 (0 masks a key); scale defaults to\n"
"1/sqrt(d_head). Returns (z, scores, pattern), scores and pattern\n"
"[batch, head, pos, pos] when keep=True, else None (per-thread scratch).");

static PyObject *py__attn_fused(PyObject *m, PyObject *args, PyObject *kw)
{
    const mi_core_api *core = api_of(m);
    static char *kwlist[] = {"q", "k", "v", "causal", "padding_mask", "scale", "keep", NULL};
    mi_arg a[3] = {MI_ARG_FLOAT("q", 4, 4), MI_ARG_FLOAT("k", 4, 4), MI_ARG_FLOAT("v", 4, 4)};
    mi_arg mask = FLOAT_OPT("padding_mask", 2, 2);
    PyObject *scale_obj = Py_None;
    int causal = 1, keep = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&O&O&|pO&Op:_attn_fused", kwlist, mi_conv_array,
                                     &a[0], mi_conv_array, &a[1], mi_conv_array, &a[2], &causal,
                                     mi_conv_array, &mask, &scale_obj, &keep))
        return NULL;
    PyObject *z = NULL, *sc = Py_NewRef(Py_None), *pat = Py_NewRef(Py_None), *res = NULL;
    for (int i = 1; i < 3; i++)
        if (mi_arg_shape(&a[i], 4, PyArray_DIMS(a[0].arr), "(the shape of q)") < 0) goto done;
    npy_intp B = PyArray_DIM(a[0].arr, 0), T = PyArray_DIM(a[0].arr, 1), H = PyArray_DIM(a[0].arr, 2),
             Dh = PyArray_DIM(a[0].arr, 3);
    npy_intp bt[2] = {B, T};
    if (mask.arr && mi_arg_shape(&mask, 2, bt, "([batch, pos] like q)") < 0) goto done;
    double scale;
    if (mi_py_scale_arg(scale_obj, Dh, &scale) < 0) goto done;
    npy_intp zshape[4] = {B, T, H, Dh}, pshape[4] = {B, H, T, T};
    float *zd, *sd = NULL, *pd = NULL;
    if (!(z = empty(m, 4, zshape, &zd))) goto done;
    if (keep) {
        Py_SETREF(sc, empty(m, 4, pshape, &sd));
        if (!sc) goto done;
        Py_SETREF(pat, empty(m, 4, pshape, &pd));
        if (!pat) goto done;
    }
    {
        const mi_attn_layout L = mi_attn_self_layout(B, T, H, Dh, H * Dh, T * H * Dh);
        const float *qd = mi_arg_data(&a[0]), *kd = mi_arg_data(&a[1]), *vd = mi_arg_data(&a[2]);
        const float *md = mi_arg_data(&mask);
        mi_status st;
        Py_BEGIN_ALLOW_THREADS
        st = core->mi_attn_fused(&L, qd, kd, vd, (float)scale, causal, md, sd, pd, zd);
        Py_END_ALLOW_THREADS
        if (st != MI_OK) { core->mi_py_raise(st); goto done; }
    }
    res = PyTuple_Pack(3, z, sc, pat);
done:
    for (int i = 0; i < 3; i++) mi_arg_release(&a[i]);
    mi_arg_release(&mask);
    Py_XDECREF(z); Py_XDECREF(sc); Py_XDECREF(pat);
    return res;
}

PyDoc_STRVAR(_attention_backward_doc,
"_attention_backward(q, k, v, pattern, dz, causal=True, scale=None, dq=None, dk=None, dv=None)\n"
"--\n\n"
"Attention backward. q, k, v, dz [batch, pos, head, d_head]; pattern\n"
"[batch, head, q, k] from the forward. Or the fused layout: q is qkv\n"
"[batch, pos, 3, head, d_head] with k and v None; then dq is the fused gradient\n"
"and the result is (dqkv,). Gradients accumulate into dq/dk/dv when given.\n"
"Returns (dq, dk, dv).");

static PyObject *py__attention_backward(PyObject *m, PyObject *args, PyObject *kw)
{
    const mi_core_api *core = api_of(m);
    static char *kwlist[] = {"q", "k", "v", "pattern", "dz", "causal", "scale", "dq", "dk", "dv",
                             NULL};
    PyObject *q_o, *k_o, *v_o, *s_o = Py_None;
    mi_arg p = MI_ARG_FLOAT("pattern", 4, 4), dz = MI_ARG_FLOAT("dz", 4, 4);
    mi_arg g[3] = {GRAD_OPT("dq", 4, 5), GRAD_OPT("dk", 4, 4), GRAD_OPT("dv", 4, 4)};
    int causal = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO&O&|pOO&O&O&:_attention_backward", kwlist,
                                     &q_o, &k_o, &v_o, mi_conv_array, &p, mi_conv_array, &dz,
                                     &causal, &s_o, mi_conv_array, &g[0], mi_conv_array, &g[1],
                                     mi_conv_array, &g[2]))
        return NULL;
    mi_arg qkv[3] = {{0}};
    PyObject *dq = NULL, *dk = NULL, *dv = NULL, *res = NULL;
    mi_attn_layout L;
    int fused = k_o == Py_None && v_o == Py_None;
    const float *d[3];
    float *dqd, *dkd, *dvd;
    if (mi_py_qkv_args(q_o, k_o, v_o, qkv, &L, d) < 0) goto done;
    npy_intp *qshape = PyArray_DIMS(qkv[0].arr);
    if (fused) {
        if (!(dq = grad_out(m, &g[0], 5, qshape, &dqd))) goto done;
        dkd = dqd + L.n_heads * L.d_head;
        dvd = dkd + L.n_heads * L.d_head;
    } else {
        if (!(dq = grad_out(m, &g[0], 4, qshape, &dqd))) goto done;
        if (!(dk = grad_out(m, &g[1], 4, qshape, &dkd))) goto done;
        if (!(dv = grad_out(m, &g[2], 4, qshape, &dvd))) goto done;
    }
    npy_intp pshape[4] = {L.batch, L.n_heads, L.q_len, L.k_len};
    npy_intp zshape[4] = {L.batch, L.q_len, L.n_heads, L.d_head};
    if (mi_arg_shape(&p, 4, pshape, NULL) < 0 || mi_arg_shape(&dz, 4, zshape, NULL) < 0) goto done;
    double scale;
    if (mi_py_scale_arg(s_o, L.d_head, &scale) < 0) goto done;
    mi_status st;
    {
        const float *pd = mi_arg_data(&p), *dzd = mi_arg_data(&dz);
        Py_BEGIN_ALLOW_THREADS
        st = core->mi_attn_backward(&L, d[0], d[1], d[2], pd, NULL, dzd, (float)scale, causal, dqd, dkd, dvd);
        Py_END_ALLOW_THREADS
    }
    if (st != MI_OK) { core->mi_py_raise(st); goto done; }
    res = fused ? PyTuple_Pack(1, dq) : PyTuple_Pack(3, dq, dk, dv);
done:
    for (int i = 0; i < 3; i++) { mi_arg_release(&qkv[i]); mi_arg_release(&g[i]); }
    mi_arg_release(&p); mi_arg_release(&dz);
    Py_XDECREF(dq); Py_XDECREF(dk); Py_XDECREF(dv);
    return res;
}

/* ---- the general attention contract (kernels/attention.h) ----
 * q, k, v (and dq, dk, dv) are read in place as they are, strided views
 * included (into a fused QKV buffer, or a [batch, kv_head, capacity, d_head]
 * KV cache seen as [batch, pos, kv_head, d_head]), so the kernels read them
 * through their strides. */

#define ATTN_IN(name) MI_ARG(name, NPY_FLOAT32, MI_ARG_EXACT | MI_ARG_STRIDED, 4, 4)
#define ATTN_GRAD(name) MI_ARG(name, NPY_FLOAT32, MI_ARG_INPLACE | MI_ARG_STRIDED, 4, 4)

/* Element strides of a converted [batch, pos, head, d_head] argument. */
static mi_attn_stride attn_stride(const mi_arg *a)
{
    const npy_intp *st = PyArray_STRIDES(a->arr), f = (npy_intp)sizeof(float);
    return (mi_attn_stride){st[0] / f, st[1] / f, st[2] / f};
}

/* The layout of q [B,Tq,H,Dh], k and v [B,Tk,Hkv,Dh] (converted); the head
 * counts and offset are checked by the core. 0, or -1 with the exception set. */
static int attn_general_layout(const mi_core_api *core, const mi_arg a[3], long long offset,
                               long long window, double softcap, mi_attn_layout *L)
{
    PyArrayObject *q = a[0].arr, *k = a[1].arr, *v = a[2].arr;
    if (!PyArray_SAMESHAPE(k, v) || PyArray_DIM(k, 0) != PyArray_DIM(q, 0) ||
        PyArray_DIM(k, 3) != PyArray_DIM(q, 3)) {
        char b1[128], b2[128], b3[128];
        PyErr_Format(PyExc_ValueError, "k, v: expected [batch, k_len, n_kv_heads, d_head] with "
                     "q's batch and d_head (q %s), got k %s and v %s", mi_py_shape_str(q, b1),
                     mi_py_shape_str(k, b2), mi_py_shape_str(v, b3));
        return -1;
    }
    *L = (mi_attn_layout){.batch = PyArray_DIM(q, 0), .q_len = PyArray_DIM(q, 1),
                          .k_len = PyArray_DIM(k, 1), .offset = offset,
                          .n_heads = PyArray_DIM(q, 2), .n_kv_heads = PyArray_DIM(k, 2),
                          .d_head = PyArray_DIM(q, 3), .q = attn_stride(&a[0]),
                          .k = attn_stride(&a[1]), .v = attn_stride(&a[2]),
                          .window = window, .softcap = (float)softcap};
    mi_status st = core->mi_attn_check(L);
    if (st != MI_OK) { core->mi_py_raise(st); return -1; }
    return 0;
}

PyDoc_STRVAR(_attention_general_doc,
"_attention_general(q, k, v, causal=True, offset=0, padding_mask=None, scale=None, mode='fused',\n"
"                   window=0, softcap=0.0)\n"
"--\n\n"
"The general attention kernels. q [batch, q_len, n_heads, d_head],\n"
"k, v [batch, k_len, n_kv_heads, d_head] float32, read in place through their\n"
"strides; query i sits at key position offset + i; padding_mask [batch, k_len]\n"
"float32 (0 masks a key); window: sliding window of keys (0: none); softcap:\n"
"scores = softcap * tanh(raw / softcap) (0: off). mode 'steps' runs mi_attn_scores, mi_softmax_rows and\n"
"mi_attn_apply; 'fused' mi_attn_fused keeping scores and pattern; 'fused_z'\n"
"mi_attn_fused keeping neither. Returns (z, scores, pattern), scores and pattern\n"
"[batch, n_heads, q_len, k_len] or None.");

static PyObject *py__attention_general(PyObject *m, PyObject *args, PyObject *kw)
{
    const mi_core_api *core = api_of(m);
    static char *kwlist[] = {"q", "k", "v", "causal", "offset", "padding_mask", "scale", "mode",
                             "window", "softcap", NULL};
    mi_arg a[3] = {ATTN_IN("q"), ATTN_IN("k"), ATTN_IN("v")};
    mi_arg mask = FLOAT_OPT("padding_mask", 2, 2);
    PyObject *so = Py_None;
    int causal = 1;
    long long offset = 0, window = 0;
    double softcap = 0.0;
    const char *mode = "fused";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&O&O&|pLO&OsLd:_attention_general", kwlist,
                                     mi_conv_array, &a[0], mi_conv_array, &a[1], mi_conv_array,
                                     &a[2], &causal, &offset, mi_conv_array, &mask, &so, &mode,
                                     &window, &softcap))
        return NULL;
    PyObject *z = NULL, *sc = NULL, *pat = NULL, *res = NULL;
    const int steps = !strcmp(mode, "steps"), keep = steps || !strcmp(mode, "fused");
    if (!keep && strcmp(mode, "fused_z")) {
        PyErr_Format(PyExc_ValueError, "mode: expected 'steps', 'fused' or 'fused_z', got '%s'",
                     mode);
        goto done;
    }
    mi_attn_layout L;
    if (attn_general_layout(core, a, offset, window, softcap, &L) < 0) goto done;
    npy_intp bk[2] = {L.batch, L.k_len};
    if (mask.arr && mi_arg_shape(&mask, 2, bk, "([batch, k_len] like k)") < 0) goto done;
    double scale;
    if (mi_py_scale_arg(so, L.d_head, &scale) < 0) goto done;
    npy_intp zshape[4] = {L.batch, L.q_len, L.n_heads, L.d_head},
             pshape[4] = {L.batch, L.n_heads, L.q_len, L.k_len};
    float *zd, *sd = NULL, *pd = NULL;
    if (!(z = empty(m, 4, zshape, &zd))) goto done;
    if (keep && (!(sc = empty(m, 4, pshape, &sd)) || !(pat = empty(m, 4, pshape, &pd)))) goto done;
    {
        const float *qd = mi_arg_data(&a[0]), *kd = mi_arg_data(&a[1]), *vd = mi_arg_data(&a[2]);
        const float *md = mi_arg_data(&mask);
        mi_status st;
        Py_BEGIN_ALLOW_THREADS
        if (steps) {
            st = core->mi_attn_scores(&L, qd, kd, (float)scale, causal, md, sd);
            if (st == MI_OK) {
                core->mi_softmax_rows(sd, pd, L.batch * L.n_heads * L.q_len, L.k_len);
                st = core->mi_attn_apply(&L, pd, vd, zd);
            }
        } else {
            st = core->mi_attn_fused(&L, qd, kd, vd, (float)scale, causal, md, sd, pd, zd);
        }
        Py_END_ALLOW_THREADS
        if (st != MI_OK) { core->mi_py_raise(st); goto done; }
    }
    res = PyTuple_Pack(3, z, sc ? sc : Py_None, pat ? pat : Py_None);
done:
    for (int i = 0; i < 3; i++) mi_arg_release(&a[i]);
    mi_arg_release(&mask);
    Py_XDECREF(z); Py_XDECREF(sc); Py_XDECREF(pat);
    return res;
}

PyDoc_STRVAR(_attention_general_backward_doc,
"_attention_general_backward(q, k, v, pattern, dz, dq, dk, dv, causal=True, offset=0, scale=None,\n"
"                            window=0, softcap=0.0, scores=None)\n"
"--\n\n"
"mi_attn_backward on the general layout of _attention_general.\n"
"pattern and scores (the forward's capped scores, needed with a softcap)\n"
"[batch, n_heads, q_len, k_len] and dz [batch, q_len, n_heads, d_head]\n"
"float32; dq, dk, dv writable float32 arrays of q's, k's and v's shape and\n"
"strides, into which the gradients accumulate. Returns None.");

static PyObject *py__attention_general_backward(PyObject *m, PyObject *args, PyObject *kw)
{
    const mi_core_api *core = api_of(m);
    static char *kwlist[] = {"q", "k", "v", "pattern", "dz", "dq", "dk", "dv", "causal", "offset",
                             "scale", "window", "softcap", "scores", NULL};
    mi_arg a[3] = {ATTN_IN("q"), ATTN_IN("k"), ATTN_IN("v")};
    mi_arg g[3] = {ATTN_GRAD("dq"), ATTN_GRAD("dk"), ATTN_GRAD("dv")};
    mi_arg p = MI_ARG_FLOAT("pattern", 4, 4), dz = MI_ARG_FLOAT("dz", 4, 4);
    mi_arg sc = FLOAT_OPT("scores", 4, 4);
    PyObject *so = Py_None, *res = NULL;
    int causal = 1;
    long long offset = 0, window = 0;
    double softcap = 0.0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&O&O&O&O&O&O&O&|pLOLdO&:_attention_general_backward",
                                     kwlist, mi_conv_array, &a[0], mi_conv_array, &a[1],
                                     mi_conv_array, &a[2], mi_conv_array, &p, mi_conv_array, &dz,
                                     mi_conv_array, &g[0], mi_conv_array, &g[1], mi_conv_array,
                                     &g[2], &causal, &offset, &so, &window, &softcap,
                                     mi_conv_array, &sc))
        return NULL;
    mi_attn_layout L;
    if (attn_general_layout(core, a, offset, window, softcap, &L) < 0) goto done;
    for (int i = 0; i < 3; i++) {
        const mi_attn_stride s = attn_stride(&g[i]), want = attn_stride(&a[i]);
        if (!PyArray_SAMESHAPE(g[i].arr, a[i].arr) || s.batch != want.batch ||
            s.pos != want.pos || s.head != want.head) {
            PyErr_Format(PyExc_ValueError, "%s: expected the shape and strides of %s", g[i].name,
                         a[i].name);
            goto done;
        }
    }
    npy_intp zshape[4] = {L.batch, L.q_len, L.n_heads, L.d_head},
             pshape[4] = {L.batch, L.n_heads, L.q_len, L.k_len};
    if (mi_arg_shape(&p, 4, pshape, NULL) < 0 || mi_arg_shape(&dz, 4, zshape, NULL) < 0) goto done;
    if (sc.arr && mi_arg_shape(&sc, 4, pshape, "(the pattern's shape)") < 0) goto done;
    double scale;
    if (mi_py_scale_arg(so, L.d_head, &scale) < 0) goto done;
    {
        const float *qd = mi_arg_data(&a[0]), *kd = mi_arg_data(&a[1]), *vd = mi_arg_data(&a[2]);
        const float *pd = mi_arg_data(&p), *dzd = mi_arg_data(&dz), *sd = mi_arg_data(&sc);
        float *dqd = mi_arg_data(&g[0]), *dkd = mi_arg_data(&g[1]), *dvd = mi_arg_data(&g[2]);
        mi_status st;
        Py_BEGIN_ALLOW_THREADS
        st = core->mi_attn_backward(&L, qd, kd, vd, pd, sd, dzd, (float)scale, causal, dqd, dkd, dvd);
        Py_END_ALLOW_THREADS
        if (st != MI_OK) { core->mi_py_raise(st); goto done; }
    }
    res = Py_NewRef(Py_None);
done:
    for (int i = 0; i < 3; i++) { mi_arg_release(&a[i]); mi_arg_release(&g[i]); }
    mi_arg_release(&p); mi_arg_release(&dz); mi_arg_release(&sc);
    return res;
}

/* ---- loss and embedding ---- */

PyDoc_STRVAR(_cross_entropy_doc,
"_cross_entropy(logits, targets, ignore_index=-100, dlogits=None)\n--\n\n"
"Softmax cross-entropy of logits [rows, vocab] against integer targets [rows].\n"
"Returns (mean_loss, per_row_losses, dlogits) where dlogits (accumulated into\n"
"the given array, else fresh) is the gradient of the mean.");

static PyObject *py__cross_entropy(PyObject *m, PyObject *args, PyObject *kw)
{
    const mi_core_api *core = api_of(m);
    static char *kwlist[] = {"logits", "targets", "ignore_index", "dlogits", NULL};
    mi_arg l = MI_ARG_FLOAT("logits", 2, 2), t = MI_ARG_INT64("targets", 0, 32),
           dl_a = GRAD_OPT("dlogits", 2, 2);
    long long ignore = MI_IGNORE_INDEX;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&O&|LO&:_cross_entropy", kwlist, mi_conv_array,
                                     &l, mi_conv_array, &t, &ignore, mi_conv_array, &dl_a))
        return NULL;
    PyObject *losses = NULL, *dl = NULL, *res = NULL;
    npy_intp rows = PyArray_DIM(l.arr, 0), vocab = PyArray_DIM(l.arr, 1);
    char why[160], s1[128];
    snprintf(why, sizeof why, "to match logits %s", mi_py_shape_str(l.arr, s1));
    if (mi_arg_shape(&t, 1, &rows, why) < 0) goto done;
    float *lossd, *dld, mean;
    if (!(losses = empty(m, 1, &rows, &lossd))) goto done;
    if (!(dl = grad_out(m, &dl_a, 2, PyArray_DIMS(l.arr), &dld))) goto done;
    mi_status st;
    {
        const float *ld = mi_arg_data(&l);
        const int64_t *td = mi_arg_data(&t);
        Py_BEGIN_ALLOW_THREADS
        st = core->mi_cross_entropy(ld, td, rows, vocab, ignore, &mean, lossd, dld);
        Py_END_ALLOW_THREADS
    }
    if (st != MI_OK) { core->mi_py_raise(st); goto done; }
    res = Py_BuildValue("(dOO)", (double)mean, losses, dl);
done:
    mi_arg_release(&l); mi_arg_release(&t); mi_arg_release(&dl_a);
    Py_XDECREF(losses); Py_XDECREF(dl);
    return res;
}

PyDoc_STRVAR(_embedding_doc,
"_embedding(W, tokens)\n--\n\n"
"Embedding lookup W[tokens] for W [vocab, d] and integer tokens of any shape;\n"
"result tokens.shape + (d,).");

static PyObject *py__embedding(PyObject *m, PyObject *args, PyObject *kw)
{
    const mi_core_api *core = api_of(m);
    static char *kwlist[] = {"W", "tokens", NULL};
    mi_arg w = MI_ARG_FLOAT("W", 2, 2), t = MI_ARG_INT64("tokens", 0, 31);
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&O&:_embedding", kwlist, mi_conv_array, &w,
                                     mi_conv_array, &t))
        return NULL;
    PyObject *out = NULL;
    int nd = PyArray_NDIM(t.arr);
    npy_intp shape[32];
    memcpy(shape, PyArray_DIMS(t.arr), sizeof(npy_intp) * nd);
    shape[nd] = PyArray_DIM(w.arr, 1);
    float *od;
    if ((out = empty(m, nd + 1, shape, &od))) {
        const float *wd = mi_arg_data(&w);
        const int64_t *td = mi_arg_data(&t);
        npy_intp vocab = PyArray_DIM(w.arr, 0), d = PyArray_DIM(w.arr, 1), n = PyArray_SIZE(t.arr);
        mi_status st;
        Py_BEGIN_ALLOW_THREADS
        st = core->mi_embedding_forward(wd, vocab, d, td, n, od);
        Py_END_ALLOW_THREADS
        if (st != MI_OK) { core->mi_py_raise(st); Py_CLEAR(out); }
    }
    mi_arg_release(&w); mi_arg_release(&t);
    return out;
}

PyDoc_STRVAR(_embedding_backward_doc,
"_embedding_backward(dout, tokens, vocab, dW=None)\n--\n\n"
"dW[tokens[i]] += dout[i] (scatter-add) for dout of shape tokens.shape + (d,).\n"
"Returns dW [vocab, d].");

static PyObject *py__embedding_backward(PyObject *m, PyObject *args, PyObject *kw)
{
    const mi_core_api *core = api_of(m);
    static char *kwlist[] = {"dout", "tokens", "vocab", "dW", NULL};
    mi_arg g = MI_ARG_FLOAT("dout", 1, 32), t = MI_ARG_INT64("tokens", 0, 31),
           dw_a = GRAD_OPT("dW", 2, 2);
    Py_ssize_t vocab;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&O&n|O&:_embedding_backward", kwlist,
                                     mi_conv_array, &g, mi_conv_array, &t, &vocab,
                                     mi_conv_array, &dw_a))
        return NULL;
    PyObject *dw = NULL;
    char s1[128], s2[128];
    if (vocab < 0) { PyErr_Format(PyExc_ValueError, "vocab: must be >= 0, got %zd", vocab); goto done; }
    int ok = PyArray_NDIM(g.arr) == PyArray_NDIM(t.arr) + 1;
    for (int i = 0; ok && i < PyArray_NDIM(t.arr); i++) ok = PyArray_DIM(g.arr, i) == PyArray_DIM(t.arr, i);
    if (!ok) {
        PyErr_Format(PyExc_ValueError, "dout: expected shape tokens.shape + (d,) with tokens %s, "
                     "got %s", mi_py_shape_str(t.arr, s1), mi_py_shape_str(g.arr, s2));
        goto done;
    }
    npy_intp d = PyArray_DIM(g.arr, PyArray_NDIM(g.arr) - 1), wshape[2] = {vocab, d};
    float *dwd;
    if (!(dw = grad_out(m, &dw_a, 2, wshape, &dwd))) goto done;
    mi_status st;
    {
        const float *gd = mi_arg_data(&g);
        const int64_t *td = mi_arg_data(&t);
        npy_intp n = PyArray_SIZE(t.arr);
        Py_BEGIN_ALLOW_THREADS
        st = core->mi_embedding_backward(gd, td, n, vocab, d, dwd);
        Py_END_ALLOW_THREADS
    }
    if (st != MI_OK) { core->mi_py_raise(st); Py_CLEAR(dw); }
done:
    mi_arg_release(&g); mi_arg_release(&t); mi_arg_release(&dw_a);
    return dw;
}

/* ---- rotary position embeddings ---- */

PyDoc_STRVAR(_rotary_doc,
"_rotary(x, pos_ids, rotary_dim, adjacent=False, base=10000.0, inverse=False, ref=False,\n"
"        ntk=None)\n--\n\n"
"Rotate x [rows, heads, d_head] (float32) at positions pos_ids [rows] (int64) with\n"
"mi_rotary_apply (ref: the plain reference twin); ntk: (factor, low_freq_factor,\n"
"high_freq_factor, original_ctx_len) for the Llama-3 rule. Returns (y, cos, sin),\n"
"the tables [max(pos_ids) + 1, rotary_dim].");

static PyObject *py__rotary(PyObject *m, PyObject *args, PyObject *kw)
{
    const mi_core_api *core = api_of(m);
    static char *kwlist[] = {"x", "pos_ids", "rotary_dim", "adjacent", "base", "inverse", "ref",
                             "ntk", NULL};
    mi_arg x = MI_ARG_FLOAT("x", 3, 3), p = MI_ARG_INT64("pos_ids", 1, 1);
    Py_ssize_t rd;
    int adjacent = 0, inverse = 0, ref = 0;
    double base = 10000.0, nf = 0, nl = 0, nh = 0, nc = 0;
    PyObject *ntk = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&O&n|pdppO:_rotary", kwlist, mi_conv_array, &x,
                                     mi_conv_array, &p, &rd, &adjacent, &base, &inverse, &ref, &ntk))
        return NULL;
    PyObject *y = NULL, *c = NULL, *sn = NULL, *res = NULL;
    if (ntk != Py_None && !PyArg_ParseTuple(ntk, "dddd:ntk", &nf, &nl, &nh, &nc)) goto done;
    npy_intp rows = PyArray_DIM(x.arr, 0), heads = PyArray_DIM(x.arr, 1), dh = PyArray_DIM(x.arr, 2);
    if (PyArray_DIM(p.arr, 0) != rows) {
        PyErr_SetString(PyExc_ValueError, "_rotary: pos_ids must have one entry per row of x");
        goto done;
    }
    mi_rotary_cfg cfg = {rd, adjacent, (float)base, ntk != Py_None, (float)nf, (float)nl, (float)nh,
                         (float)nc};
    mi_status st = core->mi_rotary_check(&cfg, dh);
    if (st != MI_OK) { core->mi_py_raise(st); goto done; }
    const int64_t *pd = mi_arg_data(&p);
    npy_intp n_pos = 1;
    for (npy_intp i = 0; i < rows; i++) {
        if (pd[i] < 0) { PyErr_SetString(PyExc_ValueError, "_rotary: negative position"); goto done; }
        if (pd[i] + 1 > n_pos) n_pos = pd[i] + 1;
    }
    float *yd, *cd, *sd;
    npy_intp tshape[2] = {n_pos, rd};
    if (!(y = empty(m, 3, PyArray_DIMS(x.arr), &yd)) || !(c = empty(m, 2, tshape, &cd))
        || !(sn = empty(m, 2, tshape, &sd)))
        goto done;
    {
        const float *xd = mi_arg_data(&x);
        Py_BEGIN_ALLOW_THREADS
        core->mi_rotary_table(&cfg, n_pos, cd, sd);
        (ref ? core->mi_rotary_apply_ref : core->mi_rotary_apply)(&cfg, xd, heads * dh, yd, heads * dh,
                                                                 rows, rows, heads, dh, pd, cd, sd,
                                                                 inverse);
        Py_END_ALLOW_THREADS
    }
    res = PyTuple_Pack(3, y, c, sn);
done:
    Py_XDECREF(y); Py_XDECREF(c); Py_XDECREF(sn);
    mi_arg_release(&x); mi_arg_release(&p);
    return res;
}

/* ---- optimiser ---- */

PyDoc_STRVAR(_adamw_step_ref_doc,
"_adamw_step_ref(p, g, m, v, lr, beta1, beta2, eps, weight_decay, bias_correction1,\n"
"                bias_correction2)\n--\n\n"
"The plain scalar AdamW reference (mi_adamw_step_ref) on C-contiguous float32\n"
"arrays of one size, for testing adamw_step against.");

static PyObject *py__adamw_step_ref(PyObject *m, PyObject *args, PyObject *kw)
{
    const mi_core_api *core = api_of(m);
    static char *kwlist[] = {"p", "g", "m", "v", "lr", "beta1", "beta2", "eps", "weight_decay",
                             "bias_correction1", "bias_correction2", NULL};
    mi_arg a[4];
    static const char *names[4] = {"p", "g", "m", "v"};
    for (int i = 0; i < 4; i++) {
        a[i] = MI_ARG_OUT(names[i], 0, 4);
        a[i].who = "_adamw_step_ref";
    }
    double lr, b1, b2, eps, wd, bc1, bc2;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&O&O&O&ddddddd:_adamw_step_ref", kwlist,
                                     mi_conv_array, &a[0], mi_conv_array, &a[1], mi_conv_array,
                                     &a[2], mi_conv_array, &a[3], &lr, &b1, &b2, &eps, &wd,
                                     &bc1, &bc2))
        return NULL;
    PyObject *res = NULL;
    npy_intp n = PyArray_SIZE(a[0].arr);
    if (PyArray_SIZE(a[1].arr) != n || PyArray_SIZE(a[2].arr) != n || PyArray_SIZE(a[3].arr) != n) {
        PyErr_SetString(PyExc_ValueError, "_adamw_step_ref: p, g, m, v must have the same size");
    } else {
        mi_adamw_hparams h = {(float)lr, (float)b1, (float)b2, (float)eps, (float)wd, bc1, bc2};
        core->mi_adamw_step_ref(mi_arg_data(&a[0]), mi_arg_data(&a[1]), (int64_t)n, mi_arg_data(&a[2]),
                          mi_arg_data(&a[3]), &h);
        res = Py_NewRef(Py_None);
    }
    for (int i = 0; i < 4; i++) mi_arg_release(&a[i]);
    return res;
}

static PyMethodDef testing_methods[] = {
    KW_METHOD(_rotary),
    KW_METHOD(_sgemm),
    {"_fma_peak", py__fma_peak, METH_NOARGS, _fma_peak_doc},
    KW_METHOD(_bgemm_pack_a),
    KW_METHOD(_bgemm_pack_b),
    KW_METHOD(_layer_norm_backward),
    KW_METHOD(_rms_norm_backward),
    KW_METHOD(_tl_norm),
    KW_METHOD(_activation_backward),
    KW_METHOD(_relu_backward_bias),
    KW_METHOD(_softcap),
    KW_METHOD(_softmax_backward),
    KW_METHOD(_attn_fused),
    KW_METHOD(_attention_backward),
    KW_METHOD(_attention_general),
    KW_METHOD(_attention_general_backward),
    KW_METHOD(_cross_entropy),
    KW_METHOD(_embedding),
    KW_METHOD(_embedding_backward),
    KW_METHOD(_adamw_step_ref),
    {NULL, NULL, 0, NULL},
};

int mi_py_testing_kernels_exec(PyObject *m) { return PyModule_AddFunctions(m, testing_methods); }
