//! Kiln, a deep-learning inference compiler: the facade that ties the stages together.
//!
//! `load` imports an ONNX model into the IR, `optimize` runs the pass pipeline, and
//! `run_cpu` executes the result on the CPU reference executor. Each stage is also usable
//! on its own through the re-exported crates.
#![warn(missing_docs)]

pub mod npy;
pub mod random;

pub use kiln_cpu as cpu;
pub use kiln_ir as ir;
pub use kiln_onnx as onnx;

use kiln_ir::passes::{PassContext, PassManager, PassReport};
use kiln_ir::{Graph, Tensor};
use std::path::Path;

/// Every error the facade can return.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Importing the model failed.
    #[error(transparent)]
    Import(#[from] kiln_onnx::ImportError),
    /// A pass failed.
    #[error(transparent)]
    Ir(#[from] kiln_ir::IrError),
    /// Running on the CPU failed.
    #[error(transparent)]
    Cpu(#[from] kiln_cpu::CpuError),
    /// Reading or writing a `.npy` file failed.
    #[error("{path}: {msg}")]
    Npy {
        /// The file.
        path: String,
        /// What went wrong.
        msg: String,
    },
}

/// Imports an ONNX model file (external data is read from its directory).
pub fn load(path: &Path) -> Result<kiln_onnx::Model, Error> {
    Ok(kiln_onnx::load_model(path)?)
}

/// Runs the default pass pipeline (type inference, no-op removal, constant folding with the
/// CPU executor, dead-code elimination), verifying after every pass.
pub fn optimize(graph: &mut Graph) -> Result<Vec<PassReport>, Error> {
    let cx = PassContext { evaluator: Some(&kiln_cpu::CpuEvaluator), max_folded_bytes: 0 };
    Ok(PassManager::default_pipeline().run(graph, &cx)?)
}

/// Runs a graph on the CPU reference executor; inputs in graph-input order.
pub fn run_cpu(graph: &Graph, inputs: &[Tensor]) -> Result<Vec<Tensor>, Error> {
    Ok(kiln_cpu::run_graph(graph, inputs)?)
}
