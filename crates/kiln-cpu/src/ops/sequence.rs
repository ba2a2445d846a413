//! CPU kernels for sequences and optionals.

use super::common::axis;
use crate::{bail, run_graph_data, OpError};
use kiln_ir::ops::SequenceOp;
use kiln_ir::{dispatch, Data, Elem, Tensor};

type DataResult = Result<Vec<Data>, OpError>;

fn arg<'a>(inputs: &[Option<&'a Data>], i: usize) -> Option<&'a Data> {
    inputs.get(i).copied().flatten()
}

fn tensor<'a>(inputs: &[Option<&'a Data>], i: usize, what: &str) -> Result<&'a Tensor, OpError> {
    match arg(inputs, i) {
        Some(Data::Tensor(t)) => Ok(t),
        Some(d) => bail!("{what} (input {i}) is a {}, expected a tensor", d.kind_name()),
        None => bail!("{what} (input {i}) is missing"),
    }
}

fn sequence<'a>(inputs: &[Option<&'a Data>], i: usize) -> Result<&'a [Tensor], OpError> {
    match arg(inputs, i) {
        Some(Data::Sequence(s)) => Ok(s),
        Some(d) => bail!("input {i} is a {}, expected a sequence", d.kind_name()),
        None => bail!("input {i} (the sequence) is missing"),
    }
}

/// A position input resolved against a length; `len` itself is allowed where `end_ok`.
fn position(t: Option<&Tensor>, len: usize, default: usize, end_ok: bool) -> Result<usize, OpError> {
    let Some(t) = t else { return Ok(default) };
    let Some(&p) = t.to_i64_vec().first() else { bail!("position is empty") };
    let n = len as i64;
    let q = if p < 0 { p + n } else { p };
    let hi = if end_ok { n } else { n - 1 };
    if q < 0 || q > hi {
        bail!("position {p} is out of range for a sequence of {len}");
    }
    Ok(q as usize)
}

pub(crate) fn eval(op: &SequenceOp, inputs: &[Option<&Data>], num_outputs: usize) -> DataResult {
    let one = |d: Data| Ok(vec![d]);
    match op {
        SequenceOp::SequenceEmpty { .. } => one(Data::Sequence(vec![])),
        SequenceOp::SequenceConstruct => {
            let mut v = vec![];
            for i in 0..inputs.len() {
                let t = tensor(inputs, i, "element")?;
                if let Some(first) = v.first() {
                    let first: &Tensor = first;
                    if first.dtype() != t.dtype() {
                        bail!("element {i} is {}, element 0 is {}", t.dtype(), first.dtype());
                    }
                }
                v.push(t.clone());
            }
            one(Data::Sequence(v))
        }
        SequenceOp::SequenceInsert => {
            let mut s = sequence(inputs, 0)?.to_vec();
            let t = tensor(inputs, 1, "tensor")?;
            let pos = position(opt_tensor(inputs, 2)?, s.len(), s.len(), true)?;
            s.insert(pos, t.clone());
            one(Data::Sequence(s))
        }
        SequenceOp::SequenceAt => {
            let s = sequence(inputs, 0)?;
            let pos = position(Some(tensor(inputs, 1, "position")?), s.len(), 0, false)?;
            one(Data::Tensor(s[pos].clone()))
        }
        SequenceOp::SequenceErase => {
            let mut s = sequence(inputs, 0)?.to_vec();
            if s.is_empty() {
                bail!("cannot erase from an empty sequence");
            }
            let last = s.len() - 1;
            let pos = position(opt_tensor(inputs, 1)?, s.len(), last, false)?;
            s.remove(pos);
            one(Data::Sequence(s))
        }
        SequenceOp::SequenceLength => one(Data::Tensor(Tensor::scalar(sequence(inputs, 0)?.len() as i64))),
        SequenceOp::SplitToSequence { axis: ax, keepdims } => {
            let x = tensor(inputs, 0, "input")?;
            let a = axis(*ax, x.rank())?;
            let dim = x.shape()[a];
            let (sizes, squeeze) = match opt_tensor(inputs, 1)? {
                None => (vec![1; dim], !keepdims),
                Some(split) if split.rank() == 0 => {
                    let Some(&k) = split.to_i64_vec().first() else { bail!("split is empty") };
                    if k <= 0 {
                        bail!("split size {k} must be positive");
                    }
                    let k = k as usize;
                    let mut v = vec![k; dim / k];
                    if dim % k != 0 {
                        v.push(dim % k);
                    }
                    (v, false)
                }
                Some(split) => {
                    let v = split.to_i64_vec();
                    if v.iter().any(|&s| s < 0) || v.iter().sum::<i64>() != dim as i64 {
                        bail!("split sizes {v:?} do not add up to dimension {dim}");
                    }
                    (v.into_iter().map(|s| s as usize).collect(), false)
                }
            };
            let mut out = vec![];
            let mut start = 0;
            for s in sizes {
                let mut piece = narrow(x, a, start, s)?;
                if squeeze {
                    let mut shape = piece.shape().to_vec();
                    shape.remove(a);
                    piece = piece.reshape(shape)?;
                }
                out.push(piece);
                start += s;
            }
            one(Data::Sequence(out))
        }
        SequenceOp::ConcatFromSequence { axis: ax, new_axis } => {
            let s = sequence(inputs, 0)?;
            let Some(first) = s.first() else { bail!("cannot concatenate an empty sequence") };
            let rank = first.rank() + usize::from(*new_axis);
            let a = axis(*ax, rank)?;
            let parts: Vec<Tensor> = if *new_axis {
                s.iter()
                    .map(|t| {
                        let mut shape = t.shape().to_vec();
                        shape.insert(a, 1);
                        t.clone().reshape(shape)
                    })
                    .collect::<Result<_, _>>()?
            } else {
                s.to_vec()
            };
            one(Data::Tensor(concat(&parts, a)?))
        }
        SequenceOp::SequenceMap { body, num_formal_inputs } => {
            let n = (*num_formal_inputs).min(inputs.len());
            let len = sequence(inputs, 0)?.len();
            let mut outs: Vec<Vec<Tensor>> = vec![vec![]; num_outputs];
            for i in 0..len {
                let mut args = Vec::with_capacity(inputs.len());
                for k in 0..inputs.len() {
                    args.push(match arg(inputs, k) {
                        Some(Data::Sequence(s)) if k < n => match s.get(i) {
                            Some(t) => Data::Tensor(t.clone()),
                            None => bail!("sequence input {k} has {} elements, input 0 has {len}", s.len()),
                        },
                        Some(d) => d.clone(),
                        None => Data::Empty,
                    });
                }
                for (o, d) in outs.iter_mut().zip(run_graph_data(body, args)?) {
                    match d {
                        Data::Tensor(t) => o.push(t),
                        d => bail!("the body returned a {}, expected a tensor", d.kind_name()),
                    }
                }
            }
            Ok(outs.into_iter().map(Data::Sequence).collect())
        }
        SequenceOp::Optional => one(arg(inputs, 0).cloned().unwrap_or(Data::Empty)),
        SequenceOp::OptionalHasElement => {
            one(Data::Tensor(Tensor::scalar(!matches!(arg(inputs, 0), None | Some(Data::Empty)))))
        }
        SequenceOp::OptionalGetElement => match arg(inputs, 0) {
            None | Some(Data::Empty) => bail!("the optional holds no value"),
            Some(d) => one(d.clone()),
        },
    }
}

fn opt_tensor<'a>(inputs: &[Option<&'a Data>], i: usize) -> Result<Option<&'a Tensor>, OpError> {
    match arg(inputs, i) {
        None | Some(Data::Empty) => Ok(None),
        Some(_) => tensor(inputs, i, "input").map(Some),
    }
}

/// `len` entries of axis `a` starting at `start`.
fn narrow(x: &Tensor, a: usize, start: usize, len: usize) -> Result<Tensor, OpError> {
    let shape = x.shape();
    let outer: usize = shape[..a].iter().product();
    let inner: usize = shape[a + 1..].iter().product();
    let mut out_shape = shape.to_vec();
    out_shape[a] = len;
    fn go<T: Elem>(v: &[T], outer: usize, dim: usize, inner: usize, start: usize, len: usize) -> Vec<T> {
        let mut out = Vec::with_capacity(outer * len * inner);
        for o in 0..outer {
            let base = (o * dim + start) * inner;
            out.extend_from_slice(&v[base..base + len * inner]);
        }
        out
    }
    let dim = shape[a];
    let data = dispatch!(x.data(), v => wrap(go(v, outer, dim, inner, start, len)));
    Ok(Tensor::new(out_shape, data)?)
}

fn wrap<T: Elem>(v: Vec<T>) -> kiln_ir::TensorData {
    T::wrap(v)
}

/// Concatenation along axis `a` of same-typed tensors that agree on every other dim.
fn concat(parts: &[Tensor], a: usize) -> Result<Tensor, OpError> {
    let first = &parts[0];
    let mut shape = first.shape().to_vec();
    shape[a] = 0;
    for (i, p) in parts.iter().enumerate() {
        let same_rank = p.rank() == first.rank();
        let agree = same_rank && (0..p.rank()).all(|d| d == a || p.shape()[d] == first.shape()[d]);
        if p.dtype() != first.dtype() || !agree {
            bail!(
                "element {i} ({}{:?}) does not match element 0 ({}{:?})",
                p.dtype(),
                p.shape(),
                first.dtype(),
                first.shape()
            );
        }
        shape[a] += p.shape()[a];
    }
    let outer: usize = shape[..a].iter().product();
    /// Interleaves each part's contiguous run per outer index; `_witness` fixes the type.
    fn go<T: Elem>(_witness: &[T], parts: &[Tensor], outer: usize, a: usize) -> Result<Vec<T>, OpError> {
        let mut out = vec![];
        let slices: Vec<(&[T], usize)> = parts
            .iter()
            .map(|p| {
                let run: usize = p.shape()[a..].iter().product();
                p.as_slice::<T>().map(|s| (s, run))
            })
            .collect::<Result<_, _>>()?;
        for o in 0..outer {
            for (s, run) in &slices {
                out.extend_from_slice(&s[o * run..(o + 1) * run]);
            }
        }
        Ok(out)
    }
    let data = dispatch!(first.data(), v => wrap(go(v, parts, outer, a)?));
    Ok(Tensor::new(shape, data)?)
}
