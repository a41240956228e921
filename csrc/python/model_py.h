/* model_py.h - what other binding files use from model_py.c. */
#ifndef MI_MODEL_PY_H
#define MI_MODEL_PY_H

#include "python/bridge.h"
#include "model/transformer.h"

/* The C transformer behind a _core.Model, or NULL with a TypeError
 * (`module` is the _core module). */
mi_transformer *mi_py_model_tf(PyObject *module, PyObject *obj);

#endif
