/* params.c - where the transformer reads each parameter from (params.h). */
#include "model/params.h"

#include <string.h>

int mi_tf_param_index(const mi_transformer *m, const char *name)
{
    for (int i = 0; i < m->n_table; i++)
        if (strcmp(m->table[i].name, name) == 0) return i;
    return -1;
}

int64_t mi_tf_param_numel(const mi_transformer *m, int i)
{
    int64_t n = 1;
    for (int k = 0; k < m->table[i].ndim; k++) n *= m->table[i].shape[k];
    return n;
}

size_t mi_tf_param_bytes(const mi_transformer *m, int i)
{
    return (m->table[i].bf16 ? sizeof(uint16_t) : sizeof(float)) * (size_t)mi_tf_param_numel(m, i);
}

int mi_tf_param_is_tied(const mi_transformer *m, int i)
{
    return m->tied_unembed && m->table[i].offset == m->global_off[MI_G_W_U];
}

/* May table entry i be read transposed? The matrices the forward multiplies by
 * with their last axis as the product's columns (W_O, W_in, W_gate, W_out, an
 * untied W_U), stored as bfloat16; not W_qkv (read per q/k/v head block) nor
 * W_E (gathered by rows). */
static int transposable(const mi_transformer *m, int i)
{
    const mi_tf_param *p = &m->table[i];
    if (!p->bf16) return 0;
    if (p->offset == m->global_off[MI_G_W_U]) return 1;
    static const int rows[] = {MI_W_O, MI_W_IN, MI_W_GATE, MI_W_OUT};
    for (int l = 0; l < m->spec.n_layers; l++)
        for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++)
            if (m->layer_off[(size_t)l * MI_W_PER_LAYER + rows[r]] == p->offset) return 1;
    return 0;
}

mi_status mi_tf_param_set_external(mi_transformer *m, int i, void *data, int trans)
{
    mi_tf_param *p = &m->table[i];
    if (data && mi_tf_param_is_tied(m, i))
        return mi_fail(MI_ERR_VALUE, "set_param(%s): the unembedding is tied to embed.W_E "
                       "(set tied_unembed = False first)", p->name);
    if (data && trans && !transposable(m, i))
        return mi_fail(MI_ERR_VALUE, "set_param(%s, transposed=True): only the bfloat16 W_O, "
                       "W_in, W_gate, W_out and W_U of a bf16 model are read transposed", p->name);
    m->n_external += (data != NULL) - (p->data != NULL);
    p->data = data;
    p->trans = data && trans;
    return MI_OK;
}

int mi_tf_param_materialize(mi_transformer *m, int i)
{
    mi_tf_param *p = &m->table[i];
    if (!p->data) return 0;
    if (p->trans) {   /* [last, rest] -> [rest, last], blocked (bfloat16 only) */
        int64_t C = p->shape[p->ndim - 1], R = mi_tf_param_numel(m, i) / C;
        const uint16_t *src = p->data;
        uint16_t *dst = (uint16_t *)(m->params + p->offset);
        for (int64_t r0 = 0; r0 < R; r0 += 64)
            for (int64_t c = 0; c < C; c++)
                for (int64_t r = r0; r < R && r < r0 + 64; r++) dst[r * C + c] = src[c * R + r];
    } else {
        memcpy(m->params + p->offset, p->data, mi_tf_param_bytes(m, i));
    }
    mi_tf_param_set_external(m, i, NULL, 0);
    return 1;
}

mi_status mi_tf_tie(mi_transformer *m, int *dropped)
{
    const mi_tf_spec *s = &m->spec;
    *dropped = -1;
    if (m->tied_unembed) return MI_OK;
    if (s->d_vocab_out != s->d_vocab)
        return mi_fail(MI_ERR_VALUE, "tied_unembed: needs d_vocab_out == d_vocab, got %ld and %ld",
                       (long)s->d_vocab_out, (long)s->d_vocab);
    int i = mi_tf_param_index(m, "unembed.W_U");
    if (i >= 0 && m->table[i].data) {   /* W_U is no longer read */
        mi_tf_param_set_external(m, i, NULL, 0);
        *dropped = i;
    }
    m->tied_unembed = 1;
    return MI_OK;
}

void mi_tf_untie(mi_transformer *m)
{
    if (!m->tied_unembed) return;
    mi_tf_weight we = mi_tf_weight_at(m, m->global_off[MI_G_W_E]);
    void *W_U = m->params + m->global_off[MI_G_W_U];
    int64_t V = m->spec.d_vocab, D = m->spec.d_model;
    /* blocked transpose: W_U [D, V] from W_E [V, D], 64 vocabulary rows at a time
     * (both bfloat16 or both float32: MI_BF16_GLOBAL_PARAMS has both or neither) */
    for (int64_t v0 = 0; v0 < V; v0 += 64)
        for (int64_t d = 0; d < D; d++)
            for (int64_t v = v0; v < V && v < v0 + 64; v++) {
                if (we.bf16) ((uint16_t *)W_U)[d * V + v] = ((const uint16_t *)we.data)[v * D + d];
                else ((float *)W_U)[d * V + v] = ((const float *)we.data)[v * D + d];
            }
    m->tied_unembed = 0;
}

int mi_tf_same_layout(const mi_transformer *a, const mi_transformer *b)
{
    if (a->n_params != b->n_params || a->n_table != b->n_table) return 0;
    for (int i = 0; i < a->n_table; i++) {
        const mi_tf_param *p = &a->table[i], *q = &b->table[i];
        if (strcmp(p->name, q->name) != 0 || p->offset != q->offset || p->ndim != q->ndim
            || p->bf16 != q->bf16)
            return 0;
        for (int k = 0; k < p->ndim; k++)
            if (p->shape[k] != q->shape[k]) return 0;
    }
    return 1;
}

void mi_tf_share_params(mi_transformer *m, const mi_transformer *src)
{
    m->params = src->params;
    for (int i = 0; i < m->n_table; i++) {
        m->table[i].data = src->table[i].data;
        m->table[i].trans = src->table[i].trans;
    }
    m->n_external = src->n_external;
    m->tied_unembed = src->tied_unembed;
}
