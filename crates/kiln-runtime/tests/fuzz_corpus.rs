//! Replays the committed corpus of the `engine_file` fuzz target (`fuzz/corpus/engine_file/`)
//! through the function the target calls, on stable and without libFuzzer, as
//! `crates/kiln/tests/fuzz_corpus.rs` does for the importer's targets. An error is a fine
//! outcome; a panic fails the test with the file's name.

#[path = "../../../fuzz/src/engine_file.rs"]
mod target;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

#[test]
fn engine_file_corpus_replays_without_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/engine_file");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    files.sort();
    let mut panics = vec![];
    let mut accepted = 0;
    for f in &files {
        let bytes = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        match catch_unwind(AssertUnwindSafe(|| target::engine_file(&bytes))) {
            Ok(()) => accepted += usize::from(kiln_runtime::engine::EngineFile::from_bytes(&bytes).is_ok()),
            Err(p) => {
                let msg =
                    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned());
                panics.push(format!("{}: {}", f.file_name().unwrap().to_string_lossy(), msg.unwrap_or_default()));
            }
        }
    }
    assert!(panics.is_empty(), "{} of {} files panicked:\n{}", panics.len(), files.len(), panics.join("\n"));
    println!("engine_file: {} files replayed, {accepted} accepted", files.len());
    assert!(files.len() >= 5 && accepted >= 1, "{} seeds, {accepted} read", files.len());
}
