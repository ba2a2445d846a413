//! The malformed-model corpus: every file in `tests/malformed/` is loaded and must give the
//! error (or warning) that `tests/malformed/expected.txt` names for it, never a panic.
//! `tests/malformed/make_corpus.py` writes the files and the manifest.

use kiln_onnx::{load_model, ImportError, Model};
use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/malformed")
}

/// What one manifest line expects of its file.
#[derive(Debug)]
enum Expect {
    Error(String),
    Warning(String),
    Clean,
}

fn manifest() -> Vec<(String, Expect)> {
    let text = std::fs::read_to_string(corpus_dir().join("expected.txt")).expect("expected.txt is readable");
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, rest) = l.split_once(' ').unwrap_or((l, ""));
            let expect = match rest.trim() {
                "OK" => Expect::Clean,
                r => match r.strip_prefix("WARN: ") {
                    Some(w) => Expect::Warning(w.to_string()),
                    None => Expect::Error(r.to_string()),
                },
            };
            (name.to_string(), expect)
        })
        .collect()
}

/// Git keeps the symlink, but a checkout without symlink support would turn it into a file
/// holding the target's name; put the link back so the escape is really tested.
#[cfg(unix)]
fn ensure_symlink() {
    let link = corpus_dir().join("data/escape.bin");
    if std::fs::symlink_metadata(&link).map(|m| m.file_type().is_symlink()).unwrap_or(false) {
        return;
    }
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink("../../../Cargo.toml", &link).expect("symlink can be created");
}

#[cfg(not(unix))]
fn ensure_symlink() {}

/// Loads one file and says what is wrong with the outcome, if anything.
fn check(name: &str, expect: &Expect) -> Option<String> {
    let path = corpus_dir().join(name);
    let r: Result<Result<Model, ImportError>, _> = catch_unwind(AssertUnwindSafe(|| load_model(&path)));
    if let Ok(r) = &r {
        // Shown with --nocapture, to review what each file says.
        match r {
            Ok(m) => println!("{name}: loads, warnings {:?}", m.warnings),
            Err(e) => println!("{name}: {e}"),
        }
    }
    match (r, expect) {
        (Err(p), _) => {
            let msg = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned());
            Some(format!("panicked: {}", msg.unwrap_or_default()))
        }
        (Ok(Err(e)), Expect::Error(want)) if e.to_string().contains(want.as_str()) => None,
        (Ok(Err(e)), _) => Some(format!("failed with: {e}")),
        (Ok(Ok(m)), Expect::Warning(want)) if m.warnings.iter().any(|w| w.contains(want.as_str())) => None,
        (Ok(Ok(m)), Expect::Clean) if m.warnings.is_empty() => None,
        (Ok(Ok(m)), _) => Some(format!("loaded, with warnings {:?}", m.warnings)),
    }
}

#[test]
fn every_malformed_model_gives_its_error() {
    ensure_symlink();
    let cases = manifest();
    let mut failures = vec![];
    for (name, expect) in &cases {
        if let Some(why) = check(name, expect) {
            failures.push(format!("{name}: expected {expect:?}, {why}"));
        }
    }
    let errors = cases.iter().filter(|(_, e)| matches!(e, Expect::Error(_))).count();
    println!("{} files: {errors} errors, {} warnings or clean", cases.len(), cases.len() - errors);
    assert!(failures.is_empty(), "{} of {} files misbehaved:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

#[test]
fn every_model_file_is_in_the_manifest() {
    let listed: BTreeSet<String> = manifest().into_iter().map(|(n, _)| n).collect();
    let mut unlisted = vec![];
    for entry in std::fs::read_dir(corpus_dir()).expect("corpus directory is readable") {
        let name = entry.expect("directory entry").file_name().to_string_lossy().into_owned();
        let helper = matches!(name.as_str(), "make_corpus.py" | "expected.txt" | "data");
        if !helper && !listed.contains(&name) {
            unlisted.push(name);
        }
    }
    assert!(unlisted.is_empty(), "files missing from expected.txt: {unlisted:?}");
    for name in &listed {
        assert!(corpus_dir().join(name).is_file(), "expected.txt names '{name}', which does not exist");
    }
    assert!(listed.len() >= 40, "the corpus has only {} files", listed.len());
}

/// Subgraphs nested 10,000 deep are too big for a corpus file, so the bytes are built here:
/// each level is a graph holding one If whose then_branch is the next level.
#[test]
fn ifs_nested_ten_thousand_deep_are_a_decode_error() {
    fn varint(mut n: usize, out: &mut Vec<u8>) {
        while n >= 0x80 {
            out.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }
    fn field(num: usize, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![];
        varint(num << 3 | 2, &mut out);
        varint(payload.len(), &mut out);
        out.extend_from_slice(payload);
        out
    }
    let mut g = vec![];
    for _ in 0..10_000 {
        let mut attr = field(1, b"then_branch");
        attr.extend_from_slice(&[0xa0, 0x01, 5]); // type (field 20) = GRAPH
        attr.extend(field(6, &g));
        let mut node = field(4, b"If");
        node.extend(field(5, &attr));
        g = field(1, &node);
    }
    let mut bytes = vec![1 << 3, 8]; // ir_version = 8
    bytes.extend(field(7, &g));
    bytes.extend(field(8, &[2 << 3, 17])); // opset_import { version: 17 }
    let r = catch_unwind(|| kiln_onnx::import_bytes(&bytes, &Default::default()));
    let e = r.expect("no panic").expect_err("refused");
    assert!(e.to_string().contains("nested too deep"), "{e}");
}
