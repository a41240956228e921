/* reve_frontend.c - the REVE EEG front end (contract and shapes in reve_frontend.h).
 *
 * Data flow, per call:
 *   eeg [B,C,T] --unfold--> patches [B,C,P,S] --Linear(S,D)--> patch_emb [B,N,D]
 *   pos [Bp,C,3] --add t--> pos4 [Bp,N,4] --+--> fourier [Bp,N,D] --+
 *                                           +--> mlp4d   [Bp,N,D] --+--> LN --> pos_embed
 *   x [B,N,D] = patch_emb + pos_embed   (Bp is B or 1: one montage broadcast over the batch)
 * OpenMP only over independent rows; no reduction is split across threads.
 */
#include "model/reve_frontend.h"

#include <math.h>
#include <string.h>

#include "common/memory.h"
#include "common/threads.h"
#include "kernels/activation.h"
#include "kernels/gemm.h"
#include "kernels/norm.h"

mi_reve_config mi_reve_config_make(int64_t embed_dim, int64_t patch_size,
                                   int64_t patch_overlap, int64_t freqs)
{
    mi_reve_config c = {embed_dim, patch_size, patch_overlap, freqs, 0.1f, 0.4f, 1e-5f};
    return c;
}

mi_status mi_reve_check_config(const mi_reve_config *cfg)
{
    if (cfg->embed_dim <= 0 || cfg->embed_dim % 2)
        return mi_fail(MI_ERR_VALUE, "REVE: embed_dim must be a positive even number, got %lld",
                       (long long)cfg->embed_dim);
    if (cfg->patch_size <= 0)
        return mi_fail(MI_ERR_VALUE, "REVE: patch_size must be positive, got %lld",
                       (long long)cfg->patch_size);
    if (cfg->patch_overlap < 0 || cfg->patch_overlap >= cfg->patch_size)
        return mi_fail(MI_ERR_VALUE, "REVE: patch_overlap must be in [0, patch_size=%lld), got %lld",
                       (long long)cfg->patch_size, (long long)cfg->patch_overlap);
    if (cfg->freqs <= 0 || cfg->freqs > 256
        || cfg->freqs * cfg->freqs * cfg->freqs * cfg->freqs < cfg->embed_dim / 2)
        return mi_fail(MI_ERR_VALUE, "REVE: freqs=%lld gives freqs^4 phases, fewer than "
                       "embed_dim/2=%lld (FourierEmb4D needs freqs^4 >= embed_dim/2)",
                       (long long)cfg->freqs, (long long)(cfg->embed_dim / 2));
    if (!(cfg->ln_eps > 0.0f) || !isfinite(cfg->margin) || !isfinite(cfg->increment_time))
        return mi_fail(MI_ERR_VALUE, "REVE: ln_eps must be > 0 and margin/increment_time finite");
    return MI_OK;
}

mi_status mi_reve_n_patches(int64_t T, int64_t patch_size, int64_t patch_overlap, int64_t *P)
{
    int64_t step = patch_size - patch_overlap;
    if (patch_size <= 0 || step <= 0)
        return mi_fail(MI_ERR_VALUE, "REVE: patch_size=%lld and patch_overlap=%lld give step %lld; "
                       "need patch_size > patch_overlap >= 0", (long long)patch_size,
                       (long long)patch_overlap, (long long)step);
    if (T < patch_size)
        return mi_fail(MI_ERR_VALUE, "eeg: signal of %lld samples is shorter than one patch "
                       "(patch_size=%lld)", (long long)T, (long long)patch_size);
    *P = (T - patch_size) / step + 1;
    return MI_OK;
}

mi_status mi_reve_check_finite(const char *what, const float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return mi_fail(MI_ERR_VALUE, "%s: non-finite value %g at flat index %lld", what,
                           (double)x[i], (long long)i);
    return MI_OK;
}

void mi_reve_unfold(const float *eeg, int64_t rows, int64_t T, int64_t S, int64_t step,
                    int64_t P, float *patches)
{
    #pragma omp parallel for schedule(static) if (rows * P * S > 65536) num_threads(mi_get_num_threads())
    for (int64_t r = 0; r < rows; r++)
        for (int64_t p = 0; p < P; p++)
            memcpy(patches + (r * P + p) * S, eeg + r * T + p * step, sizeof(float) * (size_t)S);
}

void mi_reve_patch_embed(const float *patches, int64_t rows, int64_t S, int64_t D,
                         const float *w, const float *b, float *out)
{
    /* Linear layout W[D, S]: out = patches @ W^T + b */
    mi_sgemm(0, 1, rows, D, S, patches, S, w, S, b, 0.0f, out, D);
}

void mi_reve_add_time_patch(const float *pos, int64_t B, int64_t C, int64_t P, float *pos4)
{
    for (int64_t bc = 0; bc < B * C; bc++)
        for (int64_t p = 0; p < P; p++) {
            float *o = pos4 + (bc * P + p) * 4;
            o[0] = pos[bc * 3 + 0];
            o[1] = pos[bc * 3 + 1];
            o[2] = pos[bc * 3 + 2];
            o[3] = (float)p;
        }
}

mi_status mi_reve_fourier4d(const float *pos4, int64_t rows, int64_t D, int64_t freqs,
                            float increment_time, float margin, float *out)
{
    int64_t half = D / 2;
    if (D <= 0 || D % 2 || freqs <= 0 || freqs > 256 || freqs * freqs * freqs * freqs < half)
        return mi_fail(MI_ERR_VALUE, "fourier4d: dim=%lld needs an even dim with freqs^4 >= dim/2, "
                       "got freqs=%lld", (long long)D, (long long)freqs);
    /* Match torch's float32 preprocessing of the coordinates exactly (t*0.1 and
     * +margin are rounded to float there), then form phases in double. */
    const double two_pi_over_width = 2.0 * 3.14159265358979323846 / (1.0 + 2.0 * (double)margin);
    #pragma omp parallel for schedule(static) if (rows * D > 32768) num_threads(mi_get_num_threads())
    for (int64_t r = 0; r < rows; r++) {
        const float *q = pos4 + r * 4;
        double c[4];
        for (int k = 0; k < 4; k++) {
            float v = k == 3 ? q[3] * increment_time : q[k];
            c[k] = (double)(v + margin) * two_pi_over_width;
        }
        float *o = out + r * D;
        /* phase index j = ((fx*F + fy)*F + fz)*F + ft, x slowest, t fastest */
        for (int64_t j = 0; j < half; j++) {
            int64_t ft = j % freqs, fz = (j / freqs) % freqs;
            int64_t fy = (j / (freqs * freqs)) % freqs, fx = j / (freqs * freqs * freqs);
            double ph = (double)fx * c[0] + (double)fy * c[1] + (double)fz * c[2] + (double)ft * c[3];
            o[j] = (float)cos(ph);
            o[half + j] = (float)sin(ph);
        }
    }
    return MI_OK;
}

void mi_reve_mlp4d(const float *pos4, int64_t rows, int64_t D, const float *w,
                   const float *ln_w, const float *ln_b, float eps, float *out)
{
    mi_sgemm(0, 1, rows, D, 4, pos4, 4, w, 4, NULL, 0.0f, out, D);
    mi_gelu(out, out, rows * D);
    mi_layer_norm(out, ln_w, ln_b, eps, rows, D, out, NULL);
}

void mi_reve_pos_embed(const float *fourier, const float *mlp4d, int64_t rows, int64_t D,
                       const float *ln_w, const float *ln_b, float eps, float *out)
{
    #pragma omp parallel for schedule(static) if (rows * D > 65536) num_threads(mi_get_num_threads())
    for (int64_t i = 0; i < rows * D; i++) out[i] = fourier[i] + mlp4d[i];
    mi_layer_norm(out, ln_w, ln_b, eps, rows, D, out, NULL);
}

mi_status mi_reve_frontend(const mi_reve_config *cfg, const mi_reve_weights *w,
                           const float *eeg, int64_t B, int64_t C, int64_t T,
                           const float *pos, int64_t pos_batch, int64_t pos_channels,
                           mi_reve_outputs *out)
{
    MI_TRY(mi_reve_check_config(cfg));
    if (B <= 0 || C <= 0)
        return mi_fail(MI_ERR_VALUE, "eeg: need at least one example and one channel, got "
                       "[%lld, %lld, %lld]", (long long)B, (long long)C, (long long)T);
    if (pos_channels != C)
        return mi_fail(MI_ERR_VALUE, "pos: has %lld channels but eeg has %lld (pos must be "
                       "[B, C, 3] with one (x, y, z) per eeg channel)", (long long)pos_channels,
                       (long long)C);
    if (pos_batch != B && pos_batch != 1)
        return mi_fail(MI_ERR_VALUE, "pos: batch %lld must be 1 (one montage for all) or eeg's "
                       "batch %lld", (long long)pos_batch, (long long)B);
    if (!out->x) return mi_fail(MI_ERR_INTERNAL, "mi_reve_frontend: no output buffer x");
    int64_t P = 0, S = cfg->patch_size, D = cfg->embed_dim, step = S - cfg->patch_overlap;
    MI_TRY(mi_reve_n_patches(T, S, cfg->patch_overlap, &P));
    MI_TRY(mi_reve_check_finite("eeg", eeg, B * C * T));
    MI_TRY(mi_reve_check_finite("pos", pos, pos_batch * C * 3));
    int64_t N = C * P, prow = pos_batch * N;

    /* Scratch for intermediates the caller does not want. */
    size_t need = 0;
    if (!out->patches) need += mi_align_up(sizeof(float) * (size_t)(B * C * P * S));
    if (!out->patch_emb) need += mi_align_up(sizeof(float) * (size_t)(B * N * D));
    if (!out->pos4) need += mi_align_up(sizeof(float) * (size_t)(prow * 4));
    if (!out->fourier) need += mi_align_up(sizeof(float) * (size_t)(prow * D));
    if (!out->mlp4d) need += mi_align_up(sizeof(float) * (size_t)(prow * D));
    if (!out->pos_embed) need += mi_align_up(sizeof(float) * (size_t)(prow * D));
    char *scratch = need ? mi_malloc(need) : NULL;
    if (need && !scratch)
        return mi_fail(MI_ERR_NOMEM, "REVE front end: cannot allocate %zu bytes of scratch", need);
    char *cur = scratch;
#define TAKE(field, count) float *field = out->field; \
    if (!field) { field = (float *)cur; cur += mi_align_up(sizeof(float) * (size_t)(count)); }
    TAKE(patches, B * C * P * S)
    TAKE(patch_emb, B * N * D)
    TAKE(pos4, prow * 4)
    TAKE(fourier, prow * D)
    TAKE(mlp4d, prow * D)
    TAKE(pos_embed, prow * D)
#undef TAKE

    mi_reve_unfold(eeg, B * C, T, S, step, P, patches);
    mi_reve_patch_embed(patches, B * N, S, D, w->patch_w, w->patch_b, patch_emb);
    mi_reve_add_time_patch(pos, pos_batch, C, P, pos4);
    mi_status st = mi_reve_fourier4d(pos4, prow, D, cfg->freqs, cfg->increment_time,
                                     cfg->margin, fourier);
    if (st == MI_OK) {
        mi_reve_mlp4d(pos4, prow, D, w->mlp4d_w, w->mlp4d_ln_w, w->mlp4d_ln_b, cfg->ln_eps, mlp4d);
        mi_reve_pos_embed(fourier, mlp4d, prow, D, w->ln_w, w->ln_b, cfg->ln_eps, pos_embed);
        float *x = out->x;
        #pragma omp parallel for schedule(static) if (B * N * D > 65536) num_threads(mi_get_num_threads())
        for (int64_t i = 0; i < B * N; i++) {
            const float *pe = pos_embed + (pos_batch == 1 ? i % N : i) * D;
            for (int64_t d = 0; d < D; d++) x[i * D + d] = patch_emb[i * D + d] + pe[d];
        }
    }
    mi_free(scratch);
    return st;
}
