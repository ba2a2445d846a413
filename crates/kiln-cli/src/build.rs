//! `kiln build`: import, optimize and fuse a model, and explain what fusion did.
//!
//! Until the CUDA backend lands, the build stops at the optimized IR: there is no engine file
//! to write yet, so the command reports (and with `--dump` writes) the fused graph instead.

use anyhow::{Context, Result};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// The model (.onnx).
    model: PathBuf,
    /// Concrete shape of an input with symbolic or unknown dims, as NAME=1x3x224x224.
    #[arg(long = "shapes", value_name = "NAME=DIMS")]
    shapes: Vec<String>,
    /// Print what fusion did: op counts before and after, rules fired, e-graph size, stop
    /// reason and time.
    #[arg(long)]
    explain: bool,
    /// Print the report as JSON instead (implies --explain).
    #[arg(long)]
    json: bool,
    /// Write the optimized graph for Graphviz, fused nodes labelled with what they cover.
    #[arg(long, value_name = "FILE")]
    dot: Option<PathBuf>,
    /// Write the optimized IR as text.
    #[arg(long, value_name = "FILE")]
    dump: Option<PathBuf>,
    /// Leave out fusion (the IR passes still run).
    #[arg(long)]
    no_fuse: bool,
    /// Leave out a rule family (cleanup, conv_bn, elementwise, gemm_epilogue, norm, attention);
    /// may be repeated.
    #[arg(long = "disable-rules", value_name = "FAMILY")]
    disable: Vec<String>,
}

pub fn run(a: Args) -> Result<()> {
    let name = a.model.display().to_string();
    let t0 = Instant::now();
    let mut model = kiln::load(&a.model).with_context(|| format!("loading {name}"))?;
    for w in &model.warnings {
        eprintln!("warning: {w}");
    }
    let families: Vec<&str> = kiln::fuse::rules::families().iter().map(|(n, _)| *n).collect();
    if let Some(bad) = a.disable.iter().find(|d| !families.contains(&d.as_str())) {
        anyhow::bail!("unknown rule family '{bad}'; the families are {}", families.join(", "));
    }
    let shapes: HashMap<String, Vec<usize>> =
        a.shapes.iter().map(|s| crate::parse_shape_arg(s)).collect::<Result<_>>()?;
    kiln::specialize(&mut model.graph, &shapes).with_context(|| format!("fixing input shapes of {name}"))?;
    let mut opts = kiln::OptimizeOptions { fuse: !a.no_fuse, ..Default::default() };
    opts.fuse_options.disabled = a.disable.clone();
    let done = kiln::optimize_with(&mut model.graph, &opts).with_context(|| format!("optimizing {name}"))?;
    let g = &model.graph;
    if let Some(path) = &a.dot {
        std::fs::write(path, kiln::fuse::to_dot(g)).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &a.dump {
        std::fs::write(path, g.dump()).with_context(|| format!("writing {}", path.display()))?;
    }
    match (&done.fusion, a.json, a.explain) {
        (Some(r), true, _) => println!("{}", serde_json::to_string_pretty(r)?),
        (Some(r), false, true) => print!("{r}"),
        (None, true, _) => println!("{}", serde_json::json!({ "fusion": null })),
        _ => {}
    }
    if !a.json {
        let launching = kiln::fuse::launching_nodes(g);
        println!(
            "built {name}: {} nodes, {launching} launch work ({:.2} s); no engine is written until the CUDA backend lands",
            g.node_count(),
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
