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

/* The key/value cache behind `obj` (a _core.KVCache, kv_cache_py.c), marked in
 * use until mi_py_kv_release(obj): NULL with TypeError for another object,
 * RuntimeError when another pass is using it. GIL held. */
struct mi_kv_cache *mi_py_kv_acquire(PyObject *module, PyObject *obj);
void mi_py_kv_release(PyObject *obj);

#endif
