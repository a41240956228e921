/* kv_cache_py.c - _core.KVCache: the C key/value cache (csrc/model/kv_cache.h)
 * as a Python heap type. Model.forward(kv_cache=...) appends to it; the
 * HookedTransformerKeyValueCache and DynamicCache classes of the package wrap
 * it. Keys and values are handed out as copies (the storage moves when the
 * cache grows). */
#include "python/convert.h"

#include <string.h>

#include "model/kv_cache.h"
#include "python/model_py.h"

typedef struct {
    PyObject_HEAD
    mi_kv_cache c;
    int busy;          /* a forward pass is using it (the GIL is released meanwhile) */
    int initialised;
} mi_py_kv;

static int kv_init(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"n_layers", "batch", "n_kv_heads", "d_head", "capacity", NULL};
    mi_py_kv *o = (mi_py_kv *)self;
    long long L, B, H, Dh, cap;
    if (o->initialised) {
        PyErr_SetString(PyExc_RuntimeError, "KVCache: already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kw, "LLLLL:KVCache", kwlist, &L, &B, &H, &Dh, &cap))
        return -1;
    mi_status st = mi_kv_init(&o->c, L, B, H, Dh, cap);
    if (st != MI_OK) { mi_py_raise(st); return -1; }
    o->initialised = 1;
    return 0;
}

static void kv_dealloc(PyObject *self)
{
    mi_py_kv *o = (mi_py_kv *)self;
    PyTypeObject *tp = Py_TYPE(self);
    if (o->initialised) mi_kv_free(&o->c);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static int ready(mi_py_kv *o)
{
    if (!o->initialised) { PyErr_SetString(PyExc_RuntimeError, "KVCache: not initialised"); return -1; }
    if (o->busy) { PyErr_SetString(PyExc_RuntimeError, "KVCache: a forward pass is using it"); return -1; }
    return 0;
}

static int layer_arg(mi_py_kv *o, int layer)
{
    if (layer >= 0 && layer < o->c.n_layers) return 0;
    PyErr_Format(PyExc_IndexError, "KVCache: layer %d is outside [0, n_layers=%lld)", layer,
                 (long long)o->c.n_layers);
    return -1;
}

PyDoc_STRVAR(length_doc, "length(layer=0)\n--\n\nPositions cached by `layer` (padding included).");

static PyObject *kv_length(PyObject *self, PyObject *args)
{
    mi_py_kv *o = (mi_py_kv *)self;
    int layer = 0;
    if (ready(o) < 0 || !PyArg_ParseTuple(args, "|i:length", &layer) || layer_arg(o, layer) < 0) return NULL;
    return PyLong_FromLongLong(o->c.len[layer]);
}

PyDoc_STRVAR(reset_doc, "reset()\n--\n\nForget every cached position (the storage is kept).");

static PyObject *kv_reset(PyObject *self, PyObject *unused)
{
    mi_py_kv *o = (mi_py_kv *)self;
    if (ready(o) < 0) return NULL;
    mi_kv_reset(&o->c);
    Py_RETURN_NONE;
}

/* keys/values of a layer [B, Hkv, len, Dh] (which 0/1), or the mask [B, len] (2). */
static PyObject *copy_out(PyObject *self, int layer, int which)
{
    mi_py_kv *o = (mi_py_kv *)self;
    if (ready(o) < 0 || layer_arg(o, layer) < 0) return NULL;
    const mi_kv_cache *c = &o->c;
    int64_t n = c->len[layer], B = c->batch, H = c->n_kv_heads, Dh = c->d_head, A = c->alloc;
    PyObject *module = PyType_GetModuleByDef(Py_TYPE(self), &mi_core_module);
    if (!module) return NULL;
    float *dst;
    if (which == 2) {
        npy_intp shape[2] = {B, n};
        PyObject *arr = mi_py_empty(module, 2, shape, &dst);
        if (arr)
            for (int64_t b = 0; b < B; b++) memcpy(dst + b * n, c->mask + b * A, sizeof(float) * (size_t)n);
        return arr;
    }
    npy_intp shape[4] = {B, H, n, Dh};
    PyObject *arr = mi_py_empty(module, 4, shape, &dst);
    if (!arr) return NULL;
    const float *src = (which ? c->v : c->k) + (int64_t)layer * B * H * A * Dh;
    for (int64_t r = 0; r < B * H; r++)
        memcpy(dst + r * n * Dh, src + r * A * Dh, sizeof(float) * (size_t)(n * Dh));
    return arr;
}

PyDoc_STRVAR(keys_doc, "keys(layer)\n--\n\nA copy of layer's cached keys [batch, n_kv_heads, pos, d_head].");
static PyObject *kv_keys(PyObject *self, PyObject *args)
{
    int layer;
    if (!PyArg_ParseTuple(args, "i:keys", &layer)) return NULL;
    return copy_out(self, layer, 0);
}

PyDoc_STRVAR(values_doc, "values(layer)\n--\n\nA copy of layer's cached values [batch, n_kv_heads, pos, d_head].");
static PyObject *kv_values(PyObject *self, PyObject *args)
{
    int layer;
    if (!PyArg_ParseTuple(args, "i:values", &layer)) return NULL;
    return copy_out(self, layer, 1);
}

PyDoc_STRVAR(mask_doc, "mask()\n--\n\nA copy of the padding mask of the cached positions [batch, pos] "
             "(1 real token, 0 padding), as layer 0 holds them.");
static PyObject *kv_mask(PyObject *self, PyObject *unused) { return copy_out(self, 0, 2); }

static PyObject *kv_get_frozen(PyObject *self, void *c)
{
    return PyBool_FromLong(((mi_py_kv *)self)->c.frozen);
}

static int kv_set_frozen(PyObject *self, PyObject *value, void *c)
{
    mi_py_kv *o = (mi_py_kv *)self;
    if (!value) { PyErr_SetString(PyExc_AttributeError, "frozen cannot be deleted"); return -1; }
    int f = PyObject_IsTrue(value);
    if (f < 0 || ready(o) < 0) return -1;
    o->c.frozen = f;
    return 0;
}

#define INT_GETTER(field)                                                        \
    static PyObject *kv_get_##field(PyObject *self, void *c)                     \
    {                                                                            \
        return PyLong_FromLongLong(((mi_py_kv *)self)->c.field);                 \
    }
INT_GETTER(n_layers)
INT_GETTER(batch)
INT_GETTER(n_kv_heads)
INT_GETTER(d_head)
INT_GETTER(capacity)
#undef INT_GETTER

static PyMethodDef kv_methods[] = {
    {"length", kv_length, METH_VARARGS, length_doc},
    {"reset", kv_reset, METH_NOARGS, reset_doc},
    {"keys", kv_keys, METH_VARARGS, keys_doc},
    {"values", kv_values, METH_VARARGS, values_doc},
    {"mask", kv_mask, METH_NOARGS, mask_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef kv_getset[] = {
    {"frozen", kv_get_frozen, kv_set_frozen, "True: forward passes attend over the cache and "
     "their new positions but the cache keeps its length (TransformerLens's freeze()).", NULL},
    {"n_layers", kv_get_n_layers, NULL, "Layers cached.", NULL},
    {"batch", kv_get_batch, NULL, "Batch size the cache holds.", NULL},
    {"n_kv_heads", kv_get_n_kv_heads, NULL, "Key/value heads per layer.", NULL},
    {"d_head", kv_get_d_head, NULL, "Size of a head.", NULL},
    {"capacity", kv_get_capacity, NULL, "The most positions the cache may hold.", NULL},
    {NULL},
};

static PyType_Slot kv_slots[] = {
    {Py_tp_init, kv_init},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_dealloc, kv_dealloc},
    {Py_tp_methods, kv_methods},
    {Py_tp_getset, kv_getset},
    {Py_tp_doc, "KVCache(n_layers, batch, n_kv_heads, d_head, capacity)\n\nThe keys and values "
                "of every position Model.forward(kv_cache=...) has run, per layer, with the "
                "padding mask; storage grows on use up to `capacity` positions."},
    {0, NULL},
};

static PyType_Spec kv_spec = {
    .name = "mechinterp_c._core.KVCache",
    .basicsize = sizeof(mi_py_kv),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = kv_slots,
};

int mi_py_kv_cache_exec(PyObject *m)
{
    PyObject *tp = PyType_FromModuleAndSpec(m, &kv_spec, NULL);
    if (!tp) return -1;
    mi_state(m)->kv_cache_type = (PyTypeObject *)tp;
    return PyModule_AddObjectRef(m, "KVCache", tp);
}

mi_kv_cache *mi_py_kv_acquire(PyObject *module, PyObject *obj)
{
    if (!PyObject_TypeCheck(obj, mi_state(module)->kv_cache_type)) {
        PyErr_Format(PyExc_TypeError, "kv_cache: expected a _core.KVCache, got %s",
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    mi_py_kv *o = (mi_py_kv *)obj;
    if (ready(o) < 0) return NULL;
    o->busy = 1;
    return &o->c;
}

void mi_py_kv_release(PyObject *obj) { ((mi_py_kv *)obj)->busy = 0; }
