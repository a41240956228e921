/* model_py.c - Python bindings of csrc/model/ (filled in with that layer). */
#include "python/bridge.h"

int mi_py_model_exec(PyObject *m) { return 0; }
