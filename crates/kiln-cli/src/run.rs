//! `kiln run`: load, optimize, execute, write outputs.

use anyhow::{bail, Context, Result};
use kiln::ir::Tensor;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// The model (.onnx).
    model: PathBuf,
    /// An input as NAME=FILE.npy; inputs not given get seeded random values.
    #[arg(long = "input", value_name = "NAME=FILE.npy")]
    inputs: Vec<String>,
    /// Concrete shape of an input with symbolic or unknown dims, as NAME=1x3x224x224.
    #[arg(long = "shapes", value_name = "NAME=DIMS")]
    shapes: Vec<String>,
    /// Where to write one .npy per output plus outputs.json.
    #[arg(long)]
    output_dir: Option<PathBuf>,
    /// The device to run on.
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda"])]
    device: String,
    /// Seed for random inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Skip the optimization passes and fusion.
    #[arg(long)]
    no_opt: bool,
    /// Run the optimization passes but not fusion.
    #[arg(long)]
    no_fuse: bool,
    /// On CUDA: compute FP32 matrix work in full FP32, not TF32.
    #[arg(long)]
    no_tf32: bool,
    /// Compute in FP16 (after optimization), with FP32 inputs and outputs.
    #[arg(long)]
    fp16: bool,
    /// On CUDA: wait for each launch, so that a GPU fault names the launch that caused it
    /// (slow; also set by KILN_SYNC_STEPS=1).
    #[arg(long)]
    sync_steps: bool,
}

pub fn run(a: Args) -> Result<()> {
    if a.model.extension().is_some_and(|e| e == "kiln") {
        return run_engine(&a);
    }
    let model_name = a.model.display().to_string();
    let t0 = Instant::now();
    let mut model = kiln::load(&a.model).with_context(|| format!("loading {model_name}"))?;
    for w in &model.warnings {
        eprintln!("warning: {w}");
    }

    let mut given: HashMap<String, Tensor> = HashMap::new();
    for s in &a.inputs {
        let (name, file) = s.split_once('=').with_context(|| format!("expected NAME=FILE.npy, got '{s}'"))?;
        given.insert(name.to_string(), kiln::npy::read(file.as_ref())?);
    }
    let mut shapes: HashMap<String, Vec<usize>> =
        a.shapes.iter().map(|s| crate::parse_shape_arg(s)).collect::<Result<_>>()?;
    // The run's input shapes are known now, so optimize for exactly them.
    shapes.extend(given.iter().map(|(n, t)| (n.clone(), t.shape().to_vec())));
    kiln::specialize(&mut model.graph, &shapes).with_context(|| format!("fixing input shapes of {model_name}"))?;
    if !a.no_opt {
        let opts = kiln::OptimizeOptions { fuse: !a.no_fuse, ..Default::default() };
        kiln::optimize_with(&mut model.graph, &opts).with_context(|| format!("optimizing {model_name}"))?;
    }
    if a.fp16 {
        let r = kiln::to_fp16(&mut model.graph, Default::default())
            .with_context(|| format!("converting {model_name} to FP16"))?;
        if r.saturated_values() > 0 {
            eprintln!("warning: {} values beyond the f16 range saturated to ±65504", r.saturated_values());
        }
    }
    let load_time = t0.elapsed();
    let g = &model.graph;

    let inputs = kiln::random::graph_inputs(g, &mut given, a.seed).map_err(|e| anyhow::anyhow!(e))?;
    if let Some(name) = given.keys().next() {
        bail!("the model has no input named '{name}'");
    }

    let t1 = Instant::now();
    let outputs = if a.device == "cuda" {
        let mut opts = kiln::gpu::GpuOptions::default();
        opts.exec.tf32 = !a.no_tf32;
        opts.exec.sync_steps |= a.sync_steps;
        kiln::gpu::run_gpu(g, &inputs, &opts).with_context(|| format!("running {model_name} on CUDA"))?
    } else {
        kiln::run_cpu(g, &inputs).with_context(|| format!("running {model_name}"))?
    };
    let run_time = t1.elapsed();

    let mut files = BTreeMap::new();
    if let Some(dir) = &a.output_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    for (o, t) in g.outputs.iter().zip(&outputs) {
        let v = t.to_f64_vec();
        let (mn, mx) = v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
        let mean = if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 };
        println!(
            "{:<24} {:<5} {:<20} min {mn:<12.6} max {mx:<12.6} mean {mean:.6}",
            o.name,
            t.dtype().name(),
            format!("{:?}", t.shape())
        );
        if let Some(dir) = &a.output_dir {
            let safe: String = o
                .name
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '_' })
                .collect();
            let mut file = format!("{safe}.npy");
            let mut k = 1;
            while files.values().any(|f| f == &file) {
                file = format!("{safe}_{k}.npy");
                k += 1;
            }
            kiln::npy::write(&dir.join(&file), t)?;
            files.insert(o.name.clone(), file);
        }
    }
    if let Some(dir) = &a.output_dir {
        std::fs::write(dir.join("outputs.json"), serde_json::to_string_pretty(&files)?)?;
    }
    let note = if a.device == "cuda" { "; the run includes planning, compiling and loading" } else { "" };
    println!(
        "load+optimize {:.1} ms, run {:.1} ms on {} ({} nodes{note})",
        load_time.as_secs_f64() * 1e3,
        run_time.as_secs_f64() * 1e3,
        a.device,
        g.node_count()
    );
    Ok(())
}

/// `kiln run MODEL.kiln`: an engine file on the GPU.
fn run_engine(a: &Args) -> Result<()> {
    if a.device != "cuda" {
        bail!("an engine file runs on CUDA: give --device cuda (or run the ONNX model on the CPU)");
    }
    if a.fp16 || a.no_fuse || a.no_opt || !a.shapes.is_empty() {
        bail!("--fp16, --no-fuse, --no-opt and --shapes are build options: give them to kiln build");
    }
    let name = a.model.display().to_string();
    let t0 = Instant::now();
    let bytes = std::fs::read(&a.model).with_context(|| format!("reading {name}"))?;
    let mut opts = kiln::gpu::GpuOptions::default();
    opts.exec.tf32 = !a.no_tf32;
    opts.exec.sync_steps |= a.sync_steps;
    let engine = kiln::gpu::load_engine_file(&bytes, &opts).with_context(|| format!("loading {name}"))?;
    let load_time = t0.elapsed();
    let mut given: HashMap<String, Tensor> = HashMap::new();
    for s in &a.inputs {
        let (n, file) = s.split_once('=').with_context(|| format!("expected NAME=FILE.npy, got '{s}'"))?;
        given.insert(n.to_string(), kiln::npy::read(file.as_ref())?);
    }
    let inputs = kiln::gpu::engine_inputs(&engine, &mut given, a.seed);
    if let Some(n) = given.keys().next() {
        bail!("the engine has no input named '{n}'");
    }
    let mut ctx = kiln::runtime::exec::ExecutionContext::new(engine.clone())?;
    let t1 = Instant::now();
    let outputs = ctx.run(&inputs).with_context(|| format!("running {name}"))?;
    let run_time = t1.elapsed();
    for (&o, t) in engine.plan().outputs.iter().zip(&outputs) {
        let v = t.to_f64_vec();
        let (mn, mx) = v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
        let mean = if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 };
        let oname = &engine.plan().buffers[o].name;
        println!(
            "{oname:<24} {:<5} {:<20} min {mn:<12.6} max {mx:<12.6} mean {mean:.6}",
            t.dtype().name(),
            format!("{:?}", t.shape())
        );
        if let Some(dir) = &a.output_dir {
            std::fs::create_dir_all(dir)?;
            let safe: String = oname
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
                .collect();
            kiln::npy::write(&dir.join(format!("{safe}.npy")), t)?;
        }
    }
    println!(
        "load {:.1} ms, first run {:.1} ms on cuda ({} steps)",
        load_time.as_secs_f64() * 1e3,
        run_time.as_secs_f64() * 1e3,
        engine.plan().steps.len()
    );
    Ok(())
}
