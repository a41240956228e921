/* sampling.c - penalties, temperature, top-k / top-p filters and the draw
 * (contract in sampling.h). Plain C: per generated token this is O(V log V)
 * at worst (one sort of a row), small next to the forward pass that made
 * the logits, so there is no vectorised twin to keep in step. */
#include "kernels/sampling.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/memory.h"
#include "common/threads.h"

/* A logit and its token, the unit the filters sort. */
typedef struct {
    float v;
    int32_t i;
} entry;

/* Descending by value, ties by ascending token (torch's stable sort). */
static int cmp_desc(const void *a, const void *b)
{
    const entry *x = a, *y = b;
    if (x->v != y->v) return x->v < y->v ? 1 : -1;
    return (x->i > y->i) - (x->i < y->i);
}

/* Ascending by value, ties by ascending token. */
static int cmp_asc(const void *a, const void *b)
{
    const entry *x = a, *y = b;
    if (x->v != y->v) return x->v < y->v ? -1 : 1;
    return (x->i > y->i) - (x->i < y->i);
}

static void sort_row(const float *y, int64_t V, entry *e, int descending)
{
    for (int64_t v = 0; v < V; v++) e[v] = (entry){y[v], (int32_t)v};
    qsort(e, (size_t)V, sizeof *e, descending ? cmp_desc : cmp_asc);
}

/* Every logit below thr becomes -inf. */
static void drop_below(float *y, int64_t V, float thr)
{
    for (int64_t v = 0; v < V; v++)
        if (y[v] < thr) y[v] = -INFINITY;
}

/* exp(e[j].v - max) into w[j] (double); returns their sum. */
static double sorted_weights(const entry *e, int64_t V, float max, double *w)
{
    double s = 0.0;
    for (int64_t j = 0; j < V; j++) {
        w[j] = e[j].v == -INFINITY ? 0.0 : exp((double)e[j].v - (double)max);
        s += w[j];
    }
    return s;
}

/* TransformerLens's nucleus: e sorted descending; position j survives when the
 * mass strictly before it is <= top_p (so the token that crosses top_p stays). */
static void top_p_tl(float *y, const entry *e, int64_t V, float top_p, double *w)
{
    const double s = sorted_weights(e, V, e[0].v, w);
    double before = 0.0;
    for (int64_t j = 0; j < V; j++) {
        if (j > 0 && before / s > (double)top_p) y[e[j].i] = -INFINITY;
        before += w[j];
    }
}

/* Hugging Face's nucleus: e sorted ascending; position j goes when the
 * cumulative mass up to and including it is <= 1 - top_p; the largest stays. */
static void top_p_hf(float *y, const entry *e, int64_t V, float top_p, double *w)
{
    const double s = sorted_weights(e, V, e[V - 1].v, w);
    const double cut = 1.0 - (double)top_p;
    double cum = 0.0;
    for (int64_t j = 0; j < V - 1; j++) {
        cum += w[j];
        if (cum / s <= cut) y[e[j].i] = -INFINITY;
    }
}

/* One row of mi_sampling_logits. counts [V] and e [V], w [V]: scratch.
 * Returns 0, or 1 when the row holds a NaN after the penalties. */
static int process_row(const float *x, float *y, int64_t V, const int64_t *hist, int64_t T,
                       const mi_sampling_params *p, int32_t *counts, entry *e, double *w)
{
    if (y != x) memcpy(y, x, (size_t)V * sizeof *y);
    const int rep = p->repetition_penalty != 1.0f, freq = p->freq_penalty != 0.0f;
    if ((rep || freq) && T > 0) {
        memset(counts, 0, (size_t)V * sizeof *counts);
        for (int64_t t = 0; t < T; t++) counts[hist[t]]++;
        if (rep)
            for (int64_t v = 0; v < V; v++)
                if (counts[v]) y[v] = y[v] < 0 ? y[v] * p->repetition_penalty
                                                : y[v] / p->repetition_penalty;
    }
    if (p->temperature != 1.0f)
        for (int64_t v = 0; v < V; v++) y[v] /= p->temperature;
    if (freq && T > 0)
        for (int64_t v = 0; v < V; v++) {
            const float pen = p->freq_penalty * (float)counts[v];
            y[v] -= pen;
        }
    for (int64_t v = 0; v < V; v++)
        if (isnan(y[v])) return 1;

    const int64_t k = p->top_k < V ? p->top_k : V;
    const int nucleus = p->top_p < 1.0f;
    if (p->rules == MI_RULES_TL) {
        if (k > 0) {
            sort_row(y, V, e, 1);
            drop_below(y, V, e[k - 1].v);
        } else if (nucleus) {
            sort_row(y, V, e, 1);
            if (e[0].v != -INFINITY) top_p_tl(y, e, V, p->top_p, w);
        }
    } else {
        if (k > 0) {
            sort_row(y, V, e, 0);
            drop_below(y, V, e[V - k].v);
        }
        if (nucleus) {
            sort_row(y, V, e, 0);
            if (e[V - 1].v != -INFINITY) top_p_hf(y, e, V, p->top_p, w);
        }
    }
    return 0;
}

static mi_status check_shape(int64_t B, int64_t V, const char *what)
{
    if (B < 1 || V < 1)
        return mi_fail(MI_ERR_VALUE, "%s: logits must be [batch >= 1, vocab >= 1], got [%lld, %lld]",
                       what, (long long)B, (long long)V);
    if (V > INT32_MAX)
        return mi_fail(MI_ERR_VALUE, "%s: vocab %lld is larger than 2^31 - 1", what, (long long)V);
    return MI_OK;
}

/* The first row flagged in bad[0..B), or -1. */
static int64_t first_bad(const unsigned char *bad, int64_t B)
{
    for (int64_t r = 0; r < B; r++)
        if (bad[r]) return r;
    return -1;
}

mi_status mi_sampling_logits(const float *logits, int64_t B, int64_t V,
                             const int64_t *history, int64_t T,
                             const mi_sampling_params *p, float *out)
{
    MI_TRY(check_shape(B, V, "sampling"));
    if (!(p->temperature > 0.0f) || !isfinite(p->temperature))
        return mi_fail(MI_ERR_VALUE, "temperature must be a finite number > 0, got %g "
                       "(use greedy decoding for temperature 0)", (double)p->temperature);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return mi_fail(MI_ERR_VALUE, "top_p must be in (0, 1], got %g", (double)p->top_p);
    if (p->top_k < 0)
        return mi_fail(MI_ERR_VALUE, "top_k must be >= 0 (0 = off), got %lld", (long long)p->top_k);
    if (!(p->repetition_penalty > 0.0f) || !isfinite(p->repetition_penalty))
        return mi_fail(MI_ERR_VALUE, "repetition_penalty must be a finite number > 0, got %g",
                       (double)p->repetition_penalty);
    if (!isfinite(p->freq_penalty))
        return mi_fail(MI_ERR_VALUE, "freq_penalty must be finite, got %g", (double)p->freq_penalty);
    if (p->rules != MI_RULES_TL && p->rules != MI_RULES_HF)
        return mi_fail(MI_ERR_VALUE, "sampling rules: unknown value %d", (int)p->rules);
    if (T < 0 || (T > 0 && !history))
        return mi_fail(MI_ERR_VALUE, "tokens: history of length %lld without data", (long long)T);
    for (int64_t r = 0; r < B; r++)
        for (int64_t t = 0; t < T; t++) {
            const int64_t id = history[r * T + t];
            if (id < 0 || id >= V)
                return mi_fail(MI_ERR_INDEX, "tokens[%lld, %lld] = %lld is outside the vocabulary "
                               "[0, %lld)", (long long)r, (long long)t, (long long)id, (long long)V);
        }

    const int need_counts = (p->repetition_penalty != 1.0f || p->freq_penalty != 0.0f) && T > 0;
    const int need_sort = p->top_k > 0 || p->top_p < 1.0f;
    int32_t *counts = need_counts ? mi_malloc((size_t)(B * V) * sizeof *counts) : NULL;
    entry *e = need_sort ? mi_malloc((size_t)(B * V) * sizeof *e) : NULL;
    double *w = need_sort ? mi_malloc((size_t)(B * V) * sizeof *w) : NULL;
    unsigned char *bad = mi_calloc((size_t)B);
    mi_status st = MI_OK;
    if ((need_counts && !counts) || (need_sort && (!e || !w)) || !bad) {
        st = mi_fail(MI_ERR_NOMEM, "sampling: out of memory for [%lld, %lld] scratch",
                     (long long)B, (long long)V);
        goto done;
    }
    #pragma omp parallel for schedule(static) num_threads(mi_get_num_threads())
    for (int64_t r = 0; r < B; r++)
        bad[r] = (unsigned char)process_row(logits + r * V, out + r * V, V,
                                            T ? history + r * T : NULL, T, p,
                                            counts ? counts + r * V : NULL,
                                            e ? e + r * V : NULL, w ? w + r * V : NULL);
    const int64_t r = first_bad(bad, B);
    if (r >= 0) st = mi_fail(MI_ERR_VALUE, "logits row %lld holds NaN", (long long)r);
done:
    mi_free(counts);
    mi_free(e);
    mi_free(w);
    mi_free(bad);
    return st;
}

/* SplitMix64's output function: a bijective 64-bit mixer. */
static uint64_t mix64(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

double mi_sampling_uniform(uint64_t seed, uint64_t stream, uint64_t counter)
{
    const uint64_t x = mix64(mix64(mix64(seed) ^ stream) ^ counter);
    return (double)(x >> 11) * 0x1.0p-53;   /* 53 random bits: [0, 1) */
}

/* Inverse CDF over the row in token order; -1 when no logit is finite. */
static int64_t draw_row(const float *y, int64_t V, double u)
{
    float max = -INFINITY;
    for (int64_t v = 0; v < V; v++) {
        if (isnan(y[v])) return -1;
        if (y[v] > max) max = y[v];
    }
    if (!isfinite(max)) return -1;
    double s = 0.0;
    for (int64_t v = 0; v < V; v++)
        if (y[v] != -INFINITY) s += exp((double)y[v] - (double)max);
    const double target = u * s;
    double acc = 0.0;
    int64_t last = -1;
    for (int64_t v = 0; v < V; v++) {
        if (y[v] == -INFINITY) continue;
        acc += exp((double)y[v] - (double)max);
        last = v;
        if (acc > target) return v;
    }
    return last;   /* u * s rounded up to the whole sum */
}

mi_status mi_sampling_draw(const float *logits, int64_t B, int64_t V,
                           uint64_t seed, uint64_t counter, int64_t *tokens)
{
    MI_TRY(check_shape(B, V, "sampling"));
    #pragma omp parallel for schedule(static) num_threads(mi_get_num_threads())
    for (int64_t r = 0; r < B; r++)
        tokens[r] = draw_row(logits + r * V, V, mi_sampling_uniform(seed, (uint64_t)r, counter));
    for (int64_t r = 0; r < B; r++)
        if (tokens[r] < 0)
            return mi_fail(MI_ERR_VALUE, "logits row %lld has no finite logit to sample from "
                           "(every token filtered out, or NaN)", (long long)r);
    return MI_OK;
}

mi_status mi_sampling_argmax(const float *logits, int64_t B, int64_t V, int64_t *tokens)
{
    MI_TRY(check_shape(B, V, "argmax"));
    #pragma omp parallel for schedule(static) num_threads(mi_get_num_threads())
    for (int64_t r = 0; r < B; r++) {
        const float *y = logits + r * V;
        int64_t best = 0;
        for (int64_t v = 0; v < V; v++) {
            if (isnan(y[v])) { best = v; break; }
            if (y[v] > y[best]) best = v;
        }
        tokens[r] = best;
    }
    return MI_OK;
}
