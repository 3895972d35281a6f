"""Bad input gets a precise exception or a correct result, never a crash."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import cgru


@pytest.fixture
def gru():
    return cgru.GRU(4, 6, num_layers=2, seed=0)


def x_of(shape, dtype=np.float32):
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("shape", [(4,), (2, 3, 4, 1), ()])
def test_x_with_wrong_ndim_is_refused(gru, shape):
    with pytest.raises(ValueError, match=r"x must be \(T, B, input_size\)"):
        gru(np.zeros(shape, np.float32))


def test_x_with_wrong_feature_count_names_input_size(gru):
    with pytest.raises(ValueError, match="input_size=4 features in its last dimension, got 5"):
        gru(x_of((3, 2, 5)))


def test_mismatched_dtype_is_a_type_error_naming_both(gru):
    with pytest.raises(TypeError, match="x has dtype float64 but the GRU's parameters are float32"):
        gru(x_of((3, 2, 4), np.float64))


def test_integer_input_is_a_type_error(gru):
    with pytest.raises(TypeError, match="x has dtype int64"):
        gru(np.ones((3, 2, 4), np.int64))


def test_h0_with_wrong_shape_names_the_expected_shape(gru):
    with pytest.raises(ValueError, match=r"h0 must have shape .* = \(2, 2, 6\), got \(1, 2, 6\)"):
        gru(x_of((3, 2, 4)), np.zeros((1, 2, 6), np.float32))


def test_h0_with_other_dtype_is_a_type_error(gru):
    with pytest.raises(TypeError, match="h0 has dtype float64"):
        gru(x_of((3, 2, 4)), np.zeros((2, 2, 6)))


@pytest.mark.parametrize("lengths,match", [
    ([0, 3], r"lengths must lie in \[1, T\] = \[1, 3\]"),
    ([4, 3], r"lengths must lie in \[1, T\]"),
    ([1, 2, 3], r"lengths must have shape \(batch,\) = \(2,\)"),
])
def test_lengths_out_of_range_or_shape_are_refused(gru, lengths, match):
    with pytest.raises(ValueError, match=match):
        gru(x_of((3, 2, 4)), lengths=lengths)


def test_non_integer_lengths_are_a_type_error(gru):
    with pytest.raises(TypeError, match="lengths must hold integers, got dtype float64"):
        gru(x_of((3, 2, 4)), lengths=[1.0, 2.0])


@pytest.mark.parametrize("shape,match", [((0, 2, 4), "0 time steps"), ((3, 0, 4), "batch of 0")])
def test_empty_time_or_batch_is_a_clear_error(gru, shape, match):
    with pytest.raises(ValueError, match=match):
        gru(np.zeros(shape, np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_propagate_without_crashing(gru, bad):
    x = x_of((5, 3, 4))
    x[2, 1, 0] = bad
    y, h_n = gru(x)
    dx, _ = gru.backward(np.ones_like(y))
    if np.isnan(bad):
        assert np.isnan(y[2:, 1]).all() and np.isfinite(y[:, [0, 2]]).all()
    assert np.isfinite(y[:2]).all()
    assert dx.shape == x.shape


def test_non_contiguous_fortran_and_read_only_inputs_give_the_contiguous_result(gru):
    gru.eval()
    x = x_of((5, 3, 4))
    expected, expected_h = gru(x)
    fortran = np.asfortranarray(x)
    strided = np.repeat(x, 2, axis=2)[:, :, ::2]
    read_only = x.copy()
    read_only.flags.writeable = False
    for variant in (fortran, strided, read_only):
        y, h_n = gru(variant)
        np.testing.assert_array_equal(y, expected)
        np.testing.assert_array_equal(h_n, expected_h)


def test_backward_before_any_training_forward_is_refused(gru):
    with pytest.raises(RuntimeError, match="backward needs a forward in training mode"):
        gru.backward(np.zeros((3, 2, 6), np.float32))


def test_backward_after_an_eval_forward_is_refused(gru):
    gru.eval()
    y, _ = gru(x_of((3, 2, 4)))
    with pytest.raises(RuntimeError, match="backward needs a forward in training mode"):
        gru.backward(np.ones_like(y))


def test_second_backward_for_one_forward_is_refused(gru):
    y, _ = gru(x_of((3, 2, 4)))
    gru.backward(np.ones_like(y))
    with pytest.raises(RuntimeError, match="backward was already called"):
        gru.backward(np.ones_like(y))


def test_dy_with_wrong_shape_is_refused_and_backward_stays_available(gru):
    y, _ = gru(x_of((3, 2, 4)))
    with pytest.raises(ValueError, match=r"dy must have the shape of the forward's output"):
        gru.backward(np.ones((3, 2, 5), np.float32))
    gru.backward(np.ones_like(y))


def test_changing_x_after_forward_does_not_change_the_gradients(gru):
    x = x_of((3, 2, 4))
    y, _ = gru(x)
    gru.backward(np.ones_like(y))
    expected = {k: v.copy() for k, v in gru.grads.items()}
    gru.zero_grad()
    y, _ = gru(x)
    x[...] = 100.0
    gru.backward(np.ones_like(y))
    for k in expected:
        np.testing.assert_array_equal(gru.grads[k], expected[k])


@pytest.mark.parametrize("kwargs,match", [
    (dict(input_size=0, hidden_size=3), "input_size must be an integer >= 1, got 0"),
    (dict(input_size=2, hidden_size=-1), "hidden_size must be an integer >= 1, got -1"),
    (dict(input_size=2, hidden_size=3, num_layers=0), "num_layers must be"),
    (dict(input_size=2, hidden_size=3, dropout=1.0), r"dropout must be a number in \[0, 1\)"),
])
def test_constructor_refuses_bad_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cgru.GRU(**kwargs)


def test_constructor_refuses_other_dtypes():
    with pytest.raises(TypeError, match="dtype must be 'float32' or 'float64', got 'float16'"):
        cgru.GRU(2, 3, dtype="float16")


def test_load_state_dict_names_missing_unexpected_and_misshapen_entries(gru):
    state = gru.state_dict()
    del state["weight_ih_l0"]
    state["weight_ih_l9"] = np.zeros(1)
    with pytest.raises(KeyError, match=r"missing keys \['weight_ih_l0'\], unexpected keys "
                                       r"\['weight_ih_l9'\]"):
        gru.load_state_dict(state)
    state = gru.state_dict()
    state["bias_hh_l1"] = np.zeros(5)
    with pytest.raises(ValueError, match=r"'bias_hh_l1' must have shape \(18,\), got \(5,\)"):
        gru.load_state_dict(state)


def test_a_failed_load_leaves_the_parameters_unchanged(gru):
    before = gru.state_dict()
    state = gru.state_dict()
    state["weight_ih_l0"] = np.ones_like(state["weight_ih_l0"])
    state["bias_hh_l1"] = np.zeros(5)
    with pytest.raises(ValueError):
        gru.load_state_dict(state)
    for k, v in before.items():
        np.testing.assert_array_equal(gru.params[k], v)


def test_replaced_parameter_of_wrong_shape_is_refused_at_forward(gru):
    gru.params["weight_hh_l0"] = np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError, match=r"params\['weight_hh_l0'\] must have shape \(18, 6\)"):
        gru(x_of((3, 2, 4)))


def test_replaced_parameters_are_checked_by_step_too():
    gru = cgru.GRU(4, 6, num_layers=2)
    x_t, h = np.zeros((2, 4), np.float32), np.zeros((2, 2, 6), np.float32)
    gru.params["weight_hh_l1"] = np.zeros((6, 18), np.float32)  # the right size, transposed
    with pytest.raises(ValueError, match=r"params\['weight_hh_l1'\] must have shape \(18, 6\)"):
        gru.step(x_t, h)
    gru.params["weight_hh_l1"] = np.zeros((18, 6))  # float64
    with pytest.raises(TypeError, match=r"params\['weight_hh_l1'\] must be a C-contiguous float32"):
        gru.step(x_t, h)
    del gru.params["bias_ih_l0"]
    with pytest.raises(KeyError, match=r"params is missing 'bias_ih_l0'"):
        gru.step(x_t, h)


def test_step_refuses_bidirectional_and_bad_shapes():
    with pytest.raises(ValueError, match="unidirectional"):
        cgru.GRU(2, 3, bidirectional=True).step(np.zeros(2, np.float32), np.zeros((2, 3), np.float32))
    gru = cgru.GRU(2, 3, num_layers=2)
    with pytest.raises(ValueError, match=r"h must have shape \(2, 4, 3\)"):
        gru.step(np.zeros((4, 2), np.float32), np.zeros((1, 4, 3), np.float32))
    with pytest.raises(ValueError, match="x_t must have 2 features"):
        gru.step(np.zeros((4, 5), np.float32), np.zeros((2, 4, 3), np.float32))
    with pytest.raises(ValueError, match="out must be a writeable C-contiguous float32 array"):
        gru.step(np.zeros((4, 2), np.float32), np.zeros((2, 4, 3), np.float32),
                 out=np.zeros((2, 4, 3)))


def test_a_battery_of_bad_calls_never_crashes_the_interpreter():
    code = textwrap.dedent("""
        import numpy as np, cgru
        g = cgru.GRU(3, 4, num_layers=2, bidirectional=True)
        bad_calls = [
            lambda: g(np.zeros((2, 2, 3), np.float32), lengths=[2 ** 40, 1]),
            lambda: g(np.zeros((2, 2, 3), np.float32), np.zeros((4, 2, 4), np.float32)[:, :, ::2]),
            lambda: g(np.zeros((1, 1, 3), np.float32).view(np.int32)),
            lambda: g.backward(None),
            lambda: g(object()),
            lambda: g.load_state_dict({k: "text" for k in g.params}),
            lambda: cgru._engine.layer_forward(np.zeros((1, 1, 1), np.float32), 0, None, None,
                                               None, np.zeros((1, 1, 1), np.float32), None, None,
                                               np.zeros((3, 1), np.float32), None, None, None,
                                               True, False, False, 1),
        ]
        for call in bad_calls:
            try:
                call()
            except (ValueError, TypeError, KeyError, RuntimeError, AttributeError):
                pass
        print("survived")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "survived" in result.stdout
