/* kde.c - Gaussian KDE evaluation (see kde.h). */
#include "analysis/kde.h"

#include "common/threads.h"
#include "kernels/cpu.h"

#include <math.h>
#include <stddef.h>

double mi_kde_window_sum(const double *s, const double *w, double wu, int64_t lo, int64_t hi,
                         double t, double norm)
{
    switch (mi_cpu_isa()) {
    case MI_ISA_AVX512: return mi_kde_window_sum_avx512(s, w, wu, lo, hi, t, norm);
    case MI_ISA_AVX2: return mi_kde_window_sum_avx2(s, w, wu, lo, hi, t, norm);
    default: return mi_kde_window_sum_scalar(s, w, wu, lo, hi, t, norm);
    }
}

/* First index with s[i] >= v (s sorted ascending). */
static int64_t lower_bound(const double *s, int64_t n, double v)
{
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (s[mid] < v) lo = mid + 1; else hi = mid;
    }
    return lo;
}

void mi_kde_eval_1d(int64_t batch, const double *s, const double *w, int64_t n,
                    const double *t, int64_t m, const double *norm, double *out)
{
    double wu = 1.0 / (double)n;   /* scipy's uniform weights: ones(n) / n */
    #pragma omp parallel for schedule(dynamic, 4) num_threads(mi_get_num_threads())
    for (int64_t task = 0; task < batch * m; task++) {
        int64_t b = task / m;
        const double *sb = s + b * n;
        double tj = t[task];
        int64_t lo = lower_bound(sb, n, tj - MI_KDE_CUTOFF);
        int64_t hi = lower_bound(sb, n, tj + MI_KDE_CUTOFF);
        while (hi < n && sb[hi] <= tj + MI_KDE_CUTOFF) hi++;
        out[task] = mi_kde_window_sum(sb, w ? w + b * n : NULL, wu, lo, hi, tj, norm[b]);
    }
}

void mi_kde_eval_1d_ref(int64_t batch, const double *s, const double *w, int64_t n,
                        const double *t, int64_t m, const double *norm, double *out)
{
    double wu = 1.0 / (double)n;
    for (int64_t b = 0; b < batch; b++)
        for (int64_t j = 0; j < m; j++) {
            double acc = 0;
            for (int64_t i = 0; i < n; i++) {
                double r = s[b * n + i] - t[b * m + j];
                acc += (w ? w[b * n + i] : wu) * (exp(-(r * r) / 2.0) * norm[b]);
            }
            out[b * m + j] = acc;
        }
}

void mi_kde_eval_nd(const double *s, const double *w, int64_t n, int64_t d,
                    const double *t, int64_t m, double norm, double *out)
{
    #pragma omp parallel for schedule(dynamic, 4) num_threads(mi_get_num_threads())
    for (int64_t j = 0; j < m; j++) {
        double acc = 0;
        for (int64_t i = 0; i < n; i++) {
            double arg = 0;
            for (int64_t k = 0; k < d; k++) {
                double r = s[i * d + k] - t[j * d + k];
                arg += r * r;
            }
            acc += w[i] * (exp(-arg / 2.0) * norm);
        }
        out[j] = acc;
    }
}
