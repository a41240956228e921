/* cpu.h - runtime instruction-set dispatch.
 *
 * Kernels for each ISA are compiled with their own `#pragma GCC target` and
 * chosen here once, from __builtin_cpu_supports, so one build runs on any
 * x86-64. Tests force each level in turn to compare it with the reference.
 */
#ifndef MI_CPU_H
#define MI_CPU_H

typedef enum { MI_ISA_SCALAR = 0, MI_ISA_AVX2 = 1, MI_ISA_AVX512 = 2 } mi_isa;

/* The ISA in use: the best this CPU supports unless forced lower. */
mi_isa mi_cpu_isa(void);
/* The best ISA this CPU supports. */
mi_isa mi_cpu_best_isa(void);
/* Use `isa` from now on (clamped to what the CPU supports); returns the level set. */
mi_isa mi_cpu_force_isa(mi_isa isa);
const char *mi_isa_name(mi_isa isa);

#endif
