//! The operator set of the IR: one enum per family, gathered in [`Op`].
//!
//! Adding an op means adding a variant to its family's enum (in `ops/<family>.rs`) with its
//! attributes, its name and its type rule there. The importer and the executors then get one
//! match arm each.

pub mod attention;
pub mod control;
pub mod elementwise;
pub mod fused;
pub mod infer;
pub mod layout;
pub mod linalg;
pub mod loss;
pub mod norm;
pub mod pool;
pub mod quant;
pub mod reduce;
pub mod rnn;
pub mod sequence;
pub mod signal;
pub mod spatial;

pub use attention::AttentionOp;
pub use control::ControlOp;
pub use elementwise::ElementwiseOp;
pub use fused::{Expr, ExprNode, FusedOp};
pub use infer::InferInput;
pub use layout::LayoutOp;
pub use linalg::LinalgOp;
pub use loss::LossOp;
pub use norm::NormOp;
pub use pool::PoolOp;
pub use quant::QuantOp;
pub use reduce::ReduceOp;
pub use rnn::RnnOp;
pub use sequence::SequenceOp;
pub use signal::SignalOp;
pub use spatial::SpatialOp;

use crate::{Tensor, TypeInfo};

/// An operation of the IR.
#[derive(Clone, Debug)]
pub enum Op {
    /// A graph input; its value is supplied by the caller.
    Input,
    /// A constant tensor (weights, folded values).
    Const(Tensor),
    /// Pointwise math, comparisons, logic, activations, casts.
    Elementwise(ElementwiseOp),
    /// Quantize and dequantize.
    Quant(QuantOp),
    /// Matrix products and convolutions: MatMul, Gemm, Einsum, Conv and their integer forms.
    Linalg(LinalgOp),
    /// Pooling.
    Pool(PoolOp),
    /// Normalizations and softmax.
    Norm(NormOp),
    /// Reductions, arg-reductions, TopK, CumSum.
    Reduce(ReduceOp),
    /// Data movement: reshape, transpose, slice, gather, scatter, pad, resize, and shape queries.
    Layout(LayoutOp),
    /// Recurrent layers.
    Rnn(RnnOp),
    /// Image-space resampling and detection ops: Resize, GridSample, RoiAlign, NMS.
    Spatial(SpatialOp),
    /// Sequences and optionals.
    Sequence(SequenceOp),
    /// Signal processing: DFT, STFT, window functions, MelWeightMatrix.
    Signal(SignalOp),
    /// Loss functions: NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss.
    Loss(LossOp),
    /// Attention and rotary embeddings: the fused attention op of opset 23 and RotaryEmbedding.
    Attention(AttentionOp),
    /// Control flow with subgraphs.
    Control(ControlOp),
    /// Ops made by fusion: elementwise expressions, epilogues, packed attention.
    Fused(FusedOp),
}

impl Op {
    /// The op's name as in ONNX (`"Conv"`, `"Relu"`), used in dumps, counts and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input => "Input",
            Op::Const(_) => "Const",
            Op::Elementwise(o) => o.name(),
            Op::Quant(o) => o.name(),
            Op::Linalg(o) => o.name(),
            Op::Pool(o) => o.name(),
            Op::Norm(o) => o.name(),
            Op::Reduce(o) => o.name(),
            Op::Layout(o) => o.name(),
            Op::Rnn(o) => o.name(),
            Op::Spatial(o) => o.name(),
            Op::Sequence(o) => o.name(),
            Op::Signal(o) => o.name(),
            Op::Loss(o) => o.name(),
            Op::Attention(o) => o.name(),
            Op::Control(o) => o.name(),
            Op::Fused(o) => o.name(),
        }
    }

    /// Infers output types from input types (and input values where constant).
    ///
    /// Returns one [`TypeInfo`] per output; dims that cannot be known statically stay unknown.
    /// An error means the inputs contradict the op (wrong rank, mismatched dims).
    pub fn infer(&self, inputs: &[Option<InferInput<'_>>], num_outputs: usize) -> Result<Vec<TypeInfo>, String> {
        let out = match self {
            Op::Input => return Ok(vec![TypeInfo::unknown(); num_outputs]),
            Op::Const(t) => return Ok(vec![TypeInfo::known(t.dtype(), t.shape())]),
            Op::Elementwise(o) => o.infer(inputs, num_outputs),
            Op::Quant(o) => o.infer(inputs, num_outputs),
            Op::Linalg(o) => o.infer(inputs, num_outputs),
            Op::Pool(o) => o.infer(inputs, num_outputs),
            Op::Norm(o) => o.infer(inputs, num_outputs),
            Op::Reduce(o) => o.infer(inputs, num_outputs),
            Op::Layout(o) => o.infer(inputs, num_outputs),
            Op::Rnn(o) => o.infer(inputs, num_outputs),
            Op::Spatial(o) => o.infer(inputs, num_outputs),
            Op::Sequence(o) => o.infer(inputs, num_outputs),
            Op::Signal(o) => o.infer(inputs, num_outputs),
            Op::Loss(o) => o.infer(inputs, num_outputs),
            Op::Attention(o) => o.infer(inputs, num_outputs),
            Op::Control(o) => o.infer(inputs, num_outputs),
            Op::Fused(o) => o.infer(inputs, num_outputs),
        }?;
        let mut out = out;
        out.resize(num_outputs, TypeInfo::unknown());
        Ok(out)
    }

    /// Whether evaluating the op twice on the same inputs gives the same outputs and has no
    /// other effect, so that constant folding may evaluate it at build time.
    pub fn is_pure(&self) -> bool {
        match self {
            Op::Input => false,
            // Sequences and optionals are not tensors, which is all a constant can hold.
            Op::Sequence(_) => false,
            Op::Elementwise(o) => o.is_pure(),
            _ => true,
        }
    }

    /// The subgraphs the op carries (branches and loop bodies).
    pub fn subgraphs(&self) -> Vec<&crate::Graph> {
        match self {
            Op::Control(c) => c.subgraphs(),
            Op::Sequence(s) => s.subgraphs(),
            _ => vec![],
        }
    }
}
