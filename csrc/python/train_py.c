/* train_py.c - training bindings: the transformer's loss + backward into a
 * gradient blob, the gradient blob itself, and the AdamW update kernel.
 * Kernels run with the GIL released. Python side: mechinterp_c/training.py
 * and mechinterp_c/optim.py. */
#include "python/convert.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

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

static PyObject *py_backward_phases(PyObject *module, PyObject *unused)
{
    PyObject *names = PyTuple_New(MI_BWD_N_PHASES);
    for (int i = 0; names && i < MI_BWD_N_PHASES; i++) {
        PyObject *s = PyUnicode_FromString(mi_bwd_phase_names[i]);
        if (!s) { Py_CLEAR(names); break; }
        PyTuple_SET_ITEM(names, i, s);
    }
    return names;
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
    PyObject *model;
    mi_arg tokens = MI_ARG_INT64("tokens", 2, 2), targets = MI_ARG_INT64("targets", 2, 2);
    mi_arg grads = MI_ARG_OUT("grads", 1, 1);
    mi_arg work = MI_ARG("workspace", NPY_FLOAT32, MI_ARG_OPTIONAL | MI_ARG_INPLACE, 1, 1);
    mi_arg prof = MI_ARG("profile", NPY_FLOAT64, MI_ARG_OPTIONAL | MI_ARG_INPLACE, 1, 1);
    mi_arg pos = MI_ARG("pos_ids", NPY_INT64, MI_ARG_OPTIONAL, 2, 2);
    mi_arg mask = MI_ARG("attention_mask", NPY_FLOAT32, MI_ARG_OPTIONAL, 2, 2);
    if (!PyArg_ParseTuple(args, "OO&O&O&|O&O&O&O&:loss_backward", &model, mi_conv_array, &tokens,
                          mi_conv_array, &targets, mi_conv_array, &grads, mi_conv_array, &work,
                          mi_conv_array, &prof, mi_conv_array, &pos, mi_conv_array, &mask))
        return NULL;
    PyObject *res = NULL;
    mi_transformer *tf = mi_py_model_acquire(module, model);
    if (!tf) goto release;
    if (prof.arr && PyArray_SIZE(prof.arr) != 2 * MI_BWD_N_PHASES) {
        PyErr_Format(PyExc_ValueError, "profile: expected %d float64 seconds (2 x backward_phases(): "
                     "wall, then CPU)", 2 * (int)MI_BWD_N_PHASES);
        goto done;
    }
    if (PyArray_SIZE(grads.arr) != (npy_intp)tf->n_params) {
        PyErr_Format(PyExc_ValueError, "grads: expected %zu floats (from grad_blob), got %ld",
                     tf->n_params, (long)PyArray_SIZE(grads.arr));
        goto done;
    }
    npy_intp *bt = PyArray_DIMS(tokens.arr);
    if (mi_arg_shape(&targets, 2, bt, "like tokens") < 0
        || (pos.arr && mi_arg_shape(&pos, 2, bt, "like tokens") < 0)
        || (mask.arr && mi_arg_shape(&mask, 2, bt, "like tokens") < 0))
        goto done;
    float loss = 0.0f;
    mi_status st;
    {
        const int64_t *tk = mi_arg_data(&tokens), *tg = mi_arg_data(&targets), *pd = mi_arg_data(&pos);
        const float *md = mi_arg_data(&mask);
        float *g = mi_arg_data(&grads), *wd = mi_arg_data(&work);
        size_t work_floats = work.arr ? (size_t)PyArray_SIZE(work.arr) : 0;
        double *pr = mi_arg_data(&prof);
        Py_BEGIN_ALLOW_THREADS
        st = mi_tf_loss_backward(tf, bt[0], bt[1], tk, tg, pd, md, g, &loss, wd, work_floats, pr);
        Py_END_ALLOW_THREADS
    }
    if (st != MI_OK) { mi_py_raise(st); goto done; }
    res = PyFloat_FromDouble((double)loss);
done:
    mi_py_model_release(model);
release:
    mi_arg_release(&tokens); mi_arg_release(&targets); mi_arg_release(&grads);
    mi_arg_release(&work); mi_arg_release(&prof); mi_arg_release(&pos); mi_arg_release(&mask);
    return res;
}

PyDoc_STRVAR(train_forward_doc,
"train_forward(model, tokens, workspace, pos_ids=None, key_mask=None)\n--\n\n"
"The forward of loss_backward alone, into workspace (from backward_workspace,\n"
"required: it keeps every activation for logits_backward). Returns the logits\n"
"[batch, pos, d_vocab_out] as a view into workspace (the next call overwrites it).");

static PyObject *py_train_forward(PyObject *module, PyObject *args)
{
    PyObject *model;
    mi_arg tokens = MI_ARG_INT64("tokens", 2, 2);
    mi_arg work = MI_ARG("workspace", NPY_FLOAT32, MI_ARG_INPLACE, 1, 1);
    mi_arg pos = MI_ARG("pos_ids", NPY_INT64, MI_ARG_OPTIONAL, 2, 2);
    mi_arg mask = MI_ARG("attention_mask", NPY_FLOAT32, MI_ARG_OPTIONAL, 2, 2);
    if (!PyArg_ParseTuple(args, "OO&O&|O&O&:train_forward", &model, mi_conv_array, &tokens,
                          mi_conv_array, &work, mi_conv_array, &pos, mi_conv_array, &mask))
        return NULL;
    PyObject *res = NULL;
    mi_transformer *tf = mi_py_model_acquire(module, model);
    if (!tf) goto release;
    npy_intp *bt = PyArray_DIMS(tokens.arr);
    if ((pos.arr && mi_arg_shape(&pos, 2, bt, "like tokens") < 0)
        || (mask.arr && mi_arg_shape(&mask, 2, bt, "like tokens") < 0))
        goto done;
    const float *logits = NULL;
    mi_status st;
    {
        const int64_t *tk = mi_arg_data(&tokens), *pd = mi_arg_data(&pos);
        const float *md = mi_arg_data(&mask);
        float *wd = mi_arg_data(&work);
        size_t work_floats = (size_t)PyArray_SIZE(work.arr);
        Py_BEGIN_ALLOW_THREADS
        st = mi_tf_train_forward(tf, bt[0], bt[1], tk, pd, md, wd, work_floats, &logits);
        Py_END_ALLOW_THREADS
    }
    if (st != MI_OK) { mi_py_raise(st); goto done; }
    npy_intp shape[3] = {bt[0], bt[1], (npy_intp)tf->spec.d_vocab_out};
    res = mi_py_view((PyObject *)work.arr, (float *)logits, 3, shape, NULL, 1);
done:
    mi_py_model_release(model);
release:
    mi_arg_release(&tokens); mi_arg_release(&work); mi_arg_release(&pos); mi_arg_release(&mask);
    return res;
}

PyDoc_STRVAR(logits_backward_doc,
"logits_backward(model, tokens, dlogits, grads, workspace, pos_ids=None, key_mask=None)\n--\n\n"
"The backward of loss_backward from a given dlogits [batch, pos, d_vocab_out]\n"
"(d metric / d logits) over the activations the last train_forward left in\n"
"workspace, which the caller guarantees are still there (same model, weights,\n"
"tokens, pos_ids, key_mask). Parameter gradients ACCUMULATE into grads.");

static PyObject *py_logits_backward(PyObject *module, PyObject *args)
{
    PyObject *model;
    mi_arg tokens = MI_ARG_INT64("tokens", 2, 2);
    mi_arg dlogits = MI_ARG_FLOAT("dlogits", 3, 3);
    mi_arg grads = MI_ARG_OUT("grads", 1, 1);
    mi_arg work = MI_ARG("workspace", NPY_FLOAT32, MI_ARG_INPLACE, 1, 1);
    mi_arg pos = MI_ARG("pos_ids", NPY_INT64, MI_ARG_OPTIONAL, 2, 2);
    mi_arg mask = MI_ARG("attention_mask", NPY_FLOAT32, MI_ARG_OPTIONAL, 2, 2);
    if (!PyArg_ParseTuple(args, "OO&O&O&O&|O&O&:logits_backward", &model, mi_conv_array, &tokens,
                          mi_conv_array, &dlogits, mi_conv_array, &grads, mi_conv_array, &work,
                          mi_conv_array, &pos, mi_conv_array, &mask))
        return NULL;
    PyObject *res = NULL;
    mi_transformer *tf = mi_py_model_acquire(module, model);
    if (!tf) goto release;
    if (PyArray_SIZE(grads.arr) != (npy_intp)tf->n_params) {
        PyErr_Format(PyExc_ValueError, "grads: expected %zu floats (from grad_blob), got %ld",
                     tf->n_params, (long)PyArray_SIZE(grads.arr));
        goto done;
    }
    npy_intp *bt = PyArray_DIMS(tokens.arr);
    npy_intp lshape[3] = {bt[0], bt[1], (npy_intp)tf->spec.d_vocab_out};
    if (mi_arg_shape(&dlogits, 3, lshape, "like the logits") < 0
        || (pos.arr && mi_arg_shape(&pos, 2, bt, "like tokens") < 0)
        || (mask.arr && mi_arg_shape(&mask, 2, bt, "like tokens") < 0))
        goto done;
    mi_status st;
    {
        const int64_t *tk = mi_arg_data(&tokens), *pd = mi_arg_data(&pos);
        const float *md = mi_arg_data(&mask), *dl = mi_arg_data(&dlogits);
        float *g = mi_arg_data(&grads), *wd = mi_arg_data(&work);
        size_t work_floats = (size_t)PyArray_SIZE(work.arr);
        Py_BEGIN_ALLOW_THREADS
        st = mi_tf_logits_backward(tf, bt[0], bt[1], tk, pd, md, dl, g, wd, work_floats);
        Py_END_ALLOW_THREADS
    }
    if (st != MI_OK) { mi_py_raise(st); goto done; }
    res = Py_NewRef(Py_None);
done:
    mi_py_model_release(model);
release:
    mi_arg_release(&tokens); mi_arg_release(&dlogits); mi_arg_release(&grads);
    mi_arg_release(&work); mi_arg_release(&pos); mi_arg_release(&mask);
    return res;
}

/* A checked in-place float32 array as a gradient view: [n0, n1, n2, n3] and
 * element strides, leading dims padded with 1. `name` as messages print it,
 * `who` the function; contiguous: C-contiguous required (optimiser state). */
static int view_of(PyObject *obj, const char *who, const char *name, int contiguous,
                   mi_grad_view *v, npy_intp *size)
{
    mi_arg a = MI_ARG(name, NPY_FLOAT32, MI_ARG_INPLACE | (contiguous ? 0 : MI_ARG_STRIDED), 0, 4);
    a.who = who;
    if (!mi_arg_borrow(obj, &a)) return -1;
    int nd = PyArray_NDIM(a.arr);
    for (int k = 0; k < 4; k++) { v->shape[k] = 1; v->strides[k] = 0; }
    for (int i = 0; i < nd; i++) {
        v->shape[4 - nd + i] = PyArray_DIM(a.arr, i);
        v->strides[4 - nd + i] = PyArray_STRIDE(a.arr, i) / (npy_intp)sizeof(float);
    }
    v->strides[3] = 1;
    v->data = PyArray_DATA(a.arr);
    *size = PyArray_SIZE(a.arr);
    return 0;
}

/* Views of every array in the list or tuple seq (named what[i]); *n: its
 * length, or the length it must have when >= 0. sizes (may be NULL) receives
 * the element counts. A PyMem block, or NULL with the exception set. */
static mi_grad_view *views_of(PyObject *seq, const char *who, const char *what, int contiguous,
                              Py_ssize_t *n, npy_intp **sizes)
{
    PyObject *fast = PySequence_Fast(seq, "expected a list of arrays");
    if (!fast) return NULL;
    Py_ssize_t len = PySequence_Fast_GET_SIZE(fast);
    mi_grad_view *v = NULL;
    npy_intp *sz = NULL;
    if (*n >= 0 && len != *n) {
        PyErr_Format(PyExc_ValueError, "%s: %s has %zd arrays, expected %zd", who, what, len, *n);
        goto fail;
    }
    v = PyMem_Malloc(sizeof *v * (size_t)(len ? len : 1));
    sz = PyMem_Malloc(sizeof *sz * (size_t)(len ? len : 1));
    if (!v || !sz) { PyErr_NoMemory(); goto fail; }
    for (Py_ssize_t i = 0; i < len; i++) {
        char name[64];
        snprintf(name, sizeof name, "%s[%zd]", what, i);
        if (view_of(PySequence_Fast_GET_ITEM(fast, i), who, name, contiguous, &v[i], &sz[i]) < 0)
            goto fail;
    }
    Py_DECREF(fast);
    *n = len;
    if (sizes) *sizes = sz;
    else PyMem_Free(sz);
    return v;
fail:
    Py_DECREF(fast);
    PyMem_Free(v);
    PyMem_Free(sz);
    return NULL;
}

/* Do p and g have one shape and (where a dim is not 1) the same strides? */
static int same_view(const mi_grad_view *p, const mi_grad_view *g)
{
    int same = 1;
    for (int k = 0; k < 4; k++)
        same &= p->shape[k] == g->shape[k] && (p->shape[k] == 1 || p->strides[k] == g->strides[k]);
    return same;
}

PyDoc_STRVAR(adamw_doc,
"adamw_step(p, g, m, v, lr, beta1, beta2, eps, weight_decay, bias_correction1, bias_correction2)\n--\n\n"
"One AdamW update in place (torch semantics). p, g: float32 arrays of one shape and\n"
"strides (up to 4 dims, last axis contiguous); m, v: contiguous float32 of that shape.");

static PyObject *py_adamw_step(PyObject *module, PyObject *args)
{
    PyObject *o[4];
    double lr, b1, b2, eps, wd, bc1, bc2;
    if (!PyArg_ParseTuple(args, "OOOOddddddd:adamw_step", &o[0], &o[1], &o[2], &o[3], &lr, &b1,
                          &b2, &eps, &wd, &bc1, &bc2))
        return NULL;
    static const char *names[4] = {"p", "g", "m", "v"};
    mi_grad_view v[4];
    npy_intp size[4];
    for (int i = 0; i < 4; i++)
        if (view_of(o[i], "adamw_step", names[i], i >= 2, &v[i], &size[i]) < 0) return NULL;
    if (PyArray_NDIM((PyArrayObject *)o[1]) != PyArray_NDIM((PyArrayObject *)o[0])
        || size[2] != size[0] || size[3] != size[0]) {
        PyErr_SetString(PyExc_ValueError, "adamw_step: p, g, m, v must have the same shape");
        return NULL;
    }
    if (!same_view(&v[0], &v[1])) {
        PyErr_SetString(PyExc_ValueError, "adamw_step: p and g must have the same shape and strides");
        return NULL;
    }
    if (size[0] == 0) Py_RETURN_NONE;
    mi_adamw_hparams h = {(float)lr, (float)b1, (float)b2, (float)eps, (float)wd, bc1, bc2};
    Py_BEGIN_ALLOW_THREADS
    mi_adamw_step(v[0].data, v[1].data, v[0].shape, v[0].strides, v[2].data, v[3].data, &h);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

PyDoc_STRVAR(adamw_many_doc,
"adamw_step_many(params, grads, exp_avgs, exp_avg_sqs, steps, lr, beta1, beta2, eps, weight_decay)\n--\n\n"
"One AdamW update (torch semantics) of every tensor in the lists, in one call with the\n"
"GIL released. params[i], grads[i]: float32 arrays of one shape and strides (last axis\n"
"contiguous); exp_avgs[i], exp_avg_sqs[i]: C-contiguous float32 of that size; steps[i]:\n"
"the step number after this update (bias corrections 1 - beta^step).");

static PyObject *py_adamw_step_many(PyObject *module, PyObject *args)
{
    PyObject *po, *go, *mo, *vo, *so;
    double lr, b1, b2, eps, wd;
    if (!PyArg_ParseTuple(args, "OOOOOddddd:adamw_step_many", &po, &go, &mo, &vo, &so, &lr, &b1, &b2,
                          &eps, &wd))
        return NULL;
    const char *who = "adamw_step_many";
    Py_ssize_t n = -1;
    mi_grad_view *p = NULL, *g = NULL, *m = NULL, *v = NULL;
    npy_intp *ps = NULL, *ms = NULL, *vs = NULL;
    double *bc = NULL;
    PyObject *res = NULL, *steps = NULL;
    if (!(p = views_of(po, who, "params", 0, &n, &ps)) || !(g = views_of(go, who, "grads", 0, &n, NULL))
        || !(m = views_of(mo, who, "exp_avgs", 1, &n, &ms)) || !(v = views_of(vo, who, "exp_avg_sqs", 1, &n, &vs)))
        goto done;
    if (!(steps = PySequence_Fast(so, "adamw_step_many: steps must be a list of ints"))) goto done;
    if (PySequence_Fast_GET_SIZE(steps) != n) {
        PyErr_Format(PyExc_ValueError, "%s: steps has %zd entries, expected %zd", who,
                     PySequence_Fast_GET_SIZE(steps), n);
        goto done;
    }
    if (!(bc = PyMem_Malloc(sizeof(double) * 2 * (size_t)(n ? n : 1)))) { PyErr_NoMemory(); goto done; }
    for (Py_ssize_t i = 0; i < n; i++) {
        long long t = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(steps, i));
        if (t == -1 && PyErr_Occurred()) goto done;
        if (t < 1) {
            PyErr_Format(PyExc_ValueError, "%s: steps[%zd] = %lld must be >= 1", who, i, t);
            goto done;
        }
        /* as Python's 1.0 - beta ** step (C pow on doubles) */
        bc[2 * i] = 1.0 - pow(b1, (double)t);
        bc[2 * i + 1] = 1.0 - pow(b2, (double)t);
        if (!same_view(&p[i], &g[i]) || ms[i] != ps[i] || vs[i] != ps[i]) {
            PyErr_Format(PyExc_ValueError, "%s: params[%zd] and grads[%zd] must have the same shape and "
                         "strides, exp_avgs/exp_avg_sqs[%zd] its size", who, i, i, i);
            goto done;
        }
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!ps[i]) continue;
        mi_adamw_hparams h = {(float)lr, (float)b1, (float)b2, (float)eps, (float)wd, bc[2 * i], bc[2 * i + 1]};
        mi_adamw_step(p[i].data, g[i].data, p[i].shape, p[i].strides, m[i].data, v[i].data, &h);
    }
    Py_END_ALLOW_THREADS
    res = Py_NewRef(Py_None);
done:
    Py_XDECREF(steps);
    PyMem_Free(p); PyMem_Free(g); PyMem_Free(m); PyMem_Free(v);
    PyMem_Free(ps); PyMem_Free(ms); PyMem_Free(vs); PyMem_Free(bc);
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
    PyObject *go;
    double max_norm, total;
    int error_if_nonfinite = 0;
    if (!PyArg_ParseTuple(args, "Od|p:clip_grads", &go, &max_norm, &error_if_nonfinite)) return NULL;
    Py_ssize_t n = -1;
    mi_grad_view *g = views_of(go, "clip_grads", "grads", 0, &n, NULL);
    if (!g) return NULL;
    mi_status st;
    Py_BEGIN_ALLOW_THREADS
    st = mi_clip_grad_norm(g, n, (float)max_norm, error_if_nonfinite, &total);
    Py_END_ALLOW_THREADS
    PyMem_Free(g);
    if (st == MI_ERR_VALUE)   /* a non-finite norm: torch raises RuntimeError */
        return PyErr_Format(PyExc_RuntimeError, "%s", mi_last_error());
    if (st != MI_OK) return mi_py_raise(st);
    return PyFloat_FromDouble(total);
}

PyDoc_STRVAR(zero_doc, "zero_arrays(arrays)\n--\n\nSet every float32 array in the list to 0 "
             "(last axis contiguous), in one call.");

static PyObject *py_zero_arrays(PyObject *module, PyObject *arg)
{
    Py_ssize_t n = -1;
    mi_grad_view *g = views_of(arg, "zero_arrays", "arrays", 0, &n, NULL);
    if (!g) return NULL;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) mi_grad_zero(g[i].data, g[i].shape, g[i].strides);
    Py_END_ALLOW_THREADS
    PyMem_Free(g);
    Py_RETURN_NONE;
}

static PyMethodDef train_methods[] = {
    {"grad_blob", py_grad_blob, METH_O, grad_blob_doc},
    {"loss_backward", py_loss_backward, METH_VARARGS, loss_backward_doc},
    {"backward_workspace", py_backward_workspace, METH_VARARGS, workspace_doc},
    {"train_forward", py_train_forward, METH_VARARGS, train_forward_doc},
    {"logits_backward", py_logits_backward, METH_VARARGS, logits_backward_doc},
    {"adamw_step", py_adamw_step, METH_VARARGS, adamw_doc},
    {"backward_phases", py_backward_phases, METH_NOARGS, phases_doc},
    {"adamw_step_many", py_adamw_step_many, METH_VARARGS, adamw_many_doc},
    {"clip_grads", py_clip_grads, METH_VARARGS, clip_doc},
    {"zero_arrays", py_zero_arrays, METH_O, zero_doc},
    {NULL, NULL, 0, NULL},
};

int mi_py_train_exec(PyObject *m) { return PyModule_AddFunctions(m, train_methods); }
