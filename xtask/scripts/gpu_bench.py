"""Kiln against PyTorch on the GPU machine: exports the models, checks Kiln's accuracy on the
GPU against its CPU reference, and times Kiln, PyTorch eager and torch.compile side by side.

Run on the GPU machine (torch, torchvision and transformers installed there) from the
repository root, with the kiln binary built on the development machine:

    python3 xtask/scripts/gpu_bench.py --kiln .gpu/bin/kiln --out $OUT

It writes bench.json (every figure) and bench.md (the table) into --out and prints the table
last. `cargo xtask bench-gpu` prepares the binary and says how to run this.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import torch

# FP16 dense tensor-core peak of the H100 SXM and its memory bandwidth, for the roofline.
H100_FP16_FLOPS = 989e12
H100_BYTES_PER_S = 3.35e12


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def export(name, model, example, path, input_names, dynamic_axes):
    if os.path.exists(path):
        return
    t0 = time.time()
    with torch.inference_mode():
        try:
            torch.onnx.export(
                model, example, path, input_names=input_names, output_names=["output"],
                dynamic_axes=dynamic_axes, opset_version=17, dynamo=False)
        except TypeError:
            torch.onnx.export(
                model, example, path, input_names=input_names, output_names=["output"],
                dynamic_axes=dynamic_axes, opset_version=17)
    log(f"exported {name} in {time.time() - t0:.1f} s ({os.path.getsize(path) / 1e6:.0f} MB)")


class BertOut(torch.nn.Module):
    """A BERT-base encoder returning the last hidden state (no pooler), on input ids alone."""

    def __init__(self):
        super().__init__()
        from transformers import BertConfig, BertModel
        cfg = BertConfig()
        cfg._attn_implementation = "eager"
        self.bert = BertModel(cfg, add_pooling_layer=False)

    def forward(self, input_ids):
        return self.bert(input_ids=input_ids).last_hidden_state


def calibrate_batchnorm(m):
    """Random weights with BatchNorm statistics of random images: freshly initialized running
    statistics (mean 0, variance 1) let activations shrink layer by layer until MobileNetV2's
    logits are about 1e-9, below FP16's range, which would test nothing."""
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.reset_running_stats()
            mod.momentum = None
    m.train()
    with torch.no_grad():
        for _ in range(4):
            m(torch.randn(16, 3, 224, 224))
    return m.eval()


def models(dirname):
    import torchvision
    torch.manual_seed(0)
    out = {}
    img = {"input": {0: "batch"}, "output": {0: "batch"}}
    for name, ctor in [("resnet50", torchvision.models.resnet50), ("mobilenet_v2", torchvision.models.mobilenet_v2)]:
        m = calibrate_batchnorm(ctor(weights=None))
        path = os.path.join(dirname, f"{name}.onnx")
        export(name, m, (torch.randn(1, 3, 224, 224),), path, ["input"], img)
        out[name] = (m, path, lambda b: [torch.randn(b, 3, 224, 224)], "input", [3, 224, 224])
    m = BertOut().eval()
    path = os.path.join(dirname, "bert_base.onnx")
    ids = {"input_ids": {0: "batch"}, "output": {0: "batch"}}
    export("bert_base", m, (torch.randint(0, 4, (1, 128)),), path, ["input_ids"], ids)
    out["bert_base"] = (m, path, lambda b: [torch.randint(0, 4, (b, 128))], "input_ids", [128])
    return out


def flops_and_bytes(name, batch):
    """Approximate FP16 work and unavoidable traffic (weights once, input and output) per batch."""
    if name == "resnet50":
        return 2 * 4.1e9 * batch, 2 * 25.6e6 + 2 * batch * (3 * 224 * 224 + 1000)
    if name == "mobilenet_v2":
        return 2 * 0.3e9 * batch, 2 * 3.5e6 + 2 * batch * (3 * 224 * 224 + 1000)
    # BERT-base, sequence 128: 12 layers of 4 * 768^2 + 2 * 768 * 3072 weights per token, plus
    # attention's two 128 x 128 x 768 products per layer.
    per_token = 12 * (4 * 768 * 768 + 2 * 768 * 3072) * 2 + 12 * 2 * 2 * 128 * 768
    return per_token * 128 * batch, 2 * 85e6 + 2 * batch * 128 * 768 * 2


def time_torch(fn, inputs, iters=200, warmup=30):
    with torch.inference_mode():
        for _ in range(warmup):
            fn(*inputs)
        torch.cuda.synchronize()
        times = []
        for _ in range(iters):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn(*inputs)
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e))
    times.sort()
    return times[len(times) // 2]


def run_kiln(args, cmd, env=None):
    log("$ " + " ".join([f"{k}={v}" for k, v in (env or {}).items()] + cmd))
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.kiln_timeout,
                       env={**os.environ, **env} if env else None)
    if r.returncode != 0:
        log(r.stderr[-3000:])
        return None, r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"
    return r.stdout, None


def int8_row(args, name, path, make, in_name, in_shape, b, fp16_row, dev):
    """Kiln INT8 (with FP16 for what INT8 leaves) at batch `b`: entropy calibration on random
    inputs at batch 1 (written to a calibration cache, which the batch-`b` build reuses), the
    GPU time, and the output against the FP32 CPU reference at batch 1."""
    import numpy as np
    calib = os.path.join(args.models_dir, f"{name}-calib")
    os.makedirs(calib, exist_ok=True)
    # The distribution `kiln compare` draws its random inputs from (floats uniform in [-1, 1),
    # token ids as the model's own generator makes them), so calibration sees what the
    # comparison feeds.
    rng = np.random.default_rng(1)
    torch.manual_seed(1)
    for i in range(args.calib_samples):
        x = make(1)[0]
        x = rng.uniform(-1, 1, tuple(x.shape)).astype(np.float32) if x.is_floating_point() else x.numpy()
        np.save(os.path.join(calib, f"{i:03}.npy"), x)
    cache = os.path.join(args.models_dir, f"{name}.calib.txt")
    shape = lambda n: f"{in_name}=" + "x".join(str(d) for d in [n] + in_shape)
    row = {"model": name, "batch": b, "precision": "int8", "device": dev, "accuracy": {}}
    q = ["--int8", "--fp16", "--calib-cache", cache]
    t0 = time.time()
    out, err = run_kiln(args, [args.kiln, "build", path, "--shapes", shape(1), "-o", f"/tmp/{name}-int8-1.kiln",
                               "--calib", calib, "--calib-algo", args.calib_algo] + q)
    row["calibrate_s"] = time.time() - t0
    if err:
        row["kiln_error"] = err
        return row
    out, err = run_kiln(args, [args.kiln, "compare", path, "--device", "cuda", "--shapes", shape(1), "--json",
                               "--seed", "1"] + q)
    if out:
        o = json.loads(out)["outputs"][0]
        row["accuracy"]["int8"] = {"cosine": o["cosine"], "max_abs": o["max_abs"], "rel_l2": o.get("rel_l2")}
    else:
        row["accuracy"]["int8"] = {"error": err}
    engine = f"/tmp/{name}-int8-{b}.kiln"
    out, err = run_kiln(args, [args.kiln, "build", path, "--shapes", shape(b), "-o", engine] + q)
    if out:
        log(out[-4000:])
        out, err = run_kiln(args, [args.kiln, "bench", engine, "--json", "--duration", "3"])
    if out:
        k = json.loads(out)
        row["kiln_ms"] = k["gpu_compute_ms"]["median"]
        row["kiln"] = k
        if fp16_row.get("kiln_ms"):
            row["vs_kiln_fp16"] = fp16_row["kiln_ms"] / row["kiln_ms"]
    else:
        row["kiln_error"] = err
    if args.profile:
        out, err = run_kiln(args, [args.kiln, "profile", engine, "--top", args.top, "--runs", "10"])
        log(f"== kiln profile {name} int8 batch {b}\n{out or err}")
    # The same build under other settings (KILN_INT8_GEMM=cublaslt: matrix products on
    # cuBLASLt with a separate epilogue kernel; KILN_IGEMM_WN=64: 4-warp implicit-GEMM blocks),
    # then with other build flags (--int8-args), each with its cosine where the flags change
    # what is quantized.
    variants = [(s, dict(kv.split("=", 1) for kv in s.split(",")), []) for s in args.int8_env]
    if args.int8_gemm_ab:
        variants.append(("KILN_INT8_GEMM=cublaslt", {"KILN_INT8_GEMM": "cublaslt"}, []))
    variants += [(a, None, a.split()) for a in args.int8_args]
    for i, (label, env, extra) in enumerate(variants):
        engine = f"/tmp/{name}-int8-{b}-variant{i}.kiln"
        out, err = run_kiln(args, [args.kiln, "build", path, "--shapes", shape(b), "-o", engine] + q + extra, env)
        if out:
            out, err = run_kiln(args, [args.kiln, "bench", engine, "--json", "--duration", "3"], env)
        row.setdefault("variants", {})[label] = json.loads(out)["gpu_compute_ms"]["median"] if out else err
        if extra:
            out, err = run_kiln(args, [args.kiln, "compare", path, "--device", "cuda", "--shapes", shape(1), "--json",
                                       "--seed", "1"] + q + extra, env)
            cos = json.loads(out)["outputs"][0]["cosine"] if out else err
            row.setdefault("variant_cosines", {})[label] = cos
            log(f"{name} int8 variant '{label}': cosine {cos}")
    return row


def variants_cell(r):
    v = r.get("variants") or {}
    return "; ".join(f"{k}: {x:.3f}" if isinstance(x, float) else f"{k}: {str(x)[:40]}" for k, x in v.items()) or "-"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", default=".gpu/bin/kiln")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--models-dir", default="/tmp/kiln-models")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--only", default="")
    ap.add_argument("--compile-mode", default="reduce-overhead")
    ap.add_argument("--kiln-timeout", type=int, default=300)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--profile", action="store_true", help="also log `kiln profile` of every row")
    ap.add_argument("--top", default="12", help="steps the profile lists")
    ap.add_argument("--export-only", action="store_true", help="export the models to --models-dir and stop")
    ap.add_argument("--int8", default="resnet50,bert_base",
                    help="models that also get an INT8 row (--int8 --fp16, calibrated by --calib-algo on random "
                         "inputs) at the largest batch; empty for none")
    ap.add_argument("--calib-samples", type=int, default=16, help="random inputs INT8 calibrates on")
    ap.add_argument("--calib-algo", default="entropy", help="the INT8 calibrator (kiln build --calib-algo)")
    ap.add_argument("--int8-env", action="append", default=[], metavar="VAR=VALUE[,VAR=VALUE]",
                    help="also build and time each INT8 engine with these environment settings (repeatable)")
    ap.add_argument("--int8-args", action="append", default=[], metavar="FLAGS",
                    help="also build, time and compare each INT8 engine with these extra build flags, as "
                         "'--precision NODE=fp16' (repeatable)")
    ap.add_argument("--int8-gemm-ab", action="store_true",
                    help="also time each INT8 engine with its matrix products on cuBLASLt (KILN_INT8_GEMM=cublaslt)")
    args = ap.parse_args()
    os.makedirs(args.models_dir, exist_ok=True)
    if args.export_only:
        models(args.models_dir)
        return
    os.makedirs(args.out, exist_ok=True)
    fp16 = "--fp16" in subprocess.run([args.kiln, "bench", "--help"], capture_output=True, text=True).stdout
    prec = ["--fp16"] if fp16 else []
    log(f"kiln precision: {'fp16' if fp16 else 'fp32 (this kiln has no --fp16)'}")
    rows = []
    dev = torch.cuda.get_device_name()
    for name, (model, path, make, in_name, in_shape) in models(args.models_dir).items():
        if args.only and name not in args.only.split(","):
            continue
        # Accuracy: Kiln on the GPU against the FP32 ONNX model on Kiln's CPU reference.
        shape = f"{in_name}=" + "x".join(str(d) for d in [1] + in_shape)
        acc = {}
        for label, flags in [("fp32", []), ("fp16", prec)] if fp16 else [("fp32", [])]:
            out, err = run_kiln(args, [args.kiln, "compare", path, "--device", "cuda", "--shapes", shape,
                                       "--json", "--seed", "1"] + flags)
            if out:
                o = json.loads(out)["outputs"][0]
                acc[label] = {"cosine": o["cosine"], "max_abs": o["max_abs"], "rel_l2": o.get("rel_l2")}
            else:
                acc[label] = {"error": err}
        for b in [int(x) for x in args.batches.split(",")]:
            row = {"model": name, "batch": b, "accuracy": acc, "device": dev}
            out, err = run_kiln(args, [args.kiln, "bench", path, "--shapes",
                                       f"{in_name}=" + "x".join(str(d) for d in [b] + in_shape),
                                       "--json", "--duration", "3"] + prec)
            if out:
                k = json.loads(out)
                row["kiln_ms"] = k["gpu_compute_ms"]["median"]
                row["kiln_e2e_ms"] = k["end_to_end_ms"]["median"]
                row["kiln"] = k
            else:
                row["kiln_error"] = err
            if args.profile:
                out, err = run_kiln(args, [args.kiln, "profile", path, "--shapes",
                                           f"{in_name}=" + "x".join(str(d) for d in [b] + in_shape),
                                           "--top", args.top, "--runs", "10"] + prec)
                log(f"== kiln profile {name} batch {b}\n{out or err}")
            if not args.no_torch:
                m = model.cuda().half() if name != "bert_base" else model.cuda().half()
                ins = [t.cuda().half() if t.is_floating_point() else t.cuda() for t in make(b)]
                row["eager_ms"] = time_torch(m, ins)
                try:
                    torch._dynamo.reset()
                    c = torch.compile(m, mode=args.compile_mode)
                    t0 = time.time()
                    with torch.inference_mode():
                        c(*ins)
                    row["compile_s"] = time.time() - t0
                    row["compiled_ms"] = time_torch(c, ins)
                except Exception as e:  # a failed compile is reported, not fatal
                    row["compiled_error"] = str(e)[:300]
                model.float().cpu()
            fl, by = flops_and_bytes(name, b)
            row["roofline_ms"] = max(fl / H100_FP16_FLOPS, by / H100_BYTES_PER_S) * 1e3
            rows.append(row)
            if fp16 and name in args.int8.split(",") and b == max(int(x) for x in args.batches.split(",")):
                rows.append(int8_row(args, name, path, make, in_name, in_shape, b, row, dev))
                log(json.dumps({k: v for k, v in rows[-1].items() if k != "kiln"}))
            log(json.dumps({k: v for k, v in row.items() if k != "kiln"}))
            with open(os.path.join(args.out, "bench.json"), "w") as f:
                json.dump(rows, f, indent=1)
    with open(os.path.join(args.out, "bench.json"), "w") as f:
        json.dump(rows, f, indent=1)
    lines = [
        f"Device: {dev}; Kiln precision {'FP16' if fp16 else 'FP32'}, PyTorch FP16; "
        f"torch.compile mode {args.compile_mode}; median latency of GPU work in ms.",
        "",
        "| model | batch | Kiln ms | eager ms | compile ms | Kiln img/s | vs eager | vs compile | roofline share | cosine fp32 / fp16 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in [r for r in rows if r.get("precision") != "int8"]:
        k = r.get("kiln_ms")
        e, c = r.get("eager_ms"), r.get("compiled_ms")
        f = lambda x: f"{x:.3f}" if isinstance(x, float) else "-"
        ratio = lambda x: f"{x / k:.2f}x" if k and x else "-"
        cos = " / ".join(f"{v['cosine']:.5f}" if "cosine" in v else "err" for v in r["accuracy"].values())
        lines.append(
            f"| {r['model']} | {r['batch']} | {f(k) if k else r.get('kiln_error', '-')[:60]} | {f(e)} | {f(c)} | "
            f"{r['batch'] * 1e3 / k:.0f} | {ratio(e)} | {ratio(c)} | "
            f"{r['roofline_ms'] / k * 100:.0f}% | {cos} |" if k else
            f"| {r['model']} | {r['batch']} | {r.get('kiln_error', '-')[:80]} | {f(e)} | {f(c)} | - | - | - | - | {cos} |")
    int8 = [r for r in rows if r.get("precision") == "int8"]
    if int8:
        lines += ["", f"Kiln INT8 (`--int8 --fp16`, {args.calib_algo} calibration on random inputs) against Kiln FP16, same run:", "",
                  "| model | batch | INT8 ms | FP16 ms | INT8 speed-up | cosine to fp32 (batch 1) | rel L2 "
                  "| INT8 ms under other settings |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in int8:
            a = r["accuracy"].get("int8", {})
            fp = next((x.get("kiln_ms") for x in rows if x["model"] == r["model"] and x["batch"] == r["batch"]
                       and x.get("precision") != "int8"), None)
            k = r.get("kiln_ms")
            lines.append(f"| {r['model']} | {r['batch']} | {f'{k:.3f}' if k else r.get('kiln_error', '-')[:60]} | "
                         f"{f'{fp:.3f}' if fp else '-'} | {f'{fp / k:.2f}x' if k and fp else '-'} | "
                         f"{a.get('cosine', a.get('error', '-'))} | {a.get('rel_l2', '-')} | "
                         f"{variants_cell(r)} |")
    table = "\n".join(lines)
    with open(os.path.join(args.out, "bench.md"), "w") as f:
        f.write(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
