"""Every kernel of the per-step products (src_c/product.h) gives the reference's results.

The time loop multiplies by W_hh either on panels packed once per call (the default on CPUs with
AVX2 or AVX-512) or on the weights as they lie (elsewhere), where the batch and the size of W_hh
pick one row at a time, two rows at a time, or BLAS; step() never packs. The kernels hold their
sums in wide register tiles (64-byte vectors, for AVX-512) or narrow ones (32-byte, for AVX2).
Every pairing is forced here in turn, whatever this CPU has, on shapes that reach every kernel and
the edges of the panel product: batches around its tiles' rows, hidden sizes around its panel
width and the thread slices, W_hh on both sides of the 512 KB that product.h counts as cached, and
all four gate layouts (reset_after x training).
"""
import numpy as np
import pytest

import cgru
from cgru import _engine
from conftest import assert_close, run_engine_and_reference

# (panels mode, tiles mode) of each path: see _engine.set_panels_mode and set_tiles_mode
PATHS = {"panels, wide tiles": (1, 1), "panels, narrow tiles": (1, 0),
         "unpacked, wide tiles": (0, 1), "unpacked, narrow tiles": (0, 0)}


def use_path(path):
    panels, tiles = PATHS[path] if path else (-1, -1)  # None: back to following the CPU
    _engine.set_panels_mode(panels)
    _engine.set_tiles_mode(tiles)


@pytest.fixture(params=sorted(PATHS))
def product_path(request):
    use_path(request.param)
    yield request.param
    use_path(None)


@pytest.mark.parametrize("B", [1, 2, 3, 4, 5, 8, 9, 13])
@pytest.mark.parametrize("H", [1, 20, 32, 97, 150])
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("threads", [1, 2])
def test_each_path_matches_the_reference_in_float64(product_path, B, H, reset_after, threads):
    cgru.set_num_threads(threads)
    config = dict(T=5, B=B, I=7, H=H, num_layers=1, bidirectional=True, reset_after=reset_after,
                  dtype="float64", batch_first=False, bias=True, lengths=B > 1)
    engine, ref = run_engine_and_reference(config, np.random.default_rng(B * 1000 + H))
    for name in ref:
        assert_close(engine[name], ref[name], "float64", what=f"{product_path}: {name}")


@pytest.mark.parametrize("reset_after", [True, False])
def test_each_path_matches_the_reference_in_float32_on_a_large_layer(product_path, reset_after):
    cgru.set_num_threads(2)
    config = dict(T=4, B=37, I=50, H=300, num_layers=2, bidirectional=False,
                  reset_after=reset_after, dtype="float32", batch_first=False, bias=False,
                  lengths=True)
    engine, ref = run_engine_and_reference(config, np.random.default_rng(5))
    for name in ref:
        assert_close(engine[name], ref[name], "float32", what=f"{product_path}: {name}")


def training_results(gru, x, path):
    """y, h_n, dx, dh0 and every gradient of one training step on `path`."""
    use_path(path)
    try:
        gru.zero_grad()
        y, h_n = gru(x)
        dx, dh0 = gru.backward(np.ones_like(y))
        return [y, h_n, dx, dh0] + [g.copy() for g in gru.grads.values()]
    finally:
        use_path(None)


def test_the_paths_agree_with_each_other_in_float64():
    gru = cgru.GRU(6, 45, num_layers=2, dtype="float64", seed=1)
    x = np.random.default_rng(0).standard_normal((8, 6, 6))
    results = {path: training_results(gru, x, path) for path in PATHS}
    for path in PATHS:
        for a, b in zip(results[path], results["unpacked, wide tiles"]):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13, err_msg=path)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("B", [1, 2, 3, 4, 7])
def test_wide_and_narrow_panels_give_the_same_bits(dtype, B):
    """Both tiles add each sum's products in the order of k: a training step's every result is
    the same to the bit, whatever the rows of the last tile and across the last panel's edge."""
    cgru.set_num_threads(2)
    gru = cgru.GRU(5, 131, num_layers=2, dtype=dtype, seed=B)
    x = np.random.default_rng(B).standard_normal((6, B, 5)).astype(dtype)
    wide = training_results(gru, x, "panels, wide tiles")
    narrow = training_results(gru, x, "panels, narrow tiles")
    for a, b in zip(wide, narrow):
        np.testing.assert_array_equal(a, b)


def test_backward_runs_on_more_threads_than_its_forward():
    """The scratch of a forward on one thread is too small for packing on more; backward sizes
    its own."""
    gru = cgru.GRU(5, 64, dtype="float64", seed=2)
    x = np.random.default_rng(1).standard_normal((6, 3, 5))
    cgru.set_num_threads(1)
    y, _ = gru(x)
    dx_one, _ = gru.backward(np.ones_like(y))
    grads_one = {k: g.copy() for k, g in gru.grads.items()}
    gru.zero_grad()
    y, _ = gru(x)
    cgru.set_num_threads(2)
    dx_two, _ = gru.backward(np.ones_like(y))
    np.testing.assert_allclose(dx_two, dx_one, rtol=1e-12, atol=1e-13)
    for k in grads_one:
        np.testing.assert_allclose(gru.grads[k], grads_one[k], rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("num_layers,B", [(1, 1), (3, 1), (2, 3), (2, 6), (1, 9)])
@pytest.mark.parametrize("threads", [1, 2])
def test_step_on_shared_threads_follows_the_sequence_forward(reset_after, num_layers, B,
                                                             threads):
    """Large enough for threads to share each step (3H (I + H) >= 98304 multiply-adds) and for
    W_hh (1 MB) to count as uncached: B = 1 runs one row at a time, 3 and 6 two rows at a time,
    9 on BLAS; out=h updates the state in place."""
    cgru.set_num_threads(threads)
    gru = cgru.GRU(40, 208, num_layers=num_layers, reset_after=reset_after, dtype="float64",
                   seed=4).eval()
    x = np.random.default_rng(1).standard_normal((6, B, 40))
    h0 = np.random.default_rng(2).standard_normal((num_layers, B, 208))
    y, h_n = gru(x, h0)
    h = h0.copy()
    for t in range(6):
        gru.step(x[t], h, out=h)
        np.testing.assert_allclose(h[-1], y[t], rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(h, h_n, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("threads", [1, 2])
def test_step_may_take_its_input_from_the_state_it_overwrites(threads):
    """Feeding the top layer's output back as the next input, straight from out."""
    cgru.set_num_threads(threads)
    gru = cgru.GRU(128, 128, num_layers=2, dtype="float64", seed=5).eval()
    h = np.random.default_rng(3).standard_normal((2, 1, 128))
    expected = h.copy()
    for _ in range(4):
        expected = gru.step(expected[-1].copy(), expected)  # separate arrays
        gru.step(h[-1], h, out=h)                          # x_t is a view of out
        np.testing.assert_allclose(h, expected, rtol=1e-12, atol=1e-13)
