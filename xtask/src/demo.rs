//! `cargo xtask demo`: the README's main job. Builds the `kiln` binary, runs a small model
//! with it on the CPU reference executor, and checks the output against the expected output
//! that onnx's reference evaluator produced (`tests/models/make_models.py`).

use anyhow::{bail, Context, Result};
use std::process::Command;

pub fn run() -> Result<()> {
    let status = Command::new(env!("CARGO")).args(["build", "--release", "-q", "-p", "kiln-cli"]).status()?;
    if !status.success() {
        bail!("building kiln failed");
    }
    // The kiln binary sits next to this xtask binary: both are release builds of one target dir.
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    let kiln_path = exe.with_file_name(format!("kiln{}", std::env::consts::EXE_SUFFIX));
    let kiln = kiln_path.to_str().context("the target directory's path is not UTF-8")?;
    let model = "tests/models/tiny_cnn.onnx";
    let out_dir = "target/demo";
    println!("$ {kiln} inspect {model}");
    let ok = Command::new(kiln).args(["inspect", model]).status().with_context(|| format!("running {kiln}"))?.success();
    if !ok {
        bail!("kiln inspect failed");
    }
    println!("\n$ {kiln} run {model} --input x=tests/models/tiny_cnn.input.x.npy --output-dir {out_dir} --device cpu");
    let ok = Command::new(kiln)
        .args([
            "run",
            model,
            "--input",
            "x=tests/models/tiny_cnn.input.x.npy",
            "--output-dir",
            out_dir,
            "--device",
            "cpu",
        ])
        .status()?
        .success();
    if !ok {
        bail!("kiln run failed");
    }
    let got = kiln::npy::read(format!("{out_dir}/probs.npy").as_ref())?;
    let want = kiln::npy::read("tests/models/tiny_cnn.expected.probs.npy".as_ref())?;
    if got.shape() != want.shape() {
        bail!("output shape {:?}, expected {:?}", got.shape(), want.shape());
    }
    let err = got.to_f64_vec().iter().zip(want.to_f64_vec()).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    println!("\ncheck: max |kiln - onnx reference| = {err:.2e} over {} outputs", got.len());
    if err > 1e-5 {
        bail!("output differs from the reference by {err}");
    }
    println!("OK");
    Ok(())
}
