/* gemm_kernels.h - internal pieces of the packed SGEMM (not a public contract).
 *
 * The driver (gemm.c) packs op(A) and op(B) into panels and calls one
 * register-tiled micro-kernel per MR x NR tile of C. Each ISA file
 * (gemm_avx512.c, gemm_avx2.c, gemm_scalar.c) supplies its micro-kernel and
 * block sizes through an mi_gemm_arch.
 *
 * Shape legend:
 *   Ap  packed A micro-panel: kc steps of MR floats (row r of the tile at [p*MR + r])
 *   Bp  packed B micro-panel: kc steps of NR floats (col j of the tile at [p*NR + j])
 *   C   the MR x NR tile of C, row stride ldc
 *
 * Micro-kernel contract:
 *   acc = 0
 *   for p in 0..kc: acc[r][j] = acc[r][j] + Ap[p*MR + r] * Bp[p*NR + j]   (in p order)
 *   if load_c: acc = C + acc
 *   if bias: acc[r][j] += bias[j]
 *   C = acc
 * The K-sum of every element runs in increasing p order, one accumulator per
 * element, so the result never depends on the tile's position or the thread.
 * C is read only after the k loop (the kernels prefetch it first), so its
 * cache misses overlap the FMAs instead of stalling them.
 */
#ifndef MI_GEMM_KERNELS_H
#define MI_GEMM_KERNELS_H

#include <stdint.h>

typedef void (*mi_gemm_ukr)(int64_t kc, const float *Ap, const float *Bp, float *C,
                            int64_t ldc, int load_c, const float *bias);

/* The same contract on the first `rows` rows of a packed mr-row panel
 * (rows < mr; the panel's other rows are zero): only those rows of C are
 * read and written. Optional: edge tiles otherwise go through a padded copy. */
typedef void (*mi_gemm_ukr_part)(int64_t kc, int rows, const float *Ap, const float *Bp,
                                 float *C, int64_t ldc, int load_c, const float *bias);

/* y[0:n] += a * x[0:n], one rounding per element per call in this ISA's way
 * (FMA where the ISA has it): the few-rows path (one token) streams B with it. */
typedef void (*mi_gemm_axpy)(int64_t n, float a, const float *x, float *y);

/* for r < m (<= 8), s < q (<= 4) in order: y[r*ldy + j] += a[r*sa_i + s*sa_p] *
 * x[s*ldx + j], j < n: q axpy steps on m rows, each element rounding exactly as
 * q calls of the ISA's axpy would (optional: the few-rows path otherwise calls
 * axpy m*q times). */
typedef void (*mi_gemm_axpy4)(int64_t n, int m, int q, const float *a, int64_t sa_i, int64_t sa_p,
                              const float *x, int64_t ldx, float *y, int64_t ldy);

/* out[r] for r < m (<= 8) = sum over p < K of a[r*sa_i + p] * b[p], summed exactly as
 * the few-rows path's plain loop (gemm.c) sums it: 8 partial sums part[p mod 8], each
 * a multiply then an add in p order (no FMA), combined as ((0 + 4) + (1 + 5)) +
 * ((2 + 6) + (3 + 7)); so bitwise that loop's result (optional: the loop runs
 * otherwise). The few-rows path with B stored [N, K] (a tied unembedding) dots each
 * row of B with the rows of A. */
typedef void (*mi_gemm_dots)(int64_t K, int m, const float *a, int64_t sa_i, const float *b, float *out);

typedef struct {
    const char *name;
    int mr, nr;          /* register tile of the micro-kernel */
    int mc, kc, nc;      /* cache blocks: A block mc x kc (L2), B block kc x nc (L2/L3) */
    mi_gemm_ukr ukr;
    mi_gemm_ukr_part ukr_part;   /* NULL, or the kernel for partial panels of up to part_rows rows */
    int part_rows;
    mi_gemm_axpy axpy;
    mi_gemm_axpy4 axpy4;   /* NULL: axpy m*q times */
    mi_gemm_dots dots;     /* NULL: the plain loop */
} mi_gemm_arch;

extern const mi_gemm_arch mi_gemm_arch_avx512;   /* 12 x 32, AVX-512F + FMA */
extern const mi_gemm_arch mi_gemm_arch_avx2;     /* 6 x 16, AVX2 + FMA */
extern const mi_gemm_arch mi_gemm_arch_scalar;   /* 4 x 8, portable C */

#endif
