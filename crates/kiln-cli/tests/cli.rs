//! The `kiln` binary: what a user sees, including on bad input.

use std::path::PathBuf;
use std::process::Command;

fn kiln(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/models").join(name).display().to_string()
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-cli-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn run_writes_outputs_and_a_map() {
    let dir = tmp("run");
    let input = format!("x={}", fixture("tiny_cnn.input.x.npy"));
    let (ok, stdout, stderr) =
        kiln(&["run", &fixture("tiny_cnn.onnx"), "--input", &input, "--output-dir", dir.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("probs") && stdout.contains("[1, 10]"), "{stdout}");
    let map: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("outputs.json")).unwrap()).unwrap();
    let file = map["probs"].as_str().unwrap();
    assert!(dir.join(file).exists());
}

#[test]
fn run_makes_seeded_random_inputs() {
    let a = kiln(&["run", &fixture("tiny_cnn.onnx"), "--seed", "3"]);
    let b = kiln(&["run", &fixture("tiny_cnn.onnx"), "--seed", "3"]);
    assert!(a.0 && b.0, "{}", a.2);
    let stats = |s: &str| s.lines().find(|l| l.starts_with("probs")).unwrap().to_string();
    assert_eq!(stats(&a.1), stats(&b.1));
}

#[test]
fn inspect_json_counts_ops_and_parameters() {
    let (ok, stdout, stderr) = kiln(&["inspect", &fixture("tiny_cnn.onnx"), "--json"]);
    assert!(ok, "{stderr}");
    let j: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(j["ops"]["Conv"], 2);
    assert_eq!(j["nodes"], 11);
    // 922 float weights plus the two int64s of the reshape target.
    assert_eq!(j["parameters"], 924);
    assert_eq!(j["opsets"][""], 17);
}

#[test]
fn bad_files_give_errors_not_panics() {
    let dir = tmp("bad");
    let garbage = dir.join("garbage.onnx");
    std::fs::write(&garbage, [0xffu8, 0xff, 0xff, 0x01, 0x02]).unwrap();
    let truncated = dir.join("truncated.onnx");
    let bytes = std::fs::read(fixture("tiny_cnn.onnx")).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    for (file, want) in [
        (garbage.to_str().unwrap(), "malformed model"),
        (truncated.to_str().unwrap(), "malformed model"),
        ("/nonexistent/model.onnx", "cannot read"),
    ] {
        for cmd in ["run", "inspect"] {
            let (ok, _, stderr) = kiln(&[cmd, file]);
            assert!(!ok, "{cmd} {file} succeeded");
            assert!(stderr.contains(want) && !stderr.contains("panicked"), "{cmd} {file}: {stderr}");
        }
    }
}

#[test]
fn cuda_without_a_backend_says_to_use_the_cpu() {
    let (ok, _, stderr) = kiln(&["run", &fixture("tiny_cnn.onnx"), "--device", "cuda"]);
    assert!(!ok);
    assert!(stderr.contains("--device cpu"), "{stderr}");
}

#[test]
fn build_explains_fusion_and_draws_the_graph() {
    let dir = tmp("build");
    let dot = dir.join("bert.dot");
    let model = fixture("bert_layer.onnx");
    let args = ["build", &model, "--shapes", "x=2x8x32", "--shapes", "mask=2x1x1x8", "--explain", "--dot"];
    let (ok, stdout, stderr) = kiln(&[&args[..], &[dot.to_str().unwrap()]].concat());
    assert!(ok, "{stderr}");
    assert!(stdout.contains("47 -> 7 nodes that launch work"), "{stdout}");
    assert!(stdout.contains("rules fired:") && stdout.contains("attention-packed"), "{stdout}");
    assert!(stdout.contains("stopped: simplify: saturated; fuse: saturated"), "{stdout}");
    let dot = std::fs::read_to_string(dot).unwrap();
    assert!(dot.starts_with("digraph") && dot.contains("PackedAttention") && dot.contains("covers: MatMul_0"), "{dot}");

    let (ok, stdout, stderr) = kiln(&["build", &model, "--shapes", "x=2x8x32", "--shapes", "mask=2x1x1x8", "--json"]);
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["launching_after"], 7);
    assert_eq!(report["after"]["PackedAttention"], 1);
    assert!(report["rules_fired"].as_array().unwrap().iter().any(|r| r[0] == "layernorm"));

    let (ok, _, stderr) = kiln(&["build", &model, "--disable-rules", "nonsense"]);
    assert!(!ok && stderr.contains("unknown rule family 'nonsense'"), "{stderr}");
    let (ok, stdout, stderr) =
        kiln(&["build", &model, "--shapes", "x=2x8x32", "--shapes", "mask=2x1x1x8", "--no-fuse"]);
    assert!(ok && stdout.contains("47 launch work"), "{stdout}{stderr}");
}

#[test]
fn build_int8_calibrates_writes_a_cache_and_reuses_it() {
    let dir = tmp("int8");
    let calib = dir.join("calib");
    std::fs::create_dir_all(&calib).unwrap();
    let all = kiln::npy::read(std::path::Path::new(&fixture("digits_cnn.calib.npy"))).unwrap();
    let per = 64;
    let v = all.as_slice::<f32>().unwrap();
    for b in 0..4 {
        let t = kiln::ir::Tensor::from_vec(vec![50, 1, 8, 8], v[b * 50 * per..(b + 1) * 50 * per].to_vec()).unwrap();
        kiln::npy::write(&calib.join(format!("batch{b}.npy")), &t).unwrap();
    }
    let cache = dir.join("digits.cache");
    let model = fixture("digits_cnn.onnx");
    let (c, k) = (calib.to_str().unwrap(), cache.to_str().unwrap());
    // Every layer, the first convolution (over one channel) too.
    let (ok, stdout, stderr) = kiln(&["build", &model, "--int8", "--calib", c, "--calib-cache", k]);
    assert!(ok && stdout.contains("3 of 3 layers in INT8"), "{stdout}{stderr}");
    let (ok, stdout, stderr) = kiln(&[
        "build",
        &model,
        "--int8",
        "--calib",
        c,
        "--calib-cache",
        k,
        "--precision",
        "fc=fp16",
        "--precision",
        "conv1=fp32",
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("1 of 3 layers in INT8") && stdout.contains("override"), "{stdout}");
    let text = std::fs::read_to_string(&cache).unwrap();
    assert!(text.starts_with("# kiln calibration cache v1\n# algo: entropy"), "{text}");
    assert!(text.lines().filter(|l| !l.starts_with('#')).count() == 3, "{text}");
    // The cache alone, no data.
    let (ok, stdout, stderr) = kiln(&["build", &model, "--int8", "--calib-cache", k, "--calib-algo", "mse"]);
    assert!(ok && stdout.contains("3 of 3 layers in INT8"), "{stdout}{stderr}");
    // Bad calibration choices are named.
    let (ok, _, stderr) = kiln(&["build", &model, "--int8"]);
    assert!(!ok && stderr.contains("needs calibration data"), "{stderr}");
    let (ok, _, stderr) = kiln(&["build", &model, "--int8", "--calib", c, "--calib-algo", "kl"]);
    assert!(!ok && stderr.contains("unknown calibration algorithm 'kl'"), "{stderr}");
    let (ok, _, stderr) = kiln(&["build", &model, "--int8", "--calib", c, "--shapes", "x=7x1x8x8"]);
    assert!(!ok && stderr.contains("does not fit the input shape"), "{stderr}");
    let (ok, _, stderr) = kiln(&["build", &model, "--calib", c]);
    assert!(!ok && stderr.contains("go with --int8"), "{stderr}");
}

#[test]
fn compare_reports_outputs_and_where_the_error_grows() {
    let model = fixture("digits_cnn.onnx");
    let x = fixture("digits_cnn.test_x.npy");
    let input = format!("x={x}");
    let (ok, stdout, stderr) = kiln(&["compare", &model, "--input", &input]);
    assert!(ok, "{stderr}");
    // FP32 with fusion only reorders float arithmetic: the classes all agree.
    let logits = stdout.lines().find(|l| l.starts_with("logits")).unwrap();
    assert!(logits.ends_with("100.00%"), "{stdout}");

    let dir = tmp("compare");
    let cache = dir.join("c.cache");
    std::fs::write(&cache, "# kiln calibration cache v1\n# algo: minmax\n0.0079\tx\n0.035\tp1\n0.098\tflat\n").unwrap();
    let (ok, stdout, stderr) = kiln(&[
        "compare",
        &model,
        "--input",
        &input,
        "--int8",
        "--calib-cache",
        cache.to_str().unwrap(),
        "--per-layer",
        "--json",
        // The first convolution, over one channel, is float unless asked for.
        "--precision",
        "conv1=int8",
    ]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let out = &v["outputs"][0];
    assert_eq!(out["name"], "logits");
    assert!(out["cosine"].as_f64().unwrap() > 0.99, "{out}");
    assert!(out["top1"].as_f64().unwrap() > 0.97, "{out}");
    let layers: Vec<&str> =
        v["layers"].as_array().unwrap().iter().map(|l| l["metrics"]["name"].as_str().unwrap()).collect();
    // p1 is quantized (its scale is in the cache), so its pool runs on the integers and r1 is
    // quantized by the first convolution's epilogue: neither survives as a float tensor, and
    // p1 is compared as its integers times its scale.
    assert_eq!(layers, ["p1", "r2", "p2", "flat", "logits"]);
    let p1 = &v["layers"][0];
    assert_eq!(p1["op"], "MaxPool (int8)", "{p1}");
    // Rounding to steps of 0.035 and clipping at 127 steps (the cache's range is hand-written).
    assert!(p1["metrics"]["cosine"].as_f64().unwrap() > 0.999, "{p1}");

    let (ok, _, stderr) = kiln(&["compare", &model]);
    assert!(!ok && stderr.contains("--shapes x=DIMS"), "{stderr}");
}

#[test]
fn fp16_builds_say_what_stays_fp32_and_compare_against_fp32() {
    let model = fixture("tiny_cnn.onnx");
    let (ok, stdout, stderr) = kiln(&[
        "build",
        &model,
        "--fp16",
        "--explain",
        "--no-tf32",
        "--precision",
        "conv1=fp32",
        "--precision",
        "nope=fp32",
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("6 nodes in FP16, 1 kept in FP32"), "{stdout}");
    assert!(stdout.contains("asked for (--precision conv1=fp32)"), "{stdout}");
    assert!(stderr.contains("'nope', which is not a node"), "{stderr}");
    let (ok, stdout, stderr) = kiln(&["compare", &model, "--fp16", "--json"]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let out = &v["outputs"][0];
    assert!(out["cosine"].as_f64().unwrap() >= 0.999 && out["rel_l2"].as_f64().unwrap() <= 1e-2, "{out}");
    let (ok, stdout, stderr) = kiln(&["run", &model, "--fp16"]);
    assert!(ok && stdout.contains("probs") && stdout.contains("f32"), "{stdout}{stderr}");
    let (ok, _, stderr) = kiln(&["build", &model, "--precision", "conv1=fp32"]);
    assert!(!ok && stderr.contains("--precision goes with --int8 or --fp16"), "{stderr}");
}

/// Two `kiln build -o` runs of the same model with the same options write byte-identical
/// engines (no timing is involved in a build), in FP32 and FP16; `inspect` reads them.
#[test]
fn engine_builds_are_byte_identical() {
    if let Err(e) = kiln::cuda::nvrtc::Nvrtc::locate() {
        eprintln!("skipped engine_builds_are_byte_identical: {e} (cargo xtask fetch-nvrtc installs it)");
        return;
    }
    let dir = tmp("determinism");
    for (model, extra) in [
        ("tiny_cnn.onnx", &[][..]),
        ("tiny_cnn.onnx", &["--fp16"][..]),
        ("bert_layer.onnx", &["--shapes", "x=2x8x32", "--shapes", "mask=2x1x1x8", "--fp16"][..]),
    ] {
        let model_path = fixture(model);
        let build = |name: &str| {
            let out = dir.join(name).display().to_string();
            let mut args = vec!["build", &model_path, "--arch", "sm_90", "-o", &out];
            args.extend_from_slice(extra);
            let (ok, stdout, stderr) = kiln(&args);
            assert!(ok, "kiln {}: {stdout}{stderr}", args.join(" "));
            std::fs::read(&out).unwrap()
        };
        let (a, b) = (build("a.kiln"), build("b.kiln"));
        assert!(a == b, "{model} {extra:?}: two builds differ ({} and {} bytes)", a.len(), b.len());
        let (ok, stdout, stderr) = kiln(&["inspect", &dir.join("a.kiln").display().to_string()]);
        assert!(ok && stdout.contains("sm_90"), "{stdout}{stderr}");
    }
}
