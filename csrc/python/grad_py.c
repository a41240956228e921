/* grad_py.c - binding of the activation-gradient pass (model/grad.h): a
 * metric's gradient at every hook point, backward hooks, zero-copy views of
 * both arenas. Python side: HookedTransformer.run_with_cache(incl_bwd=True),
 * run_with_hooks(bwd_hooks=...) and mechinterp_c/gradients.py. */
#include "python/convert.h"

#include <string.h>

#include "common/memory.h"
#include "model/grad.h"
#include "model/metric.h"
#include "python/model_py.h"

typedef struct {
    PyObject *callback;   /* callback(point_id, view) */
    PyObject *owner;      /* the array owning the arena the views are in */
} hook_ctx;

static PyObject *view_of(PyObject *owner, const mi_tensor_view *v, int writable)
{
    npy_intp shape[4], strides[4];
    for (int i = 0; i < v->ndim; i++) {
        shape[i] = (npy_intp)v->shape[i];
        strides[i] = (npy_intp)(v->strides[i] * (int64_t)sizeof(float));
    }
    return mi_py_view(owner, v->data, v->ndim, shape, strides, writable);
}

static mi_status py_hook(void *ctx, int point, const mi_tensor_view *v)
{
    hook_ctx *h = ctx;
    PyGILState_STATE g = PyGILState_Ensure();
    mi_status st = MI_OK;
    PyObject *view = view_of(h->owner, v, 1);
    PyObject *res = view ? PyObject_CallFunction(h->callback, "iO", point, view) : NULL;
    if (!res) st = MI_ERR_CALLBACK;
    Py_XDECREF(res);
    Py_XDECREF(view);
    PyGILState_Release(g);
    return st;
}

typedef struct {
    const mi_metric *builtin;   /* or */
    PyObject *fn;               /* fn(logits) -> (value, float32 [B,T,Vo] gradient) */
    PyObject *owner;
} metric_ctx;

static mi_status py_metric(void *ctx, const mi_tensor_view *lv, float *dlogits, double *value)
{
    metric_ctx *mc = ctx;
    if (mc->builtin)
        return mi_metric_eval(mc->builtin, lv->data, lv->shape[0], lv->shape[1], lv->shape[2], dlogits,
                              value);
    PyGILState_STATE g = PyGILState_Ensure();
    mi_status st = MI_ERR_CALLBACK;
    mi_arg grad = MI_ARG_FLOAT("metric gradient", 3, 3);
    PyObject *logits = view_of(mc->owner, lv, 0), *res = NULL;
    if (!logits) goto done;
    if (!(res = PyObject_CallOneArg(mc->fn, logits))) goto done;
    PyObject *gobj;
    if (!PyArg_ParseTuple(res, "dO;metric: expected (value, gradient)", value, &gobj)) goto done;
    if (mi_arg_convert(gobj, &grad) < 0) goto done;
    npy_intp shape[3] = {lv->shape[0], lv->shape[1], lv->shape[2]};
    if (mi_arg_shape(&grad, 3, shape, "like the logits") < 0) goto done;
    memcpy(dlogits, PyArray_DATA(grad.arr), sizeof(float) * (size_t)(shape[0] * shape[1] * shape[2]));
    st = MI_OK;
done:
    mi_arg_release(&grad);
    Py_XDECREF(res);
    Py_XDECREF(logits);
    PyGILState_Release(g);
    return st;
}

/* The built-in metric of a ("loss", targets) / ("logit_diff", pos, answer,
 * wrong) / ("logprob", pos, tokens) tuple; its arrays go into args[0..3). */
static int parse_metric(PyObject *spec, npy_intp B, npy_intp T, mi_metric *mt, mi_arg *args)
{
    const char *kind;
    PyObject *x0 = NULL, *x1 = NULL, *x2 = NULL;
    if (!PyArg_ParseTuple(spec, "sO|OO:metric", &kind, &x0, &x1, &x2)) return -1;
    memset(mt, 0, sizeof *mt);
    npy_intp bt[2] = {B, T};
    if (!strcmp(kind, "loss")) {
        args[0] = MI_ARG_INT64("targets", 2, 2);
        if (mi_arg_convert(x0, &args[0]) < 0 || mi_arg_shape(&args[0], 2, bt, "like tokens") < 0) return -1;
        mt->kind = MI_METRIC_LOSS;
        mt->targets = mi_arg_data(&args[0]);
        return 0;
    }
    int diff = !strcmp(kind, "logit_diff");
    if (!diff && strcmp(kind, "logprob")) {
        PyErr_Format(PyExc_ValueError, "metric: unknown kind %R", PyTuple_GET_ITEM(spec, 0));
        return -1;
    }
    static const char *const names[2][3] = {{"pos", "tokens", ""}, {"pos", "answer_tokens", "wrong_tokens"}};
    PyObject *objs[3] = {x0, x1, x2};
    for (int i = 0; i < 2 + diff; i++) {
        args[i] = MI_ARG_INT64(names[diff][i], 1, 1);
        if (!objs[i]) { PyErr_Format(PyExc_TypeError, "metric %s: %s missing", kind, names[diff][i]); return -1; }
        if (mi_arg_convert(objs[i], &args[i]) < 0 || mi_arg_shape(&args[i], 1, &B, "[batch]") < 0) return -1;
    }
    mt->kind = diff ? MI_METRIC_LOGIT_DIFF : MI_METRIC_LOGPROB;
    mt->pos = mi_arg_data(&args[0]);
    mt->a = mi_arg_data(&args[1]);
    mt->c = diff ? mi_arg_data(&args[2]) : NULL;
    return 0;
}

/* {point_id: view} of the points with `bit` in flags. */
static PyObject *views(const mi_transformer *tf, const mi_tf_plan *plan, float *arena, PyObject *owner,
                       const uint8_t *flags, int bit)
{
    PyObject *d = PyDict_New();
    for (int p = 0; d && p < mi_tf_n_points(&tf->spec); p++) {
        mi_tensor_view v;
        if (!(flags[p] & bit) || !mi_tf_point_view(tf, plan, arena, p, &v)) continue;
        PyObject *key = PyLong_FromLong(p), *val = key ? view_of(owner, &v, 1) : NULL;
        int bad = !val || PyDict_SetItem(d, key, val) < 0;
        Py_XDECREF(key);
        Py_XDECREF(val);
        if (bad) Py_CLEAR(d);
    }
    return d;
}

PyDoc_STRVAR(grad_doc,
"grad(model, tokens, flags, bwd_flags, metric, callback=None, bwd_callback=None,\n"
"     pos_ids=None, key_mask=None, grads=None)\n--\n\n"
"Forward, metric, and backward to every hook point. flags / bwd_flags: bytes, one\n"
"per point id (1 cache, 2 callback) for the forward and the backward; callback and\n"
"bwd_callback(point_id, view) run at callback points (a backward view is the\n"
"gradient: edits flow upstream). metric: (\"loss\", targets [B,T]), (\"logit_diff\",\n"
"pos [B], answer [B], wrong [B]), (\"logprob\", pos [B], tokens [B]), or fn(logits)\n"
"-> (value, float32 gradient [B,T,Vo]). grads: a grad_blob to which parameter\n"
"gradients accumulate (None: not computed). Returns (value, logits,\n"
"{point_id: activation}, {point_id: gradient}), the dicts for cache points.");

static PyObject *py_grad(PyObject *module, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"model", "tokens", "flags", "bwd_flags", "metric", "callback",
                             "bwd_callback", "pos_ids", "key_mask", "grads", NULL};
    PyObject *model, *metric, *cb = Py_None, *bcb = Py_None;
    Py_buffer flags = {0}, bflags = {0};
    mi_arg tokens = MI_ARG_INT64("tokens", 2, 2);
    mi_arg pos = MI_ARG("pos_ids", NPY_INT64, MI_ARG_OPTIONAL, 2, 2);
    mi_arg mask = MI_ARG("attention_mask", NPY_FLOAT32, MI_ARG_OPTIONAL, 2, 2);
    mi_arg grads = MI_ARG("grads", NPY_FLOAT32, MI_ARG_OPTIONAL | MI_ARG_INPLACE, 1, 1);
    mi_arg margs[3] = {MI_ARG_INT64("", 0, 0), MI_ARG_INT64("", 0, 0), MI_ARG_INT64("", 0, 0)};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO&y*y*O|OOO&O&O&:grad", kwlist, &model, mi_conv_array,
                                     &tokens, &flags, &bflags, &metric, &cb, &bcb, mi_conv_array, &pos,
                                     mi_conv_array, &mask, mi_conv_array, &grads))
        return NULL;
    PyObject *res = NULL, *owner = NULL, *out = NULL,
             *cache = NULL, *gcache = NULL;
    mi_tf_plan plan = {0}, gplan = {0};
    mi_transformer *tf = mi_py_model_use(module, model);
    if (!tf) goto release;
    int np = mi_tf_n_points(&tf->spec);
    if (flags.len != np || bflags.len != np) {
        PyErr_Format(PyExc_ValueError, "flags: expected %d bytes, got %zd and %zd", np, flags.len, bflags.len);
        goto done;
    }
    if ((cb != Py_None && !PyCallable_Check(cb)) || (bcb != Py_None && !PyCallable_Check(bcb))) {
        PyErr_SetString(PyExc_TypeError, "callback: expected a callable or None");
        goto done;
    }
    npy_intp *bt = PyArray_DIMS(tokens.arr), B = bt[0], T = bt[1];
    if ((pos.arr && mi_arg_shape(&pos, 2, bt, "like tokens") < 0)
        || (mask.arr && mi_arg_shape(&mask, 2, bt, "like tokens") < 0))
        goto done;
    if (grads.arr && PyArray_SIZE(grads.arr) != (npy_intp)tf->n_params) {
        PyErr_Format(PyExc_ValueError, "grads: expected %zu floats (from grad_blob), got %ld",
                     tf->n_params, (long)PyArray_SIZE(grads.arr));
        goto done;
    }
    mi_metric builtin;
    metric_ctx mc = {NULL, NULL, NULL};
    if (PyTuple_Check(metric)) {
        if (parse_metric(metric, B, T, &builtin, margs) < 0) goto done;
        mc.builtin = &builtin;
    } else if (PyCallable_Check(metric)) {
        mc.fn = metric;
    } else {
        PyErr_Format(PyExc_TypeError, "metric: expected a built-in metric or a callable, got %s",
                     Py_TYPE(metric)->tp_name);
        goto done;
    }
    mi_status st = mi_tf_grad_plan(tf, B, T, flags.buf, bflags.buf, &plan, &gplan);
    if (st != MI_OK) { mi_py_raise(st); goto done; }
    /* activations, their gradients and the pass's scratch in one block (64-byte
     * aligned parts): the model's last released arena when it fits, warm pages */
    size_t na = (plan.n_floats + 15) / 16 * 16, ng = (gplan.n_floats + 15) / 16 * 16;
    float *arena = NULL, *garena, *scratch;
    if (!(owner = mi_py_model_arena(module, model, na + ng + mi_tf_grad_scratch(tf, B, T), &arena)))
        goto done;
    garena = arena + na;
    scratch = garena + ng;
    mc.owner = owner;
    hook_ctx fh = {cb, owner}, bh = {bcb, owner};
    double value = 0.0;
    const int64_t *tk = mi_arg_data(&tokens), *pd = mi_arg_data(&pos);
    const float *md = mi_arg_data(&mask);
    float *gd = mi_arg_data(&grads);
    const uint8_t *fl = flags.buf, *bfl = bflags.buf;
    Py_BEGIN_ALLOW_THREADS
    st = mi_tf_grad(tf, &plan, &gplan, arena, garena, scratch, fl, bfl, tk, pd, md, cb == Py_None ? NULL : py_hook,
                    &fh, py_metric, &mc, &value, bcb == Py_None ? NULL : py_hook, &bh, gd);
    Py_END_ALLOW_THREADS
    if (st != MI_OK) { mi_py_raise(st); goto done; }
    npy_intp oshape[3] = {B, T, tf->spec.d_vocab_out};
    if (!(out = mi_py_view(owner, mi_tf_output(tf, &plan, arena), 3, oshape, NULL, 1))) goto done;
    if (!(cache = views(tf, &plan, arena, owner, fl, MI_HOOK_CACHE))) goto done;
    if (!(gcache = views(tf, &gplan, garena, owner, bfl, MI_HOOK_CACHE))) goto done;
    res = Py_BuildValue("dOOO", value, out, cache, gcache);
done:
    mi_py_model_release(model);
release:
    mi_tf_plan_free(&plan);
    mi_tf_plan_free(&gplan);
    PyBuffer_Release(&flags);
    PyBuffer_Release(&bflags);
    mi_arg_release(&tokens); mi_arg_release(&pos); mi_arg_release(&mask); mi_arg_release(&grads);
    for (int i = 0; i < 3; i++) mi_arg_release(&margs[i]);
    Py_XDECREF(owner);
    Py_XDECREF(out); Py_XDECREF(cache); Py_XDECREF(gcache);
    return res;
}

static PyMethodDef grad_methods[] = {
    {"grad", (PyCFunction)(void (*)(void))py_grad, METH_VARARGS | METH_KEYWORDS, grad_doc},
    {NULL, NULL, 0, NULL},
};

int mi_py_grad_exec(PyObject *m) { return PyModule_AddFunctions(m, grad_methods); }
