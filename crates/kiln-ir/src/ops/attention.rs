//! Attention and rotary embeddings: the fused attention op of opset 23 and RotaryEmbedding.
//!
//! Attention is kept whole in the IR (rather than decomposed into MatMul, Softmax and friends)
//! so that a backend can lower it to one fused flash-attention kernel.

use super::infer::*;
use crate::{DType, Dim, TypeInfo};

/// Which intermediate of Attention its optional fourth output `qk_matmul_output` returns.
///
/// The stages come in the order of opset 23: `Q K^T`, plus the mask, softcapped, softmaxed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QkOutputMode {
    /// The scaled product `Q K^T` (mode 0).
    Scores,
    /// The scores plus the attention bias: mask, causal mask and padding (mode 1).
    Masked,
    /// The masked scores after the softcap (mode 2).
    Softcapped,
    /// The attention probabilities after the softmax (mode 3).
    Probabilities,
}

/// The attributes of Attention, with defaults resolved.
///
/// Inputs are `Q, K, V, attn_mask?, past_key?, past_value?, nonpad_kv_seqlen?` (the last from
/// opset 24); outputs `Y, present_key?, present_value?, qk_matmul_output?`. Q, K and V are either
/// 4-D `[batch, heads, seq, head_size]` or 3-D `[batch, seq, heads * head_size]`.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionAttrs {
    /// Query heads of 3-D inputs (required there); 4-D inputs carry them in dim 1.
    pub q_num_heads: Option<usize>,
    /// Key/value heads of 3-D inputs (required there). Fewer than `q_num_heads` means grouped
    /// query attention: each key/value head serves `q_num_heads / kv_num_heads` consecutive
    /// query heads.
    pub kv_num_heads: Option<usize>,
    /// Whether query `i` only sees keys `j <= i + past_sequence_length`.
    pub is_causal: bool,
    /// The factor of `Q K^T`; `1 / sqrt(head_size)` when `None`.
    pub scale: Option<f32>,
    /// When positive, scores become `softcap * tanh(scores / softcap)`; 0 disables it.
    pub softcap: f32,
    /// What the fourth output returns.
    pub qk_matmul_output_mode: QkOutputMode,
    /// The precision the softmax is computed in; that of Q when `None`.
    pub softmax_precision: Option<DType>,
}

/// Attention and rotary embeddings: the fused attention op of opset 23 and RotaryEmbedding.
#[derive(Clone, Debug, PartialEq)]
pub enum AttentionOp {
    /// Scaled dot-product attention with optional mask, key/value cache and grouped-query heads.
    Attention(AttentionAttrs),
    /// Rotates pairs of channels of `X` by the angles of `cos_cache, sin_cache` (inputs 1 and 2),
    /// looked up by `position_ids` (input 3) when present. `X` is `[batch, heads, seq, head_size]`
    /// or `[batch, seq, heads * head_size]`.
    RotaryEmbedding {
        /// Whether the rotated pairs are adjacent channels `(2i, 2i+1)` (else `(i, i + d/2)`).
        interleaved: bool,
        /// How many leading channels of each head rotate; all when 0.
        rotary_embedding_dim: usize,
        /// Heads of a 3-D `X` (required there).
        num_heads: Option<usize>,
    },
}

impl AttentionOp {
    /// The ONNX op name.
    pub fn name(&self) -> &'static str {
        match self {
            AttentionOp::Attention(_) => "Attention",
            AttentionOp::RotaryEmbedding { .. } => "RotaryEmbedding",
        }
    }

    /// The type rule: output types from input types.
    pub fn infer(&self, inputs: &[Option<InferInput<'_>>], num_outputs: usize) -> Result<Vec<TypeInfo>, String> {
        let x = input_ty(inputs, 0);
        match self {
            AttentionOp::RotaryEmbedding { .. } => Ok(vec![x]),
            AttentionOp::Attention(a) => attention_types(a, inputs, num_outputs),
        }
    }
}

/// The output types of Attention: `Y`, `present_key`, `present_value`, `qk_matmul_output`.
fn attention_types(
    a: &AttentionAttrs,
    inputs: &[Option<InferInput<'_>>],
    num_outputs: usize,
) -> Result<Vec<TypeInfo>, String> {
    let (q, k, v) = (input_ty(inputs, 0), input_ty(inputs, 1), input_ty(inputs, 2));
    let rank = q.rank().or(k.rank()).or(v.rank());
    if let Some(r) = rank {
        if r != 3 && r != 4 {
            return Err(format!("Q, K and V must be 3-D or 4-D, found rank {r}"));
        }
        for (name, t) in [("Q", &q), ("K", &k), ("V", &v)] {
            if t.rank().is_some_and(|n| n != r) {
                return Err(format!("Q, K and V must have the same rank, {name} has {}", t.rank().unwrap_or(0)));
            }
        }
    }
    let dim = |t: &TypeInfo, i: usize| t.shape.as_ref().and_then(|s| s.get(i).cloned()).unwrap_or(Dim::Unknown);
    let div = |d: Dim, n: Option<usize>| match (d.known(), n) {
        (Some(d), Some(n)) if n > 0 => Dim::Known(d / n),
        _ => Dim::Unknown,
    };
    // [batch, heads, seq, head_size] of each of Q, K, V, whatever their rank.
    let heads_view = |t: &TypeInfo, heads: Option<usize>| -> [Dim; 4] {
        match rank {
            Some(3) => [dim(t, 0), heads.map(Dim::Known).unwrap_or(Dim::Unknown), dim(t, 1), div(dim(t, 2), heads)],
            _ => [dim(t, 0), dim(t, 1), dim(t, 2), dim(t, 3)],
        }
    };
    let [batch, q_heads, q_seq, _] = heads_view(&q, a.q_num_heads);
    let kh = heads_view(&k, a.kv_num_heads);
    let vh = heads_view(&v, a.kv_num_heads);
    let past_seq = |i: usize| -> Option<Dim> {
        inputs
            .get(i)
            .and_then(|x| x.as_ref())
            .map(|x| x.ty.shape.as_ref().and_then(|s| s.get(2).cloned()).unwrap_or(Dim::Unknown))
    };
    let total = |seq: &Dim, past: Option<Dim>| match (seq, past) {
        (s, None) => s.clone(),
        (Dim::Known(s), Some(Dim::Known(p))) => Dim::Known(s + p),
        _ => Dim::Unknown,
    };
    let k_total = total(&kh[2], past_seq(4));
    let v_total = total(&vh[2], past_seq(5));
    let y_shape = match rank {
        Some(3) => {
            let hidden = match (q_heads.known(), vh[3].known()) {
                (Some(h), Some(e)) => Dim::Known(h * e),
                _ => Dim::Unknown,
            };
            Some(vec![batch.clone(), q_seq.clone(), hidden])
        }
        Some(_) => Some(vec![batch.clone(), q_heads.clone(), q_seq.clone(), vh[3].clone()]),
        None => None,
    };
    let ty = |shape: Option<Vec<Dim>>| TypeInfo { dtype: q.dtype, shape };
    let mut out = vec![ty(y_shape)];
    if num_outputs > 1 {
        let shape = rank.map(|_| vec![batch.clone(), kh[1].clone(), k_total.clone(), kh[3].clone()]);
        out.push(TypeInfo { dtype: k.dtype.or(q.dtype), shape });
    }
    if num_outputs > 2 {
        let shape = rank.map(|_| vec![batch.clone(), vh[1].clone(), v_total, vh[3].clone()]);
        out.push(TypeInfo { dtype: v.dtype.or(q.dtype), shape });
    }
    if num_outputs > 3 {
        out.push(ty(rank.map(|_| vec![batch, q_heads, q_seq, k_total])));
    }
    Ok(out)
}
