/*
 * The engine's sigmoid and tanh over an array, so that tests can hold the float32 approximations
 * (gates.h) to their promise: within 1e-6 absolute of the exact functions, NaN in, NaN out.
 * x, sigmoid_out, tanh_out are (n,).
 */
#include "cgru.h"
#include "gates.h"

void cgru_activations_f32(float *sigmoid_out, float *tanh_out, const float *x, long n)
{
#pragma omp simd
    for (long i = 0; i < n; i++) {
        sigmoid_out[i] = cgru_sigmoidf(x[i]);
        tanh_out[i] = cgru_tanhf(x[i]);
    }
}

void cgru_activations_f64(double *sigmoid_out, double *tanh_out, const double *x, long n)
{
    for (long i = 0; i < n; i++) {
        sigmoid_out[i] = cgru_sigmoid(x[i]);
        tanh_out[i] = cgru_tanh(x[i]);
    }
}
