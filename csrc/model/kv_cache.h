/* kv_cache.h - the key/value cache of generation: per layer the keys and
 * values of every position a forward call has seen, so the next call runs
 * only the new positions and attends over past + new keys.
 *
 * Shape legend: L layers, B batch, Hkv key/value heads, C capacity (the most
 * positions the cache may hold), A positions allocated (grows up to C), Dh
 * d_head.
 *
 *   k, v   [L, B, Hkv, A, Dh]   layer l's keys of batch item b, head h,
 *                               position t at ((l*B + b)*Hkv + h)*A*Dh + t*Dh
 *   mask   [B, A]               1: a real token, 0: padding (a key nobody sees)
 *   len    [L]                  positions cached per layer
 *
 * A forward call with the cache (mi_tf_forward_kv) runs layers [first, stop)
 * on T new positions; they must all hold the same n_past = len[first]
 * positions. Each layer appends its T new keys/values at [n_past, n_past+T)
 * (mi_kv_append: the one place the pass writes the cache) and attends over
 * the n_past + T keys with the causal offset n_past. Only after the whole pass
 * succeeded does len of those layers become n_past + T (unless frozen, as
 * TransformerLens's freeze(): the call sees its new keys but the cache keeps
 * its length), so a hook error or Ctrl-C mid-pass leaves the cache as it was.
 *
 * Padding: the mask of the new positions (the call's key_mask, all 1 without
 * one) is stored at [n_past, n_past+T) and stays with the cache, so padding a
 * left-padded prompt had stays masked for every later token. Position ids of
 * new tokens skip the padding as Hugging Face and TransformerLens compute them
 * from the attention mask: (real tokens up to and including this one) - 1,
 * clamped at 0.
 *
 * A cache belongs to the first model that writes it (owner): another model, a
 * different layer count, head count, head size or batch size is refused, as is
 * a call that would pass the capacity.
 */
#ifndef MI_KV_CACHE_H
#define MI_KV_CACHE_H

#include <stdint.h>

#include "common/status.h"
#include "kernels/attention.h"
#include "model/transformer.h"

typedef struct mi_kv_cache {
    int64_t n_layers, batch, n_kv_heads, d_head;
    int64_t capacity;   /* C: the most positions */
    int64_t alloc;      /* A: positions allocated, <= capacity */
    int64_t *len;       /* [L] */
    float *k, *v;       /* [L, B, Hkv, A, Dh] */
    float *mask;        /* [B, A] */
    const void *owner;  /* the model that first wrote it; NULL while empty */
    int frozen;
} mi_kv_cache;

/* An empty cache (nothing allocated for keys yet; storage grows on use). */
mi_status mi_kv_init(mi_kv_cache *c, int64_t n_layers, int64_t batch, int64_t n_kv_heads,
                     int64_t d_head, int64_t capacity);
void mi_kv_free(mi_kv_cache *c);
/* Forget every position (keeps the storage); the owner is forgotten too. */
void mi_kv_reset(mi_kv_cache *c);
/* Positions cached by layer `first` (the length of the whole cache for 0). */
static inline int64_t mi_kv_len(const mi_kv_cache *c, int first) { return c->len[first]; }

/* Check that model m may run layers [first, stop) for a [B, T] call on c and
 * return the cached positions n_past; grows the storage to n_past + T.
 * MI_ERR_VALUE naming what differs (model, batch, layer lengths, capacity). */
mi_status mi_kv_prepare(mi_kv_cache *c, const mi_transformer *m, int64_t B, int64_t T, int first,
                        int stop, int64_t *n_past);

/* Store the new positions' mask (NULL: all real) at [n_past, n_past + T) and,
 * when pos_ids is not NULL, their position ids [B, T] skipping padding.
 * Returns in *any_pad whether a key among the n_past + T is padding. */
void mi_kv_store_mask(mi_kv_cache *c, int64_t n_past, int64_t T, const float *key_mask,
                      int64_t *pos_ids, int *any_pad);
/* The mask of the n_past + T keys [B, n_past + T] into out (contiguous). */
void mi_kv_key_mask(const mi_kv_cache *c, int64_t n_past, int64_t T, float *out);

/* Append layer l's new keys and values, read through *lay (the call's
 * self-attention layout over its T positions: lay->q_len = T), at
 * [n_past, n_past + T); then rewrite *lay to read keys and values from the
 * cache (k_len = n_past + T, offset = n_past, the cache's strides) and point
 * *k, *v at layer l's cache. */
void mi_kv_append(mi_kv_cache *c, int l, int64_t n_past, mi_attn_layout *lay, const float **k,
                  const float **v);

/* After a successful pass over layers [first, stop) with T new positions. */
void mi_kv_commit(mi_kv_cache *c, const void *owner, int first, int stop, int64_t n_past,
                  int64_t T);

#endif
