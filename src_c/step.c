/*
 * One time step through a stack of unidirectional layers, for online use (a control loop that
 * feeds one observation at a time). At B = 1 a step is a few matrix-vector products whose
 * weights stream from cache: with enough of them, threads share the hidden units (each reads
 * only its rows of the weights, from its own core's cache), as in the sequence loop of layer.c.
 *
 * Per layer l, with in_l = x for l = 0 and the new state of layer l-1 above it:
 *   1. gx (B, 3H) = bias + in_l W_ih^T
 *   2. gh (B, 3H) = h W_hh^T  (reset_after=0: r, z first, then (r * h) W_hn^T)
 *   3. postgemm, the same kernels as the sequence loop (gates.h)
 * Both products run on the weights as they lie (a step has no time to pack them), with the
 * kernel product.h picks for the batch.
 */
#include <stdlib.h>
#include <string.h>

#include "barrier.h"
#include "blas.h"
#include "gates.h"
#include "product.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* Scratch up to this many elements lives on the stack; larger steps allocate once per call. */
#define STEP_STACK_ELEMS 8192
/* Multiply-adds per step (B * 3H * (inputs + H), all layers) from which threads share a step:
 * below it, waking a second thread costs more than it saves. Measured on 2-core VMs (B=1, I=32,
 * from Python, us per call on one thread / two): Zen 4, H=128 (61k) 3.66 / 3.70, and up to twice
 * that on two when the hypervisor's core placement makes cross-core hand-offs slow; H=256 (221k)
 * 11.6 / 7.7. Zen 5, H=64 (18k) 1.27 / 1.83, H=128 (61k) 2.75 / 2.69, H=192 (129k) 5.05 / 3.87. */
#define STEP_SHARED_WORK 98304

#define CGRU_DOUBLE 0
#include "step_impl.h"
#undef CGRU_DOUBLE
#define CGRU_DOUBLE 1
#include "step_impl.h"
#undef CGRU_DOUBLE
