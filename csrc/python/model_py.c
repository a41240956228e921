/* model_py.c - _core.Model: the C transformer (csrc/model/transformer.h) as a
 * Python heap type.
 *
 * The parameter blob is owned by a _core.Buffer, so parameter views stay
 * valid while any of them lives. Each forward call plans its arena, wraps it
 * in a Buffer BEFORE the pass (hooks and the cache get views whose base is
 * that Buffer) and runs the pass with the GIL released; at CALLBACK points the
 * C hook re-acquires the GIL and calls the Python dispatcher. */
#include "python/bridge.h"

#include <math.h>
#include <string.h>
#include <sys/mman.h>

#include "common/memory.h"
#include "kernels/attention.h"
#include "kernels/norm.h"
#include "model/transformer.h"
#include "python/model_py.h"

typedef struct {
    PyObject_HEAD
    mi_transformer tf;
    PyObject *blob;       /* _core.Buffer owning tf.params */
    PyObject **external;  /* [n_table]: the array behind table[i].data (set_param), or NULL */
    int running;          /* forward passes in flight (weights must not move meanwhile) */
    int initialised;
} mi_py_model;

static void release_mapped(void *data, size_t nbytes, void *ctx) { munmap(data, nbytes); }

/* A one-slot cache of the last released activation arena. Arenas of more
 * than a few MiB come from mmap, so every call would page-fault its whole
 * arena in afresh (a GPT-2-small forward: ~33k faults, a full cache ~130k);
 * when the previous call's arena has been released (nothing holds a view of
 * it) the next call of a similar size reuses it instead. At most
 * ARENA_KEEP_MAX bytes stay held. Only touched with the GIL held (arenas are
 * allocated before the pass and released by Buffer deallocation). */
#define ARENA_KEEP_MAX ((size_t)768 << 20)
static float *kept_arena;
static size_t kept_bytes;

static void release_arena(void *data, size_t nbytes, void *ctx)
{
    if (nbytes > ARENA_KEEP_MAX) { mi_free(data); return; }
    if (kept_arena) mi_free(kept_arena);
    kept_arena = data;
    kept_bytes = nbytes;
}

/* An uninitialised arena of at least nbytes (64-byte aligned); *got: its size. */
static float *arena_alloc(size_t nbytes, size_t *got)
{
    if (kept_arena && kept_bytes >= nbytes && kept_bytes / 2 <= nbytes) {
        float *a = kept_arena;
        *got = kept_bytes;
        kept_arena = NULL;
        return a;
    }
    *got = nbytes;
    return mi_malloc(nbytes);
}

static int model_init(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_vocab",
                             "d_vocab_out", "n_ctx", "norm", "eps", "act", "gated_mlp",
                             "attn_only", "causal", "use_attn_result", "use_hook_mlp_in",
                             "pos_embed", "attn_scale", "use_split_qkv_input",
                             "use_attn_in", "no_head", NULL};
    mi_py_model *mo = (mi_py_model *)self;
    if (mo->initialised) {
        PyErr_SetString(PyExc_RuntimeError, "Model: already initialised");
        return -1;
    }
    long long nl, dm, nh, dh, dmlp, dv, dvo, nctx;
    int norm, act, gated = 0, attn_only = 0, causal = 1, result = 0, mlp_in = 0, pos = 1;
    int split_qkv = 0, attn_in = 0, no_head = 0;
    double eps, attn_scale = 1.0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "LLLLLLLLidi|ppppppdppp:Model", kwlist, &nl, &dm,
                                     &nh, &dh, &dmlp, &dv, &dvo, &nctx, &norm, &eps, &act,
                                     &gated, &attn_only, &causal, &result, &mlp_in, &pos,
                                     &attn_scale, &split_qkv, &attn_in, &no_head))
        return -1;
    mi_tf_spec s = {nl, dm, nh, dh, dmlp, dv, dvo, nctx, (mi_norm_type)norm, (float)eps, act,
                    gated, attn_only, causal, result, mlp_in, pos, (float)attn_scale};
    s.use_split_qkv_input = split_qkv;
    s.use_attn_in = attn_in;
    s.no_head = no_head;
    if (norm < MI_NORM_NONE || norm > MI_NORM_RMSPRE) {
        PyErr_Format(PyExc_ValueError, "Model: unknown norm type %d", norm);
        return -1;
    }
    mi_status st = mi_tf_init(&mo->tf, &s);
    if (st != MI_OK) { mi_py_raise(st); return -1; }
    /* Anonymous pages: zero and lazily committed, so a blob whose tensors a loader
     * points into a mapped checkpoint (set_param) costs neither time nor memory. */
    size_t blob_bytes = mo->tf.n_params * sizeof(float);
    float *blob = mmap(NULL, blob_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    mo->external = PyMem_Calloc((size_t)mo->tf.n_table, sizeof(PyObject *));
    if (blob == MAP_FAILED || !mo->external) {
        if (blob != MAP_FAILED) munmap(blob, blob_bytes);
        PyMem_Free(mo->external);
        mo->external = NULL;
        PyErr_Format(PyExc_MemoryError, "Model: cannot map the parameter blob (n_params=%zu "
                     "floats, %zu bytes)", mo->tf.n_params, blob_bytes);
        mi_tf_free(&mo->tf);
        return -1;
    }
    PyObject *module = PyType_GetModuleByDef(Py_TYPE(self), &mi_core_module);
    if (!module) { munmap(blob, blob_bytes); mi_tf_free(&mo->tf); return -1; }
    mo->blob = mi_py_buffer_new(module, blob, blob_bytes, release_mapped, NULL);
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
    if (mo->external) {
        for (int i = 0; i < mo->tf.n_table; i++) Py_CLEAR(mo->external[i]);
        PyMem_Free(mo->external);
        mo->external = NULL;
    }
    if (mo->initialised) mi_tf_free(&mo->tf);
    Py_CLEAR(mo->blob);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static int model_traverse(PyObject *self, visitproc visit, void *arg)
{
    mi_py_model *mo = (mi_py_model *)self;
    Py_VISIT(mo->blob);
    if (mo->external)
        for (int i = 0; i < mo->tf.n_table; i++) Py_VISIT(mo->external[i]);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static int check_ready(mi_py_model *mo)
{
    if (mo->initialised) return 0;
    PyErr_SetString(PyExc_RuntimeError, "Model: not initialised");
    return -1;
}

PyDoc_STRVAR(params_doc, "params()\n--\n\nA dict: parameter name -> float32 view of the "
             "model's weights (internal layout, e.g. blocks.0.attn.W_qkv [D,3,H,Dh]): the one "
             "parameter blob, or the array given to set_param (writable when it is). With "
             "tied_unembed, unembed.W_U is the [D, V] transposed view of embed.W_E.");

static int table_index(const mi_transformer *tf, const char *name)
{
    for (int i = 0; i < tf->n_table; i++)
        if (strcmp(tf->table[i].name, name) == 0) return i;
    return -1;
}

static PyObject *model_params(PyObject *self, PyObject *unused)
{
    mi_py_model *mo = (mi_py_model *)self;
    if (check_ready(mo) < 0) return NULL;
    PyObject *d = PyDict_New();
    if (!d) return NULL;
    int i_we = table_index(&mo->tf, "embed.W_E");
    for (int i = 0; i < mo->tf.n_table; i++) {
        const mi_tf_param *p = &mo->tf.table[i];
        npy_intp shape[4], strides[4], *st = NULL;
        for (int k = 0; k < p->ndim; k++) shape[k] = (npy_intp)p->shape[k];
        PyObject *owner = mo->blob;
        float *data = mo->tf.params + p->offset;
        int writable = 1;
        int src = i;
        if (mo->tf.tied_unembed && p->offset == mo->tf.global_off[MI_G_W_U]) {
            /* W_U [D, V] = W_E^T: the same memory, strided */
            src = i_we;
            strides[0] = (npy_intp)sizeof(float);
            strides[1] = (npy_intp)(shape[0] * (npy_intp)sizeof(float));
            st = strides;
            data = mo->tf.params + mo->tf.table[src].offset;
        }
        if (mo->external[src]) {
            owner = mo->external[src];
            data = mo->tf.table[src].data;
            writable = PyArray_ISWRITEABLE((PyArrayObject *)owner);
        }
        PyObject *v = mi_py_view(owner, data, p->ndim, shape, st, writable);
        if (!v || PyDict_SetItemString(d, p->name, v) < 0) { Py_XDECREF(v); Py_DECREF(d); return NULL; }
        Py_DECREF(v);
    }
    return d;
}

PyDoc_STRVAR(set_param_doc,
"set_param(name, array)\n--\n\n"
"Let the model read parameter `name` from `array` in place (no copy): a\n"
"C-contiguous, aligned float32 ndarray with as many elements as the parameter\n"
"(its layout must be the internal one, e.g. HF GPT-2's c_attn.weight [D, 3D] for\n"
"W_qkv [D,3,H,Dh]). The model keeps a reference to the array (so an mmap behind\n"
"it stays mapped). Models with such parameters do not train: materialize() first.");

static PyObject *model_set_param(PyObject *self, PyObject *args)
{
    mi_py_model *mo = (mi_py_model *)self;
    if (check_ready(mo) < 0) return NULL;
    const char *name;
    PyObject *obj;
    if (!PyArg_ParseTuple(args, "sO:set_param", &name, &obj)) return NULL;
    if (mo->running)
        return PyErr_Format(PyExc_RuntimeError, "set_param(%s): a forward pass is running", name);
    int i = table_index(&mo->tf, name);
    if (i < 0) return PyErr_Format(PyExc_KeyError, "set_param: the model has no parameter %R",
                                   PyTuple_GET_ITEM(args, 0));
    mi_tf_param *p = &mo->tf.table[i];
    if (mo->tf.tied_unembed && p->offset == mo->tf.global_off[MI_G_W_U])
        return PyErr_Format(PyExc_ValueError, "set_param(%s): the unembedding is tied to embed.W_E "
                            "(set tied_unembed = False first)", name);
    if (!PyArray_Check(obj))
        return PyErr_Format(PyExc_TypeError, "set_param(%s): expected a numpy.ndarray, got %s",
                            name, Py_TYPE(obj)->tp_name);
    PyArrayObject *a = (PyArrayObject *)obj;
    char buf[128];
    if (PyArray_TYPE(a) != NPY_FLOAT32)
        return PyErr_Format(PyExc_TypeError, "set_param(%s): expected float32, got dtype %S", name,
                            (PyObject *)PyArray_DESCR(a));
    char who[96];
    snprintf(who, sizeof who, "set_param(%s)", name);
    if (mi_py_native_order(a, who) < 0) return NULL;
    if (!PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a))
        return PyErr_Format(PyExc_ValueError, "set_param(%s): the array must be C-contiguous and "
                            "aligned (shape %s)", name, mi_py_shape_str(a, buf));
    npy_intp numel = 1;
    for (int k = 0; k < p->ndim; k++) numel *= (npy_intp)p->shape[k];
    if (PyArray_SIZE(a) != numel) {
        char want[128];
        int n = 0;
        want[0] = 0;
        for (int k = 0; k < p->ndim; k++)
            n += snprintf(want + n, sizeof want - (size_t)n, k ? ", %ld" : "(%ld", (long)p->shape[k]);
        snprintf(want + n, sizeof want - (size_t)n, ")");
        return PyErr_Format(PyExc_ValueError, "set_param(%s): expected %ld elements %s, got shape %s",
                            name, (long)numel, want, mi_py_shape_str(a, buf));
    }
    Py_INCREF(obj);
    if (!mo->external[i]) mo->tf.n_external++;
    Py_XSETREF(mo->external[i], obj);
    p->data = (float *)PyArray_DATA(a);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(materialize_doc,
"materialize()\n--\n\nCopy every parameter given by set_param into the model's own blob and\n"
"untie the unembedding (W_U = W_E^T copied): afterwards the model owns all of its\n"
"weights (what training needs). Returns the number of tensors copied.");

static int untie(mi_py_model *mo)
{
    mi_transformer *tf = &mo->tf;
    const float *W_E = mi_tf_tensor(tf, tf->global_off[MI_G_W_E]);
    float *W_U = tf->params + tf->global_off[MI_G_W_U];
    int64_t V = tf->spec.d_vocab, D = tf->spec.d_model;
    /* blocked transpose: W_U [D, V] from W_E [V, D] */
    for (int64_t v0 = 0; v0 < V; v0 += 64)
        for (int64_t d = 0; d < D; d++)
            for (int64_t v = v0; v < V && v < v0 + 64; v++) W_U[d * V + v] = W_E[v * D + d];
    tf->tied_unembed = 0;
    return 0;
}

static PyObject *model_materialize(PyObject *self, PyObject *unused)
{
    mi_py_model *mo = (mi_py_model *)self;
    if (check_ready(mo) < 0) return NULL;
    if (mo->running) return PyErr_Format(PyExc_RuntimeError, "materialize: a forward pass is running");
    if (mi_py_check_mapped(mo->external, mo->tf.n_table) < 0) return NULL;
    if (mo->tf.tied_unembed) untie(mo);
    long copied = 0;
    for (int i = 0; i < mo->tf.n_table; i++) {
        mi_tf_param *p = &mo->tf.table[i];
        if (!mo->external[i]) continue;
        memcpy(mo->tf.params + p->offset, p->data,
               sizeof(float) * (size_t)PyArray_SIZE((PyArrayObject *)mo->external[i]));
        p->data = NULL;
        Py_CLEAR(mo->external[i]);
        copied++;
    }
    mo->tf.n_external = 0;
    return PyLong_FromLong(copied);
}

PyDoc_STRVAR(share_params_doc,
"share_params(other)\n--\n\n"
"Read every parameter from `other`'s memory from now on: its blob, the arrays given\n"
"to its set_param, and its tied_unembed (this model's own blob is dropped). Both\n"
"models then compute with, and edit, the same weights, so the views other.params()\n"
"gave stay the weights of this model too. Needs the same parameter layout (names,\n"
"offsets, shapes); returns False and changes nothing when the layouts differ.");

/* Same names, offsets and shapes in the same order (the blob layout). */
static int same_layout(const mi_transformer *a, const mi_transformer *b)
{
    if (a->n_params != b->n_params || a->n_table != b->n_table) return 0;
    for (int i = 0; i < a->n_table; i++) {
        const mi_tf_param *p = &a->table[i], *q = &b->table[i];
        if (strcmp(p->name, q->name) != 0 || p->offset != q->offset || p->ndim != q->ndim) return 0;
        for (int k = 0; k < p->ndim; k++)
            if (p->shape[k] != q->shape[k]) return 0;
    }
    return 1;
}

static PyObject *model_share_params(PyObject *self, PyObject *arg)
{
    mi_py_model *mo = (mi_py_model *)self;
    if (check_ready(mo) < 0) return NULL;
    if (Py_TYPE(arg) != Py_TYPE(self))
        return PyErr_Format(PyExc_TypeError, "share_params: expected a Model, got %s",
                            Py_TYPE(arg)->tp_name);
    mi_py_model *src = (mi_py_model *)arg;
    if (check_ready(src) < 0) return NULL;
    if (mo->running) return PyErr_Format(PyExc_RuntimeError, "share_params: a forward pass is running");
    if (src == mo) Py_RETURN_TRUE;
    if (!same_layout(&mo->tf, &src->tf)) Py_RETURN_FALSE;
    Py_INCREF(src->blob);
    Py_SETREF(mo->blob, src->blob);
    mo->tf.params = src->tf.params;
    for (int i = 0; i < mo->tf.n_table; i++) {
        Py_XINCREF(src->external[i]);
        Py_XSETREF(mo->external[i], src->external[i]);
        mo->tf.table[i].data = src->tf.table[i].data;
    }
    mo->tf.n_external = src->tf.n_external;
    mo->tf.tied_unembed = src->tf.tied_unembed;
    Py_RETURN_TRUE;
}

PyDoc_STRVAR(hook_points_doc, "hook_points()\n--\n\nEvery HookPoint of TransformerLens's "
             "module tree for this spec, in its module order (hook_dict order): a list of (name, "
             "point_id, layer or -1, fires). Point ids are in forward (firing) order; a point "
             "that does not fire accepts hooks that never run.");

static PyObject *model_hook_points(PyObject *self, PyObject *unused)
{
    mi_py_model *mo = (mi_py_model *)self;
    if (check_ready(mo) < 0) return NULL;
    const mi_tf_spec *s = &mo->tf.spec;
    int *ids = PyMem_Malloc(sizeof(int) * (size_t)mi_tf_n_points(s));
    if (!ids) return PyErr_NoMemory();
    int n = mi_tf_module_order(s, ids);
    PyObject *lst = PyList_New(n);
    char name[64];
    for (int i = 0; lst && i < n; i++) {
        int layer = mi_tf_point_name(s, ids[i], name);
        PyObject *t = Py_BuildValue("(siiO)", name, ids[i], layer,
                                    mi_tf_point_present(s, ids[i]) ? Py_True : Py_False);
        if (!t) Py_CLEAR(lst);
        else PyList_SET_ITEM(lst, i, t);
    }
    PyMem_Free(ids);
    return lst;
}

/* _core.HOOK_POINT_TABLE: the hook point table's rows as (name, scope, axes). */
static int add_point_table(PyObject *m)
{
    mi_tf_point_info rows[MI_TF_POINT_ROWS];
    mi_tf_point_table(rows);
    PyObject *t = PyTuple_New(MI_TF_POINT_ROWS);
    for (int i = 0; t && i < MI_TF_POINT_ROWS; i++) {
        PyObject *axes = PyTuple_New(rows[i].ndim);
        for (int a = 0; axes && a < rows[i].ndim; a++) {
            PyObject *ax = PyUnicode_FromString(rows[i].axes[a]);
            if (!ax) Py_CLEAR(axes);
            else PyTuple_SET_ITEM(axes, a, ax);
        }
        PyObject *row = axes ? Py_BuildValue("(ssN)", rows[i].name, rows[i].scope, axes) : NULL;
        if (!row) Py_CLEAR(t);
        else PyTuple_SET_ITEM(t, i, row);
    }
    if (!t) return -1;
    int r = PyModule_AddObjectRef(m, "HOOK_POINT_TABLE", t);
    Py_DECREF(t);
    return r;
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
    /* weights read in place from a checkpoint: is the file still the one mapped? */
    if (mo->tf.n_external && mi_py_check_mapped(mo->external, mo->tf.n_table) < 0) return NULL;
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
    size_t arena_bytes;
    float *arena = arena_alloc(plan.n_floats * sizeof(float), &arena_bytes);
    if (!arena) {
        PyErr_Format(PyExc_MemoryError, "forward: cannot allocate the activation arena of a "
                     "[%ld, %ld] call (%zu bytes)", (long)B, (long)T, plan.n_floats * sizeof(float));
        goto done;
    }
    PyObject *module = PyType_GetModuleByDef(Py_TYPE(self), &mi_core_module);
    if (!module) { release_arena(arena, arena_bytes, NULL); goto done; }
    if (!(arena_owner = mi_py_buffer_new(module, arena, arena_bytes, release_arena, NULL)))
        goto done;
    hook_ctx hc = {cb, arena_owner};
    const int64_t *tk = tokens ? PyArray_DATA(tokens) : NULL;
    const float *rd = resid ? PyArray_DATA(resid) : NULL;
    const int64_t *pd = pos ? PyArray_DATA(pos) : NULL;
    const float *md = mask ? PyArray_DATA(mask) : NULL;
    /* a callback point without a callback is only a cache point */
    mo->running++;
    Py_BEGIN_ALLOW_THREADS
    st = mi_tf_forward(&mo->tf, &plan, arena, fl, tk, rd, pd, md, cb == Py_None ? NULL : py_hook, &hc);
    Py_END_ALLOW_THREADS
    mo->running--;
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

static PyObject *model_get_tied(PyObject *self, void *c)
{
    mi_py_model *mo = (mi_py_model *)self;
    if (check_ready(mo) < 0) return NULL;
    return PyBool_FromLong(mo->tf.tied_unembed);
}

static int model_set_tied(PyObject *self, PyObject *value, void *c)
{
    mi_py_model *mo = (mi_py_model *)self;
    if (check_ready(mo) < 0) return -1;
    if (!value) { PyErr_SetString(PyExc_AttributeError, "tied_unembed cannot be deleted"); return -1; }
    int tie = PyObject_IsTrue(value);
    if (tie < 0) return -1;
    if (mo->running) { PyErr_SetString(PyExc_RuntimeError, "tied_unembed: a forward pass is running"); return -1; }
    if (tie == mo->tf.tied_unembed) return 0;
    if (!tie) return untie(mo);
    const mi_tf_spec *s = &mo->tf.spec;
    if (s->d_vocab_out != s->d_vocab) {
        PyErr_Format(PyExc_ValueError, "tied_unembed: needs d_vocab_out == d_vocab, got %ld and %ld",
                     (long)s->d_vocab_out, (long)s->d_vocab);
        return -1;
    }
    int i = table_index(&mo->tf, "unembed.W_U");
    if (i >= 0 && mo->external[i]) {   /* W_U is no longer read */
        mo->tf.table[i].data = NULL;
        Py_CLEAR(mo->external[i]);
        mo->tf.n_external--;
    }
    mo->tf.tied_unembed = 1;
    return 0;
}

static PyObject *model_n_external(PyObject *self, void *c)
{
    mi_py_model *mo = (mi_py_model *)self;
    if (check_ready(mo) < 0) return NULL;
    return PyLong_FromLong(mo->tf.n_external);
}

static PyMethodDef model_methods[] = {
    {"params", model_params, METH_NOARGS, params_doc},
    {"set_param", model_set_param, METH_VARARGS, set_param_doc},
    {"materialize", model_materialize, METH_NOARGS, materialize_doc},
    {"share_params", model_share_params, METH_O, share_params_doc},
    {"hook_points", model_hook_points, METH_NOARGS, hook_points_doc},
    {"forward", (PyCFunction)(void (*)(void))model_forward, METH_VARARGS | METH_KEYWORDS, forward_doc},
    {"arena_bytes", model_arena_bytes, METH_VARARGS, arena_bytes_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef model_getset[] = {
    {"n_points", model_n_points, NULL, "Number of hook point ids (present or not).", NULL},
    {"param_bytes", model_param_bytes, NULL, "Bytes of the parameter blob.", NULL},
    {"tied_unembed", model_get_tied, model_set_tied, "True: the logits are x @ W_E^T read in place "
     "(HF's tied lm_head) and unembed.W_U is a view of W_E; setting False copies W_E^T into W_U.",
     NULL},
    {"n_external", model_n_external, NULL, "Parameters read in place from set_param arrays.", NULL},
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

/* ---- test bindings of the forward-only kernels the model uses ---- */

/* An optional float32 vector argument of length d (None -> NULL array). */
static int opt_vec(PyObject *obj, const char *name, npy_intp d, PyArrayObject **out)
{
    *out = NULL;
    if (obj == Py_None) return 0;
    if (!(*out = mi_py_float_arg(obj, name, 1, 1))) return -1;
    if (PyArray_DIM(*out, 0) != d) {
        PyErr_Format(PyExc_ValueError, "%s: expected length %ld, got %ld", name, (long)d,
                     (long)PyArray_DIM(*out, 0));
        Py_CLEAR(*out);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(tl_norm_doc,
"_tl_norm(x, w=None, b=None, centre=True, eps=1e-5, x_add=None, mode='fused')\n--\n\n"
"Test binding: TransformerLens's forward norm (kernels/norm.h) of x [rows, d].\n"
"mode 'fused' (mi_tl_norm; x_add adds a residual first), 'split' (mi_tl_norm_scale,\n"
"mi_tl_norm_apply without weights, mi_tl_norm_affine: the hooked path) or 'ref'\n"
"(mi_tl_norm_ref, scalar). Returns (out or None, normalized, scale, x_sum or None).");

static PyObject *py_tl_norm(PyObject *module, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"x", "w", "b", "centre", "eps", "x_add", "mode", NULL};
    PyObject *x_obj, *w_obj = Py_None, *b_obj = Py_None, *add_obj = Py_None;
    int centre = 1;
    double eps = 1e-5;
    const char *mode = "fused";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|OOpdOs:_tl_norm", kwlist, &x_obj, &w_obj, &b_obj,
                                     &centre, &eps, &add_obj, &mode))
        return NULL;
    int fused = !strcmp(mode, "fused"), split = !strcmp(mode, "split"), ref = !strcmp(mode, "ref");
    if (!fused && !split && !ref)
        return PyErr_Format(PyExc_ValueError, "mode: expected 'fused', 'split' or 'ref', got '%s'", mode);
    PyArrayObject *x = NULL, *w = NULL, *b = NULL, *xa = NULL;
    PyObject *out = Py_None, *yn = NULL, *sc = NULL, *xs = Py_None, *res = NULL;
    Py_INCREF(out); Py_INCREF(xs);
    if (!(x = mi_py_float_arg(x_obj, "x", 2, 2))) goto done;
    npy_intp rows = PyArray_DIM(x, 0), d = PyArray_DIM(x, 1);
    if (opt_vec(w_obj, "w", d, &w) < 0 || opt_vec(b_obj, "b", d, &b) < 0) goto done;
    if (b && !w) { PyErr_SetString(PyExc_ValueError, "b: needs w"); goto done; }
    if (add_obj != Py_None) {
        char s1[128], s2[128];
        if (split) { PyErr_SetString(PyExc_ValueError, "x_add: only with mode 'fused' or 'ref'"); goto done; }
        if (!(xa = mi_py_float_arg(add_obj, "x_add", 2, 2))) goto done;
        if (PyArray_DIM(xa, 0) != rows || PyArray_DIM(xa, 1) != d) {
            PyErr_Format(PyExc_ValueError, "x_add: expected the shape of x %s, got %s",
                         mi_py_shape_str(x, s1), mi_py_shape_str(xa, s2));
            goto done;
        }
    }
    npy_intp shape[2] = {rows, d};
    float *od = NULL, *nd, *sd, *xsd = NULL;
    if (w) { Py_DECREF(out); if (!(out = mi_py_empty(module, 2, shape, &od))) goto done; }
    if (xa) { Py_DECREF(xs); if (!(xs = mi_py_empty(module, 2, shape, &xsd))) goto done; }
    if (!(yn = mi_py_empty(module, 2, shape, &nd)) || !(sc = mi_py_empty(module, 1, shape, &sd))) goto done;
    {
        const float *xd = PyArray_DATA(x), *ad = xa ? PyArray_DATA(xa) : NULL;
        const float *wd = w ? PyArray_DATA(w) : NULL, *bd = b ? PyArray_DATA(b) : NULL;
        Py_BEGIN_ALLOW_THREADS
        if (fused) mi_tl_norm(centre, xd, ad, xsd, wd, bd, (float)eps, rows, d, sd, nd, od);
        else if (ref) mi_tl_norm_ref(centre, xd, ad, xsd, wd, bd, (float)eps, rows, d, sd, nd, od);
        else {
            mi_tl_norm_scale(centre, xd, (float)eps, rows, d, sd);
            mi_tl_norm_apply(centre, xd, sd, NULL, NULL, rows, d, nd, NULL);
            if (wd) mi_tl_norm_affine(nd, wd, bd, rows, d, od);
        }
        Py_END_ALLOW_THREADS
    }
    res = PyTuple_Pack(4, out, yn, sc, xs);
done:
    Py_XDECREF(x); Py_XDECREF(w); Py_XDECREF(b); Py_XDECREF(xa);
    Py_XDECREF(out); Py_XDECREF(yn); Py_XDECREF(sc); Py_XDECREF(xs);
    return res;
}

PyDoc_STRVAR(attn_fused_doc,
"_attn_fused(q, k, v, causal=True, padding_mask=None, scale=None, keep=False)\n--\n\n"
"Test binding: mi_attn_fused (kernels/attention.h) on q, k, v [batch, pos, head,\n"
"d_head] float32; padding_mask [batch, pos] float32 (0 masks a key); scale\n"
"defaults to 1/sqrt(d_head). Returns (z, scores, pattern), scores and pattern\n"
"[batch, head, pos, pos] when keep=True, else None (per-thread scratch).");

static PyObject *py_attn_fused(PyObject *module, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"q", "k", "v", "causal", "padding_mask", "scale", "keep", NULL};
    PyObject *qo, *ko, *vo, *mo = Py_None, *scale_obj = Py_None;
    int causal = 1, keep = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|pOOp:_attn_fused", kwlist, &qo, &ko, &vo,
                                     &causal, &mo, &scale_obj, &keep))
        return NULL;
    PyArrayObject *a[3] = {NULL, NULL, NULL}, *mask = NULL;
    PyObject *z = NULL, *sc = Py_None, *pat = Py_None, *res = NULL;
    Py_INCREF(sc); Py_INCREF(pat);
    static const char *names[3] = {"q", "k", "v"};
    PyObject *objs[3] = {qo, ko, vo};
    for (int i = 0; i < 3; i++) {
        if (!(a[i] = mi_py_float_arg(objs[i], names[i], 4, 4))) goto done;
        if (i && !PyArray_SAMESHAPE(a[i], a[0])) {
            char s1[128], s2[128];
            PyErr_Format(PyExc_ValueError, "%s: expected the shape of q %s, got %s", names[i],
                         mi_py_shape_str(a[0], s1), mi_py_shape_str(a[i], s2));
            goto done;
        }
    }
    npy_intp B = PyArray_DIM(a[0], 0), T = PyArray_DIM(a[0], 1), H = PyArray_DIM(a[0], 2),
             Dh = PyArray_DIM(a[0], 3);
    if (mo != Py_None) {
        if (!(mask = mi_py_float_arg(mo, "padding_mask", 2, 2))) goto done;
        if (PyArray_DIM(mask, 0) != B || PyArray_DIM(mask, 1) != T) {
            PyErr_SetString(PyExc_ValueError, "padding_mask: expected [batch, pos] like q");
            goto done;
        }
    }
    double scale = scale_obj == Py_None ? 1.0 / sqrt((double)Dh) : PyFloat_AsDouble(scale_obj);
    if (PyErr_Occurred()) goto done;
    npy_intp zshape[4] = {B, T, H, Dh}, pshape[4] = {B, H, T, T};
    float *zd, *sd = NULL, *pd = NULL;
    if (!(z = mi_py_empty(module, 4, zshape, &zd))) goto done;
    if (keep) {
        Py_DECREF(sc); Py_DECREF(pat);
        sc = pat = NULL;
        if (!(sc = mi_py_empty(module, 4, pshape, &sd)) || !(pat = mi_py_empty(module, 4, pshape, &pd)))
            goto done;
    }
    {
        mi_attn_layout L = mi_attn_self_layout(B, T, H, Dh, H * Dh, T * H * Dh);
        const float *md = mask ? PyArray_DATA(mask) : NULL;
        mi_status st;
        Py_BEGIN_ALLOW_THREADS
        st = mi_attn_fused(&L, PyArray_DATA(a[0]), PyArray_DATA(a[1]), PyArray_DATA(a[2]),
                           (float)scale, causal, md, sd, pd, zd);
        Py_END_ALLOW_THREADS
        if (st != MI_OK) { mi_py_raise(st); goto done; }
    }
    res = PyTuple_Pack(3, z, sc, pat);
done:
    for (int i = 0; i < 3; i++) Py_XDECREF(a[i]);
    Py_XDECREF(mask); Py_XDECREF(z); Py_XDECREF(sc); Py_XDECREF(pat);
    return res;
}

static PyMethodDef model_kernel_methods[] = {
    {"_tl_norm", (PyCFunction)(void (*)(void))py_tl_norm, METH_VARARGS | METH_KEYWORDS, tl_norm_doc},
    {"_attn_fused", (PyCFunction)(void (*)(void))py_attn_fused, METH_VARARGS | METH_KEYWORDS,
     attn_fused_doc},
    {NULL, NULL, 0, NULL},
};

int mi_py_model_exec(PyObject *m)
{
    if (PyModule_AddFunctions(m, model_kernel_methods) < 0 || add_point_table(m) < 0
        || PyModule_AddIntConstant(m, "HOOK_CACHE", MI_HOOK_CACHE) < 0
        || PyModule_AddIntConstant(m, "HOOK_CALLBACK", MI_HOOK_CALLBACK) < 0
        || PyModule_AddIntConstant(m, "HOOK_TRANSIENT", MI_HOOK_TRANSIENT) < 0)
        return -1;
    PyObject *tp = PyType_FromModuleAndSpec(m, &model_spec, NULL);
    if (!tp) return -1;
    mi_state(m)->model_type = (PyTypeObject *)tp;
    return PyModule_AddObjectRef(m, "Model", tp);
}

/* For train_py.c (model_py.h). */
mi_transformer *mi_py_model_tf(PyObject *module, PyObject *obj)
{
    if (!PyObject_TypeCheck(obj, mi_state(module)->model_type)) {
        PyErr_Format(PyExc_TypeError, "expected a _core.Model, got %s", Py_TYPE(obj)->tp_name);
        return NULL;
    }
    mi_py_model *mo = (mi_py_model *)obj;
    if (check_ready(mo) < 0) return NULL;
    /* the backward reads and updates weights in the blob (params + offset) */
    if (mo->tf.n_external || mo->tf.tied_unembed) {
        PyErr_Format(PyExc_ValueError, "training needs the model to own its weights, but %d of them "
                     "are read in place from a loaded checkpoint (zero-copy load)%s: call "
                     "materialize() on the model first", mo->tf.n_external,
                     mo->tf.tied_unembed ? " and the unembedding is tied to W_E" : "");
        return NULL;
    }
    return &mo->tf;
}
