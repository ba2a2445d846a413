//! INT8 matrix products on the GPU against the CPU reference (kiln-cpu), exactly: i8
//! MatMulInteger on cuBLASLt's integer tensor cores where `k` and `n` are multiples of 4, the
//! direct kernel where not, over odd numbers of rows (1, 3, 50, 783), batches folded into one
//! GEMM, two computed operands, and the dequantizing epilogue nodes of fusion's `qdq` rules.
//!
//! The plans (which products go to cuBLASLt) are checked everywhere. Without a CUDA driver or
//! device each test prints why it runs nothing on a GPU. With
//! `KILN_REQUIRE_GPU=1` (as `xtask/scripts/gpu_check.sh` sets) a missing GPU or NVRTC fails
//! instead, so a GPU run can never pass by skipping.

use kiln_cuda::library::KernelLibrary;
use kiln_cuda::plan::{plan, StepKind};
use kiln_ir::ops::elementwise::BinaryOp;
use kiln_ir::ops::{ElementwiseOp, Expr, ExprNode, FusedOp, LinalgOp};
use kiln_ir::{DType, Graph, Op, Tensor};

mod common;

use common::*;

/// Random i8 values over the whole range.
fn i8s(rng: &mut Rng, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.below(256) as f64 - 128.0).collect();
    Tensor::from_vec(shape.to_vec(), v).unwrap().cast(DType::I8)
}

/// Plans `g` and checks that `int8_gemms` of its steps are i8 cuBLASLt GEMMs; where there is
/// a GPU, runs it and compares every output with the CPU executor: exactly, or within
/// `atol + rtol * |want|` where `tol` gives them.
fn check(
    lib: Option<&KernelLibrary>,
    what: &str,
    g: &Graph,
    inputs: &[Tensor],
    int8_gemms: usize,
    tol: Option<(f64, f64)>,
) {
    let p = plan(g).unwrap_or_else(|e| panic!("{what}: {e}"));
    let gemms = p.steps.iter().filter(|s| matches!(&s.kind, StepKind::Gemm(m) if m.dtype == DType::I8)).count();
    assert_eq!(gemms, int8_gemms, "{what}: i8 GEMMs in\n{p}");
    let Some(lib) = lib else { return };
    let got = lib.run_plan(&p, inputs).unwrap_or_else(|e| panic!("{what}: {e}"));
    let want = kiln_cpu::run_graph(g, inputs).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(got.len(), want.len(), "{what}: outputs");
    for (o, (a, b)) in got.iter().zip(&want).enumerate() {
        if let Some((atol, rtol)) = tol {
            check_close(&format!("{what} output {o}"), a, b, atol, rtol);
        } else {
            assert_eq!((a.dtype(), a.shape()), (b.dtype(), b.shape()), "{what} output {o}");
            let (av, bv) = (a.to_i64_vec(), b.to_i64_vec());
            if let Some(i) = (0..av.len()).find(|&i| av[i] != bv[i]) {
                panic!("{what} output {o}: element {i} is {}, expected {}", av[i], bv[i]);
            }
        }
    }
}

#[test]
fn int8_matmuls_match_the_cpu_exactly() {
    // The plans are checked everywhere, the results where there is a GPU.
    let lib = lib();
    let mut rng = Rng::new(29);
    let mm = || Op::Linalg(LinalgOp::MatMulInteger);
    // (k, n, whether cuBLASLt takes it): the last two keep the direct kernel. Sums of 4096
    // products of i8 reach 2^26, far inside i32.
    let dims = [(32, 16, true), (64, 12, true), (4096, 64, true), (30, 16, false), (64, 10, false)];
    for m in [1, 3, 50, 783] {
        for (k, n, lt) in dims {
            if k == 4096 && m == 783 {
                continue; // the CPU reference would take long; 50 rows cover it
            }
            let a = i8s(&mut rng, &[m, k]);
            let w = i8s(&mut rng, &[k, n]);
            // A constant weight, with no zero points and with constant zero ones.
            let (g, ins) = one_node(mm(), &[&a], &[Some(w.clone())], 1);
            check(lib, &format!("i8 [{m}, {k}] x const [{k}, {n}]"), &g, &ins, lt as usize, None);
            let zps = [Some(Tensor::scalar(0i8)), Some(Tensor::from_vec(vec![n], vec![0i8; n]).unwrap())];
            let (g, ins) = one_node(mm(), &[&a], &[Some(w.clone()), zps[0].clone(), zps[1].clone()], 1);
            check(lib, &format!("i8 [{m}, {k}] x const [{k}, {n}], zero points 0"), &g, &ins, lt as usize, None);
        }
    }
    // A batch of activations over one weight: one GEMM of 2 x 50 rows.
    let (a, w) = (i8s(&mut rng, &[2, 50, 96]), i8s(&mut rng, &[96, 40]));
    let (g, ins) = one_node(mm(), &[&a], &[Some(w)], 1);
    check(lib, "i8 [2, 50, 96] x const [96, 40]", &g, &ins, 1, None);
    // Two computed operands, as attention's products: B transposed by a kernel first.
    for (m, k, n) in [(16, 16, 16), (3, 8, 4), (50, 24, 52)] {
        let (a, b) = (i8s(&mut rng, &[2, 3, m, k]), i8s(&mut rng, &[2, 3, k, n]));
        let (g, ins) = one_node(mm(), &[&a, &b], &[], 1);
        check(lib, &format!("i8 [2, 3, {m}, {k}] x [2, 3, {k}, {n}]"), &g, &ins, 1, None);
    }
    // A weight shared by every batch of a computed product of rank 4.
    let (a, b) = (i8s(&mut rng, &[2, 3, 5, 8]), i8s(&mut rng, &[8, 12]));
    let (g, ins) = one_node(mm(), &[&a, &b], &[], 1);
    check(lib, "i8 [2, 3, 5, 8] x [8, 12]", &g, &ins, 1, None);
}

#[test]
fn int8_epilogues_dequantize_on_the_gpu() {
    let lib = lib();
    let mut rng = Rng::new(31);
    // y = f32(x w) * scale[n] + bias[n], as the qdq rules build it.
    let dequant = Expr {
        nodes: vec![
            ExprNode::Input(0),
            ExprNode::Op { op: ElementwiseOp::Cast { to: DType::F32, saturate: true }, args: vec![0] },
            ExprNode::Input(1),
            ExprNode::Op { op: ElementwiseOp::Binary(BinaryOp::Mul), args: vec![1, 2] },
            ExprNode::Input(2),
            ExprNode::Op { op: ElementwiseOp::Binary(BinaryOp::Add), args: vec![3, 4] },
        ],
    };
    for (m, k, n, lt) in [(50, 64, 32, true), (3, 64, 10, false)] {
        let (x, w) = (i8s(&mut rng, &[m, k]), i8s(&mut rng, &[k, n]));
        let scale = rand_tensor(&mut rng, &[n], 1e-4, 1e-3, DType::F32);
        let bias = rand_tensor(&mut rng, &[n], -1.0, 1.0, DType::F32);
        let op = Op::Fused(FusedOp::Epilogue { base: LinalgOp::MatMulInteger, base_inputs: 4, expr: dequant.clone() });
        let (g, ins) = one_node(op, &[&x], &[Some(w), None, None, Some(scale), Some(bias)], 1);
        check(
            lib,
            &format!("MatMulIntegerEpilogue [{m}, {k}] x [{k}, {n}]"),
            &g,
            &ins,
            lt as usize,
            Some((1e-5, 1e-6)),
        );
    }
}
