/* patch.c - the activation-patching engine (contract in patch.h).
 *
 * A grid's cells of one start layer run as passes of per_pass cells: the
 * corrupted residual stream entering the layer is tiled per_pass times along
 * the batch axis (and the key mask with it), the pass fires the patched
 * points into patch_hook, which copies each cell's slice of the clean
 * activation into its copy of the batch, and the readout reads the rows a
 * metric needs. One arena (planned for the largest pass) and one tile buffer
 * serve every pass of the call.
 *
 * With a row readout the pass runs on a copy of the model whose spec has no
 * head (the pass ends with the residual stream after the last block, no
 * logits buffer), and the final norm and the unembedding columns run here on
 * the rows read: the same kernels as the forward's (mi_tl_norm; the
 * unembedding product as mi_sgemm for a log-sum-exp, dot products in float64
 * for single columns).
 */
#include "model/patch.h"
#include "model/arena.h"
#include "model/kv_cache.h"

#include <math.h>
#include <string.h>

#include "common/memory.h"
#include "common/threads.h"
#include "kernels/gemm.h"
#include "kernels/norm.h"

typedef struct {
    const mi_patch_source *src;
    int n_src;
    const mi_patch_cell *cells;   /* this pass's cells: cell j patches copy j */
    int64_t n, B;
    int64_t j0, n_cells;          /* this pass's first cell and the call's cells (per_cell sources) */
    int64_t pos0;                 /* the view's first query position (position skipping) */
} patch_ctx;

/* A source's extents in [0, T) coordinates (cext[1..3]), the view's offset
 * into them (off: pos0 on the position axis) and the floats per batch row;
 * checks the source's size against the view's. */
static mi_status source_extents(const patch_ctx *c, const mi_patch_source *s, const int64_t ext[4],
                                int64_t off[4], int64_t cext[4], int64_t *per_b)
{
    off[0] = off[1] = off[2] = off[3] = 0;
    if (s->pos_axis >= 1 && s->pos_axis <= 3) off[s->pos_axis] = c->pos0;
    cext[0] = ext[0];
    for (int a = 1; a < 4; a++) cext[a] = ext[a] + off[a];
    *per_b = cext[1] * cext[2] * cext[3];
    int64_t copies = (s->per_cell || s->capture) ? c->n_cells : 1;
    if (s->numel != copies * (s->batch_shared ? 1 : c->B) * *per_b)
        return mi_fail(MI_ERR_VALUE, "patch: the %s activation has %ld values, the corrupted "
                       "one %ld x %ld x [%ld, %ld, %ld]: the two runs' shapes differ",
                       s->capture ? "captured" : "clean", (long)s->numel, (long)copies, (long)c->B,
                       (long)cext[1], (long)cext[2], (long)cext[3]);
    return MI_OK;
}

/* Copy the slice idx (-1: whole axis) of the clean activation cl ([B, cext])
 * into copy j of the batch. */
static mi_status copy_slice(const patch_ctx *c, const mi_tensor_view *v, const int64_t ext[4],
                            const int64_t st[4], const int64_t off[4], const int64_t cext[4],
                            int64_t per_b, const int64_t idx[3], const float *cl0, int64_t j,
                            int batch_shared)
{
    /* lo/hi in view coordinates */
    int64_t lo[4] = {0, 0, 0, 0}, hi[4] = {0, ext[1], ext[2], ext[3]};
    for (int a = 1; a < 4; a++) {
        int64_t i = idx[a - 1];
        if (i < 0) continue;
        if (i >= cext[a])
            return mi_fail(MI_ERR_INDEX, "patch: index %ld on axis %d of the activation is out "
                           "of range for its extent %ld", (long)i, a, (long)cext[a]);
        if (i < off[a])
            return mi_fail(MI_ERR_INTERNAL, "patch: position %ld is before the first recomputed "
                           "position %ld", (long)i, (long)off[a]);
        lo[a] = i - off[a];
        hi[a] = lo[a] + 1;
    }
    for (int64_t b = 0; b < c->B; b++) {
        float *dst = v->data + (j * c->B + b) * st[0];
        const float *cl = cl0 + (batch_shared ? 0 : b * per_b);
        for (int64_t i1 = lo[1]; i1 < hi[1]; i1++)
            for (int64_t i2 = lo[2]; i2 < hi[2]; i2++)
                for (int64_t i3 = lo[3]; i3 < hi[3]; i3++)
                    dst[i1 * st[1] + i2 * st[2] + i3 * st[3]] =
                        cl[((i1 + off[1]) * cext[2] + i2 + off[2]) * cext[3] + i3 + off[3]];
    }
    return MI_OK;
}

/* At `point`: the every_cell sources' slices into every copy, then each cell's
 * own slice of its clean activation into its copy of the batch, then the
 * captures. The view covers query positions [pos0, T) on the source's
 * pos_axis; the clean activation covers [0, T). */
static mi_status patch_hook(void *vctx, int point, const mi_tensor_view *v)
{
    const patch_ctx *c = vctx;
    int64_t ext[4] = {1, 1, 1, 1}, st[4] = {0, 0, 0, 0};
    for (int i = 0; i < v->ndim; i++) { ext[i] = v->shape[i]; st[i] = v->strides[i]; }
    int64_t off[4], cext[4], per_b;
    for (int i = 0; i < c->n_src; i++) {
        const mi_patch_source *s = &c->src[i];
        if (s->point != point || !s->every_cell || !s->clean) continue;
        MI_TRY(source_extents(c, s, ext, off, cext, &per_b));
        for (int64_t j = 0; j < c->n; j++)
            MI_TRY(copy_slice(c, v, ext, st, off, cext, per_b, s->idx,
                              s->clean + (s->per_cell ? (c->j0 + j) * c->B * per_b : 0), j,
                              s->batch_shared));
    }
    for (int64_t j = 0; j < c->n; j++) {
        const mi_patch_cell *cell = &c->cells[j];
        if (cell->source < 0) continue;
        const mi_patch_source *s = &c->src[cell->source];
        if (s->point != point || !s->clean) continue;
        MI_TRY(source_extents(c, s, ext, off, cext, &per_b));
        MI_TRY(copy_slice(c, v, ext, st, off, cext, per_b, cell->idx,
                          s->clean + (s->per_cell ? (c->j0 + j) * c->B * per_b : 0), j,
                          s->batch_shared));
    }
    for (int i = 0; i < c->n_src; i++) {
        const mi_patch_source *s = &c->src[i];
        if (s->point != point || !s->capture) continue;
        MI_TRY(source_extents(c, s, ext, off, cext, &per_b));
        for (int64_t r = 0; r < c->n * c->B; r++) {
            float *dst = s->capture + (c->j0 * c->B + r) * per_b;
            const float *row = v->data + r * st[0];
            for (int64_t i1 = 0; i1 < ext[1]; i1++)
                for (int64_t i2 = 0; i2 < ext[2]; i2++)
                    for (int64_t i3 = 0; i3 < ext[3]; i3++)
                        dst[(i1 * ext[2] + i2) * ext[3] + i3] = row[i1 * st[1] + i2 * st[2] + i3 * st[3]];
        }
    }
    return MI_OK;
}

/* A key/value cache for passes of nb = n * B rows holding, for layers
 * [start, L), the corrupted run's keys and values of positions [0, pos0)
 * (each copy of the batch the same), frozen so that the passes leave it so. */
static mi_status fill_prefix(mi_kv_cache *kv, const mi_transformer *m, int start, int64_t n,
                             int64_t B, int64_t T, const float *key_mask,
                             const mi_patch_prefix *pf)
{
    const mi_tf_spec *s = &m->spec;
    int64_t H = mi_tf_kv_heads(s), Dh = s->d_head, nb = n * B, p0 = pf->pos0;
    if (kv->len && kv->batch != nb) mi_kv_free(kv);
    if (!kv->len) MI_TRY(mi_kv_init(kv, s->n_layers, nb, H, Dh, T));
    for (int64_t l = 0; l < s->n_layers; l++) kv->len[l] = 0;
    kv->frozen = 0;
    kv->owner = NULL;
    int64_t past;
    MI_TRY(mi_kv_prepare(kv, m, nb, T, start, (int)s->n_layers, &past));
    int64_t A = kv->alloc;
    int64_t L = s->n_layers;
    #pragma omp parallel for schedule(static) num_threads(mi_get_num_threads())
    for (int64_t task = 0; task < (L - start) * nb * H; task++) {
        int64_t li = task / (nb * H), b = task / H % nb, h = task % H, l = start + li;
        float *ck = kv->k + ((l * nb + b) * H + h) * A * Dh, *cv = kv->v + ((l * nb + b) * H + h) * A * Dh;
        const float *sk = pf->k[li] + (b % B) * T * H * Dh + h * Dh;
        const float *sv = pf->v[li] + (b % B) * T * H * Dh + h * Dh;
        for (int64_t t = 0; t < p0; t++) {
            memcpy(ck + t * Dh, sk + t * H * Dh, sizeof(float) * (size_t)Dh);
            memcpy(cv + t * Dh, sv + t * H * Dh, sizeof(float) * (size_t)Dh);
        }
    }
    for (int64_t b = 0; b < nb; b++)
        for (int64_t t = 0; t < p0; t++)
            kv->mask[b * A + t] = key_mask ? (key_mask[(b % B) * T + t] != 0.0f) : 1.0f;
    for (int64_t l = start; l < L; l++) kv->len[l] = p0;
    kv->frozen = 1;
    return MI_OK;
}

static mi_status check_args(const mi_transformer *m, int start_layer, int64_t B, int64_t T,
                            const mi_patch_source *src, int n_src, uint8_t *flags)
{
    const mi_tf_spec *s = &m->spec;
    if (s->no_head)
        return mi_fail(MI_ERR_UNSUPPORTED, "patch: the model has no unembedding (no logits to "
                       "measure a patch by)");
    if (start_layer < 0 || start_layer >= s->n_layers)
        return mi_fail(MI_ERR_VALUE, "patch: start layer %d is outside [0, n_layers=%ld)",
                       start_layer, (long)s->n_layers);
    if (B < 1 || T < 1 || T > s->n_ctx)
        return mi_fail(MI_ERR_VALUE, "patch: a [%ld, %ld] input (positions must be in [1, n_ctx=%ld])",
                       (long)B, (long)T, (long)s->n_ctx);
    for (int i = 0; i < n_src; i++) {
        int p = src[i].point, scope, layer;
        if (!mi_tf_point_present(s, p))
            return mi_fail(MI_ERR_KEY, "patch: hook point %d does not fire in this model", p);
        mi_tf_point_row(s, p, &scope, &layer);
        if (scope != SCOPE_LAYER || layer < start_layer)
            return mi_fail(MI_ERR_VALUE, "patch: hook point %d is not in a block at or after the "
                           "start layer %d", p, start_layer);
        if (flags) flags[p] |= MI_HOOK_TRANSIENT;
    }
    return MI_OK;
}

mi_status mi_patch_pass_bytes(const mi_transformer *m, int start_layer, int64_t B, int64_t T,
                              const mi_patch_source *src, int n_src, int64_t per_pass,
                              int rows_only, size_t *bytes)
{
    int np = mi_tf_n_points(&m->spec);
    uint8_t *flags = mi_calloc((size_t)np);
    if (!flags) return mi_fail(MI_ERR_NOMEM, "patch: flags");
    mi_status st = check_args(m, start_layer, B, T, src, n_src, flags);
    mi_transformer mh = *m;
    mh.spec.no_head = rows_only;
    mi_tf_plan plan = {0};
    if (st == MI_OK) st = mi_tf_plan_call(&mh, per_pass * B, T, start_layer, (int)m->spec.n_layers, flags, &plan);
    if (st == MI_OK) *bytes = plan.n_floats * sizeof(float);
    mi_tf_plan_free(&plan);
    mi_free(flags);
    return st;
}

/* The rows of this pass's n cells: final norm of resid [n*B, T, D] at the
 * readout rows, then the columns (and log-sum-exp) into out [n, R, K + lse]. */
static mi_status read_rows(const mi_transformer *m, const float *resid, int64_t n, int64_t B,
                           int64_t T, const mi_patch_readout *ro, float *X, float *Y, float *scale,
                           float *logits, double *out)
{
    const mi_tf_spec *s = &m->spec;
    int64_t D = s->d_model, Vo = s->d_vocab_out, R = ro->n_rows, K = ro->n_cols, nR = n * R;
    int64_t width = K + (ro->lse ? 1 : 0);
    #pragma omp parallel for schedule(static) num_threads(mi_get_num_threads())
    for (int64_t i = 0; i < nR; i++) {
        int64_t j = i / R, r = i % R;
        const int64_t *bt = ro->rows + 2 * r;
        memcpy(X + i * D, resid + ((j * B + bt[0]) * T + bt[1]) * D, sizeof(float) * (size_t)D);
    }
    const float *x = X;
    if (s->norm != MI_NORM_NONE) {
        const float *w = mi_tf_tensor(m, m->global_off[MI_G_LNF_W]);
        const float *b = mi_tf_tensor(m, m->global_off[MI_G_LNF_B]);
        int centre = s->norm == MI_NORM_LN || s->norm == MI_NORM_LNPRE;
        mi_tl_norm(centre, X, NULL, NULL, w, b, s->eps, nR, D, scale, w ? NULL : Y, w ? Y : NULL);
        x = Y;
    }
    const float *b_U = mi_tf_tensor(m, m->global_off[MI_G_B_U]);
    const float *W = m->tied_unembed ? mi_tf_tensor(m, m->global_off[MI_G_W_E])
                                     : mi_tf_tensor(m, m->global_off[MI_G_W_U]);
    if (ro->lse) {
        if (m->tied_unembed)
            mi_sgemm(0, 1, nR, Vo, D, x, D, W, D, b_U, 0.0f, logits, Vo);
        else
            mi_sgemm(0, 0, nR, Vo, D, x, D, W, Vo, b_U, 0.0f, logits, Vo);
    }
    #pragma omp parallel for schedule(static) num_threads(mi_get_num_threads())
    for (int64_t i = 0; i < nR; i++) {
        int64_t r = i % R;
        double *o = out + i * width;
        const int64_t *tok = ro->cols + r * K;
        if (ro->lse) {
            const float *row = logits + i * Vo;
            float mx = row[0];
            for (int64_t v = 1; v < Vo; v++) mx = row[v] > mx ? row[v] : mx;
            double sum = 0.0;
            for (int64_t v = 0; v < Vo; v++) sum += exp((double)row[v] - (double)mx);
            for (int64_t k = 0; k < K; k++) o[k] = row[tok[k]];
            o[K] = (double)mx + log(sum);
        } else {
            const float *xr = x + i * D;
            for (int64_t k = 0; k < K; k++) {
                double acc = b_U ? (double)b_U[tok[k]] : 0.0;
                if (m->tied_unembed) {
                    const float *wr = W + tok[k] * D;
                    for (int64_t d = 0; d < D; d++) acc += (double)xr[d] * (double)wr[d];
                } else {
                    for (int64_t d = 0; d < D; d++) acc += (double)xr[d] * (double)W[d * Vo + tok[k]];
                }
                o[k] = acc;
            }
        }
    }
    return MI_OK;
}

/* mi_patch_run over blocks [start_layer, stop_layer); capture_only: no
 * readout, no logits (the captures are the output). */
static mi_status run_passes(const mi_transformer *m, int start_layer, int stop_layer,
                            int capture_only, int64_t B,
                            int64_t T, const float *resid, const float *key_mask,
                            const mi_patch_source *src, int n_src,
                            const mi_patch_cell *cells, int64_t n_cells, int64_t per_pass,
                            const mi_patch_prefix *prefix,
                            const mi_patch_readout *ro, double *out_values, float *out_logits)
{
    const mi_tf_spec *s = &m->spec;
    int64_t D = s->d_model, Vo = s->d_vocab_out;
    int rows_only = !capture_only && ro && ro->n_rows > 0;
    int64_t p0 = prefix ? prefix->pos0 : 0;
    if (n_cells <= 0) return MI_OK;
    if (stop_layer <= start_layer || stop_layer > s->n_layers || (!capture_only && stop_layer != s->n_layers))
        return mi_fail(MI_ERR_VALUE, "patch: stop layer %d is outside (start layer %d, n_layers=%ld]",
                       stop_layer, start_layer, (long)s->n_layers);
    for (int i = 0; i < n_src; i++) {
        int scope, layer;
        if (!src[i].clean == !src[i].capture)
            return mi_fail(MI_ERR_VALUE, "patch: source %d must either patch (a clean activation) "
                           "or capture", i);
        if (src[i].batch_shared && (src[i].per_cell || src[i].capture))
            return mi_fail(MI_ERR_VALUE, "patch: source %d: a batch-shared activation is one "
                           "[d1, d2, d3] for every cell", i);
        if (src[i].capture && p0 > 0)
            return mi_fail(MI_ERR_VALUE, "patch: captures need every position computed");
        if ((unsigned)src[i].point < (unsigned)mi_tf_n_points(s)) {
            mi_tf_point_row(s, src[i].point, &scope, &layer);
            if (scope == SCOPE_LAYER && layer >= stop_layer)
                return mi_fail(MI_ERR_VALUE, "patch: hook point %d is in block %d, past the last "
                               "block run (%d)", src[i].point, layer, stop_layer - 1);
        }
    }
    if (per_pass < 1) per_pass = 1;
    if (per_pass > n_cells) per_pass = n_cells;
    if (p0 < 0 || p0 >= T)
        return mi_fail(MI_ERR_VALUE, "patch: first recomputed position %ld is outside [0, %ld)",
                       (long)p0, (long)T);
    if (p0 > 0 && (!s->causal || !rows_only || !prefix->k || !prefix->v))
        return mi_fail(MI_ERR_VALUE, "patch: skipping positions needs causal attention, a row "
                       "readout and the corrupted run's keys and values");
    for (int64_t j = 0; j < n_cells; j++)
        if (cells[j].source < -1 || cells[j].source >= n_src)
            return mi_fail(MI_ERR_INDEX, "patch: cell %ld names source %d of %d", (long)j,
                           cells[j].source, n_src);
    if (rows_only) {
        for (int64_t r = 0; r < ro->n_rows; r++) {
            const int64_t *bt = ro->rows + 2 * r;
            if (bt[0] < 0 || bt[0] >= B || bt[1] < p0 || bt[1] >= T)
                return mi_fail(MI_ERR_INDEX, "patch: readout row (%ld, %ld) is outside the [%ld, %ld] "
                               "input (or before the first recomputed position %ld)", (long)bt[0],
                               (long)bt[1], (long)B, (long)T, (long)p0);
            for (int64_t k = 0; k < ro->n_cols; k++) {
                int64_t t = ro->cols[r * ro->n_cols + k];
                if (t < 0 || t >= Vo)
                    return mi_fail(MI_ERR_INDEX, "patch: token id %ld is outside [0, d_vocab_out=%ld)",
                                   (long)t, (long)Vo);
            }
        }
    } else if (!out_logits && !capture_only) {
        return mi_fail(MI_ERR_VALUE, "patch: no readout rows and no logits output");
    }
    int np = mi_tf_n_points(s);
    uint8_t *flags = mi_calloc((size_t)np);
    if (!flags) return mi_fail(MI_ERR_NOMEM, "patch: flags");
    mi_status st = check_args(m, start_layer, B, T, src, n_src, flags);
    mi_transformer mh = *m;
    mh.spec.no_head = rows_only || capture_only;
    mi_tf_plan plan = {0};
    mi_kv_cache kv = {0};
    float *arena = NULL, *tile = NULL, *mask = NULL, *X = NULL, *Y = NULL, *scale = NULL, *logits = NULL;
    int64_t *rows = NULL;
    int64_t Tn = T - p0;   /* positions each pass computes */
    int64_t nb = per_pass * B, R = rows_only ? ro->n_rows : 0;
    size_t width = rows_only ? (size_t)(ro->n_cols + (ro->lse ? 1 : 0)) : 0;
    size_t arena_floats = 0;
    if (st != MI_OK) goto done;
    tile = mi_malloc(sizeof(float) * (size_t)(nb * Tn * D));
    if (key_mask) mask = mi_malloc(sizeof(float) * (size_t)(nb * Tn));
    if (rows_only) {
        X = mi_malloc(sizeof(float) * (size_t)(per_pass * R * D));
        Y = mi_malloc(sizeof(float) * (size_t)(per_pass * R * D));
        scale = mi_malloc(sizeof(float) * (size_t)(per_pass * R));
        rows = mi_malloc(sizeof(int64_t) * (size_t)(2 * R));
        if (ro->lse) logits = mi_malloc(sizeof(float) * (size_t)(per_pass * R * Vo));
    }
    if (!tile || (key_mask && !mask) ||
        (rows_only && (!X || !Y || !scale || !rows || (ro->lse && !logits)))) {
        st = mi_fail(MI_ERR_NOMEM, "patch: cannot allocate the buffers of %ld cells per pass",
                     (long)per_pass);
        goto done;
    }
    /* the readout rows in the pass's positions */
    mi_patch_readout rro = {0};
    if (rows_only) {
        for (int64_t r = 0; r < R; r++) {
            rows[2 * r] = ro->rows[2 * r];
            rows[2 * r + 1] = ro->rows[2 * r + 1] - p0;
        }
        rro = *ro;
        rro.rows = rows;
    }
    for (int64_t j = 0; j < per_pass; j++)
        for (int64_t b = 0; b < B; b++) {
            memcpy(tile + ((j * B + b) * Tn) * D, resid + (b * T + p0) * D, sizeof(float) * (size_t)(Tn * D));
            if (mask) memcpy(mask + (j * B + b) * Tn, key_mask + b * T + p0, sizeof(float) * (size_t)Tn);
        }
    for (int64_t j0 = 0; j0 < n_cells; j0 += per_pass) {
        int64_t n = n_cells - j0 < per_pass ? n_cells - j0 : per_pass;
        mi_tf_plan_free(&plan);
        st = p0 ? mi_tf_plan_call_kv(&mh, n * B, Tn, p0, start_layer, stop_layer, flags, &plan)
                : mi_tf_plan_call(&mh, n * B, Tn, start_layer, stop_layer, flags, &plan);
        if (st != MI_OK) goto done;
        if (plan.n_floats > arena_floats) {   /* the first pass is the largest: one allocation */
            mi_free(arena);
            arena_floats = plan.n_floats;
            if (!(arena = mi_malloc(arena_floats * sizeof(float)))) {
                st = mi_fail(MI_ERR_NOMEM, "patch: cannot allocate the activations of %ld cells per "
                             "pass (%zu bytes)", (long)n, arena_floats * sizeof(float));
                goto done;
            }
        }
        /* the previous pass's patches sit in the arena, not in the tile: the
         * forward copies the tile in afresh */
        patch_ctx ctx = {src, n_src, cells + j0, n, B, j0, n_cells, p0};
        if (p0) {
            st = fill_prefix(&kv, m, start_layer, n, B, T, key_mask, prefix);
            if (st == MI_OK)
                st = mi_tf_forward_kv(&mh, &plan, arena, flags, NULL, tile, NULL, mask, &kv,
                                      patch_hook, &ctx);
        } else {
            st = mi_tf_forward(&mh, &plan, arena, flags, NULL, tile, NULL, mask, patch_hook, &ctx);
        }
        if (st != MI_OK) goto done;
        const float *o = mi_tf_output(&mh, &plan, arena);
        if (capture_only) {
            continue;
        } else if (rows_only) {
            st = read_rows(m, o, n, B, Tn, &rro, X, Y, scale, logits,
                           out_values + (size_t)j0 * (size_t)R * width);
            if (st != MI_OK) goto done;
        } else {
            memcpy(out_logits + (size_t)j0 * (size_t)(B * T * Vo), o, sizeof(float) * (size_t)(n * B * T * Vo));
        }
    }
done:
    mi_tf_plan_free(&plan);
    if (kv.len) mi_kv_free(&kv);
    mi_free(flags); mi_free(arena); mi_free(tile); mi_free(mask);
    mi_free(X); mi_free(Y); mi_free(scale); mi_free(logits); mi_free(rows);
    return st;
}

mi_status mi_patch_run(const mi_transformer *m, int start_layer, int64_t B, int64_t T,
                       const float *resid, const float *key_mask,
                       const mi_patch_source *src, int n_src,
                       const mi_patch_cell *cells, int64_t n_cells, int64_t per_pass,
                       const mi_patch_prefix *prefix,
                       const mi_patch_readout *ro, double *out_values, float *out_logits)
{
    return run_passes(m, start_layer, (int)m->spec.n_layers, 0, B, T, resid, key_mask, src, n_src,
                      cells, n_cells, per_pass, prefix, ro, out_values, out_logits);
}

mi_status mi_patch_capture_run(const mi_transformer *m, int start_layer, int stop_layer, int64_t B,
                               int64_t T, const float *resid, const float *key_mask,
                               const mi_patch_source *src, int n_src,
                               const mi_patch_cell *cells, int64_t n_cells, int64_t per_pass)
{
    int any = 0;
    for (int i = 0; i < n_src; i++) any |= src[i].capture != NULL;
    if (!any) return mi_fail(MI_ERR_VALUE, "patch: a capture run without a capture source");
    return run_passes(m, start_layer, stop_layer, 1, B, T, resid, key_mask, src, n_src, cells, n_cells,
                      per_pass, NULL, NULL, NULL, NULL);
}
