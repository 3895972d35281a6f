"""Model files: exact round trips, resumed training, atomic writes and damaged files (the
crafted ones are in test_hostile_files.py)."""
import json
import os
import signal
import stat
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

import cgru
from cgru import layers, models, optimizers, saving


def make_model(seed=0):
    model = cgru.Sequential([
        layers.GRU(8, return_sequences=True, reset_after=False, dropout=0.1),
        layers.Bidirectional(layers.GRU(6, return_sequences=True), merge_mode="sum"),
        layers.Dropout(0.2),
        layers.GRU(5),
        layers.Dense(2, activation="tanh"),
    ], seed=seed)
    model.compile(optimizers.Adam(0.01, global_clipnorm=1.0), "mse", metrics=["mae"])
    return model


def saved_model(tmp_path):
    """A built (untrained) model and the file it was saved to."""
    model = make_model()
    model.build((None, 9, 3))
    path = tmp_path / "m.npz"
    model.save(path)
    return model, path


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((40, 9, 3)).astype(np.float32),
            rng.standard_normal((40, 2)).astype(np.float32))


def test_loaded_model_predicts_bit_identically(tmp_path, data):
    x, y = data
    model = make_model()
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    model.save(tmp_path / "m.npz", metadata={"window": 9, "note": "test"})
    loaded = cgru.load_model(tmp_path / "m.npz")
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert loaded.metadata == {"window": 9, "note": "test"}
    assert loaded.summary(print_fn=None) == model.summary(print_fn=None)


def test_training_resumes_from_a_saved_file_as_if_never_interrupted(tmp_path, data):
    x, y = data
    straight = make_model()
    straight.fit(x, y, epochs=4, batch_size=8, verbose=0)
    interrupted = make_model()
    interrupted.fit(x, y, epochs=2, batch_size=8, verbose=0)
    interrupted.save(tmp_path / "m.npz")
    resumed = cgru.load_model(tmp_path / "m.npz")
    assert resumed.optimizer.iterations == interrupted.optimizer.iterations == 10
    resumed.fit(x, y, epochs=2, batch_size=8, verbose=0)
    for a, b in zip(resumed.get_weights(), straight.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_without_optimizer_state_the_optimizer_starts_fresh(tmp_path, data):
    x, y = data
    model = make_model()
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    model.save(tmp_path / "m.npz", include_optimizer=False)
    loaded = cgru.load_model(tmp_path / "m.npz")
    assert loaded.optimizer.iterations == 0 and not any(loaded.optimizer.slots.values())
    with np.load(tmp_path / "m.npz") as archive:
        assert not [k for k in archive.files if k.startswith("optimizer/")]


def test_a_crash_while_saving_leaves_the_previous_file_intact(tmp_path, data, monkeypatch):
    x, y = data
    model, path = saved_model(tmp_path)
    before = path.read_bytes()
    model.fit(x, y, epochs=1, verbose=0)

    def crash_midway(file, **arrays):
        file.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(saving.np, "savez", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        model.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]  # no temporary file left


def test_truncated_file_is_reported(tmp_path):
    _, path = saved_model(tmp_path)
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        cgru.load_model(path)


def test_corrupted_bytes_are_reported(tmp_path):
    _, path = saved_model(tmp_path)
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:  # flip bytes inside the first weight array's data
        info = z.getinfo("weights/gru/weight_ih_l0.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 200
    raw[start:start + 8] = bytes(8)
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="corrupted"):
        cgru.load_model(path)


def test_foreign_files_are_refused(tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("hello")
    with pytest.raises(ValueError, match="notes.npz is not a cgru model file"):
        cgru.load_model(text)
    plain = tmp_path / "plain.npz"
    np.savez(plain, a=np.zeros(3))
    with pytest.raises(ValueError, match="not a cgru model file"):
        cgru.load_model(plain)
    with pytest.raises(FileNotFoundError, match="no model file"):
        cgru.load_model(tmp_path / "missing.npz")


def test_pickled_content_is_never_executed(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, __cgru__=np.array([{"format": "cgru.Sequential"}], dtype=object))
    with pytest.raises(ValueError, match="evil.npz is not a cgru model file") as refused:
        cgru.load_model(path)
    assert "allow_pickle" not in str(refused.value)


def rewrite_description(path, change):
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    description = json.loads(str(arrays["__cgru__"]))
    change(description)
    arrays["__cgru__"] = np.array(json.dumps(description))
    np.savez(path, **arrays)


def test_weights_that_do_not_fit_the_architecture_are_named(tmp_path):
    _, path = saved_model(tmp_path)
    rewrite_description(path, lambda d: d["layers"][3]["config"].update(units=7))
    with pytest.raises(ValueError, match="weight 'weights/gru_1/weight_ih_l0'"):
        cgru.load_model(path)


def test_a_newer_format_version_is_refused(tmp_path):
    _, path = saved_model(tmp_path)
    rewrite_description(path, lambda d: d.update(format_version=99))
    with pytest.raises(ValueError, match="format version 99"):
        cgru.load_model(path)


def test_save_needs_json_metadata(tmp_path):
    model = make_model()
    model.build((None, 9, 3))
    with pytest.raises(TypeError, match="metadata must be JSON"):
        model.save(tmp_path / "m.npz", metadata={"x": object()})
    assert not list(tmp_path.iterdir())


def test_save_needs_metadata_as_a_dict_of_finite_json_values(tmp_path):
    model = make_model()
    model.build((None, 9, 3))
    with pytest.raises(TypeError, match="metadata must be a dict, got list"):
        model.save(tmp_path / "m.npz", metadata=[1, 2])
    with pytest.raises(ValueError, match="NaN or infinity"):
        model.save(tmp_path / "m.npz", metadata={"scale": float("nan")})
    with pytest.raises(ValueError, match="more than the 4,194,304 load_model reads"):
        model.save(tmp_path / "m.npz", metadata={"notes": "x" * (1 << 22)})
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("layer, input_shape", [
    (layers.GRU(5, return_sequences=True), (7, 3)),
    (layers.GRU(4, reset_after=False, use_bias=False), (None, 2)),
    (layers.Bidirectional(layers.GRU(3), merge_mode="ave"), (6, 4)),
    (layers.Dense(6), (None, 5)),
    (layers.Dense(2, use_bias=False), (4,)),
    (layers.Dropout(0.5), (3, 2)),
])
def test_param_shapes_are_the_shapes_build_creates(layer, input_shape):
    declared = layer.param_shapes(input_shape)
    layer.name = "layer"
    layer.build(input_shape, np.random.default_rng(0), np.float32)
    assert declared == {k: v.shape for k, v in layer.params.items()}


# ---- temporaries of saves that died --------------------------------------------------------------

def dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def leftover(directory, name, age_s):
    path = directory / name
    path.write_bytes(b"PK\x03\x04 half a model")
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_a_save_removes_the_temporaries_of_writers_that_are_provably_dead(tmp_path):
    host, hour = saving._host(), 3600
    gone = [leftover(tmp_path, f".cgru-save-{host}-{dead_pid()}-abc123.tmp", hour),
            leftover(tmp_path, ".cgru-save-abc123.tmp", 25 * hour),            # unnamed writer
            leftover(tmp_path, ".cgru-save-otherhost-12-abc123.tmp", 25 * hour)]
    kept = [leftover(tmp_path, f".cgru-save-{host}-{dead_pid()}-new123.tmp", 60),  # just written
            leftover(tmp_path, f".cgru-save-{host}-{os.getpid()}-abc123.tmp", hour),  # alive
            leftover(tmp_path, ".cgru-save-otherhost-12-abc124.tmp", hour),  # pid not ours to ask
            leftover(tmp_path, ".cgru-save-abc124.tmp", hour),
            leftover(tmp_path, ".cgru-save-notes.txt", 25 * hour),           # not our pattern
            leftover(tmp_path, "model.npz", 25 * hour)]
    link = tmp_path / f".cgru-save-{host}-{dead_pid()}-lnk123.tmp"
    link.symlink_to(kept[-1])
    model = make_model()
    model.build((None, 9, 3))
    model.save(tmp_path / "m.npz")
    assert not [p for p in gone if p.exists()]
    assert all(p.exists() for p in kept) and link.is_symlink()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".cgru-save-") and
                p not in kept and p != link]


def test_the_leftover_of_a_save_killed_with_sigkill_goes_at_the_next_save(tmp_path):
    code = f"""
import os, signal, cgru
from cgru import models, saving
def die_midway(file, **arrays):
    file.write(b"PK\\x03\\x04 half a zip")
    file.flush()
    os.kill(os.getpid(), signal.SIGKILL)
saving.np.savez = die_midway
model = cgru.Sequential([cgru.layers.Input((4, 2)), cgru.layers.GRU(3)])
model.save({str(tmp_path / "m.npz")!r})
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert result.returncode == -signal.SIGKILL
    stray = [p for p in tmp_path.iterdir() if p.name.startswith(".cgru-save-")]
    assert len(stray) == 1 and f"-{saving._host()}-" in stray[0].name
    then = time.time() - saving.QUIET_S - 60
    os.utime(stray[0], (then, then))
    model = make_model()
    model.build((None, 9, 3))
    model.save(tmp_path / "m.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]


def test_save_flushes_the_file_and_then_its_directory(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append("directory" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(saving.os, "fsync", fsync)
    model = make_model()
    model.build((None, 9, 3))
    model.save(tmp_path / "m.npz")
    assert synced == ["file", "directory"]


def test_a_saved_file_gets_the_permissions_of_any_new_file_and_the_umask_is_never_touched(
        tmp_path, monkeypatch):
    # the umask is the process's, not a thread's: setting it (even for a moment, to read it)
    # would give other threads' new files the wrong permissions
    def no_umask(mask):
        raise AssertionError("save changed the process's umask")

    before = os.umask(0o027)
    try:
        monkeypatch.setattr(os, "umask", no_umask)
        model = make_model()
        model.build((None, 9, 3))
        model.save(tmp_path / "m.npz")
    finally:
        monkeypatch.undo()
        os.umask(before)
    assert stat.S_IMODE(os.stat(tmp_path / "m.npz").st_mode) == 0o640
