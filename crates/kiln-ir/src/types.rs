//! Static types of values: element type plus a shape whose dims may be symbolic or unknown.

use crate::DType;
use std::fmt;

/// One dimension of a static shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    /// A known size.
    Known(usize),
    /// A named size fixed at run time (ONNX `dim_param`, such as `batch`).
    Sym(String),
    /// Nothing is known.
    Unknown,
}

impl Dim {
    /// The size, if known.
    pub fn known(&self) -> Option<usize> {
        match self {
            Dim::Known(n) => Some(*n),
            _ => None,
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Known(n) => write!(f, "{n}"),
            Dim::Sym(s) => f.write_str(s),
            Dim::Unknown => f.write_str("?"),
        }
    }
}

/// Whether a value is a tensor, a sequence of tensors, or an optional of either.
///
/// For sequences and optionals, the value's [`TypeInfo`] describes the element tensors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ValueKind {
    /// A tensor.
    #[default]
    Tensor,
    /// A sequence of tensors of one element type.
    Sequence,
    /// An optional that may hold a tensor.
    OptionalTensor,
    /// An optional that may hold a sequence of tensors.
    OptionalSequence,
}

/// A runtime value: a tensor, a sequence of tensors, or an optional without a value.
///
/// An optional that holds a value is represented by that value.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    /// A tensor.
    Tensor(crate::Tensor),
    /// A sequence of tensors.
    Sequence(Vec<crate::Tensor>),
    /// An optional without a value.
    Empty,
}

impl Data {
    /// The tensor, if this is one.
    pub fn as_tensor(&self) -> Option<&crate::Tensor> {
        match self {
            Data::Tensor(t) => Some(t),
            _ => None,
        }
    }

    /// A short description for errors: "tensor", "sequence" or "empty optional".
    pub fn kind_name(&self) -> &'static str {
        match self {
            Data::Tensor(_) => "tensor",
            Data::Sequence(_) => "sequence",
            Data::Empty => "empty optional",
        }
    }
}

/// What is known statically about a value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct TypeInfo {
    /// The element type, if known.
    pub dtype: Option<DType>,
    /// The shape, if at least the rank is known.
    pub shape: Option<Vec<Dim>>,
}

impl TypeInfo {
    /// Nothing known.
    pub fn unknown() -> TypeInfo {
        TypeInfo::default()
    }

    /// A fully known type.
    pub fn known(dtype: DType, shape: &[usize]) -> TypeInfo {
        TypeInfo { dtype: Some(dtype), shape: Some(shape.iter().map(|&d| Dim::Known(d)).collect()) }
    }

    /// A type with a known element type and unknown shape.
    pub fn of_dtype(dtype: DType) -> TypeInfo {
        TypeInfo { dtype: Some(dtype), shape: None }
    }

    /// The rank, if known.
    pub fn rank(&self) -> Option<usize> {
        self.shape.as_ref().map(|s| s.len())
    }

    /// The concrete shape, if every dim is known.
    pub fn concrete_shape(&self) -> Option<Vec<usize>> {
        self.shape.as_ref()?.iter().map(Dim::known).collect()
    }

    /// Keeps whatever is more precise of `self` and `other`, dim by dim.
    /// Returns `None` when the two contradict each other.
    pub fn merge(&self, other: &TypeInfo) -> Option<TypeInfo> {
        let dtype = match (self.dtype, other.dtype) {
            (Some(a), Some(b)) if a != b => return None,
            (a, b) => a.or(b),
        };
        let shape = match (&self.shape, &other.shape) {
            (Some(a), Some(b)) => {
                if a.len() != b.len() {
                    return None;
                }
                let mut out = Vec::with_capacity(a.len());
                for (x, y) in a.iter().zip(b) {
                    out.push(match (x, y) {
                        (Dim::Known(p), Dim::Known(q)) if p != q => return None,
                        (Dim::Known(_), _) => x.clone(),
                        (_, Dim::Known(_)) => y.clone(),
                        (Dim::Sym(_), _) => x.clone(),
                        _ => y.clone(),
                    });
                }
                Some(out)
            }
            (a, b) => a.clone().or_else(|| b.clone()),
        };
        Some(TypeInfo { dtype, shape })
    }
}

impl fmt::Display for TypeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.dtype {
            Some(d) => write!(f, "{d}")?,
            None => f.write_str("?")?,
        }
        match &self.shape {
            Some(s) => {
                let dims: Vec<String> = s.iter().map(|d| d.to_string()).collect();
                write!(f, "[{}]", dims.join(","))
            }
            None => f.write_str("[..]"),
        }
    }
}
