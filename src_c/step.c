/*
 * One time step through a stack of unidirectional layers, for online use (a control loop that
 * feeds one observation at a time). Runs on the calling thread: at B = 1 the step is a few GEMVs,
 * too small to share.
 *
 * Per layer l, with in_l = x for l = 0 and the new state of layer l-1 above it:
 *   1. gx (B, 3H) = bias + in_l W_ih^T
 *   2. gh (B, 3H) = h W_hh^T  (reset_after=0: r, z first, then (r * h) W_hn^T)
 *   3. postgemm, the same kernels as the sequence loop (gates.h)
 */
#include <stdlib.h>
#include <string.h>

#include "blas.h"
#include "gates.h"

/* Scratch up to this many elements lives on the stack; larger steps allocate once per call. */
#define STEP_STACK_ELEMS 8192
/* Batches up to this size use the hand-written product (gates.h) instead of a BLAS call. */
#define STEP_SMALL_BATCH 4

#define CGRU_DOUBLE 0
#include "step_impl.h"
#undef CGRU_DOUBLE
#define CGRU_DOUBLE 1
#include "step_impl.h"
#undef CGRU_DOUBLE
