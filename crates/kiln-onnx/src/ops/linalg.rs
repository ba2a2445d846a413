//! Importers for the linalg family: matrix products and convolutions.

use super::Registry;
use crate::{ImportError, NodeCtx};
use kiln_ir::ops::linalg::{ConvAttrs, ConvTransposeAttrs, EinsumEquation};
use kiln_ir::ops::pool::AutoPad;
use kiln_ir::ops::LinalgOp;
use kiln_ir::Op;

pub(super) fn register(reg: &mut Registry) {
    reg.insert("MatMul", matmul);
    reg.insert("Gemm", gemm);
    reg.insert("Einsum", einsum);
    reg.insert("MatMulInteger", matmul_integer);
    reg.insert("QLinearMatMul", qlinear_matmul);
    reg.insert("Conv", conv);
    reg.insert("ConvTranspose", conv_transpose);
    reg.insert("ConvInteger", conv_integer);
    reg.insert("QLinearConv", qlinear_conv);
    reg.insert("Det", det);
}

fn matmul(_: &NodeCtx<'_>) -> Result<Op, ImportError> {
    Ok(Op::Linalg(LinalgOp::MatMul))
}

fn matmul_integer(_: &NodeCtx<'_>) -> Result<Op, ImportError> {
    Ok(Op::Linalg(LinalgOp::MatMulInteger))
}

fn qlinear_matmul(_: &NodeCtx<'_>) -> Result<Op, ImportError> {
    Ok(Op::Linalg(LinalgOp::QLinearMatMul))
}

fn det(_: &NodeCtx<'_>) -> Result<Op, ImportError> {
    Ok(Op::Linalg(LinalgOp::Det))
}

fn gemm(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    // Opsets before 7 had a `broadcast` flag; unidirectional broadcasting of C is what every
    // exporter meant by it, and what opset 7 made the rule.
    Ok(Op::Linalg(LinalgOp::Gemm {
        alpha: cx.f32_or("alpha", 1.0)?,
        beta: cx.f32_or("beta", 1.0)?,
        trans_a: cx.bool_or("transA", false)?,
        trans_b: cx.bool_or("transB", false)?,
    }))
}

fn einsum(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    let text = cx.get_string("equation")?.ok_or_else(|| cx.attr_error("equation", "required attribute is missing"))?;
    let equation = EinsumEquation::parse(&text).map_err(|e| cx.attr_error("equation", e))?;
    if equation.inputs.len() != cx.num_inputs() {
        return Err(cx.attr_error(
            "equation",
            format!("'{text}' has {} operands but the node has {} inputs", equation.inputs.len(), cx.num_inputs()),
        ));
    }
    Ok(Op::Linalg(LinalgOp::Einsum { equation }))
}

fn conv(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    Ok(Op::Linalg(LinalgOp::Conv(conv_attrs(cx, 1)?)))
}

fn conv_integer(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    Ok(Op::Linalg(LinalgOp::ConvInteger(conv_attrs(cx, 1)?)))
}

fn qlinear_conv(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    Ok(Op::Linalg(LinalgOp::QLinearConv(conv_attrs(cx, 3)?)))
}

fn auto_pad(cx: &NodeCtx<'_>) -> Result<AutoPad, ImportError> {
    match cx.string_or("auto_pad", "NOTSET")?.as_str() {
        "NOTSET" => Ok(AutoPad::NotSet),
        "SAME_UPPER" => Ok(AutoPad::SameUpper),
        "SAME_LOWER" => Ok(AutoPad::SameLower),
        "VALID" => Ok(AutoPad::Valid),
        other => {
            Err(cx.attr_error("auto_pad", format!("expected NOTSET, SAME_UPPER, SAME_LOWER or VALID, found {other}")))
        }
    }
}

/// A list of sizes, each at least `min`.
fn sizes(cx: &NodeCtx<'_>, name: &str, min: i64) -> Result<Option<Vec<usize>>, ImportError> {
    match cx.get_ints(name)? {
        None => Ok(None),
        Some(v) => match v.iter().find(|&&x| x < min) {
            Some(bad) => Err(cx.attr_error(name, format!("expected values of at least {min}, found {bad}"))),
            None => Ok(Some(v.into_iter().map(|x| x as usize).collect())),
        },
    }
}

/// The per-axis attributes shared by the convolutions, checked against each other and filled
/// with their defaults where the spatial rank is known.
struct Geometry {
    kernel_shape: Vec<usize>,
    strides: Vec<usize>,
    dilations: Vec<usize>,
    pads: Vec<usize>,
    auto_pad: AutoPad,
    group: usize,
}

fn geometry(
    cx: &NodeCtx<'_>,
    weight: usize,
    extra: &[(&str, usize)],
) -> Result<(Geometry, Option<usize>), ImportError> {
    let kernel_shape = sizes(cx, "kernel_shape", 1)?;
    let strides = sizes(cx, "strides", 1)?;
    let dilations = sizes(cx, "dilations", 1)?;
    let pads = sizes(cx, "pads", 0)?;
    let group = cx.i64_or("group", 1)?;
    if group < 1 {
        return Err(cx.attr_error("group", format!("expected a positive group count, found {group}")));
    }
    let const_kernel = cx.const_input(weight).filter(|w| w.rank() >= 3).map(|w| w.shape()[2..].to_vec());
    // The spatial rank, from whichever source tells it.
    let rank = kernel_shape
        .as_ref()
        .map(|k| k.len())
        .or_else(|| const_kernel.as_ref().map(|k| k.len()))
        .or_else(|| strides.as_ref().map(|s| s.len()))
        .or_else(|| dilations.as_ref().map(|s| s.len()))
        .or_else(|| pads.as_ref().map(|s| s.len() / 2))
        .or_else(|| extra.iter().find(|(_, n)| *n > 0).map(|(_, n)| *n));
    if let (Some(k), Some(ck)) = (&kernel_shape, &const_kernel) {
        if k != ck {
            return Err(cx.attr_error("kernel_shape", format!("{k:?} does not match the weight's spatial dims {ck:?}")));
        }
    }
    let fill = |name: &str, v: Option<Vec<usize>>, n: Option<usize>, default: usize| match (v, n) {
        (Some(v), Some(n)) if v.len() != n => {
            Err(cx.attr_error(name, format!("expected {n} values for the spatial dims, found {}", v.len())))
        }
        (Some(v), _) => Ok(v),
        (None, Some(n)) => Ok(vec![default; n]),
        (None, None) => Ok(vec![]),
    };
    for (name, n) in extra {
        if let (Some(r), true) = (rank, *n > 0) {
            if *n != r {
                return Err(cx.attr_error(name, format!("expected {r} values for the spatial dims, found {n}")));
            }
        }
    }
    let g = Geometry {
        kernel_shape: kernel_shape.or(const_kernel).unwrap_or_default(),
        strides: fill("strides", strides, rank, 1)?,
        dilations: fill("dilations", dilations, rank, 1)?,
        pads: fill("pads", pads, rank.map(|r| 2 * r), 0)?,
        auto_pad: auto_pad(cx)?,
        group: group as usize,
    };
    Ok((g, rank))
}

fn conv_attrs(cx: &NodeCtx<'_>, weight: usize) -> Result<ConvAttrs, ImportError> {
    let (g, _) = geometry(cx, weight, &[])?;
    Ok(ConvAttrs {
        kernel_shape: g.kernel_shape,
        strides: g.strides,
        dilations: g.dilations,
        pads: g.pads,
        auto_pad: g.auto_pad,
        group: g.group,
    })
}

fn conv_transpose(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    let output_padding = sizes(cx, "output_padding", 0)?;
    let output_shape = sizes(cx, "output_shape", 0)?;
    let extra = [
        ("output_padding", output_padding.as_ref().map_or(0, |v| v.len())),
        ("output_shape", output_shape.as_ref().map_or(0, |v| v.len())),
    ];
    let (g, rank) = geometry(cx, 1, &extra)?;
    let output_padding = match (output_padding, rank) {
        (Some(v), _) => v,
        (None, Some(r)) => vec![0; r],
        (None, None) => vec![],
    };
    Ok(Op::Linalg(LinalgOp::ConvTranspose(ConvTransposeAttrs {
        kernel_shape: g.kernel_shape,
        strides: g.strides,
        dilations: g.dilations,
        pads: g.pads,
        output_padding,
        output_shape,
        auto_pad: g.auto_pad,
        group: g.group,
    })))
}
