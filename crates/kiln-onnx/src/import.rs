//! Turning a decoded `ModelProto` into a verified IR graph.

use crate::ctx::NodeCtx;
use crate::limits::Census;
use crate::ops::Registry;
use crate::proto::{type_proto, GraphProto, ModelProto, NodeProto, TypeProto};
use crate::tensor::{dtype_from_onnx, onnx_dtype_name, tensor_from_proto};
use crate::{ImportError, Limits, UnsupportedOp};
use kiln_ir::{DType, Dim, Graph, Op, Tensor, TensorData, TypeInfo, Value, ValueInfo, ValueKind};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

/// The newest opset of the default ONNX domain that Kiln implements.
pub const MAX_OPSET: i64 = 24;

/// How to import a model.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// The model's directory, where external data is looked up. Without it, external data is
    /// refused.
    pub base_dir: Option<PathBuf>,
    /// Bounds on the model's size and shape.
    pub limits: Limits,
}

/// An imported model: the verified graph plus the model's metadata.
#[derive(Clone, Debug)]
pub struct Model {
    /// The main graph.
    pub graph: Graph,
    /// Opset versions by domain (`""` is the default ONNX domain).
    pub opsets: BTreeMap<String, i64>,
    /// The ONNX IR version of the file.
    pub ir_version: i64,
    /// Who wrote the file (`pytorch 2.11`).
    pub producer: String,
    /// Oddities the model was accepted with, one line each: weights holding NaN or infinity,
    /// negative declared dims.
    pub warnings: Vec<String>,
}

/// Imports a decoded model.
pub fn import_model(model: &ModelProto, opts: &ImportOptions) -> Result<Model, ImportError> {
    let mut opsets = BTreeMap::new();
    for o in &model.opset_import {
        let domain = if o.domain == "ai.onnx" { String::new() } else { o.domain.clone() };
        opsets.insert(domain, o.version);
    }
    if model.ir_version >= 3 && opsets.is_empty() {
        return Err(ImportError::Graph { graph: "model".into(), msg: "model imports no opset".into() });
    }
    // IR version 1 and 2 files predate opset_import and use opset 1.
    opsets.entry(String::new()).or_insert(1);
    if let Some(&v) = opsets.get("") {
        if v > MAX_OPSET {
            return Err(ImportError::Graph {
                graph: "model".into(),
                msg: format!("opset {v} of the default domain is newer than the newest Kiln supports ({MAX_OPSET})"),
            });
        }
    }
    let gp = model
        .graph
        .as_ref()
        .ok_or_else(|| ImportError::Graph { graph: "model".into(), msg: "model has no graph".into() })?;
    // Before anything else recurses into the model or allocates for it.
    let mut census = Census::new(&opts.limits);
    census.graph(gp, 0)?;
    let reg = crate::ops::registry();
    let mut unsupported: BTreeMap<(String, String), UnsupportedOp> = BTreeMap::new();
    collect_unsupported(gp, &reg, &opsets, &mut unsupported);
    if !unsupported.is_empty() {
        return Err(ImportError::Unsupported(unsupported.into_values().collect()));
    }
    let cx = Importer { reg: &reg, opsets: &opsets, opts, warnings: RefCell::new(census.warnings) };
    let graph = cx.import_graph(gp, &[])?;
    graph.verify()?;
    let warnings = cx.warnings.into_inner();
    Ok(Model {
        graph,
        opsets,
        ir_version: model.ir_version,
        producer: format!("{} {}", model.producer_name, model.producer_version).trim().to_string(),
        warnings,
    })
}

fn collect_unsupported(
    g: &GraphProto,
    reg: &Registry,
    opsets: &BTreeMap<String, i64>,
    out: &mut BTreeMap<(String, String), UnsupportedOp>,
) {
    for n in &g.node {
        let domain = if n.domain == "ai.onnx" { "" } else { n.domain.as_str() };
        if reg.get(domain, &n.op_type).is_none() {
            let e = out.entry((domain.to_string(), n.op_type.clone())).or_insert_with(|| UnsupportedOp {
                op: n.op_type.clone(),
                domain: domain.to_string(),
                opset: opsets.get(domain).copied().unwrap_or(0),
                nodes: vec![],
            });
            e.nodes.push(node_label(n));
        }
        for a in &n.attribute {
            for sub in a.g.iter().chain(&a.graphs) {
                collect_unsupported(sub, reg, opsets, out);
            }
        }
    }
}

fn node_label(n: &NodeProto) -> String {
    if !n.name.is_empty() {
        n.name.clone()
    } else {
        format!("<{} -> {}>", n.op_type, n.output.first().map(String::as_str).unwrap_or(""))
    }
}

/// Names a graph reads but does not define: the outer values a subgraph captures.
fn free_names(g: &GraphProto) -> BTreeSet<String> {
    let mut defined: BTreeSet<&str> = g.input.iter().map(|i| i.name.as_str()).collect();
    defined.extend(g.initializer.iter().map(|t| t.name.as_str()));
    let mut used = BTreeSet::new();
    for n in &g.node {
        used.extend(n.input.iter().filter(|s| !s.is_empty()).cloned());
        for a in &n.attribute {
            for sub in a.g.iter().chain(&a.graphs) {
                used.extend(free_names(sub));
            }
        }
        defined.extend(n.output.iter().map(String::as_str));
    }
    used.extend(g.output.iter().map(|o| o.name.clone()));
    used.into_iter().filter(|u| !defined.contains(u.as_str())).collect()
}

/// Converts an ONNX value type: tensors, sequences of tensors and optionals of either.
/// Maps, sparse tensors and nested sequences are refused.
pub(crate) fn value_type(name: &str, tp: Option<&TypeProto>) -> Result<(TypeInfo, ValueKind), String> {
    let Some(tp) = tp else { return Ok((TypeInfo::unknown(), ValueKind::Tensor)) };
    let tensor_of = |inner: Option<&TypeProto>| -> Result<TypeInfo, String> {
        match inner.and_then(|t| t.value.as_ref()) {
            None => Ok(TypeInfo::unknown()),
            Some(type_proto::Value::TensorType(_)) => type_info(name, inner),
            Some(_) => Err(format!("value '{name}' nests a non-tensor type, which is not supported")),
        }
    };
    match &tp.value {
        Some(type_proto::Value::SequenceType(s)) => Ok((tensor_of(s.elem_type.as_deref())?, ValueKind::Sequence)),
        Some(type_proto::Value::OptionalType(o)) => {
            let inner = o.elem_type.as_deref();
            match inner.and_then(|t| t.value.as_ref()) {
                Some(type_proto::Value::SequenceType(s)) => {
                    Ok((tensor_of(s.elem_type.as_deref())?, ValueKind::OptionalSequence))
                }
                _ => Ok((tensor_of(inner)?, ValueKind::OptionalTensor)),
            }
        }
        _ => Ok((type_info(name, Some(tp))?, ValueKind::Tensor)),
    }
}

/// Converts an ONNX tensor type; any other type is refused.
pub(crate) fn type_info(name: &str, tp: Option<&TypeProto>) -> Result<TypeInfo, String> {
    let Some(tp) = tp else { return Ok(TypeInfo::unknown()) };
    match &tp.value {
        None => Ok(TypeInfo::unknown()),
        Some(type_proto::Value::TensorType(t)) => {
            let dtype = match t.elem_type {
                0 => None,
                code => Some(dtype_from_onnx(code).ok_or_else(|| {
                    format!("value '{name}' has element type {}, which is not supported", onnx_dtype_name(code))
                })?),
            };
            let shape = t.shape.as_ref().map(|s| {
                s.dim
                    .iter()
                    .map(|d| match &d.value {
                        Some(crate::proto::tensor_shape_proto::dimension::Value::DimValue(v)) if *v >= 0 => {
                            Dim::Known(*v as usize)
                        }
                        Some(crate::proto::tensor_shape_proto::dimension::Value::DimParam(p)) if !p.is_empty() => {
                            Dim::Sym(p.clone())
                        }
                        _ => Dim::Unknown,
                    })
                    .collect()
            });
            Ok(TypeInfo { dtype, shape })
        }
        Some(type_proto::Value::SequenceType(_)) => {
            Err(format!("value '{name}' is a sequence, which is not supported"))
        }
        Some(type_proto::Value::MapType(_)) => Err(format!("value '{name}' is a map, which is not supported")),
        Some(type_proto::Value::OptionalType(_)) => {
            Err(format!("value '{name}' is an optional, which is not supported"))
        }
        Some(type_proto::Value::SparseTensorType(_)) => {
            Err(format!("value '{name}' is a sparse tensor, which is not supported"))
        }
    }
}

struct Importer<'a> {
    reg: &'a Registry,
    opsets: &'a BTreeMap<String, i64>,
    opts: &'a ImportOptions,
    warnings: RefCell<Vec<String>>,
}

impl Importer<'_> {
    /// Notes a weight holding NaN or infinity: legal, and sometimes deliberate (masks), but
    /// more often the sign of a broken export.
    fn check_finite(&self, what: &str, t: &Tensor) {
        let n = non_finite(t);
        if n > 0 {
            self.warnings.borrow_mut().push(format!("{what} holds {n} NaN or infinite values of {}", t.len()));
        }
    }

    /// Imports a graph. `captures` are outer names the graph reads; they become graph inputs
    /// after the formal ones.
    fn import_graph(&self, gp: &GraphProto, captures: &[String]) -> Result<Graph, ImportError> {
        let gname = if gp.name.is_empty() { "main".to_string() } else { gp.name.clone() };
        let gerr = |msg: String| ImportError::Graph { graph: gname.clone(), msg };
        if gp.output.is_empty() {
            // A graph that computes nothing cannot be run, and an empty main graph is the
            // most common shape of a file that is not a model at all.
            return Err(gerr("graph has no outputs".into()));
        }
        let mut g = Graph::new(gname.clone());
        let mut scope: HashMap<String, Value> = HashMap::new();
        let declared: HashMap<&str, &TypeProto> = gp
            .value_info
            .iter()
            .chain(&gp.output)
            .filter_map(|v| v.r#type.as_ref().map(|t| (v.name.as_str(), t)))
            .collect();

        let mut init_names = BTreeSet::new();
        for t in &gp.initializer {
            if t.name.is_empty() {
                return Err(gerr("an initializer has no name".into()));
            }
            if !init_names.insert(t.name.as_str()) {
                return Err(gerr(format!("initializer '{}' is defined twice", t.name)));
            }
            let tensor = tensor_from_proto(t, self.opts.base_dir.as_deref())?;
            self.check_finite(&format!("initializer '{}'", t.name), &tensor);
            let v = g.add_const(t.name.clone(), tensor);
            scope.insert(t.name.clone(), v);
        }
        for i in &gp.input {
            if init_names.contains(i.name.as_str()) {
                // An input with a default value: Kiln treats it as the constant it defaults to.
                continue;
            }
            if scope.contains_key(&i.name) {
                return Err(gerr(format!("input '{}' is declared twice", i.name)));
            }
            let (ty, kind) = value_type(&i.name, i.r#type.as_ref()).map_err(gerr)?;
            let v = g.add_input(i.name.clone(), ty);
            g.node_mut(v.node).outputs[0].kind = kind;
            scope.insert(i.name.clone(), v);
        }
        for c in captures {
            if !scope.contains_key(c) {
                let v = g.add_input(c.clone(), TypeInfo::unknown());
                scope.insert(c.clone(), v);
            }
        }

        for (idx, n) in gp.node.iter().enumerate() {
            self.import_node(&mut g, &mut scope, &declared, n, idx)?;
        }

        for o in &gp.output {
            let v = *scope.get(&o.name).ok_or_else(|| gerr(format!("output '{}' is never computed", o.name)))?;
            g.add_output(o.name.clone(), v);
        }
        Ok(g)
    }

    fn import_node(
        &self,
        g: &mut Graph,
        scope: &mut HashMap<String, Value>,
        declared: &HashMap<&str, &TypeProto>,
        n: &NodeProto,
        idx: usize,
    ) -> Result<(), ImportError> {
        let mut n = std::borrow::Cow::Borrowed(n);
        if n.name.is_empty() {
            n.to_mut().name = format!("{}_{idx}", n.op_type);
        }
        let node_err = |msg: String| ImportError::Node { node: n.name.clone(), op: n.op_type.clone(), msg };
        let domain = if n.domain == "ai.onnx" { "" } else { n.domain.as_str() };
        let f = self.reg.get(domain, &n.op_type).ok_or_else(|| node_err("op is not supported".into()))?;
        let opset = self.opsets.get(domain).copied().unwrap_or(1);

        let mut inputs = Vec::with_capacity(n.input.len());
        for name in &n.input {
            if name.is_empty() {
                inputs.push(None);
            } else {
                let v = *scope.get(name).ok_or_else(|| {
                    node_err(format!("input '{name}' is not produced by any node, initializer or graph input"))
                })?;
                inputs.push(Some(v));
            }
        }
        let consts: Vec<Option<&Tensor>> = inputs
            .iter()
            .map(|v| {
                v.and_then(|v| match &g.node(v.node).op {
                    Op::Const(t) => Some(t),
                    _ => None,
                })
            })
            .collect();
        let input_dtypes: Vec<Option<DType>> =
            inputs.iter().map(|v| v.and_then(|v| g.value_info(v).ty.dtype)).collect();

        // Outer values read by any subgraph of this node become extra inputs, in sorted order.
        let mut captures = BTreeSet::new();
        for a in &n.attribute {
            for sub in a.g.iter().chain(&a.graphs) {
                captures.extend(free_names(sub));
            }
        }
        let captures: Vec<String> = captures.into_iter().collect();
        let sub = |gp: &GraphProto| self.import_graph(gp, &captures);
        let cx = NodeCtx { node: &n, opset, consts, input_dtypes, subgraph: &sub };
        let op = f(&cx)?;
        if let Op::Const(t) = &op {
            self.check_finite(&format!("constant '{}'", n.name), t);
        }

        for c in &captures {
            let v = *scope.get(c).ok_or_else(|| {
                node_err(format!("a subgraph reads '{c}', which is not defined in any enclosing scope"))
            })?;
            inputs.push(Some(v));
        }
        let mut outputs = Vec::with_capacity(n.output.len());
        for o in &n.output {
            if !o.is_empty() && scope.contains_key(o) {
                return Err(node_err(format!("output '{o}' is already defined")));
            }
            let (ty, kind) = match declared.get(o.as_str()) {
                Some(tp) => value_type(o, Some(tp)).map_err(node_err)?,
                None => (TypeInfo::unknown(), ValueKind::Tensor),
            };
            outputs.push(ValueInfo { name: o.clone(), ty, kind });
        }
        let id = g.add_node(n.name.clone(), op, &inputs, outputs);
        for (slot, o) in n.output.iter().enumerate() {
            if !o.is_empty() {
                scope.insert(o.clone(), Value { node: id, slot });
            }
        }
        Ok(())
    }
}

/// How many elements of a floating-point tensor are NaN or infinite.
fn non_finite(t: &Tensor) -> usize {
    match t.data() {
        TensorData::F32(v) => v.iter().filter(|x| !x.is_finite()).count(),
        TensorData::F64(v) => v.iter().filter(|x| !x.is_finite()).count(),
        TensorData::F16(v) => v.iter().filter(|x| !x.is_finite()).count(),
        TensorData::BF16(v) => v.iter().filter(|x| !x.is_finite()).count(),
        _ => 0,
    }
}
