/*
 * Row-major GEMM on top of SciPy's Fortran BLAS (scipy.linalg.cython_blas), and the few dense
 * helpers the engine shares: a GEMM split across OpenMP threads and column sums.
 */
#ifndef CGRU_BLAS_H
#define CGRU_BLAS_H

#include "cgru.h"
#include "slices.h"
#include "threads.h"

int cgru_blas_ready(void);

#define CGRU_DOUBLE 0
#include "blas_decl.h"
#undef CGRU_DOUBLE
#define CGRU_DOUBLE 1
#include "blas_decl.h"
#undef CGRU_DOUBLE

#endif
