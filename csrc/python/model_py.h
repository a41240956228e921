/* model_py.h - what other binding files use from model_py.c. */
#ifndef MI_MODEL_PY_H
#define MI_MODEL_PY_H

#include "python/bridge.h"
#include "model/transformer.h"

/* The C transformer behind `obj` (a _core.Model of this module) for a training
 * call: NULL with TypeError for another object, ValueError when the model does
 * not own all of its weights (set_param arrays or a tied unembedding). */
mi_transformer *mi_py_model_tf(PyObject *module, PyObject *obj);
/* The same, and the model is marked in use, as during a forward pass (its
 * weights cannot be replaced, untied or materialised meanwhile) until
 * mi_py_model_release(obj). Call both with the GIL held. */
mi_transformer *mi_py_model_acquire(PyObject *module, PyObject *obj);
void mi_py_model_release(PyObject *obj);
/* A forward-only use of the model (weights may be tied or read in place from a
 * checkpoint, which is checked to be unchanged): marked in use as
 * mi_py_model_acquire, until mi_py_model_release(obj). */
mi_transformer *mi_py_model_use(PyObject *module, PyObject *obj);
/* A Buffer owning at least n_floats floats (64-byte aligned, *data its first,
 * contents undefined) for a pass of the model `obj` (in use): the model's last
 * released arena when it fits, so a loop of passes reuses warm pages; given
 * back to the model when the Buffer goes. NULL with MemoryError. */
PyObject *mi_py_model_arena(PyObject *module, PyObject *obj, size_t n_floats, float **data);

/* The key/value cache behind `obj` (a _core.KVCache, kv_cache_py.c), marked in
 * use until mi_py_kv_release(obj): NULL with TypeError for another object,
 * RuntimeError when another pass is using it. GIL held. */
struct mi_kv_cache *mi_py_kv_acquire(PyObject *module, PyObject *obj);
void mi_py_kv_release(PyObject *obj);

#endif
