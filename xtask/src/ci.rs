//! `cargo xtask ci`: everything CI checks, in order, stopping at the first failure.

use anyhow::{bail, Result};
use std::process::Command;

fn step(name: &str, args: &[&str]) -> Result<()> {
    println!("\n==> {name}: cargo {}", args.join(" "));
    let t0 = std::time::Instant::now();
    if !Command::new(env!("CARGO")).args(args).status()?.success() {
        bail!("{name} failed");
    }
    println!("<== {name} ok ({:.0} s)", t0.elapsed().as_secs_f64());
    Ok(())
}

pub fn run() -> Result<()> {
    step("format", &["fmt", "--all", "--", "--check"])?;
    step("clippy", &["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])?;
    step("test data", &["xtask", "fetch-data"])?;
    step("nvrtc", &["xtask", "fetch-nvrtc"])?;
    step("tests", &["test", "--workspace", "--release"])?;
    // A fixed seed: a clean clone then replays the same search every run, so CI fails on a
    // regression, not on whichever new input a random search happens to find that day.
    step("fuzz", &["xtask", "fuzz", "--seconds", "60", "--install", "--", "-seed=1"])?;
    // --plan-cuda: every passing graph and model fixture is planned for CUDA and every kernel
    // the plans use compiled by NVRTC for sm_80 and sm_90, with no failure allowed.
    step("conformance", &["xtask", "conformance", "--check", "--plan-cuda"])?;
    Ok(())
}
