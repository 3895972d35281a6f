"""Reduced precision: `quantize("bfloat16")` on cgru.GRU, the Keras-style layers and models,
and what every mode (int8 too: test_quantize_int8.py specifies its numbers) shares.

What is specified here:
  - what a quantized GRU computes: every W_hh rounded to the nearest bfloat16 (ties to even),
    and in every recurrent product the state (with reset_after=False, r * h for W_hn) rounded
    to bfloat16 too, each product exact and the sums in float32; W_ih, biases, gates and outputs
    stay float32. Mode "bfloat16_all" rounds every W_ih too, and multiplies it with the inputs
    as they are. An independent float64 emulation is the oracle, one step at a time from the
    engine's own states (one float32 ulp of a state next to a bfloat16 tie moves its rounded
    value by a whole bfloat16 step, so runs are compared step by step, not side by side), for
    the sequence forward and for step(), on batches below and above 4, one and two layers and
    directions, variable lengths and one and two threads;
  - the AVX512_BF16 kernel and the widening kernel give the same outputs;
  - how far this (and int8) moves a GRU: within 1e-2 of float32 over 1000 steps, and at most 1%
    on the demo forecaster's test RMSE;
  - a quantized GRU or model runs inference only, and refuses bad use by naming what is wrong;
  - its parameters: the rounded ones (W_hh, and W_ih with "bfloat16_all") read-only and
    exactly bfloat16, new values rounded in their turn;
  - to_bfloat16_bits rounding, copies and pickles, model files, and the exports that refuse (in
    every mode).
"""
import copy
import dataclasses
import pickle
import sys

import numpy as np
import pytest

import cgru
from cgru import _engine, cli, forecast, layers
from cgru.quantization import (QUANTIZATION_MODES, from_bfloat16_bits, from_int8, to_bfloat16_bits,
                               to_int8)
from cgru.interop import export_onnx, to_keras, to_torch
from step_oracle import (RH_MARGIN, assert_step_matches, check_layer_step_by_step,
                         check_step_layer_by_layer, cpu_has, first_layer_alone,
                         layer_weights)

# The modes whose numbers the bfloat16 oracle below gives
BFLOAT16_MODES = ["bfloat16", "bfloat16_all"]


# ---- the oracle -------------------------------------------------------------------------------

def bfloat16_value(a):
    """Each float32 of a rounded to the nearest bfloat16, ties to the even one, as float64:
    written from the definition (the two neighbours and their distances), not from cgru's bit
    arithmetic. For finite values below bfloat16's largest (all that weights and states hold)."""
    a = np.ascontiguousarray(a, np.float32)
    bits = a.view(np.uint32)
    toward_zero = bits & np.uint32(0xFFFF0000)
    away = toward_zero + np.uint32(0x10000)
    low = toward_zero.view(np.float32).astype(np.float64)
    high = away.view(np.float32).astype(np.float64)
    x = a.astype(np.float64)
    d_low, d_high = np.abs(x - low), np.abs(high - x)
    odd = ((toward_zero >> np.uint32(16)) & np.uint32(1)).astype(bool)
    return np.where((d_high < d_low) | ((d_high == d_low) & odd), high, low)


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def emulated_step(x, h, w_ih, w_hh, b_ih, b_hh, reset_after):
    """One bfloat16 GRU step in float64 for a batch, from the float32 state h the engine holds:
    (the new state, how far the engine may be from it beyond float32 rounding).

    w_hh is the float32 W_hh before quantize; the emulation rounds it itself. Only the operands
    of the recurrent products are rounded: h, and with reset_after=False r * h. That r * h comes
    from the engine's own r, which float32 places within RH_MARGIN of the emulation's; where a
    bfloat16 tie lies inside that margin the engine may round to the other neighbour, and the
    slack is what that can change: |W_hn| times the two neighbours' distance."""
    x, h = x.astype(np.float64), h.astype(np.float64)
    w_ih, b_ih, b_hh = (a.astype(np.float64) for a in (w_ih, b_ih, b_hh))
    w_hh = bfloat16_value(w_hh)
    H = h.shape[1]
    gi = x @ w_ih.T + b_ih
    hb = bfloat16_value(h)
    slack = np.zeros_like(h)
    if reset_after:
        gh = hb @ w_hh.T + b_hh
        r = sigmoid(gi[:, :H] + gh[:, :H])
        z = sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
        n = np.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
    else:
        gh = hb @ w_hh[:2 * H].T + b_hh[:2 * H]
        r = sigmoid(gi[:, :H] + gh[:, :H])
        z = sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
        rh = r * h
        ambiguity = bfloat16_value(rh + RH_MARGIN) - bfloat16_value(rh - RH_MARGIN)
        slack = ambiguity @ np.abs(w_hh[2 * H:]).T
        n = np.tanh(gi[:, 2 * H:] + bfloat16_value(rh) @ w_hh[2 * H:].T + b_hh[2 * H:])
    return (1.0 - z) * n + z * h, slack


def quantized_copy(gru, mode="bfloat16"):
    return copy.deepcopy(gru).quantize(mode)


def oracle_weights(before, mode):
    """The weights emulated_step takes for a GRU quantized in `mode` from `before` (its state
    dict): W_hh as it was (the emulation rounds it), W_ih rounded where the mode rounds it (the
    emulation multiplies the inputs as they are)."""
    if mode == "bfloat16":
        return before
    return {k: bfloat16_value(v).astype(np.float32) if k.startswith("weight_ih") else v
            for k, v in before.items()}


@pytest.fixture
def bf16_dot_mode():
    """_engine.set_bf16_dot_mode, always back to following the CPU (-1) afterwards."""
    yield _engine.set_bf16_dot_mode
    _engine.set_bf16_dot_mode(-1)


# ---- what it computes -------------------------------------------------------------------------

@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("H", [20, 64, 149])
@pytest.mark.parametrize("B", [1, 3, 5, 9])
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (1, True), (2, False),
                                                      (2, True)])
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("mode", BFLOAT16_MODES)
def test_the_quantized_forward_is_the_bfloat16_gru_at_every_step(mode, reset_after, num_layers,
                                                                 bidirectional, B, H, threads):
    """Batches of up to 4 and of more; hidden sizes with and without leftovers of the kernels'
    blocks of 16 units and of 32 k, 149 also odd (half a pair of k); one and two thread slices;
    variable lengths and an initial state."""
    cgru.set_num_threads(threads)
    rng = np.random.default_rng(1000 * B + H)
    T, I, D = 6, 7, 2 if bidirectional else 1
    gru = cgru.GRU(I, H, num_layers=num_layers, bidirectional=bidirectional,
                   reset_after=reset_after, seed=H + B)
    before = oracle_weights(gru.state_dict(), mode)
    gru.quantize(mode)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h0 = rng.uniform(-1, 1, (num_layers * D, B, H)).astype(np.float32)
    lengths = rng.integers(1, T + 1, size=B) if B > 1 else None
    y, h_n = gru(x, h0, lengths=lengths)
    what = f"B={B}, H={H}, {threads} thread(s)"
    if num_layers == 1:
        check_layer_step_by_step(emulated_step, x, y, h0, h_n, before, 0, D, reset_after, lengths,
                                 what)
        return
    # the first layer's outputs, from that layer run alone, feed the second layer's check
    y0, h_n0 = first_layer_alone(before, mode, x, h0, lengths, bidirectional, reset_after)
    check_layer_step_by_step(emulated_step, x, y0, h0[:D], h_n0, before, 0, D, reset_after, lengths,
                             what)
    np.testing.assert_allclose(h_n[:D], h_n0, rtol=0, atol=1e-6, err_msg=f"{what}: layer 0")
    check_layer_step_by_step(emulated_step, y0, y, h0[D:], h_n[D:], before, 1, D, reset_after,
                             lengths, what)


@pytest.mark.parametrize("reset_after", [True, False])
def test_a_hidden_size_beyond_one_chunk_of_the_state_sums_its_chunks(reset_after):
    """H = 601: the kernels round the state 256 pairs of k at a time (512 k), so a product over
    601 k adds a second chunk's sums to the first's, with half a pair left at the end."""
    cgru.set_num_threads(2)
    rng = np.random.default_rng(601)
    T, B, I, H = 3, 5, 4, 601
    gru = cgru.GRU(I, H, reset_after=reset_after, seed=6)
    before = gru.state_dict()
    gru.quantize("bfloat16")
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h0 = rng.uniform(-1, 1, (1, B, H)).astype(np.float32)
    y, h_n = gru(x, h0)
    check_layer_step_by_step(emulated_step, x, y, h0, h_n, before, 0, 1, reset_after, None,
                             f"H={H}")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("H", [20, 149])
@pytest.mark.parametrize("B", [1, 3, 9])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("mode", BFLOAT16_MODES)
def test_a_quantized_step_is_the_bfloat16_gru_step(mode, reset_after, num_layers, B, H, threads):
    """With "bfloat16_all" the input product runs on W_ih's strips, the inputs not rounded
    (the emulation's float64 product of the rounded W_ih and the inputs as they are)."""
    cgru.set_num_threads(threads)
    rng = np.random.default_rng(B + H)
    gru = cgru.GRU(5, H, num_layers=num_layers, reset_after=reset_after, seed=3)
    before = oracle_weights(gru.state_dict(), mode)
    gru.quantize(mode)
    x = rng.standard_normal((B, 5)).astype(np.float32)
    h = rng.uniform(-1, 1, (num_layers, B, H)).astype(np.float32)
    check_step_layer_by_layer(emulated_step, gru.step(x, h), x, h, before, reset_after)


@pytest.mark.parametrize("I", [37, 601])
@pytest.mark.parametrize("B", [1, 3])
def test_with_bfloat16_all_step_multiplies_inputs_of_any_width_by_the_rounded_w_ih(B, I):
    """W_ih's strips with K = I: odd, beyond 16 inputs, and beyond one chunk of 256 pairs (601:
    a second chunk's sums added to the first's, half a pair at the end). On one thread all three
    gates go in one product; on two, B = 3 with 601 inputs is work enough to split the units
    between them: one product per gate and slice."""
    rng = np.random.default_rng(I + B)
    gru = cgru.GRU(I, 40, seed=I)
    before = oracle_weights(gru.state_dict(), "bfloat16_all")
    gru.quantize("bfloat16_all")
    x = rng.standard_normal((B, I)).astype(np.float32)
    h = rng.uniform(-1, 1, (1, B, 40)).astype(np.float32)
    expected, slack = emulated_step(x, h[0], *layer_weights(before, 0, 0), True)
    for threads in (1, 2):
        cgru.set_num_threads(threads)
        assert_step_matches(gru.step(x, h)[0], expected, slack, f"{threads} thread(s)")


@pytest.mark.parametrize("B", [1, 3, 6])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("mode", BFLOAT16_MODES)
def test_a_quantized_step_gives_what_the_sequence_forward_gives_from_the_same_state(
        mode, reset_after, num_layers, B):
    """Along a sequence, step() (into out=h) and a forward over the step's input, both from the
    state the forward reached, agree on every layer's new state to float32 rounding. Compared
    from the same state, not run side by side: the two compute x W_ih^T in different orders, and
    one float32 ulp of a state where a bfloat16 tie lies moves its rounded value by a whole
    bfloat16 step. With reset_after=False the same can happen to r * h within a step, which
    emulated_step's slack bounds."""
    T, H = 8, 40
    gru = cgru.GRU(6, H, num_layers=num_layers, reset_after=reset_after, seed=7)
    before = oracle_weights(gru.state_dict(), mode)
    gru.quantize(mode)
    rng = np.random.default_rng(B)
    x = rng.standard_normal((T, B, 6)).astype(np.float32)
    state = rng.uniform(-1, 1, (num_layers, B, H)).astype(np.float32)
    for t in range(T):
        y, following = gru(x[t:t + 1], state)
        h = state.copy()
        returned = gru.step(x[t], h, out=h)
        assert returned is h
        layer_input = x[t]
        for layer in range(num_layers):
            _, slack = emulated_step(layer_input, state[layer], *layer_weights(before, layer, 0),
                                     reset_after)
            error = np.abs(h[layer] - following[layer])
            assert np.all(error <= 1e-6 + slack), f"t={t}, layer {layer}: off by {error.max()}"
            layer_input = h[layer]
        state = following


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_a_sequence_gets_the_same_outputs_bit_for_bit_whatever_batch_it_runs_in(bidirectional,
                                                                               threads):
    """Alone, in a batch of 4 or in a batch of 9: one kernel at every batch size, the state
    rounded in each. The inputs and W_ih are small multiples of 2**-8, so that x W_ih^T (BLAS,
    whose order of summation may change with the batch) is exact and any difference is the
    recurrent part's."""
    cgru.set_num_threads(threads)
    gru = cgru.GRU(5, 48, bidirectional=bidirectional, seed=2)
    rng = np.random.default_rng(0)
    for name in gru.params:
        if name.startswith("weight_ih"):
            gru.params[name][...] = rng.integers(-64, 65, gru.params[name].shape) / 256
    gru.quantize("bfloat16")
    x = rng.integers(-2, 3, (7, 9, 5)).astype(np.float32)
    whole, h_n = gru(x)
    for b in range(9):
        alone, h_alone = gru(x[:, b:b + 1])
        np.testing.assert_array_equal(whole[:, b], alone[:, 0], err_msg=f"sequence {b}")
        np.testing.assert_array_equal(h_n[:, b], h_alone[:, 0], err_msg=f"sequence {b}")
    fours = np.concatenate([gru(x[:, i:i + 4])[0] for i in range(0, 9, 4)], axis=1)
    np.testing.assert_array_equal(whole, fours)


def test_quantize_changes_only_the_recurrent_weights_and_returns_the_gru():
    gru = cgru.GRU(4, 24, num_layers=2, bidirectional=True, seed=1)
    before = gru.state_dict()
    assert gru.quantized is None
    assert gru.quantize("bfloat16") is gru
    assert gru.quantized == "bfloat16"
    assert list(QUANTIZATION_MODES) == ["bfloat16", "bfloat16_all", "int8"]
    assert not gru.training
    for name, value in gru.params.items():
        if name.startswith("weight_hh"):
            np.testing.assert_array_equal(value, bfloat16_value(before[name]).astype(np.float32))
            assert not np.array_equal(value, before[name])
        else:
            np.testing.assert_array_equal(value.view(np.uint32), before[name].view(np.uint32))


def test_quantize_bfloat16_all_rounds_the_input_weights_too():
    gru = cgru.GRU(4, 24, num_layers=2, bidirectional=True, seed=1)
    before = gru.state_dict()
    assert gru.quantize("bfloat16_all") is gru and gru.quantized == "bfloat16_all"
    for name, value in gru.params.items():
        if name.startswith("weight"):
            np.testing.assert_array_equal(value, bfloat16_value(before[name]).astype(np.float32))
            assert not value.flags.writeable
        else:
            np.testing.assert_array_equal(value.view(np.uint32), before[name].view(np.uint32))


# ---- the two kernels --------------------------------------------------------------------------

@pytest.mark.parametrize("H", [20, 64, 149])
@pytest.mark.parametrize("reset_after", [True, False])
def test_the_avx512_bf16_and_the_widening_kernels_give_the_same_outputs(bf16_dot_mode, H,
                                                                        reset_after):
    """Dot mode 1 takes AVX512_BF16's dot product where the CPU has it, mode 0 always widens; on
    a CPU without AVX512_BF16 both are the widening kernel, which holds its sums in wide or in
    narrow register tiles (tiles mode 1 or 0) and gives the same bits in both. (step()'s float32
    product by W_ih, rows_dot, sums in another order in narrow tiles: its results are compared
    within one tiles mode.)"""
    cgru.set_num_threads(2)
    gru = cgru.GRU(6, H, num_layers=2, reset_after=reset_after, seed=H).quantize("bfloat16")
    bi = cgru.GRU(6, H, bidirectional=True, reset_after=reset_after, seed=H).quantize("bfloat16")
    rng = np.random.default_rng(H)
    x = rng.standard_normal((9, 9, 6)).astype(np.float32)
    h = rng.uniform(-1, 1, (2, 9, H)).astype(np.float32)
    results = {}
    try:
        for dot, tiles in [(1, 1), (0, 1), (1, 0), (0, 0)]:
            bf16_dot_mode(dot)
            _engine.set_tiles_mode(tiles)
            if dot == 0:
                assert "widened" in _engine.bf16_kernel()
                assert ("64-byte" if tiles else "32-byte") in _engine.bf16_kernel()
            elif cpu_has("avx512_bf16"):
                assert "AVX512_BF16" in _engine.bf16_kernel()
            results[dot, tiles] = [gru(x[:, :1])[0], gru(x[:, :3])[0], gru(x)[0],
                                   bi(x, lengths=np.arange(1, 10))[0],
                                   gru.step(x[0, :1], h[:, :1]), gru.step(x[0], h)]
    finally:
        _engine.set_tiles_mode(-1)
    for tiles in (1, 0):
        for a, b in zip(results[0, tiles], results[1, tiles]):
            np.testing.assert_array_equal(a, b, err_msg=f"tiles mode {tiles}")
    for a, b in zip(results[0, 1][:4], results[0, 0][:4]):
        np.testing.assert_array_equal(a, b, err_msg="wide and narrow tiles")


@pytest.mark.parametrize("H", [20, 149])
def test_with_bfloat16_all_step_gives_the_same_bits_in_wide_and_narrow_tiles(bf16_dot_mode, H):
    """The input product on W_ih's strips (inputs not rounded) sums each unit's terms in one
    order in both tiles, as the recurrent product does; the test above covers the rest."""
    cgru.set_num_threads(2)
    gru = cgru.GRU(37, H, num_layers=2, seed=H).quantize("bfloat16_all")
    rng = np.random.default_rng(H)
    x = rng.standard_normal((9, 37)).astype(np.float32)
    h = rng.uniform(-1, 1, (2, 9, H)).astype(np.float32)
    results = {}
    try:
        bf16_dot_mode(0)
        for tiles in (1, 0):
            _engine.set_tiles_mode(tiles)
            results[tiles] = [gru.step(x[:1], h[:, :1]), gru.step(x[:3], h[:, :3]),
                              gru.step(x, h)]
    finally:
        _engine.set_tiles_mode(-1)
    for a, b in zip(results[1], results[0]):
        np.testing.assert_array_equal(a, b)


# ---- accuracy ---------------------------------------------------------------------------------

@pytest.mark.parametrize("H", [128, 512])
@pytest.mark.parametrize("mode", list(QUANTIZATION_MODES))
def test_over_1000_steps_quantized_outputs_stay_within_1e_2_of_float32(mode, H):
    """Default initialisation, unit-scale inputs, a batch of 4: both the sequence forward and
    step() by step."""
    gru = cgru.GRU(32, H, seed=H).eval()
    quantized = quantized_copy(gru, mode)
    x = np.random.default_rng(H).standard_normal((1000, 4, 32)).astype(np.float32)
    y, h_n = gru(x)
    y_q, h_n_q = quantized(x)
    error = np.abs(y_q - y).max()
    assert 0 < error <= 1e-2
    assert np.abs(h_n_q - h_n).max() <= 1e-2
    h = np.zeros((1, 4, H), np.float32)
    h_q = np.zeros((1, 4, H), np.float32)
    step_error = 0.0
    for t in range(1000):
        gru.step(x[t], h, out=h)
        quantized.step(x[t], h_q, out=h_q)
        step_error = max(step_error, float(np.abs(h_q - h).max()))
    assert 0 < step_error <= 1e-2


def test_the_demo_forecaster_loses_at_most_1_percent_of_its_test_rmse():
    """The demo's model (cli.DEMO: two GRU layers of 128 and 64 units, window 104, horizon 13)
    on the shipped weekly CO2 series, split and scaled as `cgru demo` does. It trains for 12
    epochs instead of the demo's 100 (early stopping ends the demo at 49, about a minute on two
    cores): long enough for a forecaster far better than the baselines, short enough for here."""
    _, values = forecast.read_series(forecast.DEMO_CSV, "co2", "date")
    series = forecast.fill_gaps(values)
    settings = dataclasses.replace(cli.DEMO, epochs=12)
    model, report, _ = forecast.train_forecaster(series, settings, verbose=0)
    inputs, targets = forecast.make_windows(series, settings.window, settings.horizon)
    parts = forecast.split_by_time(len(series), settings.window, settings.horizon)
    scaler = forecast.Scaler.fit(inputs[parts.train], targets[parts.train])
    x_test = scaler.inputs(inputs[parts.test])
    float32_rmse = report["test_rmse"]
    assert float32_rmse < min(b["rmse"] for b in report["baselines"].values())
    assert forecast.rmse(scaler.forecasts(inputs[parts.test], model.predict(x_test)),
                         targets[parts.test]) == float32_rmse
    for mode in QUANTIZATION_MODES:
        quantized = copy.deepcopy(model)
        quantized.quantize(mode)
        outputs = quantized.predict(x_test)
        assert not np.array_equal(outputs, model.predict(x_test))
        quantized_rmse = forecast.rmse(scaler.forecasts(inputs[parts.test], outputs),
                                       targets[parts.test])
        assert quantized_rmse <= 1.01 * float32_rmse, mode


# ---- inference only ---------------------------------------------------------------------------

def test_a_quantized_gru_refuses_training_and_still_infers():
    gru = cgru.GRU(3, 8, seed=0)
    x = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)
    gru(x)  # a training forward pending: quantize drops it
    gru.quantize("bfloat16")
    with pytest.raises(RuntimeError, match="quantized"):
        gru.train()
    with pytest.raises(RuntimeError, match="quantized"):
        gru.train(True)
    with pytest.raises(RuntimeError, match="quantized"):
        gru.backward(np.ones((4, 2, 8), np.float32))
    gru.training = True  # set directly, not through train()
    with pytest.raises(RuntimeError, match="quantized"):
        gru(x)
    gru.eval()
    assert gru.train(False) is gru and not gru.training
    y, h_n = gru(x)
    assert y.shape == (4, 2, 8) and np.all(np.isfinite(y))
    np.testing.assert_allclose(gru.step(x[0]), gru(x[:1])[1], rtol=0, atol=1e-6)


def gru_model(seed=0):
    model = cgru.Sequential([cgru.Input((None, 3)), layers.GRU(16, return_sequences=True),
                             layers.GRU(8), layers.Dense(2)], seed=seed)
    model.compile("adam", "mse")
    return model


def test_a_quantized_model_refuses_to_train_naming_its_layers_and_still_predicts_and_evaluates():
    model = gru_model()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 12, 3)).astype(np.float32)
    y = rng.standard_normal((20, 2)).astype(np.float32)
    model.fit(x, y, epochs=1, verbose=0)
    quantized = copy.deepcopy(model)
    quantized.quantize("bfloat16")
    names = [layer.name for layer in quantized.layers if isinstance(layer, layers.GRU)]
    assert len(names) == 2
    weights = [w.copy() for w in quantized.get_weights()]
    for call in (lambda: quantized.fit(x, y, epochs=1, verbose=0),
                 lambda: quantized.train_on_batch(x, y),
                 lambda: quantized.gradients(x, y)):
        with pytest.raises(RuntimeError, match="quantized") as raised:
            call()
        assert all(name in str(raised.value) for name in names)
    with pytest.raises(RuntimeError, match="quantized"):
        quantized(x, training=True)
    for before, after in zip(weights, quantized.get_weights()):
        np.testing.assert_array_equal(before, after)
    predicted = quantized.predict(x)
    assert 0 < np.abs(predicted - model.predict(x)).max() <= 1e-2
    assert abs(quantized.evaluate(x, y, verbose=0) - model.evaluate(x, y, verbose=0)) <= 1e-2
    model.train_on_batch(x, y)  # the float32 original still trains


def test_a_bidirectional_layer_is_quantized_in_both_directions_by_model_quantize():
    inputs = cgru.Input((None, 3))
    h = layers.Bidirectional(layers.GRU(6, return_sequences=True), name="bi")(inputs)
    outputs = layers.Dense(1)(layers.GRU(4, name="top")(h))
    model = cgru.Model(inputs, outputs)
    model.compile("adam", "mse")
    model.quantize("bfloat16")
    bi = model.get_layer("bi")
    assert bi.quantized == "bfloat16" and bi.layer.quantized == "bfloat16"
    for name in ("weight_hh_l0", "weight_hh_l0_reverse"):
        w = bi.layer.params[name]
        assert not w.flags.writeable
        np.testing.assert_array_equal(w, from_bfloat16_bits(to_bfloat16_bits(w)))
    x = np.zeros((2, 5, 3), np.float32)
    with pytest.raises(RuntimeError, match="'bi'"):
        model.train_on_batch(x, np.zeros((2, 1), np.float32))


# ---- bad use ----------------------------------------------------------------------------------

def test_an_unknown_mode_is_refused_naming_the_modes():
    gru = cgru.GRU(2, 3)
    with pytest.raises(ValueError, match=r"mode must be one of \['bfloat16', 'bfloat16_all', "
                                         r"'int8'\], got 'int4'"):
        gru.quantize("int4")
    assert gru.quantized is None and gru.train() is gru


def test_a_float64_gru_is_refused_naming_its_dtype():
    gru = cgru.GRU(2, 3, dtype="float64")
    with pytest.raises(TypeError, match="float32 GRU.*float64"):
        gru.quantize("bfloat16")
    assert gru.quantized is None


def test_quantizing_twice_is_refused():
    gru = cgru.GRU(2, 3).quantize("bfloat16")
    with pytest.raises(ValueError, match="already quantized"):
        gru.quantize("bfloat16")


def test_an_unbuilt_layer_cannot_be_quantized():
    layer = layers.GRU(4, name="encoder")
    with pytest.raises(ValueError, match="'encoder'.*built"):
        layer.quantize("bfloat16")
    assert layer.quantized is None


def test_model_quantize_needs_a_gru_layer_and_no_layer_already_quantized():
    dense_only = cgru.Sequential([cgru.Input((3,)), layers.Dense(2, name="head")])
    with pytest.raises(ValueError, match="no GRU layer.*'head'"):
        dense_only.quantize("bfloat16")
    model = gru_model()
    first = model.get_layer(index=0)
    first.quantize("bfloat16")
    with pytest.raises(ValueError, match=f"{first.name!r}.*already quantized"):
        model.quantize("bfloat16")
    other = gru_model()
    with pytest.raises(ValueError, match="mode must be one of"):
        other.quantize("float16")
    assert all(layer.quantized is None for layer in other.layers if hasattr(layer, "quantized"))


def test_a_layer_refuses_an_unknown_quantized_setting():
    with pytest.raises(ValueError, match="quantized must be None or one of.*'int4'"):
        layers.GRU(4, quantized="int4")


# ---- parameters -------------------------------------------------------------------------------

def test_quantized_recurrent_weights_are_read_only_bfloat16_values():
    gru = cgru.GRU(3, 17, num_layers=2, bidirectional=True, seed=4).quantize("bfloat16")
    for name, value in gru.params.items():
        if name.startswith("weight_hh"):
            assert not value.flags.writeable
            np.testing.assert_array_equal(from_bfloat16_bits(to_bfloat16_bits(value)), value)
            with pytest.raises(ValueError, match="read-only"):
                value[0, 0] = 1.0
            with pytest.raises(ValueError, match="read-only"):
                getattr(gru, name)[...] = 0.0
        else:
            assert value.flags.writeable


def assign_attribute(gru, w):
    gru.weight_hh_l0 = w


def assign_state_dict(gru, w):
    gru.load_state_dict({**gru.state_dict(), "weight_hh_l0": w})


def replace_params_entry(gru, w):
    gru.params["weight_hh_l0"] = w.copy()


@pytest.mark.parametrize("first_call", ["forward", "step"])
@pytest.mark.parametrize("assign", [assign_attribute, assign_state_dict, replace_params_entry])
def test_a_new_recurrent_weight_takes_effect_rounded_to_bfloat16(assign, first_call):
    """As if the weight had been set before quantize: a fresh GRU given it, then quantized,
    computes the same, bit for bit."""
    rng = np.random.default_rng(0)
    w = rng.uniform(-0.3, 0.3, (3 * 20, 20)).astype(np.float32)
    x = rng.standard_normal((5, 2, 4)).astype(np.float32)
    gru = cgru.GRU(4, 20, seed=1).quantize("bfloat16")
    old = gru(x)[0]
    assign(gru, w)
    expected = cgru.GRU(4, 20, seed=1)
    expected.weight_hh_l0 = w
    expected.quantize("bfloat16")
    if first_call == "forward":
        np.testing.assert_array_equal(gru(x)[0], expected(x)[0])
        np.testing.assert_array_equal(gru.step(x[0]), expected.step(x[0]))
    else:
        np.testing.assert_array_equal(gru.step(x[0]), expected.step(x[0]))
        np.testing.assert_array_equal(gru(x)[0], expected(x)[0])
    assert not np.array_equal(gru(x)[0], old)
    value = gru.params["weight_hh_l0"]
    np.testing.assert_array_equal(value, bfloat16_value(w).astype(np.float32))
    assert not value.flags.writeable and gru.quantized == "bfloat16"


@pytest.mark.parametrize("first_call", ["forward", "step"])
def test_with_bfloat16_all_a_new_input_weight_takes_effect_rounded_to_bfloat16(first_call):
    rng = np.random.default_rng(3)
    w = rng.uniform(-0.3, 0.3, (3 * 20, 4)).astype(np.float32)
    x = rng.standard_normal((5, 2, 4)).astype(np.float32)
    gru = cgru.GRU(4, 20, seed=1).quantize("bfloat16_all")
    gru.params["weight_ih_l0"] = w.copy()
    expected = cgru.GRU(4, 20, seed=1)
    expected.weight_ih_l0 = w
    expected.quantize("bfloat16_all")
    calls = [lambda g: g(x)[0], lambda g: g.step(x[0])]
    for call in calls if first_call == "forward" else calls[::-1]:
        np.testing.assert_array_equal(call(gru), call(expected))
    np.testing.assert_array_equal(gru.weight_ih_l0, bfloat16_value(w).astype(np.float32))
    assert not gru.weight_ih_l0.flags.writeable


@pytest.mark.parametrize("mode", QUANTIZATION_MODES)
def test_a_step_whose_weight_is_replaced_again_while_it_is_quantized_still_runs_once(mode):
    """As when another thread assigns W_hh in a tight loop: the weight step() quantized is
    replaced again before the step can run on it. The step runs, on the newest weight quantized
    into a private copy (no retrying for as long as the other thread goes on), and leaves the
    GRU's params as that thread left them."""
    rng = np.random.default_rng(4)
    w = rng.uniform(-0.3, 0.3, (3 * 20, 20)).astype(np.float32)
    x = rng.standard_normal((2, 4)).astype(np.float32)
    h = rng.uniform(-1, 1, (1, 2, 20)).astype(np.float32)
    gru = cgru.GRU(4, 20, seed=1).eval().quantize(mode)
    expected = cgru.GRU(4, 20, seed=1).eval()
    expected.weight_hh_l0 = w
    expected = expected.quantize(mode).step(x, h)
    refreshes = []

    def quantize_then_replace_again(checked=False):
        refreshes.append(checked)
        assert len(refreshes) < 10, "step() kept quantizing a weight that kept changing"
        type(gru)._refresh_quantized(gru, checked)
        gru.params["weight_hh_l0"] = w.copy()

    gru.params["weight_hh_l0"] = w.copy()
    gru._refresh_quantized = quantize_then_replace_again
    np.testing.assert_array_equal(gru.step(x, h), expected)
    assert refreshes and gru.params["weight_hh_l0"].flags.writeable  # the other thread's array
    del gru._refresh_quantized
    np.testing.assert_array_equal(gru.step(x, h), expected)
    assert not gru.params["weight_hh_l0"].flags.writeable  # quantized in place, as usual


def test_input_weights_and_biases_of_a_quantized_gru_stay_float32_when_assigned():
    gru = cgru.GRU(4, 20, seed=1).quantize("bfloat16")
    w = np.full((60, 4), 0.1234567, np.float32)
    gru.weight_ih_l0 = w
    np.testing.assert_array_equal(gru.weight_ih_l0, w)
    assert gru.weight_ih_l0.flags.writeable


# ---- to_bfloat16_bits -------------------------------------------------------------------------

ROUNDINGS = [  # float32 bits -> bfloat16 bits
    (0x3F800000, 0x3F80),  # 1.0, exact
    (0x3F807FFF, 0x3F80),  # just below a tie: down
    (0x3F808000, 0x3F80),  # a tie, the even neighbour below
    (0x3F808001, 0x3F81),  # just above a tie: up
    (0x3F818000, 0x3F82),  # a tie, the even neighbour above
    (0xBF818000, 0xBF82),  # the same, negative
    (0x3FFF8000, 0x4000),  # a tie carried into the exponent: 2.0
    (0x00008000, 0x0000),  # a tie at the smallest subnormal: zero
    (0x80018000, 0x8002),  # a negative subnormal tie, up to even
    (0x7F7FFFFF, 0x7F80),  # the largest float32 is nearer 2**128 than bfloat16's largest
    (0x7F800000, 0x7F80),  # +inf
    (0xFF800000, 0xFF80),  # -inf
]


@pytest.mark.parametrize("bits,expected", ROUNDINGS)
def test_to_bfloat16_bits_rounds_to_nearest_with_ties_to_even(bits, expected):
    value = np.array([bits], np.uint32).view(np.float32)
    result = to_bfloat16_bits(value)
    assert result.dtype == np.uint16 and result.shape == (1,)
    assert int(result[0]) == expected, f"{bits:#010x} -> {int(result[0]):#06x}"


@pytest.mark.parametrize("bits", [0x7FC00000, 0x7F800001, 0xFF800001, 0x7FFFFFFF, 0xFFFFFFFF])
def test_to_bfloat16_bits_keeps_nan_a_nan(bits):
    """Including NaNs whose payload lies only in the lower half, and those that rounding up
    would carry into the sign or turn into an infinity."""
    value = np.array([bits], np.uint32).view(np.float32)
    back = from_bfloat16_bits(to_bfloat16_bits(value))
    assert np.isnan(back[0])
    assert np.signbit(back[0]) == bool(bits >> 31)


def test_to_bfloat16_bits_agrees_with_nearest_by_distance_on_random_floats():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    ties = (bits & np.uint32(0xFFFF0000)) | np.uint32(0x8000)
    bits = np.concatenate([bits, ties])
    bits = bits[(bits & np.uint32(0x7FFFFFFF)) < np.uint32(0x7F7F8000)]  # below the overflow tie
    values = bits.view(np.float32)
    np.testing.assert_array_equal(from_bfloat16_bits(to_bfloat16_bits(values)),
                                  bfloat16_value(values).astype(np.float32))


def test_from_bfloat16_bits_is_the_upper_half_of_a_float32():
    bits = np.array([0x3F81, 0xC040, 0x0001, 0x0000, 0x8000], np.uint16)
    np.testing.assert_array_equal(from_bfloat16_bits(bits).view(np.uint32),
                                  bits.astype(np.uint32) << 16)
    assert from_bfloat16_bits(bits)[0] == 1.0078125


# ---- copies and pickles -----------------------------------------------------------------------

@pytest.mark.parametrize("mode", list(QUANTIZATION_MODES))
@pytest.mark.parametrize("duplicate", [copy.deepcopy, lambda g: pickle.loads(pickle.dumps(g))],
                         ids=["deepcopy", "pickle"])
def test_copies_and_pickles_keep_the_quantization(duplicate, mode):
    gru = cgru.GRU(3, 20, num_layers=2, seed=5).quantize(mode)
    x = np.random.default_rng(1).standard_normal((6, 3, 3)).astype(np.float32)
    twin = duplicate(gru)
    assert twin.quantized == mode
    np.testing.assert_array_equal(twin(x)[0], gru(x)[0])
    np.testing.assert_array_equal(twin.step(x[0]), gru.step(x[0]))
    for name in ("weight_hh_l0", "weight_hh_l1") + (("weight_ih_l0", "weight_ih_l1")
                                                     if mode == "bfloat16_all" else ()):
        assert not twin.params[name].flags.writeable
        np.testing.assert_array_equal(twin.params[name], gru.params[name])
    with pytest.raises(RuntimeError, match="quantized"):
        twin.train()
    w = np.random.default_rng(3).uniform(-0.3, 0.3, (60, 20)).astype(np.float32)
    twin.weight_hh_l0 = w  # still quantized on assignment
    if mode == "int8":
        np.testing.assert_array_equal(twin.weight_hh_l0, from_int8(*to_int8(w)))
    else:
        np.testing.assert_array_equal(twin.weight_hh_l0, bfloat16_value(w).astype(np.float32))


def test_a_gru_pickled_before_quantize_existed_loads_unquantized():
    gru = cgru.GRU(2, 4, seed=0)
    state = gru.__getstate__()
    for key in ("_strips", "_quantized_of"):
        del state[key]
    old = cgru.GRU.__new__(cgru.GRU)
    old.__setstate__(state)
    assert old.quantized is None
    x = np.ones((3, 2), np.float32)
    np.testing.assert_array_equal(old(x)[0], gru(x)[0])
    old.quantize("bfloat16")
    assert old.quantized == "bfloat16"


@pytest.mark.parametrize("mode", BFLOAT16_MODES)
def test_a_bfloat16_gru_pickled_before_int8_existed_loads_quantized(mode):
    # its state named the strips and their values for bfloat16, the one format there was then
    gru = cgru.GRU(3, 20, seed=4).quantize(mode)
    state = gru.__getstate__()
    state["_bfloat16"], state["_bfloat16_of"] = state.pop("_strips"), state.pop("_quantized_of")
    old = cgru.GRU.__new__(cgru.GRU)
    old.__setstate__(state)
    assert old.quantized == mode
    x = np.random.default_rng(4).standard_normal((5, 2, 3)).astype(np.float32)
    np.testing.assert_array_equal(old(x)[0], gru(x)[0])
    np.testing.assert_array_equal(old.step(x[0]), gru.step(x[0]))


@pytest.mark.parametrize("mode", list(QUANTIZATION_MODES))
def test_a_quantized_gru_pickled_with_other_strips_lays_them_out_again_on_load(mode):
    # the strips are the engine's working layout, not the model: a pickle made by an engine that
    # laid them out otherwise (here: zeros of another size) loads as the same quantized GRU
    gru = cgru.GRU(3, 128, seed=2).quantize(mode)
    state = gru.__getstate__()
    state["_strips"] = {k: np.zeros((v.shape[0] - 3, v.shape[1]), v.dtype)
                        for k, v in state["_strips"].items()}
    old = cgru.GRU.__new__(cgru.GRU)
    old.__setstate__(state)
    x = np.random.default_rng(2).standard_normal((5, 2, 3)).astype(np.float32)
    np.testing.assert_array_equal(old(x)[0], gru(x)[0])
    np.testing.assert_array_equal(old.step(x[0]), gru.step(x[0]))

# ---- model files ------------------------------------------------------------------------------

def bidirectional_model():
    inputs = cgru.Input((None, 3))
    h = layers.Bidirectional(layers.GRU(6, return_sequences=True), name="bi")(inputs)
    h = layers.GRU(4, name="top")(h)
    model = cgru.Model(inputs, layers.Dense(2, name="head")(h))
    model.compile("adam", "mse")
    return model


@pytest.mark.parametrize("mode", list(QUANTIZATION_MODES))
@pytest.mark.parametrize("build", [gru_model, bidirectional_model])
def test_a_saved_quantized_model_loads_quantized_and_predicts_bit_identically(tmp_path, build,
                                                                              mode):
    model = build()
    x = np.random.default_rng(2).standard_normal((5, 9, 3)).astype(np.float32)
    model.fit(x, np.zeros((5, 2), np.float32), epochs=1, verbose=0)
    model.quantize(mode)
    path = tmp_path / "quantized.cgru"
    model.save(path)
    loaded = cgru.load_model(path)
    quantized = [layer for layer in loaded.layers if hasattr(layer, "quantized")]
    assert len(quantized) == 2
    assert all(layer.quantized == mode for layer in quantized)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    with pytest.raises(RuntimeError, match="quantized"):
        loaded.train_on_batch(x, np.zeros((5, 2), np.float32))


def test_a_layer_config_without_the_quantized_key_builds_an_unquantized_layer():
    """Files written before quantize existed have no 'quantized' in their GRU configs."""
    config = layers.GRU(4, name="old").get_config()
    assert config["quantized"] is None
    del config["quantized"]
    layer = layers.GRU.from_config(config)
    assert layer.quantized is None
    model = cgru.Sequential([cgru.Input((None, 2)), layer])
    model.compile("adam", "mse")
    model.train_on_batch(np.ones((2, 3, 2), np.float32), np.zeros((2, 4), np.float32))


def test_a_layer_configured_quantized_stores_bfloat16_weights_once_built():
    layer = layers.GRU(5, quantized="bfloat16")
    assert layer.get_config()["quantized"] == "bfloat16"
    model = cgru.Sequential([cgru.Input((None, 2)), layer])
    assert model.predict(np.ones((1, 3, 2), np.float32)).shape == (1, 5)
    w = layer.params["weight_hh_l0"]
    assert layer.quantized == "bfloat16" and not w.flags.writeable
    np.testing.assert_array_equal(w, from_bfloat16_bits(to_bfloat16_bits(w)))


# ---- exports ----------------------------------------------------------------------------------

@pytest.fixture
def no_frameworks(monkeypatch):
    """torch, onnx and keras made unimportable: a refusal must come before any import."""
    for name in ("torch", "onnx", "keras"):
        monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.parametrize("mode", list(QUANTIZATION_MODES))
def test_onnx_export_refuses_a_quantized_gru_naming_its_mode(no_frameworks, tmp_path, mode):
    gru = cgru.GRU(3, 4).quantize(mode)
    path = tmp_path / "gru.onnx"
    with pytest.raises(ValueError, match=rf"\({mode}\) holds quantized weights"):
        export_onnx(gru, path)
    assert not path.exists()


@pytest.mark.parametrize("mode", list(QUANTIZATION_MODES))
def test_to_torch_refuses_a_quantized_gru_naming_its_mode(no_frameworks, mode):
    with pytest.raises(ValueError, match=rf"\({mode}\) holds quantized weights"):
        to_torch(cgru.GRU(3, 4).quantize(mode))


@pytest.mark.parametrize("build", [gru_model, bidirectional_model])
def test_exports_refuse_a_quantized_model_naming_bfloat16_and_its_layers(no_frameworks, tmp_path,
                                                                         build):
    model = build()
    model.quantize("bfloat16")
    names = [layer.name for layer in model.layers if getattr(layer, "quantized", None)]
    with pytest.raises(ValueError, match="bfloat16") as raised:
        to_keras(model)
    assert all(f"'{name}'" in str(raised.value) for name in names)
    if build is gru_model:
        path = tmp_path / "model.onnx"
        with pytest.raises(ValueError, match="bfloat16"):
            export_onnx(model, path)
        assert not path.exists()
