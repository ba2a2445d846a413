//! From the IR to the e-graph and back.
//!
//! Going in, every node becomes an e-node (multi-output nodes a tuple with one `Proj` per
//! output) and every class remembers the names its values had. Coming out, the chosen e-nodes
//! become IR nodes again; a node made by a rule is named after the original nodes it covers,
//! which are found by walking the original graph from the class down to the fused node's
//! inputs.

use crate::analysis::{EGraph, Fuse};
use crate::lang::{Head, KNode};
use crate::FuseError;
use egg::Id;
use kiln_ir::{Graph, NodeId, Op, TypeInfo, Value, ValueInfo, ValueKind};
use std::collections::{HashMap, HashSet};

/// A graph in e-graph form, with the map back to the original.
pub struct Lowered {
    /// The e-graph.
    pub egraph: EGraph,
    /// The class of each graph output, in order.
    pub outputs: Vec<Id>,
    /// The class of each original value.
    pub value_class: HashMap<Value, Id>,
    /// The class of each original node: its value's, or its tuple's when it has several outputs.
    pub node_class: HashMap<NodeId, Id>,
}

/// Puts a graph into a fresh e-graph.
pub fn to_egraph(g: &Graph) -> Result<Lowered, FuseError> {
    let order = g.topo_order().map_err(|e| FuseError::Graph(e.to_string()))?;
    let mut analysis = Fuse::default();
    analysis.input_types = g.inputs.iter().map(|&i| g.node(i).outputs[0].ty.clone()).collect();
    let mut egraph = EGraph::new(analysis);
    let mut value_class: HashMap<Value, Id> = HashMap::new();
    let mut node_class: HashMap<NodeId, Id> = HashMap::new();
    let input_pos: HashMap<NodeId, usize> = g.inputs.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    for id in order {
        let node = g.node(id);
        let enode = match &node.op {
            Op::Input => match input_pos.get(&id) {
                Some(&i) => KNode::leaf("Input", Head::Input(i as u32)),
                None => return Err(FuseError::Graph(format!("input node '{}' is not a graph input", node.name))),
            },
            Op::Const(t) => egraph.analysis.konst(t.clone()),
            op => {
                let mut args = Vec::with_capacity(node.num_inputs);
                for v in g.inputs_of(id) {
                    args.push(match v {
                        Some(v) => *value_class.get(&v).ok_or_else(|| {
                            FuseError::Graph(format!("node '{}' reads a value not yet made", node.name))
                        })?,
                        None => egraph.add(KNode::leaf("Absent", Head::Absent)),
                    });
                }
                let unique = if op.is_pure() { None } else { Some(id.index()) };
                egraph.analysis.node(op, node.outputs.len(), args, unique)
            }
        };
        let class = egraph.add(enode);
        node_class.insert(id, class);
        let mut record = |egraph: &mut EGraph, class: Id, slot: usize| {
            let info = &node.outputs[slot];
            let d = &mut egraph[class].data;
            if d.tys.is_empty() {
                d.tys.push(info.ty.clone());
            } else if let Some(m) = d.tys[0].merge(&info.ty) {
                d.tys[0] = m;
            }
            if !info.name.is_empty() && !d.names.contains(&info.name) {
                d.names.push(info.name.clone());
            }
            value_class.insert(Value { node: id, slot }, class);
        };
        if node.outputs.len() == 1 {
            record(&mut egraph, class, 0);
        } else {
            egraph[class].data.names = node.outputs.iter().map(|o| o.name.clone()).collect();
            egraph[class].data.tys = node.outputs.iter().map(|o| o.ty.clone()).collect();
            for slot in 0..node.outputs.len() {
                let p = egraph.add(KNode {
                    kind: egg::Symbol::from("Proj"),
                    head: Head::Proj(slot as u32),
                    args: vec![class],
                });
                record(&mut egraph, p, slot);
            }
        }
    }
    let outputs: Vec<Id> = g.outputs.iter().map(|o| value_class[&o.value]).collect();
    for &o in &outputs {
        egraph[o].data.materialized = true;
    }
    for id in g.node_ids() {
        // Pointwise readers (fused ones too, when fusion runs again on a fused graph) leave a
        // value free to fuse; so does QuantizeLinear, which the elementwise family can treat
        // as pointwise (`quantize_form`).
        if matches!(
            g.node(id).op,
            Op::Elementwise(_)
                | Op::Quant(kiln_ir::ops::QuantOp::QuantizeLinear { .. })
                | Op::Fused(kiln_ir::ops::FusedOp::Elementwise(_))
        ) {
            continue;
        }
        // So does a MaxPool that only QuantizeLinear reads: the qdq family moves the quantize
        // in front of it (`qdq-maxpool`), where it may fuse into the producer.
        if quantized_max_pool(g, id) {
            continue;
        }
        // An epilogue reads its inputs past the base op's pointwise too (`epilogue-input`).
        let skip = match &g.node(id).op {
            Op::Fused(kiln_ir::ops::FusedOp::Epilogue { base_inputs, .. }) => *base_inputs,
            _ => usize::MAX,
        };
        for v in g.inputs_of(id).into_iter().take(skip).flatten() {
            // A DequantizeLinear that a convolution or product reads is gone once the qdq
            // family makes the reader an integer op over the 8-bit input; left free, it can
            // fold into a pointwise reader too (a residual sum reading the block input).
            let matrix = matches!(
                g.node(id).op,
                Op::Linalg(
                    kiln_ir::ops::LinalgOp::Conv(_)
                        | kiln_ir::ops::LinalgOp::MatMul
                        | kiln_ir::ops::LinalgOp::Gemm { .. }
                )
            );
            if matrix && matches!(g.node(v.node).op, Op::Quant(kiln_ir::ops::QuantOp::DequantizeLinear { .. })) {
                continue;
            }
            egraph[value_class[&v]].data.materialized = true;
        }
    }
    egraph.rebuild();
    Ok(Lowered { egraph, outputs, value_class, node_class })
}

/// Whether `id` is a MaxPool without Indices whose output only QuantizeLinear reads.
fn quantized_max_pool(g: &Graph, id: NodeId) -> bool {
    let node = g.node(id);
    if !matches!(node.op, Op::Pool(kiln_ir::ops::pool::PoolOp::MaxPool { .. })) || node.outputs.len() != 1 {
        return false;
    }
    let out = Value { node: id, slot: 0 };
    let users = g.users(out);
    !users.is_empty()
        && !g.is_output(out)
        && users.iter().all(|&(u, _)| matches!(g.node(u).op, Op::Quant(kiln_ir::ops::QuantOp::QuantizeLinear { .. })))
}

/// Builds the IR graph of the chosen e-nodes.
pub fn to_graph(
    original: &Graph,
    lowered: &Lowered,
    egraph: &EGraph,
    choice: &HashMap<Id, KNode>,
) -> Result<Graph, FuseError> {
    let mut b = Builder::new(original, lowered, egraph, choice);
    let mut g = Graph::new(original.name.clone());
    for &i in &original.inputs {
        let n = original.node(i);
        let v = g.add_input(n.name.clone(), n.outputs[0].ty.clone());
        g.node_mut(v.node).outputs[0] = n.outputs[0].clone();
        b.input_values.push(v);
        b.used_names.insert(n.outputs[0].name.clone());
    }
    for (o, &class) in original.outputs.iter().zip(&lowered.outputs) {
        let v = b.emit(&mut g, egraph.find(class))?;
        match v {
            Some(v) => g.add_output(o.name.clone(), v),
            None => return Err(FuseError::Graph(format!("graph output '{}' has no value", o.name))),
        }
    }
    Ok(g)
}

struct Builder<'a> {
    original: &'a Graph,
    egraph: &'a EGraph,
    choice: &'a HashMap<Id, KNode>,
    input_values: Vec<Value>,
    /// What each class became: a value, or nothing for an absent input; tuples map to the
    /// node with slot 0.
    done: HashMap<Id, Option<Value>>,
    used_names: HashSet<String>,
    /// The original nodes whose value (or tuple) lies in each class.
    class_nodes: HashMap<Id, Vec<NodeId>>,
    value_class: HashMap<Value, Id>,
    /// Classes that compute several old values at once, with those values' classes.
    packs: HashMap<Id, Vec<Id>>,
    fresh: usize,
}

impl<'a> Builder<'a> {
    fn new(original: &'a Graph, lowered: &'a Lowered, egraph: &'a EGraph, choice: &'a HashMap<Id, KNode>) -> Self {
        let mut class_nodes: HashMap<Id, Vec<NodeId>> = HashMap::new();
        let value_class = lowered.value_class.iter().map(|(v, &c)| (*v, egraph.find(c))).collect();
        for (&n, &c) in &lowered.node_class {
            if !matches!(original.node(n).op, Op::Input | Op::Const(_)) {
                class_nodes.entry(egraph.find(c)).or_default().push(n);
            }
        }
        // A class that packs several old values covers the nodes that computed them.
        let mut packs: HashMap<Id, Vec<Id>> = HashMap::new();
        for (new, olds) in &egraph.analysis.provenance {
            let new = egraph.find(*new);
            for &o in olds {
                let o = egraph.find(o);
                packs.entry(new).or_default().push(o);
                let nodes = class_nodes.get(&o).cloned().unwrap_or_default();
                class_nodes.entry(new).or_default().extend(nodes);
            }
        }
        for e in class_nodes.values_mut() {
            e.sort();
            e.dedup();
        }
        Builder {
            original,
            egraph,
            choice,
            input_values: vec![],
            done: HashMap::new(),
            used_names: HashSet::new(),
            class_nodes,
            value_class,
            packs,
            fresh: 0,
        }
    }

    fn fresh_name(&mut self, wanted: Option<&String>) -> String {
        if let Some(w) = wanted {
            if self.used_names.insert(w.clone()) {
                return w.clone();
            }
        }
        loop {
            let base = wanted.map_or("fused", |w| w.as_str());
            self.fresh += 1;
            let n = format!("{base}__{}", self.fresh);
            if self.used_names.insert(n.clone()) {
                return n;
            }
        }
    }

    /// The original nodes a chosen node computes: from the original nodes of its class down
    /// the original graph, stopping at values the node reads.
    fn covers(&self, class: Id, node: &KNode) -> Vec<String> {
        let mut stop: HashSet<Id> = node.args.iter().map(|&a| self.egraph.find(a)).collect();
        let packed: Vec<Id> = stop.iter().filter_map(|c| self.packs.get(c)).flatten().copied().collect();
        stop.extend(packed);
        let mut seen: HashSet<NodeId> = HashSet::new();
        let mut stack: Vec<NodeId> = self.class_nodes.get(&class).cloned().unwrap_or_default();
        let mut out = vec![];
        while let Some(n) = stack.pop() {
            if !seen.insert(n) || seen.len() > 4096 {
                continue;
            }
            out.push(n);
            for v in self.original.inputs_of(n).into_iter().flatten() {
                let producer = self.original.node(v.node);
                if matches!(producer.op, Op::Input | Op::Const(_)) {
                    continue;
                }
                if self.value_class.get(&v).is_some_and(|c| stop.contains(c)) {
                    continue;
                }
                stack.push(v.node);
            }
        }
        out.sort();
        // A node that was itself fused stands for what it covers.
        let mut names = vec![];
        for n in out {
            let node = self.original.node(n);
            if node.covers.is_empty() {
                names.push(node.name.clone());
            } else {
                names.extend(node.covers.iter().cloned());
            }
        }
        names
    }

    /// Emits the class's chosen node (and everything it reads) without recursion.
    fn emit(&mut self, g: &mut Graph, root: Id) -> Result<Option<Value>, FuseError> {
        let mut stack: Vec<(Id, bool)> = vec![(root, false)];
        let mut on_stack: HashSet<Id> = HashSet::new();
        while let Some((c, expanded)) = stack.pop() {
            if self.done.contains_key(&c) {
                continue;
            }
            let node = self
                .choice
                .get(&c)
                .ok_or_else(|| FuseError::Graph(format!("extraction chose nothing for class {c}")))?
                .clone();
            if !expanded {
                if !on_stack.insert(c) {
                    return Err(FuseError::Graph("extraction chose a cyclic graph".into()));
                }
                stack.push((c, true));
                for &a in node.args.iter().rev() {
                    let a = self.egraph.find(a);
                    if !self.done.contains_key(&a) {
                        stack.push((a, false));
                    }
                }
                continue;
            }
            on_stack.remove(&c);
            let v = self.build(g, c, &node)?;
            self.done.insert(c, v);
        }
        Ok(self.done.get(&root).copied().flatten())
    }

    fn build(&mut self, g: &mut Graph, c: Id, node: &KNode) -> Result<Option<Value>, FuseError> {
        let data = &self.egraph[c].data;
        match node.head {
            Head::Input(i) => Ok(self.input_values.get(i as usize).copied()),
            Head::Absent => Ok(None),
            Head::Const(_) => {
                let t = self
                    .egraph
                    .analysis
                    .const_of(node)
                    .ok_or_else(|| FuseError::Graph("constant missing from the table".into()))?;
                let name = self.fresh_name(data.names.first());
                Ok(Some(g.add_const(name, t.as_ref().clone())))
            }
            Head::Proj(i) => {
                let tuple = self.egraph.find(node.args[0]);
                let v = self.done.get(&tuple).copied().flatten();
                Ok(v.map(|v| Value { node: v.node, slot: i as usize }))
            }
            Head::Any => Err(FuseError::Graph(format!("a rule built a pattern-only {} node", node.kind))),
            Head::Plain | Head::Op(_) => {
                let (op, num_outputs) = self
                    .egraph
                    .analysis
                    .op_of(node)
                    .ok_or_else(|| FuseError::Graph("op missing from the table".into()))?;
                let op = op.into_owned();
                let inputs: Vec<Option<Value>> =
                    node.args.iter().map(|&a| self.done.get(&self.egraph.find(a)).copied().flatten()).collect();
                let originals = self.class_nodes.get(&c).cloned().unwrap_or_default();
                // An original node of the class with this very op keeps its name; anything
                // else is a node a rule made, named after what it covers.
                let same = originals.iter().find(|&&n| {
                    let o = self.original.node(n);
                    o.op.name() == op.name() && format!("{:?}", o.op) == format!("{op:?}")
                });
                let kinds: Vec<ValueKind> = match same {
                    Some(&n) => self.original.node(n).outputs.iter().map(|o| o.kind).collect(),
                    None => vec![],
                };
                let (name, covers) = match same {
                    Some(&n) => (self.original.node(n).name.clone(), self.original.node(n).covers.clone()),
                    None => {
                        let covers = self.covers(c, node);
                        let name = covers.last().cloned().unwrap_or_else(|| format!("{}_fused", op.name()));
                        (name, covers)
                    }
                };
                let outputs: Vec<ValueInfo> = (0..num_outputs)
                    .map(|i| {
                        let wanted = if num_outputs == 1 { data.names.first() } else { data.names.get(i) };
                        let name = match wanted {
                            Some(w) if w.is_empty() => String::new(),
                            w => self.fresh_name(w),
                        };
                        let ty = data.tys.get(i).cloned().unwrap_or_else(TypeInfo::unknown);
                        let kind = kinds.get(i).copied().unwrap_or(ValueKind::Tensor);
                        ValueInfo { name, ty, kind }
                    })
                    .collect();
                let id = g.add_node(name, op, &inputs, outputs);
                g.node_mut(id).covers = covers;
                Ok(Some(Value { node: id, slot: 0 }))
            }
        }
    }
}
