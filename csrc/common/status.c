/* status.c - thread-local error message for the mi_status convention. */
#include "common/status.h"

#include <stdarg.h>
#include <stdio.h>

static _Thread_local char last_error[1024];

mi_status mi_fail(mi_status code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return code;
}

const char *mi_last_error(void) { return last_error; }
