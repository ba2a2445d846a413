//! Folds an inference-mode BatchNormalization into the Conv that feeds it.
//!
//! `BN(conv(x, W, b)) = conv(x, W * s, (b - mean) * s + B)` with `s = scale / sqrt(var + eps)`
//! per output channel, so the normalization costs nothing at run time. This is the constant
//! work TensorRT and ONNX Runtime do before anything else; the fusion stage builds on graphs
//! where it has happened.

use super::{Pass, PassContext};
use crate::ops::{LinalgOp, NormOp};
use crate::{Graph, IrError, NodeId, Op, Tensor, Value};

/// Folds `BatchNormalization(Conv(..))` into the Conv's weights and bias where every weight is
/// an f32 constant and the Conv's output feeds nothing else.
pub struct FoldBatchNorm;

fn const_f32(g: &Graph, v: Option<Value>) -> Option<&[f32]> {
    match &g.node(v?.node).op {
        Op::Const(t) => t.as_slice::<f32>().ok(),
        _ => None,
    }
}

/// The new weight and bias for one foldable (conv, bn) pair, or `None` if it does not fold.
fn folded(g: &Graph, conv: NodeId, bn: NodeId, eps: f32) -> Option<(Tensor, Tensor)> {
    let bn_in = g.inputs_of(bn);
    let conv_in = g.inputs_of(conv);
    let w_val = conv_in.get(1).copied().flatten()?;
    let Op::Const(w) = &g.node(w_val.node).op else { return None };
    let wv = w.as_slice::<f32>().ok()?;
    let m = *w.shape().first()?;
    let (scale, shift, mean, var) = (
        const_f32(g, bn_in.get(1).copied().flatten())?,
        const_f32(g, bn_in.get(2).copied().flatten())?,
        const_f32(g, bn_in.get(3).copied().flatten())?,
        const_f32(g, bn_in.get(4).copied().flatten())?,
    );
    if [scale.len(), shift.len(), mean.len(), var.len()].iter().any(|&n| n != m) || m == 0 {
        return None;
    }
    let bias = match conv_in.get(2).copied().flatten() {
        Some(b) => {
            let b = const_f32(g, Some(b))?;
            (b.len() == m).then_some(b)?.to_vec()
        }
        None => vec![0.0; m],
    };
    let per = wv.len() / m;
    let s: Vec<f32> = (0..m).map(|i| scale[i] / (var[i] + eps).sqrt()).collect();
    let new_w: Vec<f32> = wv.iter().enumerate().map(|(k, &x)| x * s[k / per]).collect();
    let new_b: Vec<f32> = (0..m).map(|i| (bias[i] - mean[i]) * s[i] + shift[i]).collect();
    Some((Tensor::from_vec(w.shape().to_vec(), new_w).ok()?, Tensor::from_vec(vec![m], new_b).ok()?))
}

impl Pass for FoldBatchNorm {
    fn name(&self) -> &'static str {
        "fold-batchnorm"
    }

    fn run(&self, graph: &mut Graph, _cx: &PassContext<'_>) -> Result<bool, IrError> {
        let mut changed = false;
        for bn in graph.topo_order()? {
            let Op::Norm(NormOp::BatchNormalization { epsilon, training_mode: false, .. }) = graph.node(bn).op else {
                continue;
            };
            // Only the normalized output may be used; running statistics outputs would be lost.
            let extra_used = (1..graph.node(bn).outputs.len()).any(|s| {
                let v = Value { node: bn, slot: s };
                !graph.users(v).is_empty() || graph.is_output(v)
            });
            let Some(x) = graph.inputs_of(bn).first().copied().flatten() else { continue };
            let conv = x.node;
            let is_conv = matches!(graph.node(conv).op, Op::Linalg(LinalgOp::Conv(_)));
            if extra_used || !is_conv || graph.users(x).len() != 1 || graph.is_output(x) {
                continue;
            }
            let Some((w, b)) = folded(graph, conv, bn, epsilon) else { continue };
            let name = graph.node(conv).name.clone();
            let w = graph.add_const(format!("{name}.folded_weight"), w);
            let b = graph.add_const(format!("{name}.folded_bias"), b);
            graph.set_input(conv, 1, Some(w));
            graph.set_input(conv, 2, Some(b));
            graph.replace_uses(Value { node: bn, slot: 0 }, x);
            graph.remove_node(bn);
            changed = true;
        }
        Ok(changed)
    }
}
