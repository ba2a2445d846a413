//! The rewrite rules, one file per family, and the helpers their guards and appliers share.
//!
//! [`all`] is the registry: an explicit, ordered list of the families. Each family file is a
//! `pub fn rules() -> Vec<Rewrite>` of `rw!` lines; a line whose right-hand side needs
//! attributes or computed constants names an applier defined below the rules in that file.
//! Guards are pure functions of the e-graph.

pub mod attention;
pub mod cleanup;
pub mod conv_bn;
pub mod elementwise;
pub mod gemm_epilogue;
pub mod norm;
pub mod pool;
pub mod qdq;

use crate::analysis::{EGraph, Rewrite};
use crate::lang::KNode;
use egg::{Id, Subst, Var};
use kiln_ir::ops::InferInput;
use kiln_ir::{Op, Tensor, TypeInfo};
use std::sync::Arc;

/// Every rule, family by family.
pub fn all() -> Vec<Rewrite> {
    families().into_iter().flat_map(|(_, rules)| rules()).collect()
}

/// The families by name, for `--rules` style selection and reports.
pub fn families() -> Vec<(&'static str, fn() -> Vec<Rewrite>)> {
    vec![
        ("cleanup", cleanup::rules as fn() -> Vec<Rewrite>),
        ("conv_bn", conv_bn::rules),
        ("elementwise", elementwise::rules),
        ("gemm_epilogue", gemm_epilogue::rules),
        ("norm", norm::rules),
        ("attention", attention::rules),
        ("qdq", qdq::rules),
        ("pool", pool::rules),
    ]
}

/// A pattern variable.
pub(crate) fn var(name: &str) -> Var {
    name.parse().expect("pattern variable names start with '?'")
}

/// The class bound to `name`.
pub(crate) fn bound(subst: &Subst, name: &str) -> Id {
    subst[var(name)]
}

/// The constant value of a class.
pub(crate) fn konst(eg: &EGraph, id: Id) -> Option<Arc<Tensor>> {
    eg[id].data.konst.clone()
}

/// The type of a single-valued class.
pub(crate) fn ty(eg: &EGraph, id: Id) -> TypeInfo {
    eg[id].data.ty()
}

/// The concrete shape of a class's value.
pub(crate) fn shape(eg: &EGraph, id: Id) -> Option<Vec<usize>> {
    eg[id].data.shape()
}

/// Whether a class is a constant whose every element equals `v`.
pub(crate) fn is_const_all(eg: &EGraph, id: Id, v: f64) -> bool {
    konst(eg, id).is_some_and(|t| !t.is_empty() && t.dtype().is_float() && t.to_f64_vec().iter().all(|&x| x == v))
}

/// The value of a one-element float constant.
pub(crate) fn scalar(eg: &EGraph, id: Id) -> Option<f64> {
    konst(eg, id).filter(|t| t.len() == 1 && t.dtype().is_float()).map(|t| t.to_f64_vec()[0])
}

/// Whether two classes have the same type, known up to named dims.
pub(crate) fn same_type(eg: &EGraph, a: Id, b: Id) -> bool {
    eg[a].data.is_static() && ty(eg, a) == ty(eg, b)
}

/// The op of an e-node, cloned.
pub(crate) fn op_of(eg: &EGraph, n: &KNode) -> Option<Op> {
    eg.analysis.op_of(n).map(|(o, _)| o.into_owned())
}

/// The nodes of a class with their ops, for appliers that look inside classes.
pub(crate) fn nodes_with_ops(eg: &EGraph, id: Id) -> Vec<(KNode, Op)> {
    eg[id].nodes.iter().filter_map(|n| op_of(eg, n).map(|o| (n.clone(), o))).collect()
}

/// The type a new node would have, from its children's data.
pub(crate) fn infer_node(eg: &EGraph, op: &Op, args: &[Id]) -> Option<TypeInfo> {
    let datas: Vec<_> = args.iter().map(|&a| &eg[a].data).collect();
    let ins: Vec<Option<InferInput<'_>>> =
        datas.iter().map(|d| d.tys.first().map(|t| InferInput { ty: t, value: d.konst.as_deref() })).collect();
    op.infer(&ins, 1).ok().map(|mut v| v.remove(0))
}

/// Adds `op(args)` and merges it into `class` when its inferred type equals the class's (the
/// guard every structural rewrite shares). Returns the classes that changed.
pub(crate) fn add_equal(eg: &mut EGraph, class: Id, op: &Op, args: Vec<Id>) -> Vec<Id> {
    let Some(t) = infer_node(eg, op, &args) else { return vec![] };
    let want = ty(eg, class);
    if !eg[class].data.is_static() || t != want {
        return vec![];
    }
    let n = eg.analysis.node(op, 1, args, None);
    let id = eg.add(n);
    if eg.union(class, id) {
        vec![class]
    } else {
        vec![]
    }
}

/// Adds a constant and returns its class.
pub(crate) fn add_const(eg: &mut EGraph, t: Tensor) -> Id {
    let n = eg.analysis.konst(t);
    eg.add(n)
}
