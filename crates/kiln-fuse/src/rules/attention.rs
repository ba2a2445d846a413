//! Attention: `softmax(Q Kᵀ · scale + mask) V` as exporters write it becomes one Attention node,
//! the head split and merge around it fold into Attention's 3-D form, and three projections of
//! one input into a packed QKV projection feeding `PackedAttention`.
//!
//! Three steps, each a rule, so that each can be tested and explained on its own:
//! 1. `attention`: MatMul(Softmax(scores), V) with scores = Q Kᵀ (divided or multiplied by a
//!    constant, plus an optional mask) over 4-D `[batch, heads, seq, head]` tensors.
//! 2. `attention-heads`: Reshape(Transpose(Attention(split(Q3), split(K3), split(V3)))) where
//!    split is Transpose(Reshape(X3, [b, s, h, d]), [0, 2, 1, 3]) is Attention over the 3-D
//!    `[batch, seq, hidden]` tensors directly.
//! 3. `attention-packed`: 3-D Attention whose Q, K and V are `x W + b` for one `x` and constant
//!    weights is PackedAttention over `x [Wq Wk Wv] + [bq bk bv]`. `attention-packed-int8` does
//!    the same for INT8 projections (the `qdq` rules' MatMulInteger epilogues over one quantized
//!    `x`, with one expression and per-column constants): one integer product over the joined
//!    weights, scales and biases.

use super::{add_const, add_equal, bound, konst, nodes_with_ops, scalar, shape, ty};
use crate::analysis::{EGraph, Fuse, Rewrite};
use crate::lang::KNode;
use egg::{rewrite as rw, Applier, Id, PatternAst, Subst, Symbol};
use kiln_ir::ops::attention::{AttentionAttrs, QkOutputMode};
use kiln_ir::ops::elementwise::BinaryOp;
use kiln_ir::ops::{AttentionOp, ElementwiseOp, FusedOp, LayoutOp, LinalgOp, NormOp};
use kiln_ir::{Op, Tensor};

/// The family's rules.
#[rustfmt::skip]
pub fn rules() -> Vec<Rewrite> {
    vec![
        rw!("attention";              "(MatMul (Softmax ?s) ?v)"          => { Sdpa }),
        rw!("attention-heads";        "(Reshape (Transpose ?a) ?shape)"   => { MergeHeads }),
        rw!("attention-packed";       "(Attention ?q ?k ?v ?mask)"        => { PackQkv }),
        rw!("attention-packed-nomask"; "(Attention ?q ?k ?v)"             => { PackQkv }),
        rw!("attention-packed-int8";  "(Attention ?q ?k ?v ?mask)"        => { PackQkvInt8 }),
        rw!("attention-packed-int8-nomask"; "(Attention ?q ?k ?v)"       => { PackQkvInt8 }),
    ]
}

fn perm(op: &Op) -> Option<Vec<i64>> {
    match op {
        Op::Layout(LayoutOp::Transpose { perm: Some(p) }) => Some(p.clone()),
        _ => None,
    }
}

/// The attributes of a plain scaled-dot-product attention.
fn attrs(heads: Option<usize>, scale: f32) -> AttentionAttrs {
    AttentionAttrs {
        q_num_heads: heads,
        kv_num_heads: heads,
        is_causal: false,
        scale: Some(scale),
        softcap: 0.0,
        qk_matmul_output_mode: QkOutputMode::Scores,
        softmax_precision: None,
    }
}

/// Where K comes from: Kᵀ is a 4-D Transpose of `source`, so K is `source` permuted by `perm`
/// (the identity when `None`).
#[derive(Clone)]
struct KeySource {
    source: Id,
    perm: Option<Vec<i64>>,
}

/// `(q, k, scale)` when `class` holds `Q Kᵀ` times a constant, Kᵀ a 4-D Transpose.
fn scaled_qk(eg: &EGraph, class: Id) -> Vec<(Id, KeySource, f64)> {
    let mut out = vec![];
    let push_qk = |qk: Id, scale: f64, out: &mut Vec<(Id, KeySource, f64)>| {
        for (n, op) in nodes_with_ops(eg, qk) {
            if !matches!(op, Op::Linalg(LinalgOp::MatMul)) {
                continue;
            }
            let (q, kt) = (n.args[0], n.args[1]);
            if ty(eg, q).rank() != Some(4) {
                continue;
            }
            for (t, top) in nodes_with_ops(eg, kt) {
                let Some(p) = perm(&top).filter(|p| p.len() == 4) else { continue };
                // Kᵀ = Transpose<p>(y), so K = Kᵀ with its last two dims swapped.
                let kp = vec![p[0], p[1], p[3], p[2]];
                let identity = kp == [0, 1, 2, 3];
                out.push((q, KeySource { source: t.args[0], perm: (!identity).then_some(kp) }, scale));
            }
        }
    };
    push_qk(class, 1.0, &mut out);
    for (n, op) in nodes_with_ops(eg, class) {
        let a = n.args.clone();
        match op {
            Op::Elementwise(ElementwiseOp::Binary(BinaryOp::Div)) => {
                if let Some(c) = scalar(eg, a[1]).filter(|&c| c != 0.0) {
                    push_qk(a[0], 1.0 / c, &mut out);
                }
            }
            Op::Elementwise(ElementwiseOp::Binary(BinaryOp::Mul)) => {
                if let Some(c) = scalar(eg, a[1]) {
                    push_qk(a[0], c, &mut out);
                } else if let Some(c) = scalar(eg, a[0]) {
                    push_qk(a[1], c, &mut out);
                }
            }
            _ => {}
        }
    }
    out
}

/// MatMul(Softmax(scores), V) is Attention(Q, K, V, mask).
struct Sdpa;

impl Applier<KNode, Fuse> for Sdpa {
    fn apply_one(&self, eg: &mut EGraph, root: Id, s: &Subst, _: Option<&PatternAst<KNode>>, _: Symbol) -> Vec<Id> {
        let (probs_in, v) = (bound(s, "?s"), bound(s, "?v"));
        if ty(eg, v).rank() != Some(4) {
            return vec![];
        }
        // The softmax must be over the last axis.
        let root_nodes = nodes_with_ops(eg, root);
        let softmax_ok = root_nodes.iter().any(|(n, _)| {
            n.is("MatMul")
                && nodes_with_ops(eg, n.args[0]).iter().any(|(m, op)| {
                    eg.find(m.args[0]) == eg.find(probs_in)
                        && matches!(op, Op::Norm(NormOp::Softmax { axis, coerce_2d }) if *axis == -1 || (*axis == 3 && !coerce_2d))
                })
        });
        if !softmax_ok {
            return vec![];
        }
        let mut found: Vec<(Id, KeySource, f64, Option<Id>)> =
            scaled_qk(eg, probs_in).into_iter().map(|(q, k, sc)| (q, k, sc, None)).collect();
        for (n, op) in nodes_with_ops(eg, probs_in) {
            if let Op::Elementwise(ElementwiseOp::Binary(BinaryOp::Add)) = op {
                for (sc, mask) in [(n.args[0], n.args[1]), (n.args[1], n.args[0])] {
                    if ty(eg, mask).dtype.is_some_and(|d| d.is_float()) {
                        found.extend(scaled_qk(eg, sc).into_iter().map(|(q, k, s)| (q, k, s, Some(mask))));
                    }
                }
            }
        }
        let mut changed = vec![];
        for (q, ks, scale, mask) in found {
            let k = match ks.perm {
                None => ks.source,
                Some(p) => {
                    let t =
                        eg.analysis.node(&Op::Layout(LayoutOp::Transpose { perm: Some(p) }), 1, vec![ks.source], None);
                    eg.add(t)
                }
            };
            let mut args = vec![q, k, v];
            args.extend(mask);
            let op = Op::Attention(AttentionOp::Attention(attrs(None, scale as f32)));
            changed.extend(add_equal(eg, root, &op, args));
        }
        changed
    }
}

/// `(x3, heads)` when `class` holds Transpose(Reshape(x3, [b, s, h, d]), [0, 2, 1, 3]) with
/// `x3` of shape `[b, s, h * d]`.
fn split_heads(eg: &EGraph, class: Id) -> Option<(Id, usize)> {
    let split = shape(eg, class)?;
    if split.len() != 4 {
        return None;
    }
    nodes_with_ops(eg, class).into_iter().find_map(|(t, op)| {
        if perm(&op)? != [0, 2, 1, 3] {
            return None;
        }
        let r = t.args[0];
        eg[r].nodes.iter().filter(|n| n.is("Reshape")).find_map(|n| {
            let x3 = n.args[0];
            let xs = shape(eg, x3)?;
            let rs = shape(eg, r)?;
            (xs.len() == 3 && rs.len() == 4 && rs[0] == xs[0] && rs[1] == xs[1] && rs[2] * rs[3] == xs[2])
                .then_some((x3, rs[2]))
        })
    })
}

/// The head split and merge around a 4-D Attention fold into its 3-D form.
struct MergeHeads;

impl Applier<KNode, Fuse> for MergeHeads {
    fn apply_one(&self, eg: &mut EGraph, root: Id, s: &Subst, _: Option<&PatternAst<KNode>>, _: Symbol) -> Vec<Id> {
        let a = bound(s, "?a");
        let (Some(out), Some(att)) = (shape(eg, root), shape(eg, a)) else { return vec![] };
        // The outer transpose brings heads back next to the head dim; the reshape merges them.
        let merged_ok = eg[root].nodes.iter().filter(|n| n.is("Reshape")).any(|n| {
            nodes_with_ops(eg, n.args[0])
                .iter()
                .any(|(m, op)| eg.find(m.args[0]) == eg.find(a) && perm(op) == Some(vec![0, 2, 1, 3]))
        });
        if !merged_ok || att.len() != 4 || out != [att[0], att[2], att[1] * att[3]] {
            return vec![];
        }
        let mut changed = vec![];
        for (n, op) in nodes_with_ops(eg, a) {
            let Op::Attention(AttentionOp::Attention(at)) = op else { continue };
            if at.q_num_heads.is_some() || at.is_causal || at.softcap != 0.0 || n.args.len() < 3 || n.args.len() > 4 {
                continue;
            }
            let (Some((q3, hq)), Some((k3, hk)), Some((v3, hv))) =
                (split_heads(eg, n.args[0]), split_heads(eg, n.args[1]), split_heads(eg, n.args[2]))
            else {
                continue;
            };
            if hq != hk || hk != hv {
                continue;
            }
            let mut args = vec![q3, k3, v3];
            args.extend(n.args.get(3).copied());
            let op = Op::Attention(AttentionOp::Attention(AttentionAttrs {
                q_num_heads: Some(hq),
                kv_num_heads: Some(hq),
                ..at
            }));
            changed.extend(add_equal(eg, root, &op, args));
        }
        changed
    }
}

/// `(x, W, b)` when `class` holds `x W + b` (either order) with constant 2-D `W` and 1-D `b`.
fn projection(eg: &EGraph, class: Id) -> Option<(Id, Id, Id)> {
    nodes_with_ops(eg, class).into_iter().find_map(|(n, op)| {
        if !matches!(op, Op::Elementwise(ElementwiseOp::Binary(BinaryOp::Add))) {
            return None;
        }
        [(n.args[0], n.args[1]), (n.args[1], n.args[0])].into_iter().find_map(|(mm, b)| {
            let bias = konst(eg, b).filter(|t| t.rank() == 1)?;
            nodes_with_ops(eg, mm).into_iter().find_map(|(m, mop)| {
                let w = konst(eg, m.args.get(1).copied()?)?;
                (matches!(mop, Op::Linalg(LinalgOp::MatMul)) && w.rank() == 2 && w.shape()[1] == bias.len())
                    .then_some((m.args[0], m.args[1], b))
            })
        })
    })
}

/// Concatenates 2-D tensors along dim 1, or 1-D ones along dim 0.
fn concat_last(parts: &[&Tensor]) -> Option<Tensor> {
    let rows = if parts[0].rank() == 2 { parts[0].shape()[0] } else { 1 };
    let cols: Vec<usize> = parts.iter().map(|t| t.len() / rows).collect();
    let vals: Vec<Vec<f64>> = parts.iter().map(|t| t.to_f64_vec()).collect();
    let mut out = Vec::with_capacity(parts.iter().map(|t| t.len()).sum());
    for r in 0..rows {
        for (v, &c) in vals.iter().zip(&cols) {
            out.extend_from_slice(&v[r * c..(r + 1) * c]);
        }
    }
    let total: usize = cols.iter().sum();
    let shape = if parts[0].rank() == 2 { vec![rows, total] } else { vec![total] };
    Tensor::from_vec(shape, out).ok().map(|t| t.cast(parts[0].dtype()))
}

/// 3-D Attention over three projections of one input is PackedAttention over one projection.
struct PackQkv;

impl Applier<KNode, Fuse> for PackQkv {
    fn apply_one(&self, eg: &mut EGraph, root: Id, s: &Subst, _: Option<&PatternAst<KNode>>, _: Symbol) -> Vec<Id> {
        let (q, k, v) = (bound(s, "?q"), bound(s, "?k"), bound(s, "?v"));
        let mask = s.get(super::var("?mask")).copied();
        let Some((heads, scale)) = packable_attention(eg, root, mask.is_some()) else { return vec![] };
        let (Some(pq), Some(pk), Some(pv)) = (projection(eg, q), projection(eg, k), projection(eg, v)) else {
            return vec![];
        };
        if eg.find(pq.0) != eg.find(pk.0) || eg.find(pk.0) != eg.find(pv.0) {
            return vec![];
        }
        let ws: Vec<_> = [pq.1, pk.1, pv.1].iter().filter_map(|&w| konst(eg, w)).collect();
        let bs: Vec<_> = [pq.2, pk.2, pv.2].iter().filter_map(|&b| konst(eg, b)).collect();
        if ws.len() != 3 || bs.len() != 3 || ws.iter().any(|w| w.shape() != ws[0].shape()) {
            return vec![];
        }
        let hidden = ws[0].shape()[1];
        if hidden % heads != 0 {
            return vec![];
        }
        let scale = scale.unwrap_or(1.0 / ((hidden / heads) as f32).sqrt());
        let (Some(w), Some(b)) = (concat_last(&[&ws[0], &ws[1], &ws[2]]), concat_last(&[&bs[0], &bs[1], &bs[2]]))
        else {
            return vec![];
        };
        let (w, b) = (add_const(eg, w), add_const(eg, b));
        let mm = eg.analysis.node(&Op::Linalg(LinalgOp::MatMul), 1, vec![pq.0, w], None);
        let mm = eg.add(mm);
        let add = eg.analysis.node(&Op::Elementwise(ElementwiseOp::Binary(BinaryOp::Add)), 1, vec![mm, b], None);
        let qkv = eg.add(add);
        eg.analysis.provenance.push((qkv, vec![q, k, v]));
        let mut args = vec![qkv];
        args.extend(mask);
        add_equal(eg, root, &Op::Fused(FusedOp::PackedAttention { num_heads: heads, scale }), args)
    }
}

/// The heads and scale of a 3-D Attention e-node in `root` that PackedAttention can take:
/// equal query and key-value heads, not causal, no softcap, `mask` present or not as matched.
fn packable_attention(eg: &EGraph, root: Id, mask: bool) -> Option<(usize, Option<f32>)> {
    nodes_with_ops(eg, root).into_iter().find_map(|(n, op)| match op {
        Op::Attention(AttentionOp::Attention(at))
            if n.args.len() == 3 + usize::from(mask)
                && at.q_num_heads.is_some()
                && at.q_num_heads == at.kv_num_heads
                && !at.is_causal
                && at.softcap == 0.0 =>
        {
            Some((at.q_num_heads?, at.scale))
        }
        _ => None,
    })
}

/// An INT8 projection in `class`: a MatMulInteger epilogue whose weight (input 1) is a
/// constant `[k, n]`: its base inputs, expression and the inputs after the base.
fn int8_projection(eg: &EGraph, class: Id) -> Option<(Vec<Id>, usize, kiln_ir::ops::Expr, Vec<Id>)> {
    nodes_with_ops(eg, class).into_iter().find_map(|(n, op)| match op {
        Op::Fused(FusedOp::Epilogue { base: LinalgOp::MatMulInteger, base_inputs, expr })
            if base_inputs >= 2 && n.args.len() >= base_inputs =>
        {
            let w = konst(eg, n.args[1])?;
            (w.rank() == 2).then(|| (n.args[..base_inputs].to_vec(), base_inputs, expr, n.args[base_inputs..].to_vec()))
        }
        _ => None,
    })
}

/// 3-D Attention over three INT8 projections of one quantized input is PackedAttention over
/// one INT8 projection: the weights joined along `n`, and each per-column constant of the
/// epilogue (scale, bias) joined too; the base inputs other than the weight (the input and its
/// zero points) and the expression must be the same in all three.
struct PackQkvInt8;

impl Applier<KNode, Fuse> for PackQkvInt8 {
    fn apply_one(&self, eg: &mut EGraph, root: Id, s: &Subst, _: Option<&PatternAst<KNode>>, _: Symbol) -> Vec<Id> {
        let (q, k, v) = (bound(s, "?q"), bound(s, "?k"), bound(s, "?v"));
        let mask = s.get(super::var("?mask")).copied();
        let Some((heads, scale)) = packable_attention(eg, root, mask.is_some()) else { return vec![] };
        let (Some(pq), Some(pk), Some(pv)) = (int8_projection(eg, q), int8_projection(eg, k), int8_projection(eg, v))
        else {
            return vec![];
        };
        let same_base = |a: &[Id], b: &[Id]| {
            a.len() == b.len() && a.iter().zip(b).enumerate().all(|(i, (&x, &y))| i == 1 || eg.find(x) == eg.find(y))
        };
        if pq.1 != pk.1
            || pk.1 != pv.1
            || pq.2 != pk.2
            || pk.2 != pv.2
            || pq.3.len() != pk.3.len()
            || pk.3.len() != pv.3.len()
        {
            return vec![];
        }
        if !same_base(&pq.0, &pk.0) || !same_base(&pk.0, &pv.0) {
            return vec![];
        }
        let ws: Vec<_> = [pq.0[1], pk.0[1], pv.0[1]].iter().filter_map(|&w| konst(eg, w)).collect();
        if ws.len() != 3 || ws.iter().any(|w| w.shape() != ws[0].shape()) {
            return vec![];
        }
        let n = ws[0].shape()[1];
        if n % heads != 0 {
            return vec![];
        }
        // Each input after the base: per column (`[n]`, joined) in all three.
        let mut extras = vec![];
        for i in 0..pq.3.len() {
            let ts: Vec<_> = [pq.3[i], pk.3[i], pv.3[i]].iter().filter_map(|&c| konst(eg, c)).collect();
            if ts.len() != 3 || ts.iter().any(|t| t.shape() != [n]) {
                return vec![];
            }
            let Some(joined) = concat_last(&[&ts[0], &ts[1], &ts[2]]) else { return vec![] };
            extras.push(joined);
        }
        let Some(w) = concat_last(&[&ws[0], &ws[1], &ws[2]]) else { return vec![] };
        let mut args = pq.0.clone();
        args[1] = add_const(eg, w);
        for t in extras {
            let c = add_const(eg, t);
            args.push(c);
        }
        let op = Op::Fused(FusedOp::Epilogue { base: LinalgOp::MatMulInteger, base_inputs: pq.1, expr: pq.2.clone() });
        let node = eg.analysis.node(&op, 1, args, None);
        let qkv = eg.add(node);
        eg.analysis.provenance.push((qkv, vec![q, k, v]));
        let scale = scale.unwrap_or(1.0 / ((n / heads) as f32).sqrt());
        let mut pargs = vec![qkv];
        pargs.extend(mask);
        add_equal(eg, root, &Op::Fused(FusedOp::PackedAttention { num_heads: heads, scale }), pargs)
    }
}
