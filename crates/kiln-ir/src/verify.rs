//! Structural verification: the invariants every pass must preserve.

use crate::{Graph, IrError, Op};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use std::collections::HashSet;

impl Graph {
    /// Checks the graph's invariants: acyclic; every edge within its nodes' slot counts; one
    /// producer per input slot; inputs are exactly the `Input` nodes; outputs name live values;
    /// constants match their declared types; value names unique; subgraphs valid.
    pub fn verify(&self) -> Result<(), IrError> {
        self.topo_order()?;
        let g = self.petgraph();
        let invalid = |node: &crate::Node, msg: String| IrError::Invalid {
            node: node.name.clone(),
            op: node.op.name().to_string(),
            msg,
        };
        let mut names = HashSet::new();
        for id in g.node_indices() {
            let node = &g[id];
            let mut seen = HashSet::new();
            for e in g.edges_directed(id, Direction::Incoming) {
                let w = e.weight();
                if w.dst_slot >= node.num_inputs {
                    return Err(invalid(node, format!("edge into slot {} of {} inputs", w.dst_slot, node.num_inputs)));
                }
                if !seen.insert(w.dst_slot) {
                    return Err(invalid(node, format!("input slot {} has two producers", w.dst_slot)));
                }
                let src = &g[e.source()];
                if w.src_slot >= src.outputs.len() {
                    return Err(invalid(
                        node,
                        format!("reads output {} of '{}', which has {}", w.src_slot, src.name, src.outputs.len()),
                    ));
                }
            }
            match &node.op {
                Op::Input => {
                    if !self.inputs.contains(&id) {
                        return Err(invalid(node, "input node missing from the graph's input list".into()));
                    }
                }
                Op::Const(t) => {
                    let ty = &node.outputs[0].ty;
                    if ty.dtype.is_some_and(|d| d != t.dtype()) || ty.concrete_shape().is_some_and(|s| s != t.shape()) {
                        return Err(invalid(node, format!("declared {} but holds {}{:?}", ty, t.dtype(), t.shape())));
                    }
                }
                op => {
                    for sub in op.subgraphs() {
                        sub.verify()?;
                    }
                }
            }
            for o in &node.outputs {
                if !o.name.is_empty() && !names.insert(o.name.as_str()) {
                    return Err(invalid(node, format!("value name '{}' is defined twice", o.name)));
                }
            }
        }
        for &i in &self.inputs {
            if !self.contains(i) || !matches!(self.node(i).op, Op::Input) {
                return Err(IrError::Invalid {
                    node: self.name.clone(),
                    op: "Graph".into(),
                    msg: "graph input list names a non-input node".into(),
                });
            }
        }
        for o in &self.outputs {
            if !self.contains(o.value.node) || o.value.slot >= self.node(o.value.node).outputs.len() {
                return Err(IrError::Invalid {
                    node: self.name.clone(),
                    op: "Graph".into(),
                    msg: format!("output '{}' names no value", o.name),
                });
            }
        }
        Ok(())
    }
}
