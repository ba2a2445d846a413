//! Importers for the signal family.

use super::Registry;
use crate::{ImportError, NodeCtx};
use kiln_ir::ops::signal::WindowFunction;
use kiln_ir::ops::SignalOp;
use kiln_ir::{DType, Op};

pub(super) fn register(reg: &mut Registry) {
    reg.insert("DFT", dft);
    reg.insert("STFT", stft);
    reg.insert("HannWindow", hann_window);
    reg.insert("HammingWindow", hamming_window);
    reg.insert("BlackmanWindow", blackman_window);
    reg.insert("MelWeightMatrix", mel_weight_matrix);
}

fn dft(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    // Opset 20 moved `axis` from an attribute (default 1) to input 2 (default -2).
    let axis = if cx.opset() < 20 { Some(cx.i64_or("axis", 1)?) } else { None };
    Ok(Op::Signal(SignalOp::DFT {
        inverse: cx.bool_or("inverse", false)?,
        onesided: cx.bool_or("onesided", false)?,
        axis,
    }))
}

fn stft(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    Ok(Op::Signal(SignalOp::STFT { onesided: cx.bool_or("onesided", true)? }))
}

fn output_datatype(cx: &NodeCtx<'_>, allowed: &[DType]) -> Result<DType, ImportError> {
    let dtype = cx.get_dtype("output_datatype")?.unwrap_or(DType::F32);
    if !allowed.contains(&dtype) {
        return Err(cx.attr_error("output_datatype", format!("{dtype} is not a type this op can output")));
    }
    Ok(dtype)
}

fn window(cx: &NodeCtx<'_>, function: WindowFunction) -> Result<Op, ImportError> {
    let numeric: Vec<DType> = DType::ALL.into_iter().filter(|&d| d != DType::Bool).collect();
    Ok(Op::Signal(SignalOp::Window {
        function,
        periodic: cx.bool_or("periodic", true)?,
        output_datatype: output_datatype(cx, &numeric)?,
    }))
}

fn hann_window(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    window(cx, WindowFunction::Hann)
}

fn hamming_window(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    window(cx, WindowFunction::Hamming)
}

fn blackman_window(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    window(cx, WindowFunction::Blackman)
}

fn mel_weight_matrix(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    let numeric: Vec<DType> = DType::ALL.into_iter().filter(|&d| d != DType::Bool).collect();
    Ok(Op::Signal(SignalOp::MelWeightMatrix { output_datatype: output_datatype(cx, &numeric)? }))
}
