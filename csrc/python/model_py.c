/* model_py.c - _core.Model: the C transformer (csrc/model/transformer.h) as a
 * Python heap type.
 *
 * The parameter blob is owned by a _core.Buffer, so parameter views stay
 * valid while any of them lives. Each forward call plans its arena, wraps it
 * in a Buffer BEFORE the pass (hooks and the cache get views whose base is
 * that Buffer) and runs the pass with the GIL released; at CALLBACK points the
 * C hook re-acquires the GIL and calls the Python dispatcher. */
#include "python/convert.h"

#include <math.h>
#include <string.h>
#include <sys/mman.h>

#include "common/memory.h"
#include "model/kv_cache.h"
#include "model/params.h"
#include "model/transformer.h"
#include "python/model_py.h"

typedef struct {
    PyObject_HEAD
    mi_transformer tf;
    PyObject *blob;       /* _core.Buffer owning tf.params */
    PyObject **external;  /* [n_table]: the array behind table[i].data (set_param), or NULL */
    mi_py_spare *arenas;  /* this model's last released activation arena */
    int running;          /* passes in flight (weights must not move meanwhile) */
    int initialised;
} mi_py_model;

static void release_mapped(void *data, size_t nbytes, void *ctx) { munmap(data, nbytes); }

/* Activation arenas of more than a few MiB come from mmap, so every call
 * would page-fault its whole arena in afresh (a GPT-2-small forward: ~33k
 * faults, a full cache ~130k; a Llama-1B-shaped [4, 256] cache of 1.8 GB:
 * ~465k faults, 0.8 s of kernel time, plus the unmapping when it is dropped);
 * each model keeps the last released arena (one that nothing holds a view of
 * any more) for its next call of a similar size, whatever its size. At most
 * ARENA_KEEP_WARM bytes of it stay plainly resident; the rest is released
 * lazily (MADV_FREE), so a kept multi-GB cache costs the system nothing when
 * memory runs short, yet the next call reuses it without faults while memory
 * is plentiful. (Transparent huge pages were measured as the other fix and
 * rejected: on the virtual machines this is built on, the host hands freed
 * huge pages back and refills them slowly, 4x the kernel time of 4 KiB
 * faults.) */
#define ARENA_KEEP_WARM ((size_t)768 << 20)

static int model_init(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_vocab",
                             "d_vocab_out", "n_ctx", "norm", "eps", "act", "gated_mlp",
                             "attn_only", "causal", "use_attn_result", "use_hook_mlp_in",
                             "pos_embed", "attn_scale", "use_split_qkv_input",
                             "use_attn_in", "no_head", "n_key_value_heads", "rotary",
                             "rotary_dim", "rotary_adjacent_pairs", "rotary_base",
                             "use_NTK_by_parts_rope", "NTK_by_parts_factor",
                             "NTK_by_parts_low_freq_factor", "NTK_by_parts_high_freq_factor",
                             "NTK_original_ctx_len", "parallel_attn_mlp", "post_norms",
                             "attn_softcap", "logit_softcap", "window", "local_layers", "bf16", NULL};
    mi_py_model *mo = (mi_py_model *)self;
    if (mo->initialised) {
        PyErr_SetString(PyExc_RuntimeError, "Model: already initialised");
        return -1;
    }
    long long nl, dm, nh, dh, dmlp, dv, dvo, nctx;
    int norm, act, gated = 0, attn_only = 0, causal = 1, result = 0, mlp_in = 0, pos = 1;
    int split_qkv = 0, attn_in = 0, no_head = 0, rotary = 0, adjacent = 0, ntk = 0, parallel = 0;
    int post_norms = 0, bf16 = 0;
    long long n_kv = 0, rotary_dim = 0, window = 0;
    double eps, attn_scale = 1.0, rotary_base = 10000.0, ntk_factor = 8.0, ntk_low = 1.0,
           ntk_high = 4.0, ntk_ctx = 8192.0, attn_softcap = 0.0, logit_softcap = 0.0;
    PyObject *local = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "LLLLLLLLidi|ppppppdpppLpLpdpddddppddLOp:Model", kwlist,
                                     &nl, &dm, &nh, &dh, &dmlp, &dv, &dvo, &nctx, &norm, &eps, &act,
                                     &gated, &attn_only, &causal, &result, &mlp_in, &pos,
                                     &attn_scale, &split_qkv, &attn_in, &no_head, &n_kv, &rotary,
                                     &rotary_dim, &adjacent, &rotary_base, &ntk, &ntk_factor,
                                     &ntk_low, &ntk_high, &ntk_ctx, &parallel, &post_norms,
                                     &attn_softcap, &logit_softcap, &window, &local, &bf16))
        return -1;
    mi_tf_spec s = {nl, dm, nh, dh, dmlp, dv, dvo, nctx, (mi_norm_type)norm, (float)eps, act,
                    gated, attn_only, causal, result, mlp_in, pos, (float)attn_scale};
    s.use_split_qkv_input = split_qkv;
    s.use_attn_in = attn_in;
    s.no_head = no_head;
    s.bf16_weights = bf16;
    s.n_kv_heads = n_kv;
    s.rotary = rotary;
    s.rope = (mi_rotary_cfg){rotary_dim, adjacent, (float)rotary_base, ntk, (float)ntk_factor,
                             (float)ntk_low, (float)ntk_high, (float)ntk_ctx};
    s.parallel_attn_mlp = parallel;
    s.post_norms = post_norms;
    s.attn_softcap = (float)attn_softcap;
    s.logit_softcap = (float)logit_softcap;
    s.window = window;
    if (mi_py_local_layers(local, s.local_layers, MI_TF_MAX_LAYERS_LOCAL) < 0) return -1;
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
    mo->arenas = mi_py_spare_new(SIZE_MAX, ARENA_KEEP_WARM, mi_free);
    if (blob == MAP_FAILED || !mo->external || !mo->arenas) {
        if (blob != MAP_FAILED) munmap(blob, blob_bytes);
        PyMem_Free(mo->external);
        mo->external = NULL;
        mi_py_spare_decref(mo->arenas);
        mo->arenas = NULL;
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
    mi_py_spare_decref(mo->arenas);
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

PyDoc_STRVAR(params_doc, "params()\n--\n\nA dict: parameter name -> view of the "
             "model's weights (float32; in a bf16 model the matrices and the embedding are "
             "uint16 bfloat16 bit patterns) (internal layout, e.g. blocks.0.attn.W_qkv [D,3,H,Dh]): the one "
             "parameter blob, or the array given to set_param (writable when it is). With "
             "tied_unembed, unembed.W_U is the [D, V] transposed view of embed.W_E.");

static PyObject *model_params(PyObject *self, PyObject *unused)
{
    mi_py_model *mo = (mi_py_model *)self;
    if (check_ready(mo) < 0) return NULL;
    PyObject *d = PyDict_New();
    if (!d) return NULL;
    int i_we = mi_tf_param_index(&mo->tf, "embed.W_E");
    for (int i = 0; i < mo->tf.n_table; i++) {
        const mi_tf_param *p = &mo->tf.table[i];
        npy_intp shape[4], strides[4], *st = NULL;
        for (int k = 0; k < p->ndim; k++) shape[k] = (npy_intp)p->shape[k];
        PyObject *owner = mo->blob;
        void *data = mo->tf.params + p->offset;
        const npy_intp size = p->bf16 ? (npy_intp)sizeof(uint16_t) : (npy_intp)sizeof(float);
        int writable = 1;
        int src = i;
        if (mi_tf_param_is_tied(&mo->tf, i)) {
            /* W_U [D, V] = W_E^T: the same memory, strided */
            src = i_we;
            strides[0] = size;
            strides[1] = shape[0] * size;
            st = strides;
            data = mo->tf.params + mo->tf.table[src].offset;
        }
        if (mo->external[src]) {
            owner = mo->external[src];
            data = mo->tf.table[src].data;
            writable = PyArray_ISWRITEABLE((PyArrayObject *)owner);
            if (p->trans) {
                /* stored [last axis, rest]: the leading axes row-major with unit
                 * element stride, the last axis strided by the rest's size */
                npy_intp run = size;
                for (int k = p->ndim - 2; k >= 0; k--) { strides[k] = run; run *= shape[k]; }
                strides[p->ndim - 1] = run;
                st = strides;
            }
        }
        PyObject *v = mi_py_view_as(owner, data, p->bf16 ? NPY_UINT16 : NPY_FLOAT32, p->ndim, shape,
                                    st, writable);
        if (!v || PyDict_SetItemString(d, p->name, v) < 0) { Py_XDECREF(v); Py_DECREF(d); return NULL; }
        Py_DECREF(v);
    }
    return d;
}

PyDoc_STRVAR(param_table_doc, "param_table()\n--\n\nThe layout of the parameter blob: a "
             "list of (name, offset, shape), offset in floats from the blob start, shape in the "
             "internal layout (as params()). A buffer of the blob's size (the gradients) has each "
             "parameter at the same place.");

static PyObject *model_param_table(PyObject *self, PyObject *unused)
{
    mi_py_model *mo = (mi_py_model *)self;
    if (check_ready(mo) < 0) return NULL;
    PyObject *out = PyList_New(mo->tf.n_table);
    if (!out) return NULL;
    for (int i = 0; i < mo->tf.n_table; i++) {
        const mi_tf_param *p = &mo->tf.table[i];
        PyObject *shape = PyTuple_New(p->ndim);
        if (!shape) { Py_DECREF(out); return NULL; }
        for (int k = 0; k < p->ndim; k++) {
            PyObject *n = PyLong_FromLongLong((long long)p->shape[k]);
            if (!n) { Py_DECREF(shape); Py_DECREF(out); return NULL; }
            PyTuple_SET_ITEM(shape, k, n);
        }
        PyObject *row = Py_BuildValue("(snN)", p->name, (Py_ssize_t)p->offset, shape);
        if (!row) { Py_DECREF(out); return NULL; }
        PyList_SET_ITEM(out, i, row);
    }
    return out;
}

PyDoc_STRVAR(set_param_doc,
"set_param(name, array, transposed=False)\n--\n\n"
"Let the model read parameter `name` from `array` in place (no copy): a\n"
"C-contiguous, aligned ndarray of the parameter's type (float32; uint16 bfloat16\n"
"bit patterns for the bfloat16 tensors of a bf16 model) with as many elements\n"
"as the parameter\n"
"(its layout must be the internal one, e.g. HF GPT-2's c_attn.weight [D, 3D] for\n"
"W_qkv [D,3,H,Dh]; with transposed=True its transpose: the tensor as a\n"
"[rest, last axis] matrix stored [last axis, rest], e.g. a Llama down_proj.weight\n"
"[D, M] for W_out [M, D]; only for the bfloat16 W_O, W_in, W_gate, W_out and an\n"
"untied W_U, ValueError otherwise; params() then gives a strided view). The model\n"
"keeps a reference to the array (so an mmap behind it stays mapped). Models with\n"
"such parameters do not train: materialize() first.");

static PyObject *model_set_param(PyObject *self, PyObject *args, PyObject *kw)
{
    mi_py_model *mo = (mi_py_model *)self;
    if (check_ready(mo) < 0) return NULL;
    static char *kwlist[] = {"name", "array", "transposed", NULL};
    const char *name;
    PyObject *obj;
    int transposed = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "sO|p:set_param", kwlist, &name, &obj, &transposed))
        return NULL;
    if (mo->running)
        return PyErr_Format(PyExc_RuntimeError, "set_param(%s): a forward pass is running", name);
    int i = mi_tf_param_index(&mo->tf, name);
    if (i < 0) return PyErr_Format(PyExc_KeyError, "set_param: the model has no parameter %R",
                                   PyTuple_GET_ITEM(args, 0));
    mi_tf_param *p = &mo->tf.table[i];
    /* read in place for the model's life: the float32 bytes as they are */
    char who[96];
    snprintf(who, sizeof who, "set_param(%s)", name);
    mi_arg arg = MI_ARG(who, p->bf16 ? NPY_UINT16 : NPY_FLOAT32, MI_ARG_EXACT, 0, 32);
    if (mi_arg_convert(obj, &arg) < 0) return NULL;
    PyArrayObject *a = arg.arr;
    char buf[128], want[128];
    npy_intp numel = (npy_intp)mi_tf_param_numel(&mo->tf, i);
    if (PyArray_SIZE(a) != numel) {
        int n = snprintf(want, sizeof want, "(");    /* the parameter's shape, as "(4, 64)" */
        for (int k = 0; k < p->ndim; k++)
            n += snprintf(want + n, sizeof want - (size_t)n, k ? ", %ld" : "%ld", (long)p->shape[k]);
        snprintf(want + n, sizeof want - (size_t)n, ")");
        PyErr_Format(PyExc_ValueError, "set_param(%s): expected %ld elements %s, got shape %s",
                     name, (long)numel, want, mi_py_shape_str(a, buf));
        mi_arg_release(&arg);
        return NULL;
    }
    mi_status st = mi_tf_param_set_external(&mo->tf, i, PyArray_DATA(a), transposed);
    if (st != MI_OK) {
        mi_arg_release(&arg);
        return mi_py_raise(st);
    }
    Py_XSETREF(mo->external[i], (PyObject *)a);   /* the converter's reference: the model keeps it */
    Py_RETURN_NONE;
}

PyDoc_STRVAR(materialize_doc,
"materialize()\n--\n\nCopy every parameter given by set_param into the model's own blob and\n"
"untie the unembedding (W_U = W_E^T copied): afterwards the model owns all of its\n"
"weights (what training needs). Returns the number of tensors copied.");

static PyObject *model_materialize(PyObject *self, PyObject *unused)
{
    mi_py_model *mo = (mi_py_model *)self;
    if (check_ready(mo) < 0) return NULL;
    if (mo->running) return PyErr_Format(PyExc_RuntimeError, "materialize: a forward pass is running");
    if (mi_py_check_mapped(mo->external, mo->tf.n_table) < 0) return NULL;
    mi_tf_untie(&mo->tf);
    long copied = 0;
    for (int i = 0; i < mo->tf.n_table; i++) {
        copied += mi_tf_param_materialize(&mo->tf, i);
        Py_CLEAR(mo->external[i]);
    }
    return PyLong_FromLong(copied);
}

PyDoc_STRVAR(share_params_doc,
"share_params(other)\n--\n\n"
"Read every parameter from `other`'s memory from now on: its blob, the arrays given\n"
"to its set_param, and its tied_unembed (this model's own blob is dropped). Both\n"
"models then compute with, and edit, the same weights, so the views other.params()\n"
"gave stay the weights of this model too. Needs the same parameter layout (names,\n"
"offsets, shapes); returns False and changes nothing when the layouts differ.");

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
    if (!mi_tf_same_layout(&mo->tf, &src->tf)) Py_RETURN_FALSE;
    /* this model keeps src's memory alive: its blob and its set_param arrays */
    Py_INCREF(src->blob);
    Py_SETREF(mo->blob, src->blob);
    for (int i = 0; i < mo->tf.n_table; i++) {
        Py_XINCREF(src->external[i]);
        Py_XSETREF(mo->external[i], src->external[i]);
    }
    mi_tf_share_params(&mo->tf, &src->tf);
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

PyDoc_STRVAR(forward_doc,
"forward(tokens, flags, callback=None, pos_ids=None, key_mask=None, stop_layer=-1,\n"
"        resid=None, start_layer=-1, kv_cache=None)\n--\n\n"
"Run the pass. tokens int64 [B,T] (None with start_layer >= 0: then resid\n"
"float32 [B,T,D] enters block start_layer); flags: bytes, one per point id (1 cache,\n"
"2 callback, 4 transient callback: its view is valid only during the layer);\n"
"callback(point_id, view) is called at callback points (it may edit the view in place). Returns (output, {point_id: view}) where output is\n"
"the logits [B,T,Vo] or, with stop_layer < n_layers, the residual stream.\n"
"kv_cache (a KVCache): the input holds the positions after the cached ones; each\n"
"layer run appends its keys/values and attends over cached + new ones; key_mask\n"
"is the new positions' padding (kept in the cache); pos_ids None: positions skip\n"
"the padding. attn scores/pattern are then [B,H,T,cached+T].");

static PyObject *model_forward(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"tokens", "flags", "callback", "pos_ids", "key_mask", "stop_layer",
                             "resid", "start_layer", "kv_cache", NULL};
    mi_py_model *mo = (mi_py_model *)self;
    if (check_ready(mo) < 0) return NULL;
    /* weights read in place from a checkpoint: is the file still the one mapped? */
    if (mo->tf.n_external && mi_py_check_mapped(mo->external, mo->tf.n_table) < 0) return NULL;
    PyObject *tok_obj, *cb = Py_None, *resid_obj = Py_None, *kv_obj = Py_None;
    mi_arg tokens = MI_ARG_INT64("tokens", 2, 2), resid = MI_ARG_FLOAT("input (residual stream)", 3, 3);
    mi_arg pos = MI_ARG("pos_ids", NPY_INT64, MI_ARG_OPTIONAL, 2, 2);
    mi_arg mask = MI_ARG("attention_mask", NPY_FLOAT32, MI_ARG_OPTIONAL, 2, 2);
    Py_buffer flags;
    int stop = -1, start = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Oy*|OO&O&iOiO:forward", kwlist, &tok_obj, &flags, &cb,
                                     mi_conv_array, &pos, mi_conv_array, &mask, &stop, &resid_obj,
                                     &start, &kv_obj))
        return NULL;
    const mi_tf_spec *s = &mo->tf.spec;
    mi_kv_cache *kv = NULL;
    int64_t n_past = 0;
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
    npy_intp bt[2];
    if (start >= 0) {
        char buf[128];
        if (mi_arg_convert(resid_obj, &resid) < 0) goto done;
        if (PyArray_DIM(resid.arr, 2) != s->d_model) {
            PyErr_Format(PyExc_ValueError, "input (residual stream): expected [batch, pos, d_model=%ld], "
                         "got %s", (long)s->d_model, mi_py_shape_str(resid.arr, buf));
            goto done;
        }
        memcpy(bt, PyArray_DIMS(resid.arr), sizeof bt);
    } else {
        if (mi_arg_convert(tok_obj, &tokens) < 0) goto done;
        memcpy(bt, PyArray_DIMS(tokens.arr), sizeof bt);
    }
    npy_intp B = bt[0], T = bt[1];
    if (pos.arr && mi_arg_shape(&pos, 2, bt, "like tokens") < 0) goto done;
    if (mask.arr && mi_arg_shape(&mask, 2, bt, "like tokens") < 0) goto done;
    if (stop < 0) stop = (int)s->n_layers;
    const uint8_t *fl = flags.buf;
    PyObject *module = PyType_GetModuleByDef(Py_TYPE(self), &mi_core_module);
    if (!module) goto done;
    mi_status st;
    if (kv_obj != Py_None) {
        if (!(kv = mi_py_kv_acquire(module, kv_obj))) goto done;
        st = mi_kv_prepare(kv, &mo->tf, B, T, start < 0 ? 0 : start, stop, &n_past);
        if (st != MI_OK) { mi_py_raise(st); goto done; }
    }
    st = mi_tf_plan_call_kv(&mo->tf, B, T, n_past, start, stop, fl, &plan);
    if (st != MI_OK) { mi_py_raise(st); goto done; }
    float *arena = NULL;
    if (!(arena_owner = mi_py_model_arena(module, self, plan.n_floats, &arena))) goto done;
    hook_ctx hc = {cb, arena_owner};
    const int64_t *tk = mi_arg_data(&tokens), *pd = mi_arg_data(&pos);
    const float *rd = mi_arg_data(&resid), *md = mi_arg_data(&mask);
    /* a callback point without a callback is only a cache point */
    mo->running++;
    Py_BEGIN_ALLOW_THREADS
    st = mi_tf_forward_kv(&mo->tf, &plan, arena, fl, tk, rd, pd, md, kv,
                          cb == Py_None ? NULL : py_hook, &hc);
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
    if (kv) mi_py_kv_release(kv_obj);
    PyBuffer_Release(&flags);
    mi_tf_plan_free(&plan);
    mi_arg_release(&tokens); mi_arg_release(&pos); mi_arg_release(&mask); mi_arg_release(&resid);
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
    if (!tie) {
        mi_tf_untie(&mo->tf);
        return 0;
    }
    int dropped;
    mi_status st = mi_tf_tie(&mo->tf, &dropped);
    if (st != MI_OK) { mi_py_raise(st); return -1; }
    if (dropped >= 0) Py_CLEAR(mo->external[dropped]);
    return 0;
}

static PyObject *model_n_external(PyObject *self, void *c)
{
    mi_py_model *mo = (mi_py_model *)self;
    if (check_ready(mo) < 0) return NULL;
    return PyLong_FromLong(mo->tf.n_external);
}

static PyObject *model_bf16(PyObject *self, void *c)
{
    mi_py_model *mo = (mi_py_model *)self;
    if (check_ready(mo) < 0) return NULL;
    return PyBool_FromLong(mo->tf.spec.bf16_weights);
}

static PyMethodDef model_methods[] = {
    {"params", model_params, METH_NOARGS, params_doc},
    {"param_table", model_param_table, METH_NOARGS, param_table_doc},
    {"set_param", (PyCFunction)(void (*)(void))model_set_param, METH_VARARGS | METH_KEYWORDS, set_param_doc},
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
    {"bf16", model_bf16, NULL, "True: the matrices and the embedding are stored as bfloat16.", NULL},
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
    if (add_point_table(m) < 0
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
    if (mo->tf.spec.bf16_weights) {
        PyErr_SetString(PyExc_NotImplementedError, "training a model with bfloat16 weights is not "
                        "supported (the backward and the optimiser work on float32 weights): "
                        "load the model in float32 to train it");
        return NULL;
    }
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

mi_transformer *mi_py_model_acquire(PyObject *module, PyObject *obj)
{
    mi_transformer *tf = mi_py_model_tf(module, obj);
    if (tf) ((mi_py_model *)obj)->running++;
    return tf;
}

void mi_py_model_release(PyObject *obj) { ((mi_py_model *)obj)->running--; }

PyObject *mi_py_model_arena(PyObject *module, PyObject *obj, size_t n_floats, float **data)
{
    mi_py_model *mo = (mi_py_model *)obj;
    size_t nbytes = n_floats * sizeof(float);
    float *arena = mi_py_spare_take(mo->arenas, nbytes, &nbytes);
    if (!arena && !(arena = mi_malloc(nbytes)))
        return PyErr_Format(PyExc_MemoryError, "cannot allocate an activation arena of %zu bytes", nbytes);
    *data = arena;
    return mi_py_spare_buffer(module, mo->arenas, arena, nbytes);
}

mi_transformer *mi_py_model_use(PyObject *module, PyObject *obj)
{
    if (!PyObject_TypeCheck(obj, mi_state(module)->model_type)) {
        PyErr_Format(PyExc_TypeError, "expected a _core.Model, got %s", Py_TYPE(obj)->tp_name);
        return NULL;
    }
    mi_py_model *mo = (mi_py_model *)obj;
    if (check_ready(mo) < 0) return NULL;
    /* weights read in place from a checkpoint: is the file still the one mapped? */
    if (mo->tf.n_external && mi_py_check_mapped(mo->external, mo->tf.n_table) < 0) return NULL;
    mo->running++;
    return &mo->tf;
}
