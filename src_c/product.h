/*
 * The per-step products, in one place: every product inside a time step (h W_hh^T in the
 * forward, dgates W_hh in the backward, and step()'s x W_ih^T) goes through cgru_product with the
 * kernel that cgru_product_choose (cgru_input_product_choose for step()'s x W_ih^T) picked once
 * for the call.
 *
 * The kernels, and when each is the one to take:
 *   PANELS  the weights packed once per call into column panels (panels.h), then a register
 *           tile of up to 4 rows x 96 columns (12 sums in 32-byte vectors without AVX-512:
 *           simd.h). The fastest wherever the call can pack (the sequence loop packs W_hh before
 *           its first step) and the CPU has AVX2 and FMA or more.
 *   ROWS    the weights as they lie, (N, K) with rows the output units; one batch row at a time
 *           as N dot products summed by one transposing reduction (rows_dot). Each batch row
 *           reads the weights once more: taken for one row, and up to CGRU_ROWS_MAX_BATCH rows
 *           while W_hh fits in CGRU_CACHED_BYTES (it then streams from a core's L2).
 *   PAIRS   the weights as they lie; two batch rows per pass over them (small_matmul_wt), up to
 *           CGRU_PAIRS_MAX_BATCH rows when W_hh is larger than that, where a BLAS call costs more
 *           than its work.
 *   BLAS    SciPy's BLAS GEMM, for everything else.
 *   STRIPS_BF16  W_hh stored in bfloat16 strips (a quantized GRU, inference only; see below):
 *           half the bytes of float32 per step, and with AVX512_BF16 half the instructions. The
 *           only kernel for bfloat16 W_hh, at every batch size, so that a row's result never
 *           depends on the batch it came in.
 *   STRIPS_BF16_EXACT  W_ih in bfloat16 strips (a GRU quantized with mode "bfloat16_all"),
 *           times A as it is: the weights widened to float32 in registers, A not rounded: float32
 *           arithmetic on the rounded weights, as the sequence forward's BLAS does on their values
 *           in params (summed in another order). step()'s input product only
 *           (cgru_input_product_choose).
 *   STRIPS_INT8  W_hh in int8 strips with a scale per output unit (a GRU quantized with mode
 *           "int8"), times the state quantized to 8 bits per row and step: a quarter of
 *           float32's bytes, and with AVX512_VNNI one instruction per 64 products. Its layout
 *           and numbers: strips_int8.h. The only kernel for int8 W_hh.
 * The kernels are compiled once, in product.c; this header is what the time loops see: the
 * choice, the weights' layouts, and cgru_product (product_impl.h).
 *
 * bfloat16 strips: the layout a quantized GRU keeps W_hh (and with "bfloat16_all", W_ih) in
 * (cgru.GRU.quantize makes it), read by both the sequence loop and step() without packing. For
 * weights W (3H, K), each gate's (H, K) block on its own, as S = ceil(H/16) strips of 16 output
 * units, each strip P = cgru_bf16_strip_pairs(K) pairs of k (ceil(K/2), made odd), each pair
 * the 16 units' weights for k = 2p and 2p + 1 side by side (64 bytes, one vector):
 *   w16[((g S + s) P + p) 32 + 2 i + e] = W[g H + 16 s + i][2 p + e]   (0 past H and K)
 * so one vector load gives 16 output units for two k, which is what vdpbf16ps multiplies by a
 * broadcast pair of the state. A tile reads up to 12 strips side by side, one pair of each at a
 * time: with strips a power-of-two multiple of 64 bytes long (H = 128: 4 KB), those 12 lines
 * fall in one set of the 8-way L1 cache and evict each other and what the prefetcher brought; an
 * odd number of 64-byte pairs spreads them over 12 sets. Measured on a 2-core AVX512_BF16 VM
 * (Zen 4), 2 threads, us per step of a whole sequence at B = 1, before and after the odd count:
 * H = 128 1.92 and 1.08, H = 512 18.9 and 10.7 (float32: 1.79 and 23.4).
 * A product on W's own columns (the backward's dgates W_hh, (K, N) as it lies) has no hand-written
 * unpacked kernel: it goes to BLAS unless packed.
 *
 * Measured on the 2-core development VM (AVX-512, 1 MB L2 per core), us per step of a
 * 200-step sequence on 2 threads, panels off, B = 2 / 4: H = 128 (W_hh 196 KB) ROWS 3.2 / 6.1,
 * PAIRS 3.6 / 6.9; H = 512 (3 MB) ROWS 41 / 81, PAIRS 32 / 61. step() at H = 512, B = 8: BLAS
 * 244, PAIRS 138 (BLAS packs its operand per gate, per step).
 */
#ifndef CGRU_PRODUCT_H
#define CGRU_PRODUCT_H

#include "blas.h"
#include "panels.h"
#include "simd.h"
#include "strips_int8.h"

typedef enum {
    CGRU_PRODUCT_PANELS,
    CGRU_PRODUCT_ROWS,
    CGRU_PRODUCT_STRIPS_BF16,
    CGRU_PRODUCT_STRIPS_BF16_EXACT,
    CGRU_PRODUCT_STRIPS_INT8,
    CGRU_PRODUCT_PAIRS,
    CGRU_PRODUCT_BLAS,
} cgru_product_kernel;

#define CGRU_ROWS_MAX_BATCH 4
#define CGRU_CACHED_BYTES (512 * 1024)
#define CGRU_PAIRS_MAX_BATCH 8

/* The process-wide override of the choice below that tests and comparisons set through
 * cgru_set_panels_mode: -1 follows the CPU, 0 never packs, 1 always packs where the call can. */
extern int cgru_panels_mode;

/* 1 when calls that can pack should: the override, else whether this CPU has AVX2 and FMA (the
 * x86-64-v3 level) or more, where a register tile (wide or narrow, simd.h) fits its registers. */
static inline int cgru_panels_preferred(void)
{
    if (cgru_panels_mode >= 0) return cgru_panels_mode;
#if defined(CGRU_MULTIVERSION)
    return __builtin_cpu_supports("x86-64-v3");
#elif defined(__AVX2__) && defined(__FMA__)
    return 1;
#else
    return 0;
#endif
}

/* Pairs of k a bfloat16 strip holds for K inputs: the ceil(K/2) it needs, made odd (the last
 * one then zeros where K/2 is even; see above). */
static inline int cgru_bf16_strip_pairs(int K) { return ((K + 1) / 2) | 1; }

/* Elements from one gate's bfloat16 strips to the next gate's, for weights (3H, K): S P 32. */
static inline long cgru_bf16_gate_stride(int H, int K)
{
    return (long)((H + 15) / 16) * cgru_bf16_strip_pairs(K) * 32;
}

/* The bfloat16 strips of weights (3H, K) for gate g from unit j0 on (a multiple of 16, as thread
 * slices are). */
static inline const uint16_t *cgru_bf16_gate_strips(const uint16_t *w16, int H, int K, int g,
                                                    int j0)
{
    return w16 + g * cgru_bf16_gate_stride(H, K) + (long)(j0 / 16) * cgru_bf16_strip_pairs(K) * 32;
}

/* The same for bfloat16 weights (STRIPS_BF16): -1 follows the CPU, 0 always widens them in
 * registers, 1 takes AVX512_BF16's dot product where the CPU has it. */
extern int cgru_bf16_dot_mode;

static inline int cgru_bf16_dot_preferred(void)
{
#if defined(CGRU_HAVE_BF16_DOT)
    return cgru_bf16_dot_mode != 0 && __builtin_cpu_supports("avx512bf16");
#else
    return 0;
#endif
}

/* The kernel for every per-step product of a call with B batch rows and H hidden units of
 * elem_size bytes; can_pack: the call packs its weights once before the loop (the sequence loop
 * does, step() does not); format: how W_hh is stored (cgru.h). */
static inline cgru_product_kernel cgru_product_choose(int B, int H, int elem_size, int can_pack,
                                                      cgru_weights format)
{
    if (format == CGRU_WEIGHTS_BF16) return CGRU_PRODUCT_STRIPS_BF16;
    if (format == CGRU_WEIGHTS_INT8) return CGRU_PRODUCT_STRIPS_INT8;
    if (can_pack && cgru_panels_preferred()) return CGRU_PRODUCT_PANELS;
    const int cached = 3.0 * H * H * elem_size <= CGRU_CACHED_BYTES;  /* W_hh */
    if (B == 1 || (B <= CGRU_ROWS_MAX_BATCH && cached)) return CGRU_PRODUCT_ROWS;
    if (B <= CGRU_PAIRS_MAX_BATCH && !cached) return CGRU_PRODUCT_PAIRS;
    return CGRU_PRODUCT_BLAS;
}

/* The kernel for step()'s input products, x W_ih^T (the sequence loop multiplies all its inputs
 * in one BLAS call before it): bf16, W_ih is in bfloat16 strips. */
static inline cgru_product_kernel cgru_input_product_choose(int B, int H, int elem_size, int bf16)
{
    return bf16 ? CGRU_PRODUCT_STRIPS_BF16_EXACT
                : cgru_product_choose(B, H, elem_size, 0, CGRU_WEIGHTS_DTYPE);
}

#define CGRU_DOUBLE 0
#include "product_impl.h"
#undef CGRU_DOUBLE
#define CGRU_DOUBLE 1
#include "product_impl.h"
#undef CGRU_DOUBLE

#endif
