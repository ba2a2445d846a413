//! Compiles every kernel family, every variant, with NVRTC for sm_80 and sm_90, and checks
//! that each kernel the library lists is in the CUBIN.
//!
//! Runs without a GPU. Where NVRTC is absent the test prints why and passes, unless `CI` is
//! set, where it fails: CI installs NVRTC (`cargo xtask fetch-nvrtc`).

use kiln_cuda::codegen::{elementwise_kernel, igemm_kernel, wide_warp_channels, EpiRead, IgLoad, IgemmBlock, WIDE_BNS};
use kiln_cuda::kernels::KernelFamily;
use kiln_cuda::nvrtc::Nvrtc;
use kiln_ir::ops::elementwise::{BinaryOp, UnaryOp};
use kiln_ir::ops::{ElementwiseOp, Expr, ExprNode};
use kiln_ir::DType;

const ARCHS: [&str; 2] = ["sm_80", "sm_90"];

/// NVRTC with no disk cache, so that every compile really runs; `None` where it is absent and
/// the test may skip.
fn nvrtc() -> Option<Nvrtc> {
    match Nvrtc::locate() {
        Ok(n) => Some(n.with_cache_dir(None)),
        Err(e) if std::env::var_os("CI").is_some_and(|v| v == "true") => panic!("CI=true and {e}"),
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}

#[test]
fn every_family_compiles_for_sm80_and_sm90() {
    let Some(nv) = nvrtc() else { return };
    let mut failures = vec![];
    let mut kernels = 0;
    for fam in KernelFamily::ALL {
        if fam == KernelFamily::Elementwise {
            continue; // a template: compiled through codegen below
        }
        for arch in ARCHS {
            match nv.compile(fam.name(), &fam.source(), arch) {
                Ok(cubin) => {
                    for k in fam.kernels() {
                        kernels += 1;
                        if !cubin.has_kernel(&k) {
                            failures.push(format!("{arch}: {} lacks kernel {k}", fam.name()));
                        }
                    }
                }
                Err(e) => failures.push(e.to_string()),
            }
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    assert!(kernels > 200, "only {kernels} kernels checked");
}

fn op(op: ElementwiseOp, args: &[usize]) -> ExprNode {
    ExprNode::Op { op, args: args.to_vec() }
}

/// The INT8 implicit-GEMM template with the epilogues INT8 networks give it: dequantize, add a
/// bias, ReLU, and store f32, f16, or i8 (the next layer's quantization), at each block shape.
#[test]
fn generated_igemm_kernels_compile() {
    let Some(nv) = nvrtc() else { return };
    let dequant_bias_relu = |to: DType| Expr {
        nodes: vec![
            ExprNode::Input(0),
            op(ElementwiseOp::Cast { to: DType::F32, saturate: true }, &[0]),
            ExprNode::Input(1),
            op(ElementwiseOp::Binary(BinaryOp::Mul), &[1, 2]),
            ExprNode::Input(2),
            op(ElementwiseOp::Binary(BinaryOp::Add), &[3, 4]),
            op(ElementwiseOp::Unary(UnaryOp::Relu), &[5]),
            op(ElementwiseOp::Cast { to, saturate: true }, &[6]),
        ],
    };
    let mut failures = vec![];
    // Every way of reading an input, vectorized and not (what the inputs mean does not
    // matter to the compiler).
    let reads = |vec: bool| {
        let scale = if vec { EpiRead::Channels } else { EpiRead::Strided };
        [(DType::F32, scale), (DType::F32, EpiRead::Dense)]
    };
    // The plain-product and narrow loaders with each output type (the convolution's with the
    // others).
    let mut cases = vec![];
    for (to, vec, load) in [
        (DType::F32, true, IgLoad::Conv),
        (DType::F16, false, IgLoad::Dense),
        (DType::I8, true, IgLoad::Dense),
        (DType::I8, false, IgLoad::Conv),
        (DType::I8, true, IgLoad::Narrow),
        (DType::F16, false, IgLoad::Narrow),
    ] {
        // The three block shapes, split-K clusters, and the persistent ping-pong kernel with
        // both warp shapes.
        for (bn, wn, persistent, split) in [
            (64, 32, false, 1),
            (128, 32, false, 1),
            (128, 64, false, 1),
            (64, 32, false, 8),
            (128, 32, false, 2),
            (128, 32, true, 1),
            (128, 64, true, 1),
        ] {
            cases.push((IgemmBlock { persistent, split, ..IgemmBlock::new(bn, wn, load) }, to, vec));
        }
    }
    // Wide blocks, for plain products only, one tile a block and tile after tile.
    for (to, vec) in [(DType::F16, true), (DType::I8, true), (DType::F32, false)] {
        for bn in WIDE_BNS {
            for looped in [false, true] {
                cases.push((
                    IgemmBlock { looped, ..IgemmBlock::new(bn, wide_warp_channels(bn), IgLoad::Dense) },
                    to,
                    vec,
                ));
            }
        }
    }
    // LayerNorm epilogues over clusters of 2, 6 and 8 blocks (sm_80 compiles the trap).
    for (to, ln) in [(DType::F16, 6), (DType::F32, 2), (DType::BF16, 8)] {
        cases.push((IgemmBlock { ln, ..IgemmBlock::new(128, 32, IgLoad::Dense) }, to, true));
    }
    for (block, to, vec) in cases {
        let k = igemm_kernel(&dequant_bias_relu(to), &reads(vec), block, vec).expect("generates");
        for arch in ARCHS {
            match nv.compile(&k.name, &k.source, arch) {
                Ok(c) if c.has_kernel(&k.name) => {}
                Ok(_) => failures.push(format!("{arch}: CUBIN lacks {}", k.name)),
                Err(err) => failures.push(format!("{}: {err}", k.name)),
            }
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

/// One expression per elementwise op the code generator lowers, over each float type, plus
/// the integer and bool ops over their types.
#[test]
fn generated_elementwise_kernels_compile() {
    let Some(nv) = nvrtc() else { return };
    let cases = elementwise_cases();
    // NVRTC programs are independent, so the compiles run on every core.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = cases.len().div_ceil(threads);
    let results: Vec<(usize, Vec<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = cases.chunks(chunk).map(|part| s.spawn(|| compile_cases(&nv, part))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| (0, vec!["a compile thread panicked".into()])))
            .collect()
    });
    let n: usize = results.iter().map(|r| r.0).sum();
    let failures: Vec<String> = results.into_iter().flat_map(|r| r.1).collect();
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    assert!(n > 100, "only {n} kernels compiled");
}

/// Generates and compiles each case for every architecture: how many compiled, and the failures.
fn compile_cases(nv: &Nvrtc, cases: &[(Expr, Vec<DType>)]) -> (usize, Vec<String>) {
    let mut failures = vec![];
    let mut n = 0;
    for (e, inputs) in cases {
        let k = match elementwise_kernel(e, inputs) {
            Ok(k) => k,
            Err(err) => {
                failures.push(format!("{e} over {inputs:?}: {err}"));
                continue;
            }
        };
        for arch in ARCHS {
            match nv.compile(&k.name, &k.source, arch) {
                Ok(c) if c.has_kernel(&k.name) => n += 1,
                Ok(_) => failures.push(format!("{arch}: {e}: CUBIN lacks {}", k.name)),
                Err(err) => failures.push(format!("{e} over {inputs:?}: {err}")),
            }
        }
    }
    (n, failures)
}

fn elementwise_cases() -> Vec<(Expr, Vec<DType>)> {
    use UnaryOp::*;
    let unary_float = [
        Abs,
        Neg,
        Exp,
        Log,
        Sqrt,
        Reciprocal,
        Floor,
        Ceil,
        Round,
        Sign,
        Erf,
        Sin,
        Cos,
        Tan,
        Asin,
        Acos,
        Atan,
        Sinh,
        Cosh,
        Asinh,
        Acosh,
        Atanh,
        Tanh,
        IsNaN,
        IsInf { detect_negative: true, detect_positive: false },
        Relu,
        LeakyRelu { alpha: 0.01 },
        Elu { alpha: 1.0 },
        Selu { alpha: 1.67, gamma: 1.05 },
        Celu { alpha: 1.0 },
        Sigmoid,
        HardSigmoid { alpha: 0.2, beta: 0.5 },
        HardSwish,
        Softplus,
        Softsign,
        ThresholdedRelu { alpha: 1.0 },
        Gelu { tanh: false },
        Gelu { tanh: true },
        Mish,
        Shrink { bias: 0.5, lambd: 0.5 },
        Swish { alpha: 1.0 },
    ];
    let mut cases = vec![];
    for dt in [DType::F32, DType::F16, DType::BF16, DType::F64] {
        for u in unary_float {
            cases.push((Expr::op(ElementwiseOp::Unary(u), 1), vec![dt]));
        }
    }
    use BinaryOp::*;
    for dt in [DType::F32, DType::F16] {
        for b in [
            Add,
            Sub,
            Mul,
            Div,
            Pow,
            Mod { fmod: true },
            Mod { fmod: false },
            Equal,
            Less,
            LessOrEqual,
            Greater,
            GreaterOrEqual,
            PRelu,
        ] {
            cases.push((Expr::op(ElementwiseOp::Binary(b), 2), vec![dt, dt]));
        }
    }
    for dt in [DType::I32, DType::I64, DType::U8, DType::I8] {
        for b in [
            Add,
            Sub,
            Mul,
            Div,
            Pow,
            Mod { fmod: true },
            Mod { fmod: false },
            BitShift { left: true },
            BitShift { left: false },
            BitwiseAnd,
            BitwiseOr,
            BitwiseXor,
            Equal,
            Less,
        ] {
            cases.push((Expr::op(ElementwiseOp::Binary(b), 2), vec![dt, dt]));
        }
        for u in [Abs, Neg, Relu, Sign, BitwiseNot] {
            cases.push((Expr::op(ElementwiseOp::Unary(u), 1), vec![dt]));
        }
    }
    for b in [And, Or, Xor] {
        cases.push((Expr::op(ElementwiseOp::Binary(b), 2), vec![DType::Bool, DType::Bool]));
    }
    cases.push((Expr::op(ElementwiseOp::Unary(Not), 1), vec![DType::Bool]));
    cases.push((Expr::op(ElementwiseOp::Binary(Pow), 2), vec![DType::F32, DType::I64]));
    for v in [
        kiln_ir::ops::elementwise::VariadicOp::Max,
        kiln_ir::ops::elementwise::VariadicOp::Min,
        kiln_ir::ops::elementwise::VariadicOp::Sum,
        kiln_ir::ops::elementwise::VariadicOp::Mean,
    ] {
        cases.push((Expr::op(ElementwiseOp::Variadic(v), 3), vec![DType::F16; 3]));
        cases.push((Expr::op(ElementwiseOp::Variadic(v), 2), vec![DType::I32; 2]));
    }
    cases.push((Expr::op(ElementwiseOp::Where, 3), vec![DType::Bool, DType::F16, DType::F16]));
    cases.push((Expr::op(ElementwiseOp::Clip { min: Some(0.0), max: Some(6.0) }, 1), vec![DType::F32]));
    cases.push((Expr::op(ElementwiseOp::Clip { min: None, max: None }, 3), vec![DType::F16; 3]));
    for to in
        [DType::F32, DType::F16, DType::BF16, DType::F64, DType::I8, DType::U8, DType::I32, DType::I64, DType::Bool]
    {
        for from in [DType::F32, DType::F16, DType::I64, DType::Bool] {
            cases.push((Expr::op(ElementwiseOp::Cast { to, saturate: true }, 1), vec![from]));
        }
    }
    cases.push((Expr::op(ElementwiseOp::CastLike { saturate: true }, 2), vec![DType::F32, DType::F16]));
    // The small types, both ways, with and without saturation.
    let small = [
        DType::F8E4M3FN,
        DType::F8E4M3FNUZ,
        DType::F8E5M2,
        DType::F8E5M2FNUZ,
        DType::F4E2M1,
        DType::F8E8M0,
        DType::I4,
        DType::U4,
    ];
    for s in small {
        for other in [DType::F32, DType::F16, DType::BF16, DType::F64, DType::I8, DType::U8, DType::Bool, DType::F8E5M2]
        {
            for saturate in [true, false] {
                cases.push((Expr::op(ElementwiseOp::Cast { to: s, saturate }, 1), vec![other]));
            }
            cases.push((Expr::op(ElementwiseOp::Cast { to: other, saturate: true }, 1), vec![s]));
        }
    }
    // A scalar in every type.
    for dt in [DType::F32, DType::F16, DType::BF16, DType::F64, DType::I32, DType::I64, DType::U64, DType::Bool] {
        let e = Expr {
            nodes: vec![
                ExprNode::Input(0),
                ExprNode::Scalar { value: 3.0, dtype: dt },
                op(ElementwiseOp::Binary(Equal), &[0, 1]),
            ],
        };
        cases.push((e, vec![dt]));
    }
    cases
}
