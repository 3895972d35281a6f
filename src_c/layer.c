/*
 * The time loop of one GRU layer in one direction, forward and backward.
 *
 * Forward, as the fast CPU engines arrange it:
 *   1. gemm   gates (T*B, 3H) = bias + x (T*B, I) W_ih^T        one GEMM for every time step
 *   2. pack   W_hh so that each thread's rows of r, z and n sit together
 *   3. loop   per step, inside one OpenMP region, each thread owns hidden units [j0, j1):
 *               gemm  gh (B, 3hs) = h_prev (B, H) W_hh[own rows]^T      (reset_after=1)
 *               postgemm: r, z, n, h_new for its units; one barrier per step
 *             reset_after=0 needs two GEMMs and two barriers per step (r * h_prev feeds the second)
 * Backward runs the loop the other way with one postgemm and one GEMM for dh_prev per step, keeps
 * every gate gradient in the saved region, and does the weight and input gradients after the loop
 * as large GEMMs over all T*B rows.
 *
 * Saved region, as (T+1) state slots and per-step gates; h0 sits in one end slot so that no step
 * needs an edge case: the forward direction reads slot t and writes slot t+1, the reverse
 * direction reads slot t+1 and writes slot t. In inference mode two slots alternate.
 */
#include <string.h>

#include "blas.h"
#include "gates.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* Offsets, in elements, of the named regions of the saved and scratch buffers. */
typedef struct {
    size_t states, gates, extra, saved_total;
    size_t w_packed, gh, bias, hn_bias, dh_a, dh_b, drh, scratch_total;
} layer_layout;

static size_t pad(size_t n) { return (n + 15) / 16 * 16; }

static layer_layout layout_of(const cgru_layer_config *c)
{
    size_t T = c->time_steps, B = c->batch, H = c->hidden_size;
    layer_layout L;
    size_t n_slots = c->training ? T + 1 : 2;
    L.states = 0;
    L.gates = L.states + pad(n_slots * B * H);            /* (slots, B, H) */
    L.extra = L.gates + pad(T * B * 3 * H);               /* (T, B, 3H) */
    L.saved_total = L.extra + pad((c->training ? T : 1) * B * H);  /* (T, B, H) hn or r*h */
    L.w_packed = 0;
    L.gh = L.w_packed + pad(3 * H * H);                   /* (3H, H) */
    L.bias = L.gh + pad(B * 3 * H);                       /* (B, 3H) */
    L.hn_bias = L.bias + pad(3 * H);                      /* (3H) */
    L.dh_a = L.hn_bias + pad(H);                          /* (H) */
    L.dh_b = L.dh_a + pad(B * H);                         /* (B, H) */
    L.drh = L.dh_b + pad(B * H);                          /* (B, H) */
    L.scratch_total = L.drh + pad(B * H);                 /* (B, H) */
    return L;
}

static cgru_status check_config(const cgru_layer_config *c)
{
    if (c->time_steps <= 0 || c->batch <= 0 || c->input_size <= 0 || c->hidden_size <= 0) return CGRU_ERR_BAD_DIMS;
    /* BLAS takes 32-bit sizes: T*B rows and 3H columns must fit */
    if ((long)c->time_steps * c->batch > 2147483647L || 3L * c->hidden_size > 2147483647L) return CGRU_ERR_TOO_LARGE;
    return CGRU_OK;
}

cgru_status cgru_layer_workspace_size(const cgru_layer_config *cfg, size_t *saved_elems,
                                      size_t *scratch_elems)
{
    cgru_status st = check_config(cfg);
    if (st != CGRU_OK) return st;
    layer_layout L = layout_of(cfg);
    *saved_elems = L.saved_total;
    *scratch_elems = L.scratch_total;
    return CGRU_OK;
}

/* Batches up to this size use the hand-written per-step product (gates.h) instead of BLAS. */
#define SMALL_BATCH 8

/* Threads that share the time loop: no more than the slices of ALIGN hidden units there are. */
static int loop_slices(int n_threads, int H, int align)
{
    int most = H / align;
    if (most < 1) most = 1;
    if (n_threads < 1) n_threads = 1;
    return n_threads < most ? n_threads : most;
}

#define CGRU_DOUBLE 0
#include "layer_impl.h"
#undef CGRU_DOUBLE
#define CGRU_DOUBLE 1
#include "layer_impl.h"
#undef CGRU_DOUBLE
