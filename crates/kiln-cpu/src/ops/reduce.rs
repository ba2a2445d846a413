//! CPU kernels for the reduce family: `Reduce*`, ArgMax, ArgMin, TopK, CumSum.
//!
//! Every reduction goes through a [`Plan`], which lists where each output cell's inputs lie;
//! the norm family uses the same plans for its statistics.

use super::common::{axis, input, opt_input, strides};
use crate::{bail, OpError, OpResult};
use kiln_ir::ops::reduce::{reduced_axes, Reducer};
use kiln_ir::ops::ReduceOp;
use kiln_ir::{DType, Elem, Tensor, TensorData};
use rayon::prelude::*;
use std::cmp::Ordering;

/// Above this many cells, kernels split their work over the rayon pool.
pub(super) const PAR_MIN: usize = 1 << 15;

pub(super) fn eval(op: &ReduceOp, inputs: &[Option<&Tensor>], num_outputs: usize) -> OpResult {
    let x = input(inputs, 0)?;
    match op {
        ReduceOp::Reduce { reducer, axes, keepdims, noop_with_empty_axes } => {
            let axes = match (axes, opt_input(inputs, 1)) {
                (Some(a), _) => a.clone(),
                (None, Some(t)) => int_values(t, "axes")?,
                (None, None) => vec![],
            };
            if axes.is_empty() && *noop_with_empty_axes {
                return Ok(vec![x.clone()]);
            }
            let red = reduced_axes(&axes, x.rank()).map_err(OpError)?;
            Ok(vec![reduce(x, *reducer, &red, *keepdims)?])
        }
        ReduceOp::ArgMax { axis: a, keepdims, select_last_index } => {
            Ok(vec![arg_extreme(x, *a, *keepdims, *select_last_index, true)?])
        }
        ReduceOp::ArgMin { axis: a, keepdims, select_last_index } => {
            Ok(vec![arg_extreme(x, *a, *keepdims, *select_last_index, false)?])
        }
        ReduceOp::TopK { axis: a, largest, k, .. } => {
            let k = match k {
                Some(k) => *k,
                None => {
                    let v = int_values(input(inputs, 1)?, "k")?;
                    match v[..] {
                        [k] if k >= 0 => k as usize,
                        _ => bail!("k must hold one count of at least 0, found {v:?}"),
                    }
                }
            };
            let (values, indices) = top_k(x, *a, k, *largest)?;
            let mut out = vec![values, indices];
            out.truncate(num_outputs.max(1));
            Ok(out)
        }
        ReduceOp::CumSum { exclusive, reverse } => {
            let a = match int_values(input(inputs, 1)?, "axis")?[..] {
                [a] => a,
                ref v => bail!("axis must hold one value, found {v:?}"),
            };
            Ok(vec![cum_sum(x, a, *exclusive, *reverse)?])
        }
    }
}

/// The values of an integer tensor input such as `axes` or `k`.
fn int_values(t: &Tensor, what: &str) -> Result<Vec<i64>, OpError> {
    if !t.dtype().is_int() {
        bail!("{what} must be an integer tensor, found {}", t.dtype());
    }
    Ok(t.to_i64_vec())
}

/// Where the inputs of every output cell of a reduction lie: output cell `o` reduces the input
/// cells at `bases[o] + offsets[j]` for every `j`.
#[derive(Debug)]
pub(super) struct Plan {
    /// The output shape.
    pub out_shape: Vec<usize>,
    /// Input offset of each output cell's first reduced cell, in output order.
    pub bases: Vec<usize>,
    /// Offsets of the reduced cells relative to a base, in input order.
    pub offsets: Vec<usize>,
    /// Whether `offsets` is `0..offsets.len()`, so that each group is a contiguous slice.
    pub contiguous: bool,
}

impl Plan {
    /// The plan reducing `axes` (sorted, distinct, in range) of `shape`.
    pub fn new(shape: &[usize], axes: &[usize], keepdims: bool) -> Plan {
        let st = strides(shape);
        let (mut kept, mut reduced) = (vec![], vec![]);
        let mut out_shape = vec![];
        for (i, (&n, &s)) in shape.iter().zip(&st).enumerate() {
            if axes.contains(&i) {
                reduced.push((n, s));
                if keepdims {
                    out_shape.push(1);
                }
            } else {
                kept.push((n, s));
                out_shape.push(n);
            }
        }
        let offsets = walk(&reduced);
        let contiguous = offsets.iter().enumerate().all(|(i, &o)| i == o);
        Plan { out_shape, bases: walk(&kept), offsets, contiguous }
    }

    /// The number of input cells per output cell.
    pub fn group_len(&self) -> usize {
        self.offsets.len()
    }

    /// Whether the groups are consecutive slices covering all `len` cells.
    fn tiles(&self, len: usize) -> bool {
        let n = self.offsets.len();
        self.contiguous && n > 0 && self.bases.len() * n == len
    }

    /// Calls `f` with the input cells of every output cell, in output order.
    pub fn map<T: Copy + Sync, U: Send>(&self, v: &[T], f: impl Fn(&[T]) -> U + Sync) -> Vec<U> {
        let n = self.offsets.len();
        if self.tiles(v.len()) {
            return if v.len() >= PAR_MIN { v.par_chunks(n).map(&f).collect() } else { v.chunks(n).map(f).collect() };
        }
        let mut scratch = Vec::with_capacity(if self.contiguous { 0 } else { n });
        let mut out = Vec::with_capacity(self.bases.len());
        for &b in &self.bases {
            if self.contiguous {
                out.push(f(&v[b..b + n]));
            } else {
                scratch.clear();
                scratch.extend(self.offsets.iter().map(|&o| v[b + o]));
                out.push(f(&scratch));
            }
        }
        out
    }

    /// Calls `f` on the cells of every group in place, `f` also getting the group's number;
    /// returns what `f` returns, in group order.
    pub fn update<T: Copy + Send + Sync, U: Send>(
        &self,
        v: &mut [T],
        f: impl Fn(usize, &mut [T]) -> U + Sync,
    ) -> Vec<U> {
        let n = self.offsets.len();
        if self.tiles(v.len()) {
            return if v.len() >= PAR_MIN {
                v.par_chunks_mut(n).enumerate().map(|(g, s)| f(g, s)).collect()
            } else {
                v.chunks_mut(n).enumerate().map(|(g, s)| f(g, s)).collect()
            };
        }
        let mut scratch = Vec::with_capacity(n);
        let mut out = Vec::with_capacity(self.bases.len());
        for (g, &b) in self.bases.iter().enumerate() {
            scratch.clear();
            scratch.extend(self.offsets.iter().map(|&o| v[b + o]));
            out.push(f(g, &mut scratch));
            for (&o, &x) in self.offsets.iter().zip(&scratch) {
                v[b + o] = x;
            }
        }
        out
    }
}

/// Offsets of every cell of a box of `(size, stride)` dims, row-major.
fn walk(dims: &[(usize, usize)]) -> Vec<usize> {
    let n: usize = dims.iter().map(|d| d.0).product();
    let mut out = Vec::with_capacity(n);
    let mut coord = vec![0usize; dims.len()];
    let mut off = 0;
    for _ in 0..n {
        out.push(off);
        for d in (0..dims.len()).rev() {
            let (size, stride) = dims[d];
            coord[d] += 1;
            off += stride;
            if coord[d] < size {
                break;
            }
            off -= stride * size;
            coord[d] = 0;
        }
    }
    out
}

/// Sum of f32 values with several accumulators, so that the loop vectorizes.
pub(super) fn sum_f32(s: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = s.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

/// Maximum of f32 values (NaN propagates); `-inf` for none.
pub(super) fn max_f32(s: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = s.chunks_exact(8);
    let rest = chunks.remainder();
    let mut nan = false;
    for c in chunks {
        for i in 0..8 {
            nan |= c[i].is_nan();
            acc[i] = acc[i].max(c[i]);
        }
    }
    let m = rest.iter().fold(acc.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)), |a, &b| {
        nan |= b.is_nan();
        a.max(b)
    });
    if nan {
        f32::NAN
    } else {
        m
    }
}

/// Reduces `axes` (sorted, distinct, in range) of `x`.
pub(super) fn reduce(x: &Tensor, r: Reducer, axes: &[usize], keepdims: bool) -> Result<Tensor, OpError> {
    let plan = Plan::new(x.shape(), axes, keepdims);
    if let (Ok(v), true, Reducer::Sum | Reducer::Mean) = (x.as_slice::<f32>(), plan.group_len() > 0, r) {
        let scale = if r == Reducer::Mean { 1.0 / plan.group_len() as f32 } else { 1.0 };
        let out = plan.map(v, |s| sum_f32(s) * scale);
        return Ok(Tensor::from_vec(plan.out_shape, out)?);
    }
    let data = kiln_ir::dispatch!(x.data(), v => reduce_typed(v, r, &plan));
    Ok(Tensor::new(plan.out_shape, data)?)
}

fn reduce_typed<T: Elem>(v: &[T], r: Reducer, plan: &Plan) -> TensorData {
    let out: Vec<T> = if plan.group_len() == 0 {
        // The reduction of nothing is the reducer's identity.
        let id = match r {
            Reducer::Sum | Reducer::L1 | Reducer::L2 | Reducer::SumSquare => 0.0,
            Reducer::Prod => 1.0,
            Reducer::Mean => f64::NAN,
            Reducer::Max | Reducer::LogSum | Reducer::LogSumExp => f64::NEG_INFINITY,
            Reducer::Min => f64::INFINITY,
        };
        vec![T::from_f64(id); plan.bases.len()]
    } else {
        match r {
            Reducer::Max => plan.map(v, |s| extreme(s, Ordering::Greater)),
            Reducer::Min => plan.map(v, |s| extreme(s, Ordering::Less)),
            Reducer::Sum | Reducer::Prod | Reducer::L1 | Reducer::SumSquare if T::DTYPE.is_int() => {
                plan.map(v, |s| T::from_i64(fold_int(s, r)))
            }
            _ => plan.map(v, |s| T::from_f64(fold_f64(s, r))),
        }
    };
    T::wrap(out)
}

fn is_nan<T: PartialOrd>(x: &T) -> bool {
    x.partial_cmp(x).is_none()
}

/// The greatest (`Greater`) or least (`Less`) element of a non-empty slice; NaN propagates.
fn extreme<T: Elem>(s: &[T], want: Ordering) -> T {
    let mut acc = s[0];
    for &v in &s[1..] {
        if v.partial_cmp(&acc) == Some(want) || is_nan(&v) {
            acc = v;
        }
    }
    acc
}

/// Integer reductions wrap, as the integer arithmetic of the reference does.
fn fold_int<T: Elem>(s: &[T], r: Reducer) -> i64 {
    let it = s.iter().map(|x| x.to_i64());
    match r {
        Reducer::Prod => it.fold(1i64, |a, b| a.wrapping_mul(b)),
        Reducer::L1 => it.fold(0i64, |a, b| a.wrapping_add(b.wrapping_abs())),
        Reducer::SumSquare => it.fold(0i64, |a, b| a.wrapping_add(b.wrapping_mul(b))),
        _ => it.fold(0i64, |a, b| a.wrapping_add(b)),
    }
}

fn fold_f64<T: Elem>(s: &[T], r: Reducer) -> f64 {
    let it = s.iter().map(|x| x.to_f64());
    match r {
        Reducer::Sum => it.sum(),
        Reducer::Mean => it.sum::<f64>() / s.len() as f64,
        Reducer::Prod => it.product(),
        Reducer::L1 => it.map(f64::abs).sum(),
        Reducer::L2 => it.map(|x| x * x).sum::<f64>().sqrt(),
        Reducer::SumSquare => it.map(|x| x * x).sum(),
        Reducer::LogSum => it.sum::<f64>().ln(),
        Reducer::LogSumExp => {
            let m = it.clone().fold(f64::NEG_INFINITY, f64::max);
            if m.is_infinite() {
                return m;
            }
            m + it.map(|x| (x - m).exp()).sum::<f64>().ln()
        }
        Reducer::Max => it.fold(f64::NEG_INFINITY, f64::max),
        Reducer::Min => it.fold(f64::INFINITY, f64::min),
    }
}

/// `(outer, n, inner)`: the sizes before, at and after `axis`.
pub(super) fn split_at_axis(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (shape[..axis].iter().product(), shape[axis], shape[axis + 1..].iter().product())
}

fn arg_extreme(x: &Tensor, a: i64, keepdims: bool, last: bool, max: bool) -> Result<Tensor, OpError> {
    let a = axis(a, x.rank())?;
    let (outer, n, inner) = split_at_axis(x.shape(), a);
    if n == 0 {
        bail!("cannot take the arg-{} of an empty axis {a}", if max { "max" } else { "min" });
    }
    let want = if max { Ordering::Greater } else { Ordering::Less };
    let out: Vec<i64> = kiln_ir::dispatch!(x.data(), v => {
        let mut out = Vec::with_capacity(outer * inner);
        for o in 0..outer {
            for i in 0..inner {
                let at = |j: usize| v[(o * n + j) * inner + i];
                let (mut best, mut bi) = (at(0), 0);
                for j in 1..n {
                    let c = at(j);
                    let better = match c.partial_cmp(&best) {
                        Some(ord) => ord == want || (last && ord == Ordering::Equal),
                        // The first NaN wins, as in numpy.
                        None => is_nan(&c) && !is_nan(&best),
                    };
                    if better {
                        best = c;
                        bi = j;
                    }
                }
                out.push(bi as i64);
            }
        }
        out
    });
    let mut shape = x.shape().to_vec();
    if keepdims {
        shape[a] = 1;
    } else {
        shape.remove(a);
    }
    Ok(Tensor::from_vec(shape, out)?)
}

/// A total order on values where NaN is the greatest, as numpy sorts.
fn total_cmp<T: Elem>(a: &T, b: &T) -> Ordering {
    a.partial_cmp(b).unwrap_or_else(|| is_nan(a).cmp(&is_nan(b)))
}

fn top_k(x: &Tensor, a: i64, k: usize, largest: bool) -> Result<(Tensor, Tensor), OpError> {
    let a = axis(a, x.rank())?;
    let (outer, n, inner) = split_at_axis(x.shape(), a);
    if k > n {
        bail!("k = {k} is larger than axis {a} of size {n}");
    }
    let mut idx = vec![0i64; outer * k * inner];
    let values = kiln_ir::dispatch!(x.data(), v => {
        let mut vals = vec![Default::default(); outer * k * inner];
        let mut order: Vec<usize> = Vec::with_capacity(n);
        for o in 0..outer {
            for i in 0..inner {
                let at = |j: usize| v[(o * n + j) * inner + i];
                order.clear();
                order.extend(0..n);
                // A stable sort keeps equal values in index order, as the reference does.
                if largest {
                    order.sort_by(|&p, &q| total_cmp(&at(q), &at(p)));
                } else {
                    order.sort_by(|&p, &q| total_cmp(&at(p), &at(q)));
                }
                for (j, &src) in order.iter().take(k).enumerate() {
                    let dst = (o * k + j) * inner + i;
                    vals[dst] = at(src);
                    idx[dst] = src as i64;
                }
            }
        }
        wrap(vals)
    });
    let mut shape = x.shape().to_vec();
    shape[a] = k;
    Ok((Tensor::new(shape.clone(), values)?, Tensor::from_vec(shape, idx)?))
}

/// Wraps a typed vector, for code inside `dispatch!` where the element type has no name.
fn wrap<T: Elem>(v: Vec<T>) -> TensorData {
    T::wrap(v)
}

fn cum_sum(x: &Tensor, a: i64, exclusive: bool, reverse: bool) -> Result<Tensor, OpError> {
    let a = axis(a, x.rank())?;
    let (outer, n, inner) = split_at_axis(x.shape(), a);
    let int = x.dtype().is_int();
    if x.dtype() == DType::Bool {
        bail!("CumSum does not take bool tensors");
    }
    let data = kiln_ir::dispatch!(x.data(), v => {
        let mut out = v.clone();
        for o in 0..outer {
            for i in 0..inner {
                let at = |j: usize| (o * n + j) * inner + i;
                let (mut fsum, mut isum) = (0f64, 0i64);
                for step in 0..n {
                    let j = if reverse { n - 1 - step } else { step };
                    let cell = v[at(j)];
                    if exclusive {
                        out[at(j)] = if int { Elem::from_i64(isum) } else { Elem::from_f64(fsum) };
                    }
                    if int {
                        isum = isum.wrapping_add(cell.to_i64());
                    } else {
                        fsum += cell.to_f64();
                    }
                    if !exclusive {
                        out[at(j)] = if int { Elem::from_i64(isum) } else { Elem::from_f64(fsum) };
                    }
                }
            }
        }
        wrap(out)
    });
    Ok(Tensor::new(x.shape().to_vec(), data)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t<T: Elem>(shape: &[usize], v: Vec<T>) -> Tensor {
        Tensor::from_vec(shape.to_vec(), v).unwrap()
    }

    /// Runs the kernel and compares every output: shape and type exactly, values within
    /// 1e-5 relative.
    fn check(op: ReduceOp, inputs: &[Option<Tensor>], expected: &[Tensor]) {
        let ins: Vec<Option<&Tensor>> = inputs.iter().map(|t| t.as_ref()).collect();
        let out = eval(&op, &ins, expected.len()).unwrap();
        assert_eq!(out.len(), expected.len());
        for (o, e) in out.iter().zip(expected) {
            assert_eq!((o.dtype(), o.shape()), (e.dtype(), e.shape()), "{o:?} vs {e:?}");
            for (a, b) in o.to_f64_vec().iter().zip(e.to_f64_vec()) {
                assert!(a == &b || (a - b).abs() <= 1e-5 * b.abs().max(1.0), "{o:?} vs {e:?}");
            }
        }
    }

    fn reduce_op(reducer: Reducer, keepdims: bool) -> ReduceOp {
        ReduceOp::Reduce { reducer, axes: None, keepdims, noop_with_empty_axes: false }
    }

    #[test]
    fn sum_over_a_middle_axis_given_negative() {
        let x: Vec<f32> = (0..30).map(|i| i as f32).collect();
        let mut want = vec![0f32; 6];
        for a in 0..3 {
            for b in 0..5 {
                for c in 0..2 {
                    want[a * 2 + c] += x[(a * 5 + b) * 2 + c];
                }
            }
        }
        let axes = Some(t(&[1], vec![-2i64]));
        check(reduce_op(Reducer::Sum, false), &[Some(t(&[3, 5, 2], x)), axes], &[t(&[3, 2], want)]);
    }

    #[test]
    fn large_mean_over_last_axis_matches_naive() {
        let (rows, n) = (50, 783);
        let x: Vec<f32> = (0..rows * n).map(|i| ((i * 7919) % 1000) as f32 / 100.0).collect();
        let want: Vec<f32> =
            x.chunks(n).map(|r| (r.iter().map(|&v| v as f64).sum::<f64>() / n as f64) as f32).collect();
        let axes = Some(t(&[1], vec![1i64]));
        check(reduce_op(Reducer::Mean, true), &[Some(t(&[rows, n], x)), axes], &[t(&[rows, 1], want)]);
    }

    #[test]
    fn empty_reductions_give_the_identity() {
        let x = Some(t(&[2, 0], Vec::<f32>::new()));
        let axes = Some(t(&[1], vec![1i64]));
        let inputs = [x, axes.clone()];
        check(reduce_op(Reducer::Max, false), &inputs, &[t(&[2], vec![f32::NEG_INFINITY; 2])]);
        check(reduce_op(Reducer::Prod, false), &inputs, &[t(&[2], vec![1f32; 2])]);
        check(reduce_op(Reducer::LogSumExp, false), &inputs, &[t(&[2], vec![f32::NEG_INFINITY; 2])]);
        let xi = Some(t(&[2, 0], Vec::<i32>::new()));
        check(reduce_op(Reducer::Min, true), &[xi, axes], &[t(&[2, 1], vec![i32::MAX; 2])]);
    }

    #[test]
    fn empty_axes_reduce_all_or_nothing() {
        let x = t(&[2, 2], vec![1i64, 2, 3, 4]);
        check(reduce_op(Reducer::Sum, false), &[Some(x.clone())], &[t(&[], vec![10i64])]);
        let noop = ReduceOp::Reduce { reducer: Reducer::Sum, axes: None, keepdims: true, noop_with_empty_axes: true };
        check(noop, &[Some(x.clone()), Some(t(&[0], Vec::<i64>::new()))], &[x]);
    }

    #[test]
    fn log_sum_exp_is_stable_for_large_values() {
        let x = t(&[1, 2], vec![1000f32, 1000.0]);
        let want = 1000.0 + 2f32.ln();
        check(reduce_op(Reducer::LogSumExp, false), &[Some(x)], &[t(&[], vec![want])]);
    }

    #[test]
    fn argmax_ties_pick_first_or_last() {
        let x = t(&[2, 3], vec![2f32, 5.0, 5.0, 1.0, 1.0, 0.0]);
        let op = |last| ReduceOp::ArgMax { axis: -1, keepdims: true, select_last_index: last };
        check(op(false), &[Some(x.clone())], &[t(&[2, 1], vec![1i64, 0])]);
        check(op(true), &[Some(x.clone())], &[t(&[2, 1], vec![2i64, 1])]);
        let min = ReduceOp::ArgMin { axis: 0, keepdims: false, select_last_index: false };
        check(min, &[Some(x)], &[t(&[3], vec![1i64, 1, 1])]);
    }

    #[test]
    fn top_k_keeps_index_order_for_equal_values() {
        let x = t(&[2, 4], vec![3i64, 1, 3, 2, 0, 0, 5, 0]);
        let k = Some(t(&[1], vec![3i64]));
        let op = |largest| ReduceOp::TopK { axis: 1, largest, sorted: true, k: None };
        check(
            op(true),
            &[Some(x.clone()), k.clone()],
            &[t(&[2, 3], vec![3i64, 3, 2, 5, 0, 0]), t(&[2, 3], vec![0i64, 2, 3, 2, 0, 1])],
        );
        check(
            op(false),
            &[Some(x), k],
            &[t(&[2, 3], vec![1i64, 2, 3, 0, 0, 0]), t(&[2, 3], vec![1i64, 3, 0, 0, 1, 3])],
        );
    }

    #[test]
    fn top_k_along_a_middle_axis() {
        let x = t(&[1, 3, 2], vec![1f32, 6.0, 3.0, 4.0, 2.0, 5.0]);
        let op = ReduceOp::TopK { axis: -2, largest: true, sorted: true, k: Some(2) };
        check(op, &[Some(x)], &[t(&[1, 2, 2], vec![3f32, 6.0, 2.0, 5.0]), t(&[1, 2, 2], vec![1i64, 0, 2, 2])]);
    }

    #[test]
    fn cum_sum_exclusive_reverse() {
        let x = t(&[2, 3], vec![1i32, 2, 3, 4, 5, 6]);
        let axis = Some(t(&[], vec![1i64]));
        let op = ReduceOp::CumSum { exclusive: true, reverse: true };
        check(op, &[Some(x.clone()), axis], &[t(&[2, 3], vec![5i32, 3, 0, 11, 6, 0])]);
        let op = ReduceOp::CumSum { exclusive: false, reverse: false };
        check(op, &[Some(x), Some(t(&[1], vec![-2i32]))], &[t(&[2, 3], vec![1i32, 2, 3, 5, 7, 9])]);
    }

    #[test]
    fn bad_axes_are_errors() {
        let x = t(&[2, 2], vec![1f32; 4]);
        let axes = t(&[1], vec![2i64]);
        let err = eval(&reduce_op(Reducer::Sum, true), &[Some(&x), Some(&axes)], 1).unwrap_err();
        assert!(err.0.contains("out of range"), "{err}");
    }
}
