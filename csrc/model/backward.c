/* backward.c - forward with every activation kept, cross-entropy, and the
 * backward pass of the transformer (contract in backward.h).
 *
 * The forward's activations are read back through the hook-point views of an
 * arena planned with every point cached, so this file needs nothing private
 * from transformer.c. The only activations that are not hook points (the
 * affine norm outputs x/scale*w + b that feed the next GEMM) are recomputed
 * from hook_normalized into a scratch buffer.
 *
 * Scratch (floats): dlogits BT*Vo, dresid/dx/xin BT*D each, dz BT*H*Dh,
 * dqkv BT*3*H*Dh, and for MLPs dpost/dpre/dpre_lin/act BT*M each.
 */
#include "model/backward.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/cancel.h"
#include "common/memory.h"
#include "common/threads.h"
#include "kernels/activation.h"
#include "kernels/attention.h"
#include "kernels/cross_entropy.h"
#include "kernels/embedding.h"
#include "kernels/gemm.h"
#include "kernels/norm.h"
#include "kernels/rotary.h"

#define ABSENT ((size_t)-1)
#define COL_BLOCK 16

static float *pw(const mi_transformer *m, size_t off) { return off == ABSENT ? NULL : m->params + off; }
static float *gw(float *grads, size_t off) { return off == ABSENT ? NULL : grads + off; }

/* out[c] += sum_r x[r, c]: parallel over column blocks, each column's sum in
 * row order (bitwise identical for any thread count). */
static void colsum_acc(const float *x, int64_t rows, int64_t cols, float *out)
{
    if (!out) return;
    int64_t nblk = (cols + COL_BLOCK - 1) / COL_BLOCK;
    #pragma omp parallel for schedule(static) num_threads(mi_get_num_threads())
    for (int64_t blk = 0; blk < nblk; blk++) {
        int64_t c0 = blk * COL_BLOCK, c1 = c0 + COL_BLOCK < cols ? c0 + COL_BLOCK : cols;
        float acc[COL_BLOCK] = {0};
        for (int64_t r = 0; r < rows; r++)
            for (int64_t c = c0; c < c1; c++) acc[c - c0] += x[r * cols + c];
        for (int64_t c = c0; c < c1; c++) out[c] += acc[c - c0];
    }
}

/* p[0 .. n) = 0, in parallel (a serial memset of the larger buffers would leave
 * the other threads waiting). */
static void zero(float *p, int64_t n)
{
    const int64_t blk = 16384;
    #pragma omp parallel for schedule(static) if (n > 2 * blk) num_threads(mi_get_num_threads())
    for (int64_t i0 = 0; i0 < n; i0 += blk)
        memset(p + i0, 0, sizeof(float) * (size_t)(n - i0 < blk ? n - i0 : blk));
}

static float *view_ptr(const mi_transformer *m, const mi_tf_plan *plan, float *arena, int p)
{
    mi_tensor_view v;
    return mi_tf_point_view(m, plan, arena, p, &v) ? v.data : NULL;
}

const float *mi_tf_norm_out(const float *normalized, const float *w, const float *b,
                           int64_t rows, int64_t d, float *scratch)
{
    if (!w) return normalized;
    #pragma omp parallel for schedule(static) num_threads(mi_get_num_threads())
    for (int64_t r = 0; r < rows; r++)
        for (int64_t i = 0; i < d; i++)
            scratch[r * d + i] = normalized[r * d + i] * w[i] + (b ? b[i] : 0.0f);
    return scratch;
}

void mi_tf_softcap_backward(float cap, const float *capped, const float *dcapped, float *draw,
                            int64_t n)
{
    #pragma omp parallel for schedule(static) num_threads(mi_get_num_threads())
    for (int64_t i = 0; i < n; i++) {
        const float t = capped[i] / cap;
        draw[i] = capped[i] == -INFINITY ? 0.0f : dcapped[i] * (1.0f - t * t);
    }
}

/* dx += norm_backward(dy); dx must not alias dy. */
static mi_status norm_backward(const mi_tf_spec *s, const float *dy, const float *x, const float *w,
                               const float *scale, int64_t rows, float *dx, float *dw, float *db)
{
    int64_t d = s->d_model;
    if (s->norm == MI_NORM_NONE) {
        #pragma omp parallel for schedule(static) num_threads(mi_get_num_threads())
        for (int64_t i = 0; i < rows * d; i++) dx[i] += dy[i];
        return MI_OK;
    }
    if (s->norm == MI_NORM_RMS || s->norm == MI_NORM_RMSPRE)
        return mi_rms_norm_backward(dy, x, w, scale, rows, d, dx, dw);
    return mi_layer_norm_backward(dy, x, w, scale, rows, d, dx, dw, db);
}

/* The gradient through a post norm (ln1_post / ln2_post: RMS with weights) into
 * dout (zeroed first): its input is rebuilt as hook_normalized * hook_scale into
 * xin (the W_O / W_out product itself shares a scratch slot across layers). */
static mi_status post_norm_backward(const float *dy, const float *normalized, const float *scale,
                                    const float *w, int64_t rows, int64_t d, float *xin,
                                    float *dout, float *dw)
{
    #pragma omp parallel for schedule(static) num_threads(mi_get_num_threads())
    for (int64_t r = 0; r < rows; r++)
        for (int64_t i = 0; i < d; i++) {
            xin[r * d + i] = normalized[r * d + i] * scale[r];
            dout[r * d + i] = 0.0f;
        }
    return mi_rms_norm_backward(dy, xin, w, scale, rows, d, dout, dw);
}

typedef struct {
    float *dlogits, *dresid, *dx, *xin, *dz, *dqkv, *dpost, *dpre, *dpre_lin, *act;
    float *dpn, *xpn;   /* post norms: gradient of the W_O / W_out product, rebuilt input */
    float *dattn;           /* parallel_attn_mlp: d attn_out, kept apart from d resid_pre */
    float *drot;            /* rotary: d rot_q [BT,H,Dh] then d rot_k [BT,Hkv,Dh] */
    const int64_t *pos_ids; /* rotary positions (NULL: t) */
    const float *rope_cos, *rope_sin;
    double *prof, t_last, cpu_last;   /* profile (NULL: off), wall and CPU time of the last tick */
} scratch_t;

/* Process CPU seconds (every thread): robust to a machine shared with other jobs. */
static double cpu_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

const char *const mi_bwd_phase_names[MI_BWD_N_PHASES] = {
    [MI_BWD_FORWARD] = "forward", [MI_BWD_LOSS] = "loss", [MI_BWD_UNEMBED] = "unembed",
    [MI_BWD_NORM] = "norm", [MI_BWD_MLP_GEMM] = "mlp_gemm", [MI_BWD_ACT] = "activation",
    [MI_BWD_ATTN_GEMM] = "attn_gemm", [MI_BWD_ATTN_CORE] = "attn_core", [MI_BWD_BIAS] = "bias",
    [MI_BWD_EMBED] = "embed",
};

/* Charge the wall and CPU time since the last tick to `phase` (no-op without a profile). */
static void tick(scratch_t *S, int phase)
{
    if (!S->prof) return;
    double now = omp_get_wtime(), cpu = cpu_seconds();
    S->prof[phase] += now - S->t_last;
    S->prof[MI_BWD_N_PHASES + phase] += cpu - S->cpu_last;
    S->t_last = now;
    S->cpu_last = cpu;
}

/* Backward of layer l. On entry S->dresid = dL/d resid_post[l]; on exit
 * dL/d resid_pre[l]. */
static mi_status layer_backward(const mi_transformer *m, const mi_tf_plan *pl, float *A,
                                float *grads, int l, scratch_t *S)
{
    const mi_tf_spec *s = &m->spec;
    int64_t B = pl->batch, T = pl->seq, BT = B * T, D = s->d_model, H = s->n_heads,
            Hkv = mi_tf_kv_heads(s), Dh = s->d_head, HD = H * Dh, Mm = s->d_mlp,
            QKV = (H + 2 * Hkv) * Dh;
    const size_t *o = m->layer_off + (size_t)l * MI_W_PER_LAYER;
    size_t w_qkv, b_qkv;
    mi_tf_qkv_offsets(m, l, &w_qkv, &b_qkv);
    int p0 = mi_tf_layer_point(l, 0);
#define V(k) view_ptr(m, pl, A, p0 + (k))
    float *dresid = S->dresid;
    if (!s->attn_only) {
        const float *resid_mid = s->parallel_attn_mlp ? V(MI_P_RESID_PRE) : V(MI_P_RESID_MID);
    if (s->parallel_attn_mlp) {   /* attn_out's gradient is d resid_post itself */
        memcpy(S->dattn, dresid, sizeof(float) * (size_t)(BT * D));
    }
        const float *ln2_in = s->use_hook_mlp_in ? V(MI_P_MLP_IN) : resid_mid;
        const float *x2 = ln2_in;
        if (s->norm != MI_NORM_NONE)
            x2 = mi_tf_norm_out(V(MI_P_LN2_NORM), pw(m, o[MI_W_LN2_W]), pw(m, o[MI_W_LN2_B]), BT, D, S->xin);
        const float *pre = V(MI_P_MLP_PRE), *post = V(MI_P_MLP_POST);
        /* mlp_out = [ln2_post](post @ W_out + b_out) ; resid_post = resid_mid + mlp_out */
        const float *dmo = dresid;
        if (s->post_norms) {
            MI_TRY(post_norm_backward(dresid, V(MI_P_LN2P_NORM), V(MI_P_LN2P_SCALE),
                                      pw(m, o[MI_W_LN2P_W]), BT, D, S->xpn, S->dpn,
                                      gw(grads, o[MI_W_LN2P_W])));
            dmo = S->dpn;
        }
        tick(S, MI_BWD_NORM);
        mi_sgemm(1, 0, Mm, D, BT, post, Mm, dmo, D, NULL, 1.0f, gw(grads, o[MI_W_OUT]), D);
        tick(S, MI_BWD_MLP_GEMM);
        colsum_acc(dmo, BT, D, gw(grads, o[MI_W_B_OUT]));
        tick(S, MI_BWD_BIAS);
        mi_sgemm(0, 1, BT, Mm, D, dmo, D, pw(m, o[MI_W_OUT]), D, NULL, 0.0f, S->dpost, Mm);
        tick(S, MI_BWD_MLP_GEMM);
        /* S->dx: the GEMMs below write it (beta 0 first); relu's fused step writes dpre */
        if (s->gated_mlp || s->act != MI_ACT_RELU) zero(S->dpre, BT * Mm);
        if (s->gated_mlp) {
            /* post = act(pre) * pre_linear + b_in; pre = x2 @ W_gate; pre_linear = x2 @ W_in */
            const float *pre_lin = V(MI_P_MLP_PRE_LINEAR);
            colsum_acc(S->dpost, BT, Mm, gw(grads, o[MI_W_B_IN]));
            mi_activate((mi_activation)s->act, pre, S->act, BT * Mm);
            #pragma omp parallel for schedule(static) num_threads(mi_get_num_threads())
            for (int64_t i = 0; i < BT * Mm; i++) {
                S->dpre_lin[i] = S->dpost[i] * S->act[i];
                S->act[i] = S->dpost[i] * pre_lin[i];   /* now d act(pre) */
            }
            mi_activation_backward((mi_activation)s->act, pre, S->act, S->dpre, BT * Mm);
            mi_sgemm(1, 0, D, Mm, BT, x2, D, S->dpre, Mm, NULL, 1.0f, gw(grads, o[MI_W_GATE]), Mm);
            mi_sgemm(1, 0, D, Mm, BT, x2, D, S->dpre_lin, Mm, NULL, 1.0f, gw(grads, o[MI_W_IN]), Mm);
            mi_sgemm(0, 1, BT, D, Mm, S->dpre, Mm, pw(m, o[MI_W_GATE]), Mm, NULL, 0.0f, S->dx, D);
            mi_sgemm(0, 1, BT, D, Mm, S->dpre_lin, Mm, pw(m, o[MI_W_IN]), Mm, NULL, 1.0f, S->dx, D);
        } else if (s->act == MI_ACT_RELU) {
            /* post = relu(pre); pre = x2 @ W_in + b_in: dpre and d b_in in one pass */
            MI_TRY(mi_relu_backward_bias(pre, S->dpost, BT, Mm, S->dpre, gw(grads, o[MI_W_B_IN])));
            tick(S, MI_BWD_ACT);
            mi_sgemm(1, 0, D, Mm, BT, x2, D, S->dpre, Mm, NULL, 1.0f, gw(grads, o[MI_W_IN]), Mm);
            tick(S, MI_BWD_MLP_GEMM);
            mi_sgemm(0, 1, BT, D, Mm, S->dpre, Mm, pw(m, o[MI_W_IN]), Mm, NULL, 0.0f, S->dx, D);
        } else {
            /* post = act(pre); pre = x2 @ W_in + b_in */
            mi_activation_backward((mi_activation)s->act, pre, S->dpost, S->dpre, BT * Mm);
            tick(S, MI_BWD_ACT);
            mi_sgemm(1, 0, D, Mm, BT, x2, D, S->dpre, Mm, NULL, 1.0f, gw(grads, o[MI_W_IN]), Mm);
            tick(S, MI_BWD_MLP_GEMM);
            colsum_acc(S->dpre, BT, Mm, gw(grads, o[MI_W_B_IN]));
            tick(S, MI_BWD_BIAS);
            mi_sgemm(0, 1, BT, D, Mm, S->dpre, Mm, pw(m, o[MI_W_IN]), Mm, NULL, 0.0f, S->dx, D);
        }
        tick(S, MI_BWD_MLP_GEMM);
        /* x2 = ln2(resid_mid): dresid (already d resid_mid through the skip) += ln2'(dx) */
        MI_TRY(norm_backward(s, S->dx, ln2_in, pw(m, o[MI_W_LN2_W]), V(MI_P_LN2_SCALE), BT, dresid,
                             gw(grads, o[MI_W_LN2_W]), gw(grads, o[MI_W_LN2_B])));
        tick(S, MI_BWD_NORM);
    }
    /* attn_out = [ln1_post](z @ W_O + b_O) ; resid_mid = resid_pre + attn_out */
    const float *resid_pre = V(MI_P_RESID_PRE), *z = V(MI_P_Z), *pattern = V(MI_P_PATTERN);
    const float *qkv = V(MI_P_Q);
    const float *dattn = s->parallel_attn_mlp && !s->attn_only ? S->dattn : dresid;
    if (s->post_norms) {
        /* attn_out = ln1_post(z @ W_O + b_O): d of the product into S->dpn */
        MI_TRY(post_norm_backward(dattn, V(MI_P_LN1P_NORM), V(MI_P_LN1P_SCALE),
                                  pw(m, o[MI_W_LN1P_W]), BT, D, S->xpn, S->dpn,
                                  gw(grads, o[MI_W_LN1P_W])));
        dattn = S->dpn;
        tick(S, MI_BWD_NORM);
    }
    mi_sgemm(1, 0, HD, D, BT, z, HD, dattn, D, NULL, 1.0f, gw(grads, o[MI_W_O]), D);
    tick(S, MI_BWD_ATTN_GEMM);
    colsum_acc(dattn, BT, D, gw(grads, o[MI_W_B_O]));
    tick(S, MI_BWD_BIAS);
    mi_sgemm(0, 1, BT, HD, D, dattn, D, pw(m, o[MI_W_O]), D, NULL, 0.0f, S->dz, HD);
    tick(S, MI_BWD_ATTN_GEMM);
    /* z = softmax(cap(q k^T / attn_scale), window-masked) v, q and k rotated when the
     * model is rotary; a softcap's derivative reads the forward's capped scores */
    zero(S->dqkv, BT * QKV);
    const mi_attn_stride sqkv = {T * QKV, QKV, Dh};
    mi_attn_layout lay = {B, T, T, 0, H, Hkv, Dh, sqkv, sqkv, sqkv, 0, 0.0f};
    lay.window = mi_tf_layer_local(s, l) ? s->window : 0;
    lay.softcap = s->attn_softcap;
    const float *scores = s->attn_softcap > 0.0f ? V(MI_P_SCORES) : NULL;
    const float *v = qkv + (H + Hkv) * Dh;
    if (s->rotary) {
        /* d rot_q, d rot_k in their own layout, then rotated back into dqkv */
        float *drq = S->drot, *drk = S->drot + BT * HD;
        zero(S->drot, BT * (H + Hkv) * Dh);
        lay.q = (mi_attn_stride){T * HD, HD, Dh};
        lay.k = (mi_attn_stride){T * Hkv * Dh, Hkv * Dh, Dh};
        MI_TRY(mi_attn_backward(&lay, V(MI_P_ROT_Q), V(MI_P_ROT_K), v, pattern, scores, S->dz,
                                1.0f / s->attn_scale, s->causal, drq, drk, S->dqkv + (H + Hkv) * Dh));
        mi_rotary_apply(&s->rope, drq, HD, S->dqkv, QKV, BT, T, H, Dh, S->pos_ids, S->rope_cos,
                        S->rope_sin, 1);
        mi_rotary_apply(&s->rope, drk, Hkv * Dh, S->dqkv + HD, QKV, BT, T, Hkv, Dh, S->pos_ids,
                        S->rope_cos, S->rope_sin, 1);
    } else {
        MI_TRY(mi_attn_backward(&lay, qkv, qkv + HD, v, pattern, scores, S->dz, 1.0f / s->attn_scale,
                                s->causal, S->dqkv, S->dqkv + HD, S->dqkv + (H + Hkv) * Dh));
    }
    tick(S, MI_BWD_ATTN_CORE);
    /* qkv = x1 @ W_qkv + b_qkv ; x1 = ln1(resid_pre) */
    const float *x1 = resid_pre;
    if (s->norm != MI_NORM_NONE)
        x1 = mi_tf_norm_out(V(MI_P_LN1_NORM), pw(m, o[MI_W_LN1_W]), pw(m, o[MI_W_LN1_B]), BT, D, S->xin);
    tick(S, MI_BWD_NORM);
    mi_sgemm(1, 0, D, QKV, BT, x1, D, S->dqkv, QKV, NULL, 1.0f, gw(grads, w_qkv), QKV);
    tick(S, MI_BWD_ATTN_GEMM);
    colsum_acc(S->dqkv, BT, QKV, gw(grads, b_qkv));
    tick(S, MI_BWD_BIAS);
    mi_sgemm(0, 1, BT, D, QKV, S->dqkv, QKV, pw(m, w_qkv), QKV, NULL, 0.0f, S->dx, D);
    tick(S, MI_BWD_ATTN_GEMM);
    mi_status st = norm_backward(s, S->dx, resid_pre, pw(m, o[MI_W_LN1_W]), V(MI_P_LN1_SCALE), BT, dresid,
                                 gw(grads, o[MI_W_LN1_W]), gw(grads, o[MI_W_LN1_B]));
    tick(S, MI_BWD_NORM);
    return st;
#undef V
}

static uint8_t *all_points_cached(const mi_tf_spec *s)
{
    int np = mi_tf_n_points(s);
    uint8_t *flags = malloc((size_t)np);
    if (flags)
        for (int p = 0; p < np; p++) flags[p] = mi_tf_point_present(s, p) ? MI_HOOK_CACHE : 0;
    return flags;
}

static size_t scratch_floats(const mi_tf_spec *s, int64_t BT)
{
    int64_t D = s->d_model, HD = s->n_heads * s->d_head, Mm = s->attn_only ? 0 : s->d_mlp;
    int64_t KD = mi_tf_kv_heads(s) * s->d_head;
    return (size_t)(BT * s->d_vocab_out + 3 * BT * D + BT * HD + BT * (HD + 2 * KD) + 4 * BT * Mm
                    + (s->parallel_attn_mlp ? BT * D : 0) + (s->rotary ? BT * (HD + KD) : 0)
                    + (s->post_norms ? 2 * BT * D : 0)) + 64;
}

size_t mi_tf_backward_workspace(const mi_transformer *m, int64_t B, int64_t T)
{
    if (B <= 0 || T <= 0 || m->spec.n_layers < 1) return 0;
    uint8_t *flags = all_points_cached(&m->spec);
    mi_tf_plan plan = {0};
    if (!flags) return 0;
    size_t n = 0;
    if (mi_tf_plan_call(m, B, T, -1, (int)m->spec.n_layers, flags, &plan) == MI_OK) {
        n = (plan.n_floats + 15) / 16 * 16 + scratch_floats(&m->spec, B * T);
        mi_tf_plan_free(&plan);
    }
    free(flags);
    return n;
}

/* What one call of train_pass does: the whole step (forward, loss, backward), the
 * forward alone, or the backward alone from a given dlogits over the activations a
 * forward-only call left in the caller's workspace. */
enum { PASS_LOSS, PASS_FORWARD, PASS_BACKWARD };

static mi_status train_pass(const mi_transformer *m, int64_t B, int64_t T, int mode,
                            const int64_t *tokens, const int64_t *targets,
                            const int64_t *pos_ids, const float *key_mask, const float *dlogits_in,
                            float *grads, float *loss, const float **logits_out,
                            float *work, size_t work_floats, double *prof)
{
    double t0 = omp_get_wtime(), cpu0 = prof ? cpu_seconds() : 0.0;
    const mi_tf_spec *s = &m->spec;
    int64_t BT = B * T, D = s->d_model, HD = s->n_heads * s->d_head, Vo = s->d_vocab_out;
    int64_t Mm = s->attn_only ? 0 : s->d_mlp;
    if (s->n_layers < 1) return mi_fail(MI_ERR_VALUE, "backward: the model needs n_layers >= 1");
    if (s->no_head) return mi_fail(MI_ERR_VALUE, "backward: this model has no unembedding (no_head, "
                                   "e.g. REVE's encoder): training needs a loss on logits");
    if (s->use_split_qkv_input || s->use_attn_in)
        return mi_fail(MI_ERR_VALUE, "backward: models with use_split_qkv_input or use_attn_in cannot "
                       "be trained (the backward reads ln1 and q/k/v as one [batch, pos, d_model] input)");
    if (!s->attn_only && s->act == MI_TF_ACT_SOLU_LN)
        return mi_fail(MI_ERR_VALUE, "backward: act_fn 'solu_ln' has no backward pass (forward and "
                       "analysis only); train with relu, gelu, gelu_new or silu");
    if (B <= 0 || T <= 0) return mi_fail(MI_ERR_VALUE, "backward: tokens must be non-empty, got (%ld, %ld)",
                                         (long)B, (long)T);
    if (T > s->n_ctx) return mi_fail(MI_ERR_VALUE, "backward: %ld positions exceed n_ctx=%ld",
                                     (long)T, (long)s->n_ctx);
    int64_t counted = 0;
    for (int64_t i = 0; mode == PASS_LOSS && i < BT; i++) {
        if (targets[i] == MI_IGNORE_INDEX) continue;
        if (targets[i] < 0 || targets[i] >= Vo)
            return mi_fail(MI_ERR_INDEX, "targets: id %ld at [%ld, %ld] is outside [0, d_vocab_out=%ld) "
                           "and is not the ignore index -100", (long)targets[i], (long)(i / T),
                           (long)(i % T), (long)Vo);
        counted++;
    }
    if (mode == PASS_LOSS && !counted) return mi_fail(MI_ERR_VALUE, "targets: every position is -100 (ignored): the mean loss is undefined");

    uint8_t *flags = all_points_cached(s);
    mi_tf_plan plan = {0};
    float *arena = NULL, *scr = NULL, *owned = NULL, *rope = NULL;
    int64_t *pos = NULL;
    mi_status st = MI_OK;
    if (!flags) return mi_fail(MI_ERR_NOMEM, "backward: out of memory");
    st = mi_tf_plan_call(m, B, T, -1, (int)s->n_layers, flags, &plan);
    if (st != MI_OK) { free(flags); return st; }
    size_t n_scr = scratch_floats(s, BT), n_arena = (plan.n_floats + 15) / 16 * 16;
    if (mode != PASS_LOSS && (!work || work_floats < n_arena + n_scr)) {
        /* the activations must outlive the call: only the caller's workspace can hold them */
        st = mi_fail(MI_ERR_VALUE, "backward: the split forward/backward needs a workspace of %zu "
                     "floats for [%ld, %ld] (backward_workspace), got %zu", n_arena + n_scr, (long)B,
                     (long)T, work ? work_floats : 0);
        mi_tf_plan_free(&plan);
        free(flags);
        return st;
    }
    if (!work || work_floats < n_arena + n_scr) work = owned = mi_malloc(sizeof(float) * (n_arena + n_scr));
    arena = work;
    scr = work ? work + n_arena : NULL;
    pos = malloc(sizeof(int64_t) * (size_t)BT);
    if (!arena || !scr || !pos) { st = mi_fail(MI_ERR_NOMEM, "backward: cannot allocate %zu floats of "
                                               "activations and gradients", plan.n_floats + n_scr); goto done; }
    if (mode != PASS_BACKWARD) {
        st = mi_tf_forward(m, &plan, arena, flags, tokens, NULL, pos_ids, key_mask, NULL, NULL);
        if (st != MI_OK) goto done;
    }
    if (mode == PASS_FORWARD) {
        *logits_out = mi_tf_output(m, &plan, arena);
        goto done;
    }

    scratch_t S;
    S.prof = prof;
    S.t_last = t0;
    S.cpu_last = cpu0;
    tick(&S, MI_BWD_FORWARD);
    float *c = scr;
    S.dlogits = c; c += BT * Vo;
    S.dresid = c; c += BT * D;
    S.dx = c; c += BT * D;
    S.xin = c; c += BT * D;
    S.dz = c; c += BT * HD;
    int64_t KD = mi_tf_kv_heads(s) * s->d_head;
    S.dqkv = c; c += BT * (HD + 2 * KD);
    S.dpost = c; c += BT * Mm;
    S.dpre = c; c += BT * Mm;
    S.dpre_lin = c; c += BT * Mm;
    S.act = c; c += BT * Mm;
    S.dattn = c; c += s->parallel_attn_mlp ? BT * D : 0;
    S.drot = c; c += s->rotary ? BT * (HD + KD) : 0;
    S.dpn = c; c += s->post_norms ? BT * D : 0;
    S.xpn = c; c += s->post_norms ? BT * D : 0;
    S.pos_ids = pos_ids;
    S.rope_cos = S.rope_sin = NULL;
    if (s->rotary) {
        /* the forward's table again (its positions were checked by the forward) */
        int64_t n_pos = T;
        for (int64_t i = 0; pos_ids && i < BT; i++)
            if (pos_ids[i] + 1 > n_pos) n_pos = pos_ids[i] + 1;
        size_t n = (size_t)n_pos * (size_t)s->rope.rotary_dim;
        rope = mi_malloc(2 * n * sizeof(float));
        if (!rope) { st = mi_fail(MI_ERR_NOMEM, "backward: out of memory for the rotary table"); goto done; }
        mi_rotary_table(&s->rope, n_pos, rope, rope + n);
        S.rope_cos = rope;
        S.rope_sin = rope + n;
    }

    /* loss = mean cross_entropy(logits, targets) */
    const float *logits = mi_tf_output(m, &plan, arena);
    const float *dlogits = S.dlogits;   /* d loss / d (raw) logits */
    if (mode == PASS_LOSS) {
        float mean = 0.0f;
        zero(S.dlogits, BT * Vo);
        st = mi_cross_entropy(logits, targets, BT, Vo, MI_IGNORE_INDEX, &mean, NULL, S.dlogits);
        if (st != MI_OK) goto done;
        if (!isfinite(mean)) { st = mi_fail(MI_ERR_VALUE, "backward: the loss is %g (non-finite weights "
                                            "or logits?); gradients were left unchanged", (double)mean);
                               goto done; }
        *loss = mean;
    } else {
        dlogits = dlogits_in;      /* read where the caller holds it */
    }
    if (s->logit_softcap > 0.0f) {   /* the loss reads cap * tanh(raw / cap) */
        mi_tf_softcap_backward(s->logit_softcap, logits, dlogits, S.dlogits, BT * Vo);
        dlogits = S.dlogits;
    }
    tick(&S, MI_BWD_LOSS);

    int pf = mi_tf_final_point(s, 0);
    int last = mi_tf_layer_point((int)s->n_layers - 1, MI_P_RESID_POST);
    const float *resid_L = view_ptr(m, &plan, arena, last);
    const size_t *g = m->global_off;
    /* logits = xf @ W_U + b_U ; xf = ln_final(resid[L]) */
    const float *xf = resid_L;
    if (s->norm != MI_NORM_NONE)
        xf = mi_tf_norm_out(view_ptr(m, &plan, arena, pf + MI_PF_LNF_NORM), pw(m, g[MI_G_LNF_W]),
                      pw(m, g[MI_G_LNF_B]), BT, D, S.xin);
    mi_sgemm(1, 0, D, Vo, BT, xf, D, dlogits, Vo, NULL, 1.0f, gw(grads, g[MI_G_W_U]), Vo);
    colsum_acc(dlogits, BT, Vo, gw(grads, g[MI_G_B_U]));
    mi_sgemm(0, 1, BT, D, Vo, dlogits, Vo, pw(m, g[MI_G_W_U]), Vo, NULL, 0.0f, S.dx, D);
    tick(&S, MI_BWD_UNEMBED);
    zero(S.dresid, BT * D);
    st = norm_backward(s, S.dx, resid_L, pw(m, g[MI_G_LNF_W]),
                       s->norm != MI_NORM_NONE ? view_ptr(m, &plan, arena, pf + MI_PF_LNF_SCALE) : NULL,
                       BT, S.dresid, gw(grads, g[MI_G_LNF_W]), gw(grads, g[MI_G_LNF_B]));
    if (st != MI_OK) goto done;
    tick(&S, MI_BWD_NORM);
    for (int l = (int)s->n_layers - 1; l >= 0; l--) {
        st = mi_cancel_point();   /* Ctrl-C between layers: grads partly accumulated */
        if (st == MI_OK) st = layer_backward(m, &plan, arena, grads, l, &S);
        if (st != MI_OK) goto done;
    }
    /* resid_pre[0] = W_E[tokens] + W_pos[t] */
    st = mi_embedding_backward(S.dresid, tokens, BT, s->d_vocab, D, gw(grads, g[MI_G_W_E]));
    if (st != MI_OK) goto done;
    if (s->pos_embed) {
        /* resid_pre[0] += W_pos[pos_ids] * key_mask: padding rows add nothing */
        for (int64_t i = 0; i < BT; i++) {
            pos[i] = pos_ids ? pos_ids[i] : i % T;
            if (key_mask && key_mask[i] == 0.0f) memset(S.dresid + i * D, 0, sizeof(float) * (size_t)D);
        }
        st = mi_embedding_backward(S.dresid, pos, BT, s->n_ctx, D, gw(grads, g[MI_G_W_POS]));
    }
    tick(&S, MI_BWD_EMBED);
done:
    mi_free(rope);
    free(pos);
    mi_free(owned);
    mi_tf_plan_free(&plan);
    free(flags);
    return st;
}

mi_status mi_tf_loss_backward(const mi_transformer *m, int64_t B, int64_t T,
                              const int64_t *tokens, const int64_t *targets,
                              const int64_t *pos_ids, const float *key_mask,
                              float *grads, float *loss, float *work, size_t work_floats,
                              double *prof)
{
    return train_pass(m, B, T, PASS_LOSS, tokens, targets, pos_ids, key_mask, NULL, grads, loss, NULL,
                      work, work_floats, prof);
}

mi_status mi_tf_train_forward(const mi_transformer *m, int64_t B, int64_t T, const int64_t *tokens,
                              const int64_t *pos_ids, const float *key_mask, float *work,
                              size_t work_floats, const float **logits)
{
    return train_pass(m, B, T, PASS_FORWARD, tokens, NULL, pos_ids, key_mask, NULL, NULL, NULL, logits,
                      work, work_floats, NULL);
}

mi_status mi_tf_logits_backward(const mi_transformer *m, int64_t B, int64_t T, const int64_t *tokens,
                                const int64_t *pos_ids, const float *key_mask, const float *dlogits,
                                float *grads, float *work, size_t work_floats)
{
    return train_pass(m, B, T, PASS_BACKWARD, tokens, NULL, pos_ids, key_mask, dlogits, grads, NULL,
                      NULL, work, work_floats, NULL);
}
