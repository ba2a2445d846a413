//! Kiln, a deep-learning inference compiler: the facade that ties the stages together.
//!
//! `load` imports an ONNX model into the IR, `optimize` runs the pass pipeline and fusion, and
//! `run_cpu` executes the result on the CPU reference executor. Each stage is also usable
//! on its own through the re-exported crates.
#![warn(missing_docs)]

pub mod build;
pub mod compare;
pub mod gpu;
pub mod npy;
pub mod random;

pub use build::{build, BuildOptions, Built, CalibDevice, FloatPrecision, Int8Options};

pub use kiln_cpu as cpu;
pub use kiln_cuda as cuda;
pub use kiln_fuse as fuse;
pub use kiln_ir as ir;
pub use kiln_onnx as onnx;
pub use kiln_quant as quant;
pub use kiln_runtime as runtime;

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
    /// Fusion failed (a bug: the graph stays valid without it, see `--no-fuse`).
    #[error(transparent)]
    Fuse(#[from] kiln_fuse::FuseError),
    /// Planning, compiling or running on the GPU failed.
    #[error(transparent)]
    Cuda(#[from] kiln_cuda::CudaError),
    /// Writing, reading or checking an engine file failed.
    #[error(transparent)]
    Engine(#[from] kiln_runtime::engine::EngineError),
    /// Running on the CPU failed.
    #[error(transparent)]
    Cpu(#[from] kiln_cpu::CpuError),
    /// A shape given for an input does not fit the model.
    #[error("input '{input}': {msg}")]
    Shape {
        /// The input.
        input: String,
        /// What is wrong.
        msg: String,
    },
    /// Quantization failed: calibration data, cache or graph.
    #[error(transparent)]
    Quant(#[from] kiln_quant::QuantError),
    /// Reading or writing a file failed.
    #[error("{path}: {msg}")]
    Io {
        /// The file or directory.
        path: String,
        /// What went wrong.
        msg: String,
    },
    /// An environment setting has a value Kiln does not know.
    #[error("environment setting {name}: {msg}")]
    Setting {
        /// The variable.
        name: String,
        /// What is wrong.
        msg: String,
    },
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

/// Fixes the shapes of graph inputs (by name) before optimizing, as an engine built for one
/// input shape does: symbolic and unknown dims become concrete, so shape arithmetic folds to
/// constants and every downstream shape is known. A given shape must agree with the model's
/// declared rank and known dims.
pub fn specialize(graph: &mut Graph, shapes: &std::collections::HashMap<String, Vec<usize>>) -> Result<(), Error> {
    for (name, shape) in shapes {
        let id = graph
            .inputs
            .iter()
            .copied()
            .find(|&i| graph.node(i).outputs[0].name == *name)
            .ok_or_else(|| Error::Shape { input: name.clone(), msg: "the model has no such input".into() })?;
        let info = &mut graph.node_mut(id).outputs[0];
        if let Some(declared) = &info.ty.shape {
            let fits = declared.len() == shape.len()
                && declared.iter().zip(shape).all(|(d, &s)| d.known().is_none_or(|k| k == s));
            if !fits {
                return Err(Error::Shape {
                    input: name.clone(),
                    msg: format!("shape {shape:?} does not fit the declared {}", info.ty),
                });
            }
        }
        info.ty.shape = Some(shape.iter().map(|&d| kiln_ir::Dim::Known(d)).collect());
    }
    Ok(())
}

/// What [`optimize_with`] does.
#[derive(Debug, Clone)]
pub struct OptimizeOptions {
    /// Whether to fuse after the IR passes (on by default).
    pub fuse: bool,
    /// Fusion limits and cost-model target.
    pub fuse_options: kiln_fuse::FuseOptions,
}

impl Default for OptimizeOptions {
    fn default() -> OptimizeOptions {
        OptimizeOptions { fuse: true, fuse_options: kiln_fuse::FuseOptions::default() }
    }
}

/// What optimization did: the IR passes' reports and, when it ran, fusion's.
#[derive(Debug, Clone)]
pub struct Optimized {
    /// One report per IR pass.
    pub passes: Vec<PassReport>,
    /// The fusion report.
    pub fusion: Option<kiln_fuse::FuseReport>,
}

/// Runs the default pass pipeline (type inference, no-op removal, constant folding with the
/// CPU executor, dead-code elimination), verifying after every pass, then fusion.
pub fn optimize(graph: &mut Graph) -> Result<Optimized, Error> {
    optimize_with(graph, &OptimizeOptions::default())
}

/// As [`optimize`], with options.
pub fn optimize_with(graph: &mut Graph, opts: &OptimizeOptions) -> Result<Optimized, Error> {
    let cx = PassContext { evaluator: Some(&kiln_cpu::CpuEvaluator), max_folded_bytes: 0 };
    let passes = PassManager::default_pipeline().run(graph, &cx)?;
    let fusion = if opts.fuse {
        let (fused, report) = kiln_fuse::fuse(graph, &opts.fuse_options)?;
        *graph = fused;
        Some(report)
    } else {
        None
    };
    Ok(Optimized { passes, fusion })
}

/// Whether input `slot` of an op named `op` says a shape, axes, sizes or counts rather than
/// data: the operands TensorRT calls shape tensors.
fn is_shape_operand(op: &str, slot: usize) -> bool {
    match op {
        "ConstantOfShape" | "Range" => true,
        "Slice" | "Resize" | "Upsample" => slot >= 1,
        "Pad" => slot == 1 || slot == 3,
        "Col2Im" => slot == 1 || slot == 2,
        "AffineGrid" => slot == 1,
        "MaxUnpool" => slot == 2,
        "CenterCropPad" => slot == 1,
        "HannWindow" | "HammingWindow" | "BlackmanWindow" => slot == 0,
        "Reshape" | "Expand" | "Tile" | "Squeeze" | "Unsqueeze" | "Split" | "TopK" | "CumSum" | "OneHot"
        | "ReduceSum" | "ReduceMean" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceL1" | "ReduceL2"
        | "ReduceLogSum" | "ReduceLogSumExp" | "ReduceSumSquare" => slot == 1,
        _ => false,
    }
}

/// Whether input `slot` of `op` is a float operand that decides the output's shape: Resize's
/// roi and scales, Upsample's scales.
fn is_float_shape_operand(op: &str, slot: usize) -> bool {
    matches!((op, slot), ("Resize", 1 | 2) | ("Upsample", 1))
}

/// Fixes integer graph inputs (and OneHot depths of any type) that only feed shape operands (Reshape's shape, Slice's starts,
/// a reduction's axes, ...) to the values given, as TensorRT fixes shape tensors when it
/// builds: a static-shape engine needs them at build time. Float inputs that only feed the
/// operands deciding Resize's output shape (roi, scales) are fixed the same way. Call before [`optimize`], which
/// then folds them. Returns the inputs that stay inputs, in order.
pub fn bind_shape_inputs(graph: &mut Graph, inputs: Vec<Tensor>) -> Vec<Tensor> {
    let mut kept = vec![];
    for (id, t) in graph.inputs.clone().into_iter().zip(inputs) {
        let v = kiln_ir::Value { node: id, slot: 0 };
        let users = graph.users(v);
        let int_shape = users.iter().all(|&(u, slot)| is_shape_operand(graph.node(u).op.name(), slot))
            // OneHot's depth may have any numeric type; other shape operands are integers.
            && (matches!(t.dtype(), kiln_ir::DType::I64 | kiln_ir::DType::I32)
                || users.iter().all(|&(u, _)| graph.node(u).op.name() == "OneHot"));
        let float_shape = t.dtype().is_float()
            && users.iter().all(|&(u, slot)| is_float_shape_operand(graph.node(u).op.name(), slot));
        let shape_only = !users.is_empty() && !graph.is_output(v) && (int_shape || float_shape);
        if shape_only {
            graph.node_mut(id).op = kiln_ir::Op::Const(t);
            graph.inputs.retain(|&i| i != id);
        } else {
            kept.push(t);
        }
    }
    kept
}

/// Converts a graph to FP16 (see [`kiln_ir::passes::ToFp16`] for the policy), keeping the
/// nodes named in `keep_fp32` (or fused nodes covering them) in FP32, then checks the result
/// with type inference and the verifier and drops what the conversion left unused. Runs type
/// inference first, so an unoptimized graph converts too.
pub fn to_fp16(
    graph: &mut Graph,
    keep_fp32: std::collections::HashSet<String>,
) -> Result<kiln_ir::passes::Fp16Report, Error> {
    use kiln_ir::passes::{DeadCodeElimination, EarlyPolicy, InferTypes, ToFp16};
    let cx = PassContext::default();
    PassManager::new(vec![Box::new(InferTypes)]).always_verify(true).run(graph, &cx)?;
    // A deep CNN's first layers split their weights into f16 halves unless
    // KILN_FP16_EARLY=fp32 (exact, but on CUDA cores) or off says otherwise.
    let early = match std::env::var("KILN_FP16_EARLY") {
        Ok(v) => v.parse().map_err(|msg| Error::Setting { name: "KILN_FP16_EARLY".into(), msg })?,
        Err(_) => EarlyPolicy::default(),
    };
    // KILN_FP16_EARLY_LAYERS=N counts the first N matrix layers as early instead of a sixth.
    let early_layers = match std::env::var("KILN_FP16_EARLY_LAYERS") {
        Ok(v) => Some(v.parse().map_err(|e| Error::Setting {
            name: "KILN_FP16_EARLY_LAYERS".into(),
            msg: format!("'{v}' is not a layer count: {e}"),
        })?),
        Err(_) => None,
    };
    let report = ToFp16 { keep_fp32, early, early_layers }.convert(graph)?;
    PassManager::new(vec![Box::new(InferTypes), Box::new(DeadCodeElimination)]).always_verify(true).run(graph, &cx)?;
    Ok(report)
}

/// Runs a graph on the CPU reference executor; inputs in graph-input order.
pub fn run_cpu(graph: &Graph, inputs: &[Tensor]) -> Result<Vec<Tensor>, Error> {
    Ok(kiln_cpu::run_graph(graph, inputs)?)
}
