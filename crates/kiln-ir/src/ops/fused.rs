//! Ops that fusion makes: elementwise expressions, matrix ops with an elementwise epilogue, and
//! attention over a packed QKV projection.
//!
//! They exist so that one node of the optimized graph is one launch on a GPU. Each has exact
//! semantics in terms of the ops it replaces, so the CPU reference executor runs them too and a
//! fused graph can be checked against the graph it came from.

use super::infer::*;
use super::{ElementwiseOp, InferInput, LinalgOp};
use crate::{DType, Dim, TypeInfo};
use std::collections::HashMap;
use std::fmt;

/// One step of an [`Expr`]; arguments index earlier steps.
#[derive(Clone, Debug, PartialEq)]
pub enum ExprNode {
    /// Input `i` of the expression.
    Input(usize),
    /// A 0-d constant of the given type; it broadcasts anywhere without changing shapes.
    Scalar {
        /// The value (converted to `dtype` when evaluated).
        value: f64,
        /// Its element type.
        dtype: DType,
    },
    /// An elementwise op applied to earlier steps.
    Op {
        /// The op; never [`ElementwiseOp::LegacyBinary`].
        op: ElementwiseOp,
        /// The steps it reads, one per op input.
        args: Vec<usize>,
    },
}

/// A straight-line elementwise expression; its value is the last step.
///
/// Steps are in topological order and shared steps appear once, so an expression is a DAG over
/// its inputs. [`Expr::canonical`] gives every equal computation the same form, which fusion
/// relies on to recognise two ways of building the same fused node.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Expr {
    /// The steps; the last one is the result.
    pub nodes: Vec<ExprNode>,
}

impl Expr {
    /// The identity expression `in0`.
    pub fn input() -> Expr {
        Expr { nodes: vec![ExprNode::Input(0)] }
    }

    /// `op(in0, in1, ...)` over `arity` inputs.
    pub fn op(op: ElementwiseOp, arity: usize) -> Expr {
        let mut nodes: Vec<ExprNode> = (0..arity).map(ExprNode::Input).collect();
        nodes.push(ExprNode::Op { op, args: (0..arity).collect() });
        Expr { nodes }
    }

    /// How many inputs the expression reads: one more than the largest input index.
    pub fn num_inputs(&self) -> usize {
        self.nodes.iter().filter_map(|n| if let ExprNode::Input(i) = n { Some(i + 1) } else { None }).max().unwrap_or(0)
    }

    /// How many op steps it has (its arithmetic per element, roughly).
    pub fn num_ops(&self) -> usize {
        self.nodes.iter().filter(|n| matches!(n, ExprNode::Op { .. })).count()
    }

    /// Checks that arguments point backwards and that there is a result.
    pub fn check(&self) -> Result<(), String> {
        if self.nodes.is_empty() {
            return Err("empty expression".into());
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if let ExprNode::Op { op, args } = n {
                if matches!(op, ElementwiseOp::LegacyBinary { .. }) {
                    return Err("legacy broadcasting has no place in an expression".into());
                }
                if let Some(a) = args.iter().find(|&&a| a >= i) {
                    return Err(format!("step {i} reads step {a}, which does not come before it"));
                }
            }
        }
        Ok(())
    }

    /// The output type from the input types.
    pub fn infer(&self, inputs: &[TypeInfo]) -> Result<TypeInfo, String> {
        self.check()?;
        let mut tys: Vec<TypeInfo> = Vec::with_capacity(self.nodes.len());
        for n in &self.nodes {
            let ty = match n {
                ExprNode::Input(i) => inputs.get(*i).cloned().unwrap_or_default(),
                ExprNode::Scalar { dtype, .. } => TypeInfo::known(*dtype, &[]),
                ExprNode::Op { op, args } => {
                    let ins: Vec<Option<InferInput<'_>>> =
                        args.iter().map(|&a| Some(InferInput { ty: &tys[a], value: None })).collect();
                    op.infer(&ins, 1)?.remove(0)
                }
            };
            tys.push(ty);
        }
        Ok(tys.pop().unwrap_or_default())
    }

    /// Replaces input `at` by the whole of `inner`, whose inputs become new inputs after this
    /// expression's. Used to fuse a producer into its consumer.
    pub fn substitute(&self, at: usize, inner: &Expr) -> Expr {
        let base = self.num_inputs();
        let mut nodes = Vec::with_capacity(self.nodes.len() + inner.nodes.len());
        // The inner expression's steps first, its inputs shifted past ours.
        for n in &inner.nodes {
            nodes.push(match n {
                ExprNode::Input(i) => ExprNode::Input(base + i),
                other => other.clone(),
            });
        }
        let inner_result = inner.nodes.len() - 1;
        let offset = inner.nodes.len();
        for n in &self.nodes {
            nodes.push(match n {
                ExprNode::Input(i) if *i == at => ExprNode::Op {
                    // An identity step keeps indices simple; `canonical` removes it.
                    op: ElementwiseOp::Variadic(super::elementwise::VariadicOp::Sum),
                    args: vec![inner_result],
                },
                ExprNode::Op { op, args } => {
                    ExprNode::Op { op: op.clone(), args: args.iter().map(|a| a + offset).collect() }
                }
                other => other.clone(),
            });
        }
        Expr { nodes }
    }

    /// The same computation in canonical form, with the map from new input numbers to old ones.
    ///
    /// Inputs are renumbered in order of first use by a depth-first walk from the result, with
    /// `merge` naming old inputs that carry the same value (they become one input); equal steps
    /// are shared; one-argument `Sum` steps (left by [`Expr::substitute`]) disappear. Two
    /// expressions that compute the same tree over the same inputs come out equal.
    pub fn canonical(&self, same_input: &dyn Fn(usize) -> usize) -> (Expr, Vec<usize>) {
        self.canonical_pinned(same_input, None)
    }

    /// As [`Expr::canonical`], with old input `pinned` (when given) always new input 0, as an
    /// epilogue's accumulator must be.
    pub fn canonical_pinned(&self, same_input: &dyn Fn(usize) -> usize, pinned: Option<usize>) -> (Expr, Vec<usize>) {
        struct Walk<'a> {
            src: &'a Expr,
            same_input: &'a dyn Fn(usize) -> usize,
            out: Vec<ExprNode>,
            memo: HashMap<usize, usize>,
            dedup: HashMap<String, usize>,
            inputs: Vec<usize>,
        }
        impl Walk<'_> {
            fn push(&mut self, n: ExprNode) -> usize {
                let key = format!("{n:?}");
                if let Some(&i) = self.dedup.get(&key) {
                    return i;
                }
                self.out.push(n);
                self.dedup.insert(key, self.out.len() - 1);
                self.out.len() - 1
            }
            fn visit(&mut self, i: usize) -> usize {
                if let Some(&r) = self.memo.get(&i) {
                    return r;
                }
                let r = match &self.src.nodes[i] {
                    ExprNode::Input(k) => {
                        let k = (self.same_input)(*k);
                        let pos = match self.inputs.iter().position(|&x| x == k) {
                            Some(p) => p,
                            None => {
                                self.inputs.push(k);
                                self.inputs.len() - 1
                            }
                        };
                        self.push(ExprNode::Input(pos))
                    }
                    ExprNode::Scalar { value, dtype } => self.push(ExprNode::Scalar { value: *value, dtype: *dtype }),
                    ExprNode::Op { op: ElementwiseOp::Variadic(super::elementwise::VariadicOp::Sum), args }
                        if args.len() == 1 =>
                    {
                        self.visit(args[0])
                    }
                    ExprNode::Op { op, args } => {
                        let args: Vec<usize> = args.iter().map(|&a| self.visit(a)).collect();
                        self.push(ExprNode::Op { op: op.clone(), args })
                    }
                };
                self.memo.insert(i, r);
                r
            }
        }
        let mut w = Walk {
            src: self,
            same_input,
            out: vec![],
            memo: HashMap::new(),
            dedup: HashMap::new(),
            inputs: pinned.map(|p| vec![same_input(p)]).unwrap_or_default(),
        };
        if !self.nodes.is_empty() {
            let root = w.visit(self.nodes.len() - 1);
            // The result must be the last step; it already is unless it was shared earlier.
            if root != w.out.len() - 1 {
                let n = w.out[root].clone();
                w.out.push(n);
            }
        }
        (Expr { nodes: w.out }, w.inputs)
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn show(e: &Expr, i: usize, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match &e.nodes[i] {
                ExprNode::Input(k) => write!(f, "in{k}"),
                ExprNode::Scalar { value, dtype } if dtype.size() <= 4 && dtype.is_float() => {
                    write!(f, "{}", *value as f32)
                }
                ExprNode::Scalar { value, .. } => write!(f, "{value}"),
                ExprNode::Op { op, args } => {
                    let infix = match op {
                        ElementwiseOp::Binary(b) => match b {
                            super::elementwise::BinaryOp::Add => Some("+"),
                            super::elementwise::BinaryOp::Sub => Some("-"),
                            super::elementwise::BinaryOp::Mul => Some("*"),
                            super::elementwise::BinaryOp::Div => Some("/"),
                            _ => None,
                        },
                        _ => None,
                    };
                    if let (Some(sym), [a, b]) = (infix, args.as_slice()) {
                        write!(f, "(")?;
                        show(e, *a, f)?;
                        write!(f, " {sym} ")?;
                        show(e, *b, f)?;
                        return write!(f, ")");
                    }
                    let name = match op {
                        ElementwiseOp::Cast { to, .. } => format!("Cast<{to}>"),
                        ElementwiseOp::Clip { min: Some(lo), max: Some(hi) } => format!("Clip<{lo},{hi}>"),
                        other => other.name().to_string(),
                    };
                    write!(f, "{name}(")?;
                    for (j, a) in args.iter().enumerate() {
                        if j > 0 {
                            write!(f, ", ")?;
                        }
                        show(e, *a, f)?;
                    }
                    write!(f, ")")
                }
            }
        }
        if self.nodes.is_empty() {
            return write!(f, "<empty>");
        }
        show(self, self.nodes.len() - 1, f)
    }
}

/// Ops that fusion makes.
#[derive(Clone, Debug, PartialEq)]
pub enum FusedOp {
    /// An elementwise expression over the node's inputs, broadcast together.
    Elementwise(Expr),
    /// A matrix op (MatMul, Gemm, Conv, ConvTranspose or their integer forms) whose output goes straight through an
    /// elementwise epilogue: bias, residual, activation. The node's first `base_inputs` inputs
    /// are the matrix op's; in the epilogue, `in0` is the matrix op's output and `in{k}` for
    /// `k >= 1` is node input `base_inputs + k - 1`. The epilogue never changes the shape.
    Epilogue {
        /// The matrix op.
        base: LinalgOp,
        /// How many of the node's inputs belong to it (absent optional ones included).
        base_inputs: usize,
        /// The epilogue.
        expr: Expr,
    },
    /// Multi-head attention on a packed projection `[batch, seq, 3 * heads * head_size]` (Q, K
    /// and V side by side in the last dim), with an optional additive or boolean mask (input 1)
    /// broadcastable to `[batch, heads, seq, seq]`. The output is `[batch, seq, heads *
    /// head_size]`, heads already merged.
    PackedAttention {
        /// Number of heads.
        num_heads: usize,
        /// The factor of `Q K^T`.
        scale: f32,
    },
}

impl FusedOp {
    /// The op's name in dumps and counts.
    pub fn name(&self) -> &'static str {
        match self {
            FusedOp::Elementwise(_) => "FusedElementwise",
            FusedOp::Epilogue { base, .. } => match base {
                LinalgOp::MatMul => "MatMulEpilogue",
                LinalgOp::Gemm { .. } => "GemmEpilogue",
                LinalgOp::Conv(_) => "ConvEpilogue",
                LinalgOp::ConvTranspose(_) => "ConvTransposeEpilogue",
                LinalgOp::MatMulInteger => "MatMulIntegerEpilogue",
                LinalgOp::ConvInteger(_) => "ConvIntegerEpilogue",
                _ => "Epilogue",
            },
            FusedOp::PackedAttention { .. } => "PackedAttention",
        }
    }

    /// The type rule: output types from input types.
    pub fn infer(&self, inputs: &[Option<InferInput<'_>>], num_outputs: usize) -> Result<Vec<TypeInfo>, String> {
        match self {
            FusedOp::Elementwise(e) => {
                let tys: Vec<TypeInfo> = (0..inputs.len()).map(|i| input_ty(inputs, i)).collect();
                Ok(vec![e.infer(&tys)?])
            }
            FusedOp::Epilogue { base, base_inputs, expr } => {
                if inputs.len() < *base_inputs {
                    return Err(format!("epilogue node has {} inputs, its base needs {base_inputs}", inputs.len()));
                }
                let out = base.infer(&inputs[..*base_inputs], num_outputs)?.remove(0);
                let mut tys = vec![out.clone()];
                tys.extend((*base_inputs..inputs.len()).map(|i| input_ty(inputs, i)));
                let ty = expr.infer(&tys)?;
                if let (Some(a), Some(b)) = (&ty.shape, &out.shape) {
                    if a.len() != b.len() {
                        return Err(format!("epilogue changes the rank from {} to {}", b.len(), a.len()));
                    }
                }
                Ok(vec![TypeInfo { dtype: ty.dtype, shape: out.shape.or(ty.shape) }])
            }
            FusedOp::PackedAttention { num_heads, .. } => {
                let x = input_ty(inputs, 0);
                let shape = match &x.shape {
                    Some(s) if s.len() == 3 => {
                        let last = match s[2].known() {
                            Some(n) if n % (3 * num_heads) == 0 => Dim::Known(n / 3),
                            Some(n) => {
                                return Err(format!("packed QKV width {n} is not 3 x {num_heads} heads x head size"))
                            }
                            None => Dim::Unknown,
                        };
                        Some(vec![s[0].clone(), s[1].clone(), last])
                    }
                    Some(s) => {
                        return Err(format!("packed QKV must be [batch, seq, 3 * hidden], found rank {}", s.len()))
                    }
                    None => None,
                };
                Ok(vec![TypeInfo { dtype: x.dtype, shape }])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::elementwise::{BinaryOp, UnaryOp};

    fn bin(op: BinaryOp, a: usize, b: usize) -> ExprNode {
        ExprNode::Op { op: ElementwiseOp::Binary(op), args: vec![a, b] }
    }

    #[test]
    fn substitute_then_canonical_equals_the_direct_tree() {
        // relu(in0) substituted into (in0 + in1) at 0 is relu(x) + y.
        let add = Expr::op(ElementwiseOp::Binary(BinaryOp::Add), 2);
        let relu = Expr::op(ElementwiseOp::Unary(UnaryOp::Relu), 1);
        let (got, map) = add.substitute(0, &relu).canonical(&|i| i);
        // Old inputs: 0 (replaced), 1 = y, 2 = relu's x. First use order: x then y.
        assert_eq!(map, vec![2, 1]);
        let direct = Expr {
            nodes: vec![
                ExprNode::Input(0),
                ExprNode::Op { op: ElementwiseOp::Unary(UnaryOp::Relu), args: vec![0] },
                ExprNode::Input(1),
                bin(BinaryOp::Add, 1, 2),
            ],
        };
        assert_eq!(got, direct);
        assert_eq!(got.to_string(), "(Relu(in0) + in1)");
    }

    #[test]
    fn canonical_merges_inputs_that_carry_one_value() {
        // in0 * sigmoid(in1) with in0 and in1 the same value is SiLU over one input.
        let mul = Expr::op(ElementwiseOp::Binary(BinaryOp::Mul), 2);
        let sig = Expr::op(ElementwiseOp::Unary(UnaryOp::Sigmoid), 1);
        let e = mul.substitute(1, &sig); // inputs: 0 = x, 1 = (gone), 2 = x again
        let (c, map) = e.canonical(&|i| if i == 2 { 0 } else { i });
        assert_eq!(map, vec![0]);
        assert_eq!(c.num_inputs(), 1);
        assert_eq!(c.to_string(), "(in0 * Sigmoid(in0))");
    }

    #[test]
    fn infer_broadcasts_and_keeps_scalars_out_of_the_shape() {
        let e = Expr {
            nodes: vec![
                ExprNode::Input(0),
                ExprNode::Scalar { value: 0.5, dtype: DType::F32 },
                bin(BinaryOp::Mul, 0, 1),
                ExprNode::Input(1),
                bin(BinaryOp::Add, 2, 3),
            ],
        };
        let ty = e.infer(&[TypeInfo::known(DType::F32, &[2, 3]), TypeInfo::known(DType::F32, &[3])]).unwrap();
        assert_eq!(ty, TypeInfo::known(DType::F32, &[2, 3]));
        assert!(Expr { nodes: vec![bin(BinaryOp::Add, 0, 1)] }.check().is_err());
    }
}
