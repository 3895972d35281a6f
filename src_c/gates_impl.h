/* Typed body of gates.h, included once per dtype (see real_begin.h). */
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
CGRU_KERNEL void FN(gates_forward_reset_after)(REAL *h_new, REAL *y, int ldy, REAL *gx,
                                               const REAL *bias, REAL *hn_keep, const REAL *gh,
                                               const REAL *h_prev,
                                               const REAL *b_hn, const int64_t *lengths, int t,
                                               int keep, int B, int H, int j0, int j1)
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
CGRU_KERNEL void FN(gates_forward_rz)(REAL *gx, const REAL *bias, REAL *gh, REAL *rh,
                                        const REAL *h_prev, int keep, int B, int H, int j0, int j1)
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
CGRU_KERNEL void FN(gates_forward_n)(REAL *h_new, REAL *y, int ldy, REAL *gx,
                                       const REAL *bias, const REAL *gh,
                                       const REAL *h_prev, const int64_t *lengths, int t, int keep,
                                       int B, int H, int j0, int j1)
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

/* ---- small products on unpacked weights (step.c, and layer.c without panels) ---------------- */

/*
 * out (B, N), rows ldo apart, = in (B, K) w (N, K)^T: the per-step product of small batches on
 * the BLAS path of the sequence loop, where a BLAS call costs more than its work. Two batch rows share
 * each pass over eight weight rows: sixteen independent accumulators hide the FMA latency and
 * the weights stream from cache once per two rows.
 */
CGRU_KERNEL void FN(small_matmul_wt)(REAL *out, int ldo, const REAL *in, const REAL *w, int B,
                                     int N, int K)
{
    int b = 0;
    for (; b + 2 <= B; b += 2) {
        const REAL *restrict u = in + (long)b * K;
        const REAL *restrict v = u + K;
        REAL *restrict o = out + (long)b * ldo;
        REAL *restrict q = o + ldo;
        int n = 0;
        for (; n + 8 <= N; n += 8) {
            const REAL *restrict w0 = w + (long)n * K;
            REAL a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;
            REAL c0 = 0, c1 = 0, c2 = 0, c3 = 0, c4 = 0, c5 = 0, c6 = 0, c7 = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3, a4, a5, a6, a7, c0, c1, c2, c3, c4, c5, c6, c7)
            for (int k = 0; k < K; k++) {
                REAL uk = u[k], vk = v[k];
                REAL r0 = w0[k], r1 = w0[K + k], r2 = w0[2 * K + k], r3 = w0[3 * K + k];
                REAL r4 = w0[4 * K + k], r5 = w0[5 * K + k], r6 = w0[6 * K + k];
                REAL r7 = w0[7 * K + k];
                a0 += r0 * uk; a1 += r1 * uk; a2 += r2 * uk; a3 += r3 * uk;
                a4 += r4 * uk; a5 += r5 * uk; a6 += r6 * uk; a7 += r7 * uk;
                c0 += r0 * vk; c1 += r1 * vk; c2 += r2 * vk; c3 += r3 * vk;
                c4 += r4 * vk; c5 += r5 * vk; c6 += r6 * vk; c7 += r7 * vk;
            }
            REAL first[8] = {a0, a1, a2, a3, a4, a5, a6, a7};
            REAL second[8] = {c0, c1, c2, c3, c4, c5, c6, c7};
            for (int i = 0; i < 8; i++) {
                o[n + i] = first[i];
                q[n + i] = second[i];
            }
        }
        for (; n < N; n++) {
            const REAL *restrict row = w + (long)n * K;
            REAL a = 0, c = 0;
#pragma omp simd reduction(+ : a, c)
            for (int k = 0; k < K; k++) {
                a += row[k] * u[k];
                c += row[k] * v[k];
            }
            o[n] = a;
            q[n] = c;
        }
    }
    for (; b < B; b++) {
        const REAL *restrict v = in + (long)b * K;
        REAL *restrict o = out + (long)b * ldo;
        int n = 0;
        for (; n + 8 <= N; n += 8) {
            const REAL *restrict w0 = w + (long)n * K;
            REAL a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3, a4, a5, a6, a7)
            for (int k = 0; k < K; k++) {
                REAL vk = v[k];
                a0 += w0[k] * vk;
                a1 += w0[K + k] * vk;
                a2 += w0[2 * K + k] * vk;
                a3 += w0[3 * K + k] * vk;
                a4 += w0[4 * K + k] * vk;
                a5 += w0[5 * K + k] * vk;
                a6 += w0[6 * K + k] * vk;
                a7 += w0[7 * K + k] * vk;
            }
            REAL acc[8] = {a0, a1, a2, a3, a4, a5, a6, a7};
            for (int i = 0; i < 8; i++) o[n + i] = acc[i];
        }
        for (; n < N; n++) {
            const REAL *restrict row = w + (long)n * K;
            REAL acc = 0;
#pragma omp simd reduction(+ : acc)
            for (int k = 0; k < K; k++) acc += row[k] * v[k];
            o[n] = acc;
        }
    }
}

/*
 * out (N) = w (N, K) v (K): one batch row of the step's products on weights
 * as they lie (rows are output units). Each block of VL rows leaves one vector of partial sums
 * per row, and one transposing reduction then sums all of them at once: log2(VL) rounds that each halve
 * the vectors by adding the two halves of every pair's lanes, so a block of VL outputs costs
 * 2 VL - 1 shuffle pairs instead of a horizontal sum per output. Leftover rows (N % VL) take the
 * scalar path; leftover k (K % VL) are summed one by one.
 */
CGRU_KERNEL void FN(rows_dot)(REAL *out, const REAL *w, const REAL *v, int N, int K)
{
    typedef FN(cgru_vec) vec;
    typedef FN(cgru_lanes) lanes;
    enum { VL = 64 / sizeof(REAL) };
    const int K_vec = K / VL * VL;
    int n = 0;
    for (; n + VL <= N; n += VL) {
        const REAL *block = w + (long)n * K;  /* (VL, K), contiguous */
        vec acc[VL];
        /* eight rows at a time, so that each vector of v loaded serves eight rows of w, in
         * eight independent chains of multiply-adds */
        for (int i = 0; i < VL; i += 8) {
            const REAL *r = block + (long)i * K;
            vec a0 = (vec){0}, a1 = (vec){0}, a2 = (vec){0}, a3 = (vec){0};
            vec a4 = (vec){0}, a5 = (vec){0}, a6 = (vec){0}, a7 = (vec){0};
            for (int k = 0; k < K_vec; k += VL) {
                const vec vk = *(const vec *)(v + k);
                a0 += *(const vec *)(r + k) * vk;
                a1 += *(const vec *)(r + K + k) * vk;
                a2 += *(const vec *)(r + 2L * K + k) * vk;
                a3 += *(const vec *)(r + 3L * K + k) * vk;
                a4 += *(const vec *)(r + 4L * K + k) * vk;
                a5 += *(const vec *)(r + 5L * K + k) * vk;
                a6 += *(const vec *)(r + 6L * K + k) * vk;
                a7 += *(const vec *)(r + 7L * K + k) * vk;
            }
            acc[i] = a0, acc[i + 1] = a1, acc[i + 2] = a2, acc[i + 3] = a3;
            acc[i + 4] = a4, acc[i + 5] = a5, acc[i + 6] = a6, acc[i + 7] = a7;
        }
        /* round with half-width h: pair (a, b) -> lanes [g*2h, g*2h+h) sum the two halves of a's
         * group g, lanes [g*2h+h, (g+1)*2h) those of b's; after the last round lane i holds the
         * sum of accumulator bitreverse(i), which a last shuffle puts in order */
#if CGRU_DOUBLE
        static const lanes low[3] = {{0, 1, 2, 3, 8, 9, 10, 11}, {0, 1, 8, 9, 4, 5, 12, 13},
                                     {0, 8, 2, 10, 4, 12, 6, 14}};
        static const lanes high[3] = {{4, 5, 6, 7, 12, 13, 14, 15}, {2, 3, 10, 11, 6, 7, 14, 15},
                                      {1, 9, 3, 11, 5, 13, 7, 15}};
        static const lanes reversed = {0, 4, 2, 6, 1, 5, 3, 7};
#else
        static const lanes low[4] = {
            {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23},
            {0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27},
            {0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29},
            {0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30}};
        static const lanes high[4] = {
            {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31},
            {4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31},
            {2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31},
            {1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31}};
        static const lanes reversed = {0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15};
#endif
#if defined(__clang__) || !defined(__GNUC__)
        /* no __builtin_shuffle (clang): the same sums lane by lane, in the same order (each
         * round adds lane j + h to lane j, h = VL/2 .. 1), so the results are bitwise equal */
        (void)low, (void)high, (void)reversed;
        vec sums;
        for (int i = 0; i < VL; i++) {
            vec a = acc[i];
            for (int h = VL / 2; h >= 1; h /= 2)
                for (int j = 0; j < h; j++) a[j] += a[j + h];
            sums[i] = a[0];
        }
#else
        for (int round = 0, count = VL; count > 1; round++, count /= 2)
            for (int i = 0; i < count / 2; i++)
                acc[i] = __builtin_shuffle(acc[2 * i], acc[2 * i + 1], low[round]) +
                         __builtin_shuffle(acc[2 * i], acc[2 * i + 1], high[round]);
        vec sums = __builtin_shuffle(acc[0], reversed);
#endif
        for (int i = 0; i < VL && K_vec < K; i++)
            for (int k = K_vec; k < K; k++) sums[i] += block[(long)i * K + k] * v[k];
        *(vec *)(out + n) = sums;
    }
    for (; n < N; n++) {
        /* whole vectors first, then their lanes, then leftover k */
        const REAL *row = w + (long)n * K;
        vec part = (vec){0};
        for (int k = 0; k < K_vec; k += VL) part += *(const vec *)(row + k) * *(const vec *)(v + k);
        REAL total = 0;
        for (int i = 0; i < VL; i++) total += part[i];
        for (int k = K_vec; k < K; k++) total += row[k] * v[k];
        out[n] = total;
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
CGRU_KERNEL void FN(gates_backward_reset_after)(REAL *dh_prev, REAL *gates, REAL *extra,
                                                  const REAL *dh_next, const REAL *dy, int ldy,
                                                  const REAL *h_prev, const int64_t *lengths, int t,
                                                  int B, int H, int j0, int j1)
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
CGRU_KERNEL void FN(gates_backward_zn)(REAL *dh_prev, REAL *gates, const REAL *dh_next,
                                         const REAL *dy, int ldy, const REAL *h_prev,
                                         const int64_t *lengths, int t, int B, int H, int j0,
                                         int j1)
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
CGRU_KERNEL void FN(gates_backward_r)(REAL *dh_prev, REAL *gates, const REAL *drh,
                                        const REAL *h_prev, const int64_t *lengths, int t, int B,
                                        int H, int j0, int j1)
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
