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

#include "barrier.h"
#include "blas.h"
#include "gates.h"
#include "product.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* Offsets, in elements, of the named regions of the saved and scratch buffers. */
typedef struct {
    size_t states, gates, extra, saved_total;
    size_t w_packed, gh, bias, hn_bias, dh_a, dh_b, drh, scratch_total;
} layer_layout;

static size_t pad(size_t n) { return (n + 15) / 16 * 16; }

const char *cgru_kernel_isa(void)
{
#ifdef CGRU_MULTIVERSION
    /* the test of GCC's target_clones resolver for these levels, in its order (gates.h) */
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4")) return "x86-64-v4 (AVX-512)";
    if (__builtin_cpu_supports("x86-64-v3")) return "x86-64-v3 (AVX2, FMA)";
    return "x86-64 baseline (SSE2)";
#elif defined(__AVX512F__)
    return "AVX-512 (compiled for it; no runtime choice)";
#elif defined(__AVX2__)
    return "AVX2 (compiled for it; no runtime choice)";
#elif defined(__x86_64__)
    return "x86-64 baseline (SSE2; no runtime choice)";
#elif defined(__aarch64__)
    return "AArch64 NEON (no runtime choice)";
#else
    return "the compiler's default target (no runtime choice)";
#endif
}

/*
 * W_hh of one slice of hs hidden units, packed into panels (panels.h), in elements:
 *   forward  reset_after=1: (H, 3hs)             reset_after=0: (H, 2hs) then (H, hs)
 *   backward reset_after=1: (3H, hs)             reset_after=0: (2H, hs) then (H, hs)
 * The backward's operand is W_hh's own columns; the forward's is W_hh's rows, transposed.
 */
static size_t slice_packed_elems(int H, int hs, int reset_after, int backward, int panel)
{
    if (backward)
        return reset_after ? cgru_panels_size(3 * H, hs, panel)
                           : cgru_panels_size(2 * H, hs, panel) + cgru_panels_size(H, hs, panel);
    return reset_after ? cgru_panels_size(H, 3 * hs, panel)
                       : cgru_panels_size(H, 2 * hs, panel) + cgru_panels_size(H, hs, panel);
}

/* Where each slice's packed W_hh starts: at[k] for slice k, at[n_slices] the end of the last. */
static void slice_packed_offsets(size_t *at, int H, int n_slices, int reset_after, int backward,
                                 int align, int panel)
{
    at[0] = 0;
    for (int k = 0; k < n_slices; k++) {
        int hs = cgru_block_start(k + 1, H, n_slices, align) - cgru_block_start(k, H, n_slices, align);
        at[k + 1] = at[k] + pad(slice_packed_elems(H, hs, reset_after, backward, panel));
    }
}

/* The packed-weights region: the largest of forward's and backward's, for either dtype and any
 * team size up to the configured threads, and no smaller than the (3H, H) copy the BLAS path
 * packs. */
static size_t packed_region(const cgru_layer_config *c)
{
    size_t most = (size_t)3 * c->hidden_size * c->hidden_size;
    /* the same slice and panel widths as the typed code (real_begin.h's ALIGN, panels_impl.h's
     * PANEL), for each element size */
    const int elem_sizes[2] = {sizeof(float), sizeof(double)};
    for (int d = 0; d < 2; d++) {
        const int line = CGRU_LINE_ELEMS(elem_sizes[d]), panel = CGRU_PANEL_WIDTH(elem_sizes[d]);
        /* a call may run on fewer threads than configured (threads.c): every team size fits */
        int most_slices = cgru_slice_count(c->n_threads, c->hidden_size, line);
        size_t at[most_slices + 1];
        for (int n_slices = 1; n_slices <= most_slices; n_slices++)
            for (int backward = 0; backward < 2; backward++) {
                slice_packed_offsets(at, c->hidden_size, n_slices, c->reset_after, backward, line,
                                     panel);
                if (at[n_slices] > most) most = at[n_slices];
            }
    }
    return most;
}

static layer_layout layout_of(const cgru_layer_config *c)
{
    size_t T = c->time_steps, B = c->batch, H = c->hidden_size;
    layer_layout L;
    size_t n_slots = c->training ? T + 1 : 2;
    L.states = 0;
    L.gates = L.states + pad(n_slots * B * H);            /* (slots, B, H) */
    L.extra = L.gates + pad(T * B * 3 * H);               /* (T, B, 3H) */
    L.saved_total = L.extra + pad((c->training ? T : 1) * B * H)  /* (T, B, H) hn or r*h */
                    + 16;  /* slack to start on a 64-byte boundary, see aligned_start */
    L.w_packed = 0;
    L.gh = L.w_packed + pad(packed_region(c));           /* W_hh, packed per thread slice */
    L.bias = L.gh + pad(B * 3 * H);                       /* (B, 3H) */
    L.hn_bias = L.bias + pad(3 * H);                      /* (3H) */
    L.dh_a = L.hn_bias + pad(H);                          /* (H) */
    L.dh_b = L.dh_a + pad(B * H);                         /* (B, H) */
    L.drh = L.dh_b + pad(B * H);                          /* (B, H) */
    L.scratch_total = L.drh + pad(B * H)                  /* (B, H) */
                      + 16;  /* slack to start on a 64-byte boundary */
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

/* The first 64-byte boundary at or after p, within 16 elements: the engine's regions start there
 * so that its whole-vector loads never straddle two cache lines (measured: a third slower when
 * they do). The same buffer always gives the same start, so backward finds what forward kept. */
static void *aligned_start(void *p)
{
    return (void *)(((uintptr_t)p + 63) & ~(uintptr_t)63);
}

#define CGRU_DOUBLE 0
#include "layer_impl.h"
#undef CGRU_DOUBLE
#define CGRU_DOUBLE 1
#include "layer_impl.h"
#undef CGRU_DOUBLE
