/*
 * The gate kernels (gates.h), compiled once for the engine: the time loop (layer.c) and step()
 * (step.c) both call them.
 */
#include "gates.h"

#define CGRU_DOUBLE 0
#include "gates_kernels_impl.h"
#undef CGRU_DOUBLE
#define CGRU_DOUBLE 1
#include "gates_kernels_impl.h"
#undef CGRU_DOUBLE
