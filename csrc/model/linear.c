/* linear.c - products and rows of a float32 or bfloat16 weight (linear.h). */
#include "model/linear.h"

#include <string.h>

#include "common/threads.h"
#include "kernels/gemm.h"
#include "kernels/gemm_bf16.h"

static void linear(mi_tf_weight w, int64_t w_off, int trans_w, int64_t rows, int64_t n, int64_t k,
                   const float *x, int64_t ldx, int64_t ldw, const float *bias, float beta, float *y,
                   int64_t ldy)
{
    if (w.trans_ld) {
        /* stored transposed: the [trans_ld, ldw] matrix W is P [ldw, trans_ld], so
         * W[r][c] = P[c][r]; the block from element w_off = r0 * ldw + c0 on is
         * P's block at (c0, r0), read with the other orientation */
        int64_t r0 = w_off / ldw, c0 = w_off % ldw;
        w_off = c0 * w.trans_ld + r0;
        ldw = w.trans_ld;
        trans_w = !trans_w;
    }
    if (w.bf16)   /* AUTO never fails: it takes the path this CPU has */
        (void)mi_bgemm(MI_BGEMM_AUTO, trans_w, rows, n, k, x, ldx, (const uint16_t *)w.data + w_off,
                       ldw, bias, beta, y, ldy);
    else
        mi_sgemm(0, trans_w, rows, n, k, x, ldx, (const float *)w.data + w_off, ldw, bias, beta, y,
                 ldy);
}

void mi_tf_linear(mi_tf_weight w, int64_t w_off, int trans_w, int64_t rows, int64_t n, int64_t k,
                  const float *x, int64_t ldx, int64_t ldw, const float *bias, float *y, int64_t ldy)
{
    linear(w, w_off, trans_w, rows, n, k, x, ldx, ldw, bias, 0.0f, y, ldy);
}

void mi_tf_linear_add(mi_tf_weight w, int64_t w_off, int trans_w, int64_t rows, int64_t n, int64_t k,
                      const float *x, int64_t ldx, int64_t ldw, float *y, int64_t ldy)
{
    linear(w, w_off, trans_w, rows, n, k, x, ldx, ldw, NULL, 1.0f, y, ldy);
}

void mi_tf_weight_rows(mi_tf_weight w, const int64_t *ids, int64_t n, int64_t d, float *dst)
{
    #pragma omp parallel for schedule(static) num_threads(mi_get_num_threads())
    for (int64_t i = 0; i < n; i++) {
        if (w.bf16) mi_bf16_to_f32_n((const uint16_t *)w.data + ids[i] * d, dst + i * d, d);
        else memcpy(dst + i * d, (const float *)w.data + ids[i] * d, sizeof(float) * (size_t)d);
    }
}
