/* transformer.c - the forward pass of the one transformer spec (contract in
 * transformer.h; the parameter layout is param_layout.c).
 *
 * The pass is a straight line of kernel calls; between them it "fires" the
 * hook point of the activation just written: one flag test when nothing is
 * registered. Every activation lives in the per-call arena at an offset the
 * plan fixed before the pass (arena.c), so cached activations are views, not
 * copies. Hook point ids and names: hook_points.c.
 */
#include "model/transformer.h"
#include "model/arena.h"
#include "model/kv_cache.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cancel.h"
#include "common/memory.h"
#include "common/threads.h"
#include "kernels/activation.h"
#include "kernels/attention.h"
#include "kernels/gemm.h"
#include "kernels/norm.h"
#include "kernels/rotary.h"
#include "kernels/softmax.h"
#include "model/linear.h"

#include <omp.h>

/* MI_PROFILE=1 in the environment: wall time per forward step, summed over
 * layers, printed to stderr after each pass (one getenv per pass). The
 * totals live in the pass's own run state, so passes on other threads or
 * models neither race on them nor mix into them. */
enum { PR_EMBED, PR_LN1, PR_QKV, PR_SCORES, PR_SOFTMAX, PR_APPLY, PR_ATTN_OUT, PR_ADD1, PR_LN2,
       PR_MLP_IN, PR_ACT, PR_MLP_OUT, PR_ADD2, PR_LNF, PR_UNEMBED, PR_N };
static const char *const prof_names[PR_N] = {"embed", "ln1", "qkv gemm", "scores", "softmax",
    "apply", "W_O gemm", "resid_mid add", "ln2", "W_in gemm", "activation", "W_out gemm",
    "resid_post add", "ln_final", "unembed gemm"};
_Static_assert(sizeof prof_names / sizeof prof_names[0] == PR_N, "one name per profile step");

typedef struct {
    double t[PR_N];   /* seconds per step, summed over layers */
    double mark;      /* wall time of the last start or stop */
} fwd_profile;

static void prof_report(const fwd_profile *p)
{
    double total = 0.0;
    for (int i = 0; i < PR_N; i++) total += p->t[i];
    fprintf(stderr, "MI_PROFILE forward %.1f ms:", total * 1e3);
    for (int i = 0; i < PR_N; i++)
        if (p->t[i] > 0.0) fprintf(stderr, " %s %.1f;", prof_names[i], p->t[i] * 1e3);
    fprintf(stderr, "\n");
}

/* ---------------------------------------------------------------- forward */
typedef struct run_state run_state;
static void add_into(const float *a, const float *b, float *y, int64_t n);
static mi_status run_layers(run_state *rs, int first, const float *key_mask);
static mi_status embed_step(run_state *rs, const int64_t *tokens, const int64_t *pos_ids,
                            const float *key_mask);

struct run_state {
    const mi_transformer *m;
    const mi_tf_plan *plan;
    float *arena;
    const uint8_t *flags;
    mi_hook_fn hook;
    void *ctx;
    fwd_profile *prof;   /* MI_PROFILE step times of this pass, or NULL */
    const int64_t *pos_ids;          /* [B,T] or NULL (t): rotary positions */
    float *rope_cos, *rope_sin;      /* rotary tables [n_pos, rotary_dim] of this pass */
    mi_kv_cache *kv;     /* the key/value cache the layers append to and attend over, or NULL */
};

static inline void prof_start(run_state *r)
{
    if (r->prof) r->prof->mark = omp_get_wtime();
}

static inline void prof_stop(run_state *r, int step)
{
    if (!r->prof) return;
    double now = omp_get_wtime();
    r->prof->t[step] += now - r->prof->mark;
    r->prof->mark = now;
}

static mi_status fire(run_state *r, int p)
{
    if (!(r->flags[p] & MI_HOOK_FIRES) || !r->hook) return MI_OK;
    mi_tensor_view v;
    if (!mi_tf_point_view(r->m, r->plan, r->arena, p, &v)) return MI_OK;
    return r->hook(r->ctx, p, &v);
}

/* fire() with the point's view moved to `data` (ln1's runs on the q and k
 * inputs live in their own buffers, shaped like the point's). */
static mi_status fire_at(run_state *r, int p, float *data)
{
    if (!(r->flags[p] & MI_HOOK_FIRES) || !r->hook) return MI_OK;
    mi_tensor_view v;
    if (!mi_tf_point_view(r->m, r->plan, r->arena, p, &v)) return MI_OK;
    v.data = data;
    return r->hook(r->ctx, p, &v);
}

static const float *param(const mi_transformer *m, size_t off) { return mi_tf_tensor(m, off); }
/* A weight the products read (float32 or bfloat16): only through mi_tf_linear. */
static mi_tf_weight weight(const mi_transformer *m, size_t off) { return mi_tf_weight_at(m, off); }

/* Norm of x [rows, D] as TransformerLens: scale (hook_scale), y = x / scale
 * (hook_normalized, before the affine weights), then out = y * w + b when the
 * norm has weights. Returns the tensor the next layer reads. With no hook
 * on either point it is one pass (mi_tl_norm; with x_add it also writes
 * x_sum = x + x_add first: the residual add); with hooks it stops after each
 * hooked point. Both ways give bitwise the same numbers (norm.h), so a hook
 * that changes nothing changes no bit. y is only written when something
 * reads it (a cache, a hook, or no affine weights). */
static mi_status norm_step(run_state *r, mi_norm_type type, int64_t rows, int64_t d, const float *x,
                           const float *x_add, float *x_sum,
                           const float *w, const float *b, float *y, float *scale, float *out,
                           int p_scale, int p_norm, const float **result)
{
    const mi_tf_spec *s = &r->m->spec;
    int centre = type == MI_NORM_LN || type == MI_NORM_LNPRE;
    int cb_scale = (r->flags[p_scale] & MI_HOOK_FIRES) && r->hook;
    int cb_norm = (r->flags[p_norm] & MI_HOOK_FIRES) && r->hook;
    float *yn = y && (r->flags[p_norm] || !w) ? y : NULL;
    *result = w ? (const float *)out : y;
    if (!cb_scale && !cb_norm) {
        mi_tl_norm(centre, x, x_add, x_sum, w, b, s->eps, rows, d, scale, yn, out);
        return MI_OK;
    }
    if (x_add) { add_into(x, x_add, x_sum, rows * d); x = x_sum; }
    if (cb_scale) {
        mi_tl_norm_scale(centre, x, s->eps, rows, d, scale);
        MI_TRY(fire_at(r, p_scale, scale));
    }
    if (cb_norm) {
        if (!cb_scale) mi_tl_norm(centre, x, NULL, NULL, NULL, NULL, s->eps, rows, d, scale, y, NULL);
        else mi_tl_norm_apply(centre, x, scale, NULL, NULL, rows, d, y, NULL);
        MI_TRY(fire_at(r, p_norm, y));
        if (w) mi_tl_norm_affine(y, w, b, rows, d, out);
    } else {
        mi_tl_norm_apply(centre, x, scale, w, b, rows, d, yn, out);
    }
    return MI_OK;
}

static void add_into(const float *a, const float *b, float *y, int64_t n)
{
    #pragma omp parallel for schedule(static) num_threads(mi_get_num_threads())
    for (int64_t i = 0; i < n; i++) y[i] = a[i] + b[i];
}

/* y [rows, n, d] = x [rows, d] repeated n times (TransformerLens's
 * repeat_along_head_dimension). */
static void repeat_rows(const float *x, int64_t rows, int64_t n, int64_t d, float *y)
{
    #pragma omp parallel for schedule(static) num_threads(mi_get_num_threads())
    for (int64_t row = 0; row < rows; row++)
        for (int64_t i = 0; i < n; i++) memcpy(y + (row * n + i) * d, x + row * d, sizeof(float) * (size_t)d);
}

/* qkv of layer l from per-head inputs (use_attn_in / use_split_qkv_input), as
 * TransformerLens: attn_in = hook_attn_in(resid_pre repeated over heads);
 * q/k/v inputs = hook_q/k/v_input(resid_pre repeated) with split inputs, else
 * attn_in; ln1 on each of the three ([BT*H, D] rows, its hooks firing each
 * time); then q[b,t,h] = ln1(q_input)[b,t,h] @ W_Q[h] + b_Q[h] (and k, v). */
static mi_status head_input_qkv(run_state *r, int l)
{
    const mi_transformer *m = r->m;
    const mi_tf_spec *s = &m->spec;
    const mi_tf_plan *pl = r->plan;
    float *A = r->arena;
    int64_t BT = pl->batch * pl->seq, D = s->d_model, H = s->n_heads, Dh = s->d_head, HD = H * Dh;
    const size_t *o = m->layer_off + (size_t)l * MI_W_PER_LAYER;
    int p0 = mi_tf_layer_point(l, 0);
#define BUF(kind) mi_tf_buf_ptr(pl, A, buf_layer(s, l, kind))
    const float *resid = mi_tf_buf_ptr(pl, A, buf_resid(l));
    const float *in[3];
    if (s->use_attn_in) {
        repeat_rows(resid, BT, H, D, BUF(B_ATTN_IN));
        MI_TRY(fire(r, p0 + MI_P_ATTN_IN));
        in[0] = in[1] = in[2] = BUF(B_ATTN_IN);
    }
    if (s->use_split_qkv_input) {
        for (int w = 0; w < 3; w++) {
            repeat_rows(resid, BT, H, D, BUF(B_Q_IN + w));
            MI_TRY(fire(r, p0 + MI_P_Q_INPUT + w));
            in[w] = BUF(B_Q_IN + w);
        }
    }
    /* ln1 on the q, k, v inputs in that order; the last run fills B_LN1_* */
    static const int scale_buf[3] = {B_LN1Q_SCALE, B_LN1K_SCALE, B_LN1_SCALE};
    static const int norm_buf[3] = {B_LN1Q_NORM, B_LN1K_NORM, B_LN1_NORM};
    static const int out_buf[3] = {B_LN1Q_OUT, B_LN1K_OUT, B_LN1_OUT};
    const float *x[3] = {in[0], in[1], in[2]};
    if (s->norm != MI_NORM_NONE)
        for (int w = 0; w < 3; w++)
            MI_TRY(norm_step(r, s->norm, BT * H, D, in[w], NULL, NULL, param(m, o[MI_W_LN1_W]),
                             param(m, o[MI_W_LN1_B]), BUF(norm_buf[w]), BUF(scale_buf[w]),
                             BUF(out_buf[w]), p0 + MI_P_LN1_SCALE, p0 + MI_P_LN1_NORM, &x[w]));
    /* 3*H products [BT, D] @ [D, Dh], one per thread (mi_sgemm runs on the
     * calling thread inside a parallel region: same bits for any count) */
    size_t w_off, b_off;
    mi_tf_qkv_offsets(m, l, &w_off, &b_off);
    const mi_tf_weight W = weight(m, w_off);
    const float *bias = param(m, b_off);
    float *qkv = BUF(B_QKV);
    #pragma omp parallel for schedule(dynamic) num_threads(mi_get_num_threads())
    for (int64_t task = 0; task < 3 * H; task++) {
        int64_t w = task / H, h = task % H;
        mi_tf_linear(W, w * HD + h * Dh, 0, BT, Dh, D, x[w] + h * D, H * D, 3 * HD,
                     bias + w * HD + h * Dh, qkv + w * HD + h * Dh, 3 * HD);
    }
#undef BUF
    return MI_OK;
}

/* Attention of layer l from x (ln1's output [BT, D]; unused with per-head
 * inputs): qkv [BT, H + 2 Hkv, Dh] = x @ W_qkv + b_qkv (hook_q/k/v), rotary
 * embeddings on q and k (hook_rot_q/k), then scores, pattern and z (fused
 * when no hook needs the steps). z [BT, H, Dh] is left in B_Z. */
static mi_status attention_step(run_state *r, int l, const float *x, const float *key_mask)
{
    const mi_transformer *m = r->m;
    const mi_tf_spec *s = &m->spec;
    const mi_tf_plan *pl = r->plan;
    float *A = r->arena;
    int64_t B = pl->batch, T = pl->seq, BT = B * T, D = s->d_model, H = s->n_heads,
            Hkv = mi_tf_kv_heads(s), Dh = s->d_head, QKV = (H + 2 * Hkv) * Dh;
    int p0 = mi_tf_layer_point(l, 0);
#define BUF(kind) mi_tf_buf_ptr(pl, A, buf_layer(s, l, kind))
    float *qkv = BUF(B_QKV), *scores = BUF(B_SCORES), *pattern = BUF(B_PATTERN), *z = BUF(B_Z);
    if (head_inputs(s)) {
        MI_TRY(head_input_qkv(r, l));
    } else {
        size_t w_off, b_off;
        mi_tf_qkv_offsets(m, l, &w_off, &b_off);
        mi_tf_linear(weight(m, w_off), 0, 0, BT, QKV, D, x, D, QKV, param(m, b_off), qkv, QKV);
        prof_stop(r, PR_QKV);
    }
    MI_TRY(fire(r, p0 + MI_P_Q));
    MI_TRY(fire(r, p0 + MI_P_K));
    MI_TRY(fire(r, p0 + MI_P_V));
    /* q, k as attention reads them: the qkv buffer, or the rotated copies */
    const mi_attn_stride sqkv = {T * QKV, QKV, Dh};
    mi_attn_layout lay = {B, T, T, 0, H, Hkv, Dh, sqkv, sqkv, sqkv, 0, 0.0f};
    lay.window = mi_tf_layer_local(s, l) ? s->window : 0;   /* Gemma 2's sliding layers */
    lay.softcap = s->attn_softcap;
    const float *q = qkv, *k = qkv + H * Dh, *v = qkv + (H + Hkv) * Dh;
    if (s->rotary) {
        float *rq = BUF(B_ROT_Q), *rk = BUF(B_ROT_K);
        mi_rotary_apply(&s->rope, q, QKV, rq, H * Dh, BT, T, H, Dh, r->pos_ids, r->rope_cos,
                        r->rope_sin, 0);
        MI_TRY(fire(r, p0 + MI_P_ROT_Q));
        mi_rotary_apply(&s->rope, k, QKV, rk, Hkv * Dh, BT, T, Hkv, Dh, r->pos_ids, r->rope_cos,
                        r->rope_sin, 0);
        MI_TRY(fire(r, p0 + MI_P_ROT_K));
        q = rq;
        k = rk;
        lay.q = (mi_attn_stride){T * H * Dh, H * Dh, Dh};
        lay.k = (mi_attn_stride){T * Hkv * Dh, Hkv * Dh, Dh};
    }
    /* with a KV cache: store the new keys (rotated) and values, after their
     * hooks, and attend over the cached + new ones, queries at key positions past.. */
    if (r->kv) mi_kv_append(r->kv, l, pl->past, &lay, &k, &v);
    prof_start(r);
    if (attn_fusable(r->flags, p0)) {
        /* no hook between the steps: one pass, scores/pattern kept only if cached */
        MI_TRY(mi_attn_fused(&lay, q, k, v, 1.0f / s->attn_scale, s->causal, key_mask,
                             r->flags[p0 + MI_P_SCORES] ? scores : NULL,
                             r->flags[p0 + MI_P_PATTERN] ? pattern : NULL, z));
        prof_stop(r, PR_APPLY);
    } else {
        MI_TRY(mi_attn_scores(&lay, q, k, 1.0f / s->attn_scale, s->causal, key_mask, scores));
        prof_stop(r, PR_SCORES);
        MI_TRY(fire(r, p0 + MI_P_SCORES));
        mi_softmax_rows(scores, pattern, B * H * T, lay.k_len);
        prof_stop(r, PR_SOFTMAX);
        MI_TRY(fire(r, p0 + MI_P_PATTERN));
        MI_TRY(mi_attn_apply(&lay, pattern, v, z));
        prof_stop(r, PR_APPLY);
    }
#undef BUF
    return fire(r, p0 + MI_P_Z);
}

static mi_status layer_forward(run_state *r, int l, const float *key_mask)
{
    const mi_transformer *m = r->m;
    const mi_tf_spec *s = &m->spec;
    const mi_tf_plan *pl = r->plan;
    float *A = r->arena;
    int64_t B = pl->batch, T = pl->seq, BT = B * T, D = s->d_model, H = s->n_heads,
            Dh = s->d_head, HD = H * Dh, Mlp = s->d_mlp;
    const size_t *o = m->layer_off + (size_t)l * MI_W_PER_LAYER;
    int p0 = mi_tf_layer_point(l, 0);
#define BUF(kind) mi_tf_buf_ptr(pl, A, buf_layer(s, l, kind))
    float *resid = mi_tf_buf_ptr(pl, A, buf_resid(l)), *resid_next = mi_tf_buf_ptr(pl, A, buf_resid(l + 1));
    MI_TRY(fire(r, p0 + MI_P_RESID_PRE));
    prof_start(r);

    const float *x = resid;
    float *z = BUF(B_Z), *attn_out = BUF(B_ATTN_OUT);
    if (!head_inputs(s) && s->norm != MI_NORM_NONE)
        MI_TRY(norm_step(r, s->norm, BT, D, resid, NULL, NULL, param(m, o[MI_W_LN1_W]), param(m, o[MI_W_LN1_B]), BUF(B_LN1_NORM),
                         BUF(B_LN1_SCALE), BUF(B_LN1_OUT), p0 + MI_P_LN1_SCALE, p0 + MI_P_LN1_NORM, &x));
    prof_stop(r, PR_LN1);
    MI_TRY(attention_step(r, l, x, key_mask));
    const mi_tf_weight W_O = weight(m, o[MI_W_O]);
    const float *b_O = param(m, o[MI_W_B_O]);
    /* with post norms the product goes to ATTN_RAW and ln1_post writes attn_out */
    float *attn_dst = s->post_norms ? BUF(B_ATTN_RAW) : attn_out;
    if (s->use_attn_result) {
        /* result[b,t,h,:] = z[b,t,h,:] @ W_O[h]; attn_out = sum_h result + b_O */
        float *result = BUF(B_RESULT);
        for (int64_t h = 0; h < H; h++)
            mi_tf_linear(W_O, h * Dh * D, 0, BT, D, Dh, z + h * Dh, HD, D, NULL, result + h * D,
                         H * D);
        MI_TRY(fire(r, p0 + MI_P_RESULT));
        #pragma omp parallel for schedule(static) num_threads(mi_get_num_threads())
        for (int64_t row = 0; row < BT; row++) {
            float *out = attn_dst + row * D;
            const float *res = result + row * H * D;
            for (int64_t i = 0; i < D; i++) {
                float acc = 0.0f;
                for (int64_t h = 0; h < H; h++) acc += res[h * D + i];
                out[i] = acc + b_O[i];
            }
        }
    } else {
        mi_tf_linear(W_O, 0, 0, BT, D, HD, z, HD, D, b_O, attn_dst, D);
    }
    if (s->post_norms) {
        const float *done;
        MI_TRY(norm_step(r, MI_NORM_RMS, BT, D, attn_dst, NULL, NULL, param(m, o[MI_W_LN1P_W]), NULL,
                         BUF(B_LN1P_NORM), BUF(B_LN1P_SCALE), attn_out, p0 + MI_P_LN1P_SCALE,
                         p0 + MI_P_LN1P_NORM, &done));
    }
    prof_stop(r, PR_ATTN_OUT);
    MI_TRY(fire(r, p0 + MI_P_ATTN_OUT));

    if (s->attn_only) {
        add_into(resid, attn_out, resid_next, BT * D);
        return fire(r, p0 + MI_P_RESID_POST);
    }
    /* serial: resid_mid = resid + attn_out feeds the MLP; parallel
     * (parallel_attn_mlp): the MLP reads resid_pre, resid_mid does not exist and
     * resid_post = (resid_pre + attn_out) + mlp_out */
    float *resid_mid = s->parallel_attn_mlp ? resid_next : BUF(B_RESID_MID);
    prof_start(r);
    /* resid_mid = resid + attn_out: inside ln2's pass unless a hook runs in between */
    int add_in_norm = s->norm != MI_NORM_NONE && !s->use_hook_mlp_in && !s->parallel_attn_mlp
                      && !((r->flags[p0 + MI_P_RESID_MID] & MI_HOOK_FIRES) && r->hook);
    if (!add_in_norm) add_into(resid, attn_out, resid_mid, BT * D);
    prof_stop(r, PR_ADD1);
    if (!s->parallel_attn_mlp) MI_TRY(fire(r, p0 + MI_P_RESID_MID));
    x = s->parallel_attn_mlp ? resid : resid_mid;
    if (s->use_hook_mlp_in) {
        memcpy(BUF(B_MLP_IN), x, sizeof(float) * (size_t)(BT * D));
        MI_TRY(fire(r, p0 + MI_P_MLP_IN));
        x = BUF(B_MLP_IN);
    }
    if (s->norm != MI_NORM_NONE) {
        MI_TRY(norm_step(r, s->norm, BT, D, add_in_norm ? resid : x, add_in_norm ? attn_out : NULL,
                         add_in_norm ? resid_mid : NULL, param(m, o[MI_W_LN2_W]), param(m, o[MI_W_LN2_B]), BUF(B_LN2_NORM),
                         BUF(B_LN2_SCALE), BUF(B_LN2_OUT), p0 + MI_P_LN2_SCALE, p0 + MI_P_LN2_NORM, &x));
    }
    prof_stop(r, PR_LN2);
    float *pre = BUF(B_PRE), *post = BUF(B_POST), *mlp_out = BUF(B_MLP_OUT);
    const float *b_in = param(m, o[MI_W_B_IN]);
    if (s->gated_mlp) {
        /* TransformerLens GatedMLP: post = act(x @ W_gate) * (x @ W_in) + b_in */
        float *pre_linear = BUF(B_PRE_LINEAR);
        mi_tf_linear(weight(m, o[MI_W_GATE]), 0, 0, BT, Mlp, D, x, D, Mlp, NULL, pre, Mlp);
        MI_TRY(fire(r, p0 + MI_P_MLP_PRE));
        mi_tf_linear(weight(m, o[MI_W_IN]), 0, 0, BT, Mlp, D, x, D, Mlp, NULL, pre_linear, Mlp);
        prof_stop(r, PR_MLP_IN);
        MI_TRY(fire(r, p0 + MI_P_MLP_PRE_LINEAR));
        prof_start(r);
        mi_activate((mi_activation)s->act, pre, post, BT * Mlp);
        #pragma omp parallel for schedule(static) num_threads(mi_get_num_threads())
        for (int64_t row = 0; row < BT; row++)
            for (int64_t i = 0; i < Mlp; i++)
                post[row * Mlp + i] = post[row * Mlp + i] * pre_linear[row * Mlp + i] + b_in[i];
    } else if (s->act == MI_TF_ACT_SOLU_LN) {
        /* mid = pre * softmax(pre) over d_mlp; post = LN(mid) (LNPre unless the model is LN) */
        mi_tf_linear(weight(m, o[MI_W_IN]), 0, 0, BT, Mlp, D, x, D, Mlp, b_in, pre, Mlp);
        MI_TRY(fire(r, p0 + MI_P_MLP_PRE));
        float *mid = BUF(B_MID);
        mi_softmax_rows(pre, mid, BT, Mlp);
        #pragma omp parallel for schedule(static) num_threads(mi_get_num_threads())
        for (int64_t i = 0; i < BT * Mlp; i++) mid[i] *= pre[i];
        MI_TRY(fire(r, p0 + MI_P_MLP_MID));
        const float *ln_out;
        const float *lw = param(m, o[MI_W_MLN_W]);
        MI_TRY(norm_step(r, lw ? MI_NORM_LN : MI_NORM_LNPRE, BT, Mlp, mid, NULL, NULL, lw, param(m, o[MI_W_MLN_B]),
                         BUF(B_MLN_NORM), BUF(B_MLN_SCALE), post, p0 + MI_P_MLP_LN_SCALE,
                         p0 + MI_P_MLP_LN_NORM, &ln_out));
        if (ln_out != post) memcpy(post, ln_out, sizeof(float) * (size_t)(BT * Mlp));
    } else {
        mi_tf_linear(weight(m, o[MI_W_IN]), 0, 0, BT, Mlp, D, x, D, Mlp, b_in, pre, Mlp);
        prof_stop(r, PR_MLP_IN);
        MI_TRY(fire(r, p0 + MI_P_MLP_PRE));
        prof_start(r);
        mi_activate((mi_activation)s->act, pre, post, BT * Mlp);
    }
    prof_stop(r, PR_ACT);
    MI_TRY(fire(r, p0 + MI_P_MLP_POST));
    float *mlp_dst = s->post_norms ? BUF(B_MLP_RAW) : mlp_out;
    mi_tf_linear(weight(m, o[MI_W_OUT]), 0, 0, BT, D, Mlp, post, Mlp, D, param(m, o[MI_W_B_OUT]),
                 mlp_dst, D);
    if (s->post_norms) {
        const float *done;
        MI_TRY(norm_step(r, MI_NORM_RMS, BT, D, mlp_dst, NULL, NULL, param(m, o[MI_W_LN2P_W]), NULL,
                         BUF(B_LN2P_NORM), BUF(B_LN2P_SCALE), mlp_out, p0 + MI_P_LN2P_SCALE,
                         p0 + MI_P_LN2P_NORM, &done));
    }
    prof_stop(r, PR_MLP_OUT);
    MI_TRY(fire(r, p0 + MI_P_MLP_OUT));
    prof_start(r);
    add_into(resid_mid, mlp_out, resid_next, BT * D);   /* in place when parallel */
    prof_stop(r, PR_ADD2);
    return fire(r, p0 + MI_P_RESID_POST);
#undef BUF
}

static mi_status forward_impl(const mi_transformer *m, const mi_tf_plan *plan, float *arena,
                              const uint8_t *flags, const int64_t *tokens, const float *resid_in,
                              const int64_t *pos_ids, const float *key_mask,
                              const float *attn_mask, mi_kv_cache *kv, mi_hook_fn hook,
                              void *hook_ctx);

mi_status mi_tf_forward(const mi_transformer *m, const mi_tf_plan *plan, float *arena,
                        const uint8_t *flags, const int64_t *tokens, const float *resid_in,
                        const int64_t *pos_ids, const float *key_mask, mi_hook_fn hook,
                        void *hook_ctx)
{
    return mi_tf_forward_kv(m, plan, arena, flags, tokens, resid_in, pos_ids, key_mask, NULL,
                            hook, hook_ctx);
}

mi_status mi_tf_forward_kv(const mi_transformer *m, const mi_tf_plan *plan, float *arena,
                           const uint8_t *flags, const int64_t *tokens, const float *resid_in,
                           const int64_t *pos_ids, const float *key_mask, mi_kv_cache *kv,
                           mi_hook_fn hook, void *hook_ctx)
{
    if (!kv) {
        if (plan->past) return mi_fail(MI_ERR_VALUE, "forward: a plan over cached positions needs the cache");
        return forward_impl(m, plan, arena, flags, tokens, resid_in, pos_ids, key_mask, key_mask,
                            NULL, hook, hook_ctx);
    }
    /* the cache: the new positions' mask joins it; positions skip all padding
     * so far; attention sees the mask of every key when any is padding */
    int64_t B = plan->batch, T = plan->seq, Tk = plan->past + T;
    int first = plan->start_layer < 0 ? 0 : plan->start_layer;
    if (kv->batch != B || first >= plan->stop_layer || kv->len[first] != plan->past
        || kv->alloc < Tk)
        return mi_fail(MI_ERR_VALUE, "forward: the plan does not match the key/value cache "
                       "(mi_kv_prepare first)");
    int64_t *pos = NULL;
    float *attn_mask = NULL;
    int need_pos = (plan->start_layer < 0 && m->spec.pos_embed) || m->spec.rotary;
    if (!pos_ids && need_pos && !(pos = mi_malloc(sizeof(int64_t) * (size_t)(B * T))))
        return mi_fail(MI_ERR_NOMEM, "forward: out of memory for position ids");
    int any_pad;
    mi_kv_store_mask(kv, plan->past, T, key_mask, pos, &any_pad);
    if (any_pad) {
        if (!(attn_mask = mi_malloc(sizeof(float) * (size_t)(B * Tk)))) {
            mi_free(pos);
            return mi_fail(MI_ERR_NOMEM, "forward: out of memory for the key mask");
        }
        mi_kv_key_mask(kv, plan->past, T, attn_mask);
    }
    mi_status st = forward_impl(m, plan, arena, flags, tokens, resid_in, pos ? pos : pos_ids,
                                key_mask, attn_mask, kv, hook, hook_ctx);
    if (st == MI_OK) mi_kv_commit(kv, m, first, plan->stop_layer, plan->past, T);
    mi_free(pos);
    mi_free(attn_mask);
    return st;
}

/* The pass: key_mask [B, T] masks the new positions' embeddings, attn_mask
 * [B, past + T] the keys attention sees (the same without a cache). */
static mi_status forward_impl(const mi_transformer *m, const mi_tf_plan *plan, float *arena,
                              const uint8_t *flags, const int64_t *tokens, const float *resid_in,
                              const int64_t *pos_ids, const float *key_mask,
                              const float *attn_mask, mi_kv_cache *kv, mi_hook_fn hook,
                              void *hook_ctx)
{
    const mi_tf_spec *s = &m->spec;
    int64_t B = plan->batch, T = plan->seq, BT = B * T, D = s->d_model;
    const char *pe = getenv("MI_PROFILE");
    fwd_profile prof = {{0}};
    run_state r = {m, plan, arena, flags, hook, hook_ctx, pe && *pe && *pe != '0' ? &prof : NULL,
                   pos_ids, NULL, NULL, kv};
    prof_start(&r);
    /* validate every input before any parallel work */
    int64_t n_pos = T;
    if (pos_ids)
        for (int64_t i = 0; i < BT; i++) {
            if (pos_ids[i] < 0 || pos_ids[i] >= s->n_ctx)
                return mi_fail(MI_ERR_INDEX, "position id %ld at [%ld, %ld] is outside [0, n_ctx=%ld)",
                               (long)pos_ids[i], (long)(i / T), (long)(i % T), (long)s->n_ctx);
            if (pos_ids[i] + 1 > n_pos) n_pos = pos_ids[i] + 1;
        }
    if (plan->start_layer >= 0) {
        if (!resid_in) return mi_fail(MI_ERR_VALUE, "start_at_layer needs a residual stream input");
    } else {
        if (!tokens) return mi_fail(MI_ERR_VALUE, "forward: tokens are required without start_at_layer");
        for (int64_t i = 0; i < BT; i++)
            if (tokens[i] < 0 || tokens[i] >= s->d_vocab)
                return mi_fail(MI_ERR_INDEX, "tokens: id %ld at [%ld, %ld] is outside [0, d_vocab=%ld)",
                               (long)tokens[i], (long)(i / T), (long)(i % T), (long)s->d_vocab);
    }
    float *rope = NULL;
    if (s->rotary && plan->start_layer < plan->stop_layer) {
        /* the angles of the positions this pass uses, shared by every layer */
        size_t n = (size_t)n_pos * (size_t)s->rope.rotary_dim;
        rope = mi_malloc(2 * n * sizeof(float));
        if (!rope) return mi_fail(MI_ERR_NOMEM, "forward: out of memory for the rotary table");
        mi_rotary_table(&s->rope, n_pos, rope, rope + n);
        r.rope_cos = rope;
        r.rope_sin = rope + n;
    }
    mi_status st;
    if (plan->start_layer >= 0) {
        memcpy(mi_tf_buf_ptr(plan, arena, buf_resid(plan->start_layer)), resid_in, sizeof(float) * (size_t)(BT * D));
        st = run_layers(&r, plan->start_layer, attn_mask);
        mi_free(rope);
        return st;
    }
    st = embed_step(&r, tokens, pos_ids, key_mask);
    if (st == MI_OK) st = run_layers(&r, 0, attn_mask);
    mi_free(rope);
    if (r.prof) prof_report(r.prof);
    return st;
}

/* resid[0] = W_E[tokens] (+ W_pos[pos], zero at padding), firing hook_embed and
 * hook_pos_embed. */
static mi_status embed_step(run_state *rs, const int64_t *tokens, const int64_t *pos_ids,
                            const float *key_mask)
{
    run_state r = *rs;
    const mi_transformer *m = r.m;
    const mi_tf_plan *plan = r.plan;
    const mi_tf_spec *s = &m->spec;
    float *arena = r.arena;
    int64_t T = plan->seq, BT = plan->batch * T, D = s->d_model;
    float *embed = mi_tf_buf_ptr(plan, arena, BS_EMBED), *pos = mi_tf_buf_ptr(plan, arena, BS_POS_EMBED);
    float *resid0 = mi_tf_buf_ptr(plan, arena, buf_resid(0));
    const float *W_pos = param(m, m->global_off[MI_G_W_POS]);
    mi_tf_weight_rows(weight(m, m->global_off[MI_G_W_E]), tokens, BT, D, embed);
    MI_TRY(fire(&r, MI_PS_EMBED));
    if (s->pos_embed) {
        #pragma omp parallel for schedule(static) num_threads(mi_get_num_threads())
        for (int64_t i = 0; i < BT; i++) {
            if (key_mask && key_mask[i] == 0.0f) memset(pos + i * D, 0, sizeof(float) * (size_t)D);
            else memcpy(pos + i * D, W_pos + (pos_ids ? pos_ids[i] : i % T) * D, sizeof(float) * (size_t)D);
        }
        MI_TRY(fire(&r, MI_PS_POS_EMBED));
        add_into(embed, pos, resid0, BT * D);
    } else {
        memcpy(resid0, embed, sizeof(float) * (size_t)(BT * D));
    }
    prof_stop(&r, PR_EMBED);
    return MI_OK;
}

/* Blocks [first, stop_layer), then (full pass) the final norm and unembedding. */
static mi_status run_layers(run_state *rs, int first, const float *key_mask)
{
    run_state r = *rs;
    const mi_transformer *m = r.m;
    const mi_tf_plan *plan = r.plan;
    const mi_tf_spec *s = &m->spec;
    float *arena = r.arena;
    int64_t BT = plan->batch * plan->seq, D = s->d_model;
    for (int l = first; l < plan->stop_layer; l++) {
        MI_TRY(mi_cancel_point());   /* Ctrl-C between layers (common/cancel.h) */
        MI_TRY(layer_forward(&r, l, key_mask));
    }
    if (plan->stop_layer < s->n_layers || s->no_head) return MI_OK;

    int pf = mi_tf_final_point(s, 0);
    const float *x = mi_tf_buf_ptr(plan, arena, buf_resid((int)s->n_layers));
    prof_start(&r);
    if (s->norm != MI_NORM_NONE) {
        MI_TRY(norm_step(&r, s->norm, BT, D, x, NULL, NULL, param(m, m->global_off[MI_G_LNF_W]), param(m, m->global_off[MI_G_LNF_B]),
                         mi_tf_buf_ptr(plan, arena, buf_final(s, BF_LNF_NORM)),
                         mi_tf_buf_ptr(plan, arena, buf_final(s, BF_LNF_SCALE)),
                         mi_tf_buf_ptr(plan, arena, buf_final(s, BF_LNF_OUT)),
                         pf + MI_PF_LNF_SCALE, pf + MI_PF_LNF_NORM, &x));
    }
    prof_stop(&r, PR_LNF);
    MI_TRY(fire(&r, pf + MI_PF_UNEMBED_IN));
    prof_start(&r);
    float *logits = mi_tf_buf_ptr(plan, arena, buf_final(s, BF_LOGITS));
    if (m->tied_unembed)   /* W_U = W_E^T, read in place: HF's tied lm_head [V, D] */
        mi_tf_linear(weight(m, m->global_off[MI_G_W_E]), 0, 1, BT, s->d_vocab_out, D, x, D, D,
                     param(m, m->global_off[MI_G_B_U]), logits, s->d_vocab_out);
    else
        mi_tf_linear(weight(m, m->global_off[MI_G_W_U]), 0, 0, BT, s->d_vocab_out, D, x, D,
                     s->d_vocab_out, param(m, m->global_off[MI_G_B_U]), logits, s->d_vocab_out);
    prof_stop(&r, PR_UNEMBED);
    MI_TRY(fire(&r, pf + MI_PF_UNEMBED_OUT));
    if (s->logit_softcap > 0.0f) {
        /* TransformerLens caps after unembed.hook_out: the hook sees (and may edit) the raw logits */
        mi_softcap(s->logit_softcap, logits, mi_tf_buf_ptr(plan, arena, buf_final(s, BF_LOGITS_CAP)),
                   BT * s->d_vocab_out);
    }
    return MI_OK;
}

