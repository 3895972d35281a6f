/*
 * cgru: the C engine's public interface.
 *
 * Dimension legend, used in every shape comment of src_c/:
 *   T = time steps, B = batch, I = input features of the layer, H = hidden units,
 *   G = 3H (the gates r, z, n side by side, PyTorch's order).
 * All matrices are row-major and contiguous unless a leading dimension (ld*) says otherwise.
 *
 * Every function that can fail returns a cgru_status; the Cython layer turns it into an exception.
 * Every function is typed twice, suffix _f32 (float) and _f64 (double), from one source file.
 */
#ifndef CGRU_H
#define CGRU_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    CGRU_OK = 0,
    CGRU_ERR_NO_BLAS = 1,        /* cgru_register_blas was never called */
    CGRU_ERR_TOO_LARGE = 2,      /* a matrix dimension exceeds the 32-bit BLAS integer */
    CGRU_ERR_BAD_DIMS = 3,       /* a size is zero or negative */
    CGRU_ERR_NO_MEMORY = 4,      /* malloc failed */
    CGRU_ERR_INFERENCE_ONLY = 5, /* quantized weights were given to a training forward */
} cgru_status;

/* How a quantized GRU's W_hh is stored (the layouts: src_c/product.h, src_c/strips_int8.h). */
typedef enum {
    CGRU_WEIGHTS_DTYPE = 0,  /* in the GRU's dtype, as it lies (not quantized) */
    CGRU_WEIGHTS_BF16 = 1,   /* bfloat16 strips (uint16_t) */
    CGRU_WEIGHTS_INT8 = 2,   /* int8 strips with a scale per output unit (int8_t) */
} cgru_weights;

/* ---- BLAS from SciPy (blas.c) ---------------------------------------------------------------- */

/* Fortran BLAS signatures, as scipy.linalg.cython_blas exports them. */
typedef void (*cgru_sgemm_fn)(char *transa, char *transb, int *m, int *n, int *k, float *alpha,
                              float *a, int *lda, float *b, int *ldb, float *beta, float *c, int *ldc);
typedef void (*cgru_dgemm_fn)(char *transa, char *transb, int *m, int *n, int *k, double *alpha,
                              double *a, int *lda, double *b, int *ldb, double *beta, double *c,
                              int *ldc);
typedef void (*cgru_sgemv_fn)(char *trans, int *m, int *n, float *alpha, float *a, int *lda,
                              float *x, int *incx, float *beta, float *y, int *incy);
typedef void (*cgru_dgemv_fn)(char *trans, int *m, int *n, double *alpha, double *a, int *lda,
                              double *x, int *incx, double *beta, double *y, int *incy);

void cgru_register_blas(cgru_sgemm_fn sgemm, cgru_dgemm_fn dgemm, cgru_sgemv_fn sgemv,
                        cgru_dgemv_fn dgemv);

/* ---- Threads (threads.c) --------------------------------------------------------------------- */

int cgru_openmp_enabled(void);
/* Threads an engine call asks for: OMP_NUM_THREADS / omp_get_max_threads() until set. */
int cgru_get_num_threads(void);
void cgru_set_num_threads(int n_threads);
/* CPUs this process may use now: its affinity mask, capped by its cgroup's CPU quota. */
int cgru_cpus_available(void);
/* 1 in a fork child whose OpenMP runtime could not be reset before the fork: one thread only. */
int cgru_fork_serial(void);
/* 1 when this build's OpenMP runtime can be reset before a fork, so that children keep threads. */
int cgru_fork_keeps_threads(void);
/* Engine calls running now, in any thread (a fork waits for them; tests). */
int cgru_calls_in_flight(void);
/* Registers the fork handlers (threads.c); the module calls it once, after registering the BLAS. */
void cgru_install_fork_handlers(void);
/* Stalled teams so far, and a reset of the back-off they cause (tests, benchmarks). */
long cgru_stalls_seen(void);
void cgru_reset_contention(void);
/* Tests: pretend the process has `cpus` CPUs (0: the real count); make every team go on with its
 * last thread alone at barrier pass `pass` (0: never). */
void cgru_set_cpus_override(int cpus);
void cgru_set_solo_test(int pass);
/* Tests: barrier.h's rule for a team to go on alone, on times in nanoseconds. */
int cgru_stall_asks_ns(int earlier_long_waits, double lost_ns, double so_far_ns);

/* ---- One layer, one direction (layer.c) ------------------------------------------------------ */

/* The per-step products of the sequence loop run on W_hh packed into panels (panels.h) where
 * the CPU has AVX2 and FMA or AVX-512, else on the weights as they lie (product.h). cgru_set_panels_mode overrides that choice for the process (-1: follow the CPU,
 * 0: BLAS, 1: panels), for tests and comparisons. */
void cgru_set_panels_mode(int mode);
/* 1 when the per-step products now run on panels: the mode above, else whether the CPU has
 * AVX2 and FMA (product.h) */
int cgru_panels_active(void);
/* The register tiles the product kernels hold their sums in on this CPU (simd.h): 64-byte
 * vectors with AVX-512's 32 registers, else 32-byte ones. cgru_set_tiles_mode overrides it
 * (-1: follow the CPU, 0: narrow, 1: wide; either runs on any CPU, the wrong one slowly), for
 * tests and comparisons. */
void cgru_set_tiles_mode(int mode);
const char *cgru_register_tiles(void);
/* How bfloat16 weights are multiplied: AVX512_BF16's dot product where the CPU has it, else
 * widened to float32 in registers; cgru_set_bf16_dot_mode overrides it (-1: follow the CPU,
 * 0: widen, 1: the dot product where the CPU has it), for tests and comparisons. */
void cgru_set_bf16_dot_mode(int mode);
const char *cgru_bf16_kernel(void);
/* Pairs of k per bfloat16 strip of W_hh for H hidden units (the layout: src_c/product.h). */
int cgru_bf16_strip_pairs_of(int H);
/* The same for int8 weights: AVX512_VNNI's vpdpbusd where the CPU has it, else exact integer
 * sums in 32-bit lanes; cgru_set_int8_dot_mode overrides it as cgru_set_bf16_dot_mode does. */
void cgru_set_int8_dot_mode(int mode);
const char *cgru_int8_kernel(void);
/* Quads of k per int8 strip of weights with K inputs (the layout: src_c/strips_int8.h). */
int cgru_int8_strip_quads_of(int K);
/* The instruction set the gate kernels run with on this CPU: the clone that GCC's target_clones
 * resolver picked where they are multiversioned (gates.h), else the one they were compiled for. */
const char *cgru_kernel_isa(void);

typedef struct {
    int time_steps, batch, input_size, hidden_size;  /* T, B, I, H */
    int reset_after;   /* 1: n = tanh(Wx + b + r * (W_hn h + b_hn)); 0: Cho et al., W_hn (r * h) */
    int reverse;       /* 1: the time loop runs from each sequence's last step back to t = 0 */
    int training;      /* 1: keep what backward needs in the saved region */
    int n_threads;
} cgru_layer_config;

/*
 * Workspace sizes, in elements of the dtype:
 *   saved:   what a training forward keeps for backward (T+1 states, T x 3H gates, T x H extra);
 *            in inference mode the forward uses it too, with two state slots instead of T+1.
 *   scratch: what one call needs only while it runs (packed W_hh, per-step buffers).
 */
cgru_status cgru_layer_workspace_size(const cgru_layer_config *cfg, size_t *saved_elems,
                                      size_t *scratch_elems);

/*
 * Forward of one layer and direction.
 *   y       (T, B, ldy): this direction's output is written at columns [0, H) of each row; the
 *           caller offsets the pointer by d*H for direction d. Steps past a sequence's length get 0.
 *   h_n     (B, H): the state after each sequence's own last step.
 *   saved   (saved_elems,), scratch (scratch_elems,): see cgru_layer_workspace_size.
 *   x       (T, B, I); h0 (B, H) or NULL for zeros;
 *   w_ih    (3H, I); w_hh (3H, H); b_ih, b_hh (3H) or both NULL for a GRU without bias.
 *   lengths (B,) with 1 <= lengths[b] <= T, or NULL when every sequence has T steps.
 */
cgru_status cgru_layer_forward_f32(float *y, int ldy, float *h_n, float *saved, float *scratch,
                                   const float *x, const float *h0, const float *w_ih,
                                   const float *w_hh, const float *b_ih, const float *b_hh,
                                   const int64_t *lengths, const cgru_layer_config *cfg);
cgru_status cgru_layer_forward_f64(double *y, int ldy, double *h_n, double *saved, double *scratch,
                                   const double *x, const double *h0, const double *w_ih,
                                   const double *w_hh, const double *b_ih, const double *b_hh,
                                   const int64_t *lengths, const cgru_layer_config *cfg);

/*
 * The same forward, in inference (training = 0), with W_hh quantized (format):
 *   CGRU_WEIGHTS_BF16  uint16_t: bfloat16, each element the upper 16 bits of a float32, laid out
 *                      in strips (product.h):
 *                        w_hh[((g S + s) P + p) 32 + 2 i + e] = W_hh[g H + 16 s + i][2 p + e],
 *                      0 past H, with S = ceil(H / 16), P = cgru_bf16_strip_pairs_of(H), 3 S P 32
 *                      elements in all. The state is rounded to bfloat16 for the recurrent
 *                      product, whose products are exact and whose sums are float32.
 *   CGRU_WEIGHTS_INT8  int8_t: int8 with a float32 scale per unit, in the strips of
 *                      src_c/strips_int8.h (3 S (cgru_int8_strip_quads_of(H) + 2) 64 bytes);
 *                      the state is quantized to 8 bits per row and step (H at most 65536).
 * Inputs, outputs, W_ih and biases are float32.
 */
cgru_status cgru_layer_forward_quantized(float *y, int ldy, float *h_n, float *saved,
                                         float *scratch, const float *x, const float *h0,
                                         const float *w_ih, const void *w_hh,
                                         cgru_weights format, const float *b_ih,
                                         const float *b_hh, const int64_t *lengths,
                                         const cgru_layer_config *cfg);

/*
 * Backward of one layer and direction, after a training forward with the same saved region.
 * The saved region is consumed (overwritten with gate gradients).
 *   dx      (T, B, I): written when accumulate_dx is 0, added to when 1.
 *   dh0     (B, H): written.
 *   dw_ih (3H, I), dw_hh (3H, H), db_ih, db_hh (3H) or NULL: added to (+=).
 *   dy      (T, B, ldy) gradient of this direction's output (pointer offset by d*H by the caller).
 *   dh_n    (B, H) or NULL for zeros.
 */
cgru_status cgru_layer_backward_f32(float *dx, int accumulate_dx, float *dh0, float *dw_ih,
                                    float *dw_hh, float *db_ih, float *db_hh, const float *dy,
                                    int ldy, const float *dh_n, float *saved, float *scratch,
                                    const float *x, const float *w_ih, const float *w_hh,
                                    const int64_t *lengths, const cgru_layer_config *cfg);
cgru_status cgru_layer_backward_f64(double *dx, int accumulate_dx, double *dh0, double *dw_ih,
                                    double *dw_hh, double *db_ih, double *db_hh, const double *dy,
                                    int ldy, const double *dh_n, double *saved, double *scratch,
                                    const double *x, const double *w_ih, const double *w_hh,
                                    const int64_t *lengths, const cgru_layer_config *cfg);

/* ---- One time step through a stack of unidirectional layers (step.c) ------------------------- */

/*
 * h_out (L, B, H) = the states after one step; h_in (L, B, H) may be the same buffer.
 * n_threads: at most this many threads share the step (see step.c for when they do).
 * x (B, I0); w_ih[l] (3H, I_l) with I_0 = I0 and I_l = H above; w_hh[l] (3H, H);
 * b_ih[l], b_hh[l] (3H) or NULL arrays for no bias.
 */
cgru_status cgru_step_f32(float *h_out, const float *h_in, const float *x, const float *const *w_ih,
                          const float *const *w_hh, const float *const *b_ih,
                          const float *const *b_hh, int L, int B, int I0, int H, int reset_after,
                          int n_threads);
cgru_status cgru_step_f64(double *h_out, const double *h_in, const double *x,
                          const double *const *w_ih, const double *const *w_hh,
                          const double *const *b_ih, const double *const *b_hh, int L, int B,
                          int I0, int H, int reset_after, int n_threads);

/* The same step with every layer's W_hh in strips stored as format says (see
 * cgru_layer_forward_quantized), and W_ih in bfloat16 strips too unless w_ih16 is NULL: then
 * w_ih (float32) is read instead; else w_ih is unused. Strips of W_ih (3H, I_l) are laid out as
 * W_hh's with K = I_l inputs (src_c/product.h). */
cgru_status cgru_step_quantized(float *h_out, const float *h_in, const float *x,
                                const float *const *w_ih, const uint16_t *const *w_ih16,
                                const void *const *w_hh, cgru_weights format,
                                const float *const *b_ih, const float *const *b_hh, int L, int B,
                                int I0, int H, int reset_after, int n_threads);

/* ---- The activations the engine uses, over an array (activations.c; for tests) ------------- */

void cgru_activations_f32(float *sigmoid_out, float *tanh_out, const float *x, long n);
void cgru_activations_f64(double *sigmoid_out, double *tanh_out, const double *x, long n);

/* C (M, N) = A (M, K) W^T with W (N, K), N = 3H, in int8 strips (strips_int8.h), as every
 * recurrent product of an int8 GRU computes it (product.c; for tests). */
cgru_status cgru_int8_product(float *C, const float *A, const int8_t *w, int M, int H, int K);

#endif /* CGRU_H */
