//! Shape and type inference: fills in each value's static type from its op's type rule.

use super::{Pass, PassContext};
use crate::ops::InferInput;
use crate::{Graph, IrError, Op};

/// Runs every node's type rule in topological order and merges the result with what the
/// model declared. A contradiction is an error naming the node.
pub struct InferTypes;

impl Pass for InferTypes {
    fn name(&self) -> &'static str {
        "infer-types"
    }

    fn run(&self, graph: &mut Graph, _cx: &PassContext<'_>) -> Result<bool, IrError> {
        let mut changed = false;
        for id in graph.topo_order()? {
            let node = graph.node(id);
            if matches!(node.op, Op::Input) {
                continue;
            }
            let inferred = infer_node(graph, id)?;
            let err = |msg: String| IrError::Infer { node: node.name.clone(), op: node.op.name().into(), msg };
            let merged: Vec<_> = node
                .outputs
                .iter()
                .zip(&inferred)
                .map(|(o, t)| {
                    o.ty.merge(t)
                        .ok_or_else(|| err(format!("value '{}' is declared {} but inferred {}", o.name, o.ty, t)))
                })
                .collect::<Result<_, _>>()?;
            let node = graph.node_mut(id);
            for (o, t) in node.outputs.iter_mut().zip(merged) {
                if o.ty != t {
                    o.ty = t;
                    changed = true;
                }
            }
        }
        Ok(changed)
    }
}

/// The output types of node `id` by its op's type rule, from its inputs' current types (and
/// values, where constant).
pub(crate) fn infer_node(graph: &Graph, id: crate::NodeId) -> Result<Vec<crate::TypeInfo>, IrError> {
    let node = graph.node(id);
    let inputs = graph.inputs_of(id);
    let tys: Vec<Option<InferInput<'_>>> = inputs
        .iter()
        .map(|v| {
            v.map(|v| InferInput {
                ty: &graph.value_info(v).ty,
                value: match &graph.node(v.node).op {
                    Op::Const(t) => Some(t),
                    _ => None,
                },
            })
        })
        .collect();
    node.op.infer(&tys, node.outputs.len()).map_err(|msg| IrError::Infer {
        node: node.name.clone(),
        op: node.op.name().into(),
        msg,
    })
}
