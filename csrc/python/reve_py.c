/* reve_py.c - Python bindings of the REVE EEG front end (csrc/model/reve_frontend.h).
 *
 *   _core.reve_frontend(eeg, pos, weights..., patch_size, patch_overlap, freqs,
 *                       intermediates=False)   -> x [B, C*P, D] or a dict of every step
 *   _core.reve_unfold(eeg, patch_size, patch_overlap)     [..., T] -> [..., P, S]
 *   _core.reve_add_time_patch(pos, n_patches)              [B, C, 3] -> [B, C*P, 4]
 *   _core.reve_fourier4d(pos4, dim, freqs, increment_time=0.1, margin=0.4)  [..., 4] -> [..., dim]
 *
 * Arguments are checked here (names and shapes in the messages); the C core
 * checks sizes, values and finiteness and its mi_status becomes the exception.
 * Results are Buffer-owned arrays; kernels run with the GIL released.
 */
#include "python/bridge.h"

#include <string.h>

#include "model/reve_frontend.h"

/* A float32 array argument with an exact shape; -1 in `want` means any size. */
static PyArrayObject *shaped_arg(PyObject *obj, const char *name, int ndim, const npy_intp *want)
{
    PyArrayObject *a = mi_py_float_arg(obj, name, ndim, ndim);
    if (!a) return NULL;
    for (int i = 0; i < ndim; i++) {
        if (want[i] >= 0 && PyArray_DIM(a, i) != want[i]) {
            char got[128], exp[128];
            int n = 0;
            n += snprintf(exp + n, sizeof exp - n, "(");
            for (int j = 0; j < ndim; j++)
                n += snprintf(exp + n, sizeof exp - n, j ? ", %ld" : "%ld", (long)want[j]);
            snprintf(exp + n, sizeof exp - n, ndim == 1 ? ",)" : ")");
            PyErr_Format(PyExc_ValueError, "%s: expected shape %s, got %s", name, exp,
                         mi_py_shape_str(a, got));
            Py_DECREF(a);
            return NULL;
        }
    }
    return a;
}

PyDoc_STRVAR(reve_frontend_doc,
"reve_frontend(eeg, pos, patch_w, patch_b, mlp4d_w, mlp4d_ln_w, mlp4d_ln_b, ln_w, ln_b,\n"
"              patch_size, patch_overlap, freqs, intermediates=False, ln_eps=1e-5)\n--\n\n"
"The REVE front end: eeg [B, C, T] and electrode positions pos [B or 1, C, 3] ->\n"
"the residual stream input x [B, C*P, D] = patch_emb + LayerNorm(fourier4d + mlp4d).\n"
"Weights in PyTorch Linear layout: patch_w [D, patch_size], patch_b [D], mlp4d_w [D, 4],\n"
"the four LayerNorm vectors [D]. With intermediates=True returns a dict with\n"
"'patches' [B,C,P,S], 'patch_emb' [B,N,D], 'pos4' [Bp,N,4], 'fourier' [Bp,N,D],\n"
"'mlp4d' [Bp,N,D], 'pos_embed' [Bp,N,D] and 'x' [B,N,D] (N = C*P).");

static PyObject *py_reve_frontend(PyObject *m, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"eeg", "pos", "patch_w", "patch_b", "mlp4d_w", "mlp4d_ln_w",
                             "mlp4d_ln_b", "ln_w", "ln_b", "patch_size", "patch_overlap",
                             "freqs", "intermediates", "ln_eps", NULL};
    PyObject *o[9];
    long long S, ov, F;
    int inter = 0;
    double eps = 1e-5;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOOOOOLLL|pd:reve_frontend", kwlist,
                                     &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &o[7],
                                     &o[8], &S, &ov, &F, &inter, &eps))
        return NULL;
    PyArrayObject *a[9] = {NULL};
    PyObject *res = NULL, *arrs[7] = {NULL};
    char s1[128];
    if (!(a[0] = mi_py_float_arg(o[0], "eeg", 3, 3))) goto done;
    if (!(a[1] = mi_py_float_arg(o[1], "pos", 3, 3))) goto done;
    if (PyArray_DIM(a[1], 2) != 3) {
        PyErr_Format(PyExc_ValueError, "pos: expected [B, C, 3] electrode coordinates, got shape %s",
                     mi_py_shape_str(a[1], s1));
        goto done;
    }
    if (!(a[2] = mi_py_float_arg(o[2], "patch_w", 2, 2))) goto done;
    npy_intp D = PyArray_DIM(a[2], 0);
    {
        npy_intp w_shape[2] = {D, (npy_intp)S}, d_shape[1] = {D}, m_shape[2] = {D, 4};
        if (!(a[2] = (Py_DECREF(a[2]), shaped_arg(o[2], "patch_w", 2, w_shape)))) goto done;
        if (!(a[3] = shaped_arg(o[3], "patch_b", 1, d_shape))) goto done;
        if (!(a[4] = shaped_arg(o[4], "mlp4d_w", 2, m_shape))) goto done;
        static const char *names[] = {"mlp4d_ln_w", "mlp4d_ln_b", "ln_w", "ln_b"};
        for (int i = 0; i < 4; i++)
            if (!(a[5 + i] = shaped_arg(o[5 + i], names[i], 1, d_shape))) goto done;
    }
    mi_reve_config cfg = mi_reve_config_make(D, S, ov, F);
    cfg.ln_eps = (float)eps;
    mi_status st = mi_reve_check_config(&cfg);
    if (st != MI_OK) { mi_py_raise(st); goto done; }
    npy_intp B = PyArray_DIM(a[0], 0), C = PyArray_DIM(a[0], 1), T = PyArray_DIM(a[0], 2);
    npy_intp Bp = PyArray_DIM(a[1], 0), Cp = PyArray_DIM(a[1], 1);
    int64_t P;
    if ((st = mi_reve_n_patches(T, S, ov, &P)) != MI_OK) { mi_py_raise(st); goto done; }
    npy_intp N = C * P;
    mi_reve_outputs out = {0};
    npy_intp sh_x[3] = {B, N, D}, sh_p[4] = {B, C, P, S}, sh_4[3] = {Bp, N, 4}, sh_pd[3] = {Bp, N, D};
    if (!(arrs[6] = mi_py_empty(m, 3, sh_x, &out.x))) goto done;
    if (inter) {
        if (!(arrs[0] = mi_py_empty(m, 4, sh_p, &out.patches))) goto done;
        if (!(arrs[1] = mi_py_empty(m, 3, sh_x, &out.patch_emb))) goto done;
        if (!(arrs[2] = mi_py_empty(m, 3, sh_4, &out.pos4))) goto done;
        if (!(arrs[3] = mi_py_empty(m, 3, sh_pd, &out.fourier))) goto done;
        if (!(arrs[4] = mi_py_empty(m, 3, sh_pd, &out.mlp4d))) goto done;
        if (!(arrs[5] = mi_py_empty(m, 3, sh_pd, &out.pos_embed))) goto done;
    }
    mi_reve_weights w = {PyArray_DATA(a[2]), PyArray_DATA(a[3]), PyArray_DATA(a[4]),
                         PyArray_DATA(a[5]), PyArray_DATA(a[6]), PyArray_DATA(a[7]),
                         PyArray_DATA(a[8])};
    const float *eeg = PyArray_DATA(a[0]), *pos = PyArray_DATA(a[1]);
    Py_BEGIN_ALLOW_THREADS
    st = mi_reve_frontend(&cfg, &w, eeg, B, C, T, pos, Bp, Cp, &out);
    Py_END_ALLOW_THREADS
    if (st != MI_OK) { mi_py_raise(st); goto done; }
    if (!inter) {
        res = arrs[6];
        arrs[6] = NULL;
        goto done;
    }
    static const char *keys[] = {"patches", "patch_emb", "pos4", "fourier", "mlp4d",
                                 "pos_embed", "x"};
    if (!(res = PyDict_New())) goto done;
    for (int i = 0; i < 7; i++)
        if (PyDict_SetItemString(res, keys[i], arrs[i]) < 0) { Py_CLEAR(res); goto done; }
done:
    for (int i = 0; i < 9; i++) Py_XDECREF(a[i]);
    for (int i = 0; i < 7; i++) Py_XDECREF(arrs[i]);
    return res;
}

PyDoc_STRVAR(reve_unfold_doc,
"reve_unfold(eeg, patch_size, patch_overlap)\n--\n\n"
"Overlapping windows along the last axis, as eeg.unfold(-1, patch_size,\n"
"patch_size - patch_overlap): [..., T] -> [..., P, patch_size] with\n"
"P = (T - patch_size) // step + 1 (a partial last window is dropped).");

static PyObject *py_reve_unfold(PyObject *m, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"eeg", "patch_size", "patch_overlap", NULL};
    PyObject *e_obj;
    long long S, ov;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OLL:reve_unfold", kwlist, &e_obj, &S, &ov))
        return NULL;
    PyArrayObject *e = mi_py_float_arg(e_obj, "eeg", 1, 30);
    if (!e) return NULL;
    int nd = PyArray_NDIM(e);
    npy_intp T = PyArray_DIM(e, nd - 1), rows = 1;
    for (int i = 0; i < nd - 1; i++) rows *= PyArray_DIM(e, i);
    int64_t P;
    mi_status st = mi_reve_n_patches(T, S, ov, &P);
    if (st == MI_OK) st = mi_reve_check_finite("eeg", PyArray_DATA(e), rows * T);
    if (st != MI_OK) { Py_DECREF(e); return mi_py_raise(st); }
    npy_intp shape[32];
    memcpy(shape, PyArray_DIMS(e), sizeof(npy_intp) * (nd - 1));
    shape[nd - 1] = P;
    shape[nd] = S;
    float *out;
    PyObject *res = mi_py_empty(m, nd + 1, shape, &out);
    if (res) {
        const float *x = PyArray_DATA(e);
        Py_BEGIN_ALLOW_THREADS
        mi_reve_unfold(x, rows, T, S, S - ov, P, out);
        Py_END_ALLOW_THREADS
    }
    Py_DECREF(e);
    return res;
}

PyDoc_STRVAR(reve_add_time_patch_doc,
"reve_add_time_patch(pos, n_patches)\n--\n\n"
"[B, C, 3] electrode positions -> [B, C*n_patches, 4]: each channel's (x, y, z)\n"
"repeated n_patches times with a fourth coordinate t = 0..n_patches-1\n"
"(tokens channel-major), as FourierEmb4D.add_time_patch.");

static PyObject *py_reve_add_time_patch(PyObject *m, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"pos", "n_patches", NULL};
    PyObject *p_obj;
    long long P;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OL:reve_add_time_patch", kwlist, &p_obj, &P))
        return NULL;
    if (P <= 0) return PyErr_Format(PyExc_ValueError, "n_patches: must be positive, got %lld", P);
    npy_intp want[3] = {-1, -1, 3};
    PyArrayObject *p = shaped_arg(p_obj, "pos", 3, want);
    if (!p) return NULL;
    npy_intp B = PyArray_DIM(p, 0), C = PyArray_DIM(p, 1);
    npy_intp shape[3] = {B, C * P, 4};
    float *out;
    PyObject *res = mi_py_empty(m, 3, shape, &out);
    if (res) mi_reve_add_time_patch(PyArray_DATA(p), B, C, P, out);
    Py_DECREF(p);
    return res;
}

PyDoc_STRVAR(reve_fourier4d_doc,
"reve_fourier4d(pos4, dim, freqs, increment_time=0.1, margin=0.4)\n--\n\n"
"REVE's FourierEmb4D of (x, y, z, t) coordinates: [..., 4] -> [..., dim].\n"
"t is scaled by increment_time, margin is added to all four coordinates, the\n"
"freqs**4 phases 2*pi*(fx*x + fy*y + fz*z + ft*t)/(1 + 2*margin) (x slowest,\n"
"t fastest) are cut to the first dim/2, output is cat(cos, sin).");

static PyObject *py_reve_fourier4d(PyObject *m, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"pos4", "dim", "freqs", "increment_time", "margin", NULL};
    PyObject *p_obj;
    long long D, F;
    double inc = 0.1, margin = 0.4;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OLL|dd:reve_fourier4d", kwlist, &p_obj, &D, &F,
                                     &inc, &margin))
        return NULL;
    PyArrayObject *p = mi_py_float_arg(p_obj, "pos4", 1, 30);
    if (!p) return NULL;
    int nd = PyArray_NDIM(p);
    char buf[128];
    if (PyArray_DIM(p, nd - 1) != 4) {
        PyErr_Format(PyExc_ValueError, "pos4: expected last dimension 4 (x, y, z, t), got shape %s",
                     mi_py_shape_str(p, buf));
        Py_DECREF(p);
        return NULL;
    }
    npy_intp rows = 1;
    for (int i = 0; i < nd - 1; i++) rows *= PyArray_DIM(p, i);
    mi_status st = mi_reve_check_finite("pos4", PyArray_DATA(p), rows * 4);
    npy_intp shape[32];
    memcpy(shape, PyArray_DIMS(p), sizeof(npy_intp) * nd);
    shape[nd - 1] = D;
    float *out = NULL;
    PyObject *res = NULL;
    if (st == MI_OK && D > 0 && !(res = mi_py_empty(m, nd, shape, &out))) goto done;
    if (st == MI_OK) {
        const float *x = PyArray_DATA(p);
        Py_BEGIN_ALLOW_THREADS
        st = mi_reve_fourier4d(x, rows, D, F, (float)inc, (float)margin, out);
        Py_END_ALLOW_THREADS
    }
    if (st != MI_OK) { Py_CLEAR(res); mi_py_raise(st); }
done:
    Py_DECREF(p);
    return res;
}

static PyMethodDef reve_methods[] = {
    {"reve_frontend", (PyCFunction)(void (*)(void))py_reve_frontend, METH_VARARGS | METH_KEYWORDS,
     reve_frontend_doc},
    {"reve_unfold", (PyCFunction)(void (*)(void))py_reve_unfold, METH_VARARGS | METH_KEYWORDS,
     reve_unfold_doc},
    {"reve_add_time_patch", (PyCFunction)(void (*)(void))py_reve_add_time_patch,
     METH_VARARGS | METH_KEYWORDS, reve_add_time_patch_doc},
    {"reve_fourier4d", (PyCFunction)(void (*)(void))py_reve_fourier4d,
     METH_VARARGS | METH_KEYWORDS, reve_fourier4d_doc},
    {NULL, NULL, 0, NULL},
};

int mi_py_reve_exec(PyObject *m) { return PyModule_AddFunctions(m, reve_methods); }
