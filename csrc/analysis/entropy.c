/* entropy.c - Shannon entropy along an axis (see entropy.h). */
#include "analysis/entropy.h"

#include <math.h>

#include "common/threads.h"

/* scipy.special.entr: -x log x, 0 at 0, -inf below 0, NaN stays NaN. */
static inline double entr(double x)
{
    if (x > 0) return -x * log(x);
    if (x == 0) return 0.0;
    if (x < 0) return -INFINITY;
    return x;   /* NaN */
}

void mi_entropy(const double *p, int64_t outer, int64_t n, int64_t inner, double log_base,
                double *out)
{
    #pragma omp parallel for schedule(static) if (outer * inner * n > 65536) num_threads(mi_get_num_threads())
    for (int64_t t = 0; t < outer * inner; t++) {
        int64_t o = t / inner, j = t % inner;
        const double *base = p + o * n * inner + j;
        double s = 0;
        for (int64_t k = 0; k < n; k++) s += base[k * inner];
        double h = 0;
        for (int64_t k = 0; k < n; k++) h += entr(base[k * inner] / s);
        out[t] = log_base != 0 ? h / log_base : h;
    }
}
