/* reve_frontend.h - the REVE EEG front end: signal + electrode positions ->
 * the residual stream input of the shared transformer.
 *
 * Shapes (B batch, C channels, T samples, S patch_size, P patches,
 *         N = C*P tokens per example, D embed_dim):
 *   eeg        [B, C, T]
 *   pos        [B, C, 3]          electrode (x, y, z)
 *   patches    [B, C, P, S]       eeg.unfold(2, S, S - overlap); P = (T - S) / step + 1,
 *                                 the partial last window dropped (as torch.unfold)
 *   patch_emb  [B, N, D]          patches @ patch_w^T + patch_b  (Linear(S, D))
 *   pos4       [B, N, 4]          (x, y, z, t), t = 0..P-1, tokens channel-major (c p)
 *   fourier    [B, N, D]          FourierEmb4D(D, freqs)(pos4)      (seed "step 3b")
 *   mlp4d      [B, N, D]          LayerNorm(GELU(pos4 @ mlp_w^T))   (seed "step 3a")
 *   pos_embed  [B, N, D]          LayerNorm(fourier + mlp4d)        (seed "embeddings")
 *   x          [B, N, D]          patch_emb + pos_embed: the residual stream input
 *
 * FourierEmb4D: t *= increment_time (0.1); all four coords += margin (0.4);
 * phase[fx,fy,fz,ft] = 2*pi*(fx*x + fy*y + fz*z + ft*t) / (1 + 2*margin),
 * f* = 0..freqs-1, x slowest, t fastest; the first D/2 phases are kept and the
 * output is cat(cos(phase), sin(phase)). Phases are computed in double and
 * rounded once (torch does them in float32; the difference is float32 noise).
 *
 * Weights use the PyTorch Linear layout W[out, in]. Every function validates
 * its sizes and returns an mi_status (message names the argument and shape);
 * inputs are checked for non-finite values before any parallel work.
 */
#ifndef MI_REVE_FRONTEND_H
#define MI_REVE_FRONTEND_H

#include <stdint.h>

#include "common/status.h"

typedef struct {
    int64_t embed_dim;      /* D */
    int64_t patch_size;     /* S */
    int64_t patch_overlap;  /* step = S - overlap */
    int64_t freqs;          /* Fourier frequencies per axis; freqs^4 >= D/2 */
    float increment_time;   /* 0.1 in REVE */
    float margin;           /* 0.4 in REVE */
    float ln_eps;           /* 1e-5 (torch LayerNorm default) for mlp4d's LN and ln */
} mi_reve_config;

/* The front end's parameters (not owned). */
typedef struct {
    const float *patch_w;   /* [D, S] to_patch_embedding[0].weight */
    const float *patch_b;   /* [D]    to_patch_embedding[0].bias   */
    const float *mlp4d_w;   /* [D, 4] mlp4d[0].weight */
    const float *mlp4d_ln_w, *mlp4d_ln_b;   /* [D] mlp4d[2] */
    const float *ln_w, *ln_b;               /* [D] ln */
} mi_reve_weights;

/* Caller-allocated outputs; any intermediate may be NULL (then a scratch
 * buffer is used), x must not be NULL. */
typedef struct {
    float *patches, *patch_emb, *pos4, *fourier, *mlp4d, *pos_embed, *x;
} mi_reve_outputs;

/* REVE's defaults (increment_time 0.1, margin 0.4, ln_eps 1e-5) for the given sizes. */
mi_reve_config mi_reve_config_make(int64_t embed_dim, int64_t patch_size,
                                   int64_t patch_overlap, int64_t freqs);

/* Check the config itself (D even and > 0, 0 <= overlap < S, freqs^4 >= D/2). */
mi_status mi_reve_check_config(const mi_reve_config *cfg);

/* P for a signal of T samples; fails if T < patch_size or step <= 0. */
mi_status mi_reve_n_patches(int64_t T, int64_t patch_size, int64_t patch_overlap, int64_t *P);

/* Fail naming `what` if any of the n values is NaN or infinite. */
mi_status mi_reve_check_finite(const char *what, const float *x, int64_t n);

/* Steps, each usable alone. rows = B*C (unfold) or B*N (the others). */
void mi_reve_unfold(const float *eeg, int64_t rows, int64_t T, int64_t S, int64_t step,
                    int64_t P, float *patches);
void mi_reve_patch_embed(const float *patches, int64_t rows, int64_t S, int64_t D,
                         const float *w, const float *b, float *out);
void mi_reve_add_time_patch(const float *pos, int64_t B, int64_t C, int64_t P, float *pos4);
mi_status mi_reve_fourier4d(const float *pos4, int64_t rows, int64_t D, int64_t freqs,
                            float increment_time, float margin, float *out);
void mi_reve_mlp4d(const float *pos4, int64_t rows, int64_t D, const float *w,
                   const float *ln_w, const float *ln_b, float eps, float *out);
/* out = LayerNorm(fourier + mlp4d); out may alias either input. */
void mi_reve_pos_embed(const float *fourier, const float *mlp4d, int64_t rows, int64_t D,
                       const float *ln_w, const float *ln_b, float eps, float *out);

/* The whole front end. Validates cfg, shapes and finiteness of eeg and pos
 * (pos_channels must equal C). P must be what mi_reve_n_patches gives. */
mi_status mi_reve_frontend(const mi_reve_config *cfg, const mi_reve_weights *w,
                           const float *eeg, int64_t B, int64_t C, int64_t T,
                           const float *pos, int64_t pos_batch, int64_t pos_channels,
                           mi_reve_outputs *out);

#endif
