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
    /// Write the engine: the launch plan, weights and CUBINs compiled for --arch.
    #[arg(short = 'o', long = "output", value_name = "FILE.kiln")]
    output: Option<PathBuf>,
    /// The GPU architecture the engine's kernels are compiled for (sm_80, sm_90, ...); this
    /// machine's GPU by default, or sm_90 without one.
    #[arg(long)]
    arch: Option<String>,
    /// The cuBLASLt/cuDNN workspace of each execution context, in MiB.
    #[arg(long, default_value_t = 64)]
    workspace: usize,
    /// Write the CUDA launch plan as text (no GPU needed).
    #[arg(long, value_name = "FILE")]
    plan: Option<PathBuf>,
    /// Write the optimized IR as text.
    #[arg(long, value_name = "FILE")]
    dump: Option<PathBuf>,
    /// Leave out fusion (the IR passes still run).
    #[arg(long)]
    no_fuse: bool,
    /// Leave out a rule family (cleanup, conv_bn, qdq, pool, elementwise, gemm_epilogue, norm, attention);
    /// may be repeated.
    #[arg(long = "disable-rules", value_name = "FAMILY")]
    disable: Vec<String>,
    /// Keep FP32 matrix work out of TF32 on the GPU (TF32 is allowed by default).
    #[arg(long)]
    no_tf32: bool,
    #[command(flatten)]
    precision: PrecisionArgs,
}

/// Precision flags (INT8, FP16, per-layer overrides), shared with `kiln compare`.
#[derive(clap::Args, Clone)]
pub struct PrecisionArgs {
    /// Compute in FP16 after fusion, with FP32 inputs and outputs (as TensorRT's --fp16).
    #[arg(long)]
    pub fp16: bool,
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
    /// Where calibration runs the FP32 model: auto (the GPU where there is one, else the CPU
    /// reference), cpu or cuda.
    #[arg(long, default_value = "auto")]
    pub calib_device: String,
    /// Keep a layer in another precision, as NODE=int8|fp16|fp32 (with --int8 or --fp16; with
    /// --fp16, NODE=fp32 keeps the node in FP32); may be repeated.
    #[arg(long = "precision", value_name = "NODE=PRECISION")]
    pub precision: Vec<String>,
}

impl PrecisionArgs {
    /// The INT8 options, or `None` without --int8.
    pub fn int8_options(&self) -> Result<Option<kiln::Int8Options>> {
        if !self.int8 {
            if self.calib.is_some() || self.calib_cache.is_some() {
                anyhow::bail!("--calib and --calib-cache go with --int8");
            }
            return Ok(None);
        }
        let algo = self.calib_algo.parse().map_err(|e: String| anyhow::anyhow!(e))?;
        let calib_device = self.calib_device.parse().map_err(|e: String| anyhow::anyhow!(e))?;
        Ok(Some(kiln::Int8Options {
            calib_dir: self.calib.clone(),
            calib_cache: self.calib_cache.clone(),
            algo,
            calib_device,
        }))
    }

    /// The per-layer overrides of --precision.
    pub fn overrides(&self) -> Result<HashMap<String, kiln::quant::Precision>> {
        if !self.precision.is_empty() && !self.int8 && !self.fp16 {
            anyhow::bail!("--precision goes with --int8 or --fp16");
        }
        let mut overrides = HashMap::new();
        for p in &self.precision {
            let (node, prec) = p.split_once('=').with_context(|| format!("expected NODE=int8|fp16|fp32, got '{p}'"))?;
            overrides.insert(node.to_string(), prec.parse().map_err(|e: String| anyhow::anyhow!(e))?);
        }
        Ok(overrides)
    }

    /// The build options these flags set, over the given shapes and optimization options.
    pub fn build_options(
        &self,
        shapes: HashMap<String, Vec<usize>>,
        optimize: kiln::OptimizeOptions,
    ) -> Result<kiln::BuildOptions> {
        Ok(kiln::BuildOptions {
            shapes,
            optimize,
            int8: self.int8_options()?,
            precision: if self.fp16 { kiln::FloatPrecision::Fp16 } else { kiln::FloatPrecision::Fp32 },
            overrides: self.overrides()?,
            no_tf32: false,
        })
    }
}

/// Warns about what a build did that the user should know: --precision names that match no
/// layer, FP16 values that saturated.
pub fn warn_about(done: &kiln::Built, args: &PrecisionArgs) {
    for (node, _) in args.precision.iter().filter_map(|p| p.split_once('=')) {
        let int8_knows = done.precisions.iter().any(|l| l.node == node || l.covers.iter().any(|c| c == node));
        let fp16_knows = done.fp16.as_ref().is_some_and(|r| !r.unknown_overrides.iter().any(|u| u == node));
        if !int8_knows && !fp16_knows {
            let what = if args.fp16 { "a node" } else { "a convolution or matrix product" };
            eprintln!("warning: --precision names '{node}', which is not {what} of the model");
        }
    }
    if let Some(r) = &done.fp16 {
        if !r.saturated.is_empty() {
            let mut places: Vec<String> = r.saturated.iter().take(5).map(|(n, k)| format!("{n} ({k})")).collect();
            if r.saturated.len() > 5 {
                places.push(format!("and {} more", r.saturated.len() - 5));
            }
            eprintln!(
                "warning: {} values beyond the f16 range saturated to ±65504: {}",
                r.saturated_values(),
                places.join(", ")
            );
        }
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
    let opts = kiln::BuildOptions { no_tf32: a.no_tf32, ..a.precision.build_options(shapes, optimize)? };
    let int8_on = opts.int8.is_some();
    let done = kiln::build(model.graph, &opts).with_context(|| format!("building {name}"))?;
    warn_about(&done, &a.precision);
    if int8_on && !a.json {
        if let Some(on) = &done.calibrated_on {
            println!("calibrated on {on}");
        }
        println!("{:<32} {:<8} {:<9} why", "layer", "op", "precision");
        for l in &done.precisions {
            // A fused layer goes by the nodes it covers (the Conv and the BatchNorm folded in).
            let name = if l.covers.is_empty() { l.node.clone() } else { l.covers.join("+") };
            println!("{:<32} {:<8} {:<9} {}", name, l.op, l.precision.to_string(), l.reason.as_deref().unwrap_or(""));
        }
        let n8 = done.precisions.iter().filter(|l| l.precision == kiln::quant::Precision::Int8).count();
        println!("{n8} of {} layers in INT8", done.precisions.len());
    }
    if let (Some(r), false) = (&done.fp16, a.json) {
        println!(
            "{} nodes in FP16, {} kept in FP32, {} casts added, {} early convolutions with f16 hi+lo weights",
            r.fp16_nodes,
            r.kept.len(),
            r.casts,
            r.split.len()
        );
        if a.explain {
            for k in &r.kept {
                println!("  fp32  {:<32} {:<16} {}", k.node, k.op, k.reason);
            }
            for n in &r.split {
                println!("  split {n:<32} weights and bias as two f16 halves (hi + lo), two convolutions");
            }
        }
    }
    let g = &done.graph;
    if let Some(path) = &a.dot {
        std::fs::write(path, kiln::fuse::to_dot(g)).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &a.plan {
        let arch = a.arch.clone().unwrap_or_else(kiln::gpu::default_arch);
        let target = kiln::cuda::plan::Target::for_arch(&arch);
        let plan = kiln::cuda::plan::plan_for(g, target).with_context(|| format!("planning {name} for CUDA"))?;
        std::fs::write(path, plan.to_string()).with_context(|| format!("writing {}", path.display()))?;
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
            "built {name}: {} nodes, {launching} launch work ({:.2} s)",
            g.node_count(),
            t0.elapsed().as_secs_f64()
        );
    }
    if let Some(out) = &a.output {
        let t1 = Instant::now();
        let arch = a.arch.clone().unwrap_or_else(kiln::gpu::default_arch);
        let mut options = vec![
            ("precision".to_string(), if done.fp16.is_some() { "fp16" } else { "fp32" }.to_string()),
            ("tf32".to_string(), done.tf32.to_string()),
            ("workspace_bytes".to_string(), (a.workspace << 20).to_string()),
        ];
        options.extend(a.shapes.iter().map(|s| ("shape".to_string(), s.clone())));
        let engine = kiln::gpu::build_engine_file(g, &arch, options)
            .with_context(|| format!("building the {arch} engine of {name}"))?;
        let bytes = engine.to_bytes();
        std::fs::write(out, &bytes).with_context(|| format!("writing {}", out.display()))?;
        let m = engine.memory();
        println!(
            "wrote {} ({:.1} MiB, {arch}): {} steps, {} kernel modules, arena {:.1} MiB (activations without reuse {:.1} MiB) in {:.2} s",
            out.display(),
            bytes.len() as f64 / 1048576.0,
            engine.plan().steps.len(),
            engine.cubins().len(),
            m.arena_bytes as f64 / 1048576.0,
            m.naive_bytes as f64 / 1048576.0,
            t1.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
