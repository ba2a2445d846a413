//! INT8 on real tasks with real data: a CNN trained on scikit-learn's `digits` and a small
//! transformer trained on a generated counting task (both made by
//! tests/models/make_quant_models.py). Entropy calibration on training examples must keep
//! held-out top-1 accuracy within 0.5 percentage points of FP32 on the CPU reference.

use kiln::ir::Tensor;
use kiln::quant::{calibrate, quantize, CalibAlgo, CalibOptions};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/models").join(name)
}

/// Rows `[start, end)` of a tensor along dim 0.
fn rows(t: &Tensor, start: usize, end: usize) -> Tensor {
    let per: usize = t.shape()[1..].iter().product();
    let mut shape = t.shape().to_vec();
    shape[0] = end - start;
    match t.dtype() {
        kiln::ir::DType::I64 => {
            Tensor::from_vec(shape, t.as_slice::<i64>().unwrap()[start * per..end * per].to_vec()).unwrap()
        }
        _ => Tensor::from_vec(shape, t.as_slice::<f32>().unwrap()[start * per..end * per].to_vec()).unwrap(),
    }
}

fn accuracy(logits: &Tensor, labels: &[i64]) -> f64 {
    let classes = logits.shape()[1];
    let v = logits.to_f64_vec();
    let hits = labels
        .iter()
        .enumerate()
        .filter(|(i, &y)| {
            let row = &v[i * classes..(i + 1) * classes];
            let best = (0..classes).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
            best as i64 == y
        })
        .count();
    hits as f64 / labels.len() as f64
}

/// FP32 and INT8 (entropy calibration) held-out accuracy of a fixture model.
fn fp32_and_int8(name: &str) -> (f64, f64, usize) {
    let mut m = kiln::load(&fixture(&format!("{name}.onnx"))).unwrap();
    kiln::optimize_with(&mut m.graph, &kiln::OptimizeOptions { fuse: false, ..Default::default() }).unwrap();
    let g = m.graph;
    let calib = kiln::npy::read(&fixture(&format!("{name}.calib.npy"))).unwrap();
    let test_x = kiln::npy::read(&fixture(&format!("{name}.test_x.npy"))).unwrap();
    let test_y = kiln::npy::read(&fixture(&format!("{name}.test_y.npy"))).unwrap();
    let labels = test_y.as_slice::<i64>().unwrap().to_vec();
    let n = calib.shape()[0];
    let batches: Vec<Vec<Tensor>> = (0..n).step_by(50).map(|s| vec![rows(&calib, s, (s + 50).min(n))]).collect();
    let run = |g: &kiln::ir::Graph, ins: &[Tensor]| kiln::run_cpu(g, ins).map_err(|e| e.to_string());
    let cache = calibrate(&g, &batches, CalibOptions { algo: CalibAlgo::Entropy, bins: 2048 }, &run).unwrap();
    // Every layer is checked in INT8, the digits CNN's first convolution (over 1 channel) too.
    let (q, report) = quantize(&g, &cache, &HashMap::new()).unwrap();
    let int8_layers = report.iter().filter(|l| l.precision == kiln::quant::Precision::Int8).count();
    let fp32 = accuracy(&kiln::run_cpu(&g, std::slice::from_ref(&test_x)).unwrap()[0], &labels);
    let int8 = accuracy(&kiln::run_cpu(&q, std::slice::from_ref(&test_x)).unwrap()[0], &labels);
    // Fusion folds the QDQ pairs into integer convolutions and products (the qdq rules) with
    // their dequantization, bias and activation in the epilogue; the results do not move.
    let (fused, report) = kiln::fuse::fuse(&q, &Default::default()).unwrap();
    let counts = fused.op_counts();
    let integer = counts.get("ConvIntegerEpilogue").unwrap_or(&0) + counts.get("MatMulIntegerEpilogue").unwrap_or(&0);
    assert_eq!(integer, int8_layers, "every INT8 layer computes on integers after fusion: {report}");
    let fused_acc = accuracy(&kiln::run_cpu(&fused, &[test_x]).unwrap()[0], &labels);
    assert!((fused_acc - int8).abs() <= 0.002, "{name}: INT8 {int8} before fusion, {fused_acc} after");
    println!(
        "{name}: FP32 {:.2}%, INT8 {:.2}% on {} held-out examples, {int8_layers} INT8 layers",
        fp32 * 100.0,
        int8 * 100.0,
        labels.len()
    );
    (fp32, int8, int8_layers)
}

#[test]
fn digits_cnn_keeps_its_accuracy_in_int8() {
    let (fp32, int8, layers) = fp32_and_int8("digits_cnn");
    assert_eq!(layers, 3, "both convolutions (the first over 1 channel) and the classifier run in INT8");
    assert!(fp32 > 0.95, "the FP32 model is trained: {fp32}");
    assert!((fp32 - int8).abs() <= 0.005, "FP32 {fp32} vs INT8 {int8}");
}

#[test]
fn counting_transformer_keeps_its_accuracy_in_int8() {
    let (fp32, int8, layers) = fp32_and_int8("count_transformer");
    // Q, K, V, output, FFN up and down projections and the classifier; the two attention
    // products (of two activations) stay float.
    assert_eq!(layers, 7);
    assert!(fp32 > 0.95, "the FP32 model is trained: {fp32}");
    assert!((fp32 - int8).abs() <= 0.005, "FP32 {fp32} vs INT8 {int8}");
}

/// An INT8 build in FP16 (`kiln build --int8 --fp16`): every cast the FP16 conversion adds
/// around the integer layers is fused into a neighbour, into a quantizing kernel or into an
/// integer epilogue's residual input (`epilogue-input`), so no Cast runs on its own, and the
/// held-out accuracy stays within 0.5 points of FP32.
#[test]
fn counting_transformer_in_int8_fp16_runs_no_cast_alone() {
    let name = "count_transformer";
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("int8-fp16-calib");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixture(&format!("{name}.calib.npy")), dir.join("calib.npy")).unwrap();
    let g = kiln::load(&fixture(&format!("{name}.onnx"))).unwrap().graph;
    let test_x = kiln::npy::read(&fixture(&format!("{name}.test_x.npy"))).unwrap();
    let labels = kiln::npy::read(&fixture(&format!("{name}.test_y.npy"))).unwrap().as_slice::<i64>().unwrap().to_vec();
    let input = g.node(g.inputs[0]).outputs[0].name.clone();
    // Batches of 8: the calibration set (256 rows) and the held-out one (1000) split evenly.
    let batch = 8;
    let opts = kiln::BuildOptions {
        shapes: HashMap::from([(input, vec![batch, test_x.shape()[1]])]),
        int8: Some(kiln::Int8Options {
            calib_dir: Some(dir),
            calib_cache: None,
            algo: CalibAlgo::Entropy,
            calib_device: kiln::CalibDevice::Cpu,
        }),
        precision: kiln::FloatPrecision::Fp16,
        ..Default::default()
    };
    let built = kiln::build(g.clone(), &opts).unwrap();
    let counts = built.graph.op_counts();
    assert_eq!(counts.get("Cast"), None, "{counts:?}");
    let mut m = kiln::load(&fixture(&format!("{name}.onnx"))).unwrap();
    kiln::optimize_with(&mut m.graph, &kiln::OptimizeOptions { fuse: false, ..Default::default() }).unwrap();
    let fp32 = accuracy(&kiln::run_cpu(&m.graph, std::slice::from_ref(&test_x)).unwrap()[0], &labels);
    let parts: Vec<Tensor> = (0..labels.len())
        .step_by(batch)
        .map(|s| kiln::run_cpu(&built.graph, &[rows(&test_x, s, s + batch)]).unwrap().remove(0))
        .collect();
    let classes = parts[0].shape()[1];
    let all: Vec<f32> = parts.iter().flat_map(|t| t.to_f64_vec()).map(|v| v as f32).collect();
    let logits = Tensor::from_vec(vec![labels.len(), classes], all).unwrap();
    let int8_fp16 = accuracy(&logits, &labels);
    assert!((fp32 - int8_fp16).abs() <= 0.005, "FP32 {fp32} vs INT8 with FP16 {int8_fp16}");
}

/// Calibration runs the FP32 model on the GPU where there is one (`CalibDevice::Auto`), else on
/// the CPU reference with the same scales as asking for the CPU, and says where it ran; asked
/// for the GPU where there is none, it fails and says why.
#[test]
fn calibration_says_where_it_ran() {
    use kiln::build::calibrate as calibrate_on;
    use kiln::CalibDevice;
    let mut m = kiln::load(&fixture("digits_cnn.onnx")).unwrap();
    kiln::optimize_with(&mut m.graph, &kiln::OptimizeOptions { fuse: false, ..Default::default() }).unwrap();
    let calib = kiln::npy::read(&fixture("digits_cnn.calib.npy")).unwrap();
    let batches: Vec<Vec<Tensor>> = (0..2).map(|b| vec![rows(&calib, b * 50, b * 50 + 50)]).collect();
    let (on_cpu, where_cpu) = calibrate_on(&m.graph, &batches, CalibAlgo::Entropy, CalibDevice::Cpu).unwrap();
    assert_eq!(where_cpu, "the CPU reference");
    let (auto, where_auto) = calibrate_on(&m.graph, &batches, CalibAlgo::Entropy, CalibDevice::Auto).unwrap();
    let gpu = kiln::cuda::driver::Gpu::new(0).is_ok();
    if where_auto.starts_with("the GPU") {
        assert!(gpu, "{where_auto}");
        // The GPU's FP32 differs from the CPU's in the last bits: the scales agree closely.
        for (name, s) in &on_cpu.scales {
            let g = auto.scales[name];
            assert!((g - s).abs() <= 0.02 * s, "{name}: {g} on the GPU, {s} on the CPU");
        }
    } else {
        assert!(where_auto.starts_with("the CPU reference ("), "{where_auto}");
        assert_eq!(auto.scales, on_cpu.scales);
    }
    match calibrate_on(&m.graph, &batches, CalibAlgo::Entropy, CalibDevice::Cuda) {
        Ok((_, on)) => assert!(gpu && on.starts_with("the GPU"), "{on}"),
        Err(e) => {
            assert!(!gpu, "asked for the GPU, which is there: {e}");
            eprintln!("calibration on the GPU without one: {e}");
        }
    }
}

/// The graph calibration runs (the FP32 model with every calibrated activation an output, the
/// model's input among them) plans for the GPU, as `CalibDevice::Auto` runs it there.
#[test]
fn calibration_graphs_plan_for_the_gpu() {
    for name in ["digits_cnn", "count_transformer"] {
        let mut m = kiln::load(&fixture(&format!("{name}.onnx"))).unwrap();
        let input = m.graph.node(m.graph.inputs[0]).outputs[0].clone();
        let mut dims: Vec<usize> = input.ty.shape.unwrap().iter().map(|d| d.known().unwrap_or(8)).collect();
        dims[0] = 8;
        kiln::specialize(&mut m.graph, &HashMap::from([(input.name.clone(), dims)])).unwrap();
        kiln::optimize_with(&mut m.graph, &kiln::OptimizeOptions { fuse: false, ..Default::default() }).unwrap();
        let mut g = m.graph.clone();
        let values = kiln::quant::calibrated_values(&g);
        assert!(!values.is_empty(), "{name}");
        for (n, v) in &values {
            g.add_output(format!("__calib__{n}"), *v);
        }
        let plan = kiln::cuda::plan::plan(&g).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!plan.steps.is_empty(), "{name}");
    }
}
