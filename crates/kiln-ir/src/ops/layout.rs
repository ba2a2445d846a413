//! Data movement, shape queries and tensor creation: reshape, transpose, slice, gather,
//! scatter, pad, tile, expand, shape, range, one-hot, unique and their relatives.
//!
//! Attributes that became inputs in later opsets are fields only where the model's opset
//! still has them as attributes (`Some`); otherwise the kernel reads them from the inputs.

use super::infer::*;
use crate::{DType, Dim, Tensor, TypeInfo};

/// How ScatterND and ScatterElements combine an update with the value already there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScatterReduction {
    /// The update replaces the value.
    None,
    /// The update is added.
    Add,
    /// The value is multiplied by the update.
    Mul,
    /// The larger of the two is kept.
    Max,
    /// The smaller of the two is kept.
    Min,
}

/// How Pad fills the new border.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PadMode {
    /// A constant value.
    Constant,
    /// The mirror image of the input, without repeating the edge.
    Reflect,
    /// The edge value repeated.
    Edge,
    /// The input repeated periodically.
    Wrap,
}

/// The channel order of DepthToSpace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DepthToSpaceMode {
    /// Depth-column-row: the block index is outermost in the channel dim.
    Dcr,
    /// Column-row-depth: the output channel is outermost in the channel dim.
    Crd,
}

/// Data movement, shape queries and tensor creation.
#[derive(Clone, Debug, PartialEq)]
pub enum LayoutOp {
    /// Output equals input.
    Identity,
    /// Dropout at inference: output equals input; the optional mask output is all true.
    Dropout,
    /// The same elements under another shape, given by input 1 (or the attribute before opset 5).
    Reshape {
        /// The target shape from the opset 1 attribute; `None` reads input 1.
        shape: Option<Vec<i64>>,
        /// Whether a 0 in the shape means a zero-sized dim rather than "copy the input dim".
        allowzero: bool,
    },
    /// Reshapes to 2D: dims before `axis` make the rows, the rest the columns.
    Flatten {
        /// The split point, in `[-rank, rank]`.
        axis: i64,
    },
    /// Removes size-1 dims.
    Squeeze {
        /// The dims to remove (attribute before opset 13); `None` reads input 1, and without
        /// it every size-1 dim goes.
        axes: Option<Vec<i64>>,
    },
    /// Inserts size-1 dims.
    Unsqueeze {
        /// The positions of the new dims in the output (attribute before opset 13);
        /// `None` reads input 1.
        axes: Option<Vec<i64>>,
    },
    /// Permutes the dims.
    Transpose {
        /// Output dim `i` is input dim `perm[i]`; `None` reverses the dims.
        perm: Option<Vec<i64>>,
    },
    /// Joins the inputs along an axis.
    Concat {
        /// The axis, possibly negative.
        axis: i64,
    },
    /// Cuts the input into pieces along an axis, one per output.
    Split {
        /// The axis, possibly negative.
        axis: i64,
        /// Piece sizes from the attribute (before opset 13); `None` reads input 1, and
        /// without it the pieces are equal (the last one smaller when uneven).
        split: Option<Vec<i64>>,
    },
    /// Takes a strided window: starts, ends, axes, steps are inputs 1-4 from opset 10.
    Slice {
        /// Start, end and axes from the attributes (before opset 10).
        attrs: Option<SliceAttrs>,
    },
    /// Picks entries along an axis by index.
    Gather {
        /// The axis, possibly negative.
        axis: i64,
    },
    /// Picks one element per index, indices shaped like the output.
    GatherElements {
        /// The axis, possibly negative.
        axis: i64,
    },
    /// Picks slices by index tuples.
    GatherND {
        /// Number of leading dims shared by data and indices.
        batch_dims: usize,
    },
    /// Writes slices at index tuples.
    ScatterND {
        /// How updates combine with existing values.
        reduction: ScatterReduction,
    },
    /// Writes elements at indices along an axis (also ONNX's deprecated Scatter).
    ScatterElements {
        /// The axis, possibly negative.
        axis: i64,
        /// How updates combine with existing values.
        reduction: ScatterReduction,
    },
    /// Pads the borders; pads, constant value and axes are inputs 1-3 from opset 11.
    Pad {
        /// The fill rule.
        mode: PadMode,
        /// Pads from the attribute (before opset 11): all begins, then all ends.
        pads: Option<Vec<i64>>,
        /// The constant fill value from the attribute (before opset 11).
        value: f32,
    },
    /// Repeats the input along each dim (repeats in input 1).
    Tile,
    /// Broadcasts the input to a shape (input 1).
    Expand,
    /// The shape of the input as a 1D i64 tensor, restricted to dims `start..end`.
    Shape {
        /// First dim, possibly negative.
        start: i64,
        /// One past the last dim, possibly negative; `None` is the rank.
        end: Option<i64>,
    },
    /// The element count of the input as an i64 scalar.
    Size,
    /// A tensor of the shape given by input 0, filled with one value.
    ConstantOfShape {
        /// The one-element fill value; its type is the output type.
        value: Tensor,
    },
    /// The sequence start, start + delta, ... below limit (inputs 0-2, scalars).
    Range,
    /// Moves channel blocks into spatial blocks.
    DepthToSpace {
        /// The block edge.
        blocksize: usize,
        /// The channel order.
        mode: DepthToSpaceMode,
    },
    /// Moves spatial blocks into channels.
    SpaceToDepth {
        /// The block edge.
        blocksize: usize,
    },
    /// Keeps the upper or lower triangle of the last two dims (diagonal offset in input 1).
    Trilu {
        /// Whether the upper triangle is kept.
        upper: bool,
    },
    /// One-hot encoding: indices, depth and (off, on) values in inputs 0-2.
    OneHot {
        /// Where the new dim goes, possibly negative.
        axis: i64,
    },
    /// The indices of the non-zero elements, as an i64 tensor of shape [rank, count].
    NonZero,
    /// Keeps the slices along an axis where the condition (input 1) is true.
    Compress {
        /// The axis; `None` flattens the input first.
        axis: Option<i64>,
    },
    /// Reverses the first `sequence_lens[b]` time steps of every batch entry.
    ReverseSequence {
        /// The batch axis (0 or 1).
        batch_axis: usize,
        /// The time axis (1 or 0).
        time_axis: usize,
    },
    /// A 2D tensor with ones on a diagonal, shaped like the input.
    EyeLike {
        /// The output type; `None` is the input's.
        dtype: Option<DType>,
        /// The diagonal: 0 main, positive above.
        k: i64,
    },
    /// The unique elements (or slices along an axis), their first indices, the inverse
    /// indices and the counts.
    Unique {
        /// The axis; `None` flattens the input.
        axis: Option<i64>,
        /// Whether the unique values come out sorted rather than in first-occurrence order.
        sorted: bool,
    },
    /// Center-crops or pads the given axes to the shape in input 1.
    CenterCropPad {
        /// The axes input 1 refers to; `None` is every axis.
        axes: Option<Vec<i64>>,
    },
}

/// Slice's parameters when they are attributes (opset 1 to 9).
#[derive(Clone, Debug, PartialEq)]
pub struct SliceAttrs {
    /// Start per axis.
    pub starts: Vec<i64>,
    /// End (exclusive) per axis.
    pub ends: Vec<i64>,
    /// The axes; `None` is `0..starts.len()`.
    pub axes: Option<Vec<i64>>,
}

impl LayoutOp {
    /// The ONNX op name.
    pub fn name(&self) -> &'static str {
        match self {
            LayoutOp::Identity => "Identity",
            LayoutOp::Dropout => "Dropout",
            LayoutOp::Reshape { .. } => "Reshape",
            LayoutOp::Flatten { .. } => "Flatten",
            LayoutOp::Squeeze { .. } => "Squeeze",
            LayoutOp::Unsqueeze { .. } => "Unsqueeze",
            LayoutOp::Transpose { .. } => "Transpose",
            LayoutOp::Concat { .. } => "Concat",
            LayoutOp::Split { .. } => "Split",
            LayoutOp::Slice { .. } => "Slice",
            LayoutOp::Gather { .. } => "Gather",
            LayoutOp::GatherElements { .. } => "GatherElements",
            LayoutOp::GatherND { .. } => "GatherND",
            LayoutOp::ScatterND { .. } => "ScatterND",
            LayoutOp::ScatterElements { .. } => "ScatterElements",
            LayoutOp::Pad { .. } => "Pad",
            LayoutOp::Tile => "Tile",
            LayoutOp::Expand => "Expand",
            LayoutOp::Shape { .. } => "Shape",
            LayoutOp::Size => "Size",
            LayoutOp::ConstantOfShape { .. } => "ConstantOfShape",
            LayoutOp::Range => "Range",
            LayoutOp::DepthToSpace { .. } => "DepthToSpace",
            LayoutOp::SpaceToDepth { .. } => "SpaceToDepth",
            LayoutOp::Trilu { .. } => "Trilu",
            LayoutOp::OneHot { .. } => "OneHot",
            LayoutOp::NonZero => "NonZero",
            LayoutOp::Compress { .. } => "Compress",
            LayoutOp::ReverseSequence { .. } => "ReverseSequence",
            LayoutOp::EyeLike { .. } => "EyeLike",
            LayoutOp::Unique { .. } => "Unique",
            LayoutOp::CenterCropPad { .. } => "CenterCropPad",
        }
    }

    /// The type rule: output types from input types, using constant input values where the
    /// output shape depends on them.
    pub fn infer(&self, inputs: &[Option<InferInput<'_>>], num_outputs: usize) -> Result<Vec<TypeInfo>, String> {
        let x = input_ty(inputs, 0);
        let same = |shape: Option<Vec<Dim>>| TypeInfo { dtype: x.dtype, shape };
        let ints = |i: usize| input_value(inputs, i).map(|t| t.to_i64_vec());
        let out = match self {
            LayoutOp::Identity => vec![x.clone()],
            LayoutOp::Dropout => vec![x.clone(), TypeInfo { dtype: Some(DType::Bool), shape: x.shape.clone() }],
            LayoutOp::Reshape { shape, allowzero } => {
                let target = shape.clone().or_else(|| ints(1));
                let out = match target {
                    Some(t) => Some(reshape_dims(x.shape.as_deref(), &t, *allowzero)?),
                    None => {
                        input_ty(inputs, 1).concrete_shape().and_then(|s| s.first().map(|&n| vec![Dim::Unknown; n]))
                    }
                };
                vec![same(out)]
            }
            LayoutOp::Flatten { axis } => {
                let out = match &x.shape {
                    Some(s) => {
                        let r = s.len() as i64;
                        let a = if *axis < 0 { axis + r } else { *axis };
                        if a < 0 || a > r {
                            return Err(format!("axis {axis} is out of range for rank {r}"));
                        }
                        Some(vec![dims_product(&s[..a as usize]), dims_product(&s[a as usize..])])
                    }
                    None => Some(vec![Dim::Unknown, Dim::Unknown]),
                };
                vec![same(out)]
            }
            LayoutOp::Squeeze { axes } => {
                let axes = axes.clone().or_else(|| ints(1));
                let has_axes_input = inputs.get(1).is_some_and(|i| i.is_some());
                let out = match (&x.shape, axes) {
                    (Some(s), Some(axes)) => {
                        let mut drop = vec![false; s.len()];
                        for &a in &axes {
                            let a = normalize_axis(a, s.len())?;
                            if let Dim::Known(n) = s[a] {
                                if n != 1 {
                                    return Err(format!("cannot squeeze dim {a} of size {n}"));
                                }
                            }
                            drop[a] = true;
                        }
                        Some(s.iter().zip(&drop).filter(|(_, d)| !**d).map(|(d, _)| d.clone()).collect())
                    }
                    (Some(s), None) if !has_axes_input && s.iter().all(|d| d.known().is_some()) => {
                        Some(s.iter().filter(|d| **d != Dim::Known(1)).cloned().collect())
                    }
                    _ => None,
                };
                vec![same(out)]
            }
            LayoutOp::Unsqueeze { axes } => {
                let axes = axes.clone().or_else(|| ints(1));
                let out = match (&x.shape, axes) {
                    (Some(s), Some(axes)) => {
                        let r = s.len() + axes.len();
                        let mut new = vec![false; r];
                        for &a in &axes {
                            let a = normalize_axis(a, r)?;
                            if new[a] {
                                return Err(format!("axis {a} is repeated"));
                            }
                            new[a] = true;
                        }
                        let mut it = s.iter();
                        Some(
                            new.iter()
                                .map(|&n| if n { Dim::Known(1) } else { it.next().cloned().unwrap_or(Dim::Unknown) })
                                .collect(),
                        )
                    }
                    _ => None,
                };
                vec![same(out)]
            }
            LayoutOp::Transpose { perm } => {
                let out = match &x.shape {
                    Some(s) => {
                        let p = resolve_perm(perm.as_deref(), s.len())?;
                        Some(p.iter().map(|&i| s[i].clone()).collect())
                    }
                    None => perm.as_ref().map(|p| vec![Dim::Unknown; p.len()]),
                };
                vec![same(out)]
            }
            LayoutOp::Concat { axis } => {
                let present: Vec<TypeInfo> = inputs.iter().flatten().map(|i| i.ty.clone()).collect();
                let rank = present.iter().find_map(|t| t.rank());
                let dtype = first_dtype(inputs);
                let shape = match rank {
                    None => None,
                    Some(r) => {
                        let a = normalize_axis(*axis, r)?;
                        let mut out: Vec<Dim> = vec![Dim::Unknown; r];
                        let mut total = Some(0usize);
                        for t in &present {
                            match &t.shape {
                                Some(s) if s.len() != r => {
                                    return Err(format!("inputs have ranks {r} and {}", s.len()))
                                }
                                Some(s) => {
                                    for (i, d) in s.iter().enumerate() {
                                        if i != a && out[i] == Dim::Unknown {
                                            out[i] = d.clone();
                                        }
                                    }
                                    total = total.and_then(|n| s[a].known().map(|k| n + k));
                                }
                                None => total = None,
                            }
                        }
                        out[a] = total.map(Dim::Known).unwrap_or(Dim::Unknown);
                        Some(out)
                    }
                };
                vec![TypeInfo { dtype, shape }]
            }
            LayoutOp::Split { axis, split } => {
                let split = split.clone().or_else(|| ints(1));
                // A split input whose value is unknown leaves the piece sizes unknown.
                let split_unknown = split.is_none() && inputs.get(1).is_some_and(|i| i.is_some());
                let mut outs = vec![TypeInfo { dtype: x.dtype, shape: None }; num_outputs];
                if let Some(s) = &x.shape {
                    let a = normalize_axis(*axis, s.len())?;
                    let sizes: Option<Vec<usize>> = match (&split, s[a].known()) {
                        (Some(sp), _) => Some(sp.iter().map(|&v| v.max(0) as usize).collect()),
                        (None, Some(n)) if num_outputs > 0 && !split_unknown => {
                            let c = n.div_ceil(num_outputs);
                            Some((0..num_outputs).map(|i| c.min(n.saturating_sub(i * c))).collect())
                        }
                        _ => None,
                    };
                    for (i, o) in outs.iter_mut().enumerate() {
                        let mut sh = s.clone();
                        sh[a] = sizes.as_ref().and_then(|v| v.get(i)).map(|&n| Dim::Known(n)).unwrap_or(Dim::Unknown);
                        o.shape = Some(sh);
                    }
                }
                outs
            }
            LayoutOp::Slice { attrs } => {
                let params = match attrs {
                    Some(a) => Some((a.starts.clone(), a.ends.clone(), a.axes.clone(), None)),
                    None => match (ints(1), ints(2)) {
                        (Some(st), Some(en)) => {
                            let axes_known = inputs.get(3).is_none_or(|i| i.is_none()) || ints(3).is_some();
                            let steps_known = inputs.get(4).is_none_or(|i| i.is_none()) || ints(4).is_some();
                            (axes_known && steps_known).then(|| (st, en, ints(3), ints(4)))
                        }
                        _ => None,
                    },
                };
                let out = match (&x.shape, params) {
                    (Some(s), Some((st, en, axes, steps))) => {
                        let mut out = s.clone();
                        let axes = axes.unwrap_or_else(|| (0..st.len() as i64).collect());
                        let steps = steps.unwrap_or_else(|| vec![1; st.len()]);
                        if en.len() != st.len() || axes.len() != st.len() || steps.len() != st.len() {
                            return Err("starts, ends, axes and steps differ in length".into());
                        }
                        for i in 0..st.len() {
                            let a = normalize_axis(axes[i], s.len())?;
                            out[a] = match s[a].known() {
                                Some(n) => Dim::Known(slice_range(n, st[i], en[i], steps[i])?.2),
                                None => Dim::Unknown,
                            };
                        }
                        Some(out)
                    }
                    (Some(s), None) => Some(vec![Dim::Unknown; s.len()]),
                    _ => None,
                };
                vec![same(out)]
            }
            LayoutOp::Gather { axis } => {
                let idx = input_ty(inputs, 1);
                let out = match (&x.shape, &idx.shape) {
                    (Some(s), Some(i)) => {
                        let a = normalize_axis(*axis, s.len())?;
                        Some(s[..a].iter().chain(i).chain(&s[a + 1..]).cloned().collect())
                    }
                    _ => None,
                };
                vec![same(out)]
            }
            LayoutOp::GatherElements { .. } => vec![same(input_ty(inputs, 1).shape)],
            LayoutOp::GatherND { batch_dims } => {
                let idx = input_ty(inputs, 1);
                let out = match (&x.shape, &idx.shape) {
                    (Some(s), Some(i)) => match i.last().and_then(Dim::known) {
                        Some(k) if batch_dims + k <= s.len() && *batch_dims < i.len() => {
                            Some(i[..i.len() - 1].iter().chain(&s[batch_dims + k..]).cloned().collect())
                        }
                        Some(k) => {
                            return Err(format!("index tuples of length {k} do not fit data of rank {}", s.len()))
                        }
                        None => None,
                    },
                    _ => None,
                };
                vec![same(out)]
            }
            LayoutOp::ScatterND { .. } | LayoutOp::ScatterElements { .. } => vec![x.clone()],
            LayoutOp::Pad { pads, .. } => {
                let pads = pads.clone().or_else(|| ints(1));
                let axes_ok = inputs.get(3).is_none_or(|i| i.is_none());
                let out = match (&x.shape, pads) {
                    (Some(s), Some(p)) if axes_ok && p.len() == 2 * s.len() => {
                        let r = s.len();
                        Some(
                            s.iter()
                                .enumerate()
                                .map(|(i, d)| match d.known() {
                                    Some(n) => {
                                        let m = n as i64 + p[i] + p[i + r];
                                        if m < 0 {
                                            Dim::Unknown
                                        } else {
                                            Dim::Known(m as usize)
                                        }
                                    }
                                    None => Dim::Unknown,
                                })
                                .collect(),
                        )
                    }
                    (Some(s), _) => Some(vec![Dim::Unknown; s.len()]),
                    _ => None,
                };
                vec![same(out)]
            }
            LayoutOp::Tile => {
                let out = match (&x.shape, ints(1)) {
                    (Some(s), Some(r)) if r.len() == s.len() => Some(
                        s.iter()
                            .zip(&r)
                            .map(|(d, &k)| match (d, k) {
                                (_, 1) => d.clone(),
                                (Dim::Known(n), k) if k >= 0 => Dim::Known(n * k as usize),
                                _ => Dim::Unknown,
                            })
                            .collect(),
                    ),
                    (Some(s), _) => Some(vec![Dim::Unknown; s.len()]),
                    _ => None,
                };
                vec![same(out)]
            }
            LayoutOp::Expand => {
                let out = match (&x.shape, ints(1)) {
                    (Some(s), Some(t)) => {
                        let t: Vec<Dim> =
                            t.iter().map(|&v| if v >= 0 { Dim::Known(v as usize) } else { Dim::Unknown }).collect();
                        Some(broadcast_dims(s, &t)?)
                    }
                    _ => None,
                };
                vec![same(out)]
            }
            LayoutOp::Shape { start, end } => {
                let n = x.rank().map(|r| {
                    let (a, b) = shape_range(r, *start, *end);
                    b - a
                });
                vec![TypeInfo { dtype: Some(DType::I64), shape: Some(vec![n.map(Dim::Known).unwrap_or(Dim::Unknown)]) }]
            }
            LayoutOp::Size => vec![TypeInfo::known(DType::I64, &[])],
            LayoutOp::ConstantOfShape { value } => {
                let shape = match ints(0) {
                    Some(s) => {
                        Some(s.iter().map(|&v| if v >= 0 { Dim::Known(v as usize) } else { Dim::Unknown }).collect())
                    }
                    None => {
                        input_ty(inputs, 0).concrete_shape().and_then(|s| s.first().map(|&n| vec![Dim::Unknown; n]))
                    }
                };
                vec![TypeInfo { dtype: Some(value.dtype()), shape }]
            }
            LayoutOp::Range => {
                let scalar = |i: usize| input_value(inputs, i).and_then(|t| t.to_f64_vec().first().copied());
                let n = match (scalar(0), scalar(1), scalar(2)) {
                    (Some(s), Some(l), Some(d)) if d != 0.0 => Dim::Known(((l - s) / d).ceil().max(0.0) as usize),
                    _ => Dim::Unknown,
                };
                vec![TypeInfo { dtype: x.dtype, shape: Some(vec![n]) }]
            }
            LayoutOp::DepthToSpace { blocksize: b, .. } => {
                let out = x.shape.as_ref().map(|s| {
                    s.iter()
                        .enumerate()
                        .map(|(i, d)| match (i, d.known()) {
                            (1, Some(c)) if s.len() == 4 => Dim::Known(c / (b * b)),
                            (2 | 3, Some(h)) if s.len() == 4 => Dim::Known(h * b),
                            (0, _) => d.clone(),
                            _ => Dim::Unknown,
                        })
                        .collect()
                });
                vec![same(out)]
            }
            LayoutOp::SpaceToDepth { blocksize: b } => {
                let out = x.shape.as_ref().map(|s| {
                    s.iter()
                        .enumerate()
                        .map(|(i, d)| match (i, d.known()) {
                            (1, Some(c)) if s.len() == 4 => Dim::Known(c * b * b),
                            (2 | 3, Some(h)) if s.len() == 4 => Dim::Known(h / b),
                            (0, _) => d.clone(),
                            _ => Dim::Unknown,
                        })
                        .collect()
                });
                vec![same(out)]
            }
            LayoutOp::Trilu { .. } => vec![x.clone()],
            LayoutOp::OneHot { axis } => {
                let dtype = input_ty(inputs, 2).dtype;
                let out = x.shape.as_ref().map(|s| {
                    let r = s.len() + 1;
                    let a = if *axis < 0 { axis + r as i64 } else { *axis };
                    let depth = ints(1).and_then(|d| d.first().copied()).filter(|&d| d >= 0);
                    let mut out = s.clone();
                    let a = a.clamp(0, s.len() as i64) as usize;
                    out.insert(a, depth.map(|d| Dim::Known(d as usize)).unwrap_or(Dim::Unknown));
                    out
                });
                vec![TypeInfo { dtype, shape: out }]
            }
            LayoutOp::NonZero => {
                let r = x.rank().map(Dim::Known).unwrap_or(Dim::Unknown);
                vec![TypeInfo { dtype: Some(DType::I64), shape: Some(vec![r, Dim::Unknown]) }]
            }
            LayoutOp::Compress { axis } => {
                let out = match (axis, &x.shape) {
                    (None, _) => Some(vec![Dim::Unknown]),
                    (Some(a), Some(s)) => {
                        let a = normalize_axis(*a, s.len())?;
                        let mut o = s.clone();
                        o[a] = Dim::Unknown;
                        Some(o)
                    }
                    _ => None,
                };
                vec![same(out)]
            }
            LayoutOp::ReverseSequence { .. } => vec![x.clone()],
            LayoutOp::EyeLike { dtype, .. } => vec![TypeInfo { dtype: dtype.or(x.dtype), shape: x.shape.clone() }],
            LayoutOp::Unique { axis, .. } => {
                let y = match (axis, &x.shape) {
                    (None, _) => Some(vec![Dim::Unknown]),
                    (Some(a), Some(s)) => {
                        let a = normalize_axis(*a, s.len())?;
                        let mut o = s.clone();
                        o[a] = Dim::Unknown;
                        Some(o)
                    }
                    _ => None,
                };
                let v = TypeInfo { dtype: Some(DType::I64), shape: Some(vec![Dim::Unknown]) };
                vec![same(y), v.clone(), v.clone(), v]
            }
            LayoutOp::CenterCropPad { axes } => {
                let out = match (&x.shape, ints(1)) {
                    (Some(s), Some(t)) => {
                        let axes: Vec<i64> = axes.clone().unwrap_or_else(|| (0..s.len() as i64).collect());
                        if axes.len() != t.len() {
                            return Err(format!("{} axes but shape has {} entries", axes.len(), t.len()));
                        }
                        let mut o = s.clone();
                        for (&a, &n) in axes.iter().zip(&t) {
                            o[normalize_axis(a, s.len())?] = if n >= 0 { Dim::Known(n as usize) } else { Dim::Unknown };
                        }
                        Some(o)
                    }
                    (Some(s), None) => Some(vec![Dim::Unknown; s.len()]),
                    _ => None,
                };
                vec![same(out)]
            }
        };
        Ok(out)
    }
}

impl LayoutOp {
    /// Whether output 0 always equals input 0 (Identity, Dropout at inference).
    pub fn is_identity(&self) -> bool {
        matches!(self, LayoutOp::Identity | LayoutOp::Dropout)
    }

    /// Whether the op only reinterprets the shape (Reshape, Flatten, Squeeze, Unsqueeze),
    /// so that it is a no-op when the output shape equals the input shape.
    pub fn is_reshape_like(&self) -> bool {
        matches!(
            self,
            LayoutOp::Reshape { .. } | LayoutOp::Flatten { .. } | LayoutOp::Squeeze { .. } | LayoutOp::Unsqueeze { .. }
        )
    }
}

fn dims_product(dims: &[Dim]) -> Dim {
    dims.iter().try_fold(1usize, |acc, d| d.known().map(|n| acc * n)).map(Dim::Known).unwrap_or(Dim::Unknown)
}

/// The output dims of Reshape to `target` (with ONNX's 0 and -1), from a possibly partly
/// known input shape.
fn reshape_dims(input: Option<&[Dim]>, target: &[i64], allowzero: bool) -> Result<Vec<Dim>, String> {
    let mut out = Vec::with_capacity(target.len());
    let mut infer_at = None;
    for (i, &t) in target.iter().enumerate() {
        out.push(match t {
            0 if !allowzero => match input {
                Some(s) => s
                    .get(i)
                    .cloned()
                    .ok_or_else(|| format!("shape entry {i} is 0 but the input has rank {}", s.len()))?,
                None => Dim::Unknown,
            },
            -1 => {
                if infer_at.replace(i).is_some() {
                    return Err("shape has more than one -1".into());
                }
                Dim::Unknown
            }
            t if t < 0 => return Err(format!("shape entry {t} is negative")),
            t => Dim::Known(t as usize),
        });
    }
    if let Some(i) = infer_at {
        let total = input.and_then(|s| s.iter().map(Dim::known).product::<Option<usize>>());
        let known: Option<usize> = out.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, d)| d.known()).product();
        if let (Some(total), Some(known)) = (total, known) {
            if total.checked_rem(known) != Some(0) {
                return Err(format!("cannot reshape {total} elements to {target:?}"));
            }
            out[i] = Dim::Known(total / known);
        }
    }
    Ok(out)
}

/// Resolves Transpose's permutation (reversal by default) and checks it.
pub fn resolve_perm(perm: Option<&[i64]>, rank: usize) -> Result<Vec<usize>, String> {
    let p: Vec<usize> = match perm {
        None => (0..rank).rev().collect(),
        Some(p) => {
            if p.len() != rank {
                return Err(format!("perm {p:?} has {} entries for rank {rank}", p.len()));
            }
            p.iter().map(|&a| normalize_axis(a, rank)).collect::<Result<_, _>>()?
        }
    };
    let mut seen = vec![false; rank];
    for &a in &p {
        if std::mem::replace(&mut seen[a], true) {
            return Err(format!("perm {p:?} repeats axis {a}"));
        }
    }
    Ok(p)
}

/// Slice's clamping rule for one axis of size `n`: the effective start, the step and the
/// element count.
pub fn slice_range(n: usize, start: i64, end: i64, step: i64) -> Result<(i64, i64, usize), String> {
    if step == 0 {
        return Err("slice step is 0".into());
    }
    let n = n as i64;
    let fix = |v: i64| if v < 0 { v.saturating_add(n) } else { v };
    let (s, e) = if step > 0 {
        (fix(start).clamp(0, n), fix(end).clamp(0, n))
    } else {
        (fix(start).clamp(-1, n - 1), fix(end).clamp(-1, n - 1))
    };
    let count = if step > 0 {
        if e > s {
            (e - s + step - 1) / step
        } else {
            0
        }
    } else if s > e {
        (s - e + (-step) - 1) / (-step)
    } else {
        0
    };
    Ok((s, step, count as usize))
}

/// The dims `start..end` that Shape reports for a rank, clamped as the spec says.
pub fn shape_range(rank: usize, start: i64, end: Option<i64>) -> (usize, usize) {
    let r = rank as i64;
    let fix = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let a = fix(start);
    let b = fix(end.unwrap_or(r));
    (a, b.max(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the type rule of `op` on f32 data of `shape` followed by constant i64 inputs
    /// (`None` for a non-constant input of unknown value) and returns output 0's shape.
    fn check(op: LayoutOp, shape: &[usize], consts: &[Option<&[i64]>]) -> Option<Vec<Dim>> {
        let x = TypeInfo::known(DType::F32, shape);
        let tensors: Vec<Option<Tensor>> =
            consts.iter().map(|c| c.map(|v| Tensor::from_vec(vec![v.len()], v.to_vec()).unwrap())).collect();
        let tys: Vec<TypeInfo> = tensors
            .iter()
            .map(|t| t.as_ref().map_or(TypeInfo::of_dtype(DType::I64), |t| TypeInfo::known(DType::I64, t.shape())))
            .collect();
        let mut inputs = vec![Some(InferInput { ty: &x, value: None })];
        inputs.extend(tys.iter().zip(&tensors).map(|(ty, t)| Some(InferInput { ty, value: t.as_ref() })));
        op.infer(&inputs, 1).unwrap()[0].shape.clone()
    }

    fn known(d: &[usize]) -> Option<Vec<Dim>> {
        Some(d.iter().map(|&n| Dim::Known(n)).collect())
    }

    #[test]
    fn reshape_uses_the_constant_shape() {
        let op = LayoutOp::Reshape { shape: None, allowzero: false };
        assert_eq!(check(op.clone(), &[2, 3, 4], &[Some(&[0, -1])]), known(&[2, 12]));
        assert_eq!(check(op, &[2, 3, 4], &[None]), None);
    }

    #[test]
    fn slice_clamps_like_the_kernel() {
        let op = LayoutOp::Slice { attrs: None };
        let s = check(op.clone(), &[10, 5], &[Some(&[-3, 0]), Some(&[i64::MAX, -1]), None, Some(&[1, 2])]);
        assert_eq!(s, Some(vec![Dim::Unknown, Dim::Unknown]), "a non-constant axes input leaves dims unknown");
        let s = check(op, &[10, 5], &[Some(&[-1, 4]), Some(&[i64::MIN, 0]), Some(&[0, 1]), Some(&[-3, -2])]);
        assert_eq!(s, known(&[4, 2]));
    }

    #[test]
    fn squeeze_unsqueeze_gather_shapes() {
        assert_eq!(check(LayoutOp::Squeeze { axes: None }, &[1, 3, 1], &[Some(&[-1])]), known(&[1, 3]));
        assert_eq!(check(LayoutOp::Unsqueeze { axes: None }, &[3], &[Some(&[0, -1])]), known(&[1, 3, 1]));
        assert_eq!(check(LayoutOp::Gather { axis: 1 }, &[2, 3, 4], &[Some(&[0, 1, 2, 0, 1])]), known(&[2, 5, 4]));
        assert_eq!(check(LayoutOp::Expand, &[3, 1], &[Some(&[2, 1, 4])]), known(&[2, 3, 4]));
    }
}
