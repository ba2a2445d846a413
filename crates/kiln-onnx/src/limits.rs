//! Limits on what a model may ask of the importer, and the census that enforces them before
//! any graph is built or any weight is allocated.
//!
//! Model files come from strangers, so every quantity that costs memory or stack is bounded,
//! and each bound names the option that raises it.

use crate::proto::{tensor_shape_proto::dimension, type_proto, GraphProto, TensorProto, ValueInfoProto};
use crate::tensor::dtype_from_onnx;
use crate::ImportError;

/// Bounds on a model's size and shape. Every field is checked before the work it bounds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Nodes in the model, counted across the main graph and every subgraph.
    pub max_nodes: u64,
    /// How deep subgraphs (If branches, Loop and Scan bodies) may nest; the main graph is
    /// depth 0.
    pub max_depth: u64,
    /// The rank of any declared shape or tensor. Real models stay far below 32; ONNX's own
    /// tests reach rank 8 and a few exporters emit rank 9 to 12 reshapes.
    pub max_rank: u64,
    /// Bytes of all initializers and tensor attributes together, wherever they are stored.
    pub max_weight_bytes: u64,
    /// Bytes of the model file read into memory (external data is bounded by
    /// `max_weight_bytes` instead).
    pub max_file_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_nodes: 1_000_000,
            max_depth: 64,
            max_rank: 32,
            max_weight_bytes: 16 << 30,
            // Protobuf cannot encode a message over 2 GiB, so no valid file is larger.
            max_file_bytes: 2 << 30,
        }
    }
}

/// Checks one quantity against its limit.
pub(crate) fn check(limit: impl Into<String>, value: u64, max: u64, how_to_raise: &str) -> Result<(), ImportError> {
    if value > max {
        return Err(ImportError::Limit {
            limit: limit.into(),
            value,
            max,
            how_to_raise: format!("ImportOptions::limits.{how_to_raise}"),
        });
    }
    Ok(())
}

/// Walks a whole model once, before import, counting what the limits bound. Recursion into a
/// subgraph happens only after its depth has been checked, so the walk's own stack is bounded.
pub(crate) struct Census<'a> {
    limits: &'a Limits,
    nodes: u64,
    weight_bytes: u64,
    /// Oddities that are accepted but worth telling the user.
    pub(crate) warnings: Vec<String>,
}

impl<'a> Census<'a> {
    pub(crate) fn new(limits: &'a Limits) -> Self {
        Census { limits, nodes: 0, weight_bytes: 0, warnings: vec![] }
    }

    pub(crate) fn graph(&mut self, g: &GraphProto, depth: u64) -> Result<(), ImportError> {
        let l = self.limits;
        self.nodes += g.node.len() as u64;
        check("graph node count", self.nodes, l.max_nodes, "max_nodes")?;
        for t in &g.initializer {
            self.tensor(t)?;
        }
        for v in g.input.iter().chain(&g.output).chain(&g.value_info) {
            self.declared(v)?;
        }
        for n in &g.node {
            for a in &n.attribute {
                for t in a.t.iter().chain(&a.tensors) {
                    self.tensor(t)?;
                }
                for sub in a.g.iter().chain(&a.graphs) {
                    let label = if n.name.is_empty() { &n.op_type } else { &n.name };
                    check(format!("subgraph nesting depth below node '{label}'"), depth + 1, l.max_depth, "max_depth")?;
                    self.graph(sub, depth + 1)?;
                }
            }
        }
        Ok(())
    }

    /// Counts a tensor's declared bytes. Shapes that are invalid in themselves (negative or
    /// overflowing dims, unknown types) are left to the tensor decoder, which names the fault.
    fn tensor(&mut self, t: &TensorProto) -> Result<(), ImportError> {
        check(format!("rank of tensor '{}'", t.name), t.dims.len() as u64, self.limits.max_rank, "max_rank")?;
        let Some(dtype) = dtype_from_onnx(t.data_type) else { return Ok(()) };
        let bytes = t.dims.iter().try_fold(dtype.size() as u64, |acc, &d| acc.checked_mul(u64::try_from(d).ok()?));
        if let Some(bytes) = bytes {
            self.weight_bytes = self.weight_bytes.saturating_add(bytes);
            check("total weight bytes", self.weight_bytes, self.limits.max_weight_bytes, "max_weight_bytes")?;
        }
        Ok(())
    }

    /// Checks a declared value type. A negative dim is not a size; exporters have written -1
    /// for "dynamic", so it is read as unknown, with a warning.
    fn declared(&mut self, v: &ValueInfoProto) -> Result<(), ImportError> {
        let Some(type_proto::Value::TensorType(t)) = v.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
            return Ok(());
        };
        let Some(shape) = &t.shape else { return Ok(()) };
        check(format!("rank of value '{}'", v.name), shape.dim.len() as u64, self.limits.max_rank, "max_rank")?;
        for (axis, d) in shape.dim.iter().enumerate() {
            if let Some(dimension::Value::DimValue(x)) = d.value {
                if x < 0 {
                    self.warnings
                        .push(format!("value '{}' declares dimension {x} at axis {axis}, read as unknown", v.name));
                }
            }
        }
        Ok(())
    }
}
