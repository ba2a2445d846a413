//! A stable, human-readable text form of a graph, for snapshots and `--dump`.

use crate::ops::FusedOp;
use crate::{dispatch, Graph, Op};
use std::fmt::Write;

impl Graph {
    /// The graph as text, one node per line in topological order. Stable across runs, so it
    /// can be snapshotted with `insta`.
    pub fn dump(&self) -> String {
        let mut s = String::new();
        self.dump_into(&mut s, 0);
        s
    }

    fn dump_into(&self, s: &mut String, indent: usize) {
        let pad = "  ".repeat(indent);
        let _ = writeln!(s, "{pad}graph {} {{", self.name);
        let order = match self.topo_order() {
            Ok(o) => o,
            Err(e) => {
                let _ = writeln!(s, "{pad}  <{e}>");
                return;
            }
        };
        let value_name = |v: crate::Value| {
            let n = &self.node(v.node).outputs[v.slot].name;
            if n.is_empty() {
                format!("%{}#{}", self.node(v.node).name, v.slot)
            } else {
                format!("%{n}")
            }
        };
        for id in order {
            let node = self.node(id);
            let outs: Vec<String> = node
                .outputs
                .iter()
                .enumerate()
                .map(|(i, o)| format!("{}: {}", value_name(crate::Value { node: id, slot: i }), o.ty))
                .collect();
            let ins: Vec<String> =
                self.inputs_of(id).into_iter().map(|v| v.map_or_else(|| "_".to_string(), value_name)).collect();
            let body = match &node.op {
                Op::Input => "Input".to_string(),
                Op::Const(t) if t.len() <= 8 => {
                    let vals: Vec<String> = dispatch!(t.data(), v => v.iter().map(|x| format!("{x:?}")).collect());
                    format!("Const [{}]", vals.join(", "))
                }
                Op::Const(_) => "Const".to_string(),
                Op::Elementwise(o) => format!("{o:?}"),
                Op::Quant(o) => format!("{o:?}"),
                Op::Linalg(o) => format!("{o:?}"),
                Op::Pool(o) => format!("{o:?}"),
                Op::Norm(o) => format!("{o:?}"),
                Op::Reduce(o) => format!("{o:?}"),
                Op::Layout(o) => format!("{o:?}"),
                Op::Rnn(o) => format!("{o:?}"),
                Op::Spatial(o) => format!("{o:?}"),
                Op::Sequence(_) => node.op.name().to_string(),
                Op::Signal(o) => format!("{o:?}"),
                Op::Loss(o) => format!("{o:?}"),
                Op::Attention(o) => format!("{o:?}"),
                Op::Control(_) => node.op.name().to_string(),
                Op::Fused(FusedOp::Elementwise(e)) => format!("FusedElementwise[{e}]"),
                Op::Fused(FusedOp::Epilogue { base, expr, .. }) => format!("{base:?}+[{expr}]"),
                Op::Fused(o) => format!("{o:?}"),
            };
            let args = if ins.is_empty() { String::new() } else { format!("({})", ins.join(", ")) };
            let _ = writeln!(s, "{pad}  {} = {body}{args}  # {}", outs.join(", "), node.name);
            for sub in node.op.subgraphs() {
                sub.dump_into(s, indent + 2);
            }
        }
        for o in &self.outputs {
            let _ = writeln!(s, "{pad}  output {} = {}", o.name, value_name(o.value));
        }
        let _ = writeln!(s, "{pad}}}");
    }

    /// How many nodes of each op the graph has (subgraphs included), sorted by op name.
    pub fn op_counts(&self) -> std::collections::BTreeMap<&'static str, usize> {
        let mut m = std::collections::BTreeMap::new();
        for id in self.node_ids() {
            let op = &self.node(id).op;
            *m.entry(op.name()).or_insert(0) += 1;
            for sub in op.subgraphs() {
                for (k, v) in sub.op_counts() {
                    *m.entry(k).or_insert(0) += v;
                }
            }
        }
        m
    }
}
