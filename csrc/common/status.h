/* status.h - the one error convention of the C core.
 *
 * Every fallible C function returns an mi_status. On failure it first records
 * a human-readable message with mi_fail(), which names the thing that is wrong
 * (file, tensor, shape, token). The Python boundary (csrc/python/errors.c)
 * turns the code into the matching Python exception with that message.
 *
 * The message lives in thread-local storage: set and read it on the thread
 * that called into the core, never from inside an OpenMP parallel region
 * (validate arguments before the parallel work starts).
 */
#ifndef MI_STATUS_H
#define MI_STATUS_H

typedef enum {
    MI_OK = 0,
    MI_ERR_VALUE,     /* bad argument value or shape      -> ValueError   */
    MI_ERR_TYPE,      /* wrong kind of argument           -> TypeError    */
    MI_ERR_INDEX,     /* index or token id out of range   -> IndexError   */
    MI_ERR_KEY,       /* unknown name                     -> KeyError     */
    MI_ERR_IO,        /* open/read/mmap failed            -> OSError      */
    MI_ERR_FORMAT,    /* malformed file contents          -> ValueError   */
    MI_ERR_NOMEM,     /* allocation failed                -> MemoryError  */
    MI_ERR_CALLBACK,  /* a Python callback raised; its exception is set   */
    MI_ERR_INTERNAL,  /* a bug in the core                -> RuntimeError */
    MI_ERR_UNSUPPORTED, /* a feature the core does not have -> NotImplementedError */
} mi_status;

/* Record a printf-style message for `code` and return `code`, so call sites
 * read `return mi_fail(MI_ERR_VALUE, "tokens: expected 2 dims, got %d", nd);` */
mi_status mi_fail(mi_status code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The message of the last mi_fail() on this thread ("" if none). */
const char *mi_last_error(void);

/* Propagate a failure: `MI_TRY(f(x));` returns f's status if it is not MI_OK. */
#define MI_TRY(expr) do { mi_status mi_try_s_ = (expr); \
                          if (mi_try_s_ != MI_OK) return mi_try_s_; } while (0)

#endif
