//! Kiln's runtime: what runs a launch plan of [`kiln_cuda::plan`].
//!
//! - [`memory`]: every activation gets an offset in one arena, by liveness.
//! - [`engine`]: the `.kiln` engine file (header, plan, weights, CUBINs, checksum).
//! - [`exec`]: an [`exec::Engine`] holds the weights and kernels on one GPU; each
//!   [`exec::ExecutionContext`] has its own arena and stream, so threads run concurrently.
#![warn(missing_docs)]

pub mod engine;
pub mod exec;
pub mod memory;
