/* threads.c - the core's thread count (OpenMP). */
#include "common/threads.h"

#include <omp.h>

void mi_set_num_threads(int n) { omp_set_num_threads(n < 1 ? 1 : n); }
int mi_get_num_threads(void) { return omp_get_max_threads(); }
