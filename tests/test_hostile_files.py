"""load_model on damaged, foreign and crafted files: always a ValueError that names the file and
the cause, never another exception, never NumPy's allow_pickle advice, and never the memory a
crafted description or header asks for."""
import io
import os
import json
import struct
import tracemalloc
import warnings
import zipfile
import zlib

import numpy as np
import pytest

import cgru
from cgru import layers, optimizers


def trained_model():
    model = cgru.Sequential([
        layers.GRU(4, return_sequences=True, reset_after=False),
        layers.Bidirectional(layers.GRU(3)),
        layers.Dropout(0.1),
        layers.Dense(2, activation="tanh"),
    ], seed=0)
    model.compile(optimizers.Adam(0.01), "mse", metrics=["mae"])
    rng = np.random.default_rng(0)
    model.fit(rng.standard_normal((8, 5, 3)), rng.standard_normal((8, 2)), epochs=1,
              batch_size=4, verbose=0)
    return model


@pytest.fixture
def good(tmp_path):
    """A valid model file (about 15 KB) with weights and Adam's slots."""
    path = tmp_path / "good.npz"
    trained_model().save(path)
    return path


def refused(path, *phrases):
    """load_model(path) raises a plain ValueError naming the file and each phrase."""
    with pytest.raises(Exception) as caught:
        cgru.load_model(path)
    error = caught.value
    assert type(error) is ValueError, f"{type(error).__name__}: {error}"
    message = str(error)
    assert str(path) in message
    for phrase in phrases:
        assert phrase in message
    assert "allow_pickle" not in message and "\n" not in message
    return message


def members(path):
    with zipfile.ZipFile(path) as z:
        return {info.filename: z.read(info) for info in z.infolist()}


def write_zip(path, entries, compression=zipfile.ZIP_STORED):
    """entries: a list of (name, bytes), duplicates allowed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about duplicate names
        with zipfile.ZipFile(path, "w", compression) as z:
            for name, data in entries:
                z.writestr(name, data)


def npy(array):
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def raw_npy(header, data=b"", version=1):
    """An .npy member with `header` (text) as it stands: a crafted one."""
    text = header.encode("latin1")
    size = struct.pack("<H" if version == 1 else "<I", len(text))
    return b"\x93NUMPY" + bytes([version, 0]) + size + text + data


def replace_member(path, name, data):
    entries = list(members(path).items())
    write_zip(path, [(n, data if n == name else d) for n, d in entries])


def description(path):
    return json.loads(np.load(path)["__cgru__"].item())


def rewrite_description(path, change):
    d = description(path)
    change(d)
    replace_member(path, "__cgru__.npy", npy(np.array(json.dumps(d))))


def gru_config(d):
    return d["layers"][0]["config"]


# ---- the file as a whole ------------------------------------------------------------------------

def test_a_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        cgru.load_model(tmp_path / "missing.npz")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.npz"
    path.write_bytes(b"")
    refused(path, "is empty")


def test_directory(tmp_path):
    path = tmp_path / "model.npz"
    path.mkdir()
    refused(path, "is a directory")


def test_text_file(tmp_path):
    path = tmp_path / "notes.npz"
    path.write_text("weights: lots\n")
    refused(path, "is not a cgru model file")


def test_a_single_npy_array(tmp_path):
    path = tmp_path / "array.npz"
    path.write_bytes(npy(np.zeros(3)))
    refused(path, "is not a cgru model file", ".npy array")


def test_a_pickle_passed_as_a_model(tmp_path):
    path = tmp_path / "pickle.npz"
    path.write_bytes(b"\x80\x04\x95" + b"\x00" * 40)
    refused(path, "is not a cgru model file")


@pytest.mark.parametrize("fraction", [0.02, 0.3, 0.6, 0.95, 0.999])
def test_truncated_anywhere(good, fraction):
    raw = good.read_bytes()
    good.write_bytes(raw[:int(len(raw) * fraction)])
    refused(good, "truncated or corrupted")


def test_every_truncation_and_flipped_byte_gives_a_value_error(good):
    raw = good.read_bytes()
    rng = np.random.default_rng(1)
    for cut in range(0, len(raw), 211):
        good.write_bytes(raw[:cut])
        refused(good)
    for position in rng.integers(0, len(raw), 150):
        damaged = bytearray(raw)
        damaged[position] ^= 1 << int(rng.integers(8))
        good.write_bytes(bytes(damaged))
        try:
            cgru.load_model(good)  # a flip in padding or a weight's value may load
        except Exception as error:
            assert type(error) is ValueError, f"byte {position}: {type(error).__name__}: {error}"
            assert str(good) in str(error)


# ---- the zip directory --------------------------------------------------------------------------

def test_a_zip_without_a_description(tmp_path):
    path = tmp_path / "other.npz"
    write_zip(path, [("readme.txt", b"hello")])
    refused(path, "is not a cgru model file", "no '__cgru__' entry", "readme.txt")


def test_a_plain_npz(tmp_path):
    path = tmp_path / "plain.npz"
    np.savez(path, a=np.zeros(3))
    refused(path, "is not a cgru model file", "no '__cgru__' entry")


def test_an_entry_that_is_not_an_array(good):
    write_zip(good, list(members(good).items()) + [("notes.txt", b"hi")])
    refused(good, "entry 'notes.txt' is not a NumPy array")


def test_an_entry_that_is_not_a_model_part(good):
    write_zip(good, list(members(good).items()) + [("extra.npy", npy(np.zeros(2)))])
    refused(good, "unexpected entries ['extra']")


@pytest.mark.parametrize("name", ["__cgru__.npy", "weights/dense/kernel.npy"])
def test_duplicated_entries(good, name):
    entries = list(members(good).items())
    write_zip(good, entries + [(name, dict(entries)[name])])
    refused(good, "appear more than once", name)


def test_compressed_entries_are_refused_unread(good):
    write_zip(good, list(members(good).items()), zipfile.ZIP_DEFLATED)
    refused(good, "is compressed")


def test_a_zip_bomb_entry_is_refused_without_inflating_it(good):
    bomb = zlib.compress(b"\0" * (20 << 20), 9)  # 20 MB of zeros in about 20 KB
    entries = list(members(good).items())
    write_zip(good, entries + [("weights/bomb/x.npy", b"\0" * (20 << 20))], zipfile.ZIP_DEFLATED)
    assert good.stat().st_size < 2 * len(bomb) + 30_000
    tracemalloc.start()
    try:
        refused(good, "is compressed")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20


def central_directory_entry(path, name):
    """Offset of `name`'s record in the zip's central directory."""
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as z:
        at = z.start_dir
    while raw[at:at + 4] == b"PK\x01\x02":
        name_len, extra_len, comment_len = struct.unpack("<HHH", raw[at + 28:at + 34])
        if raw[at + 46:at + 46 + name_len].decode() == name:
            return at
        at += 46 + name_len + extra_len + comment_len
    raise KeyError(name)


def test_an_entry_whose_directory_declares_1_6_gb_is_refused_unread(good):
    at = central_directory_entry(good, "weights/dense/kernel.npy")
    raw = bytearray(good.read_bytes())
    raw[at + 24:at + 28] = struct.pack("<I", 1_600_000_000)  # uncompressed size
    good.write_bytes(bytes(raw))
    tracemalloc.start()
    try:
        refused(good, "weights/dense/kernel.npy", "declares 1,600,000,000 bytes")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20


def test_entries_declaring_more_bytes_than_the_file_holds(good):
    at = central_directory_entry(good, "weights/dense/kernel.npy")
    raw = bytearray(good.read_bytes())
    raw[at + 20:at + 28] = struct.pack("<II", 10**9, 10**9)  # compressed and uncompressed
    good.write_bytes(bytes(raw))
    refused(good, "truncated or corrupted", "weights/dense/kernel.npy")


# ---- the .npy headers ---------------------------------------------------------------------------

HEADER = "{'descr': '<f4', 'fortran_order': False, 'shape': %s, }"


@pytest.mark.parametrize("header, phrase", [
    (HEADER % "(-3, 2)", "invalid header"),
    (HEADER % "(nan, 2)", "unreadable header"),
    (HEADER % "(2.5, 2)", "invalid header"),
    (HEADER % "(True, 2)", "invalid header"),
    (HEADER % "'big'", "invalid header"),
    ("{'descr': '<f4', 'fortran_order': 'no', 'shape': (2, 2), }", "invalid header"),
    ("{'descr': '<f4', 'shape': (2, 2), }", "invalid header"),
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), 'x': 1}", "invalid header"),
    ("[1, 2, 3]", "invalid header"),
    ("__import__('os').system('echo owned')", "unreadable header"),
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), '''", "unreadable header"),
    ("(" * 5000, "a header of 5,001 bytes"),
    (HEADER % ("(" + "9" * 4000 + ",)"), "does not match its architecture"),
], ids=lambda value: value[:40] if isinstance(value, str) else None)
def test_crafted_array_headers(good, header, phrase):
    replace_member(good, "weights/dense/kernel.npy", raw_npy(header.ljust(117) + "\n"))
    refused(good, phrase)


def test_a_header_length_beyond_the_entry(good):
    entry = b"\x93NUMPY\x02\x00" + struct.pack("<I", 2**32 - 1) + b"{"
    replace_member(good, "weights/dense/kernel.npy", entry)
    refused(good, "a header of 4,294,967,295 bytes")


def test_a_weight_header_declaring_1_6_gb_in_a_small_entry(good):
    header = HEADER % "(400000000,)"
    replace_member(good, "weights/dense/kernel.npy",
                   raw_npy(header.ljust(117) + "\n", b"\0" * 20000))
    tracemalloc.start()
    try:
        refused(good, "weight 'weights/dense/kernel'", "float32(400000000,)")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20


def test_a_description_header_declaring_400_million_characters(good):
    header = "{'descr': '<U400000000', 'fortran_order': False, 'shape': (), }"
    replace_member(good, "__cgru__.npy", raw_npy(header.ljust(117) + "\n", b"\0" * 20000))
    refused(good, "is not a cgru model file", "declares 400,000,000 characters")


def test_an_object_array_as_the_description(good):
    replace_member(good, "__cgru__.npy", npy(np.array([{"format": "cgru.Sequential"}])))
    refused(good, "is not a cgru model file", "not text")


def test_an_object_array_as_a_weight(good):
    kernel = np.load(good)["weights/dense/kernel"]
    replace_member(good, "weights/dense/kernel.npy", npy(kernel.astype(object)))
    refused(good, "weight 'weights/dense/kernel' is dtype '|O'")


def test_weights_of_the_wrong_dtype(good):
    kernel = np.load(good)["weights/dense/kernel"]
    replace_member(good, "weights/dense/kernel.npy", npy(kernel.astype(np.float64)))
    refused(good, "weight 'weights/dense/kernel' is float64", "needs float32")


def test_data_shorter_than_its_header_declares(good):
    data = members(good)["weights/dense/kernel.npy"]
    replace_member(good, "weights/dense/kernel.npy", data[:-4])
    refused(good, "truncated or corrupted", "weights/dense/kernel")


def test_fortran_ordered_and_big_endian_weights_load_as_written(good):
    before = cgru.load_model(good).get_weights()
    arrays = dict(np.load(good))
    for key in arrays:
        if key.startswith("weights/"):
            arrays[key] = np.asfortranarray(arrays[key]).astype(arrays[key].dtype.newbyteorder(">"))
    np.savez(good, **arrays)
    for a, b in zip(cgru.load_model(good).get_weights(), before):
        np.testing.assert_array_equal(a, b)


# ---- the description ----------------------------------------------------------------------------

@pytest.mark.parametrize("text, phrase", [
    ("{not json", "not JSON"),
    ("[" * 100_000, "not JSON"),
    ('{"format": "cgru.Sequential", "format": "x"}', "the key 'format' appears twice"),
    ("[1, 2]", "is not a cgru model file (format [1, 2])"),
    ('{"format": "keras"}', "is not a cgru model file (format 'keras')"),
    ("", "not JSON"),
])
def test_description_text_that_is_not_a_model_description(good, text, phrase):
    replace_member(good, "__cgru__.npy", npy(np.array(text)))
    refused(good, phrase)


def test_description_text_that_is_not_unicode(good):
    header = "{'descr': '<U2', 'fortran_order': False, 'shape': (), }"
    replace_member(good, "__cgru__.npy", raw_npy(header.ljust(117) + "\n", b"\xff" * 8))
    refused(good, "not JSON")


def set_key(key, value):
    return lambda d: d.__setitem__(key, value)


def set_config(layer, key, value):
    return lambda d: d["layers"][layer]["config"].__setitem__(key, value)


NAN = float("nan")


@pytest.mark.parametrize("change, phrase", [
    (set_key("format_version", "1"), "format version '1'"),
    (set_key("format_version", True), "format version True"),
    (set_key("format_version", 2), "format version 2; this cgru reads version 1"),
    (lambda d: d.pop("rng_state"), "missing ['rng_state']"),
    (set_key("extra", 1), "unknown ['extra']"),
    (set_key("name", 5), "name must be a string"),
    (set_key("dtype", "int8"), "dtype must be 'float32' or 'float64'"),
    (set_key("input_shape", "5,3"), "input_shape must be"),
    (set_key("input_shape", []), "input_shape must be"),
    (set_key("input_shape", [5, None]), "input_shape must give the sizes the weights depend on"),
    (set_key("input_shape", [5, -3]), "input_shape must be"),
    (set_key("input_shape", [NAN, 3]), "not JSON (NaN is not a JSON number)"),
    (set_key("input_shape", [float("inf"), 3]), "not JSON (Infinity is not a JSON number)"),
    (set_key("input_shape", [5, 3.0]), "input_shape must be"),
    (set_key("input_shape", [5, 2**40]), "input_shape must be"),
    (set_key("input_shape", [3]), "takes input (batch, time, features)"),
    (set_key("layers", {}), "layers must be a non-empty list"),
    (set_key("layers", []), "layers must be a non-empty list"),
    (set_key("layers", [5]), "layer 0 must be {'class': ..., 'config': ...}"),
    (set_key("layers", [{"class": "Conv2D", "config": {}}]), "unknown class 'Conv2D'"),
    (set_key("layers", [{"class": ["GRU"], "config": {}}]), "unknown class ['GRU']"),
    (set_key("layers", [{"class": "GRU", "config": [8]}]), "GRU config must be a dict"),
    (set_config(0, "units", "4"), "units must be an integer >= 1, got '4'"),
    (set_config(0, "units", 4.0), "units must be an integer >= 1, got 4.0"),
    (set_config(0, "units", 0), "units must be an integer >= 1, got 0"),
    (set_config(0, "units", True), "units must be an integer >= 1, got True"),
    (set_config(0, "units", 10**9), "units must be at most 65536"),
    (set_config(0, "return_sequences", "no"), "return_sequences='no' is not a valid setting"),
    (set_config(0, "dropout", NAN), "NaN is not a JSON number"),
    (set_config(0, "dropout", 1.5), "dropout must be a number in [0, 1)"),
    (set_config(0, "dropout", "0.1"), "dropout must be a number in [0, 1)"),
    (set_config(0, "name", "a/b"), "name must be a non-empty string without '/'"),
    (set_config(0, "name", "dense"), "two layers are named 'dense'"),
    (set_config(0, "extra", 1), "unexpected keyword argument 'extra'"),
    (lambda d: d["layers"][0]["config"].pop("dropout"), "GRU config: missing dropout"),
    (set_config(0, "kernel_initializer", "glorot_uniform"), "kernel_initializer must be"),
    (set_config(0, "kernel_initializer", {"class": "Evil", "config": {}}),
     "is not a cgru initializer"),
    (set_config(0, "kernel_initializer", {"class": "Constant", "config": {"value": "x"}}),
     "is not a cgru initializer"),
    (set_config(0, "kernel_initializer", {"class": "Orthogonal", "config": {"gain": "2"}}),
     "is not a valid setting"),
    (set_config(3, "activation", "swish"), "activation must be one of"),
    (set_config(1, "merge_mode", "max"), "merge_mode must be one of"),
    (set_config(1, "layer", {"class": "Dense", "config": {}}), "layer must be {'class': 'GRU'"),
    (set_key("metadata", []), "metadata must be an object"),
    (set_key("metadata", "x"), "metadata must be an object"),
    (set_key("rng_state", "seed"), "rng_state is not a PCG64 state"),
    (lambda d: d["rng_state"].update(bit_generator="MT19937"), "rng_state is not a PCG64"),
    (lambda d: d["rng_state"]["state"].update(state=-1), "rng_state is not a PCG64 state"),
    (lambda d: d["rng_state"]["state"].update(inc=2**200), "rng_state is not a PCG64 state"),
    (lambda d: d["rng_state"].update(has_uint32=True), "rng_state is not a PCG64 state"),
    (set_key("compile", "adam"), "compile must be null or an object"),
    (lambda d: d["compile"].pop("loss"), "compile must be null or an object"),
    (lambda d: d["compile"]["optimizer"].update({"class": "Evil"}), "optimizer"),
    (lambda d: d["compile"]["optimizer"]["config"].update(learning_rate=-1),
     "learning_rate must be a number > 0"),
    (lambda d: d["compile"]["optimizer"]["config"].update(learning_rate="fast"),
     "learning_rate must be a number > 0"),
    (lambda d: d["compile"]["optimizer"]["config"].update(learning_rate=NAN),
     "NaN is not a JSON number"),
    (lambda d: d["compile"]["optimizer"]["config"].update(nesterov=True),
     "unexpected keyword argument 'nesterov'"),
    (lambda d: d["compile"]["optimizer"]["config"].update(learning_rate={
        "class": "ExponentialDecay", "config": {"initial_learning_rate": 0.01, "decay_steps": 5,
                                                "decay_rate": 0.5, "staircase": "yes"}}),
     "is not what a cgru optimizer writes"),
    (lambda d: d["compile"]["optimizer"]["config"].update(amsgrad=True),
     "unexpected keyword argument 'amsgrad'"),
    (lambda d: d["compile"]["optimizer"]["config"].update(
        learning_rate={"class": "ExponentialDecay", "config": {"decay_steps": 5}}), "optimizer"),
    (lambda d: d["compile"].update(loss={"class": "Evil", "config": {}}), "loss"),
    (lambda d: d["compile"].update(loss="mse"), "loss must be {'class'"),
    (lambda d: d["compile"].update(metrics="mae"), "compile metrics must be a list"),
    (lambda d: d["compile"].update(metrics=["nope"]), "compile metrics: metrics must be among"),
    (lambda d: d["compile"].update(optimizer_iterations=-1), "optimizer_iterations must be"),
    (lambda d: d["compile"].update(optimizer_iterations=1.5), "optimizer_iterations must be"),
    (lambda d: d["compile"].update(optimizer_iterations="2"), "optimizer_iterations must be"),
])
def test_description_fields_of_the_wrong_type_or_range(good, change, phrase):
    rewrite_description(good, change)
    refused(good, phrase)


def test_huge_declared_units_fail_on_the_byte_count_before_any_allocation(good):
    rewrite_description(good, set_config(0, "units", 6000))
    tracemalloc.start()
    try:
        message = refused(good, "declares", "float32 parameters", "more than the file's")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # GRU 3 * 6000 * (3 + 6000 + 2), Bidirectional 2 * 3 * 3 * (6000 + 3 + 2), Dense 6 * 2 + 2
    assert "108,198,104 float32 parameters (432,792,416 bytes)" in message
    assert peak < 4 << 20


def test_declared_units_that_fit_the_file_but_not_its_arrays(good):
    rewrite_description(good, set_config(0, "units", 5))
    refused(good, "weight 'weights/gru/weight_ih_l0' is float32(12, 3)",
            "the architecture needs float32(15, 3)")


def test_a_declared_dtype_that_does_not_match_the_arrays(good):
    rewrite_description(good, set_key("dtype", "float64"))
    refused(good, "is float32", "needs float64")


# ---- the weights and the optimizer state --------------------------------------------------------

def drop_member(path, name):
    write_zip(path, [(n, d) for n, d in members(path).items() if n != name])


def test_a_missing_weight(good):
    drop_member(good, "weights/dense/bias.npy")
    refused(good, "weights missing ['weights/dense/bias']")


def test_an_unexpected_weight(good):
    write_zip(good, list(members(good).items()) + [("weights/dense/gamma.npy", npy(np.ones(2)))])
    refused(good, "unexpected ['weights/dense/gamma']")


def test_optimizer_state_for_an_unknown_slot(good):
    extra = ("optimizer/velocity/dense/kernel.npy", members(good)["optimizer/m/dense/kernel.npy"])
    write_zip(good, list(members(good).items()) + [extra])
    refused(good, "optimizer entry 'optimizer/velocity/dense/kernel' does not belong to a Adam")


def test_optimizer_state_of_the_wrong_shape(good):
    replace_member(good, "optimizer/m/dense/kernel.npy", npy(np.zeros((2, 2), np.float32)))
    refused(good, "entry 'optimizer/m/dense/kernel' has shape (2, 2)", "needs (6, 2)")


def test_optimizer_state_without_compile_settings(good):
    rewrite_description(good, set_key("compile", None))
    refused(good, "holds optimizer state")


def test_compile_false_still_refuses_damaged_optimizer_state(good):
    replace_member(good, "optimizer/m/dense/kernel.npy", npy(np.zeros(3, np.float32)))
    with pytest.raises(ValueError, match="optimizer/m/dense/kernel"):
        cgru.load_model(good, compile=False)


def test_a_valid_file_still_loads_after_all_these_checks(good):
    model = cgru.load_model(good)
    assert model.optimizer.iterations == 2
    assert sorted(model.optimizer.slots) == ["m", "v"]
    assert cgru.load_model(good, compile=False).loss is None


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_is_refused_without_blocking(tmp_path):
    path = tmp_path / "model.npz"
    os.mkfifo(path)
    refused(path, "is not a regular file")
