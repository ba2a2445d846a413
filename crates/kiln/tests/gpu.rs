//! Whole models on the GPU against the CPU reference, and execution contexts on many threads.
//!
//! Without a CUDA driver every test prints why it is skipped and passes; with
//! `KILN_REQUIRE_GPU=1` (the GPU check script sets it) a missing GPU fails instead.

use kiln::gpu::{load_engine, GpuOptions};
use kiln::ir::{Graph, Tensor};
use kiln::runtime::exec::ExecutionContext;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/models").join(name)
}

fn have_gpu(test: &str) -> bool {
    match kiln::cuda::driver::Gpu::new(0) {
        Ok(_) => true,
        Err(e) => {
            assert!(std::env::var("KILN_REQUIRE_GPU").as_deref() != Ok("1"), "{test}: KILN_REQUIRE_GPU=1 but {e}");
            eprintln!("skipped {test}: {e}");
            false
        }
    }
}

/// The model optimized for batch `batch` (every input's leading dim), with seeded inputs; other
/// symbolic dims become 8.
fn model(name: &str, batch: Option<usize>) -> (Graph, Vec<Tensor>) {
    model_at(&fixture(name), batch)
}

/// [`model`] for a model file anywhere.
fn model_at(path: &Path, batch: Option<usize>) -> (Graph, Vec<Tensor>) {
    let mut m = kiln::load(path).unwrap();
    let mut shapes = HashMap::new();
    for &id in &m.graph.inputs {
        let info = &m.graph.node(id).outputs[0];
        let mut dims: Vec<usize> = info.ty.shape.as_ref().unwrap().iter().map(|d| d.known().unwrap_or(8)).collect();
        if let (Some(b), Some(d0)) = (batch, dims.first_mut()) {
            *d0 = b;
        }
        shapes.insert(info.name.clone(), dims);
    }
    kiln::specialize(&mut m.graph, &shapes).unwrap();
    kiln::optimize(&mut m.graph).unwrap();
    let inputs = kiln::random::graph_inputs(&m.graph, &mut HashMap::new(), 7).unwrap();
    (m.graph, inputs)
}

fn fp32() -> GpuOptions {
    let mut o = GpuOptions::default();
    o.exec.tf32 = false;
    o
}

#[test]
fn test_models_match_the_cpu_reference() {
    if !have_gpu("test_models_match_the_cpu_reference") {
        return;
    }
    for (name, batch) in [
        ("bert_layer.onnx", None),
        ("count_transformer.onnx", Some(16)),
        ("tiny_cnn.onnx", None),
        ("digits_cnn.onnx", Some(32)),
    ] {
        let (g, inputs) = model(name, batch);
        let want = kiln::run_cpu(&g, &inputs).unwrap();
        let got = match kiln::gpu::run_gpu(&g, &inputs, &fp32()) {
            Ok(got) => got,
            Err(e) => panic!("{name}: {e}"),
        };
        assert_eq!(got.len(), want.len(), "{name}");
        for (w, o) in want.iter().zip(&got) {
            let m = kiln::compare::metrics(name, w, o).unwrap();
            eprintln!("{name}: cosine {:.7}, rel L2 {:.2e}, max abs {:.2e}", m.cosine, m.rel_l2, m.max_abs);
            assert!(m.cosine > 0.9999 && m.rel_l2 < 1e-3, "{name}: {m:?}");
        }
    }
}

/// In FP16 the convolution networks run channels-last (NHWC convolutions, pooling and
/// elementwise ops) and still match the FP32 CPU reference.
#[test]
fn fp16_cnns_run_channels_last_and_match_the_cpu_reference() {
    if !have_gpu("fp16_cnns_run_channels_last_and_match_the_cpu_reference") {
        return;
    }
    for (name, batch) in [("tiny_cnn.onnx", None), ("digits_cnn.onnx", Some(32))] {
        let (g, inputs) = model(name, batch);
        let want = kiln::run_cpu(&g, &inputs).unwrap();
        let mut half = g.clone();
        kiln::to_fp16(&mut half, Default::default()).unwrap();
        let plan = kiln::cuda::plan::plan(&half).unwrap();
        let convs: Vec<bool> = plan
            .steps
            .iter()
            .filter_map(|s| match &s.kind {
                kiln::cuda::plan::StepKind::Conv(c) => Some(c.channels_last),
                _ => None,
            })
            .collect();
        assert!(!convs.is_empty() && convs.iter().all(|&c| c), "{name}: convolutions {convs:?}\n{plan}");
        let got = kiln::gpu::run_gpu(&half, &inputs, &fp32()).unwrap_or_else(|e| panic!("{name}: {e}"));
        for (w, o) in want.iter().zip(&got) {
            let m = kiln::compare::metrics(name, w, o).unwrap();
            eprintln!("{name} fp16 channels-last: cosine {:.7}, rel L2 {:.2e}", m.cosine, m.rel_l2);
            assert!(m.cosine > 0.999 && m.rel_l2 < 1e-2, "{name}: {m:?}");
        }
    }
}

/// A convolution kept in FP32 inside an FP16 network (as the FP16 policy keeps a deep CNN's
/// first layers) runs channels-last too, so the network stays NHWC throughout. The plan is
/// checked everywhere, the results where there is a GPU.
#[test]
fn fp32_convolutions_of_an_fp16_network_run_channels_last() {
    let (g, inputs) = model("digits_cnn.onnx", Some(32));
    let first =
        g.node_ids().find(|&id| g.node(id).op.name().contains("Conv")).map(|id| g.node(id).name.clone()).unwrap();
    let mut half = g.clone();
    let report = kiln::to_fp16(&mut half, [first.clone()].into_iter().collect()).unwrap();
    assert!(report.kept.iter().any(|k| k.node == first), "{report:?}");
    let plan = kiln::cuda::plan::plan(&half).unwrap();
    let convs: Vec<(kiln::ir::DType, bool)> = plan
        .steps
        .iter()
        .filter_map(|s| match &s.kind {
            kiln::cuda::plan::StepKind::Conv(c) => Some((c.dtype, c.channels_last)),
            _ => None,
        })
        .collect();
    assert!(convs.iter().any(|c| c.0 == kiln::ir::DType::F32), "{convs:?}\n{plan}");
    assert!(convs.iter().all(|c| c.1), "every convolution channels-last: {convs:?}\n{plan}");
    if !have_gpu("fp32_convolutions_of_an_fp16_network_run_channels_last") {
        return;
    }
    let want = kiln::run_cpu(&g, &inputs).unwrap();
    let got = kiln::gpu::run_gpu(&half, &inputs, &fp32()).unwrap();
    let m = kiln::compare::metrics("digits_cnn", &want[0], &got[0]).unwrap();
    eprintln!("digits_cnn fp16 with an fp32 first convolution: cosine {:.7}, rel L2 {:.2e}", m.cosine, m.rel_l2);
    assert!(m.cosine > 0.999 && m.rel_l2 < 1e-2, "{m:?}");
}

#[test]
fn cuda_graph_replay_gives_the_direct_result() {
    if !have_gpu("cuda_graph_replay_gives_the_direct_result") {
        return;
    }
    let (g, inputs) = model("bert_layer.onnx", None);
    let mut direct_opts = fp32();
    direct_opts.exec.cuda_graph = false;
    let mut direct = ExecutionContext::new(load_engine(&g, &direct_opts).unwrap()).unwrap();
    let want = direct.run(&inputs).unwrap();
    let mut ctx = ExecutionContext::new(load_engine(&g, &fp32()).unwrap()).unwrap();
    for run in 0..4 {
        assert_eq!(ctx.run(&inputs).unwrap(), want, "run {run}");
    }
    assert!(ctx.uses_graph(), "the context should replay a CUDA graph after its first run");
}

/// Eight threads, each with its own context on one engine, give exactly the single-threaded
/// outputs, and GPU memory does not grow while they run.
///
/// By default on the BERT layer fixture for 2 seconds. `KILN_SOAK_MODEL=PATH.onnx` soaks that
/// model instead (batch 8, FP16 if `KILN_SOAK_FP16=1`), for `KILN_SOAK_SECONDS`: the GPU
/// check script's `soak` stage runs ResNet-50 and BERT-base for 5 minutes each.
#[test]
fn contexts_on_eight_threads_agree_with_one() {
    if !have_gpu("contexts_on_eight_threads_agree_with_one") {
        return;
    }
    let seconds = std::env::var("KILN_SOAK_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(2.0f64);
    let soak = std::time::Duration::from_secs_f64(seconds);
    let (name, (mut g, inputs)) = match std::env::var("KILN_SOAK_MODEL") {
        Ok(path) => (path.clone(), model_at(Path::new(&path), Some(8))),
        Err(_) => ("bert_layer.onnx".to_string(), model("bert_layer.onnx", None)),
    };
    if std::env::var("KILN_SOAK_FP16").as_deref() == Ok("1") {
        kiln::to_fp16(&mut g, Default::default()).unwrap();
    }
    let free_before = kiln::cuda::driver::Gpu::new(0).unwrap().mem_info().unwrap().0;
    let engine = load_engine(&g, &fp32()).unwrap();
    let want = ExecutionContext::new(Arc::clone(&engine)).unwrap().run(&inputs).unwrap();
    let mut free_after_warmup = 0;
    let runs = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel();
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let engine = Arc::clone(&engine);
                let (inputs, want, tx, runs) = (&inputs, &want, tx.clone(), &runs);
                s.spawn(move || {
                    let mut ctx = ExecutionContext::new(engine).unwrap();
                    let t0 = std::time::Instant::now();
                    let mut r = 0;
                    while r < 3 || t0.elapsed() < soak {
                        // Bit for bit: FP32 and FP16 inference is deterministic.
                        assert_eq!(&ctx.run(inputs).unwrap(), want, "thread {t} run {r}");
                        if r == 2 {
                            tx.send(()).unwrap();
                        }
                        r += 1;
                    }
                    runs.fetch_add(r, std::sync::atomic::Ordering::Relaxed);
                    eprintln!(
                        "thread {t}: {r} runs in {:.1} s, all equal to the single-threaded result",
                        t0.elapsed().as_secs_f64()
                    );
                })
            })
            .collect();
        for _ in 0..8 {
            rx.recv().unwrap();
        }
        free_after_warmup = engine.gpu().mem_info().unwrap().0;
        for h in handles {
            h.join().unwrap();
        }
    });
    let free_end = engine.gpu().mem_info().unwrap().0;
    eprintln!(
        "soak {name}: 8 threads, {} runs in {seconds} s, every output equal to the single-threaded \
         one; free GPU memory before loading {free_before}, after warm-up {free_after_warmup}, at the end {free_end}",
        runs.into_inner()
    );
    // Contexts are dropped at the end, so memory can only have been given back.
    assert!(free_end + (1 << 20) >= free_after_warmup, "GPU memory grew: {free_after_warmup} -> {free_end}");
}

/// The models above specialize and optimize to static shapes on any machine.
#[test]
fn test_models_specialize_to_static_shapes() {
    for (name, batch) in
        [("bert_layer.onnx", None), ("count_transformer.onnx", Some(16)), ("digits_cnn.onnx", Some(32))]
    {
        let (g, inputs) = model(name, batch);
        assert_eq!(inputs.len(), g.inputs.len(), "{name}");
    }
}

/// Contexts with a 4 GiB workspace each, until the GPU runs out: the one that does not fit is
/// an `OutOfMemory` error saying how much it asked for and how much was free, the contexts
/// made before it keep answering with the same outputs, and one fits again once they are gone.
#[test]
fn more_contexts_than_fit_is_an_error_and_the_others_keep_serving() {
    if !have_gpu("more_contexts_than_fit_is_an_error_and_the_others_keep_serving") {
        return;
    }
    let (g, inputs) = model("bert_layer.onnx", None);
    let mut opts = fp32();
    opts.workspace_bytes = 4 << 30;
    let engine = load_engine(&g, &opts).unwrap();
    let mut first = ExecutionContext::new(Arc::clone(&engine)).unwrap();
    let want = first.run(&inputs).unwrap();
    let mut held = vec![];
    let err = loop {
        match ExecutionContext::new(Arc::clone(&engine)) {
            Ok(c) => held.push(c),
            Err(e) => break e,
        }
        assert!(held.len() < 10_000, "10,000 contexts of 4 GiB fit: the allocation is not checked");
    };
    let msg = err.to_string();
    eprintln!("after {} more contexts: {msg}", held.len());
    assert!(matches!(err, kiln::cuda::CudaError::OutOfMemory { .. }), "{msg}");
    assert!(msg.contains("asked for") && msg.contains("are free"), "{msg}");
    assert_eq!(first.run(&inputs).unwrap(), want, "a context made before the failure stopped answering");
    if let Some(last) = held.last_mut() {
        assert_eq!(last.run(&inputs).unwrap(), want);
    }
    drop(held);
    let mut again = ExecutionContext::new(Arc::clone(&engine)).unwrap();
    assert_eq!(again.run(&inputs).unwrap(), want);
}

/// FP16 1x1 convolutions of stride 1 over NHWC run as cuBLASLt GEMMs, with bias, ReLU and a
/// residual (cuBLASLt's C) fused, a Clip as a kernel after; ReLU over a residual stays on cuDNN.
/// The plan is checked everywhere, the results where there is a GPU.
#[test]
fn pointwise_convs_run_as_gemms_and_match_the_cpu_reference() {
    use kiln::cuda::plan::StepKind;
    use kiln::ir::ops::elementwise::{BinaryOp, UnaryOp};
    use kiln::ir::ops::linalg::{ConvAttrs, LinalgOp};
    use kiln::ir::ops::pool::AutoPad;
    use kiln::ir::ops::{ElementwiseOp, Expr, ExprNode, FusedOp};
    use kiln::ir::{DType, Op, TypeInfo, Value, ValueInfo};
    let mut g = Graph::new("pointwise");
    let f16 = |s: &[usize]| TypeInfo::known(DType::F16, s);
    let x = g.add_input("x", f16(&[2, 16, 7, 5]));
    let r = g.add_input("r", f16(&[2, 24, 7, 5]));
    let mut seed = 1u32;
    let mut konst = |g: &mut Graph, name: &str, shape: &[usize]| {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| {
                seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
                (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect();
        g.add_const(name, Tensor::from_vec(shape.to_vec(), v).unwrap().cast(DType::F16))
    };
    let add = |a: usize, b: usize| ExprNode::Op { op: ElementwiseOp::Binary(BinaryOp::Add), args: vec![a, b] };
    let relu = |a: usize| ExprNode::Op { op: ElementwiseOp::Unary(UnaryOp::Relu), args: vec![a] };
    let clip = |a: usize| ExprNode::Op { op: ElementwiseOp::Clip { min: Some(0.0), max: Some(6.0) }, args: vec![a] };
    let conv = || {
        let attrs = ConvAttrs {
            kernel_shape: vec![],
            strides: vec![],
            dilations: vec![],
            pads: vec![],
            auto_pad: AutoPad::NotSet,
            group: 1,
        };
        LinalgOp::Conv(attrs)
    };
    let mut layer =
        |g: &mut Graph, name: &str, ins: &[Value], [cin, cout]: [usize; 2], bias: bool, expr: Option<Expr>| {
            let w = konst(g, &format!("{name}.w"), &[cout, cin, 1, 1]);
            let mut slots = vec![Some(ins[0]), Some(w)];
            if bias {
                slots.push(Some(konst(g, &format!("{name}.b"), &[cout])));
            }
            let base_inputs = slots.len();
            slots.extend(ins[1..].iter().map(|&v| Some(v)));
            let op = match expr {
                Some(expr) => Op::Fused(FusedOp::Epilogue { base: conv(), base_inputs, expr }),
                None => Op::Linalg(conv()),
            };
            let id = g.add_node(name, op, &slots, vec![ValueInfo::tensor(name, f16(&[2, cout, 7, 5]))]);
            Value { node: id, slot: 0 }
        };
    let c1 = layer(&mut g, "c1", &[x], [16, 24], true, Some(Expr { nodes: vec![ExprNode::Input(0), relu(0)] }));
    let sum = Expr { nodes: vec![ExprNode::Input(0), ExprNode::Input(1), add(0, 1)] };
    let c2 = layer(&mut g, "c2", &[c1, r], [24, 24], true, Some(sum));
    let sum_relu = Expr { nodes: vec![ExprNode::Input(0), ExprNode::Input(1), add(1, 0), relu(2)] };
    let c3 = layer(&mut g, "c3", &[c2, c1], [24, 24], true, Some(sum_relu));
    let c4 = layer(&mut g, "c4", &[c3], [24, 8], true, Some(Expr { nodes: vec![ExprNode::Input(0), clip(0)] }));
    let c5 = layer(&mut g, "c5", &[c4], [8, 8], false, None);
    g.add_output("y", c5);

    let plan = kiln::cuda::plan::plan(&g).unwrap();
    let kinds: Vec<(&str, &str)> = plan
        .steps
        .iter()
        .filter_map(|s| match &s.kind {
            StepKind::Gemm(_) => Some((s.node.as_str(), "gemm")),
            StepKind::Conv(_) => Some((s.node.as_str(), "conv")),
            _ => None,
        })
        .collect();
    assert_eq!(kinds, [("c1", "gemm"), ("c2", "gemm"), ("c3", "conv"), ("c4", "gemm"), ("c5", "gemm")], "{plan}");
    let gemm = |node: &str| {
        plan.steps
            .iter()
            .find_map(|s| match &s.kind {
                StepKind::Gemm(m) if s.node == node => Some(m.clone()),
                _ => None,
            })
            .unwrap()
    };
    let c2 = gemm("c2");
    assert_eq!((c2.m, c2.n, c2.k, c2.trans_b, c2.beta), (70, 24, 24, true, 1.0));
    assert_eq!(plan.buffers[c2.c.unwrap()].name, "r.nhwc", "the residual is read NHWC");
    assert!(format!("{:?}", gemm("c1").epilogue).starts_with("ReluBias"));

    if !have_gpu("pointwise_convs_run_as_gemms_and_match_the_cpu_reference") {
        return;
    }
    let inputs = kiln::random::graph_inputs(&g, &mut HashMap::new(), 3).unwrap();
    let want = kiln::run_cpu(&g, &inputs).unwrap();
    let got = kiln::gpu::run_gpu(&g, &inputs, &fp32()).unwrap();
    let m = kiln::compare::metrics("pointwise", &want[0], &got[0]).unwrap();
    eprintln!("pointwise convs fp16: cosine {:.7}, rel L2 {:.2e}", m.cosine, m.rel_l2);
    assert!(m.cosine > 0.9999 && m.rel_l2 < 5e-3, "{m:?}");
}

/// Rows `[start, end)` of a tensor along dim 0, padded with zeros to `rows` rows.
fn rows_padded(t: &Tensor, start: usize, end: usize, rows: usize) -> Tensor {
    let per: usize = t.shape()[1..].iter().product();
    let mut shape = t.shape().to_vec();
    shape[0] = rows;
    let mut v = t.to_f64_vec()[start * per..end * per].to_vec();
    v.resize(rows * per, 0.0);
    Tensor::from_vec(shape, v).unwrap().cast(t.dtype())
}

/// Top-1 accuracy of `[n, classes]` logits.
fn top1(logits: &[f64], classes: usize, labels: &[i64]) -> f64 {
    let hits = labels
        .iter()
        .enumerate()
        .filter(|&(i, &y)| {
            let row = &logits[i * classes..(i + 1) * classes];
            (0..classes).max_by(|&a, &b| row[a].total_cmp(&row[b])) == Some(y as usize)
        })
        .count();
    hits as f64 / labels.len() as f64
}

/// Logits of `x` from an engine of fixed batch `batch`, run over it in padded batches.
fn engine_logits(ctx: &mut ExecutionContext, x: &Tensor, batch: usize) -> Vec<f64> {
    let n = x.shape()[0];
    let mut out = vec![];
    for start in (0..n).step_by(batch) {
        let end = (start + batch).min(n);
        let y = ctx.run(&[rows_padded(x, start, end, batch)]).unwrap().remove(0);
        let classes = y.shape()[1];
        out.extend_from_slice(&y.to_f64_vec()[..(end - start) * classes]);
    }
    out
}

/// INT8 engines of the two INT8 fixtures (entropy calibration on their `.calib.npy` through
/// the facade's build, as `kiln build --int8 --calib` does, running the FP32 model on the GPU
/// where there is one) on the GPU keep held-out top-1
/// within 0.5 points of FP32 on the CPU reference. The transformer's seven INT8 layers
/// (projections, FFN, classifier; attention's two products stay float) become five integer
/// products (Q, K and V packed into one, `attention-packed-int8`), and they and the CNN's
/// classifier run the INT8 implicit GEMM with their epilogues (`k` is a multiple of 16), as
/// does the CNN's first convolution (over 1 channel: the narrow loader); its second (over 8)
/// keeps the accumulator path. Where a build has cuBLASLt INT8 GEMMs,
/// tuned tactics give the same bits: integer sums are exact. The builds and plans are checked
/// everywhere, the accuracy where there is a GPU.
#[test]
fn int8_engines_keep_their_accuracy_on_the_gpu() {
    use kiln::cuda::plan::StepKind;
    use kiln::ir::DType;
    let gpu = have_gpu("int8_engines_keep_their_accuracy_on_the_gpu");
    for (name, batch, int8_products) in [("digits_cnn", 50, 2), ("count_transformer", 64, 5)] {
        let onnx = fixture(&format!("{name}.onnx"));
        let test_x = kiln::npy::read(&fixture(&format!("{name}.test_x.npy"))).unwrap();
        let test_y = kiln::npy::read(&fixture(&format!("{name}.test_y.npy"))).unwrap();
        let labels = test_y.as_slice::<i64>().unwrap().to_vec();
        // FP32 on the CPU reference, the whole held-out set at once.
        let mut m = kiln::load(&onnx).unwrap();
        kiln::optimize_with(&mut m.graph, &kiln::OptimizeOptions { fuse: false, ..Default::default() }).unwrap();
        let fp32_logits = kiln::run_cpu(&m.graph, std::slice::from_ref(&test_x)).unwrap().remove(0);
        let classes = fp32_logits.shape()[1];
        let fp32_acc = top1(&fp32_logits.to_f64_vec(), classes, &labels);
        // INT8 at a fixed batch; the calibration rows split into batches of it.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("int8-calib-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(fixture(&format!("{name}.calib.npy")), dir.join("calib.npy")).unwrap();
        let g = kiln::load(&onnx).unwrap().graph;
        let input = g.node(g.inputs[0]).outputs[0].clone();
        let mut dims: Vec<usize> = input.ty.shape.unwrap().iter().map(|d| d.known().unwrap_or(batch)).collect();
        dims[0] = batch;
        let opts = kiln::BuildOptions {
            shapes: HashMap::from([(input.name.clone(), dims)]),
            int8: Some(kiln::Int8Options {
                calib_dir: Some(dir),
                calib_cache: None,
                algo: kiln::quant::CalibAlgo::Entropy,
                calib_device: kiln::CalibDevice::Auto,
            }),
            ..Default::default()
        };
        let built = kiln::build(g, &opts).unwrap();
        // Calibration ran the FP32 model on the GPU where there is one.
        let on = built.calibrated_on.clone().unwrap_or_default();
        assert_eq!(on.starts_with("the GPU"), gpu, "{name}: calibrated on {on}");
        let plan = kiln::cuda::plan::plan(&built.graph).unwrap();
        let lt_int8 = plan
            .steps
            .iter()
            .filter(|s| matches!(&s.kind, StepKind::Gemm(m) if m.dtype == DType::I8 && m.out_dtype == DType::I32))
            .count();
        let igemm = plan
            .steps
            .iter()
            .filter(|s| matches!(&s.kind, StepKind::Kernel(k) if k.kernel.starts_with("igemm")))
            .count();
        assert_eq!(lt_int8 + igemm, int8_products, "{name}: integer products on tensor cores in\n{plan}");
        // The same INT8 graph on the CPU reference.
        let mut cpu_logits = vec![];
        for start in (0..labels.len()).step_by(batch) {
            let end = (start + batch).min(labels.len());
            let y = kiln::run_cpu(&built.graph, &[rows_padded(&test_x, start, end, batch)]).unwrap().remove(0);
            cpu_logits.extend_from_slice(&y.to_f64_vec()[..(end - start) * classes]);
        }
        let cpu_int8_acc = top1(&cpu_logits, classes, &labels);
        if !gpu {
            eprintln!(
                "{name}: FP32 {:.2}%, INT8 {:.2}% on the CPU; {igemm} implicit GEMMs and {lt_int8} cuBLASLt INT8 GEMMs planned",
                fp32_acc * 100.0,
                cpu_int8_acc * 100.0
            );
            continue;
        }
        let engine = load_engine(&built.graph, &fp32()).unwrap();
        let mut ctx = ExecutionContext::new(engine).unwrap();
        let gpu_logits = engine_logits(&mut ctx, &test_x, batch);
        let int8_acc = top1(&gpu_logits, classes, &labels);
        eprintln!(
            "{name}: FP32 (CPU) {:.2}%, INT8 on the GPU {:.2}% (INT8 on the CPU {:.2}%) on {} held-out examples; \
             {igemm} implicit GEMMs, {lt_int8} cuBLASLt INT8 GEMMs",
            fp32_acc * 100.0,
            int8_acc * 100.0,
            cpu_int8_acc * 100.0,
            labels.len()
        );
        assert!(fp32_acc > 0.95, "{name}: the FP32 model is trained: {fp32_acc}");
        assert!((fp32_acc - int8_acc).abs() <= 0.005, "{name}: FP32 {fp32_acc} vs INT8 on the GPU {int8_acc}");
        assert!((cpu_int8_acc - int8_acc).abs() <= 0.005, "{name}: INT8 on the CPU {cpu_int8_acc}, GPU {int8_acc}");
        if lt_int8 > 0 {
            // Tactics timed by the first context and handed to the second give the same bits.
            let mut tuned = fp32();
            tuned.exec.tune_gemms = true;
            let engine = load_engine(&built.graph, &tuned).unwrap();
            let first = rows_padded(&test_x, 0, batch.min(labels.len()), batch);
            let want = ctx.run(std::slice::from_ref(&first)).unwrap();
            for i in 0..2 {
                let mut c = ExecutionContext::new(engine.clone()).unwrap();
                let got = c.run(std::slice::from_ref(&first)).unwrap();
                assert!(got[0] == want[0], "{name}: tuned context {i} differs from the heuristic's");
            }
        }
    }
}
