//! GPU tests of the index family (`kernels/index.cu`) through the planner: one-node graphs of
//! each indexing op and loss, planned, run on the GPU and compared with the CPU executor on odd
//! sizes, plus the run-time errors of out-of-range indices. Without a GPU they print a skip
//! reason and pass.

mod common;
use common::*;
use kiln_ir::ops::layout::ScatterReduction;
use kiln_ir::ops::loss::LossReduction;
use kiln_ir::ops::{LayoutOp, LossOp, NormOp, ReduceOp};
use kiln_ir::{DType, Op, Tensor};

const REDUCTIONS: [ScatterReduction; 5] = [
    ScatterReduction::None,
    ScatterReduction::Add,
    ScatterReduction::Mul,
    ScatterReduction::Max,
    ScatterReduction::Min,
];

/// Random i64 indices in `[lo, hi)`.
fn rand_ints(rng: &mut Rng, shape: &[usize], lo: i64, hi: i64) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<i64> = (0..n).map(|_| lo + rng.below((hi - lo) as usize) as i64).collect();
    Tensor::from_vec(shape.to_vec(), v).unwrap()
}

/// Random values with many ties (small integers), for TopK, Hardmax and the scatters' max/min.
fn rand_small(rng: &mut Rng, shape: &[usize], dt: DType) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.below(7) as f32 - 3.0).collect();
    Tensor::from_vec(shape.to_vec(), v).unwrap().cast(dt)
}

#[test]
fn gathers_match_the_cpu_executor() {
    let Some(lib) = lib() else { return };
    let mut rng = Rng::new(21);
    for dt in [DType::F32, DType::F16, DType::I64, DType::U8] {
        for n in SIZES {
            let x = rand_tensor(&mut rng, &[3, n, 4], -5.0, 5.0, dt);
            // GatherElements along each axis, indices smaller than the data off the axis,
            // negative ones included, i64 and i32.
            for (axis, len) in [(0usize, 3i64), (1, n as i64), (2, 4)] {
                let mut shape = vec![2, n.div_ceil(2), 3];
                shape[axis] = 5;
                let idx = rand_ints(&mut rng, &shape, -len, len);
                for it in [DType::I64, DType::I32] {
                    let op = Op::Layout(LayoutOp::GatherElements { axis: axis as i64 - 3 });
                    let (g, ins) = one_node(op, &[&x, &idx.cast(it)], &[], 1);
                    plan_matches(lib, &format!("gather_elements axis {axis} {dt} {it} n={n}"), &g, &ins, 0.0, 0.0);
                }
            }
            // GatherND without and with a batch dim.
            let idx = Tensor::from_vec(
                vec![5, 2],
                (0..5).flat_map(|_| [rng.below(3) as i64 - 3, rng.below(n) as i64]).collect::<Vec<_>>(),
            )
            .unwrap();
            let (g, ins) = one_node(Op::Layout(LayoutOp::GatherND { batch_dims: 0 }), &[&x, &idx], &[], 1);
            plan_matches(lib, &format!("gather_nd {dt} n={n}"), &g, &ins, 0.0, 0.0);
            let idx = rand_ints(&mut rng, &[3, 7, 1], -(n as i64), n as i64);
            let (g, ins) = one_node(Op::Layout(LayoutOp::GatherND { batch_dims: 1 }), &[&x, &idx], &[], 1);
            plan_matches(lib, &format!("gather_nd batch_dims 1 {dt} n={n}"), &g, &ins, 0.0, 0.0);
        }
    }
}

#[test]
fn scatters_match_the_cpu_executor() {
    let Some(lib) = lib() else { return };
    let mut rng = Rng::new(22);
    for dt in [DType::F32, DType::F16, DType::I32, DType::I64] {
        let (atol, rtol) = tol(dt);
        for n in SIZES {
            for reduction in REDUCTIONS {
                // Many updates per line along axis 0 (duplicate indices), so the order matters.
                let x = rand_small(&mut rng, &[4, n], dt);
                let idx = rand_ints(&mut rng, &[6, n.div_ceil(2)], -4, 4);
                let upd = rand_small(&mut rng, &[6, n.div_ceil(2)], dt);
                let op = Op::Layout(LayoutOp::ScatterElements { axis: 0, reduction });
                let (g, ins) = one_node(op, &[&x, &idx, &upd], &[], 1);
                plan_matches(lib, &format!("scatter_elements {reduction:?} {dt} n={n}"), &g, &ins, atol, rtol);
                // ScatterND of [3, 2] chunks, duplicate tuples included.
                let x = rand_small(&mut rng, &[n, 3, 2], dt);
                let idx = rand_ints(&mut rng, &[7, 1], -(n as i64), n as i64);
                let upd = rand_small(&mut rng, &[7, 3, 2], dt);
                let (g, ins) = one_node(Op::Layout(LayoutOp::ScatterND { reduction }), &[&x, &idx, &upd], &[], 1);
                plan_matches(lib, &format!("scatter_nd {reduction:?} {dt} n={n}"), &g, &ins, atol, rtol);
            }
        }
    }
}

#[test]
fn triangles_and_one_hot_match_the_cpu_executor() {
    let Some(lib) = lib() else { return };
    let mut rng = Rng::new(23);
    for dt in [DType::F32, DType::F16, DType::I64] {
        for n in SIZES {
            let x = rand_tensor(&mut rng, &[2, n, 5], -5.0, 5.0, dt);
            for upper in [false, true] {
                for k in [-2i64, 0, 3] {
                    let (g, ins) = one_node(Op::Layout(LayoutOp::Trilu { upper }), &[&x], &[ints(&[k])], 1);
                    plan_matches(lib, &format!("trilu upper={upper} k={k} {dt} n={n}"), &g, &ins, 0.0, 0.0);
                }
                // k as a graph input, read by the kernel at run time.
                let k = Tensor::scalar(-1i64);
                let (g, ins) = one_node(Op::Layout(LayoutOp::Trilu { upper }), &[&x, &k], &[], 1);
                plan_matches(lib, &format!("trilu upper={upper} run-time k {dt} n={n}"), &g, &ins, 0.0, 0.0);
            }
            let x = rand_tensor(&mut rng, &[n, 5], -5.0, 5.0, dt);
            for (to, k) in [(None, 0i64), (Some(DType::I32), 1), (Some(DType::F16), -2)] {
                let (g, ins) = one_node(Op::Layout(LayoutOp::EyeLike { dtype: to, k }), &[&x], &[], 1);
                plan_matches(lib, &format!("eyelike {to:?} k={k} {dt} n={n}"), &g, &ins, 0.0, 0.0);
            }
            // OneHot with indices out of [-depth, depth) (all off), float indices too.
            let values = Tensor::from_vec(vec![2], vec![-1.5f32, 2.0]).unwrap().cast(dt);
            let idx = rand_ints(&mut rng, &[3, n], -6, 6);
            for (axis, it) in [(-1i64, DType::I64), (1, DType::I32), (0, DType::F32)] {
                let (g, ins) = one_node(
                    Op::Layout(LayoutOp::OneHot { axis }),
                    &[&idx.cast(it)],
                    &[ints(&[5]), Some(values.clone())],
                    1,
                );
                plan_matches(lib, &format!("onehot axis {axis} {it} {dt} n={n}"), &g, &ins, 0.0, 0.0);
            }
        }
    }
}

#[test]
fn scans_and_selections_match_the_cpu_executor() {
    let Some(lib) = lib() else { return };
    let mut rng = Rng::new(24);
    for dt in [DType::F32, DType::F16, DType::F64, DType::I32, DType::I64] {
        let (atol, rtol) = tol(dt);
        for n in SIZES {
            let x = rand_small(&mut rng, &[3, n, 2], dt);
            for axis in [0i64, 1, -1] {
                for (exclusive, reverse) in [(false, false), (true, false), (false, true), (true, true)] {
                    let op = Op::Reduce(ReduceOp::CumSum { exclusive, reverse });
                    let (g, ins) = one_node(op, &[&x], &[ints(&[axis])], 1);
                    // Sums of up to n rounded f16 values.
                    let what = format!("cumsum axis {axis} exclusive={exclusive} reverse={reverse} {dt} n={n}");
                    plan_matches(lib, &what, &g, &ins, atol * 8.0, rtol * 8.0);
                }
            }
            // TopK over the middle axis with many ties; k up to the whole axis.
            for k in [1usize, 3.min(n), n] {
                for largest in [true, false] {
                    let op = Op::Reduce(ReduceOp::TopK { axis: 1, largest, sorted: true, k: None });
                    let (g, ins) = one_node(op, &[&x], &[ints(&[k as i64])], 2);
                    plan_matches(lib, &format!("topk k={k} largest={largest} {dt} n={n}"), &g, &ins, 0.0, 0.0);
                }
            }
            if matches!(dt, DType::I32 | DType::I64) {
                continue;
            }
            for (axis, coerce_2d) in [(1i64, false), (-1, false), (1, true)] {
                let (g, ins) = one_node(Op::Norm(NormOp::Hardmax { axis, coerce_2d }), &[&x], &[], 1);
                plan_matches(lib, &format!("hardmax axis {axis} coerce={coerce_2d} {dt} n={n}"), &g, &ins, 0.0, 0.0);
            }
        }
    }
}

#[test]
fn losses_match_the_cpu_executor() {
    let Some(lib) = lib() else { return };
    let mut rng = Rng::new(25);
    for dt in [DType::F32, DType::F16] {
        let (atol, rtol) = tol(dt);
        for n in SIZES {
            let x = rand_tensor(&mut rng, &[2, 5, n], -4.0, 0.0, dt);
            // Targets in [-1, 5): -1 is the ignore_index where there is one.
            let target = rand_ints(&mut rng, &[2, n], -1, 5);
            let clean = rand_ints(&mut rng, &[2, n], 0, 5);
            let weight = rand_tensor(&mut rng, &[5], 0.1, 2.0, dt);
            for reduction in [LossReduction::None, LossReduction::Sum, LossReduction::Mean] {
                for (ignore_index, t) in [(Some(-1i64), &target), (None, &clean)] {
                    for w in [None, Some(&weight)] {
                        let mut data = vec![&x, t];
                        data.extend(w);
                        let what = format!("{reduction:?} ii={ignore_index:?} weight={} {dt} n={n}", w.is_some());
                        // Sums over up to 2 n rounded terms.
                        let (a, r) = (atol * 16.0, rtol * 16.0);
                        let op = Op::Loss(LossOp::NegativeLogLikelihoodLoss { reduction, ignore_index });
                        let (g, ins) = one_node(op, &data, &[], 1);
                        plan_matches(lib, &format!("nll {what}"), &g, &ins, a, r);
                        let op = Op::Loss(LossOp::SoftmaxCrossEntropyLoss { reduction, ignore_index });
                        for outputs in [1, 2] {
                            let (g, ins) = one_node(op.clone(), &data, &[], outputs);
                            plan_matches(lib, &format!("sce {what} outputs={outputs}"), &g, &ins, a, r);
                        }
                    }
                }
            }
        }
    }
}

/// Out-of-range indices and targets fail the run with the node's message.
#[test]
fn out_of_range_indices_are_errors() {
    let Some(lib) = lib() else { return };
    let mut rng = Rng::new(26);
    let x = rand_tensor(&mut rng, &[3, 4], -1.0, 1.0, DType::F32);
    let good = Tensor::from_vec(vec![1, 4], vec![0i64, 1, 2, -3]).unwrap();
    let bad = Tensor::from_vec(vec![1, 4], vec![0i64, 1, 3, -4]).unwrap();
    // The graphs are built with good indices (the CPU reference runs then), run with bad ones.
    let (g, inputs) = one_node(Op::Layout(LayoutOp::GatherElements { axis: 0 }), &[&x, &good], &[], 1);
    let plan = kiln_cuda::plan::plan(&g).unwrap();
    let err = lib.run_plan(&plan, &[inputs[0].clone(), bad.clone()]).unwrap_err();
    assert_eq!(err.to_string(), "GatherElements node: an index is outside [-3, 3)");
    let upd = rand_tensor(&mut rng, &[1, 4], -1.0, 1.0, DType::F32);
    let (g, inputs) = one_node(
        Op::Layout(LayoutOp::ScatterElements { axis: 0, reduction: ScatterReduction::None }),
        &[&x, &good, &upd],
        &[],
        1,
    );
    let plan = kiln_cuda::plan::plan(&g).unwrap();
    let bad_inputs = vec![inputs[0].clone(), bad, inputs[2].clone()];
    let err = lib.run_plan(&plan, &bad_inputs).unwrap_err();
    assert_eq!(err.to_string(), "ScatterElements node: an index is outside [-3, 3)");
    let target = Tensor::from_vec(vec![3], vec![0i64, 4, 1]).unwrap();
    let op = Op::Loss(LossOp::NegativeLogLikelihoodLoss { reduction: LossReduction::Mean, ignore_index: None });
    let (g, inputs) = one_node(op, &[&x, &Tensor::from_vec(vec![3], vec![0i64, 1, 1]).unwrap()], &[], 1);
    let plan = kiln_cuda::plan::plan(&g).unwrap();
    let err = lib.run_plan(&plan, &[inputs[0].clone(), target]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "NegativeLogLikelihoodLoss node: a target is outside [0, 4) and is not the ignore_index"
    );
}
