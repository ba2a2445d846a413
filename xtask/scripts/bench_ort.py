"""Times a model on onnxruntime's CPU provider; prints one JSON line.

Called by `cargo xtask bench-cpu`, which compares it with Kiln's CPU executor on the same
machine, with the same inputs and thread count.
"""
import json
import sys
import time

import numpy as np
import onnxruntime as ort


def main():
    model, threads, iters, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    feeds = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in i.shape]
        feeds[i.name] = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    for _ in range(warmup):
        sess.run(None, feeds)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    print(json.dumps({"version": ort.__version__, "median_ms": times[len(times) // 2], "min_ms": times[0]}))


if __name__ == "__main__":
    main()
