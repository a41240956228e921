/* bpe_batch.h - encode many texts at once over the thread pool.
 *
 * Every text is encoded independently (mi_bpe_encode), so the ids do not
 * depend on the thread count. Each thread has its own scratch (word cache):
 * a pool keeps them warm between calls. The caller serialises calls on one
 * pool (and against mi_bpe_add_special on the tokenizer).
 */
#ifndef MI_BPE_BATCH_H
#define MI_BPE_BATCH_H

#include <stddef.h>

#include "common/status.h"
#include "io/bpe_tokenizer.h"

/* Scratches for the threads beyond the caller's. */
typedef struct {
    mi_bpe_scratch **scratch;
    int n;
} mi_bpe_pool;

void mi_bpe_pool_free(mi_bpe_pool *pool);

/* out[i] = the ids of texts[i] (len[i] bytes) with the flags of mi_bpe_encode,
 * for i < n, on up to mi_get_num_threads() threads; scratch is the calling
 * thread's own. On failure the status and message of the first failing text
 * (lowest index) are returned; out[] entries are then to be freed as they are. */
mi_status mi_bpe_encode_batch(const mi_bpe_tokenizer *tok, mi_bpe_scratch *scratch,
                              mi_bpe_pool *pool, const char *const *texts, const size_t *len,
                              size_t n, int flags, mi_bpe_ids *out);

#endif
