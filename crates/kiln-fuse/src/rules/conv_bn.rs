//! Constant work: BatchNormalization folded into the Conv, Gemm or MatMul before it, and
//! multiplications and additions by per-channel constants folded into weights and biases.
//!
//! The new weights are computed in f64 and stored in the weights' own type. A BatchNormalization
//! with nothing to fold into becomes a multiply-add by constants, which the elementwise family
//! then fuses with its neighbours.

use super::{add_const, add_equal, bound, konst, nodes_with_ops, ty};
use crate::analysis::{EGraph, Fuse, Rewrite};
use crate::lang::KNode;
use egg::{rewrite as rw, Applier, Id, PatternAst, Subst, Symbol};
use kiln_ir::ops::elementwise::BinaryOp;
use kiln_ir::ops::{ElementwiseOp, LinalgOp, NormOp};
use kiln_ir::{Op, Tensor};
use std::sync::Arc;

/// The family's rules.
#[rustfmt::skip]
pub fn rules() -> Vec<Rewrite> {
    vec![
        rw!("conv-bn";         "(BatchNormalization ?c ?s ?b ?m ?v)" => { FoldBatchNorm }),
        rw!("bn-affine";       "(BatchNormalization ?c ?s ?b ?m ?v)" => { BatchNormAsAffine }),
        rw!("conv-mul-const";  "(Mul ?c ?k)"                         => { FoldConst { add: false } }),
        rw!("const-mul-conv";  "(Mul ?k ?c)"                         => { FoldConst { add: false } }),
        rw!("conv-add-const";  "(Add ?c ?k)"                         => { FoldConst { add: true } }),
        rw!("const-add-conv";  "(Add ?k ?c)"                         => { FoldConst { add: true } }),
    ]
}

/// A float constant as f64s.
fn floats(t: &Tensor) -> Option<Vec<f64>> {
    t.dtype().is_float().then(|| t.to_f64_vec())
}

/// f64s back into a tensor of the given type and shape.
fn tensor_like(like: &Tensor, shape: Vec<usize>, v: Vec<f64>) -> Option<Tensor> {
    Tensor::from_vec(shape, v).ok().map(|t| t.cast(like.dtype()))
}

/// The per-channel scale and shift of an inference BatchNormalization: `y = x * k + d`.
fn bn_affine(eg: &EGraph, eps: f32, s: &Subst) -> Option<(Vec<f64>, Vec<f64>, Arc<Tensor>)> {
    let scale = konst(eg, bound(s, "?s"))?;
    let (b, m, v) = (
        floats(konst(eg, bound(s, "?b"))?.as_ref())?,
        floats(konst(eg, bound(s, "?m"))?.as_ref())?,
        floats(konst(eg, bound(s, "?v"))?.as_ref())?,
    );
    let sc = floats(&scale)?;
    let c = sc.len();
    if b.len() != c || m.len() != c || v.len() != c {
        return None;
    }
    let k: Vec<f64> = (0..c).map(|i| sc[i] / (v[i] + eps as f64).sqrt()).collect();
    let d: Vec<f64> = (0..c).map(|i| b[i] - m[i] * k[i]).collect();
    Some((k, d, scale))
}

/// The epsilon of the inference BatchNormalization nodes of the class (training mode and the
/// extra outputs are not folded).
fn bn_eps(eg: &EGraph, root: Id, s: &Subst) -> Option<f32> {
    let x = eg.find(bound(s, "?c"));
    nodes_with_ops(eg, root).into_iter().find_map(|(n, op)| match op {
        Op::Norm(NormOp::BatchNormalization { epsilon, training_mode: false, .. })
            if n.args.first().map(|&a| eg.find(a)) == Some(x) =>
        {
            Some(epsilon)
        }
        _ => None,
    })
}

/// Scales the output channels of a matrix op by `k` and then adds `d` (per channel), by
/// rewriting its weights and bias. Returns the new node's op and arguments.
fn fold_into(eg: &mut EGraph, n: &KNode, op: &Op, k: &[f64], d: &[f64]) -> Option<(Op, Vec<Id>)> {
    let c = k.len();
    match op {
        Op::Linalg(LinalgOp::Conv(_)) => {
            let w = konst(eg, n.args[1])?;
            if w.shape().first() != Some(&c) {
                return None;
            }
            let per = w.len() / c;
            let wv = floats(&w)?;
            let nw: Vec<f64> = wv.iter().enumerate().map(|(i, x)| x * k[i / per]).collect();
            let bias = match n.args.get(2) {
                Some(&b) if !eg[b].data.tys.is_empty() => floats(konst(eg, b)?.as_ref())?,
                _ => vec![0.0; c],
            };
            if bias.len() != c {
                return None;
            }
            let nb: Vec<f64> = (0..c).map(|i| bias[i] * k[i] + d[i]).collect();
            let nw = add_const(eg, tensor_like(&w, w.shape().to_vec(), nw)?);
            let nb = add_const(eg, tensor_like(&w, vec![c], nb)?);
            Some((op.clone(), vec![n.args[0], nw, nb]))
        }
        Op::Linalg(LinalgOp::Gemm { alpha, beta, trans_a, trans_b }) => {
            let w = konst(eg, n.args[1])?;
            let (rows, cols) = match *w.shape() {
                [r, cc] => (r, cc),
                _ => return None,
            };
            let wv = floats(&w)?;
            let nw: Vec<f64> = if *trans_b {
                if rows != c {
                    return None;
                }
                wv.iter().enumerate().map(|(i, x)| x * k[i / cols]).collect()
            } else {
                if cols != c {
                    return None;
                }
                wv.iter().enumerate().map(|(i, x)| x * k[i % cols]).collect()
            };
            let bias = match n.args.get(2) {
                Some(&b) if !eg[b].data.tys.is_empty() => {
                    let t = konst(eg, b)?;
                    let v = floats(&t)?;
                    match v.len() {
                        1 => vec![v[0]; c],
                        l if l == c && t.rank() <= 1 || t.shape() == [1, c] => v,
                        _ => return None,
                    }
                }
                _ => vec![0.0; c],
            };
            let nb: Vec<f64> = (0..c).map(|i| bias[i] * *beta as f64 * k[i] + d[i]).collect();
            let nw = add_const(eg, tensor_like(&w, w.shape().to_vec(), nw)?);
            let nb = add_const(eg, tensor_like(&w, vec![c], nb)?);
            let op = Op::Linalg(LinalgOp::Gemm { alpha: *alpha, beta: 1.0, trans_a: *trans_a, trans_b: *trans_b });
            Some((op, vec![n.args[0], nw, nb]))
        }
        _ => None,
    }
}

/// `BatchNormalization(Conv(x, W, B))` is `Conv(x, W', B')`, and likewise for Gemm.
struct FoldBatchNorm;

impl Applier<KNode, Fuse> for FoldBatchNorm {
    fn apply_one(&self, eg: &mut EGraph, root: Id, s: &Subst, _: Option<&PatternAst<KNode>>, _: Symbol) -> Vec<Id> {
        let Some(eps) = bn_eps(eg, root, s) else { return vec![] };
        let Some((k, d, _)) = bn_affine(eg, eps, s) else { return vec![] };
        let mut changed = vec![];
        for (n, op) in nodes_with_ops(eg, bound(s, "?c")) {
            if !eg.analysis.first_time(format!("conv-bn {} {n:?}", eg.find(root))) {
                continue;
            }
            if let Some((op, args)) = fold_into(eg, &n, &op, &k, &d) {
                changed.extend(add_equal(eg, root, &op, args));
            }
        }
        changed
    }
}

/// An inference BatchNormalization with constant parameters is `x * k + d` with per-channel
/// constants shaped to broadcast over `[N, C, ...]`.
struct BatchNormAsAffine;

impl Applier<KNode, Fuse> for BatchNormAsAffine {
    fn apply_one(&self, eg: &mut EGraph, root: Id, s: &Subst, _: Option<&PatternAst<KNode>>, _: Symbol) -> Vec<Id> {
        if !eg.analysis.first_time(format!("bn-affine {}", eg.find(root))) {
            return vec![];
        }
        let Some(eps) = bn_eps(eg, root, s) else { return vec![] };
        let Some((k, d, like)) = bn_affine(eg, eps, s) else { return vec![] };
        let x = bound(s, "?c");
        let Some(rank) = ty(eg, x).rank().filter(|&r| r >= 2) else { return vec![] };
        let mut shape = vec![k.len()];
        shape.resize(rank - 1, 1);
        let dtype_like = match ty(eg, x).dtype {
            Some(dt) => like.cast(dt),
            None => return vec![],
        };
        let (Some(kt), Some(dt)) = (tensor_like(&dtype_like, shape.clone(), k), tensor_like(&dtype_like, shape, d))
        else {
            return vec![];
        };
        let (kc, dc) = (add_const(eg, kt), add_const(eg, dt));
        let mul = eg.analysis.node(&Op::Elementwise(ElementwiseOp::Binary(BinaryOp::Mul)), 1, vec![x, kc], None);
        let mul = eg.add(mul);
        add_equal(eg, root, &Op::Elementwise(ElementwiseOp::Binary(BinaryOp::Add)), vec![mul, dc])
    }
}

/// `Conv(x, W, B) * k` and `Conv(x, W, B) + k` for a constant `k` that is a scalar or one
/// value per output channel fold into `W` and `B`.
struct FoldConst {
    add: bool,
}

/// The per-channel values of `k` for an output of `out_shape` with channels on dim 1.
fn per_channel(k: &Tensor, out_shape: &[usize]) -> Option<Vec<f64>> {
    let c = *out_shape.get(1)?;
    let v = floats(k)?;
    if v.len() == 1 && k.rank() <= out_shape.len() {
        return Some(vec![v[0]; c]);
    }
    // Right-aligned against the output, every dim is 1 but the channel dim.
    let r = k.rank();
    if r > out_shape.len() || r + 1 < out_shape.len() {
        return None;
    }
    let off = out_shape.len() - r;
    let ok = k.shape().iter().enumerate().all(|(i, &d)| if i + off == 1 { d == c } else { d == 1 });
    ok.then_some(v)
}

impl Applier<KNode, Fuse> for FoldConst {
    fn apply_one(&self, eg: &mut EGraph, root: Id, s: &Subst, _: Option<&PatternAst<KNode>>, _: Symbol) -> Vec<Id> {
        let (c, kid) = (bound(s, "?c"), bound(s, "?k"));
        let (Some(k), Some(out)) = (konst(eg, kid), ty(eg, c).concrete_shape()) else { return vec![] };
        if eg.find(c) == eg.find(kid) || ty(eg, root).concrete_shape().as_ref() != Some(&out) {
            return vec![];
        }
        let Some(kv) = per_channel(&k, &out) else { return vec![] };
        let (scale, shift) = if self.add { (vec![1.0; kv.len()], kv) } else { (kv, vec![0.0; out[1]]) };
        let rule = if self.add { "conv-add-const" } else { "conv-mul-const" };
        let mut changed = vec![];
        for (n, op) in nodes_with_ops(eg, c) {
            if !matches!(op, Op::Linalg(LinalgOp::Conv(_))) {
                continue;
            }
            if !eg.analysis.first_time(format!("{rule} {} {n:?} {}", eg.find(root), eg.find(kid))) {
                continue;
            }
            if let Some((op, args)) = fold_into(eg, &n, &op, &scale, &shift) {
                changed.extend(add_equal(eg, root, &op, args));
            }
        }
        changed
    }
}
