//! The dataflow graph: nodes are ops, edges carry values from an output slot to an input slot.

use crate::{IrError, Op, Tensor, TypeInfo, ValueKind};
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::{EdgeRef, IntoEdgeReferences};
use petgraph::Direction;

/// Identifies a node of a [`Graph`]. Stays valid while other nodes are removed.
pub type NodeId = NodeIndex;

/// One output of one node: the unit of dataflow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Value {
    /// The producing node.
    pub node: NodeId,
    /// Which of its outputs.
    pub slot: usize,
}

/// The edge weight: which output of the source feeds which input of the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edge {
    /// Output slot of the source node.
    pub src_slot: usize,
    /// Input slot of the target node.
    pub dst_slot: usize,
}

/// The name and static type of a node output.
#[derive(Clone, Debug, PartialEq)]
pub struct ValueInfo {
    /// The value's name (the ONNX tensor name); empty for an unused optional output.
    pub name: String,
    /// What is known of its type (of the element tensors, for sequences and optionals).
    pub ty: TypeInfo,
    /// Tensor, sequence or optional.
    pub kind: ValueKind,
}

impl ValueInfo {
    /// A named tensor value of unknown type.
    pub fn named(name: impl Into<String>) -> ValueInfo {
        ValueInfo { name: name.into(), ty: TypeInfo::unknown(), kind: ValueKind::Tensor }
    }

    /// A named tensor value of the given type.
    pub fn tensor(name: impl Into<String>, ty: TypeInfo) -> ValueInfo {
        ValueInfo { name: name.into(), ty, kind: ValueKind::Tensor }
    }
}

/// A node: an op applied to inputs, producing outputs.
#[derive(Clone, Debug)]
pub struct Node {
    /// The node's name (from the model, or made up when it had none).
    pub name: String,
    /// What it computes.
    pub op: Op,
    /// How many input slots it has, including absent optional ones.
    pub num_inputs: usize,
    /// Its outputs.
    pub outputs: Vec<ValueInfo>,
    /// For a node made by fusion, the names of the original nodes it computes; empty otherwise.
    pub covers: Vec<String>,
}

/// A named graph output.
#[derive(Clone, Debug, PartialEq)]
pub struct GraphOutput {
    /// The output's name.
    pub name: String,
    /// The value it exposes.
    pub value: Value,
}

/// A computation graph. Graph inputs are [`Op::Input`] nodes, constants are [`Op::Const`] nodes.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    /// The graph's name.
    pub name: String,
    g: StableDiGraph<Node, Edge>,
    /// The input nodes, in signature order.
    pub inputs: Vec<NodeId>,
    /// The outputs, in signature order.
    pub outputs: Vec<GraphOutput>,
}

impl Graph {
    /// An empty graph.
    pub fn new(name: impl Into<String>) -> Graph {
        Graph { name: name.into(), ..Graph::default() }
    }

    /// Adds a graph input.
    pub fn add_input(&mut self, name: impl Into<String>, ty: TypeInfo) -> Value {
        let name = name.into();
        let id = self.g.add_node(Node {
            name: name.clone(),
            op: Op::Input,
            num_inputs: 0,
            outputs: vec![ValueInfo::tensor(name, ty)],
            covers: vec![],
        });
        self.inputs.push(id);
        Value { node: id, slot: 0 }
    }

    /// Adds a constant.
    pub fn add_const(&mut self, name: impl Into<String>, t: Tensor) -> Value {
        let name = name.into();
        let ty = TypeInfo::known(t.dtype(), t.shape());
        let id = self.g.add_node(Node {
            name: name.clone(),
            op: Op::Const(t),
            num_inputs: 0,
            outputs: vec![ValueInfo::tensor(name, ty)],
            covers: vec![],
        });
        Value { node: id, slot: 0 }
    }

    /// Adds a node with the given inputs (`None` for an absent optional input).
    pub fn add_node(
        &mut self,
        name: impl Into<String>,
        op: Op,
        inputs: &[Option<Value>],
        outputs: Vec<ValueInfo>,
    ) -> NodeId {
        let id = self.g.add_node(Node { name: name.into(), op, num_inputs: inputs.len(), outputs, covers: vec![] });
        for (dst_slot, v) in inputs.iter().enumerate() {
            if let Some(v) = v {
                self.g.add_edge(v.node, id, Edge { src_slot: v.slot, dst_slot });
            }
        }
        id
    }

    /// Adds a graph output.
    pub fn add_output(&mut self, name: impl Into<String>, value: Value) {
        self.outputs.push(GraphOutput { name: name.into(), value });
    }

    /// The node with this id. Panics on a removed id, which is a caller bug.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.g[id]
    }

    /// The node with this id, mutably.
    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.g[id]
    }

    /// Whether the id names a live node.
    pub fn contains(&self, id: NodeId) -> bool {
        self.g.contains_node(id)
    }

    /// The info of a value.
    pub fn value_info(&self, v: Value) -> &ValueInfo {
        &self.g[v.node].outputs[v.slot]
    }

    /// Every live node id, in insertion order.
    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.g.node_indices()
    }

    /// The number of live nodes, inputs and constants included.
    pub fn node_count(&self) -> usize {
        self.g.node_count()
    }

    /// The inputs of a node by slot; `None` where an optional input is absent.
    pub fn inputs_of(&self, id: NodeId) -> Vec<Option<Value>> {
        let mut out = vec![None; self.g[id].num_inputs];
        for e in self.g.edges_directed(id, Direction::Incoming) {
            let w = e.weight();
            if let Some(slot) = out.get_mut(w.dst_slot) {
                *slot = Some(Value { node: e.source(), slot: w.src_slot });
            }
        }
        out
    }

    /// Every (node, input slot) that reads `v`, sorted.
    pub fn users(&self, v: Value) -> Vec<(NodeId, usize)> {
        let mut out: Vec<(NodeId, usize)> = self
            .g
            .edges_directed(v.node, Direction::Outgoing)
            .filter(|e| e.weight().src_slot == v.slot)
            .map(|e| (e.target(), e.weight().dst_slot))
            .collect();
        out.sort();
        out
    }

    /// Whether `v` is a graph output.
    pub fn is_output(&self, v: Value) -> bool {
        self.outputs.iter().any(|o| o.value == v)
    }

    /// Makes input `slot` of `node` read `v` (or nothing).
    pub fn set_input(&mut self, node: NodeId, slot: usize, v: Option<Value>) {
        let old: Vec<_> = self
            .g
            .edges_directed(node, Direction::Incoming)
            .filter(|e| e.weight().dst_slot == slot)
            .map(|e| e.id())
            .collect();
        for e in old {
            self.g.remove_edge(e);
        }
        if let Some(v) = v {
            self.g.add_edge(v.node, node, Edge { src_slot: v.slot, dst_slot: slot });
        }
        let n = &mut self.g[node];
        n.num_inputs = n.num_inputs.max(slot + 1);
    }

    /// Redirects every reader of `old`, graph outputs included, to `new`.
    pub fn replace_uses(&mut self, old: Value, new: Value) {
        for (node, slot) in self.users(old) {
            self.set_input(node, slot, Some(new));
        }
        for o in &mut self.outputs {
            if o.value == old {
                o.value = new;
            }
        }
    }

    /// Removes a node and its edges. Readers of its outputs lose those inputs.
    pub fn remove_node(&mut self, id: NodeId) -> Option<Node> {
        self.inputs.retain(|&i| i != id);
        self.g.remove_node(id)
    }

    /// The nodes in an order where every node comes after its inputs (ties by id, so stable).
    pub fn topo_order(&self) -> Result<Vec<NodeId>, IrError> {
        let mut indeg: std::collections::HashMap<NodeId, usize> = self.g.node_indices().map(|n| (n, 0)).collect();
        for e in self.g.edge_references() {
            *indeg.get_mut(&e.target()).expect("edge target is a live node") += 1;
        }
        let mut ready: std::collections::BTreeSet<NodeId> =
            indeg.iter().filter(|(_, &d)| d == 0).map(|(&n, _)| n).collect();
        let mut order = Vec::with_capacity(indeg.len());
        while let Some(n) = ready.pop_first() {
            order.push(n);
            for e in self.g.edges_directed(n, Direction::Outgoing) {
                let d = indeg.get_mut(&e.target()).expect("edge target is a live node");
                *d -= 1;
                if *d == 0 {
                    ready.insert(e.target());
                }
            }
        }
        if order.len() != indeg.len() {
            let stuck = indeg
                .iter()
                .filter(|(n, _)| !order.contains(n))
                .map(|(&n, _)| self.g[n].name.clone())
                .min()
                .unwrap_or_default();
            return Err(IrError::Cycle { node: stuck });
        }
        Ok(order)
    }

    /// The underlying petgraph graph, for analyses.
    pub fn petgraph(&self) -> &StableDiGraph<Node, Edge> {
        &self.g
    }

    /// Finds the value with the given name.
    pub fn find_value(&self, name: &str) -> Option<Value> {
        self.g
            .node_indices()
            .find_map(|n| self.g[n].outputs.iter().position(|o| o.name == name).map(|slot| Value { node: n, slot }))
    }
}
