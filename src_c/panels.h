/*
 * The per-step recurrent product on weights packed once per call ("panels").
 *
 * A BLAS GEMM packs its operands on every call. The time loop multiplies by the same W_hh at
 * every step, so the engine packs it once, before the loop, into column panels that the register
 * tile below streams through in order:
 *
 *   logical B (K, N)  ->  panels of PANEL columns: panel p is the (K, PANEL) block of columns
 *                         [p*PANEL, (p+1)*PANEL), row-major; the last panel is zero-padded.
 *
 * and then computes C (M, N) = A (M, K) B (K, N) (or C +=) with a tile of TILE_ROWS rows by
 * PANEL columns held in vector registers: per k, PANEL/VL vector loads of B, one broadcast of A
 * per row, TILE_ROWS*PANEL/VL fused multiply-adds, and no horizontal reduction anywhere.
 *
 * The vectors are GCC vector extensions 64 bytes wide (16 floats, 8 doubles): one AVX-512
 * register. The tile needs 24 of them, which only AVX-512's 32 registers hold. With 16 registers
 * (AVX2; simd.h's narrow tiles) a tile is a column chunk of the panel in 32-byte vectors, 12 sums
 * whatever its rows: 4 rows x 24 floats, 3 x 32, 2 x 48 or 1 x 96 (half those in doubles), each
 * chunk's strip of the panel staying in L1 while every row tile of C passes over it. Both tiles
 * add each sum's products in the order of k, so they give the same bits.
 */
#ifndef CGRU_PANELS_H
#define CGRU_PANELS_H

#include <string.h>

#include "simd.h"

#define PANEL_VECTORS 6
#define TILE_ROWS 4
/* Columns of one panel: six 64-byte vectors of the element type (96 floats, 48 doubles). */
#define CGRU_PANEL_WIDTH(elem_size) (PANEL_VECTORS * 64 / (int)(elem_size))

/* Elements of one packed (K, N) operand: K rows of N rounded up to whole panels. */
static inline size_t cgru_panels_size(int K, int N, int panel)
{
    return (size_t)K * (size_t)((N + panel - 1) / panel) * panel;
}

#define CGRU_DOUBLE 0
#include "panels_impl.h"
#undef CGRU_DOUBLE
#define CGRU_DOUBLE 1
#include "panels_impl.h"
#undef CGRU_DOUBLE

#endif
