"""Writes torchvision's ResNet-50 or MobileNetV2 with random weights as ONNX, the way
torch.onnx.export writes them at opset 17: Conv, BatchNormalization, Relu or Clip(0, 6), Add,
GlobalAveragePool, Flatten, Gemm.

It lets the FP16 accuracy of the two CNNs be studied on a machine without PyTorch. The
networks are those `xtask/scripts/gpu_bench.py` exports: torchvision's initialization
(Kaiming-normal fan-out convolutions, a uniform or normal classifier) and BatchNorm
statistics of random images (a train-mode pass over a batch of random images sets each
BatchNorm's mean and variance, as `calibrate_batchnorm` there does), so they amplify
rounding errors alike. The pass runs in NumPy, layer by layer, as the graph is written.

Run: python make_cnn.py resnet50|mobilenet_v2 OUT.onnx [--seed 0] [--images 16]
"""
import argparse

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def conv2d(x, w, stride, pad, groups):
    """NCHW convolution in NumPy (float32), by windows."""
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    k = w.shape[-1]
    win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
    if groups == 1:
        return np.einsum("nchwij,ocij->nohw", win, w, optimize=True)
    assert groups == x.shape[1] == w.shape[0], "grouped convolutions are depthwise here"
    return np.einsum("nchwij,cij->nchw", win, w[:, 0], optimize=True)


class Builder:
    """Writes nodes and, for each, computes its value on a batch of random images."""

    def __init__(self, seed, images):
        self.rng = np.random.default_rng(seed)
        self.inits, self.nodes = [], []
        self.vals = {"input": self.rng.standard_normal((images, 3, 224, 224)).astype(np.float32)}

    def init(self, name, arr):
        self.inits.append(numpy_helper.from_array(np.asarray(arr, np.float32), name))
        return name

    def node(self, op, ins, out, value, **attrs):
        self.nodes.append(helper.make_node(op, ins, [out], name=f"{op}_{len(self.nodes)}", **attrs))
        self.vals[out] = value.astype(np.float32)
        return out

    def relu(self, x, out):
        return self.node("Relu", [x], out, np.maximum(self.vals[x], 0))

    def add(self, a, b, out):
        return self.node("Add", [a, b], out, self.vals[a] + self.vals[b])

    def conv_bn(self, x, p, cin, cout, k, stride=1, groups=1, act="relu"):
        std = np.sqrt(2.0 / (cout * k * k))  # kaiming_normal_, mode fan_out, relu
        wv = self.rng.normal(0, std, (cout, cin // groups, k, k)).astype(np.float32)
        y = self.node("Conv", [x, self.init(f"{p}.weight", wv)], f"{p}.conv",
                      conv2d(self.vals[x], wv, stride, k // 2, groups),
                      kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4, group=groups)
        # Train-mode statistics of this batch (the running estimate with momentum None).
        v = self.vals[y]
        mean, var = v.mean(axis=(0, 2, 3)), v.var(axis=(0, 2, 3), ddof=1)
        bn = [self.init(f"{p}.bn.{n}", a) for n, a in
              [("weight", np.ones(cout)), ("bias", np.zeros(cout)), ("mean", mean), ("var", var)]]
        norm = (v - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5)
        y = self.node("BatchNormalization", [y, *bn], f"{p}.bn", norm, epsilon=1e-5)
        if act == "relu":
            return self.relu(y, f"{p}.relu")
        if act == "relu6":
            lo, hi = self.init(f"{p}.lo", np.array(0.0)), self.init(f"{p}.hi", np.array(6.0))
            return self.node("Clip", [y, lo, hi], f"{p}.relu6", np.clip(self.vals[y], 0, 6))
        return y

    def classifier(self, x, cin, classes, uniform):
        pooled = self.vals[x].mean(axis=(2, 3), keepdims=True)
        x = self.node("GlobalAveragePool", [x], "pool", pooled)
        x = self.node("Flatten", [x], "flat", pooled.reshape(len(pooled), -1), axis=1)
        if uniform:  # nn.Linear's default
            bound = 1 / np.sqrt(cin)
            w, b = self.rng.uniform(-bound, bound, (classes, cin)), self.rng.uniform(-bound, bound, classes)
        else:  # mobilenet_v2: normal(0, 0.01), zero bias
            w, b = self.rng.normal(0, 0.01, (classes, cin)), np.zeros(classes)
        logits = self.vals[x] @ w.T + b
        return self.node("Gemm", [x, self.init("fc.weight", w), self.init("fc.bias", b)], "logits", logits,
                         transB=1)


def resnet50(b):
    x = b.conv_bn("input", "conv1", 3, 64, 7, 2)
    v = np.pad(b.vals[x], ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    v = np.lib.stride_tricks.sliding_window_view(v, (3, 3), axis=(2, 3))[:, :, ::2, ::2].max(axis=(4, 5))
    x = b.node("MaxPool", [x], "maxpool", v, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for li, (width, blocks, stride) in enumerate([(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]):
        for bi in range(blocks):
            p, s = f"layer{li + 1}.{bi}", stride if bi == 0 else 1
            y = b.conv_bn(x, f"{p}.conv1", cin, width, 1)
            y = b.conv_bn(y, f"{p}.conv2", width, width, 3, s)
            y = b.conv_bn(y, f"{p}.conv3", width, width * 4, 1, act=None)
            short = b.conv_bn(x, f"{p}.downsample", cin, width * 4, 1, s, act=None) if bi == 0 else x
            x = b.relu(b.add(y, short, f"{p}.add"), f"{p}.out")
            cin = width * 4
    return b.classifier(x, 2048, 1000, uniform=True)


def mobilenet_v2(b):
    x = b.conv_bn("input", "features.0", 3, 32, 3, 2, act="relu6")
    cin, i = 32, 1
    for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1)]:
        for j in range(n):
            p, hidden, stride = f"features.{i}", cin * t, s if j == 0 else 1
            y = b.conv_bn(x, f"{p}.expand", cin, hidden, 1, act="relu6") if t != 1 else x
            y = b.conv_bn(y, f"{p}.dw", hidden, hidden, 3, stride, groups=hidden, act="relu6")
            y = b.conv_bn(y, f"{p}.project", hidden, c, 1, act=None)
            x = b.add(x, y, f"{p}.add") if stride == 1 and cin == c else y
            cin, i = c, i + 1
    x = b.conv_bn(x, "features.18", 320, 1280, 1, act="relu6")
    return b.classifier(x, 1280, 1000, uniform=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", choices=["resnet50", "mobilenet_v2"])
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images", type=int, default=16, help="random images that set the BatchNorm statistics")
    a = ap.parse_args()
    b = Builder(a.seed, a.images)
    out = {"resnet50": resnet50, "mobilenet_v2": mobilenet_v2}[a.model](b)
    graph = helper.make_graph(
        b.nodes, a.model,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", 1000])],
        b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, a.out)


if __name__ == "__main__":
    main()
