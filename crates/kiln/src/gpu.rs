//! Running an optimized graph on the GPU: plan it, compile its kernels with NVRTC, load it
//! into a [`kiln_runtime::exec::Engine`] and run it in an execution context.

use crate::Error;
use kiln_cuda::driver::Gpu;
use kiln_cuda::library::KernelLibrary;
use kiln_cuda::nvrtc::Nvrtc;
use kiln_cuda::plan::{ModuleRef, Target};
use kiln_cuda::CudaError;
use kiln_ir::{Graph, Tensor};
use kiln_runtime::engine::{build_engine, EngineFile};
use kiln_runtime::exec::{Engine, ExecOptions, ExecutionContext};
use std::collections::HashMap;
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
    let plan = kiln_cuda::plan::plan_for(graph, Target::for_arch(gpu.arch()))?;
    load_plan_on(gpu, plan, opts)
}

/// Compiles what a launch plan launches for the device and loads it.
pub fn load_plan(plan: kiln_cuda::plan::Plan, opts: &GpuOptions) -> Result<Arc<Engine>, Error> {
    load_plan_on(Arc::new(Gpu::new(opts.device)?), plan, opts)
}

fn load_plan_on(gpu: Arc<Gpu>, plan: kiln_cuda::plan::Plan, opts: &GpuOptions) -> Result<Arc<Engine>, Error> {
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

/// The architecture engines are built for here: the GPU's where there is one, else `sm_90`.
pub fn default_arch() -> String {
    Gpu::new(0).map(|g| g.arch().to_string()).unwrap_or_else(|_| "sm_90".to_string())
}

/// Plans an optimized graph and compiles every kernel it launches for `arch` (no GPU needed):
/// the engine `kiln build -o` writes. `options` are recorded in the header.
pub fn build_engine_file(graph: &Graph, arch: &str, options: Vec<(String, String)>) -> Result<EngineFile, Error> {
    let plan = kiln_cuda::plan::plan_for(graph, Target::for_arch(arch))?;
    Ok(build_engine(plan, arch, &Nvrtc::locate()?, options)?)
}

/// Loads an engine file's bytes onto the GPU: checks it (checksum, version, and that it was
/// built for this GPU's architecture), uploads its weights and loads its CUBINs. TF32 follows
/// the engine's `tf32` build option unless `opts` turns it off.
pub fn load_engine_file(bytes: &[u8], opts: &GpuOptions) -> Result<Arc<Engine>, Error> {
    let file = EngineFile::from_bytes(bytes)?;
    let gpu = Arc::new(Gpu::new(opts.device)?);
    file.check_arch(gpu.arch())?;
    let tf32 = !file.header().options.iter().any(|(k, v)| k == "tf32" && v == "false");
    let (_, plan, memory, cubins) = file.into_parts();
    let mut modules = HashMap::new();
    for c in &cubins {
        modules.insert(c.name.clone(), Arc::new(gpu.load(&c.image)?));
    }
    let module = |m: &ModuleRef| {
        let name = match m {
            ModuleRef::Family(f) => f.name(),
            ModuleRef::Generated(i) => plan.generated.get(*i).map_or("", |k| k.name.as_str()),
        };
        modules.get(name).cloned().ok_or_else(|| CudaError::Invalid(format!("the engine has no module '{name}'")))
    };
    let mut exec = opts.exec.clone();
    exec.tf32 &= tf32;
    Ok(Arc::new(Engine::new(gpu.clone(), plan.clone(), memory, &module, exec)?))
}

/// An engine's inputs in order: the tensor given for an input's name (taken out of `given`),
/// else seeded random values of its type and shape, as [`crate::random::graph_inputs`] makes.
pub fn engine_inputs(engine: &Engine, given: &mut HashMap<String, Tensor>, seed: u64) -> Vec<Tensor> {
    let mut rng = crate::random::Rng::new(seed);
    let mut ins: Vec<(usize, Tensor)> = engine
        .plan()
        .buffers
        .iter()
        .filter_map(|b| match b.kind {
            kiln_cuda::plan::BufferKind::Input(k) => Some((k, b)),
            _ => None,
        })
        .map(|(k, b)| {
            let t = given.remove(&b.name).unwrap_or_else(|| crate::random::random_tensor(b.dtype, &b.shape, &mut rng));
            (k, t)
        })
        .collect();
    ins.sort_by_key(|(k, _)| *k);
    ins.into_iter().map(|(_, t)| t).collect()
}

/// Runs graphs on the GPU, keeping the engine of the graph it ran last: calibration and
/// `kiln compare` run one graph over many batches, which is planned, compiled and loaded once
/// and runs every batch in the same execution context. A graph is recognised by its address,
/// node count and output count (hashing its weights for every batch would cost more than the
/// run), so another graph at another address, or of another size, gets its own engine; a
/// caller that drops a graph and runs a new one must not keep the runner across the two,
/// since the new graph may reuse the old one's address.
pub struct GraphRunner {
    opts: GpuOptions,
    arch: String,
    /// The graph the context runs (its address, nodes and outputs) and the context.
    ctx: std::cell::RefCell<Option<((usize, usize, usize), ExecutionContext)>>,
}

impl GraphRunner {
    /// A runner on GPU `opts.device`: fails without a GPU or without NVRTC.
    pub fn new(opts: GpuOptions) -> Result<GraphRunner, Error> {
        let arch = Gpu::new(opts.device)?.arch().to_string();
        Nvrtc::locate()?;
        Ok(GraphRunner { opts, arch, ctx: Default::default() })
    }

    /// The GPU's architecture (`sm_90`).
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// Runs `graph` on `inputs` (in graph-input order), returning every graph output.
    pub fn run(&self, graph: &Graph, inputs: &[Tensor]) -> Result<Vec<Tensor>, Error> {
        let key = (graph as *const Graph as usize, graph.node_count(), graph.outputs.len());
        let mut slot = self.ctx.borrow_mut();
        let ctx = match slot.take() {
            Some((k, ctx)) if k == key => ctx,
            _ => ExecutionContext::new(load_engine(graph, &self.opts)?)?,
        };
        let (_, ctx) = slot.insert((key, ctx));
        Ok(ctx.run(inputs)?)
    }
}

/// Runs `graph` once on the GPU (plans, compiles, loads, runs): the CPU reference's
/// counterpart [`crate::run_cpu`].
pub fn run_gpu(graph: &Graph, inputs: &[Tensor], opts: &GpuOptions) -> Result<Vec<Tensor>, Error> {
    let engine = load_engine(graph, opts)?;
    let mut ctx = ExecutionContext::new(engine)?;
    Ok(ctx.run(inputs)?)
}
