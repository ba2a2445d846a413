//! Kiln's CUDA backend: CUDA C kernels compiled by NVRTC to CUBIN, code generation for the
//! fused elementwise expressions, and the device plumbing to run them.
//!
//! Nothing here needs a GPU to plan or compile: NVRTC runs on any machine where its library is
//! found ([`nvrtc::Nvrtc::locate`]). Anything that needs the driver first calls
//! [`driver::probe_driver`], so a machine without one gets [`CudaError::NoDriver`], never a
//! panic.
#![warn(missing_docs)]

pub mod blas;
pub mod codegen;
pub mod dnn;
pub mod driver;
mod error;
pub mod host;
pub mod kernels;
pub mod launch;
pub mod library;
pub mod nvrtc;
pub mod plan;

pub use error::{CudaError, Result};
