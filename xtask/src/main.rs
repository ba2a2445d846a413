//! Kiln's developer tasks, run as `cargo xtask <task>`.

mod conformance;
mod data;

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
    /// Downloads the ONNX test data into ~/.cache/kiln (done by `conformance` on demand).
    FetchData,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Conformance(a) => conformance::run(a),
        Task::FetchData => data::onnx_test_data().map(|p| println!("{}", p.display())),
    }
}
