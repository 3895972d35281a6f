/* Typed body of layer.c, included once per dtype (see real_begin.h). */
#include "real_begin.h"

/* The state slot read (prev) and written (next) at time t, see the top of layer.c. */
static inline REAL *FN(state_slot)(REAL *states, const cgru_layer_config *c, int s, int t, int next)
{
    long BH = (long)c->batch * c->hidden_size;
    if (!c->training) return states + ((s + next) % 2) * BH;
    return states + (long)(t + (c->reverse ? !next : next)) * BH;
}

/* w_packed (3H, H): for each slice [j0, j1) the rows r[j0:j1], z[j0:j1], n[j0:j1] of w_hh
 * (3H, H), from row 3*j0 on, so each thread's product is one call on contiguous rows. The
 * unpacked kernels' layout; the panel path packs per slice inside the time loop's region. */
static void FN(pack_recurrent_weights)(REAL *w_packed, const REAL *w_hh, int H, int n_slices,
                                       int n_threads)
{
#ifdef _OPENMP
#pragma omp parallel for num_threads(n_threads) schedule(static, 1)
#endif
    for (int k = 0; k < n_slices; k++) {
        int j0 = cgru_block_start(k, H, n_slices, ALIGN), j1 = cgru_block_start(k + 1, H, n_slices, ALIGN);
        int hs = j1 - j0;  /* may be 0 */
        for (int g = 0; g < 3; g++)
            memcpy(w_packed + ((long)3 * j0 + (long)g * hs) * H, w_hh + ((long)g * H + j0) * H,
                   sizeof(REAL) * hs * H);
    }
}

/* Forward panels of one slice [j0, j1) (see slice_packed_elems): the operand of h W_hh^T for
 * the slice's rows of r, z and n, as columns [0, hs), [hs, 2hs), [2hs, 3hs); with reset_after=0
 * the n columns are a second operand after the first (r * h_prev multiplies them). */
static void FN(pack_forward_panels)(REAL *packed, const REAL *w_hh, int H, int j0, int j1,
                                    int reset_after)
{
    const int hs = j1 - j0, panel = CGRU_PANEL_WIDTH(sizeof(REAL));
    const int n_first = reset_after ? 3 : 2;  /* gates in the first operand */
    for (int g = 0; g < n_first; g++)
        FN(panels_pack)(packed, H, g * hs, w_hh + ((long)g * H + j0) * H, H, hs, 1);
    FN(panels_clear_tail)(packed, H, n_first * hs);
    if (!reset_after) {
        REAL *second = packed + cgru_panels_size(H, 2 * hs, panel);
        FN(panels_pack)(second, H, 0, w_hh + (2L * H + j0) * H, H, hs, 1);
        FN(panels_clear_tail)(second, H, hs);
    }
}

/* Backward panels of one slice: W_hh's columns [j0, j1) as a (3H, hs) operand; with
 * reset_after=0 rows [0, 2H) and [2H, 3H) (W_hn) as two operands. */
static void FN(pack_backward_panels)(REAL *packed, const REAL *w_hh, int H, int j0, int j1,
                                     int reset_after)
{
    const int hs = j1 - j0, panel = CGRU_PANEL_WIDTH(sizeof(REAL));
    const int K = reset_after ? 3 * H : 2 * H;
    FN(panels_pack)(packed, K, 0, w_hh + j0, H, hs, 0);
    FN(panels_clear_tail)(packed, K, hs);
    if (!reset_after) {
        REAL *second = packed + cgru_panels_size(K, hs, panel);
        FN(panels_pack)(second, H, 0, w_hh + 2L * H * H + j0, H, hs, 0);
        FN(panels_clear_tail)(second, H, hs);
    }
}

/* Thread `me` of `team` packs the panels of its own slices, with the time loop's slice-to-thread
 * map, so that no barrier is needed before it uses them. at: see slice_packed_offsets. */
static void FN(pack_own_slices)(REAL *w_packed, const size_t *at, const REAL *w_hh, int H,
                                int n_slices, int reset_after, int backward, int me, int team)
{
    for_each_own_slice(j0, j1, me, team, n_slices, H, ALIGN) {
        REAL *own = w_packed + at[own_slice_index];
        if (backward) FN(pack_backward_panels)(own, w_hh, H, j0, j1, reset_after);
        else FN(pack_forward_panels)(own, w_hh, H, j0, j1, reset_after);
    }
}

/*
 * The operands of one slice [j0, j1), slice k, of the per-step products (product.h):
 *   forward:  h_prev W_hh[r, z (, n) rows of the slice]^T, and with reset_after=0 a second one,
 *             (r * h_prev) W_hn[rows of the slice]^T;
 *   backward: dgates W_hh[:, j0:j1] over the r, z (, n) blocks, and with reset_after=0 a
 *             second one, da_n W_hn[:, j0:j1].
 * Packed: per slice, see pack_forward_panels and pack_backward_panels. Unpacked: the forward
 * reads pack_recurrent_weights's rows, the backward W_hh's columns as they lie. bfloat16 strips
 * are not packed per slice: strips_operand (product_impl.h) finds a slice's units in each gate.
 */
static inline FN(cgru_operand) FN(slice_operand)(cgru_product_kernel kernel,
                                                 const REAL *w_packed, const size_t *packed_at,
                                                 const REAL *w_hh, int H, int k, int j0, int j1,
                                                 int reset_after, int backward, int second)
{
    const int hs = j1 - j0, panel = CGRU_PANEL_WIDTH(sizeof(REAL));
    if (kernel == CGRU_PRODUCT_PANELS) {
        const REAL *own = w_packed + packed_at[k];
        size_t first_size = backward ? cgru_panels_size(2 * H, hs, panel)
                                     : cgru_panels_size(H, 2 * hs, panel);
        return (FN(cgru_operand)){second ? own + first_size : own, 0, 1, 0};
    }
    if (backward) return (FN(cgru_operand)){w_hh + (second ? 2L * H * H : 0) + j0, H, 0, 0};
    return (FN(cgru_operand)){w_packed + 3L * j0 * H + (second ? 2L * hs * H : 0), H, 1, 0};
}

/* cgru_layer_forward_f32/_f64 (W_hh in w_hh, format CGRU_WEIGHTS_DTYPE), and
 * cgru_layer_forward_quantized (W_hh in strips w_hh_q stored as format says, w_hh NULL; see
 * cgru.h) */
static cgru_status FN(layer_forward)(REAL *y, int ldy, REAL *h_n, REAL *saved, REAL *scratch,
                                     const REAL *x, const REAL *h0, const REAL *w_ih,
                                     const REAL *w_hh, const void *w_hh_q, cgru_weights format,
                                     const REAL *b_ih, const REAL *b_hh,
                                     const int64_t *lengths, const cgru_layer_config *cfg)
{
    if (!cgru_blas_ready()) return CGRU_ERR_NO_BLAS;
    cgru_status st = check_config(cfg);
    if (st != CGRU_OK) return st;
    if (format != CGRU_WEIGHTS_DTYPE && cfg->training) return CGRU_ERR_INFERENCE_ONLY;
    saved = (REAL *)aligned_start(saved);
    scratch = (REAL *)aligned_start(scratch);
    const int T = cfg->time_steps, B = cfg->batch, I = cfg->input_size, H = cfg->hidden_size, G = 3 * H;
    const int TB = T * B;
    int gemm_stalled = 0;
    cgru_plan plan = cgru_plan_begin(cfg->n_threads);  /* threads.h */
    plan.stalled = &gemm_stalled;
    const int training = cfg->training, reset_after = cfg->reset_after;
    layer_layout L = layout_of(cfg);
    REAL *states = saved + L.states;  /* (slots, B, H) */
    REAL *gates = saved + L.gates;    /* (T, B, 3H) */
    REAL *extra = saved + L.extra;    /* (T, B, H) training; (B, H) inference */
    REAL *w_packed = scratch + L.w_packed, *gh = scratch + L.gh, *bias = scratch + L.bias;

    /* 1. gates = x W_ih^T: one GEMM (T*B, I) x (I, 3H) for all steps. The biases join in the
     *    gate kernels: bias (3H) = b_ih plus the recurrent bias of r and z (and of n when
     *    reset_after=0), which adds to the same pre-activation; with reset_after=1 b_hn stays
     *    inside r * (W_hn h + b_hn). */
    for (int g = 0; g < G; g++)
        bias[g] = b_ih ? b_ih[g] + ((g < 2 * H || !reset_after) ? b_hh[g] : 0) : 0;
    FN(cgru_gemm_split)(plan, 0, 1, TB, G, I, 1, x, I, w_ih, I, 0, gates, G);

    /* 2. pack W_hh by slices: here for the unpacked kernels, inside the loop's region (each
     *    thread its own slices) for the panel product */
    const int n_slices = cgru_slice_count(plan.parts, H, ALIGN);
    const cgru_product_kernel kernel = cgru_product_choose(B, H, sizeof(REAL), 1, format);
    const int panels = kernel == CGRU_PRODUCT_PANELS;
    size_t packed_at[n_slices + 1];  /* where each slice's panels start */
    slice_packed_offsets(packed_at, H, n_slices, reset_after, 0, ALIGN, CGRU_PANEL_WIDTH(sizeof(REAL)));
    if (!panels && w_hh)  /* strips need no packing */
        FN(pack_recurrent_weights)(w_packed, w_hh, H, n_slices, cgru_plan_threads(plan, n_slices));
    REAL *b_hn = scratch + L.hn_bias;  /* (H): b_hn, or zeros for a GRU without bias */
    for (int j = 0; j < H; j++) b_hn[j] = b_hh ? b_hh[2 * H + j] : 0;

    /* 3. h0 into the first slot */
    REAL *first = FN(state_slot)(states, cfg, 0, cfg->reverse ? T - 1 : 0, 0);
    if (h0) memcpy(first, h0, sizeof(REAL) * B * H);
    else memset(first, 0, sizeof(REAL) * B * H);

    /* 4. the time loop */
    cgru_barrier step_barrier;
    cgru_barrier_init(&step_barrier);
#ifdef _OPENMP
#pragma omp parallel num_threads(cgru_plan_threads(plan, n_slices))
#endif
    {
#ifdef _OPENMP
        const int me = omp_get_thread_num(), team = omp_get_num_threads();
#else
        const int me = 0, team = 1;
#endif
        if (panels) FN(pack_own_slices)(w_packed, packed_at, w_hh, H, n_slices, reset_after, 0, me, team);
        cgru_member m = cgru_member_of(me, team);  /* may become a team of one: see barrier.h */
        for (int s = 0; s < T; s++) {
            const int t = cfg->reverse ? T - 1 - s : s;
            const REAL *h_prev = FN(state_slot)(states, cfg, s, t, 0);  /* (B, H) */
            REAL *h_new = FN(state_slot)(states, cfg, s, t, 1);         /* (B, H) */
            REAL *gx = gates + (long)t * B * G;                         /* (B, 3H) */
            REAL *y_t = y + (long)t * B * ldy;                          /* (B, ldy) */
            REAL *rh_or_hn = training ? extra + (long)t * B * H : extra;  /* (B, H) */
            for_each_own_slice(j0, j1, m.me, m.team, n_slices, H, ALIGN) {
                const int hs = j1 - j0;
                REAL *gh_own = gh + 3L * B * j0;                  /* (B, 3hs) */
                const int gates_now = reset_after ? 3 : 2;        /* r, z (and n) now */
                FN(cgru_product)(kernel, gh_own, 3 * hs, h_prev, H,
                                 w_hh_q ? FN(strips_operand)(w_hh_q, format, H, H, 0, j0, j1)
                                        : FN(slice_operand)(kernel, w_packed, packed_at, w_hh,
                                                            H, own_slice_index, j0, j1,
                                                            reset_after, 0, 0),
                                 B, gates_now * hs, H, 0);
                if (reset_after)
                    FN(gates_forward_reset_after)(h_new, y_t, ldy, gx, bias, rh_or_hn, gh_own, h_prev,
                                                  b_hn, lengths, t, training, B, H, j0, j1);
                else
                    FN(gates_forward_rz)(gx, bias, gh_own, rh_or_hn, h_prev, training, B, H, j0, j1);
            }
            if (!reset_after) {
                if (!cgru_barrier_pass(&step_barrier, &m)) break;
                /* every thread's r * h_prev is ready: n's GEMM reads all of it */
                for_each_own_slice(j0, j1, m.me, m.team, n_slices, H, ALIGN) {
                    const int hs = j1 - j0;
                    REAL *gh_own = gh + 3L * B * j0;
                    FN(cgru_product)(kernel, gh_own + 2 * hs, 3 * hs, rh_or_hn, H,
                                     w_hh_q ? FN(strips_operand)(w_hh_q, format, H, H, 2, j0, j1)
                                           : FN(slice_operand)(kernel, w_packed, packed_at, w_hh,
                                                               H, own_slice_index, j0, j1,
                                                               reset_after, 0, 1),
                                     B, hs, H, 0);
                    FN(gates_forward_n)(h_new, y_t, ldy, gx, bias, gh_own, h_prev, lengths, t, training,
                                        B, H, j0, j1);
                }
            }
            if (!cgru_barrier_pass(&step_barrier, &m)) break;
        }
    }
    cgru_plan_end(plan, gemm_stalled || atomic_load(&step_barrier.stalled));

    const REAL *last = FN(state_slot)(states, cfg, T - 1, cfg->reverse ? 0 : T - 1, 1);
    memcpy(h_n, last, sizeof(REAL) * B * H);
    return CGRU_OK;
}

cgru_status FN(cgru_layer_forward)(REAL *y, int ldy, REAL *h_n, REAL *saved, REAL *scratch,
                                   const REAL *x, const REAL *h0, const REAL *w_ih,
                                   const REAL *w_hh, const REAL *b_ih, const REAL *b_hh,
                                   const int64_t *lengths, const cgru_layer_config *cfg)
{
    return FN(layer_forward)(y, ldy, h_n, saved, scratch, x, h0, w_ih,
                             w_hh, 0, CGRU_WEIGHTS_DTYPE, b_ih, b_hh, lengths, cfg);
}

#if !CGRU_DOUBLE
cgru_status cgru_layer_forward_quantized(float *y, int ldy, float *h_n, float *saved,
                                         float *scratch, const float *x, const float *h0,
                                         const float *w_ih, const void *w_hh,
                                         cgru_weights format, const float *b_ih,
                                         const float *b_hh, const int64_t *lengths,
                                         const cgru_layer_config *cfg)
{
    if (format != CGRU_WEIGHTS_BF16 && format != CGRU_WEIGHTS_INT8) return CGRU_ERR_BAD_DIMS;
    if (format == CGRU_WEIGHTS_INT8 && cfg->hidden_size > CGRU_INT8_MAX_K) return CGRU_ERR_TOO_LARGE;
    return layer_forward_f32(y, ldy, h_n, saved, scratch, x, h0, w_ih,
                             0, w_hh, format, b_ih, b_hh, lengths, cfg);
}
#endif

cgru_status FN(cgru_layer_backward)(REAL *dx, int accumulate_dx, REAL *dh0, REAL *dw_ih,
                                    REAL *dw_hh, REAL *db_ih, REAL *db_hh, const REAL *dy,
                                    int ldy, const REAL *dh_n, REAL *saved, REAL *scratch,
                                    const REAL *x, const REAL *w_ih, const REAL *w_hh,
                                    const int64_t *lengths, const cgru_layer_config *cfg)
{
    if (!cgru_blas_ready()) return CGRU_ERR_NO_BLAS;
    cgru_status st = check_config(cfg);
    if (st != CGRU_OK) return st;
    saved = (REAL *)aligned_start(saved);
    scratch = (REAL *)aligned_start(scratch);
    if (!cfg->training) return CGRU_ERR_BAD_DIMS;
    const int T = cfg->time_steps, B = cfg->batch, I = cfg->input_size, H = cfg->hidden_size, G = 3 * H;
    const int TB = T * B;
    int gemm_stalled = 0;
    cgru_plan plan = cgru_plan_begin(cfg->n_threads);  /* threads.h */
    plan.stalled = &gemm_stalled;
    const int reset_after = cfg->reset_after;
    layer_layout L = layout_of(cfg);
    REAL *states = saved + L.states;  /* (T+1, B, H) */
    REAL *gates = saved + L.gates;    /* (T, B, 3H): [r|z|n] in, gate gradients out */
    REAL *extra = saved + L.extra;    /* (T, B, H): hn or r*h_prev */
    REAL *dh_a = scratch + L.dh_a, *dh_b = scratch + L.dh_b, *drh = scratch + L.drh;
    REAL *w_packed = scratch + L.w_packed;  /* panel path: see pack_backward_panels */
    const cgru_product_kernel kernel = cgru_product_choose(B, H, sizeof(REAL), 1, 0);
    const int panels = kernel == CGRU_PRODUCT_PANELS;

    if (dh_n) memcpy(dh_a, dh_n, sizeof(REAL) * B * H);
    else memset(dh_a, 0, sizeof(REAL) * B * H);
    const int n_slices = cgru_slice_count(plan.parts, H, ALIGN);
    size_t packed_at[n_slices + 1];  /* where each slice's panels start */
    slice_packed_offsets(packed_at, H, n_slices, reset_after, 1, ALIGN, CGRU_PANEL_WIDTH(sizeof(REAL)));

    /* 1. the time loop, against the forward's direction */
    cgru_barrier step_barrier;
    cgru_barrier_init(&step_barrier);
#ifdef _OPENMP
#pragma omp parallel num_threads(cgru_plan_threads(plan, n_slices))
#endif
    {
#ifdef _OPENMP
        const int me = omp_get_thread_num(), team = omp_get_num_threads();
#else
        const int me = 0, team = 1;
#endif
        if (panels) FN(pack_own_slices)(w_packed, packed_at, w_hh, H, n_slices, reset_after, 1, me, team);
        cgru_member m = cgru_member_of(me, team);  /* may become a team of one: see barrier.h */
        int on = 1;                                 /* 0 once the team goes on without this thread */
        REAL *dh_next = dh_a, *dh_prev = dh_b;  /* (B, H) each, swapped every step */
        for (int s = 0; s < T && on; s++) {
            const int t = cfg->reverse ? s : T - 1 - s;
            const REAL *h_prev = states + (long)(t + cfg->reverse) * B * H;  /* (B, H) */
            REAL *g_t = gates + (long)t * B * G;                            /* (B, 3H) */
            REAL *e_t = extra + (long)t * B * H;                            /* (B, H) */
            const REAL *dy_t = dy ? dy + (long)t * B * ldy : 0;             /* (B, ldy) */
            for_each_own_slice(j0, j1, m.me, m.team, n_slices, H, ALIGN) {
                if (reset_after)
                    FN(gates_backward_reset_after)(dh_prev, g_t, e_t, dh_next, dy_t, ldy, h_prev,
                                                   lengths, t, B, H, j0, j1);
                else
                    FN(gates_backward_zn)(dh_prev, g_t, dh_next, dy_t, ldy, h_prev, lengths, t, B,
                                          H, j0, j1);
            }
            if (!(on = cgru_barrier_pass(&step_barrier, &m))) break;
            if (!reset_after) {
                /* drh (B, H) = da_n (B, H) W_hn (H, H), then da_r; each thread its own columns */
                for_each_own_slice(j0, j1, m.me, m.team, n_slices, H, ALIGN) {
                    FN(cgru_product)(kernel, drh + j0, H, g_t + 2 * H, G,
                                     FN(slice_operand)(kernel, w_packed, packed_at, w_hh, H,
                                                       own_slice_index, j0, j1, reset_after, 1, 1),
                                     B, j1 - j0, H, 0);
                    FN(gates_backward_r)(dh_prev, g_t, drh, h_prev, lengths, t, B, H, j0, j1);
                }
                if (!(on = cgru_barrier_pass(&step_barrier, &m))) break;
            }
            /* dh_prev (B, own columns) += [da_r | da_z | dhn] (B, 3H) W_hh (3H, own columns);
             * reset_after=0 stops at 2H, its n part went through drh above */
            const int K = reset_after ? G : 2 * H;
            for_each_own_slice(j0, j1, m.me, m.team, n_slices, H, ALIGN)
                FN(cgru_product)(kernel, dh_prev + j0, H, g_t, G,
                                 FN(slice_operand)(kernel, w_packed, packed_at, w_hh, H,
                                                   own_slice_index, j0, j1, reset_after, 1, 0),
                                 B, j1 - j0, K, 1);
            if (!reset_after && !(on = cgru_barrier_pass(&step_barrier, &m))) break;
            /* reset_after=1 needs no second barrier: the next step's postgemm touches only this
             * thread's columns of dh and the next step's rows of gates */
            REAL *swap = dh_next;
            dh_next = dh_prev;
            dh_prev = swap;
        }
        if (on && cgru_barrier_pass(&step_barrier, &m) && m.me == 0)
            memcpy(dh0, dh_next, sizeof(REAL) * B * H);
    }

    /* 2. weight, bias and input gradients: large GEMMs over all T*B rows */
    const REAL *h_prev_all = states + (long)cfg->reverse * B * H;  /* (T*B, H) */
    const REAL beta_dx = accumulate_dx ? 1 : 0;
    if (reset_after) {
        /* gates hold [da_r | da_z | dhn], extra holds da_n */
        /* dW_hh (3H, H) += gates^T (3H, TB) h_prev (TB, H) */
        FN(cgru_gemm_split)(plan, 1, 0, G, H, TB, 1, gates, G, h_prev_all, H, 1, dw_hh, H);
        /* dW_ih[r, z] (2H, I) += gates[:, :2H]^T x;  dW_ih[n] (H, I) += da_n^T x */
        FN(cgru_gemm_split)(plan, 1, 0, 2 * H, I, TB, 1, gates, G, x, I, 1, dw_ih, I);
        FN(cgru_gemm_split)(plan, 1, 0, H, I, TB, 1, extra, H, x, I, 1, dw_ih + 2L * H * I, I);
        /* dx (TB, I) = gates[:, :2H] W_ih[r, z] + da_n W_ih[n] */
        FN(cgru_gemm_split)(plan, 0, 0, TB, I, 2 * H, 1, gates, G, w_ih, I, beta_dx, dx, I);
        FN(cgru_gemm_split)(plan, 0, 0, TB, I, H, 1, extra, H, w_ih + 2L * H * I, I, 1, dx, I);
        if (db_ih) {
            FN(cgru_colsum_add)(plan, db_hh, gates, TB, G, G);
            FN(cgru_colsum_add)(plan, db_ih, gates, TB, 2 * H, G);
            FN(cgru_colsum_add)(plan, db_ih + 2 * H, extra, TB, H, H);
        }
    } else {
        /* gates hold [da_r | da_z | da_n], extra holds r * h_prev */
        FN(cgru_gemm_split)(plan, 1, 0, G, I, TB, 1, gates, G, x, I, 1, dw_ih, I);
        FN(cgru_gemm_split)(plan, 0, 0, TB, I, G, 1, gates, G, w_ih, I, beta_dx, dx, I);
        /* dW_hh[r, z] += gates[:, :2H]^T h_prev;  dW_hh[n] += da_n^T (r * h_prev) */
        FN(cgru_gemm_split)(plan, 1, 0, 2 * H, H, TB, 1, gates, G, h_prev_all, H, 1, dw_hh, H);
        FN(cgru_gemm_split)(plan, 1, 0, H, H, TB, 1, gates + 2 * H, G, extra, H, 1,
                            dw_hh + 2L * H * H, H);
        if (db_ih) {
            FN(cgru_colsum_add)(plan, db_ih, gates, TB, G, G);
            FN(cgru_colsum_add)(plan, db_hh, gates, TB, G, G);
        }
    }
    cgru_plan_end(plan, gemm_stalled || atomic_load(&step_barrier.stalled));
    return CGRU_OK;
}

#include "real_end.h"
