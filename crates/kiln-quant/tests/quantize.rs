//! The QDQ graph: what gets quantized, what stays in float and why, and that it still computes
//! the model (to INT8 accuracy) on the CPU reference.

use kiln_ir::passes::{InferTypes, PassContext, PassManager};
use kiln_ir::{Graph, Tensor};
use kiln_quant::{calibrate, quantize, CalibAlgo, CalibOptions, Precision};
use std::collections::HashMap;
use std::path::Path;

fn tiny_cnn() -> Graph {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/models/tiny_cnn.onnx");
    let mut g = kiln_onnx::load_model(&p).unwrap().graph;
    PassManager::new(vec![Box::new(InferTypes)]).run(&mut g, &PassContext::default()).unwrap();
    g
}

fn cpu(g: &Graph, ins: &[Tensor]) -> Result<Vec<Tensor>, String> {
    kiln_cpu::run_graph(g, ins).map_err(|e| e.to_string())
}

fn batch(seed: u64) -> Vec<Tensor> {
    let mut s = seed;
    let v: Vec<f32> = (0..3 * 16 * 16)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    vec![Tensor::from_vec(vec![1, 3, 16, 16], v).unwrap()]
}

fn cosine(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_f64_vec(), b.to_f64_vec());
    let dot: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn every_layer_runs_in_int8_and_the_output_stays_close() {
    let g = tiny_cnn();
    let batches: Vec<_> = (0..8).map(batch).collect();
    for algo in [CalibAlgo::Entropy, CalibAlgo::MinMax, CalibAlgo::Percentile(99.99), CalibAlgo::Mse] {
        let cache = calibrate(&g, &batches, CalibOptions { algo, bins: 2048 }, &cpu).unwrap();
        // The two convolutions and the classifier read x, r1 (twice over, shared) and flat.
        assert_eq!(cache.scales.keys().cloned().collect::<Vec<_>>(), ["flat", "r1", "x"], "{algo}");
        // The first convolution, over the 3-channel image, runs in INT8 too.
        let (q, report) = quantize(&g, &cache, &HashMap::new()).unwrap();
        assert_eq!(report.len(), 3);
        assert!(report.iter().all(|l| l.precision == Precision::Int8), "{report:?}");
        assert_eq!(q.op_counts().get("QuantizeLinear"), Some(&3));
        assert_eq!(q.op_counts().get("DequantizeLinear"), Some(&6));
        q.verify().unwrap();
        let test = batch(99);
        let want = cpu(&g, &test).unwrap();
        let got = cpu(&q, &test).unwrap();
        let c = cosine(&want[0], &got[0]);
        assert!(c > 0.999, "{algo}: cosine {c}");
    }
}

#[test]
fn overrides_and_missing_scales_keep_layers_in_float() {
    let g = tiny_cnn();
    let mut cache = calibrate(&g, &[batch(1)], CalibOptions::default(), &cpu).unwrap();
    cache.scales.remove("flat");
    let mut overrides: HashMap<String, Precision> = [("conv2".to_string(), Precision::Fp16)].into_iter().collect();
    let (q, report) = quantize(&g, &cache, &overrides).unwrap();
    let by_node: HashMap<&str, (Precision, Option<&str>)> =
        report.iter().map(|l| (l.node.as_str(), (l.precision, l.reason.as_deref()))).collect();
    // The first convolution reads the 3-channel image, and is quantized as any other.
    assert_eq!(by_node["conv1"], (Precision::Int8, None));
    assert_eq!(by_node["conv2"], (Precision::Fp16, Some("override")));
    assert_eq!(by_node["fc"], (Precision::Fp32, Some("no calibration scale for 'flat'")));
    assert_eq!(q.op_counts().get("QuantizeLinear"), Some(&1));
    overrides.extend([("conv1".to_string(), Precision::Fp32)]);
    let (q, report) = quantize(&g, &cache, &overrides).unwrap();
    assert_eq!(
        (report[0].node.as_str(), report[0].precision, report[0].reason.as_deref()),
        ("conv1", Precision::Fp32, Some("override"))
    );
    assert_eq!(q.op_counts().get("QuantizeLinear"), None);
}

#[test]
fn calibration_without_data_is_an_error() {
    let e = calibrate(&tiny_cnn(), &[], CalibOptions::default(), &cpu).unwrap_err();
    assert!(e.to_string().contains("at least one batch"), "{e}");
}

#[test]
fn attention_products_stay_float_unless_asked() {
    // The count transformer: Q, K, V, output, FFN and classifier products read weights;
    // MatMul_15 (QK^T) and MatMul_18 (PV) multiply two activations.
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/models/count_transformer.onnx");
    let mut g = kiln_onnx::load_model(&p).unwrap().graph;
    PassManager::new(vec![Box::new(InferTypes)]).run(&mut g, &PassContext::default()).unwrap();
    // Token ids 0..9 (the model counts them), a batch of 4 sequences of 16.
    let ids = Tensor::from_vec(vec![4, 16], (0..64).map(|i| (i * 7 % 10) as i64).collect::<Vec<i64>>()).unwrap();
    let inputs = vec![ids];
    let cache = calibrate(&g, &[inputs], CalibOptions::default(), &cpu).unwrap();
    let (_, report) = quantize(&g, &cache, &HashMap::new()).unwrap();
    let float: Vec<&str> = report.iter().filter(|l| l.precision != Precision::Int8).map(|l| l.node.as_str()).collect();
    assert_eq!(float, ["MatMul_15", "MatMul_18"], "{report:?}");
    assert!(report.iter().filter(|l| l.precision != Precision::Int8).all(|l| l
        .reason
        .as_deref()
        .unwrap()
        .contains("two activations")));
    assert_eq!(report.iter().filter(|l| l.precision == Precision::Int8).count(), 7);
    // Asked for, they are quantized too.
    let overrides: HashMap<String, Precision> =
        ["MatMul_15", "MatMul_18"].iter().map(|n| (n.to_string(), Precision::Int8)).collect();
    let (_, report) = quantize(&g, &cache, &overrides).unwrap();
    assert!(report.iter().all(|l| l.precision == Precision::Int8), "{report:?}");
}

/// Two ResNet-style blocks over `[1, 8, 6, 6]`: `r1 = Relu(b(a(x)) + d(x))` with a
/// downsampling-like side convolution `d`, then `r2 = Relu(f(e(r1)) + r1)`, read by `g`.
fn residual_blocks() -> Graph {
    use kiln_ir::ops::elementwise::{BinaryOp, UnaryOp};
    use kiln_ir::ops::linalg::ConvAttrs;
    use kiln_ir::ops::pool::AutoPad;
    use kiln_ir::ops::{ElementwiseOp, LinalgOp, Op};
    use kiln_ir::{DType, TypeInfo, Value, ValueInfo};
    let mut g = Graph::new("residual");
    let ty = TypeInfo::known(DType::F32, &[1, 8, 6, 6]);
    let x = g.add_input("x", ty.clone());
    let mut seed = 7u64;
    let mut conv = |g: &mut Graph, name: &str, input: Value, relu: bool| -> Value {
        let w: Vec<f32> = (0..64)
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.7
            })
            .collect();
        let w = g.add_const(format!("{name}.w"), Tensor::from_vec(vec![8, 8, 1, 1], w).unwrap());
        let b = g.add_const(format!("{name}.b"), Tensor::from_vec(vec![8], vec![0.05f32; 8]).unwrap());
        let attrs = ConvAttrs {
            kernel_shape: vec![1, 1],
            strides: vec![],
            dilations: vec![],
            pads: vec![0; 4],
            auto_pad: AutoPad::NotSet,
            group: 1,
        };
        let c = g.add_node(
            name,
            Op::Linalg(LinalgOp::Conv(attrs)),
            &[Some(input), Some(w), Some(b)],
            vec![ValueInfo::tensor(name, ty.clone())],
        );
        let c = Value { node: c, slot: 0 };
        if !relu {
            return c;
        }
        let r = format!("{name}.relu");
        let n = g.add_node(
            r.clone(),
            Op::Elementwise(ElementwiseOp::Unary(UnaryOp::Relu)),
            &[Some(c)],
            vec![ValueInfo::tensor(r, ty.clone())],
        );
        Value { node: n, slot: 0 }
    };
    let sum = |g: &mut Graph, name: &str, a: Value, b: Value| -> Value {
        let s = g.add_node(
            format!("{name}.sum"),
            Op::Elementwise(ElementwiseOp::Binary(BinaryOp::Add)),
            &[Some(a), Some(b)],
            vec![ValueInfo::tensor(format!("{name}.sum"), ty.clone())],
        );
        let r = g.add_node(
            name,
            Op::Elementwise(ElementwiseOp::Unary(UnaryOp::Relu)),
            &[Some(Value { node: s, slot: 0 })],
            vec![ValueInfo::tensor(name, ty.clone())],
        );
        Value { node: r, slot: 0 }
    };
    let a = conv(&mut g, "a", x, true);
    let d = conv(&mut g, "d", x, false);
    let b = conv(&mut g, "b", a, false);
    let r1 = sum(&mut g, "r1", b, d);
    let e = conv(&mut g, "e", r1, true);
    let f = conv(&mut g, "f", e, false);
    let r2 = sum(&mut g, "r2", f, r1);
    let out = conv(&mut g, "g", r2, false);
    g.add_output("y", out);
    PassManager::new(vec![Box::new(InferTypes)]).run(&mut g, &PassContext::default()).unwrap();
    g
}

#[test]
fn a_residual_path_is_quantized_where_the_sum_is() {
    let g = residual_blocks();
    let batches: Vec<Vec<Tensor>> = (0..4)
        .map(|s| {
            let v: Vec<f32> = batch(s)[0].to_f64_vec().iter().take(8 * 36).map(|&x| x as f32).collect();
            vec![Tensor::from_vec(vec![1, 8, 6, 6], v).unwrap()]
        })
        .collect();
    let cache = calibrate(&g, &batches, CalibOptions { algo: CalibAlgo::MinMax, bins: 2048 }, &cpu).unwrap();
    // The layers' inputs, and the side input of the first sum: `d`, computed before `b`,
    // whose epilogue takes the sum. The second sum's own inputs are `r1`, read by `e` anyway,
    // and `f`, which takes it.
    assert_eq!(cache.scales.keys().cloned().collect::<Vec<_>>(), ["a.relu", "d", "e.relu", "r1", "r2", "x"]);
    let (q, report) = quantize(&g, &cache, &HashMap::new()).unwrap();
    assert!(report.iter().all(|l| l.precision == Precision::Int8), "{report:?}");
    q.verify().unwrap();
    let reads = |sum: &str| -> Vec<String> {
        let id = q.node_ids().find(|&n| q.node(n).name == sum).unwrap();
        q.inputs_of(id).into_iter().flatten().map(|v| q.node(v.node).name.clone()).collect()
    };
    // Both sums read their quantized inputs through the same QDQ pairs as the layers.
    assert_eq!(reads("r1.sum"), ["b", "d.dequantize"]);
    assert_eq!(reads("r2.sum"), ["f", "r1.dequantize"]);
    assert_eq!(q.op_counts().get("QuantizeLinear"), Some(&6));
    let test =
        vec![Tensor::from_vec(vec![1, 8, 6, 6], batch(99)[0].to_f64_vec()[..288].iter().map(|&x| x as f32).collect())
            .unwrap()];
    let want = cpu(&g, &test).unwrap();
    let got = cpu(&q, &test).unwrap();
    let c = cosine(&want[0], &got[0]);
    assert!(c > 0.995, "cosine {c}");
    // A sum whose result is read in float (as a transformer's LayerNorm reads it, or a ResNet's
    // average pool its last block's) keeps float inputs, but for the output of a quantized
    // residual sum before it: without `g`, r2 has no scale and the second sum reads `f` as it
    // is, and r1 through the QDQ pair `e` reads it by, so that r1 is stored once, as INT8.
    let mut cache2 = cache.clone();
    cache2.scales.remove("r2");
    let (q2, _) = quantize(&g, &cache2, &[("g".to_string(), Precision::Fp32)].into_iter().collect()).unwrap();
    let id = q2.node_ids().find(|&n| q2.node(n).name == "r2.sum").unwrap();
    let names: Vec<String> = q2.inputs_of(id).into_iter().flatten().map(|v| q2.node(v.node).name.clone()).collect();
    assert_eq!(names, ["f", "r1.dequantize"]);
}
