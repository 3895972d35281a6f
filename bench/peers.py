"""The implementations the benchmarks compare, each built for one configuration.

Every builder takes (T, B, I, H, layers, bidirectional, dtype) and returns an object with
`forward()` and, where the implementation has a backward, `train_step()` (forward plus backward
with all parameter gradients), and `results(pass_name)`: what that pass computed, as NumPy
arrays under the names `cgru_results` uses, for `check_against_cgru`. Every implementation runs
the same GRU: cgru.GRU(seed=0)'s parameters (converted to its own layout) on the same input,
so each is checked against cgru before it is timed. A builder raises ImportError or
NotImplementedError (the benchmark skips, with the reason) where the package is missing or
has no such GRU. Threads: every implementation gets THREADS (its intra-op threads; inter-op
pools, where there are any, get one).

Keras 3 fixes its backend when it is first imported, once per process (KERAS_BACKEND), so a
process holds one Keras peer, named `keras/<backend>`: KERAS_BACKEND if set, else the first
installed of KERAS_BACKEND_ORDER (TensorFlow first: Keras on TensorFlow is the TensorFlow peer).
report.py runs the Keras tests once more for each other installed backend of
CGRU_BENCH_KERAS_BACKENDS, each in a process of its own (`keras_backends()`).
"""
import functools
import importlib.util
import os

import numpy as np

import cgru
from cgru import conventions, reference

THREADS = int(os.environ.get("CGRU_BENCH_THREADS", "2"))
# JAX's CPU client sizes its thread pools from PJRT_NPROC (else from the CPUs it may use) when its
# backend starts, which is after this module is imported
os.environ.setdefault("PJRT_NPROC", str(THREADS))

KERAS_BACKEND_ORDER = ("tensorflow", "torch", "jax")
# float32 results must match cgru's within this, relative to the largest magnitude (and at least
# absolutely); float64 within the second
TOLERANCE = {"float32": 1e-4, "float64": 1e-9}


def installed(module):
    return importlib.util.find_spec(module) is not None


def keras_backends():
    """The Keras backends the report runs, in order: CGRU_BENCH_KERAS_BACKENDS (comma-separated;
    default tensorflow,torch), those whose package is installed (none without Keras)."""
    if not installed("keras"):
        return []
    wanted = os.environ.get("CGRU_BENCH_KERAS_BACKENDS", "tensorflow,torch").split(",")
    return [b.strip() for b in wanted if b.strip() in KERAS_BACKEND_ORDER and installed(b.strip())]


if installed("keras") and "KERAS_BACKEND" not in os.environ:
    _first = next((b for b in KERAS_BACKEND_ORDER if installed(b)), None)
    if _first:
        os.environ["KERAS_BACKEND"] = _first
KERAS_BACKEND = os.environ.get("KERAS_BACKEND")


def _names(layer, direction):
    suffix = f"_l{layer}" + ("_reverse" if direction else "")
    return tuple(k + suffix for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))


def problem(T, B, I, H, layers=1, bidirectional=False, dtype="float32"):
    """The GRU every implementation runs: cgru.GRU(seed=0)'s parameters (PyTorch's names and
    layout, gates r, z, n) and a standard normal input x (T, B, I), both of `dtype`."""
    gru = cgru.GRU(I, H, num_layers=layers, bidirectional=bidirectional, dtype=dtype, seed=0)
    x = np.random.default_rng(0).standard_normal((T, B, I)).astype(dtype)
    return {k: v.copy() for k, v in gru.params.items()}, x


@functools.lru_cache(maxsize=4)
def cgru_results(config, dtype, pass_name):
    """cgru's results for (T, B, I, H, layers, bidirectional): the output y of an inference
    forward, or for "train" the input gradient dx and the parameter gradients ("grad <name>") of
    the loss sum(y) (dy = ones), and that loss's mean-square form ("mse": mean(y**2), what
    Keras's train_on_batch against zeros reports)."""
    impl = Cgru(*config, dtype=dtype)
    if pass_name == "forward":
        return {"y": impl.forward()[0]}
    return impl.results("train")


def check_against_cgru(impl, config, dtype, pass_name):
    """Raise AssertionError, naming the array and the difference, unless impl's results for the
    pass (those it has) match cgru's within TOLERANCE[dtype]."""
    got = impl.results(pass_name)
    want = cgru_results(config, dtype, pass_name)
    tol = TOLERANCE[dtype]
    for key, value in got.items():
        ref = np.asarray(want[key], np.float64)
        value = np.asarray(value, np.float64)
        assert value.shape == ref.shape, f"{impl.name} {key}: shape {value.shape}, cgru {ref.shape}"
        err = float(np.max(np.abs(value - ref))) if ref.size else 0.0
        scale = max(1.0, float(np.max(np.abs(ref))) if ref.size else 1.0)
        assert err <= tol * scale, (f"{impl.name} {key} differs from cgru's by {err:.3g} "
                                    f"(largest magnitude {scale:.3g}, tolerance {tol} of it)")
    return sorted(got)


class Cgru:
    name = "cgru"

    def __init__(self, T, B, I, H, layers=1, bidirectional=False, dtype="float32"):
        cgru.set_num_threads(THREADS)
        self.gru = cgru.GRU(I, H, num_layers=layers, bidirectional=bidirectional, dtype=dtype,
                            seed=0)
        _, self.x = problem(T, B, I, H, layers, bidirectional, dtype)
        self.dy = np.ones((T, B, H * (2 if bidirectional else 1)), dtype)

    def forward(self):
        self.gru.eval()
        return self.gru(self.x)

    def train_step(self):
        self.gru.train()
        self.gru(self.x)
        return self.gru.backward(self.dy)

    def results(self, pass_name):
        if pass_name == "forward":
            return {"y": self.forward()[0]}
        self.gru.zero_grad()
        self.gru.train()
        y, _ = self.gru(self.x)
        dx, _ = self.gru.backward(self.dy)
        out = {"dx": dx, "mse": np.mean(y.astype(np.float64) ** 2)}
        out.update({f"grad {k}": v.copy() for k, v in self.gru.grads.items()})
        return out


class NumpyReference:
    name = "numpy reference"

    def __init__(self, T, B, I, H, layers=1, bidirectional=False, dtype="float32"):
        self.params, self.x = problem(T, B, I, H, layers, bidirectional, dtype)
        self.kw = dict(num_layers=layers, bidirectional=bidirectional)
        self.dy = np.ones((T, B, H * (2 if bidirectional else 1)), dtype)

    def forward(self):
        return reference.gru_forward(self.x, self.params, **self.kw)[:2]

    def train_step(self):
        _, _, cache = reference.gru_forward(self.x, self.params, **self.kw)
        return reference.gru_backward(self.dy, None, cache)

    def results(self, pass_name):
        if pass_name == "forward":
            return {"y": self.forward()[0]}
        dx, _, grads = self.train_step()
        return {"dx": dx, **{f"grad {k}": v for k, v in grads.items()}}


class Torch:
    name = "torch"

    def __init__(self, T, B, I, H, layers=1, bidirectional=False, dtype="float32"):
        import torch
        torch.set_num_threads(THREADS)
        self.torch = torch
        params, x = problem(T, B, I, H, layers, bidirectional, dtype)
        self.gru = torch.nn.GRU(I, H, num_layers=layers, bidirectional=bidirectional,
                                dtype=getattr(torch, dtype))
        # cgru's parameters are PyTorch's, names and layout
        self.gru.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})
        # the input gradient is part of a training step, as cgru's backward computes it
        self.x = torch.from_numpy(x).requires_grad_(True)
        self.dy = torch.ones(T, B, H * (2 if bidirectional else 1), dtype=getattr(torch, dtype))

    def forward(self):
        with self.torch.no_grad():
            return self.gru(self.x)

    def train_step(self):
        self.gru.zero_grad(set_to_none=False)
        self.x.grad = None
        y, _ = self.gru(self.x)
        y.backward(self.dy)

    def results(self, pass_name):
        if pass_name == "forward":
            return {"y": self.forward()[0].numpy()}
        self.train_step()
        out = {"dx": self.x.grad.numpy()}
        out.update({f"grad {k}": p.grad.numpy() for k, p in self.gru.named_parameters()})
        return out


class OnnxRuntime:
    """ONNX Runtime's GRU operator (one node per layer); it has no backward."""
    name = "onnxruntime"

    def __init__(self, T, B, I, H, layers=1, bidirectional=False, dtype="float32"):
        import onnxruntime as ort
        from onnx import TensorProto, helper
        if dtype != "float32":
            raise NotImplementedError("the benchmark's ONNX Runtime peer runs float32")
        D = 2 if bidirectional else 1
        params, x = problem(T, B, I, H, layers, bidirectional, dtype)
        nodes, inits, prev = [], [], "X"
        for layer in range(layers):
            # ONNX's layout: W (D, 3H, in), R (D, 3H, H), B (D, 6H), gates z, r, n
            per_dir = [_names(layer, d) for d in range(D)]
            W = np.stack([conventions.swap_gate_blocks(params[n[0]]) for n in per_dir])
            R = np.stack([conventions.swap_gate_blocks(params[n[1]]) for n in per_dir])
            Bias = np.stack([np.concatenate([conventions.swap_gate_blocks(params[n[2]]),
                                             conventions.swap_gate_blocks(params[n[3]])])
                             for n in per_dir])
            for name, value in [("W", W), ("R", R), ("B", Bias)]:
                inits.append(helper.make_tensor(f"{name}{layer}", TensorProto.FLOAT, value.shape,
                                                value.astype(np.float32).ravel()))
            nodes.append(helper.make_node(
                "GRU", [prev, f"W{layer}", f"R{layer}", f"B{layer}"], [f"Y{layer}", f"Yh{layer}"],
                hidden_size=H, linear_before_reset=1,
                direction="bidirectional" if D == 2 else "forward"))
            # (T, D, B, H) -> (T, B, D*H) for the next layer
            nodes.append(helper.make_node("Transpose", [f"Y{layer}"], [f"Yt{layer}"],
                                          perm=[0, 2, 1, 3]))
            nodes.append(helper.make_node("Reshape", [f"Yt{layer}", "shape"], [f"Z{layer}"]))
            prev = f"Z{layer}"
        inits.append(helper.make_tensor("shape", TensorProto.INT64, [3], [T, B, D * H]))
        graph = helper.make_graph(
            nodes, "gru", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, B, I])],
            [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [T, B, D * H])], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
        options = ort.SessionOptions()
        options.intra_op_num_threads = THREADS
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(model.SerializeToString(), options,
                                            providers=["CPUExecutionProvider"])
        self.feed = {"X": x}

    def forward(self):
        return self.session.run(None, self.feed)

    train_step = None

    def results(self, pass_name):
        return {"y": self.forward()[0]}


# The passes Keras on TensorFlow runs with XLA (compile(jit_compile=True)). Keras leaves XLA off
# on CPU-only machines ("auto"); here XLA made the GRU's predict 1.4-2.6x faster and its
# train_on_batch 1.2-1.8x slower ((200, 8, 64, 128) and (100, 64, 128, 256)), so each pass gets
# the faster of the two: the strongest TensorFlow peer a user gets with one argument.
TF_XLA_PASSES = ("forward",)


class Keras:
    """Keras 3's GRU layer (reset_after=True, its default) on this process's backend
    (KERAS_BACKEND), called as users call it: predict_on_batch for inference, train_on_batch
    (SGD with learning rate 0, MSE against zeros) for training, both through Keras's compiled
    step functions (tf.function graphs on TensorFlow, with XLA for the passes in
    TF_XLA_PASSES). train_on_batch computes no input gradient, so its training step does less
    work than the others'; its check compares the loss it reports (the mean of y**2), and its
    forward's output."""
    name = f"keras/{KERAS_BACKEND}"

    def __init__(self, T, B, I, H, layers=1, bidirectional=False, dtype="float32"):
        if dtype != "float32":
            raise NotImplementedError("the benchmark's Keras peer runs float32")
        _set_keras_threads()
        import keras
        self.keras = keras
        D = 2 if bidirectional else 1
        params, x = problem(T, B, I, H, layers, bidirectional, dtype)
        stack = []
        for layer in range(layers):
            gru = keras.layers.GRU(H, return_sequences=True)
            stack.append(keras.layers.Bidirectional(gru) if bidirectional else gru)
        self.model = keras.Sequential([keras.Input((T, I))] + stack)
        for layer, block in enumerate(stack):
            parts = [block.forward_layer, block.backward_layer] if bidirectional else [block]
            for d, part in enumerate(parts):
                part.set_weights(conventions.engine_to_keras(
                    *(params[n] for n in _names(layer, d)), reset_after=True))
        self._compiled_for = None
        self.x = np.ascontiguousarray(x.transpose(1, 0, 2))  # Keras is batch-major
        self.y = np.zeros((B, T, H * D), np.float32)

    def _compile(self, pass_name):
        """Compile the model for the pass (once; again only when the pass changes)."""
        if self._compiled_for != pass_name:
            xla = KERAS_BACKEND == "tensorflow" and pass_name in TF_XLA_PASSES
            self.model.compile(optimizer=self.keras.optimizers.SGD(0.0), loss="mse",
                               jit_compile=True if xla else "auto")
            self._compiled_for = pass_name

    def forward(self):
        self._compile("forward")
        return self.model.predict_on_batch(self.x)

    def train_step(self):
        self._compile("train")
        return self.model.train_on_batch(self.x, self.y)

    def results(self, pass_name):
        if pass_name == "forward":
            return {"y": np.asarray(self.forward()).transpose(1, 0, 2)}
        return {"mse": float(np.asarray(self.train_step()).ravel()[0])}


def _set_keras_threads():
    """THREADS intra-op threads (and one inter-op) for Keras's backend; TensorFlow takes them
    only before its runtime starts, so the first Keras peer of a process sets them."""
    if KERAS_BACKEND == "tensorflow":
        import tensorflow as tf
        try:
            tf.config.threading.set_intra_op_parallelism_threads(THREADS)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # the runtime started: set by an earlier peer, or not settable
            if tf.config.threading.get_intra_op_parallelism_threads() != THREADS:
                raise NotImplementedError("TensorFlow's runtime started before its threads "
                                          "could be set") from None
    elif KERAS_BACKEND == "torch":
        import torch
        torch.set_num_threads(THREADS)
    # jax: PJRT_NPROC, set at this module's import


class Jax:
    """A GRU written with jax.lax.scan (the reverse direction with reverse=True), jit-compiled;
    training via jax.grad of sum(y) with respect to the parameters and the input. float64 runs
    with jax_enable_x64, which this peer turns on (process-wide; float32 arrays stay float32)."""
    name = "jax"

    def __init__(self, T, B, I, H, layers=1, bidirectional=False, dtype="float32"):
        import jax
        import jax.numpy as jnp
        if dtype == "float64":
            jax.config.update("jax_enable_x64", True)
        D = 2 if bidirectional else 1
        params, x = problem(T, B, I, H, layers, bidirectional, dtype)

        def direction(p, names, x, reverse):
            w_ih, w_hh, b_ih, b_hh = (p[n] for n in names)
            gi = x @ w_ih.T + b_ih  # every step's input product in one GEMM, as cgru does

            def cell(h, g):
                gh = h @ w_hh.T + b_hh
                r = jax.nn.sigmoid(g[:, :H] + gh[:, :H])
                z = jax.nn.sigmoid(g[:, H:2 * H] + gh[:, H:2 * H])
                n = jnp.tanh(g[:, 2 * H:] + r * gh[:, 2 * H:])
                h = (1 - z) * n + z * h
                return h, h
            h0 = jnp.zeros((x.shape[1], H), x.dtype)
            return jax.lax.scan(cell, h0, gi, reverse=reverse)[1]

        def run(p, x):
            for layer in range(layers):
                outs = [direction(p, _names(layer, d), x, d == 1) for d in range(D)]
                x = outs[0] if D == 1 else jnp.concatenate(outs, axis=-1)
            return x

        self.params = {k: jnp.asarray(v) for k, v in params.items()}
        self.x = jnp.asarray(x)
        assert self.x.dtype == np.dtype(dtype), f"JAX made {self.x.dtype} of {dtype}"
        self._forward = jax.jit(run)
        # parameter gradients and the input gradient, as cgru's backward computes
        self._grad = jax.jit(jax.grad(lambda p, x: run(p, x).sum(), argnums=(0, 1)))

    def forward(self):
        return self._forward(self.params, self.x).block_until_ready()

    def train_step(self):
        grads, dx = self._grad(self.params, self.x)
        return [g.block_until_ready() for g in grads.values()] + [dx.block_until_ready()]

    def results(self, pass_name):
        if pass_name == "forward":
            return {"y": np.asarray(self.forward())}
        grads, dx = self._grad(self.params, self.x)
        return {"dx": np.asarray(dx), **{f"grad {k}": np.asarray(v) for k, v in grads.items()}}


def available_peers(dtype="float32"):
    """The implementations of the benchmark's float32 groups (cgru first), or of its float64
    groups (cgru, torch, JAX), those whose packages are installed."""
    peers = [Cgru] if dtype == "float64" else [Cgru, NumpyReference]
    candidates = [("torch", Torch), ("jax", Jax)] if dtype == "float64" else [
        ("torch", Torch), ("onnxruntime", OnnxRuntime), ("keras", Keras), ("jax", Jax)]
    for module, peer in candidates:
        if installed(module) and (module != "onnxruntime" or installed("onnx")) and (
                module != "keras" or KERAS_BACKEND in KERAS_BACKEND_ORDER
                and installed(KERAS_BACKEND)):
            peers.append(peer)
    return peers
