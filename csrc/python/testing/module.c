/* module.c - mechinterp_c._testing: the kernels' raw contracts for the test
 * suite, kept out of the product's extension as CPython keeps _testcapi
 * apart from its modules. It holds no copy of the C core: it calls _core's
 * functions through _core._C_API (core_api.h) and shares only the argument
 * converters (convert.c) with it. */
#define MI_NUMPY_IMPORT_HERE
#include "python/testing/testing.h"

static int testing_exec(PyObject *m)
{
    if (PyArray_ImportNumPyAPI() < 0) return -1;
    mi_testing_state *st = mi_testing_state_of(m);
    if (!(st->core = PyImport_ImportModule("mechinterp_c._core"))) return -1;
    if (!(st->api = PyCapsule_Import(MI_CORE_API_CAPSULE, 0))) return -1;
    if (st->api->version != MI_CORE_API_VERSION) {
        PyErr_Format(PyExc_ImportError, "mechinterp_c._testing: built for _C_API version %d, "
                     "_core has %d (rebuild both)", MI_CORE_API_VERSION, st->api->version);
        return -1;
    }
    if (mi_py_testing_kernels_exec(m) < 0) return -1;
    return mi_py_testing_memory_exec(m);
}

static int testing_traverse(PyObject *m, visitproc visit, void *arg)
{
    Py_VISIT(mi_testing_state_of(m)->core);
    return 0;
}

static int testing_clear(PyObject *m)
{
    Py_CLEAR(mi_testing_state_of(m)->core);
    return 0;
}

static void testing_free(void *m) { testing_clear((PyObject *)m); }

static PyModuleDef_Slot testing_slots[] = {
    {Py_mod_exec, testing_exec},
    {0, NULL},
};

static PyModuleDef testing_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "mechinterp_c._testing",
    .m_doc = "Test entry points of the C kernels (raw contracts, reference paths); "
             "not part of mechinterp_c's API.",
    .m_size = sizeof(mi_testing_state),
    .m_slots = testing_slots,
    .m_traverse = testing_traverse,
    .m_clear = testing_clear,
    .m_free = testing_free,
};

PyMODINIT_FUNC PyInit__testing(void);   /* the one exported symbol (PyMODINIT_FUNC declares none) */
PyMODINIT_FUNC PyInit__testing(void) { return PyModuleDef_Init(&testing_module); }
