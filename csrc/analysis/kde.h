/* kde.h - Gaussian kernel density estimates, as scipy.stats.gaussian_kde.evaluate.
 *
 * scipy whitens samples and points by the kernel's Cholesky factor L
 * (s = L^-1 x), then for every point t
 *     density(t) = sum_i w_i * exp(-|s_i - t|^2 / 2) * norm,
 *     norm = (2 pi)^(-d/2) / prod(diag L),  w normalised to sum 1.
 * The caller (Python) does the O(n d^2) whitening; these kernels do the
 * O(n m d) sums in double, parallel over points (each sum on one thread).
 *
 * 1-D fast path: samples sorted ascending (weights permuted with them). A term
 * with |s_i - t| > 38.7 has exp(-r^2/2) < exp(-748), which is exactly 0 in
 * double, so only the window |s_i - t| <= 38.7 (found by binary search) is
 * summed: the same terms scipy adds, in sorted rather than input order
 * (relative difference ~1e-15).
 *
 * The window sum is per ISA (kernels/cpu.h): kde_scalar.c with libm exp,
 * kde_avx2.c / kde_avx512.c with a vector exp (kde_exp.h), ~1e-14 relative
 * of each other.
 *
 * Shapes: s[batch, n], w[batch, n] or NULL (uniform 1/n), t[batch, m],
 * norm[batch], out[batch, m]; all double, C-contiguous.
 */
#ifndef MI_KDE_H
#define MI_KDE_H

#include <stdint.h>

void mi_kde_eval_1d(int64_t batch, const double *s, const double *w, int64_t n,
                    const double *t, int64_t m, const double *norm, double *out);

/* Plain reference: every term, input order (tests compare the fast path with it). */
void mi_kde_eval_1d_ref(int64_t batch, const double *s, const double *w, int64_t n,
                        const double *t, int64_t m, const double *norm, double *out);

/* d-D: s[n, d], t[m, d] whitened; w[n] (normalised); out[m]. */
void mi_kde_eval_nd(const double *s, const double *w, int64_t n, int64_t d,
                    const double *t, int64_t m, double norm, double *out);

/* The window half-width in whitened units beyond which every term is 0. */
#define MI_KDE_CUTOFF 38.7

/* sum_{i in [lo, hi)} w_i * exp(-(s_i - t)^2 / 2) (w NULL: weight wu), by ISA. */
double mi_kde_window_sum(const double *s, const double *w, double wu, int64_t lo, int64_t hi,
                         double t, double norm);

double mi_kde_window_sum_scalar(const double *s, const double *w, double wu, int64_t lo,
                                int64_t hi, double t, double norm);
double mi_kde_window_sum_avx2(const double *s, const double *w, double wu, int64_t lo,
                              int64_t hi, double t, double norm);
double mi_kde_window_sum_avx512(const double *s, const double *w, double wu, int64_t lo,
                                int64_t hi, double t, double norm);

#endif
