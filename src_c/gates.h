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

/*
 * float64: e^x - 1 and e^x on one reduction, branch-free so that the gate loops vectorize (libm's
 * exp and tanh are calls, one element at a time: half of a float64 forward step went to them).
 * e^x = 2^n e^r with n = round(x / ln 2) and r = x - n ln 2, |r| <= ln(2)/2, ln 2 split in two
 * (fdlibm's split: n ln2_hi is exact for |n| < 2^20). e^r - 1 is its Taylor polynomial to degree
 * 13: truncation below 5e-18 relative, a few hundredths of a double's ulp; the rounding of the
 * evaluation leaves sigmoid and tanh within 3 ulp of exact (tests/test_equations.py measures it).
 * x is clamped to [lo, 709] so that 2^n stays a normal double; NaN passes the clamps and comes
 * out NaN (its bits make some 2^n, which the NaN of p turns into NaN).
 *   *two_n = 2^n, and the result is e^r - 1, so that e^x = two_n + two_n * p and
 *   e^x - 1 = (two_n - 1) + two_n * p (exact for n = 0, and no cancellation otherwise).
 */
static inline double cgru_exp_reduced(double x, double lo, double *two_n)
{
    x = x < lo ? lo : x;
    x = x > 709.0 ? 709.0 : x;
    /* n = round(x / ln 2) by adding and subtracting 1.5 * 2^52; the sum's low bits hold n */
    const double shifter = 6755399441055744.0;
    double shifted = x * 1.4426950408889634074 + shifter;
    double n = shifted - shifter;
    double r = x - n * 6.93147180369123816490e-01;
    r = r - n * 1.90821492927058770002e-10;
    double p = 1.0 / 6227020800.0;                   /* 1/13! */
    p = 1.0 / 479001600.0 + r * p;
    p = 1.0 / 39916800.0 + r * p;
    p = 1.0 / 3628800.0 + r * p;
    p = 1.0 / 362880.0 + r * p;
    p = 1.0 / 40320.0 + r * p;
    p = 1.0 / 5040.0 + r * p;
    p = 1.0 / 720.0 + r * p;
    p = 1.0 / 120.0 + r * p;
    p = 1.0 / 24.0 + r * p;
    p = 1.0 / 6.0 + r * p;
    p = 0.5 + r * p;
    p = r + r * (r * p);                             /* e^r - 1 */
    /* 2^n: n + 1023 into the exponent field; the shifted sum's bits are 0x4338... + n, so its
     * low bits shifted into place give n's (integer operations only: they vectorize anywhere) */
    union { double f; uint64_t i; } bits = {shifted}, power;
    power.i = (bits.i + 1023u) << 52;
    *two_n = power.f;
    return p;
}

static inline double cgru_sigmoid(double x)
{
    double two_n, p = cgru_exp_reduced(-x, -708.0, &two_n);
    return 1.0 / (1.0 + (two_n + two_n * p));
}

/* tanh |x| = |m| / (2 + m) with m = e^(-2|x|) - 1 in (-1, 0]: accurate relative to the result near
 * 0 too. Below -40, m is -1 to the last bit, so the clamp changes nothing. */
static inline double cgru_tanh(double x)
{
    double two_n, p = cgru_exp_reduced(-2.0 * fabs(x), -40.0, &two_n);
    double m = (two_n - 1.0) + two_n * p;
    return copysign(fabs(m) / (2.0 + m), x);  /* NaN stays NaN; tanh(-0) = -0 */
}

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
