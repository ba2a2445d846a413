//! Errors of the ONNX importer.

/// One node that no importer exists for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsupportedOp {
    /// The op type.
    pub op: String,
    /// Its domain ("" is the default ONNX domain).
    pub domain: String,
    /// The opset version the model imports for that domain.
    pub opset: i64,
    /// The names of the nodes using it.
    pub nodes: Vec<String>,
}

/// What can go wrong when importing a model.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The bytes are not a valid ONNX protobuf message.
    #[error("malformed model: {0}")]
    Decode(String),
    /// An I/O error reading the model or its external data.
    #[error("cannot read {path}: {msg}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        msg: String,
    },
    /// The model uses ops that Kiln cannot import; every one of them is listed.
    #[error("unsupported ops: {}", fmt_unsupported(.0))]
    Unsupported(Vec<UnsupportedOp>),
    /// A node's attribute is missing, of the wrong type or has a value Kiln does not accept.
    #[error("node '{node}' ({op}): attribute '{attr}': {msg}")]
    Attribute {
        /// The node name.
        node: String,
        /// The op type.
        op: String,
        /// The attribute name.
        attr: String,
        /// What was expected.
        msg: String,
    },
    /// A node is malformed in another way (inputs, outputs).
    #[error("node '{node}' ({op}): {msg}")]
    Node {
        /// The node name.
        node: String,
        /// The op type.
        op: String,
        /// What is wrong.
        msg: String,
    },
    /// A tensor (initializer, constant, attribute) is malformed.
    #[error("tensor '{name}': {msg}")]
    Tensor {
        /// The tensor name.
        name: String,
        /// What is wrong.
        msg: String,
    },
    /// The graph's structure is wrong (undefined names, duplicate outputs, ...).
    #[error("graph '{graph}': {msg}")]
    Graph {
        /// The graph name.
        graph: String,
        /// What is wrong.
        msg: String,
    },
    /// The model exceeds one of the [`Limits`](crate::Limits) in its [`ImportOptions`](crate::ImportOptions).
    #[error("{limit} is {value}, over the limit of {max} (raise {how_to_raise} to accept it)")]
    Limit {
        /// What was measured, and where.
        limit: String,
        /// The measured value.
        value: u64,
        /// The limit it exceeds.
        max: u64,
        /// The option field that raises the limit.
        how_to_raise: String,
    },
    /// The imported graph fails verification.
    #[error(transparent)]
    Ir(#[from] kiln_ir::IrError),
}

fn fmt_unsupported(list: &[UnsupportedOp]) -> String {
    list.iter()
        .map(|u| {
            let domain = if u.domain.is_empty() { "ai.onnx" } else { &u.domain };
            format!("{} ({domain} opset {}) at {}", u.op, u.opset, u.nodes.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}
