//! Plans a model and prints its activation arena against no reuse. Where the launch planner
//! cannot lower the model yet, it says why and measures a skeleton plan instead: one step per
//! node, reading the node's inputs and writing its outputs (no views, no padding copies).
//!
//!     cargo run -p kiln-runtime --release --example memory_report -- model.onnx [input=2,8,32 ...]

use kiln::ir::{Op, Value};
use kiln_cuda::driver::LaunchConfig;
use kiln_cuda::kernels::KernelFamily;
use kiln_cuda::plan::{Arg, Buffer, BufferKind, KernelStep, ModuleRef, Plan, Step, StepKind};
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
        let plan = match kiln_cuda::plan::plan(&g) {
            Ok(p) => p,
            Err(e) => {
                let why = e.to_string();
                println!("planning fails ({}...): a skeleton plan instead", &why[..why.len().min(120)]);
                skeleton(&g)?
            }
        };
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

/// One kernel step per node over buffers of every value, for a graph the planner cannot lower.
fn skeleton(g: &kiln::ir::Graph) -> Result<Plan, String> {
    let mut plan = Plan::default();
    let mut ids: HashMap<Value, usize> = HashMap::new();
    let buffer =
        |plan: &mut Plan, ids: &mut HashMap<Value, usize>, v: Value, kind: BufferKind| -> Result<usize, String> {
            let info = g.value_info(v);
            let (Some(dtype), Some(shape)) = (info.ty.dtype, info.ty.concrete_shape()) else {
                return Err(format!("{} has no static type", info.name));
            };
            plan.buffers.push(Buffer { name: info.name.clone(), dtype, shape, kind, output: false, last_use: None });
            ids.insert(v, plan.buffers.len() - 1);
            Ok(plan.buffers.len() - 1)
        };
    for (i, &id) in g.inputs.iter().enumerate() {
        buffer(&mut plan, &mut ids, Value { node: id, slot: 0 }, BufferKind::Input(i))?;
    }
    for id in g.topo_order().map_err(|e| e.to_string())? {
        let node = g.node(id);
        match &node.op {
            Op::Input => continue,
            Op::Const(t) => {
                buffer(&mut plan, &mut ids, Value { node: id, slot: 0 }, BufferKind::Const(t.clone()))?;
                continue;
            }
            _ => {}
        }
        let mut args: Vec<Arg> =
            g.inputs_of(id).into_iter().flatten().filter_map(|v| ids.get(&v)).map(|&b| Arg::Buffer(b)).collect();
        for slot in 0..node.outputs.len() {
            args.push(Arg::Buffer(buffer(&mut plan, &mut ids, Value { node: id, slot }, BufferKind::Temp)?));
        }
        let s = plan.steps.len();
        for a in &args {
            if let Arg::Buffer(b) = a {
                plan.buffers[*b].last_use = Some(s);
            }
        }
        plan.steps.push(Step {
            node: node.name.clone(),
            kind: StepKind::Kernel(KernelStep {
                module: ModuleRef::Family(KernelFamily::Layout),
                kernel: node.op.name().to_string(),
                config: LaunchConfig::linear(1, 1),
                args,
            }),
        });
    }
    for o in &g.outputs {
        let b = ids[&o.value];
        plan.buffers[b].output = true;
        plan.outputs.push(b);
    }
    Ok(plan)
}
