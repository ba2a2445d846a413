//! Elementwise nodes that have no expression form as they stand: binary ops with the
//! broadcasting of opsets before 7 (input 1 lined up with input 0 at an axis), and Clip with
//! an absent optional bound. Both become generated kernels.

use super::*;
use kiln_ir::ops::elementwise::VariadicOp;

impl Planner<'_> {
    /// A binary op whose input 1 lines up with input 0's dims from `axis` on: the generated
    /// kernel of the plain op, given input 1's strides over the output by hand.
    pub(super) fn legacy_binary(&mut self, id: NodeId, op: BinaryOp, axis: i64) -> Result<()> {
        let a = self.required(id, 0)?;
        let b = self.required(id, 1)?;
        let (ash, bsh) = (self.plan.buffers[a].shape.clone(), self.plan.buffers[b].shape.clone());
        let ax = if axis < 0 { axis + ash.len() as i64 } else { axis };
        if ax < 0 || ax as usize + bsh.len() > ash.len() {
            return Err(CudaError::Invalid(format!(
                "input 1 of shape {bsh:?} cannot line up with input 0 of shape {ash:?} at axis {axis}"
            )));
        }
        let ax = ax as usize;
        let bst = super::data::row_major(&bsh);
        let mut strides = vec![0i64; ash.len()];
        for (k, &n) in bsh.iter().enumerate() {
            if n == ash[ax + k] {
                if n != 1 {
                    strides[ax + k] = bst[k];
                }
            } else if n != 1 {
                return Err(CudaError::Invalid(format!(
                    "input 1 of shape {bsh:?} does not broadcast to input 0 of shape {ash:?} at axis {axis}"
                )));
            }
        }
        let expr = Expr::op(ElementwiseOp::Binary(op), 2);
        let dts = [self.plan.buffers[a].dtype, self.plan.buffers[b].dtype];
        let k = elementwise_kernel(&expr, &dts)?;
        let y = self.out(id, 0)?;
        if self.plan.buffers[y].shape != ash {
            return Err(CudaError::Invalid(format!(
                "the output is {:?}, input 0 is {ash:?}",
                self.plan.buffers[y].shape
            )));
        }
        let a_strides = broadcast_strides(&ash, &ash)?;
        self.launch_elementwise(id, k, vec![(a, a_strides), (b, strides)], y)
    }

    /// Clip with one bound absent: `min(x, max)` or `max(x, min)`, which clamp as Clip does
    /// (NaN stays NaN). With both absent it is a copy, `max(x)`.
    pub(super) fn clip_partial(&mut self, id: NodeId) -> Result<()> {
        let x = self.required(id, 0)?;
        let (lo, hi) = (self.input(id, 1)?, self.input(id, 2)?);
        let (op, ins) = match (lo, hi) {
            (Some(l), None) => (VariadicOp::Max, vec![x, l]),
            (None, Some(h)) => (VariadicOp::Min, vec![x, h]),
            (None, None) => (VariadicOp::Max, vec![x]),
            (Some(_), Some(_)) => return Err(CudaError::Invalid("Clip with both bounds is no partial clip".into())),
        };
        for &b in &ins[1..] {
            let buf = &self.plan.buffers[b];
            if buf.shape.iter().product::<usize>() != 1 || buf.dtype != self.plan.buffers[x].dtype {
                return Err(CudaError::Invalid(format!(
                    "a Clip bound must be a scalar of the input's type, found {} {:?}",
                    buf.dtype, buf.shape
                )));
            }
        }
        let expr = Expr::op(ElementwiseOp::Variadic(op), ins.len());
        self.elementwise(id, &expr, &ins)
    }
}

/// `CastLike(x, like)` reads only `like`'s type: as a `Cast` to that type `like` drops out of
/// the expression (an empty `like`, as ReduceLogSumExp's expansion over an empty set passes,
/// would not broadcast to the output). The new expression and, per new input, the old one it
/// reads; `None` when no CastLike reads an input directly.
pub(super) fn fold_cast_like(expr: &Expr, dts: &[DType]) -> Option<(Expr, Vec<usize>)> {
    let mut nodes = expr.nodes.clone();
    let mut changed = false;
    for i in 0..nodes.len() {
        let found = match &nodes[i] {
            ExprNode::Op { op: ElementwiseOp::CastLike { saturate }, args } if args.len() == 2 => {
                match nodes.get(args[1]) {
                    Some(ExprNode::Input(k)) => Some((args[0], *k, *saturate)),
                    _ => None,
                }
            }
            _ => None,
        };
        if let Some((x, k, saturate)) = found {
            let to = *dts.get(k)?;
            nodes[i] = ExprNode::Op { op: ElementwiseOp::Cast { to, saturate }, args: vec![x] };
            changed = true;
        }
    }
    changed.then(|| Expr { nodes }.canonical(&|i| i))
}
