//! The `kiln` command line tool: build (optimize and fuse), inspect and run ONNX models.

mod bench;
mod build;
mod compare;
mod inspect;
mod profile;
mod run;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "kiln", version, about = "Kiln: a deep-learning inference compiler")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measures latency and throughput on the GPU (end to end and GPU compute alone).
    Bench(bench::Args),
    /// Optimizes and fuses a model; `--explain` says what fusion did, `--dot` draws the result.
    Build(build::Args),
    /// Compares the built model with the ONNX model in FP32 on the CPU reference, per output
    /// and (--per-layer) per layer.
    Compare(compare::Args),
    /// Runs a model on given or seeded random inputs and writes its outputs as .npy files.
    Run(run::Args),
    /// Times every step of the plan on the GPU; `--trace` writes a Chrome trace.
    Profile(profile::Args),
    /// Prints a model's ops, inputs, outputs, parameters and opsets.
    Inspect(inspect::Args),
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Bench(a) => bench::run(a),
        Command::Build(a) => build::run(a),
        Command::Compare(a) => compare::run(a),
        Command::Run(a) => run::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Profile(a) => profile::run(a),
    };
    if let Err(e) = r {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Parses `NAME=1x3x224x224`.
pub(crate) fn parse_shape_arg(s: &str) -> anyhow::Result<(String, Vec<usize>)> {
    let (name, dims) = s.split_once('=').ok_or_else(|| anyhow::anyhow!("expected NAME=DxDxD, got '{s}'"))?;
    let dims = if dims.is_empty() {
        vec![]
    } else {
        dims.split(['x', ','])
            .map(|d| d.trim().parse::<usize>().map_err(|_| anyhow::anyhow!("bad dimension '{d}' in '{s}'")))
            .collect::<Result<_, _>>()?
    };
    Ok((name.to_string(), dims))
}
