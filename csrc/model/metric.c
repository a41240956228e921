/* metric.c - built-in metrics of the logits (contract in metric.h). */
#include "model/metric.h"

#include <math.h>
#include <string.h>

#include "kernels/cross_entropy.h"

static mi_status check_ids(const int64_t *ids, int64_t B, int64_t hi, const char *what, const char *bound)
{
    for (int64_t b = 0; b < B; b++)
        if (ids[b] < 0 || ids[b] >= hi)
            return mi_fail(MI_ERR_INDEX, "metric: %s[%ld] = %ld is outside [0, %s=%ld)", what, (long)b,
                           (long)ids[b], bound, (long)hi);
    return MI_OK;
}

mi_status mi_metric_eval(const mi_metric *mt, const float *logits, int64_t B, int64_t T, int64_t Vo,
                         float *dlogits, double *value)
{
    int64_t BT = B * T;
    if (mt->kind == MI_METRIC_LOSS) {
        int64_t counted = 0;
        for (int64_t i = 0; i < BT; i++) {
            if (mt->targets[i] == MI_IGNORE_INDEX) continue;
            if (mt->targets[i] < 0 || mt->targets[i] >= Vo)
                return mi_fail(MI_ERR_INDEX, "metric: target %ld at [%ld, %ld] is outside [0, "
                               "d_vocab_out=%ld) and is not the ignore index -100",
                               (long)mt->targets[i], (long)(i / T), (long)(i % T), (long)Vo);
            counted++;
        }
        if (!counted) return mi_fail(MI_ERR_VALUE, "metric: every target is -100 (ignored): the mean "
                                     "loss is undefined");
        float mean = 0.0f;
        memset(dlogits, 0, sizeof(float) * (size_t)(BT * Vo));
        MI_TRY(mi_cross_entropy(logits, mt->targets, BT, Vo, MI_IGNORE_INDEX, &mean, NULL, dlogits));
        *value = mean;
        return MI_OK;
    }
    if (mt->kind != MI_METRIC_LOGIT_DIFF && mt->kind != MI_METRIC_LOGPROB)
        return mi_fail(MI_ERR_VALUE, "metric: unknown kind %d", (int)mt->kind);
    MI_TRY(check_ids(mt->pos, B, T, "pos", "n_pos"));
    MI_TRY(check_ids(mt->a, B, Vo, mt->kind == MI_METRIC_LOGPROB ? "tokens" : "answer_tokens", "d_vocab_out"));
    if (mt->kind == MI_METRIC_LOGIT_DIFF) MI_TRY(check_ids(mt->c, B, Vo, "wrong_tokens", "d_vocab_out"));
    memset(dlogits, 0, sizeof(float) * (size_t)(BT * Vo));
    double total = 0.0, inv_b = 1.0 / (double)B;
    for (int64_t b = 0; b < B; b++) {
        const float *row = logits + (b * T + mt->pos[b]) * Vo;
        float *drow = dlogits + (b * T + mt->pos[b]) * Vo;
        if (mt->kind == MI_METRIC_LOGIT_DIFF) {
            total += (double)row[mt->a[b]] - (double)row[mt->c[b]];
            drow[mt->a[b]] += (float)inv_b;
            drow[mt->c[b]] -= (float)inv_b;
            continue;
        }
        /* log_softmax(row)[a] = row[a] - max - log(sum exp(row - max)) */
        double mx = -INFINITY, sum = 0.0;
        for (int64_t v = 0; v < Vo; v++) mx = row[v] > mx ? row[v] : mx;
        for (int64_t v = 0; v < Vo; v++) sum += exp((double)row[v] - mx);
        double lse = mx + log(sum);
        total += (double)row[mt->a[b]] - lse;
        for (int64_t v = 0; v < Vo; v++) drow[v] = (float)(-exp((double)row[v] - lse) * inv_b);
        drow[mt->a[b]] += (float)inv_b;
    }
    *value = total * inv_b;
    return MI_OK;
}
