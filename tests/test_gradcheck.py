"""float64 gradients of the engine against central finite differences, every parameter and input."""
import numpy as np
import pytest

import cgru


def _loss(gru, x, h0, lengths, w_y, w_h):
    y, h_n = gru(x, h0, lengths)
    return float(np.sum(w_y * y) + np.sum(w_h * h_n))


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_gradients_match_central_finite_differences(reset_after, bidirectional):
    rng = np.random.default_rng(11)
    gru = cgru.GRU(3, 4, num_layers=2, bidirectional=bidirectional, reset_after=reset_after,
                   dtype="float64", seed=5)
    D = 2 if bidirectional else 1
    T, B = 4, 3
    x = rng.standard_normal((T, B, 3))
    h0 = rng.standard_normal((2 * D, B, 4))
    lengths = np.array([4, 1, 3])
    y, h_n = gru(x, h0, lengths)
    w_y, w_h = rng.standard_normal(y.shape), rng.standard_normal(h_n.shape)
    gru.zero_grad()
    gru(x, h0, lengths)
    dx, dh0 = gru.backward(w_y, w_h)
    eps = 1e-6

    def numeric(array):
        grad = np.zeros_like(array)
        for idx in np.ndindex(array.shape):
            keep = array[idx]
            array[idx] = keep + eps
            up = _loss(gru, x, h0, lengths, w_y, w_h)
            array[idx] = keep - eps
            down = _loss(gru, x, h0, lengths, w_y, w_h)
            array[idx] = keep
            grad[idx] = (up - down) / (2 * eps)
        return grad

    np.testing.assert_allclose(dx, numeric(x), rtol=1e-6, atol=1e-8, err_msg="dx")
    np.testing.assert_allclose(dh0, numeric(h0), rtol=1e-6, atol=1e-8, err_msg="dh0")
    for name, param in gru.params.items():
        np.testing.assert_allclose(gru.grads[name], numeric(param), rtol=1e-6, atol=1e-8,
                                   err_msg=name)
