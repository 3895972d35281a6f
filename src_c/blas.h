/*
 * Row-major GEMM on top of SciPy's Fortran BLAS (scipy.linalg.cython_blas), and the few dense
 * helpers the engine shares: a GEMM split across OpenMP threads and column sums.
 */
#ifndef CGRU_BLAS_H
#define CGRU_BLAS_H

#include "cgru.h"
#include "threads.h"

int cgru_blas_ready(void);

/* Start of block k when n items are cut into `parts` blocks whose size is a multiple of `unit`
 * (the last block takes the rest; trailing blocks are empty when n is small). */
static inline int cgru_block_start(int k, int n, int parts, int unit)
{
    int per = (n + parts - 1) / parts;
    per = (per + unit - 1) / unit * unit;
    long start = (long)k * per;
    return start < n ? (int)start : n;
}

#define CGRU_DOUBLE 0
#include "blas_decl.h"
#undef CGRU_DOUBLE
#define CGRU_DOUBLE 1
#include "blas_decl.h"
#undef CGRU_DOUBLE

#endif
