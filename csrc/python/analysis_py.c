/* analysis_py.c - low-level bindings of csrc/analysis/ (underscore names).
 *
 * mechinterp_c/analysis.py does the NumPy-facing argument handling (dtypes,
 * axes, bin rules, defaults) and calls these with C-contiguous arrays of the
 * exact dtypes; each binding still checks what it is given (type, dims,
 * sizes) so a wrong call raises instead of crashing, then runs its kernel
 * with the GIL released. */
#include "python/convert.h"

#include <math.h>
#include <string.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "analysis/entropy.h"
#include "analysis/histogram.h"
#include "analysis/kde.h"
#include "analysis/moments.h"
#include "analysis/qk_scores.h"
#include "analysis/quantile.h"
#include "analysis/similarity.h"
#include "kernels/cross_entropy.h"

/* A borrowed C-contiguous aligned native-order array of dtype `type` with
 * `ndim` dims (-1: any), or NULL with TypeError/ValueError naming `name`. */
static PyArrayObject *arr_arg(PyObject *obj, const char *name, int type, int ndim)
{
    mi_arg a = MI_ARG(name, type, MI_ARG_EXACT, ndim < 0 ? 0 : ndim, ndim < 0 ? NPY_MAXDIMS : ndim);
    return mi_arg_borrow(obj, &a);
}

/* float32 or float64 data array: sets *f64. */
static PyArrayObject *float_data(PyObject *obj, const char *name, int ndim, int *f64)
{
    if (PyArray_Check(obj) && PyArray_TYPE((PyArrayObject *)obj) == NPY_FLOAT64) {
        *f64 = 1;
        return arr_arg(obj, name, NPY_FLOAT64, ndim);
    }
    *f64 = 0;
    return arr_arg(obj, name, NPY_FLOAT32, ndim);
}

/* (edges float64[n+1], uniform, first_edge, last_edge, denom, div_f64) */
static int parse_bins(PyObject *spec, mi_hist_bins *b, const char *name)
{
    PyObject *edges_obj;
    memset(b, 0, sizeof(*b));   /* optional fields (edges_f32, inv_span) start unset */
    if (!PyArg_ParseTuple(spec, "Oidddp", &edges_obj, &b->uniform, &b->first_edge,
                          &b->last_edge, &b->denom, &b->div_f64)) {
        PyErr_Format(PyExc_TypeError, "%s: expected (edges, uniform, first, last, denom, "
                     "div_f64)", name);
        return -1;
    }
    PyArrayObject *e = arr_arg(edges_obj, name, NPY_FLOAT64, 1);
    if (!e) return -1;
    if (PyArray_DIM(e, 0) < 2) {
        PyErr_Format(PyExc_ValueError, "%s: need at least 2 bin edges, got %ld", name,
                     (long)PyArray_DIM(e, 0));
        return -1;
    }
    b->n_bins = PyArray_DIM(e, 0) - 1;
    b->edges = PyArray_DATA(e);   /* kept alive by the caller's tuple */
    for (int64_t i = 0; i < b->n_bins; i++)
        if (!(b->edges[i] <= b->edges[i + 1])) {
            PyErr_Format(PyExc_ValueError, "%s: `bins` must increase monotonically, when an "
                         "array (edge %ld is below the one before it)", name, (long)(i + 1));
            return -1;
        }
    return 0;
}

static PyObject *py_histogram(PyObject *m, PyObject *args)
{
    PyObject *x_obj, *spec, *w_obj;
    int ntype_f32;
    if (!PyArg_ParseTuple(args, "OOOp:_histogram", &x_obj, &spec, &w_obj, &ntype_f32))
        return NULL;
    int f64;
    PyArrayObject *x = float_data(x_obj, "x", 2, &f64);
    if (!x) return NULL;
    mi_hist_bins b;
    if (parse_bins(spec, &b, "bins") < 0) return NULL;
    npy_intp rows = PyArray_DIM(x, 0), n = PyArray_DIM(x, 1);
    const double *w = NULL;
    if (w_obj != Py_None) {
        PyArrayObject *wa = arr_arg(w_obj, "weights", NPY_FLOAT64, 2);
        if (!wa) return NULL;
        if (PyArray_DIM(wa, 0) != rows || PyArray_DIM(wa, 1) != n) {
            char s1[128], s2[128];
            return PyErr_Format(PyExc_ValueError, "weights: shape %s differs from x's %s",
                                mi_py_shape_str(wa, s1), mi_py_shape_str(x, s2));
        }
        w = PyArray_DATA(wa);
    }
    npy_intp shape[2] = {rows, (npy_intp)b.n_bins};
    PyObject *out = PyArray_SimpleNew(2, shape, w ? NPY_FLOAT64 : NPY_INT64);
    if (!out) return NULL;
    const void *xd = PyArray_DATA(x);
    void *od = PyArray_DATA((PyArrayObject *)out);
    mi_status st;
    Py_BEGIN_ALLOW_THREADS
    st = mi_histogram(xd, f64, rows, n, &b, w, ntype_f32, w ? NULL : od, w ? od : NULL);
    Py_END_ALLOW_THREADS
    if (st != MI_OK) { Py_DECREF(out); return mi_py_raise(st); }
    return out;
}

static PyObject *py_moments(PyObject *m, PyObject *args)
{
    PyObject *x_obj;
    Py_ssize_t outer, n, inner;
    double ddof;
    if (!PyArg_ParseTuple(args, "Onnnd:_moments", &x_obj, &outer, &n, &inner, &ddof)) return NULL;
    int f64;
    PyArrayObject *x = float_data(x_obj, "x", -1, &f64);
    if (!x) return NULL;
    if (outer < 0 || n < 0 || inner < 0 || (npy_intp)(outer * n * inner) != PyArray_SIZE(x))
        return PyErr_Format(PyExc_ValueError, "_moments: [%zd, %zd, %zd] does not match x's "
                            "%ld elements", outer, n, inner, (long)PyArray_SIZE(x));
    npy_intp shape[1] = {outer * inner};
    PyObject *arrs[6] = {0};
    for (int i = 0; i < 6; i++)
        if (!(arrs[i] = PyArray_SimpleNew(1, shape, NPY_FLOAT64))) {
            for (int j = 0; j < i; j++) Py_DECREF(arrs[j]);
            return NULL;
        }
    mi_moments_out o = {
        PyArray_DATA((PyArrayObject *)arrs[0]), PyArray_DATA((PyArrayObject *)arrs[1]),
        PyArray_DATA((PyArrayObject *)arrs[2]), PyArray_DATA((PyArrayObject *)arrs[3]),
        PyArray_DATA((PyArrayObject *)arrs[4]), PyArray_DATA((PyArrayObject *)arrs[5])};
    const void *xd = PyArray_DATA(x);
    Py_BEGIN_ALLOW_THREADS
    mi_moments(xd, f64, outer, n, inner, ddof, &o);
    Py_END_ALLOW_THREADS
    PyObject *res = PyTuple_New(6);
    if (!res) { for (int j = 0; j < 6; j++) Py_DECREF(arrs[j]); return NULL; }
    for (int j = 0; j < 6; j++) PyTuple_SET_ITEM(res, j, arrs[j]);
    return res;
}

static PyObject *py_minmax(PyObject *m, PyObject *x_obj)
{
    int f64;
    PyArrayObject *x = float_data(x_obj, "x", -1, &f64);
    if (!x) return NULL;
    if (PyArray_SIZE(x) == 0)
        return PyErr_Format(PyExc_ValueError, "_minmax: x is empty");
    double mn, mx;
    const void *xd = PyArray_DATA(x);
    npy_intp n = PyArray_SIZE(x);
    Py_BEGIN_ALLOW_THREADS
    mi_minmax(xd, f64, n, &mn, &mx);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("dd", mn, mx);
}


/* _percentile(x, q_tuple) -> tuple of float64: np.percentile(x, 100 * q), method "linear". */
static PyObject *py_percentile(PyObject *m, PyObject *args)
{
    PyObject *x_obj, *q_obj;
    if (!PyArg_ParseTuple(args, "OO!:_percentile", &x_obj, &PyTuple_Type, &q_obj)) return NULL;
    int f64;
    PyArrayObject *x = float_data(x_obj, "x", -1, &f64);
    if (!x) return NULL;
    Py_ssize_t nq = PyTuple_GET_SIZE(q_obj);
    if (nq > 64) return PyErr_Format(PyExc_ValueError, "_percentile: at most 64 quantiles");
    double q[64], out[64];
    for (Py_ssize_t j = 0; j < nq; j++) {
        q[j] = PyFloat_AsDouble(PyTuple_GET_ITEM(q_obj, j));
        if (q[j] == -1.0 && PyErr_Occurred()) return NULL;
    }
    const void *xd = PyArray_DATA(x);
    npy_intp n = PyArray_SIZE(x);
    mi_status st;
    Py_BEGIN_ALLOW_THREADS
    st = mi_percentile_linear(xd, f64, n, q, (int)nq, out);
    Py_END_ALLOW_THREADS
    if (st != MI_OK) return mi_py_raise(st);
    PyObject *res = PyTuple_New(nq);
    if (!res) return NULL;
    for (Py_ssize_t j = 0; j < nq; j++) {
        PyObject *v = PyFloat_FromDouble(out[j]);
        if (!v) { Py_DECREF(res); return NULL; }
        PyTuple_SET_ITEM(res, j, v);
    }
    return res;
}


/* A float32 output array [shape] for a large result (a similarity matrix): at
 * or above HUGE_MIN bytes it is 2 MiB aligned and advised for transparent huge
 * pages, so fresh memory costs one fault per 2 MiB instead of one per 4 KiB
 * page (5k faults for the notebook's 2304^2 matrix); memory the allocator reuses
 * is already mapped and the advice costs nothing. Below HUGE_MIN: mi_py_empty. */
#define HUGE_MIN ((size_t)4 << 20)
#define HUGE_ALIGN ((size_t)2 << 20)

static PyObject *large_empty(PyObject *m, int ndim, const npy_intp *shape, float **data)
{
    size_t n = 1;
    for (int i = 0; i < ndim; i++) n *= (size_t)shape[i];
    size_t bytes = n * sizeof(float);
    if (bytes < HUGE_MIN) return mi_py_empty(m, ndim, shape, data);
    /* the module keeps the last released matrix: a loop that drops each one
     * reuses warm memory instead of having fresh pages zeroed */
    mi_py_spare *spare = mi_state(m)->similarity_spare;
    size_t got = bytes;
    void *mem = mi_py_spare_take(spare, bytes, &got);
    if (!mem) {
        if (posix_memalign(&mem, HUGE_ALIGN, bytes) != 0) return mi_py_empty(m, ndim, shape, data);
#if defined(MADV_HUGEPAGE)
        madvise(mem, bytes, MADV_HUGEPAGE);   /* advice only: failure changes nothing */
#endif
    }
    PyObject *owner = mi_py_spare_buffer(m, spare, mem, got);
    if (!owner) return NULL;
    PyObject *arr = mi_py_view(owner, (float *)mem, ndim, shape, NULL, 1);
    Py_DECREF(owner);
    if (arr) *data = (float *)mem;
    return arr;
}

/* _similarity(x, y, axis, center, zero_fill, clip, reject_nonfinite=False,
 * reference=False): normalise the
 * variables (rows for axis 1, columns for axis 0) of x and y (None: y = x, the
 * symmetric path) and return their products [n_x_vars, n_y_vars] float32. */
static PyObject *py_similarity(PyObject *m, PyObject *args)
{
    PyObject *x_obj, *y_obj;
    int axis, center, clip, reject = 0, reference = 0;
    float zero_fill;
    if (!PyArg_ParseTuple(args, "OOipfp|pp:_similarity", &x_obj, &y_obj, &axis, &center,
                          &zero_fill, &clip, &reject, &reference))
        return NULL;
    if (axis != 0 && axis != 1) return PyErr_Format(PyExc_ValueError, "_similarity: axis must be 0 or 1");
    int fx = 0, fy = 0;
    PyArrayObject *x = float_data(x_obj, "X", 2, &fx), *y = NULL;
    if (!x) return NULL;
    if (y_obj != Py_None && !(y = float_data(y_obj, "Y", 2, &fy))) return NULL;
    npy_intp rx = PyArray_DIM(x, 0), cx = PyArray_DIM(x, 1);
    npy_intp ry = y ? PyArray_DIM(y, 0) : 0, cy = y ? PyArray_DIM(y, 1) : 0;
    npy_intp kx = axis == 1 ? cx : rx, ky = axis == 1 ? cy : ry;
    if (y && kx != ky) {
        char s1[128], s2[128];
        return PyErr_Format(PyExc_ValueError, "similarity: X has shape %s and Y has shape %s: "
                            "their feature dimensions %ld and %ld differ",
                            mi_py_shape_str(x, s1), mi_py_shape_str(y, s2), (long)kx, (long)ky);
    }
    npy_intp shape[2] = {axis == 1 ? rx : cx, y ? (axis == 1 ? ry : cy) : (axis == 1 ? rx : cx)};
    float *c;
    PyObject *out = large_empty(m, 2, shape, &c);
    if (!out) return NULL;
    const void *xd = PyArray_DATA(x), *yd = y ? PyArray_DATA(y) : NULL;
    mi_status st;
    Py_BEGIN_ALLOW_THREADS
    if (reference)
        st = mi_similarity_ref(xd, fx, rx, cx, yd, fy, ry, cy, axis, center, zero_fill, clip, c);
    else
        st = mi_similarity(xd, fx, rx, cx, yd, fy, ry, cy, axis, center, zero_fill, clip, reject, c);
    Py_END_ALLOW_THREADS
    if (st != MI_OK) { Py_DECREF(out); return mi_py_raise(st); }
    return out;
}

static PyObject *py_entropy(PyObject *m, PyObject *args)
{
    PyObject *p_obj;
    Py_ssize_t outer, n, inner;
    double log_base;
    if (!PyArg_ParseTuple(args, "Onnnd:_entropy", &p_obj, &outer, &n, &inner, &log_base))
        return NULL;
    PyArrayObject *p = arr_arg(p_obj, "pk", NPY_FLOAT64, -1);
    if (!p) return NULL;
    if (outer < 0 || n < 0 || inner < 0 || (npy_intp)(outer * n * inner) != PyArray_SIZE(p))
        return PyErr_Format(PyExc_ValueError, "_entropy: [%zd, %zd, %zd] does not match pk's "
                            "%ld elements", outer, n, inner, (long)PyArray_SIZE(p));
    npy_intp shape[1] = {outer * inner};
    PyObject *out = PyArray_SimpleNew(1, shape, NPY_FLOAT64);
    if (!out) return NULL;
    const double *pd = PyArray_DATA(p);
    double *od = PyArray_DATA((PyArrayObject *)out);
    Py_BEGIN_ALLOW_THREADS
    mi_entropy(pd, outer, n, inner, log_base, od);
    Py_END_ALLOW_THREADS
    return out;
}

static PyObject *py_kde_1d(PyObject *m, PyObject *args)
{
    PyObject *s_obj, *w_obj, *t_obj, *n_obj;
    int reference = 0;
    if (!PyArg_ParseTuple(args, "OOOO|p:_kde_1d", &s_obj, &w_obj, &t_obj, &n_obj, &reference))
        return NULL;
    PyArrayObject *s = arr_arg(s_obj, "samples", NPY_FLOAT64, 2), *t, *nrm, *w = NULL;
    if (!s || !(t = arr_arg(t_obj, "points", NPY_FLOAT64, 2))
        || !(nrm = arr_arg(n_obj, "norm", NPY_FLOAT64, 1)))
        return NULL;
    npy_intp batch = PyArray_DIM(s, 0), n = PyArray_DIM(s, 1), mp = PyArray_DIM(t, 1);
    if (PyArray_DIM(t, 0) != batch || PyArray_DIM(nrm, 0) != batch)
        return PyErr_Format(PyExc_ValueError, "_kde_1d: samples, points and norm disagree on "
                            "the batch size");
    if (n == 0) return PyErr_Format(PyExc_ValueError, "gaussian_kde: no samples");
    if (w_obj != Py_None) {
        if (!(w = arr_arg(w_obj, "weights", NPY_FLOAT64, 2))) return NULL;
        if (PyArray_DIM(w, 0) != batch || PyArray_DIM(w, 1) != n)
            return PyErr_Format(PyExc_ValueError, "weights: expected one weight per sample");
    }
    npy_intp shape[2] = {batch, mp};
    PyObject *out = PyArray_SimpleNew(2, shape, NPY_FLOAT64);
    if (!out) return NULL;
    const double *sd = PyArray_DATA(s), *td = PyArray_DATA(t), *nd = PyArray_DATA(nrm);
    const double *wd = w ? PyArray_DATA(w) : NULL;
    double *od = PyArray_DATA((PyArrayObject *)out);
    Py_BEGIN_ALLOW_THREADS
    if (reference) mi_kde_eval_1d_ref(batch, sd, wd, n, td, mp, nd, od);
    else mi_kde_eval_1d(batch, sd, wd, n, td, mp, nd, od);
    Py_END_ALLOW_THREADS
    return out;
}

static PyObject *py_kde_nd(PyObject *m, PyObject *args)
{
    PyObject *s_obj, *w_obj, *t_obj;
    double norm;
    if (!PyArg_ParseTuple(args, "OOOd:_kde_nd", &s_obj, &w_obj, &t_obj, &norm)) return NULL;
    PyArrayObject *s = arr_arg(s_obj, "samples", NPY_FLOAT64, 2), *t, *w;
    if (!s || !(t = arr_arg(t_obj, "points", NPY_FLOAT64, 2))
        || !(w = arr_arg(w_obj, "weights", NPY_FLOAT64, 1)))
        return NULL;
    npy_intp n = PyArray_DIM(s, 0), d = PyArray_DIM(s, 1), mp = PyArray_DIM(t, 0);
    if (PyArray_DIM(t, 1) != d)
        return PyErr_Format(PyExc_ValueError, "points have dimension %ld, dataset has "
                            "dimension %ld", (long)PyArray_DIM(t, 1), (long)d);
    if (PyArray_DIM(w, 0) != n)
        return PyErr_Format(PyExc_ValueError, "weights: expected %ld weights, got %ld",
                            (long)n, (long)PyArray_DIM(w, 0));
    npy_intp shape[1] = {mp};
    PyObject *out = PyArray_SimpleNew(1, shape, NPY_FLOAT64);
    if (!out) return NULL;
    const double *sd = PyArray_DATA(s), *td = PyArray_DATA(t), *wd = PyArray_DATA(w);
    double *od = PyArray_DATA((PyArrayObject *)out);
    Py_BEGIN_ALLOW_THREADS
    mi_kde_eval_nd(sd, wd, n, d, td, mp, norm, od);
    Py_END_ALLOW_THREADS
    return out;
}

/* Element strides of a float32 [B, P, H, D] view whose last dim is contiguous. */
static int qk_view(PyObject *obj, const char *name, PyArrayObject **out, int64_t st[3])
{
    mi_arg a = MI_ARG(name, NPY_FLOAT32, MI_ARG_EXACT | MI_ARG_STRIDED, 4, 4);
    if (!(*out = mi_arg_borrow(obj, &a))) return -1;
    npy_intp *s = PyArray_STRIDES(*out);
    for (int i = 0; i < 3; i++) st[i] = PyArray_SIZE(*out) ? s[i] / 4 : 0;   /* empty: nothing is read */
    return 0;
}

static PyObject *py_qk_scores(PyObject *m, PyObject *args)
{
    PyObject *q_obj, *k_obj, *pairs_obj, *mask_obj, *hs_obj, *hp_obj;
    int divide_sqrt, causal, want_scores, want_pattern;
    float scale;
    if (!PyArg_ParseTuple(args, "OOOpfOpppOO:_qk_scores", &q_obj, &k_obj, &pairs_obj,
                          &divide_sqrt, &scale, &mask_obj, &causal, &want_scores,
                          &want_pattern, &hs_obj, &hp_obj))
        return NULL;
    mi_qk_args a = {0};
    PyArrayObject *q, *k, *pairs;
    int64_t qs[3], ks[3];
    if (qk_view(q_obj, "q", &q, qs) < 0 || qk_view(k_obj, "k", &k, ks) < 0) return NULL;
    if (!(pairs = arr_arg(pairs_obj, "pairs", NPY_INT32, 2))) return NULL;
    if (PyArray_DIM(pairs, 1) != 2)
        return PyErr_Format(PyExc_ValueError, "pairs: expected shape (n_pairs, 2)");
    char s1[128], s2[128];
    if (PyArray_DIM(q, 0) != PyArray_DIM(k, 0) || PyArray_DIM(q, 2) != PyArray_DIM(k, 2)
        || PyArray_DIM(q, 3) != PyArray_DIM(k, 3))
        return PyErr_Format(PyExc_ValueError, "qk_scores: q of shape %s and k of shape %s differ "
                            "in batch, heads or d_head", mi_py_shape_str(q, s1),
                            mi_py_shape_str(k, s2));
    a.q = PyArray_DATA(q); a.k = PyArray_DATA(k);
    a.batch = PyArray_DIM(q, 0); a.q_pos = PyArray_DIM(q, 1); a.k_pos = PyArray_DIM(k, 1);
    a.n_heads = PyArray_DIM(q, 2); a.d_head = PyArray_DIM(q, 3);
    a.q_sb = qs[0]; a.q_sp = qs[1]; a.q_sh = qs[2];
    a.k_sb = ks[0]; a.k_sp = ks[1]; a.k_sh = ks[2];
    /* gemm wants leading dims >= d_head; a position stride below that only
     * happens for size-1 position axes, where it is never used */
    if (a.q_sp < a.d_head) a.q_sp = a.d_head;
    if (a.k_sp < a.d_head) a.k_sp = a.d_head;
    a.divide_sqrt = divide_sqrt; a.scale = scale; a.causal = causal;
    if (mask_obj != Py_None) {
        PyArrayObject *mk = arr_arg(mask_obj, "mask", NPY_BOOL, 3);
        if (!mk) return NULL;
        if ((PyArray_DIM(mk, 0) != 1 && PyArray_DIM(mk, 0) != a.batch)
            || PyArray_DIM(mk, 1) != a.q_pos || PyArray_DIM(mk, 2) != a.k_pos)
            return PyErr_Format(PyExc_ValueError, "mask: shape %s does not broadcast to "
                                "[batch=%ld, q_pos=%ld, k_pos=%ld]", mi_py_shape_str(mk, s1),
                                (long)a.batch, (long)a.q_pos, (long)a.k_pos);
        a.mask = PyArray_DATA(mk);
        a.m_sb = PyArray_DIM(mk, 0) == 1 ? 0 : a.q_pos * a.k_pos;
        a.m_sq = a.k_pos; a.m_sk = 1;
    }
    mi_hist_bins hs, hp;
    if (hs_obj != Py_None && parse_bins(hs_obj, &hs, "histogram") < 0) return NULL;
    if (hp_obj != Py_None && parse_bins(hp_obj, &hp, "softmax_histogram") < 0) return NULL;
    npy_intp n_pairs = PyArray_DIM(pairs, 0);
    PyObject *scores = Py_None, *pattern = Py_None, *h1 = Py_None, *h2 = Py_None;
    Py_INCREF(Py_None); Py_INCREF(Py_None); Py_INCREF(Py_None); Py_INCREF(Py_None);
    float *sd = NULL, *pd = NULL;
    int64_t *h1d = NULL, *h2d = NULL;
    npy_intp shape[4] = {n_pairs, a.batch, a.q_pos, a.k_pos};
    PyObject *res = NULL;
    if (want_scores) { Py_DECREF(scores); if (!(scores = mi_py_empty(m, 4, shape, &sd))) goto fail; }
    if (want_pattern) { Py_DECREF(pattern); if (!(pattern = mi_py_empty(m, 4, shape, &pd))) goto fail; }
    if (hs_obj != Py_None) {
        npy_intp hshape[2] = {n_pairs, (npy_intp)hs.n_bins};
        Py_DECREF(h1);
        if (!(h1 = PyArray_SimpleNew(2, hshape, NPY_INT64))) goto fail;
        h1d = PyArray_DATA((PyArrayObject *)h1);
    }
    if (hp_obj != Py_None) {
        npy_intp hshape[2] = {n_pairs, (npy_intp)hp.n_bins};
        Py_DECREF(h2);
        if (!(h2 = PyArray_SimpleNew(2, hshape, NPY_INT64))) goto fail;
        h2d = PyArray_DATA((PyArrayObject *)h2);
    }
    const int32_t *pr = PyArray_DATA(pairs);
    mi_status st;
    Py_BEGIN_ALLOW_THREADS
    st = mi_qk_scores(&a, n_pairs, pr, sd, pd, h1d ? &hs : NULL, h1d, h2d ? &hp : NULL, h2d);
    Py_END_ALLOW_THREADS
    if (st != MI_OK) { mi_py_raise(st); goto fail; }
    res = PyTuple_Pack(4, scores, pattern, h1, h2);
fail:
    Py_XDECREF(scores); Py_XDECREF(pattern); Py_XDECREF(h1); Py_XDECREF(h2);
    return res;
}

/* _token_losses(logits[rows, vocab] f32, targets[rows] i64) -> (mean, losses[rows] f32):
 * -log softmax(logits[r])[targets[r]] per row (0 for rows with target -100),
 * their mean over the kept rows; the ablation sweeps' loss and log-probs
 * without the gradient buffer the training binding allocates. */
static PyObject *py_token_losses(PyObject *m, PyObject *args)
{
    PyObject *l_obj, *t_obj;
    if (!PyArg_ParseTuple(args, "OO:_token_losses", &l_obj, &t_obj)) return NULL;
    PyArrayObject *l = arr_arg(l_obj, "logits", NPY_FLOAT32, 2);
    if (!l) return NULL;
    PyArrayObject *t = arr_arg(t_obj, "targets", NPY_INT64, 1);
    if (!t) return NULL;
    npy_intp rows = PyArray_DIM(l, 0), vocab = PyArray_DIM(l, 1);
    if (PyArray_DIM(t, 0) != rows) {
        char s1[128], s2[128];
        PyErr_Format(PyExc_ValueError, "targets: expected %ld entries to match logits %s, got %s",
                     (long)rows, mi_py_shape_str(l, s1), mi_py_shape_str(t, s2));
        return NULL;
    }
    float *ld, mean = 0.0f;
    PyObject *losses = mi_py_empty(m, 1, &rows, &ld);
    if (!losses) return NULL;
    mi_status st;
    const float *lp = PyArray_DATA(l);
    const int64_t *tp = PyArray_DATA(t);
    Py_BEGIN_ALLOW_THREADS
    st = mi_cross_entropy(lp, tp, rows, vocab, MI_IGNORE_INDEX, &mean, ld, NULL);
    Py_END_ALLOW_THREADS
    if (st != MI_OK) { Py_DECREF(losses); return mi_py_raise(st); }
    PyObject *res = Py_BuildValue("(dN)", (double)mean, losses);
    return res;
}

static PyMethodDef analysis_methods[] = {
    {"_histogram", py_histogram, METH_VARARGS,
     "_histogram(x2d, bins_spec, weights2d_or_None, ntype_f32)\n--\n\nUse analysis.histogram."},
    {"_moments", py_moments, METH_VARARGS,
     "_moments(x, outer, n, inner, ddof)\n--\n\nUse analysis.describe."},
    {"_percentile", py_percentile, METH_VARARGS,
     "_percentile(x, q)\n--\n\nnp.percentile(x, [100*qi for qi in q]) (method 'linear') as floats."},
    {"_minmax", py_minmax, METH_O,
     "_minmax(x)\n--\n\n(min, max) of a float32/float64 array (NaN if any NaN)."},
    {"_similarity", py_similarity, METH_VARARGS,
     "_similarity(X, Y_or_None, axis, center, zero_fill, clip, reject_nonfinite=False, reference=False)\n--\n\n"
     "Use analysis.cosine_similarity / corrcoef / column_cosine_similarity."},
    {"_entropy", py_entropy, METH_VARARGS,
     "_entropy(pk, outer, n, inner, log_base)\n--\n\nUse analysis.entropy."},
    {"_kde_1d", py_kde_1d, METH_VARARGS,
     "_kde_1d(sorted_whitened, weights, points, norm, reference=False)\n--\n\n"
     "Use analysis.gaussian_kde."},
    {"_kde_nd", py_kde_nd, METH_VARARGS,
     "_kde_nd(whitened, weights, points, norm)\n--\n\nUse analysis.gaussian_kde."},
    {"_qk_scores", py_qk_scores, METH_VARARGS,
     "_qk_scores(q, k, pairs, divide_sqrt, scale, mask, causal, scores, pattern, hist, "
     "softmax_hist)\n--\n\nUse analysis.qk_scores."},
    {"_token_losses", py_token_losses, METH_VARARGS,
     "_token_losses(logits, targets)\n--\n\nPer-row cross-entropy (mean, losses); "
     "target -100 skips a row. Use analysis.mean_ablation_sweep."},
    {NULL, NULL, 0, NULL},
};

int mi_py_analysis_exec(PyObject *m)
{
    if (!(mi_state(m)->similarity_spare = mi_py_spare_new(SIZE_MAX, SIZE_MAX, free))) return -1;
    return PyModule_AddFunctions(m, analysis_methods);
}
