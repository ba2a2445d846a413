//! GEMM and convolution epilogues: Conv, ConvTranspose, Gemm or MatMul followed by pointwise
//! work (bias Add, residual Add, an activation, or any chain of them, SiLU, GELU and HardSwish
//! included) become one node that applies the work to the accumulator before it is stored.
//!
//! A second rule (`epilogue-input`) absorbs a pointwise producer of one of an epilogue's other
//! inputs (a residual, a bias computed at run time): in an INT8 FP16 build, the f16-to-f32
//! cast of a residual that the FP16 conversion put before an integer epilogue.
//!
//! The rule absorbs one pointwise consumer at a time, so chains build up over iterations; the
//! elementwise family has already grouped multi-op activations (`x * sigmoid(x)`, GELU's erf
//! and tanh forms) into single consumers by then. The guard keeps the matrix op's shape: an
//! epilogue never broadcasts its output wider. When the matrix op's output is also needed
//! elsewhere, the fused form would compute it twice, and extraction's cost model refuses it.

use super::elementwise::{compose, is_plain_pointwise, pointwise_form, PointwiseOver, Producer};
use super::{add_equal, bound};
use crate::analysis::{EGraph, Fuse, Rewrite};
use crate::lang::KNode;
use egg::{rewrite as rw, Applier, Id, PatternAst, SearchMatches, Searcher, Subst, Symbol, Var};
use kiln_ir::ops::{Expr, FusedOp, LinalgOp};
use kiln_ir::Op;

/// The family's rules.
#[rustfmt::skip]
pub fn rules() -> Vec<Rewrite> {
    vec![
        rw!("gemm-epilogue"; { PointwiseOver(Producer::Matrix) } => { AbsorbIntoEpilogue }),
        rw!("epilogue-input"; { EpilogueInputOver } => { AbsorbInputProducer }),
    ]
}

/// A matrix op that takes an epilogue: its base op, how many inputs the base has, and the
/// epilogue so far (`None` for a bare matrix op).
pub(crate) fn matrix_base(op: &Op) -> Option<(LinalgOp, Option<(usize, Expr)>)> {
    match op {
        Op::Linalg(
            l @ (LinalgOp::MatMul
            | LinalgOp::Gemm { .. }
            | LinalgOp::Conv(_)
            | LinalgOp::ConvTranspose(_)
            | LinalgOp::MatMulInteger
            | LinalgOp::ConvInteger(_)),
        ) => Some((l.clone(), None)),
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

/// Searches classes holding an epilogue node one of whose inputs past the base op's (slot
/// `base_inputs` on) is a class, not stored for other reasons, that holds a plain pointwise
/// producer; binds `?in` to that class.
struct EpilogueInputOver;

/// The epilogue e-nodes of a class: base op, base inputs, expression, and arguments.
fn epilogues(eg: &EGraph, class: Id) -> Vec<(LinalgOp, usize, Expr, Vec<Id>)> {
    eg[class]
        .nodes
        .iter()
        .filter_map(|n| match eg.analysis.op_of(n)?.0.as_ref() {
            Op::Fused(FusedOp::Epilogue { base, base_inputs, expr }) if *base_inputs <= n.args.len() => {
                Some((base.clone(), *base_inputs, expr.clone(), n.args.clone()))
            }
            _ => None,
        })
        .collect()
}

impl Searcher<KNode, Fuse> for EpilogueInputOver {
    fn search_eclass_with_limit(&self, eg: &EGraph, eclass: Id, limit: usize) -> Option<SearchMatches<'_, KNode>> {
        let mut substs: Vec<Subst> = vec![];
        let mut seen = vec![];
        for (_, base_inputs, _, args) in epilogues(eg, eclass) {
            for &a in &args[base_inputs..] {
                let a = eg.find(a);
                if a == eclass || seen.contains(&a) || eg[a].data.materialized {
                    continue;
                }
                if eg[a].nodes.iter().any(|m| is_plain_pointwise(eg, m)) {
                    seen.push(a);
                    let mut s = Subst::with_capacity(1);
                    s.insert(var_in(), a);
                    substs.push(s);
                    if substs.len() >= limit {
                        return Some(SearchMatches { eclass, substs, ast: None });
                    }
                }
            }
        }
        (!substs.is_empty()).then_some(SearchMatches { eclass, substs, ast: None })
    }

    fn vars(&self) -> Vec<Var> {
        vec![var_in()]
    }
}

fn var_in() -> Var {
    super::var("?in")
}

/// Substitutes each plain pointwise producer in `?in` for the epilogue inputs that read it,
/// in each epilogue node of the matched class.
struct AbsorbInputProducer;

impl Applier<KNode, Fuse> for AbsorbInputProducer {
    fn apply_one(&self, eg: &mut EGraph, root: Id, s: &Subst, _: Option<&PatternAst<KNode>>, _: Symbol) -> Vec<Id> {
        let child = eg.find(bound(s, "?in"));
        let producers: Vec<(Expr, Vec<Id>)> = eg[child]
            .nodes
            .iter()
            .filter(|m| is_plain_pointwise(eg, m))
            .filter_map(|m| pointwise_form(eg, m))
            .collect();
        let mut changed = false;
        for (base, base_inputs, expr, args) in epilogues(eg, root) {
            // The expression's input 0 is the accumulator, which no class names: the epilogue's
            // own class stands in for it (no producer reads it), pinned as input 0.
            let mut outer_args = vec![root];
            outer_args.extend_from_slice(&args[base_inputs..]);
            let Some(k) = outer_args.iter().skip(1).position(|&a| eg.find(a) == child).map(|p| p + 1) else {
                continue;
            };
            for (pe, pargs) in &producers {
                let Some((e, new_args)) = compose(eg, &expr, &outer_args, k, pe, pargs, Some(root)) else { continue };
                let mut node_args = args[..base_inputs].to_vec();
                node_args.extend_from_slice(&new_args[1..]);
                let op = Op::Fused(FusedOp::Epilogue { base: base.clone(), base_inputs, expr: e });
                changed |= !add_equal(eg, root, &op, node_args).is_empty();
            }
        }
        if changed {
            vec![root]
        } else {
            vec![]
        }
    }
}
