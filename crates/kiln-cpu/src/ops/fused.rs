//! CPU kernels for the ops fusion makes, defined by the ops they replace: an expression runs
//! its steps with the elementwise kernels, an epilogue runs the matrix op and then its
//! expression, packed attention splits Q, K and V and runs Attention.
//!
//! This is the reference the fused GPU kernels are checked against, so it favours being
//! obviously equal to the unfused graph over being fast.

use super::common::input;
use crate::{bail, OpError, OpResult};
use kiln_ir::ops::attention::{AttentionAttrs, QkOutputMode};
use kiln_ir::ops::{AttentionOp, Expr, ExprNode, FusedOp, LayoutOp};
use kiln_ir::Tensor;
use std::borrow::Cow;

pub(super) fn eval(op: &FusedOp, inputs: &[Option<&Tensor>], num_outputs: usize) -> OpResult {
    match op {
        FusedOp::Elementwise(expr) => {
            let ins: Vec<&Tensor> = (0..inputs.len()).map(|i| input(inputs, i)).collect::<Result<_, _>>()?;
            Ok(vec![eval_expr(expr, &ins)?])
        }
        FusedOp::Epilogue { base, base_inputs, expr } => {
            if inputs.len() < *base_inputs {
                bail!("epilogue node has {} inputs, its {} needs {base_inputs}", inputs.len(), base.name());
            }
            let acc = super::linalg::eval(base, &inputs[..*base_inputs], num_outputs.max(1))?.remove(0);
            let mut ins = vec![&acc];
            for i in *base_inputs..inputs.len() {
                ins.push(input(inputs, i)?);
            }
            Ok(vec![eval_expr(expr, &ins)?])
        }
        FusedOp::PackedAttention { num_heads, scale } => {
            let qkv = input(inputs, 0)?;
            if qkv.shape().len() != 3 || qkv.shape()[2] % (3 * num_heads) != 0 {
                bail!("packed QKV must be [batch, seq, 3 x {num_heads} heads x head size], found {:?}", qkv.shape());
            }
            let parts = super::layout::eval(&LayoutOp::Split { axis: 2, split: None }, &[Some(qkv)], 3)?;
            let attrs = AttentionAttrs {
                q_num_heads: Some(*num_heads),
                kv_num_heads: Some(*num_heads),
                is_causal: false,
                scale: Some(*scale),
                softcap: 0.0,
                qk_matmul_output_mode: QkOutputMode::Scores,
                softmax_precision: None,
            };
            let mask = inputs.get(1).copied().flatten();
            let args = [Some(&parts[0]), Some(&parts[1]), Some(&parts[2]), mask];
            let mut out = super::attention::eval(&AttentionOp::Attention(attrs), &args, 1)?;
            out.truncate(1);
            Ok(out)
        }
    }
}

/// Evaluates an expression step by step with the elementwise kernels.
pub(crate) fn eval_expr(expr: &Expr, inputs: &[&Tensor]) -> Result<Tensor, OpError> {
    expr.check().map_err(OpError::new)?;
    let mut vals: Vec<Cow<'_, Tensor>> = Vec::with_capacity(expr.nodes.len());
    for n in &expr.nodes {
        let v = match n {
            ExprNode::Input(i) => match inputs.get(*i) {
                Some(t) => Cow::Borrowed(*t),
                None => bail!("expression reads input {i}, the node has {}", inputs.len()),
            },
            ExprNode::Scalar { value, dtype } => Cow::Owned(Tensor::scalar(*value).cast(*dtype)),
            ExprNode::Op { op, args } => {
                let ins: Vec<Option<&Tensor>> = args.iter().map(|&a| Some(vals[a].as_ref())).collect();
                Cow::Owned(super::elementwise::eval(op, &ins, 1)?.remove(0))
            }
        };
        vals.push(v);
    }
    match vals.pop() {
        Some(v) => Ok(v.into_owned()),
        None => bail!("empty expression"),
    }
}
