/* rotary.c - rotary position embeddings (contract in rotary.h). */
/* Products and sums stay separate roundings, as TransformerLens's
 * x * cos + rot(x) * sin: no fused multiply-add. */
#pragma GCC optimize("fp-contract=off")
#include "kernels/rotary.h"

#include <math.h>

#include "common/threads.h"

mi_status mi_rotary_check(const mi_rotary_cfg *c, int64_t d_head)
{
    if (c->rotary_dim < 2 || c->rotary_dim % 2 || c->rotary_dim > d_head)
        return mi_fail(MI_ERR_VALUE, "rotary_dim=%ld must be even and in [2, d_head=%ld]",
                       (long)c->rotary_dim, (long)d_head);
    if (!(c->base > 0.0f) || !isfinite(c->base))
        return mi_fail(MI_ERR_VALUE, "rotary_base=%g must be a positive number", (double)c->base);
    if (c->ntk_by_parts
        && (!(c->ntk_factor > 0.0f) || !(c->ntk_low_freq_factor > 0.0f)
            || !(c->ntk_high_freq_factor > 0.0f) || !(c->ntk_original_ctx_len > 0.0f)
            || c->ntk_high_freq_factor == c->ntk_low_freq_factor))
        return mi_fail(MI_ERR_VALUE, "rope_scaling (NTK by parts): factor=%g, low_freq_factor=%g, "
                       "high_freq_factor=%g and original_max_position_embeddings=%g must be > 0 "
                       "with high_freq_factor != low_freq_factor", (double)c->ntk_factor,
                       (double)c->ntk_low_freq_factor, (double)c->ntk_high_freq_factor,
                       (double)c->ntk_original_ctx_len);
    return MI_OK;
}

/* The divisor of pair i (i < R/2), in float32 in TransformerLens's order. */
static float pair_freq(const mi_rotary_cfg *c, int64_t i)
{
    int64_t R = c->rotary_dim;
    if (!c->ntk_by_parts) return powf(c->base, (float)i / (float)((double)R / 2.0));
    float inv = 1.0f / powf(c->base, (float)(2 * i) / (float)R);
    float factor = c->ntk_factor, low = c->ntk_low_freq_factor, high = c->ntk_high_freq_factor;
    float ctx = c->ntk_original_ctx_len;
    float low_wavelen = (float)((double)ctx / (double)low), high_wavelen = (float)((double)ctx / (double)high);
    float wavelen = (float)(2.0 * M_PI) / inv;
    float llama = wavelen > low_wavelen ? inv / factor : inv;
    if (!(wavelen < high_wavelen) && !(wavelen > low_wavelen)) {
        float s = (ctx / wavelen - low) / (float)((double)high - (double)low);
        llama = (1.0f - s) * llama / factor + s * llama;
    }
    return 1.0f / llama;
}

void mi_rotary_freqs(const mi_rotary_cfg *c, float *freq)
{
    int64_t n = c->rotary_dim / 2;
    for (int64_t i = 0; i < n; i++) {
        float f = pair_freq(c, i);
        if (c->adjacent) freq[2 * i] = freq[2 * i + 1] = f;
        else freq[i] = freq[n + i] = f;
    }
}

void mi_rotary_table(const mi_rotary_cfg *c, int64_t n_pos, float *cos_t, float *sin_t)
{
    int64_t R = c->rotary_dim;
    float freq[R];
    mi_rotary_freqs(c, freq);
    #pragma omp parallel for schedule(static) num_threads(mi_get_num_threads())
    for (int64_t p = 0; p < n_pos; p++)
        for (int64_t k = 0; k < R; k++) {
            float a = (float)p / freq[k];
            cos_t[p * R + k] = cosf(a);
            sin_t[p * R + k] = sinf(a);
        }
}

/* One head: y = x cos + rot(x) sin (sign of sin flipped when inverse). */
static inline void rotate_head(const mi_rotary_cfg *c, const float *x, float *y, int64_t d_head,
                               const float *cs, const float *sn, float sign)
{
    int64_t R = c->rotary_dim, n = R / 2;
    if (c->adjacent) {
        for (int64_t i = 0; i < n; i++) {
            float a = x[2 * i], b = x[2 * i + 1];
            float s0 = sign * sn[2 * i], s1 = sign * sn[2 * i + 1];
            y[2 * i] = a * cs[2 * i] + (-b) * s0;
            y[2 * i + 1] = b * cs[2 * i + 1] + a * s1;
        }
    } else {
        for (int64_t i = 0; i < n; i++) {
            float a = x[i], b = x[n + i];
            float s0 = sign * sn[i], s1 = sign * sn[n + i];
            y[i] = a * cs[i] + (-b) * s0;
            y[n + i] = b * cs[n + i] + a * s1;
        }
    }
    if (y != x)
        for (int64_t k = R; k < d_head; k++) y[k] = x[k];
}

void mi_rotary_apply(const mi_rotary_cfg *c, const float *x, int64_t x_row, float *y, int64_t y_row,
                     int64_t rows, int64_t T, int64_t heads, int64_t d_head, const int64_t *pos_ids,
                     const float *cos_t, const float *sin_t, int inverse)
{
    int64_t R = c->rotary_dim;
    float sign = inverse ? -1.0f : 1.0f;
    #pragma omp parallel for schedule(static) num_threads(mi_get_num_threads())
    for (int64_t r = 0; r < rows; r++) {
        int64_t p = pos_ids ? pos_ids[r] : r % T;
        const float *cs = cos_t + p * R, *sn = sin_t + p * R;
        for (int64_t h = 0; h < heads; h++)
            rotate_head(c, x + r * x_row + h * d_head, y + r * y_row + h * d_head, d_head, cs, sn, sign);
    }
}

void mi_rotary_apply_ref(const mi_rotary_cfg *c, const float *x, int64_t x_row, float *y,
                         int64_t y_row, int64_t rows, int64_t T, int64_t heads, int64_t d_head,
                         const int64_t *pos_ids, const float *cos_t, const float *sin_t,
                         int inverse)
{
    /* TransformerLens's formula literally: flip, then x * cos + flip * sin */
    int64_t R = c->rotary_dim, n = R / 2;
    float flip[R > 0 ? R : 1], out[R > 0 ? R : 1];
    for (int64_t r = 0; r < rows; r++) {
        int64_t p = pos_ids ? pos_ids[r] : r % T;
        for (int64_t h = 0; h < heads; h++) {
            const float *xh = x + r * x_row + h * d_head;
            float *yh = y + r * y_row + h * d_head;
            for (int64_t k = 0; k < R; k++) {
                if (c->adjacent) flip[k] = k % 2 ? xh[k - 1] : -xh[k + 1];
                else flip[k] = k < n ? -xh[k + n] : xh[k - n];
            }
            for (int64_t k = 0; k < R; k++) {
                float s = (inverse ? -1.0f : 1.0f) * sin_t[p * R + k];
                out[k] = xh[k] * cos_t[p * R + k] + flip[k] * s;
            }
            for (int64_t k = 0; k < R; k++) yh[k] = out[k];
            for (int64_t k = R; k < d_head; k++) yh[k] = xh[k];
        }
    }
}
