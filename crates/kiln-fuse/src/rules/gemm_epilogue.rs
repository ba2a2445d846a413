//! GEMM and convolution epilogues: Conv, ConvTranspose, Gemm or MatMul followed by pointwise
//! work (bias Add, residual Add, an activation, or any chain of them, SiLU, GELU and HardSwish
//! included) become one node that applies the work to the accumulator before it is stored.
//!
//! The rule absorbs one pointwise consumer at a time, so chains build up over iterations; the
//! elementwise family has already grouped multi-op activations (`x * sigmoid(x)`, GELU's erf
//! and tanh forms) into single consumers by then. The guard keeps the matrix op's shape: an
//! epilogue never broadcasts its output wider. When the matrix op's output is also needed
//! elsewhere, the fused form would compute it twice, and extraction's cost model refuses it.

use super::elementwise::{compose, pointwise_form, PointwiseOver, Producer};
use super::{add_equal, bound};
use crate::analysis::{EGraph, Fuse, Rewrite};
use crate::lang::KNode;
use egg::{rewrite as rw, Applier, Id, PatternAst, Subst, Symbol};
use kiln_ir::ops::{Expr, FusedOp, LinalgOp};
use kiln_ir::Op;

/// The family's rules.
#[rustfmt::skip]
pub fn rules() -> Vec<Rewrite> {
    vec![
        rw!("gemm-epilogue"; { PointwiseOver(Producer::Matrix) } => { AbsorbIntoEpilogue }),
    ]
}

/// A matrix op that takes an epilogue: its base op, how many inputs the base has, and the
/// epilogue so far (`None` for a bare matrix op).
pub(crate) fn matrix_base(op: &Op) -> Option<(LinalgOp, Option<(usize, Expr)>)> {
    match op {
        Op::Linalg(l @ (LinalgOp::MatMul | LinalgOp::Gemm { .. } | LinalgOp::Conv(_) | LinalgOp::ConvTranspose(_))) => {
            Some((l.clone(), None))
        }
        Op::Fused(FusedOp::Epilogue { base, base_inputs, expr }) => {
            Some((base.clone(), Some((*base_inputs, expr.clone()))))
        }
        _ => None,
    }
}

/// Absorbs each pointwise consumer in the matched class into each matrix producer in `?in`.
struct AbsorbIntoEpilogue;

impl Applier<KNode, Fuse> for AbsorbIntoEpilogue {
    fn apply_one(&self, eg: &mut EGraph, root: Id, s: &Subst, _: Option<&PatternAst<KNode>>, _: Symbol) -> Vec<Id> {
        let child = eg.find(bound(s, "?in"));
        if eg[child].data.static_dims().is_none() || eg[child].data.static_dims() != eg[root].data.static_dims() {
            return vec![];
        }
        let consumers: Vec<(Expr, Vec<Id>)> = eg[root].nodes.iter().filter_map(|n| pointwise_form(eg, n)).collect();
        let producers: Vec<(LinalgOp, usize, Expr, Vec<Id>, Vec<Id>)> = eg[child]
            .nodes
            .iter()
            .filter_map(|m| {
                let (op, _) = eg.analysis.op_of(m)?;
                let (base, epi) = matrix_base(op.as_ref())?;
                let (base_inputs, expr) = epi.unwrap_or((m.args.len(), Expr::input()));
                let base_args = m.args[..base_inputs.min(m.args.len())].to_vec();
                let mut inner_args = vec![child];
                inner_args.extend_from_slice(&m.args[base_inputs.min(m.args.len())..]);
                Some((base, base_inputs, expr, base_args, inner_args))
            })
            .collect();
        let mut changed = false;
        for (pe, pargs) in &consumers {
            for (k, &a) in pargs.iter().enumerate() {
                if eg.find(a) != child {
                    continue;
                }
                for (base, base_inputs, ee, base_args, inner_args) in &producers {
                    let Some((expr, args)) = compose(eg, pe, pargs, k, ee, inner_args, Some(child)) else { continue };
                    let mut node_args = base_args.clone();
                    node_args.extend_from_slice(&args[1..]);
                    let op = Op::Fused(FusedOp::Epilogue { base: base.clone(), base_inputs: *base_inputs, expr });
                    changed |= !add_equal(eg, root, &op, node_args).is_empty();
                }
            }
        }
        if changed {
            vec![root]
        } else {
            vec![]
        }
    }
}
