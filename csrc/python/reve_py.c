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
#include "python/convert.h"

#include <string.h>

#include "model/reve_frontend.h"

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
    mi_arg a[9] = {MI_ARG_FLOAT("eeg", 3, 3), MI_ARG_FLOAT("pos", 3, 3),
                   MI_ARG_FLOAT("patch_w", 2, 2), MI_ARG_FLOAT("patch_b", 1, 1),
                   MI_ARG_FLOAT("mlp4d_w", 2, 2), MI_ARG_FLOAT("mlp4d_ln_w", 1, 1),
                   MI_ARG_FLOAT("mlp4d_ln_b", 1, 1), MI_ARG_FLOAT("ln_w", 1, 1),
                   MI_ARG_FLOAT("ln_b", 1, 1)};
    long long S, ov, F;
    int inter = 0;
    double eps = 1e-5;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&O&O&O&O&O&O&O&O&LLL|pd:reve_frontend", kwlist,
                                     mi_conv_array, &a[0], mi_conv_array, &a[1], mi_conv_array,
                                     &a[2], mi_conv_array, &a[3], mi_conv_array, &a[4],
                                     mi_conv_array, &a[5], mi_conv_array, &a[6], mi_conv_array,
                                     &a[7], mi_conv_array, &a[8], &S, &ov, &F, &inter, &eps))
        return NULL;
    PyObject *res = NULL, *arrs[7] = {NULL};
    char s1[128];
    if (PyArray_DIM(a[1].arr, 2) != 3) {
        PyErr_Format(PyExc_ValueError, "pos: expected [B, C, 3] electrode coordinates, got shape %s",
                     mi_py_shape_str(a[1].arr, s1));
        goto done;
    }
    npy_intp D = PyArray_DIM(a[2].arr, 0);
    {
        npy_intp w_shape[2] = {D, (npy_intp)S}, d_shape[1] = {D}, m_shape[2] = {D, 4};
        if (mi_arg_shape(&a[2], 2, w_shape, NULL) < 0 || mi_arg_shape(&a[4], 2, m_shape, NULL) < 0)
            goto done;
        for (int i = 3; i < 9; i++)
            if (i != 4 && mi_arg_shape(&a[i], 1, d_shape, NULL) < 0) goto done;
    }
    mi_reve_config cfg = mi_reve_config_make(D, S, ov, F);
    cfg.ln_eps = (float)eps;
    mi_status st = mi_reve_check_config(&cfg);
    if (st != MI_OK) { mi_py_raise(st); goto done; }
    npy_intp B = PyArray_DIM(a[0].arr, 0), C = PyArray_DIM(a[0].arr, 1), T = PyArray_DIM(a[0].arr, 2);
    npy_intp Bp = PyArray_DIM(a[1].arr, 0), Cp = PyArray_DIM(a[1].arr, 1);
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
    mi_reve_weights w = {mi_arg_data(&a[2]), mi_arg_data(&a[3]), mi_arg_data(&a[4]),
                         mi_arg_data(&a[5]), mi_arg_data(&a[6]), mi_arg_data(&a[7]),
                         mi_arg_data(&a[8])};
    const float *eeg = mi_arg_data(&a[0]), *pos = mi_arg_data(&a[1]);
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
    for (int i = 0; i < 9; i++) mi_arg_release(&a[i]);
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
    mi_arg e = MI_ARG_FLOAT("eeg", 1, 30);
    long long S, ov;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&LL:reve_unfold", kwlist, mi_conv_array, &e, &S, &ov))
        return NULL;
    int nd = PyArray_NDIM(e.arr);
    npy_intp T = PyArray_DIM(e.arr, nd - 1), rows = mi_py_rows(e.arr);
    const float *x = mi_arg_data(&e);
    PyObject *res = NULL;
    int64_t P;
    mi_status st = mi_reve_n_patches(T, S, ov, &P);
    if (st == MI_OK) st = mi_reve_check_finite("eeg", x, rows * T);
    if (st != MI_OK) {
        mi_py_raise(st);
    } else {
        npy_intp shape[32];
        memcpy(shape, PyArray_DIMS(e.arr), sizeof(npy_intp) * (nd - 1));
        shape[nd - 1] = P;
        shape[nd] = S;
        float *out;
        if ((res = mi_py_empty(m, nd + 1, shape, &out))) {
            Py_BEGIN_ALLOW_THREADS
            mi_reve_unfold(x, rows, T, S, S - ov, P, out);
            Py_END_ALLOW_THREADS
        }
    }
    mi_arg_release(&e);
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
    mi_arg p = MI_ARG_FLOAT("pos", 3, 3);
    long long P;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&L:reve_add_time_patch", kwlist, mi_conv_array,
                                     &p, &P))
        return NULL;
    PyObject *res = NULL;
    npy_intp want[3] = {-1, -1, 3};
    if (P <= 0) {
        PyErr_Format(PyExc_ValueError, "n_patches: must be positive, got %lld", P);
    } else if (mi_arg_shape(&p, 3, want, NULL) == 0) {
        npy_intp B = PyArray_DIM(p.arr, 0), C = PyArray_DIM(p.arr, 1);
        npy_intp shape[3] = {B, C * P, 4};
        float *out;
        if ((res = mi_py_empty(m, 3, shape, &out))) mi_reve_add_time_patch(mi_arg_data(&p), B, C, P, out);
    }
    mi_arg_release(&p);
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
    mi_arg p = MI_ARG_FLOAT("pos4", 1, 30);
    long long D, F;
    double inc = 0.1, margin = 0.4;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&LL|dd:reve_fourier4d", kwlist, mi_conv_array, &p,
                                     &D, &F, &inc, &margin))
        return NULL;
    int nd = PyArray_NDIM(p.arr);
    char buf[128];
    PyObject *res = NULL;
    if (PyArray_DIM(p.arr, nd - 1) != 4) {
        PyErr_Format(PyExc_ValueError, "pos4: expected last dimension 4 (x, y, z, t), got shape %s",
                     mi_py_shape_str(p.arr, buf));
        goto done;
    }
    npy_intp rows = mi_py_rows(p.arr);
    const float *x = mi_arg_data(&p);
    mi_status st = mi_reve_check_finite("pos4", x, rows * 4);
    npy_intp shape[32];
    memcpy(shape, PyArray_DIMS(p.arr), sizeof(npy_intp) * nd);
    shape[nd - 1] = D;
    float *out = NULL;
    if (st == MI_OK && D > 0 && !(res = mi_py_empty(m, nd, shape, &out))) goto done;
    if (st == MI_OK) {
        Py_BEGIN_ALLOW_THREADS
        st = mi_reve_fourier4d(x, rows, D, F, (float)inc, (float)margin, out);
        Py_END_ALLOW_THREADS
    }
    if (st != MI_OK) { Py_CLEAR(res); mi_py_raise(st); }
done:
    mi_arg_release(&p);
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
