"""Trains the two small models of the INT8 accuracy tests and writes them as ONNX with their data.

1. digits_cnn: a small CNN on scikit-learn's bundled `digits` images (8x8, 10 classes; no download).
2. count_transformer: a one-layer transformer encoder on a generated task: sequences of 16 tokens
   over a vocabulary of 12; the label is which of the tokens 0..3 occurs most often.

Training uses jax; the ONNX graphs are written with onnx.helper in the shape exporters produce
(the transformer decomposed as torch.onnx.export writes it). Each model's held-out accuracy under
onnx's reference evaluator is checked against jax's before anything is written.

Run: python tests/models/make_quant_models.py   (needs jax, scikit-learn, onnx, numpy)
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from sklearn.datasets import load_digits

HERE = os.path.dirname(os.path.abspath(__file__))


def adam(loss, params, batches, steps, lr=3e-3):
    grad = jax.jit(jax.value_and_grad(loss))
    m = jax.tree_util.tree_map(jnp.zeros_like, params)
    v = jax.tree_util.tree_map(jnp.zeros_like, params)
    for t in range(1, steps + 1):
        x, y = batches(t)
        l, g = grad(params, x, y)
        m = jax.tree_util.tree_map(lambda a, b: 0.9 * a + 0.1 * b, m, g)
        v = jax.tree_util.tree_map(lambda a, b: 0.999 * a + 0.001 * b * b, v, g)
        params = jax.tree_util.tree_map(
            lambda p, a, b: p - lr * (a / (1 - 0.9**t)) / (jnp.sqrt(b / (1 - 0.999**t)) + 1e-8), params, m, v
        )
    return params


def xent(logits, y):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))


# ---- digits CNN -------------------------------------------------------------------------------


def cnn_forward(p, x):
    dn = ("NCHW", "OIHW", "NCHW")
    h = jax.lax.conv_general_dilated(x, p["w1"], (1, 1), [(1, 1), (1, 1)], dimension_numbers=dn) + p["b1"][None, :, None, None]
    h = jax.lax.reduce_window(jax.nn.relu(h), -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
    h = jax.lax.conv_general_dilated(h, p["w2"], (1, 1), [(1, 1), (1, 1)], dimension_numbers=dn) + p["b2"][None, :, None, None]
    h = jax.lax.reduce_window(jax.nn.relu(h), -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
    return h.reshape(h.shape[0], -1) @ p["fc"].T + p["fcb"]


def digits_cnn():
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(x))
    tr, te = idx[:1300], idx[1300:]
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    p = {
        "w1": jax.random.normal(k[0], (8, 1, 3, 3)) * 0.3,
        "b1": jnp.zeros(8),
        "w2": jax.random.normal(k[1], (16, 8, 3, 3)) * 0.1,
        "b2": jnp.zeros(16),
        "fc": jax.random.normal(k[2], (10, 64)) * 0.1,
        "fcb": jnp.zeros(10),
    }

    def batches(t):
        b = np.random.default_rng(t).choice(tr, 64)
        return x[b], y[b]

    p = adam(lambda p, x, y: xent(cnn_forward(p, x), y), p, batches, 1500)
    acc = float(np.mean(np.argmax(cnn_forward(p, x[te]), 1) == y[te]))
    p = {k: np.asarray(v, np.float32) for k, v in p.items()}
    inits = [numpy_helper.from_array(v, k) for k, v in p.items()]
    inits.append(numpy_helper.from_array(np.array([0, -1], np.int64), "flat_shape"))
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], name="pool1"),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2], name="pool2"),
        helper.make_node("Reshape", ["p2", "flat_shape"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc", "fcb"], ["logits"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "digits_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    return graph, acc, x[tr[:200]], x[te], y[te]


# ---- counting transformer ---------------------------------------------------------------------

VOCAB, SEQ, HID, HEADS, FFN, CLASSES = 12, 16, 32, 2, 64, 4


def count_data(n, seed):
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    while len(xs) < n:
        s = rng.integers(0, VOCAB, SEQ)
        c = np.bincount(s, minlength=VOCAB)[:CLASSES]
        if (c == c.max()).sum() == 1:  # a unique answer
            xs.append(s)
            ys.append(int(np.argmax(c)))
    return np.array(xs, np.int64), np.array(ys, np.int64)


def layer_norm(h, g, b):
    mu = h.mean(-1, keepdims=True)
    d = h - mu
    return d / jnp.sqrt((d**2).mean(-1, keepdims=True) + 1e-5) * g + b


def tf_forward(p, ids):
    h = p["emb"][ids] + p["pos"]
    n, s, _ = h.shape
    split = lambda t: t.reshape(n, s, HEADS, HID // HEADS).transpose(0, 2, 1, 3)
    q, k, v = split(h @ p["wq"] + p["bq"]), split(h @ p["wk"] + p["bk"]), split(h @ p["wv"] + p["bv"])
    a = jax.nn.softmax(q @ k.transpose(0, 1, 3, 2) / np.sqrt(HID // HEADS), -1) @ v
    a = a.transpose(0, 2, 1, 3).reshape(n, s, HID)
    h = layer_norm(h + a @ p["wo"] + p["bo"], p["g1"], p["be1"])
    u = h @ p["w1"] + p["b1"]
    u = u * 0.5 * (1 + jax.lax.erf(u / np.sqrt(2.0)))
    h = layer_norm(h + u @ p["w2"] + p["b2"], p["g2"], p["be2"])
    return h.mean(1) @ p["wc"] + p["bc"]


def count_transformer():
    xtr, ytr = count_data(6000, 1)
    xte, yte = count_data(1000, 2)
    ks = iter(jax.random.split(jax.random.PRNGKey(1), 16))
    r = lambda *s: jax.random.normal(next(ks), s) * 0.1
    p = {
        "emb": r(VOCAB, HID), "pos": r(SEQ, HID),
        "wq": r(HID, HID), "bq": jnp.zeros(HID), "wk": r(HID, HID), "bk": jnp.zeros(HID),
        "wv": r(HID, HID), "bv": jnp.zeros(HID), "wo": r(HID, HID), "bo": jnp.zeros(HID),
        "g1": jnp.ones(HID), "be1": jnp.zeros(HID), "w1": r(HID, FFN), "b1": jnp.zeros(FFN),
        "w2": r(FFN, HID), "b2": jnp.zeros(HID), "g2": jnp.ones(HID), "be2": jnp.zeros(HID),
        "wc": r(HID, CLASSES), "bc": jnp.zeros(CLASSES),
    }

    def batches(t):
        b = np.random.default_rng(100 + t).choice(len(xtr), 128)
        return xtr[b], ytr[b]

    p = adam(lambda p, x, y: xent(tf_forward(p, x), y), p, batches, 3000)
    acc = float(np.mean(np.argmax(tf_forward(p, xte), 1) == yte))
    p = {k: np.asarray(v, np.float32) for k, v in p.items()}

    inits = {}
    nodes = []

    def init(name, arr):
        inits[name] = numpy_helper.from_array(np.asarray(arr), name)
        return name

    def node(op, ins, out, **attrs):
        nodes.append(helper.make_node(op, ins, [out], name=f"{op}_{len(nodes)}", **attrs))
        return out

    for k, v in p.items():
        init(k, v)

    def linear(x, w, b):
        return node("Add", [node("MatMul", [x, w], f"{w}_mm"), b], f"{w}_out")

    def ln(x, g, b, tag):
        mean = node("ReduceMean", [x], f"{tag}_mean", axes=[-1])
        d = node("Sub", [x, mean], f"{tag}_d")
        var = node("ReduceMean", [node("Pow", [d, init(f"{tag}_two", np.float32(2))], f"{tag}_sq")], f"{tag}_var", axes=[-1])
        sd = node("Sqrt", [node("Add", [var, init(f"{tag}_eps", np.float32(1e-5))], f"{tag}_ve")], f"{tag}_sd")
        return node("Add", [node("Mul", [node("Div", [d, sd], f"{tag}_n"), g], f"{tag}_g"), b], f"{tag}_out")

    heads_shape = init("heads_shape", np.array([0, SEQ, HEADS, HID // HEADS], np.int64))
    merged_shape = init("merged_shape", np.array([0, SEQ, HID], np.int64))

    def split(t, tag):
        return node("Transpose", [node("Reshape", [t, heads_shape], f"{tag}_r")], f"{tag}_t", perm=[0, 2, 1, 3])

    h = node("Add", [node("Gather", ["emb", "ids"], "embedded", axis=0), "pos"], "h0")
    q, k, v = split(linear(h, "wq", "bq"), "q"), split(linear(h, "wk", "bk"), "k"), split(linear(h, "wv", "bv"), "v")
    kt = node("Transpose", [k], "kt", perm=[0, 1, 3, 2])
    sc = node("Div", [node("MatMul", [q, kt], "scores"), init("scale", np.float32(np.sqrt(HID // HEADS)))], "scaled")
    a = node("MatMul", [node("Softmax", [sc], "probs", axis=-1), v], "ctx")
    a = node("Reshape", [node("Transpose", [a], "ctx_t", perm=[0, 2, 1, 3]), merged_shape], "merged")
    h1 = ln(node("Add", [h, linear(a, "wo", "bo")], "res1"), "g1", "be1", "ln1")
    u = linear(h1, "w1", "b1")
    erf = node("Erf", [node("Div", [u, init("sqrt2", np.float32(np.sqrt(2.0)))], "u_s")], "erf")
    gelu = node("Mul", [node("Mul", [u, init("half", np.float32(0.5))], "u_half"), node("Add", [erf, init("one", np.float32(1))], "erf1")], "gelu")
    h2 = ln(node("Add", [h1, linear(gelu, "w2", "b2")], "res2"), "g2", "be2", "ln2")
    pooled = node("ReduceMean", [h2], "pooled", axes=[1], keepdims=0)
    node("Add", [node("MatMul", [pooled, "wc"], "cls_mm"), "bc"], "logits")
    graph = helper.make_graph(
        nodes,
        "count_transformer",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", SEQ])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])],
        list(inits.values()),
    )
    return graph, acc, xtr[:256], xte, yte


def save(name, graph, acc, calib, test_x, test_y):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="kiln-fixtures")
    model.ir_version = 8
    onnx.checker.check_model(model)
    logits = ReferenceEvaluator(model).run(None, {graph.input[0].name: test_x})[0]
    ref_acc = float(np.mean(np.argmax(logits, 1) == test_y))
    assert abs(ref_acc - acc) < 1e-9 + 2.0 / len(test_y), (name, ref_acc, acc)
    print(f"{name}: held-out accuracy {ref_acc:.4f} (jax {acc:.4f}) on {len(test_y)} examples")
    onnx.save(model, os.path.join(HERE, f"{name}.onnx"))
    np.save(os.path.join(HERE, f"{name}.calib.npy"), calib)
    np.save(os.path.join(HERE, f"{name}.test_x.npy"), test_x)
    np.save(os.path.join(HERE, f"{name}.test_y.npy"), test_y)


if __name__ == "__main__":
    save("digits_cnn", *digits_cnn())
    save("count_transformer", *count_transformer())
