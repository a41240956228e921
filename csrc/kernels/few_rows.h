/* few_rows.h - the schedule of a product of a few rows of A (a decode step)
 * with B stored [K, N], shared by the float32 and bfloat16 GEMMs.
 *
 *   K    cut into fixed blocks of MI_FEW_ROWS_KB rows: each a contiguous
 *        stretch of B that one task streams whole (a split of the columns
 *        instead would read every row in short pieces, which streams worse)
 *   N    cut into strips whose M rows of partial sums fit MI_FEW_ROWS_STRIP
 *        floats (L1); narrower when there are too few tasks for the threads
 *
 * A task (block kb, strip) gets its block's partial sums zeroed, then
 * block(ctx, k0, k1, j0, n, acc, N) adds rows k0..k1-1 of B times A's columns
 * k0..k1-1 into acc (row i at acc + i * N, columns j0..j0+n-1 from acc[0]), in
 * an order of its own. Then C = the blocks' partials summed in block order
 * (+ C when beta != 0, + bias). The block size is fixed, so the order of every
 * sum depends on K only: neither the thread count nor M changes a bit.
 */
#ifndef MI_FEW_ROWS_H
#define MI_FEW_ROWS_H

#include <stdint.h>

#define MI_FEW_ROWS_KB 128
#define MI_FEW_ROWS_STRIP 4096

typedef void (*mi_few_rows_block)(const void *ctx, int64_t k0, int64_t k1, int64_t j0, int64_t n,
                                  float *acc, int64_t ldacc);

/* Floats of partial sums mi_few_rows_nn needs in part. */
int64_t mi_few_rows_part_floats(int64_t M, int64_t N, int64_t K);

/* C[M, N] (row stride ldc) as above, on nt threads; part holds
 * mi_few_rows_part_floats(M, N, K) floats. M, N, K > 0. */
void mi_few_rows_nn(int nt, int64_t M, int64_t N, int64_t K, mi_few_rows_block block,
                    const void *ctx, float *part, const float *bias, float beta, float *C,
                    int64_t ldc);

#endif
