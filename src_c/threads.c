/*
 * Thread count of the engine. OpenMP owns the cores: every parallel region of cgru runs with
 * cgru_get_num_threads() threads, and BLAS is called single-threaded inside them (the Cython
 * layer caps SciPy's OpenBLAS at one thread while an engine call runs).
 */
#include "cgru.h"

#ifdef _OPENMP
#include <omp.h>
#endif

static int engine_threads = 0;  /* 0: not set, follow OpenMP's default (OMP_NUM_THREADS) */

int cgru_openmp_enabled(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int cgru_get_num_threads(void)
{
#ifdef _OPENMP
    return engine_threads > 0 ? engine_threads : omp_get_max_threads();
#else
    return 1;
#endif
}

void cgru_set_num_threads(int n_threads)
{
    engine_threads = n_threads > 0 ? n_threads : 0;
}
