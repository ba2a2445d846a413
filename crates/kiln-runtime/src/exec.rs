//! Execution of a plan on one GPU.
//!
//! An [`Engine`] holds what every execution shares: the plan, the weights on the device and
//! the loaded kernels. An [`ExecutionContext`] holds what one stream of requests needs: its
//! own CUDA stream, its activation arena (laid out by [`crate::memory`]), its cuBLASLt and
//! cuDNN handles with their prepared calls, and, once warmed up, a CUDA graph of the whole
//! plan that it replays. Contexts of one engine run concurrently from different threads.

use crate::memory::MemoryPlan;
use cudarc::driver::sys::{CUevent_flags, CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaEvent, CudaGraph, CudaStream};
use kiln_cuda::blas::{GemmAlgo, GemmCall, LtHandle};
use kiln_cuda::codegen::waits_for_dependencies;
use kiln_cuda::dnn::{ConvCall, DnnHandle};
use kiln_cuda::driver::{Buffer, Gpu, Kernel, LaunchConfig, Module, Param};
use kiln_cuda::host::{tensor_bytes, tensor_from_bytes};
use kiln_cuda::plan::{BufferId, BufferKind, ModuleRef, Plan, StepKind};
use kiln_cuda::{CudaError, Result};
use kiln_ir::Tensor;
use std::sync::Arc;

/// How an engine executes.
#[derive(Clone, Debug)]
pub struct ExecOptions {
    /// FP32 matrix work may use TF32 tensor cores.
    pub tf32: bool,
    /// Capture the plan as a CUDA graph after the first run and replay it.
    pub cuda_graph: bool,
    /// Time every convolution algorithm on the context's own buffers when it is created and
    /// keep the fastest (else cuDNN's heuristic decides). Off by default: on an H200 it made
    /// ResNet-50 slower (1.48 against 0.92 ms at batch 1), since each algorithm is timed alone
    /// on a cold GPU.
    pub autotune: bool,
    /// Time cuBLASLt's best-ranked GEMM algorithms on the buffers of the engine's first
    /// context when it is created and keep the fastest of each
    /// ([`kiln_cuda::blas::GemmCall::tune`]); later contexts run the same ones, so every
    /// context computes bit for bit alike. Off by default, `KILN_TUNE_GEMMS=1` in the
    /// environment turns it on: on an H200 it gained 1% on BERT-base at batch 32 and lost 6%
    /// at batch 1, where a tactic timed alone is not the fastest inside the whole graph.
    pub tune_gemms: bool,
    /// Wait for every launch before the next (no CUDA graph), so that an asynchronous fault,
    /// such as an illegal address, is reported with the launch that caused it. Slow: for
    /// finding faults only. On by default where the environment sets `KILN_SYNC_STEPS=1`.
    pub sync_steps: bool,
}

impl Default for ExecOptions {
    fn default() -> ExecOptions {
        let sync_steps = std::env::var_os("KILN_SYNC_STEPS").is_some_and(|v| v == "1");
        let tune_gemms = std::env::var_os("KILN_TUNE_GEMMS").is_some_and(|v| v == "1");
        ExecOptions { tf32: true, cuda_graph: true, autotune: false, tune_gemms, sync_steps }
    }
}

fn drv(what: &str) -> impl Fn(cudarc::driver::DriverError) -> CudaError + '_ {
    move |e| CudaError::Driver(format!("{what}: {e}"))
}

/// The shared, read-only part of a loaded engine.
pub struct Engine {
    gpu: Arc<Gpu>,
    plan: Plan,
    memory: MemoryPlan,
    options: ExecOptions,
    /// The device memory of each constant buffer.
    weights: Vec<Option<Buffer>>,
    /// The kernel of each kernel step.
    kernels: Vec<Option<Kernel>>,
    /// Zeros for cuDNN's fused call where a convolution has no bias.
    zeros: Buffer,
    /// The cuBLASLt algorithm of each GEMM step, timed when the first context is made and
    /// shared by every later one, so that all contexts compute bit for bit alike.
    gemm_tactics: std::sync::Mutex<Option<Vec<Option<GemmAlgo>>>>,
    _modules: Vec<Arc<Module>>,
}

impl Engine {
    /// Loads a plan onto `gpu`: uploads its weights and loads its kernels, each module from
    /// `module` (compiled by NVRTC, or read from an engine file).
    pub fn new(
        gpu: Arc<Gpu>,
        plan: Plan,
        memory: MemoryPlan,
        module: &dyn Fn(&ModuleRef) -> Result<Arc<Module>>,
        options: ExecOptions,
    ) -> Result<Engine> {
        if memory.offsets.len() != plan.buffers.len() {
            return Err(CudaError::Invalid(format!(
                "the memory plan covers {} buffers, the plan has {}",
                memory.offsets.len(),
                plan.buffers.len()
            )));
        }
        let mut weights = Vec::with_capacity(plan.buffers.len());
        for b in &plan.buffers {
            weights.push(match &b.kind {
                BufferKind::Const(t) => {
                    let bytes = tensor_bytes(t)?;
                    let buf = gpu.alloc(bytes.len(), &format!("weight {}", b.name))?;
                    gpu.context().bind_to_thread().map_err(drv("bind context"))?;
                    #[allow(unsafe_code)]
                    // SAFETY: the buffer was just allocated with at least `bytes.len()` bytes;
                    // the copy is synchronous on the null stream for pageable memory.
                    unsafe { cudarc::driver::result::memcpy_htod_sync(gpu.addr(&buf, 0), &bytes) }
                        .map_err(drv("upload weight"))?;
                    Some(buf)
                }
                _ => None,
            });
        }
        let mut modules: Vec<(ModuleRef, Arc<Module>)> = vec![];
        let mut kernels = Vec::with_capacity(plan.steps.len());
        for step in &plan.steps {
            kernels.push(match &step.kind {
                StepKind::Kernel(k) => {
                    let m = match modules.iter().find(|(r, _)| *r == k.module) {
                        Some((_, m)) => m.clone(),
                        None => {
                            let m = module(&k.module)?;
                            modules.push((k.module.clone(), m.clone()));
                            m
                        }
                    };
                    let kernel = m.kernel(&k.kernel).and_then(|f| f.reserve_shared(k.config.shared_bytes).map(|_| f));
                    Some(kernel.map_err(|e| CudaError::Driver(format!("node {}: {e}", step.node)))?)
                }
                _ => None,
            });
        }
        let zero_bytes = plan
            .steps
            .iter()
            .filter_map(|s| if let StepKind::Conv(c) = &s.kind { Some(c.w_shape[0] * c.dtype.size()) } else { None })
            .max()
            .unwrap_or(0);
        let zeros = gpu.alloc(zero_bytes, "convolution zero bias")?;
        Ok(Engine {
            gpu,
            plan,
            memory,
            options,
            weights,
            kernels,
            zeros,
            gemm_tactics: std::sync::Mutex::new(None),
            _modules: modules.into_iter().map(|(_, m)| m).collect(),
        })
    }

    /// The plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The memory plan.
    pub fn memory(&self) -> &MemoryPlan {
        &self.memory
    }

    /// The GPU.
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// Bytes of weights on the device.
    pub fn weight_bytes(&self) -> usize {
        self.plan
            .buffers
            .iter()
            .filter(|b| matches!(b.kind, BufferKind::Const(_)))
            .map(|b| b.shape.iter().product::<usize>() * b.dtype.size())
            .sum()
    }
}

/// One prepared step.
enum Call {
    /// `dependent`: launched to start before the step before it has finished (see
    /// [`Kernel::launch_on`]).
    Kernel {
        name: String,
        kernel: Kernel,
        config: LaunchConfig,
        params: Vec<Param>,
        dependent: bool,
    },
    Gemm(GemmCall),
    Conv(ConvCall),
}

impl Call {
    /// What the step launches, for error messages.
    fn what(&self) -> &str {
        match self {
            Call::Kernel { name, .. } => name,
            Call::Gemm(_) => "cuBLASLt matmul",
            Call::Conv(_) => "cuDNN convolution",
        }
    }
}

/// Whether kernels that wait for the work before them themselves are launched to start before
/// it has finished (programmatic dependent launch): on sm_90 and later, unless `KILN_PDL=0`
/// (to compare). Between two INT8 implicit GEMMs the next one's blocks then take the SMs the
/// last one's free and copy their filter tiles while its last blocks finish.
fn dependent_launches(arch: &str) -> bool {
    let major =
        arch.strip_prefix("sm_").and_then(|v| v.get(..v.len().saturating_sub(1))).and_then(|v| v.parse::<u32>().ok());
    major.is_some_and(|m| m >= 9) && std::env::var("KILN_PDL").map_or(true, |v| v != "0")
}

/// One stream of execution of an engine, with its own arena. Create one per thread.
pub struct ExecutionContext {
    engine: Arc<Engine>,
    stream: Arc<CudaStream>,
    _arena: Buffer,
    addrs: Vec<u64>,
    /// Each step's node and prepared call.
    calls: Vec<(String, Call)>,
    lt: Option<LtHandle>,
    dnn: Option<DnnHandle>,
    workspace: (u64, usize),
    graph: Option<CudaGraph>,
    /// Capture failed once: launch step by step from then on.
    no_graph: bool,
    runs: u64,
    start: CudaEvent,
    end: CudaEvent,
}

// SAFETY: a context is used by one thread at a time (`&mut self` on every enqueue); its CUDA
// graph and handles may move between threads as long as calls are not concurrent, which the
// borrow rules ensure here.
#[allow(unsafe_code)]
unsafe impl Send for ExecutionContext {}

impl ExecutionContext {
    /// A context for `engine`: allocates its arena and prepares every step.
    pub fn new(engine: Arc<Engine>) -> Result<ExecutionContext> {
        let ctx = engine.gpu.context().clone();
        ctx.bind_to_thread().map_err(drv("bind context"))?;
        let stream = ctx.new_stream().map_err(drv("create stream"))?;
        let arena = engine.gpu.alloc(engine.memory.arena_bytes as usize, "execution context arena")?;
        let base = engine.gpu.addr(&arena, 0);
        let plan = &engine.plan;
        let mut addrs = vec![0u64; plan.buffers.len()];
        for (i, b) in plan.buffers.iter().enumerate() {
            addrs[i] = match &b.kind {
                BufferKind::Const(_) => engine.weights[i].as_ref().map_or(0, |w| engine.gpu.addr(w, 0)),
                BufferKind::View(_) => 0,
                BufferKind::Temp | BufferKind::Input(_) => match engine.memory.offsets[i] {
                    Some(o) => base + o,
                    None => return Err(CudaError::Invalid(format!("buffer {} has no place in the arena", b.name))),
                },
            };
        }
        for (i, b) in plan.buffers.iter().enumerate() {
            if let BufferKind::View(owner) = b.kind {
                addrs[i] = *addrs
                    .get(owner)
                    .ok_or_else(|| CudaError::Invalid(format!("view {} of missing buffer {owner}", b.name)))?;
            }
        }
        let addr = |b: BufferId| addrs.get(b).copied().unwrap_or(0);
        let workspace = (base + engine.memory.workspace_offset, engine.memory.workspace_bytes as usize);
        // Each library is loaded only by plans that call it.
        let has_gemm = plan.steps.iter().any(|s| matches!(s.kind, StepKind::Gemm(_)));
        let lt = if has_gemm { Some(LtHandle::new()?) } else { None };
        let has_conv = plan.steps.iter().any(|s| matches!(s.kind, StepKind::Conv(_)));
        let dnn = if has_conv { Some(DnnHandle::new(&stream)?) } else { None };
        let zeros = engine.gpu.addr(&engine.zeros, 0);
        let tf32 = engine.options.tf32;
        // Held while this context is made: the first one times the GEMM tactics, later ones
        // take the same.
        let mut tactics = engine.gemm_tactics.lock().map_err(|_| CudaError::Invalid("a context panicked".into()))?;
        let tuned = tactics.is_some();
        let mut chosen = vec![None; plan.steps.len()];
        let mut calls = Vec::with_capacity(plan.steps.len());
        let dependent_launch = dependent_launches(engine.gpu.arch());
        for (s, step) in plan.steps.iter().enumerate() {
            let at = |e: CudaError| CudaError::Invalid(format!("node {}: {e}", step.node));
            let call = match &step.kind {
                StepKind::Kernel(k) => Call::Kernel {
                    dependent: dependent_launch && waits_for_dependencies(&k.kernel),
                    name: k.kernel.clone(),
                    kernel: engine.kernels[s].ok_or_else(|| CudaError::Invalid(format!("step {s} has no kernel")))?,
                    config: k.config,
                    params: k.args.iter().map(|a| plan.param(k, a, &addr)).collect::<Result<_>>().map_err(at)?,
                },
                StepKind::Gemm(g) => {
                    let h = lt.as_ref().ok_or_else(|| CudaError::Invalid("no cuBLASLt handle".into()))?;
                    let mut call = GemmCall::new(h, g, &addr, tf32, workspace.1).map_err(at)?;
                    match tactics.as_ref().and_then(|t| t.get(s).copied().flatten()) {
                        Some(algo) => call.set_algo(algo),
                        None if engine.options.tune_gemms && !tuned => {
                            call.tune(h, &stream, workspace.0).map_err(at)?;
                        }
                        None => {}
                    }
                    chosen[s] = Some(call.algo());
                    Call::Gemm(call)
                }
                StepKind::Conv(c) => {
                    let h = dnn.as_ref().ok_or_else(|| CudaError::Invalid("no cuDNN handle".into()))?;
                    let tune = engine.options.autotune.then_some(workspace.0);
                    Call::Conv(ConvCall::new(h, c, &addr, zeros, tf32, workspace.1, tune).map_err(at)?)
                }
            };
            calls.push((step.node.clone(), call));
        }
        if !tuned {
            *tactics = Some(chosen);
        }
        drop(tactics);
        let event = || ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(drv("create event"));
        Ok(ExecutionContext {
            start: event()?,
            end: event()?,
            engine,
            stream,
            _arena: arena,
            addrs,
            calls,
            lt,
            dnn,
            workspace,
            graph: None,
            no_graph: false,
            runs: 0,
        })
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Whether the context replays a CUDA graph now.
    pub fn uses_graph(&self) -> bool {
        self.graph.is_some()
    }

    /// Enqueues one prepared step on the context's stream; an error names the step's node and
    /// what it launches. With `sync_steps` it also waits for the step, so that a fault while it
    /// runs is reported here.
    fn enqueue_call(&self, node: &str, call: &Call) -> Result<()> {
        let at = |e: CudaError| CudaError::Driver(format!("node {node} ({}): {e}", call.what()));
        match call {
            Call::Kernel { kernel, config, params, dependent, .. } => {
                kernel.launch_on(*config, params, &self.stream, *dependent).map_err(at)
            }
            Call::Gemm(g) => {
                let h = self.lt.as_ref().ok_or_else(|| CudaError::Invalid("no cuBLASLt handle".into()))?;
                g.enqueue(h, &self.stream, self.workspace.0).map_err(at)
            }
            Call::Conv(c) => {
                let h = self.dnn.as_ref().ok_or_else(|| CudaError::Invalid("no cuDNN handle".into()))?;
                c.enqueue(h, self.workspace.0).map_err(at)
            }
        }?;
        if self.engine.options.sync_steps {
            self.stream
                .synchronize()
                .map_err(|e| CudaError::Driver(format!("node {node} ({}) faulted while it ran: {e}", call.what())))?;
        }
        Ok(())
    }

    /// Waits for the stream; an error raised by work in flight is reported as a fault of this
    /// run, with the way to find the launch that caused it.
    fn wait(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| {
            CudaError::Driver(format!(
                "run {} of the engine failed in one of its {} launches: {e}; set KILN_SYNC_STEPS=1 \
                 (or pass --sync-steps) to wait for each launch and name the one that fails",
                self.runs,
                self.calls.len()
            ))
        })
    }

    fn launch_all(&self) -> Result<()> {
        let stream = &self.stream;
        for (flag, _) in &self.engine.plan.error_flags {
            let b = &self.engine.plan.buffers[*flag];
            let n = b.shape.iter().product::<usize>() * b.dtype.size();
            #[allow(unsafe_code)]
            // SAFETY: the flag buffer lies in this context's arena, which outlives the stream's
            // work (the context synchronizes before it is dropped).
            unsafe { cudarc::driver::result::memset_d8_async(self.addrs[*flag], 0, n, stream.cu_stream()) }
                .map_err(drv("clear error flag"))?;
        }
        for (node, call) in &self.calls {
            self.enqueue_call(node, call)?;
        }
        Ok(())
    }

    /// Enqueues one execution of the plan on the context's stream, on the inputs already in
    /// place. After the first execution (which lets the libraries finish their lazy set-up),
    /// the plan is captured as a CUDA graph and replayed, if the engine's options allow.
    pub fn enqueue(&mut self) -> Result<()> {
        self.engine.gpu.context().bind_to_thread().map_err(drv("bind context"))?;
        self.runs += 1;
        if let Some(g) = &self.graph {
            return g.launch().map_err(drv("launch CUDA graph"));
        }
        let options = &self.engine.options;
        if options.cuda_graph && !options.sync_steps && !self.no_graph && self.runs > 1 {
            self.stream.synchronize().map_err(drv("synchronize"))?;
            self.stream
                .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
                .map_err(drv("begin CUDA graph capture"))?;
            let launched = self.launch_all();
            let captured =
                self.stream.end_capture(CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH);
            launched?;
            match captured {
                Ok(Some(g)) => {
                    g.launch().map_err(drv("launch CUDA graph"))?;
                    self.graph = Some(g);
                    return Ok(());
                }
                Ok(None) | Err(_) => {
                    // Capture is an optimization: run the steps directly from now on.
                    eprintln!("warning: CUDA graph capture failed; launching kernels one by one");
                    self.no_graph = true;
                    return self.launch_all();
                }
            }
        }
        self.launch_all()
    }

    /// Copies `inputs` (in the plan's input order) into the arena, asynchronously.
    pub fn set_inputs(&mut self, inputs: &[Tensor]) -> Result<()> {
        let plan = &self.engine.plan;
        let stream = self.stream.cu_stream();
        self.engine.gpu.context().bind_to_thread().map_err(drv("bind context"))?;
        for (i, b) in plan.buffers.iter().enumerate() {
            let BufferKind::Input(k) = b.kind else { continue };
            let t = inputs.get(k).ok_or_else(|| CudaError::Invalid(format!("input {k} ({}) is missing", b.name)))?;
            if t.dtype() != b.dtype || t.shape() != b.shape.as_slice() {
                return Err(CudaError::Invalid(format!(
                    "input {k} ({}) is {}{:?}, the engine was built for {}{:?}",
                    b.name,
                    t.dtype(),
                    t.shape(),
                    b.dtype,
                    b.shape
                )));
            }
            let bytes = tensor_bytes(t)?;
            #[allow(unsafe_code)]
            // SAFETY: the input's place in the arena holds exactly its bytes; the copy from
            // pageable memory returns once the source has been read.
            unsafe { cudarc::driver::result::memcpy_htod_async(self.addrs[i], &bytes, stream) }
                .map_err(drv("copy input"))?;
        }
        Ok(())
    }

    /// Waits for the stream, then copies the outputs back and checks the plan's error flags.
    pub fn outputs(&mut self) -> Result<Vec<Tensor>> {
        self.engine.gpu.context().bind_to_thread().map_err(drv("bind context"))?;
        self.wait()?;
        let plan = &self.engine.plan;
        let read = |b: BufferId| -> Result<Vec<u8>> {
            let buf = &plan.buffers[b];
            let mut bytes = vec![0u8; buf.shape.iter().product::<usize>() * buf.dtype.size()];
            #[allow(unsafe_code)]
            // SAFETY: the buffer holds exactly `bytes.len()` bytes at its address; the stream is
            // idle, and the synchronous copy completes before `bytes` is read.
            unsafe { cudarc::driver::result::memcpy_dtoh_sync(&mut bytes, self.addrs[b]) }
                .map_err(drv("copy output"))?;
            Ok(bytes)
        };
        for (flag, message) in &plan.error_flags {
            if read(*flag)?.iter().any(|&v| v != 0) {
                return Err(CudaError::Invalid(message.clone()));
            }
        }
        plan.outputs
            .iter()
            .map(|&o| {
                let b = &plan.buffers[o];
                tensor_from_bytes(b.dtype, &b.shape, &read(o)?)
            })
            .collect()
    }

    /// Runs the plan on host inputs and returns host outputs.
    pub fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        self.set_inputs(inputs)?;
        self.enqueue()?;
        self.outputs()
    }

    /// Milliseconds of GPU time for one execution on the inputs in place, measured with CUDA
    /// events around the enqueue (waits for the stream).
    pub fn time_enqueue(&mut self) -> Result<f32> {
        self.start.record(&self.stream).map_err(drv("record event"))?;
        self.enqueue()?;
        self.end.record(&self.stream).map_err(drv("record event"))?;
        self.wait()?;
        self.start.elapsed_ms(&self.end).map_err(drv("elapsed time"))
    }

    /// GPU time of each step in milliseconds (launched one by one, with events between), for
    /// profiles: `(node, milliseconds)` in plan order.
    pub fn profile(&mut self) -> Result<Vec<(String, f32)>> {
        let ctx = self.engine.gpu.context().clone();
        ctx.bind_to_thread().map_err(drv("bind context"))?;
        let events: Vec<CudaEvent> = (0..=self.calls.len())
            .map(|_| ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(drv("create event")))
            .collect::<Result<_>>()?;
        events[0].record(&self.stream).map_err(drv("record event"))?;
        for (i, (node, call)) in self.calls.iter().enumerate() {
            self.enqueue_call(node, call)?;
            events[i + 1].record(&self.stream).map_err(drv("record event"))?;
        }
        self.wait()?;
        self.calls
            .iter()
            .enumerate()
            .map(|(i, (node, _))| Ok((node.clone(), events[i].elapsed_ms(&events[i + 1]).map_err(drv("elapsed"))?)))
            .collect()
    }
}

impl Drop for ExecutionContext {
    fn drop(&mut self) {
        // Work in flight reads the arena, which is freed after this.
        let _ = self.stream.synchronize();
    }
}

#[cfg(test)]
mod tests {
    use super::dependent_launches;

    /// Programmatic dependent launch needs sm_90; later architectures keep it.
    #[test]
    fn dependent_launches_start_at_sm_90() {
        if std::env::var("KILN_PDL").is_ok_and(|v| v == "0") {
            return; // turned off for this run
        }
        for (arch, on) in [("sm_80", false), ("sm_86", false), ("sm_89", false), ("sm_90", true), ("sm_100", true)] {
            assert_eq!(dependent_launches(arch), on, "{arch}");
        }
        assert!(!dependent_launches("nonsense"));
    }
}
