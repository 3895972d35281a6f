/*
 * The engine's sigmoid and tanh over an array, so that tests can hold the approximations
 * (gates.h) to their promise: float32 within 4e-7 absolute of the exact functions and in their
 * ranges, float64 within 3 ulp; NaN in, NaN out. Compiled as the gate kernels are (CGRU_KERNEL: the same
 * instruction set, hence the same fused multiply-adds and the same results).
 * x, sigmoid_out, tanh_out are (n,).
 */
#include "cgru.h"
#include "gates.h"

CGRU_KERNEL void activations_f32(float *sigmoid_out, float *tanh_out, const float *x, long n)
{
#pragma omp simd
    for (long i = 0; i < n; i++) {
        sigmoid_out[i] = cgru_sigmoidf(x[i]);
        tanh_out[i] = cgru_tanhf(x[i]);
    }
}

CGRU_KERNEL void activations_f64(double *sigmoid_out, double *tanh_out, const double *x, long n)
{
#pragma omp simd
    for (long i = 0; i < n; i++) {
        sigmoid_out[i] = cgru_sigmoid(x[i]);
        tanh_out[i] = cgru_tanh(x[i]);
    }
}

void cgru_activations_f32(float *sigmoid_out, float *tanh_out, const float *x, long n)
{
    activations_f32(sigmoid_out, tanh_out, x, n);
}

void cgru_activations_f64(double *sigmoid_out, double *tanh_out, const double *x, long n)
{
    activations_f64(sigmoid_out, tanh_out, x, n);
}
