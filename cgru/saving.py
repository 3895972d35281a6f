"""The model file format, `save_model` and `load_model`, for `Sequential` and `Model`.

File format: a NumPy `.npz` archive of uncompressed members (as `np.savez` writes them). The
member `__cgru__` holds a JSON description (format and version, the layers and their configs,
the input shape of a Sequential or the graph of a Model, dtype, compile settings, optimizer step
count, the model's random-generator state, user metadata); `weights/<layer>/<name>` hold
parameters in the engine's layout and `optimizer/<slot>/<layer>/<name>` the optimizer's slots.
Loading never unpickles and reads no member it has not checked (see the loading section).
Saving writes a temporary file in the same directory, flushes it to disk, renames it over the
target and flushes the directory, so a crash mid-save leaves the previous file intact; the next
save removes what a killed writer left.
"""
import ast
import collections
import json
import math
import os
import re
import secrets
import socket
import stat
import struct
import time
import zipfile
import zlib

import numpy as np

from . import graph as _graph
from . import layers as _layers
from . import losses as _losses
from . import metrics as _metrics
from . import optimizers as _optimizers

FORMAT_SEQUENTIAL = "cgru.Sequential"
FORMAT_MODEL = "cgru.Model"
FORMAT_VERSION = 1
_DESCRIPTION = "__cgru__"
# what a model file may be called: cgru writes its own format, never a Keras or HDF5 file
_OTHER_FORMATS = {".keras": "a Keras file", ".h5": "an HDF5 file", ".hdf5": "an HDF5 file",
                  ".pt": "a PyTorch file", ".pth": "a PyTorch file", ".onnx": "an ONNX file"}


# ---- saving -------------------------------------------------------------------------------------

def architecture(model):
    """The model's architecture as JSON values: its layers' configs and the input shape (a
    Sequential) or the graph (a Model): which tensors each layer call reads."""
    from .models import Sequential
    description = {"name": model.name, "dtype": model.dtype.name,
                   "layers": [{"class": type(l).__name__, "config": l.get_config()}
                              for l in model.layers]}
    if isinstance(model, Sequential):
        description["format"] = FORMAT_SEQUENTIAL
        description["input_shape"] = list(model.input_shape)
        return description
    description["format"] = FORMAT_MODEL
    names = [t.node.name for t in model.inputs]
    clash = set(names) & {l.name for l in model.layers}
    if len(set(names)) != len(names) or clash:
        raise ValueError(f"save: every Input and layer needs its own name; "
                         f"{sorted(clash) or names} repeat")

    def ref(t):
        return [t.node.name if isinstance(t.node, _graph.InputNode) else t.node.layer.name,
                t.index]

    description["graph"] = {
        "inputs": [{"name": t.node.name, "shape": list(t.node.shape),
                    "batch_size": t.node.batch_size, "kind": t.node.kind}
                   for t in model.inputs],
        "nodes": [{"layer": node.layer.name, "inputs": [ref(t) for t in node.inputs]}
                  for node in model._graph.nodes],
        "outputs": [ref(t) for t in model.outputs],
        "single_input": model._single_input, "single_output": model._single_output}
    return description


def from_architecture(config):
    """A model of the architecture `architecture()` describes, with fresh weights."""
    try:
        return _model_from(_checked_architecture(config), build=True)
    except _Refused as e:
        raise ValueError(f"the model config {e}") from None


def save_model(model, path, include_optimizer=True, metadata=None):
    """Write model to `path` (see the module's docstring), atomically."""
    path = os.fspath(path)
    extension = os.path.splitext(path)[1].lower()
    if extension in _OTHER_FORMATS:
        raise ValueError(f"save: {path!r} names {_OTHER_FORMATS[extension]}, but cgru writes "
                         f"its own .npz format; save to a '.npz' path, or for a Keras file "
                         f"convert first: cgru.interop.to_keras(model).save({path!r})")
    if metadata is not None and not isinstance(metadata, dict):
        raise TypeError(f"save: metadata must be a dict, got {type(metadata).__name__}")
    description = architecture(model)
    description.update({
        "format_version": FORMAT_VERSION,
        "metadata": metadata if metadata is not None else {},
        "compile": None,
    })
    # copies taken between two training updates (another thread may be training the model):
    # the file holds one update's weights, optimizer state and generator, and is written after
    with model._update_lock:
        description["rng_state"] = model.rng.bit_generator.state
        arrays = {f"weights/{l.name}/{k}": v.copy() for l in model.layers
                  for k, v in l.params.items()}
        if model.loss is not None:
            description["compile"] = {
                "optimizer": _optimizers.serialize(model.optimizer),
                "loss": _losses.serialize(model.loss), "metrics": model.metric_names,
                "optimizer_iterations": None}
            if include_optimizer:
                slots, iterations = model.optimizer.get_state()
                description["compile"]["optimizer_iterations"] = iterations
                arrays.update({f"optimizer/{k}": v.copy() for k, v in slots.items()})
    try:
        text = json.dumps(description, allow_nan=False)
    except TypeError as e:
        raise TypeError(f"save: metadata must be JSON-serialisable ({e})") from None
    except ValueError:
        raise ValueError("save: the metadata or the compile settings hold NaN or infinity, "
                         "which JSON cannot write") from None
    if len(text) > _MAX_DESCRIPTION_CHARS:
        raise ValueError(f"save: the model description takes {len(text):,} characters of "
                         f"JSON, more than the {_MAX_DESCRIPTION_CHARS:,} load_model reads; "
                         f"keep large data out of metadata")
    arrays[_DESCRIPTION] = np.array(text)
    _atomic_savez(path, arrays)


# ---- loading ------------------------------------------------------------------------------------
#
# load_model trusts nothing in the file. In order, before anything is inflated or allocated:
# the zip directory (unique names, only uncompressed .npy members, sizes that fit in the file),
# the description (size, then strict JSON, then every field's type and range), the layers built
# from it without weights, and the weights' shapes (from the .npy headers) against the shapes
# the layers need, whose bytes must fit in the file. Only then are the weights allocated and read.

_MAX_DESCRIPTION_CHARS = 1 << 22     # JSON text; stored as UTF-32, 4 bytes a character
_MAX_NPY_HEADER = 4096               # NumPy writes about 128 bytes
_MAX_DIMENSION = (1 << 31) - 1       # a size in input_shape (the engine counts in C ints)
_ARRAY_DESCRS = ("<f4", ">f4", "<f8", ">f8")
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError,
               struct.error, NotImplementedError, RuntimeError, zlib.error, OverflowError)
_ARCHITECTURE_KEYS = {FORMAT_SEQUENTIAL: {"format", "name", "dtype", "input_shape", "layers"},
                      FORMAT_MODEL: {"format", "name", "dtype", "graph", "layers"}}
_FILE_KEYS = {"format_version", "rng_state", "metadata", "compile"}
_COMPILE_KEYS = {"optimizer", "loss", "metrics", "optimizer_iterations"}


class _Refused(Exception):
    """Why a file cannot be loaded, said after its name: 'is truncated or corrupted (...)'.
    load_model turns it into a ValueError; not one itself, so that no handler of the ValueErrors
    of zipfile or NumPy below catches it on the way."""


def _invalid(cause):
    return _Refused(f"has an invalid model description: {cause}")


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def load_model(path, compile=True):
    """Read a model written by `save` (a Sequential or a Model). Runs no code from the file, and reads nothing
    it has not checked first: a damaged, foreign or crafted file raises ValueError naming the
    file and the cause (a missing file, FileNotFoundError). compile=False skips the optimizer,
    loss and metrics."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no model file at {path}")
    try:
        with _Archive(path) as archive:
            return _read_model(archive, compile)
    except _Refused as e:
        raise ValueError(f"{path} {e}") from None


class _Archive:
    """A model file's members (name without '.npy' -> ZipInfo), checked from the zip directory
    alone: nothing is inflated here."""

    def __init__(self, path):
        try:
            mode = os.stat(path).st_mode
            if stat.S_ISDIR(mode):
                raise _Refused("is a directory, not a cgru model file")
            if not stat.S_ISREG(mode):  # a FIFO or a device would block or never end
                raise _Refused("is not a regular file, so not a cgru model file")
            self.size = os.path.getsize(path)
            with open(path, "rb") as f:
                magic = f.read(4)
        except OSError as e:
            raise _Refused(f"cannot be read ({e.strerror or e})") from None
        if self.size == 0:
            raise _Refused("is empty, not a cgru model file")
        if magic not in (b"PK\x03\x04", b"PK\x05\x06"):
            kind = "a single .npy array" if magic == b"\x93NUM" else "not a .npz archive"
            raise _Refused(f"is not a cgru model file ({kind})")
        try:
            self.zip = zipfile.ZipFile(path)
            infos = self.zip.infolist()
        except _ZIP_ERRORS as e:
            raise _Refused(f"is truncated or corrupted ({_cause(e)})") from None
        try:
            self.members = self._checked(infos)
        except BaseException:
            self.zip.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.zip.close()

    def _checked(self, infos):
        names = [info.filename for info in infos]
        if _DESCRIPTION + ".npy" not in names:
            shown = ", ".join(repr(n) for n in names[:3]) + (", ..." if len(names) > 3 else "")
            raise _Refused(f"is not a cgru model file (no '{_DESCRIPTION}' entry; it holds "
                           f"{shown or 'nothing'})")
        repeated = sorted(n for n, count in collections.Counter(names).items() if count > 1)
        if repeated:
            raise _Refused(f"is corrupted: entries {repeated[:3]} appear more than once")
        total = 0
        for info in infos:
            name = info.filename
            if not name.endswith(".npy"):
                raise _Refused(f"is not a cgru model file (entry {name!r} is not a NumPy array)")
            if info.flag_bits & 0x1:
                raise _Refused(f"is not a cgru model file (entry {name!r} is encrypted)")
            if info.compress_type != zipfile.ZIP_STORED:
                raise _Refused(f"is not a cgru model file as Sequential.save writes it (entry "
                               f"{name!r} is compressed; cgru stores its arrays uncompressed)")
            if info.file_size != info.compress_size or \
                    info.header_offset + info.compress_size > self.size:
                raise _Refused(f"is truncated or corrupted (entry {name!r} declares "
                               f"{info.file_size:,} bytes, stores {info.compress_size:,}, in a "
                               f"file of {self.size:,})")
            total += info.compress_size
        if total > self.size:
            raise _Refused(f"is corrupted: its entries declare {total:,} bytes in a file of "
                           f"{self.size:,}")
        return {name[:-len(".npy")]: info for name, info in zip(names, infos)}

    def _open(self, key):
        try:
            return self.zip.open(self.members[key])
        except _ZIP_ERRORS as e:
            raise _Refused(f"is truncated or corrupted ({_cause(e)})") from None

    def header(self, key):
        """(dtype descr, shape, fortran_order, data offset) from member `key`'s .npy header."""
        with self._open(key) as member:
            try:
                return _npy_header(member, self.members[key].file_size, key)
            except _ZIP_ERRORS as e:
                raise _Refused(f"is truncated or corrupted ({_cause(e)})") from None

    def array(self, key, descrs, shape=None):
        """Member `key` as an array, after checking that its header declares one of the dtype
        strings `descrs` and `shape` (when given), and that its size is exactly header + data."""
        descr, stored_shape, fortran, offset = self.header(key)
        if descr not in descrs:
            raise _Refused(f"is not a cgru model file (entry '{key}' holds dtype {descr!r:.40}, "
                           f"not {' or '.join(sorted(descrs))})")
        if shape is not None and stored_shape != tuple(shape):
            raise _Refused(f"does not match its architecture: entry '{key}' has shape "
                           f"{stored_shape}, the model needs {tuple(shape)}")
        dtype = np.dtype(descr)  # one of the few strings allowed above
        nbytes = math.prod(stored_shape) * dtype.itemsize
        if offset + nbytes != self.members[key].file_size:
            raise _Refused(f"is truncated or corrupted (entry '{key}' holds "
                           f"{self.members[key].file_size:,} bytes; its header declares "
                           f"{offset + nbytes:,})")
        with self._open(key) as member:
            try:
                member.read(offset)
                data = member.read(nbytes)
                if len(data) != nbytes or member.read(1):  # reading to the end checks the CRC
                    raise _Refused(f"is truncated or corrupted (entry '{key}' ends early)")
            except _ZIP_ERRORS as e:
                raise _Refused(f"is truncated or corrupted ({_cause(e)})") from None
        array = np.frombuffer(data, dtype=dtype)
        if fortran:
            return array.reshape(stored_shape[::-1]).T
        return array.reshape(stored_shape)


def _npy_header(member, size, key):
    """Parse the .npy header at the start of a zip member of `size` bytes, strictly: version 1,
    2 or 3, at most _MAX_NPY_HEADER bytes, a literal dict of exactly descr (a string),
    fortran_order (a bool) and shape (a tuple of integers >= 0)."""
    def bad(cause):
        return _Refused(f"is truncated or corrupted (entry '{key}': {cause})")

    start = member.read(8)
    if len(start) < 8 or start[:6] != b"\x93NUMPY" or start[6] not in (1, 2, 3) or start[7]:
        raise bad("not a NumPy .npy array")
    width = 2 if start[6] == 1 else 4
    length = int.from_bytes(member.read(width), "little")
    offset = 8 + width + length
    if length > _MAX_NPY_HEADER or offset > size:
        raise bad(f"a header of {length:,} bytes")
    raw = member.read(length)
    try:
        header = ast.literal_eval(raw.decode("utf-8" if start[6] == 3 else "latin1"))
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError, UnicodeError):
        raise bad("an unreadable header") from None
    if not (isinstance(header, dict) and set(header) == {"descr", "fortran_order", "shape"}
            and isinstance(header["descr"], str) and isinstance(header["fortran_order"], bool)
            and isinstance(header["shape"], tuple)
            and all(_is_int(n) and n >= 0 for n in header["shape"])):
        raise bad(f"an invalid header {raw[:80]!r}")
    return header["descr"], header["shape"], header["fortran_order"], offset


def _cause(error):
    return f"{type(error).__name__}: {error}"


def _read_model(archive, compile):
    description = _description(archive)
    model, expected = _model_from(description, build=False)
    descr = {d for d in _ARRAY_DESCRS if np.dtype(d).type == model.dtype.type}  # either order
    _check_weights(archive, model, expected, descr)
    compiled = _compile_settings(description["compile"])
    try:
        model = model.finish()  # the first allocation, now bounded by the file size
    except (ValueError, TypeError) as e:
        raise _invalid(str(e)) from None
    for layer in model.layers:
        for name in list(layer.params):
            key = f"weights/{layer.name}/{name}"
            layer.load_parameter(name, archive.array(key, descr, expected[key]))
    try:
        model.rng.bit_generator.state = description["rng_state"]
    except (ValueError, TypeError, KeyError, OverflowError) as e:
        raise _invalid(f"rng_state: {_cause(e)}") from None
    state = _optimizer_state(archive, model, compiled, descr)
    if compile and compiled is not None:
        optimizer, loss, metrics, iterations = compiled
        model.compile(optimizer, loss, metrics)
        if iterations is not None:
            optimizer.set_state(state, iterations, model.trainable_weights)
    model.metadata = description["metadata"]
    return model


def _check_weights(archive, model, expected, descr):
    """The stored weights against the declared ones ({key: shape}), from the zip directory and
    the .npy headers only: their bytes must fit in the file, the names and every header match."""
    count = sum(math.prod(shape) for shape in expected.values())
    if count * model.dtype.itemsize > archive.size:
        raise _Refused(f"does not match its architecture: the description declares {count:,} "
                       f"{model.dtype.name} parameters ({count * model.dtype.itemsize:,} bytes), "
                       f"more than the file's {archive.size:,} bytes")
    stored = {k for k in archive.members if k.startswith("weights/")}
    missing, unexpected = sorted(set(expected) - stored), sorted(stored - set(expected))
    if missing or unexpected:
        raise _Refused(f"does not match its architecture: weights missing {missing[:5]}, "
                       f"unexpected {unexpected[:5]}")
    others = sorted(k for k in archive.members
                    if k != _DESCRIPTION and not k.startswith(("weights/", "optimizer/")))
    if others:
        raise _Refused(f"is not a cgru model file (unexpected entries {others[:5]})")
    for key, shape in expected.items():
        stored_descr, stored_shape, _, _ = archive.header(key)
        if stored_descr not in descr or stored_shape != shape:
            have = (np.dtype(stored_descr).name if stored_descr in _ARRAY_DESCRS
                    else f"dtype {stored_descr!r:.40} ")
            raise _Refused(f"does not match its architecture: weight '{key}' is "
                           f"{have}{stored_shape}, the architecture needs "
                           f"{model.dtype.name}{shape}")


def _optimizer_state(archive, model, compiled, descr):
    """{'slot/layer/param': array} of the optimizer entries, each checked against the slots of
    the described optimizer and its parameter's shape (also when compile=False: a damaged file
    is refused either way)."""
    keys = sorted(k for k in archive.members if k.startswith("optimizer/"))
    if keys and (compiled is None or compiled[3] is None):
        raise _Refused(f"is corrupted: it holds optimizer state ({keys[0]}, ...) but its "
                       f"description has none")
    state = {}
    if compiled is None:
        return state
    optimizer, params = compiled[0], model.trainable_weights
    for key in keys:
        slot, _, name = key[len("optimizer/"):].partition("/")
        if slot not in optimizer.slot_names or name not in params:
            raise _Refused(f"is corrupted: optimizer entry '{key}' does not belong to a "
                           f"{type(optimizer).__name__} of this model")
        state[key[len("optimizer/"):]] = archive.array(key, descr, params[name].shape)
    return state


def _description(archive):
    """The JSON description, size-checked, parsed strictly, its top level checked."""
    descr, shape, _, _ = archive.header(_DESCRIPTION)
    if not re.fullmatch(r"[<>]U[0-9]{1,9}", descr) or shape != ():
        raise _Refused(f"is not a cgru model file (its '{_DESCRIPTION}' entry is "
                       f"{descr!r}{shape}, not text)")
    if int(descr[2:]) > _MAX_DESCRIPTION_CHARS:
        raise _Refused(f"is not a cgru model file (its description declares {int(descr[2:]):,} "
                       f"characters; cgru writes at most {_MAX_DESCRIPTION_CHARS:,})")
    raw = archive.array(_DESCRIPTION, {descr}).tobytes()
    try:  # NumPy pads the text with NULs; the codec refuses what is not a character
        text = raw.decode("utf-32-le" if descr[0] == "<" else "utf-32-be").rstrip("\x00")
        description = json.loads(text, object_pairs_hook=_unique_keys,
                                  parse_constant=_no_constant)
    except (ValueError, RecursionError, UnicodeError) as e:
        raise _invalid(f"not JSON ({e})") from None
    if not isinstance(description, dict) or description.get("format") not in _ARCHITECTURE_KEYS:
        found = description.get("format") if isinstance(description, dict) else description
        raise _Refused(f"is not a cgru model file (format {found!r:.80})")
    version = description.get("format_version")
    if version != FORMAT_VERSION or not _is_int(version):
        raise _Refused(f"has format version {version!r:.40}; this cgru reads version "
                       f"{FORMAT_VERSION}")
    d = description
    expected = _ARCHITECTURE_KEYS[d["format"]] | _FILE_KEYS
    missing, unknown = sorted(expected - set(d)), sorted(set(d) - expected)
    if missing or unknown:
        raise _invalid(f"missing {missing}, unknown {unknown[:5]}")
    if not isinstance(d["metadata"], dict):
        raise _invalid(f"metadata must be an object, got {d['metadata']!r:.80}")
    state = d["rng_state"]
    if not (isinstance(state, dict) and set(state) == {"bit_generator", "state", "has_uint32",
                                                        "uinteger"}
            and state["bit_generator"] == "PCG64" and isinstance(state["state"], dict)
            and set(state["state"]) == {"state", "inc"}
            and all(_is_int(v) and 0 <= v < 1 << 128 for v in state["state"].values())
            and state["has_uint32"] in (0, 1) and _is_int(state["has_uint32"])
            and _is_int(state["uinteger"]) and 0 <= state["uinteger"] < 1 << 32):
        raise _invalid(f"rng_state is not a PCG64 state: {state!r:.100}")
    return _checked_architecture(d)


def _checked_shape(shape, what):
    if not (isinstance(shape, list) and 1 <= len(shape) <= 8
            and all(n is None or (_is_int(n) and 1 <= n <= _MAX_DIMENSION) for n in shape)):
        raise _invalid(f"{what} must be a list of sizes in [1, {_MAX_DIMENSION}] (null for "
                       f"any), got {shape!r:.80}")


def _checked_architecture(d):
    """The architecture entries of a description (from a file or get_config), checked."""
    if not isinstance(d, dict) or d.get("format") not in _ARCHITECTURE_KEYS:
        found = d.get("format") if isinstance(d, dict) else d
        raise _invalid(f"format must be {FORMAT_SEQUENTIAL!r} or {FORMAT_MODEL!r}, got "
                       f"{found!r:.80}")
    keys = _ARCHITECTURE_KEYS[d["format"]]
    if not keys <= set(d):
        raise _invalid(f"missing {sorted(keys - set(d))}")
    if not isinstance(d["name"], str):
        raise _invalid(f"name must be a string, got {d['name']!r:.80}")
    if d["dtype"] not in ("float32", "float64"):
        raise _invalid(f"dtype must be 'float32' or 'float64', got {d['dtype']!r:.80}")
    if not (isinstance(d["layers"], list) and d["layers"]):
        raise _invalid(f"layers must be a non-empty list, got {d['layers']!r:.80}")
    if d["format"] == FORMAT_SEQUENTIAL:
        _checked_shape(d["input_shape"], "input_shape")
        return d
    g = d["graph"]
    graph_keys = {"inputs", "nodes", "outputs", "single_input", "single_output"}
    if not (isinstance(g, dict) and set(g) == graph_keys
            and all(isinstance(g[k], list) and g[k] for k in ("inputs", "nodes", "outputs"))
            and isinstance(g["single_input"], bool) and isinstance(g["single_output"], bool)):
        raise _invalid(f"graph must be an object with {sorted(graph_keys)} (non-empty lists of "
                       f"inputs, nodes and outputs), got {g!r:.100}")
    for spec in g["inputs"]:
        if not (isinstance(spec, dict) and set(spec) == {"name", "shape", "batch_size", "kind"}
                and isinstance(spec["name"], str) and spec["kind"] in ("float", "int")
                and (spec["batch_size"] is None or
                     (_is_int(spec["batch_size"]) and 1 <= spec["batch_size"] <= _MAX_DIMENSION))):
            raise _invalid(f"graph input must be {{'name', 'shape', 'batch_size', 'kind'}}, got "
                           f"{spec!r:.100}")
        _checked_shape(spec["shape"], f"graph input '{spec['name']:.40}' shape")
    for spec in g["nodes"]:
        if not (isinstance(spec, dict) and set(spec) == {"layer", "inputs"}
                and isinstance(spec["layer"], str) and isinstance(spec["inputs"], list)
                and spec["inputs"] and all(_is_ref(r) for r in spec["inputs"])):
            raise _invalid(f"graph node must be {{'layer': name, 'inputs': [[source, index], "
                           f"...]}}, got {spec!r:.100}")
    if not all(_is_ref(r) for r in g["outputs"]):
        raise _invalid(f"graph outputs must be [[source, index], ...], got {g['outputs']!r:.100}")
    return d


def _is_ref(ref):
    return (isinstance(ref, list) and len(ref) == 2 and isinstance(ref[0], str)
            and _is_int(ref[1]) and 0 <= ref[1] < 64)


def _unique_keys(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        repeated = sorted(k for k, count in collections.Counter(keys).items() if count > 1)
        raise ValueError(f"the key {repeated[0]!r} appears twice in one object")
    return dict(pairs)


def _no_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def _layers_from(description):
    """The layers the description declares, created but not built (no weights)."""
    result = []
    for i, spec in enumerate(description["layers"]):
        if not (isinstance(spec, dict) and set(spec) == {"class", "config"}):
            raise _invalid(f"layer {i} must be {{'class': ..., 'config': ...}}, got {spec!r:.80}")
        if not isinstance(spec["class"], str) or spec["class"] not in _layers.CLASSES:
            raise _invalid(f"layer {i}: unknown class {spec['class']!r:.40} (cgru has "
                           f"{', '.join(_layers.CLASSES)})")
        try:
            result.append(_layers.CLASSES[spec["class"]].from_config(spec["config"]))
        except (ValueError, TypeError) as e:
            raise _invalid(f"layer {i}: {e}") from None
    names = [layer.name for layer in result]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise _invalid(f"two layers are named '{repeated[0]}'; layer names must be unique")
    return result


class _Pending:
    """A model read from a description whose layers exist but hold no weights yet: `finish()`
    builds it (the first allocation)."""

    def __init__(self, description, make, layer_list):
        self.dtype = np.dtype(description["dtype"])
        self.layers = layer_list
        self.finish = make


def _model_from(description, build):
    """The model the architecture describes. build=False: (a _Pending model, {'weights/layer/
    name': shape} its layers will create), computed from shapes alone; build=True: the model."""
    from .models import Model, Sequential
    layer_list = _layers_from(description)
    name, dtype = description["name"], description["dtype"]
    if description["format"] == FORMAT_SEQUENTIAL:
        shape = tuple(description["input_shape"])
        model = Sequential(name=name, dtype=dtype)
        try:
            for layer in layer_list:
                model.add(layer)
            calls = _chain_inputs(layer_list, shape)
        except (ValueError, TypeError) as e:
            raise _invalid(str(e)) from None

        def make(shape=shape):
            model.build((None,) + shape)
            return model
    else:
        g = description["graph"]
        by_name = {layer.name: layer for layer in layer_list}
        tensors = {}
        try:
            inputs = []
            for spec in g["inputs"]:
                if spec["name"] in tensors or spec["name"] in by_name:
                    raise ValueError(f"the name {spec['name']!r} is used twice")
                t = _graph.Input(tuple(spec["shape"]), batch_size=spec["batch_size"],
                                 dtype="int64" if spec["kind"] == "int" else None,
                                 name=spec["name"])
                tensors[spec["name"]] = [t]
                inputs.append(t)
            calls = []
            for spec in g["nodes"]:
                layer = by_name.get(spec["layer"])
                if layer is None or spec["layer"] in tensors:
                    raise ValueError(f"node of layer {spec['layer']!r:.40}: no such layer, or "
                                     f"called twice")
                ins = [_resolve(tensors, ref) for ref in spec["inputs"]]
                out = layer._symbolic_call(ins)
                tensors[layer.name] = out if isinstance(out, list) else [out]
                calls.append((layer, tuple(ins[0].shape[1:])))
            if len(calls) != len(layer_list):
                raise ValueError("every layer must be called once in the graph")
            outputs = [_resolve(tensors, ref) for ref in g["outputs"]]
        except (ValueError, TypeError, KeyError, IndexError) as e:
            raise _invalid(f"graph: {e}") from None

        def make():
            return Model(inputs[0] if g["single_input"] else inputs,
                         outputs[0] if g["single_output"] else outputs, name=name, dtype=dtype)
    if build:
        try:
            return make()
        except (ValueError, TypeError) as e:
            raise _invalid(str(e)) from None
    expected = {}
    try:
        for layer, input_shape in calls:
            for pname, pshape in layer.param_shapes(input_shape).items():
                expected[f"weights/{layer.name}/{pname}"] = pshape
    except (ValueError, TypeError) as e:
        raise _invalid(str(e)) from None
    for key, shape in expected.items():
        if not all(_is_int(n) for n in shape):
            raise _invalid(f"input_shape must give the sizes the weights depend on; weight "
                           f"'{key}' would have shape {shape}")
    return _Pending(description, make, layer_list), expected


def _resolve(tensors, ref):
    source, index = ref
    if source not in tensors or index >= len(tensors[source]):
        raise ValueError(f"no tensor {ref!r:.60} (an input or layer output defined before)")
    return tensors[source][index]


def _chain_inputs(layer_list, shape):
    """[(layer, its input shape)] along a Sequential's chain from input `shape`."""
    calls = []
    for layer in layer_list:
        calls.append((layer, shape))
        shape = tuple(layer.compute_output_shape(shape))
    return calls


def _compile_settings(settings):
    """(optimizer, loss, metrics, optimizer_iterations) from the description's compile entry,
    or None; each rebuilt object must describe itself exactly as the file does."""
    if settings is None:
        return None
    if not isinstance(settings, dict) or set(settings) != _COMPILE_KEYS:
        raise _invalid(f"compile must be null or an object with {sorted(_COMPILE_KEYS)}, got "
                       f"{settings!r:.100}")
    optimizer = _rebuilt(settings["optimizer"], _optimizers, "optimizer")
    loss = _rebuilt(settings["loss"], _losses, "loss")
    metrics = settings["metrics"]
    if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
        raise _invalid(f"compile metrics must be a list of names, got {metrics!r:.80}")
    try:
        for m in metrics:
            _metrics.get(m, loss)
    except ValueError as e:
        raise _invalid(f"compile metrics: {e}") from None
    iterations = settings["optimizer_iterations"]
    if iterations is not None and not (_is_int(iterations) and 0 <= iterations < 1 << 62):
        raise _invalid(f"optimizer_iterations must be null or an integer >= 0, got "
                       f"{iterations!r:.40}")
    return optimizer, loss, metrics, iterations


def _rebuilt(spec, module, what):
    """An optimizer or loss from {'class': ..., 'config': ...}, refused unless it serialises
    back to exactly `spec` (so no value was converted or left out)."""
    if not (isinstance(spec, dict) and set(spec) == {"class", "config"}
            and isinstance(spec["class"], str) and isinstance(spec["config"], dict)):
        raise _invalid(f"{what} must be {{'class': ..., 'config': {{...}}}}, got {spec!r:.100}")
    try:
        obj = module.deserialize(spec)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise _invalid(f"{what} {spec!r:.100}: {_cause(e)}") from None
    if module.serialize(obj) != spec:
        raise _invalid(f"{what} {spec!r:.100} is not what a cgru {what} writes")
    return obj


def _atomic_savez(path, arrays):
    """np.savez into a temporary file beside `path`, flushed to disk, renamed over `path`, and
    the directory flushed too. The temporary's name carries this host and process id, so that a
    later save can tell the leftovers of a killed writer (see _remove_stale_temporaries)."""
    directory = os.path.dirname(os.path.abspath(path))
    _remove_stale_temporaries(directory)
    fd, tmp = _create_temporary(directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_directory(directory)


def _create_temporary(directory):
    """(fd, name) of a new file in `directory`, created as open() creates one: mode 0o666 less
    the process's umask (applied by the system, so the saved file gets the permissions any other
    new file would, and no thread's umask is touched). The name is this host's, this process's
    and a random part's."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | \
        getattr(os, "O_BINARY", 0)
    for _ in range(100):
        name = os.path.join(directory, f"{_TMP_PREFIX}{_host()}-{os.getpid()}-"
                                       f"{secrets.token_hex(8)}.tmp")
        try:
            return os.open(name, flags, 0o666), name
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file in {directory}")


_TMP_PREFIX = ".cgru-save-"
_TMP_NAME = re.compile(r"\.cgru-save-(?:(?P<host>[A-Za-z0-9._]+)-(?P<pid>[0-9]+)-)?"
                       r"[A-Za-z0-9_]+\.tmp")
STALE_AFTER_S = 24 * 3600    # untouched this long: dead, whoever wrote it
QUIET_S = 600                # a dead writer's file is left alone until untouched this long


def _host():
    """This machine's name as it goes into temporary file names ([A-Za-z0-9._] only, so that
    the pid after it stays readable)."""
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:64] or "host"


def _remove_stale_temporaries(directory):
    """Remove temporaries of earlier saves into `directory` that are provably dead: written on
    this host by a process that no longer exists (and untouched for QUIET_S, in case that
    writer lives in another pid namespace), or untouched for STALE_AFTER_S (a writer on another
    host, or a name without a pid). Only regular files, never through symlinks; a failure to
    remove one is ignored."""
    try:
        names = [n for n in os.listdir(directory) if n.startswith(_TMP_PREFIX)]
    except OSError:
        return
    now = time.time()
    for name in names:
        match = _TMP_NAME.fullmatch(name)
        if match is None:
            continue
        full = os.path.join(directory, name)
        try:
            info = os.lstat(full)
            if not stat.S_ISREG(info.st_mode):
                continue
            quiet = now - info.st_mtime
            writer_gone = match["host"] == _host() and not _process_exists(int(match["pid"]))
            if quiet > STALE_AFTER_S or (writer_gone and quiet > QUIET_S):
                os.unlink(full)
        except OSError:
            continue


def _process_exists(pid):
    """True unless `pid` certainly names no running process (on POSIX: kill(pid, 0) says so;
    elsewhere nothing is certain, so True)."""
    if os.name != "posix" or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


def _fsync_directory(directory):
    """Flush the directory entry of the rename to disk, where the platform allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


