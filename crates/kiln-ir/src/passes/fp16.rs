//! FP16 precision: turns a graph that computes in FP32 into one that computes in FP16, as
//! TensorRT's `--fp16` does.
//!
//! The policy:
//!
//! - The graph's signature does not change: a `Cast` to f16 follows each f32 graph input and a
//!   `Cast` back to f32 precedes each f32 graph output.
//! - Every f32 value inside becomes f16: f32 constants (weights, biases, scalars) become f16
//!   constants, `Cast(to=f32)` becomes `Cast(to=f16)`, and so do the f32 scalars and casts of
//!   fused expressions and the f32 output types of `ConstantOfShape`, `EyeLike` and the signal
//!   generators. Values beyond f16's range saturate to ±65504 and are counted in the report;
//!   values that underflow to zero (or to subnormals) are left to do so.
//! - Inputs that ONNX defines as f32 parameters rather than data stay f32 ([`param_slot`]):
//!   Resize's roi and scales, Dropout's ratio, OneHot's depth, MelWeightMatrix's edges.
//! - Some nodes stay f32 as a whole, with casts around them ([`KeepReason`]): the nodes the
//!   caller names (a fused node is kept when it covers a named node), ops that ONNX defines
//!   for f32 only (Range, NonMaxSuppression), quantize and dequantize (their scales set the
//!   type of what they dequantize to), epilogues over an integer accumulator (an int32
//!   accumulator easily exceeds f16's range before it is rescaled), nodes that carry
//!   subgraphs and nodes over sequences or optionals.
//! - Optionally, in a deep convolution network (at least [`EARLY_MIN_DEPTH`] convolutions on
//!   its longest path), the float nodes of its first eighth stay f32 ([`KeepReason::Early`]): those that no
//!   path from a graph input reaches through more than `ceil(depth / 8)` convolutions (Conv,
//!   ConvTranspose and epilogues over them). A rounding error made early is amplified by every
//!   convolution after it, so the first layers dominate the output's error: with
//!   random weights, f16 weights alone give torchvision's ResNet-50 a relative L2 error of
//!   about 1.2e-2, keeping its first 8 of 53 convolutions (stem and the first one and a half
//!   bottlenecks) f32 halves it, while keeping the first convolution alone or the classifier
//!   changes nothing. The kept region is contiguous, so it costs one cast at each of its
//!   edges. It is opt-in ([`ToFp16::early_fp32`], `KILN_FP16_EARLY_FP32=1` for the `kiln`
//!   tool): the kept layers compute in full f32, which costs ResNet-50 more than half its
//!   FP16 speed. Transformers are left alone: their
//!   normalizations keep early errors from growing (BERT-base in f16 is at 1.5e-3 without it).
//! - Integer, boolean, f64 and bf16 values are untouched.
//!
//! The pass runs after fusion, so that BatchNorm folding and constant folding happen in f32
//! first; it is not in the default pipeline, the facade runs it when FP16 is asked for. It
//! sets the types it changes, so that type inference afterwards agrees with it. Casts are
//! shared: one per value and target type.

use super::infer_types::infer_node;
use super::{Pass, PassContext};
use crate::ops::fused::{Expr, ExprNode, FusedOp};
use crate::ops::layout::LayoutOp;
use crate::ops::linalg::LinalgOp;
use crate::ops::signal::SignalOp;
use crate::ops::spatial::{ResizeInputs, SpatialOp};
use crate::ops::ElementwiseOp;
use crate::{DType, Graph, IrError, NodeId, Op, Tensor, TypeInfo, Value, ValueInfo, ValueKind};
use std::collections::{HashMap, HashSet};
use std::fmt;

/// The largest finite f16.
pub const F16_MAX: f64 = 65504.0;

/// The least convolution depth (convolutions on the longest path) at which [`ToFp16`] keeps a
/// network's first layers in f32: shallower networks amplify early rounding errors little.
pub const EARLY_MIN_DEPTH: usize = 16;

/// The share of a deep network's convolution depth, from its inputs, that stays f32 is
/// `1 / EARLY_FRACTION`.
pub const EARLY_FRACTION: usize = 8;

/// Converts a graph to FP16; see the module documentation for the policy.
#[derive(Clone, Debug, Default)]
pub struct ToFp16 {
    /// Nodes (by name, or by a name a fused node covers) that stay in f32.
    pub keep_fp32: HashSet<String>,
    /// Whether the first eighth of a deep convolution network stays f32
    /// ([`KeepReason::Early`]). Off by default: it halves ResNet-50's error against FP32 but
    /// runs those layers on CUDA cores, which on an H200 took ResNet-50 at batch 32 from 1.6
    /// to 3.7 ms (TF32 there is no help: it rounds the weights as f16 does).
    pub early_fp32: bool,
}

/// Why a node that computes on floats stays f32.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeepReason {
    /// The caller asked for it (`--precision NODE=fp32`); the name is the one asked for.
    Override(String),
    /// ONNX defines the op for f32 (and f64) only.
    Fp32Only,
    /// Quantize and dequantize keep their scales, and so their float side, in f32.
    Quantization,
    /// An epilogue over an integer accumulator rescales values beyond f16's range.
    IntegerAccumulator,
    /// The node carries subgraphs, which stay f32.
    Subgraph,
    /// The node reads or makes sequences or optionals.
    Sequence,
    /// The node is in the first eighth of a deep network: no path from a graph input reaches
    /// it through more than `limit` of the `depth` convolutions on the longest path.
    Early {
        /// Matrix layers, at most, on a path from a graph input to the node (itself included).
        at: usize,
        /// The most a kept node may have: `ceil(depth / 8)`.
        limit: usize,
        /// Matrix layers on the network's longest path.
        depth: usize,
    },
}

impl fmt::Display for KeepReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeepReason::Override(n) => write!(f, "asked for (--precision {n}=fp32)"),
            KeepReason::Fp32Only => f.write_str("ONNX defines the op for float32 only"),
            KeepReason::Quantization => f.write_str("quantize/dequantize keep their scales in float32"),
            KeepReason::IntegerAccumulator => {
                f.write_str("its int32 accumulator exceeds the f16 range before rescaling")
            }
            KeepReason::Subgraph => f.write_str("it carries subgraphs, which stay float32"),
            KeepReason::Sequence => f.write_str("it works on sequences or optionals"),
            KeepReason::Early { at, limit, depth } => write!(
                f,
                "early layer ({at} of the first {limit} of {depth} convolutions): later layers amplify its rounding"
            ),
        }
    }
}

/// A node that stays f32.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeptNode {
    /// The node's name.
    pub node: String,
    /// Its op.
    pub op: String,
    /// Why.
    pub reason: KeepReason,
}

/// What [`ToFp16`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fp16Report {
    /// Nodes that compute on floats and now do so in f16 (casts the pass added not counted).
    pub fp16_nodes: usize,
    /// Nodes that compute on floats and stay f32, in topological order.
    pub kept: Vec<KeptNode>,
    /// Casts the pass added.
    pub casts: usize,
    /// Constants (or nodes, for attribute and expression scalars) with values beyond f16's
    /// range that saturated to ±65504, and how many values each.
    pub saturated: Vec<(String, usize)>,
    /// Names in `keep_fp32` that name no node.
    pub unknown_overrides: Vec<String>,
}

impl Fp16Report {
    /// How many values saturated in all.
    pub fn saturated_values(&self) -> usize {
        self.saturated.iter().map(|(_, n)| n).sum()
    }
}

impl Pass for ToFp16 {
    fn name(&self) -> &'static str {
        "to-fp16"
    }

    fn run(&self, graph: &mut Graph, _cx: &PassContext<'_>) -> Result<bool, IrError> {
        let r = self.convert(graph)?;
        Ok(r.fp16_nodes > 0 || r.casts > 0)
    }
}

/// Whether input `slot` of `op` is a parameter that ONNX types as f32 whatever the data's
/// type (or that only f32 keeps exact), rather than data.
pub fn param_slot(op: &Op, slot: usize) -> bool {
    match op {
        Op::Spatial(SpatialOp::Resize(a)) => match a.inputs {
            ResizeInputs::RoiScalesSizes => matches!(slot, 1 | 2),
            ResizeInputs::Scales => slot == 1,
            ResizeInputs::Attr(_) => false,
        },
        Op::Layout(LayoutOp::Dropout) => slot == 1,
        Op::Layout(LayoutOp::OneHot { .. }) => slot == 1,
        Op::Signal(SignalOp::MelWeightMatrix { .. }) => matches!(slot, 3 | 4),
        _ => false,
    }
}

/// Why a node stays f32 whatever the override list says, if it does.
fn inherent_reason(graph: &Graph, id: NodeId) -> Option<KeepReason> {
    let node = graph.node(id);
    if !node.op.subgraphs().is_empty() {
        return Some(KeepReason::Subgraph);
    }
    let seq_in = graph.inputs_of(id).iter().flatten().any(|&v| graph.value_info(v).kind != ValueKind::Tensor);
    if seq_in || node.outputs.iter().any(|o| o.kind != ValueKind::Tensor) {
        return Some(KeepReason::Sequence);
    }
    match &node.op {
        Op::Layout(LayoutOp::Range) | Op::Spatial(SpatialOp::NonMaxSuppression { .. }) => Some(KeepReason::Fp32Only),
        Op::Quant(_) => Some(KeepReason::Quantization),
        Op::Fused(FusedOp::Epilogue { base: LinalgOp::MatMulInteger | LinalgOp::ConvInteger(_), .. }) => {
            Some(KeepReason::IntegerAccumulator)
        }
        _ => None,
    }
}

/// Whether the op is a convolution layer, which [`KeepReason::Early`] counts.
fn is_matrix(op: &Op) -> bool {
    let base = match op {
        Op::Linalg(l) => l,
        Op::Fused(FusedOp::Epilogue { base, .. }) => base,
        _ => return false,
    };
    matches!(base, LinalgOp::Conv(_) | LinalgOp::ConvTranspose(_))
}

/// For each node, the most convolutions on a path from a graph input to it (itself
/// included); `order` is topological.
fn matrix_depths(g: &Graph, order: &[NodeId]) -> HashMap<NodeId, usize> {
    let mut depth: HashMap<NodeId, usize> = HashMap::with_capacity(order.len());
    for &id in order {
        let before = g.inputs_of(id).iter().flatten().map(|v| depth.get(&v.node).copied().unwrap_or(0)).max();
        depth.insert(id, before.unwrap_or(0) + usize::from(is_matrix(&g.node(id).op)));
    }
    depth
}

/// Converts f32 values to f16, saturating at ±65504; returns the tensor and how many values
/// saturated (infinities and NaNs stay what they are).
pub fn saturating_f16(t: &Tensor) -> (Tensor, usize) {
    let v = t.to_f64_vec();
    let over = v.iter().filter(|x| x.is_finite() && x.abs() > F16_MAX).count();
    if over == 0 {
        return (t.cast(DType::F16), 0);
    }
    let clamped: Vec<f32> =
        v.iter().map(|&x| if x.is_finite() { x.clamp(-F16_MAX, F16_MAX) as f32 } else { x as f32 }).collect();
    let t = Tensor::from_vec(t.shape().to_vec(), clamped).expect("same length as the shape");
    (t.cast(DType::F16), over)
}

/// An f32 scalar as f16: the value (saturated) and whether it saturated.
fn saturating_scalar(value: f64) -> (f64, bool) {
    if value.is_finite() && value.abs() > F16_MAX {
        (value.clamp(-F16_MAX, F16_MAX), true)
    } else {
        (value, false)
    }
}

/// Rewrites an expression's f32 scalars and casts to f16; returns how many scalars saturated.
fn expr_to_f16(e: &mut Expr) -> usize {
    let mut sat = 0;
    for n in &mut e.nodes {
        match n {
            ExprNode::Scalar { value, dtype } if *dtype == DType::F32 => {
                let (v, s) = saturating_scalar(*value);
                *value = v;
                *dtype = DType::F16;
                sat += usize::from(s);
            }
            ExprNode::Op { op: ElementwiseOp::Cast { to, .. }, .. } if *to == DType::F32 => *to = DType::F16,
            _ => {}
        }
    }
    sat
}

/// Rewrites the attributes of an op that name f32 as its output type; returns how many
/// attribute values saturated.
fn attrs_to_f16(op: &mut Op) -> usize {
    match op {
        Op::Elementwise(ElementwiseOp::Cast { to, .. }) if *to == DType::F32 => *to = DType::F16,
        Op::Layout(LayoutOp::ConstantOfShape { value }) if value.dtype() == DType::F32 => {
            let (t, sat) = saturating_f16(value);
            *value = t;
            return sat;
        }
        Op::Layout(LayoutOp::EyeLike { dtype: Some(d), .. }) if *d == DType::F32 => *d = DType::F16,
        Op::Signal(SignalOp::Window { output_datatype: d, .. } | SignalOp::MelWeightMatrix { output_datatype: d })
            if *d == DType::F32 =>
        {
            *d = DType::F16
        }
        Op::Fused(FusedOp::Elementwise(e) | FusedOp::Epilogue { expr: e, .. }) => return expr_to_f16(e),
        _ => {}
    }
    0
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Fp16,
    Fp32,
}

/// Adds nodes under names no value has yet.
struct Namer {
    taken: HashSet<String>,
}

impl Namer {
    fn fresh(&mut self, base: String) -> String {
        let mut name = base.clone();
        let mut k = 1;
        while !self.taken.insert(name.clone()) {
            name = format!("{base}_{k}");
            k += 1;
        }
        name
    }
}

impl ToFp16 {
    /// Converts the graph in place and reports what it did. The graph must have its types
    /// inferred; afterwards it passes type inference and `verify()`.
    pub fn convert(&self, g: &mut Graph) -> Result<Fp16Report, IrError> {
        let order = g.topo_order()?;
        let mut report = Fp16Report::default();
        let orig: HashMap<Value, Option<DType>> = order
            .iter()
            .flat_map(|&id| {
                g.node(id).outputs.iter().enumerate().map(move |(slot, o)| (Value { node: id, slot }, o.ty.dtype))
            })
            .collect();
        let was_f32 = |v: &Value| orig.get(v).copied().flatten() == Some(DType::F32);
        let mut namer =
            Namer { taken: order.iter().flat_map(|&id| g.node(id).outputs.iter().map(|o| o.name.clone())).collect() };
        namer.taken.extend(order.iter().map(|&id| g.node(id).name.clone()));

        // Which nodes compute in which precision.
        let depths = matrix_depths(g, &order);
        let depth = depths.values().copied().max().unwrap_or(0);
        let limit = if self.early_fp32 && depth >= EARLY_MIN_DEPTH { depth.div_ceil(EARLY_FRACTION) } else { 0 };
        let mut mode: HashMap<NodeId, Mode> = HashMap::new();
        let mut matched: HashSet<&str> = HashSet::new();
        for &id in &order {
            let node = g.node(id);
            if matches!(node.op, Op::Input | Op::Const(_)) {
                continue;
            }
            let asked = self
                .keep_fp32
                .iter()
                .filter(|k| node.name == **k || node.covers.iter().any(|c| c == *k))
                .min()
                .map(|k| k.as_str());
            matched.extend(asked);
            let outs = (0..node.outputs.len()).map(|slot| Value { node: id, slot });
            let float = g.inputs_of(id).iter().flatten().any(&was_f32) || outs.clone().any(|v| was_f32(&v));
            if !float {
                continue;
            }
            let at = depths[&id];
            let early = (limit > 0 && at <= limit).then_some(KeepReason::Early { at, limit, depth });
            let reason =
                asked.map(|k| KeepReason::Override(k.to_string())).or_else(|| inherent_reason(g, id)).or(early);
            match reason {
                Some(reason) => {
                    report.kept.push(KeptNode { node: node.name.clone(), op: node.op.name().to_string(), reason });
                    mode.insert(id, Mode::Fp32);
                }
                None => {
                    report.fp16_nodes += 1;
                    mode.insert(id, Mode::Fp16);
                }
            }
        }
        let mut unknown: Vec<String> =
            self.keep_fp32.iter().filter(|k| !matched.contains(k.as_str())).cloned().collect();
        unknown.sort();
        report.unknown_overrides = unknown;

        // Whether node `id` reads input `slot` as f16 data.
        let reads_f16 = |g: &Graph, id: NodeId, slot: usize| {
            mode.get(&id) == Some(&Mode::Fp16) && !param_slot(&g.node(id).op, slot)
        };

        // Constants: converted in place where every reader wants f16, copied where some want
        // f32 (a graph output, a parameter, a node kept in f32) and some f16.
        let mut const16: HashMap<Value, Value> = HashMap::new();
        for &id in &order {
            let Op::Const(t) = &g.node(id).op else { continue };
            if t.dtype() != DType::F32 {
                continue;
            }
            let v = Value { node: id, slot: 0 };
            let users = g.users(v);
            let wants16 = users.iter().any(|&(n, s)| reads_f16(g, n, s));
            let wants32 = g.is_output(v) || users.iter().any(|&(n, s)| !reads_f16(g, n, s));
            if !wants16 {
                continue;
            }
            let (t16, sat) = saturating_f16(t);
            let name = g.node(id).outputs[0].name.clone();
            if sat > 0 {
                report.saturated.push((name.clone(), sat));
            }
            if wants32 {
                let copy = g.add_const(namer.fresh(format!("{name}__f16")), t16);
                const16.insert(v, copy);
            } else {
                let node = g.node_mut(id);
                node.op = Op::Const(t16);
                node.outputs[0].ty.dtype = Some(DType::F16);
            }
        }

        // One cast per value and target type.
        let mut casts: HashMap<(Value, DType), Value> = HashMap::new();
        let mut cast = |g: &mut Graph, v: Value, to: DType, report: &mut Fp16Report| -> Value {
            if to == DType::F16 {
                if let Some(&c) = const16.get(&v) {
                    return c;
                }
            }
            *casts.entry((v, to)).or_insert_with(|| {
                let info = g.value_info(v);
                let name = namer.fresh(format!("{}__{}", info.name, to.name()));
                let ty = TypeInfo { dtype: Some(to), shape: info.ty.shape.clone() };
                let op = Op::Elementwise(ElementwiseOp::Cast { to, saturate: true });
                let id = g.add_node(name.clone(), op, &[Some(v)], vec![ValueInfo::tensor(name, ty)]);
                report.casts += 1;
                Value { node: id, slot: 0 }
            })
        };

        for &id in &order {
            let Some(&m) = mode.get(&id) else { continue };
            for (slot, v) in g.inputs_of(id).into_iter().enumerate() {
                let Some(v) = v else { continue };
                let now = g.value_info(v).ty.dtype;
                let want = if reads_f16(g, id, slot) {
                    (now == Some(DType::F32)).then_some(DType::F16)
                } else {
                    (now == Some(DType::F16) && was_f32(&v)).then_some(DType::F32)
                };
                if let Some(to) = want {
                    let c = cast(g, v, to, &mut report);
                    g.set_input(id, slot, Some(c));
                }
            }
            if m == Mode::Fp32 {
                continue;
            }
            let sat = attrs_to_f16(&mut g.node_mut(id).op);
            if sat > 0 {
                report.saturated.push((g.node(id).name.clone(), sat));
            }
            let inferred = infer_node(g, id)?;
            for (slot, ty) in inferred.into_iter().enumerate() {
                if was_f32(&Value { node: id, slot }) {
                    g.node_mut(id).outputs[slot].ty.dtype = Some(ty.dtype.unwrap_or(DType::F16));
                }
            }
        }

        for i in 0..g.outputs.len() {
            let v = g.outputs[i].value;
            if g.value_info(v).ty.dtype == Some(DType::F16) && was_f32(&v) {
                g.outputs[i].value = cast(g, v, DType::F32, &mut report);
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::elementwise::{BinaryOp, UnaryOp};

    fn f32s(shape: &[usize], v: Vec<f32>) -> Tensor {
        Tensor::from_vec(shape.to_vec(), v).unwrap()
    }

    /// x -> Mul(x, w) -> Relu -> y, with `w` holding one value beyond f16's range.
    fn small() -> Graph {
        let mut g = Graph::new("g");
        let x = g.add_input("x", TypeInfo::known(DType::F32, &[3]));
        let w = g.add_const("w", f32s(&[3], vec![1.0, 1e6, -2.0]));
        let ty = TypeInfo::known(DType::F32, &[3]);
        let mul = g.add_node(
            "mul",
            Op::Elementwise(ElementwiseOp::Binary(BinaryOp::Mul)),
            &[Some(x), Some(w)],
            vec![ValueInfo::tensor("m", ty.clone())],
        );
        let relu = g.add_node(
            "relu",
            Op::Elementwise(ElementwiseOp::Unary(UnaryOp::Relu)),
            &[Some(Value { node: mul, slot: 0 })],
            vec![ValueInfo::tensor("y", ty)],
        );
        g.add_output("y", Value { node: relu, slot: 0 });
        g
    }

    fn check(keep: &[&str]) -> (Graph, Fp16Report) {
        let mut g = small();
        let pass = ToFp16 { keep_fp32: keep.iter().map(|s| s.to_string()).collect(), ..ToFp16::default() };
        let r = pass.convert(&mut g).unwrap();
        g.verify().unwrap();
        crate::passes::InferTypes.run(&mut g, &PassContext::default()).unwrap();
        (g, r)
    }

    fn dtype_of(g: &Graph, name: &str) -> Option<DType> {
        g.find_value(name).and_then(|v| g.value_info(v).ty.dtype)
    }

    #[test]
    fn signature_stays_f32_and_the_inside_becomes_f16() {
        let (g, r) = check(&[]);
        assert_eq!(r.fp16_nodes, 2);
        assert_eq!(r.casts, 2, "one after the input, one before the output");
        assert_eq!(r.saturated, vec![("w".to_string(), 1)]);
        assert_eq!(dtype_of(&g, "x"), Some(DType::F32));
        assert_eq!(dtype_of(&g, "w"), Some(DType::F16));
        assert_eq!(dtype_of(&g, "m"), Some(DType::F16));
        assert_eq!(g.value_info(g.outputs[0].value).ty.dtype, Some(DType::F32));
        let Op::Const(w) = &g.node(g.find_value("w").unwrap().node).op else { panic!() };
        assert_eq!(w.to_f64_vec(), vec![1.0, F16_MAX, -2.0]);
    }

    #[test]
    fn a_kept_node_computes_in_f32_between_casts() {
        let (g, r) = check(&["relu", "nothing"]);
        assert_eq!(r.fp16_nodes, 1);
        assert_eq!(r.kept.len(), 1);
        assert_eq!(r.kept[0].reason, KeepReason::Override("relu".into()));
        assert_eq!(r.unknown_overrides, vec!["nothing".to_string()]);
        assert_eq!(dtype_of(&g, "m"), Some(DType::F16));
        assert_eq!(dtype_of(&g, "y"), Some(DType::F32));
        // x to f16, m back to f32; y is f32 already.
        assert_eq!(r.casts, 2);
    }

    /// x -> n x (Conv(., w_i) -> Relu) -> y: `n` convolutions on the longest path, and a side
    /// Relu straight off the input (depth 0) into a second output. With `matmul`, the layers
    /// are MatMuls, which the early rule does not count.
    fn chain_of(n: usize, matmul: bool) -> Graph {
        let mut g = Graph::new("chain");
        let ty = TypeInfo::known(DType::F32, &[1, 2, 2, 2]);
        let mut x = g.add_input("x", ty.clone());
        let side = g.add_node(
            "side",
            Op::Elementwise(ElementwiseOp::Unary(UnaryOp::Relu)),
            &[Some(x)],
            vec![ValueInfo::tensor("s", ty.clone())],
        );
        for i in 0..n {
            let w = if matmul {
                g.add_const(format!("w{i}"), f32s(&[2, 2], vec![1.0, 0.5, -0.5, 1.0]))
            } else {
                g.add_const(format!("w{i}"), f32s(&[2, 2, 1, 1], vec![1.0, 0.5, -0.5, 1.0]))
            };
            let layer = if matmul {
                LinalgOp::MatMul
            } else {
                LinalgOp::Conv(crate::ops::linalg::ConvAttrs {
                    kernel_shape: vec![],
                    strides: vec![],
                    dilations: vec![],
                    pads: vec![],
                    auto_pad: crate::ops::pool::AutoPad::NotSet,
                    group: 1,
                })
            };
            let mm = g.add_node(
                format!("mm{i}"),
                Op::Linalg(layer),
                &[Some(x), Some(w)],
                vec![ValueInfo::tensor(format!("m{i}"), ty.clone())],
            );
            let relu = g.add_node(
                format!("relu{i}"),
                Op::Elementwise(ElementwiseOp::Unary(UnaryOp::Relu)),
                &[Some(Value { node: mm, slot: 0 })],
                vec![ValueInfo::tensor(format!("r{i}"), ty.clone())],
            );
            x = Value { node: relu, slot: 0 };
        }
        g.add_output("y", x);
        g.add_output("s", Value { node: side, slot: 0 });
        g
    }

    fn check_early(n: usize, early_fp32: bool) -> (Graph, Fp16Report) {
        check_early_of(n, early_fp32, false)
    }

    fn check_early_of(n: usize, early_fp32: bool, matmul: bool) -> (Graph, Fp16Report) {
        let mut g = chain_of(n, matmul);
        let r = ToFp16 { early_fp32, ..ToFp16::default() }.convert(&mut g).unwrap();
        g.verify().unwrap();
        crate::passes::InferTypes.run(&mut g, &PassContext::default()).unwrap();
        (g, r)
    }

    #[test]
    fn the_first_eighth_of_a_deep_network_stays_f32() {
        // 17 convolutions: ceil(17 / 8) = 3 stay f32, with what lies between and before them.
        let (g, r) = check_early(17, true);
        let kept: Vec<&str> = r.kept.iter().map(|k| k.node.as_str()).collect();
        assert_eq!(kept, vec!["side", "mm0", "relu0", "mm1", "relu1", "mm2", "relu2"], "{r:?}");
        assert_eq!(r.kept[1].reason, KeepReason::Early { at: 1, limit: 3, depth: 17 });
        assert_eq!(r.kept[0].reason, KeepReason::Early { at: 0, limit: 3, depth: 17 });
        assert_eq!(r.fp16_nodes, 2 * 17 - 6);
        assert_eq!(dtype_of(&g, "r2"), Some(DType::F32));
        assert_eq!(dtype_of(&g, "m3"), Some(DType::F16));
        assert_eq!(dtype_of(&g, "w2"), Some(DType::F32), "a kept layer's weights stay f32");
        assert_eq!(dtype_of(&g, "w3"), Some(DType::F16));
        // The kept region is contiguous: one cast into f16 after it, one back before y.
        assert_eq!(r.casts, 2, "{r:?}");
    }

    #[test]
    fn shallow_networks_and_the_switch_keep_nothing_early() {
        let (_, r) = check_early(EARLY_MIN_DEPTH - 1, true);
        assert!(r.kept.is_empty(), "{r:?}");
        let (g, r) = check_early(40, false);
        assert!(r.kept.is_empty(), "{r:?}");
        assert_eq!(dtype_of(&g, "m0"), Some(DType::F16));
        let (_, r) = check_early(40, true);
        assert_eq!(r.kept.iter().filter(|k| k.node.starts_with("mm")).count(), 5, "ceil(40 / 8)");
        // Matrix products (a transformer's layers) are not convolutions: nothing stays f32.
        let (_, r) = check_early_of(40, true, true);
        assert!(r.kept.is_empty(), "{r:?}");
    }

    #[test]
    fn fused_scalars_and_casts_become_f16() {
        let mut e = Expr {
            nodes: vec![
                ExprNode::Input(0),
                ExprNode::Scalar { value: -1e9, dtype: DType::F32 },
                ExprNode::Op { op: ElementwiseOp::Binary(BinaryOp::Add), args: vec![0, 1] },
                ExprNode::Op { op: ElementwiseOp::Cast { to: DType::F32, saturate: true }, args: vec![2] },
            ],
        };
        assert_eq!(expr_to_f16(&mut e), 1);
        assert_eq!(e.nodes[1], ExprNode::Scalar { value: -F16_MAX, dtype: DType::F16 });
        assert!(matches!(e.nodes[3], ExprNode::Op { op: ElementwiseOp::Cast { to: DType::F16, .. }, .. }));
    }
}
