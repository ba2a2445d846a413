//! Helpers shared by the op kernels: input access, broadcasting, float dispatch.

use crate::OpError;
use kiln_ir::{DType, Tensor};

/// Input `i`, which must be present.
pub fn input<'a>(inputs: &[Option<&'a Tensor>], i: usize) -> Result<&'a Tensor, OpError> {
    inputs.get(i).copied().flatten().ok_or_else(|| OpError::new(format!("input {i} is missing")))
}

/// Input `i`, if present.
pub fn opt_input<'a>(inputs: &[Option<&'a Tensor>], i: usize) -> Option<&'a Tensor> {
    inputs.get(i).copied().flatten()
}

/// Row-major strides of a shape.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Strides for reading a tensor of `shape` broadcast to `out` (0 on broadcast dims).
pub fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let s = strides(shape);
    let off = out.len() - shape.len();
    (0..out.len()).map(|i| if i < off || shape[i - off] == 1 { 0 } else { s[i - off] }).collect()
}

/// The broadcast shape of several shapes, or an error naming them.
pub fn broadcast_many(shapes: &[&[usize]]) -> Result<Vec<usize>, OpError> {
    let mut acc: Vec<usize> = vec![];
    for s in shapes {
        acc = kiln_ir::ops::infer::broadcast_shapes(&acc, s)
            .ok_or_else(|| OpError::new(format!("shapes {shapes:?} do not broadcast")))?;
    }
    Ok(acc)
}

/// Offsets of every output element into each input (row-major over `out`), for broadcasting.
pub fn broadcast_index(out: &[usize], in_strides: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let n: usize = out.iter().product();
    let mut idx = vec![Vec::with_capacity(n); in_strides.len()];
    let rank = out.len();
    let mut coord = vec![0usize; rank];
    let mut offs = vec![0usize; in_strides.len()];
    for _ in 0..n {
        for (k, o) in offs.iter().enumerate() {
            idx[k].push(*o);
        }
        for d in (0..rank).rev() {
            coord[d] += 1;
            for (k, s) in in_strides.iter().enumerate() {
                offs[k] += s[d];
            }
            if coord[d] < out[d] {
                break;
            }
            for (k, s) in in_strides.iter().enumerate() {
                offs[k] -= s[d] * out[d];
            }
            coord[d] = 0;
        }
    }
    idx
}

/// Resolves a possibly negative axis.
pub fn axis(a: i64, rank: usize) -> Result<usize, OpError> {
    kiln_ir::ops::infer::normalize_axis(a, rank).map_err(OpError)
}

/// Fails unless the tensor is of a float type.
pub fn expect_float(t: &Tensor, what: &str) -> Result<DType, OpError> {
    let d = t.dtype();
    if !d.is_float() {
        return Err(OpError::new(format!("{what} must be a float tensor, found {d}")));
    }
    Ok(d)
}

/// Converts a float tensor of any precision to f32 values (computing in f32 and casting back
/// is how the reference handles f16 and bf16).
pub fn to_f32(t: &Tensor) -> Vec<f32> {
    match t.as_slice::<f32>() {
        Ok(s) => s.to_vec(),
        Err(_) => t.to_f64_vec().into_iter().map(|x| x as f32).collect(),
    }
}

/// Builds a tensor of type `dtype` from f32 values.
pub fn from_f32(shape: Vec<usize>, v: Vec<f32>, dtype: DType) -> Result<Tensor, OpError> {
    let t = Tensor::from_vec(shape, v)?;
    Ok(if dtype == DType::F32 { t } else { t.cast(dtype) })
}
