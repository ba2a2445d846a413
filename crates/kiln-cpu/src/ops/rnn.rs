//! CPU kernels for the recurrent layers: RNN, GRU and LSTM.
//!
//! All three run one loop: per direction, per batch entry, walk the entry's valid steps
//! (`sequence_lens`, in reverse for the backward direction) and apply the cell. Steps past an
//! entry's length leave zeros in `Y` and do not change its state. Math is in f64 whatever the
//! element type, and the outputs are cast back to the type of `X`.

use super::common::{input, opt_input};
use crate::{bail, OpError, OpResult};
use kiln_ir::ops::rnn::{RecurrentAttrs, RnnActivation, RnnDirection};
use kiln_ir::ops::RnnOp;
use kiln_ir::{DType, Tensor};

/// The cell of one layer and its gate count.
#[derive(Clone, Copy)]
enum Cell {
    Rnn,
    Gru { linear_before_reset: bool },
    Lstm { input_forget: bool },
}

impl Cell {
    fn gates(self) -> usize {
        match self {
            Cell::Rnn => 1,
            Cell::Gru { .. } => 3,
            Cell::Lstm { .. } => 4,
        }
    }

    fn num_activations(self) -> usize {
        match self {
            Cell::Rnn => 1,
            Cell::Gru { .. } => 2,
            Cell::Lstm { .. } => 3,
        }
    }
}

pub(super) fn eval(op: &RnnOp, inputs: &[Option<&Tensor>], num_outputs: usize) -> OpResult {
    let (attrs, cell) = match op {
        RnnOp::Rnn(a) => (a, Cell::Rnn),
        RnnOp::Gru { attrs, linear_before_reset } => (attrs, Cell::Gru { linear_before_reset: *linear_before_reset }),
        RnnOp::Lstm { attrs, input_forget } => (attrs, Cell::Lstm { input_forget: *input_forget }),
    };
    run(attrs, cell, inputs, num_outputs)
}

/// A float input as f64 values, checked against the expected shape.
fn load(t: &Tensor, what: &str, shape: &[usize]) -> Result<Vec<f64>, OpError> {
    if !t.dtype().is_float() {
        bail!("{what} must be a float tensor, found {}", t.dtype());
    }
    if t.shape() != shape {
        bail!("{what} must have shape {shape:?}, found {:?}", t.shape());
    }
    Ok(t.to_f64_vec())
}

/// Swaps the first two axes of a row-major `[a, b, rest]` buffer.
fn swap01(v: &[f64], a: usize, b: usize, rest: usize) -> Vec<f64> {
    let mut out = vec![0.0; v.len()];
    for i in 0..a {
        for j in 0..b {
            let src = (i * b + j) * rest;
            let dst = (j * a + i) * rest;
            out[dst..dst + rest].copy_from_slice(&v[src..src + rest]);
        }
    }
    out
}

/// `out[r] += sum_k m[r, k] * v[k]` for the `rows` rows of a row-major matrix.
fn matvec_add(out: &mut [f64], m: &[f64], v: &[f64]) {
    let cols = v.len();
    for (r, o) in out.iter_mut().enumerate() {
        let row = &m[r * cols..(r + 1) * cols];
        *o += row.iter().zip(v).map(|(a, b)| a * b).sum::<f64>();
    }
}

fn run(a: &RecurrentAttrs, cell: Cell, inputs: &[Option<&Tensor>], num_outputs: usize) -> OpResult {
    let x_t = input(inputs, 0)?;
    let w_t = input(inputs, 1)?;
    let r_t = input(inputs, 2)?;
    let dtype = x_t.dtype();
    if x_t.rank() != 3 {
        bail!("X must have rank 3, found shape {:?}", x_t.shape());
    }
    if r_t.rank() != 3 {
        bail!("R must have rank 3, found shape {:?}", r_t.shape());
    }
    let dirs = a.direction.count();
    let g = cell.gates();
    let hs = r_t.shape()[2];
    if let Some(h) = a.hidden_size {
        if h != hs {
            bail!("hidden_size is {h} but R has shape {:?}", r_t.shape());
        }
    }
    let (seq, batch, isz) = if a.batch_first {
        (x_t.shape()[1], x_t.shape()[0], x_t.shape()[2])
    } else {
        (x_t.shape()[0], x_t.shape()[1], x_t.shape()[2])
    };
    let mut x = load(x_t, "X", x_t.shape())?;
    if a.batch_first {
        x = swap01(&x, batch, seq, isz);
    }
    let w = load(w_t, "W", &[dirs, g * hs, isz])?;
    let r = load(r_t, "R", &[dirs, g * hs, hs])?;
    let b = match opt_input(inputs, 3) {
        Some(t) => load(t, "B", &[dirs, 2 * g * hs])?,
        None => vec![0.0; dirs * 2 * g * hs],
    };
    let lens: Vec<usize> = match opt_input(inputs, 4) {
        Some(t) => {
            if t.shape() != [batch] || !t.dtype().is_int() {
                bail!(
                    "sequence_lens must be an integer tensor of shape [{batch}], found {} {:?}",
                    t.dtype(),
                    t.shape()
                );
            }
            t.to_i64_vec()
                .into_iter()
                .map(|l| {
                    if l < 0 || l as usize > seq {
                        Err(OpError::new(format!("sequence length {l} is outside [0, {seq}]")))
                    } else {
                        Ok(l as usize)
                    }
                })
                .collect::<Result<_, _>>()?
        }
        None => vec![seq; batch],
    };
    let state_shape = if a.batch_first { [batch, dirs, hs] } else { [dirs, batch, hs] };
    let load_state = |i: usize, what: &str| -> Result<Vec<f64>, OpError> {
        match opt_input(inputs, i) {
            Some(t) => {
                let v = load(t, what, &state_shape)?;
                Ok(if a.batch_first { swap01(&v, batch, dirs, hs) } else { v })
            }
            None => Ok(vec![0.0; dirs * batch * hs]),
        }
    };
    let h0 = load_state(5, "initial_h")?;
    let (c0, p) = match cell {
        Cell::Lstm { .. } => {
            let p = match opt_input(inputs, 7) {
                Some(t) => Some(load(t, "P", &[dirs, 3 * hs])?),
                None => None,
            };
            (load_state(6, "initial_c")?, p)
        }
        _ => (vec![], None),
    };
    let na = cell.num_activations();
    if a.activations.len() != na * dirs {
        bail!("expected {} activation functions, found {}", na * dirs, a.activations.len());
    }

    // Outputs in the sequence-first layout: Y [seq, dirs, batch, hs], states [dirs, batch, hs].
    let mut y = vec![0.0; seq * dirs * batch * hs];
    let mut yh = vec![0.0; dirs * batch * hs];
    let mut yc = vec![0.0; dirs * batch * hs];
    for d in 0..dirs {
        let reverse = a.direction == RnnDirection::Reverse || d == 1;
        let wd = &w[d * g * hs * isz..(d + 1) * g * hs * isz];
        let rd = &r[d * g * hs * hs..(d + 1) * g * hs * hs];
        let bd = &b[d * 2 * g * hs..(d + 1) * 2 * g * hs];
        let pd = p.as_ref().map(|p| &p[d * 3 * hs..(d + 1) * 3 * hs]);
        let acts = &a.activations[d * na..(d + 1) * na];
        for bi in 0..batch {
            let so = (d * batch + bi) * hs;
            let mut h = h0[so..so + hs].to_vec();
            let mut c = if c0.is_empty() { vec![] } else { c0[so..so + hs].to_vec() };
            let len = lens[bi];
            for step in 0..len {
                let t = if reverse { len - 1 - step } else { step };
                let xo = (t * batch + bi) * isz;
                let xt = &x[xo..xo + isz];
                let cx = CellInputs { w: wd, r: rd, b: bd, p: pd, acts, clip: a.clip, hs };
                cell_step(cell, &cx, xt, &mut h, &mut c);
                let yo = ((t * dirs + d) * batch + bi) * hs;
                y[yo..yo + hs].copy_from_slice(&h);
            }
            yh[so..so + hs].copy_from_slice(&h);
            if !c.is_empty() {
                yc[so..so + hs].copy_from_slice(&c);
            }
        }
    }

    let cast = |shape: Vec<usize>, v: Vec<f64>| -> Result<Tensor, OpError> {
        let t = Tensor::from_vec(shape, v)?;
        Ok(if dtype == DType::F64 { t } else { t.cast(dtype) })
    };
    let mut out = Vec::with_capacity(num_outputs);
    if a.batch_first {
        let y = to_batch_first_y(&y, seq, dirs, batch, hs);
        out.push(cast(vec![batch, seq, dirs, hs], y)?);
        out.push(cast(vec![batch, dirs, hs], swap01(&yh, dirs, batch, hs))?);
        out.push(cast(vec![batch, dirs, hs], swap01(&yc, dirs, batch, hs))?);
    } else {
        out.push(cast(vec![seq, dirs, batch, hs], y)?);
        out.push(cast(vec![dirs, batch, hs], yh)?);
        out.push(cast(vec![dirs, batch, hs], yc)?);
    }
    out.truncate(num_outputs.max(1));
    Ok(out)
}

/// Reorders `Y` from `[seq, dirs, batch, hs]` into `[batch, seq, dirs, hs]`.
fn to_batch_first_y(v: &[f64], seq: usize, dirs: usize, batch: usize, hs: usize) -> Vec<f64> {
    let mut out = vec![0.0; v.len()];
    for d in 0..dirs {
        for b in 0..batch {
            for t in 0..seq {
                let src = ((t * dirs + d) * batch + b) * hs;
                let dst = ((b * seq + t) * dirs + d) * hs;
                out[dst..dst + hs].copy_from_slice(&v[src..src + hs]);
            }
        }
    }
    out
}

/// The weights of one direction.
struct CellInputs<'a> {
    w: &'a [f64],
    r: &'a [f64],
    b: &'a [f64],
    p: Option<&'a [f64]>,
    acts: &'a [RnnActivation],
    clip: Option<f32>,
    hs: usize,
}

impl CellInputs<'_> {
    /// Applies activation `i`, clipping the argument first where `clip` is set.
    fn act(&self, i: usize, x: f64) -> f64 {
        let x = match self.clip {
            Some(c) => x.clamp(-(c as f64), c as f64),
            None => x,
        };
        self.acts[i].apply(x)
    }
}

/// One time step of one batch entry: updates `h` (and `c` for LSTM) in place.
fn cell_step(cell: Cell, cx: &CellInputs<'_>, xt: &[f64], h: &mut [f64], c: &mut [f64]) {
    let hs = cx.hs;
    let g = cell.gates();
    // Input projection plus both biases for every gate; the recurrent projection separately
    // because GRU's hidden gate treats it differently.
    let mut xw = cx.b[..g * hs].to_vec();
    matvec_add(&mut xw, cx.w, xt);
    let mut hr = cx.b[g * hs..2 * g * hs].to_vec();
    match cell {
        Cell::Rnn => {
            matvec_add(&mut hr, cx.r, h);
            for j in 0..hs {
                h[j] = cx.act(0, xw[j] + hr[j]);
            }
        }
        Cell::Gru { linear_before_reset } => {
            // z and r use the full recurrent product; h depends on the reset gate.
            matvec_add(&mut hr[..2 * hs], &cx.r[..2 * hs * hs], h);
            let z: Vec<f64> = (0..hs).map(|j| cx.act(0, xw[j] + hr[j])).collect();
            let rg: Vec<f64> = (0..hs).map(|j| cx.act(0, xw[hs + j] + hr[hs + j])).collect();
            let rh = &cx.r[2 * hs * hs..3 * hs * hs];
            let mut hh = hr[2 * hs..3 * hs].to_vec();
            if linear_before_reset {
                matvec_add(&mut hh, rh, h);
                for j in 0..hs {
                    hh[j] *= rg[j];
                }
            } else {
                let gated: Vec<f64> = (0..hs).map(|j| rg[j] * h[j]).collect();
                matvec_add(&mut hh, rh, &gated);
            }
            for j in 0..hs {
                let cand = cx.act(1, xw[2 * hs + j] + hh[j]);
                h[j] = (1.0 - z[j]) * cand + z[j] * h[j];
            }
        }
        Cell::Lstm { input_forget } => {
            matvec_add(&mut hr, cx.r, h);
            let pre = |k: usize, j: usize| xw[k * hs + j] + hr[k * hs + j];
            let peep = |k: usize, j: usize| cx.p.map_or(0.0, |p| p[k * hs + j]);
            for j in 0..hs {
                let f = cx.act(0, pre(2, j) + peep(2, j) * c[j]);
                let i = if input_forget { 1.0 - f } else { cx.act(0, pre(0, j) + peep(0, j) * c[j]) };
                let cand = cx.act(1, pre(3, j));
                c[j] = f * c[j] + i * cand;
                let o = cx.act(0, pre(1, j) + peep(1, j) * c[j]);
                h[j] = o * cx.acts[2].apply(c[j]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_ir::ops::rnn::RecurrentAttrs;

    fn attrs(direction: RnnDirection, acts: Vec<RnnActivation>, batch_first: bool) -> RecurrentAttrs {
        RecurrentAttrs { hidden_size: None, direction, activations: acts, clip: None, batch_first }
    }

    /// Runs the kernel on f32 inputs (`None` for absent ones) and compares every output.
    fn check(op: RnnOp, inputs: &[Option<(Vec<usize>, Vec<f32>)>], expected: &[(Vec<usize>, Vec<f32>)]) {
        let ts: Vec<Option<Tensor>> =
            inputs.iter().map(|i| i.as_ref().map(|(s, v)| Tensor::from_vec(s.clone(), v.clone()).unwrap())).collect();
        let refs: Vec<Option<&Tensor>> = ts.iter().map(|t| t.as_ref()).collect();
        let out = eval(&op, &refs, expected.len()).unwrap();
        for (o, (s, v)) in out.iter().zip(expected) {
            assert_eq!(o.shape(), &s[..]);
            let got = o.as_slice::<f32>().unwrap();
            for (a, b) in got.iter().zip(v) {
                assert!((a - b).abs() < 1e-5, "got {got:?}, expected {v:?}");
            }
        }
    }

    #[test]
    fn rnn_identity_cell_accumulates_in_both_directions() {
        // With W = R = 1 and an affine identity activation, h_t = x_t + h_{t-1}: a running sum.
        let id = RnnActivation::Affine { alpha: 1.0, beta: 0.0 };
        let op = RnnOp::Rnn(attrs(RnnDirection::Bidirectional, vec![id, id], false));
        let x = (vec![3, 1, 1], vec![1.0, 2.0, 3.0]);
        let w = (vec![2, 1, 1], vec![1.0, 1.0]);
        check(
            op,
            &[Some(x), Some(w.clone()), Some(w)],
            &[(vec![3, 2, 1, 1], vec![1.0, 6.0, 3.0, 5.0, 6.0, 3.0]), (vec![2, 1, 1], vec![6.0, 6.0])],
        );
    }

    #[test]
    fn sequence_lens_stop_early_and_batch_first_layout() {
        let id = RnnActivation::Affine { alpha: 1.0, beta: 0.0 };
        let op = RnnOp::Rnn(attrs(RnnDirection::Forward, vec![id], true));
        // Batch-first X [batch 2, seq 3, 1]; the second entry has length 1.
        let x = (vec![2, 3, 1], vec![1.0f32, 2.0, 3.0, 10.0, 20.0, 30.0]);
        let w = (vec![1, 1, 1], vec![1.0f32]);
        let ts: Vec<Option<Tensor>> = vec![
            Some(Tensor::from_vec(x.0, x.1).unwrap()),
            Some(Tensor::from_vec(w.0.clone(), w.1.clone()).unwrap()),
            Some(Tensor::from_vec(w.0, w.1).unwrap()),
            None,
            Some(Tensor::from_vec(vec![2], vec![3i32, 1]).unwrap()),
        ];
        let refs: Vec<Option<&Tensor>> = ts.iter().map(|t| t.as_ref()).collect();
        let out = eval(&op, &refs, 2).unwrap();
        assert_eq!(out[0].shape(), &[2, 3, 1, 1]);
        assert_eq!(out[0].as_slice::<f32>().unwrap(), &[1.0, 3.0, 6.0, 10.0, 0.0, 0.0]);
        assert_eq!(out[1].as_slice::<f32>().unwrap(), &[6.0, 10.0]);
    }

    #[test]
    fn lstm_matches_hand_computation() {
        let s = RnnActivation::Sigmoid;
        let t = RnnActivation::Tanh;
        let op = RnnOp::Lstm { attrs: attrs(RnnDirection::Forward, vec![s, t, t], false), input_forget: false };
        let x = (vec![1, 1, 1], vec![0.5]);
        let w = (vec![1, 4, 1], vec![1.0, 2.0, 3.0, 4.0]);
        let r = (vec![1, 4, 1], vec![0.0; 4]);
        let sig = |v: f32| 1.0 / (1.0 + (-v).exp());
        let c = sig(0.5 * 3.0) * 0.0 + sig(0.5) * (2.0f32).tanh();
        let h = sig(1.0) * c.tanh();
        check(
            op,
            &[Some(x), Some(w), Some(r)],
            &[(vec![1, 1, 1, 1], vec![h]), (vec![1, 1, 1], vec![h]), (vec![1, 1, 1], vec![c])],
        );
    }
}
