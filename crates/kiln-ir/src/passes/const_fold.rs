//! Constant folding: evaluates at build time every pure node whose inputs are all constant.

use super::{Pass, PassContext};
use crate::{Graph, IrError, Op, Tensor, TypeInfo, Value};

/// Replaces nodes whose inputs are all constants by constants holding their outputs.
pub struct ConstFold;

impl Pass for ConstFold {
    fn name(&self) -> &'static str {
        "const-fold"
    }

    fn run(&self, graph: &mut Graph, cx: &PassContext<'_>) -> Result<bool, IrError> {
        let Some(ev) = cx.evaluator else { return Ok(false) };
        let limit = if cx.max_folded_bytes == 0 { 64 << 20 } else { cx.max_folded_bytes };
        let mut changed = false;
        for id in graph.topo_order()? {
            let node = graph.node(id);
            if matches!(node.op, Op::Input | Op::Const(_)) || !node.op.is_pure() {
                continue;
            }
            let inputs = graph.inputs_of(id);
            let consts: Option<Vec<Option<&Tensor>>> = inputs
                .iter()
                .map(|v| match v {
                    None => Some(None),
                    Some(v) => match &graph.node(v.node).op {
                        Op::Const(t) => Some(Some(t)),
                        _ => None,
                    },
                })
                .collect();
            let Some(consts) = consts else { continue };
            let outs = ev.eval(&node.op, &consts, node.outputs.len()).map_err(|msg| IrError::Fold {
                node: node.name.clone(),
                op: node.op.name().into(),
                msg,
            })?;
            if outs.iter().map(Tensor::byte_size).sum::<usize>() > limit {
                continue;
            }
            let names: Vec<(String, TypeInfo)> = node.outputs.iter().map(|o| (o.name.clone(), o.ty.clone())).collect();
            let node_name = node.name.clone();
            // The node's value names move to the constants, so take them off the node first.
            for o in &mut graph.node_mut(id).outputs {
                o.name.clear();
            }
            for (slot, (t, (name, _))) in outs.into_iter().zip(names).enumerate() {
                let name = if name.is_empty() { format!("{node_name}#{slot}") } else { name };
                let c = graph.add_const(name, t);
                graph.replace_uses(Value { node: id, slot }, c);
            }
            graph.remove_node(id);
            changed = true;
        }
        Ok(changed)
    }
}
