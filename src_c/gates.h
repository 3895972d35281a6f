/*
 * The fused elementwise kernels ("postgemm") of one GRU time step, forward above backward.
 * Each works on one thread's slice of hidden units [j0, j1) for every batch row, so threads never
 * write the same element. Sequences past their length (t >= lengths[b]) keep their state, output
 * zero and pass their state gradient through unchanged.
 *
 * Gate blocks:
 *   gx (B, 3H)      per time step: x W_ih^T. In training it is overwritten with the activations
 *                   [r|z|n], and by backward with the gate gradients.
 *   bias (3H)       added to gx by the kernels: b_ih (+ b_hh for r and z; + b_hn too when
 *                   reset_after=0); zeros for a GRU without bias.
 *   gh (B, 3*hs)    this thread's block of h W_hh^T, hs = j1 - j0, laid out [r|z|n].
 */
#ifndef CGRU_GATES_H
#define CGRU_GATES_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "simd.h"

/*
 * exp for float32, branch-free so that loops over it vectorize: e^x = 2^n e^r with
 * n = round(x / ln 2), |r| <= ln(2)/2, e^r by its Taylor polynomial to degree 7 (truncation
 * error < 6e-9 relative). Inputs are clamped to [-87, 88] so 2^n stays a normal float; NaN
 * passes the clamps (comparisons with NaN are false) and comes out NaN.
 */
static inline float cgru_expf(float x)
{
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    /* n = round(x / ln 2): adding and subtracting 1.5 * 2^23 rounds to an integer without a
     * rounding instruction (the compiler may not fold it: no -ffast-math) */
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    /* r = x - n ln2, with ln2 split in two so that n * ln2_hi is exact */
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.0f / 5040.0f + r * (1.0f / 40320.0f);
    p = 1.0f / 720.0f + r * p;
    p = 1.0f / 120.0f + r * p;
    p = 1.0f / 24.0f + r * p;
    p = 1.0f / 6.0f + r * p;
    p = 0.5f + r * p;
    p = 1.0f + r * p;
    p = 1.0f + r * p;
    /* 2^n from the exponent bits; n lies in [-126, 127] after the clamps, and a NaN x (whose p
     * is NaN already) uses n = 0 so that no NaN is converted to an integer */
    float n_finite = n == n ? n : 0.0f;
    union { uint32_t i; float f; } two_n;
    two_n.i = (uint32_t)((int32_t)n_finite + 127) << 23;
    return p * two_n.f;
}

static inline float cgru_sigmoidf(float x) { return 1.0f / (1.0f + cgru_expf(-x)); }

/* tanh x = sign(x) (1 - e) / (1 + e) with e = exp(-2|x|) in (0, 1]: no overflow, and the absolute
 * error stays near one float ulp of 1. */
static inline float cgru_tanhf(float x)
{
    float e = cgru_expf(-2.0f * fabsf(x));
    float t = (1.0f - e) / (1.0f + e);
    return x < 0.0f ? -t : (x >= 0.0f ? t : x);  /* the last case is NaN */
}

/* float64 uses libm: exact to the last bit libm gives. */
static inline double cgru_sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }
static inline double cgru_tanh(double x) { return tanh(x); }

/* 1 when time step t belongs to sequence b (lengths == NULL: every sequence has all steps). */
static inline int cgru_step_active(const int64_t *lengths, int b, int t)
{
    return lengths == 0 || t < lengths[b];
}

#define CGRU_DOUBLE 0
#include "gates_impl.h"
#undef CGRU_DOUBLE
#define CGRU_DOUBLE 1
#include "gates_impl.h"
#undef CGRU_DOUBLE

#endif
