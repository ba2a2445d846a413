//! The e-class analysis: what is known of each class's value (types, constant value, the
//! original value names), and the tables that give e-node heads their ops and constants.

use crate::lang::{plain_op, Head, KNode};
use egg::{DidMerge, Id, Symbol};
use kiln_ir::ops::InferInput;
use kiln_ir::{Op, Tensor, TypeInfo};
use std::borrow::Cow;
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// The e-graph Kiln fuses in.
pub type EGraph = egg::EGraph<KNode, Fuse>;
/// A rewrite rule over it.
pub type Rewrite = egg::Rewrite<KNode, Fuse>;

/// What is known of an e-class's value.
#[derive(Debug, Clone, Default)]
pub struct Data {
    /// One type per output: one for a value, several for the tuple of a multi-output node,
    /// none for an absent input.
    pub tys: Vec<TypeInfo>,
    /// The value, when it is a constant.
    pub konst: Option<Arc<Tensor>>,
    /// Names the value had in the original graph (per output, for a tuple).
    pub names: Vec<String>,
    /// Whether the value must be stored whatever fusion does: a graph output, or read by an
    /// original node that is not pointwise (a convolution, a reduction, a view). Fusing such a
    /// value into a pointwise consumer only computes it twice, so the fusion rules leave it.
    pub materialized: bool,
}

impl Data {
    /// The type of a single-valued class (unknown when not known).
    pub fn ty(&self) -> TypeInfo {
        self.tys.first().cloned().unwrap_or_default()
    }

    /// The concrete shape, when every dim is known.
    pub fn shape(&self) -> Option<Vec<usize>> {
        self.tys.first().and_then(|t| t.concrete_shape())
    }

    /// The shape when every dim is known or named (a symbolic `batch` equals itself), so that
    /// two values can be told to have the same shape without knowing their sizes.
    pub fn static_dims(&self) -> Option<Vec<kiln_ir::Dim>> {
        let s = self.tys.first()?.shape.clone()?;
        s.iter().all(|d| !matches!(d, kiln_ir::Dim::Unknown)).then_some(s)
    }

    /// Whether the type is fully known up to named dims: an element type and [`Data::static_dims`].
    pub fn is_static(&self) -> bool {
        self.tys.first().is_some_and(|t| t.dtype.is_some()) && self.static_dims().is_some()
    }
}

/// The analysis, and the tables e-node heads index into.
#[derive(Debug, Default)]
pub struct Fuse {
    ops: Vec<(Op, usize)>,
    op_index: HashMap<String, u32>,
    consts: Vec<Arc<Tensor>>,
    const_index: HashMap<u64, Vec<u32>>,
    /// The graph inputs' types, by input position.
    pub input_types: Vec<TypeInfo>,
    /// Classes a rule made to compute several old values at once (a packed QKV projection),
    /// with those values' classes, so that the fused graph can say what such a node covers.
    pub provenance: Vec<(Id, Vec<Id>)>,
    /// Work appliers have done, so that expensive ones (new weights) run once per match
    /// rather than once per iteration.
    done: std::collections::HashSet<String>,
}

impl Fuse {
    /// The e-node for `op` with `num_outputs` outputs over `args`. Impure ops get a head of
    /// their own (`unique`), so that hash-consing never merges two random draws.
    pub fn node(&mut self, op: &Op, num_outputs: usize, args: Vec<Id>, unique: Option<usize>) -> KNode {
        let kind = Symbol::from(op.name());
        let key = format!("{op:?}");
        if unique.is_none() && num_outputs == 1 {
            if let Some(p) = plain_op(op.name()) {
                if format!("{p:?}") == key {
                    return KNode { kind, head: Head::Plain, args };
                }
            }
        }
        let key = match unique {
            Some(u) => format!("{key}#{num_outputs}#unique{u}"),
            None => format!("{key}#{num_outputs}"),
        };
        let next = self.ops.len() as u32;
        let i = *self.op_index.entry(key).or_insert(next);
        if i == next {
            self.ops.push((op.clone(), num_outputs));
        }
        KNode { kind, head: Head::Op(i), args }
    }

    /// The e-node for a constant; equal constants share one entry.
    pub fn konst(&mut self, t: Tensor) -> KNode {
        // A digest of a sample of the elements; equal digests are compared in full.
        let mut h = DefaultHasher::new();
        format!("{:?}{:?}", t.dtype(), t.shape()).hash(&mut h);
        let step = (t.len() / 256).max(1);
        kiln_ir::dispatch!(t.data(), v => for x in v.iter().step_by(step) {
            format!("{x:?}").hash(&mut h);
        });
        let digest = h.finish();
        let bucket = self.const_index.entry(digest).or_default();
        let found = bucket.iter().copied().find(|&i| *self.consts[i as usize] == t);
        let i = match found {
            Some(i) => i,
            None => {
                self.consts.push(Arc::new(t));
                let i = (self.consts.len() - 1) as u32;
                bucket.push(i);
                i
            }
        };
        KNode::leaf("Const", Head::Const(i))
    }

    /// The op of an e-node, with its number of outputs; `None` for leaves and projections.
    pub fn op_of(&self, n: &KNode) -> Option<(Cow<'_, Op>, usize)> {
        match n.head {
            Head::Plain => plain_op(n.kind.as_str()).map(|o| (Cow::Owned(o), 1)),
            Head::Op(i) => self.ops.get(i as usize).map(|(o, k)| (Cow::Borrowed(o), *k)),
            _ => None,
        }
    }

    /// The constant of a `Const` e-node.
    pub fn const_of(&self, n: &KNode) -> Option<&Arc<Tensor>> {
        match n.head {
            Head::Const(i) => self.consts.get(i as usize),
            _ => None,
        }
    }

    /// Whether this is the first time an applier sees `key` (and remembers it).
    pub fn first_time(&mut self, key: String) -> bool {
        self.done.insert(key)
    }
}

impl egg::Analysis<KNode> for Fuse {
    type Data = Data;

    fn make(egraph: &mut EGraph, n: &KNode, _id: Id) -> Data {
        let a = &egraph.analysis;
        match n.head {
            Head::Input(i) => {
                Data { tys: vec![a.input_types.get(i as usize).cloned().unwrap_or_default()], ..Data::default() }
            }
            Head::Const(_) => {
                let t = a.const_of(n).cloned();
                let tys = t.as_ref().map(|t| vec![TypeInfo::known(t.dtype(), t.shape())]).unwrap_or_default();
                Data { tys, konst: t, ..Data::default() }
            }
            Head::Absent | Head::Any => Data::default(),
            Head::Proj(i) => {
                let ty = egraph[n.args[0]].data.tys.get(i as usize).cloned().unwrap_or_default();
                Data { tys: vec![ty], ..Data::default() }
            }
            Head::Plain | Head::Op(_) => {
                let Some((op, num_outputs)) = a.op_of(n) else { return Data::default() };
                let tys: Vec<Option<(TypeInfo, Option<Arc<Tensor>>)>> = n
                    .args
                    .iter()
                    .map(|&c| {
                        let d = &egraph[c].data;
                        d.tys.first().map(|t| (t.clone(), d.konst.clone()))
                    })
                    .collect();
                let ins: Vec<Option<InferInput<'_>>> =
                    tys.iter().map(|x| x.as_ref().map(|(ty, v)| InferInput { ty, value: v.as_deref() })).collect();
                let tys = op.infer(&ins, num_outputs).unwrap_or_else(|_| vec![TypeInfo::unknown(); num_outputs]);
                Data { tys, ..Data::default() }
            }
        }
    }

    fn merge(&mut self, to: &mut Data, from: Data) -> DidMerge {
        let mut changed = false;
        if to.tys.is_empty() && !from.tys.is_empty() {
            to.tys = from.tys.clone();
            changed = true;
        } else {
            for (t, f) in to.tys.iter_mut().zip(&from.tys) {
                if let Some(m) = t.merge(f) {
                    if m != *t {
                        *t = m;
                        changed = true;
                    }
                }
            }
        }
        if to.konst.is_none() && from.konst.is_some() {
            to.konst = from.konst.clone();
            changed = true;
        }
        for n in &from.names {
            if !to.names.contains(n) {
                to.names.push(n.clone());
                changed = true;
            }
        }
        if from.materialized && !to.materialized {
            to.materialized = true;
            changed = true;
        }
        let from_behind = (to.materialized && !from.materialized)
            || from.tys.len() < to.tys.len()
            || (from.konst.is_none() && to.konst.is_some())
            || from.names.len() < to.names.len();
        DidMerge(changed, from_behind)
    }
}
