/*
 * int8 strips: W_hh of a GRU quantized with mode "int8" (cgru.GRU.quantize), and the numbers of
 * the product C (M, N) = A (M, K) W^T that every time step takes on them (kernel STRIPS_INT8,
 * product.h).
 *
 * The numbers. Each output unit j (a row of W) has a scale w_scale[j] = max_k |W[j, k]| / 127
 * and int8 weights q[j, k] = rint(W[j, k] / w_scale[j]), in [-127, 127] (cgru.gru.to_int8).
 * Each row a of A gets, at every product, its own scale a_scale = max_k |a[k]| / 127 (0 for a
 * row of zeros; NaN when the row holds a NaN or an infinity, so that its outputs are NaN) and
 * 8-bit values u[k] = rint(a[k] * (127 / max_k |a[k]|)). Then
 *     C[m, j] = (float)(sum_k q[j, k] u[m, k]) * w_scale[j] * a_scale[m]
 * in float32, left to right. The integer sum is exact in 32 bits (|q u| <= 127^2, and K is at
 * most CGRU_INT8_MAX_K), so no order of summation changes it: every CPU, kernel, thread count and
 * batch gives the same bits, and tests emulate them exactly in NumPy.
 *
 * The layout. For weights W (3H, K), each gate's (H, K) block on its own, as S = ceil(H/16)
 * strips of 16 output units, each strip cgru_int8_strip_lines(K) lines of 64 bytes:
 *   line 0       w_scale of the strip's 16 units (float32; 0 past H)
 *   line 1       128 sum_k q[j, k] of each (int32; see the VNNI kernel below)
 *   line 2 + c   quad c (c < Q): byte 4 i + e = q[16 s + i][4 c + e] (0 past H and K)
 * Q = ceil(K/4) made odd, so that a strip is an odd number of lines: 12 strips read side by
 * side then fall in 12 different sets of the L1 cache (the bfloat16 strips' measurement,
 * product.h). At H = 128 a W_hh is 3 x 8 strips of 35 lines, 53 KB: a quarter of float32's
 * bytes, and each of two threads' halves fits a 32 KB L1 cache.
 *
 * The kernels that multiply by them: strips_int8_kernels.h (compiled in product.c).
 */
#ifndef CGRU_STRIPS_INT8_H
#define CGRU_STRIPS_INT8_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "simd.h"

/* The most inputs K an int8 product takes: its 32-bit sums of K products of at most 127 x 255
 * (the VNNI kernel's operands) cannot overflow. */
#define CGRU_INT8_MAX_K 65536

/* Quads of k per strip for K inputs: ceil(K/4), made odd (see above). */
static inline int cgru_int8_strip_quads(int K) { return ((K + 3) / 4) | 1; }

/* Bytes of one strip: its two lines of scales and sums, then its quads. */
static inline long cgru_int8_strip_bytes(int K) { return (cgru_int8_strip_quads(K) + 2) * 64L; }

/* Bytes from one gate's int8 strips to the next gate's, for weights (3H, K). */
static inline long cgru_int8_gate_stride(int H, int K)
{
    return (long)((H + 15) / 16) * cgru_int8_strip_bytes(K);
}

/* The int8 strips of weights (3H, K) for gate g from unit j0 on (a multiple of 16). */
static inline const int8_t *cgru_int8_gate_strips(const int8_t *w8, int H, int K, int g, int j0)
{
    return w8 + g * cgru_int8_gate_stride(H, K) + (long)(j0 / 16) * cgru_int8_strip_bytes(K);
}

/* The same switch as the bfloat16 dot product's (product.h), for AVX512_VNNI: -1 follows the
 * CPU, 0 always takes the portable kernel, 1 takes VNNI where the CPU has it. */
extern int cgru_int8_dot_mode;

#if defined(__x86_64__) && ((defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 9) || \
                            (defined(__clang__) && __clang_major__ >= 8))
#define CGRU_HAVE_VNNI 1
#endif

static inline int cgru_int8_dot_preferred(void)
{
#if defined(CGRU_HAVE_VNNI)
    return cgru_int8_dot_mode != 0 && __builtin_cpu_supports("avx512vnni");
#else
    return 0;
#endif
}

#endif
