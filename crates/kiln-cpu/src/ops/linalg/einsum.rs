//! Einsum: diagonals for repeated indices, sums for indices needed nowhere else, then pairwise
//! contractions from left to right, each one batched matrix product.

use super::gemm::Scalar;
use super::matmul::matmul;
use super::{finish, values};
use crate::ops::common::{input, strides};
use crate::{bail, OpError, OpResult};
use kiln_ir::ops::linalg::{EinsumEquation, EinsumLabel};
use kiln_ir::Tensor;
use std::collections::HashMap;

/// An index: a letter's code point, or `ELLIPSIS + j` for the j-th dim the ellipsis covers.
type Label = u32;
const ELLIPSIS: Label = 1 << 16;

/// A row-major tensor whose dims are named by distinct labels (after [`diagonal`]).
struct Operand<T> {
    labels: Vec<Label>,
    shape: Vec<usize>,
    data: Vec<T>,
}

pub(super) fn eval(eq: &EinsumEquation, inputs: &[Option<&Tensor>]) -> OpResult {
    let ts = (0..eq.inputs.len()).map(|i| input(inputs, i)).collect::<Result<Vec<_>, _>>()?;
    let dtype = ts.first().map(|t| t.dtype()).ok_or_else(|| OpError::new("Einsum needs an operand"))?;
    if let Some(t) = ts.iter().find(|t| t.dtype() != dtype) {
        bail!("Einsum operands must have one type, found {dtype} and {}", t.dtype());
    }
    with_scalar!(dtype, T => {
        let (v, shape) = einsum::<T>(eq, &ts)?;
        Ok(vec![finish(shape, v, dtype)?])
    })
}

/// The labels of a term for an operand of rank `rank`, the ellipsis standing for the last
/// dims of the `ell` broadcast ellipsis dims.
fn expand(term: &[EinsumLabel], rank: usize, ell: usize) -> Vec<Label> {
    let mut out = vec![];
    for l in term {
        match l {
            EinsumLabel::Letter(c) => out.push(*c as Label),
            EinsumLabel::Ellipsis => {
                let n = rank + 1 - term.len();
                out.extend((ell - n..ell).map(|j| ELLIPSIS + j as Label));
            }
        }
    }
    out
}

fn einsum<T: Scalar>(eq: &EinsumEquation, ts: &[&Tensor]) -> Result<(Vec<T>, Vec<usize>), OpError> {
    let ranks: Vec<usize> = ts.iter().map(|t| t.rank()).collect();
    let ell = eq.ellipsis_rank(&ranks).map_err(OpError)?;
    let mut sizes: HashMap<Label, usize> = HashMap::new();
    let mut ops = vec![];
    for (term, t) in eq.inputs.iter().zip(ts) {
        let labels = expand(term, t.rank(), ell);
        for (&l, &d) in labels.iter().zip(t.shape()) {
            let e = sizes.entry(l).or_insert(d);
            if *e == 1 {
                *e = d;
            } else if d != 1 && d != *e {
                bail!("Einsum: index {} has sizes {} and {d}", label_name(l), *e);
            }
        }
        ops.push(Operand { labels, shape: t.shape().to_vec(), data: values::<T>(t).into_owned() });
    }
    let output = expand(&eq.output, ell + eq.output.len().saturating_sub(1), ell);
    // A dim of size 1 where the index is larger elsewhere broadcasts: the operand is constant
    // along that index, so the dim can go.
    let ops: Vec<Operand<T>> = ops.into_iter().map(|op| diagonal(squeeze(op, &sizes))).collect::<Result<_, _>>()?;
    // later[i]: the labels of the operands after i, and the output's.
    let mut later = vec![output.clone(); ops.len()];
    for i in (0..ops.len().saturating_sub(1)).rev() {
        later[i] = later[i + 1].iter().chain(&ops[i + 1].labels).copied().collect();
    }
    let mut it = ops.into_iter().enumerate();
    let Some((_, first)) = it.next() else { bail!("Einsum needs an operand") };
    let mut acc = reduce(first, &later[0]);
    for (i, op) in it {
        let needed: Vec<Label> = later[i].iter().chain(&acc.labels).copied().collect();
        let op = reduce(op, &needed);
        acc = contract(acc, op, &later[i])?;
    }
    let acc = reduce(acc, &output);
    // Order the result as the output; an output index absent from every operand dim can only
    // be a broadcast dim of size 1.
    let mut src_strides = vec![];
    let mut shape = vec![];
    let acc_strides = strides(&acc.shape);
    for l in &output {
        match acc.labels.iter().position(|x| x == l) {
            Some(p) => {
                src_strides.push(acc_strides[p]);
                shape.push(acc.shape[p]);
            }
            None => {
                src_strides.push(0);
                shape.push(1);
            }
        }
    }
    Ok((gather(&acc.data, &shape, &src_strides), shape))
}

fn label_name(l: Label) -> String {
    if l >= ELLIPSIS {
        format!("...[{}]", l - ELLIPSIS)
    } else {
        char::from_u32(l).map_or_else(|| l.to_string(), |c| format!("'{c}'"))
    }
}

/// Drops the dims of size 1 whose index is larger in another operand.
fn squeeze<T>(mut op: Operand<T>, sizes: &HashMap<Label, usize>) -> Operand<T> {
    let keep: Vec<bool> = op.labels.iter().zip(&op.shape).map(|(l, &d)| d != 1 || sizes.get(l) == Some(&1)).collect();
    let mut k = keep.iter();
    op.labels.retain(|_| *k.next().unwrap_or(&true));
    let mut k = keep.iter();
    op.shape.retain(|_| *k.next().unwrap_or(&true));
    op
}

/// Takes the diagonal over every repeated index, leaving each index once.
fn diagonal<T: Scalar>(op: Operand<T>) -> Result<Operand<T>, OpError> {
    let st = strides(&op.shape);
    let mut labels = vec![];
    let mut shape = vec![];
    let mut src = vec![];
    for (i, &l) in op.labels.iter().enumerate() {
        match labels.iter().position(|&x| x == l) {
            Some(p) => {
                if shape[p] != op.shape[i] {
                    bail!("Einsum: repeated index {} has sizes {} and {}", label_name(l), shape[p], op.shape[i]);
                }
                src[p] += st[i];
            }
            None => {
                labels.push(l);
                shape.push(op.shape[i]);
                src.push(st[i]);
            }
        }
    }
    if labels.len() == op.labels.len() {
        return Ok(op);
    }
    let data = gather(&op.data, &shape, &src);
    Ok(Operand { labels, shape, data })
}

/// Sums out every index not in `needed`.
fn reduce<T: Scalar>(op: Operand<T>, needed: &[Label]) -> Operand<T> {
    let (kept, summed): (Vec<usize>, Vec<usize>) = (0..op.labels.len()).partition(|&i| needed.contains(&op.labels[i]));
    if summed.is_empty() {
        return op;
    }
    let order: Vec<usize> = kept.iter().chain(&summed).copied().collect();
    let data = permute(&op, &order);
    let block: usize = summed.iter().map(|&i| op.shape[i]).product();
    let shape: Vec<usize> = kept.iter().map(|&i| op.shape[i]).collect();
    let n: usize = shape.iter().product();
    let data = if block == 0 {
        vec![T::ZERO; n]
    } else {
        data.chunks(block).map(|c| c.iter().fold(T::ZERO, |s, &x| s.add(x))).collect()
    };
    Operand { labels: kept.iter().map(|&i| op.labels[i]).collect(), shape, data }
}

/// Contracts two operands over their shared indices not in `keep`; the shared indices in
/// `keep` are batch dims.
fn contract<T: Scalar>(a: Operand<T>, b: Operand<T>, keep: &[Label]) -> Result<Operand<T>, OpError> {
    let pos = |op: &Operand<T>, l: Label| op.labels.iter().position(|&x| x == l);
    let in_b = |l: &Label| b.labels.contains(l);
    let batch: Vec<Label> = a.labels.iter().copied().filter(|l| in_b(l) && keep.contains(l)).collect();
    let ks: Vec<Label> = a.labels.iter().copied().filter(|l| in_b(l) && !keep.contains(l)).collect();
    let ms: Vec<Label> = a.labels.iter().copied().filter(|l| !in_b(l)).collect();
    let ns: Vec<Label> = b.labels.iter().copied().filter(|l| !a.labels.contains(l)).collect();
    let order = |op: &Operand<T>, ls: &[&[Label]]| -> Vec<usize> {
        ls.iter().flat_map(|s| s.iter()).filter_map(|&l| pos(op, l)).collect()
    };
    let size = |op: &Operand<T>, ls: &[Label]| -> usize {
        ls.iter().filter_map(|&l| pos(op, l)).map(|p| op.shape[p]).product()
    };
    let (nb, m, k, n) = (size(&a, &batch), size(&a, &ms), size(&a, &ks), size(&b, &ns));
    let da = permute(&a, &order(&a, &[&batch, &ms, &ks]));
    let db = permute(&b, &order(&b, &[&batch, &ks, &ns]));
    let (data, _) = matmul(&da, &[nb, m, k], &db, &[nb, k, n])?;
    let mut shape: Vec<usize> = batch.iter().chain(&ms).filter_map(|&l| pos(&a, l)).map(|p| a.shape[p]).collect();
    shape.extend(ns.iter().filter_map(|&l| pos(&b, l)).map(|p| b.shape[p]));
    let labels = batch.iter().chain(&ms).chain(&ns).copied().collect();
    Ok(Operand { labels, shape, data })
}

/// The operand's data with its dims reordered so that new dim i is old dim `order[i]`.
fn permute<T: Copy>(op: &Operand<T>, order: &[usize]) -> Vec<T> {
    if order.iter().enumerate().all(|(i, &o)| i == o) {
        return op.data.clone();
    }
    let st = strides(&op.shape);
    let shape: Vec<usize> = order.iter().map(|&i| op.shape[i]).collect();
    let src: Vec<usize> = order.iter().map(|&i| st[i]).collect();
    gather(&op.data, &shape, &src)
}

/// The row-major tensor of `shape` whose element at index `idx` is `data[sum(idx * src)]`.
fn gather<T: Copy>(data: &[T], shape: &[usize], src: &[usize]) -> Vec<T> {
    let n: usize = shape.iter().product();
    let mut out = Vec::with_capacity(n);
    if n == 0 {
        return out;
    }
    let r = shape.len();
    let mut idx = vec![0; r];
    let mut off = 0;
    for _ in 0..n {
        out.push(data[off]);
        for d in (0..r).rev() {
            idx[d] += 1;
            off += src[d];
            if idx[d] < shape[d] {
                break;
            }
            off -= src[d] * shape[d];
            idx[d] = 0;
        }
    }
    out
}
