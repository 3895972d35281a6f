/*
 * The per-step product's kernels, compiled once for the engine (which kernel a call takes, and
 * what each is for: product.h), and the switches and names that tests and cgru.info() read.
 *   panels_kernels_impl.h   the register tiles on packed panels (panels.h)
 *   product_kernels_impl.h  ROWS, PAIRS, the bfloat16 strips, and cgru_product itself
 *   strips_int8_kernels.h   the int8 strips (strips_int8.h)
 */
#include <stdint.h>

#include "product.h"
#include "strips_int8_kernels.h"

int cgru_panels_mode = -1;

void cgru_set_panels_mode(int mode) { cgru_panels_mode = mode < 0 ? -1 : (mode > 0); }

int cgru_panels_active(void) { return cgru_panels_preferred(); }

int cgru_tiles_mode = -1;

void cgru_set_tiles_mode(int mode) { cgru_tiles_mode = mode < 0 ? -1 : (mode > 0); }

const char *cgru_register_tiles(void)
{
    return cgru_wide_tiles() ? "64-byte register tiles (AVX-512)" : "32-byte register tiles";
}

int cgru_bf16_dot_mode = -1;

void cgru_set_bf16_dot_mode(int mode) { cgru_bf16_dot_mode = mode < 0 ? -1 : (mode > 0); }

int cgru_bf16_strip_pairs_of(int H) { return cgru_bf16_strip_pairs(H); }

const char *cgru_bf16_kernel(void)
{
    if (cgru_bf16_dot_preferred()) return "AVX512_BF16 dot products (vdpbf16ps)";
    return cgru_wide_tiles() ? "widened to float32 in 64-byte register tiles"
                             : "widened to float32 in 32-byte register tiles";
}

int cgru_int8_dot_mode = -1;

void cgru_set_int8_dot_mode(int mode) { cgru_int8_dot_mode = mode < 0 ? -1 : (mode > 0); }

int cgru_int8_strip_quads_of(int K) { return cgru_int8_strip_quads(K); }

const char *cgru_int8_kernel(void)
{
    if (cgru_int8_dot_preferred()) return "AVX512_VNNI dot products (vpdpbusd)";
    return "integer sums in 32-bit lanes";
}

cgru_status cgru_int8_product(float *C, const float *A, const int8_t *w, int M, int H, int K)
{
    if (M <= 0 || H <= 0 || K <= 0) return CGRU_ERR_BAD_DIMS;
    if (K > CGRU_INT8_MAX_K || 3L * H > 2147483647L) return CGRU_ERR_TOO_LARGE;
    strips_int8(C, 3 * H, A, K, w, cgru_int8_gate_stride(H, K), H, M, 3 * H, K);
    return CGRU_OK;
}

#define CGRU_DOUBLE 0
#include "panels_kernels_impl.h"
#include "product_kernels_impl.h"
#undef CGRU_DOUBLE
#define CGRU_DOUBLE 1
#include "panels_kernels_impl.h"
#include "product_kernels_impl.h"
#undef CGRU_DOUBLE
