/* Typed body of step.c, included once per dtype (see real_begin.h). */
#include "real_begin.h"

/* What every thread of a step needs: the arguments of cgru_step and its scratch. */
typedef struct {
    REAL *h_out;
    const REAL *x_in, *h_prev_all;  /* copies of x (B, I0) and h_in (L, B, H) */
    const REAL *const *w_ih, *const *w_hh, *const *b_ih, *const *b_hh;
    const void *const *w_hh_q;              /* W_hh in strips instead of w_hh, or NULL */
    const uint16_t *const *w_ih16;          /* W_ih in bfloat16 instead of w_ih, or NULL */
    cgru_weights format;                    /* how w_hh_q's strips are stored */
    REAL *gx, *gh, *rh, *y, *b_hn, *bias;  /* (B, 3H), (B, 3H), (B, H), (B, H), (H), (3H) */
    cgru_barrier *barrier;                  /* between layers, and before reset_after=0's n */
    cgru_product_kernel kernel, kernel_hh;  /* product.h: x W_ih^T, h W_hh^T */
    int L, B, I0, H, reset_after, n_slices;
} FN(step_work);

/* The operand of layer l's W_hh rows of units [j0, j1) from gate g on, in the dtype or in
 * strips: a product of n (j1 - j0) columns reads gates g .. g + n - 1 (gate runs,
 * product_impl.h). */
static inline FN(cgru_operand) FN(rows_of)(const FN(step_work) *w, int l, int g, int j0, int j1)
{
    const int H = w->H;
    if (w->w_hh_q) return FN(strips_operand)(w->w_hh_q[l], w->format, H, H, g, j0, j1);
    return (FN(cgru_operand)){w->w_hh[l] + ((long)g * H + j0) * H, H, 1, 0, (long)H * H, j1 - j0};
}

/* The layers of one step, as thread `me` of `team` sees them: its slices of hidden units, and a
 * barrier between layers when there is a team to wait for. */
static void FN(step_layers)(const FN(step_work) *w, int me, int team)
{
    cgru_member m = cgru_member_of(me, team);  /* may become a team of one: see barrier.h */
    REAL *h_out = w->h_out;
    const REAL *x_in = w->x_in, *h_prev_all = w->h_prev_all;
    const REAL *const *w_ih = w->w_ih;
    const REAL *const *b_ih = w->b_ih, *const *b_hh = w->b_hh;
    REAL *gx = w->gx, *gh = w->gh, *rh = w->rh, *y = w->y, *b_hn = w->b_hn, *bias = w->bias;
    const int L = w->L, B = w->B, I0 = w->I0, H = w->H, G = 3 * H;
    const int reset_after = w->reset_after, n_slices = w->n_slices;
    const cgru_product_kernel kernel = w->kernel, kernel_hh = w->kernel_hh;
    for (int l = 0; l < L; l++) {
        const REAL *in = l == 0 ? x_in : h_out + (long)(l - 1) * B * H;  /* (B, I_l) */
        const int I = l == 0 ? I0 : H;
        const REAL *h_prev = h_prev_all + (long)l * B * H;            /* (B, H) */
        REAL *h_new = h_out + (long)l * B * H;                        /* (B, H) */
        const REAL *bi = b_ih ? b_ih[l] : 0, *bh = b_hh ? b_hh[l] : 0;
        /* each thread its hidden units [j0, j1): their rows of r, z and n in both products */
        for_each_own_slice(j0, j1, m.me, m.team, n_slices, H, ALIGN) {
            const int hs = j1 - j0;
            REAL *gh_own = gh + 3L * B * j0;  /* (B, 3hs) */
            for (int j = j0; j < j1; j++) b_hn[j] = bh ? bh[2 * H + j] : 0;
            /* 1. gx[:, gate g, own units] = in W_ih[gate g, own units]^T; the gate
             *    kernels add bias: b_ih plus the recurrent bias of r and z (and of n
             *    when reset_after=0), which adds to the same pre-activation */
            for (int g = 0; g < 3; g++) {
                const int row0 = g * H + j0;
                const int fold = g < 2 || !reset_after;
                for (int j = 0; j < hs; j++)
                    bias[row0 + j] = bi ? bi[row0 + j] + (fold ? bh[row0 + j] : 0) : 0;
            }
            if (w->w_ih16 && hs == H) {
                /* strips of all three gates in one product (gate runs of H columns lie in gx
                 * as the gates do), so that its register tiles take up to 12 strips */
                FN(cgru_product)(kernel, gx, G, in, I,
                                 FN(strips_operand)(w->w_ih16[l], CGRU_WEIGHTS_BF16, H, I, 0, 0, H),
                                 B, G, I, 0);
            } else {
                for (int g = 0; g < 3; g++) {
                    const int row0 = g * H + j0;
                    const FN(cgru_operand) w_gate = w->w_ih16  /* (hs, I) */
                        ? FN(strips_operand)(w->w_ih16[l], CGRU_WEIGHTS_BF16, H, I, g, j0, j1)
                        : (FN(cgru_operand)){w_ih[l] + (long)row0 * I, I, 1, 0};
                    FN(cgru_product)(kernel, gx + row0, G, in, I, w_gate, B, hs, I, 0);
                }
            }
            /* 2, 3. recurrent products into gh_own [r|z|n], and the postgemm into h_new */
            const int gates_now = reset_after ? 3 : 2;
            FN(cgru_product)(kernel_hh, gh_own, 3 * hs, h_prev, H, FN(rows_of)(w, l, 0, j0, j1),
                             B, gates_now * hs, H, 0);  /* (hs, H) per gate */
            if (reset_after)
                FN(gates_forward_reset_after)(h_new, y, H, gx, bias, 0, gh_own, h_prev, b_hn, 0, 0, 0,
                                              B, H, j0, j1);
            else
                FN(gates_forward_rz)(gx, bias, gh_own, rh, h_prev, 0, B, H, j0, j1);
        }
        if (!reset_after) {
            if (!cgru_barrier_pass(w->barrier, &m)) return;
            /* every thread's r * h_prev is ready: n's product reads all of it */
            for_each_own_slice(j0, j1, m.me, m.team, n_slices, H, ALIGN) {
                const int hs = j1 - j0;
                REAL *gh_own = gh + 3L * B * j0;
                const FN(cgru_operand) w_n = FN(rows_of)(w, l, 2, j0, j1);  /* (hs, H) */
                FN(cgru_product)(kernel_hh, gh_own + 2 * hs, 3 * hs, rh, H, w_n, B, hs, H, 0);
                FN(gates_forward_n)(h_new, y, H, gx, bias, gh_own, h_prev, 0, 0, 0, B, H, j0, j1);
            }
        }
        /* the next layer reads all of this layer's new state (after the last, the region's
         * end waits for every thread) */
        if (l + 1 < L && !cgru_barrier_pass(w->barrier, &m)) return;
    }
}

/* cgru_step_f32/_f64, and cgru_step_quantized with w_hh_q (stored as format says) instead of
 * w_hh (and w_ih16, when not NULL, instead of w_ih) (see cgru.h) */
static cgru_status FN(step)(REAL *h_out, const REAL *h_in, const REAL *x, const REAL *const *w_ih,
                            const uint16_t *const *w_ih16, const REAL *const *w_hh,
                            const void *const *w_hh_q, cgru_weights format,
                            const REAL *const *b_ih, const REAL *const *b_hh, int L, int B,
                            int I0, int H, int reset_after, int n_threads)
{
    if (!cgru_blas_ready()) return CGRU_ERR_NO_BLAS;
    if (L <= 0 || B <= 0 || I0 <= 0 || H <= 0) return CGRU_ERR_BAD_DIMS;
    if (3L * H > 2147483647L) return CGRU_ERR_TOO_LARGE;
    const int G = 3 * H;
    /* scratch: gx (B, 3H), gh (B, 3H), rh (B, H), y (B, H), b_hn (H), h_prev_all (L, B, H),
     * x_in (B, I0), bias (3H) */
    size_t need = (size_t)B * 8 * H + H + (size_t)L * B * H + (size_t)B * I0 + (size_t)G;
    REAL on_stack[STEP_STACK_ELEMS];
    REAL *scratch = need <= STEP_STACK_ELEMS ? on_stack : (REAL *)malloc(sizeof(REAL) * need);
    if (!scratch) return CGRU_ERR_NO_MEMORY;
    REAL *gx = scratch, *gh = gx + (size_t)B * G, *rh = gh + (size_t)B * G;
    REAL *y = rh + (size_t)B * H, *b_hn = y + (size_t)B * H, *h_prev_all = b_hn + H;
    REAL *x_in = h_prev_all + (size_t)L * B * H, *bias = x_in + (size_t)B * I0;
    /* the states and inputs read come from copies, so that h_out may alias h_in (out=h) or x
     * (an output fed back as the next input) and each thread may write its units of h_out as
     * soon as they are ready */
    memcpy(h_prev_all, h_in, sizeof(REAL) * L * B * H);
    memcpy(x_in, x, sizeof(REAL) * B * I0);
    /* threads share the step only on the hand-written products (BLAS must not be called from
     * several threads at once here: step() leaves its thread setting alone) */
    const long work = (long)B * G * (I0 + (long)(L - 1) * H + (long)L * H);
    const cgru_product_kernel kernel =
        cgru_input_product_choose(B, H, sizeof(REAL), w_ih16 != 0);
    const cgru_product_kernel kernel_hh = cgru_product_choose(B, H, sizeof(REAL), 0, format);
    const int shared = kernel != CGRU_PRODUCT_BLAS && kernel_hh != CGRU_PRODUCT_BLAS
                       && work >= STEP_SHARED_WORK && n_threads > 1;
    const cgru_plan plan = shared ? cgru_plan_begin(n_threads) : cgru_plan_serial();  /* threads.h */
    const int n_slices = cgru_slice_count(plan.parts, H, ALIGN);

    cgru_barrier barrier;
    cgru_barrier_init(&barrier);
    const FN(step_work) work_of_step = {h_out, x_in, h_prev_all, w_ih, w_hh, b_ih, b_hh, w_hh_q,
                                        w_ih16, format, gx, gh, rh, y, b_hn, bias, &barrier, kernel,
                                        kernel_hh, L, B, I0, H, reset_after, n_slices};
    if (cgru_plan_threads(plan, n_slices) == 1) {
        FN(step_layers)(&work_of_step, 0, 1);  /* no parallel region to open or join */
    } else {
#ifdef _OPENMP
#pragma omp parallel num_threads(cgru_plan_threads(plan, n_slices))
        FN(step_layers)(&work_of_step, omp_get_thread_num(), omp_get_num_threads());
#else
        FN(step_layers)(&work_of_step, 0, 1);
#endif
    }
    cgru_plan_end(plan, shared && atomic_load(&barrier.stalled));
    if (scratch != on_stack) free(scratch);
    return CGRU_OK;
}

cgru_status FN(cgru_step)(REAL *h_out, const REAL *h_in, const REAL *x, const REAL *const *w_ih,
                          const REAL *const *w_hh, const REAL *const *b_ih,
                          const REAL *const *b_hh, int L, int B, int I0, int H, int reset_after,
                          int n_threads)
{
    return FN(step)(h_out, h_in, x, w_ih, 0, w_hh, 0, CGRU_WEIGHTS_DTYPE, b_ih, b_hh, L, B, I0,
                    H, reset_after, n_threads);
}

#if !CGRU_DOUBLE
cgru_status cgru_step_quantized(float *h_out, const float *h_in, const float *x,
                                const float *const *w_ih, const uint16_t *const *w_ih16,
                                const void *const *w_hh, cgru_weights format,
                                const float *const *b_ih, const float *const *b_hh, int L, int B,
                                int I0, int H, int reset_after, int n_threads)
{
    if (format != CGRU_WEIGHTS_BF16 && format != CGRU_WEIGHTS_INT8) return CGRU_ERR_BAD_DIMS;
    if (format == CGRU_WEIGHTS_INT8 && H > CGRU_INT8_MAX_K) return CGRU_ERR_TOO_LARGE;
    return step_f32(h_out, h_in, x, w_ih, w_ih16, 0, w_hh, format, b_ih, b_hh, L, B, I0, H,
                    reset_after, n_threads);
}
#endif

#include "real_end.h"
