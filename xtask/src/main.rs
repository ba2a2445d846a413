//! Kiln's developer tasks, run as `cargo xtask <task>`.

mod bench_cpu;
mod bench_fuse;
mod bench_gpu;
mod ci;
mod conformance;
mod data;
mod demo;
mod fetch_nvrtc;
mod fuzz;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Kiln developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Runs the ONNX backend test suite through the importer and the CPU executor.
    Conformance(conformance::Args),
    /// Builds kiln, runs a small model with it and checks the result (the README's main job).
    Demo,
    /// Runs every check CI runs: format, clippy, tests, a minute of fuzzing per target, conformance manifest.
    Ci,
    /// Times Kiln's CPU executor against onnxruntime on the same machine.
    BenchCpu(bench_cpu::Args),
    /// Kiln against PyTorch eager and torch.compile on a GPU (builds here, runs on the GPU machine).
    BenchGpu(bench_gpu::Args),
    /// Times fusion of a 12-layer BERT-base encoder (target: under 2 s).
    BenchFuse(bench_fuse::Args),
    /// Runs each cargo-fuzz target for a while (needs nightly and cargo-fuzz; skips without).
    Fuzz(fuzz::Args),
    /// Downloads the ONNX test data into ~/.cache/kiln (done by `conformance` on demand).
    FetchData,
    /// Downloads the NVRTC wheels into ~/.cache/kiln/nvrtc, so kernels compile without CUDA.
    FetchNvrtc,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Conformance(a) => conformance::run(a),
        Task::Demo => demo::run(),
        Task::Ci => ci::run(),
        Task::BenchCpu(a) => bench_cpu::run(a),
        Task::BenchFuse(a) => bench_fuse::run(a),
        Task::BenchGpu(a) => bench_gpu::run(a),
        Task::Fuzz(a) => fuzz::run(a),
        Task::FetchData => data::onnx_test_data().map(|p| println!("{}", p.display())),
        Task::FetchNvrtc => fetch_nvrtc::run(),
    }
}
