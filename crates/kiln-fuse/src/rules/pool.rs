//! Max pooling before a convolution's bias and ReLU.
//!
//! `MaxPool(Relu(Conv(x, w, b)))` is `Relu(MaxPool(Conv(x, w)) + b)`: adding a per-channel
//! constant and taking the ReLU never reverse an order within a channel, and rounding is
//! monotone too, so the largest value of a window comes out the same, bit for bit (padding
//! cells are -inf either way). The bias and the ReLU then run over the pooled tensor, a
//! quarter of the convolution's output for ResNet's 3x3 stride-2 stem pool, together with
//! whatever pointwise work follows (the quantize of an INT8 build), and the convolution is a
//! plain one. Without the ReLU the rule is the same with the bias alone. Only for a float
//! convolution (cuDNN's, whose fused epilogue is slow or absent): an integer one takes the
//! bias, ReLU and quantize into its own epilogue at no cost.

use super::{add_const, add_equal, bound, konst, nodes_with_ops, ty};
use crate::analysis::{EGraph, Fuse, Rewrite};
use crate::lang::KNode;
use egg::{rewrite as rw, Applier, Id, PatternAst, Subst, Symbol};
use kiln_ir::ops::elementwise::{BinaryOp, UnaryOp};
use kiln_ir::ops::pool::PoolOp;
use kiln_ir::ops::{ElementwiseOp, LinalgOp};
use kiln_ir::Op;

/// The family's rules.
#[rustfmt::skip]
pub fn rules() -> Vec<Rewrite> {
    vec![
        rw!("pool-before-bias"; "(MaxPool ?y)" => { PoolBeforeBias }),
    ]
}

/// See the module documentation.
struct PoolBeforeBias;

impl Applier<KNode, Fuse> for PoolBeforeBias {
    fn apply_one(&self, eg: &mut EGraph, root: Id, s: &Subst, _: Option<&PatternAst<KNode>>, _: Symbol) -> Vec<Id> {
        let y = eg.find(bound(s, "?y"));
        // The pool of this class, reading `y`, without the Indices output.
        let pool = nodes_with_ops(eg, root).into_iter().find_map(|(n, op)| match op {
            p @ Op::Pool(PoolOp::MaxPool { .. }) if eg.find(n.args[0]) == y && eg.analysis.op_of(&n)?.1 == 1 => Some(p),
            _ => None,
        });
        let Some(pool) = pool else { return vec![] };
        // `y` is Relu(conv) or the convolution itself.
        let relu = Op::Elementwise(ElementwiseOp::Unary(UnaryOp::Relu));
        let under_relu = nodes_with_ops(eg, y)
            .into_iter()
            .find_map(|(n, op)| matches!(op, Op::Elementwise(ElementwiseOp::Unary(UnaryOp::Relu))).then(|| n.args[0]))
            .map(|c| eg.find(c));
        let conv_class = under_relu.unwrap_or(y);
        let conv = nodes_with_ops(eg, conv_class).into_iter().find_map(|(n, op)| match op {
            Op::Linalg(LinalgOp::Conv(a))
                if n.args.len() == 3 && !eg[n.args[2]].data.tys.is_empty() && super::qdq::is_float_conv(eg, &n) =>
            {
                Some((a, n.args[0], n.args[1], n.args[2]))
            }
            _ => None,
        });
        let Some((attrs, x, w, b)) = conv else { return vec![] };
        let (Some(bias), Some(rank)) = (konst(eg, b), ty(eg, conv_class).rank()) else { return vec![] };
        if bias.rank() != 1 || rank < 3 {
            return vec![];
        }
        if !eg.analysis.first_time(format!("pool-before-bias {} {conv_class}", eg.find(root))) {
            return vec![];
        }
        // The bias as [C, 1, ...], broadcasting over the pooled spatial dims.
        let mut shape = vec![bias.len()];
        shape.resize(rank - 1, 1);
        let Ok(bias) = bias.as_ref().clone().reshape(shape) else { return vec![] };
        let bias = add_const(eg, bias);
        let plain = eg.analysis.node(&Op::Linalg(LinalgOp::Conv(attrs)), 1, vec![x, w], None);
        let plain = eg.add(plain);
        let pooled = eg.analysis.node(&pool, 1, vec![plain], None);
        let pooled = eg.add(pooled);
        let add = Op::Elementwise(ElementwiseOp::Binary(BinaryOp::Add));
        if under_relu.is_none() {
            return add_equal(eg, root, &add, vec![pooled, bias]);
        }
        let biased = eg.analysis.node(&add, 1, vec![pooled, bias], None);
        let biased = eg.add(biased);
        add_equal(eg, root, &relu, vec![biased])
    }
}
