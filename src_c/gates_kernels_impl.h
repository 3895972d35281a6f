/* Typed kernels of gates.h, compiled once per dtype in gates.c (see real_begin.h). */
#include "real_begin.h"

#if CGRU_DOUBLE
#define SIGMOID cgru_sigmoid
#define TANH cgru_tanh
#else
#define SIGMOID cgru_sigmoidf
#define TANH cgru_tanhf
#endif

/* ---- forward --------------------------------------------------------------------------------- */

/*
 * reset_after=1, the whole step after the one recurrent GEMM, with gx + bias the input part:
 *   r = sigmoid(gx_r + bias_r + gh_r)      z = sigmoid(gx_z + bias_z + gh_z)
 *   hn = gh_n + b_hn                       n = tanh(gx_n + bias_n + r * hn)
 *   h_new = (1 - z) n + z h_prev = n + z (h_prev - n)
 * h_new (B, H); y (B, ldy); gx (B, 3H); bias (3H) and b_hn (H), zeros without bias; gh (B, 3hs);
 * h_prev (B, H).
 * keep: write [r|z|n] over gx and hn into hn_keep (B, H), for backward.
 */
CGRU_SHARED_KERNEL void FN(gates_forward_reset_after)(
    REAL *h_new, REAL *y, int ldy, REAL *gx, const REAL *bias, REAL *hn_keep, const REAL *gh,
    const REAL *h_prev, const REAL *b_hn, const int64_t *lengths, int t, int keep, int B, int H,
    int j0, int j1)
{
    int hs = j1 - j0;
    for (int b = 0; b < B; b++) {
        REAL *restrict hb = h_new + (long)b * H;
        const REAL *restrict hp = h_prev + (long)b * H;
        REAL *restrict yb = y + (long)b * ldy;
        if (!cgru_step_active(lengths, b, t)) {
            for (int j = j0; j < j1; j++) {
                hb[j] = hp[j];
                yb[j] = 0;
            }
            if (keep) for (int j = j0; j < j1; j++) hn_keep[(long)b * H + j] = 0;
            continue;
        }
        REAL *restrict xr = gx + (long)b * 3 * H, *restrict xz = xr + H, *restrict xn = xz + H;
        const REAL *restrict br = bias, *restrict bz = bias + H, *restrict bn = bias + 2 * H;
        const REAL *restrict hr = gh + (long)b * 3 * hs - j0, *restrict hz = hr + hs,
                             *restrict hnn = hz + hs;
        if (keep) {
            REAL *restrict keep_hn = hn_keep + (long)b * H;
#pragma omp simd
            for (int j = j0; j < j1; j++) {
                REAL r = SIGMOID(xr[j] + br[j] + hr[j]);
                REAL z = SIGMOID(xz[j] + bz[j] + hz[j]);
                REAL hn = hnn[j] + b_hn[j];
                REAL n = TANH(xn[j] + bn[j] + r * hn);
                REAL h = n + z * (hp[j] - n);
                hb[j] = h;
                yb[j] = h;
                xr[j] = r;
                xz[j] = z;
                xn[j] = n;
                keep_hn[j] = hn;
            }
        } else {
#pragma omp simd
            for (int j = j0; j < j1; j++) {
                REAL r = SIGMOID(xr[j] + br[j] + hr[j]);
                REAL z = SIGMOID(xz[j] + bz[j] + hz[j]);
                REAL n = TANH(xn[j] + bn[j] + r * (hnn[j] + b_hn[j]));
                REAL h = n + z * (hp[j] - n);
                hb[j] = h;
                yb[j] = h;
            }
        }
    }
}

/*
 * reset_after=0, first half of the step, after the GEMM for r and z:
 *   r = sigmoid(gx_r + bias_r + gh_r), z = sigmoid(gx_z + bias_z + gh_z), rh = r * h_prev
 * r and z overwrite their pre-activations in gh (and in gx when keep); rh (B, H) feeds the
 * second GEMM, rh W_hn^T.
 */
CGRU_SHARED_KERNEL void FN(gates_forward_rz)(
    REAL *gx, const REAL *bias, REAL *gh, REAL *rh, const REAL *h_prev, int keep, int B, int H,
    int j0, int j1)
{
    int hs = j1 - j0;
    for (int b = 0; b < B; b++) {
        REAL *restrict xr = gx + (long)b * 3 * H, *restrict xz = xr + H;
        REAL *restrict hr = gh + (long)b * 3 * hs - j0, *restrict hz = hr + hs;
        const REAL *restrict hp = h_prev + (long)b * H;
        REAL *restrict rhb = rh + (long)b * H;
        const REAL *restrict br = bias, *restrict bz = bias + H;
#pragma omp simd
        for (int j = j0; j < j1; j++) {
            REAL r = SIGMOID(xr[j] + br[j] + hr[j]);
            REAL z = SIGMOID(xz[j] + bz[j] + hz[j]);
            hr[j] = r;
            hz[j] = z;
            rhb[j] = r * hp[j];
        }
        if (keep) {
            for (int j = j0; j < j1; j++) {
                xr[j] = hr[j];
                xz[j] = hz[j];
            }
        }
    }
}

/*
 * reset_after=0, second half: n = tanh(gx_n + bias_n + gh_n), h_new = n + z (h_prev - n), gh_n the
 * thread's block of rh W_hn^T and z from the first half. keep: n overwrites gx_n. y (B, ldy).
 */
CGRU_SHARED_KERNEL void FN(gates_forward_n)(
    REAL *h_new, REAL *y, int ldy, REAL *gx, const REAL *bias, const REAL *gh, const REAL *h_prev,
    const int64_t *lengths, int t, int keep, int B, int H, int j0, int j1)
{
    int hs = j1 - j0;
    for (int b = 0; b < B; b++) {
        REAL *restrict hb = h_new + (long)b * H;
        const REAL *restrict hp = h_prev + (long)b * H;
        REAL *restrict yb = y + (long)b * ldy;
        if (!cgru_step_active(lengths, b, t)) {
            for (int j = j0; j < j1; j++) {
                hb[j] = hp[j];
                yb[j] = 0;
            }
            continue;
        }
        REAL *restrict xn = gx + (long)b * 3 * H + 2 * H;
        const REAL *restrict bn = bias + 2 * H;
        const REAL *restrict hz = gh + (long)b * 3 * hs - j0 + hs, *restrict hnn = hz + hs;
        if (keep) {
#pragma omp simd
            for (int j = j0; j < j1; j++) {
                REAL n = TANH(xn[j] + bn[j] + hnn[j]);
                REAL h = n + hz[j] * (hp[j] - n);
                hb[j] = h;
                yb[j] = h;
                xn[j] = n;
            }
        } else {
#pragma omp simd
            for (int j = j0; j < j1; j++) {
                REAL n = TANH(xn[j] + bn[j] + hnn[j]);
                REAL h = n + hz[j] * (hp[j] - n);
                hb[j] = h;
                yb[j] = h;
            }
        }
    }
}

/* ---- backward -------------------------------------------------------------------------------- */

/*
 * reset_after=1. With dh = dh_next + dy the gradient reaching h_new:
 *   dn   = dh (1 - z)             dz = dh (h_prev - n)
 *   da_n = dn (1 - n^2)           (pre-activation of n)
 *   da_z = dz z (1 - z)
 *   da_r = da_n hn r (1 - r)      (n's pre-activation holds r * hn)
 *   dhn  = da_n r                 (gradient of hn = W_hn h + b_hn)
 *   dh_prev = dh z + [da_r | da_z | dhn] W_hh   (the GEMM runs after this kernel)
 * gates (B, 3H): in [r|z|n], out [da_r|da_z|dhn]; extra (B, H): in hn, out da_n.
 * dh_prev (B, H) gets dh z (or dh for finished sequences); dy (B, ldy).
 */
CGRU_SHARED_KERNEL void FN(gates_backward_reset_after)(
    REAL *dh_prev, REAL *gates, REAL *extra, const REAL *dh_next, const REAL *dy, int ldy,
    const REAL *h_prev, const int64_t *lengths, int t, int B, int H, int j0, int j1)
{
    for (int b = 0; b < B; b++) {
        REAL *restrict dhp = dh_prev + (long)b * H;
        const REAL *restrict dhn_in = dh_next + (long)b * H;
        REAL *restrict gr = gates + (long)b * 3 * H, *restrict gz = gr + H, *restrict gn = gz + H;
        REAL *restrict ex = extra + (long)b * H;
        if (!cgru_step_active(lengths, b, t)) {
            for (int j = j0; j < j1; j++) {
                dhp[j] = dhn_in[j];
                gr[j] = gz[j] = gn[j] = ex[j] = 0;
            }
            continue;
        }
        const REAL *restrict dyb = dy + (long)b * ldy;
        const REAL *restrict hp = h_prev + (long)b * H;
#pragma omp simd
        for (int j = j0; j < j1; j++) {
            REAL dh = dhn_in[j] + dyb[j];
            REAL r = gr[j], z = gz[j], n = gn[j], hn = ex[j];
            REAL da_n = dh * (1 - z) * (1 - n * n);
            REAL da_z = dh * (hp[j] - n) * z * (1 - z);
            REAL da_r = da_n * hn * r * (1 - r);
            gr[j] = da_r;
            gz[j] = da_z;
            gn[j] = da_n * r;
            ex[j] = da_n;
            dhp[j] = dh * z;
        }
    }
}

/*
 * reset_after=0, first half. With dh = dh_next + dy:
 *   da_n = dh (1 - z) (1 - n^2)     da_z = dh (h_prev - n) z (1 - z)
 * gates (B, 3H): in [r|z|n], out [r|da_z|da_n] (r is still needed by the second half);
 * dh_prev (B, H) gets dh z (or dh for finished sequences).
 * Between the halves a GEMM forms drh = da_n W_hn, the gradient of r * h_prev.
 */
CGRU_SHARED_KERNEL void FN(gates_backward_zn)(
    REAL *dh_prev, REAL *gates, const REAL *dh_next, const REAL *dy, int ldy, const REAL *h_prev,
    const int64_t *lengths, int t, int B, int H, int j0, int j1)
{
    for (int b = 0; b < B; b++) {
        REAL *restrict dhp = dh_prev + (long)b * H;
        const REAL *restrict dhn_in = dh_next + (long)b * H;
        REAL *restrict gz = gates + (long)b * 3 * H + H, *restrict gn = gz + H;
        if (!cgru_step_active(lengths, b, t)) {
            for (int j = j0; j < j1; j++) {
                dhp[j] = dhn_in[j];
                gz[j] = gn[j] = 0;
            }
            continue;
        }
        const REAL *restrict dyb = dy + (long)b * ldy;
        const REAL *restrict hp = h_prev + (long)b * H;
#pragma omp simd
        for (int j = j0; j < j1; j++) {
            REAL dh = dhn_in[j] + dyb[j];
            REAL z = gz[j], n = gn[j];
            gz[j] = dh * (hp[j] - n) * z * (1 - z);
            gn[j] = dh * (1 - z) * (1 - n * n);
            dhp[j] = dh * z;
        }
    }
}

/*
 * reset_after=0, second half, with drh (B, H) = da_n W_hn:
 *   da_r = drh h_prev r (1 - r)       dh_prev += drh r
 * gates (B, 3H): r becomes da_r (0 for finished sequences, whose drh is 0 already).
 */
CGRU_SHARED_KERNEL void FN(gates_backward_r)(
    REAL *dh_prev, REAL *gates, const REAL *drh, const REAL *h_prev, const int64_t *lengths, int t,
    int B, int H, int j0, int j1)
{
    for (int b = 0; b < B; b++) {
        REAL *restrict gr = gates + (long)b * 3 * H;
        if (!cgru_step_active(lengths, b, t)) {
            for (int j = j0; j < j1; j++) gr[j] = 0;
            continue;
        }
        REAL *restrict dhp = dh_prev + (long)b * H;
        const REAL *restrict d = drh + (long)b * H;
        const REAL *restrict hp = h_prev + (long)b * H;
#pragma omp simd
        for (int j = j0; j < j1; j++) {
            REAL r = gr[j];
            gr[j] = d[j] * hp[j] * r * (1 - r);
            dhp[j] += d[j] * r;
        }
    }
}

#undef SIGMOID
#undef TANH
#include "real_end.h"
