//! What the `engine_file` fuzz target does with its input. Kept out of `lib.rs` so that the
//! facade's corpus replay (which includes `lib.rs`) needs no runtime; the fuzz target and
//! `crates/kiln-runtime/tests/fuzz_corpus.rs` include this file by path.

use kiln_runtime::engine::EngineFile;
use sha2::{Digest, Sha256};

/// Bytes to an engine through `EngineFile::from_bytes`, twice: as they are, and with the
/// last 32 bytes replaced by the checksum of the rest, so that mutations reach the decoder
/// and the plan's validation instead of stopping at the checksum. An engine that reads must
/// accept its own architecture and refuse another, and must write bytes that read back to an
/// engine that writes the same bytes (bytes, not values: a NaN argument is not equal to
/// itself).
pub fn engine_file(data: &[u8]) {
    check(data);
    if data.len() >= 32 {
        let mut sealed = data.to_vec();
        let body = data.len() - 32;
        let sum = Sha256::digest(&data[..body]);
        sealed[body..].copy_from_slice(&sum);
        check(&sealed);
    }
}

fn check(data: &[u8]) {
    let Ok(engine) = EngineFile::from_bytes(data) else { return };
    let arch = engine.header().arch.clone();
    if let Err(e) = engine.check_arch(&arch) {
        panic!("an engine refuses its own architecture: {e}");
    }
    assert!(engine.check_arch(&format!("{arch}_other")).is_err(), "an engine accepts another architecture");
    let written = engine.to_bytes();
    let back = EngineFile::from_bytes(&written).unwrap_or_else(|e| panic!("a written engine fails to read: {e}"));
    assert!(back.to_bytes() == written, "an engine file does not round-trip");
}
