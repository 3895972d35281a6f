"""Thread control, determinism, and concurrent use from Python threads."""
import threading

import numpy as np
import pytest

import cgru


def _train_step(gru, x):
    gru.zero_grad()
    y, h_n = gru(x)
    dx, dh0 = gru.backward(np.ones_like(y), np.ones_like(h_n))
    return [y, h_n, dx, dh0] + [gru.grads[k].copy() for k in sorted(gru.grads)]


@pytest.mark.parametrize("reset_after", [True, False])
def test_one_and_two_threads_agree_within_tolerance(reset_after):
    gru = cgru.GRU(40, 67, num_layers=2, bidirectional=True, reset_after=reset_after, seed=0)
    x = np.random.default_rng(0).standard_normal((12, 9, 40)).astype(np.float32)
    cgru.set_num_threads(1)
    one = _train_step(gru, x)
    cgru.set_num_threads(2)
    two = _train_step(gru, x)
    for a, b in zip(one, two):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reset_after", [True, False])
def test_more_threads_than_cores_still_agree_with_one_thread(reset_after):
    # six threads on this project's two-core machines: the per-step barrier's waiters must give
    # way to descheduled threads, and every step still sees all threads' work
    gru = cgru.GRU(24, 100, num_layers=3, reset_after=reset_after, dtype=np.float64, seed=1)
    x = np.random.default_rng(1).standard_normal((30, 2, 24))
    cgru.set_num_threads(1)
    one = _train_step(gru, x)
    h_one = np.zeros((3, 2, 100))
    for t in range(5):
        h_one = gru.step(x[t], h_one)
    cgru.set_num_threads(6)
    six = _train_step(gru, x)
    h_six = np.zeros((3, 2, 100))
    for t in range(5):
        h_six = gru.step(x[t], h_six)
    for a, b in zip(one + [h_one], six + [h_six]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_results_are_bitwise_identical_run_to_run_for_a_fixed_thread_count():
    cgru.set_num_threads(2)
    gru = cgru.GRU(40, 67, num_layers=2, bidirectional=True, reset_after=False, seed=0)
    x = np.random.default_rng(0).standard_normal((12, 9, 40)).astype(np.float32)
    first = _train_step(gru, x)
    for _ in range(3):
        again = _train_step(gru, x)
        for a, b in zip(first, again):
            np.testing.assert_array_equal(a, b)


def test_set_num_threads_is_what_get_num_threads_reports():
    cgru.set_num_threads(1)
    assert cgru.get_num_threads() == 1
    cgru.set_num_threads(3)
    assert cgru.get_num_threads() == 3


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_set_num_threads_rejects_non_positive_integers(bad):
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        cgru.set_num_threads(bad)


def test_two_python_threads_running_independent_grus_get_correct_results():
    rng = np.random.default_rng(1)
    grus = [cgru.GRU(16, 48, num_layers=2, reset_after=ra, seed=i)
            for i, ra in enumerate([True, False])]
    inputs = [rng.standard_normal((30, 8, 16)).astype(np.float32) for _ in grus]
    expected = [_train_step(g, x) for g, x in zip(grus, inputs)]
    failures = []

    def worker(i):
        for _ in range(20):
            got = _train_step(grus[i], inputs[i])
            if not all(np.array_equal(a, b) for a, b in zip(got, expected[i])):
                failures.append(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_the_engine_reports_its_openmp_build():
    info = cgru.info()
    assert isinstance(info["openmp"], bool)
    assert info["threads"] == cgru.get_num_threads()
