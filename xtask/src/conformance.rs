//! `cargo xtask conformance`: the ONNX backend test suite run through Kiln's importer, pass
//! pipeline and CPU executor, with counts per directory, a per-op table in
//! `docs/conformance.md`, `target/conformance/summary.json`, and an allow-list manifest
//! (`tests/onnx/manifest.txt`) whose tests must keep passing.

use anyhow::{bail, Context, Result};
use kiln::ir::{DType, Data, Tensor, ValueKind};
use kiln::onnx::ImportError;
use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::plan_coverage::{self, PlanOutcome};

/// The suite's directories, in report order.
const DIRS: [&str; 5] = ["node", "simple", "pytorch-converted", "pytorch-operator", "light"];

const MANIFEST: &str = "tests/onnx/manifest.txt";

#[derive(clap::Args)]
pub struct Args {
    /// Only tests whose name contains this.
    #[arg(long)]
    filter: Option<String>,
    /// Only this directory of the suite.
    #[arg(long)]
    dir: Option<String>,
    /// Print one line per test with the reason for anything but a pass.
    #[arg(long, short)]
    verbose: bool,
    /// Skip the pass pipeline and fusion (import and execute only).
    #[arg(long)]
    no_opt: bool,
    /// Run the pass pipeline but not fusion.
    #[arg(long)]
    no_fuse: bool,
    /// Fail if a test that the manifest lists does not pass.
    #[arg(long)]
    check: bool,
    /// Rewrite the manifest to list exactly the tests that pass.
    #[arg(long)]
    update_manifest: bool,
    /// Write docs/conformance.md (done by default on a full, unfiltered run).
    #[arg(long)]
    write_docs: bool,
    /// Where summary.json and results.json go.
    #[arg(long, default_value = "target/conformance")]
    out_dir: PathBuf,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// Where the models run: the CPU reference, or the CUDA backend (plans, compiles with
    /// NVRTC and runs each test on GPU 0; results go to OUT_DIR/cuda and the manifest of
    /// CPU-passing tests is the yardstick).
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda"])]
    device: String,
    /// Also plan every passing graph for CUDA, plus the model fixtures, and compile every
    /// kernel the plans use with NVRTC (sm_80, sm_90); prints the planner's coverage.
    #[arg(long)]
    plan_cuda: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Pass,
    Fail,
    Unsupported,
    Error,
    Panic,
}

struct Outcome {
    dir: &'static str,
    name: String,
    ops: Vec<String>,
    status: Status,
    reason: String,
    millis: u128,
    plan: Option<PlanOutcome>,
}

struct Case {
    dir: &'static str,
    name: String,
    model: PathBuf,
    /// (inputs, expected outputs) per data set.
    data: Vec<(Vec<PathBuf>, Vec<PathBuf>)>,
}

fn list_cases(root: &Path, args: &Args) -> Result<Vec<Case>> {
    let mut cases = vec![];
    for dir in DIRS {
        if args.dir.as_deref().is_some_and(|d| d != dir) {
            continue;
        }
        let base = root.join(dir);
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&base)
            .with_context(|| format!("reading {}", base.display()))?
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for p in entries {
            let fname = p.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            let case = if dir == "light" {
                // light/<name>.onnx with light/<name>_output_0.pb; no inputs.
                let Some(name) = fname.strip_suffix(".onnx") else { continue };
                let out = base.join(format!("{name}_output_0.pb"));
                Case { dir, name: name.to_string(), model: p.clone(), data: vec![(vec![], vec![out])] }
            } else {
                if !p.is_dir() {
                    continue;
                }
                let mut data = vec![];
                let mut sets: Vec<PathBuf> = std::fs::read_dir(&p)?
                    .flatten()
                    .map(|e| e.path())
                    .filter(|s| {
                        s.is_dir() && s.file_name().is_some_and(|n| n.to_string_lossy().starts_with("test_data_set_"))
                    })
                    .collect();
                sets.sort();
                for s in sets {
                    data.push((numbered(&s, "input_"), numbered(&s, "output_")));
                }
                Case { dir, name: fname.clone(), model: p.join("model.onnx"), data }
            };
            if args.filter.as_deref().is_some_and(|f| !case.name.contains(f)) {
                continue;
            }
            cases.push(case);
        }
    }
    Ok(cases)
}

/// `prefix0.pb`, `prefix1.pb`, ... in numeric order.
fn numbered(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<(usize, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            let i = n.strip_prefix(prefix)?.strip_suffix(".pb")?.parse().ok()?;
            Some((i, e.path()))
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, p)| p).collect()
}

/// Whether an error means "Kiln does not implement this" rather than "Kiln got it wrong".
fn is_unsupported(msg: &str) -> bool {
    msg.contains("not supported")
        || msg.contains("not implemented")
        || msg.contains("unsupported")
        || msg.contains("no CUDA lowering")
}

/// Runs the graph on the GPU: tensors only (sequences and optionals have no CUDA form). Integer
/// inputs that only give shapes or axes are bound first, as an engine build fixes them.
fn run_gpu(raw: &kiln::ir::Graph, ins: Vec<Data>, opt: bool, fuse: bool) -> Result<Vec<Data>, String> {
    let tensors = ins
        .into_iter()
        .map(|d| match d {
            Data::Tensor(t) => Ok(t),
            _ => Err("sequence and optional values are not supported on CUDA".to_string()),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut g = raw.clone();
    let tensors = kiln::bind_shape_inputs(&mut g, tensors);
    if opt {
        let opts = kiln::OptimizeOptions { fuse, ..Default::default() };
        kiln::optimize_with(&mut g, &opts).map_err(|e| e.to_string())?;
    }
    let mut opts = kiln::gpu::GpuOptions::default();
    // The suite's tolerances are FP32's.
    opts.exec.tf32 = false;
    opts.exec.cuda_graph = false;
    opts.workspace_bytes = 16 << 20;
    let out = kiln::gpu::run_gpu(&g, &tensors, &opts).map_err(|e| e.to_string())?;
    Ok(out.into_iter().map(Data::Tensor).collect())
}

/// Expected outputs that onnx 1.19.1 ships wrong, corrected to what the operator's definition
/// gives before comparing: (directory, test, the upstream report, and per corrected element its
/// output, flat index and value). QLinearMatMul's int8 tests were generated by a reference that
/// wrapped out-of-range results into the type instead of saturating them, as the operator's
/// definition and ONNX Runtime do (onnx/onnx#7835; the data was regenerated, saturated, by
/// onnx/onnx#7868 after 1.19): -236 is stored as 20, -139 as 117, and so on. Each corrected
/// value is the saturation bound, and the shipped one must be what wrapping gave, or the
/// erratum is refused.
const ERRATA: &[(&str, &str, &str, &[(usize, usize, i64)])] = &[
    ("node", "test_qlinearmatmul_2D_int8_float16", "onnx/onnx#7835", &[(0, 5, -128)]),
    ("node", "test_qlinearmatmul_2D_int8_float32", "onnx/onnx#7835", &[(0, 5, -128)]),
    (
        "node",
        "test_qlinearmatmul_3D_int8_float16",
        "onnx/onnx#7835",
        &[(0, 1, -128), (0, 2, -128), (0, 7, -128), (0, 8, -128)],
    ),
    (
        "node",
        "test_qlinearmatmul_3D_int8_float32",
        "onnx/onnx#7835",
        &[(0, 1, -128), (0, 2, -128), (0, 7, -128), (0, 8, -128)],
    ),
];

/// The upstream report of the errata that apply to `case`, after correcting `want` by them.
/// An erratum whose shipped value is not the wrapped form of a result past the bound (in
/// [-128 - 128, -128) or (127, 127 + 128] modulo 256) is an error: the data changed.
fn apply_errata(case: &Case, want: &mut [Data]) -> Result<Option<&'static str>, String> {
    let Some((_, _, report, fixes)) = ERRATA.iter().find(|(d, t, _, _)| *d == case.dir && *t == case.name) else {
        return Ok(None);
    };
    for &(out, index, value) in fixes.iter() {
        let Some(Data::Tensor(t)) = want.get_mut(out) else {
            return Err(format!("erratum {report}: output {out} is not a tensor"));
        };
        let mut v = t.to_i64_vec();
        let shipped = *v.get(index).ok_or_else(|| format!("erratum {report}: no element {index}"))?;
        // The shipped value is the true result wrapped into i8: the true result lies past the
        // bound the corrected value names, by less than 256.
        let wrapped_from_beyond = (1..=128).any(|d| {
            let truth = if value < 0 { value - d } else { value + d };
            (truth.rem_euclid(256) + 128).rem_euclid(256) - 128 == shipped
        });
        if !wrapped_from_beyond {
            return Err(format!("erratum {report}: element {index} is {shipped}, not a wrapped result"));
        }
        v[index] = value;
        let data: Vec<f64> = v.into_iter().map(|x| x as f64).collect();
        *t = Tensor::from_vec(t.shape().to_vec(), data).map_err(|e| e.to_string())?.cast(t.dtype());
    }
    Ok(Some(report))
}

fn run_case(
    case: &Case,
    opt: bool,
    fuse: bool,
    cuda: bool,
    want_plan: bool,
    plan: &mut Option<PlanOutcome>,
) -> (Vec<String>, Status, String) {
    let mut ops = vec![];
    let mut model = match kiln::onnx::load_model(&case.model) {
        Ok(m) => m,
        Err(e) => {
            let status = match &e {
                ImportError::Unsupported(list) => {
                    ops = list.iter().map(|u| u.op.clone()).collect();
                    Status::Unsupported
                }
                e if is_unsupported(&e.to_string()) => Status::Unsupported,
                _ => Status::Error,
            };
            return (ops, status, e.to_string());
        }
    };
    ops = model.graph.op_counts().keys().filter(|k| !matches!(**k, "Input" | "Const")).map(|k| k.to_string()).collect();
    // On CUDA each data set is bound into the graph first (shape inputs), then optimized.
    let raw = if cuda { Some(model.graph.clone()) } else { None };
    if opt && !cuda {
        let opts = kiln::OptimizeOptions { fuse, ..Default::default() };
        if let Err(e) = kiln::optimize_with(&mut model.graph, &opts) {
            let s = e.to_string();
            return (ops, if is_unsupported(&s) { Status::Unsupported } else { Status::Error }, s);
        }
    }
    let in_kinds: Vec<ValueKind> = model.graph.inputs.iter().map(|&i| model.graph.node(i).outputs[0].kind).collect();
    let out_kinds: Vec<ValueKind> = model.graph.outputs.iter().map(|o| model.graph.value_info(o.value).kind).collect();
    let mut first_shapes: Option<Vec<Option<Vec<usize>>>> = None;
    let mut first_tensors: Option<Vec<Tensor>> = None;
    let mut corrected = None;
    for (inputs, outputs) in &case.data {
        let read = |paths: &[PathBuf], kinds: &[ValueKind]| -> Result<Vec<Data>, String> {
            paths
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let kind = kinds.get(i).copied().unwrap_or_default();
                    kiln::onnx::read_value_file(p, kind).map_err(|e| format!("{}: {e}", p.display()))
                })
                .collect()
        };
        let inputs = if case.dir == "light" {
            Ok(light_inputs(&model.graph).into_iter().map(Data::Tensor).collect())
        } else {
            read(inputs, &in_kinds)
        };
        let (ins, mut want) = match (inputs, read(outputs, &out_kinds)) {
            (Ok(i), Ok(o)) => (i, o),
            (Err(e), _) | (_, Err(e)) => {
                let st = if is_unsupported(&e) { Status::Unsupported } else { Status::Error };
                return (ops, st, e);
            }
        };
        match apply_errata(case, &mut want) {
            Ok(Some(report)) => corrected = Some(report),
            Ok(None) => {}
            Err(e) => return (ops, Status::Error, e),
        }
        if first_shapes.is_none() && want_plan {
            first_tensors = ins.iter().map(|d| if let Data::Tensor(t) = d { Some(t.clone()) } else { None }).collect();
        }
        if first_shapes.is_none() {
            first_shapes = Some(
                ins.iter().map(|d| if let Data::Tensor(t) = d { Some(t.shape().to_vec()) } else { None }).collect(),
            );
        }
        let got = match &raw {
            Some(raw) => run_gpu(raw, ins, opt, fuse),
            None => kiln::cpu::run_graph_data(&model.graph, ins).map_err(|e| e.to_string()),
        };
        let got = match got {
            Ok(g) => g,
            Err(s) => {
                return (ops, if is_unsupported(&s) { Status::Unsupported } else { Status::Error }, s);
            }
        };
        if got.len() != want.len() {
            return (ops, Status::Fail, format!("{} outputs, {} expected", got.len(), want.len()));
        }
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            if let Err(why) = compare_data(g, w) {
                return (ops, Status::Fail, format!("output {i}: {why}"));
            }
        }
    }
    if want_plan {
        *plan = Some(plan_passing(case, &model.graph, first_shapes.unwrap_or_default(), first_tensors, opt, fuse));
    }
    let note = corrected.map(|r| format!("expected output corrected ({r})")).unwrap_or_default();
    (ops, Status::Pass, note)
}

/// Plans a graph that passed: as optimized when its inputs are static and none is a shape
/// input, else reloaded with the shape inputs bound to the first data set's values (TopK's k,
/// CumSum's axis, ..., as the GPU run binds them) and the other inputs specialized to its
/// shapes (as an engine is built for one shape).
fn plan_passing(
    case: &Case,
    g: &kiln::ir::Graph,
    shapes: Vec<Option<Vec<usize>>>,
    first: Option<Vec<Tensor>>,
    opt: bool,
    fuse: bool,
) -> PlanOutcome {
    let is_static = g.inputs.iter().all(|&i| g.node(i).outputs[0].ty.concrete_shape().is_some());
    let binds = first.as_ref().is_some_and(|ts| kiln::bind_shape_inputs(&mut g.clone(), ts.clone()).len() < ts.len());
    if is_static && !binds {
        return plan_coverage::plan_graph(g);
    }
    let mut model = match kiln::onnx::load_model(&case.model) {
        Ok(m) => m,
        Err(e) => return PlanOutcome::Error(e.to_string()),
    };
    let names: Vec<String> = model.graph.inputs.iter().map(|&i| model.graph.node(i).outputs[0].name.clone()).collect();
    let mut map: std::collections::HashMap<String, Vec<usize>> =
        names.into_iter().zip(shapes).filter_map(|(n, s)| Some((n, s?))).collect();
    if let (true, Some(ts)) = (binds, first) {
        kiln::bind_shape_inputs(&mut model.graph, ts);
        let left: BTreeSet<String> =
            model.graph.inputs.iter().map(|&i| model.graph.node(i).outputs[0].name.clone()).collect();
        map.retain(|n, _| left.contains(n));
    }
    if let Err(e) = kiln::specialize(&mut model.graph, &map) {
        return PlanOutcome::Error(e.to_string());
    }
    if opt {
        let opts = kiln::OptimizeOptions { fuse, ..Default::default() };
        if let Err(e) = kiln::optimize_with(&mut model.graph, &opts) {
            return PlanOutcome::Error(format!("optimizing the specialized graph: {e}"));
        }
    }
    plan_coverage::plan_graph(&model.graph)
}

/// The inputs onnx's runner feeds the light models: `arange(n) / n` in the declared shape,
/// unknown dims taken as 1.
fn light_inputs(g: &kiln::ir::Graph) -> Vec<Tensor> {
    g.inputs
        .iter()
        .map(|&id| {
            let ty = &g.node(id).outputs[0].ty;
            let shape: Vec<usize> = ty.shape.iter().flatten().map(|d| d.known().unwrap_or(1)).collect();
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n).map(|i| (i as f64 / n as f64) as f32).collect();
            Tensor::from_vec(shape, v).expect("length is the product of the shape")
        })
        .collect()
}

/// Float tolerance `|a-b| <= atol + rtol*|b|` by output type: f32/f64 use the issue's
/// 1e-4 + 1e-3|b|; f16 and bf16 outputs carry fewer bits and get a stated looser bound.
fn tolerance(d: DType) -> (f64, f64) {
    match d {
        DType::F16 => (1e-3, 1e-2),
        DType::BF16 => (1e-2, 2e-2),
        _ => (1e-4, 1e-3),
    }
}

fn compare_data(got: &Data, want: &Data) -> Result<(), String> {
    match (got, want) {
        (Data::Tensor(g), Data::Tensor(w)) => compare(g, w),
        (Data::Sequence(g), Data::Sequence(w)) => {
            if g.len() != w.len() {
                return Err(format!("sequence of {} but expected {}", g.len(), w.len()));
            }
            g.iter()
                .zip(w)
                .enumerate()
                .try_for_each(|(i, (a, b))| compare(a, b).map_err(|e| format!("element {i}: {e}")))
        }
        (Data::Empty, Data::Empty) => Ok(()),
        (g, w) => Err(format!("a {} but expected a {}", g.kind_name(), w.kind_name())),
    }
}

fn compare(got: &Tensor, want: &Tensor) -> Result<(), String> {
    if got.dtype() != want.dtype() {
        return Err(format!("dtype {} but expected {}", got.dtype(), want.dtype()));
    }
    if got.shape() != want.shape() {
        return Err(format!("shape {:?} but expected {:?}", got.shape(), want.shape()));
    }
    if want.dtype().is_float() {
        let (atol, rtol) = tolerance(want.dtype());
        for (i, (a, b)) in got.to_f64_vec().iter().zip(want.to_f64_vec()).enumerate() {
            let ok = (a.is_nan() && b.is_nan()) || a == &b || (a - b).abs() <= atol + rtol * b.abs();
            if !ok {
                return Err(format!("element {i}: {a} but expected {b}"));
            }
        }
    } else if got != want {
        let (g, w) = (got.to_i64_vec(), want.to_i64_vec());
        let i = g.iter().zip(&w).position(|(a, b)| a != b).unwrap_or(0);
        return Err(format!(
            "element {i}: {} but expected {}",
            g.get(i).copied().unwrap_or(0),
            w.get(i).copied().unwrap_or(0)
        ));
    }
    Ok(())
}

thread_local! {
    static LAST_PANIC: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

pub fn run(args: Args) -> Result<()> {
    let root = crate::data::onnx_test_data()?;
    let cases = list_cases(&root, &args)?;
    let cuda = args.device == "cuda";
    let started = Instant::now();
    std::panic::set_hook(Box::new(|info| {
        let msg = match info.payload().downcast_ref::<&str>() {
            Some(s) => s.to_string(),
            None => info.payload().downcast_ref::<String>().cloned().unwrap_or_else(|| "panic".into()),
        };
        let loc = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        LAST_PANIC.with(|p| *p.borrow_mut() = Some(format!("{msg}{loc}")));
    }));
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Outcome>> = Mutex::new(vec![]);
    std::thread::scope(|s| {
        for _ in 0..args.jobs.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(case) = cases.get(i) else { break };
                let t0 = Instant::now();
                let mut plan = None;
                let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    run_case(case, !args.no_opt, !args.no_fuse, cuda, args.plan_cuda, &mut plan)
                }));
                let (ops, status, reason) = match r {
                    Ok(r) => r,
                    Err(_) => {
                        let msg = LAST_PANIC.with(|p| p.borrow_mut().take()).unwrap_or_default();
                        (vec![], Status::Panic, msg)
                    }
                };
                let o = Outcome {
                    dir: case.dir,
                    name: case.name.clone(),
                    ops,
                    status,
                    reason,
                    millis: t0.elapsed().as_millis(),
                    plan,
                };
                if args.verbose {
                    let why = if o.reason.is_empty() { String::new() } else { format!(": {}", o.reason) };
                    let why: String = why.chars().take(300).collect();
                    println!(
                        "{:<11} {}/{} ({} ms){why}",
                        format!("{:?}", o.status).to_lowercase(),
                        o.dir,
                        o.name,
                        o.millis
                    );
                }
                results.lock().expect("no worker panics while holding the lock").push(o);
            });
        }
    });
    let _ = std::panic::take_hook();
    let mut results = results.into_inner().expect("workers are done");
    results.sort_by(|a, b| (a.dir, &a.name).cmp(&(b.dir, &b.name)));

    // Counts per directory.
    let mut summary: BTreeMap<&str, BTreeMap<&str, usize>> = BTreeMap::new();
    for d in DIRS {
        if results.iter().any(|r| r.dir == d) {
            let m = summary.entry(d).or_default();
            for k in ["total", "pass", "fail", "unsupported", "error", "panic"] {
                m.insert(k, 0);
            }
        }
    }
    for r in &results {
        let m = summary.get_mut(r.dir).expect("dir registered above");
        *m.get_mut("total").expect("key") += 1;
        let key = match r.status {
            Status::Pass => "pass",
            Status::Fail => "fail",
            Status::Unsupported => "unsupported",
            Status::Error => "error",
            Status::Panic => "panic",
        };
        *m.get_mut(key).expect("key") += 1;
    }
    println!(
        "\n{:<18} {:>6} {:>6} {:>6} {:>12} {:>6} {:>6}",
        "directory", "total", "pass", "fail", "unsupported", "error", "panic"
    );
    for (d, m) in &summary {
        println!(
            "{:<18} {:>6} {:>6} {:>6} {:>12} {:>6} {:>6}",
            d, m["total"], m["pass"], m["fail"], m["unsupported"], m["error"], m["panic"]
        );
    }
    println!("({} tests in {:.1} s)", results.len(), started.elapsed().as_secs_f64());

    let full_run = args.filter.is_none() && args.dir.is_none();
    if cuda {
        return cuda_report(&results, &args.out_dir.join("cuda"));
    }
    let out_dir = args.out_dir.as_path();
    std::fs::create_dir_all(out_dir)?;
    std::fs::write(out_dir.join("summary.json"), serde_json::to_string_pretty(&summary)?)?;
    let details: Vec<_> = results
        .iter()
        .map(|r| serde_json::json!({"dir": r.dir, "test": r.name, "status": r.status, "reason": r.reason, "ops": r.ops, "ms": r.millis as u64}))
        .collect();
    std::fs::write(out_dir.join("results.json"), serde_json::to_string_pretty(&details)?)?;
    if full_run || args.write_docs {
        std::fs::write("docs/conformance.md", conformance_md(&results, &summary))?;
    }

    let passing: BTreeSet<String> =
        results.iter().filter(|r| r.status == Status::Pass).map(|r| format!("{}/{}", r.dir, r.name)).collect();
    let ran: BTreeSet<String> = results.iter().map(|r| format!("{}/{}", r.dir, r.name)).collect();
    if args.update_manifest {
        if !full_run {
            bail!("--update-manifest needs a full run (no --filter or --dir)");
        }
        let mut text = String::from(
            "# ONNX backend tests (onnx 1.19.1) that must pass on the CPU reference executor.\n\
             # Written by `cargo xtask conformance --update-manifest`; CI runs `--check`.\n",
        );
        for p in &passing {
            text.push_str(p);
            text.push('\n');
        }
        std::fs::write(MANIFEST, text)?;
        println!("wrote {MANIFEST} ({} tests)", passing.len());
    }
    if args.check {
        let manifest = std::fs::read_to_string(MANIFEST).with_context(|| format!("reading {MANIFEST}"))?;
        let listed: BTreeSet<&str> =
            manifest.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
        let regressed: Vec<&&str> = listed.iter().filter(|t| ran.contains(**t) && !passing.contains(**t)).collect();
        let not_listed = passing.iter().filter(|p| !listed.contains(p.as_str())).count();
        let not_run = results.iter().filter(|r| !listed.contains(format!("{}/{}", r.dir, r.name).as_str())).count();
        println!("manifest: {} tests listed; {not_run} tests not in it (reported as not run); {not_listed} of those now pass", listed.len());
        if !regressed.is_empty() {
            for t in &regressed {
                let r = results.iter().find(|r| format!("{}/{}", r.dir, r.name) == ***t);
                println!("REGRESSED {t}: {}", r.map(|r| r.reason.as_str()).unwrap_or(""));
            }
            bail!("{} manifest tests no longer pass", regressed.len());
        }
    }
    let panics = results.iter().filter(|r| r.status == Status::Panic).count();
    if panics > 0 {
        for r in results.iter().filter(|r| r.status == Status::Panic) {
            println!("PANIC {}/{}: {}", r.dir, r.name, r.reason);
        }
        if args.check {
            bail!("{panics} tests panicked");
        }
    }
    if args.plan_cuda {
        plan_cuda(&mut results, &args)?;
    }
    Ok(())
}

/// The CUDA run against the manifest of CPU-passing tests: how many of those pass on the GPU
/// too, and why the others do not.
fn cuda_report(results: &[Outcome], out_dir: &Path) -> Result<()> {
    let manifest = std::fs::read_to_string(MANIFEST).with_context(|| format!("reading {MANIFEST}"))?;
    let listed: BTreeSet<&str> =
        manifest.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    let on_cpu: Vec<&Outcome> =
        results.iter().filter(|r| listed.contains(format!("{}/{}", r.dir, r.name).as_str())).collect();
    let pass = on_cpu.iter().filter(|r| r.status == Status::Pass).count();
    let mut by_reason: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in on_cpu.iter().filter(|r| r.status != Status::Pass) {
        let reason: String = r.reason.chars().take(160).collect();
        by_reason
            .entry(format!("{:?}: {reason}", r.status).to_lowercase())
            .or_default()
            .push(format!("{}/{}", r.dir, r.name));
    }
    std::fs::create_dir_all(out_dir)?;
    let details: Vec<_> = results
        .iter()
        .map(|r| serde_json::json!({"dir": r.dir, "test": r.name, "status": r.status, "reason": r.reason, "ms": r.millis as u64}))
        .collect();
    std::fs::write(out_dir.join("results.json"), serde_json::to_string_pretty(&details)?)?;
    let mut text = String::new();
    for (reason, tests) in &by_reason {
        text.push_str(&format!("{} test(s): {reason}\n    {}\n", tests.len(), tests.join(" ")));
    }
    std::fs::write(out_dir.join("not_passing.txt"), &text)?;
    println!(
        "CUDA: {pass} of {} CPU-passing tests pass on the GPU ({:.1}%); the rest, by reason, in {}",
        on_cpu.len(),
        100.0 * pass as f64 / on_cpu.len().max(1) as f64,
        out_dir.join("not_passing.txt").display()
    );
    let panics = results.iter().filter(|r| r.status == Status::Panic).count();
    if panics > 0 {
        bail!("{panics} tests panicked on CUDA");
    }
    Ok(())
}

/// The planner over the passing graphs, then over the model fixtures (`tests/models/*.onnx`
/// and the BERT-base export of `cargo xtask bench-fuse` where it exists).
fn plan_cuda(results: &mut [Outcome], args: &Args) -> Result<()> {
    let mut outcomes: Vec<(String, PlanOutcome)> =
        results.iter_mut().filter_map(|r| Some((format!("{}/{}", r.dir, r.name), r.plan.take()?))).collect();
    let passing = results.iter().filter(|r| r.status == Status::Pass).count();
    println!("\nplanned {} of {passing} passing tests' graphs for CUDA", outcomes.len());
    let mut files: Vec<PathBuf> = std::fs::read_dir("tests/models")
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "onnx")).collect())
        .unwrap_or_default();
    files.sort();
    if let Ok(home) = std::env::var("HOME") {
        let bert = Path::new(&home).join(".cache/kiln/models/bert_base_12l.onnx");
        if bert.is_file() {
            files.push(bert);
        }
    }
    if args.filter.is_none() && args.dir.is_none() {
        for f in files {
            let name = f.file_name().map_or(String::new(), |n| n.to_string_lossy().to_string());
            let o = plan_coverage::plan_file(&f).unwrap_or_else(|e| PlanOutcome::Error(format!("{e:#}")));
            let line = match &o {
                PlanOutcome::Planned { steps, .. } => {
                    format!("planned: {} launches, {} GEMMs, {} convolutions", steps[0], steps[1], steps[2])
                }
                PlanOutcome::Refused(list) => {
                    let ops: BTreeSet<&str> = list.iter().map(|(o, _)| o.as_str()).collect();
                    format!("refused: {}", ops.into_iter().collect::<Vec<_>>().join(", "))
                }
                PlanOutcome::Error(e) => format!("error: {e}"),
            };
            println!("model {name}: {line}");
            outcomes.push((format!("models/{name}"), o));
        }
    }
    for (name, o) in &outcomes {
        if args.verbose {
            if let PlanOutcome::Refused(list) = o {
                let l: Vec<String> = list.iter().map(|(op, why)| format!("{op}: {why}")).collect();
                let l: String = l.join("; ").chars().take(300).collect();
                println!("refused {name}: {l}");
            }
        }
    }
    plan_coverage::report(&outcomes, args.jobs)
}

fn conformance_md(results: &[Outcome], summary: &BTreeMap<&str, BTreeMap<&str, usize>>) -> String {
    let mut s = String::from("# ONNX conformance\n\n");
    s.push_str("The ONNX backend test suite of onnx 1.19.1, run through Kiln's importer, pass pipeline and CPU reference executor.\n");
    s.push_str("Regenerate with `cargo xtask conformance` (this file is written by a full run).\n");
    s.push_str("Floats pass when `|a-b| <= 1e-4 + 1e-3*|b|` (f16 outputs: `1e-3 + 1e-2*|b|`; bf16: `1e-2 + 2e-2*|b|`); integers, booleans and shapes must match exactly.\n\n");
    s.push_str("| directory | total | pass | fail | unsupported | error | panic |\n|---|---|---|---|---|---|---|\n");
    for (d, m) in summary {
        s.push_str(&format!(
            "| {d} | {} | {} | {} | {} | {} | {} |\n",
            m["total"], m["pass"], m["fail"], m["unsupported"], m["error"], m["panic"]
        ));
    }
    s.push_str("\n## Node tests by op\n\nA test counts toward every op its model uses.\n\n| op | tests | pass | fail | unsupported | error | panic |\n|---|---|---|---|---|---|---|\n");
    let mut by_op: BTreeMap<&str, [usize; 6]> = BTreeMap::new();
    for r in results.iter().filter(|r| r.dir == "node") {
        let ops: Vec<&str> =
            if r.ops.is_empty() { vec!["(none imported)"] } else { r.ops.iter().map(String::as_str).collect() };
        for op in ops {
            let e = by_op.entry(op).or_default();
            e[0] += 1;
            e[1 + r.status as usize] += 1;
        }
    }
    for (op, c) in by_op {
        s.push_str(&format!("| {op} | {} | {} | {} | {} | {} | {} |\n", c[0], c[1], c[2], c[3], c[4], c[5]));
    }
    s.push_str("\n## Corrected test data\n\nExpected outputs that onnx 1.19.1 ships wrong are corrected before comparing (`ERRATA` in `xtask/src/conformance.rs`, each checked to be the error its report describes):\n\n");
    for (dir, test, report, fixes) in ERRATA {
        s.push_str(&format!(
            "- {dir}/{test}: {} element(s) saturated to the type's bound where the data wraps the result into it ({report})\n",
            fixes.len()
        ));
    }
    s
}
