"""Writes a BERT-base encoder (random weights) the way torch.onnx.export writes it at opset 17.

Heads are split with Shape/Gather/Unsqueeze/Concat/Reshape/Transpose, attention is
MatMul/Div/Add/Softmax/MatMul, GELU is in its Erf form and LayerNorm is decomposed into
ReduceMean/Sub/Pow/Sqrt/Div/Mul/Add: the structure fusion has to see through.

Run: python make_bert.py OUT.onnx [--layers 12] [--hidden 768] [--heads 12] [--ffn 3072]
"""
import argparse

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def bert(layers, hidden, heads, ffn, seed=0):
    rng = np.random.default_rng(seed)
    head = hidden // heads
    inits, nodes = {}, []

    def f(*s):
        return rng.normal(0, 0.02, s).astype(np.float32)

    def init(name, arr):
        inits[name] = numpy_helper.from_array(arr, name)
        return name

    def i64(name, vals):
        return init(name, np.array(vals, dtype=np.int64))

    def node(op, ins, out, **attrs):
        nodes.append(helper.make_node(op, ins, [out], name=f"{op}_{len(nodes)}", **attrs))
        return out

    def linear(x, p, n_in, n_out):
        mm = node("MatMul", [x, init(f"{p}.weight", f(n_in, n_out))], f"{p}.mm")
        return node("Add", [init(f"{p}.bias", f(n_out)), mm], f"{p}.out")

    def layer_norm(x, p):
        mean = node("ReduceMean", [x], f"{p}.mean", axes=[-1])
        d = node("Sub", [x, mean], f"{p}.d")
        sq = node("Pow", [d, init(f"{p}.two", np.array(2.0, np.float32))], f"{p}.sq")
        var = node("ReduceMean", [sq], f"{p}.var", axes=[-1])
        ve = node("Add", [var, init(f"{p}.eps", np.array(1e-12, np.float32))], f"{p}.ve")
        n = node("Div", [d, node("Sqrt", [ve], f"{p}.sd")], f"{p}.n")
        g = node("Mul", [n, init(f"{p}.weight", np.ones(hidden, np.float32))], f"{p}.g")
        return node("Add", [g, init(f"{p}.bias", np.zeros(hidden, np.float32))], f"{p}.out")

    def split_heads(x, p):
        shape = node("Shape", [x], f"{p}.shape")
        b = node("Gather", [shape, i64(f"{p}.i0", 0)], f"{p}.b", axis=0)
        s = node("Gather", [shape, i64(f"{p}.i1", 1)], f"{p}.s", axis=0)
        bu = node("Unsqueeze", [b, i64(f"{p}.ax0", [0])], f"{p}.bu")
        su = node("Unsqueeze", [s, i64(f"{p}.ax1", [0])], f"{p}.su")
        ns = node("Concat", [bu, su, i64(f"{p}.h", [heads]), i64(f"{p}.dh", [head])], f"{p}.ns", axis=0)
        return node("Transpose", [node("Reshape", [x, ns], f"{p}.r")], f"{p}.t", perm=[0, 2, 1, 3])

    x = "x"
    for l in range(layers):
        p = f"layer{l}"
        q = split_heads(linear(x, f"{p}.q", hidden, hidden), f"{p}.qh")
        k = split_heads(linear(x, f"{p}.k", hidden, hidden), f"{p}.kh")
        v = split_heads(linear(x, f"{p}.v", hidden, hidden), f"{p}.vh")
        kt = node("Transpose", [k], f"{p}.kt", perm=[0, 1, 3, 2])
        scores = node("MatMul", [q, kt], f"{p}.scores")
        scaled = node("Div", [scores, init(f"{p}.scale", np.array(np.sqrt(head), np.float32))], f"{p}.scaled")
        probs = node("Softmax", [node("Add", [scaled, "mask"], f"{p}.masked")], f"{p}.probs", axis=-1)
        ctx = node("Transpose", [node("MatMul", [probs, v], f"{p}.ctx")], f"{p}.ctx_t", perm=[0, 2, 1, 3])
        cs = node("Slice", [node("Shape", [ctx], f"{p}.cs"), i64(f"{p}.z0", [0]), i64(f"{p}.z2", [2])], f"{p}.cs2")
        merged = node("Reshape", [ctx, node("Concat", [cs, i64(f"{p}.hid", [hidden])], f"{p}.cns", axis=0)], f"{p}.merged")
        h1 = layer_norm(node("Add", [linear(merged, f"{p}.o", hidden, hidden), x], f"{p}.res1"), f"{p}.ln1")
        up = linear(h1, f"{p}.up", hidden, ffn)
        erf = node("Erf", [node("Div", [up, init(f"{p}.sqrt2", np.array(np.sqrt(2.0), np.float32))], f"{p}.up_s")], f"{p}.erf")
        e1 = node("Add", [erf, init(f"{p}.one", np.array(1.0, np.float32))], f"{p}.erf1")
        gelu = node("Mul", [node("Mul", [up, e1], f"{p}.g1"), init(f"{p}.half", np.array(0.5, np.float32))], f"{p}.gelu")
        x = layer_norm(node("Add", [linear(gelu, f"{p}.down", ffn, hidden), h1], f"{p}.res2"), f"{p}.ln2")
    nodes.append(helper.make_node("Identity", [x], ["y"], name="out"))
    graph = helper.make_graph(
        nodes,
        "bert",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", hidden]),
            helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", 1, 1, "seq"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", hidden])],
        list(inits.values()),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="kiln-bench")
    model.ir_version = 8
    return model


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--ffn", type=int, default=3072)
    a = ap.parse_args()
    onnx.save(bert(a.layers, a.hidden, a.heads, a.ffn), a.out)
