//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) through the functions the
//! fuzz targets call, on stable and without libFuzzer, so CI checks every seed and every
//! kept regression on each submission. An error is a fine outcome; a panic fails the test
//! with the file's name.

#[path = "../../../fuzz/src/lib.rs"]
mod targets;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target)
}

/// Feeds every file of one target's corpus to `run`; returns how many files there were and
/// how many `ok` accepted, and fails naming every file that panicked.
fn replay(target: &str, run: fn(&[u8]), ok: fn(&[u8]) -> bool) -> (usize, usize) {
    let dir = corpus(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    files.sort();
    let mut panics = vec![];
    let mut accepted = 0;
    for f in &files {
        let bytes = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        match catch_unwind(AssertUnwindSafe(|| run(&bytes))) {
            Ok(()) => accepted += usize::from(ok(&bytes)),
            Err(p) => {
                let msg =
                    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned());
                panics.push(format!("{}: {}", f.file_name().unwrap().to_string_lossy(), msg.unwrap_or_default()));
            }
        }
    }
    assert!(panics.is_empty(), "{target}: {} of {} files panicked:\n{}", panics.len(), files.len(), panics.join("\n"));
    println!("{target}: {} files replayed, {accepted} accepted", files.len());
    (files.len(), accepted)
}

#[test]
fn import_onnx_corpus_replays_without_panic() {
    let ok = |b: &[u8]| {
        let opts = kiln::onnx::ImportOptions { base_dir: None, limits: targets::limits_for(b.len()) };
        kiln::onnx::import_bytes(b, &opts).is_ok()
    };
    let (files, accepted) = replay("import_onnx", targets::import_onnx, ok);
    // The seeds must reach past the decoder: valid models, not only garbage.
    assert!(files >= 100 && accepted >= 50, "{files} seeds, {accepted} import");
}

#[test]
fn read_npy_corpus_replays_without_panic() {
    let ok = |b: &[u8]| kiln::npy::read_bytes(b).is_ok();
    let (files, accepted) = replay("read_npy", targets::read_npy, ok);
    assert!(files >= 20 && accepted >= 15, "{files} seeds, {accepted} read");
}

/// The fuzzing limits still accept the fixture models, so the fuzzer is not fuzzing only the
/// limit checks.
#[test]
fn fuzz_limits_accept_the_fixture_models() {
    for name in ["model_tiny_cnn.onnx", "model_bert_layer.onnx"] {
        let bytes = std::fs::read(corpus("import_onnx").join(name)).expect("fixture seed is readable");
        let opts = kiln::onnx::ImportOptions { base_dir: None, limits: targets::limits_for(bytes.len()) };
        if let Err(e) = kiln::onnx::import_bytes(&bytes, &opts) {
            panic!("{name}: {e}");
        }
    }
}
