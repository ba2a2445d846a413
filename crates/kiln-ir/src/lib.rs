//! Kiln's graph IR: typed host tensors, static types with symbolic dims, a petgraph
//! dataflow graph of typed ops, its verifier, a stable text dump and the graph passes.
//!
//! This crate knows nothing about ONNX, CUDA or any executor; every other crate depends on it.
#![warn(missing_docs)]

mod dtype;
mod dump;
mod error;
mod graph;
pub mod lowp;
pub mod ops;
pub mod passes;
mod tensor;
mod types;
mod verify;

pub use dtype::DType;
pub use error::IrError;
pub use graph::{Edge, Graph, GraphOutput, Node, NodeId, Value, ValueInfo};
pub use ops::Op;
pub use tensor::{checked_numel, Elem, Tensor, TensorData, TensorError};
pub use types::{Data, Dim, TypeInfo, ValueKind};

/// Re-exported so that users of [`Tensor`] name the same half-precision types.
pub use half::{bf16, f16};
