/* threads.h - the core's thread count (OpenMP), settable from Python.
 *
 * Kernels parallelise over independent outputs only and never split a
 * reduction, so every result is bitwise identical for any thread count. */
#ifndef MI_THREADS_H
#define MI_THREADS_H

void mi_set_num_threads(int n);   /* n >= 1 */
int mi_get_num_threads(void);

#endif
