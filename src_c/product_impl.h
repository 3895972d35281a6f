/* Typed body of product.h, included once per dtype (see real_begin.h). */
#include "real_begin.h"

/*
 * out (B, N), rows ldo apart, = in (B, K), rows ldi apart, times w (N, K)^T: the PAIRS kernel. Two batch rows share
 * each pass over eight weight rows: sixteen independent accumulators hide the FMA latency and
 * the weights stream from cache once per two rows.
 */
CGRU_KERNEL void FN(small_matmul_wt)(REAL *out, int ldo, const REAL *in, int ldi, const REAL *w,
                                     int B, int N, int K)
{
    int b = 0;
    for (; b + 2 <= B; b += 2) {
        const REAL *restrict u = in + (long)b * ldi;
        const REAL *restrict v = u + ldi;
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
        const REAL *restrict v = in + (long)b * ldi;
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
 * Lane i of the result = the sum of acc[i]'s lanes, for VL accumulators at once: log2(VL) rounds
 * that each halve the vectors by adding the two halves of every pair's lanes, so VL sums cost
 * 2 VL - 1 shuffle pairs instead of a horizontal sum each. In a round with half-width h, pair
 * (a, b) -> lanes [g*2h, g*2h+h) sum the two halves of a's group g, lanes [g*2h+h, (g+1)*2h)
 * those of b's; after the last round lane i holds the sum of accumulator bitreverse(i), which a
 * last shuffle puts in order. acc is overwritten.
 */
static inline __attribute__((always_inline)) FN(cgru_vec) FN(sum_each)(FN(cgru_vec) *acc)
{
    typedef FN(cgru_vec) vec;
    typedef FN(cgru_lanes) lanes;
    enum { VL = 64 / sizeof(REAL) };
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
    return sums;
}

/*
 * out (N) = w (N, K) v (K): one batch row of the ROWS kernel. Each block of VL rows leaves one
 * vector of partial sums per row, which sum_each adds up all at once. Leftover rows (N % VL) take
 * the scalar path; leftover k (K % VL) are summed one by one.
 */
CGRU_KERNEL void FN(rows_dot)(REAL *out, const REAL *w, const REAL *v, int N, int K)
{
    typedef FN(cgru_vec) vec;
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
        vec sums = FN(sum_each)(acc);
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

#if !CGRU_DOUBLE
/*
 * out (N) = w (N, K) v (K) with w in bfloat16: one batch row of the ROWS_BF16 kernel. v is
 * rounded to bfloat16 too, as AVX512_BF16's dot product takes it, so that every CPU computes the
 * same products: each product of two bfloat16 values is exact in float32, and the sums are
 * float32. Two kernels, one per CPU:
 *
 * rows_dot_bf16_widened, any CPU: a bfloat16 is the upper half of a float32, so one 64-byte
 * load of a row, read as 16 pairs (w[k+2i], w[k+2i+1]) in 32-bit lanes, widens exactly with one
 * shift and one mask,
 *   pair << 16          = w[k+2i]   as float32      pair & 0xffff0000 = w[k+2i+1] as float32,
 * which multiply v's even and odd elements, split once per 32 k for eight rows. Then as
 * rows_dot: eight rows per pass, sum_each per block of 16 rows, leftovers one by one.
 *
 * rows_dot_bf16_dot, CPUs with AVX512_BF16: the same loop with one vdpbf16ps per 32 weights of a
 * row (16 pair products added to 16 float32 sums), where the widened kernel needs a shift, a mask
 * and two multiply-adds.
 */

/* v (16 float32 lanes) rounded to bfloat16 (cgru_f32_to_bf16), as float32 */
static inline __attribute__((always_inline)) cgru_vec_f32 cgru_round_to_bf16(cgru_vec_f32 v)
{
    typedef cgru_pairs_bf16 bits;
    const bits x = (bits)v;
    const bits rounded = (x + 0x7fffu + ((x >> 16) & 1u)) & 0xffff0000u;
    const bits quiet_nan = (x | 0x00400000u) & 0xffff0000u;
    const bits is_nan = (bits)((x & 0x7fffffffu) > 0x7f800000u);  /* all ones where NaN */
    return (cgru_vec_f32)((rounded & ~is_nan) | (quiet_nan & is_nan));
}

static inline float cgru_bf16_product(uint16_t w, float v)
{
    return cgru_bf16_to_f32(w) * cgru_bf16_to_f32(cgru_f32_to_bf16(v));
}

CGRU_KERNEL void rows_dot_bf16_widened(float *out, const uint16_t *w, const float *v, int N, int K)
{
    typedef cgru_vec_f32 vec;
    typedef cgru_pairs_bf16 pairs;
    enum { VL = 16 };
    static const cgru_lanes_f32 even = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
    static const cgru_lanes_f32 odd = {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31};
    const int K_vec = K / (2 * VL) * (2 * VL);
    int n = 0;
    for (; n + VL <= N; n += VL) {
        const uint16_t *block = w + (long)n * K;  /* (VL, K), contiguous */
        vec acc[VL];
        for (int i = 0; i < VL; i += 8) {
            const uint16_t *r = block + (long)i * K;
            vec a0 = (vec){0}, a1 = (vec){0}, a2 = (vec){0}, a3 = (vec){0};
            vec a4 = (vec){0}, a5 = (vec){0}, a6 = (vec){0}, a7 = (vec){0};
            for (int k = 0; k < K_vec; k += 2 * VL) {
                const vec v0 = cgru_round_to_bf16(*(const vec *)(v + k));
                const vec v1 = cgru_round_to_bf16(*(const vec *)(v + k + VL));
#if defined(__clang__) || !defined(__GNUC__)
                vec ve, vo;
                for (int j = 0; j < VL; j++) {
                    ve[j] = j < VL / 2 ? v0[2 * j] : v1[2 * j - VL];
                    vo[j] = j < VL / 2 ? v0[2 * j + 1] : v1[2 * j + 1 - VL];
                }
                (void)even, (void)odd;
#else
                const vec ve = __builtin_shuffle(v0, v1, even), vo = __builtin_shuffle(v0, v1, odd);
#endif
                /* the odd element first, then the even one, as vdpbf16ps adds them */
#define CGRU_BF16_ROW(a, row)                                                                  \
    do {                                                                                       \
        const pairs p = *(const pairs *)(r + (long)(row) * K + k);                             \
        a += (vec)(p & 0xffff0000u) * vo;                                                      \
        a += (vec)(p << 16) * ve;                                                              \
    } while (0)
                CGRU_BF16_ROW(a0, 0); CGRU_BF16_ROW(a1, 1); CGRU_BF16_ROW(a2, 2);
                CGRU_BF16_ROW(a3, 3); CGRU_BF16_ROW(a4, 4); CGRU_BF16_ROW(a5, 5);
                CGRU_BF16_ROW(a6, 6); CGRU_BF16_ROW(a7, 7);
#undef CGRU_BF16_ROW
            }
            acc[i] = a0, acc[i + 1] = a1, acc[i + 2] = a2, acc[i + 3] = a3;
            acc[i + 4] = a4, acc[i + 5] = a5, acc[i + 6] = a6, acc[i + 7] = a7;
        }
        vec sums = sum_each_f32(acc);
        for (int i = 0; i < VL && K_vec < K; i++)
            for (int k = K_vec; k < K; k++) sums[i] += cgru_bf16_product(block[(long)i * K + k], v[k]);
        *(vec *)(out + n) = sums;
    }
    for (; n < N; n++) {
        const uint16_t *row = w + (long)n * K;
        float total = 0;
        for (int k = 0; k < K; k++) total += cgru_bf16_product(row[k], v[k]);
        out[n] = total;
    }
}

#ifdef CGRU_HAVE_BF16_DOT
#include <immintrin.h>

__attribute__((target("avx512bf16,avx512f,avx512bw,avx512vl")))
static void rows_dot_bf16_dot(float *out, const uint16_t *w, const float *v, int N, int K)
{
    typedef cgru_vec_f32 vec;
    enum { VL = 16 };
    const int K_vec = K / (2 * VL) * (2 * VL);
    int n = 0;
    for (; n + VL <= N; n += VL) {
        const uint16_t *block = w + (long)n * K;  /* (VL, K), contiguous */
        vec acc[VL];
        for (int i = 0; i < VL; i += 8) {
            const uint16_t *r = block + (long)i * K;
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0,
                   a6 = a0, a7 = a0;
            for (int k = 0; k < K_vec; k += 2 * VL) {
                /* v[k .. k+32) as bfloat16, in order: the low half from the first 16 */
                const __m512bh vb = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(v + k + VL),
                                                        _mm512_loadu_ps(v + k));
#define CGRU_BF16_ROW(a, row) \
    a = _mm512_dpbf16_ps(a, (__m512bh)_mm512_loadu_si512(r + (long)(row) * K + k), vb)
                CGRU_BF16_ROW(a0, 0); CGRU_BF16_ROW(a1, 1); CGRU_BF16_ROW(a2, 2);
                CGRU_BF16_ROW(a3, 3); CGRU_BF16_ROW(a4, 4); CGRU_BF16_ROW(a5, 5);
                CGRU_BF16_ROW(a6, 6); CGRU_BF16_ROW(a7, 7);
#undef CGRU_BF16_ROW
            }
            acc[i] = (vec)a0, acc[i + 1] = (vec)a1, acc[i + 2] = (vec)a2, acc[i + 3] = (vec)a3;
            acc[i + 4] = (vec)a4, acc[i + 5] = (vec)a5, acc[i + 6] = (vec)a6, acc[i + 7] = (vec)a7;
        }
        vec sums = sum_each_f32(acc);
        for (int i = 0; i < VL && K_vec < K; i++)
            for (int k = K_vec; k < K; k++) sums[i] += cgru_bf16_product(block[(long)i * K + k], v[k]);
        *(vec *)(out + n) = sums;
    }
    for (; n < N; n++) {
        const uint16_t *row = w + (long)n * K;
        float total = 0;
        for (int k = 0; k < K; k++) total += cgru_bf16_product(row[k], v[k]);
        out[n] = total;
    }
}
#endif

static inline void rows_dot_bf16(float *out, const uint16_t *w, const float *v, int N, int K)
{
#ifdef CGRU_HAVE_BF16_DOT
    if (cgru_bf16_dot_preferred()) {
        rows_dot_bf16_dot(out, w, v, N, K);
        return;
    }
#endif
    rows_dot_bf16_widened(out, w, v, N, K);
}
#endif

/*
 * The weights of one per-step product C (M, N) = A (M, K) op(W):
 *   PANELS:      w is op(W) (K, N) packed into panels (panels.h; ld unused);
 *   ROWS_BF16:   w16 is W (N, K) in bfloat16 as it lies, rows K apart, op(W) = W^T (float32
 *                products only; w unused);
 *   other kernels: w is W as it lies, rows ld apart: (N, K) with op(W) = W^T when transposed
 *                (rows are output units, as W_hh in h W_hh^T), else (K, N) with op(W) = W.
 */
typedef struct {
    const REAL *w;
    int ld, transposed;
    const uint16_t *w16;
} FN(cgru_operand);

/* C (M, N), rows ldc apart, = A (M, K), rows lda apart, times op(W); += with accumulate. */
static inline void FN(cgru_product)(cgru_product_kernel kernel, REAL *C, int ldc, const REAL *A,
                                    int lda, FN(cgru_operand) W, int M, int N, int K,
                                    int accumulate)
{
    if (kernel == CGRU_PRODUCT_PANELS) {
        FN(panels_matmul)(C, ldc, A, lda, W.w, M, N, K, accumulate);
#if !CGRU_DOUBLE
    } else if (kernel == CGRU_PRODUCT_ROWS_BF16) {  /* never accumulates: forward products only */
        for (int b = 0; b < M; b++) rows_dot_bf16(C + (long)b * ldc, W.w16, A + (long)b * lda, N, K);
#endif
    } else if (kernel == CGRU_PRODUCT_BLAS || !W.transposed || accumulate || W.ld != K) {
        FN(cgru_gemm)(0, W.transposed, M, N, K, 1, A, lda, W.w, W.ld, accumulate ? 1 : 0, C, ldc);
    } else if (kernel == CGRU_PRODUCT_ROWS) {
        for (int b = 0; b < M; b++) FN(rows_dot)(C + (long)b * ldc, W.w, A + (long)b * lda, N, K);
    } else {
        FN(small_matmul_wt)(C, ldc, A, lda, W.w, M, N, K);
    }
}

#include "real_end.h"
