/*
 * How the engine's kernels are compiled: for several instruction sets at once where the compiler
 * can, and on 64-byte vectors written with GCC's vector extensions.
 */
#ifndef CGRU_SIMD_H
#define CGRU_SIMD_H

#include <stdint.h>

/*
 * The kernels are compiled for several instruction sets and the best one the CPU has is picked at
 * load time (GCC's target_clones on x86-64 Linux), so the default build stays portable and still
 * runs AVX2 or AVX-512 where available. Elsewhere they compile once for the default target.
 * target_clones needs GCC 12 for the x86-64-v3/v4 levels and glibc for its ifunc resolver (musl
 * has none); cgru_kernel_isa() (layer.c) says which clone the resolver picked.
 */
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && defined(__x86_64__) && \
    defined(__linux__) && defined(__GLIBC__) && !defined(CGRU_NO_MULTIVERSION)
#define CGRU_MULTIVERSION 1
#define CGRU_KERNEL __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) static
#else
#define CGRU_KERNEL static
#endif

/* One 64-byte vector (an AVX-512 register) of each dtype, as GCC vector extensions; loads and
 * stores through them need only the element's alignment. On CPUs without AVX-512 the compiler
 * splits their operations into narrower ones. */
typedef float cgru_vec_f32 __attribute__((vector_size(64), aligned(4), __may_alias__));
typedef double cgru_vec_f64 __attribute__((vector_size(64), aligned(8), __may_alias__));
/* Integer vectors of the same lane widths, for shuffles */
typedef int32_t cgru_lanes_f32 __attribute__((vector_size(64)));
typedef int64_t cgru_lanes_f64 __attribute__((vector_size(64)));

#endif
