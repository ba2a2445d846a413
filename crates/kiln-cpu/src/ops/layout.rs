//! CPU kernels for the layout family: shape changes and queries and tensor creation here,
//! strided copies in [`copy`], gathers, scatters and the other index kernels in [`index`].

mod copy;
mod index;

use crate::ops::common::{input, opt_input};
use crate::{bail, OpError, OpResult};
use kiln_ir::ops::layout::shape_range;
use kiln_ir::ops::LayoutOp;
use kiln_ir::{dispatch, Elem, Tensor};

pub(super) fn eval(op: &LayoutOp, inputs: &[Option<&Tensor>], num_outputs: usize) -> OpResult {
    match op {
        LayoutOp::Identity => Ok(vec![input(inputs, 0)?.clone()]),
        LayoutOp::Dropout => {
            let x = input(inputs, 0)?;
            let mut out = vec![x.clone()];
            if num_outputs > 1 {
                out.push(Tensor::from_vec(x.shape().to_vec(), vec![true; x.len()])?);
            }
            Ok(out)
        }
        LayoutOp::Reshape { shape, allowzero } => {
            let x = input(inputs, 0)?;
            let target = match shape {
                Some(s) => s.clone(),
                None => ints(input(inputs, 1)?),
            };
            let shape = reshape_shape(x.shape(), &target, *allowzero)?;
            Ok(vec![x.clone().reshape(shape)?])
        }
        LayoutOp::Flatten { axis } => {
            let x = input(inputs, 0)?;
            let r = x.rank() as i64;
            let a = if *axis < 0 { axis + r } else { *axis };
            if !(0..=r).contains(&a) {
                bail!("axis {axis} is out of range for rank {r}");
            }
            let rows = x.shape()[..a as usize].iter().product();
            Ok(vec![x.clone().reshape(vec![rows, x.len().checked_div(rows).unwrap_or(0)])?])
        }
        LayoutOp::Squeeze { axes } => {
            let x = input(inputs, 0)?;
            let axes = axes.clone().or_else(|| opt_ints(inputs, 1));
            let mut keep = vec![true; x.rank()];
            match axes {
                Some(axes) => {
                    for a in axes {
                        let d = axis(a, x.rank())?;
                        if x.shape()[d] != 1 {
                            bail!("cannot squeeze axis {a} of size {} in shape {:?}", x.shape()[d], x.shape());
                        }
                        keep[d] = false;
                    }
                }
                None => keep.iter_mut().zip(x.shape()).for_each(|(k, &d)| *k = d != 1),
            }
            let shape = x.shape().iter().zip(&keep).filter(|(_, &k)| k).map(|(&d, _)| d).collect();
            Ok(vec![x.clone().reshape(shape)?])
        }
        LayoutOp::Unsqueeze { axes } => {
            let x = input(inputs, 0)?;
            let axes = match axes {
                Some(a) => a.clone(),
                None => ints(input(inputs, 1)?),
            };
            let r = x.rank() + axes.len();
            let mut new = vec![false; r];
            for &a in &axes {
                let d = axis(a, r)?;
                if std::mem::replace(&mut new[d], true) {
                    bail!("axis {a} is repeated in axes {axes:?}");
                }
            }
            let mut dims = x.shape().iter();
            let shape = new.iter().map(|&n| if n { 1 } else { dims.next().copied().unwrap_or(1) }).collect();
            Ok(vec![x.clone().reshape(shape)?])
        }
        LayoutOp::Transpose { perm } => copy::transpose(perm.as_deref(), inputs),
        LayoutOp::Concat { axis } => copy::concat(*axis, inputs),
        LayoutOp::Split { axis, split } => copy::split(*axis, split.as_deref(), inputs, num_outputs),
        LayoutOp::Slice { attrs } => copy::slice(attrs.as_ref(), inputs),
        LayoutOp::Gather { axis } => index::gather(*axis, inputs),
        LayoutOp::GatherElements { axis } => index::gather_elements(*axis, inputs),
        LayoutOp::GatherND { batch_dims } => index::gather_nd(*batch_dims, inputs),
        LayoutOp::ScatterND { reduction } => index::scatter_nd(*reduction, inputs),
        LayoutOp::ScatterElements { axis, reduction } => index::scatter_elements(*axis, *reduction, inputs),
        LayoutOp::Pad { mode, pads, value } => copy::pad(*mode, pads.as_deref(), *value, inputs),
        LayoutOp::Tile => copy::tile(inputs),
        LayoutOp::Expand => copy::expand(inputs),
        LayoutOp::Shape { start, end } => {
            let x = input(inputs, 0)?;
            let (a, b) = shape_range(x.rank(), *start, *end);
            let dims: Vec<i64> = x.shape()[a..b].iter().map(|&d| d as i64).collect();
            Ok(vec![Tensor::from_vec(vec![dims.len()], dims)?])
        }
        LayoutOp::Size => Ok(vec![Tensor::scalar(input(inputs, 0)?.len() as i64)]),
        LayoutOp::ConstantOfShape { value } => {
            let s = input(inputs, 0)?;
            let dims = ints(s);
            if dims.iter().any(|&d| d < 0) {
                bail!("shape {dims:?} has a negative dim");
            }
            let shape: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
            let n =
                kiln_ir::checked_numel(&shape).ok_or_else(|| OpError::new(format!("shape {shape:?} is too large")))?;
            let t = dispatch!(value.data(), v => match v.first() {
                Some(&f) => Tensor::from_vec(shape, vec![f; n])?,
                None => bail!("value holds no element"),
            });
            Ok(vec![t])
        }
        LayoutOp::Range => range(inputs),
        LayoutOp::DepthToSpace { blocksize, mode } => copy::depth_to_space(*blocksize, *mode, inputs),
        LayoutOp::SpaceToDepth { blocksize } => copy::space_to_depth(*blocksize, inputs),
        LayoutOp::Trilu { upper } => copy::trilu(*upper, inputs),
        LayoutOp::OneHot { axis } => index::one_hot(*axis, inputs),
        LayoutOp::NonZero => index::non_zero(inputs),
        LayoutOp::Compress { axis } => index::compress(*axis, inputs),
        LayoutOp::ReverseSequence { batch_axis, time_axis } => copy::reverse_sequence(*batch_axis, *time_axis, inputs),
        LayoutOp::EyeLike { dtype, k } => {
            let x = input(inputs, 0)?;
            let &[rows, cols] = x.shape() else { bail!("input must be 2D, found shape {:?}", x.shape()) };
            let mut t = Tensor::zeros(dtype.unwrap_or(x.dtype()), vec![rows, cols])?;
            fn fill<T: Elem>(v: &mut [T], rows: usize, cols: usize, k: i64) {
                for i in 0..rows {
                    let j = i as i64 + k;
                    if (0..cols as i64).contains(&j) {
                        v[i * cols + j as usize] = T::from_i64(1);
                    }
                }
            }
            let (shape, mut data) = t.into_parts();
            dispatch!(&mut data, v => fill(v, rows, cols, *k));
            t = Tensor::new(shape, data)?;
            Ok(vec![t])
        }
        LayoutOp::Unique { axis, sorted } => index::unique(*axis, *sorted, inputs),
        LayoutOp::CenterCropPad { axes } => copy::center_crop_pad(axes.as_deref(), inputs),
    }
}

/// The elements of an index-like tensor (shapes, axes, pads) as i64.
fn ints(t: &Tensor) -> Vec<i64> {
    match t.as_slice::<i64>() {
        Ok(s) => s.to_vec(),
        Err(_) => t.to_i64_vec(),
    }
}

/// [`ints`] of input `i`, if present.
fn opt_ints(inputs: &[Option<&Tensor>], i: usize) -> Option<Vec<i64>> {
    opt_input(inputs, i).map(ints)
}

/// Resolves a possibly negative axis.
fn axis(a: i64, rank: usize) -> Result<usize, OpError> {
    crate::ops::common::axis(a, rank)
}

/// Reshape's target shape with its 0 (copy the input dim, unless `allowzero`) and -1 (infer).
fn reshape_shape(input: &[usize], target: &[i64], allowzero: bool) -> Result<Vec<usize>, OpError> {
    let mut out = Vec::with_capacity(target.len());
    let mut infer = None;
    for (i, &t) in target.iter().enumerate() {
        out.push(match t {
            0 if !allowzero => match input.get(i) {
                Some(&d) => d,
                None => bail!("shape {target:?} copies dim {i}, but the input has rank {}", input.len()),
            },
            -1 => {
                if infer.replace(i).is_some() {
                    bail!("shape {target:?} has more than one -1");
                }
                1
            }
            t if t < 0 => bail!("shape {target:?} has a negative dim"),
            t => t as usize,
        });
    }
    let n: usize = input.iter().product();
    if let Some(i) = infer {
        let known: usize = out.iter().product();
        if n.checked_rem(known) != Some(0) {
            bail!("cannot reshape {input:?} to {target:?}");
        }
        out[i] = n / known;
    }
    if out.iter().product::<usize>() != n {
        bail!("cannot reshape {input:?} ({n} elements) to {target:?}");
    }
    Ok(out)
}

fn range(inputs: &[Option<&Tensor>]) -> OpResult {
    let (start, limit, delta) = (input(inputs, 0)?, input(inputs, 1)?, input(inputs, 2)?);
    let dtype = start.dtype();
    if limit.dtype() != dtype || delta.dtype() != dtype {
        bail!("start, limit and delta have types {dtype}, {} and {}", limit.dtype(), delta.dtype());
    }
    if start.len() != 1 || limit.len() != 1 || delta.len() != 1 {
        bail!("start, limit and delta must be scalars");
    }
    if dtype.is_float() {
        let (s, l, d) = (start.to_f64_vec()[0], limit.to_f64_vec()[0], delta.to_f64_vec()[0]);
        if d == 0.0 || !d.is_finite() {
            bail!("delta must be finite and non-zero, found {d}");
        }
        let n = ((l - s) / d).ceil().max(0.0) as usize;
        let v: Vec<f64> = (0..n).map(|i| s + i as f64 * d).collect();
        Ok(vec![Tensor::from_vec(vec![n], v)?.cast(dtype)])
    } else if dtype.is_int() {
        let (s, l, d) = (ints(start)[0], ints(limit)[0], ints(delta)[0]);
        if d == 0 {
            bail!("delta must be non-zero");
        }
        let span = l as i128 - s as i128;
        let n =
            if (span > 0) == (d > 0) && span != 0 { (span.abs() + d.abs() as i128 - 1) / d.abs() as i128 } else { 0 };
        let v: Vec<i64> = (0..n as i64).map(|i| s + i * d).collect();
        Ok(vec![Tensor::from_vec(vec![v.len()], v)?.cast(dtype)])
    } else {
        bail!("Range does not support {dtype}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_ir::ops::layout::{PadMode, ScatterReduction};

    /// Runs `op` on `inputs` and compares output 0 with `(shape, values)` as f64.
    fn check(op: LayoutOp, inputs: &[Tensor], shape: &[usize], values: &[f64]) {
        let args: Vec<Option<&Tensor>> = inputs.iter().map(Some).collect();
        let out = eval(&op, &args, 1).unwrap_or_else(|e| panic!("{op:?}: {e}"));
        assert_eq!(out[0].shape(), shape, "{op:?}");
        assert_eq!(out[0].to_f64_vec(), values, "{op:?}");
    }

    fn f(shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_vec(shape.to_vec(), (0..n).map(|i| i as f32).collect()).unwrap()
    }

    fn i(v: &[i64]) -> Tensor {
        Tensor::from_vec(vec![v.len()], v.to_vec()).unwrap()
    }

    #[test]
    fn transpose_odd_sizes() {
        // [2,3,1] -> perm [1,0,2]: a unit dim inside the view must not break merging.
        check(
            LayoutOp::Transpose { perm: Some(vec![1, 0, 2]) },
            &[f(&[2, 3, 1])],
            &[3, 2, 1],
            &[0., 3., 1., 4., 2., 5.],
        );
        check(LayoutOp::Transpose { perm: None }, &[f(&[2, 3])], &[3, 2], &[0., 3., 1., 4., 2., 5.]);
    }

    #[test]
    fn transpose_matches_naive_on_tiled_sizes() {
        let shape = [3usize, 50, 37];
        let x = f(&shape);
        for perm in [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]] {
            let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
            let mut want = Vec::new();
            for a in 0..out_shape[0] {
                for b in 0..out_shape[1] {
                    for c in 0..out_shape[2] {
                        let mut src = [0usize; 3];
                        src[perm[0]] = a;
                        src[perm[1]] = b;
                        src[perm[2]] = c;
                        want.push(((src[0] * shape[1] + src[1]) * shape[2] + src[2]) as f64);
                    }
                }
            }
            let perm = Some(perm.iter().map(|&p| p as i64).collect());
            check(LayoutOp::Transpose { perm }, std::slice::from_ref(&x), &out_shape, &want);
        }
    }

    #[test]
    fn slice_negative_step_and_clamping() {
        let op = LayoutOp::Slice { attrs: None };
        check(op.clone(), &[f(&[5]), i(&[-1]), i(&[i64::MIN]), i(&[0]), i(&[-2])], &[3], &[4., 2., 0.]);
        check(op.clone(), &[f(&[2, 4]), i(&[1, 0]), i(&[100, 10]), i(&[-1, 0]), i(&[-1, 1])], &[2, 0], &[]);
        check(op, &[f(&[2, 3]), i(&[1]), i(&[3]), i(&[-1])], &[2, 2], &[1., 2., 4., 5.]);
    }

    #[test]
    fn reshape_zero_and_infer() {
        check(
            LayoutOp::Reshape { shape: None, allowzero: false },
            &[f(&[2, 3, 4]), i(&[0, -1])],
            &[2, 12],
            &(0..24).map(|v| v as f64).collect::<Vec<_>>(),
        );
        let args = [f(&[2, 3]), i(&[0, 6])];
        let r = eval(&LayoutOp::Reshape { shape: None, allowzero: true }, &[Some(&args[0]), Some(&args[1])], 1);
        assert!(r.unwrap_err().0.contains("cannot reshape"));
    }

    #[test]
    fn pad_modes() {
        let x = f(&[3]);
        let pads = i(&[2, 3]);
        check(
            LayoutOp::Pad { mode: PadMode::Reflect, pads: None, value: 0.0 },
            &[x.clone(), pads.clone()],
            &[8],
            &[2., 1., 0., 1., 2., 1., 0., 1.],
        );
        check(
            LayoutOp::Pad { mode: PadMode::Wrap, pads: None, value: 0.0 },
            &[x.clone(), pads.clone()],
            &[8],
            &[1., 2., 0., 1., 2., 0., 1., 2.],
        );
        check(
            LayoutOp::Pad { mode: PadMode::Edge, pads: None, value: 0.0 },
            &[x.clone(), pads.clone()],
            &[8],
            &[0., 0., 0., 1., 2., 2., 2., 2.],
        );
        check(
            LayoutOp::Pad { mode: PadMode::Constant, pads: Some(vec![-1, 1]), value: 7.0 },
            &[x],
            &[3],
            &[1., 2., 7.],
        );
    }

    #[test]
    fn split_uneven_and_expand_broadcast() {
        let args = [f(&[5])];
        let out = eval(&LayoutOp::Split { axis: 0, split: None }, &[Some(&args[0])], 3).unwrap();
        let lens: Vec<usize> = out.iter().map(Tensor::len).collect();
        assert_eq!(lens, [2, 2, 1]);
        check(
            LayoutOp::Expand,
            &[f(&[3, 1]), i(&[2, 1, 2])],
            &[2, 3, 2],
            &[0., 0., 1., 1., 2., 2., 0., 0., 1., 1., 2., 2.],
        );
        check(LayoutOp::Tile, &[f(&[2]), i(&[3])], &[6], &[0., 1., 0., 1., 0., 1.]);
    }

    #[test]
    fn gather_and_scatter_negative_indices() {
        check(LayoutOp::Gather { axis: -1 }, &[f(&[2, 3]), i(&[-1, 0])], &[2, 2], &[2., 0., 5., 3.]);
        let upd = Tensor::from_vec(vec![2], vec![10f32, 20.]).unwrap();
        check(
            LayoutOp::ScatterElements { axis: 0, reduction: ScatterReduction::Add },
            &[f(&[3]), i(&[-1, -1]), upd],
            &[3],
            &[0., 1., 32.],
        );
        let args = [f(&[2]), i(&[2])];
        assert!(eval(&LayoutOp::Gather { axis: 0 }, &[Some(&args[0]), Some(&args[1])], 1).is_err());
    }

    #[test]
    fn unique_unsorted_keeps_first_occurrence_order() {
        let x = Tensor::from_vec(vec![6], vec![2f32, 1., 1., 3., 4., 3.]).unwrap();
        let out = eval(&LayoutOp::Unique { axis: None, sorted: false }, &[Some(&x)], 4).unwrap();
        assert_eq!(out[0].to_f64_vec(), [2., 1., 3., 4.]);
        assert_eq!(out[1].to_i64_vec(), [0, 1, 3, 4]);
        assert_eq!(out[2].to_i64_vec(), [0, 1, 1, 2, 3, 2]);
        assert_eq!(out[3].to_i64_vec(), [1, 2, 2, 1]);
    }
}
