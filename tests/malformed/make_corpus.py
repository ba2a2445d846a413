#!/usr/bin/env python3
"""Writes the malformed-model corpus next to this script, plus expected.txt.

Every file is a model a stranger could hand to Kiln. expected.txt has one line per model:
the file name and a substring the import error must contain, `WARN: <substring>` for a
model that must load with a warning, or `OK` for one that must load cleanly.
crates/kiln-onnx/tests/malformed.rs checks every line.

Uses only the onnx package and the standard library:
    /root/.cache/kiln/venv/bin/python tests/malformed/make_corpus.py
"""

import math
import os
import struct
import sys

import onnx
from onnx import TensorProto, helper

HERE = os.path.dirname(os.path.abspath(__file__))
EXPECTED = []


def write(name, data, expect):
    if isinstance(data, onnx.ModelProto):
        data = data.SerializeToString()
    assert len(data) < 64 * 1024, (name, len(data))
    with open(os.path.join(HERE, name), "wb") as f:
        f.write(data)
    EXPECTED.append((name, expect))


def model(nodes, inputs, outputs, inits=(), opset=17, ir_version=8, value_info=()):
    g = helper.make_graph(nodes, "g", list(inputs), list(outputs), list(inits), value_info=list(value_info))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = ir_version
    return m


def vi(name, dims, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, dims)


X, Y = vi("x", [1, 4]), vi("y", [1, 4])


def add_model(w):
    """y = x + w: the base that tensor cases vary."""
    return model([helper.make_node("Add", ["x", "w"], ["y"], name="add")], [X], [Y], [w])


def raw(name, dims, data, dtype=TensorProto.FLOAT):
    t = TensorProto(name=name, data_type=dtype, dims=dims)
    t.raw_data = data
    return t


def floats(*v):
    return struct.pack(f"<{len(v)}f", *v)


GOOD_W = raw("w", [4], floats(1, 2, 3, 4))


# Protobuf encoding by hand, for bytes the onnx package will not write.
def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(num, wire, payload):
    key = varint(num << 3 | wire)
    if wire == 2:
        return key + varint(len(payload)) + payload
    return key + payload


def length_delimited(num, payload):
    return field(num, 2, payload)


OPSET17 = length_delimited(8, field(2, 0, varint(17)))  # ModelProto.opset_import {version: 17}
IR8 = field(1, 0, varint(8))  # ModelProto.ir_version = 8


def nested_ifs(depth):
    """A model whose main graph holds an If whose then_branch holds an If ... `depth` deep.
    Only the fields that nest are written, so the file stays small."""
    g = b""
    for _ in range(depth):
        attr = length_delimited(1, b"then_branch") + field(20, 0, varint(5)) + length_delimited(6, g)
        node = length_delimited(4, b"If") + length_delimited(5, attr)
        g = length_delimited(1, node)
    return IR8 + length_delimited(7, g) + OPSET17


def external(name, dims, kv):
    t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=dims)
    t.data_location = TensorProto.EXTERNAL
    for k, v in kv:
        e = t.external_data.add()
        e.key, e.value = k, v
    return t


def main():
    for f in os.listdir(HERE):
        if f.endswith(".onnx"):
            os.remove(os.path.join(HERE, f))
    good = add_model(GOOD_W).SerializeToString()
    write("valid_add.onnx", good, "OK")

    # Truncated files: inside the first varint, inside the graph, one byte short.
    for cut in (1, 5, len(good) // 3, len(good) // 2, len(good) - 1):
        write(f"truncated_at_{cut}.onnx", good[:cut], "malformed model")
    write("empty_file.onnx", b"", "model has no graph")

    # Wire-level faults.
    graph_tag = bytes([7 << 3 | 2])
    i = good.index(graph_tag)
    write("wrong_wire_type_graph.onnx", good[:i] + bytes([7 << 3 | 0]) + good[i + 1:], "invalid wire type")
    write("wrong_wire_type_ir_version.onnx", length_delimited(1, b"ab") + good, "invalid wire type")
    write("invalid_wire_type_7.onnx", bytes([1 << 3 | 7]) + good, "invalid wire type")
    write("varint_overflow.onnx", b"\x08" + b"\xff" * 11, "malformed model")
    write("length_past_end.onnx", b"\x12\x7fkiln", "malformed model")
    write("producer_not_utf8.onnx", length_delimited(2, b"\xff\xfe") + good, "UTF-8")
    # A NodeProto whose op_type (field 4, a string) is sent as a varint.
    bad_node = length_delimited(7, length_delimited(1, field(4, 0, varint(3))))
    write("node_op_type_as_varint.onnx", IR8 + bad_node + OPSET17, "invalid wire type")

    # Tensor data that disagrees with its shape.
    write("raw_data_short.onnx", add_model(raw("w", [4], floats(1, 2, 3))), "raw_data holds 12 bytes")
    write("raw_data_long.onnx", add_model(raw("w", [4], floats(1, 2, 3, 4, 5))), "raw_data holds 20 bytes")
    write("raw_data_huge_shape.onnx", add_model(raw("w", [1 << 31], floats(1))), "raw_data holds 4 bytes")
    t = helper.make_tensor("w", TensorProto.FLOAT, [4], [1.0, 2.0])
    write("float_data_short.onnx", add_model(t), "float_data holds 2 values")
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1 << 30])
    t.float_data.append(1.0)
    write("float_data_huge_shape.onnx", add_model(t), "float_data holds 1 values")
    t = TensorProto(name="w", data_type=TensorProto.INT64, dims=[4])
    t.int64_data.extend([1, 2, 3])
    write("int64_data_short.onnx", add_model(t), "int64_data holds 3 values")

    # Shapes.
    write("negative_dim.onnx", add_model(raw("w", [-4], floats(1, 2, 3, 4))), "negative dimension -4")
    write("zero_dim_with_data.onnx", add_model(raw("w", [0, 4], floats(1, 2, 3, 4))), "raw_data holds 16 bytes")
    zero = model(
        [helper.make_node("Identity", ["w"], ["y"], name="id")], [], [vi("y", [0, 3])], [raw("w", [0, 3], b"")]
    )
    write("zero_dim_empty.onnx", zero, "OK")
    write("overflowing_dims.onnx", add_model(raw("w", [1 << 62, 1 << 62], floats(1))), "overflows")
    write("weights_over_limit.onnx", add_model(raw("w", [1 << 33], floats(1))), "total weight bytes")
    write("tensor_rank_33.onnx", add_model(raw("w", [1] * 33, floats(1))), "max_rank")
    deep_in = model([helper.make_node("Relu", ["x"], ["y"], name="r")], [vi("x", [1] * 40)], [vi("y", None)])
    write("declared_rank_40.onnx", deep_in, "rank of value 'x'")
    neg = model([helper.make_node("Relu", ["x"], ["y"], name="r")], [vi("x", [-1, 4])], [vi("y", [-1, 4])])
    write("declared_negative_dim.onnx", neg, "WARN: declares dimension -1")

    # Graph structure.
    m = model([helper.make_node("Relu", ["nothing"], ["y"], name="r")], [X], [Y])
    write("input_never_produced.onnx", m, "input 'nothing' is not produced")
    m = model(
        [helper.make_node("Relu", ["x"], ["y"], name="a"), helper.make_node("Relu", ["x"], ["y"], name="b")], [X], [Y]
    )
    write("duplicate_output.onnx", m, "output 'y' is already defined")
    m = model(
        [
            helper.make_node("Relu", ["t2"], ["t1"], name="a"),
            helper.make_node("Relu", ["t1"], ["t2"], name="b"),
            helper.make_node("Add", ["x", "t2"], ["y"], name="c"),
        ],
        [X],
        [Y],
    )
    write("cycle.onnx", m, "input 't2' is not produced")
    m = model([helper.make_node("Relu", ["t"], ["t"], name="self")], [X], [Y])
    write("self_loop.onnx", m, "input 't' is not produced")
    m = model([helper.make_node("Relu", ["x"], ["z"], name="r")], [X], [Y])
    write("output_never_computed.onnx", m, "output 'y' is never computed")
    write("empty_graph.onnx", model([], [], []), "graph has no outputs")
    m = model([helper.make_node("Relu", ["x"], ["y"], name="r")], [X, X], [Y])
    write("duplicate_input.onnx", m, "input 'x' is declared twice")
    write("duplicate_initializer.onnx", model([], [], [vi("w", [4])], [GOOD_W, GOOD_W]), "defined twice")
    write("initializer_without_name.onnx", add_model(raw("", [4], floats(1, 2, 3, 4))), "has no name")
    m = model([helper.make_node("Relu", ["x"], ["y"], name="r")], [X], [Y])
    m.ClearField("graph")
    write("no_graph.onnx", m, "model has no graph")
    m = model([helper.make_node("Relu", ["x"], ["y"], name="r")], [X], [Y])
    del m.opset_import[:]
    write("no_opset_import.onnx", m, "imports no opset")
    m = model([helper.make_node("NoSuchOp", ["x"], ["y"], name="r")], [X], [Y])
    write("unknown_op.onnx", m, "unsupported ops: NoSuchOp")
    m = model([helper.make_node("", ["x"], ["y"], name="r")], [X], [Y])
    write("empty_op_type.onnx", m, "unsupported ops")

    # Types and opsets.
    write("unknown_data_type.onnx", add_model(raw("w", [4], floats(1, 2, 3, 4), dtype=99)), "unknown data type 99")
    write("string_initializer.onnx", add_model(helper.make_tensor("w", TensorProto.STRING, [1], [b"a"])), "STRING")
    m = model([helper.make_node("Relu", ["x"], ["y"], name="r")], [vi("x", [1], elem=99)], [Y])
    write("unknown_input_type.onnx", m, "unknown data type 99")
    m = model([helper.make_node("Relu", ["x"], ["y"], name="r")], [X], [Y], opset=99)
    write("opset_too_new.onnx", m, "newer than the newest")

    # Attributes.
    node = helper.make_node("Transpose", ["x"], ["y"], name="t")
    node.attribute.append(helper.make_attribute("perm", 1.5))
    write("attribute_wrong_type.onnx", model([node], [X], [vi("y", [4, 1])]), "attribute 'perm'")
    node = helper.make_node("Constant", [], ["y"], name="c")
    write("constant_without_value.onnx", model([node], [], [Y]), "no value attribute")
    node = helper.make_node("If", ["c"], ["y"], name="if")
    write("if_without_branches.onnx", model([node], [vi("c", [], TensorProto.BOOL)], [Y]), "then_branch")

    # Subgraphs nested far past any limit: prost refuses them while decoding.
    deep = nested_ifs(2000)
    write("if_nested_2000.onnx", deep, "nested too deep")
    write("if_nested_40.onnx", nested_ifs(40), "nested too deep")

    # External data.
    os.makedirs(os.path.join(HERE, "data"), exist_ok=True)
    with open(os.path.join(HERE, "data", "w.bin"), "wb") as f:
        f.write(floats(1, 2, 3, 4))
    link = os.path.join(HERE, "data", "escape.bin")
    if os.path.lexists(link):
        os.remove(link)
    os.symlink("../../../Cargo.toml", link)
    write("external_ok.onnx", add_model(external("w", [4], [("location", "data/w.bin")])), "OK")
    ext = [
        ("external_dotdot.onnx", [("location", "../malformed/data/w.bin")], "leaves the model's directory"),
        ("external_absolute.onnx", [("location", "/etc/passwd")], "is an absolute path"),
        ("external_symlink.onnx", [("location", "data/escape.bin")], "resolves outside the model's directory"),
        ("external_missing_file.onnx", [("location", "data/missing.bin")], "external data file 'data/missing.bin'"),
        (
            "external_range_past_end.onnx",
            [("location", "data/w.bin"), ("offset", "8"), ("length", "16")],
            "is past the end",
        ),
        ("external_length_mismatch.onnx", [("location", "data/w.bin"), ("length", "8")], "does not match"),
        ("external_bad_offset.onnx", [("location", "data/w.bin"), ("offset", "-1")], "is not a number"),
        ("external_no_location.onnx", [("offset", "0")], "has no location"),
    ]
    for name, kv, expect in ext:
        write(name, add_model(external("w", [4], kv)), expect)
    huge = external("w", [1 << 31], [("location", "data/w.bin")])
    write("external_huge_shape.onnx", add_model(huge), "does not match")

    # Non-finite weights load, with a warning naming the tensor.
    write("nan_weights.onnx", add_model(raw("w", [4], floats(1, math.nan, 3, math.nan))), "WARN: 'w' holds 2 NaN")
    write("inf_weights.onnx", add_model(raw("w", [4], floats(math.inf, 2, -math.inf, 4))), "WARN: 'w' holds 2 NaN")
    t = TensorProto(name="w", data_type=TensorProto.FLOAT16, dims=[4])
    t.raw_data = struct.pack("<4H", 0x7E00, 0x3C00, 0x3C00, 0x3C00)
    m = model([helper.make_node("Add", ["x", "w"], ["y"], name="add")], [vi("x", [1, 4], 10)], [vi("y", [1, 4], 10)], [t])
    write("nan_weights_f16.onnx", m, "WARN: 'w' holds 1 NaN")
    c = helper.make_node("Constant", [], ["w"], name="cst", value=raw("v", [4], floats(1, 2, math.inf, 4)))
    m = model([c, helper.make_node("Add", ["x", "w"], ["y"], name="add")], [X], [Y])
    write("inf_constant.onnx", m, "WARN: constant 'cst' holds 1 NaN")

    with open(os.path.join(HERE, "expected.txt"), "w") as f:
        f.write("# file, then the substring its import error must contain ('WARN: ...': loads with that warning;\n")
        f.write("# 'OK': loads cleanly). Written by make_corpus.py; checked by crates/kiln-onnx/tests/malformed.rs.\n")
        for name, expect in EXPECTED:
            f.write(f"{name} {expect}\n")
    total = sum(os.path.getsize(os.path.join(HERE, n)) for n, _ in EXPECTED)
    assert total < 1 << 20, total
    print(f"wrote {len(EXPECTED)} models, {total} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
