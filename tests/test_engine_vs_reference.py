"""The engine agrees with the NumPy reference on outputs, states and every gradient."""
import copy

import numpy as np
import pytest

import cgru
from conftest import assert_close, run_engine_and_reference


def _random_configs(count, seed):
    rng = np.random.default_rng(seed)
    configs = []
    for i in range(count):
        configs.append(dict(
            T=int(rng.choice([1, 2, 7, 13])), B=int(rng.choice([1, 3, 5])),
            I=int(rng.choice([1, 4, 11])), H=int(rng.choice([1, 5, 13, 19, 37])),
            num_layers=int(rng.choice([1, 2, 3])), bidirectional=bool(rng.integers(2)),
            reset_after=bool(i % 2), dtype=["float32", "float64"][(i // 2) % 2],
            batch_first=bool(rng.integers(2)), bias=bool(rng.random() < 0.8),
            lengths=bool(rng.integers(2))))
    return configs


@pytest.mark.parametrize("config", _random_configs(40, seed=2026),
                         ids=lambda c: "T{T}-B{B}-I{I}-H{H}-L{num_layers}-bi{bidirectional:d}-"
                                       "ra{reset_after:d}-{dtype}-bf{batch_first:d}-"
                                       "bias{bias:d}-len{lengths:d}".format(**c))
def test_engine_matches_reference_on_outputs_states_and_all_gradients(config):
    rng = np.random.default_rng(7)
    engine, ref = run_engine_and_reference(config, rng)
    assert engine.keys() == ref.keys()
    for name in ref:
        assert_close(engine[name], ref[name], config["dtype"], what=name)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_without_h0_and_dh_n_the_states_start_and_end_at_zero(reset_after, dtype):
    config = dict(T=6, B=4, I=3, H=21, num_layers=2, bidirectional=True, reset_after=reset_after,
                  dtype=dtype, batch_first=False, bias=True, lengths=True)
    engine, ref = run_engine_and_reference(config, np.random.default_rng(3), with_h0=False,
                                           with_dh_n=False)
    for name in ref:
        assert_close(engine[name], ref[name], dtype, what=name)


@pytest.mark.parametrize("H", [16, 32, 48, 130])
def test_hidden_sizes_that_split_across_threads_match_reference(H):
    import cgru
    cgru.set_num_threads(2)
    config = dict(T=9, B=6, I=10, H=H, num_layers=1, bidirectional=True, reset_after=H % 32 == 0,
                  dtype="float64", batch_first=False, bias=True, lengths=True)
    engine, ref = run_engine_and_reference(config, np.random.default_rng(H))
    for name in ref:
        assert_close(engine[name], ref[name], "float64", what=name)


def test_finished_sequences_output_zeros_and_keep_their_state():
    import cgru
    gru = cgru.GRU(3, 5, bidirectional=True, dtype="float64", seed=0)
    x = np.random.default_rng(0).standard_normal((6, 2, 3))
    y, h_n = gru(x, lengths=[6, 2])
    assert np.all(y[2:, 1] == 0.0)
    # the forward direction's final state is its output at the sequence's own last step
    np.testing.assert_array_equal(h_n[0, 1], y[1, 1, :5])
    # the reverse direction of the short sequence equals running it alone, without padding
    y_alone, h_alone = gru(x[:2, 1:2])
    np.testing.assert_allclose(y[:2, 1], y_alone[:, 0], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(h_n[:, 1], h_alone[:, 0], rtol=1e-12, atol=1e-14)


def _training_step(gru, x, dy):
    gru.zero_grad()
    y, h_n = gru(x)
    dx, dh0 = gru.backward(dy)
    return [y, h_n, dx, dh0] + [g.copy() for g in gru.grads.values()]


def test_training_steps_reuse_one_workspace_and_give_the_same_results_as_a_fresh_gru():
    rng = np.random.default_rng(5)
    reused = cgru.GRU(3, 16, num_layers=2, bidirectional=True, dtype="float64", seed=4)
    # sequences long, short, then long again: a smaller step runs in the larger spare workspace
    for T in (9, 4, 9):
        x, dy = rng.standard_normal((T, 2, 3)), rng.standard_normal((T, 2, 32))
        fresh = cgru.GRU(3, 16, num_layers=2, bidirectional=True, dtype="float64", seed=4)
        spare = list(reused._spare_workspaces)
        got, want = _training_step(reused, x, dy), _training_step(fresh, x, dy)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
        if spare:  # the forward took the spare the previous backward left
            assert np.shares_memory(reused._spare_workspaces[0], spare[0])
        assert len(reused._spare_workspaces) == 1
    # a copy never carries the spare workspace, and a GRU quantized for inference lets it go
    assert copy.deepcopy(reused)._spare_workspaces == []
    single = cgru.GRU(3, 16, seed=4)
    _training_step(single, rng.standard_normal((5, 2, 3)).astype(np.float32),
                   rng.standard_normal((5, 2, 16)).astype(np.float32))
    assert len(single._spare_workspaces) == 1
    assert single.quantize("bfloat16")._spare_workspaces == []
