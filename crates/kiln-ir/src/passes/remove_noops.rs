//! Removes nodes that pass their input through unchanged.

use super::{Pass, PassContext};
use crate::{Graph, IrError, Op, Value};

/// Bypasses identity-like nodes: readers of the output read the input instead.
pub struct RemoveNoops;

/// If output 0 of `op` always equals input `k`, returns `k`.
fn passthrough(graph: &Graph, id: crate::NodeId) -> Option<usize> {
    let node = graph.node(id);
    let inputs = graph.inputs_of(id);
    let in_ty = |i: usize| inputs.get(i).copied().flatten().map(|v| graph.value_info(v).ty.clone());
    let out_ty = &node.outputs.first()?.ty;
    match &node.op {
        Op::Layout(l) if l.is_identity() => Some(0),
        Op::Elementwise(e) if e.is_noop_cast() => {
            let t = in_ty(0)?;
            (t.dtype.is_some() && t.dtype == out_ty.dtype).then_some(0)
        }
        Op::Layout(l) if l.is_reshape_like() => {
            let t = in_ty(0)?;
            let s = t.concrete_shape()?;
            (Some(s) == out_ty.concrete_shape()).then_some(0)
        }
        _ => None,
    }
}

impl Pass for RemoveNoops {
    fn name(&self) -> &'static str {
        "remove-noops"
    }

    fn run(&self, graph: &mut Graph, _cx: &PassContext<'_>) -> Result<bool, IrError> {
        let mut changed = false;
        for id in graph.topo_order()? {
            let Some(k) = passthrough(graph, id) else { continue };
            // Only output 0 may be used: other outputs (a Dropout mask) would be lost.
            let n_out = graph.node(id).outputs.len();
            let others_used = (1..n_out).any(|s| {
                let v = Value { node: id, slot: s };
                !graph.users(v).is_empty() || graph.is_output(v)
            });
            let Some(src) = graph.inputs_of(id)[k] else { continue };
            if others_used {
                continue;
            }
            let out = Value { node: id, slot: 0 };
            // A graph input passed straight to a graph output keeps its node, so the
            // output stays a distinct value.
            if graph.is_output(out) && matches!(graph.node(src.node).op, Op::Input) {
                continue;
            }
            graph.replace_uses(out, src);
            graph.remove_node(id);
            changed = true;
        }
        Ok(changed)
    }
}
