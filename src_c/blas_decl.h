/* Declarations of blas_impl.h, once per dtype (see real_begin.h). */
#include "real_begin.h"

/*
 * C := alpha * op(A) op(B) + beta * C, all row-major, on the calling thread.
 * op(A) is (M, K): A is (M, K) with row stride lda, or (K, M) when trans_a.
 * op(B) is (K, N): B is (K, N) with row stride ldb, or (N, K) when trans_b.
 * C is (M, N) with row stride ldc. M == 1 goes to GEMV.
 */
void FN(cgru_gemm)(int trans_a, int trans_b, int M, int N, int K, REAL alpha, const REAL *A,
                   int lda, const REAL *B, int ldb, REAL beta, REAL *C, int ldc);

/* The same product, with C cut into plan.parts blocks of rows (or of columns when N > M), each
 * block computed with a single-threaded BLAS call by one of plan.threads OpenMP threads. No two
 * threads write the same element of C. Call it outside a parallel region. */
void FN(cgru_gemm_split)(cgru_plan plan, int trans_a, int trans_b, int M, int N, int K, REAL alpha,
                         const REAL *A, int lda, const REAL *B, int ldb, REAL beta, REAL *C,
                         int ldc);

/* out (N) += column sums of A (M, N) with row stride lda; columns cut into plan.parts blocks. */
void FN(cgru_colsum_add)(cgru_plan plan, REAL *out, const REAL *A, int M, int N, int lda);

#include "real_end.h"
