//! Runs a whole graph: nodes in topological order, each value freed after its last use.

use crate::ops::eval_op;
use crate::CpuError;
use kiln_ir::{Graph, Op, Tensor, Value};
use std::collections::HashMap;

/// Runs `graph` on `inputs` (one per graph input, in order) and returns its outputs in order.
pub fn run_graph(graph: &Graph, inputs: &[Tensor]) -> Result<Vec<Tensor>, CpuError> {
    if inputs.len() != graph.inputs.len() {
        return Err(CpuError::Graph(format!(
            "graph '{}' takes {} inputs, {} given",
            graph.name,
            graph.inputs.len(),
            inputs.len()
        )));
    }
    let order = graph.topo_order().map_err(|e| CpuError::Graph(e.to_string()))?;
    // How many times each value is still to be read; graph outputs are read once more at the end.
    let mut remaining: HashMap<Value, usize> = HashMap::new();
    for &id in &order {
        for v in graph.inputs_of(id).into_iter().flatten() {
            *remaining.entry(v).or_insert(0) += 1;
        }
    }
    for o in &graph.outputs {
        *remaining.entry(o.value).or_insert(0) += 1;
    }
    let mut values: HashMap<Value, Tensor> = HashMap::new();
    for (&id, t) in graph.inputs.iter().zip(inputs) {
        values.insert(Value { node: id, slot: 0 }, t.clone());
    }
    for id in order {
        let node = graph.node(id);
        if matches!(node.op, Op::Input) {
            continue;
        }
        let ins = graph.inputs_of(id);
        let outs = {
            let args: Vec<Option<&Tensor>> = ins.iter().map(|v| v.and_then(|v| values.get(&v))).collect();
            if let Some(missing) = ins.iter().zip(&args).position(|(v, a)| v.is_some() && a.is_none()) {
                return Err(CpuError::Graph(format!("node '{}' input {missing} has no value", node.name)));
            }
            eval_op(&node.op, &args, node.outputs.len()).map_err(|e| CpuError::Node {
                node: node.name.clone(),
                op: node.op.name().to_string(),
                msg: e.0,
            })?
        };
        if outs.len() < node.outputs.len() {
            return Err(CpuError::Node {
                node: node.name.clone(),
                op: node.op.name().to_string(),
                msg: format!("produced {} outputs, {} expected", outs.len(), node.outputs.len()),
            });
        }
        for v in ins.into_iter().flatten() {
            if let Some(r) = remaining.get_mut(&v) {
                *r -= 1;
                if *r == 0 {
                    values.remove(&v);
                }
            }
        }
        for (slot, t) in outs.into_iter().enumerate().take(node.outputs.len()) {
            let v = Value { node: id, slot };
            if remaining.get(&v).copied().unwrap_or(0) > 0 {
                values.insert(v, t);
            }
        }
    }
    graph
        .outputs
        .iter()
        .map(|o| {
            values
                .get(&o.value)
                .cloned()
                .ok_or_else(|| CpuError::Graph(format!("output '{}' was not computed", o.name)))
        })
        .collect()
}

/// Runs `graph` with inputs given by name; every graph input must be named.
pub fn run_named(graph: &Graph, inputs: &HashMap<String, Tensor>) -> Result<Vec<Tensor>, CpuError> {
    let ordered = graph
        .inputs
        .iter()
        .map(|&id| {
            let name = &graph.node(id).outputs[0].name;
            inputs
                .get(name)
                .cloned()
                .ok_or_else(|| CpuError::Input { name: name.clone(), msg: "no value given".into() })
        })
        .collect::<Result<Vec<_>, _>>()?;
    run_graph(graph, &ordered)
}

/// The CPU executor as a constant-folding evaluator for the IR's passes.
pub struct CpuEvaluator;

impl kiln_ir::passes::Evaluator for CpuEvaluator {
    fn eval(&self, op: &Op, inputs: &[Option<&Tensor>], num_outputs: usize) -> Result<Vec<Tensor>, String> {
        eval_op(op, inputs, num_outputs).map_err(|e| e.0)
    }
}
