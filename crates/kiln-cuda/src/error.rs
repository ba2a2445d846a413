//! The crate's error type.

use thiserror::Error;

/// Everything that can go wrong in the CUDA backend.
#[derive(Debug, Error)]
pub enum CudaError {
    /// `libcuda.so.1` could not be loaded, so nothing can run on a GPU here.
    #[error("no CUDA driver found: run with --device cpu ({0})")]
    NoDriver(String),
    /// NVRTC could not be found or loaded.
    #[error("NVRTC not found: {0}; run `cargo xtask fetch-nvrtc` or set KILN_NVRTC_DIR")]
    NoNvrtc(String),
    /// NVRTC rejected a source; the log says why.
    #[error("NVRTC failed to compile {name} for {arch}: {log}")]
    Compile {
        /// The program's name (the kernel family or the generated kernel).
        name: String,
        /// The target, such as `sm_90`.
        arch: String,
        /// NVRTC's log.
        log: String,
    },
    /// A call into the CUDA driver failed.
    #[error("CUDA driver call failed: {0}")]
    Driver(String),
    /// A call into cuBLASLt or cuDNN failed, or the library is missing.
    #[error("{0}")]
    Library(String),
    /// The GPU has too little free memory for an allocation.
    #[error("out of GPU memory: {what} asked for {asked} bytes, {free} of {total} bytes are free")]
    OutOfMemory {
        /// What was being allocated.
        what: String,
        /// Bytes asked for.
        asked: usize,
        /// Bytes free on the device at the time.
        free: usize,
        /// The device's memory.
        total: usize,
    },
    /// The expression or op cannot be lowered to CUDA; names the op and why.
    #[error("{0}")]
    Unsupported(String),
    /// Bad arguments to a kernel launch (shapes, strides, types).
    #[error("{0}")]
    Invalid(String),
    /// Reading or writing the on-disk cache failed.
    #[error("CUBIN cache at {path}: {source}")]
    Cache {
        /// The file or folder.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The crate's result type.
pub type Result<T, E = CudaError> = std::result::Result<T, E>;
