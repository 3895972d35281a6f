/* Typed body of product.c: the kernels and the product, compiled once per dtype (see real_begin.h). */
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

#ifndef SUM_EACH_ROUNDS
/* The body of sum_each and sum_each_half, after their tables low, high and reversed: the sums
 * of the VL vectors at acc (of type vec), returned. */
#if defined(__clang__) || !defined(__GNUC__)
/* no __builtin_shuffle (clang): the same sums lane by lane, in the same order (each round adds
 * lane j + h to lane j, h = VL/2 .. 1), so the results are bitwise equal */
#define SUM_EACH_ROUNDS(VL)                                                                    \
    (void)low, (void)high, (void)reversed;                                                     \
    vec sums;                                                                                  \
    for (int i = 0; i < (VL); i++) {                                                           \
        vec a = acc[i];                                                                        \
        for (int h = (VL) / 2; h >= 1; h /= 2)                                                 \
            for (int j = 0; j < h; j++) a[j] += a[j + h];                                      \
        sums[i] = a[0];                                                                        \
    }                                                                                          \
    return sums;
#else
#define SUM_EACH_ROUNDS(VL)                                                                    \
    for (int round = 0, count = (VL); count > 1; round++, count /= 2)                          \
        for (int i = 0; i < count / 2; i++)                                                    \
            acc[i] = __builtin_shuffle(acc[2 * i], acc[2 * i + 1], low[round]) +               \
                     __builtin_shuffle(acc[2 * i], acc[2 * i + 1], high[round]);               \
    const vec sums = __builtin_shuffle(acc[0], reversed);                                      \
    return sums;
#endif
#endif

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
    SUM_EACH_ROUNDS(VL)
}

/* sum_each for narrow tiles (simd.h): lane i of the result = the sum of acc[i]'s lanes, for the
 * HL = 32 / sizeof(REAL) half vectors at acc, in the same rounds. */
static inline __attribute__((always_inline)) FN(cgru_half) FN(sum_each_half)(FN(cgru_half) *acc)
{
    typedef FN(cgru_half) vec;
    typedef FN(cgru_half_lanes) lanes;
    enum { HL = 32 / sizeof(REAL) };
#if CGRU_DOUBLE
    static const lanes low[2] = {{0, 1, 4, 5}, {0, 4, 2, 6}};
    static const lanes high[2] = {{2, 3, 6, 7}, {1, 5, 3, 7}};
    static const lanes reversed = {0, 2, 1, 3};
#else
    static const lanes low[3] = {{0, 1, 2, 3, 8, 9, 10, 11}, {0, 1, 8, 9, 4, 5, 12, 13},
                                 {0, 8, 2, 10, 4, 12, 6, 14}};
    static const lanes high[3] = {{4, 5, 6, 7, 12, 13, 14, 15}, {2, 3, 10, 11, 6, 7, 14, 15},
                                  {1, 9, 3, 11, 5, 13, 7, 15}};
    static const lanes reversed = {0, 4, 2, 6, 1, 5, 3, 7};
#endif
    SUM_EACH_ROUNDS(HL)
}

/* rows_dot's blocks in narrow tiles (simd.h): 8 rows at a time, one 32-byte sum each, so that
 * the eight chains of multiply-adds and the vector of v fit AVX2's 16 registers. Returns the rows
 * done (N rounded down to 8); rows_dot does the rest. */
static inline __attribute__((always_inline)) int FN(rows_dot_narrow)(REAL *out, const REAL *w,
                                                                      const REAL *v, int N, int K)
{
    typedef FN(cgru_half) vec;
    enum { HL = 32 / sizeof(REAL) };
    const int K_vec = K / HL * HL;
    int n = 0;
    for (; n + 8 <= N; n += 8) {
        const REAL *r = w + (long)n * K;  /* (8, K), contiguous */
        vec acc[8];
        for (int i = 0; i < 8; i++) acc[i] = (vec){0};
        for (int k = 0; k < K_vec; k += HL) {
            const vec vk = *(const vec *)(v + k);
            for (int i = 0; i < 8; i++) acc[i] += *(const vec *)(r + i * (long)K + k) * vk;
        }
        for (int i = 0; i < 8; i += HL) {
            vec sums = FN(sum_each_half)(acc + i);
            for (int j = 0; j < HL; j++)
                for (int k = K_vec; k < K; k++) sums[j] += r[(i + j) * (long)K + k] * v[k];
            *(vec *)(out + n + i) = sums;
        }
    }
    return n;
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
    const int wide = cgru_wide_tiles();
    int n = wide ? 0 : FN(rows_dot_narrow)(out, w, v, N, K);
    for (; wide && n + VL <= N; n += VL) {
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
 * C (M, N), rows ldc apart, = A (M, K) W^T with W in bfloat16 strips (product.h: a strip holds
 * 16 output columns as K/2 pairs of k, 64 bytes each), in gate runs (cgru_operand below): the
 * strips of a run follow each other, and one pass computes every gate of a slice. A is rounded to bfloat16 too, as AVX512_BF16's dot product takes it, so
 * every CPU computes the same products: each product of two bfloat16 values is exact in float32,
 * and the sums are float32, the odd k of each pair added before the even one, as vdpbf16ps adds
 * them.
 *
 * A tile of rows of A by a group of strips keeps its sums in vector registers: one row by up to
 * 12 strips, two rows by up to 8 (enough independent sums to hide the multiply-add latency: at
 * B = 1, H = 128 a thread's slice holds 4 strips per gate, and a pass per gate waited on its
 * chains; one pass over the 12 took about a fifth off a whole sequence's time per step, side by
 * side on the 2-core VM), three or four rows by up to 6 (24 sums, and each vector of weights
 * loaded serves four rows). A group may span runs. Per pair of k a tile
 * loads one vector of each strip and broadcasts each row's pair: no horizontal sum anywhere.
 * Two kernels:
 *   strips_bf16_dot       CPUs with AVX512_BF16: one vdpbf16ps per strip, row and pair of k;
 *   strips_bf16_widened   any CPU: a bfloat16 is the upper half of a float32, so a strip's 16
 *                         pairs widen exactly with one mask (odd k) and one shift (even k),
 *                         then two multiply-adds.
 * A's rows go through a buffer, STRIP_CHUNK_PAIRS pairs of k at a time (the sums of later chunks
 * add to C), rounded once per row tile rather than once per strip: for the dot product as
 * bfloat16 pairs (32-bit words, strips_pairs_of), for the widened tiles as the two float32 values
 * each pair's broadcasts take (strips_halves), so that a widened tile spends no instruction
 * per row and pair on taking the pair apart. (Taking them apart in the tile, once per strip
 * group, cost the most at large batches: BENCHMARKS.md's bfloat16 table on the Zen 3 VM, AVX2,
 * regenerated just before and after this buffer (git show 60e1ce3:BENCHMARKS.md, and 36e594d's),
 * has a whole sequence at T50-B128-H512 go from 0.65x float32's speed to 0.83x, and step() at
 * T200-B8-H512 from 1.09x to 1.53x.)
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

#define STRIP_TILE_ROWS 4
#define STRIP_GROUP_ONE 12  /* strips per tile of one row */
#define STRIP_GROUP 8       /* of two rows */
#define STRIP_GROUP_WIDE 6  /* of three or four rows */
#define STRIP_CHUNK_PAIRS 256
#define STRIP_ROW_WORDS (2 * STRIP_CHUNK_PAIRS)  /* one row's words in the buffer of A's pairs */

/* pairs (rows, n_pairs words, `words` apart) = A's pairs [p0, p0 + n_pairs) rounded to
 * bfloat16, each word the pair (2p, 2p+1) with 2p in its low half (a missing k is 0) */
static inline void strips_pairs_of(uint32_t *pairs, int words, const float *A, int lda, int rows,
                                   int p0, int n_pairs, int K)
{
    for (int i = 0; i < rows; i++) {
        const float *a = A + (long)i * lda;
        uint32_t *out = pairs + (long)i * words;
        int p = 0;
#if defined(__GNUC__) && !defined(__clang__)
        static const cgru_lanes_f32 even = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
        static const cgru_lanes_f32 odd = {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31};
        for (; p + 16 <= n_pairs && 2 * (p0 + p) + 32 <= K; p += 16) {
            const float *v = a + 2L * (p0 + p);
            const cgru_vec_f32 v0 = cgru_round_to_bf16(*(const cgru_vec_f32 *)v);
            const cgru_vec_f32 v1 = cgru_round_to_bf16(*(const cgru_vec_f32 *)(v + 16));
            const cgru_pairs_bf16 e = (cgru_pairs_bf16)__builtin_shuffle(v0, v1, even);
            const cgru_pairs_bf16 o = (cgru_pairs_bf16)__builtin_shuffle(v0, v1, odd);
            *(cgru_pairs_bf16 *)(out + p) = (e >> 16) | (o & 0xffff0000u);
        }
#endif
        for (; p < n_pairs; p++) {
            const int k = 2 * (p0 + p);
            const uint32_t low = cgru_f32_to_bf16(a[k]);
            const uint32_t high = k + 1 < K ? cgru_f32_to_bf16(a[k + 1]) : 0;
            out[p] = low | high << 16;
        }
    }
}

/* halves (rows, 2 n_pairs words, `words` apart) = A's pairs [p0, p0 + n_pairs), rounded to
 * bfloat16 or not (rounding), as float32 bits: word 2p the pair's odd k, word 2p + 1 its even k
 * (the order the widened tiles add them in; a missing k is 0) */
static inline __attribute__((always_inline)) void strips_halves(
    uint32_t *halves, int words, const float *A, int lda, int rows, int p0, int n_pairs, int K,
    int rounding)
{
    for (int i = 0; i < rows; i++) {
        const float *a = A + (long)i * lda;
        uint32_t *out = halves + (long)i * words;
        int p = 0;
#if defined(__GNUC__) && !defined(__clang__)
        static const cgru_lanes_f32 swapped = {1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14};
        for (; p + 8 <= n_pairs && 2 * (p0 + p) + 16 <= K; p += 8) {
            const cgru_vec_f32 a_p = *(const cgru_vec_f32 *)(a + 2L * (p0 + p));
            const cgru_vec_f32 v = rounding ? cgru_round_to_bf16(a_p) : a_p;
            *(cgru_pairs_bf16 *)(out + 2 * p) = (cgru_pairs_bf16)__builtin_shuffle(v, swapped);
        }
#endif
        for (; p < n_pairs; p++) {
            const int k = 2 * (p0 + p);
            uint32_t odd = 0, even;
            if (rounding) {
                odd = k + 1 < K ? (uint32_t)cgru_f32_to_bf16(a[k + 1]) << 16 : 0;
                even = (uint32_t)cgru_f32_to_bf16(a[k]) << 16;
            } else {
                if (k + 1 < K) memcpy(&odd, &a[k + 1], sizeof odd);
                memcpy(&even, &a[k], sizeof even);
            }
            out[2 * p] = odd;
            out[2 * p + 1] = even;
        }
    }
}

/* strips_halves with the `rounding` of the kernel it is written in (strips_bf16_widened) */
#define strips_halves_as_told(halves, words, A, lda, rows, p0, n_pairs, K)                      \
    strips_halves(halves, words, A, lda, rows, p0, n_pairs, K, rounding)

/* C[i, col[g] + j] = (or +=) sums[i][g][j] for j below cols[g] */
static inline __attribute__((always_inline)) void strips_store(
    float *C, int ldc, int rows, int group, const int *col, const int *cols, int accumulate,
    cgru_vec_f32 sums[STRIP_TILE_ROWS][STRIP_GROUP_ONE])
{
    for (int i = 0; i < rows; i++)
        for (int g = 0; g < group; g++) {
            float *c = C + (long)i * ldc + col[g];
            if (cols[g] == 16) {
                if (accumulate) *(cgru_vec_f32 *)c += sums[i][g];
                else *(cgru_vec_f32 *)c = sums[i][g];
            } else {
                for (int j = 0; j < cols[g]; j++) c[j] = accumulate ? c[j] + sums[i][g][j] : sums[i][g][j];
            }
        }
}

#define STRIP_CASE(TILE, rows, group)                                                          \
    case rows * 16 + group:                                                                    \
        TILE(rows, group, strip, pairs, chunk, sums);                                          \
        break;
/* STRIP_CASES_n(TILE, rows): the cases of groups 1 to n of a tile of `rows` rows */
#define STRIP_CASES_1(TILE, rows) STRIP_CASE(TILE, rows, 1)
#define STRIP_CASES_2(TILE, rows) STRIP_CASES_1(TILE, rows) STRIP_CASE(TILE, rows, 2)
#define STRIP_CASES_3(TILE, rows) STRIP_CASES_2(TILE, rows) STRIP_CASE(TILE, rows, 3)
#define STRIP_CASES_4(TILE, rows) STRIP_CASES_3(TILE, rows) STRIP_CASE(TILE, rows, 4)
#define STRIP_CASES_5(TILE, rows) STRIP_CASES_4(TILE, rows) STRIP_CASE(TILE, rows, 5)
#define STRIP_CASES_6(TILE, rows) STRIP_CASES_5(TILE, rows) STRIP_CASE(TILE, rows, 6)
#define STRIP_CASES_7(TILE, rows) STRIP_CASES_6(TILE, rows) STRIP_CASE(TILE, rows, 7)
#define STRIP_CASES_8(TILE, rows) STRIP_CASES_7(TILE, rows) STRIP_CASE(TILE, rows, 8)
#define STRIP_CASES_9(TILE, rows) STRIP_CASES_8(TILE, rows) STRIP_CASE(TILE, rows, 9)
#define STRIP_CASES_10(TILE, rows) STRIP_CASES_9(TILE, rows) STRIP_CASE(TILE, rows, 10)
#define STRIP_CASES_11(TILE, rows) STRIP_CASES_10(TILE, rows) STRIP_CASE(TILE, rows, 11)
#define STRIP_CASES_12(TILE, rows) STRIP_CASES_11(TILE, rows) STRIP_CASE(TILE, rows, 12)
/* the cases up to `most`, a macro constant expanded before the name is formed (a group size
 * without its STRIP_CASES_n does not compile) */
#define STRIP_CASES_UP_TO(TILE, rows, most) STRIP_CASES_UP_TO_(TILE, rows, most)
#define STRIP_CASES_UP_TO_(TILE, rows, most) STRIP_CASES_##most(TILE, rows)

/*
 * The loops both kernels share: row tiles, chunks of pairs (each rounded once into `pairs` by
 * PREPARE: strips_pairs_of or strips_halves), groups of strips (strip[g] the group's g-th
 * strip from the chunk's first pair, col[g] and cols[g] its columns of C);
 * TILE(rows, group, strip, pairs, n_pairs, sums) computes one tile's
 * sums. ONE, TWO and WIDE (macro constants) are the most strips a tile of one, two, and three
 * or four rows takes; the switch's cases are made from them.
 */
#define STRIPS_LOOPS(TILE, PREPARE, ONE, TWO, WIDE)                                             \
    _Static_assert(WIDE <= TWO && TWO <= ONE && ONE <= STRIP_GROUP_ONE, "group sizes");       \
    const int group_one = ONE, group_two = TWO, group_wide = WIDE;                             \
    const int run = gate_cols > 0 && gate_cols < N ? gate_cols : N;  /* columns per gate */    \
    const int per_run = (run + 15) / 16, n_runs = (N + run - 1) / run;                         \
    const int n_strips = n_runs * per_run, n_pairs = (K + 1) / 2;                              \
    const long strip_elems = (long)cgru_bf16_strip_pairs(K) * 32;                              \
    uint32_t pairs[STRIP_TILE_ROWS * STRIP_ROW_WORDS];                                         \
    for (int m = 0; m < M; m += STRIP_TILE_ROWS) {                                             \
        const int rows = M - m < STRIP_TILE_ROWS ? M - m : STRIP_TILE_ROWS;                    \
        for (int p0 = 0; p0 < n_pairs; p0 += STRIP_CHUNK_PAIRS) {                              \
            const int chunk = n_pairs - p0 < STRIP_CHUNK_PAIRS ? n_pairs - p0 : STRIP_CHUNK_PAIRS; \
            PREPARE(pairs, STRIP_ROW_WORDS, A + (long)m * lda, lda, rows, p0, chunk, K);       \
            const int most = rows == 1 ? group_one : rows == 2 ? group_two : group_wide;       \
            for (int s = 0; s < n_strips; s += most) {                                         \
                const int group = n_strips - s < most ? n_strips - s : most;                   \
                const uint16_t *strip[STRIP_GROUP_ONE];                                        \
                int col[STRIP_GROUP_ONE], cols[STRIP_GROUP_ONE];                               \
                for (int g = 0; g < group; g++) {                                              \
                    const int r = (s + g) / per_run, i = (s + g) % per_run;                    \
                    const int left = (N - r * run < run ? N - r * run : run) - 16 * i;         \
                    strip[g] = strip0 + r * gate_stride + (i * strip_elems + p0 * 32L);        \
                    col[g] = r * run + 16 * i;                                                 \
                    cols[g] = left < 16 ? left : 16;                                           \
                }                                                                              \
                cgru_vec_f32 sums[STRIP_TILE_ROWS][STRIP_GROUP_ONE];                           \
                /* rows and group as constants, so that the sums stay in registers */          \
                switch (rows * 16 + group) {                                                   \
                    STRIP_CASES_UP_TO(TILE, 1, ONE) STRIP_CASES_UP_TO(TILE, 2, TWO)            \
                    STRIP_CASES_UP_TO(TILE, 3, WIDE) STRIP_CASES_UP_TO(TILE, 4, WIDE)          \
                }                                                                              \
                strips_store(C + (long)m * ldc, ldc, rows, group, col, cols, p0 > 0, sums);    \
            }                                                                                  \
        }                                                                                      \
    }

/* sums over `chunk` pairs of one tile, widened: per pair and strip, a mask and a shift of the
 * strip's vector give its odd-k and even-k weights as float32 */
static inline __attribute__((always_inline)) void strips_tile_widened(
    int rows, int group, const uint16_t *const *strip, const uint32_t *halves, int chunk,
    cgru_vec_f32 sums[STRIP_TILE_ROWS][STRIP_GROUP_ONE])
{
    cgru_vec_f32 acc[STRIP_TILE_ROWS][STRIP_GROUP_ONE];
    for (int i = 0; i < rows; i++)
        for (int g = 0; g < group; g++) acc[i][g] = (cgru_vec_f32){0};
    for (int p = 0; p < chunk; p++) {
        float odd[STRIP_TILE_ROWS], even[STRIP_TILE_ROWS];
        for (int i = 0; i < rows; i++) {  /* strips_halves's words, loaded as float32 */
            memcpy(&odd[i], halves + i * STRIP_ROW_WORDS + 2 * p, sizeof(float));
            memcpy(&even[i], halves + i * STRIP_ROW_WORDS + 2 * p + 1, sizeof(float));
        }
        for (int g = 0; g < group; g++) {
            const cgru_pairs_bf16 w = *(const cgru_pairs_bf16 *)(strip[g] + 32L * p);
            const cgru_vec_f32 w_odd = (cgru_vec_f32)(w & 0xffff0000u);
            const cgru_vec_f32 w_even = (cgru_vec_f32)(w << 16);
            for (int i = 0; i < rows; i++) {
                acc[i][g] += w_odd * odd[i];  /* the odd k first, as vdpbf16ps adds them */
                acc[i][g] += w_even * even[i];
            }
        }
    }
    for (int i = 0; i < rows; i++)
        for (int g = 0; g < group; g++) sums[i][g] = acc[i][g];
}

/* Narrow tiles (simd.h): each strip's sums take two 32-byte registers, so a tile holds at most
 * 12 of those, a third of the wide tiles' strips; the sums come out the same. */
#define STRIP_NARROW_ONE 6
#define STRIP_NARROW_TWO 3
#define STRIP_NARROW_WIDE 1

/* strips_tile_widened in narrow tiles: each strip's 16 units as two 32-byte halves of 8 */
static inline __attribute__((always_inline)) void strips_tile_narrow(
    int rows, int group, const uint16_t *const *strip, const uint32_t *halves, int chunk,
    cgru_vec_f32 sums[STRIP_TILE_ROWS][STRIP_GROUP_ONE])
{
    typedef uint32_t half_pairs __attribute__((vector_size(32), aligned(2), __may_alias__));
    cgru_half_f32 acc[STRIP_TILE_ROWS][STRIP_GROUP_ONE][2];
    for (int i = 0; i < rows; i++)
        for (int g = 0; g < group; g++) acc[i][g][0] = acc[i][g][1] = (cgru_half_f32){0};
    for (int p = 0; p < chunk; p++) {
        float odd[STRIP_TILE_ROWS], even[STRIP_TILE_ROWS];
        for (int i = 0; i < rows; i++) {  /* strips_halves's words, loaded as float32 */
            memcpy(&odd[i], halves + i * STRIP_ROW_WORDS + 2 * p, sizeof(float));
            memcpy(&even[i], halves + i * STRIP_ROW_WORDS + 2 * p + 1, sizeof(float));
        }
        for (int g = 0; g < group; g++)
            for (int e = 0; e < 2; e++) {
                const half_pairs w = *(const half_pairs *)(strip[g] + 32L * p + 16 * e);
                const cgru_half_f32 w_odd = (cgru_half_f32)(w & 0xffff0000u);
                const cgru_half_f32 w_even = (cgru_half_f32)(w << 16);
                for (int i = 0; i < rows; i++) {
                    acc[i][g][e] += w_odd * odd[i];
                    acc[i][g][e] += w_even * even[i];
                }
            }
    }
    for (int i = 0; i < rows; i++)
        for (int g = 0; g < group; g++) {
            memcpy(&sums[i][g], &acc[i][g][0], 32);
            memcpy((char *)&sums[i][g] + 32, &acc[i][g][1], 32);
        }
}

/* rounding 1: A rounded to bfloat16 as the dot product takes it (STRIPS_BF16); 0: A as it is
 * (STRIPS_BF16_EXACT) */
CGRU_KERNEL void strips_bf16_widened(float *C, int ldc, const float *A, int lda,
                                     const uint16_t *strip0, long gate_stride, int gate_cols,
                                     int M, int N, int K, int rounding)
{
    if (cgru_wide_tiles()) {
        STRIPS_LOOPS(strips_tile_widened, strips_halves_as_told, STRIP_GROUP_ONE, STRIP_GROUP,
                     STRIP_GROUP_WIDE)
    } else {
        STRIPS_LOOPS(strips_tile_narrow, strips_halves_as_told, STRIP_NARROW_ONE,
                     STRIP_NARROW_TWO, STRIP_NARROW_WIDE)
    }
}
#undef strips_halves_as_told

#ifdef CGRU_HAVE_BF16_DOT
#include <immintrin.h>

#define CGRU_BF16_TARGET __attribute__((target("avx512bf16,avx512f,avx512bw,avx512vl")))

/* the same sums with one vdpbf16ps per pair, strip and row */
static inline __attribute__((always_inline)) CGRU_BF16_TARGET void strips_tile_dot(
    int rows, int group, const uint16_t *const *strip, const uint32_t *pairs, int chunk,
    cgru_vec_f32 sums[STRIP_TILE_ROWS][STRIP_GROUP_ONE])
{
    __m512 acc[STRIP_TILE_ROWS][STRIP_GROUP_ONE];
    for (int i = 0; i < rows; i++)
        for (int g = 0; g < group; g++) acc[i][g] = _mm512_setzero_ps();
    for (int p = 0; p < chunk; p++) {
        __m512bh a[STRIP_TILE_ROWS];
        for (int i = 0; i < rows; i++)
            a[i] = (__m512bh)_mm512_set1_epi32((int)pairs[i * STRIP_ROW_WORDS + p]);
        for (int g = 0; g < group; g++) {
            const __m512bh w = (__m512bh)_mm512_loadu_si512(strip[g] + 32L * p);
            for (int i = 0; i < rows; i++) acc[i][g] = _mm512_dpbf16_ps(acc[i][g], w, a[i]);
        }
    }
    for (int i = 0; i < rows; i++)
        for (int g = 0; g < group; g++) sums[i][g] = (cgru_vec_f32)acc[i][g];
}

CGRU_BF16_TARGET static void strips_bf16_dot(float *C, int ldc, const float *A, int lda,
                                             const uint16_t *strip0, long gate_stride,
                                             int gate_cols, int M, int N, int K)
{
    STRIPS_LOOPS(strips_tile_dot, strips_pairs_of, STRIP_GROUP_ONE, STRIP_GROUP, STRIP_GROUP_WIDE)
}
#endif
#undef STRIPS_LOOPS
#undef STRIP_CASES_UP_TO
#undef STRIP_CASES_UP_TO_
#undef STRIP_CASES_1
#undef STRIP_CASES_2
#undef STRIP_CASES_3
#undef STRIP_CASES_4
#undef STRIP_CASES_5
#undef STRIP_CASES_6
#undef STRIP_CASES_7
#undef STRIP_CASES_8
#undef STRIP_CASES_9
#undef STRIP_CASES_10
#undef STRIP_CASES_11
#undef STRIP_CASES_12
#undef STRIP_CASE

static inline void strips_bf16(float *C, int ldc, const float *A, int lda, const uint16_t *strip0,
                               long gate_stride, int gate_cols, int M, int N, int K)
{
#ifdef CGRU_HAVE_BF16_DOT
    if (cgru_bf16_dot_preferred()) {
        strips_bf16_dot(C, ldc, A, lda, strip0, gate_stride, gate_cols, M, N, K);
        return;
    }
#endif
    strips_bf16_widened(C, ldc, A, lda, strip0, gate_stride, gate_cols, M, N, K, 1);
}
#endif

/* C (M, N), rows ldc apart, = A (M, K), rows lda apart, times op(W); += with accumulate. */
CGRU_INTERNAL void FN(cgru_product)(cgru_product_kernel kernel, REAL *C, int ldc, const REAL *A,
                                    int lda, FN(cgru_operand) W, int M, int N, int K,
                                    int accumulate)
{
    if (kernel == CGRU_PRODUCT_PANELS) {
        FN(panels_matmul)(C, ldc, A, lda, W.w, M, N, K, accumulate);
#if !CGRU_DOUBLE
    } else if (kernel == CGRU_PRODUCT_STRIPS_BF16) {  /* never accumulates: forward products only */
        strips_bf16(C, ldc, A, lda, W.wq, W.gate_stride, W.gate_cols, M, N, K);
    } else if (kernel == CGRU_PRODUCT_STRIPS_BF16_EXACT) {
        strips_bf16_widened(C, ldc, A, lda, W.wq, W.gate_stride, W.gate_cols, M, N, K, 0);
    } else if (kernel == CGRU_PRODUCT_STRIPS_INT8) {
        strips_int8(C, ldc, A, lda, W.wq, W.gate_stride, W.gate_cols, M, N, K);
#endif
    } else {  /* the weights as they lie: one product per gate run */
        const int run = W.gate_cols > 0 && W.gate_cols < N ? W.gate_cols : N;
        for (int c0 = 0, r = 0; c0 < N; c0 += run, r++) {
            const REAL *w = W.w + r * W.gate_stride;
            const int n = N - c0 < run ? N - c0 : run;
            REAL *c = C + c0;
            if (kernel == CGRU_PRODUCT_BLAS || !W.transposed || accumulate || W.ld != K)
                FN(cgru_gemm)(0, W.transposed, M, n, K, 1, A, lda, w, W.ld, accumulate ? 1 : 0, c, ldc);
            else if (kernel == CGRU_PRODUCT_ROWS)
                for (int b = 0; b < M; b++) FN(rows_dot)(c + (long)b * ldc, w, A + (long)b * lda, n, K);
            else
                FN(small_matmul_wt)(c, ldc, A, lda, w, M, n, K);
        }
    }
}

#include "real_end.h"
