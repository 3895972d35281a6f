/* Typed body of step.c, included once per dtype (see real_begin.h). */
#include "real_begin.h"

/* C (B, N) = beta C + A (B, K) W (N, K)^T: hand-written below SMALL_BATCH rows, BLAS above */
static void FN(step_matmul)(REAL *C, int ldc, const REAL *A, int lda, const REAL *W, int B, int N,
                            int K, int accumulate)
{
    if (B <= STEP_SMALL_BATCH && lda == K)
        FN(small_matmul_wt)(C, ldc, A, W, B, N, K, accumulate);
    else
        FN(cgru_gemm)(0, 1, B, N, K, 1, A, lda, W, K, accumulate ? 1 : 0, C, ldc);
}

cgru_status FN(cgru_step)(REAL *h_out, const REAL *h_in, const REAL *x, const REAL *const *w_ih,
                          const REAL *const *w_hh, const REAL *const *b_ih,
                          const REAL *const *b_hh, int L, int B, int I0, int H, int reset_after)
{
    if (!cgru_blas_ready()) return CGRU_ERR_NO_BLAS;
    if (L <= 0 || B <= 0 || I0 <= 0 || H <= 0) return CGRU_ERR_BAD_DIMS;
    if (3L * H > 2147483647L) return CGRU_ERR_TOO_LARGE;
    const int G = 3 * H;
    /* scratch: gx (B, 3H), gh (B, 3H), rh (B, H), h_new (B, H), y (B, H), b_hn (H) */
    size_t need = (size_t)B * 9 * H + H;
    REAL on_stack[STEP_STACK_ELEMS];
    REAL *scratch = need <= STEP_STACK_ELEMS ? on_stack : (REAL *)malloc(sizeof(REAL) * need);
    if (!scratch) return CGRU_ERR_NO_MEMORY;
    REAL *gx = scratch, *gh = gx + (size_t)B * G, *rh = gh + (size_t)B * G, *h_new = rh + (size_t)B * H;
    REAL *y = h_new + (size_t)B * H, *b_hn = y + (size_t)B * H;

    for (int l = 0; l < L; l++) {
        const REAL *in = l == 0 ? x : h_out + (long)(l - 1) * B * H;  /* (B, I_l) */
        const int I = l == 0 ? I0 : H;
        const REAL *h_prev = h_in + (long)l * B * H;                  /* (B, H) */
        const REAL *bi = b_ih ? b_ih[l] : 0, *bh = b_hh ? b_hh[l] : 0;
        /* 1. gx = bias + in W_ih^T */
        for (int j = 0; j < H; j++) b_hn[j] = bh ? bh[2 * H + j] : 0;
        if (bi) {
            for (int b = 0; b < B; b++)
                for (int g = 0; g < G; g++)
                    gx[(long)b * G + g] = bi[g] + ((g < 2 * H || !reset_after) ? bh[g] : 0);
        }
        FN(step_matmul)(gx, G, in, I, w_ih[l], B, G, I, bi != 0);
        /* 2, 3. recurrent GEMM(s) and postgemm, into h_new so that h_out may alias h_in */
        if (reset_after) {
            FN(step_matmul)(gh, G, h_prev, H, w_hh[l], B, G, H, 0);
            FN(gates_forward_reset_after)(h_new, y, H, gx, 0, gh, h_prev, b_hn, 0, 0, 0, B, H, 0,
                                          H);
        } else {
            FN(cgru_gemm)(0, 1, B, 2 * H, H, 1, h_prev, H, w_hh[l], H, 0, gh, G);  /* gh rows have stride 3H */
            FN(gates_forward_rz)(gx, gh, rh, h_prev, 0, B, H, 0, H);
            FN(cgru_gemm)(0, 1, B, H, H, 1, rh, H, w_hh[l] + 2L * H * H, H, 0, gh + 2 * H, G);
            FN(gates_forward_n)(h_new, y, H, gx, gh, h_prev, 0, 0, 0, B, H, 0, H);
        }
        memcpy(h_out + (long)l * B * H, h_new, sizeof(REAL) * B * H);
    }
    if (scratch != on_stack) free(scratch);
    return CGRU_OK;
}

#include "real_end.h"
