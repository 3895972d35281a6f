"""`quantize("int8")`: what an int8 GRU computes, and what it refuses.

What is specified here (test_quantize.py holds what every mode shares: inference only, the
accuracy contracts, copies, pickles, files and exports):
  - the weights: every W_hh row j as int8 q[j, k] = rint(W[j, k] / s[j]) with s[j] = max_k
    |W[j, k]| / 127 in float32, params holding q s (read-only); quantizing that value again
    gives it back, so that saved and pickled GRUs load with the same weights;
  - the recurrent product: each row of its operand (h, and with reset_after=False r * h)
    quantized to u = rint(a * (127 / max|a|)) with scale max|a| / 127, the integer sums exact,
    then (float)sum * s[j] * scale in float32. An independent emulation of that product, with
    float64 gates, is the oracle, one step at a time from the engine's own states (as
    test_quantize.py does for bfloat16), for the sequence forward and for step();
  - exact integer sums make every result independent of the kernel (AVX512_VNNI or 32-bit
    lanes), the batch a sequence runs in, and the number of threads: the same bits;
  - hostile values: weights with NaN or infinities are refused naming the weight, changing
    nothing; a state row of zeros, of huge values, or with a NaN gives zeros, finite values, NaN.
"""
import copy

import numpy as np
import pytest

import cgru
from cgru import _engine
from cgru.quantization import from_int8, to_int8
from step_oracle import (RH_MARGIN, check_layer_step_by_step, check_step_layer_by_layer,
                         cpu_has, first_layer_alone)

F32 = np.float32


# ---- the oracle -------------------------------------------------------------------------------

def int8_weights(w):
    """(q as float64, s) of a weight (N, K), from the definition."""
    w = np.asarray(w, F32)
    s = np.abs(w).max(axis=1) / F32(127)
    q = np.rint(w / np.where(s > 0, s, F32(1))[:, None])
    return q.astype(np.float64), s


def operand_of(a):
    """(u, scale) of the rows of a (B, K) float32 operand: u = rint(a * (127 / max|a|)) (0 for a
    row of zeros), scale = max|a| / 127, each in float32."""
    a = np.asarray(a, F32)
    top = np.abs(a).max(axis=1)
    inv = np.where(top > 0, F32(127) / np.where(top > 0, top, F32(1)), F32(0)).astype(F32)
    return np.rint(a * inv[:, None]), top / F32(127)


def int8_product(a, q, s):
    """a (B, K) W^T as the engine computes it: exact integer sums, scaled in float32."""
    u, scale = operand_of(a)
    sums = u.astype(np.int64) @ q.astype(np.int64).T
    return (sums.astype(F32) * s) * scale[:, None]


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def emulated_step(x, h, w_ih, w_hh, b_ih, b_hh, reset_after):
    """One int8 GRU step for a batch, from the float32 state h the engine holds: (the new state,
    how far the engine may be from it beyond float32 rounding). w_hh is the float32 W_hh before
    quantize. With reset_after=False, r * h comes from the engine's float32 r, within RH_MARGIN
    of the emulation's: an element of u whose rounding that margin can change (through it or
    through the row's maximum) may be one off, which moves the product by |q| s scale."""
    q, s = int8_weights(w_hh)
    H = h.shape[1]
    gi = x.astype(np.float64) @ w_ih.astype(np.float64).T + b_ih
    slack = np.zeros(h.shape)
    if reset_after:
        gh = int8_product(h, q, s).astype(np.float64) + b_hh
        r = sigmoid(gi[:, :H] + gh[:, :H])
        z = sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
        n = np.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
    else:
        gh = int8_product(h, q[:2 * H], s[:2 * H]).astype(np.float64) + b_hh[:2 * H]
        r = sigmoid(gi[:, :H] + gh[:, :H])
        z = sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
        rh = (r * h).astype(F32)
        u, scale = operand_of(rh)
        top = 127 * scale.astype(np.float64)[:, None]
        v = rh * (127 / np.where(top > 0, top, 1))
        reach = (127 * RH_MARGIN / np.where(top > 0, top, 1)
                 * (1 + np.abs(rh) / np.maximum(top, 1e-30)))
        ambiguous = np.rint(v - reach) != np.rint(v + reach)
        slack = (ambiguous * scale[:, None]) @ (np.abs(q[2 * H:]) * s[2 * H:, None]).T
        n = np.tanh(gi[:, 2 * H:] + int8_product(rh, q[2 * H:], s[2 * H:]) + b_hh[2 * H:])
    return (1.0 - z) * n + z * h.astype(np.float64), slack


@pytest.fixture
def int8_dot_mode():
    """_engine.set_int8_dot_mode, always back to following the CPU (-1) afterwards."""
    yield _engine.set_int8_dot_mode
    _engine.set_int8_dot_mode(-1)


# ---- the weights ------------------------------------------------------------------------------

def test_quantize_int8_changes_only_the_recurrent_weights_to_their_int8_values():
    gru = cgru.GRU(4, 24, num_layers=2, bidirectional=True, seed=1)
    before = gru.state_dict()
    assert gru.quantize("int8") is gru and gru.quantized == "int8"
    for name, value in gru.params.items():
        if name.startswith("weight_hh"):
            q, s = int8_weights(before[name])
            assert np.abs(q).max() == 127 and np.all(np.abs(q).max(axis=1) == 127)
            np.testing.assert_array_equal(value, (q.astype(F32) * s[:, None]))
            assert not value.flags.writeable
            assert np.abs(value - before[name]).max() <= s.max() / 2 * (1 + 1e-6)
        else:
            np.testing.assert_array_equal(value.view(np.uint32), before[name].view(np.uint32))


def test_to_int8_maps_each_rows_largest_magnitude_to_127_and_a_row_of_zeros_to_zeros():
    w = np.array([[0.5, -1.0, 0.25], [0, 0, 0], [3e-5, 1e-5, -2e-5]], F32)
    q, s = to_int8(w)
    assert q.dtype == np.int8 and s.dtype == F32
    np.testing.assert_array_equal(q, [[64, -127, 32], [0, 0, 0], [127, 42, -85]])
    np.testing.assert_array_equal(s, np.abs(w).max(axis=1) / F32(127))
    np.testing.assert_array_equal(from_int8(q, s)[1], 0)


def test_quantizing_an_int8_value_again_gives_it_back():
    """Rows whose largest magnitude runs over every float32 significand of a few binades and
    over exponents from 2**-60 to 2**60: (q, s) of q s are q and s again."""
    rng = np.random.default_rng(0)
    significands = np.arange(2**16, dtype=np.uint32) << np.uint32(7)
    tops = []
    for exponent in (-60, -7, -1, 0, 3, 60):
        tops.append((significands | np.uint32((127 + exponent) << 23)).view(F32))
    top = np.concatenate(tops)
    rows = rng.uniform(-1, 1, (len(top), 5)).astype(F32) * top[:, None]
    rows[:, 0] = top
    q, s = to_int8(rows)
    value = from_int8(q, s)
    q_again, s_again = to_int8(value)
    np.testing.assert_array_equal(s_again, s)
    np.testing.assert_array_equal(q_again, q)
    np.testing.assert_array_equal(from_int8(q_again, s_again), value)


def test_an_int8_grus_state_dict_loads_into_another_with_the_same_weights_and_outputs():
    gru = cgru.GRU(3, 40, num_layers=2, seed=9).quantize("int8")
    state = copy.deepcopy(gru.state_dict())
    twin = cgru.GRU(3, 40, num_layers=2, seed=1).quantize("int8")
    twin.load_state_dict(state)
    for name, value in gru.params.items():
        np.testing.assert_array_equal(twin.params[name], value)
    x = np.random.default_rng(9).standard_normal((7, 2, 3)).astype(F32)
    np.testing.assert_array_equal(twin(x)[0], gru(x)[0])


# ---- what it computes -------------------------------------------------------------------------

@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("H", [20, 64, 149])
@pytest.mark.parametrize("B", [1, 3, 5, 9])
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (1, True), (2, False),
                                                      (2, True)])
@pytest.mark.parametrize("reset_after", [True, False])
def test_the_int8_forward_is_the_emulated_int8_gru_at_every_step(reset_after, num_layers,
                                                                 bidirectional, B, H, threads):
    """Batches of up to 4 and of more (tiles of 4 rows); hidden sizes with and without leftovers
    of 16 units and of 4 k; one and two thread slices; variable lengths, an initial state."""
    cgru.set_num_threads(threads)
    rng = np.random.default_rng(1000 * B + H)
    T, I, D = 6, 7, 2 if bidirectional else 1
    gru = cgru.GRU(I, H, num_layers=num_layers, bidirectional=bidirectional,
                   reset_after=reset_after, seed=H + B)
    before = gru.state_dict()
    gru.quantize("int8")
    x = rng.standard_normal((T, B, I)).astype(F32)
    h0 = rng.uniform(-1, 1, (num_layers * D, B, H)).astype(F32)
    lengths = rng.integers(1, T + 1, size=B) if B > 1 else None
    y, h_n = gru(x, h0, lengths=lengths)
    what = f"B={B}, H={H}, {threads} thread(s)"
    if num_layers == 1:
        check_layer_step_by_step(emulated_step, x, y, h0, h_n, before, 0, D, reset_after, lengths,
                                 what)
        return
    # the first layer's outputs, from that layer run alone, feed the second layer's check
    y0, h_n0 = first_layer_alone(before, "int8", x, h0, lengths, bidirectional, reset_after)
    np.testing.assert_array_equal(h_n[:D], h_n0, err_msg=f"{what}: layer 0")
    check_layer_step_by_step(emulated_step, x, y0, h0[:D], h_n0, before, 0, D, reset_after, lengths,
                             what)
    check_layer_step_by_step(emulated_step, y0, y, h0[D:], h_n[D:], before, 1, D, reset_after,
                             lengths, what)


@pytest.mark.parametrize("reset_after", [True, False])
def test_a_hidden_size_beyond_one_chunk_of_quads_sums_its_chunks(reset_after):
    """H = 1100: the kernels quantize a row 256 quads (1024 k) at a time, so a product over
    1100 k carries its integer sums into a second chunk, which ends inside a quad."""
    cgru.set_num_threads(2)
    rng = np.random.default_rng(1100)
    T, B, I, H = 3, 5, 4, 1100
    gru = cgru.GRU(I, H, reset_after=reset_after, seed=6)
    before = gru.state_dict()
    gru.quantize("int8")
    x = rng.standard_normal((T, B, I)).astype(F32)
    h0 = rng.uniform(-1, 1, (1, B, H)).astype(F32)
    y, h_n = gru(x, h0)
    check_layer_step_by_step(emulated_step, x, y, h0, h_n, before, 0, 1, reset_after, None,
                             f"H={H}")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("H", [20, 149])
@pytest.mark.parametrize("B", [1, 3, 9])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("reset_after", [True, False])
def test_an_int8_step_is_the_emulated_int8_gru_step(reset_after, num_layers, B, H, threads):
    cgru.set_num_threads(threads)
    rng = np.random.default_rng(B + H)
    gru = cgru.GRU(5, H, num_layers=num_layers, reset_after=reset_after, seed=3)
    before = gru.state_dict()
    gru.quantize("int8")
    x = rng.standard_normal((B, 5)).astype(F32)
    h = rng.uniform(-1, 1, (num_layers, B, H)).astype(F32)
    check_step_layer_by_layer(emulated_step, gru.step(x, h), x, h, before, reset_after)


@pytest.mark.parametrize("H", [20, 149])
@pytest.mark.parametrize("reset_after", [True, False])
def test_results_are_the_same_bits_on_either_kernel_any_batch_and_any_thread_count(
        int8_dot_mode, reset_after, H):
    """Integer sums are exact, each row and unit scaled on its own: the VNNI kernel (mode 1,
    where the CPU has it) and the 32-bit lanes (mode 0), a sequence alone or in a batch of 9,
    on one thread or two, all give the same bits. The inputs and W_ih are small multiples of
    2**-8, so that x W_ih^T (BLAS, whose order of summation may change) is exact too."""
    gru = cgru.GRU(5, H, num_layers=2, reset_after=reset_after, seed=2)
    rng = np.random.default_rng(0)
    for name in gru.params:
        if name.startswith("weight_ih"):
            gru.params[name][...] = rng.integers(-64, 65, gru.params[name].shape) / 256
    gru.quantize("int8")
    x = rng.integers(-2, 3, (7, 9, 5)).astype(F32)
    h = rng.uniform(-1, 1, (2, 9, H)).astype(F32)
    results = {}
    for dot in (1, 0):
        int8_dot_mode(dot)
        if dot == 0:
            assert "32-bit lanes" in _engine.int8_kernel()
        elif cpu_has("avx512_vnni"):
            assert "AVX512_VNNI" in _engine.int8_kernel()
        for threads in (1, 2):
            cgru.set_num_threads(threads)
            whole = gru(x)[0]
            alone = np.concatenate([gru(x[:, b:b + 1])[0] for b in range(9)], axis=1)
            np.testing.assert_array_equal(whole, alone, err_msg=f"dot {dot}, {threads} threads")
            results[dot, threads] = [whole, gru.step(x[0], h), gru.step(x[0, :1], h[:, :1])]
    reference = results[1, 1]
    for key, found in results.items():
        for a, b in zip(found, reference):
            np.testing.assert_array_equal(a, b, err_msg=f"dot mode, threads {key}")


@pytest.mark.parametrize("dot", [1, 0])
@pytest.mark.parametrize("H, K", [(20, 5), (64, 128), (149, 1030), (3, 1100)])
def test_the_engines_int8_product_is_the_definition_bit_for_bit(int8_dot_mode, dot, H, K):
    """The product every int8 step computes, on its own: a (M, K) W^T with W in int8 strips is
    the definition to the last bit, for 1 to 9 rows (the row tiles and their leftovers), units
    that leave part of a 16-unit strip, inputs that cross the 1024-input chunks of int32 sums,
    rows of zeros, of huge values and with a NaN, on either kernel."""
    int8_dot_mode(dot)
    rng = np.random.default_rng(H * K)
    w = rng.standard_normal((3 * H, K)).astype(F32)
    w[1] = 0
    q, s = to_int8(w)
    strips = _engine.int8_strips(q, s)
    q64, s64 = int8_weights(w)
    np.testing.assert_array_equal(q, q64)
    for M in range(1, 10):
        a = rng.uniform(-3, 3, (M, K)).astype(F32)
        if M >= 4:
            a[1] = 0
            a[2] *= F32(1e30)
            a[3, K // 2] = np.nan
        found = _engine.int8_product(a, strips, H)
        expected = int8_product(np.nan_to_num(a, nan=0.0), q64, s64)
        if M >= 4:
            expected[3] = np.nan
        np.testing.assert_array_equal(found, expected, err_msg=f"M {M}")


# ---- hostile values ---------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_weights_that_are_not_finite_are_refused_naming_the_weight_and_nothing_changes(bad):
    gru = cgru.GRU(3, 8, num_layers=2, seed=0)
    gru.params["weight_hh_l1"][2, 3] = bad
    before = copy.deepcopy(gru.state_dict())
    with pytest.raises(ValueError, match="weight_hh_l1 holds NaN or infinite values"):
        gru.quantize("int8")
    assert gru.quantized is None and gru.params["weight_hh_l0"].flags.writeable
    for name, value in gru.state_dict().items():
        np.testing.assert_array_equal(value, before[name])

    good = cgru.GRU(3, 8, seed=0).quantize("int8")
    kept = good.weight_hh_l0.copy()
    w = np.full((24, 8), 0.1, F32)
    w[0, 0] = bad
    with pytest.raises(ValueError, match="weight_hh_l0 holds NaN or infinite values"):
        good.weight_hh_l0 = w
    state = good.state_dict()
    state["weight_hh_l0"] = w
    state["bias_ih_l0"] = np.zeros(24, F32)
    with pytest.raises(ValueError, match="weight_hh_l0 holds NaN or infinite values"):
        good.load_state_dict(state)
    np.testing.assert_array_equal(good.weight_hh_l0, kept)
    assert np.any(good.bias_ih_l0 != 0)  # load_state_dict changed nothing


def test_a_state_row_of_zeros_huge_values_or_a_nan_gives_zeros_finite_values_or_nan():
    gru = cgru.GRU(2, 16, bias=False, seed=4).quantize("int8")
    x = np.zeros((3, 2), F32)
    h = np.zeros((1, 3, 16), F32)
    h[0, 1] = 1e30
    h[0, 1, 3] = -3e30
    h[0, 2, 5] = np.nan
    new = gru.step(x, h)
    assert np.all(new[0, 0] == 0)  # no bias, no input, no state: exactly zero
    assert np.all(np.isfinite(new[0, 1]))
    assert np.all(np.isnan(new[0, 2]))
    y, _ = gru(x[None], h)
    np.testing.assert_array_equal(y[0], new[0])
