//! `kiln compare`: the built model against the ONNX model in FP32 on the CPU reference, on the
//! same inputs, output by output and (with `--per-layer`) layer by layer.

use anyhow::{Context, Result};
use kiln::ir::Tensor;
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The model (.onnx).
    model: PathBuf,
    /// Concrete shape of an input with symbolic or unknown dims, as NAME=1x3x224x224.
    #[arg(long = "shapes", value_name = "NAME=DIMS")]
    shapes: Vec<String>,
    /// An input as NAME=FILE.npy; inputs not given get seeded random values.
    #[arg(long = "input", value_name = "NAME=FILE.npy")]
    inputs: Vec<String>,
    /// A directory of input batches (.npz with one array per input, or .npy for one input),
    /// instead of --input.
    #[arg(long, value_name = "DIR")]
    inputs_dir: Option<PathBuf>,
    /// Seed for random inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Compare every intermediate value that survives optimization, to see where the error
    /// first grows.
    #[arg(long)]
    per_layer: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Build without fusion.
    #[arg(long)]
    no_fuse: bool,
    /// Where the build runs.
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda"])]
    device: String,
    #[command(flatten)]
    precision: crate::build::PrecisionArgs,
}

pub fn run(a: Args) -> Result<()> {
    let name = a.model.display().to_string();
    let model = kiln::load(&a.model).with_context(|| format!("loading {name}"))?;
    let mut shapes: HashMap<String, Vec<usize>> =
        a.shapes.iter().map(|s| crate::parse_shape_arg(s)).collect::<Result<_>>()?;
    let mut given: HashMap<String, Tensor> = HashMap::new();
    for s in &a.inputs {
        let (n, f) = s.split_once('=').with_context(|| format!("expected NAME=FILE.npy, got '{s}'"))?;
        let t = kiln::npy::read(f.as_ref())?;
        shapes.insert(n.to_string(), t.shape().to_vec());
        given.insert(n.to_string(), t);
    }
    let mut reference = model.graph.clone();
    kiln::specialize(&mut reference, &shapes).with_context(|| format!("fixing input shapes of {name}"))?;
    let batches: Vec<Vec<Tensor>> = match &a.inputs_dir {
        Some(dir) => kiln::build::read_calibration_dir(dir, &reference)?,
        None => vec![kiln::random::graph_inputs(&reference, &mut given, a.seed).map_err(|e| anyhow::anyhow!(e))?],
    };
    let mut optimize = kiln::OptimizeOptions { fuse: !a.no_fuse, ..Default::default() };
    optimize.fuse_options.disabled = vec![];
    let built = kiln::build(model.graph, &a.precision.build_options(shapes, optimize)?)
        .with_context(|| format!("building {name}"))?;
    crate::build::warn_about(&built, &a.precision);
    let mut gpu_opts = kiln::gpu::GpuOptions::default();
    gpu_opts.exec.tf32 = built.tf32;
    let scales = built.cache.as_ref().map(|c| &c.scales);
    let (outs, layers) = if a.device == "cuda" {
        // One engine for every batch: the graph compared is the same each time.
        let runner = kiln::gpu::GraphRunner::new(gpu_opts)?;
        let mut on_gpu = |g: &kiln::ir::Graph, inputs: &[Tensor]| runner.run(g, inputs);
        kiln::compare::compare_with(&reference, &built.graph, &batches, a.per_layer, scales, &mut on_gpu)?
    } else {
        kiln::compare::compare(&reference, &built.graph, &batches, a.per_layer, scales)?
    };
    if a.json {
        let layers: Vec<_> = layers.iter().map(|(op, m)| serde_json::json!({ "op": op, "metrics": m })).collect();
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "outputs": outs, "layers": layers }))?);
        return Ok(());
    }
    let line = |what: &str, m: &kiln::compare::Metrics| {
        let top1 = m.top1.map_or(String::from("-"), |t| format!("{:.2}%", t * 100.0));
        format!(
            "{what:<40} {:>11.3e} {:>11.3e} {:>11.3e} {:>10.6} {:>8}",
            m.max_abs, m.max_rel, m.rel_l2, m.cosine, top1
        )
    };
    println!("{:<40} {:>11} {:>11} {:>11} {:>10} {:>8}", "output", "max abs", "max rel", "rel L2", "cosine", "top-1");
    for m in &outs {
        println!("{}", line(&m.name, m));
    }
    if a.per_layer {
        println!(
            "\n{:<40} {:>11} {:>11} {:>11} {:>10} {:>8}",
            "layer (reference order)", "max abs", "max rel", "rel L2", "cosine", "top-1"
        );
        let mut flagged = false;
        for (op, m) in &layers {
            let mut l = line(&format!("{} ({op})", m.name), m);
            if !flagged && (m.cosine < 0.999 || m.max_rel > 1e-2) {
                l += "   <- the error first grows here";
                flagged = true;
            }
            println!("{l}");
        }
    }
    Ok(())
}
