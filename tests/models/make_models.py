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


def bert_layer():
    """One BERT encoder layer written the way torch.onnx.export writes it (opset 17): heads split
    with Shape/Gather/Unsqueeze/Concat/Reshape, attention as MatMul/Div/Add/Softmax/MatMul, GELU in
    its Erf form, LayerNorm decomposed into ReduceMean/Sub/Pow/Sqrt/Div. Small sizes (hidden 32, 2
    heads, sequence 8) keep the fixture small; the structure is what matters."""
    rng = np.random.default_rng(11)
    hidden, heads, ffn = 32, 2, 64
    head = hidden // heads
    f = lambda *s: rng.normal(0, 0.2, s).astype(np.float32)
    inits = {}

    def init(name, arr):
        inits[name] = numpy_helper.from_array(arr, name)
        return name

    def const_i64(name, vals):
        return init(name, np.array(vals, dtype=np.int64))

    nodes = []

    def node(op, ins, outs, **attrs):
        nodes.append(helper.make_node(op, ins, outs, name=f"{op}_{len(nodes)}", **attrs))
        return outs[0]

    def layer_norm(x, prefix):
        mean = node("ReduceMean", [x], [f"{prefix}_mean"], axes=[-1])
        d = node("Sub", [x, mean], [f"{prefix}_d"])
        sq = node("Pow", [d, init(f"{prefix}_two", np.array(2.0, np.float32))], [f"{prefix}_sq"])
        var = node("ReduceMean", [sq], [f"{prefix}_var"], axes=[-1])
        ve = node("Add", [var, init(f"{prefix}_eps", np.array(1e-12, np.float32))], [f"{prefix}_ve"])
        sd = node("Sqrt", [ve], [f"{prefix}_sd"])
        n = node("Div", [d, sd], [f"{prefix}_n"])
        g = node("Mul", [n, init(f"{prefix}_gamma", 1 + f(hidden))], [f"{prefix}_g"])
        return node("Add", [g, init(f"{prefix}_beta", f(hidden))], [f"{prefix}_out"])

    def linear(x, name, n_in, n_out):
        mm = node("MatMul", [x, init(f"{name}_w", f(n_in, n_out))], [f"{name}_mm"])
        return node("Add", [init(f"{name}_b", f(n_out)), mm], [f"{name}_out"])

    def split_heads(x, name):
        shape = node("Shape", [x], [f"{name}_shape"])
        b = node("Gather", [shape, const_i64(f"{name}_i0", 0)], [f"{name}_b"], axis=0)
        s = node("Gather", [shape, const_i64(f"{name}_i1", 1)], [f"{name}_s"], axis=0)
        bu = node("Unsqueeze", [b, const_i64(f"{name}_ax0", [0])], [f"{name}_bu"])
        su = node("Unsqueeze", [s, const_i64(f"{name}_ax1", [0])], [f"{name}_su"])
        new_shape = node(
            "Concat", [bu, su, const_i64(f"{name}_h", [heads]), const_i64(f"{name}_d", [head])], [f"{name}_ns"], axis=0
        )
        r = node("Reshape", [x, new_shape], [f"{name}_r"])
        return node("Transpose", [r], [f"{name}_t"], perm=[0, 2, 1, 3])

    x = "x"
    q = split_heads(linear(x, "q", hidden, hidden), "qh")
    k = split_heads(linear(x, "k", hidden, hidden), "kh")
    v = split_heads(linear(x, "v", hidden, hidden), "vh")
    kt = node("Transpose", [k], ["kt"], perm=[0, 1, 3, 2])
    scores = node("MatMul", [q, kt], ["scores"])
    scaled = node("Div", [scores, init("scale", np.array(np.sqrt(head), np.float32))], ["scaled"])
    masked = node("Add", [scaled, "mask"], ["masked"])
    probs = node("Softmax", [masked], ["probs"], axis=-1)
    ctx = node("MatMul", [probs, v], ["ctx"])
    ctx_t = node("Transpose", [ctx], ["ctx_t"], perm=[0, 2, 1, 3])
    ctx_shape = node("Concat", [node("Slice", [node("Shape", [ctx_t], ["cs"]), const_i64("z0", [0]), const_i64("z2", [2])], ["cs2"]),
                                const_i64("hid", [hidden])], ["ctx_ns"], axis=0)
    merged = node("Reshape", [ctx_t, ctx_shape], ["merged"])
    attn_out = linear(merged, "o", hidden, hidden)
    h1 = layer_norm(node("Add", [attn_out, x], ["res1"]), "ln1")
    up = linear(h1, "up", hidden, ffn)
    gelu_erf = node("Erf", [node("Div", [up, init("sqrt2", np.array(np.sqrt(2.0), np.float32))], ["up_s"])], ["erf"])
    gelu = node("Mul", [node("Mul", [up, node("Add", [gelu_erf, init("one", np.array(1.0, np.float32))], ["erf1"])], ["g1"]),
                        init("half", np.array(0.5, np.float32))], ["gelu"])
    down = linear(gelu, "down", ffn, hidden)
    y = layer_norm(node("Add", [down, h1], ["res2"]), "ln2")
    nodes.append(helper.make_node("Identity", [y], ["y"], name="out"))

    graph = helper.make_graph(
        nodes,
        "bert_layer",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", hidden]),
            helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", 1, 1, "seq"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", hidden])],
        list(inits.values()),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="kiln-fixtures")
    model.ir_version = 8
    onnx.checker.check_model(model)
    xv = rng.normal(0, 1, (2, 8, hidden)).astype(np.float32)
    mask = np.zeros((2, 1, 1, 8), np.float32)
    mask[1, :, :, 6:] = -10000.0
    (yv,) = ReferenceEvaluator(model).run(None, {"x": xv, "mask": mask})
    onnx.save(model, os.path.join(HERE, "bert_layer.onnx"))
    np.save(os.path.join(HERE, "bert_layer.input.x.npy"), xv)
    np.save(os.path.join(HERE, "bert_layer.input.mask.npy"), mask)
    np.save(os.path.join(HERE, "bert_layer.expected.y.npy"), yv)


if __name__ == "__main__":
    tiny_cnn()
    bert_layer()
