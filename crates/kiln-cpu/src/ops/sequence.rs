//! CPU kernels for sequences and optionals.

use super::common::axis;
use crate::{bail, run_graph_data, OpError};
use kiln_ir::ops::{LayoutOp, SequenceOp};
use kiln_ir::{Data, Op, Tensor};

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
            let n = sizes.len();
            let split = LayoutOp::Split { axis: a as i64, split: Some(sizes.iter().map(|&s| s as i64).collect()) };
            let mut out = super::eval_op(&Op::Layout(split), &[Some(x)], n)?;
            if squeeze {
                let mut shape = x.shape().to_vec();
                shape.remove(a);
                out = out.into_iter().map(|p| p.reshape(shape.clone())).collect::<Result<_, _>>()?;
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
            let refs: Vec<Option<&Tensor>> = parts.iter().map(Some).collect();
            let mut out = super::eval_op(&Op::Layout(LayoutOp::Concat { axis: a as i64 }), &refs, 1)?;
            one(Data::Tensor(out.remove(0)))
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
