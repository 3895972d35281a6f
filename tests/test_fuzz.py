"""Fuzz tests: random configurations, array layouts, arguments and damaged files (Hypothesis).

The rule every example is held to: a call either gives the NumPy reference's numbers
(`cgru.reference`; conftest.TOLERANCE: float64 within 1e-9, float32 within 1e-4), outputs and
gradients alike, or raises one of the exception types its documentation names. Any other
exception, a wrong number or a crash fails.

Seeded (derandomize) and small by default, so that CI stays fast; CGRU_FUZZ_EXAMPLES=N runs N
examples per test, e.g. `CGRU_FUZZ_EXAMPLES=2000 python -m pytest -q tests/test_fuzz.py`.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import cgru
from cgru import layers, reference
from conftest import assert_close

EXAMPLES = int(os.environ.get("CGRU_FUZZ_EXAMPLES", "25"))
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
                print_blob=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


# ---- array layouts ------------------------------------------------------------------------------

# Layouts the engine must accept with the C-contiguous result; BIG_ENDIAN is the GRU's dtype in
# the other byte order, which a call may accept (with the right numbers) or refuse (TypeError).
LAYOUTS = ("c", "fortran", "strided", "reversed", "read-only", "misaligned")
BIG_ENDIAN = "big-endian"


def laid_out(a, layout):
    """A copy of array a with the same values, laid out in memory as `layout` says."""
    a = np.asarray(a)
    if layout == "c":
        return a.copy()
    if layout == "fortran":
        return np.asfortranarray(a.copy())
    if layout == "strided":  # every other element of a wider array: non-contiguous
        wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        wide[..., ::2] = a
        return wide[..., ::2]
    if layout == "reversed":  # negative strides along the first axis
        return a[::-1].copy()[::-1]
    if layout == "read-only":
        b = a.copy()
        b.flags.writeable = False
        return b
    if layout == "misaligned":  # C-contiguous, but the data starts 1 byte past an aligned address
        raw = np.zeros(a.nbytes + 64, np.uint8)
        start = (1 - raw.ctypes.data) % 64
        b = raw[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
        b[...] = a
        assert not b.flags.aligned
        return b
    if layout == BIG_ENDIAN:
        return a.astype(a.dtype.newbyteorder(">"))
    raise AssertionError(layout)


def as64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


def reference_params(gru):
    return {k: as64(v) for k, v in gru.params.items()}


# ---- strategies ----------------------------------------------------------------------------------

@st.composite
def configs(draw, unidirectional=False):
    """A GRU configuration, small shapes, with hidden sizes that reach the vector kernels' full
    blocks (16 float32 / 8 float64 lanes) and their leftovers."""
    return dict(
        T=draw(st.integers(1, 6)), B=draw(st.integers(1, 4)), I=draw(st.integers(1, 7)),
        H=draw(st.one_of(st.integers(1, 9), st.sampled_from([16, 17, 24, 33]))),
        num_layers=draw(st.integers(1, 3)),
        bidirectional=False if unidirectional else draw(st.booleans()),
        reset_after=draw(st.booleans()), bias=draw(st.booleans()),
        batch_first=draw(st.booleans()), unbatched=draw(st.booleans()),
        dtype=draw(st.sampled_from(["float32", "float64"])),
        threads=draw(st.integers(1, 3)), seed=draw(st.integers(0, 2 ** 32 - 1)))


def make_gru(c, dropout=0.0):
    cgru.set_num_threads(c["threads"])
    return cgru.GRU(c["I"], c["H"], num_layers=c["num_layers"], bias=c["bias"],
                    batch_first=c["batch_first"], dropout=dropout,
                    bidirectional=c["bidirectional"], reset_after=c["reset_after"],
                    dtype=c["dtype"], seed=c["seed"] % 1000)


def replace_params(gru, layout):
    """Users may replace parameter arrays (gru.params[k] = ...): copies laid out as `layout`."""
    if layout != "as built":
        for k in list(gru.params):
            gru.params[k] = laid_out(gru.params[k], layout)


def to_user(a, c):
    """A time-major (T, B, F) array as the user sees it: (B, T, F) with batch_first,
    (T, F) unbatched."""
    if c["unbatched"]:
        return a[:, 0]
    return a.transpose(1, 0, 2) if c["batch_first"] else a


def state_to_user(h, c):
    return h[:, 0] if c["unbatched"] else h


# ---- constructor ---------------------------------------------------------------------------------

def sizes():
    return st.one_of(st.integers(-3, 6), st.sampled_from([2.0, 2.5, "3", None, True, False]),
                     st.sampled_from([np.int64(3), np.int32(1), np.uint8(2), np.float32(2)]))


constructor_arguments = st.fixed_dictionaries({
    "input_size": sizes(), "hidden_size": sizes(),
}, optional={
    "num_layers": sizes(),
    "bias": st.sampled_from([True, False, 0, 1, None, "yes"]),
    "batch_first": st.booleans(),
    "dropout": st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                         st.sampled_from([0, 1, True, "0.1", None, np.float32(0.5)])),
    "bidirectional": st.booleans(),
    "reset_after": st.booleans(),
    "dtype": st.sampled_from(["float32", "float64", "float16", "f4", "int32", "complex64",
                              np.float32, np.float64, np.dtype(">f4"), np.int8, None, 3,
                              object, "", "float"]),
    "seed": st.one_of(st.none(), st.integers(-2, 2 ** 70), st.sampled_from([1.5, "7", [1, 2]])),
})


@FUZZ
@given(kwargs=constructor_arguments)
def test_constructor_builds_a_consistent_gru_or_raises_value_or_type_error(kwargs):
    try:
        gru = cgru.GRU(**kwargs)
    except (ValueError, TypeError) as e:
        event(f"refused: {type(e).__name__}")
        return
    event("built")
    H, D, L = gru.hidden_size, gru.num_directions, gru.num_layers
    assert gru.dtype in (np.dtype(np.float32), np.dtype(np.float64))
    expected = {}
    for layer in range(L):
        for d in range(D):
            suffix = f"_l{layer}" + ("_reverse" if d else "")
            width = gru.input_size if layer == 0 else D * H
            expected["weight_ih" + suffix] = (3 * H, width)
            expected["weight_hh" + suffix] = (3 * H, H)
            if gru.bias:
                expected["bias_ih" + suffix] = expected["bias_hh" + suffix] = (3 * H,)
    assert {k: v.shape for k, v in gru.params.items()} == expected
    for k, v in gru.params.items():
        assert v.dtype == gru.dtype and v.flags.c_contiguous, k
        assert np.all(np.abs(v) <= 1 / np.sqrt(H)), k
        assert gru.grads[k].shape == v.shape and not gru.grads[k].any(), k


# ---- forward and backward ------------------------------------------------------------------------

@FUZZ
@given(c=configs(), layout_x=st.sampled_from(LAYOUTS + (BIG_ENDIAN,)),
       layout_h0=st.sampled_from(LAYOUTS + (BIG_ENDIAN,)), with_h0=st.booleans(),
       with_lengths=st.booleans(), training=st.booleans(),
       dropout=st.sampled_from([0.0, 0.3, 0.9]), scale=st.sampled_from([0.1, 1.0, 4.0]),
       params_layout=st.sampled_from(["as built", "as built", "misaligned", "read-only"]))
def test_forward_matches_reference(c, layout_x, layout_h0, with_h0, with_lengths, training,
                                   dropout, scale, params_layout):
    # dropout acts between layers in training mode only: one layer, or eval mode, is exact
    gru = make_gru(c, dropout=dropout if (not training or c["num_layers"] == 1) else 0.0)
    replace_params(gru, params_layout)
    gru.train(training)
    rng = np.random.default_rng(c["seed"])
    T, B = c["T"], 1 if c["unbatched"] else c["B"]
    LD = c["num_layers"] * gru.num_directions
    x = (scale * rng.standard_normal((T, B, c["I"]))).astype(c["dtype"])
    h0 = rng.standard_normal((LD, B, c["H"])).astype(c["dtype"]) if with_h0 else None
    lengths = (rng.integers(1, T + 1, size=B)
               if with_lengths and not c["unbatched"] else None)
    x_user = laid_out(to_user(x, c), layout_x)
    h0_user = None if h0 is None else laid_out(state_to_user(h0, c), layout_h0)
    big_endian = layout_x == BIG_ENDIAN or (with_h0 and layout_h0 == BIG_ENDIAN)
    x_before = x_user.copy()
    try:
        y, h_n = gru(x_user, h0_user, lengths)
    except TypeError:
        if big_endian:
            event("big-endian input refused (TypeError)")
            return  # documented: inputs must have the GRU's dtype
        raise
    event("compared with the reference")
    y_r, h_n_r, _ = reference.gru_forward(as64(x), reference_params(gru), as64(h0),
                                          num_layers=c["num_layers"],
                                          bidirectional=c["bidirectional"],
                                          reset_after=c["reset_after"], lengths=lengths)
    assert y.dtype == h_n.dtype == gru.dtype
    assert_close(y, to_user(y_r, c), c["dtype"], "y")
    assert_close(h_n, state_to_user(h_n_r, c), c["dtype"], "h_n")
    np.testing.assert_array_equal(x_user, x_before)  # the input is left as it was


@FUZZ
@given(c=configs(), layout_x=st.sampled_from(LAYOUTS), layout_dy=st.sampled_from(LAYOUTS),
       layout_dh=st.sampled_from(LAYOUTS), with_h0=st.booleans(), with_dh_n=st.booleans(),
       with_lengths=st.booleans(), grads_before=st.sampled_from(["zero", "random"]))
def test_backward_matches_reference_and_adds_into_grads(c, layout_x, layout_dy, layout_dh,
                                                        with_h0, with_dh_n, with_lengths,
                                                        grads_before):
    gru = make_gru(c)
    rng = np.random.default_rng(c["seed"])
    T, B = c["T"], 1 if c["unbatched"] else c["B"]
    LD, DH = c["num_layers"] * gru.num_directions, gru.num_directions * c["H"]
    x = rng.standard_normal((T, B, c["I"])).astype(c["dtype"])
    h0 = rng.standard_normal((LD, B, c["H"])).astype(c["dtype"]) if with_h0 else None
    lengths = (rng.integers(1, T + 1, size=B)
               if with_lengths and not c["unbatched"] else None)
    dy = rng.standard_normal((T, B, DH)).astype(c["dtype"])
    dh_n = rng.standard_normal((LD, B, c["H"])).astype(c["dtype"]) if with_dh_n else None
    before = {k: (rng.standard_normal(v.shape).astype(v.dtype) if grads_before == "random"
                  else np.zeros_like(v)) for k, v in gru.grads.items()}
    for k, v in before.items():
        gru.grads[k][...] = v

    gru(laid_out(to_user(x, c), layout_x), None if h0 is None else state_to_user(h0, c),
        lengths)
    dx, dh0 = gru.backward(laid_out(to_user(dy, c), layout_dy),
                           None if dh_n is None else laid_out(state_to_user(dh_n, c),
                                                              layout_dh))

    _, _, cache = reference.gru_forward(as64(x), reference_params(gru), as64(h0),
                                        num_layers=c["num_layers"],
                                        bidirectional=c["bidirectional"],
                                        reset_after=c["reset_after"], lengths=lengths)
    dx_r, dh0_r, grads_r = reference.gru_backward(as64(dy), as64(dh_n), cache)
    assert_close(dx, to_user(dx_r, c), c["dtype"], "dx")
    assert_close(dh0, state_to_user(dh0_r, c), c["dtype"], "dh0")
    assert gru.grads.keys() == grads_r.keys()
    for k in grads_r:
        assert_close(gru.grads[k], before[k] + grads_r[k], c["dtype"], k)


# ---- step ----------------------------------------------------------------------------------------

OUT_MODES = ("none", "new", "in-place", "misaligned", "fortran", "strided", "read-only")
# valid ones more often: the invalid ones only need to be refused
OUT_MODE_DRAWS = ("none", "none", "new", "new", "in-place", "misaligned", "misaligned", "fortran",
                  "strided", "read-only")


def step_case(c, rng):
    """x_t, h (time-major batch of B, or unbatched) for one step of the GRU c describes."""
    shape_x = (c["I"],) if c["unbatched"] else (c["B"], c["I"])
    shape_h = ((c["num_layers"], c["H"]) if c["unbatched"]
               else (c["num_layers"], c["B"], c["H"]))
    return (rng.standard_normal(shape_x).astype(c["dtype"]),
            rng.standard_normal(shape_h).astype(c["dtype"]))


def step_reference(gru, x_t, h, c):
    """The new state after one step: the reference's h_n after one time step."""
    x3 = as64(x_t).reshape(1, -1, c["I"])
    h3 = as64(h).reshape(c["num_layers"], -1, c["H"])
    _, h_n, _ = reference.gru_forward(x3, reference_params(gru), h3, num_layers=c["num_layers"],
                                      reset_after=c["reset_after"])
    return h_n.reshape(h.shape)


def out_for(mode, h):
    if mode == "none":
        return None
    if mode == "new":
        return np.full(h.shape, np.nan, h.dtype)
    if mode == "in-place":
        return h
    return laid_out(np.full(h.shape, np.nan, h.dtype), mode)


@FUZZ
@given(c=configs(unidirectional=True), layout_x=st.sampled_from(LAYOUTS),
       layout_h=st.sampled_from(LAYOUTS), out_mode=st.sampled_from(OUT_MODE_DRAWS),
       params_layout=st.sampled_from(["as built", "misaligned", "read-only"]),
       steps=st.integers(1, 3))
def test_step_matches_reference(c, layout_x, layout_h, out_mode, params_layout, steps):
    gru = make_gru(c)
    replace_params(gru, params_layout)
    rng = np.random.default_rng(c["seed"])
    for _ in range(steps):
        x_t, h = step_case(c, rng)
        x_user, h_user = laid_out(x_t, layout_x), laid_out(h, layout_h)
        out = out_for(out_mode, h_user)
        # out must be a writeable C-contiguous array of the GRU's dtype and h's shape
        out_valid = out is None or (out.flags.c_contiguous and out.flags.writeable)
        try:
            result = gru.step(x_user, h_user, out=out)
        except ValueError:
            assert not out_valid, "step refused valid arguments"
            event("invalid out refused (ValueError)")
            continue
        assert out_valid, f"step accepted out as {out_mode}"
        event("compared with the reference")
        expected = step_reference(gru, x_t, h, c)
        assert result.shape == h.shape and result.dtype == gru.dtype
        assert_close(result, expected, c["dtype"], "step")
        if out is not None:
            assert result is out
        if out_mode != "in-place":
            np.testing.assert_array_equal(h_user, h)  # h is left as it was


@FUZZ
@given(c=configs(unidirectional=True), which=st.sets(st.sampled_from(["x_t", "h", "out"]),
                                                     min_size=1))
def test_step_with_big_endian_arrays_gives_reference_numbers_or_type_error(c, which):
    gru = make_gru(c)
    x_t, h = step_case(c, np.random.default_rng(c["seed"]))
    x_user = laid_out(x_t, BIG_ENDIAN) if "x_t" in which else x_t
    h_user = laid_out(h, BIG_ENDIAN) if "h" in which else h
    out = laid_out(np.zeros_like(h), BIG_ENDIAN) if "out" in which else None
    try:
        result = gru.step(x_user, h_user, out=out)
    except (TypeError, ValueError):
        return
    assert_close(np.asarray(result, dtype=np.float64), step_reference(gru, x_t, h, c),
                 c["dtype"], "step with big-endian " + ", ".join(sorted(which)))


# ---- load_state_dict -----------------------------------------------------------------------------

ENTRY_KINDS = ("float32", "float64", "float16", "big-endian", "list", "non-contiguous",
               "wrong shape", "int", "complex", "bool", "text", "scalar", "missing")


@FUZZ
@given(c=configs(), kinds=st.lists(st.sampled_from(ENTRY_KINDS), min_size=12, max_size=12),
       unexpected=st.sampled_from([False, False, False, True]),
       valid_ratio=st.sampled_from([0.0, 0.9, 1.0]))
def test_load_state_dict_loads_exactly_or_refuses_and_changes_nothing(c, kinds, unexpected,
                                                                       valid_ratio):
    gru = make_gru(c)
    rng = np.random.default_rng(c["seed"])
    before = gru.state_dict()
    state, values = {}, {}
    problems = set()
    for i, (name, current) in enumerate(sorted(gru.params.items())):
        kind = kinds[i % len(kinds)] if rng.random() >= valid_ratio else "float64"
        value = rng.uniform(-1, 1, current.shape)
        values[name] = value
        if kind == "missing":
            problems.add("key")
            continue
        entry = {
            "float32": lambda: value.astype(np.float32), "float64": lambda: value,
            "float16": lambda: value.astype(np.float16),
            "big-endian": lambda: value.astype(">f8"), "list": lambda: value.tolist(),
            "non-contiguous": lambda: laid_out(value, "strided"),
            "wrong shape": lambda: value.reshape(-1)[:-1] if value.size > 1 else value[None],
            "int": lambda: np.round(value * 10).astype(np.int64),
            "complex": lambda: value.astype(np.complex128), "bool": lambda: value > 0,
            "text": lambda: "weights", "scalar": lambda: 0.5,
        }[kind]()
        if kind in ("wrong shape", "text", "scalar"):
            problems.add("shape")
        elif kind in ("int", "complex", "bool"):
            problems.add("dtype")
        else:
            values[name] = np.asarray(entry)  # the value as given (e.g. rounded to float16)
        state[name] = entry
    if unexpected:
        state["weight_ih_l9"] = np.zeros((3, 3))
        problems.add("key")

    try:
        gru.load_state_dict(state)
        event("loaded")
    except KeyError:
        event("refused: KeyError")
        assert "key" in problems, "KeyError without a missing or unexpected key"
    except (ValueError, TypeError) as e:
        event(f"refused: {type(e).__name__}")
        assert problems and "key" not in problems, "missing/unexpected keys are a KeyError"
    else:
        assert not problems, f"load_state_dict accepted entries with problems {problems}"
        for k, v in values.items():
            np.testing.assert_array_equal(gru.params[k], v.astype(gru.dtype), err_msg=k)
            assert gru.params[k].flags.c_contiguous and gru.params[k].dtype == gru.dtype
        gru.eval()
        x = rng.standard_normal((c["T"], 2, c["I"])).astype(c["dtype"])
        y, _ = gru(x.transpose(1, 0, 2) if c["batch_first"] else x)
        y_r, _, _ = reference.gru_forward(as64(x), reference_params(gru),
                                          num_layers=c["num_layers"],
                                          bidirectional=c["bidirectional"],
                                          reset_after=c["reset_after"])
        assert_close(y.transpose(1, 0, 2) if c["batch_first"] else y, y_r, c["dtype"], "y")
        return
    for k, v in before.items():  # a refused load leaves every parameter as it was
        np.testing.assert_array_equal(gru.params[k], v, err_msg=k)


def test_load_state_dict_refuses_a_non_mapping_with_type_error():
    gru = cgru.GRU(2, 3)
    with pytest.raises(TypeError):
        gru.load_state_dict(list(gru.params))


# ---- load_model on damaged files -----------------------------------------------------------------

@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A small trained model, its file's bytes, an input and its predictions."""
    model = cgru.Sequential([
        layers.GRU(5, return_sequences=True, reset_after=False),
        layers.Bidirectional(layers.GRU(3), merge_mode="concat"),
        layers.Dense(2, activation="tanh"),
    ], seed=0)
    model.compile("adam", "mse")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 4, 3)).astype(np.float32)
    model.fit(x, rng.standard_normal((6, 2)).astype(np.float32), epochs=1, batch_size=3,
              verbose=0)
    directory = tmp_path_factory.mktemp("fuzz-model")
    path = directory / "model.npz"
    model.save(path, metadata={"note": "fuzz"})
    return {"path": directory / "damaged.npz", "bytes": path.read_bytes(), "x": x,
            "prediction": model.predict(x)}


damages = st.lists(st.one_of(
    st.tuples(st.just("flip"), st.floats(0, 1, exclude_max=True), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.floats(0, 1, exclude_max=True), st.just(0)),
    st.tuples(st.just("zero"), st.floats(0, 1, exclude_max=True), st.integers(1, 64)),
    st.tuples(st.just("append"), st.just(0.0), st.integers(1, 64)),
), min_size=1, max_size=6)


def damaged(raw, damage):
    data = bytearray(raw)
    for kind, where, amount in damage:
        at = int(where * len(data)) if data else 0
        if kind == "flip" and data:
            data[at] ^= amount
        elif kind == "truncate":
            del data[at:]
        elif kind == "zero":
            data[at:at + amount] = bytes(len(data[at:at + amount]))
        elif kind == "append":
            data += bytes(range(amount))
    return bytes(data)


@FUZZ
@given(damage=damages)
def test_damaged_model_file_loads_identically_or_raises_value_error(saved_model, damage):
    path = saved_model["path"]
    path.write_bytes(damaged(saved_model["bytes"], damage))
    try:
        model = cgru.load_model(path)
    except ValueError:
        event("refused (ValueError)")
        return
    event("loaded")
    # what loads despite the damage (in zip fields that carry nothing) predicts as before
    np.testing.assert_array_equal(model.predict(saved_model["x"]), saved_model["prediction"])


def json_values():
    return st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(-3, 2 ** 65), st.floats(),
                  st.text(max_size=8)),
        lambda inner: st.one_of(st.lists(inner, max_size=3),
                                st.dictionaries(st.text(max_size=6), inner, max_size=3)),
        max_leaves=6)


def json_paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from json_paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from json_paths(v, prefix + (i,))


@FUZZ
@given(pick=st.integers(0, 10 ** 6), action=st.sampled_from(["replace", "delete", "nudge"]),
       new=json_values(), compile_=st.booleans())
def test_model_file_with_mutated_description_loads_or_raises_value_error(saved_model, pick,
                                                                        action, new, compile_):
    path = saved_model["path"]
    raw_path = path.with_name("original.npz")
    raw_path.write_bytes(saved_model["bytes"])
    with np.load(raw_path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    description = json.loads(str(arrays["__cgru__"]))
    paths = list(json_paths(description))[1:]
    target = paths[pick % len(paths)]
    parent = description
    for key in target[:-1]:
        parent = parent[key]
    old = parent[target[-1]]
    if action == "delete":
        del parent[target[-1]]
    elif action == "nudge":  # a plausible value of the same type
        parent[target[-1]] = (not old if isinstance(old, bool) else old + 1 + pick % 3
                              if isinstance(old, int) else old * 1.5
                              if isinstance(old, float) else old + "x"
                              if isinstance(old, str) else [] if isinstance(old, list) else {})
    else:
        parent[target[-1]] = new
    arrays["__cgru__"] = np.array(json.dumps(description))
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    try:
        model = cgru.load_model(path, compile=compile_)
    except ValueError:
        event("refused (ValueError)")
        return
    try:
        out = model.predict(saved_model["x"])
    except ValueError:  # e.g. the description now declares another input size
        event("loaded, predict refused (ValueError)")
        return
    event("loaded and predicted")
    assert out.shape[0] == len(saved_model["x"])


# ---- changing a GRU's attributes after construction ----------------------------------------------

# Each in a subprocess: these once crashed the interpreter (step() read past its tuple of
# parameter names when num_layers grew). A changed attribute must either be refused at assignment
# (AttributeError), or every later call gives the reference's numbers for the configuration the
# attributes now describe (when the parameters fit it) or raises ValueError or TypeError (when
# they do not); nothing else.
MISUSE_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import cgru
    from cgru import reference

    attribute, value, construct = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
    gru = cgru.GRU(4, 6, dtype="float64", seed=0, **construct)
    if attribute == "dtype":
        value = np.dtype(value)
    try:
        setattr(gru, attribute, value)
    except AttributeError:
        print(json.dumps(["assignment refused"]))
        sys.exit(0)

    L, H, I, D = gru.num_layers, gru.hidden_size, gru.input_size, 2 if gru.bidirectional else 1
    names = {}
    for layer in range(max(int(L), 0)):
        for d in range(D):
            s = f"_l{layer}" + ("_reverse" if d else "")
            names["weight_ih" + s] = (3 * H, I if layer == 0 else D * H)
            names["weight_hh" + s] = (3 * H, H)
            if gru.bias:
                names["bias_ih" + s] = names["bias_hh" + s] = (3 * H,)
    fits = names == {k: v.shape for k, v in gru.params.items()} and gru.dtype == np.float64
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 2, I))
    params = {k: v.astype(np.float64) for k, v in gru.params.items()}

    def forward():
        gru.eval()
        y, h_n = gru(x.transpose(1, 0, 2) if gru.batch_first else x)
        y = y.transpose(1, 0, 2) if gru.batch_first else y
        if not fits:
            return []
        y_r, h_r, _ = reference.gru_forward(x, params, num_layers=L, bidirectional=D == 2,
                                            reset_after=gru.reset_after)
        return [(y, y_r), (h_n, h_r)]

    def backward():
        gru.train()
        gru.zero_grad()
        y, _ = gru(x.transpose(1, 0, 2) if gru.batch_first else x)
        dx, dh0 = gru.backward(np.ones_like(y))
        dx = dx.transpose(1, 0, 2) if gru.batch_first else dx
        if not fits:
            return []
        _, _, cache = reference.gru_forward(x, params, num_layers=L, bidirectional=D == 2,
                                            reset_after=gru.reset_after)
        dx_r, dh0_r, grads_r = reference.gru_backward(np.ones((3, 2, D * H)), None, cache)
        return [(dx, dx_r), (dh0, dh0_r)] + [(gru.grads[k], grads_r[k]) for k in grads_r]

    def step():
        h = rng.standard_normal((max(L, 1), 2, H))
        new = gru.step(x[0], h)
        if not fits:
            return []
        _, h_r, _ = reference.gru_forward(x[:1], params, h, num_layers=L,
                                          reset_after=gru.reset_after)
        return [(new, h_r)]

    verdicts = []
    for name, call in (("forward", forward), ("backward", backward), ("step", step)):
        if name == "step" and D == 2:
            continue  # step() is for unidirectional GRUs (and says so)
        try:
            pairs = call()
        except (ValueError, TypeError) as e:
            verdicts.append(f"{name}: refused ({type(e).__name__})" if not fits else
                            f"{name}: WRONG, refused a consistent GRU ({type(e).__name__}: {e})")
            continue
        except Exception as e:
            verdicts.append(f"{name}: WRONG exception {type(e).__name__}: {e}")
            continue
        if not fits:
            verdicts.append(f"{name}: WRONG, returned although the parameters do not fit")
        elif all(a.shape == b.shape and np.allclose(a, b, rtol=1e-9, atol=1e-10)
                 for a, b in pairs):
            verdicts.append(f"{name}: reference numbers")
        else:
            verdicts.append(f"{name}: WRONG numbers")
    print(json.dumps(verdicts))
""")


def misuse(attribute, value, **construct):
    return pytest.param(attribute, value, construct,
                        id=f"{attribute}={value}" + "".join(f",{k}={v}"
                                                            for k, v in construct.items()))


@pytest.mark.parametrize("attribute,value,construct", [
    misuse("num_layers", 3),
    misuse("num_layers", 1, num_layers=2),
    misuse("num_layers", 0, num_layers=2),
    misuse("hidden_size", 7),
    misuse("hidden_size", 5),
    misuse("input_size", 3),
    misuse("input_size", 5),
    misuse("bidirectional", True),
    misuse("bias", False),
    misuse("bias", True, bias=False),
    misuse("dtype", "float32"),
    misuse("reset_after", False),
    misuse("batch_first", True),
])
def test_changed_attributes_give_reference_numbers_or_a_clear_refusal(attribute, value,
                                                                       construct):
    result = subprocess.run([sys.executable, "-c", MISUSE_SCRIPT, attribute, json.dumps(value),
                             json.dumps(construct)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"crashed ({result.returncode}): {result.stderr[-2000:]}"
    verdicts = json.loads(result.stdout.strip().splitlines()[-1])
    assert not [v for v in verdicts if "WRONG" in v], verdicts
