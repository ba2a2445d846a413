//! Shared helpers for the type rules of the op families.

use crate::{DType, Dim, Tensor, TypeInfo};

/// What a type rule sees of one input: its static type and, if constant, its value.
#[derive(Clone, Copy, Debug)]
pub struct InferInput<'a> {
    /// The static type.
    pub ty: &'a TypeInfo,
    /// The value, if the input is a constant.
    pub value: Option<&'a Tensor>,
}

/// The type of input `i`, or unknown when absent.
pub fn input_ty(inputs: &[Option<InferInput<'_>>], i: usize) -> TypeInfo {
    inputs.get(i).and_then(|x| x.as_ref()).map(|x| x.ty.clone()).unwrap_or_default()
}

/// The constant value of input `i`, if any.
pub fn input_value<'a>(inputs: &[Option<InferInput<'a>>], i: usize) -> Option<&'a Tensor> {
    inputs.get(i).and_then(|x| x.as_ref()).and_then(|x| x.value)
}

/// The first known element type among the inputs.
pub fn first_dtype(inputs: &[Option<InferInput<'_>>]) -> Option<DType> {
    inputs.iter().flatten().find_map(|x| x.ty.dtype)
}

/// Numpy-style broadcasting of two static shapes.
pub fn broadcast_dims(a: &[Dim], b: &[Dim]) -> Result<Vec<Dim>, String> {
    let n = a.len().max(b.len());
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let x = if i + a.len() >= n { &a[i + a.len() - n] } else { &Dim::Known(1) };
        let y = if i + b.len() >= n { &b[i + b.len() - n] } else { &Dim::Known(1) };
        out.push(match (x, y) {
            (Dim::Known(1), d) | (d, Dim::Known(1)) => d.clone(),
            (Dim::Known(p), Dim::Known(q)) if p != q => {
                return Err(format!("cannot broadcast dims {p} and {q}"));
            }
            (Dim::Known(_), _) => x.clone(),
            (_, Dim::Known(_)) => y.clone(),
            (Dim::Sym(s), Dim::Sym(t)) if s == t => x.clone(),
            _ => Dim::Unknown,
        });
    }
    Ok(out)
}

/// Broadcasts the shapes of every present input; unknown if any rank is unknown.
pub fn broadcast_all(inputs: &[Option<InferInput<'_>>]) -> Result<Option<Vec<Dim>>, String> {
    let mut acc: Option<Vec<Dim>> = Some(vec![]);
    for x in inputs.iter().flatten() {
        match (&acc, &x.ty.shape) {
            (Some(a), Some(s)) => acc = Some(broadcast_dims(a, s)?),
            _ => acc = None,
        }
    }
    Ok(acc)
}

/// Concrete broadcasting of two shapes, as the executors need it.
pub fn broadcast_shapes(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    (0..n)
        .map(|i| {
            let x = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
            let y = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
            match (x, y) {
                (1, d) | (d, 1) => Some(d),
                (p, q) if p == q => Some(p),
                _ => None,
            }
        })
        .collect()
}

/// Resolves a possibly negative axis against a rank.
pub fn normalize_axis(axis: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r.max(1) && !(r == 0 && a == 0) {
        return Err(format!("axis {axis} is out of range for rank {rank}"));
    }
    Ok(a as usize)
}
