/* cpu.c - runtime instruction-set dispatch (see cpu.h). */
#include "kernels/cpu.h"

#include <stdlib.h>
#include <string.h>

static const char *const isa_names[] = {"scalar", "avx2", "avx512"};
_Static_assert(sizeof isa_names / sizeof isa_names[0] == MI_ISA_COUNT,
               "one name per mi_isa");

static int isa_in_use = -1;
static int isa_best = -1;

/* What the CPU itself supports. */
static mi_isa hardware_isa(void)
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

mi_isa mi_cpu_best_isa(void)
{
    if (isa_best < 0) {
        mi_isa best = hardware_isa(), cap;
        const char *forced = getenv("MI_FORCE_ISA");
        if (forced && mi_isa_from_name(forced, &cap) == 0 && cap < best) best = cap;
        isa_best = (int)best;
    }
    return (mi_isa)isa_best;
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
    return (unsigned)isa < MI_ISA_COUNT ? isa_names[isa] : "scalar";
}

int mi_isa_from_name(const char *name, mi_isa *isa)
{
    for (int i = 0; i < MI_ISA_COUNT; i++)
        if (!strcmp(name, isa_names[i])) { *isa = (mi_isa)i; return 0; }
    return -1;
}
