/* kv_cache.c - the key/value cache of generation (contract in kv_cache.h). */
#include "model/kv_cache.h"

#include <string.h>

#include "common/memory.h"
#include "common/threads.h"

/* Grow to at least this many positions at a time, so a decode loop reallocates
 * O(log n) times. */
#define MIN_ALLOC 64

mi_status mi_kv_init(mi_kv_cache *c, int64_t n_layers, int64_t batch, int64_t n_kv_heads,
                     int64_t d_head, int64_t capacity)
{
    memset(c, 0, sizeof *c);
    if (n_layers < 1 || batch < 1 || n_kv_heads < 1 || d_head < 1 || capacity < 1)
        return mi_fail(MI_ERR_VALUE, "key/value cache: n_layers, batch, n_kv_heads, d_head and "
                       "capacity must be >= 1, got %lld, %lld, %lld, %lld, %lld",
                       (long long)n_layers, (long long)batch, (long long)n_kv_heads,
                       (long long)d_head, (long long)capacity);
    /* the largest buffer, k at full capacity, must stay addressable */
    int64_t n;
    if (__builtin_mul_overflow(n_layers, batch, &n) || __builtin_mul_overflow(n, n_kv_heads, &n)
        || __builtin_mul_overflow(n, capacity, &n) || __builtin_mul_overflow(n, d_head, &n)
        || n > (int64_t)(PTRDIFF_MAX / (ptrdiff_t)sizeof(float)))
        return mi_fail(MI_ERR_VALUE, "key/value cache: n_layers * batch * n_kv_heads * capacity * "
                       "d_head (%lld * %lld * %lld * %lld * %lld) overflows",
                       (long long)n_layers, (long long)batch, (long long)n_kv_heads,
                       (long long)capacity, (long long)d_head);
    c->len = mi_calloc(sizeof(int64_t) * (size_t)n_layers);
    if (!c->len) return mi_fail(MI_ERR_NOMEM, "key/value cache: out of memory");
    c->n_layers = n_layers;
    c->batch = batch;
    c->n_kv_heads = n_kv_heads;
    c->d_head = d_head;
    c->capacity = capacity;
    return MI_OK;
}

void mi_kv_free(mi_kv_cache *c)
{
    mi_free(c->len);
    mi_free(c->k);
    mi_free(c->v);
    mi_free(c->mask);
    memset(c, 0, sizeof *c);
}

void mi_kv_reset(mi_kv_cache *c)
{
    for (int64_t l = 0; l < c->n_layers; l++) c->len[l] = 0;
    c->owner = NULL;
}

/* Storage for `need` positions: reallocate at the larger stride, copying the
 * positions already cached. */
static mi_status reserve(mi_kv_cache *c, int64_t need)
{
    if (need <= c->alloc) return MI_OK;
    int64_t a = c->alloc * 2 > need ? c->alloc * 2 : need;
    if (a < MIN_ALLOC) a = MIN_ALLOC;
    if (a > c->capacity) a = c->capacity;
    int64_t rows = c->n_layers * c->batch * c->n_kv_heads, Dh = c->d_head;
    size_t bytes = sizeof(float) * (size_t)(rows * a * Dh);
    float *k = mi_malloc(bytes), *v = mi_malloc(bytes), *mask = mi_malloc(sizeof(float) * (size_t)(c->batch * a));
    if (!k || !v || !mask) {
        mi_free(k); mi_free(v); mi_free(mask);
        return mi_fail(MI_ERR_NOMEM, "key/value cache: cannot grow to %lld positions (%zu bytes "
                       "each for keys and values)", (long long)a, bytes);
    }
    int64_t keep = 0;   /* positions worth copying: every layer's written ones */
    for (int64_t l = 0; l < c->n_layers; l++) keep = c->len[l] > keep ? c->len[l] : keep;
    if (keep) {
        #pragma omp parallel for schedule(static) num_threads(mi_get_num_threads())
        for (int64_t r = 0; r < rows; r++) {
            memcpy(k + r * a * Dh, c->k + r * c->alloc * Dh, sizeof(float) * (size_t)(keep * Dh));
            memcpy(v + r * a * Dh, c->v + r * c->alloc * Dh, sizeof(float) * (size_t)(keep * Dh));
        }
        for (int64_t b = 0; b < c->batch; b++)
            memcpy(mask + b * a, c->mask + b * c->alloc, sizeof(float) * (size_t)keep);
    }
    mi_free(c->k); mi_free(c->v); mi_free(c->mask);
    c->k = k;
    c->v = v;
    c->mask = mask;
    c->alloc = a;
    return MI_OK;
}

mi_status mi_kv_prepare(mi_kv_cache *c, const mi_transformer *m, int64_t B, int64_t T, int first,
                        int stop, int64_t *n_past)
{
    const mi_tf_spec *s = &m->spec;
    if (c->n_layers != s->n_layers || c->n_kv_heads != mi_tf_kv_heads(s) || c->d_head != s->d_head)
        return mi_fail(MI_ERR_VALUE, "past_kv_cache: the cache was made for another model "
                       "(n_layers %lld, n_kv_heads %lld, d_head %lld; this model has %lld, %lld, "
                       "%lld)", (long long)c->n_layers, (long long)c->n_kv_heads,
                       (long long)c->d_head, (long long)s->n_layers, (long long)mi_tf_kv_heads(s),
                       (long long)s->d_head);
    if (c->batch != B)
        return mi_fail(MI_ERR_VALUE, "past_kv_cache: the cache holds a batch of %lld, the input "
                       "has batch %lld", (long long)c->batch, (long long)B);
    if (first < 0 || first >= stop || stop > s->n_layers)
        return mi_fail(MI_ERR_VALUE, "past_kv_cache: layers [%d, %d) are not a range of the "
                       "model's %lld layers", first, stop, (long long)s->n_layers);
    int64_t past = c->len[first];
    if (past && c->owner && c->owner != m)
        return mi_fail(MI_ERR_VALUE, "past_kv_cache: the cache holds keys and values of another "
                       "model (reset it or make a new one for this model)");
    for (int l = first + 1; l < stop; l++)
        if (c->len[l] != past)
            return mi_fail(MI_ERR_VALUE, "past_kv_cache: layer %d caches %lld positions but layer "
                           "%d caches %lld; a call runs layers that hold the same positions",
                           l, (long long)c->len[l], first, (long long)past);
    if (past + T > c->capacity)
        return mi_fail(MI_ERR_VALUE, "past_kv_cache: %lld cached + %lld new positions exceed the "
                       "cache's capacity of %lld", (long long)past, (long long)T,
                       (long long)c->capacity);
    MI_TRY(reserve(c, past + T));
    *n_past = past;
    return MI_OK;
}

void mi_kv_store_mask(mi_kv_cache *c, int64_t n_past, int64_t T, const float *key_mask,
                      int64_t *pos_ids, int *any_pad)
{
    int pad = 0;
    for (int64_t b = 0; b < c->batch; b++) {
        float *mk = c->mask + b * c->alloc;
        int64_t real = 0;
        for (int64_t j = 0; j < n_past; j++) {
            real += mk[j] != 0.0f;
            pad |= mk[j] == 0.0f;
        }
        for (int64_t t = 0; t < T; t++) {
            float keep = key_mask ? (key_mask[b * T + t] != 0.0f) : 1.0f;
            mk[n_past + t] = keep;
            real += keep != 0.0f;
            pad |= keep == 0.0f;
            if (pos_ids) pos_ids[b * T + t] = real > 0 ? real - 1 : 0;
        }
    }
    *any_pad = pad;
}

void mi_kv_key_mask(const mi_kv_cache *c, int64_t n_past, int64_t T, float *out)
{
    int64_t Tk = n_past + T;
    for (int64_t b = 0; b < c->batch; b++)
        memcpy(out + b * Tk, c->mask + b * c->alloc, sizeof(float) * (size_t)Tk);
}

void mi_kv_append(mi_kv_cache *c, int l, int64_t n_past, mi_attn_layout *lay, const float **k,
                  const float **v)
{
    const int64_t B = c->batch, Hkv = c->n_kv_heads, A = c->alloc, Dh = c->d_head, T = lay->q_len;
    float *ck = c->k + (int64_t)l * B * Hkv * A * Dh, *cv = c->v + (int64_t)l * B * Hkv * A * Dh;
    const float *sk = *k, *sv = *v;
    const mi_attn_stride ks = lay->k, vs = lay->v;
    #pragma omp parallel for schedule(static) num_threads(mi_get_num_threads())
    for (int64_t bh = 0; bh < B * Hkv; bh++) {
        int64_t b = bh / Hkv, h = bh % Hkv;
        float *dk = ck + (bh * A + n_past) * Dh, *dv = cv + (bh * A + n_past) * Dh;
        for (int64_t t = 0; t < T; t++) {
            memcpy(dk + t * Dh, sk + b * ks.batch + t * ks.pos + h * ks.head, sizeof(float) * (size_t)Dh);
            memcpy(dv + t * Dh, sv + b * vs.batch + t * vs.pos + h * vs.head, sizeof(float) * (size_t)Dh);
        }
    }
    const mi_attn_stride cs = {Hkv * A * Dh, Dh, A * Dh};
    lay->k_len = n_past + T;
    lay->offset = n_past;
    lay->n_kv_heads = Hkv;
    lay->k = lay->v = cs;
    *k = ck;
    *v = cv;
}

void mi_kv_commit(mi_kv_cache *c, const void *owner, int first, int stop, int64_t n_past,
                  int64_t T)
{
    c->owner = owner;
    if (c->frozen) return;
    for (int l = first; l < stop; l++) c->len[l] = n_past + T;
}
