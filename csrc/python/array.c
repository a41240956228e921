/* array.c - the _core.Buffer owner type and NumPy array helpers. */
#include "python/bridge.h"

#include <stdio.h>
#include <string.h>

#include "common/memory.h"

typedef struct {
    PyObject_HEAD
    void *data;
    size_t nbytes;
    mi_release_fn release;
    void *ctx;
} mi_py_buffer;

static void buffer_dealloc(PyObject *self)
{
    mi_py_buffer *b = (mi_py_buffer *)self;
    PyTypeObject *tp = Py_TYPE(self);
    if (b->release) b->release(b->data, b->nbytes, b->ctx);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyObject *buffer_nbytes(PyObject *self, void *closure)
{
    return PyLong_FromSize_t(((mi_py_buffer *)self)->nbytes);
}

static PyGetSetDef buffer_getset[] = {
    {"nbytes", buffer_nbytes, NULL, "Bytes of C memory this buffer owns.", NULL},
    {NULL},
};

static PyType_Slot buffer_slots[] = {
    {Py_tp_dealloc, buffer_dealloc},
    {Py_tp_getset, buffer_getset},
    {Py_tp_doc, "Owner of C memory behind zero-copy NumPy arrays (their .base)."},
    {0, NULL},
};

static PyType_Spec buffer_spec = {
    .name = "mechinterp_c._core.Buffer",
    .basicsize = sizeof(mi_py_buffer),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = buffer_slots,
};

static void release_aligned(void *data, size_t nbytes, void *ctx) { mi_free(data); }

PyObject *mi_py_buffer_new(PyObject *module, void *data, size_t nbytes,
                           mi_release_fn release, void *ctx)
{
    PyTypeObject *tp = mi_state(module)->buffer_type;
    mi_py_buffer *b = (mi_py_buffer *)tp->tp_alloc(tp, 0);
    if (!b) {
        if (release) release(data, nbytes, ctx);
        return NULL;
    }
    b->data = data;
    b->nbytes = nbytes;
    b->release = release;
    b->ctx = ctx;
    return (PyObject *)b;
}

void *mi_py_buffer_ctx(PyObject *obj, mi_release_fn release)
{
    if (Py_TYPE(obj)->tp_dealloc != buffer_dealloc) return NULL;
    mi_py_buffer *b = (mi_py_buffer *)obj;
    return b->release == release ? b->ctx : NULL;
}

PyObject *mi_py_view(PyObject *owner, float *data, int ndim, const npy_intp *shape,
                     const npy_intp *strides, int writable)
{
    return mi_py_view_as(owner, data, NPY_FLOAT32, ndim, shape, strides, writable);
}

PyObject *mi_py_view_as(PyObject *owner, void *data, int npy_type, int ndim, const npy_intp *shape,
                        const npy_intp *strides, int writable)
{
    PyArray_Descr *descr = PyArray_DescrFromType(npy_type);
    int flags = writable ? NPY_ARRAY_WRITEABLE : 0;
    if (!strides) flags |= NPY_ARRAY_C_CONTIGUOUS;
    PyObject *arr = PyArray_NewFromDescr(&PyArray_Type, descr, ndim, (npy_intp *)shape,
                                         (npy_intp *)strides, data, flags, NULL);
    if (!arr) return NULL;
    Py_INCREF(owner);
    if (PyArray_SetBaseObject((PyArrayObject *)arr, owner) < 0) {
        Py_DECREF(arr);
        return NULL;
    }
    return arr;
}

PyObject *mi_py_empty(PyObject *module, int ndim, const npy_intp *shape, float **data)
{
    size_t n = 1;
    for (int i = 0; i < ndim; i++) n *= (size_t)shape[i];
    float *mem = mi_malloc(n * sizeof(float));
    if (!mem) return PyErr_NoMemory();
    PyObject *owner = mi_py_buffer_new(module, mem, n * sizeof(float), release_aligned, NULL);
    if (!owner) return NULL;
    PyObject *arr = mi_py_view(owner, mem, ndim, shape, NULL, 1);
    Py_DECREF(owner);
    if (arr) *data = mem;
    return arr;
}

/* ---- a one-slot cache of released memory ---- */

struct mi_py_spare {
    Py_ssize_t refs;           /* the owner + one per Buffer lent memory */
    size_t keep_max;           /* larger blocks are freed, not kept */
    size_t keep_warm;          /* bytes of a kept block past this are released lazily */
    void (*free_fn)(void *);
    void *data;                /* the kept block, or NULL */
    size_t nbytes;             /* its size */
};

mi_py_spare *mi_py_spare_new(size_t keep_max, size_t keep_warm, void (*free_fn)(void *))
{
    mi_py_spare *s = PyMem_Calloc(1, sizeof *s);
    if (!s) return (mi_py_spare *)PyErr_NoMemory();
    s->refs = 1;
    s->keep_max = keep_max;
    s->keep_warm = keep_warm;
    s->free_fn = free_fn;
    return s;
}

void mi_py_spare_decref(mi_py_spare *s)
{
    if (!s || --s->refs > 0) return;
    if (s->data) s->free_fn(s->data);
    PyMem_Free(s);
}

void *mi_py_spare_take(mi_py_spare *s, size_t nbytes, size_t *got)
{
    if (!s->data || s->nbytes < nbytes || s->nbytes - nbytes > nbytes) return NULL;
    void *d = s->data;
    *got = s->nbytes;
    s->data = NULL;
    return d;
}

static void release_to_spare(void *data, size_t nbytes, void *ctx)
{
    mi_py_spare *s = ctx;
    if (nbytes > s->keep_max || s->refs == 1) {   /* too large, or the owner is gone */
        s->free_fn(data);
    } else {
        if (s->data) s->free_fn(s->data);
        if (nbytes > s->keep_warm)
            mi_release_lazily((char *)data + s->keep_warm, nbytes - s->keep_warm);
        s->data = data;
        s->nbytes = nbytes;
    }
    mi_py_spare_decref(s);
}

PyObject *mi_py_spare_buffer(PyObject *module, mi_py_spare *s, void *data, size_t nbytes)
{
    s->refs++;
    return mi_py_buffer_new(module, data, nbytes, release_to_spare, s);
}

int mi_py_spare_set_keep_warm(PyObject *buffer, size_t keep_warm, void **data, size_t *nbytes)
{
    mi_py_spare *s = mi_py_buffer_ctx(buffer, release_to_spare);
    if (!s) {
        PyErr_SetString(PyExc_TypeError, "expected a Buffer whose memory returns to a spare cache");
        return -1;
    }
    s->keep_warm = keep_warm;
    *data = ((mi_py_buffer *)buffer)->data;
    *nbytes = ((mi_py_buffer *)buffer)->nbytes;
    return 0;
}

int mi_py_array_exec(PyObject *m)
{
    PyObject *tp = PyType_FromModuleAndSpec(m, &buffer_spec, NULL);
    if (!tp) return -1;
    mi_state(m)->buffer_type = (PyTypeObject *)tp;
    return PyModule_AddObjectRef(m, "Buffer", tp);
}
