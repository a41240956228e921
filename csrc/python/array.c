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
    PyArray_Descr *descr = PyArray_DescrFromType(NPY_FLOAT32);
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

const char *mi_py_shape_str(PyArrayObject *a, char *buf)
{
    int n = 0, nd = PyArray_NDIM(a);
    n += snprintf(buf + n, 128 - n, "(");
    for (int i = 0; i < nd && n < 100; i++)
        n += snprintf(buf + n, 128 - n, i ? ", %ld" : "%ld", (long)PyArray_DIM(a, i));
    snprintf(buf + n, 128 - n, nd == 1 ? ",)" : ")");
    return buf;
}

int mi_py_native_order(PyArrayObject *a, const char *name)
{
    if (PyArray_ISNOTSWAPPED(a)) return 0;
    PyErr_Format(PyExc_TypeError, "%s: expected an array in native byte order, got dtype %S "
                 "(convert it with .astype(%s))", name, (PyObject *)PyArray_DESCR(a),
                 PyArray_DESCR(a)->typeobj->tp_name);
    return -1;
}

PyArrayObject *mi_py_float_arg(PyObject *obj, const char *name, int min_ndim, int max_ndim)
{
    PyArrayObject *arr;
    if (obj == NULL || obj == Py_None) {
        PyErr_Format(PyExc_TypeError, "%s: expected a float array, got None", name);
        return NULL;
    }
    if (PyArray_Check(obj)) {
        Py_INCREF(obj);
        arr = (PyArrayObject *)obj;
    } else {
        arr = (PyArrayObject *)PyArray_FromAny(obj, NULL, 0, 0, 0, NULL);
        if (!arr) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "%s: expected a float array, got %s",
                         name, Py_TYPE(obj)->tp_name);
            return NULL;
        }
    }
    char kind = PyArray_DESCR(arr)->kind;
    if (kind != 'f') {
        PyErr_Format(PyExc_TypeError, "%s: expected a floating-point array, got dtype %S",
                     name, (PyObject *)PyArray_DESCR(arr));
        Py_DECREF(arr);
        return NULL;
    }
    int nd = PyArray_NDIM(arr);
    if (nd < min_ndim || nd > max_ndim) {
        char buf[128];
        if (min_ndim == max_ndim)
            PyErr_Format(PyExc_ValueError, "%s: expected %d dimensions, got shape %s",
                         name, min_ndim, mi_py_shape_str(arr, buf));
        else
            PyErr_Format(PyExc_ValueError, "%s: expected %d to %d dimensions, got shape %s",
                         name, min_ndim, max_ndim, mi_py_shape_str(arr, buf));
        Py_DECREF(arr);
        return NULL;
    }
    /* used in place only when the bytes are what the kernels read: float32 in
     * this machine's byte order, C-contiguous and aligned. Anything else (a
     * '>f4' array from a big-endian file, a float64, a strided view) is
     * converted once, as numpy.ascontiguousarray(x, np.float32) would. */
    if (PyArray_TYPE(arr) == NPY_FLOAT32 && PyArray_ISNOTSWAPPED(arr)
        && PyArray_IS_C_CONTIGUOUS(arr) && PyArray_ISALIGNED(arr))
        return arr;
    PyArrayObject *conv = (PyArrayObject *)PyArray_FromAny(
        (PyObject *)arr, PyArray_DescrFromType(NPY_FLOAT32), 0, 0,
        NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED | NPY_ARRAY_FORCECAST, NULL);
    Py_DECREF(arr);
    return conv;
}

int mi_py_array_exec(PyObject *m)
{
    PyObject *tp = PyType_FromModuleAndSpec(m, &buffer_spec, NULL);
    if (!tp) return -1;
    mi_state(m)->buffer_type = (PyTypeObject *)tp;
    return PyModule_AddObjectRef(m, "Buffer", tp);
}
