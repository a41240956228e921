/* cpu.h - runtime instruction-set dispatch.
 *
 * Kernels for each ISA are compiled with their own `#pragma GCC target` and
 * chosen here once, from __builtin_cpu_supports, so one build runs on any
 * x86-64. Tests force each level in turn to compare it with the reference.
 *
 * The environment variable MI_FORCE_ISA=scalar|avx2|avx512, read once when
 * the core first asks, caps the levels as if the CPU had nothing above it:
 * MI_FORCE_ISA=avx2 runs everything (forced "best" included) as on an
 * AVX2-only CPU. An unknown name caps nothing (the Python package rejects it
 * at import).
 */
#ifndef MI_CPU_H
#define MI_CPU_H

typedef enum { MI_ISA_SCALAR = 0, MI_ISA_AVX2 = 1, MI_ISA_AVX512 = 2 } mi_isa;
#define MI_ISA_COUNT 3   /* tables indexed by mi_isa have this many rows */

/* The ISA in use: the best available unless forced lower. */
mi_isa mi_cpu_isa(void);
/* The best ISA available: what this CPU supports, capped by MI_FORCE_ISA. */
mi_isa mi_cpu_best_isa(void);
/* Use `isa` from now on (clamped to mi_cpu_best_isa()); returns the level set. */
mi_isa mi_cpu_force_isa(mi_isa isa);
/* "scalar", "avx2" or "avx512". */
const char *mi_isa_name(mi_isa isa);
/* The ISA named `name` (as mi_isa_name spells it) into *isa; 0, or -1 if unknown. */
int mi_isa_from_name(const char *name, mi_isa *isa);

#endif
