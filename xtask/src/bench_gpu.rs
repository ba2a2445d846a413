//! `cargo xtask bench-gpu`: Kiln against PyTorch eager and `torch.compile` on a GPU.
//!
//! The development machine has no GPU and the GPU machine has no Rust, so the task has two
//! halves, both in `xtask/scripts/gpu_check.sh`: `build` (here) puts the release binaries into
//! `.gpu/`; `run bench` (on the GPU machine, with `.gpu` carried) exports torchvision
//! ResNet-50, MobileNetV2 and a BERT-base encoder with random weights, checks Kiln's accuracy
//! there and times all three systems side by side (`xtask/scripts/gpu_bench.py`). On a machine
//! with both a GPU and Rust this task does both halves.

use anyhow::{bail, Result};
use std::process::Command;

#[derive(clap::Args)]
pub struct Args {
    /// Only build `.gpu/` and say how to run the benchmark, even where there is a GPU.
    #[arg(long)]
    build_only: bool,
}

pub fn run(a: Args) -> Result<()> {
    let script = "xtask/scripts/gpu_check.sh";
    if !Command::new("bash").args([script, "build"]).status()?.success() {
        bail!("{script} build failed");
    }
    let gpu = Command::new("nvidia-smi").arg("-L").output().is_ok_and(|o| o.status.success());
    if a.build_only || !gpu {
        println!(
            "no GPU here (or --build-only): carry .gpu to the GPU machine and run there, from the repository root:\n    \
             bash {script} run bench\nThe table is written to $OUT/bench.md (and printed last)."
        );
        return Ok(());
    }
    if !Command::new("bash").args([script, "run", "bench"]).status()?.success() {
        bail!("the GPU benchmark failed");
    }
    Ok(())
}
