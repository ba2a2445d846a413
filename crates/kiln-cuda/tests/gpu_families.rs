//! Every kernel family on a GPU against the CPU reference (kiln-cpu), on odd sizes (1, 3, 50,
//! 783, 4096), broadcasts and strided views, in f32 and f16.
//!
//! Without a CUDA driver or device each test prints why and returns. With
//! `KILN_REQUIRE_GPU=1` (as `xtask/scripts/gpu_check.sh` sets) a missing GPU or NVRTC fails
//! instead, so a GPU run can never pass by skipping.

use kiln_cpu::eval_op;
use kiln_cuda::codegen::{broadcast_strides, elementwise_args_with, elementwise_kernel, elementwise_launch, ElemPaths};
use kiln_cuda::driver::{LaunchConfig, Param};
use kiln_cuda::kernels::KernelFamily;
use kiln_cuda::launch::{self, AttnArgs, AttnStrides, PoolArgs, ResizeArgs};
use kiln_cuda::library::{DeviceTensor, KernelLibrary};
use kiln_ir::ops::attention::{AttentionAttrs, QkOutputMode};
use kiln_ir::ops::elementwise::{BinaryOp, UnaryOp};
use kiln_ir::ops::layout::PadMode;
use kiln_ir::ops::norm::NormOp;
use kiln_ir::ops::pool::{AutoPad, PoolOp, PoolWindow};
use kiln_ir::ops::reduce::{ReduceOp, Reducer};
use kiln_ir::ops::spatial::{
    AspectRatioPolicy, CoordTransform, NearestMode, ResizeAttrs, ResizeInputs, ResizeMode, SpatialOp,
};
use kiln_ir::ops::{AttentionOp, ElementwiseOp, Expr, ExprNode, FusedOp, LayoutOp};
use kiln_ir::{DType, Op, Tensor};

mod common;

use common::*;

// ---------------------------------------------------------------------------------------------
// Elementwise (generated)

/// Runs a generated kernel over device inputs read with the given strides, launched as the
/// planner launches it.
fn run_expr(lib: &KernelLibrary, e: &Expr, ins: &[(&DeviceTensor, Vec<i64>)], out_shape: &[usize]) -> Tensor {
    run_expr_with(lib, e, ins, out_shape, ElemPaths::default(), None)
}

/// [`run_expr`] with only the fast paths `paths` allows, and the grid `grid` where given.
fn run_expr_with(
    lib: &KernelLibrary,
    e: &Expr,
    ins: &[(&DeviceTensor, Vec<i64>)],
    out_shape: &[usize],
    paths: ElemPaths,
    grid: Option<LaunchConfig>,
) -> Tensor {
    let dts: Vec<DType> = ins.iter().map(|(t, _)| t.dtype).collect();
    let k = elementwise_kernel(e, &dts).unwrap_or_else(|err| panic!("{e}: {err}"));
    let out = lib.zeros(k.output, out_shape).unwrap();
    let ptrs: Vec<u64> = ins.iter().map(|(t, _)| lib.addr(t)).collect();
    let strides: Vec<Vec<i64>> = ins.iter().map(|(_, s)| s.clone()).collect();
    let args = elementwise_args_with(&k, &ptrs, lib.addr(&out), out_shape, &strides, paths).unwrap();
    let (_m, kernel) = lib.generated(&k).unwrap();
    let cfg = grid.unwrap_or_else(|| elementwise_launch(&k, out_shape, &strides).unwrap());
    lib.gpu().launch(kernel, cfg, &[Param(args)]).unwrap();
    lib.download(&out).unwrap()
}

fn fused(e: &Expr) -> Op {
    Op::Fused(FusedOp::Elementwise(e.clone()))
}

fn node(op: ElementwiseOp, args: &[usize]) -> ExprNode {
    ExprNode::Op { op, args: args.to_vec() }
}

#[test]
fn elementwise_matches_cpu() {
    let Some(lib) = lib() else { return };
    let mut rng = Rng::new(1);
    let silu = Expr {
        nodes: vec![
            ExprNode::Input(0),
            node(ElementwiseOp::Unary(UnaryOp::Sigmoid), &[0]),
            node(ElementwiseOp::Binary(BinaryOp::Mul), &[0, 1]),
        ],
    };
    let gelu = Expr::op(ElementwiseOp::Unary(UnaryOp::Gelu { tanh: false }), 1);
    // relu(x + bias) + residual
    let bias_res_relu = Expr {
        nodes: vec![
            ExprNode::Input(0),
            ExprNode::Input(1),
            node(ElementwiseOp::Binary(BinaryOp::Add), &[0, 1]),
            node(ElementwiseOp::Unary(UnaryOp::Relu), &[2]),
            ExprNode::Input(2),
            node(ElementwiseOp::Binary(BinaryOp::Add), &[3, 4]),
        ],
    };
    for dt in [DType::F32, DType::F16] {
        let (atol, rtol) = tol(dt);
        for n in SIZES {
            // Contiguous and aligned: the vector path plus a scalar tail where n is odd.
            let x = rand_tensor(&mut rng, &[n], -6.0, 6.0, dt);
            let dx = lib.upload(&x).unwrap();
            for e in [&silu, &gelu] {
                let got = run_expr(lib, e, &[(&dx, vec![1])], &[n]);
                check_close(&format!("{e} {dt} n={n}"), &got, &cpu(fused(e), &[&x]), atol, rtol);
            }
            // Broadcast bias [n] over [3, n], residual read through a transposed buffer.
            let acc = rand_tensor(&mut rng, &[3, n], -2.0, 2.0, dt);
            let bias = rand_tensor(&mut rng, &[n], -1.0, 1.0, dt);
            let res_t = rand_tensor(&mut rng, &[n, 3], -1.0, 1.0, dt);
            let res = cpu(Op::Layout(LayoutOp::Transpose { perm: Some(vec![1, 0]) }), &[&res_t]);
            let (da, db, dr) = (lib.upload(&acc).unwrap(), lib.upload(&bias).unwrap(), lib.upload(&res_t).unwrap());
            let ins = [(&da, vec![n as i64, 1]), (&db, broadcast_strides(&[n], &[3, n]).unwrap()), (&dr, vec![1, 3])];
            let got = run_expr(lib, &bias_res_relu, &ins, &[3, n]);
            check_close(
                &format!("bias+residual+relu {dt} n={n}"),
                &got,
                &cpu(fused(&bias_res_relu), &[&acc, &bias, &res]),
                atol,
                rtol,
            );
            // The same with the residual contiguous: where n is a whole number of vectors (4096)
            // the bias is read as a repeated row on the vector path.
            let res_c = rand_tensor(&mut rng, &[3, n], -1.0, 1.0, dt);
            let drc = lib.upload(&res_c).unwrap();
            let ins =
                [(&da, vec![n as i64, 1]), (&db, broadcast_strides(&[n], &[3, n]).unwrap()), (&drc, vec![n as i64, 1])];
            let got = run_expr(lib, &bias_res_relu, &ins, &[3, n]);
            let want = cpu(fused(&bias_res_relu), &[&acc, &bias, &res_c]);
            check_close(&format!("bias row+residual+relu {dt} n={n}"), &got, &want, atol, rtol);
            // Where over a broadcast condition, with a cast of the result to f32.
            let c = Tensor::from_vec(vec![n, 1], (0..n).map(|_| rng.below(2) == 1).collect::<Vec<bool>>()).unwrap();
            let y = rand_tensor(&mut rng, &[1, 4], -1.0, 1.0, dt);
            let xx = rand_tensor(&mut rng, &[n, 4], -1.0, 1.0, dt);
            let sel = Expr {
                nodes: vec![
                    ExprNode::Input(0),
                    ExprNode::Input(1),
                    ExprNode::Input(2),
                    node(ElementwiseOp::Where, &[0, 1, 2]),
                    node(ElementwiseOp::Cast { to: DType::F32, saturate: true }, &[3]),
                ],
            };
            let (dc, dxx, dy) = (lib.upload(&c).unwrap(), lib.upload(&xx).unwrap(), lib.upload(&y).unwrap());
            let ins = [
                (&dc, broadcast_strides(&[n, 1], &[n, 4]).unwrap()),
                (&dxx, vec![4, 1]),
                (&dy, broadcast_strides(&[1, 4], &[n, 4]).unwrap()),
            ];
            let got = run_expr(lib, &sel, &ins, &[n, 4]);
            check_close(&format!("where+cast {dt} n={n}"), &got, &cpu(fused(&sel), &[&c, &xx, &y]), 0.0, 0.0);
        }
    }
}

/// Every path of the generated kernels against the CPU: the vector path with a repeated bias
/// row and a scalar, the scalar tail, 32- and 64-bit indices, the strided path over collapsed
/// dims with a permuted input, and grids of any size (the loops are grid-stride, and the vector
/// loop carries the bias column from one iteration to the next).
#[test]
fn elementwise_paths_match_cpu() {
    let Some(lib) = lib() else { return };
    let mut rng = Rng::new(7);
    // gelu(acc + bias) * scale in the erf form, as the FFN epilogue of BERT computes it.
    let gelu_bias = |dt: DType| Expr {
        nodes: vec![
            ExprNode::Input(0),
            ExprNode::Input(1),
            node(ElementwiseOp::Binary(BinaryOp::Add), &[0, 1]),
            ExprNode::Scalar { value: std::f64::consts::SQRT_2, dtype: dt },
            node(ElementwiseOp::Binary(BinaryOp::Div), &[2, 3]),
            node(ElementwiseOp::Unary(UnaryOp::Erf), &[4]),
            ExprNode::Scalar { value: 1.0, dtype: dt },
            node(ElementwiseOp::Binary(BinaryOp::Add), &[5, 6]),
            node(ElementwiseOp::Binary(BinaryOp::Mul), &[2, 7]),
            ExprNode::Input(2),
            node(ElementwiseOp::Binary(BinaryOp::Mul), &[8, 9]),
        ],
    };
    let all = [
        ElemPaths::default(),
        ElemPaths { vector: true, index32: false },
        ElemPaths { vector: false, index32: true },
        ElemPaths { vector: false, index32: false },
    ];
    // Grids smaller than the work, so every thread loops; 3 and 7 blocks step the vector index
    // by a number of threads that is no multiple of the row's vectors.
    let grids = [
        None,
        Some(LaunchConfig::linear(1, 256)),
        Some(LaunchConfig::linear(3, 256)),
        Some(LaunchConfig::linear(7, 64)),
    ];
    for dt in [DType::F32, DType::F16] {
        let (atol, rtol) = tol(dt);
        let e = gelu_bias(dt);
        // Rows of 3072 (BERT), 40 (10 f32 or 5 f16 vectors) and 12 (no whole f16 vector: strided).
        for (rows, cols) in [(37, 3072), (50, 40), (9, 12)] {
            let acc = rand_tensor(&mut rng, &[rows, cols], -3.0, 3.0, dt);
            let bias = rand_tensor(&mut rng, &[cols], -1.0, 1.0, dt);
            let scale = rand_tensor(&mut rng, &[], 0.5, 1.5, dt);
            let want = cpu(fused(&e), &[&acc, &bias, &scale]);
            let (da, db, ds) = (lib.upload(&acc).unwrap(), lib.upload(&bias).unwrap(), lib.upload(&scale).unwrap());
            let out = [rows, cols];
            let ins = [
                (&da, vec![cols as i64, 1]),
                (&db, broadcast_strides(&[cols], &out).unwrap()),
                (&ds, broadcast_strides(&[], &out).unwrap()),
            ];
            for paths in all {
                for grid in grids {
                    let got = run_expr_with(lib, &e, &ins, &out, paths, grid);
                    let what = format!("gelu(acc+bias)*s {dt} [{rows}, {cols}] {paths:?} grid {grid:?}");
                    check_close(&what, &got, &want, atol, rtol);
                }
            }
        }
        // Contiguous with a scalar tail: 8 * 1000 + 5 elements (f16 vectors of 8, f32 of 4).
        let n = 8005;
        let x = rand_tensor(&mut rng, &[n], -6.0, 6.0, dt);
        let y = rand_tensor(&mut rng, &[n], -6.0, 6.0, dt);
        let add = Expr::op(ElementwiseOp::Binary(BinaryOp::Add), 2);
        let want = cpu(fused(&add), &[&x, &y]);
        let (dx, dy) = (lib.upload(&x).unwrap(), lib.upload(&y).unwrap());
        for paths in all {
            for grid in grids {
                let got = run_expr_with(lib, &add, &[(&dx, vec![1]), (&dy, vec![1])], &[n], paths, grid);
                check_close(&format!("add {dt} n={n} {paths:?} grid {grid:?}"), &got, &want, atol, rtol);
            }
        }
        // Channels-last data read in NCHW order plus a per-channel bias: the strided path, with
        // H and W collapsed into one dim.
        let (nb, c, h, w) = (3, 8, 7, 9);
        let nhwc = rand_tensor(&mut rng, &[nb, h, w, c], -2.0, 2.0, dt);
        let chan = rand_tensor(&mut rng, &[1, c, 1, 1], -1.0, 1.0, dt);
        let nchw = cpu(Op::Layout(LayoutOp::Transpose { perm: Some(vec![0, 3, 1, 2]) }), &[&nhwc]);
        let want = cpu(fused(&add), &[&nchw, &chan]);
        let (dn, dc) = (lib.upload(&nhwc).unwrap(), lib.upload(&chan).unwrap());
        let out = [nb, c, h, w];
        let read = vec![(h * w * c) as i64, 1, (w * c) as i64, c as i64];
        let ins = [(&dn, read), (&dc, broadcast_strides(&[1, c, 1, 1], &out).unwrap())];
        for paths in all {
            for grid in grids {
                let got = run_expr_with(lib, &add, &ins, &out, paths, grid);
                check_close(&format!("nhwc+channel {dt} {paths:?} grid {grid:?}"), &got, &want, atol, rtol);
            }
        }
    }
}

#[test]
fn elementwise_integer_ops_match_cpu() {
    let Some(lib) = lib() else { return };
    let mut rng = Rng::new(2);
    for n in SIZES {
        let a = Tensor::from_vec(vec![n], (0..n).map(|_| rng.below(2001) as i32 - 1000).collect::<Vec<i32>>()).unwrap();
        let b = Tensor::from_vec(
            vec![n],
            (0..n).map(|_| (rng.below(50) as i32 + 1) * if rng.below(2) == 0 { -1 } else { 1 }).collect::<Vec<i32>>(),
        )
        .unwrap();
        let (da, db) = (lib.upload(&a).unwrap(), lib.upload(&b).unwrap());
        for op in [
            BinaryOp::Add,
            BinaryOp::Mul,
            BinaryOp::Div,
            BinaryOp::Mod { fmod: false },
            BinaryOp::Mod { fmod: true },
            BinaryOp::Less,
        ] {
            let e = Expr::op(ElementwiseOp::Binary(op), 2);
            let got = run_expr(lib, &e, &[(&da, vec![1]), (&db, vec![1])], &[n]);
            check_close(&format!("{} i32 n={n}", op.name()), &got, &cpu(fused(&e), &[&a, &b]), 0.0, 0.0);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reduce

#[test]
fn reductions_and_softmax_match_cpu() {
    let Some(lib) = lib() else { return };
    let mut rng = Rng::new(3);
    let reducers = [
        (Reducer::Sum, "reduce_sum"),
        (Reducer::Mean, "reduce_mean"),
        (Reducer::Max, "reduce_max"),
        (Reducer::Min, "reduce_min"),
        (Reducer::Prod, "reduce_prod"),
        (Reducer::L1, "reduce_l1"),
        (Reducer::L2, "reduce_l2"),
        (Reducer::SumSquare, "reduce_sumsquare"),
        (Reducer::LogSumExp, "reduce_logsumexp"),
    ];
    for dt in [DType::F32, DType::F16] {
        for n in SIZES {
            for inner in [1usize, 5] {
                let outer = 3;
                let shape = [outer, n, inner];
                let cfg = launch::per_row((outer * inner) as u64, n as u64);
                let dims = [Param::i64(outer as i64), Param::i64(n as i64), Param::i64(inner as i64)];
                for (r, kname) in reducers {
                    // Products of many numbers overflow; keep them near 1 and short.
                    let (lo, hi) = if r == Reducer::Prod { (0.95, 1.05) } else { (-1.0, 1.0) };
                    if r == Reducer::Prod && n > 783 {
                        continue;
                    }
                    let x = rand_tensor(&mut rng, &shape, lo, hi, dt);
                    let (dx, dy) = (lib.upload(&x).unwrap(), lib.zeros(dt, &[outer, inner]).unwrap());
                    let mut p = vec![ptr(lib, &dx), ptr(lib, &dy)];
                    p.extend(dims.iter().cloned());
                    run(lib, KernelFamily::Reduce, &format!("{kname}_{}", sfx(dt)), cfg, &p);
                    let op = ReduceOp::Reduce {
                        reducer: r,
                        axes: Some(vec![1]),
                        keepdims: false,
                        noop_with_empty_axes: false,
                    };
                    let want = cpu(Op::Reduce(op), &[&x]);
                    let (atol, rtol) = tol(dt);
                    // Sums of n terms: allow the rounding of n additions.
                    let scale = (n as f64).sqrt();
                    check_close(
                        &format!("{kname} {dt} [{outer},{n},{inner}]"),
                        &lib.download(&dy).unwrap(),
                        &want,
                        atol * scale,
                        rtol * 4.0,
                    );
                }
                // ArgMax and ArgMin, first index on ties.
                let x = rand_tensor(&mut rng, &shape, -1.0, 1.0, dt);
                let dx = lib.upload(&x).unwrap();
                for (name, max) in [("argmax", true), ("argmin", false)] {
                    let dy = lib.zeros(DType::I64, &[outer, inner]).unwrap();
                    let mut p = vec![ptr(lib, &dx), ptr(lib, &dy)];
                    p.extend(dims.iter().cloned());
                    p.push(Param::i32(0));
                    run(lib, KernelFamily::Reduce, &format!("{name}_{}", sfx(dt)), cfg, &p);
                    let op = if max {
                        ReduceOp::ArgMax { axis: 1, keepdims: false, select_last_index: false }
                    } else {
                        ReduceOp::ArgMin { axis: 1, keepdims: false, select_last_index: false }
                    };
                    check_close(
                        &format!("{name} {dt} n={n}"),
                        &lib.download(&dy).unwrap(),
                        &cpu(Op::Reduce(op), &[&x]),
                        0.0,
                        0.0,
                    );
                }
                // Softmax and LogSoftmax over the middle axis.
                for (name, log) in [("softmax", false), ("logsoftmax", true)] {
                    let x = rand_tensor(&mut rng, &shape, -8.0, 8.0, dt);
                    let (dx, dy) = (lib.upload(&x).unwrap(), lib.zeros(dt, &shape).unwrap());
                    let mut p = vec![ptr(lib, &dx), ptr(lib, &dy)];
                    p.extend(dims.iter().cloned());
                    run(lib, KernelFamily::Reduce, &format!("{name}_{}", sfx(dt)), cfg, &p);
                    let op = if log {
                        NormOp::LogSoftmax { axis: 1, coerce_2d: false }
                    } else {
                        NormOp::Softmax { axis: 1, coerce_2d: false }
                    };
                    let (atol, rtol) = tol(dt);
                    check_close(
                        &format!("{name} {dt} n={n}"),
                        &lib.download(&dy).unwrap(),
                        &cpu(Op::Norm(op), &[&x]),
                        atol,
                        rtol,
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Norm

#[test]
fn layernorm_and_rmsnorm_match_cpu() {
    let Some(lib) = lib() else { return };
    let mut rng = Rng::new(4);
    for dt in [DType::F32, DType::F16] {
        let (atol, rtol) = tol(dt);
        for n in SIZES {
            let rows = 3;
            // A large mean against the spread checks the one-pass statistics.
            let x = rand_tensor(&mut rng, &[rows, n], 99.0, 101.0, dt);
            let scale = rand_tensor(&mut rng, &[n], 0.5, 1.5, dt);
            let bias = rand_tensor(&mut rng, &[n], -1.0, 1.0, dt);
            let (dx, ds, db) = (lib.upload(&x).unwrap(), lib.upload(&scale).unwrap(), lib.upload(&bias).unwrap());
            let dy = lib.zeros(dt, &[rows, n]).unwrap();
            let cfg = launch::per_row(rows as u64, n as u64);
            let p = [
                ptr(lib, &dx),
                ptr(lib, &ds),
                ptr(lib, &db),
                ptr(lib, &dy),
                Param::i64(rows as i64),
                Param::i64(n as i64),
                Param::f32(1e-5),
                Param::ptr(0),
                Param::ptr(0),
            ];
            run(lib, KernelFamily::Norm, &format!("layernorm_{}", sfx(dt)), cfg, &p);
            let op = NormOp::LayerNormalization { axis: -1, epsilon: 1e-5, stash_type: 1 };
            // n = 1 normalizes to exactly the bias; x - mean of f16 values near 100 loses bits.
            let want = cpu(Op::Norm(op), &[&x, &scale, &bias]);
            check_close(&format!("layernorm {dt} n={n}"), &lib.download(&dy).unwrap(), &want, atol * 10.0, rtol * 10.0);

            let x = rand_tensor(&mut rng, &[rows, n], -3.0, 3.0, dt);
            let dx = lib.upload(&x).unwrap();
            let p = [
                ptr(lib, &dx),
                ptr(lib, &ds),
                ptr(lib, &dy),
                Param::i64(rows as i64),
                Param::i64(n as i64),
                Param::f32(1e-6),
            ];
            run(lib, KernelFamily::Norm, &format!("rmsnorm_{}", sfx(dt)), cfg, &p);
            let op = NormOp::RMSNormalization { axis: -1, epsilon: 1e-6, stash_type: 1 };
            check_close(
                &format!("rmsnorm {dt} n={n}"),
                &lib.download(&dy).unwrap(),
                &cpu(Op::Norm(op), &[&x, &scale]),
                atol,
                rtol,
            );
        }
    }
}

/// Sizes for the two LayerNorm and RMSNorm paths: the odd sizes, BERT's 768, and the rows that
/// just fit and just miss a warp's registers (2048 and 2056 halves, 1024 and 1028 floats).
const ROW_SIZES: [usize; 10] = [1, 3, 50, 768, 783, 4096, 1024, 1028, 2048, 2056];

/// Uploads `t` at an offset of one element from the allocation (so not 16-byte aligned) when
/// `shift`; returns the buffer and the address to pass.
fn upload_at(lib: &KernelLibrary, t: &Tensor, shift: bool) -> (DeviceTensor, u64) {
    if !shift {
        let d = lib.upload(t).unwrap();
        let a = lib.addr(&d);
        return (d, a);
    }
    let mut v = vec![0.0f64];
    v.extend(t.to_f64_vec());
    let padded = Tensor::from_vec(vec![v.len()], v).unwrap().cast(t.dtype());
    let d = lib.upload(&padded).unwrap();
    let a = lib.addr(&d) + t.dtype().size() as u64;
    (d, a)
}

/// Downloads `shape` elements of `dt` written at `upload_at`'s offset.
fn download_at(lib: &KernelLibrary, d: &DeviceTensor, shape: &[usize], dt: DType, shift: bool) -> Tensor {
    let all = lib.download(d).unwrap().to_f64_vec();
    let skip = usize::from(shift);
    let n: usize = shape.iter().product();
    Tensor::from_vec(shape.to_vec(), all[skip..skip + n].to_vec()).unwrap().cast(dt)
}

#[test]
fn layernorm_and_rmsnorm_warp_and_block_paths_match_cpu() {
    let Some(lib) = lib() else { return };
    let mut rng = Rng::new(14);
    for dt in [DType::F32, DType::F16, DType::BF16] {
        let (atol, rtol) = tol(dt);
        for n in ROW_SIZES {
            // 37 rows: more than one block of warps, and not a multiple of the rows per block.
            let rows = 37;
            let fits = launch::warp_row_fits(n as u64, dt.size() as u64);
            let x = rand_tensor(&mut rng, &[rows, n], 99.0, 101.0, dt);
            let scale = rand_tensor(&mut rng, &[n], 0.5, 1.5, dt);
            let bias = rand_tensor(&mut rng, &[n], -1.0, 1.0, dt);
            // Every kernel and launch that may meet these rows: the block-per-row kernel, the
            // warp-per-row one as planned, and with a grid of 2 blocks of 2 warps, so each warp
            // strides over several rows.
            let mut launches = vec![("", launch::per_row(rows as u64, n as u64))];
            if fits {
                launches.push(("_warp", launch::warp_per_row(rows as u64)));
                launches.push(("_warp", kiln_cuda::driver::LaunchConfig::linear(2, 64)));
            }
            for (variant, cfg) in launches {
                for shift in [false, true] {
                    for with_bias in [true, false] {
                        let what = format!("layernorm{variant} {dt} n={n} shift={shift} bias={with_bias} {cfg:?}");
                        let (_dx, ax) = upload_at(lib, &x, shift);
                        let (_ds, as_) = upload_at(lib, &scale, shift);
                        let (_db, ab) = upload_at(lib, &bias, shift);
                        let zeros = Tensor::from_vec(vec![rows, n], vec![0.0f32; rows * n]).unwrap().cast(dt);
                        let (dy, ay) = upload_at(lib, &zeros, shift);
                        let (dm, di) =
                            (lib.zeros(DType::F32, &[rows]).unwrap(), lib.zeros(DType::F32, &[rows]).unwrap());
                        let p = [
                            Param::ptr(ax),
                            Param::ptr(as_),
                            Param::ptr(if with_bias { ab } else { 0 }),
                            Param::ptr(ay),
                            Param::i64(rows as i64),
                            Param::i64(n as i64),
                            Param::f32(1e-5),
                            ptr(lib, &dm),
                            ptr(lib, &di),
                        ];
                        run(lib, KernelFamily::Norm, &format!("layernorm{variant}_{}", sfx(dt)), cfg, &p);
                        let op = Op::Norm(NormOp::LayerNormalization { axis: -1, epsilon: 1e-5, stash_type: 1 });
                        let ins: Vec<Option<&Tensor>> = if with_bias {
                            vec![Some(&x), Some(&scale), Some(&bias)]
                        } else {
                            vec![Some(&x), Some(&scale)]
                        };
                        let want = eval_op(&op, &ins, 3).unwrap();
                        let got = download_at(lib, &dy, &[rows, n], dt, shift);
                        check_close(&what, &got, &want[0], atol * 10.0, rtol * 10.0);
                        // Mean and InvStdDev are f32 (stash_type 1), one per row.
                        let (gm, gi) =
                            (lib.download(&dm).unwrap().to_f64_vec(), lib.download(&di).unwrap().to_f64_vec());
                        let (wm, wi) = (want[1].to_f64_vec(), want[2].to_f64_vec());
                        for r in 0..rows {
                            // Inputs near 100 rounded to f16 or bf16: the mean is exact to f32
                            // rounding of a sum, the inverse deviation (about 1.7) to a few ulps.
                            assert!(
                                (gm[r] - wm[r]).abs() <= 1e-4 * wm[r].abs(),
                                "{what}: mean of row {r}: {} vs {}",
                                gm[r],
                                wm[r]
                            );
                            assert!(
                                (gi[r] - wi[r]).abs() <= 1e-3 * wi[r].abs() + 1e-3,
                                "{what}: invstd of row {r}: {} vs {}",
                                gi[r],
                                wi[r]
                            );
                        }
                    }
                    let what = format!("rmsnorm{variant} {dt} n={n} shift={shift} {cfg:?}");
                    let xr = rand_tensor(&mut rng, &[rows, n], -3.0, 3.0, dt);
                    let (_dx, ax) = upload_at(lib, &xr, shift);
                    let (_ds, as_) = upload_at(lib, &scale, shift);
                    let zeros = Tensor::from_vec(vec![rows, n], vec![0.0f32; rows * n]).unwrap().cast(dt);
                    let (dy, ay) = upload_at(lib, &zeros, shift);
                    let p = [
                        Param::ptr(ax),
                        Param::ptr(as_),
                        Param::ptr(ay),
                        Param::i64(rows as i64),
                        Param::i64(n as i64),
                        Param::f32(1e-6),
                    ];
                    run(lib, KernelFamily::Norm, &format!("rmsnorm{variant}_{}", sfx(dt)), cfg, &p);
                    let op = NormOp::RMSNormalization { axis: -1, epsilon: 1e-6, stash_type: 1 };
                    let want = cpu(Op::Norm(op), &[&xr, &scale]);
                    check_close(&what, &download_at(lib, &dy, &[rows, n], dt, shift), &want, atol, rtol);
                }
            }
        }
    }
}

#[test]
fn softmax_warp_path_matches_cpu() {
    let Some(lib) = lib() else { return };
    let mut rng = Rng::new(15);
    for dt in [DType::F32, DType::F16, DType::BF16] {
        let (atol, rtol) = tol(dt);
        for n in ROW_SIZES {
            if !launch::warp_row_fits(n as u64, dt.size() as u64) {
                continue;
            }
            let rows = 37;
            let x = rand_tensor(&mut rng, &[rows, n], -8.0, 8.0, dt);
            for cfg in [launch::warp_per_row(rows as u64), kiln_cuda::driver::LaunchConfig::linear(2, 64)] {
                for shift in [false, true] {
                    for (name, log) in [("softmax", false), ("logsoftmax", true)] {
                        let what = format!("{name}_warp {dt} n={n} shift={shift} {cfg:?}");
                        let (_dx, ax) = upload_at(lib, &x, shift);
                        let zeros = Tensor::from_vec(vec![rows, n], vec![0.0f32; rows * n]).unwrap().cast(dt);
                        let (dy, ay) = upload_at(lib, &zeros, shift);
                        let p = [Param::ptr(ax), Param::ptr(ay), Param::i64(rows as i64), Param::i64(n as i64)];
                        run(lib, KernelFamily::Reduce, &format!("{name}_warp_{}", sfx(dt)), cfg, &p);
                        let op = if log {
                            NormOp::LogSoftmax { axis: 1, coerce_2d: false }
                        } else {
                            NormOp::Softmax { axis: 1, coerce_2d: false }
                        };
                        let got = download_at(lib, &dy, &[rows, n], dt, shift);
                        check_close(&what, &got, &cpu(Op::Norm(op), &[&x]), atol, rtol);
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Layout

fn row_major(shape: &[usize]) -> Vec<i64> {
    let mut s = vec![0i64; shape.len()];
    let mut acc = 1i64;
    for d in (0..shape.len()).rev() {
        s[d] = acc;
        acc *= shape[d] as i64;
    }
    s
}

#[test]
fn layout_kernels_match_cpu() {
    let Some(lib) = lib() else { return };
    let mut rng = Rng::new(5);
    for dt in [DType::F32, DType::F16, DType::I64, DType::Bool] {
        let w = launch::width_suffix(dt.size()).unwrap();
        for n in SIZES {
            // Transpose of a random rank-4 shape holding about n elements, random permutation.
            let mut shape = vec![1usize, 1, 1, 1];
            let mut left = n;
            for d in 0..3 {
                let f = [1, 2, 3, 5, 7].into_iter().filter(|f| left % f == 0).nth(rng.below(2)).unwrap_or(1);
                shape[d] = f;
                left /= f;
            }
            shape[3] = left;
            let mut perm: Vec<usize> = vec![0, 1, 2, 3];
            for i in (1..4).rev() {
                perm.swap(i, rng.below(i + 1));
            }
            let x = rand_tensor(&mut rng, &shape, -5.0, 5.0, dt);
            let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
            let in_strides = row_major(&shape);
            let strides: Vec<i64> = perm.iter().map(|&p| in_strides[p]).collect();
            let (sp, rank) = launch::strided_param(&out_shape, &strides).unwrap();
            let (dx, dy) = (lib.upload(&x).unwrap(), lib.zeros(dt, &out_shape).unwrap());
            let p = [ptr(lib, &dx), ptr(lib, &dy), Param::i64(n as i64), Param::i32(rank), sp, Param::i64(0)];
            run(lib, KernelFamily::Layout, &format!("permute_{w}"), launch::grid_stride(n as u64), &p);
            let perm_i: Vec<i64> = perm.iter().map(|&p| p as i64).collect();
            let want = cpu(Op::Layout(LayoutOp::Transpose { perm: Some(perm_i) }), &[&x]);
            check_close(&format!("permute {dt} {shape:?} {perm:?}"), &lib.download(&dy).unwrap(), &want, 0.0, 0.0);

            // NCHW -> NHWC through the tiled transpose: [2, C, HW] -> [2, HW, C].
            let (c, hw) = (3usize, n);
            let x = rand_tensor(&mut rng, &[2, c, hw], -5.0, 5.0, dt);
            let (dx, dy) = (lib.upload(&x).unwrap(), lib.zeros(dt, &[2, hw, c]).unwrap());
            let p = [ptr(lib, &dx), ptr(lib, &dy), Param::i64(2), Param::i64(c as i64), Param::i64(hw as i64)];
            run(
                lib,
                KernelFamily::Layout,
                &format!("transpose2d_{w}"),
                launch::transpose2d(2, c as u64, hw as u64).unwrap(),
                &p,
            );
            let want = cpu(Op::Layout(LayoutOp::Transpose { perm: Some(vec![0, 2, 1]) }), &[&x]);
            check_close(&format!("transpose2d {dt} n={n}"), &lib.download(&dy).unwrap(), &want, 0.0, 0.0);

            // Concat along axis 1 of [2, a, 3] and [2, n, 3], one copy_rows launch each.
            let a = rand_tensor(&mut rng, &[2, 4, 3], -5.0, 5.0, dt);
            let b = rand_tensor(&mut rng, &[2, n, 3], -5.0, 5.0, dt);
            let total = 4 + n;
            let dy = lib.zeros(dt, &[2, total, 3]).unwrap();
            let mut off = 0i64;
            for t in [&a, &b] {
                let len = (t.shape()[1] * 3) as i64;
                let dt_in = lib.upload(t).unwrap();
                let p = [
                    ptr(lib, &dt_in),
                    ptr(lib, &dy),
                    Param::i64(2),
                    Param::i64(len),
                    Param::i64(len),
                    Param::i64(0),
                    Param::i64((total * 3) as i64),
                    Param::i64(off),
                ];
                run(lib, KernelFamily::Layout, &format!("copy_rows_{w}"), launch::grid_stride(2 * len as u64), &p);
                off += len;
            }
            let want = cpu(Op::Layout(LayoutOp::Concat { axis: 1 }), &[&a, &b]);
            check_close(&format!("concat {dt} n={n}"), &lib.download(&dy).unwrap(), &want, 0.0, 0.0);

            // Slice rows 1..3 and every second column from the last backwards: one permute
            // with an offset and a negative stride.
            let x = rand_tensor(&mut rng, &[3, n], -5.0, 5.0, dt);
            let cols = n.div_ceil(2);
            let (sp, rank) = launch::strided_param(&[2, cols], &[n as i64, -2]).unwrap();
            let (dx, dy) = (lib.upload(&x).unwrap(), lib.zeros(dt, &[2, cols]).unwrap());
            let offset = (n + n - 1) as i64;
            let p =
                [ptr(lib, &dx), ptr(lib, &dy), Param::i64((2 * cols) as i64), Param::i32(rank), sp, Param::i64(offset)];
            run(lib, KernelFamily::Layout, &format!("permute_{w}"), launch::grid_stride((2 * cols) as u64), &p);
            let ints = |v: &[i64]| Tensor::from_vec(vec![v.len()], v.to_vec()).unwrap();
            let (starts, ends, axes, steps) = (ints(&[1, -1]), ints(&[3, i64::MIN]), ints(&[0, 1]), ints(&[1, -2]));
            let want = cpu(Op::Layout(LayoutOp::Slice { attrs: None }), &[&x, &starts, &ends, &axes, &steps]);
            check_close(&format!("slice {dt} n={n}"), &lib.download(&dy).unwrap(), &want, 0.0, 0.0);

            // Split [2, n, 3] along axis 1 into [2, 1, 3] and [2, n - 1, 3], one copy_rows each.
            if n > 1 {
                let x = rand_tensor(&mut rng, &[2, n, 3], -5.0, 5.0, dt);
                let dx = lib.upload(&x).unwrap();
                let split = Op::Layout(LayoutOp::Split { axis: 1, split: Some(vec![1, n as i64 - 1]) });
                let want = eval_op(&split, &[Some(&x)], 2).unwrap();
                let mut off = 0i64;
                for part in &want {
                    let len = (part.shape()[1] * 3) as i64;
                    let dy = lib.zeros(dt, part.shape()).unwrap();
                    let p = [
                        ptr(lib, &dx),
                        ptr(lib, &dy),
                        Param::i64(2),
                        Param::i64(len),
                        Param::i64((n * 3) as i64),
                        Param::i64(off),
                        Param::i64(len),
                        Param::i64(0),
                    ];
                    run(lib, KernelFamily::Layout, &format!("copy_rows_{w}"), launch::grid_stride(2 * len as u64), &p);
                    check_close(&format!("split {dt} n={n} at {off}"), &lib.download(&dy).unwrap(), part, 0.0, 0.0);
                    off += len;
                }
            }

            // Gather along axis 1 with negative indices.
            let x = rand_tensor(&mut rng, &[3, n, 2], -5.0, 5.0, dt);
            let idx: Vec<i64> = (0..7).map(|_| rng.below(2 * n) as i64 - n as i64).collect();
            let it = Tensor::from_vec(vec![7], idx).unwrap();
            let (dx, di, dy) = (lib.upload(&x).unwrap(), lib.upload(&it).unwrap(), lib.zeros(dt, &[3, 7, 2]).unwrap());
            let err = lib.zeros(DType::I32, &[1]).unwrap();
            let p = [
                ptr(lib, &dx),
                ptr(lib, &di),
                ptr(lib, &dy),
                Param::i64(3),
                Param::i64(n as i64),
                Param::i64(7),
                Param::i64(2),
                ptr(lib, &err),
            ];
            run(lib, KernelFamily::Layout, &format!("gather_{w}"), launch::grid_stride(42), &p);
            let want = cpu(Op::Layout(LayoutOp::Gather { axis: 1 }), &[&x, &it]);
            check_close(&format!("gather {dt} n={n}"), &lib.download(&dy).unwrap(), &want, 0.0, 0.0);
            assert_eq!(lib.download(&err).unwrap().to_i64_vec(), vec![0], "gather flagged a valid index");

            // Pad [2, n] by (1, 2) before and (2, 1) after, every mode the input allows.
            let x = rand_tensor(&mut rng, &[2, n], -5.0, 5.0, dt);
            let dx = lib.upload(&x).unwrap();
            for (mode, code) in [(PadMode::Constant, 0), (PadMode::Reflect, 1), (PadMode::Edge, 2), (PadMode::Wrap, 3)]
            {
                if mode == PadMode::Reflect && n < 3 {
                    continue;
                }
                let out = [5usize, n + 3];
                let dy = lib.zeros(dt, &out).unwrap();
                let mut pa = vec![1i64; 24];
                pa[0] = 2;
                pa[1] = n as i64;
                pa[8] = 5;
                pa[9] = (n + 3) as i64;
                pa[16] = 1;
                pa[17] = 2;
                for d in 2..8 {
                    pa[16 + d] = 0;
                }
                let value = Tensor::scalar(0.5f32).cast(dt);
                let vb = kiln_cuda::host::tensor_bytes(&value).unwrap();
                let mut bits = [0u8; 8];
                bits[..vb.len()].copy_from_slice(&vb);
                let p = [
                    ptr(lib, &dx),
                    ptr(lib, &dy),
                    Param::i64((5 * (n + 3)) as i64),
                    Param::i32(2),
                    Param::i64s(&pa),
                    Param::i32(code),
                    Param::u64(u64::from_le_bytes(bits)),
                ];
                run(lib, KernelFamily::Layout, &format!("pad_{w}"), launch::grid_stride((5 * (n + 3)) as u64), &p);
                let op = LayoutOp::Pad { mode, pads: Some(vec![1, 2, 2, 1]), value: 0.5 };
                let want = cpu(Op::Layout(op), &[&x]);
                check_close(&format!("pad {mode:?} {dt} n={n}"), &lib.download(&dy).unwrap(), &want, 0.0, 0.0);
            }
        }
    }
}

#[test]
fn gather_rows_copies_vectors_and_falls_back_when_unaligned() {
    let Some(lib) = lib() else { return };
    let mut rng = Rng::new(16);
    // [outer, axis_len, inner] tables whose rows are whole 16-byte vectors in both types.
    for dt in [DType::F32, DType::F16] {
        let w = launch::width_suffix(dt.size()).unwrap();
        for (outer, axis_len, inner) in [(1usize, 30522usize, 768usize), (1, 50, 8), (3, 7, 16), (2, 783, 64)] {
            let x = rand_tensor(&mut rng, &[outer, axis_len, inner], -5.0, 5.0, dt);
            let nidx = 50;
            let idx: Vec<i64> = (0..nidx).map(|_| rng.below(2 * axis_len) as i64 - axis_len as i64).collect();
            let it = Tensor::from_vec(vec![nidx], idx.clone()).unwrap();
            let want = cpu(Op::Layout(LayoutOp::Gather { axis: 1 }), &[&x, &it]);
            let vectors = (outer * nidx * inner * dt.size() / 16) as u64;
            for cfg in [launch::grid_stride(vectors), kiln_cuda::driver::LaunchConfig::linear(1, 32)] {
                for shift in [false, true] {
                    let what = format!("gather_rows_{w} [{outer},{axis_len},{inner}] shift={shift} {cfg:?}");
                    let (_dx, ax) = upload_at(lib, &x, shift);
                    let di = lib.upload(&it).unwrap();
                    let zeros = Tensor::from_vec(vec![outer * nidx * inner], vec![0.0f32; outer * nidx * inner])
                        .unwrap()
                        .cast(dt);
                    let (dy, ay) = upload_at(lib, &zeros, shift);
                    let err = lib.zeros(DType::I32, &[1]).unwrap();
                    let p = [
                        Param::ptr(ax),
                        ptr(lib, &di),
                        Param::ptr(ay),
                        Param::i64(outer as i64),
                        Param::i64(axis_len as i64),
                        Param::i64(nidx as i64),
                        Param::i64(inner as i64),
                        ptr(lib, &err),
                    ];
                    run(lib, KernelFamily::Layout, &format!("gather_rows_{w}"), cfg, &p);
                    let got = download_at(lib, &dy, &[outer, nidx, inner], dt, shift);
                    check_close(&what, &got, &want, 0.0, 0.0);
                    assert_eq!(lib.download(&err).unwrap().to_i64_vec(), vec![0], "{what}: flagged a valid index");
                }
            }
            // An index past the end writes zeros in its row and sets the flag.
            let mut bad = idx.clone();
            bad[nidx / 2] = axis_len as i64;
            let bt = Tensor::from_vec(vec![nidx], bad).unwrap();
            let (dx, di) = (lib.upload(&x).unwrap(), lib.upload(&bt).unwrap());
            let dy = lib.zeros(dt, &[outer, nidx, inner]).unwrap();
            let err = lib.zeros(DType::I32, &[1]).unwrap();
            let p = [
                ptr(lib, &dx),
                ptr(lib, &di),
                ptr(lib, &dy),
                Param::i64(outer as i64),
                Param::i64(axis_len as i64),
                Param::i64(nidx as i64),
                Param::i64(inner as i64),
                ptr(lib, &err),
            ];
            run(lib, KernelFamily::Layout, &format!("gather_rows_{w}"), launch::grid_stride(vectors), &p);
            assert_eq!(lib.download(&err).unwrap().to_i64_vec(), vec![1], "gather_rows_{w}: missed a bad index");
            let got = lib.download(&dy).unwrap().to_f64_vec();
            let want = want.to_f64_vec();
            for o in 0..outer {
                for j in 0..nidx {
                    let row = &got[(o * nidx + j) * inner..(o * nidx + j + 1) * inner];
                    if j == nidx / 2 {
                        assert!(row.iter().all(|&v| v == 0.0), "gather_rows_{w}: the bad row is not zero");
                    } else {
                        assert_eq!(row, &want[(o * nidx + j) * inner..(o * nidx + j + 1) * inner]);
                    }
                }
            }
        }
    }
}

#[test]
fn cast_and_where_kernels_match_cpu() {
    let Some(lib) = lib() else { return };
    let mut rng = Rng::new(6);
    let pairs = [
        (DType::F32, DType::F16),
        (DType::F16, DType::F32),
        (DType::F32, DType::BF16),
        (DType::F32, DType::I32),
        (DType::I64, DType::F32),
        (DType::F32, DType::Bool),
        (DType::Bool, DType::F16),
        (DType::F16, DType::I64),
    ];
    for n in SIZES {
        for (from, to) in pairs {
            let x = rand_tensor(&mut rng, &[n], -300.0, 300.0, from);
            let (dx, dy) = (lib.upload(&x).unwrap(), lib.zeros(to, &[n]).unwrap());
            let p = [ptr(lib, &dx), ptr(lib, &dy), Param::i64(n as i64)];
            run(
                lib,
                KernelFamily::Layout,
                &format!("cast_{}_{}", sfx(from), sfx(to)),
                launch::grid_stride(n as u64),
                &p,
            );
            let want = cpu(Op::Elementwise(ElementwiseOp::Cast { to, saturate: true }), &[&x]);
            check_close(&format!("cast {from}->{to} n={n}"), &lib.download(&dy).unwrap(), &want, 0.0, 0.0);
        }
        // Where: cond [n, 1], a [1, 3], b [n, 3].
        let c = Tensor::from_vec(vec![n, 1], (0..n).map(|_| rng.below(2) == 0).collect::<Vec<bool>>()).unwrap();
        let a = rand_tensor(&mut rng, &[1, 3], -1.0, 1.0, DType::F32);
        let b = rand_tensor(&mut rng, &[n, 3], -1.0, 1.0, DType::F32);
        let out = [n, 3];
        let mut s = vec![1i64; 32];
        for (k, t) in [&c, &a, &b].iter().enumerate() {
            let st = broadcast_strides(t.shape(), &out).unwrap();
            for d in 0..8 {
                s[8 * (k + 1) + d] = *st.get(d).unwrap_or(&0);
            }
        }
        s[0] = n as i64;
        s[1] = 3;
        for d in 2..8 {
            s[d] = 1;
        }
        let (dc, da, db, dy) = (
            lib.upload(&c).unwrap(),
            lib.upload(&a).unwrap(),
            lib.upload(&b).unwrap(),
            lib.zeros(DType::F32, &out).unwrap(),
        );
        let p = [
            ptr(lib, &dc),
            ptr(lib, &da),
            ptr(lib, &db),
            ptr(lib, &dy),
            Param::i64((3 * n) as i64),
            Param::i32(2),
            Param::i64s(&s),
        ];
        run(lib, KernelFamily::Layout, "where_u32", launch::grid_stride(3 * n as u64), &p);
        let want = cpu(Op::Elementwise(ElementwiseOp::Where), &[&c, &a, &b]);
        check_close(&format!("where n={n}"), &lib.download(&dy).unwrap(), &want, 0.0, 0.0);
    }
}

// ---------------------------------------------------------------------------------------------
// Pool

#[test]
fn pooling_matches_cpu() {
    let Some(lib) = lib() else { return };
    let mut rng = Rng::new(7);
    for dt in [DType::F32, DType::F16] {
        let (atol, rtol) = tol(dt);
        for (h, w) in [(1usize, 1usize), (3, 1), (5, 10), (27, 29), (64, 64)] {
            for ceil_mode in [false, true] {
                let shape = [2usize, 3, h, w];
                let x = rand_tensor(&mut rng, &shape, -4.0, 4.0, dt);
                let window = PoolWindow {
                    kernel_shape: vec![3, 3],
                    strides: vec![2, 2],
                    pads: vec![1, 1, 1, 1],
                    auto_pad: AutoPad::NotSet,
                    dilations: vec![1, 1],
                    ceil_mode,
                };
                let dims = window.dims(&[h, w]).unwrap();
                let (oh, ow) = (dims[0].output, dims[1].output);
                for (max, include) in [(true, false), (false, false), (false, true)] {
                    let args = PoolArgs {
                        planes: 6,
                        ih: h as i64,
                        iw: w as i64,
                        oh: oh as i64,
                        ow: ow as i64,
                        kh: 3,
                        kw: 3,
                        sh: 2,
                        sw: 2,
                        dh: 1,
                        dw: 1,
                        ph0: 1,
                        pw0: 1,
                        ph1: 1,
                        pw1: 1,
                        count_include_pad: include,
                    };
                    let (dx, dy) = (lib.upload(&x).unwrap(), lib.zeros(dt, &[2, 3, oh, ow]).unwrap());
                    let kname = format!("{}_{}", if max { "maxpool2d" } else { "avgpool2d" }, sfx(dt));
                    run(
                        lib,
                        KernelFamily::Pool,
                        &kname,
                        launch::grid_stride((6 * oh * ow) as u64),
                        &[ptr(lib, &dx), ptr(lib, &dy), args.param()],
                    );
                    let op = if max {
                        PoolOp::MaxPool { window: window.clone(), column_major: false }
                    } else {
                        PoolOp::AveragePool { window: window.clone(), count_include_pad: include }
                    };
                    let want = cpu(Op::Pool(op), &[&x]);
                    check_close(
                        &format!("{kname} {h}x{w} ceil={ceil_mode} pad={include}"),
                        &lib.download(&dy).unwrap(),
                        &want,
                        atol,
                        rtol,
                    );
                }
            }
        }
        for hw in SIZES {
            let x = rand_tensor(&mut rng, &[2, 3, hw, 1], -4.0, 4.0, dt);
            for (name, op) in [("globalmaxpool", PoolOp::GlobalMaxPool), ("globalavgpool", PoolOp::GlobalAveragePool)] {
                let (dx, dy) = (lib.upload(&x).unwrap(), lib.zeros(dt, &[2, 3, 1, 1]).unwrap());
                let p = [ptr(lib, &dx), ptr(lib, &dy), Param::i64(6), Param::i64(hw as i64)];
                run(lib, KernelFamily::Pool, &format!("{name}_{}", sfx(dt)), launch::per_row(6, hw as u64), &p);
                check_close(
                    &format!("{name} {dt} hw={hw}"),
                    &lib.download(&dy).unwrap(),
                    &cpu(Op::Pool(op), &[&x]),
                    atol,
                    rtol,
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Resize

#[test]
fn resize_matches_cpu() {
    let Some(lib) = lib() else { return };
    let mut rng = Rng::new(8);
    let coords = [
        (CoordTransform::HalfPixel, 0),
        (CoordTransform::Asymmetric, 1),
        (CoordTransform::AlignCorners, 2),
        (CoordTransform::PytorchHalfPixel, 3),
        (CoordTransform::HalfPixelSymmetric, 4),
    ];
    let nearest = [
        (NearestMode::RoundPreferFloor, 0),
        (NearestMode::RoundPreferCeil, 1),
        (NearestMode::Floor, 2),
        (NearestMode::Ceil, 3),
    ];
    for dt in [DType::F32, DType::F16] {
        let (atol, rtol) = tol(dt);
        for (h, w, sh, sw) in
            [(1usize, 1usize, 2.0f32, 3.0f32), (3, 5, 0.5, 1.5), (7, 50, 2.0, 0.5), (27, 29, 1.7, 2.3)]
        {
            let x = rand_tensor(&mut rng, &[1, 2, h, w], -4.0, 4.0, dt);
            let (oh, ow) = ((sh as f64 * h as f64) as usize, (sw as f64 * w as f64) as usize);
            if oh == 0 || ow == 0 {
                continue;
            }
            for (ctm, code) in coords {
                for (linear, (nm, ncode)) in
                    [(true, nearest[0])].into_iter().chain(nearest.into_iter().map(|n| (false, n)))
                {
                    let attrs = ResizeAttrs {
                        mode: if linear { ResizeMode::Linear } else { ResizeMode::Nearest },
                        coordinate_transformation_mode: ctm,
                        nearest_mode: nm,
                        cubic_coeff_a: -0.75,
                        exclude_outside: false,
                        extrapolation_value: 0.0,
                        antialias: false,
                        axes: None,
                        keep_aspect_ratio_policy: AspectRatioPolicy::Stretch,
                        inputs: ResizeInputs::Attr(vec![1.0, 1.0, sh, sw]),
                    };
                    let args = ResizeArgs {
                        planes: 2,
                        ih: h as i64,
                        iw: w as i64,
                        oh: oh as i64,
                        ow: ow as i64,
                        scale_h: sh as f64,
                        scale_w: sw as f64,
                        coord_mode: code,
                        nearest_mode: ncode,
                    };
                    let (dx, dy) = (lib.upload(&x).unwrap(), lib.zeros(dt, &[1, 2, oh, ow]).unwrap());
                    let kname = format!("{}_{}", if linear { "resize_linear" } else { "resize_nearest" }, sfx(dt));
                    run(
                        lib,
                        KernelFamily::Resize,
                        &kname,
                        launch::grid_stride((2 * oh * ow) as u64),
                        &[ptr(lib, &dx), ptr(lib, &dy), args.param()],
                    );
                    let want = cpu(Op::Spatial(SpatialOp::Resize(attrs)), &[&x]);
                    check_close(
                        &format!("{kname} {ctm:?} {nm:?} {h}x{w}"),
                        &lib.download(&dy).unwrap(),
                        &want,
                        atol,
                        rtol,
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Attention

fn attention_attrs() -> AttentionAttrs {
    AttentionAttrs {
        q_num_heads: None,
        kv_num_heads: None,
        is_causal: false,
        scale: None,
        softcap: 0.0,
        qk_matmul_output_mode: QkOutputMode::Scores,
        softmax_precision: None,
    }
}

#[test]
fn attention_matches_cpu() {
    let Some(lib) = lib() else { return };
    let mut rng = Rng::new(9);
    let (b, h) = (2usize, 2usize);
    for dt in [DType::F16, DType::F32] {
        for d in kiln_cuda::kernels::ATTENTION_HEAD_SIZES {
            for s in [1usize, 3, 50, 783] {
                for mask_kind in [0, 1, 2] {
                    let shape = [b, h, s, d];
                    let q = rand_tensor(&mut rng, &shape, -1.0, 1.0, dt);
                    let k = rand_tensor(&mut rng, &shape, -1.0, 1.0, dt);
                    let v = rand_tensor(&mut rng, &shape, -1.0, 1.0, dt);
                    // 0: none; 1: key padding [B, 1, 1, S]; 2: full [B, H, S, S].
                    let mask = match mask_kind {
                        1 => Some(
                            Tensor::from_vec(
                                vec![b, 1, 1, s],
                                (0..b * s)
                                    .map(|i| if i % s == s - 1 && s > 1 { f32::NEG_INFINITY } else { 0.0 })
                                    .collect::<Vec<f32>>(),
                            )
                            .unwrap()
                            .cast(dt),
                        ),
                        2 => Some(rand_tensor(&mut rng, &[b, h, s, s], -2.0, 2.0, dt)),
                        _ => None,
                    };
                    let (dq, dk, dv) = (lib.upload(&q).unwrap(), lib.upload(&k).unwrap(), lib.upload(&v).unwrap());
                    let dm = mask.as_ref().map(|m| lib.upload(m).unwrap());
                    let dy = lib.zeros(dt, &shape).unwrap();
                    let st = AttnStrides::bhsd(h, s, d);
                    let mask_strides = match mask_kind {
                        1 => [s as i64, 0, 0, 1],
                        2 => [(h * s * s) as i64, (s * s) as i64, s as i64, 1],
                        _ => [0; 4],
                    };
                    let scale = 1.0 / (d as f32).sqrt();
                    let mut args = AttnArgs::new(b, h, s, s, d, d, [st; 4], scale);
                    args.ptrs = [
                        lib.addr(&dq),
                        lib.addr(&dk),
                        lib.addr(&dv),
                        lib.addr(&dy),
                        dm.as_ref().map_or(0, |m| lib.addr(m)),
                        0,
                    ];
                    args.mask = mask_strides;
                    let (kname, cfg) = args.launch(sfx(dt)).unwrap();
                    run(lib, KernelFamily::Attention, &kname, cfg, &[args.param()]);
                    let mut ins = vec![&q, &k, &v];
                    if let Some(m) = &mask {
                        ins.push(m);
                    }
                    let want = cpu(Op::Attention(AttentionOp::Attention(attention_attrs())), &ins);
                    let (atol, rtol) = if dt == DType::F16 { (4e-3, 1e-2) } else { (2e-5, 1e-4) };
                    check_close(
                        &format!("{kname} s={s} mask={mask_kind}"),
                        &lib.download(&dy).unwrap(),
                        &want,
                        atol,
                        rtol,
                    );
                }
            }
        }
    }
}

#[test]
fn packed_attention_reads_qkv_in_place() {
    let Some(lib) = lib() else { return };
    let mut rng = Rng::new(10);
    let (b, h, d) = (2usize, 3usize, 64usize);
    for s in [1usize, 3, 50, 783] {
        let width = 3 * h * d;
        let qkv = rand_tensor(&mut rng, &[b, s, width], -1.0, 1.0, DType::F16);
        let mask = Tensor::from_vec(
            vec![b, 1, 1, s],
            (0..b * s).map(|i| if i % 3 == 2 { -1e4f32 } else { 0.0 }).collect::<Vec<f32>>(),
        )
        .unwrap()
        .cast(DType::F16);
        let (dx, dm, dy) =
            (lib.upload(&qkv).unwrap(), lib.upload(&mask).unwrap(), lib.zeros(DType::F16, &[b, s, h * d]).unwrap());
        let base = lib.addr(&dx);
        let st = AttnStrides::bshd(h, s, d, width);
        let scale = 0.125f32;
        let mut args = AttnArgs::new(b, h, s, s, d, d, [st, st, st, AttnStrides::bshd(h, s, d, h * d)], scale);
        args.ptrs = [base, base + (h * d * 2) as u64, base + (2 * h * d * 2) as u64, lib.addr(&dy), lib.addr(&dm), 0];
        args.mask = [s as i64, 0, 0, 1];
        let (kname, cfg) = args.launch("f16").unwrap();
        run(lib, KernelFamily::Attention, &kname, cfg, &[args.param()]);
        let want = cpu(Op::Fused(FusedOp::PackedAttention { num_heads: h, scale }), &[&qkv, &mask]);
        check_close(&format!("packed attention s={s}"), &lib.download(&dy).unwrap(), &want, 4e-3, 1e-2);
    }
}

// ---------------------------------------------------------------------------------------------
// Resources

/// Every kernel of every family loads, and can be launched with the largest block the launch
/// helpers use; prints registers, local memory (spills) and shared memory per kernel.
#[test]
fn every_kernel_loads_and_fits_its_launch() {
    let Some(lib) = lib() else { return };
    let largest = launch::ROW_THREADS.max(launch::THREADS as u64) as i32;
    let mut report = vec![];
    let mut too_big = vec![];
    for fam in KernelFamily::ALL {
        for name in fam.kernels() {
            let (_m, k) = lib.kernel(fam, &name).unwrap_or_else(|e| panic!("{name}: {e}"));
            let r = lib.gpu().resources(k).unwrap();
            report.push(format!(
                "{name:32} regs {:3} local {:5} shared {:6} max_threads {}",
                r.registers, r.local_bytes, r.shared_bytes, r.max_threads
            ));
            // The tensor-core attention kernels launch with the fixed blocks they are built for.
            let launched = match name.as_str() {
                n if n.starts_with("attention_mma_w1_") || n.starts_with("attention_mma_q_w1_") => 32,
                n if n.starts_with("attention_mma_") => 128,
                _ => largest,
            };
            if r.max_threads < launched {
                too_big.push(format!("{name}: at most {} threads, launched with {launched}", r.max_threads));
            }
        }
    }
    eprintln!("{}", report.join("\n"));
    assert!(too_big.is_empty(), "{}", too_big.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Plans

/// A graph of kernel-only nodes: LayerNorm, a fused GELU, an embedding Gather, Concat,
/// Softmax, a reshape (a view), Transpose and ReduceSum; with its inputs.
fn kernel_graph(rng: &mut Rng, dt: DType, n: usize) -> (kiln_ir::Graph, Vec<Tensor>) {
    use kiln_ir::{Graph, TypeInfo, Value, ValueInfo};
    let mut g = Graph::new("kernels");
    let x = g.add_input("x", TypeInfo::known(dt, &[3, n]));
    let ids = g.add_input("ids", TypeInfo::known(DType::I64, &[4]));
    let scale = g.add_const("scale", rand_tensor(rng, &[n], 0.5, 1.5, dt));
    let bias = g.add_const("bias", rand_tensor(rng, &[n], -1.0, 1.0, dt));
    let table = g.add_const("table", rand_tensor(rng, &[7, n], -1.0, 1.0, dt));
    let add = |g: &mut Graph, name: &str, op: Op, ins: &[Option<Value>], shape: &[usize]| {
        let id = g.add_node(name, op, ins, vec![ValueInfo::tensor(name, TypeInfo::known(dt, shape))]);
        Value { node: id, slot: 0 }
    };
    let ln = Op::Norm(NormOp::LayerNormalization { axis: -1, epsilon: 1e-5, stash_type: 1 });
    let h = add(&mut g, "ln", ln, &[Some(x), Some(scale), Some(bias)], &[3, n]);
    let gelu = Op::Fused(FusedOp::Elementwise(Expr::op(ElementwiseOp::Unary(UnaryOp::Gelu { tanh: false }), 1)));
    let h = add(&mut g, "gelu", gelu, &[Some(h)], &[3, n]);
    let emb = add(&mut g, "embed", Op::Layout(LayoutOp::Gather { axis: 0 }), &[Some(table), Some(ids)], &[4, n]);
    let cat = add(&mut g, "cat", Op::Layout(LayoutOp::Concat { axis: 0 }), &[Some(h), Some(emb)], &[7, n]);
    let sm = add(&mut g, "softmax", Op::Norm(NormOp::Softmax { axis: -1, coerce_2d: false }), &[Some(cat)], &[7, n]);
    let flat = Op::Layout(LayoutOp::Reshape { shape: Some(vec![7, 1, n as i64]), allowzero: false });
    let v = add(&mut g, "view", flat, &[Some(sm)], &[7, 1, n]);
    let t = add(&mut g, "t", Op::Layout(LayoutOp::Transpose { perm: Some(vec![2, 1, 0]) }), &[Some(v)], &[n, 1, 7]);
    let sum = ReduceOp::Reduce {
        reducer: Reducer::Sum,
        axes: Some(vec![0, 1]),
        keepdims: false,
        noop_with_empty_axes: false,
    };
    let s = add(&mut g, "sum", Op::Reduce(sum), &[Some(t)], &[7]);
    g.add_output("t", t);
    g.add_output("sum", s);
    let xin = rand_tensor(rng, &[3, n], -3.0, 3.0, dt);
    let idx = Tensor::from_vec(vec![4], vec![0i64, 6, -1, 3]).unwrap();
    (g, vec![xin, idx])
}

/// [`kernel_graph`] planned and run on the GPU, against the CPU executor on the same graph.
#[test]
fn kernel_only_plan_matches_the_cpu_executor() {
    use kiln_ir::{Graph, TypeInfo, Value, ValueInfo};
    let Some(lib) = lib() else { return };
    let mut rng = Rng::new(11);
    for dt in [DType::F32, DType::F16] {
        for n in SIZES {
            let (g, inputs) = kernel_graph(&mut rng, dt, n);
            let plan = kiln_cuda::plan::plan(&g).unwrap_or_else(|e| panic!("{e}"));
            let got = lib.run_plan(&plan, &inputs).unwrap_or_else(|e| panic!("{e}"));
            let want = kiln_cpu::run_graph(&g, &inputs).unwrap();
            let (atol, rtol) = tol(dt);
            check_close(&format!("plan transpose {dt} n={n}"), &got[0], &want[0], atol, rtol);
            // Sums of n softmax outputs, each rounded.
            check_close(&format!("plan sum {dt} n={n}"), &got[1], &want[1], atol * 4.0, rtol * 4.0);
        }
    }
    // An index out of range is an error, not garbage.
    let mut g = Graph::new("bad gather");
    let ids = g.add_input("ids", TypeInfo::known(DType::I64, &[1]));
    let table = g.add_const("table", rand_tensor(&mut rng, &[3, 2], -1.0, 1.0, DType::F32));
    let out = vec![ValueInfo::tensor("e", TypeInfo::known(DType::F32, &[1, 2]))];
    let id = g.add_node("embed", Op::Layout(LayoutOp::Gather { axis: 0 }), &[Some(table), Some(ids)], out);
    g.add_output("e", Value { node: id, slot: 0 });
    let plan = kiln_cuda::plan::plan(&g).unwrap();
    let err = lib.run_plan(&plan, &[Tensor::from_vec(vec![1], vec![3i64]).unwrap()]).unwrap_err();
    assert_eq!(err.to_string(), "Gather embed: an index is outside [-3, 3)");
}

/// The planner's kernel-only lowerings (pooling, Slice, Pad, Split, Where, Cast, Expand, Tile,
/// Resize), planned from one-node graphs and run through `run_plan`, against the CPU executor.
#[test]
fn planned_data_ops_match_the_cpu_executor() {
    let Some(lib) = lib() else { return };
    let mut rng = Rng::new(12);
    for dt in [DType::F32, DType::F16] {
        let (atol, rtol) = tol(dt);
        for n in [1usize, 3, 50, 783] {
            // Pooling: 2-D with ceil_mode and padding, 1-D, global.
            let x = rand_tensor(&mut rng, &[2, 3, n, 5], -4.0, 4.0, dt);
            let window = |k: Vec<usize>, s: Vec<usize>, p: Vec<usize>, ceil_mode: bool| PoolWindow {
                dilations: vec![1; k.len()],
                kernel_shape: k,
                strides: s,
                pads: p,
                auto_pad: AutoPad::NotSet,
                ceil_mode,
            };
            let w2 = window(vec![3, 3], vec![2, 1], vec![1, 1, 1, 1], true);
            for (name, op) in [
                ("maxpool", PoolOp::MaxPool { window: w2.clone(), column_major: false }),
                ("avgpool", PoolOp::AveragePool { window: w2.clone(), count_include_pad: false }),
                ("avgpool pad", PoolOp::AveragePool { window: w2.clone(), count_include_pad: true }),
                ("globalavgpool", PoolOp::GlobalAveragePool),
                ("globalmaxpool", PoolOp::GlobalMaxPool),
            ] {
                let (g, ins) = one_node(Op::Pool(op), &[&x], &[], 1);
                plan_matches(lib, &format!("{name} {dt} n={n}"), &g, &ins, atol, rtol);
            }
            let x1 = rand_tensor(&mut rng, &[2, 3, n], -4.0, 4.0, dt);
            let w1 = window(vec![2], vec![1], vec![1, 0], false);
            let (g, ins) = one_node(Op::Pool(PoolOp::MaxPool { window: w1, column_major: false }), &[&x1], &[], 1);
            plan_matches(lib, &format!("maxpool1d {dt} n={n}"), &g, &ins, atol, rtol);

            // Slice: backwards by two over rows, forwards by three over columns.
            let x = rand_tensor(&mut rng, &[3, n, 7], -5.0, 5.0, dt);
            let slice = Op::Layout(LayoutOp::Slice { attrs: None });
            let c = [ints(&[-1, 1]), ints(&[i64::MIN, 100]), ints(&[1, 2]), ints(&[-2, 3])];
            let (g, ins) = one_node(slice, &[&x], &c, 1);
            plan_matches(lib, &format!("slice {dt} n={n}"), &g, &ins, 0.0, 0.0);

            // Pad, every mode, pads from constant inputs, one negative (a crop).
            let x = rand_tensor(&mut rng, &[2, n, 4], -5.0, 5.0, dt);
            for mode in [PadMode::Constant, PadMode::Reflect, PadMode::Edge, PadMode::Wrap] {
                if mode == PadMode::Reflect && n < 3 {
                    continue;
                }
                let op = Op::Layout(LayoutOp::Pad { mode, pads: None, value: 0.0 });
                let value = Some(Tensor::scalar(0.5f32).cast(dt));
                let (g, ins) = one_node(op, &[&x], &[ints(&[0, 2, 1, 1, 1, -1]), value], 1);
                plan_matches(lib, &format!("pad {mode:?} {dt} n={n}"), &g, &ins, 0.0, 0.0);
            }

            // Split into uneven pieces along the middle axis, and equal ones along the last.
            let x = rand_tensor(&mut rng, &[2, n, 3], -5.0, 5.0, dt);
            if n > 1 {
                let op = Op::Layout(LayoutOp::Split { axis: 1, split: Some(vec![1, n as i64 - 1]) });
                let (g, ins) = one_node(op, &[&x], &[], 2);
                plan_matches(lib, &format!("split {dt} n={n}"), &g, &ins, 0.0, 0.0);
            }
            let (g, ins) = one_node(Op::Layout(LayoutOp::Split { axis: -1, split: None }), &[&x], &[], 3);
            plan_matches(lib, &format!("split equal {dt} n={n}"), &g, &ins, 0.0, 0.0);

            // Where with broadcast operands, and Cast both ways.
            let c = Tensor::from_vec(vec![n, 1], (0..n).map(|_| rng.below(2) == 0).collect::<Vec<bool>>()).unwrap();
            let a = rand_tensor(&mut rng, &[1, 3], -1.0, 1.0, dt);
            let b = rand_tensor(&mut rng, &[n, 3], -1.0, 1.0, dt);
            let (g, ins) = one_node(Op::Elementwise(ElementwiseOp::Where), &[&c, &a, &b], &[], 1);
            plan_matches(lib, &format!("where {dt} n={n}"), &g, &ins, 0.0, 0.0);
            for to in [DType::F32, DType::F16, DType::I32] {
                let x = rand_tensor(&mut rng, &[n, 3], -300.0, 300.0, dt);
                let (g, ins) = one_node(Op::Elementwise(ElementwiseOp::Cast { to, saturate: true }), &[&x], &[], 1);
                plan_matches(lib, &format!("cast {dt}->{to} n={n}"), &g, &ins, 0.0, 0.0);
            }

            // Expand a column over a batch, and Tile.
            let x = rand_tensor(&mut rng, &[n, 1], -5.0, 5.0, dt);
            let (g, ins) = one_node(Op::Layout(LayoutOp::Expand), &[&x], &[ints(&[2, 1, 3])], 1);
            plan_matches(lib, &format!("expand {dt} n={n}"), &g, &ins, 0.0, 0.0);
            let x = rand_tensor(&mut rng, &[n, 2], -5.0, 5.0, dt);
            let (g, ins) = one_node(Op::Layout(LayoutOp::Tile), &[&x], &[ints(&[2, 3])], 1);
            plan_matches(lib, &format!("tile {dt} n={n}"), &g, &ins, 0.0, 0.0);

            // Resize from constant scales (linear) and sizes (nearest).
            let x = rand_tensor(&mut rng, &[1, 2, n, 5], -4.0, 4.0, dt);
            let attrs = |mode: ResizeMode, ctm: CoordTransform, nm: NearestMode| ResizeAttrs {
                mode,
                coordinate_transformation_mode: ctm,
                nearest_mode: nm,
                cubic_coeff_a: -0.75,
                exclude_outside: false,
                extrapolation_value: 0.0,
                antialias: false,
                axes: None,
                keep_aspect_ratio_policy: AspectRatioPolicy::Stretch,
                inputs: ResizeInputs::RoiScalesSizes,
            };
            let scales = Some(Tensor::from_vec(vec![4], vec![1.0f32, 1.0, 2.0, 0.6]).unwrap());
            let op = Op::Spatial(SpatialOp::Resize(attrs(
                ResizeMode::Linear,
                CoordTransform::HalfPixel,
                NearestMode::RoundPreferFloor,
            )));
            let (g, ins) = one_node(op, &[&x], &[None, scales], 1);
            plan_matches(lib, &format!("resize linear {dt} n={n}"), &g, &ins, atol, rtol);
            let op = Op::Spatial(SpatialOp::Resize(attrs(
                ResizeMode::Nearest,
                CoordTransform::Asymmetric,
                NearestMode::Floor,
            )));
            let (g, ins) = one_node(op, &[&x], &[None, None, ints(&[1, 2, 2 * n as i64 + 1, 3])], 1);
            plan_matches(lib, &format!("resize nearest {dt} n={n}"), &g, &ins, 0.0, 0.0);
        }
    }
}

/// The depthwise convolution of FP16 and BF16 channels-last plans (a generated direct kernel
/// with its bias and ReLU or Clip fused, or none), planned from one-node graphs: the vector
/// kernel where the channels are a multiple of 8 (strides 1 and 2, pads even and not, output
/// widths 7, 13, 112 that are not all multiples of its 4 columns), else the scalar one.
#[test]
fn depthwise_channels_last_matches_the_cpu_executor() {
    use kiln_ir::ops::linalg::{ConvAttrs, LinalgOp};
    // The kernel choice is checked with or without a GPU, the results with one.
    let lib = lib();
    let mut rng = Rng::new(5);
    // (dtype, batch, channels, input size, stride, ONNX pads [h0, w0, h1, w1], epilogue, bias);
    // epilogue 0: none, 1: ReLU, 2: Clip(0, 6).
    let cases: [(DType, usize, usize, usize, usize, [usize; 4], u8, bool); 15] = [
        (DType::F16, 2, 8, 9, 1, [1, 1, 1, 1], 2, true),
        (DType::F16, 2, 3, 7, 2, [0, 0, 1, 1], 2, true),
        (DType::F16, 2, 50, 12, 2, [1, 1, 1, 1], 2, true),
        (DType::F16, 2, 16, 13, 1, [1, 1, 1, 1], 1, true),
        (DType::F16, 2, 96, 7, 1, [1, 1, 1, 1], 2, false),
        (DType::F16, 2, 144, 14, 2, [0, 0, 1, 1], 2, true),
        (DType::F16, 2, 144, 13, 2, [1, 1, 1, 1], 0, true),
        (DType::F16, 1, 32, 112, 1, [1, 1, 1, 1], 2, true),
        (DType::F16, 1, 24, 112, 2, [1, 1, 1, 1], 2, true),
        (DType::F16, 2, 8, 11, 2, [1, 0, 0, 1], 1, false),
        (DType::F16, 2, 16, 10, 1, [2, 0, 0, 2], 0, false),
        (DType::F16, 2, 20, 9, 1, [1, 1, 1, 1], 2, true),
        (DType::BF16, 2, 16, 13, 1, [1, 1, 1, 1], 2, true),
        (DType::BF16, 2, 96, 14, 2, [0, 0, 1, 1], 1, false),
        (DType::BF16, 2, 12, 9, 2, [1, 1, 1, 1], 2, true),
    ];
    for (dt, n, c, hw, stride, pads, ep, with_bias) in cases {
        let x = rand_tensor(&mut rng, &[n, c, hw, hw], -4.0, 4.0, dt);
        let w = rand_tensor(&mut rng, &[c, 1, 3, 3], -1.0, 1.0, dt);
        let b = rand_tensor(&mut rng, &[c], -1.0, 1.0, dt);
        let attrs = ConvAttrs {
            kernel_shape: vec![],
            strides: vec![stride, stride],
            dilations: vec![],
            pads: pads.to_vec(),
            auto_pad: AutoPad::NotSet,
            group: c,
        };
        let base_inputs = if with_bias { 3 } else { 2 };
        let op = match ep {
            0 => Op::Linalg(LinalgOp::Conv(attrs)),
            1 => {
                let expr = Expr::op(ElementwiseOp::Unary(UnaryOp::Relu), 1);
                Op::Fused(FusedOp::Epilogue { base: LinalgOp::Conv(attrs), base_inputs, expr })
            }
            _ => {
                let expr = Expr::op(ElementwiseOp::Clip { min: Some(0.0), max: Some(6.0) }, 1);
                Op::Fused(FusedOp::Epilogue { base: LinalgOp::Conv(attrs), base_inputs, expr })
            }
        };
        let consts = if with_bias { vec![Some(w), Some(b)] } else { vec![Some(w)] };
        let (g, inputs) = one_node(op, &[&x], &consts, 1);
        let plan = kiln_cuda::plan::plan(&g).unwrap();
        let want =
            if c % 8 == 0 { format!("dwconv2d_nhwc_v8_{}", sfx(dt)) } else { format!("dwconv2d_nhwc_{}", sfx(dt)) };
        let kernels: Vec<&str> = plan
            .steps
            .iter()
            .filter_map(|s| match &s.kind {
                kiln_cuda::plan::StepKind::Kernel(k) if k.kernel.starts_with("dwconv") => Some(k.kernel.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(kernels, [want.as_str()], "{plan}");
        let (atol, rtol) = if dt == DType::BF16 { (3e-2, 3e-2) } else { (4e-3, 4e-3) };
        let what = format!("depthwise {dt} n={n} c={c} {hw}x{hw} stride {stride} pads {pads:?} epilogue {ep}");
        if let Some(lib) = lib {
            plan_matches(lib, &what, &g, &inputs, atol, rtol);
        }
    }
}

/// `t` (`[n, c, h, w]`) stored `[n, h, w, c]`, or a filter `[c, 1, kh, kw]` stored
/// `[kh, kw, c]`: the layouts the depthwise kernels read.
fn channels_last(t: &Tensor, filter: bool) -> Tensor {
    let s = t.shape();
    let (n, c, h, w) = if filter { (1, s[0], s[2], s[3]) } else { (s[0], s[1], s[2], s[3]) };
    let v = t.to_f64_vec();
    let mut out = vec![0f32; v.len()];
    for i in 0..n {
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    out[((i * h + y) * w + x) * c + ch] = v[((i * c + ch) * h + y) * w + x] as f32;
                }
            }
        }
    }
    let shape = if filter { vec![h, w, c] } else { vec![n, h, w, c] };
    Tensor::from_vec(shape, out).unwrap().cast(t.dtype())
}

/// The depthwise vector kernels launched directly: f32 (`dwconv2d_nhwc_v4`) and f16
/// (`dwconv2d_nhwc_v8`) against the CPU reference, and bit for bit against the scalar kernel
/// (both sum each output's taps in the same order in f32). Shapes the vector path takes and
/// shapes it leaves to the scalar loop inside the same kernel (channels not a multiple of the
/// vector, 5x5, dilation 2, stride 3, a misaligned input), which `DwArgs::vector_ok` must tell
/// apart.
#[test]
fn depthwise_vector_kernels_match_the_scalar_kernel() {
    use kiln_ir::ops::linalg::{ConvAttrs, LinalgOp};
    let Some(lib) = lib() else { return };
    let mut rng = Rng::new(11);
    // (channels, h, w, kernel, stride [h, w], dilation, ONNX pads [h0, w0, h1, w1], act, bias,
    // misaligned x).
    type Case = (usize, usize, usize, usize, [usize; 2], usize, [usize; 4], i64, bool, bool);
    let cases: [Case; 13] = [
        (8, 7, 7, 3, [1, 1], 1, [1, 1, 1, 1], 2, true, false),
        (16, 13, 13, 3, [1, 1], 1, [1, 1, 1, 1], 1, false, false),
        (96, 9, 13, 3, [2, 2], 1, [1, 1, 1, 1], 2, true, false),
        (144, 8, 14, 3, [2, 2], 1, [0, 0, 1, 1], 0, true, false),
        (8, 5, 112, 3, [1, 1], 1, [1, 1, 1, 1], 2, true, false),
        (24, 9, 11, 3, [1, 2], 1, [2, 0, 0, 2], 1, true, false),
        (8, 6, 6, 2, [1, 1], 1, [0, 1, 1, 0], 0, false, false),
        (12, 7, 7, 3, [1, 1], 1, [1, 1, 1, 1], 2, true, false),
        (10, 7, 7, 3, [1, 1], 1, [1, 1, 1, 1], 2, true, false),
        (8, 9, 9, 5, [1, 1], 1, [2, 2, 2, 2], 2, true, false),
        (8, 9, 9, 3, [1, 1], 2, [2, 2, 2, 2], 2, true, false),
        (8, 10, 10, 3, [3, 3], 1, [1, 1, 1, 1], 2, true, false),
        (16, 13, 13, 3, [1, 1], 1, [1, 1, 1, 1], 2, true, true),
    ];
    for dt in [DType::F32, DType::F16] {
        let size = dt.size();
        let vec_name = format!("dwconv2d_nhwc_v{}_{}", 16 / size, sfx(dt));
        let (atol, rtol) = if dt == DType::F16 { (4e-3, 4e-3) } else { tol(dt) };
        for (c, h, w, k, stride, dil, pads, act, with_bias, misaligned) in cases {
            let n = 2;
            let x = rand_tensor(&mut rng, &[n, c, h, w], -4.0, 4.0, dt);
            let wt = rand_tensor(&mut rng, &[c, 1, k, k], -1.0, 1.0, dt);
            let b = rand_tensor(&mut rng, &[c], -1.0, 1.0, dt);
            let attrs = ConvAttrs {
                kernel_shape: vec![],
                strides: stride.to_vec(),
                dilations: vec![dil, dil],
                pads: pads.to_vec(),
                auto_pad: AutoPad::NotSet,
                group: c,
            };
            // The CPU reference: the Conv (with or without the bias), then the activation.
            let ins: &[&Tensor] = if with_bias { &[&x, &wt, &b] } else { &[&x, &wt] };
            let conv = cpu(Op::Linalg(LinalgOp::Conv(attrs)), ins);
            let (oh, ow) = (conv.shape()[2], conv.shape()[3]);
            let want: Vec<f32> = conv
                .to_f64_vec()
                .into_iter()
                .map(|mut v| {
                    if act == 1 {
                        v = if v < 0.0 { 0.0 } else { v };
                    } else if act == 2 {
                        v = v.clamp(0.0, 6.0);
                    }
                    v as f32
                })
                .collect();
            let want = channels_last(&Tensor::from_vec(vec![n, c, oh, ow], want).unwrap().cast(dt), false);
            let args = launch::DwArgs {
                dims: [n, c, h, w, oh, ow, k, k, stride[0], stride[1], dil, dil, pads[0], pads[1]].map(|d| d as i64),
                act,
                lo: 0.0,
                hi: 6.0,
            };
            let fast = c % (16 / size) == 0 && k <= 3 && dil == 1 && stride.iter().all(|&s| s <= 2);
            assert_eq!(args.vector_ok(size), fast, "{c} channels, kernel {k}, stride {stride:?}, dilation {dil}");
            // x with one spare element in front: x + 1 element is 16-byte aligned or not.
            let xl = channels_last(&x, false).to_f64_vec();
            let mut xv = vec![0f32; if misaligned { 1 } else { 16 / size }];
            xv.extend(xl.iter().map(|&v| v as f32));
            let xd = lib.upload(&Tensor::from_vec(vec![xv.len()], xv).unwrap().cast(dt)).unwrap();
            let xp = Param::ptr(lib.addr(&xd) + (if misaligned { 1 } else { 16 / size } * size) as u64);
            let (wd, bd) = (lib.upload(&channels_last(&wt, true)).unwrap(), lib.upload(&b).unwrap());
            let bp = if with_bias { ptr(lib, &bd) } else { Param::ptr(0) };
            let out = [n, oh, ow, c];
            let (y1, y2) = (lib.zeros(dt, &out).unwrap(), lib.zeros(dt, &out).unwrap());
            let scalar = format!("dwconv2d_nhwc_{}", sfx(dt));
            let cfg = launch::grid_stride((n * c * oh * ow) as u64);
            run(
                lib,
                KernelFamily::Conv,
                &scalar,
                cfg,
                &[xp.clone(), ptr(lib, &wd), bp.clone(), ptr(lib, &y1), args.param()],
            );
            let cfg = args.vector_launch(size);
            run(lib, KernelFamily::Conv, &vec_name, cfg, &[xp, ptr(lib, &wd), bp, ptr(lib, &y2), args.param()]);
            let what = format!("{vec_name} c={c} {h}x{w} k={k} stride {stride:?} dil {dil} pads {pads:?} act {act}");
            let (got, base) = (lib.download(&y2).unwrap(), lib.download(&y1).unwrap());
            check_close(&what, &got, &want, atol, rtol);
            check_close(&format!("{what} against {scalar}"), &got, &base, 0.0, 0.0);
        }
    }
}
