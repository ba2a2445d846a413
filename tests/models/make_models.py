"""Writes the small fixture models of tests/models with their inputs and expected outputs.

Expected outputs come from onnx's reference evaluator, not from Kiln.
Run: python tests/models/make_models.py   (needs onnx and numpy)
"""
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

HERE = os.path.dirname(os.path.abspath(__file__))


def tiny_cnn():
    """A ResNet-style block: Conv-BN-Relu, a residual Add, pooling, Gemm, Softmax."""
    rng = np.random.default_rng(7)
    f = lambda *s: rng.normal(0, 0.3, s).astype(np.float32)
    inits = [
        numpy_helper.from_array(f(8, 3, 3, 3), "w1"),
        numpy_helper.from_array(f(8), "b1"),
        numpy_helper.from_array(np.abs(f(8)) + 0.5, "bn_scale"),
        numpy_helper.from_array(f(8), "bn_bias"),
        numpy_helper.from_array(f(8), "bn_mean"),
        numpy_helper.from_array(np.abs(f(8)) + 0.5, "bn_var"),
        numpy_helper.from_array(f(8, 8, 3, 3), "w2"),
        numpy_helper.from_array(f(10, 8), "fc_w"),
        numpy_helper.from_array(f(10), "fc_b"),
        numpy_helper.from_array(np.array([1, 8], dtype=np.int64), "flat_shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("BatchNormalization", ["c1", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["n1"], epsilon=1e-5, name="bn1"),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Add", ["c2", "r1"], ["res"], name="residual"),
        helper.make_node("Relu", ["res"], ["r2"], name="relu2"),
        helper.make_node("MaxPool", ["r2"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], name="pool1"),
        helper.make_node("GlobalAveragePool", ["p1"], ["gap"], name="gap"),
        helper.make_node("Reshape", ["gap", "flat_shape"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1, name="fc"),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1, name="softmax"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="kiln-fixtures")
    model.ir_version = 8
    onnx.checker.check_model(model)
    x = rng.uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32)
    (probs,) = ReferenceEvaluator(model).run(None, {"x": x})
    onnx.save(model, os.path.join(HERE, "tiny_cnn.onnx"))
    np.save(os.path.join(HERE, "tiny_cnn.input.x.npy"), x)
    np.save(os.path.join(HERE, "tiny_cnn.expected.probs.npy"), probs)


if __name__ == "__main__":
    tiny_cnn()
