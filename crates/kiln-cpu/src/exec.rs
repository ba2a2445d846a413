//! Runs a whole graph: nodes in topological order, each value freed after its last use.

use crate::ops::eval_op;
use crate::CpuError;
use crate::OpError;
use kiln_ir::{Data, Graph, Op, Tensor, Value};
use std::collections::HashMap;

/// Runs `graph` on tensor `inputs` (one per graph input, in order) and returns its outputs,
/// which must all be tensors.
pub fn run_graph(graph: &Graph, inputs: &[Tensor]) -> Result<Vec<Tensor>, CpuError> {
    let outs = run_graph_data(graph, inputs.iter().cloned().map(Data::Tensor).collect())?;
    outs.into_iter()
        .zip(&graph.outputs)
        .map(|(d, o)| match d {
            Data::Tensor(t) => Ok(t),
            d => Err(CpuError::Graph(format!("output '{}' is a {}, not a tensor", o.name, d.kind_name()))),
        })
        .collect()
}

/// Runs `graph` on runtime values (tensors, sequences, optionals) and returns its outputs.
pub fn run_graph_data(graph: &Graph, inputs: Vec<Data>) -> Result<Vec<Data>, CpuError> {
    run_graph_timed(graph, inputs, None)
}

/// Runs `graph` like [`run_graph_data`] and adds each node's wall time to `times`, by node.
pub fn run_graph_profiled(
    graph: &Graph,
    inputs: Vec<Data>,
    times: &mut HashMap<kiln_ir::NodeId, std::time::Duration>,
) -> Result<Vec<Data>, CpuError> {
    run_graph_timed(graph, inputs, Some(times))
}

fn run_graph_timed(
    graph: &Graph,
    inputs: Vec<Data>,
    mut times: Option<&mut HashMap<kiln_ir::NodeId, std::time::Duration>>,
) -> Result<Vec<Data>, CpuError> {
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
    let mut values: HashMap<Value, Data> = HashMap::new();
    for (&id, t) in graph.inputs.iter().zip(inputs) {
        values.insert(Value { node: id, slot: 0 }, t);
    }
    for id in order {
        let node = graph.node(id);
        // Constants are read in place, never copied into the value table.
        if matches!(node.op, Op::Input | Op::Const(_)) {
            continue;
        }
        let ins = graph.inputs_of(id);
        let outs = {
            let err = |msg: String| CpuError::Node { node: node.name.clone(), op: node.op.name().to_string(), msg };
            let mut args: Vec<Option<Arg<'_>>> = Vec::with_capacity(ins.len());
            for (i, v) in ins.iter().enumerate() {
                args.push(match v {
                    None => None,
                    Some(v) => match &graph.node(v.node).op {
                        Op::Const(t) => Some(Arg::Const(t)),
                        _ => Some(Arg::Value(values.get(v).ok_or_else(|| err(format!("input {i} has no value")))?)),
                    },
                });
            }
            let t0 = times.is_some().then(std::time::Instant::now);
            let outs = eval_args(&node.op, &args, node.outputs.len()).map_err(|e| err(e.0))?;
            if let (Some(times), Some(t0)) = (times.as_deref_mut(), t0) {
                *times.entry(id).or_default() += t0.elapsed();
            }
            outs
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
        .map(|o| match &graph.node(o.value.node).op {
            Op::Const(t) => Ok(Data::Tensor(t.clone())),
            _ => values
                .get(&o.value)
                .cloned()
                .ok_or_else(|| CpuError::Graph(format!("output '{}' was not computed", o.name))),
        })
        .collect()
}

/// An input of a node during a run: a constant borrowed from the graph, or a computed value.
enum Arg<'a> {
    Const(&'a Tensor),
    Value(&'a Data),
}

/// Evaluates a node on its arguments without copying tensors, except for the constant inputs
/// of the rare ops that take non-tensor values.
fn eval_args(op: &Op, args: &[Option<Arg<'_>>], num_outputs: usize) -> Result<Vec<Data>, OpError> {
    let takes_data = matches!(op, Op::Sequence(_) | Op::Control(_))
        || matches!(op, Op::Layout(l) if l.is_identity())
            && !matches!(args.first(), Some(Some(Arg::Const(_) | Arg::Value(Data::Tensor(_)))));
    if takes_data {
        let owned: Vec<Option<std::borrow::Cow<'_, Data>>> = args
            .iter()
            .map(|a| {
                a.as_ref().map(|a| match a {
                    Arg::Const(t) => std::borrow::Cow::Owned(Data::Tensor((*t).clone())),
                    Arg::Value(d) => std::borrow::Cow::Borrowed(*d),
                })
            })
            .collect();
        let refs: Vec<Option<&Data>> = owned.iter().map(|a| a.as_deref()).collect();
        return match op {
            Op::Sequence(s) => crate::ops::sequence::eval(s, &refs, num_outputs),
            Op::Control(c) => crate::ops::control::eval_data(c, &refs, num_outputs),
            // An identity of a sequence or optional passes it through.
            _ => Ok(vec![refs.first().copied().flatten().cloned().unwrap_or(Data::Empty)]),
        };
    }
    let mut tensors = Vec::with_capacity(args.len());
    for (i, a) in args.iter().enumerate() {
        tensors.push(match a {
            None | Some(Arg::Value(Data::Empty)) => None,
            Some(Arg::Const(t)) => Some(*t),
            Some(Arg::Value(Data::Tensor(t))) => Some(t),
            Some(Arg::Value(Data::Sequence(_))) => {
                return Err(OpError::new(format!("input {i} is a sequence; this op takes tensors")))
            }
        });
    }
    Ok(eval_op(op, &tensors, num_outputs)?.into_iter().map(Data::Tensor).collect())
}

/// Evaluates one node on runtime values. Sequence ops, control flow and identities take any
/// value; every other op takes tensors, with an empty optional read as an absent input.
pub fn eval_node(op: &Op, args: &[Option<&Data>], num_outputs: usize) -> Result<Vec<Data>, OpError> {
    let args: Vec<Option<Arg<'_>>> = args.iter().map(|a| a.map(Arg::Value)).collect();
    eval_args(op, &args, num_outputs)
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
