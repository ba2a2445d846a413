//! Pointwise ops: math, comparisons, logic, activations, casts.
//!
//! Every op of the family maps each output element to input elements at the same (broadcast)
//! position, so passes can treat them uniformly: unary ops (activations included, with their
//! parameters as fields) are [`UnaryOp`], two-input ops with numpy broadcasting are
//! [`BinaryOp`], and the n-ary reductions over inputs are [`VariadicOp`].

use super::infer::*;
use crate::{DType, TypeInfo};

/// Pointwise ops: math, comparisons, logic, activations, casts.
#[derive(Clone, Debug, PartialEq)]
pub enum ElementwiseOp {
    /// One input, one output of the same shape.
    Unary(UnaryOp),
    /// Two inputs broadcast against each other.
    Binary(BinaryOp),
    /// Any number of inputs broadcast against each other.
    Variadic(VariadicOp),
    /// A binary op with the broadcasting of opsets before 7: input 1's dims line up with
    /// input 0's starting at `axis` (numpy broadcasting lines them up at the trailing dims).
    LegacyBinary {
        /// The op.
        op: BinaryOp,
        /// Where input 1's first dim lines up in input 0.
        axis: i64,
    },
    /// `cond ? x : y` with inputs (cond, x, y) broadcast together.
    Where,
    /// Clamps input 0 to `[min, max]`.
    Clip {
        /// Lower bound from the attribute (opset < 11); `None` reads optional input 1.
        min: Option<f32>,
        /// Upper bound from the attribute (opset < 11); `None` reads optional input 2.
        max: Option<f32>,
    },
    /// Converts input 0 to another element type (ONNX `Cast`).
    Cast {
        /// The target type.
        to: DType,
        /// ONNX `saturate`: out-of-range values clamp to the largest finite float8 value
        /// instead of becoming Inf or NaN.
        saturate: bool,
    },
    /// Converts input 0 to the element type of input 1.
    CastLike {
        /// As for [`ElementwiseOp::Cast`].
        saturate: bool,
    },
}

/// Unary math, logic and activation functions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    /// |x|
    Abs,
    /// -x
    Neg,
    /// e^x
    Exp,
    /// ln x
    Log,
    /// √x
    Sqrt,
    /// 1 / x
    Reciprocal,
    /// Rounds toward -∞.
    Floor,
    /// Rounds toward +∞.
    Ceil,
    /// Rounds half to even.
    Round,
    /// -1, 0 or 1.
    Sign,
    /// The Gauss error function.
    Erf,
    /// sin x
    Sin,
    /// cos x
    Cos,
    /// tan x
    Tan,
    /// asin x
    Asin,
    /// acos x
    Acos,
    /// atan x
    Atan,
    /// sinh x
    Sinh,
    /// cosh x
    Cosh,
    /// asinh x
    Asinh,
    /// acosh x
    Acosh,
    /// atanh x
    Atanh,
    /// tanh x
    Tanh,
    /// Logical not of a boolean.
    Not,
    /// Bitwise complement of an integer.
    BitwiseNot,
    /// Whether x is NaN; outputs bool.
    IsNaN,
    /// Whether x is infinite; outputs bool.
    IsInf {
        /// Report -∞.
        detect_negative: bool,
        /// Report +∞.
        detect_positive: bool,
    },
    /// max(x, 0)
    Relu,
    /// x < 0 ? alpha·x : x
    LeakyRelu {
        /// Slope for negative x.
        alpha: f32,
    },
    /// x < 0 ? alpha·(e^x - 1) : x
    Elu {
        /// Scale of the negative part.
        alpha: f32,
    },
    /// gamma·(x <= 0 ? alpha·(e^x - 1) : x)
    Selu {
        /// Scale of the negative part.
        alpha: f32,
        /// Overall scale.
        gamma: f32,
    },
    /// max(0, x) + min(0, alpha·(e^(x/alpha) - 1))
    Celu {
        /// Scale of the negative part.
        alpha: f32,
    },
    /// 1 / (1 + e^-x)
    Sigmoid,
    /// max(0, min(1, alpha·x + beta))
    HardSigmoid {
        /// Slope.
        alpha: f32,
        /// Offset.
        beta: f32,
    },
    /// x · max(0, min(1, x/6 + 1/2))
    HardSwish,
    /// ln(e^x + 1)
    Softplus,
    /// x / (1 + |x|)
    Softsign,
    /// x > alpha ? x : 0
    ThresholdedRelu {
        /// Threshold.
        alpha: f32,
    },
    /// x·Φ(x), exactly or with the tanh approximation.
    Gelu {
        /// Use the tanh approximation (`approximate = "tanh"`).
        tanh: bool,
    },
    /// x · tanh(softplus(x))
    Mish,
    /// x < -lambd ? x + bias : x > lambd ? x - bias : 0
    Shrink {
        /// Shift applied outside the dead zone.
        bias: f32,
        /// Half width of the dead zone.
        lambd: f32,
    },
    /// x · sigmoid(alpha·x)
    Swish {
        /// Scale inside the sigmoid.
        alpha: f32,
    },
}

/// Two-input ops with numpy broadcasting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    /// a + b
    Add,
    /// a - b
    Sub,
    /// a · b
    Mul,
    /// a / b (integers truncate toward zero)
    Div,
    /// a^b; the output has the type of a.
    Pow,
    /// Remainder of a / b.
    Mod {
        /// C `fmod` semantics (sign of a) instead of the sign of b.
        fmod: bool,
    },
    /// Shifts unsigned integers.
    BitShift {
        /// Shift left (`direction = "LEFT"`), else right.
        left: bool,
    },
    /// a & b on integers.
    BitwiseAnd,
    /// a | b on integers.
    BitwiseOr,
    /// a ^ b on integers.
    BitwiseXor,
    /// Logical and of booleans.
    And,
    /// Logical or of booleans.
    Or,
    /// Logical xor of booleans.
    Xor,
    /// a == b; outputs bool.
    Equal,
    /// a < b; outputs bool.
    Less,
    /// a <= b; outputs bool.
    LessOrEqual,
    /// a > b; outputs bool.
    Greater,
    /// a >= b; outputs bool.
    GreaterOrEqual,
    /// a < 0 ? slope·a : a, with slope (input 1) broadcast to a.
    PRelu,
}

/// Ops over any number of inputs, broadcast together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VariadicOp {
    /// Elementwise maximum.
    Max,
    /// Elementwise minimum.
    Min,
    /// Elementwise sum.
    Sum,
    /// Elementwise mean.
    Mean,
}

impl UnaryOp {
    /// The ONNX op name.
    pub fn name(&self) -> &'static str {
        use UnaryOp::*;
        match self {
            Abs => "Abs",
            Neg => "Neg",
            Exp => "Exp",
            Log => "Log",
            Sqrt => "Sqrt",
            Reciprocal => "Reciprocal",
            Floor => "Floor",
            Ceil => "Ceil",
            Round => "Round",
            Sign => "Sign",
            Erf => "Erf",
            Sin => "Sin",
            Cos => "Cos",
            Tan => "Tan",
            Asin => "Asin",
            Acos => "Acos",
            Atan => "Atan",
            Sinh => "Sinh",
            Cosh => "Cosh",
            Asinh => "Asinh",
            Acosh => "Acosh",
            Atanh => "Atanh",
            Tanh => "Tanh",
            Not => "Not",
            BitwiseNot => "BitwiseNot",
            IsNaN => "IsNaN",
            IsInf { .. } => "IsInf",
            Relu => "Relu",
            LeakyRelu { .. } => "LeakyRelu",
            Elu { .. } => "Elu",
            Selu { .. } => "Selu",
            Celu { .. } => "Celu",
            Sigmoid => "Sigmoid",
            HardSigmoid { .. } => "HardSigmoid",
            HardSwish => "HardSwish",
            Softplus => "Softplus",
            Softsign => "Softsign",
            ThresholdedRelu { .. } => "ThresholdedRelu",
            Gelu { .. } => "Gelu",
            Mish => "Mish",
            Shrink { .. } => "Shrink",
            Swish { .. } => "Swish",
        }
    }

    /// Whether the output is a boolean whatever the input type.
    pub fn outputs_bool(&self) -> bool {
        matches!(self, UnaryOp::IsNaN | UnaryOp::IsInf { .. })
    }
}

impl BinaryOp {
    /// The ONNX op name.
    pub fn name(&self) -> &'static str {
        use BinaryOp::*;
        match self {
            Add => "Add",
            Sub => "Sub",
            Mul => "Mul",
            Div => "Div",
            Pow => "Pow",
            Mod { .. } => "Mod",
            BitShift { .. } => "BitShift",
            BitwiseAnd => "BitwiseAnd",
            BitwiseOr => "BitwiseOr",
            BitwiseXor => "BitwiseXor",
            And => "And",
            Or => "Or",
            Xor => "Xor",
            Equal => "Equal",
            Less => "Less",
            LessOrEqual => "LessOrEqual",
            Greater => "Greater",
            GreaterOrEqual => "GreaterOrEqual",
            PRelu => "PRelu",
        }
    }

    /// Whether the op compares its inputs, producing booleans.
    pub fn is_comparison(&self) -> bool {
        use BinaryOp::*;
        matches!(self, Equal | Less | LessOrEqual | Greater | GreaterOrEqual)
    }

    /// Whether the output is a boolean whatever the input type.
    pub fn outputs_bool(&self) -> bool {
        self.is_comparison() || matches!(self, BinaryOp::And | BinaryOp::Or | BinaryOp::Xor)
    }
}

impl VariadicOp {
    /// The ONNX op name.
    pub fn name(&self) -> &'static str {
        match self {
            VariadicOp::Max => "Max",
            VariadicOp::Min => "Min",
            VariadicOp::Sum => "Sum",
            VariadicOp::Mean => "Mean",
        }
    }
}

impl ElementwiseOp {
    /// The ONNX op name.
    pub fn name(&self) -> &'static str {
        match self {
            ElementwiseOp::Unary(u) => u.name(),
            ElementwiseOp::Binary(b) => b.name(),
            ElementwiseOp::Variadic(v) => v.name(),
            ElementwiseOp::LegacyBinary { op, .. } => op.name(),
            ElementwiseOp::Where => "Where",
            ElementwiseOp::Clip { .. } => "Clip",
            ElementwiseOp::Cast { .. } => "Cast",
            ElementwiseOp::CastLike { .. } => "CastLike",
        }
    }

    /// The type rule: output types from input types.
    ///
    /// The shape is the broadcast of the inputs that take part in it; the element type is bool
    /// for comparisons, logic and the `Is*` tests, the target type for casts, and the type of
    /// the data input otherwise.
    pub fn infer(&self, inputs: &[Option<InferInput<'_>>], num_outputs: usize) -> Result<Vec<TypeInfo>, String> {
        let _ = num_outputs;
        let (dtype, shape) = match self {
            ElementwiseOp::Unary(u) => {
                let t = input_ty(inputs, 0);
                (if u.outputs_bool() { Some(DType::Bool) } else { t.dtype }, t.shape)
            }
            ElementwiseOp::Binary(b) => {
                let shape = broadcast_all(&inputs[..inputs.len().min(2)])?;
                let dtype = if b.outputs_bool() { Some(DType::Bool) } else { input_ty(inputs, 0).dtype };
                (dtype, shape)
            }
            ElementwiseOp::Variadic(_) => (first_dtype(inputs), broadcast_all(inputs)?),
            ElementwiseOp::LegacyBinary { op, .. } => {
                let t = input_ty(inputs, 0);
                (if op.outputs_bool() { Some(DType::Bool) } else { t.dtype }, t.shape)
            }
            ElementwiseOp::Where => (input_ty(inputs, 1).dtype.or(input_ty(inputs, 2).dtype), broadcast_all(inputs)?),
            // The bounds are scalars, so only the data input shapes the output.
            ElementwiseOp::Clip { .. } => {
                let t = input_ty(inputs, 0);
                (t.dtype, t.shape)
            }
            ElementwiseOp::Cast { to, .. } => (Some(*to), input_ty(inputs, 0).shape),
            ElementwiseOp::CastLike { .. } => (input_ty(inputs, 1).dtype, input_ty(inputs, 0).shape),
        };
        Ok(vec![TypeInfo { dtype, shape }])
    }
}

impl ElementwiseOp {
    /// Whether the op is deterministic and side-effect free (random ops are not).
    pub fn is_pure(&self) -> bool {
        true
    }
}

impl ElementwiseOp {
    /// Whether the op is a Cast, which is a no-op when the input already has the target type.
    pub fn is_noop_cast(&self) -> bool {
        matches!(self, ElementwiseOp::Cast { .. } | ElementwiseOp::CastLike { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Dim;

    fn check(op: ElementwiseOp, inputs: &[TypeInfo], expected: TypeInfo) {
        let ins: Vec<Option<InferInput<'_>>> = inputs.iter().map(|ty| Some(InferInput { ty, value: None })).collect();
        assert_eq!(op.infer(&ins, 1).unwrap(), vec![expected]);
    }

    #[test]
    fn comparison_broadcasts_to_bool() {
        check(
            ElementwiseOp::Binary(BinaryOp::Less),
            &[TypeInfo::known(DType::F32, &[2, 1, 4]), TypeInfo::known(DType::F32, &[3, 1])],
            TypeInfo::known(DType::Bool, &[2, 3, 4]),
        );
    }

    #[test]
    fn cast_keeps_symbolic_shape() {
        let x = TypeInfo { dtype: Some(DType::F32), shape: Some(vec![Dim::Sym("n".into()), Dim::Known(3)]) };
        let want = TypeInfo { dtype: Some(DType::I64), shape: x.shape.clone() };
        check(ElementwiseOp::Cast { to: DType::I64, saturate: true }, &[x], want);
    }
}
