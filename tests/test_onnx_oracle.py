"""ONNX Runtime's GRU operator as oracle for both variants, bidirectional, and sequence lengths."""
import numpy as np
import pytest

import cgru

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402


def _to_onnx_gates(w, H):
    """PyTorch's gate order r, z, n along the first axis -> ONNX's z, r, n."""
    return np.concatenate([w[H:2 * H], w[:H], w[2 * H:]], axis=0)


def _run_onnx_gru(gru, x, h0, lengths):
    H, D = gru.hidden_size, gru.num_directions
    T, B, I = x.shape
    W = np.stack([_to_onnx_gates(gru.params["weight_ih_l0" + s], H) for s in ["", "_reverse"][:D]])
    R = np.stack([_to_onnx_gates(gru.params["weight_hh_l0" + s], H) for s in ["", "_reverse"][:D]])
    Bias = np.stack([np.concatenate([_to_onnx_gates(gru.params["bias_ih_l0" + s], H),
                                     _to_onnx_gates(gru.params["bias_hh_l0" + s], H)])
                     for s in ["", "_reverse"][:D]])
    node = helper.make_node(
        "GRU", ["X", "W", "R", "B", "sequence_lens", "initial_h"], ["Y", "Y_h"], hidden_size=H,
        direction="bidirectional" if D == 2 else "forward",
        linear_before_reset=int(gru.reset_after))
    f64 = TensorProto.DOUBLE if x.dtype == np.float64 else TensorProto.FLOAT
    graph = helper.make_graph(
        [node], "gru",
        [helper.make_tensor_value_info("X", f64, [T, B, I]),
         helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, [B]),
         helper.make_tensor_value_info("initial_h", f64, [D, B, H])],
        [helper.make_tensor_value_info("Y", f64, [T, D, B, H]),
         helper.make_tensor_value_info("Y_h", f64, [D, B, H])],
        initializer=[helper.make_tensor("W", f64, W.shape, W.ravel()),
                     helper.make_tensor("R", f64, R.shape, R.ravel()),
                     helper.make_tensor("B", f64, Bias.shape, Bias.ravel())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y, y_h = session.run(None, {"X": x, "sequence_lens": lengths.astype(np.int32),
                                "initial_h": h0})
    return y.transpose(0, 2, 1, 3).reshape(T, B, D * H), y_h


@pytest.mark.parametrize("reset_after", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_outputs_match_onnx_runtime_with_lengths(reset_after, bidirectional):
    # ONNX Runtime's GRU kernel runs float32 only
    dtype = "float32"
    rng = np.random.default_rng(5)
    T, B, I, H = 9, 4, 6, 10
    gru = cgru.GRU(I, H, bidirectional=bidirectional, reset_after=reset_after, dtype=dtype,
                   seed=3)
    gru.eval()
    D = gru.num_directions
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((D, B, H)).astype(dtype)
    lengths = np.array([9, 4, 1, 7])
    y_onnx, h_onnx = _run_onnx_gru(gru, x, h0, lengths)
    y, h_n = gru(x, h0, lengths)
    np.testing.assert_allclose(y, y_onnx, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(h_n, h_onnx, rtol=1e-4, atol=1e-5)
