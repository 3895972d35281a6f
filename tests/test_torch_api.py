"""What a PyTorch user reaches for on `cgru.GRU`, compared with `torch.nn.GRU` where both have it:
named_parameters() / parameters(), the parameters as attributes, step(x_t, None) for a zero
state, a repr in torch's format, and torch's warning for dropout with one layer."""
import copy
import pickle
import warnings

import numpy as np
import pytest

import cgru
from cgru import interop

OPTIONS = [dict(num_layers=1), dict(num_layers=2), dict(num_layers=2, bidirectional=True),
           dict(num_layers=3, bidirectional=True, bias=False)]


def option_id(options):
    return "-".join(f"{k}={v}" for k, v in options.items())


# ---- named_parameters() and parameters() ---------------------------------------------------------


@pytest.mark.parametrize("options", OPTIONS, ids=option_id)
def test_named_parameters_have_torchs_names_order_and_shapes(options):
    torch = pytest.importorskip("torch")
    module = torch.nn.GRU(5, 7, **options)
    gru = cgru.GRU(5, 7, **options)
    expected = [(name, tuple(p.shape)) for name, p in module.named_parameters()]
    assert [(name, p.shape) for name, p in gru.named_parameters()] == expected
    assert [p.shape for p in gru.parameters()] == [shape for _, shape in expected]


def test_named_parameters_take_torchs_prefix():
    gru = cgru.GRU(2, 3)
    assert [name for name, _ in gru.named_parameters(prefix="encoder")][:2] == \
        ["encoder.weight_ih_l0", "encoder.weight_hh_l0"]


def test_parameters_are_the_live_arrays_so_changing_them_in_place_changes_the_gru():
    gru = cgru.GRU(3, 4, seed=0).eval()
    x = np.ones((2, 1, 3), np.float32)
    before = gru(x)[0]
    for name, p in gru.named_parameters():
        assert p is gru.params[name]
    for p in gru.parameters():
        p *= 0  # as `with torch.no_grad(): p.zero_()`
    assert np.all(gru(x)[0] == 0) and not np.all(before == 0)


def test_named_parameters_feed_an_optimizer_step_as_in_a_torch_training_loop():
    gru = cgru.GRU(3, 4, seed=0)
    y, _ = gru(np.ones((5, 2, 3), np.float32))
    gru.backward(np.ones_like(y))
    expected = {k: v - 0.1 * gru.grads[k] for k, v in gru.params.items()}
    for name, p in gru.named_parameters():
        p -= 0.1 * gru.grads[name]
    for name, value in expected.items():
        np.testing.assert_array_equal(gru.params[name], value)


# ---- the parameters as attributes ----------------------------------------------------------------


def test_each_parameter_is_an_attribute_holding_the_live_array():
    gru = cgru.GRU(3, 4, num_layers=2, bidirectional=True)
    for name, value in gru.params.items():
        assert getattr(gru, name) is value
    gru.weight_hh_l1_reverse[0, 0] = 5.0
    assert gru.params["weight_hh_l1_reverse"][0, 0] == 5.0


def test_attributes_match_torchs_after_converting_a_torch_module():
    torch = pytest.importorskip("torch")
    module = torch.nn.GRU(3, 4, num_layers=2, bidirectional=True)
    gru = interop.from_torch(module)
    for name, _ in module.named_parameters():
        np.testing.assert_array_equal(getattr(gru, name), getattr(module, name).detach().numpy())


def test_a_parameter_this_gru_does_not_have_is_an_attribute_error_as_in_torch():
    cgru.GRU(2, 2, num_layers=3, bidirectional=True)  # these names exist on some GRU
    gru = cgru.GRU(2, 2, bias=False)
    for name in ("weight_ih_l1", "weight_ih_l0_reverse", "bias_ih_l0", "no_such_thing"):
        with pytest.raises(AttributeError, match=name):
            getattr(gru, name)
        assert not hasattr(gru, name)
    names = dir(gru)
    assert "weight_ih_l0" in names and "weight_ih_l1" not in names


def test_assigning_a_parameter_copies_the_values_into_the_live_array():
    gru = cgru.GRU(3, 4, seed=0)
    live = gru.weight_ih_l0
    new = np.arange(36, dtype=np.float64).reshape(12, 3)  # float64 into a float32 GRU: cast
    gru.weight_ih_l0 = new
    assert gru.weight_ih_l0 is live and live.dtype == np.float32
    np.testing.assert_array_equal(live, new.astype(np.float32))
    new[0, 0] = -1  # a copy: the caller's array stays the caller's
    assert live[0, 0] == 0


def test_assigning_a_torch_parameter_copies_its_values():
    torch = pytest.importorskip("torch")
    module = torch.nn.GRU(3, 4)
    gru = cgru.GRU(3, 4)
    gru.weight_hh_l0 = module.weight_hh_l0  # a Parameter that requires grad
    np.testing.assert_array_equal(gru.weight_hh_l0, module.weight_hh_l0.detach().numpy())


def test_assigning_a_wrong_shape_or_a_non_float_array_is_refused_and_changes_nothing():
    gru = cgru.GRU(3, 4, seed=0)
    before = gru.weight_ih_l0.copy()
    with pytest.raises(ValueError, match=r"'weight_ih_l0' has shape \(12, 3\), got an array of "
                                         r"shape \(3, 12\)"):
        gru.weight_ih_l0 = np.zeros((3, 12))
    with pytest.raises(TypeError, match="'weight_ih_l0' takes a floating-point array, got "
                                        "dtype int64"):
        gru.weight_ih_l0 = np.zeros((12, 3), np.int64)
    np.testing.assert_array_equal(gru.weight_ih_l0, before)


def test_assigning_restores_a_parameter_that_params_lost_or_had_replaced():
    gru = cgru.GRU(3, 4)
    gru.params["weight_ih_l0"] = np.zeros((1, 1))  # unusable by the engine
    gru.weight_ih_l0 = np.ones((12, 3))
    assert gru.params["weight_ih_l0"].shape == (12, 3)
    gru.eval()(np.ones((2, 1, 3), np.float32))  # the engine accepts it again


def test_a_parameter_cannot_be_deleted_or_added_by_attribute():
    gru = cgru.GRU(3, 4)
    with pytest.raises(AttributeError, match="cannot be deleted"):
        del gru.weight_ih_l0
    cgru.GRU(3, 4, num_layers=2)
    with pytest.raises(AttributeError, match="no parameter 'weight_ih_l1'"):
        gru.weight_ih_l1 = np.zeros((12, 4))


@pytest.mark.parametrize("duplicate", [pickle.loads, copy.copy, copy.deepcopy],
                         ids=["pickle", "copy", "deepcopy"])
def test_copies_and_unpickled_grus_have_their_own_parameter_attributes(duplicate):
    gru = cgru.GRU(3, 4, num_layers=2, seed=0)
    other = duplicate(pickle.dumps(gru)) if duplicate is pickle.loads else duplicate(gru)
    assert other.weight_ih_l1 is other.params["weight_ih_l1"]
    if duplicate is not copy.copy:  # a shallow copy shares its params dict, as for any object
        other.weight_ih_l1 = np.zeros((12, 4))
        assert not np.all(gru.weight_ih_l1 == 0)


# ---- step(x_t, None) -----------------------------------------------------------------------------


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
def test_step_with_no_state_starts_from_zeros(batched):
    gru = cgru.GRU(3, 5, num_layers=2, seed=0)
    x_t = np.random.default_rng(0).standard_normal((4, 3) if batched else 3).astype(np.float32)
    zeros = np.zeros((2, 4, 5) if batched else (2, 5), np.float32)
    expected = gru.step(x_t, zeros)
    np.testing.assert_array_equal(gru.step(x_t, None), expected)
    np.testing.assert_array_equal(gru.step(x_t), expected)
    out = np.empty_like(zeros)
    assert gru.step(x_t, None, out=out) is out
    np.testing.assert_array_equal(out, expected)


def test_step_with_no_state_equals_torch_from_no_state():
    torch = pytest.importorskip("torch")
    module = torch.nn.GRU(3, 5, num_layers=2).double()
    gru = interop.from_torch(module)
    x_t = np.random.default_rng(1).standard_normal((4, 3))
    _, h_n = module(torch.from_numpy(x_t[None]), None)
    np.testing.assert_allclose(gru.step(x_t, None), h_n.detach().numpy(), rtol=1e-10,
                               atol=1e-12)


def test_step_with_no_state_refuses_an_input_of_the_wrong_rank():
    with pytest.raises(ValueError, match=r"x_t \(B, input_size\) or \(input_size,\), got shape "
                                         r"\(1, 2, 3\)"):
        cgru.GRU(3, 5).step(np.zeros((1, 2, 3), np.float32))


# ---- repr ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [
    {}, dict(num_layers=2), dict(bias=False), dict(batch_first=True),
    dict(num_layers=2, dropout=0.1), dict(bidirectional=True),
    dict(num_layers=3, bias=False, batch_first=True, dropout=0.25, bidirectional=True),
], ids=lambda o: option_id(o) or "defaults")
def test_repr_reads_as_torchs(options):
    torch = pytest.importorskip("torch")
    assert repr(cgru.GRU(8, 32, **options)) == repr(torch.nn.GRU(8, 32, **options))


def test_repr_adds_cgrus_own_options_when_they_differ_from_their_defaults():
    gru = cgru.GRU(8, 32, num_layers=2, batch_first=True, dropout=0.1, reset_after=False,
                   dtype="float64")
    assert repr(gru) == ("GRU(8, 32, num_layers=2, batch_first=True, dropout=0.1, "
                         "reset_after=False, dtype='float64')")


def test_repr_is_the_call_that_builds_the_same_architecture():
    gru = cgru.GRU(4, 6, num_layers=2, bias=False, dropout=0.5, bidirectional=True,
                   reset_after=False, dtype="float64")
    rebuilt = eval("cgru." + repr(gru))
    assert repr(rebuilt) == repr(gru)
    assert {k: v.shape for k, v in rebuilt.params.items()} == \
        {k: v.shape for k, v in gru.params.items()}


def test_repr_follows_settings_changed_after_construction():
    gru = cgru.GRU(2, 3, num_layers=2)
    gru.batch_first = True
    gru.dropout = 0.5
    assert repr(gru) == "GRU(2, 3, num_layers=2, batch_first=True, dropout=0.5)"


# ---- dropout with one layer ----------------------------------------------------------------------


def test_dropout_with_one_layer_warns_as_torch_does():
    torch = pytest.importorskip("torch")
    with pytest.warns(UserWarning) as ours:
        cgru.GRU(3, 4, dropout=0.5)
    with pytest.warns(UserWarning) as theirs:
        torch.nn.GRU(3, 4, dropout=0.5)
    assert [str(w.message) for w in ours] == [str(w.message) for w in theirs]
    assert "non-zero dropout expects num_layers greater than 1" in str(ours[0].message)
    assert ours[0].filename == __file__  # the warning points at the user's line


def test_setting_dropout_later_on_one_layer_warns_too():
    gru = cgru.GRU(3, 4)
    with pytest.warns(UserWarning, match="got dropout=0.25 and num_layers=1") as record:
        gru.dropout = 0.25
    assert record[0].filename == __file__
    assert gru.dropout == 0.25  # a warning, not a refusal (as torch)


def test_no_warning_for_several_layers_or_no_dropout():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cgru.GRU(3, 4, num_layers=2, dropout=0.5).dropout = 0.1
        cgru.GRU(3, 4, dropout=0.0).dropout = 0
