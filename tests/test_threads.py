"""Thread control, determinism, and concurrent use from Python threads."""
import os
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import cgru
from conftest import run_in_threads, run_script


@pytest.fixture
def cpus(request):
    """Pretend the process has this many CPUs, so that teams larger than the machine's run."""
    def pretend(n):
        cgru._engine.set_cpus_override(n)
    yield pretend
    cgru._engine.set_cpus_override(0)
    cgru._engine.set_solo_test(0)


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
def test_more_threads_than_cores_still_agree_with_one_thread(cpus, reset_after):
    # six threads on this project's two-core machines (a call runs no more threads than CPUs, so
    # the test pretends there are six): the per-step barrier's waiters must give way to
    # descheduled threads, and every step still sees all threads' work
    cpus(6)
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
            # (GRU, which result of _train_step, largest difference), for the failure message
            failures.extend((i, k, float(np.abs(a - b).max()))
                            for k, (a, b) in enumerate(zip(got, expected[i]))
                            if not np.array_equal(a, b))

    run_in_threads(worker, 2)
    assert failures == []


class _SlowOpenBLAS:
    """Stands in for OpenBLAS's thread setting; each get and set gives the GIL away (as the real
    ones do, through ctypes) for long enough that other Python threads run in between."""

    def __init__(self, threads):
        self.threads = threads

        def get():
            time.sleep(1e-4)
            return self.threads

        def set(n):
            time.sleep(1e-4)
            self.threads = n

        # plain functions, which take the ctypes attributes (argtypes, restype) cgru sets
        self.scipy_openblas_get_num_threads = get
        self.scipy_openblas_set_num_threads = set


def test_engine_calls_from_many_python_threads_run_with_blas_on_one_thread_and_restore_it():
    # the BLAS cap is entered and left around every engine call; with Python threads entering
    # and leaving at once, no call may run while the BLAS is threaded (its GEMMs would then cut
    # the work differently: other bits), and the user's setting must come back at the end
    blas = _SlowOpenBLAS(threads=4)
    cap = cgru._engine._BlasThreads(blas)
    assert cap.controlled
    seen_threaded = []

    def worker(i):
        for _ in range(60):
            cap.enter()
            if blas.threads != 1:
                seen_threaded.append(blas.threads)
            time.sleep(1e-4)
            cap.leave()

    run_in_threads(worker, 4)
    assert seen_threaded == []
    assert blas.threads == 4 and cap.active == 0


def test_ctrl_c_during_engine_calls_leaves_no_lock_held_and_the_blas_setting_restored():
    # Ctrl-C (a notebook's "interrupt") lands anywhere in cgru's Python code; whatever it
    # interrupted, the next call must run and the BLAS setting must be the user's again
    out = run_script(textwrap.dedent("""
        import os, signal, threading, time
        import numpy as np
        import cgru
        blas = cgru._engine._blas_threads
        if blas.controlled:
            blas.set_fn(2)
        gru = cgru.GRU(8, 16, seed=0)
        x = np.random.default_rng(0).random((4, 2, 8)).astype(np.float32)
        armed = False

        def on_sigint(signum, frame):
            if armed:
                raise KeyboardInterrupt

        signal.signal(signal.SIGINT, on_sigint)
        stop = threading.Event()

        def ctrl_c():
            while not stop.is_set():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.0002)

        threading.Thread(target=ctrl_c, daemon=True).start()
        interrupts, left_wrong = 0, 0
        end = time.monotonic() + 3
        while time.monotonic() < end:
            try:
                armed = True
                gru.train()
                y, _ = gru(x)
                gru.backward(np.ones_like(y))
                gru.eval()
                gru(x)
                armed = False
            except KeyboardInterrupt:
                armed = False
                interrupts += 1
            if blas.active != 0 or blas.lock.locked() or gru._grads_lock.locked():
                left_wrong += 1
                break
        stop.set()
        time.sleep(0.01)
        gru.train()
        y, _ = gru(x)
        gru.backward(np.ones_like(y))
        print("interrupts", interrupts, "left wrong", left_wrong,
              "blas", blas.get_fn() if blas.controlled else 2)
    """), time_limit_s=60)
    words = out.split()
    assert int(words[1]) > 100, out  # the interrupts did land
    assert words[4:] == ["0", "blas", "2"], out


def test_step_reads_only_live_weights_while_another_thread_reloads_them():
    # step() reads the weights without the GIL; a load_state_dict in another thread replaces
    # (and frees) the arrays it read them from. Every state must come from one weight set or the
    # other; freed memory (returned to the system at once here) would crash or give neither.
    # On a quantized GRU, a thread that assigns float32 arrays in a tight loop makes steps
    # quantize W_hh again: every state must still come from one set or the other. (That a step
    # ends when the weight changes again while it quantizes is test_quantize's: here the GIL's
    # hand-offs rarely let that happen.)
    out = run_script(textwrap.dedent("""
        import threading, time
        import numpy as np
        import cgru
        cgru.set_num_threads(1)
        H, B = 512, 16
        base, other = cgru.GRU(4, H, seed=0), cgru.GRU(4, H, seed=1)
        states = [base.state_dict(),
                  dict(base.state_dict(), weight_hh_l0=other.weight_hh_l0.copy())]
        x = np.random.default_rng(0).random((B, 4), np.float32)
        h = np.random.default_rng(1).random((1, B, H), np.float32)
        for writer in ("float32 copies", "load_state_dict", "float32 assignments"):
            quantized = writer != "float32 copies"
            expected = []
            for sd in states:
                g = cgru.GRU(4, H).eval()
                g.load_state_dict(sd)
                if quantized:
                    g.quantize("bfloat16")
                expected.append(g.step(x, h))
            gru = cgru.GRU(4, H).eval()
            gru.load_state_dict(states[0])
            if quantized:
                gru.quantize("bfloat16")
            stop = threading.Event()

            def reload():
                # float32: load_state_dict copies into the live arrays (a torn read is then the
                # caller's race), so new arrays go in by hand
                i = 0
                while not stop.is_set():
                    i += 1
                    if writer == "load_state_dict":
                        gru.load_state_dict(states[i % 2])
                    elif writer == "float32 assignments":
                        gru.params["weight_hh_l0"] = states[i % 2]["weight_hh_l0"]
                    else:
                        gru.params["weight_hh_l0"] = states[i % 2]["weight_hh_l0"].copy()

            t = threading.Thread(target=reload)
            t.start()
            steps = neither = 0
            end = time.monotonic() + 1.5
            while time.monotonic() < end:
                out = gru.step(x, h)
                steps += 1
                neither += not any(np.array_equal(out, e) for e in expected)
            stop.set()
            t.join()
            print(writer, "steps", steps, "neither", neither)
    """), time_limit_s=60, env={"MALLOC_MMAP_THRESHOLD_": "65536"})
    for line in out.splitlines():
        assert line.endswith("neither 0") and int(line.split()[-3]) >= 10, out


def test_the_engine_reports_its_openmp_build():
    info = cgru.info()
    assert isinstance(info["openmp"], bool)
    assert info["threads"] == cgru.get_num_threads()


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("barrier_pass", [1, 2, 3, 7, 40])
def test_a_team_that_goes_on_alone_mid_call_gives_bitwise_the_same_results(cpus, reset_after,
                                                                          barrier_pass):
    # when a thread is descheduled, its team-mates go on without it from the next barrier on
    # (barrier.h); the work is cut the same way, so nothing about the result may change
    cpus(2)
    cgru.set_num_threads(2)
    gru = cgru.GRU(20, 96, num_layers=2, bidirectional=True, reset_after=reset_after,
                   dtype=np.float64, seed=3)
    x = np.random.default_rng(3).standard_normal((25, 3, 20))
    stepper = cgru.GRU(20, 256, num_layers=3, reset_after=reset_after, dtype=np.float64, seed=4)
    h = np.zeros((3, 1, 256))

    cgru._engine.reset_contention()
    whole = _train_step(gru, x) + [stepper.step(x[0, :1], h)]
    cgru._engine.set_solo_test(barrier_pass)
    cgru._engine.reset_contention()
    alone = _train_step(gru, x) + [stepper.step(x[0, :1], h)]
    for a, b in zip(whole, alone):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("earlier_long_waits, lost_ms, so_far_ms, asks", [
    (0, 9.0, 10.0, False),    # the call's first long wait is waited out, however long
    (1, 1.0, 40.0, False),    # hiccups: a virtual CPU woken from idle, the hypervisor's moments
    (5, 9.0, 40.0, False),    # still under a quarter of the call
    (1, 11.0, 40.0, True),    # over a quarter of the call: other processes share the cores
    (1, 6.0, 12.0, True),     # a busy core's time slices: half of the call
    (1, 2.0, 3.0, False),     # a short call: the share counts over 10 ms at least
    (1, 2.5, 3.0, False),
    (1, 3.0, 4.0, True),
    (1, 10.0, 40.0, False),   # a quarter exactly
])
def test_a_team_goes_on_alone_when_late_threads_cost_a_quarter_of_the_call(
        earlier_long_waits, lost_ms, so_far_ms, asks):
    # the rule each thread applies in a long wait at a step's barrier (src_c/barrier.h)
    assert cgru._engine.stall_asks(earlier_long_waits, lost_ms, so_far_ms) is asks


def test_results_do_not_depend_on_how_many_threads_contention_left(cpus):
    # the cut of the work follows set_num_threads; a busy machine only lowers the threads that
    # run it, as several Python threads calling at once do
    cpus(2)
    cgru.set_num_threads(2)
    gru = cgru.GRU(24, 67, num_layers=2, reset_after=False, seed=5)
    x = np.random.default_rng(5).standard_normal((15, 9, 24)).astype(np.float32)
    alone = _train_step(gru, x)
    results = [None] * 4

    def worker(i):
        results[i] = _train_step(cgru.GRU(24, 67, num_layers=2, reset_after=False, seed=5), x)

    run_in_threads(worker, 4)
    for got in results:
        for a, b in zip(alone, got):
            np.testing.assert_array_equal(a, b)


def test_no_more_threads_than_cpus_run_a_call():
    script = (
        "import os, numpy as np, cgru\n"
        "cgru.set_num_threads(16)\n"
        "before = len(os.listdir('/proc/self/task'))\n"
        "g = cgru.GRU(16, 256).eval()\n"
        "g(np.zeros((5, 64, 16), np.float32))\n"
        "print(len(os.listdir('/proc/self/task')) - before, cgru._engine.cpus_available())\n")
    import subprocess
    import sys
    if not os.path.isdir("/proc/self/task"):
        pytest.skip("needs /proc")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    added, cpus = int(out[0]), int(out[1])
    assert added <= cpus - 1  # the calling thread is one of the team


def _served_model():
    return cgru.Sequential([cgru.Input((10, 4)), cgru.layers.Masking(0.0), cgru.layers.GRU(8),
                            cgru.layers.Dense(1)], seed=0)


def test_the_first_predict_calls_from_two_threads_build_the_model_once():
    x = np.random.default_rng(0).random((4, 10, 4)).astype(np.float32)
    for _ in range(20):
        model = _served_model()
        start = threading.Barrier(2)
        answers, errors = [None, None], []

        def serve(i):
            start.wait()
            try:
                answers[i] = model.predict(x)
            except Exception as e:  # noqa: BLE001 (reported below)
                errors.append(repr(e))

        run_in_threads(serve, 2)
        assert errors == []
        final = model.predict(x)
        for answer in answers:
            np.testing.assert_array_equal(answer, final)


def test_a_loss_that_reads_the_model_inside_a_training_update_does_not_wait_for_itself():
    # the update lock is reentrant: code that runs inside an update (here a custom loss logging
    # the weights) may call get_weights or save on the model it is updating
    class LoggingLoss(cgru.losses.MeanSquaredError):
        seen = []

        def __call__(self, y_true, y_pred):
            self.seen.append(len(model.get_weights()))
            return super().__call__(y_true, y_pred)

    model = cgru.Sequential([cgru.Input((5, 2)), cgru.layers.GRU(4), cgru.layers.Dense(1)],
                            seed=0)
    model.compile("adam", LoggingLoss())
    x, y = np.ones((3, 5, 2), np.float32), np.ones((3, 1), np.float32)
    trainer = threading.Thread(target=model.train_on_batch, args=(x, y), daemon=True)
    trainer.start()
    trainer.join(timeout=60)
    assert not trainer.is_alive(), "train_on_batch waited for its own update lock"
    assert LoggingLoss.seen == [5]

def test_a_get_weights_racing_the_first_predict_sees_the_one_build():
    # a declared Sequential builds on either call (get_weights builds it as Keras does); the
    # build runs once, with the weights a model built alone has
    x = np.random.default_rng(0).random((4, 10, 4)).astype(np.float32)
    alone = _served_model().get_weights()
    for _ in range(20):
        model = _served_model()
        start = threading.Barrier(2)
        seen, errors = {}, []

        def use(i):
            start.wait()
            try:
                seen[i] = model.predict(x) if i == 0 else model.get_weights()
            except Exception as e:  # noqa: BLE001 (reported below)
                errors.append(repr(e))

        run_in_threads(use, 2)
        assert errors == []
        for got, want in zip(seen[1], alone):
            np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(seen[0], model.predict(x))


def _same(a, b):
    if a is b:
        return True
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape
                and np.array_equal(a, b))
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 (objects without a comparison: only identity counts)
        return False


def test_predict_leaves_nothing_of_a_call_on_the_layers():
    # threads may share a model for predict (cgru.dask.predict under Dask's threaded
    # scheduler): what one call left on a layer, another call's later part would read, so
    # inference must leave every layer's attributes as they were
    model = cgru.Sequential([
        cgru.Input((10, 4)), cgru.layers.Masking(0.0),
        cgru.layers.Bidirectional(cgru.layers.GRU(8, return_sequences=True)),
        cgru.layers.Dropout(0.3), cgru.layers.GRU(6), cgru.layers.Dense(1)], seed=0)
    rng = np.random.default_rng(0)
    with_empty = rng.random((6, 10, 4)).astype(np.float32)
    with_empty[[1, 4]] = 0  # two sequences with no valid step
    full = rng.random((3, 10, 4)).astype(np.float32)
    model.predict(full)
    before = [dict(vars(layer)) for layer in model.layers]
    model.predict(with_empty)
    model(with_empty)
    for layer, old in zip(model.layers, before):
        changed = [k for k, v in vars(layer).items() if k not in old or not _same(v, old[k])]
        assert changed == [], f"{layer.name}: {changed}"


def _fingerprint(model):
    """Every weight, every optimizer slot and the update count, as bytes."""
    slots, iterations = model.optimizer.get_state()
    return (iterations, tuple(w.tobytes() for w in model.get_weights()),
            tuple(slots[k].tobytes() for k in sorted(slots)))


def test_a_save_or_get_weights_from_another_thread_while_a_model_trains_lands_between_two_updates(
        tmp_path):
    # a service training in one thread and taking snapshots from another: every file holds the
    # weights and optimizer state of one update, and every get_weights one update's weights,
    # never a mix of two
    rng = np.random.default_rng(0)
    x = rng.random((8, 6, 3)).astype(np.float32)
    y = rng.random((8, 1)).astype(np.float32)
    updates = 300

    def fresh():
        model = cgru.Sequential([cgru.Input((6, 3)), cgru.layers.GRU(8, return_sequences=True),
                                 cgru.layers.GRU(8), cgru.layers.Dense(1)], seed=0)
        model.compile("adam", "mse")
        return model

    replay = fresh()
    after = {_fingerprint(replay)}
    for _ in range(updates):
        replay.train_on_batch(x, y)
        after.add(_fingerprint(replay))

    model = fresh()
    failures = []

    def train():
        try:
            for _ in range(updates):
                model.train_on_batch(x, y)
        except BaseException as e:  # noqa: BLE001 - the test reports it below
            failures.append(e)

    trainer = threading.Thread(target=train)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # threads take turns often: a save meets updates mid-way
    try:
        trainer.start()
        paths, weights_seen = [], []
        while trainer.is_alive():
            paths.append(tmp_path / f"snapshot{len(paths)}.npz")
            model.save(paths[-1])
            weights_seen.append(tuple(w.tobytes() for w in model.get_weights()))
        trainer.join()
    finally:
        sys.setswitchinterval(switch)
    assert failures == []
    assert len(paths) >= 2
    mixed = [p.name for p in paths if _fingerprint(cgru.load_model(p)) not in after]
    assert mixed == []
    weights_after = {weights for _, weights, _ in after}
    assert sum(w not in weights_after for w in weights_seen) == 0
