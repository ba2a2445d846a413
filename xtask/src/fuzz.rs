//! `cargo xtask fuzz`: runs each cargo-fuzz target of `fuzz/` for a while, starting from the
//! committed seed corpus and growing a corpus of its own in `fuzz/grown/<target>/`, which git
//! ignores. A crash, hang (over 10 s per input) or out-of-memory (over 2 GiB) fails the task;
//! libFuzzer leaves the input in `fuzz/artifacts/<target>/`.
//!
//! Fuzzing needs nightly and cargo-fuzz. Where either is missing the task says so and
//! succeeds, unless `--require` makes that an error; `--install` tries to install them first
//! (what `cargo xtask ci` does).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(clap::Args)]
pub struct Args {
    /// Fuzz only this target (repeatable); all targets `cargo fuzz list` names by default.
    #[arg(long)]
    target: Vec<String>,
    /// Seconds to fuzz each target.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Fail instead of skipping when nightly or cargo-fuzz is missing.
    #[arg(long)]
    require: bool,
    /// Try to install a missing nightly or cargo-fuzz before giving up.
    #[arg(long)]
    install: bool,
    /// More libFuzzer flags, after `--` (for example `-- -jobs=1 -workers=1`).
    #[arg(last = true)]
    libfuzzer_args: Vec<String>,
}

/// The rustup proxy, not `$CARGO`: only the proxy understands `+nightly`.
fn cargo() -> Command {
    Command::new("cargo")
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Why fuzzing cannot run here, after trying to install what is missing if asked to.
fn missing_tool(install: bool) -> Option<String> {
    let nightly = || succeeds(cargo().args(["+nightly", "--version"]));
    if !nightly() {
        let installed = install
            && Command::new("rustup")
                .args(["toolchain", "install", "nightly", "--profile", "minimal"])
                .status()
                .is_ok_and(|s| s.success());
        if !installed || !nightly() {
            return Some("the nightly toolchain is missing (rustup toolchain install nightly)".into());
        }
    }
    let fuzz = || succeeds(cargo().args(["+nightly", "fuzz", "--version"]));
    if !fuzz() {
        let installed =
            install && cargo().args(["install", "cargo-fuzz", "--locked"]).status().is_ok_and(|s| s.success());
        if !installed || !fuzz() {
            return Some("cargo-fuzz is missing or cannot be installed (cargo install cargo-fuzz)".into());
        }
    }
    None
}

fn targets(dir: &Path) -> Result<Vec<String>> {
    let out =
        cargo().args(["+nightly", "fuzz", "list"]).current_dir(dir).output().context("running cargo fuzz list")?;
    if !out.status.success() {
        bail!("cargo fuzz list failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect())
}

pub fn run(a: Args) -> Result<()> {
    if let Some(why) = missing_tool(a.install) {
        if a.require {
            bail!("cannot fuzz: {why}");
        }
        println!("skipping fuzzing: {why}");
        return Ok(());
    }
    // Run inside fuzz/, so relative corpus paths and libFuzzer's fuzz-N.log files land there.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let targets = if a.target.is_empty() { targets(&dir)? } else { a.target };
    for t in &targets {
        // The grown corpus comes first, so libFuzzer writes new inputs there and leaves the
        // committed seeds alone.
        let grown = format!("grown/{t}");
        std::fs::create_dir_all(dir.join(&grown))?;
        let mut args =
            vec!["+nightly".to_string(), "fuzz".into(), "run".into(), t.clone(), grown, format!("corpus/{t}")];
        args.extend([
            "--".into(),
            format!("-max_total_time={}", a.seconds),
            "-rss_limit_mb=2048".into(),
            "-timeout=10".into(),
        ]);
        args.extend(a.libfuzzer_args.iter().cloned());
        println!("\n==> fuzz {t} for {} s: (cd fuzz && cargo {})", a.seconds, args.join(" "));
        if !cargo().args(&args).current_dir(&dir).status().context("running cargo fuzz")?.success() {
            bail!("fuzz target {t} failed: see the input libFuzzer saved under fuzz/artifacts/{t}/");
        }
    }
    Ok(())
}
