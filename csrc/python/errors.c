/* errors.c - mi_status -> Python exception, at the boundary only. */
#include "python/bridge.h"

#include <string.h>

PyObject *mi_py_message(const char *msg)
{
    return PyUnicode_DecodeUTF8(msg, (Py_ssize_t)strlen(msg), "backslashreplace");
}

PyObject *mi_py_raise(mi_status status)
{
    PyObject *exc;
    switch (status) {
    case MI_OK: return NULL;
    case MI_ERR_CALLBACK:
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_RuntimeError, "a callback failed without an exception");
        return NULL;
    case MI_ERR_VALUE: case MI_ERR_FORMAT: exc = PyExc_ValueError; break;
    case MI_ERR_TYPE: exc = PyExc_TypeError; break;
    case MI_ERR_INDEX: exc = PyExc_IndexError; break;
    case MI_ERR_KEY: exc = PyExc_KeyError; break;
    case MI_ERR_IO: exc = PyExc_OSError; break;
    case MI_ERR_NOMEM: exc = PyExc_MemoryError; break;
    case MI_ERR_UNSUPPORTED: exc = PyExc_NotImplementedError; break;
    default: exc = PyExc_RuntimeError; break;
    }
    PyObject *msg = mi_py_message(mi_last_error());
    if (msg) {
        PyErr_SetObject(exc, msg);
        Py_DECREF(msg);
    }
    return NULL;
}

PyObject *mi_py_raise_os(mi_status status, int err)
{
    if (status != MI_ERR_IO || err == 0) return mi_py_raise(status);
    PyObject *msg = mi_py_message(mi_last_error());
    PyObject *exc = msg ? PyObject_CallFunction(PyExc_OSError, "iN", err, msg) : NULL;
    if (exc) {   /* OSError(errno, msg) is the subclass errno calls for */
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}
