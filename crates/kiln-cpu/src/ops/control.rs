//! CPU execution of control flow: runs the subgraphs with the executor.
//!
//! Captured outer values arrive as the node's trailing inputs, in sorted name order; each
//! body takes the ones it reads as graph inputs after its formal ones.

use super::common::{axis, opt_input};
use crate::{bail, run_graph, run_graph_data, OpError, OpResult};
use kiln_ir::ops::ControlOp;
use kiln_ir::{dispatch, DType, Data, Elem, Graph, Tensor};
use std::collections::BTreeSet;

pub(super) fn eval(op: &ControlOp, inputs: &[Option<&Tensor>], num_outputs: usize) -> OpResult {
    let data: Vec<Option<Data>> = inputs.iter().map(|t| t.map(|t| Data::Tensor(t.clone()))).collect();
    let refs: Vec<Option<&Data>> = data.iter().map(Option::as_ref).collect();
    eval_data(op, &refs, num_outputs)?
        .into_iter()
        .map(|d| match d {
            Data::Tensor(t) => Ok(t),
            d => bail!("an output is a {}, not a tensor", d.kind_name()),
        })
        .collect()
}

/// Runs a control-flow op on runtime values: branches and loop bodies may pass sequences and
/// optionals as well as tensors.
pub(crate) fn eval_data(op: &ControlOp, inputs: &[Option<&Data>], num_outputs: usize) -> Result<Vec<Data>, OpError> {
    match op {
        ControlOp::If { then_branch, else_branch } => {
            let c = scalar_bool(tensor_arg(inputs, 0, "condition")?, "condition")?;
            let captured = present(inputs.get(1..).unwrap_or_default(), "captured value")?;
            let branch = if c { then_branch } else { else_branch };
            let args = branch_args(branch, &[then_branch.as_ref(), else_branch.as_ref()], &captured)?;
            let out = run_graph_data(branch, args)?;
            if out.len() < num_outputs {
                bail!("the branch returned {} values, the node has {num_outputs} outputs", out.len());
            }
            Ok(out)
        }
        ControlOp::Loop { body, num_carried } => eval_loop(body, *num_carried, inputs),
        ControlOp::Scan { .. } => {
            let mut tensors = Vec::with_capacity(inputs.len());
            for (i, d) in inputs.iter().enumerate() {
                tensors.push(match d {
                    None | Some(Data::Empty) => None,
                    Some(Data::Tensor(t)) => Some(t),
                    Some(Data::Sequence(_)) => bail!("Scan input {i} is a sequence; Scan takes tensors"),
                });
            }
            Ok(eval_scan(op, &tensors)?.into_iter().map(Data::Tensor).collect())
        }
    }
}

/// Input `i` as a tensor.
fn tensor_arg<'a>(inputs: &[Option<&'a Data>], i: usize, what: &str) -> Result<&'a Tensor, OpError> {
    match inputs.get(i).copied().flatten() {
        Some(Data::Tensor(t)) => Ok(t),
        Some(d) => bail!("{what} is a {}, expected a tensor", d.kind_name()),
        None => bail!("{what} is missing"),
    }
}

/// Input `i` as a tensor, if present.
fn opt_tensor_arg<'a>(inputs: &[Option<&'a Data>], i: usize, what: &str) -> Result<Option<&'a Tensor>, OpError> {
    match inputs.get(i).copied().flatten() {
        None | Some(Data::Empty) => Ok(None),
        Some(_) => tensor_arg(inputs, i, what).map(Some),
    }
}

/// Every input of `inputs`, which must all be present.
fn present<T: Clone>(inputs: &[Option<&T>], what: &str) -> Result<Vec<T>, OpError> {
    inputs
        .iter()
        .enumerate()
        .map(|(i, t)| t.cloned().ok_or_else(|| OpError::new(format!("{what} {i} is missing"))))
        .collect()
}

/// The first element of a tensor as a bool.
fn scalar_bool(t: &Tensor, what: &str) -> Result<bool, OpError> {
    match t.cast(DType::Bool).as_slice::<bool>()?.first() {
        Some(&b) => Ok(b),
        None => bail!("{what} is empty"),
    }
}

/// The name of graph input `i`.
fn input_name(g: &Graph, i: usize) -> &str {
    g.node(g.inputs[i]).outputs.first().map(|o| o.name.as_str()).unwrap_or("")
}

/// The captured values a branch takes, in its input order.
///
/// The node's captures are the union of what every branch reads, sorted by name; a branch that
/// defines one of them itself does not take it, so the branch's inputs are matched by name.
fn branch_args<T: Clone>(branch: &Graph, all: &[&Graph], captured: &[T]) -> Result<Vec<T>, OpError> {
    let names: BTreeSet<&str> = all.iter().flat_map(|g| (0..g.inputs.len()).map(|i| input_name(g, i))).collect();
    let names: Vec<&str> = names.into_iter().collect();
    if names.len() != captured.len() {
        bail!("the branches read {} outer values but the node passes {}", names.len(), captured.len());
    }
    Ok((0..branch.inputs.len())
        .filter_map(|i| names.binary_search(&input_name(branch, i)).ok().map(|k| captured[k].clone()))
        .collect())
}

fn eval_loop(body: &Graph, num_carried: usize, inputs: &[Option<&Data>]) -> Result<Vec<Data>, OpError> {
    let max = match opt_tensor_arg(inputs, 0, "trip count M")? {
        Some(t) => match t.to_i64_vec().first() {
            Some(&m) => Some(m),
            None => bail!("trip count M is empty"),
        },
        None => None,
    };
    let cond_in = opt_tensor_arg(inputs, 1, "cond")?;
    let has_cond = cond_in.is_some();
    let mut cond = match cond_in {
        Some(t) => scalar_bool(t, "cond")?,
        None => true,
    };
    if max.is_none() && !has_cond {
        bail!("neither a trip count nor a condition is given, so the loop would never end");
    }
    if inputs.len() < 2 + num_carried {
        bail!("expected {} inputs, found {}", 2 + num_carried, inputs.len());
    }
    // An absent loop-carried input is an empty optional.
    let mut carried: Vec<Data> = inputs[2..2 + num_carried].iter().map(|d| d.cloned().unwrap_or(Data::Empty)).collect();
    let captured = present(&inputs[2 + num_carried..], "captured value")?;
    if body.inputs.len() != 2 + num_carried + captured.len() {
        bail!("the body takes {} inputs, expected {}", body.inputs.len(), 2 + num_carried + captured.len());
    }
    let num_scan = body.outputs.len().saturating_sub(1 + num_carried);
    let mut scans: Vec<Vec<Tensor>> = vec![vec![]; num_scan];
    let mut i = 0i64;
    while max.is_none_or(|m| i < m) && cond {
        let mut args = Vec::with_capacity(body.inputs.len());
        args.push(Data::Tensor(Tensor::scalar(i)));
        args.push(Data::Tensor(Tensor::scalar(cond)));
        args.append(&mut carried);
        args.extend(captured.iter().cloned());
        let mut out = run_graph_data(body, args)?.into_iter();
        let c = out.next().ok_or_else(|| OpError::new("the body returned no condition"))?;
        if has_cond {
            match &c {
                Data::Tensor(t) => cond = scalar_bool(t, "the body's condition")?,
                d => bail!("the body's condition is a {}", d.kind_name()),
            }
        }
        carried = out.by_ref().take(num_carried).collect();
        for (k, (s, d)) in scans.iter_mut().zip(out).enumerate() {
            match d {
                Data::Tensor(t) => s.push(t),
                d => bail!("scan output {k} is a {}, expected a tensor", d.kind_name()),
            }
        }
        i += 1;
    }
    let mut result = carried;
    for (k, s) in scans.iter().enumerate() {
        result.push(Data::Tensor(if s.is_empty() {
            let dtype = body_dtype(body, 1 + num_carried + k);
            Tensor::zeros(dtype, vec![0])?
        } else {
            stack(s, 0)?
        }));
    }
    Ok(result)
}

/// The declared element type of body output `i`, f32 where unknown.
fn body_dtype(body: &Graph, i: usize) -> DType {
    body.outputs.get(i).and_then(|o| body.value_info(o.value).ty.dtype).unwrap_or(DType::F32)
}

fn eval_scan(op: &ControlOp, inputs: &[Option<&Tensor>]) -> OpResult {
    let ControlOp::Scan { body, num_state, num_scan_inputs, batched, .. } = op else { bail!("not a Scan") };
    let (n, m) = (*num_state, *num_scan_inputs);
    let first = usize::from(*batched);
    if inputs.len() < first + n + m {
        bail!("expected at least {} inputs, found {}", first + n + m, inputs.len());
    }
    let states = present(&inputs[first..first + n], "state")?;
    let scanned = present(&inputs[first + n..first + n + m], "scan input")?;
    let captured = present(&inputs[first + n + m..], "captured value")?;
    if body.inputs.len() != n + m + captured.len() {
        bail!("the body takes {} inputs, expected {}", body.inputs.len(), n + m + captured.len());
    }
    if !*batched {
        let (mut states, scans) = scan_once(op, states, &scanned, &captured)?;
        states.extend(scans);
        return Ok(states);
    }
    // Opset 8: run each batch entry on its own and stack the results.
    let batch = match states.iter().chain(&scanned).next().and_then(|t| t.shape().first()) {
        Some(&b) => b,
        None => bail!("inputs must have a batch axis"),
    };
    if let Some(lens) = opt_input(inputs, 0) {
        let seq = scanned.first().and_then(|t| t.shape().get(1)).copied().unwrap_or(0) as i64;
        if lens.to_i64_vec().iter().any(|&l| l != seq) {
            bail!("sequence_lens shorter than the sequence ({seq}) are not supported");
        }
    }
    let mut per_batch: Vec<Vec<Tensor>> = vec![];
    for b in 0..batch {
        let st = states.iter().map(|t| take(t, 0, b)).collect::<Result<Vec<_>, _>>()?;
        let sc = scanned.iter().map(|t| take(t, 0, b)).collect::<Result<Vec<_>, _>>()?;
        let (mut s, k) = scan_once(op, st, &sc, &captured)?;
        s.extend(k);
        per_batch.push(s);
    }
    let count = per_batch.first().map_or(0, |v| v.len());
    let mut out = Vec::with_capacity(count);
    for k in 0..count {
        let parts: Vec<Tensor> = per_batch.iter().map(|v| v[k].clone()).collect();
        out.push(stack(&parts, 0)?);
    }
    Ok(out)
}

/// One scan over unbatched inputs: returns the final states and the scan outputs.
fn scan_once(
    op: &ControlOp,
    mut states: Vec<Tensor>,
    scanned: &[Tensor],
    captured: &[Tensor],
) -> Result<(Vec<Tensor>, Vec<Tensor>), OpError> {
    let ControlOp::Scan { body, scan_input_axes, scan_input_reverse, scan_output_axes, scan_output_reverse, .. } = op
    else {
        bail!("not a Scan")
    };
    let mut axes = Vec::with_capacity(scanned.len());
    let mut seq = None;
    for (j, t) in scanned.iter().enumerate() {
        let a = axis(scan_input_axes.get(j).copied().unwrap_or(0), t.rank())?;
        let len = t.shape()[a];
        if seq.is_some_and(|s| s != len) {
            bail!("scan input {j} has {len} slices along axis {a}, expected {}", seq.unwrap_or(0));
        }
        seq = Some(len);
        axes.push(a);
    }
    let seq = seq.unwrap_or(0);
    let num_out = body.outputs.len().saturating_sub(states.len());
    let mut slices: Vec<Vec<Tensor>> = vec![vec![]; num_out];
    for t in 0..seq {
        let mut args = std::mem::take(&mut states);
        for (j, x) in scanned.iter().enumerate() {
            let idx = if scan_input_reverse.get(j).copied().unwrap_or(false) { seq - 1 - t } else { t };
            args.push(take(x, axes[j], idx)?);
        }
        args.extend(captured.iter().cloned());
        let n = args.len() - scanned.len() - captured.len();
        let mut out = run_graph(body, &args)?.into_iter();
        states = out.by_ref().take(n).collect();
        for (s, y) in slices.iter_mut().zip(out) {
            s.push(y);
        }
    }
    let mut outs = Vec::with_capacity(num_out);
    for (k, mut s) in slices.into_iter().enumerate() {
        if s.is_empty() {
            outs.push(Tensor::zeros(body_dtype(body, states.len() + k), vec![0])?);
            continue;
        }
        if scan_output_reverse.get(k).copied().unwrap_or(false) {
            s.reverse();
        }
        let a = axis(scan_output_axes.get(k).copied().unwrap_or(0), s[0].rank() + 1)?;
        outs.push(stack(&s, a)?);
    }
    Ok((states, outs))
}

/// Slice `i` of `t` along `axis`, with that axis removed.
fn take(t: &Tensor, axis: usize, i: usize) -> Result<Tensor, OpError> {
    let shape = t.shape();
    if axis >= shape.len() || i >= shape[axis] {
        bail!("cannot take slice {i} of axis {axis} of a tensor of shape {shape:?}");
    }
    let n = shape[axis];
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let mut out_shape = shape.to_vec();
    out_shape.remove(axis);
    dispatch!(t.data(), v => {
        let mut out = Vec::with_capacity(outer * inner);
        for o in 0..outer {
            let base = (o * n + i) * inner;
            out.extend_from_slice(&v[base..base + inner]);
        }
        Ok(Tensor::from_vec(out_shape, out)?)
    })
}

/// Stacks tensors of one shape and type along a new axis `axis`.
fn stack(parts: &[Tensor], axis: usize) -> Result<Tensor, OpError> {
    let Some(first) = parts.first() else { bail!("nothing to stack") };
    let shape = first.shape();
    if axis > shape.len() {
        bail!("axis {axis} is out of range for stacking tensors of shape {shape:?}");
    }
    for p in parts {
        if p.shape() != shape || p.dtype() != first.dtype() {
            bail!("cannot stack a {} {:?} with a {} {:?}", p.dtype(), p.shape(), first.dtype(), shape);
        }
    }
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis..].iter().product();
    let mut out_shape = shape.to_vec();
    out_shape.insert(axis, parts.len());
    dispatch!(first.data(), v => stack_typed(v, parts, outer, inner, out_shape))
}

fn stack_typed<T: Elem>(
    _: &[T],
    parts: &[Tensor],
    outer: usize,
    inner: usize,
    shape: Vec<usize>,
) -> Result<Tensor, OpError> {
    let slices = parts.iter().map(|p| p.as_slice::<T>()).collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::with_capacity(outer * inner * parts.len());
    for o in 0..outer {
        for s in &slices {
            out.extend_from_slice(&s[o * inner..(o + 1) * inner]);
        }
    }
    Ok(Tensor::from_vec(shape, out)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks `stack` then `take` against hand-written values.
    fn check(parts: &[Vec<i32>], shape: &[usize], axis: usize, expected: &[i32]) {
        let ts: Vec<Tensor> = parts.iter().map(|p| Tensor::from_vec(shape.to_vec(), p.clone()).unwrap()).collect();
        let s = stack(&ts, axis).unwrap();
        assert_eq!(s.as_slice::<i32>().unwrap(), expected);
        for (i, t) in ts.iter().enumerate() {
            assert_eq!(&take(&s, axis, i).unwrap(), t);
        }
    }

    #[test]
    fn stack_and_take_are_inverse() {
        check(&[vec![1, 2, 3], vec![4, 5, 6]], &[3], 0, &[1, 2, 3, 4, 5, 6]);
        check(&[vec![1, 2, 3], vec![4, 5, 6]], &[3], 1, &[1, 4, 2, 5, 3, 6]);
        check(&[vec![1, 2, 3, 4], vec![5, 6, 7, 8]], &[2, 2], 1, &[1, 2, 5, 6, 3, 4, 7, 8]);
    }

    #[test]
    fn take_rejects_out_of_range() {
        let t = Tensor::from_vec(vec![2], vec![1i32, 2]).unwrap();
        assert!(take(&t, 0, 2).is_err());
        assert!(take(&t, 1, 0).is_err());
    }
}
