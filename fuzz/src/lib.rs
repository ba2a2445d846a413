//! What each fuzz target does with its input, in one place.
//!
//! The fuzz targets call these functions, and so does the corpus replay test of the main
//! workspace (`crates/kiln/tests/fuzz_corpus.rs`, which includes this file by path), so a
//! corpus file replays exactly as the fuzzer ran it, without nightly or libFuzzer.
//! Errors are the expected outcome for most inputs; a panic is the bug being hunted.

use kiln::onnx::{ImportOptions, Limits};

/// The importer's limits for an input of `len` bytes: nothing may be allocated that the
/// input does not pay for, so an out-of-memory report is a real bug, not a big declared
/// shape. Tensor data must be present in the file, and no byte of it becomes more than 8 in
/// memory (an int64 written as a one-byte varint); a node takes at least 2 bytes.
pub fn limits_for(len: usize) -> Limits {
    let len = len as u64;
    Limits { max_nodes: len / 2 + 1, max_depth: 16, max_rank: 32, max_weight_bytes: 8 * len, max_file_bytes: len }
}

/// Bytes to an ONNX model through `kiln::onnx::import_bytes`; a model that imports must pass
/// the IR verifier.
pub fn import_onnx(data: &[u8]) {
    let opts = ImportOptions { base_dir: None, limits: limits_for(data.len()) };
    if let Ok(model) = kiln::onnx::import_bytes(data, &opts) {
        if let Err(e) = model.graph.verify() {
            panic!("an imported graph fails the verifier: {e}");
        }
    }
}

/// Bytes to a tensor through `kiln::npy::read_bytes`. A tensor that reads must also write,
/// and what it writes must read back to the same bytes (bytes, not values: NaN != NaN).
pub fn read_npy(data: &[u8]) {
    let Ok(t) = kiln::npy::read_bytes(data) else { return };
    let written = kiln::npy::write_bytes(&t).unwrap_or_else(|e| panic!("a tensor read from .npy fails to write: {e}"));
    let back = kiln::npy::read_bytes(&written).unwrap_or_else(|e| panic!("a written .npy fails to read: {e}"));
    let again = kiln::npy::write_bytes(&back).unwrap_or_else(|e| panic!("a re-read tensor fails to write: {e}"));
    assert!(again == written, "a .npy file does not round-trip: {t:?} wrote {written:?}, then {again:?}");
}
