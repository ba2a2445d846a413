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
    #[command(flatten)]
    int8: Int8Args,
}

/// INT8 flags, shared with `kiln compare`.
#[derive(clap::Args, Clone)]
pub struct Int8Args {
    /// Quantize convolutions and matrix products to INT8 (needs --calib or --calib-cache).
    #[arg(long)]
    pub int8: bool,
    /// Calibration data: a directory of .npz batches (one array per input) or, for a model
    /// with one input, .npy batches.
    #[arg(long, value_name = "DIR")]
    pub calib: Option<PathBuf>,
    /// The calibrator: entropy, minmax, mse, percentile or percentile:P.
    #[arg(long, default_value = "entropy")]
    pub calib_algo: String,
    /// A calibration cache: written after calibrating with --calib, read (and no data needed)
    /// without it.
    #[arg(long, value_name = "FILE")]
    pub calib_cache: Option<PathBuf>,
    /// Keep a layer in another precision, as NODE=int8|fp16|fp32; may be repeated.
    #[arg(long = "precision", value_name = "NODE=PRECISION")]
    pub precision: Vec<String>,
}

impl Int8Args {
    /// The INT8 options, or `None` without --int8.
    pub fn options(&self) -> Result<Option<kiln::Int8Options>> {
        if !self.int8 {
            if self.calib.is_some() || self.calib_cache.is_some() || !self.precision.is_empty() {
                anyhow::bail!("--calib, --calib-cache and --precision go with --int8");
            }
            return Ok(None);
        }
        let algo = self.calib_algo.parse().map_err(|e: String| anyhow::anyhow!(e))?;
        let mut overrides = HashMap::new();
        for p in &self.precision {
            let (node, prec) = p.split_once('=').with_context(|| format!("expected NODE=int8|fp16|fp32, got '{p}'"))?;
            overrides.insert(node.to_string(), prec.parse().map_err(|e: String| anyhow::anyhow!(e))?);
        }
        Ok(Some(kiln::Int8Options {
            calib_dir: self.calib.clone(),
            calib_cache: self.calib_cache.clone(),
            algo,
            overrides,
        }))
    }
}

pub fn run(a: Args) -> Result<()> {
    let name = a.model.display().to_string();
    let t0 = Instant::now();
    let model = kiln::load(&a.model).with_context(|| format!("loading {name}"))?;
    for w in &model.warnings {
        eprintln!("warning: {w}");
    }
    let families: Vec<&str> = kiln::fuse::rules::families().iter().map(|(n, _)| *n).collect();
    if let Some(bad) = a.disable.iter().find(|d| !families.contains(&d.as_str())) {
        anyhow::bail!("unknown rule family '{bad}'; the families are {}", families.join(", "));
    }
    let shapes: HashMap<String, Vec<usize>> =
        a.shapes.iter().map(|s| crate::parse_shape_arg(s)).collect::<Result<_>>()?;
    let mut optimize = kiln::OptimizeOptions { fuse: !a.no_fuse, ..Default::default() };
    optimize.fuse_options.disabled = a.disable.clone();
    let int8 = a.int8.options()?;
    let int8_on = int8.is_some();
    let done = kiln::build(model.graph, &kiln::BuildOptions { shapes, optimize, int8 })
        .with_context(|| format!("building {name}"))?;
    if let Some(unknown) = a
        .int8
        .precision
        .iter()
        .filter_map(|p| p.split_once('='))
        .map(|(n, _)| n)
        .find(|n| !done.precisions.iter().any(|l| l.node == *n))
    {
        eprintln!("warning: --precision names '{unknown}', which is not a convolution or matrix product of the model");
    }
    if int8_on && !a.json {
        println!("{:<32} {:<8} {:<9} why", "layer", "op", "precision");
        for l in &done.precisions {
            println!("{:<32} {:<8} {:<9} {}", l.node, l.op, l.precision.to_string(), l.reason.as_deref().unwrap_or(""));
        }
        let n8 = done.precisions.iter().filter(|l| l.precision == kiln::quant::Precision::Int8).count();
        println!("{n8} of {} layers in INT8", done.precisions.len());
    }
    let g = &done.graph;
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
