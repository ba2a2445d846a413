//! `kiln inspect`: what a model contains.

use anyhow::{Context, Result};
use kiln::ir::Op;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The model (.onnx).
    model: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
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
