//! Normalization: the decomposed LayerNorm and RMSNorm that exporters write become one node,
//! and a decomposed softmax becomes Softmax.
//!
//! The patterns bind the statistics (`?var`, `?ms`, `?sum`) as classes; the appliers check what
//! computes them (a mean over the last axis, kept as a size-1 dim, of the right thing), because
//! ReduceMean's axes may be an attribute or an input depending on the opset.

use super::{add_const, add_equal, bound, nodes_with_ops, scalar, shape, ty};
use crate::analysis::{EGraph, Fuse, Rewrite};
use crate::lang::KNode;
use egg::{rewrite as rw, Applier, Id, PatternAst, Subst, Symbol};
use kiln_ir::ops::elementwise::BinaryOp;
use kiln_ir::ops::{ElementwiseOp, NormOp};
use kiln_ir::{Dim, Op, Tensor};

/// The family's rules.
#[rustfmt::skip]
pub fn rules() -> Vec<Rewrite> {
    vec![
        rw!("layernorm";          "(Add (Mul (Div ?d (Sqrt (Add ?var ?eps))) ?g) ?b)"          => { Norm::Layer }),
        rw!("layernorm-gamma-first"; "(Add (Mul ?g (Div ?d (Sqrt (Add ?var ?eps)))) ?b)"    => { Norm::Layer }),
        rw!("layernorm-no-bias";  "(Mul (Div ?d (Sqrt (Add ?var ?eps))) ?g)"                   => { Norm::LayerNoBias }),
        rw!("layernorm-shift-only"; "(Add (Div ?d (Sqrt (Add ?var ?eps))) ?b)"                 => { Norm::LayerShiftOnly }),
        rw!("layernorm-bare";     "(Div ?d (Sqrt (Add ?var ?eps)))"                            => { Norm::LayerBare }),
        rw!("rmsnorm";            "(Mul ?g (Mul ?x (Reciprocal (Sqrt (Add ?ms ?eps)))))"       => { Norm::Rms }),
        rw!("rmsnorm-gamma-last"; "(Mul (Mul ?x (Reciprocal (Sqrt (Add ?ms ?eps)))) ?g)"       => { Norm::Rms }),
        rw!("rmsnorm-div";        "(Mul ?g (Div ?x (Sqrt (Add ?ms ?eps))))"                    => { Norm::Rms }),
        rw!("rmsnorm-div-gamma-last"; "(Mul (Div ?x (Sqrt (Add ?ms ?eps))) ?g)"                => { Norm::Rms }),
        rw!("softmax";            "(Div (Exp ?e) ?sum)"                                        => { Norm::Softmax }),
    ]
}

/// Whether `class` holds a `kind` reduction of `input` over its last axis with the dim kept.
fn reduces_last(eg: &EGraph, class: Id, kind: &str, input: Id) -> bool {
    let (Some(out), Some(inp)) = (eg[class].data.static_dims(), eg[input].data.static_dims()) else { return false };
    let Some((last, lead)) = inp.split_last() else { return false };
    if out.len() != inp.len()
        || out[..lead.len()] != *lead
        || out[lead.len()] != Dim::Known(1)
        || *last == Dim::Known(1)
    {
        return false;
    }
    let input = eg.find(input);
    eg[class].nodes.iter().any(|n| n.is(kind) && n.args.first().map(|&a| eg.find(a)) == Some(input))
}

/// The `x` of `d = x - mean(x)` when `class` holds that.
fn centered(eg: &EGraph, d: Id) -> Option<Id> {
    nodes_with_ops(eg, d).into_iter().find_map(|(n, op)| match op {
        Op::Elementwise(ElementwiseOp::Binary(BinaryOp::Sub))
            if reduces_last(eg, n.args[1], "ReduceMean", n.args[0]) =>
        {
            Some(n.args[0])
        }
        _ => None,
    })
}

/// Whether `class` is the mean over the last axis of `v` squared (`Pow(v, 2)` or `v * v`).
fn mean_square(eg: &EGraph, class: Id, v: Id) -> bool {
    let v = eg.find(v);
    let squares: Vec<Id> = eg[class].nodes.iter().filter(|n| n.is("ReduceMean")).map(|n| n.args[0]).collect();
    squares.into_iter().any(|sq| {
        let is_square = nodes_with_ops(eg, sq).into_iter().any(|(n, op)| {
            let args: Vec<Id> = n.args.iter().map(|&a| eg.find(a)).collect();
            match op {
                Op::Elementwise(ElementwiseOp::Binary(BinaryOp::Pow)) => {
                    args[0] == v && scalar(eg, args[1]) == Some(2.0)
                }
                Op::Elementwise(ElementwiseOp::Binary(BinaryOp::Mul)) => args[0] == v && args[1] == v,
                _ => false,
            }
        });
        is_square && reduces_last(eg, class, "ReduceMean", sq)
    })
}

/// Whether `p` is a parameter vector over the last dim of `x`.
fn last_dim_vector(eg: &EGraph, p: Id, x: Id) -> bool {
    match (shape(eg, p), eg[x].data.static_dims()) {
        (Some(ps), Some(xs)) => {
            ps.len() == 1 && xs.last() == Some(&Dim::Known(ps[0])) && ty(eg, p).dtype == ty(eg, x).dtype
        }
        _ => false,
    }
}

/// Which normalization an applier builds.
enum Norm {
    Layer,
    LayerNoBias,
    /// A shift but no scale (clean-up removed a multiplication by ones).
    LayerShiftOnly,
    /// Neither scale nor shift.
    LayerBare,
    Rms,
    Softmax,
}

impl Applier<KNode, Fuse> for Norm {
    fn apply_one(&self, eg: &mut EGraph, root: Id, s: &Subst, _: Option<&PatternAst<KNode>>, _: Symbol) -> Vec<Id> {
        match self {
            Norm::Layer | Norm::LayerNoBias | Norm::LayerShiftOnly | Norm::LayerBare => {
                let Some(x) = centered(eg, bound(s, "?d")) else { return vec![] };
                let Some(eps) = scalar(eg, bound(s, "?eps")) else { return vec![] };
                if !mean_square(eg, bound(s, "?var"), bound(s, "?d")) {
                    return vec![];
                }
                let (Some(xs), Some(dtype)) = (eg[x].data.static_dims(), ty(eg, x).dtype) else { return vec![] };
                let Some(hidden) = xs.last().and_then(|d| d.known()) else { return vec![] };
                // Without a scale, LayerNormalization still takes one: ones.
                let ones = || Tensor::from_vec(vec![hidden], vec![1.0f32; hidden]).ok().map(|t| t.cast(dtype));
                let g = match self {
                    Norm::Layer | Norm::LayerNoBias => bound(s, "?g"),
                    _ => match ones() {
                        Some(t) => add_const(eg, t),
                        None => return vec![],
                    },
                };
                let mut args = vec![x, g];
                if let Norm::Layer | Norm::LayerShiftOnly = self {
                    args.push(bound(s, "?b"));
                }
                if !args[1..].iter().all(|&p| last_dim_vector(eg, p, x)) {
                    return vec![];
                }
                let op = Op::Norm(NormOp::LayerNormalization { axis: -1, epsilon: eps as f32, stash_type: 1 });
                add_equal(eg, root, &op, args)
            }
            Norm::Rms => {
                let (x, g) = (bound(s, "?x"), bound(s, "?g"));
                let Some(eps) = scalar(eg, bound(s, "?eps")) else { return vec![] };
                if !mean_square(eg, bound(s, "?ms"), x) || !last_dim_vector(eg, g, x) {
                    return vec![];
                }
                let op = Op::Norm(NormOp::RMSNormalization { axis: -1, epsilon: eps as f32, stash_type: 1 });
                add_equal(eg, root, &op, vec![x, g])
            }
            Norm::Softmax => {
                let (e, sum) = (bound(s, "?e"), bound(s, "?sum"));
                // The sum must be of this very exponential.
                let exp = eg.lookup(KNode { kind: Symbol::from("Exp"), head: crate::lang::Head::Plain, args: vec![e] });
                let Some(exp) = exp else { return vec![] };
                if !reduces_last(eg, sum, "ReduceSum", exp) {
                    return vec![];
                }
                // exp(x - max(x)) / sum is softmax(x); so is exp(x) / sum.
                let shifted = nodes_with_ops(eg, e).into_iter().find_map(|(n, op)| match op {
                    Op::Elementwise(ElementwiseOp::Binary(BinaryOp::Sub))
                        if reduces_last(eg, n.args[1], "ReduceMax", n.args[0]) =>
                    {
                        Some(n.args[0])
                    }
                    _ => None,
                });
                let x = shifted.unwrap_or(e);
                let op = Op::Norm(NormOp::Softmax { axis: -1, coerce_2d: false });
                add_equal(eg, root, &op, vec![x])
            }
        }
    }
}
