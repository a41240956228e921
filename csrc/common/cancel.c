/* cancel.c - the process-wide cancellation check, rate-limited per thread
 * (contract in cancel.h). */
#include "common/cancel.h"

#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

static _Atomic(mi_cancel_check_fn) check_fn;
/* when this thread last ran the check (ns, CLOCK_MONOTONIC); 0: never */
static _Thread_local int64_t last_check_ns;

void mi_cancel_set_check(mi_cancel_check_fn check) { atomic_store(&check_fn, check); }

mi_status mi_cancel_point(void)
{
    mi_cancel_check_fn check = atomic_load_explicit(&check_fn, memory_order_relaxed);
    if (!check) return MI_OK;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t now = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    if (last_check_ns && now - last_check_ns < (int64_t)MI_CANCEL_INTERVAL_MS * 1000000) return MI_OK;
    last_check_ns = now;
    return check();
}
