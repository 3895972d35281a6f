"""Model files: exact round trips, resumed training, atomic writes and damaged files."""
import json
import zipfile

import numpy as np
import pytest

import cgru
from cgru import layers, models, optimizers


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

    monkeypatch.setattr(models.np, "savez", crash_midway)
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
