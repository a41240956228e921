/* sampling.h - next-token choice from a block of logits [batch, vocab].
 *
 * Shapes:
 *   B  rows (batch)             V  vocabulary (columns)
 *   T  history length per row   (tokens already in the sequence, pads included)
 *
 * Contract:
 * - mi_sampling_logits writes the logits a sampler draws from, in this order
 *   (both libraries apply the penalties first and the filters last):
 *     1. repetition penalty (Hugging Face): every token present in the row's
 *        history has its logit divided by the penalty when positive and
 *        multiplied by it when negative (once, however often it occurs);
 *     2. temperature: logits / temperature;
 *     3. frequency penalty (TransformerLens): logit - freq_penalty * count,
 *        count = occurrences of the token in the row's history;
 *     4. top-k: logits below the k-th largest become -inf (ties with the k-th
 *        all stay, as torch.topk + `<` in both libraries); k >= V keeps all;
 *     5. top-p (nucleus), with the rule of the library named by `rules`:
 *        MI_RULES_TL: only when top-k is off (TransformerLens's `elif`);
 *          sort descending, keep position j when j == 0 or the cumulative
 *          probability of positions < j is <= top_p;
 *        MI_RULES_HF: after top-k; sort ascending, drop positions whose
 *          cumulative probability is <= 1 - top_p, always keep the largest.
 *        Sorts break ties by ascending token index (torch's stable order).
 *   Removed entries are -inf. Probabilities for top-p are summed in double.
 * - mi_sampling_draw draws one token per row from softmax(logits) (entries
 *   -inf never), by inverse CDF in token order with one uniform per row.
 *   The uniform of row r is a pure function of (seed, counter, r): a
 *   counter-based generator (SplitMix64's finaliser, nested over the three
 *   words), so results do not depend on the thread count or on other rows.
 *   Callers that draw repeatedly (one call per generated token) advance
 *   `counter` per call.
 * - mi_sampling_argmax: the first index of the row maximum, a NaN counting as
 *   the maximum (torch.argmax).
 * - Arguments are checked before any work (MI_ERR_VALUE / MI_ERR_INDEX with
 *   the field named); a row left with no finite logit (all -inf or a NaN) is
 *   MI_ERR_VALUE naming the row. Parallel over rows only, one row per thread.
 */
#ifndef MI_SAMPLING_H
#define MI_SAMPLING_H

#include <stdint.h>

#include "common/status.h"

typedef enum { MI_RULES_TL = 0, MI_RULES_HF = 1 } mi_sampling_rules;

typedef struct {
    float temperature;          /* > 0; 1 leaves the logits as they are          */
    float freq_penalty;         /* TransformerLens; 0 = off                       */
    float repetition_penalty;   /* Hugging Face; > 0, 1 = off                     */
    int64_t top_k;              /* >= 0; 0 = off                                  */
    float top_p;                /* (0, 1]; 1 = off                                */
    mi_sampling_rules rules;    /* whose top-p rule and filter order to follow    */
} mi_sampling_params;

/* logits [B, V] -> out [B, V] (may alias logits). history [B, T] token ids
 * (NULL when T == 0); needed for the two penalties. */
mi_status mi_sampling_logits(const float *logits, int64_t B, int64_t V,
                             const int64_t *history, int64_t T,
                             const mi_sampling_params *p, float *out);

/* One token per row of processed logits [B, V] -> tokens [B]. */
mi_status mi_sampling_draw(const float *logits, int64_t B, int64_t V,
                           uint64_t seed, uint64_t counter, int64_t *tokens);

/* Greedy choice per row: logits [B, V] -> tokens [B]. */
mi_status mi_sampling_argmax(const float *logits, int64_t B, int64_t V, int64_t *tokens);

/* The generator: a uniform double in [0, 1) for (seed, stream, counter). */
double mi_sampling_uniform(uint64_t seed, uint64_t stream, uint64_t counter);

#endif
