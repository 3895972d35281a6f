"""cgru.GRU as a pipeline uses it: bounded memory, pickling, misuse refused, shared by threads."""
import pickle
import threading
import tracemalloc

import numpy as np
import pytest

import cgru
import cgru.gru as gru_module
from cgru import layers, reference
from conftest import run_in_threads


def _reference_forward(gru, x, h0=None, lengths=None):
    params64 = {k: v.astype(np.float64) for k, v in gru.params.items()}
    y, h_n, _ = reference.gru_forward(x.astype(np.float64), params64,
                                      None if h0 is None else h0.astype(np.float64),
                                      num_layers=gru.num_layers,
                                      bidirectional=gru.bidirectional,
                                      reset_after=gru.reset_after, lengths=lengths)
    return y, h_n


# ---- inference in blocks ---------------------------------------------------------------------


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("block_bytes", [1, 3000, 40000])
def test_inference_in_small_blocks_matches_the_reference(monkeypatch, bidirectional, reset_after,
                                                         block_bytes):
    # tiny blocks cut a unidirectional GRU's time axis (each block starts from the states the
    # last one ended with, sequences that ended keep theirs) and a bidirectional GRU's batch
    monkeypatch.setattr(gru_module, "INFERENCE_BLOCK_BYTES", block_bytes)
    monkeypatch.setattr(gru_module, "PREFERRED_BATCH_BLOCK", 3)
    rng = np.random.default_rng(block_bytes)
    T, B = 23, 7
    gru = cgru.GRU(5, 16, num_layers=3, bidirectional=bidirectional, reset_after=reset_after,
                   dtype=np.float64, seed=2).eval()
    x = rng.standard_normal((T, B, 5))
    h0 = rng.standard_normal((3 * gru.num_directions, B, 16))
    lengths = rng.integers(1, T + 1, size=B)
    blocks = gru._inference_blocks(T, B, True, True)
    if block_bytes < 40000:
        assert blocks != (B, T), "the test must cut the work"
    y, h_n = gru(x, h0, lengths)
    y_ref, h_ref = _reference_forward(gru, x, h0, lengths)
    np.testing.assert_allclose(y, y_ref, rtol=1e-10, atol=1e-11)
    np.testing.assert_allclose(h_n, h_ref, rtol=1e-10, atol=1e-11)


def test_blocked_inference_of_batch_first_and_unbatched_input(monkeypatch):
    monkeypatch.setattr(gru_module, "INFERENCE_BLOCK_BYTES", 2000)
    monkeypatch.setattr(gru_module, "PREFERRED_BATCH_BLOCK", 2)
    gru = cgru.GRU(4, 16, num_layers=2, batch_first=True, dtype=np.float64, seed=1).eval()
    x = np.random.default_rng(1).standard_normal((5, 19, 4))  # (B, T, I)
    y, h_n = gru(x)
    y_ref, h_ref = _reference_forward(gru, x.transpose(1, 0, 2))
    np.testing.assert_allclose(y, y_ref.transpose(1, 0, 2), rtol=1e-10, atol=1e-11)
    np.testing.assert_allclose(h_n, h_ref, rtol=1e-10, atol=1e-11)
    y1, h1 = gru(x[2])
    np.testing.assert_allclose(y1, y_ref[:, 2], rtol=1e-10, atol=1e-11)
    np.testing.assert_allclose(h1, h_ref[:, 2], rtol=1e-10, atol=1e-11)


def test_scoring_many_sequences_needs_memory_for_its_answer_not_for_every_gate():
    # 20,000 sequences of 50 steps: the gates of every step would take 20000*50*192*4 = 768 MB
    model = cgru.Sequential([layers.GRU(64), layers.Dense(1)], seed=0)
    model.build((None, 50, 1))
    x = np.random.default_rng(0).standard_normal((20000, 50, 1)).astype(np.float32)
    tracemalloc.start()
    try:
        out = model.predict(x)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.shape == (20000, 1)
    bound = 64 * 2**20
    assert peak < bound, f"predict's peak allocation was {peak / 2**20:.0f} MB"
    np.testing.assert_allclose(model.predict(x[:300], batch_size=7), out[:300], rtol=1e-5,
                               atol=1e-6)


def test_predict_batch_size_changes_neither_blocks_nor_result():
    model = cgru.Sequential([layers.GRU(8, return_sequences=True), layers.GRU(4)], seed=3)
    x = np.random.default_rng(3).standard_normal((50, 6, 2)).astype(np.float32)
    np.testing.assert_array_equal(model.predict(x, batch_size=1), model.predict(x, batch_size=50))


# ---- pickling --------------------------------------------------------------------------------


def test_a_pickled_gru_carries_its_parameters_and_never_a_pending_forward():
    gru = cgru.GRU(8, 32, num_layers=2, seed=0)
    x = np.random.default_rng(0).standard_normal((200, 64, 8)).astype(np.float32)
    gru(x)  # a training forward: megabytes of saved gates
    blob = pickle.dumps(gru)
    weights = sum(v.nbytes for v in gru.params.values()) + sum(v.nbytes for v in gru.grads.values())
    assert len(blob) < weights + 16384
    copy = pickle.loads(blob)
    with pytest.raises(RuntimeError, match="needs a forward in training mode"):
        copy.backward(np.zeros((200, 64, 32), np.float32))
    gru.eval()
    copy.eval()
    np.testing.assert_array_equal(copy(x)[0], gru(x)[0])
    copy.train()
    y, _ = copy(x)
    copy.backward(np.ones_like(y))  # the copy trains on its own


# ---- misuse ----------------------------------------------------------------------------------


@pytest.mark.parametrize("attribute", ["input_size", "hidden_size", "num_layers", "bias",
                                       "bidirectional", "reset_after", "dtype"])
def test_the_architecture_cannot_be_changed_after_construction(attribute):
    gru = cgru.GRU(3, 8)
    with pytest.raises(AttributeError, match=attribute):
        setattr(gru, attribute, 4)


def test_batch_first_and_dropout_stay_settable_and_checked():
    gru = cgru.GRU(3, 8, num_layers=2)  # dropout applies between layers (one layer warns)
    gru.batch_first = True
    gru.dropout = 0.25
    assert gru.batch_first and gru.dropout == 0.25
    with pytest.raises(TypeError, match="batch_first"):
        gru.batch_first = "yes"
    with pytest.raises(ValueError, match="dropout"):
        gru.dropout = 1.5


def test_a_deleted_or_extra_parameter_is_named():
    gru = cgru.GRU(3, 8)
    del gru.params["weight_hh_l0"]
    with pytest.raises(KeyError, match="missing \\['weight_hh_l0'\\]"):
        gru(np.zeros((2, 1, 3), np.float32))
    with pytest.raises(KeyError, match="weight_hh_l0"):
        gru.step(np.zeros((1, 3), np.float32), np.zeros((1, 1, 8), np.float32))


def test_parameters_changed_between_forward_and_backward_are_refused():
    gru = cgru.GRU(3, 8, seed=0)
    x = np.ones((4, 2, 3), np.float32)
    y, _ = gru(x)
    gru.params["weight_hh_l0"][0, 0] += 1
    with pytest.raises(RuntimeError, match="weight_hh_l0.*changed"):
        gru.backward(np.ones_like(y))
    y, _ = gru(x)  # a new forward sees the new parameters
    gru.backward(np.ones_like(y))


def test_misaligned_parameters_and_inputs_give_the_aligned_results():
    gru = cgru.GRU(5, 16, dtype=np.float64, seed=0)
    x = np.random.default_rng(0).standard_normal((6, 3, 5))
    expected = gru.eval()(x)[0]
    for name, value in list(gru.params.items()):
        raw = np.zeros(value.nbytes + 1, np.uint8)
        shifted = raw[1:].view(np.float64).reshape(value.shape)
        shifted[...] = value
        assert not shifted.flags.aligned
        gru.params[name] = shifted
    raw = np.zeros(x.nbytes + 1, np.uint8)
    x_shifted = raw[1:].view(np.float64).reshape(x.shape)
    x_shifted[...] = x
    np.testing.assert_array_equal(gru(x_shifted)[0], expected)
    h = gru.step(x_shifted[0], np.zeros((1, 3, 16)))
    np.testing.assert_allclose(h[0], expected[0], rtol=1e-12, atol=1e-13)


def test_step_refuses_non_native_byte_order():
    gru = cgru.GRU(3, 8)
    x = np.ones((2, 3), np.float32)
    h = np.zeros((1, 2, 8), np.float32)
    for args, name in [((x.astype(">f4"), h), "x_t"), ((x, h.astype(">f4")), "h")]:
        with pytest.raises(TypeError, match=name):
            gru.step(*args)
    with pytest.raises(ValueError, match="out"):
        gru.step(x, h, out=np.zeros((1, 2, 8), ">f4"))


# ---- threads ---------------------------------------------------------------------------------


def test_threads_sharing_a_training_gru_each_backpropagate_their_own_forward():
    gru = cgru.GRU(4, 32, num_layers=2, dtype=np.float64, seed=0)
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((20, 3, 4)) for _ in range(4)]
    expected_dx, expected_grads = [], {k: np.zeros_like(v) for k, v in gru.grads.items()}
    for x in inputs:
        gru.zero_grad()
        y, _ = gru(x)
        expected_dx.append(gru.backward(np.ones_like(y))[0])
        for k in expected_grads:
            expected_grads[k] += gru.grads[k]
    gru.zero_grad()
    got = [None] * 4
    start = threading.Barrier(4)

    def worker(i):
        start.wait()
        y, _ = gru(inputs[i])
        got[i] = gru.backward(np.ones_like(y))[0]

    run_in_threads(worker, 4)
    for a, b in zip(got, expected_dx):
        np.testing.assert_array_equal(a, b)
    for k in expected_grads:
        np.testing.assert_allclose(gru.grads[k], expected_grads[k], rtol=1e-12, atol=1e-12)


def test_threads_scoring_at_once_each_use_their_own_workspace():
    # inference keeps one workspace per Python thread between calls: threads must not share it
    rng = np.random.default_rng(7)
    grus = [cgru.GRU(6, 40, num_layers=2, seed=i).eval() for i in range(4)]
    inputs = [rng.standard_normal((30, 5, 6)).astype(np.float32) for _ in grus]
    expected = [g(x)[0] for g, x in zip(grus, inputs)]
    wrong = []

    def worker(i):
        for _ in range(30):
            if not np.array_equal(grus[i](inputs[i])[0], expected[i]):
                wrong.append(i)

    run_in_threads(worker, 4)
    assert wrong == []
