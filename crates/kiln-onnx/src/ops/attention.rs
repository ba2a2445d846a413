//! Importers for the attention family: Attention and RotaryEmbedding (opset 23).

use super::Registry;
use crate::{ImportError, NodeCtx};
use kiln_ir::ops::attention::{AttentionAttrs, QkOutputMode};
use kiln_ir::ops::AttentionOp;
use kiln_ir::Op;

pub(super) fn register(reg: &mut Registry) {
    reg.insert("Attention", attention);
    reg.insert("RotaryEmbedding", rotary_embedding);
}

/// An optional attribute that must be a positive count.
fn positive(cx: &NodeCtx<'_>, name: &str) -> Result<Option<usize>, ImportError> {
    match cx.get_i64(name)? {
        None => Ok(None),
        Some(n) if n > 0 => Ok(Some(n as usize)),
        Some(n) => Err(cx.attr_error(name, format!("expected a positive count, found {n}"))),
    }
}

fn attention(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    let qk_matmul_output_mode = match cx.i64_or("qk_matmul_output_mode", 0)? {
        0 => QkOutputMode::Scores,
        1 => QkOutputMode::Masked,
        2 => QkOutputMode::Softcapped,
        3 => QkOutputMode::Probabilities,
        m => return Err(cx.attr_error("qk_matmul_output_mode", format!("expected 0, 1, 2 or 3, found {m}"))),
    };
    let softcap = cx.f32_or("softcap", 0.0)?;
    if softcap < 0.0 || softcap.is_nan() {
        return Err(cx.attr_error("softcap", format!("expected a non-negative value, found {softcap}")));
    }
    let softmax_precision = cx.get_dtype("softmax_precision")?;
    if let Some(d) = softmax_precision {
        if !d.is_float() {
            return Err(cx.attr_error("softmax_precision", format!("expected a float type, found {d}")));
        }
    }
    Ok(Op::Attention(AttentionOp::Attention(AttentionAttrs {
        q_num_heads: positive(cx, "q_num_heads")?,
        kv_num_heads: positive(cx, "kv_num_heads")?,
        is_causal: cx.bool_or("is_causal", false)?,
        scale: cx.get_f32("scale")?,
        softcap,
        qk_matmul_output_mode,
        softmax_precision,
    })))
}

fn rotary_embedding(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    let rotary_embedding_dim = cx.i64_or("rotary_embedding_dim", 0)?;
    if rotary_embedding_dim < 0 || rotary_embedding_dim % 2 != 0 {
        return Err(cx.attr_error(
            "rotary_embedding_dim",
            format!("expected a non-negative even size, found {rotary_embedding_dim}"),
        ));
    }
    let num_heads = match cx.get_i64("num_heads")? {
        None | Some(0) => None,
        Some(n) if n > 0 => Some(n as usize),
        Some(n) => return Err(cx.attr_error("num_heads", format!("expected a positive count, found {n}"))),
    };
    Ok(Op::Attention(AttentionOp::RotaryEmbedding {
        interleaved: cx.bool_or("interleaved", false)?,
        rotary_embedding_dim: rotary_embedding_dim as usize,
        num_heads,
    }))
}
