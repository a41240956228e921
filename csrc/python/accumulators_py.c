/* accumulators_py.c - bindings of csrc/analysis/accumulators (underscore names).
 *
 * mechinterp_c/stats.py owns the state arrays and calls these to update or
 * merge them in place. Each binding checks every array it is given (dtype,
 * byte order, C-contiguity, writability, shape against the others) so a
 * wrong call raises naming the argument instead of writing out of bounds,
 * then runs the kernel with the GIL released. */
#include "python/convert.h"

#include "analysis/accumulators.h"

enum { ANY = -1 };

/* `obj` as an aligned, native-order, C-contiguous array of `type` (never
 * converted: the state is updated in place) whose shape matches dims[0:ndim]
 * (ANY: any size), writable when `out`; else NULL with an exception naming
 * `name` (convert.h). Borrowed. */
static PyArrayObject *need(PyObject *obj, const char *name, int type, int ndim,
                           const npy_intp *dims, int out)
{
    mi_arg a = MI_ARG(name, type, out ? MI_ARG_INPLACE : MI_ARG_EXACT, ndim, ndim);
    if (!mi_arg_borrow(obj, &a) || mi_arg_shape(&a, ndim, dims, NULL) < 0) return NULL;
    return a.arr;
}

#define D(a) PyArray_DATA(a)
#define N(a, i) PyArray_DIM(a, i)

static PyObject *py_moments_update(PyObject *m, PyObject *args)
{
    PyObject *o[4];
    if (!PyArg_ParseTuple(args, "OOOO:_acc_moments_update", &o[0], &o[1], &o[2], &o[3])) return NULL;
    PyArrayObject *x = need(o[3], "x", NPY_FLOAT32, 2, (npy_intp[]){ANY, ANY}, 0);
    if (!x) return NULL;
    npy_intp u[1] = {N(x, 1)};
    PyArrayObject *c, *mean, *m2;
    if (!(c = need(o[0], "count", NPY_INT64, 1, u, 1)) || !(mean = need(o[1], "mean", NPY_FLOAT64, 1, u, 1))
        || !(m2 = need(o[2], "m2", NPY_FLOAT64, 1, u, 1)))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    mi_acc_moments_update(D(c), D(mean), D(m2), D(x), N(x, 0), N(x, 1));
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_moments_merge(PyObject *m, PyObject *args)
{
    PyObject *o[6];
    if (!PyArg_ParseTuple(args, "OOOOOO:_acc_moments_merge", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5]))
        return NULL;
    static const char *names[6] = {"count", "mean", "m2", "count_b", "mean_b", "m2_b"};
    PyArrayObject *a[6];
    npy_intp u[1] = {ANY};
    for (int i = 0; i < 6; i++) {
        if (!(a[i] = need(o[i], names[i], i % 3 ? NPY_FLOAT64 : NPY_INT64, 1, u, i < 3))) return NULL;
        u[0] = N(a[i], 0);
    }
    mi_acc_moments_merge(D(a[0]), D(a[1]), D(a[2]), D(a[3]), D(a[4]), D(a[5]), u[0]);
    Py_RETURN_NONE;
}

/* edges float64[B + 1] with B >= 1, increasing (NaN-free). */
static PyArrayObject *need_edges(PyObject *obj)
{
    PyArrayObject *e = need(obj, "edges", NPY_FLOAT64, 1, (npy_intp[]){ANY}, 0);
    if (!e) return NULL;
    const double *v = D(e);
    if (N(e, 0) < 2) {
        PyErr_Format(PyExc_ValueError, "edges: need at least 2, got %ld", (long)N(e, 0));
        return NULL;
    }
    for (npy_intp i = 0; i + 1 < N(e, 0); i++)
        if (!(v[i] <= v[i + 1])) {
            PyErr_Format(PyExc_ValueError, "edges: must increase (edge %ld is below the one before it, "
                         "or NaN)", (long)(i + 1));
            return NULL;
        }
    return e;
}

static PyObject *py_hist_update(PyObject *m, PyObject *args)
{
    PyObject *o[4];
    if (!PyArg_ParseTuple(args, "OOOO:_acc_hist_update", &o[0], &o[1], &o[2], &o[3])) return NULL;
    PyArrayObject *e = need_edges(o[2]), *x = e ? need(o[3], "x", NPY_FLOAT32, 2, (npy_intp[]){ANY, ANY}, 0) : NULL;
    if (!x) return NULL;
    npy_intp nb = N(e, 0) - 1;
    PyArrayObject *c = need(o[0], "counts", NPY_INT64, 2, (npy_intp[]){N(x, 1), nb}, 1),
                  *out = c ? need(o[1], "outside", NPY_INT64, 2, (npy_intp[]){N(x, 1), 3}, 1) : NULL;
    if (!out) return NULL;
    Py_BEGIN_ALLOW_THREADS
    mi_acc_hist_update(D(c), D(out), D(e), nb, D(x), N(x, 0), N(x, 1));
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_entropy_update(PyObject *m, PyObject *args)
{
    PyObject *o[4];
    if (!PyArg_ParseTuple(args, "OOOO:_acc_entropy_update", &o[0], &o[1], &o[2], &o[3])) return NULL;
    PyArrayObject *e = need_edges(o[2]),
                  *p = e ? need(o[3], "pattern", NPY_FLOAT32, 4, (npy_intp[]){ANY, ANY, ANY, ANY}, 0) : NULL;
    if (!p) return NULL;
    npy_intp nb = N(e, 0) - 1;
    PyArrayObject *c = need(o[0], "counts", NPY_INT64, 2, (npy_intp[]){N(p, 1), nb}, 1),
                  *out = c ? need(o[1], "outside", NPY_INT64, 2, (npy_intp[]){N(p, 1), 3}, 1) : NULL;
    if (!out) return NULL;
    Py_BEGIN_ALLOW_THREADS
    mi_acc_entropy_update(D(c), D(out), D(e), nb, D(p), N(p, 0), N(p, 1), N(p, 2), N(p, 3));
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* The (values, index, fill) triple of a top-k state; sets *k and checks units. */
static int need_topk(PyObject **o, const char *const *names, npy_intp units, int out, PyArrayObject **a)
{
    if (!(a[0] = need(o[0], names[0], NPY_FLOAT32, 2, (npy_intp[]){units, ANY}, out))) return -1;
    npy_intp dims[2] = {N(a[0], 0), N(a[0], 1)};
    if (!(a[1] = need(o[1], names[1], NPY_INT64, 2, dims, out))) return -1;
    if (!(a[2] = need(o[2], names[2], NPY_INT64, 1, dims, out))) return -1;
    const int64_t *fill = D(a[2]);
    for (npy_intp u = 0; u < dims[0]; u++)
        if (fill[u] < 0 || fill[u] > dims[1]) {
            PyErr_Format(PyExc_ValueError, "%s: entry %ld is %ld, outside [0, %ld]", names[2], (long)u,
                         (long)fill[u], (long)dims[1]);
            return -1;
        }
    return 0;
}

static PyObject *py_topk_update(PyObject *m, PyObject *args)
{
    PyObject *o[5];
    if (!PyArg_ParseTuple(args, "OOOOO:_acc_topk_update", &o[0], &o[1], &o[2], &o[3], &o[4])) return NULL;
    PyArrayObject *x = need(o[3], "x", NPY_FLOAT32, 2, (npy_intp[]){ANY, ANY}, 0), *s[3];
    PyArrayObject *ri = x ? need(o[4], "row_index", NPY_INT64, 1, (npy_intp[]){N(x, 0)}, 0) : NULL;
    static const char *const names[3] = {"values", "index", "fill"};
    if (!ri || need_topk(o, names, N(x, 1), 1, s) < 0) return NULL;
    Py_BEGIN_ALLOW_THREADS
    mi_acc_topk_update(D(s[0]), D(s[1]), D(s[2]), N(s[0], 1), D(x), D(ri), N(x, 0), N(x, 1));
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_topk_merge(PyObject *m, PyObject *args)
{
    PyObject *o[6];
    if (!PyArg_ParseTuple(args, "OOOOOO:_acc_topk_merge", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5]))
        return NULL;
    static const char *const na[3] = {"values", "index", "fill"}, *const nb[3] = {"values_b", "index_b", "fill_b"};
    PyArrayObject *a[3], *b[3];
    if (need_topk(o, na, ANY, 1, a) < 0 || need_topk(o + 3, nb, N(a[0], 0), 0, b) < 0) return NULL;
    if (N(b[0], 1) != N(a[0], 1))
        return PyErr_Format(PyExc_ValueError, "top-k merge: k differs (%ld and %ld)", (long)N(a[0], 1),
                            (long)N(b[0], 1));
    Py_BEGIN_ALLOW_THREADS
    mi_acc_topk_merge(D(a[0]), D(a[1]), D(a[2]), N(a[0], 1), D(b[0]), D(b[1]), D(b[2]), N(a[0], 0));
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_sketch_update(PyObject *m, PyObject *args)
{
    PyObject *o[3];
    mi_sketch_params p;
    long long first;
    if (!PyArg_ParseTuple(args, "OOddLO:_acc_sketch_update", &o[0], &o[1], &p.log_gamma, &p.min_abs,
                          &first, &o[2]))
        return NULL;
    if (!(p.log_gamma > 0) || !(p.min_abs > 0))
        return PyErr_Format(PyExc_ValueError, "sketch: log_gamma and min_abs must be > 0");
    p.first = first;
    PyArrayObject *x = need(o[2], "x", NPY_FLOAT32, 2, (npy_intp[]){ANY, ANY}, 0);
    PyArrayObject *c = x ? need(o[0], "counts", NPY_INT64, 2, (npy_intp[]){N(x, 1), ANY}, 1) : NULL;
    PyArrayObject *nan = c ? need(o[1], "nan", NPY_INT64, 1, (npy_intp[]){N(x, 1)}, 1) : NULL;
    if (!nan) return NULL;
    if (N(c, 1) < 3 || N(c, 1) % 2 == 0)
        return PyErr_Format(PyExc_ValueError, "counts: need 2 * nb + 1 buckets (nb >= 1), got %ld",
                            (long)N(c, 1));
    p.nb = (N(c, 1) - 1) / 2;
    Py_BEGIN_ALLOW_THREADS
    mi_acc_sketch_update(D(c), D(nan), &p, D(x), N(x, 0), N(x, 1));
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* The (samples, index, key, fill[1]) of a reservoir with `units` columns. */
static int need_res(PyObject **o, const char *const *names, npy_intp units, npy_intp k, int out,
                    PyArrayObject **a)
{
    if (!(a[0] = need(o[0], names[0], NPY_FLOAT32, 2, (npy_intp[]){k, units}, out))) return -1;
    k = N(a[0], 0);
    if (!(a[1] = need(o[1], names[1], NPY_INT64, 1, &k, out))) return -1;
    if (!(a[2] = need(o[2], names[2], NPY_UINT64, 1, &k, out))) return -1;
    if (!(a[3] = need(o[3], names[3], NPY_INT64, 1, (npy_intp[]){1}, out))) return -1;
    int64_t f = *(int64_t *)D(a[3]);
    if (f < 0 || f > k) {
        PyErr_Format(PyExc_ValueError, "%s: %ld is outside [0, %ld]", names[3], (long)f, (long)k);
        return -1;
    }
    return 0;
}

static PyObject *py_reservoir_update(PyObject *m, PyObject *args)
{
    PyObject *o[6];
    unsigned long long seed;
    if (!PyArg_ParseTuple(args, "OOOOKOO:_acc_reservoir_update", &o[0], &o[1], &o[2], &o[3], &seed,
                          &o[4], &o[5]))
        return NULL;
    static const char *const names[4] = {"samples", "index", "key", "fill"};
    PyArrayObject *x = need(o[4], "x", NPY_FLOAT32, 2, (npy_intp[]){ANY, ANY}, 0), *s[4];
    PyArrayObject *ri = x ? need(o[5], "row_index", NPY_INT64, 1, (npy_intp[]){N(x, 0)}, 0) : NULL;
    if (!ri || need_res(o, names, N(x, 1), ANY, 1, s) < 0) return NULL;
    Py_BEGIN_ALLOW_THREADS
    mi_acc_reservoir_update(D(s[0]), D(s[1]), D(s[2]), D(s[3]), N(s[0], 0), seed, D(x), D(ri),
                            N(x, 0), N(x, 1));
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_reservoir_merge(PyObject *m, PyObject *args)
{
    PyObject *o[8];
    if (!PyArg_ParseTuple(args, "OOOOOOOO:_acc_reservoir_merge", &o[0], &o[1], &o[2], &o[3], &o[4],
                          &o[5], &o[6], &o[7]))
        return NULL;
    static const char *const na[4] = {"samples", "index", "key", "fill"},
                      *const nb[4] = {"samples_b", "index_b", "key_b", "fill_b"};
    PyArrayObject *a[4], *b[4];
    if (need_res(o, na, ANY, ANY, 1, a) < 0 || need_res(o + 4, nb, N(a[0], 1), N(a[0], 0), 0, b) < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    mi_acc_reservoir_merge(D(a[0]), D(a[1]), D(a[2]), D(a[3]), N(a[0], 0), D(b[0]), D(b[1]), D(b[2]),
                           *(int64_t *)D(b[3]), N(a[0], 1));
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_reservoir_key(PyObject *m, PyObject *args)
{
    unsigned long long seed;
    long long idx;
    if (!PyArg_ParseTuple(args, "KL:_acc_reservoir_key", &seed, &idx)) return NULL;
    return PyLong_FromUnsignedLongLong(mi_acc_reservoir_key(seed, idx));
}

static PyMethodDef acc_methods[] = {
    {"_acc_moments_update", py_moments_update, METH_VARARGS, "count, mean, m2 += rows of x[R, U] (Chan)."},
    {"_acc_moments_merge", py_moments_merge, METH_VARARGS, "(count, mean, m2) <- merge with the _b arrays."},
    {"_acc_hist_update", py_hist_update, METH_VARARGS, "counts[U, B], outside[U, 3] += x[R, U] on edges."},
    {"_acc_entropy_update", py_entropy_update, METH_VARARGS,
     "counts[H, B], outside[H, 3] += entropies of pattern[N, H, Q, S] on edges."},
    {"_acc_topk_update", py_topk_update, METH_VARARGS, "values, index, fill <- top-k with x[R, U], row_index[R]."},
    {"_acc_topk_merge", py_topk_merge, METH_VARARGS, "values, index, fill <- top-k of both states."},
    {"_acc_sketch_update", py_sketch_update, METH_VARARGS,
     "counts[U, 2nb+1], nan[U] += x[R, U] (log_gamma, min_abs, first)."},
    {"_acc_reservoir_update", py_reservoir_update, METH_VARARGS,
     "samples, index, key, fill <- reservoir with x[R, U], row_index[R] (seed)."},
    {"_acc_reservoir_merge", py_reservoir_merge, METH_VARARGS, "samples, index, key, fill <- both reservoirs."},
    {"_acc_reservoir_key", py_reservoir_key, METH_VARARGS, "The priority key of a row index under a seed."},
    {NULL, NULL, 0, NULL},
};

int mi_py_accumulators_exec(PyObject *m)
{
    return PyModule_AddFunctions(m, acc_methods);
}
