/* analysis_py.c - Python bindings of csrc/analysis/ (filled in with that layer). */
#include "python/bridge.h"

int mi_py_analysis_exec(PyObject *m) { return 0; }
