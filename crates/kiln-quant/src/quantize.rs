//! Turning an FP32 graph into an INT8 one in explicit (QDQ) form: each convolution and matrix
//! product reads its activation through QuantizeLinear/DequantizeLinear with the calibrated
//! scale, and its weights as INT8 constants through DequantizeLinear with one scale per output
//! channel. The CPU reference runs this form as it is (simulated quantization, exact to the
//! INT8 rounding); the GPU backend folds the pairs into INT8 kernels.

use crate::collect::{is_quantizable, residual_output, residual_side_inputs};
use crate::{CalibCache, QuantError};
use kiln_ir::ops::elementwise::UnaryOp;
use kiln_ir::ops::{ElementwiseOp, LinalgOp, Op, QuantOp};
use kiln_ir::{DType, Graph, NodeId, Tensor, TypeInfo, Value, ValueInfo};
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// A precision a layer may be asked to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// INT8 inputs and weights.
    Int8,
    /// FP16 (on the GPU; the CPU reference computes it in FP32).
    Fp16,
    /// FP32.
    Fp32,
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Precision, String> {
        match s {
            "int8" => Ok(Precision::Int8),
            "fp16" => Ok(Precision::Fp16),
            "fp32" => Ok(Precision::Fp32),
            _ => Err(format!("unknown precision '{s}': expected int8, fp16 or fp32")),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::Int8 => "int8",
            Precision::Fp16 => "fp16",
            Precision::Fp32 => "fp32",
        })
    }
}

/// Where a layer ended up and why.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerPrecision {
    /// The node.
    pub node: String,
    /// The model's nodes it computes, when fusion made it (a Conv with its BatchNorm folded
    /// in); empty otherwise.
    pub covers: Vec<String>,
    /// Its op.
    pub op: String,
    /// The precision it runs in.
    pub precision: Precision,
    /// Why, when not INT8.
    pub reason: Option<String>,
}

/// Symmetric per-channel INT8 weights: `w ≈ q * scale[c]` along `axis`.
pub fn quantize_weights(w: &Tensor, axis: usize) -> Result<(Tensor, Tensor), QuantError> {
    let shape = w.shape().to_vec();
    if axis >= shape.len() {
        return Err(QuantError::Graph(format!("weight of shape {shape:?} has no axis {axis}")));
    }
    let v = w.to_f64_vec();
    let channels = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let chan = |i: usize| (i / inner) % channels;
    let mut amax = vec![0f64; channels];
    for (i, x) in v.iter().enumerate() {
        amax[chan(i)] = amax[chan(i)].max(x.abs());
    }
    let scales: Vec<f32> = amax.iter().map(|&a| if a > 0.0 { (a / 127.0) as f32 } else { 1.0 }).collect();
    let q: Vec<i8> = v
        .iter()
        .enumerate()
        .map(|(i, x)| round_half_even(x / scales[chan(i)] as f64).clamp(-127.0, 127.0) as i8)
        .collect();
    let q = Tensor::from_vec(shape, q).map_err(|e| QuantError::Graph(e.to_string()))?;
    let s = Tensor::from_vec(vec![channels], scales).map_err(|e| QuantError::Graph(e.to_string()))?;
    Ok((q, s))
}

/// Rounds half to even, as QuantizeLinear does.
pub fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 {
        2.0 * (x / 2.0).round()
    } else {
        r
    }
}

/// The output-channel axis of a layer's weight (input 1), if it has constant float weights.
fn weight_axis(g: &Graph, id: NodeId) -> Option<(Value, usize)> {
    let w = g.inputs_of(id).get(1).copied().flatten()?;
    let Op::Const(t) = &g.node(w.node).op else { return None };
    if !t.dtype().is_float() {
        return None;
    }
    let axis = match &g.node(id).op {
        Op::Linalg(LinalgOp::Conv(_)) => 0,
        Op::Linalg(LinalgOp::Gemm { trans_b: true, .. }) => 0,
        Op::Linalg(LinalgOp::Gemm { trans_b: false, .. }) => 1,
        Op::Linalg(LinalgOp::MatMul) if t.rank() == 2 => 1,
        _ => return None,
    };
    Some((w, axis))
}

/// Inserts the QDQ pairs for `scales` into a copy of `g`. Layers named in `overrides` (by
/// their own name or one of the nodes they cover) keep their precision; a layer whose activation has no scale stays FP32 (and says so).
pub fn quantize(
    g: &Graph,
    cache: &CalibCache,
    overrides: &HashMap<String, Precision>,
) -> Result<(Graph, Vec<LayerPrecision>), QuantError> {
    let mut out = g.clone();
    let mut report = vec![];
    // One Q/DQ pair per activation, shared by every layer that reads it.
    let mut dq_of: BTreeMap<Value, Value> = BTreeMap::new();
    // The layers quantized so far.
    let mut int8 = vec![];
    let order = g.topo_order().map_err(|e| QuantError::Graph(e.to_string()))?;
    for &id in &order {
        let n = g.node(id);
        if !is_quantizable(&n.op) {
            continue;
        }
        let entry = |precision, reason: Option<String>| LayerPrecision {
            node: n.name.clone(),
            covers: n.covers.clone(),
            op: n.op.name().to_string(),
            precision,
            reason,
        };
        // A layer fusion made (a Conv with its BatchNorm folded in) answers to the names of
        // the nodes it covers too.
        let asked = overrides.get(&n.name).or_else(|| n.covers.iter().find_map(|c| overrides.get(c)));
        if let Some(&p) = asked {
            if p != Precision::Int8 {
                report.push(entry(p, Some("override".into())));
                continue;
            }
        }
        let ins = g.inputs_of(id);
        // A product of two activations (attention's QK^T and PV) stays float unless asked
        // for: the fused attention kernel computes it faster than INT8 products with their
        // conversions around a softmax, and both of its operands would need per-tensor scales.
        let constant =
            |s: usize| ins.get(s).copied().flatten().is_some_and(|v| matches!(g.node(v.node).op, Op::Const(_)));
        if asked.is_none() && matches!(n.op, Op::Linalg(LinalgOp::MatMul)) && !constant(0) && !constant(1) {
            report.push(entry(
                Precision::Fp32,
                Some("a product of two activations (attention); `--precision NODE=int8` quantizes it".into()),
            ));
            continue;
        }
        let slots: Vec<usize> = if matches!(n.op, Op::Linalg(LinalgOp::MatMul)) { vec![0, 1] } else { vec![0] };
        let weight = weight_axis(g, id);
        // Every non-constant input needs a scale, and at most one input may be a weight.
        let mut acts = vec![];
        let mut missing = None;
        for s in slots {
            let Some(v) = ins.get(s).copied().flatten() else { continue };
            if weight.is_some_and(|(w, _)| w == v) {
                continue;
            }
            if matches!(g.node(v.node).op, Op::Const(_)) {
                missing = Some(format!("input {s} is a constant it cannot quantize per channel"));
                break;
            }
            let name = &g.value_info(v).name;
            match cache.scales.get(name) {
                Some(&scale) => acts.push((s, v, scale)),
                None => {
                    missing = Some(format!("no calibration scale for '{name}'"));
                    break;
                }
            }
        }
        if matches!(n.op, Op::Linalg(LinalgOp::Conv(_) | LinalgOp::Gemm { .. })) && weight.is_none() {
            missing = missing.or(Some("weights are not constant".into()));
        }
        if let Some(why) = missing {
            report.push(entry(Precision::Fp32, Some(why)));
            continue;
        }
        for (slot, v, scale) in acts {
            let dq = match dq_of.get(&v) {
                Some(&dq) => dq,
                None => {
                    let dq = qdq(&mut out, v, scale, &g.value_info(v).name)?;
                    dq_of.insert(v, dq);
                    dq
                }
            };
            out.set_input(id, slot, Some(dq));
        }
        if let Some((w, axis)) = weight {
            let Op::Const(t) = &g.node(w.node).op else { unreachable!("weight_axis checked") };
            let (q, s) = quantize_weights(t, axis)?;
            let like = t.dtype();
            let base = format!("{}.weight", n.name);
            let qv = out.add_const(format!("{base}.int8"), q);
            let sv = out.add_const(format!("{base}.scale"), s.cast(like));
            let op = Op::Quant(QuantOp::DequantizeLinear { axis: axis as i64, block_size: 0, output_dtype: None });
            let ty = TypeInfo::known(like, t.shape());
            let dq = out.add_node(
                format!("{base}.dq"),
                op,
                &[Some(qv), Some(sv)],
                vec![ValueInfo::tensor(format!("{base}.dq"), ty)],
            );
            out.set_input(id, 1, Some(Value { node: dq, slot: 0 }));
        }
        report.push(entry(Precision::Int8, None));
        int8.push(id);
    }
    quantize_residuals(g, &mut out, cache, &mut dq_of, &int8, &order)?;
    Ok((out, report))
}

/// A residual sum whose result is itself stored quantized (a ResNet block's `Relu(conv + x)`,
/// which the next block's convolution reads as INT8) reads through the same QDQ pairs any
/// input that is quantized anyway: the block input `x` then lives only as INT8, as TensorRT
/// and ONNX Runtime's QDQ models keep it, instead of being stored twice (INT8 for the next
/// convolution, float for the sum) with the block's last convolution computed once for each.
/// Of the inputs INT8 layers compute for this sum alone, the one computed last (the block's
/// last convolution) stays float, its epilogue taking the sum; the others (a downsampling
/// convolution's output) get QDQ pairs of their own, with their calibrated scales, so those
/// layers store INT8 too ([`residual_side_inputs`]). A sum whose result is read in float (a
/// transformer's residual, which a LayerNorm reads) keeps float inputs, but for the output of
/// a residual sum before it that is quantized anyway (a ResNet's last block, whose sum the
/// average pool reads in float, reads the block before's output as its next convolution
/// does), which would otherwise be computed twice as well.
fn quantize_residuals(
    g: &Graph,
    out: &mut Graph,
    cache: &CalibCache,
    dq_of: &mut BTreeMap<Value, Value>,
    int8: &[NodeId],
    order: &[NodeId],
) -> Result<(), QuantError> {
    for &id in order {
        let Some(v) = residual_output(g, id) else { continue };
        if !dq_of.contains_key(&v) {
            for (slot, input) in g.inputs_of(id).into_iter().enumerate() {
                if let Some(&dq) = input.filter(|&x| is_residual_output(g, x)).and_then(|x| dq_of.get(&x)) {
                    out.set_input(id, slot, Some(dq));
                }
            }
            continue;
        }
        for x in residual_side_inputs(g, id, order) {
            let name = &g.value_info(x).name;
            if let (false, true, Some(&scale)) =
                (dq_of.contains_key(&x), int8.contains(&x.node), cache.scales.get(name))
            {
                let dq = qdq(out, x, scale, name)?;
                dq_of.insert(x, dq);
            }
        }
        for (slot, input) in g.inputs_of(id).into_iter().enumerate() {
            if let Some(&dq) = input.and_then(|x| dq_of.get(&x)) {
                out.set_input(id, slot, Some(dq));
            }
        }
    }
    Ok(())
}

/// Whether `x` is what a residual sum hands on ([`residual_output`]: the sum, or the ReLU that
/// alone reads it).
fn is_residual_output(g: &Graph, x: Value) -> bool {
    let sum = match g.node(x.node).op {
        Op::Elementwise(ElementwiseOp::Unary(UnaryOp::Relu)) => g.inputs_of(x.node).first().copied().flatten(),
        _ => Some(x),
    };
    sum.is_some_and(|s| residual_output(g, s.node) == Some(x))
}

/// `DequantizeLinear(QuantizeLinear(v))` with a symmetric INT8 scale; returns the DQ value.
fn qdq(g: &mut Graph, v: Value, scale: f32, name: &str) -> Result<Value, QuantError> {
    let ty = g.value_info(v).ty.clone();
    let dtype = ty.dtype.unwrap_or(DType::F32);
    let s = g.add_const(format!("{name}.scale"), Tensor::scalar(scale).cast(dtype));
    let zp = g.add_const(format!("{name}.zero_point"), Tensor::scalar(0i8));
    let q_ty = TypeInfo { dtype: Some(DType::I8), shape: ty.shape.clone() };
    let q = g.add_node(
        format!("{name}.quantize"),
        Op::Quant(QuantOp::QuantizeLinear { axis: 1, block_size: 0, output_dtype: None, saturate: true }),
        &[Some(v), Some(s), Some(zp)],
        vec![ValueInfo::tensor(format!("{name}.int8"), q_ty)],
    );
    let dq = g.add_node(
        format!("{name}.dequantize"),
        Op::Quant(QuantOp::DequantizeLinear { axis: 1, block_size: 0, output_dtype: None }),
        &[Some(Value { node: q, slot: 0 }), Some(s), Some(zp)],
        vec![ValueInfo::tensor(format!("{name}.dq"), ty)],
    );
    Ok(Value { node: dq, slot: 0 })
}
