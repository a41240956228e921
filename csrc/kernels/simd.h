/* simd.h - one vector vocabulary for the elementwise and row kernels.
 *
 * A kernel body written with these operations (activation_simd.h,
 * norm_simd.h, softmax_simd.h, cross_entropy_simd.h) is compiled once per
 * instruction set by a file that selects it first:
 *
 *   #pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq")   #pragma GCC target("avx2,fma")
 *   #define MI_SIMD_AVX512                                     #define MI_SIMD_AVX2
 *   #include "kernels/simd.h"                                  #include "kernels/simd.h"
 *
 * Contract (both mappings):
 *   MI_VW          lanes per vector: 16 (AVX-512) or 8 (AVX2)
 *   MI_SIMD_NAME(x) x_avx512 or x_avx2: the name of this instance's table
 *   mi_vf          MI_VW floats;  mi_vm  a lane mask;  mi_vd  MI_VW doubles
 *   Every float operation is one IEEE operation per lane with one rounding
 *   (vf_fma: a * b + c rounded once), never fused with its neighbours nor
 *   reassociated (FP contraction is off below), so a body gives
 *   bitwise the same lanes under either mapping; only the order of the
 *   horizontal sums (vd_hsum) depends on the width. vf_min / vf_max follow
 *   x86: if either operand is NaN the second is returned.
 *   Loads and stores are unaligned. The *_n forms touch the first n lanes
 *   only (n >= MI_VW means all): loads fill the other lanes with 0, stores
 *   leave the memory past n alone, so a loop `for (i = 0; i < len; i += MI_VW)`
 *   passes n = len - i and needs no scalar tail.
 *   vf_exp: Cephes expf, ~1-2 ulp, with exp(+-inf), overflow and underflow to
 *   denormals as libm, NaN in NaN out (vmath_avx512.h); the AVX2 version
 *   (vmath_avx2.h) gives bitwise the same results.
 *
 * Operations:
 *   floats   vf_set1 vf_zero vf_loadu vf_storeu vf_load_n vf_store_n
 *            vf_add vf_sub vf_mul vf_div vf_min vf_max vf_abs vf_exp
 *            vf_fma (a * b + c)  vf_fnma (c - a * b)  vf_fms (a * b - c)
 *            vf_hmax (the largest lane; NaN lanes are the caller's to catch)
 *   masks    vm_tail(n) (lanes < n)  vm_bytes(p, n) (lanes < n with p[lane] != 0)
 *            vf_gt vf_lt vf_eq (ordered)  vf_isnan  vf_sel(m, a, b) = m ? a : b
 *            vm_none vm_or vm_any
 *   doubles  vd_zero  vd_add(acc, v) = acc + v  vd_fma(acc, a, b) = acc + a * b
 *            (the product of two floats is exact in double)  vd_hsum (the lane sum)
 *            vd_fma_store_n(p, a, b, n): p[j] += a[j] * b[j] for j < n, in double
 */
#ifndef MI_SIMD_H
#define MI_SIMD_H

/* One rounding per operation, as the contract says: GCC's default for GNU C
 * (-ffp-contract=fast) would fuse an intrinsic multiply and add into an FMA
 * wherever it sees fit, so one body would round differently per ISA (and per
 * compiler version). The including file holds kernels only. */
#pragma GCC optimize("fp-contract=off")

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#if defined(MI_SIMD_AVX512)
/* ======================================================= AVX-512: 16 lanes */
#include "kernels/vmath_avx512.h"

#define MI_VW 16
#define MI_SIMD_NAME(x) x##_avx512

typedef __m512 mi_vf;
typedef __mmask16 mi_vm;
typedef struct { __m512d lo, hi; } mi_vd;   /* lanes 0-7 and 8-15 */

static inline mi_vm vm_tail(int64_t n)
{
    return n >= 16 ? (mi_vm)0xFFFF : (mi_vm)((1u << n) - 1u);
}

static inline mi_vf vf_set1(float a) { return _mm512_set1_ps(a); }
static inline mi_vf vf_zero(void) { return _mm512_setzero_ps(); }
static inline mi_vf vf_loadu(const float *p) { return _mm512_loadu_ps(p); }
static inline void vf_storeu(float *p, mi_vf v) { _mm512_storeu_ps(p, v); }
static inline mi_vf vf_load_n(const float *p, int64_t n) { return _mm512_maskz_loadu_ps(vm_tail(n), p); }
static inline void vf_store_n(float *p, mi_vf v, int64_t n) { _mm512_mask_storeu_ps(p, vm_tail(n), v); }

static inline mi_vf vf_add(mi_vf a, mi_vf b) { return _mm512_add_ps(a, b); }
static inline mi_vf vf_sub(mi_vf a, mi_vf b) { return _mm512_sub_ps(a, b); }
static inline mi_vf vf_mul(mi_vf a, mi_vf b) { return _mm512_mul_ps(a, b); }
static inline mi_vf vf_div(mi_vf a, mi_vf b) { return _mm512_div_ps(a, b); }
static inline mi_vf vf_fma(mi_vf a, mi_vf b, mi_vf c) { return _mm512_fmadd_ps(a, b, c); }
static inline mi_vf vf_fnma(mi_vf a, mi_vf b, mi_vf c) { return _mm512_fnmadd_ps(a, b, c); }
static inline mi_vf vf_fms(mi_vf a, mi_vf b, mi_vf c) { return _mm512_fmsub_ps(a, b, c); }
static inline mi_vf vf_min(mi_vf a, mi_vf b) { return _mm512_min_ps(a, b); }
static inline mi_vf vf_max(mi_vf a, mi_vf b) { return _mm512_max_ps(a, b); }
static inline mi_vf vf_abs(mi_vf a)
{
    return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(a),
                                                _mm512_set1_epi32(0x7FFFFFFF)));
}
static inline mi_vf vf_exp(mi_vf x) { return mi_exp512(x); }
static inline float vf_hmax(mi_vf v) { return _mm512_reduce_max_ps(v); }

static inline mi_vm vf_gt(mi_vf a, mi_vf b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
static inline mi_vm vf_lt(mi_vf a, mi_vf b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
static inline mi_vm vf_eq(mi_vf a, mi_vf b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
static inline mi_vm vf_isnan(mi_vf a) { return _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q); }
/* m ? a : b per lane */
static inline mi_vf vf_sel(mi_vm m, mi_vf a, mi_vf b) { return _mm512_mask_mov_ps(b, m, a); }
static inline mi_vm vm_none(void) { return 0; }
static inline mi_vm vm_or(mi_vm a, mi_vm b) { return a | b; }
static inline int vm_any(mi_vm m) { return m != 0; }
/* Lanes j < n whose byte m[j] is nonzero (a keep-mask row). */
static inline mi_vm vm_bytes(const unsigned char *m, int64_t n)
{
    mi_vm tail = vm_tail(n);
    return _mm_mask_cmpneq_epi8_mask(tail, _mm_maskz_loadu_epi8(tail, m), _mm_setzero_si128());
}

static inline mi_vd vd_zero(void) { return (mi_vd){_mm512_setzero_pd(), _mm512_setzero_pd()}; }
static inline __m512d cvt_lo(mi_vf v) { return _mm512_cvtps_pd(_mm512_castps512_ps256(v)); }
static inline __m512d cvt_hi(mi_vf v)
{
    return _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}
/* acc + (double)v */
static inline mi_vd vd_add(mi_vd acc, mi_vf v)
{
    return (mi_vd){_mm512_add_pd(acc.lo, cvt_lo(v)), _mm512_add_pd(acc.hi, cvt_hi(v))};
}
/* acc + (double)a * (double)b (the product is exact in double) */
static inline mi_vd vd_fma(mi_vd acc, mi_vf a, mi_vf b)
{
    return (mi_vd){_mm512_fmadd_pd(cvt_lo(a), cvt_lo(b), acc.lo),
                   _mm512_fmadd_pd(cvt_hi(a), cvt_hi(b), acc.hi)};
}
static inline double vd_hsum(mi_vd acc) { return _mm512_reduce_add_pd(_mm512_add_pd(acc.lo, acc.hi)); }
/* p[j] += (double)a[j] * (double)b[j] for the first n lanes */
static inline void vd_fma_store_n(double *p, mi_vf a, mi_vf b, int64_t n)
{
    mi_vm k = vm_tail(n);
    __mmask8 klo = (__mmask8)(k & 0xFF), khi = (__mmask8)(k >> 8);
    _mm512_mask_storeu_pd(p, klo, _mm512_fmadd_pd(cvt_lo(a), cvt_lo(b),
                                                  _mm512_maskz_loadu_pd(klo, p)));
    _mm512_mask_storeu_pd(p + 8, khi, _mm512_fmadd_pd(cvt_hi(a), cvt_hi(b),
                                                      _mm512_maskz_loadu_pd(khi, p + 8)));
}

#elif defined(MI_SIMD_AVX2)
/* ========================================================= AVX2+FMA: 8 lanes */
#include "kernels/vmath_avx2.h"

#define MI_VW 8
#define MI_SIMD_NAME(x) x##_avx2

typedef __m256 mi_vf;
typedef __m256 mi_vm;                        /* all-ones / all-zeros lanes */
typedef struct { __m256d lo, hi; } mi_vd;   /* lanes 0-3 and 4-7 */

static inline __m256i lanes_below(int64_t n)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n < 8 ? n : 8)),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
static inline mi_vm vm_tail(int64_t n) { return _mm256_castsi256_ps(lanes_below(n)); }

static inline mi_vf vf_set1(float a) { return _mm256_set1_ps(a); }
static inline mi_vf vf_zero(void) { return _mm256_setzero_ps(); }
static inline mi_vf vf_loadu(const float *p) { return _mm256_loadu_ps(p); }
static inline void vf_storeu(float *p, mi_vf v) { _mm256_storeu_ps(p, v); }
/* Full vectors take the plain load / store: a masked store costs far more on some cores. */
static inline mi_vf vf_load_n(const float *p, int64_t n)
{
    return n >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, lanes_below(n));
}
static inline void vf_store_n(float *p, mi_vf v, int64_t n)
{
    if (n >= 8) _mm256_storeu_ps(p, v);
    else _mm256_maskstore_ps(p, lanes_below(n), v);
}

static inline mi_vf vf_add(mi_vf a, mi_vf b) { return _mm256_add_ps(a, b); }
static inline mi_vf vf_sub(mi_vf a, mi_vf b) { return _mm256_sub_ps(a, b); }
static inline mi_vf vf_mul(mi_vf a, mi_vf b) { return _mm256_mul_ps(a, b); }
static inline mi_vf vf_div(mi_vf a, mi_vf b) { return _mm256_div_ps(a, b); }
static inline mi_vf vf_fma(mi_vf a, mi_vf b, mi_vf c) { return _mm256_fmadd_ps(a, b, c); }
static inline mi_vf vf_fnma(mi_vf a, mi_vf b, mi_vf c) { return _mm256_fnmadd_ps(a, b, c); }
static inline mi_vf vf_fms(mi_vf a, mi_vf b, mi_vf c) { return _mm256_fmsub_ps(a, b, c); }
static inline mi_vf vf_min(mi_vf a, mi_vf b) { return _mm256_min_ps(a, b); }
static inline mi_vf vf_max(mi_vf a, mi_vf b) { return _mm256_max_ps(a, b); }
static inline mi_vf vf_abs(mi_vf a)
{
    return _mm256_and_ps(a, _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF)));
}
static inline mi_vf vf_exp(mi_vf x) { return mi_exp256(x); }
static inline float vf_hmax(mi_vf v)
{
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
}

static inline mi_vm vf_gt(mi_vf a, mi_vf b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
static inline mi_vm vf_lt(mi_vf a, mi_vf b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
static inline mi_vm vf_eq(mi_vf a, mi_vf b) { return _mm256_cmp_ps(a, b, _CMP_EQ_OQ); }
static inline mi_vm vf_isnan(mi_vf a) { return _mm256_cmp_ps(a, a, _CMP_UNORD_Q); }
static inline mi_vf vf_sel(mi_vm m, mi_vf a, mi_vf b) { return _mm256_blendv_ps(b, a, m); }
static inline mi_vm vm_none(void) { return _mm256_setzero_ps(); }
static inline mi_vm vm_or(mi_vm a, mi_vm b) { return _mm256_or_ps(a, b); }
static inline int vm_any(mi_vm m) { return _mm256_movemask_ps(m) != 0; }
static inline mi_vm vm_bytes(const unsigned char *m, int64_t n)
{
    int64_t bytes = 0;
    memcpy(&bytes, m, (size_t)(n < 8 ? n : 8));
    __m256i b = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(bytes));
    __m256i dropped = _mm256_cmpeq_epi32(b, _mm256_setzero_si256());
    return _mm256_castsi256_ps(_mm256_xor_si256(dropped, _mm256_set1_epi32(-1)));
}

static inline mi_vd vd_zero(void) { return (mi_vd){_mm256_setzero_pd(), _mm256_setzero_pd()}; }
static inline __m256d cvt_lo(mi_vf v) { return _mm256_cvtps_pd(_mm256_castps256_ps128(v)); }
static inline __m256d cvt_hi(mi_vf v) { return _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)); }
static inline mi_vd vd_add(mi_vd acc, mi_vf v)
{
    return (mi_vd){_mm256_add_pd(acc.lo, cvt_lo(v)), _mm256_add_pd(acc.hi, cvt_hi(v))};
}
static inline mi_vd vd_fma(mi_vd acc, mi_vf a, mi_vf b)
{
    return (mi_vd){_mm256_fmadd_pd(cvt_lo(a), cvt_lo(b), acc.lo),
                   _mm256_fmadd_pd(cvt_hi(a), cvt_hi(b), acc.hi)};
}
static inline double vd_hsum(mi_vd acc)
{
    __m256d s = _mm256_add_pd(acc.lo, acc.hi);
    __m128d h = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
    return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
}
static inline void vd_fma_store_n(double *p, mi_vf a, mi_vf b, int64_t n)
{
    if (n >= 8) {
        _mm256_storeu_pd(p, _mm256_fmadd_pd(cvt_lo(a), cvt_lo(b), _mm256_loadu_pd(p)));
        _mm256_storeu_pd(p + 4, _mm256_fmadd_pd(cvt_hi(a), cvt_hi(b), _mm256_loadu_pd(p + 4)));
        return;
    }
    float ta[8], tb[8];
    _mm256_storeu_ps(ta, a);
    _mm256_storeu_ps(tb, b);
    for (int64_t j = 0; j < n; j++) p[j] = __builtin_fma((double)ta[j], (double)tb[j], p[j]);
}

#else
#error "simd.h: define MI_SIMD_AVX512 or MI_SIMD_AVX2 (and the matching #pragma GCC target) first"
#endif

#endif
