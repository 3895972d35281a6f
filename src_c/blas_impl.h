/* Typed body of blas.c, included once per dtype (see real_begin.h and blas_decl.h). */
#include "real_begin.h"

#if CGRU_DOUBLE
#define BLAS_GEMM blas_dgemm
#define BLAS_GEMV blas_dgemv
#else
#define BLAS_GEMM blas_sgemm
#define BLAS_GEMV blas_sgemv
#endif

void FN(cgru_gemm)(int trans_a, int trans_b, int M, int N, int K, REAL alpha, const REAL *A,
                   int lda, const REAL *B, int ldb, REAL beta, REAL *C, int ldc)
{
    if (M <= 0 || N <= 0 || K <= 0) return;  /* callers pass positive sizes (check_config) */
    if (M == 1) {
        /* C^T (N) = op(B)^T (N, K) . a (K), with a the single row of op(A). */
        char trans = trans_b ? 'T' : 'N';
        int rows = trans_b ? K : N, cols = trans_b ? N : K;
        int inc_a = trans_a ? lda : 1, inc_c = 1;
        BLAS_GEMV(&trans, &rows, &cols, &alpha, (REAL *)B, &ldb, (REAL *)A, &inc_a, &beta, C,
                  &inc_c);
        return;
    }
    char ta = trans_a ? 'T' : 'N', tb = trans_b ? 'T' : 'N';
    BLAS_GEMM(&tb, &ta, &N, &M, &K, &alpha, (REAL *)B, &ldb, (REAL *)A, &lda, &beta, C, &ldc);
}

void FN(cgru_gemm_split)(cgru_plan plan, int trans_a, int trans_b, int M, int N, int K, REAL alpha,
                         const REAL *A, int lda, const REAL *B, int ldb, REAL beta, REAL *C,
                         int ldc)
{
    int split_rows = M >= N;
    int extent = split_rows ? M : N;
    int parts = plan.parts;
    if (parts > extent / ALIGN) parts = extent / ALIGN;
    if (parts <= 1) {
        FN(cgru_gemm)(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    cgru_finish_spread spread;
    cgru_finish_spread_init(&spread);
#ifdef _OPENMP
#pragma omp parallel num_threads(cgru_plan_threads(plan, parts))
#endif
    {
#ifdef _OPENMP
    const int me = omp_get_thread_num(), team = omp_get_num_threads();
#else
    const int me = 0, team = 1;
#endif
    for_each_own_slice(lo, hi, me, team, parts, extent, ALIGN) {
        if (split_rows) {
            /* rows [lo, hi) of C and of op(A) */
            const REAL *A_block = trans_a ? A + lo : A + (long)lo * lda;
            FN(cgru_gemm)(trans_a, trans_b, hi - lo, N, K, alpha, A_block, lda, B, ldb, beta,
                          C + (long)lo * ldc, ldc);
        } else {
            /* columns [lo, hi) of C and of op(B) */
            const REAL *B_block = trans_b ? B + (long)lo * ldb : B + lo;
            FN(cgru_gemm)(trans_a, trans_b, M, hi - lo, K, alpha, A, lda, B_block, ldb, beta,
                          C + lo, ldc);
        }
    }
    cgru_finish_spread_note(&spread);
    }
    if (plan.stalled && cgru_finish_spread_stalled(&spread)) *plan.stalled = 1;
}

/*
 * out[lo, hi) += the sums of columns [lo, hi) of A (M rows, lda apart). Blocks of four vectors of
 * columns are summed down all M rows in registers, starting from out's values and adding the
 * rows in order: the same additions, in the same order, as `out[n] += A[m][n]` row by row, which
 * kept each sum in memory and waited on its own store at every row (measured: 3 % of a
 * (50, 128, 512, 512) training step).
 */
CGRU_KERNEL void FN(colsum_columns)(REAL *out, const REAL *A, int M, int lda, int lo, int hi)
{
    typedef FN(cgru_vec) vec;
    enum { VL = 64 / sizeof(REAL) };
    int n = lo;
    for (; n + 4 * VL <= hi; n += 4 * VL) {
        vec s0 = *(vec *)(out + n), s1 = *(vec *)(out + n + VL);
        vec s2 = *(vec *)(out + n + 2 * VL), s3 = *(vec *)(out + n + 3 * VL);
        for (int m = 0; m < M; m++) {
            const REAL *row = A + (long)m * lda + n;
            s0 += *(const vec *)row;
            s1 += *(const vec *)(row + VL);
            s2 += *(const vec *)(row + 2 * VL);
            s3 += *(const vec *)(row + 3 * VL);
        }
        *(vec *)(out + n) = s0, *(vec *)(out + n + VL) = s1;
        *(vec *)(out + n + 2 * VL) = s2, *(vec *)(out + n + 3 * VL) = s3;
    }
    for (; n < hi; n++) {
        REAL sum = out[n];
        for (int m = 0; m < M; m++) sum += A[(long)m * lda + n];
        out[n] = sum;
    }
}

void FN(cgru_colsum_add)(cgru_plan plan, REAL *out, const REAL *A, int M, int N, int lda)
{
    int parts = plan.parts;
    if (parts > N / ALIGN) parts = N / ALIGN;
    if (parts < 1) parts = 1;
#ifdef _OPENMP
#pragma omp parallel for num_threads(cgru_plan_threads(plan, parts)) schedule(static, 1)
#endif
    for (int k = 0; k < parts; k++) {
        /* each thread owns columns [lo, hi) of out */
        int lo = cgru_block_start(k, N, parts, ALIGN), hi = cgru_block_start(k + 1, N, parts, ALIGN);
        FN(colsum_columns)(out, A, M, lda, lo, hi);
    }
}

#undef BLAS_GEMM
#undef BLAS_GEMV
#include "real_end.h"
