//! Index kernels: gathers, scatters, one-hot, non-zero, compress and unique.

use super::ints;
use crate::ops::common::{input, strides};
use crate::{bail, OpError, OpResult};
use kiln_ir::ops::layout::ScatterReduction;
use kiln_ir::{dispatch, DType, Elem, Tensor};
use std::cmp::Ordering;

/// Resolves a possibly negative index into a dim of size `n`.
fn index(i: i64, n: usize, what: &str) -> Result<usize, OpError> {
    let j = if i < 0 { i + n as i64 } else { i };
    if j < 0 || j >= n as i64 {
        bail!("{what} {i} is out of range for a dim of size {n}");
    }
    Ok(j as usize)
}

/// Checks that a tensor holds integer indices and returns them.
fn indices(t: &Tensor, what: &str) -> Result<Vec<i64>, OpError> {
    if !t.dtype().is_int() {
        bail!("{what} must be an integer tensor, found {}", t.dtype());
    }
    Ok(ints(t))
}

/// Picks whole `inner`-sized runs along the middle axis of an `[outer, n, inner]` view.
pub(super) fn take_along<T: Copy>(v: &[T], outer: usize, n: usize, inner: usize, idx: &[usize]) -> Vec<T> {
    let mut out = Vec::with_capacity(outer * idx.len() * inner);
    for o in 0..outer {
        let base = o * n * inner;
        for &i in idx {
            let s = base + i * inner;
            out.extend_from_slice(&v[s..s + inner]);
        }
    }
    out
}

/// Gathers entries `idx` (already in range) along `axis`, with output dim `axis` shaped `mid`.
fn take_axis(x: &Tensor, axis: usize, idx: &[usize], mid: &[usize]) -> Result<Tensor, OpError> {
    let s = x.shape();
    let outer: usize = s[..axis].iter().product();
    let inner: usize = s[axis + 1..].iter().product();
    let shape: Vec<usize> = s[..axis].iter().chain(mid).chain(&s[axis + 1..]).copied().collect();
    Ok(dispatch!(x.data(), v => Tensor::from_vec(shape, take_along(v, outer, s[axis], inner, idx))?))
}

pub(super) fn gather(axis: i64, inputs: &[Option<&Tensor>]) -> OpResult {
    let x = input(inputs, 0)?;
    let it = input(inputs, 1)?;
    let a = super::axis(axis, x.rank())?;
    if x.rank() == 0 {
        bail!("cannot gather from a scalar");
    }
    let n = x.shape()[a];
    let idx = indices(it, "indices")?.into_iter().map(|i| index(i, n, "index")).collect::<Result<Vec<_>, _>>()?;
    Ok(vec![take_axis(x, a, &idx, it.shape())?])
}

/// The data offset for each element of an index tensor shaped like the output, with the
/// coordinate along `axis` replaced by the index.
fn element_offsets(data: &[usize], idx_shape: &[usize], idx: &[i64], axis: usize) -> Result<Vec<usize>, OpError> {
    if data.len() != idx_shape.len() {
        bail!("indices of shape {idx_shape:?} do not match data of shape {data:?} in rank");
    }
    if let Some(d) = (0..data.len()).find(|&d| d != axis && idx_shape[d] > data[d]) {
        bail!("indices of shape {idx_shape:?} exceed data of shape {data:?} in dim {d}");
    }
    let st = strides(data);
    let mut out = Vec::with_capacity(idx.len());
    let mut coord = vec![0usize; data.len()];
    for &i in idx {
        let j = index(i, data[axis], "index")?;
        let off: usize = coord.iter().enumerate().map(|(d, &c)| if d == axis { j } else { c } * st[d]).sum();
        out.push(off);
        for d in (0..coord.len()).rev() {
            coord[d] += 1;
            if coord[d] < idx_shape[d] {
                break;
            }
            coord[d] = 0;
        }
    }
    Ok(out)
}

pub(super) fn gather_elements(axis: i64, inputs: &[Option<&Tensor>]) -> OpResult {
    let x = input(inputs, 0)?;
    let it = input(inputs, 1)?;
    let a = super::axis(axis, x.rank())?;
    let offs = element_offsets(x.shape(), it.shape(), &indices(it, "indices")?, a)?;
    let t = dispatch!(x.data(), v => Tensor::from_vec(it.shape().to_vec(), offs.iter().map(|&o| v[o]).collect())?);
    Ok(vec![t])
}

/// For GatherND and ScatterND: the data offset of every index tuple, the chunk size each
/// tuple addresses and the shape of the tuple grid (the output shape before the chunk dims).
fn nd_offsets(data: &[usize], it: &Tensor, batch_dims: usize) -> Result<(Vec<usize>, usize, Vec<usize>), OpError> {
    let is = it.shape();
    let Some(&k) = is.last() else { bail!("indices must have rank 1 or more") };
    if batch_dims >= is.len() || batch_dims + k > data.len() || data[..batch_dims] != is[..batch_dims] {
        bail!("indices of shape {is:?} do not fit data of shape {data:?} with batch_dims {batch_dims}");
    }
    let idx = indices(it, "indices")?;
    let st = strides(data);
    let chunk: usize = data[batch_dims + k..].iter().product();
    let batch_stride: usize = data[batch_dims..].iter().product();
    let tuples: usize = is[batch_dims..is.len() - 1].iter().product();
    let mut offs = Vec::with_capacity(idx.len() / k.max(1));
    let n_tuples: usize = is[..is.len() - 1].iter().product();
    for t in 0..n_tuples {
        let b = t.checked_div(tuples).unwrap_or(0);
        let mut off = b * batch_stride;
        for m in 0..k {
            off += index(idx[t * k + m], data[batch_dims + m], "index")? * st[batch_dims + m];
        }
        offs.push(off);
    }
    Ok((offs, chunk, is[..is.len() - 1].to_vec()))
}

pub(super) fn gather_nd(batch_dims: usize, inputs: &[Option<&Tensor>]) -> OpResult {
    let x = input(inputs, 0)?;
    let it = input(inputs, 1)?;
    let (offs, chunk, mut shape) = nd_offsets(x.shape(), it, batch_dims)?;
    let k = it.shape().last().copied().unwrap_or(0);
    shape.extend_from_slice(&x.shape()[batch_dims + k..]);
    fn run<T: Copy>(v: &[T], offs: &[usize], chunk: usize) -> Vec<T> {
        let mut out = Vec::with_capacity(offs.len() * chunk);
        for &o in offs {
            out.extend_from_slice(&v[o..o + chunk]);
        }
        out
    }
    Ok(vec![dispatch!(x.data(), v => Tensor::from_vec(shape, run(v, &offs, chunk))?)])
}

/// Combines an existing value with an update.
fn combine<T: Elem>(a: T, b: T, r: ScatterReduction) -> T {
    let float = T::DTYPE.is_float();
    match r {
        ScatterReduction::None => b,
        ScatterReduction::Max => {
            if b > a {
                b
            } else {
                a
            }
        }
        ScatterReduction::Min => {
            if b < a {
                b
            } else {
                a
            }
        }
        ScatterReduction::Add if float => T::from_f64(a.to_f64() + b.to_f64()),
        ScatterReduction::Mul if float => T::from_f64(a.to_f64() * b.to_f64()),
        ScatterReduction::Add => T::from_i64(a.to_i64().wrapping_add(b.to_i64())),
        ScatterReduction::Mul => T::from_i64(a.to_i64().wrapping_mul(b.to_i64())),
    }
}

/// Writes `updates` (in runs of `chunk`) at `offs` into a copy of `data`.
fn scatter(
    data: &Tensor,
    updates: &Tensor,
    offs: &[usize],
    chunk: usize,
    r: ScatterReduction,
) -> Result<Tensor, OpError> {
    if updates.dtype() != data.dtype() {
        bail!("updates have type {}, data {}", updates.dtype(), data.dtype());
    }
    fn run<T: Elem>(v: &[T], u: &Tensor, offs: &[usize], chunk: usize, r: ScatterReduction) -> Result<Vec<T>, OpError> {
        let u = u.as_slice::<T>()?;
        let mut out = v.to_vec();
        for (&o, src) in offs.iter().zip(u.chunks(chunk.max(1))) {
            for (dst, &s) in out[o..o + chunk].iter_mut().zip(src) {
                *dst = combine(*dst, s, r);
            }
        }
        Ok(out)
    }
    Ok(dispatch!(data.data(), v => Tensor::from_vec(data.shape().to_vec(), run(v, updates, offs, chunk, r)?)?))
}

pub(super) fn scatter_nd(reduction: ScatterReduction, inputs: &[Option<&Tensor>]) -> OpResult {
    let x = input(inputs, 0)?;
    let it = input(inputs, 1)?;
    let u = input(inputs, 2)?;
    let (offs, chunk, mut shape) = nd_offsets(x.shape(), it, 0)?;
    let k = it.shape().last().copied().unwrap_or(0);
    shape.extend_from_slice(&x.shape()[k..]);
    if u.shape() != shape {
        bail!("updates have shape {:?}, expected {shape:?}", u.shape());
    }
    Ok(vec![scatter(x, u, &offs, chunk, reduction)?])
}

pub(super) fn scatter_elements(axis: i64, reduction: ScatterReduction, inputs: &[Option<&Tensor>]) -> OpResult {
    let x = input(inputs, 0)?;
    let it = input(inputs, 1)?;
    let u = input(inputs, 2)?;
    if u.shape() != it.shape() {
        bail!("updates have shape {:?}, indices {:?}", u.shape(), it.shape());
    }
    let a = super::axis(axis, x.rank())?;
    let offs = element_offsets(x.shape(), it.shape(), &indices(it, "indices")?, a)?;
    Ok(vec![scatter(x, u, &offs, 1, reduction)?])
}

pub(super) fn one_hot(axis: i64, inputs: &[Option<&Tensor>]) -> OpResult {
    let it = input(inputs, 0)?;
    let depth = input(inputs, 1)?;
    let values = input(inputs, 2)?;
    let Some(&depth) = depth.to_f64_vec().first() else { bail!("depth is empty") };
    if depth < 1.0 {
        bail!("depth must be positive, found {depth}");
    }
    let depth = depth as usize;
    if values.len() != 2 {
        bail!("values must hold 2 elements (off, on), found {}", values.len());
    }
    let r = it.rank() + 1;
    let a = super::axis(axis, r)?;
    let outer: usize = it.shape()[..a].iter().product();
    let inner: usize = it.shape()[a..].iter().product();
    // Float indices are truncated, as the reference casts them to integers.
    let idx = it.to_i64_vec();
    let mut shape = it.shape().to_vec();
    shape.insert(a, depth);
    fn run<T: Copy>(v: &[T], idx: &[i64], outer: usize, depth: usize, inner: usize) -> Vec<T> {
        let (off, on) = (v[0], v[1]);
        let mut out = vec![off; outer * depth * inner];
        for o in 0..outer {
            for i in 0..inner {
                let mut j = idx[o * inner + i];
                if j < 0 {
                    j += depth as i64;
                }
                if (0..depth as i64).contains(&j) {
                    out[(o * depth + j as usize) * inner + i] = on;
                }
            }
        }
        out
    }
    Ok(vec![dispatch!(values.data(), v => Tensor::from_vec(shape, run(v, &idx, outer, depth, inner))?)])
}

pub(super) fn non_zero(inputs: &[Option<&Tensor>]) -> OpResult {
    let x = input(inputs, 0)?;
    let nz: Vec<bool> = x.cast(DType::Bool).into_vec::<bool>()?;
    let shape = if x.rank() == 0 { vec![1] } else { x.shape().to_vec() };
    let r = shape.len();
    let count = nz.iter().filter(|&&b| b).count();
    let mut out = vec![0i64; r * count];
    let mut coord = vec![0usize; r];
    let mut k = 0;
    for &b in &nz {
        if b {
            for d in 0..r {
                out[d * count + k] = coord[d] as i64;
            }
            k += 1;
        }
        for d in (0..r).rev() {
            coord[d] += 1;
            if coord[d] < shape[d] {
                break;
            }
            coord[d] = 0;
        }
    }
    Ok(vec![Tensor::from_vec(vec![r, count], out)?])
}

pub(super) fn compress(axis: Option<i64>, inputs: &[Option<&Tensor>]) -> OpResult {
    let x = input(inputs, 0)?;
    let cond = input(inputs, 1)?.cast(DType::Bool).into_vec::<bool>()?;
    let (x, a) = match axis {
        Some(a) => (x.clone(), super::axis(a, x.rank())?),
        None => (x.clone().reshape(vec![x.len()])?, 0),
    };
    let n = x.shape()[a];
    if cond.len() > n {
        bail!("condition has {} entries for a dim of size {n}", cond.len());
    }
    let idx: Vec<usize> = cond.iter().enumerate().filter(|(_, &c)| c).map(|(i, _)| i).collect();
    Ok(vec![take_axis(&x, a, &idx, &[idx.len()])?])
}

/// A total order for sorting that puts NaN last and treats all NaNs as equal.
fn total<T: PartialOrd>(a: &T, b: &T) -> Ordering {
    #[allow(clippy::eq_op)]
    let (na, nb) = (a != a, b != b);
    match (na, nb) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ => a.partial_cmp(b).unwrap_or(Ordering::Equal),
    }
}

pub(super) fn unique(axis: Option<i64>, sorted: bool, inputs: &[Option<&Tensor>]) -> OpResult {
    let x = input(inputs, 0)?;
    let (x, a) = match axis {
        Some(a) => (x.clone(), super::axis(a, x.rank())?),
        None => (x.clone().reshape(vec![x.len()])?, 0),
    };
    let s = x.shape();
    let (outer, n, inner) = (s[..a].iter().product::<usize>(), s[a], s[a + 1..].iter().product::<usize>());
    /// Groups the slices along the axis: the first index of each group (in output order),
    /// the inverse index of every slice, and the group sizes.
    fn groups<T: Elem>(
        v: &[T],
        outer: usize,
        n: usize,
        inner: usize,
        sorted: bool,
    ) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
        let slices: Vec<Vec<T>> = (0..n).map(|i| take_along(v, outer, n, inner, &[i])).collect();
        let cmp = |p: &usize, q: &usize| {
            slices[*p].iter().zip(&slices[*q]).map(|(x, y)| total(x, y)).find(|o| o.is_ne()).unwrap_or(Ordering::Equal)
        };
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(cmp);
        // Runs of equal slices; the stable sort puts each run's first occurrence first.
        let mut runs: Vec<Vec<usize>> = Vec::new();
        for &i in &order {
            match runs.last_mut() {
                Some(run) if cmp(&run[0], &i).is_eq() => run.push(i),
                _ => runs.push(vec![i]),
            }
        }
        if !sorted {
            runs.sort_by_key(|r| r[0]);
        }
        let mut inverse = vec![0; n];
        for (g, run) in runs.iter().enumerate() {
            for &i in run {
                inverse[i] = g;
            }
        }
        (runs.iter().map(|r| r[0]).collect(), inverse, runs.iter().map(Vec::len).collect())
    }
    let (first, inverse, counts) = dispatch!(x.data(), v => groups(v, outer, n, inner, sorted));
    let y = take_axis(&x, a, &first, &[first.len()])?;
    let i64s = |v: &[usize]| Tensor::from_vec(vec![v.len()], v.iter().map(|&i| i as i64).collect::<Vec<_>>());
    Ok(vec![y, i64s(&first)?, i64s(&inverse)?, i64s(&counts)?])
}
