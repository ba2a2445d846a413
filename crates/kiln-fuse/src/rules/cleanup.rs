//! Algebraic clean-up: identities that remove work outright. Every rule here makes the graph
//! strictly simpler, so none can lose to what it replaces.

use super::{add_equal, bound, is_const_all, nodes_with_ops, same_type, ty};
use crate::analysis::{EGraph, Rewrite};
use egg::{rewrite as rw, Applier, Id, PatternAst, Subst, Symbol};
use kiln_ir::ops::elementwise::ElementwiseOp;
use kiln_ir::ops::LayoutOp;
use kiln_ir::{DType, Op};

/// The family's rules.
#[rustfmt::skip]
pub fn rules() -> Vec<Rewrite> {
    vec![
        rw!("identity";            "(Identity ?x)"                   => "?x"),
        rw!("neg-neg";             "(Neg (Neg ?x))"                  => "?x"),
        rw!("relu-relu";           "(Relu (Relu ?x))"                => "(Relu ?x)"),
        rw!("mul-minus-one";       "(Mul ?x ?c)"                     => "(Neg ?x)" if all_equal("?c", -1.0) if keeps_type("?x")),
        rw!("mul-one";             "(Mul ?x ?c)"                     => "?x" if all_equal("?c", 1.0) if keeps_type("?x")),
        rw!("one-mul";             "(Mul ?c ?x)"                     => "?x" if all_equal("?c", 1.0) if keeps_type("?x")),
        rw!("add-zero";            "(Add ?x ?c)"                     => "?x" if all_equal("?c", 0.0) if keeps_type("?x")),
        rw!("zero-add";            "(Add ?c ?x)"                     => "?x" if all_equal("?c", 0.0) if keeps_type("?x")),
        rw!("sub-zero";            "(Sub ?x ?c)"                     => "?x" if all_equal("?c", 0.0) if keeps_type("?x")),
        rw!("div-one";             "(Div ?x ?c)"                     => "?x" if all_equal("?c", 1.0) if keeps_type("?x")),
        rw!("cast-noop";           "(Cast ?x)"                       => "?x" if keeps_type("?x")),
        rw!("cast-cast";           "(Cast ?y)"                       => { LosslessCastChain }),
        rw!("reshape-noop";        "(Reshape ?x ?s)"                 => "?x" if keeps_type("?x")),
        rw!("reshape-reshape";     "(Reshape (Reshape ?x ?a) ?b)"    => "(Reshape ?x ?b)" if no_copied_dims("?b")),
        rw!("flatten-noop";        "(Flatten ?x)"                    => "?x" if keeps_type("?x")),
        rw!("squeeze-unsqueeze";   "(Squeeze (Unsqueeze ?x ?a) ?b)"  => "?x" if keeps_type("?x")),
        rw!("unsqueeze-squeeze";   "(Unsqueeze (Squeeze ?x ?a) ?b)"  => "?x" if keeps_type("?x")),
        rw!("squeeze-unsqueeze-attr"; "(Squeeze (Unsqueeze ?x))"     => "?x" if keeps_type("?x")),
        rw!("unsqueeze-squeeze-attr"; "(Unsqueeze (Squeeze ?x))"     => "?x" if keeps_type("?x")),
        rw!("transpose-transpose"; "(Transpose ?y)"                  => { ComposeTransposes }),
    ]
}

/// Guard: the class bound to `v` is a constant whose every element is `value`.
fn all_equal(v: &'static str, value: f64) -> impl Fn(&mut EGraph, Id, &Subst) -> bool {
    move |eg, _, s| is_const_all(eg, bound(s, v), value)
}

/// Guard: the result has exactly the type of `v`'s class, so replacing it changes nothing
/// about shapes or element types.
fn keeps_type(v: &'static str) -> impl Fn(&mut EGraph, Id, &Subst) -> bool {
    move |eg, root, s| same_type(eg, root, bound(s, v))
}

/// Guard: a Reshape target with no 0 ("copy this dim from the input"), so it does not depend
/// on the shape of what it reshapes.
fn no_copied_dims(v: &'static str) -> impl Fn(&mut EGraph, Id, &Subst) -> bool {
    move |eg, _, s| super::konst(eg, bound(s, v)).is_some_and(|t| t.to_i64_vec().iter().all(|&d| d != 0))
}

/// Whether every value of `from` converts to `to` exactly.
fn lossless(from: DType, to: DType) -> bool {
    use DType::*;
    if from == to || from == Bool {
        return true;
    }
    matches!(
        (from, to),
        (F16 | BF16, F32 | F64)
            | (F32, F64)
            | (I8, I16 | I32 | I64 | F16 | BF16 | F32 | F64)
            | (U8, U16 | U32 | U64 | I16 | I32 | I64 | F16 | BF16 | F32 | F64)
            | (I16, I32 | I64 | F32 | F64)
            | (U16, U32 | U64 | I32 | I64 | F32 | F64)
            | (I32, I64 | F64)
            | (U32, U64 | I64 | F64)
    )
}

/// `Cast<to>(Cast<mid>(x))` is `Cast<to>(x)` when `x -> mid` loses nothing (and `x` itself
/// when `to` is x's type).
struct LosslessCastChain;

impl Applier<crate::lang::KNode, crate::analysis::Fuse> for LosslessCastChain {
    fn apply_one(
        &self,
        eg: &mut EGraph,
        root: Id,
        s: &Subst,
        _: Option<&PatternAst<crate::lang::KNode>>,
        _: Symbol,
    ) -> Vec<Id> {
        let y = bound(s, "?y");
        let (Some(to), Some(mid)) = (ty(eg, root).dtype, ty(eg, y).dtype) else { return vec![] };
        if to.size() == 1 && to.is_float() {
            return vec![];
        }
        let mut changed = vec![];
        for (n, op) in nodes_with_ops(eg, y) {
            if !matches!(op, Op::Elementwise(ElementwiseOp::Cast { .. })) {
                continue;
            }
            let x = n.args[0];
            let Some(from) = ty(eg, x).dtype else { continue };
            if !lossless(from, mid) {
                continue;
            }
            if from == to && same_type(eg, root, x) {
                if eg.union(root, x) {
                    changed.push(root);
                }
            } else {
                let cast = Op::Elementwise(ElementwiseOp::Cast { to, saturate: true });
                changed.extend(add_equal(eg, root, &cast, vec![x]));
            }
        }
        changed
    }
}

/// `Transpose<p2>(Transpose<p1>(x))` is `Transpose<p1∘p2>(x)`, or `x` when that is the
/// identity.
struct ComposeTransposes;

fn perm_of(op: &Op, rank: usize) -> Option<Vec<usize>> {
    match op {
        Op::Layout(LayoutOp::Transpose { perm: Some(p) }) => {
            let p: Vec<usize> =
                p.iter().map(|&d| if d < 0 { (d + rank as i64) as usize } else { d as usize }).collect();
            (p.len() == rank && p.iter().all(|&d| d < rank)).then_some(p)
        }
        Op::Layout(LayoutOp::Transpose { perm: None }) => Some((0..rank).rev().collect()),
        _ => None,
    }
}

impl Applier<crate::lang::KNode, crate::analysis::Fuse> for ComposeTransposes {
    fn apply_one(
        &self,
        eg: &mut EGraph,
        root: Id,
        s: &Subst,
        _: Option<&PatternAst<crate::lang::KNode>>,
        _: Symbol,
    ) -> Vec<Id> {
        let y = bound(s, "?y");
        let Some(rank) = ty(eg, root).rank() else { return vec![] };
        let outer: Vec<_> = nodes_with_ops(eg, root)
            .into_iter()
            .filter(|(n, _)| eg.find(n.args.first().copied().unwrap_or(root)) == eg.find(y))
            .filter_map(|(_, op)| perm_of(&op, rank))
            .collect();
        let mut changed = vec![];
        for p2 in outer {
            for (n, op) in nodes_with_ops(eg, y) {
                let Some(p1) = perm_of(&op, rank) else { continue };
                let x = n.args[0];
                let q: Vec<usize> = p2.iter().map(|&i| p1[i]).collect();
                if q.iter().enumerate().all(|(i, &d)| i == d) {
                    if same_type(eg, root, x) && eg.union(root, x) {
                        changed.push(root);
                    }
                } else {
                    let t = Op::Layout(LayoutOp::Transpose { perm: Some(q.iter().map(|&d| d as i64).collect()) });
                    changed.extend(add_equal(eg, root, &t, vec![x]));
                }
            }
        }
        changed
    }
}
