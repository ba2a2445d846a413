//! The small element types (float8, float4, E8M0, 4-bit integers) and linear quantization on a
//! GPU against the CPU reference, bit for bit: Cast both ways with and without saturation over
//! every bit pattern, the rounding ties, subnormals, the range limits, Inf and NaN; then
//! QuantizeLinear, DequantizeLinear and DynamicQuantizeLinear per tensor, per axis and per
//! block.
//!
//! Without a CUDA driver or device each test prints why and returns; with `KILN_REQUIRE_GPU=1`
//! a missing GPU fails instead.

use kiln_cuda::host::{tensor_bytes, tensor_from_bytes};
use kiln_cuda::library::KernelLibrary;
use kiln_ir::ops::{ElementwiseOp, QuantOp};
use kiln_ir::{DType, Graph, Op, Tensor};

mod common;

use common::*;

const SMALL_FLOATS: [DType; 6] =
    [DType::F8E4M3FN, DType::F8E4M3FNUZ, DType::F8E5M2, DType::F8E5M2FNUZ, DType::F4E2M1, DType::F8E8M0];
const SMALL: [DType; 8] = [
    DType::F8E4M3FN,
    DType::F8E4M3FNUZ,
    DType::F8E5M2,
    DType::F8E5M2FNUZ,
    DType::F4E2M1,
    DType::F8E8M0,
    DType::I4,
    DType::U4,
];

/// Plans `g`, runs it on the GPU and asserts every output has the CPU executor's bits (two NaNs
/// match whatever their sign or payload).
fn plan_matches_bits(lib: &KernelLibrary, what: &str, g: &Graph, inputs: &[Tensor]) {
    let plan = kiln_cuda::plan::plan(g).unwrap_or_else(|e| panic!("{what}: {e}"));
    let got = lib.run_plan(&plan, inputs).unwrap_or_else(|e| panic!("{what}: {e}"));
    let want = kiln_cpu::run_graph(g, inputs).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(got.len(), want.len(), "{what}: outputs");
    for (o, (a, b)) in got.iter().zip(&want).enumerate() {
        assert_eq!((a.dtype(), a.shape()), (b.dtype(), b.shape()), "{what} output {o}");
        let (ab, bb) = (tensor_bytes(a).unwrap(), tensor_bytes(b).unwrap());
        let (av, bv) = (a.to_f64_vec(), b.to_f64_vec());
        let size = a.dtype().size();
        for i in 0..av.len() {
            let same = ab[i * size..(i + 1) * size] == bb[i * size..(i + 1) * size];
            let both_nan = av[i].is_nan() && bv[i].is_nan();
            if !(same || both_nan) {
                let input = inputs.first().map(|t| t.to_f64_vec()[i.min(t.len() - 1)]);
                panic!(
                    "{what} output {o}: element {i} (input {input:?}) is {:?} ({:02x?}), expected {:?} ({:02x?})",
                    av[i],
                    &ab[i * size..(i + 1) * size],
                    bv[i],
                    &bb[i * size..(i + 1) * size]
                );
            }
        }
    }
}

/// Every value of a type as a tensor: all 256 bytes of the float8 and E8M0 types, the 16
/// values of the 4-bit ones.
fn every_value(dt: DType) -> Tensor {
    let bytes: Vec<u8> = match dt {
        DType::F4E2M1 | DType::U4 => (0..16).collect(),
        DType::I4 => (0..16u8).map(|b| ((b as i8) - 8) as u8).collect(),
        // Wider integers: 256 values spread over their range.
        _ if dt.size() > 1 => (0..256 * dt.size()).map(|i| (i * 37 % 256) as u8).collect(),
        _ => (0..=255).collect(),
    };
    tensor_from_bytes(dt, &[bytes.len() / dt.size()], &bytes).unwrap()
}

/// f64 values that probe every small type's rounding: each finite value, the midpoints between
/// neighbours (ties) and just either side of them, the overflow thresholds, f32 subnormals,
/// the E8M0 round-up mask, the i32 limits of the 4-bit conversions, Inf and NaN, and a seeded
/// spread over many magnitudes.
fn probes() -> Vec<f64> {
    let mut v: Vec<f64> = vec![
        0.0,
        -0.0,
        f64::NAN,
        -f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f32::MAX as f64,
        -(f32::MAX as f64),
        f32::MIN_POSITIVE as f64,
        1e-45,
        -1e-45,
        1e-40,
        1.25,
        1.125,
        1.5,
        1.0 + 2f64.powi(-23),
        2f64.powi(127),
        2f64.powi(127) * 1.5,
        2f64.powi(-127),
        2147483647.0,
        2147483648.0,
        -2147483648.0,
        -2147483649.0,
        3e9,
        -3e9,
        1e30,
        -1e30,
    ];
    for k in -40..=40 {
        v.push(k as f64 * 0.5);
        v.push(k as f64 * 0.5 + 0.25);
    }
    for dt in SMALL_FLOATS {
        let mut vals: Vec<f64> = every_value(dt).to_f64_vec().into_iter().filter(|x| x.is_finite()).collect();
        vals.sort_by(f64::total_cmp);
        vals.dedup();
        for w in vals.windows(2) {
            let mid = (w[0] + w[1]) / 2.0;
            v.extend([w[0], mid, mid * (1.0 + 1e-6), mid * (1.0 - 1e-6), mid * (1.0 + 1e-12)]);
        }
        let max = vals.last().copied().unwrap_or(1.0);
        v.extend([max * 1.0625, max * 1.0624, max * 1.07, max * 2.0, -max * 1.0625, -max * 1.07]);
    }
    let mut rng = Rng::new(7);
    for _ in 0..783 {
        let m = rng.uniform(-1.0, 1.0) as f64;
        v.push(m * 2f64.powi(rng.below(60) as i32 - 30));
    }
    v
}

fn cast(to: DType, saturate: bool) -> Op {
    Op::Elementwise(ElementwiseOp::Cast { to, saturate })
}

#[test]
fn casts_to_the_small_types_match_bit_for_bit() {
    let Some(lib) = lib() else { return };
    let p = probes();
    let n = p.len();
    for from in [DType::F32, DType::F16, DType::BF16, DType::F64] {
        let x = Tensor::from_vec(vec![n], p.clone()).unwrap().cast(from);
        for to in SMALL {
            for saturate in [true, false] {
                let (g, ins) = one_node(cast(to, saturate), &[&x], &[], 1);
                plan_matches_bits(lib, &format!("cast {from} -> {to} saturate={saturate}"), &g, &ins);
            }
        }
    }
    // Integers and bool: through i64 into the 4-bit types (wrapping), through f64 into the
    // float ones.
    let mut rng = Rng::new(3);
    let ints: Vec<i64> = (0..783).map(|_| rng.below(600) as i64 - 300).chain([i64::MIN, i64::MAX, 1 << 40]).collect();
    for from in [DType::I8, DType::U8, DType::I32, DType::I64, DType::Bool] {
        let x = Tensor::from_vec(vec![ints.len()], ints.clone()).unwrap().cast(from);
        for to in SMALL {
            let (g, ins) = one_node(cast(to, false), &[&x], &[], 1);
            plan_matches_bits(lib, &format!("cast {from} -> {to}"), &g, &ins);
        }
    }
}

#[test]
fn casts_from_the_small_types_match_bit_for_bit() {
    let Some(lib) = lib() else { return };
    for from in SMALL {
        let x = every_value(from);
        let targets = [DType::F32, DType::F16, DType::BF16, DType::F64, DType::I8, DType::U8, DType::I32, DType::Bool];
        for to in targets.into_iter().chain(SMALL) {
            for saturate in [true, false] {
                let (g, ins) = one_node(cast(to, saturate), &[&x], &[], 1);
                plan_matches_bits(lib, &format!("cast {from} -> {to} saturate={saturate}"), &g, &ins);
            }
        }
    }
}

#[test]
fn small_types_move_through_data_ops() {
    let Some(lib) = lib() else { return };
    for dt in SMALL {
        let x = every_value(dt);
        let n = x.len();
        let x2 = x.clone().reshape(vec![n / 4, 4]).unwrap();
        let (g, ins) = one_node(Op::Layout(kiln_ir::ops::LayoutOp::Transpose { perm: None }), &[&x2], &[], 1);
        plan_matches_bits(lib, &format!("transpose {dt}"), &g, &ins);
    }
}

fn quantize(axis: i64, block_size: usize, output_dtype: Option<DType>, saturate: bool) -> Op {
    Op::Quant(QuantOp::QuantizeLinear { axis, block_size, output_dtype, saturate })
}

fn dequantize(axis: i64, block_size: usize, output_dtype: Option<DType>) -> Op {
    Op::Quant(QuantOp::DequantizeLinear { axis, block_size, output_dtype })
}

/// The layouts of a scale over an input of shape `[a, b, c]`: per tensor, per axis 1, and
/// blocked along axis 1 in blocks of 2 (with a short last block when `b` is odd).
fn scale_layouts(shape: [usize; 3]) -> Vec<(i64, usize, Vec<usize>)> {
    let [a, b, c] = shape;
    vec![(1, 0, vec![]), (1, 0, vec![b]), (-2, 2, vec![a, b.div_ceil(2), c])]
}

#[test]
fn quantize_linear_matches_bit_for_bit() {
    let Some(lib) = lib() else { return };
    let mut rng = Rng::new(11);
    for shape in [[1, 1, 1], [2, 3, 5], [3, 7, 50]] {
        let n: usize = shape.iter().product();
        for xt in [DType::F32, DType::F16, DType::F64] {
            // Multiples of a quarter give exact ties at scale 0.5; the wide ones saturate.
            let xv: Vec<f64> = (0..n)
                .map(|i| match i % 4 {
                    0 => (rng.below(2000) as f64 - 1000.0) * 0.25,
                    1 => rng.uniform(-1e5, 1e5) as f64,
                    2 => rng.uniform(-3.0, 3.0) as f64,
                    _ => [f64::NAN, f64::INFINITY, -0.0, 1e9][rng.below(4)],
                })
                .collect();
            let x = Tensor::from_vec(shape.to_vec(), xv).unwrap().cast(xt);
            for (axis, block, sshape) in scale_layouts(shape) {
                let sn: usize = sshape.iter().product();
                let sv: Vec<f32> = (0..sn).map(|i| [0.5, 0.25, 3.0, 0.1][i % 4]).collect();
                let scale = Tensor::from_vec(sshape.clone(), sv).unwrap();
                for yt in [DType::I8, DType::U8, DType::I16, DType::U16, DType::I4, DType::U4] {
                    let zv: Vec<f64> = (0..sn).map(|i| [0.0, 3.0, -2.0, 7.0][i % 4]).collect();
                    let zp = Tensor::from_vec(sshape.clone(), zv).unwrap().cast(yt);
                    let what = format!("quantize {xt}{shape:?} -> {yt} axis {axis} block {block}");
                    let (g, ins) = one_node(quantize(axis, block, None, true), &[&x, &scale, &zp], &[], 1);
                    plan_matches_bits(lib, &what, &g, &ins);
                    // A constant f16 scale is converted to f32 by a cast first.
                    let (g, ins) =
                        one_node(quantize(axis, block, Some(yt), true), &[&x], &[Some(scale.cast(DType::F16))], 1);
                    plan_matches_bits(lib, &format!("{what} (no zero point, f16 scale)"), &g, &ins);
                }
                for yt in [DType::F8E4M3FN, DType::F8E4M3FNUZ, DType::F8E5M2, DType::F8E5M2FNUZ, DType::F4E2M1] {
                    for saturate in [true, false] {
                        let what = format!("quantize {xt}{shape:?} -> {yt} axis {axis} block {block} sat {saturate}");
                        let zp = Tensor::zeros(yt, sshape.clone()).unwrap();
                        let (g, ins) = one_node(quantize(axis, block, None, saturate), &[&x, &scale, &zp], &[], 1);
                        plan_matches_bits(lib, &what, &g, &ins);
                    }
                }
            }
        }
    }
}

#[test]
fn dequantize_linear_matches_bit_for_bit() {
    let Some(lib) = lib() else { return };
    let mut rng = Rng::new(13);
    for shape in [[1, 1, 1], [2, 3, 5], [3, 7, 50]] {
        let n: usize = shape.iter().product();
        let xt_all = [
            DType::I8,
            DType::U8,
            DType::I16,
            DType::U16,
            DType::I32,
            DType::I4,
            DType::U4,
            DType::F8E4M3FN,
            DType::F8E4M3FNUZ,
            DType::F8E5M2,
            DType::F8E5M2FNUZ,
            DType::F4E2M1,
        ];
        for xt in xt_all {
            let every = every_value(xt);
            let bytes = tensor_bytes(&every).unwrap();
            let xb: Vec<u8> = (0..n).map(|_| bytes[rng.below(bytes.len())]).collect();
            let x = if xt.size() == 1 {
                tensor_from_bytes(xt, &shape, &xb).unwrap()
            } else {
                let v: Vec<f32> = (0..n).map(|_| rng.uniform(-70000.0, 70000.0).round()).collect();
                Tensor::from_vec(shape.to_vec(), v).unwrap().cast(xt)
            };
            for (axis, block, sshape) in scale_layouts(shape) {
                let sn: usize = sshape.iter().product();
                let scale =
                    Tensor::from_vec(sshape.clone(), (0..sn).map(|i| [0.5f32, 0.3, 3.0][i % 3]).collect()).unwrap();
                let zp = if xt.is_low_precision_float() {
                    Tensor::zeros(xt, sshape.clone()).unwrap()
                } else {
                    Tensor::from_vec(sshape.clone(), (0..sn).map(|i| [0.0, 3.0, 5.0][i % 3]).collect::<Vec<f64>>())
                        .unwrap()
                        .cast(xt)
                };
                for yt in [DType::F32, DType::F16, DType::BF16] {
                    let what = format!("dequantize {xt}{shape:?} -> {yt} axis {axis} block {block}");
                    let (g, ins) = one_node(dequantize(axis, block, Some(yt)), &[&x, &scale.cast(yt), &zp], &[], 1);
                    plan_matches_bits(lib, &what, &g, &ins);
                }
                let (g, ins) = one_node(dequantize(axis, block, None), &[&x, &scale], &[], 1);
                plan_matches_bits(lib, &format!("dequantize {xt}{shape:?} axis {axis} block {block}"), &g, &ins);
            }
        }
    }
}

#[test]
fn dynamic_quantize_linear_matches_bit_for_bit() {
    let Some(lib) = lib() else { return };
    let mut rng = Rng::new(17);
    for n in SIZES {
        for (lo, hi) in [(-3.0, 5.0), (0.5, 2.0), (-4.0, -1.0), (0.0, 0.0)] {
            for dt in [DType::F32, DType::F16] {
                let mut x = rand_tensor(&mut rng, &[n], lo, hi, DType::F32);
                if n > 3 {
                    let mut v = x.to_f64_vec();
                    v[n / 2] = f64::NAN;
                    x = Tensor::from_vec(vec![n], v).unwrap().cast(DType::F32);
                }
                let x = x.cast(dt);
                let (g, ins) = one_node(Op::Quant(QuantOp::DynamicQuantizeLinear), &[&x], &[], 3);
                plan_matches_bits(lib, &format!("dynamic quantize {dt} n={n} in [{lo}, {hi})"), &g, &ins);
            }
        }
    }
}

/// Random 8-bit integers of `dt` (u8 or i8) over its whole range.
fn q8(rng: &mut Rng, shape: &[usize], dt: DType) -> Tensor {
    let n: usize = shape.iter().product();
    let lo = if dt == DType::I8 { -128.0 } else { 0.0 };
    let v: Vec<f64> = (0..n).map(|_| lo + rng.below(256) as f64).collect();
    Tensor::from_vec(shape.to_vec(), v).unwrap().cast(dt)
}

fn floats(shape: &[usize], v: &[f64], dt: DType) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_vec(shape.to_vec(), (0..n).map(|i| v[i % v.len()]).collect::<Vec<f64>>()).unwrap().cast(dt)
}

#[test]
fn integer_matmuls_match_bit_for_bit() {
    use kiln_ir::ops::LinalgOp;
    let Some(lib) = lib() else { return };
    let mut rng = Rng::new(19);
    let shapes: [(&[usize], &[usize]); 5] =
        [(&[3, 5], &[5, 4]), (&[2, 3, 7], &[2, 7, 5]), (&[2, 3, 7], &[7, 5]), (&[7], &[7, 3]), (&[1, 1], &[1, 1])];
    for (ash, bsh) in shapes {
        let m = if ash.len() > 1 { ash[ash.len() - 2] } else { 1 };
        let n = if bsh.len() > 1 { bsh[bsh.len() - 1] } else { 1 };
        for at in [DType::U8, DType::I8] {
            for bt in [DType::U8, DType::I8] {
                let (a, b) = (q8(&mut rng, ash, at), q8(&mut rng, bsh, bt));
                // A per-row zero point where A is a matrix, B's per column.
                let a_zp_shape = if ash.len() > 1 { vec![m] } else { vec![] };
                let a_zp = q8(&mut rng, &a_zp_shape, at);
                let b_zp = q8(&mut rng, &[n], bt);
                let what = format!("MatMulInteger {at}{ash:?} x {bt}{bsh:?}");
                let (g, ins) = one_node(Op::Linalg(LinalgOp::MatMulInteger), &[&a, &b, &a_zp, &b_zp], &[], 1);
                plan_matches_bits(lib, &what, &g, &ins);
                for yt in [DType::U8, DType::I8] {
                    for st in [DType::F32, DType::F16] {
                        let a_scale = floats(&[m], &[0.05, 0.013, 0.2], st);
                        let b_scale = floats(&[], &[0.031], st);
                        let y_scale = floats(&[], &[0.7], st);
                        let y_zp = q8(&mut rng, &[], yt);
                        let ins = [&a, &a_scale, &a_zp, &b, &b_scale, &b_zp, &y_scale, &y_zp];
                        let (g, ins) = one_node(Op::Linalg(LinalgOp::QLinearMatMul), &ins, &[], 1);
                        plan_matches_bits(
                            lib,
                            &format!("QLinearMatMul {at}{ash:?} x {bt}{bsh:?} -> {yt}, {st} scales"),
                            &g,
                            &ins,
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn integer_convolutions_match_bit_for_bit() {
    use kiln_ir::ops::linalg::ConvAttrs;
    use kiln_ir::ops::pool::AutoPad;
    use kiln_ir::ops::LinalgOp;
    let Some(lib) = lib() else { return };
    let mut rng = Rng::new(23);
    let attrs = |strides: &[usize], dilations: &[usize], pads: &[usize], auto_pad: AutoPad, group: usize| ConvAttrs {
        kernel_shape: vec![],
        strides: strides.to_vec(),
        dilations: dilations.to_vec(),
        pads: pads.to_vec(),
        auto_pad,
        group,
    };
    let cases: [(&[usize], &[usize], ConvAttrs); 4] = [
        (&[1, 3, 7, 6], &[4, 3, 3, 3], attrs(&[2, 1], &[1, 1], &[1, 1, 0, 2], AutoPad::NotSet, 1)),
        (&[2, 4, 5, 5], &[6, 2, 3, 3], attrs(&[1, 1], &[2, 2], &[2, 2, 2, 2], AutoPad::NotSet, 2)),
        (&[1, 2, 9], &[3, 2, 3], attrs(&[2], &[1], &[], AutoPad::SameUpper, 1)),
        (&[1, 1, 1, 1], &[1, 1, 1, 1], attrs(&[], &[], &[], AutoPad::NotSet, 1)),
    ];
    for (xs, ws, a) in cases {
        let m = ws[0];
        for xt in [DType::U8, DType::I8] {
            for wt in [DType::U8, DType::I8] {
                let (x, w) = (q8(&mut rng, xs, xt), q8(&mut rng, ws, wt));
                let x_zp = q8(&mut rng, &[], xt);
                let w_zp = q8(&mut rng, &[m], wt);
                let what = format!("ConvInteger {xt}{xs:?} * {wt}{ws:?}");
                let op = Op::Linalg(LinalgOp::ConvInteger(a.clone()));
                let (g, ins) = one_node(op, &[&x, &w, &x_zp, &w_zp], &[], 1);
                plan_matches_bits(lib, &what, &g, &ins);
                for yt in [DType::U8, DType::I8] {
                    for st in [DType::F32, DType::F16] {
                        let x_scale = floats(&[], &[0.02], st);
                        let w_scale = floats(&[m], &[0.01, 0.03, 0.007], st);
                        let y_scale = floats(&[], &[0.9], st);
                        let y_zp = q8(&mut rng, &[], yt);
                        let bias = Tensor::from_vec(vec![m], (0..m).map(|i| i as i32 * 700 - 1000).collect::<Vec<_>>())
                            .unwrap();
                        let ins = [&x, &x_scale, &x_zp, &w, &w_scale, &w_zp, &y_scale, &y_zp, &bias];
                        let op = Op::Linalg(LinalgOp::QLinearConv(a.clone()));
                        let (g, ins) = one_node(op, &ins, &[], 1);
                        plan_matches_bits(
                            lib,
                            &format!("QLinearConv {xt}{xs:?} * {wt}{ws:?} -> {yt}, {st} scales"),
                            &g,
                            &ins,
                        );
                    }
                }
            }
        }
    }
}
