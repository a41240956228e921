/* io_py.c - Python bindings of csrc/io/: _core.SafeTensors, _core.parse_json_file,
 * _core.parse_json.
 *
 * Ownership of a mapped file: the parsed mi_safetensors (mapping + tensor
 * table) is owned by a _core.Buffer whose release unmaps it. The SafeTensors
 * object holds one reference to that Buffer and every array handed out holds
 * another (as its .base), so close()/del of the SafeTensors object never
 * invalidates an array: the file is unmapped when the last of them goes.
 */
#include "python/bridge.h"

#include <errno.h>
#include <string.h>

#include "io/config_json.h"
#include "io/safetensors.h"
#include "kernels/gemm_bf16.h"

/* ============================ SafeTensors ================================= */

typedef struct {
    PyObject_HEAD
    PyObject *owner;      /* _core.Buffer owning `st`; NULL once closed */
    mi_safetensors *st;   /* borrowed from owner */
    PyObject *path;       /* str, for messages and .path */
} mi_py_safetensors;

static void release_safetensors(void *data, size_t nbytes, void *ctx)
{
    mi_st_close((mi_safetensors *)ctx);
}

static PyObject *st_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"path", "copy", NULL};
    PyObject *path_bytes = NULL;
    int copy = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O&|$p:SafeTensors", kwlist,
                                     PyUnicode_FSConverter, &path_bytes, &copy))
        return NULL;
    PyObject *module = PyType_GetModule(type);
    if (!module) { Py_DECREF(path_bytes); return NULL; }

    const char *path = PyBytes_AS_STRING(path_bytes);
    mi_safetensors *st = NULL;
    mi_status s;
    int err;
    Py_BEGIN_ALLOW_THREADS
    s = mi_st_open(path, copy ? MI_ST_COPY : MI_ST_MAP, &st);
    err = errno;
    Py_END_ALLOW_THREADS
    if (s != MI_OK) { Py_DECREF(path_bytes); return mi_py_raise_os(s, err); }

    mi_py_safetensors *self = (mi_py_safetensors *)type->tp_alloc(type, 0);
    if (!self) { mi_st_close(st); Py_DECREF(path_bytes); return NULL; }
    self->path = PyUnicode_DecodeFSDefaultAndSize(PyBytes_AS_STRING(path_bytes),
                                                  PyBytes_GET_SIZE(path_bytes));
    Py_DECREF(path_bytes);
    if (!self->path) { mi_st_close(st); Py_DECREF(self); return NULL; }
    self->owner = mi_py_buffer_new(module, (void *)st->buf, st->size, release_safetensors, st);
    if (!self->owner) { Py_DECREF(self); return NULL; }   /* st already closed */
    self->st = st;
    return (PyObject *)self;
}

static void st_dealloc(PyObject *op)
{
    mi_py_safetensors *self = (mi_py_safetensors *)op;
    PyTypeObject *tp = Py_TYPE(op);
    Py_CLEAR(self->owner);
    Py_CLEAR(self->path);
    tp->tp_free(op);
    Py_DECREF(tp);
}

/* The open file, or NULL with ValueError if close() was called. */
static mi_safetensors *st_open_or_raise(mi_py_safetensors *self)
{
    if (!self->owner) {
        PyErr_Format(PyExc_ValueError, "%U: SafeTensors file is closed", self->path);
        return NULL;
    }
    return self->st;
}

/* Look up a tensor by a str name; KeyError names the file and tensor. */
static const mi_st_tensor *st_lookup(mi_py_safetensors *self, PyObject *name)
{
    mi_safetensors *st = st_open_or_raise(self);
    if (!st) return NULL;
    if (!PyUnicode_Check(name)) {
        PyErr_Format(PyExc_TypeError, "%U: tensor name must be a str, got %s", self->path,
                     Py_TYPE(name)->tp_name);
        return NULL;
    }
    const char *cname = PyUnicode_AsUTF8(name);
    if (!cname) return NULL;
    const mi_st_tensor *t;
    mi_status s = mi_st_get(st, cname, &t);
    if (s != MI_OK) { mi_py_raise(s); return NULL; }
    return t;
}

static int npy_type_of(mi_dtype dt)
{
    switch (dt) {
    case MI_DT_F64: return NPY_FLOAT64;
    case MI_DT_F32: return NPY_FLOAT32;
    case MI_DT_F16: return NPY_FLOAT16;
    case MI_DT_I64: return NPY_INT64;
    case MI_DT_I32: return NPY_INT32;
    case MI_DT_I16: return NPY_INT16;
    case MI_DT_I8: return NPY_INT8;
    case MI_DT_U8: return NPY_UINT8;
    case MI_DT_BOOL: return NPY_BOOL;
    default: return -1;   /* BF16: NumPy has no bfloat16 */
    }
}

static void tensor_dims(const mi_st_tensor *t, npy_intp *dims)
{
    for (int i = 0; i < t->ndim; i++) dims[i] = (npy_intp)t->shape[i];
}

/* A view of the mapped bytes, its base the Buffer owning the mapping; writable
 * only when asked for and the mapping is copy-on-write. */
static PyObject *st_view_flags(mi_py_safetensors *self, const mi_st_tensor *t, int npy_type,
                               int writable)
{
    npy_intp dims[MI_ST_MAX_NDIM];
    tensor_dims(t, dims);
    PyArray_Descr *descr = PyArray_DescrFromType(npy_type);
    if (!descr) return NULL;
    /* flags 0: read-only; NumPy works out contiguity and alignment itself
     * (the data area may start at any byte offset). */
    PyObject *arr = PyArray_NewFromDescr(&PyArray_Type, descr, t->ndim, dims, NULL,
                                         (void *)t->data, writable ? NPY_ARRAY_WRITEABLE : 0, NULL);
    if (!arr) return NULL;
    Py_INCREF(self->owner);
    if (PyArray_SetBaseObject((PyArrayObject *)arr, self->owner) < 0) {
        Py_DECREF(arr);
        return NULL;
    }
    return arr;
}

static PyObject *st_view(mi_py_safetensors *self, const mi_st_tensor *t, int npy_type)
{
    return st_view_flags(self, t, npy_type, 0);
}

/* A new float32 array (Buffer-owned), converted once in C with the GIL released. */
static PyObject *st_converted(mi_py_safetensors *self, const mi_st_tensor *t)
{
    npy_intp dims[MI_ST_MAX_NDIM];
    tensor_dims(t, dims);
    float *dst = NULL;
    PyObject *arr = mi_py_empty(PyType_GetModule(Py_TYPE(self)), t->ndim, dims, &dst);
    if (!arr) return NULL;
    /* another thread may close() while the GIL is released: keep the mapping */
    PyObject *owner = Py_NewRef(self->owner);
    Py_BEGIN_ALLOW_THREADS
    mi_st_to_float32(t, dst);
    Py_END_ALLOW_THREADS
    Py_DECREF(owner);
    return arr;
}

static PyObject *st_get(PyObject *op, PyObject *name)
{
    mi_py_safetensors *self = (mi_py_safetensors *)op;
    const mi_st_tensor *t = st_lookup(self, name);
    if (!t) return NULL;
    int npy_type = npy_type_of(t->dtype);
    if (npy_type < 0) return st_converted(self, t);
    return st_view(self, t, npy_type);
}

static PyObject *st_get_float32(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
                                PyObject *kwnames)
{
    mi_py_safetensors *self = (mi_py_safetensors *)op;
    PyObject *name = NULL;
    int writable = 0;
    /* hand-parsed: loaders call this once per tensor, keep it cheap */
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs != 1 || nkw > 1) {
        PyErr_SetString(PyExc_TypeError, "get_float32(name, *, writable=False): expected one "
                        "tensor name and at most the keyword 'writable'");
        return NULL;
    }
    name = args[0];
    if (nkw) {
        if (!PyUnicode_Check(PyTuple_GET_ITEM(kwnames, 0))
            || PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "writable") != 0) {
            PyErr_Format(PyExc_TypeError, "get_float32: unexpected keyword argument %R",
                         PyTuple_GET_ITEM(kwnames, 0));
            return NULL;
        }
        if ((writable = PyObject_IsTrue(args[1])) < 0) return NULL;
    }
    const mi_st_tensor *t = st_lookup(self, name);
    if (!t) return NULL;
    /* float32 already and 4-byte aligned: no copy at all (a writable view needs the
     * copy-on-write mapping; without it, a copy). */
    if (t->dtype == MI_DT_F32 && ((uintptr_t)t->data & 3) == 0
        && (!writable || self->st->writable))
        return st_view_flags(self, t, NPY_FLOAT32, writable);
    return st_converted(self, t);
}

static PyObject *st_get_bfloat16(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
                                 PyObject *kwnames)
{
    mi_py_safetensors *self = (mi_py_safetensors *)op;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    int writable = 0;
    if (nargs != 1 || nkw > 1 || (nkw && (!PyUnicode_Check(PyTuple_GET_ITEM(kwnames, 0))
        || PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "writable") != 0))) {
        PyErr_SetString(PyExc_TypeError, "get_bfloat16(name, *, writable=False): expected one "
                        "tensor name and at most the keyword 'writable'");
        return NULL;
    }
    if (nkw && (writable = PyObject_IsTrue(args[1])) < 0) return NULL;
    const mi_st_tensor *t = st_lookup(self, args[0]);
    if (!t) return NULL;
    /* stored as bfloat16 and 2-byte aligned: the mapped bytes themselves */
    if (t->dtype == MI_DT_BF16 && ((uintptr_t)t->data & 1) == 0 && (!writable || self->st->writable))
        return st_view_flags(self, t, NPY_UINT16, writable);
    /* else float32 once, rounded to bfloat16 into a new array */
    PyObject *f = st_converted(self, t);
    if (!f) return NULL;
    PyArrayObject *fa = (PyArrayObject *)f;
    PyObject *out = PyArray_SimpleNew(PyArray_NDIM(fa), PyArray_DIMS(fa), NPY_UINT16);
    if (out) {
        Py_BEGIN_ALLOW_THREADS
        mi_f32_to_bf16_n(PyArray_DATA(fa), PyArray_DATA((PyArrayObject *)out), PyArray_SIZE(fa));
        Py_END_ALLOW_THREADS
    }
    Py_DECREF(f);
    return out;
}

int mi_py_check_mapped(PyObject *const *arrays, int n)
{
    const mi_safetensors *last = NULL;
    for (int i = 0; i < n; i++) {
        PyObject *obj = arrays[i];
        if (!obj) continue;
        while (PyArray_Check(obj) && PyArray_BASE((PyArrayObject *)obj))
            obj = PyArray_BASE((PyArrayObject *)obj);
        const mi_safetensors *st = mi_py_buffer_ctx(obj, release_safetensors);
        if (!st || st == last) continue;
        last = st;
        mi_status s = mi_st_check(st);
        if (s != MI_OK) { mi_py_raise(s); return -1; }
    }
    return 0;
}

static PyObject *st_check(PyObject *op, PyObject *unused)
{
    mi_safetensors *st = st_open_or_raise((mi_py_safetensors *)op);
    if (!st) return NULL;
    mi_status s = mi_st_check(st);
    if (s != MI_OK) return mi_py_raise(s);
    Py_RETURN_NONE;
}

static PyObject *st_writable(PyObject *op, PyObject *unused)
{
    mi_safetensors *st = st_open_or_raise((mi_py_safetensors *)op);
    return st ? PyBool_FromLong(st->writable) : NULL;
}

static PyObject *st_dtype(PyObject *op, PyObject *name)
{
    const mi_st_tensor *t = st_lookup((mi_py_safetensors *)op, name);
    return t ? PyUnicode_FromString(mi_dtype_name(t->dtype)) : NULL;
}

static PyObject *st_shape(PyObject *op, PyObject *name)
{
    const mi_st_tensor *t = st_lookup((mi_py_safetensors *)op, name);
    if (!t) return NULL;
    PyObject *tup = PyTuple_New(t->ndim);
    if (!tup) return NULL;
    for (int i = 0; i < t->ndim; i++) {
        PyObject *d = PyLong_FromLongLong(t->shape[i]);
        if (!d) { Py_DECREF(tup); return NULL; }
        PyTuple_SET_ITEM(tup, i, d);
    }
    return tup;
}

static PyObject *st_keys(PyObject *op, PyObject *unused)
{
    mi_safetensors *st = st_open_or_raise((mi_py_safetensors *)op);
    if (!st) return NULL;
    PyObject *list = PyList_New(st->n_tensors);
    if (!list) return NULL;
    for (int i = 0; i < st->n_tensors; i++) {
        PyObject *k = PyUnicode_DecodeUTF8(st->tensors[i].name, strlen(st->tensors[i].name),
                                           "surrogateescape");
        if (!k) { Py_DECREF(list); return NULL; }
        PyList_SET_ITEM(list, i, k);
    }
    return list;
}

static PyObject *st_close(PyObject *op, PyObject *unused)
{
    mi_py_safetensors *self = (mi_py_safetensors *)op;
    Py_CLEAR(self->owner);   /* unmaps now unless arrays still hold the Buffer */
    self->st = NULL;
    Py_RETURN_NONE;
}

static PyObject *st_enter(PyObject *op, PyObject *unused)
{
    if (!st_open_or_raise((mi_py_safetensors *)op)) return NULL;
    return Py_NewRef(op);
}

static PyObject *st_exit(PyObject *op, PyObject *args)
{
    return st_close(op, NULL);
}

static PyObject *st_metadata(PyObject *op, void *closure)
{
    mi_safetensors *st = st_open_or_raise((mi_py_safetensors *)op);
    if (!st) return NULL;
    PyObject *d = PyDict_New();
    if (!d) return NULL;
    for (int i = 0; i < st->n_meta; i++) {
        PyObject *k = PyUnicode_DecodeUTF8(st->meta_keys[i], strlen(st->meta_keys[i]),
                                           "surrogateescape");
        PyObject *v = k ? PyUnicode_DecodeUTF8(st->meta_values[i], strlen(st->meta_values[i]),
                                               "surrogateescape") : NULL;
        if (!v || PyDict_SetItem(d, k, v) < 0) {
            Py_XDECREF(k); Py_XDECREF(v); Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(k);
        Py_DECREF(v);
    }
    return d;
}

static PyObject *st_path(PyObject *op, void *closure)
{
    return Py_NewRef(((mi_py_safetensors *)op)->path);
}

static PyObject *st_closed(PyObject *op, void *closure)
{
    return PyBool_FromLong(((mi_py_safetensors *)op)->owner == NULL);
}

static Py_ssize_t st_len(PyObject *op)
{
    mi_safetensors *st = st_open_or_raise((mi_py_safetensors *)op);
    return st ? st->n_tensors : -1;
}

static int st_contains(PyObject *op, PyObject *name)
{
    mi_safetensors *st = st_open_or_raise((mi_py_safetensors *)op);
    if (!st) return -1;
    if (!PyUnicode_Check(name)) return 0;
    const char *cname = PyUnicode_AsUTF8(name);
    if (!cname) return -1;
    return mi_st_find(st, cname) != NULL;
}

static PyObject *st_repr(PyObject *op)
{
    mi_py_safetensors *self = (mi_py_safetensors *)op;
    if (!self->owner) return PyUnicode_FromFormat("<SafeTensors %R (closed)>", self->path);
    return PyUnicode_FromFormat("<SafeTensors %R: %d tensors>", self->path, self->st->n_tensors);
}

static PyMethodDef st_methods[] = {
    {"keys", st_keys, METH_NOARGS,
     "keys()\n--\n\nThe tensor names, sorted."},
    {"get", st_get, METH_O,
     "get(name)\n--\n\nThe tensor as a read-only zero-copy NumPy view of the mapped file "
     "(dtype as stored; BF16, which NumPy lacks, is converted to a new float32 array). "
     "KeyError names the file and tensor if it is absent."},
    {"get_float32", (PyCFunction)(void (*)(void))st_get_float32, METH_FASTCALL | METH_KEYWORDS,
     "get_float32(name, *, writable=False)\n--\n\nThe tensor as float32: a zero-copy view when "
     "it is stored as aligned F32, otherwise a new array converted once in C (F16/BF16 exactly). "
     "The view is read-only unless writable=True: then writes go to this process's private "
     "copy-on-write pages (never to the file) and are seen by every view of this object's "
     "mapping; where the system refuses a writable mapping, writable=True returns a copy."},
    {"check", st_check, METH_NOARGS,
     "check()\n--\n\nRaise OSError naming the file if it shrank or was modified in place "
     "since it was mapped (reading a truncated mapping would kill the process with SIGBUS; "
     "a rewritten one would silently change the weights). One fstat; models run it before "
     "every forward pass. Files opened with copy=True always pass."},
    {"writable", (PyCFunction)(void (*)(void))st_writable, METH_NOARGS,
     "writable()\n--\n\nTrue when the mapping is copy-on-write, so get_float32(..., "
     "writable=True) can return views instead of copies."},
    {"get_bfloat16", (PyCFunction)(void (*)(void))st_get_bfloat16, METH_FASTCALL | METH_KEYWORDS,
     "get_bfloat16(name, *, writable=False)\n--\n\nThe tensor as bfloat16 bit patterns (uint16): a "
     "zero-copy view of the mapped file when it is stored as BF16 (writable: only on a "
     "copy-on-write mapping), else a new array rounded to nearest even."},
    {"dtype", st_dtype, METH_O,
     "dtype(name)\n--\n\nThe stored dtype as the format spells it: 'F32', 'BF16', ..."},
    {"shape", st_shape, METH_O,
     "shape(name)\n--\n\nThe tensor's shape as a tuple of ints."},
    {"close", st_close, METH_NOARGS,
     "close()\n--\n\nDrop this object's hold on the mapping. Arrays already returned stay "
     "valid; the file is unmapped when the last of them is gone."},
    {"__enter__", st_enter, METH_NOARGS, "Context manager entry: returns self."},
    {"__exit__", st_exit, METH_VARARGS, "Context manager exit: close()."},
    {NULL},
};

static PyGetSetDef st_getset[] = {
    {"metadata", st_metadata, NULL, "The header's __metadata__ as a dict of str to str "
     "(empty if the file has none).", NULL},
    {"path", st_path, NULL, "The file this object was opened from.", NULL},
    {"closed", st_closed, NULL, "True after close().", NULL},
    {NULL},
};

static PyType_Slot st_slots[] = {
    {Py_tp_new, st_new},
    {Py_tp_dealloc, st_dealloc},
    {Py_tp_methods, st_methods},
    {Py_tp_getset, st_getset},
    {Py_tp_repr, st_repr},
    {Py_sq_length, st_len},
    {Py_sq_contains, st_contains},
    {Py_tp_doc, "SafeTensors(path, *, copy=False)\n--\n\nA .safetensors file mapped "
     "copy-on-write. The header is validated against the file size on open (ValueError naming "
     "the file, the tensor and the problem); tensors are handed out as zero-copy NumPy views.\n\n"
     "Mapping contract: the views read the file's pages, so the file must not be truncated or "
     "written over in place while they live (truncation makes reading them raise SIGBUS, which "
     "kills the process; an in-place rewrite changes them). Replacing the file by renaming a "
     "new one over it is safe. check() detects both changes; with copy=True the file is read "
     "into private memory once and may then change or disappear freely. A FIFO, device or "
     "directory is refused before any read (OSError naming it)."},
    {0, NULL},
};

static PyType_Spec st_spec = {
    .name = "mechinterp_c._core.SafeTensors",
    .basicsize = sizeof(mi_py_safetensors),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = st_slots,
};

/* ============================ JSON ======================================== */

/* Python's json module turns numbers written as integers into int (exact at
 * any size) and the rest into float; do the same from the number's own text. */
static PyObject *json_number(const mi_json_doc *doc, size_t *next_number)
{
    size_t i = (*next_number)++;
    if (i >= doc->n_numbers)
        return PyErr_Format(PyExc_RuntimeError, "%s: internal error: number tokens out of step "
                            "with the cJSON tree", doc->path);
    const mi_json_number *num = &doc->numbers[i];
    char small[128], *tok = num->length < sizeof small ? small : PyMem_Malloc(num->length + 1);
    if (!tok) return PyErr_NoMemory();
    memcpy(tok, doc->text + num->offset, num->length);
    tok[num->length] = '\0';
    PyObject *r;
    if (num->is_integer) {
        r = PyLong_FromString(tok, NULL, 10);
    } else {
        double v = PyOS_string_to_double(tok, NULL, NULL);
        r = (v == -1.0 && PyErr_Occurred()) ? NULL : PyFloat_FromDouble(v);
    }
    if (tok != small) PyMem_Free(tok);
    return r;
}

static PyObject *json_string(const mi_json_doc *doc, const char *s)
{
    PyObject *r = PyUnicode_DecodeUTF8(s, strlen(s), "strict");
    if (!r && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s: invalid UTF-8 in string '%.40s'", doc->path, s);
    }
    return r;
}

static PyObject *json_to_py(const mi_json_doc *doc, const cJSON *item, size_t *next_number)
{
    if (cJSON_IsNull(item)) Py_RETURN_NONE;
    if (cJSON_IsTrue(item)) Py_RETURN_TRUE;
    if (cJSON_IsFalse(item)) Py_RETURN_FALSE;
    if (cJSON_IsNumber(item)) return json_number(doc, next_number);
    if (cJSON_IsString(item)) return json_string(doc, item->valuestring);
    if (cJSON_IsArray(item)) {
        PyObject *list = PyList_New(0);
        if (!list) return NULL;
        for (const cJSON *c = item->child; c; c = c->next) {
            PyObject *v = json_to_py(doc, c, next_number);
            if (!v || PyList_Append(list, v) < 0) { Py_XDECREF(v); Py_DECREF(list); return NULL; }
            Py_DECREF(v);
        }
        return list;
    }
    if (cJSON_IsObject(item)) {
        PyObject *dict = PyDict_New();
        if (!dict) return NULL;
        for (const cJSON *c = item->child; c; c = c->next) {
            PyObject *k = json_string(doc, c->string);
            PyObject *v = k ? json_to_py(doc, c, next_number) : NULL;
            /* duplicate keys: the last one wins, as in Python's json */
            if (!v || PyDict_SetItem(dict, k, v) < 0) {
                Py_XDECREF(k); Py_XDECREF(v); Py_DECREF(dict);
                return NULL;
            }
            Py_DECREF(k);
            Py_DECREF(v);
        }
        return dict;
    }
    return PyErr_Format(PyExc_RuntimeError, "%s: internal error: unexpected cJSON item type %d",
                        doc->path, item->type);
}

static PyObject *doc_to_py(mi_json_doc *doc)
{
    size_t next_number = 0;
    PyObject *r = json_to_py(doc, doc->root, &next_number);
    mi_json_free(doc);
    return r;
}

static PyObject *py_parse_json_file(PyObject *m, PyObject *arg)
{
    PyObject *path_bytes = NULL;
    if (!PyUnicode_FSConverter(arg, &path_bytes)) return NULL;
    mi_json_doc *doc = NULL;
    mi_status s;
    int err;
    Py_BEGIN_ALLOW_THREADS
    s = mi_json_parse_file(PyBytes_AS_STRING(path_bytes), &doc);
    err = errno;
    Py_END_ALLOW_THREADS
    Py_DECREF(path_bytes);
    if (s != MI_OK) return mi_py_raise_os(s, err);
    return doc_to_py(doc);
}

static PyObject *py_parse_json(PyObject *m, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"text", "label", NULL};
    Py_buffer text;
    const char *label = "<string>";
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "s*|s:parse_json", kwlist, &text, &label))
        return NULL;
    mi_json_doc *doc = NULL;
    mi_status s = mi_json_parse_buffer(text.buf, (size_t)text.len, label, &doc);
    PyBuffer_Release(&text);
    if (s != MI_OK) return mi_py_raise(s);
    return doc_to_py(doc);
}

static PyMethodDef io_functions[] = {
    {"parse_json_file", py_parse_json_file, METH_O,
     "parse_json_file(path)\n--\n\nParse a JSON file with cJSON into dicts, lists, str, int, "
     "float, bool and None (ints and floats as Python's json module makes them). Invalid JSON "
     "raises ValueError 'FILE:LINE:COL: ...'; a missing file OSError."},
    {"parse_json", (PyCFunction)(void (*)(void))py_parse_json, METH_VARARGS | METH_KEYWORDS,
     "parse_json(text, label='<string>')\n--\n\nParse JSON from a str or bytes, as "
     "parse_json_file does; `label` names it in error messages."},
    {NULL, NULL, 0, NULL},
};

int mi_py_io_exec(PyObject *m)
{
    if (PyModule_AddFunctions(m, io_functions) < 0) return -1;
    PyObject *tp = PyType_FromModuleAndSpec(m, &st_spec, NULL);
    if (!tp) return -1;
    mi_state(m)->safetensors_type = (PyTypeObject *)tp;
    return PyModule_AddObjectRef(m, "SafeTensors", tp);
}
