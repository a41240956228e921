/* cancel.h - stopping a long pass early, at a safe point (Ctrl-C).
 *
 * Contract:
 * - A long pass (forward, backward) calls mi_cancel_point() between layers,
 *   on the thread that called into the core and outside any parallel region.
 *   MI_OK: go on. Anything else: the pass returns that status at once, its
 *   outputs unspecified (the forward's arena, a backward's gradients, which
 *   may be partly accumulated); the model's weights are never touched, so the
 *   next call works as usual.
 * - The check is one function for the whole process, set by the embedding
 *   (the Python binding sets one that runs Python's signal handlers, so
 *   Ctrl-C becomes KeyboardInterrupt); none set: mi_cancel_point is MI_OK.
 * - The check runs at most once per MI_CANCEL_INTERVAL_MS of each thread's
 *   wall time (a clock read otherwise), so a check that has to wait for a
 *   lock (the GIL) costs a pass a few percent at worst, and a short pass
 *   nothing. A Ctrl-C ends a pass within that interval plus one layer.
 */
#ifndef MI_CANCEL_H
#define MI_CANCEL_H

#include "common/status.h"

#define MI_CANCEL_INTERVAL_MS 50

/* Returns MI_OK to continue, else the status that aborts the pass (with
 * mi_fail's message, or MI_ERR_CALLBACK when the embedding has its own error). */
typedef mi_status (*mi_cancel_check_fn)(void);

void mi_cancel_set_check(mi_cancel_check_fn check);   /* NULL: never cancel */
mi_status mi_cancel_point(void);

#endif
