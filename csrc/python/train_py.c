/* train_py.c - training bindings: the transformer's loss + backward into a
 * gradient blob, the gradient blob itself, and the AdamW update kernel.
 * Kernels run with the GIL released. Python side: mechinterp_c/training.py
 * and mechinterp_c/optim.py. */
#include "python/bridge.h"

#include <string.h>

#include "kernels/adamw.h"
#include "model/backward.h"
#include "model/transformer.h"

/* model_py.c */
mi_transformer *mi_py_model_tf(PyObject *module, PyObject *obj);

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
    return 0;
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

static PyMethodDef train_methods[] = {
    {"grad_blob", py_grad_blob, METH_O, grad_blob_doc},
    {"loss_backward", py_loss_backward, METH_VARARGS, loss_backward_doc},
    {"backward_workspace", py_backward_workspace, METH_VARARGS, workspace_doc},
    {"adamw_step", py_adamw_step, METH_VARARGS, adamw_doc},
    {"backward_phases", py_backward_phases, METH_NOARGS, phases_doc},
    {"_adamw_step_ref", py_adamw_step_ref, METH_VARARGS, adamw_ref_doc},
    {NULL, NULL, 0, NULL},
};

int mi_py_train_exec(PyObject *m) { return PyModule_AddFunctions(m, train_methods); }
