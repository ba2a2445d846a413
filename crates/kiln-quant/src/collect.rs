//! Running the FP32 model over calibration data and collecting, for every tensor an INT8 layer
//! reads, its range and a histogram of its magnitudes.

use crate::{Histogram, QuantError};
use kiln_ir::ops::elementwise::{BinaryOp, UnaryOp};
use kiln_ir::ops::{ElementwiseOp, LinalgOp, Op};
use kiln_ir::{DType, Graph, NodeId, Tensor, Value};
use std::collections::BTreeMap;

/// Runs a graph on inputs (in graph-input order): the CPU reference or a GPU engine.
pub type Runner<'a> = dyn Fn(&Graph, &[Tensor]) -> Result<Vec<Tensor>, String> + 'a;

/// The layers calibration and quantization cover: convolutions and matrix products.
pub fn is_quantizable(op: &Op) -> bool {
    matches!(op, Op::Linalg(LinalgOp::Conv(_) | LinalgOp::Gemm { .. } | LinalgOp::MatMul))
}

/// The float activations quantizable layers read (not constants), with their names.
pub fn calibrated_values(g: &Graph) -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = vec![];
    for id in g.node_ids() {
        let n = g.node(id);
        if !is_quantizable(&n.op) {
            continue;
        }
        // MatMul may multiply two activations (attention); the others read weights in slot 1.
        let slots: &[usize] = if matches!(n.op, Op::Linalg(LinalgOp::MatMul)) { &[0, 1] } else { &[0] };
        let ins = g.inputs_of(id);
        for &s in slots {
            let Some(v) = ins.get(s).copied().flatten() else { continue };
            if matches!(g.node(v.node).op, Op::Const(_)) {
                continue;
            }
            let info = g.value_info(v);
            if info.ty.dtype.is_some_and(|d| d.is_float()) && !out.iter().any(|(_, x)| *x == v) {
                out.push((info.name.clone(), v));
            }
        }
    }
    // A residual sum whose result a layer reads quantized reads quantized the inputs that
    // layers compute for it alone, but for the one whose epilogue takes the sum
    // ([`residual_side_inputs`]), so those are calibrated as well.
    if let Ok(order) = g.topo_order() {
        for &id in &order {
            let Some(sum) = residual_output(g, id) else { continue };
            if !out.iter().any(|(_, x)| *x == sum) {
                continue;
            }
            for v in residual_side_inputs(g, id, &order) {
                let info = g.value_info(v);
                if info.ty.dtype.is_some_and(|d| d.is_float()) && !out.iter().any(|(_, x)| *x == v) {
                    out.push((info.name.clone(), v));
                }
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The inputs of residual sum `id` that quantizable layers compute for it alone (a ResNet
/// block's last convolution and its downsampling one), but for the one computed last in
/// `order`, whose epilogue will take the sum: the others can be stored quantized, as
/// TensorRT stores a downsampling branch, without a conversion of their own.
pub fn residual_side_inputs(g: &Graph, id: NodeId, order: &[NodeId]) -> Vec<Value> {
    let mut side: Vec<Value> = g
        .inputs_of(id)
        .into_iter()
        .flatten()
        .filter(|&v| is_quantizable(&g.node(v.node).op) && g.users(v).len() == 1 && !g.is_output(v))
        .collect();
    side.sort_by_key(|v| order.iter().position(|&n| n == v.node));
    side.pop();
    side
}

/// What a residual sum `id` (an Add) hands on: its output, or that of a ReLU that alone reads
/// it (ResNet's `Relu(conv + x)`). `None` for other nodes.
pub fn residual_output(g: &Graph, id: NodeId) -> Option<Value> {
    if !matches!(g.node(id).op, Op::Elementwise(ElementwiseOp::Binary(BinaryOp::Add))) {
        return None;
    }
    let v = Value { node: id, slot: 0 };
    match g.users(v)[..] {
        [(user, 0)]
            if !g.is_output(v) && matches!(g.node(user).op, Op::Elementwise(ElementwiseOp::Unary(UnaryOp::Relu))) =>
        {
            Some(Value { node: user, slot: 0 })
        }
        _ => Some(v),
    }
}

/// The graph with every calibrated value added as an output (after the original outputs).
fn observing(g: &Graph, values: &[(String, Value)]) -> Graph {
    let mut o = g.clone();
    for (name, v) in values {
        o.add_output(format!("__calib__{name}"), *v);
    }
    o
}

fn as_f32(t: &Tensor) -> Vec<f32> {
    match t.dtype() {
        DType::F32 => t.as_slice::<f32>().map(|s| s.to_vec()).unwrap_or_default(),
        _ => t.cast(DType::F32).as_slice::<f32>().map(|s| s.to_vec()).unwrap_or_default(),
    }
}

/// Histograms (of `bins` bins) of every calibrated value over the batches: one pass for the
/// ranges, one to fill the bins.
pub fn collect(
    g: &Graph,
    batches: &[Vec<Tensor>],
    bins: usize,
    run: &Runner<'_>,
) -> Result<BTreeMap<String, Histogram>, QuantError> {
    if batches.is_empty() {
        return Err(QuantError::Data("calibration needs at least one batch of inputs".into()));
    }
    let values = calibrated_values(g);
    let obs = observing(g, &values);
    let first = g.outputs.len();
    let mut ranges = vec![0f32; values.len()];
    for (b, inputs) in batches.iter().enumerate() {
        let outs = run(&obs, inputs).map_err(|e| QuantError::Data(format!("calibration batch {b}: {e}")))?;
        for (i, t) in outs[first..].iter().enumerate() {
            let m = as_f32(t).iter().filter(|x| x.is_finite()).fold(0f32, |a, x| a.max(x.abs()));
            ranges[i] = ranges[i].max(m);
        }
    }
    let mut hists: Vec<Histogram> = ranges.iter().map(|&r| Histogram::new(bins, r)).collect();
    for (b, inputs) in batches.iter().enumerate() {
        let outs = run(&obs, inputs).map_err(|e| QuantError::Data(format!("calibration batch {b}: {e}")))?;
        for (i, t) in outs[first..].iter().enumerate() {
            hists[i].add(&as_f32(t));
        }
    }
    Ok(values.into_iter().map(|(n, _)| n).zip(hists).collect())
}
