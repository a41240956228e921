/* fma_probe.h - measure this machine's fp32 FMA peak, the ceiling GEMM is judged against.
 *
 * mi_fma_peak_gflops() runs independent chains of FMAs (AVX-512 when the CPU
 * has it, else AVX2, else scalar multiply-adds) on every OpenMP thread and
 * returns the best GFLOP/s (2 flops per lane per FMA) over a few repeats. It
 * takes about 0.1-0.3 s. No memory traffic: registers only. */
#ifndef MI_FMA_PROBE_H
#define MI_FMA_PROBE_H

double mi_fma_peak_gflops(void);

#endif
