"""The implementations the benchmarks compare, each built for one configuration.

Every builder returns an object with `forward()` and, where the implementation has a backward,
`train_step()` (forward plus backward with all parameter gradients), all on the same float32
input, or None when its package is not installed. Threads: every implementation gets THREADS.
"""
import importlib.util
import os

import numpy as np

import cgru
from cgru import reference

THREADS = int(os.environ.get("CGRU_BENCH_THREADS", "2"))


def installed(module):
    return importlib.util.find_spec(module) is not None


class Cgru:
    name = "cgru"

    def __init__(self, T, B, I, H, layers=1, bidirectional=False):
        cgru.set_num_threads(THREADS)
        self.gru = cgru.GRU(I, H, num_layers=layers, bidirectional=bidirectional, seed=0)
        self.x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
        self.dy = np.ones((T, B, H * (2 if bidirectional else 1)), np.float32)

    def forward(self):
        self.gru.eval()
        return self.gru(self.x)

    def train_step(self):
        self.gru.train()
        self.gru(self.x)
        return self.gru.backward(self.dy)


class NumpyReference:
    name = "numpy reference"

    def __init__(self, T, B, I, H, layers=1, bidirectional=False):
        self.params = cgru.GRU(I, H, num_layers=layers, bidirectional=bidirectional,
                               seed=0).params
        self.kw = dict(num_layers=layers, bidirectional=bidirectional)
        self.x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
        self.dy = np.ones((T, B, H * (2 if bidirectional else 1)), np.float32)

    def forward(self):
        return reference.gru_forward(self.x, self.params, **self.kw)[:2]

    def train_step(self):
        _, _, cache = reference.gru_forward(self.x, self.params, **self.kw)
        return reference.gru_backward(self.dy, None, cache)


class Torch:
    name = "torch"

    def __init__(self, T, B, I, H, layers=1, bidirectional=False):
        import torch
        torch.set_num_threads(THREADS)
        self.torch = torch
        self.gru = torch.nn.GRU(I, H, num_layers=layers, bidirectional=bidirectional)
        # the input gradient is part of a training step, as cgru's backward computes it
        self.x = torch.randn(T, B, I, requires_grad=True)
        self.dy = torch.ones(T, B, H * (2 if bidirectional else 1))

    def forward(self):
        with self.torch.no_grad():
            return self.gru(self.x)

    def train_step(self):
        self.gru.zero_grad(set_to_none=False)
        self.x.grad = None
        y, _ = self.gru(self.x)
        y.backward(self.dy)


class OnnxRuntime:
    """ONNX Runtime's GRU operator (one node per layer); it has no backward."""
    name = "onnxruntime"

    def __init__(self, T, B, I, H, layers=1, bidirectional=False):
        import onnxruntime as ort
        from onnx import TensorProto, helper
        D = 2 if bidirectional else 1
        rng = np.random.default_rng(0)
        nodes, inits, prev = [], [], "X"
        for layer in range(layers):
            width = I if layer == 0 else D * H
            for name, shape in [("W", (D, 3 * H, width)), ("R", (D, 3 * H, H)), ("B", (D, 6 * H))]:
                inits.append(helper.make_tensor(f"{name}{layer}", TensorProto.FLOAT, shape,
                                                rng.uniform(-0.1, 0.1, shape).astype(np.float32)))
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
        self.feed = {"X": rng.standard_normal((T, B, I)).astype(np.float32)}

    def forward(self):
        return self.session.run(None, self.feed)

    train_step = None


class Keras:
    """Keras GRU (reset_after=True), on whichever backend Keras is configured with. Its training
    step (train_on_batch) computes no input gradient, so it does less work than the others'."""
    name = "keras"

    def __init__(self, T, B, I, H, layers=1, bidirectional=False):
        import keras
        stack = []
        for layer in range(layers):
            gru = keras.layers.GRU(H, return_sequences=True)
            stack.append(keras.layers.Bidirectional(gru) if bidirectional else gru)
        self.model = keras.Sequential([keras.Input((T, I))] + stack)
        self.model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
        self.x = np.random.default_rng(0).standard_normal((B, T, I)).astype(np.float32)
        self.y = np.zeros((B, T, H * (2 if bidirectional else 1)), np.float32)

    def forward(self):
        return self.model(self.x, training=False)

    def train_step(self):
        return self.model.train_on_batch(self.x, self.y)


class Jax:
    """A GRU written with jax.lax.scan and jitted; training via jax.grad."""
    name = "jax"

    def __init__(self, T, B, I, H, layers=1, bidirectional=False):
        import jax
        import jax.numpy as jnp
        if layers != 1 or bidirectional:
            raise NotImplementedError("the JAX peer runs one unidirectional layer")
        params = {k: jnp.asarray(v) for k, v in cgru.GRU(I, H, seed=0).params.items()}

        def run(p, x):
            gi = x @ p["weight_ih_l0"].T + p["bias_ih_l0"]

            def cell(h, g):
                gh = h @ p["weight_hh_l0"].T + p["bias_hh_l0"]
                r = jax.nn.sigmoid(g[:, :H] + gh[:, :H])
                z = jax.nn.sigmoid(g[:, H:2 * H] + gh[:, H:2 * H])
                n = jnp.tanh(g[:, 2 * H:] + r * gh[:, 2 * H:])
                h = (1 - z) * n + z * h
                return h, h
            return jax.lax.scan(cell, jnp.zeros((x.shape[1], H), x.dtype), gi)[1]

        self.params = params
        self.x = jnp.asarray(np.random.default_rng(0).standard_normal((T, B, I)), jnp.float32)
        self._forward = jax.jit(run)
        # parameter gradients and the input gradient, as cgru's backward computes
        self._grad = jax.jit(jax.grad(lambda p, x: run(p, x).sum(), argnums=(0, 1)))

    def forward(self):
        return self._forward(self.params, self.x).block_until_ready()

    def train_step(self):
        grads, dx = self._grad(self.params, self.x)
        return [g.block_until_ready() for g in grads.values()] + [dx.block_until_ready()]


def available_peers():
    peers = [Cgru, NumpyReference]
    for module, peer in [("torch", Torch), ("onnxruntime", OnnxRuntime), ("keras", Keras),
                         ("jax", Jax)]:
        if installed(module) and (module != "onnxruntime" or installed("onnx")):
            peers.append(peer)
    return peers
