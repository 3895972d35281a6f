"""cgru._checks: one wording for every setting's check, naming the owner and the argument."""
import numpy as np
import pytest

import cgru
from cgru import _checks, callbacks, losses, optimizers


def test_a_refusal_names_the_owner_the_argument_the_requirement_and_the_value():
    with pytest.raises(ValueError, match=r"^GRU: hidden_size must be an integer >= 1, got 0$"):
        _checks.positive_int(0, "hidden_size", "GRU")
    with pytest.raises(ValueError, match=r"^rate must be a number in \[0, 1\), got 1.0$"):
        _checks.rate(1.0, "rate")  # no owner: no prefix


@pytest.mark.parametrize("value", [3, np.int64(3), np.int32(3), np.uint8(3)])
def test_integers_may_be_python_or_numpy_and_come_back_as_python_ints(value):
    result = _checks.positive_int(value, "units", "Dense")
    assert result == 3 and type(result) is int


@pytest.mark.parametrize("value", [0.5, np.float32(0.5), np.float64(0.5)])
def test_numbers_may_be_python_or_numpy_and_come_back_as_python_floats(value):
    assert type(_checks.rate(value, "dropout")) is float
    assert type(_checks.positive(value, "learning_rate")) is float


def test_a_whole_number_stays_an_int_where_any_number_is_allowed():
    assert type(_checks.positive(1000, "decay_steps")) is int


@pytest.mark.parametrize("check, value", [
    (_checks.positive_int, True), (_checks.non_negative_int, False), (_checks.rate, True),
    (_checks.positive, True), (_checks.non_negative, False),
])
def test_bool_is_not_a_number_here(check, value):
    with pytest.raises(ValueError, match="got " + repr(value)):
        check(value, "x", "Owner")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), np.float32("nan")])
def test_nan_and_infinities_are_refused(value):
    for check in (_checks.positive, _checks.non_negative, _checks.rate):
        with pytest.raises(ValueError, match="must be a number"):
            check(value, "x")


@pytest.mark.parametrize("value", [1.5, "3", None, [3]])
def test_integers_refuse_what_is_not_an_integer(value):
    with pytest.raises(ValueError, match="patience must be an integer >= 0"):
        _checks.non_negative_int(value, "patience", "EarlyStopping")


def test_ranges_say_which_ends_are_open():
    with pytest.raises(ValueError, match=r"must be a number in \(0, 1\), got 0"):
        _checks.number(0, "validation_split", "fit", low=0, high=1, low_open=True,
                       high_open=True)
    with pytest.raises(ValueError, match="must be a number > 0 or None, got -1"):
        _checks.positive(-1, "clipnorm", "SGD", optional=True)
    assert _checks.positive(None, "clipnorm", "SGD", optional=True) is None


def test_flags_take_python_and_numpy_bools_only():
    assert _checks.flag(np.bool_(True), "batch_first") is True
    with pytest.raises(TypeError, match="GRU: batch_first must be True or False, got 1"):
        _checks.flag(1, "batch_first", "GRU")


# ---- the modules use them ------------------------------------------------------------------------


@pytest.mark.parametrize("make, message", [
    (lambda: cgru.GRU(0, 3), "GRU: input_size must be an integer >= 1, got 0"),
    (lambda: cgru.GRU(2, np.int64(0)), "GRU: hidden_size must be an integer >= 1"),
    (lambda: cgru.GRU(2, 3, num_layers=True), "GRU: num_layers must be an integer >= 1"),
    (lambda: cgru.GRU(2, 3, num_layers=2, dropout=float("nan")), "GRU: dropout must be a number"),
    (lambda: cgru.set_num_threads(0), "set_num_threads: n must be an integer >= 1"),
    (lambda: optimizers.SGD(momentum=1.0), r"SGD: momentum must be a number in \[0, 1\)"),
    (lambda: optimizers.Adam(weight_decay=-1), "Adam: weight_decay must be a number >= 0"),
    (lambda: optimizers.RMSprop(clipnorm=0), "RMSprop: clipnorm must be a number > 0 or None"),
    (lambda: optimizers.SGD(learning_rate=float("nan")), "SGD: learning_rate must be a number > 0"),
    (lambda: optimizers.schedules.StepDecay(0.1, step_size=0), "StepDecay: step_size must be"),
    (lambda: callbacks.EarlyStopping(patience=-1), "EarlyStopping: patience must be an integer"),
    (lambda: losses.Huber(delta=0), "Huber: delta must be a number > 0"),
])
def test_each_module_words_its_refusals_the_same_way(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_numpy_numbers_are_accepted_where_python_ones_are():
    gru = cgru.GRU(np.int64(2), np.int32(3), num_layers=np.int64(2), dropout=np.float32(0.5))
    assert (gru.input_size, gru.hidden_size, gru.num_layers) == (2, 3, 2)
    assert optimizers.SGD(np.float32(0.5), momentum=np.float64(0.9)).momentum == 0.9
    assert optimizers.schedules.StepDecay(0.1, step_size=np.int64(10)).step_size == 10
