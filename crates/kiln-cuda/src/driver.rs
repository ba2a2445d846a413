//! The CUDA driver: probing for it, and a thin device context that loads CUBINs and launches
//! kernels.
//!
//! cudarc panics when it cannot load a library, so [`probe_driver`] opens `libcuda.so.1` with
//! libloading first and turns its absence into [`CudaError::NoDriver`]. Nothing in this crate
//! calls into cudarc's driver API before that probe succeeded.

use crate::error::{CudaError, Result};
use std::sync::OnceLock;

/// The driver library's name as the loader knows it.
pub const DRIVER_LIB: &str = "libcuda.so.1";

/// Checks that the CUDA driver library can be loaded, without calling into it.
pub fn probe_driver() -> Result<()> {
    static PROBE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            #[allow(unsafe_code)]
            // SAFETY: loading libcuda runs its initialisers, which have no preconditions; the
            // handle is dropped at once and cudarc loads the library again by the same name.
            let lib = unsafe { libloading::Library::new(DRIVER_LIB) };
            lib.map(drop).map_err(|e| e.to_string())
        })
        .clone()
        .map_err(CudaError::NoDriver)
}

fn drv(e: cudarc::driver::DriverError) -> CudaError {
    CudaError::Driver(e.to_string())
}

/// One GPU: a context and the stream every launch goes to.
pub struct Gpu {
    ctx: std::sync::Arc<cudarc::driver::CudaContext>,
    stream: std::sync::Arc<cudarc::driver::CudaStream>,
    arch: String,
}

/// A CUBIN loaded into a [`Gpu`]'s context.
pub struct Module {
    raw: cudarc::driver::sys::CUmodule,
    // Keeps the context alive as long as the module.
    _ctx: std::sync::Arc<cudarc::driver::CudaContext>,
}

// SAFETY: a CUmodule is a handle the driver API accepts from any thread once its context is
// current there, which every use here ensures (`Gpu::load`, `Module::kernel` and `Gpu::launch`
// bind the context first); the module is never mutated after loading. cudarc makes the same
// promise for its own module wrapper.
#[allow(unsafe_code)]
unsafe impl Send for Module {}
// SAFETY: as for Send; all methods take `&self` and only read the handle.
#[allow(unsafe_code)]
unsafe impl Sync for Module {}

/// A kernel of a loaded [`Module`].
#[derive(Clone, Copy)]
pub struct Kernel {
    raw: cudarc::driver::sys::CUfunction,
}

// SAFETY: a CUfunction is an immutable handle into a loaded module, valid on any thread where
// the module's context is current (cudarc declares its CudaFunction Send and Sync likewise).
#[allow(unsafe_code)]
unsafe impl Send for Kernel {}
// SAFETY: as for Send.
#[allow(unsafe_code)]
unsafe impl Sync for Kernel {}

/// The launch configuration of one kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchConfig {
    /// Blocks in x, y, z.
    pub grid: (u32, u32, u32),
    /// Threads per block in x, y, z.
    pub block: (u32, u32, u32),
    /// Dynamic shared memory in bytes.
    pub shared_bytes: u32,
}

impl LaunchConfig {
    /// A one-dimensional launch of `blocks` blocks of `threads` threads.
    pub fn linear(blocks: u32, threads: u32) -> LaunchConfig {
        LaunchConfig { grid: (blocks.max(1), 1, 1), block: (threads, 1, 1), shared_bytes: 0 }
    }
}

/// Device memory owned by a [`Gpu`]; bytes, typed by the caller.
pub struct Buffer {
    slice: cudarc::driver::CudaSlice<u8>,
}

impl Gpu {
    /// Opens device `ordinal`; fails with [`CudaError::NoDriver`] where there is no driver.
    pub fn new(ordinal: usize) -> Result<Gpu> {
        probe_driver()?;
        let ctx = cudarc::driver::CudaContext::new(ordinal).map_err(drv)?;
        let (major, minor) = ctx.compute_capability().map_err(drv)?;
        let stream = ctx.default_stream();
        Ok(Gpu { ctx, stream, arch: format!("sm_{major}{minor}") })
    }

    /// The driver context, for the runtime's streams, events and graphs.
    pub fn context(&self) -> &std::sync::Arc<cudarc::driver::CudaContext> {
        &self.ctx
    }

    /// The stream [`Gpu::launch`] runs on (library calls of the synchronous reference path go
    /// there too).
    pub fn stream(&self) -> &std::sync::Arc<cudarc::driver::CudaStream> {
        &self.stream
    }

    /// Waits for everything enqueued on [`Gpu::stream`].
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(drv)
    }

    /// Free and total device memory in bytes.
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        self.ctx.bind_to_thread().map_err(drv)?;
        cudarc::driver::result::mem_get_info().map_err(drv)
    }

    /// A new zeroed buffer of `len` bytes for `what`; running out of memory is
    /// [`CudaError::OutOfMemory`], saying how much was asked for and how much was free.
    pub fn alloc(&self, len: usize, what: &str) -> Result<Buffer> {
        match self.stream.alloc_zeros::<u8>(len.max(1)) {
            // The zeroing runs on this stream; callers use the buffer on streams of their own
            // (execution contexts), which do not wait for it, so it must be done first. Found
            // on the GPU: a 4 GiB arena was still being zeroed while its first run wrote it.
            Ok(slice) => {
                self.stream.synchronize().map_err(drv)?;
                Ok(Buffer { slice })
            }
            Err(e) if e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => {
                let (free, total) = self.mem_info().unwrap_or((0, 0));
                Err(CudaError::OutOfMemory { what: what.to_string(), asked: len, free, total })
            }
            Err(e) => Err(drv(e)),
        }
    }

    /// The device's architecture, such as `sm_90`.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// Loads a CUBIN image.
    pub fn load(&self, cubin: &[u8]) -> Result<Module> {
        self.ctx.bind_to_thread().map_err(drv)?;
        #[allow(unsafe_code)]
        // SAFETY: `cubin` is a complete image produced by NVRTC for this device's architecture,
        // alive for the duration of the call; the driver copies it.
        let raw = unsafe { cudarc::driver::result::module::load_data(cubin.as_ptr().cast()) }.map_err(drv)?;
        Ok(Module { raw, _ctx: self.ctx.clone() })
    }

    /// Copies host bytes to a new device buffer.
    pub fn upload(&self, bytes: &[u8]) -> Result<Buffer> {
        // A zero-length allocation is refused by the driver; keep one byte instead.
        let slice = if bytes.is_empty() {
            self.stream.alloc_zeros::<u8>(1).map_err(drv)?
        } else {
            self.stream.memcpy_stod(bytes).map_err(drv)?
        };
        Ok(Buffer { slice })
    }

    /// A new zeroed device buffer of `len` bytes.
    pub fn zeros(&self, len: usize) -> Result<Buffer> {
        Ok(Buffer { slice: self.stream.alloc_zeros::<u8>(len.max(1)).map_err(drv)? })
    }

    /// Copies a device buffer back to the host (waits for the stream).
    pub fn download(&self, buf: &Buffer) -> Result<Vec<u8>> {
        self.stream.memcpy_dtov(&buf.slice).map_err(drv)
    }

    /// The device address of a buffer, plus `offset_bytes`.
    pub fn addr(&self, buf: &Buffer, offset_bytes: usize) -> u64 {
        use cudarc::driver::DevicePtr;
        let (ptr, _sync) = buf.slice.device_ptr(&self.stream);
        ptr + offset_bytes as u64
    }

    /// Launches `kernel` with the given parameters, each one the bytes of one kernel argument
    /// in declaration order (use [`Param`]), and waits for it to finish.
    pub fn launch(&self, kernel: Kernel, cfg: LaunchConfig, params: &[Param]) -> Result<()> {
        self.ctx.bind_to_thread().map_err(drv)?;
        kernel.reserve_shared(cfg.shared_bytes)?;
        let mut storage: Vec<Vec<u8>> = params.iter().map(|p| p.0.clone()).collect();
        let mut ptrs: Vec<*mut std::ffi::c_void> = storage.iter_mut().map(|b| b.as_mut_ptr().cast()).collect();
        #[allow(unsafe_code)]
        // SAFETY: `ptrs` holds one pointer per kernel parameter, each to a buffer of that
        // parameter's size and layout (the kernels' signatures are the crate's own and the
        // launch helpers build `params` to match); the buffers outlive the call, and the stream
        // is synchronized before they are dropped.
        unsafe {
            cudarc::driver::result::launch_kernel(
                kernel.raw,
                cfg.grid,
                cfg.block,
                cfg.shared_bytes,
                self.stream.cu_stream(),
                &mut ptrs,
            )
        }
        .map_err(drv)?;
        self.stream.synchronize().map_err(drv)
    }
}

/// The dynamic shared memory any kernel may take without asking for more.
const DEFAULT_DYNAMIC_SHARED: u32 = 48 * 1024;

impl Kernel {
    /// Lets the kernel launch with `bytes` of dynamic shared memory where that is more than the
    /// 48 KiB every kernel may take (the INT8 implicit GEMM's stages); the driver refuses a
    /// size past the device's limit.
    pub fn reserve_shared(&self, bytes: u32) -> Result<()> {
        if bytes <= DEFAULT_DYNAMIC_SHARED {
            return Ok(());
        }
        #[allow(unsafe_code)]
        // SAFETY: `raw` is a function of a loaded module (see `Module::kernel`); the attribute
        // takes a byte count.
        unsafe {
            cudarc::driver::result::function::set_function_attribute(
                self.raw,
                cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                bytes as i32,
            )
        }
        .map_err(|e| CudaError::Driver(format!("{bytes} bytes of shared memory: {e}")))
    }

    /// Enqueues the kernel on `stream` without waiting; the driver copies `params` before
    /// returning, so they need not outlive the call. The caller binds the context to the
    /// thread and keeps every buffer the kernel touches alive until the stream has run it.
    /// With `dependent` the kernel may start before the work before it on the stream has
    /// finished (programmatic dependent launch, sm_90 on): only for a kernel that waits for
    /// that work itself before it touches its buffers ([`crate::codegen::waits_for_dependencies`]).
    pub fn launch_on(
        &self,
        cfg: LaunchConfig,
        params: &[Param],
        stream: &cudarc::driver::CudaStream,
        dependent: bool,
    ) -> Result<()> {
        let mut storage: Vec<Vec<u8>> = params.iter().map(|p| p.0.clone()).collect();
        let mut ptrs: Vec<*mut std::ffi::c_void> = storage.iter_mut().map(|b| b.as_mut_ptr().cast()).collect();
        if dependent {
            use cudarc::driver::sys;
            #[allow(unsafe_code)]
            // SAFETY: the attribute value is a plain C union; all zeros is a valid value.
            let mut value: sys::CUlaunchAttributeValue = unsafe { std::mem::zeroed() };
            value.programmaticStreamSerializationAllowed = 1;
            let mut attr = sys::CUlaunchAttribute {
                id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
                pad: [0; 4],
                value,
            };
            let config = sys::CUlaunchConfig {
                gridDimX: cfg.grid.0,
                gridDimY: cfg.grid.1,
                gridDimZ: cfg.grid.2,
                blockDimX: cfg.block.0,
                blockDimY: cfg.block.1,
                blockDimZ: cfg.block.2,
                sharedMemBytes: cfg.shared_bytes,
                hStream: stream.cu_stream(),
                attrs: &mut attr,
                numAttrs: 1,
            };
            #[allow(unsafe_code)]
            // SAFETY: as for the plain launch below; `config` and its one attribute live for
            // the call, which copies them.
            let r = unsafe { sys::cuLaunchKernelEx(&config, self.raw, ptrs.as_mut_ptr(), std::ptr::null_mut()) };
            return r.result().map_err(drv);
        }
        #[allow(unsafe_code)]
        // SAFETY: as for `Gpu::launch`: one pointer per parameter, each to bytes of that
        // parameter's layout, alive for the call; cuLaunchKernel copies them.
        unsafe {
            cudarc::driver::result::launch_kernel(
                self.raw,
                cfg.grid,
                cfg.block,
                cfg.shared_bytes,
                stream.cu_stream(),
                &mut ptrs,
            )
        }
        .map_err(drv)
    }
}

impl Module {
    /// Finds a kernel by name.
    pub fn kernel(&self, name: &str) -> Result<Kernel> {
        let c = std::ffi::CString::new(name).map_err(|_| CudaError::Invalid(format!("bad kernel name {name:?}")))?;
        #[allow(unsafe_code)]
        // SAFETY: the module is loaded and alive for as long as `self`.
        let raw = unsafe { cudarc::driver::result::module::get_function(self.raw, c) }
            .map_err(|e| CudaError::Driver(format!("kernel {name}: {e}")))?;
        Ok(Kernel { raw })
    }
}

/// What the compiler gave a kernel, as the driver reports it: the numbers `kiln inspect` is
/// to show, and the limit a launch must respect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelResources {
    /// Registers per thread.
    pub registers: i32,
    /// Local memory per thread in bytes (spills and local arrays).
    pub local_bytes: i32,
    /// Static shared memory per block in bytes.
    pub shared_bytes: i32,
    /// The largest block the kernel can be launched with.
    pub max_threads: i32,
}

impl Gpu {
    /// The resources of a loaded kernel.
    pub fn resources(&self, kernel: Kernel) -> Result<KernelResources> {
        use cudarc::driver::sys::CUfunction_attribute_enum as A;
        self.ctx.bind_to_thread().map_err(drv)?;
        let get = |a: A| {
            #[allow(unsafe_code)]
            // SAFETY: the kernel comes from a loaded module (`Module::kernel`), which the
            // caller keeps alive while it holds the kernel.
            unsafe { cudarc::driver::result::function::get_function_attribute(kernel.raw, a) }.map_err(drv)
        };
        Ok(KernelResources {
            registers: get(A::CU_FUNC_ATTRIBUTE_NUM_REGS)?,
            local_bytes: get(A::CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES)?,
            shared_bytes: get(A::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)?,
            max_threads: get(A::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK)?,
        })
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        #[allow(unsafe_code)]
        // SAFETY: the module was loaded by `Gpu::load` and is unloaded once; launches are
        // synchronous, so no kernel of it is running.
        let _ = unsafe { cudarc::driver::result::module::unload(self.raw) };
    }
}

/// The bytes of one kernel parameter.
#[derive(Clone, Debug)]
pub struct Param(pub Vec<u8>);

impl Param {
    /// A device pointer.
    pub fn ptr(p: u64) -> Param {
        Param(p.to_ne_bytes().to_vec())
    }
    /// A 64-bit signed integer.
    pub fn i64(v: i64) -> Param {
        Param(v.to_ne_bytes().to_vec())
    }
    /// A 32-bit signed integer.
    pub fn i32(v: i32) -> Param {
        Param(v.to_ne_bytes().to_vec())
    }
    /// A 32-bit float.
    pub fn f32(v: f32) -> Param {
        Param(v.to_ne_bytes().to_vec())
    }
    /// A 64-bit unsigned integer (bit patterns, such as a pad value).
    pub fn u64(v: u64) -> Param {
        Param(v.to_ne_bytes().to_vec())
    }
    /// A struct of `i64` fields, laid out as the C struct of the same fields.
    pub fn i64s(v: &[i64]) -> Param {
        Param(v.iter().flat_map(|x| x.to_ne_bytes()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_driver_is_an_error_that_says_what_to_do() {
        if probe_driver().is_ok() {
            eprintln!("skipped: a CUDA driver is present, so its absence cannot be checked here");
            return;
        }
        let Err(e) = Gpu::new(0) else { panic!("Gpu::new succeeded without a driver") };
        assert!(matches!(e, CudaError::NoDriver(_)));
        assert!(e.to_string().starts_with("no CUDA driver found: run with --device cpu"), "{e}");
    }
}
