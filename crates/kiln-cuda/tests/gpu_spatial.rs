//! The planner's lowerings of pooling over three dims, LpPool, MaxPool's Indices, the
//! normalizations of `norm.cu`, f64 and bool reductions, ConvTranspose, GridSample, RoiAlign,
//! Resize by tap tables and the spatial rearrangements, each as a one-node plan run on the GPU against the CPU executor on
//! odd sizes.
//!
//! Without a CUDA driver or device each test prints why and returns; with `KILN_REQUIRE_GPU=1`
//! a missing GPU fails instead.

use kiln_ir::ops::elementwise::{BinaryOp, ElementwiseOp};
use kiln_ir::ops::layout::{DepthToSpaceMode, LayoutOp};
use kiln_ir::ops::linalg::{ConvTransposeAttrs, LinalgOp};
use kiln_ir::ops::norm::NormOp;
use kiln_ir::ops::pool::{AutoPad, PoolOp, PoolWindow};
use kiln_ir::ops::reduce::{ReduceOp, Reducer};
use kiln_ir::ops::spatial::{
    AspectRatioPolicy, CoordTransform, GridPadding, GridSampleMode, NearestMode, ResizeAttrs, ResizeInputs, ResizeMode,
    SpatialOp,
};
use kiln_ir::{DType, Op, Tensor};

mod common;

use common::*;

fn window(k: &[usize], s: &[usize], p: &[usize], ceil_mode: bool) -> PoolWindow {
    PoolWindow {
        kernel_shape: k.to_vec(),
        strides: s.to_vec(),
        pads: p.to_vec(),
        auto_pad: AutoPad::NotSet,
        dilations: vec![1; k.len()],
        ceil_mode,
    }
}

#[test]
fn pools_over_three_dims_lp_and_indices_match_cpu() {
    let Some(lib) = lib() else { return };
    let mut rng = Rng::new(21);
    for dt in [DType::F32, DType::F16] {
        let (atol, rtol) = tol(dt);
        for n in [1usize, 3, 50] {
            let x3 = rand_tensor(&mut rng, &[2, 3, n, 5, 4], -4.0, 4.0, dt);
            let w3 = window(&[2, 3, 2], &[1, 2, 1], &[1, 1, 0, 0, 1, 1], true);
            for (name, op) in [
                ("maxpool3d", PoolOp::MaxPool { window: w3.clone(), column_major: false }),
                ("avgpool3d", PoolOp::AveragePool { window: w3.clone(), count_include_pad: false }),
                ("avgpool3d pad", PoolOp::AveragePool { window: w3.clone(), count_include_pad: true }),
                ("lppool3d p2", PoolOp::LpPool { window: w3.clone(), p: 2.0 }),
                ("lppool3d p3", PoolOp::LpPool { window: w3.clone(), p: 3.0 }),
            ] {
                let (g, ins) = one_node(Op::Pool(op), &[&x3], &[], 1);
                plan_matches(lib, &format!("{name} {dt} n={n}"), &g, &ins, atol, rtol);
            }
            let x2 = rand_tensor(&mut rng, &[2, 3, n, 7], -4.0, 4.0, dt);
            let w2 = window(&[3, 2], &[2, 1], &[1, 0, 1, 1], false);
            for column_major in [false, true] {
                let op = PoolOp::MaxPool { window: w2.clone(), column_major };
                let (g, ins) = one_node(Op::Pool(op), &[&x2], &[], 2);
                plan_matches(lib, &format!("maxpool indices {column_major} {dt} n={n}"), &g, &ins, atol, rtol);
            }
            let x1 = rand_tensor(&mut rng, &[2, 3, n + 2], -4.0, 4.0, dt);
            let op = PoolOp::LpPool { window: window(&[3], &[2], &[1, 1], false), p: 1.0 };
            let (g, ins) = one_node(Op::Pool(op), &[&x1], &[], 1);
            plan_matches(lib, &format!("lppool1d {dt} n={n}"), &g, &ins, atol, rtol);
        }
    }
}

#[test]
fn normalizations_match_cpu() {
    let Some(lib) = lib() else { return };
    let mut rng = Rng::new(22);
    for dt in [DType::F32, DType::F16] {
        let (atol, rtol) = tol(dt);
        let (atol, rtol) = (atol * 4.0, rtol * 4.0);
        for n in [1usize, 3, 50, 783] {
            let x = rand_tensor(&mut rng, &[2, 6, n, 3], -2.0, 2.0, dt);
            let per_channel = |rng: &mut Rng, c: usize| rand_tensor(rng, &[c], 0.5, 1.5, dt);
            let (s6, b6) = (per_channel(&mut rng, 6), per_channel(&mut rng, 6));
            let op = Op::Norm(NormOp::InstanceNormalization { epsilon: 1e-5 });
            let (g, ins) = one_node(op, &[&x], &[Some(s6.clone()), Some(b6.clone())], 1);
            plan_matches(lib, &format!("instancenorm {dt} n={n}"), &g, &ins, atol, rtol);
            let op = Op::Norm(NormOp::GroupNormalization { num_groups: 3, epsilon: 1e-5, stash_type: 1 });
            let (g, ins) = one_node(op.clone(), &[&x], &[Some(s6.clone()), Some(b6.clone())], 1);
            plan_matches(lib, &format!("groupnorm per channel {dt} n={n}"), &g, &ins, atol, rtol);
            let (s3, b3) = (per_channel(&mut rng, 3), per_channel(&mut rng, 3));
            let (g, ins) = one_node(op, &[&x], &[Some(s3), Some(b3)], 1);
            plan_matches(lib, &format!("groupnorm per group {dt} n={n}"), &g, &ins, atol, rtol);
            let (m6, v6) = (rand_tensor(&mut rng, &[6], -1.0, 1.0, dt), per_channel(&mut rng, 6));
            let op = Op::Norm(NormOp::BatchNormalization { epsilon: 1e-5, momentum: 0.9, training_mode: false });
            let params = [Some(s6), Some(b6), Some(m6), Some(v6)];
            let (g, ins) = one_node(op, &[&x], &params, 1);
            plan_matches(lib, &format!("batchnorm {dt} n={n}"), &g, &ins, atol, rtol);
            // Training mode: batch statistics, and the running statistics as outputs 1 and 2.
            let op = Op::Norm(NormOp::BatchNormalization { epsilon: 1e-5, momentum: 0.9, training_mode: true });
            let (g, ins) = one_node(op, &[&x], &params, 3);
            plan_matches(lib, &format!("batchnorm training {dt} n={n}"), &g, &ins, atol, rtol);
            for size in [1usize, 3, 4] {
                let op = Op::Norm(NormOp::LRN { alpha: 1e-3, beta: 0.75, bias: 1.0, size });
                let (g, ins) = one_node(op, &[&x], &[], 1);
                plan_matches(lib, &format!("lrn size {size} {dt} n={n}"), &g, &ins, atol, rtol);
            }
            for (axis, p) in [(1, 2), (-1, 1), (2, 2)] {
                let op = Op::Norm(NormOp::LpNormalization { axis, p });
                let (g, ins) = one_node(op, &[&x], &[], 1);
                plan_matches(lib, &format!("lpnorm axis {axis} p {p} {dt} n={n}"), &g, &ins, atol, rtol);
            }
            for axes in [vec![0, 2, 3], vec![2, 3], vec![1]] {
                let op = Op::Norm(NormOp::MeanVarianceNormalization { axes: axes.clone() });
                let (g, ins) = one_node(op, &[&x], &[], 1);
                plan_matches(lib, &format!("mvn {axes:?} {dt} n={n}"), &g, &ins, atol, rtol);
            }
        }
    }
}

#[test]
fn f64_bool_and_scattered_reductions_match_cpu() {
    let Some(lib) = lib() else { return };
    let mut rng = Rng::new(23);
    let reduce = |reducer, axes: &[i64], keepdims| {
        Op::Reduce(ReduceOp::Reduce { reducer, axes: Some(axes.to_vec()), keepdims, noop_with_empty_axes: false })
    };
    for n in [1usize, 3, 50, 783, 4096] {
        let x = rand_tensor(&mut rng, &[3, n, 2], -2.0, 2.0, DType::F64);
        for r in [Reducer::Sum, Reducer::Mean, Reducer::Max, Reducer::L2, Reducer::LogSum, Reducer::LogSumExp] {
            let xr =
                if r == Reducer::LogSum { rand_tensor(&mut rng, &[3, n, 2], 0.1, 2.0, DType::F64) } else { x.clone() };
            for (axes, keep) in [(vec![1], true), (vec![0, 2], false), (vec![0, 1, 2], true)] {
                let (g, ins) = one_node(reduce(r, &axes, keep), &[&xr], &[], 1);
                plan_matches(lib, &format!("{r:?} f64 {axes:?} n={n}"), &g, &ins, 1e-12, 1e-12);
            }
        }
        let f = rand_tensor(&mut rng, &[3, n, 2], -1.0, 1.0, DType::F32);
        let b =
            Tensor::from_vec(vec![3, n, 2], f.to_f64_vec().iter().map(|&v| v > 0.3).collect::<Vec<bool>>()).unwrap();
        for r in [Reducer::Max, Reducer::Min] {
            for axes in [vec![1], vec![0, 2]] {
                let (g, ins) = one_node(reduce(r, &axes, true), &[&b], &[], 1);
                plan_matches(lib, &format!("{r:?} bool {axes:?} n={n}"), &g, &ins, 0.0, 0.0);
            }
        }
        let (g, ins) = one_node(reduce(Reducer::Sum, &[0, 2], false), &[&f], &[], 1);
        plan_matches(lib, &format!("sum f32 [0, 2] n={n}"), &g, &ins, 1e-4, 1e-4);
    }
}

#[test]
fn conv_transpose_matches_cpu() {
    let Some(lib) = lib() else { return };
    let mut rng = Rng::new(24);
    let attrs = |k: &[usize], s: &[usize], d: &[usize], p: &[usize], op: &[usize], group: usize| ConvTransposeAttrs {
        kernel_shape: k.to_vec(),
        strides: s.to_vec(),
        dilations: d.to_vec(),
        pads: p.to_vec(),
        output_padding: op.to_vec(),
        output_shape: None,
        auto_pad: AutoPad::NotSet,
        group,
    };
    for dt in [DType::F32, DType::F16] {
        let (atol, rtol) = tol(dt);
        let (atol, rtol) = (atol * 8.0, rtol * 8.0);
        for n in [1usize, 3, 50] {
            // 2-D, two groups, strides, dilations, asymmetric pads, output padding and bias.
            let x = rand_tensor(&mut rng, &[2, 4, n, 5], -1.0, 1.0, dt);
            let w = rand_tensor(&mut rng, &[4, 3, 3, 2], -1.0, 1.0, dt);
            let b = rand_tensor(&mut rng, &[6], -1.0, 1.0, dt);
            let a = attrs(&[3, 2], &[2, 3], &[1, 2], &[1, 0, 0, 1], &[1, 2], 2);
            let op = Op::Linalg(LinalgOp::ConvTranspose(a));
            let (g, ins) = one_node(op, &[&x], &[Some(w.clone()), Some(b)], 1);
            plan_matches(lib, &format!("conv_transpose 2d {dt} n={n}"), &g, &ins, atol, rtol);
            // 1-D and 3-D without bias, SAME_UPPER.
            let x1 = rand_tensor(&mut rng, &[1, 2, n], -1.0, 1.0, dt);
            let w1 = rand_tensor(&mut rng, &[2, 3, 3], -1.0, 1.0, dt);
            let mut a1 = attrs(&[3], &[2], &[1], &[], &[], 1);
            a1.auto_pad = AutoPad::SameUpper;
            let (g, ins) = one_node(Op::Linalg(LinalgOp::ConvTranspose(a1)), &[&x1], &[Some(w1)], 1);
            plan_matches(lib, &format!("conv_transpose 1d {dt} n={n}"), &g, &ins, atol, rtol);
            let x3 = rand_tensor(&mut rng, &[1, 2, n.min(5), 3, 4], -1.0, 1.0, dt);
            let w3 = rand_tensor(&mut rng, &[2, 2, 2, 3, 2], -1.0, 1.0, dt);
            let a3 = attrs(&[2, 3, 2], &[1, 2, 2], &[1, 1, 1], &[0, 1, 0, 0, 1, 1], &[], 1);
            let (g, ins) = one_node(Op::Linalg(LinalgOp::ConvTranspose(a3)), &[&x3], &[Some(w3)], 1);
            plan_matches(lib, &format!("conv_transpose 3d {dt} n={n}"), &g, &ins, atol, rtol);
        }
    }
}

#[test]
fn grid_sample_matches_cpu() {
    let Some(lib) = lib() else { return };
    let mut rng = Rng::new(25);
    for dt in [DType::F32, DType::F64] {
        for n in [1usize, 3, 50] {
            let x = rand_tensor(&mut rng, &[2, 3, n, 4], -2.0, 2.0, dt);
            let grid = rand_tensor(&mut rng, &[2, 5, n + 1, 2], -1.3, 1.3, dt);
            let x3 = rand_tensor(&mut rng, &[1, 2, 3, n, 4], -2.0, 2.0, dt);
            let grid3 = rand_tensor(&mut rng, &[1, 2, n, 3, 3], -1.3, 1.3, dt);
            for mode in [GridSampleMode::Linear, GridSampleMode::Nearest, GridSampleMode::Cubic] {
                for padding_mode in [GridPadding::Zeros, GridPadding::Border, GridPadding::Reflection] {
                    for align_corners in [false, true] {
                        let op = Op::Spatial(SpatialOp::GridSample { mode, padding_mode, align_corners });
                        let what = format!("grid_sample {mode:?} {padding_mode:?} {align_corners} {dt} n={n}");
                        let (g, ins) = one_node(op.clone(), &[&x, &grid], &[], 1);
                        plan_matches(lib, &what, &g, &ins, 1e-5, 1e-5);
                        if mode != GridSampleMode::Cubic {
                            let (g, ins) = one_node(op, &[&x3, &grid3], &[], 1);
                            plan_matches(lib, &format!("{what} 3d"), &g, &ins, 1e-5, 1e-5);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn rearrangements_clip_and_legacy_broadcasts_match_cpu() {
    let Some(lib) = lib() else { return };
    let mut rng = Rng::new(26);
    for dt in [DType::F32, DType::F16] {
        for n in [1usize, 3, 50] {
            let x = rand_tensor(&mut rng, &[2, 8, n, 3], -2.0, 2.0, dt);
            for mode in [DepthToSpaceMode::Dcr, DepthToSpaceMode::Crd] {
                let op = Op::Layout(LayoutOp::DepthToSpace { blocksize: 2, mode });
                let (g, ins) = one_node(op, &[&x], &[], 1);
                plan_matches(lib, &format!("depthtospace {mode:?} {dt} n={n}"), &g, &ins, 0.0, 0.0);
            }
            let xs = rand_tensor(&mut rng, &[2, 3, 2 * n, 4], -2.0, 2.0, dt);
            let op = Op::Layout(LayoutOp::SpaceToDepth { blocksize: 2 });
            let (g, ins) = one_node(op, &[&xs], &[], 1);
            plan_matches(lib, &format!("spacetodepth {dt} n={n}"), &g, &ins, 0.0, 0.0);
            let op = Op::Layout(LayoutOp::CenterCropPad { axes: Some(vec![-2, 1]) });
            let (g, ins) = one_node(op, &[&x], &[ints(&[n as i64 + 3, 5])], 1);
            plan_matches(lib, &format!("center_crop_pad {dt} n={n}"), &g, &ins, 0.0, 0.0);
            let bound = |v: f32| Some(Tensor::scalar(v).cast(dt));
            let clip = Op::Elementwise(ElementwiseOp::Clip { min: None, max: None });
            for (name, consts) in [("min", vec![bound(-0.5)]), ("max", vec![None, bound(0.5)]), ("none", vec![])] {
                let (g, ins) = one_node(clip.clone(), &[&x], &consts, 1);
                plan_matches(lib, &format!("clip {name} {dt} n={n}"), &g, &ins, 0.0, 0.0);
            }
            let b = rand_tensor(&mut rng, &[8, n], -1.0, 1.0, dt);
            for op in [BinaryOp::Add, BinaryOp::PRelu] {
                let legacy = Op::Elementwise(ElementwiseOp::LegacyBinary { op, axis: 1 });
                let (g, ins) = one_node(legacy, &[&x, &b], &[], 1);
                plan_matches(lib, &format!("legacy {op:?} {dt} n={n}"), &g, &ins, 1e-3, 1e-3);
            }
        }
    }
}

#[test]
fn roi_align_matches_cpu() {
    let Some(lib) = lib() else { return };
    let mut rng = Rng::new(27);
    for dt in [DType::F32, DType::F64] {
        for n in [1usize, 3, 50] {
            let x = rand_tensor(&mut rng, &[2, 3, n + 4, 9], -2.0, 2.0, dt);
            let r = 5;
            // Boxes partly outside the map, some of zero size.
            let mut boxes = vec![];
            for _ in 0..r {
                let (x1, y1) = (rng.uniform(-2.0, 8.0), rng.uniform(-2.0, n as f32 + 4.0));
                boxes.extend([x1, y1, x1 + rng.uniform(0.0, 6.0), y1 + rng.uniform(0.0, 5.0)]);
            }
            let rois = Tensor::from_vec(vec![r, 4], boxes).unwrap().cast(dt);
            let bidx = Tensor::from_vec(vec![r], (0..r as i64).map(|i| i % 2).collect::<Vec<i64>>()).unwrap();
            for max in [false, true] {
                for (sampling_ratio, half_pixel) in [(0, true), (2, false)] {
                    let op = Op::Spatial(SpatialOp::RoiAlign {
                        max,
                        output_height: 3,
                        output_width: 4,
                        sampling_ratio,
                        spatial_scale: 0.75,
                        half_pixel,
                    });
                    let (g, ins) = one_node(op, &[&x, &rois, &bidx], &[], 1);
                    let what = format!("roi_align max={max} ratio={sampling_ratio} half={half_pixel} {dt} n={n}");
                    plan_matches(lib, &what, &g, &ins, 1e-5, 1e-5);
                }
            }
        }
    }
}

#[test]
fn resize_by_taps_matches_cpu() {
    let Some(lib) = lib() else { return };
    let mut rng = Rng::new(28);
    let attrs = |mode: ResizeMode, ctm: CoordTransform, antialias: bool, exclude_outside: bool| ResizeAttrs {
        mode,
        coordinate_transformation_mode: ctm,
        nearest_mode: NearestMode::RoundPreferFloor,
        cubic_coeff_a: -0.5,
        exclude_outside,
        extrapolation_value: 10.0,
        antialias,
        axes: None,
        keep_aspect_ratio_policy: AspectRatioPolicy::Stretch,
        inputs: ResizeInputs::RoiScalesSizes,
    };
    let f32s = |v: &[f32]| Some(Tensor::from_vec(vec![v.len()], v.to_vec()).unwrap());
    for dt in [DType::F32, DType::F16] {
        let (atol, rtol) = tol(dt);
        for n in [1usize, 3, 50] {
            let x = rand_tensor(&mut rng, &[2, 3, n + 1, 5], -4.0, 4.0, dt);
            for (name, a, roi, scales) in [
                (
                    "cubic",
                    attrs(ResizeMode::Cubic, CoordTransform::HalfPixel, false, false),
                    None,
                    [1.0, 1.0, 2.0, 0.6],
                ),
                (
                    "cubic excl",
                    attrs(ResizeMode::Cubic, CoordTransform::Asymmetric, false, true),
                    None,
                    [1.0, 1.0, 0.5, 1.7],
                ),
                (
                    "linear aa",
                    attrs(ResizeMode::Linear, CoordTransform::HalfPixel, true, false),
                    None,
                    [1.0, 1.0, 0.5, 0.6],
                ),
                (
                    "cubic aa",
                    attrs(ResizeMode::Cubic, CoordTransform::HalfPixel, true, false),
                    None,
                    [1.0, 1.0, 0.7, 0.4],
                ),
                (
                    "tf crop",
                    attrs(ResizeMode::Linear, CoordTransform::TfCropAndResize, false, false),
                    f32s(&[0.0, 0.0, -0.2, 0.4, 1.0, 1.0, 0.7, 1.3]),
                    [1.0, 1.0, 1.5, 1.2],
                ),
                (
                    "channels",
                    attrs(ResizeMode::Linear, CoordTransform::AlignCorners, false, false),
                    None,
                    [1.0, 2.0, 1.0, 0.6],
                ),
            ] {
                let op = Op::Spatial(SpatialOp::Resize(a));
                let (g, ins) = one_node(op, &[&x], &[roi, f32s(&scales)], 1);
                plan_matches(lib, &format!("resize {name} {dt} n={n}"), &g, &ins, atol, rtol);
            }
        }
    }
}

#[test]
fn pad_with_a_runtime_value_matches_cpu() {
    use kiln_ir::ops::layout::PadMode;
    use kiln_ir::{Graph, TypeInfo, Value, ValueInfo};
    let Some(lib) = lib() else { return };
    let mut rng = Rng::new(29);
    for dt in [DType::F32, DType::F16] {
        for n in [1usize, 3, 50] {
            let x = rand_tensor(&mut rng, &[2, n, 3], -2.0, 2.0, dt);
            let value = Tensor::scalar(1.5f32).cast(dt);
            let pads = Tensor::from_vec(vec![6], vec![0i64, 2, 1, 1, 0, 2]).unwrap();
            let op = Op::Layout(LayoutOp::Pad { mode: PadMode::Constant, pads: None, value: 0.0 });
            let want = kiln_cpu::eval_op(&op, &[Some(&x), Some(&pads), Some(&value)], 1).unwrap().remove(0);
            let mut g = Graph::new("pad");
            let xi = g.add_input("x", TypeInfo::known(dt, x.shape()));
            let vi = g.add_input("value", TypeInfo::known(dt, &[]));
            let pi = g.add_const("pads", pads);
            let out = vec![ValueInfo::tensor("y", TypeInfo::known(dt, want.shape()))];
            let id = g.add_node("pad", op, &[Some(xi), Some(pi), Some(vi)], out);
            g.add_output("y", Value { node: id, slot: 0 });
            plan_matches(lib, &format!("pad runtime value {dt} n={n}"), &g, &[x, value], 0.0, 0.0);
        }
    }
}

#[test]
fn col2im_and_affine_grid_match_cpu() {
    let Some(lib) = lib() else { return };
    let mut rng = Rng::new(30);
    for dt in [DType::F32, DType::F64] {
        for n in [1usize, 3, 9] {
            // Image [n + 4, 5], block [2, 3], strides [1, 2], dilations [2, 1], pads [1, 0, 0, 1].
            let (ih, iw) = (n + 4, 5usize);
            let counts = [(ih + 1 - 3) + 1, (iw + 1 - 3) / 2 + 1];
            let x = rand_tensor(&mut rng, &[2, 3 * 6, counts[0] * counts[1]], -1.0, 1.0, dt);
            let op =
                Op::Spatial(SpatialOp::Col2Im { dilations: vec![2, 1], pads: vec![1, 0, 0, 1], strides: vec![1, 2] });
            let (g, ins) = one_node(op, &[&x], &[ints(&[ih as i64, iw as i64]), ints(&[2, 3])], 1);
            plan_matches(lib, &format!("col2im {dt} n={n}"), &g, &ins, 1e-12, 1e-6);
            for align_corners in [false, true] {
                let theta = rand_tensor(&mut rng, &[2, 2, 3], -1.0, 1.0, dt);
                let op = Op::Spatial(SpatialOp::AffineGrid { align_corners });
                let (g, ins) = one_node(op.clone(), &[&theta], &[ints(&[2, 3, n as i64, 5])], 1);
                plan_matches(lib, &format!("affine_grid 2d {align_corners} {dt} n={n}"), &g, &ins, 1e-6, 1e-6);
                let theta3 = rand_tensor(&mut rng, &[1, 3, 4], -1.0, 1.0, dt);
                let (g, ins) = one_node(op, &[&theta3], &[ints(&[1, 2, 3, n as i64, 4])], 1);
                plan_matches(lib, &format!("affine_grid 3d {align_corners} {dt} n={n}"), &g, &ins, 1e-6, 1e-6);
            }
        }
    }
}

#[test]
fn windows_match_cpu() {
    use kiln_ir::ops::signal::{SignalOp, WindowFunction};
    let Some(lib) = lib() else { return };
    for function in [WindowFunction::Hann, WindowFunction::Hamming, WindowFunction::Blackman] {
        for periodic in [false, true] {
            for dt in [DType::F32, DType::F64] {
                for size in [1i64, 3, 50, 783] {
                    let op = Op::Signal(SignalOp::Window { function, periodic, output_datatype: dt });
                    let (g, ins) = one_node(op, &[], &[Some(Tensor::scalar(size))], 1);
                    let what = format!("window {function:?} periodic={periodic} {dt} size={size}");
                    plan_matches(lib, &what, &g, &ins, 1e-7, 1e-6);
                }
            }
        }
    }
}

#[test]
fn max_unpool_matches_cpu() {
    let Some(lib) = lib() else { return };
    let mut rng = Rng::new(31);
    for dt in [DType::F32, DType::F16] {
        for n in [2usize, 4, 50] {
            let x = rand_tensor(&mut rng, &[2, 3, n, 6], -4.0, 4.0, dt);
            let pool = PoolOp::MaxPool { window: window(&[2, 2], &[2, 2], &[0, 0, 0, 0], false), column_major: false };
            let pooled = kiln_cpu::eval_op(&Op::Pool(pool), &[Some(&x)], 2).unwrap();
            let unpool =
                Op::Pool(PoolOp::MaxUnpool { kernel_shape: vec![2, 2], strides: vec![2, 2], pads: vec![0, 0, 0, 0] });
            let (g, ins) = one_node(unpool.clone(), &[&pooled[0], &pooled[1]], &[], 1);
            plan_matches(lib, &format!("maxunpool {dt} n={n}"), &g, &ins, 0.0, 0.0);
            let shape = ints(&[2, 3, n as i64 + 1, 7]);
            let (g, ins) = one_node(unpool, &[&pooled[0], &pooled[1]], &[shape], 1);
            plan_matches(lib, &format!("maxunpool output_shape {dt} n={n}"), &g, &ins, 0.0, 0.0);
        }
    }
}
