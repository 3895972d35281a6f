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
/* CGRU_INTERNAL: a function one file of the engine defines and others call (declared in a
 * header), kept out of the extension's exported symbols. */
#if defined(__GNUC__)
#define CGRU_INTERNAL __attribute__((visibility("hidden")))
#else
#define CGRU_INTERNAL
#endif
/* CGRU_KERNEL: a kernel its own file calls; CGRU_SHARED_KERNEL: one that other files call too
 * (the gate kernels, gates.c). */
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && defined(__x86_64__) && \
    defined(__linux__) && defined(__GLIBC__) && !defined(CGRU_NO_MULTIVERSION)
#define CGRU_MULTIVERSION 1
#define CGRU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CGRU_CLONES
#endif
#define CGRU_KERNEL CGRU_CLONES static
#define CGRU_SHARED_KERNEL CGRU_CLONES CGRU_INTERNAL

/* One 64-byte vector (an AVX-512 register) of each dtype, as GCC vector extensions; loads and
 * stores through them need only the element's alignment. On CPUs without AVX-512 the compiler
 * splits their operations into narrower ones. */
typedef float cgru_vec_f32 __attribute__((vector_size(64), aligned(4), __may_alias__));
typedef double cgru_vec_f64 __attribute__((vector_size(64), aligned(8), __may_alias__));
/* Half of one: a 32-byte vector (an AVX2 register), for the narrow register tiles below. */
typedef float cgru_half_f32 __attribute__((vector_size(32), aligned(4), __may_alias__));
typedef double cgru_half_f64 __attribute__((vector_size(32), aligned(8), __may_alias__));
typedef int32_t cgru_half_lanes_f32 __attribute__((vector_size(32)));
typedef int64_t cgru_half_lanes_f64 __attribute__((vector_size(32)));

/*
 * Wide or narrow register tiles. A kernel that keeps a tile of sums in registers (panels, rows_dot,
 * the bfloat16 strips) holds it in 64-byte vectors where the kernels run with AVX-512's 32 vector
 * registers (the x86-64-v4 clone), and in 32-byte vectors, half as many sums per tile, elsewhere:
 * a wide tile on AVX2's 16 registers spills at every step (measured on a Zen 3 VM: the panels
 * product 7x slower than with no panels at all, step()'s rows_dot a tenth of the FMA rate). The
 * two tiles add the same products in the same order wherever a sum's terms do not depend on the
 * vector width (panels, strips); rows_dot's lanes do, so its sums round differently on the two.
 */
extern int cgru_tiles_mode;  /* cgru_set_tiles_mode (cgru.h): -1 follows the CPU, 0 narrow, 1 wide */

static inline int cgru_wide_tiles(void)
{
    if (cgru_tiles_mode >= 0) return cgru_tiles_mode;
#if defined(CGRU_MULTIVERSION)
    return __builtin_cpu_supports("x86-64-v4");  /* a few bit tests of what libgcc read at load */
#elif defined(__AVX512F__)
    return 1;
#else
    return 0;
#endif
}
/* Integer vectors of the same lane widths, for shuffles */
typedef int32_t cgru_lanes_f32 __attribute__((vector_size(64)));
typedef int64_t cgru_lanes_f64 __attribute__((vector_size(64)));
/* float32 -> bfloat16, rounded to nearest even as AVX512_BF16's conversions round; a NaN stays
 * a (quiet) NaN. */
static inline uint16_t cgru_f32_to_bf16(float x)
{
    union { float f; uint32_t i; } u = {x};
    if ((u.i & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u.i | 0x00400000u) >> 16);
    return (uint16_t)((u.i + 0x7fffu + ((u.i >> 16) & 1u)) >> 16);
}

/* 32 bfloat16 values as 16 pairs in 32-bit lanes, as one 64-byte load reads them */
typedef uint32_t cgru_pairs_bf16 __attribute__((vector_size(64), aligned(2), __may_alias__));

/* AVX512_BF16's dot product (vdpbf16ps), where the compiler can target it; used only where the
 * CPU has it (product.h) */
#if defined(__x86_64__) && ((defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 10) || \
                            (defined(__clang__) && __clang_major__ >= 11))
#define CGRU_HAVE_BF16_DOT 1
#endif

#endif
