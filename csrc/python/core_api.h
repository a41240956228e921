/* core_api.h - the C core as _core lends it to mechinterp_c._testing.
 *
 * _core exports one constant table of function pointers as the capsule
 * _core._C_API (as NumPy exports its C API). The test extension calls the
 * kernels through it, so it runs the very code _core runs, under _core's
 * instruction-set choice (force_isa), thread count and thread-local error
 * message, rather than a second copy of the core with settings of its own.
 */
#ifndef MI_PY_CORE_API_H
#define MI_PY_CORE_API_H

#include "python/bridge.h"

#include "kernels/activation.h"
#include "kernels/adamw.h"
#include "kernels/attention.h"
#include "kernels/cross_entropy.h"
#include "kernels/embedding.h"
#include "kernels/fma_probe.h"
#include "kernels/gemm.h"
#include "kernels/gemm_bf16_kernels.h"
#include "kernels/norm.h"
#include "kernels/rotary.h"
#include "kernels/softmax.h"

#define MI_CORE_API_CAPSULE "mechinterp_c._core._C_API"
#define MI_CORE_API_VERSION 5

/* The lent functions, one row each: X(name). */
#define MI_CORE_API_FUNCTIONS(X)                                                          \
    X(mi_py_raise) X(mi_py_empty) X(mi_py_spare_set_keep_warm)                            \
    X(mi_sgemm) X(mi_sgemm_ref) X(mi_sgemm_strided_batched) X(mi_fma_peak_gflops)         \
    X(mi_layer_norm_backward) X(mi_rms_norm_backward)                                     \
    X(mi_tl_norm) X(mi_tl_norm_ref) X(mi_tl_norm_scale) X(mi_tl_norm_apply) X(mi_tl_norm_affine) \
    X(mi_activation_backward) X(mi_relu_backward_bias) X(mi_softmax_rows_backward)       \
    X(mi_softcap)                                                                         \
    X(mi_softmax_rows) X(mi_attn_check) X(mi_attn_scores) X(mi_attn_apply)                \
    X(mi_attn_fused) X(mi_attn_backward) X(mi_cross_entropy)                              \
    X(mi_embedding_forward) X(mi_embedding_backward) X(mi_adamw_step_ref)                 \
    X(mi_rotary_check) X(mi_rotary_table) X(mi_rotary_apply) X(mi_rotary_apply_ref)       \
    X(mi_bgemm_has_avx512bf16) X(mi_bgemm_pack_a_ref) X(mi_bgemm_pack_a_avx512bf16)      \
    X(mi_bgemm_pack_b_ref) X(mi_bgemm_pack_b_avx512bf16)

#define MI_CORE_API_MEMBER(name) __typeof__(name) *name;
typedef struct {
    int version;   /* MI_CORE_API_VERSION of the _core that filled it */
    MI_CORE_API_FUNCTIONS(MI_CORE_API_MEMBER)
} mi_core_api;
#undef MI_CORE_API_MEMBER

/* _core: add the capsule to module m (module.c). */
int mi_py_core_api_exec(PyObject *m);

#endif
