//! `cargo xtask demo`: the README's main job. Builds the `kiln` binary, builds an engine from a
//! small CNN (NVRTC compiles its kernels; `fetch-nvrtc` installs NVRTC first), runs it on the
//! GPU where there is one and on the CPU reference otherwise, and checks the output against
//! the expected output that onnx's reference evaluator produced (`tests/models/make_models.py`).

use anyhow::{bail, Context, Result};
use std::process::Command;

fn kiln(kiln: &str, args: &[&str]) -> Result<bool> {
    println!("\n$ {kiln} {}", args.join(" "));
    Ok(Command::new(kiln).args(args).status().with_context(|| format!("running {kiln}"))?.success())
}

pub fn run() -> Result<()> {
    let status = Command::new(env!("CARGO")).args(["build", "--release", "-q", "-p", "kiln-cli"]).status()?;
    if !status.success() {
        bail!("building kiln failed");
    }
    // The kiln binary sits next to this xtask binary: both are release builds of one target dir.
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    let kiln_path = exe.with_file_name(format!("kiln{}", std::env::consts::EXE_SUFFIX));
    let bin = kiln_path.to_str().context("the target directory's path is not UTF-8")?;
    let model = "tests/models/tiny_cnn.onnx";
    let input = "x=tests/models/tiny_cnn.input.x.npy";
    let out_dir = "target/demo";
    let engine = "target/demo/tiny_cnn.kiln";
    std::fs::create_dir_all(out_dir)?;
    if !kiln(bin, &["inspect", model])? {
        bail!("kiln inspect failed");
    }
    let gpu = kiln::cuda::driver::Gpu::new(0);
    let nvrtc = crate::fetch_nvrtc::run();
    let built = nvrtc.is_ok() && kiln(bin, &["build", model, "--no-tf32", "-o", engine])?;
    match (&gpu, built) {
        (Ok(_), true) => {
            let run = ["run", engine, "--device", "cuda", "--input", input, "--output-dir", out_dir];
            if !kiln(bin, &["inspect", engine])? || !kiln(bin, &run)? {
                bail!("running the engine on the GPU failed");
            }
        }
        (Ok(_), false) => bail!("there is a GPU but the engine could not be built (NVRTC: {:?})", nvrtc.err()),
        (Err(why), _) => {
            println!("\nno GPU here ({why}): running the model on the CPU reference");
            if !kiln(bin, &["run", model, "--input", input, "--output-dir", out_dir, "--device", "cpu"])? {
                bail!("kiln run failed");
            }
        }
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
