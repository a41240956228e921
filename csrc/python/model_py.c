/* model_py.c - _core.Model: the C transformer (csrc/model/transformer.h) as a
 * Python heap type.
 *
 * The parameter blob is owned by a _core.Buffer, so parameter views stay
 * valid while any of them lives. Each forward call plans its arena, wraps it
 * in a Buffer BEFORE the pass (hooks and the cache get views whose base is
 * that Buffer) and runs the pass with the GIL released; at CALLBACK points the
 * C hook re-acquires the GIL and calls the Python dispatcher. */
#include "python/bridge.h"

#include <string.h>

#include "common/memory.h"
#include "model/transformer.h"

typedef struct {
    PyObject_HEAD
    mi_transformer tf;
    PyObject *blob;       /* _core.Buffer owning tf.params */
    int initialised;
} mi_py_model;

static void release_aligned(void *data, size_t nbytes, void *ctx) { mi_free(data); }

static int model_init(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_vocab",
                             "d_vocab_out", "n_ctx", "norm", "eps", "act", "gated_mlp",
                             "attn_only", "causal", "use_attn_result", "use_hook_mlp_in",
                             "pos_embed", "attn_scale", "no_head", NULL};
    mi_py_model *mo = (mi_py_model *)self;
    if (mo->initialised) {
        PyErr_SetString(PyExc_RuntimeError, "Model: already initialised");
        return -1;
    }
    long long nl, dm, nh, dh, dmlp, dv, dvo, nctx;
    int norm, act, gated = 0, attn_only = 0, causal = 1, result = 0, mlp_in = 0, pos = 1, no_head = 0;
    double eps, attn_scale = 1.0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "LLLLLLLLidi|ppppppdp:Model", kwlist, &nl, &dm,
                                     &nh, &dh, &dmlp, &dv, &dvo, &nctx, &norm, &eps, &act,
                                     &gated, &attn_only, &causal, &result, &mlp_in, &pos,
                                     &attn_scale, &no_head))
        return -1;
    mi_tf_spec s = {nl, dm, nh, dh, dmlp, dv, dvo, nctx, (mi_norm_type)norm, (float)eps, act,
                    gated, attn_only, causal, result, mlp_in, pos, (float)attn_scale, no_head};
    if (norm < MI_NORM_NONE || norm > MI_NORM_RMSPRE) {
        PyErr_Format(PyExc_ValueError, "Model: unknown norm type %d", norm);
        return -1;
    }
    mi_status st = mi_tf_init(&mo->tf, &s);
    if (st != MI_OK) { mi_py_raise(st); return -1; }
    float *blob = mi_calloc(mo->tf.n_params * sizeof(float));
    if (!blob) { mi_tf_free(&mo->tf); PyErr_NoMemory(); return -1; }
    PyObject *module = PyType_GetModuleByDef(Py_TYPE(self), &mi_core_module);
    if (!module) { mi_free(blob); mi_tf_free(&mo->tf); return -1; }
    mo->blob = mi_py_buffer_new(module, blob, mo->tf.n_params * sizeof(float), release_aligned, NULL);
    if (!mo->blob) { mi_tf_free(&mo->tf); return -1; }
    mo->tf.params = blob;
    mo->initialised = 1;
    return 0;
}

static void model_dealloc(PyObject *self)
{
    mi_py_model *mo = (mi_py_model *)self;
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (mo->initialised) mi_tf_free(&mo->tf);
    Py_CLEAR(mo->blob);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static int model_traverse(PyObject *self, visitproc visit, void *arg)
{
    Py_VISIT(((mi_py_model *)self)->blob);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static int check_ready(mi_py_model *mo)
{
    if (mo->initialised) return 0;
    PyErr_SetString(PyExc_RuntimeError, "Model: not initialised");
    return -1;
}

PyDoc_STRVAR(params_doc, "params()\n--\n\nA dict: parameter name -> writable float32 view of the "
             "model's one parameter blob (internal layout, e.g. blocks.0.attn.W_qkv [D,3,H,Dh]).");

static PyObject *model_params(PyObject *self, PyObject *unused)
{
    mi_py_model *mo = (mi_py_model *)self;
    if (check_ready(mo) < 0) return NULL;
    PyObject *d = PyDict_New();
    if (!d) return NULL;
    for (int i = 0; i < mo->tf.n_table; i++) {
        const mi_tf_param *p = &mo->tf.table[i];
        npy_intp shape[4];
        for (int k = 0; k < p->ndim; k++) shape[k] = (npy_intp)p->shape[k];
        PyObject *v = mi_py_view(mo->blob, mo->tf.params + p->offset, p->ndim, shape, NULL, 1);
        if (!v || PyDict_SetItemString(d, p->name, v) < 0) { Py_XDECREF(v); Py_DECREF(d); return NULL; }
        Py_DECREF(v);
    }
    return d;
}

PyDoc_STRVAR(hook_points_doc, "hook_points()\n--\n\nThe hook points this spec fires, in forward "
             "order: a list of (name, point_id, layer or -1).");

static PyObject *model_hook_points(PyObject *self, PyObject *unused)
{
    mi_py_model *mo = (mi_py_model *)self;
    if (check_ready(mo) < 0) return NULL;
    PyObject *lst = PyList_New(0);
    if (!lst) return NULL;
    char name[64];
    int n = mi_tf_n_points(&mo->tf.spec);
    for (int p = 0; p < n; p++) {
        if (!mi_tf_point_present(&mo->tf.spec, p)) continue;
        int layer = mi_tf_point_name(&mo->tf.spec, p, name);
        PyObject *t = Py_BuildValue("(sii)", name, p, layer);
        if (!t || PyList_Append(lst, t) < 0) { Py_XDECREF(t); Py_DECREF(lst); return NULL; }
        Py_DECREF(t);
    }
    return lst;
}

/* ---- forward ---- */

typedef struct {
    PyObject *callback;   /* callback(point_id, view) */
    PyObject *arena;      /* the Buffer owning this call's arena */
} hook_ctx;

static PyObject *view_of(PyObject *owner, const mi_tensor_view *v)
{
    npy_intp shape[4], strides[4];
    for (int i = 0; i < v->ndim; i++) {
        shape[i] = (npy_intp)v->shape[i];
        strides[i] = (npy_intp)(v->strides[i] * (int64_t)sizeof(float));
    }
    return mi_py_view(owner, v->data, v->ndim, shape, strides, 1);
}

static mi_status py_hook(void *ctx, int point, const mi_tensor_view *v)
{
    hook_ctx *h = ctx;
    PyGILState_STATE g = PyGILState_Ensure();
    mi_status st = MI_OK;
    PyObject *view = view_of(h->arena, v);
    PyObject *res = view ? PyObject_CallFunction(h->callback, "iO", point, view) : NULL;
    if (!res) st = MI_ERR_CALLBACK;
    Py_XDECREF(res);
    Py_XDECREF(view);
    PyGILState_Release(g);
    return st;
}

/* An int64 C-contiguous [B,T] array from `obj` (argument `name`), or NULL. */
static PyArrayObject *int64_arg(PyObject *obj, const char *name, npy_intp B, npy_intp T)
{
    PyArrayObject *a = (PyArrayObject *)PyArray_FROMANY(obj, NPY_INT64, 2, 2, NPY_ARRAY_CARRAY_RO);
    if (!a) return NULL;
    if (B >= 0 && (PyArray_DIM(a, 0) != B || PyArray_DIM(a, 1) != T)) {
        char buf[128];
        PyErr_Format(PyExc_ValueError, "%s: expected shape (%ld, %ld) like tokens, got %s", name,
                     (long)B, (long)T, mi_py_shape_str(a, buf));
        Py_DECREF(a);
        return NULL;
    }
    return a;
}

PyDoc_STRVAR(forward_doc,
"forward(tokens, flags, callback=None, pos_ids=None, key_mask=None, stop_layer=-1,\n"
"        resid=None, start_layer=-1)\n--\n\n"
"Run the pass. tokens int64 [B,T] (None with start_layer >= 0: then resid\n"
"float32 [B,T,D] enters block start_layer); flags: bytes, one per point id (1 cache,\n"
"2 callback, 4 transient callback: its view is valid only during the layer);\n"
"callback(point_id, view) is called at callback points (it may edit the view in place). Returns (output, {point_id: view}) where output is\n"
"the logits [B,T,Vo] or, with stop_layer < n_layers, the residual stream.");

static PyObject *model_forward(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"tokens", "flags", "callback", "pos_ids", "key_mask", "stop_layer",
                             "resid", "start_layer", NULL};
    mi_py_model *mo = (mi_py_model *)self;
    if (check_ready(mo) < 0) return NULL;
    PyObject *tok_obj, *cb = Py_None, *pos_obj = Py_None, *mask_obj = Py_None, *resid_obj = Py_None;
    Py_buffer flags;
    int stop = -1, start = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Oy*|OOOiOi:forward", kwlist, &tok_obj, &flags, &cb,
                                     &pos_obj, &mask_obj, &stop, &resid_obj, &start))
        return NULL;
    const mi_tf_spec *s = &mo->tf.spec;
    PyArrayObject *tokens = NULL, *pos = NULL, *mask = NULL, *resid = NULL;
    PyObject *arena_owner = NULL, *out = NULL, *cache = NULL, *res = NULL;
    mi_tf_plan plan = {0};
    int np = mi_tf_n_points(s);
    if (flags.len != np) {
        PyErr_Format(PyExc_ValueError, "flags: expected %d bytes, got %zd", np, flags.len);
        goto done;
    }
    if (cb != Py_None && !PyCallable_Check(cb)) {
        PyErr_SetString(PyExc_TypeError, "callback: expected a callable or None");
        goto done;
    }
    npy_intp B, T;
    if (start >= 0) {
        char buf[128];
        if (!(resid = mi_py_float_arg(resid_obj, "input (residual stream)", 3, 3))) goto done;
        if (PyArray_DIM(resid, 2) != s->d_model) {
            PyErr_Format(PyExc_ValueError, "input (residual stream): expected [batch, pos, d_model=%ld], "
                         "got %s", (long)s->d_model, mi_py_shape_str(resid, buf));
            goto done;
        }
        B = PyArray_DIM(resid, 0);
        T = PyArray_DIM(resid, 1);
    } else {
        if (!(tokens = int64_arg(tok_obj, "tokens", -1, -1))) goto done;
        B = PyArray_DIM(tokens, 0);
        T = PyArray_DIM(tokens, 1);
    }
    if (pos_obj != Py_None && !(pos = int64_arg(pos_obj, "pos_ids", B, T))) goto done;
    if (mask_obj != Py_None) {
        if (!(mask = mi_py_float_arg(mask_obj, "key_mask", 2, 2))) goto done;
        if (PyArray_DIM(mask, 0) != B || PyArray_DIM(mask, 1) != T) {
            char buf[128];
            PyErr_Format(PyExc_ValueError, "attention_mask: expected shape (%ld, %ld) like tokens, "
                         "got %s", (long)B, (long)T, mi_py_shape_str(mask, buf));
            goto done;
        }
    }
    if (stop < 0) stop = (int)s->n_layers;
    const uint8_t *fl = flags.buf;
    mi_status st = mi_tf_plan_call(&mo->tf, B, T, start, stop, fl, &plan);
    if (st != MI_OK) { mi_py_raise(st); goto done; }
    float *arena = mi_malloc(plan.n_floats * sizeof(float));
    if (!arena) { PyErr_NoMemory(); goto done; }
    PyObject *module = PyType_GetModuleByDef(Py_TYPE(self), &mi_core_module);
    if (!module) { mi_free(arena); goto done; }
    if (!(arena_owner = mi_py_buffer_new(module, arena, plan.n_floats * sizeof(float),
                                         release_aligned, NULL)))
        goto done;
    hook_ctx hc = {cb, arena_owner};
    const int64_t *tk = tokens ? PyArray_DATA(tokens) : NULL;
    const float *rd = resid ? PyArray_DATA(resid) : NULL;
    const int64_t *pd = pos ? PyArray_DATA(pos) : NULL;
    const float *md = mask ? PyArray_DATA(mask) : NULL;
    /* a callback point without a callback is only a cache point */
    Py_BEGIN_ALLOW_THREADS
    st = mi_tf_forward(&mo->tf, &plan, arena, fl, tk, rd, pd, md, cb == Py_None ? NULL : py_hook, &hc);
    Py_END_ALLOW_THREADS
    if (st != MI_OK) { mi_py_raise(st); goto done; }
    npy_intp oshape[3] = {B, T, stop < s->n_layers || s->no_head ? s->d_model : s->d_vocab_out};
    if (!(out = mi_py_view(arena_owner, mi_tf_output(&mo->tf, &plan, arena), 3, oshape, NULL, 1)))
        goto done;
    if (!(cache = PyDict_New())) goto done;
    for (int p = 0; p < np; p++) {
        mi_tensor_view v;
        if (!(fl[p] & MI_HOOK_CACHE) || !mi_tf_point_view(&mo->tf, &plan, arena, p, &v)) continue;
        PyObject *key = PyLong_FromLong(p), *val = key ? view_of(arena_owner, &v) : NULL;
        int bad = !val || PyDict_SetItem(cache, key, val) < 0;
        Py_XDECREF(key);
        Py_XDECREF(val);
        if (bad) goto done;
    }
    res = PyTuple_Pack(2, out, cache);
done:
    PyBuffer_Release(&flags);
    mi_tf_plan_free(&plan);
    Py_XDECREF(tokens); Py_XDECREF(pos); Py_XDECREF(mask); Py_XDECREF(resid);
    Py_XDECREF(arena_owner); Py_XDECREF(out); Py_XDECREF(cache);
    return res;
}

PyDoc_STRVAR(arena_bytes_doc, "arena_bytes(batch, seq, flags, stop_layer=-1)\n--\n\n"
             "Bytes the activation arena of such a call takes (for memory reports).");

static PyObject *model_arena_bytes(PyObject *self, PyObject *args)
{
    mi_py_model *mo = (mi_py_model *)self;
    if (check_ready(mo) < 0) return NULL;
    long long B, T;
    Py_buffer flags;
    int stop = -1;
    if (!PyArg_ParseTuple(args, "LLy*|i:arena_bytes", &B, &T, &flags, &stop)) return NULL;
    if (flags.len != mi_tf_n_points(&mo->tf.spec)) {
        PyBuffer_Release(&flags);
        return PyErr_Format(PyExc_ValueError, "flags: wrong length %zd", flags.len);
    }
    if (stop < 0) stop = (int)mo->tf.spec.n_layers;
    mi_tf_plan plan;
    mi_status st = mi_tf_plan_call(&mo->tf, B, T, -1, stop, flags.buf, &plan);
    PyBuffer_Release(&flags);
    if (st != MI_OK) return mi_py_raise(st);
    size_t n = plan.n_floats * sizeof(float);
    mi_tf_plan_free(&plan);
    return PyLong_FromSize_t(n);
}

static PyObject *model_n_points(PyObject *self, void *c)
{
    mi_py_model *mo = (mi_py_model *)self;
    if (check_ready(mo) < 0) return NULL;
    return PyLong_FromLong(mi_tf_n_points(&mo->tf.spec));
}

static PyObject *model_param_bytes(PyObject *self, void *c)
{
    mi_py_model *mo = (mi_py_model *)self;
    if (check_ready(mo) < 0) return NULL;
    return PyLong_FromSize_t(mo->tf.n_params * sizeof(float));
}

static PyMethodDef model_methods[] = {
    {"params", model_params, METH_NOARGS, params_doc},
    {"hook_points", model_hook_points, METH_NOARGS, hook_points_doc},
    {"forward", (PyCFunction)(void (*)(void))model_forward, METH_VARARGS | METH_KEYWORDS, forward_doc},
    {"arena_bytes", model_arena_bytes, METH_VARARGS, arena_bytes_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef model_getset[] = {
    {"n_points", model_n_points, NULL, "Number of hook point ids (present or not).", NULL},
    {"param_bytes", model_param_bytes, NULL, "Bytes of the parameter blob.", NULL},
    {NULL},
};

static PyType_Slot model_slots[] = {
    {Py_tp_init, model_init},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_dealloc, model_dealloc},
    {Py_tp_traverse, model_traverse},
    {Py_tp_methods, model_methods},
    {Py_tp_getset, model_getset},
    {Py_tp_doc, "Model(*, n_layers, d_model, n_heads, d_head, d_mlp, d_vocab, d_vocab_out, n_ctx, "
                "norm, eps, act, ...)\n\nThe C transformer: one parameter blob and a forward pass "
                "with hook points. Use mechinterp_c.HookedTransformer rather than this directly."},
    {0, NULL},
};

static PyType_Spec model_spec = {
    .name = "mechinterp_c._core.Model",
    .basicsize = sizeof(mi_py_model),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = model_slots,
};

int mi_py_model_exec(PyObject *m)
{
    PyObject *tp = PyType_FromModuleAndSpec(m, &model_spec, NULL);
    if (!tp) return -1;
    mi_state(m)->model_type = (PyTypeObject *)tp;
    return PyModule_AddObjectRef(m, "Model", tp);
}

/* For train_py.c: the C transformer behind a _core.Model, or NULL with a
 * TypeError (`module` is the _core module). */
mi_transformer *mi_py_model_tf(PyObject *module, PyObject *obj)
{
    if (!PyObject_TypeCheck(obj, mi_state(module)->model_type)) {
        PyErr_Format(PyExc_TypeError, "expected a _core.Model, got %s", Py_TYPE(obj)->tp_name);
        return NULL;
    }
    mi_py_model *mo = (mi_py_model *)obj;
    if (check_ready(mo) < 0) return NULL;
    return &mo->tf;
}
