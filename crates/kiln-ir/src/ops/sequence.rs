//! Sequences and optionals: building, indexing and splitting sequences of tensors, and
//! wrapping values in optionals.
//!
//! These ops read and write [`crate::Data`] values rather than plain tensors.

use super::infer::*;
use crate::{DType, Graph, TypeInfo, ValueKind};

/// Ops over sequences and optionals.
#[derive(Clone, Debug)]
pub enum SequenceOp {
    /// An empty sequence of the given element type.
    SequenceEmpty {
        /// Element type of the (future) elements.
        dtype: DType,
    },
    /// A sequence of its inputs.
    SequenceConstruct,
    /// Inserts a tensor at an optional position (default: the end).
    SequenceInsert,
    /// The element at a position (negative counts from the end).
    SequenceAt,
    /// Removes the element at an optional position (default: the last).
    SequenceErase,
    /// The number of elements, as an i64 scalar.
    SequenceLength,
    /// Splits a tensor into a sequence along an axis.
    SplitToSequence {
        /// The axis split along.
        axis: i64,
        /// With no split input, whether the size-1 pieces keep the split axis.
        keepdims: bool,
    },
    /// Concatenates (or, with `new_axis`, stacks) a sequence's elements.
    ConcatFromSequence {
        /// The axis joined along.
        axis: i64,
        /// Whether to stack along a new axis instead.
        new_axis: bool,
    },
    /// Runs a body graph on each element (and on matching elements of other sequence inputs).
    SequenceMap {
        /// The body, with one input per node input and one output per node output.
        body: Box<Graph>,
        /// How many of the node's inputs are formal (the rest are captured outer values).
        num_formal_inputs: usize,
    },
    /// Wraps its input in an optional, or makes an empty optional when there is none.
    Optional,
    /// Whether an optional holds a value.
    OptionalHasElement,
    /// The value inside an optional (a plain tensor passes through).
    OptionalGetElement,
}

impl SequenceOp {
    /// The ONNX op name.
    pub fn name(&self) -> &'static str {
        match self {
            SequenceOp::SequenceEmpty { .. } => "SequenceEmpty",
            SequenceOp::SequenceConstruct => "SequenceConstruct",
            SequenceOp::SequenceInsert => "SequenceInsert",
            SequenceOp::SequenceAt => "SequenceAt",
            SequenceOp::SequenceErase => "SequenceErase",
            SequenceOp::SequenceLength => "SequenceLength",
            SequenceOp::SplitToSequence { .. } => "SplitToSequence",
            SequenceOp::ConcatFromSequence { .. } => "ConcatFromSequence",
            SequenceOp::SequenceMap { .. } => "SequenceMap",
            SequenceOp::Optional => "Optional",
            SequenceOp::OptionalHasElement => "OptionalHasElement",
            SequenceOp::OptionalGetElement => "OptionalGetElement",
        }
    }

    /// The kind of each output (tensor, sequence, optional).
    pub fn output_kinds(&self, input_kinds: &[ValueKind], num_outputs: usize) -> Vec<ValueKind> {
        let first = input_kinds.first().copied().unwrap_or_default();
        let k = match self {
            SequenceOp::SequenceEmpty { .. }
            | SequenceOp::SequenceConstruct
            | SequenceOp::SequenceInsert
            | SequenceOp::SequenceErase
            | SequenceOp::SplitToSequence { .. }
            | SequenceOp::SequenceMap { .. } => ValueKind::Sequence,
            SequenceOp::Optional => match first {
                ValueKind::Sequence => ValueKind::OptionalSequence,
                _ => ValueKind::OptionalTensor,
            },
            SequenceOp::OptionalGetElement => match first {
                ValueKind::OptionalSequence | ValueKind::Sequence => ValueKind::Sequence,
                _ => ValueKind::Tensor,
            },
            _ => ValueKind::Tensor,
        };
        vec![k; num_outputs]
    }

    /// The type rule: the element type of the outputs, where known.
    pub fn infer(&self, inputs: &[Option<InferInput<'_>>], num_outputs: usize) -> Result<Vec<TypeInfo>, String> {
        let t = match self {
            SequenceOp::SequenceEmpty { dtype } => TypeInfo::of_dtype(*dtype),
            SequenceOp::SequenceLength | SequenceOp::OptionalHasElement => {
                let dt = if matches!(self, SequenceOp::SequenceLength) { DType::I64 } else { DType::Bool };
                TypeInfo::known(dt, &[])
            }
            SequenceOp::Optional | SequenceOp::OptionalGetElement => input_ty(inputs, 0),
            SequenceOp::SequenceMap { .. } => TypeInfo::unknown(),
            _ => TypeInfo { dtype: first_dtype(inputs), shape: None },
        };
        Ok(vec![t; num_outputs])
    }

    /// The subgraphs carried.
    pub fn subgraphs(&self) -> Vec<&Graph> {
        match self {
            SequenceOp::SequenceMap { body, .. } => vec![body],
            _ => vec![],
        }
    }
}
