/* Typed body of panels.h, included once per dtype (see real_begin.h): packing (the kernels
 * that multiply by packed panels: panels_kernels_impl.h, compiled in product.c). */
#include "real_begin.h"

#define PANEL CGRU_PANEL_WIDTH(sizeof(REAL))

/* Zero the padding columns of the last panel of a packed (K, N) operand. */
static inline void FN(panels_clear_tail)(REAL *packed, int K, int N)
{
    int tail = N % PANEL;
    if (tail == 0) return;
    REAL *last = packed + (size_t)K * (N / PANEL) * PANEL;  /* (K, PANEL) */
    for (int k = 0; k < K; k++) memset(last + (size_t)k * PANEL + tail, 0, sizeof(REAL) * (PANEL - tail));
}

/*
 * Columns [col0, col0 + ncols) of a packed (K, N) operand from src:
 *   transposed = 1: column c is row c of src (ncols, K), rows ld apart (a weight matrix whose
 *                   rows are output units, as W_hh for h W_hh^T);
 *   transposed = 0: column c is column c of src (K, ncols), rows ld apart.
 */
static inline void FN(panels_pack)(REAL *packed, int K, int col0, const REAL *src, int ld,
                                   int ncols, int transposed)
{
    for (int c = 0; c < ncols; c++) {
        int col = col0 + c;
        REAL *dst = packed + (size_t)K * (col / PANEL) * PANEL + col % PANEL;  /* stride PANEL */
        if (transposed) {
            const REAL *row = src + (long)c * ld;
            for (int k = 0; k < K; k++) dst[(size_t)k * PANEL] = row[k];
        } else {
            for (int k = 0; k < K; k++) dst[(size_t)k * PANEL] = src[(long)k * ld + c];
        }
    }
}

#undef PANEL
#include "real_end.h"
