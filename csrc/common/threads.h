/* threads.h - the core's thread count: one process-wide setting, fork-safe.
 *
 * Contract:
 * - mi_set_num_threads(n) sets the count for the whole process, whatever
 *   thread calls it (torch.set_num_threads semantics). OpenMP's own setting
 *   (omp_set_num_threads) is per calling thread, so the core never relies on
 *   it: every parallel region in csrc/ names its team size explicitly,
 *       #pragma omp parallel for num_threads(mi_get_num_threads())
 *   and code that sizes per-thread scratch reads mi_get_num_threads() once
 *   and passes that same value to the region.
 * - The default is OpenMP's initial count (OMP_NUM_THREADS, else the CPUs).
 * - In a child of fork() made after the core first used its threads, the
 *   count is 1 from then on and mi_set_num_threads cannot raise it: GNU
 *   libgomp's thread pool does not survive fork (its workers are gone in the
 *   child, and the first multi-threaded region there waits for them
 *   forever), while a team of one never touches the pool. A child forked
 *   before that, or a process started by exec ('spawn'), keeps the count.
 *
 * Kernels parallelise over independent outputs only and never split a
 * reduction, so every result is bitwise identical for any thread count, and
 * running single-threaded in a forked child changes speed, never numbers. */
#ifndef MI_THREADS_H
#define MI_THREADS_H

void mi_set_num_threads(int n);   /* n >= 1 (smaller n means 1) */
int mi_get_num_threads(void);     /* the team size of every parallel region */

/* The size of the team a parallel region of the core gets on the calling
 * thread right now (runs an empty region): what mi_get_num_threads promises,
 * as OpenMP delivers it. For tests and diagnostics. */
int mi_threads_team_size(void);

#endif
