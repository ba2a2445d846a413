//! Elementwise chains: a pointwise op and a pointwise producer of one of its inputs become one
//! `FusedElementwise` node carrying their joint expression.
//!
//! Applied to saturation, this puts every connected group of pointwise ops into the e-graph as
//! one node. Whether a group is worth it (its intermediates used nowhere else, so nothing is
//! computed twice) is the cost model's call at extraction, not the rule's: a group whose
//! intermediate is also needed elsewhere costs an extra read and write and loses.

use super::{add_equal, bound};
use crate::analysis::{EGraph, Fuse, Rewrite};
use crate::lang::KNode;
use egg::{rewrite as rw, Applier, Id, PatternAst, SearchMatches, Searcher, Subst, Symbol, Var};
use kiln_ir::ops::{ElementwiseOp, Expr, ExprNode, FusedOp};
use kiln_ir::Op;

/// The largest expression a fused node may carry, in op steps, and its most inputs: bounds
/// that keep generated kernels within registers and the e-graph small.
pub(crate) const MAX_EXPR_OPS: usize = 48;
pub(crate) const MAX_EXPR_INPUTS: usize = 8;

/// The family's rules.
#[rustfmt::skip]
pub fn rules() -> Vec<Rewrite> {
    vec![
        rw!("fuse-elementwise"; { PointwiseOver(Producer::Pointwise) } => { MergePointwise }),
    ]
}

/// An e-node as an expression over its inputs: an elementwise op (all inputs present, no
/// legacy broadcasting) or a `FusedElementwise`.
pub(crate) fn pointwise_form(eg: &EGraph, n: &KNode) -> Option<(Expr, Vec<Id>)> {
    let (op, _) = eg.analysis.op_of(n)?;
    match op.as_ref() {
        Op::Elementwise(ElementwiseOp::LegacyBinary { .. }) => None,
        Op::Elementwise(e) => {
            if n.args.iter().any(|&a| eg[a].data.tys.is_empty()) {
                return None; // an absent optional input
            }
            Some((Expr::op(e.clone(), n.args.len()), n.args.clone()))
        }
        Op::Fused(FusedOp::Elementwise(e)) => Some((e.clone(), n.args.clone())),
        _ => None,
    }
}

/// Whether the e-node is a plain (not yet fused) elementwise op.
fn is_plain_pointwise(eg: &EGraph, n: &KNode) -> bool {
    matches!(eg.analysis.op_of(n), Some((op, _)) if matches!(op.as_ref(), Op::Elementwise(e) if !matches!(e, ElementwiseOp::LegacyBinary { .. })))
}

/// Which producers a [`PointwiseOver`] search looks for under a pointwise consumer.
#[derive(Clone, Copy)]
pub(crate) enum Producer {
    /// A plain elementwise op.
    Pointwise,
    /// A matrix op that takes an epilogue, or an epilogue node.
    Matrix,
}

/// Searches classes holding a pointwise e-node with an input class that holds a producer of the
/// wanted sort; binds `?in` to that input class.
pub(crate) struct PointwiseOver(pub(crate) Producer);

pub(crate) fn is_matrix(eg: &EGraph, n: &KNode) -> bool {
    matches!(eg.analysis.op_of(n), Some((op, _)) if super::gemm_epilogue::matrix_base(op.as_ref()).is_some())
}

impl Searcher<KNode, Fuse> for PointwiseOver {
    fn search_eclass_with_limit(&self, eg: &EGraph, eclass: Id, limit: usize) -> Option<SearchMatches<'_, KNode>> {
        let mut substs = vec![];
        let mut seen = vec![];
        for n in &eg[eclass].nodes {
            if pointwise_form(eg, n).is_none() {
                continue;
            }
            for &a in &n.args {
                let a = eg.find(a);
                if a == eclass || seen.contains(&a) || eg[a].data.materialized {
                    continue;
                }
                let hit = eg[a].nodes.iter().any(|m| match self.0 {
                    Producer::Pointwise => is_plain_pointwise(eg, m),
                    Producer::Matrix => is_matrix(eg, m),
                });
                if hit {
                    seen.push(a);
                    let mut s = Subst::with_capacity(1);
                    s.insert(var_in(), a);
                    substs.push(s);
                    if substs.len() >= limit {
                        break;
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

/// Turns one-element constant inputs into literals, when that keeps the type.
fn embed_scalars(eg: &EGraph, expr: &Expr, args: &[Id]) -> (Expr, Vec<Id>) {
    let mut e = expr.clone();
    let mut any = false;
    for node in e.nodes.iter_mut() {
        if let ExprNode::Input(i) = node {
            if let Some(t) = eg[args[*i]].data.konst.as_ref().filter(|t| t.len() == 1 && t.rank() == 0) {
                *node = ExprNode::Scalar { value: t.to_f64_vec()[0], dtype: t.dtype() };
                any = true;
            }
        }
    }
    if !any {
        return (expr.clone(), args.to_vec());
    }
    let (e, map) = e.canonical(&|i| i);
    (e, map.iter().map(|&i| args[i]).collect())
}

/// Substitutes `inner` (over `inner_args`) for input `at` of `outer` (over `outer_args`), with
/// inputs that carry the same class merged and scalars embedded. `pin` makes the class it
/// names input 0 (an epilogue's accumulator). `None` when the result is too big.
pub(crate) fn compose(
    eg: &EGraph,
    outer: &Expr,
    outer_args: &[Id],
    at: usize,
    inner: &Expr,
    inner_args: &[Id],
    pin: Option<Id>,
) -> Option<(Expr, Vec<Id>)> {
    if outer.num_inputs() != outer_args.len() || inner.num_inputs() != inner_args.len() {
        return None;
    }
    // Inputs of the consumer that read the same class become one, so that substituting the
    // producer replaces every use of it.
    let oargs: Vec<Id> = outer_args.iter().map(|&a| eg.find(a)).collect();
    let (outer, omap) = outer.canonical(&|i| oargs.iter().position(|&c| c == oargs[i]).unwrap_or(i));
    let oargs: Vec<Id> = omap.iter().map(|&i| oargs[i]).collect();
    let at = oargs.iter().position(|&c| c == eg.find(outer_args[at]))?;
    let e = outer.substitute(at, inner);
    let all: Vec<Id> = oargs.iter().chain(inner_args).map(|&a| eg.find(a)).collect();
    let first = |i: usize| all.iter().position(|&c| c == all[i]).unwrap_or(i);
    let pinned = pin.and_then(|p| all.iter().position(|&c| c == eg.find(p)));
    let (e, map) = e.canonical_pinned(&first, pinned);
    let args: Vec<Id> = map.iter().map(|&i| all[i]).collect();
    if pinned.is_none() {
        let (e, args) = embed_scalars(eg, &e, &args);
        return (e.num_ops() <= MAX_EXPR_OPS && args.len() <= MAX_EXPR_INPUTS).then_some((e, args));
    }
    // Keep the accumulator as input 0: embed only the others.
    let (rest, rest_args) = embed_scalars(eg, &e, &args);
    if rest_args.first() != args.first() {
        return None;
    }
    (rest.num_ops() <= MAX_EXPR_OPS && rest_args.len() <= MAX_EXPR_INPUTS).then_some((rest, rest_args))
}

/// Merges each plain pointwise producer in `?in` into each pointwise consumer in the matched
/// class.
struct MergePointwise;

impl Applier<KNode, Fuse> for MergePointwise {
    fn apply_one(&self, eg: &mut EGraph, root: Id, s: &Subst, _: Option<&PatternAst<KNode>>, _: Symbol) -> Vec<Id> {
        let child = eg.find(bound(s, "?in"));
        let parents: Vec<(Expr, Vec<Id>)> = eg[root].nodes.iter().filter_map(|n| pointwise_form(eg, n)).collect();
        let producers: Vec<(Expr, Vec<Id>)> = eg[child]
            .nodes
            .iter()
            .filter(|m| is_plain_pointwise(eg, m))
            .filter_map(|m| pointwise_form(eg, m))
            .collect();
        let mut changed = false;
        for (pe, pargs) in &parents {
            for (k, &a) in pargs.iter().enumerate() {
                if eg.find(a) != child {
                    continue;
                }
                for (ce, cargs) in &producers {
                    let Some((e, args)) = compose(eg, pe, pargs, k, ce, cargs, None) else { continue };
                    changed |= !add_equal(eg, root, &Op::Fused(FusedOp::Elementwise(e)), args).is_empty();
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
