/* memory.c - mechinterp_c._testing: what the tests of memory reuse need (the
 * activation arena a model keeps and lazily releases, csrc/python/array.c):
 * send a kept block down the lazy-release path, and overwrite or reclaim a
 * kept block, so a test can show that no pass reads memory it did not write. */
#include "python/testing/testing.h"

#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

PyDoc_STRVAR(_spare_keep_warm_doc,
"_spare_keep_warm(buffer, nbytes)\n--\n\n"
"Set how many bytes of a kept block stay plainly resident for the cache that\n"
"`buffer` (an activation arena's _core.Buffer, an array's .base) returns to;\n"
"returns (address, nbytes) of buffer's block.");

static PyObject *py__spare_keep_warm(PyObject *m, PyObject *args)
{
    PyObject *buffer;
    unsigned long long n;
    if (!PyArg_ParseTuple(args, "OK:_spare_keep_warm", &buffer, &n)) return NULL;
    void *data;
    size_t nbytes;
    if (api_of(m)->mi_py_spare_set_keep_warm(buffer, (size_t)n, &data, &nbytes) < 0) return NULL;
    return Py_BuildValue("KK", (unsigned long long)(uintptr_t)data, (unsigned long long)nbytes);
}

/* The whole pages of [address, address + nbytes). */
static int page_range(unsigned long long address, unsigned long long nbytes, char **lo, size_t *len)
{
    const unsigned long long page = (unsigned long long)sysconf(_SC_PAGESIZE);
    unsigned long long a = (address + page - 1) & ~(page - 1), b = (address + nbytes) & ~(page - 1);
    if (!address || b <= a) {
        PyErr_SetString(PyExc_ValueError, "the range holds no whole page");
        return -1;
    }
    *lo = (char *)(uintptr_t)a;
    *len = (size_t)(b - a);
    return 0;
}

PyDoc_STRVAR(_fill_kept_doc,
"_fill_kept(address, nbytes, byte)\n--\n\n"
"memset the whole pages of [address, address + nbytes) of a block a model keeps\n"
"for reuse (the address of a released arena) to `byte`.");

static PyObject *py__fill_kept(PyObject *m, PyObject *args)
{
    unsigned long long address, nbytes;
    int byte;
    char *lo;
    size_t len;
    if (!PyArg_ParseTuple(args, "KKi:_fill_kept", &address, &nbytes, &byte)) return NULL;
    if (page_range(address, nbytes, &lo, &len) < 0) return NULL;
    memset(lo, byte, len);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(_reclaim_kept_doc,
"_reclaim_kept(address, nbytes)\n--\n\n"
"What memory pressure does to lazily released pages: MADV_PAGEOUT on the whole\n"
"pages of [address, address + nbytes) (a released arena). Returns False where\n"
"the kernel lacks MADV_PAGEOUT.");

static PyObject *py__reclaim_kept(PyObject *m, PyObject *args)
{
    unsigned long long address, nbytes;
    char *lo;
    size_t len;
    if (!PyArg_ParseTuple(args, "KK:_reclaim_kept", &address, &nbytes)) return NULL;
    if (page_range(address, nbytes, &lo, &len) < 0) return NULL;
#if defined(MADV_PAGEOUT)
    if (madvise(lo, len, MADV_PAGEOUT) == 0) Py_RETURN_TRUE;
#endif
    Py_RETURN_FALSE;
}

static PyMethodDef memory_methods[] = {
    {"_spare_keep_warm", py__spare_keep_warm, METH_VARARGS, _spare_keep_warm_doc},
    {"_fill_kept", py__fill_kept, METH_VARARGS, _fill_kept_doc},
    {"_reclaim_kept", py__reclaim_kept, METH_VARARGS, _reclaim_kept_doc},
    {NULL, NULL, 0, NULL},
};

int mi_py_testing_memory_exec(PyObject *m) { return PyModule_AddFunctions(m, memory_methods); }
