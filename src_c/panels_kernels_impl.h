/* Typed kernels of panels.h, compiled once per dtype in product.c (see real_begin.h). */
#include "real_begin.h"

#define VEC FN(cgru_vec)
#define VL (64 / (int)sizeof(REAL))
#define PANEL CGRU_PANEL_WIDTH(sizeof(REAL))
#define HALF FN(cgru_half)
#define HL (32 / (int)sizeof(REAL))
#define PANEL_HALVES (PANEL / HL)  /* 12: divisible by every tile's rows, 1 to 4 */

/* A tile's store, for both tiles: C[i, 0:cols] = (or +=) the sums acc[i][0:n] (vectors V of W
 * elements), for each of its rows; a tile that ends past C's last column goes through `full`. */
#define PANEL_TILE_STORE(V, W, n)                                                              \
    for (int i = 0; i < rows; i++) {                                                           \
        REAL *c = C + (long)i * ldc;                                                           \
        if (cols == (n) * (W)) {                                                               \
            for (int v = 0; v < (n); v++) {                                                    \
                V *cv = (V *)(c + v * (W));                                                    \
                if (accumulate) *cv += acc[i][v];                                              \
                else *cv = acc[i][v];                                                          \
            }                                                                                  \
        } else {                                                                               \
            REAL full[PANEL];                                                                  \
            for (int v = 0; v < (n); v++) *(V *)(full + v * (W)) = acc[i][v];                  \
            for (int j = 0; j < cols; j++) c[j] = accumulate ? c[j] + full[j] : full[j];       \
        }                                                                                      \
    }

/*
 * One tile: C[0:rows, 0:cols] (ldc) = (or +=) A[0:rows, 0:K] (lda) times one panel (K, PANEL).
 * rows is 1..TILE_ROWS and a constant where this is inlined, so the accumulators live in
 * registers; cols < PANEL only for the last panel, whose extra columns are computed and dropped.
 */
static inline __attribute__((always_inline)) void FN(panels_tile)(
    REAL *C, int ldc, const REAL *A, int lda, const REAL *panel, int K, int rows, int cols,
    int accumulate)
{
    VEC acc[TILE_ROWS][PANEL_VECTORS];
    for (int i = 0; i < rows; i++)
        for (int v = 0; v < PANEL_VECTORS; v++) acc[i][v] = (VEC){0};
    for (int k = 0; k < K; k++) {
        const REAL *bk = panel + (size_t)k * PANEL;
        VEC b[PANEL_VECTORS];
        for (int v = 0; v < PANEL_VECTORS; v++) b[v] = *(const VEC *)(bk + v * VL);
        for (int i = 0; i < rows; i++) {
            REAL a = A[(long)i * lda + k];
            for (int v = 0; v < PANEL_VECTORS; v++) acc[i][v] += b[v] * a;
        }
    }
    PANEL_TILE_STORE(VEC, VL, PANEL_VECTORS);
}

/*
 * One narrow tile (panels.h): C[0:rows, 0:cols] (ldc) = (or +=) A[0:rows, 0:K] (lda) times
 * `halves` 32-byte vectors of columns of a panel from `chunk` on (rows PANEL apart). rows and
 * halves are constants where this is inlined; cols < halves * HL only at the last panel's end.
 */
static inline __attribute__((always_inline)) void FN(panels_tile_narrow)(
    REAL *C, int ldc, const REAL *A, int lda, const REAL *chunk, int K, int rows, int halves,
    int cols, int accumulate)
{
    HALF acc[TILE_ROWS][PANEL_HALVES];
    for (int i = 0; i < rows; i++)
        for (int v = 0; v < halves; v++) acc[i][v] = (HALF){0};
    for (int k = 0; k < K; k++) {
        const REAL *bk = chunk + (size_t)k * PANEL;
        for (int i = 0; i < rows; i++) {
            const REAL a = A[(long)i * lda + k];
            for (int v = 0; v < halves; v++) acc[i][v] += *(const HALF *)(bk + v * HL) * a;
        }
    }
    PANEL_TILE_STORE(HALF, HL, halves);
}

/* Rows [m0, M) of one panel's product (cols columns) in narrow tiles of `rows` rows: chunk by
 * chunk of the panel's columns, every row tile in turn. */
static inline __attribute__((always_inline)) void FN(panels_rows_narrow)(
    REAL *C, int ldc, const REAL *A, int lda, const REAL *panel, int K, int m0, int M, int rows,
    int cols, int accumulate)
{
    const int halves = PANEL_HALVES / rows, width = halves * HL;
    for (int c0 = 0; c0 < cols; c0 += width) {
        const int n = cols - c0 < width ? cols - c0 : width;
        for (int m = m0; m + rows <= M; m += rows)
            FN(panels_tile_narrow)(C + (long)m * ldc + c0, ldc, A + (long)m * lda, lda, panel + c0,
                                   K, rows, halves, n, accumulate);
    }
}

/* C (M, N), rows ldc apart, = A (M, K) B (K, N), or += with accumulate; B packed as above. */
CGRU_KERNEL void FN(panels_matmul)(REAL *C, int ldc, const REAL *A, int lda, const REAL *packed,
                                   int M, int N, int K, int accumulate)
{
    if (!cgru_wide_tiles()) {
        for (int n0 = 0; n0 < N; n0 += PANEL) {
            const REAL *panel = packed + (size_t)K * n0;  /* (K, PANEL) */
            const int cols = N - n0 < PANEL ? N - n0 : PANEL, whole = M / TILE_ROWS * TILE_ROWS;
            REAL *c = C + n0;
            FN(panels_rows_narrow)(c, ldc, A, lda, panel, K, 0, whole, TILE_ROWS, cols, accumulate);
            switch (M - whole) {
            case 3: FN(panels_rows_narrow)(c, ldc, A, lda, panel, K, whole, M, 3, cols, accumulate); break;
            case 2: FN(panels_rows_narrow)(c, ldc, A, lda, panel, K, whole, M, 2, cols, accumulate); break;
            case 1: FN(panels_rows_narrow)(c, ldc, A, lda, panel, K, whole, M, 1, cols, accumulate); break;
            default: break;
            }
        }
        return;
    }
    for (int n0 = 0; n0 < N; n0 += PANEL) {
        const REAL *panel = packed + (size_t)K * n0;  /* (K, PANEL) */
        int cols = N - n0 < PANEL ? N - n0 : PANEL;
        int m = 0;
        for (; m + TILE_ROWS <= M; m += TILE_ROWS)
            FN(panels_tile)(C + (long)m * ldc + n0, ldc, A + (long)m * lda, lda, panel, K,
                            TILE_ROWS, cols, accumulate);
        REAL *c = C + (long)m * ldc + n0;
        const REAL *a = A + (long)m * lda;
        switch (M - m) {
        case 3: FN(panels_tile)(c, ldc, a, lda, panel, K, 3, cols, accumulate); break;
        case 2: FN(panels_tile)(c, ldc, a, lda, panel, K, 2, cols, accumulate); break;
        case 1: FN(panels_tile)(c, ldc, a, lda, panel, K, 1, cols, accumulate); break;
        default: break;
        }
    }
}

#undef VEC
#undef VL
#undef PANEL
#undef HALF
#undef HL
#undef PANEL_HALVES
#undef PANEL_TILE_STORE
#include "real_end.h"
