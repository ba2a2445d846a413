//! Import tests: encodings, graph structure, errors, external data. Models are built in code
//! with the prost types, so every case states exactly what the file holds.

use kiln_ir::{DType, Dim, Op, Tensor};
use kiln_onnx::proto::{
    attribute_proto::AttributeType, tensor_proto::DataLocation, tensor_shape_proto, type_proto, AttributeProto,
    GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto,
    TypeProto, ValueInfoProto,
};
use kiln_onnx::{import_bytes, ImportError, ImportOptions, Limits};
use prost::Message;
use std::path::Path;

fn value_info(name: &str, elem: i32, dims: &[Result<i64, &str>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                Ok(v) => tensor_shape_proto::dimension::Value::DimValue(*v),
                Err(p) => tensor_shape_proto::dimension::Value::DimParam(p.to_string()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: elem,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn model(graph: GraphProto, opset: i64) -> ModelProto {
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: opset }],
        graph: Some(graph),
        ..Default::default()
    }
}

/// Imports a model from its bytes, as a file would be read.
fn check(m: &ModelProto, dir: Option<&Path>) -> Result<kiln_onnx::Model, ImportError> {
    import_bytes(&m.encode_to_vec(), &ImportOptions { base_dir: dir.map(Path::to_path_buf), ..Default::default() })
}

fn relu_graph(initializer: Vec<TensorProto>) -> GraphProto {
    GraphProto {
        name: "g".into(),
        node: vec![node("Relu", "relu", &["x"], &["y"])],
        input: vec![value_info("x", 1, &[Err("batch"), Ok(4)])],
        output: vec![value_info("y", 1, &[Err("batch"), Ok(4)])],
        initializer,
        ..Default::default()
    }
}

fn const_of(m: &kiln_onnx::Model, name: &str) -> Tensor {
    let g = &m.graph;
    let v = g.find_value(name).expect("value exists");
    match &g.node(v.node).op {
        Op::Const(t) => t.clone(),
        op => panic!("{name} is a {}", op.name()),
    }
}

#[test]
fn symbolic_dims_are_kept() {
    let m = check(&model(relu_graph(vec![]), 17), None).unwrap();
    let x = &m.graph.node(m.graph.inputs[0]).outputs[0];
    assert_eq!(x.ty.dtype, Some(DType::F32));
    assert_eq!(x.ty.shape, Some(vec![Dim::Sym("batch".into()), Dim::Known(4)]));
}

#[test]
fn initializer_encodings_agree() {
    // The same values in raw_data and in each typed field decode to the same tensor.
    let cases: Vec<(i32, TensorProto, Tensor)> = vec![
        (
            1,
            TensorProto { float_data: vec![1.5, -2.0], ..Default::default() },
            Tensor::from_vec(vec![2], vec![1.5f32, -2.0]).unwrap(),
        ),
        (
            1,
            TensorProto { raw_data: [1.5f32.to_le_bytes(), (-2.0f32).to_le_bytes()].concat(), ..Default::default() },
            Tensor::from_vec(vec![2], vec![1.5f32, -2.0]).unwrap(),
        ),
        (
            7,
            TensorProto { int64_data: vec![-3, 1 << 40], ..Default::default() },
            Tensor::from_vec(vec![2], vec![-3i64, 1 << 40]).unwrap(),
        ),
        (
            3,
            TensorProto { int32_data: vec![-3, 127], ..Default::default() },
            Tensor::from_vec(vec![2], vec![-3i8, 127]).unwrap(),
        ),
        (
            2,
            TensorProto { raw_data: vec![0, 255], ..Default::default() },
            Tensor::from_vec(vec![2], vec![0u8, 255]).unwrap(),
        ),
        (
            9,
            TensorProto { int32_data: vec![1, 0], ..Default::default() },
            Tensor::from_vec(vec![2], vec![true, false]).unwrap(),
        ),
        (
            10,
            TensorProto { int32_data: vec![0x3c00, 0xc000], ..Default::default() },
            Tensor::from_vec(vec![2], vec![kiln_ir::f16::from_f32(1.0), kiln_ir::f16::from_f32(-2.0)]).unwrap(),
        ),
        (
            16,
            TensorProto { raw_data: vec![0x80, 0x3f, 0x00, 0xc0], ..Default::default() },
            Tensor::from_vec(vec![2], vec![kiln_ir::bf16::from_f32(1.0), kiln_ir::bf16::from_f32(-2.0)]).unwrap(),
        ),
        (
            11,
            TensorProto { double_data: vec![0.25, 8.0], ..Default::default() },
            Tensor::from_vec(vec![2], vec![0.25f64, 8.0]).unwrap(),
        ),
        (
            13,
            TensorProto { uint64_data: vec![7, u64::MAX], ..Default::default() },
            Tensor::from_vec(vec![2], vec![7u64, u64::MAX]).unwrap(),
        ),
        (
            5,
            TensorProto { int32_data: vec![-300, 300], ..Default::default() },
            Tensor::from_vec(vec![2], vec![-300i16, 300]).unwrap(),
        ),
    ];
    for (code, mut t, want) in cases {
        t.name = "w".into();
        t.dims = vec![2];
        t.data_type = code;
        let m = check(&model(relu_graph(vec![t]), 17), None).unwrap();
        assert_eq!(const_of(&m, "w"), want, "data type {code}");
    }
}

#[test]
fn raw_data_of_the_wrong_length_is_refused() {
    let t = TensorProto { name: "w".into(), dims: vec![3], data_type: 1, raw_data: vec![0; 8], ..Default::default() };
    let e = check(&model(relu_graph(vec![t]), 17), None).unwrap_err().to_string();
    assert!(e.contains("tensor 'w'") && e.contains("raw_data holds 8 bytes") && e.contains("needs 12"), "{e}");
}

#[test]
fn overflowing_shape_is_refused_before_allocating() {
    let t = TensorProto { name: "w".into(), dims: vec![1 << 40, 1 << 40], data_type: 1, ..Default::default() };
    let e = check(&model(relu_graph(vec![t]), 17), None).unwrap_err().to_string();
    assert!(e.contains("overflows"), "{e}");
}

#[test]
fn every_unsupported_op_is_listed_at_once() {
    let mut g = relu_graph(vec![]);
    g.node = vec![
        node("FancyOp", "a", &["x"], &["t"]),
        node("FancyOp", "b", &["t"], &["u"]),
        node("OtherOp", "c", &["u"], &["y"]),
    ];
    match check(&model(g, 17), None).unwrap_err() {
        ImportError::Unsupported(list) => {
            let summary: Vec<(String, Vec<String>)> = list.into_iter().map(|u| (u.op, u.nodes)).collect();
            assert_eq!(
                summary,
                vec![("FancyOp".into(), vec!["a".into(), "b".into()]), ("OtherOp".into(), vec!["c".into()])]
            );
        }
        e => panic!("wrong error: {e}"),
    }
}

#[test]
fn undefined_input_names_the_node() {
    let mut g = relu_graph(vec![]);
    g.node = vec![node("Relu", "r", &["nope"], &["y"])];
    let e = check(&model(g, 17), None).unwrap_err().to_string();
    assert!(e.contains("'r'") && e.contains("'nope'"), "{e}");
}

#[test]
fn output_never_computed_is_refused() {
    let mut g = relu_graph(vec![]);
    g.output.push(value_info("z", 1, &[]));
    let e = check(&model(g, 17), None).unwrap_err().to_string();
    assert!(e.contains("output 'z' is never computed"), "{e}");
}

#[test]
fn duplicate_output_names_are_refused() {
    let mut g = relu_graph(vec![]);
    g.node.push(node("Relu", "again", &["x"], &["y"]));
    let e = check(&model(g, 17), None).unwrap_err().to_string();
    assert!(e.contains("'again'") && e.contains("already defined"), "{e}");
}

#[test]
fn attribute_of_the_wrong_type_names_it() {
    let mut g = relu_graph(vec![]);
    let mut n = node("LeakyRelu", "lr", &["x"], &["y"]);
    n.attribute.push(AttributeProto {
        name: "alpha".into(),
        r#type: AttributeType::String as i32,
        s: b"big".to_vec(),
        ..Default::default()
    });
    g.node = vec![n];
    let e = check(&model(g, 17), None).unwrap_err().to_string();
    assert!(
        e.contains("'lr'") && e.contains("LeakyRelu") && e.contains("'alpha'") && e.contains("expected FLOAT"),
        "{e}"
    );
}

#[test]
fn newer_opset_is_refused() {
    let e = check(&model(relu_graph(vec![]), kiln_onnx::MAX_OPSET + 1), None).unwrap_err().to_string();
    assert!(e.contains("newer than the newest Kiln supports"), "{e}");
}

#[test]
fn garbage_bytes_are_a_decode_error() {
    let e = import_bytes(&[0xff, 0xff, 0xff, 0x01], &ImportOptions::default()).unwrap_err();
    assert!(matches!(e, ImportError::Decode(_)), "{e}");
}

fn external(location: &str, offset: Option<u64>, length: Option<u64>) -> TensorProto {
    let mut kv = vec![StringStringEntryProto { key: "location".into(), value: location.into() }];
    if let Some(o) = offset {
        kv.push(StringStringEntryProto { key: "offset".into(), value: o.to_string() });
    }
    if let Some(l) = length {
        kv.push(StringStringEntryProto { key: "length".into(), value: l.to_string() });
    }
    TensorProto {
        name: "w".into(),
        dims: vec![2],
        data_type: 1,
        data_location: DataLocation::External as i32,
        external_data: kv,
        ..Default::default()
    }
}

/// A fresh directory with `weights.bin` holding 4 floats, and a sibling file outside it.
fn model_dir(tag: &str) -> std::path::PathBuf {
    let root = std::env::temp_dir().join(format!("kiln-ext-{}-{tag}", std::process::id()));
    let dir = root.join("model");
    std::fs::create_dir_all(&dir).unwrap();
    let floats: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|f| f.to_le_bytes()).collect();
    std::fs::write(dir.join("weights.bin"), &floats).unwrap();
    std::fs::write(root.join("secret.bin"), &floats).unwrap();
    dir
}

#[test]
fn external_data_is_read_inside_the_model_dir() {
    let dir = model_dir("ok");
    let m = check(&model(relu_graph(vec![external("weights.bin", Some(8), Some(8))]), 17), Some(&dir)).unwrap();
    assert_eq!(const_of(&m, "w"), Tensor::from_vec(vec![2], vec![3.0f32, 4.0]).unwrap());
}

#[test]
fn external_data_escapes_are_refused() {
    let dir = model_dir("bad");
    #[cfg(unix)]
    std::os::unix::fs::symlink(dir.parent().unwrap().join("secret.bin"), dir.join("link.bin")).unwrap();
    let cases: Vec<(TensorProto, &str)> = vec![
        (external("../secret.bin", None, Some(8)), "leaves the model's directory"),
        (external("/etc/passwd", None, Some(8)), "absolute path"),
        (external("missing.bin", None, Some(8)), "missing.bin"),
        (external("weights.bin", Some(12), Some(8)), "past the end"),
        (external("weights.bin", None, Some(4)), "does not match"),
        #[cfg(unix)]
        (external("link.bin", None, Some(8)), "outside the model's directory"),
    ];
    for (t, want) in cases {
        let e = check(&model(relu_graph(vec![t]), 17), Some(&dir)).unwrap_err().to_string();
        assert!(e.contains(want), "expected '{want}' in: {e}");
    }
    // Without a model directory (bytes from memory) external data is refused outright.
    let e = check(&model(relu_graph(vec![external("weights.bin", None, Some(8))]), 17), None).unwrap_err().to_string();
    assert!(e.contains("needs the model's directory"), "{e}");
}

#[test]
fn if_branches_capture_outer_values_as_inputs() {
    let branch = |name: &str, op: &str| GraphProto {
        name: name.into(),
        node: vec![node(op, &format!("{name}_n"), &["x"], &[&format!("{name}_out")])],
        output: vec![value_info(&format!("{name}_out"), 1, &[])],
        ..Default::default()
    };
    let mut n = node("If", "if", &["c"], &["y"]);
    for (attr, g) in [("then_branch", branch("then", "Relu")), ("else_branch", branch("else", "Neg"))] {
        n.attribute.push(AttributeProto {
            name: attr.into(),
            r#type: AttributeType::Graph as i32,
            g: Some(g),
            ..Default::default()
        });
    }
    let g = GraphProto {
        name: "main".into(),
        node: vec![n],
        input: vec![value_info("c", 9, &[]), value_info("x", 1, &[Ok(3)])],
        output: vec![value_info("y", 1, &[Ok(3)])],
        ..Default::default()
    };
    let m = check(&model(g, 17), None).unwrap();
    let id = m.graph.node_ids().find(|&i| m.graph.node(i).op.name() == "If").unwrap();
    // The condition plus the captured `x`.
    assert_eq!(m.graph.inputs_of(id).len(), 2);
    for sub in m.graph.node(id).op.subgraphs() {
        assert_eq!(sub.inputs.len(), 1);
        assert_eq!(sub.node(sub.inputs[0]).outputs[0].name, "x");
    }
}

/// Imports with one limit changed, expecting that limit's error.
fn check_limit(m: &ModelProto, limits: Limits, what: &str, field: &str) {
    let opts = ImportOptions { limits, ..Default::default() };
    let e = import_bytes(&m.encode_to_vec(), &opts).unwrap_err();
    assert!(matches!(e, ImportError::Limit { .. }), "{e}");
    let e = e.to_string();
    assert!(e.contains(what) && e.contains(&format!("ImportOptions::limits.{field}")), "{e}");
}

/// A graph holding an If whose then_branch holds an If, `depth` levels down.
fn nested_ifs(depth: usize) -> GraphProto {
    let mut g = relu_graph(vec![]);
    for level in 0..depth {
        let mut n = node("If", &format!("if{level}"), &["c"], &["y"]);
        n.attribute.push(AttributeProto {
            name: "then_branch".into(),
            r#type: AttributeType::Graph as i32,
            g: Some(g),
            ..Default::default()
        });
        g = GraphProto { name: format!("g{level}"), node: vec![n], ..Default::default() };
    }
    g
}

#[test]
fn limits_name_the_option_that_raises_them() {
    let base = Limits::default();
    let m = model(relu_graph(vec![]), 17);
    check_limit(&m, Limits { max_nodes: 0, ..base.clone() }, "graph node count is 1", "max_nodes");
    check_limit(&m, Limits { max_rank: 1, ..base.clone() }, "rank of value 'x' is 2", "max_rank");
    check_limit(&m, Limits { max_file_bytes: 10, ..base.clone() }, "model size in bytes", "max_file_bytes");
    let w = TensorProto { name: "w".into(), dims: vec![4], data_type: 1, raw_data: vec![0; 16], ..Default::default() };
    let m = model(relu_graph(vec![w]), 17);
    check_limit(&m, Limits { max_weight_bytes: 15, ..base.clone() }, "total weight bytes is 16", "max_weight_bytes");
    let m = model(nested_ifs(5), 17);
    check_limit(
        &m,
        Limits { max_depth: 3, ..base.clone() },
        "subgraph nesting depth below node 'if1' is 4",
        "max_depth",
    );
    check_limit(&m, Limits { max_nodes: 4, ..base }, "graph node count is 5", "max_nodes");
}

#[test]
fn nesting_is_checked_before_recursing() {
    // Deeper than any stack would survive if the importer recursed first; the model is built
    // in memory, so prost's decoder limit does not apply.
    let m = model(nested_ifs(10_000), 17);
    let e = kiln_onnx::import_model(&m, &ImportOptions::default()).unwrap_err().to_string();
    assert!(e.contains("subgraph nesting depth") && e.contains("max_depth"), "{e}");
    // Dropping a 10,000-deep message recurses too; leak it rather than overflow the stack.
    std::mem::forget(m);
}
