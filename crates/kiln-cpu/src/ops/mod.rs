//! Op kernels of the CPU executor, one file per op family, dispatched by [`eval_op`].

mod attention;
pub mod common;
pub(crate) mod control;
mod elementwise;
mod fused;
mod layout;
mod linalg;
mod loss;
mod norm;
mod pool;
mod quant;
mod reduce;
mod rnn;
pub(crate) mod sequence;
mod signal;
mod spatial;

use crate::{OpError, OpResult};
use kiln_ir::{Op, Tensor};

/// Evaluates one op on concrete inputs (`None` for absent optional inputs).
pub fn eval_op(op: &Op, inputs: &[Option<&Tensor>], num_outputs: usize) -> OpResult {
    match op {
        Op::Input => Err(OpError::new("an input node has no kernel")),
        Op::Const(t) => Ok(vec![t.clone()]),
        Op::Elementwise(o) => elementwise::eval(o, inputs, num_outputs),
        Op::Quant(o) => quant::eval(o, inputs, num_outputs),
        Op::Linalg(o) => linalg::eval(o, inputs, num_outputs),
        Op::Pool(o) => pool::eval(o, inputs, num_outputs),
        Op::Norm(o) => norm::eval(o, inputs, num_outputs),
        Op::Reduce(o) => reduce::eval(o, inputs, num_outputs),
        Op::Layout(o) => layout::eval(o, inputs, num_outputs),
        Op::Rnn(o) => rnn::eval(o, inputs, num_outputs),
        Op::Spatial(o) => spatial::eval(o, inputs, num_outputs),
        Op::Signal(o) => signal::eval(o, inputs, num_outputs),
        Op::Loss(o) => loss::eval(o, inputs, num_outputs),
        Op::Attention(o) => attention::eval(o, inputs, num_outputs),
        Op::Control(o) => control::eval(o, inputs, num_outputs),
        Op::Fused(o) => fused::eval(o, inputs, num_outputs),
        Op::Sequence(o) => {
            Err(OpError::new(format!("{} takes sequences or optionals; run it with eval_node", o.name())))
        }
    }
}
