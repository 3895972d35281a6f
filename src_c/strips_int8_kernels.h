/*
 * The int8 strips' product (the layout and the numbers: strips_int8.h), compiled in product.c.
 *
 * The kernels (one register tile of up to 4 rows of A by up to 12 strips, as the bfloat16 ones):
 *   strips_int8_vnni   AVX512_VNNI: vpdpbusd multiplies 64 unsigned bytes by 64 signed ones and
 *                      adds each four products into a 32-bit lane: one instruction per row,
 *                      strip and quad. Its unsigned operand is u + 128 (in [1, 255]); line 1
 *                      takes the 128 sum_k q[j, k] that adds back out.
 *   strips_int8_lanes  any CPU: the same integer sums, each byte sign-extended by two shifts.
 * The rows of A are quantized once per tile into a buffer of quads, INT8_CHUNK_QUADS at a time.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "simd.h"
#include "strips_int8.h"

#define INT8_TILE_ROWS 4
#define INT8_GROUP_ONE 12  /* strips per tile of one row */
#define INT8_GROUP_TWO 8   /* of two rows */
#define INT8_GROUP_WIDE 6  /* of three or four */
#define INT8_CHUNK_QUADS 256

typedef int32_t cgru_lanes_i32 __attribute__((vector_size(64), aligned(4), __may_alias__));
/* A tile's sums in registers: 32-bit lanes, neither may_alias nor __m512i (64-bit lanes).
 * Through either, GCC kept the sums in memory, with a store and two register moves per
 * vpdpbusd (measured: a whole sequence at B = 8, H = 128 on one thread, 8.2 against 5.9 us per
 * step). */
typedef int32_t int8_sums __attribute__((vector_size(64)));

/* One row a (K values) as the product takes it: its scale (returned) and 127 / max|a| (*inv; 0
 * for a row of zeros and for a row that is not finite). */
static inline float int8_row_scale(const float *a, int K, float *inv)
{
    float top = 0, poison = 0;  /* poison: 0, or NaN once a NaN or an infinity went by */
    int k = 0;
#if defined(__GNUC__) && !defined(__clang__)
    cgru_vec_f32 top_v = {0}, poison_v = {0};
    for (; k + 16 <= K; k += 16) {
        cgru_vec_f32 v;
        memcpy(&v, a + k, sizeof v);
        const cgru_lanes_f32 negative = (cgru_lanes_f32)(v < 0);
        const cgru_vec_f32 mag = (cgru_vec_f32)((cgru_lanes_f32)v ^ (negative & (int32_t)0x80000000));
        const cgru_lanes_f32 above = (cgru_lanes_f32)(mag > top_v);
        top_v = (cgru_vec_f32)(((cgru_lanes_f32)mag & above) | ((cgru_lanes_f32)top_v & ~above));
        poison_v += v * 0.0f;
    }
    for (int i = 0; i < 16; i++) {
        top = top_v[i] > top ? top_v[i] : top;
        poison += poison_v[i];
    }
#endif
    for (; k < K; k++) {
        const float mag = fabsf(a[k]);
        top = mag > top ? mag : top;
        poison += a[k] * 0.0f;
    }
    if (poison != 0 || poison != poison) {  /* NaN: a NaN or an infinity */
        *inv = 0;
        return NAN;
    }
    *inv = top > 0 ? 127.0f / top : 0;
    return top / 127.0f;
}

/* quads (rows, n_quads words, `words` apart) = rows of A's quads [c0, c0 + n_quads) as u + 128,
 * byte e of word c the value of k = 4 (c0 + c) + e (128, a zero, past K). Without contraction:
 * a * inv is rounded to float32 before it is rounded to an integer (by adding 1.5 2^23), as
 * the definition above says; a fused multiply-add would round once. */
CGRU_KERNEL __attribute__((optimize("fp-contract=off"))) void int8_quads_of(uint32_t *quads, int words, const float *A, int lda, int rows,
                                 const float *inv, int c0, int n_quads, int K)
{
    for (int i = 0; i < rows; i++) {
        const float *a = A + (long)i * lda;
        uint8_t *out = (uint8_t *)(quads + (long)i * words);
        const int k0 = 4 * c0, k1 = 4 * (c0 + n_quads) < K ? 4 * (c0 + n_quads) : K;
        const float scale = inv[i];
        int k = k0;
#if defined(__GNUC__) && !defined(__clang__)
        const cgru_vec_f32 shift = (cgru_vec_f32){0} + 12582912.0f;  /* 1.5 2^23: rounds to even */
        for (; k + 16 <= k1; k += 16) {
            cgru_vec_f32 v;
            memcpy(&v, a + k, sizeof v);
            const cgru_vec_f32 rounded = (v * scale + shift) - shift;
            const cgru_lanes_f32 u = __builtin_convertvector(rounded, cgru_lanes_f32) + 128;
            for (int e = 0; e < 16; e++) out[k - k0 + e] = (uint8_t)u[e];
        }
#endif
        for (; k < k1; k++) out[k - k0] = (uint8_t)((int)rintf(a[k] * scale) + 128);
        for (; k < 4 * (c0 + n_quads); k++) out[k - k0] = 128;
    }
}

/* C[i, col[g] + j] = (float)sums[i][g][j] * w_scale[j] * a_scale[i], for j below cols[g] */
static inline __attribute__((always_inline)) void int8_store(
    float *C, int ldc, int rows, int group, const int8_t *const *strip, const int *col,
    const int *cols, const float *a_scale, cgru_lanes_i32 sums[INT8_TILE_ROWS][INT8_GROUP_ONE])
{
    for (int g = 0; g < group; g++) {
        cgru_vec_f32 w_scale;
        cgru_lanes_i32 offset;
        memcpy(&w_scale, strip[g], sizeof w_scale);
        memcpy(&offset, strip[g] + 64, sizeof offset);
        for (int i = 0; i < rows; i++) {
            const cgru_vec_f32 v = __builtin_convertvector(sums[i][g] - offset, cgru_vec_f32)
                                   * w_scale * a_scale[i];
            float *c = C + (long)i * ldc + col[g];
            if (cols[g] == 16) memcpy(c, &v, sizeof v);
            else for (int j = 0; j < cols[g]; j++) c[j] = v[j];
        }
    }
}

/* sums over `chunk` quads of one tile, in 32-bit lanes on any CPU: each strip's 64 bytes as 16
 * words, byte e sign-extended by a shift left and an arithmetic shift right */
static inline __attribute__((always_inline)) void int8_tile_lanes(
    int rows, int group, const int8_t *const *strip, const uint32_t *quads, int words, int chunk,
    cgru_lanes_i32 sums[INT8_TILE_ROWS][INT8_GROUP_ONE])
{
    int8_sums acc[INT8_TILE_ROWS][INT8_GROUP_ONE];
    for (int i = 0; i < rows; i++)
        for (int g = 0; g < group; g++) acc[i][g] = (int8_sums){0};
    for (int c = 0; c < chunk; c++) {
        int32_t u[INT8_TILE_ROWS][4];
        for (int i = 0; i < rows; i++)
            for (int e = 0; e < 4; e++) u[i][e] = (quads[i * words + c] >> (8 * e)) & 0xff;
        for (int g = 0; g < group; g++) {
            int8_sums w;
            memcpy(&w, strip[g] + 64L * c, sizeof w);
            for (int e = 0; e < 4; e++) {
                const int8_sums w_e = (w << (24 - 8 * e)) >> 24;
                for (int i = 0; i < rows; i++) acc[i][g] += w_e * u[i][e];
            }
        }
    }
    for (int i = 0; i < rows; i++)
        for (int g = 0; g < group; g++) sums[i][g] = acc[i][g];
}

#define INT8_CASE(TILE, rows, group)                                                           \
    case rows * 16 + group:                                                                    \
        TILE(rows, group, strip, quads, INT8_CHUNK_QUADS, chunk, sums);                        \
        break;
#define INT8_CASES_1(TILE, rows) INT8_CASE(TILE, rows, 1)
#define INT8_CASES_2(TILE, rows) INT8_CASES_1(TILE, rows) INT8_CASE(TILE, rows, 2)
#define INT8_CASES_3(TILE, rows) INT8_CASES_2(TILE, rows) INT8_CASE(TILE, rows, 3)
#define INT8_CASES_4(TILE, rows) INT8_CASES_3(TILE, rows) INT8_CASE(TILE, rows, 4)
#define INT8_CASES_5(TILE, rows) INT8_CASES_4(TILE, rows) INT8_CASE(TILE, rows, 5)
#define INT8_CASES_6(TILE, rows) INT8_CASES_5(TILE, rows) INT8_CASE(TILE, rows, 6)
#define INT8_CASES_7(TILE, rows) INT8_CASES_6(TILE, rows) INT8_CASE(TILE, rows, 7)
#define INT8_CASES_8(TILE, rows) INT8_CASES_7(TILE, rows) INT8_CASE(TILE, rows, 8)
#define INT8_CASES_9(TILE, rows) INT8_CASES_8(TILE, rows) INT8_CASE(TILE, rows, 9)
#define INT8_CASES_10(TILE, rows) INT8_CASES_9(TILE, rows) INT8_CASE(TILE, rows, 10)
#define INT8_CASES_11(TILE, rows) INT8_CASES_10(TILE, rows) INT8_CASE(TILE, rows, 11)
#define INT8_CASES_12(TILE, rows) INT8_CASES_11(TILE, rows) INT8_CASE(TILE, rows, 12)

/*
 * The loops both kernels share: row tiles (each row's scale found over all of K first), groups
 * of strips (strip[g] the group's g-th strip, col[g] and cols[g] its columns of C), chunks of
 * quads, each chunk's integer sums added to the earlier ones'. A's quads are made once per tile
 * when K fits one chunk, else once per chunk and group. Gate runs as the bfloat16 kernels
 * (product_kernels_impl.h): C's columns in runs of gate_cols, each run's strips gate_stride
 * bytes after the previous run's.
 */
#define INT8_LOOPS(TILE)                                                                       \
    const int run = gate_cols > 0 && gate_cols < N ? gate_cols : N;                            \
    const int per_run = (run + 15) / 16, n_runs = (N + run - 1) / run;                         \
    const int n_strips = n_runs * per_run, n_quads = (K + 3) / 4;                              \
    const long strip_bytes = cgru_int8_strip_bytes(K);                                         \
    const int one_chunk = n_quads <= INT8_CHUNK_QUADS;                                         \
    uint32_t quads[INT8_TILE_ROWS * INT8_CHUNK_QUADS];                                         \
    for (int m = 0; m < M; m += INT8_TILE_ROWS) {                                              \
        const int rows = M - m < INT8_TILE_ROWS ? M - m : INT8_TILE_ROWS;                      \
        const float *A_tile = A + (long)m * lda;                                               \
        float a_scale[INT8_TILE_ROWS], inv[INT8_TILE_ROWS];                                    \
        for (int i = 0; i < rows; i++) a_scale[i] = int8_row_scale(A_tile + (long)i * lda, K, &inv[i]); \
        if (one_chunk) int8_quads_of(quads, INT8_CHUNK_QUADS, A_tile, lda, rows, inv, 0, n_quads, K); \
        const int most = rows == 1 ? INT8_GROUP_ONE : rows == 2 ? INT8_GROUP_TWO : INT8_GROUP_WIDE; \
        for (int s = 0; s < n_strips; s += most) {                                             \
            const int group = n_strips - s < most ? n_strips - s : most;                       \
            const int8_t *head[INT8_GROUP_ONE], *strip[INT8_GROUP_ONE];                        \
            int col[INT8_GROUP_ONE], cols[INT8_GROUP_ONE];                                     \
            for (int g = 0; g < group; g++) {                                                  \
                const int r = (s + g) / per_run, i = (s + g) % per_run;                        \
                const int left = (N - r * run < run ? N - r * run : run) - 16 * i;             \
                head[g] = strip0 + r * gate_stride + i * strip_bytes;                          \
                col[g] = r * run + 16 * i;                                                     \
                cols[g] = left < 16 ? left : 16;                                               \
            }                                                                                  \
            cgru_lanes_i32 sums[INT8_TILE_ROWS][INT8_GROUP_ONE];  /* of one chunk */            \
            cgru_lanes_i32 total[INT8_TILE_ROWS][INT8_GROUP_ONE]; /* of the chunks so far */    \
            for (int c0 = 0; c0 < n_quads; c0 += INT8_CHUNK_QUADS) {                           \
                const int chunk = n_quads - c0 < INT8_CHUNK_QUADS ? n_quads - c0 : INT8_CHUNK_QUADS; \
                if (!one_chunk)                                                                \
                    int8_quads_of(quads, INT8_CHUNK_QUADS, A_tile, lda, rows, inv, c0, chunk, K); \
                for (int g = 0; g < group; g++) strip[g] = head[g] + 128 + 64L * c0;          \
                /* rows and group as constants, so that the sums stay in registers */          \
                switch (rows * 16 + group) {                                                   \
                    INT8_CASES_12(TILE, 1) INT8_CASES_8(TILE, 2)                               \
                    INT8_CASES_6(TILE, 3) INT8_CASES_6(TILE, 4)                                \
                }                                                                              \
                if (!one_chunk) /* each chunk's sums add to the earlier ones' (exact) */       \
                    for (int i = 0; i < rows; i++)                                             \
                        for (int g = 0; g < group; g++)                                        \
                            if (c0) total[i][g] += sums[i][g];                                 \
                            else total[i][g] = sums[i][g];                                     \
            }                                                                                  \
            int8_store(C + (long)m * ldc, ldc, rows, group, head, col, cols, a_scale,          \
                       one_chunk ? sums : total);                                              \
        }                                                                                      \
    }

CGRU_KERNEL void strips_int8_lanes(float *C, int ldc, const float *A, int lda,
                                   const int8_t *strip0, long gate_stride, int gate_cols, int M,
                                   int N, int K)
{
    INT8_LOOPS(int8_tile_lanes)
}

#ifdef CGRU_HAVE_VNNI
#include <immintrin.h>

#define CGRU_VNNI_TARGET __attribute__((target("avx512vnni,avx512f,avx512bw")))

/* the same sums with one vpdpbusd per row, strip and quad */
static inline __attribute__((always_inline)) CGRU_VNNI_TARGET void int8_tile_vnni(
    int rows, int group, const int8_t *const *strip, const uint32_t *quads, int words, int chunk,
    cgru_lanes_i32 sums[INT8_TILE_ROWS][INT8_GROUP_ONE])
{
    int8_sums acc[INT8_TILE_ROWS][INT8_GROUP_ONE];
    for (int i = 0; i < rows; i++)
        for (int g = 0; g < group; g++) acc[i][g] = (int8_sums){0};
    for (int c = 0; c < chunk; c++) {
        int8_sums u[INT8_TILE_ROWS];
        for (int i = 0; i < rows; i++) u[i] = (int8_sums){0} + (int32_t)quads[i * words + c];
        for (int g = 0; g < group; g++) {
            int8_sums w;
            memcpy(&w, strip[g] + 64L * c, sizeof w);
            for (int i = 0; i < rows; i++)
                acc[i][g] = __builtin_ia32_vpdpbusd_v16si(acc[i][g], u[i], w);
        }
    }
    for (int i = 0; i < rows; i++)
        for (int g = 0; g < group; g++) sums[i][g] = acc[i][g];
}

CGRU_VNNI_TARGET static void strips_int8_vnni(float *C, int ldc, const float *A, int lda,
                                              const int8_t *strip0, long gate_stride,
                                              int gate_cols, int M, int N, int K)
{
    INT8_LOOPS(int8_tile_vnni)
}
#endif

/* C (M, N), rows ldc apart, = A (M, K), rows lda apart, times W^T in int8 strips (above),
 * in gate runs of gate_cols columns whose strips lie gate_stride bytes apart */
static inline void strips_int8(float *C, int ldc, const float *A, int lda, const int8_t *strip0,
                               long gate_stride, int gate_cols, int M, int N, int K)
{
#ifdef CGRU_HAVE_VNNI
    if (cgru_int8_dot_preferred()) {
        strips_int8_vnni(C, ldc, A, lda, strip0, gate_stride, gate_cols, M, N, K);
        return;
    }
#endif
    strips_int8_lanes(C, ldc, A, lda, strip0, gate_stride, gate_cols, M, N, K);
}

#undef INT8_LOOPS
#undef INT8_CASE
#undef INT8_CASES_1
#undef INT8_CASES_2
#undef INT8_CASES_3
#undef INT8_CASES_4
#undef INT8_CASES_5
#undef INT8_CASES_6
#undef INT8_CASES_7
#undef INT8_CASES_8
#undef INT8_CASES_9
#undef INT8_CASES_10
#undef INT8_CASES_11
#undef INT8_CASES_12
