/* threads.c - the process-wide thread count and its reset after fork (contract
 * in threads.h). */
#include "common/threads.h"

#include <omp.h>
#include <pthread.h>
#include <stdatomic.h>

static atomic_int requested;   /* the count set for the process */
static atomic_int forked;      /* 1 in a child of fork() */
static pthread_once_t once = PTHREAD_ONCE_INIT;

/* Runs in the child right after fork(), on the only thread it has. OpenMP's
 * own count of that thread goes to 1 as well, so even a region that does not
 * name its team size (none in csrc/ should) cannot wait for the lost pool. */
static void after_fork_in_child(void)
{
    atomic_store(&forked, 1);
    omp_set_num_threads(1);
}

static void init(void)
{
    /* OpenMP's initial value: nobody in the core calls omp_set_num_threads,
     * so every thread still reads OMP_NUM_THREADS or the CPU count here. */
    int n = omp_get_max_threads();
    atomic_store(&requested, n < 1 ? 1 : n);
    pthread_atfork(NULL, NULL, after_fork_in_child);
}

void mi_set_num_threads(int n)
{
    pthread_once(&once, init);
    atomic_store(&requested, n < 1 ? 1 : n);
}

int mi_get_num_threads(void)
{
    pthread_once(&once, init);
    if (atomic_load_explicit(&forked, memory_order_relaxed)) return 1;
    return atomic_load_explicit(&requested, memory_order_relaxed);
}

int mi_threads_team_size(void)
{
    int team = 0;
    #pragma omp parallel num_threads(mi_get_num_threads())
    {
        #pragma omp single
        team = omp_get_num_threads();
    }
    return team;
}
