//! The kernel library on one GPU: families compiled for the device's architecture on first
//! use and loaded once, generated kernels likewise, and tensors on the device.

use crate::blas::{GemmCall, LtHandle};
use crate::codegen::ElementwiseKernel;
use crate::driver::{Buffer, Gpu, Kernel, Module};
use crate::error::{CudaError, Result};
use crate::host::{tensor_bytes, tensor_from_bytes};
use crate::kernels::KernelFamily;
use crate::nvrtc::Nvrtc;
use crate::plan::{BufferKind, ModuleRef, Plan, StepKind};
use kiln_ir::{DType, Tensor};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The cuBLASLt workspace of [`KernelLibrary::run_plan`], in bytes.
const RUN_PLAN_WORKSPACE: usize = 32 << 20;

/// Compiled and loaded kernels of one GPU.
pub struct KernelLibrary {
    gpu: Arc<Gpu>,
    nvrtc: Nvrtc,
    modules: Mutex<HashMap<String, Arc<Module>>>,
}

/// A tensor in device memory: a buffer, its element type and shape (row-major).
pub struct DeviceTensor {
    /// The memory.
    pub buf: Buffer,
    /// Element type.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<usize>,
}

impl KernelLibrary {
    /// A library for `gpu`, compiling with `nvrtc`.
    pub fn new(gpu: Arc<Gpu>, nvrtc: Nvrtc) -> KernelLibrary {
        KernelLibrary { gpu, nvrtc, modules: Mutex::new(HashMap::new()) }
    }

    /// The GPU.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    fn module(&self, key: &str, name: &str, source: &str) -> Result<Arc<Module>> {
        let mut m = self.modules.lock().map_err(|_| CudaError::Driver("kernel library lock poisoned".into()))?;
        if let Some(module) = m.get(key) {
            return Ok(module.clone());
        }
        let cubin = self.nvrtc.compile(name, source, self.gpu.arch())?;
        let module = Arc::new(self.gpu.load(&cubin.image)?);
        m.insert(key.to_string(), module.clone());
        Ok(module)
    }

    /// A family's module, compiled and loaded on first use.
    pub fn family_module(&self, family: KernelFamily) -> Result<Arc<Module>> {
        self.module(family.name(), family.name(), &family.source())
    }

    /// A generated kernel's module, compiled and loaded on first use.
    pub fn generated_module(&self, k: &ElementwiseKernel) -> Result<Arc<Module>> {
        self.module(&k.name, &k.name, &k.source)
    }

    /// A kernel of a family, such as `layernorm_f16` of [`KernelFamily::Norm`].
    pub fn kernel(&self, family: KernelFamily, name: &str) -> Result<(Arc<Module>, Kernel)> {
        let module = self.module(family.name(), family.name(), &family.source())?;
        let k = module.kernel(name)?;
        Ok((module, k))
    }

    /// A generated kernel.
    pub fn generated(&self, k: &ElementwiseKernel) -> Result<(Arc<Module>, Kernel)> {
        let module = self.module(&k.name, &k.name, &k.source)?;
        let kernel = module.kernel(&k.name)?;
        Ok((module, kernel))
    }

    /// Copies a host tensor to the device.
    pub fn upload(&self, t: &Tensor) -> Result<DeviceTensor> {
        Ok(DeviceTensor { buf: self.gpu.upload(&tensor_bytes(t)?)?, dtype: t.dtype(), shape: t.shape().to_vec() })
    }

    /// A zeroed device tensor.
    pub fn zeros(&self, dtype: DType, shape: &[usize]) -> Result<DeviceTensor> {
        let n: usize = shape.iter().product();
        Ok(DeviceTensor { buf: self.gpu.zeros(n * dtype.size())?, dtype, shape: shape.to_vec() })
    }

    /// Copies a device tensor back.
    pub fn download(&self, t: &DeviceTensor) -> Result<Tensor> {
        tensor_from_bytes(t.dtype, &t.shape, &self.gpu.download(&t.buf)?)
    }

    /// The device address of a tensor's first element.
    pub fn addr(&self, t: &DeviceTensor) -> u64 {
        self.gpu.addr(&t.buf, 0)
    }
}

impl KernelLibrary {
    /// Runs a plan of kernel launches and GEMMs, synchronously, and returns its outputs.
    ///
    /// This is the reference path for testing plans against the CPU executor; the runtime owns
    /// real execution (memory reuse, streams, CUDA graphs). GEMMs run through cuBLASLt with
    /// its heuristic's algorithm and no TF32; a plan with a cuDNN convolution is refused.
    pub fn run_plan(&self, plan: &Plan, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        let mut mem: Vec<Option<DeviceTensor>> = Vec::with_capacity(plan.buffers.len());
        for b in &plan.buffers {
            let t = match &b.kind {
                BufferKind::Input(i) => {
                    let t = inputs
                        .get(*i)
                        .ok_or_else(|| CudaError::Invalid(format!("input {i} ({}) is missing", b.name)))?;
                    if t.dtype() != b.dtype || t.shape() != b.shape.as_slice() {
                        return Err(CudaError::Invalid(format!(
                            "input {i} ({}) is {}{:?}, the plan was made for {}{:?}",
                            b.name,
                            t.dtype(),
                            t.shape(),
                            b.dtype,
                            b.shape
                        )));
                    }
                    Some(self.upload(t)?)
                }
                BufferKind::Const(t) => Some(self.upload(t)?),
                BufferKind::Temp => Some(self.zeros(b.dtype, &b.shape)?),
                BufferKind::View(_) => None,
            };
            mem.push(t);
        }
        let addrs: Vec<u64> = mem.iter().map(|m| m.as_ref().map_or(0, |t| self.addr(t))).collect();
        let addr = |b: usize| addrs[b];
        // cuBLASLt reads addresses directly, so a view's is its owner's.
        let owner_addr = |b: usize| match plan.buffers.get(b).map(|x| &x.kind) {
            Some(BufferKind::View(o)) => addrs.get(*o).copied().unwrap_or(0),
            _ => addrs.get(b).copied().unwrap_or(0),
        };
        // cuBLASLt is loaded only for plans that call it, and works in the thread's current
        // context: this GPU's.
        let lt = if plan.steps.iter().any(|s| matches!(s.kind, StepKind::Gemm(_))) {
            self.gpu.context().bind_to_thread().map_err(|e| CudaError::Driver(format!("bind context: {e}")))?;
            Some((LtHandle::new()?, self.gpu.zeros(RUN_PLAN_WORKSPACE)?))
        } else {
            None
        };
        for step in &plan.steps {
            let k = match &step.kind {
                StepKind::Kernel(k) => k,
                StepKind::Gemm(g) => {
                    let (h, workspace) = lt.as_ref().ok_or_else(|| CudaError::Invalid("no cuBLASLt handle".into()))?;
                    let at = |e: CudaError| CudaError::Library(format!("node {}: {e}", step.node));
                    let call = GemmCall::new(h, g, &owner_addr, false, RUN_PLAN_WORKSPACE).map_err(at)?;
                    call.enqueue(h, self.gpu.stream(), self.gpu.addr(workspace, 0)).map_err(at)?;
                    self.gpu.synchronize().map_err(at)?;
                    continue;
                }
                StepKind::Conv(_) => {
                    return Err(CudaError::Unsupported(format!(
                        "node {}: convolution steps run through cuDNN in the runtime, not in run_plan",
                        step.node
                    )))
                }
            };
            let (_module, kernel) = match &k.module {
                ModuleRef::Family(f) => self.kernel(*f, &k.kernel)?,
                ModuleRef::Generated(i) => self.generated(
                    plan.generated.get(*i).ok_or_else(|| CudaError::Invalid(format!("no generated kernel {i}")))?,
                )?,
            };
            let params = k.args.iter().map(|a| plan.param(k, a, &addr)).collect::<Result<Vec<_>>>()?;
            self.gpu
                .launch(kernel, k.config, &params)
                .map_err(|e| CudaError::Driver(format!("node {}: {e}", step.node)))?;
        }
        for (flag, message) in &plan.error_flags {
            if let Some(t) = &mem[*flag] {
                if self.download(t)?.to_i64_vec().iter().any(|&v| v != 0) {
                    return Err(CudaError::Invalid(message.clone()));
                }
            }
        }
        plan.outputs
            .iter()
            .map(|&o| {
                let b = &plan.buffers[o];
                let owner = match b.kind {
                    BufferKind::View(owner) => owner,
                    _ => o,
                };
                let t = mem[owner]
                    .as_ref()
                    .ok_or_else(|| CudaError::Invalid(format!("output {} has no memory", b.name)))?;
                let bytes = self.gpu.download(&t.buf)?;
                tensor_from_bytes(b.dtype, &b.shape, &bytes)
            })
            .collect()
    }
}
