/* histogram_index.h - the body of the uniform-path bin index kernel, as a macro,
 * included by histogram_{scalar,avx2,avx512}.c, each compiled for its own
 * instruction set with #pragma GCC target (see histogram.h for the
 * arithmetic, which is NumPy's). Branch-free so GCC vectorises it (divisions,
 * conversions, edge gathers); the roundings are IEEE single/double ops in
 * the same order as the scalar path, and the expression has no multiply-add
 * to contract, so every ISA gives the same indices. */
#ifndef MI_HISTOGRAM_INDEX_H
#define MI_HISTOGRAM_INDEX_H

#define DEFINE_INDEX_F32(name, attr)                                                    \
    attr void name(const mi_hist_bins *b, const float *x, int64_t n, int32_t *idx) \
    {                                                                                   \
        const double fed = b->first_edge, led = b->last_edge, denom = b->denom;         \
        const float fe = (float)b->first_edge, denomf = (float)b->denom;                \
        const int32_t last = (int32_t)b->n_bins - 1;                                    \
        const double nbd = (double)b->n_bins;                                           \
        const float nbf = (float)b->n_bins;                                             \
        const double *e = b->edges;                                                     \
        if (b->div_f64) {                                                               \
            for (int64_t k = 0; k < n; k++) {                                           \
                float v = x[k];                                                         \
                double vd = v;                                                          \
                int keep = (vd >= fed) & (vd <= led);                                   \
                double q = (double)(v - fe) / denom * nbd;                              \
                q = keep ? q : 0.0;                                                     \
                int32_t i = (int32_t)q;                                                 \
                i = i > last ? last : i;                                                \
                i = (vd < e[i]) & (i > 0) ? i - 1 : i;                                  \
                i = (vd >= e[i + 1]) & (i != last) ? i + 1 : i;                         \
                idx[k] = keep ? i : -1;                                                 \
            }                                                                           \
        } else if (b->edges_f32) {                                                      \
            /* edges exact in float32: the same compares in float (half-width gathers) */ \
            const float *ef = b->edges_f32;                                             \
            const float fef = (float)fed, lef = (float)led;                             \
            for (int64_t k = 0; k < n; k++) {                                           \
                float v = x[k];                                                         \
                int keep = (v >= fef) & (v <= lef);                                     \
                float q = (v - fe) / denomf * nbf;                                      \
                q = keep ? q : 0.0f;                                                    \
                int32_t i = (int32_t)q;                                                 \
                i = i > last ? last : i;                                                \
                i = (v < ef[i]) & (i > 0) ? i - 1 : i;                                  \
                i = (v >= ef[i + 1]) & (i != last) ? i + 1 : i;                         \
                idx[k] = keep ? i : -1;                                                 \
            }                                                                           \
        } else {                                                                        \
            for (int64_t k = 0; k < n; k++) {                                           \
                float v = x[k];                                                         \
                double vd = v;                                                          \
                int keep = (vd >= fed) & (vd <= led);                                   \
                float q = (v - fe) / denomf * nbf;                                      \
                q = keep ? q : 0.0f;                                                    \
                int32_t i = (int32_t)q;                                                 \
                i = i > last ? last : i;                                                \
                i = (vd < e[i]) & (i > 0) ? i - 1 : i;                                  \
                i = (vd >= e[i + 1]) & (i != last) ? i + 1 : i;                         \
                idx[k] = keep ? i : -1;                                                 \
            }                                                                           \
        }                                                                               \
    }

#endif
