//! Errors of the CPU executor.

/// An op failed on its inputs: wrong type, shape or value. The executor adds the node.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct OpError(pub String);

impl OpError {
    /// An error with a message.
    pub fn new(msg: impl Into<String>) -> OpError {
        OpError(msg.into())
    }
}

impl From<kiln_ir::TensorError> for OpError {
    fn from(e: kiln_ir::TensorError) -> OpError {
        OpError(e.to_string())
    }
}

impl From<CpuError> for OpError {
    fn from(e: CpuError) -> OpError {
        OpError(e.to_string())
    }
}

/// Returns early with an [`OpError`] built from a format string.
#[macro_export]
macro_rules! bail {
    ($($t:tt)*) => { return Err($crate::OpError::new(format!($($t)*))) };
}

/// What can go wrong running a graph on the CPU.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CpuError {
    /// A node failed.
    #[error("node '{node}' ({op}): {msg}")]
    Node {
        /// The node name.
        node: String,
        /// The op name.
        op: String,
        /// What went wrong.
        msg: String,
    },
    /// The caller's inputs do not fit the graph.
    #[error("input '{name}': {msg}")]
    Input {
        /// The input name.
        name: String,
        /// What is wrong.
        msg: String,
    },
    /// The graph is malformed (a cycle, a missing value).
    #[error("graph: {0}")]
    Graph(String),
}

/// The result of evaluating one op.
pub type OpResult = Result<Vec<kiln_ir::Tensor>, OpError>;
