//! The harness the GPU test files share: the kernel library on GPU 0 (or a printed skip
//! reason), seeded inputs, the CPU reference and one-node plans checked against it.

#![allow(dead_code)] // each test file uses a part

use kiln_cpu::eval_op;
use kiln_cuda::driver::{probe_driver, Gpu, LaunchConfig, Param};
use kiln_cuda::kernels::KernelFamily;
use kiln_cuda::library::{DeviceTensor, KernelLibrary};
use kiln_cuda::nvrtc::Nvrtc;
use kiln_ir::{DType, Op, Tensor};
use std::sync::{Arc, OnceLock};

pub const SIZES: [usize; 5] = [1, 3, 50, 783, 4096];

// ---------------------------------------------------------------------------------------------
// Harness

pub fn required() -> bool {
    std::env::var_os("KILN_REQUIRE_GPU").is_some_and(|v| v == "1")
}

/// The kernel library on GPU 0, or `None` (after printing why) where there is no GPU.
pub fn lib() -> Option<&'static KernelLibrary> {
    static LIB: OnceLock<Result<KernelLibrary, String>> = OnceLock::new();
    let r = LIB.get_or_init(|| {
        probe_driver().map_err(|e| e.to_string())?;
        let gpu = Gpu::new(0).map_err(|e| e.to_string())?;
        let nv = Nvrtc::locate().map_err(|e| e.to_string())?;
        Ok(KernelLibrary::new(Arc::new(gpu), nv))
    });
    match r {
        Ok(l) => Some(l),
        Err(e) if required() => panic!("KILN_REQUIRE_GPU=1 but {e}"),
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}

/// A seeded xorshift generator, so every run sees the same inputs.
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next() >> 40) as f32 / (1u64 << 24) as f32)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

pub fn rand_tensor(rng: &mut Rng, shape: &[usize], lo: f32, hi: f32, dt: DType) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_vec(shape.to_vec(), (0..n).map(|_| rng.uniform(lo, hi)).collect::<Vec<f32>>()).unwrap().cast(dt)
}

/// The CPU reference of one op.
pub fn cpu(op: Op, inputs: &[&Tensor]) -> Tensor {
    let ins: Vec<Option<&Tensor>> = inputs.iter().map(|t| Some(*t)).collect();
    eval_op(&op, &ins, 1).unwrap_or_else(|e| panic!("CPU reference of {}: {e}", op.name())).remove(0)
}

/// Asserts `got` matches `want` elementwise within `atol + rtol * |want|` (NaN matches NaN).
pub fn check_close(what: &str, got: &Tensor, want: &Tensor, atol: f64, rtol: f64) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    assert_eq!(got.dtype(), want.dtype(), "{what}: dtype");
    let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let ok = (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= atol + rtol * b.abs();
        if !ok {
            let err = (a - b).abs();
            panic!("{what}: element {i} is {a}, expected {b} (|diff| {err})");
        }
    }
}

/// Tolerances per element type: f16 rounds every output and the CPU rounds every step.
pub fn tol(dt: DType) -> (f64, f64) {
    match dt {
        DType::F16 => (2e-3, 4e-3),
        DType::BF16 => (2e-2, 2e-2),
        _ => (1e-5, 1e-5),
    }
}

pub fn run(lib: &KernelLibrary, family: KernelFamily, kernel: &str, cfg: LaunchConfig, params: &[Param]) {
    let (_module, k) = lib.kernel(family, kernel).unwrap_or_else(|e| panic!("{kernel}: {e}"));
    lib.gpu().launch(k, cfg, params).unwrap_or_else(|e| panic!("{kernel}: {e}"));
}

pub fn ptr(lib: &KernelLibrary, t: &DeviceTensor) -> Param {
    Param::ptr(lib.addr(t))
}

pub fn sfx(dt: DType) -> &'static str {
    kiln_cuda::codegen::dtype_suffix(dt).unwrap()
}

/// A graph of one node over `data` (graph inputs) followed by `consts` (constant inputs,
/// `None` for an absent optional one), its output types taken from the CPU reference; with its
/// inputs.
pub fn one_node(op: Op, data: &[&Tensor], consts: &[Option<Tensor>], outputs: usize) -> (kiln_ir::Graph, Vec<Tensor>) {
    use kiln_ir::{Graph, TypeInfo, Value, ValueInfo};
    let mut ins: Vec<Option<&Tensor>> = data.iter().map(|t| Some(*t)).collect();
    ins.extend(consts.iter().map(Option::as_ref));
    let want = eval_op(&op, &ins, outputs).unwrap_or_else(|e| panic!("CPU reference of {}: {e}", op.name()));
    let mut g = Graph::new(op.name());
    let mut slots = vec![];
    for (i, t) in data.iter().enumerate() {
        slots.push(Some(g.add_input(format!("in{i}"), TypeInfo::known(t.dtype(), t.shape()))));
    }
    for (i, c) in consts.iter().enumerate() {
        slots.push(c.as_ref().map(|t| g.add_const(format!("c{i}"), t.clone())));
    }
    let outs = want
        .iter()
        .enumerate()
        .map(|(i, t)| ValueInfo::tensor(format!("out{i}"), TypeInfo::known(t.dtype(), t.shape())))
        .collect();
    let id = g.add_node("node", op, &slots, outs);
    for i in 0..want.len() {
        g.add_output(format!("out{i}"), Value { node: id, slot: i });
    }
    (g, data.iter().map(|t| (*t).clone()).collect())
}

/// Plans `g`, runs the plan on the GPU and compares every output with the CPU executor.
pub fn plan_matches(lib: &KernelLibrary, what: &str, g: &kiln_ir::Graph, inputs: &[Tensor], atol: f64, rtol: f64) {
    let plan = kiln_cuda::plan::plan(g).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        plan.steps.iter().all(|s| matches!(s.kind, kiln_cuda::plan::StepKind::Kernel(_))),
        "{what}: not a kernel-only plan:\n{plan}"
    );
    let got = lib.run_plan(&plan, inputs).unwrap_or_else(|e| panic!("{what}: {e}"));
    let want = kiln_cpu::run_graph(g, inputs).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(got.len(), want.len(), "{what}: outputs");
    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
        check_close(&format!("{what} output {i}"), a, b, atol, rtol);
    }
}

pub fn ints(v: &[i64]) -> Option<Tensor> {
    Some(Tensor::from_vec(vec![v.len()], v.to_vec()).unwrap())
}
