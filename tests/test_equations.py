"""The equations and conventions the README states."""
import numpy as np
import pytest

import cgru
from cgru import _engine


def _seed_document_cell(x, h, w_ih, w_hh, b_ih, b_hh):
    """The GRU as two seed documents write it: h' = (1 - u) * h + u * n, gates r, u, n."""
    H = h.shape[-1]
    sig = lambda a: 1 / (1 + np.exp(-a))
    gi, gh = x @ w_ih.T + b_ih, h @ w_hh.T + b_hh
    r = sig(gi[:, :H] + gh[:, :H])
    u = sig(gi[:, H:2 * H] + gh[:, H:2 * H])
    n = np.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
    return (1 - u) * h + u * n


def test_the_seed_form_of_the_update_is_the_same_model_with_the_update_gate_negated():
    rng = np.random.default_rng(0)
    gru = cgru.GRU(3, 5, dtype="float64", seed=1)
    seed_params = {k: rng.standard_normal(v.shape) for k, v in gru.params.items()}
    # negate the update gate's rows (z is block 1 of r, z, n): sigmoid(-a) = 1 - sigmoid(a)
    negated = {k: v.copy() for k, v in seed_params.items()}
    for k in negated:
        negated[k][5:10] *= -1
    gru.load_state_dict(negated)
    x = rng.standard_normal((4, 2, 3))
    h = np.zeros((2, 5))
    for t in range(4):
        h = _seed_document_cell(x[t], h, seed_params["weight_ih_l0"], seed_params["weight_hh_l0"],
                                seed_params["bias_ih_l0"], seed_params["bias_hh_l0"])
    _, h_n = gru(x)
    np.testing.assert_allclose(h_n[0], h, rtol=1e-12, atol=1e-14)


def test_reset_after_and_reset_before_are_different_models():
    x = np.random.default_rng(1).standard_normal((5, 2, 3))
    after = cgru.GRU(3, 4, dtype="float64", seed=2)
    before = cgru.GRU(3, 4, dtype="float64", seed=2, reset_after=False)
    assert not np.allclose(after(x)[0], before(x)[0])


def _every_float32(step, below):
    """Every step-th float32 of magnitude below `below`, both signs, with +-0 and the last below."""
    top = np.array(below, np.float32).view(np.uint32)
    bits = np.concatenate([np.arange(0, top, step, dtype=np.uint32), [top - 1]])
    magnitudes = bits.view(np.float32)
    return np.concatenate([magnitudes, -magnitudes])


def test_float32_sigmoid_and_tanh_stay_within_4e_7_of_exact_and_in_their_ranges():
    x = _every_float32(241, 20.0)
    sigmoid, tanh = _engine.activations(x)
    exact = x.astype(np.float64)
    assert np.max(np.abs(sigmoid - 1 / (1 + np.exp(-exact)))) < 2.5e-7
    assert np.max(np.abs(tanh - np.tanh(exact))) < 4e-7
    assert sigmoid.min() >= 0 and sigmoid.max() <= 1
    assert tanh.min() >= -1 and tanh.max() <= 1
    saturated = np.abs(x) >= 8  # where 1 - tanh x < 2.3e-7: exactly +-1, so a closed gate is closed
    np.testing.assert_array_equal(tanh[saturated], np.sign(x[saturated]))
    np.testing.assert_array_equal(sigmoid[np.abs(x) >= 16], x[np.abs(x) >= 16] > 0)


def test_float32_tanh_is_odd_and_accurate_relative_to_its_value_near_zero():
    x = _every_float32(241, 0.5)
    _, tanh = _engine.activations(x)
    half = len(x) // 2
    np.testing.assert_array_equal(tanh[half:], -tanh[:half])
    np.testing.assert_array_equal(np.signbit(tanh), np.signbit(x))
    nonzero = x != 0
    relative = np.abs(tanh[nonzero] - np.tanh(x[nonzero].astype(np.float64))) / np.abs(
        np.tanh(x[nonzero].astype(np.float64)))
    assert relative.max() < 5 * np.finfo(np.float32).eps


def _ulps(actual, exact):
    """|actual - exact| in units of the last place of exact rounded to float64; exact in
    long double (80-bit on x86-64: 11 more bits than float64)."""
    spacing = np.spacing(np.abs(exact.astype(np.float64))).astype(np.longdouble)
    return np.abs((actual.astype(np.longdouble) - exact) / spacing).astype(np.float64)


@pytest.mark.skipif(np.finfo(np.longdouble).nmant < 63, reason="needs an extended long double")
def test_float64_sigmoid_and_tanh_stay_within_3_ulp_of_exact():
    x = np.concatenate([np.linspace(-40, 40, 1_000_001), np.linspace(-1e-3, 1e-3, 100_001),
                        np.geomspace(1e-300, 1e-3, 10_001), -np.geomspace(1e-300, 1e-3, 10_001),
                        np.linspace(-700, 700, 14_001)])
    sigmoid, tanh = _engine.activations(x)
    exact = x.astype(np.longdouble)
    assert _ulps(sigmoid, 1 / (1 + np.exp(-exact))).max() <= 3
    assert _ulps(tanh, np.tanh(exact)).max() <= 3


def test_float64_activations_keep_signed_zeros_and_reach_their_limits():
    sigmoid, tanh = _engine.activations(np.array([0.0, -0.0, 1e-300, -1e-300, 40, -40, -800]))
    np.testing.assert_array_equal(np.signbit(tanh[:4]), [False, True, False, True])
    np.testing.assert_array_equal(tanh[2:6], [1e-300, -1e-300, 1, -1])
    np.testing.assert_array_equal(sigmoid[:2], [0.5, 0.5])
    assert 0 <= sigmoid[-1] < 1e-300  # far below its limits the float64 sigmoid is 0 to 1e-300


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activations_propagate_nan_and_saturate_at_infinity(dtype):
    sigmoid, tanh = _engine.activations(np.array([np.nan, np.inf, -np.inf], dtype))
    assert np.isnan(sigmoid[0]) and np.isnan(tanh[0])
    np.testing.assert_allclose(sigmoid[1:], [1, 0], atol=1e-30)
    np.testing.assert_array_equal(tanh[1:], [1, -1])


def test_step_by_step_equals_the_whole_sequence():
    for reset_after in (True, False):
        gru = cgru.GRU(4, 9, num_layers=3, reset_after=reset_after, dtype="float64", seed=3)
        gru.eval()
        x = np.random.default_rng(2).standard_normal((7, 2, 4))
        h0 = np.random.default_rng(3).standard_normal((3, 2, 9))
        y, h_n = gru(x, h0)
        h = h0.copy()
        for t in range(7):
            h = gru.step(x[t], h, out=h)
            np.testing.assert_allclose(h[-1], y[t], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(h, h_n, rtol=1e-12, atol=1e-14)


def test_step_without_out_leaves_the_given_state_untouched():
    gru = cgru.GRU(2, 3, seed=0)
    h = np.zeros((1, 3), np.float32)
    new = gru.step(np.ones(2, np.float32), h)
    assert np.all(h == 0) and not np.all(new == 0)
