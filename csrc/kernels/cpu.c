/* cpu.c - runtime instruction-set dispatch. */
#include "kernels/cpu.h"

static int isa_in_use = -1;

mi_isa mi_cpu_best_isa(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
        && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        return MI_ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return MI_ISA_AVX2;
#endif
    return MI_ISA_SCALAR;
}

mi_isa mi_cpu_isa(void)
{
    if (isa_in_use < 0) isa_in_use = (int)mi_cpu_best_isa();
    return (mi_isa)isa_in_use;
}

mi_isa mi_cpu_force_isa(mi_isa isa)
{
    mi_isa best = mi_cpu_best_isa();
    isa_in_use = (int)(isa > best ? best : isa);
    return (mi_isa)isa_in_use;
}

const char *mi_isa_name(mi_isa isa)
{
    switch (isa) {
    case MI_ISA_AVX512: return "avx512";
    case MI_ISA_AVX2: return "avx2";
    default: return "scalar";
    }
}
