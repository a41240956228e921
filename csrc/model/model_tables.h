/* model_tables.h - the one description of the transformer's hook points,
 * activation buffers and parameters. Every list the model layer needs (the
 * point and parameter enums, TransformerLens names, which points a spec
 * fires, arena buffer kinds and sizes, hook views, the names Python builds
 * its hook_dict from) is derived from these X-macro tables; nothing else
 * lists them. Recipes: csrc/model/README.md.
 *
 * Each table is a macro taking a row macro X; a user defines X to pick the
 * columns it needs, expands the table, and undefines X. Rows are in the order
 * the forward pass writes them (point ids, blob layout).
 *
 * Conditions ("fires when", "needed when", ...) are masks of MI_F_* features:
 * a row applies when every bit of its mask is among the spec's features
 * (mi_tf_features); 0 means always.
 */
#ifndef MI_MODEL_TABLES_H
#define MI_MODEL_TABLES_H

/* ------------------------------------------------------------ features */
enum {
    MI_F_NORM = 1 << 0,        /* ln1/ln2/ln_final exist (any norm type) */
    MI_F_NORM_W = 1 << 1,      /* the norms have weights (LN, RMS) */
    MI_F_NORM_B = 1 << 2,      /* the norms have biases (LN); solu_ln's mlp.ln is then affine */
    MI_F_MLP = 1 << 3,         /* not attn_only */
    MI_F_GATED = 1 << 4,       /* gated MLP (W_gate, hook_pre_linear) */
    MI_F_SOLU_LN = 1 << 5,     /* SoLU then mlp.ln (hook_mid, mlp.ln.*) */
    MI_F_POS = 1 << 6,         /* learned absolute positions */
    MI_F_RESULT = 1 << 7,      /* use_attn_result */
    MI_F_MLP_IN = 1 << 8,      /* use_hook_mlp_in */
    MI_F_ATTN_IN = 1 << 9,     /* use_attn_in */
    MI_F_SPLIT_QKV = 1 << 10,  /* use_split_qkv_input */
    MI_F_HEAD_IN = 1 << 11,    /* either of the two: attention reads per-head inputs */
    MI_F_HEAD = 1 << 12,       /* final norm and unembedding (not no_head) */
    MI_F_FUSED = 1 << 13,      /* per layer and call, not a spec feature: attention runs
                                * fused (no hook between scores, softmax and apply) */
    MI_F_ROTARY = 1 << 14,     /* rotary position embeddings on q and k (hook_rot_q/k) */
    MI_F_SERIAL = 1 << 15,     /* the MLP reads resid_mid (not parallel_attn_mlp) */
    MI_F_MHA = 1 << 16,        /* as many key/value heads as query heads */
    MI_F_GQA = 1 << 17,        /* grouped-query attention: fewer key/value heads */
    MI_F_POS_MODULE = 1 << 18, /* TransformerLens's tree has pos_embed (every position
                                * type but rotary) */
    MI_F_POST_NORM = 1 << 19,  /* RMSNorms on attn_out and mlp_out before the residual
                                * adds (Gemma 2: ln1_post, ln2_post) */
    MI_F_LOGIT_CAP = 1 << 20,  /* final logits soft-capped after unembed.hook_out */
};

/* ---------------------------------------------------------- dimensions
 * The axes tensors are built from, with the names Python sees. HEAD_IN is the
 * per-head axis of attention's inputs: n_heads with MI_F_HEAD_IN, else the
 * axis is dropped (hence the "?"). */
#define MI_DIMS(X)                                                            \
    X(NONE, "")            /* no axis: ends a shape */                        \
    X(ONE, "1")                                                               \
    X(THREE, "3")          /* q, k, v */                                      \
    X(BATCH, "batch")                                                         \
    X(POS, "pos")                                                             \
    X(KPOS, "key_pos")     /* pos, or cached + new positions with a KV cache */ \
    X(D, "d_model")                                                           \
    X(H, "n_heads")                                                           \
    X(KVH, "n_key_value_heads")                                               \
    X(QKVH, "n_heads + 2 * n_key_value_heads")                                \
    X(HEAD_IN, "n_heads?")                                                     \
    X(DH, "d_head")                                                           \
    X(M, "d_mlp")                                                             \
    X(V, "d_vocab")                                                           \
    X(VO, "d_vocab_out")                                                      \
    X(CTX, "n_ctx")

/* -------------------------------------------------------------- shapes
 * X(id, axes...): activation shapes, up to five axes, NONE-padded. Q, K and V
 * are the views of the fused QKV buffer that hook_q/k/v hand out (strided):
 * [B, T, H + 2 Hkv, Dh] holds the H query heads, then the Hkv key heads, then
 * the Hkv value heads of each position (Hkv = H without grouped-query
 * attention, so it is [B, T, 3, H, Dh]). */
#define MI_SHAPES(X)                             \
    X(RESID,    BATCH, POS, D,       NONE, NONE) \
    X(SCALE,    BATCH, POS, ONE,     NONE, NONE) \
    X(IN,       BATCH, POS, HEAD_IN, D,    NONE) \
    X(IN_SCALE, BATCH, POS, HEAD_IN, ONE,  NONE) \
    X(QKV,      BATCH, POS, QKVH,    DH,   NONE) \
    X(Q,        BATCH, POS, H,       DH,   NONE) \
    X(K,        BATCH, POS, KVH,     DH,   NONE) \
    X(V,        BATCH, POS, KVH,     DH,   NONE) \
    X(HEADS,    BATCH, POS, H,       DH,   NONE) \
    X(KV_HEADS, BATCH, POS, KVH,     DH,   NONE) \
    X(ATTN,     BATCH, H,   POS,     KPOS, NONE) \
    X(RESULT,   BATCH, POS, H,       D,    NONE) \
    X(MLP,      BATCH, POS, M,       NONE, NONE) \
    X(LOGITS,   BATCH, POS, VO,      NONE, NONE)

/* ------------------------------------------------------------- buffers
 * X(id, shape, needed when, elided when): the arena's buffer kinds. "Elided
 * when": the pass writes the buffer only when a hook or the cache reads it
 * (0: always written). Besides these, every call has resid[0..L] [B,T,D]:
 * resid_pre of layer i = resid_post of layer i-1, one tensor as in
 * TransformerLens.
 *
 * Before the layers (only when the pass starts from tokens): */
#define MI_START_BUFFERS(X)          \
    X(EMBED,     RESID, 0,        0) \
    X(POS_EMBED, RESID, MI_F_POS, 0)

/* Per layer. *_NORM is TransformerLens's hook_normalized, x / scale before the
 * affine weights; *_OUT = normalized * w + b is what the next step reads (only
 * for norms with weights). With post norms, ATTN_RAW / MLP_RAW hold the W_O /
 * W_out products that ln1_post / ln2_post (LN1P_*, LN2P_*; RMS, always with
 * weights) turn into ATTN_OUT / MLP_OUT. With per-head inputs ln1 runs on the q, k and v
 * inputs in turn; LN1Q_* and LN1K_* hold the first two runs and LN1_* the run
 * on the v input, the last one, which TransformerLens's cache keeps. */
#define MI_LAYER_BUFFERS(X)                                          \
    X(LN1_SCALE,  IN_SCALE, MI_F_NORM,                  0)           \
    X(LN1_NORM,   IN,       MI_F_NORM,                  MI_F_NORM_W) \
    X(LN1_OUT,    IN,       MI_F_NORM_W,                0)           \
    X(QKV,        QKV,      0,                          0)           \
    X(ROT_Q,      HEADS,    MI_F_ROTARY,                0)           \
    X(ROT_K,      KV_HEADS, MI_F_ROTARY,                0)           \
    X(SCORES,     ATTN,     0,                          MI_F_FUSED)  \
    X(PATTERN,    ATTN,     0,                          MI_F_FUSED)  \
    X(Z,          HEADS,    0,                          0)           \
    X(RESULT,     RESULT,   MI_F_RESULT,                0)           \
    X(ATTN_RAW,   RESID,    MI_F_POST_NORM,             0)           \
    X(LN1P_SCALE, SCALE,    MI_F_POST_NORM,             0)           \
    X(LN1P_NORM,  RESID,    MI_F_POST_NORM,             MI_F_POST_NORM) \
    X(ATTN_OUT,   RESID,    0,                          0)           \
    X(RESID_MID,  RESID,    MI_F_MLP | MI_F_SERIAL,     0)           \
    X(MLP_IN,     RESID,    MI_F_MLP | MI_F_MLP_IN,     0)           \
    X(LN2_SCALE,  SCALE,    MI_F_MLP | MI_F_NORM,       0)           \
    X(LN2_NORM,   RESID,    MI_F_MLP | MI_F_NORM,       MI_F_NORM_W) \
    X(LN2_OUT,    RESID,    MI_F_MLP | MI_F_NORM_W,     0)           \
    X(PRE,        MLP,      MI_F_MLP,                   0)           \
    X(PRE_LINEAR, MLP,      MI_F_MLP | MI_F_GATED,      0)           \
    X(MID,        MLP,      MI_F_MLP | MI_F_SOLU_LN,    0)           \
    X(MLN_SCALE,  SCALE,    MI_F_MLP | MI_F_SOLU_LN,    0)           \
    X(MLN_NORM,   MLP,      MI_F_MLP | MI_F_SOLU_LN,    MI_F_NORM_B) \
    X(POST,       MLP,      MI_F_MLP,                   0)           \
    X(MLP_RAW,    RESID,    MI_F_MLP | MI_F_POST_NORM,  0)           \
    X(LN2P_SCALE, SCALE,    MI_F_MLP | MI_F_POST_NORM,  0)           \
    X(LN2P_NORM,  RESID,    MI_F_MLP | MI_F_POST_NORM,  MI_F_POST_NORM) \
    X(MLP_OUT,    RESID,    MI_F_MLP,                   0)           \
    X(ATTN_IN,    IN,       MI_F_ATTN_IN,               0)           \
    X(Q_IN,       IN,       MI_F_SPLIT_QKV,             0)           \
    X(K_IN,       IN,       MI_F_SPLIT_QKV,             0)           \
    X(V_IN,       IN,       MI_F_SPLIT_QKV,             0)           \
    X(LN1Q_SCALE, IN_SCALE, MI_F_NORM | MI_F_HEAD_IN,   0)           \
    X(LN1Q_NORM,  IN,       MI_F_NORM | MI_F_HEAD_IN,   MI_F_NORM_W) \
    X(LN1Q_OUT,   IN,       MI_F_NORM_W | MI_F_HEAD_IN, 0)           \
    X(LN1K_SCALE, IN_SCALE, MI_F_NORM | MI_F_HEAD_IN,   0)           \
    X(LN1K_NORM,  IN,       MI_F_NORM | MI_F_HEAD_IN,   MI_F_NORM_W) \
    X(LN1K_OUT,   IN,       MI_F_NORM_W | MI_F_HEAD_IN, 0)

/* After the layers (full passes of models with a head). LOGITS is
 * unembed.hook_out; with a logit softcap the pass's output is LOGITS_CAP =
 * cap * tanh(LOGITS / cap), as TransformerLens caps after the hook. */
#define MI_FINAL_BUFFERS(X)                                    \
    X(LNF_SCALE, SCALE,  MI_F_HEAD | MI_F_NORM,   0)           \
    X(LNF_NORM,  RESID,  MI_F_HEAD | MI_F_NORM,   MI_F_NORM_W) \
    X(LNF_OUT,   RESID,  MI_F_HEAD | MI_F_NORM_W, 0)           \
    X(LOGITS,    LOGITS, MI_F_HEAD,               0)           \
    X(LOGITS_CAP, LOGITS, MI_F_HEAD | MI_F_LOGIT_CAP, 0)

/* ---------------------------------------------------------- hook points
 * X(id, TransformerLens name, buffer, shape, fires when, listed when, rank)
 *   buffer: the buffer holding the activation: a kind of the row's scope
 *     (BS_*, B_*, BF_*: the buffer tables' ids with their scope's prefix), or
 *     a MI_BUF_* placement below (the residual stream, the final norm's output);
 *   shape: the view hooks and the cache get;
 *   fires when: the spec's pass writes the point (its id is present);
 *   listed when: TransformerLens's module tree has the HookPoint (hook_dict;
 *     a listed point that does not fire accepts hooks that never run);
 *   rank: position in TransformerLens's module order within the scope
 *     (hook_dict order: start points, then each layer's, then final ones).
 * Point ids: start points, then per layer MI_P_PER_LAYER, then final points,
 * each scope in firing order (the row order). */
#define MI_START_POINTS(X)                                              \
    X(EMBED,     "hook_embed",     BS_EMBED,     RESID, 0,        0, 0) \
    X(POS_EMBED, "hook_pos_embed", BS_POS_EMBED, RESID, MI_F_POS, MI_F_POS_MODULE, 1)

#define MI_LAYER_POINTS(X)                                                                                                               \
    X(RESID_PRE,      "hook_resid_pre",            MI_BUF_RESID_IN,  RESID,    0,                         0,                         30) \
    X(ATTN_IN,        "hook_attn_in",              B_ATTN_IN,        IN,       MI_F_ATTN_IN,              0,                         23) \
    X(Q_INPUT,        "hook_q_input",              B_Q_IN,           IN,       MI_F_SPLIT_QKV,            0,                         24) \
    X(K_INPUT,        "hook_k_input",              B_K_IN,           IN,       MI_F_SPLIT_QKV,            0,                         25) \
    X(V_INPUT,        "hook_v_input",              B_V_IN,           IN,       MI_F_SPLIT_QKV,            0,                         26) \
    X(LN1_SCALE,      "ln1.hook_scale",            B_LN1_SCALE,      IN_SCALE, MI_F_NORM,                 MI_F_NORM,                  0) \
    X(LN1_NORM,       "ln1.hook_normalized",       B_LN1_NORM,       IN,       MI_F_NORM,                 MI_F_NORM,                  1) \
    X(Q,              "attn.hook_q",               B_QKV,            Q,        0,                         0,                          9) \
    X(K,              "attn.hook_k",               B_QKV,            K,        0,                         0,                          8) \
    X(V,              "attn.hook_v",               B_QKV,            V,        0,                         0,                         10) \
    X(ROT_Q,          "attn.hook_rot_q",           B_ROT_Q,          HEADS,    MI_F_ROTARY,               MI_F_ROTARY,               16) \
    X(ROT_K,          "attn.hook_rot_k",           B_ROT_K,          KV_HEADS, MI_F_ROTARY,               MI_F_ROTARY,               15) \
    X(SCORES,         "attn.hook_attn_scores",     B_SCORES,         ATTN,     0,                         0,                         12) \
    X(PATTERN,        "attn.hook_pattern",         B_PATTERN,        ATTN,     0,                         0,                         13) \
    X(Z,              "attn.hook_z",               B_Z,              HEADS,    0,                         0,                         11) \
    X(RESULT,         "attn.hook_result",          B_RESULT,         RESULT,   MI_F_RESULT,               0,                         14) \
    X(LN1P_SCALE,     "ln1_post.hook_scale",       B_LN1P_SCALE,     SCALE,    MI_F_POST_NORM,            MI_F_POST_NORM,             2) \
    X(LN1P_NORM,      "ln1_post.hook_normalized",  B_LN1P_NORM,      RESID,    MI_F_POST_NORM,            MI_F_POST_NORM,             3) \
    X(ATTN_OUT,       "hook_attn_out",             B_ATTN_OUT,       RESID,    0,                         0,                         28) \
    X(RESID_MID,      "hook_resid_mid",            B_RESID_MID,      RESID,    MI_F_MLP | MI_F_SERIAL,    MI_F_MLP | MI_F_SERIAL,    31) \
    X(MLP_IN,         "hook_mlp_in",               B_MLP_IN,         RESID,    MI_F_MLP | MI_F_MLP_IN,    0,                         27) \
    X(LN2_SCALE,      "ln2.hook_scale",            B_LN2_SCALE,      SCALE,    MI_F_MLP | MI_F_NORM,      MI_F_MLP | MI_F_NORM,       4) \
    X(LN2_NORM,       "ln2.hook_normalized",       B_LN2_NORM,       RESID,    MI_F_MLP | MI_F_NORM,      MI_F_MLP | MI_F_NORM,       5) \
    X(MLP_PRE,        "mlp.hook_pre",              B_PRE,            MLP,      MI_F_MLP,                  MI_F_MLP,                  20) \
    X(MLP_PRE_LINEAR, "mlp.hook_pre_linear",       B_PRE_LINEAR,     MLP,      MI_F_MLP | MI_F_GATED,     MI_F_MLP | MI_F_GATED,     21) \
    X(MLP_MID,        "mlp.hook_mid",              B_MID,            MLP,      MI_F_MLP | MI_F_SOLU_LN,   MI_F_MLP | MI_F_SOLU_LN,   17) \
    X(MLP_LN_SCALE,   "mlp.ln.hook_scale",         B_MLN_SCALE,      SCALE,    MI_F_MLP | MI_F_SOLU_LN,   MI_F_MLP | MI_F_SOLU_LN,   18) \
    X(MLP_LN_NORM,    "mlp.ln.hook_normalized",    B_MLN_NORM,       MLP,      MI_F_MLP | MI_F_SOLU_LN,   MI_F_MLP | MI_F_SOLU_LN,   19) \
    X(MLP_POST,       "mlp.hook_post",             B_POST,           MLP,      MI_F_MLP,                  MI_F_MLP,                  22) \
    X(LN2P_SCALE,     "ln2_post.hook_scale",       B_LN2P_SCALE,     SCALE,    MI_F_MLP | MI_F_POST_NORM, MI_F_MLP | MI_F_POST_NORM,  6) \
    X(LN2P_NORM,      "ln2_post.hook_normalized",  B_LN2P_NORM,      RESID,    MI_F_MLP | MI_F_POST_NORM, MI_F_MLP | MI_F_POST_NORM,  7) \
    X(MLP_OUT,        "hook_mlp_out",              B_MLP_OUT,        RESID,    MI_F_MLP,                  0,                         29) \
    X(RESID_POST,     "hook_resid_post",           MI_BUF_RESID_OUT, RESID,    0,                         0,                         32)

#define MI_FINAL_POINTS(X)                                                                                      \
    X(LNF_SCALE,   "ln_final.hook_scale",      BF_LNF_SCALE,       SCALE,  MI_F_HEAD | MI_F_NORM, MI_F_NORM, 0) \
    X(LNF_NORM,    "ln_final.hook_normalized", BF_LNF_NORM,        RESID,  MI_F_HEAD | MI_F_NORM, MI_F_NORM, 1) \
    X(UNEMBED_IN,  "unembed.hook_in",          MI_BUF_NORM_RESULT, RESID,  MI_F_HEAD,             0,         2) \
    X(UNEMBED_OUT, "unembed.hook_out",         BF_LOGITS,          LOGITS, MI_F_HEAD,             0,         3)

/* Placements of points whose buffer is not one of their scope's kinds. */
enum {
    MI_BUF_RESID_IN = -1,     /* resid[l]: the residual stream entering layer l */
    MI_BUF_RESID_OUT = -2,    /* resid[l + 1] */
    MI_BUF_NORM_RESULT = -3,  /* what ln_final hands on: LNF_OUT, LNF_NORM without
                               * weights, resid[L] without a norm */
};

/* ----------------------------------------------------------- parameters
 * X(id, name, needed when, axes...): the tensors of the parameter blob in blob
 * order, internal layout (up to four axes, NONE-padded). Global tensors sit
 * before the layers (START) or after them (FINAL). */
#define MI_GLOBAL_PARAMS(X)                                                            \
    X(W_E,   START, "embed.W_E",       0,                       V,   D,    NONE, NONE) \
    X(W_POS, START, "pos_embed.W_pos", MI_F_POS,                CTX, D,    NONE, NONE) \
    X(LNF_W, FINAL, "ln_final.w",      MI_F_HEAD | MI_F_NORM_W, D,   NONE, NONE, NONE) \
    X(LNF_B, FINAL, "ln_final.b",      MI_F_HEAD | MI_F_NORM_B, D,   NONE, NONE, NONE) \
    X(W_U,   FINAL, "unembed.W_U",     MI_F_HEAD,               D,   VO,   NONE, NONE) \
    X(B_U,   FINAL, "unembed.b_U",     MI_F_HEAD,               VO,  NONE, NONE, NONE)

/* Per layer, named "blocks.{l}." + name. attn.W_qkv [D,3,H,Dh]: x @ W_qkv is at
 * once HF's c_attn output and TransformerLens's hook_q/k/v as strided views.
 * With grouped-query attention it is [D, H + 2 Hkv, Dh] (QKV_G: the same
 * row-major product, with Hkv key and value heads), so the pass reads either
 * row through one offset (mi_tf_qkv_offsets). */
#define MI_LAYER_PARAMS(X)                                                                  \
    X(LN1_W, "ln1.w",      MI_F_NORM_W,                           D,     NONE,  NONE, NONE) \
    X(LN1_B, "ln1.b",      MI_F_NORM_B,                           D,     NONE,  NONE, NONE) \
    X(QKV,   "attn.W_qkv", MI_F_MHA,                              D,     THREE, H,    DH)   \
    X(B_QKV, "attn.b_qkv", MI_F_MHA,                              THREE, H,     DH,   NONE) \
    X(QKV_G, "attn.W_qkv", MI_F_GQA,                              D,     QKVH,  DH,   NONE) \
    X(B_QKV_G, "attn.b_qkv", MI_F_GQA,                            QKVH,  DH,    NONE, NONE) \
    X(O,     "attn.W_O",   0,                                     H,     DH,    D,    NONE) \
    X(B_O,   "attn.b_O",   0,                                     D,     NONE,  NONE, NONE) \
    X(LN1P_W, "ln1_post.w", MI_F_POST_NORM,                       D,     NONE,  NONE, NONE) \
    X(LN2_W, "ln2.w",      MI_F_MLP | MI_F_NORM_W,                D,     NONE,  NONE, NONE) \
    X(LN2_B, "ln2.b",      MI_F_MLP | MI_F_NORM_B,                D,     NONE,  NONE, NONE) \
    X(IN,    "mlp.W_in",   MI_F_MLP,                              D,     M,     NONE, NONE) \
    X(B_IN,  "mlp.b_in",   MI_F_MLP,                              M,     NONE,  NONE, NONE) \
    X(GATE,  "mlp.W_gate", MI_F_MLP | MI_F_GATED,                 D,     M,     NONE, NONE) \
    X(MLN_W, "mlp.ln.w",   MI_F_MLP | MI_F_SOLU_LN | MI_F_NORM_B, M,     NONE,  NONE, NONE) \
    X(MLN_B, "mlp.ln.b",   MI_F_MLP | MI_F_SOLU_LN | MI_F_NORM_B, M,     NONE,  NONE, NONE) \
    X(OUT,   "mlp.W_out",  MI_F_MLP,                              M,     D,     NONE, NONE) \
    X(B_OUT, "mlp.b_out",  MI_F_MLP,                              D,     NONE,  NONE, NONE) \
    X(LN2P_W, "ln2_post.w", MI_F_MLP | MI_F_POST_NORM,            D,     NONE,  NONE, NONE)

/* The tensors a model with bfloat16 weights (mi_tf_spec.bf16_weights) stores as
 * bfloat16: the matrices of the products (read through the forward's linear
 * step, model/linear.h) and the token embedding (gathered rows, and the tied
 * unembedding). Every other tensor stays float32; a tensor missing here works
 * either way, it just keeps its float32 bytes. */
#define MI_BF16_LAYER_PARAMS(X) X(QKV) X(QKV_G) X(O) X(IN) X(GATE) X(OUT)
#define MI_BF16_GLOBAL_PARAMS(X) X(W_E) X(W_U)

#endif
