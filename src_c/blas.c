/*
 * BLAS from SciPy. The Cython layer hands over the addresses of scipy.linalg.cython_blas's
 * sgemm/dgemm/sgemv/dgemv once at import; no other BLAS is linked.
 *
 * Fortran BLAS is column-major. A row-major C (M, N) is the column-major C^T (N, M), so
 *   row-major      C = op(A) op(B)
 *   is column-major C^T = op(B)^T op(A)^T
 * and every call below swaps the operands (and M with N) in this one place.
 */
#include "barrier.h"
#include "blas.h"
#include "simd.h"

#ifdef _OPENMP
#include <omp.h>
#endif

static cgru_sgemm_fn blas_sgemm = 0;
static cgru_dgemm_fn blas_dgemm = 0;
static cgru_sgemv_fn blas_sgemv = 0;
static cgru_dgemv_fn blas_dgemv = 0;

void cgru_register_blas(cgru_sgemm_fn sgemm, cgru_dgemm_fn dgemm, cgru_sgemv_fn sgemv,
                        cgru_dgemv_fn dgemv)
{
    blas_sgemm = sgemm;
    blas_dgemm = dgemm;
    blas_sgemv = sgemv;
    blas_dgemv = dgemv;
}

int cgru_blas_ready(void)
{
    return blas_sgemm && blas_dgemm && blas_sgemv && blas_dgemv;
}

#define CGRU_DOUBLE 0
#include "blas_impl.h"
#undef CGRU_DOUBLE
#define CGRU_DOUBLE 1
#include "blas_impl.h"
#undef CGRU_DOUBLE
