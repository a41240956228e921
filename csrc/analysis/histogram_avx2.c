/* histogram_avx2.c - uniform-path bin indices, avx2 build (see histogram_index.h). */
#pragma GCC target("avx2,fma,tune=haswell")
/* No FP-exception side effects are relied on: lets GCC if-convert the
 * compares (results are unchanged; this is not -ffast-math). */
#pragma GCC optimize("no-trapping-math")

#include <stdint.h>

#include "analysis/histogram.h"
#include "analysis/histogram_index.h"

DEFINE_INDEX_F32(mi_hist_index_f32_avx2, )
