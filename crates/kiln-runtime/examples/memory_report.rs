//! Plans a model and prints its activation arena against no reuse.
//!
//!     cargo run -p kiln-runtime --release --example memory_report -- model.onnx [input=2,8,32 ...]

use std::collections::HashMap;

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: memory_report model.onnx [input=d0,d1,...]");
        std::process::exit(2);
    };
    let shapes: HashMap<String, Vec<usize>> = args
        .filter_map(|a| {
            let (name, dims) = a.split_once('=')?;
            Some((name.to_string(), dims.split(',').map(|d| d.parse().expect("a dim")).collect()))
        })
        .collect();
    let run = || -> Result<(), String> {
        let mut g = kiln::load(std::path::Path::new(&path)).map_err(|e| e.to_string())?.graph;
        kiln::specialize(&mut g, &shapes).map_err(|e| e.to_string())?;
        kiln::optimize(&mut g).map_err(|e| e.to_string())?;
        let plan = kiln_cuda::plan::plan(&g).map_err(|e| format!("planning fails: {e}"))?;
        let m = kiln_runtime::memory::plan_memory(&plan, 0);
        kiln_runtime::memory::verify(&plan, &m)?;
        let arena = plan.buffers.iter().zip(&m.offsets).filter(|(_, o)| o.is_some()).count();
        println!(
            "{path}: {} buffers ({arena} in the arena), {} steps: arena {} bytes, naive {} bytes ({:.1}x less)",
            plan.buffers.len(),
            plan.steps.len(),
            m.arena_bytes,
            m.naive_bytes,
            m.naive_bytes as f64 / m.arena_bytes.max(1) as f64
        );
        Ok(())
    };
    if let Err(e) = run() {
        eprintln!("{path}: {e}");
        std::process::exit(1);
    }
}
