//! Running an optimized graph on the GPU: plan it, compile its kernels with NVRTC, load it
//! into a [`kiln_runtime::exec::Engine`] and run it in an execution context.

use crate::Error;
use kiln_cuda::driver::Gpu;
use kiln_cuda::library::KernelLibrary;
use kiln_cuda::nvrtc::Nvrtc;
use kiln_cuda::plan::ModuleRef;
use kiln_cuda::CudaError;
use kiln_ir::{Graph, Tensor};
use kiln_runtime::exec::{Engine, ExecOptions, ExecutionContext};
use std::sync::Arc;

/// The cuBLASLt and cuDNN workspace of each execution context, in bytes, unless set.
pub const DEFAULT_WORKSPACE: usize = 64 << 20;

/// How a graph is prepared for the GPU.
#[derive(Clone, Debug)]
pub struct GpuOptions {
    /// Execution options (TF32, CUDA graphs).
    pub exec: ExecOptions,
    /// The library workspace per context in bytes.
    pub workspace_bytes: usize,
    /// The device ordinal.
    pub device: usize,
}

impl Default for GpuOptions {
    fn default() -> GpuOptions {
        GpuOptions { exec: ExecOptions::default(), workspace_bytes: DEFAULT_WORKSPACE, device: 0 }
    }
}

/// Plans `graph`, compiles what it launches for the device and loads it.
pub fn load_engine(graph: &Graph, opts: &GpuOptions) -> Result<Arc<Engine>, Error> {
    let gpu = Arc::new(Gpu::new(opts.device)?);
    let plan = kiln_cuda::plan::plan(graph)?;
    let memory = kiln_runtime::memory::plan_memory(&plan, opts.workspace_bytes);
    let lib = KernelLibrary::new(gpu.clone(), Nvrtc::locate()?);
    let module = |m: &ModuleRef| match m {
        ModuleRef::Family(f) => lib.family_module(*f),
        ModuleRef::Generated(i) => lib.generated_module(
            plan.generated.get(*i).ok_or_else(|| CudaError::Invalid(format!("no generated kernel {i}")))?,
        ),
    };
    let engine = Engine::new(gpu.clone(), plan.clone(), memory, &module, opts.exec.clone())?;
    Ok(Arc::new(engine))
}

/// Runs `graph` once on the GPU (plans, compiles, loads, runs): the CPU reference's
/// counterpart [`crate::run_cpu`].
pub fn run_gpu(graph: &Graph, inputs: &[Tensor], opts: &GpuOptions) -> Result<Vec<Tensor>, Error> {
    let engine = load_engine(graph, opts)?;
    let mut ctx = ExecutionContext::new(engine)?;
    Ok(ctx.run(inputs)?)
}
