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
//!   for f32 only (Range, NonMaxSuppression), quantize and dequantize and fused expressions
//!   that quantize (their scales set the type of what they dequantize to, and an f16 scale
//!   would move the rounding boundaries), epilogues over an integer accumulator (an int32
//!   accumulator easily exceeds f16's range before it is rescaled; their result is still
//!   stored f16, see `store_f16`), nodes that carry
//!   subgraphs and nodes over sequences or optionals.
//! - In a deep convolution network (at least [`EARLY_MIN_DEPTH`] convolutions on its longest
//!   path), its first sixth gets more precision ([`EarlyPolicy`]): the float nodes that no
//!   path from a graph input reaches through more than `ceil(depth / 6)` convolutions (Conv,
//!   ConvTranspose and epilogues over them). A rounding error made early is amplified by every
//!   convolution after it, so the first layers dominate the output's error: torchvision's
//!   ResNet-50 and MobileNetV2 with random weights and BatchNorm statistics of random images
//!   amplify it about fifty times, and all-f16 puts them above a relative L2 error of 1e-2.
//!   By default ([`EarlyPolicy::Split`]) the early convolutions keep their weights as two f16
//!   halves, `hi + lo`, and run twice on tensor cores ([`split_weights`]), and the cheap ones
//!   at the very start (at most [`CHEAP_MACS`] multiply-adds per output, such as MobileNetV2's
//!   stem, first depthwise and projection) stay f32 ([`KeepReason::CheapEarly`]), since their
//!   activations' rounding counts as much as the weights'. [`EarlyPolicy::Fp32`] keeps the
//!   whole early region f32 instead (accurate, but on CUDA cores; `KILN_FP16_EARLY=fp32` for
//!   the `kiln` tool), and [`EarlyPolicy::Off`] converts it like the rest. Transformers are
//!   left alone: their normalizations keep early errors from growing (BERT-base in f16 is at
//!   1.5e-3 without it).
//! - Integer, boolean, f64 and bf16 values are untouched.
//!
//! The pass runs after fusion, so that BatchNorm folding and constant folding happen in f32
//! first; it is not in the default pipeline, the facade runs it when FP16 is asked for. It
//! sets the types it changes, so that type inference afterwards agrees with it. Casts are
//! shared: one per value and target type.

use super::infer_types::infer_node;
use super::{Pass, PassContext};
use crate::ops::elementwise::{BinaryOp, UnaryOp};
use crate::ops::fused::{Expr, ExprNode, FusedOp};
use crate::ops::layout::LayoutOp;
use crate::ops::linalg::LinalgOp;
use crate::ops::signal::SignalOp;
use crate::ops::spatial::{ResizeInputs, SpatialOp};
use crate::ops::ElementwiseOp;
use crate::{DType, Graph, IrError, NodeId, Op, Tensor, TypeInfo, Value, ValueInfo, ValueKind};
use std::collections::{HashMap, HashSet};
use std::fmt;

/// An epilogue over an integer accumulator computes in f32 (its accumulator would overflow
/// f16 before the rescale) but its result is an activation like any other: it is stored f16.
/// Its f32 output `v` gets one cast to f16 that every reader takes, f16 readers as it is and
/// f32 ones (another integer epilogue's residual, a quantize) through a cast back, so the
/// tensor between two such layers is f16 in memory, as in an FP16 network; fusion then folds
/// the casts into the epilogues (`gemm-epilogue` and `epilogue-input`). A graph output keeps
/// reading `v`.
fn store_f16(
    g: &mut Graph,
    id: NodeId,
    mode: &HashMap<NodeId, Mode>,
    cast: &mut dyn FnMut(&mut Graph, Value, DType) -> Value,
) {
    let v = Value { node: id, slot: 0 };
    let users = g.users(v);
    if g.node(id).outputs.len() != 1 || g.value_info(v).ty.dtype != Some(DType::F32) || users.is_empty() {
        return;
    }
    let half = cast(g, v, DType::F16);
    for (n, slot) in users {
        let wants16 = mode.get(&n) == Some(&Mode::Fp16) && !param_slot(&g.node(n).op, slot);
        let to = if wants16 { half } else { cast(g, half, DType::F32) };
        g.set_input(n, slot, Some(to));
    }
}

/// The largest finite f16.
pub const F16_MAX: f64 = 65504.0;

/// The least convolution depth (convolutions on the longest path) at which [`ToFp16`] keeps a
/// network's first layers in f32: shallower networks amplify early rounding errors little.
pub const EARLY_MIN_DEPTH: usize = 16;

/// The share of a deep network's convolution depth, from its inputs, that stays f32 is
/// `1 / EARLY_FRACTION`.
///
/// A sixth: on ResNet-50 (depth 50) on an H100, 7 early layers (an eighth) left FP16's relative
/// L2 error at 9.3e-3, 9.9e-3 and 1.003e-2 at seeds 1 to 3, 9 (a sixth) at 9.1e-3, 9.6e-3 and
/// 9.5e-3 for 0.06 ms more at batch 32, 10 no better.
pub const EARLY_FRACTION: usize = 6;

/// The most multiply-adds per output element of a convolution that [`EarlyPolicy::Split`]
/// keeps in f32 at the start of a network ([`KeepReason::CheapEarly`]): such a convolution
/// moves more bytes than it computes, so f32 costs it memory traffic, not tensor-core time.
pub const CHEAP_MACS: usize = 32;

/// Converts a graph to FP16; see the module documentation for the policy.
#[derive(Clone, Debug, Default)]
pub struct ToFp16 {
    /// Nodes (by name, or by a name a fused node covers) that stay in f32.
    pub keep_fp32: HashSet<String>,
    /// What becomes of the first sixth of a deep convolution network.
    pub early: EarlyPolicy,
    /// How many matrix layers from the inputs count as early; `None` is a sixth of the
    /// network's depth (rounded up). Fewer split layers cost less time and keep less precision.
    pub early_layers: Option<usize>,
}

/// What [`ToFp16`] does with the first sixth of a deep convolution network (at least
/// [`EARLY_MIN_DEPTH`] convolutions on its longest path): the layers whose rounding errors
/// the most layers after them amplify.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EarlyPolicy {
    /// Each early convolution with constant f32 weights computes with its weights (and bias)
    /// split into two f16 halves, `w = hi + lo` with `lo` the rounding error of `hi`: a
    /// second convolution by `lo` feeds the first one's epilogue (see [`split_weights`]).
    /// The weights keep 21 bits of precision and both convolutions run on f16 tensor cores,
    /// at about a sixth more multiply-adds for ResNet-50. The cheap convolutions at the
    /// very start stay f32 instead ([`KeepReason::CheapEarly`]); the first matrix layer, whose
    /// input is as coarsely rounded as its weights, is not split.
    #[default]
    Split,
    /// The early layers stay f32 ([`KeepReason::Early`]): as accurate as `Split`, but they
    /// run on CUDA cores, which on an H200 took ResNet-50 at batch 32 from 1.6 to 3.7 ms (TF32
    /// is no help: it rounds the weights as f16 does).
    Fp32,
    /// The early layers are converted like any other.
    Off,
}

impl std::str::FromStr for EarlyPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<EarlyPolicy, String> {
        match s {
            "split" => Ok(EarlyPolicy::Split),
            "fp32" => Ok(EarlyPolicy::Fp32),
            "off" => Ok(EarlyPolicy::Off),
            _ => Err(format!("unknown early-layer policy '{s}': expected split, fp32 or off")),
        }
    }
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
    /// The node is in the first sixth of a deep network: no path from a graph input reaches
    /// it through more than `limit` of the `depth` convolutions on the longest path.
    Early {
        /// Matrix layers, at most, on a path from a graph input to the node (itself included).
        at: usize,
        /// The most a kept node may have: `ceil(depth / 6)`.
        limit: usize,
        /// Matrix layers on the network's longest path.
        depth: usize,
    },
    /// Under [`EarlyPolicy::Split`], the node is in the first sixth of a deep network, behind
    /// at least one convolution, and every convolution on every path to it has at most
    /// [`CHEAP_MACS`] multiply-adds per output: memory-bound layers, where f32 costs little.
    CheapEarly {
        /// As for `Early`.
        at: usize,
        /// As for `Early`.
        limit: usize,
        /// As for `Early`.
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
            KeepReason::CheapEarly { at, limit, depth } => write!(
                f,
                "early layer ({at} of the first {limit} of {depth} convolutions) behind convolutions of at most \
                 {CHEAP_MACS} multiply-adds per output: later layers amplify its rounding, and f32 costs it only memory traffic"
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
    /// Early convolutions whose weights were split into f16 halves ([`EarlyPolicy::Split`]).
    pub split: Vec<String>,
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
        // Fusion's form of QuantizeLinear (an expression ending in a cast to 8-bit integers)
        // keeps its scale in f32, as QuantizeLinear itself does: an f16 scale would move the
        // rounding boundaries.
        Op::Fused(FusedOp::Elementwise(_))
            if node.outputs.iter().any(|o| matches!(o.ty.dtype, Some(DType::I8 | DType::U8))) =>
        {
            Some(KeepReason::Quantization)
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

/// The f16 halves of f32 values: `hi` is each value rounded to f16, `lo` what `hi` misses,
/// rounded to f16 in turn (zero where the value is beyond f16's range or not finite, which
/// `hi` keeps for the conversion to saturate and count). `hi + lo` keeps
/// 21 bits of a value, or is within 2^-25 of it where `lo` is an f16 subnormal (below 6.1e-5).
/// Both are f32 tensors holding f16 values, so converting them to f16 later is exact.
fn f16_halves(t: &Tensor, node: &str) -> Result<(Tensor, Tensor), IrError> {
    let v = t.to_f64_vec();
    let f16 = |x: f64| f64::from(half::f16::from_f64(x));
    // Values f16 cannot hold stay as they are in `hi` (the conversion saturates them and
    // reports it, as for any weight), with nothing in `lo`.
    let fits = |x: f64| x.is_finite() && x.abs() <= F16_MAX;
    let hi: Vec<f32> = v.iter().map(|&x| if fits(x) { f16(x) as f32 } else { x as f32 }).collect();
    let lo: Vec<f32> =
        v.iter().zip(&hi).map(|(&x, &h)| if fits(x) { f16(x - f64::from(h)) as f32 } else { 0.0 }).collect();
    let shape = t.shape().to_vec();
    let tensor = |v: Vec<f32>| {
        Tensor::from_vec(shape.clone(), v).map_err(|e| IrError::Invalid {
            node: node.to_string(),
            op: "Conv".into(),
            msg: format!("splitting its weights: {e}"),
        })
    };
    Ok((tensor(hi)?, tensor(lo)?))
}

/// `e` with its accumulator `in0` replaced by `in0 + in{k}`.
fn plus_input(e: &Expr, k: usize) -> Expr {
    let mut nodes = vec![ExprNode::Input(0), ExprNode::Input(k)];
    for n in &e.nodes {
        nodes.push(match n {
            ExprNode::Input(0) => ExprNode::Op { op: ElementwiseOp::Binary(BinaryOp::Add), args: vec![0, 1] },
            ExprNode::Op { op, args } => ExprNode::Op { op: op.clone(), args: args.iter().map(|a| a + 2).collect() },
            other => other.clone(),
        });
    }
    Expr { nodes }
}

/// The epilogue input `k` (as the expression numbers it, so at least 1) that enters `e` only
/// through one sum with the accumulator, `act?(in0 + ... + in{k} + ...)`, and for which
/// `full(k)` holds. Adding a value to that input then adds it to the accumulator.
fn summed_input(e: &Expr, full: &dyn Fn(usize) -> bool) -> Option<usize> {
    let nodes = &e.nodes;
    let mut refs = vec![0usize; nodes.len()];
    for n in nodes {
        if let ExprNode::Op { args, .. } = n {
            for &a in args {
                refs[a] += 1;
            }
        }
    }
    let last = nodes.len().checked_sub(1)?;
    let root = match &nodes[last] {
        ExprNode::Op { op: ElementwiseOp::Unary(UnaryOp::Relu) | ElementwiseOp::Clip { .. }, args }
            if args.len() == 1 =>
        {
            args[0]
        }
        _ => last,
    };
    // The sum's leaves (step, input), each step referenced once, inside the sum tree only.
    fn leaves(nodes: &[ExprNode], refs: &[usize], i: usize, top: bool, out: &mut Vec<usize>) -> bool {
        if !top && refs[i] != 1 {
            return false;
        }
        match &nodes[i] {
            ExprNode::Input(k) => {
                out.push(*k);
                true
            }
            ExprNode::Op { op: ElementwiseOp::Binary(BinaryOp::Add), args } => {
                args.iter().all(|&a| leaves(nodes, refs, a, false, out))
            }
            _ => !top,
        }
    }
    let mut terms = vec![];
    if !leaves(nodes, &refs, root, true, &mut terms) || terms.iter().filter(|&&k| k == 0).count() != 1 {
        return None;
    }
    // Neither input may be read anywhere else.
    let reads = |k: usize| nodes.iter().filter(|n| matches!(n, ExprNode::Input(j) if *j == k)).count();
    terms.into_iter().find(|&k| k != 0 && full(k) && reads(k) == 1 && reads(0) == 1)
}

/// [`EarlyPolicy::Split`]: each convolution among `nodes` whose weights (and bias, if any)
/// are f32 constants computes `conv(x, w_hi) + conv(x, w_lo)` (biases likewise), with `w_hi`
/// and `w_lo` the [`f16_halves`] of its weights. The `lo` convolution is a new node
/// `{name}.lo`; the original node reads it in its epilogue. Where the epilogue adds a residual
/// of the output's shape to the accumulator, the `lo` convolution takes that residual into its
/// own epilogue and the original reads it in the residual's place, so the epilogue keeps its
/// shape (one residual, which cuDNN fuses). Returns the split nodes' names.
pub fn split_weights(g: &mut Graph, nodes: &[NodeId]) -> Result<Vec<String>, IrError> {
    let mut split = vec![];
    let mut namer =
        Namer { taken: g.node_ids().flat_map(|id| g.node(id).outputs.iter().map(|o| o.name.clone())).collect() };
    namer.taken.extend(g.node_ids().map(|id| g.node(id).name.clone()));
    for &id in nodes {
        let node = g.node(id);
        let (attrs, base_inputs, expr) = match &node.op {
            Op::Linalg(LinalgOp::Conv(a)) => (a.clone(), node.num_inputs, None),
            Op::Fused(FusedOp::Epilogue { base: LinalgOp::Conv(a), base_inputs, expr }) => {
                (a.clone(), *base_inputs, Some(expr.clone()))
            }
            _ => continue,
        };
        let ins = g.inputs_of(id);
        let f32_const = |v: Option<Value>| match v.map(|v| &g.node(v.node).op) {
            Some(Op::Const(t)) if t.dtype() == DType::F32 => Some(t.clone()),
            _ => None,
        };
        // (A convolution without its input or weights has nothing to split.)
        let (Some(x), Some(w)) = (ins.first().copied().flatten(), f32_const(ins.get(1).copied().flatten())) else {
            continue;
        };
        let bias = ins.get(2).copied().flatten().filter(|_| base_inputs > 2);
        let b = match bias {
            Some(_) => match f32_const(bias) {
                Some(b) => Some(b),
                None => continue,
            },
            None => None,
        };
        let (name, out) = (node.name.clone(), node.outputs[0].clone());
        let out_shape = out.ty.shape.clone();
        let (w_hi, w_lo) = f16_halves(&w, &name)?;
        let w_hi = g.add_const(namer.fresh(format!("{name}.weight_hi")), w_hi);
        let w_lo = g.add_const(namer.fresh(format!("{name}.weight_lo")), w_lo);
        g.set_input(id, 1, Some(w_hi));
        let mut lo_inputs = vec![Some(x), Some(w_lo)];
        if let Some(b) = &b {
            let (b_hi, b_lo) = f16_halves(b, &name)?;
            let b_hi = g.add_const(namer.fresh(format!("{name}.bias_hi")), b_hi);
            g.set_input(id, 2, Some(b_hi));
            lo_inputs.push(Some(g.add_const(namer.fresh(format!("{name}.bias_lo")), b_lo)));
        }
        // A residual the epilogue sums with the accumulator moves into the lo convolution.
        let full = |k: usize| {
            let v = ins.get(base_inputs + k - 1).copied().flatten();
            v.is_some_and(|v| out_shape.is_some() && g.value_info(v).ty.shape == out_shape)
        };
        let residual = expr.as_ref().and_then(|e| summed_input(e, &full));
        let lo_op = match residual {
            Some(k) => {
                lo_inputs.push(ins[base_inputs + k - 1]);
                let lo_base = lo_inputs.len() - 1;
                Op::Fused(FusedOp::Epilogue {
                    base: LinalgOp::Conv(attrs.clone()),
                    base_inputs: lo_base,
                    expr: Expr::op(ElementwiseOp::Binary(BinaryOp::Add), 2),
                })
            }
            None => Op::Linalg(LinalgOp::Conv(attrs.clone())),
        };
        let lo_name = namer.fresh(format!("{name}.lo"));
        let info = ValueInfo { name: lo_name.clone(), ..out };
        let lo = Value { node: g.add_node(lo_name.clone(), lo_op, &lo_inputs, vec![info]), slot: 0 };
        match (residual, expr) {
            (Some(k), _) => g.set_input(id, base_inputs + k - 1, Some(lo)),
            (None, Some(e)) => {
                let k = g.node(id).num_inputs - base_inputs + 1;
                g.set_input(id, base_inputs + k - 1, Some(lo));
                if let Op::Fused(FusedOp::Epilogue { expr, .. }) = &mut g.node_mut(id).op {
                    *expr = plus_input(&e, k);
                }
            }
            (None, None) => {
                let n = g.node(id).num_inputs;
                g.set_input(id, n, Some(lo));
                g.node_mut(id).op = Op::Fused(FusedOp::Epilogue {
                    base: LinalgOp::Conv(attrs),
                    base_inputs: n,
                    expr: Expr::op(ElementwiseOp::Binary(BinaryOp::Add), 2),
                });
            }
        }
        split.push(name);
    }
    Ok(split)
}

/// The multiply-adds per output element of a convolution (`cin / groups` times the kernel's
/// size), if the node is one with a known weight shape.
fn conv_macs(g: &Graph, id: NodeId) -> Option<usize> {
    match &g.node(id).op {
        Op::Linalg(LinalgOp::Conv(_)) | Op::Fused(FusedOp::Epilogue { base: LinalgOp::Conv(_), .. }) => {}
        _ => return None,
    }
    let w = g.inputs_of(id).get(1).copied().flatten()?;
    let shape = g.value_info(w).ty.concrete_shape()?;
    Some(shape.get(1..)?.iter().product())
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
    /// The early region of a deep convolution network under [`ToFp16::early`]: the nodes that
    /// stay f32 and why, and the convolutions whose weights split.
    fn early_region(&self, g: &Graph) -> Result<(HashMap<NodeId, KeepReason>, Vec<NodeId>), IrError> {
        let (mut keep, mut split) = (HashMap::new(), vec![]);
        let order = g.topo_order()?;
        let depths = matrix_depths(g, &order);
        let depth = depths.values().copied().max().unwrap_or(0);
        if self.early == EarlyPolicy::Off || depth < EARLY_MIN_DEPTH {
            return Ok((keep, split));
        }
        let limit = self.early_layers.unwrap_or(depth.div_ceil(EARLY_FRACTION));
        // Whether every convolution on every path from a graph input to the node is cheap.
        let mut cheap: HashMap<NodeId, bool> = HashMap::with_capacity(order.len());
        for &id in &order {
            let macs = conv_macs(g, id);
            let before = g.inputs_of(id).iter().flatten().all(|v| cheap.get(&v.node).copied().unwrap_or(true));
            cheap.insert(id, before && macs.is_none_or(|m| m <= CHEAP_MACS));
            let at = depths[&id];
            if at > limit || matches!(g.node(id).op, Op::Input | Op::Const(_)) {
                continue;
            }
            match self.early {
                EarlyPolicy::Fp32 => {
                    keep.insert(id, KeepReason::Early { at, limit, depth });
                }
                EarlyPolicy::Split if cheap[&id] && at > 0 => {
                    keep.insert(id, KeepReason::CheapEarly { at, limit, depth });
                }
                // The first matrix layer reads the network's input rounded to f16, as coarse as
                // its weights' rounding: splitting them gains nothing there (ResNet-50 on an
                // H100: 1.22e-2 relative error split, 1.23e-2 not) and doubles a slow 3-channel
                // convolution (0.2 ms of 1.5 at batch 32).
                EarlyPolicy::Split if macs.is_some() && at > 1 => split.push(id),
                _ => {}
            }
        }
        Ok((keep, split))
    }

    /// Converts the graph in place and reports what it did. The graph must have its types
    /// inferred; afterwards it passes type inference and `verify()`.
    pub fn convert(&self, g: &mut Graph) -> Result<Fp16Report, IrError> {
        let mut report = Fp16Report::default();
        let asked =
            |n: &crate::Node| self.keep_fp32.contains(&n.name) || n.covers.iter().any(|c| self.keep_fp32.contains(c));
        let (early, to_split) = self.early_region(g)?;
        let to_split: Vec<NodeId> = to_split.into_iter().filter(|&id| !asked(g.node(id))).collect();
        report.split = split_weights(g, &to_split)?;
        let order = g.topo_order()?;
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
        let mut mode: HashMap<NodeId, Mode> = HashMap::new();
        // Epilogues over an integer accumulator compute in f32 but store f16 (see below).
        let mut stores_f16: HashSet<NodeId> = HashSet::new();
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
            let reason = asked
                .map(|k| KeepReason::Override(k.to_string()))
                .or_else(|| inherent_reason(g, id))
                .or_else(|| early.get(&id).cloned());
            match reason {
                Some(reason) => {
                    if reason == KeepReason::IntegerAccumulator {
                        stores_f16.insert(id);
                    }
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
                if stores_f16.contains(&id) {
                    store_f16(g, id, &mode, &mut |g, v, to| cast(g, v, to, &mut report));
                }
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
    /// A convolution with every attribute at its default (1x1 for a 1x1 filter).
    fn plain_conv() -> crate::ops::linalg::ConvAttrs {
        crate::ops::linalg::ConvAttrs {
            kernel_shape: vec![],
            strides: vec![],
            dilations: vec![],
            pads: vec![],
            auto_pad: crate::ops::pool::AutoPad::NotSet,
            group: 1,
        }
    }

    fn chain_of(n: usize, matmul: bool) -> Graph {
        chain_with(n, matmul, 2)
    }

    /// `n` layers of `c` channels, 1x1 convolutions (or MatMuls) each followed by a ReLU.
    fn chain_with(n: usize, matmul: bool, c: usize) -> Graph {
        let mut g = Graph::new("chain");
        let shape = if matmul { [1, 2, 2, c] } else { [1, c, 2, 2] };
        let ty = TypeInfo::known(DType::F32, &shape);
        let mut x = g.add_input("x", ty.clone());
        let side = g.add_node(
            "side",
            Op::Elementwise(ElementwiseOp::Unary(UnaryOp::Relu)),
            &[Some(x)],
            vec![ValueInfo::tensor("s", ty.clone())],
        );
        for i in 0..n {
            // Values f16 does not hold exactly, so that splitting them leaves a remainder.
            let v: Vec<f32> =
                (0..c * c).map(|j| if j % (c + 1) == 0 { 1.0 } else { 0.1 / (1 + j % 7) as f32 }).collect();
            let w = if matmul {
                g.add_const(format!("w{i}"), f32s(&[c, c], v))
            } else {
                g.add_const(format!("w{i}"), f32s(&[c, c, 1, 1], v))
            };
            let layer = if matmul { LinalgOp::MatMul } else { LinalgOp::Conv(plain_conv()) };
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
        let early = if early_fp32 { EarlyPolicy::Fp32 } else { EarlyPolicy::Off };
        let r = ToFp16 { early, ..ToFp16::default() }.convert(&mut g).unwrap();
        g.verify().unwrap();
        crate::passes::InferTypes.run(&mut g, &PassContext::default()).unwrap();
        (g, r)
    }

    #[test]
    fn the_first_sixth_of_a_deep_network_stays_f32() {
        // 17 convolutions: ceil(17 / 6) = 3 stay f32, with what lies between and before them.
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

    fn converted(mut g: Graph, early: EarlyPolicy) -> (Graph, Fp16Report) {
        let r = ToFp16 { early, ..ToFp16::default() }.convert(&mut g).unwrap();
        g.verify().unwrap();
        crate::passes::InferTypes.run(&mut g, &PassContext::default()).unwrap();
        (g, r)
    }

    fn const_of<'a>(g: &'a Graph, name: &str) -> &'a Tensor {
        let v = g.find_value(name).unwrap_or_else(|| panic!("no value {name}"));
        match &g.node(v.node).op {
            Op::Const(t) => t,
            other => panic!("{name} is {}", other.name()),
        }
    }

    #[test]
    fn the_split_policy_runs_the_first_sixth_with_hi_and_lo_weights() {
        // 17 convolutions of 40 multiply-adds per output: the first 3 are early, the 2nd and
        // 3rd split (the first reads the input, as coarsely rounded as its weights), none
        // stays f32.
        let original = chain_with(17, false, 40);
        let (g, r) = converted(original.clone(), EarlyPolicy::Split);
        assert_eq!(r.split, vec!["mm1", "mm2"], "{r:?}");
        assert!(r.kept.is_empty(), "{r:?}");
        assert!(g.find_value("mm0.lo").is_none() && g.find_value("mm0.weight_hi").is_none());
        for i in 1..3 {
            let (hi, lo) = (const_of(&g, &format!("mm{i}.weight_hi")), const_of(&g, &format!("mm{i}.weight_lo")));
            assert_eq!((hi.dtype(), lo.dtype()), (DType::F16, DType::F16));
            let w = const_of(&original, &format!("w{i}")).to_f64_vec();
            let (hi, lo) = (hi.to_f64_vec(), lo.to_f64_vec());
            for j in 0..w.len() {
                let err = (hi[j] + lo[j] - w[j]).abs();
                // 21 bits, or half the least f16 subnormal where `lo` is subnormal.
                let bound = (w[j].abs() * 2f64.powi(-21)).max(2f64.powi(-25));
                assert!(err <= bound, "w{i}[{j}] = {} = {} + {}", w[j], hi[j], lo[j]);
            }
            assert!(lo.iter().any(|&x| x != 0.0), "0.1 is not an f16: its remainder is not zero");
            // The layer adds the lo convolution of the same input to its accumulator.
            let layer = g.node(g.find_value(&format!("m{i}")).unwrap().node);
            let lo_conv = g.find_value(&format!("mm{i}.lo")).unwrap();
            assert_eq!(g.inputs_of(g.find_value(&format!("m{i}")).unwrap().node)[2], Some(lo_conv));
            let Op::Fused(FusedOp::Epilogue { base_inputs: 2, expr, .. }) = &layer.op else {
                panic!("mm{i} is {}", layer.op.name())
            };
            assert_eq!(expr.to_string(), "(in0 + in1)");
        }
        assert!(g.find_value("mm3.lo").is_none());
        assert_eq!(dtype_of(&g, "m0"), Some(DType::F16));
        // Cheap layers (2 multiply-adds per output) stay f32 instead, and nothing splits.
        let (_, r) = converted(chain_with(17, false, 2), EarlyPolicy::Split);
        assert!(r.split.is_empty(), "{r:?}");
        let kept: Vec<&str> = r.kept.iter().map(|k| k.node.as_str()).collect();
        assert_eq!(kept, vec!["mm0", "relu0", "mm1", "relu1", "mm2", "relu2"], "{r:?}");
        assert_eq!(r.kept[0].reason, KeepReason::CheapEarly { at: 1, limit: 3, depth: 17 });
        // Off leaves the network alone; shallow networks are left alone.
        let (_, r) = converted(chain_with(17, false, 40), EarlyPolicy::Off);
        assert!(r.split.is_empty() && r.kept.is_empty(), "{r:?}");
        let (_, r) = converted(chain_with(EARLY_MIN_DEPTH - 1, false, 40), EarlyPolicy::Split);
        assert!(r.split.is_empty() && r.kept.is_empty(), "{r:?}");
    }

    #[test]
    fn a_fused_quantize_keeps_its_scale_in_f32() {
        // relu(x) quantized with scale 0.05, as fusion writes QuantizeLinear.
        let mut g = Graph::new("q");
        let ty = TypeInfo::known(DType::F32, &[2, 3]);
        let x = g.add_input("x", ty);
        let op = |op: ElementwiseOp, args: Vec<usize>| ExprNode::Op { op, args };
        let expr = Expr {
            nodes: vec![
                ExprNode::Input(0),
                op(ElementwiseOp::Unary(UnaryOp::Relu), vec![0]),
                ExprNode::Scalar { value: 0.05, dtype: DType::F32 },
                op(ElementwiseOp::Binary(BinaryOp::Div), vec![1, 2]),
                op(ElementwiseOp::Unary(UnaryOp::Round), vec![3]),
                op(ElementwiseOp::Clip { min: Some(-128.0), max: Some(127.0) }, vec![4]),
                op(ElementwiseOp::Cast { to: DType::I8, saturate: false }, vec![5]),
            ],
        };
        let out = ValueInfo::tensor("q", TypeInfo::known(DType::I8, &[2, 3]));
        let id = g.add_node("quantize", Op::Fused(FusedOp::Elementwise(expr.clone())), &[Some(x)], vec![out]);
        g.add_output("q", Value { node: id, slot: 0 });
        let (g, r) = converted(g, EarlyPolicy::default());
        assert_eq!(r.kept.len(), 1, "{r:?}");
        assert_eq!(r.kept[0].reason, KeepReason::Quantization);
        let Op::Fused(FusedOp::Elementwise(kept)) = &g.node(id).op else { panic!() };
        assert_eq!(kept, &expr, "the scale stays an f32 scalar");
    }

    #[test]
    fn an_integer_epilogue_computes_in_f32_and_stores_f16() {
        // e1 = dequantize(xq w1) feeds a Relu (converted to f16) and, as its residual, a second
        // integer epilogue e2 = dequantize(xq w2) + e1.
        let mut g = Graph::new("int");
        let xq = g.add_input("xq", TypeInfo::known(DType::I8, &[2, 4]));
        let w =
            |g: &mut Graph, name: &str| g.add_const(name, Tensor::from_vec(vec![4, 3], vec![1i8; 12]).expect("weight"));
        let (w1, w2) = (w(&mut g, "w1"), w(&mut g, "w2"));
        let scale = g.add_const("s", f32s(&[3], vec![0.5; 3]));
        let op = |op: ElementwiseOp, args: Vec<usize>| ExprNode::Op { op, args };
        let dequant = vec![
            ExprNode::Input(0),
            op(ElementwiseOp::Cast { to: DType::F32, saturate: true }, vec![0]),
            ExprNode::Input(1),
            op(ElementwiseOp::Binary(BinaryOp::Mul), vec![1, 2]),
        ];
        let mut plus = dequant.clone();
        plus.extend([ExprNode::Input(2), op(ElementwiseOp::Binary(BinaryOp::Add), vec![3, 4])]);
        let ty = || TypeInfo::known(DType::F32, &[2, 3]);
        let epi = |e: Vec<ExprNode>| {
            Op::Fused(FusedOp::Epilogue { base: LinalgOp::MatMulInteger, base_inputs: 2, expr: Expr { nodes: e } })
        };
        let e1 =
            g.add_node("e1", epi(dequant), &[Some(xq), Some(w1), Some(scale)], vec![ValueInfo::tensor("e1", ty())]);
        let e1 = Value { node: e1, slot: 0 };
        let relu = Op::Elementwise(ElementwiseOp::Unary(UnaryOp::Relu));
        let r = g.add_node("relu", relu, &[Some(e1)], vec![ValueInfo::tensor("r", ty())]);
        let ins = [Some(xq), Some(w2), Some(scale), Some(e1)];
        let e2 = g.add_node("e2", epi(plus), &ins, vec![ValueInfo::tensor("e2", ty())]);
        g.add_output("r", Value { node: r, slot: 0 });
        g.add_output("e2", Value { node: e2, slot: 0 });
        let (g, rep) = converted(g, EarlyPolicy::default());
        assert!(rep.kept.iter().all(|k| k.reason == KeepReason::IntegerAccumulator), "{rep:?}");
        // One f16 copy of e1: the Relu reads it, e2 reads it cast back to f32.
        let relu_in = g.inputs_of(r)[0].expect("relu input");
        assert_eq!(g.value_info(relu_in).ty.dtype, Some(DType::F16));
        assert_eq!(g.inputs_of(relu_in.node)[0], Some(e1), "the f16 copy is a cast of e1");
        let residual = g.inputs_of(e2)[3].expect("residual");
        assert_eq!(g.value_info(residual).ty.dtype, Some(DType::F32));
        assert_eq!(g.inputs_of(residual.node)[0], Some(relu_in), "e2 reads the f16 copy, cast back");
        assert_eq!(g.value_info(e1).ty.dtype, Some(DType::F32), "e1 itself computes and is typed f32");
    }

    #[test]
    fn halves_leave_what_f16_cannot_hold_to_the_conversion() {
        let t = f32s(&[4], vec![0.1, 1e5, f32::INFINITY, -70000.0]);
        let (hi, lo) = f16_halves(&t, "c").unwrap();
        let (hi, lo) = (hi.to_f64_vec(), lo.to_f64_vec());
        assert_eq!(hi[1..], [1e5, f64::INFINITY, -70000.0], "kept for the conversion to saturate and count");
        assert_eq!(lo[1..], [0.0, 0.0, 0.0]);
        assert!((hi[0] + lo[0] - f64::from(0.1f32)).abs() <= 2f64.powi(-25) && lo[0] != 0.0);
        let (_, saturated) = saturating_f16(&f32s(&[4], hi.iter().map(|&x| x as f32).collect()));
        assert_eq!(saturated, 2, "1e5 and -70000 saturate; the infinity stays one");
    }

    #[test]
    fn a_split_convolution_passes_its_residual_through_the_lo_convolution() {
        let mut g = Graph::new("residual");
        let ty = TypeInfo::known(DType::F32, &[1, 2, 2, 2]);
        let x = g.add_input("x", ty.clone());
        let r = g.add_input("r", ty.clone());
        let w = g.add_const("w", f32s(&[2, 2, 1, 1], vec![0.1, 0.2, 0.3, 0.4]));
        let b = g.add_const("b", f32s(&[2], vec![0.1, -0.1]));
        let attrs = plain_conv();
        // relu(conv(x, w, b) + r)
        let expr = Expr {
            nodes: vec![
                ExprNode::Input(0),
                ExprNode::Input(1),
                ExprNode::Op { op: ElementwiseOp::Binary(BinaryOp::Add), args: vec![0, 1] },
                ExprNode::Op { op: ElementwiseOp::Unary(UnaryOp::Relu), args: vec![2] },
            ],
        };
        let op = Op::Fused(FusedOp::Epilogue { base: LinalgOp::Conv(attrs), base_inputs: 3, expr: expr.clone() });
        let id = g.add_node("c", op, &[Some(x), Some(w), Some(b), Some(r)], vec![ValueInfo::tensor("y", ty)]);
        g.add_output("y", Value { node: id, slot: 0 });
        assert_eq!(split_weights(&mut g, &[id]).unwrap(), vec!["c"]);
        g.verify().unwrap();
        let ins = g.inputs_of(id);
        let lo = ins[3].unwrap();
        assert_eq!(g.value_info(lo).name, "c.lo");
        assert_eq!(g.value_info(ins[1].unwrap()).name, "c.weight_hi");
        assert_eq!(g.value_info(ins[2].unwrap()).name, "c.bias_hi");
        let Op::Fused(FusedOp::Epilogue { base_inputs, expr: kept, .. }) = &g.node(id).op else { panic!() };
        assert_eq!((*base_inputs, kept), (3, &expr), "the epilogue keeps its one residual");
        // c.lo = conv(x, w_lo, b_lo) + r
        let lo_ins = g.inputs_of(lo.node);
        assert_eq!(lo_ins[0], Some(x));
        assert_eq!(lo_ins[3], Some(r));
        let Op::Fused(FusedOp::Epilogue { base_inputs: 3, expr, .. }) = &g.node(lo.node).op else { panic!() };
        assert_eq!(expr.to_string(), "(in0 + in1)");
    }

    #[test]
    fn shallow_networks_and_the_switch_keep_nothing_early() {
        let (_, r) = check_early(EARLY_MIN_DEPTH - 1, true);
        assert!(r.kept.is_empty(), "{r:?}");
        let (g, r) = check_early(40, false);
        assert!(r.kept.is_empty(), "{r:?}");
        assert_eq!(dtype_of(&g, "m0"), Some(DType::F16));
        let (_, r) = check_early(40, true);
        assert_eq!(r.kept.iter().filter(|k| k.node.starts_with("mm")).count(), 7, "ceil(40 / 6)");
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
