//! CPU kernels for the attention family: Attention and RotaryEmbedding.
//!
//! Both compute in f32 (f16, bf16 and f64 inputs are converted and the results cast back).
//! Attention follows the opset 23 function body of ONNX 1.19: scores `Q K^T * scale`, plus the
//! bias (mask, causal mask, key padding), then the softcap, the softmax and the product with `V`.
//! It runs one task per (batch, query head) and never materializes the whole score tensor
//! unless the fourth output asks for it.

use super::common::{expect_float, from_f32, input, opt_input, to_f32};
use crate::{bail, OpError, OpResult};
use kiln_ir::ops::attention::{AttentionAttrs, QkOutputMode};
use kiln_ir::ops::infer::broadcast_shapes;
use kiln_ir::ops::AttentionOp;
use kiln_ir::{DType, Elem, Tensor};
use rayon::prelude::*;

pub(super) fn eval(op: &AttentionOp, inputs: &[Option<&Tensor>], num_outputs: usize) -> OpResult {
    match op {
        AttentionOp::Attention(a) => attention(a, inputs, num_outputs),
        AttentionOp::RotaryEmbedding { interleaved, rotary_embedding_dim, num_heads } => {
            rotary_embedding(inputs, *interleaved, *rotary_embedding_dim, *num_heads)
        }
    }
}

/// The `[batch, heads, seq, head_size]` view of a 3-D or 4-D Q, K or V.
fn head_dims(t: &Tensor, heads: Option<usize>, name: &str, attr: &str) -> Result<[usize; 4], OpError> {
    match *t.shape() {
        [b, h, s, e] => Ok([b, h, s, e]),
        [b, s, hidden] => {
            let Some(h) = heads else {
                bail!("3-D {name} needs the attribute {attr}");
            };
            if hidden % h != 0 {
                bail!("the hidden size {hidden} of {name} is not a multiple of {attr} = {h}");
            }
            Ok([b, h, s, hidden / h])
        }
        _ => bail!("{name} must be 3-D or 4-D, found shape {:?}", t.shape()),
    }
}

/// Swaps dims 1 and 2 of a `[d0, d1, d2, d3]` row-major array.
fn swap_12<T: Copy>(v: &[T], [d0, d1, d2, d3]: [usize; 4]) -> Vec<T> {
    let mut out = Vec::with_capacity(v.len());
    for a in 0..d0 {
        for c in 0..d2 {
            for b in 0..d1 {
                let at = ((a * d1 + b) * d2 + c) * d3;
                out.extend_from_slice(&v[at..at + d3]);
            }
        }
    }
    out
}

/// The values of Q, K or V as f32 in `[batch, heads, seq, head_size]` order.
fn heads_first_f32(t: &Tensor, [b, h, s, e]: [usize; 4]) -> Vec<f32> {
    let v = to_f32(t);
    if t.rank() == 3 {
        swap_12(&v, [b, s, h, e])
    } else {
        v
    }
}

/// `present = concat(past, new)` along the sequence axis, in the element type of `new`.
fn present(past: Option<&Tensor>, new: &Tensor, dims: [usize; 4], names: (&str, &str)) -> Result<Tensor, OpError> {
    kiln_ir::dispatch!(new.data(), v => present_typed(past, v, new.rank() == 3, dims, names))
}

fn present_typed<T: Elem>(
    past: Option<&Tensor>,
    new: &[T],
    three_d: bool,
    [b, h, s, e]: [usize; 4],
    (past_name, new_name): (&str, &str),
) -> Result<Tensor, OpError> {
    let new = if three_d { swap_12(new, [b, s, h, e]) } else { new.to_vec() };
    let Some(past) = past else {
        return Ok(Tensor::from_vec(vec![b, h, s, e], new)?);
    };
    let p = match *past.shape() {
        [pb, ph, p, pe] if [pb, ph, pe] == [b, h, e] => p,
        _ => bail!("{past_name} must have shape [{b}, {h}, past_sequence_length, {e}], found {:?}", past.shape()),
    };
    let Some(old) = T::slice(past.data()) else {
        bail!("{past_name} must have the type of {new_name}, {}, found {}", T::DTYPE, past.dtype());
    };
    let (po, no) = (p * e, s * e);
    let mut out = Vec::with_capacity(b * h * (po + no));
    for i in 0..b * h {
        out.extend_from_slice(&old[i * po..(i + 1) * po]);
        out.extend_from_slice(&new[i * no..(i + 1) * no]);
    }
    Ok(Tensor::from_vec(vec![b, h, p + s, e], out)?)
}

/// What is added to the scores of row `i` of head `(b, h)`: the mask (padded with -inf up to
/// the total sequence length), the causal mask and the key padding.
struct Bias {
    /// Mask values, their strides over `[batch, q_heads, q_seq, mask_len]`, and `mask_len`.
    mask: Option<(Vec<f32>, [usize; 4], usize)>,
    /// The past sequence length when causal: key `j` is hidden from query `i` if `j > i + past`.
    causal: Option<usize>,
    /// Per batch, how many leading keys are valid (opset 24 `nonpad_kv_seqlen`).
    nonpad: Option<Vec<usize>>,
}

impl Bias {
    fn row(&self, b: usize, h: usize, i: usize, out: &mut [f32]) {
        out.fill(0.0);
        if let Some((m, s, len)) = &self.mask {
            let base = b * s[0] + h * s[1] + i * s[2];
            for (j, o) in out.iter_mut().enumerate() {
                *o = if j < *len { m[base + j * s[3]] } else { f32::NEG_INFINITY };
            }
        }
        if let Some(past) = self.causal {
            out.iter_mut().skip(i + past + 1).for_each(|o| *o += f32::NEG_INFINITY);
        }
        if let Some(n) = &self.nonpad {
            out.iter_mut().skip(n[b]).for_each(|o| *o += f32::NEG_INFINITY);
        }
    }
}

/// Reads `attn_mask` and `nonpad_kv_seqlen` for scores of shape `[batch, q_heads, q_seq, total]`.
fn bias(
    a: &AttentionAttrs,
    inputs: &[Option<&Tensor>],
    [b, hq, sq, total]: [usize; 4],
    past: usize,
) -> Result<Bias, OpError> {
    let mask = match opt_input(inputs, 3) {
        None => None,
        Some(m) => {
            let shape = m.shape();
            let Some(&len) = shape.last() else {
                bail!("attn_mask must have rank 2 to 4, found a scalar");
            };
            let scores = [b, hq, sq, len];
            if shape.len() > 4 || broadcast_shapes(shape, &scores).as_deref() != Some(&scores[..]) {
                bail!("attn_mask of shape {shape:?} does not broadcast to the scores [{b}, {hq}, {sq}, {total}]");
            }
            if len > total {
                bail!("attn_mask covers {len} keys, more than the total sequence length {total}");
            }
            let values = match m.dtype() {
                DType::Bool => {
                    m.as_slice::<bool>()?.iter().map(|&keep| if keep { 0.0 } else { f32::NEG_INFINITY }).collect()
                }
                d if d.is_float() => to_f32(m),
                d => bail!("attn_mask must be bool or float, found {d}"),
            };
            Some((values, broadcast_strides4(shape, scores), len))
        }
    };
    let nonpad = match opt_input(inputs, 6) {
        None => None,
        Some(n) => {
            if n.shape() != [b] || !n.dtype().is_int() {
                bail!("nonpad_kv_seqlen must be an integer tensor of shape [{b}], found {} {:?}", n.dtype(), n.shape());
            }
            let v = n.to_i64_vec();
            if let Some(bad) = v.iter().find(|&&x| x < 0 || x as usize > total) {
                bail!("nonpad_kv_seqlen holds {bad}, outside [0, {total}]");
            }
            Some(v.into_iter().map(|x| x as usize).collect())
        }
    };
    Ok(Bias { mask, causal: a.is_causal.then_some(past), nonpad })
}

/// Strides for reading `shape` broadcast to the 4-D `out` (0 on broadcast dims).
fn broadcast_strides4(shape: &[usize], out: [usize; 4]) -> [usize; 4] {
    let s = super::common::broadcast_strides(shape, &out);
    [s[0], s[1], s[2], s[3]]
}

fn attention(a: &AttentionAttrs, inputs: &[Option<&Tensor>], num_outputs: usize) -> OpResult {
    let (q, k, v) = (input(inputs, 0)?, input(inputs, 1)?, input(inputs, 2)?);
    let dtype = expect_float(q, "Q")?;
    expect_float(k, "K")?;
    expect_float(v, "V")?;
    if q.rank() != k.rank() || q.rank() != v.rank() {
        bail!("Q, K and V must have the same rank, found {:?}, {:?} and {:?}", q.shape(), k.shape(), v.shape());
    }
    let [b, hq, sq, e] = head_dims(q, a.q_num_heads, "Q", "q_num_heads")?;
    let kd @ [bk, hk, sk, ek] = head_dims(k, a.kv_num_heads, "K", "kv_num_heads")?;
    let vd @ [bv, hv, sv, ev] = head_dims(v, a.kv_num_heads, "V", "kv_num_heads")?;
    if bk != b || bv != b || hv != hk || sv != sk || ek != e {
        bail!(
            "K [batch, heads, seq, head_size] = {kd:?} and V {vd:?} do not match Q [{b}, {hq}, {sq}, {e}] \
             (same batch, K and V the same heads and sequence length, K the head size of Q)"
        );
    }
    if hk == 0 || hq % hk != 0 {
        bail!("the {hq} query heads are not a multiple of the {hk} key/value heads");
    }
    let present_key = present(opt_input(inputs, 4), k, kd, ("past_key", "K"))?;
    let present_value = present(opt_input(inputs, 5), v, vd, ("past_value", "V"))?;
    let total = present_key.shape()[2];
    if present_value.shape()[2] != total {
        bail!("past_key and past_value hold {} and {} positions", total - sk, present_value.shape()[2] - sv);
    }
    let bias = bias(a, inputs, [b, hq, sq, total], total - sk)?;

    let qf = heads_first_f32(q, [b, hq, sq, e]);
    let kf = to_f32(&present_key);
    let vf = to_f32(&present_value);
    let scale = a.scale.unwrap_or(1.0 / (e as f32).sqrt());
    let group = hq / hk;
    let want_qk = num_outputs > 3;
    let heads: Vec<(Vec<f32>, Vec<f32>)> = (0..b * hq)
        .into_par_iter()
        .map(|bh| {
            let (bi, hi) = (bh / hq, bh % hq);
            let kv_head = bi * hk + hi / group;
            let qh = &qf[bh * sq * e..(bh + 1) * sq * e];
            let kh = &kf[kv_head * total * e..(kv_head + 1) * total * e];
            let vh = &vf[kv_head * total * ev..(kv_head + 1) * total * ev];
            let mut y = vec![0.0f32; sq * ev];
            let mut qk = if want_qk { Vec::with_capacity(sq * total) } else { vec![] };
            let mut row = vec![0.0f32; total];
            let mut scores = vec![0.0f32; total];
            for i in 0..sq {
                let qi = &qh[i * e..(i + 1) * e];
                for (s, kj) in scores.iter_mut().zip(kh.chunks_exact(e.max(1))) {
                    *s = qi.iter().zip(kj).map(|(x, y)| x * y).sum::<f32>() * scale;
                }
                if e == 0 {
                    scores.fill(0.0);
                }
                if a.qk_matmul_output_mode == QkOutputMode::Scores && want_qk {
                    qk.extend_from_slice(&scores);
                }
                bias.row(bi, hi, i, &mut row);
                row.iter_mut().zip(&scores).for_each(|(r, s)| *r += s);
                if a.qk_matmul_output_mode == QkOutputMode::Masked && want_qk {
                    qk.extend_from_slice(&row);
                }
                if a.softcap > 0.0 {
                    row.iter_mut().for_each(|x| *x = a.softcap * (*x / a.softcap).tanh());
                }
                if a.qk_matmul_output_mode == QkOutputMode::Softcapped && want_qk {
                    qk.extend_from_slice(&row);
                }
                softmax(&mut row);
                if a.qk_matmul_output_mode == QkOutputMode::Probabilities && want_qk {
                    qk.extend_from_slice(&row);
                }
                let yi = &mut y[i * ev..(i + 1) * ev];
                for (p, vj) in row.iter().zip(vh.chunks_exact(ev.max(1))) {
                    yi.iter_mut().zip(vj).for_each(|(o, x)| *o += p * x);
                }
            }
            (y, qk)
        })
        .collect();
    let (ys, qks): (Vec<_>, Vec<_>) = heads.into_iter().unzip();
    let mut y: Vec<f32> = ys.concat();
    let y_shape = if q.rank() == 3 {
        y = swap_12(&y, [b, hq, sq, ev]);
        vec![b, sq, hq * ev]
    } else {
        vec![b, hq, sq, ev]
    };
    let mut out = vec![from_f32(y_shape, y, dtype)?];
    if num_outputs > 1 {
        out.push(present_key);
    }
    if num_outputs > 2 {
        out.push(present_value);
    }
    if want_qk {
        out.push(from_f32(vec![b, hq, sq, total], qks.concat(), dtype)?);
    }
    Ok(out)
}

/// Softmax of one row, as the reference computes it: a row of only -inf becomes NaN.
fn softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for x in row.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    row.iter_mut().for_each(|x| *x /= sum);
}

fn rotary_embedding(
    inputs: &[Option<&Tensor>],
    interleaved: bool,
    rotary_dim: usize,
    num_heads: Option<usize>,
) -> OpResult {
    let x = input(inputs, 0)?;
    let dtype = expect_float(x, "X")?;
    // The rotation runs over [batch, seq, heads, head_size]; a 4-D X is [batch, heads, seq, d].
    let [b, s, h, d] = match *x.shape() {
        [b, h, s, d] => [b, s, h, d],
        [b, s, hidden] => {
            let Some(h) = num_heads else {
                bail!("3-D X needs the attribute num_heads");
            };
            if hidden % h != 0 {
                bail!("the hidden size {hidden} of X is not a multiple of num_heads = {h}");
            }
            [b, s, h, hidden / h]
        }
        _ => bail!("X must be 3-D or 4-D, found shape {:?}", x.shape()),
    };
    let rd = if rotary_dim == 0 { d } else { rotary_dim };
    if rd > d || rd % 2 != 0 {
        bail!("rotary_embedding_dim {rd} must be even and at most the head size {d}");
    }
    let half = rd / 2;
    let (cos, sin) = (input(inputs, 1)?, input(inputs, 2)?);
    expect_float(cos, "cos_cache")?;
    expect_float(sin, "sin_cache")?;
    if cos.shape() != sin.shape() {
        bail!("cos_cache {:?} and sin_cache {:?} must have the same shape", cos.shape(), sin.shape());
    }
    // Row of the caches for each (batch, position).
    let rows: Vec<usize> = match opt_input(inputs, 3) {
        Some(p) => {
            let max = match *cos.shape() {
                [n, w] if w == half => n,
                _ => {
                    bail!("cos_cache must have shape [max_position, {half}] with position_ids, found {:?}", cos.shape())
                }
            };
            if p.shape() != [b, s] || !p.dtype().is_int() {
                bail!(
                    "position_ids must be an integer tensor of shape [{b}, {s}], found {} {:?}",
                    p.dtype(),
                    p.shape()
                );
            }
            p.to_i64_vec()
                .into_iter()
                .map(|i| if i >= 0 && (i as usize) < max { Ok(i as usize) } else { Err(i) })
                .collect::<Result<_, _>>()
                .map_err(|i| OpError::new(format!("position id {i} is outside the cache of {max} positions")))?
        }
        None => match *cos.shape() {
            [cb, cs, w] if (cb == b || cb == 1) && cs == s && w == half => {
                (0..b * s).map(|r| if cb == 1 { r % s } else { r }).collect()
            }
            _ => bail!("cos_cache must have shape [{b}, {s}, {half}] without position_ids, found {:?}", cos.shape()),
        },
    };
    let (cos, sin) = (to_f32(cos), to_f32(sin));
    let mut v = to_f32(x);
    // Strides of (batch, seq, head) in X's own layout; the channels are contiguous.
    let [sb, ss, sh] = if x.rank() == 4 { [h * s * d, d, s * d] } else { [s * h * d, h * d, d] };
    for bi in 0..b {
        for si in 0..s {
            let r = rows[bi * s + si];
            let (c, sn) = (&cos[r * half..(r + 1) * half], &sin[r * half..(r + 1) * half]);
            for hi in 0..h {
                let at = bi * sb + si * ss + hi * sh;
                let head = &mut v[at..at + rd];
                for k in 0..half {
                    let (i1, i2) = if interleaved { (2 * k, 2 * k + 1) } else { (k, k + half) };
                    let (x1, x2) = (head[i1], head[i2]);
                    head[i1] = c[k] * x1 - sn[k] * x2;
                    head[i2] = sn[k] * x1 + c[k] * x2;
                }
            }
        }
    }
    Ok(vec![from_f32(x.shape().to_vec(), v, dtype)?])
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_ir::ops::attention::{AttentionAttrs, QkOutputMode};

    fn attrs() -> AttentionAttrs {
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

    fn t(shape: &[usize], v: &[f32]) -> Tensor {
        Tensor::from_vec(shape.to_vec(), v.to_vec()).unwrap()
    }

    /// Runs the kernel and compares each output with `expected` (shape, values to 1e-5).
    fn check(op: AttentionOp, inputs: &[Option<Tensor>], expected: &[(&[usize], &[f32])]) {
        let refs: Vec<Option<&Tensor>> = inputs.iter().map(Option::as_ref).collect();
        let out = eval(&op, &refs, expected.len()).unwrap();
        for (i, (o, (shape, want))) in out.iter().zip(expected).enumerate() {
            assert_eq!(o.shape(), *shape, "output {i}");
            let got = o.to_f64_vec();
            let ok = got.iter().zip(*want).all(|(g, w)| (*g as f32 - w).abs() <= 1e-5 || g.is_nan() && w.is_nan());
            assert!(ok, "output {i}: got {got:?}, want {want:?}");
        }
    }

    fn check_err(op: AttentionOp, inputs: &[Option<Tensor>], contains: &str) {
        let refs: Vec<Option<&Tensor>> = inputs.iter().map(Option::as_ref).collect();
        let err = eval(&op, &refs, 1).unwrap_err();
        assert!(err.to_string().contains(contains), "{err}");
    }

    #[test]
    fn short_mask_is_padded_with_minus_inf() {
        // One query, three keys; the mask covers only key 0, so Y is V's first row.
        let q = t(&[1, 1, 1, 2], &[1.0, 0.0]);
        let k = t(&[1, 1, 3, 2], &[0.0, 0.0, 5.0, 0.0, 9.0, 0.0]);
        let v = t(&[1, 1, 3, 1], &[1.0, 2.0, 3.0]);
        let mask = t(&[1, 1], &[0.0]);
        check(AttentionOp::Attention(attrs()), &[Some(q), Some(k), Some(v), Some(mask)], &[(&[1, 1, 1, 1], &[1.0])]);
    }

    #[test]
    fn grouped_heads_repeat_each_kv_head() {
        // Four query heads over two key/value heads: heads 0 and 1 read kv head 0.
        let q = t(&[1, 4, 1, 1], &[0.0; 4]);
        let k = t(&[1, 2, 1, 1], &[0.0; 2]);
        let v = t(&[1, 2, 1, 1], &[1.0, 2.0]);
        check(AttentionOp::Attention(attrs()), &[Some(q), Some(k), Some(v)], &[(&[1, 4, 1, 1], &[1.0, 1.0, 2.0, 2.0])]);
    }

    #[test]
    fn causal_mask_is_offset_by_the_past() {
        // Two new queries after one past position: query 0 sees keys 0..=1, query 1 all three.
        let a = AttentionAttrs { is_causal: true, ..attrs() };
        let q = t(&[1, 1, 2, 1], &[0.0, 0.0]);
        let k = t(&[1, 1, 2, 1], &[0.0, 0.0]);
        let v = t(&[1, 1, 2, 1], &[3.0, 6.0]);
        let past_k = t(&[1, 1, 1, 1], &[0.0]);
        let past_v = t(&[1, 1, 1, 1], &[0.0]);
        check(
            AttentionOp::Attention(a),
            &[Some(q), Some(k), Some(v), None, Some(past_k), Some(past_v)],
            &[(&[1, 1, 2, 1], &[1.5, 3.0]), (&[1, 1, 3, 1], &[0.0; 3]), (&[1, 1, 3, 1], &[0.0, 3.0, 6.0])],
        );
    }

    #[test]
    fn three_d_inputs_split_heads_from_the_hidden_axis() {
        // Q [batch 1, seq 2, 2 heads * 1]; one key, so Y is V broadcast over the queries, and the
        // second head of V (hidden index 1) lands in hidden index 1 of Y.
        let a = AttentionAttrs { q_num_heads: Some(2), kv_num_heads: Some(2), ..attrs() };
        let q = t(&[1, 2, 2], &[1.0, 2.0, 3.0, 4.0]);
        let k = t(&[1, 1, 2], &[1.0, 1.0]);
        let v = t(&[1, 1, 2], &[7.0, 8.0]);
        check(
            AttentionOp::Attention(a),
            &[Some(q), Some(k), Some(v)],
            &[(&[1, 2, 2], &[7.0, 8.0, 7.0, 8.0]), (&[1, 2, 1, 1], &[1.0, 1.0]), (&[1, 2, 1, 1], &[7.0, 8.0])],
        );
    }

    #[test]
    fn qk_output_after_mask_and_softcap() {
        // scores = 2 * 1 * scale 1 = 2 and 0; mask adds 1 to key 1; softcap 2 gives 2 tanh(x / 2).
        let a = AttentionAttrs {
            scale: Some(1.0),
            softcap: 2.0,
            qk_matmul_output_mode: QkOutputMode::Softcapped,
            ..attrs()
        };
        let q = t(&[1, 1, 1, 1], &[2.0]);
        let k = t(&[1, 1, 2, 1], &[1.0, 0.0]);
        let v = t(&[1, 1, 2, 1], &[0.0, 0.0]);
        let mask = t(&[2], &[0.0, 1.0]);
        let (s0, s1) = (2.0 * 1.0f32.tanh(), 2.0 * 0.5f32.tanh());
        check(
            AttentionOp::Attention(a),
            &[Some(q), Some(k), Some(v), Some(mask)],
            &[
                (&[1, 1, 1, 1], &[0.0]),
                (&[1, 1, 2, 1], &[1.0, 0.0]),
                (&[1, 1, 2, 1], &[0.0, 0.0]),
                (&[1, 1, 1, 2], &[s0, s1]),
            ],
        );
    }

    #[test]
    fn bool_mask_and_mismatched_heads() {
        let q = t(&[1, 3, 1, 1], &[0.0; 3]);
        let k = t(&[1, 2, 1, 1], &[0.0; 2]);
        let v = t(&[1, 2, 1, 1], &[0.0; 2]);
        check_err(AttentionOp::Attention(attrs()), &[Some(q), Some(k.clone()), Some(v.clone())], "not a multiple");
        let q = t(&[1, 2, 1, 1], &[0.0; 2]);
        let bad = Tensor::from_vec(vec![3, 1], vec![true, false, true]).unwrap();
        check_err(AttentionOp::Attention(attrs()), &[Some(q), Some(k), Some(v), Some(bad)], "does not broadcast");
    }

    fn rope(interleaved: bool, rotary_embedding_dim: usize) -> AttentionOp {
        AttentionOp::RotaryEmbedding { interleaved, rotary_embedding_dim, num_heads: None }
    }

    #[test]
    fn rotary_pairs_and_partial_dim() {
        // One position rotated by 90 degrees: (x1, x2) -> (-x2, x1); channels past the rotary
        // dim pass through.
        let x = t(&[1, 1, 1, 6], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let cos = t(&[1, 1, 2], &[0.0, 1.0]);
        let sin = t(&[1, 1, 2], &[1.0, 0.0]);
        let inputs = [Some(x), Some(cos), Some(sin)];
        // Halves: pairs (0, 2) by 90 degrees and (1, 3) by 0.
        check(rope(false, 4), &inputs, &[(&[1, 1, 1, 6], &[-3.0, 2.0, 1.0, 4.0, 5.0, 6.0])]);
        // Interleaved: pairs (0, 1) by 90 degrees and (2, 3) by 0.
        check(rope(true, 4), &inputs, &[(&[1, 1, 1, 6], &[-2.0, 1.0, 3.0, 4.0, 5.0, 6.0])]);
    }

    #[test]
    fn rotary_position_ids_index_the_cache() {
        let x = t(&[1, 1, 2, 2], &[1.0, 2.0, 1.0, 2.0]);
        let cos = t(&[3, 1], &[1.0, 0.0, -1.0]);
        let sin = t(&[3, 1], &[0.0, 1.0, 0.0]);
        let ids = Tensor::from_vec(vec![1, 2], vec![2i64, 1]).unwrap();
        let inputs = [Some(x.clone()), Some(cos.clone()), Some(sin.clone()), Some(ids)];
        check(rope(false, 0), &inputs, &[(&[1, 1, 2, 2], &[-1.0, -2.0, -2.0, 1.0])]);
        let ids = Tensor::from_vec(vec![1, 2], vec![0i64, 3]).unwrap();
        check_err(rope(false, 0), &[Some(x), Some(cos), Some(sin), Some(ids)], "position id 3");
    }
}
