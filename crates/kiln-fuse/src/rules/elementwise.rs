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
use kiln_ir::ops::elementwise::{BinaryOp, UnaryOp};
use kiln_ir::ops::{ElementwiseOp, Expr, ExprNode, FusedOp, QuantOp};
use kiln_ir::{DType, Op};

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
/// legacy broadcasting), a `FusedElementwise`, or a QuantizeLinear that is one
/// ([`quantize_form`]).
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
        Op::Quant(QuantOp::QuantizeLinear { block_size: 0, output_dtype, .. }) => {
            quantize_form(eg, n, *output_dtype).map(|e| (e, vec![n.args[0]]))
        }
        _ => None,
    }
}

/// A QuantizeLinear of an f32 value to i8 or u8 with a constant per-tensor scale and zero
/// point, as the pointwise expression ONNX defines it by:
/// `Cast(Clip(Round(in0 / scale) + zero_point, lo, hi))`, dividing in f32 and rounding half
/// to even as the CPU reference does. So the producer of a quantized activation (a
/// convolution's epilogue above all) writes the 8-bit integers directly, instead of a float
/// tensor that a separate kernel quantizes.
fn quantize_form(eg: &EGraph, n: &KNode, output_dtype: Option<DType>) -> Option<Expr> {
    let x = *n.args.first()?;
    if super::ty(eg, x).dtype != Some(DType::F32) {
        return None;
    }
    let scale = super::konst(eg, *n.args.get(1)?)?;
    let zp = match n.args.get(2) {
        Some(&z) if !eg[z].data.tys.is_empty() => Some(super::konst(eg, z)?),
        _ => None,
    };
    let to = zp.as_ref().map(|z| z.dtype()).or(output_dtype).unwrap_or(DType::U8);
    let (lo, hi) = match to {
        DType::I8 => (-128.0, 127.0),
        DType::U8 => (0.0, 255.0),
        _ => return None,
    };
    if scale.len() != 1 || scale.dtype() != DType::F32 || zp.as_ref().is_some_and(|z| z.len() != 1) {
        return None;
    }
    let s = scale.to_f64_vec()[0];
    let z = zp.map_or(0.0, |z| z.to_f64_vec()[0]);
    let f32s = |value: f64| ExprNode::Scalar { value, dtype: DType::F32 };
    let op = |op: ElementwiseOp, args: Vec<usize>| ExprNode::Op { op, args };
    let mut nodes = vec![
        ExprNode::Input(0),
        f32s(s),
        op(ElementwiseOp::Binary(BinaryOp::Div), vec![0, 1]),
        op(ElementwiseOp::Unary(UnaryOp::Round), vec![2]),
    ];
    if z != 0.0 {
        nodes.extend([f32s(z), op(ElementwiseOp::Binary(BinaryOp::Add), vec![3, 4])]);
    }
    let last = nodes.len() - 1;
    nodes.push(op(ElementwiseOp::Clip { min: Some(lo), max: Some(hi) }, vec![last]));
    nodes.push(op(ElementwiseOp::Cast { to, saturate: false }, vec![last + 1]));
    Some(Expr { nodes })
}

/// Whether the e-node is a plain (not yet fused) elementwise op.
pub(crate) fn is_plain_pointwise(eg: &EGraph, n: &KNode) -> bool {
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
