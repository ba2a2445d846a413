//! Writes the generated kernels that `emu/generated.cpp` runs on the host into a folder, with
//! the CUDA headers taken out and each kernel renamed `kernel_<case>` (see `emu/run.sh`).

use kiln_cuda::codegen::{elementwise_kernel, igemm_kernel, wide_warp_channels, EpiRead, IgLoad, IgemmBlock, WIDE_BNS};
use kiln_ir::ops::elementwise::{BinaryOp, UnaryOp};
use kiln_ir::ops::{ElementwiseOp, Expr, ExprNode};
use kiln_ir::DType;

fn node(op: ElementwiseOp, args: &[usize]) -> ExprNode {
    ExprNode::Op { op, args: args.to_vec() }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).ok_or("usage: emu_dump <folder>")?;
    let silu = Expr {
        nodes: vec![
            ExprNode::Input(0),
            node(ElementwiseOp::Unary(UnaryOp::Sigmoid), &[0]),
            node(ElementwiseOp::Binary(BinaryOp::Mul), &[0, 1]),
        ],
    };
    let bias_residual_relu = Expr {
        nodes: vec![
            ExprNode::Input(0),
            ExprNode::Input(1),
            node(ElementwiseOp::Binary(BinaryOp::Add), &[0, 1]),
            node(ElementwiseOp::Unary(UnaryOp::Relu), &[2]),
            ExprNode::Input(2),
            node(ElementwiseOp::Binary(BinaryOp::Add), &[3, 4]),
        ],
    };
    let pymod = Expr::op(ElementwiseOp::Binary(BinaryOp::Mod { fmod: false }), 2);
    let cases = [
        ("silu", silu, vec![DType::F16]),
        ("brr", bias_residual_relu, vec![DType::F32; 3]),
        ("pymod", pymod, vec![DType::I32; 2]),
    ];
    // The INT8 implicit GEMM's epilogue: f16(relu(f32(acc) * scale[c] + bias[c] + f32(res[r, c]))),
    // with res f16 and laid out as the output. Vectorized kernels (`v`, for channels a
    // multiple of 4) read the bias once per thread; the others (`s`) read it by its strides.
    let dequant_bias_res_relu = Expr {
        nodes: vec![
            ExprNode::Input(0),
            node(ElementwiseOp::Cast { to: DType::F32, saturate: true }, &[0]),
            ExprNode::Input(1),
            node(ElementwiseOp::Binary(BinaryOp::Mul), &[1, 2]),
            ExprNode::Input(2),
            node(ElementwiseOp::Binary(BinaryOp::Add), &[3, 4]),
            ExprNode::Input(3),
            node(ElementwiseOp::Cast { to: DType::F32, saturate: true }, &[6]),
            node(ElementwiseOp::Binary(BinaryOp::Add), &[5, 7]),
            node(ElementwiseOp::Unary(UnaryOp::Relu), &[8]),
            node(ElementwiseOp::Cast { to: DType::F16, saturate: true }, &[9]),
        ],
    };
    let mut kernels = vec![];
    for (name, e, ins) in cases {
        kernels.push((name.to_string(), elementwise_kernel(&e, &ins)?));
    }
    // Vectorized and element by element, and vectorized with the plain-product loader ("d")
    // and the narrow one ("n").
    for (bn, wn) in [(64, 32), (128, 32), (128, 64)] {
        for (vec, load, kind) in [
            (true, IgLoad::Conv, "v"),
            (false, IgLoad::Conv, "s"),
            (true, IgLoad::Dense, "d"),
            (true, IgLoad::Narrow, "n"),
        ] {
            let bias = if vec { EpiRead::Channels } else { EpiRead::Strided };
            let reads = [(DType::F32, EpiRead::Channels), (DType::F32, bias), (DType::F16, EpiRead::Dense)];
            let name = format!("igemm{bn}w{wn}{kind}");
            kernels.push((name, igemm_kernel(&dequant_bias_res_relu, &reads, IgemmBlock::new(bn, wn, load), vec)?));
        }
    }
    // The wide blocks (a plain product's 128 x 192 and 128 x 256 tiles), each one tile a
    // block, and taking tile after tile ("t").
    let reads = [(DType::F32, EpiRead::Channels), (DType::F32, EpiRead::Channels), (DType::F16, EpiRead::Dense)];
    for bn in WIDE_BNS {
        let wn = wide_warp_channels(bn);
        for looped in [false, true] {
            let block = IgemmBlock { looped, ..IgemmBlock::new(bn, wn, IgLoad::Dense) };
            let name = format!("igemm{bn}w{wn}{}d", if looped { "t" } else { "" });
            kernels.push((name, igemm_kernel(&dequant_bias_res_relu, &reads, block, true)?));
        }
    }
    // The persistent ping-pong kernel with both warp shapes, the same three ways.
    for wn in [32, 64] {
        for (vec, load, kind) in [(true, IgLoad::Conv, "v"), (false, IgLoad::Conv, "s"), (true, IgLoad::Dense, "d")] {
            let bias = if vec { EpiRead::Channels } else { EpiRead::Strided };
            let reads = [(DType::F32, EpiRead::Channels), (DType::F32, bias), (DType::F16, EpiRead::Dense)];
            let block = IgemmBlock { persistent: true, ..IgemmBlock::new(128, wn, load) };
            let k = igemm_kernel(&dequant_bias_res_relu, &reads, block, vec)?;
            kernels.push((format!("igemm128w{wn}p{kind}"), k));
        }
    }
    for (name, k) in kernels {
        let src = k
            .source
            .replace("#include <cuda_fp16.h>", "")
            .replace("#include <cuda_bf16.h>", "")
            .replace("#pragma once", "")
            .replace(&k.name, &format!("kernel_{name}"));
        std::fs::write(std::path::Path::new(&dir).join(format!("{name}.inc")), src)?;
    }
    Ok(())
}
