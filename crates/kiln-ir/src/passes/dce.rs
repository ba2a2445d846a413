//! Dead-code elimination: removes nodes that no graph output depends on.

use super::{Pass, PassContext};
use crate::{Graph, IrError, Op};
use petgraph::Direction;

/// Removes every node from which no graph output is reachable. Graph inputs stay.
pub struct DeadCodeElimination;

impl Pass for DeadCodeElimination {
    fn name(&self) -> &'static str {
        "dce"
    }

    fn run(&self, graph: &mut Graph, _cx: &PassContext<'_>) -> Result<bool, IrError> {
        let mut live = std::collections::HashSet::new();
        let mut stack: Vec<_> = graph.outputs.iter().map(|o| o.value.node).collect();
        while let Some(n) = stack.pop() {
            if live.insert(n) {
                stack.extend(graph.petgraph().neighbors_directed(n, Direction::Incoming));
            }
        }
        let dead: Vec<_> =
            graph.node_ids().filter(|n| !live.contains(n) && !matches!(graph.node(*n).op, Op::Input)).collect();
        for &n in &dead {
            graph.remove_node(n);
        }
        Ok(!dead.is_empty())
    }
}
