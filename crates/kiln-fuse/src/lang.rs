//! The e-graph language: one e-node per IR node, named by its op so that rules read like ONNX.
//!
//! An e-node is an op kind (`Conv`, `Relu`), a [`Head`] that pins down which op of that kind
//! (attributes live in the analysis's op table, so e-nodes stay small and cheap to hash), and
//! its children. In patterns, `(Relu ?x)` is exactly Relu; `(Transpose ?x)` names a kind with
//! attributes and matches a Transpose with any permutation, which the rule's guard or applier
//! then inspects. Rules never build a node from such a pattern: their right-hand sides are
//! either plain ops or Rust appliers that say the attributes.

use egg::{FromOp, Id, Language, Symbol};
use kiln_ir::ops::elementwise::{BinaryOp, UnaryOp, VariadicOp};
use kiln_ir::ops::{ElementwiseOp, LayoutOp, LinalgOp};
use kiln_ir::Op;
use std::fmt;

/// Which op of a kind an e-node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Head {
    /// The op the kind's name alone determines (see [`plain_op`]).
    Plain,
    /// Entry `i` of the analysis's op table.
    Op(u32),
    /// Patterns only: any op of the kind.
    Any,
    /// Graph input `i`.
    Input(u32),
    /// Entry `i` of the analysis's constant table.
    Const(u32),
    /// Output `i` of a multi-output node (the only child).
    Proj(u32),
    /// An absent optional input.
    Absent,
}

/// An e-node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KNode {
    /// The op kind (`"Conv"`, or `"Input"`, `"Const"`, `"Proj"`, `"Absent"` for leaves).
    pub kind: Symbol,
    /// Which op of the kind.
    pub head: Head,
    /// The inputs, one per input slot.
    pub args: Vec<Id>,
}

impl KNode {
    /// A leaf of the given kind.
    pub fn leaf(kind: &str, head: Head) -> KNode {
        KNode { kind: Symbol::from(kind), head, args: vec![] }
    }

    /// Whether the node is of this kind.
    pub fn is(&self, kind: &str) -> bool {
        self.kind.as_str() == kind
    }
}

impl Language for KNode {
    type Discriminant = Symbol;

    fn discriminant(&self) -> Symbol {
        self.kind
    }

    fn matches(&self, other: &Self) -> bool {
        self.kind == other.kind
            && self.args.len() == other.args.len()
            && (self.head == other.head || self.head == Head::Any || other.head == Head::Any)
    }

    fn children(&self) -> &[Id] {
        &self.args
    }

    fn children_mut(&mut self) -> &mut [Id] {
        &mut self.args
    }
}

impl fmt::Display for KNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)
    }
}

/// Why a pattern's op name was refused.
#[derive(Debug, thiserror::Error)]
#[error("unknown op '{0}' in a rule pattern")]
pub struct UnknownOp(String);

/// Kinds that patterns may name with attributes left open.
const KINDS_WITH_ATTRIBUTES: &[&str] = &[
    "Attention",
    "BatchNormalization",
    "Cast",
    "Clip",
    "Conv",
    "ConvTranspose",
    "DequantizeLinear",
    "Flatten",
    "Gemm",
    "LayerNormalization",
    "MaxPool",
    "QuantizeLinear",
    "ReduceMax",
    "ReduceMean",
    "ReduceSum",
    "Reshape",
    "Softmax",
    "Squeeze",
    "Transpose",
    "Unsqueeze",
];

impl FromOp for KNode {
    type Error = UnknownOp;

    fn from_op(op: &str, children: Vec<Id>) -> Result<Self, Self::Error> {
        if plain_op(op).is_some() {
            // Reshape has a plain form (no attribute shape, allowzero off) but patterns that
            // say Reshape mean that form: a rule that wants any Reshape checks it in a guard.
            return Ok(KNode { kind: Symbol::from(op), head: Head::Plain, args: children });
        }
        if KINDS_WITH_ATTRIBUTES.contains(&op) {
            return Ok(KNode { kind: Symbol::from(op), head: Head::Any, args: children });
        }
        Err(UnknownOp(op.to_string()))
    }
}

/// The op a kind name alone determines: attribute-free pointwise ops, MatMul, Identity and the
/// opset-5 Reshape. These e-nodes carry [`Head::Plain`], so rules can build them.
pub fn plain_op(name: &str) -> Option<Op> {
    use UnaryOp::*;
    let unary = |u| Some(Op::Elementwise(ElementwiseOp::Unary(u)));
    let binary = |b| Some(Op::Elementwise(ElementwiseOp::Binary(b)));
    match name {
        "Abs" => unary(Abs),
        "Neg" => unary(Neg),
        "Exp" => unary(Exp),
        "Log" => unary(Log),
        "Sqrt" => unary(Sqrt),
        "Reciprocal" => unary(Reciprocal),
        "Erf" => unary(Erf),
        "Tanh" => unary(Tanh),
        "Sigmoid" => unary(Sigmoid),
        "Relu" => unary(Relu),
        "HardSwish" => unary(HardSwish),
        "Not" => unary(Not),
        "Add" => binary(BinaryOp::Add),
        "Sub" => binary(BinaryOp::Sub),
        "Mul" => binary(BinaryOp::Mul),
        "Div" => binary(BinaryOp::Div),
        "Pow" => binary(BinaryOp::Pow),
        "Max" => Some(Op::Elementwise(ElementwiseOp::Variadic(VariadicOp::Max))),
        "Min" => Some(Op::Elementwise(ElementwiseOp::Variadic(VariadicOp::Min))),
        "Where" => Some(Op::Elementwise(ElementwiseOp::Where)),
        "MatMul" => Some(Op::Linalg(LinalgOp::MatMul)),
        "Identity" => Some(Op::Layout(LayoutOp::Identity)),
        "Reshape" => Some(Op::Layout(LayoutOp::Reshape { shape: None, allowzero: false })),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_matches_every_op_of_its_kind_and_plain_only_itself() {
        let any = KNode::from_op("Transpose", vec![Id::from(0)]).unwrap();
        let a = KNode { kind: Symbol::from("Transpose"), head: Head::Op(3), args: vec![Id::from(5)] };
        assert!(any.matches(&a));
        let relu = KNode::from_op("Relu", vec![Id::from(0)]).unwrap();
        let other = KNode { kind: Symbol::from("Relu"), head: Head::Op(1), args: vec![Id::from(5)] };
        assert!(!relu.matches(&other));
        assert!(KNode::from_op("Frobnicate", vec![]).is_err());
    }

    #[test]
    fn plain_ops_are_named_by_their_kind() {
        for name in ["Relu", "Add", "MatMul", "Reshape", "Where", "Max"] {
            assert_eq!(plain_op(name).unwrap().name(), name);
        }
    }
}
