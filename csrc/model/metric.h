/* metric.h - built-in scalar metrics of the logits and their gradients: where
 * an activation-gradient pass (grad.h) starts.
 *
 * Shape legend: B batch, T positions, Vo d_vocab_out; logits [B,T,Vo].
 *
 *   MI_METRIC_LOSS:       mean over counted positions of cross_entropy(logits[b,t], targets[b,t])
 *                         (targets [B,T], MI_IGNORE_INDEX -100 skips a position)
 *   MI_METRIC_LOGIT_DIFF: mean_b logits[b, pos[b], a[b]] - logits[b, pos[b], c[b]]
 *   MI_METRIC_LOGPROB:    mean_b log_softmax(logits[b, pos[b]])[a[b]]
 *
 * dlogits [B,T,Vo] receives d value / d logits (overwritten). pos[b] in [0, T),
 * a[b] and c[b] in [0, Vo): checked, MI_ERR_INDEX naming the entry. Sums are
 * in double, in a fixed order: bitwise identical for any thread count.
 */
#ifndef MI_METRIC_H
#define MI_METRIC_H

#include <stdint.h>

#include "common/status.h"

typedef enum { MI_METRIC_LOSS, MI_METRIC_LOGIT_DIFF, MI_METRIC_LOGPROB } mi_metric_kind;

typedef struct {
    mi_metric_kind kind;
    const int64_t *targets;   /* [B,T] (loss) */
    const int64_t *pos;       /* [B] (logit_diff, logprob) */
    const int64_t *a, *c;     /* [B]: answer and wrong tokens (logit_diff), tokens (logprob: a) */
} mi_metric;

mi_status mi_metric_eval(const mi_metric *mt, const float *logits, int64_t B, int64_t T, int64_t Vo,
                         float *dlogits, double *value);

#endif
