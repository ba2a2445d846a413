//! Explicit quantization: a convolution or matrix product whose inputs come through
//! DequantizeLinear computes on the integers directly.
//!
//! `Conv(DQ(xq, xs, xz), DQ(wq, ws, wz), b)` is `ConvInteger(xq, wq, xz, wz) * (xs * ws) + b`:
//! the integer product accumulates exactly in i32, then one multiply per output channel
//! dequantizes it. The multiply and the bias are pointwise, so the epilogue family folds them
//! (and whatever activation follows) into the integer op. Likewise for MatMul with
//! MatMulInteger. Activation scales must be per tensor; weight scales per tensor or per output
//! channel; zero points may be absent (symmetric) or given (asymmetric).
//!
//! `QuantizeLinear(MaxPool(x))` is `MaxPool(QuantizeLinear(x))` with a positive per-tensor
//! scale: quantizing (divide, round, add the zero point, clamp) never reverses an order, so the
//! largest value quantizes to the largest integer. The quantize then folds into the producer's
//! epilogue and the pool reads and writes 8-bit integers (ResNet's stem pool).
//!
//! `DequantizeLinear(q, s, z)` with a constant per-tensor scale is the pointwise
//! `(Cast(q) - z) * s`, so a reader other than an integer op (a residual sum that reads the
//! block input in INT8) folds it into its own kernel and reads the 8-bit integers directly.

use super::{add_const, add_equal, bound, konst, nodes_with_ops, ty};
use crate::analysis::{EGraph, Fuse, Rewrite};
use crate::lang::{Head, KNode};
use egg::{rewrite as rw, Applier, Id, PatternAst, Subst, Symbol};
use kiln_ir::ops::elementwise::BinaryOp;
use kiln_ir::ops::pool::PoolOp;
use kiln_ir::ops::{ElementwiseOp, LinalgOp, QuantOp};
use kiln_ir::{DType, Op, Tensor};

/// The family's rules.
#[rustfmt::skip]
pub fn rules() -> Vec<Rewrite> {
    vec![
        rw!("qdq-conv";        "(Conv ?xd ?wd ?b)" => { Integer::Conv }),
        rw!("qdq-conv-nobias"; "(Conv ?xd ?wd)"    => { Integer::Conv }),
        rw!("qdq-matmul";      "(MatMul ?xd ?wd)"  => { Integer::MatMul }),
        rw!("qdq-gemm";        "(Gemm ?xd ?wd ?b)" => { Integer::Gemm }),
        rw!("qdq-gemm-nobias"; "(Gemm ?xd ?wd)"    => { Integer::Gemm }),
        rw!("qdq-maxpool";     "(QuantizeLinear ?p ?s ?z)" => { PoolFirst }),
        rw!("qdq-maxpool-nozp"; "(QuantizeLinear ?p ?s)"   => { PoolFirst }),
        rw!("qdq-dequantize";      "(DequantizeLinear ?q ?s ?z)" => { Pointwise }),
        rw!("qdq-dequantize-nozp"; "(DequantizeLinear ?q ?s)"    => { Pointwise }),
    ]
}

/// A 2-D constant transposed.
fn transpose_2d(t: &Tensor) -> Option<Tensor> {
    let [r, c] = *t.shape() else { return None };
    let v = t.to_f64_vec();
    let out: Vec<f64> = (0..c * r).map(|i| v[(i % r) * c + i / r]).collect();
    Tensor::from_vec(vec![c, r], out).ok().map(|x| x.cast(t.dtype()))
}

/// A dequantized value: the integer tensor, its scale values, its zero point (an absent
/// input when not given) and the DequantizeLinear axis.
struct Dequantized {
    q: Id,
    scale: Vec<f64>,
    zero_point: Id,
    axis: i64,
}

/// The DequantizeLinear in `class` of an 8-bit integer tensor with a constant scale (and a
/// constant or absent zero point), if any.
fn dequantized(eg: &mut EGraph, class: Id) -> Option<Dequantized> {
    let found = nodes_with_ops(eg, class).into_iter().find_map(|(n, op)| match op {
        Op::Quant(QuantOp::DequantizeLinear { axis, block_size: 0, output_dtype: None }) => {
            let q = n.args[0];
            let int8 = matches!(ty(eg, q).dtype, Some(DType::I8 | DType::U8));
            let scale = konst(eg, *n.args.get(1)?)?;
            let zp = n.args.get(2).copied().filter(|&z| !eg[z].data.tys.is_empty());
            let zp_ok = zp.is_none_or(|z| konst(eg, z).is_some());
            (int8 && zp_ok && scale.dtype().is_float()).then(|| (q, scale.to_f64_vec(), zp, axis))
        }
        _ => None,
    })?;
    let (q, scale, zp, axis) = found;
    let zero_point = match zp {
        Some(z) => z,
        None => eg.add(KNode::leaf("Absent", Head::Absent)),
    };
    Some(Dequantized { q, scale, zero_point, axis })
}

/// Which integer op an applier builds.
enum Integer {
    Conv,
    MatMul,
    /// A Gemm with alpha = beta = 1 and A not transposed: a MatMul plus a bias (a transposed
    /// constant B is transposed once, at build time).
    Gemm,
}

impl Applier<KNode, Fuse> for Integer {
    fn apply_one(&self, eg: &mut EGraph, root: Id, s: &Subst, _: Option<&PatternAst<KNode>>, _: Symbol) -> Vec<Id> {
        let (xd, wd) = (eg.find(bound(s, "?xd")), eg.find(bound(s, "?wd")));
        let bias = s.get(super::var("?b")).copied();
        let (Some(out_dtype), Some(rank)) = (ty(eg, root).dtype, ty(eg, root).rank()) else { return vec![] };
        if !eg.analysis.first_time(format!("qdq {} {xd} {wd} {bias:?}", eg.find(root))) {
            return vec![];
        }
        let (Some(x), Some(mut w)) = (dequantized(eg, xd), dequantized(eg, wd)) else { return vec![] };
        // The activation is quantized per tensor.
        if x.scale.len() != 1 {
            return vec![];
        }
        // The weight's dims (a second activation may have named ones, such as the batch).
        let Some(wdims) = eg[w.q].data.static_dims() else { return vec![] };
        let wshape: Vec<usize> = wdims.iter().map(|d| d.known().unwrap_or(0)).collect();
        let (int_op, channels, channel_axis) = match self {
            Integer::Conv => {
                let conv = nodes_with_ops(eg, root).into_iter().find_map(|(n, op)| match op {
                    Op::Linalg(LinalgOp::Conv(a)) if eg.find(n.args[0]) == xd && eg.find(n.args[1]) == wd => Some(a),
                    _ => None,
                });
                let Some(attrs) = conv else { return vec![] };
                (Op::Linalg(LinalgOp::ConvInteger(attrs)), wshape[0], 0i64)
            }
            Integer::MatMul => {
                // A batched product of two activations (attention) is quantized per tensor.
                if wshape.len() < 2 || wshape.len() > 2 && w.scale.len() != 1 {
                    return vec![];
                }
                (Op::Linalg(LinalgOp::MatMulInteger), wshape[wshape.len() - 1], wshape.len() as i64 - 1)
            }
            Integer::Gemm => {
                let gemm = nodes_with_ops(eg, root).into_iter().find_map(|(n, op)| match op {
                    Op::Linalg(LinalgOp::Gemm { alpha, beta, trans_a: false, trans_b })
                        if alpha == 1.0 && beta == 1.0 && eg.find(n.args[0]) == xd && eg.find(n.args[1]) == wd =>
                    {
                        Some(trans_b)
                    }
                    _ => None,
                });
                let (Some(trans_b), 2) = (gemm, wshape.len()) else { return vec![] };
                if trans_b {
                    // B is [N, K]: MatMulInteger wants [K, N], so transpose the constant (and
                    // its per-channel scale now lies along axis 1).
                    let Some(t) = konst(eg, w.q) else { return vec![] };
                    let Some(wt) = transpose_2d(&t) else { return vec![] };
                    if w.scale.len() > 1 && w.axis != 0 && w.axis != -2 {
                        return vec![];
                    }
                    if !eg[w.zero_point].data.tys.is_empty() && konst(eg, w.zero_point).is_none_or(|z| z.len() != 1) {
                        return vec![];
                    }
                    w.q = add_const(eg, wt);
                    w.axis = 1;
                    (Op::Linalg(LinalgOp::MatMulInteger), wshape[0], 1i64)
                } else {
                    (Op::Linalg(LinalgOp::MatMulInteger), wshape[1], 1i64)
                }
            }
        };
        // The weight's scale: one value, or one per output channel along its channel axis.
        let per_channel = w.scale.len() == channels && channels > 1;
        if !(w.scale.len() == 1
            || per_channel && (w.axis == channel_axis || w.axis == channel_axis - wshape.len() as i64))
        {
            return vec![];
        }
        // So is its zero point: MatMulInteger and ConvInteger take it per column / channel.
        let combined: Vec<f64> = w.scale.iter().map(|ws| ws * x.scale[0]).collect();
        let scale_shape = match (self, per_channel) {
            (_, false) => vec![],
            (Integer::Conv, true) => {
                let mut s = vec![channels];
                s.resize(rank - 1, 1);
                s
            }
            (Integer::MatMul | Integer::Gemm, true) => vec![channels],
        };
        let Ok(scale) = Tensor::from_vec(scale_shape.clone(), combined) else { return vec![] };
        let scale = add_const(eg, scale.cast(out_dtype));
        let acc = eg.analysis.node(&int_op, 1, vec![x.q, w.q, x.zero_point, w.zero_point], None);
        let acc = eg.add(acc);
        let cast = eg.analysis.node(
            &Op::Elementwise(ElementwiseOp::Cast { to: out_dtype, saturate: true }),
            1,
            vec![acc],
            None,
        );
        let cast = eg.add(cast);
        let mul = Op::Elementwise(ElementwiseOp::Binary(BinaryOp::Mul));
        let Some(bias) = bias else {
            return add_equal(eg, root, &mul, vec![cast, scale]);
        };
        // A bias is one value per output channel: shaped to broadcast over [N, M, ...] for a
        // Conv, over [M, N] for a Gemm.
        let Some(b) = konst(eg, bias) else { return vec![] };
        if b.len() != channels {
            return vec![];
        }
        let mut bshape = vec![channels];
        if let Integer::Conv = self {
            bshape.resize(rank - 1, 1);
        }
        let Ok(b) = b.as_ref().clone().reshape(bshape) else { return vec![] };
        let b = add_const(eg, b);
        let scaled = eg.analysis.node(&mul, 1, vec![cast, scale], None);
        let scaled = eg.add(scaled);
        add_equal(eg, root, &Op::Elementwise(ElementwiseOp::Binary(BinaryOp::Add)), vec![scaled, b])
    }
}

/// `QuantizeLinear(MaxPool(x), s, z)` as `MaxPool(QuantizeLinear(x, s, z))` (see the module
/// documentation): for a MaxPool without Indices and a constant positive per-tensor scale.
struct PoolFirst;

impl Applier<KNode, Fuse> for PoolFirst {
    fn apply_one(&self, eg: &mut EGraph, root: Id, s: &Subst, _: Option<&PatternAst<KNode>>, _: Symbol) -> Vec<Id> {
        let (p, scale) = (eg.find(bound(s, "?p")), eg.find(bound(s, "?s")));
        let zp = s.get(super::var("?z")).map(|&z| eg.find(z));
        let Some(t) = konst(eg, scale) else { return vec![] };
        if t.len() != 1 || !t.to_f64_vec()[0].is_finite() || t.to_f64_vec()[0] <= 0.0 {
            return vec![];
        }
        // The quantize of this class, reading `p` (its op carries the output type and axis).
        let quantize = nodes_with_ops(eg, root).into_iter().find_map(|(n, op)| match op {
            q @ Op::Quant(QuantOp::QuantizeLinear { block_size: 0, .. }) if eg.find(n.args[0]) == p => Some(q),
            _ => None,
        });
        let pool = eg[p].nodes.iter().find_map(|n| match eg.analysis.op_of(n) {
            Some((op, 1)) => match op.as_ref() {
                Op::Pool(PoolOp::MaxPool { .. }) => Some((op.into_owned(), n.args[0])),
                _ => None,
            },
            _ => None,
        });
        let (Some(quantize), Some((pool, x))) = (quantize, pool) else { return vec![] };
        if float_conv_below(eg, x, 4) {
            return vec![];
        }
        if !eg.analysis.first_time(format!("qdq-maxpool {} {p}", eg.find(root))) {
            return vec![];
        }
        let mut args = vec![x, scale];
        args.extend(zp);
        if super::infer_node(eg, &quantize, &args).is_none() {
            return vec![];
        }
        let q = eg.analysis.node(&quantize, 1, args, None);
        let q = eg.add(q);
        add_equal(eg, root, &pool, vec![q])
    }
}

/// Whether `class` is a float convolution, or pointwise work over one within `depth` steps (an
/// image network's stem kept float). Such a convolution runs on cuDNN, whose fused epilogue
/// is a bias and a ReLU at most: a quantize moved in front of the pool would run as a pass
/// of its own over the convolution's output, four times the pool's, so the pool keeps reading
/// floats and the quantize stays behind it.
fn float_conv_below(eg: &EGraph, class: Id, depth: usize) -> bool {
    eg[class].nodes.iter().any(|n| match eg.analysis.op_of(n).map(|(op, _)| op) {
        Some(op) if matches!(op.as_ref(), Op::Linalg(LinalgOp::Conv(_))) => is_float_conv(eg, n),
        Some(op) if matches!(op.as_ref(), Op::Elementwise(_)) && depth > 0 => {
            n.args.iter().any(|&a| float_conv_below(eg, a, depth - 1))
        }
        _ => false,
    })
}

/// Whether the convolution e-node `n` stays float: its input is not dequantized (else the
/// `qdq-conv` rules make it an integer op, whose epilogue takes any pointwise work).
pub(crate) fn is_float_conv(eg: &EGraph, n: &KNode) -> bool {
    !nodes_with_ops(eg, n.args[0]).iter().any(|(_, op)| matches!(op, Op::Quant(QuantOp::DequantizeLinear { .. })))
}

/// `DequantizeLinear(q, s, z)` as `(Cast(q) - z) * s` (see the module documentation): for an
/// 8-bit integer `q`, a constant per-tensor float scale and a constant or absent zero point.
struct Pointwise;

impl Applier<KNode, Fuse> for Pointwise {
    fn apply_one(&self, eg: &mut EGraph, root: Id, s: &Subst, _: Option<&PatternAst<KNode>>, _: Symbol) -> Vec<Id> {
        let (q, scale) = (eg.find(bound(s, "?q")), eg.find(bound(s, "?s")));
        let zp = s.get(super::var("?z")).map(|&z| eg.find(z)).filter(|&z| !eg[z].data.tys.is_empty());
        if !matches!(ty(eg, q).dtype, Some(DType::I8 | DType::U8)) {
            return vec![];
        }
        let Some(t) = konst(eg, scale) else { return vec![] };
        if t.len() != 1 || !t.dtype().is_float() {
            return vec![];
        }
        let z = match zp {
            None => 0.0,
            Some(z) => match konst(eg, z) {
                Some(z) if z.len() == 1 => z.to_f64_vec()[0],
                _ => return vec![],
            },
        };
        if !eg.analysis.first_time(format!("qdq-dequantize {}", eg.find(root))) {
            return vec![];
        }
        let to = t.dtype();
        let cast = Op::Elementwise(ElementwiseOp::Cast { to, saturate: false });
        let cast = eg.analysis.node(&cast, 1, vec![q], None);
        let mut x = eg.add(cast);
        if z != 0.0 {
            let zc = add_const(eg, Tensor::scalar(z as f32).cast(to));
            let sub = eg.analysis.node(&Op::Elementwise(ElementwiseOp::Binary(BinaryOp::Sub)), 1, vec![x, zc], None);
            x = eg.add(sub);
        }
        add_equal(eg, root, &Op::Elementwise(ElementwiseOp::Binary(BinaryOp::Mul)), vec![x, scale])
    }
}
