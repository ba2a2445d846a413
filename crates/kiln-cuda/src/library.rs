//! The kernel library on one GPU: families compiled for the device's architecture on first
//! use and loaded once, generated kernels likewise, and tensors on the device.

use crate::codegen::ElementwiseKernel;
use crate::driver::{Buffer, Gpu, Kernel, Module};
use crate::error::{CudaError, Result};
use crate::host::{tensor_bytes, tensor_from_bytes};
use crate::kernels::KernelFamily;
use crate::nvrtc::Nvrtc;
use kiln_ir::{DType, Tensor};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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
