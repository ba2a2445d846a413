//! `kiln profile`: the GPU time of every step of the plan, as a table of the slowest steps and
//! as a Chrome trace (`--trace FILE.json`) that Perfetto and chrome://tracing open.
//!
//! Steps are launched one by one with CUDA events between them (no CUDA graph), so the sum
//! is a little above the graph's time; each step's time is the median over `--runs` runs.

use anyhow::{Context, Result};
use kiln::runtime::exec::ExecutionContext;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    load: crate::bench::Load,
    /// Write the per-step times as a Chrome trace.
    #[arg(long, value_name = "FILE.json")]
    trace: Option<PathBuf>,
    /// Runs to take the median of.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Steps to list, slowest first.
    #[arg(long, default_value_t = 25)]
    top: usize,
}

pub fn run(a: Args) -> Result<()> {
    let (engine, inputs) = crate::bench::load(&a.load)?;
    let mut ctx = ExecutionContext::new(engine.clone())?;
    ctx.run(&inputs)?;
    let mut samples: Vec<Vec<f32>> = vec![];
    let mut nodes = vec![];
    for _ in 0..a.runs.max(1) {
        let p = ctx.profile()?;
        if samples.is_empty() {
            samples = vec![vec![]; p.len()];
            nodes = p.iter().map(|(n, _)| n.clone()).collect();
        }
        for (i, (_, ms)) in p.into_iter().enumerate() {
            samples[i].push(ms);
        }
    }
    let plan = engine.plan();
    let median: Vec<f64> = samples
        .iter_mut()
        .map(|v| {
            v.sort_by(f32::total_cmp);
            v[v.len() / 2] as f64
        })
        .collect();
    let what = |i: usize| -> String {
        match &plan.steps[i].kind {
            kiln::cuda::plan::StepKind::Kernel(k) => format!("kernel {}", k.kernel),
            kiln::cuda::plan::StepKind::Gemm(g) => {
                format!("gemm {} m={} n={} k={} batch={} {:?}", g.dtype, g.m, g.n, g.k, g.batch, g.epilogue)
            }
            kiln::cuda::plan::StepKind::Conv(c) => {
                format!("conv {} {:?}*{:?} groups={} {:?}", c.dtype, c.x_shape, c.w_shape, c.groups, c.activation)
            }
        }
    };
    let total: f64 = median.iter().sum();
    let mut by_kind: std::collections::BTreeMap<&str, (usize, f64)> = Default::default();
    for (i, &ms) in median.iter().enumerate() {
        let kind = match &plan.steps[i].kind {
            kiln::cuda::plan::StepKind::Kernel(_) => "kernels",
            kiln::cuda::plan::StepKind::Gemm(_) => "cuBLASLt GEMMs",
            kiln::cuda::plan::StepKind::Conv(_) => "cuDNN convolutions",
        };
        let e = by_kind.entry(kind).or_default();
        e.0 += 1;
        e.1 += ms;
    }
    println!("{} steps, {total:.3} ms launched one by one (median of {} runs)", median.len(), a.runs.max(1));
    for (kind, (n, ms)) in &by_kind {
        println!("  {kind:<20} {n:>4} steps {ms:>9.3} ms ({:.0}%)", 100.0 * ms / total.max(1e-12));
    }
    let mut order: Vec<usize> = (0..median.len()).collect();
    order.sort_by(|&x, &y| median[y].total_cmp(&median[x]));
    println!("\n{:>9} {:>6}  {:<40} what", "ms", "share", "node");
    for &i in order.iter().take(a.top) {
        println!("{:>9.4} {:>5.1}%  {:<40} {}", median[i], 100.0 * median[i] / total.max(1e-12), nodes[i], what(i));
    }
    if let Some(path) = &a.trace {
        let mut t = 0.0;
        let events: Vec<_> = median
            .iter()
            .enumerate()
            .map(|(i, &ms)| {
                let e = serde_json::json!({
                    "name": nodes[i], "cat": what(i).split(' ').next().unwrap_or(""), "ph": "X",
                    "ts": t * 1e3, "dur": ms * 1e3, "pid": 0, "tid": 0, "args": { "step": i, "what": what(i) },
                });
                t += ms;
                e
            })
            .collect();
        let trace = serde_json::json!({ "traceEvents": events, "displayTimeUnit": "ms" });
        std::fs::write(path, serde_json::to_string(&trace)?).with_context(|| format!("writing {}", path.display()))?;
        println!("\nwrote {} ({} events)", path.display(), median.len());
    }
    Ok(())
}
