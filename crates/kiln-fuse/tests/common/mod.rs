//! Test support: a small text form for graphs, a compact rendering of fused graphs, and the one
//! `check` helper that fuses, compares the rendering and compares numbers on the CPU reference.
//!
//! ```text
//! input x f32[2,3]
//! w = const f32[3,4] rand      # seeded uniform values (`pos`: positive ones)
//! c = const f32[] 2.0          # every element 2.0
//! s = const i64[4] 2,8,2,16    # explicit values
//! y = MatMul(x, w)
//! z = Transpose{1,0}(y)        # attributes in braces; `_` is an absent input
//! output z
//! ```
#![allow(dead_code)]

use kiln_fuse::{fuse, FuseOptions, FuseReport};
use kiln_ir::ops::attention::{AttentionAttrs, QkOutputMode};
use kiln_ir::ops::elementwise::{BinaryOp, UnaryOp};
use kiln_ir::ops::linalg::ConvAttrs;
use kiln_ir::ops::pool::AutoPad;
use kiln_ir::ops::reduce::Reducer;
use kiln_ir::ops::*;
use kiln_ir::passes::{InferTypes, PassContext, PassManager};
use kiln_ir::{DType, Graph, Op, Tensor, TypeInfo, Value};
use std::collections::HashMap;

/// A seeded generator (SplitMix64) for weights and inputs.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    pub fn tensor(&mut self, shape: &[usize], scale: f32) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_vec(shape.to_vec(), (0..n).map(|_| self.uniform() * scale).collect::<Vec<f32>>()).unwrap()
    }
}

fn dtype(s: &str) -> DType {
    match s {
        "f32" => DType::F32,
        "f16" => DType::F16,
        "f64" => DType::F64,
        "i64" => DType::I64,
        "i32" => DType::I32,
        "i8" => DType::I8,
        "u8" => DType::U8,
        "bool" => DType::Bool,
        other => panic!("test graph: unknown type {other}"),
    }
}

/// `f32[2,3]` as a type and shape.
fn ty_shape(s: &str) -> (DType, Vec<usize>) {
    let (d, rest) = s.split_once('[').expect("type[shape]");
    let dims = rest.trim_end_matches(']');
    let shape = if dims.is_empty() { vec![] } else { dims.split(',').map(|x| x.trim().parse().unwrap()).collect() };
    (dtype(d), shape)
}

fn floats(a: &str) -> Vec<f32> {
    a.split(',').filter(|x| !x.is_empty()).map(|x| x.trim().parse().unwrap()).collect()
}

fn ints(a: &str) -> Vec<i64> {
    a.split(',').filter(|x| !x.is_empty()).map(|x| x.trim().parse().unwrap()).collect()
}

/// The op for a name and its brace attributes.
pub fn op(name: &str, attrs: &str) -> Op {
    let reduce = |reducer| {
        Op::Reduce(ReduceOp::Reduce { reducer, axes: Some(ints(attrs)), keepdims: true, noop_with_empty_axes: false })
    };
    match name {
        "Transpose" => Op::Layout(LayoutOp::Transpose { perm: Some(ints(attrs)) }),
        // Without braces the axes are the second input, as from opset 13.
        "Unsqueeze" => Op::Layout(LayoutOp::Unsqueeze { axes: (!attrs.is_empty()).then(|| ints(attrs)) }),
        "Squeeze" => Op::Layout(LayoutOp::Squeeze { axes: (!attrs.is_empty()).then(|| ints(attrs)) }),
        "Flatten" => Op::Layout(LayoutOp::Flatten { axis: ints(attrs)[0] }),
        "ReduceMean" => reduce(Reducer::Mean),
        "ReduceMax" => reduce(Reducer::Max),
        "ReduceSum" => reduce(Reducer::Sum),
        "Softmax" => Op::Norm(NormOp::Softmax { axis: ints(attrs)[0], coerce_2d: false }),
        "LayerNormalization" => Op::Norm(NormOp::LayerNormalization { axis: -1, epsilon: 1e-5, stash_type: 1 }),
        "BatchNormalization" => {
            Op::Norm(NormOp::BatchNormalization { epsilon: 1e-5, momentum: 0.9, training_mode: false })
        }
        "Conv" => {
            let pad = if attrs.is_empty() { 0 } else { attrs.parse().unwrap() };
            Op::Linalg(LinalgOp::Conv(ConvAttrs {
                kernel_shape: vec![],
                strides: vec![],
                dilations: vec![],
                pads: vec![pad; 4],
                auto_pad: AutoPad::NotSet,
                group: 1,
            }))
        }
        "Gemm" => Op::Linalg(LinalgOp::Gemm { alpha: 1.0, beta: 1.0, trans_a: false, trans_b: attrs == "transB" }),
        "Cast" => Op::Elementwise(ElementwiseOp::Cast { to: dtype(attrs), saturate: true }),
        "LeakyRelu" => Op::Elementwise(ElementwiseOp::Unary(UnaryOp::LeakyRelu { alpha: floats(attrs)[0] })),
        "HardSigmoid" => Op::Elementwise(ElementwiseOp::Unary(UnaryOp::HardSigmoid { alpha: 1.0 / 6.0, beta: 0.5 })),
        "Clip" => {
            let b = floats(attrs);
            Op::Elementwise(ElementwiseOp::Clip { min: Some(b[0]), max: Some(b[1]) })
        }
        "Attention" => Op::Attention(AttentionOp::Attention(AttentionAttrs {
            q_num_heads: None,
            kv_num_heads: None,
            is_causal: false,
            scale: None,
            softcap: 0.0,
            qk_matmul_output_mode: QkOutputMode::Scores,
            softmax_precision: None,
        })),
        "PRelu" => Op::Elementwise(ElementwiseOp::Binary(BinaryOp::PRelu)),
        // `MatMulEpilogue{add}(a, w, r)`: a fused MatMul with the epilogue `in0 + in1` (the
        // residual r), as a first fusion leaves it for a second.
        "MatMulEpilogue" => {
            assert_eq!(attrs, "add", "the one epilogue the parser knows");
            let expr = Expr {
                nodes: vec![
                    ExprNode::Input(0),
                    ExprNode::Input(1),
                    ExprNode::Op { op: ElementwiseOp::Binary(BinaryOp::Add), args: vec![0, 1] },
                ],
            };
            Op::Fused(FusedOp::Epilogue { base: LinalgOp::MatMul, base_inputs: 2, expr })
        }
        // `MaxPool{3}`: a 3x3 window, stride 2, padding 1 (ResNet's stem pool).
        "MaxPool" => {
            let k = ints(attrs)[0] as usize;
            Op::Pool(kiln_ir::ops::pool::PoolOp::MaxPool {
                window: kiln_ir::ops::pool::PoolWindow {
                    kernel_shape: vec![k, k],
                    strides: vec![2, 2],
                    pads: vec![k / 2; 4],
                    auto_pad: AutoPad::NotSet,
                    dilations: vec![1, 1],
                    ceil_mode: false,
                },
                column_major: false,
            })
        }
        "QuantizeLinear" => Op::Quant(QuantOp::QuantizeLinear {
            axis: if attrs.is_empty() { 1 } else { ints(attrs)[0] },
            block_size: 0,
            output_dtype: None,
            saturate: true,
        }),
        "DequantizeLinear" => Op::Quant(QuantOp::DequantizeLinear {
            axis: if attrs.is_empty() { 1 } else { ints(attrs)[0] },
            block_size: 0,
            output_dtype: None,
        }),
        other => kiln_fuse::lang::plain_op(other).unwrap_or_else(|| panic!("test graph: unknown op {other}")),
    }
}

/// Parses the text form; inputs get types, node outputs are inferred.
pub fn parse(src: &str) -> Graph {
    let mut g = Graph::new("test");
    let mut vals: HashMap<String, Value> = HashMap::new();
    let mut rng = Rng::new(42);
    for line in src.lines() {
        let line = line.split('#').next().unwrap().trim();
        if line.is_empty() {
            continue;
        }
        // `w = const f32[3] rand` is `const w f32[3] rand`.
        let line = match line.split_once('=') {
            Some((lhs, rhs)) if rhs.trim_start().starts_with("const ") => {
                format!("const {} {}", lhs.trim(), rhs.trim_start().trim_start_matches("const "))
            }
            _ => line.to_string(),
        };
        let line = line.as_str();
        let words: Vec<&str> = line.split_whitespace().collect();
        match words[0] {
            "input" => {
                let (d, s) = ty_shape(words[2]);
                vals.insert(words[1].into(), g.add_input(words[1], TypeInfo::known(d, &s)));
            }
            "const" => {
                let (d, s) = ty_shape(words[2]);
                let n: usize = s.iter().product();
                let t = match words.get(3).copied() {
                    // Integer weights: uniform in [-64, 64].
                    Some("rand") if !d.is_float() => {
                        let v: Vec<f32> = rng.tensor(&s, 64.0).to_f64_vec().iter().map(|x| x.round() as f32).collect();
                        Tensor::from_vec(s.clone(), v).unwrap().cast(d)
                    }
                    Some("rand") => rng.tensor(&s, 0.5).cast(d),
                    Some("pos") => {
                        let t = rng.tensor(&s, 0.5);
                        Tensor::from_vec(s.clone(), t.to_f64_vec().iter().map(|x| x.abs() as f32 + 0.5).collect())
                            .unwrap()
                            .cast(d)
                    }
                    Some(v) if d == DType::I64 => Tensor::from_vec(s.clone(), ints(v)).unwrap(),
                    Some(v) => {
                        let f = floats(v);
                        let all: Vec<f32> = if f.len() == 1 { vec![f[0]; n] } else { f };
                        Tensor::from_vec(s.clone(), all).unwrap().cast(d)
                    }
                    None => panic!("const needs values"),
                };
                vals.insert(words[1].into(), g.add_const(words[1], t));
            }
            "output" => {
                for w in &words[1..] {
                    g.add_output(*w, vals[*w]);
                }
            }
            _ => {
                let (lhs, rhs) = line.split_once('=').expect("name = Op(args)");
                let lhs = lhs.trim();
                let rhs = rhs.trim();
                let (head, args) = rhs.split_once('(').expect("Op(args)");
                let args = args.trim_end_matches(')');
                let (name, attrs) = match head.split_once('{') {
                    Some((n, a)) => (n, a.trim_end_matches('}')),
                    None => (head, ""),
                };
                let ins: Vec<Option<Value>> = args
                    .split(',')
                    .map(|a| a.trim())
                    .filter(|a| !a.is_empty())
                    .map(|a| {
                        if a == "_" {
                            None
                        } else {
                            Some(*vals.get(a).unwrap_or_else(|| panic!("unknown value {a}")))
                        }
                    })
                    .collect();
                let id = g.add_node(lhs, op(name, attrs), &ins, vec![kiln_ir::ValueInfo::named(lhs)]);
                vals.insert(lhs.into(), Value { node: id, slot: 0 });
            }
        }
    }
    PassManager::new(vec![Box::new(InferTypes)]).always_verify(true).run(&mut g, &PassContext::default()).unwrap();
    g
}

/// A compact, stable rendering of a graph's compute nodes: `%k = Op[detail](args)`, where
/// args are graph inputs by name, constants as `const[shape]`, and earlier nodes as `%k`.
pub fn render(g: &Graph) -> String {
    let order = g.topo_order().unwrap();
    let mut num: HashMap<kiln_ir::NodeId, usize> = HashMap::new();
    let mut lines = vec![];
    for id in order {
        let n = g.node(id);
        if matches!(n.op, Op::Input | Op::Const(_)) {
            continue;
        }
        let args: Vec<String> = g
            .inputs_of(id)
            .into_iter()
            .map(|v| match v {
                None => "_".into(),
                Some(v) => {
                    let p = g.node(v.node);
                    match &p.op {
                        Op::Input => p.name.clone(),
                        Op::Const(t) => format!("const{:?}", t.shape()),
                        _ if v.slot == 0 => format!("%{}", num[&v.node]),
                        _ => format!("%{}.{}", num[&v.node], v.slot),
                    }
                }
            })
            .collect();
        let head = match &n.op {
            Op::Fused(FusedOp::Elementwise(e)) => format!("FusedElementwise[{e}]"),
            Op::Fused(FusedOp::Epilogue { expr, .. }) => format!("{}[{expr}]", n.op.name()),
            other => other.name().to_string(),
        };
        num.insert(id, num.len());
        lines.push(format!("%{} = {head}({})", num[&id], args.join(", ")));
    }
    let outs: Vec<String> = g
        .outputs
        .iter()
        .map(|o| format!("%{}", num.get(&o.value.node).map_or("?".into(), |n| n.to_string())))
        .collect();
    lines.push(format!("output {}", outs.join(", ")));
    lines.join("\n")
}

/// Random inputs for a graph's inputs, seeded.
pub fn inputs_for(g: &Graph, seed: u64) -> Vec<Tensor> {
    let mut rng = Rng::new(seed);
    g.inputs
        .iter()
        .map(|&i| {
            let ty = &g.node(i).outputs[0].ty;
            let s = ty.concrete_shape().expect("test inputs have static shapes");
            rng.tensor(&s, 1.0).cast(ty.dtype.unwrap())
        })
        .collect()
}

/// Largest relative error between two sets of outputs, against the reference's scale.
pub fn rel_error(reference: &[Tensor], got: &[Tensor]) -> f64 {
    let mut worst: f64 = 0.0;
    for (r, g) in reference.iter().zip(got) {
        assert_eq!(r.shape(), g.shape(), "output shapes differ");
        let (r, g) = (r.to_f64_vec(), g.to_f64_vec());
        let scale = r.iter().map(|x| x.abs()).fold(1e-6, f64::max);
        for (a, b) in r.iter().zip(&g) {
            worst = worst.max((a - b).abs() / scale);
        }
    }
    worst
}

/// As [`check`], and asserts that each of `rules` changed the e-graph.
pub fn check_fires(rules: &[&str], src: &str, expected: &str) -> FuseReport {
    let report = check(src, expected);
    for r in rules {
        assert!(report.rules_fired.iter().any(|(n, k)| n == r && *k > 0), "rule {r} did not fire:\n{report}");
    }
    report
}

/// Fuses `src`'s graph and checks the result renders as `expected` and computes the same
/// outputs as the original on the CPU reference (relative error 1e-4).
pub fn check(src: &str, expected: &str) -> FuseReport {
    let g = parse(src);
    let (fused, report) = fuse(&g, &FuseOptions::default()).unwrap();
    let got = render(&fused);
    let want: Vec<&str> = expected.lines().map(|l| l.trim()).filter(|l| !l.is_empty()).collect();
    assert_eq!(got, want.join("\n"), "\nfused graph differs; report:\n{report}");
    let ins = inputs_for(&g, 7);
    let a = kiln_cpu::run_graph(&g, &ins).unwrap();
    let b = kiln_cpu::run_graph(&fused, &ins).unwrap();
    let err = rel_error(&a, &b);
    assert!(err < 1e-4, "fused graph computes different values: relative error {err}");
    report
}
