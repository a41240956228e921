/* sampling_py.c - the next-token sampler (kernels/sampling.h) as NumPy functions.
 *
 *   sampling_logits(logits, tokens=None, *, temperature=1, top_k=0, top_p=1,
 *                   freq_penalty=0, repetition_penalty=1, rules="tl") -> float32 [B, V]
 *   sample(logits, tokens=None, *, seed, counter=0, <same keywords>) -> int64 [B]
 *   argmax_rows(logits) -> int64 [B]
 * logits: [B, V] (or [V], read as one row); tokens: [B, T] ids of each row's history. */
#include "python/convert.h"

#include <string.h>

#include "kernels/sampling.h"

/* The two array arguments, described for the one set of converters (convert.h). */
#define LOGITS_ARG MI_ARG_FLOAT("logits", 1, 2)
#define TOKENS_ARG MI_ARG_OPT(MI_ARG_INT64("tokens", 1, 2))

/* Keyword arguments shared by sampling_logits and sample. */
typedef struct {
    mi_arg logits, tokens;   /* release both when done */
    mi_sampling_params p;
    unsigned long long seed, counter;
} sample_args;

/* Parse and convert (a->logits, a->tokens hold the arrays; tokens' may be NULL). */
static int parse(PyObject *args, PyObject *kw, int with_seed, const char *fname, sample_args *a)
{
    static char *kw_plain[] = {"logits", "tokens", "temperature", "top_k", "top_p",
                               "freq_penalty", "repetition_penalty", "rules", NULL};
    static char *kw_seed[] = {"logits", "tokens", "temperature", "top_k", "top_p",
                              "freq_penalty", "repetition_penalty", "rules", "seed", "counter", NULL};
    const char *rules = "tl";
    long long top_k = 0;
    memset(a, 0, sizeof *a);
    a->logits = LOGITS_ARG;
    a->tokens = TOKENS_ARG;
    a->p.temperature = 1.0f;
    a->p.top_p = 1.0f;
    a->p.repetition_penalty = 1.0f;
    int ok = with_seed
        ? PyArg_ParseTupleAndKeywords(args, kw, "O&|O&$fLfffsKK", kw_seed, mi_conv_array, &a->logits,
                                      mi_conv_array, &a->tokens, &a->p.temperature, &top_k,
                                      &a->p.top_p, &a->p.freq_penalty, &a->p.repetition_penalty,
                                      &rules, &a->seed, &a->counter)
        : PyArg_ParseTupleAndKeywords(args, kw, "O&|O&$fLfffs", kw_plain, mi_conv_array, &a->logits,
                                      mi_conv_array, &a->tokens, &a->p.temperature, &top_k,
                                      &a->p.top_p, &a->p.freq_penalty, &a->p.repetition_penalty,
                                      &rules);
    if (!ok) return -1;
    a->p.top_k = top_k;
    if (!strcmp(rules, "tl")) a->p.rules = MI_RULES_TL;
    else if (!strcmp(rules, "hf")) a->p.rules = MI_RULES_HF;
    else {
        PyErr_Format(PyExc_ValueError, "%s: rules must be 'tl' (TransformerLens) or 'hf' "
                     "(Hugging Face), got '%s'", fname, rules);
        return -1;
    }
    PyArrayObject *lg = a->logits.arr, *hist = a->tokens.arr;
    if (hist) {
        const npy_intp rows = PyArray_NDIM(hist) == 2 ? PyArray_DIM(hist, 0) : 1;
        const npy_intp B = PyArray_NDIM(lg) == 2 ? PyArray_DIM(lg, 0) : 1;
        if (rows != B) {
            PyErr_Format(PyExc_ValueError, "%s: tokens has %zd rows but logits has %zd", fname,
                         rows, B);
            return -1;
        }
    }
    return 0;
}

static void release(sample_args *a)
{
    mi_arg_release(&a->logits);
    mi_arg_release(&a->tokens);
}

/* [B, V] of logits (a 1-D array is one row). */
static void dims(PyArrayObject *lg, npy_intp *B, npy_intp *V)
{
    *V = PyArray_DIM(lg, PyArray_NDIM(lg) - 1);
    *B = PyArray_NDIM(lg) == 2 ? PyArray_DIM(lg, 0) : 1;
}

static PyObject *py_sampling_logits(PyObject *m, PyObject *args, PyObject *kw)
{
    sample_args a;
    PyObject *out = NULL;
    if (parse(args, kw, 0, "sampling_logits", &a) < 0) goto done;
    PyArrayObject *lg = a.logits.arr, *hist = a.tokens.arr;
    npy_intp B, V;
    dims(lg, &B, &V);
    const npy_intp T = hist ? PyArray_DIM(hist, PyArray_NDIM(hist) - 1) : 0;
    out = PyArray_SimpleNew(PyArray_NDIM(lg), PyArray_DIMS(lg), NPY_FLOAT32);
    if (!out) goto done;
    mi_status st;
    Py_BEGIN_ALLOW_THREADS
    st = mi_sampling_logits(PyArray_DATA(lg), B, V, mi_arg_data(&a.tokens), T, &a.p,
                            PyArray_DATA((PyArrayObject *)out));
    Py_END_ALLOW_THREADS
    if (st != MI_OK) {
        Py_CLEAR(out);
        mi_py_raise(st);
    }
done:
    release(&a);
    return out;
}

static PyObject *py_sample(PyObject *m, PyObject *args, PyObject *kw)
{
    sample_args a;
    PyObject *out = NULL;
    float *work = NULL;
    if (parse(args, kw, 1, "sample", &a) < 0) goto done;
    PyArrayObject *lg = a.logits.arr, *hist = a.tokens.arr;
    npy_intp B, V;
    dims(lg, &B, &V);
    const npy_intp T = hist ? PyArray_DIM(hist, PyArray_NDIM(hist) - 1) : 0;
    out = PyArray_SimpleNew(1, &B, NPY_INT64);
    work = PyMem_RawMalloc((size_t)(B * V) * sizeof *work);
    if (!out || !work) {
        if (!work) PyErr_NoMemory();
        Py_CLEAR(out);
        goto done;
    }
    mi_status st;
    Py_BEGIN_ALLOW_THREADS
    st = mi_sampling_logits(PyArray_DATA(lg), B, V, mi_arg_data(&a.tokens), T, &a.p, work);
    if (st == MI_OK)
        st = mi_sampling_draw(work, B, V, a.seed, a.counter, PyArray_DATA((PyArrayObject *)out));
    Py_END_ALLOW_THREADS
    if (st != MI_OK) {
        Py_CLEAR(out);
        mi_py_raise(st);
    }
done:
    PyMem_RawFree(work);
    release(&a);
    return out;
}

static PyObject *py_argmax_rows(PyObject *m, PyObject *args)
{
    mi_arg logits = LOGITS_ARG;
    if (!PyArg_ParseTuple(args, "O&:argmax_rows", mi_conv_array, &logits)) return NULL;
    PyArrayObject *lg = logits.arr;
    npy_intp B, V;
    dims(lg, &B, &V);
    PyObject *out = PyArray_SimpleNew(1, &B, NPY_INT64);
    if (out) {
        mi_status st;
        Py_BEGIN_ALLOW_THREADS
        st = mi_sampling_argmax(PyArray_DATA(lg), B, V, PyArray_DATA((PyArrayObject *)out));
        Py_END_ALLOW_THREADS
        if (st != MI_OK) {
            Py_CLEAR(out);
            mi_py_raise(st);
        }
    }
    mi_arg_release(&logits);
    return out;
}

static PyObject *py_sampling_uniform(PyObject *m, PyObject *args)
{
    unsigned long long seed, stream, counter;
    if (!PyArg_ParseTuple(args, "KKK:sampling_uniform", &seed, &stream, &counter)) return NULL;
    return PyFloat_FromDouble(mi_sampling_uniform(seed, stream, counter));
}

static PyMethodDef sampling_methods[] = {
    {"sampling_logits", (PyCFunction)(void (*)(void))py_sampling_logits, METH_VARARGS | METH_KEYWORDS,
     "sampling_logits(logits, tokens=None, *, temperature=1.0, top_k=0, top_p=1.0, freq_penalty=0.0,\n"
     "                repetition_penalty=1.0, rules='tl')\n--\n\n"
     "The logits a sampler draws from ([B, V] float32, removed tokens -inf): repetition penalty\n"
     "(Hugging Face), / temperature, - freq_penalty * count (TransformerLens), top-k, top-p with\n"
     "the rule of rules='tl' (TransformerLens: top-k or top-p) or 'hf' (Hugging Face: both).\n"
     "tokens [B, T]: each row's history for the penalties."},
    {"sample", (PyCFunction)(void (*)(void))py_sample, METH_VARARGS | METH_KEYWORDS,
     "sample(logits, tokens=None, *, temperature=1.0, top_k=0, top_p=1.0, freq_penalty=0.0,\n"
     "       repetition_penalty=1.0, rules='tl', seed=0, counter=0)\n--\n\n"
     "One token per row ([B] int64) drawn from softmax(sampling_logits(...)). Row r's draw is a\n"
     "function of (seed, counter, r) only: the same on any thread count."},
    {"argmax_rows", py_argmax_rows, METH_VARARGS,
     "argmax_rows(logits)\n--\n\nThe first index of each row's maximum ([B] int64), NaN counting as "
     "the maximum (torch.argmax)."},
    {"sampling_uniform", py_sampling_uniform, METH_VARARGS,
     "sampling_uniform(seed, stream, counter)\n--\n\nThe sampler's uniform in [0, 1) for row "
     "`stream` of call `counter`; for tests."},
    {NULL, NULL, 0, NULL},
};

int mi_py_sampling_exec(PyObject *m)
{
    return PyModule_AddFunctions(m, sampling_methods);
}
