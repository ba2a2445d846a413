//! `cargo xtask bench-fuse`: how long fusion takes on a 12-layer BERT-base encoder written the
//! way torch.onnx.export writes it, and what it leaves. The target is under 2 s on the
//! development machine.

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Encoder layers.
    #[arg(long, default_value_t = 12)]
    layers: usize,
    /// Sequence length the graph is specialized to.
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// Batch size the graph is specialized to.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Timed fusion runs (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Print the fusion report of the last run.
    #[arg(long)]
    explain: bool,
}

pub fn run(a: Args) -> Result<()> {
    let dir = crate::data::cache_dir()?.join("models");
    std::fs::create_dir_all(&dir)?;
    let model = dir.join(format!("bert_base_{}l.onnx", a.layers));
    if !model.exists() {
        let py = crate::bench_cpu::python_with(&["onnx==1.19.1", "numpy"])?;
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/make_bert.py");
        eprintln!("writing {}", model.display());
        let ok = Command::new(py).arg(script).arg(&model).args(["--layers", &a.layers.to_string()]).status()?.success();
        if !ok {
            bail!("make_bert.py failed");
        }
    }
    let t0 = Instant::now();
    let mut m = kiln::load(&model).with_context(|| format!("loading {}", model.display()))?;
    let shapes: HashMap<String, Vec<usize>> =
        [("x".to_string(), vec![a.batch, a.seq, 768]), ("mask".to_string(), vec![a.batch, 1, 1, a.seq])]
            .into_iter()
            .collect();
    kiln::specialize(&mut m.graph, &shapes)?;
    kiln::optimize_with(&mut m.graph, &kiln::OptimizeOptions { fuse: false, ..Default::default() })?;
    println!("loaded and ran the IR passes in {:.2} s", t0.elapsed().as_secs_f64());
    let mut times = vec![];
    let mut last = None;
    for _ in 0..a.runs.max(1) {
        let t = Instant::now();
        let (g, report) = kiln::fuse::fuse(&m.graph, &Default::default())?;
        times.push(t.elapsed().as_secs_f64());
        last = Some((g, report));
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let (g, report) = last.expect("at least one run");
    if a.explain {
        print!("{report}");
    }
    let launching = kiln::fuse::launching_nodes(&g);
    println!(
        "bert-base {} layers, batch {} seq {}: fusion median {:.3} s over {} runs ({}); {} -> {} launching nodes ({:.1} per layer)",
        a.layers,
        a.batch,
        a.seq,
        median,
        times.len(),
        report.stop_reason,
        report.launching_before,
        launching,
        launching as f64 / a.layers as f64
    );
    println!("target: under 2 s: {}", if median < 2.0 { "met" } else { "NOT met" });
    Ok(())
}
