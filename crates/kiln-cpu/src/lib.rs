//! Kiln's CPU reference executor: runs the IR for every op the importer accepts.
//!
//! It is the oracle every other backend is checked against and the device Kiln falls back to
//! where there is no GPU. Kernels favour clarity and exact ONNX semantics; MatMul, Gemm and
//! Conv use a fast GEMM so that real models run at a speed a person can wait for.
#![warn(missing_docs)]

mod error;
mod exec;
pub mod ops;

pub use error::{CpuError, OpError, OpResult};
pub use exec::{eval_node, run_graph, run_graph_data, run_graph_profiled, run_named, CpuEvaluator};
pub use ops::eval_op;
