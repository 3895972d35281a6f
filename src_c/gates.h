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
 * The kernels are compiled once, in gates.c (their code: gates_kernels_impl.h); this header
 * declares them (gates_impl.h) and holds the activation functions they inline.
 */
#ifndef CGRU_GATES_H
#define CGRU_GATES_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "simd.h"

/*
 * tanh for float32 as x P(x^2) / Q(x^2) below 8 in magnitude and +-1 from there on (1 - tanh 8 =
 * 2.3e-7), branch-free so that loops over it vectorize. P of degree 5 with P(0) = 1 (accurate
 * relative to the value near 0) and Q of degree 3 with Q(0) = 1 were fitted to tanh on [0, 8]
 * by weighted least squares iterated towards the smallest largest error (Lawson's weights;
 * 1.9e-8 in exact arithmetic), then rounded to float32. Over every float32 of magnitude below 20
 * (tests/test_equations.py: every 241st): within 3.5e-7 absolute of tanh, most of it the rounding
 * of the evaluation; within [-1, 1] and exactly +-1 where saturated; odd, tanh(-0) = -0; NaN in,
 * NaN out. Past 8 (infinities included) the quotient may be NaN, and the select discards it.
 * Against the exp-based form before it (e^-2|x| by a degree-7 polynomial, a division):
 * 1.8x the throughput of a sigmoid and a tanh together on an AVX-512 core (Zen 4).
 */
static inline float cgru_tanhf(float x)
{
    float s = x * x;
    float p = 2.345138320e-11f;
    p = -1.468261246e-08f + s * p;
    p = 9.871592738e-06f + s * p;
    p = 2.985095372e-03f + s * p;
    p = 1.297851503e-01f + s * p;
    p = 1.0f + s * p;
    float q = 2.370968141e-04f;
    q = 2.402479574e-02f + s * q;
    q = 4.631183147e-01f + s * q;
    q = 1.0f + s * q;
    float t = (x * p) / q;
    return fabsf(x) >= 8.0f ? copysignf(1.0f, x) : t;
}

/* sigmoid x = (1 + tanh(x/2)) / 2: within 2e-7 absolute, in [0, 1], exactly 0 and 1 past 16 */
static inline float cgru_sigmoidf(float x) { return 0.5f + 0.5f * cgru_tanhf(0.5f * x); }

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
