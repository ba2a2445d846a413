//! `cargo xtask conformance --plan-cuda`: the CUDA launch planner over every graph the CPU
//! reference passes, and over the model fixtures; every kernel family and generated kernel
//! the plans launch is compiled with NVRTC for sm_80 and sm_90.
//!
//! Prints how many graphs planned and, for the rest, which ops the planner refused: the GPU
//! backend's to-do list. A compile failure, or a kernel a plan names that its module lacks,
//! fails the task.

use anyhow::{bail, Context, Result};
use kiln::ir::Graph;
use kiln_cuda::kernels::KernelFamily;
use kiln_cuda::nvrtc::Nvrtc;
use kiln_cuda::plan::{ModuleRef, StepKind};
use kiln_cuda::CudaError;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Mutex;

const ARCHS: [&str; 2] = ["sm_80", "sm_90"];

/// What planning one graph gave.
pub enum PlanOutcome {
    /// Planned: the families and generated kernels to compile, and the family kernels named.
    Planned {
        /// Family kernels the steps launch.
        kernels: Vec<(KernelFamily, String)>,
        /// Generated kernels (name, source).
        generated: Vec<(String, String)>,
        /// Steps by kind: kernels, GEMMs, convolutions.
        steps: [usize; 3],
    },
    /// Refused: the ops of the nodes with no lowering, with the reason of each.
    Refused(Vec<(String, String)>),
    /// Planning failed for another reason (a planner bug or a graph it misreads).
    Error(String),
}

/// Plans `g`.
pub fn plan_graph(g: &Graph) -> PlanOutcome {
    match kiln_cuda::plan::plan(g) {
        Ok(p) => {
            let mut kernels = vec![];
            let mut steps = [0; 3];
            for s in &p.steps {
                match &s.kind {
                    StepKind::Kernel(k) => {
                        steps[0] += 1;
                        if let ModuleRef::Family(f) = k.module {
                            kernels.push((f, k.kernel.clone()));
                        }
                    }
                    StepKind::Gemm(_) => steps[1] += 1,
                    StepKind::Conv(_) => steps[2] += 1,
                }
            }
            let generated = p.generated.iter().map(|k| (k.name.clone(), k.source.clone())).collect();
            PlanOutcome::Planned { kernels, generated, steps }
        }
        Err(CudaError::Unsupported(msg)) => PlanOutcome::Refused(refusals(&msg)),
        Err(e) => PlanOutcome::Error(e.to_string()),
    }
}

/// `(op, reason)` of each node the planner's error names, leaving out nodes refused only
/// because an input comes from a refused node.
fn refusals(msg: &str) -> Vec<(String, String)> {
    let list = msg.split_once(": ").map_or(msg, |(_, l)| l);
    let mut out = vec![];
    for item in list.split("; ") {
        // "<node> (<Op>): <why>"
        let Some((head, why)) = item.split_once("): ") else { continue };
        let Some((_, op)) = head.rsplit_once(" (") else { continue };
        if why.contains("comes from a node the plan could not lower") {
            continue;
        }
        out.push((op.to_string(), why.to_string()));
    }
    if out.is_empty() {
        out.push(("(graph)".into(), msg.to_string()));
    }
    out
}

/// Specializes every input whose shape is not static: the first unknown dim of each input to
/// 1 (the batch), the others to 128 (sequence lengths).
pub fn specialize_unknown(g: &mut Graph) -> Result<()> {
    let mut shapes = HashMap::new();
    for &id in &g.inputs {
        let info = &g.node(id).outputs[0];
        if info.ty.concrete_shape().is_some() {
            continue;
        }
        let Some(dims) = &info.ty.shape else { bail!("input {} has no known rank", info.name) };
        let mut first = true;
        let shape = dims
            .iter()
            .map(|d| {
                d.known().unwrap_or_else(|| {
                    let v = if first { 1 } else { 128 };
                    first = false;
                    v
                })
            })
            .collect();
        shapes.insert(info.name.clone(), shape);
    }
    kiln::specialize(g, &shapes)?;
    Ok(())
}

/// Loads, specializes and optimizes a model file and plans it.
pub fn plan_file(path: &Path) -> Result<PlanOutcome> {
    let mut m = kiln::load(path).with_context(|| format!("loading {}", path.display()))?;
    specialize_unknown(&mut m.graph)?;
    kiln::optimize(&mut m.graph).with_context(|| format!("optimizing {}", path.display()))?;
    Ok(plan_graph(&m.graph))
}

/// Prints the coverage of `outcomes` (name, outcome), compiles what the plans use, and fails
/// on any compile failure or planner error.
pub fn report(outcomes: &[(String, PlanOutcome)], jobs: usize) -> Result<()> {
    let mut planned = 0;
    let mut by_op: BTreeMap<&str, (usize, BTreeSet<&str>)> = BTreeMap::new();
    let mut errors = vec![];
    let mut families: BTreeMap<&str, (KernelFamily, BTreeSet<&str>)> = BTreeMap::new();
    let mut generated: BTreeMap<&str, &str> = BTreeMap::new();
    let mut steps = [0usize; 3];
    for (name, o) in outcomes {
        match o {
            PlanOutcome::Planned { kernels, generated: g, steps: s } => {
                planned += 1;
                for (f, k) in kernels {
                    families.entry(f.name()).or_insert((*f, BTreeSet::new())).1.insert(k);
                }
                for (n, src) in g {
                    generated.insert(n, src);
                }
                for i in 0..3 {
                    steps[i] += s[i];
                }
            }
            PlanOutcome::Refused(list) => {
                let ops: BTreeSet<&str> = list.iter().map(|(op, _)| op.as_str()).collect();
                for op in ops {
                    let e = by_op.entry(op).or_default();
                    e.0 += 1;
                    for (o2, why) in list {
                        if o2 == op && e.1.len() < 3 {
                            e.1.insert(why.as_str());
                        }
                    }
                }
            }
            PlanOutcome::Error(e) => errors.push(format!("{name}: {e}")),
        }
    }
    println!(
        "\nCUDA plans: {planned} of {} graphs planned ({} kernel launches, {} GEMMs, {} convolutions)",
        outcomes.len(),
        steps[0],
        steps[1],
        steps[2]
    );
    let mut ops: Vec<(&str, &(usize, BTreeSet<&str>))> = by_op.iter().map(|(k, v)| (*k, v)).collect();
    ops.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.0.cmp(b.0)));
    println!("refused, by op (graphs; a graph counts once per op):");
    for (op, (n, whys)) in ops {
        let whys: Vec<&str> = whys.iter().copied().collect();
        let why: String = whys.join(" | ").chars().take(160).collect();
        println!("  {op:<28} {n:>4}  {why}");
    }
    for e in &errors {
        println!("PLAN ERROR {e}");
    }

    // Compile every family used and every distinct generated kernel, for both targets.
    let nv = Nvrtc::locate().context("NVRTC is needed to compile the plans' kernels (cargo xtask fetch-nvrtc)")?;
    let mut jobs_list: Vec<(String, String, Vec<String>)> = vec![];
    for (name, (fam, kernels)) in &families {
        jobs_list.push((name.to_string(), fam.source(), kernels.iter().map(|k| k.to_string()).collect()));
    }
    for (name, src) in &generated {
        jobs_list.push((name.to_string(), src.to_string(), vec![name.to_string()]));
    }
    let total = jobs_list.len();
    let failures = Mutex::new(vec![]);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let t0 = std::time::Instant::now();
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((name, src, kernels)) = jobs_list.get(i) else { break };
                for arch in ARCHS {
                    let r = nv.compile(name, src, arch);
                    let mut f = failures.lock().expect("no panics while holding the lock");
                    match r {
                        Ok(c) => {
                            for k in kernels.iter().filter(|k| !c.has_kernel(k)) {
                                f.push(format!("{arch}: {name} lacks kernel {k}"));
                            }
                        }
                        Err(e) => f.push(format!("{arch}: {name}: {e}")),
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().expect("threads are done");
    println!(
        "compiled {} families and {} generated kernels for {ARCHS:?} in {:.1} s: {} failures",
        families.len(),
        total - families.len(),
        t0.elapsed().as_secs_f64(),
        failures.len()
    );
    for f in &failures {
        println!("COMPILE FAILURE {f}");
    }
    if !failures.is_empty() || !errors.is_empty() {
        bail!("{} compile failures, {} planner errors", failures.len(), errors.len());
    }
    Ok(())
}
