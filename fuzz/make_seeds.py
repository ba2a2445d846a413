#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into fuzz/corpus/<target>/.

import_onnx: the models of tests/models, the small files of tests/malformed, and the smallest
model of onnx's backend node tests for each op type (so the fuzzer starts from every op
the importer knows, not only from what our own fixtures use).
read_npy: the .npy fixtures of tests/models, and one small array per dtype, byte order,
memory order and header version numpy can write, plus a few that Kiln refuses.

Replaces the seed files it writes and leaves others (kept regressions) alone.
Uses numpy and onnx from the venv that `cargo xtask conformance` sets up:
    ~/.cache/kiln/venv/bin/python fuzz/make_seeds.py
"""

import glob
import io
import os
import shutil

import numpy as np
import onnx

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MAX_SEED = 4096  # bytes; small seeds keep the fuzzer fast, the two fixture models excepted


def out_dir(target):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    return d


def onnx_seeds():
    d = out_dir("import_onnx")
    for p in sorted(glob.glob(os.path.join(ROOT, "tests/models/*.onnx"))):
        shutil.copy(p, os.path.join(d, "model_" + os.path.basename(p)))
    for p in sorted(glob.glob(os.path.join(ROOT, "tests/malformed/*.onnx"))):
        if os.path.getsize(p) <= MAX_SEED:
            shutil.copy(p, os.path.join(d, "malformed_" + os.path.basename(p)))
    # The smallest node test per op type, by file size then name, so reruns pick the same.
    node_dir = os.path.join(os.path.dirname(onnx.__file__), "backend/test/data/node")
    best = {}
    for p in sorted(glob.glob(os.path.join(node_dir, "*/model.onnx"))):
        size = os.path.getsize(p)
        if size > MAX_SEED:
            continue
        m = onnx.load(p)
        for op in sorted({n.op_type for n in m.graph.node}):
            if op not in best or (size, p) < best[op]:
                best[op] = (size, p)
    for op, (_, p) in sorted(best.items()):
        shutil.copy(p, os.path.join(d, f"node_{op}.onnx"))


def npy_bytes(a, version=None, fortran=False):
    f = io.BytesIO()
    if fortran:
        a = np.asfortranarray(a)
    np.lib.format.write_array(f, a, version=version, allow_pickle=False)
    return f.getvalue()


def npy_seeds():
    d = out_dir("read_npy")
    for p in sorted(glob.glob(os.path.join(ROOT, "tests/models/*.npy"))):
        if os.path.getsize(p) <= MAX_SEED:
            shutil.copy(p, os.path.join(d, "fixture_" + os.path.basename(p)))
    base = np.array([[0, 1, 2], [-3, 4, 5]])
    seeds = {}
    for dt in ["f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8"]:
        seeds[f"{dt}_2x3"] = npy_bytes(base.astype(dt))
    seeds["b1_2x3"] = npy_bytes(base > 0)
    seeds["f4_big_endian"] = npy_bytes(base.astype(">f4"))
    seeds["i8_big_endian"] = npy_bytes(base.astype(">i8"))
    seeds["f4_scalar"] = npy_bytes(np.float32(1.5))
    seeds["f4_empty_0x3"] = npy_bytes(np.zeros((0, 3), "f4"))
    seeds["f4_rank4"] = npy_bytes(np.arange(24, dtype="f4").reshape(1, 2, 3, 4))
    seeds["f4_nan_inf"] = npy_bytes(np.array([np.nan, np.inf, -np.inf, -0.0], "f4"))
    seeds["f4_header_v2"] = npy_bytes(base.astype("f4"), version=(2, 0))
    seeds["f4_header_v3"] = npy_bytes(base.astype("f4"), version=(3, 0))
    # Kiln refuses these; they start the fuzzer on the error paths.
    seeds["f4_fortran"] = npy_bytes(base.astype("f4"), fortran=True)
    seeds["c8_complex"] = npy_bytes(base.astype("c8"))
    seeds["u3_unicode"] = npy_bytes(np.array(["ab", "c"], "<U3"))
    seeds["structured"] = npy_bytes(np.zeros(2, dtype=[("a", "<i4"), ("b", "<f8")]))
    seeds["f4_truncated"] = npy_bytes(base.astype("f4"))[:-5]
    for name, b in seeds.items():
        assert len(b) <= MAX_SEED, name
        with open(os.path.join(d, name + ".npy"), "wb") as f:
            f.write(b)


onnx_seeds()
npy_seeds()
