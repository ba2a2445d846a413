//! What an op importer sees of its node: attributes with typed getters, constant inputs,
//! the opset, and subgraph import for control flow.

use crate::proto::{attribute_proto::AttributeType, AttributeProto, NodeProto};
use crate::ImportError;
use kiln_ir::{DType, Graph, Tensor};

/// Imports one subgraph attribute; supplied by the graph importer.
pub(crate) type SubgraphFn<'a> = dyn Fn(&crate::proto::GraphProto) -> Result<Graph, ImportError> + 'a;

/// The view of one ONNX node that an op importer works from.
pub struct NodeCtx<'a> {
    pub(crate) node: &'a NodeProto,
    pub(crate) opset: i64,
    pub(crate) consts: Vec<Option<&'a Tensor>>,
    pub(crate) input_dtypes: Vec<Option<DType>>,
    pub(crate) subgraph: &'a SubgraphFn<'a>,
}

impl<'a> NodeCtx<'a> {
    /// The node's name.
    pub fn name(&self) -> &str {
        &self.node.name
    }

    /// The op type (`"Conv"`).
    pub fn op_type(&self) -> &str {
        &self.node.op_type
    }

    /// The opset version in force for the node's domain.
    pub fn opset(&self) -> i64 {
        self.opset
    }

    /// Number of input slots, absent optional ones included.
    pub fn num_inputs(&self) -> usize {
        self.node.input.len()
    }

    /// Number of outputs.
    pub fn num_outputs(&self) -> usize {
        self.node.output.len()
    }

    /// Whether input `i` is given (not absent, not the empty name).
    pub fn has_input(&self, i: usize) -> bool {
        self.node.input.get(i).is_some_and(|s| !s.is_empty())
    }

    /// Whether output `i` is requested.
    pub fn has_output(&self, i: usize) -> bool {
        self.node.output.get(i).is_some_and(|s| !s.is_empty())
    }

    /// The value of input `i` if it is an initializer or a constant.
    pub fn const_input(&self, i: usize) -> Option<&'a Tensor> {
        self.consts.get(i).copied().flatten()
    }

    /// The element type of input `i`, where known at import time.
    pub fn input_dtype(&self, i: usize) -> Option<DType> {
        self.input_dtypes.get(i).copied().flatten()
    }

    /// The raw attribute, if present.
    pub fn attr(&self, name: &str) -> Option<&'a AttributeProto> {
        self.node.attribute.iter().find(|a| a.name == name)
    }

    /// An error about attribute `attr`.
    pub fn attr_error(&self, attr: &str, msg: impl Into<String>) -> ImportError {
        ImportError::Attribute {
            node: self.node.name.clone(),
            op: self.node.op_type.clone(),
            attr: attr.into(),
            msg: msg.into(),
        }
    }

    /// An error about the node itself.
    pub fn error(&self, msg: impl Into<String>) -> ImportError {
        ImportError::Node { node: self.node.name.clone(), op: self.node.op_type.clone(), msg: msg.into() }
    }

    fn typed(&self, name: &str, want: AttributeType) -> Result<Option<&'a AttributeProto>, ImportError> {
        let Some(a) = self.attr(name) else { return Ok(None) };
        let ty = AttributeType::try_from(a.r#type).unwrap_or(AttributeType::Undefined);
        // Files from old exporters leave `type` unset; accept them when the payload fits.
        if ty == want || ty == AttributeType::Undefined {
            return Ok(Some(a));
        }
        Err(self.attr_error(name, format!("expected {}, found {}", want.as_str_name(), ty.as_str_name())))
    }

    /// An optional float attribute.
    pub fn get_f32(&self, name: &str) -> Result<Option<f32>, ImportError> {
        Ok(self.typed(name, AttributeType::Float)?.map(|a| a.f))
    }

    /// A float attribute with a default.
    pub fn f32_or(&self, name: &str, default: f32) -> Result<f32, ImportError> {
        Ok(self.get_f32(name)?.unwrap_or(default))
    }

    /// An optional integer attribute.
    pub fn get_i64(&self, name: &str) -> Result<Option<i64>, ImportError> {
        Ok(self.typed(name, AttributeType::Int)?.map(|a| a.i))
    }

    /// An integer attribute with a default.
    pub fn i64_or(&self, name: &str, default: i64) -> Result<i64, ImportError> {
        Ok(self.get_i64(name)?.unwrap_or(default))
    }

    /// A required integer attribute.
    pub fn req_i64(&self, name: &str) -> Result<i64, ImportError> {
        self.get_i64(name)?.ok_or_else(|| self.attr_error(name, "required attribute is missing"))
    }

    /// A 0/1 integer attribute as a bool, with a default.
    pub fn bool_or(&self, name: &str, default: bool) -> Result<bool, ImportError> {
        match self.get_i64(name)? {
            None => Ok(default),
            Some(0) => Ok(false),
            Some(1) => Ok(true),
            Some(v) => Err(self.attr_error(name, format!("expected 0 or 1, found {v}"))),
        }
    }

    /// An optional list of integers.
    pub fn get_ints(&self, name: &str) -> Result<Option<Vec<i64>>, ImportError> {
        Ok(self.typed(name, AttributeType::Ints)?.map(|a| a.ints.clone()))
    }

    /// An optional list of floats.
    pub fn get_floats(&self, name: &str) -> Result<Option<Vec<f32>>, ImportError> {
        Ok(self.typed(name, AttributeType::Floats)?.map(|a| a.floats.clone()))
    }

    /// An optional string attribute (must be UTF-8).
    pub fn get_string(&self, name: &str) -> Result<Option<String>, ImportError> {
        match self.typed(name, AttributeType::String)? {
            None => Ok(None),
            Some(a) => {
                String::from_utf8(a.s.clone()).map(Some).map_err(|_| self.attr_error(name, "string is not valid UTF-8"))
            }
        }
    }

    /// A string attribute with a default.
    pub fn string_or(&self, name: &str, default: &str) -> Result<String, ImportError> {
        Ok(self.get_string(name)?.unwrap_or_else(|| default.to_string()))
    }

    /// An optional list of strings.
    pub fn get_strings(&self, name: &str) -> Result<Option<Vec<String>>, ImportError> {
        match self.typed(name, AttributeType::Strings)? {
            None => Ok(None),
            Some(a) => a
                .strings
                .iter()
                .map(|s| String::from_utf8(s.clone()).map_err(|_| self.attr_error(name, "string is not valid UTF-8")))
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
        }
    }

    /// An optional tensor attribute, decoded.
    pub fn get_tensor(&self, name: &str) -> Result<Option<Tensor>, ImportError> {
        match self.typed(name, AttributeType::Tensor)? {
            None => Ok(None),
            Some(a) => match &a.t {
                Some(t) => crate::tensor::tensor_from_proto(t, None).map(Some),
                None => Err(self.attr_error(name, "tensor attribute holds no tensor")),
            },
        }
    }

    /// A data type attribute (an ONNX `TensorProto.DataType` code), such as Cast's `to`.
    pub fn get_dtype(&self, name: &str) -> Result<Option<DType>, ImportError> {
        match self.get_i64(name)? {
            None => Ok(None),
            Some(code) => crate::tensor::dtype_from_onnx(code as i32)
                .map(Some)
                .ok_or_else(|| self.attr_error(name, format!("data type {code} is not supported"))),
        }
    }

    /// Imports a graph attribute (a branch or loop body). Outer values the body reads become
    /// extra inputs of the node, which the body sees as graph inputs after its formal ones.
    pub fn get_graph(&self, name: &str) -> Result<Graph, ImportError> {
        let a = self
            .typed(name, AttributeType::Graph)?
            .ok_or_else(|| self.attr_error(name, "required attribute is missing"))?;
        let g = a.g.as_ref().ok_or_else(|| self.attr_error(name, "graph attribute holds no graph"))?;
        (self.subgraph)(g)
    }

    /// Fails when an attribute is present whose value Kiln does not implement.
    pub fn reject_attr(&self, name: &str, why: &str) -> Result<(), ImportError> {
        match self.attr(name) {
            Some(_) => Err(self.attr_error(name, why)),
            None => Ok(()),
        }
    }
}
