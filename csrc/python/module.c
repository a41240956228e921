/* module.c - mechinterp_c._core: multi-phase init and module state.
 *
 * Each subsystem file (array.c, ops.c, model_py.c, io_py.c, analysis_py.c)
 * adds its own functions and heap types in its *_exec function; this file
 * only wires them together and holds the process-level knobs. */
#define MI_NUMPY_IMPORT_HERE
#include "python/bridge.h"

#include <string.h>

#include "common/cancel.h"
#include "common/threads.h"
#include "kernels/cpu.h"
#include "python/core_api.h"

#define MI_CORE_API_ENTRY(name) .name = name,
static const mi_core_api core_api = {
    .version = MI_CORE_API_VERSION,
    MI_CORE_API_FUNCTIONS(MI_CORE_API_ENTRY)
};
#undef MI_CORE_API_ENTRY

int mi_py_core_api_exec(PyObject *m)
{
    PyObject *cap = PyCapsule_New((void *)&core_api, MI_CORE_API_CAPSULE, NULL);
    if (!cap) return -1;
    int rc = PyModule_AddObjectRef(m, "_C_API", cap);
    Py_DECREF(cap);
    return rc;
}

static PyObject *py_set_num_threads(PyObject *m, PyObject *arg)
{
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 1) return PyErr_Format(PyExc_ValueError, "set_num_threads: n must be >= 1, got %ld", n);
    mi_set_num_threads((int)n);
    Py_RETURN_NONE;
}

static PyObject *py_get_num_threads(PyObject *m, PyObject *unused)
{
    return PyLong_FromLong(mi_get_num_threads());
}

static PyObject *py_team_size(PyObject *m, PyObject *unused)
{
    int n;
    Py_BEGIN_ALLOW_THREADS
    n = mi_threads_team_size();
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(n);
}

/* The core's cancellation check (common/cancel.h): run Python's signal
 * handlers between layers, so Ctrl-C during a long pass without hooks raises
 * KeyboardInterrupt there instead of after the whole pass. The pass runs with
 * the GIL released; the check takes it briefly (rate-limited by the core).
 * Handlers run only on the main thread: elsewhere this finds nothing to do. */
static mi_status check_signals(void)
{
    PyGILState_STATE g = PyGILState_Ensure();
    int raised = PyErr_CheckSignals() < 0;
    PyGILState_Release(g);
    return raised ? MI_ERR_CALLBACK : MI_OK;
}

static PyObject *py_cpu_isa(PyObject *m, PyObject *unused)
{
    return PyUnicode_FromString(mi_isa_name(mi_cpu_isa()));
}

static PyObject *py_force_isa(PyObject *m, PyObject *arg)
{
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name) return NULL;
    mi_isa isa;
    if (!strcmp(name, "best")) isa = mi_cpu_best_isa();
    else if (mi_isa_from_name(name, &isa) != 0)
        return PyErr_Format(PyExc_ValueError,
                            "force_isa: expected 'scalar', 'avx2', 'avx512' or 'best', got %R", arg);
    return PyUnicode_FromString(mi_isa_name(mi_cpu_force_isa(isa)));
}

static PyMethodDef module_methods[] = {
    {"set_num_threads", py_set_num_threads, METH_O,
     "set_num_threads(n)\n--\n\nUse n threads in the C core, for the whole process whichever thread\n"
     "calls it (as torch.set_num_threads). Results do not depend on n. In a process forked\n"
     "after the core first used its threads the core runs single-threaded and n is ignored\n"
     "(OpenMP's thread pool does not survive fork): use the 'spawn' start method for\n"
     "multi-threaded worker processes."},
    {"get_num_threads", py_get_num_threads, METH_NOARGS,
     "get_num_threads()\n--\n\nThe number of threads every parallel step of the C core uses (1 in a\n"
     "forked child, see set_num_threads)."},
    {"_omp_team_size", py_team_size, METH_NOARGS,
     "_omp_team_size()\n--\n\nThe size of the OpenMP team a parallel step started from the calling\n"
     "thread gets now (runs an empty parallel region); for tests."},
    {"cpu_isa", py_cpu_isa, METH_NOARGS,
     "cpu_isa()\n--\n\nThe instruction set the kernels use: 'avx512', 'avx2' or 'scalar'."},
    {"force_isa", py_force_isa, METH_O,
     "force_isa(name)\n--\n\nUse a lower instruction set ('scalar', 'avx2', 'avx512', 'best'); for tests.\n"
     "Clamped to the best the CPU (capped by MI_FORCE_ISA) supports; returns the one set."},
    {NULL, NULL, 0, NULL},
};

static int core_exec(PyObject *m)
{
    if (PyArray_ImportNumPyAPI() < 0) return -1;
    if (mi_py_array_exec(m) < 0) return -1;
    if (mi_py_ops_exec(m) < 0) return -1;
    if (mi_py_model_exec(m) < 0) return -1;
    if (mi_py_io_exec(m) < 0) return -1;
    if (mi_py_tokenizer_exec(m) < 0) return -1;
    if (mi_py_reve_exec(m) < 0) return -1;
    if (mi_py_analysis_exec(m) < 0) return -1;
    if (mi_py_train_exec(m) < 0) return -1;
    if (mi_py_bf16_exec(m) < 0) return -1;
    if (mi_py_accumulators_exec(m) < 0) return -1;
    if (mi_py_sampling_exec(m) < 0) return -1;
    if (mi_py_kv_cache_exec(m) < 0) return -1;
    if (mi_py_core_api_exec(m) < 0) return -1;
    mi_cancel_set_check(check_signals);
    return 0;
}

static int core_traverse(PyObject *m, visitproc visit, void *arg)
{
    mi_module_state *st = mi_state(m);
    Py_VISIT(st->buffer_type);
    Py_VISIT(st->model_type);
    Py_VISIT(st->safetensors_type);
    Py_VISIT(st->tokenizer_type);
    Py_VISIT(st->kv_cache_type);
    return 0;
}

static int core_clear(PyObject *m)
{
    mi_module_state *st = mi_state(m);
    Py_CLEAR(st->buffer_type);
    Py_CLEAR(st->model_type);
    Py_CLEAR(st->safetensors_type);
    Py_CLEAR(st->tokenizer_type);
    Py_CLEAR(st->kv_cache_type);
    mi_py_spare_decref(st->similarity_spare);
    st->similarity_spare = NULL;
    return 0;
}

static void core_free(void *m) { core_clear((PyObject *)m); }

static PyModuleDef_Slot core_slots[] = {
    {Py_mod_exec, core_exec},
    {0, NULL},
};

PyModuleDef mi_core_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "mechinterp_c._core",
    .m_doc = "The C core of mechinterp_c: kernels, models, loaders and analyses.",
    .m_size = sizeof(mi_module_state),
    .m_methods = module_methods,
    .m_slots = core_slots,
    .m_traverse = core_traverse,
    .m_clear = core_clear,
    .m_free = core_free,
};

PyMODINIT_FUNC PyInit__core(void);   /* the one exported symbol (PyMODINIT_FUNC declares none) */
PyMODINIT_FUNC PyInit__core(void) { return PyModuleDef_Init(&mi_core_module); }
