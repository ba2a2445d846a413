//! Reductions, arg-reductions, TopK and CumSum.

use super::infer::*;
use crate::{DType, Dim, TypeInfo};

/// What a `Reduce*` op computes over the reduced cells.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reducer {
    /// `sum(x)`
    Sum,
    /// `sum(x) / n`
    Mean,
    /// `max(x)`
    Max,
    /// `min(x)`
    Min,
    /// `prod(x)`
    Prod,
    /// `sum(|x|)`
    L1,
    /// `sqrt(sum(x^2))`
    L2,
    /// `log(sum(x))`
    LogSum,
    /// `log(sum(exp(x)))`
    LogSumExp,
    /// `sum(x^2)`
    SumSquare,
}

impl Reducer {
    /// The ONNX op name (`"ReduceSum"`).
    pub fn op_name(self) -> &'static str {
        match self {
            Reducer::Sum => "ReduceSum",
            Reducer::Mean => "ReduceMean",
            Reducer::Max => "ReduceMax",
            Reducer::Min => "ReduceMin",
            Reducer::Prod => "ReduceProd",
            Reducer::L1 => "ReduceL1",
            Reducer::L2 => "ReduceL2",
            Reducer::LogSum => "ReduceLogSum",
            Reducer::LogSumExp => "ReduceLogSumExp",
            Reducer::SumSquare => "ReduceSumSquare",
        }
    }

    /// The first opset in which the op takes its axes as an input instead of an attribute.
    pub fn axes_input_since(self) -> i64 {
        match self {
            Reducer::Sum => 13,
            _ => 18,
        }
    }
}

/// Reductions, arg-reductions, TopK and CumSum.
#[derive(Clone, Debug, PartialEq)]
pub enum ReduceOp {
    /// A `Reduce*` op. In opsets where the axes are an input (the optional input 1), `axes` is
    /// `None` and the kernel reads them at run time.
    Reduce {
        /// What is computed.
        reducer: Reducer,
        /// The axes from the attribute, in opsets where it is one; empty means all axes.
        axes: Option<Vec<i64>>,
        /// Whether reduced dims stay as size 1.
        keepdims: bool,
        /// Whether empty axes leave the input unchanged instead of reducing every axis.
        noop_with_empty_axes: bool,
    },
    /// Index of the maximum along an axis, as i64.
    ArgMax {
        /// The axis (may be negative).
        axis: i64,
        /// Whether the reduced dim stays as size 1.
        keepdims: bool,
        /// Whether ties give the last index instead of the first.
        select_last_index: bool,
    },
    /// Index of the minimum along an axis, as i64.
    ArgMin {
        /// The axis (may be negative).
        axis: i64,
        /// Whether the reduced dim stays as size 1.
        keepdims: bool,
        /// Whether ties give the last index instead of the first.
        select_last_index: bool,
    },
    /// The `k` largest or smallest values along an axis and their indices.
    TopK {
        /// The axis (may be negative).
        axis: i64,
        /// Whether the largest values are taken (else the smallest).
        largest: bool,
        /// Whether the values come out sorted (they always do here).
        sorted: bool,
        /// `k` from the attribute in opset 1; from input 1 otherwise.
        k: Option<usize>,
    },
    /// Cumulative sum along the axis given by input 1.
    CumSum {
        /// Whether each sum leaves out its own element.
        exclusive: bool,
        /// Whether sums run from the end.
        reverse: bool,
    },
}

impl ReduceOp {
    /// The ONNX op name.
    pub fn name(&self) -> &'static str {
        match self {
            ReduceOp::Reduce { reducer, .. } => reducer.op_name(),
            ReduceOp::ArgMax { .. } => "ArgMax",
            ReduceOp::ArgMin { .. } => "ArgMin",
            ReduceOp::TopK { .. } => "TopK",
            ReduceOp::CumSum { .. } => "CumSum",
        }
    }

    /// The type rule: output types from input types.
    pub fn infer(&self, inputs: &[Option<InferInput<'_>>], num_outputs: usize) -> Result<Vec<TypeInfo>, String> {
        let x = input_ty(inputs, 0);
        let out = match self {
            ReduceOp::Reduce { axes, keepdims, noop_with_empty_axes, .. } => {
                let axes = match axes {
                    Some(a) => Some(a.clone()),
                    None if inputs.get(1).is_some_and(|i| i.is_some()) => {
                        input_value(inputs, 1).map(|v| v.to_i64_vec())
                    }
                    None => Some(vec![]),
                };
                let shape = match (&x.shape, axes) {
                    (Some(s), Some(a)) => {
                        if a.is_empty() && *noop_with_empty_axes {
                            Some(s.clone())
                        } else {
                            let r = reduced_axes(&a, s.len())?;
                            Some(reduce_shape(s, &r, *keepdims))
                        }
                    }
                    // Unknown axes keep the rank only when reduced dims are kept.
                    (Some(s), None) if *keepdims => Some(vec![Dim::Unknown; s.len()]),
                    _ => None,
                };
                vec![TypeInfo { dtype: x.dtype, shape }]
            }
            ReduceOp::ArgMax { axis, keepdims, .. } | ReduceOp::ArgMin { axis, keepdims, .. } => {
                let shape = match &x.shape {
                    Some(s) => Some(reduce_shape(s, &[normalize_axis(*axis, s.len())?], *keepdims)),
                    None => None,
                };
                vec![TypeInfo { dtype: Some(DType::I64), shape }]
            }
            ReduceOp::TopK { axis, k, .. } => {
                let k = k.or_else(|| input_value(inputs, 1).and_then(|v| v.to_i64_vec().first().map(|&k| k as usize)));
                let shape = match &x.shape {
                    Some(s) => {
                        let a = normalize_axis(*axis, s.len())?;
                        let mut s = s.clone();
                        s[a] = k.map_or(Dim::Unknown, Dim::Known);
                        Some(s)
                    }
                    None => None,
                };
                vec![TypeInfo { dtype: x.dtype, shape: shape.clone() }, TypeInfo { dtype: Some(DType::I64), shape }]
            }
            ReduceOp::CumSum { .. } => vec![x],
        };
        let mut out = out;
        out.truncate(num_outputs.max(1));
        Ok(out)
    }
}

/// Resolves reduction axes against a rank: empty means every axis; the result is sorted and
/// free of duplicates.
pub fn reduced_axes(axes: &[i64], rank: usize) -> Result<Vec<usize>, String> {
    let mut out = if axes.is_empty() {
        (0..rank).collect()
    } else {
        axes.iter().map(|&a| normalize_axis(a, rank)).collect::<Result<Vec<_>, _>>()?
    };
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

fn reduce_shape(s: &[Dim], axes: &[usize], keepdims: bool) -> Vec<Dim> {
    s.iter()
        .enumerate()
        .filter_map(|(i, d)| match (axes.contains(&i), keepdims) {
            (false, _) => Some(d.clone()),
            (true, true) => Some(Dim::Known(1)),
            (true, false) => None,
        })
        .collect()
}
