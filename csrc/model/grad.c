/* grad.c - a metric's gradient at every hook point, with backward hooks
 * (contract in grad.h).
 *
 * The activations are read back through the hook-point views of the
 * forward's arena; every point's gradient is written into the same point of
 * a second arena (its own plan: slots for the gradients kept, one shared
 * slot per kind for the rest), so the gradients are views too. Each step
 * quotes the forward line it differentiates. The training pass (backward.c)
 * fuses what this one keeps apart: here every hook point's gradient is a
 * tensor a hook can see and replace before it flows upstream.
 *
 * Products with a weight's transpose go through mi_tf_linear (linear.h), so a
 * model with bfloat16 weights gets its activation gradients the way its forward
 * multiplies (the gradient operand rounded to bfloat16); its parameter
 * gradients are refused (a bfloat16 model does not train).
 *
 * Scratch (floats): dx and xin BT*D each, act and tmp BT*M each; with post
 * norms praw BT*D (the gradient of the W_O / W_out product), with an attention
 * soft-cap draw B*H*T*T (the scores' gradient before the cap).
 */
#include "model/grad.h"
#include "model/backward.h"
#include "model/linear.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/cancel.h"
#include "common/threads.h"
#include "kernels/activation.h"
#include "kernels/embedding.h"
#include "common/memory.h"
#include "kernels/gemm.h"
#include "kernels/rotary.h"
#include "kernels/softmax.h"

#define COL_BLOCK 16

typedef struct {
    const mi_transformer *m;
    const mi_tf_plan *pl, *gpl;   /* the activations' and the gradients' plans */
    float *A, *G;
    const uint8_t *bflags;
    mi_hook_fn hook;
    void *ctx;
    float *grads;            /* NULL: no parameter gradients */
    const int64_t *pos_ids;  /* rotary positions (NULL: t) */
    const float *rope_cos, *rope_sin;   /* the forward's rotary table */
    float *dx, *xin, *act, *tmp;
    float *praw;             /* post norms: d (z @ W_O + b_O), d (post @ W_out + b_out) */
    float *draw;             /* attention soft-cap: d of the uncapped scores */
} gstate;

static const float *pw(const mi_transformer *m, size_t off) { return mi_tf_tensor(m, off); }

/* y (acc: y +=) = x[rows, k] @ W^T for the weight at `off` from element w_off
 * on, stored [n, k] with row stride ldw (trans 1), or x @ W stored [k, n]
 * (trans 0): a float32 or bfloat16 weight (linear.h). */
static void wmul(const mi_transformer *m, size_t off, int64_t w_off, int trans, int64_t rows, int64_t n,
                 int64_t k, const float *x, int64_t ldx, int64_t ldw, int acc, float *y, int64_t ldy)
{
    mi_tf_weight w = mi_tf_weight_at(m, off);
    if (acc) mi_tf_linear_add(w, w_off, trans, rows, n, k, x, ldx, ldw, y, ldy);
    else mi_tf_linear(w, w_off, trans, rows, n, k, x, ldx, ldw, NULL, y, ldy);
}

static float *gw(const gstate *g, size_t off) { return !g->grads || off == (size_t)-1 ? NULL : g->grads + off; }

static float *view_in(const gstate *g, const mi_tf_plan *pl, float *arena, int p)
{
    mi_tensor_view v;
    return mi_tf_point_view(g->m, pl, arena, p, &v) ? v.data : NULL;
}
#define AV(p) view_in(g, g->pl, g->A, (p))
#define GV(p) view_in(g, g->gpl, g->G, (p))

/* The backward hook of point p, on its gradient. */
static mi_status bfire(const gstate *g, int p)
{
    if (!(g->bflags[p] & MI_HOOK_FIRES) || !g->hook) return MI_OK;
    mi_tensor_view v;
    if (!mi_tf_point_view(g->m, g->gpl, g->G, p, &v)) return MI_OK;
    return g->hook(g->ctx, p, &v);
}

static void copy(float *dst, const float *src, int64_t n)
{
    if (dst == src) return;
    #pragma omp parallel for schedule(static) num_threads(mi_get_num_threads())
    for (int64_t i = 0; i < n; i++) dst[i] = src[i];
}

static void zero(float *p, int64_t n)
{
    #pragma omp parallel for schedule(static) num_threads(mi_get_num_threads())
    for (int64_t i = 0; i < n; i++) p[i] = 0.0f;
}

static void add(float *dst, const float *src, int64_t n)
{
    #pragma omp parallel for schedule(static) num_threads(mi_get_num_threads())
    for (int64_t i = 0; i < n; i++) dst[i] += src[i];
}

/* out[c] += sum_r x[r, c] * (y ? y[r, c] : 1): parallel over column blocks,
 * each column's sum in row order (bitwise identical for any thread count). */
static void colsum_acc(const float *x, const float *y, int64_t rows, int64_t cols, float *out)
{
    if (!out) return;
    int64_t nblk = (cols + COL_BLOCK - 1) / COL_BLOCK;
    #pragma omp parallel for schedule(static) num_threads(mi_get_num_threads())
    for (int64_t blk = 0; blk < nblk; blk++) {
        int64_t c0 = blk * COL_BLOCK, c1 = c0 + COL_BLOCK < cols ? c0 + COL_BLOCK : cols;
        double acc[COL_BLOCK] = {0};
        for (int64_t r = 0; r < rows; r++)
            for (int64_t c = c0; c < c1; c++)
                acc[c - c0] += (double)x[r * cols + c] * (y ? (double)y[r * cols + c] : 1.0);
        for (int64_t c = c0; c < c1; c++) out[c] += (float)acc[c - c0];
    }
}

/* Backward of TransformerLens's norm (x -> xc -> scale = sqrt(mean(xc^2) + eps)
 * [hook_scale] -> normalized = xc / scale [hook_normalized] -> out =
 * normalized * w + b), from dout, the gradient of out:
 *   dnormalized = dout * w                                  (hook_normalized)
 *   dscale      = -sum_i dnormalized_i normalized_i / scale (hook_scale)
 *   dxc         = dnormalized / scale + dscale * normalized / d
 *   dx         += dxc - mean(dxc) when centred, else dxc
 * dnorm may be dout itself (no affine weights: the same tensor). */
static mi_status norm_bwd(const gstate *g, int centre, int64_t rows, int64_t d, const float *dout,
                          const float *normalized, const float *scale, const float *w, int p_norm,
                          int p_scale, float *dx, float *dw, float *db)
{
    float *dnorm = GV(p_norm), *dscale = GV(p_scale);
    colsum_acc(dout, normalized, rows, d, dw);
    colsum_acc(dout, NULL, rows, d, db);
    if (w) {
        #pragma omp parallel for schedule(static) num_threads(mi_get_num_threads())
        for (int64_t r = 0; r < rows; r++)
            for (int64_t i = 0; i < d; i++) dnorm[r * d + i] = dout[r * d + i] * w[i];
    } else {
        copy(dnorm, dout, rows * d);
    }
    MI_TRY(bfire(g, p_norm));
    #pragma omp parallel for schedule(static) num_threads(mi_get_num_threads())
    for (int64_t r = 0; r < rows; r++) {
        double acc = 0.0;
        for (int64_t i = 0; i < d; i++) acc += (double)dnorm[r * d + i] * (double)normalized[r * d + i];
        dscale[r] = (float)(-acc / (double)scale[r]);
    }
    MI_TRY(bfire(g, p_scale));
    #pragma omp parallel for schedule(static) num_threads(mi_get_num_threads())
    for (int64_t r = 0; r < rows; r++) {
        const float *dn = dnorm + r * d, *nr = normalized + r * d;
        double inv = 1.0 / (double)scale[r], ds = (double)dscale[r] / (double)d, mean = 0.0;
        if (centre) {
            for (int64_t i = 0; i < d; i++) mean += (double)dn[i] * inv + ds * (double)nr[i];
            mean /= (double)d;
        }
        for (int64_t i = 0; i < d; i++)
            dx[r * d + i] += (float)((double)dn[i] * inv + ds * (double)nr[i] - mean);
    }
    return MI_OK;
}

/* A post norm (Gemma 2's ln1_post / ln2_post: RMS, no bias) of a block's attention
 * or MLP output, backwards: g->praw = d (its input) from dout = d (its output). */
static mi_status post_norm_bwd(const gstate *g, const float *dout, int p_norm, int p_scale, size_t w_off)
{
    const int64_t BT = g->pl->batch * g->pl->seq, D = g->m->spec.d_model;
    zero(g->praw, BT * D);
    return norm_bwd(g, 0, BT, D, dout, AV(p_norm), AV(p_scale), pw(g->m, w_off), p_norm, p_scale, g->praw,
                    gw(g, w_off), NULL);
}

static int centred(mi_norm_type t) { return t == MI_NORM_LN || t == MI_NORM_LNPRE; }

/* z = pattern @ v, pattern = softmax(scores), scores = q k^T / attn_scale (q, k
 * rotated when the model is rotary: hook_rot_q/k), query head h reading kv head
 * h / (H / Hkv). The fused qkv rows are [H q heads | Hkv k heads | Hkv v heads].
 * dP per (b, h); dv, dk summed over a kv head's query heads in increasing h on
 * one thread (parallel over (b, kv head): bitwise identical for any count). */
static mi_status attn_bwd(const gstate *g, int p0)
{
    const mi_tf_spec *s = &g->m->spec;
    int64_t B = g->pl->batch, T = g->pl->seq, H = s->n_heads, Hkv = mi_tf_kv_heads(s), Dh = s->d_head;
    int64_t HD = H * Dh, KD = Hkv * Dh, QKV = HD + 2 * KD, gq = H / Hkv;
    const float *qkv = AV(p0 + MI_P_Q), *P = AV(p0 + MI_P_PATTERN);
    const float *dz = GV(p0 + MI_P_Z);
    float *dqkv = GV(p0 + MI_P_Q), *dP = GV(p0 + MI_P_PATTERN), *dS = GV(p0 + MI_P_SCORES);
    /* what the scores were computed from, and where their gradients go */
    const float *q = s->rotary ? AV(p0 + MI_P_ROT_Q) : qkv, *k = s->rotary ? AV(p0 + MI_P_ROT_K) : qkv + HD;
    const float *v = qkv + HD + KD;
    float *dq = s->rotary ? GV(p0 + MI_P_ROT_Q) : dqkv, *dk = s->rotary ? GV(p0 + MI_P_ROT_K) : dqkv + HD;
    float *dv = dqkv + HD + KD;
    int64_t qs = s->rotary ? HD : QKV, ks = s->rotary ? KD : QKV;
    int64_t BH = B * H, BK = B * Hkv;
    /* dP[i,j] = dz[i] . v[j] */
    #pragma omp parallel for schedule(static) num_threads(mi_get_num_threads())
    for (int64_t bh = 0; bh < BH; bh++) {
        int64_t b = bh / H, h = bh % H;
        mi_sgemm(0, 1, T, T, Dh, dz + b * T * HD + h * Dh, HD, v + b * T * QKV + (h / gq) * Dh, QKV, NULL,
                 0.0f, dP + bh * T * T, T);
    }
    MI_TRY(bfire(g, p0 + MI_P_PATTERN));
    /* dv[j] = sum_i P[i,j] dz[i]; dS = P (dP - sum_j P dP) */
    zero(dS, BH * T * T);
    #pragma omp parallel for schedule(static) num_threads(mi_get_num_threads())
    for (int64_t bk = 0; bk < BK; bk++) {
        int64_t b = bk / Hkv, kh = bk % Hkv;
        for (int64_t j = 0; j < gq; j++) {
            int64_t h = kh * gq + j;
            mi_sgemm(1, 0, T, Dh, T, P + (b * H + h) * T * T, T, dz + b * T * HD + h * Dh, HD, NULL,
                     j ? 1.0f : 0.0f, dv + b * T * QKV + kh * Dh, QKV);
        }
    }
    mi_softmax_rows_backward(P, dP, dS, BH * T, T);
    MI_TRY(bfire(g, p0 + MI_P_SCORES));
    if ((g->bflags[p0 + MI_P_SCORES] & MI_HOOK_FIRES) && g->hook) {
        /* the mask is applied before hook_attn_scores (masked_fill to -inf): a
         * gradient a hook puts on a masked entry stops there */
        const float *S = AV(p0 + MI_P_SCORES);
        #pragma omp parallel for schedule(static) num_threads(mi_get_num_threads())
        for (int64_t i = 0; i < BH * T * T; i++)
            if (S[i] == -INFINITY) dS[i] = 0.0f;
    }
    if (s->attn_softcap > 0.0f) {
        /* hook_attn_scores = mask(cap * tanh(raw / cap)): the gradient of raw, read
         * through the capped scores (0 where masked: -inf) */
        mi_tf_softcap_backward(s->attn_softcap, AV(p0 + MI_P_SCORES), dS, g->draw, BH * T * T);
        dS = g->draw;
    }
    /* dq[i] = sum_j dS[i,j] k[j] / attn_scale; dk[j] = sum_i dS[i,j] q[i] / attn_scale */
    float inv = 1.0f / s->attn_scale;
    #pragma omp parallel for schedule(static) num_threads(mi_get_num_threads())
    for (int64_t bk = 0; bk < BK; bk++) {
        int64_t b = bk / Hkv, kh = bk % Hkv;
        float *dkh = dk + b * T * ks + kh * Dh;
        for (int64_t j = 0; j < gq; j++) {
            int64_t h = kh * gq + j;
            const float *S = dS + (b * H + h) * T * T;
            float *dqh = dq + b * T * qs + h * Dh;
            mi_sgemm(0, 0, T, Dh, T, S, T, k + b * T * ks + kh * Dh, ks, NULL, 0.0f, dqh, qs);
            mi_sgemm(1, 0, T, Dh, T, S, T, q + b * T * qs + h * Dh, qs, NULL, j ? 1.0f : 0.0f, dkh, ks);
            for (int64_t t = 0; t < T; t++)
                for (int64_t i = 0; i < Dh; i++) dqh[t * qs + i] *= inv;
        }
        for (int64_t t = 0; t < T; t++)
            for (int64_t i = 0; i < Dh; i++) dkh[t * ks + i] *= inv;
    }
    MI_TRY(bfire(g, p0 + MI_P_V));
    if (s->rotary) {
        /* rot_q = R q, rot_k = R k: the gradients rotate back (R^T) into dqkv */
        int64_t BT = B * T;
        MI_TRY(bfire(g, p0 + MI_P_ROT_K));
        MI_TRY(bfire(g, p0 + MI_P_ROT_Q));
        mi_rotary_apply(&s->rope, dq, HD, dqkv, QKV, BT, T, H, Dh, g->pos_ids, g->rope_cos, g->rope_sin, 1);
        mi_rotary_apply(&s->rope, dk, KD, dqkv + HD, QKV, BT, T, Hkv, Dh, g->pos_ids, g->rope_cos,
                        g->rope_sin, 1);
    }
    MI_TRY(bfire(g, p0 + MI_P_K));
    return bfire(g, p0 + MI_P_Q);
}

/* Layer l: on entry the gradient of resid_post[l] is complete (its hooks have
 * run); on exit that of resid_pre[l], hooks run. */
static mi_status layer_bwd(const gstate *g, int l)
{
    const mi_transformer *m = g->m;
    const mi_tf_spec *s = &m->spec;
    int64_t BT = g->pl->batch * g->pl->seq, D = s->d_model, H = s->n_heads, Dh = s->d_head,
            HD = H * Dh, Mm = s->d_mlp;
    const size_t *o = m->layer_off + (size_t)l * MI_W_PER_LAYER;
    int p0 = mi_tf_layer_point(l, 0);
    int has_norm = s->norm != MI_NORM_NONE;
    const float *g_post = GV(p0 + MI_P_RESID_POST);
    /* attn_out's gradient: d resid_mid (serial), d resid_post (attn_only: resid_post =
     * resid_pre + attn_out; parallel_attn_mlp: resid_post = resid_pre + attn_out +
     * mlp(ln2(resid_pre))) */
    const float *g_mid = g_post;
    int par = s->parallel_attn_mlp;
    float *g_pre_res = GV(p0 + MI_P_RESID_PRE);
    if (!s->attn_only) {
        /* resid_post = resid_mid + mlp_out */
        float *g_out = GV(p0 + MI_P_MLP_OUT);
        copy(g_out, g_post, BT * D);
        MI_TRY(bfire(g, p0 + MI_P_MLP_OUT));
        if (s->post_norms) {   /* mlp_out = ln2_post(mlp_raw): g_out becomes d mlp_raw */
            MI_TRY(post_norm_bwd(g, g_out, p0 + MI_P_LN2P_NORM, p0 + MI_P_LN2P_SCALE, o[MI_W_LN2P_W]));
            g_out = g->praw;
        }
        /* mlp_raw (mlp_out without post norms) = post @ W_out + b_out */
        const float *post = AV(p0 + MI_P_MLP_POST), *pre = AV(p0 + MI_P_MLP_PRE);
        float *g_postm = GV(p0 + MI_P_MLP_POST), *g_pre = GV(p0 + MI_P_MLP_PRE);
        if (g->grads) mi_sgemm(1, 0, Mm, D, BT, post, Mm, g_out, D, NULL, 1.0f, gw(g, o[MI_W_OUT]), D);
        colsum_acc(g_out, NULL, BT, D, gw(g, o[MI_W_B_OUT]));
        wmul(m, o[MI_W_OUT], 0, 1, BT, Mm, D, g_out, D, D, 0, g_postm, Mm);
        MI_TRY(bfire(g, p0 + MI_P_MLP_POST));
        const float *ln2_in = s->use_hook_mlp_in ? AV(p0 + MI_P_MLP_IN)
                              : par ? AV(p0 + MI_P_RESID_PRE) : AV(p0 + MI_P_RESID_MID);
        const float *x2 = ln2_in;
        if (has_norm)
            x2 = mi_tf_norm_out(AV(p0 + MI_P_LN2_NORM), pw(m, o[MI_W_LN2_W]), pw(m, o[MI_W_LN2_B]), BT, D, g->xin);
        zero(g_pre, BT * Mm);
        if (s->gated_mlp) {
            /* post = act(pre) * pre_linear + b_in; pre = x2 @ W_gate; pre_linear = x2 @ W_in */
            const float *pre_lin = AV(p0 + MI_P_MLP_PRE_LINEAR);
            colsum_acc(g_postm, NULL, BT, Mm, gw(g, o[MI_W_B_IN]));
            float *g_lin = GV(p0 + MI_P_MLP_PRE_LINEAR);
            mi_activate((mi_activation)s->act, pre, g->act, BT * Mm);
            #pragma omp parallel for schedule(static) num_threads(mi_get_num_threads())
            for (int64_t i = 0; i < BT * Mm; i++) {
                g_lin[i] = g_postm[i] * g->act[i];
                g->tmp[i] = g_postm[i] * pre_lin[i];   /* d act(pre) */
            }
            MI_TRY(bfire(g, p0 + MI_P_MLP_PRE_LINEAR));
            mi_activation_backward((mi_activation)s->act, pre, g->tmp, g_pre, BT * Mm);
            MI_TRY(bfire(g, p0 + MI_P_MLP_PRE));
            if (g->grads) {
                mi_sgemm(1, 0, D, Mm, BT, x2, D, g_pre, Mm, NULL, 1.0f, gw(g, o[MI_W_GATE]), Mm);
                mi_sgemm(1, 0, D, Mm, BT, x2, D, g_lin, Mm, NULL, 1.0f, gw(g, o[MI_W_IN]), Mm);
            }
            wmul(m, o[MI_W_GATE], 0, 1, BT, D, Mm, g_pre, Mm, Mm, 0, g->dx, D);
            wmul(m, o[MI_W_IN], 0, 1, BT, D, Mm, g_lin, Mm, Mm, 1, g->dx, D);
        } else {
            /* post = act(pre); pre = x2 @ W_in + b_in */
            mi_activation_backward((mi_activation)s->act, pre, g_postm, g_pre, BT * Mm);
            MI_TRY(bfire(g, p0 + MI_P_MLP_PRE));
            colsum_acc(g_pre, NULL, BT, Mm, gw(g, o[MI_W_B_IN]));
            if (g->grads) mi_sgemm(1, 0, D, Mm, BT, x2, D, g_pre, Mm, NULL, 1.0f, gw(g, o[MI_W_IN]), Mm);
            wmul(m, o[MI_W_IN], 0, 1, BT, D, Mm, g_pre, Mm, Mm, 0, g->dx, D);
        }
        /* resid_mid (parallel: resid_pre) feeds the skip and (through hook_mlp_in) ln2;
         * parallel: the MLP's share of d resid_pre first, the rest added below */
        float *gm = par ? g_pre_res : GV(p0 + MI_P_RESID_MID), *g_ln2_in = gm;
        if (par) zero(gm, BT * D);
        else copy(gm, g_post, BT * D);
        if (s->use_hook_mlp_in) {
            g_ln2_in = GV(p0 + MI_P_MLP_IN);
            zero(g_ln2_in, BT * D);
        }
        if (has_norm)
            MI_TRY(norm_bwd(g, centred(s->norm), BT, D, g->dx, AV(p0 + MI_P_LN2_NORM),
                            AV(p0 + MI_P_LN2_SCALE), pw(m, o[MI_W_LN2_W]), p0 + MI_P_LN2_NORM,
                            p0 + MI_P_LN2_SCALE, g_ln2_in, gw(g, o[MI_W_LN2_W]), gw(g, o[MI_W_LN2_B])));
        else
            add(g_ln2_in, g->dx, BT * D);
        if (s->use_hook_mlp_in) {
            MI_TRY(bfire(g, p0 + MI_P_MLP_IN));
            add(gm, g_ln2_in, BT * D);
        }
        if (!par) {
            MI_TRY(bfire(g, p0 + MI_P_RESID_MID));
            g_mid = gm;
        }
    }
    /* resid_mid = resid_pre + attn_out */
    float *g_ao = GV(p0 + MI_P_ATTN_OUT), *g_z = GV(p0 + MI_P_Z);
    copy(g_ao, g_mid, BT * D);
    MI_TRY(bfire(g, p0 + MI_P_ATTN_OUT));
    if (s->post_norms) {   /* attn_out = ln1_post(attn_raw): g_ao becomes d attn_raw */
        MI_TRY(post_norm_bwd(g, g_ao, p0 + MI_P_LN1P_NORM, p0 + MI_P_LN1P_SCALE, o[MI_W_LN1P_W]));
        g_ao = g->praw;
    }
    const float *z = AV(p0 + MI_P_Z);
    colsum_acc(g_ao, NULL, BT, D, gw(g, o[MI_W_B_O]));
    if (s->use_attn_result) {
        /* attn_out = sum_h result[:, h] + b_O; result[:, h] = z[:, h] @ W_O[h] */
        float *g_res = GV(p0 + MI_P_RESULT);
        #pragma omp parallel for schedule(static) num_threads(mi_get_num_threads())
        for (int64_t r = 0; r < BT; r++)
            for (int64_t h = 0; h < H; h++) memcpy(g_res + (r * H + h) * D, g_ao + r * D, sizeof(float) * (size_t)D);
        MI_TRY(bfire(g, p0 + MI_P_RESULT));
        float *gW_O = gw(g, o[MI_W_O]);
        for (int64_t h = 0; h < H; h++) {
            if (gW_O) mi_sgemm(1, 0, Dh, D, BT, z + h * Dh, HD, g_res + h * D, H * D, NULL, 1.0f, gW_O + h * Dh * D, D);
            wmul(m, o[MI_W_O], h * Dh * D, 1, BT, Dh, D, g_res + h * D, H * D, D, 0, g_z + h * Dh, HD);
        }
    } else {
        /* attn_out = z @ W_O + b_O */
        if (g->grads) mi_sgemm(1, 0, HD, D, BT, z, HD, g_ao, D, NULL, 1.0f, gw(g, o[MI_W_O]), D);
        wmul(m, o[MI_W_O], 0, 1, BT, HD, D, g_ao, D, D, 0, g_z, HD);
    }
    MI_TRY(bfire(g, p0 + MI_P_Z));
    MI_TRY(attn_bwd(g, p0));
    /* qkv = x1 @ W_qkv + b_qkv; x1 = ln1(resid_pre) */
    const float *dqkv = GV(p0 + MI_P_Q), *resid_pre = AV(p0 + MI_P_RESID_PRE), *x1 = resid_pre;
    if (has_norm)
        x1 = mi_tf_norm_out(AV(p0 + MI_P_LN1_NORM), pw(m, o[MI_W_LN1_W]), pw(m, o[MI_W_LN1_B]), BT, D, g->xin);
    size_t w_qkv, b_qkv;
    mi_tf_qkv_offsets(m, l, &w_qkv, &b_qkv);
    int64_t KD = mi_tf_kv_heads(s) * Dh, QKV = HD + 2 * KD;
    if (g->grads) mi_sgemm(1, 0, D, QKV, BT, x1, D, dqkv, QKV, NULL, 1.0f, gw(g, w_qkv), QKV);
    colsum_acc(dqkv, NULL, BT, QKV, gw(g, b_qkv));
    if (par && !s->attn_only) add(g_pre_res, g_mid, BT * D);
    else copy(g_pre_res, g_mid, BT * D);
    if (!has_norm) {
        wmul(m, w_qkv, 0, 1, BT, D, QKV, dqkv, QKV, QKV, 0, g->dx, D);
        add(g_pre_res, g->dx, BT * D);
        return bfire(g, p0 + MI_P_RESID_PRE);
    }
    /* TransformerLens runs ln1 once per q, k and v input, so its hooks see three
     * gradients, one per path, in autograd's order (v, k, q); the slot keeps the
     * last, as its cache does */
    for (int w = 2; w >= 0; w--) {
        int64_t c0 = w == 0 ? 0 : w == 1 ? HD : HD + KD, n = w == 0 ? HD : KD;
        wmul(m, w_qkv, c0, 1, BT, D, n, dqkv + c0, QKV, QKV, 0, g->dx, D);
        MI_TRY(norm_bwd(g, centred(s->norm), BT, D, g->dx, AV(p0 + MI_P_LN1_NORM), AV(p0 + MI_P_LN1_SCALE),
                        pw(m, o[MI_W_LN1_W]), p0 + MI_P_LN1_NORM, p0 + MI_P_LN1_SCALE, g_pre_res,
                        gw(g, o[MI_W_LN1_W]), gw(g, o[MI_W_LN1_B])));
    }
    return bfire(g, p0 + MI_P_RESID_PRE);
}

mi_status mi_tf_grad_plan(const mi_transformer *m, int64_t B, int64_t T, const uint8_t *flags,
                          const uint8_t *bwd_flags, mi_tf_plan *plan, mi_tf_plan *gplan)
{
    int np = mi_tf_n_points(&m->spec);
    uint8_t *all = malloc((size_t)np);
    if (!all) return mi_fail(MI_ERR_NOMEM, "gradients: out of memory");
    for (int p = 0; p < np; p++) all[p] = flags[p] | (mi_tf_point_present(&m->spec, p) ? MI_HOOK_CACHE : 0);
    mi_status st = mi_tf_plan_call(m, B, T, -1, (int)m->spec.n_layers, all, plan);
    /* a gradient nothing keeps is written and read within its step: a shared
     * (transient) slot, never elided */
    for (int p = 0; st == MI_OK && p < np; p++)
        all[p] = !mi_tf_point_present(&m->spec, p) ? 0
                 : (bwd_flags[p] & (MI_HOOK_CACHE | MI_HOOK_CALLBACK)) ? MI_HOOK_CACHE : MI_HOOK_TRANSIENT;
    if (st == MI_OK) st = mi_tf_plan_call(m, B, T, -1, (int)m->spec.n_layers, all, gplan);
    if (st != MI_OK) mi_tf_plan_free(plan);
    free(all);
    return st;
}

size_t mi_tf_grad_scratch(const mi_transformer *m, int64_t B, int64_t T)
{
    const mi_tf_spec *s = &m->spec;
    int64_t BT = B * T, Mm = s->attn_only ? 0 : s->d_mlp;
    return (size_t)(2 * BT * s->d_model + 2 * BT * Mm + (s->post_norms ? BT * s->d_model : 0)
                    + (s->attn_softcap > 0.0f ? B * s->n_heads * T * T : 0)) + 64;
}

static mi_status check_supported(const mi_transformer *m, const mi_tf_plan *pl, const float *grads)
{
    const mi_tf_spec *s = &m->spec;
    if (s->n_layers < 1) return mi_fail(MI_ERR_VALUE, "gradients: the model needs n_layers >= 1");
    if (s->no_head) return mi_fail(MI_ERR_VALUE, "gradients: this model has no unembedding (no_head): "
                                   "a metric needs logits");
    if (s->use_split_qkv_input || s->use_attn_in)
        return mi_fail(MI_ERR_VALUE, "gradients: use_split_qkv_input and use_attn_in have no backward "
                       "pass; turn them off for gradients");
    if (!s->attn_only && s->act == MI_TF_ACT_SOLU_LN)
        return mi_fail(MI_ERR_VALUE, "gradients: act_fn 'solu_ln' has no backward pass");
    if (pl->start_layer >= 0 || pl->stop_layer != s->n_layers)
        return mi_fail(MI_ERR_VALUE, "gradients: the pass must run from tokens to the logits "
                       "(no start_at_layer / stop_at_layer)");
    if (grads && s->bf16_weights)
        return mi_fail(MI_ERR_UNSUPPORTED, "gradients: parameter gradients of a model with bfloat16 "
                       "weights are not computed (a bfloat16 model does not train); gradients with "
                       "respect to activations are");
    if (grads && (m->tied_unembed || m->n_external))
        return mi_fail(MI_ERR_VALUE, "gradients: parameter gradients need untied weights in the "
                       "parameter blob (materialize() and untie the unembedding first)");
    return MI_OK;
}

/* The pass once the state is set up (mi_tf_grad owns the rotary table). */
static mi_status grad_pass(const gstate *g, const uint8_t *flags, const int64_t *tokens,
                           const int64_t *pos_ids, const float *key_mask, mi_hook_fn fwd_hook,
                           void *fwd_ctx, mi_metric_fn metric_fn, void *metric_ctx, double *value);

mi_status mi_tf_grad(const mi_transformer *m, const mi_tf_plan *plan, const mi_tf_plan *gplan,
                     float *arena, float *garena,
                     float *scratch, const uint8_t *flags, const uint8_t *bwd_flags,
                     const int64_t *tokens, const int64_t *pos_ids, const float *key_mask,
                     mi_hook_fn fwd_hook, void *fwd_ctx, mi_metric_fn metric_fn, void *metric_ctx,
                     double *value, mi_hook_fn bwd_hook, void *bwd_ctx, float *grads)
{
    const mi_tf_spec *s = &m->spec;
    MI_TRY(check_supported(m, plan, grads));
    MI_TRY(check_supported(m, gplan, grads));
    int64_t B = plan->batch, T = plan->seq, BT = B * T, D = s->d_model;
    int64_t Mm = s->attn_only ? 0 : s->d_mlp;
    float *praw = scratch + 2 * BT * D + 2 * BT * Mm, *draw = praw + (s->post_norms ? BT * D : 0);
    gstate gs = {m, plan, gplan, arena, garena, bwd_flags, bwd_hook, bwd_ctx, grads, pos_ids, NULL, NULL,
                 scratch, scratch + BT * D, scratch + 2 * BT * D, scratch + 2 * BT * D + BT * Mm,
                 s->post_norms ? praw : NULL, s->attn_softcap > 0.0f ? draw : NULL};
    float *rope = NULL;
    if (s->rotary) {
        /* the forward's table again (the forward checks the positions first) */
        int64_t n_pos = T;
        for (int64_t i = 0; pos_ids && i < BT; i++)
            if (pos_ids[i] + 1 > n_pos && pos_ids[i] < s->n_ctx) n_pos = pos_ids[i] + 1;
        size_t n = (size_t)n_pos * (size_t)s->rope.rotary_dim;
        if (!(rope = mi_malloc(2 * n * sizeof(float) + 64)))
            return mi_fail(MI_ERR_NOMEM, "gradients: out of memory for the rotary table");
        mi_rotary_table(&s->rope, n_pos, rope, rope + n);
        gs.rope_cos = rope;
        gs.rope_sin = rope + n;
    }
    mi_status st = grad_pass(&gs, flags, tokens, pos_ids, key_mask, fwd_hook, fwd_ctx, metric_fn,
                             metric_ctx, value);
    mi_free(rope);
    return st;
}

static mi_status grad_pass(const gstate *g, const uint8_t *flags, const int64_t *tokens,
                           const int64_t *pos_ids, const float *key_mask, mi_hook_fn fwd_hook,
                           void *fwd_ctx, mi_metric_fn metric_fn, void *metric_ctx, double *value)
{
    const mi_transformer *m = g->m;
    const mi_tf_spec *s = &m->spec;
    const mi_tf_plan *plan = g->pl;
    float *arena = g->A;
    int64_t B = plan->batch, T = plan->seq, BT = B * T, D = s->d_model, Vo = s->d_vocab_out;
    /* every point written (the backward reads them all), hooks where asked */
    int np = mi_tf_n_points(s);
    uint8_t *all = malloc((size_t)np);
    if (!all) return mi_fail(MI_ERR_NOMEM, "gradients: out of memory");
    for (int p = 0; p < np; p++) all[p] = flags[p] | (mi_tf_point_present(s, p) ? MI_HOOK_CACHE : 0);
    mi_status fst = mi_tf_forward(m, plan, arena, all, tokens, NULL, pos_ids, key_mask, fwd_hook, fwd_ctx);
    free(all);
    MI_TRY(fst);

    int pf = mi_tf_final_point(s, 0);
    mi_tensor_view lv;
    if (!mi_tf_point_view(m, plan, arena, pf + MI_PF_UNEMBED_OUT, &lv))
        return mi_fail(MI_ERR_VALUE, "gradients: the plan keeps no logits");
    float *dlogits = GV(pf + MI_PF_UNEMBED_OUT);
    zero(dlogits, BT * Vo);
    /* the metric reads the model's output: with a logit soft-cap, cap * tanh(hook_out / cap) */
    lv.data = mi_tf_output(m, plan, arena);
    MI_TRY(metric_fn(metric_ctx, &lv, dlogits, value));
    if (s->logit_softcap > 0.0f)
        mi_tf_softcap_backward(s->logit_softcap, lv.data, dlogits, dlogits, BT * Vo);
    MI_TRY(bfire(g, pf + MI_PF_UNEMBED_OUT));

    /* logits = xf @ W_U + b_U (tied: xf @ W_E^T) */
    const size_t *go = m->global_off;
    const float *xf = AV(pf + MI_PF_UNEMBED_IN);
    float *g_xf = GV(pf + MI_PF_UNEMBED_IN);
    if (g->grads) mi_sgemm(1, 0, D, Vo, BT, xf, D, dlogits, Vo, NULL, 1.0f, gw(g, go[MI_G_W_U]), Vo);
    colsum_acc(dlogits, NULL, BT, Vo, gw(g, go[MI_G_B_U]));
    if (m->tied_unembed)
        wmul(m, go[MI_G_W_E], 0, 0, BT, D, Vo, dlogits, Vo, D, 0, g_xf, D);
    else
        wmul(m, go[MI_G_W_U], 0, 1, BT, D, Vo, dlogits, Vo, Vo, 0, g_xf, D);
    MI_TRY(bfire(g, pf + MI_PF_UNEMBED_IN));
    /* xf = ln_final(resid[L]) */
    int last = mi_tf_layer_point((int)s->n_layers - 1, MI_P_RESID_POST);
    if (s->norm != MI_NORM_NONE) {
        float *g_L = GV(last);
        zero(g_L, BT * D);
        MI_TRY(norm_bwd(g, centred(s->norm), BT, D, g_xf, AV(pf + MI_PF_LNF_NORM), AV(pf + MI_PF_LNF_SCALE),
                        pw(m, go[MI_G_LNF_W]), pf + MI_PF_LNF_NORM, pf + MI_PF_LNF_SCALE, g_L,
                        gw(g, go[MI_G_LNF_W]), gw(g, go[MI_G_LNF_B])));
    }
    for (int l = (int)s->n_layers - 1; l >= 0; l--) {
        MI_TRY(mi_cancel_point());
        MI_TRY(bfire(g, mi_tf_layer_point(l, MI_P_RESID_POST)));
        MI_TRY(layer_bwd(g, l));
    }
    /* resid_pre[0] = embed + pos_embed */
    const float *g0 = GV(mi_tf_layer_point(0, MI_P_RESID_PRE));
    float *g_emb = GV(MI_PS_EMBED);
    copy(g_emb, g0, BT * D);
    MI_TRY(bfire(g, MI_PS_EMBED));
    if (g->grads) MI_TRY(mi_embedding_backward(g_emb, tokens, BT, s->d_vocab, D, gw(g, go[MI_G_W_E])));
    if (s->pos_embed) {
        float *g_pos = GV(MI_PS_POS_EMBED);
        copy(g_pos, g0, BT * D);
        MI_TRY(bfire(g, MI_PS_POS_EMBED));
        if (g->grads) {
            /* pos_embed = W_pos[pos_ids] * key_mask: padding rows add nothing */
            int64_t *pos = malloc(sizeof(int64_t) * (size_t)BT);
            if (!pos) return mi_fail(MI_ERR_NOMEM, "gradients: out of memory");
            for (int64_t i = 0; i < BT; i++) {
                pos[i] = pos_ids ? pos_ids[i] : i % T;
                memcpy(g->xin + i * D, g_pos + i * D, sizeof(float) * (size_t)D);
                if (key_mask && key_mask[i] == 0.0f) memset(g->xin + i * D, 0, sizeof(float) * (size_t)D);
            }
            mi_status st = mi_embedding_backward(g->xin, pos, BT, s->n_ctx, D, gw(g, go[MI_G_W_POS]));
            free(pos);
            MI_TRY(st);
        }
    }
    return MI_OK;
}
