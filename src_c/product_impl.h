/* Typed part of product.h, included once per dtype (see real_begin.h): what a product
 * multiplies by, and the product (its kernels: product.c). */
#include "real_begin.h"

/*
 * The weights of one per-step product C (M, N) = A (M, K) op(W):
 *   PANELS:      w is op(W) (K, N) packed into panels (panels.h; ld unused), a slice's gates
 *                already side by side;
 *   STRIPS_BF16, STRIPS_BF16_EXACT, STRIPS_INT8: wq is the first of the bfloat16 (uint16_t)
 *                or int8 (int8_t) strips of W's rows (N, K), op(W) = W^T (product.h,
 *                strips_int8.h; float32 products only; w unused);
 *   other kernels: w is W as it lies, rows ld apart: (N, K) with op(W) = W^T when transposed
 *                (rows are output units, as W_hh in h W_hh^T), else (K, N) with op(W) = W.
 * Gate runs (all but PANELS): with gate_cols > 0, C's columns come in runs of gate_cols, one
 * per gate (a thread's units of r, z and n side by side), and each run's weights start
 * gate_stride elements of w (bytes of int8 strips, elements of bfloat16 ones) after the previous run's, so that one product covers a
 * slice of units in every gate (strips_operand; step.c's rows_of).
 */
typedef struct {
    const REAL *w;
    int ld, transposed;
    const void *wq;
    long gate_stride;
    int gate_cols;
} FN(cgru_operand);

/* The strips (stored as `format` says: cgru.h) of units [j0, j1) of weights (3H, K), from gate
 * g on: a product of n (j1 - j0) columns with this operand multiplies by gates g .. g + n - 1 at
 * once. */
static inline FN(cgru_operand) FN(strips_operand)(const void *wq, cgru_weights format, int H,
                                                  int K, int g, int j0, int j1)
{
    if (format == CGRU_WEIGHTS_INT8)
        return (FN(cgru_operand)){0, K, 1, cgru_int8_gate_strips(wq, H, K, g, j0),
                                  cgru_int8_gate_stride(H, K), j1 - j0};
    return (FN(cgru_operand)){0, K, 1, cgru_bf16_gate_strips(wq, H, K, g, j0),
                              cgru_bf16_gate_stride(H, K), j1 - j0};
}

/* C (M, N), rows ldc apart, = A (M, K), rows lda apart, times op(W) with the given kernel;
 * += with accumulate. */
CGRU_INTERNAL void FN(cgru_product)(cgru_product_kernel kernel, REAL *C, int ldc, const REAL *A,
                                    int lda, FN(cgru_operand) W, int M, int N, int K,
                                    int accumulate);

#include "real_end.h"
