/* testing.h - shared pieces of mechinterp_c._testing. */
#ifndef MI_PY_TESTING_H
#define MI_PY_TESTING_H

#include "python/convert.h"
#include "python/core_api.h"

/* Module state: _core and its table of the core's functions. */
typedef struct {
    PyObject *core;            /* the mechinterp_c._core module (results are its Buffers) */
    const mi_core_api *api;    /* its _C_API */
} mi_testing_state;

static inline mi_testing_state *mi_testing_state_of(PyObject *m)
{
    return (mi_testing_state *)PyModule_GetState(m);
}

static inline const mi_core_api *api_of(PyObject *m) { return mi_testing_state_of(m)->api; }

/* kernels.c: add the kernel test entries to m. */
int mi_py_testing_kernels_exec(PyObject *m);
/* memory.c: add the memory test entries to m. */
int mi_py_testing_memory_exec(PyObject *m);

#endif
