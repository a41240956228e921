/* io_py.c - Python bindings of csrc/io/ (filled in with that layer). */
#include "python/bridge.h"

int mi_py_io_exec(PyObject *m) { return 0; }
