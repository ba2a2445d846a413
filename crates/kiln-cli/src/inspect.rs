//! `kiln inspect`: what a model contains.

use anyhow::{Context, Result};
use kiln::ir::Op;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The model (.onnx) or an engine (.kiln).
    model: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    if a.model.extension().is_some_and(|e| e == "kiln") {
        return inspect_engine(&a);
    }
    let model = kiln::load(&a.model).with_context(|| format!("loading {}", a.model.display()))?;
    for w in &model.warnings {
        eprintln!("warning: {w}");
    }
    let g = &model.graph;
    let (mut params, mut bytes) = (0usize, 0usize);
    for id in g.node_ids() {
        if let Op::Const(t) = &g.node(id).op {
            params += t.len();
            bytes += t.byte_size();
        }
    }
    let ops: std::collections::BTreeMap<_, _> =
        g.op_counts().into_iter().filter(|(k, _)| !matches!(*k, "Input" | "Const")).collect();
    let io = |ids: Vec<(String, String)>| {
        ids.into_iter().map(|(n, t)| serde_json::json!({"name": n, "type": t})).collect::<Vec<_>>()
    };
    let inputs: Vec<(String, String)> = g
        .inputs
        .iter()
        .map(|&i| {
            let o = &g.node(i).outputs[0];
            (o.name.clone(), o.ty.to_string())
        })
        .collect();
    let outputs: Vec<(String, String)> =
        g.outputs.iter().map(|o| (o.name.clone(), g.value_info(o.value).ty.to_string())).collect();
    if a.json {
        let j = serde_json::json!({
            "model": a.model.display().to_string(),
            "ir_version": model.ir_version,
            "producer": model.producer,
            "opsets": model.opsets,
            "inputs": io(inputs),
            "outputs": io(outputs),
            "ops": ops,
            "nodes": ops.values().sum::<usize>(),
            "parameters": params,
            "parameter_bytes": bytes,
        });
        println!("{}", serde_json::to_string_pretty(&j)?);
        return Ok(());
    }
    println!("model     {}", a.model.display());
    println!(
        "producer  {} (IR version {})",
        if model.producer.is_empty() { "?" } else { &model.producer },
        model.ir_version
    );
    let opsets: Vec<String> =
        model.opsets.iter().map(|(d, v)| format!("{}={v}", if d.is_empty() { "ai.onnx" } else { d })).collect();
    println!("opsets    {}", opsets.join(", "));
    for (n, t) in &inputs {
        println!("input     {n}: {t}");
    }
    for (n, t) in &outputs {
        println!("output    {n}: {t}");
    }
    println!("params    {params} ({:.2} MB)", bytes as f64 / 1e6);
    println!("nodes     {}", ops.values().sum::<usize>());
    for (op, n) in &ops {
        println!("  {op:<28} {n}");
    }
    Ok(())
}

/// `kiln inspect MODEL.kiln`: the header, every step with its kernel or library call, the
/// memory plan and the weights. Reading an engine needs no GPU.
fn inspect_engine(a: &Args) -> Result<()> {
    use kiln::cuda::plan::{BufferKind, StepKind};
    let bytes = std::fs::read(&a.model).with_context(|| format!("reading {}", a.model.display()))?;
    let e = kiln::runtime::engine::EngineFile::from_bytes(&bytes)
        .with_context(|| format!("reading {}", a.model.display()))?;
    let (h, plan, m) = (e.header(), e.plan(), e.memory());
    let weight_bytes: usize = plan
        .buffers
        .iter()
        .filter(|b| matches!(b.kind, BufferKind::Const(_)))
        .map(|b| b.shape.iter().product::<usize>() * b.dtype.size())
        .sum();
    let steps: Vec<serde_json::Value> = plan
        .steps
        .iter()
        .map(|s| {
            let (kind, what, dtype) = match &s.kind {
                StepKind::Kernel(k) => ("kernel", k.kernel.clone(), String::new()),
                StepKind::Gemm(g) => (
                    "cublaslt",
                    format!("m={} n={} k={} batch={} epilogue={:?}", g.m, g.n, g.k, g.batch, g.epilogue),
                    g.dtype.to_string(),
                ),
                StepKind::Conv(c) => (
                    "cudnn",
                    format!(
                        "{:?} * {:?} -> {:?} groups={} {:?}",
                        c.x_shape, c.w_shape, c.y_shape, c.groups, c.activation
                    ),
                    c.dtype.to_string(),
                ),
            };
            serde_json::json!({ "node": s.node, "kind": kind, "what": what, "dtype": dtype })
        })
        .collect();
    if a.json {
        let j = serde_json::json!({
            "kiln_version": h.kiln_version, "arch": h.arch, "nvrtc": h.nvrtc_version, "cuda": h.cuda_version,
            "options": h.options, "steps": steps, "arena_bytes": m.arena_bytes, "naive_bytes": m.naive_bytes,
            "workspace_bytes": m.workspace_bytes, "weight_bytes": weight_bytes,
            "modules": e.cubins().iter().map(|c| serde_json::json!({"name": c.name, "bytes": c.image.len()})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&j)?);
        return Ok(());
    }
    println!("engine    {} ({} bytes)", a.model.display(), bytes.len());
    println!("built by  kiln {} for {}, NVRTC {}, CUDA {}", h.kiln_version, h.arch, h.nvrtc_version, h.cuda_version);
    for (k, v) in &h.options {
        println!("option    {k} = {v}");
    }
    println!("steps     {}", plan.steps.len());
    for (i, s) in steps.iter().enumerate() {
        println!(
            "  {i:>4} {:<9} {:<5} {:<44} {}",
            s["kind"].as_str().unwrap_or(""),
            s["dtype"].as_str().unwrap_or(""),
            s["node"].as_str().unwrap_or(""),
            s["what"].as_str().unwrap_or("")
        );
    }
    println!(
        "memory    arena {:.1} MiB (activations without reuse {:.1} MiB, workspace {:.1} MiB)",
        m.arena_bytes as f64 / 1048576.0,
        m.naive_bytes as f64 / 1048576.0,
        m.workspace_bytes as f64 / 1048576.0
    );
    println!("weights   {:.1} MiB", weight_bytes as f64 / 1048576.0);
    for c in e.cubins() {
        println!("module    {} ({} bytes of {} CUBIN)", c.name, c.image.len(), c.arch);
    }
    Ok(())
}
