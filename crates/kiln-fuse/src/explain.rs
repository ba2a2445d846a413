//! What a fusion run did, for `kiln build --explain`, and the fused graph for Graphviz.

use kiln_ir::{Graph, Op};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write};

/// What a fusion run did.
#[derive(Debug, Clone, Serialize)]
pub struct FuseReport {
    /// Nodes per op before.
    pub before: BTreeMap<String, usize>,
    /// Nodes per op after.
    pub after: BTreeMap<String, usize>,
    /// Nodes that launch GPU work, before.
    pub launching_before: usize,
    /// Nodes that launch GPU work, after.
    pub launching_after: usize,
    /// The cost model's estimate of the graph before, µs.
    pub estimate_before_us: f64,
    /// The cost model's estimate after, µs.
    pub estimate_after_us: f64,
    /// How many applications of each rule changed the e-graph, by rule name.
    pub rules_fired: Vec<(String, usize)>,
    /// Rule-application rounds run, over all phases.
    pub iterations: usize,
    /// E-nodes at the end of the largest phase.
    pub egraph_nodes: usize,
    /// E-classes at the end of the largest phase.
    pub egraph_classes: usize,
    /// Why each phase's saturation stopped: saturated, or which limit it hit.
    pub stop_reason: String,
    /// Time spent saturating, ms.
    pub saturate_ms: f64,
    /// Time of the whole run (conversion, saturation, extraction), ms.
    pub total_ms: f64,
    /// The GPU profile of the cost model.
    pub profile: String,
}

impl fmt::Display for FuseReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "fusion: {} -> {} nodes that launch work", self.launching_before, self.launching_after)?;
        writeln!(
            f,
            "estimate on {}: {:.1} us -> {:.1} us",
            self.profile, self.estimate_before_us, self.estimate_after_us
        )?;
        writeln!(
            f,
            "e-graph: {} nodes in {} classes after {} iterations; stopped: {}",
            self.egraph_nodes, self.egraph_classes, self.iterations, self.stop_reason
        )?;
        writeln!(f, "time: {:.1} ms saturating, {:.1} ms in all", self.saturate_ms, self.total_ms)?;
        writeln!(f, "rules fired:")?;
        if self.rules_fired.is_empty() {
            writeln!(f, "  (none)")?;
        }
        for (r, n) in &self.rules_fired {
            writeln!(f, "  {r:<28} {n}")?;
        }
        writeln!(f, "{:<28} {:>7} {:>7}", "op", "before", "after")?;
        let mut ops: Vec<&String> = self.before.keys().chain(self.after.keys()).collect();
        ops.sort();
        ops.dedup();
        for op in ops {
            let b = self.before.get(op).copied().unwrap_or(0);
            let a = self.after.get(op).copied().unwrap_or(0);
            writeln!(f, "{op:<28} {b:>7} {a:>7}")?;
        }
        Ok(())
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The graph in Graphviz's dot language: one box per node that computes (constants are left
/// out), labelled with its name and op; a fused node also lists the original nodes it covers
/// and its expression.
pub fn to_dot(g: &Graph) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "digraph \"{}\" {{", escape(&g.name));
    let _ = writeln!(s, "  node [shape=box, fontname=\"monospace\", fontsize=10];");
    let mut ids = HashMap::new();
    for (i, id) in g.node_ids().enumerate() {
        ids.insert(id, i);
        let n = g.node(id);
        if matches!(n.op, Op::Const(_)) {
            continue;
        }
        let mut label = format!("{}\\n{}", escape(&n.name), n.op.name());
        match &n.op {
            Op::Fused(kiln_ir::ops::FusedOp::Elementwise(e)) => label += &format!("\\n{}", escape(&e.to_string())),
            Op::Fused(kiln_ir::ops::FusedOp::Epilogue { expr, .. }) => {
                label += &format!("\\nepilogue: {}", escape(&expr.to_string()))
            }
            _ => {}
        }
        if !n.covers.is_empty() {
            label += &format!("\\ncovers: {}", escape(&n.covers.join(", ")));
        }
        let style = if n.covers.is_empty() { "" } else { ", style=filled, fillcolor=\"#ffe9b3\"" };
        let shape = if matches!(n.op, Op::Input) { ", shape=ellipse" } else { "" };
        let _ = writeln!(s, "  n{i} [label=\"{label}\"{style}{shape}];");
    }
    for id in g.node_ids() {
        for v in g.inputs_of(id).into_iter().flatten() {
            if matches!(g.node(v.node).op, Op::Const(_)) {
                continue;
            }
            let _ = writeln!(s, "  n{} -> n{};", ids[&v.node], ids[&id]);
        }
    }
    for (i, o) in g.outputs.iter().enumerate() {
        let _ = writeln!(s, "  out{i} [label=\"{}\", shape=ellipse];", escape(&o.name));
        let _ = writeln!(s, "  n{} -> out{i};", ids[&o.value.node]);
    }
    let _ = writeln!(s, "}}");
    s
}
