//! `kiln bench`: latency and throughput of a model on the GPU, in the spirit of trtexec.
//!
//! Each stream is a thread with its own execution context. Two latencies are measured per
//! iteration: end to end (inputs copied in, the plan, outputs copied out) on the host clock,
//! and GPU compute alone (CUDA events around the plan's enqueue).

use anyhow::{bail, Context, Result};
use kiln::ir::Tensor;
use kiln::runtime::exec::ExecutionContext;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to run and how to build it: shared by `kiln bench` and `kiln profile`.
#[derive(clap::Args)]
pub struct Load {
    /// The model (.onnx, built here) or an engine (.kiln, from `kiln build -o`).
    model: PathBuf,
    /// Concrete shape of an input with symbolic or unknown dims, as NAME=1x3x224x224.
    #[arg(long = "shapes", value_name = "NAME=DIMS")]
    shapes: Vec<String>,
    /// Set the leading (batch) dim of every input.
    #[arg(long)]
    batch: Option<usize>,
    /// Launch kernels one by one instead of replaying a CUDA graph.
    #[arg(long)]
    no_cuda_graph: bool,
    /// Compute FP32 matrix work in full FP32, not TF32.
    #[arg(long)]
    no_tf32: bool,
    /// Build without fusion.
    #[arg(long)]
    no_fuse: bool,
    /// Compute in FP16 (FP32 inputs and outputs).
    #[arg(long)]
    fp16: bool,
    /// Wait for each launch, so that a GPU fault names the launch that caused it (slow; also
    /// set by KILN_SYNC_STEPS=1).
    #[arg(long)]
    sync_steps: bool,
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    load: Load,
    /// Warm-up time in milliseconds before measuring.
    #[arg(long, default_value_t = 500)]
    warmup_ms: u64,
    /// Measure for this many seconds...
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// ...or for exactly this many iterations per stream.
    #[arg(long)]
    iterations: Option<usize>,
    /// Concurrent streams, each a thread with its own execution context.
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Latency statistics in milliseconds.
#[derive(serde::Serialize)]
struct Stats {
    min: f64,
    mean: f64,
    median: f64,
    p90: f64,
    p95: f64,
    p99: f64,
    max: f64,
}

fn stats(mut v: Vec<f64>) -> Stats {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v.get(((v.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(f64::NAN);
    Stats {
        min: at(0.0),
        mean: v.iter().sum::<f64>() / v.len().max(1) as f64,
        median: at(0.5),
        p90: at(0.9),
        p95: at(0.95),
        p99: at(0.99),
        max: at(1.0),
    }
}

/// Per-iteration (end-to-end ms, GPU ms) of one stream.
fn measure(
    ctx: &mut ExecutionContext,
    inputs: &[Tensor],
    warmup: Duration,
    duration: Duration,
    iterations: Option<usize>,
) -> Result<Vec<(f64, f64)>> {
    // At least three runs: the second captures the CUDA graph, the third replays it.
    let t0 = Instant::now();
    let mut runs = 0;
    while runs < 3 || t0.elapsed() < warmup {
        ctx.run(inputs)?;
        runs += 1;
    }
    let mut out = vec![];
    let t1 = Instant::now();
    loop {
        let done = match iterations {
            Some(n) => out.len() >= n,
            None => t1.elapsed() >= duration && out.len() >= 10,
        };
        if done {
            break;
        }
        let s = Instant::now();
        ctx.set_inputs(inputs)?;
        let gpu = ctx.time_enqueue()?;
        ctx.outputs()?;
        out.push((s.elapsed().as_secs_f64() * 1e3, gpu as f64));
    }
    Ok(out)
}

pub fn run(a: Args) -> Result<()> {
    if a.streams == 0 {
        bail!("--streams must be at least 1");
    }
    let t0 = Instant::now();
    let (engine, inputs) = load(&a.load)?;
    run_bench(&a, &a.load.model.display().to_string(), engine, inputs, t0.elapsed().as_secs_f64())
}

/// The engine on GPU 0 and seeded inputs: an engine file is loaded, an ONNX model built.
pub fn load(a: &Load) -> Result<(Arc<kiln::runtime::exec::Engine>, Vec<Tensor>)> {
    let name = a.model.display().to_string();
    let mut gopts = kiln::gpu::GpuOptions::default();
    gopts.exec.tf32 = !a.no_tf32;
    gopts.exec.cuda_graph = !a.no_cuda_graph;
    gopts.exec.sync_steps |= a.sync_steps;
    if a.model.extension().is_some_and(|e| e == "kiln") {
        if a.fp16 || a.no_fuse || a.batch.is_some() || !a.shapes.is_empty() {
            bail!("--fp16, --no-fuse, --batch and --shapes are build options: give them to kiln build");
        }
        let bytes = std::fs::read(&a.model).with_context(|| format!("reading {name}"))?;
        let engine = kiln::gpu::load_engine_file(&bytes, &gopts).with_context(|| format!("loading {name}"))?;
        let inputs = kiln::gpu::engine_inputs(&engine, &mut HashMap::new(), 0);
        Ok((engine, inputs))
    } else {
        build_for_bench(a, &gopts)
    }
}

/// Loads, optimizes and plans an ONNX model for the GPU, with seeded inputs.
fn build_for_bench(a: &Load, gopts: &kiln::gpu::GpuOptions) -> Result<(Arc<kiln::runtime::exec::Engine>, Vec<Tensor>)> {
    let name = a.model.display().to_string();
    let mut model = kiln::load(&a.model).with_context(|| format!("loading {name}"))?;
    let mut shapes: HashMap<String, Vec<usize>> =
        a.shapes.iter().map(|s| crate::parse_shape_arg(s)).collect::<Result<_>>()?;
    if let Some(b) = a.batch {
        for &id in &model.graph.inputs {
            let info = model.graph.value_info(kiln::ir::Value { node: id, slot: 0 });
            let mut dims: Vec<usize> = info.ty.concrete_shape().unwrap_or_default();
            if dims.is_empty() {
                if let Some(s) = shapes.get(&info.name) {
                    dims = s.clone();
                } else {
                    bail!("--batch needs --shapes for input '{}', whose shape is not static", info.name);
                }
            }
            dims[0] = b;
            shapes.insert(info.name.clone(), dims);
        }
    }
    kiln::specialize(&mut model.graph, &shapes).with_context(|| format!("fixing input shapes of {name}"))?;
    let opts = kiln::OptimizeOptions { fuse: !a.no_fuse, ..Default::default() };
    kiln::optimize_with(&mut model.graph, &opts).with_context(|| format!("optimizing {name}"))?;
    if a.fp16 {
        kiln::to_fp16(&mut model.graph, Default::default()).with_context(|| format!("converting {name} to FP16"))?;
    }
    let engine = kiln::gpu::load_engine(&model.graph, gopts).with_context(|| format!("loading {name} on CUDA"))?;
    let inputs = kiln::random::graph_inputs(&model.graph, &mut HashMap::new(), 0).map_err(|e| anyhow::anyhow!(e))?;
    Ok((engine, inputs))
}

fn run_bench(
    a: &Args,
    name: &str,
    engine: Arc<kiln::runtime::exec::Engine>,
    inputs: Vec<Tensor>,
    build_s: f64,
) -> Result<()> {
    let batch = inputs.first().and_then(|t| t.shape().first().copied()).unwrap_or(1);
    let warmup = Duration::from_millis(a.warmup_ms);
    let duration = Duration::from_secs_f64(a.duration);
    let wall = Instant::now();
    let results: Vec<Result<Vec<(f64, f64)>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..a.streams)
            .map(|_| {
                let engine = Arc::clone(&engine);
                let inputs = &inputs;
                s.spawn(move || -> Result<Vec<(f64, f64)>> {
                    let mut ctx = ExecutionContext::new(engine)?;
                    measure(&mut ctx, inputs, warmup, duration, a.iterations)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a stream panicked")))).collect()
    });
    let wall_s = wall.elapsed().as_secs_f64() - warmup.as_secs_f64();
    let mut e2e = vec![];
    let mut gpu = vec![];
    for r in results {
        for (e, g) in r? {
            e2e.push(e);
            gpu.push(g);
        }
    }
    let iterations = e2e.len();
    let gpu_stats = stats(gpu);
    let e2e_stats = stats(e2e);
    // Throughput from the measured iterations over the measuring time of all streams.
    let throughput = if a.streams == 1 {
        batch as f64 * 1e3 / e2e_stats.mean
    } else {
        batch as f64 * iterations as f64 / wall_s.max(1e-9)
    };
    let mem = engine.memory();
    let steps = engine.plan().steps.len();
    if a.json {
        let j = serde_json::json!({
            "model": name,
            "batch": batch,
            "streams": a.streams,
            "iterations": iterations,
            "cuda_graph": !a.load.no_cuda_graph,
            "precision": if a.load.fp16 { "fp16" } else { "fp32" },
            "steps": steps,
            "build_seconds": build_s,
            "throughput_per_s": throughput,
            "gpu_compute_ms": gpu_stats,
            "end_to_end_ms": e2e_stats,
            "arena_bytes": mem.arena_bytes,
            "naive_activation_bytes": mem.naive_bytes,
            "weight_bytes": engine.weight_bytes(),
        });
        println!("{}", serde_json::to_string_pretty(&j)?);
        return Ok(());
    }
    println!("{name}: batch {batch}, {steps} steps, {} stream(s), built in {build_s:.2} s", a.streams);
    println!(
        "{:<14} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "latency (ms)", "min", "mean", "median", "p90", "p95", "p99", "max"
    );
    for (what, s) in [("GPU compute", &gpu_stats), ("end to end", &e2e_stats)] {
        println!(
            "{what:<14} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            s.min, s.mean, s.median, s.p90, s.p95, s.p99, s.max
        );
    }
    println!("throughput {throughput:.1} inferences/s over {iterations} iterations");
    println!(
        "memory: arena {:.1} MiB (activations without reuse {:.1} MiB), weights {:.1} MiB",
        mem.arena_bytes as f64 / 1048576.0,
        mem.naive_bytes as f64 / 1048576.0,
        engine.weight_bytes() as f64 / 1048576.0
    );
    Ok(())
}
