/* train_py.c - training bindings: the transformer's loss + backward into a
 * gradient blob, the gradient blob itself, and the AdamW update kernel.
 * Kernels run with the GIL released. Python side: mechinterp_c/training.py
 * and mechinterp_c/optim.py. */
#include "python/bridge.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "kernels/activation.h"
#include "kernels/adamw.h"
#include "model/backward.h"
#include "model/transformer.h"
#include "python/model_py.h"

PyDoc_STRVAR(grad_blob_doc, "grad_blob(model)\n--\n\nA zeroed float32 array [n_params] with the "
             "layout of the model's parameter blob (64-byte aligned): the gradient store.");

static PyObject *py_grad_blob(PyObject *module, PyObject *arg)
{
    mi_transformer *tf = mi_py_model_tf(module, arg);
    if (!tf) return NULL;
    npy_intp n = (npy_intp)tf->n_params;
    float *data;
    PyObject *arr = mi_py_empty(module, 1, &n, &data);
    if (arr) memset(data, 0, sizeof(float) * (size_t)n);
    return arr;
}

PyDoc_STRVAR(loss_backward_doc,
"loss_backward(model, tokens, targets, grads)\n--\n\n"
"Forward, mean cross-entropy of the logits at (b, p) against targets[b, p]\n"
"(-100 ignores), and backward; gradients ACCUMULATE into grads (from\n"
"grad_blob). workspace: optional array from backward_workspace, reused across\n"
"calls. profile: optional float64 array [2 * len(backward_phases())] to which the\n"
"wall seconds, then the process CPU seconds, of each phase are added. pos_ids [batch, pos] int64 and key_mask\n"
"[batch, pos] float32 (0: padding) as forward takes them. Returns the mean loss.");

PyDoc_STRVAR(phases_doc, "backward_phases()\n--\n\nNames of loss_backward's profile phases, in order.");

_Static_assert(MI_BWD_N_PHASES == 10, "backward_phases() names every profile phase");

static PyObject *py_backward_phases(PyObject *module, PyObject *unused)
{
    (void)module; (void)unused;
    return Py_BuildValue("(ssssssssss)", "forward", "loss", "unembed", "norm", "mlp_gemm",
                         "activation", "attn_gemm", "attn_core", "bias", "embed");
}

PyDoc_STRVAR(workspace_doc, "backward_workspace(model, batch, seq)\n--\n\nAn uninitialised "
             "64-byte aligned float32 array large enough for loss_backward on [batch, seq].");

static PyObject *py_backward_workspace(PyObject *module, PyObject *args)
{
    PyObject *model;
    long long B, T;
    if (!PyArg_ParseTuple(args, "OLL:backward_workspace", &model, &B, &T)) return NULL;
    mi_transformer *tf = mi_py_model_tf(module, model);
    if (!tf) return NULL;
    npy_intp n = (npy_intp)mi_tf_backward_workspace(tf, B, T);
    if (!n) {
        PyErr_Format(PyExc_ValueError, "backward_workspace: no workspace for batch=%lld seq=%lld", B, T);
        return NULL;
    }
    float *data;
    return mi_py_empty(module, 1, &n, &data);
}

static PyObject *py_loss_backward(PyObject *module, PyObject *args)
{
    PyObject *model, *tok_obj, *tgt_obj, *grads_obj, *work_obj = Py_None, *prof_obj = Py_None;
    PyObject *pos_obj = Py_None, *mask_obj = Py_None;
    if (!PyArg_ParseTuple(args, "OOOO|OOOO:loss_backward", &model, &tok_obj, &tgt_obj, &grads_obj, &work_obj,
                          &prof_obj, &pos_obj, &mask_obj))
        return NULL;
    double *prof = NULL;
    if (prof_obj != Py_None) {
        if (!PyArray_Check(prof_obj) || PyArray_TYPE((PyArrayObject *)prof_obj) != NPY_FLOAT64
            || !PyArray_IS_C_CONTIGUOUS((PyArrayObject *)prof_obj)
            || !PyArray_ISWRITEABLE((PyArrayObject *)prof_obj)
            || PyArray_SIZE((PyArrayObject *)prof_obj) != 2 * MI_BWD_N_PHASES) {
            PyErr_Format(PyExc_TypeError, "profile: expected a writable contiguous float64 array of %d "
                         "seconds (2 x backward_phases(): wall, then CPU)", 2 * (int)MI_BWD_N_PHASES);
            return NULL;
        }
        if (mi_py_native_order((PyArrayObject *)prof_obj, "profile") < 0) return NULL;
        prof = PyArray_DATA((PyArrayObject *)prof_obj);
    }
    float *work = NULL;
    size_t work_floats = 0;
    if (work_obj != Py_None) {
        if (!PyArray_Check(work_obj) || PyArray_TYPE((PyArrayObject *)work_obj) != NPY_FLOAT32
            || !PyArray_IS_C_CONTIGUOUS((PyArrayObject *)work_obj)
            || !PyArray_ISWRITEABLE((PyArrayObject *)work_obj)) {
            PyErr_SetString(PyExc_TypeError, "workspace: expected a writable contiguous float32 array "
                            "(from backward_workspace)");
            return NULL;
        }
        if (mi_py_native_order((PyArrayObject *)work_obj, "workspace") < 0) return NULL;
        work = PyArray_DATA((PyArrayObject *)work_obj);
        work_floats = (size_t)PyArray_SIZE((PyArrayObject *)work_obj);
    }
    mi_transformer *tf = mi_py_model_tf(module, model);
    if (!tf) return NULL;
    PyArrayObject *tokens = NULL, *targets = NULL, *pos = NULL, *mask = NULL;
    PyObject *res = NULL;
    char b1[128], b2[128];
    if (!PyArray_Check(grads_obj) || PyArray_TYPE((PyArrayObject *)grads_obj) != NPY_FLOAT32
        || !PyArray_IS_C_CONTIGUOUS((PyArrayObject *)grads_obj)
        || !PyArray_ISWRITEABLE((PyArrayObject *)grads_obj)
        || PyArray_SIZE((PyArrayObject *)grads_obj) != (npy_intp)tf->n_params) {
        PyErr_Format(PyExc_ValueError, "grads: expected a writable contiguous float32 array of %zu "
                     "floats (from grad_blob)", tf->n_params);
        return NULL;
    }
    if (mi_py_native_order((PyArrayObject *)grads_obj, "grads") < 0) return NULL;
    tokens = (PyArrayObject *)PyArray_FROMANY(tok_obj, NPY_INT64, 0, 0, NPY_ARRAY_CARRAY_RO | NPY_ARRAY_FORCECAST);
    if (!tokens) goto done;
    if (PyArray_NDIM(tokens) != 2) {
        PyErr_Format(PyExc_ValueError, "tokens: expected shape (batch, pos), got %s",
                     mi_py_shape_str(tokens, b1));
        goto done;
    }
    targets = (PyArrayObject *)PyArray_FROMANY(tgt_obj, NPY_INT64, 0, 0, NPY_ARRAY_CARRAY_RO | NPY_ARRAY_FORCECAST);
    if (!targets) goto done;
    if (PyArray_NDIM(targets) != 2 || PyArray_DIM(targets, 0) != PyArray_DIM(tokens, 0)
        || PyArray_DIM(targets, 1) != PyArray_DIM(tokens, 1)) {
        PyErr_Format(PyExc_ValueError, "targets: expected shape %s like tokens, got %s",
                     mi_py_shape_str(tokens, b1), mi_py_shape_str(targets, b2));
        goto done;
    }
    if (pos_obj != Py_None) {
        pos = (PyArrayObject *)PyArray_FROMANY(pos_obj, NPY_INT64, 0, 0, NPY_ARRAY_CARRAY_RO | NPY_ARRAY_FORCECAST);
        if (!pos) goto done;
        if (PyArray_NDIM(pos) != 2 || PyArray_DIM(pos, 0) != PyArray_DIM(tokens, 0)
            || PyArray_DIM(pos, 1) != PyArray_DIM(tokens, 1)) {
            PyErr_Format(PyExc_ValueError, "pos_ids: expected shape %s like tokens, got %s",
                         mi_py_shape_str(tokens, b1), mi_py_shape_str(pos, b2));
            goto done;
        }
    }
    if (mask_obj != Py_None) {
        if (!(mask = mi_py_float_arg(mask_obj, "attention_mask", 2, 2))) goto done;
        if (PyArray_DIM(mask, 0) != PyArray_DIM(tokens, 0) || PyArray_DIM(mask, 1) != PyArray_DIM(tokens, 1)) {
            PyErr_Format(PyExc_ValueError, "attention_mask: expected shape %s like tokens, got %s",
                         mi_py_shape_str(tokens, b1), mi_py_shape_str(mask, b2));
            goto done;
        }
    }
    float loss = 0.0f;
    mi_status st;
    float *g = (float *)PyArray_DATA((PyArrayObject *)grads_obj);
    Py_BEGIN_ALLOW_THREADS
    st = mi_tf_loss_backward(tf, PyArray_DIM(tokens, 0), PyArray_DIM(tokens, 1),
                             (const int64_t *)PyArray_DATA(tokens), (const int64_t *)PyArray_DATA(targets),
                             pos ? (const int64_t *)PyArray_DATA(pos) : NULL,
                             mask ? (const float *)PyArray_DATA(mask) : NULL, g, &loss, work, work_floats, prof);
    Py_END_ALLOW_THREADS
    if (st != MI_OK) { mi_py_raise(st); goto done; }
    res = PyFloat_FromDouble((double)loss);
done:
    Py_XDECREF(tokens);
    Py_XDECREF(targets);
    Py_XDECREF(pos);
    Py_XDECREF(mask);
    return res;
}

PyDoc_STRVAR(adamw_doc,
"adamw_step(p, g, m, v, lr, beta1, beta2, eps, weight_decay, bias_correction1, bias_correction2)\n--\n\n"
"One AdamW update in place (torch semantics). p, g: float32 arrays of one shape and\n"
"strides (up to 4 dims, last axis contiguous); m, v: contiguous float32 of that shape.");

static int check_f32(PyObject *o, const char *name, int contiguous)
{
    if (!PyArray_Check(o) || PyArray_TYPE((PyArrayObject *)o) != NPY_FLOAT32
        || !PyArray_ISWRITEABLE((PyArrayObject *)o) || PyArray_NDIM((PyArrayObject *)o) > 4
        || (contiguous && !PyArray_IS_C_CONTIGUOUS((PyArrayObject *)o))) {
        PyErr_Format(PyExc_TypeError, "adamw_step: %s must be a writable float32 array of at most "
                     "4 dims%s", name, contiguous ? ", C-contiguous" : "");
        return -1;
    }
    return mi_py_native_order((PyArrayObject *)o, name);
}

static PyObject *py_adamw_step(PyObject *module, PyObject *args)
{
    PyObject *po, *go, *mo, *vo;
    double lr, b1, b2, eps, wd, bc1, bc2;
    if (!PyArg_ParseTuple(args, "OOOOddddddd:adamw_step", &po, &go, &mo, &vo, &lr, &b1, &b2, &eps,
                          &wd, &bc1, &bc2))
        return NULL;
    if (check_f32(po, "p", 0) < 0 || check_f32(go, "g", 0) < 0 || check_f32(mo, "m", 1) < 0
        || check_f32(vo, "v", 1) < 0)
        return NULL;
    PyArrayObject *p = (PyArrayObject *)po, *g = (PyArrayObject *)go;
    int nd = PyArray_NDIM(p);
    npy_intp n = PyArray_SIZE(p);
    if (PyArray_NDIM(g) != nd || PyArray_SIZE((PyArrayObject *)mo) != n
        || PyArray_SIZE((PyArrayObject *)vo) != n) {
        PyErr_SetString(PyExc_ValueError, "adamw_step: p, g, m, v must have the same shape");
        return NULL;
    }
    int64_t shape[4] = {1, 1, 1, 1}, strides[4] = {0, 0, 0, 1};
    for (int i = 0; i < nd; i++) {
        if (PyArray_DIM(g, i) != PyArray_DIM(p, i) || PyArray_STRIDE(g, i) != PyArray_STRIDE(p, i)) {
            PyErr_SetString(PyExc_ValueError, "adamw_step: p and g must have the same shape and strides");
            return NULL;
        }
        int k = 4 - nd + i;
        shape[k] = PyArray_DIM(p, i);
        strides[k] = PyArray_STRIDE(p, i) / (npy_intp)sizeof(float);
    }
    if (n == 0) Py_RETURN_NONE;
    if (shape[3] > 1 && strides[3] != 1) {
        PyErr_SetString(PyExc_ValueError, "adamw_step: the last axis of p must be contiguous");
        return NULL;
    }
    strides[3] = 1;
    mi_adamw_hparams h = {(float)lr, (float)b1, (float)b2, (float)eps, (float)wd, bc1, bc2};
    float *pd = PyArray_DATA(p), *gd = PyArray_DATA(g);
    float *md = PyArray_DATA((PyArrayObject *)mo), *vd = PyArray_DATA((PyArrayObject *)vo);
    Py_BEGIN_ALLOW_THREADS
    mi_adamw_step(pd, gd, shape, strides, md, vd, &h);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

PyDoc_STRVAR(adamw_ref_doc,
"_adamw_step_ref(p, g, m, v, lr, beta1, beta2, eps, weight_decay, bias_correction1, bias_correction2)\n--\n\n"
"The plain scalar AdamW reference (mi_adamw_step_ref) on C-contiguous float32 arrays of\n"
"one size, for testing adamw_step against.");

static PyObject *py_adamw_step_ref(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *po, *go, *mo, *vo;
    double lr, b1, b2, eps, wd, bc1, bc2;
    if (!PyArg_ParseTuple(args, "OOOOddddddd:_adamw_step_ref", &po, &go, &mo, &vo, &lr, &b1, &b2, &eps,
                          &wd, &bc1, &bc2))
        return NULL;
    if (check_f32(po, "p", 1) < 0 || check_f32(go, "g", 1) < 0 || check_f32(mo, "m", 1) < 0
        || check_f32(vo, "v", 1) < 0)
        return NULL;
    npy_intp n = PyArray_SIZE((PyArrayObject *)po);
    if (PyArray_SIZE((PyArrayObject *)go) != n || PyArray_SIZE((PyArrayObject *)mo) != n
        || PyArray_SIZE((PyArrayObject *)vo) != n) {
        PyErr_SetString(PyExc_ValueError, "_adamw_step_ref: p, g, m, v must have the same size");
        return NULL;
    }
    mi_adamw_hparams h = {(float)lr, (float)b1, (float)b2, (float)eps, (float)wd, bc1, bc2};
    mi_adamw_step_ref(PyArray_DATA((PyArrayObject *)po), PyArray_DATA((PyArrayObject *)go), (int64_t)n,
                      PyArray_DATA((PyArrayObject *)mo), PyArray_DATA((PyArrayObject *)vo), &h);
    Py_RETURN_NONE;
}

/* A writable float32 array of at most 4 dims with a contiguous last axis, as
 * [n0, n1, n2, n3] shape and element strides (leading dims padded with 1). */
typedef struct {
    float *data;
    int64_t shape[4], strides[4];
    npy_intp size;
} f32_view;

static int f32_view_of(PyObject *o, const char *who, const char *what, Py_ssize_t idx, int contiguous,
                       f32_view *v)
{
    if (!PyArray_Check(o) || PyArray_TYPE((PyArrayObject *)o) != NPY_FLOAT32
        || !PyArray_ISWRITEABLE((PyArrayObject *)o) || PyArray_NDIM((PyArrayObject *)o) > 4
        || (contiguous && !PyArray_IS_C_CONTIGUOUS((PyArrayObject *)o))) {
        PyErr_Format(PyExc_TypeError, "%s: %s[%zd] must be a writable%s float32 array of at most 4 dims",
                     who, what, idx, contiguous ? " C-contiguous" : "");
        return -1;
    }
    PyArrayObject *a = (PyArrayObject *)o;
    if (mi_py_native_order(a, what) < 0) return -1;
    int nd = PyArray_NDIM(a);
    for (int k = 0; k < 4; k++) { v->shape[k] = 1; v->strides[k] = 0; }
    for (int i = 0; i < nd; i++) {
        v->shape[4 - nd + i] = PyArray_DIM(a, i);
        v->strides[4 - nd + i] = PyArray_STRIDE(a, i) / (npy_intp)sizeof(float);
        if (PyArray_STRIDE(a, i) % (npy_intp)sizeof(float)) {
            PyErr_Format(PyExc_ValueError, "%s: %s[%zd] has strides that are not whole floats", who, what, idx);
            return -1;
        }
    }
    if (v->shape[3] > 1 && v->strides[3] != 1) {
        PyErr_Format(PyExc_ValueError, "%s: the last axis of %s[%zd] must be contiguous", who, what, idx);
        return -1;
    }
    v->strides[3] = 1;
    v->data = PyArray_DATA(a);
    v->size = PyArray_SIZE(a);
    return 0;
}

/* Fill views[0..n) from the sequence seq (a list or tuple); n from the first call. */
static f32_view *f32_views_of(PyObject *seq, const char *who, const char *what, int contiguous,
                              Py_ssize_t *n)
{
    PyObject *fast = PySequence_Fast(seq, "expected a list of arrays");
    if (!fast) return NULL;
    Py_ssize_t len = PySequence_Fast_GET_SIZE(fast);
    if (*n >= 0 && len != *n) {
        PyErr_Format(PyExc_ValueError, "%s: %s has %zd arrays, expected %zd", who, what, len, *n);
        Py_DECREF(fast);
        return NULL;
    }
    f32_view *v = PyMem_Malloc(sizeof(f32_view) * (size_t)(len ? len : 1));
    if (!v) { Py_DECREF(fast); PyErr_NoMemory(); return NULL; }
    for (Py_ssize_t i = 0; i < len; i++)
        if (f32_view_of(PySequence_Fast_GET_ITEM(fast, i), who, what, i, contiguous, &v[i]) < 0) {
            PyMem_Free(v);
            Py_DECREF(fast);
            return NULL;
        }
    Py_DECREF(fast);
    *n = len;
    return v;
}

PyDoc_STRVAR(adamw_many_doc,
"adamw_step_many(params, grads, exp_avgs, exp_avg_sqs, steps, lr, beta1, beta2, eps, weight_decay)\n--\n\n"
"One AdamW update (torch semantics) of every tensor in the lists, in one call with the\n"
"GIL released. params[i], grads[i]: float32 arrays of one shape and strides (last axis\n"
"contiguous); exp_avgs[i], exp_avg_sqs[i]: C-contiguous float32 of that size; steps[i]:\n"
"the step number after this update (bias corrections 1 - beta^step).");

static PyObject *py_adamw_step_many(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *po, *go, *mo, *vo, *so;
    double lr, b1, b2, eps, wd;
    if (!PyArg_ParseTuple(args, "OOOOOddddd:adamw_step_many", &po, &go, &mo, &vo, &so, &lr, &b1, &b2,
                          &eps, &wd))
        return NULL;
    const char *who = "adamw_step_many";
    Py_ssize_t n = -1;
    f32_view *p = NULL, *g = NULL, *m = NULL, *v = NULL;
    double *bc = NULL;
    PyObject *res = NULL;
    if (!(p = f32_views_of(po, who, "params", 0, &n)) || !(g = f32_views_of(go, who, "grads", 0, &n))
        || !(m = f32_views_of(mo, who, "exp_avgs", 1, &n)) || !(v = f32_views_of(vo, who, "exp_avg_sqs", 1, &n)))
        goto done;
    PyObject *steps = PySequence_Fast(so, "adamw_step_many: steps must be a list of ints");
    if (!steps) goto done;
    if (PySequence_Fast_GET_SIZE(steps) != n) {
        PyErr_Format(PyExc_ValueError, "%s: steps has %zd entries, expected %zd", who,
                     PySequence_Fast_GET_SIZE(steps), n);
        Py_DECREF(steps);
        goto done;
    }
    bc = PyMem_Malloc(sizeof(double) * 2 * (size_t)(n ? n : 1));
    if (!bc) { Py_DECREF(steps); PyErr_NoMemory(); goto done; }
    for (Py_ssize_t i = 0; i < n; i++) {
        long long t = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(steps, i));
        if (t == -1 && PyErr_Occurred()) { Py_DECREF(steps); goto done; }
        if (t < 1) {
            PyErr_Format(PyExc_ValueError, "%s: steps[%zd] = %lld must be >= 1", who, i, t);
            Py_DECREF(steps);
            goto done;
        }
        /* as Python's 1.0 - beta ** step (C pow on doubles) */
        bc[2 * i] = 1.0 - pow(b1, (double)t);
        bc[2 * i + 1] = 1.0 - pow(b2, (double)t);
        int same = 1;
        for (int k = 0; k < 4; k++)
            same &= p[i].shape[k] == g[i].shape[k] && (p[i].shape[k] == 1 || p[i].strides[k] == g[i].strides[k]);
        if (!same || m[i].size != p[i].size || v[i].size != p[i].size) {
            PyErr_Format(PyExc_ValueError, "%s: params[%zd] and grads[%zd] must have the same shape and "
                         "strides, exp_avgs/exp_avg_sqs[%zd] its size", who, i, i, i);
            Py_DECREF(steps);
            goto done;
        }
    }
    Py_DECREF(steps);
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!p[i].size) continue;
        mi_adamw_hparams h = {(float)lr, (float)b1, (float)b2, (float)eps, (float)wd, bc[2 * i], bc[2 * i + 1]};
        mi_adamw_step(p[i].data, g[i].data, p[i].shape, p[i].strides, m[i].data, v[i].data, &h);
    }
    Py_END_ALLOW_THREADS
    res = Py_NewRef(Py_None);
done:
    PyMem_Free(p); PyMem_Free(g); PyMem_Free(m); PyMem_Free(v); PyMem_Free(bc);
    return res;
}

PyDoc_STRVAR(clip_doc,
"clip_grads(grads, max_norm, error_if_nonfinite=False)\n--\n\n"
"torch.nn.utils.clip_grad_norm_ on a list of float32 gradient arrays in one call:\n"
"the total L2 norm (squares summed in double, tensor by tensor in list order), then\n"
"every gradient scaled by coef = float32(max_norm) / (float32(total) + 1e-6) when\n"
"coef < 1. Returns the total norm. error_if_nonfinite: RuntimeError (nothing scaled)\n"
"when the norm is NaN or infinite.");

static PyObject *py_clip_grads(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *go;
    double max_norm;
    int error_if_nonfinite = 0;
    if (!PyArg_ParseTuple(args, "Od|p:clip_grads", &go, &max_norm, &error_if_nonfinite)) return NULL;
    Py_ssize_t n = -1;
    f32_view *g = f32_views_of(go, "clip_grads", "grads", 0, &n);
    if (!g) return NULL;
    double sumsq = 0.0;
    float coef = 1.0f;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) sumsq += mi_grad_sumsq(g[i].data, g[i].shape, g[i].strides);
    Py_END_ALLOW_THREADS
    double total = sqrt(sumsq);
    if (error_if_nonfinite && !isfinite(total)) {
        char msg[96];
        snprintf(msg, sizeof msg, "clip_grad_norm_: the total norm of the gradients is %g", total);
        PyMem_Free(g);
        PyErr_SetString(PyExc_RuntimeError, msg);
        return NULL;
    }
    coef = (float)max_norm / ((float)total + 1e-6f);
    if (coef < 1.0f) {
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n; i++) mi_grad_scale(g[i].data, g[i].shape, g[i].strides, coef);
        Py_END_ALLOW_THREADS
    }
    PyMem_Free(g);
    return PyFloat_FromDouble(total);
}

PyDoc_STRVAR(zero_doc, "zero_arrays(arrays)\n--\n\nSet every float32 array in the list to 0 "
             "(last axis contiguous), in one call.");

static PyObject *py_zero_arrays(PyObject *module, PyObject *arg)
{
    (void)module;
    Py_ssize_t n = -1;
    f32_view *g = f32_views_of(arg, "zero_arrays", "arrays", 0, &n);
    if (!g) return NULL;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) mi_grad_zero(g[i].data, g[i].shape, g[i].strides);
    Py_END_ALLOW_THREADS
    PyMem_Free(g);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(relu_bias_doc,
"_relu_backward_bias(x, dy, db)\n--\n\n"
"Test entry for the MLP's fused relu step: dy [rows, cols] is overwritten IN PLACE with\n"
"dy * relu'(x) (x [rows, cols]) and db [cols] += its column sums. float32, C-contiguous.");

static PyObject *py_relu_backward_bias(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *xo, *dyo, *dbo;
    if (!PyArg_ParseTuple(args, "OOO:_relu_backward_bias", &xo, &dyo, &dbo)) return NULL;
    if (check_f32(xo, "x", 1) < 0 || check_f32(dyo, "dy", 1) < 0 || check_f32(dbo, "db", 1) < 0) return NULL;
    PyArrayObject *x = (PyArrayObject *)xo, *dy = (PyArrayObject *)dyo, *db = (PyArrayObject *)dbo;
    if (PyArray_NDIM(x) != 2 || PyArray_NDIM(dy) != 2 || PyArray_DIM(dy, 0) != PyArray_DIM(x, 0)
        || PyArray_DIM(dy, 1) != PyArray_DIM(x, 1) || PyArray_SIZE(db) != PyArray_DIM(x, 1)) {
        PyErr_SetString(PyExc_ValueError, "_relu_backward_bias: x, dy [rows, cols] and db [cols]");
        return NULL;
    }
    mi_status st;
    float *dyd = PyArray_DATA(dy);
    Py_BEGIN_ALLOW_THREADS
    st = mi_relu_backward_bias(PyArray_DATA(x), dyd, PyArray_DIM(x, 0), PyArray_DIM(x, 1), dyd,
                               PyArray_DATA(db));
    Py_END_ALLOW_THREADS
    if (st != MI_OK) return mi_py_raise(st);
    Py_RETURN_NONE;
}

static PyMethodDef train_methods[] = {
    {"grad_blob", py_grad_blob, METH_O, grad_blob_doc},
    {"loss_backward", py_loss_backward, METH_VARARGS, loss_backward_doc},
    {"backward_workspace", py_backward_workspace, METH_VARARGS, workspace_doc},
    {"adamw_step", py_adamw_step, METH_VARARGS, adamw_doc},
    {"backward_phases", py_backward_phases, METH_NOARGS, phases_doc},
    {"_adamw_step_ref", py_adamw_step_ref, METH_VARARGS, adamw_ref_doc},
    {"adamw_step_many", py_adamw_step_many, METH_VARARGS, adamw_many_doc},
    {"clip_grads", py_clip_grads, METH_VARARGS, clip_doc},
    {"zero_arrays", py_zero_arrays, METH_O, zero_doc},
    {"_relu_backward_bias", py_relu_backward_bias, METH_VARARGS, relu_bias_doc},
    {NULL, NULL, 0, NULL},
};

int mi_py_train_exec(PyObject *m) { return PyModule_AddFunctions(m, train_methods); }
