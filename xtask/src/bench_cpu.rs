//! `cargo xtask bench-cpu`: Kiln's CPU executor against onnxruntime's CPU provider, side by
//! side on the same machine, same model, same thread count.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Models to time (default: the suite's light_resnet50).
    models: Vec<PathBuf>,
    /// Timed runs per system.
    #[arg(long, default_value_t = 20)]
    iterations: usize,
    /// Untimed runs first.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Threads for both systems (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Also print where Kiln's time goes, by op.
    #[arg(long)]
    profile: bool,
}

/// A Python with onnxruntime: `KILN_PYTHON`, else a venv in ~/.cache/kiln made on first use.
fn python_with_ort() -> Result<PathBuf> {
    python_with(&["onnxruntime", "numpy"])
}

/// A Python that can import `packages` (pip specs; the module is the part before `==`):
/// `KILN_PYTHON`, else a venv in ~/.cache/kiln, made or extended on first use.
pub fn python_with(packages: &[&str]) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("KILN_PYTHON") {
        return Ok(p.into());
    }
    let venv = crate::data::cache_dir()?.join("venv");
    let py = venv.join("bin/python");
    let modules: Vec<&str> = packages.iter().map(|p| p.split("==").next().unwrap_or(p)).collect();
    let import = format!("import {}", modules.join(", "));
    let has = |py: &PathBuf| Command::new(py).args(["-c", &import]).output().is_ok_and(|o| o.status.success());
    if !has(&py) {
        eprintln!("installing {} into {}", packages.join(" "), venv.display());
        let made = py.exists() || Command::new("python3").args(["-m", "venv"]).arg(&venv).status()?.success();
        let ok = made && Command::new(&py).args(["-m", "pip", "install", "-q"]).args(packages).status()?.success();
        if !ok || !has(&py) {
            bail!("could not install {} into {}", packages.join(" "), venv.display());
        }
    }
    Ok(py)
}

pub fn run(a: Args) -> Result<()> {
    let threads = a.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().ok();
    let models = if a.models.is_empty() {
        vec![crate::data::onnx_test_data()?.join("light/light_resnet50.onnx")]
    } else {
        a.models.clone()
    };
    let py = python_with_ort()?;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/bench_ort.py");
    println!("{:<28} {:>8} {:>14} {:>14} {:>8}", "model", "threads", "kiln ms", "onnxrt ms", "ratio");
    for m in &models {
        let mut model = kiln::load(m)?;
        kiln::optimize(&mut model.graph)?;
        let g = &model.graph;
        let mut rng = kiln::random::Rng::new(0);
        let inputs: Vec<_> = g
            .inputs
            .iter()
            .map(|&id| {
                let ty = &g.node(id).outputs[0].ty;
                let shape: Vec<usize> = ty.shape.iter().flatten().map(|d| d.known().unwrap_or(1)).collect();
                kiln::random::random_tensor(ty.dtype.unwrap_or(kiln::ir::DType::F32), &shape, &mut rng)
            })
            .collect();
        for _ in 0..a.warmup {
            kiln::run_cpu(g, &inputs)?;
        }
        let mut times = vec![];
        for _ in 0..a.iterations {
            let t0 = Instant::now();
            kiln::run_cpu(g, &inputs)?;
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        let kiln_ms = times[times.len() / 2];
        if a.profile {
            print_profile(g, &inputs, a.iterations)?;
        }
        let out = Command::new(&py)
            .arg(&script)
            .arg(m)
            .args([threads.to_string(), a.iterations.to_string(), a.warmup.to_string()])
            .output()
            .context("running onnxruntime")?;
        if !out.status.success() {
            bail!("onnxruntime failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let j: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let ort_ms = j["median_ms"].as_f64().context("onnxruntime printed no median")?;
        let name = m.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
        println!("{name:<28} {threads:>8} {kiln_ms:>14.1} {ort_ms:>14.1} {:>7.2}x", kiln_ms / ort_ms);
    }
    Ok(())
}

/// Time per op type over `iterations` runs, largest first.
fn print_profile(g: &kiln::ir::Graph, inputs: &[kiln::ir::Tensor], iterations: usize) -> Result<()> {
    let mut per_node = std::collections::HashMap::new();
    for _ in 0..iterations {
        let data = inputs.iter().cloned().map(kiln::ir::Data::Tensor).collect();
        kiln::cpu::run_graph_profiled(g, data, &mut per_node)?;
    }
    let mut per_op: std::collections::BTreeMap<&str, (f64, usize)> = std::collections::BTreeMap::new();
    for (id, d) in &per_node {
        let e = per_op.entry(g.node(*id).op.name()).or_default();
        e.0 += d.as_secs_f64() * 1e3 / iterations as f64;
        e.1 += 1;
    }
    let mut nodes: Vec<_> = per_node.iter().collect();
    nodes.sort_by(|a, b| b.1.cmp(a.1));
    for (id, d) in nodes.iter().take(12) {
        let n = g.node(**id);
        let ins: Vec<String> = g.inputs_of(**id).iter().flatten().map(|v| g.value_info(*v).ty.to_string()).collect();
        let ms = d.as_secs_f64() * 1e3 / iterations as f64;
        println!("    {:<10} {ms:>7.2} ms  {} ({})", n.op.name(), n.name, ins.join(", "));
    }
    let mut rows: Vec<_> = per_op.into_iter().collect();
    rows.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
    for (op, (ms, n)) in rows {
        println!("    {op:<24} {n:>4} nodes {ms:>9.2} ms");
    }
    Ok(())
}
