/* entropy.h - Shannon entropy of distributions, as scipy.stats.entropy(pk, base).
 *
 * Shapes: p viewed as [outer, n, inner] double, C-contiguous; out[outer, inner].
 * Each distribution is normalised to sum 1 first; terms with p == 0 add 0,
 * p < 0 gives -inf entropy... as scipy.special.entr (entr(x<0) = -inf).
 * H = -sum p log p / log(base)  (log_base = 0: natural log).
 */
#ifndef MI_ENTROPY_H
#define MI_ENTROPY_H

#include <stdint.h>

void mi_entropy(const double *p, int64_t outer, int64_t n, int64_t inner, double log_base,
                double *out);

#endif
