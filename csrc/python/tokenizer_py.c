/* tokenizer_py.c - _core.BPETokenizer: Python type over csrc/io/bpe_tokenizer.
 *
 * Owns one loaded tokenizer and one scratch (word cache) guarded by a lock, so the object
 * can be shared between Python threads; encoding and decoding run with the GIL released and
 * the lock held (add_special, which may grow the tables, takes the same lock). Batch encoding
 * runs in the core (io/bpe_batch.h) with the object's pool of per-thread scratches. */
#include "python/convert.h"

#include <pythread.h>

#include "io/bpe_batch.h"
#include "io/bpe_tokenizer.h"
#include "io/tokenizer_json.h"

typedef struct {
    PyObject_HEAD
    mi_bpe_tokenizer *tok;
    mi_bpe_scratch *scratch;
    mi_bpe_pool pool;                  /* scratches of encode_batch's other threads */
    PyThread_type_lock lock;
} TokObject;

static TokObject *tok_alloc(PyTypeObject *type, mi_bpe_tokenizer *tok)
{
    TokObject *self = (TokObject *)type->tp_alloc(type, 0);
    if (!self) { mi_bpe_free(tok); return NULL; }
    self->tok = tok;
    self->scratch = mi_bpe_scratch_new();
    self->lock = PyThread_allocate_lock();
    if (!self->scratch || !self->lock) { Py_DECREF(self); PyErr_NoMemory(); return NULL; }
    return self;
}

static PyObject *tok_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"vocab_file", "merges_file", NULL};
    PyObject *vocab_o, *merges_o;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&O&:BPETokenizer", kwlist,
                                     PyUnicode_FSConverter, &vocab_o, PyUnicode_FSConverter, &merges_o))
        return NULL;
    mi_bpe_tokenizer *tok = NULL;
    mi_status st;
    Py_BEGIN_ALLOW_THREADS
    st = mi_bpe_load(PyBytes_AS_STRING(vocab_o), PyBytes_AS_STRING(merges_o), &tok);
    Py_END_ALLOW_THREADS
    Py_DECREF(vocab_o); Py_DECREF(merges_o);
    if (st != MI_OK) return mi_py_raise(st);
    return (PyObject *)tok_alloc(type, tok);
}

static PyObject *tok_from_strings(PyObject *cls, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"vocab_json", "merges", "vocab_name", "merges_name", NULL};
    PyObject *v, *m;
    const char *vname = "vocab_json", *mname = "merges";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|ss:from_strings", kwlist, &v, &m, &vname, &mname))
        return NULL;
    PyObject *vb = mi_py_text_arg(v, "vocab_json");
    if (!vb) return NULL;
    PyObject *mb = mi_py_text_arg(m, "merges");
    if (!mb) { Py_DECREF(vb); return NULL; }
    mi_bpe_tokenizer *tok = NULL;
    mi_status st = mi_bpe_from_memory(PyBytes_AS_STRING(vb), (size_t)PyBytes_GET_SIZE(vb),
                                      PyBytes_AS_STRING(mb), (size_t)PyBytes_GET_SIZE(mb),
                                      vname, mname, &tok);
    Py_DECREF(vb); Py_DECREF(mb);
    if (st != MI_OK) return mi_py_raise(st);
    return (PyObject *)tok_alloc((PyTypeObject *)cls, tok);
}

static PyObject *tok_from_tokenizer_json(PyObject *cls, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"path", NULL};
    PyObject *path_o;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&:from_tokenizer_json", kwlist, PyUnicode_FSConverter, &path_o))
        return NULL;
    mi_bpe_tokenizer *tok = NULL;
    mi_status st;
    Py_BEGIN_ALLOW_THREADS
    st = mi_tokenizer_json_load(PyBytes_AS_STRING(path_o), &tok);
    Py_END_ALLOW_THREADS
    Py_DECREF(path_o);
    if (st != MI_OK) return mi_py_raise(st);
    return (PyObject *)tok_alloc((PyTypeObject *)cls, tok);
}

static PyObject *int_list(const int32_t *ids, int n)
{
    PyObject *l = PyList_New(n);
    for (int i = 0; l && i < n; i++) {
        PyObject *v = PyLong_FromLong(ids[i]);
        if (!v) { Py_CLEAR(l); break; }
        PyList_SET_ITEM(l, i, v);
    }
    return l;
}

/* What the Python front needs of a tokenizer.json pipeline: NFC, the template ids. */
static PyObject *tok_pipeline(TokObject *self, PyObject *unused)
{
    const int32_t *pre, *suf;
    int np, ns;
    mi_bpe_template(self->tok, &pre, &np, &suf, &ns);
    PyObject *a = int_list(pre, np), *b = a ? int_list(suf, ns) : NULL;
    PyObject *d = b ? Py_BuildValue("{s:O,s:N,s:N}", "nfc", mi_bpe_get_options(self->tok)->nfc ? Py_True : Py_False,
                                    "prefix", a, "suffix", b) : NULL;
    if (!d) { Py_XDECREF(a); Py_XDECREF(b); }
    return d;
}

static void tok_dealloc(TokObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    mi_bpe_free(self->tok);
    mi_bpe_scratch_free(self->scratch);
    mi_bpe_pool_free(&self->pool);
    if (self->lock) PyThread_free_lock(self->lock);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *ids_to_list(const mi_bpe_ids *v)
{
    PyObject *list = PyList_New((Py_ssize_t)v->len);
    if (!list) return NULL;
    for (size_t i = 0; i < v->len; i++) {
        PyObject *x = PyLong_FromLong(v->data[i]);
        if (!x) { Py_DECREF(list); return NULL; }
        PyList_SET_ITEM(list, (Py_ssize_t)i, x);
    }
    return list;
}

static PyObject *tok_add_special(TokObject *self, PyObject *args)
{
    PyObject *text;
    int id;
    if (!PyArg_ParseTuple(args, "Ui:add_special", &text, &id)) return NULL;
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(text, &n);
    if (!s) return NULL;
    mi_status st;
    PyThread_acquire_lock(self->lock, WAIT_LOCK);     /* no encode runs while specials change */
    st = mi_bpe_add_special(self->tok, s, (size_t)n, id);
    PyThread_release_lock(self->lock);
    if (st != MI_OK) return mi_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *tok_encode(TokObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"text", "split_special", "add_prefix_space", "reference", NULL};
    PyObject *text;
    int split_special = 1, prefix = 0, reference = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|ppp:encode", kwlist, &text, &split_special, &prefix, &reference))
        return NULL;
    int flags = (split_special ? MI_BPE_SPLIT_SPECIAL : 0) | (prefix ? MI_BPE_PREFIX_SPACE : 0) |
                (reference ? MI_BPE_REFERENCE : 0);
    if (!PyUnicode_Check(text))
        return PyErr_Format(PyExc_TypeError, "encode: text must be str, got %s", Py_TYPE(text)->tp_name);
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(text, &n);
    if (!s) return NULL;
    mi_bpe_ids ids = {0};
    mi_status st;
    Py_BEGIN_ALLOW_THREADS
    PyThread_acquire_lock(self->lock, WAIT_LOCK);
    st = mi_bpe_encode(self->tok, self->scratch, s, (size_t)n, flags, &ids);
    PyThread_release_lock(self->lock);
    Py_END_ALLOW_THREADS
    PyObject *res = st == MI_OK ? ids_to_list(&ids) : mi_py_raise(st);
    mi_bpe_ids_free(&ids);
    return res;
}

static PyObject *tok_encode_batch(TokObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"texts", "split_special", "add_prefix_space", NULL};
    PyObject *texts;
    int split_special = 1, prefix = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|pp:encode_batch", kwlist, &texts, &split_special, &prefix))
        return NULL;
    int flags = (split_special ? MI_BPE_SPLIT_SPECIAL : 0) | (prefix ? MI_BPE_PREFIX_SPACE : 0);
    /* a tuple of our own: the str objects whose UTF-8 we read without the GIL stay alive
     * even if another thread edits the caller's list meanwhile */
    if (!PySequence_Check(texts) || PyUnicode_Check(texts))
        return PyErr_Format(PyExc_TypeError, "encode_batch: texts must be a sequence of str, got %s",
                            Py_TYPE(texts)->tp_name);
    PyObject *seq = PySequence_Tuple(texts);
    if (!seq) return NULL;
    Py_ssize_t nt = PySequence_Fast_GET_SIZE(seq);
    const char **ptr = PyMem_Calloc((size_t)nt + 1, sizeof(char *));
    size_t *len = PyMem_Calloc((size_t)nt + 1, sizeof(size_t));
    mi_bpe_ids *out = PyMem_Calloc((size_t)nt + 1, sizeof(mi_bpe_ids));
    PyObject *result = NULL;
    if (!ptr || !len || !out) { PyErr_NoMemory(); goto done; }
    for (Py_ssize_t i = 0; i < nt; i++) {
        PyObject *t = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyUnicode_Check(t)) {
            PyErr_Format(PyExc_TypeError, "encode_batch: texts[%zd] must be str, got %s", i, Py_TYPE(t)->tp_name);
            goto done;
        }
        Py_ssize_t n;
        ptr[i] = PyUnicode_AsUTF8AndSize(t, &n);       /* cached in the str, lives with seq */
        if (!ptr[i]) goto done;
        len[i] = (size_t)n;
    }
    mi_status st;
    Py_BEGIN_ALLOW_THREADS
    PyThread_acquire_lock(self->lock, WAIT_LOCK);
    st = mi_bpe_encode_batch(self->tok, self->scratch, &self->pool, ptr, len, (size_t)nt, flags, out);
    PyThread_release_lock(self->lock);
    Py_END_ALLOW_THREADS
    if (st != MI_OK) { mi_py_raise(st); goto done; }
    /* many small lists: keep the cyclic GC from rescanning the heap while they are built */
    int gc_was_enabled = PyGC_Disable();
    result = PyList_New(nt);
    for (Py_ssize_t i = 0; result && i < nt; i++) {
        PyObject *l = ids_to_list(&out[i]);
        if (!l) { Py_CLEAR(result); break; }
        PyList_SET_ITEM(result, i, l);
    }
    if (gc_was_enabled) PyGC_Enable();
done:
    if (out) for (Py_ssize_t i = 0; i < nt; i++) mi_bpe_ids_free(&out[i]);
    PyMem_Free(ptr); PyMem_Free(len); PyMem_Free(out);
    Py_DECREF(seq);
    return result;
}

static PyObject *tok_pretokenize(TokObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"text", "split_special", NULL};
    PyObject *text;
    int split_special = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "U|p:pretokenize", kwlist, &text, &split_special)) return NULL;
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(text, &n);
    if (!s) return NULL;
    mi_bpe_ids ends = {0};
    mi_status st;
    Py_BEGIN_ALLOW_THREADS
    PyThread_acquire_lock(self->lock, WAIT_LOCK);
    st = mi_bpe_pretokenize(self->tok, s, (size_t)n, split_special, &ends);
    PyThread_release_lock(self->lock);
    Py_END_ALLOW_THREADS
    PyObject *res = NULL;
    if (st != MI_OK) { mi_bpe_ids_free(&ends); return mi_py_raise(st); }
    res = PyList_New((Py_ssize_t)ends.len);
    for (size_t i = 0, start = 0; res && i < ends.len; i++) {
        PyObject *piece = PyBytes_FromStringAndSize(s + start, (Py_ssize_t)(ends.data[i] - start));
        if (!piece) { Py_CLEAR(res); break; }
        PyList_SET_ITEM(res, (Py_ssize_t)i, piece);
        start = (size_t)ends.data[i];
    }
    mi_bpe_ids_free(&ends);
    return res;
}

static PyObject *decode_impl(TokObject *self, PyObject *args, PyObject *kw, int as_str)
{
    static char *kwlist[] = {"ids", "skip_special", NULL};
    PyObject *ids_o;
    int skip = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|p:decode", kwlist, &ids_o, &skip)) return NULL;
    mi_bpe_ids ids = {0};
    if (mi_py_ids_arg(ids_o, "decode", &ids.data, &ids.len) < 0) return NULL;
    mi_bpe_bytes bytes = {0};
    mi_status st;
    Py_BEGIN_ALLOW_THREADS
    PyThread_acquire_lock(self->lock, WAIT_LOCK);     /* add_special may grow the tables */
    st = mi_bpe_decode(self->tok, ids.data, ids.len, skip, &bytes);
    PyThread_release_lock(self->lock);
    Py_END_ALLOW_THREADS
    PyMem_Free(ids.data);
    PyObject *res;
    if (st != MI_OK) res = mi_py_raise(st);
    else if (as_str) res = PyUnicode_DecodeUTF8(bytes.data ? bytes.data : "", (Py_ssize_t)bytes.len, "replace");
    else res = PyBytes_FromStringAndSize(bytes.data ? bytes.data : "", (Py_ssize_t)bytes.len);
    free(bytes.data);
    return res;
}

static PyObject *tok_decode(TokObject *self, PyObject *args, PyObject *kw) { return decode_impl(self, args, kw, 1); }
static PyObject *tok_decode_bytes(TokObject *self, PyObject *args, PyObject *kw) { return decode_impl(self, args, kw, 0); }

static PyObject *tok_token_to_id(TokObject *self, PyObject *arg)
{
    if (!PyUnicode_Check(arg))
        return PyErr_Format(PyExc_TypeError, "token_to_id: token must be str, got %s", Py_TYPE(arg)->tp_name);
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(arg, &n);
    if (!s) return NULL;
    int32_t id = mi_bpe_token_to_id(self->tok, s, (size_t)n);
    if (id < 0) Py_RETURN_NONE;
    return PyLong_FromLong(id);
}

static PyObject *tok_id_to_token(TokObject *self, PyObject *arg)
{
    long long id = PyLong_AsLongLong(arg);
    if (id == -1 && PyErr_Occurred()) return NULL;
    size_t n;
    const char *s = (id < 0 || id > INT32_MAX) ? NULL : mi_bpe_id_to_token(self->tok, (int32_t)id, &n);
    if (!s) Py_RETURN_NONE;
    return PyUnicode_DecodeUTF8(s, (Py_ssize_t)n, "replace");
}

static PyObject *tok_is_special(TokObject *self, PyObject *arg)
{
    long long id = PyLong_AsLongLong(arg);
    if (id == -1 && PyErr_Occurred()) return NULL;
    return PyBool_FromLong(id >= 0 && id <= INT32_MAX && mi_bpe_is_special(self->tok, (int32_t)id));
}

static PyObject *tok_vocab_size(TokObject *self, void *unused)
{
    return PyLong_FromLong(mi_bpe_vocab_size(self->tok));
}

static PyMethodDef tok_methods[] = {
    {"from_strings", (PyCFunction)(void (*)(void))tok_from_strings, METH_VARARGS | METH_KEYWORDS | METH_CLASS,
     "from_strings(vocab_json, merges, vocab_name='vocab_json', merges_name='merges')\n--\n\n"
     "Build from the texts of vocab.json and merges.txt (str or bytes); the names appear in error messages."},
    {"from_tokenizer_json", (PyCFunction)(void (*)(void))tok_from_tokenizer_json,
     METH_VARARGS | METH_KEYWORDS | METH_CLASS,
     "from_tokenizer_json(path)\n--\n\nLoad a Hugging Face tokenizer.json (BPE: byte-level or SentencePiece-style)."},
    {"pipeline", (PyCFunction)tok_pipeline, METH_NOARGS,
     "pipeline()\n--\n\n{'nfc': bool, 'prefix': ids, 'suffix': ids}: the NFC normalizer (applied by the caller) "
     "and the post-processor's ids around a sequence."},
    {"add_special", (PyCFunction)tok_add_special, METH_VARARGS,
     "add_special(text, id)\n--\n\nDeclare text a special token with this id (split out before BPE)."},
    {"encode", (PyCFunction)(void (*)(void))tok_encode, METH_VARARGS | METH_KEYWORDS,
     "encode(text, split_special=True, add_prefix_space=False, reference=False)\n--\n\nToken ids (list of int) of a str; reference=True merges with the plain GPT-2 loop (tests)."},
    {"encode_batch", (PyCFunction)(void (*)(void))tok_encode_batch, METH_VARARGS | METH_KEYWORDS,
     "encode_batch(texts, split_special=True, add_prefix_space=False)\n--\n\nencode() of every str, in parallel; list of lists."},
    {"pretokenize", (PyCFunction)(void (*)(void))tok_pretokenize, METH_VARARGS | METH_KEYWORDS,
     "pretokenize(text, split_special=True)\n--\n\nThe pieces (UTF-8 bytes) the GPT-2 pattern splits text into."},
    {"decode", (PyCFunction)(void (*)(void))tok_decode, METH_VARARGS | METH_KEYWORDS,
     "decode(ids, skip_special=False)\n--\n\nText of ids (invalid UTF-8 becomes U+FFFD, as errors='replace')."},
    {"decode_bytes", (PyCFunction)(void (*)(void))tok_decode_bytes, METH_VARARGS | METH_KEYWORDS,
     "decode_bytes(ids, skip_special=False)\n--\n\nRaw bytes of ids."},
    {"token_to_id", (PyCFunction)tok_token_to_id, METH_O,
     "token_to_id(token)\n--\n\nId of a vocab.json token string, or None."},
    {"id_to_token", (PyCFunction)tok_id_to_token, METH_O,
     "id_to_token(id)\n--\n\nvocab.json token string of an id, or None."},
    {"is_special", (PyCFunction)tok_is_special, METH_O,
     "is_special(id)\n--\n\nWhether id is a special token."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef tok_getset[] = {
    {"vocab_size", (getter)tok_vocab_size, NULL, "Number of ids (largest id + 1).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot tok_slots[] = {
    {Py_tp_new, tok_new},
    {Py_tp_dealloc, tok_dealloc},
    {Py_tp_methods, tok_methods},
    {Py_tp_getset, tok_getset},
    {Py_tp_doc, "BPETokenizer(vocab_file, merges_file)\n--\n\n"
                "GPT-2 byte-level BPE tokenizer implemented in C (see mechinterp_c.transformers "
                "for the Hugging Face-compatible front)."},
    {0, NULL},
};

static PyType_Spec tok_spec = {
    .name = "mechinterp_c._core.BPETokenizer",
    .basicsize = sizeof(TokObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = tok_slots,
};

int mi_py_tokenizer_exec(PyObject *m)
{
    PyObject *type = PyType_FromModuleAndSpec(m, &tok_spec, NULL);
    if (!type) return -1;
    mi_state(m)->tokenizer_type = (PyTypeObject *)type;
    Py_INCREF(type);
    if (PyModule_AddObject(m, "BPETokenizer", type) < 0) { Py_DECREF(type); Py_DECREF(type); return -1; }
    return 0;
}
