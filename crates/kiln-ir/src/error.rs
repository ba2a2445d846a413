//! Errors of the IR crate.

/// What can go wrong when building, verifying or transforming a graph.
#[derive(Debug, thiserror::Error)]
pub enum IrError {
    /// The graph has a cycle through the named node.
    #[error("graph has a cycle through node '{node}'")]
    Cycle {
        /// A node on the cycle.
        node: String,
    },
    /// The graph breaks a structural rule.
    #[error("invalid graph at node '{node}' ({op}): {msg}")]
    Invalid {
        /// The node name.
        node: String,
        /// The op name.
        op: String,
        /// What is wrong.
        msg: String,
    },
    /// A type rule rejected a node's inputs.
    #[error("type inference failed at node '{node}' ({op}): {msg}")]
    Infer {
        /// The node name.
        node: String,
        /// The op name.
        op: String,
        /// What is wrong.
        msg: String,
    },
    /// Evaluating a node at build time failed.
    #[error("constant folding failed at node '{node}' ({op}): {msg}")]
    Fold {
        /// The node name.
        node: String,
        /// The op name.
        op: String,
        /// What is wrong.
        msg: String,
    },
    /// A pass left a graph that does not verify, or failed itself.
    #[error("pass '{pass}' failed: {source}")]
    Pass {
        /// The pass name.
        pass: &'static str,
        /// The underlying error.
        source: Box<IrError>,
    },
}
