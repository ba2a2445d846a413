//! Writes the seed corpus of the `engine_file` fuzz target into `fuzz/corpus/engine_file/`:
//! the tiny hand-made engine, a few truncations of it, and one of another format version.
//!
//!     cargo run -p kiln-runtime --example engine_seeds

#[path = "../tests/support/tiny.rs"]
mod tiny;

use std::path::Path;

fn main() -> std::io::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/engine_file");
    std::fs::create_dir_all(&dir)?;
    let bytes = tiny::tiny_engine().to_bytes();
    std::fs::write(dir.join("tiny.kiln"), &bytes)?;
    for cut in [12, 44, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(dir.join(format!("tiny_cut_{cut}.kiln")), &bytes[..cut])?;
    }
    let mut newer = bytes.clone();
    newer[8..12].copy_from_slice(&2u32.to_le_bytes());
    std::fs::write(dir.join("tiny_version_2.kiln"), &newer)?;
    println!("wrote seeds of {} bytes into {}", bytes.len(), dir.display());
    Ok(())
}
