/* bridge.h - shared pieces of the CPython extension mechinterp_c._core.
 *
 * Only files under csrc/python/ include Python or NumPy headers. The C core
 * below reports errors as mi_status + message (common/status.h); mi_py_raise
 * turns that into a Python exception here.
 *
 * Memory handed to Python: C memory is wrapped in a _core.Buffer (a heap type
 * that owns it and frees it on dealloc) and NumPy arrays are views whose base
 * is that Buffer, so an array never copies and never outlives its memory.
 */
#ifndef MI_PY_BRIDGE_H
#define MI_PY_BRIDGE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#ifndef MI_NUMPY_IMPORT_HERE
#define NO_IMPORT_ARRAY
#endif
#define PY_ARRAY_UNIQUE_SYMBOL mi_numpy_api
#include <numpy/arrayobject.h>

#include "common/status.h"
#include "model/transformer.h"

/* Per-module state (multi-phase init: no process-wide globals). */
typedef struct {
    PyTypeObject *buffer_type;      /* owner of C memory behind NumPy views (array.c) */
    PyTypeObject *model_type;       /* the C transformer (model_py.c) */
    PyTypeObject *safetensors_type; /* an mmapped safetensors file (io_py.c) */
    PyTypeObject *tokenizer_type;   /* byte-level BPE (tokenizer_py.c) */
    PyTypeObject *kv_cache_type;    /* the key/value cache of generation (kv_cache_py.c) */
    struct mi_py_spare *similarity_spare; /* the last released similarity matrix (analysis_py.c) */
} mi_module_state;

extern PyModuleDef mi_core_module;

static inline mi_module_state *mi_state(PyObject *module)
{
    return (mi_module_state *)PyModule_GetState(module);
}

/* Set the Python exception for a failed status and return NULL. MI_ERR_CALLBACK
 * means a Python exception is already set and is left as it is. */
PyObject *mi_py_raise(mi_status status);
/* mi_py_raise, except that an I/O failure with errno `err` becomes the OSError
 * subclass errno calls for (FileNotFoundError, IsADirectoryError, ...). */
PyObject *mi_py_raise_os(mi_status status, int err);

/* --- Buffers and arrays (array.c) --------------------------------------- */

typedef void (*mi_release_fn)(void *data, size_t nbytes, void *ctx);

/* A new Buffer owning `data`; `release(data, nbytes, ctx)` runs when the last
 * reference goes (NULL release: nothing to free). On failure the memory is
 * released and NULL returned with an exception set. */
PyObject *mi_py_buffer_new(PyObject *module, void *data, size_t nbytes,
                           mi_release_fn release, void *ctx);

/* The ctx of `obj` when it is a Buffer released by `release`, else NULL. */
void *mi_py_buffer_ctx(PyObject *obj, mi_release_fn release);

/* 0 when every array in arrays[0..n) (NULL entries skipped) that views a
 * mapped safetensors file still has that file as it was mapped; -1 with
 * OSError naming the file otherwise (io_py.c; one fstat per file). Run before
 * reading weights that may live in a mapping. */
int mi_py_check_mapped(PyObject *const *arrays, int n);

/* A str of a C message: UTF-8, with any other bytes (a path that is not
 * UTF-8) shown as \xNN escapes instead of failing with UnicodeDecodeError. */
PyObject *mi_py_message(const char *msg);

/* A float32 NumPy view of `data` whose base is `owner` (a new reference to
 * owner is taken). strides in bytes, NULL for C-contiguous. */
PyObject *mi_py_view(PyObject *owner, float *data, int ndim, const npy_intp *shape,
                     const npy_intp *strides, int writable);
/* The same with NumPy element type `npy_type` (NPY_UINT16: bfloat16 bit patterns). */
PyObject *mi_py_view_as(PyObject *owner, void *data, int npy_type, int ndim, const npy_intp *shape,
                        const npy_intp *strides, int writable);

/* A new C-contiguous float32 array backed by 64-byte aligned memory owned by
 * a Buffer. *data receives its first element. Contents uninitialised. */
PyObject *mi_py_empty(PyObject *module, int ndim, const npy_intp *shape, float **data);

/* A one-slot cache of released memory: a loop that drops each large result
 * (an activation arena, a similarity matrix) before the next call gets warm,
 * already faulted-in pages back instead of fresh ones. Its owner (a model,
 * the module) holds one reference and every Buffer lent memory through it
 * another, so the cache outlives whichever goes last. Only touched with the
 * GIL held (Buffers are released by deallocation). */
typedef struct mi_py_spare mi_py_spare;

/* A new cache (one reference) keeping blocks of at most keep_max bytes, freed
 * with free_fn; NULL with MemoryError. Of a kept block only the first keep_warm
 * bytes stay plainly resident; the pages past them are released lazily
 * (mi_release_lazily): reused without a fault while memory is plentiful, taken
 * back by the kernel when it is short, so a large kept block never pins more
 * than keep_warm bytes. */
mi_py_spare *mi_py_spare_new(size_t keep_max, size_t keep_warm, void (*free_fn)(void *));
/* Drop a reference (NULL: nothing); the last frees the kept block. */
void mi_py_spare_decref(mi_py_spare *s);
/* The kept block if it holds nbytes and at most twice that (*got: its size,
 * the cache keeps nothing afterwards), else NULL. */
void *mi_py_spare_take(mi_py_spare *s, size_t nbytes, size_t *got);
/* A Buffer owning data (nbytes, from free_fn's allocator); when released the
 * block goes back to s instead of being freed. On failure the memory is
 * returned to s and NULL returned with an exception set. */
PyObject *mi_py_spare_buffer(PyObject *module, mi_py_spare *s, void *data, size_t nbytes);
/* Set keep_warm of the cache that Buffer `buffer` returns its memory to (so a
 * test can send a small block down the lazy-release path) and give the
 * Buffer's block (*data, *nbytes); -1 with TypeError when buffer is not such a
 * Buffer. */
int mi_py_spare_set_keep_warm(PyObject *buffer, size_t keep_warm, void **data, size_t *nbytes);

/* --- Subsystem initialisation (one per file, called from module exec) ---- */
int mi_py_array_exec(PyObject *m);
int mi_py_ops_exec(PyObject *m);
int mi_py_bf16_exec(PyObject *m);   /* bf16_py.c */
int mi_py_model_exec(PyObject *m);
int mi_py_io_exec(PyObject *m);
int mi_py_tokenizer_exec(PyObject *m);
int mi_py_reve_exec(PyObject *m);
int mi_py_analysis_exec(PyObject *m);
int mi_py_train_exec(PyObject *m);
int mi_py_grad_exec(PyObject *m);   /* grad_py.c */
int mi_py_accumulators_exec(PyObject *m);   /* accumulators_py.c */
int mi_py_sampling_exec(PyObject *m);   /* sampling_py.c */
int mi_py_patch_exec(PyObject *m);   /* patch_py.c */
int mi_py_kv_cache_exec(PyObject *m);   /* kv_cache_py.c */

#endif
